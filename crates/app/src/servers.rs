//! Servers, as the native API calls the fleet's hosts: registered and
//! deleted through operations. Kloigos's `init_server` and this API see the
//! same hosts; a server registered here without `cpu_ranges` has a CPU pool
//! from which instances take exclusive CPUs, one with `cpu_ranges` is
//! carved into Kloigos units.

use crate::error::{Error, Result};
use crate::hosts::{Host, InitServer, Registration, validate_host};
use crate::identity::Principal;
use crate::operations::{Operation, Page, Run, Step, encode_page_token, page_request};
use crate::{App, has_nul, new_id};
use serde::{Deserialize, Serialize};
use tessera_core::status::{HostStatus, OperationKind, OperationStatus};
use tessera_core::{CpuSet, Permission};
use tessera_store::{DecommissionStart, HostRecord, NewOperation};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CreateServer {
    pub workspace: Option<String>,
    pub hostname: String,
    /// Empty until its agent reports one, when the request gave none.
    #[serde(default)]
    pub ip_address: String,
    pub provider: Option<String>,
    /// `NxCPU-MGB`; gives the CPUs (`0..N-1`) when `cpus` is absent.
    pub plan: Option<String>,
    pub region: Option<String>,
    pub zone: String,
    /// The CPU pool in Linux list format (`0-15`).
    pub cpus: Option<String>,
    /// Kloigos ranges: carve the host into units instead of a pool.
    #[serde(default)]
    pub cpu_ranges: Vec<String>,
    #[serde(default)]
    pub numa_nodes: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub check_mode: bool,
    /// Its CPU architecture, `amd64` (the default) or `arm64`.
    #[serde(default)]
    pub arch: Option<String>,
    /// The id the server gets, chosen when the request is accepted.
    #[serde(default)]
    pub server_id: String,
}

/// The CPUs and memory (MB) of a plan such as `2xCPU-4GB`; `None` for a
/// plan of another form (a provider's own name), an error for one of this
/// form that says what no server has.
fn parse_plan(plan: &str) -> Result<Option<(u32, i64)>> {
    let Some((cpus, rest)) = plan.split_once("xCPU") else {
        return Ok(None);
    };
    if cpus.is_empty() || !cpus.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let bad = |why: &str| {
        Error::invalid(
            "plan",
            format!("plan {plan:?}: {why} (a plan such as \"16xCPU-64GB\")"),
        )
    };
    let cpus: u32 = cpus
        .parse()
        .ok()
        .filter(|n| (1..=8192).contains(n))
        .ok_or_else(|| bad("1 to 8192 CPUs"))?;
    let gb: i64 = rest
        .strip_prefix('-')
        .and_then(|r| r.strip_suffix("GB"))
        .and_then(|gb| gb.parse().ok())
        .filter(|gb| (1..=64 * 1024).contains(gb))
        .ok_or_else(|| bad("1 to 65536 GB of memory"))?;
    Ok(Some((cpus, gb * 1024)))
}

impl App {
    /// A page of the servers, in hostname order (see [`Page`]).
    pub async fn servers(
        &self,
        caller: &Principal,
        limit: Option<u32>,
        page_token: Option<&str>,
    ) -> Result<Page<Host>> {
        caller.require(Permission::ServerRead)?;
        let (limit, after) = page_request(limit, page_token, "servers")?;
        let mut hosts = self
            .store
            .hosts_page(
                after.as_ref().map(|(hostname, _)| hostname.as_str()),
                limit as i64 + 1,
            )
            .await?;
        let mut next_page_token = None;
        if hosts.len() > limit {
            hosts.truncate(limit);
            next_page_token = hosts
                .last()
                .map(|h| encode_page_token(&h.hostname, &h.id, "servers"));
        }
        Ok(Page {
            items: hosts.into_iter().map(Host::from).collect(),
            next_page_token,
        })
    }

    /// A server by id or hostname.
    pub async fn server(&self, caller: &Principal, id: &str) -> Result<Host> {
        caller.require(Permission::ServerRead)?;
        self.find_server(id).await.map(Host::from)
    }

    pub(crate) async fn find_server(&self, id: &str) -> Result<HostRecord> {
        if has_nul(id) {
            return Err(Error::NotFound(format!(
                "server {} not found",
                id.escape_debug()
            )));
        }
        let host = match self.store.host(id).await? {
            Some(host) => Some(host),
            None => self.store.host_named_in_any_case(id).await?,
        };
        host.ok_or_else(|| Error::NotFound(format!("server {id} not found")))
    }

    /// Validates a server and starts the operation that registers and
    /// prepares it. With `check_mode`, validates only.
    pub async fn create_server(
        &self,
        caller: &Principal,
        mut req: CreateServer,
    ) -> Result<Operation> {
        caller.require(Permission::ServerCreate)?;
        let project_id = self.workspace_of(caller, req.workspace.as_deref()).await?;
        req.server_id = new_id("host");
        self.new_host(&req)?;
        if let Some(existing) = self.store.host_named_in_any_case(&req.hostname).await?
            && !matches!(
                existing.status,
                HostStatus::Decommissioned | HostStatus::InitFail
            )
        {
            return Err(self.name_taken(&req.hostname).await?);
        }
        let op = NewOperation {
            id: crate::new_uuid(),
            project_id,
            kind: OperationKind::ServerCreate,
            resource_id: Some(req.server_id.clone()),
            params: serde_json::to_value(&req).unwrap_or_default(),
            created_by: caller.username.clone(),
        };
        self.store.insert_operation(&op).await?;
        // Read before the operation starts, so the answer is what was recorded.
        let recorded = self.project_operation(caller, &op.id).await?;
        self.spawn_operation(&op.id);
        Ok(recorded)
    }

    pub(crate) fn new_host(&self, req: &CreateServer) -> Result<tessera_store::NewHost> {
        let pooled = req.cpu_ranges.is_empty();
        let plan = req.plan.as_deref().map(parse_plan).transpose()?.flatten();
        let cpus = match (&req.cpus, plan) {
            _ if !pooled => None,
            (Some(list), plan) => {
                let cpus = CpuSet::parse_list(list)
                    .map_err(|e| Error::invalid("cpus", format!("cpus: {e}")))?;
                // Fewer is fine: CPUs the plan has that are kept for the
                // host itself.
                if let Some((n, _)) = plan
                    && cpus.len() > n as usize
                {
                    return Err(Error::invalid(
                        "plan",
                        format!(
                            "plan {:?} has {n} CPUs but cpus names {}",
                            req.plan.as_deref().unwrap_or_default(),
                            cpus.len()
                        ),
                    ));
                }
                Some(cpus)
            }
            (None, Some((n, _))) => Some((0..n).collect::<CpuSet>()),
            (None, None) => {
                return Err(Error::invalid(
                    "cpus",
                    "give the server's CPUs as cpus (\"0-15\"), a plan such as \"16xCPU-64GB\", or Kloigos cpu_ranges",
                ));
            }
        };
        if cpus.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(Error::invalid("cpus", "cpus must name at least one CPU"));
        }
        for (field, value) in [("provider", &req.provider), ("plan", &req.plan)] {
            if let Some(v) = value
                && (v.is_empty() || v.len() > 64 || v.chars().any(char::is_control))
            {
                return Err(Error::invalid(
                    field,
                    format!("{field} must be 1 to 64 printable characters"),
                ));
            }
        }
        if req.tags.len() > 32
            || req
                .tags
                .iter()
                .any(|t| t.is_empty() || t.len() > 64 || t.chars().any(char::is_control))
        {
            return Err(Error::invalid(
                "tags",
                "at most 32 tags of 1 to 64 printable characters",
            ));
        }
        let mut new = validate_host(
            InitServer {
                hostname: req.hostname.clone(),
                ip: req.ip_address.clone(),
                region: req.region.clone().unwrap_or_else(|| req.zone.clone()),
                zone: req.zone.clone(),
                cpu_ranges: req.cpu_ranges.clone(),
                numa_nodes: req.numa_nodes.clone(),
            },
            Registration::Native { pooled },
        )
        .map_err(|err| match err {
            // The region the client left out is its zone: a bad one is
            // the zone's fault, not a field the client never sent.
            Error::Invalid {
                field: Some("region"),
                ..
            } if req.region.is_none() => {
                Error::invalid("zone", "zone must be 1 to 64 printable characters")
            }
            other => other,
        })?;
        if let Some(cpus) = &cpus {
            let numa: CpuSet = new
                .numa_nodes
                .iter()
                .filter_map(|n| CpuSet::parse_list(n).ok())
                .fold(CpuSet::new(), |all, n| all.union(&n));
            if !numa.is_empty() && !cpus.is_subset(&numa) {
                return Err(Error::invalid(
                    "numa_nodes",
                    "numa_nodes must cover every CPU of cpus",
                ));
            }
        }
        new.id = req.server_id.clone();
        new.cpus = cpus.map(|c| c.to_string());
        new.provider = Some(req.provider.clone().unwrap_or_else(|| "tessera".into()));
        new.plan = req.plan.clone();
        // What the host is expected to have, until its agent reports.
        new.memory_mb = plan.map_or(0, |(_, mb)| mb);
        new.tags = req.tags.clone();
        new.arch = match req.arch.as_deref() {
            None => "amd64".into(),
            Some(arch @ ("amd64" | "arm64")) => arch.into(),
            Some(other) => {
                return Err(Error::invalid(
                    "arch",
                    format!("arch {:?} is not amd64 or arm64", other),
                ));
            }
        };
        Ok(new)
    }

    /// Starts deleting a server. Refused while instances run on it or
    /// compute units are held there, unless `force`, which moves its
    /// instances to other hosts and takes its units back.
    pub async fn delete_server(
        &self,
        caller: &Principal,
        id: &str,
        force: bool,
        workspace: Option<&str>,
    ) -> Result<Operation> {
        caller.require(Permission::ServerDelete)?;
        let project_id = self.workspace_of(caller, workspace).await?;
        let host = self.find_server(id).await?;
        if host.status == HostStatus::Decommissioned {
            return Err(Error::NotFound(format!("server {id} not found")));
        }
        match self
            .store
            .begin_decommission(&host.id, force, force)
            .await?
        {
            DecommissionStart::Started | DecommissionStart::AlreadyDecommissioning => {}
            DecommissionStart::AlreadyDecommissioned => {
                return Err(Error::NotFound(format!("server {id} not found")));
            }
            DecommissionStart::UnitsHeld(ids) => {
                return Err(Error::Conflict(format!(
                    "server {} has {} allocated compute unit(s) ({}); deallocate them first or delete with force",
                    host.hostname,
                    ids.len(),
                    ids.join(", ")
                )));
            }
            DecommissionStart::InstancesPresent(ids) => {
                return Err(Error::Conflict(format!(
                    "server {} runs {} instance(s) ({}); delete them first",
                    host.hostname,
                    ids.len(),
                    ids.join(", ")
                )));
            }
        }
        self.placement.refresh_host(&self.store, &host.id).await?;
        let op = NewOperation {
            id: crate::new_uuid(),
            project_id,
            kind: OperationKind::ServerDelete,
            resource_id: Some(host.id.clone()),
            params: serde_json::json!({ "server_id": host.id, "force": force }),
            created_by: caller.username.clone(),
        };
        self.store.insert_operation(&op).await?;
        self.publish("host", &host.id, None, HostStatus::Decommissioning.as_str());
        // Read before the operation starts, so the answer is what was recorded.
        let recorded = self.project_operation(caller, &op.id).await?;
        self.spawn_operation(&op.id);
        Ok(recorded)
    }

    /// Drives `server_create`: `registered` (the host is recorded), then the
    /// host is prepared by its agent; the operation ends with the host's
    /// outcome.
    pub(crate) async fn run_server_create(&self, run: &mut Run) -> Result<()> {
        let req: CreateServer = run.params()?;
        if req.check_mode {
            let result =
                serde_json::json!({ "check_mode": true, "valid": true, "hostname": req.hostname });
            self.store
                .finish_operation(&run.op.id, OperationStatus::Completed, Some(&result), None)
                .await?;
            return Ok(());
        }
        if self.cancel_requested(run).await? {
            if !run.done(&Step::Registered) {
                self.store
                    .finish_operation(
                        &run.op.id,
                        OperationStatus::Cancelled,
                        None,
                        Some("cancelled before the server was registered"),
                    )
                    .await?;
                return Ok(());
            }
            // Registered already: retired again, unless it is ready and
            // holds something already (then the cancel came too late).
            if let DecommissionStart::Started
            | DecommissionStart::AlreadyDecommissioning
            | DecommissionStart::AlreadyDecommissioned = self
                .store
                .begin_decommission(&req.server_id, false, false)
                .await?
            {
                self.placement
                    .refresh_host(&self.store, &req.server_id)
                    .await?;
                let app = self.clone();
                let id = req.server_id.clone();
                self.tasks.spawn(async move { app.drive_host(&id).await });
                self.store
                    .finish_operation(
                        &run.op.id,
                        OperationStatus::Cancelled,
                        None,
                        Some("cancelled once the server was registered: it is retired again"),
                    )
                    .await?;
                self.publish("host", &req.server_id, None, "decommissioning");
                return Ok(());
            }
        }
        if !run.done(&Step::Registered) {
            if self.store.host(&req.server_id).await?.is_none() {
                let new = match self.new_host(&req) {
                    Ok(new) => new,
                    Err(err) => {
                        self.store
                            .finish_operation(
                                &run.op.id,
                                OperationStatus::Failed,
                                None,
                                Some(&err.to_string()),
                            )
                            .await?;
                        return Ok(());
                    }
                };
                if !self.store.insert_host(&new).await? {
                    let why = self.name_taken(&req.hostname).await?.to_string();
                    self.store
                        .finish_operation(&run.op.id, OperationStatus::Failed, None, Some(&why))
                        .await?;
                    return Ok(());
                }
                tracing::info!(hostname = %req.hostname, id = %req.server_id, "server registered");
                self.publish(
                    "host",
                    &req.server_id,
                    None,
                    HostStatus::Initializing.as_str(),
                );
            }
            self.record_step(run, Step::Registered).await?;
        }
        self.placement
            .refresh_host(&self.store, &req.server_id)
            .await?;
        let host = self.prepared_host(&req.server_id).await?;
        let Some(host) = host else {
            self.store
                .finish_operation(
                    &run.op.id,
                    OperationStatus::Failed,
                    None,
                    Some("the server was removed"),
                )
                .await?;
            return Ok(());
        };
        match host.status {
            HostStatus::Ready => {
                let result = serde_json::json!({
                    "server_id": host.id,
                    "hostname": host.hostname,
                    "ip_address": host.ip,
                });
                self.store
                    .finish_operation(&run.op.id, OperationStatus::Completed, Some(&result), None)
                    .await?;
                self.publish("host", &host.id, None, host.status.as_str());
                Ok(())
            }
            HostStatus::InitFail => {
                let why = host
                    .status_detail
                    .unwrap_or_else(|| "preparation failed".into());
                self.store
                    .finish_operation(&run.op.id, OperationStatus::Failed, None, Some(&why))
                    .await?;
                self.publish("host", &host.id, None, host.status.as_str());
                Ok(())
            }
            // Deleted before it was ready: it will not be.
            HostStatus::Decommissioning
            | HostStatus::Decommissioned
            | HostStatus::DecommissionFail => {
                let why = format!("server {} was deleted before it was ready", host.hostname);
                self.store
                    .finish_operation(&run.op.id, OperationStatus::Failed, None, Some(&why))
                    .await?;
                Ok(())
            }
            // Not prepared yet (no agent, or one still to answer): the
            // operation goes on when the host is ready.
            _ => Err(Error::Unavailable(format!(
                "server {} waits for its agent",
                host.hostname
            ))),
        }
    }

    /// Prepares a host (or waits while another task of this process does,
    /// up to the agent timeout); answers it as it then is.
    async fn prepared_host(&self, id: &str) -> Result<Option<HostRecord>> {
        let deadline = tokio::time::Instant::now() + self.config.agent_timeout;
        loop {
            self.drive_host(id).await;
            let host = self.store.host(id).await?;
            let preparing = host.as_ref().is_some_and(|h| {
                h.status == HostStatus::Initializing
                    && self
                        .in_flight
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .contains(&crate::hosts::host_work(id))
            });
            if !preparing || tokio::time::Instant::now() >= deadline {
                return Ok(host);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Drives `server_delete`: the host is retired by its agent; the
    /// operation ends with the host's outcome.
    pub(crate) async fn run_server_delete(&self, run: &mut Run) -> Result<()> {
        let id = run.op.resource_id.clone().unwrap_or_default();
        let force = serde_json::from_str::<serde_json::Value>(&run.op.params)
            .ok()
            .and_then(|p| p["force"].as_bool())
            .unwrap_or(false);
        if force {
            // Forced: its instances move elsewhere first.
            if let Err(why) = self.drain_instances(run, &id, true).await? {
                self.store.release_instances_of(&run.op.id).await?;
                let why =
                    format!("{why}; the server stays decommissioning until its instances are gone");
                self.store
                    .finish_operation(&run.op.id, OperationStatus::Failed, None, Some(&why))
                    .await?;
                return Ok(());
            }
            self.store.release_instances_of(&run.op.id).await?;
        }
        self.drive_host(&id).await;
        let Some(host) = self.store.host(&id).await? else {
            self.store
                .finish_operation(
                    &run.op.id,
                    OperationStatus::Completed,
                    Some(&serde_json::json!({ "server_id": id })),
                    None,
                )
                .await?;
            return Ok(());
        };
        match host.status {
            HostStatus::Decommissioned => {
                let mut result =
                    serde_json::json!({ "server_id": host.id, "hostname": host.hostname });
                // Retired without its agent: what was left behind, the
                // old copies of instances moved meanwhile among it.
                let mut said: Vec<String> = host.status_detail.iter().cloned().collect();
                // From the step log: this run may be a resumed one.
                let left_behind: Vec<String> = run
                    .steps
                    .moved_without_source()
                    .iter()
                    .map(|id| id.to_string())
                    .collect();
                if !left_behind.is_empty() {
                    said.push(format!(
                        "instance(s) {} moved to other servers without this one letting them go",
                        left_behind.join(", ")
                    ));
                }
                if !said.is_empty() {
                    result["detail"] = said.join("; ").into();
                }
                self.store
                    .finish_operation(&run.op.id, OperationStatus::Completed, Some(&result), None)
                    .await?;
            }
            HostStatus::DecommissionFail => {
                let why = host
                    .status_detail
                    .clone()
                    .unwrap_or_else(|| "decommission failed".into());
                self.store
                    .finish_operation(&run.op.id, OperationStatus::Failed, None, Some(&why))
                    .await?;
            }
            _ => {
                return Err(Error::Unavailable(format!(
                    "server {} is still being retired",
                    host.hostname
                )));
            }
        }
        self.publish("host", &host.id, None, host.status.as_str());
        Ok(())
    }
}
