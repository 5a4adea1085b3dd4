//! The extractors every face's handlers take. Which face a request is in
//! is known from the router's state ([`FaceState`]), so a rejection is that
//! face's error: a 400 in its body for what cannot be read, its 401 for a
//! missing or bad credential.

use super::{BodyRule, Face, FaceState, bearer};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use tessera_app::{Error, Principal};

fn unreadable<F: Face>(message: String) -> F::Error {
    F::Error::from(Error::Invalid {
        field: None,
        message,
    })
}

/// A body past the limit every route reads (axum's, 2 MB): a 413, which
/// says that sending it again will not help.
fn too_large<F: Face>() -> F::Error {
    F::Error::from(Error::TooLarge(format!(
        "the body is larger than the {} bytes a request may send",
        BODY_LIMIT
    )))
}

/// The most bytes a body read whole may have (`faces::router` sets it).
pub(crate) const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// A JSON object body, read by the face's [`BodyRule`]. (serde would also
/// read a struct from a JSON array; the documents say object.)
pub struct Body<T>(pub T);

impl<F: Face, T: DeserializeOwned> FromRequest<FaceState<F>> for Body<T> {
    type Rejection = F::Error;

    async fn from_request(request: Request, state: &FaceState<F>) -> Result<Self, F::Error> {
        let value = match F::BODY {
            BodyRule::Strict => {
                // A body that does not say it is JSON is refused for
                // that, whatever its size: read and dropped first, as one
                // too large is, so that a client still sending sees the
                // answer rather than a reset.
                if !json_content_type(request.headers()) {
                    let _ = read_body::<F>(request.into_body()).await;
                    return Err(unreadable::<F>(strict_message(
                        JsonRejection::MissingJsonContentType(Default::default()),
                    )));
                }
                let (parts, body) = request.into_parts();
                let bytes = read_body::<F>(body).await?;
                let request = Request::from_parts(parts, axum::body::Body::from(bytes));
                let read = Json::<serde_json::Value>::from_request(request, state).await;
                read.map(|Json(value)| value)
                    .map_err(|rejection| unreadable::<F>(strict_message(rejection)))?
            }
            BodyRule::Lenient => {
                let bytes = read_body::<F>(request.into_body()).await?;
                match bytes.iter().all(u8::is_ascii_whitespace) {
                    true => serde_json::Value::Object(Default::default()),
                    false => serde_json::from_slice(&bytes)
                        .map_err(|e| unreadable::<F>(format!("the body is not valid JSON: {e}")))?,
                }
            }
        };
        if !value.is_object() {
            return Err(unreadable::<F>("the body must be a JSON object".into()));
        }
        serde_path_to_error::deserialize(value)
            .map(Body)
            .map_err(|e| {
                // Which field, when it is not the body itself.
                let why = match e.path().to_string().as_str() {
                    "." => e.inner().to_string(),
                    path => format!("{path}: {}", e.inner()),
                };
                match F::BODY {
                    BodyRule::Strict => unreadable::<F>(format!("invalid JSON body: {why}")),
                    BodyRule::Lenient => unreadable::<F>(why),
                }
            })
    }
}

/// Whether a request says its body is JSON (`application/json`, or a
/// `+json` type), as axum's `Json` reads `Content-Type`.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn strict_message(rejection: JsonRejection) -> String {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "the body must be JSON, sent with Content-Type: application/json".to_string()
        }
        other => format!("invalid JSON body: {}", other.body_text()),
    }
}

/// A body as bytes, for handlers that read it their own way (an optional
/// body, Kloigos's validation); past the limit, the face's 413.
pub struct RawBody(pub Bytes);

impl<F: Face> FromRequest<FaceState<F>> for RawBody {
    type Rejection = F::Error;

    async fn from_request(request: Request, _: &FaceState<F>) -> Result<Self, F::Error> {
        read_body::<F>(request.into_body()).await.map(RawBody)
    }
}

/// The most of a body past the limit that is read and dropped before the
/// 413 is answered, and for how long.
const DRAIN_LIMIT: usize = 4 * BODY_LIMIT;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A body read whole, up to [`BODY_LIMIT`]. Past it, the rest is read and
/// dropped (up to [`DRAIN_LIMIT`], for at most [`DRAIN_TIME`]) before the
/// 413 goes out: a client still sending when the server answered and
/// closed would see its connection reset rather than the answer (the
/// lingering close web servers do).
async fn read_body<F: Face>(body: axum::body::Body) -> Result<Bytes, F::Error> {
    use futures::StreamExt;
    let mut body = body.into_data_stream();
    let mut kept = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| unreadable::<F>(format!("cannot read the body: {e}")))?;
        if kept.len() + chunk.len() > BODY_LIMIT {
            let mut seen = kept.len() + chunk.len();
            let drain = async {
                while let Some(Ok(chunk)) = body.next().await {
                    seen += chunk.len();
                    if seen > DRAIN_LIMIT {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(too_large::<F>());
        }
        kept.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(kept))
}

/// Query parameters.
pub struct Query<T>(pub T);

impl<F: Face, T: DeserializeOwned> FromRequestParts<FaceState<F>> for Query<T> {
    type Rejection = F::Error;

    async fn from_request_parts(parts: &mut Parts, state: &FaceState<F>) -> Result<Self, F::Error> {
        axum::extract::Query::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| unreadable::<F>(format!("invalid query: {}", e.body_text())))
    }
}

/// Path parameters.
pub struct Path<T>(pub T);

impl<F: Face, T: DeserializeOwned + Send> FromRequestParts<FaceState<F>> for Path<T> {
    type Rejection = F::Error;

    async fn from_request_parts(parts: &mut Parts, state: &FaceState<F>) -> Result<Self, F::Error> {
        axum::extract::Path::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e| unreadable::<F>(format!("invalid path: {}", e.body_text())))
    }
}

/// The authenticated caller: the one [`super::authenticate`] found, or,
/// on a route it does not guard, the bearer credential's.
pub struct Caller(pub Principal);

impl<F: Face> FromRequestParts<FaceState<F>> for Caller {
    type Rejection = F::Error;

    async fn from_request_parts(parts: &mut Parts, state: &FaceState<F>) -> Result<Self, F::Error> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(Caller(principal.clone()));
        }
        Ok(Caller(
            F::authenticate(&state.app, bearer(&parts.headers)).await?,
        ))
    }
}
