//! Persistence over SQLite (the embedded default) or PostgreSQL (for several
//! control-plane replicas), with one migration history per backend.
//!
//! Every query is written once, in the SQL both engines share (`$n`
//! parameters, `RETURNING`, `ON CONFLICT`), with BIGINT numbers and text
//! timestamps: reads through sqlx's `Any` driver, writes as units of work
//! against [`db::Conn`] (sqlx on PostgreSQL, rusqlite on SQLite's writer
//! thread, see [`writer`]). Concurrency is handled by conditional updates and
//! the CPU ledger's primary key, never by locks held across requests: every
//! write that can lose a race says so in its return value.

mod agents;
mod batch;
mod billing;
mod containers;
mod db;
mod deployments;
mod events;
mod hosts;
mod identity;
mod instances;
mod networks;
mod oauth;
mod operations;
mod pg;
mod policies;
mod quotas;
mod reader;
mod scripts;
mod secrets;
mod ssh_keys;
mod tags;
mod taskservs;
mod tokens;
mod units;
mod volumes;
mod writer;

pub use agents::{
    AgentChange, AgentChanges, AgentOffer, AgentRecord, HeartbeatNews, JoinTokenRecord,
    NewJoinToken, SessionRequestRecord, WorkRecord,
};
pub use billing::{Balance, FundsShort, now_ms};
pub use containers::{ContainerRecord, IngressRoute, IngressRule, InstanceUsage, NewContainer};
pub use deployments::{
    DeploymentChange, DeploymentRecord, InferenceKeyRecord, InferenceRequestRecord, NewReplica,
    ReplicaRecord,
};
pub use events::{EventRecord, NewEvent};
pub use hosts::{AgentOfferSeen, DecommissionStart, HostRecord, HostSighting, NewHost, NewUnit};
pub use identity::{MembershipRecord, NewUser, ProjectRecord, RefreshUse, UserRecord};
pub use instances::{
    CpuClaim, InstanceFilter, InstanceRecord, InstanceSurroundings, InstanceUpdate, InstancesAdded,
    NewInstance, Switch,
};
pub use networks::{
    Block, InstancePlace, NetworkAdded, NetworkRemoved, NewAttachment, NewVpc, SecurityGroupRecord,
    SubnetRecord, VpcRecord,
};
pub use oauth::OAuthClientRecord;
pub use operations::{
    CANCELLED_BY_DELETE, NewOperation, OperationEnd, OperationFilter, OperationRecord,
};
pub use policies::ProjectPolicyRecord;
pub use quotas::{QuotaCheck, QuotaExceeded, QuotaOverrides, Refusal, Usage};
pub use scripts::ScriptRecord;
pub use secrets::{Recorded, RegistryCredentialRecord, SecretRecord};
pub use sqlx::Error as SqlxError;
pub use ssh_keys::{KeyAdded, SshKeyRecord};
pub use tags::{TagAdded, TagRecord};
pub use taskservs::{NewTaskserv, TaskservRecord};
pub use tokens::{NewToken, TokenOwner, TokenRecord};
pub use units::{ClaimQuota, UnitClaim, UnitFilter, UnitRecord};
pub use volumes::{MeterChange, NewVolume, VolumeRecord, VolumeSet};

use db::{Arg, Conn};
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Executor};
use std::path::Path;
use std::str::FromStr;
use writer::{Shape, Work, Writer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot open the database")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply the database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database query failed")]
    Query(#[from] sqlx::Error),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("database statement failed")]
    Sqlite(#[source] rusqlite::Error),
    #[error("{0}")]
    Commit(String),
    #[error("the store is closed")]
    Closed,
    /// A write would have taken a project over a quota; nothing changed.
    #[error("{0}")]
    QuotaExceeded(QuotaExceeded),
    /// A write would have cost its project more than its balance covers;
    /// nothing changed.
    #[error("the balance does not cover an hour of what the project runs")]
    InsufficientFunds(billing::FundsShort),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<db::DbError> for StoreError {
    fn from(err: db::DbError) -> Self {
        match err {
            db::DbError::Sqlx(err) => StoreError::Query(err),
            db::DbError::Sqlite(err) => StoreError::Sqlite(err),
            db::DbError::MissingParameter(name) => {
                StoreError::Corrupt(format!("statement parameter {name} has no value"))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// This process, as the owner of the operations it drives.
    owner: std::sync::Arc<str>,
    /// Reads (see [`reader`]). On SQLite, connections that read the WAL
    /// beside the writer.
    read: std::sync::Arc<reader::Reader>,
    write: Writer,
    /// PostgreSQL's URL, for [`Store::agent_changes`]'s own connection.
    listen_url: Option<std::sync::Arc<str>>,
    /// On PostgreSQL, the Kloigos unit writes gathered into one statement
    /// under load (see [`batch`]).
    unit_batches: Option<std::sync::Arc<units::UnitBatches>>,
    /// On PostgreSQL, the writes of instances' creations gathered the same
    /// way (see `instances::batches`).
    instance_batches: Option<std::sync::Arc<instances::InstanceBatches>>,
    /// On PostgreSQL, the notices of agents' changes, gathered the same
    /// way (see `agents::NoticeBatch`).
    agent_notices: Option<std::sync::Arc<batch::Batcher<agents::NoticeBatch>>>,
    /// On SQLite, the changes to agents' credentials this process makes,
    /// for its listener (see [`Store::agent_changes`]).
    local_changes: Option<tokio::sync::broadcast::Sender<agents::AgentChange>>,
}

impl Store {
    /// Opens `url` (`sqlite://PATH` or `postgres://...`), creating an SQLite
    /// file if missing, and applies the migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let url = match backend {
            Backend::Postgres => with_statement_cache(url),
            Backend::Sqlite => url.to_string(),
        };
        let url = url.as_str();
        let options = AnyConnectOptions::from_str(url).map_err(StoreError::Connect)?;
        match backend {
            Backend::Sqlite => {
                restrict_sqlite_files(&sqlite_path(url)?)?;
                let mut conn = options.connect().await.map_err(StoreError::Connect)?;
                sqlite_pragmas(&mut conn)
                    .await
                    .map_err(StoreError::Connect)?;
                migrator(backend)
                    .run(&mut conn)
                    .await
                    .map_err(StoreError::Migrate)?;
                let _ = sqlx::Connection::close(conn).await;
                let path = sqlite_path(url)?;
                // The writer first: it keeps the WAL's files that the
                // read-only connections open.
                let write = Writer::sqlite(&path).map_err(StoreError::Sqlite)?;
                let read = std::sync::Arc::new(reader::Reader::Sqlite(
                    reader::SqliteReaders::new(path.clone()).map_err(StoreError::Sqlite)?,
                ));
                Ok(Store {
                    backend,
                    owner: new_owner(),
                    read,
                    write,
                    listen_url: None,
                    unit_batches: None,
                    instance_batches: None,
                    agent_notices: None,
                    local_changes: Some(tokio::sync::broadcast::channel(LOCAL_CHANGES).0),
                })
            }
            Backend::Postgres => {
                let pool = pg::PgPool::connect(options)
                    .await
                    .map_err(StoreError::Connect)?;
                migrator(backend)
                    .run(pool.sqlx())
                    .await
                    .map_err(StoreError::Migrate)?;
                Ok(Store {
                    backend,
                    owner: new_owner(),
                    read: std::sync::Arc::new(reader::Reader::Postgres(pool.clone())),
                    unit_batches: Some(std::sync::Arc::new(units::UnitBatches::start(&pool))),
                    instance_batches: Some(std::sync::Arc::new(instances::InstanceBatches::start(
                        &pool,
                    ))),
                    agent_notices: Some(std::sync::Arc::new(agents::NoticeBatch::start(&pool))),
                    write: Writer::Postgres(pool),
                    listen_url: Some(url.into()),
                    local_changes: None,
                })
            }
        }
    }

    /// This store as used by replica `owner`: the operations it drives are
    /// leased in that name, so a replica that restarts with the same name
    /// knows the leases it held are its own (see
    /// [`Store::acquire_operation`]). Without, a random name of its own.
    pub fn with_owner(mut self, owner: &str) -> Store {
        self.owner = owner.into();
        self
    }

    /// The name this store's operations are leased in.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The SQLite URL of the database file `path`, created when missing
    /// (see [`sqlite_path`] for the way back).
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        self.fetch_rows("SELECT 1", &[], Some(1)).await?;
        Ok(())
    }

    /// Refreshes PostgreSQL's planner statistics now, as after any bulk
    /// load: until autovacuum's next look (a minute or more), tables that
    /// grew a hundredfold keep the statistics of when they were small, and
    /// a page of instances is planned as a sort of every row of the
    /// project (13-18 ms at 10,000 instances instead of a fraction of a
    /// millisecond). SQLite plans without such statistics: nothing to do.
    pub async fn analyze(&self) -> Result<()> {
        if let Writer::Postgres(pool) = &self.write {
            let mut conn = pool.get().await?;
            let done = sqlx::query("ANALYZE").execute(&mut *conn).await;
            conn.release(&done);
            done?;
        }
        Ok(())
    }

    pub async fn close(&self) {
        if let Writer::Postgres(pool) = &self.write {
            pool.close().await;
        }
    }

    /// Runs `work` in a transaction (grouped with others on SQLite) and
    /// answers what it answered once its kept changes are durable.
    async fn write<T, F>(&self, what: &'static str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> Fn(Conn<'c>) -> Work<'c, T> + Send + Sync + 'static,
    {
        self.write.write(what, Shape::Statements, work).await
    }

    /// Runs fixed statements in one transaction; answers how many rows each
    /// changed. `keep` sees those counts and says whether to commit.
    async fn run_statements(
        &self,
        what: &'static str,
        statements: Vec<(String, Vec<Arg>)>,
        keep: fn(&[u64]) -> bool,
    ) -> Result<Vec<u64>> {
        let statements = std::sync::Arc::new(statements);
        self.write(what, move |mut conn| {
            let statements = statements.clone();
            Box::pin(async move {
                let mut counts = Vec::with_capacity(statements.len());
                for (sql, args) in statements.iter() {
                    counts.push(conn.execute(sql, args).await?);
                }
                Ok(match keep(&counts) {
                    true => writer::Commit::Keep(counts),
                    false => writer::Commit::Undo(counts),
                })
            })
        })
        .await
    }

    /// Runs `guard` and then `rest`, keeping their changes only if `guard`
    /// changed one row; answers whether it did. On PostgreSQL as one
    /// statement ([`db::guarded_statement`], whose conditions `rest` must
    /// meet), on SQLite as [`Store::run_statements`].
    async fn run_guarded(
        &self,
        what: &'static str,
        guard: (String, Vec<Arg>),
        rest: Vec<(String, Vec<Arg>)>,
    ) -> Result<bool> {
        if self.backend == Backend::Sqlite {
            let mut statements = vec![guard];
            statements.extend(rest);
            let counts = self.run_statements(what, statements, |c| c[0] == 1).await?;
            return Ok(counts[0] == 1);
        }
        let statement = std::sync::Arc::new(db::guarded_statement(&guard, &rest));
        let counts = self
            .write_one(what, move |mut conn| {
                let statement = statement.clone();
                Box::pin(async move {
                    let (sql, args) = &*statement;
                    Ok(writer::Commit::Keep(conn.fetch_ints(sql, args).await?))
                })
            })
            .await?;
        Ok(counts.first() == Some(&1))
    }

    /// One statement, kept whatever it changed (on PostgreSQL without a
    /// transaction around it); answers how many rows it changed.
    async fn run_statement(
        &self,
        what: &'static str,
        statement: (String, Vec<Arg>),
    ) -> Result<u64> {
        let statement = std::sync::Arc::new(statement);
        self.write_one(what, move |mut conn| {
            let statement = statement.clone();
            Box::pin(async move {
                let (sql, args) = &*statement;
                Ok(writer::Commit::Keep(conn.execute(sql, args).await?))
            })
        })
        .await
    }

    /// [`Store::run_statements`] holding a row lock first, on PostgreSQL
    /// (`lock` is a `SELECT ... FOR UPDATE` of one row by `$1`): writes
    /// that count rows before adding one (a project's secrets, a
    /// deployment's open requests) then run one after the other, as
    /// SQLite's single writer runs them, and no two both pass on the last
    /// free place.
    async fn run_statements_locked(
        &self,
        what: &'static str,
        lock: (&'static str, String),
        statements: Vec<(String, Vec<Arg>)>,
        keep: fn(&[u64]) -> bool,
    ) -> Result<Vec<u64>> {
        let work = std::sync::Arc::new((lock, statements));
        self.write(what, move |mut conn| {
            let work = work.clone();
            Box::pin(async move {
                let ((lock, key), statements) = &*work;
                if conn.is_postgres() {
                    conn.fetch_text(lock, &[key.into()]).await?;
                }
                let mut counts = Vec::with_capacity(statements.len());
                for (sql, args) in statements.iter() {
                    counts.push(conn.execute(sql, args).await?);
                }
                Ok(match keep(&counts) {
                    true => writer::Commit::Keep(counts),
                    false => writer::Commit::Undo(counts),
                })
            })
        })
        .await
    }

    /// [`Store::run_statements`] with `quota`'s check in the same
    /// transaction, after the statements (`quotas::enforce_written`):
    /// [`StoreError::QuotaExceeded`] (or [`StoreError::InsufficientFunds`]),
    /// changing nothing, when they take the project over a limit (or its
    /// balance).
    async fn run_statements_within(
        &self,
        what: &'static str,
        statements: Vec<(String, Vec<Arg>)>,
        keep: fn(&[u64]) -> bool,
        quota: Option<&QuotaCheck>,
    ) -> Result<Vec<u64>> {
        let Some(quota) = quota else {
            return self.run_statements(what, statements, keep).await;
        };
        let work = std::sync::Arc::new((statements, quota.clone()));
        let outcome = self
            .write(what, move |mut conn| {
                let work = work.clone();
                Box::pin(async move {
                    let (statements, quota) = &*work;
                    let mut counts = Vec::with_capacity(statements.len());
                    for (sql, args) in statements.iter() {
                        counts.push(conn.execute(sql, args).await?);
                    }
                    if !keep(&counts) {
                        return Ok(writer::Commit::Undo(Ok(counts)));
                    }
                    if let Some(refused) = quotas::enforce_written(&mut conn, quota).await? {
                        return Ok(writer::Commit::Undo(Err(refused)));
                    }
                    Ok(writer::Commit::Keep(Ok(counts)))
                })
            })
            .await?;
        outcome.map_err(StoreError::from)
    }

    /// Reads rows, at most `limit` of them (see [`reader`]).
    async fn fetch_rows(
        &self,
        sql: &str,
        args: &[Arg],
        limit: Option<usize>,
    ) -> Result<Vec<sqlx::any::AnyRow>> {
        match &*self.read {
            reader::Reader::Postgres(pool) => {
                let mut tries = 0;
                loop {
                    tries += 1;
                    let query = db::any_query(sql, args);
                    let mut conn = pool.get().await?;
                    let rows = match limit {
                        Some(1) => query
                            .fetch_optional(&mut *conn)
                            .await
                            .map(|row| row.into_iter().collect()),
                        _ => query.fetch_all(&mut *conn).await,
                    };
                    if !conn.release(&rows) || tries == pg::READ_TRIES {
                        return Ok(rows?);
                    }
                }
            }
            reader::Reader::Sqlite(readers) => Ok(readers.rows(sql, args, limit)?),
        }
    }

    /// Reads rows of a read that may return a whole table's worth (every
    /// host, every instance of a project): on SQLite, on a blocking
    /// thread, not inline like [`Store::fetch_rows`]. An inline read blocks
    /// its worker for as long as it takes; 10,000 hosts took 12-70 ms, and
    /// every request queued behind it on that worker waited as long (the
    /// loaded reads' p99 in `tessera bench fleet`). The hop to another
    /// thread costs microseconds, nothing next to such a read.
    async fn fetch_rows_bulk(&self, sql: &str, args: &[Arg]) -> Result<Vec<sqlx::any::AnyRow>> {
        match &*self.read {
            reader::Reader::Postgres(_) => self.fetch_rows(sql, args, None).await,
            reader::Reader::Sqlite(_) => {
                let read = self.read.clone();
                let (sql, args) = (sql.to_string(), args.to_vec());
                let rows = tokio::task::spawn_blocking(move || match &*read {
                    reader::Reader::Sqlite(readers) => readers.rows(&sql, &args, None),
                    reader::Reader::Postgres(_) => unreachable!("matched as SQLite above"),
                })
                .await;
                match rows {
                    Ok(rows) => Ok(rows?),
                    Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                    // The runtime is shutting down.
                    Err(_) => Err(StoreError::Closed),
                }
            }
        }
    }

    /// [`Store::fetch_rows_bulk`] as rows of `T`.
    async fn fetch_all_bulk<T>(&self, sql: &str, args: &[Arg]) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        Ok(self
            .fetch_rows_bulk(sql, args)
            .await?
            .iter()
            .map(T::from_row)
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Reads rows of `T` (see [`db::any_query`] for the parameters).
    async fn fetch_all<T>(&self, sql: &str, args: &[Arg]) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        Ok(self
            .fetch_rows(sql, args, None)
            .await?
            .iter()
            .map(T::from_row)
            .collect::<std::result::Result<_, _>>()?)
    }

    async fn fetch_optional<T>(&self, sql: &str, args: &[Arg]) -> Result<Option<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        Ok(self
            .fetch_rows(sql, args, Some(1))
            .await?
            .first()
            .map(T::from_row)
            .transpose()?)
    }

    /// [`Store::write`] for a single statement kept whatever it changed,
    /// which needs no savepoint of its own.
    async fn write_one<T, F>(&self, what: &'static str, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> Fn(Conn<'c>) -> Work<'c, T> + Send + Sync + 'static,
    {
        self.write.write(what, Shape::OneStatement, work).await
    }
}

/// Changes a SQLite store's listener may fall behind by before it hears
/// that it missed some (and wakes every waiter): a creation tells two or
/// three, and a burst of them must not wake every agent's long-poll.
const LOCAL_CHANGES: usize = 16_384;

/// Prepared statements each PostgreSQL connection keeps, unless the URL
/// says otherwise. sqlx keeps 100: fewer than the store's distinct
/// statements, so busy connections kept preparing (parsing and planning)
/// what they had just evicted.
const STATEMENT_CACHE: usize = 1024;

fn with_statement_cache(url: &str) -> String {
    if url.contains("statement-cache-capacity=") {
        return url.to_string();
    }
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}statement-cache-capacity={STATEMENT_CACHE}")
}

/// A name for this process, unique across replicas and restarts.
fn new_owner() -> std::sync::Arc<str> {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes).into()
}

/// The file of an SQLite URL, read as sqlx reads it (percent-decoding and
/// all), so that the writer opens the very file the migrations and reads
/// use. An in-memory database has no file to share and is refused.
fn sqlite_path(url: &str) -> Result<std::path::PathBuf> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(StoreError::Connect)?;
    let path = options.get_filename().to_path_buf();
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    if in_memory || path.as_os_str().is_empty() {
        return Err(StoreError::UnsupportedUrl(format!(
            "{url} (an in-memory SQLite database cannot be shared by readers and the writer; use a file)"
        )));
    }
    Ok(path)
}

/// The database holds every credential's hash and the key that signs
/// access tokens: its file and the WAL's are the owner's alone (`0600`).
/// A new file is made so before SQLite opens it (SQLite gives the WAL's
/// files the database's mode); files an older version made readable by
/// all are closed now.
fn restrict_sqlite_files(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| StoreError::Connect(sqlx::Error::Io(e));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                    Ok(()) => {}
                    // Not this process's file (a service user given a
                    // database root made): its owner decides.
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        tracing::warn!(file = ?file, error = %e, "the database file is readable by others, and this process may not change that");
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}

fn migrator(backend: Backend) -> sqlx::migrate::Migrator {
    match backend {
        Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
    }
}

/// WAL lets readers run beside the writer; synchronous=FULL makes every
/// commit durable across a power cut.
async fn sqlite_pragmas(conn: &mut AnyConnection) -> std::result::Result<(), sqlx::Error> {
    conn.execute("PRAGMA journal_mode = WAL").await?;
    conn.execute("PRAGMA synchronous = FULL").await?;
    conn.execute("PRAGMA busy_timeout = 10000").await?;
    conn.execute("PRAGMA foreign_keys = ON").await?;
    Ok(())
}

pub(crate) fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // PostgreSQL: serialization_failure, deadlock_detected.
            // SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
            Some("40001" | "40P01" | "5" | "6" | "261" | "517" | "262")
        ),
        sqlx::Error::PoolTimedOut => true,
        _ => false,
    }
}

/// Now, as stored: RFC 3339 in UTC with microseconds.
pub fn now() -> String {
    timestamp(chrono::Utc::now())
}

pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_files_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("there").permissions().mode() & 0o777;
        // A new database is made 0600 before SQLite opens it.
        let new = dir.path().join("new.db");
        restrict_sqlite_files(&new).expect("made");
        assert_eq!(mode(&new), 0o600);
        // An older version's files, readable by all, are closed.
        let old = dir.path().join("old.db");
        for file in ["old.db", "old.db-wal", "old.db-shm"] {
            let path = dir.path().join(file);
            std::fs::write(&path, b"x").expect("written");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                .expect("opened");
        }
        restrict_sqlite_files(&old).expect("closed");
        for file in ["old.db", "old.db-wal", "old.db-shm"] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        assert_eq!(std::fs::read(&old).expect("kept"), b"x");
    }

    #[test]
    fn the_writer_opens_the_file_sqlx_opens() {
        let path = sqlite_path("sqlite:///tmp/a%20b/tessera.db?mode=rwc").expect("a file");
        assert_eq!(path, std::path::PathBuf::from("/tmp/a b/tessera.db"));
        assert!(matches!(
            sqlite_path("sqlite::memory:"),
            Err(StoreError::UnsupportedUrl(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_path_with_escapes_is_one_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a b.db");
        let url = format!("sqlite://{}?mode=rwc", file.display()).replace(' ', "%20");
        let store = Store::open(&url).await.expect("open");
        store.setting_or_init("t1", "hash").await.expect("write");
        let value = store.setting_or_init("t1", "other").await.expect("read");
        assert_eq!(value, "hash");
        assert!(file.exists());
    }
}
