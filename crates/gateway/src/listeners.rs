//! The set of open ports: one listener per external port that has a rule,
//! plus 80 and 443, kept in step with the route table.
//!
//! Design decision: the table is polled (every `refresh_interval`, 250 ms
//! by default, and at once on [`crate::Gateway::refresh`]) rather than
//! pushed to, so any table works, a port whose bind failed is retried on the
//! next pass, and a change is live within a second. Closing a port stops
//! new connections on it; those already open are served until they end (and
//! their requests see the changed table).

use crate::config::{ALWAYS_OPEN, PortMapping, is_ingress_port};
use crate::connection;
use crate::gateway::Shared;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// A port that could not be opened.
#[derive(Debug)]
pub(crate) struct BindFailure {
    pub(crate) port: u16,
    pub(crate) address: SocketAddr,
    pub(crate) error: std::io::Error,
}

pub(crate) struct Listeners {
    shared: Arc<Shared>,
    listen: IpAddr,
    mapping: PortMapping,
    open: BTreeMap<u16, OpenPort>,
    /// Ports whose last bind failed, so each failure is logged once.
    failing: BTreeSet<u16>,
    /// Ports outside the ingress range already warned about.
    ignored: BTreeSet<u16>,
    bound: watch::Sender<BTreeMap<u16, SocketAddr>>,
}

struct OpenPort {
    local: SocketAddr,
    stop: CancellationToken,
}

impl Listeners {
    pub(crate) fn new(
        shared: Arc<Shared>,
        listen: IpAddr,
        mapping: PortMapping,
        bound: watch::Sender<BTreeMap<u16, SocketAddr>>,
    ) -> Self {
        Listeners {
            shared,
            listen,
            mapping,
            open: BTreeMap::new(),
            failing: BTreeSet::new(),
            ignored: BTreeSet::new(),
            bound,
        }
    }

    /// Opens external `port` and starts accepting on it.
    pub(crate) async fn open(&mut self, port: u16) -> Result<SocketAddr, BindFailure> {
        // The offset is checked at start, so the fallback is never taken.
        let local_port = self.mapping.local_port(port).unwrap_or(0);
        let address = SocketAddr::new(self.listen, local_port);
        let listener = TcpListener::bind(address)
            .await
            .and_then(|listener| Ok((listener.local_addr()?, listener)));
        let (local, listener) = listener.map_err(|error| BindFailure {
            port,
            address,
            error,
        })?;
        let stop = self.shared.stop.child_token();
        self.shared
            .tasks
            .spawn(accept(listener, port, self.shared.clone(), stop.clone()));
        tracing::info!(port, %local, "gateway listening");
        self.open.insert(port, OpenPort { local, stop });
        self.publish();
        Ok(local)
    }

    fn close(&mut self, port: u16) {
        if let Some(open) = self.open.remove(&port) {
            open.stop.cancel();
            tracing::info!(port, local = %open.local, "gateway no longer listening");
        }
    }

    /// Opens the ports the table lists and closes those it no longer does.
    pub(crate) async fn reconcile(&mut self) {
        let mut wanted: BTreeSet<u16> = ALWAYS_OPEN.into_iter().collect();
        for port in self.shared.table.ports() {
            if is_ingress_port(port) {
                wanted.insert(port);
            } else if self.ignored.insert(port) {
                tracing::warn!(
                    port,
                    "the route table lists a port outside 80, 443 and 8000-8999; ignored"
                );
            }
        }
        let unwanted: Vec<u16> = self
            .open
            .keys()
            .copied()
            .filter(|p| !wanted.contains(p))
            .collect();
        for port in unwanted {
            self.close(port);
        }
        for port in wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            match self.open(port).await {
                Ok(_) => {
                    self.failing.remove(&port);
                }
                Err(failure) => {
                    if self.failing.insert(port) {
                        tracing::warn!(
                            port,
                            address = %failure.address,
                            error = &failure.error as &dyn std::error::Error,
                            "cannot listen for an ingress port; will retry"
                        );
                    }
                }
            }
        }
        self.publish();
    }

    /// Reconciles every `every`, or when `refresh` is notified, until the
    /// gateway stops.
    pub(crate) async fn run(mut self, refresh: Arc<Notify>, every: Duration) {
        loop {
            tokio::select! {
                () = self.shared.stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
                () = refresh.notified() => {}
            }
            self.reconcile().await;
        }
        let ports: Vec<u16> = self.open.keys().copied().collect();
        for port in ports {
            self.close(port);
        }
        self.publish();
    }

    fn publish(&self) {
        let bound = self
            .open
            .iter()
            .map(|(port, open)| (*port, open.local))
            .collect();
        self.bound.send_replace(bound);
    }
}

/// Accepts connections on one port until told to stop.
async fn accept(listener: TcpListener, port: u16, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match shared.connections.admit(peer.ip()) {
                Some(slot) => {
                    shared.tasks.spawn(connection::serve(
                        stream,
                        peer,
                        port,
                        shared.clone(),
                        Arc::new(slot),
                    ));
                }
                None => {
                    tracing::warn!(port, %peer, "connection limit reached (in all, or of this address); closing a new connection");
                }
            },
            Err(error) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(
                    port,
                    error = &error as &dyn std::error::Error,
                    "accept failed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
