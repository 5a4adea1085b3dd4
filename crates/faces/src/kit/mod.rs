//! The kit every face is built from. A face plugs in by implementing
//! [`Face`]: it names its error type (its error body and statuses), its
//! credential flavour, how it reads JSON bodies, its rate limits and its
//! answers to unknown paths. The kit gives it the rest, the same for all:
//!
//! - [`FaceState`], the router state (the app and the face's rate limiter);
//! - the extractors [`Body`], [`Query`], [`Path`] and [`Caller`], whose
//!   rejections are the face's 400 and 401;
//! - [`authenticate`], the middleware that checks the credential, lets the
//!   face authorise the route, counts the request against the face's rate
//!   limits and hands the caller on;
//! - [`limits::deadline`], the request deadline, and the credential
//!   endpoints' limits ([`limits::credential_request`]);
//! - [`not_found`] and [`method_not_allowed`], the fallbacks;
//! - [`answer`], what every error answer shares (internal errors logged and
//!   masked, `Retry-After` on 429, `WWW-Authenticate` on 401);
//! - [`bearer`], the one parser of `Authorization: Bearer`;
//! - [`feed_closed`], the close frame of an event stream whose feed ended.

pub(crate) mod extract;
pub mod limits;
pub mod ratelimit;

pub use extract::{Body, Caller, Path, Query, RawBody};

use axum::extract::{FromRef, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ratelimit::RateLimiter;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use tessera_app::{App, Error, Principal, RateLimits};

/// How a face reads a JSON body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyRule {
    /// Sent as `application/json`, and a JSON object.
    Strict,
    /// Read as JSON whatever the content type says; empty is `{}`. For
    /// clients that send bodies without a content type (Verda's SDK).
    Lenient,
}

/// What makes a face: see the module documentation.
pub trait Face: Send + Sync + 'static {
    /// Every failure of the face, in its error body.
    type Error: From<Error> + IntoResponse + Send + 'static;

    const BODY: BodyRule;

    /// Checks a bearer credential of the face's flavour.
    fn authenticate(
        app: &App,
        bearer: Option<&str>,
    ) -> impl Future<Output = Result<Principal, Error>> + Send;

    /// Whether the caller may use the route at all (beyond what each
    /// handler checks); `Ok` by default.
    fn authorize(_caller: &Principal, _request: &Request) -> Result<(), Error> {
        Ok(())
    }

    /// The limits authenticated requests count against; `None`: not rate
    /// limited.
    fn rate_limits(app: &App) -> Option<&RateLimits>;

    /// The answer to a path the face does not have.
    fn not_found(method: &Method, path: &str) -> Response;

    /// The answer to a method a path does not take.
    fn method_not_allowed(method: &Method, path: &str) -> Response;
}

/// A face's router state: the app, and the counters of its rate limits.
pub struct FaceState<F> {
    pub app: App,
    pub limiter: Arc<RateLimiter>,
    face: PhantomData<fn() -> F>,
}

impl<F: Face> FaceState<F> {
    pub fn new(app: App) -> FaceState<F> {
        let window =
            F::rate_limits(&app).map_or_else(|| app.rate_limits().window, |limits| limits.window);
        FaceState {
            limiter: Arc::new(RateLimiter::new(window)),
            app,
            face: PhantomData,
        }
    }
}

impl<F> Clone for FaceState<F> {
    fn clone(&self) -> Self {
        FaceState {
            app: self.app.clone(),
            limiter: self.limiter.clone(),
            face: PhantomData,
        }
    }
}

impl<F> FromRef<FaceState<F>> for App {
    fn from_ref(state: &FaceState<F>) -> App {
        state.app.clone()
    }
}

/// What every face's error answer shares. `body` makes the face's error
/// body from the status and the message that may be shown: an internal
/// error's cause is logged, never shown.
pub fn answer<B: IntoResponse>(
    error: &Error,
    status: StatusCode,
    body: impl FnOnce(String) -> B,
) -> Response {
    let message = match error {
        Error::Internal(source) => {
            tracing::error!(error = ?source, "internal error");
            "Internal Server Error".to_string()
        }
        other => other.to_string(),
    };
    let mut response = (status, body(message)).into_response();
    let headers = response.headers_mut();
    if let Error::RateLimited { retry_after, .. } = error {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The credential of an `Authorization: Bearer` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
}

/// Authenticates the caller with the face's credential flavour, lets the
/// face authorise the route, counts the request against the face's rate
/// limits (adding the rate-limit headers to the answer), and passes it on
/// with the caller (for [`Caller`]).
pub async fn authenticate<F: Face>(
    State(state): State<FaceState<F>>,
    mut request: Request,
    next: Next,
) -> Response {
    let principal = match F::authenticate(&state.app, bearer(request.headers())).await {
        Ok(principal) => principal,
        Err(err) => return F::Error::from(err).into_response(),
    };
    if let Err(err) = F::authorize(&principal, &request) {
        return F::Error::from(err).into_response();
    }
    match F::rate_limits(&state.app) {
        Some(limits) => {
            limits::count_request::<F::Error>(&state.limiter, limits, principal, request, next)
                .await
        }
        None => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
    }
}

/// The fallback for paths the face does not have.
pub async fn not_found<F: Face>(request: Request) -> Response {
    F::not_found(request.method(), asked_path(&request))
}

/// The fallback for methods a path does not take.
pub async fn method_not_allowed<F: Face>(request: Request) -> Response {
    F::method_not_allowed(request.method(), asked_path(&request))
}

/// The path as the client sent it (a face's router sees it without the
/// face's prefix, which its messages would then leave out).
fn asked_path(request: &Request) -> &str {
    request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| request.uri().path(), |uri| uri.0.path())
}

/// The close frame that ends an event stream whose feed ended, saying why:
/// 1008 (policy) when its credential no longer allows it, 1001 (going
/// away) when the server stops, 1013 (try again later) when the
/// credential could not be checked.
pub(crate) fn feed_closed(end: tessera_app::events::FeedEnd) -> axum::extract::ws::Message {
    use axum::extract::ws::{CloseFrame, Message, close_code};
    use tessera_app::events::FeedEnd;
    let code = match end {
        FeedEnd::CredentialGone => close_code::POLICY,
        FeedEnd::Stopping => close_code::AWAY,
        FeedEnd::Unchecked => close_code::AGAIN,
    };
    Message::Close(Some(CloseFrame {
        code,
        reason: end.reason().into(),
    }))
}
