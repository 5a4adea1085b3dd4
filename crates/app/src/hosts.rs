//! Hosts: registration (Kloigos `init_server`), preparation through the
//! host's agent, and decommissioning.
//!
//! A host's status in the store is its desired state: INITIALIZING means
//! "prepare me", DECOMMISSIONING "retire me". Requests only record that and
//! start the work; [`crate::reconciler`] finishes whatever a crash or a
//! missing agent left undone, so every step here is safe to run twice.

use crate::error::{Error, Result};
use crate::{App, InFlight};
use rand::RngCore;
use std::net::IpAddr;
use tessera_agent_api::{AgentError, HostSpec, UnitSpec};
use tessera_core::ports::{PortRange, unit_port_ranges};
use tessera_core::range::parse_ranges;
use tessera_core::status::HostStatus;
use tessera_core::{ComputeId, CpuRange, CpuSet, HostId};
use tessera_store::{HostRecord, InstanceFilter, NewHost, NewUnit, UnitFilter, UnitRecord};

/// A host to register.
#[derive(Clone, Debug)]
pub struct InitServer {
    pub hostname: String,
    pub ip: String,
    pub region: String,
    pub zone: String,
    pub cpu_ranges: Vec<String>,
    /// Each NUMA node's CPUs in Linux list format (`"0-31,64-95"`).
    pub numa_nodes: Vec<String>,
}

/// A host of the fleet, as the app speaks of it.
#[derive(Clone, Debug)]
pub struct Host {
    pub id: HostId,
    pub hostname: String,
    pub ip: String,
    pub region: String,
    pub zone: String,
    pub status: HostStatus,
    /// Why it is in its status, when it failed.
    pub status_detail: Option<String>,
    /// All its CPUs: a pooled host's, or those of its compute units.
    pub cpus: CpuSet,
    /// The Kloigos ranges of its compute units, for a host carved into
    /// them; empty for a pooled host.
    pub cpu_ranges: Vec<String>,
    pub memory_mb: u64,
    pub provider: Option<String>,
    pub plan: Option<String>,
    pub tags: Vec<String>,
    /// `false` while its agent misses its heartbeats.
    pub reachable: bool,
    /// Whether it runs instances (not when its agent runs the `unit`
    /// driver, for Kloigos units only).
    pub runs_instances: bool,
    /// Its CPU architecture: `amd64`, `arm64`.
    pub arch: String,
    /// What isolation its agent gives instances, as it last said.
    pub isolation: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<HostRecord> for Host {
    fn from(r: HostRecord) -> Host {
        let cpus = match r.cpus.as_deref() {
            Some(list) => CpuSet::parse_list(list).unwrap_or_default(),
            None => r
                .cpu_ranges
                .iter()
                .filter_map(|range| range.parse::<CpuRange>().ok())
                .fold(CpuSet::new(), |all, range| all.union(&range.cpus())),
        };
        Host {
            id: HostId::new(r.id),
            hostname: r.hostname,
            ip: r.ip,
            region: r.region,
            zone: r.zone,
            status: r.status,
            status_detail: r.status_detail,
            cpus,
            cpu_ranges: r.cpu_ranges,
            memory_mb: u64::try_from(r.memory_mb).unwrap_or(0),
            provider: r.provider,
            plan: r.plan,
            tags: r.tags,
            reachable: r.reachable,
            runs_instances: r.runs_instances,
            arch: r.arch,
            isolation: r.isolation,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// How a decommission request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Decommission {
    Started,
    AlreadyDone,
}

/// How retiring a host through its agent ended.
enum Retirement {
    /// Retired; what to say of it (retired without its agent).
    Done(Option<String>),
    /// Not retired: why.
    Failed(String),
    /// Not done yet: asked again.
    Later(String),
}

/// Why a host's preparation did not finish.
enum Unprepared {
    /// Not reached or not answered in time: asked again later.
    Later(String),
    /// The host said no (or lacks what it was registered with).
    Refused(String),
}

impl App {
    /// Registers a host and starts preparing it; its units become FREE when
    /// the host side is done.
    pub async fn init_server(&self, req: InitServer) -> Result<Host> {
        let new = validate_host(req, Registration::Kloigos)?;
        if !self.store.insert_host(&new).await? {
            return Err(self.name_taken(&new.hostname).await?);
        }
        tracing::info!(hostname = %new.hostname, id = %new.id, "server registered");
        let host = self
            .store
            .host(&new.id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("server {} vanished", new.hostname)))?;
        self.placement.refresh_host(&self.store, &host.id).await?;
        let app = self.clone();
        let id = host.id.clone();
        self.tasks.spawn(async move { app.drive_host(&id).await });
        Ok(host.into())
    }

    /// The conflict of registering `hostname` while a host of that name,
    /// in any case, is registered.
    pub(crate) async fn name_taken(&self, hostname: &str) -> Result<Error> {
        Ok(Error::Conflict(
            match self.store.host_named_in_any_case(hostname).await? {
                Some(host) if host.hostname == hostname => format!(
                    "server {hostname} is already registered (status {}); decommission it first",
                    host.status
                ),
                Some(host) => format!(
                    "server {} is already registered (status {}), and host names know no \
                     case; decommission it first",
                    host.hostname, host.status
                ),
                None => format!("server {hostname} was registered meanwhile; try again"),
            },
        ))
    }

    /// Retires a host. Refused while units are held unless `force`, which
    /// takes them back first. Answers once the host takes no new units; the
    /// host-side work goes on in the background.
    pub async fn decommission_server(&self, hostname: &str, force: bool) -> Result<Decommission> {
        let host = match crate::units::has_nul(hostname) {
            true => None,
            false => self.store.host_named_in_any_case(hostname).await?,
        };
        let host = host.ok_or_else(|| {
            Error::NotFound(format!("Server {} not found", hostname.escape_debug()))
        })?;
        // Kloigos moves no instance: a host running some is not retired,
        // forced or not.
        match self
            .store
            .begin_decommission(&host.id, force, false)
            .await?
        {
            tessera_store::DecommissionStart::Started => {}
            tessera_store::DecommissionStart::AlreadyDecommissioning => {}
            tessera_store::DecommissionStart::AlreadyDecommissioned => {
                return Ok(Decommission::AlreadyDone);
            }
            tessera_store::DecommissionStart::InstancesPresent(ids) => {
                return Err(Error::Conflict(format!(
                    "server {hostname} runs {} instance(s) ({}); delete them first, or delete \
                     the server with force through the native API, which moves them",
                    ids.len(),
                    ids.join(", ")
                )));
            }
            tessera_store::DecommissionStart::UnitsHeld(ids) => {
                return Err(Error::Conflict(format!(
                    "server {hostname} has {} allocated compute unit(s) ({}); deallocate them \
                     first or decommission with ?force=true",
                    ids.len(),
                    ids.join(", ")
                )));
            }
        }
        tracing::info!(hostname, force, "server decommissioning");
        self.placement.refresh_host(&self.store, &host.id).await?;
        let app = self.clone();
        let id = host.id.clone();
        self.tasks.spawn(async move { app.drive_host(&id).await });
        Ok(Decommission::Started)
    }

    /// Does the host-side work a host's status asks for. Safe to run twice,
    /// and a no-op while another task in this process drives the same host.
    pub(crate) async fn drive_host(&self, id: &str) {
        let Some(_guard) = InFlight::enter(&self.in_flight, host_work(id)) else {
            return;
        };
        if let Err(err) = self.drive_host_once(id).await {
            tracing::warn!(host = id, error = %err, "host work did not finish; will retry");
        }
    }

    async fn drive_host_once(&self, id: &str) -> Result<()> {
        let Some(host) = self.store.host(id).await? else {
            return Ok(());
        };
        match host.status {
            HostStatus::Initializing => self.prepare(&host).await,
            HostStatus::Decommissioning => self.retire(&host).await,
            _ => Ok(()),
        }
    }

    async fn prepare(&self, host: &HostRecord) -> Result<()> {
        let spec = self.host_spec(host).await?;
        let Some(agent) = self.agent_for(&spec).await? else {
            tracing::debug!(hostname = %host.hostname, "server waits for its agent");
            return Ok(());
        };
        let outcome = async {
            let report = self.preparation_call(agent.report()).await?;
            let missing = spec.cpus.difference(&report.cpus);
            if !missing.is_empty() {
                return Err(Unprepared::Refused(format!(
                    "CPUs {missing} of the registered ranges are not on the host (it has {})",
                    report.cpus
                )));
            }
            self.preparation_call(agent.prepare_host(&spec)).await?;
            self.remember_agent(&spec.id, agent.clone());
            Ok(report)
        }
        .await;
        match outcome {
            // An agent that has registered but is slow to answer or out of
            // reach a moment (a busy control plane or store, a fleet
            // joining at once) has not failed: the host stays
            // INITIALIZING and the reconciler asks again. Only an answer
            // that says no fails it.
            Err(Unprepared::Later(why)) => {
                tracing::warn!(hostname = %host.hostname, %why, "server preparation not done; will retry");
                return Ok(());
            }
            Ok(report) => {
                let memory = i64::try_from(report.memory_mb).unwrap_or(i64::MAX);
                self.store.set_host_memory(&host.id, memory).await?;
                let ready = self
                    .store
                    .transition_host(
                        &host.id,
                        &[HostStatus::Initializing],
                        HostStatus::Ready,
                        None,
                    )
                    .await?;
                if ready {
                    tracing::info!(hostname = %host.hostname, "server ready");
                    // In the view before its registration may end: one that
                    // ended first answered "completed" while this process
                    // still could not place there.
                    self.placement.refresh_host(&self.store, &host.id).await?;
                    // A registration that gave up waiting for this host
                    // goes on now.
                    self.resume_operations_on("server_create", &host.id).await?;
                }
            }
            Err(Unprepared::Refused(why)) => {
                tracing::warn!(hostname = %host.hostname, error = %why, "server preparation failed");
                self.store
                    .transition_host(
                        &host.id,
                        &[HostStatus::Initializing],
                        HostStatus::InitFail,
                        Some(&why),
                    )
                    .await?;
            }
        }
        self.placement.refresh_host(&self.store, &host.id).await
    }

    /// One call of a host's preparation, bounded by the agent timeout.
    async fn preparation_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, AgentError>>,
    ) -> Result<T, Unprepared> {
        match tokio::time::timeout(self.config.agent_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(AgentError::Failed(why))) => Err(Unprepared::Refused(why)),
            Ok(Err(err @ AgentError::Unreachable(_))) => Err(Unprepared::Later(err.to_string())),
            Err(_) => Err(Unprepared::Later(format!(
                "not answered within {:?}",
                self.config.agent_timeout
            ))),
        }
    }

    async fn retire(&self, host: &HostRecord) -> Result<()> {
        let staying = self
            .store
            .instances(&InstanceFilter {
                host_id: Some(host.id.clone()),
                ..InstanceFilter::default()
            })
            .await?;
        let holding = self.store.instance_holders_on(&host.id).await?;
        if !staying.is_empty() || !holding.is_empty() {
            // Retiring would take their CPUs: wait until they have left.
            tracing::debug!(hostname = %host.hostname, instances = staying.len(), "server waits for its instances to leave");
            return Ok(());
        }
        let spec = self.host_spec(host).await?;
        let outcome = match self.agent_for(&spec).await? {
            // A host that never had an agent has nothing to undo.
            None => Retirement::Done(None),
            Some(agent) => self.retire_through(host, &spec, agent).await?,
        };
        let (to, detail) = match &outcome {
            Retirement::Later(why) => {
                tracing::warn!(hostname = %host.hostname, %why, "server retirement not done; will retry");
                return Ok(());
            }
            Retirement::Done(detail) => (HostStatus::Decommissioned, detail.as_deref()),
            Retirement::Failed(why) => (HostStatus::DecommissionFail, Some(why.as_str())),
        };
        self.store
            .transition_host(&host.id, &[HostStatus::Decommissioning], to, detail)
            .await?;
        tracing::info!(hostname = %host.hostname, status = %to, detail, "server decommission ended");
        if to == HostStatus::Decommissioned {
            // Its agent, if it had one, is done: the store forgot it with
            // the transition (its credential, its desired state); so does
            // this process.
            self.forget_agent(&HostId::new(host.id.as_str()));
            self.liveness.forget(&host.hostname);
        }
        // A registration still waiting for this host ends now (else when
        // its operation next looks).
        if let Err(err) = self.resume_operations_on("server_create", &host.id).await {
            tracing::warn!(hostname = %host.hostname, error = %err, "cannot resume the server's registration");
        }
        self.placement.refresh_host(&self.store, &host.id).await
    }

    /// Retires a host through its agent: its held units given back, then
    /// the agent undoes what it made. An agent that does not answer (it
    /// missed its heartbeats, or let the agent timeout pass) fails the
    /// retirement, unless it was forced: then the host goes without it. An
    /// agent still heard from that is "unreachable" was not reached for
    /// another reason (the store, a moment): asked again later.
    async fn retire_through(
        &self,
        host: &HostRecord,
        spec: &HostSpec,
        agent: std::sync::Arc<dyn tessera_agent_api::HostAgent>,
    ) -> Result<Retirement> {
        let unwiped = match self.release_held_units(&host.id).await {
            Ok(unwiped) => unwiped,
            Err(why) => return Ok(Retirement::Failed(why)),
        };
        // Units given back without their wipe: said whatever comes next.
        let unwiped = match unwiped.is_empty() {
            true => String::new(),
            false => format!(
                "; compute unit(s) {} went back to the pool without being wiped",
                unwiped.join(", ")
            ),
        };
        let retired =
            tokio::time::timeout(self.config.agent_timeout, agent.retire_host(spec)).await;
        let (silent, unreachable) = match retired {
            Ok(Ok(())) => {
                return Ok(Retirement::Done(
                    (!unwiped.is_empty()).then(|| format!("retired{unwiped}")),
                ));
            }
            Ok(Err(AgentError::Failed(why))) => return Ok(Retirement::Failed(why)),
            Ok(Err(err @ AgentError::Unreachable(_))) => (err.to_string(), true),
            Err(_) => (
                crate::HostCallError::Timeout(self.config.agent_timeout).to_string(),
                false,
            ),
        };
        let Some(now) = self.store.host(&host.id).await? else {
            return Ok(Retirement::Done(None));
        };
        if unreachable && now.reachable {
            return Ok(Retirement::Later(silent));
        }
        // An agent gone for good (or never done preparing) would keep its
        // host in the fleet for ever: forced, the host goes without it.
        Ok(match now.decommission_forced {
            true => Retirement::Done(Some(format!(
                "retired without its agent ({silent}): what the agent made on the machine is \
                 still there{unwiped}"
            ))),
            false => Retirement::Failed(format!(
                "{silent}; delete the server with force to retire it without its agent"
            )),
        })
    }

    /// Gives back every unit still held on a host being retired (a forced
    /// decommission) the ordinary way, so their state says what is true.
    /// Units instances hold are theirs: they go when their instances leave.
    /// Units that move meanwhile (an allocation settling) are looked at
    /// again; any still held after a few rounds fail the decommission.
    /// A unit whose host's agent is gone for good (see
    /// [`App::retiring_without_agent`]) goes back without its wipe: what
    /// its tenant left there stays on a machine that leaves the fleet.
    /// Answers those.
    async fn release_held_units(&self, host_id: &str) -> Result<Vec<String>, String> {
        let mut unwiped = Vec::new();
        for _ in 0..5 {
            let held = self.held_units(host_id).await.map_err(|e| e.to_string())?;
            if held.is_empty() {
                return Ok(unwiped);
            }
            for unit in held {
                let Some(unit) = self.begin_release(unit).await.map_err(|e| e.to_string())? else {
                    continue;
                };
                // Not wiped: given back only when the agent is gone for
                // good (it missed its heartbeats, or, the retirement
                // forced, the wipe did not finish in time).
                let gone = self
                    .retiring_without_agent(host_id, false)
                    .await
                    .map_err(|e| e.to_string())?;
                if !gone {
                    let Err(err) = self.release(&unit).await else {
                        continue;
                    };
                    let silent = matches!(err, Error::HostTimeout(_) | Error::Unavailable(_));
                    if !self
                        .retiring_without_agent(host_id, silent)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        return Err(err.to_string());
                    }
                }
                if self
                    .store
                    .release_unit(
                        &unit.compute_id,
                        unit.generation,
                        unit.project_id.as_deref(),
                    )
                    .await
                    .map_err(|e| e.to_string())?
                {
                    let spec = unit_spec(&unit).map_err(|e| e.to_string())?;
                    self.placement
                        .release_unit(&HostId::new(host_id), &spec.compute_id, spec.cpus);
                    tracing::warn!(compute_id = %unit.compute_id, "unit given back without its wipe: its host's agent is gone");
                    unwiped.push(unit.compute_id.clone());
                }
            }
        }
        let held = self.held_units(host_id).await.map_err(|e| e.to_string())?;
        match held.is_empty() {
            true => Ok(unwiped),
            false => Err(format!(
                "compute units still held: {}",
                held.iter()
                    .map(|u| u.compute_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Whether a forced retirement of `host_id` goes on without its agent:
    /// it was forced, and the agent missed its heartbeats, or a call to it
    /// went `silent` (see [`HostCallError::is_silence`]). An agent still
    /// heard from that answered no is not gone: its answer stands.
    pub(crate) async fn retiring_without_agent(&self, host_id: &str, silent: bool) -> Result<bool> {
        let Some(host) = self.store.host(host_id).await? else {
            return Ok(false);
        };
        Ok(host.status == HostStatus::Decommissioning
            && host.decommission_forced
            && (!host.reachable || silent))
    }

    async fn held_units(&self, host_id: &str) -> Result<Vec<UnitRecord>> {
        let filter = UnitFilter {
            host_id: Some(host_id.to_string()),
            ..UnitFilter::default()
        };
        let units = self.store.units(&filter).await?;
        Ok(units
            .into_iter()
            .filter(|u| u.status.is_held() && u.instance_id.is_none())
            .collect())
    }

    pub(crate) async fn host_spec(&self, host: &HostRecord) -> Result<HostSpec> {
        let filter = UnitFilter {
            host_id: Some(host.id.clone()),
            ..UnitFilter::default()
        };
        let units = self
            .store
            .units(&filter)
            .await?
            .iter()
            .map(unit_spec)
            .collect::<Result<Vec<_>>>()?;
        let cpus = match &host.cpus {
            Some(list) => CpuSet::parse_list(list).unwrap_or_default(),
            None => units
                .iter()
                .fold(CpuSet::new(), |all, u| all.union(&u.cpus)),
        };
        Ok(HostSpec {
            id: HostId::new(host.id.as_str()),
            hostname: host.hostname.clone(),
            ip: host.ip.clone(),
            cpus,
            numa_nodes: crate::placement::numa_nodes(host),
            units,
            memory_mb: u64::try_from(host.memory_mb).ok().filter(|m| *m > 0),
        })
    }
}

/// The in-flight key of the host-side work on host `id`.
pub(crate) fn host_work(id: &str) -> String {
    format!("host:{id}")
}

/// What an agent needs to know of a unit.
pub(crate) fn unit_spec(unit: &UnitRecord) -> Result<UnitSpec> {
    let corrupt = |what: &str| Error::corrupt(format!("unit {}: {what}", unit.compute_id));
    let range: CpuRange = unit.cpu_range.parse().map_err(|_| corrupt("cpu_range"))?;
    let (start, end) = unit
        .ports_range
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| corrupt("ports_range"))?;
    Ok(UnitSpec {
        compute_id: ComputeId::new(unit.compute_id.as_str()),
        user: range.unit_name(),
        cpus: range.cpus(),
        ports: PortRange { start, end },
        generation: unit.generation,
    })
}

/// How a host being registered is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Registration {
    /// Kloigos `init_server`: units, and an address.
    Kloigos,
    /// The native API: a pool unless `cpu_ranges` are given, and an
    /// address that may be left for its agent to report.
    Native { pooled: bool },
}

/// Checks a server's address: an IP address a host can have (not
/// `0.0.0.0`, `::`, a broadcast or multicast one), or a host name, whose
/// last label is not all digits (`256.1.1.1` and `1.2.3` are mistyped
/// addresses, not names).
fn check_address(ip: &str) -> Result<()> {
    let refused = |why: &str| Err(Error::invalid("ip", format!("{:?} {why}", ip)));
    match ip.parse::<IpAddr>() {
        Ok(addr) if addr.is_unspecified() || addr.is_multicast() => {
            refused("is not an address a server can have")
        }
        Ok(IpAddr::V4(v4)) if v4.is_broadcast() => refused("is not an address a server can have"),
        Ok(_) => Ok(()),
        Err(_) => {
            let numeric = ip
                .trim_end_matches('.')
                .rsplit('.')
                .next()
                .is_some_and(|label| {
                    !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit())
                });
            match numeric || validate_hostname(ip).is_err() {
                true => refused("is neither an IP address nor a host name"),
                false => Ok(()),
            }
        }
    }
}

/// Checks a host to register. Unless pooled, its CPUs are Kloigos
/// `cpu_ranges` carved into units, which must be given.
pub(crate) fn validate_host(req: InitServer, how: Registration) -> Result<NewHost> {
    validate_host_all(req, how).map_err(|mut problems| problems.swap_remove(0))
}

/// Every problem of a host to register through Kloigos (`init_server`),
/// in the order of its fields; none when it may be registered.
pub fn host_problems(req: &InitServer) -> Vec<Error> {
    validate_host_all(req.clone(), Registration::Kloigos)
        .err()
        .unwrap_or_default()
}

/// [`validate_host`], with every problem found, not the first alone.
fn validate_host_all(
    req: InitServer,
    how: Registration,
) -> std::result::Result<NewHost, Vec<Error>> {
    let mut problems = Vec::new();
    let mut note = |checked: Result<()>| {
        if let Err(err) = checked {
            problems.push(err);
        }
    };
    let pooled = how == Registration::Native { pooled: true };
    // A server registered through the native API may come without an
    // address: it takes the one its agent reports when it joins.
    let unknown = matches!(how, Registration::Native { .. }) && req.ip.is_empty();
    if !unknown {
        note(check_address(&req.ip));
    }
    for (field, value) in [("region", &req.region), ("zone", &req.zone)] {
        if value.trim().is_empty()
            || value.chars().count() > 64
            || value.chars().any(char::is_control)
        {
            note(Err(Error::invalid(
                field,
                format!("{field} must be 1 to 64 printable characters"),
            )));
        }
    }
    let ranges = match pooled && req.cpu_ranges.is_empty() {
        true => Vec::new(),
        false => parse_ranges(&req.cpu_ranges).unwrap_or_else(|e| {
            note(Err(Error::invalid("cpu_ranges", e.to_string())));
            Vec::new()
        }),
    };
    let ports = unit_port_ranges(&ranges).unwrap_or_else(|e| {
        note(Err(Error::invalid("cpu_ranges", e.to_string())));
        Vec::new()
    });
    let mut numa_seen = CpuSet::new();
    let mut numa_nodes = Vec::with_capacity(req.numa_nodes.len());
    for (i, node) in req.numa_nodes.iter().enumerate() {
        let cpus = match CpuSet::parse_list(node) {
            Ok(cpus) => cpus,
            Err(e) => {
                note(Err(Error::invalid(
                    "numa_nodes",
                    format!("NUMA node {i}: {e}"),
                )));
                break;
            }
        };
        if cpus.is_empty() || !cpus.is_disjoint(&numa_seen) {
            note(Err(Error::invalid(
                "numa_nodes",
                format!("NUMA node {i} ({node:?}) is empty or shares CPUs with an earlier node"),
            )));
            break;
        }
        numa_seen = numa_seen.union(&cpus);
        numa_nodes.push(cpus.to_string());
    }
    note(validate_hostname(&req.hostname));
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut id = [0u8; 8];
    rand::rng().fill_bytes(&mut id);
    let units = ranges
        .iter()
        .zip(&ports)
        .map(|(range, ports)| NewUnit {
            compute_id: ComputeId::for_unit(&req.hostname, range).to_string(),
            cpu_range: range.to_string(),
            cpu_list: range.cpus().to_list(),
            cpu_count: i64::from(range.cpu_count()),
            ports_range: ports.to_string(),
        })
        .collect();
    Ok(NewHost {
        id: format!("host-{}", hex::encode(id)),
        hostname: req.hostname,
        ip: req.ip,
        region: req.region,
        zone: req.zone,
        cpu_ranges: ranges.iter().map(ToString::to_string).collect(),
        numa_nodes,
        memory_mb: 0,
        units,
        cpus: None,
        provider: None,
        plan: None,
        tags: Vec::new(),
        arch: "amd64".into(),
    })
}

/// A DNS name: labels of letters, digits and inner hyphens, dot-separated.
pub(crate) fn validate_hostname(name: &str) -> Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() <= 253 && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(Error::invalid(
            "hostname",
            format!(
                "{name:?} is not a valid host name (letters, digits, inner hyphens and dots, at most 253 characters)"
            ),
        ))
    }
}
