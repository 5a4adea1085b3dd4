//! Request limits every face shares: a deadline on answering, and the
//! limits on the endpoints that hand out credentials.

use super::ratelimit::{Limit, RateLimiter, Verdict};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;
use tessera_app::{App, Error, Principal, RateLimits};

/// Answers with the face's error (`E`, a 503) when the rest of the request
/// (reading its body, the handler) takes longer than the app's request
/// timeout. Long-polls and WebSocket upgrades are routed around it.
pub async fn deadline<E>(State(app): State<App>, request: Request, next: Next) -> Response
where
    E: From<Error> + IntoResponse,
{
    let limit = app.request_timeout();
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => E::from(Error::Unavailable(format!(
            "the request was not answered within {} s (a body sent too slowly, or a server \
             too busy); try again",
            limit.as_secs()
        )))
        .into_response(),
    }
}

/// Counts a request for a credential (a login, a refresh, an OAuth
/// token) per client address. Not per username or client id: anyone could
/// then keep a user or a credential from logging in, by sending bad
/// passwords or secrets for it from elsewhere; a client secret (256 random
/// bits) is not guessed, and a user's password has its own throttle.
pub fn credential_request(limiter: &RateLimiter, app: &App, address: Option<IpAddr>) -> Verdict {
    let quota = app.credential_rate_limit();
    let mut limits = Vec::with_capacity(1);
    if let Some(ip) = address {
        limits.push(Limit {
            name: "address",
            key: format!("a\0{ip}"),
            quota,
        });
    }
    limiter.check(&limits)
}

/// Counts an authenticated request against `limits` (per project, per
/// project and route, per credential), passes it on with its caller unless
/// it is over one (then `E`, the face's 429), and adds the rate-limit
/// headers to the answer.
pub async fn count_request<E>(
    limiter: &RateLimiter,
    limits: &RateLimits,
    principal: Principal,
    request: Request,
    next: Next,
) -> Response
where
    E: From<Error> + IntoResponse,
{
    let (mut parts, body) = request.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let endpoint = format!("{} {route}", parts.method);
    // A login's requests count as its user's; a token's as the token's.
    let client = principal.token_id.as_deref().unwrap_or(&principal.user_id);
    let verdict = limiter.check_request(limits, &principal.project_id, client, &endpoint);
    parts.extensions.insert(principal);
    let mut response = match verdict.error() {
        Some(err) => E::from(err).into_response(),
        None => next.run(Request::from_parts(parts, body)).await,
    };
    verdict.write_headers(response.headers_mut());
    response
}
