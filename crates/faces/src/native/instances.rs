//! `/v1/instances`: instances as metadata, spec and status.

use super::{Body, Caller, ErrorBody, Path, Query, Result, one_of, operation_location};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_app::App;
use tessera_app::instances::{
    CreateInstance, Instance, InstanceQuery, InstanceSpecInput, parse_selector,
};
use tessera_app::tags::{Tag, Tagged};
use tessera_core::status::InstanceState;
use utoipa::{IntoParams, ToSchema};

/// An instance's metadata as given at creation.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataInput {
    #[schema(example = "web-server-01")]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Serialize, ToSchema)]
pub struct Metadata {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Tags, as the Verda face shows them (at most 10; keys in lower case).
    pub tags: Vec<TagBody>,
    pub created_at: String,
}

/// A tag on a resource.
#[derive(Serialize, ToSchema)]
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// 1 to 63 characters, kept in lower case; unique on the instance.
    #[schema(example = "team")]
    pub key: String,
    /// At most 127 characters; empty by default.
    #[serde(default)]
    pub value: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceSpecBody {
    /// Instance type: cx11, cx21, cx31, cx41, cx51 or cx61.
    #[serde(rename = "type")]
    #[schema(example = "cx31")]
    pub instance_type: String,
    #[schema(example = "ubuntu-22.04")]
    pub image: String,
    /// Defaults to the type's.
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_gb: Option<u64>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub ssh_key_ids: Vec<String>,
    /// Base64-encoded startup script.
    pub user_data: Option<String>,
    /// Tessera extension: a region or zone to place the instance in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl From<InstanceSpecBody> for InstanceSpecInput {
    fn from(s: InstanceSpecBody) -> Self {
        InstanceSpecInput {
            instance_type: s.instance_type,
            image: s.image,
            vcpus: s.vcpus,
            memory_mb: s.memory_mb,
            disk_gb: s.disk_gb,
            vpc_id: s.vpc_id,
            subnet_id: s.subnet_id,
            security_groups: s.security_groups,
            ssh_key_ids: s.ssh_key_ids,
            user_data: s.user_data,
            location: s.location,
            ..InstanceSpecInput::default()
        }
    }
}

impl From<InstanceSpecInput> for InstanceSpecBody {
    fn from(s: InstanceSpecInput) -> Self {
        InstanceSpecBody {
            instance_type: s.instance_type,
            image: s.image,
            vcpus: s.vcpus,
            memory_mb: s.memory_mb,
            disk_gb: s.disk_gb,
            vpc_id: s.vpc_id,
            subnet_id: s.subnet_id,
            security_groups: s.security_groups,
            ssh_key_ids: s.ssh_key_ids,
            user_data: s.user_data,
            location: s.location,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct InstanceStatus {
    /// `provisioning`, `running`, `stopping`, `stopped` or `terminated`.
    pub state: String,
    pub host_id: String,
    pub private_ip: String,
    pub public_ip: String,
    /// Tessera extension: the host CPUs pinned to the instance (Linux list).
    pub cpus: String,
    /// Tessera extension: `HOST:PORT` forwarded to the instance's SSH
    /// server, when its host forwards one (`ssh -p PORT root@HOST`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_endpoint: Option<String>,
    /// Tessera extension: why the instance is in its state, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Tessera extension: it runs as its host's root, without a user
    /// namespace of its own (its project or its image is marked privileged
    /// by an operator); absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
}

#[derive(Serialize, ToSchema)]
pub struct InstanceBody {
    #[schema(example = "inst-a1b2c3")]
    pub id: String,
    pub metadata: Metadata,
    pub spec: InstanceSpecBody,
    pub status: InstanceStatus,
    /// The operation under way on the instance, if any.
    pub operation_id: Option<String>,
}

impl InstanceBody {
    fn new(i: Instance, tags: Vec<Tag>) -> Self {
        let cpus = i.cpu_list();
        let privileged = i.spec.privileged;
        InstanceBody {
            metadata: Metadata {
                name: i.name,
                labels: i.labels,
                tags: tags.into_iter().map(TagBody::from).collect(),
                created_at: i.created_at,
            },
            spec: i.spec.into(),
            status: InstanceStatus {
                state: i.state.as_str().to_string(),
                host_id: i.host_id.map(|h| h.to_string()).unwrap_or_default(),
                private_ip: i.private_ip,
                public_ip: i.public_ip,
                cpus,
                ssh_endpoint: i.ssh_endpoint,
                message: i.detail,
                privileged,
            },
            operation_id: i.operation_id.map(|o| o.to_string()),
            id: i.id.to_string(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceRequest {
    pub metadata: MetadataInput,
    pub spec: InstanceSpecBody,
}

#[derive(Serialize, ToSchema)]
pub struct InstanceList {
    pub items: Vec<InstanceBody>,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Label selector: `env=production,team=platform` (all must match).
    pub labels: Option<String>,
    /// Only instances in this state (`terminated` lists terminated ones,
    /// which are otherwise left out).
    pub state: Option<String>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

type Accepted = (
    StatusCode,
    [(header::HeaderName, String); 1],
    Json<InstanceBody>,
);

/// An instance as shown, with its tags.
async fn body(app: &App, instance: Instance) -> Result<InstanceBody> {
    let tags = app.tags_of(Tagged::Instance, &instance.id).await?;
    Ok(InstanceBody::new(instance, tags))
}

async fn accepted(app: &App, status: StatusCode, instance: Instance) -> Result<Accepted> {
    let location = operation_location(instance.operation_id.as_deref().unwrap_or_default());
    Ok((status, location, Json(body(app, instance).await?)))
}

/// A delete's answer: 202 with the operation doing it, or 200 with the
/// instance as it is when it was terminated already.
type Deleted = (
    StatusCode,
    Option<[(header::HeaderName, String); 1]>,
    Json<InstanceBody>,
);

/// Create an instance; it is `provisioning` until its operation ends.
#[utoipa::path(post, path = "/v1/instances", tag = "instances", request_body = CreateInstanceRequest,
    responses(
        (status = 201, description = "Created; follow operation_id", body = InstanceBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 402, description = "A prepaid project's balance does not cover an hour of it with what the project runs", body = ErrorBody),
        (status = 403, description = "Forbidden, or over the project's quota", body = ErrorBody),
    ))]
pub async fn create_instance(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateInstanceRequest>,
) -> Result<Accepted> {
    let instance = app
        .create_instance(
            &caller,
            CreateInstance {
                name: req.metadata.name,
                labels: req.metadata.labels,
                spec: req.spec.into(),
                ..CreateInstance::default()
            },
        )
        .await?;
    // A new instance has no tags: this API takes none at creation (they
    // are added after, at `/v1/instances/{id}/tags`), so none are read.
    let location = operation_location(instance.operation_id.as_deref().unwrap_or_default());
    Ok((
        StatusCode::CREATED,
        location,
        Json(InstanceBody::new(instance, Vec::new())),
    ))
}

/// List instances, oldest first.
#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(ListParams),
    responses(
        (status = 200, description = "Instances", body = InstanceList),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_instances(
    State(app): State<App>,
    Caller(caller): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<InstanceList>> {
    let labels = params
        .labels
        .as_deref()
        .map(parse_selector)
        .transpose()?
        .unwrap_or_default();
    let page = app
        .instances(
            &caller,
            &InstanceQuery {
                labels,
                state: one_of("state", params.state.as_deref(), InstanceState::ALL)?,
                limit: params.limit,
                page_token: params.page_token,
            },
        )
        .await?;
    let mut tags = app
        .page_tags(
            &caller.project_id,
            Tagged::Instance,
            page.items.iter().map(|i| i.id.as_str()),
        )
        .await?;
    Ok(Json(InstanceList {
        items: page
            .items
            .into_iter()
            .map(|i| {
                let own = tags.remove(i.id.as_str()).unwrap_or_default();
                InstanceBody::new(i, own)
            })
            .collect(),
        next_page_token: page.next_page_token,
    }))
}

/// Get an instance.
#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "The instance", body = InstanceBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_instance(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<InstanceBody>> {
    Ok(Json(body(&app, app.instance(&caller, &id).await?).await?))
}

/// Delete an instance: 202 with the operation doing it; 200, changing
/// nothing, for one that is terminated already (a failed creation, a delete
/// done before).
#[utoipa::path(delete, path = "/v1/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 200, description = "Terminated already: nothing to do", body = InstanceBody),
        (status = 202, description = "Deleting, or its creation is cancelled; follow operation_id", body = InstanceBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "A start or stop is under way on it", body = ErrorBody),
    ))]
pub async fn delete_instance(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Deleted> {
    let instance = app.delete_instance(&caller, &id).await?.instance();
    let location = instance.operation_id.as_deref().map(operation_location);
    let status = match location {
        Some(_) => StatusCode::ACCEPTED,
        None => StatusCode::OK,
    };
    Ok((status, location, Json(body(&app, instance).await?)))
}

/// Start a stopped instance.
#[utoipa::path(post, path = "/v1/instances/{id}/start", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 202, description = "Starting; follow operation_id", body = InstanceBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 402, description = "A prepaid project's balance does not cover an hour of it with what the project runs", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Not stopped, or another operation is under way", body = ErrorBody),
    ))]
pub async fn start_instance(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Accepted> {
    let instance = app.start_instance(&caller, &id).await?;
    accepted(&app, StatusCode::ACCEPTED, instance).await
}

/// Stop a running instance; it keeps its CPUs and disk.
#[utoipa::path(post, path = "/v1/instances/{id}/stop", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 202, description = "Stopping; follow operation_id", body = InstanceBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Not running, or another operation is under way", body = ErrorBody),
    ))]
pub async fn stop_instance(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Accepted> {
    let instance = app.stop_instance(&caller, &id).await?;
    accepted(&app, StatusCode::ACCEPTED, instance).await
}

/// Tag an instance: 409 when it has a tag with that key, 400 when it has
/// 10 already.
#[utoipa::path(post, path = "/v1/instances/{id}/tags", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    request_body = TagRequest,
    responses(
        (status = 201, description = "The new tag", body = TagBody),
        (status = 400, description = "Invalid request, or the instance has 10 tags", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "The instance has a tag with that key", body = ErrorBody),
    ))]
pub async fn add_tag(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(req): Body<TagRequest>,
) -> Result<(StatusCode, Json<TagBody>)> {
    let tag = app
        .add_tag(&caller, Tagged::Instance, &id, &req.key, &req.value)
        .await?;
    Ok((StatusCode::CREATED, Json(tag.into())))
}

/// Remove an instance's tag by key.
#[utoipa::path(delete, path = "/v1/instances/{id}/tags/{key}", tag = "instances",
    params(
        ("id" = String, Path, description = "Instance id"),
        ("key" = String, Path, description = "Tag key"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "No such instance or tag", body = ErrorBody),
    ))]
pub async fn delete_tag(
    State(app): State<App>,
    Caller(caller): Caller,
    Path((id, key)): Path<(String, String)>,
) -> Result<StatusCode> {
    app.delete_tag(&caller, Tagged::Instance, &id, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}
