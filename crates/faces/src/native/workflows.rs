//! `/v1/workflows`: multi-step operations submitted by type.

use super::operations::OperationBody;
use super::{Body, Caller, ErrorBody, Path, Result, operation_location};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::operations::Operation;
use tessera_app::workflows::SubmitWorkflow;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitWorkflowRequest {
    pub workspace: Option<String>,
    /// `cluster_create` or `server_drain`.
    #[schema(example = "cluster_create")]
    pub workflow_type: String,
    /// `cluster_create`: `cluster_name`, `node_count`, and optionally `type`
    /// (default cx11), `image`, `vcpus`, `memory_mb`, `disk_gb`, `location`,
    /// `ssh_key_ids`, `labels`, `user_data`. `server_drain`: `server_id`.
    #[schema(value_type = Object, example = json!({"cluster_name": "k8s-prod", "node_count": 3}))]
    pub parameters: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct WorkflowBody {
    pub id: String,
    pub workflow_type: String,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub created_at: String,
    pub updated_at: String,
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
}

impl From<Operation> for WorkflowBody {
    fn from(op: Operation) -> Self {
        WorkflowBody {
            result: op.result,
            id: op.id.to_string(),
            workflow_type: op.kind.as_str().to_string(),
            status: op.status.as_str().to_string(),
            created_at: op.created_at,
            updated_at: op.updated_at,
            error: op.error,
        }
    }
}

/// Submit a workflow.
#[utoipa::path(post, path = "/v1/workflows/submit", tag = "workflows", request_body = SubmitWorkflowRequest,
    responses(
        (status = 200, description = "Submitted; follow the operation", body = OperationBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 402, description = "A prepaid project's balance does not cover an hour of the cluster's nodes with what the project runs", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "No such server or workspace", body = ErrorBody),
        (status = 409, description = "The server cannot be drained now", body = ErrorBody),
    ))]
pub async fn submit_workflow(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<SubmitWorkflowRequest>,
) -> Result<([(header::HeaderName, String); 1], Json<OperationBody>)> {
    let op = app
        .submit_workflow(
            &caller,
            SubmitWorkflow {
                workspace: req.workspace,
                workflow_type: req.workflow_type,
                parameters: req.parameters,
            },
        )
        .await?;
    Ok((operation_location(&op.id), Json(op.into())))
}

/// Get a workflow.
#[utoipa::path(get, path = "/v1/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_workflow(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<WorkflowBody>> {
    Ok(Json(app.workflow(&caller, &id).await?.into()))
}

/// Cancel a workflow: what it did is undone.
#[utoipa::path(post, path = "/v1/workflows/{id}/cancel", tag = "workflows",
    params(("id" = String, Path, description = "Workflow id")),
    responses(
        (status = 200, description = "The workflow's operation, cancelled (or still stopping)", body = OperationBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "It already ended, or cannot be cancelled", body = ErrorBody),
    ))]
pub async fn cancel_workflow(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<OperationBody>> {
    Ok(Json(app.cancel_workflow(&caller, &id).await?.into()))
}
