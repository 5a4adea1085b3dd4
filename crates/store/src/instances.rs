//! Instances and the CPUs they hold.
//!
//! An instance's CPUs are rows of the same `cpu_claims` ledger Kloigos units
//! use (holder `instance:<id>`), so its primary key keeps any CPU from being
//! given twice whichever face asked. A claim also bumps the host's
//! generation, which is how other replicas' placement views learn of it.

mod batches;

use crate::billing::{meter_open, meter_set};
use crate::db::{Arg, Conn, DbError};
use crate::operations::{
    NewOperation, OperationEnd, operation_finish, operation_insert, operation_insert_taken,
    operation_progress, operation_taken,
};
use crate::volumes::{volume_attach, volume_insert};
use crate::writer::Commit;
use crate::{QuotaCheck, Result, Store, now};
pub(crate) use batches::InstanceBatches;
use batches::{Beginning, Creation, InstanceEnd, Placement, Settlement, place_alone};
use std::sync::Arc;
use tessera_core::status::{InstanceState, OperationKind, TerminationCause};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct InstanceRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// JSON object.
    pub labels: String,
    /// JSON object: the spec as asked for.
    pub spec: String,
    pub state: String,
    pub state_detail: Option<String>,
    pub host_id: Option<String>,
    pub cpu_list: Option<String>,
    pub memory_mb: i64,
    pub private_ip: String,
    pub public_ip: String,
    pub operation_id: Option<String>,
    pub generation: i64,
    pub created_at: String,
    pub updated_at: String,
    /// `HOST:PORT` forwarded to the instance's SSH server, when its host
    /// forwards one.
    pub ssh_endpoint: Option<String>,
    /// Why a terminated instance ended (a `TerminationCause`).
    pub end_cause: Option<String>,
    /// The user who made it (none: the control plane, or made before this
    /// was kept).
    pub created_by: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewInstance {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub labels: serde_json::Value,
    pub spec: serde_json::Value,
    pub memory_mb: i64,
    pub vcpus: i64,
    /// What it costs per hour while it runs.
    pub micros_per_hour: i64,
    /// Volumes made for it (attached to it).
    pub volumes: Vec<crate::NewVolume>,
    /// Detached volumes of the project to attach to it: `(volume, target)`.
    pub attach: Vec<(String, String)>,
    /// What the containers API adds, when it is a container.
    pub container: Option<crate::NewContainer>,
    /// Its subnet (an address is given to it there) and security groups.
    pub network: Option<crate::NewAttachment>,
    /// The deployment it is a replica of, when it is one.
    pub replica: Option<crate::NewReplica>,
    /// The user making it (none: the control plane itself).
    pub created_by: Option<String>,
}

/// What an instance's host is told besides the instance's own row: its
/// project's policy, its container's fields (when it is one) and where it
/// sits on its network. A spec a host is sent needs all three; they are
/// read in one statement, not three.
#[derive(Clone, Debug)]
pub struct InstanceSurroundings {
    pub policy: crate::ProjectPolicyRecord,
    pub container: Option<crate::ContainerRecord>,
    pub place: Option<crate::InstancePlace>,
    /// Its security groups, by id: each one's id and rules as stored.
    pub groups: Vec<(String, String)>,
    /// Its volumes, by target (as [`Store::instance_volumes`] lists them).
    pub volumes: Vec<crate::VolumeRecord>,
}

/// [`InstanceSurroundings`] as read: every column may be missing (no
/// policy set, not a container, no address).
#[derive(Default, sqlx::FromRow)]
struct SurroundingsRow {
    egress: Option<i64>,
    privileged: Option<i64>,
    container_id: Option<String>,
    container_project_id: Option<String>,
    ssh_enabled: Option<i64>,
    mount_paths: Option<String>,
    storage_gb: Option<i64>,
    container_generation: Option<i64>,
    container_updated_at: Option<String>,
    address: Option<String>,
    subnet_cidr: Option<String>,
    vpc_id: Option<String>,
    vpc_cidr: Option<String>,
    /// JSON: `[[id, rules], ...]`.
    groups: Option<String>,
    /// JSON: `[{column: value, ...}, ...]`, each a volume's columns.
    volumes: Option<String>,
}

/// How recording new instances went; nothing changed unless `Recorded`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstancesAdded {
    /// The instances as they were written (as a read of them would answer
    /// until their operation changes them), and their operation when it
    /// went in taken by this process.
    Recorded {
        instances: Vec<InstanceRecord>,
        taken: Option<Box<crate::OperationRecord>>,
    },
    /// A volume to attach is no longer detached.
    VolumeTaken,
    /// This subnet has no free address left.
    SubnetFull(String),
    /// Its subnet or one of its security groups was deleted meanwhile.
    NetworkGone,
    /// Its deployment has all the replicas it may have, or is going.
    ReplicasEnough,
}

/// What [`Store::claim_instance_cpus`] claims CPUs for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuClaim {
    /// An instance not yet on any host.
    Place,
    /// A move's target, beside the CPUs the instance holds now.
    MoveTo,
}

/// How [`Store::switch_instance_host`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Switched,
    /// The target is not READY or the instance holds no CPUs there.
    Refused,
    /// The operation is no longer this process's.
    NotOurs,
}

#[derive(Clone, Debug, Default)]
pub struct InstanceFilter {
    pub project_id: Option<String>,
    pub host_id: Option<String>,
    /// Only instances after this `(created_at, id)`, for paging.
    pub after: Option<(String, String)>,
    pub include_terminated: bool,
    /// Only instances in this state (terminated ones too).
    pub state: Option<String>,
    /// Only instances with every one of these labels.
    pub labels: Vec<(String, String)>,
    /// At most this many.
    pub limit: Option<i64>,
}

/// The end of an instance operation: the operation's outcome and the
/// instance's resulting state, written together.
#[derive(Clone, Debug)]
pub struct InstanceUpdate {
    pub state: InstanceState,
    pub state_detail: Option<String>,
    /// Why it ended, when it is terminated.
    pub cause: Option<TerminationCause>,
    /// `None` keeps the recorded address.
    pub private_ip: Option<String>,
    /// `None` keeps the recorded endpoint.
    pub ssh_endpoint: Option<String>,
}

/// The columns a new instance is written with.
const INSERT_COLUMNS: &str = "id, project_id, name, labels, spec, state, state_detail, host_id, \
     cpu_list, memory_mb, private_ip, public_ip, operation_id, generation, created_at, updated_at, \
     vcpus, created_by";
/// A new instance's row with `private_ip` (SQL) as its address: its
/// parameters are its id, project, name, labels, spec, memory, operation,
/// when, vCPUs and creator.
fn instance_insert(private_ip: &str) -> String {
    format!(
        "INSERT INTO instances ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, 'provisioning', \
         NULL, NULL, NULL, $6, {private_ip}, '', $7, 1, $8, $8, $9, $10)"
    )
}

/// A new instance's address until its network gives it one.
const PRIVATE_IP_UNSET: &str = "''";

const INSTANCE_COLUMNS: &str = "id, project_id, name, labels, spec, state, state_detail, host_id, \
     cpu_list, memory_mb, private_ip, public_ip, operation_id, generation, created_at, updated_at, \
     ssh_endpoint, end_cause, created_by";

/// An instance's name in the CPU ledger. Statements pick instances' claims
/// with `SUBSTR(holder, 1, 9) = 'instance:'`, not `LIKE 'instance:%'`: the
/// latter can use the holder index, and PostgreSQL then walks every
/// instance's claims in the fleet to intersect them with one host's.
fn holder(instance_id: &str) -> String {
    format!("instance:{instance_id}")
}

/// The read of an instance's [`InstanceSurroundings`], on PostgreSQL and on
/// SQLite: `$1` the instance, `$2` its project. Its groups and its volumes
/// come as a JSON value each: a column, not a row each.
static SURROUNDINGS: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
    let volume = crate::volumes::VOLUME_COLUMNS
        .split(',')
        .map(|column| format!("'{0}', vs.{0}", column.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let read = |groups: &str, volumes: &str| {
        format!(
            "SELECT p.egress, p.privileged, c.id AS container_id, \
             c.project_id AS container_project_id, c.ssh_enabled, c.mount_paths, \
             c.storage_gb, c.generation AS container_generation, \
             c.updated_at AS container_updated_at, a.address, s.cidr AS subnet_cidr, \
             v.id AS vpc_id, v.cidr AS vpc_cidr, \
             (SELECT {groups} FROM (SELECT g.id, g.rules FROM instance_security_groups m \
              JOIN security_groups g ON g.id = m.group_id WHERE m.instance_id = $1 \
              ORDER BY g.id) gs) AS groups, \
             (SELECT {volumes} FROM (SELECT {columns} FROM volumes \
              WHERE instance_id = $1 ORDER BY target, id) vs) AS volumes \
             FROM (SELECT 1 AS one) o \
             LEFT JOIN project_policies p ON p.project_id = $2 \
             LEFT JOIN containers c ON c.id = $1 \
             LEFT JOIN instance_addresses a ON a.instance_id = $1 \
             LEFT JOIN subnets s ON s.id = a.subnet_id \
             LEFT JOIN vpcs v ON v.id = s.vpc_id LIMIT 1",
            columns = crate::volumes::VOLUME_COLUMNS,
        )
    };
    [
        read(
            "CAST(json_agg(json_build_array(gs.id, gs.rules) ORDER BY gs.id) AS TEXT)",
            &format!(
                "CAST(json_agg(json_build_object({volume}) ORDER BY vs.target, vs.id) AS TEXT)"
            ),
        ),
        read(
            "json_group_array(json_array(gs.id, gs.rules))",
            &format!("json_group_array(json_object({volume}))"),
        ),
    ]
});

impl Store {
    /// An instance's [`InstanceSurroundings`], in one read.
    pub async fn instance_surroundings(
        &self,
        instance_id: &str,
        project_id: &str,
    ) -> Result<InstanceSurroundings> {
        let row: SurroundingsRow = self
            .fetch_optional(
                match self.backend {
                    crate::Backend::Postgres => &SURROUNDINGS[0],
                    crate::Backend::Sqlite => &SURROUNDINGS[1],
                },
                &[instance_id.into(), project_id.into()],
            )
            .await?
            .unwrap_or_default();
        // SQLite answers an empty array for no volumes, PostgreSQL NULL.
        let volumes = match row.volumes.as_deref() {
            None => Vec::new(),
            Some(json) => serde_json::from_str(json).map_err(|e| {
                crate::StoreError::Corrupt(format!("the volumes of instance {instance_id}: {e}"))
            })?,
        };
        let groups = match row.groups.as_deref() {
            None => Vec::new(),
            Some(json) => serde_json::from_str(json).map_err(|e| {
                crate::StoreError::Corrupt(format!(
                    "the security groups of instance {instance_id}: {e}"
                ))
            })?,
        };
        let policy = match (row.egress, row.privileged) {
            (Some(egress), Some(privileged)) => crate::ProjectPolicyRecord {
                egress: egress != 0,
                privileged: privileged != 0,
                ..crate::ProjectPolicyRecord::default()
            },
            _ => crate::ProjectPolicyRecord::default(),
        };
        let container = match (
            row.container_id,
            row.container_project_id,
            row.ssh_enabled,
            row.mount_paths,
            row.storage_gb,
            row.container_generation,
            row.container_updated_at,
        ) {
            (
                Some(id),
                Some(project),
                Some(ssh),
                Some(mounts),
                Some(gb),
                Some(generation),
                Some(at),
            ) => Some(crate::containers::container_from((
                id, project, ssh, mounts, gb, generation, at,
            ))?),
            _ => None,
        };
        let place = match (row.address, row.subnet_cidr, row.vpc_id, row.vpc_cidr) {
            (Some(address), Some(subnet_cidr), Some(vpc_id), Some(vpc_cidr)) => {
                Some(crate::InstancePlace {
                    address,
                    subnet_cidr,
                    vpc_id,
                    vpc_cidr,
                })
            }
            _ => None,
        };
        Ok(InstanceSurroundings {
            policy,
            container,
            place,
            groups,
            volumes,
        })
    }

    /// Records a new instance, `provisioning`, with the operation that
    /// creates it, its meter and its volumes, in one transaction. `false`,
    /// changing nothing, when a volume to attach is no longer detached.
    /// With `taken`, the operation goes in already taken by this process
    /// until then (it drives it at once): no take to write after.
    pub async fn insert_instance(
        &self,
        instance: &NewInstance,
        op: &NewOperation,
        quota: Option<&QuotaCheck>,
        taken: Option<&str>,
    ) -> Result<InstancesAdded> {
        self.insert_instances(std::slice::from_ref(instance), op, quota, taken)
            .await
    }

    /// [`Store::insert_instance`] for several instances created by one
    /// operation.
    pub async fn insert_instances(
        &self,
        instances: &[NewInstance],
        op: &NewOperation,
        quota: Option<&QuotaCheck>,
        taken: Option<&str>,
    ) -> Result<InstancesAdded> {
        // On PostgreSQL the common creation (one instance, driven at once
        // by this process) is one of a batch under load.
        if let Some(batches) = &self.instance_batches
            && let [instance] = instances
            && let Some(lease_until) = taken
            && let Some(creation) =
                Creation::batchable(instance, op, quota, lease_until, &self.owner)
        {
            return batches.create.call(Arc::new(creation)).await?;
        }
        write_instances(
            (&self.write, self.backend, &self.owner),
            instances,
            op,
            quota,
            taken,
            None,
        )
        .await
    }
}

/// A new instance's row as it is written, `provisioning` since `at` under
/// operation `op_id`, its address aside.
pub(crate) fn new_record(instance: &NewInstance, op_id: &str, at: String) -> InstanceRecord {
    InstanceRecord {
        id: instance.id.clone(),
        project_id: instance.project_id.clone(),
        name: instance.name.clone(),
        labels: instance.labels.to_string(),
        spec: instance.spec.to_string(),
        state: "provisioning".into(),
        state_detail: None,
        host_id: None,
        cpu_list: None,
        memory_mb: instance.memory_mb,
        private_ip: String::new(),
        public_ip: String::new(),
        operation_id: Some(op_id.to_string()),
        generation: 1,
        created_at: at.clone(),
        updated_at: at,
        ssh_endpoint: None,
        end_cause: None,
        created_by: instance.created_by.clone(),
    }
}

/// [`Store::insert_instances`] as its own transaction, written by `writer`
/// on `backend` for this process (`owner`); `hint`, the address
/// to try first for the first instance's network, when one was taken from
/// this process's hints already.
pub(crate) async fn write_instances(
    (writer, backend, owner): (&crate::writer::Writer, crate::Backend, &str),
    instances: &[NewInstance],
    op: &NewOperation,
    quota: Option<&QuotaCheck>,
    taken: Option<&str>,
    hint: Option<&str>,
) -> Result<InstancesAdded> {
    // A microsecond apart, so that they list in their order.
    let base = chrono::Utc::now();
    let mut statements: Vec<(String, Vec<Arg>)> = Vec::new();
    let mut attaches = Vec::new();
    let mut written = Vec::with_capacity(instances.len());
    // Where each instance's own row is among the statements.
    let mut rows = Vec::with_capacity(instances.len());
    for (n, instance) in instances.iter().enumerate() {
        let at = crate::timestamp(base + chrono::Duration::microseconds(n as i64));
        written.push(new_record(instance, &op.id, at.clone()));
        rows.push(statements.len());
        statements.push((
            instance_insert(PRIVATE_IP_UNSET),
            vec![
                (&instance.id).into(),
                (&instance.project_id).into(),
                (&instance.name).into(),
                instance.labels.to_string().into(),
                instance.spec.to_string().into(),
                instance.memory_mb.into(),
                (&op.id).into(),
                (&at).into(),
                instance.vcpus.into(),
                instance.created_by.as_deref().into(),
            ],
        ));
        // Its labels in one statement: ($1, $2, $3) are the instance,
        // its project and when; each label adds a key and a value.
        let labels: Vec<(&String, &str)> = instance
            .labels
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(key, value)| Some((key, value.as_str()?)))
            .collect();
        if !labels.is_empty() {
            let mut args: Vec<Arg> = vec![
                (&instance.id).into(),
                (&instance.project_id).into(),
                (&at).into(),
            ];
            let mut rows = Vec::new();
            for (key, value) in labels {
                args.extend([key.into(), value.into()]);
                rows.push(format!(
                    "($1, $2, ${}, ${}, $3)",
                    args.len() - 1,
                    args.len()
                ));
            }
            statements.push((
                format!(
                    "INSERT INTO instance_labels (instance_id, project_id, key, value, \
                         created_at) VALUES {}",
                    rows.join(", ")
                ),
                args,
            ));
        }
        statements.push(meter_open(
            &instance.id,
            &instance.project_id,
            "instance",
            instance.micros_per_hour,
            false,
        ));
        for volume in &instance.volumes {
            statements.extend(volume_insert(volume));
        }
        if let Some(container) = &instance.container {
            statements.extend(crate::containers::container_insert(
                &instance.id,
                &instance.project_id,
                container,
            ));
        }
        for (volume, target) in &instance.attach {
            attaches.push(statements.len());
            statements.push(volume_attach(
                volume,
                &instance.project_id,
                &instance.id,
                target,
            ));
        }
    }
    let taken = match taken {
        Some(lease_until) => {
            let (insert, record) = operation_insert_taken(op, owner, lease_until);
            statements.push(insert);
            Some(record)
        }
        None => {
            statements.push(operation_insert(op));
            None
        }
    };
    let attaches = Arc::new(attaches);
    let networks: Arc<Vec<(String, crate::NewAttachment)>> = Arc::new(
        instances
            .iter()
            .filter_map(|i| Some((i.id.clone(), i.network.clone()?)))
            .collect(),
    );
    let replicas: Arc<Vec<(String, crate::NewReplica)>> = Arc::new(
        instances
            .iter()
            .filter_map(|i| Some((i.id.clone(), i.replica.clone()?)))
            .collect(),
    );
    // On PostgreSQL the instances' rows go in as one statement: one
    // round trip instead of one each. Their networks' first round
    // trip joins it, unless replicas go in too (whose deployment is
    // locked before the networks are).
    let postgres = backend == crate::Backend::Postgres;
    let begun: Arc<Vec<crate::networks::AttachInStatement>> =
        Arc::new(match postgres && replicas.is_empty() {
            true => networks
                .iter()
                .enumerate()
                .map(|(n, (id, network))| {
                    // The address to try: the one a batch was to try (its
                    // hint taken already), or the next the hint gives.
                    let tried = match (n, hint) {
                        (0, Some(hint)) => Some(hint.to_string()),
                        _ => crate::networks::address_hint(network),
                    };
                    crate::networks::attach_in_statement(n, id, network, tried)
                })
                .collect(),
            false => Vec::new(),
        });
    let combined = Arc::new(postgres.then(|| match begun.is_empty() {
        true => crate::db::combined_statement(&statements),
        false => {
            let mut statements = statements.clone();
            for ((id, _), begun) in networks.iter().zip(begun.iter()) {
                if let Some(&row) = instances
                    .iter()
                    .position(|i| i.id == *id)
                    .and_then(|n| rows.get(n))
                    && let Some(statement) = statements.get_mut(row)
                {
                    statement.0 = instance_insert(&begun.private_ip);
                }
            }
            // The instances' usage rows before their addresses (see
            // `quotas::usage_rows_first`): each subnet waits for them.
            let projects: Vec<&str> = instances.iter().map(|i| i.project_id.as_str()).collect();
            let mut first: Vec<(String, Vec<Arg>)> = vec![(
                crate::quotas::usage_rows_first(
                    "SELECT json_array_elements_text(CAST($1 AS json)) AS project_id",
                ),
                vec![serde_json::json!(projects).to_string().into()],
            )];
            first.extend(begun.iter().flat_map(|b| b.ctes.iter().cloned()));
            let more: Vec<String> = begun.iter().flat_map(|b| b.counts.clone()).collect();
            crate::db::combined_statement_after(&first, &statements, &more)
        }
    }));
    let statements = Arc::new(statements);
    let quota = Arc::new(quota.cloned());
    let written = Arc::new(written);
    let outcome = writer
        .write(
            "insert_instances",
            crate::writer::Shape::Statements,
            move |mut conn| {
                let (statements, combined, attaches, quota, networks, replicas, written, begun) = (
                    statements.clone(),
                    combined.clone(),
                    attaches.clone(),
                    quota.clone(),
                    networks.clone(),
                    replicas.clone(),
                    written.clone(),
                    begun.clone(),
                );
                Box::pin(async move {
                    let changed = match (conn.is_postgres(), combined.as_ref()) {
                        (true, Some((sql, args))) => conn.fetch_ints(sql, args).await?,
                        _ => {
                            let mut changed = Vec::with_capacity(statements.len());
                            for (sql, args) in statements.iter() {
                                changed.push(conn.execute(sql, args).await? as i64);
                            }
                            changed
                        }
                    };
                    if attaches.iter().any(|&n| changed.get(n) != Some(&1)) {
                        return Ok(Commit::Undo(Ok(InstancesAdded::VolumeTaken)));
                    }
                    for (id, replica) in replicas.iter() {
                        if !crate::deployments::insert_replica(&mut conn, id, replica).await? {
                            return Ok(Commit::Undo(Ok(InstancesAdded::ReplicasEnough)));
                        }
                    }
                    let mut written = written.as_ref().clone();
                    for (n, (id, network)) in networks.iter().enumerate() {
                        let attached = match begun.get(n) {
                            Some(begun) => {
                                let counts =
                                    changed.get(statements.len() + 3 * n..).unwrap_or_default();
                                crate::networks::attached_after(
                                    &mut conn, id, network, begun, counts,
                                )
                                .await?
                            }
                            None => {
                                crate::networks::attach_instance(&mut conn, id, network).await?
                            }
                        };
                        let refused = match attached {
                            crate::networks::Attached::Address(address) => {
                                if let Some(record) = written.iter_mut().find(|r| r.id == *id) {
                                    record.private_ip = address;
                                }
                                continue;
                            }
                            crate::networks::Attached::Full => {
                                InstancesAdded::SubnetFull(network.subnet_id.clone())
                            }
                            crate::networks::Attached::Gone => InstancesAdded::NetworkGone,
                        };
                        return Ok(Commit::Undo(Ok(refused)));
                    }
                    // Last, so that the project is locked only until the
                    // commit.
                    if let Some(quota) = quota.as_ref()
                        && let Some(refused) =
                            crate::quotas::enforce_written(&mut conn, quota).await?
                    {
                        return Ok(Commit::Undo(Err(refused)));
                    }
                    Ok(Commit::Keep(Ok(InstancesAdded::Recorded {
                        instances: written,
                        taken: None,
                    })))
                })
            },
        )
        .await?;
    // The operation as written goes with the rows it was written with.
    match outcome.map_err(crate::StoreError::from)? {
        InstancesAdded::Recorded { instances, .. } => Ok(InstancesAdded::Recorded {
            instances,
            taken: taken.map(Box::new),
        }),
        refused => Ok(refused),
    }
}

impl Store {
    /// Leaves a running instance (with no operation under way) stopped,
    /// with why and its cause. `false` when it changed meanwhile.
    pub async fn set_instance_crashed(
        &self,
        id: &str,
        why: &str,
        cause: TerminationCause,
    ) -> Result<bool> {
        let counts = self
            .run_statements(
                "set_instance_crashed",
                vec![
                    (
                        "UPDATE instances SET state = 'stopped', state_detail = $1, end_cause = $2, \
                         ssh_endpoint = NULL, updated_at = $3, generation = generation + 1 \
                         WHERE id = $4 AND state = 'running' AND operation_id IS NULL"
                            .into(),
                        vec![why.into(), cause.as_str().into(), now().into(), id.into()],
                    ),
                    meter_set(id, false, None),
                ],
                |c| c[0] == 1,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Records that a terminated instance (one whose creation failed) was
    /// deleted by its project.
    pub async fn mark_instance_deleted(&self, id: &str) -> Result<()> {
        self.run_statements(
            "mark_instance_deleted",
            vec![(
                "UPDATE instances SET end_cause = 'deleted', updated_at = $1, \
                 generation = generation + 1 WHERE id = $2 AND state = 'terminated'"
                    .into(),
                vec![now().into(), id.into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Sets (or clears) where an instance's SSH server is forwarded: when
    /// its host opens or closes the forward without the instance's state
    /// changing.
    pub async fn set_instance_ssh_endpoint(&self, id: &str, endpoint: Option<&str>) -> Result<()> {
        self.run_statements(
            "set_instance_ssh_endpoint",
            vec![(
                "UPDATE instances SET ssh_endpoint = $1, updated_at = $2, \
                 generation = generation + 1 WHERE id = $3"
                    .into(),
                vec![endpoint.into(), now().into(), id.into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Instances an operation acts on (its `operation_id`), oldest first.
    pub async fn instances_of_operation(&self, op_id: &str) -> Result<Vec<InstanceRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances WHERE operation_id = $1 ORDER BY created_at, id"
            ),
            &[op_id.into()],
        )
        .await
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        self.fetch_optional(
            &format!("SELECT {INSTANCE_COLUMNS} FROM instances WHERE id = $1"),
            &[id.into()],
        )
        .await
    }

    /// Oldest first. With a project, a page reads about a page of rows
    /// whatever the filters: a label selector walks its first label's
    /// index (`instance_labels_by_value`) and looks up the others; a state
    /// walks `instances_by_project_state_created`.
    pub async fn instances(&self, filter: &InstanceFilter) -> Result<Vec<InstanceRecord>> {
        let mut conditions = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        // The table whose index orders the walk: the first label's rows, or
        // the instances themselves.
        let (from, order) = match (filter.labels.first(), &filter.project_id) {
            (Some((key, value)), Some(project)) => {
                args.push(project.into());
                args.push(key.into());
                args.push(value.into());
                conditions.push("l.project_id = $1 AND l.key = $2 AND l.value = $3".to_string());
                (
                    "instance_labels l JOIN instances i ON i.id = l.instance_id",
                    ("l.created_at", "l.instance_id"),
                )
            }
            _ => ("instances i", ("i.created_at", "i.id")),
        };
        let labelled = from.starts_with("instance_labels");
        for (column, value) in [
            ("i.project_id", &filter.project_id),
            ("i.host_id", &filter.host_id),
        ] {
            if let Some(value) = value
                && !(labelled && column == "i.project_id")
            {
                args.push(value.into());
                conditions.push(format!("{column} = ${}", args.len()));
            }
        }
        for (key, value) in filter.labels.iter().skip(usize::from(labelled)) {
            args.push(key.into());
            args.push(value.into());
            let (k, v) = (args.len() - 1, args.len());
            conditions.push(format!(
                "EXISTS (SELECT 1 FROM instance_labels o WHERE o.instance_id = i.id \
                 AND o.key = ${k} AND o.value = ${v})"
            ));
        }
        if let Some(after) = &filter.after {
            conditions.push(crate::db::after_cursor(&mut args, order, after));
        }
        match &filter.state {
            Some(state) => {
                args.push(state.into());
                conditions.push(format!("i.state = ${}", args.len()));
            }
            None if !filter.include_terminated => {
                conditions.push("i.state <> 'terminated'".into());
            }
            None => {}
        }
        let columns = INSTANCE_COLUMNS
            .split(", ")
            .map(|c| format!("i.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {columns} FROM {from}");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        let (at_column, id_column) = order;
        sql.push_str(&format!(" ORDER BY {at_column}, {id_column}"));
        match filter.limit {
            Some(limit) => {
                args.push(limit.into());
                sql.push_str(&format!(" LIMIT ${}", args.len()));
                self.fetch_all(&sql, &args).await
            }
            // Every instance that matches (Verda's list has no pages).
            None => self.fetch_all_bulk(&sql, &args).await,
        }
    }

    /// Memory held by the instances on each host: `(host id, MB)`.
    pub async fn instance_memory_by_host(
        &self,
        host_id: Option<&str>,
    ) -> Result<Vec<(String, i64)>> {
        // As the store's own check counts it: instances on a host and
        // those moving in (holding CPUs there). One host's figure reads
        // only that host's rows, on the indexes that lead with the host;
        // no `$1 = ''` escape hatch, which would stop either engine from
        // using them.
        const ARMS: [&str; 3] = [
            "SELECT id, host_id FROM instances WHERE host_id IS NOT NULL",
            "SELECT DISTINCT SUBSTR(holder, 10), host_id FROM cpu_claims \
             WHERE SUBSTR(holder, 1, 9) = 'instance:'",
            "SELECT DISTINCT instance_id, host_id FROM cpu_shares WHERE 1 = 1",
        ];
        let filter = match host_id {
            Some(_) => " AND host_id = $1",
            None => "",
        };
        let arms: Vec<String> = ARMS.iter().map(|arm| format!("{arm}{filter}")).collect();
        let sql = format!(
            "SELECT h.host_id, CAST(SUM(i.memory_mb) AS BIGINT) AS memory_mb \
             FROM ({}) h JOIN instances i ON i.id = h.id GROUP BY h.host_id",
            arms.join(" UNION ")
        );
        let args: Vec<Arg> = host_id.map(Arg::from).into_iter().collect();
        match host_id {
            Some(_) => self.fetch_all(&sql, &args).await,
            None => self.fetch_all_bulk(&sql, &args).await,
        }
    }

    /// How many instances are in each state but `terminated`: from a
    /// partial index (migration 0031), so it costs what the live fleet
    /// is, whatever history the table keeps.
    pub async fn live_instance_counts(&self) -> Result<Vec<(String, i64)>> {
        self.fetch_all(
            "SELECT state, COUNT(*) AS n FROM instances WHERE state <> 'terminated' \
             GROUP BY state ORDER BY state",
            &[],
        )
        .await
    }

    /// How many instances are in each state, terminated ones included:
    /// every row read.
    pub async fn instance_counts(&self) -> Result<Vec<(String, i64)>> {
        self.fetch_all_bulk(
            "SELECT state, COUNT(*) AS n FROM instances GROUP BY state ORDER BY state",
            &[],
        )
        .await
    }

    /// Claims `cpus` (and the instance's memory) of a READY host for an
    /// instance and records `steps` on its operation, in one transaction:
    /// [`CpuClaim::Place`] an unplaced instance there, or [`CpuClaim::MoveTo`]
    /// reserve them beside what it holds where it is. `false`, changing
    /// nothing, when the host is not READY or lacks the memory, a CPU is
    /// held, the instance is placed already (or would move onto its own
    /// host), or the operation is no longer this process's.
    pub async fn claim_instance_cpus(
        &self,
        purpose: CpuClaim,
        instance_id: &str,
        (host_id, unit): (&str, Option<&str>),
        (cpus, share): (&[u32], Option<u32>),
        op: (&str, &str, &str),
    ) -> Result<bool> {
        // On PostgreSQL a placement on whole CPUs of a pooled host is one
        // call (migration 0043), outside any transaction: one round trip,
        // not four, and under load one of a batch (see
        // [`batches`]).
        if self.backend == crate::Backend::Postgres
            && purpose == CpuClaim::Place
            && share.is_none()
            && unit.is_none()
            && !cpus.is_empty()
        {
            let (operation, steps, lease_until) = op;
            let listed: Vec<String> = cpus.iter().map(u32::to_string).collect();
            let placement = Arc::new(Placement {
                operation: operation.to_string(),
                owner: self.owner.to_string(),
                steps: steps.to_string(),
                lease_until: lease_until.to_string(),
                instance: instance_id.to_string(),
                host: host_id.to_string(),
                cpu_list: tessera_core::CpuSet::from_iter(cpus.iter().copied()).to_string(),
                holder: holder(instance_id),
                cpus: listed.join(","),
            });
            return match &self.instance_batches {
                Some(batches) => batches.place.call(placement).await,
                None => place_alone(&self.write, placement).await,
            };
        }
        let place = Arc::new(Placing {
            instance_id: instance_id.to_string(),
            host_id: host_id.to_string(),
            cpus: cpus.to_vec(),
            share,
            unit: unit.map(str::to_string),
            progress: operation_progress(op.0, op.1, op.2, &self.owner),
        });
        self.write("claim_instance_cpus", move |conn| {
            let place = place.clone();
            Box::pin(async move { claim_cpus(conn, &place, purpose == CpuClaim::Place).await })
        })
        .await
    }

    /// Takes an instance its host failed to create off that host, to be
    /// placed again: its CPUs (shares, unit) free, no host, the volumes of
    /// `rehome` (made for it, their storage destroyed on that host) without
    /// a home, and `op`'s steps `(id, steps, lease)` recorded, in one
    /// transaction. `false`, changing nothing, when the operation is no
    /// longer this process's.
    pub async fn unplace_instance(
        &self,
        instance_id: &str,
        rehome: &[String],
        op: (&str, &str, &str),
    ) -> Result<bool> {
        let mut statements = vec![operation_progress(op.0, op.1, op.2, &self.owner)];
        statements.extend(release_statements(instance_id));
        for volume in rehome {
            statements.push((
                "UPDATE volumes SET host_id = NULL, generation = generation + 1 \
                 WHERE id = $1 AND instance_id = $2"
                    .into(),
                vec![volume.into(), instance_id.into()],
            ));
        }
        let counts = self
            .run_statements("unplace_instance", statements, |c| c[0] == 1)
            .await?;
        Ok(counts[0] == 1)
    }

    /// Ends an instance's operation and sets the instance's state together.
    /// `release` also takes back its CPUs. `false` when the operation had
    /// already ended (another process settled it).
    pub async fn settle_instance_operation(
        &self,
        end: &OperationEnd<'_>,
        instance_id: &str,
        update: &InstanceUpdate,
        release: bool,
    ) -> Result<bool> {
        self.settle_instances(end, &[(instance_id, update, release)])
            .await
    }

    /// [`Store::settle_instance_operation`] for an operation acting on
    /// several instances: `(instance, its new state, release its CPUs)`.
    pub async fn settle_instances(
        &self,
        end: &OperationEnd<'_>,
        instances: &[(&str, &InstanceUpdate, bool)],
    ) -> Result<bool> {
        let mut finish = operation_finish(end.id, end.status, end.result, end.error, &self.owner);
        // The common end (an instance running, or stopped, nothing to let
        // go): three rows of three tables, in one statement on PostgreSQL.
        // Not of a creation a delete superseded: that one is undone (its
        // driver sees why it was refused), however near its end the delete
        // came.
        if let [(instance_id, update, false)] = instances
            && update.state != InstanceState::Terminated
        {
            finish.0.push_str(&format!(
                " AND cancel_requested <> {}",
                crate::operations::CANCELLED_BY_DELETE
            ));
            let running = update.state == InstanceState::Running;
            let rest = vec![
                instance_set(instance_id, update, None),
                meter_set(instance_id, running, None),
            ];
            let Some(batches) = &self.instance_batches else {
                return self.run_guarded("settle_instances", finish, rest).await;
            };
            let settlement = Settlement {
                end: InstanceEnd::new(end, &self.owner, instance_id, update),
                running,
                alone: crate::db::guarded_statement(&finish, &rest),
            };
            return batches.settle.call(Arc::new(settlement)).await;
        }
        // An instance's end that gives back all it held (a deletion, an
        // undone creation): one statement on PostgreSQL, alone or batched.
        if let [(instance_id, update, true)] = instances
            && update.state == InstanceState::Terminated
            && let Some(batches) = &self.instance_batches
        {
            let termination = InstanceEnd::new(end, &self.owner, instance_id, update);
            return batches.terminate.call(Arc::new(termination)).await;
        }
        let mut statements = vec![finish];
        for (instance_id, update, release) in instances {
            statements.push(instance_set(instance_id, update, None));
            statements.push(meter_set(
                instance_id,
                update.state == InstanceState::Running,
                None,
            ));
            if update.state == InstanceState::Terminated {
                statements.push(detach_all(instance_id));
                // Its address is free again: the subnet's rows are its
                // live instances', so counting them needs no join.
                statements.push((
                    "DELETE FROM instance_addresses WHERE instance_id = $1".into(),
                    vec![(*instance_id).into()],
                ));
            }
            if *release {
                statements.extend(release_statements(instance_id));
            }
        }
        let counts = self
            .run_statements("settle_instances", statements, |c| c[0] == 1)
            .await?;
        Ok(counts[0] == 1)
    }

    /// Records that a moving instance now runs on `to` (with `cpu_list`
    /// and `private_ip`), and `steps`. Its CPUs on `from` stay held until
    /// [`Store::release_instance_host`]. `false`, changing nothing, unless
    /// `to` is READY, differs from `from`, and the instance still holds
    /// CPUs there.
    pub async fn switch_instance_host(
        &self,
        instance_id: &str,
        from: &str,
        to: (&str, &str, &str, Option<&str>),
        op: (&str, &str, &str),
    ) -> Result<Switch> {
        let (to, cpu_list, private_ip, ssh_endpoint) = to;
        let statements = vec![
            (
                "UPDATE instances SET host_id = $1, cpu_list = $2, private_ip = $3, ssh_endpoint = $8, \
                 updated_at = $4, generation = generation + 1 \
                 WHERE id = $5 AND host_id = $6 AND $1 <> $6 \
                 AND (EXISTS (SELECT 1 FROM cpu_claims WHERE holder = $7 AND host_id = $1) \
                      OR EXISTS (SELECT 1 FROM cpu_shares WHERE instance_id = $5 AND host_id = $1)) \
                 AND EXISTS (SELECT 1 FROM hosts WHERE id = $1 AND status = 'READY')"
                    .to_string(),
                vec![
                    to.into(),
                    cpu_list.into(),
                    private_ip.into(),
                    now().into(),
                    instance_id.into(),
                    from.into(),
                    holder(instance_id).into(),
                    ssh_endpoint.into(),
                ],
            ),
            operation_progress(op.0, op.1, op.2, &self.owner),
        ];
        let counts = self
            .run_statements("switch_instance_host", statements, |c| {
                c[0] == 1 && c[1] == 1
            })
            .await?;
        Ok(match (counts[0], counts[1]) {
            (1, 1) => Switch::Switched,
            (_, 1) => Switch::Refused,
            _ => Switch::NotOurs,
        })
    }
    /// Lets go of the CPUs an instance holds on `host_id` (a move's source
    /// once it has moved, or its target when the move is given up), and
    /// records `steps`. `false`, changing nothing, when the operation is no
    /// longer this process's.
    pub async fn release_instance_host(
        &self,
        instance_id: &str,
        host_id: &str,
        op: (&str, &str, &str),
    ) -> Result<bool> {
        let at = now();
        let statements = vec![
            (
                "DELETE FROM cpu_claims WHERE holder = $1 AND host_id = $2".to_string(),
                vec![holder(instance_id).into(), host_id.into()],
            ),
            (
                "UPDATE hosts SET generation = generation + 1, updated_at = $1 WHERE id = $2"
                    .to_string(),
                vec![(&at).into(), host_id.into()],
            ),
            operation_progress(op.0, op.1, op.2, &self.owner),
            free_units(instance_id, Some(host_id)),
            clear_shares(instance_id, Some(host_id)),
            free_unshared(host_id),
        ];
        let counts = self
            .run_statements("release_instance_host", statements, |c| c[2] == 1)
            .await?;
        Ok(counts[2] == 1)
    }

    /// Instances holding CPUs of a host, whether they run there or are
    /// moving there.
    pub async fn instance_holders_on(&self, host_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self
            .fetch_all(
                "SELECT DISTINCT SUBSTR(holder, 10) FROM cpu_claims WHERE host_id = $1 \
                 AND SUBSTR(holder, 1, 9) = 'instance:' \
                 UNION SELECT DISTINCT instance_id FROM cpu_shares WHERE host_id = $1 \
                 ORDER BY 1",
                &[host_id.into()],
            )
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Marks instances as acted on by `op_id` (none may have another
    /// operation under way). `false`, changing nothing, otherwise.
    pub async fn claim_instances_for(&self, op_id: &str, instance_ids: &[String]) -> Result<bool> {
        // In their ids' order, as a batch of beginnings holds them.
        let mut ids: Vec<&String> = instance_ids.iter().collect();
        ids.sort();
        let statements = ids
            .into_iter()
            .map(|id| {
                (
                    "UPDATE instances SET operation_id = $1, updated_at = $2 \
                     WHERE id = $3 AND (operation_id IS NULL OR operation_id = $1)"
                        .to_string(),
                    vec![op_id.into(), now().into(), id.into()],
                )
            })
            .collect();
        let counts = self
            .run_statements("claim_instances_for", statements, |c| {
                c.iter().all(|n| *n == 1)
            })
            .await?;
        Ok(counts.iter().all(|n| *n == 1))
    }

    /// Lets go of instances an operation acted on without changing them.
    pub async fn release_instances_of(&self, op_id: &str) -> Result<()> {
        self.run_statements(
            "release_instances_of",
            vec![(
                "UPDATE instances SET operation_id = NULL WHERE operation_id = $1 \
                 AND EXISTS (SELECT 1 FROM operations WHERE id = $1 AND status = 'running' \
                 AND lease_owner = $2)"
                    .into(),
                vec![op_id.into(), self.owner.as_ref().into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Starts an operation on an instance of `op`'s project in one of `from`
    /// that has none under way: it moves to `to` and records `op`, taken by this process
    /// until `lease_until` (it drives it at once). Answers the operation as
    /// written; `None`, changing nothing, otherwise.
    ///
    /// A delete stops the instance's meter as it begins: once asked for it
    /// cannot be undone (it is tried until its host confirms or leaves the
    /// fleet), so the tenant pays nothing while a host that does not answer
    /// keeps it waiting.
    ///
    /// With `paid` (a start of a prepaid project's instance, or Verda's),
    /// the project's balance must cover an hour of all it runs or is
    /// creating, this instance included, checked in the same transaction
    /// under the project's lock: starts racing one another cannot each pass
    /// on the same money ([`StoreError::InsufficientFunds`] otherwise,
    /// changing nothing).
    ///
    /// [`StoreError::InsufficientFunds`]: crate::StoreError::InsufficientFunds
    pub async fn begin_instance_operation(
        &self,
        instance_id: &str,
        from: &[&str],
        to: &str,
        op: &NewOperation,
        lease_until: &str,
        paid: Option<&QuotaCheck>,
    ) -> Result<Option<crate::OperationRecord>> {
        let stop_meter = op.kind == OperationKind::InstanceDelete;
        // One statement on PostgreSQL, alone or batched, unless the
        // project's balance is checked in the same transaction.
        if paid.is_none()
            && let Some(batches) = &self.instance_batches
        {
            let taken = operation_taken(op, lease_until);
            let beginning = Beginning::new(instance_id, from, to, &taken, &self.owner, stop_meter);
            let began = batches.begin.call(Arc::new(beginning)).await?;
            return Ok(began.then_some(taken));
        }
        let (insert, taken) = operation_insert_taken(op, &self.owner, lease_until);
        let mut args: Vec<Arg> = vec![
            to.into(),
            (&op.id).into(),
            now().into(),
            instance_id.into(),
            (&op.project_id).into(),
        ];
        let params: Vec<String> = from
            .iter()
            .map(|state| {
                args.push((*state).into());
                format!("${}", args.len())
            })
            .collect();
        let counts = self
            .run_statements_within(
                "begin_instance_operation",
                vec![
                    (
                        format!(
                            "UPDATE instances SET state = $1, state_detail = NULL, operation_id = $2, \
                             updated_at = $3, generation = generation + 1 \
                             WHERE id = $4 AND project_id = $5 AND operation_id IS NULL \
                             AND state IN ({})",
                            params.join(", ")
                        ),
                        args,
                    ),
                    insert,
                ]
                .into_iter()
                .chain(stop_meter.then(|| meter_set(instance_id, false, None)))
                .collect(),
                |c| c[0] == 1,
                paid,
            )
            .await?;
        Ok((counts[0] == 1).then_some(taken))
    }

    /// Ends an instance's operation (`end`, which this process drives)
    /// and hands the instance to `delete`, a delete taken by this process
    /// until `lease_until`: the instance is `stopping`, with `detail`, and
    /// keeps what it holds on its host (CPUs, address, volumes) until the
    /// delete's host confirms. For a creation whose host did not let go of
    /// what it was making: the creation ends now, its clean-up goes on as a
    /// delete does. Answers the delete as written; `None`, changing
    /// nothing, when `end` was no longer this process's to end.
    pub async fn hand_instance_to_delete(
        &self,
        end: &OperationEnd<'_>,
        instance_id: &str,
        detail: &str,
        delete: &NewOperation,
        lease_until: &str,
    ) -> Result<Option<crate::OperationRecord>> {
        let finish = operation_finish(end.id, end.status, end.result, end.error, &self.owner);
        let (insert, taken) = operation_insert_taken(delete, &self.owner, lease_until);
        let counts = self
            .run_statements(
                "hand_instance_to_delete",
                vec![
                    finish,
                    (
                        "UPDATE instances SET state = $1, state_detail = $2, operation_id = $3, \
                         updated_at = $4, generation = generation + 1 \
                         WHERE id = $5 AND operation_id = $6"
                            .into(),
                        vec![
                            InstanceState::Stopping.as_str().into(),
                            detail.into(),
                            (&delete.id).into(),
                            now().into(),
                            instance_id.into(),
                            end.id.into(),
                        ],
                    ),
                    insert,
                    meter_set(instance_id, false, None),
                ],
                |c| c[0] == 1 && c[1] == 1,
            )
            .await?;
        Ok((counts[0] == 1 && counts[1] == 1).then_some(taken))
    }
}

struct Placing {
    instance_id: String,
    host_id: String,
    cpus: Vec<u32>,
    /// A shared-CPU instance's thousandths of its one CPU.
    share: Option<u32>,
    /// The Kloigos unit of a partitioned host whose CPUs these are.
    unit: Option<String>,
    progress: (String, Vec<Arg>),
}

/// Claims `place.cpus` of a READY host for the instance and records the
/// operation's progress; with `placing`, the instance (unplaced until now)
/// is recorded there too.
///
/// The host row's lock comes last, just before the memory check and the
/// commit: every claim on a host waits for it (as does a decommission), so
/// on PostgreSQL it is held for two statements, not the whole claim. The
/// CPUs need no lock: the ledger's key refuses a CPU twice. Locks are taken
/// instance, ledger, host, the order a release takes them in too (on
/// PostgreSQL a placement of whole CPUs takes the operation's row first,
/// as a settle does); a whole Kloigos unit takes the host first, as
/// Kloigos' own claim of a unit does. PostgreSQL's function of migration
/// 0043 does the same for a placement on a pooled host's CPUs, in one call:
/// a change to what this checks belongs there too.
async fn claim_cpus(
    mut conn: Conn<'_>,
    place: &Placing,
    placing: bool,
) -> Result<Commit<bool>, DbError> {
    if place.cpus.is_empty() {
        return Ok(Commit::Undo(false));
    }
    let at = now();
    // A whole unit of a partitioned host: Kloigos' own claim of a unit
    // holds the host's row before the unit's, so this one takes the host
    // first too, or each could wait for the other.
    let early_capacity = match &place.unit {
        Some(_) => match lock_ready_host(&mut conn, &place.host_id, &at).await? {
            Some(capacity) => Some(capacity),
            None => return Ok(Commit::Undo(false)),
        },
        None => None,
    };
    let cpu_args = || place.cpus.iter().map(|&cpu| Arg::from(i64::from(cpu)));
    // On PostgreSQL a placement of whole CPUs (here, a whole unit of a
    // partitioned host: a pooled host's are one call, migration 0043) is
    // one statement up to the memory check: the operation's progress, the
    // instance recorded on the host, its CPUs in the ledger, and the
    // host's lock (last, as below). Three round trips fewer than a
    // statement each.
    let placed_with_claims = placing && place.share.is_none() && conn.is_postgres();
    let mut early_capacity = early_capacity;
    if placed_with_claims {
        let cpu_list = tessera_core::CpuSet::from_iter(place.cpus.iter().copied()).to_string();
        let (progress, progress_args) = &place.progress;
        let mut args: Vec<Arg> = vec![
            (&place.host_id).into(),
            holder(&place.instance_id).into(),
            (&cpu_list).into(),
            (&at).into(),
            (&place.instance_id).into(),
        ];
        args.extend(cpu_args());
        let cpus = (0..place.cpus.len())
            .map(|i| format!("(${})", i + 6))
            .collect::<Vec<_>>()
            .join(", ");
        let progress = crate::db::shift_parameters(progress, args.len());
        args.extend(progress_args.iter().cloned());
        // A unit's host is locked already.
        let host = match early_capacity {
            None => "UPDATE hosts SET generation = generation + 1, updated_at = $4 \
                     WHERE id = $1 AND status = 'READY' AND EXISTS (SELECT 1 FROM placed) \
                     RETURNING memory_mb"
                .to_string(),
            Some(capacity) => {
                args.push(capacity.into());
                format!("SELECT CAST(${} AS BIGINT) AS memory_mb", args.len())
            }
        };
        let counts = conn
            .fetch_ints(
                &format!(
                    "WITH progressed AS ({progress} RETURNING 1), \
                     placed AS (UPDATE instances SET host_id = $1, cpu_list = $3, \
                     updated_at = $4, generation = generation + 1 \
                     WHERE id = $5 AND host_id IS NULL AND EXISTS (SELECT 1 FROM progressed) \
                     RETURNING id), \
                     claimed AS (INSERT INTO cpu_claims (host_id, cpu, holder) \
                     SELECT $1, cpus.cpu, $2 FROM placed CROSS JOIN (VALUES {cpus}) AS cpus (cpu) \
                     ON CONFLICT DO NOTHING RETURNING 1), \
                     host AS ({host}) \
                     SELECT (SELECT COUNT(*) FROM claimed), \
                     COALESCE((SELECT memory_mb FROM host), -1)"
                ),
                &args,
            )
            .await?;
        match counts[..] {
            [claimed, capacity] if claimed == place.cpus.len() as i64 && capacity >= 0 => {
                early_capacity = Some(capacity);
            }
            _ => return Ok(Commit::Undo(false)),
        }
    } else if placing {
        let cpu_list = tessera_core::CpuSet::from_iter(place.cpus.iter().copied()).to_string();
        let placed = conn
            .execute(
                "UPDATE instances SET host_id = $1, cpu_list = $2, updated_at = $3, \
                 generation = generation + 1 WHERE id = $4 AND host_id IS NULL",
                &[
                    (&place.host_id).into(),
                    (&cpu_list).into(),
                    (&at).into(),
                    (&place.instance_id).into(),
                ],
            )
            .await?;
        if placed != 1 {
            return Ok(Commit::Undo(false));
        }
    } else {
        let current = conn
            .fetch_text(
                "SELECT host_id FROM instances WHERE id = $1",
                &[(&place.instance_id).into()],
            )
            .await?;
        if current.as_deref() == Some(place.host_id.as_str()) {
            // A move goes elsewhere.
            return Ok(Commit::Undo(false));
        }
    }
    if let Some(unit) = &place.unit {
        // A whole unit of a partitioned host: Kloigos shows it ALLOCATED,
        // held by the instance, in the instance's project.
        let tags = serde_json::json!({ "instance_id": place.instance_id }).to_string();
        let taken = conn
            .execute(
                "UPDATE compute_units SET status = 'ALLOCATED', status_detail = NULL, \
                 instance_id = $1, project_id = (SELECT project_id FROM instances WHERE id = $1), \
                 tags = $2, deployment_id = NULL, ssh_public_key = NULL, started_at = $3, \
                 deadline = NULL, updated_at = $3, generation = generation + 1 \
                 WHERE compute_id = $4 AND host_id = $5 AND status = 'FREE'",
                &[
                    (&place.instance_id).into(),
                    tags.into(),
                    (&at).into(),
                    unit.into(),
                    (&place.host_id).into(),
                ],
            )
            .await?;
        if taken != 1 {
            return Ok(Commit::Undo(false));
        }
    }
    if place.share.is_none() && !placed_with_claims {
        let rows: Vec<String> = (0..place.cpus.len())
            .map(|i| format!("($1, ${}, $2)", i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO cpu_claims (host_id, cpu, holder) VALUES {} ON CONFLICT DO NOTHING",
            rows.join(", ")
        );
        let mut args: Vec<Arg> = vec![(&place.host_id).into(), holder(&place.instance_id).into()];
        args.extend(cpu_args());
        if conn.execute(&sql, &args).await? != place.cpus.len() as u64 {
            return Ok(Commit::Undo(false));
        }
    }
    if !placed_with_claims && conn.execute(&place.progress.0, &place.progress.1).await? != 1 {
        // The operation was taken over or ended meanwhile.
        return Ok(Commit::Undo(false));
    }
    let capacity = match early_capacity {
        Some(capacity) => capacity,
        None => match lock_ready_host(&mut conn, &place.host_id, &at).await? {
            Some(capacity) => capacity,
            None => return Ok(Commit::Undo(false)),
        },
    };
    if let Some(millis) = place.share
        && !claim_share(&mut conn, place, millis).await?
    {
        return Ok(Commit::Undo(false));
    }
    // Memory is checked under the host row's lock, so replicas whose views
    // are behind cannot overcommit it: the instances on the host and those
    // moving in, this one among them now. On PostgreSQL this statement's
    // snapshot is taken after the lock was granted, so it sees every claim
    // committed before ours.
    let used = conn
        .fetch_int(HOST_MEMORY_HELD, &[(&place.host_id).into()])
        .await?
        .unwrap_or(0);
    if used > capacity {
        return Ok(Commit::Undo(false));
    }
    Ok(Commit::Keep(true))
}

/// The memory held on host `$1`: its instances', and those of instances
/// moving in (holding its CPUs or shares while placed elsewhere). Each
/// part reads one host's rows on an index that leads with the host,
/// whatever plan a prepared statement keeps; the ledger's and shares'
/// holders already on the host are set aside before any is looked up, so
/// a host whose instances are all placed costs no lookup per instance
/// (its ledger holds one row per CPU of each). Migration 0045's function
/// counts the same.
const HOST_MEMORY_HELD: &str = "WITH here AS MATERIALIZED (\
     SELECT id, memory_mb FROM instances WHERE host_id = $1), \
     moving AS (SELECT SUBSTR(holder, 10) AS id FROM cpu_claims \
     WHERE host_id = $1 AND SUBSTR(holder, 1, 9) = 'instance:' \
     UNION SELECT instance_id FROM cpu_shares WHERE host_id = $1 \
     EXCEPT SELECT id FROM here) \
     SELECT CAST(COALESCE((SELECT SUM(memory_mb) FROM here), 0) \
     + COALESCE((SELECT SUM(i.memory_mb) FROM moving m JOIN instances i ON i.id = m.id), 0) \
     AS BIGINT)";

/// Takes a READY host's row lock for a claim (a decommission waits for
/// it, and it for a decommission) and answers the host's memory; `None`
/// when the host is not READY.
async fn lock_ready_host(
    conn: &mut Conn<'_>,
    host_id: &str,
    at: &str,
) -> Result<Option<i64>, DbError> {
    conn.fetch_int(
        "UPDATE hosts SET generation = generation + 1, updated_at = $1 \
         WHERE id = $2 AND status = 'READY' RETURNING memory_mb",
        &[at.into(), host_id.into()],
    )
    .await
}

/// Gives a shared-CPU instance `millis` of its one CPU: the CPU becomes
/// shared (held by `shared` in the ledger) unless it is, and its shares may
/// not pass a whole CPU. `false` when the CPU is someone's own, or full.
/// Runs under the host row's lock, which every release takes too.
async fn claim_share(conn: &mut Conn<'_>, place: &Placing, millis: u32) -> Result<bool, DbError> {
    let [cpu] = place.cpus[..] else {
        return Ok(false);
    };
    let cpu = i64::from(cpu);
    conn.execute(
        "INSERT INTO cpu_claims (host_id, cpu, holder) VALUES ($1, $2, 'shared') \
         ON CONFLICT DO NOTHING",
        &[(&place.host_id).into(), cpu.into()],
    )
    .await?;
    let holder = conn
        .fetch_text(
            "SELECT holder FROM cpu_claims WHERE host_id = $1 AND cpu = $2",
            &[(&place.host_id).into(), cpu.into()],
        )
        .await?;
    if holder.as_deref() != Some("shared") {
        return Ok(false);
    }
    let added = conn
        .execute(
            "INSERT INTO cpu_shares (host_id, cpu, instance_id, millis) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            &[
                (&place.host_id).into(),
                cpu.into(),
                (&place.instance_id).into(),
                i64::from(millis).into(),
            ],
        )
        .await?;
    let held = conn
        .fetch_int(
            "SELECT CAST(COALESCE(SUM(millis), 0) AS BIGINT) FROM cpu_shares \
             WHERE host_id = $1 AND cpu = $2",
            &[(&place.host_id).into(), cpu.into()],
        )
        .await?
        .unwrap_or(0);
    Ok(added == 1 && held <= i64::from(tessera_core::placement::CPU_MILLIS))
}

/// Statements that clear an instance's placement and bump its host.
fn unplace_statements(instance_id: &str) -> ((String, Vec<Arg>), (String, Vec<Arg>)) {
    let at = now();
    (
        (
            "UPDATE instances SET host_id = NULL, cpu_list = NULL, updated_at = $1, \
             generation = generation + 1 WHERE id = $2"
                .into(),
            vec![(&at).into(), instance_id.into()],
        ),
        (
            "UPDATE hosts SET generation = generation + 1, updated_at = $1 \
             WHERE id = (SELECT host_id FROM instances WHERE id = $2)"
                .into(),
            vec![at.into(), instance_id.into()],
        ),
    )
}

/// Takes back all an instance holds on its host (CPUs, shares, unit) and
/// its host: the host's generation moves on first, while the instance
/// still names it.
fn release_statements(instance_id: &str) -> [(String, Vec<Arg>); 6] {
    let (clear, host) = unplace_statements(instance_id);
    [
        host,
        clear_claims(instance_id),
        free_shared_by(instance_id),
        clear_shares(instance_id, None),
        free_units(instance_id, None),
        clear,
    ]
}

/// Frees the shared CPUs that no instance but `instance_id` shares, on
/// the hosts where it is or holds a share, before its shares go: they are
/// whole again (and so is any shared CPU there left with no share at
/// all). A host's shared CPUs are read, not the fleet's. The release's
/// first statement holds the instance's own host, so every share
/// committed there is seen; a share on another host (which only a move
/// leaves, and a move's own release sweeps under that host's lock) is
/// swept without it.
fn free_shared_by(instance_id: &str) -> (String, Vec<Arg>) {
    (
        "DELETE FROM cpu_claims WHERE holder = 'shared' \
         AND host_id IN (SELECT host_id FROM instances WHERE id = $1 \
                         UNION SELECT host_id FROM cpu_shares WHERE instance_id = $1) \
         AND NOT EXISTS (SELECT 1 FROM cpu_shares s WHERE s.host_id = cpu_claims.host_id \
                         AND s.cpu = cpu_claims.cpu AND s.instance_id <> $1)"
            .into(),
        vec![instance_id.into()],
    )
}

/// Detaches every volume of an instance that is gone.
fn detach_all(instance_id: &str) -> (String, Vec<Arg>) {
    (
        "UPDATE volumes SET instance_id = NULL, target = NULL, status = 'detached', \
         generation = generation + 1 WHERE instance_id = $1 AND status = 'attached'"
            .into(),
        vec![instance_id.into()],
    )
}

/// Gives back the Kloigos units an instance holds (on `host_id`, or
/// anywhere): FREE again, with no tenant.
fn free_units(instance_id: &str, host_id: Option<&str>) -> (String, Vec<Arg>) {
    (
        "UPDATE compute_units SET status = 'FREE', status_detail = NULL, instance_id = NULL, \
         project_id = NULL, tags = NULL, deployment_id = NULL, ssh_public_key = NULL, \
         started_at = NULL, deadline = NULL, updated_at = $1, generation = generation + 1 \
         WHERE instance_id = $2 AND ($3 = '' OR host_id = $3)"
            .into(),
        vec![
            now().into(),
            instance_id.into(),
            host_id.unwrap_or("").into(),
        ],
    )
}

fn clear_claims(instance_id: &str) -> (String, Vec<Arg>) {
    (
        "DELETE FROM cpu_claims WHERE holder = $1".into(),
        vec![holder(instance_id).into()],
    )
}

/// Takes back an instance's shares of shared CPUs (on `host_id`, or
/// anywhere).
fn clear_shares(instance_id: &str, host_id: Option<&str>) -> (String, Vec<Arg>) {
    (
        "DELETE FROM cpu_shares WHERE instance_id = $1 AND (host_id = $2 OR $2 = '')".into(),
        vec![instance_id.into(), host_id.unwrap_or("").into()],
    )
}

/// Frees the shared CPUs of `host_id` whose last share is gone: they are
/// whole again.
fn free_unshared(host_id: &str) -> (String, Vec<Arg>) {
    (
        "DELETE FROM cpu_claims WHERE holder = 'shared' AND host_id = $1 \
         AND NOT EXISTS (SELECT 1 FROM cpu_shares s \
                         WHERE s.host_id = cpu_claims.host_id AND s.cpu = cpu_claims.cpu)"
            .into(),
        vec![host_id.into()],
    )
}

impl Store {
    /// Sets the detail of an instance still being made on `host_id` (how
    /// far its image's pull got): nothing else of it changes, and an
    /// instance past provisioning keeps its own.
    pub async fn note_provisioning(&self, id: &str, host_id: &str, detail: &str) -> Result<()> {
        self.run_statements(
            "note_provisioning",
            vec![(
                "UPDATE instances SET state_detail = $3 WHERE id = $1 AND host_id = $2 \
                 AND state = 'provisioning' AND (state_detail IS NULL OR state_detail <> $3)"
                    .into(),
                vec![id.into(), host_id.into(), detail.into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }
}

/// Sets an instance's state; `operation` is the operation still under way
/// on it, or `None` when none is.
fn instance_set(
    instance_id: &str,
    update: &InstanceUpdate,
    operation: Option<&str>,
) -> (String, Vec<Arg>) {
    (
        "UPDATE instances SET state = $1, state_detail = $2, private_ip = COALESCE($3, private_ip), \
         operation_id = $4, updated_at = $5, generation = generation + 1, \
         ssh_endpoint = COALESCE($7, ssh_endpoint), end_cause = $8 WHERE id = $6"
            .into(),
        vec![
            update.state.as_str().into(),
            update.state_detail.as_ref().into(),
            update.private_ip.as_ref().into(),
            operation.into(),
            now().into(),
            instance_id.into(),
            update.ssh_endpoint.as_ref().into(),
            update.cause.map(TerminationCause::as_str).into(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProjectRecord, timestamp};

    fn creation(project: &str) -> (NewInstance, NewOperation) {
        let instance = NewInstance {
            id: "inst-1".into(),
            project_id: project.into(),
            name: "web-1".into(),
            labels: serde_json::json!({}),
            spec: serde_json::json!({}),
            memory_mb: 1024,
            vcpus: 1,
            micros_per_hour: 0,
            volumes: Vec::new(),
            attach: Vec::new(),
            container: None,
            network: None,
            replica: None,
            created_by: Some("user-1".into()),
        };
        let op = NewOperation {
            id: "op-1".into(),
            project_id: project.into(),
            kind: tessera_core::status::OperationKind::InstanceCreate,
            resource_id: Some("inst-1".into()),
            params: serde_json::json!({ "instance_id": "inst-1" }),
            created_by: "alice".into(),
        };
        (instance, op)
    }

    /// A creation recorded taken is its recorder's, as a take would have
    /// left it: another replica cannot take it while the lease holds (were
    /// the recorder to die at once, it waits the lease out, as for any
    /// driver), the recorder restarted takes it back at once, and the row
    /// the store answers is the row it wrote.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_creation_recorded_taken_is_its_recorders_until_its_lease_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = Store::sqlite_url(&dir.path().join("tessera.db"));
        let mine = Store::open(&url).await.expect("open").with_owner("one");
        let other = Store::open(&url).await.expect("open").with_owner("two");
        let project = ProjectRecord {
            id: "proj-1".into(),
            name: "p".into(),
            path: "p".into(),
            created_at: now(),
        };
        assert!(mine.insert_project(&project, None).await.expect("project"));
        let (instance, op) = creation(&project.id);
        let lease = timestamp(chrono::Utc::now() + chrono::Duration::seconds(60));
        let InstancesAdded::Recorded {
            instances,
            taken: Some(taken),
        } = mine
            .insert_instance(&instance, &op, None, Some(&lease))
            .await
            .expect("insert")
        else {
            panic!("recorded, and taken");
        };
        assert_eq!(instances.len(), 1);
        assert_eq!(taken.status, "running");
        assert_eq!(taken.attempts, 1);
        assert_eq!(
            mine.operation(&op.id).await.expect("read"),
            Some(*taken.clone()),
            "the answer is the row"
        );
        assert_eq!(
            other
                .acquire_operation(&op.id, &lease, false)
                .await
                .expect("take"),
            None,
            "another replica waits for the lease"
        );
        assert_eq!(
            other.own_operations().await.expect("own"),
            Vec::<String>::new()
        );
        assert_eq!(
            mine.own_operations().await.expect("own"),
            vec![op.id.clone()]
        );
        let back = mine
            .acquire_operation(&op.id, &lease, true)
            .await
            .expect("take back")
            .expect("its own");
        assert_eq!(back.attempts, 2);

        // Without the taken lease, a creation goes in pending, for anyone.
        let (mut instance, mut op) = creation(&project.id);
        instance.id = "inst-2".into();
        instance.name = "web-2".into();
        op.id = "op-2".into();
        op.resource_id = Some("inst-2".into());
        let added = mine
            .insert_instance(&instance, &op, None, None)
            .await
            .expect("insert");
        assert!(matches!(
            added,
            InstancesAdded::Recorded { taken: None, .. }
        ));
        let taken = other
            .acquire_operation(&op.id, &lease, false)
            .await
            .expect("take")
            .expect("anyone's");
        assert_eq!((taken.status.as_str(), taken.attempts), ("running", 1));
    }
}
