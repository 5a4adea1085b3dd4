//! `/v1/workspaces`: projects, and the caller's active one.

use super::{Body, Caller, ErrorBody, Path, Result};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::projects::{CreateWorkspace, Workspace};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct WorkspaceBody {
    pub name: String,
    pub path: String,
    /// Whether requests with this credential act in it.
    pub active: bool,
    pub last_used: Option<String>,
    /// Your role in it (`null`: an admin who is not a member).
    pub role: Option<String>,
}

impl From<Workspace> for WorkspaceBody {
    fn from(w: Workspace) -> Self {
        WorkspaceBody {
            name: w.name,
            path: w.path,
            active: w.active,
            last_used: w.last_used,
            role: w.role,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWorkspaceRequest {
    pub name: String,
    pub path: Option<String>,
    #[serde(default)]
    pub activate: bool,
}

/// List your workspaces.
#[utoipa::path(get, path = "/v1/workspaces", tag = "workspaces",
    responses(
        (status = 200, description = "Workspaces", body = Vec<WorkspaceBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_workspaces(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<WorkspaceBody>>> {
    let list = app.workspaces(&caller).await?;
    Ok(Json(list.into_iter().map(WorkspaceBody::from).collect()))
}

/// Create a workspace; you become a member with your current role.
#[utoipa::path(post, path = "/v1/workspaces/create", tag = "workspaces", request_body = CreateWorkspaceRequest,
    responses(
        (status = 200, description = "Created", body = WorkspaceBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
pub async fn create_workspace(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateWorkspaceRequest>,
) -> Result<Json<WorkspaceBody>> {
    let created = app
        .create_workspace(
            &caller,
            CreateWorkspace {
                name: req.name,
                path: req.path,
                activate: req.activate,
            },
        )
        .await?;
    Ok(Json(created.into()))
}

/// Make a workspace the one your logins act in.
#[utoipa::path(post, path = "/v1/workspaces/{name}/activate", tag = "workspaces",
    params(("name" = String, Path, description = "Workspace name")),
    responses(
        (status = 200, description = "Activated", body = WorkspaceBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn activate_workspace(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<WorkspaceBody>> {
    Ok(Json(app.activate_workspace(&caller, &name).await?.into()))
}
