//! The scaler: for each deployment, decides how many replicas it should
//! have from the load every front door reported (and, with the CPU trigger
//! on, how busy its replicas' hosts saw them), then makes or deletes
//! replicas until it has them. It runs every [`PERIOD`], and at once when
//! a front door or a change of a deployment wakes it. Replicas of an older
//! generation are let go once the current one has all its replicas
//! running, so a change never leaves a deployment without replicas that
//! answer. A replica let go drains: it gets no new requests and is deleted
//! once every front door's requests to it are answered, so scaling down
//! cuts no request short. A deployment being deleted loses its replicas
//! at once, then goes.

use super::{Deployment, host_image_name, workload_of};
use crate::App;
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::instances::InstanceSpecInput;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use tessera_core::Role;
use tessera_core::serverless::{CpuUse, Load, Pending, decide};
use tessera_core::status::InstanceState;
use tessera_store::{NewInstance, NewReplica, ReplicaRecord};

/// How often the scaler looks at every deployment unwoken.
pub const PERIOD: Duration = Duration::from_millis(500);
/// Load reports older than this are stale (their process stopped).
const FRESH_MS: i64 = 5_000;
/// Replicas' CPU use observed longer ago than this is not counted (their
/// host's heartbeats stopped).
const CPU_FRESH_MS: i64 = 20_000;
/// How long a draining replica is kept at least: every front door sees it
/// draining (and reports the requests it has in flight to it) within,
/// even one whose pass is slowed by health checks that hang.
const DRAIN_SETTLE_MS: i64 = 5_000;
/// The longest a replica drains: one whose requests never end is deleted
/// then.
const DRAIN_MAX_MS: i64 = 300_000;
/// The longest wait between two attempts at a replica that keeps failing.
const MAX_BACKOFF_MS: i64 = 60_000;

/// What the scaler keeps of a deployment between passes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ScaleState {
    pending: Option<Pending>,
    /// What it last could not do: `quota`, `capacity` or `failed`.
    blocked: Option<String>,
}

impl App {
    /// Wakes the scaler.
    pub(crate) fn poke_scaler(&self) {
        self.scaler_poke.notify_one();
    }

    /// Wakes the front door's upkeep.
    pub(crate) fn poke_front_door(&self) {
        self.front_door_poke.notify_one();
    }

    /// What the scaler last could not do for a deployment.
    pub(crate) async fn scaler_note(&self, deployment_id: &str) -> Result<Option<String>> {
        Ok(self
            .store
            .deployment_by_id(deployment_id)
            .await?
            .and_then(|r| serde_json::from_str::<ScaleState>(&r.pending).ok())
            .and_then(|s| s.blocked))
    }

    /// Runs the scaler and the front door's upkeep until the app stops.
    pub(crate) fn spawn_serverless(&self) {
        for (poke, period, scaler) in [
            (self.scaler_poke.clone(), PERIOD, true),
            (self.front_door_poke.clone(), super::front_door::TICK, false),
        ] {
            let app = self.clone();
            self.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(period) => {}
                        _ = poke.notified() => {}
                        _ = app.stopping.cancelled() => return,
                    }
                    let pass = match scaler {
                        true => app.scale_deployments().await,
                        false => app.tend_front_door().await,
                    };
                    if let Err(err) = pass {
                        let task = if scaler {
                            "scale deployments"
                        } else {
                            "front door"
                        };
                        tracing::warn!(task, error = %err, "background task failed; it runs again");
                    }
                }
            });
        }
    }

    /// One pass over every deployment.
    pub(crate) async fn scale_deployments(&self) -> Result<()> {
        let now_ms = tessera_store::now_ms();
        let mut loads: HashMap<String, Load> = HashMap::new();
        for (id, waiting, in_flight) in self.store.deployment_loads(now_ms - FRESH_MS).await? {
            loads.insert(
                id,
                Load {
                    waiting: u32::try_from(waiting).unwrap_or(u32::MAX),
                    in_flight: u32::try_from(in_flight).unwrap_or(u32::MAX),
                    cpu: None,
                },
            );
        }
        // This process's own queues are fresher than what it reported.
        for (id, waiting, in_flight) in self.front_door.loads() {
            let load = loads.entry(id).or_default();
            load.waiting = load.waiting.max(waiting);
            load.in_flight = load.in_flight.max(in_flight);
        }
        for record in self.store.all_deployments().await? {
            let pending = record.pending.clone();
            let deployment = Deployment::try_from(record)?;
            let mut load = loads.get(&deployment.id).copied().unwrap_or_default();
            if deployment.scaling.cpu_utilization.is_some() {
                load.cpu = self.replicas_cpu(&deployment, now_ms).await?;
            }
            if let Err(err) = self.scale(&deployment, &pending, load, now_ms).await {
                tracing::warn!(deployment = %deployment.name, error = %err, "scaling failed");
            }
        }
        Ok(())
    }

    async fn scale(&self, d: &Deployment, pending: &str, load: Load, now_ms: i64) -> Result<()> {
        let replicas = self.store.deployment_replicas(&d.id).await?;
        let caller = self.scaler_principal(&d.project_id).await?;
        if d.deleting {
            for r in &replicas {
                self.retire_replica(&caller, r).await;
            }
            if replicas.is_empty() && self.store.remove_deployment(&d.id).await? {
                tracing::info!(deployment = %d.name, "deployment deleted");
            }
            return Ok(());
        }
        if d.kind == super::DeploymentKind::Job {
            return self.dispatch_jobs(d, &caller, &replicas, now_ms).await;
        }
        let state: ScaleState = serde_json::from_str(pending).unwrap_or_default();
        let (current, old): (Vec<&ReplicaRecord>, Vec<&ReplicaRecord>) =
            replicas.iter().partition(|r| r.generation == d.generation);
        let (current, draining): (Vec<&ReplicaRecord>, Vec<&ReplicaRecord>) =
            current.into_iter().partition(|r| r.draining_ms == 0);
        let have = current.len() as u32;
        let decision = decide(&d.scaling, have, load, d.paused, state.pending, now_ms);
        let mut blocked = None;
        let mut missing = decision.replicas.saturating_sub(have);
        // Replicas being let go serve again before new ones are made.
        let mut revived = std::collections::HashSet::new();
        for r in draining
            .iter()
            .filter(|r| r.state == InstanceState::Running.as_str())
            .take(missing as usize)
        {
            self.store.set_replica_draining(&r.instance_id, 0).await?;
            revived.insert(r.instance_id.clone());
            missing -= 1;
        }
        let limit = decision.replicas + draining.len() as u32;
        if missing > 0 {
            match self.backoff(d, now_ms).await? {
                Some(wait_ms) => {
                    tracing::debug!(deployment = %d.name, wait_ms, "replicas keep failing; waiting");
                    blocked = Some("failed".to_string());
                }
                None => {
                    for _ in 0..missing {
                        let id = crate::new_id("inst");
                        match self.create_replica(&caller, d, id, limit).await {
                            Ok(()) => {}
                            Err(Error::QuotaExceeded(_) | Error::Forbidden(_)) => {
                                blocked = Some("quota".into());
                                break;
                            }
                            Err(err @ Error::InsufficientFunds(_)) => {
                                tracing::debug!(deployment = %d.name, error = %err, "no replica until the balance is topped up");
                                blocked = Some("funds".into());
                                break;
                            }
                            Err(Error::NoCapacity(_)) => {
                                blocked = Some("capacity".into());
                                break;
                            }
                            // Another scaler made it meanwhile.
                            Err(Error::Conflict(_)) => break,
                            Err(err) => {
                                tracing::warn!(deployment = %d.name, error = %err, "a replica could not be made");
                                blocked = Some("failed".into());
                                break;
                            }
                        }
                    }
                }
            }
        }
        if have > decision.replicas {
            // Those not serving yet first, then the newest.
            let mut surplus = current.clone();
            surplus.sort_by_key(|r| {
                (
                    r.state == InstanceState::Running.as_str(),
                    std::cmp::Reverse(r.created_at.clone()),
                )
            });
            for r in surplus.iter().take((have - decision.replicas) as usize) {
                self.let_go(&caller, r, now_ms).await?;
            }
        }
        let running = current
            .iter()
            .filter(|r| r.state == InstanceState::Running.as_str())
            .count() as u32;
        if !old.is_empty() && (running >= decision.replicas || decision.replicas == 0) {
            for r in &old {
                self.let_go(&caller, r, now_ms).await?;
            }
        }
        let still_draining: Vec<ReplicaRecord> = replicas
            .iter()
            .filter(|r| !revived.contains(&r.instance_id))
            .cloned()
            .collect();
        self.end_drains(d, &caller, &still_draining, now_ms).await?;
        let next = ScaleState {
            pending: decision.pending,
            blocked,
        };
        if i64::from(decision.replicas) != i64::from(d.target) || next != state {
            self.store
                .set_deployment_scale(
                    &d.id,
                    i64::from(decision.replicas),
                    &serde_json::to_string(&next).unwrap_or_default(),
                )
                .await?;
        }
        Ok(())
    }

    /// How busy the current generation's running replicas' CPUs were, as
    /// their hosts observed lately.
    async fn replicas_cpu(&self, d: &Deployment, now_ms: i64) -> Result<Option<CpuUse>> {
        let since = chrono::DateTime::from_timestamp_millis(now_ms - CPU_FRESH_MS)
            .map(tessera_store::timestamp)
            .unwrap_or_default();
        let seen = self.store.replicas_cpu(&d.id, d.generation, &since).await?;
        let replicas = seen.len() as u32;
        Ok((replicas > 0).then(|| CpuUse {
            replicas,
            average_percent: (seen.iter().map(|p| u64::from(*p)).sum::<u64>() / u64::from(replicas))
                as u32,
        }))
    }

    /// How long to wait before another replica, when the current
    /// generation's keep failing: doubling with each failure.
    async fn backoff(&self, d: &Deployment, now_ms: i64) -> Result<Option<i64>> {
        let (failures, last) = self.store.deployment_failures(&d.id, d.generation).await?;
        let Some(last_ms) = last
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.timestamp_millis())
            .filter(|_| failures > 0)
        else {
            return Ok(None);
        };
        let wait = (500i64 << failures.min(7)).min(MAX_BACKOFF_MS);
        let left = last_ms + wait - now_ms;
        Ok((left > 0).then_some(left))
    }

    /// Lets a replica go: one that serves gets no new requests and is
    /// deleted once it has answered those it has ([`App::end_drains`]);
    /// any other is deleted now.
    async fn let_go(&self, caller: &Principal, r: &ReplicaRecord, now_ms: i64) -> Result<()> {
        if r.draining_ms > 0 {
            return Ok(());
        }
        if r.state == InstanceState::Running.as_str() {
            self.store
                .set_replica_draining(&r.instance_id, now_ms)
                .await?;
        } else {
            self.retire_replica(caller, r).await;
        }
        Ok(())
    }

    /// Deletes the draining replicas no front door has a request in flight
    /// to (once every process had time to see them draining), and those
    /// that drained for longer than [`DRAIN_MAX_MS`].
    async fn end_drains(
        &self,
        d: &Deployment,
        caller: &Principal,
        replicas: &[ReplicaRecord],
        now_ms: i64,
    ) -> Result<()> {
        let draining: Vec<&ReplicaRecord> = replicas.iter().filter(|r| r.draining_ms > 0).collect();
        if draining.is_empty() {
            return Ok(());
        }
        let mut busy = self.store.busy_replicas(&d.id, now_ms - FRESH_MS).await?;
        busy.extend(self.front_door.busy(&d.id));
        for r in draining {
            let since = now_ms - r.draining_ms;
            let done = since >= DRAIN_SETTLE_MS && !busy.contains(&r.instance_id);
            if done || since >= DRAIN_MAX_MS {
                if !done {
                    tracing::info!(deployment = %d.name, replica = %r.instance_id, "a replica still busy after draining for long is deleted");
                }
                self.retire_replica(caller, r).await;
            }
        }
        Ok(())
    }

    /// Deletes a replica; one still being made is left for a later pass.
    pub(crate) async fn retire_replica(&self, caller: &Principal, r: &ReplicaRecord) {
        if r.state == InstanceState::Provisioning.as_str()
            || r.state == InstanceState::Stopping.as_str()
        {
            return;
        }
        if let Err(err) = self.delete_instance(caller, &r.instance_id).await {
            tracing::debug!(replica = %r.instance_id, error = %err, "a replica could not be deleted yet");
        }
    }

    /// Who the scaler acts as in a project: its admin, for its replicas.
    async fn scaler_principal(&self, project_id: &str) -> Result<Principal> {
        let project =
            self.store.project(project_id).await?.ok_or_else(|| {
                Error::corrupt(format!("deployment of missing project {project_id}"))
            })?;
        Ok(Principal {
            user_id: String::new(),
            username: "scaler".into(),
            project_id: project.id,
            project_name: project.name,
            role: Role::Admin,
            install_role: None,
            scopes: None,
            token_id: None,
            expires_at: None,
            compute_scopes: None,
            login: None,
        })
    }

    /// Records a new replica of the deployment's current generation
    /// (refused by the store past `limit`), and starts making it.
    pub(crate) async fn create_replica(
        &self,
        caller: &Principal,
        d: &Deployment,
        id: String,
        limit: u32,
    ) -> Result<()> {
        let compute = &d.spec.compute;
        let kind = self
            .catalog
            .serverless_compute(&compute.name)
            .cloned()
            .ok_or_else(|| Error::NoCapacity(format!("{} has no capacity here", compute.name)))?;
        let workload = workload_of(d)
            .ok_or_else(|| Error::corrupt(format!("deployment {} has no container", d.id)))?;
        let private = d.spec.registry.is_private.then_some(d.project_id.as_str());
        let memory_mb = kind.memory_mb.saturating_mul(u64::from(compute.size));
        let mut spec = InstanceSpecInput {
            instance_type: kind.name.clone(),
            image: host_image_name(&workload.image, private),
            vcpus: Some(kind.cpus(compute.size)),
            memory_mb: Some(memory_mb),
            disk_gb: Some(0),
            is_spot: d.spec.is_spot,
            description: Some(format!("replica of deployment {}", d.name)),
            cpu_millis: Some(kind.cpu_millis(compute.size)),
            workload: Some(workload),
            ..InstanceSpecInput::default()
        };
        let network = self.attach_new_instance(&d.project_id, &mut spec).await?;
        spec.privileged = self.store.project_policy(&d.project_id).await?.privileged;
        // The id's last digits are random (its first are the time).
        let short = &id[id.len().saturating_sub(6)..];
        let instance = NewInstance {
            id: id.clone(),
            project_id: d.project_id.clone(),
            name: format!("{}-{short}", d.name),
            labels: serde_json::json!({ "deployment": d.name }),
            spec: serde_json::to_value(&spec).unwrap_or_default(),
            memory_mb: i64::try_from(memory_mb).unwrap_or(i64::MAX),
            vcpus: i64::from(kind.cpus(compute.size)),
            micros_per_hour: tessera_core::catalog::to_micros(
                kind.price_per_hour * f64::from(compute.size),
            ),
            volumes: Vec::new(),
            attach: Vec::new(),
            container: None,
            network: Some(network),
            // The control plane makes replicas itself.
            created_by: None,
            replica: Some(NewReplica {
                deployment_id: d.id.clone(),
                generation: d.generation,
                limit: i64::from(limit),
            }),
        };
        // Paid for as an instance of the Verda face is: refused, in the
        // transaction that records it, when the project's balance does not
        // cover an hour of it with what else it runs.
        self.record_instance(caller, &instance, &[], true).await?;
        tracing::info!(deployment = %d.name, replica = %id, "replica requested");
        Ok(())
    }
}
