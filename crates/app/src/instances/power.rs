//! Deleting, stopping and starting an instance: one-step operations on
//! its host.

use super::Instance;
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::operations::Run;
use crate::{App, HostCallError};
use tessera_core::Permission;
use tessera_core::status::{InstanceState, OperationKind, OperationStatus, TerminationCause};
use tessera_store::{InstanceUpdate, NewOperation, OperationEnd};

/// What a one-step operation does to its instance's state: `kind` begins
/// on an instance in one of `from`, which goes to `to` while it runs.
struct Power {
    kind: OperationKind,
    from: &'static [InstanceState],
    to: InstanceState,
}

const DELETE: Power = Power {
    kind: OperationKind::InstanceDelete,
    from: &[InstanceState::Running, InstanceState::Stopped],
    to: InstanceState::Stopping,
};

const STOP: Power = Power {
    kind: OperationKind::InstanceStop,
    from: &[InstanceState::Running],
    to: InstanceState::Stopping,
};

const START: Power = Power {
    kind: OperationKind::InstanceStart,
    from: &[InstanceState::Stopped],
    to: InstanceState::Provisioning,
};

/// A delete's parameters.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeleteParams {
    pub instance_id: String,
    /// The creation this delete finishes undoing on its host, when it is
    /// one (see `App::hand_to_delete`); a tenant's delete has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwinds: Option<Unwinding>,
}

/// Why the creation a delete finishes undoing ended.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Unwinding {
    /// The instance's cause of termination once its host lets it go.
    pub cause: TerminationCause,
    pub why: String,
}

/// How a delete was answered: deleting is idempotent.
#[derive(Clone, Debug)]
pub enum Deletion {
    /// This request began it: the instance with the operation doing it.
    Begun(Instance),
    /// Another request's delete is under way (or ended as this one was
    /// asked): the instance as it is, with that operation while it runs.
    Joined(Instance),
    /// It was terminated already (a creation that failed, or a delete done
    /// before): the instance as it is.
    Gone(Instance),
}

impl Deletion {
    pub fn instance(self) -> Instance {
        match self {
            Deletion::Begun(i) | Deletion::Joined(i) | Deletion::Gone(i) => i,
        }
    }
}

impl App {
    /// Deletes an instance: it stops, leaves its host and gives its CPUs
    /// back, through an operation.
    pub async fn delete_instance(&self, caller: &Principal, id: &str) -> Result<Deletion> {
        caller.require(Permission::InstanceDelete)?;
        let instance = self.project_instance(&caller.project_id, id).await?;
        if instance.state == InstanceState::Terminated && instance.operation_id.is_none() {
            return Ok(Deletion::Gone(instance));
        }
        // Twice at most: a creation that ended as it was to be cancelled
        // leaves an instance to delete.
        let mut why = String::new();
        let mut read = Some(instance);
        for _ in 0..2 {
            let instance = match read.take() {
                Some(instance) => instance,
                None => self.project_instance(&caller.project_id, id).await?,
            };
            let begun = self
                .begin_power_of(caller, id, instance, &DELETE, false)
                .await;
            why = match begun {
                Ok(instance) => return Ok(Deletion::Begun(instance)),
                Err(Error::Conflict(why)) => why,
                Err(other) => return Err(other),
            };
            // Deletes are idempotent: one sent while another is under way,
            // or as it ends, answers as that one does, not with a 409.
            let now = self.project_instance(&caller.project_id, id).await?;
            let Some(op) = now.operation_id.as_deref() else {
                match now.state {
                    InstanceState::Terminated => return Ok(Deletion::Joined(now)),
                    _ => continue,
                }
            };
            match self.stored_operation(op).await?.map(|op| op.kind) {
                Some(OperationKind::InstanceDelete) => return Ok(Deletion::Joined(now)),
                // A delete supersedes a creation under way, as clouds let a
                // pending instance be terminated: the creation is cancelled
                // (undone, its host told to let go) and the instance ends
                // terminated, or goes on to a delete if its host is slow to.
                Some(OperationKind::InstanceCreate) => {
                    if self.store.request_operation_cancel_by_delete(op).await? {
                        self.cancel_requested_of(
                            op,
                            OperationKind::InstanceCreate,
                            &now.project_id,
                        );
                        return Ok(Deletion::Joined(now));
                    }
                }
                _ => break,
            }
        }
        Err(Error::Conflict(why))
    }

    pub async fn stop_instance(&self, caller: &Principal, id: &str) -> Result<Instance> {
        caller.require(Permission::InstanceCreate)?;
        self.begin_power(caller, id, &STOP, false).await
    }

    /// Starts a stopped instance. A prepaid project's balance must cover
    /// an hour of it on top of what the project runs (as Verda's starts
    /// always do).
    pub async fn start_instance(&self, caller: &Principal, id: &str) -> Result<Instance> {
        caller.require(Permission::InstanceCreate)?;
        // One that costs nothing starts whatever the balance, as the
        // check before the write lets it.
        let paid = self.store.project_policy(&caller.project_id).await?.prepaid
            && self.check_start_funds(caller, &[id.to_string()]).await? > 0;
        self.start(caller, id, paid).await
    }

    /// Starts a stopped instance whose face checked the balance first
    /// (Verda's starts always do, every instance of a request at once):
    /// checked again in the start's own transaction, unless it costs
    /// nothing.
    pub(crate) async fn start_paid(&self, caller: &Principal, id: &str) -> Result<Instance> {
        let paid = self
            .store
            .stopped_instance_rate(&caller.project_id, id)
            .await?
            .is_some_and(|rate| rate > 0);
        self.start(caller, id, paid).await
    }

    /// Starts a stopped instance with no look at the balance: what a
    /// restart stopped (it was running, and paid for, a moment before).
    pub(crate) async fn start_again(&self, caller: &Principal, id: &str) -> Result<Instance> {
        self.start(caller, id, false).await
    }

    /// Starts a stopped instance; `paid`: the project's balance must cover
    /// an hour of it with all the project runs, checked in the write that
    /// begins the start, so starts racing one another cannot each pass on
    /// the same money (the check before it only answers sooner).
    async fn start(&self, caller: &Principal, id: &str, paid: bool) -> Result<Instance> {
        caller.require(Permission::InstanceCreate)?;
        self.begin_power(caller, id, &START, paid).await
    }

    async fn begin_power(
        &self,
        caller: &Principal,
        id: &str,
        power: &Power,
        paid: bool,
    ) -> Result<Instance> {
        let instance = self.project_instance(&caller.project_id, id).await?;
        self.begin_power_of(caller, id, instance, power, paid).await
    }

    /// [`App::begin_power`] of `instance`, the caller's instance `id` as
    /// just read.
    async fn begin_power_of(
        &self,
        caller: &Principal,
        id: &str,
        instance: Instance,
        power: &Power,
        paid: bool,
    ) -> Result<Instance> {
        let Power { kind, from, to } = *power;
        let op = NewOperation {
            id: crate::new_uuid(),
            project_id: caller.project_id.clone(),
            kind,
            resource_id: Some(instance.id.to_string()),
            params: serde_json::json!({ "instance_id": instance.id }),
            created_by: caller.username.clone(),
        };
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        // Taken by this process as it goes in (it drives it at once), and
        // watched from before.
        let changes = self.watch_changes(&op.id);
        let Some(taken) = self
            .store
            .begin_instance_operation(
                &instance.id,
                &from,
                to.as_str(),
                &op,
                &self.deadline(),
                paid.then(|| self.paid_check(&caller.project_id, Default::default()))
                    .as_ref(),
            )
            .await?
        else {
            let now = self.project_instance(&caller.project_id, id).await?;
            let why = match &now.operation_id {
                Some(op) => format!("operation {op} is still under way on it"),
                None => format!("it is {}", now.state),
            };
            let verb = kind.as_str().trim_start_matches("instance_");
            return Err(Error::Conflict(format!(
                "instance {id} cannot {verb}: {why}"
            )));
        };
        self.publish(
            "instance",
            &instance.id,
            Some(&caller.project_id),
            to.as_str(),
        );
        // The answer is the instance as the operation began (read before
        // the operation is driven, which starts from this read: while the
        // operation is under way nothing else changes where the instance
        // is or what it is), but the operation is driven whatever the read
        // does.
        let instance = self.project_instance(&caller.project_id, id).await;
        self.spawn_taken(taken, changes, instance.as_ref().ok().cloned());
        instance
    }

    /// Drives an `instance_delete`, `instance_stop` or `instance_start`
    /// operation: one call to the host, then the instance's new state.
    pub(crate) async fn run_instance_power(
        &self,
        run: &mut Run,
        kind: OperationKind,
    ) -> Result<()> {
        let _guard = self
            .instance_guard(run.op.resource_id.as_deref().unwrap_or(""))
            .await?;
        let instance = self.begun_instance(run).await?;
        let unwinds = match kind {
            OperationKind::InstanceDelete => run.params::<DeleteParams>()?.unwinds,
            _ => None,
        };
        let outcome = match kind {
            OperationKind::InstanceDelete => self
                .on_host_by_id(&instance, |agent, id| async move {
                    agent.delete_instance(&id).await
                })
                .await
                .map(|()| None),
            OperationKind::InstanceStop => self
                .on_host_by_id(&instance, |agent, id| async move {
                    agent.stop_instance(&id).await
                })
                .await
                .map(|()| None),
            _ => match self.prepare_volumes(&instance).await {
                Err(why) => Err(why),
                Ok(volumes) => self
                    .on_host_with(&instance, volumes, |agent, spec| async move {
                        agent.start_instance(&spec).await
                    })
                    .await
                    .map(Some),
            },
        };
        // A delete on a host that leaves the fleet without its agent (a
        // forced server delete, the agent gone for good) ends without it:
        // nothing will ever be told there again.
        let host_gone = match (&outcome, kind, &instance.host_id) {
            (Err(why), OperationKind::InstanceDelete, Some(host)) => {
                self.retiring_without_agent(host.as_str(), why.is_silence())
                    .await?
            }
            _ => false,
        };
        use InstanceState::{Running, Stopped, Terminated};
        let (status, error, state, release) = match (&outcome, kind) {
            (Err(why), OperationKind::InstanceDelete) if host_gone => (
                OperationStatus::Completed,
                Some(format!(
                    "deleted as its host left the fleet without its agent ({why}): what the \
                     instance had there is still on that machine"
                )),
                Terminated,
                true,
            ),
            (Ok(_) | Err(HostCallError::NoAgent), OperationKind::InstanceDelete)
                if instance.host_id.is_none() =>
            {
                (OperationStatus::Completed, None, Terminated, true)
            }
            (Ok(_), OperationKind::InstanceDelete) => {
                (OperationStatus::Completed, None, Terminated, true)
            }
            (Ok(_), OperationKind::InstanceStop) => {
                (OperationStatus::Completed, None, Stopped, false)
            }
            (Ok(_), _) => (OperationStatus::Completed, None, Running, false),
            (Err(HostCallError::Timeout(_)), OperationKind::InstanceDelete) => {
                // Its CPUs stay held until the host confirms: try again later.
                return Err(Error::HostTimeout(format!(
                    "deleting {} on its host timed out",
                    instance.id
                )));
            }
            (Err(why), OperationKind::InstanceDelete) => {
                return Err(Error::HostFailed(format!(
                    "deleting {} on its host failed: {why}",
                    instance.id
                )));
            }
            // A stop or start that failed leaves the instance as it was.
            (Err(why), OperationKind::InstanceStop) => (
                OperationStatus::Failed,
                Some(why.to_string()),
                Running,
                false,
            ),
            (Err(why), _) => (
                OperationStatus::Failed,
                Some(why.to_string()),
                Stopped,
                false,
            ),
        };
        let (private_ip, ssh_endpoint) = match &outcome {
            Ok(Some(report)) => (
                Some(instance.address_from_report(&report.private_ip)),
                self.ssh_endpoint(instance.host_id.as_ref(), report).await,
            ),
            _ => (None, None),
        };
        let mut result = serde_json::json!({ "instance_id": instance.id, "state": state.as_str() });
        if let (OperationStatus::Completed, Some(detail)) = (status, &error) {
            // Done, with something to say (deleted as its host left).
            result["detail"] = detail.as_str().into();
        }
        // A creation's undo ends the instance for the creation's cause,
        // with its reason (unless its host left, which says more).
        let (cause, detail) = match &unwinds {
            Some(u) if state == Terminated => (u.cause, error.clone().or(Some(u.why.clone()))),
            _ => (TerminationCause::Deleted, error.clone()),
        };
        let host = instance.host_id.clone();
        let settled = self
            .store
            .settle_instance_operation(
                &OperationEnd {
                    id: &run.op.id,
                    status,
                    result: (status == OperationStatus::Completed).then_some(&result),
                    error: (status != OperationStatus::Completed)
                        .then_some(error.as_deref())
                        .flatten(),
                },
                &instance.id,
                &InstanceUpdate {
                    state,
                    state_detail: detail,
                    cause: (state == Terminated).then_some(cause),
                    private_ip,
                    ssh_endpoint,
                },
                release,
            )
            .await?;
        if release && let Some(host) = host {
            // What this release freed is known (this process settled it):
            // the view frees it without reading the host, where it can.
            let freed = settled
                && instance.cpus.as_ref().is_some_and(|cpus| {
                    self.placement.released(
                        &host,
                        cpus,
                        instance.memory_mb,
                        self.placement_needs(&instance.spec).1,
                    )
                });
            if !freed {
                self.placement.refresh_host(&self.store, &host).await?;
            }
        }
        if settled && unwinds.is_some() && state == Terminated {
            self.discard_made_volumes(&instance).await?;
        }
        if settled {
            run.ended = Some(status);
            tracing::info!(instance = %instance.id, kind = %kind, status = %status, state = %state, "instance operation ended");
            self.publish(
                "instance",
                &instance.id,
                Some(&instance.project_id),
                state.as_str(),
            );
        }
        Ok(())
    }
}
