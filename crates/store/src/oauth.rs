//! OAuth2 client credentials and their refresh tokens (the Verda face's
//! authentication). Secrets and tokens are kept as SHA-256 hashes.

use crate::{Result, Store, now};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OAuthClientRecord {
    pub client_id: String,
    pub secret_hash: String,
    pub project_id: String,
    pub role: String,
    pub description: String,
    pub created_by: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    /// The scopes of the API token it was made with (a JSON list), if any.
    pub scopes: Option<String>,
    /// The API token it was made with, if it was.
    pub parent_token_id: Option<String>,
    /// The user whose current membership and role it acts with; `None` for
    /// a credential with a fixed role.
    pub acts_as: Option<String>,
    /// When it stops working: the end of the API token it was made with.
    pub expires_at: Option<String>,
    /// The login (refresh-token family) it was made with, if it was: it is
    /// revoked with it.
    pub login_family: Option<String>,
}

const CLIENT_COLUMNS: &str = "client_id, secret_hash, project_id, role, description, created_by, \
     created_at, revoked_at, scopes, parent_token_id, acts_as, expires_at, login_family";

impl Store {
    /// Keeps a new client; `false`, keeping nothing, when the login it is
    /// made with was revoked meanwhile (see [`Store::insert_token`]).
    pub async fn insert_oauth_client(&self, client: &OAuthClientRecord) -> Result<bool> {
        let counts = self
            .run_statements(
                "insert_oauth_client",
                vec![(
                    format!(
                        "INSERT INTO oauth_clients ({CLIENT_COLUMNS}) SELECT $1, $2, $3, $4, $5, \
                         $6, $7, NULL, $8, $9, $10, $11, $12 WHERE {}",
                        crate::tokens::login_live("$12")
                    ),
                    vec![
                        (&client.client_id).into(),
                        (&client.secret_hash).into(),
                        (&client.project_id).into(),
                        (&client.role).into(),
                        (&client.description).into(),
                        client.created_by.as_ref().into(),
                        (&client.created_at).into(),
                        client.scopes.as_ref().into(),
                        client.parent_token_id.as_ref().into(),
                        client.acts_as.as_ref().into(),
                        client.expires_at.as_ref().into(),
                        client.login_family.as_ref().into(),
                    ],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    pub async fn oauth_client(&self, client_id: &str) -> Result<Option<OAuthClientRecord>> {
        self.fetch_optional(
            &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = $1"),
            &[client_id.into()],
        )
        .await
    }

    /// Every client of a project, or of all projects.
    pub async fn oauth_clients(&self, project_id: Option<&str>) -> Result<Vec<OAuthClientRecord>> {
        match project_id {
            Some(project) => {
                self.fetch_all(
                    &format!(
                        "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE project_id = $1 ORDER BY created_at"
                    ),
                    &[project.into()],
                )
                .await
            }
            None => {
                self.fetch_all(
                    &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY created_at"),
                    &[],
                )
                .await
            }
        }
    }

    /// Revokes a client and every refresh token it holds.
    pub async fn revoke_oauth_client(&self, client_id: &str) -> Result<bool> {
        let at = now();
        let counts = self
            .run_statements(
                "revoke_oauth_client",
                vec![
                    (
                        "UPDATE oauth_clients SET revoked_at = $1 WHERE client_id = $2 AND revoked_at IS NULL"
                            .into(),
                        vec![(&at).into(), client_id.into()],
                    ),
                    (
                        "UPDATE oauth_refresh_tokens SET used_at = $1 WHERE client_id = $2 AND used_at IS NULL"
                            .into(),
                        vec![at.into(), client_id.into()],
                    ),
                ],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    pub async fn insert_oauth_refresh_token(
        &self,
        token_hash: &str,
        client_id: &str,
        expires_at: &str,
    ) -> Result<()> {
        self.run_statements(
            "insert_oauth_refresh_token",
            vec![refresh_insert(token_hash, client_id, expires_at)],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Uses a refresh token once and records its successor: the client it
    /// belongs to, or `None` (changing nothing) when it is unknown, used or
    /// expired.
    pub async fn rotate_oauth_refresh_token(
        &self,
        token_hash: &str,
        next_hash: &str,
        next_expires_at: &str,
    ) -> Result<Option<String>> {
        let (token_hash, next_hash, next_expires_at) = (
            token_hash.to_string(),
            next_hash.to_string(),
            next_expires_at.to_string(),
        );
        self.write("rotate_oauth_refresh_token", move |mut conn| {
            let (token_hash, next_hash, next_expires_at) = (
                token_hash.clone(),
                next_hash.clone(),
                next_expires_at.clone(),
            );
            Box::pin(async move {
                let at = now();
                let client = conn
                    .fetch_text(
                        "UPDATE oauth_refresh_tokens SET used_at = $1 \
                         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING client_id",
                        &[(&at).into(), (&token_hash).into()],
                    )
                    .await?;
                let Some(client) = client else {
                    return Ok(crate::writer::Commit::Undo(None));
                };
                let (sql, args) = refresh_insert(&next_hash, &client, &next_expires_at);
                conn.execute(&sql, &args).await?;
                conn.execute(
                    "DELETE FROM oauth_refresh_tokens WHERE expires_at < $1",
                    &[at.into()],
                )
                .await?;
                Ok(crate::writer::Commit::Keep(Some(client)))
            })
        })
        .await
    }
}

fn refresh_insert(
    token_hash: &str,
    client_id: &str,
    expires_at: &str,
) -> (String, Vec<crate::db::Arg>) {
    (
        "INSERT INTO oauth_refresh_tokens (token_hash, client_id, expires_at, used_at, created_at) \
         VALUES ($1, $2, $3, NULL, $4)"
            .into(),
        vec![
            token_hash.into(),
            client_id.into(),
            expires_at.into(),
            now().into(),
        ],
    )
}
