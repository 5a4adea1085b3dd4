//! `/v1/taskservs`: services installed on chosen servers.

use super::operations::OperationBody;
use super::{Body, Caller, ErrorBody, Path, Result, operation_location};
use crate::kit::RawBody;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::taskservs::{CreateTaskserv, Taskserv};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct TaskservBody {
    #[schema(example = "tsk-xyz789")]
    pub id: String,
    pub name: String,
    pub version: String,
    /// Hostnames.
    pub servers: Vec<String>,
    /// `pending`, `installing`, `running`, `failed`, `removing`.
    pub status: String,
    pub created_at: String,
    /// Tessera extension: each server's outcome (`status`, `exit_code`, `output`).
    #[schema(value_type = Object)]
    pub results: serde_json::Value,
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
}

impl From<Taskserv> for TaskservBody {
    fn from(t: Taskserv) -> Self {
        TaskservBody {
            id: t.id,
            name: t.name,
            version: t.version,
            servers: t.servers,
            status: t.status.as_str().to_string(),
            created_at: t.created_at,
            results: t.results,
            config: t.config,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CatalogEntry {
    pub name: String,
    pub version: String,
    pub description: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskservRequest {
    pub workspace: Option<String>,
    /// A name from `GET /v1/taskservs/catalog`.
    #[schema(example = "hello")]
    pub name: String,
    /// Hostnames (or ids) of running servers.
    pub servers: Vec<String>,
    /// Given to the scripts; `version` overrides the catalog's.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    #[serde(default)]
    pub check_mode: bool,
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct DeleteTaskservRequest {
    pub workspace: Option<String>,
    pub taskserv_id: Option<String>,
}

type Started = ([(header::HeaderName, String); 1], Json<OperationBody>);

/// List the workspace's taskservs.
#[utoipa::path(get, path = "/v1/taskservs", tag = "taskservs",
    responses(
        (status = 200, description = "Taskservs", body = Vec<TaskservBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_taskservs(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<TaskservBody>>> {
    let list = app.taskservs(&caller).await?;
    Ok(Json(list.into_iter().map(TaskservBody::from).collect()))
}

/// The taskservs that can be installed.
#[utoipa::path(get, path = "/v1/taskservs/catalog", tag = "taskservs",
    responses(
        (status = 200, description = "Definitions", body = Vec<CatalogEntry>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn catalog(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<CatalogEntry>>> {
    caller
        .require(tessera_core::Permission::TaskservRead)
        .map_err(super::NativeError)?;
    Ok(Json(
        app.taskserv_catalog()
            .definitions()
            .map(|d| CatalogEntry {
                name: d.name.clone(),
                version: d.version.clone(),
                description: d.description.clone(),
            })
            .collect(),
    ))
}

/// Get a taskserv with each server's outcome.
#[utoipa::path(get, path = "/v1/taskservs/{id}", tag = "taskservs",
    params(("id" = String, Path, description = "Taskserv id")),
    responses(
        (status = 200, description = "The taskserv", body = TaskservBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_taskserv(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<TaskservBody>> {
    Ok(Json(app.taskserv(&caller, &id).await?.into()))
}

/// Install a taskserv on servers. Answers the operation.
#[utoipa::path(post, path = "/v1/taskservs/create", tag = "taskservs", request_body = CreateTaskservRequest,
    responses(
        (status = 200, description = "Installing; follow the operation", body = OperationBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "No such server or workspace", body = ErrorBody),
        (status = 409, description = "A server is not running", body = ErrorBody),
    ))]
pub async fn create_taskserv(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateTaskservRequest>,
) -> Result<Started> {
    let op = app
        .create_taskserv(
            &caller,
            CreateTaskserv {
                workspace: req.workspace,
                name: req.name,
                servers: req.servers,
                config: req.config,
                check_mode: req.check_mode,
            },
        )
        .await?;
    Ok((operation_location(&op.id), Json(op.into())))
}

/// Remove a taskserv from its servers. Answers the operation.
#[utoipa::path(delete, path = "/v1/taskservs/{id}", tag = "taskservs",
    params(("id" = String, Path, description = "Taskserv id")),
    request_body(content = Option<DeleteTaskservRequest>, description = "Optional, as the provisioning API sends it"),
    responses(
        (status = 200, description = "Removing; follow the operation", body = OperationBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "An operation is under way on it", body = ErrorBody),
    ))]
pub async fn delete_taskserv(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Started> {
    let req: DeleteTaskservRequest = super::optional_body(&body)?;
    if let Some(named) = &req.taskserv_id
        && *named != id
    {
        return Err(tessera_app::Error::invalid(
            "taskserv_id",
            format!("taskserv_id {named:?} does not match the path's {id:?}"),
        )
        .into());
    }
    let op = app
        .delete_taskserv(&caller, &id, req.workspace.as_deref())
        .await?;
    Ok((operation_location(&op.id), Json(op.into())))
}
