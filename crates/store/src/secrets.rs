//! A project's secrets, file secrets and container registry credentials.
//! The store keeps what they hold sealed (the app seals and opens it); it
//! sees only names, kinds, file names and times.

use crate::{Result, Store};

/// A secret: a value (`kind` `generic`) or a set of files (`file`).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SecretRecord {
    pub project_id: String,
    pub name: String,
    pub kind: String,
    /// JSON: the names of a file secret's files (`[]` for a value).
    pub file_names: String,
    /// What the app sealed.
    pub sealed: String,
    pub created_at: String,
}

/// Credentials for a container registry.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RegistryCredentialRecord {
    pub project_id: String,
    pub name: String,
    /// The registry's kind: `dockerhub`, `ghcr`, `custom`, ...
    pub kind: String,
    pub sealed: String,
    pub created_at: String,
}

/// What recording a secret or credentials did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Added,
    /// The project has one of that name already; nothing changed.
    NameTaken,
    /// The project has `limit` already; nothing changed.
    Full,
}

const SECRET_COLUMNS: &str = "project_id, name, kind, file_names, sealed, created_at";
const CREDENTIAL_COLUMNS: &str = "project_id, name, kind, sealed, created_at";

impl Store {
    /// Records a secret unless its name is taken or the project has
    /// `limit` secrets.
    pub async fn insert_secret(&self, secret: &SecretRecord, limit: i64) -> Result<Recorded> {
        let statement = (
            format!(
                "INSERT INTO secrets ({SECRET_COLUMNS}) SELECT $1, $2, $3, $4, $5, $6 \
                 WHERE (SELECT COUNT(*) FROM secrets WHERE project_id = $1) < $7 \
                 ON CONFLICT DO NOTHING"
            ),
            vec![
                (&secret.project_id).into(),
                (&secret.name).into(),
                (&secret.kind).into(),
                (&secret.file_names).into(),
                (&secret.sealed).into(),
                (&secret.created_at).into(),
                limit.into(),
            ],
        );
        self.record_named(
            "insert_secret",
            "secrets",
            statement,
            &secret.project_id,
            &secret.name,
        )
        .await
    }

    /// The project's secrets of every kind, by name.
    pub async fn secrets(&self, project_id: &str) -> Result<Vec<SecretRecord>> {
        self.fetch_all(
            &format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE project_id = $1 ORDER BY name"),
            &[project_id.into()],
        )
        .await
    }

    /// One of the project's secrets.
    pub async fn secret(&self, project_id: &str, name: &str) -> Result<Option<SecretRecord>> {
        self.fetch_optional(
            &format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE project_id = $1 AND name = $2"),
            &[project_id.into(), name.into()],
        )
        .await
    }

    /// Deletes the project's secret of that name and kind: whether it was
    /// there.
    pub async fn delete_secret(&self, project_id: &str, name: &str, kind: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "delete_secret",
                vec![(
                    "DELETE FROM secrets WHERE project_id = $1 AND name = $2 AND kind = $3"
                        .to_string(),
                    vec![project_id.into(), name.into(), kind.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Records registry credentials unless the name is taken or the
    /// project has `limit` of them.
    pub async fn insert_registry_credential(
        &self,
        credential: &RegistryCredentialRecord,
        limit: i64,
    ) -> Result<Recorded> {
        let statement = (
            format!(
                "INSERT INTO registry_credentials ({CREDENTIAL_COLUMNS}) \
                 SELECT $1, $2, $3, $4, $5 \
                 WHERE (SELECT COUNT(*) FROM registry_credentials WHERE project_id = $1) < $6 \
                 ON CONFLICT DO NOTHING"
            ),
            vec![
                (&credential.project_id).into(),
                (&credential.name).into(),
                (&credential.kind).into(),
                (&credential.sealed).into(),
                (&credential.created_at).into(),
                limit.into(),
            ],
        );
        self.record_named(
            "insert_registry_credential",
            "registry_credentials",
            statement,
            &credential.project_id,
            &credential.name,
        )
        .await
    }

    /// The project's registry credentials, by name.
    pub async fn registry_credentials(
        &self,
        project_id: &str,
    ) -> Result<Vec<RegistryCredentialRecord>> {
        self.fetch_all(
            &format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM registry_credentials WHERE project_id = $1 \
                 ORDER BY name"
            ),
            &[project_id.into()],
        )
        .await
    }

    /// One of the project's registry credentials.
    pub async fn registry_credential(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<Option<RegistryCredentialRecord>> {
        self.fetch_optional(
            &format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM registry_credentials \
                 WHERE project_id = $1 AND name = $2"
            ),
            &[project_id.into(), name.into()],
        )
        .await
    }

    /// Deletes the project's registry credentials of that name: whether
    /// they were there.
    pub async fn delete_registry_credential(&self, project_id: &str, name: &str) -> Result<bool> {
        let counts = self
            .run_statements(
                "delete_registry_credential",
                vec![(
                    "DELETE FROM registry_credentials WHERE project_id = $1 AND name = $2"
                        .to_string(),
                    vec![project_id.into(), name.into()],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Runs one conditional insert of a named row of `table`, and says why
    /// it inserted nothing when it did not.
    async fn record_named(
        &self,
        what: &'static str,
        table: &'static str,
        statement: (String, Vec<crate::db::Arg>),
        project_id: &str,
        name: &str,
    ) -> Result<Recorded> {
        let lock = (crate::quotas::LOCK_PROJECT, project_id.to_string());
        let counts = self
            .run_statements_locked(what, lock, vec![statement], |_| true)
            .await?;
        if counts[0] == 1 {
            return Ok(Recorded::Added);
        }
        #[derive(sqlx::FromRow)]
        struct Count {
            n: i64,
        }
        let taken: Option<Count> = self
            .fetch_optional(
                &format!(
                    "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table} \
                     WHERE project_id = $1 AND name = $2"
                ),
                &[project_id.into(), name.into()],
            )
            .await?;
        Ok(match taken.is_some_and(|c| c.n > 0) {
            true => Recorded::NameTaken,
            false => Recorded::Full,
        })
    }
}
