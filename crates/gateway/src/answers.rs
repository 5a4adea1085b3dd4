//! The gateway's own answers, for requests it does not forward.
//!
//! Design decision: every refusal is a small JSON body, `{"error":
//! "<sentence>", "reason": "<code>"}` (the containers API's error shape, so
//! clients show the sentence), with a status that says whose fault it is: 400
//! for a malformed request, 421 for a host that is not one of ours, 502 for
//! a container the gateway cannot reach or route to. Nothing a client sends
//! leads to a 500.

use crate::routes::NoRoute;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

/// The body of every answer, forwarded or the gateway's own.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// A request the gateway answers itself.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The request is malformed (no host, a target that is not a path).
    BadRequest(String),
    /// A method a reverse proxy does not forward (`CONNECT`).
    MethodNotAllowed(String),
    /// The host is not `<id>.<domain>`.
    Misdirected { host: String, domain: String },
    /// The route table has nowhere to send it.
    NoRoute {
        container: String,
        port: u16,
        why: NoRoute,
    },
    /// The container did not accept a connection on the target port.
    Unreachable {
        container: String,
        port: u16,
        target_port: u16,
        cause: &'static str,
    },
    /// The container accepted but did not answer with an HTTP response.
    UpstreamFailed {
        container: String,
        port: u16,
        target_port: u16,
    },
    /// The container did not begin its answer in time.
    UpstreamTimeout {
        container: String,
        port: u16,
        target_port: u16,
        after: std::time::Duration,
    },
}

impl Refusal {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Refusal::NoRoute { .. }
            | Refusal::Unreachable { .. }
            | Refusal::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::MethodNotAllowed(_) => "method_not_allowed",
            Refusal::Misdirected { .. } => "unknown_host",
            Refusal::NoRoute { why, .. } => why.code(),
            Refusal::Unreachable { .. } => "container_unreachable",
            Refusal::UpstreamFailed { .. } => "container_failed",
            Refusal::UpstreamTimeout { .. } => "container_timeout",
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::BadRequest(message) | Refusal::MethodNotAllowed(message) => message.clone(),
            Refusal::Misdirected { host, domain } => {
                format!(
                    "{host:?} is not a container hostname: this gateway serves <container id>.{domain}"
                )
            }
            Refusal::NoRoute {
                container,
                port,
                why,
            } => why.describe(container, *port),
            Refusal::Unreachable {
                container,
                port,
                target_port,
                cause,
            } => format!(
                "container {container} does not answer on its port {target_port} (ingress port {port}): {cause}"
            ),
            Refusal::UpstreamFailed {
                container,
                port,
                target_port,
            } => format!(
                "container {container} closed the connection on its port {target_port} (ingress port {port}) without a complete answer"
            ),
            Refusal::UpstreamTimeout {
                container,
                port,
                target_port,
                after,
            } => format!(
                "container {container} did not begin its answer on its port {target_port} (ingress port {port}) within {} s",
                after.as_secs()
            ),
        }
    }

    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        let body = serde_json::json!({ "error": self.message(), "reason": self.reason() });
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A body of known bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
