//! `POST /oauth2/token`: the `client_credentials` and `refresh_token`
//! grants, with JSON bodies.

use super::Json;
use super::{Body, ErrorBody, Result, VerdaError, VerdaState, bad_request};
use crate::serve::ClientAddress;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::oauth::{OAuthTokens, SCOPE};
use utoipa::ToSchema;

/// Either grant's fields.
#[derive(Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `client_credentials` or `refresh_token`.
    #[schema(example = "client_credentials")]
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub refresh_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    #[schema(example = 3600)]
    pub expires_in: i64,
    pub refresh_token: String,
    #[schema(example = "cloud-api-v1")]
    pub scope: String,
}

impl From<OAuthTokens> for TokenResponse {
    fn from(t: OAuthTokens) -> Self {
        TokenResponse {
            access_token: t.access_token,
            token_type: "Bearer".into(),
            expires_in: t.expires_in,
            refresh_token: t.refresh_token,
            scope: SCOPE.into(),
        }
    }
}

fn required(value: Option<String>, field: &str) -> Result<String> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| bad_request(format!("{field} is required")))
}

/// Get an access token.
#[utoipa::path(post, path = "/v1/oauth2/token", tag = "Authentication",
    request_body = TokenRequest,
    security(()),
    responses(
        (status = 200, description = "Tokens", body = TokenResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Invalid credentials", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn token(
    State(state): State<VerdaState>,
    ClientAddress(client): ClientAddress,
    Body(req): Body<TokenRequest>,
) -> Response {
    // Counted per client address (not per client id: see
    // `credential_request`).
    let verdict = crate::kit::limits::credential_request(&state.limiter, &state.app, client);
    let answer = match verdict.error() {
        Some(err) => Err(VerdaError(err)),
        None => grant(&state.app, req).await,
    };
    let mut response = answer.into_response();
    verdict.write_headers(response.headers_mut());
    response
}

async fn grant(app: &App, req: TokenRequest) -> Result<Json<TokenResponse>> {
    let grant = required(req.grant_type, "grant_type")?;
    let tokens = match grant.as_str() {
        "client_credentials" => {
            let id = required(req.client_id, "client_id")?;
            let secret = required(req.client_secret, "client_secret")?;
            app.oauth_login(&id, &secret).await?
        }
        "refresh_token" => {
            let token = required(req.refresh_token, "refresh_token")?;
            app.oauth_refresh(&token).await?
        }
        other => {
            return Err(bad_request(format!(
                "grant_type {:?} is not supported: use client_credentials or refresh_token",
                other
            )));
        }
    };
    Ok(Json(tokens.into()))
}
