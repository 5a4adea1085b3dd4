//! Instances: exclusive, pinned CPUs on a host of the wanted location, the
//! project's SSH keys and a startup script, through their lifecycle
//! `provisioning -> running <-> stopped -> terminated`.
//!
//! Every change is an operation (see [`crate::operations`]). Creation is a
//! saga of two steps: `placed` (a placement decision committed to the CPU
//! ledger with its step log entry, in one transaction) and `created` (the
//! host runs it). Undo: delete it on the host, then return its CPUs. So no
//! instance holds CPUs without existing, and none runs without its CPUs.
//! A stopped instance keeps its CPUs, so starting it again cannot fail for
//! want of room.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::operations::{Page, Run, encode_page_token, page_request};
use crate::{App, HostCallError, InFlight, has_nul, new_id};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_agent_api::{InstanceReport, InstanceSpec};
use tessera_core::catalog::{Catalog, MAX_DISK_GB, MAX_MEMORY_MB, MAX_VCPUS};
use tessera_core::placement::Request;
use tessera_core::{CpuSet, HostId, Permission};
use tessera_store::{
    CpuClaim, InstanceFilter, InstanceRecord, InstanceUpdate, NewInstance, NewOperation,
    OperationEnd,
};

pub use tessera_store::InstanceRecord as Instance;

/// How many times a creation looks again after losing a race for CPUs.
const MAX_PLACE_ATTEMPTS: usize = 64;
const MAX_USER_DATA: usize = 64 * 1024;

/// The spec of an instance, as asked for and as stored (sizes resolved
/// from the type).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceSpecInput {
    #[serde(rename = "type")]
    pub instance_type: String,
    pub image: String,
    pub vcpus: Option<u32>,
    pub memory_mb: Option<u64>,
    pub disk_gb: Option<u64>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub ssh_key_ids: Vec<String>,
    pub user_data: Option<String>,
    /// A region or zone the instance must be placed in.
    pub location: Option<String>,
    /// A spot instance: charged the type's spot price.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_spot: bool,
    /// `PAY_AS_YOU_GO`, `SPOT` or `LONG_TERM`, as asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The startup script it ran (its text is in `user_data`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_script_id: Option<String>,
    /// What to do with its volumes if a spot instance is discontinued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_spot_discontinue: Option<String>,
    /// The volumes made with it, which go if its creation fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes_made: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct CreateInstance {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: InstanceSpecInput,
    /// An OS volume to make for it (`vda`).
    pub os_volume: Option<crate::volumes::VolumeInput>,
    /// More volumes to make for it.
    pub volumes: Vec<crate::volumes::VolumeInput>,
    /// Detached volumes of the project to attach to it.
    pub existing_volumes: Vec<String>,
    /// Refuse with `InsufficientFunds` unless the project's balance covers
    /// an hour of it.
    pub require_funds: bool,
    /// Tags to put on it: `(key, value)`.
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct InstanceQuery {
    /// `key=value` pairs that must all match.
    pub labels: Vec<(String, String)>,
    pub state: Option<String>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

/// Parses a label selector: `env=production,team=platform`.
pub fn parse_selector(selector: &str) -> Result<Vec<(String, String)>> {
    selector
        .split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                Error::invalid(
                    "labels",
                    format!("label selector {part:?} is not key=value (e.g. labels=env=production,team=platform)"),
                )
            })?;
            Ok((key.trim().to_string(), value.trim().to_string()))
        })
        .collect()
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("{field} must be 1 to {max} printable characters"),
        ));
    }
    Ok(())
}

pub(crate) fn validate(catalog: &Catalog, req: &mut CreateInstance) -> Result<Option<Vec<u8>>> {
    let name = &req.name;
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return Err(Error::invalid(
            "metadata.name",
            "metadata.name must be 1 to 63 letters, digits, '-', '_' or '.'",
        ));
    }
    if req.labels.len() > 64 {
        return Err(Error::invalid("metadata.labels", "at most 64 labels"));
    }
    for (key, value) in &req.labels {
        let key_ok = !key.is_empty()
            && key.len() <= 63
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !key_ok
            || value.len() > 63
            || value.contains([',', '='])
            || value.chars().any(char::is_control)
        {
            return Err(Error::invalid(
                "metadata.labels",
                format!(
                    "label {key:?}={value:?}: keys are 1 to 63 letters, digits, '-', '_', '.' or '/'; values at most 63 printable characters without ',' or '='"
                ),
            ));
        }
    }
    let spec = &mut req.spec;
    let Some(kind) = catalog.instance_type(&spec.instance_type) else {
        return Err(Error::invalid(
            "spec.type",
            format!(
                "unknown instance type {:?}; known types: {}",
                spec.instance_type.escape_debug().to_string(),
                Catalog::names(catalog.instance_types.iter().map(|t| t.name.as_str()))
            ),
        ));
    };
    if catalog.image(&spec.image).is_none() {
        return Err(Error::invalid(
            "spec.image",
            format!(
                "unknown image {:?}; known images: {}",
                spec.image.escape_debug().to_string(),
                Catalog::names(catalog.images.iter().map(|i| i.image_type.as_str()))
            ),
        ));
    }
    let vcpus = spec.vcpus.unwrap_or(kind.vcpus);
    if !(1..=MAX_VCPUS).contains(&vcpus) {
        return Err(Error::invalid(
            "spec.vcpus",
            format!("vcpus must be between 1 and {MAX_VCPUS}"),
        ));
    }
    let memory_mb = spec.memory_mb.unwrap_or(kind.memory_mb());
    if !(128..=MAX_MEMORY_MB).contains(&memory_mb) {
        return Err(Error::invalid(
            "spec.memory_mb",
            format!("memory_mb must be between 128 and {MAX_MEMORY_MB}"),
        ));
    }
    let disk_gb = spec.disk_gb.unwrap_or(kind.disk_gb);
    if !(1..=MAX_DISK_GB).contains(&disk_gb) {
        return Err(Error::invalid(
            "spec.disk_gb",
            format!("disk_gb must be between 1 and {MAX_DISK_GB}"),
        ));
    }
    (spec.vcpus, spec.memory_mb, spec.disk_gb) = (Some(vcpus), Some(memory_mb), Some(disk_gb));
    for (field, value) in [
        ("spec.vpc_id", &spec.vpc_id),
        ("spec.subnet_id", &spec.subnet_id),
        ("spec.location", &spec.location),
    ] {
        if let Some(value) = value {
            check_text(field, value, 64)?;
        }
    }
    if spec.security_groups.len() > 32 {
        return Err(Error::invalid(
            "spec.security_groups",
            "at most 32 security groups",
        ));
    }
    for group in &spec.security_groups {
        check_text("spec.security_groups", group, 64)?;
    }
    if spec.ssh_key_ids.len() > 32 {
        return Err(Error::invalid("spec.ssh_key_ids", "at most 32 SSH keys"));
    }
    let user_data = match &spec.user_data {
        None => None,
        Some(text) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| {
                    Error::invalid("spec.user_data", format!("user_data is not base64 ({e})"))
                })?;
            if decoded.len() > MAX_USER_DATA {
                return Err(Error::invalid(
                    "spec.user_data",
                    format!("user_data is at most {MAX_USER_DATA} bytes once decoded"),
                ));
            }
            Some(decoded)
        }
    };
    Ok(user_data)
}

/// What new instances add to their project's usage.
pub(crate) fn instances_usage(instances: &[NewInstance]) -> tessera_store::Usage {
    let mut adds = tessera_store::Usage::default();
    for instance in instances {
        adds.instances += 1;
        adds.vcpus += instance.vcpus;
        adds.memory_mb += instance.memory_mb;
        adds.volumes += instance.volumes.len() as i64;
        adds.volume_gb += instance
            .volumes
            .iter()
            .map(|v| v.record.size_gb)
            .sum::<i64>();
    }
    adds
}

impl App {
    /// Records an instance and starts the operation that creates it.
    pub async fn create_instance(
        &self,
        caller: &Principal,
        mut req: CreateInstance,
    ) -> Result<Instance> {
        caller.require(Permission::InstanceCreate)?;
        validate(&self.catalog, &mut req)?;
        let tags = crate::tags::check_tags("tags", &req.tags)?;
        for key in &req.spec.ssh_key_ids {
            if self.project_ssh_key(&caller.project_id, key).await.is_err() {
                return Err(Error::invalid(
                    "spec.ssh_key_ids",
                    format!(
                        "SSH key {key:?} not found in workspace {}",
                        caller.project_name
                    ),
                ));
            }
        }
        if let Some(script_id) = req.spec.startup_script_id.clone() {
            let script = self
                .project_script(&caller.project_id, &script_id)
                .await
                .map_err(|_| {
                    Error::invalid(
                        "startup_script_id",
                        format!("startup script {script_id} not found"),
                    )
                })?;
            req.spec.user_data =
                Some(base64::engine::general_purpose::STANDARD.encode(script.script));
        }
        let kind = self
            .catalog
            .instance_type(&req.spec.instance_type)
            .cloned()
            .unwrap_or_else(|| unreachable!("validate checked the type"));
        let mut micros_per_hour = tessera_core::catalog::to_micros(kind.hourly(req.spec.is_spot));
        let location = req.spec.location.clone().unwrap_or_default();
        // The OS volume is `vda`; the others follow from `vdb`.
        let mut volumes = Vec::new();
        let mut next_target = 1;
        for (field, input) in req
            .os_volume
            .iter()
            .map(|v| ("os_volume", v))
            .chain(req.volumes.iter().map(|v| ("volumes", v)))
        {
            let rate = self.check_volume(field, input)?;
            self.check_volume_room(field, &location, input.size_gb)
                .await?;
            micros_per_hour += rate;
            let os = field == "os_volume";
            let mut volume = self.new_volume(caller, input, &location, os, rate);
            volume.record.status = "attached".into();
            volume.record.target = Some(crate::volumes::target(match os {
                true => 0,
                false => {
                    next_target += 1;
                    next_target - 1
                }
            }));
            volumes.push(volume);
        }
        let mut attach = Vec::new();
        for volume_id in &req.existing_volumes {
            let volume = self
                .project_volume(&caller.project_id, volume_id)
                .await
                .map_err(|_| {
                    Error::invalid("existing_volumes", format!("volume {volume_id} not found"))
                })?;
            if volume.is_os_volume != 0 {
                return Err(Error::invalid(
                    "existing_volumes",
                    format!(
                        "volume {volume_id} is an OS volume; it cannot be attached to another instance"
                    ),
                ));
            }
            if volume.status != "detached" || volume.instance_id.is_some() {
                return Err(Error::invalid(
                    "existing_volumes",
                    format!("volume {volume_id} is {}, not detached", volume.status),
                ));
            }
            if !location.is_empty() && volume.location != location {
                return Err(Error::invalid(
                    "existing_volumes",
                    format!(
                        "volume {volume_id} is in {}, not {location}",
                        volume.location
                    ),
                ));
            }
            attach.push((volume.id, crate::volumes::target(next_target)));
            next_target += 1;
        }
        if volumes.len() + attach.len() > crate::volumes::MAX_VOLUMES_PER_INSTANCE {
            return Err(Error::invalid(
                "volumes",
                format!(
                    "an instance can have at most {} volumes",
                    crate::volumes::MAX_VOLUMES_PER_INSTANCE
                ),
            ));
        }
        if req.require_funds {
            self.check_funds(caller, micros_per_hour, &format!("instance {}", req.name))
                .await?;
        }
        let id = new_id("inst");
        for volume in &mut volumes {
            volume.record.instance_id = Some(id.clone());
        }
        req.spec.volumes_made = volumes.iter().map(|v| v.record.id.clone()).collect();
        let op = NewOperation {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: caller.project_id.clone(),
            kind: "instance_create".into(),
            resource_id: Some(id.clone()),
            params: serde_json::json!({ "instance_id": id }),
            created_by: caller.username.clone(),
        };
        let spec = serde_json::to_value(&req.spec).unwrap_or_default();
        let labels = serde_json::to_value(&req.labels).unwrap_or_default();
        let instance = NewInstance {
            id: id.clone(),
            project_id: caller.project_id.clone(),
            name: req.name.clone(),
            labels,
            spec,
            memory_mb: req.spec.memory_mb.unwrap_or(0) as i64,
            vcpus: i64::from(req.spec.vcpus.unwrap_or(1)),
            micros_per_hour,
            volumes,
            attach,
        };
        let quota = self
            .quota_check(
                &caller.project_id,
                instances_usage(std::slice::from_ref(&instance)),
            )
            .await?;
        let recorded = self
            .store
            .insert_instance(&instance, &op, Some(&quota))
            .await?;
        if !recorded {
            return Err(Error::Conflict(
                "a volume in existing_volumes was attached elsewhere meanwhile; try again".into(),
            ));
        }
        self.tag_new(
            &caller.project_id,
            crate::tags::Tagged::Instance,
            &id,
            &tags,
        )
        .await?;
        tracing::info!(instance = %id, name = %req.name, project = %caller.project_name, "instance requested");
        self.publish("instance", &id, Some(&caller.project_id), "provisioning");
        // Read before the operation starts, so the answer shows what was
        // recorded, whatever the operation does next.
        let instance = self.project_instance(&caller.project_id, &id).await?;
        self.spawn_operation(&op.id);
        Ok(instance)
    }

    pub async fn instance(&self, caller: &Principal, id: &str) -> Result<Instance> {
        caller.require(Permission::InstanceRead)?;
        self.project_instance(&caller.project_id, id).await
    }

    pub(crate) async fn project_instance(&self, project_id: &str, id: &str) -> Result<Instance> {
        let instance = match has_nul(id) {
            true => None,
            false => self.store.instance(id).await?,
        };
        let instance = instance
            .filter(|i| i.project_id == project_id)
            .ok_or_else(|| Error::NotFound(format!("instance {id} not found")))?;
        let mut shown = vec![instance];
        self.mark_unknown(&mut shown).await?;
        Ok(shown.remove(0))
    }

    /// `HOST:PORT` of the SSH forward a host reported for an instance.
    pub(crate) async fn ssh_endpoint(
        &self,
        host_id: Option<&str>,
        report: &tessera_agent_api::InstanceReport,
    ) -> Option<String> {
        let port = report.ssh_port?;
        let host = self.store.host(host_id?).await.ok()??;
        Some(match host.ip.contains(':') {
            true => format!("[{}]:{port}", host.ip),
            false => format!("{}:{port}", host.ip),
        })
    }

    /// Shows instances on a host whose agent is unreachable as `unknown`:
    /// nobody can tell whether they still run until it returns.
    async fn mark_unknown(&self, instances: &mut [Instance]) -> Result<()> {
        if !instances.iter().any(|i| i.host_id.is_some()) {
            return Ok(());
        }
        // Usually empty: one query for the hosts whose agents are silent.
        let lost_ids = self.store.unreachable_hosts().await?;
        if lost_ids.is_empty() {
            return Ok(());
        }
        for instance in instances {
            let on_lost = instance.host_id.as_ref().and_then(|h| lost_ids.get(h));
            if let Some(hostname) = on_lost
                && matches!(instance.state.as_str(), "running" | "stopped")
            {
                instance.state_detail = Some(format!(
                    "its host {hostname} is unreachable; it was {} when last seen",
                    instance.state
                ));
                instance.state = "unknown".into();
            }
        }
        Ok(())
    }

    /// The project's instances, oldest first, filtered by labels and state.
    /// Terminated instances are listed only when asked for by state.
    pub async fn instances(
        &self,
        caller: &Principal,
        query: &InstanceQuery,
    ) -> Result<Page<Instance>> {
        caller.require(Permission::InstanceRead)?;
        let (limit, after) = page_request(query.limit, query.page_token.as_deref())?;
        let all = self
            .store
            .instances(&InstanceFilter {
                project_id: Some(caller.project_id.clone()),
                host_id: None,
                after,
                include_terminated: query.state.as_deref() == Some("terminated"),
            })
            .await?;
        let mut items = Vec::new();
        let mut next_page_token = None;
        for instance in all {
            if query.state.as_ref().is_some_and(|s| *s != instance.state) {
                continue;
            }
            if !query.labels.is_empty() {
                let labels: BTreeMap<String, String> =
                    serde_json::from_str(&instance.labels).unwrap_or_default();
                if !query.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    continue;
                }
            }
            if items.len() == limit {
                next_page_token = items
                    .last()
                    .map(|i: &Instance| encode_page_token(&i.created_at, &i.id));
                break;
            }
            items.push(instance);
        }
        self.mark_unknown(&mut items).await?;
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Starts deleting an instance: it stops, leaves its host and gives its
    /// CPUs back. Answers the instance with the operation doing it.
    /// Starts deleting an instance. One that is terminated already (a
    /// creation that failed, or a delete done before) is answered as it is,
    /// with no operation: deleting is idempotent.
    pub async fn delete_instance(&self, caller: &Principal, id: &str) -> Result<Instance> {
        caller.require(Permission::InstanceDelete)?;
        let instance = self.project_instance(&caller.project_id, id).await?;
        if instance.state == "terminated" && instance.operation_id.is_none() {
            return Ok(instance);
        }
        self.begin_power(
            caller,
            id,
            "instance_delete",
            &["running", "stopped"],
            "stopping",
        )
        .await
    }

    pub async fn stop_instance(&self, caller: &Principal, id: &str) -> Result<Instance> {
        caller.require(Permission::InstanceCreate)?;
        self.begin_power(caller, id, "instance_stop", &["running"], "stopping")
            .await
    }

    pub async fn start_instance(&self, caller: &Principal, id: &str) -> Result<Instance> {
        caller.require(Permission::InstanceCreate)?;
        self.begin_power(caller, id, "instance_start", &["stopped"], "provisioning")
            .await
    }

    async fn begin_power(
        &self,
        caller: &Principal,
        id: &str,
        kind: &str,
        from: &[&str],
        to: &str,
    ) -> Result<Instance> {
        let instance = self.project_instance(&caller.project_id, id).await?;
        let op = NewOperation {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: caller.project_id.clone(),
            kind: kind.into(),
            resource_id: Some(instance.id.clone()),
            params: serde_json::json!({ "instance_id": instance.id }),
            created_by: caller.username.clone(),
        };
        if !self
            .store
            .begin_instance_operation(&instance.id, from, to, &op)
            .await?
        {
            let now = self.project_instance(&caller.project_id, id).await?;
            let why = match &now.operation_id {
                Some(op) => format!("operation {op} is still under way on it"),
                None => format!("it is {}", now.state),
            };
            let verb = kind.trim_start_matches("instance_");
            return Err(Error::Conflict(format!(
                "instance {id} cannot {verb}: {why}"
            )));
        }
        self.publish("instance", &instance.id, Some(&caller.project_id), to);
        let instance = self.project_instance(&caller.project_id, id).await?;
        self.spawn_operation(&op.id);
        Ok(instance)
    }

    /// What the host must run for `instance`.
    async fn instance_spec(&self, instance: &InstanceRecord) -> Result<InstanceSpec> {
        let spec: InstanceSpecInput = serde_json::from_str(&instance.spec).map_err(|e| {
            Error::Internal(tessera_store::StoreError::Corrupt(format!(
                "instance {} spec: {e}",
                instance.id
            )))
        })?;
        let mut ssh_keys = Vec::new();
        for id in &spec.ssh_key_ids {
            // A key deleted since creation is simply not installed again.
            if let Some(key) = self.store.ssh_key(&instance.project_id, id).await? {
                ssh_keys.push(key.public_key);
            }
        }
        let user_data = spec.user_data.as_deref().and_then(|u| {
            base64::engine::general_purpose::STANDARD
                .decode(u.trim())
                .ok()
        });
        let volumes = self
            .store
            .instance_volumes(&instance.id)
            .await?
            .into_iter()
            // The OS volume is the instance's own root file system.
            .filter(|v| v.is_os_volume == 0)
            .filter_map(|v| {
                Some(tessera_agent_api::AttachedVolume {
                    target: v.target?,
                    id: v.id,
                })
            })
            .collect();
        Ok(InstanceSpec {
            id: instance.id.clone(),
            name: instance.name.clone(),
            project_id: instance.project_id.clone(),
            cpus: instance
                .cpu_list
                .as_deref()
                .and_then(|l| CpuSet::parse_list(l).ok())
                .unwrap_or_default(),
            memory_mb: u64::try_from(instance.memory_mb).unwrap_or(0),
            disk_gb: spec.disk_gb.unwrap_or(0),
            image: spec.image,
            ssh_keys,
            user_data,
            volumes,
        })
    }

    /// Waits until no other work of this process acts on the instance on
    /// its host (a resync, an operation), and holds it off until dropped.
    pub(crate) async fn instance_guard(&self, id: &str) -> Result<InFlight> {
        let deadline = std::time::Instant::now() + self.config.agent_timeout * 2;
        loop {
            if let Some(guard) = InFlight::enter(&self.in_flight, format!("instance:{id}")) {
                return Ok(guard);
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "instance {id} is busy on its host"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Makes a host run the settled instances the store gives it (running
    /// or stopped): an agent that lost its state gets them back.
    pub(crate) async fn resync_instances(
        &self,
        host_id: &str,
        agent: std::sync::Arc<dyn tessera_agent_api::HostAgent>,
    ) -> Result<()> {
        let on_host = self
            .store
            .instances(&InstanceFilter {
                host_id: Some(host_id.to_string()),
                ..InstanceFilter::default()
            })
            .await?;
        self.resync_volumes(host_id, &agent).await?;
        for listed in on_host {
            // Under the instance's guard, as it is now: an operation that
            // started meanwhile (a delete) drives it instead.
            let _guard = self.instance_guard(&listed.id).await?;
            let Some(instance) = self.store.instance(&listed.id).await? else {
                continue;
            };
            if instance.operation_id.is_some()
                || instance.host_id.as_deref() != Some(host_id)
                || !matches!(instance.state.as_str(), "running" | "stopped")
            {
                continue;
            }
            let spec = self.instance_spec(&instance).await?;
            let mut outcome = self
                .host_call(agent.create_instance(&spec))
                .await
                .map(|_| ());
            if outcome.is_ok() && instance.state == "stopped" {
                outcome = self.host_call(agent.stop_instance(&spec.id)).await;
            }
            if let Err(err) = outcome {
                tracing::warn!(instance = %instance.id, error = %err, "instance resync failed");
            }
        }
        Ok(())
    }

    /// Drives an `instance_create` operation (see the module doc).
    pub(crate) async fn run_instance_create(&self, run: &mut Run) -> Result<()> {
        let instance = self.run_instance(run).await?;
        if self.cancel_requested(run).await? {
            return self
                .unwind_create(run, "cancelled", "creation cancelled")
                .await;
        }
        if !run.done("placed")
            && let Err(why) = self.place(run, &instance, "placed", CpuClaim::Place).await
        {
            let why = match why {
                Error::NoCapacity(why) => why,
                other => return Err(other),
            };
            return self.unwind_create(run, "failed", &why).await;
        }
        let instance = self.run_instance(run).await?;
        if self.cancel_requested(run).await? {
            return self
                .unwind_create(run, "cancelled", "creation cancelled")
                .await;
        }
        if let Err(why) = self.prepare_volumes(&instance).await {
            tracing::warn!(instance = %instance.id, error = %why, "preparing the instance's volumes failed");
            return self
                .unwind_create(
                    run,
                    "failed",
                    &format!("the host could not prepare the instance's volumes: {why}"),
                )
                .await;
        }
        let create = self.on_host(&instance, |agent, spec| async move {
            agent.create_instance(&spec).await
        });
        // A cancel does not wait for the host to answer.
        let created = tokio::select! {
            created = create => created,
            cancelled = self.until_cancel_requested(run) => {
                cancelled?;
                return self.unwind_create(run, "cancelled", "creation cancelled").await;
            }
        };
        match created {
            Ok(report) => self.settle_running(run, &instance, report).await,
            Err(why) => {
                tracing::warn!(instance = %instance.id, error = %why, "creating the instance failed");
                self.unwind_create(
                    run,
                    "failed",
                    &format!("the host could not create the instance: {why}"),
                )
                .await
            }
        }
    }

    async fn run_instance(&self, run: &Run) -> Result<Instance> {
        let id = run.op.resource_id.clone().unwrap_or_default();
        self.store.instance(&id).await?.ok_or_else(|| {
            Error::Internal(tessera_store::StoreError::Corrupt(format!(
                "operation {} acts on instance {id}, which does not exist",
                run.op.id
            )))
        })
    }

    /// Gives the instance exclusive CPUs on a host of its location, and
    /// records `step` with them. With [`CpuClaim::MoveTo`], the instance keeps what it
    /// holds where it is (a move's target is reserved beside its source).
    pub(crate) async fn place(
        &self,
        run: &mut Run,
        instance: &Instance,
        step: &str,
        purpose: CpuClaim,
    ) -> Result<tessera_core::placement::Decision> {
        let spec: InstanceSpecInput = serde_json::from_str(&instance.spec).unwrap_or_default();
        let count = spec.vcpus.unwrap_or(1);
        let memory_mb = u64::try_from(instance.memory_mb).unwrap_or(0);
        let mut looked_again = false;
        for _ in 0..MAX_PLACE_ATTEMPTS {
            // A location names a region or, failing that, a zone.
            let mut decision = None;
            let wanted = match &spec.location {
                None => vec![(None, None)],
                Some(l) => vec![(Some(l.clone()), None), (None, Some(l.clone()))],
            };
            for (region, zone) in wanted {
                // A pooled host's CPUs, or a whole unit of a partitioned one.
                let request = Request::Cpus {
                    count,
                    memory_mb,
                    region,
                    zone,
                    whole_units: true,
                };
                if let Some(d) = self.placement.take(&request) {
                    decision = Some(d);
                    break;
                }
            }
            let Some(decision) = decision else {
                if looked_again {
                    let place = spec
                        .location
                        .as_ref()
                        .map(|l| format!(" in {l}"))
                        .unwrap_or_default();
                    return Err(Error::NoCapacity(format!(
                        "no host{place} has {count} free CPUs and {memory_mb} MB of memory"
                    )));
                }
                self.placement
                    .refresh_changed(&self.store, std::time::Instant::now())
                    .await?;
                looked_again = true;
                continue;
            };
            let cpus: Vec<u32> = decision.cpus.iter().collect();
            let step = match purpose {
                CpuClaim::MoveTo => format!("{step}:{}:{}", decision.host, decision.cpus),
                CpuClaim::Place => step.to_string(),
            };
            let steps = run.with(&step);
            let placed = self
                .store
                .claim_instance_cpus(
                    purpose,
                    &instance.id,
                    (
                        decision.host.as_str(),
                        decision.unit.as_ref().map(|u| u.as_str()),
                    ),
                    &cpus,
                    (&run.op.id, &steps, &self.deadline()),
                )
                .await;
            self.placement
                .refresh_host(&self.store, decision.host.as_str())
                .await?;
            if placed? {
                run.steps = steps;
                tracing::debug!(instance = %instance.id, host = %decision.host, cpus = %decision.cpus, ?purpose, "instance placed");
                return Ok(decision);
            }
            if purpose == CpuClaim::Place
                && self
                    .store
                    .instance(&instance.id)
                    .await?
                    .and_then(|i| i.host_id)
                    .is_some()
            {
                // Placed by an earlier run whose log entry this one missed.
                return Err(Error::Conflict(format!(
                    "operation {} was taken over by another process",
                    run.op.id
                )));
            }
        }
        Err(Error::Unavailable(
            "too many concurrent placements; try again".into(),
        ))
    }

    /// Calls the instance's host with its spec.
    pub(crate) async fn on_host<T, F, Fut>(
        &self,
        instance: &Instance,
        call: F,
    ) -> Result<T, HostCallError>
    where
        F: FnOnce(std::sync::Arc<dyn tessera_agent_api::HostAgent>, InstanceSpec) -> Fut,
        Fut: std::future::Future<Output = Result<T, tessera_agent_api::AgentError>>,
    {
        let host = instance.host_id.clone().ok_or(HostCallError::NoAgent)?;
        let agent = self
            .agent(&HostId::new(host))
            .await
            .map_err(|e| HostCallError::Failed(e.to_string()))?
            .ok_or(HostCallError::NoAgent)?;
        let spec = self
            .instance_spec(instance)
            .await
            .map_err(|e| HostCallError::Failed(e.to_string()))?;
        self.host_call(call(agent, spec)).await
    }

    async fn settle_running(
        &self,
        run: &mut Run,
        instance: &Instance,
        report: InstanceReport,
    ) -> Result<()> {
        let result = serde_json::json!({
            "instance_id": instance.id,
            "host_id": instance.host_id,
            "private_ip": report.private_ip,
        });
        let settled = self
            .store
            .settle_instance_operation(
                &OperationEnd {
                    id: &run.op.id,
                    status: "completed",
                    result: Some(&result),
                    error: None,
                },
                &instance.id,
                &InstanceUpdate {
                    state: "running".into(),
                    state_detail: None,
                    ssh_endpoint: self
                        .ssh_endpoint(instance.host_id.as_deref(), &report)
                        .await,
                    private_ip: Some(report.private_ip),
                },
                false,
            )
            .await?;
        if settled {
            tracing::info!(instance = %instance.id, host = ?instance.host_id, "instance running");
            self.publish(
                "instance",
                &instance.id,
                Some(&instance.project_id),
                "running",
            );
        }
        Ok(())
    }

    /// Undoes a creation's done steps and ends it `status` with `why`: the
    /// instance is terminated and holds nothing.
    async fn unwind_create(&self, run: &mut Run, status: &str, why: &str) -> Result<()> {
        let instance = self.run_instance(run).await?;
        if instance.host_id.is_some() {
            match self
                .on_host(&instance, |agent, spec| async move {
                    agent.delete_instance(&spec.id).await
                })
                .await
            {
                Ok(()) | Err(HostCallError::NoAgent) => {}
                Err(err) => {
                    // Its CPUs stay held until the host confirms.
                    return Err(Error::HostFailed(format!(
                        "undoing the creation of {} on its host failed: {err}",
                        instance.id
                    )));
                }
            }
        }
        let host = instance.host_id.clone();
        let settled = self
            .store
            .settle_instance_operation(
                &OperationEnd {
                    id: &run.op.id,
                    status,
                    result: None,
                    error: Some(why),
                },
                &instance.id,
                &InstanceUpdate {
                    state: "terminated".into(),
                    state_detail: Some(why.to_string()),
                    private_ip: None,
                    ssh_endpoint: None,
                },
                true,
            )
            .await?;
        if let Some(host) = host {
            self.placement.refresh_host(&self.store, &host).await?;
        }
        // The volumes made for it go too (for good: they never held
        // anything); volumes it was to take are detached again.
        let spec: InstanceSpecInput = serde_json::from_str(&instance.spec).unwrap_or_default();
        for volume_id in &spec.volumes_made {
            if let Some(volume) = self.store.volume(volume_id).await?
                && volume.status != "deleted"
            {
                self.trash_volume(&volume, true).await?;
            }
        }
        if settled {
            tracing::info!(instance = %instance.id, status, why, "instance creation unwound");
            self.publish(
                "instance",
                &instance.id,
                Some(&instance.project_id),
                "terminated",
            );
        }
        Ok(())
    }

    /// Drives `instance_delete`, `instance_stop` and `instance_start`: one
    /// host call, then the instance's new state.
    pub(crate) async fn run_instance_power(&self, run: &mut Run) -> Result<()> {
        let _guard = self
            .instance_guard(run.op.resource_id.as_deref().unwrap_or(""))
            .await?;
        let instance = self.run_instance(run).await?;
        let kind = run.op.kind.clone();
        let outcome = match kind.as_str() {
            "instance_delete" => self
                .on_host(&instance, |agent, spec| async move {
                    agent.delete_instance(&spec.id).await
                })
                .await
                .map(|()| None),
            "instance_stop" => self
                .on_host(&instance, |agent, spec| async move {
                    agent.stop_instance(&spec.id).await
                })
                .await
                .map(|()| None),
            _ => match self.prepare_volumes(&instance).await {
                Err(why) => Err(why),
                Ok(()) => self
                    .on_host(&instance, |agent, spec| async move {
                        agent.start_instance(&spec).await
                    })
                    .await
                    .map(Some),
            },
        };
        let (status, error, state, release) = match (&outcome, kind.as_str()) {
            (Ok(_) | Err(HostCallError::NoAgent), "instance_delete")
                if instance.host_id.is_none() =>
            {
                ("completed", None, "terminated", true)
            }
            (Ok(_), "instance_delete") => ("completed", None, "terminated", true),
            (Ok(_), "instance_stop") => ("completed", None, "stopped", false),
            (Ok(_), _) => ("completed", None, "running", false),
            (Err(HostCallError::Timeout(_)), "instance_delete") => {
                // Its CPUs stay held until the host confirms: try again later.
                return Err(Error::HostTimeout(format!(
                    "deleting {} on its host timed out",
                    instance.id
                )));
            }
            (Err(why), "instance_delete") => {
                return Err(Error::HostFailed(format!(
                    "deleting {} on its host failed: {why}",
                    instance.id
                )));
            }
            // A stop or start that failed leaves the instance as it was.
            (Err(why), "instance_stop") => ("failed", Some(why.to_string()), "running", false),
            (Err(why), _) => ("failed", Some(why.to_string()), "stopped", false),
        };
        let (private_ip, ssh_endpoint) = match &outcome {
            Ok(Some(report)) => (
                Some(report.private_ip.clone()),
                self.ssh_endpoint(instance.host_id.as_deref(), report).await,
            ),
            _ => (None, None),
        };
        let result = serde_json::json!({ "instance_id": instance.id, "state": state });
        let host = instance.host_id.clone();
        let settled = self
            .store
            .settle_instance_operation(
                &OperationEnd {
                    id: &run.op.id,
                    status,
                    result: (status == "completed").then_some(&result),
                    error: error.as_deref(),
                },
                &instance.id,
                &InstanceUpdate {
                    state: state.into(),
                    state_detail: error.clone(),
                    private_ip,
                    ssh_endpoint,
                },
                release,
            )
            .await?;
        if release && let Some(host) = host {
            self.placement.refresh_host(&self.store, &host).await?;
        }
        if settled {
            tracing::info!(instance = %instance.id, kind, status, state, "instance operation ended");
            self.publish("instance", &instance.id, Some(&instance.project_id), state);
        }
        Ok(())
    }
}
