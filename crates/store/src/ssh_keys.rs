//! SSH public keys a project's instances can be given.

use crate::{Result, Store};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SshKeyRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: String,
}

const KEY_COLUMNS: &str = "id, project_id, name, public_key, fingerprint, created_at";

impl Store {
    /// `false`, changing nothing, when the project has a key of that name.
    pub async fn insert_ssh_key(&self, key: &SshKeyRecord) -> Result<bool> {
        let counts = self
            .run_statements(
                "insert_ssh_key",
                vec![(
                    format!(
                        "INSERT INTO ssh_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (project_id, name) DO NOTHING"
                    ),
                    vec![
                        (&key.id).into(),
                        (&key.project_id).into(),
                        (&key.name).into(),
                        (&key.public_key).into(),
                        (&key.fingerprint).into(),
                        (&key.created_at).into(),
                    ],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    pub async fn ssh_keys(&self, project_id: &str) -> Result<Vec<SshKeyRecord>> {
        self.fetch_all(
            &format!("SELECT {KEY_COLUMNS} FROM ssh_keys WHERE project_id = $1 ORDER BY name"),
            &[project_id.into()],
        )
        .await
    }

    /// A project's key; another project's is `None`.
    pub async fn ssh_key(&self, project_id: &str, id: &str) -> Result<Option<SshKeyRecord>> {
        self.fetch_optional(
            &format!("SELECT {KEY_COLUMNS} FROM ssh_keys WHERE id = $1 AND project_id = $2"),
            &[id.into(), project_id.into()],
        )
        .await
    }

    pub async fn delete_ssh_key(&self, project_id: &str, id: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "delete_ssh_key",
                vec![(
                    "DELETE FROM ssh_keys WHERE id = $1 AND project_id = $2".into(),
                    vec![id.into(), project_id.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }
}
