//! The writes of an instance's creation after its request is answered,
//! gathered across creations into one statement on PostgreSQL (see
//! [`crate::batch`]): its placement on a pooled host's CPUs and the end of
//! its operation. Each is a durable commit of its own when alone; with
//! many creations under way, a batch shares one statement and one commit.
//! Each batch statement does for every call what the call's own statement
//! does, with the same guards; a batch refused as a whole (a CPU, a host or
//! memory gone to another placement) runs again call by call, so that each
//! call hears only of its own refusal.

use crate::Result;
use crate::batch::{Batch, Batcher, answers_by_index, fetch_many};
use crate::db::{Conn, DbError};
use crate::writer::{Commit, Shape, Writer};
use futures::future::BoxFuture;
use sqlx::Row;
use std::sync::Arc;

/// The SQLSTATE of a placement migration 0043's function refused.
const CLAIM_REFUSED: &str = "TS001";

/// The two batched writes, started with the store on PostgreSQL.
pub(crate) struct InstanceBatches {
    pub(crate) place: Batcher<PlaceBatch>,
    pub(crate) settle: Batcher<SettleBatch>,
}

impl InstanceBatches {
    pub(crate) fn start(pool: &crate::pg::PgPool) -> InstanceBatches {
        let writer = Writer::Postgres(pool.clone());
        InstanceBatches {
            place: Batcher::start(PlaceBatch(writer.clone()), pool.clone()),
            settle: Batcher::start(SettleBatch(writer), pool.clone()),
        }
    }
}

/// A new instance placed on whole CPUs of a pooled host, with its
/// operation's progress: migration 0043's `claim_instance_cpus` arguments.
#[derive(Debug)]
pub(crate) struct Placement {
    pub(crate) operation: String,
    pub(crate) owner: String,
    pub(crate) steps: String,
    pub(crate) lease_until: String,
    pub(crate) instance: String,
    pub(crate) host: String,
    pub(crate) cpu_list: String,
    pub(crate) holder: String,
    /// The CPUs, comma-separated.
    pub(crate) cpus: String,
}

/// Runs one placement as its own statement: `true` when the CPUs are the
/// instance's; `false`, changing nothing, when refused or the operation is
/// no longer the caller's.
pub(crate) async fn place_alone(writer: &Writer, placement: Arc<Placement>) -> Result<bool> {
    writer
        .write(
            "claim_instance_cpus",
            Shape::OneStatement,
            move |mut conn| {
                let p = placement.clone();
                Box::pin(async move {
                    let claimed = conn
                        .fetch_int(
                            "SELECT claim_instance_cpus($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                            &[
                                p.operation.as_str().into(),
                                p.owner.as_str().into(),
                                p.steps.as_str().into(),
                                p.lease_until.as_str().into(),
                                crate::now().into(),
                                p.instance.as_str().into(),
                                p.host.as_str().into(),
                                p.cpu_list.as_str().into(),
                                p.holder.as_str().into(),
                                p.cpus.as_str().into(),
                            ],
                        )
                        .await;
                    match claimed {
                        Ok(claimed) => Ok(Commit::Keep(claimed == Some(1))),
                        // Refused, the statement undone.
                        Err(DbError::Sqlx(sqlx::Error::Database(db)))
                            if db.code().as_deref() == Some(CLAIM_REFUSED) =>
                        {
                            Ok(Commit::Undo(false))
                        }
                        Err(err) => Err(err),
                    }
                })
            },
        )
        .await
}

/// Placements (see [`place_alone`]).
pub(crate) struct PlaceBatch(Writer);

/// [`place_alone`] for many placements: the function once per placement,
/// in the order of their hosts, so that two batches (of two replicas) take
/// the hosts' locks in one order. Each call's statements see the calls
/// before it in the batch, so two placements on one host are checked
/// against its memory together. Any refusal fails the whole statement.
const PLACE_MANY: &str = "SELECT i.n, claim_instance_cpus(i.operation, i.owner, i.steps, \
       i.lease_until, $2, i.instance, i.host, i.cpu_list, i.holder, i.cpus) AS claimed \
     FROM (SELECT * FROM json_to_recordset(CAST($1 AS json)) AS j (n BIGINT, operation TEXT, \
       owner TEXT, steps TEXT, lease_until TEXT, instance TEXT, host TEXT, cpu_list TEXT, \
       holder TEXT, cpus TEXT) ORDER BY j.host, j.n) AS i";

impl Batch for PlaceBatch {
    type Input = Placement;
    type Answer = bool;
    const WHAT: &'static str = "claim_instance_cpus";

    fn one(&self, placement: Arc<Placement>) -> BoxFuture<'static, Result<bool>> {
        let writer = self.0.clone();
        Box::pin(async move { place_alone(&writer, placement).await })
    }

    fn many<'c>(
        &'c self,
        mut conn: Conn<'c>,
        placements: &'c [Arc<Placement>],
    ) -> BoxFuture<'c, std::result::Result<Vec<bool>, DbError>> {
        Box::pin(async move {
            let inputs = placements.iter().map(|p| {
                serde_json::json!({
                    "operation": p.operation,
                    "owner": p.owner,
                    "steps": p.steps,
                    "lease_until": p.lease_until,
                    "instance": p.instance,
                    "host": p.host,
                    "cpu_list": p.cpu_list,
                    "holder": p.holder,
                    "cpus": p.cpus,
                })
            });
            let rows = fetch_many(&mut conn, PLACE_MANY, inputs).await?;
            let claimed = answers_by_index(rows, placements.len(), |row| {
                row.try_get::<i64, _>("claimed")
            })?;
            Ok(claimed.into_iter().map(|c| c == Some(1)).collect())
        })
    }
}

/// An instance's operation ending with the instance in a state other than
/// terminated and its CPUs kept: the operation's end, the instance's new
/// state and its meter, written only if the operation was still running
/// and the caller's.
#[derive(Debug)]
pub(crate) struct Settlement {
    pub(crate) operation: String,
    pub(crate) owner: String,
    pub(crate) status: String,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) instance: String,
    pub(crate) state: String,
    pub(crate) state_detail: Option<String>,
    pub(crate) private_ip: Option<String>,
    pub(crate) ssh_endpoint: Option<String>,
    pub(crate) cause: Option<String>,
    /// Whether the meter runs from now on.
    pub(crate) running: bool,
    /// Now, in milliseconds, for the meter.
    pub(crate) at_ms: i64,
    /// The call's own statement (the guarded statement
    /// [`crate::Store::settle_instances`] runs alone).
    pub(crate) alone: (String, Vec<crate::db::Arg>),
}

/// Runs one settlement as its own statement: `false` when the operation had
/// already ended or is not the caller's.
pub(crate) async fn settle_alone(writer: &Writer, settlement: Arc<Settlement>) -> Result<bool> {
    let counts = writer
        .write("settle_instances", Shape::OneStatement, move |mut conn| {
            let settlement = settlement.clone();
            Box::pin(async move {
                let (sql, args) = &settlement.alone;
                Ok(Commit::Keep(conn.fetch_ints(sql, args).await?))
            })
        })
        .await?;
    Ok(counts.first() == Some(&1))
}

/// Settlements (see [`settle_alone`]).
pub(crate) struct SettleBatch(Writer);

/// [`settle_alone`] for many: the instance and its meter change only with
/// their operation's end, as the guarded statement has them.
static SETTLE_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let accrued = "CASE WHEN m.running_since IS NULL OR m.running_since > e.at_ms THEN 0 \
         ELSE (e.at_ms - m.running_since) * m.micros_per_hour / 3600000 END";
    format!(
        "WITH input AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) AS i (n BIGINT, \
           operation TEXT, owner TEXT, status TEXT, result TEXT, error TEXT, instance TEXT, \
           state TEXT, state_detail TEXT, private_ip TEXT, ssh_endpoint TEXT, cause TEXT, \
           running BOOLEAN, at_ms BIGINT)), \
         ended AS (UPDATE operations o SET status = i.status, result = i.result, \
           error = i.error, lease_until = NULL, updated_at = $2 FROM input i \
           WHERE o.id = i.operation AND o.status = 'running' AND o.lease_owner = i.owner \
           RETURNING i.*), \
         set AS (UPDATE instances t SET state = e.state, state_detail = e.state_detail, \
           private_ip = COALESCE(e.private_ip, t.private_ip), operation_id = NULL, \
           updated_at = $2, generation = t.generation + 1, \
           ssh_endpoint = COALESCE(e.ssh_endpoint, t.ssh_endpoint), end_cause = e.cause \
           FROM ended e WHERE t.id = e.instance RETURNING 1), \
         metered AS (UPDATE meters m SET charged_micros = m.charged_micros + {accrued}, \
           running_since = CASE WHEN e.running THEN e.at_ms END \
           FROM ended e WHERE m.resource_id = e.instance RETURNING 1) \
         SELECT n FROM ended"
    )
});

impl Batch for SettleBatch {
    type Input = Settlement;
    type Answer = bool;
    const WHAT: &'static str = "settle_instances";

    fn one(&self, settlement: Arc<Settlement>) -> BoxFuture<'static, Result<bool>> {
        let writer = self.0.clone();
        Box::pin(async move { settle_alone(&writer, settlement).await })
    }

    fn many<'c>(
        &'c self,
        mut conn: Conn<'c>,
        settlements: &'c [Arc<Settlement>],
    ) -> BoxFuture<'c, std::result::Result<Vec<bool>, DbError>> {
        Box::pin(async move {
            let inputs = settlements.iter().map(|s| {
                serde_json::json!({
                    "operation": s.operation,
                    "owner": s.owner,
                    "status": s.status,
                    "result": s.result,
                    "error": s.error,
                    "instance": s.instance,
                    "state": s.state,
                    "state_detail": s.state_detail,
                    "private_ip": s.private_ip,
                    "ssh_endpoint": s.ssh_endpoint,
                    "cause": s.cause,
                    "running": s.running,
                    "at_ms": s.at_ms,
                })
            });
            let rows = fetch_many(&mut conn, &SETTLE_MANY, inputs).await?;
            let ended = answers_by_index(rows, settlements.len(), |_| Ok(()))?;
            Ok(ended.into_iter().map(|e| e.is_some()).collect())
        })
    }
}
