//! One accepted client connection: decide whether it is TLS, terminate TLS
//! if so, and serve HTTP/1.1 on it until it closes or the gateway stops.
//!
//! Design decision: the port decides, except on 8000-8999: 80 is always
//! plain HTTP, 443 always TLS, and on 8000-8999 the first byte does (a TLS
//! handshake record starts with 0x16, which no HTTP method does), read with
//! `peek` so the byte stays for whichever protocol gets it.

use crate::gateway::Shared;
use crate::limits::Slot;
use crate::proxy;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// How a request reached the gateway.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The external port (not the local one when an offset is in use).
    pub(crate) port: u16,
    /// Whether the gateway terminated TLS on this connection.
    pub(crate) tls: bool,
}

/// Serves one connection accepted on external `port`. The slot counts it
/// against the connection limits until it ends, and any tunnel it is
/// upgraded to with it.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    shared: Arc<Shared>,
    slot: Arc<Slot>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = &error as &dyn std::error::Error, "cannot set TCP_NODELAY");
    }
    let tls = match port {
        80 => false,
        443 => true,
        _ => match first_byte(&stream, &shared).await {
            Some(byte) => byte == TLS_HANDSHAKE,
            None => return,
        },
    };
    let arrival = Arrival { peer, port, tls };
    if !tls {
        serve_http(stream, arrival, shared, slot).await;
        return;
    }
    let handshake = shared.tls.accept(stream);
    match tokio::time::timeout(shared.tls_handshake_timeout, handshake).await {
        Ok(Ok(stream)) => serve_http(stream, arrival, shared, slot).await,
        Ok(Err(error)) => {
            tracing::debug!(%peer, port, error = &error as &dyn std::error::Error, "TLS handshake failed");
        }
        Err(_) => tracing::debug!(%peer, port, "TLS handshake timed out"),
    }
}

/// The connection's first byte, left unread; `None` if the client closes or
/// sends nothing in time.
async fn first_byte(stream: &TcpStream, shared: &Shared) -> Option<u8> {
    let mut buffer = [0u8; 1];
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(shared.header_read_timeout, stream.peek(&mut buffer)) => peeked,
        () = shared.stop.cancelled() => return None,
    };
    match peeked {
        Ok(Ok(1)) => Some(buffer[0]),
        _ => None,
    }
}

/// HTTP/1.1 (with upgrades) on a plain or TLS stream. On stop, the
/// connection finishes the request in flight and closes; on abort, at once.
async fn serve_http<I>(io: I, arrival: Arrival, shared: Arc<Shared>, slot: Arc<Slot>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_shared = shared.clone();
    let service = service_fn(move |request| {
        let (shared, slot) = (service_shared.clone(), slot.clone());
        async move { Ok::<_, Infallible>(proxy::forward(request, &shared, &arrival, slot).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.header_read_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shared.stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                () = shared.abort.cancelled() => Ok(()),
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(
            peer = %arrival.peer,
            port = arrival.port,
            error = &error as &dyn std::error::Error,
            "client connection ended with an error"
        );
    }
}
