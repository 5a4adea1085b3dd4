//! Creating an instance: the `instance_create` saga. `placed` commits a
//! placement decision to the CPU ledger with its step log entry in one
//! transaction; `created` is the host running it. A host that fails to
//! create it lets it go, and `failed_on` takes `placed` back with its CPUs
//! (one transaction), so it is placed again, up to [`CREATE_ATTEMPTS`]
//! hosts. Undo: delete it on the host, then return its CPUs.

use super::validate::validate;
use super::{CreateInstance, Instance, MAX_PLACE_ATTEMPTS};
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::operations::{Run, Step};
use crate::{App, HostCallError, new_id};
use base64::Engine;
use tessera_agent_api::InstanceReport;
use tessera_core::Permission;
use tessera_core::placement::{Decision, Request};
use tessera_core::status::{
    InstanceState, OperationKind, OperationStatus, TerminationCause, VolumeStatus,
};
use tessera_store::{
    CANCELLED_BY_DELETE, CpuClaim, InstanceUpdate, InstancesAdded, NewInstance, NewOperation,
    OperationEnd,
};

/// How many hosts a creation tries before it fails, as Nova's default
/// `max_attempts`: the first and, each time one fails to create the
/// instance, another.
pub(crate) const CREATE_ATTEMPTS: usize = 3;

/// Who makes the delete that finishes an unwound creation on its host.
const UNWOUND_BY: &str = "tessera:unwind";

const NETWORK_GONE: &str =
    "the instance's subnet or a security group was deleted meanwhile; try again";

/// The error of a subnet or group deleted while an instance was made in it.
pub(crate) fn network_gone() -> Error {
    Error::Conflict(NETWORK_GONE.into())
}

/// Whether `err` is [`network_gone`]'s.
fn is_network_gone(err: &Error) -> bool {
    matches!(err, Error::Conflict(why) if why == NETWORK_GONE)
}

/// The error of a subnet with no address left.
pub(crate) fn subnet_full(subnet: &str) -> Error {
    Error::NoCapacity(format!(
        "subnet {subnet} has no free address left; use another subnet (spec.subnet_id)"
    ))
}

/// What new instances add to their project's usage.
pub(crate) fn instances_usage(instances: &[NewInstance]) -> tessera_core::quota::Usage {
    let mut adds = tessera_core::quota::Usage::default();
    for instance in instances {
        adds.instances += 1;
        adds.vcpus += instance.vcpus;
        adds.memory_mb += instance.memory_mb;
        adds.volumes += instance.volumes.len() as i64;
        adds.volume_gb += instance
            .volumes
            .iter()
            .map(|v| v.record.size_gb)
            .sum::<i64>();
        adds.containers += i64::from(instance.container.is_some());
    }
    adds
}

impl App {
    /// What placement needs of an instance's type besides its CPUs and
    /// memory: the host architecture, and a share of a shared CPU (a
    /// container type of under one core).
    pub(crate) fn placement_needs(
        &self,
        spec: &super::InstanceSpecInput,
    ) -> (Option<String>, Option<u32>) {
        if let Some(kind) = self.catalog.instance_type(&spec.instance_type) {
            return (Some(kind.arch.clone()), None);
        }
        if let Some(kind) = self.catalog.compute_type(&spec.instance_type) {
            return (Some(kind.arch.clone()), kind.share());
        }
        // A serverless replica: its deployment's share of a CPU, if under one.
        match self.catalog.serverless_compute(&spec.instance_type) {
            Some(kind) => (
                Some(kind.arch.clone()),
                spec.cpu_millis
                    .filter(|m| *m < tessera_core::placement::CPU_MILLIS),
            ),
            None => (None, None),
        }
    }

    /// The registry reference its host pulls the instance's image from
    /// when it lacks it: a serverless replica's image, or what the catalog
    /// gives for the image it names.
    pub(crate) fn image_ref(&self, spec: &super::InstanceSpecInput) -> Option<String> {
        match &spec.workload {
            Some(w) => Some(w.image.clone()),
            None => self.catalog.image(&spec.image).and_then(|i| i.oci.clone()),
        }
    }

    /// The image the instance's host must have already (none when it can
    /// pull it).
    fn image_needed(&self, spec: &super::InstanceSpecInput) -> Option<String> {
        self.image_ref(spec).is_none().then(|| spec.image.clone())
    }

    /// What placement is asked for an instance of `spec` with `memory_mb`,
    /// in the order to ask: a location names a region or, failing that, a
    /// zone. Each asks for a pooled host's CPUs or a whole unit of a
    /// partitioned one; with `image`, on a host that has it.
    fn placement_requests(
        &self,
        spec: &super::InstanceSpecInput,
        memory_mb: u64,
        image: Option<&str>,
    ) -> Vec<Request> {
        let (arch, share) = self.placement_needs(spec);
        let wanted = match &spec.location {
            None => vec![(None, None)],
            Some(l) => vec![(Some(l.clone()), None), (None, Some(l.clone()))],
        };
        wanted
            .into_iter()
            .map(|(region, zone)| Request::Cpus {
                count: spec.vcpus.unwrap_or(1),
                memory_mb,
                region,
                zone,
                whole_units: share.is_none(),
                arch: arch.clone(),
                share,
                image: image.map(str::to_string),
            })
            .collect()
    }

    /// Records an instance and starts the operation that creates it.
    pub async fn create_instance(
        &self,
        caller: &Principal,
        mut req: CreateInstance,
    ) -> Result<Instance> {
        caller.require(Permission::InstanceCreate)?;
        validate(&self.catalog, &mut req)?;
        if let Some(location) = &req.spec.location {
            self.check_fleet_location("spec.location", location).await?;
        }
        let tags = crate::tags::check_tags("tags", &req.tags)?;
        for key in &req.spec.ssh_key_ids {
            if self.project_ssh_key(&caller.project_id, key).await.is_err() {
                return Err(Error::invalid(
                    "spec.ssh_key_ids",
                    format!(
                        "SSH key {key:?} not found in workspace {}",
                        caller.project_name
                    ),
                ));
            }
        }
        if let Some(script_id) = req.spec.startup_script_id.clone() {
            let script = self
                .project_script(&caller.project_id, &script_id)
                .await
                .map_err(|_| {
                    Error::invalid(
                        "startup_script_id",
                        format!("startup script {script_id} not found"),
                    )
                })?;
            req.spec.user_data =
                Some(base64::engine::general_purpose::STANDARD.encode(script.script));
        }
        let kind = self
            .catalog
            .instance_type(&req.spec.instance_type)
            .cloned()
            .unwrap_or_else(|| unreachable!("validate checked the type"));
        if kind.gpus > 0 {
            // Agents report no GPUs, and placement counts none: such an
            // instance would run without its GPUs, billed for them.
            return Err(Error::NoCapacity(format!(
                "instance type {} needs {} GPU(s) ({}); no host here offers GPUs (Tessera does \
                 not place GPUs yet): choose a CPU type",
                kind.name, kind.gpus, kind.gpu_name
            )));
        }
        let location = req.spec.location.clone().unwrap_or_default();
        if req.require_room && !self.fits(&kind, &location) {
            // The view may miss what other replicas freed or added.
            self.placement
                .refresh_changed(&self.store, std::time::Instant::now())
                .await?;
            if !self.fits(&kind, &location) {
                return Err(Error::NoCapacity(format!(
                    "no host in {location} has room for a {} now; GET /instance-availability \
                     says which types fit where",
                    kind.name
                )));
            }
        }
        // The instance's own meter runs at its type's price, for the size
        // asked; the volumes made with it bill through theirs. The funds
        // check covers both.
        let micros_per_hour =
            tessera_core::catalog::to_micros(req.spec.hourly(&kind, req.os_volume.is_some()));
        let mut with_volumes = micros_per_hour;
        // The OS volume is `vda`; the others follow from `vdb`.
        let mut volumes = Vec::new();
        let mut next_target = 1;
        for (field, input) in req
            .os_volume
            .iter()
            .map(|v| ("os_volume", v))
            .chain(req.volumes.iter().map(|v| ("volumes", v)))
        {
            let rate = self.check_volume(field, input)?;
            self.check_volume_room(field, &location, input.size_gb)
                .await?;
            with_volumes += rate;
            let os = field == "os_volume";
            let mut volume = self.new_volume(caller, input, &location, os, rate);
            volume.record.status = VolumeStatus::Attached.to_string();
            volume.record.target = Some(crate::volumes::target(match os {
                true => 0,
                false => {
                    next_target += 1;
                    next_target - 1
                }
            }));
            volumes.push(volume);
        }
        let mut attach = Vec::new();
        for volume_id in &req.existing_volumes {
            let volume = self
                .project_volume(&caller.project_id, volume_id)
                .await
                .map_err(|_| {
                    Error::invalid("existing_volumes", format!("volume {volume_id} not found"))
                })?;
            if volume.is_os_volume != 0 {
                return Err(Error::invalid(
                    "existing_volumes",
                    format!(
                        "volume {volume_id} is an OS volume; it cannot be attached to another instance"
                    ),
                ));
            }
            if volume.status != VolumeStatus::Detached.as_str() || volume.instance_id.is_some() {
                return Err(Error::invalid(
                    "existing_volumes",
                    format!("volume {volume_id} is {}, not detached", volume.status),
                ));
            }
            if !location.is_empty() && volume.location != location {
                return Err(Error::invalid(
                    "existing_volumes",
                    format!(
                        "volume {volume_id} is in {}, not {location}",
                        volume.location
                    ),
                ));
            }
            attach.push((volume.id, crate::volumes::target(next_target)));
            next_target += 1;
        }
        if volumes.len() + attach.len() > crate::volumes::MAX_VOLUMES_PER_INSTANCE {
            return Err(Error::invalid(
                "volumes",
                format!(
                    "an instance can have at most {} volumes",
                    crate::volumes::MAX_VOLUMES_PER_INSTANCE
                ),
            ));
        }
        // A prepaid project's instances need its balance, whichever face
        // asks (Verda's always do).
        let (privileged, prepaid) = self
            .new_instance_policy(&caller.project_id, &req.spec.image)
            .await?;
        req.require_funds |= prepaid;
        if req.require_funds {
            self.check_funds(caller, with_volumes, &format!("instance {}", req.name))
                .await?;
        }
        // The network as this process knows it: a subnet it read before may
        // be gone since, which the write finds and refuses, forgetting what
        // it knew of the project's network. It is then looked for once more,
        // so that a subnet deleted long ago is answered as not found.
        let asked = req.spec.clone();
        let mut looked_again = false;
        loop {
            let network = self
                .attach_new_instance(&caller.project_id, &mut req.spec)
                .await?;
            req.spec.privileged = privileged;
            let id = new_id("inst");
            for volume in &mut volumes {
                volume.record.instance_id = Some(id.clone());
            }
            req.spec.volumes_made = volumes.iter().map(|v| v.record.id.clone()).collect();
            let spec = serde_json::to_value(&req.spec).unwrap_or_default();
            let labels = serde_json::to_value(&req.labels).unwrap_or_default();
            let instance = NewInstance {
                id: id.clone(),
                project_id: caller.project_id.clone(),
                name: req.name.clone(),
                labels,
                spec,
                memory_mb: req.spec.memory_mb.unwrap_or(0) as i64,
                vcpus: i64::from(req.spec.vcpus.unwrap_or(1)),
                micros_per_hour,
                volumes: volumes.clone(),
                attach: attach.clone(),
                container: None,
                network: Some(network),
                replica: None,
                created_by: caller.acting_user(),
            };
            match self
                .record_instance(caller, &instance, &tags, req.require_funds)
                .await
            {
                Err(err) if is_network_gone(&err) && !looked_again => {
                    looked_again = true;
                    req.spec = asked.clone();
                }
                recorded => return recorded,
            }
        }
    }

    /// Records a new instance (within its project's quota, and its
    /// balance when `paid`) with the operation that creates it, tags it,
    /// and starts the operation. Answers the instance as recorded.
    pub(crate) async fn record_instance(
        &self,
        caller: &Principal,
        instance: &NewInstance,
        tags: &[(String, String)],
        paid: bool,
    ) -> Result<Instance> {
        let id = instance.id.clone();
        let op = NewOperation {
            id: crate::new_uuid(),
            project_id: caller.project_id.clone(),
            kind: OperationKind::InstanceCreate,
            resource_id: Some(id.clone()),
            params: serde_json::json!({ "instance_id": id }),
            created_by: caller.username.clone(),
        };
        let usage = instances_usage(std::slice::from_ref(instance));
        let quota = match paid {
            true => self.paid_check(&caller.project_id, usage),
            false => self.quota_check(&caller.project_id, usage),
        };
        // The operation goes in taken by this process, which drives it at
        // once: watched from before it is written, so a cancel asked from
        // now on is heard.
        let changes = self.watch_changes(&op.id);
        let (written, taken) = match self
            .store
            .insert_instance(instance, &op, Some(&quota), Some(&self.deadline()))
            .await?
        {
            InstancesAdded::Recorded { instances, taken } => (instances, taken),
            InstancesAdded::VolumeTaken => {
                return Err(Error::Conflict(
                    "a volume in existing_volumes was attached elsewhere meanwhile; try again"
                        .into(),
                ));
            }
            InstancesAdded::SubnetFull(subnet) => return Err(subnet_full(&subnet)),
            InstancesAdded::NetworkGone => {
                self.forget_networks(&caller.project_id);
                return Err(network_gone());
            }
            InstancesAdded::ReplicasEnough => {
                return Err(Error::Conflict(
                    "the deployment has all the replicas it may have, or is being deleted".into(),
                ));
            }
        };
        tracing::info!(instance = %id, name = %instance.name, project = %caller.project_name, "instance requested");
        self.publish("instance", &id, Some(&caller.project_id), "provisioning");
        // The answer is what was recorded, as written (not read back),
        // whatever the operation does next.
        let recorded = written
            .into_iter()
            .next()
            .ok_or_else(|| Error::corrupt(format!("instance {id} was recorded without its row")))
            .and_then(Instance::from_record);
        // Driven from now on, whatever happens to this request: an
        // operation taken by this process is otherwise left until its lease
        // passes.
        match taken {
            Some(taken) => self.spawn_taken(*taken, changes, recorded.as_ref().ok().cloned()),
            None => self.spawn_operation(&op.id),
        }
        let recorded = recorded?;
        self.tag_new(&caller.project_id, crate::tags::Tagged::Instance, &id, tags)
            .await?;
        Ok(recorded)
    }

    /// Drives an `instance_create` operation (see the module doc).
    pub(crate) async fn run_instance_create(&self, run: &mut Run) -> Result<()> {
        let mut instance = self.begun_instance(run).await?;
        // The operation was read as this run took it: no need to read it
        // again for a cancel.
        if run.op.cancel_requested != 0 {
            return self
                .unwind_create(run, TerminationCause::Cancelled, "creation cancelled")
                .await;
        }
        loop {
            if !run.done(&Step::Placed) {
                match self
                    .place(run, &instance, |_| Step::Placed, CpuClaim::Place)
                    .await
                {
                    // The instance as the claim left it, without reading it
                    // again: on the host, holding the CPUs, one generation on.
                    Ok(decision) => {
                        instance.host_id = Some(decision.host);
                        instance.cpus = Some(decision.cpus);
                        instance.generation += 1;
                    }
                    Err(Error::NoCapacity(why)) => {
                        return self
                            .unwind_create(run, TerminationCause::NoCapacity, &why)
                            .await;
                    }
                    Err(other) => return Err(other),
                }
            }
            // A cancel asked since the operation was taken is heard below, as
            // soon as the host is asked: no read of the operation here.
            let volumes = match self.prepare_volumes(&instance).await {
                Ok(volumes) => volumes,
                Err(why) => {
                    tracing::warn!(instance = %instance.id, error = %why, "preparing the instance's volumes failed");
                    return self
                        .unwind_create(
                            run,
                            TerminationCause::HostFailed,
                            &format!("the host could not prepare the instance's volumes: {why}"),
                        )
                        .await;
                }
            };
            let create = self.on_host_with(&instance, volumes, |agent, spec| async move {
                agent.create_instance(&spec).await
            });
            // A cancel does not wait for the host to answer.
            let created = tokio::select! {
                created = create => created,
                cancelled = self.until_cancel_requested(run) => {
                    cancelled?;
                    return self.unwind_create(run, TerminationCause::Cancelled, "creation cancelled").await;
                }
            };
            match created {
                Ok(report) => {
                    if let Some(host) = &instance.host_id {
                        self.placement.host_succeeded(host);
                    }
                    return self.settle_running(run, &instance, report).await;
                }
                Err(why) => {
                    tracing::warn!(instance = %instance.id, error = %why, "creating the instance failed");
                    if let Some(host) = &instance.host_id {
                        self.placement.host_failed(host);
                    }
                    if let Some(again) = self.place_again(run, &instance, &why).await? {
                        // A cancel asked meanwhile (on any replica) is
                        // heard before the next host is tried.
                        if self.cancel_requested(run).await? {
                            return self
                                .unwind_create(
                                    run,
                                    TerminationCause::Cancelled,
                                    "creation cancelled",
                                )
                                .await;
                        }
                        instance = again;
                        continue;
                    }
                    return self
                        .unwind_create(
                            run,
                            TerminationCause::HostFailed,
                            &format!("the host could not create the instance: {why}"),
                        )
                        .await;
                }
            }
        }
    }

    /// Takes an instance its host failed to create off that host, to be
    /// placed again (the placement passes over a failing host while
    /// another fits), as Nova reschedules a failed build: the instance as
    /// it is then, or `None` when it stays where it failed and the creation
    /// fails. It stays after [`CREATE_ATTEMPTS`] attempts (the same host
    /// may have failed it more than once, when no other fits), when the
    /// host did not answer in time (it may still be making it), when it
    /// takes a volume not made for it (a volume lives on its host), when
    /// the host does not let go of it or of the storage of the volumes
    /// made for it there, and when the operation is no longer this
    /// process's (checked before the host is asked anything).
    async fn place_again(
        &self,
        run: &mut Run,
        instance: &Instance,
        why: &HostCallError,
    ) -> Result<Option<Instance>> {
        let Some(host) = instance.host_id.clone() else {
            return Ok(None);
        };
        let attempt = run.steps.failed_hosts() + 1;
        if attempt >= CREATE_ATTEMPTS || matches!(why, HostCallError::Timeout(_)) {
            return Ok(None);
        }
        if !self
            .store
            .record_operation_progress(&run.op.id, &run.steps.to_json(), &self.deadline())
            .await?
        {
            return Err(Error::Conflict(format!(
                "operation {} was taken over by another process",
                run.op.id
            )));
        }
        let volumes = self.store.instance_volumes(&instance.id).await?;
        let made = &instance.spec.volumes_made;
        let data = || volumes.iter().filter(|v| v.is_os_volume == 0);
        if data().any(|v| !made.contains(&v.id)) {
            return Ok(None);
        }
        if let Err(err) = self.remove_from_host(instance).await {
            tracing::warn!(instance = %instance.id, %host, error = %err, "the host did not let go of the instance it failed to create");
            return Ok(None);
        }
        let mut rehome = Vec::new();
        for volume in data().filter(|v| v.host_id.as_deref() == Some(host.as_str())) {
            let destroyed = match self.agent(&host).await? {
                Some(agent) => self.host_call(agent.delete_volume(&volume.id)).await,
                None => Err(HostCallError::NoAgent),
            };
            if let Err(err) = destroyed {
                tracing::warn!(instance = %instance.id, volume = %volume.id, %host, error = %err, "the host did not destroy a volume made for the instance it failed to create");
                return Ok(None);
            }
            rehome.push(volume.id.clone());
        }
        let steps = run
            .steps
            .without(|step| *step == Step::Placed)
            .with(Step::FailedOn {
                host: host.clone(),
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            });
        let unplaced = self
            .store
            .unplace_instance(
                &instance.id,
                &rehome,
                (&run.op.id, &steps.to_json(), &self.deadline()),
            )
            .await?;
        self.placement
            .refresh_host(&self.store, host.as_str())
            .await?;
        if !unplaced {
            return Err(Error::Conflict(format!(
                "operation {} was taken over by another process",
                run.op.id
            )));
        }
        run.steps = steps;
        tracing::info!(instance = %instance.id, %host, "the host failed to create the instance; placing it again");
        Ok(Some(self.run_instance(run).await?))
    }

    /// The instance a run starts from: as this process wrote or read it
    /// when it began the operation (no read), or as the store has it.
    pub(super) async fn begun_instance(&self, run: &mut Run) -> Result<Instance> {
        match run.instance.take() {
            Some(instance) => Ok(instance),
            None => self.run_instance(run).await,
        }
    }

    pub(super) async fn run_instance(&self, run: &Run) -> Result<Instance> {
        let id = run.op.resource_id.clone().unwrap_or_default();
        self.stored_instance(&id).await?.ok_or_else(|| {
            Error::corrupt(format!(
                "operation {} acts on instance {id}, which does not exist",
                run.op.id
            ))
        })
    }

    /// Gives the instance exclusive CPUs on a host of its location, and
    /// records the step `step` makes of the decision with them. With
    /// [`CpuClaim::MoveTo`], the instance keeps what it holds where it is (a
    /// move's target is reserved beside its source).
    pub(crate) async fn place(
        &self,
        run: &mut Run,
        instance: &Instance,
        step: impl Fn(&Decision) -> Step,
        purpose: CpuClaim,
    ) -> Result<Decision> {
        let spec = &instance.spec;
        let count = spec.vcpus.unwrap_or(1);
        let memory_mb = instance.memory_mb;
        let image = self.image_needed(spec);
        let requests = self.placement_requests(spec, memory_mb, image.as_deref());
        let mut looked_again = false;
        for _ in 0..MAX_PLACE_ATTEMPTS {
            let taken = requests.iter().find_map(|r| self.placement.take(r));
            let Some(taken) = taken else {
                if looked_again {
                    let place = spec
                        .location
                        .as_ref()
                        .map(|l| format!(" in {l}"))
                        .unwrap_or_default();
                    if let Some(image) = &image
                        && self
                            .placement_requests(spec, memory_mb, None)
                            .iter()
                            .any(|r| self.placement.with_engine(|e| e.place(r).is_some()))
                    {
                        return Err(Error::NoCapacity(format!(
                            "no host{place} with {count} free CPUs and {memory_mb} MB of \
                             memory has image {image} (an operator puts it on a server with \
                             `tessera image import {image} FILE`, or gives the catalog's image \
                             a registry reference to pull it from)"
                        )));
                    }
                    return Err(Error::NoCapacity(format!(
                        "no host{place} has {count} free CPUs and {memory_mb} MB of memory"
                    )));
                }
                self.placement
                    .refresh_changed(&self.store, std::time::Instant::now())
                    .await?;
                looked_again = true;
                continue;
            };
            let decision = taken.decision().clone();
            let cpus: Vec<u32> = decision.cpus.iter().collect();
            let steps = run.with(step(&decision));
            let placed = self
                .store
                .claim_instance_cpus(
                    purpose,
                    &instance.id,
                    (
                        decision.host.as_str(),
                        decision.unit.as_ref().map(|u| u.as_str()),
                    ),
                    (&cpus, decision.share),
                    (&run.op.id, &steps.to_json(), &self.deadline()),
                )
                .await;
            drop(taken);
            // The view already holds the decision: the host is read again
            // only when the store said otherwise (another replica's claim,
            // a stale view), so a placement costs no reads of its host.
            if !matches!(placed, Ok(true)) {
                self.placement
                    .refresh_host(&self.store, decision.host.as_str())
                    .await?;
            }
            if placed? {
                if purpose == CpuClaim::Place && decision.unit.is_none() {
                    self.placement.claimed_on(&decision.host);
                }
                run.steps = steps;
                tracing::debug!(instance = %instance.id, host = %decision.host, cpus = %decision.cpus, ?purpose, "instance placed");
                return Ok(decision);
            }
            if purpose == CpuClaim::Place
                && self
                    .store
                    .instance(&instance.id)
                    .await?
                    .and_then(|i| i.host_id)
                    .is_some()
            {
                // Placed by an earlier run whose log entry this one missed.
                return Err(Error::Conflict(format!(
                    "operation {} was taken over by another process",
                    run.op.id
                )));
            }
        }
        Err(Error::Unavailable(
            "too many concurrent placements; try again".into(),
        ))
    }

    pub(super) async fn settle_running(
        &self,
        run: &mut Run,
        instance: &Instance,
        report: InstanceReport,
    ) -> Result<()> {
        let private_ip = instance.address_from_report(&report.private_ip);
        let result = serde_json::json!({
            "instance_id": instance.id,
            "host_id": instance.host_id,
            "private_ip": private_ip,
        });
        let settled = self
            .store
            .settle_instance_operation(
                &OperationEnd {
                    id: &run.op.id,
                    status: OperationStatus::Completed,
                    result: Some(&result),
                    error: None,
                },
                &instance.id,
                &InstanceUpdate {
                    state: InstanceState::Running,
                    state_detail: None,
                    cause: None,
                    ssh_endpoint: self.ssh_endpoint(instance.host_id.as_ref(), &report).await,
                    private_ip: Some(private_ip),
                },
                false,
            )
            .await?;
        if settled {
            run.ended = Some(OperationStatus::Completed);
            tracing::info!(instance = %instance.id, host = ?instance.host_id, "instance running");
            self.publish(
                "instance",
                &instance.id,
                Some(&instance.project_id),
                "running",
            );
        } else if self.store.operation(&run.op.id).await?.is_some_and(|op| {
            op.status == OperationStatus::Running.as_str()
                && op.cancel_requested == CANCELLED_BY_DELETE
        }) {
            // A delete superseded the creation as its host made it: the
            // store kept it from ending, and it is undone as the delete
            // was promised.
            return self
                .unwind_create(run, TerminationCause::Cancelled, "creation cancelled")
                .await;
        }
        Ok(())
    }

    /// Undoes a creation's done steps and ends it with `why`: the instance
    /// is terminated for `cause` and holds nothing; the operation is
    /// cancelled or failed.
    pub(super) async fn unwind_create(
        &self,
        run: &mut Run,
        cause: TerminationCause,
        why: &str,
    ) -> Result<()> {
        // A cancel a delete of the instance asked for ends it deleted.
        let (cause, why) = match cause {
            TerminationCause::Cancelled
                if self
                    .store
                    .operation(&run.op.id)
                    .await?
                    .is_some_and(|op| op.cancel_requested == CANCELLED_BY_DELETE) =>
            {
                (
                    TerminationCause::Deleted,
                    "deleted while it was being created",
                )
            }
            cause => (cause, why),
        };
        let status = match cause {
            TerminationCause::Cancelled | TerminationCause::Deleted => OperationStatus::Cancelled,
            _ => OperationStatus::Failed,
        };
        let instance = self.run_instance(run).await?;
        if instance.host_id.is_some()
            && let Err(err) = self.remove_from_host(&instance).await
        {
            return self
                .hand_to_delete(run, instance, (status, cause), why, &err)
                .await;
        }
        let host = instance.host_id.clone();
        let settled = self
            .store
            .settle_instance_operation(
                &OperationEnd {
                    id: &run.op.id,
                    status,
                    result: None,
                    error: Some(why),
                },
                &instance.id,
                &InstanceUpdate {
                    state: InstanceState::Terminated,
                    state_detail: Some(why.to_string()),
                    cause: Some(cause),
                    private_ip: None,
                    ssh_endpoint: None,
                },
                true,
            )
            .await?;
        if let Some(host) = host {
            self.placement.refresh_host(&self.store, &host).await?;
        }
        self.discard_made_volumes(&instance).await?;
        if settled {
            tracing::info!(instance = %instance.id, status = %status, why, "instance creation unwound");
            self.publish(
                "instance",
                &instance.id,
                Some(&instance.project_id),
                "terminated",
            );
        }
        Ok(())
    }

    /// Ends an unwound creation whose host did not let go of the instance
    /// (`err`): the creation ends now as `status` with `why`, and a delete
    /// takes the instance over, `stopping`, holding its CPUs there. The
    /// delete is tried until the host confirms or leaves the fleet, as a
    /// tenant's is; then the instance is terminated for `cause`. So neither
    /// the creation's caller nor the tenant waits on a host that does not
    /// act (a tenant's delete joins this one), and no CPU is given to
    /// another while the host may still run something on it.
    async fn hand_to_delete(
        &self,
        run: &mut Run,
        instance: Instance,
        (status, cause): (OperationStatus, TerminationCause),
        why: &str,
        err: &HostCallError,
    ) -> Result<()> {
        let detail = format!(
            "{why}; its host has not let go of it yet ({err}), so it keeps its CPUs there \
             until the host does (or leaves the fleet)"
        );
        let delete = NewOperation {
            id: crate::new_uuid(),
            project_id: instance.project_id.to_string(),
            kind: OperationKind::InstanceDelete,
            resource_id: Some(instance.id.to_string()),
            params: serde_json::to_value(super::power::DeleteParams {
                instance_id: instance.id.to_string(),
                unwinds: Some(super::power::Unwinding {
                    cause,
                    why: why.to_string(),
                }),
            })
            .map_err(|e| Error::corrupt(format!("a delete's parameters: {e}")))?,
            created_by: UNWOUND_BY.into(),
        };
        let changes = self.watch_changes(&delete.id);
        let end = OperationEnd {
            id: &run.op.id,
            status,
            result: None,
            error: Some(&detail),
        };
        let Some(taken) = self
            .store
            .hand_instance_to_delete(&end, &instance.id, &detail, &delete, &self.deadline())
            .await?
        else {
            return Err(Error::Conflict(format!(
                "operation {} was settled by another process",
                run.op.id
            )));
        };
        run.ended = Some(status);
        tracing::warn!(instance = %instance.id, host = ?instance.host_id, operation = %taken.id, error = %err, "the host did not let go of an unwound creation; a delete takes it over");
        self.publish(
            "instance",
            &instance.id,
            Some(&instance.project_id),
            InstanceState::Stopping.as_str(),
        );
        let handed = Instance {
            state: InstanceState::Stopping,
            detail: Some(detail),
            operation_id: Some(tessera_core::OperationId::new(taken.id.clone())),
            generation: instance.generation + 1,
            ..instance
        };
        self.spawn_taken(taken, changes, Some(handed));
        Ok(())
    }

    /// Trashes, for good, the volumes made for an instance whose creation
    /// was undone (they never held anything); volumes it was to take are
    /// detached again with it.
    pub(super) async fn discard_made_volumes(&self, instance: &Instance) -> Result<()> {
        for volume_id in &instance.spec.volumes_made {
            if let Some(volume) = self.store.volume(volume_id).await?
                && volume.status != VolumeStatus::Deleted.as_str()
            {
                self.trash_volume(&volume, true).await?;
            }
        }
        Ok(())
    }
}
