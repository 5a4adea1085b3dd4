//! `/v1/operations`: the long actions of the caller's workspace.

use super::{Caller, ErrorBody, Path, Query, Result, one_of};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tessera_app::App;
use tessera_app::operations::{Operation, OperationQuery};
use tessera_core::status::{OperationKind, OperationStatus};
use utoipa::{IntoParams, ToSchema};

/// An operation, in the provisioning API's shape.
#[derive(Serialize, ToSchema)]
pub struct OperationBody {
    pub id: String,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// What it does: `instance_create`, `server_delete`, ...
    pub kind: String,
    /// The id of what it acts on.
    pub resource_id: Option<String>,
    pub cancel_requested: bool,
    /// How many times a control-plane process took it up (more than one:
    /// it was retried, or taken over after a crash).
    pub attempts: i64,
    /// While it is retried: why the last attempt stopped short.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl From<Operation> for OperationBody {
    fn from(op: Operation) -> Self {
        let finished = op.is_finished();
        OperationBody {
            result: op.result,
            id: op.id.to_string(),
            status: op.status.as_str().to_string(),
            created_at: op.created_at,
            updated_at: op.updated_at,
            error: op.error,
            kind: op.kind.as_str().to_string(),
            resource_id: op.resource_id,
            cancel_requested: op.cancel_requested,
            attempts: i64::from(op.attempts),
            last_error: if finished { None } else { op.last_error },
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only operations of this kind.
    pub kind: Option<String>,
    /// Only operations in this status.
    pub status: Option<String>,
    /// At most this many (1 to 1000, default 100); the next page's token is
    /// in the `X-Next-Page-Token` header.
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Seconds to wait at most (default 60, at most 300).
    pub timeout: Option<f64>,
}

/// List the operations of your workspace, oldest first.
#[utoipa::path(get, path = "/v1/operations", tag = "operations", params(ListParams),
    responses(
        (status = 200, description = "Operations", body = Vec<OperationBody>,
            headers(("X-Next-Page-Token" = String, description = "Token of the next page, if any"))),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_operations(
    State(app): State<App>,
    Caller(caller): Caller,
    Query(params): Query<ListParams>,
) -> Result<(HeaderMap, Json<Vec<OperationBody>>)> {
    let page = app
        .operations(
            &caller,
            &OperationQuery {
                kind: one_of("kind", params.kind.as_deref(), OperationKind::ALL)?,
                status: one_of("status", params.status.as_deref(), OperationStatus::ALL)?,
                limit: params.limit,
                page_token: params.page_token,
            },
        )
        .await?;
    Ok((
        super::next_page_headers(page.next_page_token),
        Json(page.items.into_iter().map(OperationBody::from).collect()),
    ))
}

/// Get an operation.
#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations",
    params(("id" = String, Path, description = "Operation id")),
    responses(
        (status = 200, description = "The operation", body = OperationBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_operation(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<OperationBody>> {
    Ok(Json(app.operation(&caller, &id).await?.into()))
}

/// Wait until an operation ends, or the timeout passes; answers it as it is then.
#[utoipa::path(get, path = "/v1/operations/{id}/wait", tag = "operations",
    params(("id" = String, Path, description = "Operation id"), WaitParams),
    responses(
        (status = 200, description = "The operation, ended unless the timeout passed", body = OperationBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn wait_operation(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Query(params): Query<WaitParams>,
) -> Result<Json<OperationBody>> {
    let seconds = params.timeout.unwrap_or(60.0);
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(tessera_app::Error::invalid(
            "timeout",
            "timeout must be a number of seconds, 0 or more",
        )
        .into());
    }
    let timeout =
        Duration::from_secs_f64(seconds.min(tessera_app::operations::MAX_WAIT.as_secs_f64()));
    Ok(Json(
        app.wait_operation(&caller, &id, timeout).await?.into(),
    ))
}

/// Cancel an operation: its done steps are undone.
#[utoipa::path(post, path = "/v1/operations/{id}/cancel", tag = "operations",
    params(("id" = String, Path, description = "Operation id")),
    responses(
        (status = 200, description = "The operation, cancelled (or still stopping)", body = OperationBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "It already ended, or cannot be cancelled", body = ErrorBody),
    ))]
pub async fn cancel_operation(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<OperationBody>> {
    Ok(Json(app.cancel_operation(&caller, &id).await?.into()))
}
