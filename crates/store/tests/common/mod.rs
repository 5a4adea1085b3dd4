//! What the store's tests share: a store on each backend, made fresh.
//!
//! PostgreSQL is the one `scripts/test` starts (`TESSERA_TEST_POSTGRES_URL`);
//! without it a PostgreSQL test fails rather than pass having run nothing.
//! Each test binary compiles this module and uses what it needs of it.
#![allow(dead_code)]

use sqlx::{Connection, Executor, PgConnection, SqliteConnection};
use tessera_store::Store;

/// A store on a fresh SQLite file, open while the directory lives.
pub async fn sqlite() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(&Store::sqlite_url(&dir.path().join("tessera.db")))
        .await
        .expect("open SQLite");
    (store, dir)
}

/// A store on a fresh database of the test PostgreSQL; [`Dropper::drop`]
/// removes the database once the store is closed.
pub async fn postgres(prefix: &str) -> (Store, Dropper) {
    let database = empty_postgres(prefix).await;
    let store = Store::open(&database.url).await.expect("open PostgreSQL");
    (store, database)
}

/// A fresh PostgreSQL database with nothing in it (no migration run).
pub async fn empty_postgres(prefix: &str) -> Dropper {
    let admin_url = std::env::var("TESSERA_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "TESSERA_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which \
             starts a throwaway PostgreSQL"
        )
    });
    let name = format!("{prefix}_{:016x}", rand::random::<u64>());
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .expect("connect to the test PostgreSQL");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create a test database");
    let (base, _) = admin_url.rsplit_once('/').expect("a database URL");
    let url = format!("{base}/{name}");
    Dropper { admin, name, url }
}

/// The test database [`postgres`] made.
pub struct Dropper {
    admin: PgConnection,
    name: String,
    /// Where the database is, for a test's own connection to it.
    pub url: String,
}

impl Dropper {
    pub async fn drop(mut self) {
        self.admin
            .execute(format!("DROP DATABASE {} WITH (FORCE)", self.name).as_str())
            .await
            .expect("drop the test database");
    }
}

/// A plain connection to the store's database, for what another replica
/// writes.
pub enum Raw {
    Sqlite(String),
    Postgres(String),
}

impl Raw {
    pub async fn execute(&self, sql: &str) {
        match self {
            Raw::Sqlite(path) => {
                let mut conn = SqliteConnection::connect(&format!("sqlite://{path}"))
                    .await
                    .expect("connect to SQLite");
                conn.execute(sql).await.expect("a raw write");
            }
            Raw::Postgres(url) => {
                let mut conn = PgConnection::connect(url)
                    .await
                    .expect("connect to PostgreSQL");
                conn.execute(sql).await.expect("a raw write");
            }
        }
    }
}

/// The statement of the session that waits for a lock on PostgreSQL, once
/// there is one (`watch` is a connection of the test's own, to the same
/// database); fails after 30 s without one.
pub async fn lock_waiter(watch: &mut PgConnection) -> String {
    for _ in 0..600 {
        let waiting: Option<String> = sqlx::query_scalar(
            "SELECT query FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' LIMIT 1",
        )
        .fetch_optional(&mut *watch)
        .await
        .expect("a read");
        if let Some(waiting) = waiting {
            return waiting;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no session waits for a lock");
}

/// Waits until `n` sessions wait for a lock (`watch`: a connection of the
/// test's own to the same database); fails after 30 s.
pub async fn lock_waiters(watch: &mut PgConnection, n: i64) {
    for _ in 0..600 {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *watch)
        .await
        .expect("a read");
        if count >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} sessions wait for a lock");
}

/// A READY host `name` (id `id-<name>`) of CPUs `0..cpus` and `memory_mb`,
/// with `units` (none: a pooled host): its id.
pub async fn ready_host(
    store: &Store,
    name: &str,
    cpus: u32,
    memory_mb: i64,
    units: Vec<tessera_store::NewUnit>,
) -> String {
    let id = format!("id-{name}");
    let host = tessera_store::NewHost {
        id: id.clone(),
        hostname: name.into(),
        ip: "192.0.2.1".into(),
        region: "r".into(),
        zone: "z".into(),
        cpu_ranges: vec![format!("0-{}", cpus - 1)],
        numa_nodes: vec![],
        memory_mb,
        units,
        cpus: None,
        provider: None,
        plan: None,
        tags: vec![],
        arch: "amd64".into(),
    };
    assert!(store.insert_host(&host).await.expect("insert the host"));
    let ready = store
        .transition_host(
            &id,
            &[tessera_core::status::HostStatus::Initializing],
            tessera_core::status::HostStatus::Ready,
            None,
        )
        .await
        .expect("make the host READY");
    assert!(ready);
    id
}

/// How many of `subnet`'s address counts no transaction holds, on
/// PostgreSQL.
pub async fn counts_unlocked(watch: &mut PgConnection, subnet: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM (SELECT 1 FROM subnet_address_counts \
         WHERE subnet_id = '{subnet}' FOR UPDATE SKIP LOCKED) AS c"
    ))
    .fetch_one(watch)
    .await
    .expect("a read")
}

/// A connection of the test's own to PostgreSQL database `url`.
pub async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .expect("connect to PostgreSQL")
}

/// Makes every shard's address count of `subnet`, so that a write locks
/// one rather than making it.
pub async fn every_count_shard(conn: &mut PgConnection, subnet: &str) {
    conn.execute(
        format!(
            "INSERT INTO subnet_address_counts (subnet_id, shard, used) \
             SELECT '{subnet}', s, 0 FROM generate_series(0, 15) AS s \
             ON CONFLICT (subnet_id, shard) DO NOTHING"
        )
        .as_str(),
    )
    .await
    .expect("the count rows");
}

/// Two tests of `$check(&Store)`, `$name::on_sqlite` and
/// `$name::on_postgres`: on a fresh SQLite file, and on a fresh database
/// (`$prefix`) of the test PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($name:ident, $check:ident, $prefix:literal) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                let (store, _dir) = $crate::common::sqlite().await;
                super::$check(&store).await;
                store.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                let (store, database) = $crate::common::postgres($prefix).await;
                super::$check(&store).await;
                store.close().await;
                database.drop().await;
            }
        }
    };
}
