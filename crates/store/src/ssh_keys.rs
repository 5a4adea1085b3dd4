//! SSH public keys a project's instances can be given. Each also has a
//! number within its project, the integer id the containers API shows.

use crate::db::{Conn, DbError};
use crate::writer::Commit;
use crate::{QuotaCheck, Result, Store, StoreError};
use std::sync::Arc;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SshKeyRecord {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: String,
    /// Its number within its project, from 1, in the order keys were added.
    pub number: i64,
}

const KEY_COLUMNS: &str = "id, project_id, name, public_key, fingerprint, created_at, number";

/// How adding a key went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAdded {
    /// Added with this number.
    Added(i64),
    /// The project has a key of that name; nothing changed.
    NameTaken,
}

impl Store {
    /// Adds a key (its `number` is chosen here: the project's next, never
    /// one given before), after `quota`'s check in
    /// the same transaction ([`StoreError::QuotaExceeded`], changing
    /// nothing, over a limit). The project's row is locked on PostgreSQL,
    /// so racing additions number their keys one after the other.
    pub async fn insert_ssh_key(
        &self,
        key: &SshKeyRecord,
        quota: Option<&QuotaCheck>,
    ) -> Result<KeyAdded> {
        let work = Arc::new((key.clone(), quota.cloned()));
        let outcome = self
            .write("insert_ssh_key", move |mut conn| {
                let work = work.clone();
                Box::pin(async move {
                    let (key, quota) = &*work;
                    insert_key(&mut conn, key, quota.as_ref()).await
                })
            })
            .await?;
        outcome.map_err(StoreError::QuotaExceeded)
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

    /// A project's key by its number.
    pub async fn ssh_key_numbered(
        &self,
        project_id: &str,
        number: i64,
    ) -> Result<Option<SshKeyRecord>> {
        self.fetch_optional(
            &format!("SELECT {KEY_COLUMNS} FROM ssh_keys WHERE project_id = $1 AND number = $2"),
            &[project_id.into(), number.into()],
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

async fn insert_key(
    conn: &mut Conn<'_>,
    key: &SshKeyRecord,
    quota: Option<&QuotaCheck>,
) -> std::result::Result<Commit<std::result::Result<KeyAdded, crate::QuotaExceeded>>, DbError> {
    if conn.is_postgres() {
        conn.fetch_text(crate::quotas::LOCK_PROJECT, &[(&key.project_id).into()])
            .await?;
    }
    if let Some(quota) = quota
        && let Some(exceeded) = crate::quotas::enforce(conn, quota).await?
    {
        return Ok(Commit::Undo(Err(exceeded)));
    }
    // Undone with the rest when the name is taken.
    let number = conn
        .fetch_int(
            "UPDATE projects SET ssh_keys_numbered = ssh_keys_numbered + 1 WHERE id = $1 \
             RETURNING ssh_keys_numbered",
            &[(&key.project_id).into()],
        )
        .await?
        .unwrap_or(1);
    let added = conn
        .execute(
            &format!(
                "INSERT INTO ssh_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (project_id, name) DO NOTHING"
            ),
            &[
                (&key.id).into(),
                (&key.project_id).into(),
                (&key.name).into(),
                (&key.public_key).into(),
                (&key.fingerprint).into(),
                (&key.created_at).into(),
                number.into(),
            ],
        )
        .await?;
    Ok(match added {
        1 => Commit::Keep(Ok(KeyAdded::Added(number))),
        _ => Commit::Undo(Ok(KeyAdded::NameTaken)),
    })
}
