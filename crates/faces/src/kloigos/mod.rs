//! The Kloigos face at `/api`: Kloigos 0.2.0's compute-unit API, field for
//! field, over Tessera's hosts, placement and agents.
//!
//! Errors take FastAPI's shapes, which Kloigos clients parse:
//! `{"detail": "message"}`, and for invalid requests `422` with
//! `{"detail": [{"type", "loc", "msg", "input"}]}`. Where upstream is wrong
//! this face is right (see the README): the allocate answer shows the unit's
//! real state, unknown ids are 404, a server with allocated units is only
//! decommissioned with `?force=true`, and concurrent allocations never share
//! a unit.

mod admin;
mod compute_units;
pub mod validation;

use crate::BearerAuth;
use crate::kit::{self, BodyRule, Face, FaceState};
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;
use tessera_app::{App, Error, Principal, RateLimits};
use tessera_core::Permission;
use utoipa::{OpenApi, ToSchema};
use validation::{HttpValidationError, ValidationError, value_error};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Κλοηγός / Kloigos API (Tessera)",
        version = "0.2.0",
        description = "Kloigos's compute-unit API as served by Tessera at /api."
    ),
    paths(
        compute_units::allocate,
        compute_units::deallocate,
        compute_units::list_compute_units,
        admin::init_server,
        admin::decommission_server,
    ),
    components(schemas(HttpValidationError, ValidationError, Detail)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "compute_units"), (name = "admin"))
)]
pub struct KloigosApi;

/// The Kloigos face, for the kit: FastAPI's error bodies, bearer JWTs and
/// API tokens, the native permission of what each route does, no rate
/// limits (Kloigos has none).
pub struct Kloigos;

impl Face for Kloigos {
    type Error = KloigosError;

    // Bodies are read field by field, as pydantic does (see `validation`).
    const BODY: BodyRule = BodyRule::Strict;

    async fn authenticate(app: &App, bearer: Option<&str>) -> Result<Principal, Error> {
        app.authenticate(bearer).await
    }

    /// Kloigos has no roles of its own: its routes need the native
    /// permissions of what they do.
    fn authorize(caller: &Principal, request: &Request) -> Result<(), Error> {
        // By the route matched, never the path's text: a unit on a server
        // named `allocate...` is `/deallocate/allocate_c0-3`.
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("", MatchedPath::as_str);
        // A tenant's permission on its workspace's units, or the fleet's
        // on every unit (an install operator's, whatever its role in the
        // workspace it acts in); the handler then says which units.
        let (needed, or_fleet) = match route.strip_prefix("/api").unwrap_or(route) {
            "/admin/init_server" => (Permission::ServerCreate, None),
            "/compute_units/allocate" => (Permission::InstanceCreate, None),
            "/compute_units/deallocate/{compute_id}" => {
                (Permission::InstanceDelete, Some(Permission::ServerDelete))
            }
            "/compute_units" | "/compute_units/" => {
                (Permission::InstanceRead, Some(Permission::ServerRead))
            }
            // Decommissioning, and any route added without a line here.
            _ => (Permission::ServerDelete, None),
        };
        if or_fleet.is_some_and(|fleet| caller.can(fleet)) {
            return Ok(());
        }
        caller.require(needed)
    }

    /// The native API's: one workspace's allocations, which reach its
    /// hosts, are as bounded as its other requests.
    fn rate_limits(app: &App) -> Option<&RateLimits> {
        Some(app.native_rate_limits())
    }

    fn not_found(_: &Method, _: &str) -> Response {
        let body = Detail {
            detail: "Not Found".into(),
        };
        (StatusCode::NOT_FOUND, Json(body)).into_response()
    }

    fn method_not_allowed(_: &Method, _: &str) -> Response {
        let body = Detail {
            detail: "Method Not Allowed".into(),
        };
        (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
    }
}

pub fn router(app: App) -> Router {
    let state = FaceState::<Kloigos>::new(app);
    Router::new()
        .route("/compute_units/allocate", post(compute_units::allocate))
        .route(
            "/compute_units/deallocate/{compute_id}",
            delete(compute_units::deallocate),
        )
        .route("/compute_units/", get(compute_units::list_compute_units))
        .route("/compute_units", get(compute_units::list_compute_units))
        .route("/admin/init_server", post(admin::init_server))
        .route(
            "/admin/decommission_server/{hostname}",
            delete(admin::decommission_server),
        )
        .fallback(unrouted)
        .method_not_allowed_fallback(kit::method_not_allowed::<Kloigos>)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            kit::authenticate::<Kloigos>,
        ))
        .with_state(state)
}

/// A path no route takes: a route's path with a trailing slash is sent to
/// the route with a 307, as FastAPI's `redirect_slashes` does (its clients
/// follow it, method and body kept); anything else is a 404.
async fn unrouted(request: Request) -> Response {
    let full = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| request.uri().clone(), |o| o.0.clone());
    let inner = request.uri().path();
    let routed = |path: &str| {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        parts.iter().all(|p| !p.is_empty())
            && matches!(
                parts.as_slice(),
                ["compute_units", "allocate"]
                    | ["compute_units", "deallocate", _]
                    | ["admin", "init_server"]
                    | ["admin", "decommission_server", _]
            )
    };
    if let Some(trimmed) = inner.strip_suffix('/')
        && routed(trimmed)
        && let Some(path) = full.path().strip_suffix('/')
    {
        let location = match full.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_string(),
        };
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [(axum::http::header::LOCATION, location)],
        )
            .into_response();
    }
    kit::not_found::<Kloigos>(request).await
}

/// FastAPI's error body for everything but validation.
#[derive(Serialize, ToSchema)]
pub struct Detail {
    detail: String,
}

/// Every answer of this face that is not a success.
pub enum KloigosError {
    App(Error),
    Validation(Vec<ValidationError>),
}

impl From<Error> for KloigosError {
    fn from(err: Error) -> Self {
        KloigosError::App(err)
    }
}

impl IntoResponse for KloigosError {
    fn into_response(self) -> Response {
        let err = match self {
            KloigosError::Validation(detail) => {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(HttpValidationError { detail }),
                )
                    .into_response();
            }
            KloigosError::App(err) => err,
        };
        let status = match &err {
            Error::Invalid { field, message } => {
                let detail = vec![value_error(*field, message)];
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(HttpValidationError { detail }),
                )
                    .into_response();
            }
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            // Kloigos's own status for "no free unit", which its clients expect.
            Error::NoCapacity(_) => StatusCode::from_u16(460).unwrap_or(StatusCode::CONFLICT),
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::QuotaExceeded(_) => StatusCode::FORBIDDEN,
            Error::InsufficientFunds(_) => StatusCode::PAYMENT_REQUIRED,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::HostFailed(_) => StatusCode::BAD_GATEWAY,
            Error::HostTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        kit::answer(&err, status, |detail| Json(Detail { detail }))
    }
}
