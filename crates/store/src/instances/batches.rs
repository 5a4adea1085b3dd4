//! The writes of an instance's creation, gathered across creations into
//! one statement on PostgreSQL (see [`crate::batch`]): its record (the
//! instance, its operation, meter, labels, address and groups, checked
//! against its project's quota), its placement on a pooled host's CPUs and
//! the end of its operation; and of its deletion (or stop, or start): its
//! operation's beginning and its end. Each is a durable commit of its own when
//! alone; with many creations under way, a batch shares one statement (the
//! record: one transaction) and one commit. Each batch does for every call
//! what the call does alone, with the same guards; a batch refused as a
//! whole (a CPU, a host or memory gone to another placement; an address
//! another replica took; a quota or balance the batch together would
//! exceed) runs again call by call, so that each call hears only of its
//! own refusal.

use super::{InstanceRecord, InstancesAdded, NewInstance};
use crate::batch::{Batch, Batcher, answered, answers_by_index, fetch_many};
use crate::db::{Conn, DbError};
use crate::operations::NewOperation;
use crate::writer::{Commit, Shape, Writer};
use crate::{OperationRecord, QuotaCheck, Result};
use futures::future::BoxFuture;
use sqlx::Row;
use std::sync::Arc;

/// The SQLSTATE of a placement migration 0043's function refused.
const CLAIM_REFUSED: &str = "TS001";

/// The batched writes of a creation, started with the store on PostgreSQL.
pub(crate) struct InstanceBatches {
    pub(crate) create: Batcher<CreateBatch>,
    pub(crate) place: Batcher<PlaceBatch>,
    pub(crate) settle: Batcher<SettleBatch>,
    pub(crate) terminate: Batcher<TerminateBatch>,
    pub(crate) begin: Batcher<BeginBatch>,
}

impl InstanceBatches {
    pub(crate) fn start(pool: &crate::pg::PgPool) -> InstanceBatches {
        let writer = Writer::Postgres(pool.clone());
        InstanceBatches {
            create: Batcher::start(CreateBatch(writer.clone()), pool.clone()),
            place: Batcher::start(PlaceBatch(writer.clone()), pool.clone()),
            settle: Batcher::start(SettleBatch(writer.clone()), pool.clone()),
            terminate: Batcher::start(TerminateBatch(writer.clone()), pool.clone()),
            begin: Batcher::start(BeginBatch(writer), pool.clone()),
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

/// How an instance's operation ends, as a batch gets it: the operation's
/// end, written only if the operation was still running and `owner`'s, and
/// the instance's last state.
#[derive(Debug)]
pub(crate) struct InstanceEnd {
    operation: String,
    owner: String,
    status: String,
    result: Option<String>,
    error: Option<String>,
    instance: String,
    state: String,
    state_detail: Option<String>,
    private_ip: Option<String>,
    ssh_endpoint: Option<String>,
    cause: Option<String>,
    /// Now, in milliseconds, for the meter.
    at_ms: i64,
}

impl InstanceEnd {
    pub(crate) fn new(
        end: &crate::OperationEnd<'_>,
        owner: &str,
        instance: &str,
        update: &crate::InstanceUpdate,
    ) -> InstanceEnd {
        InstanceEnd {
            operation: end.id.to_string(),
            owner: owner.to_string(),
            status: end.status.as_str().to_string(),
            result: end.result.map(|r| r.to_string()),
            error: end.error.map(str::to_string),
            instance: instance.to_string(),
            state: update.state.as_str().to_string(),
            state_detail: update.state_detail.clone(),
            private_ip: update.private_ip.clone(),
            ssh_endpoint: update.ssh_endpoint.clone(),
            cause: update.cause.map(|c| c.as_str().to_string()),
            at_ms: crate::billing::now_ms(),
        }
    }

    /// Its inputs to a batch's statement.
    fn input(&self) -> serde_json::Value {
        serde_json::json!({
            "operation": self.operation,
            "owner": self.owner,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "instance": self.instance,
            "state": self.state,
            "state_detail": self.state_detail,
            "private_ip": self.private_ip,
            "ssh_endpoint": self.ssh_endpoint,
            "cause": self.cause,
            "at_ms": self.at_ms,
        })
    }
}

/// An instance's operation ending with the instance in a state other than
/// terminated and its CPUs kept: the operation's end, the instance's new
/// state and its meter.
#[derive(Debug)]
pub(crate) struct Settlement {
    pub(crate) end: InstanceEnd,
    /// Whether the meter runs from now on.
    pub(crate) running: bool,
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

/// What a meter `m` accrued up to its end `e` ([`InstanceEnd`]'s `at_ms`).
const ACCRUED: &str = "CASE WHEN m.running_since IS NULL OR m.running_since > e.at_ms THEN 0 \
     ELSE (e.at_ms - m.running_since) * m.micros_per_hour / 3600000 END";

/// The first expressions of a statement over [`InstanceEnd`]s: their
/// inputs as rows, `input`, and `ended`, those whose operation this call
/// ended (still running, the caller's, and `guard`), with its inputs.
fn ended_where(guard: &str) -> String {
    format!(
        "input AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) AS i (n BIGINT, \
           operation TEXT, owner TEXT, status TEXT, result TEXT, error TEXT, instance TEXT, \
           state TEXT, state_detail TEXT, private_ip TEXT, ssh_endpoint TEXT, cause TEXT, \
           running BOOLEAN, at_ms BIGINT)), \
         ended AS (UPDATE operations o SET status = i.status, result = i.result, \
           error = i.error, lease_until = NULL, updated_at = $2 FROM input i \
           WHERE o.id = i.operation AND o.status = 'running' AND o.lease_owner = i.owner \
           AND {guard} RETURNING i.*)"
    )
}

/// Settlements (see [`settle_alone`]).
pub(crate) struct SettleBatch(Writer);

/// [`settle_alone`] for many: the instance and its meter change only with
/// their operation's end, as the guarded statement has them.
static SETTLE_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {ended}, \
         set AS (UPDATE instances t SET state = e.state, state_detail = e.state_detail, \
           private_ip = COALESCE(e.private_ip, t.private_ip), operation_id = NULL, \
           updated_at = $2, generation = t.generation + 1, \
           ssh_endpoint = COALESCE(e.ssh_endpoint, t.ssh_endpoint), end_cause = e.cause \
           FROM ended e WHERE t.id = e.instance RETURNING 1), \
         metered AS (UPDATE meters m SET charged_micros = m.charged_micros + {accrued}, \
           running_since = CASE WHEN e.running THEN e.at_ms END \
           FROM ended e WHERE m.resource_id = e.instance RETURNING 1) \
         SELECT n FROM ended",
        ended = ended_where(&format!(
            "o.cancel_requested <> {}",
            crate::operations::CANCELLED_BY_DELETE
        )),
        accrued = ACCRUED,
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
                let mut input = s.end.input();
                input["running"] = s.running.into();
                input
            });
            let rows = fetch_many(&mut conn, &SETTLE_MANY, inputs).await?;
            answered(rows, settlements.len())
        })
    }
}

/// An instance's operation ending with the instance terminated and all it
/// held on its host given back: the operation's end, the instance's last
/// state without a host, its meter stopped, its volumes detached, its
/// address freed, and its CPUs (its shares, a unit) free. As
/// [`crate::Store::settle_instances`] writes it call by call on SQLite.
pub(crate) type Termination = InstanceEnd;

/// Terminations (see [`Termination`]): alone or many, the same two
/// statements in a transaction, so that every termination takes its
/// rows' locks in one order. The first ([`HOLD_FOR_TERMINATION`]) takes
/// the projects' usage rows, in the projects' order (as a creation does;
/// the state's row trigger takes them again), then the instances, then
/// the hosts they are on or share a CPU of, in the hosts' order. The second
/// ([`TERMINATE_MANY`]) writes the rest, its snapshot taken once it holds
/// the hosts: a share of a CPU is claimed under its host's lock, so it
/// sees every share there, and frees a shared CPU only when no instance
/// outside the batch shares it.
pub(crate) struct TerminateBatch(Writer);

static TERMINATE_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH {ended}, \
         placed AS (SELECT t.host_id, COUNT(*) AS n FROM instances t \
           JOIN ended e ON t.id = e.instance WHERE t.host_id IS NOT NULL GROUP BY t.host_id), \
         set AS (UPDATE instances t SET state = 'terminated', state_detail = e.state_detail, \
           private_ip = COALESCE(e.private_ip, t.private_ip), operation_id = NULL, \
           updated_at = $2, generation = t.generation + 2, \
           ssh_endpoint = COALESCE(e.ssh_endpoint, t.ssh_endpoint), end_cause = e.cause, \
           host_id = NULL, cpu_list = NULL \
           FROM ended e WHERE t.id = e.instance RETURNING 1), \
         metered AS (UPDATE meters m SET charged_micros = m.charged_micros + {accrued}, \
           running_since = NULL FROM ended e WHERE m.resource_id = e.instance RETURNING 1), \
         detached AS (UPDATE volumes v SET instance_id = NULL, target = NULL, \
           status = 'detached', generation = v.generation + 1 FROM ended e \
           WHERE v.instance_id = e.instance AND v.status = 'attached' RETURNING 1), \
         unaddressed AS (DELETE FROM instance_addresses a USING ended e \
           WHERE a.instance_id = e.instance RETURNING 1), \
         unclaimed AS (DELETE FROM cpu_claims c USING ended e \
           WHERE c.holder = 'instance:' || e.instance RETURNING 1), \
         unshared AS (DELETE FROM cpu_claims c WHERE c.holder = 'shared' \
           AND c.host_id IN (SELECT host_id FROM placed UNION SELECT s.host_id \
             FROM cpu_shares s JOIN ended e ON s.instance_id = e.instance) \
           AND NOT EXISTS (SELECT 1 FROM cpu_shares s WHERE s.host_id = c.host_id \
             AND s.cpu = c.cpu AND s.instance_id NOT IN (SELECT instance FROM ended)) \
           RETURNING 1), \
         unshared_too AS (DELETE FROM cpu_shares s USING ended e \
           WHERE s.instance_id = e.instance RETURNING 1), \
         freed AS (UPDATE compute_units u SET status = 'FREE', status_detail = NULL, \
           instance_id = NULL, project_id = NULL, tags = NULL, deployment_id = NULL, \
           ssh_public_key = NULL, started_at = NULL, deadline = NULL, updated_at = $2, \
           generation = u.generation + 1 FROM ended e WHERE u.instance_id = e.instance \
           RETURNING 1), \
         moved AS (UPDATE hosts h SET generation = h.generation + p.n, updated_at = $2 \
           FROM placed p WHERE h.id = p.host_id RETURNING 1) \
         SELECT n FROM ended",
        ended = ended_where("TRUE"),
        accrued = ACCRUED,
    )
});

/// The first statement of a termination (see [`TerminateBatch`]): the
/// usage rows of the instances' projects, then the instances, then their
/// hosts, each in order. Instances before their host, as a placement and a
/// host's registration take them; and with the instances held, the hosts
/// the second statement reads them on are the hosts held here.
static HOLD_FOR_TERMINATION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH input AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) AS i (instance TEXT)), \
         {usage}, \
         mine AS (SELECT t.id, t.host_id FROM instances t \
           WHERE t.id IN (SELECT instance FROM input) AND {after_usage} \
           ORDER BY t.id FOR NO KEY UPDATE), \
         theirs AS (SELECT host_id FROM mine WHERE host_id IS NOT NULL \
           UNION SELECT s.host_id FROM cpu_shares s JOIN input i ON s.instance_id = i.instance) \
         SELECT h.id FROM hosts h WHERE h.id IN (SELECT host_id FROM theirs) \
         ORDER BY h.id FOR NO KEY UPDATE",
        usage = crate::quotas::usage_rows_first(
            "SELECT t.project_id FROM instances t JOIN input i ON t.id = i.instance"
        ),
        after_usage = crate::quotas::AFTER_USAGE_ROWS,
    )
});

/// Runs terminations in the transaction `conn` has begun (see
/// [`TerminateBatch`]): whether each ended its operation (`false`: it had
/// ended already, or is not the caller's, and nothing of it changed).
async fn terminate(
    conn: &mut Conn<'_>,
    terminations: &[Arc<Termination>],
) -> std::result::Result<Vec<bool>, DbError> {
    let instances = terminations
        .iter()
        .map(|t| serde_json::json!({ "instance": t.instance }));
    let instances = serde_json::Value::from(instances.collect::<Vec<_>>()).to_string();
    conn.fetch_rows(&HOLD_FOR_TERMINATION, &[instances.into()])
        .await?;
    let rows = fetch_many(
        conn,
        &TERMINATE_MANY,
        terminations.iter().map(|t| t.input()),
    )
    .await?;
    answered(rows, terminations.len())
}

impl Batch for TerminateBatch {
    type Input = Termination;
    type Answer = bool;
    const WHAT: &'static str = "terminate_instances";

    fn one(&self, termination: Arc<Termination>) -> BoxFuture<'static, Result<bool>> {
        let writer = self.0.clone();
        Box::pin(async move {
            writer
                .write("terminate_instances", Shape::Statements, move |mut conn| {
                    let termination = termination.clone();
                    Box::pin(async move {
                        let ended = terminate(&mut conn, &[termination]).await?;
                        Ok(Commit::Keep(ended.first() == Some(&true)))
                    })
                })
                .await
        })
    }

    fn many<'c>(
        &'c self,
        conn: Conn<'c>,
        terminations: &'c [Arc<Termination>],
    ) -> BoxFuture<'c, std::result::Result<Vec<bool>, DbError>> {
        Box::pin(async move {
            let Conn::Postgres(conn) = conn else {
                return Err(DbError::Sqlx(sqlx::Error::Protocol(
                    "terminations are batched on PostgreSQL only".into(),
                )));
            };
            // Rolled back when dropped unfinished, before the connection
            // runs anything else.
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let ended = terminate(&mut Conn::Postgres(&mut tx), terminations).await?;
            tx.commit().await?;
            Ok(ended)
        })
    }
}

/// The beginning of an instance's one-step operation (a delete, a stop, a
/// start that needs no look at the balance) that this process drives at
/// once: the instance takes the operation and its new state if it is in
/// one of `from` with none under way, the operation is inserted taken
/// (the row of [`crate::operations::operation_insert_taken`]), and a
/// delete's meter stops. Alone or many, the same one statement: the
/// instance's guarded `UPDATE` first, the rest only for those it changed.
#[derive(Debug)]
pub(crate) struct Beginning {
    instance: String,
    /// The states it may begin from, comma-separated.
    from: String,
    to: String,
    operation: OperationRecord,
    owner: String,
    stop_meter: bool,
    /// Now, in milliseconds, for the meter.
    at_ms: i64,
}

impl Beginning {
    pub(crate) fn new(
        instance: &str,
        from: &[&str],
        to: &str,
        operation: &OperationRecord,
        owner: &str,
        stop_meter: bool,
    ) -> Beginning {
        Beginning {
            instance: instance.to_string(),
            from: from.join(","),
            to: to.to_string(),
            operation: operation.clone(),
            owner: owner.to_string(),
            stop_meter,
            at_ms: crate::billing::now_ms(),
        }
    }

    fn input(&self) -> serde_json::Value {
        let op = &self.operation;
        serde_json::json!({
            "instance": self.instance,
            "from_states": self.from,
            "to_state": self.to,
            "operation": op.id,
            "project_id": op.project_id,
            "kind": op.kind,
            "resource_id": op.resource_id,
            "params": op.params,
            "created_by": op.created_by,
            "at": op.created_at,
            "lease_until": op.lease_until,
            "owner": self.owner,
            "stop_meter": self.stop_meter,
            "at_ms": self.at_ms,
        })
    }
}

/// Beginnings (see [`Beginning`]). The statement first holds the
/// instances that have no operation under way, in their ids' order, so
/// that two batches (of two replicas) take them in one order; then begins
/// each input whose instance it holds, is its project's and is in one of
/// its states (the newest version of the row, once held). Two inputs for
/// one instance: one begins, the other does not.
pub(crate) struct BeginBatch(Writer);

static BEGIN_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH input AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) AS i (n BIGINT, \
           instance TEXT, from_states TEXT, to_state TEXT, operation TEXT, project_id TEXT, \
           kind TEXT, resource_id TEXT, params TEXT, created_by TEXT, at TEXT, \
           lease_until TEXT, owner TEXT, stop_meter BOOLEAN, at_ms BIGINT)), \
         held AS (SELECT t.id FROM instances t WHERE t.id IN (SELECT instance FROM input) \
           AND t.operation_id IS NULL ORDER BY t.id FOR NO KEY UPDATE), \
         began AS (UPDATE instances t SET state = i.to_state, state_detail = NULL, \
           operation_id = i.operation, updated_at = $2, generation = t.generation + 1 \
           FROM (SELECT * FROM input ORDER BY instance, n) i \
           WHERE t.id = i.instance AND t.id IN (SELECT id FROM held) \
           AND t.project_id = i.project_id AND t.operation_id IS NULL \
           AND t.state = ANY (string_to_array(i.from_states, ',')) RETURNING i.*), \
         taken AS (INSERT INTO operations ({columns}, lease_owner) \
           SELECT b.operation, b.project_id, b.kind, 'running', b.resource_id, b.params, '[]', \
           NULL, NULL, 0, b.lease_until, b.created_by, b.at, b.at, 1, NULL, b.owner \
           FROM began b RETURNING 1), \
         metered AS (UPDATE meters m SET charged_micros = m.charged_micros + {accrued}, \
           running_since = NULL FROM began e WHERE e.stop_meter AND m.resource_id = e.instance \
           RETURNING 1) \
         SELECT n FROM began",
        columns = crate::operations::OPERATION_COLUMNS,
        accrued = ACCRUED,
    )
});

/// Runs beginnings as one statement: whether each began.
async fn begin(
    conn: &mut Conn<'_>,
    beginnings: &[Arc<Beginning>],
) -> std::result::Result<Vec<bool>, DbError> {
    let rows = fetch_many(conn, &BEGIN_MANY, beginnings.iter().map(|b| b.input())).await?;
    answered(rows, beginnings.len())
}

impl Batch for BeginBatch {
    type Input = Beginning;
    type Answer = bool;
    const WHAT: &'static str = "begin_instance_operation";

    fn one(&self, beginning: Arc<Beginning>) -> BoxFuture<'static, Result<bool>> {
        let writer = self.0.clone();
        Box::pin(async move {
            writer
                .write(
                    "begin_instance_operation",
                    Shape::OneStatement,
                    move |mut conn| {
                        let beginning = beginning.clone();
                        Box::pin(async move {
                            let began = begin(&mut conn, &[beginning]).await?;
                            Ok(Commit::Keep(began.first() == Some(&true)))
                        })
                    },
                )
                .await
        })
    }

    fn many<'c>(
        &'c self,
        mut conn: Conn<'c>,
        beginnings: &'c [Arc<Beginning>],
    ) -> BoxFuture<'c, std::result::Result<Vec<bool>, DbError>> {
        Box::pin(async move { begin(&mut conn, beginnings).await })
    }
}

/// A creation of one instance that this process drives at once: recorded
/// as [`super::write_instances`] records it, alone or in a batch. Only the
/// common shape is batched: no volumes or container of its own, none to
/// attach, not a replica, and, when it has a network, an address hint to
/// try (see [`Creation::batchable`]).
#[derive(Debug)]
pub(crate) struct Creation {
    instance: NewInstance,
    op: NewOperation,
    quota: Option<QuotaCheck>,
    lease_until: String,
    owner: String,
    /// Its inputs to [`CREATE_MANY`].
    row: serde_json::Value,
    /// What the answer holds once written, its address aside.
    written: InstanceRecord,
    taken: OperationRecord,
    /// Its distinct groups, and the address tried, when it has a network.
    network: Option<(usize, String)>,
}

impl Creation {
    /// The creation of `instance` by `op`, taken by `owner` until
    /// `lease_until`, when it is of the batched shape.
    pub(crate) fn batchable(
        instance: &NewInstance,
        op: &NewOperation,
        quota: Option<&QuotaCheck>,
        lease_until: &str,
        owner: &str,
    ) -> Option<Creation> {
        if !instance.volumes.is_empty()
            || !instance.attach.is_empty()
            || instance.container.is_some()
            || instance.replica.is_some()
        {
            return None;
        }
        let network = match &instance.network {
            None => None,
            Some(attachment) => {
                let groups: std::collections::BTreeSet<&String> =
                    attachment.groups.iter().collect();
                let address = crate::networks::address_hint(attachment)?;
                Some((attachment.subnet_id.clone(), groups, address))
            }
        };
        let at = crate::now();
        let taken = crate::operations::operation_taken(op, lease_until);
        // Its labels as its own write keeps them: those of text values.
        let labels: serde_json::Map<String, serde_json::Value> = instance
            .labels
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, value)| value.is_string())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let row = serde_json::json!({
            "id": instance.id,
            "project_id": instance.project_id,
            "name": instance.name,
            "labels": instance.labels.to_string(),
            "text_labels": labels,
            "spec": instance.spec.to_string(),
            "memory_mb": instance.memory_mb,
            "vcpus": instance.vcpus,
            "created_by": instance.created_by,
            "micros_per_hour": instance.micros_per_hour,
            "at": at,
            "subnet": network.as_ref().map(|(subnet, _, _)| subnet),
            "groups": network.as_ref().map_or_else(Vec::new, |(_, groups, _)| {
                groups.iter().map(|g| g.as_str()).collect()
            }),
            "address": network.as_ref().map(|(_, _, address)| address),
            "operation": op.id,
            "op_project_id": op.project_id,
            "kind": op.kind.as_str(),
            "resource_id": op.resource_id,
            "params": op.params.to_string(),
            "op_created_by": op.created_by,
            "op_at": taken.created_at,
            "lease_until": lease_until,
            "owner": owner,
        });
        let written = super::new_record(instance, &op.id, at);
        Some(Creation {
            instance: instance.clone(),
            op: op.clone(),
            quota: quota.cloned(),
            lease_until: lease_until.to_string(),
            owner: owner.to_string(),
            row,
            written,
            taken,
            network: network.map(|(_, groups, address)| (groups.len(), address)),
        })
    }

    /// Its answer once written, with `address` when it has a network.
    fn recorded(&self, address: Option<String>) -> InstancesAdded {
        let mut written = self.written.clone();
        written.private_ip = address.unwrap_or_default();
        InstancesAdded::Recorded {
            instances: vec![written],
            taken: Some(Box::new(self.taken.clone())),
        }
    }
}

/// Creations (see [`Creation`]).
pub(crate) struct CreateBatch(Writer);

/// [`super::write_instances`] for many creations, as one statement: their
/// subnets and groups held against deletion, the address each one's hint
/// gives taken in address order (none if another took it), the instances
/// (in their projects' order, so that two batches take the projects' usage
/// rows in one order), their groups joined, their labels, meters and
/// operations.
/// It answers, for each creation, whether its subnet was held, how many of
/// its groups were joined and the address it got; the batch is kept only
/// if every creation got its subnet and groups. One whose address was
/// taken meanwhile looks for the next free one, as it would alone.
///
/// Its first step takes its projects' usage rows, before any address (the
/// order [`crate::quotas::usage_rows_first`] gives creations).
static CREATE_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH input AS (SELECT * FROM json_to_recordset(CAST($1 AS json)) \
       AS i (n BIGINT, id TEXT, project_id TEXT, name TEXT, labels TEXT, text_labels json, \
       spec TEXT, memory_mb BIGINT, vcpus BIGINT, created_by TEXT, micros_per_hour BIGINT, \
       at TEXT, subnet TEXT, groups json, address TEXT, operation TEXT, op_project_id TEXT, \
       kind TEXT, resource_id TEXT, params TEXT, op_created_by TEXT, op_at TEXT, \
       lease_until TEXT, owner TEXT)), \
     {usage}, \
     held AS (SELECT id FROM subnets WHERE id IN (SELECT subnet FROM input) \
       AND {after_usage} ORDER BY id FOR SHARE), \
     grouped AS (SELECT id FROM security_groups WHERE id IN \
       (SELECT json_array_elements_text(groups) FROM input) \
       ORDER BY id FOR SHARE), \
     addressed AS (INSERT INTO instance_addresses (subnet_id, address, instance_id) \
       SELECT i.subnet, i.address, i.id FROM input i WHERE i.subnet IN (SELECT id FROM held) \
       ORDER BY i.subnet, i.address \
       ON CONFLICT (subnet_id, address) DO NOTHING RETURNING instance_id, address), \
     made AS (INSERT INTO instances (id, project_id, name, labels, spec, state, state_detail, \
       host_id, cpu_list, memory_mb, private_ip, public_ip, operation_id, generation, \
       created_at, updated_at, vcpus, created_by) \
       SELECT i.id, i.project_id, i.name, i.labels, i.spec, 'provisioning', NULL, NULL, NULL, \
       i.memory_mb, COALESCE((SELECT a.address FROM addressed a WHERE a.instance_id = i.id), ''), \
       '', i.operation, 1, i.at, i.at, i.vcpus, i.created_by FROM input i \
       ORDER BY i.project_id, i.n RETURNING id), \
     joined AS (INSERT INTO instance_security_groups (instance_id, group_id) \
       SELECT i.id, g.id FROM input i \
       CROSS JOIN LATERAL json_array_elements_text(i.groups) AS j (group_id) \
       JOIN grouped g ON g.id = j.group_id WHERE i.subnet IN (SELECT id FROM held) \
       ON CONFLICT (instance_id, group_id) DO NOTHING RETURNING instance_id), \
     labelled AS (INSERT INTO instance_labels (instance_id, project_id, key, value, created_at) \
       SELECT i.id, i.project_id, l.key, l.value, i.at FROM input i \
       CROSS JOIN LATERAL json_each_text(i.text_labels) AS l RETURNING 1), \
     metered AS (INSERT INTO meters (resource_id, project_id, kind, micros_per_hour, \
       running_since, charged_micros) \
       SELECT i.id, i.project_id, 'instance', i.micros_per_hour, NULL, 0 FROM input i \
       ON CONFLICT (resource_id) DO NOTHING RETURNING 1), \
     begun AS (INSERT INTO operations (id, project_id, kind, status, resource_id, params, \
       steps, result, error, cancel_requested, lease_until, created_by, created_at, \
       updated_at, attempts, last_error, lease_owner) \
       SELECT i.operation, i.op_project_id, i.kind, 'running', i.resource_id, i.params, '[]', \
       NULL, NULL, 0, i.lease_until, i.op_created_by, i.op_at, i.op_at, 1, NULL, i.owner \
       FROM input i RETURNING 1) \
     SELECT i.n, CAST((SELECT COUNT(*) FROM held h WHERE h.id = i.subnet) AS BIGINT) AS held, \
       CAST((SELECT COUNT(*) FROM joined j WHERE j.instance_id = i.id) AS BIGINT) AS joined, \
       (SELECT a.address FROM addressed a WHERE a.instance_id = i.id) AS address \
     FROM input i",
        usage = crate::quotas::usage_rows_first("SELECT project_id FROM input"),
        after_usage = crate::quotas::AFTER_USAGE_ROWS,
    )
});

/// Why a batch of creations is run again call by call: one of them would
/// be refused, or answered otherwise than written, alone.
fn run_alone(why: &str) -> DbError {
    DbError::Sqlx(sqlx::Error::Protocol(format!(
        "a batch of creations is run call by call: {why}"
    )))
}

/// The quota check of all of a batch's creations of one project: what
/// they add together, under the limits each would be checked against.
/// `None` when they are not checked alike (the batch runs call by call).
fn project_check(checks: &[&QuotaCheck]) -> Option<QuotaCheck> {
    let (first, rest) = checks.split_first()?;
    let mut check = (*first).clone();
    for other in rest {
        if other.defaults != check.defaults || other.funds != check.funds {
            return None;
        }
        check.adds += other.adds;
    }
    Some(check)
}

/// Writes `creations` in the transaction `conn` has begun: their answers;
/// or the projects whose quota or balance their creations together would
/// exceed (the transaction to be rolled back); or [`run_alone`]'s error
/// when one of them is not as written alone.
async fn create_many(
    conn: &mut Conn<'_>,
    creations: &[Arc<Creation>],
) -> std::result::Result<std::result::Result<Vec<InstancesAdded>, Vec<String>>, DbError> {
    let rows = fetch_many(conn, &CREATE_MANY, creations.iter().map(|c| c.row.clone())).await?;
    let got = answers_by_index(rows, creations.len(), |row| {
        Ok((
            row.try_get::<i64, _>("held")?,
            row.try_get::<i64, _>("joined")?,
            row.try_get::<Option<String>, _>("address")?,
        ))
    })?;
    let mut answers = Vec::with_capacity(creations.len());
    for (creation, got) in creations.iter().zip(got) {
        let Some((held, joined, address)) = got else {
            return Err(run_alone("a creation went unanswered"));
        };
        let (Some((groups, tried)), Some(attachment)) =
            (&creation.network, &creation.instance.network)
        else {
            answers.push(creation.recorded(None));
            continue;
        };
        // Its subnet or a group gone: answered alone (as not found).
        if held != 1 || joined != *groups as i64 {
            return Err(run_alone("a subnet or a group is gone"));
        }
        if address.as_ref() == Some(tried) {
            answers.push(creation.recorded(address));
            continue;
        }
        // The address its hint gave was taken (by another replica): the
        // next free one, as alone.
        match crate::networks::take_free_address(conn, &creation.instance.id, attachment).await? {
            crate::networks::Attached::Address(address) => {
                answers.push(creation.recorded(Some(address)))
            }
            _ => return Err(run_alone("a subnet is full")),
        }
    }
    // Each project's quota, the projects in order (each check locks its
    // project until the commit), for what its creations add together.
    let mut projects: std::collections::BTreeMap<&str, Vec<&QuotaCheck>> = Default::default();
    for creation in creations {
        let project = creation.instance.project_id.as_str();
        match &creation.quota {
            Some(check) if check.project_id == project => {
                projects.entry(project).or_default().push(check)
            }
            None => {}
            Some(_) => return Err(run_alone("a check of another project")),
        }
    }
    let mut refused = Vec::new();
    for (project, checks) in projects {
        let unchecked = creations
            .iter()
            .any(|c| c.instance.project_id == project && c.quota.is_none());
        let Some(check) = project_check(&checks).filter(|_| !unchecked) else {
            return Err(run_alone("a project's creations are checked differently"));
        };
        if crate::quotas::enforce_written(conn, &check)
            .await?
            .is_some()
        {
            refused.push(project.to_string());
        }
    }
    Ok(match refused.is_empty() {
        true => Ok(answers),
        false => Err(refused),
    })
}

/// One creation as it runs alone.
async fn create_alone(writer: &Writer, creation: &Creation) -> Result<InstancesAdded> {
    super::write_instances(
        (writer, crate::Backend::Postgres, &creation.owner),
        std::slice::from_ref(&creation.instance),
        &creation.op,
        creation.quota.as_ref(),
        Some(&creation.lease_until),
        creation.network.as_ref().map(|(_, tried)| tried.as_str()),
    )
    .await
}

impl Batch for CreateBatch {
    type Input = Creation;
    /// A creation's own refusal (its quota, its balance) is its answer:
    /// the batch commits the others'.
    type Answer = Result<InstancesAdded>;
    const WHAT: &'static str = "insert_instances";

    fn one(&self, creation: Arc<Creation>) -> BoxFuture<'static, Result<Result<InstancesAdded>>> {
        let writer = self.0.clone();
        Box::pin(async move { Ok(create_alone(&writer, &creation).await) })
    }

    fn many<'c>(
        &'c self,
        conn: Conn<'c>,
        creations: &'c [Arc<Creation>],
    ) -> BoxFuture<'c, std::result::Result<Vec<Result<InstancesAdded>>, DbError>> {
        Box::pin(async move {
            let Conn::Postgres(conn) = conn else {
                return Err(run_alone("not on PostgreSQL"));
            };
            // Rolled back when dropped unfinished, before the connection
            // runs anything else.
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let refused = match create_many(&mut Conn::Postgres(&mut tx), creations).await? {
                Ok(answers) => {
                    tx.commit().await?;
                    return Ok(answers.into_iter().map(Ok).collect());
                }
                Err(refused) => refused,
            };
            tx.rollback().await?;
            // A project its creations together would take past its quota
            // or balance: the others' go in again as one batch, and its
            // own one by one, each answered as alone. A tenant creating
            // past its quota thus costs the others one statement more,
            // not a batch run call by call.
            let (kept, alone): (Vec<usize>, Vec<usize>) = (0..creations.len())
                .partition(|&n| !refused.contains(&creations[n].instance.project_id));
            let mut answers: Vec<Option<Result<InstancesAdded>>> = std::iter::repeat_with(|| None)
                .take(creations.len())
                .collect();
            if !kept.is_empty() {
                let again: Vec<Arc<Creation>> =
                    kept.iter().map(|&n| creations[n].clone()).collect();
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let Ok(written) = create_many(&mut Conn::Postgres(&mut tx), &again).await? else {
                    return Err(run_alone("another project's quota refused them again"));
                };
                tx.commit().await?;
                for (n, answer) in kept.into_iter().zip(written) {
                    answers[n] = Some(Ok(answer));
                }
            }
            let alone_answers = futures::future::join_all(
                alone.iter().map(|&n| create_alone(&self.0, &creations[n])),
            )
            .await;
            for (n, answer) in alone.into_iter().zip(alone_answers) {
                answers[n] = Some(answer);
            }
            Ok(answers
                .into_iter()
                .map(|answer| {
                    answer.unwrap_or_else(|| {
                        Err(crate::StoreError::Corrupt(
                            "a batched creation went unanswered".into(),
                        ))
                    })
                })
                .collect())
        })
    }
}
