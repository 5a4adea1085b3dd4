//! API tokens, kept as hashes only. Each belongs to a user and acts in one
//! project, with the user's permissions there narrowed by its scopes.

use crate::writer::Commit;
use crate::{Result, Store, now};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub user_id: Option<String>,
    pub project_id: Option<String>,
    /// A JSON list of permissions, or `None` for all of the user's.
    pub scopes: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub created_at: String,
    /// The API token this one was made with, if it was.
    pub parent_id: Option<String>,
    /// Its grants on the containers API (JSON: path to actions), if it is
    /// limited that way.
    pub compute_scopes: Option<String>,
    /// The login (refresh-token family) it was made with, if it was.
    pub login_family: Option<String>,
    /// The user whose login that was.
    pub login_user: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewToken {
    pub id: String,
    pub name: String,
    pub token_hash: String,
    pub user_id: String,
    pub project_id: String,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<String>,
    pub parent_id: Option<String>,
    /// Its grants on the containers API, as JSON.
    pub compute_scopes: Option<String>,
    /// The login it is made with (not a token): it is revoked with it.
    pub login_family: Option<String>,
    /// The user whose login that is.
    pub login_user: Option<String>,
}

/// Whose tokens to list.
#[derive(Clone, Copy, Debug)]
pub enum TokenOwner<'a> {
    Everyone,
    User(&'a str),
    Project(&'a str),
}

const TOKEN_COLUMNS: &str = "id, name, token_hash, user_id, project_id, scopes, expires_at, \
     revoked_at, created_at, parent_id, compute_scopes, login_family, login_user";

/// Everything made with token `$1`, itself included: the tokens made with
/// it, with those, and so on.
const LINEAGE: &str = "WITH RECURSIVE lineage (id) AS (SELECT id FROM api_tokens WHERE id = $1 \
     UNION SELECT t.id FROM api_tokens t JOIN lineage l ON t.parent_id = l.id)";

/// Revokes what was made with logins: the API tokens made with a login
/// that `roots` (SQL naming `api_tokens` as `r`, over `$1`) picks, with
/// everything made with them, and the OAuth credentials made with any of
/// them or with a login `clients` (SQL naming `oauth_clients` as `c`,
/// over `$1`) picks. Two statements, `$1` the login or user and `$2` now.
pub(crate) fn revoke_login_made(
    roots: &str,
    clients: &str,
    who: &str,
) -> Vec<(String, Vec<crate::db::Arg>)> {
    let lineage = format!(
        "WITH RECURSIVE lineage (id) AS (SELECT r.id FROM api_tokens r WHERE {roots} \
         UNION SELECT t.id FROM api_tokens t JOIN lineage l ON t.parent_id = l.id)"
    );
    let at = now();
    vec![
        (
            format!(
                "{lineage} UPDATE oauth_clients SET revoked_at = $2 WHERE revoked_at IS NULL \
                 AND (parent_token_id IN (SELECT id FROM lineage) OR client_id IN \
                 (SELECT c.client_id FROM oauth_clients c WHERE {clients}))"
            ),
            vec![who.into(), (&at).into()],
        ),
        (
            format!(
                "{lineage} UPDATE api_tokens SET revoked_at = $2 \
                 WHERE revoked_at IS NULL AND id IN (SELECT id FROM lineage)"
            ),
            vec![who.into(), (&at).into()],
        ),
    ]
}

/// SQL true unless the login (refresh-token family) `param` names was
/// revoked; a NULL `param` (no login) is live.
pub(crate) fn login_live(param: &str) -> String {
    format!(
        "(CAST({param} AS TEXT) IS NULL OR NOT EXISTS (SELECT 1 FROM refresh_tokens \
         WHERE family = {param} AND status = 'revoked'))"
    )
}

impl Store {
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<TokenRecord>> {
        self.fetch_optional(
            &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1"),
            &[token_hash.into()],
        )
        .await
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        self.fetch_optional(
            &format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"),
            &[id.into()],
        )
        .await
    }

    /// Tokens of one user, of one project, or of everyone; newest first.
    pub async fn tokens(&self, owner: TokenOwner<'_>) -> Result<Vec<TokenRecord>> {
        let (filter, args) = match owner {
            TokenOwner::Everyone => ("", vec![]),
            TokenOwner::User(user) => ("WHERE user_id = $1", vec![user.into()]),
            TokenOwner::Project(project) => ("WHERE project_id = $1", vec![project.into()]),
        };
        self.fetch_all(
            &format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens {filter} ORDER BY created_at DESC, id"
            ),
            &args,
        )
        .await
    }

    /// Keeps a new token; `false`, keeping nothing, when the login it is
    /// made with was revoked meanwhile (checked in the insert, so that a
    /// login revoked between its caller's check and this write cannot leave
    /// a token behind).
    pub async fn insert_token(&self, token: &NewToken) -> Result<bool> {
        let scopes = token
            .scopes
            .as_ref()
            .map(|s| serde_json::to_string(s).unwrap_or_default());
        let counts = self
            .run_statements(
                "insert_token",
                vec![(
                    format!(
                        "INSERT INTO api_tokens (id, name, token_hash, user_id, project_id, scopes, \
                         expires_at, created_at, parent_id, compute_scopes, login_family, \
                         login_user) \
                         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 WHERE {}",
                        login_live("$11")
                    ),
                    vec![
                        (&token.id).into(),
                        (&token.name).into(),
                        (&token.token_hash).into(),
                        (&token.user_id).into(),
                        (&token.project_id).into(),
                        scopes.into(),
                        token.expires_at.as_ref().into(),
                        now().into(),
                        token.parent_id.as_ref().into(),
                        token.compute_scopes.as_ref().into(),
                        token.login_family.as_ref().into(),
                        token.login_user.as_ref().into(),
                    ],
                )],
                |_| true,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Revokes a token with everything made with it: the tokens made with
    /// it (and with those) and the OAuth credentials made with any of them.
    /// `false` when it does not exist or already was revoked.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let at = now();
        let counts = self
            .run_statements(
                "revoke_token",
                vec![
                    (
                        "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"
                            .into(),
                        vec![(&at).into(), id.into()],
                    ),
                    (
                        format!(
                            "{LINEAGE} UPDATE oauth_clients SET revoked_at = $2 \
                             WHERE revoked_at IS NULL AND parent_token_id IN (SELECT id FROM lineage)"
                        ),
                        vec![id.into(), (&at).into()],
                    ),
                    (
                        format!(
                            "{LINEAGE} UPDATE api_tokens SET revoked_at = $2 \
                             WHERE revoked_at IS NULL AND id IN (SELECT id FROM lineage)"
                        ),
                        vec![id.into(), (&at).into()],
                    ),
                ],
                |c| c[0] == 1,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Creates token `id` with `token_hash` for `user_id` in `project_id`,
    /// or, when `id` exists, replaces its hash and owner. Answers whether a
    /// row was created.
    pub async fn put_token(
        &self,
        id: &str,
        name: &str,
        token_hash: &str,
        user_id: &str,
        project_id: &str,
    ) -> Result<bool> {
        let (id, name, hash) = (id.to_string(), name.to_string(), token_hash.to_string());
        let (user, project) = (user_id.to_string(), project_id.to_string());
        self.write("put_token", move |mut conn| {
            let (id, name, hash) = (id.clone(), name.clone(), hash.clone());
            let (user, project) = (user.clone(), project.clone());
            Box::pin(async move {
                let created = conn
                    .execute(
                        "INSERT INTO api_tokens (id, name, token_hash, user_id, project_id, \
                         created_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                        &[
                            (&id).into(),
                            (&name).into(),
                            (&hash).into(),
                            (&user).into(),
                            (&project).into(),
                            now().as_str().into(),
                        ],
                    )
                    .await?
                    == 1;
                if !created {
                    conn.execute(
                        "UPDATE api_tokens SET token_hash = $1, user_id = $2, project_id = $3, \
                         revoked_at = NULL WHERE id = $4",
                        &[
                            (&hash).into(),
                            (&user).into(),
                            (&project).into(),
                            (&id).into(),
                        ],
                    )
                    .await?;
                }
                Ok(Commit::Keep(created))
            })
        })
        .await
    }
}
