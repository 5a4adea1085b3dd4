//! Balances and meters.
//!
//! A project's balance is the money put into it less what its resources
//! have cost. Each billable resource (an instance, a volume) has a meter
//! that accrues at its hourly price while it runs; the accrual is computed
//! from timestamps whenever it is read or the meter changes, so charges are
//! exact to the millisecond without a background job, and any replica reads
//! the same figure. Amounts are integers in millionths of the currency.

use crate::db::Arg;
use crate::{Result, Store, now};

/// Now in milliseconds since the epoch, as meters count time.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What a meter has accrued since it last ran, at `$1` (ms): SQL.
const ACCRUED: &str = "CASE WHEN running_since IS NULL OR running_since > $1 THEN 0 \
     ELSE ($1 - running_since) * micros_per_hour / 3600000 END";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Balance {
    /// Everything ever put in.
    pub credit_micros: i64,
    /// Everything the project's resources have cost up to now.
    pub spent_micros: i64,
    /// What the project's running meters cost per hour now.
    pub running_micros_per_hour: i64,
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

    pub async fn balance(&self, project_id: &str) -> Result<Balance> {
        #[derive(sqlx::FromRow)]
        struct Row {
            credit: i64,
            spent: i64,
            hourly: i64,
        }
        let row: Option<Row> = self
            .fetch_optional(
                &format!(
                    "SELECT \
                     CAST(COALESCE((SELECT credit_micros FROM balances WHERE project_id = $2), 0) AS BIGINT) AS credit, \
                     CAST(COALESCE((SELECT SUM(charged_micros + {ACCRUED}) FROM meters WHERE project_id = $2), 0) AS BIGINT) AS spent, \
                     CAST(COALESCE((SELECT SUM(micros_per_hour) FROM meters WHERE project_id = $2 AND running_since IS NOT NULL), 0) AS BIGINT) AS hourly"
                ),
                &[now_ms().into(), project_id.into()],
            )
            .await?;
        Ok(row.map_or(
            Balance {
                credit_micros: 0,
                spent_micros: 0,
                running_micros_per_hour: 0,
            },
            |r| Balance {
                credit_micros: r.credit,
                spent_micros: r.spent,
                running_micros_per_hour: r.hourly,
            },
        ))
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
