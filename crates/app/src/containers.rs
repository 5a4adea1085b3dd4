//! Containers: the containers API's (`/compute`) view of instances.
//!
//! A container is an instance of the caller's project (placed, quota'd and
//! billed like any other, listed at `/v1/instances`) whose type is one of
//! the catalog's compute types, with what that API adds: an 8-hex-digit
//! id, persistent storage mounted at paths, an SSH switch that opens or
//! closes its host's forward at once, and ingress rules the gateway routes
//! by hostname. Types of under one core run on shared CPUs with a quota;
//! types of an architecture run only on hosts of it.
//!
//! The design decision: a container's life is its instance's, so every
//! state the API shows is derived from the instance's state and why it is
//! in it ([`ContainerStatus::of`]), never stored twice.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::instances::{Instance, InstanceSpecInput};
use crate::{App, HostCallError, has_nul};
use rand::RngCore;
use std::time::Duration;
use tessera_core::Permission;
use tessera_core::catalog::{ComputeType, to_micros};
use tessera_core::status::{InstanceState, TerminationCause};
use tessera_store::{ContainerRecord, NewContainer, NewInstance};

/// One of a container's ingress rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRule {
    /// The rule's id, as the containers API shows it.
    pub number: i64,
    /// The external port.
    pub port: u16,
    /// The port inside the container.
    pub target_port: u16,
    /// Unix seconds.
    pub created_at: i64,
}

impl From<tessera_store::IngressRule> for IngressRule {
    fn from(r: tessera_store::IngressRule) -> Self {
        IngressRule {
            number: r.number,
            port: r.port,
            target_port: r.target_port,
            created_at: r.created_at,
        }
    }
}

/// How many terminals a container may have open at once (per replica).
pub const TERMINALS_PER_CONTAINER: usize = 8;

/// One open terminal's place; see [`App::terminal_slot`].
pub struct TerminalSlot {
    terminals: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    id: String,
}

impl Drop for TerminalSlot {
    fn drop(&mut self) {
        let mut open = self
            .terminals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.id);
            }
        }
    }
}

/// A container as the ingress gateway routes to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRoute {
    pub id: String,
    /// Its address while it runs; `None` otherwise.
    pub address: Option<std::net::IpAddr>,
    /// `(port, target_port)`, by external port.
    pub rules: Vec<(u16, u16)>,
}

/// The external ports ingress rules may use.
pub fn ingress_port_allowed(port: u16) -> bool {
    matches!(port, 80 | 443 | 8000..=8999)
}

/// The containers API's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComputeConfig {
    /// Containers answer at `<id>.<domain>`.
    pub domain: String,
    /// The memory a container may ask for, in MB.
    pub memory_mb: (u64, u64),
    /// The storage a container may ask for, in GB.
    pub storage_gb: (u64, u64),
}

impl Default for ComputeConfig {
    fn default() -> Self {
        ComputeConfig {
            domain: "compute.localhost".into(),
            memory_mb: (128, 8192),
            storage_gb: (1, 100),
        }
    }
}

/// The defaults of the containers API's document.
pub const DEFAULT_TYPE: &str = "nano";
pub const DEFAULT_MEMORY_MB: u64 = 512;
pub const DEFAULT_STORAGE_GB: u64 = 5;
const MAX_MOUNT_PATHS: usize = 16;
const MAX_NAME: usize = 63;
/// How long a start or stop is waited for before the answer.
const POWER_WAIT: Duration = Duration::from_secs(30);

/// How many times a start or stop looks again after another change got
/// there first (each time once that change is over).
const POWER_TRIES: usize = 4;

/// Where a container is in its life, as the containers API names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Asked for, not yet on a host (or starting again).
    Pending,
    /// Its host is making it.
    Initializing,
    Running,
    Stopped,
    /// It could not be made, or it kept dying.
    Failed,
}

impl ContainerStatus {
    /// A container's status from its instance.
    pub fn of(instance: &Instance) -> ContainerStatus {
        match instance.state {
            InstanceState::Provisioning if instance.host_id.is_none() => ContainerStatus::Pending,
            InstanceState::Provisioning => ContainerStatus::Initializing,
            InstanceState::Running | InstanceState::Stopping => ContainerStatus::Running,
            InstanceState::Stopped if instance.cause == Some(TerminationCause::Crashed) => {
                ContainerStatus::Failed
            }
            InstanceState::Stopped => ContainerStatus::Stopped,
            InstanceState::Terminated => match instance.cause {
                Some(TerminationCause::NoCapacity | TerminationCause::HostFailed) => {
                    ContainerStatus::Failed
                }
                _ => ContainerStatus::Stopped,
            },
            InstanceState::Unknown => ContainerStatus::Failed,
        }
    }

    /// The statuses a change of its instance to `state` (an event's)
    /// showed, in order, read with the instance as it is now: exact while
    /// the instance is still in that state; once it has moved on, what the
    /// state alone says. A provisioning (a creation, a start) was `pending`
    /// when told, and is `initializing` after it while its host makes it,
    /// so that a stream shows both however late it reads the change.
    pub fn at_change(state: &str, now: &Instance) -> Vec<ContainerStatus> {
        if state == now.state.as_str() {
            return match ContainerStatus::of(now) {
                ContainerStatus::Initializing => {
                    vec![ContainerStatus::Pending, ContainerStatus::Initializing]
                }
                status => vec![status],
            };
        }
        vec![match state.parse::<InstanceState>() {
            Ok(InstanceState::Provisioning) => ContainerStatus::Pending,
            Ok(InstanceState::Running | InstanceState::Stopping) => ContainerStatus::Running,
            Ok(InstanceState::Stopped | InstanceState::Terminated) => ContainerStatus::Stopped,
            Ok(InstanceState::Unknown) | Err(_) => ContainerStatus::of(now),
        }]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Pending => "pending",
            ContainerStatus::Initializing => "initializing",
            ContainerStatus::Running => "running",
            ContainerStatus::Stopped => "stopped",
            ContainerStatus::Failed => "failed",
        }
    }
}

/// A container as the app speaks of it.
#[derive(Clone, Debug)]
pub struct Container {
    pub instance: Instance,
    pub status: ContainerStatus,
    /// Its compute type.
    pub instance_type: String,
    pub memory_mb: u64,
    pub storage_gb: u64,
    pub ssh_enabled: bool,
    pub mount_paths: Vec<String>,
    /// `<id>.<domain>`.
    pub hostname: String,
    /// A command that reaches its SSH server as printed, while SSH is on
    /// and it runs.
    pub ssh_command: Option<String>,
    /// Whether it has a rule on port 443 (the gateway terminates TLS).
    pub https_enabled: bool,
    /// What it uses, measured on its host, while it runs.
    pub memory_used_bytes: Option<u64>,
    pub storage_used_bytes: Option<u64>,
    pub generation: i64,
}

impl Container {
    pub fn id(&self) -> &str {
        self.instance.id.as_str()
    }
}

/// A container to make.
#[derive(Clone, Debug, Default)]
pub struct CreateContainer {
    pub name: String,
    pub instance_type: Option<String>,
    pub memory_mb: Option<u64>,
    pub storage_gb: Option<u64>,
    /// The keys' numbers (their integer ids); at least one.
    pub ssh_key_ids: Vec<i64>,
    pub ssh_enabled: bool,
    pub mount_paths: Option<Vec<String>>,
    /// `(port, target_port)`; the target is the port when absent.
    pub ingress: Vec<(i64, Option<i64>)>,
    /// An image type of the catalog; the catalog's `compute_image` when
    /// absent.
    pub image: Option<String>,
}

/// Checks a set of mount paths: absolute, normal, not `/` nor a kernel
/// file system, distinct, none inside another. Answers them as given.
pub fn check_mount_paths(field: &'static str, paths: &[String]) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Err(Error::invalid(field, "at least one mount path is needed"));
    }
    if paths.len() > MAX_MOUNT_PATHS {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_MOUNT_PATHS} mount paths"),
        ));
    }
    for path in paths {
        let normal = path.starts_with('/')
            && path.len() <= 255
            && !path.ends_with('/')
            && !path.chars().any(char::is_control)
            && path[1..]
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if path == "/" {
            return Err(Error::invalid(
                field,
                "/ cannot be a mount path: persist directories under it",
            ));
        }
        if !normal {
            return Err(Error::invalid(
                field,
                format!(
                    "mount path {path:?} must be absolute and normal (no trailing /, no empty, . or .. parts), at most 255 characters"
                ),
            ));
        }
        let top = path[1..].split('/').next().unwrap_or("");
        if matches!(top, "proc" | "sys" | "dev" | "run") {
            return Err(Error::invalid(
                field,
                format!(
                    "mount path {path:?} is under /{top}, which the container's kernel file systems use"
                ),
            ));
        }
    }
    for (i, a) in paths.iter().enumerate() {
        for b in &paths[i + 1..] {
            if a == b {
                return Err(Error::invalid(
                    field,
                    format!("mount path {a} is given twice"),
                ));
            }
            let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
            if long.starts_with(short.as_str()) && long.as_bytes().get(short.len()) == Some(&b'/') {
                return Err(Error::invalid(
                    field,
                    format!("mount path {long} is inside {short}; they would collide"),
                ));
            }
        }
    }
    Ok(paths.to_vec())
}

fn check_name(name: &str) -> Result<String> {
    let name = name.trim();
    // The container's host name, as an instance's: a leading '-' or '.'
    // would be read as an option or a relative name.
    let ok = name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(name.to_string()),
        false => Err(Error::invalid(
            "name",
            format!(
                "name must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.', starting with a letter or digit"
            ),
        )),
    }
}

/// An ingress rule's ports, checked.
pub fn check_ingress(port: i64, target_port: Option<i64>) -> Result<(u16, u16)> {
    let port = u16::try_from(port)
        .ok()
        .filter(|p| ingress_port_allowed(*p))
        .ok_or_else(|| {
            Error::invalid(
                "port",
                format!("port {port} is not allowed: use 80, 443 or 8000-8999"),
            )
        })?;
    let target = match target_port {
        None => port,
        Some(t) => u16::try_from(t).ok().filter(|t| *t > 0).ok_or_else(|| {
            Error::invalid("target_port", format!("target_port {t} must be 1 to 65535"))
        })?,
    };
    Ok((port, target))
}

impl App {
    fn compute_type(&self, name: &str) -> Result<ComputeType> {
        self.catalog.compute_type(name).cloned().ok_or_else(|| {
            Error::invalid(
                "instance_type",
                format!(
                    "unknown instance_type {:?}; one of {}",
                    name,
                    tessera_core::catalog::Catalog::names(
                        self.catalog.compute_types.iter().map(|t| t.name.as_str())
                    )
                ),
            )
        })
    }

    /// The project's containers that are not deleted, oldest first.
    pub async fn containers(&self, caller: &Principal) -> Result<Vec<Container>> {
        caller.require(Permission::InstanceRead)?;
        let mut containers = Vec::new();
        for record in self.store.containers(&caller.project_id).await? {
            if let Some(container) = self.shown_container(caller, record).await? {
                containers.push(container);
            }
        }
        containers.sort_by(|a, b| {
            (&a.instance.created_at, a.id()).cmp(&(&b.instance.created_at, b.id()))
        });
        Ok(containers)
    }

    /// One of the project's containers; a deleted one, or any other
    /// project's, is a 404.
    pub async fn container(&self, caller: &Principal, id: &str) -> Result<Container> {
        caller.require(Permission::InstanceRead)?;
        let not_found = || Error::NotFound(format!("container {id} not found"));
        let record = match has_nul(id) {
            true => None,
            false => self.store.container(id).await?,
        };
        let record = record
            .filter(|r| r.project_id == caller.project_id)
            .ok_or_else(not_found)?;
        self.shown_container(caller, record)
            .await?
            .ok_or_else(not_found)
    }

    async fn shown_container(
        &self,
        caller: &Principal,
        record: ContainerRecord,
    ) -> Result<Option<Container>> {
        let Some(instance) = self.stored_instance(&record.id).await? else {
            return Ok(None);
        };
        // A deleted container is gone; one that failed stays, `failed`,
        // until it is deleted.
        let deleted = instance.state == InstanceState::Terminated
            && instance.operation_id.is_none()
            && !matches!(
                instance.cause,
                Some(TerminationCause::NoCapacity | TerminationCause::HostFailed)
            );
        if deleted {
            return Ok(None);
        }
        let instance = self
            .project_instance(&caller.project_id, &record.id)
            .await?;
        let rules = self.store.ingress_rules(&record.id).await?;
        let usage = self.store.instance_usage(&record.id).await?;
        let status = ContainerStatus::of(&instance);
        let running = status == ContainerStatus::Running;
        let ssh_command = match (&instance.ssh_endpoint, record.ssh_enabled && running) {
            (Some(endpoint), true) => ssh_command(endpoint),
            _ => None,
        };
        Ok(Some(Container {
            status,
            instance_type: instance.spec.instance_type.clone(),
            memory_mb: instance.memory_mb,
            storage_gb: u64::try_from(record.storage_gb).unwrap_or(0),
            ssh_enabled: record.ssh_enabled,
            hostname: format!("{}.{}", record.id, self.config.compute.domain),
            ssh_command,
            https_enabled: rules.iter().any(|r| r.port == 443),
            memory_used_bytes: usage
                .as_ref()
                .filter(|_| running)
                .and_then(|u| u.memory_used_bytes),
            storage_used_bytes: usage.as_ref().and_then(|u| u.storage_used_bytes),
            mount_paths: record.mount_paths,
            generation: record.generation,
            instance,
        }))
    }

    /// Makes a container: validated, recorded with its instance (within
    /// the project's quota, containers included), and its creation
    /// started. Answers it `pending`.
    pub async fn create_container(
        &self,
        caller: &Principal,
        req: CreateContainer,
    ) -> Result<Container> {
        caller.require(Permission::InstanceCreate)?;
        let name = check_name(&req.name)?;
        let kind = self.compute_type(req.instance_type.as_deref().unwrap_or(DEFAULT_TYPE))?;
        let compute = &self.config.compute;
        let memory_mb = req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
        if !(compute.memory_mb.0..=compute.memory_mb.1).contains(&memory_mb) {
            return Err(Error::invalid(
                "memory_mb",
                format!(
                    "memory_mb must be {} to {}",
                    compute.memory_mb.0, compute.memory_mb.1
                ),
            ));
        }
        let storage_gb = req.storage_gb.unwrap_or(DEFAULT_STORAGE_GB);
        if !(compute.storage_gb.0..=compute.storage_gb.1).contains(&storage_gb) {
            return Err(Error::invalid(
                "storage_gb",
                format!(
                    "storage_gb must be {} to {}",
                    compute.storage_gb.0, compute.storage_gb.1
                ),
            ));
        }
        let mount_paths = check_mount_paths(
            "mount_paths",
            &req.mount_paths.unwrap_or_else(|| vec!["/root".into()]),
        )?;
        if req.ssh_key_ids.is_empty() {
            return Err(Error::invalid(
                "ssh_key_ids",
                "ssh_key_ids needs at least one SSH key id",
            ));
        }
        let mut keys = Vec::new();
        for number in &req.ssh_key_ids {
            let key = self
                .store
                .ssh_key_numbered(&caller.project_id, *number)
                .await?
                .ok_or_else(|| {
                    Error::invalid("ssh_key_ids", format!("SSH key {number} not found"))
                })?;
            if !keys.contains(&key.id) {
                keys.push(key.id);
            }
        }
        let mut ingress = Vec::new();
        for (port, target) in &req.ingress {
            let rule = check_ingress(*port, *target)?;
            if ingress.iter().any(|(p, _)| *p == rule.0) {
                return Err(Error::invalid(
                    "ingress_rules",
                    format!("port {} is given twice", rule.0),
                ));
            }
            ingress.push(rule);
        }
        let image = match req.image {
            Some(image) => image,
            None => self.catalog.compute_image.clone().ok_or_else(|| {
                Error::invalid("image", "the catalog names no default image for containers")
            })?,
        };
        if self.catalog.image(&image).is_none() {
            return Err(Error::invalid(
                "image",
                format!(
                    "unknown image {:?}; known images: {}",
                    image,
                    tessera_core::catalog::Catalog::names(
                        self.catalog.images.iter().map(|i| i.image_type.as_str())
                    )
                ),
            ));
        }
        self.check_arch_exists(&kind).await?;
        // Metered like any instance; like the native API's, a creation does
        // not ask for a balance up front.
        let micros_per_hour = to_micros(kind.price_per_hour);
        let mut spec = InstanceSpecInput {
            instance_type: kind.name.clone(),
            image,
            vcpus: Some(kind.cpus()),
            memory_mb: Some(memory_mb),
            disk_gb: Some(storage_gb),
            ssh_key_ids: keys,
            description: Some("container".into()),
            ..InstanceSpecInput::default()
        };
        let network = self
            .attach_new_instance(&caller.project_id, &mut spec)
            .await?;
        let (privileged, prepaid) = self
            .new_instance_policy(&caller.project_id, &spec.image)
            .await?;
        spec.privileged = privileged;
        let id = self.new_container_id().await?;
        let instance = NewInstance {
            id: id.clone(),
            project_id: caller.project_id.clone(),
            name,
            labels: serde_json::json!({}),
            spec: serde_json::to_value(&spec).unwrap_or_default(),
            memory_mb: i64::try_from(memory_mb).unwrap_or(i64::MAX),
            vcpus: i64::from(kind.cpus()),
            micros_per_hour,
            volumes: Vec::new(),
            attach: Vec::new(),
            container: Some(NewContainer {
                ssh_enabled: req.ssh_enabled,
                mount_paths,
                storage_gb: i64::try_from(storage_gb).unwrap_or(i64::MAX),
                ingress,
            }),
            network: Some(network),
            replica: None,
            created_by: caller.acting_user(),
        };
        // A prepaid project's containers need its balance (checked with the
        // quota, in the write's transaction).
        self.record_instance(caller, &instance, &[], prepaid)
            .await?;
        self.container(caller, &id).await
    }

    /// Refuses at once a type whose architecture no host has. Asks the
    /// placement view (every host, in memory) first: reading the fleet at
    /// each creation made its cost grow with the fleet. The store only
    /// when the view says no (this replica may not have caught up with a
    /// host another one registered).
    async fn check_arch_exists(&self, kind: &ComputeType) -> Result<()> {
        let known = self.placement.with_engine(|engine| {
            engine
                .hosts()
                .any(|h| h.arch == kind.arch && h.runs_instances)
        });
        if known || self.store.instance_host_of_arch_exists(&kind.arch).await? {
            return Ok(());
        }
        Err(Error::invalid(
            "instance_type",
            format!(
                "instance type {} runs on {} hosts, and this cloud has none; pick a type of another architecture",
                kind.name, kind.arch
            ),
        ))
    }

    /// An unused 8-lowercase-hex-digit id.
    async fn new_container_id(&self) -> Result<String> {
        for _ in 0..16 {
            let mut bytes = [0u8; 4];
            rand::rng().fill_bytes(&mut bytes);
            let id = hex::encode(bytes);
            if self.store.instance(&id).await?.is_none() {
                return Ok(id);
            }
        }
        Err(Error::Unavailable(
            "no free container id found; try again".into(),
        ))
    }

    /// Deletes a container and everything it had.
    pub async fn delete_container(&self, caller: &Principal, id: &str) -> Result<()> {
        caller.require(Permission::InstanceDelete)?;
        let container = self.container(caller, id).await?;
        if container.instance.state == InstanceState::Terminated {
            // One that failed to be made: only its record goes.
            self.store.mark_instance_deleted(container.id()).await?;
            self.publish(
                "instance",
                container.id(),
                Some(&caller.project_id),
                InstanceState::Terminated.as_str(),
            );
            return Ok(());
        }
        // A change under way (a start, a stop, a restart for new mounts)
        // is waited for, then the container goes: a delete is not refused
        // for a change the caller may have just asked for.
        let mut conflict = None;
        for _ in 0..POWER_TRIES {
            match self.delete_instance(caller, container.id()).await {
                Ok(_) => return Ok(()),
                Err(Error::Conflict(why)) => {
                    conflict = Some(why);
                    self.settled_container(caller, id).await?;
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::Conflict(conflict.unwrap_or_else(|| {
            format!("container {id} keeps changing; try again")
        })))
    }

    /// Starts a stopped container (one that crashed, shown failed,
    /// included); one that runs or is on its way is answered as it is. One
    /// that was never made, or whose host does not answer, is a 409.
    pub async fn start_container(&self, caller: &Principal, id: &str) -> Result<Container> {
        caller.require(Permission::InstanceCreate)?;
        for _ in 0..POWER_TRIES {
            let container = self.settled_container(caller, id).await?;
            match container.instance.state {
                // Never made (no room, its host lost): there is nothing to
                // start, and a 200 answering it failed would say it was.
                InstanceState::Terminated => {
                    return Err(Error::Conflict(format!(
                        "container {id} could not be made ({}) and cannot be started; delete it \
                         and create it again",
                        container.instance.detail.as_deref().unwrap_or("it ended")
                    )));
                }
                InstanceState::Unknown => {
                    return Err(Error::Conflict(format!(
                        "container {id} is on a host that does not answer; it cannot be started \
                         until its host is back"
                    )));
                }
                _ => {}
            }
            if container.instance.state != InstanceState::Stopped
                || container.instance.operation_id.is_some()
            {
                return Ok(container);
            }
            match self.start_instance(caller, container.id()).await {
                Ok(_) => {
                    // Started again: `pending` until it runs, as the API's
                    // start answers (its host, which it keeps, is making it
                    // meanwhile); the status stream tells the rest.
                    let mut started = self.container(caller, id).await?;
                    if started.status == ContainerStatus::Initializing {
                        started.status = ContainerStatus::Pending;
                    }
                    return Ok(started);
                }
                // Another change got there first: wait for it, look again.
                Err(Error::Conflict(_)) => continue,
                Err(err) => return Err(err),
            }
        }
        self.container(caller, id).await
    }

    /// A container once the change under way (a start, a stop, a restart
    /// for new mounts) is over, or the wait is: a stop asked of a starting
    /// container stops it once it has started, as its user means.
    async fn settled_container(&self, caller: &Principal, id: &str) -> Result<Container> {
        let container = self.container(caller, id).await?;
        match &container.instance.operation_id {
            Some(op) => {
                self.wait_operation_quietly(op, POWER_WAIT).await?;
                self.container(caller, id).await
            }
            None => Ok(container),
        }
    }

    /// Stops a running container and answers once it has (or once the
    /// wait is over); one that is not running is answered as it is.
    pub async fn stop_container(&self, caller: &Principal, id: &str) -> Result<Container> {
        caller.require(Permission::InstanceCreate)?;
        for _ in 0..POWER_TRIES {
            let container = self.settled_container(caller, id).await?;
            if container.instance.state != InstanceState::Running
                || container.instance.operation_id.is_some()
            {
                return Ok(container);
            }
            match self.stop_instance(caller, container.id()).await {
                Ok(stopping) => {
                    if let Some(op) = &stopping.operation_id {
                        self.wait_operation_quietly(op, POWER_WAIT).await?;
                    }
                    return self.container(caller, id).await;
                }
                // Another change got there first: wait for it, look again.
                Err(Error::Conflict(_)) => continue,
                Err(err) => return Err(err),
            }
        }
        self.container(caller, id).await
    }

    /// Turns SSH to a container on or off; a running container's host
    /// opens or closes its forward at once. Answers the switch.
    pub async fn set_container_ssh(
        &self,
        caller: &Principal,
        id: &str,
        enabled: bool,
    ) -> Result<bool> {
        caller.require(Permission::InstanceCreate)?;
        let container = self.container(caller, id).await?;
        let changed = self
            .change_container(id, container.id(), |record| {
                let changed = record.ssh_enabled != enabled;
                record.ssh_enabled = enabled;
                changed
            })
            .await?;
        if !changed {
            return Ok(enabled);
        }
        self.converge_running(&container.instance).await?;
        self.publish(
            "instance",
            container.id(),
            Some(&caller.project_id),
            container.instance.state.as_str(),
        );
        Ok(enabled)
    }

    /// Changes a container's record with `change` (which says whether it
    /// changed anything), read again and changed again when another write
    /// got there first. Answers whether it changed anything.
    async fn change_container(
        &self,
        id: &str,
        container_id: &str,
        change: impl Fn(&mut ContainerRecord) -> bool,
    ) -> Result<bool> {
        for _ in 0..POWER_TRIES {
            let Some(mut record) = self.store.container(container_id).await? else {
                return Err(Error::NotFound(format!("container {id} not found")));
            };
            let read = record.generation;
            if !change(&mut record) {
                return Ok(false);
            }
            if self.store.update_container(&record, read).await? {
                return Ok(true);
            }
        }
        Err(Error::Conflict(format!(
            "container {id} kept changing meanwhile; try again"
        )))
    }

    /// Has a running container's host apply its settings again (the SSH
    /// forward), and records where its SSH server is forwarded now.
    pub(crate) async fn converge_running(&self, instance: &Instance) -> Result<()> {
        let _guard = self.instance_guard(&instance.id).await?;
        let Some(now) = self.stored_instance(&instance.id).await? else {
            return Ok(());
        };
        if now.state != InstanceState::Running || now.operation_id.is_some() {
            // Applied when it next starts.
            return Ok(());
        }
        let report = self
            .on_host(&now, |agent, spec| async move {
                agent.start_instance(&spec).await
            })
            .await;
        match report {
            Ok(report) => {
                let endpoint = self.ssh_endpoint(now.host_id.as_ref(), &report).await;
                self.store
                    .set_instance_ssh_endpoint(&now.id, endpoint.as_deref())
                    .await?;
                Ok(())
            }
            Err(HostCallError::NoAgent) => Ok(()),
            Err(err) => Err(Error::HostFailed(format!(
                "the host of container {} did not apply the change: {err}",
                now.id
            ))),
        }
    }

    /// A container's ingress rules.
    pub async fn ingress_rules(&self, caller: &Principal, id: &str) -> Result<Vec<IngressRule>> {
        let container = self.container(caller, id).await?;
        let rules = self.store.ingress_rules(container.id()).await?;
        Ok(rules.into_iter().map(IngressRule::from).collect())
    }

    /// Adds (or changes the target of) the rule for an external port.
    pub async fn put_ingress_rule(
        &self,
        caller: &Principal,
        id: &str,
        port: i64,
        target_port: Option<i64>,
    ) -> Result<IngressRule> {
        caller.require(Permission::InstanceCreate)?;
        let container = self.container(caller, id).await?;
        let (port, target) = check_ingress(port, target_port)?;
        let rule: IngressRule = self
            .store
            .put_ingress_rule(container.id(), port, target)
            .await?
            .ok_or_else(|| Error::NotFound(format!("container {id} not found")))?
            .into();
        self.publish(
            "instance",
            container.id(),
            Some(&caller.project_id),
            container.instance.state.as_str(),
        );
        Ok(rule)
    }

    /// Removes the rule for an external port; none there is no error.
    pub async fn delete_ingress_rule(&self, caller: &Principal, id: &str, port: i64) -> Result<()> {
        caller.require(Permission::InstanceCreate)?;
        let container = self.container(caller, id).await?;
        let Ok(port) = u16::try_from(port) else {
            return Ok(());
        };
        if self.store.delete_ingress_rule(container.id(), port).await? {
            self.publish(
                "instance",
                container.id(),
                Some(&caller.project_id),
                container.instance.state.as_str(),
            );
        }
        Ok(())
    }

    /// Sets a container's mount paths. A running one restarts with them;
    /// answers whether it did.
    pub async fn set_mount_paths(
        &self,
        caller: &Principal,
        id: &str,
        paths: &[String],
    ) -> Result<(Vec<String>, bool)> {
        caller.require(Permission::InstanceCreate)?;
        let paths = check_mount_paths("mount_paths", paths)?;
        let container = self.container(caller, id).await?;
        self.change_container(id, container.id(), |record| {
            record.mount_paths = paths.clone();
            true
        })
        .await?;
        // The paths are stored: they are what the container runs with from
        // its next start. One running (or starting) is restarted for them
        // now; one stopped meanwhile by another request stays stopped.
        let restarted = match container.status {
            ContainerStatus::Running | ContainerStatus::Initializing => {
                self.restart_container(caller, id).await?
            }
            _ => false,
        };
        Ok((paths, restarted))
    }

    /// Stops a running container and starts it again (with its settings as
    /// they are now), once the change under way on it is over, waiting for
    /// each: whether it did. A container another request stopped (or that
    /// ended) meanwhile is left as it is: its settings apply when it starts.
    async fn restart_container(&self, caller: &Principal, id: &str) -> Result<bool> {
        for _ in 0..POWER_TRIES {
            let container = self.settled_container(caller, id).await?;
            if container.instance.operation_id.is_some() {
                // Still under way after the wait: look again.
                continue;
            }
            if container.instance.state != InstanceState::Running {
                return Ok(false);
            }
            let stopping = match self.stop_instance(caller, container.id()).await {
                Ok(stopping) => stopping,
                // Another change got there first: wait for it, look again.
                Err(Error::Conflict(_)) => continue,
                Err(err) => return Err(err),
            };
            if let Some(op) = &stopping.operation_id {
                self.wait_operation_quietly(op, POWER_WAIT).await?;
            }
            return self.start_after_restart_stop(caller, id).await;
        }
        // Changed by others all the while: not restarted here; the new
        // settings apply at its next start.
        tracing::info!(container = %id, "not restarted for its new settings: it kept changing");
        Ok(false)
    }

    /// The second half of a restart: starts the container this request
    /// stopped, once its stop is over (a slow one outlasts a wait). One
    /// started by another request meanwhile starts with the settings as
    /// they are now all the same; one deleted meanwhile is not started.
    async fn start_after_restart_stop(&self, caller: &Principal, id: &str) -> Result<bool> {
        for _ in 0..POWER_TRIES {
            let container = self.settled_container(caller, id).await?;
            if container.instance.operation_id.is_some() {
                continue;
            }
            match container.instance.state {
                InstanceState::Stopped => {}
                InstanceState::Running | InstanceState::Provisioning => return Ok(true),
                _ => return Ok(false),
            }
            match self.start_again(caller, container.id()).await {
                Ok(_) => return Ok(true),
                Err(Error::Conflict(_)) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(Error::HostTimeout(format!(
            "container {id} was stopped to take its new settings and is still changing; start \
             it once it is stopped"
        )))
    }

    /// A place for one more terminal into a container, held until dropped:
    /// at most [`TERMINALS_PER_CONTAINER`] at once through this process,
    /// since each is a process on the container's host outside its limits.
    pub fn terminal_slot(&self, container: &Container) -> Result<TerminalSlot> {
        let id = container.id().to_string();
        let mut open = self
            .terminals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(id.clone()).or_default();
        if *count >= TERMINALS_PER_CONTAINER {
            return Err(Error::Conflict(format!(
                "container {id} has {TERMINALS_PER_CONTAINER} terminals open already; close one first"
            )));
        }
        *count += 1;
        Ok(TerminalSlot {
            terminals: self.terminals.clone(),
            id,
        })
    }

    /// Every live container with where it answers (while it runs) and its
    /// ingress rules: what the ingress gateway routes by. Not scoped to a
    /// caller: the gateway serves every project's containers.
    pub async fn ingress_table(&self) -> Result<Vec<ContainerRoute>> {
        let routes = self.store.ingress_routes().await?;
        Ok(routes
            .into_iter()
            .map(|route| {
                let running = route.state == InstanceState::Running.as_str();
                ContainerRoute {
                    address: running.then(|| route.private_ip.parse().ok()).flatten(),
                    id: route.container_id,
                    rules: route.rules,
                }
            })
            .collect())
    }

    /// The ssh command for a container's forwarded SSH server.
    pub fn ssh_command_for(&self, endpoint: &str) -> Option<String> {
        ssh_command(endpoint)
    }
}

/// `ssh -p PORT root@HOST` for a `HOST:PORT` (or `[V6]:PORT`) endpoint.
fn ssh_command(endpoint: &str) -> Option<String> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(format!("ssh -p {port} root@{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_shows_what_it_was_and_what_followed_it() {
        let instance = |state: InstanceState, host: Option<&str>| Instance {
            id: tessera_core::InstanceId::new("inst-1"),
            project_id: tessera_core::ProjectId::new("p"),
            name: "c".into(),
            labels: Default::default(),
            spec: Default::default(),
            state,
            detail: None,
            cause: None,
            host_id: host.map(tessera_core::HostId::new),
            cpus: None,
            memory_mb: 512,
            private_ip: String::new(),
            public_ip: String::new(),
            operation_id: None,
            ssh_endpoint: None,
            generation: 1,
            created_at: String::new(),
            updated_at: String::new(),
            created_by: None,
        };
        use ContainerStatus::{Initializing, Pending, Running, Stopped};
        let provisioning = InstanceState::Provisioning.as_str();
        // A creation or a start read before its host was chosen, while its
        // host makes it, and once it runs: `pending` first whenever it is
        // read, `initializing` after it only while that is still so.
        for (now, shown) in [
            (instance(InstanceState::Provisioning, None), vec![Pending]),
            (
                instance(InstanceState::Provisioning, Some("h")),
                vec![Pending, Initializing],
            ),
            (instance(InstanceState::Running, Some("h")), vec![Pending]),
        ] {
            assert_eq!(ContainerStatus::at_change(provisioning, &now), shown);
        }
        let running = instance(InstanceState::Running, Some("h"));
        assert_eq!(
            ContainerStatus::at_change("running", &running),
            vec![Running]
        );
        assert_eq!(
            ContainerStatus::at_change("stopped", &running),
            vec![Stopped]
        );
    }

    #[test]
    fn mount_paths_are_checked_for_collisions_and_shape() {
        let ok = |paths: &[&str]| {
            check_mount_paths(
                "mount_paths",
                &paths.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            )
        };
        assert!(ok(&["/root", "/var/data", "/var-data"]).is_ok());
        for bad in [
            &["/"][..],
            &["root"],
            &["/root/"],
            &["/a//b"],
            &["/a/../b"],
            &["/root", "/root"],
            &["/var", "/var/data"],
            &["/proc/x"],
            &[],
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ssh_commands_work_as_printed() {
        assert_eq!(
            ssh_command("192.0.2.10:2201").as_deref(),
            Some("ssh -p 2201 root@192.0.2.10")
        );
        assert_eq!(
            ssh_command("[2001:db8::1]:2201").as_deref(),
            Some("ssh -p 2201 root@2001:db8::1")
        );
    }
}
