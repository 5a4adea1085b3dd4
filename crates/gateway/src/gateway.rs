//! Starting and stopping the gateway, and what a running one tells its
//! owner: the addresses it listens on and the certificate it serves.
//!
//! Design decision: [`Gateway::start`] returns only once ports 80 and 443
//! and the table's current ports are open (failing if 80 or 443 cannot be),
//! so the caller can use the addresses at once; everything after runs in
//! tasks that [`Gateway::stop`] drains (requests in flight finish, within
//! `drain_timeout`) and that dropping the handle aborts.

use crate::certificate::{self, CertificateError};
use crate::config::{ALWAYS_OPEN, GatewayConfig, PortMapping};
use crate::hostname::{Domain, InvalidDomain};
use crate::limits::ConnectionLimits;
use crate::listeners::Listeners;
use crate::routes::RouteTable;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The highest port an ingress rule may use; an offset must keep it below 65536.
const HIGHEST_PORT: u16 = 8999;

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid gateway domain")]
    Domain(#[from] InvalidDomain),
    #[error("port offset {0} is too large: port {HIGHEST_PORT} would not fit below 65536")]
    Offset(u16),
    #[error("the gateway has no certificate")]
    Certificate(#[from] CertificateError),
    #[error("cannot listen on {address} for external port {port}")]
    Bind {
        port: u16,
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) domain: Domain,
    pub(crate) table: Arc<dyn RouteTable>,
    pub(crate) tls: TlsAcceptor,
    /// Pooled keep-alive connections to containers.
    pub(crate) upstream: Client<HttpConnector, crate::proxy::SentBody>,
    pub(crate) header_read_timeout: Duration,
    pub(crate) tls_handshake_timeout: Duration,
    /// Client connections open, in all and per address.
    pub(crate) connections: Arc<ConnectionLimits>,
    pub(crate) upstream_response_timeout: Duration,
    /// Listeners, client connections and upgraded tunnels.
    pub(crate) tasks: TaskTracker,
    /// Stop accepting; finish what is in flight.
    pub(crate) stop: CancellationToken,
    /// Drop every connection now.
    pub(crate) abort: CancellationToken,
}

/// A running gateway. Stop it with [`Gateway::stop`]; dropping it closes
/// everything at once.
pub struct Gateway {
    shared: Arc<Shared>,
    bound: watch::Receiver<BTreeMap<u16, SocketAddr>>,
    refresh: Arc<Notify>,
    listeners: Option<JoinHandle<()>>,
    certificate_pem: String,
    drain_timeout: Duration,
}

impl Gateway {
    /// Loads (or generates) the certificate, opens 80, 443 and the ports
    /// `table` lists, and starts serving. Must be called within a tokio
    /// runtime. Reads or writes the certificate files synchronously, once.
    pub async fn start(
        config: GatewayConfig,
        table: Arc<dyn RouteTable>,
    ) -> Result<Gateway, StartError> {
        let domain = Domain::parse(&config.domain)?;
        if let PortMapping::Offset(offset) = config.ports
            && HIGHEST_PORT.checked_add(offset).is_none()
        {
            return Err(StartError::Offset(offset));
        }
        let certificate = certificate::load(&config.certificate, &domain)?;

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.upstream_connect_timeout));
        connector.set_nodelay(true);
        let upstream = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            // Idle connections kept to each container: each is a file
            // descriptor no client connection accounts for.
            .pool_max_idle_per_host(8)
            .build(connector);

        let shared = Arc::new(Shared {
            domain,
            table,
            tls: TlsAcceptor::from(certificate.tls),
            upstream,
            header_read_timeout: config.header_read_timeout,
            tls_handshake_timeout: config.tls_handshake_timeout,
            connections: ConnectionLimits::new(config.max_connections, config.max_per_address),
            upstream_response_timeout: config.upstream_response_timeout,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
        });
        let (bound_tx, bound) = watch::channel(BTreeMap::new());
        let mut listeners = Listeners::new(shared.clone(), config.listen, config.ports, bound_tx);
        for port in ALWAYS_OPEN {
            if let Err(failure) = listeners.open(port).await {
                shared.stop.cancel();
                return Err(StartError::Bind {
                    port: failure.port,
                    address: failure.address,
                    source: failure.error,
                });
            }
        }
        listeners.reconcile().await;
        let refresh = Arc::new(Notify::new());
        let task = tokio::spawn(listeners.run(refresh.clone(), config.refresh_interval));
        tracing::info!(domain = %shared.domain, "ingress gateway started");
        Ok(Gateway {
            shared,
            bound,
            refresh,
            listeners: Some(task),
            certificate_pem: certificate.pem,
            drain_timeout: config.drain_timeout,
        })
    }

    /// External port -> the local address serving it, for every open port.
    pub fn bound(&self) -> BTreeMap<u16, SocketAddr> {
        self.bound.borrow().clone()
    }

    /// The local address serving external `port`, if it is open.
    pub fn local_addr(&self, port: u16) -> Option<SocketAddr> {
        self.bound.borrow().get(&port).copied()
    }

    /// Follows [`Gateway::bound`] as ports open and close.
    pub fn watch_bound(&self) -> watch::Receiver<BTreeMap<u16, SocketAddr>> {
        self.bound.clone()
    }

    /// The certificate chain served for TLS, PEM: what a client must trust
    /// when it is self-signed.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Reads the table's ports now instead of at the next poll; call it
    /// after adding or removing a rule.
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }

    /// Closes every port, lets requests in flight finish (for at most the
    /// configured `drain_timeout`), then closes what is left.
    pub async fn stop(mut self) {
        self.shared.stop.cancel();
        if let Some(task) = self.listeners.take()
            && let Err(error) = task.await
        {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "gateway port task failed"
            );
        }
        self.shared.tasks.close();
        if tokio::time::timeout(self.drain_timeout, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("gateway connections still open after the drain timeout; closing them");
            self.shared.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.tasks.wait()).await;
        }
        tracing::info!("ingress gateway stopped");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.abort.cancel();
    }
}
