//! `/instances/{id}/tags` and `/volumes/{id}/tags`: tags as Verda's Go SDK
//! manages them. Adding answers the tag (201), 409 for a key the resource
//! has, 400 past 10 tags; removing answers 204, 404 for a key it has not.

use super::{Body, Caller, ErrorBody, Json, Path, Result, bad_request};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::tags::{Tag, Tagged};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema, Clone)]
pub struct TagBody {
    pub id: String,
    #[schema(example = "team")]
    pub key: String,
    #[schema(example = "platform")]
    pub value: String,
}

impl From<Tag> for TagBody {
    fn from(t: Tag) -> Self {
        TagBody {
            id: t.id,
            key: t.key,
            value: t.value,
        }
    }
}

/// A tag to add. The key is kept in lower case; a tag without a value is a
/// freeform tag.
#[derive(Deserialize, ToSchema, Clone)]
pub struct TagRequest {
    #[schema(example = "team", max_length = 63)]
    pub key: Option<String>,
    #[schema(example = "platform", max_length = 127)]
    pub value: Option<String>,
}

impl TagRequest {
    pub(crate) fn pair(self) -> Result<(String, String)> {
        let key = self
            .key
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad_request("key is required"))?;
        Ok((key, self.value.unwrap_or_default()))
    }
}

/// The `(key, value)` pairs a new resource is asked to carry.
pub(crate) fn requested(tags: Option<Vec<TagRequest>>) -> Result<Vec<(String, String)>> {
    tags.unwrap_or_default()
        .into_iter()
        .map(TagRequest::pair)
        .collect()
}

async fn add(
    app: &App,
    caller: &tessera_app::Principal,
    kind: Tagged,
    id: &str,
    req: TagRequest,
) -> Result<(StatusCode, Json<TagBody>)> {
    let (key, value) = req.pair()?;
    let tag = app.add_tag(caller, kind, id, &key, &value).await?;
    Ok((StatusCode::CREATED, Json(tag.into())))
}

/// Tag an instance.
#[utoipa::path(post, path = "/v1/instances/{instance_id}/tags", tag = "Instances",
    params(("instance_id" = String, Path, description = "Instance id")),
    request_body = TagRequest,
    responses(
        (status = 201, description = "The new tag", body = TagBody),
        (status = 400, description = "Invalid request, or 10 tags already", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The instance has a tag with that key", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn add_instance_tag(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(req): Body<TagRequest>,
) -> Result<(StatusCode, Json<TagBody>)> {
    add(&app, &caller, Tagged::Instance, &id, req).await
}

/// Remove an instance's tag.
#[utoipa::path(delete, path = "/v1/instances/{instance_id}/tags/{key}", tag = "Instances",
    params(
        ("instance_id" = String, Path, description = "Instance id"),
        ("key" = String, Path, description = "Tag key"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such instance or tag", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn delete_instance_tag(
    State(app): State<App>,
    Caller(caller): Caller,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    app.delete_tag(&caller, Tagged::Instance, &id, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tag a volume.
#[utoipa::path(post, path = "/v1/volumes/{volume_id}/tags", tag = "Volumes",
    params(("volume_id" = String, Path, description = "Volume id")),
    request_body = TagRequest,
    responses(
        (status = 201, description = "The new tag", body = TagBody),
        (status = 400, description = "Invalid request, or 10 tags already", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The volume has a tag with that key", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn add_volume_tag(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(req): Body<TagRequest>,
) -> Result<(StatusCode, Json<TagBody>)> {
    add(&app, &caller, Tagged::Volume, &id, req).await
}

/// Remove a volume's tag.
#[utoipa::path(delete, path = "/v1/volumes/{volume_id}/tags/{key}", tag = "Volumes",
    params(
        ("volume_id" = String, Path, description = "Volume id"),
        ("key" = String, Path, description = "Tag key"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such volume or tag", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn delete_volume_tag(
    State(app): State<App>,
    Caller(caller): Caller,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    app.delete_tag(&caller, Tagged::Volume, &id, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
