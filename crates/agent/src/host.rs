//! The host an agent runs on, as its drivers make it: applies one object of
//! the desired state and answers what came of it.
//!
//! - `unit`: Kloigos units only.
//! - `container`: Kloigos units, and instances as containers.
//! - `sim`: everything simulated, in memory and under the state directory.
//!
//! The design decision: instances and volumes go through one
//! [`InstanceRuntime`], whichever driver runs them. The container driver's
//! is made at start-up; the simulated host's is the one the control plane
//! names in its `Host` object, so it exists only once that has arrived.
//! Adopting and stopping unknown instances at start-up concern the
//! start-up runtime only: a simulated host keeps nothing across restarts.
//!
//! [`LocalHost`] is also a [`HostAgent`], the contract the control plane
//! drives hosts through, so what the agent does for its desired state and
//! what an in-process caller asks (sessions, observations) take the same
//! paths.

use crate::drivers::container::{ContainerConfig, ContainerDriver};
use crate::drivers::sim::{SimConfig, SimFleet, SimHost};
use crate::drivers::unit::{UnitConfig, UnitDriver};
use crate::drivers::{InstanceRuntime, Session, SessionRequest};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use tessera_agent_api::protocol::{Desired, InstanceState, Outcome};
use tessera_agent_api::{
    AgentError, HostAgent, HostReport, HostScript, HostSpec, InstanceObservation, InstanceReport,
    InstanceSpec, ScriptOutcome, UnitSpec, VolumeReport, VolumeSpec,
};
use tessera_core::CpuSet;

/// Which driver realises instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverKind {
    Unit,
    Container,
    Sim,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Unit => "unit",
            DriverKind::Container => "container",
            DriverKind::Sim => "sim",
        }
    }
}

impl std::str::FromStr for DriverKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unit" => Ok(DriverKind::Unit),
            "container" => Ok(DriverKind::Container),
            "sim" => Ok(DriverKind::Sim),
            "vm" => Err("the vm driver is not built yet; use unit, container or sim".into()),
            other => Err(format!(
                "driver {other:?} is not one of unit, container, sim"
            )),
        }
    }
}

/// How the drivers are set up.
#[derive(Clone, Debug)]
pub struct HostConfig {
    pub hostname: String,
    pub state_dir: PathBuf,
    pub driver: DriverKind,
    /// Prepended to unit users' names (several agents on one machine).
    pub user_prefix: String,
    pub bridge: String,
    pub subnet: String,
    pub ssh_port_base: u16,
    /// The resolvers instances' DNS goes to (empty: the host's own).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// Run instances as the host's root where they cannot have user
    /// namespaces of their own.
    pub allow_privileged: bool,
    /// Destinations instances may never reach (IPv4 CIDRs).
    pub egress_denied: Vec<String>,
    /// How images the catalog names by reference are pulled.
    pub registry: crate::drivers::container::PullOptions,
    /// How many times the disk's free space instances' disks may promise.
    pub disk_overcommit: f64,
    /// CPUs kept for the host itself (not in its [`HostAgent::report`]).
    pub reserved_cpus: CpuSet,
}

/// The host's instance runtime, whichever driver it is.
enum Runtime<'a> {
    /// Made at start-up (the container driver).
    Local(&'a dyn InstanceRuntime),
    /// The simulated host the control plane named.
    Sim(Arc<SimHost>),
}

impl<'a> std::ops::Deref for Runtime<'a> {
    type Target = dyn InstanceRuntime + 'a;

    fn deref(&self) -> &Self::Target {
        match self {
            Runtime::Local(runtime) => *runtime,
            Runtime::Sim(host) => host.as_ref(),
        }
    }
}

pub struct LocalHost {
    config: HostConfig,
    units: Option<UnitDriver>,
    /// What runs instances, where the driver made it at start-up (the
    /// container driver); `None` on a unit-only host and under `sim`.
    instances: Option<Box<dyn InstanceRuntime>>,
    sim: Option<SimFleet>,
    /// The simulated host (its units, scripts and, as an
    /// [`InstanceRuntime`], its instances), once the control plane has said
    /// what it is.
    sim_host: Mutex<Option<Arc<SimHost>>>,
    /// Preparing or retiring the host excludes every other change: a unit
    /// wiped or an instance started while the host's users and groups are
    /// being removed would bring some back.
    gate: tokio::sync::RwLock<()>,
}

impl LocalHost {
    pub fn new(config: HostConfig) -> Result<LocalHost, AgentError> {
        let (units, instances, sim) = match config.driver {
            DriverKind::Sim => {
                let sim = SimFleet::new(SimConfig {
                    root_dir: Some(config.state_dir.join("sim-root")),
                    ..SimConfig::default()
                });
                (None, None, Some(sim))
            }
            DriverKind::Unit | DriverKind::Container => {
                let mut unit_config = UnitConfig::new(config.state_dir.clone());
                unit_config.user_prefix = config.user_prefix.clone();
                let units = UnitDriver::new(unit_config)?;
                let instances: Option<Box<dyn InstanceRuntime>> = match config.driver {
                    DriverKind::Container => {
                        Some(Box::new(ContainerDriver::new(ContainerConfig {
                            state_dir: config.state_dir.clone(),
                            image_dir: config.state_dir.join("images"),
                            bridge: config.bridge.clone(),
                            subnet: config.subnet.clone(),
                            ssh_port_base: config.ssh_port_base,
                            dns_upstreams: config.dns_upstreams.clone(),
                            allow_privileged: config.allow_privileged,
                            egress_denied: config.egress_denied.clone(),
                            registry: config.registry.clone(),
                            disk_overcommit: config.disk_overcommit,
                        })?))
                    }
                    _ => None,
                };
                (Some(units), instances, None)
            }
        };
        Ok(LocalHost {
            config,
            units,
            instances,
            sim,
            sim_host: Mutex::new(None),
            gate: tokio::sync::RwLock::new(()),
        })
    }

    /// Takes over what an earlier run of the agent left running: unit SSH
    /// endpoints and containers stay as they are.
    pub async fn adopt(&self) -> Result<(), AgentError> {
        if let Some(units) = &self.units {
            units.adopt().await?;
        }
        if let Some(instances) = &self.instances {
            instances.adopt().await?;
        }
        Ok(())
    }

    /// Stops instances this host runs that the control plane's desired
    /// state does not name (`known` holds its keys): left over from a store
    /// restored from a backup, or from a delete this host never heard of.
    /// Their CPUs may be handed out again, so they must not keep running;
    /// their disks stay for an operator to look at.
    pub async fn stop_unknown_instances(
        &self,
        known: &std::collections::HashSet<String>,
    ) -> Result<(), AgentError> {
        let Some(instances) = &self.instances else {
            return Ok(());
        };
        for instance in instances.list().await? {
            let key = tessera_agent_api::protocol::instance_key(&instance.id);
            if instance.running && !known.contains(&key) {
                tracing::warn!(id = %instance.id, "stopping an instance the control plane does not know");
                instances.stop(&instance.id).await?;
            }
        }
        Ok(())
    }

    /// What isolation this host's instances get (see
    /// [`InstanceRuntime::isolation`]).
    pub fn isolation(&self) -> Option<String> {
        self.instances
            .as_ref()
            .and_then(|driver| driver.isolation())
    }

    /// Images present on the host; `None` for a driver that runs no image
    /// of its own (any instance's image will do).
    pub fn images(&self) -> Option<Vec<String>> {
        match self.config.driver {
            DriverKind::Container => Some(
                crate::drivers::container::list_images(&self.config.state_dir.join("images"))
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }

    /// Makes one object match its desired state.
    pub async fn apply(&self, desired: &Desired) -> Result<Outcome, AgentError> {
        let _exclusive;
        let _shared;
        match desired {
            Desired::Host { .. } => _exclusive = self.gate.write().await,
            _ => _shared = self.gate.read().await,
        }
        if let Some(sim) = &self.sim {
            return self.apply_sim(sim, desired).await;
        }
        match desired {
            Desired::Host { spec, retired } => {
                let units = self.units()?;
                match retired {
                    false => units.prepare(spec).await?,
                    true => units.retire(spec).await?,
                }
                Ok(Outcome::Done)
            }
            Desired::Unit {
                unit,
                ssh_public_key: Some(key),
            } => self
                .units()?
                .activate(unit, key)
                .await
                .map(|()| Outcome::Done),
            Desired::Unit {
                unit,
                ssh_public_key: None,
            } => self.units()?.release(unit).await.map(|()| Outcome::Done),
            Desired::Instance { spec, state } => {
                self.apply_instance(self.instances.as_deref(), spec, *state)
                    .await
            }
            Desired::Script { script } => {
                let outcome =
                    crate::script::run(script, std::path::Path::new("/"), &self.config.hostname)
                        .await?;
                Ok(Outcome::Script { outcome })
            }
            Desired::Volume { spec, present } => {
                self.apply_volume(self.instances.as_deref(), spec, *present)
                    .await
            }
        }
    }

    /// The host's instance runtime: the simulated host once prepared, or
    /// the one made at start-up; a unit-only host has none.
    fn runtime(&self) -> Result<Runtime<'_>, AgentError> {
        if self.sim.is_some() {
            return self.prepared_sim_host().map(Runtime::Sim);
        }
        match &self.instances {
            Some(instances) => Ok(Runtime::Local(instances.as_ref())),
            None => Err(self.units_only()),
        }
    }

    fn units_only(&self) -> AgentError {
        AgentError::Failed(format!(
            "{} runs compute units only (its agent uses the {} driver)",
            self.config.hostname,
            self.config.driver.as_str()
        ))
    }

    fn units(&self) -> Result<&UnitDriver, AgentError> {
        self.units
            .as_ref()
            .ok_or_else(|| AgentError::Failed("this host has no unit driver".into()))
    }

    async fn apply_instance(
        &self,
        runtime: Option<&dyn InstanceRuntime>,
        spec: &InstanceSpec,
        state: InstanceState,
    ) -> Result<Outcome, AgentError> {
        let Some(runtime) = runtime else {
            return match state {
                // Nothing to remove from a host that runs no instances.
                InstanceState::Absent => Ok(Outcome::Done),
                _ => Err(self.units_only()),
            };
        };
        match state {
            InstanceState::Running => {
                let exists = runtime.list().await?.iter().any(|c| c.id == spec.id);
                let report = match exists {
                    true => runtime.start(spec).await?,
                    false => runtime.create(spec).await?,
                };
                Ok(Outcome::Instance { report })
            }
            InstanceState::Stopped => runtime.stop(&spec.id).await.map(|()| Outcome::Done),
            InstanceState::Absent => runtime.delete(&spec.id).await.map(|()| Outcome::Done),
        }
    }

    async fn apply_volume(
        &self,
        runtime: Option<&dyn InstanceRuntime>,
        spec: &VolumeSpec,
        present: bool,
    ) -> Result<Outcome, AgentError> {
        let Some(runtime) = runtime else {
            return match present {
                false => Ok(Outcome::Done),
                true => Err(AgentError::Failed(format!(
                    "{} stores no volumes (its agent uses the {} driver)",
                    self.config.hostname,
                    self.config.driver.as_str()
                ))),
            };
        };
        match present {
            true => Ok(Outcome::Volume {
                report: runtime.ensure_volume(spec).await?,
            }),
            false => runtime
                .delete_volume(&spec.id)
                .await
                .map(|()| Outcome::Done),
        }
    }

    /// The simulated host, once a `Host` object has named it.
    fn prepared_sim_host(&self) -> Result<Arc<SimHost>, AgentError> {
        self.sim_host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| AgentError::Failed("the host is not prepared yet".into()))
    }

    async fn apply_sim(&self, sim: &SimFleet, desired: &Desired) -> Result<Outcome, AgentError> {
        if let Desired::Host { spec, .. } = desired {
            let host = sim.host_for(spec);
            *self.sim_host.lock().unwrap_or_else(PoisonError::into_inner) = Some(host);
        }
        let host = self.prepared_sim_host()?;
        match desired {
            Desired::Host { spec, retired } => {
                match retired {
                    false => host.prepare_host(spec).await?,
                    true => host.retire_host(spec).await?,
                }
                Ok(Outcome::Done)
            }
            Desired::Unit {
                unit,
                ssh_public_key: Some(key),
            } => host.activate_unit(unit, key).await.map(|()| Outcome::Done),
            Desired::Unit {
                unit,
                ssh_public_key: None,
            } => host.release_unit(unit).await.map(|()| Outcome::Done),
            Desired::Instance { spec, state } => {
                self.apply_instance(Some(host.as_ref()), spec, *state).await
            }
            Desired::Script { script } => Ok(Outcome::Script {
                outcome: host.run_script(script).await?,
            }),
            Desired::Volume { spec, present } => {
                self.apply_volume(Some(host.as_ref()), spec, *present).await
            }
        }
    }
}

/// Answers what came of `apply` when it is not the `expected` kind of
/// outcome (it always is).
fn unexpected(outcome: Outcome) -> AgentError {
    AgentError::Failed(format!("the host answered {outcome:?}"))
}

/// The host's side of the contract, through the same paths as the desired
/// state (`apply`) and the host's instance runtime.
#[async_trait::async_trait]
impl HostAgent for LocalHost {
    /// What the host has: the simulated host's registration, or the
    /// machine's CPUs (less the reserved ones), NUMA nodes and memory.
    async fn report(&self) -> Result<HostReport, AgentError> {
        if self.sim.is_some() {
            return self.prepared_sim_host()?.report().await;
        }
        let inventory =
            crate::inventory::discover(&self.config.state_dir, &self.config.reserved_cpus)
                .map_err(|e| AgentError::Failed(format!("reading the host's inventory: {e:#}")))?;
        Ok(HostReport {
            cpus: inventory.cpus,
            numa_nodes: inventory.numa_nodes,
            memory_mb: inventory.memory_mb,
        })
    }

    async fn prepare_host(&self, host: &HostSpec) -> Result<(), AgentError> {
        self.apply(&Desired::Host {
            spec: host.clone(),
            retired: false,
        })
        .await
        .map(drop)
    }

    async fn activate_unit(&self, unit: &UnitSpec, ssh_public_key: &str) -> Result<(), AgentError> {
        self.apply(&Desired::Unit {
            unit: unit.clone(),
            ssh_public_key: Some(ssh_public_key.to_string()),
        })
        .await
        .map(drop)
    }

    async fn release_unit(&self, unit: &UnitSpec) -> Result<(), AgentError> {
        self.apply(&Desired::Unit {
            unit: unit.clone(),
            ssh_public_key: None,
        })
        .await
        .map(drop)
    }

    async fn retire_host(&self, host: &HostSpec) -> Result<(), AgentError> {
        self.apply(&Desired::Host {
            spec: host.clone(),
            retired: true,
        })
        .await
        .map(drop)
    }

    async fn create_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        let _shared = self.gate.read().await;
        self.runtime()?.create(instance).await
    }

    async fn start_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        let _shared = self.gate.read().await;
        self.runtime()?.start(instance).await
    }

    async fn stop_instance(&self, instance_id: &str) -> Result<(), AgentError> {
        let _shared = self.gate.read().await;
        self.runtime()?.stop(instance_id).await
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), AgentError> {
        let _shared = self.gate.read().await;
        match self.runtime() {
            Ok(runtime) => runtime.delete(instance_id).await,
            // Nothing to remove from a host that runs no instances.
            Err(_) if self.sim.is_none() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn run_script(&self, script: &HostScript) -> Result<ScriptOutcome, AgentError> {
        match self
            .apply(&Desired::Script {
                script: script.clone(),
            })
            .await?
        {
            Outcome::Script { outcome } => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    async fn ensure_volume(&self, volume: &VolumeSpec) -> Result<VolumeReport, AgentError> {
        let _shared = self.gate.read().await;
        self.runtime()?.ensure_volume(volume).await
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AgentError> {
        let _shared = self.gate.read().await;
        self.runtime()?.delete_volume(volume_id).await
    }

    /// The instances the host's runtime has now; none on a unit-only host
    /// or a simulated one not prepared yet. Not behind the gate: a long
    /// preparation must not hold up heartbeats.
    async fn observe_instances(&self) -> Result<Vec<InstanceObservation>, AgentError> {
        match self.runtime() {
            Ok(runtime) => runtime.observe().await,
            Err(_) => Ok(Vec::new()),
        }
    }

    /// Opens a session into a running instance (see
    /// [`crate::drivers::session`]): through the host's runtime, whichever
    /// driver it is.
    async fn open_session(
        &self,
        instance_id: &str,
        request: &SessionRequest,
    ) -> Result<Session, AgentError> {
        let _shared = self.gate.read().await;
        self.runtime()?.open_session(instance_id, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_agent_api::{AttachedVolume, HostSpec};
    use tessera_core::HostId;

    fn sim_host(dir: &std::path::Path) -> LocalHost {
        LocalHost::new(HostConfig {
            hostname: "sim-1".into(),
            state_dir: dir.to_path_buf(),
            driver: DriverKind::Sim,
            user_prefix: String::new(),
            bridge: "tsr0".into(),
            subnet: "10.88.0.0/24".into(),
            ssh_port_base: 2200,
            dns_upstreams: Vec::new(),
            allow_privileged: false,
            egress_denied: Vec::new(),
            registry: Default::default(),
            disk_overcommit: 1.0,
            reserved_cpus: CpuSet::default(),
        })
        .expect("a sim host needs nothing of the machine")
    }

    fn instance(state: InstanceState) -> Desired {
        Desired::Instance {
            spec: Box::new(InstanceSpec {
                id: "i-1".into(),
                name: "one".into(),
                project_id: "p".into(),
                cpus: (0..2).collect(),
                memory_mb: 512,
                disk_gb: 1,
                image: "tiny".into(),
                ssh_keys: vec![],
                user_data: None,
                volumes: vec![AttachedVolume {
                    id: "vol-1".into(),
                    target: "vdb".into(),
                }],
                cpu_millis: None,
                ssh_forward: true,
                egress: true,
                privileged: false,
                network: None,
                image_ref: None,
                security_groups: Vec::new(),
                workload: None,
                sealed_workload: None,
                storage: None,
            }),
            state,
        }
    }

    fn volume(present: bool) -> Desired {
        Desired::Volume {
            spec: VolumeSpec {
                id: "vol-1".into(),
                size_gb: 2,
                clone_of: None,
            },
            present,
        }
    }

    /// The simulated host's instances and volumes go through the same
    /// runtime path as containers, and answer as the simulated host always
    /// did.
    #[tokio::test]
    async fn a_simulated_host_runs_instances_through_its_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = sim_host(dir.path());
        let early = host.apply(&instance(InstanceState::Absent)).await;
        assert!(
            matches!(&early, Err(e) if e.to_string().contains("not prepared")),
            "{early:?}"
        );
        let early = host
            .open_session("i-1", &SessionRequest::default())
            .await
            .err();
        assert!(
            early.is_some_and(|e| e.to_string().contains("not prepared")),
            "a session before the host is prepared"
        );
        let spec = HostSpec {
            id: HostId::new("h-sim-1"),
            hostname: "sim-1".into(),
            ip: "192.0.2.7".into(),
            cpus: (0..4).collect(),
            numa_nodes: vec![],
            units: vec![],
            memory_mb: None,
        };
        let prepare = Desired::Host {
            spec,
            retired: false,
        };
        assert!(matches!(host.apply(&prepare).await, Ok(Outcome::Done)));
        // Its volume must be stored first.
        assert!(host.apply(&instance(InstanceState::Running)).await.is_err());
        match host.apply(&volume(true)).await {
            Ok(Outcome::Volume { report }) => assert_eq!(report.size_bytes, 2 << 30),
            other => panic!("volume: {other:?}"),
        }
        for _ in 0..2 {
            match host.apply(&instance(InstanceState::Running)).await {
                Ok(Outcome::Instance { report }) => {
                    assert_eq!(report.private_ip, "192.0.2.7");
                    assert_eq!(report.ssh_port, None);
                }
                other => panic!("running: {other:?}"),
            }
        }
        let session = host
            .open_session("i-1", &SessionRequest::default())
            .await
            .expect("session");
        assert!(session.control.is_simulated());
        drop(session);
        let seen = host.observe_instances().await.expect("observe");
        assert_eq!(seen.len(), 1);
        assert!(seen[0].running && seen[0].id == "i-1", "{seen:?}");
        assert!(host.apply(&volume(false)).await.is_err(), "in use");
        assert!(matches!(
            host.apply(&instance(InstanceState::Stopped)).await,
            Ok(Outcome::Done)
        ));
        assert!(
            host.open_session("i-1", &SessionRequest::default())
                .await
                .is_err(),
            "stopped"
        );
        let seen = host.observe_instances().await.expect("observe");
        assert!(!seen[0].running, "{seen:?}");
        assert!(matches!(
            host.apply(&volume(false)).await,
            Ok(Outcome::Done)
        ));
        assert!(matches!(
            host.apply(&instance(InstanceState::Absent)).await,
            Ok(Outcome::Done)
        ));
        // The simulated host refuses to stop what it does not have.
        assert!(host.apply(&instance(InstanceState::Stopped)).await.is_err());
        // Nothing is adopted or stopped at start-up under `sim`.
        host.adopt().await.expect("adopt");
        host.stop_unknown_instances(&Default::default())
            .await
            .expect("stop unknown");
    }
}
