//! The connection a unit of work writes through, whichever the backend.
//!
//! PostgreSQL goes through sqlx. SQLite writes go through rusqlite on the
//! writer's own thread: sqlx's SQLite driver hands every statement to a
//! worker thread and back, and those hops, not SQLite, were most of the
//! cost of a write. A unit of work is written once against [`Conn`], in the
//! SQL both engines share, with `$n` parameters.

use sqlx::AnyConnection;

/// A statement parameter.
#[derive(Clone, Debug)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
    /// A NULL text.
    Null,
    /// A NULL integer. PostgreSQL types a statement's parameters when it is
    /// first prepared, so a NULL must have the type of the values the same
    /// statement binds at other times.
    NullInt,
}

impl From<&str> for Arg {
    fn from(value: &str) -> Self {
        Arg::Text(value.to_string())
    }
}

impl From<&String> for Arg {
    fn from(value: &String) -> Self {
        Arg::Text(value.clone())
    }
}

impl From<String> for Arg {
    fn from(value: String) -> Self {
        Arg::Text(value)
    }
}

impl From<i64> for Arg {
    fn from(value: i64) -> Self {
        Arg::Int(value)
    }
}

// NULLs take the type of what the statement binds at other times (see
// `Arg::NullInt`), so each optional type converts on its own.
impl From<Option<&str>> for Arg {
    fn from(value: Option<&str>) -> Self {
        value.map_or(Arg::Null, Into::into)
    }
}

impl From<Option<&String>> for Arg {
    fn from(value: Option<&String>) -> Self {
        value.map_or(Arg::Null, Into::into)
    }
}

impl From<Option<String>> for Arg {
    fn from(value: Option<String>) -> Self {
        value.map_or(Arg::Null, Into::into)
    }
}

impl From<Option<i64>> for Arg {
    fn from(value: Option<i64>) -> Self {
        value.map_or(Arg::NullInt, Arg::Int)
    }
}

/// Why a statement failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("parameter {0} of a statement has no value")]
    MissingParameter(String),
}

/// One connection inside a transaction.
pub(crate) enum Conn<'c> {
    Postgres(&'c mut AnyConnection),
    Sqlite(&'c mut rusqlite::Connection),
}

impl Conn<'_> {
    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self, Conn::Postgres(_))
    }

    /// Runs a statement; answers how many rows it changed.
    pub(crate) async fn execute(&mut self, sql: &str, args: &[Arg]) -> Result<u64, DbError> {
        match self {
            Conn::Postgres(conn) => Ok(any_query(sql, args)
                .execute(&mut **conn)
                .await?
                .rows_affected()),
            Conn::Sqlite(conn) => {
                let mut statement = sqlite_statement(conn, sql, args)?;
                if statement.column_count() == 0 {
                    return Ok(statement.raw_execute()? as u64);
                }
                // A statement with RETURNING: step it to its end, then count.
                let mut rows = statement.raw_query();
                while rows.next()?.is_some() {}
                drop(rows);
                drop(statement);
                Ok(conn.changes())
            }
        }
    }

    /// The first column of the first row, as an integer, if there is a row.
    pub(crate) async fn fetch_int(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Option<i64>, DbError> {
        Ok(self
            .fetch_column::<i64>(sql, args)
            .await?
            .into_iter()
            .next())
    }

    /// Every column of the first row, as integers (empty: no row).
    pub(crate) async fn fetch_ints(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<i64>, DbError> {
        match self {
            Conn::Postgres(conn) => {
                // Every row read, to the statement's end: sqlx's `Any`
                // answers `fetch_optional` at the first row, before the
                // server's word that the statement (alone, without a
                // transaction, it commits there) went through, and an
                // error it sends after the row would go unheard.
                let rows = any_query(sql, args).fetch_all(&mut **conn).await?;
                let Some(row) = rows.into_iter().next() else {
                    return Ok(Vec::new());
                };
                (0..sqlx::Row::len(&row))
                    .map(|n| sqlx::Row::try_get::<i64, _>(&row, n).map_err(DbError::from))
                    .collect()
            }
            Conn::Sqlite(conn) => {
                let mut statement = sqlite_statement(conn, sql, args)?;
                let columns = statement.column_count();
                let mut rows = statement.raw_query();
                let Some(row) = rows.next()? else {
                    return Ok(Vec::new());
                };
                (0..columns)
                    .map(|n| row.get::<_, i64>(n).map_err(DbError::from))
                    .collect()
            }
        }
    }

    /// The first column of every row, as text.
    pub(crate) async fn fetch_texts(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<String>, DbError> {
        self.fetch_column::<String>(sql, args).await
    }

    /// The first column of every row. Steps the statement to its end, so a
    /// `RETURNING` statement is done with when this answers.
    async fn fetch_column<T>(&mut self, sql: &str, args: &[Arg]) -> Result<Vec<T>, DbError>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any> + rusqlite::types::FromSql,
    {
        match self {
            Conn::Postgres(conn) => {
                let rows = any_query(sql, args).fetch_all(&mut **conn).await?;
                Ok(rows
                    .iter()
                    .map(|r| sqlx::Row::try_get::<T, _>(r, 0))
                    .collect::<Result<_, _>>()?)
            }
            Conn::Sqlite(conn) => {
                let mut statement = sqlite_statement(conn, sql, args)?;
                let mut rows = statement.raw_query();
                let mut values = Vec::new();
                while let Some(row) = rows.next()? {
                    values.push(row.get(0)?);
                }
                Ok(values)
            }
        }
    }

    /// Every row, whole: for a statement with `RETURNING`, which is
    /// stepped to its end.
    pub(crate) async fn fetch_rows(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<sqlx::any::AnyRow>, DbError> {
        match self {
            Conn::Postgres(conn) => Ok(any_query(sql, args).fetch_all(&mut **conn).await?),
            Conn::Sqlite(conn) => crate::reader::read_rows(conn, sql, args, None),
        }
    }

    /// The first column of the first row, as text, if there is a row.
    pub(crate) async fn fetch_text(
        &mut self,
        sql: &str,
        args: &[Arg],
    ) -> Result<Option<String>, DbError> {
        Ok(self.fetch_texts(sql, args).await?.into_iter().next())
    }
}

/// The condition of a page that starts after `(at, id)` in the order of the
/// columns `at_column, id_column`, with its two parameters added to `args`.
///
/// A row-value comparison, not `at > $a OR (at = $a AND id > $b)`: both
/// stores seek an index on `(..., at, id)` to the row-value's start, while
/// PostgreSQL reads the `OR` as a filter over every row before it, so
/// page n of a list cost n pages (61 ms for a page of 500 at 100,000).
pub(crate) fn after_cursor(
    args: &mut Vec<Arg>,
    (at_column, id_column): (&str, &str),
    (at, id): &(String, String),
) -> String {
    args.push(at.into());
    args.push(id.into());
    let (a, b) = (args.len() - 1, args.len());
    format!("({at_column}, {id_column}) > (${a}, ${b})")
}

/// `sql` with each `$n` parameter made `$(n + by)`.
pub(crate) fn shift_parameters(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// One PostgreSQL statement that runs every one of `statements` (each an
/// `INSERT`, `UPDATE` or `DELETE` without `RETURNING`); its one row counts
/// the rows each changed. A transaction of the same statements costs one
/// round trip each; this is one. They share one snapshot, so none may
/// need to see another's change (foreign keys are checked at the
/// statement's end, so rows may refer to rows another inserts), and no
/// two may change the same row.
pub(crate) fn combined_statement(statements: &[(String, Vec<Arg>)]) -> (String, Vec<Arg>) {
    with_counts(statements, |_, statement| statement)
}

/// [`combined_statement`] after `first`, common table expressions
/// (`name AS (...)`, each with its parameters from `$1`) that the
/// statements may refer to by name; its row counts the statements' rows,
/// then answers each of `more` (expressions over `first`).
pub(crate) fn combined_statement_after(
    first: &[(String, Vec<Arg>)],
    statements: &[(String, Vec<Arg>)],
    more: &[String],
) -> (String, Vec<Arg>) {
    let mut ctes = Vec::with_capacity(first.len());
    let mut args = Vec::new();
    for (cte, cte_args) in first {
        ctes.push(shift_parameters(cte, args.len()));
        args.extend(cte_args.iter().cloned());
    }
    let shifted: Vec<(String, Vec<Arg>)> = statements
        .iter()
        .map(|(sql, statement_args)| (shift_parameters(sql, args.len()), statement_args.clone()))
        .collect();
    let (rest, rest_args) = combined_statement(&shifted);
    let mut sql = match rest.strip_prefix("WITH ") {
        Some(rest) if !ctes.is_empty() => format!("WITH {}, {rest}", ctes.join(", ")),
        _ => rest,
    };
    for expression in more {
        sql.push_str(", ");
        sql.push_str(expression);
    }
    args.extend(rest_args);
    (sql, args)
}

/// One PostgreSQL statement that runs `guard` and each of `rest` only if
/// `guard` changed a row; its one row counts what each changed, `guard`
/// first: [`combined_statement`] with the guard ANDed to each of `rest`,
/// which must be `UPDATE`s ending in their `WHERE` clause (without a
/// top-level `OR`).
pub(crate) fn guarded_statement(
    guard: &(String, Vec<Arg>),
    rest: &[(String, Vec<Arg>)],
) -> (String, Vec<Arg>) {
    let mut statements = vec![guard.clone()];
    statements.extend(rest.iter().cloned());
    with_counts(&statements, |n, statement| {
        if n == 0 {
            return statement;
        }
        debug_assert!(
            statement.starts_with("UPDATE ")
                && statement
                    .rsplit_once(" WHERE ")
                    .is_some_and(|(_, condition)| !condition.contains(" OR ")),
            "not an UPDATE ending in a WHERE of ANDs: {statement}"
        );
        format!("{statement} AND EXISTS (SELECT 1 FROM s0)")
    })
}

/// `WITH s0 AS (... RETURNING 1), s1 AS (...) SELECT` the count of each,
/// the `n`th statement as `shape(n, it)` with its parameters renumbered.
fn with_counts(
    statements: &[(String, Vec<Arg>)],
    shape: impl Fn(usize, String) -> String,
) -> (String, Vec<Arg>) {
    let mut ctes = Vec::with_capacity(statements.len());
    let mut args = Vec::new();
    for (n, (statement, statement_args)) in statements.iter().enumerate() {
        debug_assert!(
            !statement.contains("RETURNING"),
            "a statement of its own RETURNING: {statement}"
        );
        let statement = shape(n, shift_parameters(statement, args.len()));
        ctes.push(format!("s{n} AS ({statement} RETURNING 1)"));
        args.extend(statement_args.iter().cloned());
    }
    let counts: Vec<String> = (0..statements.len())
        .map(|n| format!("(SELECT COUNT(*) FROM s{n})"))
        .collect();
    (
        format!("WITH {} SELECT {}", ctes.join(", "), counts.join(", ")),
        args,
    )
}

/// A query with `args` bound to its `$n` parameters, in order.
pub(crate) fn any_query<'q>(
    sql: &'q str,
    args: &'q [Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text.as_str()),
            Arg::Int(n) => query.bind(*n),
            Arg::Null => query.bind(None::<String>),
            Arg::NullInt => query.bind(None::<i64>),
        };
    }
    query
}

/// A cached statement with `$n` parameters bound by number, as sqlx binds
/// them (SQLite numbers named parameters by first appearance instead).
pub(crate) fn sqlite_statement<'c>(
    conn: &'c rusqlite::Connection,
    sql: &str,
    args: &[Arg],
) -> Result<rusqlite::CachedStatement<'c>, DbError> {
    let mut statement = conn.prepare_cached(sql)?;
    for index in 1..=statement.parameter_count() {
        let name = statement
            .parameter_name(index)
            .unwrap_or_default()
            .to_string();
        let arg = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| args.get(n.checked_sub(1)?))
            .ok_or(DbError::MissingParameter(name))?;
        match arg {
            Arg::Text(text) => statement.raw_bind_parameter(index, text)?,
            Arg::Int(n) => statement.raw_bind_parameter(index, n)?,
            Arg::Null | Arg::NullInt => {
                statement.raw_bind_parameter(index, rusqlite::types::Null)?
            }
        }
    }
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_shift_wherever_they_are() {
        assert_eq!(
            shift_parameters("SET a = $1, b = COALESCE($10, b) WHERE x > $1", 3),
            "SET a = $4, b = COALESCE($13, b) WHERE x > $4"
        );
        assert_eq!(shift_parameters("no parameters", 5), "no parameters");
        assert_eq!(shift_parameters("a lone $ sign", 2), "a lone $ sign");
    }

    #[test]
    fn a_guarded_statement_runs_the_rest_only_after_its_guard() {
        let (sql, args) = guarded_statement(
            &(
                "UPDATE a SET s = $1 WHERE id = $2".into(),
                vec!["x".into(), "1".into()],
            ),
            &[
                (
                    "UPDATE b SET t = $1 WHERE id = $2".into(),
                    vec!["y".into(), "2".into()],
                ),
                ("UPDATE c SET u = $1 WHERE id = $1".into(), vec!["3".into()]),
            ],
        );
        assert_eq!(
            sql,
            "WITH s0 AS (UPDATE a SET s = $1 WHERE id = $2 RETURNING 1), \
             s1 AS (UPDATE b SET t = $3 WHERE id = $4 AND EXISTS (SELECT 1 FROM s0) RETURNING 1), \
             s2 AS (UPDATE c SET u = $5 WHERE id = $5 AND EXISTS (SELECT 1 FROM s0) RETURNING 1) \
             SELECT (SELECT COUNT(*) FROM s0), (SELECT COUNT(*) FROM s1), (SELECT COUNT(*) FROM s2)"
        );
        assert_eq!(args.len(), 5);
    }

    #[test]
    fn a_combined_statement_counts_each_of_its_statements() {
        let (sql, args) = combined_statement(&[
            ("INSERT INTO a (x) VALUES ($1)".into(), vec!["x".into()]),
            (
                "INSERT INTO b (y, z) VALUES ($2, $1)".into(),
                vec!["z".into(), "y".into()],
            ),
        ]);
        assert_eq!(
            sql,
            "WITH s0 AS (INSERT INTO a (x) VALUES ($1) RETURNING 1), \
             s1 AS (INSERT INTO b (y, z) VALUES ($3, $2) RETURNING 1) \
             SELECT (SELECT COUNT(*) FROM s0), (SELECT COUNT(*) FROM s1)"
        );
        assert_eq!(args.len(), 3);
    }
}
