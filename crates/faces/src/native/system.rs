//! `/v1/metrics`: the provisioning API's server metrics.

use super::{Caller, ErrorBody, Result};
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use std::collections::BTreeMap;
use tessera_app::App;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Metrics {
    pub uptime_seconds: u64,
    pub tasks: Tasks,
    /// Tessera extension: instances by state.
    pub instances: BTreeMap<String, i64>,
}

/// Operations, which the provisioning API calls tasks.
#[derive(Serialize, ToSchema)]
pub struct Tasks {
    pub total: i64,
    /// Pending or running.
    pub running: i64,
    /// By status.
    pub by_status: BTreeMap<String, i64>,
}

/// Server metrics.
#[utoipa::path(get, path = "/v1/metrics", tag = "system",
    responses(
        (status = 200, description = "Metrics", body = Metrics),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden (needs system_metrics)", body = ErrorBody),
    ))]
pub async fn metrics(State(app): State<App>, Caller(caller): Caller) -> Result<Json<Metrics>> {
    let counts = app.system_counts(&caller).await?;
    let by_status: BTreeMap<String, i64> = counts.operations.into_iter().collect();
    let running = ["pending", "running"]
        .iter()
        .filter_map(|s| by_status.get(*s))
        .sum();
    Ok(Json(Metrics {
        uptime_seconds: app.uptime().as_secs(),
        tasks: Tasks {
            total: by_status.values().sum(),
            running,
            by_status,
        },
        instances: counts.instances.into_iter().collect(),
    }))
}
