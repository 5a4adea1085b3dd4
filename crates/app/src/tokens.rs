//! API tokens for automation: created with scopes, listed, revoked. The
//! secret is shown once, at creation; only its hash is kept.
//!
//! Making a token needs `token_write`. A token made with an API token is
//! that token's child: it has at most its parent's scopes, expires no
//! later, acts in the same workspace, and is revoked with it. Only an
//! install admin makes tokens for other users.

use crate::error::{Error, Result};
use crate::identity::{BOOTSTRAP_TOKEN_ID, Principal, generate_token, hash_token};
use crate::{App, has_nul, new_id};
use std::collections::BTreeMap;
use tessera_core::scopes::ComputeScopes;
use tessera_core::{Permission, UserId};
use tessera_store::{NewToken, TokenOwner, TokenRecord};

#[derive(Clone, Debug, Default)]
pub struct CreateToken {
    pub name: String,
    /// Project name; the caller's current project by default.
    pub project: Option<String>,
    /// User id; the caller by default (another user's: install admins only).
    pub user_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub expires_in_days: Option<i64>,
    /// Grants on the containers API (`compute.<uid>...` to actions); none:
    /// not limited that way (unless the token used is).
    pub compute_scopes: Option<BTreeMap<String, Vec<String>>>,
}

/// A token as shown: never its hash.
#[derive(Clone, Debug)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    /// Its user, unless it is the bootstrap token.
    pub user_id: Option<UserId>,
    /// The permissions it is limited to; `None` for all of its user's.
    pub scopes: Option<Vec<Permission>>,
    /// Its grants on the containers API, if it is limited that way.
    pub compute_scopes: Option<BTreeMap<String, Vec<String>>>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    /// The workspace it acts in.
    pub project_name: Option<String>,
    /// The secret, on creation only.
    pub secret: Option<String>,
}

impl App {
    /// The caller's tokens; every token of its workspace with
    /// `credential_admin`; every token for an install admin.
    pub async fn tokens(&self, caller: &Principal) -> Result<Vec<ApiToken>> {
        // Every role may; a token scoped away from it (one of the
        // containers API's, say) may not.
        caller.require(Permission::TokenWrite)?;
        let owner = if caller.is_install_admin() {
            TokenOwner::Everyone
        } else if caller.can(Permission::CredentialAdmin) {
            TokenOwner::Project(&caller.project_id)
        } else {
            TokenOwner::User(&caller.user_id)
        };
        let records = self.store.tokens(owner).await?;
        let mut tokens = Vec::with_capacity(records.len());
        for record in records {
            tokens.push(self.shown_token(record, None).await?);
        }
        Ok(tokens)
    }

    async fn shown_token(&self, record: TokenRecord, secret: Option<String>) -> Result<ApiToken> {
        let project_name = match &record.project_id {
            Some(id) => self.store.project(id).await?.map(|p| p.name),
            None => None,
        };
        let scopes = crate::identity::stored_scopes(record.scopes.as_deref());
        let compute_scopes =
            crate::identity::stored_compute_scopes(record.compute_scopes.as_deref())
                .map(|s| s.to_map());
        Ok(ApiToken {
            id: record.id,
            name: record.name,
            user_id: record.user_id.map(UserId::new),
            scopes,
            compute_scopes,
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            project_name,
            secret,
        })
    }

    pub async fn create_token(&self, caller: &Principal, req: CreateToken) -> Result<ApiToken> {
        caller.require(Permission::TokenWrite)?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "name",
                "name must be 1 to 128 printable characters",
            ));
        }
        let user_id = match &req.user_id {
            Some(user) if *user != caller.user_id => {
                if !caller.is_install_admin() {
                    return Err(Error::Forbidden(
                        "only an install admin may make tokens for another user".into(),
                    ));
                }
                if has_nul(user) || self.store.user(user).await?.is_none() {
                    return Err(Error::NotFound(format!("user {user} not found")));
                }
                user.clone()
            }
            _ => caller.user_id.clone(),
        };
        let project = match &req.project {
            Some(name) => self.project_named(name).await?,
            None => self
                .store
                .project(&caller.project_id)
                .await?
                .ok_or_else(|| Error::NotFound("your project no longer exists".into()))?,
        };
        let membership = self.store.membership(&user_id, &project.id).await?;
        // A token made with an API token stays in that token's project,
        // unless the token is an unrestricted install admin's. (Said only
        // of a workspace its user is in: of others, as of none, that it is
        // not found, below.)
        if caller.token_id.is_some()
            && project.id != caller.project_id
            && !caller.is_install_admin()
            && membership.is_some()
        {
            return Err(Error::Forbidden(format!(
                "a token made with an API token acts in its workspace, {}; log in to make one for {}",
                caller.project_name, project.name
            )));
        }
        let Some(membership) = membership else {
            // Said as of a workspace that does not exist, unless the caller
            // may see every workspace: a name is no one else's to learn.
            return Err(Error::NotFound(match caller.is_install_admin() {
                true => format!(
                    "workspace {} not found (the token's user is not a member of it)",
                    project.name
                ),
                false => format!("workspace {} not found", project.name),
            }));
        };
        let role: tessera_core::Role = membership
            .role
            .parse()
            .map_err(|e: String| Error::invalid("role", e))?;
        let user = self
            .store
            .user(&user_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {user_id} not found")))?;
        let install_role = crate::identity::parse_install_role(user.install_role.as_deref())?;
        let grants = |p: Permission| match p.reach() {
            tessera_core::Reach::Workspace => role.grants(p),
            tessera_core::Reach::Fleet => install_role.is_some_and(|r| r.grants(p)),
        };
        // A token made with a scoped token gets no more than its scopes.
        let requested = match (&req.scopes, &caller.scopes) {
            (None, Some(mine)) => Some(
                mine.iter()
                    .filter(|p| grants(**p))
                    .map(|p| p.as_str().to_string())
                    .collect(),
            ),
            (requested, _) => requested.clone(),
        };
        let scopes = match &requested {
            None => None,
            Some(names) => {
                let mut scopes = Vec::new();
                for name in names {
                    let permission: Permission = name
                        .parse()
                        .map_err(|e: String| Error::invalid("scopes", e))?;
                    if caller
                        .scopes
                        .as_ref()
                        .is_some_and(|mine| !mine.contains(&permission))
                    {
                        return Err(Error::invalid(
                            "scopes",
                            format!(
                                "scope {permission} is not among the scopes of the token you used"
                            ),
                        ));
                    }
                    if !grants(permission) {
                        return Err(Error::invalid(
                            "scopes",
                            match permission.reach() {
                                tessera_core::Reach::Workspace => format!(
                                    "scope {permission} is not granted by role {role} in workspace {}",
                                    project.name
                                ),
                                tessera_core::Reach::Fleet => format!(
                                    "scope {permission} acts on the whole install, and the \
                                     token's user has no install role that grants it"
                                ),
                            },
                        ));
                    }
                    scopes.push(permission.as_str().to_string());
                }
                scopes.sort();
                scopes.dedup();
                Some(scopes)
            }
        };
        let expires_at = match req.expires_in_days {
            None => None,
            Some(days) if (1..=3650).contains(&days) => Some(tessera_store::timestamp(
                chrono::Utc::now() + chrono::Duration::days(days),
            )),
            Some(_) => {
                return Err(Error::invalid(
                    "expires_in_days",
                    "expires_in_days must be between 1 and 3650",
                ));
            }
        };
        // Nor does it outlive it.
        let expires_at = match (expires_at, &caller.expires_at) {
            (None, Some(mine)) => Some(mine.clone()),
            (Some(asked), Some(mine)) if asked > *mine => Some(mine.clone()),
            (asked, _) => asked,
        };
        let compute_scopes = match (&req.compute_scopes, &caller.compute_scopes) {
            (None, mine) => mine.clone(),
            (Some(asked), mine) => {
                let asked =
                    ComputeScopes::parse(asked).map_err(|e| Error::invalid("compute_scopes", e))?;
                let own = format!("compute.{user_id}");
                if let Some(path) = asked.paths().find(|p| {
                    *p != own
                        && !(p.starts_with(own.as_str())
                            && p.as_bytes().get(own.len()) == Some(&b'.'))
                }) {
                    return Err(Error::invalid(
                        "compute_scopes",
                        format!("scope path {path} is not under {own}, the token's user's"),
                    ));
                }
                if mine.as_ref().is_some_and(|mine| !mine.covers(&asked)) {
                    return Err(Error::invalid(
                        "compute_scopes",
                        "the compute scopes asked for go beyond those of the token you used",
                    ));
                }
                Some(asked)
            }
        };
        // A token limited by compute_scopes alone (no scopes) acts on the
        // containers API with its user's whole role, within those grants:
        // more than a scoped token may give, unless it is such a token.
        // (Without scopes, a token with compute_scopes has none elsewhere.)
        let compute_only =
            |scopes: Option<usize>, compute: bool| compute && scopes.is_none_or(|n| n == 0);
        if compute_only(scopes.as_ref().map(Vec::len), compute_scopes.is_some())
            && caller.scopes.is_some()
            && !compute_only(
                caller.scopes.as_ref().map(Vec::len),
                caller.compute_scopes.is_some(),
            )
        {
            return Err(Error::invalid(
                "compute_scopes",
                "a token made with a scoped token cannot be limited by compute_scopes alone (it \
                 would act on the containers API with the whole of its user's role): give it \
                 scopes too",
            ));
        }
        let secret = generate_token();
        let id = new_id("tok");
        // Made with a login (not a token), it goes with that login.
        let login = caller
            .token_id
            .is_none()
            .then(|| caller.login.clone())
            .flatten();
        let kept = self
            .store
            .insert_token(&NewToken {
                id: id.clone(),
                name: name.to_string(),
                token_hash: hash_token(&secret),
                user_id,
                project_id: project.id,
                scopes,
                expires_at,
                parent_id: caller.token_id.clone(),
                login_family: login.clone(),
                login_user: login.as_ref().map(|_| caller.user_id.clone()),
                compute_scopes: compute_scopes
                    .map(|s| serde_json::to_string(&s.to_map()).unwrap_or_default()),
            })
            .await?;
        if !kept {
            return Err(login_revoked());
        }
        let record = self
            .store
            .token(&id)
            .await?
            .ok_or_else(|| Error::Unavailable("the new token vanished".into()))?;
        self.shown_token(record, Some(secret)).await
    }

    /// Refuses a workspace's `credential_admin` the token or credential of
    /// a user with a role over the install (the bootstrap admin's token,
    /// say): no workspace role reaches the fleet's credentials. Its own,
    /// and any for an install admin, pass.
    pub(crate) async fn require_reach_over(
        &self,
        caller: &Principal,
        owner: Option<&str>,
        what: &str,
        id: &str,
    ) -> Result<()> {
        let Some(owner) = owner else {
            return Ok(());
        };
        if caller.is_install_admin() || owner == caller.user_id {
            return Ok(());
        }
        let holds_install_role = self
            .store
            .user(owner)
            .await?
            .is_some_and(|u| u.install_role.is_some());
        match holds_install_role {
            true => Err(Error::Forbidden(format!(
                "{what} {id} is of a user with a role over the install; only an install admin \
                 may revoke it"
            ))),
            false => Ok(()),
        }
    }

    /// Revokes a token, with every token and credential made with it: the
    /// caller's own; any of its workspace's with `credential_admin`; any
    /// for an install admin. Another token is a 404.
    pub async fn revoke_token(&self, caller: &Principal, id: &str) -> Result<()> {
        let record = match has_nul(id) {
            true => None,
            false => self.store.token(id).await?,
        };
        let visible = record.filter(|r| {
            caller.is_install_admin()
                || r.user_id.as_deref() == Some(&caller.user_id)
                || (caller.can(Permission::CredentialAdmin)
                    && r.project_id.as_deref() == Some(&caller.project_id))
        });
        let Some(record) = visible.filter(|r| r.revoked_at.is_none()) else {
            return Err(Error::NotFound(format!("token {id} not found")));
        };
        self.require_reach_over(caller, record.user_id.as_deref(), "token", id)
            .await?;
        // Any token may revoke itself; only one not scoped away from it
        // revokes others.
        if caller.token_id.as_deref() != Some(record.id.as_str()) {
            caller.require(Permission::TokenWrite)?;
        }
        if record.id == BOOTSTRAP_TOKEN_ID && caller.token_id.as_deref() == Some(BOOTSTRAP_TOKEN_ID)
        {
            return Err(Error::Conflict(
                "the bootstrap admin token cannot revoke itself; use another admin credential"
                    .into(),
            ));
        }
        self.store.revoke_token(&record.id).await?;
        self.identity.forget_all();
        Ok(())
    }
}

/// The answer to a credential made with a login revoked meanwhile.
pub(crate) fn login_revoked() -> Error {
    Error::Unauthenticated(
        "this login was revoked (its refresh token was used twice, or its user's password \
         changed, or its user was disabled); log in again"
            .into(),
    )
}
