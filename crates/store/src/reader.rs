//! Reads, whichever the backend.
//!
//! PostgreSQL reads go through sqlx's pool. SQLite reads go through
//! rusqlite connections of this process's own, run where the caller is:
//! sqlx's SQLite driver hands every statement to a worker thread and back,
//! and on a fleet's hot paths (a creation reads a few dozen rows by key)
//! those two thread switches cost more than SQLite does. A read of WAL
//! never waits for the writer, so it blocks its caller only for its own
//! few microseconds. Rows come back as sqlx's `AnyRow`, made as the sqlx
//! driver makes them (each value typed by what SQLite stored), so every
//! `FromRow` of the store reads both backends alike.

use crate::db::{Arg, DbError, sqlite_statement};
use sqlx::any::AnyRow;
use sqlx_core::any::{AnyColumn, AnyTypeInfo, AnyTypeInfoKind, AnyValue, AnyValueKind};
use sqlx_core::ext::ustr::UStr;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Where reads go.
pub(crate) enum Reader {
    Postgres(crate::pg::PgPool),
    Sqlite(SqliteReaders),
}

/// Idle read connections to one SQLite file, opened as needed.
pub(crate) struct SqliteReaders {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

/// The most idle connections kept; more are opened while needed.
const MAX_IDLE: usize = 16;

impl SqliteReaders {
    pub(crate) fn new(path: PathBuf) -> Result<SqliteReaders, rusqlite::Error> {
        let readers = SqliteReaders {
            path,
            idle: Mutex::new(Vec::new()),
        };
        // Opening one now makes a wrong path an error at start.
        let first = readers.open()?;
        readers.give_back(first);
        Ok(readers)
    }

    fn open(&self) -> Result<rusqlite::Connection, rusqlite::Error> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
            | rusqlite::OpenFlags::SQLITE_OPEN_URI;
        let conn = rusqlite::Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(256);
        Ok(conn)
    }

    fn give_back(&self, conn: rusqlite::Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// The rows of `sql`, at most `limit` of them.
    pub(crate) fn rows(
        &self,
        sql: &str,
        args: &[Arg],
        limit: Option<usize>,
    ) -> Result<Vec<AnyRow>, DbError> {
        let taken = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match taken {
            Some(conn) => conn,
            None => self.open()?,
        };
        let rows = read_rows(&conn, sql, args, limit);
        // A connection whose read failed may be in any state: it goes.
        if rows.is_ok() {
            self.give_back(conn);
        }
        rows
    }
}

/// Reads the rows of `sql` on `conn` as sqlx's rows, at most `limit`.
pub(crate) fn read_rows(
    conn: &rusqlite::Connection,
    sql: &str,
    args: &[Arg],
    limit: Option<usize>,
) -> Result<Vec<AnyRow>, DbError> {
    let mut statement = sqlite_statement(conn, sql, args)?;
    let count = statement.column_count();
    let mut names = sqlx_core::HashMap::with_capacity(count);
    let mut columns = Vec::with_capacity(count);
    for (ordinal, name) in statement.column_names().into_iter().enumerate() {
        names.insert(UStr::new(name), ordinal);
        columns.push(AnyColumn {
            ordinal,
            name: UStr::new(name),
            type_info: AnyTypeInfo {
                kind: AnyTypeInfoKind::Null,
            },
        });
    }
    let names = Arc::new(names);
    let mut out = Vec::new();
    let mut rows = statement.raw_query();
    while limit.is_none_or(|l| out.len() < l) {
        let Some(row) = rows.next()? else { break };
        let mut values = Vec::with_capacity(count);
        for i in 0..count {
            use rusqlite::types::ValueRef;
            let kind = match row.get_ref(i)? {
                ValueRef::Null => AnyValueKind::Null(AnyTypeInfoKind::Null),
                ValueRef::Integer(n) => AnyValueKind::BigInt(n),
                ValueRef::Real(x) => AnyValueKind::Double(x),
                ValueRef::Text(bytes) => AnyValueKind::Text(Cow::Owned(
                    std::str::from_utf8(bytes)
                        .map_err(|e| DbError::Sqlite(rusqlite::Error::Utf8Error(e)))?
                        .to_string(),
                )),
                ValueRef::Blob(bytes) => AnyValueKind::Blob(Cow::Owned(bytes.to_vec())),
            };
            values.push(AnyValue { kind });
        }
        out.push(AnyRow {
            column_names: names.clone(),
            columns: columns.clone(),
            values,
        });
    }
    Ok(out)
}
