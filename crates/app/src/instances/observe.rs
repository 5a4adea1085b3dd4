//! What hosts observe of their instances: the memory and storage each uses
//! (kept for the containers API), and instances that stopped running on
//! their own. One that dies is started again; one that dies more than
//! [`MAX_DEATHS`] times within [`DEATH_WINDOW`] is left stopped, its cause
//! `crashed` (the containers API shows it `failed`), with why.

use crate::App;
use crate::error::Result;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
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
/// An unchanged observation carrying a CPU figure is written again after
/// this long, so the scaler (which reads figures fresher than 20 s) keeps
/// seeing it.
const CPU_REWRITE: Duration = Duration::from_secs(8);
/// The most instances one report may name.
const MAX_OBSERVED: usize = 20_000;
/// The longest detail kept of an observation, in characters.
const MAX_DETAIL_CHARS: usize = 1024;
/// What was written of an instance not observed for this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// What this process last wrote of each instance's usage, and when.
#[derive(Default)]
pub(crate) struct UsageWritten {
    written: Mutex<HashMap<String, (Written, Instant)>>,
    last_sweep: Mutex<Option<Instant>>,
}

/// The part of an observation that decides whether it is news.
#[derive(Clone, PartialEq)]
struct Written {
    running: bool,
    detail: Option<String>,
    /// Memory and storage in MiB: a few bytes' change is not worth a write.
    memory_mib: Option<u64>,
    storage_mib: Option<u64>,
    cpu_percent: Option<u32>,
}

impl Written {
    fn has_figures(&self) -> bool {
        self.memory_mib.is_some() || self.storage_mib.is_some() || self.cpu_percent.is_some()
    }

    fn of(o: &InstanceObservation) -> Written {
        Written {
            running: o.running,
            detail: o.detail.clone(),
            memory_mib: o.memory_used_bytes.map(|b| b >> 20),
            storage_mib: o.storage_used_bytes.map(|b| b >> 20),
            cpu_percent: o.cpu_percent,
        }
    }
}

impl UsageWritten {
    /// Keeps the observations worth writing: those that changed since this
    /// process last wrote them, and CPU figures about to go stale. The
    /// rest are already in the store as observed. A fleet at rest then
    /// writes next to nothing, however many instances it runs.
    ///
    /// The store keeps an instance's figures (memory, storage, CPU); a
    /// first sighting without any has nothing to keep and is not written
    /// (a simulated fleet's 100,000 new instances each cost a write while
    /// they were being created, competing with the creations).
    fn news(&self, observed: &[InstanceObservation]) -> Vec<bool> {
        let now = Instant::now();
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let news = observed
            .iter()
            .map(|o| {
                let current = Written::of(o);
                let news = match written.get(&o.id) {
                    Some((last, at)) => {
                        *last != current
                            || (current.cpu_percent.is_some() && at.elapsed() >= CPU_REWRITE)
                    }
                    None => current.has_figures(),
                };
                if news {
                    written.insert(o.id.clone(), (current, now));
                }
                news
            })
            .collect();
        let mut last_sweep = self
            .last_sweep
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last_sweep.is_none_or(|at| at.elapsed() >= FORGET_AFTER) {
            *last_sweep = Some(now);
            written.retain(|_, (_, at)| at.elapsed() < FORGET_AFTER);
        }
        news
    }

    /// Forgets what was written, when a write failed.
    fn forget(&self, ids: &[String]) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            written.remove(id);
        }
    }
}

impl App {
    /// Records what a host observed of its instances and acts on those
    /// that should run and do not.
    pub(crate) async fn instances_observed(
        &self,
        host_id: &str,
        observed: Vec<InstanceObservation>,
    ) -> Result<()> {
        // A host runs far fewer; an id or a detail longer than these is
        // not one of its instances' (nor worth keeping).
        if observed.len() > MAX_OBSERVED {
            return Err(crate::Error::invalid(
                "instances",
                format!("a host reports at most {MAX_OBSERVED} instances at once"),
            ));
        }
        let observed: Vec<InstanceObservation> = observed
            .into_iter()
            .filter(|o| o.id.len() <= 128 && !crate::has_nul(&o.id))
            .map(|mut o| {
                o.detail = o.detail.map(|d| {
                    d.chars()
                        .filter(|c| *c != '\0')
                        .take(MAX_DETAIL_CHARS)
                        .collect()
                });
                o
            })
            .collect();
        let at = tessera_store::now();
        let news = self.usage_written.news(&observed);
        let usage: Vec<InstanceUsage> = observed
            .iter()
            .zip(&news)
            .filter(|(_, news)| **news)
            .map(|(o, _)| InstanceUsage {
                instance_id: o.id.clone(),
                running: o.running,
                detail: o.detail.clone(),
                memory_used_bytes: o.memory_used_bytes,
                storage_used_bytes: o.storage_used_bytes,
                cpu_percent: o.cpu_percent,
                observed_at: at.clone(),
            })
            .collect();
        if !usage.is_empty() {
            match self.store.record_instance_usage(host_id, &usage).await {
                // What was not recorded (not this host's instance) is not
                // remembered either: a host naming others' instances, or
                // made-up ones, leaves nothing behind.
                Ok(recorded) => {
                    let refused: Vec<String> = usage
                        .iter()
                        .zip(recorded)
                        .filter(|(_, recorded)| !recorded)
                        .map(|(u, _)| u.instance_id.clone())
                        .collect();
                    self.usage_written.forget(&refused);
                }
                Err(err) => {
                    let ids: Vec<String> = usage.into_iter().map(|u| u.instance_id).collect();
                    self.usage_written.forget(&ids);
                    return Err(err.into());
                }
            }
        }
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
            id: crate::new_uuid(),
            project_id: instance.project_id.to_string(),
            kind: OperationKind::InstanceStart,
            resource_id: Some(instance.id.to_string()),
            params: serde_json::json!({ "instance_id": instance.id, "restart": true }),
            created_by: RESTARTED_BY.into(),
        };
        let changes = self.watch_changes(&op.id);
        let began = self
            .store
            .begin_instance_operation(
                &instance.id,
                &[InstanceState::Running.as_str()],
                InstanceState::Provisioning.as_str(),
                &op,
                &self.deadline(),
                None,
            )
            .await?;
        if let Some(taken) = began {
            tracing::warn!(instance = %instance.id, deaths, detail, "instance stopped on its own; starting it again");
            self.publish(
                "instance",
                &instance.id,
                Some(&instance.project_id),
                InstanceState::Provisioning.as_str(),
            );
            self.spawn_taken(taken, changes, None);
        }
        Ok(())
    }

    /// Asks every ready host that answers in process what it sees of its
    /// instances (remote agents report with their heartbeats).
    pub(crate) async fn observe_hosts(&self) -> Result<()> {
        // Hosts with a remote agent are left out unread: their heartbeats
        // carry what they see (at 10,000 agents, every pass read 10,000
        // host rows, and their inventories, to skip them all).
        for (host_id, hostname) in self.store.ready_hosts_without_agents().await? {
            // Thousands of in-process hosts answer without ever waiting:
            // give the worker back now and then, so requests queued behind
            // the pass are not held up for all of it.
            tokio::task::consume_budget().await;
            let Some(agent) = self
                .agent(&tessera_core::HostId::new(host_id.as_str()))
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
                    self.instances_observed(&host_id, observed).await?;
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(hostname = %hostname, error = %err, "observing the host's instances failed");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, memory: Option<u64>) -> InstanceObservation {
        InstanceObservation {
            id: id.into(),
            running: true,
            detail: None,
            memory_used_bytes: memory,
            storage_used_bytes: None,
            cpu_percent: None,
            pulling: false,
        }
    }

    #[test]
    fn only_figures_that_changed_are_written() {
        let written = UsageWritten::default();
        // A first sighting without figures has nothing to keep; with
        // figures it is written.
        assert_eq!(
            written.news(&[seen("a", None), seen("b", Some(64 << 20))]),
            [false, true]
        );
        // Unchanged (to the MiB): not again.
        assert_eq!(
            written.news(&[seen("a", None), seen("b", Some((64 << 20) + 5))]),
            [false, false]
        );
        // Figures that appear, change or go away are news.
        assert_eq!(
            written.news(&[seen("a", Some(1 << 20)), seen("b", None)]),
            [true, true]
        );
        assert_eq!(
            written.news(&[seen("a", Some(2 << 20)), seen("b", None)]),
            [true, false]
        );
        // A failed write is forgotten, so the next look writes it again.
        written.forget(&["a".to_string()]);
        assert_eq!(written.news(&[seen("a", Some(2 << 20))]), [true]);
    }
}
