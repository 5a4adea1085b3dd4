//! Balances and meters.
//!
//! A project's balance is the money put into it less what its resources
//! have cost. Each billable resource (an instance, a volume) has a meter
//! that accrues at its hourly price while it runs; the accrual is computed
//! from timestamps whenever it is read or the meter changes, so charges are
//! exact to the millisecond without a background job, and any replica reads
//! the same figure. Amounts are integers in millionths of the currency.

use crate::db::{Arg, Conn, DbError};
use crate::{Result, Store, now};

/// Now in milliseconds since the epoch, as meters count time.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What a meter has accrued since it last ran, at `$1` (ms): SQL.
const ACCRUED: &str = "CASE WHEN running_since IS NULL OR running_since > $1 THEN 0 \
     ELSE ($1 - running_since) * micros_per_hour / 3600000 END";

/// A project's balance (`$2`) at `$1` (ms): what was put in, what its
/// resources have cost, and what it is committed to per hour: its running
/// meters, those of instances being created, which start once they run,
/// and the Kloigos units being allocated to it, whose meters start once
/// they are ALLOCATED (each counted from the moment it is asked for, so
/// that deploys one after the other cannot each pass on the same money
/// while the earlier ones are still being made).
const BALANCE: &str = "SELECT \
     CAST(COALESCE((SELECT credit_micros FROM balances WHERE project_id = $2), 0) AS BIGINT), \
     CAST(COALESCE((SELECT spent_micros FROM balances WHERE project_id = $2), 0) \
        + COALESCE((SELECT SUM(charged_micros + {ACCRUED}) FROM meters \
        WHERE project_id = $2), 0) AS BIGINT), \
     CAST(COALESCE((SELECT SUM(micros_per_hour) FROM meters AS m WHERE m.project_id = $2 \
        AND (m.running_since IS NOT NULL OR (m.kind = 'instance' AND EXISTS (SELECT 1 \
        FROM instances AS i WHERE i.id = m.resource_id AND i.state = 'provisioning')))), 0) \
        + COALESCE((SELECT SUM(u.cpu_count) FROM compute_units AS u WHERE u.project_id = $2 \
        AND u.status = 'ALLOCATING' AND u.instance_id IS NULL), 0) \
        * COALESCE((SELECT p.micros_per_cpu_hour FROM unit_prices AS p WHERE p.id = 1), 0) \
        AS BIGINT)";

/// The meters that can never run again: stopped, of a terminated (or
/// forgotten) instance, a purged (or forgotten) volume, or a unit
/// allocation that ended (each allocation has its own). A stopped
/// instance's may run again, as may a volume in the trash.
const CLOSED_METER: &str = "m.running_since IS NULL AND (m.kind = 'unit' \
     OR (m.kind = 'instance' AND NOT EXISTS (SELECT 1 FROM instances AS i \
        WHERE i.id = m.resource_id AND i.state <> 'terminated')) \
     OR (m.kind = 'volume' AND NOT EXISTS (SELECT 1 FROM volumes AS v \
        WHERE v.id = m.resource_id AND v.purged_at IS NULL)))";

/// How many closed meters one statement folds, on PostgreSQL.
const FOLD_BATCH: i64 = 5000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    /// Everything ever put in.
    pub credit_micros: i64,
    /// Everything the project's resources have cost up to now.
    pub spent_micros: i64,
    /// What the project's running meters cost per hour now, with those of
    /// the instances it is creating.
    pub committed_micros_per_hour: i64,
}

/// A project whose balance does not cover an hour of what it is committed
/// to: its balance, and that hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FundsShort {
    pub balance_micros: i64,
    pub hourly_micros: i64,
}

fn balance_of(row: &[i64]) -> Balance {
    let at = |n: usize| row.get(n).copied().unwrap_or(0);
    Balance {
        credit_micros: at(0),
        spent_micros: at(1),
        committed_micros_per_hour: at(2),
    }
}

/// Whether `project_id`'s balance falls short of an hour of what it is
/// committed to, read in a write's transaction (after the write's own
/// meter went in).
pub(crate) async fn funds_short(
    conn: &mut Conn<'_>,
    project_id: &str,
) -> std::result::Result<Option<FundsShort>, DbError> {
    let sql = BALANCE.replace("{ACCRUED}", ACCRUED);
    let balance = balance_of(
        &conn
            .fetch_ints(&sql, &[now_ms().into(), project_id.into()])
            .await?,
    );
    Ok(
        (balance.amount_micros() < balance.committed_micros_per_hour).then_some(FundsShort {
            balance_micros: balance.amount_micros(),
            hourly_micros: balance.committed_micros_per_hour,
        }),
    )
}

impl Balance {
    pub fn amount_micros(&self) -> i64 {
        self.credit_micros - self.spent_micros
    }
}

impl Store {
    /// Adds money to a project's balance.
    pub async fn top_up(
        &self,
        id: &str,
        project_id: &str,
        amount_micros: i64,
        by: Option<&str>,
    ) -> Result<()> {
        let at = now();
        self.run_statements(
            "top_up",
            vec![
                (
                    "INSERT INTO balances (project_id, credit_micros, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (project_id) DO UPDATE SET \
                     credit_micros = balances.credit_micros + $2, updated_at = $3"
                        .into(),
                    vec![project_id.into(), amount_micros.into(), (&at).into()],
                ),
                (
                    "INSERT INTO balance_top_ups (id, project_id, amount_micros, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5)"
                        .into(),
                    vec![
                        id.into(),
                        project_id.into(),
                        amount_micros.into(),
                        by.into(),
                        at.into(),
                    ],
                ),
            ],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// The hourly price of a stopped instance of `project_id`'s (what a
    /// start adds to what the project runs); `None` for any other (one
    /// running, being made, gone, or not the project's).
    pub async fn stopped_instance_rate(
        &self,
        project_id: &str,
        instance_id: &str,
    ) -> Result<Option<i64>> {
        let row: Option<(i64,)> = self
            .fetch_optional(
                "SELECT m.micros_per_hour FROM meters m JOIN instances i ON i.id = m.resource_id \
                 WHERE m.resource_id = $1 AND m.project_id = $2 AND i.project_id = $2 \
                 AND i.state = 'stopped' AND m.running_since IS NULL",
                &[instance_id.into(), project_id.into()],
            )
            .await?;
        Ok(row.map(|(rate,)| rate))
    }

    /// Sets what a Kloigos unit costs per CPU and hour while allocated
    /// (migration 0052's `unit_prices`): each allocation's meter takes
    /// the price set when it starts.
    pub async fn set_unit_price(&self, micros_per_cpu_hour: i64) -> Result<()> {
        self.run_statements(
            "set_unit_price",
            vec![(
                "INSERT INTO unit_prices (id, micros_per_cpu_hour) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET micros_per_cpu_hour = excluded.micros_per_cpu_hour"
                    .into(),
                vec![micros_per_cpu_hour.into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Folds the meters that can never run again ([`CLOSED_METER`]) into
    /// their projects' balances (`spent_micros`, migration 0056) and
    /// deletes them, so a balance costs what its project has now, not
    /// everything it ever had. Each meter's charge moves in the
    /// transaction that deletes it. Answers how many balance rows took
    /// some (a project once per batch of meters).
    pub async fn fold_meters(&self) -> Result<u64> {
        let at = now();
        let mut folded = 0;
        if self.backend == crate::Backend::Sqlite {
            // One writer: the sum and the delete see the same meters.
            let counts = self
                .run_statements(
                    "fold_meters",
                    vec![
                        (
                            format!(
                                "INSERT INTO balances (project_id, credit_micros, spent_micros, \
                                 updated_at) SELECT m.project_id, 0, SUM(m.charged_micros), $1 \
                                 FROM meters AS m WHERE {CLOSED_METER} GROUP BY m.project_id \
                                 ON CONFLICT (project_id) DO UPDATE SET \
                                 spent_micros = balances.spent_micros + excluded.spent_micros"
                            ),
                            vec![(&at).into()],
                        ),
                        (
                            format!("DELETE FROM meters AS m WHERE {CLOSED_METER}"),
                            vec![],
                        ),
                    ],
                    |_| true,
                )
                .await?;
            return Ok(counts[0]);
        }
        // The meters deleted are those summed: the statement's own rows.
        loop {
            let counts = self
                .run_statements(
                    "fold_meters",
                    vec![(
                        format!(
                            "WITH closed AS (SELECT m.resource_id FROM meters AS m \
                             WHERE {CLOSED_METER} LIMIT $2), \
                             gone AS (DELETE FROM meters AS m USING closed AS c \
                             WHERE m.resource_id = c.resource_id AND m.running_since IS NULL \
                             RETURNING m.project_id, m.charged_micros) \
                             INSERT INTO balances (project_id, credit_micros, spent_micros, \
                             updated_at) SELECT project_id, 0, SUM(charged_micros), $1 \
                             FROM gone GROUP BY project_id \
                             ON CONFLICT (project_id) DO UPDATE SET \
                             spent_micros = balances.spent_micros + excluded.spent_micros"
                        ),
                        vec![(&at).into(), FOLD_BATCH.into()],
                    )],
                    |_| true,
                )
                .await?;
            if counts[0] == 0 {
                return Ok(folded);
            }
            folded += counts[0];
        }
    }

    /// Gives a meter, running from now, to each unit ALLOCATED to a
    /// tenant without one: those allocated before migration 0052 metered
    /// units (its triggers meter only allocations that start after it).
    /// Run at start, once the price is set; answers how many it metered.
    pub async fn meter_unmetered_units(&self) -> Result<u64> {
        let key = "'unit:' || u.compute_id || '@' || COALESCE(u.started_at, '')";
        let counts = self
            .run_statements(
                "meter_unmetered_units",
                vec![(
                    format!(
                        "INSERT INTO meters (resource_id, project_id, kind, micros_per_hour, \
                         running_since, charged_micros) \
                         SELECT {key}, u.project_id, 'unit', u.cpu_count * COALESCE((SELECT \
                         p.micros_per_cpu_hour FROM unit_prices AS p WHERE p.id = 1), 0), $1, 0 \
                         FROM compute_units AS u WHERE u.status = 'ALLOCATED' \
                         AND u.project_id IS NOT NULL AND u.instance_id IS NULL \
                         AND NOT EXISTS (SELECT 1 FROM meters AS m WHERE m.resource_id = {key}) \
                         ON CONFLICT (resource_id) DO NOTHING"
                    ),
                    vec![now_ms().into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0])
    }

    pub async fn balance(&self, project_id: &str) -> Result<Balance> {
        let sql = BALANCE.replace("{ACCRUED}", ACCRUED);
        let row: Option<(i64, i64, i64)> = self
            .fetch_optional(&sql, &[now_ms().into(), project_id.into()])
            .await?;
        let (credit, spent, hourly) = row.unwrap_or_default();
        Ok(balance_of(&[credit, spent, hourly]))
    }
}

/// A new meter for a resource: `running` starts it now.
pub(crate) fn meter_open(
    resource_id: &str,
    project_id: &str,
    kind: &str,
    micros_per_hour: i64,
    running: bool,
) -> (String, Vec<Arg>) {
    (
        "INSERT INTO meters (resource_id, project_id, kind, micros_per_hour, running_since, charged_micros) \
         VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (resource_id) DO NOTHING"
            .into(),
        vec![
            resource_id.into(),
            project_id.into(),
            kind.into(),
            micros_per_hour.into(),
            running.then(now_ms).into(),
        ],
    )
}

/// Books what a meter accrued so far and sets whether it runs on, and at
/// what hourly price (`None` keeps its price).
pub(crate) fn meter_set(
    resource_id: &str,
    running: bool,
    micros_per_hour: Option<i64>,
) -> (String, Vec<Arg>) {
    let at = now_ms();
    (
        format!(
            "UPDATE meters SET charged_micros = charged_micros + {ACCRUED}, \
             running_since = $2, micros_per_hour = COALESCE($3, micros_per_hour) \
             WHERE resource_id = $4"
        ),
        vec![
            at.into(),
            running.then_some(at).into(),
            micros_per_hour.into(),
            resource_id.into(),
        ],
    )
}

impl Store {
    /// The meters of live instances made with volumes of their own, with
    /// their hourly price and the instance's spec: `(instance id,
    /// micros per hour, spec)`. Such an instance's meter once counted its
    /// volumes' prices too (see `App::repair_instance_meters`).
    pub async fn meters_of_instances_made_with_volumes(
        &self,
    ) -> Result<Vec<(String, i64, String)>> {
        self.fetch_all_bulk(
            "SELECT m.resource_id, m.micros_per_hour, i.spec FROM meters AS m \
             JOIN instances AS i ON i.id = m.resource_id \
             WHERE m.kind = 'instance' AND i.state <> 'terminated' \
             AND i.spec LIKE '%\"volumes_made\":[\"%'",
            &[],
        )
        .await
    }

    /// Books what a meter accrued at its old price, and runs it on (or
    /// keeps it stopped) at `micros_per_hour`.
    pub async fn rerate_meter(&self, resource_id: &str, micros_per_hour: i64) -> Result<()> {
        let at = now_ms();
        self.run_statements(
            "rerate_meter",
            vec![(
                format!(
                    "UPDATE meters SET charged_micros = charged_micros + {ACCRUED}, \
                     running_since = CASE WHEN running_since IS NULL THEN NULL ELSE $1 END, \
                     micros_per_hour = $2 WHERE resource_id = $3"
                ),
                vec![at.into(), micros_per_hour.into(), resource_id.into()],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }
}
