//! The HTTP listener every face is served on: hyper, with the limits that
//! keep slow or greedy clients from taking the server down.
//!
//! - **Connections**: at most [`HttpLimits::max_connections`] in all
//!   (never more than the process's file descriptors allow, less a reserve
//!   for the store and the hosts) and [`HttpLimits::max_per_address`] from
//!   one client address. A connection over a limit is closed as soon as it
//!   is accepted, so it never waits in the kernel's queue ahead of others.
//! - **Headers and idleness**: a request's headers must arrive within
//!   [`HttpLimits::header_timeout`]; the same clock closes a kept-alive
//!   connection that sends no next request (hyper's header-read timer
//!   starts when it waits for a request head).
//! - **Slow readers**: a write that makes no progress for
//!   [`HttpLimits::write_timeout`] ends the connection, so a client that
//!   stops reading its answers (or a WebSocket's) holds nothing for long.
//! - **Slow bodies and handlers** are bounded per route by the faces'
//!   request deadline ([`crate::deadline`]); long-polls and WebSocket
//!   upgrades keep their own bounds.
//!
//! Each request carries its client's address as axum's `ConnectInfo`.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tessera_gateway::ConnectionLimits;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Descriptors kept for everything but client connections.
const FD_RESERVE: u64 = 512;
/// How long a stopping server waits for the requests under way.
const DRAIN: Duration = Duration::from_secs(30);

/// Limits on client connections. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 20_000,
            max_per_address: 1_000,
            header_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// The file descriptors the process may give to client connections (the
/// API's, and the ingress gateway's when it runs in the same process):
/// raises the soft limit to the hard one first, and keeps a reserve for
/// the store and the hosts.
pub fn descriptor_budget() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    usize::try_from(limit.saturating_sub(FD_RESERVE).max(64)).unwrap_or(usize::MAX)
}

/// The connection limit the process's descriptors allow.
fn descriptor_cap(wanted: usize) -> usize {
    let cap = descriptor_budget();
    if cap < wanted {
        // The default is a ceiling, not a request: only a limit an
        // operator asked for is worth a warning.
        if wanted == HttpLimits::default().max_connections {
            tracing::info!(
                default = wanted,
                allowed = cap,
                "client connections held to the file-descriptor limit"
            );
        } else {
            tracing::warn!(
                wanted,
                allowed = cap,
                "the file-descriptor limit allows fewer client connections than configured"
            );
        }
    }
    wanted.min(cap)
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets the
/// requests under way finish (up to half a minute).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections = ConnectionLimits::new(
        descriptor_cap(limits.max_connections),
        limits.max_per_address,
    );
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout)
        .enable_connect_protocol();
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: wait a little, never spin.
                    tracing::debug!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = connections.admit(remote.ip()) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(client = %remote.ip(), refused, "connection refused: over the connection limits");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut io = tokio_io_timeout::TimeoutStream::new(stream);
        io.set_write_timeout(Some(limits.write_timeout));
        let io = TokioIo::new(Box::pin(io));
        let service = router
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                request.map(axum::body::Body::new)
            });
        let service = TowerToHyperService::new(service);
        let connection = builder
            .serve_connection_with_upgrades(io, service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::trace!(error = %err, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still under way after {DRAIN:?}; stopping anyway");
    }
    Ok(())
}

/// The address a request came from, as limits per client address count
/// it ([`tessera_gateway::client_block`]: an IPv6 client's /64); `None`
/// when it was not served by [`serve`], as in a test calling the router
/// directly.
pub struct ClientAddress(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| tessera_gateway::client_block(addr.ip())),
        ))
    }
}
