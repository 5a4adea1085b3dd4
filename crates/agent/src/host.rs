//! The host an agent runs on, as its drivers make it: applies one object of
//! the desired state and answers what came of it.
//!
//! - `unit`: Kloigos units only.
//! - `container`: Kloigos units, and instances as containers.
//! - `sim`: everything simulated, in memory and under the state directory.

use crate::drivers::container::{ContainerConfig, ContainerDriver};
use crate::drivers::sim::{SimConfig, SimFleet};
use crate::drivers::unit::{UnitConfig, UnitDriver};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use tessera_agent_api::protocol::{Desired, InstanceState, Outcome};
use tessera_agent_api::{AgentDirectory, AgentError, HostAgent, InstanceSpec};

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
}

pub struct LocalHost {
    config: HostConfig,
    units: Option<UnitDriver>,
    containers: Option<ContainerDriver>,
    sim: Option<SimFleet>,
    /// The simulated host, once the control plane has said what it is.
    sim_host: Mutex<Option<Arc<dyn HostAgent>>>,
    /// Preparing or retiring the host excludes every other change: a unit
    /// wiped or an instance started while the host's users and groups are
    /// being removed would bring some back.
    gate: tokio::sync::RwLock<()>,
}

impl LocalHost {
    pub fn new(config: HostConfig) -> Result<LocalHost, AgentError> {
        let (units, containers, sim) = match config.driver {
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
                let containers = match config.driver {
                    DriverKind::Container => Some(ContainerDriver::new(ContainerConfig {
                        state_dir: config.state_dir.clone(),
                        image_dir: config.state_dir.join("images"),
                        bridge: config.bridge.clone(),
                        subnet: config.subnet.clone(),
                        ssh_port_base: config.ssh_port_base,
                    })?),
                    _ => None,
                };
                (Some(units), containers, None)
            }
        };
        Ok(LocalHost {
            config,
            units,
            containers,
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
        if let Some(containers) = &self.containers {
            containers.adopt().await?;
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
        let Some(containers) = &self.containers else {
            return Ok(());
        };
        for instance in containers.list().await? {
            let key = tessera_agent_api::protocol::instance_key(&instance.id);
            if instance.running && !known.contains(&key) {
                tracing::warn!(id = %instance.id, "stopping an instance the control plane does not know");
                containers.stop(&instance.id).await?;
            }
        }
        Ok(())
    }

    /// Images present on the host.
    pub fn images(&self) -> Vec<String> {
        match self.config.driver {
            DriverKind::Container => {
                crate::drivers::container::list_images(&self.config.state_dir.join("images"))
                    .unwrap_or_default()
            }
            _ => Vec::new(),
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
            Desired::Instance { spec, state } => self.apply_instance(spec, *state).await,
            Desired::Script { script } => {
                let outcome =
                    crate::script::run(script, std::path::Path::new("/"), &self.config.hostname)
                        .await?;
                Ok(Outcome::Script { outcome })
            }
            Desired::Volume { spec, present } => {
                let Some(containers) = &self.containers else {
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
                        report: containers.ensure_volume(spec).await?,
                    }),
                    false => containers
                        .delete_volume(&spec.id)
                        .await
                        .map(|()| Outcome::Done),
                }
            }
        }
    }

    fn units(&self) -> Result<&UnitDriver, AgentError> {
        self.units
            .as_ref()
            .ok_or_else(|| AgentError::Failed("this host has no unit driver".into()))
    }

    async fn apply_instance(
        &self,
        spec: &InstanceSpec,
        state: InstanceState,
    ) -> Result<Outcome, AgentError> {
        let Some(containers) = &self.containers else {
            return match state {
                // Nothing to remove from a host that runs no instances.
                InstanceState::Absent => Ok(Outcome::Done),
                _ => Err(AgentError::Failed(format!(
                    "{} runs compute units only (its agent uses the {} driver)",
                    self.config.hostname,
                    self.config.driver.as_str()
                ))),
            };
        };
        match state {
            InstanceState::Running => {
                let exists = containers.list().await?.iter().any(|c| c.id == spec.id);
                let report = match exists {
                    true => containers.start(spec).await?,
                    false => containers.create(spec).await?,
                };
                Ok(Outcome::Instance { report })
            }
            InstanceState::Stopped => containers.stop(&spec.id).await.map(|()| Outcome::Done),
            InstanceState::Absent => containers.delete(&spec.id).await.map(|()| Outcome::Done),
        }
    }

    async fn apply_sim(&self, sim: &SimFleet, desired: &Desired) -> Result<Outcome, AgentError> {
        if let Desired::Host { spec, .. } = desired {
            let host = sim.agent_for(spec);
            *self.sim_host.lock().unwrap_or_else(PoisonError::into_inner) = host;
        }
        let host = self
            .sim_host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| AgentError::Failed("the host is not prepared yet".into()))?;
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
            Desired::Instance { spec, state } => match state {
                InstanceState::Running => {
                    let report = match host.start_instance(spec).await {
                        Ok(report) => report,
                        Err(_) => host.create_instance(spec).await?,
                    };
                    Ok(Outcome::Instance { report })
                }
                InstanceState::Stopped => {
                    host.stop_instance(&spec.id).await.map(|()| Outcome::Done)
                }
                InstanceState::Absent => {
                    host.delete_instance(&spec.id).await.map(|()| Outcome::Done)
                }
            },
            Desired::Script { script } => Ok(Outcome::Script {
                outcome: host.run_script(script).await?,
            }),
            Desired::Volume {
                spec,
                present: true,
            } => Ok(Outcome::Volume {
                report: host.ensure_volume(spec).await?,
            }),
            Desired::Volume {
                spec,
                present: false,
            } => host.delete_volume(&spec.id).await.map(|()| Outcome::Done),
        }
    }
}
