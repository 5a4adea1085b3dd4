//! The ingress gateway of a control-plane replica, fed from the app.
//!
//! The gateway (`tessera-gateway`) asks a route table on every request and
//! must be answered from memory; containers, their addresses and their
//! rules live in the store, written by any replica. So a task here reads
//! the whole table from the app every [`REFRESH`] and swaps it in at once:
//! a rule or a start made through any replica applies within that period,
//! and a store that is briefly unreachable leaves the last table serving.

use crate::settings::GatewaySettings;
use anyhow::{Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tessera_app::App;
use tessera_app::containers::ContainerRoute;
use tessera_gateway::{Gateway, GatewayConfig, NoRoute, RouteTable};
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
    /// needs), opens the gateway and starts keeping the table.
    pub async fn start(app: App, settings: &GatewaySettings) -> Result<RunningGateway> {
        let table = Arc::new(AppRoutes::default());
        table.replace(app.ingress_table().await?);
        let config = GatewayConfig::new(
            app.compute_config().domain.clone(),
            settings.listen,
            settings.ports,
            settings.certificate.clone(),
        );
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

async fn feed(app: App, table: Arc<AppRoutes>, stop: CancellationToken) {
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
                table.replace(routes);
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

/// The table as last read.
#[derive(Default)]
struct AppRoutes {
    containers: RwLock<HashMap<String, Entry>>,
}

struct Entry {
    address: Option<IpAddr>,
    rules: HashMap<u16, u16>,
}

impl AppRoutes {
    fn replace(&self, routes: Vec<ContainerRoute>) {
        let fresh = routes
            .into_iter()
            .map(|route| {
                let entry = Entry {
                    address: route.address,
                    rules: route.rules.into_iter().collect(),
                };
                (route.id, entry)
            })
            .collect();
        *self
            .containers
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
    }
}

impl RouteTable for AppRoutes {
    fn route(&self, container: &str, port: u16) -> Result<SocketAddr, NoRoute> {
        let containers = self
            .containers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = containers.get(container).ok_or(NoRoute::UnknownContainer)?;
        let target = entry.rules.get(&port).ok_or(NoRoute::NoRule)?;
        let address = entry.address.ok_or(NoRoute::NotRunning)?;
        Ok(SocketAddr::new(address, *target))
    }

    fn ports(&self) -> Vec<u16> {
        let containers = self
            .containers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let ports: BTreeSet<u16> = containers
            .values()
            .flat_map(|entry| entry.rules.keys().copied())
            .collect();
        ports.into_iter().collect()
    }
}
