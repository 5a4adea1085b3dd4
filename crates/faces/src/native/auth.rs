//! `/v1/auth`: login and refresh.

use super::{Body, ErrorBody, NativeError, NativeState, Result};
use crate::serve::ClientAddress;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
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
        (status = 429, description = "Too many logins from this address, or failures for this user; see Retry-After", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<NativeState>,
    ClientAddress(client): ClientAddress,
    Body(req): Body<LoginRequest>,
) -> Response {
    // Per address only: a limit per username would let anyone keep a user
    // from logging in by trying its name from elsewhere. Guessing one
    // user's password from many addresses is slowed by the app's failure
    // backoff, which spares the addresses the user logged in from.
    let verdict = crate::kit::limits::credential_request(&state.limiter, &state.app, client);
    let answer = match verdict.error() {
        Some(err) => Err(NativeError(err)),
        None => state
            .app
            .login(&req.username, &req.password, client)
            .await
            .map(|session| Json(TokenResponse::from(session)))
            .map_err(NativeError),
    };
    let mut response = answer.into_response();
    verdict.write_headers(response.headers_mut());
    response
}

/// Trade a refresh token for new tokens; the old refresh token stops working.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", security(()),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = TokenResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Invalid refresh token", body = ErrorBody),
        (status = 429, description = "Too many requests from this address; see Retry-After", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<NativeState>,
    ClientAddress(client): ClientAddress,
    Body(req): Body<RefreshRequest>,
) -> Response {
    let verdict = crate::kit::limits::credential_request(&state.limiter, &state.app, client);
    let answer: Result<Json<TokenResponse>> = match verdict.error() {
        Some(err) => Err(NativeError(err)),
        None => match state.app.refresh(&req.refresh_token).await {
            Ok(session) => Ok(Json(session.into())),
            Err(err) => Err(NativeError(err)),
        },
    };
    let mut response = answer.into_response();
    verdict.write_headers(response.headers_mut());
    response
}
