//! Kloigos compute units and the CPU ledger that backs their allocation.

use crate::batch::{Batch, Batcher, answered, answers_by_index, fetch_many};
use crate::db::{Arg, Conn, DbError};
use crate::hosts::status_guard;
use crate::writer::{Commit, Shape, Writer};
use crate::{Result, Store, StoreError, now};
use futures::future::BoxFuture;
use sqlx::Row;
use sqlx::any::AnyRow;
use std::sync::{Arc, LazyLock};
use tessera_core::status::UnitStatus;

/// A unit with the host fields Kloigos shows beside it.
#[derive(Clone, Debug)]
pub struct UnitRecord {
    pub compute_id: String,
    pub host_id: String,
    pub hostname: String,
    pub ip: String,
    pub region: String,
    pub zone: String,
    pub position: i64,
    pub cpu_range: String,
    pub cpu_list: String,
    pub cpu_count: i64,
    pub ports_range: String,
    pub status: UnitStatus,
    pub status_detail: Option<String>,
    pub ssh_public_key: Option<String>,
    pub tags: Option<serde_json::Value>,
    pub started_at: Option<String>,
    pub deadline: Option<String>,
    pub generation: i64,
    pub updated_at: String,
    /// The project it is allocated to.
    pub project_id: Option<String>,
    /// The instance holding it, when an instance (not a Kloigos tenant)
    /// took it.
    pub instance_id: Option<String>,
}

/// The list filters of `GET /api/compute_units/`; `None` matches anything.
#[derive(Clone, Debug, Default)]
pub struct UnitFilter {
    pub compute_id: Option<String>,
    pub hostname: Option<String>,
    pub host_id: Option<String>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub cpu_count: Option<i64>,
    pub deployment_id: Option<String>,
    pub statuses: Vec<UnitStatus>,
    /// Only units allocated to this project.
    pub project_id: Option<String>,
}

/// A tenant taking a FREE unit.
pub struct UnitClaim<'a> {
    pub compute_id: &'a str,
    pub host_id: &'a str,
    pub cpus: &'a [u32],
    pub ssh_public_key: &'a str,
    pub tags: Option<&'a serde_json::Value>,
    pub deadline: &'a str,
    pub project_id: &'a str,
    pub quota: ClaimQuota<'a>,
}

/// How a unit claim keeps to its project's quota.
#[derive(Clone, Copy, Debug)]
pub enum ClaimQuota<'a> {
    /// Checked in the claim's transaction, under the project's lock.
    Check(&'a crate::QuotaCheck),
    /// No configured default limits what a unit adds (an instance and its
    /// vCPUs): the claim is made only while the project sets no such limit
    /// of its own either, which its own statement reads. Nothing is counted
    /// and nothing locked. A claim so refused answers `None`, as a lost
    /// race does; the caller then reads the project's limits.
    NoOwnLimit,
}

/// The claim's condition for [`ClaimQuota::NoOwnLimit`], `project` the
/// claim's project: no limit of the project's own on instances or vCPUs
/// (NULL takes the default, -1 is none).
fn no_own_unit_limit(project: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM project_quotas q WHERE q.project_id = {project} \
         AND (q.instances >= 0 OR q.vcpus >= 0))"
    )
}

const UNIT_SELECT: &str = "SELECT u.compute_id, u.host_id, h.hostname, h.ip, h.region, h.zone, \
     u.position, u.cpu_range, u.cpu_list, u.cpu_count, u.ports_range, u.status, u.status_detail, \
     u.ssh_public_key, u.tags, u.started_at, u.deadline, u.generation, u.updated_at, \
     u.project_id, u.instance_id FROM compute_units u JOIN hosts h ON h.id = u.host_id";

fn unit_from_row(row: &AnyRow) -> Result<UnitRecord> {
    let status: String = row.try_get("status")?;
    let tags: Option<String> = row.try_get("tags")?;
    Ok(UnitRecord {
        compute_id: row.try_get("compute_id")?,
        host_id: row.try_get("host_id")?,
        hostname: row.try_get("hostname")?,
        ip: row.try_get("ip")?,
        region: row.try_get("region")?,
        zone: row.try_get("zone")?,
        position: row.try_get("position")?,
        cpu_range: row.try_get("cpu_range")?,
        cpu_list: row.try_get("cpu_list")?,
        cpu_count: row.try_get("cpu_count")?,
        ports_range: row.try_get("ports_range")?,
        status: status
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("compute_units.status: {e}")))?,
        status_detail: row.try_get("status_detail")?,
        ssh_public_key: row.try_get("ssh_public_key")?,
        tags: tags
            .map(|t| serde_json::from_str(&t))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("compute_units.tags: {e}")))?,
        started_at: row.try_get("started_at")?,
        deadline: row.try_get("deadline")?,
        generation: row.try_get("generation")?,
        updated_at: row.try_get("updated_at")?,
        project_id: row.try_get("project_id")?,
        instance_id: row.try_get("instance_id")?,
    })
}

fn holder(compute_id: &str) -> String {
    format!("unit:{compute_id}")
}

impl Store {
    pub async fn units(&self, filter: &UnitFilter) -> Result<Vec<UnitRecord>> {
        let mut conditions: Vec<String> = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        let mut add = |column: &str, arg: Arg| {
            args.push(arg);
            conditions.push(format!("{column} = ${}", args.len()));
        };
        let text = |v: &Option<String>| v.clone().map(Arg::Text);
        for (column, value) in [
            ("u.compute_id", text(&filter.compute_id)),
            ("h.hostname", text(&filter.hostname)),
            ("u.host_id", text(&filter.host_id)),
            ("h.region", text(&filter.region)),
            ("h.zone", text(&filter.zone)),
            ("u.deployment_id", text(&filter.deployment_id)),
            ("u.project_id", text(&filter.project_id)),
            ("u.cpu_count", filter.cpu_count.map(Arg::Int)),
        ] {
            if let Some(value) = value {
                add(column, value);
            }
        }
        let statuses: Vec<&'static str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        if !statuses.is_empty() {
            let sql = status_guard("u.status", &statuses, args.len() + 1);
            conditions.push(sql);
            args.extend(statuses.iter().map(|s| Arg::from(*s)));
        }
        // A project's units are few: walk them first (its index), then
        // their hosts. Left to itself SQLite's planner walks the hosts in
        // hostname order to spare the sort, all of a fleet's for a zone
        // they share. `CROSS JOIN` keeps SQLite's order as written;
        // PostgreSQL plans it as the join it is.
        let mut sql = match filter.project_id {
            Some(_) => {
                conditions.insert(0, "h.id = u.host_id".into());
                UNIT_SELECT.replace(
                    "FROM compute_units u JOIN hosts h ON h.id = u.host_id",
                    "FROM compute_units u CROSS JOIN hosts h",
                )
            }
            // Only a partitioned host has units (`cpu_ranges` are its
            // units): this term lets a zone or region filter walk the
            // partitioned hosts' index (migration 0024), not every host.
            None => {
                conditions.push("h.cpu_ranges <> '[]'".into());
                UNIT_SELECT.to_string()
            }
        };
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY h.hostname, u.position");
        let rows = self.fetch_rows(&sql, &args, None).await?;
        rows.iter().map(unit_from_row).collect()
    }

    pub async fn unit(&self, compute_id: &str) -> Result<Option<UnitRecord>> {
        let sql = format!("{UNIT_SELECT} WHERE u.compute_id = $1");
        let rows = self.fetch_rows(&sql, &[compute_id.into()], Some(1)).await?;
        rows.first().map(unit_from_row).transpose()
    }

    /// Takes a FREE unit for a tenant: the unit becomes ALLOCATING and its
    /// CPUs enter the ledger. `false`, changing nothing, when the unit is no
    /// longer FREE, its host is no longer READY, or any of its CPUs is held:
    /// the caller lost a race and should look again. Answers the unit as
    /// claimed, whose generation fences every later step of this
    /// allocation, or [`crate::StoreError::QuotaExceeded`] when the project
    /// is at a limit.
    pub async fn claim_unit(&self, claim: &UnitClaim<'_>) -> Result<Option<UnitRecord>> {
        let owned = Arc::new(OwnedClaim {
            compute_id: claim.compute_id.to_string(),
            host_id: claim.host_id.to_string(),
            cpus: claim.cpus.to_vec(),
            ssh_public_key: claim.ssh_public_key.to_string(),
            tags: claim.tags.map(|t| t.to_string()),
            // As `tags->>'deployment_id'` reads it: a JSON null is no id.
            deployment_id: claim
                .tags
                .and_then(|t| t.get("deployment_id"))
                .filter(|d| !d.is_null())
                .map(|d| {
                    d.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| d.to_string())
                }),
            deadline: claim.deadline.to_string(),
            project_id: claim.project_id.to_string(),
            quota: match claim.quota {
                ClaimQuota::Check(check) => Some(check.clone()),
                ClaimQuota::NoOwnLimit => None,
            },
        });
        // On PostgreSQL a claim without a quota check is one statement,
        // atomic by itself: no transaction around it, and it may run in
        // one statement with other such claims.
        let row = match (&self.unit_batches, owned.quota.is_none()) {
            (Some(batches), true) if !owned.cpus.is_empty() => batches.claim.call(owned).await,
            (Some(_), true) => write_claim(&self.write, owned, Shape::OneStatement).await,
            _ => write_claim(&self.write, owned, Shape::Statements).await,
        }?;
        row.as_ref().map(unit_from_row).transpose()
    }

    /// Moves a unit from one of `from` to `to`, setting its detail and
    /// deadline, if it is still at `generation` (nobody moved it since the
    /// caller looked). Answers its new generation, or `None`, changing
    /// nothing, when it was moved or is in none of `from`. Its CPUs stay held.
    pub async fn transition_unit(
        &self,
        compute_id: &str,
        generation: i64,
        from: &[UnitStatus],
        to: UnitStatus,
        detail: Option<&str>,
        deadline: Option<&str>,
    ) -> Result<Option<i64>> {
        let step = UnitStep {
            compute_id: compute_id.to_string(),
            generation,
            from: from.iter().map(|s| s.as_str()).collect(),
            to: to.as_str(),
            detail: detail.map(str::to_string),
            deadline: deadline.map(str::to_string),
        };
        match &self.unit_batches {
            Some(batches) => batches.transition.call(Arc::new(step)).await,
            None => write_step(&self.write, Arc::new(step)).await,
        }
    }

    /// Returns a DEALLOCATING unit still at `generation` to the pool: FREE
    /// (UNAVAILABLE if its host is not READY), no key, no tags, and its CPUs
    /// out of the ledger. `false`, changing nothing, otherwise.
    /// `project_id` is the unit's project as the caller saw it; it decides
    /// only how a batch of releases takes its projects' usage rows.
    pub async fn release_unit(
        &self,
        compute_id: &str,
        generation: i64,
        project_id: Option<&str>,
    ) -> Result<bool> {
        let release = UnitRelease {
            compute_id: compute_id.to_string(),
            generation,
            project_id: project_id.map(str::to_string),
        };
        match &self.unit_batches {
            Some(batches) => batches.release.call(Arc::new(release)).await,
            None => write_release(&self.write, Arc::new(release)).await,
        }
    }

    /// Begins a deallocation in one write: an ALLOCATED unit no instance
    /// holds (and `project_id`'s, when given) moves to DEALLOCATING with
    /// `deadline`, its CPUs still held. Answers the unit as moved, whose
    /// generation fences the release, or `None`, changing nothing, when
    /// the unit is in any other state: the caller then looks at it to say
    /// why, or to begin from another state.
    pub async fn begin_unit_release(
        &self,
        compute_id: &str,
        project_id: Option<&str>,
        deadline: &str,
    ) -> Result<Option<UnitRecord>> {
        let start = Arc::new(ReleaseStart {
            compute_id: compute_id.to_string(),
            project_id: project_id.map(str::to_string),
            deadline: deadline.to_string(),
        });
        let row = match &self.unit_batches {
            Some(batches) => batches.begin_release.call(start).await,
            None => write_release_start(&self.write, start).await,
        }?;
        row.as_ref().map(unit_from_row).transpose()
    }

    /// Every held CPU as `(host id, cpu)`, or only `host_id`'s.
    /// Each shared CPU of one host (or all): `(host, cpu, thousandths held)`.
    pub async fn cpu_shares(&self, host_id: Option<&str>) -> Result<Vec<(String, u32, u32)>> {
        // One host's on the primary key's lead column (no `OR $1 = ''`,
        // which would read every host's).
        let rows: Vec<(String, i64, i64)> = match host_id {
            Some(id) => {
                self.fetch_all(
                    "SELECT host_id, cpu, CAST(SUM(millis) AS BIGINT) AS millis FROM cpu_shares \
                     WHERE host_id = $1 GROUP BY host_id, cpu",
                    &[id.into()],
                )
                .await?
            }
            None => {
                self.fetch_all(
                    "SELECT host_id, cpu, CAST(SUM(millis) AS BIGINT) AS millis FROM cpu_shares \
                     GROUP BY host_id, cpu",
                    &[],
                )
                .await?
            }
        };
        rows.into_iter()
            .map(|(host, cpu, millis)| {
                let cpu = u32::try_from(cpu)
                    .ok()
                    .filter(|&c| c <= tessera_core::cpuset::MAX_CPU_ID)
                    .ok_or_else(|| StoreError::Corrupt(format!("cpu_shares.cpu {cpu}")))?;
                let millis = u32::try_from(millis)
                    .map_err(|_| StoreError::Corrupt(format!("cpu_shares.millis {millis}")))?;
                Ok((host, cpu, millis))
            })
            .collect()
    }

    pub async fn cpu_claims(&self, host_id: Option<&str>) -> Result<Vec<(String, u32)>> {
        let rows = match host_id {
            Some(id) => {
                self.fetch_rows(
                    "SELECT host_id, cpu FROM cpu_claims WHERE host_id = $1",
                    &[id.into()],
                    None,
                )
                .await?
            }
            None => {
                self.fetch_rows("SELECT host_id, cpu FROM cpu_claims", &[], None)
                    .await?
            }
        };
        rows.iter()
            .map(|r| {
                let cpu: i64 = r.try_get("cpu")?;
                let cpu = u32::try_from(cpu)
                    .ok()
                    .filter(|&c| c <= tessera_core::cpuset::MAX_CPU_ID)
                    .ok_or_else(|| StoreError::Corrupt(format!("cpu_claims.cpu {cpu}")))?;
                Ok((r.try_get("host_id")?, cpu))
            })
            .collect()
    }
}

struct OwnedClaim {
    compute_id: String,
    host_id: String,
    cpus: Vec<u32>,
    ssh_public_key: String,
    tags: Option<String>,
    deployment_id: Option<String>,
    deadline: String,
    project_id: String,
    /// `None` for [`ClaimQuota::NoOwnLimit`].
    quota: Option<crate::QuotaCheck>,
}

/// The claimed unit's row, as [`UNIT_SELECT`] reads it, or a refusal.
type ClaimOutcome = std::result::Result<Option<AnyRow>, crate::quotas::Refusal>;

/// A claim as one unit of work (see [`claim_unit`]).
async fn write_claim(
    writer: &Writer,
    claim: Arc<OwnedClaim>,
    shape: Shape,
) -> Result<Option<AnyRow>> {
    writer
        .write("claim_unit", shape, move |conn| {
            let claim = claim.clone();
            Box::pin(async move { claim_unit(conn, &claim).await })
        })
        .await?
        .map_err(StoreError::from)
}

async fn claim_unit(
    mut conn: Conn<'_>,
    claim: &OwnedClaim,
) -> Result<Commit<ClaimOutcome>, DbError> {
    if claim.cpus.is_empty() {
        // Only a corrupt unit has no CPUs; never hand it out.
        return Ok(Commit::Undo(Ok(None)));
    }
    let claimed = match conn.is_postgres() {
        true => claim_on_postgres(&mut conn, claim).await?,
        false => claim_on_sqlite(&mut conn, claim).await?,
    };
    let Some(row) = claimed else {
        return Ok(Commit::Undo(Ok(None)));
    };
    if let Some(quota) = &claim.quota
        && let Some(refused) = crate::quotas::enforce_written(&mut conn, quota).await?
    {
        return Ok(Commit::Undo(Err(refused)));
    }
    Ok(Commit::Keep(Ok(Some(row))))
}

/// Marks the unit ALLOCATING for the claim and takes its CPUs in the
/// ledger, if its host is READY and it is FREE (and, for
/// [`ClaimQuota::NoOwnLimit`], its project sets no limit of its own): its
/// row as claimed, or `None` (the caller undoes whatever was changed).
async fn claim_on_sqlite(
    conn: &mut Conn<'_>,
    claim: &OwnedClaim,
) -> Result<Option<AnyRow>, DbError> {
    // SQLite has one writer, so nothing can change between the host's
    // check and the commit.
    let status = conn
        .fetch_text(
            "SELECT status FROM hosts WHERE id = $1",
            &[(&claim.host_id).into()],
        )
        .await?;
    if status.as_deref() != Some("READY") {
        return Ok(None);
    }
    let unlimited = match claim.quota {
        Some(_) => String::new(),
        None => format!("AND {}", no_own_unit_limit("$8")),
    };
    let generation = conn
        .fetch_int(
            &format!(
                "UPDATE compute_units SET status = 'ALLOCATING', status_detail = NULL, \
                 ssh_public_key = $1, tags = $2, deployment_id = $3, started_at = $4, \
                 deadline = $5, updated_at = $4, generation = generation + 1, project_id = $8 \
                 WHERE compute_id = $6 AND host_id = $7 AND status = 'FREE' {unlimited} \
                 RETURNING generation"
            ),
            &claim_args(claim),
        )
        .await?;
    let Some(generation) = generation else {
        return Ok(None);
    };
    let values: Vec<String> = (0..claim.cpus.len())
        .map(|i| format!("($1, ${}, $2)", i + 3))
        .collect();
    let sql = format!(
        "INSERT INTO cpu_claims (host_id, cpu, holder) VALUES {} ON CONFLICT DO NOTHING",
        values.join(", ")
    );
    let mut args: Vec<Arg> = vec![
        (&claim.host_id).into(),
        holder(&claim.compute_id).as_str().into(),
    ];
    args.extend(claim.cpus.iter().map(|&cpu| Arg::from(i64::from(cpu))));
    let claimed = conn.execute(&sql, &args).await?;
    if claimed != claim.cpus.len() as u64 {
        return Ok(None);
    }
    let sql = format!("{UNIT_SELECT} WHERE u.compute_id = $1 AND u.generation = $2");
    let rows = conn
        .fetch_rows(&sql, &[(&claim.compute_id).into(), generation.into()])
        .await?;
    Ok(rows.into_iter().next())
}

/// [`claim_on_sqlite`] as one statement, one round trip: the host's row is
/// share-locked while READY (a decommission's update waits for the commit;
/// claims on one host do not wait for each other), the unit moves only if
/// FREE (and as [`claim_on_sqlite`] says for the project's own limits), and
/// the CPUs go into the ledger only if it moved. A CPU the ledger
/// already holds fails the whole statement on the ledger's key, changing
/// nothing: the claim lost, as when the unit was not FREE.
async fn claim_on_postgres(
    conn: &mut Conn<'_>,
    claim: &OwnedClaim,
) -> Result<Option<AnyRow>, DbError> {
    let cpus: Vec<String> = (0..claim.cpus.len())
        .map(|i| format!("(CAST(${} AS BIGINT))", i + 10))
        .collect();
    let sql = format!(
        "WITH host AS (SELECT 1 FROM hosts WHERE id = $7 AND status = 'READY' FOR SHARE), \
         unit AS (UPDATE compute_units SET status = 'ALLOCATING', status_detail = NULL, \
           ssh_public_key = $1, tags = $2, deployment_id = $3, started_at = $4, deadline = $5, \
           updated_at = $4, generation = generation + 1, project_id = $8 \
           WHERE compute_id = $6 AND host_id = $7 AND status = 'FREE' {} \
           AND EXISTS (SELECT 1 FROM host) RETURNING *), \
         claimed AS (INSERT INTO cpu_claims (host_id, cpu, holder) \
           SELECT $7, v.cpu, $9 FROM (VALUES {}) AS v (cpu) WHERE EXISTS (SELECT 1 FROM unit)) \
         SELECT unit.*, h.hostname, h.ip, h.region, h.zone FROM unit \
           JOIN hosts h ON h.id = unit.host_id",
        match claim.quota {
            Some(_) => String::new(),
            None => format!("AND {}", no_own_unit_limit("$8")),
        },
        cpus.join(", ")
    );
    let mut args = claim_args(claim);
    args.push(holder(&claim.compute_id).as_str().into());
    args.extend(claim.cpus.iter().map(|&cpu| Arg::from(i64::from(cpu))));
    match conn.fetch_rows(&sql, &args).await {
        Err(DbError::Sqlx(sqlx::Error::Database(db)))
            if db.code().as_deref() == Some("23505")
                && db.constraint() == Some("cpu_claims_pkey") =>
        {
            Ok(None)
        }
        other => Ok(other?.into_iter().next()),
    }
}

/// The first eight parameters of a claim's statements.
fn claim_args(claim: &OwnedClaim) -> Vec<Arg> {
    vec![
        (&claim.ssh_public_key).into(),
        claim.tags.as_ref().into(),
        claim.deployment_id.as_ref().into(),
        now().as_str().into(),
        (&claim.deadline).into(),
        (&claim.compute_id).into(),
        (&claim.host_id).into(),
        (&claim.project_id).into(),
    ]
}

async fn release_unit(
    mut conn: Conn<'_>,
    compute_id: &str,
    generation: i64,
) -> Result<Commit<bool>, DbError> {
    let at = now();
    if conn.is_postgres() {
        // One statement: whether the unit goes back to the pool depends on
        // its host, which must not change meanwhile (a shared lock, as for
        // claims); its CPUs leave the ledger only if it moved.
        let freed = conn
            .fetch_int(
                "WITH host AS (SELECT status FROM hosts WHERE id = \
                   (SELECT host_id FROM compute_units WHERE compute_id = $3) FOR SHARE), \
                 freed AS (UPDATE compute_units SET status = CASE WHEN EXISTS \
                   (SELECT 1 FROM host WHERE status = 'READY') THEN 'FREE' ELSE 'UNAVAILABLE' END, \
                   status_detail = NULL, ssh_public_key = NULL, tags = NULL, \
                   deployment_id = NULL, started_at = NULL, deadline = NULL, updated_at = $1, \
                   project_id = NULL, generation = generation + 1 \
                   WHERE compute_id = $3 AND generation = $4 AND status = 'DEALLOCATING' \
                   RETURNING 1), \
                 unclaimed AS (DELETE FROM cpu_claims WHERE holder = $2 \
                   AND EXISTS (SELECT 1 FROM freed)) \
                 SELECT COUNT(*) FROM freed",
                &[
                    (&at).into(),
                    holder(compute_id).as_str().into(),
                    compute_id.into(),
                    generation.into(),
                ],
            )
            .await?;
        return Ok(Commit::Keep(freed == Some(1)));
    }
    // SQLite has one writer: the host cannot change before the commit.
    let host_status = conn
        .fetch_text(
            "SELECT status FROM hosts WHERE id = \
             (SELECT host_id FROM compute_units WHERE compute_id = $1)",
            &[compute_id.into()],
        )
        .await?;
    let back_to = if host_status.as_deref() == Some("READY") {
        "FREE"
    } else {
        "UNAVAILABLE"
    };
    let freed = conn
        .execute(
            "UPDATE compute_units SET status = $1, status_detail = NULL, ssh_public_key = NULL, \
             tags = NULL, deployment_id = NULL, started_at = NULL, deadline = NULL, updated_at = $2, \
             project_id = NULL, \
             generation = generation + 1 \
             WHERE compute_id = $3 AND generation = $4 AND status = 'DEALLOCATING'",
            &[back_to.into(), (&at).into(), compute_id.into(), generation.into()],
        )
        .await?;
    if freed != 1 {
        return Ok(Commit::Undo(false));
    }
    conn.execute(
        "DELETE FROM cpu_claims WHERE holder = $1",
        &[holder(compute_id).as_str().into()],
    )
    .await?;
    Ok(Commit::Keep(true))
}

/// A unit's move from one of `from` to `to` ([`Store::transition_unit`]).
pub(crate) struct UnitStep {
    compute_id: String,
    generation: i64,
    from: Vec<&'static str>,
    to: &'static str,
    detail: Option<String>,
    deadline: Option<String>,
}

async fn write_step(writer: &Writer, step: Arc<UnitStep>) -> Result<Option<i64>> {
    let guard = status_guard("status", &step.from, 7);
    let sql = Arc::new(format!(
        "UPDATE compute_units SET status = $1, status_detail = $2, deadline = $3, \
         updated_at = $4, generation = generation + 1 \
         WHERE compute_id = $5 AND generation = $6 AND {guard} RETURNING generation"
    ));
    writer
        .write("transition_unit", Shape::OneStatement, move |mut conn| {
            let mut args: Vec<Arg> = vec![
                step.to.into(),
                step.detail.as_deref().into(),
                step.deadline.as_deref().into(),
                now().as_str().into(),
                step.compute_id.as_str().into(),
                step.generation.into(),
            ];
            args.extend(step.from.iter().map(|v| Arg::from(*v)));
            let sql = sql.clone();
            Box::pin(async move { Ok(Commit::Keep(conn.fetch_int(&sql, &args).await?)) })
        })
        .await
}

/// An ALLOCATED unit moving to DEALLOCATING ([`Store::begin_unit_release`]).
pub(crate) struct ReleaseStart {
    compute_id: String,
    /// Only this project's unit (`None`: anyone's).
    project_id: Option<String>,
    deadline: String,
}

/// The guard of [`Store::begin_unit_release`], `u` the unit, `project` the
/// caller's project or NULL.
fn release_start_guard(project: &str) -> String {
    format!(
        "u.status = 'ALLOCATED' AND u.instance_id IS NULL \
         AND ({project} IS NULL OR u.project_id = {project})"
    )
}

async fn write_release_start(writer: &Writer, start: Arc<ReleaseStart>) -> Result<Option<AnyRow>> {
    // On SQLite the move and the read back.
    let shape = writer.one_statement_on_postgres();
    writer
        .write("begin_unit_release", shape, move |mut conn| {
            let start = start.clone();
            Box::pin(async move {
                let args: Vec<Arg> = vec![
                    now().as_str().into(),
                    start.compute_id.as_str().into(),
                    start.project_id.as_deref().into(),
                    start.deadline.as_str().into(),
                ];
                let moved = format!(
                    "UPDATE compute_units AS u SET status = 'DEALLOCATING', status_detail = NULL, \
                     deadline = $4, updated_at = $1, generation = u.generation + 1 \
                     WHERE u.compute_id = $2 AND {}",
                    release_start_guard("CAST($3 AS TEXT)")
                );
                if conn.is_postgres() {
                    let sql = format!(
                        "WITH moved AS ({moved} RETURNING u.*) \
                         SELECT moved.*, h.hostname, h.ip, h.region, h.zone FROM moved \
                         JOIN hosts h ON h.id = moved.host_id"
                    );
                    let rows = conn.fetch_rows(&sql, &args).await?;
                    return Ok(Commit::Keep(rows.into_iter().next()));
                }
                // SQLite's RETURNING names no other table: the unit is read
                // back in the same transaction (one writer).
                let Some(generation) = conn
                    .fetch_int(&format!("{moved} RETURNING generation"), &args)
                    .await?
                else {
                    return Ok(Commit::Keep(None));
                };
                let sql = format!("{UNIT_SELECT} WHERE u.compute_id = $1 AND u.generation = $2");
                let rows = conn
                    .fetch_rows(&sql, &[start.compute_id.as_str().into(), generation.into()])
                    .await?;
                Ok(Commit::Keep(rows.into_iter().next()))
            })
        })
        .await
}

/// A DEALLOCATING unit going back to the pool ([`Store::release_unit`]).
pub(crate) struct UnitRelease {
    compute_id: String,
    generation: i64,
    /// The unit's project as its caller saw it (`None`: not known).
    project_id: Option<String>,
}

async fn write_release(writer: &Writer, release: Arc<UnitRelease>) -> Result<bool> {
    // See `release_unit`.
    let shape = writer.one_statement_on_postgres();
    writer
        .write("release_unit", shape, move |conn| {
            let release = release.clone();
            Box::pin(
                async move { release_unit(conn, &release.compute_id, release.generation).await },
            )
        })
        .await
}

/// The writes of a Kloigos allocation and release, each gathered with the
/// same writes of other requests into one statement on PostgreSQL (see
/// [`crate::batch`]). Each batch statement does for every call what the
/// call's own statement does, with the same guards.
pub(crate) struct UnitBatches {
    claim: Batcher<ClaimBatch>,
    transition: Batcher<StepBatch>,
    begin_release: Batcher<ReleaseStartBatch>,
    release: Batcher<ReleaseBatch>,
}

impl UnitBatches {
    pub(crate) fn start(pool: &crate::pg::PgPool) -> UnitBatches {
        let writer = Writer::Postgres(pool.clone());
        UnitBatches {
            claim: Batcher::start(ClaimBatch(writer.clone()), pool.clone()),
            transition: Batcher::start(StepBatch(writer.clone()), pool.clone()),
            begin_release: Batcher::start(ReleaseStartBatch(writer.clone()), pool.clone()),
            release: Batcher::start(ReleaseBatch(writer), pool.clone()),
        }
    }
}

/// Claims of [`ClaimQuota::NoOwnLimit`] (see [`claim_on_postgres`]).
struct ClaimBatch(Writer);

/// A batch's first step when it holds units of several projects:
/// [`crate::quotas::usage_rows_first`]. The usage trigger (migration 0028)
/// adds each claimed or released unit to its project's row when the
/// statement ends, so two batches of several projects could take those
/// rows in opposite orders and wait for each other until PostgreSQL's
/// deadlock check (a second, with every call of both kinds waiting behind
/// them). A batch of one project takes one row and cannot: it skips the
/// step, which costs a tenth of the batch.
fn usage_first(projects: &str) -> String {
    format!("{}, ", crate::quotas::usage_rows_first(projects))
}

/// [`claim_on_postgres`] for many claims: the hosts are share-locked while
/// READY, each unit moves only if FREE and its project sets no limit of its
/// own (as [`no_own_unit_limit`] reads it), and its CPUs enter the ledger
/// only if it moved. A CPU already held fails the whole statement.
fn claim_many(usage: &str) -> String {
    format!(
        "WITH input AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) AS i \
       (n BIGINT, compute_id TEXT, host_id TEXT, ssh_public_key TEXT, tags TEXT, \
        deployment_id TEXT, deadline TEXT, project_id TEXT, holder TEXT, cpus TEXT)), \
     {usage}\
     host AS (SELECT id FROM hosts WHERE id IN (SELECT host_id FROM input) \
       AND status = 'READY' FOR SHARE), \
     unit AS (UPDATE compute_units u SET status = 'ALLOCATING', status_detail = NULL, \
       ssh_public_key = i.ssh_public_key, tags = i.tags, deployment_id = i.deployment_id, \
       started_at = $2, deadline = i.deadline, updated_at = $2, \
       generation = u.generation + 1, project_id = i.project_id \
       FROM input i WHERE u.compute_id = i.compute_id AND u.host_id = i.host_id \
       AND u.status = 'FREE' AND u.host_id IN (SELECT id FROM host) \
       AND NOT EXISTS (SELECT 1 FROM project_quotas q WHERE q.project_id = i.project_id \
         AND (q.instances >= 0 OR q.vcpus >= 0)) \
       RETURNING i.n, i.holder, i.cpus, u.*), \
     claimed AS (INSERT INTO cpu_claims (host_id, cpu, holder) \
       SELECT unit.host_id, CAST(c.cpu AS BIGINT), unit.holder FROM unit \
       CROSS JOIN LATERAL unnest(string_to_array(unit.cpus, ',')) AS c (cpu)) \
     SELECT unit.*, h.hostname, h.ip, h.region, h.zone FROM unit \
       JOIN hosts h ON h.id = unit.host_id"
    )
}

/// [`claim_many`] for one project, then for several.
static CLAIM_MANY: LazyLock<[String; 2]> = LazyLock::new(|| {
    [
        claim_many(""),
        claim_many(&usage_first("SELECT project_id FROM input")),
    ]
});

impl Batch for ClaimBatch {
    type Input = OwnedClaim;
    type Answer = Option<AnyRow>;
    const WHAT: &'static str = "claim_unit";

    fn one(&self, claim: Arc<OwnedClaim>) -> BoxFuture<'static, Result<Option<AnyRow>>> {
        let writer = self.0.clone();
        Box::pin(async move { write_claim(&writer, claim, Shape::OneStatement).await })
    }

    fn many<'c>(
        &'c self,
        mut conn: Conn<'c>,
        claims: &'c [Arc<OwnedClaim>],
    ) -> BoxFuture<'c, std::result::Result<Vec<Option<AnyRow>>, DbError>> {
        Box::pin(async move {
            let inputs = claims.iter().map(|claim| {
                let cpus: Vec<String> = claim.cpus.iter().map(u32::to_string).collect();
                serde_json::json!({
                    "compute_id": claim.compute_id,
                    "host_id": claim.host_id,
                    "ssh_public_key": claim.ssh_public_key,
                    "tags": claim.tags,
                    "deployment_id": claim.deployment_id,
                    "deadline": claim.deadline,
                    "project_id": claim.project_id,
                    "holder": holder(&claim.compute_id),
                    "cpus": cpus.join(","),
                })
            });
            let several = claims.iter().any(|c| c.project_id != claims[0].project_id);
            let sql = &CLAIM_MANY[usize::from(several)];
            let rows = fetch_many(&mut conn, sql, inputs).await?;
            answers_by_index(rows, claims.len(), Ok)
        })
    }
}

/// Unit moves (see [`write_step`]).
struct StepBatch(Writer);

/// [`write_step`] for many moves; an empty `from` moves from any status.
const STEP_MANY: &str = "UPDATE compute_units u SET status = i.status, status_detail = i.detail, \
     deadline = i.deadline, updated_at = $2, generation = u.generation + 1 \
     FROM json_to_recordset(CAST($1 AS json)) AS i \
       (n BIGINT, compute_id TEXT, generation BIGINT, from_statuses TEXT, status TEXT, \
        detail TEXT, deadline TEXT) \
     WHERE u.compute_id = i.compute_id AND u.generation = i.generation \
     AND (i.from_statuses = '' OR u.status = ANY (string_to_array(i.from_statuses, ','))) \
     RETURNING i.n, u.generation";

impl Batch for StepBatch {
    type Input = UnitStep;
    type Answer = Option<i64>;
    const WHAT: &'static str = "transition_unit";

    fn one(&self, step: Arc<UnitStep>) -> BoxFuture<'static, Result<Option<i64>>> {
        let writer = self.0.clone();
        Box::pin(async move { write_step(&writer, step).await })
    }

    fn many<'c>(
        &'c self,
        mut conn: Conn<'c>,
        steps: &'c [Arc<UnitStep>],
    ) -> BoxFuture<'c, std::result::Result<Vec<Option<i64>>, DbError>> {
        Box::pin(async move {
            let inputs = steps.iter().map(|step| {
                serde_json::json!({
                    "compute_id": step.compute_id,
                    "generation": step.generation,
                    "from_statuses": step.from.join(","),
                    "status": step.to,
                    "detail": step.detail,
                    "deadline": step.deadline,
                })
            });
            let rows = fetch_many(&mut conn, STEP_MANY, inputs).await?;
            answers_by_index(rows, steps.len(), |row| row.try_get("generation"))
        })
    }
}

/// Deallocations beginning (see [`write_release_start`]).
struct ReleaseStartBatch(Writer);

/// [`write_release_start`]'s statement for many units.
static RELEASE_START_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) \
           AS i (n BIGINT, compute_id TEXT, project_id TEXT, deadline TEXT)), \
         moved AS (UPDATE compute_units u SET status = 'DEALLOCATING', status_detail = NULL, \
           deadline = i.deadline, updated_at = $2, generation = u.generation + 1 \
           FROM input i WHERE u.compute_id = i.compute_id AND {} RETURNING i.n, u.*) \
         SELECT moved.*, h.hostname, h.ip, h.region, h.zone FROM moved \
           JOIN hosts h ON h.id = moved.host_id",
        release_start_guard("i.project_id")
    )
});

impl Batch for ReleaseStartBatch {
    type Input = ReleaseStart;
    type Answer = Option<AnyRow>;
    const WHAT: &'static str = "begin_unit_release";

    fn one(&self, start: Arc<ReleaseStart>) -> BoxFuture<'static, Result<Option<AnyRow>>> {
        let writer = self.0.clone();
        Box::pin(async move { write_release_start(&writer, start).await })
    }

    fn many<'c>(
        &'c self,
        mut conn: Conn<'c>,
        starts: &'c [Arc<ReleaseStart>],
    ) -> BoxFuture<'c, std::result::Result<Vec<Option<AnyRow>>, DbError>> {
        Box::pin(async move {
            let inputs = starts.iter().map(|start| {
                serde_json::json!({
                    "compute_id": start.compute_id,
                    "project_id": start.project_id,
                    "deadline": start.deadline,
                })
            });
            let rows = fetch_many(&mut conn, &RELEASE_START_MANY, inputs).await?;
            answers_by_index(rows, starts.len(), Ok)
        })
    }
}

/// Releases (see [`release_unit`]).
struct ReleaseBatch(Writer);

/// [`release_unit`]'s statement for many units: each goes back FREE if its
/// host (share-locked) is READY, else UNAVAILABLE, and its CPUs leave the
/// ledger, if it is still DEALLOCATING at the caller's generation. With
/// several projects, [`usage_first`].
fn release_many(usage: &str) -> String {
    format!(
        "WITH input AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) \
       AS i (n BIGINT, compute_id TEXT, generation BIGINT, holder TEXT)), \
     {usage}\
     host AS (SELECT id, status FROM hosts WHERE id IN (SELECT u.host_id FROM compute_units u \
       JOIN input i ON u.compute_id = i.compute_id) FOR SHARE), \
     freed AS (UPDATE compute_units u SET status = CASE WHEN EXISTS (SELECT 1 FROM host \
         WHERE host.id = u.host_id AND host.status = 'READY') THEN 'FREE' ELSE 'UNAVAILABLE' END, \
       status_detail = NULL, ssh_public_key = NULL, tags = NULL, deployment_id = NULL, \
       started_at = NULL, deadline = NULL, updated_at = $2, project_id = NULL, \
       generation = u.generation + 1 \
       FROM input i WHERE u.compute_id = i.compute_id AND u.generation = i.generation \
       AND u.status = 'DEALLOCATING' RETURNING i.n, i.holder), \
     unclaimed AS (DELETE FROM cpu_claims c USING freed WHERE c.holder = freed.holder) \
     SELECT n FROM freed"
    )
}

/// [`release_many`] for one project, then for several.
static RELEASE_MANY: LazyLock<[String; 2]> = LazyLock::new(|| {
    [
        release_many(""),
        release_many(&usage_first(
            "SELECT u.project_id FROM compute_units u JOIN input i ON u.compute_id = i.compute_id \
             WHERE u.instance_id IS NULL",
        )),
    ]
});

impl Batch for ReleaseBatch {
    type Input = UnitRelease;
    type Answer = bool;
    const WHAT: &'static str = "release_unit";

    fn one(&self, release: Arc<UnitRelease>) -> BoxFuture<'static, Result<bool>> {
        let writer = self.0.clone();
        Box::pin(async move { write_release(&writer, release).await })
    }

    fn many<'c>(
        &'c self,
        mut conn: Conn<'c>,
        releases: &'c [Arc<UnitRelease>],
    ) -> BoxFuture<'c, std::result::Result<Vec<bool>, DbError>> {
        Box::pin(async move {
            let inputs = releases.iter().map(|release| {
                serde_json::json!({
                    "compute_id": release.compute_id,
                    "generation": release.generation,
                    "holder": holder(&release.compute_id),
                })
            });
            let several = releases
                .iter()
                .any(|r| r.project_id.is_none() || r.project_id != releases[0].project_id);
            let sql = &RELEASE_MANY[usize::from(several)];
            let rows = fetch_many(&mut conn, sql, inputs).await?;
            answered(rows, releases.len())
        })
    }
}
