//! The SQLite and the PostgreSQL migration histories build the same schema.
//!
//! Both histories are applied for real (through [`Store::open`], as a server
//! applies them) to fresh databases, and each engine's catalogue is read back
//! and reduced to [`Fact`]s that mean the same on both: tables, columns with
//! their nullability and a coarse type class, primary keys, UNIQUE
//! constraints and named indexes with their columns. The test compares those
//! facts, not the SQL text, so `INTEGER` against `BIGINT` is no difference
//! while a column, an index or a NOT NULL that one history lacks is.
//!
//! PostgreSQL is the one `scripts/test` starts (`TESSERA_TEST_POSTGRES_URL`);
//! without it the test fails rather than pass having compared nothing.

use sqlx::{Connection, Executor, PgConnection, SqliteConnection};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use tessera_store::Store;

/// The bookkeeping table sqlx keeps its applied migrations in.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// What a column holds, as coarsely as both engines can agree on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TypeClass {
    Text,
    Integer,
    Other,
}

impl TypeClass {
    /// A type as SQLite's migrations declare it (`pragma_table_info.type`).
    fn of_sqlite(declared: &str) -> TypeClass {
        match declared.trim().to_ascii_uppercase().as_str() {
            "TEXT" => TypeClass::Text,
            "INTEGER" | "BIGINT" | "INT" | "SMALLINT" => TypeClass::Integer,
            _ => TypeClass::Other,
        }
    }

    /// A type as PostgreSQL names it (`information_schema.columns.data_type`).
    fn of_postgres(data_type: &str) -> TypeClass {
        match data_type {
            "text" => TypeClass::Text,
            "bigint" | "integer" | "smallint" => TypeClass::Integer,
            _ => TypeClass::Other,
        }
    }
}

/// One thing a schema says, in terms both engines share. Constraint-backed
/// indexes are named by what they are (their engine-chosen names differ:
/// `sqlite_autoindex_hosts_1` against `hosts_hostname_key`); indexes made
/// with `CREATE INDEX` by their own name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fact {
    Table(String),
    Column {
        table: String,
        column: String,
        class: TypeClass,
        nullable: bool,
    },
    PrimaryKey {
        table: String,
        columns: Vec<String>,
    },
    Unique {
        table: String,
        columns: Vec<String>,
    },
    Index {
        name: String,
        table: String,
        columns: Vec<String>,
        unique: bool,
        partial: bool,
    },
}

impl fmt::Display for Fact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fact::Table(name) => write!(f, "table {name}"),
            Fact::Column {
                table,
                column,
                class,
                nullable,
            } => {
                let class = match class {
                    TypeClass::Text => "text",
                    TypeClass::Integer => "integer",
                    TypeClass::Other => "other type",
                };
                let null = if *nullable { "NULL" } else { "NOT NULL" };
                write!(f, "column {table}.{column}: {class} {null}")
            }
            Fact::PrimaryKey { table, columns } => {
                write!(f, "primary key of {table} ({})", columns.join(", "))
            }
            Fact::Unique { table, columns } => {
                write!(f, "UNIQUE constraint on {table} ({})", columns.join(", "))
            }
            Fact::Index {
                name,
                table,
                columns,
                unique,
                partial,
            } => {
                let unique = if *unique { "unique " } else { "" };
                let partial = if *partial { " (partial)" } else { "" };
                write!(
                    f,
                    "{unique}index {name} on {table} ({}){partial}",
                    columns.join(", ")
                )
            }
        }
    }
}

type Schema = BTreeSet<Fact>;

/// Stands for a column of an index that is an expression, not a column.
const EXPRESSION: &str = "<expression>";

/// A column of an SQLite index, as `pragma_index_list` and
/// `pragma_index_info` describe it.
#[derive(sqlx::FromRow)]
struct SqliteIndexColumn {
    table_name: String,
    index_name: String,
    is_unique: i64,
    /// "pk" (primary key), "u" (UNIQUE constraint) or "c" (CREATE INDEX).
    origin: String,
    is_partial: i64,
    /// None for an expression.
    column_name: Option<String>,
}

/// A PostgreSQL index, from `pg_index`.
#[derive(sqlx::FromRow)]
struct PostgresIndex {
    table_name: String,
    index_name: String,
    is_unique: bool,
    is_partial: bool,
    /// "p" (primary key) or "u" (UNIQUE constraint) when it backs one.
    constraint_type: Option<String>,
    columns: Vec<String>,
}

/// The schema of an SQLite database, from `sqlite_master` and its pragmas.
async fn sqlite_schema(conn: &mut SqliteConnection) -> Schema {
    let mut schema = Schema::new();
    // SQLite's own tables (`sqlite_sequence`, `sqlite_stat1`) are no part
    // of the migrations.
    let tables = "SELECT name FROM sqlite_master \
                  WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_' AND name <> $1";

    let columns: Vec<(String, String, String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT t.name, c.name, c.type, c.\"notnull\", c.pk \
         FROM ({tables}) AS t JOIN pragma_table_info(t.name) AS c \
         ORDER BY t.name, c.cid"
    ))
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *conn)
    .await
    .expect("read SQLite's columns");
    let mut primary_keys: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for (table, column, declared, not_null, pk) in columns {
        schema.insert(Fact::Table(table.clone()));
        // A primary key is NOT NULL on PostgreSQL whatever it says; SQLite
        // (for all but INTEGER PRIMARY KEY) lets one hold NULL unless it
        // also says NOT NULL, an old quirk of the engine that the same
        // migration text cannot undo. Count a primary key as NOT NULL on
        // both, so the comparison is of what the migrations meant.
        schema.insert(Fact::Column {
            table: table.clone(),
            column: column.clone(),
            class: TypeClass::of_sqlite(&declared),
            nullable: not_null == 0 && pk == 0,
        });
        if pk > 0 {
            primary_keys.entry(table).or_default().push((pk, column));
        }
    }
    // From the columns, not `pragma_index_list`: an INTEGER PRIMARY KEY is
    // the rowid and has no index to list.
    for (table, mut columns) in primary_keys {
        columns.sort();
        schema.insert(Fact::PrimaryKey {
            table,
            columns: columns.into_iter().map(|(_, name)| name).collect(),
        });
    }

    // One row per column of each index, in order.
    let index_columns: Vec<SqliteIndexColumn> = sqlx::query_as(&format!(
        "SELECT t.name AS table_name, i.name AS index_name, i.\"unique\" AS is_unique, \
                i.origin, i.partial AS is_partial, c.name AS column_name \
         FROM ({tables}) AS t \
         JOIN pragma_index_list(t.name) AS i \
         JOIN pragma_index_info(i.name) AS c \
         ORDER BY t.name, i.name, c.seqno"
    ))
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *conn)
    .await
    .expect("read SQLite's indexes");
    let mut indexes: BTreeMap<(String, String), (SqliteIndexColumn, Vec<String>)> = BTreeMap::new();
    for row in index_columns {
        let column = row
            .column_name
            .clone()
            .unwrap_or_else(|| EXPRESSION.to_string());
        indexes
            .entry((row.table_name.clone(), row.index_name.clone()))
            .or_insert_with(|| (row, Vec::new()))
            .1
            .push(column);
    }
    for ((table, name), (index, columns)) in indexes {
        match index.origin.as_str() {
            // Already taken from the columns above.
            "pk" => {}
            // A UNIQUE constraint; "c" is CREATE INDEX.
            "u" => {
                schema.insert(Fact::Unique { table, columns });
            }
            _ => {
                schema.insert(Fact::Index {
                    name,
                    table,
                    columns,
                    unique: index.is_unique != 0,
                    partial: index.is_partial != 0,
                });
            }
        }
    }
    schema
}

/// The schema of a PostgreSQL database's current schema (`public`), from
/// `information_schema` and `pg_index`.
async fn postgres_schema(conn: &mut PgConnection) -> Schema {
    let mut schema = Schema::new();
    // information_schema's columns are of domain types sqlx does not map;
    // hence the casts to text.
    let columns: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text, c.data_type::text, c.is_nullable::text \
         FROM information_schema.columns AS c \
         JOIN information_schema.tables AS t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
           AND c.table_name <> $1 \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *conn)
    .await
    .expect("read PostgreSQL's columns");
    for (table, column, data_type, is_nullable) in columns {
        schema.insert(Fact::Table(table.clone()));
        schema.insert(Fact::Column {
            table,
            column,
            class: TypeClass::of_postgres(&data_type),
            nullable: is_nullable == "YES",
        });
    }

    // Each index with its key columns in order (attnum 0 is an expression),
    // whether it is partial, and the constraint it backs, if any.
    let indexes: Vec<PostgresIndex> = sqlx::query_as(
        "SELECT t.relname::text AS table_name, i.relname::text AS index_name, \
                x.indisunique AS is_unique, x.indpred IS NOT NULL AS is_partial, \
                con.contype::text AS constraint_type, \
                ARRAY(SELECT COALESCE(a.attname::text, $2) \
                      FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) \
                      LEFT JOIN pg_attribute AS a \
                        ON a.attrelid = t.oid AND a.attnum = k.attnum \
                      ORDER BY k.n) AS columns \
         FROM pg_index AS x \
         JOIN pg_class AS i ON i.oid = x.indexrelid \
         JOIN pg_class AS t ON t.oid = x.indrelid \
         JOIN pg_namespace AS ns ON ns.oid = t.relnamespace \
         LEFT JOIN pg_constraint AS con \
           ON con.conindid = x.indexrelid AND con.contype IN ('p', 'u') \
         WHERE ns.nspname = current_schema() AND t.relname <> $1 \
         ORDER BY t.relname, i.relname",
    )
    .bind(MIGRATIONS_TABLE)
    .bind(EXPRESSION)
    .fetch_all(&mut *conn)
    .await
    .expect("read PostgreSQL's indexes");
    for index in indexes {
        let PostgresIndex {
            table_name: table,
            index_name: name,
            is_unique: unique,
            is_partial: partial,
            constraint_type,
            columns,
        } = index;
        match constraint_type.as_deref() {
            Some("p") => schema.insert(Fact::PrimaryKey { table, columns }),
            Some("u") => schema.insert(Fact::Unique { table, columns }),
            _ => schema.insert(Fact::Index {
                name,
                table,
                columns,
                unique,
                partial,
            }),
        };
    }
    schema
}

/// What each side has that the other lacks, or `None` if they agree.
fn difference(sqlite: &Schema, postgres: &Schema) -> Option<String> {
    let only_sqlite: Vec<_> = sqlite.difference(postgres).collect();
    let only_postgres: Vec<_> = postgres.difference(sqlite).collect();
    if only_sqlite.is_empty() && only_postgres.is_empty() {
        return None;
    }
    let mut report = String::from(
        "the SQLite and PostgreSQL migrations (crates/store/migrations/) build different schemas\n",
    );
    for (side, facts) in [("SQLite", &only_sqlite), ("PostgreSQL", &only_postgres)] {
        report.push_str(&format!("only in {side} ({}):\n", facts.len()));
        if facts.is_empty() {
            report.push_str("    (nothing)\n");
        }
        for fact in facts {
            report.push_str(&format!("    {fact}\n"));
        }
    }
    Some(report)
}

/// A fresh SQLite file and a fresh PostgreSQL database, each migrated by
/// [`Store::open`], with a plain connection to read (or change) each.
struct Migrated {
    sqlite: SqliteConnection,
    postgres: PgConnection,
    admin_url: String,
    postgres_name: String,
    _dir: tempfile::TempDir,
}

impl Migrated {
    async fn new() -> Migrated {
        let admin_url = std::env::var("TESSERA_TEST_POSTGRES_URL").unwrap_or_else(|_| {
            panic!(
                "TESSERA_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which \
                 starts a throwaway PostgreSQL"
            )
        });

        let dir = tempfile::tempdir().expect("a temporary directory");
        let sqlite_url = Store::sqlite_url(&dir.path().join("tessera.db"));
        let store = Store::open(&sqlite_url)
            .await
            .expect("apply the SQLite migrations");
        store.close().await;
        let sqlite = SqliteConnection::connect(&sqlite_url)
            .await
            .expect("connect to the SQLite database");

        let postgres_name = format!("tessera_schema_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to the test PostgreSQL");
        admin
            .execute(format!("CREATE DATABASE {postgres_name}").as_str())
            .await
            .expect("create a test database");
        admin.close().await.expect("disconnect from PostgreSQL");
        let (base, _) = admin_url.rsplit_once('/').expect("a database URL");
        let postgres_url = format!("{base}/{postgres_name}");
        let store = Store::open(&postgres_url)
            .await
            .expect("apply the PostgreSQL migrations");
        store.close().await;
        let postgres = PgConnection::connect(&postgres_url)
            .await
            .expect("connect to the test database");

        Migrated {
            sqlite,
            postgres,
            admin_url,
            postgres_name,
            _dir: dir,
        }
    }

    async fn schemas(&mut self) -> (Schema, Schema) {
        (
            sqlite_schema(&mut self.sqlite).await,
            postgres_schema(&mut self.postgres).await,
        )
    }

    /// Drops the PostgreSQL database (the SQLite file goes with its
    /// directory). Only after the assertions: a failed test leaves its
    /// database to look at.
    async fn remove(self) {
        let _ = self.sqlite.close().await;
        let _ = self.postgres.close().await;
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let drop = format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.postgres_name
            );
            let _ = admin.execute(drop.as_str()).await;
            let _ = admin.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_migrations_build_the_same_schema() {
    let mut migrated = Migrated::new().await;
    let (sqlite, postgres) = migrated.schemas().await;

    // Two empty readings would agree; make sure something was read.
    for (side, schema) in [("SQLite", &sqlite), ("PostgreSQL", &postgres)] {
        for table in ["hosts", "instances", "operations", "events"] {
            assert!(
                schema.contains(&Fact::Table(table.to_string())),
                "{side} has no table {table} after its migrations: {schema:#?}"
            );
        }
    }
    if let Some(report) = difference(&sqlite, &postgres) {
        panic!("{report}");
    }
    migrated.remove().await;
}

/// The comparison notices what it is there to notice, on either side: an
/// extra column, a lost NOT NULL, an extra unique index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_difference_is_reported() {
    let mut migrated = Migrated::new().await;
    migrated
        .sqlite
        .execute("ALTER TABLE hosts ADD COLUMN rack TEXT")
        .await
        .expect("add a column on SQLite");
    migrated
        .postgres
        .execute(
            "ALTER TABLE agents ALTER COLUMN driver DROP NOT NULL; \
             CREATE UNIQUE INDEX hosts_by_ip ON hosts (ip)",
        )
        .await
        .expect("change the PostgreSQL schema");
    let (sqlite, postgres) = migrated.schemas().await;

    let column = |table: &str, column: &str, nullable| Fact::Column {
        table: table.to_string(),
        column: column.to_string(),
        class: TypeClass::Text,
        nullable,
    };
    let only_sqlite: Schema = sqlite.difference(&postgres).cloned().collect();
    let only_postgres: Schema = postgres.difference(&sqlite).cloned().collect();
    assert_eq!(
        only_sqlite,
        Schema::from([
            column("hosts", "rack", true),
            column("agents", "driver", false)
        ])
    );
    assert_eq!(
        only_postgres,
        Schema::from([
            column("agents", "driver", true),
            Fact::Index {
                name: "hosts_by_ip".to_string(),
                table: "hosts".to_string(),
                columns: vec!["ip".to_string()],
                unique: true,
                partial: false,
            },
        ])
    );
    let report = difference(&sqlite, &postgres).expect("a difference");
    assert!(
        report.contains("column hosts.rack: text NULL")
            && report.contains("unique index hosts_by_ip on hosts (ip)"),
        "{report}"
    );
    migrated.remove().await;
}
