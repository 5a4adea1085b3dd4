//! `/v1/workspaces/{name}/quota`: a project's quota and what it uses; set
//! by install admins.

use super::{Body, Caller, ErrorBody, Path, Result};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Deserializer, Serialize};
use tessera_app::App;
use tessera_app::quotas::{Quota, SetQuota};
use tessera_core::quota::Usage;
use utoipa::ToSchema;

/// Amounts of each resource a quota covers. As limits, `-1` is unlimited.
#[derive(Serialize, ToSchema)]
pub struct UsageBody {
    pub instances: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
    /// Volumes not yet purged, OS volumes and the trash included.
    pub volumes: i64,
    pub volume_gb: i64,
    /// Containers of the containers API (`/compute`), which are instances
    /// too.
    pub containers: i64,
    pub ssh_keys: i64,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        UsageBody {
            instances: u.instances,
            vcpus: u.vcpus,
            memory_mb: u.memory_mb,
            volumes: u.volumes,
            volume_gb: u.volume_gb,
            containers: u.containers,
            ssh_keys: u.ssh_keys,
        }
    }
}

/// The limits a project set for itself; `null` takes the default.
#[derive(Serialize, ToSchema)]
pub struct OverridesBody {
    pub instances: Option<i64>,
    pub vcpus: Option<i64>,
    pub memory_mb: Option<i64>,
    pub volumes: Option<i64>,
    pub volume_gb: Option<i64>,
    pub containers: Option<i64>,
    pub ssh_keys: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct QuotaBody {
    pub workspace: String,
    /// The limits that apply (`-1`: unlimited).
    pub limits: UsageBody,
    /// The project's own limits; the rest come from the server's defaults.
    pub overrides: OverridesBody,
    /// What the project uses now.
    pub usage: UsageBody,
}

impl From<Quota> for QuotaBody {
    fn from(q: Quota) -> Self {
        QuotaBody {
            workspace: q.project,
            limits: q.limits.into(),
            overrides: OverridesBody {
                instances: q.overrides.instances,
                vcpus: q.overrides.vcpus,
                memory_mb: q.overrides.memory_mb,
                volumes: q.overrides.volumes,
                volume_gb: q.overrides.volume_gb,
                containers: q.overrides.containers,
                ssh_keys: q.overrides.ssh_keys,
            },
            usage: q.usage.into(),
        }
    }
}

/// A field that may be absent (keep), `null` (the default) or a number.
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

/// New limits: a number sets one (`-1`: unlimited), `null` goes back to
/// the server's default, an absent field keeps what there is.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetQuotaRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, example = 20)]
    pub instances: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub vcpus: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub memory_mb: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub volumes: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub volume_gb: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub containers: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub ssh_keys: Option<Option<i64>>,
}

/// A project's quota and usage: your workspace's, or any for an install admin.
#[utoipa::path(get, path = "/v1/workspaces/{name}/quota", tag = "quotas",
    params(("name" = String, Path, description = "Workspace (project) name")),
    responses(
        (status = 200, description = "The quota", body = QuotaBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_quota(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<QuotaBody>> {
    Ok(Json(app.quota(&caller, &name).await?.into()))
}

/// Set a project's limits (`quota_admin`: install admins).
#[utoipa::path(put, path = "/v1/workspaces/{name}/quota", tag = "quotas",
    params(("name" = String, Path, description = "Workspace (project) name")),
    request_body = SetQuotaRequest,
    responses(
        (status = 200, description = "The new quota", body = QuotaBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn set_quota(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(req): Body<SetQuotaRequest>,
) -> Result<Json<QuotaBody>> {
    let set = SetQuota {
        instances: req.instances,
        vcpus: req.vcpus,
        memory_mb: req.memory_mb,
        volumes: req.volumes,
        volume_gb: req.volume_gb,
        containers: req.containers,
        ssh_keys: req.ssh_keys,
    };
    Ok(Json(app.set_quota(&caller, &name, set).await?.into()))
}
