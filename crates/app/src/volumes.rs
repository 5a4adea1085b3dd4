//! Block volumes: raw disks an instance sees as `/dev/vdX`.
//!
//! A volume's storage lives on one host: a volume made with an instance
//! lives on the instance's host, and a volume made on its own gets a home
//! when it is first attached (until then it is only a record, and resizing
//! it is only a number). Volumes are attached and detached while their
//! instance is shut down; an instance sees its volumes when it starts.
//! Deleting a volume moves it to the trash, where it stays for
//! [`crate::AppConfig::volume_trash`] (96 hours by default) and can be
//! restored; then, or at once when deleted permanently, the reconciler
//! destroys its storage on its host. A volume costs its catalog price per
//! GB and month from creation until its storage is destroyed.
//!
//! An instance's OS volume (`vda`) is its root file system, made and
//! destroyed by its host with the instance: it is listed and billed like
//! the others, but it cannot be moved to another instance, and what it
//! held is gone once its instance is deleted.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::{App, HostCallError, has_nul};
use std::sync::Arc;
use tessera_agent_api::VolumeSpec;
use tessera_core::catalog::{MAX_DISK_GB, to_micros};
use tessera_core::status::{InstanceState, VolumeStatus};
use tessera_core::{HostId, InstanceId, Permission, ProjectId, VolumeId};
use tessera_store::{MeterChange, NewVolume, VolumeRecord};

/// A volume, as the app speaks of it. Made from its store row once, here.
#[derive(Clone, Debug)]
pub struct Volume {
    pub id: VolumeId,
    pub project_id: ProjectId,
    pub name: String,
    pub volume_type: String,
    pub size_gb: u64,
    pub location: String,
    pub status: VolumeStatus,
    /// Its instance's root file system (`vda`), which goes with it.
    pub is_os_volume: bool,
    pub instance_id: Option<InstanceId>,
    /// Its device name on its instance (`vdb`), while attached.
    pub target: Option<String>,
    /// The host its storage lives on, once it has one.
    pub host_id: Option<HostId>,
    /// The user who made it.
    pub created_by: Option<String>,
    pub created_at: String,
    /// When it went to the trash.
    pub trashed_at: Option<String>,
    /// When its storage was destroyed for good.
    pub purged_at: Option<String>,
    /// When it was deleted, to the trash or for good.
    pub deleted_at: Option<String>,
}

impl Volume {
    fn from_record(r: VolumeRecord) -> Result<Volume> {
        let status = r
            .status
            .parse()
            .map_err(|e| Error::corrupt(format!("volume {}: status: {e}", r.id)))?;
        Ok(Volume {
            id: VolumeId::new(r.id),
            project_id: ProjectId::new(r.project_id),
            name: r.name,
            volume_type: r.volume_type,
            size_gb: u64::try_from(r.size_gb).unwrap_or(0),
            location: r.location,
            status,
            is_os_volume: r.is_os_volume != 0,
            instance_id: r.instance_id.map(InstanceId::new),
            target: r.target,
            host_id: r.host_id.map(HostId::new),
            created_by: r.created_by,
            created_at: r.created_at,
            trashed_at: r.trashed_at,
            purged_at: r.purged_at,
            deleted_at: r.deleted_at,
        })
    }
}

/// Which of a project's volumes to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeSet {
    /// Not deleted.
    Live,
    /// Deleted but not yet purged: restorable.
    Trash,
}

fn models(records: Vec<VolumeRecord>) -> Result<Vec<Volume>> {
    records.into_iter().map(Volume::from_record).collect()
}

/// A volume to make: with an instance, or on its own.
#[derive(Clone, Debug, Default)]
pub struct VolumeInput {
    pub name: String,
    pub size_gb: u64,
    pub volume_type: String,
}

#[derive(Clone, Debug, Default)]
pub struct CreateVolume {
    pub volume: VolumeInput,
    pub location: String,
    /// Instances to attach it to (at most one: a volume is not shared).
    pub instance_ids: Vec<String>,
    /// Tags to put on it: `(key, value)`.
    pub tags: Vec<(String, String)>,
}

/// An action on volumes (`PUT /volumes` in the Verda face).
#[derive(Clone, Debug)]
pub enum VolumeAction {
    Attach {
        instance_id: String,
    },
    Detach,
    Rename {
        name: String,
    },
    Resize {
        size_gb: u64,
    },
    Delete {
        permanently: bool,
    },
    Restore,
    /// A copy, named `name` (absent: the source's name and `-clone`), of
    /// `volume_type` (absent: the source's).
    Clone {
        name: Option<String>,
        volume_type: Option<String>,
    },
}

impl VolumeAction {
    pub fn name(&self) -> &'static str {
        match self {
            VolumeAction::Attach { .. } => "attach",
            VolumeAction::Detach => "detach",
            VolumeAction::Rename { .. } => "rename",
            VolumeAction::Resize { .. } => "resize",
            VolumeAction::Delete { .. } => "delete",
            VolumeAction::Restore => "restore",
            VolumeAction::Clone { .. } => "clone",
        }
    }
}

/// Device names of an instance's volumes, in order: the OS volume is `vda`.
pub(crate) fn target(n: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    match n < letters.len() {
        true => format!("vd{}", letters[n] as char),
        false => format!(
            "vd{}{}",
            letters[n / 26 - 1] as char,
            letters[n % 26] as char
        ),
    }
}

/// The most volumes one instance may have.
pub const MAX_VOLUMES_PER_INSTANCE: usize = 64;

/// What new volumes of these sizes add to their project's usage.
pub(crate) fn volumes_usage(sizes_gb: &[u64]) -> tessera_core::quota::Usage {
    tessera_core::quota::Usage {
        volumes: sizes_gb.len() as i64,
        volume_gb: sizes_gb.iter().map(|s| *s as i64).sum(),
        ..tessera_core::quota::Usage::default()
    }
}

impl App {
    /// Checks a new volume's name, size and type; answers its hourly price.
    pub(crate) fn check_volume(&self, field: &'static str, input: &VolumeInput) -> Result<i64> {
        check_name(field, &input.name)?;
        if !(1..=MAX_DISK_GB).contains(&input.size_gb) {
            return Err(Error::invalid(
                field,
                format!("a volume size must be 1 to {MAX_DISK_GB} GB"),
            ));
        }
        let kind = self.volume_kind(field, &input.volume_type)?;
        Ok(to_micros(kind.hourly(input.size_gb)))
    }

    /// The catalog's volume type `name`, or a 400 on `field` naming the
    /// known ones.
    fn volume_kind(
        &self,
        field: &'static str,
        name: &str,
    ) -> Result<&tessera_core::catalog::VolumeType> {
        self.catalog.volume_type(name).ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "unknown volume type {:?}; known types: {}",
                    name,
                    tessera_core::catalog::Catalog::names(
                        self.catalog.volume_types.iter().map(|t| t.name.as_str())
                    )
                ),
            )
        })
    }

    /// Refuses a volume larger than any host of `location` can hold: a
    /// volume lives on one host, so the bound is the most free disk one of
    /// the location's ready hosts reports (hosts that report none, such as
    /// simulated ones, bound nothing beyond the catalog's maximum).
    pub(crate) async fn check_volume_room(
        &self,
        field: &'static str,
        location: &str,
        size_gb: u64,
    ) -> Result<()> {
        let room = self.store.location_disk_gb(location).await?;
        if let Some(room) = room
            && size_gb > room
        {
            return Err(Error::invalid(
                field,
                format!(
                    "a volume of {size_gb} GB does not fit in {location}: its largest host has \
                     {room} GB free"
                ),
            ));
        }
        Ok(())
    }

    /// A quota check ahead of work on a host that cannot wait for the
    /// store's own (atomic) check at the end. Answers whether any limit
    /// applies to what the write adds at all (when none does, what the
    /// project uses is not read).
    pub(crate) async fn check_quota_now(&self, quota: &tessera_store::QuotaCheck) -> Result<bool> {
        let own = self.store.project_quota(&quota.project_id).await?;
        let limits = quota.limits(&own);
        if quota.unbounded_under(&limits) {
            return Ok(false);
        }
        let used = self.store.project_usage(&quota.project_id).await?;
        match quota.exceeded(&limits, &used) {
            Some(exceeded) => Err(Error::QuotaExceeded(exceeded)),
            None => Ok(true),
        }
    }

    fn volume_rate(&self, volume: &VolumeRecord) -> i64 {
        self.catalog
            .volume_type(&volume.volume_type)
            .map_or(0, |t| {
                to_micros(t.hourly(u64::try_from(volume.size_gb).unwrap_or(0)))
            })
    }

    /// A record for a new volume of the caller's project.
    pub(crate) fn new_volume(
        &self,
        caller: &Principal,
        input: &VolumeInput,
        location: &str,
        os: bool,
        micros_per_hour: i64,
    ) -> NewVolume {
        NewVolume {
            record: VolumeRecord {
                id: uuid::Uuid::new_v4().to_string(),
                project_id: caller.project_id.clone(),
                name: input.name.trim().to_string(),
                volume_type: input.volume_type.clone(),
                size_gb: input.size_gb as i64,
                location: location.to_string(),
                status: VolumeStatus::Detached.to_string(),
                is_os_volume: i64::from(os),
                instance_id: None,
                target: None,
                host_id: None,
                // Its user's id, as an instance's (Verda's `created_by_user_id`).
                created_by: caller.acting_user(),
                created_at: tessera_store::now(),
                trashed_at: None,
                purged_at: None,
                generation: 1,
                deleted_at: None,
            },
            micros_per_hour,
        }
    }

    /// Makes a volume, attached to an instance when one is named.
    pub async fn create_volume(&self, caller: &Principal, req: CreateVolume) -> Result<Volume> {
        caller.require(Permission::VolumeWrite)?;
        let rate = self.check_volume("size", &req.volume)?;
        let tags = crate::tags::check_tags("tags", &req.tags)?;
        if req.instance_ids.len() > 1 {
            return Err(Error::invalid(
                "instance_ids",
                "a volume can be attached to one instance only (shared file systems, NVMe_Shared included, are not offered yet)",
            ));
        }
        self.check_funds(caller, rate, "the volume").await?;
        let volume = self.new_volume(caller, &req.volume, &req.location, false, rate);
        let id = volume.record.id.clone();
        if let Some(instance_id) = req.instance_ids.first() {
            // Refused before anything is made when the instance cannot
            // take it now (its state, its location, its host).
            self.attachable(caller, &volume.record, instance_id).await?;
        }
        self.check_volume_room("size", &req.location, req.volume.size_gb)
            .await?;
        let quota = self.paid_check(&caller.project_id, volumes_usage(&[req.volume.size_gb]));
        self.store
            .insert_volumes(std::slice::from_ref(&volume), Some(&quota))
            .await?;
        if let Some(instance_id) = req.instance_ids.first()
            && let Err(err) = self.attach_volume(caller, &id, instance_id).await
        {
            // Made for an instance it cannot join: it is not kept.
            let record = self.project_volume(&caller.project_id, &id).await?;
            let mut gone = record.clone();
            gone.status = VolumeStatus::Deleted.to_string();
            gone.purged_at = Some(tessera_store::now());
            gone.deleted_at.clone_from(&gone.purged_at);
            self.store
                .update_volume(&gone, record.generation, Some(MeterChange::Stop), None)
                .await?;
            return Err(err);
        }
        self.tag_new(&caller.project_id, crate::tags::Tagged::Volume, &id, &tags)
            .await?;
        tracing::info!(volume = %id, project = %caller.project_name, "volume created");
        Volume::from_record(self.project_volume(&caller.project_id, &id).await?)
    }

    pub async fn volumes(&self, caller: &Principal, set: VolumeSet) -> Result<Vec<Volume>> {
        caller.require(Permission::VolumeRead)?;
        let set = match set {
            VolumeSet::Live => tessera_store::VolumeSet::Live,
            VolumeSet::Trash => tessera_store::VolumeSet::Trash,
        };
        models(self.store.volumes(&caller.project_id, set).await?)
    }

    /// The project's volumes attached to its instances, as part of what
    /// its instances are (Verda's instance names its volumes): for a
    /// caller that may read instances, whether or not it may read volumes,
    /// as an instance read alone shows them too.
    pub async fn attached_volumes(&self, caller: &Principal) -> Result<Vec<Volume>> {
        caller.require(Permission::InstanceRead)?;
        let live = self
            .store
            .volumes(&caller.project_id, tessera_store::VolumeSet::Live)
            .await?;
        models(
            live.into_iter()
                .filter(|v| v.instance_id.is_some())
                .collect(),
        )
    }

    /// A volume of the project, deleted ones included.
    pub async fn volume(&self, caller: &Principal, id: &str) -> Result<Volume> {
        caller.require(Permission::VolumeRead)?;
        Volume::from_record(self.project_volume(&caller.project_id, id).await?)
    }

    pub(crate) async fn project_volume(&self, project_id: &str, id: &str) -> Result<VolumeRecord> {
        let volume = match has_nul(id) {
            true => None,
            false => self.store.volume(id).await?,
        };
        volume
            .filter(|v| v.project_id == project_id)
            .ok_or_else(|| Error::NotFound(format!("volume {id} not found")))
    }

    /// The volumes attached to an instance.
    pub async fn instance_volumes(&self, instance_id: &str) -> Result<Vec<Volume>> {
        models(self.store.instance_volumes(instance_id).await?)
    }

    /// Does `action` to a volume. Answers the new volume's id for a clone.
    pub async fn volume_action(
        &self,
        caller: &Principal,
        id: &str,
        action: &VolumeAction,
    ) -> Result<Option<String>> {
        caller.require(Permission::VolumeWrite)?;
        match action {
            VolumeAction::Attach { instance_id } => {
                self.attach_volume(caller, id, instance_id).await?
            }
            VolumeAction::Detach => self.detach_volume(caller, id).await?,
            VolumeAction::Rename { name } => {
                let volume = self.live_volume(caller, id).await?;
                check_name("name", name)?;
                let mut next = volume.clone();
                next.name = name.trim().to_string();
                self.write_volume(&next, volume.generation, None).await?;
            }
            VolumeAction::Resize { size_gb } => self.resize_volume(caller, id, *size_gb).await?,
            VolumeAction::Delete { permanently } => {
                self.delete_volume(caller, id, *permanently).await?;
            }
            VolumeAction::Restore => {
                let volume = self.project_volume(&caller.project_id, id).await?;
                restorable(&volume)?;
                let mut next = volume.clone();
                next.status = VolumeStatus::Detached.to_string();
                next.trashed_at = None;
                next.deleted_at = None;
                self.write_volume(&next, volume.generation, None).await?;
            }
            VolumeAction::Clone { name, volume_type } => {
                return self
                    .clone_volume(caller, id, name.as_deref(), volume_type.as_deref())
                    .await
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// A volume of the project that is not deleted.
    async fn live_volume(&self, caller: &Principal, id: &str) -> Result<VolumeRecord> {
        let volume = self.project_volume(&caller.project_id, id).await?;
        if volume.status == VolumeStatus::Deleted.as_str() {
            return Err(Error::invalid(
                "id",
                format!("volume {id} is deleted; restore it first"),
            ));
        }
        Ok(volume)
    }

    async fn write_volume(
        &self,
        next: &VolumeRecord,
        read_generation: i64,
        meter: Option<MeterChange>,
    ) -> Result<()> {
        if !self
            .store
            .update_volume(next, read_generation, meter, None)
            .await?
        {
            return Err(Error::Conflict(format!(
                "volume {} changed meanwhile; try again",
                next.id
            )));
        }
        Ok(())
    }

    /// The instance a volume may be attached to or detached from now: one
    /// of the project's, shut down.
    async fn stopped_instance(
        &self,
        caller: &Principal,
        instance_id: &str,
    ) -> Result<crate::instances::Instance> {
        let instance = self
            .project_instance(&caller.project_id, instance_id)
            .await
            .map_err(|_| {
                Error::invalid("instance_id", format!("instance {instance_id} not found"))
            })?;
        if instance.spec.workload.is_some() {
            return Err(crate::instance_actions::replica_refused(instance_id));
        }
        if instance.state == InstanceState::Terminated {
            return Err(Error::invalid(
                "instance_id",
                format!("instance {instance_id} is terminated; volumes attach to live instances"),
            ));
        }
        if instance.state != InstanceState::Stopped || instance.operation_id.is_some() {
            return Err(Error::invalid(
                "instance_id",
                format!(
                    "instance {instance_id} is {}; shut it down before attaching or detaching volumes",
                    instance.state
                ),
            ));
        }
        Ok(instance)
    }

    async fn attach_volume(&self, caller: &Principal, id: &str, instance_id: &str) -> Result<()> {
        let volume = self.live_volume(caller, id).await?;
        let Some(instance) = self.attachable(caller, &volume, instance_id).await? else {
            return Ok(());
        };
        let attached = self.store.instance_volumes(instance_id).await?;
        let taken: Vec<String> = attached.iter().filter_map(|v| v.target.clone()).collect();
        let free = (0..=MAX_VOLUMES_PER_INSTANCE)
            .map(target)
            .find(|t| !taken.contains(t))
            .unwrap_or_else(|| target(MAX_VOLUMES_PER_INSTANCE));
        if !self
            .store
            .attach_volume(
                &volume.id,
                volume.generation,
                &instance.id,
                &free,
                instance.host_id.as_deref(),
            )
            .await?
        {
            return Err(Error::Conflict(format!(
                "volume {id} or instance {instance_id} changed meanwhile; try again"
            )));
        }
        tracing::info!(volume = %id, instance = %instance_id, "volume attached");
        Ok(())
    }

    /// The instance `volume` may be attached to now, or `None` when it
    /// already is.
    async fn attachable(
        &self,
        caller: &Principal,
        volume: &VolumeRecord,
        instance_id: &str,
    ) -> Result<Option<crate::instances::Instance>> {
        let id = &volume.id;
        if volume.instance_id.as_deref() == Some(instance_id) {
            return Ok(None);
        }
        if volume.instance_id.is_some() {
            return Err(Error::invalid(
                "id",
                format!(
                    "volume {id} is attached to another instance; detach it first (a volume is attached to one instance at a time)"
                ),
            ));
        }
        if volume.is_os_volume != 0 {
            return Err(Error::invalid(
                "id",
                format!(
                    "volume {id} is an OS volume (its instance's root file system); it cannot be attached elsewhere"
                ),
            ));
        }
        let instance = self.stopped_instance(caller, instance_id).await?;
        if let Some(location) = instance.spec.location.as_deref()
            && location != volume.location
        {
            return Err(Error::invalid(
                "instance_id",
                format!(
                    "volume {id} is in {} and instance {instance_id} in {location}",
                    volume.location
                ),
            ));
        }
        if let (Some(home), Some(host)) = (&volume.host_id, &instance.host_id)
            && home.as_str() != host.as_str()
        {
            return Err(Error::invalid(
                "instance_id",
                format!(
                    "volume {id} is stored on another host than instance {instance_id}; \
                     volumes are local to a host (clone it there instead)"
                ),
            ));
        }
        let attached = self.store.instance_volumes(instance_id).await?;
        if attached.len() >= MAX_VOLUMES_PER_INSTANCE {
            return Err(Error::invalid(
                "instance_id",
                format!(
                    "instance {instance_id} has {MAX_VOLUMES_PER_INSTANCE} volumes, the most it can"
                ),
            ));
        }
        Ok(Some(instance))
    }

    async fn detach_volume(&self, caller: &Principal, id: &str) -> Result<()> {
        let volume = self.live_volume(caller, id).await?;
        let Some(instance_id) = volume.instance_id.clone() else {
            return Ok(());
        };
        not_a_root(&volume, "detached")?;
        self.stopped_instance(caller, &instance_id).await?;
        let mut next = volume.clone();
        next.status = VolumeStatus::Detached.to_string();
        next.instance_id = None;
        next.target = None;
        self.write_volume(&next, volume.generation, None).await?;
        tracing::info!(volume = %id, instance = %instance_id, "volume detached");
        Ok(())
    }

    async fn resize_volume(&self, caller: &Principal, id: &str, size_gb: u64) -> Result<()> {
        let volume = self.live_volume(caller, id).await?;
        if size_gb == resizable(&volume, size_gb)? {
            return Ok(());
        }
        let mut next = volume.clone();
        next.size_gb = size_gb as i64;
        let rate = self.volume_rate(&next);
        self.check_funds(
            caller,
            rate - self.volume_rate(&volume),
            "the larger volume",
        )
        .await?;
        self.check_volume_room("size", &volume.location, size_gb)
            .await?;
        let growth = volumes_usage(&[size_gb.saturating_sub(volume.size_gb as u64)]);
        let quota = self.paid_check(
            &caller.project_id,
            tessera_core::quota::Usage {
                volumes: 0,
                ..growth
            },
        );
        self.check_quota_now(&quota).await?;
        // The new size is recorded first, within the quota and the balance
        // (atomically), then the host grows the disk: a refusal changes
        // nothing anywhere, and a host that does not answer is told the
        // recorded size when its agent resyncs.
        if !self
            .store
            .update_volume(
                &next,
                volume.generation,
                Some(MeterChange::Rerate(rate)),
                Some(&quota),
            )
            .await?
        {
            return Err(Error::Conflict(format!(
                "volume {id} changed meanwhile; try again"
            )));
        }
        if let Some(host) = &volume.host_id
            && let Err(why) = self
                .ensure_on_host(
                    host,
                    &VolumeSpec {
                        id: volume.id.clone(),
                        size_gb,
                        clone_of: None,
                    },
                )
                .await
        {
            // A host that did not answer may grow it yet (a disk never
            // shrinks), and is told the recorded size when its agent
            // resyncs: the new size stands. One that said no: back to the
            // size it has there.
            if why.is_silence() {
                return Err(Error::HostTimeout(format!(
                    "volume {id} is resized; its host did not confirm in time and is told again \
                     when it answers"
                )));
            }
            let undone = self
                .store
                .update_volume(
                    &volume,
                    volume.generation + 1,
                    Some(MeterChange::Rerate(self.volume_rate(&volume))),
                    None,
                )
                .await?;
            if !undone {
                tracing::warn!(volume = %id, "a failed resize was not undone: the volume changed meanwhile");
            }
            return Err(Error::HostFailed(format!(
                "resizing volume {id} on its host failed: {why}"
            )));
        }
        tracing::info!(volume = %id, size_gb, "volume resized");
        Ok(())
    }

    /// Moves a volume to the trash, or deletes it for good. Answers `false`
    /// when it was deleted already (nothing changes then).
    pub async fn delete_volume(
        &self,
        caller: &Principal,
        id: &str,
        permanently: bool,
    ) -> Result<bool> {
        caller.require(Permission::VolumeWrite)?;
        let volume = self.project_volume(&caller.project_id, id).await?;
        if volume.status == VolumeStatus::Deleted.as_str()
            && (volume.trashed_at.is_none() || !permanently)
        {
            return Ok(false);
        }
        self.deletable(caller, &volume).await?;
        self.trash_volume(&volume, permanently).await?;
        Ok(true)
    }

    /// `Ok` unless the volume's instance runs.
    async fn deletable(&self, caller: &Principal, volume: &VolumeRecord) -> Result<()> {
        if let Some(instance_id) = &volume.instance_id {
            not_a_root(volume, "deleted")?;
            let instance = self
                .project_instance(&caller.project_id, instance_id)
                .await?;
            if instance.state != InstanceState::Stopped {
                return Err(Error::invalid(
                    "id",
                    format!(
                        "volume {} is attached to instance {instance_id}, which is {}; shut it down or detach the volume first",
                        volume.id, instance.state
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that `action` could be done to volume `id` now, changing
    /// nothing: a bulk action checks every volume before it changes any.
    async fn check_volume_action(
        &self,
        caller: &Principal,
        id: &str,
        action: &VolumeAction,
    ) -> Result<()> {
        match action {
            VolumeAction::Attach { instance_id } => {
                let volume = self.live_volume(caller, id).await?;
                self.attachable(caller, &volume, instance_id).await?;
            }
            VolumeAction::Detach => {
                let volume = self.live_volume(caller, id).await?;
                if let Some(instance_id) = &volume.instance_id {
                    not_a_root(&volume, "detached")?;
                    self.stopped_instance(caller, instance_id).await?;
                }
            }
            VolumeAction::Rename { name } => {
                self.live_volume(caller, id).await?;
                check_name("name", name)?;
            }
            VolumeAction::Resize { size_gb } => {
                resizable(&self.live_volume(caller, id).await?, *size_gb)?;
            }
            VolumeAction::Delete { .. } => {
                let volume = self.project_volume(&caller.project_id, id).await?;
                self.deletable(caller, &volume).await?;
            }
            VolumeAction::Restore => {
                restorable(&self.project_volume(&caller.project_id, id).await?)?;
            }
            VolumeAction::Clone { name, volume_type } => {
                self.live_volume(caller, id).await?;
                if let Some(name) = name {
                    check_name("name", name)?;
                }
                if let Some(kind) = volume_type {
                    self.volume_kind("type", kind)?;
                }
            }
        }
        Ok(())
    }

    /// What clones or a resize of every volume in `ids` add to the
    /// project's usage and hourly cost, checked together before any is
    /// done: one by one, the first would be made before the last found the
    /// quota or the balance short. (Each is checked again, atomically, as
    /// it is recorded.)
    async fn check_batch_adds(
        &self,
        caller: &Principal,
        ids: &[String],
        action: &VolumeAction,
    ) -> Result<()> {
        let mut adds = tessera_core::quota::Usage::default();
        let mut rate = 0i64;
        match action {
            VolumeAction::Clone { volume_type, .. } if ids.len() > 1 => {
                for id in ids {
                    let volume = self.live_volume(caller, id).await?;
                    let size_gb = u64::try_from(volume.size_gb).unwrap_or(0);
                    let kind = self.volume_kind(
                        "type",
                        volume_type.as_deref().unwrap_or(&volume.volume_type),
                    )?;
                    rate = rate.saturating_add(to_micros(kind.hourly(size_gb)));
                    adds += volumes_usage(&[size_gb]);
                }
            }
            VolumeAction::Resize { size_gb } if ids.len() > 1 => {
                // A volume named twice grows once.
                let distinct: std::collections::BTreeSet<&String> = ids.iter().collect();
                for id in distinct {
                    let volume = self.live_volume(caller, id).await?;
                    let mut grown = volume.clone();
                    grown.size_gb = i64::try_from(*size_gb).unwrap_or(i64::MAX);
                    rate =
                        rate.saturating_add(self.volume_rate(&grown) - self.volume_rate(&volume));
                    adds.volume_gb = adds
                        .volume_gb
                        .saturating_add(grown.size_gb.saturating_sub(volume.size_gb));
                }
            }
            _ => return Ok(()),
        }
        // Nothing added is nothing to check (a balance already short, a
        // limit set below the usage, only stop growth).
        if rate > 0 {
            self.check_funds(caller, rate, "these volumes together")
                .await?;
        }
        if adds != tessera_core::quota::Usage::default() {
            self.check_quota_now(&self.paid_check(&caller.project_id, adds))
                .await?;
        }
        Ok(())
    }

    /// Does `action` to every volume in `ids`, after checking that it could
    /// be done to each: bad input changes nothing. Answers the new ids of
    /// clones.
    pub async fn volume_actions(
        &self,
        caller: &Principal,
        ids: &[String],
        action: &VolumeAction,
    ) -> Result<Vec<String>> {
        caller.require(Permission::VolumeWrite)?;
        for id in ids {
            self.check_volume_action(caller, id, action).await?;
        }
        self.check_batch_adds(caller, ids, action).await?;
        let mut made = Vec::new();
        for id in ids {
            if let Some(new_id) = self.volume_action(caller, id, action).await? {
                made.push(new_id);
            }
        }
        Ok(made)
    }

    /// Marks a volume deleted and detached: in the trash, or (permanently)
    /// due for purging now.
    pub(crate) async fn trash_volume(
        &self,
        volume: &VolumeRecord,
        permanently: bool,
    ) -> Result<()> {
        let mut next = volume.clone();
        next.status = VolumeStatus::Deleted.to_string();
        next.instance_id = None;
        next.target = None;
        let now = tessera_store::now();
        next.trashed_at = match permanently {
            true => None,
            false => Some(now.clone()),
        };
        next.deleted_at = Some(now);
        self.write_volume(&next, volume.generation, None).await?;
        tracing::info!(volume = %volume.id, permanently, "volume deleted");
        Ok(())
    }

    /// [`App::trash_volume`] of a volume of `instance` being deleted, as
    /// the store has it now, again when it changes under the write. One
    /// deleted already is left so (or, in the trash, deleted for good if
    /// `permanently`); one attached to another instance meanwhile is not
    /// this delete's to take.
    pub(crate) async fn trash_volume_as_it_is(
        &self,
        id: &str,
        permanently: bool,
        instance: &str,
    ) -> Result<()> {
        for _ in 0..5 {
            let Some(volume) = self.store.volume(id).await? else {
                return Ok(());
            };
            if volume.instance_id.as_deref().is_some_and(|i| i != instance) {
                return Ok(());
            }
            if volume.status == VolumeStatus::Deleted.as_str()
                && (volume.trashed_at.is_none() || !permanently)
            {
                return Ok(());
            }
            match self.trash_volume(&volume, permanently).await {
                Err(Error::Conflict(_)) => continue,
                other => return other,
            }
        }
        Err(Error::Unavailable(format!(
            "volume {id} kept changing while being deleted; try again"
        )))
    }

    async fn clone_volume(
        &self,
        caller: &Principal,
        id: &str,
        name: Option<&str>,
        volume_type: Option<&str>,
    ) -> Result<String> {
        let volume = self.live_volume(caller, id).await?;
        let input = VolumeInput {
            name: name.map_or_else(|| format!("{}-clone", volume.name), str::to_string),
            size_gb: u64::try_from(volume.size_gb).unwrap_or(1),
            volume_type: volume_type.unwrap_or(&volume.volume_type).to_string(),
        };
        // Storage of any type is the same kind on a host: the type is the
        // clone's label and price.
        self.volume_kind("type", &input.volume_type)?;
        let rate = self.check_volume("name", &input)?;
        self.check_funds(caller, rate, "the clone").await?;
        let quota = self.paid_check(&caller.project_id, volumes_usage(&[input.size_gb]));
        self.check_quota_now(&quota).await?;
        let mut clone = self.new_volume(caller, &input, &volume.location, false, rate);
        clone.record.host_id = volume.host_id.clone();
        if let Some(host) = &volume.host_id {
            self.ensure_on_host(
                host,
                &VolumeSpec {
                    id: clone.record.id.clone(),
                    size_gb: input.size_gb,
                    clone_of: Some(volume.id.clone()),
                },
            )
            .await
            .map_err(|e| {
                Error::HostFailed(format!("cloning volume {id} on its host failed: {e}"))
            })?;
        }
        if let Err(refused) = self
            .store
            .insert_volumes(std::slice::from_ref(&clone), Some(&quota))
            .await
        {
            // Over the quota or the balance meanwhile (or the store
            // failed): the copy made on the host goes again.
            if let Some(host) = &volume.host_id {
                let removed = match self.agent(&HostId::new(host.clone())).await {
                    Ok(Some(agent)) => self
                        .host_call(agent.delete_volume(&clone.record.id))
                        .await
                        .map_err(|e| e.to_string()),
                    Ok(None) => Err("no agent".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(why) = removed {
                    tracing::warn!(clone = %clone.record.id, error = %why, "a refused clone's copy stays on its host");
                }
            }
            return Err(refused.into());
        }
        tracing::info!(volume = %id, clone = %clone.record.id, "volume cloned");
        Ok(clone.record.id)
    }

    /// Makes sure the storage of every volume homed on a host is there: an
    /// agent that lost its state gets its volumes back (empty, for a
    /// simulated host).
    pub(crate) async fn resync_volumes(
        &self,
        host_id: &str,
        agent: &Arc<dyn tessera_agent_api::HostAgent>,
    ) -> Result<()> {
        for volume in self.store.host_volumes(host_id).await? {
            let spec = VolumeSpec {
                id: volume.id.clone(),
                size_gb: u64::try_from(volume.size_gb).unwrap_or(1),
                clone_of: None,
            };
            if let Err(err) = self.host_call(agent.ensure_volume(&spec)).await {
                tracing::warn!(volume = %volume.id, error = %err, "volume resync failed");
            }
        }
        Ok(())
    }

    async fn ensure_on_host(&self, host: &str, spec: &VolumeSpec) -> Result<(), HostCallError> {
        let agent = self
            .agent(&HostId::new(host.to_string()))
            .await
            .map_err(|e| HostCallError::Failed(e.to_string()))?
            .ok_or(HostCallError::NoAgent)?;
        self.host_call(agent.ensure_volume(spec)).await.map(|_| ())
    }

    /// Makes sure the storage of every volume of an instance placed on a
    /// host is there, at its size; a volume without a home gets the
    /// instance's host. Answers the instance's surroundings, its volumes
    /// among them, as read before (for [`App::on_host_with`], which sends
    /// them to the host without reading them again), or `None` for an
    /// instance on no host.
    pub(crate) async fn prepare_volumes(
        &self,
        instance: &crate::instances::Instance,
    ) -> Result<Option<tessera_store::InstanceSurroundings>, HostCallError> {
        let Some(host) = instance.host_id.clone() else {
            return Ok(None);
        };
        let surroundings = self
            .store
            .instance_surroundings(&instance.id, &instance.project_id)
            .await
            .map_err(|e| HostCallError::Failed(e.to_string()))?;
        // The OS volume is the instance's root file system, which the host
        // makes with the instance.
        for volume in surroundings.volumes.iter().filter(|v| v.is_os_volume == 0) {
            match &volume.host_id {
                Some(home) if home.as_str() != host.as_str() => {
                    return Err(HostCallError::Failed(format!(
                        "volume {} is stored on another host; volumes are local to a host",
                        volume.id
                    )));
                }
                Some(_) => {}
                None => {
                    let mut next = volume.clone();
                    next.host_id = Some(host.to_string());
                    let homed = self
                        .store
                        .update_volume(&next, volume.generation, None, None)
                        .await
                        .map_err(|e| HostCallError::Failed(e.to_string()))?;
                    if !homed {
                        return Err(HostCallError::Failed(format!(
                            "volume {} changed meanwhile",
                            volume.id
                        )));
                    }
                }
            }
            self.ensure_on_host(
                &host,
                &VolumeSpec {
                    id: volume.id.clone(),
                    size_gb: u64::try_from(volume.size_gb).unwrap_or(1),
                    clone_of: None,
                },
            )
            .await?;
        }
        Ok(Some(surroundings))
    }

    /// Destroys the storage of volumes deleted for good or in the trash for
    /// longer than the trash keeps them. Called by the reconciler.
    pub(crate) async fn purge_volumes(&self) -> Result<()> {
        let keep = chrono::Duration::from_std(self.config.volume_trash)
            .unwrap_or(chrono::Duration::hours(96));
        let cutoff = tessera_store::timestamp(chrono::Utc::now() - keep);
        for volume in self.store.volumes_to_purge(&cutoff).await? {
            let Some(_work) =
                crate::InFlight::enter(&self.in_flight, format!("volume:{}", volume.id))
            else {
                continue;
            };
            if let Some(host) = &volume.host_id {
                let outcome = match self.agent(&HostId::new(host.clone())).await? {
                    Some(agent) => self.host_call(agent.delete_volume(&volume.id)).await,
                    None => Err(HostCallError::NoAgent),
                };
                if let Err(err) = outcome {
                    tracing::debug!(volume = %volume.id, error = %err, "purging the volume's storage failed; retrying later");
                    continue;
                }
            }
            let mut next = volume.clone();
            next.purged_at = Some(tessera_store::now());
            if self
                .store
                .update_volume(&next, volume.generation, Some(MeterChange::Stop), None)
                .await?
            {
                tracing::info!(volume = %volume.id, "volume purged");
            }
        }
        Ok(())
    }
}

/// Refuses to take an instance's OS volume (its root file system) from it:
/// the instance would be left with no root to boot. It goes with its
/// instance, or stays when the instance is deleted keeping it.
fn not_a_root(volume: &VolumeRecord, done: &str) -> Result<()> {
    match (volume.is_os_volume != 0, &volume.instance_id) {
        (true, Some(instance)) => Err(Error::invalid(
            "id",
            format!(
                "volume {} is the OS volume of instance {instance}; it cannot be {done} while \
                 the instance exists (delete the instance, naming the volume in volume_ids to \
                 delete it too)",
                volume.id
            ),
        )),
        _ => Ok(()),
    }
}

fn check_name(field: &'static str, name: &str) -> Result<()> {
    let name = name.trim();
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            "a volume name must be 1 to 255 printable characters",
        ));
    }
    Ok(())
}

/// The volume's current size, when it may grow to `size_gb`.
fn resizable(volume: &VolumeRecord, size_gb: u64) -> Result<u64> {
    let current = u64::try_from(volume.size_gb).unwrap_or(0);
    if size_gb < current {
        return Err(Error::invalid(
            "size",
            format!(
                "volume {} has {current} GB; a volume can grow, never shrink",
                volume.id
            ),
        ));
    }
    if size_gb > MAX_DISK_GB {
        return Err(Error::invalid(
            "size",
            format!("a volume size must be at most {MAX_DISK_GB} GB"),
        ));
    }
    Ok(current)
}

fn restorable(volume: &VolumeRecord) -> Result<()> {
    if volume.status != VolumeStatus::Deleted.as_str() || volume.trashed_at.is_none() {
        return Err(Error::invalid(
            "id",
            format!("volume {} is not in the trash", volume.id),
        ));
    }
    if volume.purged_at.is_some() {
        return Err(Error::invalid(
            "id",
            format!("volume {} was deleted permanently", volume.id),
        ));
    }
    Ok(())
}
