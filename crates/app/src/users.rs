//! Users and their roles, managed by admins.
//!
//! An install admin manages every user: their workspace roles, their
//! install roles, passwords, and their existence. A workspace admin manages
//! the members of the workspace it acts in, and nobody else: it sees only
//! them (and only their role there), gives roles there, takes members out,
//! and changes the password of, disables or deletes only users who belong
//! to that workspace alone and hold no install role, since anything more
//! would reach into workspaces it does not administer.

use crate::error::{Error, Result};
use crate::identity::{Principal, validate_password};
use crate::{App, has_nul, new_id};
use tessera_core::{InstallRole, Permission, ProjectId, Role, UserId};
use tessera_store::{MembershipRecord, NewUser, UserRecord};

/// A user with the projects it belongs to (never its password hash).
#[derive(Clone, Debug)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub disabled: bool,
    pub has_password: bool,
    /// `admin` or `operator` over the whole install, if either.
    pub install_role: Option<InstallRole>,
    /// The project its logins act in.
    pub active_project_id: Option<ProjectId>,
    pub memberships: Vec<Membership>,
    pub created_at: String,
}

/// A user's role in a project.
#[derive(Clone, Debug)]
pub struct Membership {
    pub project_id: ProjectId,
    pub project_name: String,
    pub role: Role,
}

impl User {
    fn from_records(record: UserRecord, memberships: Vec<MembershipRecord>) -> Result<User> {
        let corrupt = |what: String| Error::corrupt(format!("user {}: {what}", record.id));
        let install_role = record
            .install_role
            .as_deref()
            .map(str::parse::<InstallRole>)
            .transpose()
            .map_err(|e| corrupt(format!("install role: {e}")))?;
        let memberships = memberships
            .into_iter()
            .map(|m| {
                let role = m
                    .role
                    .parse::<Role>()
                    .map_err(|e| corrupt(format!("role in {}: {e}", m.project_name)))?;
                Ok(Membership {
                    project_id: ProjectId::new(m.project_id),
                    project_name: m.project_name,
                    role,
                })
            })
            .collect::<Result<_>>()?;
        Ok(User {
            id: UserId::new(record.id.clone()),
            username: record.username.clone(),
            disabled: record.disabled != 0,
            has_password: record.password_hash.is_some(),
            install_role,
            active_project_id: record.active_project_id.clone().map(ProjectId::new),
            memberships,
            created_at: record.created_at.clone(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct CreateUser {
    pub username: String,
    pub password: Option<String>,
    pub project: String,
    pub role: String,
    /// `admin` or `operator` over the whole install (install admins only).
    pub install_role: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct UpdateUser {
    pub password: Option<String>,
    pub disabled: Option<bool>,
    /// Gives the user this role in this project (added if not a member);
    /// the role `none` takes the user out of the project.
    pub membership: Option<(String, String)>,
    /// Sets (`admin`, `operator`) or clears (`none`) the install role.
    pub install_role: Option<String>,
}

pub fn validate_name(field: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{field} {:?} must be 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit",
                name
            ),
        ))
    }
}

/// Why `wanted` cannot be a new user's name: `taken` has it, in this case
/// or another (usernames are unique whatever their case).
fn taken_username(wanted: &str, taken: &str) -> Error {
    match wanted == taken {
        true => Error::Conflict(format!("user {wanted} already exists")),
        // The other's spelling is not told: it may be a user of another
        // workspace, whose name the caller has no business learning.
        false => Error::Conflict(format!(
            "user {wanted} would differ from an existing user only in case: usernames are \
             unique whatever their case"
        )),
    }
}

fn parse_role(role: &str) -> Result<Role> {
    role.parse().map_err(|e: String| Error::invalid("role", e))
}

/// An install role as a request names it; `none` clears it.
fn parse_install_role(role: &str) -> Result<Option<InstallRole>> {
    match role {
        "none" => Ok(None),
        other => other
            .parse()
            .map(Some)
            .map_err(|e: String| Error::invalid("install_role", format!("{e}, or none"))),
    }
}

/// Not an install admin: the users this caller may see are the members of
/// its workspace, if it administers that workspace.
fn workspace_admin(caller: &Principal) -> Result<&str> {
    caller.require(Permission::UserAdmin)?;
    Ok(caller.project_id.as_str())
}

impl App {
    async fn hash(&self, password: &str) -> Result<String> {
        validate_password(password)?;
        self.throttle.hash_password(password).await
    }

    pub async fn users(&self, caller: &Principal) -> Result<Vec<User>> {
        let records = match caller.is_install_admin() {
            true => self.store.users().await?,
            false => self.store.project_users(workspace_admin(caller)?).await?,
        };
        let mut users = Vec::new();
        for record in records {
            let memberships = self.store.memberships(&record.id).await?;
            users.push(self.shown(caller, User::from_records(record, memberships)?));
        }
        Ok(users)
    }

    pub async fn user(&self, caller: &Principal, id: &str) -> Result<User> {
        let user = self.visible_user(caller, id).await?;
        Ok(self.shown(caller, user))
    }

    /// A user as `caller` may see it: a workspace admin sees its role in
    /// the workspace only (not its other workspaces, nor a role over the
    /// install, unless the user is itself).
    fn shown(&self, caller: &Principal, mut user: User) -> User {
        if !caller.is_install_admin() {
            user.memberships
                .retain(|m| *m.project_id == *caller.project_id);
            if user.id.to_string() != caller.user_id {
                user.install_role = None;
            }
        }
        user
    }

    /// A user the caller administers; anyone else is a 404.
    async fn visible_user(&self, caller: &Principal, id: &str) -> Result<User> {
        let scope = match caller.is_install_admin() {
            true => None,
            false => Some(workspace_admin(caller)?),
        };
        let user = self.load_user(id).await?;
        match scope {
            Some(project) if !user.memberships.iter().any(|m| *m.project_id == *project) => {
                Err(Error::NotFound(format!("user {id} not found")))
            }
            _ => Ok(user),
        }
    }

    /// Refuses a change to a user's password, state or existence unless the
    /// caller is an install admin, or administers every workspace the user
    /// belongs to (its own) and the user holds no install role.
    fn require_whole_user(&self, caller: &Principal, user: &User, what: &str) -> Result<()> {
        if caller.is_install_admin() {
            return Ok(());
        }
        let elsewhere = user
            .memberships
            .iter()
            .any(|m| *m.project_id != *caller.project_id);
        if elsewhere || user.install_role.is_some() {
            return Err(Error::Forbidden(format!(
                "only an install admin may {what} user {}: it belongs to more than workspace {}, \
                 or has a role over the install",
                user.username, caller.project_name
            )));
        }
        Ok(())
    }

    async fn load_user(&self, id: &str) -> Result<User> {
        let record = match has_nul(id) {
            true => None,
            false => self.store.user(id).await?,
        };
        let record = record.ok_or_else(|| Error::NotFound(format!("user {id} not found")))?;
        let memberships = self.store.memberships(&record.id).await?;
        User::from_records(record, memberships)
    }

    /// The project a user-admin request names: any for an install admin,
    /// the caller's own otherwise (another is a 404, as every other
    /// workspace is to it).
    async fn administered_project(
        &self,
        caller: &Principal,
        name: &str,
    ) -> Result<tessera_store::ProjectRecord> {
        if !caller.is_install_admin() {
            workspace_admin(caller)?;
            if name != caller.project_name {
                return Err(Error::NotFound(format!(
                    "workspace {name} not found (you administer {})",
                    caller.project_name
                )));
            }
        }
        self.project_named(name).await
    }

    fn require_install_admin(caller: &Principal, what: &str) -> Result<()> {
        match caller.is_install_admin() {
            true => Ok(()),
            false => Err(Error::Forbidden(format!(
                "only an install admin may {what}"
            ))),
        }
    }

    pub async fn create_user(&self, caller: &Principal, req: CreateUser) -> Result<User> {
        validate_name("username", &req.username)?;
        let role = parse_role(&req.role)?;
        let project = self.administered_project(caller, &req.project).await?;
        let install_role = match req.install_role.as_deref() {
            None => None,
            Some(text) => {
                let parsed = parse_install_role(text)?;
                if parsed.is_some() {
                    Self::require_install_admin(caller, "grant install roles")?;
                }
                parsed
            }
        };
        if let Some(password) = &req.password {
            caller.require_unscoped("giving a user a password")?;
            validate_password(password)?;
        }
        if let Some(taken) = self.store.user_by_folded_name(&req.username).await? {
            return Err(taken_username(&req.username, &taken.username));
        }
        let password_hash = match &req.password {
            Some(password) => Some(self.hash(password).await?),
            None => None,
        };
        let id = new_id("usr");
        let created = self
            .store
            .insert_user(&NewUser {
                id: id.clone(),
                username: req.username.clone(),
                password_hash,
                project_id: project.id,
                role: role.as_str().into(),
                install_role: install_role.map(|r| r.as_str().to_string()),
            })
            .await?;
        if !created {
            let taken = self.store.user_by_folded_name(&req.username).await?;
            let taken = taken.map_or_else(|| req.username.clone(), |t| t.username);
            return Err(taken_username(&req.username, &taken));
        }
        tracing::info!(username = %req.username, %role, project = %req.project, by = %caller.username, "user created");
        let user = self.load_user(&id).await?;
        Ok(self.shown(caller, user))
    }

    pub async fn update_user(&self, caller: &Principal, id: &str, req: UpdateUser) -> Result<User> {
        let user = self.visible_user(caller, id).await?;
        let install_role = match req.install_role.as_deref() {
            None => None,
            Some(text) => {
                let parsed = parse_install_role(text)?;
                Self::require_install_admin(caller, "grant or take install roles")?;
                if *user.id == *caller.user_id {
                    return Err(Error::Conflict(
                        "you cannot change your own install role; ask another install admin".into(),
                    ));
                }
                Some(parsed)
            }
        };
        let membership = match &req.membership {
            None => None,
            Some((project, role)) => {
                let project = self.administered_project(caller, project).await?;
                let role = match role.as_str() {
                    "none" => None,
                    other => Some(parse_role(other)?),
                };
                if role.is_none() && *user.id == *caller.user_id {
                    return Err(Error::Conflict(
                        "you cannot take yourself out of a workspace".into(),
                    ));
                }
                // A user with a role over the install is an install
                // admin's to place: taken out of a workspace (or demoted
                // in it) by that workspace's admin, its tokens there died
                // with its membership, the fleet's automation among them.
                if user.install_role.is_some() && !caller.is_install_admin() {
                    return Err(Error::Forbidden(format!(
                        "only an install admin may change the workspaces of user {}: \
                         it has a role over the install",
                        user.username
                    )));
                }
                Some((project, role))
            }
        };
        if req.password.is_some() {
            caller.require_unscoped("changing a password")?;
            self.require_whole_user(caller, &user, "change the password of")?;
        }
        if req.disabled.is_some() {
            self.require_whole_user(caller, &user, "disable or enable")?;
        }
        if req.disabled == Some(true) && *user.id == *caller.user_id {
            return Err(Error::Conflict("you cannot disable yourself".into()));
        }
        let password_hash = match &req.password {
            Some(password) => Some(self.hash(password).await?),
            None => None,
        };
        if let Some((project, role)) = &membership {
            match role {
                Some(role) => {
                    self.store
                        .put_membership(&user.id, &project.id, role.as_str())
                        .await?;
                    if user.active_project_id.is_none() {
                        self.store.activate_project(&user.id, &project.id).await?;
                    }
                }
                None => {
                    // A user is let in through a workspace: out of its
                    // last, an install operator could no longer reach the
                    // fleet it runs, which only an install admin may
                    // decide. The store checks it under a lock of the
                    // user's row (two admins each taking one of its last
                    // two).
                    let keep_last = !caller.is_install_admin();
                    let taken = self
                        .store
                        .delete_membership(&user.id, &project.id, keep_last)
                        .await?;
                    let still = || async {
                        Ok::<_, Error>(
                            self.store
                                .membership(&user.id, &project.id)
                                .await?
                                .is_some(),
                        )
                    };
                    if !taken && still().await? {
                        return Err(Error::Forbidden(format!(
                            "only an install admin may take user {} out of its last workspace: \
                             it holds an install role",
                            user.username
                        )));
                    }
                }
            }
        }
        if let Some(role) = install_role {
            self.store
                .set_install_role(&user.id, role.map(InstallRole::as_str))
                .await?;
            tracing::info!(username = %user.username, install_role = ?role, by = %caller.username, "install role changed");
        }
        if password_hash.is_some() || req.disabled.is_some() {
            self.store
                .update_user(&user.id, password_hash.as_deref(), req.disabled)
                .await?;
        }
        self.identity.forget_all();
        let user = self.load_user(&user.id).await?;
        Ok(self.shown(caller, user))
    }

    pub async fn delete_user(&self, caller: &Principal, id: &str) -> Result<()> {
        let user = self.visible_user(caller, id).await?;
        if *user.id == *caller.user_id {
            return Err(Error::Conflict("you cannot delete yourself".into()));
        }
        self.require_whole_user(caller, &user, "delete")?;
        self.store.delete_user(&user.id).await?;
        self.identity.forget_all();
        tracing::info!(username = %user.username, by = %caller.username, "user deleted");
        Ok(())
    }
}
