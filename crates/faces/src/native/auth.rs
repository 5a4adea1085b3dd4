//! `/v1/auth`: login and refresh.

use super::{Body, ErrorBody, Result};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::identity::Session;
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "admin")]
    pub username: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    /// A signed JWT access token.
    pub token: String,
    /// Trades for a new pair once, at `POST /v1/auth/refresh`.
    pub refresh_token: String,
    /// Seconds until `token` expires.
    pub expires_in: i64,
}

impl From<Session> for TokenResponse {
    fn from(s: Session) -> Self {
        TokenResponse {
            token: s.token,
            refresh_token: s.refresh_token,
            expires_in: s.expires_in,
        }
    }
}

/// Log in with a username and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Invalid credentials", body = ErrorBody),
    ))]
pub async fn login(
    State(app): State<App>,
    Body(req): Body<LoginRequest>,
) -> Result<Json<TokenResponse>> {
    Ok(Json(app.login(&req.username, &req.password).await?.into()))
}

/// Trade a refresh token for new tokens; the old refresh token stops working.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", security(()),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Invalid refresh token", body = ErrorBody),
    ))]
pub async fn refresh(
    State(app): State<App>,
    Body(req): Body<RefreshRequest>,
) -> Result<Json<TokenResponse>> {
    Ok(Json(app.refresh(&req.refresh_token).await?.into()))
}
