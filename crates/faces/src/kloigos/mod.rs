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
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Serialize;
use tessera_app::{App, Error};
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

pub fn router(app: App) -> Router {
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .with_state(app)
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
            Error::Internal(source) => {
                tracing::error!(error = ?source, "internal error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let detail = match &err {
            Error::Internal(_) => "Internal Server Error".to_string(),
            other => other.to_string(),
        };
        let mut response = (status, Json(Detail { detail })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Every route needs a bearer token.
async fn authenticate(State(app): State<App>, request: Request, next: Next) -> Response {
    let principal = match app
        .authenticate(crate::native::bearer(request.headers()))
        .await
    {
        Ok(principal) => principal,
        Err(err) => return KloigosError::from(err).into_response(),
    };
    // Kloigos has no roles of its own: its routes need the native
    // permissions of what they do.
    let path = request.uri().path();
    let needed = if path.contains("/admin/init_server") {
        Permission::ServerCreate
    } else if path.contains("/admin/") {
        Permission::ServerDelete
    } else if path.contains("/allocate") {
        Permission::InstanceCreate
    } else if path.contains("/deallocate") {
        Permission::InstanceDelete
    } else {
        Permission::InstanceRead
    };
    if let Err(err) = principal.require(needed) {
        return KloigosError::from(err).into_response();
    }
    let mut request = request;
    request.extensions_mut().insert(principal);
    next.run(request).await
}

async fn not_found() -> Response {
    let body = Detail {
        detail: "Not Found".into(),
    };
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    let body = Detail {
        detail: "Method Not Allowed".into(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
