//! Containers of the containers API (`/compute`): each is the instance of
//! the same id (its row is written with the instance's, in one
//! transaction) with what that API adds, its SSH switch, its persistent
//! storage's mount paths and size, and its ingress rules.

use crate::db::Arg;
use crate::writer::Commit;
use crate::{Result, Store, StoreError, now};
use std::sync::Arc;

/// What the containers API adds to an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerRecord {
    pub id: String,
    pub project_id: String,
    pub ssh_enabled: bool,
    /// Absolute paths persisted in its storage.
    pub mount_paths: Vec<String>,
    pub storage_gb: i64,
    pub generation: i64,
    pub updated_at: String,
}

/// A new container's own fields, written with its instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewContainer {
    pub ssh_enabled: bool,
    pub mount_paths: Vec<String>,
    pub storage_gb: i64,
    /// Ingress rules made with it: `(port, target_port)`.
    pub ingress: Vec<(u16, u16)>,
}

/// One of a container's ingress rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRule {
    pub container_id: String,
    /// The external port.
    pub port: u16,
    /// The port inside the container.
    pub target_port: u16,
    /// The rule's id, as the API shows it.
    pub number: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// A live container as the ingress gateway needs it: where it answers and
/// which external ports lead to which ports inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressRoute {
    pub container_id: String,
    /// The container's instance state (`running`, ...).
    pub state: String,
    /// Where the container answers inside the cloud's network (empty while
    /// it has no address).
    pub private_ip: String,
    /// `(port, target_port)`, by external port.
    pub rules: Vec<(u16, u16)>,
}

/// What an instance uses and whether it runs, as its host last observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceUsage {
    pub instance_id: String,
    pub running: bool,
    pub detail: Option<String>,
    pub memory_used_bytes: Option<u64>,
    pub storage_used_bytes: Option<u64>,
    /// How busy its CPUs were since the host's previous look (percent).
    pub cpu_percent: Option<u32>,
    pub observed_at: String,
}

const CONTAINER_COLUMNS: &str =
    "id, project_id, ssh_enabled, mount_paths, storage_gb, generation, updated_at";

pub(crate) type ContainerRow = (String, String, i64, String, i64, i64, String);

pub(crate) fn container_from(row: ContainerRow) -> Result<ContainerRecord> {
    let (id, project_id, ssh_enabled, mount_paths, storage_gb, generation, updated_at) = row;
    let mount_paths = serde_json::from_str(&mount_paths).map_err(|e| {
        StoreError::Corrupt(format!(
            "containers.mount_paths of {id} is not a JSON list: {e}"
        ))
    })?;
    Ok(ContainerRecord {
        id,
        project_id,
        ssh_enabled: ssh_enabled != 0,
        mount_paths,
        storage_gb,
        generation,
        updated_at,
    })
}

/// A container (id, state, address) with one of its rules (port, target),
/// if it has any.
type RouteRow = (String, String, String, Option<i64>, Option<i64>);

fn port_from(container_id: &str, n: i64) -> Result<u16> {
    u16::try_from(n)
        .map_err(|_| StoreError::Corrupt(format!("ingress_rules of {container_id}: port {n}")))
}

fn rule_from(
    (container_id, port, target_port, number, created_at): (String, i64, i64, i64, i64),
) -> Result<IngressRule> {
    Ok(IngressRule {
        port: port_from(&container_id, port)?,
        target_port: port_from(&container_id, target_port)?,
        container_id,
        number,
        created_at,
    })
}

/// The statements that record a new container beside its instance.
pub(crate) fn container_insert(
    id: &str,
    project_id: &str,
    container: &NewContainer,
) -> Vec<(String, Vec<Arg>)> {
    let at = now();
    let mut statements = vec![(
        format!(
            "INSERT INTO containers ({CONTAINER_COLUMNS}, ingress_numbers) \
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7)"
        ),
        vec![
            id.into(),
            project_id.into(),
            i64::from(container.ssh_enabled).into(),
            serde_json::to_string(&container.mount_paths)
                .unwrap_or_else(|_| "[]".into())
                .into(),
            container.storage_gb.into(),
            at.into(),
            (container.ingress.len() as i64).into(),
        ],
    )];
    let created = chrono::Utc::now().timestamp();
    for (n, (port, target)) in container.ingress.iter().enumerate() {
        statements.push((
            "INSERT INTO ingress_rules (container_id, port, target_port, number, created_at) \
             VALUES ($1, $2, $3, $4, $5)"
                .into(),
            vec![
                id.into(),
                i64::from(*port).into(),
                i64::from(*target).into(),
                (n as i64 + 1).into(),
                created.into(),
            ],
        ));
    }
    statements
}

impl Store {
    pub async fn container(&self, id: &str) -> Result<Option<ContainerRecord>> {
        let row: Option<ContainerRow> = self
            .fetch_optional(
                &format!("SELECT {CONTAINER_COLUMNS} FROM containers WHERE id = $1"),
                &[id.into()],
            )
            .await?;
        row.map(container_from).transpose()
    }

    /// A project's containers, their instances terminated or not.
    pub async fn containers(&self, project_id: &str) -> Result<Vec<ContainerRecord>> {
        let rows: Vec<ContainerRow> = self
            .fetch_all(
                &format!(
                    "SELECT {CONTAINER_COLUMNS} FROM containers WHERE project_id = $1 ORDER BY id"
                ),
                &[project_id.into()],
            )
            .await?;
        rows.into_iter().map(container_from).collect()
    }

    /// Writes a container's SSH switch and mount paths, unless it changed
    /// since `read_generation` (`false`, changing nothing).
    pub async fn update_container(
        &self,
        container: &ContainerRecord,
        read_generation: i64,
    ) -> Result<bool> {
        let counts = self
            .run_statements(
                "update_container",
                vec![(
                    "UPDATE containers SET ssh_enabled = $1, mount_paths = $2, updated_at = $3, \
                     generation = generation + 1 WHERE id = $4 AND generation = $5"
                        .into(),
                    vec![
                        i64::from(container.ssh_enabled).into(),
                        serde_json::to_string(&container.mount_paths)
                            .unwrap_or_else(|_| "[]".into())
                            .into(),
                        now().into(),
                        (&container.id).into(),
                        read_generation.into(),
                    ],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// A container's ingress rules, by port.
    pub async fn ingress_rules(&self, container_id: &str) -> Result<Vec<IngressRule>> {
        let rows: Vec<(String, i64, i64, i64, i64)> = self
            .fetch_all(
                "SELECT container_id, port, target_port, number, created_at FROM ingress_rules \
                 WHERE container_id = $1 ORDER BY port",
                &[container_id.into()],
            )
            .await?;
        rows.into_iter().map(rule_from).collect()
    }

    /// Sets the rule for a container's external `port`: a new one gets the
    /// next number; an existing one keeps its number and gets the new
    /// target port. Answers the rule as written (in the same transaction:
    /// a delete racing it never leaves it unanswered), or `None` when the
    /// container is gone. Writes to one container's rules run one after
    /// the other (on PostgreSQL under its row's lock), so two new ports
    /// never take one number.
    pub async fn put_ingress_rule(
        &self,
        container_id: &str,
        port: u16,
        target_port: u16,
    ) -> Result<Option<IngressRule>> {
        let created = chrono::Utc::now().timestamp();
        let container = Arc::new(container_id.to_string());
        self.write("put_ingress_rule", move |mut conn| {
            let container = container.clone();
            Box::pin(async move {
                let id = container.as_str();
                let lock = if conn.is_postgres() { " FOR UPDATE" } else { "" };
                let there = conn
                    .fetch_text(
                        &format!("SELECT id FROM containers WHERE id = $1{lock}"),
                        &[id.into()],
                    )
                    .await?;
                if there.is_none() {
                    return Ok(Commit::Undo(None));
                }
                let (port, target) = (i64::from(port), i64::from(target_port));
                conn.execute(
                    "UPDATE ingress_rules SET target_port = $3 WHERE container_id = $1 AND port = $2",
                    &[id.into(), port.into(), target.into()],
                )
                .await?;
                // A new port takes the container's next number, never one
                // given before (migration 0041).
                let new = conn
                    .execute(
                        "UPDATE containers SET ingress_numbers = ingress_numbers + 1 \
                         WHERE id = $1 AND NOT EXISTS \
                         (SELECT 1 FROM ingress_rules WHERE container_id = $1 AND port = $2)",
                        &[id.into(), port.into()],
                    )
                    .await?;
                if new == 1 {
                    conn.execute(
                        "INSERT INTO ingress_rules (container_id, port, target_port, number, created_at) \
                         SELECT $1, $2, $3, ingress_numbers, $4 FROM containers WHERE id = $1",
                        &[id.into(), port.into(), target.into(), created.into()],
                    )
                    .await?;
                }
                let row = conn
                    .fetch_ints(
                        "SELECT number, created_at FROM ingress_rules \
                         WHERE container_id = $1 AND port = $2",
                        &[id.into(), port.into()],
                    )
                    .await?;
                let (Some(&number), Some(&created_at)) = (row.first(), row.get(1)) else {
                    return Ok(Commit::Undo(None));
                };
                Ok(Commit::Keep(Some(IngressRule {
                    container_id: id.to_string(),
                    port: port as u16,
                    target_port,
                    number,
                    created_at,
                })))
            })
        })
        .await
    }

    /// Removes the rule for a container's external `port`; `false` when
    /// there was none.
    pub async fn delete_ingress_rule(&self, container_id: &str, port: u16) -> Result<bool> {
        let counts = self
            .run_statements(
                "delete_ingress_rule",
                vec![(
                    "DELETE FROM ingress_rules WHERE container_id = $1 AND port = $2".into(),
                    vec![container_id.into(), i64::from(port).into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Every container not deleted, with its ingress rules: the gateway's
    /// route table, read whole.
    pub async fn ingress_routes(&self) -> Result<Vec<IngressRoute>> {
        let rows: Vec<RouteRow> = self
            .fetch_all(
                "SELECT c.id, i.state, i.private_ip, r.port, r.target_port FROM containers c \
                 JOIN instances i ON i.id = c.id \
                 LEFT JOIN ingress_rules r ON r.container_id = c.id \
                 WHERE i.state <> 'terminated' ORDER BY c.id, r.port",
                &[],
            )
            .await?;
        let mut routes: Vec<IngressRoute> = Vec::new();
        for (id, state, private_ip, port, target) in rows {
            if routes.last().is_none_or(|last| last.container_id != id) {
                routes.push(IngressRoute {
                    container_id: id.clone(),
                    state,
                    private_ip,
                    rules: Vec::new(),
                });
            }
            if let (Some(port), Some(target)) = (port, target) {
                let port = port_from(&id, port)?;
                let target = port_from(&id, target)?;
                if let Some(last) = routes.last_mut() {
                    last.rules.push((port, target));
                }
            }
        }
        Ok(routes)
    }

    /// Records what host `host_id` observed of its instances (one row
    /// each, the latest): of instances placed on it only, whatever else it
    /// names (another host's instance, one that does not exist). Answers
    /// which were recorded.
    pub async fn record_instance_usage(
        &self,
        host_id: &str,
        observed: &[InstanceUsage],
    ) -> Result<Vec<bool>> {
        if observed.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = |n: Option<u64>| n.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let statements = observed
            .iter()
            .map(|u| {
                (
                    "INSERT INTO instance_usage (instance_id, running, detail, memory_used_bytes, \
                     storage_used_bytes, observed_at, cpu_percent) \
                     SELECT $1, $2, $3, $4, $5, $6, $7 FROM instances \
                     WHERE id = $1 AND host_id = $8 \
                     ON CONFLICT (instance_id) DO UPDATE SET running = $2, detail = $3, \
                     memory_used_bytes = $4, storage_used_bytes = $5, observed_at = $6, \
                     cpu_percent = $7"
                        .to_string(),
                    vec![
                        (&u.instance_id).into(),
                        i64::from(u.running).into(),
                        u.detail.as_ref().into(),
                        bytes(u.memory_used_bytes).into(),
                        bytes(u.storage_used_bytes).into(),
                        (&u.observed_at).into(),
                        u.cpu_percent.map(i64::from).into(),
                        host_id.into(),
                    ],
                )
            })
            .collect();
        let counts = self
            .run_statements("record_instance_usage", statements, |_| true)
            .await?;
        Ok(counts.into_iter().map(|n| n > 0).collect())
    }

    /// What an instance's host last observed of it.
    pub async fn instance_usage(&self, instance_id: &str) -> Result<Option<InstanceUsage>> {
        type Row = (
            String,
            i64,
            Option<String>,
            Option<i64>,
            Option<i64>,
            String,
            Option<i64>,
        );
        let row: Option<Row> = self
            .fetch_optional(
                "SELECT instance_id, running, detail, memory_used_bytes, storage_used_bytes, \
                 observed_at, cpu_percent FROM instance_usage WHERE instance_id = $1",
                &[instance_id.into()],
            )
            .await?;
        Ok(row.map(
            |(instance_id, running, detail, memory, storage, observed_at, cpu)| InstanceUsage {
                instance_id,
                running: running != 0,
                detail,
                memory_used_bytes: memory.and_then(|n| u64::try_from(n).ok()),
                storage_used_bytes: storage.and_then(|n| u64::try_from(n).ok()),
                cpu_percent: cpu.and_then(|n| u32::try_from(n).ok()),
                observed_at,
            },
        ))
    }
}
