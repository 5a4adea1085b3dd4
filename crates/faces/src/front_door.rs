//! The front door of serverless deployments, at `/inference`: a request to
//! `/inference/<deployment>/<path>` with `Authorization: Bearer <inference
//! key>` waits in the deployment's queue for a healthy replica
//! (`App::deployment_slot`) and is forwarded to it as it came (method,
//! path below the deployment, query, headers, body), less its hop-by-hop
//! headers and the key; the replica's answer streams back. The replica's
//! room is held until its answer is fully sent.
//!
//! With `Prefer: respond-async` the front door answers 202 at once with
//! `{"Id", "StatusPath", "ResultPath"}` (and `X-Inference-Id`); the request
//! is queued and sent the same way, and `GET /inference/status/<deployment>`
//! and `/inference/result/<deployment>` with `X-Inference-Id` tell where it
//! is and give the replica's answer (as Verda's SDKs build those paths:
//! siblings of the deployment's).
//!
//! Errors are Verda's `{code, message}`, as the SDKs that call deployments
//! read them.

use crate::verda::VerdaError;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;
use tessera_app::deployments::DeploymentKind;
use tessera_app::deployments::front_door::Slot;
use tessera_app::deployments::jobs::StoredRequest;
use tessera_app::deployments::requests::{
    AsyncRequest, AsyncStatus, MAX_ANSWER_BYTES, RecoveredRequest,
};
use tessera_app::{App, Error};

const PREFER: HeaderName = HeaderName::from_static("prefer");
const INFERENCE_ID: HeaderName = HeaderName::from_static("x-inference-id");

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
    let door = FrontDoor { app, replicas };
    let runner = door.clone();
    door.app
        .run_recovered_requests_with(std::sync::Arc::new(move |recovered| {
            let door = runner.clone();
            tokio::spawn(async move { run_recovered(door, recovered).await });
        }));
    Router::new()
        .route("/status/{name}", get(async_status))
        .route("/result/{name}", get(async_result))
        .route("/{name}", any(call_root))
        .route("/{name}/", any(call_root))
        .route("/{name}/{*rest}", any(call))
        .with_state(door)
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
    Path((name, _)): Path<(String, String)>,
    request: Request,
) -> Response {
    // The path below the deployment as it came, not percent-decoded: the
    // replica reads it as a client would have sent it to the replica.
    let rest = request
        .uri()
        .path()
        .strip_prefix(&format!("/{name}/"))
        .unwrap_or_default()
        .to_string();
    forward(state, name, rest, request).await
}

fn refused(err: Error) -> Response {
    VerdaError(err).into_response()
}

/// The caller's inference key, from `Authorization: Bearer`.
fn key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether the caller asked to be answered at once (`Prefer:
/// respond-async`, or `respond-async-proxy` when it will not ask again).
fn wants_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(PREFER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().starts_with("respond-async"))
}

async fn forward(
    State(door): State<FrontDoor>,
    name: String,
    rest: String,
    request: Request,
) -> Response {
    let project = match door.app.inference_project(key(request.headers())).await {
        Ok(project) => project,
        Err(err) => return refused(err),
    };
    if wants_async(request.headers()) {
        return begin_async(door, project, name, rest, request).await;
    }
    let slot = match door.app.deployment_slot(&project, &name).await {
        Ok(slot) => slot,
        // A job deployment's requests are always answered at once.
        Err(Error::NotFound(why)) => {
            return match is_job(&door, &project, &name).await {
                true => begin_job(door, project, name, rest, request).await,
                false => refused(Error::NotFound(why)),
            };
        }
        Err(err) => return refused(err),
    };
    let answer = match send(&door, &slot, &name, &rest, request).await {
        Ok(answer) => answer,
        Err(err) => return refused(err),
    };
    let (parts, incoming) = answer.into_parts();
    // The replica's room is given back when its answer has been sent.
    let body = incoming.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// Sends a request to the replica `slot` gave, as it came but for its
/// hop-by-hop headers, the key and its `Prefer`.
async fn send(
    door: &FrontDoor,
    slot: &Slot,
    name: &str,
    rest: &str,
    request: Request,
) -> Result<axum::http::Response<hyper::body::Incoming>, Error> {
    let (mut parts, body) = request.into_parts();
    let path = match parts.uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(slot.addr.to_string())
        .path_and_query(path)
        .build()
        .map_err(|_| Error::invalid("path", "the request path is not valid"))?;
    parts.version = axum::http::Version::HTTP_11;
    parts.extensions.clear();
    let headers = &mut parts.headers;
    tessera_gateway::strip_hop_by_hop(headers);
    // The key is the caller's to the cloud, not the replica's to see.
    headers.remove(header::AUTHORIZATION);
    headers.remove(PREFER);
    if let Ok(host) = HeaderValue::from_str(&slot.addr.to_string()) {
        headers.insert(header::HOST, host);
    }
    let mut answer = door
        .replicas
        .request(axum::http::Request::from_parts(parts, body))
        .await
        .map_err(|err| {
            tracing::debug!(deployment = %name, replica = %slot.addr, error = %err, "a replica did not answer");
            Error::HostFailed(format!("the replica of deployment {name} did not answer: {err}"))
        })?;
    tessera_gateway::strip_hop_by_hop(answer.headers_mut());
    Ok(answer)
}

/// An async request: recorded, answered with its id at once, then queued
/// and sent like any other, its answer kept for `status` and `result`.
async fn begin_async(
    door: FrontDoor,
    project: String,
    name: String,
    rest: String,
    request: Request,
) -> Response {
    if is_job(&door, &project, &name).await {
        return begin_job(door, project, name, rest, request).await;
    }
    // The body first: a request recorded is one that can be sent.
    let (parts, body) = request.into_parts();
    let body = match kept_body(body).await {
        Ok(body) => body,
        Err(err) => return refused(err),
    };
    let stored = stored_request(parts.clone(), &rest, &body);
    let id = match door.app.begin_async_request(&project, &name, &stored).await {
        Ok(id) => id,
        Err(err) => return refused(err),
    };
    let request = Request::from_parts(parts, Body::from(body));
    let (task, job, deployment) = (door.clone(), id.clone(), name.clone());
    tokio::spawn(async move { finish_async(task, project, job, deployment, rest, request).await });
    accepted(&id, &name)
}

/// Sends an async request and keeps its answer.
async fn finish_async(
    door: FrontDoor,
    project: String,
    id: String,
    name: String,
    rest: String,
    request: Request,
) {
    let (code, content_type, body) = run_async(&door, &project, &id, &name, &rest, request).await;
    if let Err(err) = door
        .app
        .async_request_done(&id, code, &content_type, &body)
        .await
    {
        tracing::warn!(request = %id, error = %err, "an async request's answer was not kept");
    }
}

/// Sends again an async request taken over from a process that stopped,
/// rebuilt as it was asked.
async fn run_recovered(door: FrontDoor, recovered: RecoveredRequest) {
    let asked = &recovered.request;
    let (path, query) = match asked.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (asked.path.as_str(), None),
    };
    let rest = path.trim_start_matches('/').to_string();
    let mut builder = axum::http::Request::builder()
        .method(asked.method.as_str())
        .uri(match query {
            Some(query) => format!("/{rest}?{query}"),
            None => format!("/{rest}"),
        });
    for (name, value) in &asked.headers {
        builder = builder.header(name, value);
    }
    let body = base64::engine::general_purpose::STANDARD
        .decode(&asked.body)
        .unwrap_or_default();
    let request = match builder.body(Body::from(body)) {
        Ok(request) => request,
        Err(err) => {
            // Ended, saying why, rather than left waiting for ever.
            tracing::warn!(request = %recovered.id, error = %err, "a recovered request could not be rebuilt");
            let (code, content, body) = error_outcome(Error::invalid(
                "request",
                format!("the request could not be sent again: {err}"),
            ))
            .await;
            if let Err(err) = door
                .app
                .async_request_done(&recovered.id, code, &content, &body)
                .await
            {
                tracing::warn!(request = %recovered.id, error = %err, "an async request's answer was not kept");
            }
            return;
        }
    };
    finish_async(
        door,
        recovered.project_id,
        recovered.id,
        recovered.deployment,
        rest,
        request,
    )
    .await;
}

/// A request as asked, kept to be sent later: less its hop-by-hop
/// headers, the key and `Prefer`.
fn stored_request(mut parts: axum::http::request::Parts, rest: &str, body: &[u8]) -> StoredRequest {
    tessera_gateway::strip_hop_by_hop(&mut parts.headers);
    for name in [
        header::AUTHORIZATION,
        header::HOST,
        PREFER,
        header::CONTENT_LENGTH,
    ] {
        parts.headers.remove(name);
    }
    StoredRequest {
        method: parts.method.to_string(),
        path: match parts.uri.query() {
            Some(query) => format!("/{rest}?{query}"),
            None => format!("/{rest}"),
        },
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: base64::engine::general_purpose::STANDARD.encode(body),
    }
}

/// The whole body of a request that is kept to be sent later.
async fn kept_body(body: Body) -> Result<axum::body::Bytes, Error> {
    axum::body::to_bytes(body, MAX_ANSWER_BYTES)
        .await
        .map_err(|_| {
            Error::TooLarge(format!(
                "a request answered later has a body of at most {MAX_ANSWER_BYTES} bytes"
            ))
        })
}

/// Whether the project's deployment `name` is a job deployment.
async fn is_job(door: &FrontDoor, project: &str, name: &str) -> bool {
    matches!(
        door.app.project_deployment_any(project, name).await,
        Ok(Some(d)) if d.kind == DeploymentKind::Job
    )
}

/// A job's request: kept as it was asked, answered with its id at once;
/// it runs on a replica of its own when the job deployment has room.
async fn begin_job(
    door: FrontDoor,
    project: String,
    name: String,
    rest: String,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = match kept_body(body).await {
        Ok(body) => body,
        Err(err) => return refused(err),
    };
    let stored = stored_request(parts, &rest, &body);
    match door.app.begin_job_request(&project, &name, &stored).await {
        Ok(id) => accepted(&id, &name),
        Err(err) => refused(err),
    }
}

/// The 202 of a request answered at once: its id and where to ask.
fn accepted(id: &str, name: &str) -> Response {
    let status_path = format!("/status/{name}");
    let mut answer = (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({
            "Id": id,
            "StatusPath": status_path,
            "ResultPath": format!("/result/{name}"),
        })),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(id) {
        answer.headers_mut().insert(INFERENCE_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("/inference{status_path}")) {
        answer.headers_mut().insert(header::LOCATION, value);
    }
    answer
}

/// Runs an async request to its end: the replica's answer, or why there
/// is none (as the front door would have answered it).
async fn run_async(
    door: &FrontDoor,
    project: &str,
    id: &str,
    name: &str,
    rest: &str,
    request: Request,
) -> (u16, String, Vec<u8>) {
    let outcome = async {
        let slot = door.app.deployment_slot(project, name).await?;
        door.app.async_request_started(id).await?;
        let answer = send(door, &slot, name, rest, request).await?;
        let (parts, incoming) = answer.into_parts();
        let body = http_body_util::Limited::new(incoming, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Error::HostFailed(format!("the replica's answer could not be kept: {e}")))?
            .to_bytes();
        drop(slot);
        Ok::<_, Error>((parts, body))
    }
    .await;
    match outcome {
        Ok((parts, body)) => (
            parts.status.as_u16(),
            content_type(&parts.headers),
            body.to_vec(),
        ),
        Err(err) => error_outcome(err).await,
    }
}

/// What an async request that failed keeps: the error the front door
/// would have answered.
async fn error_outcome(err: Error) -> (u16, String, Vec<u8>) {
    let answer = refused(err);
    let code = answer.status().as_u16();
    let content = content_type(answer.headers());
    let body = axum::body::to_bytes(answer.into_body(), MAX_ANSWER_BYTES)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    (code, content, body)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string()
}

/// The async request the caller names (`X-Inference-Id`).
async fn named_request(
    door: &FrontDoor,
    name: &str,
    headers: &HeaderMap,
) -> Result<AsyncRequest, Error> {
    let project = door.app.inference_project(key(headers)).await?;
    let id = headers
        .get(INFERENCE_ID)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::invalid("X-Inference-Id", "X-Inference-Id names the request"))?;
    door.app.async_request(&project, name, id.trim()).await
}

/// `GET /status/<deployment>`: where an async request is.
async fn async_status(
    State(door): State<FrontDoor>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match named_request(&door, &name, &headers).await {
        Ok(request) => axum::Json(serde_json::json!({
            "Id": request.id,
            "Status": request.status.as_str(),
        }))
        .into_response(),
        Err(err) => refused(err),
    }
}

/// `GET /result/<deployment>`: an async request's answer, as the replica
/// gave it; while it has none, where it is (202).
async fn async_result(
    State(door): State<FrontDoor>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let request = match named_request(&door, &name, &headers).await {
        Ok(request) => request,
        Err(err) => return refused(err),
    };
    if request.status != AsyncStatus::Completed {
        return (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"Id": request.id, "Status": request.status.as_str()})),
        )
            .into_response();
    }
    let status = StatusCode::from_u16(request.status_code).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut answer = (status, request.body).into_response();
    if let Ok(value) = HeaderValue::from_str(&request.content_type) {
        answer.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    answer
}
