//! `/volumes`: block volumes, their trash, and actions for one volume or
//! many.

use super::Json;
use super::{
    Body, Caller, ErrorBody, OneOrMany, Path, Query, Result, bad_request, id_text, whole_gb,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tessera_app::tags::{Tag, Tagged};
use tessera_app::volumes::{CreateVolume, Volume, VolumeAction, VolumeInput, VolumeSet};
use tessera_app::{App, Principal};
use tessera_core::catalog::HOURS_PER_MONTH;
use tessera_core::status::VolumeStatus;
use utoipa::{IntoParams, ToSchema};

const STATUSES: &[&str] = &[
    "ordered",
    "attached",
    "attaching",
    "detached",
    "deleted",
    "cloning",
    "detaching",
    "deleting",
    "restoring",
    "created",
    "exported",
    "canceled",
    "canceling",
];

/// An instance a volume is attached to.
#[derive(Serialize, ToSchema)]
pub struct AttachedToBody {
    pub id: String,
    pub hostname: String,
    pub instance_type: String,
    /// The instance's Verda status.
    pub status: String,
    pub ip: Option<String>,
    pub os_volume_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct VolumeBody {
    #[schema(example = "03b07f44-d896-4ac4-9211-60f75332e56d")]
    pub id: String,
    /// The instance it is attached to.
    pub instance_id: Option<String>,
    /// The instances it is attached to (one at most).
    pub instances: Vec<AttachedToBody>,
    pub name: String,
    pub created_at: String,
    pub created_by_user_id: Option<String>,
    /// `attached`, `detached` or `deleted`.
    #[schema(example = "attached")]
    pub status: String,
    /// GB.
    pub size: f64,
    pub is_os_volume: bool,
    /// The device it is inside its instance: `vdb` is `/dev/vdb`.
    pub target: Option<String>,
    #[serde(rename = "type")]
    #[schema(example = "NVMe")]
    pub volume_type: String,
    #[schema(example = "FIN-01")]
    pub location: String,
    /// For an OS volume, its instance's SSH keys.
    pub ssh_key_ids: Vec<String>,
    pub pseudo_path: String,
    pub create_directory_command: String,
    pub mount_command: String,
    pub filesystem_to_fstab_command: String,
    /// `PAY_AS_YOU_GO`.
    pub contract: String,
    pub base_hourly_cost: f64,
    pub monthly_price: f64,
    pub currency: String,
    /// Long-term contract details: none in Tessera.
    #[schema(value_type = Option<Object>)]
    pub long_term: Option<serde_json::Value>,
    /// Only for deleted volumes: when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// Only for deleted volumes: whether its storage is gone for good (it
    /// is in the trash otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_permanently_deleted: Option<bool>,
    pub tags: Vec<super::tags::TagBody>,
}

/// A volume's Verda status.
fn status(volume: &Volume) -> &'static str {
    match volume.status {
        VolumeStatus::Detached => "detached",
        VolumeStatus::Attached => "attached",
        VolumeStatus::Deleted => "deleted",
    }
}

async fn volume_body(app: &App, caller: &Principal, v: Volume, tags: Vec<Tag>) -> VolumeBody {
    let catalog = app.catalog();
    let size = v.size_gb;
    let monthly = catalog
        .volume_type(&v.volume_type)
        .map_or(0.0, |t| t.price_per_month_per_gb * size as f64);
    let short: String =
        v.id.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .collect();
    let dir = format!("/mnt/volume-{short}");
    // An OS volume is its instance's root file system, mounted already.
    let device = match v.is_os_volume {
        true => None,
        false => v.target.as_ref().map(|t| format!("/dev/{t}")),
    };
    let instance = match &v.instance_id {
        Some(id) => app.instance(caller, id).await.ok(),
        None => None,
    };
    let instance = match instance {
        Some(i) => Some(super::instances::instance_body(app, caller, i).await),
        None => None,
    };
    let ssh_key_ids = match (&instance, v.is_os_volume) {
        (Some(i), true) => i.ssh_key_ids.clone(),
        _ => Vec::new(),
    };
    let deleted = v.status == VolumeStatus::Deleted;
    VolumeBody {
        instance_id: v.instance_id.as_ref().map(ToString::to_string),
        instances: instance
            .into_iter()
            .map(|i| AttachedToBody {
                id: i.id,
                hostname: i.hostname,
                instance_type: i.instance_type,
                status: i.status,
                ip: i.ip,
                os_volume_id: i.os_volume_id,
            })
            .collect(),
        name: v.name.clone(),
        created_at: v.created_at.clone(),
        created_by_user_id: v.created_by.clone(),
        status: status(&v).to_string(),
        size: size as f64,
        is_os_volume: v.is_os_volume,
        target: v.target.clone(),
        volume_type: v.volume_type.clone(),
        location: v.location.clone(),
        ssh_key_ids,
        pseudo_path: format!("volume-{short}"),
        create_directory_command: format!("mkdir -p {dir}"),
        mount_command: match &device {
            Some(dev) => format!("mkfs.ext4 -q {dev} 2>/dev/null; mount {dev} {dir}"),
            None => String::new(),
        },
        filesystem_to_fstab_command: match &device {
            Some(dev) => format!(
                "grep -qxF '{dev} {dir} ext4 defaults 0 0' /etc/fstab || echo '{dev} {dir} ext4 defaults 0 0' | tee -a /etc/fstab"
            ),
            None => String::new(),
        },
        contract: "PAY_AS_YOU_GO".into(),
        base_hourly_cost: monthly / HOURS_PER_MONTH,
        monthly_price: monthly,
        currency: catalog.currency.clone(),
        long_term: None,
        deleted_at: deleted.then(|| {
            v.deleted_at
                .clone()
                .or_else(|| v.trashed_at.clone())
                .unwrap_or_else(|| v.created_at.clone())
        }),
        is_permanently_deleted: deleted.then(|| v.trashed_at.is_none()),
        tags: tags.into_iter().map(Into::into).collect(),
        id: v.id.to_string(),
    }
}

async fn bodies(app: &App, caller: &Principal, volumes: Vec<Volume>) -> Result<Vec<VolumeBody>> {
    let mut tags = app.project_tags(&caller.project_id, Tagged::Volume).await?;
    let mut out = Vec::with_capacity(volumes.len());
    for v in volumes {
        let own = tags.remove(v.id.as_str()).unwrap_or_default();
        out.push(volume_body(app, caller, v, own).await);
    }
    Ok(out)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VolumeQuery {
    /// Only volumes with this status.
    pub status: Option<String>,
}

/// List the project's volumes (not deleted ones; see `/volumes/trash`).
#[utoipa::path(get, path = "/v1/volumes", tag = "Volumes",
    params(VolumeQuery),
    responses(
        (status = 200, description = "Volumes", body = Vec<VolumeBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn list_volumes(
    State(app): State<App>,
    Caller(caller): Caller,
    Query(query): Query<VolumeQuery>,
) -> Result<Json<Vec<VolumeBody>>> {
    if let Some(status) = &query.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(bad_request(format!(
            "status must be one of {}",
            STATUSES.join(", ")
        )));
    }
    let set = match query.status.as_deref() {
        Some("deleted") => VolumeSet::Trash,
        _ => VolumeSet::Live,
    };
    let volumes = app
        .volumes(&caller, set)
        .await?
        .into_iter()
        .filter(|v| query.status.as_ref().is_none_or(|s| s == status(v)))
        .collect();
    Ok(Json(bodies(&app, &caller, volumes).await?))
}

/// List the volumes in the trash: deleted, restorable until purged.
#[utoipa::path(get, path = "/v1/volumes/trash", tag = "Volumes",
    responses(
        (status = 200, description = "Volumes in the trash", body = Vec<VolumeBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn list_trash(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<VolumeBody>>> {
    let volumes = app.volumes(&caller, VolumeSet::Trash).await?;
    Ok(Json(bodies(&app, &caller, volumes).await?))
}

/// Get a volume, deleted ones included (with `deleted_at` and
/// `is_permanently_deleted`).
#[utoipa::path(get, path = "/v1/volumes/{volume_id}", tag = "Volumes",
    params(("volume_id" = String, Path, description = "Volume id")),
    responses(
        (status = 200, description = "The volume", body = VolumeBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn get_volume(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<VolumeBody>> {
    let volume = app.volume(&caller, &id).await?;
    let tags = app.tags_of(Tagged::Volume, &volume.id).await?;
    Ok(Json(volume_body(&app, &caller, volume, tags).await))
}

#[derive(Deserialize, ToSchema)]
pub struct CreateVolumeRequest {
    #[serde(rename = "type")]
    #[schema(example = "NVMe")]
    pub volume_type: Option<String>,
    #[schema(example = "FIN-01")]
    pub location_code: Option<String>,
    /// GB.
    pub size: Option<f64>,
    pub instance_id: Option<String>,
    pub instance_ids: Option<Vec<String>>,
    pub name: Option<String>,
    /// Tags to put on it (at most 10).
    pub tags: Option<Vec<super::tags::TagRequest>>,
}

/// Create a volume, attached to a (shut down) instance if one is named;
/// answers its id as text.
#[utoipa::path(post, path = "/v1/volumes", tag = "Volumes", request_body = CreateVolumeRequest,
    responses(
        (status = 202, description = "The new volume's id", body = String, content_type = "text/plain"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 402, description = "The balance does not cover an hour of it", body = ErrorBody),
        (status = 403, description = "Not allowed: the credential's role or scopes, or the project's quota", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn create_volume(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateVolumeRequest>,
) -> Result<Response> {
    let location = req
        .location_code
        .filter(|l| !l.is_empty())
        .ok_or_else(|| bad_request("location_code is required"))?;
    app.check_location("location_code", &location)?;
    let volume_type = req
        .volume_type
        .ok_or_else(|| bad_request("type is required"))?;
    let size = whole_gb(
        "size",
        req.size.ok_or_else(|| bad_request("size is required"))?,
    )?;
    let name = req.name.ok_or_else(|| bad_request("name is required"))?;
    let tags = super::tags::requested(req.tags)?;
    let mut instance_ids = req.instance_ids.unwrap_or_default();
    if let Some(id) = req.instance_id {
        instance_ids.insert(0, id);
    }
    instance_ids.dedup();
    let volume = app
        .create_volume(
            &caller,
            CreateVolume {
                volume: VolumeInput {
                    name,
                    size_gb: size,
                    volume_type,
                },
                location,
                instance_ids,
                tags,
            },
        )
        .await?;
    Ok(id_text(StatusCode::ACCEPTED, volume.id.to_string()))
}

#[derive(Deserialize, ToSchema)]
pub struct VolumeActionRequest {
    /// `attach`, `detach`, `rename`, `resize`, `delete`, `restore` or
    /// `clone`.
    #[schema(example = "detach")]
    pub action: Option<String>,
    /// One volume id or several.
    #[schema(value_type = Vec<String>)]
    pub id: Option<OneOrMany>,
    /// For `resize`: the new size in GB, not below the current one.
    pub size: Option<f64>,
    /// For `attach`.
    pub instance_id: Option<String>,
    /// For `attach`: one instance.
    pub instance_ids: Option<Vec<String>>,
    /// For `rename`, and the clone's name for `clone`.
    pub name: Option<String>,
    /// For `clone`: the clone's type (absent: the source's).
    #[serde(rename = "type")]
    pub volume_type: Option<String>,
    /// For `delete`: for good instead of to the trash.
    pub is_permanent: Option<bool>,
    /// For `clone`: must be the source's location.
    pub location_code: Option<String>,
}

fn parse_volume_action(req: &VolumeActionRequest) -> Result<VolumeAction> {
    let name = req
        .action
        .clone()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad_request("action is required"))?;
    Ok(match name.as_str() {
        "attach" => {
            let mut targets: Vec<String> = req.instance_ids.clone().unwrap_or_default();
            if let Some(id) = &req.instance_id {
                targets.insert(0, id.clone());
            }
            targets.dedup();
            match targets.as_slice() {
                [one] => VolumeAction::Attach {
                    instance_id: one.clone(),
                },
                [] => return Err(bad_request("attach needs instance_id")),
                _ => {
                    return Err(bad_request(
                        "a volume can be attached to one instance only (shared file systems, NVMe_Shared included, are not offered yet)",
                    ));
                }
            }
        }
        "detach" => VolumeAction::Detach,
        "rename" => VolumeAction::Rename {
            name: req
                .name
                .clone()
                .ok_or_else(|| bad_request("rename needs name"))?,
        },
        "resize" => VolumeAction::Resize {
            size_gb: whole_gb(
                "size",
                req.size.ok_or_else(|| bad_request("resize needs size"))?,
            )?,
        },
        "delete" => VolumeAction::Delete {
            permanently: req.is_permanent.unwrap_or(false),
        },
        "restore" => VolumeAction::Restore,
        "clone" => VolumeAction::Clone {
            name: req.name.clone(),
            volume_type: req.volume_type.clone(),
        },
        "cancel" | "create" | "export" | "transfer" => {
            return Err(bad_request(format!(
                "action {name} is not supported by Tessera"
            )));
        }
        other => {
            return Err(bad_request(format!(
                "unknown action {:?}: use attach, detach, rename, resize, delete, restore or clone",
                other
            )));
        }
    })
}

/// Act on one volume or several. `clone` answers the new volumes' ids as a
/// JSON list.
#[utoipa::path(put, path = "/v1/volumes", tag = "Volumes", request_body = VolumeActionRequest,
    responses(
        (status = 202, description = "Done; for clone, the new ids", body = Vec<String>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed: the credential's role or scopes, or the project's quota", body = ErrorBody),
        (status = 402, description = "The balance does not cover it", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn volume_actions(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<VolumeActionRequest>,
) -> Result<Response> {
    let action = parse_volume_action(&req)?;
    let ids = req
        .id
        .map(OneOrMany::into_vec)
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| bad_request("id is required: one volume id or a list of them"))?;
    if let (VolumeAction::Clone { .. }, Some(code)) = (&action, &req.location_code) {
        app.check_location("location_code", code)?;
        for id in &ids {
            let volume = app.volume(&caller, id).await?;
            if volume.location != *code {
                return Err(bad_request(format!(
                    "volume {id} is in {}; cloning to another location is not supported",
                    volume.location
                )));
            }
        }
    }
    // Every volume is checked before any is changed.
    let new_ids = app.volume_actions(&caller, &ids, &action).await?;
    Ok((StatusCode::ACCEPTED, Json(new_ids)).into_response())
}

#[derive(Deserialize, ToSchema, Default)]
pub struct DeleteVolumeRequest {
    /// For good instead of to the trash.
    #[serde(default)]
    pub is_permanent: Option<bool>,
}

/// Delete a volume: to the trash, or for good. 204 when it already was.
#[utoipa::path(delete, path = "/v1/volumes/{volume_id}", tag = "Volumes",
    params(("volume_id" = String, Path, description = "Volume id")),
    request_body = DeleteVolumeRequest,
    responses(
        (status = 202, description = "Deleted"),
        (status = 204, description = "It already was"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 429, description = "Too many requests", body = ErrorBody),
    ))]
pub async fn delete_volume(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(req): Body<DeleteVolumeRequest>,
) -> Result<StatusCode> {
    let deleted = app
        .delete_volume(&caller, &id, req.is_permanent.unwrap_or(false))
        .await?;
    Ok(match deleted {
        true => StatusCode::ACCEPTED,
        false => StatusCode::NO_CONTENT,
    })
}
