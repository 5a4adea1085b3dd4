//! Projects, users, their memberships, refresh tokens and shared settings.

use crate::db::Arg;
use crate::writer::Commit;
use crate::{Result, Store, now};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ProjectRecord {
    pub id: String,
    pub name: String,
    pub path: String,
    pub created_at: String,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub password_hash: Option<String>,
    pub active_project_id: Option<String>,
    pub disabled: i64,
    /// `admin` or `operator` over the whole install, if either.
    pub install_role: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A user's role in a project, with the project's fields.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MembershipRecord {
    pub user_id: String,
    pub project_id: String,
    pub project_name: String,
    pub path: String,
    pub role: String,
    pub last_used: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub id: String,
    pub username: String,
    pub password_hash: Option<String>,
    pub project_id: String,
    pub role: String,
    pub install_role: Option<String>,
}

/// What presenting a refresh token did.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshUse {
    /// It was valid: it is now used, and its successor was recorded.
    Rotated { user_id: String, family: String },
    /// It had been used before: its whole family is now revoked.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

const USER_COLUMNS: &str = "id, username, password_hash, active_project_id, disabled, \
     install_role, created_at, updated_at";
const MEMBERSHIP_SELECT: &str = "SELECT m.user_id, m.project_id, p.name AS project_name, \
     p.path, m.role, m.last_used FROM memberships m JOIN projects p ON p.id = m.project_id";

/// A user's API tokens and every token made with them (and with those):
/// `$1` the user.
const USER_LINEAGE: &str = "WITH RECURSIVE lineage (id) AS (SELECT id FROM api_tokens \
     WHERE user_id = $1 UNION SELECT t.id FROM api_tokens t JOIN lineage l ON t.parent_id = l.id)";

impl Store {
    /// The value of a shared setting, set to `value` first if it has none:
    /// every replica ends up with the same one.
    pub async fn setting_or_init(&self, name: &str, value: &str) -> Result<String> {
        self.run_statements(
            "setting_or_init",
            vec![(
                "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
                    .into(),
                vec![name.into(), value.into()],
            )],
            |_| true,
        )
        .await?;
        let row: Option<(String,)> = self
            .fetch_optional("SELECT value FROM settings WHERE name = $1", &[name.into()])
            .await?;
        Ok(row.map(|(v,)| v).unwrap_or_else(|| value.to_string()))
    }

    pub async fn projects(&self) -> Result<Vec<ProjectRecord>> {
        self.fetch_all(
            "SELECT id, name, path, created_at FROM projects ORDER BY name",
            &[],
        )
        .await
    }

    pub async fn project(&self, id: &str) -> Result<Option<ProjectRecord>> {
        self.fetch_optional(
            "SELECT id, name, path, created_at FROM projects WHERE id = $1",
            &[id.into()],
        )
        .await
    }

    pub async fn project_by_name(&self, name: &str) -> Result<Option<ProjectRecord>> {
        self.fetch_optional(
            "SELECT id, name, path, created_at FROM projects WHERE name = $1",
            &[name.into()],
        )
        .await
    }

    /// Creates a project, and makes `owner` (if any) a member with `role`.
    /// `false`, changing nothing, when the name is taken.
    pub async fn insert_project(
        &self,
        project: &ProjectRecord,
        owner: Option<(&str, &str)>,
    ) -> Result<bool> {
        let insert = (
            "INSERT INTO projects (id, name, path, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING"
                .to_string(),
            vec![
                (&project.id).into(),
                (&project.name).into(),
                (&project.path).into(),
                (&project.created_at).into(),
            ],
        );
        let member =
            owner.map(|(user_id, role)| membership_upsert(user_id, &project.id, role, false));
        let work = std::sync::Arc::new((insert, member));
        self.write("insert_project", move |mut conn| {
            let work = work.clone();
            Box::pin(async move {
                let ((sql, args), member) = &*work;
                if conn.execute(sql, args).await? != 1 {
                    return Ok(Commit::Undo(false));
                }
                if let Some((sql, args)) = member {
                    conn.execute(sql, args).await?;
                }
                Ok(Commit::Keep(true))
            })
        })
        .await
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        self.fetch_all(
            &format!("SELECT {USER_COLUMNS} FROM users ORDER BY username"),
            &[],
        )
        .await
    }

    pub async fn user(&self, id: &str) -> Result<Option<UserRecord>> {
        self.fetch_optional(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
            &[id.into()],
        )
        .await
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        self.fetch_optional(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1"),
            &[username.into()],
        )
        .await
    }

    /// The user whose name is `username` in any case, if any: the one a
    /// new user of that name would clash with.
    pub async fn user_by_folded_name(&self, username: &str) -> Result<Option<UserRecord>> {
        self.fetch_optional(
            &format!(
                "SELECT {USER_COLUMNS} FROM users WHERE lower(username) = $1 \
                 ORDER BY username = $2 DESC LIMIT 1"
            ),
            &[username.to_ascii_lowercase().into(), username.into()],
        )
        .await
    }

    /// Creates a user, a member of its first project, which is its active
    /// one. `false`, changing nothing, when the username is taken in any
    /// case.
    pub async fn insert_user(&self, user: &NewUser) -> Result<bool> {
        let at = now();
        let insert = (
            "INSERT INTO users (id, username, password_hash, active_project_id, \
             disabled, install_role, created_at, updated_at, username_key) \
             VALUES ($1, $2, $3, $4, 0, $5, $6, $6, $7) ON CONFLICT DO NOTHING"
                .to_string(),
            vec![
                (&user.id).into(),
                (&user.username).into(),
                user.password_hash.as_ref().into(),
                (&user.project_id).into(),
                user.install_role.as_ref().into(),
                (&at).into(),
                user.username.to_ascii_lowercase().into(),
            ],
        );
        // Its first workspace is its active one: used from now on.
        let member = membership_upsert(&user.id, &user.project_id, &user.role, true);
        let work = std::sync::Arc::new((insert, member));
        self.write("insert_user", move |mut conn| {
            let work = work.clone();
            Box::pin(async move {
                let ((sql, args), (member_sql, member_args)) = &*work;
                if conn.execute(sql, args).await? != 1 {
                    return Ok(Commit::Undo(false));
                }
                conn.execute(member_sql, member_args).await?;
                Ok(Commit::Keep(true))
            })
        })
        .await
    }

    /// Changes a user's password hash and/or disabled flag. A disabled user
    /// loses every refresh token. `false` when there is no such user.
    pub async fn update_user(
        &self,
        id: &str,
        password_hash: Option<&str>,
        disabled: Option<bool>,
    ) -> Result<bool> {
        let mut statements = vec![(
            "UPDATE users SET password_hash = COALESCE($1, password_hash), \
             disabled = COALESCE($2, disabled), updated_at = $3 WHERE id = $4"
                .to_string(),
            vec![
                password_hash.into(),
                disabled.map(i64::from).into(),
                now().into(),
                id.into(),
            ],
        )];
        if password_hash.is_some() || disabled == Some(true) {
            statements.push(revoke_refresh_of(id));
            statements.extend(crate::tokens::revoke_login_made(
                "r.login_user = $1",
                "c.created_by = $1 AND c.login_family IS NOT NULL",
                id,
            ));
        }
        let counts = self
            .run_statements("update_user", statements, |c| c[0] == 1)
            .await?;
        Ok(counts[0] == 1)
    }

    /// Deletes a user with its memberships, refresh tokens and API tokens,
    /// and revokes what was made on its authority: the tokens made with its
    /// tokens (and with those), for whoever they are, and the OAuth
    /// credentials made with any of them or by it (a fixed role's, which
    /// acts for no user, too).
    pub async fn delete_user(&self, id: &str) -> Result<bool> {
        let at = now();
        let statements = vec![
            (
                format!(
                    "{USER_LINEAGE} UPDATE oauth_clients SET revoked_at = $2 \
                     WHERE revoked_at IS NULL \
                     AND (created_by = $1 OR parent_token_id IN (SELECT id FROM lineage))"
                ),
                vec![id.into(), (&at).into()],
            ),
            (
                format!(
                    "{USER_LINEAGE} UPDATE api_tokens SET revoked_at = $2 \
                     WHERE revoked_at IS NULL AND id IN (SELECT id FROM lineage)"
                ),
                vec![id.into(), (&at).into()],
            ),
            (
                "DELETE FROM memberships WHERE user_id = $1".to_string(),
                vec![id.into()],
            ),
            (
                "DELETE FROM refresh_tokens WHERE user_id = $1".to_string(),
                vec![id.into()],
            ),
            (
                "DELETE FROM api_tokens WHERE user_id = $1".to_string(),
                vec![id.into()],
            ),
            (
                "DELETE FROM users WHERE id = $1".to_string(),
                vec![id.into()],
            ),
            // Credentials that acted as the user die with it.
            (
                "UPDATE oauth_clients SET revoked_at = $2 WHERE acts_as = $1 AND revoked_at IS NULL"
                    .to_string(),
                vec![id.into(), now().into()],
            ),
        ];
        let counts = self
            .run_statements("delete_user", statements, |c| c[5] == 1)
            .await?;
        Ok(counts[5] == 1)
    }

    /// Sets or clears a user's install role. `false` when there is no such
    /// user.
    /// A user no longer an install admin loses the OAuth credentials it
    /// made with a fixed role (which act for no user, on the install
    /// admin's authority alone).
    pub async fn set_install_role(&self, id: &str, role: Option<&str>) -> Result<bool> {
        let mut statements = vec![(
            "UPDATE users SET install_role = $1, updated_at = $2 WHERE id = $3".to_string(),
            vec![role.into(), now().into(), id.into()],
        )];
        if role != Some("admin") {
            statements.push((
                "UPDATE oauth_clients SET revoked_at = $2 \
                 WHERE created_by = $1 AND acts_as IS NULL AND revoked_at IS NULL"
                    .to_string(),
                vec![id.into(), now().into()],
            ));
        }
        let counts = self
            .run_statements("set_install_role", statements, |c| c[0] == 1)
            .await?;
        Ok(counts[0] == 1)
    }

    /// The users who are members of a project, by name.
    pub async fn project_users(&self, project_id: &str) -> Result<Vec<UserRecord>> {
        let columns = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        self.fetch_all(
            &format!(
                "SELECT {columns} FROM users u JOIN memberships m ON m.user_id = u.id \
                 WHERE m.project_id = $1 ORDER BY u.username"
            ),
            &[project_id.into()],
        )
        .await
    }

    /// Takes a user out of a project; its active project moves to another
    /// of its projects (or none). `false` when it was not a member.
    /// Takes a user out of a project; with `keep_last`, not out of its
    /// last one if it holds an install role (answers `false`, changing
    /// nothing): checked under a lock of the user's row, so that two
    /// removals at once cannot both take one of its last two.
    pub async fn delete_membership(
        &self,
        user_id: &str,
        project_id: &str,
        keep_last: bool,
    ) -> Result<bool> {
        /// The user's (`$1`) tokens in the project (`$2`), and everything
        /// made with them: the tokens made with those, and so on.
        const MEMBERSHIP_LINEAGE: &str = "WITH RECURSIVE lineage (id) AS (SELECT id FROM \
             api_tokens WHERE user_id = $1 AND project_id = $2 \
             UNION SELECT t.id FROM api_tokens t JOIN lineage l ON t.parent_id = l.id)";
        let counts = self
            .run_statements_locked(
                "delete_membership",
                (
                    "SELECT id FROM users WHERE id = $1 FOR UPDATE",
                    user_id.to_string(),
                ),
                vec![
                    (
                        "DELETE FROM memberships WHERE user_id = $1 AND project_id = $2 \
                         AND ($3 = 0 OR EXISTS (SELECT 1 FROM memberships o \
                              WHERE o.user_id = $1 AND o.project_id <> $2) \
                              OR (SELECT install_role FROM users WHERE id = $1) IS NULL)"
                            .into(),
                        vec![
                            user_id.into(),
                            project_id.into(),
                            i64::from(keep_last).into(),
                        ],
                    ),
                    (
                        "UPDATE users SET active_project_id = (SELECT MIN(project_id) FROM \
                         memberships WHERE user_id = $1), updated_at = $3 \
                         WHERE id = $1 AND active_project_id = $2"
                            .into(),
                        vec![user_id.into(), project_id.into(), now().into()],
                    ),
                    // Its tokens there stop working with it, and everything
                    // made with them (as a token's revocation takes it):
                    // first the OAuth credentials, then the tokens.
                    (
                        format!(
                            "{MEMBERSHIP_LINEAGE} UPDATE oauth_clients SET revoked_at = $3 \
                             WHERE revoked_at IS NULL AND parent_token_id IN \
                             (SELECT id FROM lineage)"
                        ),
                        vec![user_id.into(), project_id.into(), now().into()],
                    ),
                    (
                        format!(
                            "{MEMBERSHIP_LINEAGE} UPDATE api_tokens SET revoked_at = $3 \
                             WHERE revoked_at IS NULL AND id IN (SELECT id FROM lineage)"
                        ),
                        vec![user_id.into(), project_id.into(), now().into()],
                    ),
                    // And the OAuth credentials that act as it there, for
                    // good: a membership given again does not bring them
                    // back.
                    (
                        "UPDATE oauth_clients SET revoked_at = $3 WHERE acts_as = $1 \
                         AND project_id = $2 AND revoked_at IS NULL"
                            .into(),
                        vec![user_id.into(), project_id.into(), now().into()],
                    ),
                ],
                |c| c[0] == 1,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    /// Whether the login (refresh-token family) `family` was revoked.
    pub async fn refresh_family_revoked(&self, family: &str) -> Result<bool> {
        let revoked: Option<(String,)> = self
            .fetch_optional(
                "SELECT id FROM refresh_tokens WHERE family = $1 AND status = 'revoked' LIMIT 1",
                &[family.into()],
            )
            .await?;
        Ok(revoked.is_some())
    }

    pub async fn memberships(&self, user_id: &str) -> Result<Vec<MembershipRecord>> {
        self.fetch_all(
            &format!("{MEMBERSHIP_SELECT} WHERE m.user_id = $1 ORDER BY p.name"),
            &[user_id.into()],
        )
        .await
    }

    pub async fn membership(
        &self,
        user_id: &str,
        project_id: &str,
    ) -> Result<Option<MembershipRecord>> {
        self.fetch_optional(
            &format!("{MEMBERSHIP_SELECT} WHERE m.user_id = $1 AND m.project_id = $2"),
            &[user_id.into(), project_id.into()],
        )
        .await
    }

    /// Gives a user `role` in a project (replacing the role it had there).
    pub async fn put_membership(&self, user_id: &str, project_id: &str, role: &str) -> Result<()> {
        self.run_statements(
            "put_membership",
            vec![membership_upsert(user_id, project_id, role, false)],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Makes a project the user's active one. `false` when the user is not
    /// a member of it.
    pub async fn activate_project(&self, user_id: &str, project_id: &str) -> Result<bool> {
        let at = now();
        let counts = self
            .run_statements(
                "activate_project",
                vec![
                    (
                        "UPDATE memberships SET last_used = $1 WHERE user_id = $2 AND project_id = $3"
                            .into(),
                        vec![(&at).into(), user_id.into(), project_id.into()],
                    ),
                    (
                        "UPDATE users SET active_project_id = $1, updated_at = $2 WHERE id = $3"
                            .into(),
                        vec![project_id.into(), (&at).into(), user_id.into()],
                    ),
                ],
                |c| c[0] == 1,
            )
            .await?;
        Ok(counts[0] == 1)
    }

    pub async fn insert_refresh_token(
        &self,
        id: &str,
        user_id: &str,
        family: &str,
        expires_at: &str,
    ) -> Result<()> {
        self.run_statements(
            "insert_refresh_token",
            vec![refresh_insert(id, user_id, family, expires_at)],
            |_| true,
        )
        .await?;
        Ok(())
    }

    /// Uses refresh token `id` once: marks it used and records `next_id`, its
    /// successor in the same family. A token used before revokes its family.
    pub async fn rotate_refresh_token(
        &self,
        id: &str,
        next_id: &str,
        next_expires_at: &str,
    ) -> Result<RefreshUse> {
        let (id, next_id, next_expires_at) = (
            id.to_string(),
            next_id.to_string(),
            next_expires_at.to_string(),
        );
        self.write("rotate_refresh_token", move |mut conn| {
            let (id, next_id, next_expires_at) =
                (id.clone(), next_id.clone(), next_expires_at.clone());
            Box::pin(async move {
                let at = now();
                let user_id = conn
                    .fetch_text(
                        "UPDATE refresh_tokens SET status = 'used' \
                         WHERE id = $1 AND status = 'active' AND expires_at > $2 RETURNING user_id",
                        &[(&id).into(), (&at).into()],
                    )
                    .await?;
                let family = conn
                    .fetch_text(
                        "SELECT family FROM refresh_tokens WHERE id = $1",
                        &[(&id).into()],
                    )
                    .await?;
                let (Some(user_id), Some(family)) = (user_id, family.clone()) else {
                    let reused = conn
                        .execute(
                            "UPDATE refresh_tokens SET status = 'revoked' WHERE family = \
                             (SELECT family FROM refresh_tokens WHERE id = $1 AND status = 'used')",
                            &[(&id).into()],
                        )
                        .await?;
                    if reused == 0 {
                        return Ok(Commit::Keep(RefreshUse::Invalid));
                    }
                    // What the stolen login made goes with it.
                    let family = conn
                        .fetch_text(
                            "SELECT family FROM refresh_tokens WHERE id = $1",
                            &[(&id).into()],
                        )
                        .await?
                        .unwrap_or_default();
                    for (sql, args) in crate::tokens::revoke_login_made(
                        "r.login_family = $1",
                        "c.login_family = $1",
                        &family,
                    ) {
                        conn.execute(&sql, &args).await?;
                    }
                    return Ok(Commit::Keep(RefreshUse::Reused));
                };
                let (sql, args) = refresh_insert(&next_id, &user_id, &family, &next_expires_at);
                conn.execute(&sql, &args).await?;
                // Used tokens are kept while their family lives, to catch
                // reuse; expired ones go.
                conn.execute(
                    "DELETE FROM refresh_tokens WHERE expires_at < $1",
                    &[(&at).into()],
                )
                .await?;
                Ok(Commit::Keep(RefreshUse::Rotated { user_id, family }))
            })
        })
        .await
    }
}

/// A user's membership of a project, `role` there (replacing the role it
/// had); `active` when it becomes the user's active project, as it is used
/// from now on.
fn membership_upsert(
    user_id: &str,
    project_id: &str,
    role: &str,
    active: bool,
) -> (String, Vec<Arg>) {
    let at = now();
    (
        "INSERT INTO memberships (user_id, project_id, role, created_at, last_used) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, project_id) DO UPDATE SET role = $3"
            .into(),
        vec![
            user_id.into(),
            project_id.into(),
            role.into(),
            (&at).into(),
            active.then_some(at.as_str()).into(),
        ],
    )
}

fn refresh_insert(id: &str, user_id: &str, family: &str, expires_at: &str) -> (String, Vec<Arg>) {
    (
        "INSERT INTO refresh_tokens (id, user_id, family, status, expires_at, created_at) \
         VALUES ($1, $2, $3, 'active', $4, $5)"
            .into(),
        vec![
            id.into(),
            user_id.into(),
            family.into(),
            expires_at.into(),
            now().into(),
        ],
    )
}

fn revoke_refresh_of(user_id: &str) -> (String, Vec<Arg>) {
    (
        "UPDATE refresh_tokens SET status = 'revoked' WHERE user_id = $1".into(),
        vec![user_id.into()],
    )
}
