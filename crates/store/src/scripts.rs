//! Startup scripts a project's instances can run on first boot.

use crate::{Result, Store};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ScriptRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub script: String,
    pub created_at: String,
}

const SCRIPT_COLUMNS: &str = "id, project_id, name, script, created_at";

impl Store {
    /// Records a script unless the project already has `quota` of them:
    /// `false`, changing nothing, then.
    pub async fn insert_script(&self, script: &ScriptRecord, quota: i64) -> Result<bool> {
        let counts = self
            .run_statements(
                "insert_script",
                vec![(
                    format!(
                        "INSERT INTO startup_scripts ({SCRIPT_COLUMNS}) \
                         SELECT $1, $2, $3, $4, $5 WHERE \
                         (SELECT COUNT(*) FROM startup_scripts WHERE project_id = $2) < $6"
                    ),
                    vec![
                        (&script.id).into(),
                        (&script.project_id).into(),
                        (&script.name).into(),
                        (&script.script).into(),
                        (&script.created_at).into(),
                        quota.into(),
                    ],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// A page of a project's scripts, oldest first, and how many it has.
    pub async fn scripts(
        &self,
        project_id: &str,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ScriptRecord>, i64)> {
        let items = self
            .fetch_all(
                &format!(
                    "SELECT {SCRIPT_COLUMNS} FROM startup_scripts WHERE project_id = $1 \
                     ORDER BY created_at, id LIMIT $2 OFFSET $3"
                ),
                &[project_id.into(), limit.into(), offset.into()],
            )
            .await?;
        let total = self.count_scripts(project_id).await?;
        Ok((items, total))
    }

    async fn count_scripts(&self, project_id: &str) -> Result<i64> {
        #[derive(sqlx::FromRow)]
        struct Count {
            n: i64,
        }
        let count: Option<Count> = self
            .fetch_optional(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM startup_scripts WHERE project_id = $1",
                &[project_id.into()],
            )
            .await?;
        Ok(count.map_or(0, |c| c.n))
    }

    /// A project's script; another project's is `None`.
    pub async fn script(&self, project_id: &str, id: &str) -> Result<Option<ScriptRecord>> {
        self.fetch_optional(
            &format!(
                "SELECT {SCRIPT_COLUMNS} FROM startup_scripts WHERE id = $1 AND project_id = $2"
            ),
            &[id.into(), project_id.into()],
        )
        .await
    }

    /// Deletes the project's scripts among `ids`; answers how many went.
    pub async fn delete_scripts(&self, project_id: &str, ids: &[String]) -> Result<u64> {
        let statements = ids
            .iter()
            .map(|id| {
                (
                    "DELETE FROM startup_scripts WHERE id = $1 AND project_id = $2".to_string(),
                    vec![id.into(), project_id.into()],
                )
            })
            .collect();
        let counts = self
            .run_statements("delete_scripts", statements, |_| true)
            .await?;
        Ok(counts.iter().sum())
    }
}
