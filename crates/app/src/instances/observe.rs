//! What hosts observe of their instances: the memory and storage each uses
//! (kept for the containers API), and instances that stopped running on
//! their own. One that dies is started again; one that dies more than
//! [`MAX_DEATHS`] times within [`DEATH_WINDOW`] is left stopped, its cause
//! `crashed` (the containers API shows it `failed`), with why.

use crate::App;
use crate::error::Result;
use std::time::Duration;
use tessera_agent_api::InstanceObservation;
use tessera_core::status::{InstanceState, OperationKind, TerminationCause};
use tessera_store::{InstanceUsage, NewOperation};

/// How many deaths in [`DEATH_WINDOW`] an instance is restarted after.
pub(crate) const MAX_DEATHS: usize = 3;
pub(crate) const DEATH_WINDOW: Duration = Duration::from_secs(600);
/// An observation of an instance changed this recently may predate the
/// change: it is not taken for a death.
const SETTLING: chrono::Duration = chrono::Duration::seconds(10);
/// Who makes the operations that start a dead instance again.
const RESTARTED_BY: &str = "tessera:restart";

impl App {
    /// Records what a host observed of its instances and acts on those
    /// that should run and do not.
    pub(crate) async fn instances_observed(
        &self,
        host_id: &str,
        observed: Vec<InstanceObservation>,
    ) -> Result<()> {
        let at = tessera_store::now();
        let usage: Vec<InstanceUsage> = observed
            .iter()
            .map(|o| InstanceUsage {
                instance_id: o.id.clone(),
                running: o.running,
                detail: o.detail.clone(),
                memory_used_bytes: o.memory_used_bytes,
                storage_used_bytes: o.storage_used_bytes,
                cpu_percent: o.cpu_percent,
                observed_at: at.clone(),
            })
            .collect();
        self.store.record_instance_usage(&usage).await?;
        // What a host says of an instance it is still making (its image's
        // pull, say) is its status's detail until it runs.
        for o in observed.iter().filter(|o| o.pulling) {
            if let Some(detail) = &o.detail {
                self.store.note_provisioning(&o.id, host_id, detail).await?;
            }
        }
        let settled = tessera_store::timestamp(chrono::Utc::now() - SETTLING);
        for observation in observed.into_iter().filter(|o| !o.running) {
            let Some(instance) = self.stored_instance(&observation.id).await? else {
                continue;
            };
            let dead = instance.state == InstanceState::Running
                && instance.operation_id.is_none()
                && instance
                    .host_id
                    .as_ref()
                    .is_some_and(|h| h.as_str() == host_id)
                && instance.updated_at < settled;
            if dead {
                self.instance_died(&instance, observation.detail.as_deref())
                    .await?;
            }
        }
        Ok(())
    }

    /// Starts a dead instance again, or, when it keeps dying, leaves it
    /// stopped and says why.
    async fn instance_died(&self, instance: &super::Instance, detail: Option<&str>) -> Result<()> {
        // Deaths are counted from the restarts they caused, in the store,
        // so every replica counts the same whichever one hears of them.
        let since = tessera_store::timestamp(
            chrono::Utc::now()
                - chrono::Duration::from_std(DEATH_WINDOW).unwrap_or(chrono::Duration::zero()),
        );
        let restarts = self
            .store
            .operations_since(
                instance.id.as_str(),
                OperationKind::InstanceStart,
                RESTARTED_BY,
                &since,
            )
            .await?;
        let deaths = usize::try_from(restarts)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let detail = detail.unwrap_or("it stopped running");
        // A job's replica ran once: it is done, not dead.
        if instance.spec.workload.as_ref().is_some_and(|w| w.run_once) {
            let why = format!("its process ended: {detail}");
            if self
                .store
                .set_instance_crashed(&instance.id, &why, TerminationCause::Exited)
                .await?
            {
                tracing::info!(instance = %instance.id, detail, "a job's process ended");
                self.poke_scaler();
            }
            return Ok(());
        }
        if deaths > MAX_DEATHS {
            let why = format!(
                "it kept dying: it stopped on its own {deaths} times in {} minutes (last: {detail}); start it again once it is fixed",
                DEATH_WINDOW.as_secs() / 60
            );
            if self
                .store
                .set_instance_crashed(&instance.id, &why, TerminationCause::Crashed)
                .await?
            {
                tracing::warn!(instance = %instance.id, deaths, "instance keeps dying; left stopped");
                self.publish(
                    "instance",
                    &instance.id,
                    Some(&instance.project_id),
                    InstanceState::Stopped.as_str(),
                );
            }
            return Ok(());
        }
        let op = NewOperation {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: instance.project_id.to_string(),
            kind: OperationKind::InstanceStart,
            resource_id: Some(instance.id.to_string()),
            params: serde_json::json!({ "instance_id": instance.id, "restart": true }),
            created_by: RESTARTED_BY.into(),
        };
        let began = self
            .store
            .begin_instance_operation(
                &instance.id,
                &[InstanceState::Running.as_str()],
                InstanceState::Provisioning.as_str(),
                &op,
            )
            .await?;
        if began {
            tracing::warn!(instance = %instance.id, deaths, detail, "instance stopped on its own; starting it again");
            self.publish(
                "instance",
                &instance.id,
                Some(&instance.project_id),
                InstanceState::Provisioning.as_str(),
            );
            self.spawn_operation(&op.id);
        }
        Ok(())
    }

    /// Asks every ready host that answers in process what it sees of its
    /// instances (remote agents report with their heartbeats).
    pub(crate) async fn observe_hosts(&self) -> Result<()> {
        for host in self
            .store
            .hosts(&[tessera_core::status::HostStatus::Ready])
            .await?
        {
            let Some(agent) = self
                .agent(&tessera_core::HostId::new(host.id.as_str()))
                .await?
            else {
                continue;
            };
            if agent.keeps_desired_state() {
                // A remote agent: its heartbeats carry what it sees.
                continue;
            }
            match self.host_call(agent.observe_instances()).await {
                Ok(observed) if !observed.is_empty() => {
                    self.instances_observed(&host.id, observed).await?;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(hostname = %host.hostname, error = %err, "observing the host's instances failed");
                }
            }
        }
        Ok(())
    }
}
