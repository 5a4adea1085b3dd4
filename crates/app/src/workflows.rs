//! Workflows: multi-step operations submitted by type.
//!
//! - `cluster_create` makes `node_count` instances at once, all or none:
//!   every node is recorded with the workflow's operation, placed (one
//!   logged step each), then created on its host; if any step fails or the
//!   workflow is cancelled, every node is deleted and gives its CPUs back.
//! - `server_drain` moves every instance off a host, then marks it
//!   drained. A move reserves CPUs elsewhere (logged with the target), has
//!   the target run the instance, has the source let it go, then gives the
//!   source's CPUs back: at no point does the instance lack CPUs, and after
//!   a crash the log says where each move stands. A forced server delete
//!   drains the same way, except that a source whose agent is gone for
//!   good is not waited for (the instance moves without it).
//!
//! Workflows are operations (kind = workflow type), so `/v1/operations`
//! lists them too.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::instances::{CreateInstance, Instance, InstanceSpecInput, validate};
use crate::operations::{Operation, Run, Step};
use crate::{App, has_nul, new_id};
use serde::Deserialize;
use std::collections::BTreeMap;
use tessera_core::status::{
    HostStatus, InstanceState, OperationKind, OperationStatus, TerminationCause,
};
use tessera_core::{HostId, Permission};
use tessera_store::{
    CpuClaim, InstanceFilter, InstanceUpdate, NewInstance, NewOperation, OperationEnd, Switch,
};

pub const WORKFLOW_TYPES: &[OperationKind] =
    &[OperationKind::ClusterCreate, OperationKind::ServerDrain];
const MAX_NODES: u64 = 64;

#[derive(Clone, Debug)]
pub struct SubmitWorkflow {
    pub workspace: Option<String>,
    pub workflow_type: String,
    pub parameters: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterParams {
    cluster_name: String,
    node_count: u64,
    #[serde(alias = "instance_type", rename = "type", default = "default_type")]
    instance_type: String,
    #[serde(default = "default_image")]
    image: String,
    vcpus: Option<u32>,
    memory_mb: Option<u64>,
    disk_gb: Option<u64>,
    location: Option<String>,
    #[serde(default)]
    ssh_key_ids: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    user_data: Option<String>,
}

fn default_type() -> String {
    "cx11".into()
}

fn default_image() -> String {
    "ubuntu-22.04".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainParams {
    server_id: String,
}

impl App {
    pub async fn submit_workflow(
        &self,
        caller: &Principal,
        req: SubmitWorkflow,
    ) -> Result<Operation> {
        caller.require(Permission::WorkflowSubmit)?;
        let project_id = self.workspace_of(caller, req.workspace.as_deref()).await?;
        let invalid =
            |e: serde_json::Error| Error::invalid("parameters", format!("parameters: {e}"));
        match req.workflow_type.as_str() {
            "cluster_create" => {
                caller.require(Permission::InstanceCreate)?;
                let params: ClusterParams =
                    serde_json::from_value(req.parameters).map_err(invalid)?;
                self.submit_cluster(caller, project_id, params).await
            }
            "server_drain" => {
                caller.require(Permission::ServerDelete)?;
                let params: DrainParams =
                    serde_json::from_value(req.parameters).map_err(invalid)?;
                let host = self.find_server(&params.server_id).await?;
                if host.status != HostStatus::Ready {
                    return Err(Error::Conflict(format!(
                        "server {} is {}, not running",
                        host.hostname,
                        host.status.as_str().to_lowercase()
                    )));
                }
                let op = NewOperation {
                    id: crate::new_uuid(),
                    project_id,
                    kind: OperationKind::ServerDrain,
                    resource_id: Some(host.id.clone()),
                    params: serde_json::json!({ "server_id": host.id }),
                    created_by: caller.username.clone(),
                };
                self.store.insert_operation(&op).await?;
                let recorded = self.project_operation(caller, &op.id).await?;
                self.spawn_operation(&op.id);
                Ok(recorded)
            }
            other => Err(Error::invalid(
                "workflow_type",
                format!(
                    "unknown workflow_type {:?}; known: {}",
                    other,
                    WORKFLOW_TYPES
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    async fn submit_cluster(
        &self,
        caller: &Principal,
        project_id: String,
        params: ClusterParams,
    ) -> Result<Operation> {
        if !(1..=MAX_NODES).contains(&params.node_count) {
            return Err(Error::invalid(
                "parameters",
                format!("node_count must be between 1 and {MAX_NODES}"),
            ));
        }
        let name = &params.cluster_name;
        let name_ok = !name.is_empty()
            && name.len() <= 56
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !name_ok {
            return Err(Error::invalid(
                "parameters",
                "cluster_name must be 1 to 56 letters, digits or '-'",
            ));
        }
        // `cluster` is the workflow's own label, which finds its nodes: one
        // the client sends would be lost, so it is refused.
        if let Some(given) = params.labels.get("cluster")
            && given != name
        {
            return Err(Error::invalid(
                "parameters",
                format!(
                    "labels.cluster is the cluster's name ({name:?}), set by the workflow; \
                     leave it out or give the cluster_name"
                ),
            ));
        }
        let mut labels = params.labels.clone();
        labels.insert("cluster".into(), name.clone());
        let op_id = crate::new_uuid();
        let mut nodes = Vec::new();
        for n in 1..=params.node_count {
            let mut node = CreateInstance {
                name: format!("{name}-{n}"),
                labels: labels.clone(),
                spec: InstanceSpecInput {
                    instance_type: params.instance_type.clone(),
                    image: params.image.clone(),
                    vcpus: params.vcpus,
                    memory_mb: params.memory_mb,
                    disk_gb: params.disk_gb,
                    location: params.location.clone(),
                    ssh_key_ids: params.ssh_key_ids.clone(),
                    user_data: params.user_data.clone(),
                    ..InstanceSpecInput::default()
                },
                ..CreateInstance::default()
            };
            validate(&self.catalog, &mut node)
                .map_err(|e| Error::invalid("parameters", e.to_string()))?;
            let network = self
                .attach_new_instance(&project_id, &mut node.spec)
                .await?;
            node.spec.privileged = self.runs_privileged(&project_id, &node.spec.image).await?;
            nodes.push(NewInstance {
                id: new_id("inst"),
                project_id: project_id.clone(),
                name: node.name,
                labels: serde_json::to_value(&node.labels).unwrap_or_default(),
                spec: serde_json::to_value(&node.spec).unwrap_or_default(),
                memory_mb: node.spec.memory_mb.unwrap_or(0) as i64,
                vcpus: i64::from(node.spec.vcpus.unwrap_or(1)),
                micros_per_hour: self
                    .catalog
                    .instance_type(&node.spec.instance_type)
                    .map_or(0, |t| {
                        tessera_core::catalog::to_micros(node.spec.hourly(t, false))
                    }),
                volumes: Vec::new(),
                attach: Vec::new(),
                container: None,
                network: Some(network),
                replica: None,
                created_by: caller.acting_user(),
            });
        }
        for key in &params.ssh_key_ids {
            if self.project_ssh_key(&project_id, key).await.is_err() {
                return Err(Error::invalid(
                    "parameters",
                    format!(
                        "SSH key {key:?} not found in workspace {}",
                        caller.project_name
                    ),
                ));
            }
        }
        let op = NewOperation {
            id: op_id,
            project_id,
            kind: OperationKind::ClusterCreate,
            resource_id: Some(name.clone()),
            params: serde_json::json!({
                "cluster_name": name,
                "node_count": params.node_count,
                "instances": nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
            }),
            created_by: caller.username.clone(),
        };
        // A prepaid project's nodes need its balance, as its instances do.
        let usage = crate::instances::instances_usage(&nodes);
        let quota = match self.store.project_policy(&op.project_id).await?.prepaid {
            true => self.paid_check(&op.project_id, usage),
            false => self.quota_check(&op.project_id, usage),
        };
        match self
            .store
            .insert_instances(&nodes, &op, Some(&quota), None)
            .await?
        {
            tessera_store::InstancesAdded::SubnetFull(subnet) => {
                return Err(crate::instances::subnet_full(&subnet));
            }
            tessera_store::InstancesAdded::NetworkGone => {
                self.forget_networks(&op.project_id);
                return Err(crate::instances::network_gone());
            }
            tessera_store::InstancesAdded::Recorded { .. }
            | tessera_store::InstancesAdded::VolumeTaken
            | tessera_store::InstancesAdded::ReplicasEnough => {}
        }
        for node in &nodes {
            self.publish("instance", &node.id, Some(&op.project_id), "provisioning");
        }
        tracing::info!(cluster = %name, nodes = nodes.len(), "cluster requested");
        // Read before the operation starts, so the answer is what was recorded.
        let recorded = self.project_operation(caller, &op.id).await?;
        self.spawn_operation(&op.id);
        Ok(recorded)
    }

    /// A workflow of the caller's project; another operation is a 404.
    pub async fn workflow(&self, caller: &Principal, id: &str) -> Result<Operation> {
        caller.require(Permission::WorkflowRead)?;
        let op = self.project_operation(caller, id).await?;
        if !WORKFLOW_TYPES.contains(&op.kind) {
            return Err(Error::NotFound(format!("workflow {id} not found")));
        }
        Ok(op)
    }

    pub async fn cancel_workflow(&self, caller: &Principal, id: &str) -> Result<Operation> {
        caller.require(Permission::WorkflowCancel)?;
        let op = self.project_operation(caller, id).await?;
        if !WORKFLOW_TYPES.contains(&op.kind) || has_nul(id) {
            return Err(Error::NotFound(format!("workflow {id} not found")));
        }
        crate::operations::may_cancel(caller, &op)?;
        self.cancel(op).await
    }

    /// Drives `cluster_create` (see the module doc).
    pub(crate) async fn run_cluster_create(&self, run: &mut Run) -> Result<()> {
        let nodes = self.operation_instances(&run.op.id).await?;
        if self.cancel_requested(run).await? {
            return self
                .unwind_cluster(
                    run,
                    TerminationCause::Cancelled,
                    "cluster creation cancelled",
                )
                .await;
        }
        for node in &nodes {
            let step = Step::NodePlaced {
                instance: node.id.clone(),
            };
            if run.done(&step) {
                continue;
            }
            match self
                .place(run, node, |_| step.clone(), CpuClaim::Place)
                .await
            {
                Ok(_) => {}
                Err(Error::NoCapacity(why)) => {
                    let why = format!("node {}: {why}", node.name);
                    return self
                        .unwind_cluster(run, TerminationCause::NoCapacity, &why)
                        .await;
                }
                Err(other) => return Err(other),
            }
            if self.cancel_requested(run).await? {
                return self
                    .unwind_cluster(
                        run,
                        TerminationCause::Cancelled,
                        "cluster creation cancelled",
                    )
                    .await;
            }
        }
        // Every node holds its CPUs: now the hosts run them, all at once.
        let nodes = self.operation_instances(&run.op.id).await?;
        let creations = nodes.iter().map(|node| {
            self.on_host(node, |agent, spec| async move {
                agent.create_instance(&spec).await
            })
        });
        let created = tokio::select! {
            created = futures::future::join_all(creations) => created,
            cancelled = self.until_cancel_requested(run) => {
                cancelled?;
                return self
                    .unwind_cluster(run, TerminationCause::Cancelled, "cluster creation cancelled")
                    .await;
            }
        };
        let mut updates = Vec::new();
        for (node, outcome) in nodes.iter().zip(created) {
            match outcome {
                Ok(report) => updates.push(InstanceUpdate {
                    state: InstanceState::Running,
                    state_detail: None,
                    cause: None,
                    ssh_endpoint: self.ssh_endpoint(node.host_id.as_ref(), &report).await,
                    private_ip: Some(node.address_from_report(&report.private_ip)),
                }),
                Err(why) => {
                    let why = format!("node {} could not be created on its host: {why}", node.name);
                    return self
                        .unwind_cluster(run, TerminationCause::HostFailed, &why)
                        .await;
                }
            }
        }
        let result = serde_json::json!({
            "cluster_name": run.op.resource_id,
            "instances": nodes.iter().map(|n| n.id.clone()).collect::<Vec<_>>(),
        });
        let settle: Vec<(&str, &InstanceUpdate, bool)> = nodes
            .iter()
            .zip(&updates)
            .map(|(n, u)| (n.id.as_str(), u, false))
            .collect();
        let end = OperationEnd {
            id: &run.op.id,
            status: OperationStatus::Completed,
            result: Some(&result),
            error: None,
        };
        if self.store.settle_instances(&end, &settle).await? {
            for node in &nodes {
                self.publish("instance", &node.id, Some(&node.project_id), "running");
            }
            tracing::info!(cluster = ?run.op.resource_id, nodes = nodes.len(), "cluster running");
        }
        Ok(())
    }

    /// Deletes every node of a cluster that got as far as a host and ends
    /// the workflow `status` with `why`: all nodes terminated, no CPUs held.
    async fn unwind_cluster(
        &self,
        run: &mut Run,
        cause: TerminationCause,
        why: &str,
    ) -> Result<()> {
        let status = match cause {
            TerminationCause::Cancelled => OperationStatus::Cancelled,
            _ => OperationStatus::Failed,
        };
        let nodes = self.operation_instances(&run.op.id).await?;
        for node in nodes.iter().filter(|n| n.host_id.is_some()) {
            if let Err(err) = self.remove_from_host(node).await {
                return Err(Error::HostFailed(format!(
                    "undoing node {} on its host failed: {err}",
                    node.name
                )));
            }
        }
        let terminated = InstanceUpdate {
            state: InstanceState::Terminated,
            state_detail: Some(why.to_string()),
            cause: Some(cause),
            private_ip: None,
            ssh_endpoint: None,
        };
        let settle: Vec<(&str, &InstanceUpdate, bool)> = nodes
            .iter()
            .map(|n| (n.id.as_str(), &terminated, true))
            .collect();
        let end = OperationEnd {
            id: &run.op.id,
            status,
            result: None,
            error: Some(why),
        };
        let settled = self.store.settle_instances(&end, &settle).await?;
        let hosts: std::collections::BTreeSet<&HostId> =
            nodes.iter().filter_map(|n| n.host_id.as_ref()).collect();
        for host in hosts {
            self.placement.refresh_host(&self.store, host).await?;
        }
        if settled {
            for node in &nodes {
                self.publish("instance", &node.id, Some(&node.project_id), "terminated");
            }
            tracing::info!(cluster = ?run.op.resource_id, status = %status, why, "cluster creation unwound");
        }
        Ok(())
    }

    /// Drives `server_drain` (see the module doc).
    pub(crate) async fn run_server_drain(&self, run: &mut Run) -> Result<()> {
        let host_id = run.op.resource_id.clone().unwrap_or_default();
        let Some(host) = self.store.host(&host_id).await? else {
            self.store
                .finish_operation(
                    &run.op.id,
                    OperationStatus::Failed,
                    None,
                    Some("the server no longer exists"),
                )
                .await?;
            return Ok(());
        };
        if !run.done(&Step::Draining) {
            // Only a READY host is drained, by one drain at a time: the
            // transition (with its step) is the lock.
            let steps = run.with(Step::Draining);
            let took = self
                .store
                .transition_host_for(
                    &host.id,
                    HostStatus::Ready,
                    HostStatus::Draining,
                    (&run.op.id, &steps.to_json(), &self.deadline()),
                    None,
                )
                .await?;
            if !took {
                let why = format!(
                    "server {} is {}, not running",
                    host.hostname,
                    host.status.as_str().to_lowercase()
                );
                self.store
                    .finish_operation(&run.op.id, OperationStatus::Failed, None, Some(&why))
                    .await?;
                return Ok(());
            }
            run.steps = steps;
            self.publish("host", &host.id, None, HostStatus::Draining.as_str());
        } else if host.status != HostStatus::Draining {
            // Only this drain moves the host out of DRAINING, in the same
            // transaction that ends it; anything else means it was changed
            // under the drain.
            let why = format!(
                "server {} left DRAINING while being drained (now {})",
                host.hostname,
                host.status.as_str().to_lowercase()
            );
            self.store.release_instances_of(&run.op.id).await?;
            self.store
                .finish_operation(&run.op.id, OperationStatus::Failed, None, Some(&why))
                .await?;
            return Ok(());
        }
        self.placement.refresh_host(&self.store, &host.id).await?;
        let (to, end_status, result, error) = match self
            .drain_instances(run, &host.id, false)
            .await?
        {
            Ok(moved) => (
                HostStatus::Drained,
                OperationStatus::Completed,
                Some(
                    serde_json::json!({ "server_id": host.id, "hostname": host.hostname, "moved": moved }),
                ),
                None,
            ),
            Err(why) => (HostStatus::Ready, OperationStatus::Failed, None, Some(why)),
        };
        self.store.release_instances_of(&run.op.id).await?;
        let ended = self
            .store
            .transition_host_for(
                &host.id,
                HostStatus::Draining,
                to,
                (&run.op.id, &run.steps.to_json(), &self.deadline()),
                Some(tessera_store::OperationEnd {
                    id: &run.op.id,
                    status: end_status,
                    result: result.as_ref(),
                    error: error.as_deref(),
                }),
            )
            .await?;
        if !ended {
            return Err(Error::Conflict(format!(
                "operation {} is no longer this process's",
                run.op.id
            )));
        }
        self.placement.refresh_host(&self.store, &host.id).await?;
        self.publish("host", &host.id, None, to.as_str());
        tracing::info!(hostname = %host.hostname, status = %end_status, error, "server drain ended");
        Ok(())
    }

    /// Moves every instance off a host that takes no new work. The outer
    /// error means "try again later" (the operation's lease runs out); the
    /// inner one ends the drain with that message. Answers the ids moved.
    pub(crate) async fn drain_instances(
        &self,
        run: &mut Run,
        host_id: &str,
        forced: bool,
    ) -> Result<Result<Vec<String>, String>> {
        // Those that run there, and those that still hold CPUs there (a move
        // of this drain cut short after the switch).
        let mut on_host = self
            .stored_instances(&InstanceFilter {
                host_id: Some(host_id.to_string()),
                ..InstanceFilter::default()
            })
            .await?;
        for id in self.store.instance_holders_on(host_id).await? {
            if !on_host.iter().any(|i| i.id == *id)
                && let Some(instance) = self.stored_instance(&id).await?
            {
                on_host.push(instance);
            }
        }
        if forced {
            // Instances being deleted leave by themselves: a delete on a
            // host retired without its agent ends without it (see
            // `run_instance_power`), and the retirement waits for them.
            let mut moving = Vec::with_capacity(on_host.len());
            for instance in on_host {
                if let Some(op) = &instance.operation_id
                    && let Some(op) = self.store.operation(op.as_str()).await?
                    && op.kind == OperationKind::InstanceDelete.as_str()
                    && matches!(op.status.as_str(), "pending" | "running")
                {
                    tracing::info!(instance = %instance.id, operation = %op.id, "not moved: it is being deleted");
                    continue;
                }
                moving.push(instance);
            }
            on_host = moving;
        }
        let ids: Vec<String> = on_host.iter().map(|i| i.id.to_string()).collect();
        if !self.store.claim_instances_for(&run.op.id, &ids).await? {
            let busy: Vec<String> = on_host
                .iter()
                .filter(|i| i.operation_id.as_ref().is_some_and(|o| *o != *run.op.id))
                .map(|i| i.id.to_string())
                .collect();
            return Ok(Err(format!(
                "instance(s) {} have an operation under way; try again when it ends",
                busy.join(", ")
            )));
        }
        let mut moved = Vec::new();
        for instance in on_host {
            if let Err(why) = self.move_instance(run, &instance, host_id, forced).await? {
                return Ok(Err(why));
            }
            moved.push(instance.id.to_string());
        }
        Ok(Ok(moved))
    }

    /// Moves one instance from `from` to another host (see the module doc):
    /// `reserved:<id>:<host>:<cpus>` (CPUs held on the target), the target
    /// runs it, `switched:<id>` (the instance is recorded there), the source
    /// lets it go, `moved:<id>` (the source's CPUs are free). `forced` (a
    /// forced server delete): a source whose agent is gone for good (see
    /// [`App::retiring_without_agent`]) is not waited for; what the
    /// instance ran there stays on a machine that leaves the fleet, and
    /// the step log says so (`moved_without_source`).
    async fn move_instance(
        &self,
        run: &mut Run,
        instance: &Instance,
        from: &str,
        forced: bool,
    ) -> Result<Result<(), String>> {
        // No resync of this process touches it on a host meanwhile.
        let _guard = self.instance_guard(&instance.id).await?;
        let done = Step::Moved {
            instance: instance.id.clone(),
        };
        let done_without = Step::MovedWithoutSource {
            instance: instance.id.clone(),
        };
        if run.done(&done) || run.done(&done_without) {
            return Ok(Ok(()));
        }
        let switched = Step::Switched {
            instance: instance.id.clone(),
        };
        if !run.done(&switched) {
            let (target, cpus) = match run.steps.reservation(&instance.id) {
                Some(reserved) => reserved,
                None => match self
                    .place(
                        run,
                        instance,
                        |decision| Step::Reserved {
                            instance: instance.id.clone(),
                            host: decision.host.clone(),
                            cpus: decision.cpus.clone(),
                        },
                        CpuClaim::MoveTo,
                    )
                    .await
                {
                    Ok(decision) => (decision.host, decision.cpus),
                    Err(Error::NoCapacity(why)) => {
                        return Ok(Err(format!(
                            "no room to move instance {}: {why}",
                            instance.id
                        )));
                    }
                    Err(other) => return Err(other),
                },
            };
            let mut there = instance.clone();
            there.host_id = Some(target.clone());
            there.cpus = Some(cpus.clone());
            let stopped = instance.state == InstanceState::Stopped;
            let started = self
                .on_host(&there, |agent, spec| async move {
                    let report = agent.create_instance(&spec).await?;
                    if stopped {
                        agent.stop_instance(&spec.id).await?;
                    }
                    Ok(report)
                })
                .await;
            let recorded = match &started {
                Ok(report) => {
                    let steps = run.with(switched.clone());
                    // The port its new host forwards to its SSH server.
                    let ssh = self.ssh_endpoint(Some(&target), report).await;
                    match self
                        .store
                        .switch_instance_host(
                            &instance.id,
                            from,
                            (
                                &target,
                                &cpus.to_string(),
                                &instance.address_from_report(&report.private_ip),
                                ssh.as_deref(),
                            ),
                            (&run.op.id, &steps.to_json(), &self.deadline()),
                        )
                        .await?
                    {
                        Switch::Switched => {
                            run.steps = steps;
                            true
                        }
                        Switch::Refused => false,
                        // Another process drives this drain now: touch
                        // nothing on any host.
                        Switch::NotOurs => {
                            return Err(Error::Conflict(format!(
                                "operation {} is no longer this process's",
                                run.op.id
                            )));
                        }
                    }
                }
                Err(_) => false,
            };
            if !recorded {
                // Give the reservation up once the target has let the
                // instance go; it stays where it was.
                if let Err(err) = self.remove_from_host(&there).await {
                    return Err(Error::HostFailed(format!(
                        "{target} did not let go of instance {} after a failed move: {err}",
                        instance.id
                    )));
                }
                let steps = run.steps.without(|step| {
                    matches!(step, Step::Reserved { instance: id, .. } if *id == instance.id)
                });
                if !self
                    .store
                    .release_instance_host(
                        &instance.id,
                        &target,
                        (&run.op.id, &steps.to_json(), &self.deadline()),
                    )
                    .await?
                {
                    return Err(Error::Conflict(format!(
                        "operation {} is no longer this process's",
                        run.op.id
                    )));
                }
                run.steps = steps;
                self.placement.refresh_host(&self.store, &target).await?;
                let why = match started {
                    Err(why) => why.to_string(),
                    Ok(_) => "the target is no longer available".to_string(),
                };
                return Ok(Err(format!(
                    "moving instance {} to {target} failed: {why}",
                    instance.id
                )));
            }
            self.placement.refresh_host(&self.store, &target).await?;
            tracing::info!(instance = %instance.id, from, to = %target, cpus = %cpus, "instance runs on its new host");
        }
        // The source lets it go; its CPUs there stay held until it has.
        let mut left = instance.clone();
        left.host_id = Some(HostId::new(from));
        let mut source = Source::LetGo;
        if let Err(why) = self.remove_from_host(&left).await {
            if !(forced && self.retiring_without_agent(from, why.is_silence()).await?) {
                return Err(Error::HostFailed(format!(
                    "{from} did not let instance {} go: {why}",
                    instance.id
                )));
            }
            tracing::warn!(instance = %instance.id, from, error = %why, "instance moved without its old host letting it go: that host's agent is gone");
            source = Source::Gone;
        }
        let steps = run.with(match source {
            Source::LetGo => done,
            Source::Gone => done_without,
        });
        if !self
            .store
            .release_instance_host(
                &instance.id,
                from,
                (&run.op.id, &steps.to_json(), &self.deadline()),
            )
            .await?
        {
            return Err(Error::Conflict(format!(
                "operation {} is no longer this process's",
                run.op.id
            )));
        }
        run.steps = steps;
        self.placement.refresh_host(&self.store, from).await?;
        tracing::info!(instance = %instance.id, from, "instance moved");
        self.publish(
            "instance",
            &instance.id,
            Some(&instance.project_id),
            instance.state.as_str(),
        );
        Ok(Ok(()))
    }
}

/// How a move's source took it.
enum Source {
    /// It let the instance go.
    LetGo,
    /// Its agent is gone for good: the instance moved without it.
    Gone,
}
