//! [`RemoteAgent`]: a host driven by writing its desired state to the
//! store and waiting for its agent's report, behind the same
//! [`HostAgent`] trait as a simulated host.

use super::AgentSignals;
use crate::error::Result;
use std::sync::Arc;
use tessera_agent_api::protocol::{self, Desired, InstanceState, Inventory, Outcome};
use tessera_agent_api::{
    AgentError, HostAgent, HostReport, HostScript, HostSpec, InstanceReport, InstanceSpec,
    ScriptOutcome, UnitSpec, VolumeReport, VolumeSpec,
};
use tessera_store::Store;

/// A host driven through its agent's desired state.
pub(super) struct RemoteAgent {
    pub(super) hostname: String,
    pub(super) store: Store,
    pub(super) signals: Arc<AgentSignals>,
    pub(super) sessions: Arc<super::sessions::SessionHub>,
    /// This replica's own base URL, for agents to dial sessions back at.
    pub(super) advertise_url: Option<String>,
    /// Seals a replica's workload (it holds opened secrets) in the desired
    /// state the store keeps; the agent is sent it opened.
    pub(super) sealing: Option<crate::secrets::sealing::SealingKey>,
}

/// What a replica's sealed workload is bound to.
pub(crate) fn workload_context(instance_id: &str) -> String {
    format!("desired/{instance_id}/workload")
}

impl RemoteAgent {
    /// Sets `key`'s desired state and waits for the agent's report on it;
    /// answers the report and the generation it answers.
    async fn converge(&self, key: &str, desired: &Desired) -> Result<(Outcome, i64), AgentError> {
        let current = self
            .store
            .work(&self.hostname, key)
            .await
            .map_err(store_error)?;
        self.converge_from(key, desired, current).await
    }

    /// [`RemoteAgent::converge`] from the key's row as just read.
    async fn converge_from(
        &self,
        key: &str,
        desired: &Desired,
        current: Option<tessera_store::WorkRecord>,
    ) -> Result<(Outcome, i64), AgentError> {
        let body = serde_json::to_string(desired)
            .map_err(|e| AgentError::Failed(format!("cannot encode the desired state: {e}")))?;
        let pending =
            current.filter(|row| row.desired == body && row.observed_generation < row.generation);
        let signal = self.signals.of(&self.hostname);
        // Listening before the change is written: its report cannot come
        // unheard, so a change just written needs no look before the
        // first wake-up.
        let mut notified = Box::pin(signal.reported.notified());
        let mut look = pending.is_some();
        let (generation, reachable) = match pending {
            // The same change is still under way (a call repeated after a
            // timeout): wait for it rather than ask for it twice.
            Some(row) => (row.generation, None),
            None => {
                let (generation, reachable) = self
                    .store
                    .set_desired(&self.hostname, key, &body)
                    .await
                    .map_err(store_error)?
                    .ok_or_else(|| {
                        AgentError::Unreachable(format!(
                            "{} has no registered agent",
                            self.hostname
                        ))
                    })?;
                // The host's long-polls on this replica hear of it at once.
                self.signals
                    .wake(&self.hostname, super::HostChange::Desired);
                (generation, Some(reachable))
            }
        };
        // Whether its agent still beats, as the write of the change read
        // it (else read now).
        let reachable = match reachable {
            Some(reachable) => reachable,
            None => self
                .store
                .agent(&self.hostname)
                .await
                .map_err(store_error)?
                .is_none_or(|a| a.reachable != 0),
        };
        if !reachable {
            return Err(AgentError::Unreachable(format!(
                "the agent of {} missed its heartbeats",
                self.hostname
            )));
        }
        let mut generation = generation;
        loop {
            if look {
                let row = self
                    .store
                    .work(&self.hostname, key)
                    .await
                    .map_err(store_error)?;
                match row {
                    None => {
                        return Err(AgentError::Failed(format!(
                            "{key} on {} was superseded",
                            self.hostname
                        )));
                    }
                    // The same change asked again meanwhile (two replicas
                    // preparing one host at once): its answer is ours too.
                    Some(row) if row.generation > generation && row.desired == body => {
                        generation = row.generation;
                        continue;
                    }
                    Some(row) if row.generation > generation => {
                        return Err(AgentError::Failed(format!(
                            "{key} on {} was superseded by a newer change",
                            self.hostname
                        )));
                    }
                    Some(row) if row.observed_generation >= generation => {
                        let observed = row.observed.unwrap_or_default();
                        let outcome =
                            serde_json::from_str::<Result<Outcome, AgentError>>(&observed)
                                .map_err(|e| {
                                    AgentError::Failed(format!(
                                        "the agent's report is unreadable: {e}"
                                    ))
                                })??;
                        return Ok((outcome, generation));
                    }
                    Some(_) => {}
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(self.signals.poll()) => {}
            }
            notified = Box::pin(signal.reported.notified());
            look = true;
        }
    }

    /// [`RemoteAgent::converge`] for a change that must not happen later
    /// when it did not happen now (a stop or a start that failed or timed
    /// out leaves the instance as it was): unless it succeeds, the key's
    /// earlier desired state is written back, even when the wait is cut
    /// short by the caller's timeout.
    async fn converge_or_restore(
        &self,
        key: &str,
        desired: &Desired,
    ) -> Result<(Outcome, i64), AgentError> {
        let current = self
            .store
            .work(&self.hostname, key)
            .await
            .map_err(store_error)?;
        let previous = current.as_ref().map(|row| row.desired.clone());
        let mut restore = RestoreOnDrop {
            store: self.store.clone(),
            signals: self.signals.clone(),
            hostname: self.hostname.clone(),
            key: key.to_string(),
            ours: serde_json::to_string(desired).unwrap_or_default(),
            previous,
        };
        let outcome = self.converge_from(key, desired, current).await;
        if outcome.is_ok() {
            restore.previous = None;
        }
        outcome
    }

    async fn instance(
        &self,
        spec: &InstanceSpec,
        state: InstanceState,
    ) -> Result<Option<InstanceReport>, AgentError> {
        let key = protocol::instance_key(&spec.id);
        let mut spec = spec.clone();
        // Opened secrets are never kept in the store in clear.
        if let Some(workload) = spec.workload.take() {
            let sealing = self.sealing.as_ref().ok_or_else(|| {
                AgentError::Failed(
                    "this control plane has no secrets key to seal a workload".into(),
                )
            })?;
            let plain = serde_json::to_vec(&workload).unwrap_or_default();
            spec.sealed_workload = Some(sealing.seal_stable(&workload_context(&spec.id), &plain));
        }
        let desired = Desired::Instance {
            spec: Box::new(spec),
            state,
        };
        let (outcome, generation) = match state {
            InstanceState::Absent => self.converge(&key, &desired).await?,
            _ => self.converge_or_restore(&key, &desired).await?,
        };
        if state == InstanceState::Absent {
            // The agent confirmed it is gone: the row has nothing left to
            // say (unless a newer change took it over meanwhile).
            let _ = self
                .store
                .forget_work(&self.hostname, &key, generation)
                .await;
        }
        match outcome {
            Outcome::Instance { report } => Ok(Some(report)),
            _ => Ok(None),
        }
    }

    /// The last spec of an instance this host was asked to run.
    async fn known_instance(&self, id: &str) -> Result<Option<InstanceSpec>, AgentError> {
        let row = self
            .store
            .work(&self.hostname, &protocol::instance_key(id))
            .await
            .map_err(store_error)?;
        Ok(
            row.and_then(|row| match serde_json::from_str::<Desired>(&row.desired) {
                Ok(Desired::Instance { spec, .. }) => Some(*spec),
                _ => None,
            }),
        )
    }
}

/// Writes a key's earlier desired state back when dropped armed, unless
/// another change was written over this one meanwhile (the next operation
/// on the instance: undoing this one must not undo it).
struct RestoreOnDrop {
    store: Store,
    signals: Arc<AgentSignals>,
    hostname: String,
    key: String,
    /// The desired state this change wrote.
    ours: String,
    /// The desired state to write back; `None` disarms.
    previous: Option<String>,
}

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        let Some(previous) = self.previous.take() else {
            return;
        };
        let (store, hostname, key) = (self.store.clone(), self.hostname.clone(), self.key.clone());
        let (signals, ours) = (self.signals.clone(), std::mem::take(&mut self.ours));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                match store.restore_desired(&hostname, &key, &ours, &previous).await {
                    // The agent's long-poll hears of it at once.
                    Ok(true) => signals.wake(&hostname, super::HostChange::Desired),
                    Ok(false) => {
                        tracing::debug!(%hostname, %key, "not restored: changed again meanwhile")
                    }
                    Err(err) => {
                        tracing::warn!(%hostname, %key, error = %err, "restoring a desired state failed")
                    }
                }
            });
        }
    }
}

fn store_error(err: tessera_store::StoreError) -> AgentError {
    AgentError::Unreachable(format!("the store is unavailable: {err}"))
}

#[async_trait::async_trait]
impl HostAgent for RemoteAgent {
    fn keeps_desired_state(&self) -> bool {
        true
    }

    async fn open_session(
        &self,
        instance_id: &str,
        request: &tessera_agent_api::SessionRequest,
    ) -> Result<tessera_agent_api::Session, AgentError> {
        let relay = self
            .advertise_url
            .as_deref()
            .map(|dial_back| super::sessions::Relay {
                store: &self.store,
                dial_back,
            });
        self.sessions
            .open(&self.hostname, instance_id, request, relay)
            .await
    }

    async fn report(&self) -> Result<HostReport, AgentError> {
        let agent = self
            .store
            .agent(&self.hostname)
            .await
            .map_err(store_error)?
            .ok_or_else(|| AgentError::Unreachable(format!("{} has no agent", self.hostname)))?;
        let inventory: Inventory = serde_json::from_str(&agent.inventory)
            .map_err(|e| AgentError::Failed(format!("the host's inventory is unreadable: {e}")))?;
        Ok(HostReport {
            cpus: inventory.cpus,
            numa_nodes: inventory.numa_nodes,
            memory_mb: inventory.memory_mb,
        })
    }

    async fn prepare_host(&self, host: &HostSpec) -> Result<(), AgentError> {
        let desired = Desired::Host {
            spec: host.clone(),
            retired: false,
        };
        self.converge(&protocol::host_key(), &desired)
            .await
            .map(drop)
    }

    async fn activate_unit(&self, unit: &UnitSpec, ssh_public_key: &str) -> Result<(), AgentError> {
        let desired = Desired::Unit {
            unit: unit.clone(),
            ssh_public_key: Some(ssh_public_key.to_string()),
        };
        let key = protocol::unit_key(unit.compute_id.as_str());
        self.converge(&key, &desired).await.map(drop)
    }

    async fn release_unit(&self, unit: &UnitSpec) -> Result<(), AgentError> {
        let desired = Desired::Unit {
            unit: unit.clone(),
            ssh_public_key: None,
        };
        let key = protocol::unit_key(unit.compute_id.as_str());
        self.converge(&key, &desired).await.map(drop)
    }

    async fn retire_host(&self, host: &HostSpec) -> Result<(), AgentError> {
        let desired = Desired::Host {
            spec: host.clone(),
            retired: true,
        };
        self.converge(&protocol::host_key(), &desired)
            .await
            .map(drop)
    }

    async fn create_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        self.instance(instance, InstanceState::Running)
            .await?
            .ok_or_else(|| AgentError::Failed("the agent reported no instance".into()))
    }

    async fn start_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        self.create_instance(instance).await
    }

    async fn stop_instance(&self, instance_id: &str) -> Result<(), AgentError> {
        let Some(spec) = self.known_instance(instance_id).await? else {
            // Never asked to run here: nothing to stop.
            return Ok(());
        };
        self.instance(&spec, InstanceState::Stopped).await.map(drop)
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), AgentError> {
        let Some(spec) = self.known_instance(instance_id).await? else {
            return Ok(());
        };
        self.instance(&spec, InstanceState::Absent).await.map(drop)
    }

    async fn ensure_volume(&self, volume: &VolumeSpec) -> Result<VolumeReport, AgentError> {
        let desired = Desired::Volume {
            spec: volume.clone(),
            present: true,
        };
        match self
            .converge(&protocol::volume_key(&volume.id), &desired)
            .await?
        {
            (Outcome::Volume { report }, _) => Ok(report),
            _ => Err(AgentError::Failed("the agent reported no volume".into())),
        }
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AgentError> {
        let key = protocol::volume_key(volume_id);
        let desired = Desired::Volume {
            spec: VolumeSpec {
                id: volume_id.to_string(),
                size_gb: 0,
                clone_of: None,
            },
            present: false,
        };
        let (_, generation) = self.converge(&key, &desired).await?;
        // The agent confirmed it is gone: the row has nothing left to say.
        let _ = self
            .store
            .forget_work(&self.hostname, &key, generation)
            .await;
        Ok(())
    }

    async fn run_script(&self, script: &HostScript) -> Result<ScriptOutcome, AgentError> {
        // The same script (body and environment) has one key, so a call
        // repeated after a timeout waits for the run under way instead of
        // starting a second one.
        let digest = {
            use sha2::Digest;
            let mut hasher = sha2::Sha256::new();
            hasher.update(script.body.as_bytes());
            for (name, value) in &script.env {
                hasher.update([0]);
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update(value.as_bytes());
            }
            hex::encode(&hasher.finalize()[..8])
        };
        let key = protocol::script_key(&script.label, &digest);
        let desired = Desired::Script {
            script: script.clone(),
        };
        let (outcome, generation) = self.converge(&key, &desired).await?;
        // A script's row is done with once answered.
        let _ = self
            .store
            .forget_work(&self.hostname, &key, generation)
            .await;
        match outcome {
            Outcome::Script { outcome } => Ok(outcome),
            _ => Err(AgentError::Failed(
                "the agent reported no script outcome".into(),
            )),
        }
    }
}
