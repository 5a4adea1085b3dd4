//! `/v1/inference-keys`: the keys that call the workspace's serverless
//! deployments through the front door (`/inference/<deployment>`). A key
//! is answered once, when it is made; it is kept hashed.

use super::{Body, Caller, ErrorBody, Path, Result};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::deployments::keys::InferenceKey;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct InferenceKeyList {
    pub items: Vec<InferenceKeyBody>,
}

#[derive(Serialize, ToSchema)]
pub struct InferenceKeyBody {
    pub id: String,
    #[schema(example = "production")]
    pub name: String,
    /// The key's first characters, to tell keys apart.
    #[schema(example = "tsk_inf_3f9a1c")]
    pub prefix: String,
    pub created_at: String,
    /// The key itself: answered once, when it is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl From<InferenceKey> for InferenceKeyBody {
    fn from(k: InferenceKey) -> Self {
        InferenceKeyBody {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            created_at: k.created_at,
            key: None,
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInferenceKeyRequest {
    #[schema(example = "production")]
    pub name: String,
}

/// List the workspace's inference keys (never the keys themselves).
#[utoipa::path(get, path = "/v1/inference-keys", tag = "deployments",
    responses(
        (status = 200, description = "Inference keys", body = InferenceKeyList),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_keys(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<InferenceKeyList>> {
    let items = app.inference_keys(&caller).await?;
    Ok(Json(InferenceKeyList {
        items: items.into_iter().map(InferenceKeyBody::from).collect(),
    }))
}

/// Make an inference key; the answer holds the key, shown this once.
#[utoipa::path(post, path = "/v1/inference-keys", tag = "deployments",
    request_body = CreateInferenceKeyRequest,
    responses(
        (status = 201, description = "Created", body = InferenceKeyBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
    ))]
pub async fn create_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateInferenceKeyRequest>,
) -> Result<(StatusCode, Json<InferenceKeyBody>)> {
    let (key, secret) = app.create_inference_key(&caller, &req.name).await?;
    let mut body = InferenceKeyBody::from(key);
    body.key = Some(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

/// Revoke an inference key (by id or name): the front door refuses it at
/// once.
#[utoipa::path(delete, path = "/v1/inference-keys/{id}", tag = "deployments",
    params(("id" = String, Path, description = "The key's id or name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn revoke_key(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    app.revoke_inference_key(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
