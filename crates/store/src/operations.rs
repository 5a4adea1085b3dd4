//! Operations: every long action, persisted before it starts.
//!
//! An operation is driven by one process at a time, which holds a lease on
//! it (`lease_until`) and renews it at each step. A process that dies stops
//! renewing; once the lease has passed, any process may take the operation
//! over and finish or unwind it from its step log.

use crate::db::Arg;
use crate::writer::Commit;
use crate::{Result, Store, now};
use sqlx::FromRow;
use tessera_core::status::{OperationKind, OperationStatus};

#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OperationRecord {
    pub id: String,
    pub project_id: String,
    pub kind: String,
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    pub resource_id: Option<String>,
    /// JSON: what the operation was asked to do.
    pub params: String,
    /// JSON list of the steps done so far.
    pub steps: String,
    /// JSON, once completed.
    pub result: Option<String>,
    pub error: Option<String>,
    pub cancel_requested: i64,
    pub lease_until: Option<String>,
    pub created_by: String,
    pub created_at: String,
    pub updated_at: String,
    /// How many times a process took it up.
    pub attempts: i64,
    /// Why the last attempt stopped short, while it is retried.
    pub last_error: Option<String>,
}

impl OperationRecord {
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

#[derive(Clone, Debug)]
pub struct NewOperation {
    pub id: String,
    pub project_id: String,
    pub kind: OperationKind,
    pub resource_id: Option<String>,
    pub params: serde_json::Value,
    pub created_by: String,
}

/// An operation's `cancel_requested` once a cancel was asked for.
pub const CANCELLED: i64 = 1;
/// An operation's `cancel_requested` once a delete of what it makes
/// superseded it.
pub const CANCELLED_BY_DELETE: i64 = 2;

/// How an operation ended.
#[derive(Clone, Debug)]
pub struct OperationEnd<'a> {
    pub id: &'a str,
    /// `Completed`, `Failed` or `Cancelled`.
    pub status: OperationStatus,
    pub result: Option<&'a serde_json::Value>,
    pub error: Option<&'a str>,
}

#[derive(Clone, Debug, Default)]
pub struct OperationFilter {
    pub project_id: Option<String>,
    pub kind: Option<OperationKind>,
    pub status: Option<OperationStatus>,
    /// Operations of these kinds are left out.
    pub hidden_kinds: Vec<OperationKind>,
    /// Only operations after this `(created_at, id)`, for paging.
    pub after: Option<(String, String)>,
    pub limit: Option<i64>,
}

pub(crate) const OPERATION_COLUMNS: &str = "id, project_id, kind, status, resource_id, params, steps, result, \
     error, cancel_requested, lease_until, created_by, created_at, updated_at, attempts, last_error";

pub(crate) fn operation_insert(op: &NewOperation) -> (String, Vec<Arg>) {
    operation_row(op, &now(), None)
}

/// An operation inserted already taken by `owner` until `lease_until`,
/// for a process that drives it at once: the `running` row a take of a
/// `pending` one would leave, without the take's write, and that row.
pub(crate) fn operation_insert_taken(
    op: &NewOperation,
    owner: &str,
    lease_until: &str,
) -> ((String, Vec<Arg>), OperationRecord) {
    let record = operation_taken(op, lease_until);
    let insert = operation_row(op, &record.created_at, Some((owner, lease_until)));
    (insert, record)
}

/// The row [`operation_insert_taken`] inserts, made now, for a batch that
/// writes it with its own statement.
pub(crate) fn operation_taken(op: &NewOperation, lease_until: &str) -> OperationRecord {
    let at = now();
    OperationRecord {
        id: op.id.clone(),
        project_id: op.project_id.clone(),
        kind: op.kind.as_str().to_string(),
        status: OperationStatus::Running.as_str().to_string(),
        resource_id: op.resource_id.clone(),
        params: op.params.to_string(),
        steps: "[]".into(),
        result: None,
        error: None,
        cancel_requested: 0,
        lease_until: Some(lease_until.to_string()),
        created_by: op.created_by.clone(),
        created_at: at.clone(),
        updated_at: at.clone(),
        attempts: 1,
        last_error: None,
    }
}

/// The insert of a new operation at `at`: `pending`, or `running` and
/// taken by `(owner, until)`.
fn operation_row(op: &NewOperation, at: &str, taken: Option<(&str, &str)>) -> (String, Vec<Arg>) {
    let status = match taken {
        Some(_) => OperationStatus::Running,
        None => OperationStatus::Pending,
    };
    (
        format!(
            "INSERT INTO operations ({OPERATION_COLUMNS}, lease_owner) \
             VALUES ($1, $2, $3, $8, $4, $5, '[]', NULL, NULL, 0, $9, $6, $7, $7, $10, NULL, $11)"
        ),
        vec![
            (&op.id).into(),
            (&op.project_id).into(),
            op.kind.as_str().into(),
            op.resource_id.as_ref().into(),
            op.params.to_string().into(),
            (&op.created_by).into(),
            at.into(),
            status.as_str().into(),
            taken.map(|(_, until)| until).into(),
            i64::from(taken.is_some()).into(),
            taken.map(|(owner, _)| owner).into(),
        ],
    )
}

/// Ends an operation this process drives (`owner`).
pub(crate) fn operation_finish(
    id: &str,
    status: OperationStatus,
    result: Option<&serde_json::Value>,
    error: Option<&str>,
    owner: &str,
) -> (String, Vec<Arg>) {
    (
        "UPDATE operations SET status = $1, result = $2, error = $3, lease_until = NULL, \
         updated_at = $4 WHERE id = $5 AND status = 'running' AND lease_owner = $6"
            .into(),
        vec![
            status.as_str().into(),
            result.map(|r| r.to_string()).into(),
            error.into(),
            now().into(),
            id.into(),
            owner.into(),
        ],
    )
}

/// Records the steps done (`steps`, the step log as JSON) and extends the
/// lease of an operation this process drives (`owner`).
pub(crate) fn operation_progress(
    id: &str,
    steps: &str,
    lease_until: &str,
    owner: &str,
) -> (String, Vec<Arg>) {
    (
        "UPDATE operations SET steps = $1, lease_until = $2, updated_at = $3 \
         WHERE id = $4 AND status = 'running' AND lease_owner = $5"
            .into(),
        vec![
            steps.into(),
            lease_until.into(),
            now().into(),
            id.into(),
            owner.into(),
        ],
    )
}

impl Store {
    pub async fn insert_operation(&self, op: &NewOperation) -> Result<()> {
        self.run_statement("insert_operation", operation_insert(op))
            .await?;
        Ok(())
    }

    pub async fn operation(&self, id: &str) -> Result<Option<OperationRecord>> {
        self.fetch_optional(
            &format!("SELECT {OPERATION_COLUMNS} FROM operations WHERE id = $1"),
            &[id.into()],
        )
        .await
    }

    /// Oldest first.
    pub async fn operations(&self, filter: &OperationFilter) -> Result<Vec<OperationRecord>> {
        let mut conditions = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        for (column, value) in [
            ("project_id", filter.project_id.as_deref()),
            ("kind", filter.kind.map(OperationKind::as_str)),
            ("status", filter.status.map(OperationStatus::as_str)),
        ] {
            if let Some(value) = value {
                args.push(value.into());
                conditions.push(format!("{column} = ${}", args.len()));
            }
        }
        if !filter.hidden_kinds.is_empty() {
            let mut slots = Vec::with_capacity(filter.hidden_kinds.len());
            for kind in &filter.hidden_kinds {
                args.push(kind.as_str().into());
                slots.push(format!("${}", args.len()));
            }
            conditions.push(format!("kind NOT IN ({})", slots.join(", ")));
        }
        if let Some(after) = &filter.after {
            conditions.push(crate::db::after_cursor(
                &mut args,
                ("created_at", "id"),
                after,
            ));
        }
        let mut sql = format!("SELECT {OPERATION_COLUMNS} FROM operations");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY created_at, id");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {}", limit.max(0)));
        }
        self.fetch_all(&sql, &args).await
    }

    /// Takes an unfinished operation to drive it, unless another replica
    /// holds an unexpired lease on it: it becomes `running`, leased until
    /// `lease_until`. With `reclaim`, a lease this replica holds itself is
    /// taken back at once (a restarted replica's: nothing of it still
    /// drives the operation; the caller makes sure of that in-process).
    /// Answers it as taken, or `None`.
    pub async fn acquire_operation(
        &self,
        id: &str,
        lease_until: &str,
        reclaim: bool,
    ) -> Result<Option<OperationRecord>> {
        // The operation as taken comes back with the change: no read after.
        let sql = std::sync::Arc::new(format!(
            "UPDATE operations SET status = 'running', lease_until = $1, updated_at = $2, \
             lease_owner = $4, attempts = attempts + 1 WHERE id = $3 AND status IN ('pending', 'running') \
             AND (lease_until IS NULL OR lease_until < $2 OR (lease_owner = $4 AND $5 = 1)) \
             RETURNING {OPERATION_COLUMNS}"
        ));
        let args = std::sync::Arc::new(vec![
            lease_until.into(),
            now().into(),
            id.into(),
            self.owner.as_ref().into(),
            i64::from(reclaim).into(),
        ]);
        let rows = self
            .write_one("acquire_operation", move |mut conn| {
                let (sql, args) = (sql.clone(), args.clone());
                Box::pin(async move { Ok(Commit::Keep(conn.fetch_rows(&sql, &args).await?)) })
            })
            .await?;
        Ok(rows.first().map(OperationRecord::from_row).transpose()?)
    }

    /// Extends this process's lease on an operation it drives; `false` when
    /// it is no longer this process's (or has ended).
    pub async fn renew_operation_lease(&self, id: &str, lease_until: &str) -> Result<bool> {
        let changed = self
            .run_statement(
                "renew_operation_lease",
                (
                    "UPDATE operations SET lease_until = $1 \
                     WHERE id = $2 AND status = 'running' AND lease_owner = $3"
                        .into(),
                    vec![lease_until.into(), id.into(), self.owner.as_ref().into()],
                ),
            )
            .await?;
        Ok(changed == 1)
    }

    /// Notes why this process's attempt at an operation stopped short.
    pub async fn note_operation_error(&self, id: &str, error: &str) -> Result<()> {
        self.run_statement(
            "note_operation_error",
            (
                "UPDATE operations SET last_error = $1, updated_at = $2 \
                 WHERE id = $3 AND status = 'running' AND lease_owner = $4"
                    .into(),
                vec![
                    error.into(),
                    now().into(),
                    id.into(),
                    self.owner.as_ref().into(),
                ],
            ),
        )
        .await?;
        Ok(())
    }

    /// Records progress (the step log, as JSON); `false` when the
    /// operation is no longer running.
    pub async fn record_operation_progress(
        &self,
        id: &str,
        steps: &str,
        lease_until: &str,
    ) -> Result<bool> {
        let changed = self
            .run_statement(
                "record_operation_progress",
                operation_progress(id, steps, lease_until, &self.owner),
            )
            .await?;
        Ok(changed == 1)
    }

    /// Ends an operation with no resource of its own to update.
    pub async fn finish_operation(
        &self,
        id: &str,
        status: OperationStatus,
        result: Option<&serde_json::Value>,
        error: Option<&str>,
    ) -> Result<bool> {
        let changed = self
            .run_statement(
                "finish_operation",
                operation_finish(id, status, result, error, &self.owner),
            )
            .await?;
        Ok(changed == 1)
    }

    /// Asks an unfinished operation to stop; `false` when it has finished.
    pub async fn request_operation_cancel(&self, id: &str) -> Result<bool> {
        self.request_cancel(id, CANCELLED).await
    }

    /// [`Store::request_operation_cancel`] of a creation, for a delete of
    /// what it makes: the operation's `cancel_requested` says so
    /// ([`CANCELLED_BY_DELETE`]), whatever cancel was asked before or after.
    pub async fn request_operation_cancel_by_delete(&self, id: &str) -> Result<bool> {
        self.request_cancel(id, CANCELLED_BY_DELETE).await
    }

    async fn request_cancel(&self, id: &str, how: i64) -> Result<bool> {
        let changed = self
            .run_statement(
                "request_operation_cancel",
                (
                    "UPDATE operations SET cancel_requested = CASE WHEN cancel_requested = $3 \
                     THEN $3 ELSE $4 END, updated_at = $1 \
                     WHERE id = $2 AND status IN ('pending', 'running')"
                        .into(),
                    vec![
                        now().into(),
                        id.into(),
                        CANCELLED_BY_DELETE.into(),
                        how.into(),
                    ],
                ),
            )
            .await?;
        Ok(changed == 1)
    }

    /// Unfinished operations that no process holds a live lease on.
    /// Unfinished operations this replica holds the lease of.
    pub async fn own_operations(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self
            .fetch_all(
                "SELECT id FROM operations WHERE status IN ('pending', 'running') \
                 AND lease_owner = $1 ORDER BY created_at, id",
                &[self.owner.as_ref().into()],
            )
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Unfinished operations of kind `kind` on `resource_id`.
    pub async fn unfinished_operations_on(
        &self,
        kind: &str,
        resource_id: &str,
    ) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self
            .fetch_all(
                "SELECT id FROM operations WHERE status IN ('pending', 'running') \
                 AND kind = $1 AND resource_id = $2 ORDER BY created_at, id",
                &[kind.into(), resource_id.into()],
            )
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn orphaned_operations(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self
            .fetch_all(
                "SELECT id FROM operations WHERE status IN ('pending', 'running') \
                 AND (lease_until IS NULL OR lease_until < $1) ORDER BY created_at, id",
                &[now().into()],
            )
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// How many operations of `kind` made by `created_by` an instance (or
    /// other resource) has had since `since` (a store timestamp).
    pub async fn operations_since(
        &self,
        resource_id: &str,
        kind: OperationKind,
        created_by: &str,
        since: &str,
    ) -> Result<i64> {
        let rows: Vec<(i64,)> = self
            .fetch_all(
                "SELECT COUNT(*) FROM operations WHERE resource_id = $1 AND kind = $2 \
                 AND created_by = $3 AND created_at >= $4",
                &[
                    resource_id.into(),
                    kind.as_str().into(),
                    created_by.into(),
                    since.into(),
                ],
            )
            .await?;
        Ok(rows.first().map_or(0, |(n,)| *n))
    }

    /// How many operations are pending and running: on the status index,
    /// so it costs what is under way, whatever history the table keeps.
    pub async fn active_operation_counts(&self) -> Result<Vec<(String, i64)>> {
        self.fetch_all(
            "SELECT status, COUNT(*) AS n FROM operations \
             WHERE status IN ('pending', 'running') GROUP BY status ORDER BY status",
            &[],
        )
        .await
    }

    /// How many operations are in each status: every row read.
    pub async fn operation_counts(&self) -> Result<Vec<(String, i64)>> {
        self.fetch_all_bulk(
            "SELECT status, COUNT(*) AS n FROM operations GROUP BY status ORDER BY status",
            &[],
        )
        .await
    }
}
