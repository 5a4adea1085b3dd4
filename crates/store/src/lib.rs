//! Persistence over SQLite (the embedded default) or PostgreSQL (for several
//! control-plane replicas), with one migration history per backend.
//!
//! Queries are written once against sqlx's `Any` driver, in the SQL both
//! engines share (`$n` parameters, `RETURNING`, `ON CONFLICT`), with BIGINT
//! numbers and text timestamps. Concurrency is handled by conditional updates
//! and the CPU ledger's primary key, never by locks held across requests:
//! every write that can lose a race says so in its return value.

mod hosts;
mod tokens;
mod units;

pub use hosts::{DecommissionStart, HostRecord, NewHost, NewUnit};
pub use sqlx::Error as SqlxError;
pub use tokens::TokenRecord;
pub use units::{UnitClaim, UnitFilter, UnitRecord};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

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
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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
    /// Reads. On SQLite a few connections that read the WAL concurrently.
    read: AnyPool,
    /// Writes. On SQLite a single connection, since SQLite has one writer
    /// anyway and a queue in-process beats SQLITE_BUSY retries.
    write: AnyPool,
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
        let options = AnyConnectOptions::from_str(url).map_err(StoreError::Connect)?;
        let store = match backend {
            Backend::Sqlite => {
                let read = sqlite_pool(4).connect_with(options.clone()).await;
                let write = sqlite_pool(1).connect_with(options).await;
                Store {
                    backend,
                    read: read.map_err(StoreError::Connect)?,
                    write: write.map_err(StoreError::Connect)?,
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await
                    .map_err(StoreError::Connect)?;
                Store {
                    backend,
                    read: pool.clone(),
                    write: pool,
                }
            }
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The SQLite URL of the database file `path`, created when missing.
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator.run(&self.write).await.map_err(StoreError::Migrate)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    /// Runs one transactional attempt, again when the database reports a
    /// transient conflict (PostgreSQL serialization failure or deadlock,
    /// SQLite busy), up to a few times with a growing pause.
    async fn retrying<T, F, Fut>(&self, what: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let mut pause = Duration::from_millis(2);
        for tries in 1.. {
            match attempt().await {
                Err(err) if tries < 8 && is_transient(&err) => {
                    tracing::debug!(what, tries, error = %err, "transient conflict, retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other.map_err(StoreError::from),
            }
        }
        unreachable!("the retry loop returns")
    }
}

fn sqlite_pool(connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(connections)
        .min_connections(connections)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _| {
            Box::pin(async move {
                // WAL lets readers run beside the writer; synchronous=FULL
                // keeps every commit durable across a power cut.
                conn.execute("PRAGMA journal_mode = WAL").await?;
                conn.execute("PRAGMA synchronous = FULL").await?;
                conn.execute("PRAGMA busy_timeout = 10000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                Ok(())
            })
        })
}

fn is_transient(err: &sqlx::Error) -> bool {
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
