//! Taskservs and what their scripts did on each server.

use crate::db::Arg;
use crate::operations::{NewOperation, operation_insert};
use crate::{Result, Store, now};
use tessera_core::status::TaskservStatus;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TaskservRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub version: String,
    pub config: String,
    pub servers: String,
    pub status: String,
    pub results: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug)]
pub struct NewTaskserv {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub version: String,
    pub config: serde_json::Value,
    pub servers: Vec<String>,
}

const TASKSERV_COLUMNS: &str =
    "id, project_id, name, version, config, servers, status, results, created_at, updated_at";

impl Store {
    /// Records a taskserv, `pending`, with the operation that installs it.
    pub async fn insert_taskserv(&self, taskserv: &NewTaskserv, op: &NewOperation) -> Result<()> {
        let at = now();
        self.run_statements(
            "insert_taskserv",
            vec![
                (
                    format!(
                        "INSERT INTO taskservs ({TASKSERV_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, 'pending', '{{}}', $7, $7)"
                    ),
                    vec![
                        (&taskserv.id).into(),
                        (&taskserv.project_id).into(),
                        (&taskserv.name).into(),
                        (&taskserv.version).into(),
                        taskserv.config.to_string().into(),
                        serde_json::to_string(&taskserv.servers)
                            .unwrap_or_default()
                            .into(),
                        at.into(),
                    ],
                ),
                operation_insert(op),
            ],
            |_| true,
        )
        .await?;
        Ok(())
    }

    pub async fn taskserv(&self, id: &str) -> Result<Option<TaskservRecord>> {
        self.fetch_optional(
            &format!("SELECT {TASKSERV_COLUMNS} FROM taskservs WHERE id = $1"),
            &[id.into()],
        )
        .await
    }

    /// A project's taskservs that are not removed, oldest first.
    pub async fn taskservs(&self, project_id: &str) -> Result<Vec<TaskservRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {TASKSERV_COLUMNS} FROM taskservs WHERE project_id = $1 \
                 AND status <> 'removed' ORDER BY created_at, id"
            ),
            &[project_id.into()],
        )
        .await
    }

    /// Sets a taskserv's status and per-server results.
    pub async fn set_taskserv(
        &self,
        id: &str,
        status: TaskservStatus,
        results: &serde_json::Value,
    ) -> Result<()> {
        self.run_statements(
            "set_taskserv",
            vec![(
                "UPDATE taskservs SET status = $1, results = $2, updated_at = $3 WHERE id = $4"
                    .into(),
                vec![
                    status.as_str().into(),
                    results.to_string().into(),
                    now().into(),
                    id.into(),
                ],
            )],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Starts removing a taskserv that is not being changed: it becomes
    /// `removing` and `op` is recorded. `false`, changing nothing, when it
    /// is pending, installing, removing or removed.
    pub async fn begin_taskserv_removal(&self, id: &str, op: &NewOperation) -> Result<bool> {
        let statements: Vec<(String, Vec<Arg>)> = vec![
            (
                "UPDATE taskservs SET status = 'removing', updated_at = $1 \
                 WHERE id = $2 AND status IN ('running', 'failed')"
                    .into(),
                vec![now().into(), id.into()],
            ),
            operation_insert(op),
        ];
        let counts = self
            .run_statements("begin_taskserv_removal", statements, |c| c[0] == 1)
            .await?;
        Ok(counts[0] == 1)
    }
}
