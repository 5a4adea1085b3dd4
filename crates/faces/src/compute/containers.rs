//! `/compute/containers`: containers, their SSH switch, ingress rules and
//! mount paths.

use super::{Body, Caller, ErrorBody, Path, Result, bad_request};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tessera_app::App;
use tessera_app::containers::{Container, CreateContainer, IngressRule};
use utoipa::ToSchema;

const GB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A container as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct ContainerBody {
    /// 8 lowercase hex characters.
    #[schema(example = "abc12345")]
    pub id: String,
    pub name: String,
    /// `pending`, `initializing`, `running`, `stopped` or `failed`.
    pub status: String,
    /// Tessera extension: why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// `<id>.<domain>`: where its ingress rules answer.
    pub hostname: String,
    pub memory_mb: u64,
    /// The memory it uses now, while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_mb: Option<u64>,
    pub storage_gb: u64,
    /// What its persistent storage holds, in GB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_used_gb: Option<f64>,
    pub instance_type: String,
    /// The image it runs.
    pub image: String,
    pub created_at: String,
    pub ssh_enabled: bool,
    /// Whether it has an ingress rule on port 443 (HTTPS through the
    /// gateway).
    pub https_enabled: bool,
    /// A command that reaches its SSH server as printed, while SSH is on
    /// and it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_command: Option<String>,
    /// Where it answers inside the cloud's network, once it has an address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<String>,
    pub mount_paths: Vec<String>,
}

impl From<Container> for ContainerBody {
    fn from(c: Container) -> Self {
        let failed = c.status == tessera_app::containers::ContainerStatus::Failed;
        ContainerBody {
            id: c.id().to_string(),
            status: c.status.as_str().to_string(),
            status_reason: failed.then(|| c.instance.detail.clone()).flatten(),
            name: c.instance.name.clone(),
            hostname: c.hostname,
            memory_mb: c.memory_mb,
            memory_used_mb: c.memory_used_bytes.map(|b| b.div_ceil(1024 * 1024)),
            storage_gb: c.storage_gb,
            storage_used_gb: c
                .storage_used_bytes
                .map(|b| (b as f64 / GB * 100.0).round() / 100.0),
            instance_type: c.instance_type,
            image: c.instance.spec.image.clone(),
            created_at: c.instance.created_at.clone(),
            ssh_enabled: c.ssh_enabled,
            https_enabled: c.https_enabled,
            ssh_command: c.ssh_command,
            external_ip: (!c.instance.private_ip.is_empty()).then(|| c.instance.private_ip.clone()),
            mount_paths: c.mount_paths,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ContainerList {
    pub containers: Vec<ContainerBody>,
}

/// An ingress rule as a request gives it.
#[derive(Deserialize, ToSchema)]
pub struct IngressRequest {
    /// The external port: 80, 443 or 8000-8999.
    #[schema(example = 8080)]
    pub port: i64,
    /// The port inside the container; `port` by default.
    #[schema(example = 3000)]
    pub target_port: Option<i64>,
}

/// A new container. Unknown fields are ignored.
#[derive(Deserialize, ToSchema)]
pub struct CreateContainerRequest {
    #[schema(example = "my-app")]
    pub name: Option<String>,
    /// `nano` (the default), `micro`, `mini` (arm64), `tiny`, `small`,
    /// `medium` (amd64).
    #[schema(example = "tiny")]
    pub instance_type: Option<String>,
    /// 512 by default.
    pub memory_mb: Option<i64>,
    /// 5 by default.
    pub storage_gb: Option<i64>,
    /// The integer ids of the keys to install; at least one.
    pub ssh_key_ids: Option<Vec<i64>>,
    /// Open SSH to it (false by default).
    pub ssh_enabled: Option<bool>,
    /// Another name for `ssh_enabled`, as the console sends it.
    pub enable_ssh: Option<bool>,
    /// Absolute paths to persist; `["/root"]` by default.
    pub mount_paths: Option<Vec<String>>,
    /// Ingress rules to make with it.
    pub ingress_rules: Option<Vec<IngressRequest>>,
    /// An image of the catalog; the catalog's default for containers when
    /// absent.
    pub image: Option<String>,
}

fn non_negative(field: &str, value: Option<i64>) -> Result<Option<u64>> {
    value
        .map(|v| u64::try_from(v).map_err(|_| bad_request(format!("{field} cannot be negative"))))
        .transpose()
}

/// List your containers.
#[utoipa::path(get, path = "/compute/containers", tag = "containers",
    responses(
        (status = 200, description = "Containers", body = ContainerList),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn list_containers(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<ContainerList>> {
    let containers = app.containers(&caller).await?;
    Ok(Json(ContainerList {
        containers: containers.into_iter().map(Into::into).collect(),
    }))
}

/// Create a container; it is `pending` until its host makes it.
#[utoipa::path(post, path = "/compute/containers", tag = "containers",
    request_body = CreateContainerRequest,
    responses(
        (status = 200, description = "The new container", body = ContainerBody),
        (status = 400, description = "Invalid request, or a limit reached", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 402, description = "A prepaid project's balance does not cover an hour of it with what the project runs", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn create_container(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateContainerRequest>,
) -> Result<Json<ContainerBody>> {
    let name = req.name.ok_or_else(|| bad_request("name is required"))?;
    let ssh_key_ids = req
        .ssh_key_ids
        .ok_or_else(|| bad_request("ssh_key_ids is required: at least one SSH key id"))?;
    let container = app
        .create_container(
            &caller,
            CreateContainer {
                name,
                instance_type: req.instance_type,
                memory_mb: non_negative("memory_mb", req.memory_mb)?,
                storage_gb: non_negative("storage_gb", req.storage_gb)?,
                ssh_key_ids,
                ssh_enabled: req.ssh_enabled.or(req.enable_ssh).unwrap_or(false),
                mount_paths: req.mount_paths,
                ingress: req
                    .ingress_rules
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| (r.port, r.target_port))
                    .collect(),
                image: req.image,
            },
        )
        .await?;
    Ok(Json(container.into()))
}

/// Get a container.
#[utoipa::path(get, path = "/compute/containers/{id}", tag = "containers",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "The container", body = ContainerBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_container(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ContainerBody>> {
    Ok(Json(app.container(&caller, &id).await?.into()))
}

/// The answer of a delete.
#[derive(Serialize, ToSchema)]
pub struct StatusOk {
    #[schema(example = "ok")]
    pub status: String,
}

fn ok() -> Json<StatusOk> {
    Json(StatusOk {
        status: "ok".into(),
    })
}

/// Delete a container and everything it had.
#[utoipa::path(delete, path = "/compute/containers/{id}", tag = "containers",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "Deleted", body = StatusOk),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Busy", body = ErrorBody),
    ))]
pub async fn delete_container(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<StatusOk>> {
    app.delete_container(&caller, &id).await?;
    Ok(ok())
}

/// Start a stopped container (one that runs is answered as it is).
#[utoipa::path(post, path = "/compute/containers/{id}/start", tag = "containers",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "The container", body = ContainerBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 402, description = "A prepaid project's balance does not cover an hour of it with what the project runs", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "It was never made (no capacity), or its host does not answer", body = ErrorBody),
    ))]
pub async fn start_container(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ContainerBody>> {
    Ok(Json(app.start_container(&caller, &id).await?.into()))
}

/// Stop a running container (one that is stopped is answered as it is).
#[utoipa::path(post, path = "/compute/containers/{id}/stop", tag = "containers",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "The container", body = ContainerBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn stop_container(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<ContainerBody>> {
    Ok(Json(app.stop_container(&caller, &id).await?.into()))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SshBody {
    pub ssh_enabled: Option<bool>,
}

/// Whether SSH to the container is on.
#[utoipa::path(get, path = "/compute/containers/{id}/ssh", tag = "ssh",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "The switch", body = SshBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_ssh(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<SshBody>> {
    let container = app.container(&caller, &id).await?;
    Ok(Json(SshBody {
        ssh_enabled: Some(container.ssh_enabled),
    }))
}

/// Turn SSH to the container on or off; a running container's forward
/// opens or closes at once.
#[utoipa::path(put, path = "/compute/containers/{id}/ssh", tag = "ssh",
    params(("id" = String, Path, description = "Container id")),
    request_body = SshBody,
    responses(
        (status = 200, description = "The switch", body = SshBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn set_ssh(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(req): Body<SshBody>,
) -> Result<Json<SshBody>> {
    let wanted = req
        .ssh_enabled
        .ok_or_else(|| bad_request("ssh_enabled is required"))?;
    let enabled = app.set_container_ssh(&caller, &id, wanted).await?;
    Ok(Json(SshBody {
        ssh_enabled: Some(enabled),
    }))
}

/// An ingress rule as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct IngressBody {
    pub id: i64,
    pub port: u16,
    pub target_port: u16,
    /// Unix seconds.
    pub created_at: i64,
}

impl From<IngressRule> for IngressBody {
    fn from(r: IngressRule) -> Self {
        IngressBody {
            id: r.number,
            port: r.port,
            target_port: r.target_port,
            created_at: r.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct IngressList {
    pub rules: Vec<IngressBody>,
}

/// A container's ingress rules.
#[utoipa::path(get, path = "/compute/containers/{id}/ingress", tag = "ingress",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "Rules", body = IngressList),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn list_ingress(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<IngressList>> {
    let rules = app.ingress_rules(&caller, &id).await?;
    Ok(Json(IngressList {
        rules: rules.into_iter().map(Into::into).collect(),
    }))
}

/// Add an ingress rule (or change the target of the port's rule). Port 443
/// turns HTTPS on.
#[utoipa::path(post, path = "/compute/containers/{id}/ingress", tag = "ingress",
    params(("id" = String, Path, description = "Container id")),
    request_body = IngressRequest,
    responses(
        (status = 200, description = "The rule", body = IngressBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn add_ingress(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(req): Body<IngressRequest>,
) -> Result<Json<IngressBody>> {
    let rule = app
        .put_ingress_rule(&caller, &id, req.port, req.target_port)
        .await?;
    Ok(Json(rule.into()))
}

/// Remove the ingress rule of an external port (none there is no error).
#[utoipa::path(delete, path = "/compute/containers/{id}/ingress/{port}", tag = "ingress",
    params(
        ("id" = String, Path, description = "Container id"),
        ("port" = i64, Path, description = "External port"),
    ),
    responses(
        (status = 200, description = "Removed", body = StatusOk),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn delete_ingress(
    State(app): State<App>,
    Caller(caller): Caller,
    Path((id, port)): Path<(String, i64)>,
) -> Result<Json<StatusOk>> {
    app.delete_ingress_rule(&caller, &id, port).await?;
    Ok(ok())
}

#[derive(Serialize, ToSchema)]
pub struct MountsBody {
    pub mount_paths: Vec<String>,
    /// Set by a change: whether the container restarted to take it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarted: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct MountsRequest {
    /// Absolute paths to persist; at least one.
    pub mount_paths: Option<Vec<String>>,
}

/// A container's persistent mount paths.
#[utoipa::path(get, path = "/compute/containers/{id}/mounts", tag = "mounts",
    params(("id" = String, Path, description = "Container id")),
    responses(
        (status = 200, description = "Mount paths", body = MountsBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_mounts(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<MountsBody>> {
    let container = app.container(&caller, &id).await?;
    Ok(Json(MountsBody {
        mount_paths: container.mount_paths,
        restarted: None,
    }))
}

/// Change the mount paths; a running container restarts to take them.
#[utoipa::path(put, path = "/compute/containers/{id}/mounts", tag = "mounts",
    params(("id" = String, Path, description = "Container id")),
    request_body = MountsRequest,
    responses(
        (status = 200, description = "Mount paths", body = MountsBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn set_mounts(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Body(req): Body<MountsRequest>,
) -> Result<Json<MountsBody>> {
    let paths = req
        .mount_paths
        .ok_or_else(|| bad_request("mount_paths is required"))?;
    let (mount_paths, restarted) = app.set_mount_paths(&caller, &id, &paths).await?;
    Ok(Json(MountsBody {
        mount_paths,
        restarted: Some(restarted),
    }))
}
