//! The front door of serverless deployments, at `/inference`: a request to
//! `/inference/<deployment>/<path>` with `Authorization: Bearer <inference
//! key>` waits in the deployment's queue for a healthy replica
//! (`App::deployment_slot`) and is forwarded to it as it came (method,
//! path below the deployment, query, headers, body), less its hop-by-hop
//! headers and the key; the replica's answer streams back. The replica's
//! room is held until its answer is fully sent.
//!
//! Errors are Verda's `{code, message}`, as the SDKs that call deployments
//! read them.

use crate::verda::VerdaError;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;
use tessera_app::{App, Error};

#[derive(Clone)]
struct FrontDoor {
    app: App,
    replicas: Client<HttpConnector, Body>,
}

pub fn router(app: App) -> Router {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_nodelay(true);
    let replicas = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    Router::new()
        .route("/{name}", any(call_root))
        .route("/{name}/", any(call_root))
        .route("/{name}/{*rest}", any(call))
        .with_state(FrontDoor { app, replicas })
}

async fn call_root(
    state: State<FrontDoor>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    forward(state, name, String::new(), request).await
}

async fn call(
    state: State<FrontDoor>,
    Path((name, rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    forward(state, name, rest, request).await
}

fn refused(err: Error) -> Response {
    VerdaError(err).into_response()
}

async fn forward(
    State(door): State<FrontDoor>,
    name: String,
    rest: String,
    request: Request,
) -> Response {
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let project = match door.app.inference_project(key).await {
        Ok(project) => project,
        Err(err) => return refused(err),
    };
    let (mut parts, body) = request.into_parts();
    let slot = match door.app.deployment_slot(&project, &name).await {
        Ok(slot) => slot,
        Err(err) => return refused(err),
    };
    let path = match parts.uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(slot.addr.to_string())
        .path_and_query(path)
        .build()
    {
        Ok(uri) => uri,
        Err(_) => {
            return refused(Error::invalid("path", "the request path is not valid"));
        }
    };
    parts.version = axum::http::Version::HTTP_11;
    parts.extensions.clear();
    let headers = &mut parts.headers;
    tessera_gateway::strip_hop_by_hop(headers);
    // The key is the caller's to the cloud, not the replica's to see.
    headers.remove(header::AUTHORIZATION);
    if let Ok(host) = HeaderValue::from_str(&slot.addr.to_string()) {
        headers.insert(header::HOST, host);
    }
    let answer = match door
        .replicas
        .request(axum::http::Request::from_parts(parts, body))
        .await
    {
        Ok(answer) => answer,
        Err(err) => {
            tracing::debug!(deployment = %name, replica = %slot.addr, error = %err, "a replica did not answer");
            return refused(Error::HostFailed(format!(
                "the replica of deployment {name} did not answer: {err}"
            )));
        }
    };
    let (mut parts, incoming) = answer.into_parts();
    tessera_gateway::strip_hop_by_hop(&mut parts.headers);
    // The replica's room is given back when its answer has been sent.
    let body = incoming.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}
