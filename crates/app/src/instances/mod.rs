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
//!
//! Rooms: `validate` (a request against the catalog), `create` (the
//! creation saga and placement), `power` (delete, stop, start), `host` (what
//! the host is told), `resync` (a host that lost track), `observe` (what
//! hosts see of their instances: usage, and instances that die); reads are
//! here.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::operations::{Page, encode_page_token, page_request};
use crate::{App, has_nul};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_core::status::{InstanceState, TerminationCause};
use tessera_core::{CpuSet, HostId, InstanceId, OperationId, Permission, ProjectId};
use tessera_store::{InstanceFilter, InstanceRecord};

mod create;
mod host;
pub(crate) mod observe;
mod power;
pub use power::Deletion;
mod resync;
mod validate;

pub(crate) use create::{instances_usage, network_gone, subnet_full};
pub use validate::parse_selector;
pub(crate) use validate::validate;

/// How many times a creation looks again after losing a race for CPUs.
pub(super) const MAX_PLACE_ATTEMPTS: usize = 64;
pub(super) const MAX_USER_DATA: usize = 64 * 1024;

/// An instance, as the app speaks of it: its spec and labels parsed, its
/// state and why it ended typed. Made from its store row once, here.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: InstanceId,
    pub project_id: ProjectId,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: InstanceSpecInput,
    pub state: InstanceState,
    /// Why it is in its state, in words (a failure's message), for people.
    pub detail: Option<String>,
    /// Why it ended, once terminated.
    pub cause: Option<TerminationCause>,
    pub host_id: Option<HostId>,
    /// The host CPUs pinned to it, while it holds some.
    pub cpus: Option<CpuSet>,
    pub memory_mb: u64,
    pub private_ip: String,
    pub public_ip: String,
    /// The unfinished operation acting on it, if any.
    pub operation_id: Option<OperationId>,
    /// `HOST:PORT` forwarded to its SSH server, when its host forwards one.
    pub ssh_endpoint: Option<String>,
    pub generation: i64,
    pub created_at: String,
    pub updated_at: String,
    /// The user who made it; `None` when the control plane did (a
    /// deployment's replica) or it was made before this was kept.
    pub created_by: Option<String>,
}

impl Instance {
    /// The address to keep of what its host reported. An instance given an
    /// address on its network keeps that one, whatever the report says:
    /// the ingress gateway, the front door and the job runner connect to
    /// it, so a host saying otherwise could have them connect anywhere (the
    /// control plane's own loopback, another tenant's instance). One
    /// without (made before networks) takes the report, unless it names
    /// no instance's address at all (loopback, link-local, unspecified,
    /// multicast).
    pub(crate) fn address_from_report(&self, reported: &str) -> String {
        if self.spec.subnet_id.is_some() && !self.private_ip.is_empty() {
            if reported != self.private_ip {
                tracing::warn!(instance = %self.id, assigned = %self.private_ip, reported, "its host reported another address than the one it was given; the given one stands");
            }
            return self.private_ip.clone();
        }
        match reported.parse::<std::net::IpAddr>() {
            Ok(ip)
                if !ip.is_loopback()
                    && !ip.is_unspecified()
                    && !ip.is_multicast()
                    && !matches!(ip, std::net::IpAddr::V4(v4) if v4.is_link_local() || v4.is_broadcast()) =>
            {
                reported.to_string()
            }
            _ => {
                tracing::warn!(instance = %self.id, reported, "its host reported an address no instance has; not kept");
                String::new()
            }
        }
    }

    /// The instance a store row records; a row the app cannot read is
    /// corrupt.
    pub(crate) fn from_record(r: InstanceRecord) -> Result<Instance> {
        let corrupt = |what: String| Error::corrupt(format!("instance {}: {what}", r.id));
        let state = r
            .state
            .parse()
            .map_err(|e| corrupt(format!("state: {e}")))?;
        let cause = r
            .end_cause
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| corrupt(format!("end_cause: {e}")))?;
        let spec = serde_json::from_str(&r.spec).map_err(|e| corrupt(format!("spec: {e}")))?;
        let labels =
            serde_json::from_str(&r.labels).map_err(|e| corrupt(format!("labels: {e}")))?;
        let cpus = match r.cpu_list.as_deref() {
            None | Some("") => None,
            Some(list) => {
                Some(CpuSet::parse_list(list).map_err(|e| corrupt(format!("cpus: {e}")))?)
            }
        };
        Ok(Instance {
            id: InstanceId::new(r.id),
            project_id: ProjectId::new(r.project_id),
            name: r.name,
            labels,
            spec,
            state,
            detail: r.state_detail,
            cause,
            host_id: r.host_id.map(HostId::new),
            cpus,
            memory_mb: u64::try_from(r.memory_mb).unwrap_or(0),
            private_ip: r.private_ip,
            public_ip: r.public_ip,
            operation_id: r.operation_id.map(OperationId::new),
            ssh_endpoint: r.ssh_endpoint,
            generation: r.generation,
            created_at: r.created_at,
            updated_at: r.updated_at,
            created_by: r.created_by,
        })
    }

    /// Its CPUs in Linux list format; empty when it holds none.
    pub fn cpu_list(&self) -> String {
        self.cpus
            .as_ref()
            .map(CpuSet::to_string)
            .unwrap_or_default()
    }
}

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
    /// Made as the host's root (its project's policy or its image said so
    /// when it was made); never taken from a request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// A serverless replica's CPU, in thousandths (a share of one CPU
    /// under 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// What a serverless replica runs (secrets named, not held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<tessera_core::serverless::Workload>,
}

impl InstanceSpecInput {
    /// Its hourly price: its type's, for the size it asks. Its disk counts
    /// unless it is an OS volume of its own, which its volume's meter
    /// bills (`os_volume`).
    pub fn hourly(&self, kind: &tessera_core::catalog::InstanceType, os_volume: bool) -> f64 {
        let disk_gb = self.disk_gb.filter(|_| !os_volume);
        kind.hourly_sized(self.is_spot, self.vcpus, self.memory_mb, disk_gb)
    }
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
    /// Refuse with `NoCapacity`, making nothing, when no host could take
    /// it now (Verda's deploy answers so), rather than record it to end
    /// `no_capacity` once placement finds no host.
    pub require_room: bool,
    /// Tags to put on it: `(key, value)`.
    pub tags: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default)]
pub struct InstanceQuery {
    /// `key=value` pairs that must all match.
    pub labels: Vec<(String, String)>,
    pub state: Option<InstanceState>,
    pub limit: Option<u32>,
    pub page_token: Option<String>,
}

impl App {
    pub async fn instance(&self, caller: &Principal, id: &str) -> Result<Instance> {
        caller.require(Permission::InstanceRead)?;
        self.project_instance(&caller.project_id, id).await
    }

    /// An instance as the store has it now (not marked for a silent host).
    pub(crate) async fn stored_instance(&self, id: &str) -> Result<Option<Instance>> {
        match has_nul(id) {
            true => Ok(None),
            false => self
                .store
                .instance(id)
                .await?
                .map(Instance::from_record)
                .transpose(),
        }
    }

    /// The instances the store lists for `filter`, as they are stored.
    pub(crate) async fn stored_instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        let records = self.store.instances(filter).await?;
        records.into_iter().map(Instance::from_record).collect()
    }

    /// The instances an operation made (a cluster's nodes).
    pub(crate) async fn operation_instances(&self, operation_id: &str) -> Result<Vec<Instance>> {
        let records = self.store.instances_of_operation(operation_id).await?;
        records.into_iter().map(Instance::from_record).collect()
    }

    pub(crate) async fn project_instance(&self, project_id: &str, id: &str) -> Result<Instance> {
        let instance = self
            .stored_instance(id)
            .await?
            .filter(|i| i.project_id.as_str() == project_id)
            .ok_or_else(|| Error::NotFound(format!("instance {id} not found")))?;
        let mut shown = vec![instance];
        self.mark_unknown(&mut shown).await?;
        Ok(shown.remove(0))
    }

    /// `HOST:PORT` of the SSH forward a host reported for an instance.
    pub(crate) async fn ssh_endpoint(
        &self,
        host_id: Option<&HostId>,
        report: &tessera_agent_api::InstanceReport,
    ) -> Option<String> {
        let port = report.ssh_port?;
        let host = self.store.host(host_id?.as_str()).await.ok()??;
        Some(match host.ip.contains(':') {
            true => format!("[{}]:{port}", host.ip),
            false => format!("{}:{port}", host.ip),
        })
    }

    /// Shows instances on a host whose agent is unreachable as `unknown`:
    /// nobody can tell whether they still run until it returns.
    pub(super) async fn mark_unknown(&self, instances: &mut [Instance]) -> Result<()> {
        if !instances.iter().any(|i| i.host_id.is_some()) {
            return Ok(());
        }
        // Usually empty: one query for the hosts whose agents are silent.
        let lost_ids = self.store.unreachable_hosts().await?;
        if lost_ids.is_empty() {
            return Ok(());
        }
        for instance in instances {
            let on_lost = instance
                .host_id
                .as_ref()
                .and_then(|h| lost_ids.get(h.as_str()));
            if let Some(hostname) = on_lost
                && matches!(
                    instance.state,
                    InstanceState::Running | InstanceState::Stopped
                )
            {
                instance.detail = Some(format!(
                    "its host {hostname} is unreachable; it was {} when last seen",
                    instance.state
                ));
                instance.state = InstanceState::Unknown;
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
        let mut labels = query.labels.clone();
        labels.sort();
        let listing = format!("instances state={:?} labels={labels:?}", query.state);
        let (limit, after) = page_request(query.limit, query.page_token.as_deref(), &listing)?;
        // Filtered and paged in SQL, on indexes: one more than a page tells
        // whether there is a next one.
        let records = self
            .store
            .instances(&InstanceFilter {
                project_id: Some(caller.project_id.clone()),
                after,
                state: query.state.map(|s| s.as_str().to_string()),
                labels: query
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                limit: Some(limit as i64 + 1),
                ..InstanceFilter::default()
            })
            .await?;
        let mut items = records
            .into_iter()
            .map(Instance::from_record)
            .collect::<Result<Vec<_>>>()?;
        let mut next_page_token = None;
        if items.len() > limit {
            items.truncate(limit);
            next_page_token = items
                .last()
                .map(|i: &Instance| encode_page_token(&i.created_at, i.id.as_str(), &listing));
        }
        self.mark_unknown(&mut items).await?;
        Ok(Page {
            items,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(spec: serde_json::Value, private_ip: &str) -> Instance {
        Instance::from_record(tessera_store::InstanceRecord {
            id: "inst-1".into(),
            project_id: "prj-1".into(),
            name: "web".into(),
            labels: "{}".into(),
            spec: spec.to_string(),
            state: "provisioning".into(),
            state_detail: None,
            host_id: Some("host-a".into()),
            cpu_list: None,
            memory_mb: 512,
            private_ip: private_ip.into(),
            public_ip: String::new(),
            operation_id: None,
            generation: 1,
            created_at: "2026-12-07T00:00:00Z".into(),
            updated_at: "2026-12-07T00:00:00Z".into(),
            ssh_endpoint: None,
            end_cause: None,
            created_by: None,
        })
        .expect("an instance")
    }

    #[test]
    fn a_host_reports_no_address_but_the_one_given() {
        let spec = serde_json::json!({"type": "cx11", "image": "tiny",
            "vpc_id": "vpc-1", "subnet_id": "subnet-1"});
        let given = instance(spec, "10.128.0.2");
        for reported in ["127.0.0.1", "10.128.0.9", "169.254.169.254", "10.128.0.2"] {
            assert_eq!(
                given.address_from_report(reported),
                "10.128.0.2",
                "{reported}"
            );
        }
        // Made before networks: the report, unless it is no instance's.
        let older = instance(serde_json::json!({"type": "cx11", "image": "tiny"}), "");
        assert_eq!(older.address_from_report("192.0.2.31"), "192.0.2.31");
        for reported in [
            "127.0.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "224.0.0.1",
            "::1",
            "x",
        ] {
            assert_eq!(older.address_from_report(reported), "", "{reported}");
        }
    }
}
