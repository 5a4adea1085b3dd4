//! The containers API at `/compute`: containers with SSH keys, SSH access,
//! ingress rules, mount paths, a status WebSocket and a terminal, over the
//! same core as the other faces (a container is an instance of the
//! caller's project).
//!
//! Errors are `{"error": "message"}` (what the upstream service's clients
//! display). Callers authenticate with a login JWT or an API token (as a
//! bearer header, or `?token=` on the WebSockets); an API token limited by
//! containers-API grants (`compute.<uid>.containers.<id>` with `read`,
//! `create`, `update`, `delete`) may act only where they reach
//! ([`Compute::authorize`]). Browsers may call it from any origin (CORS,
//! bearer credentials only); a WebSocket from a browser page of another
//! origin is refused unless that origin is allowed.

mod containers;
mod ssh_keys;
mod terminal;
mod ws;

use crate::BearerAuth;
use crate::kit::{self, BodyRule, Face, FaceState};
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tessera_app::{App, Error, Principal, RateLimits};
use tessera_core::scopes::ComputeAction;
use utoipa::{OpenApi, ToSchema};

pub(crate) use crate::kit::{Body, Caller, Path};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera: containers API",
        version = "1.0.0",
        description = "Containers with SSH keys, SSH access, ingress rules and persistent mount paths, over Tessera's instances. The status WebSocket (GET /compute/ws) and the terminal WebSocket (GET /compute/containers/{id}/terminal) are described in the README."
    ),
    paths(
        containers::list_containers,
        containers::create_container,
        containers::get_container,
        containers::delete_container,
        containers::start_container,
        containers::stop_container,
        containers::get_ssh,
        containers::set_ssh,
        containers::list_ingress,
        containers::add_ingress,
        containers::delete_ingress,
        containers::get_mounts,
        containers::set_mounts,
        ssh_keys::list_keys,
        ssh_keys::add_key,
        ssh_keys::delete_key,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ComputeApi;

/// The containers API, for the kit.
pub struct Compute;

impl Face for Compute {
    type Error = ComputeError;

    // Its console and CLI send JSON bodies; an empty one reads as `{}`.
    const BODY: BodyRule = BodyRule::Lenient;

    async fn authenticate(app: &App, bearer: Option<&str>) -> Result<Principal, Error> {
        app.authenticate(bearer)
            .await
            .map(Principal::on_compute_face)
    }

    /// A token limited by containers-API grants reaches only what they
    /// cover: `compute.<uid>.containers` (list, create),
    /// `compute.<uid>.containers.<id>` (one container and what it has),
    /// `compute.<uid>.keys` (keys), `compute.<uid>` (the status stream).
    fn authorize(caller: &Principal, request: &Request) -> Result<(), Error> {
        let (path, action) = grant_needed(&caller.user_id, request.method(), request.uri().path());
        match caller.compute_allows(&path, action) {
            true => Ok(()),
            false => Err(Error::Forbidden(format!(
                "this token is not granted {action} on {path}"
            ))),
        }
    }

    fn rate_limits(app: &App) -> Option<&RateLimits> {
        Some(app.native_rate_limits())
    }

    fn not_found(method: &Method, path: &str) -> Response {
        error(
            StatusCode::NOT_FOUND,
            format!("{method} {path} is not a path of this API"),
        )
    }

    fn method_not_allowed(method: &Method, path: &str) -> Response {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )
    }
}

/// The grant a request needs: the dotted path of what it acts on, and the
/// action.
pub(crate) fn grant_needed(uid: &str, method: &Method, path: &str) -> (String, ComputeAction) {
    let parts: Vec<&str> = path
        .trim_start_matches("/compute")
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let read_or = |write: ComputeAction| match *method {
        Method::GET | Method::HEAD => ComputeAction::Read,
        _ => write,
    };
    match parts.as_slice() {
        ["containers"] => (
            format!("compute.{uid}.containers"),
            read_or(ComputeAction::Create),
        ),
        ["containers", id] => (
            format!("compute.{uid}.containers.{id}"),
            read_or(ComputeAction::Delete),
        ),
        ["containers", id, "start"] => (
            format!("compute.{uid}.containers.{id}"),
            ComputeAction::Start,
        ),
        ["containers", id, "stop"] => (
            format!("compute.{uid}.containers.{id}"),
            ComputeAction::Stop,
        ),
        ["containers", id, "terminal"] => (
            format!("compute.{uid}.containers.{id}"),
            ComputeAction::Update,
        ),
        ["containers", id, ..] => (
            format!("compute.{uid}.containers.{id}"),
            read_or(ComputeAction::Update),
        ),
        ["ssh-keys", ..] => (
            format!("compute.{uid}.keys"),
            match *method {
                Method::GET | Method::HEAD => ComputeAction::Read,
                Method::DELETE => ComputeAction::Delete,
                _ => ComputeAction::Create,
            },
        ),
        _ => (format!("compute.{uid}"), ComputeAction::Read),
    }
}

/// The face's router state.
pub type ComputeState = FaceState<Compute>;

pub fn router(app: App) -> Router {
    let state = ComputeState::new(app.clone());
    let private = Router::new()
        .route(
            "/containers",
            get(containers::list_containers).post(containers::create_container),
        )
        .route(
            "/containers/{id}",
            get(containers::get_container).delete(containers::delete_container),
        )
        .route("/containers/{id}/start", post(containers::start_container))
        .route("/containers/{id}/stop", post(containers::stop_container))
        .route(
            "/containers/{id}/ssh",
            get(containers::get_ssh).put(containers::set_ssh),
        )
        .route(
            "/containers/{id}/ingress",
            get(containers::list_ingress).post(containers::add_ingress),
        )
        .route(
            "/containers/{id}/ingress/{port}",
            axum::routing::delete(containers::delete_ingress),
        )
        .route(
            "/containers/{id}/mounts",
            get(containers::get_mounts).put(containers::set_mounts),
        )
        .route(
            "/ssh-keys",
            get(ssh_keys::list_keys).post(ssh_keys::add_key),
        )
        .route(
            "/ssh-keys/{id}",
            axum::routing::delete(ssh_keys::delete_key),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            kit::limits::deadline::<ComputeError>,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            kit::authenticate::<Compute>,
        ));
    // The WebSockets authenticate themselves (`?token=` too) and keep
    // their own bounds.
    let sockets = Router::new()
        .route("/ws", get(ws::status))
        .route("/containers/{id}/terminal", get(terminal::terminal));
    let cors = tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(3600));
    Router::new()
        .merge(private)
        .merge(sockets)
        .fallback(kit::not_found::<Compute>)
        .method_not_allowed_fallback(kit::method_not_allowed::<Compute>)
        .layer(cors)
        .with_state(state)
}

/// The error body: what went wrong, for people.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "container limit reached (3)")]
    pub error: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

/// Every failure of this face.
#[derive(Debug)]
pub struct ComputeError(pub Error);

impl From<Error> for ComputeError {
    fn from(err: Error) -> Self {
        ComputeError(err)
    }
}

impl IntoResponse for ComputeError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            // The limits are the document's 400s.
            Error::Invalid { .. } | Error::QuotaExceeded(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::InsufficientFunds(_) => StatusCode::PAYMENT_REQUIRED,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::HostFailed(_) => StatusCode::BAD_GATEWAY,
            Error::HostTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::NoCapacity(_) | Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        kit::answer(&self.0, status, |message| {
            let message = match &self.0 {
                Error::QuotaExceeded(q) if q.resource == "containers" => {
                    format!("container limit reached ({})", q.limit)
                }
                Error::QuotaExceeded(q) if q.resource == "ssh_keys" => {
                    format!("SSH key limit reached ({})", q.limit)
                }
                _ => message,
            };
            Json(ErrorBody { error: message })
        })
    }
}

pub(crate) fn bad_request(message: impl Into<String>) -> ComputeError {
    ComputeError(Error::Invalid {
        field: None,
        message: message.into(),
    })
}

/// The credential of a WebSocket request: the bearer header, else
/// `?token=`.
pub(crate) fn socket_credential(headers: &HeaderMap, token: Option<String>) -> Option<String> {
    kit::bearer(headers).map(str::to_string).or(token)
}

/// Refuses a WebSocket opened by a browser page of another origin (its
/// `Origin` is not this server's host), so another site cannot use a
/// visitor's credentials: clients that are not browsers send no `Origin`.
pub(crate) fn check_origin(headers: &HeaderMap) -> Result<(), ComputeError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Ok(());
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    match !host.is_empty() && origin_host.eq_ignore_ascii_case(host) {
        true => Ok(()),
        false => Err(ComputeError(Error::Forbidden(format!(
            "a WebSocket from origin {origin} is not allowed on {host}"
        )))),
    }
}

type Result<T, E = ComputeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_its_grant() {
        let cases = [
            (
                Method::GET,
                "/compute/containers",
                "compute.u1.containers",
                "read",
            ),
            (
                Method::POST,
                "/compute/containers",
                "compute.u1.containers",
                "create",
            ),
            (
                Method::GET,
                "/compute/containers/ab12cd34",
                "compute.u1.containers.ab12cd34",
                "read",
            ),
            (
                Method::DELETE,
                "/compute/containers/ab12cd34",
                "compute.u1.containers.ab12cd34",
                "delete",
            ),
            (
                Method::POST,
                "/compute/containers/ab12cd34/stop",
                "compute.u1.containers.ab12cd34",
                "stop",
            ),
            (
                Method::PUT,
                "/compute/containers/ab12cd34/ssh",
                "compute.u1.containers.ab12cd34",
                "update",
            ),
            (
                Method::GET,
                "/compute/containers/ab12cd34/ingress",
                "compute.u1.containers.ab12cd34",
                "read",
            ),
            (
                Method::DELETE,
                "/compute/containers/ab12cd34/ingress/80",
                "compute.u1.containers.ab12cd34",
                "update",
            ),
            (
                Method::GET,
                "/compute/containers/ab12cd34/terminal",
                "compute.u1.containers.ab12cd34",
                "update",
            ),
            (Method::GET, "/compute/ssh-keys", "compute.u1.keys", "read"),
            (
                Method::POST,
                "/compute/ssh-keys",
                "compute.u1.keys",
                "create",
            ),
            (
                Method::DELETE,
                "/compute/ssh-keys/1",
                "compute.u1.keys",
                "delete",
            ),
            (Method::GET, "/compute/ws", "compute.u1", "read"),
        ];
        for (method, path, want_path, want_action) in cases {
            let (got_path, action) = grant_needed("u1", &method, path);
            assert_eq!(
                (got_path.as_str(), action.as_str()),
                (want_path, want_action),
                "{method} {path}"
            );
        }
    }
}
