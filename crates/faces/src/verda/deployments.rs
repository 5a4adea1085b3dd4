//! `/container-deployments` and `/serverless-compute-resources`: serverless
//! containers as Verda's SDKs drive them. Requests may carry whole
//! dataclasses (nulls, read-only fields, `image` as the object answers
//! give it); numbers may come with a fraction (`8080.0`) and go out
//! without one.

use super::Json;
use super::{Body, Caller, ErrorBody, Path, Query, Result, bad_request};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use tessera_app::App;
use tessera_app::deployments::{
    ComputeSpec, ContainerInput, CreateDeployment, Deployment, DeploymentKind, DeploymentStatus,
    EntrypointOverrides, EnvChange, EnvVar, MountInput, PatchDeployment, RegistrySettings, Replica,
    ReplicaStatus,
};
use tessera_core::serverless::Scaling;
use utoipa::{IntoParams, ToSchema};

const CONTAINER: DeploymentKind = DeploymentKind::Container;

/// A whole number from JSON (which may write it `8080.0`), within bounds.
pub(super) fn whole(field: &str, value: f64, min: u64, max: u64) -> Result<u64> {
    if value.fract() != 0.0 || value < min as f64 || value > max as f64 {
        return Err(bad_request(format!(
            "{field} must be a whole number from {min} to {max}"
        )));
    }
    Ok(value as u64)
}

fn port(field: &str, value: f64) -> Result<u16> {
    Ok(whole(field, value, 1, 65535)? as u16)
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct HealthcheckBody {
    pub enabled: Option<bool>,
    #[schema(value_type = Option<u32>, example = 8081)]
    pub port: Option<f64>,
    #[schema(example = "/health")]
    pub path: Option<String>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct EntrypointOverridesBody {
    pub enabled: Option<bool>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct EnvVarBody {
    #[schema(example = "MY_ENV_VAR")]
    pub name: String,
    #[schema(example = "my-value")]
    pub value_or_reference_to_secret: String,
    /// `plain` or `secret` (the name of one of the project's secrets).
    #[serde(rename = "type")]
    #[schema(example = "plain")]
    pub kind: String,
}

/// One of `scratch {mount_path}`, `secret {mount_path, secret_name}`,
/// `memory {mount_path, size_in_mb}`, `shared {mount_path, volume_id}`.
#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct VolumeMountBody {
    #[serde(rename = "type")]
    #[schema(example = "scratch")]
    pub kind: String,
    #[schema(example = "/data")]
    pub mount_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u32>)]
    pub size_in_mb: Option<f64>,
    /// Jobs' clients send `volumeId` too.
    #[serde(skip_serializing_if = "Option::is_none", alias = "volumeId")]
    pub volume_id: Option<String>,
}

/// A container as requests give it.
#[derive(Deserialize, ToSchema)]
pub struct ContainerRequest {
    /// The image reference; answers' `{image, last_updated_at}` object is
    /// read too.
    #[schema(value_type = String, example = "registry-1.docker.io/chentex/random-logger:v1.0.1")]
    pub image: Value,
    #[schema(value_type = u32, example = 8080)]
    pub exposed_port: Option<f64>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub healthcheck: Option<HealthcheckBody>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub entrypoint_overrides: Option<EntrypointOverridesBody>,
    #[serde(default, deserialize_with = "super::objects::optional_list")]
    pub env: Option<Vec<EnvVarBody>>,
    #[serde(default, deserialize_with = "super::objects::optional_list")]
    pub volume_mounts: Option<Vec<VolumeMountBody>>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct CredentialsRef {
    #[schema(example = "dockerhub-credentials")]
    pub name: String,
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct RegistrySettingsBody {
    pub is_private: Option<bool>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub credentials: Option<CredentialsRef>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct ComputeBody {
    #[schema(example = "General Compute")]
    pub name: String,
    #[schema(value_type = Option<u32>, example = 1)]
    pub size: Option<f64>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct DelayBody {
    #[schema(value_type = Option<u32>, example = 300)]
    pub delay_seconds: Option<f64>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct QueueLoadBody {
    #[schema(example = 1)]
    pub threshold: Option<f64>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct UtilizationBody {
    pub enabled: Option<bool>,
    /// Percent, 1 to 100.
    #[schema(value_type = Option<u32>, example = 80, minimum = 1, maximum = 100)]
    pub threshold: Option<f64>,
}

#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct TriggersBody {
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub queue_load: Option<QueueLoadBody>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub cpu_utilization: Option<UtilizationBody>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub gpu_utilization: Option<UtilizationBody>,
}

/// Scaling options: every field in answers; any subset in a PATCH.
#[derive(Deserialize, Serialize, ToSchema, Clone)]
pub struct ScalingBody {
    #[schema(value_type = Option<u32>, example = 0)]
    pub min_replica_count: Option<f64>,
    #[schema(value_type = Option<u32>, example = 3)]
    pub max_replica_count: Option<f64>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub scale_down_policy: Option<DelayBody>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub scale_up_policy: Option<DelayBody>,
    #[schema(value_type = Option<u32>, example = 300)]
    pub queue_message_ttl_seconds: Option<f64>,
    #[schema(value_type = Option<u32>, example = 1)]
    pub concurrent_requests_per_replica: Option<f64>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub scaling_triggers: Option<TriggersBody>,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateDeploymentRequest {
    #[schema(example = "llm-inference")]
    pub name: String,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub container_registry_settings: Option<RegistrySettingsBody>,
    #[serde(deserialize_with = "super::objects::list")]
    pub containers: Vec<ContainerRequest>,
    #[serde(deserialize_with = "super::objects::required")]
    pub compute: ComputeBody,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub scaling: Option<ScalingBody>,
    pub is_spot: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
pub struct PatchDeploymentRequest {
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub container_registry_settings: Option<RegistrySettingsBody>,
    #[serde(default, deserialize_with = "super::objects::optional_list")]
    pub containers: Option<Vec<ContainerRequest>>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub compute: Option<ComputeBody>,
    #[serde(default, deserialize_with = "super::objects::optional")]
    pub scaling: Option<ScalingBody>,
    pub is_spot: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ContainerImageBody {
    #[schema(example = "registry-1.docker.io/chentex/random-logger:v1.0.1")]
    pub image: String,
    pub last_updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct ContainerBody {
    #[schema(example = "random-logger-0")]
    pub name: String,
    pub image: ContainerImageBody,
    #[schema(example = 8080)]
    pub exposed_port: u16,
    pub healthcheck: HealthcheckBody,
    pub entrypoint_overrides: EntrypointOverridesBody,
    pub env: Vec<EnvVarBody>,
    pub volume_mounts: Vec<VolumeMountBody>,
    /// Whether the image comes through a cached-image proxy: never here (a
    /// host keeps what it pulled for a deployment while its replicas use
    /// it; the request's flag is read and ignored).
    pub should_use_cached_image: bool,
}

#[derive(Serialize, ToSchema)]
pub struct DeploymentBody {
    #[schema(example = "llm-inference")]
    pub name: String,
    pub containers: Vec<ContainerBody>,
    /// Where its front door takes requests (`Authorization: Bearer` an
    /// inference key).
    pub endpoint_base_url: String,
    pub created_at: String,
    pub compute: ComputeBody,
    pub container_registry_settings: RegistrySettingsBody,
    pub is_spot: bool,
    pub scaling: ScalingBody,
}

#[derive(Serialize, ToSchema)]
pub struct StatusBody {
    /// `initializing`, `healthy`, `degraded`, `unhealthy`, `paused`,
    /// `quota_reached`, `image_pulling`, `version_updating` or `terminating`.
    #[schema(example = "healthy")]
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReplicaBody {
    #[schema(example = "inst-4f3c9a")]
    pub id: String,
    /// `initializing`, `running`, `terminating` or `error`.
    #[schema(example = "running")]
    pub status: String,
    pub started_at: String,
    pub image: String,
    pub image_name: String,
    pub image_tag: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReplicasBody {
    pub list: Vec<ReplicaBody>,
}

/// A container's environment: read by Verda's Python SDK (by
/// `container_name` and `env`) and its Go SDK (as a list of variables), so
/// each item is one variable of one container, with the container's whole
/// list beside it.
#[derive(Serialize, ToSchema)]
pub struct EnvItemBody {
    #[schema(example = "random-logger-0")]
    pub container_name: String,
    pub env: Vec<EnvVarBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_or_reference_to_secret: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct EnvRequest {
    #[schema(example = "random-logger-0")]
    pub container_name: String,
    #[serde(deserialize_with = "super::objects::list")]
    pub env: Vec<EnvVarBody>,
}

#[derive(Deserialize, ToSchema)]
pub struct EnvDeleteRequest {
    #[schema(example = "random-logger-0")]
    pub container_name: String,
    /// Names of the variables to delete.
    pub env: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ComputeResourceBody {
    #[schema(example = "General Compute")]
    pub name: String,
    #[schema(example = 1)]
    pub size: u32,
    pub is_available: bool,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// How long to wait for the deployment to be gone, in ms (0 to 300000,
    /// default 60000; 0: do not wait).
    pub timeout: Option<String>,
}

impl DeleteQuery {
    /// How long to wait for a deployment to be gone.
    pub(super) fn wait(&self) -> Result<Duration> {
        let ms = match self.timeout.as_deref().map(str::trim) {
            None | Some("") => 60_000,
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|t| t.fract() == 0.0 && (0.0..=300_000.0).contains(t))
                .ok_or_else(|| {
                    bad_request("timeout must be a whole number of ms from 0 to 300000")
                })? as u64,
        };
        Ok(Duration::from_millis(ms))
    }
}

fn env_vars(field: &str, vars: &[EnvVarBody]) -> Result<Vec<EnvVar>> {
    vars.iter()
        .map(|v| {
            let secret = match v.kind.as_str() {
                "plain" => false,
                "secret" => true,
                other => {
                    return Err(bad_request(format!(
                        "{field}: type must be plain or secret, not {:?}",
                        other
                    )));
                }
            };
            Ok(EnvVar {
                name: v.name.clone(),
                value: v.value_or_reference_to_secret.clone(),
                secret,
            })
        })
        .collect()
}

pub(super) fn container_input(c: &ContainerRequest) -> Result<ContainerInput> {
    let image = match &c.image {
        Value::String(image) => image.clone(),
        Value::Object(o) => o
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => return Err(bad_request("containers.image must be an image reference")),
    };
    let exposed_port = port(
        "containers.exposed_port",
        c.exposed_port
            .ok_or_else(|| bad_request("containers.exposed_port is required"))?,
    )?;
    let healthcheck = match &c.healthcheck {
        Some(h) => Some((
            h.enabled.unwrap_or(false),
            h.port
                .map(|p| port("containers.healthcheck.port", p))
                .transpose()?,
            h.path.clone(),
        )),
        None => None,
    };
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        mounts.push(MountInput {
            kind: m.kind.clone(),
            mount_path: m
                .mount_path
                .clone()
                .unwrap_or_else(|| match m.kind.as_str() {
                    "memory" => "/dev/shm".into(),
                    _ => String::new(),
                }),
            secret_name: m.secret_name.clone(),
            size_in_mb: m
                .size_in_mb
                .map(|s| whole("containers.volume_mounts.size_in_mb", s, 1, 1 << 20))
                .transpose()?
                .map(|s| s as u32),
            volume_id: m.volume_id.clone(),
        });
    }
    Ok(ContainerInput {
        image,
        exposed_port,
        healthcheck,
        entrypoint_overrides: c
            .entrypoint_overrides
            .as_ref()
            .map(|o| EntrypointOverrides {
                enabled: o.enabled.unwrap_or(true),
                entrypoint: o.entrypoint.clone(),
                cmd: o.cmd.clone(),
            }),
        env: env_vars("containers.env", c.env.as_deref().unwrap_or_default())?,
        volume_mounts: mounts,
    })
}

pub(super) fn registry(body: &RegistrySettingsBody) -> RegistrySettings {
    RegistrySettings {
        is_private: body.is_private.unwrap_or(false),
        credentials: body.credentials.as_ref().map(|c| c.name.clone()),
    }
}

pub(super) fn compute(body: &ComputeBody) -> Result<ComputeSpec> {
    Ok(ComputeSpec {
        name: body.name.clone(),
        size: whole("compute.size", body.size.unwrap_or(1.0), 1, 1024)? as u32,
    })
}

/// Scaling options over `base`: what the body gives replaces what `base`
/// has.
fn scaling(body: &ScalingBody, base: &Scaling) -> Result<Scaling> {
    let count = |field: &str, v: Option<f64>, old: u32, max: u64| -> Result<u32> {
        v.map_or(Ok(old), |v| Ok(whole(field, v, 0, max)? as u32))
    };
    let mut s = base.clone();
    s.min_replicas = count(
        "scaling.min_replica_count",
        body.min_replica_count,
        s.min_replicas,
        1000,
    )?;
    s.max_replicas = count(
        "scaling.max_replica_count",
        body.max_replica_count,
        s.max_replicas,
        1000,
    )?;
    if let Some(d) = body.scale_up_policy.as_ref().and_then(|p| p.delay_seconds) {
        s.scale_up_delay_s = whole("scaling.scale_up_policy.delay_seconds", d, 0, 86_400)? as u32;
    }
    if let Some(d) = body
        .scale_down_policy
        .as_ref()
        .and_then(|p| p.delay_seconds)
    {
        s.scale_down_delay_s =
            whole("scaling.scale_down_policy.delay_seconds", d, 0, 86_400)? as u32;
    }
    s.queue_message_ttl_s = count(
        "scaling.queue_message_ttl_seconds",
        body.queue_message_ttl_seconds,
        s.queue_message_ttl_s,
        86_400,
    )?;
    s.concurrent_requests_per_replica = count(
        "scaling.concurrent_requests_per_replica",
        body.concurrent_requests_per_replica,
        s.concurrent_requests_per_replica,
        1000,
    )?;
    if let Some(triggers) = &body.scaling_triggers {
        if let Some(t) = triggers.queue_load.as_ref().and_then(|q| q.threshold) {
            s.queue_load_threshold = t;
        }
        for (field, trigger, target) in [
            (
                "cpu_utilization",
                &triggers.cpu_utilization,
                &mut s.cpu_utilization,
            ),
            (
                "gpu_utilization",
                &triggers.gpu_utilization,
                &mut s.gpu_utilization,
            ),
        ] {
            if let Some(t) = trigger {
                // Checked even when off: a threshold given is one kept.
                if let Some(threshold) = t.threshold {
                    whole(
                        &format!("scaling.scaling_triggers.{field}.threshold"),
                        threshold,
                        1,
                        100,
                    )?;
                }
                *target = match t.enabled.unwrap_or(false) {
                    true => Some(whole(
                        &format!("scaling.scaling_triggers.{field}.threshold"),
                        t.threshold.unwrap_or(80.0),
                        1,
                        100,
                    )? as u32),
                    false => None,
                };
            }
        }
    }
    Ok(s)
}

fn scaling_body(s: &Scaling) -> ScalingBody {
    let utilization = |t: Option<u32>| UtilizationBody {
        enabled: Some(t.is_some()),
        threshold: Some(f64::from(t.unwrap_or(80))),
    };
    ScalingBody {
        min_replica_count: Some(f64::from(s.min_replicas)),
        max_replica_count: Some(f64::from(s.max_replicas)),
        scale_down_policy: Some(DelayBody {
            delay_seconds: Some(f64::from(s.scale_down_delay_s)),
        }),
        scale_up_policy: Some(DelayBody {
            delay_seconds: Some(f64::from(s.scale_up_delay_s)),
        }),
        queue_message_ttl_seconds: Some(f64::from(s.queue_message_ttl_s)),
        concurrent_requests_per_replica: Some(f64::from(s.concurrent_requests_per_replica)),
        scaling_triggers: Some(TriggersBody {
            queue_load: Some(QueueLoadBody {
                threshold: Some(s.queue_load_threshold),
            }),
            cpu_utilization: Some(utilization(s.cpu_utilization)),
            gpu_utilization: Some(utilization(s.gpu_utilization)),
        }),
    }
}

fn env_body(vars: &[EnvVar]) -> Vec<EnvVarBody> {
    vars.iter()
        .map(|v| EnvVarBody {
            name: v.name.clone(),
            value_or_reference_to_secret: v.value.clone(),
            kind: match v.secret {
                true => "secret".into(),
                false => "plain".into(),
            },
        })
        .collect()
}

pub(super) fn deployment_body(app: &App, d: Deployment) -> DeploymentBody {
    DeploymentBody {
        endpoint_base_url: app.endpoint_base_url(&d.name),
        containers: d
            .spec
            .containers
            .iter()
            .map(|c| ContainerBody {
                name: c.name.clone(),
                image: ContainerImageBody {
                    image: c.image.clone(),
                    last_updated_at: c.image_updated_at.clone(),
                },
                exposed_port: c.exposed_port,
                healthcheck: HealthcheckBody {
                    enabled: Some(c.healthcheck.enabled),
                    port: Some(f64::from(c.healthcheck.port)),
                    path: Some(c.healthcheck.path.clone()),
                },
                entrypoint_overrides: EntrypointOverridesBody {
                    enabled: Some(c.entrypoint_overrides.enabled),
                    entrypoint: c.entrypoint_overrides.entrypoint.clone(),
                    cmd: c.entrypoint_overrides.cmd.clone(),
                },
                env: env_body(&c.env),
                should_use_cached_image: false,
                volume_mounts: c
                    .volume_mounts
                    .iter()
                    .map(|m| match m {
                        tessera_app::deployments::VolumeMount::Scratch { mount_path } => {
                            VolumeMountBody {
                                kind: "scratch".into(),
                                mount_path: Some(mount_path.clone()),
                                secret_name: None,
                                size_in_mb: None,
                                volume_id: None,
                            }
                        }
                        tessera_app::deployments::VolumeMount::Secret {
                            mount_path,
                            secret_name,
                        } => VolumeMountBody {
                            kind: "secret".into(),
                            mount_path: Some(mount_path.clone()),
                            secret_name: Some(secret_name.clone()),
                            size_in_mb: None,
                            volume_id: None,
                        },
                        tessera_app::deployments::VolumeMount::Memory {
                            mount_path,
                            size_in_mb,
                        } => VolumeMountBody {
                            kind: "memory".into(),
                            mount_path: Some(mount_path.clone()),
                            secret_name: None,
                            size_in_mb: Some(f64::from(*size_in_mb)),
                            volume_id: None,
                        },
                    })
                    .collect(),
            })
            .collect(),
        created_at: d.created_at.clone(),
        compute: ComputeBody {
            name: d.spec.compute.name.clone(),
            size: Some(f64::from(d.spec.compute.size)),
        },
        container_registry_settings: RegistrySettingsBody {
            is_private: Some(d.spec.registry.is_private),
            credentials: d
                .spec
                .registry
                .credentials
                .clone()
                .map(|name| CredentialsRef { name }),
        },
        is_spot: d.spec.is_spot,
        scaling: scaling_body(&d.scaling),
        name: d.name,
    }
}

fn status_text(status: DeploymentStatus) -> &'static str {
    match status {
        DeploymentStatus::Initializing => "initializing",
        DeploymentStatus::Healthy => "healthy",
        DeploymentStatus::Degraded => "degraded",
        DeploymentStatus::Unhealthy => "unhealthy",
        DeploymentStatus::Paused => "paused",
        DeploymentStatus::QuotaReached => "quota_reached",
        DeploymentStatus::ImagePulling => "image_pulling",
        DeploymentStatus::VersionUpdating => "version_updating",
        DeploymentStatus::Terminating => "terminating",
    }
}

fn replica_body(r: Replica) -> ReplicaBody {
    let path = r.image.split('@').next().unwrap_or(&r.image);
    let last = path.rsplit('/').next().unwrap_or(path);
    let (name, tag) = match (r.image.split_once('@'), last.split_once(':')) {
        (Some((_, digest)), _) => (last.split(':').next().unwrap_or(last), digest),
        (None, Some((name, tag))) => (name, tag),
        (None, None) => (last, "latest"),
    };
    ReplicaBody {
        status: match r.status {
            ReplicaStatus::Initializing => "initializing",
            ReplicaStatus::Running => "running",
            ReplicaStatus::Terminating => "terminating",
            ReplicaStatus::Error => "error",
        }
        .into(),
        image_name: name.into(),
        image_tag: tag.into(),
        id: r.id,
        started_at: r.started_at,
        image: r.image,
    }
}

fn env_items(containers: Vec<(String, Vec<EnvVar>)>) -> Vec<EnvItemBody> {
    let mut items = Vec::new();
    for (container, vars) in containers {
        let all = env_body(&vars);
        for var in env_body(&vars) {
            items.push(EnvItemBody {
                container_name: container.clone(),
                env: all.clone(),
                name: Some(var.name),
                value_or_reference_to_secret: Some(var.value_or_reference_to_secret),
                kind: Some(var.kind),
            });
        }
    }
    items
}

/// List the project's container deployments.
#[utoipa::path(get, path = "/v1/container-deployments", tag = "Containers",
    responses(
        (status = 200, description = "Deployments", body = Vec<DeploymentBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
    ))]
pub async fn list_deployments(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<DeploymentBody>>> {
    let found = app.deployments(&caller, CONTAINER).await?;
    Ok(Json(
        found
            .into_iter()
            .map(|d| deployment_body(&app, d))
            .collect(),
    ))
}

/// Create a container deployment: its replicas run the image, scaled on
/// its front door's queue.
#[utoipa::path(post, path = "/v1/container-deployments", tag = "Containers",
    request_body = CreateDeploymentRequest,
    responses(
        (status = 201, description = "The deployment", body = DeploymentBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Not allowed, or too many deployments", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 503, description = "No capacity for the compute asked", body = ErrorBody),
    ))]
pub async fn create_deployment(
    State(app): State<App>,
    Caller(caller): Caller,
    Body(req): Body<CreateDeploymentRequest>,
) -> Result<(StatusCode, Json<DeploymentBody>)> {
    let containers = req
        .containers
        .iter()
        .map(container_input)
        .collect::<Result<Vec<_>>>()?;
    let scaling = match &req.scaling {
        Some(body) => scaling(body, &Scaling::default())?,
        None => Scaling::default(),
    };
    let created = app
        .create_deployment(
            &caller,
            CreateDeployment {
                kind: CONTAINER,
                name: req.name,
                containers,
                registry: req
                    .container_registry_settings
                    .as_ref()
                    .map(registry)
                    .unwrap_or_default(),
                compute: compute(&req.compute)?,
                is_spot: req.is_spot.unwrap_or(false),
                scaling,
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(deployment_body(&app, created))))
}

/// Get a container deployment.
#[utoipa::path(get, path = "/v1/container-deployments/{deployment_name}", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    responses(
        (status = 200, description = "The deployment", body = DeploymentBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_deployment(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<DeploymentBody>> {
    let found = app.deployment(&caller, CONTAINER, &name).await?;
    Ok(Json(deployment_body(&app, found)))
}

/// Change a deployment: any of its registry settings, containers, compute,
/// scaling and spot; a change of what it runs replaces its replicas.
#[utoipa::path(patch, path = "/v1/container-deployments/{deployment_name}", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    request_body = PatchDeploymentRequest,
    responses(
        (status = 200, description = "The deployment", body = DeploymentBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "Being deleted", body = ErrorBody),
    ))]
pub async fn patch_deployment(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(req): Body<PatchDeploymentRequest>,
) -> Result<Json<DeploymentBody>> {
    let current = app.deployment(&caller, CONTAINER, &name).await?;
    if req.containers.is_none()
        && req.container_registry_settings.is_none()
        && req.compute.is_none()
        && req.scaling.is_none()
        && req.is_spot.is_none()
    {
        return Err(bad_request(
            "nothing to change: give containers, container_registry_settings, compute, scaling or is_spot",
        ));
    }
    let patch = PatchDeployment {
        containers: req
            .containers
            .as_ref()
            .map(|cs| cs.iter().map(container_input).collect::<Result<Vec<_>>>())
            .transpose()?,
        registry: req.container_registry_settings.as_ref().map(registry),
        compute: req.compute.as_ref().map(compute).transpose()?,
        is_spot: req.is_spot,
        scaling: req
            .scaling
            .as_ref()
            .map(|s| scaling(s, &current.scaling))
            .transpose()?,
    };
    let changed = app
        .patch_deployment(&caller, CONTAINER, &name, patch)
        .await?;
    Ok(Json(deployment_body(&app, changed)))
}

/// Delete a deployment and its replicas.
#[utoipa::path(delete, path = "/v1/container-deployments/{deployment_name}", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted, or being deleted after the timeout"),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn delete_deployment(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode> {
    app.delete_deployment(&caller, CONTAINER, &name, query.wait()?)
        .await?;
    Ok(StatusCode::OK)
}

/// Where the deployment is.
#[utoipa::path(get, path = "/v1/container-deployments/{deployment_name}/status", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    responses(
        (status = 200, description = "Its status", body = StatusBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn deployment_status(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<StatusBody>> {
    let status = app.deployment_status(&caller, &name).await?;
    Ok(Json(StatusBody {
        status: status_text(status).into(),
    }))
}

/// Replace every replica.
#[utoipa::path(post, path = "/v1/container-deployments/{deployment_name}/restart", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    responses(
        (status = 201, description = "Restarting"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn restart_deployment(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    app.restart_deployment(&caller, &name).await?;
    Ok(StatusCode::CREATED)
}

/// The deployment's scaling options.
#[utoipa::path(get, path = "/v1/container-deployments/{deployment_name}/scaling", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    responses(
        (status = 200, description = "Its scaling options", body = ScalingBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_scaling(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<ScalingBody>> {
    let found = app.deployment(&caller, CONTAINER, &name).await?;
    Ok(Json(scaling_body(&found.scaling)))
}

/// Change any of the deployment's scaling options.
#[utoipa::path(patch, path = "/v1/container-deployments/{deployment_name}/scaling", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    request_body = ScalingBody,
    responses(
        (status = 200, description = "Its scaling options", body = ScalingBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn patch_scaling(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(req): Body<ScalingBody>,
) -> Result<Json<ScalingBody>> {
    let current = app.deployment(&caller, CONTAINER, &name).await?;
    if serde_json::to_value(&req).is_ok_and(|v| {
        v.as_object()
            .is_some_and(|fields| fields.values().all(Value::is_null))
    }) {
        return Err(bad_request(
            "nothing to change: give at least one scaling option",
        ));
    }
    let changed = app
        .set_deployment_scaling(&caller, CONTAINER, &name, scaling(&req, &current.scaling)?)
        .await?;
    Ok(Json(scaling_body(&changed.scaling)))
}

/// The deployment's replicas.
#[utoipa::path(get, path = "/v1/container-deployments/{deployment_name}/replicas", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    responses(
        (status = 200, description = "Its replicas", body = ReplicasBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn replicas(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<ReplicasBody>> {
    let found = app.deployment_replicas(&caller, &name).await?;
    Ok(Json(ReplicasBody {
        list: found.into_iter().map(replica_body).collect(),
    }))
}

/// Drop the requests waiting in the deployment's queue.
#[utoipa::path(post, path = "/v1/container-deployments/{deployment_name}/purge-queue", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    responses(
        (status = 201, description = "Purged"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn purge_queue(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    app.purge_deployment_queue(&caller, CONTAINER, &name)
        .await?;
    Ok(StatusCode::CREATED)
}

/// Pause the deployment: its replicas go and its front door refuses
/// requests.
#[utoipa::path(post, path = "/v1/container-deployments/{deployment_name}/pause", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    responses(
        (status = 201, description = "Paused"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn pause(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    app.pause_deployment(&caller, CONTAINER, &name, true)
        .await?;
    Ok(StatusCode::CREATED)
}

/// Resume a paused deployment.
#[utoipa::path(post, path = "/v1/container-deployments/{deployment_name}/resume", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    responses(
        (status = 201, description = "Resumed"),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn resume(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    app.pause_deployment(&caller, CONTAINER, &name, false)
        .await?;
    Ok(StatusCode::CREATED)
}

/// The containers' environment variables.
#[utoipa::path(get, path = "/v1/container-deployments/{deployment_name}/environment-variables", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    responses(
        (status = 200, description = "Each variable of each container", body = Vec<EnvItemBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn get_env(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Json<Vec<EnvItemBody>>> {
    Ok(Json(env_items(app.deployment_env(&caller, &name).await?)))
}

/// Add environment variables to a container (its replicas are replaced).
#[utoipa::path(post, path = "/v1/container-deployments/{deployment_name}/environment-variables", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    request_body = EnvRequest,
    responses(
        (status = 200, description = "Each variable of each container", body = Vec<EnvItemBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
        (status = 409, description = "A variable exists", body = ErrorBody),
    ))]
pub async fn add_env(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(req): Body<EnvRequest>,
) -> Result<Json<Vec<EnvItemBody>>> {
    let vars = env_vars("env", &req.env)?;
    let all = app
        .change_deployment_env(&caller, &name, &req.container_name, EnvChange::Add(vars))
        .await?;
    Ok(Json(env_items(all)))
}

/// Set environment variables of a container (its replicas are replaced);
/// answers that container's.
#[utoipa::path(patch, path = "/v1/container-deployments/{deployment_name}/environment-variables", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    request_body = EnvRequest,
    responses(
        (status = 200, description = "The container's variables", body = EnvItemBody),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn set_env(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(req): Body<EnvRequest>,
) -> Result<Json<EnvItemBody>> {
    let vars = env_vars("env", &req.env)?;
    let all = app
        .change_deployment_env(&caller, &name, &req.container_name, EnvChange::Set(vars))
        .await?;
    let env = all
        .into_iter()
        .find(|(c, _)| *c == req.container_name)
        .map(|(_, vars)| env_body(&vars))
        .unwrap_or_default();
    Ok(Json(EnvItemBody {
        container_name: req.container_name,
        env,
        name: None,
        value_or_reference_to_secret: None,
        kind: None,
    }))
}

/// Delete environment variables of a container (its replicas are
/// replaced).
#[utoipa::path(delete, path = "/v1/container-deployments/{deployment_name}/environment-variables", tag = "Containers",
    params(("deployment_name" = String, Path, description = "Name of the deployment")),
    request_body = EnvDeleteRequest,
    responses(
        (status = 200, description = "Each variable of each container", body = Vec<EnvItemBody>),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 404, description = "Not found", body = ErrorBody),
    ))]
pub async fn delete_env(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    Body(req): Body<EnvDeleteRequest>,
) -> Result<Json<Vec<EnvItemBody>>> {
    let all = app
        .change_deployment_env(
            &caller,
            &name,
            &req.container_name,
            EnvChange::Remove(req.env),
        )
        .await?;
    Ok(Json(env_items(all)))
}

/// The compute a replica can have, and whether one could be placed now.
#[utoipa::path(get, path = "/v1/serverless-compute-resources", tag = "Containers",
    responses(
        (status = 200, description = "Compute resources", body = Vec<ComputeResourceBody>),
        (status = 401, description = "Unauthorized", body = ErrorBody),
    ))]
pub async fn compute_resources(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Json<Vec<ComputeResourceBody>>> {
    let found = app.serverless_compute(&caller).await?;
    Ok(Json(
        found
            .into_iter()
            .map(|(name, size, is_available)| ComputeResourceBody {
                name,
                size,
                is_available,
            })
            .collect(),
    ))
}
