//! Per-project quotas: the limits a project has set (the rest come from the
//! configuration), what it uses, and the check that runs inside the very
//! transaction that would take more.
//!
//! The check is atomic across replicas: on PostgreSQL it first locks the
//! project's row (`SELECT ... FOR NO KEY UPDATE`), so two creations for one
//! project never both pass on the same free room; on SQLite the single
//! writer already runs them one after the other. What a project uses is
//! kept by the schema's triggers as its rows change (migration 0028), so a
//! check reads a few rows however many instances the project has.

use crate::db::{Arg, Conn, DbError};
use crate::{Result, Store, now};

pub use tessera_core::quota::{QuotaExceeded, QuotaOverrides, Usage};

/// A write's quota check: the project, the limits where it set none of
/// its own, and what the write adds. The project's own limits are read
/// inside the write's transaction (on PostgreSQL with the statement that
/// locks the project), so a check never runs on limits read before it.
#[derive(Clone, Debug)]
pub struct QuotaCheck {
    pub project_id: String,
    pub defaults: Usage,
    pub adds: Usage,
    /// Whether the project's balance must also cover an hour of all it
    /// runs or is creating, the write included ([`crate::billing`]),
    /// checked under the same lock: deploys racing one another cannot each
    /// pass on the same money.
    pub funds: bool,
}

/// Why a write checked by [`enforce_written`] was undone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Quota(QuotaExceeded),
    Funds(crate::billing::FundsShort),
}

impl From<Refusal> for crate::StoreError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Quota(exceeded) => crate::StoreError::QuotaExceeded(exceeded),
            Refusal::Funds(short) => crate::StoreError::InsufficientFunds(short),
        }
    }
}

/// A condition that holds once the statement's [`usage_rows_first`] has
/// taken every row: a common table expression that checks it runs after
/// them (PostgreSQL runs a data-modifying one only as it is read).
pub(crate) const AFTER_USAGE_ROWS: &str = "(SELECT COUNT(*) FROM usage) >= 0";

/// A common table expression, `usage`, that takes the usage rows of this
/// transaction's shard of the projects `projects` (a query of their ids),
/// in the projects' order, adding nothing: a row each, as its `RETURNING`.
/// A statement that writes usage takes the rows at its end, by trigger;
/// taking them first puts them before whatever else the statement locks.
///
/// A creation on PostgreSQL takes, in this order: its project's usage row,
/// then its addresses, then its subnets' address counts (migration 0047:
/// at the end of the statement that gives an address, or in
/// `take_address_unless_busy`, migration 0048). Its instance's statement
/// takes the usage row first, by this; without it the statement's
/// triggers took the subnet's count first when its address was given in
/// the statement, and the usage row first when it was not (the address
/// was then looked for after the statement): two creations of one
/// project, subnet and shard could each hold one row and wait for the
/// other's, until PostgreSQL's deadlock check a second later. An
/// instance's end takes its usage row (the state's statement) before
/// freeing its address, in the same order.
pub(crate) fn usage_rows_first(projects: &str) -> String {
    format!(
        "usage AS (INSERT INTO project_usage (project_id, shard, instances, vcpus, memory_mb, \
           volumes, volume_gb, containers, ssh_keys) \
         SELECT DISTINCT p.project_id, CAST(mod(txid_current(), 16) AS INTEGER), \
           0, 0, 0, 0, 0, 0, 0 FROM ({projects}) AS p WHERE p.project_id IS NOT NULL \
         ORDER BY 1 \
         ON CONFLICT (project_id, shard) DO UPDATE SET instances = project_usage.instances \
         RETURNING 1)"
    )
}

/// What a project uses, as the store keeps it (migration 0028: the sum of
/// the project's rows in `project_usage`, changed by trigger whenever an
/// instance, unit, volume, container or key is): a few rows, however much
/// the project has.
const USAGE: &str = "SELECT \
     CAST(COALESCE(SUM(instances), 0) AS BIGINT), CAST(COALESCE(SUM(vcpus), 0) AS BIGINT), \
     CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT), CAST(COALESCE(SUM(volumes), 0) AS BIGINT), \
     CAST(COALESCE(SUM(volume_gb), 0) AS BIGINT), CAST(COALESCE(SUM(containers), 0) AS BIGINT), \
     CAST(COALESCE(SUM(ssh_keys), 0) AS BIGINT) \
     FROM project_usage WHERE project_id = $1";

/// What a project uses, counted from its rows: what `project_usage` keeps.
/// Instances that are not terminated (and the Kloigos units it holds, as
/// instances of their CPU count; a unit an instance holds is that
/// instance's), volumes not yet purged (the trash holds storage), OS
/// volumes too, the containers among its live instances, and its SSH keys.
const COUNTED: &str = "SELECT \
     (SELECT COUNT(*) FROM instances WHERE project_id = $1 AND state <> 'terminated') \
     + (SELECT COUNT(*) FROM compute_units WHERE project_id = $1 AND instance_id IS NULL), \
     (SELECT CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) FROM instances \
      WHERE project_id = $1 AND state <> 'terminated') \
     + (SELECT CAST(COALESCE(SUM(cpu_count), 0) AS BIGINT) FROM compute_units \
        WHERE project_id = $1 AND instance_id IS NULL), \
     (SELECT CAST(COALESCE(SUM(memory_mb), 0) AS BIGINT) FROM instances \
      WHERE project_id = $1 AND state <> 'terminated'), \
     (SELECT COUNT(*) FROM volumes WHERE project_id = $1 AND purged_at IS NULL), \
     (SELECT CAST(COALESCE(SUM(size_gb), 0) AS BIGINT) FROM volumes \
      WHERE project_id = $1 AND purged_at IS NULL), \
     (SELECT COUNT(*) FROM containers c JOIN instances i ON i.id = c.id \
      WHERE c.project_id = $1 AND i.state <> 'terminated'), \
     (SELECT COUNT(*) FROM ssh_keys WHERE project_id = $1)";

fn usage_of(row: &[i64]) -> Usage {
    let at = |n: usize| row.get(n).copied().unwrap_or(0);
    Usage {
        instances: at(0),
        vcpus: at(1),
        memory_mb: at(2),
        volumes: at(3),
        volume_gb: at(4),
        containers: at(5),
        ssh_keys: at(6),
    }
}

/// A row of the project's seven own limits (NULL: none set), then the
/// seven counts of what it uses, as both stores' reads answer it.
fn limits_and_counts(row: &sqlx::any::AnyRow) -> std::result::Result<(LimitsRow, Usage), DbError> {
    let column = |n: usize| sqlx::Row::try_get::<Option<i64>, _>(row, n);
    let own = (
        column(0)?,
        column(1)?,
        column(2)?,
        column(3)?,
        column(4)?,
        column(5)?,
        column(6)?,
    );
    let mut used = Vec::with_capacity(7);
    for n in 7..14 {
        used.push(column(n)?.unwrap_or(0));
    }
    Ok((own, usage_of(&used)))
}

/// Locks a project's row (on PostgreSQL) for a write that counts what the
/// project has before adding to it. `NO KEY UPDATE`: the writes that count
/// wait for one another, but not the rows that merely refer to the project
/// (a foreign key's check takes `KEY SHARE`), so another creation's own
/// rows go in while this one holds the lock.
pub(crate) const LOCK_PROJECT: &str = "SELECT id FROM projects WHERE id = $1 FOR NO KEY UPDATE";

/// [`LOCK_PROJECT`] answering the limits the project set for itself and,
/// read once the lock is held, what it uses, in the same round trip
/// (PostgreSQL's migration 0042): the seven limits, then the seven
/// counts; no row when there is no such project.
const LOCK_PROJECT_WITH_USAGE: &str = "SELECT * FROM lock_project_usage($1)";

/// The limits a project set for itself.
const OWN_LIMITS: &str = "SELECT instances, vcpus, memory_mb, volumes, volume_gb, containers, \
     ssh_keys FROM project_quotas WHERE project_id = $1";

type LimitsRow = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

fn overrides_of(row: Option<LimitsRow>) -> QuotaOverrides {
    row.map(
        |(instances, vcpus, memory_mb, volumes, volume_gb, containers, ssh_keys)| QuotaOverrides {
            instances,
            vcpus,
            memory_mb,
            volumes,
            volume_gb,
            containers,
            ssh_keys,
        },
    )
    .unwrap_or_default()
}

/// The limits that apply to the check's project and, unless nothing the
/// write adds is limited, what the project uses: read in the write's
/// transaction. On PostgreSQL one call locks the project, then reads its
/// limits and, once the lock is held, its usage (migration 0042); on
/// SQLite, whose one writer runs the checks one after the other, both are
/// one statement.
async fn limits_and_usage(
    conn: &mut Conn<'_>,
    check: &QuotaCheck,
) -> std::result::Result<Option<(Usage, Usage)>, DbError> {
    let project = [Arg::from(&check.project_id)];
    // The project's own limits, and on SQLite its usage with them.
    let (own, used) = if conn.is_postgres() {
        // Where the configuration bounds nothing this write adds, only the
        // project's own limits could: read them first, without a lock, and
        // lock nothing when they bound nothing either (and the balance is
        // not checked, which needs the lock). Creations of a project
        // without limits then never wait for one another. A limit set while
        // this write runs binds the writes after it; a check running
        // beside this write does not count it, so the writes under way may
        // take the project past the new limit, as a limit set below what a
        // project uses does.
        if !check.funds && check.unbounded_under(&check.defaults) {
            let own = conn
                .fetch_rows(OWN_LIMITS, &project)
                .await?
                .first()
                .map(<LimitsRow as sqlx::FromRow<'_, sqlx::any::AnyRow>>::from_row)
                .transpose()?;
            if check.unbounded_under(&check.limits(&overrides_of(own))) {
                return Ok(None);
            }
        }
        let rows = conn.fetch_rows(LOCK_PROJECT_WITH_USAGE, &project).await?;
        match rows.first() {
            Some(row) => {
                let (own, used) = limits_and_counts(row)?;
                (Some(own), Some(used))
            }
            None => (None, None),
        }
    } else {
        // The limits first, as PostgreSQL's function answers them.
        let sql = format!(
            "SELECT own.*, used.* FROM ({USAGE}) AS used LEFT JOIN ({OWN_LIMITS}) AS own ON 1 = 1"
        );
        let columns = conn.fetch_rows(&sql, &project).await?;
        let Some(row) = columns.first() else {
            return Ok(None);
        };
        let (own, used) = limits_and_counts(row)?;
        (Some(own), Some(used))
    };
    let limits = check.limits(&overrides_of(own));
    if check.unbounded_under(&limits) {
        return Ok(None);
    }
    let used = match used {
        Some(used) => used,
        None => usage_of(&conn.fetch_ints(USAGE, &project).await?),
    };
    Ok(Some((limits, used)))
}

/// Runs a write's quota check inside its transaction, before the write's
/// own changes: `Some` names the limit it would go over (the caller then
/// undoes its write). The project stays locked until the commit, unless no
/// limit applied to what the write adds.
pub(crate) async fn enforce(
    conn: &mut Conn<'_>,
    check: &QuotaCheck,
) -> std::result::Result<Option<QuotaExceeded>, DbError> {
    Ok(limits_and_usage(conn, check)
        .await?
        .and_then(|(limits, used)| check.exceeded(&limits, &used)))
}

/// Runs a write's quota check inside its transaction, after the write's
/// own changes and last before its commit: what the project uses then
/// counts them already (the triggers of migration 0028), and it is over a
/// limit when that is. On PostgreSQL the project's lock is taken here, so
/// it is held from this statement to the commit alone, not through the
/// write: creations of one project wait for one another only that long.
/// Each reads, once it holds the lock, what every write checked before it
/// committed (a statement of READ COMMITTED sees what committed before it
/// began); a write not yet checked counts itself when it is.
pub(crate) async fn enforce_written(
    conn: &mut Conn<'_>,
    check: &QuotaCheck,
) -> std::result::Result<Option<Refusal>, DbError> {
    if let Some((limits, after)) = limits_and_usage(conn, check).await? {
        let adds = &check.adds;
        let before = Usage {
            instances: after.instances - adds.instances,
            vcpus: after.vcpus - adds.vcpus,
            memory_mb: after.memory_mb - adds.memory_mb,
            volumes: after.volumes - adds.volumes,
            volume_gb: after.volume_gb - adds.volume_gb,
            containers: after.containers - adds.containers,
            ssh_keys: after.ssh_keys - adds.ssh_keys,
        };
        if let Some(exceeded) = check.exceeded(&limits, &before) {
            return Ok(Some(Refusal::Quota(exceeded)));
        }
    }
    // The project is locked now (on PostgreSQL by the limits' read; on
    // SQLite by its one writer), and the write's meter is in.
    if check.funds
        && let Some(short) = crate::billing::funds_short(conn, &check.project_id).await?
    {
        return Ok(Some(Refusal::Funds(short)));
    }
    Ok(None)
}

impl QuotaCheck {
    /// The limits that apply, given those the project set for itself.
    pub fn limits(&self, own: &QuotaOverrides) -> Usage {
        own.over(&self.defaults)
    }

    /// Whether nothing the write adds has a limit under `limits` (so
    /// nothing is counted).
    pub fn unbounded_under(&self, limits: &Usage) -> bool {
        limits
            .items()
            .into_iter()
            .zip(self.adds.items())
            .all(|((_, limit), (_, asked))| limit < 0 || asked <= 0)
    }

    /// The first of `limits` that `used` plus what the write adds goes
    /// over.
    pub fn exceeded(&self, limits: &Usage, used: &Usage) -> Option<QuotaExceeded> {
        limits
            .items()
            .into_iter()
            .zip(used.items().into_iter().zip(self.adds.items()))
            .find(|((_, limit), ((_, used), (_, asked)))| {
                *asked > 0 && *limit >= 0 && used + asked > *limit
            })
            .map(
                |((resource, limit), ((_, used), (_, asked)))| QuotaExceeded {
                    resource,
                    limit,
                    used,
                    requested: asked,
                },
            )
    }
}

impl Store {
    /// The limits a project has set, if it has any.
    pub async fn project_quota(&self, project_id: &str) -> Result<QuotaOverrides> {
        let row: Option<LimitsRow> = self
            .fetch_optional(OWN_LIMITS, &[project_id.into()])
            .await?;
        Ok(overrides_of(row))
    }

    /// Sets a project's own limits (`None`: the default).
    pub async fn set_project_quota(&self, project_id: &str, quota: &QuotaOverrides) -> Result<()> {
        self.run_statements(
            "set_project_quota",
            vec![(
                "INSERT INTO project_quotas (project_id, instances, vcpus, memory_mb, volumes, \
                 volume_gb, containers, ssh_keys, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (project_id) DO UPDATE SET instances = $2, vcpus = $3, \
                 memory_mb = $4, volumes = $5, volume_gb = $6, containers = $7, ssh_keys = $8, \
                 updated_at = $9"
                    .into(),
                vec![
                    project_id.into(),
                    quota.instances.into(),
                    quota.vcpus.into(),
                    quota.memory_mb.into(),
                    quota.volumes.into(),
                    quota.volume_gb.into(),
                    quota.containers.into(),
                    quota.ssh_keys.into(),
                    now().into(),
                ],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// What a project uses now.
    pub async fn project_usage(&self, project_id: &str) -> Result<Usage> {
        let row: Option<(i64, i64, i64, i64, i64, i64, i64)> =
            self.fetch_optional(USAGE, &[project_id.into()]).await?;
        let (a, b, c, d, e, f, g) = row.unwrap_or_default();
        Ok(usage_of(&[a, b, c, d, e, f, g]))
    }

    /// What a project uses as the store keeps it, and as counted from
    /// every row it has, read together (one statement, one snapshot): the
    /// two agree, and checks of that (the tests, an operator's doubt)
    /// compare them.
    pub async fn project_usage_audit(&self, project_id: &str) -> Result<(Usage, Usage)> {
        let sql = format!("SELECT * FROM ({USAGE}) AS kept CROSS JOIN ({COUNTED}) AS counted");
        let rows = self.fetch_rows(&sql, &[project_id.into()], Some(1)).await?;
        let row = match rows.first() {
            Some(row) => (0..14)
                .map(|i| sqlx::Row::try_get::<i64, _>(row, i))
                .collect::<std::result::Result<Vec<i64>, _>>()?,
            None => vec![0; 14],
        };
        Ok((usage_of(&row), usage_of(row.get(7..).unwrap_or_default())))
    }
}
