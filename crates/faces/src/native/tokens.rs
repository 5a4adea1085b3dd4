//! `/v1/tokens`: API tokens for automation.

use super::{Body, Caller, ErrorBody, Path, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::tokens::{ApiToken, CreateToken};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct TokenBody {
    pub id: String,
    pub name: String,
    pub user_id: Option<String>,
    pub workspace: Option<String>,
    /// The permissions the token is limited to; `null` for all of its user's.
    pub scopes: Option<Vec<String>>,
    /// Its grants on the containers API (`/compute`): dotted paths
    /// (`compute.<uid>.containers.<id>`) to actions; `null` when it is not
    /// limited that way.
    #[schema(value_type = Option<Object>)]
    pub compute_scopes: Option<std::collections::BTreeMap<String, Vec<String>>>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// The secret: shown once, in the answer that creates the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<ApiToken> for TokenBody {
    fn from(t: ApiToken) -> Self {
        TokenBody {
            id: t.id,
            name: t.name,
            user_id: t.user_id.map(|u| u.to_string()),
            workspace: t.project_name,
            scopes: t
                .scopes
                .map(|scopes| scopes.iter().map(ToString::to_string).collect()),
            compute_scopes: t.compute_scopes,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            token: t.secret,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    /// The workspace the token acts in; your current one by default.
    pub workspace: Option<String>,
    /// Another user's id (admins only).
    pub user_id: Option<String>,
    /// Limit the token to these permissions (each must be granted by the role).
    pub scopes: Option<Vec<String>>,
    /// Days until the token expires; it never does by default.
    pub expires_in_days: Option<i64>,
    /// Limit the token on the containers API (`/compute`): dotted paths
    /// under `compute.<your user id>` to actions (`read`, `create`,
    /// `update`, `delete`, `start`, `stop`); a grant on a path covers the
    /// paths under it.
    #[schema(value_type = Option<Object>, example = json!({"compute.usr-1.containers": ["read", "create"]}))]
    pub compute_scopes: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// List your API tokens (every token, for an admin).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses(
        (status = 200, description = "Tokens, without their secrets", body = Vec<TokenBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
    ))]
pub async fn list_tokens(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<TokenBody>>> {
    let tokens = app.tokens(&caller).await?;
    Ok(Json(tokens.into_iter().map(TokenBody::from).collect()))
}

/// Create an API token; its secret is in this answer only.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created", body = TokenBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "No such workspace or user", body = ErrorBody),
    ))]
pub async fn create_token(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateTokenRequest>,
) -> Result<(StatusCode, Json<TokenBody>)> {
    let token = app
        .create_token(
            &caller,
            CreateToken {
                name: req.name,
                project: req.workspace,
                user_id: req.user_id,
                scopes: req.scopes,
                expires_in_days: req.expires_in_days,
                compute_scopes: req.compute_scopes,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(token.into())))
}

/// Revoke an API token.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "A token cannot revoke itself this way", body = ErrorBody),
    ))]
pub async fn revoke_token(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.revoke_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
