//! Serverless container deployments (Verda's container deployments): a
//! named set of replicas of one container image, scaled on the load of the
//! requests its front door queues.
//!
//! The design decisions:
//! - a replica is an instance of the deployment's project (placed,
//!   quota'd, billed and listed like any other), recorded with the
//!   generation of the deployment it runs ([`Workload`] in its spec, naming
//!   secrets, never holding them). A change of the containers makes a new
//!   generation, and replicas of older ones are replaced;
//! - the scaler ([`scaler`]) decides from what every control-plane
//!   replica's front door reported ([`front_door`]), with the pure rules of
//!   `tessera_core::serverless::decide`, and converges the replicas on its
//!   decision; the store refuses a replica past the decision, so scalers
//!   in several processes never make too many;
//! - everything a deployment shows (`status`, `replicas`) is derived from
//!   its replicas' instances, never stored twice.

pub mod front_door;
pub mod jobs;
pub mod keys;
pub mod requests;
pub mod scaler;

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, has_nul};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tessera_core::Permission;
use tessera_core::serverless::{HealthCheck, Mount, Scaling, Workload};
use tessera_core::status::InstanceState;
use tessera_store::{DeploymentChange, DeploymentRecord, Recorded, ReplicaRecord};

/// The most deployments a project may have.
pub const MAX_DEPLOYMENTS: i64 = 50;
/// A job's longest deadline (a week, as Verda's).
pub const MAX_DEADLINE_S: u32 = 604_800;
/// The sizes a memory mount may have, in MB (Verda's).
pub const MEMORY_SIZES_MB: [u32; 10] = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768];
/// Names the front door keeps for itself (its async status and result
/// paths are siblings of the deployments').
/// How often a change made from what was read is made again when another
/// change came first (after a short random wait, so that racing changes
/// spread out).
const CHANGE_ATTEMPTS: u64 = 24;

/// The wait before a change's next attempt.
async fn change_backoff(attempt: u64) {
    let most = 2 + 3 * attempt.min(10);
    tokio::time::sleep(std::time::Duration::from_millis(rand::random_range(
        1..=most,
    )))
    .await;
}

const RESERVED_NAMES: [&str; 2] = ["status", "result"];

/// What a deployment is: replicas serving requests, or a job per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploymentKind {
    /// Verda's container deployments.
    Container,
    /// Verda's job deployments: each request runs on its own replica.
    Job,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Container => "container",
            DeploymentKind::Job => "job",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            DeploymentKind::Container => "deployment",
            DeploymentKind::Job => "job deployment",
        }
    }
}

/// What a deployment runs, as kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    pub containers: Vec<ContainerSpec>,
    pub registry: RegistrySettings,
    pub compute: ComputeSpec,
    pub is_spot: bool,
    /// Who made it (a job deployment shows it).
    #[serde(default)]
    pub created_by: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegistrySettings {
    pub is_private: bool,
    /// The project's registry credentials to pull with.
    pub credentials: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComputeSpec {
    pub name: String,
    pub size: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Given by the cloud: `<image's last path part>-<n>`.
    pub name: String,
    pub image: String,
    /// When `image` was last set.
    pub image_updated_at: String,
    pub exposed_port: u16,
    pub healthcheck: Healthcheck,
    pub entrypoint_overrides: EntrypointOverrides,
    pub env: Vec<EnvVar>,
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Healthcheck {
    pub enabled: bool,
    pub port: u16,
    pub path: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntrypointOverrides {
    pub enabled: bool,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    /// The value, or the name of the secret holding it.
    pub value: String,
    pub secret: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VolumeMount {
    Scratch {
        mount_path: String,
    },
    Secret {
        mount_path: String,
        secret_name: String,
    },
    Memory {
        mount_path: String,
        size_in_mb: u32,
    },
}

/// A container as a request gives it; the face has read its numbers.
#[derive(Clone, Debug, Default)]
pub struct ContainerInput {
    pub image: String,
    pub exposed_port: u16,
    /// `(enabled, port, path)`; `None`: off.
    pub healthcheck: Option<(bool, Option<u16>, Option<String>)>,
    pub entrypoint_overrides: Option<EntrypointOverrides>,
    pub env: Vec<EnvVar>,
    pub volume_mounts: Vec<MountInput>,
}

/// A volume mount as a request gives it.
#[derive(Clone, Debug, Default)]
pub struct MountInput {
    pub kind: String,
    pub mount_path: String,
    pub secret_name: Option<String>,
    pub size_in_mb: Option<u32>,
    pub volume_id: Option<String>,
}

/// A new deployment, as a request gives it.
#[derive(Clone, Debug)]
pub struct CreateDeployment {
    pub kind: DeploymentKind,
    pub name: String,
    pub containers: Vec<ContainerInput>,
    pub registry: RegistrySettings,
    pub compute: ComputeSpec,
    pub is_spot: bool,
    pub scaling: Scaling,
}

/// A change of a deployment; `None` keeps what it has.
#[derive(Clone, Debug, Default)]
pub struct PatchDeployment {
    pub containers: Option<Vec<ContainerInput>>,
    pub registry: Option<RegistrySettings>,
    pub compute: Option<ComputeSpec>,
    pub is_spot: Option<bool>,
    pub scaling: Option<Scaling>,
}

/// A deployment, as the API shows it.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub id: String,
    pub project_id: String,
    pub kind: DeploymentKind,
    pub name: String,
    pub spec: DeploymentSpec,
    pub scaling: Scaling,
    pub paused: bool,
    pub generation: i64,
    /// The scaler's target.
    pub target: u32,
    pub deleting: bool,
    pub created_at: String,
    /// How many times its queue was purged (every process drops its
    /// waiting requests when this grows).
    pub purges: i64,
}

/// Where a deployment is, as Verda says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploymentStatus {
    Initializing,
    Healthy,
    Degraded,
    Unhealthy,
    Paused,
    QuotaReached,
    ImagePulling,
    VersionUpdating,
    Terminating,
}

/// Where a replica is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaStatus {
    Initializing,
    Running,
    Terminating,
    Error,
}

#[derive(Clone, Debug)]
pub struct Replica {
    /// Its instance's id.
    pub id: String,
    pub status: ReplicaStatus,
    pub started_at: String,
    pub image: String,
    pub generation: i64,
    /// Its address in the cloud's network, once it has one.
    pub address: Option<std::net::Ipv4Addr>,
    /// Let go by the scaler: it answers the requests it has, and gets no
    /// more.
    pub draining: bool,
}

impl TryFrom<DeploymentRecord> for Deployment {
    type Error = Error;

    fn try_from(r: DeploymentRecord) -> Result<Deployment> {
        let corrupt = |what: &str, e: serde_json::Error| {
            Error::corrupt(format!("deployment {}'s {what}: {e}", r.id))
        };
        let kind = match r.kind.as_str() {
            "container" => DeploymentKind::Container,
            "job" => DeploymentKind::Job,
            other => return Err(Error::corrupt(format!("deployment kind {other:?}"))),
        };
        Ok(Deployment {
            kind,
            spec: serde_json::from_str(&r.spec).map_err(|e| corrupt("spec", e))?,
            scaling: serde_json::from_str(&r.scaling).map_err(|e| corrupt("scaling", e))?,
            id: r.id,
            project_id: r.project_id,
            name: r.name,
            paused: r.paused != 0,
            generation: r.generation,
            target: u32::try_from(r.replicas).unwrap_or(0),
            deleting: r.deleting != 0,
            created_at: r.created_at,
            purges: r.purges,
        })
    }
}

impl From<&ReplicaRecord> for ReplicaStatus {
    fn from(r: &ReplicaRecord) -> ReplicaStatus {
        match r.state.parse::<InstanceState>() {
            Ok(InstanceState::Running) if r.draining_ms > 0 => ReplicaStatus::Terminating,
            Ok(InstanceState::Running) => ReplicaStatus::Running,
            Ok(InstanceState::Provisioning) => ReplicaStatus::Initializing,
            Ok(InstanceState::Stopping) => ReplicaStatus::Terminating,
            _ => ReplicaStatus::Error,
        }
    }
}

/// Checks a deployment's name: as Verda's (a DNS label).
fn check_name(name: &str) -> Result<()> {
    crate::secrets::check_name("name", "the deployment", name)?;
    if RESERVED_NAMES.contains(&name) {
        return Err(Error::invalid(
            "name",
            format!("{name} is the front door's own path; choose another name"),
        ));
    }
    Ok(())
}

/// Checks a path inside a container.
fn check_path(field: &'static str, path: &str) -> Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let clean = format!("/{}", parts.join("/"));
    // The kernel's file systems are the runtime's to mount; /dev/shm is
    // where a memory mount goes.
    let system = ["/proc", "/sys", "/dev"]
        .iter()
        .any(|s| clean == *s || clean.starts_with(&format!("{s}/")))
        && clean != "/dev/shm";
    let ok = path.starts_with('/')
        && path.len() <= 255
        && !parts.is_empty()
        && !system
        && !parts.iter().any(|p| *p == ".." || *p == ".")
        && !path.chars().any(char::is_control);
    match ok {
        true => Ok(clean),
        false => Err(Error::invalid(
            field,
            format!(
                "{field} {:?} must be an absolute path other than /, without . or .. parts, outside /proc, /sys and /dev (but /dev/shm)",
                path
            ),
        )),
    }
}

/// Checks an OCI image reference, as registries and Docker read one.
fn check_image(image: &str) -> Result<()> {
    let ok = !image.is_empty()
        && image.len() <= 512
        && image
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./:@_-".contains(&b))
        && !image.starts_with(['/', ':', '@', '.', '-'])
        && image.split('/').all(|p| !p.is_empty());
    match ok {
        true => Ok(()),
        false => Err(Error::invalid(
            "containers.image",
            format!(
                "image {:?} is not an image reference (registry/name:tag or @sha256:digest)",
                image
            ),
        )),
    }
}

/// The last part of an image's name, for its container's name.
fn image_basename(image: &str) -> String {
    let path = image.split('@').next().unwrap_or(image);
    let last = path.rsplit('/').next().unwrap_or(path);
    let name = last.split(':').next().unwrap_or(last);
    let clean: String = name
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() {
            true => c.to_ascii_lowercase(),
            false => '-',
        })
        .collect();
    match clean.trim_matches('-') {
        "" => "container".to_string(),
        name => name.chars().take(50).collect(),
    }
}

/// Checks scaling options.
pub(crate) fn check_scaling(kind: DeploymentKind, s: &Scaling) -> Result<()> {
    if kind == DeploymentKind::Job
        && !s
            .deadline_s
            .is_some_and(|d| (1..=MAX_DEADLINE_S).contains(&d))
    {
        return Err(Error::invalid(
            "scaling.deadline_seconds",
            format!("deadline_seconds must be 1 to {MAX_DEADLINE_S}"),
        ));
    }
    let max = tessera_core::serverless::MAX_REPLICAS;
    if s.max_replicas < 1 || s.max_replicas > max {
        return Err(Error::invalid(
            "scaling.max_replica_count",
            format!("max_replica_count must be 1 to {max}"),
        ));
    }
    if s.min_replicas > s.max_replicas {
        return Err(Error::invalid(
            "scaling.min_replica_count",
            "min_replica_count must be at most max_replica_count",
        ));
    }
    if !(1..=1000).contains(&s.concurrent_requests_per_replica) {
        return Err(Error::invalid(
            "scaling.concurrent_requests_per_replica",
            "concurrent_requests_per_replica must be 1 to 1000",
        ));
    }
    if !(1..=86_400).contains(&s.queue_message_ttl_s) {
        return Err(Error::invalid(
            "scaling.queue_message_ttl_seconds",
            "queue_message_ttl_seconds must be 1 to 86400",
        ));
    }
    for (field, delay) in [
        ("scaling.scale_up_policy.delay_seconds", s.scale_up_delay_s),
        (
            "scaling.scale_down_policy.delay_seconds",
            s.scale_down_delay_s,
        ),
    ] {
        if delay > 86_400 {
            return Err(Error::invalid(field, "delay_seconds must be 0 to 86400"));
        }
    }
    if !s.queue_load_threshold.is_finite() || !(0.01..=1000.0).contains(&s.queue_load_threshold) {
        return Err(Error::invalid(
            "scaling.scaling_triggers.queue_load.threshold",
            "queue_load.threshold must be 0.01 to 1000",
        ));
    }
    for (field, threshold) in [
        (
            "scaling.scaling_triggers.cpu_utilization.threshold",
            s.cpu_utilization,
        ),
        (
            "scaling.scaling_triggers.gpu_utilization.threshold",
            s.gpu_utilization,
        ),
    ] {
        if threshold.is_some_and(|t| !(1..=100).contains(&t)) {
            return Err(Error::invalid(field, "a utilization threshold is 1 to 100"));
        }
    }
    Ok(())
}

impl App {
    /// Checks containers against the project's secrets and makes their
    /// kept form, keeping what `old` had of containers whose image did not
    /// change.
    async fn deployment_containers(
        &self,
        project_id: &str,
        inputs: &[ContainerInput],
        old: &[ContainerSpec],
    ) -> Result<Vec<ContainerSpec>> {
        if inputs.len() != 1 {
            return Err(Error::invalid(
                "containers",
                "a deployment runs exactly one container here",
            ));
        }
        let mut specs = Vec::new();
        for (n, input) in inputs.iter().enumerate() {
            check_image(&input.image)?;
            if input.exposed_port == 0 {
                return Err(Error::invalid(
                    "containers.exposed_port",
                    "exposed_port must be 1 to 65535",
                ));
            }
            let healthcheck = match &input.healthcheck {
                Some((true, port, path)) => {
                    let path = path.clone().unwrap_or_else(|| "/health".into());
                    if !path.starts_with('/')
                        || path.len() > 1024
                        || path.chars().any(char::is_control)
                    {
                        return Err(Error::invalid(
                            "containers.healthcheck.path",
                            "healthcheck.path must be a path starting with /",
                        ));
                    }
                    Healthcheck {
                        enabled: true,
                        port: port.unwrap_or(input.exposed_port),
                        path,
                    }
                }
                _ => Healthcheck {
                    enabled: false,
                    port: input.exposed_port,
                    path: "/health".into(),
                },
            };
            if healthcheck.port == 0 {
                return Err(Error::invalid(
                    "containers.healthcheck.port",
                    "healthcheck.port must be 1 to 65535",
                ));
            }
            let overrides = input.entrypoint_overrides.clone().unwrap_or_default();
            for list in [&overrides.entrypoint, &overrides.cmd]
                .into_iter()
                .flatten()
            {
                if list.len() > 256 || list.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
                    return Err(Error::invalid(
                        "containers.entrypoint_overrides",
                        "entrypoint and cmd are at most 256 arguments of at most 4096 bytes",
                    ));
                }
            }
            let mut names = std::collections::HashSet::new();
            for var in &input.env {
                let ok = !var.name.is_empty()
                    && var.name.len() <= 255
                    && !var.name.starts_with(|c: char| c.is_ascii_digit())
                    && var
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok {
                    return Err(Error::invalid(
                        "containers.env",
                        format!(
                            "environment variable name {:?} must be letters, digits and _, not starting with a digit",
                            var.name
                        ),
                    ));
                }
                if !names.insert(var.name.clone()) {
                    return Err(Error::invalid(
                        "containers.env",
                        format!("environment variable {} is given twice", var.name),
                    ));
                }
                if var.value.len() > 64 * 1024 || var.value.contains('\0') {
                    return Err(Error::invalid(
                        "containers.env",
                        format!("the value of {} is too long or holds NUL", var.name),
                    ));
                }
                if var.secret {
                    match self.secret_value(project_id, &var.value).await {
                        Ok(_) => {}
                        // No such secret (a store that failed is not the
                        // request's fault, and stays what it is).
                        Err(Error::Invalid { .. }) => {
                            let files = !has_nul(&var.value)
                                && self.store.secret(project_id, &var.value).await?.is_some();
                            let why = match files {
                                true => {
                                    "a file secret: it is mounted as files (a volume_mount of \
                                     type secret), not given as a variable's value"
                                }
                                false => "which this project does not have",
                            };
                            return Err(Error::invalid(
                                "containers.env",
                                format!("{} names secret {:?}, {why}", var.name, var.value),
                            ));
                        }
                        Err(other) => return Err(other),
                    }
                }
            }
            let mut mounts = Vec::new();
            for mount in &input.volume_mounts {
                let path = check_path("containers.volume_mounts.mount_path", &mount.mount_path)?;
                if mounts.iter().any(|m: &VolumeMount| mount_path(m) == path) {
                    return Err(Error::invalid(
                        "containers.volume_mounts",
                        format!("{path} is mounted twice"),
                    ));
                }
                mounts.push(match mount.kind.as_str() {
                    "scratch" => VolumeMount::Scratch { mount_path: path },
                    "memory" => {
                        let size = mount.size_in_mb.unwrap_or(0);
                        if !MEMORY_SIZES_MB.contains(&size) {
                            return Err(Error::invalid(
                                "containers.volume_mounts.size_in_mb",
                                format!("size_in_mb must be one of {MEMORY_SIZES_MB:?}"),
                            ));
                        }
                        VolumeMount::Memory {
                            mount_path: path,
                            size_in_mb: size,
                        }
                    }
                    "secret" => {
                        let name = mount.secret_name.clone().unwrap_or_default();
                        self.secret_files(project_id, &name).await.map_err(|_| {
                            Error::invalid(
                                "containers.volume_mounts.secret_name",
                                format!("file secret {name:?} not found"),
                            )
                        })?;
                        VolumeMount::Secret {
                            mount_path: path,
                            secret_name: name,
                        }
                    }
                    "shared" => {
                        return Err(Error::invalid(
                            "containers.volume_mounts",
                            "shared file system volumes are not offered by this cloud",
                        ));
                    }
                    other => {
                        return Err(Error::invalid(
                            "containers.volume_mounts.type",
                            format!(
                                "type must be scratch, secret, memory or shared, not {:?}",
                                other
                            ),
                        ));
                    }
                });
            }
            let kept = old.get(n).filter(|o| o.image == input.image);
            specs.push(ContainerSpec {
                name: kept
                    .map(|o| o.name.clone())
                    .unwrap_or_else(|| format!("{}-{n}", image_basename(&input.image))),
                image: input.image.clone(),
                image_updated_at: kept
                    .map(|o| o.image_updated_at.clone())
                    .unwrap_or_else(tessera_store::now),
                exposed_port: input.exposed_port,
                healthcheck,
                entrypoint_overrides: overrides,
                env: input.env.clone(),
                volume_mounts: mounts,
            });
        }
        Ok(specs)
    }

    /// Checks registry settings against the project's credentials.
    async fn check_registry(&self, project_id: &str, registry: &RegistrySettings) -> Result<()> {
        if let Some(name) = registry
            .credentials
            .as_deref()
            .filter(|_| registry.is_private)
        {
            let found = match has_nul(name) {
                true => None,
                false => self.store.registry_credential(project_id, name).await?,
            };
            if found.is_none() {
                return Err(Error::invalid(
                    "container_registry_settings.credentials",
                    format!("registry credentials {name:?} not found"),
                ));
            }
        } else if registry.is_private {
            return Err(Error::invalid(
                "container_registry_settings.credentials",
                "a private registry needs credentials: their name",
            ));
        }
        Ok(())
    }

    /// What a caller must be allowed to make a deployment use secrets:
    /// their values end up where the deployment's code can print them.
    /// Also checks that its registry credentials can log in to its
    /// image's registry.
    async fn check_secrets_use(&self, caller: &Principal, spec: &DeploymentSpec) -> Result<()> {
        let uses_secrets = spec.containers.iter().any(|c| {
            c.env.iter().any(|e| e.secret)
                || c.volume_mounts
                    .iter()
                    .any(|m| matches!(m, VolumeMount::Secret { .. }))
        });
        let credentials = spec
            .registry
            .credentials
            .as_deref()
            .filter(|_| spec.registry.is_private);
        if uses_secrets || credentials.is_some() {
            caller.require(Permission::SecretRead)?;
        }
        if let Some(name) = credentials {
            for container in &spec.containers {
                let login = self
                    .pull_login(&caller.project_id, name, &container.image)
                    .await?;
                if login.is_none() {
                    return Err(Error::invalid(
                        "container_registry_settings.credentials",
                        format!(
                            "registry credentials {name} hold no login for {}, the registry of {}",
                            crate::secrets::registry::registry_of(&container.image),
                            container.image
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks a compute resource against the catalog.
    /// What a deployment's replicas always running (its minimum) cost an
    /// hour, in micros.
    fn always_running_micros(&self, compute: &ComputeSpec, scaling: &Scaling) -> i64 {
        self.catalog
            .serverless_compute(&compute.name)
            .map_or(0, |kind| {
                tessera_core::catalog::to_micros(
                    kind.price_per_hour * f64::from(compute.size) * f64::from(scaling.min_replicas),
                )
            })
    }

    /// Refuses (402, as an instance the balance cannot pay for is) a
    /// deployment, or a change to one, whose replicas always running would
    /// not be paid for: `before` is what it had (none for a new one). That
    /// is the answer its client gets; the scaler, which checks each replica
    /// as it records it, could only leave it at `quota_reached`.
    async fn check_replica_funds(
        &self,
        caller: &Principal,
        name: &str,
        before: Option<(&ComputeSpec, &Scaling)>,
        after: (&ComputeSpec, &Scaling),
    ) -> Result<()> {
        let had = before.map_or(0, |(c, s)| self.always_running_micros(c, s));
        let adds = self.always_running_micros(after.0, after.1) - had;
        if adds <= 0 {
            return Ok(());
        }
        self.check_funds(
            caller,
            adds,
            &format!(
                "deployment {name} (a minimum of {} running)",
                after.1.min_replicas
            ),
        )
        .await
    }

    fn check_compute(&self, compute: &ComputeSpec) -> Result<()> {
        match self.catalog.serverless_compute(&compute.name) {
            Some(kind) if kind.sizes.contains(&compute.size) => Ok(()),
            Some(kind) => Err(Error::invalid(
                "compute.size",
                format!("{} comes in sizes {:?}", kind.name, kind.sizes),
            )),
            None if self.gpu_compute().any(|name| name == compute.name) => Err(Error::NoCapacity(
                format!("{} has no capacity in this cloud now", compute.name),
            )),
            None => Err(Error::invalid(
                "compute.name",
                format!(
                    "unknown compute {:?}; known: {}",
                    compute.name,
                    tessera_core::catalog::Catalog::names(
                        self.catalog
                            .serverless_compute
                            .iter()
                            .map(|c| c.name.as_str())
                            .chain(self.gpu_compute())
                    )
                ),
            )),
        }
    }

    /// The name of a deployment of the project (of any kind, not being
    /// deleted) whose spec `uses`.
    pub(crate) async fn deployment_using(
        &self,
        project_id: &str,
        uses: impl Fn(&DeploymentSpec) -> bool,
    ) -> Result<Option<String>> {
        for kind in ["container", "job"] {
            for record in self.store.deployments(project_id, kind).await? {
                let deployment = Deployment::try_from(record)?;
                if !deployment.deleting && uses(&deployment.spec) {
                    return Ok(Some(deployment.name));
                }
            }
        }
        Ok(None)
    }

    /// The GPU models the catalog lists for serverless containers.
    pub(crate) fn gpu_compute(&self) -> impl Iterator<Item = &str> {
        let mut seen = std::collections::HashSet::new();
        self.catalog
            .container_types
            .iter()
            .map(|t| t.model.as_str())
            .filter(move |m| seen.insert(*m))
    }

    pub async fn create_deployment(
        &self,
        caller: &Principal,
        req: CreateDeployment,
    ) -> Result<Deployment> {
        caller.require(Permission::InstanceCreate)?;
        check_name(&req.name)?;
        check_scaling(req.kind, &req.scaling)?;
        self.check_compute(&req.compute)?;
        self.check_registry(&caller.project_id, &req.registry)
            .await?;
        let containers = self
            .deployment_containers(&caller.project_id, &req.containers, &[])
            .await?;
        let spec = DeploymentSpec {
            containers,
            registry: req.registry,
            compute: req.compute,
            is_spot: req.is_spot,
            created_by: caller.user_id.clone(),
        };
        self.check_secrets_use(caller, &spec).await?;
        self.check_replica_funds(caller, &req.name, None, (&spec.compute, &req.scaling))
            .await?;
        let now = tessera_store::now();
        let record = DeploymentRecord {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: caller.project_id.clone(),
            name: req.name.clone(),
            kind: req.kind.as_str().into(),
            spec: serde_json::to_string(&spec).unwrap_or_default(),
            scaling: serde_json::to_string(&req.scaling).unwrap_or_default(),
            paused: 0,
            generation: 1,
            replicas: 0,
            pending: "null".into(),
            deleting: 0,
            created_at: now.clone(),
            updated_at: now,
            purges: 0,
        };
        match self
            .store
            .insert_deployment(&record, MAX_DEPLOYMENTS)
            .await?
        {
            Recorded::Added => {}
            Recorded::NameTaken => {
                return Err(Error::Conflict(format!(
                    "a deployment or job named {} already exists",
                    req.name
                )));
            }
            Recorded::Full => {
                return Err(Error::Forbidden(format!(
                    "project {} already has {MAX_DEPLOYMENTS} deployments; delete some first",
                    caller.project_name
                )));
            }
        }
        tracing::info!(deployment = %req.name, project = %caller.project_name, "deployment created");
        self.poke_scaler();
        Deployment::try_from(record)
    }

    pub async fn deployments(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
    ) -> Result<Vec<Deployment>> {
        caller.require(Permission::InstanceRead)?;
        self.store
            .deployments(&caller.project_id, kind.as_str())
            .await?
            .into_iter()
            .map(Deployment::try_from)
            .collect()
    }

    pub async fn deployment(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
        name: &str,
    ) -> Result<Deployment> {
        caller.require(Permission::InstanceRead)?;
        self.project_deployment_of(&caller.project_id, kind, name)
            .await
    }

    /// One of the project's container deployments.
    pub(crate) async fn project_deployment(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<Deployment> {
        self.project_deployment_of(project_id, DeploymentKind::Container, name)
            .await
    }

    /// One of the project's deployments of `kind`.
    pub(crate) async fn project_deployment_of(
        &self,
        project_id: &str,
        kind: DeploymentKind,
        name: &str,
    ) -> Result<Deployment> {
        self.project_deployment_any(project_id, name)
            .await?
            .filter(|d| d.kind == kind)
            .ok_or_else(|| Error::NotFound(format!("{} {name} not found", kind.noun())))
    }

    /// One of the project's deployments, of either kind.
    pub async fn project_deployment_any(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<Option<Deployment>> {
        let found = match has_nul(name) {
            true => None,
            false => self.store.deployment(project_id, name).await?,
        };
        found.map(Deployment::try_from).transpose()
    }

    /// A deployment that is not being deleted, for a change.
    async fn changeable(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
        name: &str,
    ) -> Result<Deployment> {
        caller.require(Permission::InstanceCreate)?;
        let deployment = self
            .project_deployment_of(&caller.project_id, kind, name)
            .await?;
        if deployment.deleting {
            return Err(Error::Conflict(format!(
                "deployment {name} is being deleted"
            )));
        }
        Ok(deployment)
    }

    pub async fn patch_deployment(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
        name: &str,
        patch: PatchDeployment,
    ) -> Result<Deployment> {
        self.patch_deployment_at(caller, kind, name, patch, None)
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!("deployment {name} is being changed; try again"))
            })
    }

    /// Patches a deployment as read now, or only at `generation` (`None`
    /// when it moved on): a change made meanwhile is never lost, as the
    /// write is refused when the deployment moved on since it was read, and
    /// the patch is then made again on what it has now.
    async fn patch_deployment_at(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
        name: &str,
        patch: PatchDeployment,
        generation: Option<i64>,
    ) -> Result<Option<Deployment>> {
        for attempt in 0..CHANGE_ATTEMPTS {
            if attempt > 0 {
                change_backoff(attempt).await;
            }
            let deployment = self.changeable(caller, kind, name).await?;
            if generation.is_some_and(|g| g != deployment.generation) {
                return Ok(None);
            }
            if self
                .try_patch(caller, kind, &deployment, patch.clone())
                .await?
            {
                return self
                    .project_deployment_of(&caller.project_id, kind, name)
                    .await
                    .map(Some);
            }
            if generation.is_some() {
                return Ok(None);
            }
        }
        Err(Error::Conflict(format!(
            "deployment {name} is being changed by others; try again"
        )))
    }

    /// Patches the deployment as read: whether it was still so.
    async fn try_patch(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
        deployment: &Deployment,
        patch: PatchDeployment,
    ) -> Result<bool> {
        let mut spec = deployment.spec.clone();
        if let Some(registry) = patch.registry {
            self.check_registry(&caller.project_id, &registry).await?;
            spec.registry = registry;
        }
        if let Some(compute) = patch.compute {
            self.check_compute(&compute)?;
            spec.compute = compute;
        }
        if let Some(is_spot) = patch.is_spot {
            spec.is_spot = is_spot;
        }
        if let Some(containers) = &patch.containers {
            spec.containers = self
                .deployment_containers(&caller.project_id, containers, &deployment.spec.containers)
                .await?;
        }
        if let Some(scaling) = &patch.scaling {
            check_scaling(kind, scaling)?;
        }
        if spec != deployment.spec {
            self.check_secrets_use(caller, &spec).await?;
        }
        self.check_replica_funds(
            caller,
            &deployment.name,
            Some((&deployment.spec.compute, &deployment.scaling)),
            (
                &spec.compute,
                patch.scaling.as_ref().unwrap_or(&deployment.scaling),
            ),
        )
        .await?;
        self.change_if_current(
            deployment,
            DeploymentChange {
                new_generation: spec != deployment.spec,
                spec: Some(serde_json::to_string(&spec).unwrap_or_default()),
                scaling: patch
                    .scaling
                    .map(|s| serde_json::to_string(&s).unwrap_or_default()),
                paused: None,
                if_generation: Some(deployment.generation),
            },
        )
        .await
    }

    async fn change(&self, deployment: &Deployment, change: DeploymentChange) -> Result<()> {
        if !self
            .store
            .change_deployment(&deployment.id, &change)
            .await?
        {
            return Err(Error::Conflict(format!(
                "deployment {} is being deleted",
                deployment.name
            )));
        }
        self.poke_scaler();
        Ok(())
    }

    /// [`App::change`] for a change with `if_generation`: whether the
    /// deployment was still at it.
    async fn change_if_current(
        &self,
        deployment: &Deployment,
        change: DeploymentChange,
    ) -> Result<bool> {
        if self
            .store
            .change_deployment(&deployment.id, &change)
            .await?
        {
            self.poke_scaler();
            return Ok(true);
        }
        match self.store.deployment_by_id(&deployment.id).await? {
            Some(d) if d.deleting == 0 => Ok(false),
            _ => Err(Error::Conflict(format!(
                "deployment {} is being deleted",
                deployment.name
            ))),
        }
    }

    pub async fn set_deployment_scaling(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
        name: &str,
        scaling: Scaling,
    ) -> Result<Deployment> {
        check_scaling(kind, &scaling)?;
        let deployment = self.changeable(caller, kind, name).await?;
        let compute = &deployment.spec.compute;
        self.check_replica_funds(
            caller,
            name,
            Some((compute, &deployment.scaling)),
            (compute, &scaling),
        )
        .await?;
        self.change(
            &deployment,
            DeploymentChange {
                scaling: Some(serde_json::to_string(&scaling).unwrap_or_default()),
                ..DeploymentChange::default()
            },
        )
        .await?;
        self.project_deployment_of(&caller.project_id, kind, name)
            .await
    }

    /// Pauses or resumes a deployment: paused, it has no replicas and its
    /// front door refuses requests.
    pub async fn pause_deployment(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
        name: &str,
        paused: bool,
    ) -> Result<()> {
        let deployment = self.changeable(caller, kind, name).await?;
        self.change(
            &deployment,
            DeploymentChange {
                paused: Some(paused),
                ..DeploymentChange::default()
            },
        )
        .await?;
        if paused {
            self.store.count_purge(&deployment.id).await?;
            self.front_door.purge(&deployment.id, deployment.purges + 1);
        }
        Ok(())
    }

    /// Replaces every replica with a new one.
    pub async fn restart_deployment(&self, caller: &Principal, name: &str) -> Result<()> {
        let deployment = self
            .changeable(caller, DeploymentKind::Container, name)
            .await?;
        self.change(
            &deployment,
            DeploymentChange {
                new_generation: true,
                ..DeploymentChange::default()
            },
        )
        .await
    }

    /// Drops the requests waiting in the deployment's queue: here at once,
    /// in every other control-plane process when it next tends its queues
    /// (within 100 ms), as it sees the purge counted in the store.
    pub async fn purge_deployment_queue(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
        name: &str,
    ) -> Result<()> {
        let deployment = self.changeable(caller, kind, name).await?;
        self.store.count_purge(&deployment.id).await?;
        self.front_door.purge(&deployment.id, deployment.purges + 1);
        if kind == DeploymentKind::Job {
            self.purge_jobs(&deployment).await?;
        }
        Ok(())
    }

    /// Starts deleting a deployment: its replicas go, then it. Waits up to
    /// `wait` for it to be gone.
    pub async fn delete_deployment(
        &self,
        caller: &Principal,
        kind: DeploymentKind,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<()> {
        caller.require(Permission::InstanceDelete)?;
        let deployment = self
            .project_deployment_of(&caller.project_id, kind, name)
            .await?;
        self.store.mark_deployment_deleting(&deployment.id).await?;
        self.store.count_purge(&deployment.id).await?;
        self.front_door.purge(&deployment.id, deployment.purges + 1);
        self.poke_scaler();
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if self.store.deployment_by_id(&deployment.id).await?.is_none() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The deployment's replicas, oldest first.
    pub async fn deployment_replicas(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<Vec<Replica>> {
        let deployment = self
            .deployment(caller, DeploymentKind::Container, name)
            .await?;
        self.replicas_of(&deployment).await
    }

    pub(crate) async fn replicas_of(&self, deployment: &Deployment) -> Result<Vec<Replica>> {
        let image = deployment
            .spec
            .containers
            .first()
            .map(|c| c.image.clone())
            .unwrap_or_default();
        Ok(self
            .store
            .deployment_replicas(&deployment.id)
            .await?
            .iter()
            .map(|r| Replica {
                id: r.instance_id.clone(),
                status: ReplicaStatus::from(r),
                started_at: r.created_at.clone(),
                image: image.clone(),
                generation: r.generation,
                address: r.private_ip.parse().ok(),
                draining: r.draining_ms > 0,
            })
            .collect())
    }

    /// Where the deployment is, from its replicas.
    pub async fn deployment_status(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<DeploymentStatus> {
        let deployment = self
            .deployment(caller, DeploymentKind::Container, name)
            .await?;
        let replicas = self.store.deployment_replicas(&deployment.id).await?;
        let blocked = self.scaler_note(&deployment.id).await?;
        Ok(status_of(&deployment, &replicas, blocked.as_deref()))
    }

    /// The containers' environment variables.
    pub async fn deployment_env(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<Vec<(String, Vec<EnvVar>)>> {
        let deployment = self
            .deployment(caller, DeploymentKind::Container, name)
            .await?;
        Ok(deployment
            .spec
            .containers
            .into_iter()
            .map(|c| (c.name, c.env))
            .collect())
    }

    /// Adds (`replace` false: refusing names it has), replaces or removes
    /// environment variables of one container; its replicas are replaced.
    pub async fn change_deployment_env(
        &self,
        caller: &Principal,
        name: &str,
        container: &str,
        change: EnvChange,
    ) -> Result<Vec<(String, Vec<EnvVar>)>> {
        for attempt in 0..CHANGE_ATTEMPTS {
            if attempt > 0 {
                change_backoff(attempt).await;
            }
            let deployment = self
                .changeable(caller, DeploymentKind::Container, name)
                .await?;
            let patch = env_patch(&deployment, container, change.clone())?;
            let done = self
                .patch_deployment_at(
                    caller,
                    DeploymentKind::Container,
                    name,
                    patch,
                    Some(deployment.generation),
                )
                .await?;
            if done.is_some() {
                return self.deployment_env(caller, name).await;
            }
        }
        Err(Error::Conflict(format!(
            "deployment {name} is being changed by others; try again"
        )))
    }
}

/// The patch that makes `change` to one container's environment.
fn env_patch(
    deployment: &Deployment,
    container: &str,
    change: EnvChange,
) -> Result<PatchDeployment> {
    let name = &deployment.name;
    let Some(index) = deployment
        .spec
        .containers
        .iter()
        .position(|c| c.name == container)
    else {
        return Err(Error::invalid(
            "container_name",
            format!("deployment {name} has no container {container:?}"),
        ));
    };
    let mut env = deployment.spec.containers[index].env.clone();
    match change {
        EnvChange::Add(vars) => {
            for var in vars {
                if env.iter().any(|e| e.name == var.name) {
                    return Err(Error::Conflict(format!(
                        "{} already has {}; PATCH it instead",
                        container, var.name
                    )));
                }
                env.push(var);
            }
        }
        EnvChange::Set(vars) => {
            for var in vars {
                match env.iter_mut().find(|e| e.name == var.name) {
                    Some(existing) => *existing = var,
                    None => env.push(var),
                }
            }
        }
        EnvChange::Remove(names) => {
            for name in &names {
                if !env.iter().any(|e| &e.name == name) {
                    return Err(Error::invalid(
                        "env",
                        format!("{container} has no environment variable {name}"),
                    ));
                }
            }
            env.retain(|e| !names.contains(&e.name));
        }
    }
    let mut inputs: Vec<ContainerInput> = deployment
        .spec
        .containers
        .iter()
        .map(ContainerInput::from)
        .collect();
    inputs[index].env = env;
    Ok(PatchDeployment {
        containers: Some(inputs),
        ..PatchDeployment::default()
    })
}

impl App {
    /// The serverless compute resources, and whether a replica of each
    /// could be placed now.
    pub async fn serverless_compute(&self, caller: &Principal) -> Result<Vec<(String, u32, bool)>> {
        caller.require(Permission::InstanceRead)?;
        self.placement
            .refresh_changed(&self.store, std::time::Instant::now())
            .await?;
        let mut found = Vec::new();
        for kind in &self.catalog.serverless_compute {
            for size in &kind.sizes {
                let request = tessera_core::placement::Request::Cpus {
                    count: kind.cpus(*size),
                    memory_mb: kind.memory_mb.saturating_mul(u64::from(*size)),
                    region: None,
                    zone: None,
                    // As a replica is placed: a share of a pooled CPU, or
                    // whole units.
                    whole_units: kind.share(*size).is_none(),
                    arch: Some(kind.arch.clone()),
                    share: kind.share(*size),
                    // A replica's image is pulled where it lands.
                    image: None,
                };
                let fits = self
                    .placement
                    .with_engine(|engine| engine.place(&request).is_some());
                found.push((kind.name.clone(), *size, fits));
            }
        }
        // GPUs are not placed by this cloud yet: listed, never available.
        let gpus: Vec<String> = self.gpu_compute().map(str::to_string).collect();
        for model in gpus {
            found.push((model, 1, false));
        }
        Ok(found)
    }
}

/// A change of one container's environment.
#[derive(Clone, Debug)]
pub enum EnvChange {
    Add(Vec<EnvVar>),
    Set(Vec<EnvVar>),
    Remove(Vec<String>),
}

impl From<&ContainerSpec> for ContainerInput {
    fn from(c: &ContainerSpec) -> ContainerInput {
        ContainerInput {
            image: c.image.clone(),
            exposed_port: c.exposed_port,
            healthcheck: Some((
                c.healthcheck.enabled,
                Some(c.healthcheck.port),
                Some(c.healthcheck.path.clone()),
            )),
            entrypoint_overrides: Some(c.entrypoint_overrides.clone()),
            env: c.env.clone(),
            volume_mounts: c
                .volume_mounts
                .iter()
                .map(|m| match m {
                    VolumeMount::Scratch { mount_path } => MountInput {
                        kind: "scratch".into(),
                        mount_path: mount_path.clone(),
                        ..MountInput::default()
                    },
                    VolumeMount::Secret {
                        mount_path,
                        secret_name,
                    } => MountInput {
                        kind: "secret".into(),
                        mount_path: mount_path.clone(),
                        secret_name: Some(secret_name.clone()),
                        ..MountInput::default()
                    },
                    VolumeMount::Memory {
                        mount_path,
                        size_in_mb,
                    } => MountInput {
                        kind: "memory".into(),
                        mount_path: mount_path.clone(),
                        size_in_mb: Some(*size_in_mb),
                        ..MountInput::default()
                    },
                })
                .collect(),
        }
    }
}

fn mount_path(m: &VolumeMount) -> &str {
    match m {
        VolumeMount::Scratch { mount_path }
        | VolumeMount::Secret { mount_path, .. }
        | VolumeMount::Memory { mount_path, .. } => mount_path,
    }
}

/// What a deployment's status is, from its replicas and what the scaler
/// last could not do.
fn status_of(
    deployment: &Deployment,
    replicas: &[ReplicaRecord],
    blocked: Option<&str>,
) -> DeploymentStatus {
    if deployment.deleting {
        return DeploymentStatus::Terminating;
    }
    if deployment.paused {
        return DeploymentStatus::Paused;
    }
    let current: Vec<&ReplicaRecord> = replicas
        .iter()
        .filter(|r| r.generation == deployment.generation)
        .collect();
    let running = current
        .iter()
        .filter(|r| ReplicaStatus::from(**r) == ReplicaStatus::Running)
        .count() as u32;
    // The balance is a limit of the account as its quota is: Verda's API
    // has no status of its own for it.
    if matches!(blocked, Some("quota" | "funds")) && running < deployment.target {
        return DeploymentStatus::QuotaReached;
    }
    if replicas
        .iter()
        .any(|r| r.generation < deployment.generation)
    {
        return DeploymentStatus::VersionUpdating;
    }
    if running >= deployment.target {
        return DeploymentStatus::Healthy;
    }
    if blocked == Some("failed") {
        return match running {
            0 => DeploymentStatus::Unhealthy,
            _ => DeploymentStatus::Degraded,
        };
    }
    match running {
        0 => DeploymentStatus::Initializing,
        _ => DeploymentStatus::Degraded,
    }
}

/// The name a host keeps a deployment's image under: one per reference,
/// and one per project for a private registry's (another project naming
/// the same reference must pull it with its own credentials, not find it
/// cached).
pub fn host_image_name(image: &str, private_project: Option<&str>) -> String {
    let mut hash = sha2::Sha256::new();
    hash.update(image.as_bytes());
    if let Some(project) = private_project {
        hash.update(b"\0");
        hash.update(project.as_bytes());
    }
    format!("oci-{}", &hex::encode(hash.finalize())[..24])
}

/// A replica's workload: what its container runs, secrets named.
pub(crate) fn workload_of(deployment: &Deployment) -> Option<Workload> {
    let c = deployment.spec.containers.first()?;
    let overrides = &c.entrypoint_overrides;
    Some(Workload {
        deployment_id: deployment.id.clone(),
        container: c.name.clone(),
        image: c.image.clone(),
        entrypoint: overrides
            .entrypoint
            .clone()
            .filter(|e| overrides.enabled && !e.is_empty()),
        cmd: overrides
            .cmd
            .clone()
            .filter(|c| overrides.enabled && !c.is_empty()),
        env: c
            .env
            .iter()
            .map(|e| tessera_core::serverless::EnvVar {
                name: e.name.clone(),
                value: e.value.clone(),
                secret: e.secret,
            })
            .collect(),
        mounts: c
            .volume_mounts
            .iter()
            .map(|m| match m {
                VolumeMount::Scratch { mount_path } => Mount::Scratch {
                    path: mount_path.clone(),
                },
                VolumeMount::Secret {
                    mount_path,
                    secret_name,
                } => Mount::Secret {
                    path: mount_path.clone(),
                    secret: secret_name.clone(),
                },
                VolumeMount::Memory {
                    mount_path,
                    size_in_mb,
                } => Mount::Memory {
                    path: mount_path.clone(),
                    size_mb: *size_in_mb,
                },
            })
            .collect(),
        port: c.exposed_port,
        health: c.healthcheck.enabled.then(|| HealthCheck {
            port: c.healthcheck.port,
            path: c.healthcheck.path.clone(),
        }),
        registry_credentials: deployment
            .spec
            .registry
            .credentials
            .clone()
            .filter(|_| deployment.spec.registry.is_private),
        run_once: deployment.kind == DeploymentKind::Job,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_images_and_paths_are_checked() {
        assert!(check_name("llm-inference").is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "status",
            "result",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        for good in [
            "nginx",
            "registry-1.docker.io/chentex/random-logger:v1.0.1",
            "127.0.0.1:5000/images/echo@sha256:abcd",
        ] {
            assert!(check_image(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "/x", "a//b", "x;rm"] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
        assert_eq!(
            image_basename("registry-1.docker.io/chentex/random-logger:v1.0.1"),
            "random-logger"
        );
        assert_eq!(
            image_basename("127.0.0.1:5000/Echo_Server@sha256:ab"),
            "echo-server"
        );
        assert_eq!(check_path("p", "/data/").expect("a value"), "/data");
        assert_eq!(check_path("p", "//data//x").expect("a value"), "/data/x");
        assert_eq!(check_path("p", "/dev/shm").expect("a value"), "/dev/shm");
        for bad in [
            "data", "/", "//", "/a/../b", "/a/./b", "/proc", "/sys/fs", "/dev/sda",
        ] {
            assert!(check_path("p", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_images_are_kept_apart_per_project() {
        let public = host_image_name("r.io/app:1", None);
        assert_eq!(public, host_image_name("r.io/app:1", None));
        assert_ne!(public, host_image_name("r.io/app:2", None));
        assert_ne!(
            host_image_name("r.io/app:1", Some("p1")),
            host_image_name("r.io/app:1", Some("p2"))
        );
        assert!(public.starts_with("oci-") && public.len() == 28);
    }
}
