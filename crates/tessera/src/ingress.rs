//! The ingress gateway of a control-plane replica, fed from the app.
//!
//! The gateway (`tessera-gateway`) asks a route table on every request and
//! must be answered from memory; containers, their addresses and their
//! rules live in the store, written by any replica. So a task here reads
//! the whole table from the app every [`REFRESH`] and swaps it into the
//! gateway's own in-memory table ([`MemoryRoutes::replace_all`]) at once:
//! a rule or a start made through any replica applies within that period,
//! and a store that is briefly unreachable leaves the last table serving.

use crate::settings::GatewaySettings;
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Duration;
use tessera_app::App;
use tessera_app::containers::ContainerRoute;
use tessera_gateway::{Gateway, GatewayConfig, MemoryRoutes};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the table is read from the store.
pub const REFRESH: Duration = Duration::from_millis(250);

/// A running gateway and the task that keeps its table.
pub struct RunningGateway {
    pub gateway: Gateway,
    stop: CancellationToken,
    feeding: JoinHandle<()>,
}

impl RunningGateway {
    /// Reads the table once (so the gateway starts with every port it
    /// needs), opens the gateway and starts keeping the table, with at
    /// most `max_connections` client connections (fewer when the
    /// gateway's own default is lower).
    pub async fn start(
        app: App,
        settings: &GatewaySettings,
        max_connections: usize,
    ) -> Result<RunningGateway> {
        let table = Arc::new(MemoryRoutes::new());
        replace(&table, app.ingress_table().await?);
        let mut config = GatewayConfig::new(
            app.compute_config().domain.clone(),
            settings.listen,
            settings.ports,
            settings.certificate.clone(),
        );
        config.max_connections = config.max_connections.min(max_connections);
        let gateway = Gateway::start(config, table.clone())
            .await
            .context("cannot start the ingress gateway")?;
        let stop = CancellationToken::new();
        let feeding = tokio::spawn(feed(app, table, stop.clone()));
        Ok(RunningGateway {
            gateway,
            stop,
            feeding,
        })
    }

    /// One line per open port: `external port -> local address`.
    pub fn describe(&self) -> String {
        self.gateway
            .bound()
            .iter()
            .map(|(port, addr)| format!("{port} on {addr}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.feeding.await;
        self.gateway.stop().await;
    }
}

/// Swaps in the table as read from the app.
fn replace(table: &MemoryRoutes, routes: Vec<ContainerRoute>) {
    table.replace_all(
        routes
            .into_iter()
            .map(|route| (route.id, route.address, route.rules)),
    );
}

async fn feed(app: App, table: Arc<MemoryRoutes>, stop: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REFRESH) => {}
        }
        match app.ingress_table().await {
            Ok(routes) => {
                if failing {
                    tracing::info!("the ingress table is read again");
                    failing = false;
                }
                replace(&table, routes);
            }
            Err(err) if !failing => {
                failing = true;
                tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "cannot read the ingress table; the gateway keeps the last one"
                );
            }
            Err(_) => {}
        }
    }
}
