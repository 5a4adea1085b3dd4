//! Users and their roles in projects, managed by admins.

use crate::error::{Error, Result};
use crate::identity::{Principal, hash_password, validate_password};
use crate::{App, has_nul, new_id};
use tessera_core::{Permission, Role};
use tessera_store::{MembershipRecord, NewUser, UserRecord};

/// A user with the projects it belongs to.
#[derive(Clone, Debug)]
pub struct User {
    pub record: UserRecord,
    pub memberships: Vec<MembershipRecord>,
}

#[derive(Clone, Debug)]
pub struct CreateUser {
    pub username: String,
    pub password: Option<String>,
    pub project: String,
    pub role: String,
}

#[derive(Clone, Debug, Default)]
pub struct UpdateUser {
    pub password: Option<String>,
    pub disabled: Option<bool>,
    /// Gives the user this role in this project (added if not a member).
    pub membership: Option<(String, String)>,
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
                name.escape_debug().to_string()
            ),
        ))
    }
}

fn parse_role(role: &str) -> Result<Role> {
    role.parse().map_err(|e: String| Error::invalid("role", e))
}

async fn hash(password: &str) -> Result<String> {
    validate_password(password)?;
    let password = password.to_string();
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?
}

impl App {
    pub async fn users(&self, caller: &Principal) -> Result<Vec<User>> {
        caller.require(Permission::UserAdmin)?;
        let mut users = Vec::new();
        for record in self.store.users().await? {
            let memberships = self.store.memberships(&record.id).await?;
            users.push(User {
                record,
                memberships,
            });
        }
        Ok(users)
    }

    pub async fn user(&self, caller: &Principal, id: &str) -> Result<User> {
        caller.require(Permission::UserAdmin)?;
        self.load_user(id).await
    }

    async fn load_user(&self, id: &str) -> Result<User> {
        let record = match has_nul(id) {
            true => None,
            false => self.store.user(id).await?,
        };
        let record = record.ok_or_else(|| Error::NotFound(format!("user {id} not found")))?;
        let memberships = self.store.memberships(&record.id).await?;
        Ok(User {
            record,
            memberships,
        })
    }

    pub async fn create_user(&self, caller: &Principal, req: CreateUser) -> Result<User> {
        caller.require(Permission::UserAdmin)?;
        validate_name("username", &req.username)?;
        let role = parse_role(&req.role)?;
        let password_hash = match &req.password {
            Some(password) => Some(hash(password).await?),
            None => None,
        };
        let project = self.project_named(&req.project).await?;
        let id = new_id("usr");
        let created = self
            .store
            .insert_user(&NewUser {
                id: id.clone(),
                username: req.username.clone(),
                password_hash,
                project_id: project.id,
                role: role.as_str().into(),
            })
            .await?;
        if !created {
            return Err(Error::Conflict(format!(
                "user {} already exists",
                req.username
            )));
        }
        tracing::info!(username = %req.username, %role, project = %req.project, by = %caller.username, "user created");
        self.load_user(&id).await
    }

    pub async fn update_user(&self, caller: &Principal, id: &str, req: UpdateUser) -> Result<User> {
        caller.require(Permission::UserAdmin)?;
        let user = self.load_user(id).await?;
        if req.disabled == Some(true) && user.record.id == caller.user_id {
            return Err(Error::Conflict("you cannot disable yourself".into()));
        }
        let password_hash = match &req.password {
            Some(password) => Some(hash(password).await?),
            None => None,
        };
        if let Some((project, role)) = &req.membership {
            let role = parse_role(role)?;
            let project = self.project_named(project).await?;
            self.store
                .put_membership(&user.record.id, &project.id, role.as_str())
                .await?;
            if user.record.active_project_id.is_none() {
                self.store
                    .activate_project(&user.record.id, &project.id)
                    .await?;
            }
        }
        if password_hash.is_some() || req.disabled.is_some() {
            self.store
                .update_user(&user.record.id, password_hash.as_deref(), req.disabled)
                .await?;
        }
        self.identity.forget_all();
        self.load_user(&user.record.id).await
    }

    pub async fn delete_user(&self, caller: &Principal, id: &str) -> Result<()> {
        caller.require(Permission::UserAdmin)?;
        let user = self.load_user(id).await?;
        if user.record.id == caller.user_id {
            return Err(Error::Conflict("you cannot delete yourself".into()));
        }
        self.store.delete_user(&user.record.id).await?;
        self.identity.forget_all();
        tracing::info!(username = %user.record.username, by = %caller.username, "user deleted");
        Ok(())
    }
}
