//! Group commit on PostgreSQL for the hottest one-statement writes.
//!
//! SQLite's writer runs the units of work that queue up while a commit is
//! in flight together, with one commit ([`crate::writer`]). On PostgreSQL
//! every write is its own statement, round trip and commit, and under load
//! that fixed cost per statement, on both sides, was most of the cost of a
//! Kloigos allocation. A [`Batcher`] gathers the calls of one kind of write
//! that arrive while [`IN_FLIGHT`] statements of that kind are running, and
//! runs them as one statement over a JSON list of their inputs (a constant
//! text, so it stays prepared whatever the batch's size). A caller alone
//! runs at once, as without batching. Every caller hears its answer only
//! once the statement committed, so durability stays per request.
//!
//! A batch is all or nothing, as a statement is. One that fails (a CPU that
//! another replica claimed meanwhile fails a claim's batch on the ledger's
//! key; a deadlock with another replica) is run again call by call, each as
//! it runs alone, so a call only ever hears of its own failure; those calls
//! no longer hold up the next batch. A call is made even if its caller
//! stopped waiting once it was queued, as a statement sent is.

use crate::db::{Conn, DbError};
use crate::pg::PgPool;
use crate::{Result, StoreError, now};
use futures::future::BoxFuture;
use sqlx::Row;
use sqlx::any::AnyRow;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Statements of one kind running at once. One: a call that arrives while
/// one runs waits for it, and goes with every other that arrived
/// meanwhile. With 32 clients allocating and releasing, one gave 35% more
/// round trips per second than four (`tessera bench api`), and batches of
/// 7-8 calls; with four clients, 10% fewer.
const IN_FLIGHT: usize = 1;

/// The most calls one statement takes.
const MAX_BATCH: usize = 256;

/// One kind of write that can run alone or for many callers at once.
pub(crate) trait Batch: Send + Sync + 'static {
    type Input: Send + Sync + 'static;
    type Answer: Send + 'static;

    /// What the write is, for the logs.
    const WHAT: &'static str;

    /// Runs one call as it runs without batching: its own statement,
    /// tried again on a transient failure.
    fn one(&self, input: Arc<Self::Input>) -> BoxFuture<'static, Result<Self::Answer>>;

    /// Runs several calls as one statement on `conn`: an answer for each
    /// input, in their order, or an error that changed nothing.
    fn many<'c>(
        &'c self,
        conn: Conn<'c>,
        inputs: &'c [Arc<Self::Input>],
    ) -> BoxFuture<'c, std::result::Result<Vec<Self::Answer>, DbError>>;
}

struct Call<B: Batch> {
    input: Arc<B::Input>,
    reply: oneshot::Sender<Result<B::Answer>>,
}

/// Gathers the calls of one [`Batch`]: see the module's documentation.
pub(crate) struct Batcher<B: Batch> {
    calls: mpsc::Sender<Call<B>>,
}

impl<B: Batch> Batcher<B> {
    /// Starts the task that gathers and runs the calls; it ends once the
    /// batcher is dropped.
    pub(crate) fn start(batch: B, pool: PgPool) -> Batcher<B> {
        let (calls, queue) = mpsc::channel(4096);
        tokio::spawn(gather(Arc::new(batch), pool, queue));
        Batcher { calls }
    }

    /// Runs `input`, alone or with others, and answers once it committed.
    pub(crate) async fn call(&self, input: Arc<B::Input>) -> Result<B::Answer> {
        let (reply, answer) = oneshot::channel();
        self.calls
            .send(Call { input, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn gather<B: Batch>(batch: Arc<B>, pool: PgPool, mut queue: mpsc::Receiver<Call<B>>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // The calls that arrive while every slot is taken join this one.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut group = vec![first];
        while group.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(call) => group.push(call),
                Err(_) => break,
            }
        }
        let (batch, pool) = (batch.clone(), pool.clone());
        tokio::spawn(async move { run(&batch, &pool, group, slot).await });
    }
}

/// Runs a group of calls while it holds `slot`: a lone call as it runs
/// alone, several together. Those of a group that failed then run one by
/// one without the slot, so that calls that have to wait (on a lock, for a
/// connection) hold up only themselves.
async fn run<B: Batch>(
    batch: &Arc<B>,
    pool: &PgPool,
    mut group: Vec<Call<B>>,
    slot: OwnedSemaphorePermit,
) {
    if group.len() == 1 {
        let call = group.remove(0);
        let _ = call.reply.send(batch.one(call.input).await);
        return;
    }
    let Some(group) = together(batch, pool, group).await else {
        return;
    };
    drop(slot);
    futures::future::join_all(group.into_iter().map(|call| {
        let batch = batch.clone();
        async move {
            let answer = batch.one(call.input).await;
            let _ = call.reply.send(answer);
        }
    }))
    .await;
}

/// Runs `group` as one statement and answers its calls, or gives the
/// group back, nothing changed, to be run one by one.
async fn together<B: Batch>(
    batch: &Arc<B>,
    pool: &PgPool,
    group: Vec<Call<B>>,
) -> Option<Vec<Call<B>>> {
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        // Nothing was sent: each call waits for a connection on its own.
        Err(err) => {
            tracing::debug!(what = B::WHAT, error = %err, "no connection for a batch");
            return Some(group);
        }
    };
    let inputs: Vec<Arc<B::Input>> = group.iter().map(|call| call.input.clone()).collect();
    let done = batch.many(Conn::Postgres(&mut conn), &inputs).await;
    conn.release(&done);
    match done {
        Ok(answers) if answers.len() == group.len() => {
            for (call, answer) in group.into_iter().zip(answers) {
                let _ = call.reply.send(Ok(answer));
            }
            None
        }
        // Committed, so not to be run again; cannot happen while `many`
        // keeps its contract.
        Ok(answers) => {
            let why = format!(
                "a batched {} answered {} of {} calls",
                B::WHAT,
                answers.len(),
                group.len()
            );
            tracing::error!("{why}");
            for call in group {
                let _ = call.reply.send(Err(StoreError::Corrupt(why.clone())));
            }
            None
        }
        // The connection was lost: the statement may have committed with
        // its answer lost, so running the calls again could answer them
        // wrongly. Each hears the failure as when alone (a lost
        // connection, which callers may try again).
        Err(DbError::Sqlx(err))
            if crate::pg::is_lost_connection(&err) && !crate::pg::ended_by_server(&err) =>
        {
            tracing::warn!(what = B::WHAT, error = %err, "connection lost during a batch");
            let why = format!("connection lost during a batched {}: {err}", B::WHAT);
            for call in group {
                let lost = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.clone());
                let _ = call
                    .reply
                    .send(Err(StoreError::Query(sqlx::Error::Io(lost))));
            }
            None
        }
        // A failed statement changed nothing.
        Err(err) => {
            tracing::debug!(
                what = B::WHAT,
                calls = group.len(),
                error = %err,
                "a batch failed; running its calls one by one"
            );
            Some(group)
        }
    }
}

/// Runs a batch statement: `$1` the calls' inputs as a JSON list, each
/// numbered `n` by its place in it, `$2` now.
pub(crate) async fn fetch_many(
    conn: &mut Conn<'_>,
    sql: &str,
    inputs: impl Iterator<Item = serde_json::Value>,
) -> std::result::Result<Vec<AnyRow>, DbError> {
    let input: Vec<serde_json::Value> = inputs
        .enumerate()
        .map(|(n, mut input)| {
            input["n"] = n.into();
            input
        })
        .collect();
    let args = [
        serde_json::Value::from(input).to_string().into(),
        now().into(),
    ];
    conn.fetch_rows(sql, &args).await
}

/// Which of `calls` calls rows of `n` (each call's index) answer: those a
/// statement did what they asked, the others `false`.
pub(crate) fn answered(rows: Vec<AnyRow>, calls: usize) -> std::result::Result<Vec<bool>, DbError> {
    let answers = answers_by_index(rows, calls, |_| Ok(()))?;
    Ok(answers.into_iter().map(|a| a.is_some()).collect())
}

/// Each call's answer from rows of `(n, value)`, `n` the call's index;
/// `None` for the calls no row answers.
pub(crate) fn answers_by_index<T>(
    rows: Vec<AnyRow>,
    calls: usize,
    value: impl Fn(AnyRow) -> std::result::Result<T, sqlx::Error>,
) -> std::result::Result<Vec<Option<T>>, DbError> {
    let mut answers: Vec<Option<T>> = std::iter::repeat_with(|| None).take(calls).collect();
    for row in rows {
        let n: i64 = row.try_get("n")?;
        if let Some(slot) = usize::try_from(n).ok().and_then(|n| answers.get_mut(n)) {
            *slot = Some(value(row)?);
        }
    }
    Ok(answers)
}
