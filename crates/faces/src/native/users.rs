//! `/v1/users`: users and their roles: every user for install admins, the
//! members of its workspace for a workspace admin.

use super::{Body, Caller, ErrorBody, Path, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::users::{CreateUser, UpdateUser, User};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct UserBody {
    pub id: String,
    pub username: String,
    pub disabled: bool,
    pub has_password: bool,
    /// `admin` or `operator` over the whole install; `null` for neither.
    pub install_role: Option<String>,
    /// The workspace the user's logins act in.
    pub active_workspace: Option<String>,
    pub workspaces: Vec<MembershipBody>,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct MembershipBody {
    pub workspace: String,
    /// `admin`, `operator`, `member` or `viewer`.
    pub role: String,
}

impl From<User> for UserBody {
    fn from(u: User) -> Self {
        let active = u
            .memberships
            .iter()
            .find(|m| Some(&m.project_id) == u.active_project_id.as_ref())
            .map(|m| m.project_name.clone());
        UserBody {
            id: u.id.to_string(),
            username: u.username,
            disabled: u.disabled,
            has_password: u.has_password,
            install_role: u.install_role.map(|r| r.as_str().to_string()),
            active_workspace: active,
            workspaces: u
                .memberships
                .into_iter()
                .map(|m| MembershipBody {
                    workspace: m.project_name,
                    role: m.role.as_str().to_string(),
                })
                .collect(),
            created_at: u.created_at,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    pub username: String,
    /// At least 8 characters; a user without one can only use API tokens.
    pub password: Option<String>,
    /// The user's first workspace (a workspace admin's own).
    pub workspace: String,
    /// `admin`, `operator`, `member` or `viewer`: the role there.
    pub role: String,
    /// `admin` or `operator` over the whole install (install admins only).
    pub install_role: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub password: Option<String>,
    pub disabled: Option<bool>,
    /// With `role`: give the user this role in this workspace (`none`
    /// takes it out of the workspace).
    pub workspace: Option<String>,
    pub role: Option<String>,
    /// `admin`, `operator`, or `none` to take it away (install admins only).
    pub install_role: Option<String>,
}

/// List users.
#[utoipa::path(get, path = "/v1/users", tag = "users",
    responses(
        (status = 200, description = "Users", body = Vec<UserBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden (needs user_admin)", body = ErrorBody),
    ))]
pub async fn list_users(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<UserBody>>> {
    let users = app.users(&caller).await?;
    Ok(Json(users.into_iter().map(UserBody::from).collect()))
}

/// Create a user.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = CreateUserRequest,
    responses(
        (status = 201, description = "Created", body = UserBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden (needs user_admin)", body = ErrorBody),
        (status = 404, description = "No such workspace", body = ErrorBody),
        (status = 409, description = "The username is taken", body = ErrorBody),
    ))]
pub async fn create_user(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateUserRequest>,
) -> Result<(StatusCode, Json<UserBody>)> {
    let user = app
        .create_user(
            &caller,
            CreateUser {
                username: req.username,
                password: req.password,
                project: req.workspace,
                role: req.role,
                install_role: req.install_role,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// Get a user.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden (needs user_admin)", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_user(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<UserBody>> {
    Ok(Json(app.user(&caller, &id).await?.into()))
}

/// Change a user's password, disable or enable it, give it a role in a workspace (or take it out), or change its install role.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", request_body = UpdateUserRequest,
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden (needs user_admin)", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "You cannot disable yourself", body = ErrorBody),
    ))]
pub async fn update_user(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(req): Body<UpdateUserRequest>,
) -> Result<Json<UserBody>> {
    let membership = match (req.workspace, req.role) {
        (Some(w), Some(r)) => Some((w, r)),
        (None, None) => None,
        _ => {
            return Err(
                tessera_app::Error::invalid("role", "workspace and role go together").into(),
            );
        }
    };
    let update = UpdateUser {
        password: req.password,
        disabled: req.disabled,
        membership,
        install_role: req.install_role,
    };
    Ok(Json(app.update_user(&caller, &id, update).await?.into()))
}

/// Delete a user with its tokens.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden (needs user_admin)", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "You cannot delete yourself", body = ErrorBody),
    ))]
pub async fn delete_user(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.delete_user(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
