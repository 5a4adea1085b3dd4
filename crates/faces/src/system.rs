//! System endpoints outside any face: `GET /health`, open to all.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tessera_app::App;
use utoipa::{OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera system",
        description = "Health of a Tessera control-plane process."
    ),
    paths(health)
)]
pub struct SystemApi;

pub fn router(app: App) -> Router {
    Router::new().route("/health", get(health)).with_state(app)
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `healthy`, or `unhealthy` when the database does not answer.
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
}

/// Whether this process and its database answer.
#[utoipa::path(
    get,
    path = "/health",
    tag = "system",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The database does not answer", body = Health),
    )
)]
async fn health(State(app): State<App>) -> (StatusCode, Json<Health>) {
    let healthy = app.healthy().await;
    let body = Health {
        status: if healthy { "healthy" } else { "unhealthy" },
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: app.uptime().as_secs(),
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}
