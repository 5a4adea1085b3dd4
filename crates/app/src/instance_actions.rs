//! Power and deletion as one call that says whether anything had to be
//! done: what faces with bulk actions (Verda's `PUT /instances`) need. A
//! delete may take the instance's volumes with it, to the trash or for
//! good; volumes it leaves are detached when the instance is gone.

use crate::App;
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::instances::Deletion;
use tessera_core::Permission;
use tessera_core::status::{InstanceState, OperationKind, VolumeStatus};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceAction {
    Start,
    /// Shut down, keeping CPUs, volumes and disk.
    Stop,
    /// `volume_ids`: which of its volumes go too (`None`: its OS volume,
    /// as Verda's document says; the others are detached and kept).
    Delete {
        volume_ids: Option<Vec<String>>,
        permanently: bool,
    },
    /// Delete a shut-down instance and keep every volume, detached (Verda's
    /// `hibernate`); refused while it runs.
    Hibernate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActionOutcome {
    /// Under way.
    Started,
    /// The instance was already in the state asked for.
    Already,
}

impl App {
    pub async fn instance_action(
        &self,
        caller: &Principal,
        id: &str,
        action: &InstanceAction,
    ) -> Result<ActionOutcome> {
        // Allowed or not before anything is said of the instance's state:
        // a caller who may not act is refused even where nothing was to be
        // done (the native face refuses it the same).
        match action {
            InstanceAction::Start | InstanceAction::Stop => {
                caller.require(Permission::InstanceCreate)?;
            }
            // Its volumes may go with it (or stay, detached).
            InstanceAction::Delete { .. } | InstanceAction::Hibernate => {
                caller.require(Permission::InstanceDelete)?;
                caller.require(Permission::VolumeWrite)?;
            }
        }
        let instance = self.instance(caller, id).await?;
        // The scaler's to start, stop and delete: one shut down from here
        // would be left so, its deployment short of a replica.
        if instance.spec.workload.is_some() {
            return Err(replica_refused(id));
        }
        let creating = instance.state == InstanceState::Provisioning && instance.host_id.is_none();
        match action {
            InstanceAction::Start => {
                if instance.state == InstanceState::Running || creating {
                    return Ok(ActionOutcome::Already);
                }
                // The face checked the balance for the whole request.
                self.start_paid(caller, id).await?;
            }
            InstanceAction::Stop => {
                if instance.state == InstanceState::Stopped {
                    return Ok(ActionOutcome::Already);
                }
                self.stop_instance(caller, id).await?;
            }
            InstanceAction::Hibernate => {
                if instance.state == InstanceState::Terminated {
                    return Ok(ActionOutcome::Already);
                }
                if instance.state != InstanceState::Stopped {
                    return Err(Error::invalid(
                        "action",
                        format!(
                            "instance {id} is {}: shut it down before hibernating it",
                            instance.state
                        ),
                    ));
                }
                // Every volume stays, detached once the instance is gone.
                if !self.delete_started(caller, id).await? {
                    return Ok(ActionOutcome::Already);
                }
            }
            InstanceAction::Delete {
                volume_ids,
                permanently,
            } => {
                if instance.state == InstanceState::Terminated {
                    return Ok(ActionOutcome::Already);
                }
                let attached = self.instance_volumes(&instance.id).await?;
                // With a delete of it under way (this request sent before,
                // another's), a volume named may be deleted already.
                let deleting = self.delete_under_way(&instance).await?;
                let going: Vec<String> = match volume_ids {
                    None => attached
                        .into_iter()
                        .filter(|v| v.is_os_volume)
                        .map(|v| v.id.to_string())
                        .collect(),
                    Some(ids) => {
                        let mut going = Vec::new();
                        for volume_id in ids {
                            let known = attached.iter().any(|v| *v.id == **volume_id)
                                || (deleting
                                    && match self
                                        .project_volume(&caller.project_id, volume_id)
                                        .await
                                    {
                                        Ok(v) => v.status == VolumeStatus::Deleted.as_str(),
                                        Err(Error::NotFound(_)) => false,
                                        Err(other) => return Err(other),
                                    });
                            if !known {
                                return Err(Error::invalid(
                                    "volume_ids",
                                    format!("volume {volume_id} is not attached to instance {id}"),
                                ));
                            }
                            going.push(volume_id.clone());
                        }
                        going
                    }
                };
                // A delete that joins another one under way (answered as
                // that one is) still takes the volumes it names: they would
                // otherwise stay, billed, after the caller was told they went.
                let begun = self.delete_started(caller, id).await?;
                for volume_id in going {
                    // Its storage is destroyed once the instance is gone
                    // from its host. Read again if it changed meanwhile (its
                    // host reporting on it): the delete is under way, so it
                    // goes with the instance whatever changed, unless it
                    // was attached to another instance meanwhile.
                    self.trash_volume_as_it_is(&volume_id, *permanently, &instance.id)
                        .await?;
                }
                if !begun {
                    return Ok(ActionOutcome::Already);
                }
            }
        }
        Ok(ActionOutcome::Started)
    }

    /// `action` on every instance of `ids`, as one request naming them
    /// all (Verda's `PUT /instances`): each answered on its own. A delete's
    /// `volume_ids` name the volumes going with any of the instances: each
    /// instance takes those attached to it. One attached to none of them is
    /// a 400 for the whole request, before anything is done (unless a
    /// delete of one of them is under way, which may have taken it).
    pub async fn instances_action(
        &self,
        caller: &Principal,
        ids: &[String],
        action: &InstanceAction,
    ) -> Result<Vec<Result<ActionOutcome>>> {
        let InstanceAction::Delete {
            volume_ids: Some(volume_ids),
            permanently,
        } = action
        else {
            let mut outcomes = Vec::with_capacity(ids.len());
            for id in ids {
                outcomes.push(self.instance_action(caller, id, action).await);
            }
            return Ok(outcomes);
        };
        caller.require(Permission::InstanceDelete)?;
        caller.require(Permission::VolumeWrite)?;
        // Each instance's share; `None`: not found (its own error follows).
        let mut shares: Vec<Option<Vec<String>>> = Vec::with_capacity(ids.len());
        let mut deleting = Vec::new();
        let mut unplaced: Vec<&String> = volume_ids.iter().collect();
        for (i, id) in ids.iter().enumerate() {
            let Ok(instance) = self.instance(caller, id).await else {
                shares.push(None);
                continue;
            };
            let attached = self.instance_volumes(&instance.id).await?;
            let share: Vec<String> = volume_ids
                .iter()
                .filter(|v| attached.iter().any(|a| *a.id == ***v))
                .cloned()
                .collect();
            unplaced.retain(|v| !share.contains(v));
            if self.delete_under_way(&instance).await? {
                deleting.push(i);
            }
            shares.push(Some(share));
        }
        if !unplaced.is_empty() {
            if deleting.is_empty() {
                return Err(Error::invalid(
                    "volume_ids",
                    format!(
                        "volume {} is not attached to any of the instances named",
                        unplaced[0]
                    ),
                ));
            }
            // Perhaps deleted with one of them already: each such delete
            // checks it again.
            for &i in &deleting {
                if let Some(share) = &mut shares[i] {
                    share.extend(unplaced.iter().map(|v| (*v).clone()));
                }
            }
        }
        let mut outcomes = Vec::with_capacity(ids.len());
        for (id, share) in ids.iter().zip(shares) {
            let action = InstanceAction::Delete {
                volume_ids: Some(share.unwrap_or_default()),
                permanently: *permanently,
            };
            outcomes.push(self.instance_action(caller, id, &action).await);
        }
        Ok(outcomes)
    }

    /// Whether the change under way on `instance` is its delete (this
    /// request sent before, or another's).
    async fn delete_under_way(&self, instance: &crate::instances::Instance) -> Result<bool> {
        Ok(match instance.operation_id.as_deref() {
            Some(op) => self
                .stored_operation(op)
                .await?
                .is_some_and(|op| op.kind == OperationKind::InstanceDelete),
            None => false,
        })
    }

    /// Starts deleting instance `id`: `false` when another request's
    /// delete got there first (under way or done), which a repeated delete
    /// takes as done. Terminated since the caller read it (`Gone`: a delete
    /// sent with this one ended meanwhile, or its creation failed) is done
    /// too; answered as started, six deletes sent together could answer
    /// 202 twice, the first and one that came after it ended.
    async fn delete_started(&self, caller: &Principal, id: &str) -> Result<bool> {
        Ok(match self.delete_instance(caller, id).await? {
            Deletion::Begun(_) => true,
            Deletion::Joined(_) | Deletion::Gone(_) => false,
        })
    }
}

/// An action on a serverless replica, which is its deployment's to change.
pub(crate) fn replica_refused(id: &str) -> Error {
    Error::invalid(
        "id",
        format!(
            "instance {id} is a replica of a serverless deployment; scale, pause, restart or \
             delete the deployment instead"
        ),
    )
}
