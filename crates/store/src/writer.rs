//! Writes, with group commit on SQLite.
//!
//! Every write is a unit of work run inside a transaction: [`Store::write`].
//! On PostgreSQL each runs in its own transaction, again on a serialization
//! failure or deadlock. On SQLite, which has one writer and pays one fsync
//! per commit, a single writer thread runs the units of work that queued up
//! while the previous commit was in flight together, each inside its own
//! savepoint, and commits them with one fsync; no caller hears "done" before
//! that commit. So durability stays per request while throughput grows with
//! concurrency. The writer thread owns its SQLite connection and runs every
//! statement itself (see [`crate::db`]).

use crate::db::{Conn, DbError};
use crate::{Result, StoreError};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What a unit of work decided about its own changes.
pub(crate) enum Commit<T> {
    /// Keep the changes; answer `T` once they are durable.
    Keep(T),
    /// Discard the changes (a lost race, a refused change); answer `T`.
    Undo(T),
}

pub(crate) type Work<'c, T> = BoxFuture<'c, std::result::Result<Commit<T>, DbError>>;

/// How a unit of work changes the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Several statements: on SQLite it runs in its own savepoint, so that
    /// an undo or an error takes back only its own changes.
    Statements,
    /// One statement that is kept whatever it changed (an undo only when it
    /// changed nothing): atomic by itself, it needs no savepoint.
    OneStatement,
}

/// A unit of work as the SQLite writer thread runs it.
pub(crate) struct Job {
    shape: Shape,
    run: RunJob,
}

type RunJob = Box<dyn for<'c> FnOnce(Conn<'c>) -> BoxFuture<'c, Outcome> + Send>;

/// A unit of work's result, waiting for the commit.
pub(crate) struct Outcome {
    undo: bool,
    /// The unit of work failed in a way that ended the whole transaction.
    fatal: bool,
    deliver: Box<dyn FnOnce(std::result::Result<(), String>) + Send>,
}

/// The most units of work one SQLite commit takes.
const MAX_BATCH: usize = 512;

/// The SQLite writer's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// WAL pages (4 KiB each) past which the writer checkpoints by itself: only
/// when the checkpoint thread cannot keep up.
const WRITER_CHECKPOINT_PAGES: i64 = 16 * 1024;

/// The least time between two checkpoints of the checkpoint thread.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub(crate) enum Writer {
    Postgres(crate::pg::PgPool),
    Sqlite(mpsc::Sender<Job>),
}

impl Writer {
    /// Opens the SQLite database at `path` for writing and starts the writer
    /// thread over it.
    pub(crate) fn sqlite(path: &Path) -> std::result::Result<Writer, rusqlite::Error> {
        // The migrations made the file: opening without CREATE makes a
        // wrong path an error instead of a second, empty database.
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let conn = rusqlite::Connection::open_with_flags(path, flags)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                mode,
                "SQLite refused WAL mode: readers and the writer will block each other"
            );
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(256);
        // A unit of work's savepoint journals the pages it changes: in
        // memory, not in a temporary file written and deleted each time.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The writer alone changes the database, so the pages it read stay
        // good across commits: keep more of them.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        // Checkpoints (copying the WAL into the database, with two fsyncs)
        // run beside the writer, on their own connection; the writer does
        // one itself only when that thread falls far behind.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        let checkpointer = rusqlite::Connection::open_with_flags(path, flags)?;
        checkpointer.pragma_update(None, "synchronous", "FULL")?;
        let (commits, committed) = std::sync::mpsc::sync_channel::<()>(1);
        let spawn_error = |e| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run_checkpointer(checkpointer, committed))
            .map_err(spawn_error)?;
        let (jobs, queue) = mpsc::channel::<Job>(4096);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run_sqlite_writer(conn, queue, commits))
            .map_err(spawn_error)?;
        Ok(Writer::Sqlite(jobs))
    }

    /// The shape of a write that is one statement on PostgreSQL and
    /// several on SQLite (where it reads back, or checks first, what one
    /// PostgreSQL statement does at once).
    pub(crate) fn one_statement_on_postgres(&self) -> Shape {
        match self {
            Writer::Postgres(_) => Shape::OneStatement,
            Writer::Sqlite(_) => Shape::Statements,
        }
    }

    /// Runs `work` in a transaction and answers what it answered, once its
    /// changes (if kept) are durable.
    pub(crate) async fn write<T, F>(&self, what: &'static str, shape: Shape, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> Fn(Conn<'c>) -> Work<'c, T> + Send + Sync + 'static,
    {
        match self {
            Writer::Postgres(pool) => write_postgres(pool, what, shape, &work).await,
            Writer::Sqlite(jobs) => {
                let (reply, answer) = oneshot::channel::<Result<T>>();
                let run: RunJob = Box::new(move |conn: Conn<'_>| -> BoxFuture<'_, Outcome> {
                    Box::pin(async move {
                        match work(conn).await {
                            Ok(Commit::Keep(value)) => Outcome {
                                undo: false,
                                fatal: false,
                                deliver: Box::new(move |committed| {
                                    let _ = reply.send(
                                        committed.map(|()| value).map_err(StoreError::Commit),
                                    );
                                }),
                            },
                            Ok(Commit::Undo(value)) => Outcome {
                                undo: true,
                                fatal: false,
                                deliver: Box::new(move |_| {
                                    let _ = reply.send(Ok(value));
                                }),
                            },
                            Err(err) => Outcome {
                                undo: true,
                                fatal: ends_the_transaction(&err),
                                deliver: Box::new(move |_| {
                                    let _ = reply.send(Err(StoreError::from(err)));
                                }),
                            },
                        }
                    })
                });
                let job = Job { shape, run };
                jobs.send(job).await.map_err(|_| StoreError::Closed)?;
                answer.await.map_err(|_| StoreError::Closed)?
            }
        }
    }
}

/// Runs `work` on PostgreSQL: in a transaction of its own, or for
/// [`Shape::OneStatement`], as that statement alone, which is atomic by
/// itself and saves the round trips of `BEGIN` and `COMMIT`.
async fn write_postgres<T, F>(
    pool: &crate::pg::PgPool,
    what: &'static str,
    shape: Shape,
    work: &F,
) -> Result<T>
where
    F: for<'c> Fn(Conn<'c>) -> Work<'c, T>,
{
    let mut pause = Duration::from_millis(2);
    let mut tries = 0;
    loop {
        tries += 1;
        let attempt: std::result::Result<T, DbError> = async {
            let mut conn = pool.get().await?;
            let done = match shape {
                Shape::OneStatement => match work(Conn::Postgres(&mut conn)).await {
                    Ok(Commit::Keep(value) | Commit::Undo(value)) => Ok(value),
                    Err(err) => Err(err),
                },
                Shape::Statements => in_transaction(&mut conn, work).await,
            };
            conn.release(&done);
            done
        }
        .await;
        match attempt {
            // A session the server had ended (a restart) ran nothing:
            // tried again, as what PostgreSQL rolled back is.
            Err(DbError::Sqlx(err))
                if tries < 8 && (crate::is_transient(&err) || crate::pg::ended_by_server(&err)) =>
            {
                tracing::debug!(what, tries, error = %err, "transient conflict, retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other.map_err(StoreError::from),
        }
    }
}

/// Runs `work` on `conn` in a transaction, committed if it says so.
async fn in_transaction<T, F>(
    conn: &mut sqlx::AnyConnection,
    work: &F,
) -> std::result::Result<T, DbError>
where
    F: for<'c> Fn(Conn<'c>) -> Work<'c, T>,
{
    let mut tx = sqlx::Connection::begin(conn).await?;
    match work(Conn::Postgres(&mut tx)).await? {
        Commit::Keep(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Commit::Undo(value) => {
            tx.rollback().await?;
            Ok(value)
        }
    }
}

/// Copies the WAL into the database after commits, at most once per
/// [`CHECKPOINT_EVERY`], until the writer stops. A passive checkpoint takes
/// no lock that would make the writer or a reader wait; it copies what no
/// reader still needs, and SQLite starts the WAL over once all of it is
/// copied.
fn run_checkpointer(conn: rusqlite::Connection, commits: std::sync::mpsc::Receiver<()>) {
    while commits.recv().is_ok() {
        if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %err, "SQLite checkpoint failed; the next commit tries again");
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
}

fn run_sqlite_writer(
    mut conn: rusqlite::Connection,
    mut queue: mpsc::Receiver<Job>,
    commits: std::sync::mpsc::SyncSender<()>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
            // A transaction left open by a failed commit: clear it, once.
            let _ = conn.execute_batch("ROLLBACK");
            if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
                // The jobs never ran; dropping them tells each caller.
                tracing::error!(error = %err, "SQLite writer cannot begin a transaction");
                continue;
            }
        }
        run_batch(&mut conn, batch);
        // Full means a checkpoint is due already.
        let _ = commits.try_send(());
    }
}

/// Runs one batch inside the transaction just begun, and ends it.
fn run_batch(conn: &mut rusqlite::Connection, batch: Vec<Job>) {
    // A lone unit of work needs no savepoint: its undo is the rollback.
    let alone = batch.len() == 1;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut undo_all = false;
    // Set when the transaction can no longer be trusted (SQLite rolled it
    // back by itself, a savepoint failed, a bare statement panicked): the
    // batch then stops, nothing of it is kept, and the units of work not
    // yet run are dropped, which tells their callers.
    let mut broken = false;
    for job in batch {
        if broken {
            break;
        }
        let savepoint = !alone && job.shape == Shape::Statements;
        if savepoint && let Err(err) = conn.execute_batch("SAVEPOINT unit_of_work") {
            tracing::error!(error = %err, "SQLite savepoint failed; the batch is abandoned");
            broken = true;
            break;
        }
        let outcome = run_now((job.run)(Conn::Sqlite(conn)));
        let undo = outcome.as_ref().is_none_or(|o| o.undo);
        // SQLite may end the transaction itself on errors beyond the known
        // list; then later statements would run, and commit, on their own.
        broken |= outcome.as_ref().is_some_and(|o| o.fatal) || conn.is_autocommit();
        if alone {
            undo_all = undo;
        } else if savepoint && !broken {
            if undo && let Err(err) = conn.execute_batch("ROLLBACK TO unit_of_work") {
                tracing::error!(error = %err, "SQLite rollback to savepoint failed");
                broken = true;
            }
            if let Err(err) = conn.execute_batch("RELEASE unit_of_work") {
                tracing::error!(error = %err, "SQLite savepoint release failed");
                broken = true;
            }
        } else if outcome.is_none() {
            // A bare statement that panicked cannot be taken back alone.
            broken = true;
        }
        // A unit of work that panicked has no outcome: its reply is dropped,
        // and its caller hears that the store is gone.
        outcomes.extend(outcome);
    }
    if broken || undo_all {
        if let Err(err) = conn.execute_batch("ROLLBACK") {
            // Expected when SQLite already ended the transaction itself.
            tracing::debug!(error = %err, "SQLite rollback failed");
        }
        let ended: std::result::Result<(), String> = if broken {
            Err("the transaction failed; nothing was written".to_string())
        } else {
            Ok(())
        };
        for outcome in outcomes {
            (outcome.deliver)(ended.clone());
        }
        return;
    }
    let committed = conn
        .execute_batch("COMMIT")
        .map_err(|err| format!("the commit failed: {err}"));
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for outcome in outcomes {
        (outcome.deliver)(committed.clone());
    }
}

/// Runs a unit of work's future to its end on this thread. Statements on
/// SQLite never wait, so it completes on its first poll; one that does wait
/// (a bug: it awaited something else) or panics has no outcome, and is
/// undone like a failure.
fn run_now(run: BoxFuture<'_, Outcome>) -> Option<Outcome> {
    let mut run = AssertUnwindSafe(run).catch_unwind();
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(&mut run).poll(&mut context) {
        std::task::Poll::Ready(outcome) => outcome.ok(),
        std::task::Poll::Pending => {
            tracing::error!("a SQLite unit of work waited on something; it is undone");
            None
        }
    }
}

/// SQLite errors after which it has rolled the transaction back by itself
/// (out of memory, interrupt, I/O error, corruption, full disk, not a
/// database).
fn ends_the_transaction(err: &DbError) -> bool {
    let code = match err {
        DbError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => failure.extended_code,
        _ => return false,
    };
    matches!(code & 0xff, 7 | 9 | 10 | 11 | 13 | 26)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::AnyPool;

    async fn writer() -> (Writer, AnyPool, tempfile::TempDir) {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.db");
        let setup = rusqlite::Connection::open(&path).expect("open");
        setup
            .execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .expect("table");
        let writer = Writer::sqlite(&path).expect("writer");
        let reader = AnyPool::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("reader");
        (writer, reader, dir)
    }

    async fn insert(writer: &Writer, n: i64, keep: bool) -> Result<bool> {
        writer
            .write("insert", Shape::Statements, move |mut conn| {
                Box::pin(async move {
                    conn.execute("INSERT INTO t (n) VALUES ($1)", &[n.into()])
                        .await?;
                    Ok(if keep {
                        Commit::Keep(true)
                    } else {
                        Commit::Undo(false)
                    })
                })
            })
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_units_of_work_keep_or_undo_each_on_its_own() {
        let (writer, reader, _dir) = writer().await;
        let mut tasks = Vec::new();
        for n in 0..200i64 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(
                async move { insert(&writer, n, n % 2 == 0).await },
            ));
        }
        for (n, task) in tasks.into_iter().enumerate() {
            let answer = task.await.expect("task").expect("write");
            assert_eq!(answer, n % 2 == 0);
        }
        // A failing statement (duplicate key) fails only its own unit of work.
        let err = insert(&writer, 0, true).await.expect_err("duplicate");
        assert!(matches!(err, StoreError::Sqlite(_)), "{err:?}");
        let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(&reader)
            .await
            .expect("read");
        assert_eq!(rows, (0..200).step_by(2).collect::<Vec<i64>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_unit_of_work_is_undone_and_the_writer_goes_on() {
        let (writer, reader, _dir) = writer().await;
        let panicked = writer
            .write("panics", Shape::Statements, |mut conn| {
                Box::pin(async move {
                    conn.execute("INSERT INTO t (n) VALUES (7)", &[]).await?;
                    if !conn.is_postgres() {
                        panic!("a bug in a unit of work");
                    }
                    Ok(Commit::Keep(()))
                })
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Closed)));
        assert!(insert(&writer, 8, true).await.expect("writer still runs"));
        let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM t")
            .fetch_all(&reader)
            .await
            .expect("read");
        assert_eq!(rows, vec![8]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parameters_bind_by_number_not_by_first_appearance() {
        let (writer, reader, _dir) = writer().await;
        writer
            .write("out of order", Shape::Statements, |mut conn| {
                Box::pin(async move {
                    // $2 appears before $1: SQLite alone would bind 7 to $2.
                    conn.execute(
                        "INSERT INTO t (n) SELECT $2 WHERE $1 = 'x'",
                        &["x".into(), 7i64.into()],
                    )
                    .await?;
                    Ok(Commit::Keep(()))
                })
            })
            .await
            .expect("write");
        let rows: Vec<i64> = sqlx::query_scalar("SELECT n FROM t")
            .fetch_all(&reader)
            .await
            .expect("read");
        assert_eq!(rows, vec![7]);
    }
}
