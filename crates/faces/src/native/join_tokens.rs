//! `/v1/servers/join-tokens`: what a new host's `tessera agent` registers
//! with.

use super::{Body, Caller, ErrorBody, Path, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tessera_app::App;
use tessera_app::agents::JoinToken;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct JoinTokenBody {
    pub id: String,
    pub description: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked: bool,
    /// Past its expiry.
    pub expired: bool,
    /// The one registered host whose agent this token may replace.
    pub replaces: Option<String>,
    /// How many more hosts it admits; null: any number until it expires.
    pub uses_left: Option<i64>,
    /// The one host name an agent may join under with it; null: any name
    /// no host has had an agent under.
    pub hostname: Option<String>,
    /// The secret: shown once, in the answer that creates the token. Give
    /// it to `tessera agent` (in `TESSERA_JOIN_TOKEN` or a file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<JoinToken> for JoinTokenBody {
    fn from(t: JoinToken) -> Self {
        JoinTokenBody {
            id: t.id,
            description: t.description,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked: t.revoked,
            expired: t.expired,
            replaces: t.replaces,
            uses_left: t.uses_left,
            hostname: t.hostname,
            token: t.token,
        }
    }
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinTokenRequest {
    pub description: Option<String>,
    /// Seconds until the token expires (60 to 31536000; a day by default).
    pub ttl_seconds: Option<u64>,
    /// How many hosts may join with it (1 to 100000); by default any
    /// number until it expires.
    pub uses: Option<i64>,
    /// A registered host (hostname or id) whose agent this token may
    /// replace. Without it, a token admits only hosts that never had an
    /// agent.
    pub replaces: Option<String>,
    /// The one host name an agent may join under with it: with a server
    /// registered beforehand under that name (`POST /v1/servers/create`,
    /// its CPUs as you say), whoever holds the token cannot declare a host
    /// of their own. By default any new name.
    pub hostname: Option<String>,
}

/// List join tokens, without their secrets.
#[utoipa::path(get, path = "/v1/servers/join-tokens", tag = "servers",
    responses(
        (status = 200, description = "Join tokens", body = Vec<JoinTokenBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_join_tokens(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<JoinTokenBody>>> {
    let tokens = app.join_tokens(&caller).await?;
    Ok(Json(tokens.into_iter().map(JoinTokenBody::from).collect()))
}

/// Create a join token for new hosts' agents; its secret is in this answer
/// only.
#[utoipa::path(post, path = "/v1/servers/join-tokens", tag = "servers",
    request_body = CreateJoinTokenRequest,
    responses(
        (status = 201, description = "Created", body = JoinTokenBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn create_join_token(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateJoinTokenRequest>,
) -> Result<(StatusCode, Json<JoinTokenBody>)> {
    let token = app
        .create_join_token(
            &caller,
            req.description,
            req.ttl_seconds.map(Duration::from_secs),
            (req.replaces, req.hostname),
            req.uses,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(token.into())))
}

/// Revoke a join token: no new host joins with it (hosts that joined keep
/// their own credentials).
#[utoipa::path(delete, path = "/v1/servers/join-tokens/{id}", tag = "servers",
    params(("id" = String, Path, description = "Join token id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn revoke_join_token(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.revoke_join_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
