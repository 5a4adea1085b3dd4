//! One request through the gateway: read its host, ask the route table,
//! forward it to the container, and pass the answer (or the upgraded
//! connection) back.
//!
//! Design decision: the gateway is the edge, so it trusts nothing a client
//! says about forwarding: `X-Forwarded-For`, `-Proto`, `-Host` and `-Port`
//! are set (replaced, not appended to) from what the gateway saw, and a
//! client's `Forwarded` header is dropped. The `Host` header is passed on
//! unchanged, so the container sees its public name.

use crate::answers::{ProxyBody, Refusal};
use crate::connection::Arrival;
use crate::gateway::Shared;
use crate::hostname::HostMismatch;
use crate::limits::Slot;
use crate::routes::NoRoute;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    CONNECTION, CONTENT_LENGTH, FORWARDED, HOST, HeaderMap, HeaderName, HeaderValue,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use hyper::upgrade::OnUpgrade;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Headers that describe one hop and are never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// The answer to one request: the container's, or the gateway's refusal.
pub(crate) async fn forward(
    request: Request<Incoming>,
    shared: &Shared,
    arrival: &Arrival,
    slot: Arc<Slot>,
) -> Response<ProxyBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    match forward_or_refuse(request, shared, arrival, slot).await {
        Ok(response) => response,
        Err(refusal) => {
            tracing::debug!(
                peer = %arrival.peer,
                port = arrival.port,
                %method,
                path,
                status = refusal.status().as_u16(),
                ?refusal,
                "ingress request refused"
            );
            refusal.into_response()
        }
    }
}

async fn forward_or_refuse(
    mut request: Request<Incoming>,
    shared: &Shared,
    arrival: &Arrival,
    slot: Arc<Slot>,
) -> Result<Response<ProxyBody>, Refusal> {
    if request.method() == Method::CONNECT {
        return Err(Refusal::MethodNotAllowed(
            "CONNECT is not forwarded by the ingress gateway".into(),
        ));
    }
    let host = request_host(&request)?;
    let container = match shared.domain.container_of(&host) {
        Ok(container) => container,
        Err(HostMismatch::Foreign) => {
            return Err(Refusal::Misdirected {
                host,
                domain: shared.domain.to_string(),
            });
        }
        Err(HostMismatch::NotAContainer(label)) => {
            return Err(Refusal::NoRoute {
                container: label,
                port: arrival.port,
                why: NoRoute::UnknownContainer,
            });
        }
    };
    let target = shared
        .table
        .route(&container, arrival.port)
        .map_err(|why| Refusal::NoRoute {
            container: container.clone(),
            port: arrival.port,
            why,
        })?;

    let upgrade = requested_upgrade(&request);
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
    let outgoing = upstream_request(request, target, &host, arrival, upgrade)?;
    // The container's time to answer runs from the moment the whole
    // request has been sent: a slow upload is not the container's delay.
    let (sent, all_sent) = tokio::sync::oneshot::channel();
    let outgoing = outgoing.map(|body| SentBody::new(body, sent));
    let wait = shared.upstream_response_timeout;
    let answer = tokio::select! {
        answer = shared.upstream.request(outgoing) => answer,
        () = async move {
            let _ = all_sent.await;
            tokio::time::sleep(wait).await;
        } => {
            return Err(Refusal::UpstreamTimeout {
                container: container.clone(),
                port: arrival.port,
                target_port: target.port(),
                after: wait,
            });
        }
    };
    let mut response = answer.map_err(|error| {
        tracing::debug!(
            container,
            %target,
            error = &error as &dyn std::error::Error,
            "forwarding to a container failed"
        );
        if error.is_connect() {
            Refusal::Unreachable {
                container: container.clone(),
                port: arrival.port,
                target_port: target.port(),
                cause: connect_cause(&error),
            }
        } else {
            Refusal::UpstreamFailed {
                container: container.clone(),
                port: arrival.port,
                target_port: target.port(),
            }
        }
    })?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = client_side else {
            // The container switched protocols on a request that asked for none.
            return Err(Refusal::UpstreamFailed {
                container,
                port: arrival.port,
                target_port: target.port(),
            });
        };
        let upstream_side = hyper::upgrade::on(&mut response);
        shared.tasks.spawn(tunnel(
            client_side,
            upstream_side,
            shared.stop.clone(),
            slot,
        ));
        let protocol = response.headers().get(UPGRADE).cloned();
        strip_hop_by_hop(response.headers_mut());
        if let Some(protocol) = protocol {
            let headers = response.headers_mut();
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, protocol);
        }
    } else {
        strip_hop_by_hop(response.headers_mut());
    }
    Ok(response.map(BodyExt::boxed_unsync))
}

/// The host the request is for: the authority of an absolute-form target,
/// else the one `Host` header.
fn request_host(request: &Request<Incoming>) -> Result<String, Refusal> {
    if let Some(authority) = request.uri().authority() {
        return Ok(authority
            .as_str()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_string());
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => host
            .to_str()
            .map(str::to_string)
            .map_err(|_| Refusal::BadRequest("the Host header is not plain text".into())),
        (None, _) => Err(Refusal::BadRequest("the request has no Host header".into())),
        (Some(_), Some(_)) => Err(Refusal::BadRequest(
            "the request has more than one Host header".into(),
        )),
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` with an `Upgrade` header), e.g. `websocket`.
fn requested_upgrade(request: &Request<Incoming>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    connection_tokens(request.headers())
        .any(|token| token.eq_ignore_ascii_case("upgrade"))
        .then(|| request.headers().get(UPGRADE).cloned())
        .flatten()
}

/// A request body on its way to a container, which says when it has all
/// been sent (or failed): the container's time to answer starts then.
pub(crate) struct SentBody {
    inner: Incoming,
    sent: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SentBody {
    fn new(inner: Incoming, sent: tokio::sync::oneshot::Sender<()>) -> SentBody {
        let mut body = SentBody {
            inner,
            sent: Some(sent),
        };
        // An empty body may never be read.
        if hyper::body::Body::is_end_stream(&body.inner) {
            body.all_sent();
        }
        body
    }

    fn all_sent(&mut self) {
        if let Some(sent) = self.sent.take() {
            let _ = sent.send(());
        }
    }
}

impl hyper::body::Body for SentBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(None | Some(Err(_))) => this.all_sent(),
            std::task::Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.all_sent(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The request as sent to the container: same method, path, headers and
/// body, less the hop-by-hop headers, plus the forwarding headers.
fn upstream_request(
    request: Request<Incoming>,
    target: SocketAddr,
    host: &str,
    arrival: &Arrival,
    upgrade: Option<HeaderValue>,
) -> Result<Request<Incoming>, Refusal> {
    let (mut parts, body) = request.into_parts();
    let path = match parts.uri.path_and_query() {
        None => "/",
        Some(path) if path.as_str().starts_with('/') => path.as_str(),
        Some(_) => {
            return Err(Refusal::BadRequest(
                "the request target must be a path".into(),
            ));
        }
    };
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(target.to_string())
        .path_and_query(path)
        .build()
        .map_err(|_| Refusal::BadRequest("the request target is not a valid path".into()))?;
    parts.version = Version::HTTP_11;
    parts.extensions.clear();

    let host_value = HeaderValue::from_str(host)
        .map_err(|_| Refusal::BadRequest("the host is not a valid header value".into()))?;
    let headers = &mut parts.headers;
    headers.remove(HOST);
    strip_hop_by_hop(headers);
    headers.remove(FORWARDED);
    headers.insert(HOST, host_value.clone());
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
    headers.insert(X_FORWARDED_HOST, host_value);
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if arrival.tls { "https" } else { "http" }),
    );
    headers.insert(X_FORWARDED_PORT, HeaderValue::from(arrival.port));
    if let Ok(peer) = HeaderValue::from_str(&arrival.peer.ip().to_string()) {
        headers.insert(X_FORWARDED_FOR, peer.clone());
        // Set, never passed on: a client must not name its own address.
        headers.insert(X_REAL_IP, peer);
    }
    Ok(Request::from_parts(parts, body))
}

/// Removes the hop-by-hop headers and those the `Connection` header names
/// (but never `Host` or `Content-Length`, which frame and route the message).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .filter(|name| *name != HOST && *name != CONTENT_LENGTH)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Why a connection to a container failed, in words fit for its owner.
fn connect_cause(error: &hyper_util::client::legacy::Error) -> &'static str {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused",
                std::io::ErrorKind::TimedOut => "no answer in time",
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                    "its address is unreachable"
                }
                _ => "connection failed",
            };
        }
        source = cause.source();
    }
    "connection failed"
}

/// Copies bytes both ways between an upgraded client connection and the
/// container's, until either side closes or the gateway stops.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    stop: CancellationToken,
    // The client connection's place under the limits, held while the
    // tunnel lasts.
    _slot: Arc<Slot>,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            tracing::debug!(
                error = &error as &dyn std::error::Error,
                "upgrade did not complete"
            );
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(error) = result {
                tracing::debug!(error = &error as &dyn std::error::Error, "upgraded connection ended");
            }
        }
        () = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret, host, content-length"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("host", "abc12345.compute.localhost"),
            ("content-length", "3"),
            ("x-kept", "yes"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "host", "x-kept"]);
    }
}
