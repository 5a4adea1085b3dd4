//! Projects, which the provisioning API calls workspaces, and each user's
//! active one.

use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::users::validate_name;
use crate::{App, has_nul, new_id};
use tessera_core::Permission;
use tessera_store::ProjectRecord;

/// A workspace as its user sees it.
#[derive(Clone, Debug)]
pub struct Workspace {
    pub name: String,
    pub path: String,
    pub role: Option<String>,
    pub active: bool,
    pub last_used: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CreateWorkspace {
    pub name: String,
    pub path: Option<String>,
    pub activate: bool,
}

impl App {
    /// A project by name; 404 when there is none.
    pub(crate) async fn project_named(&self, name: &str) -> Result<ProjectRecord> {
        let project = match has_nul(name) {
            true => None,
            false => self.store.project_by_name(name).await?,
        };
        project.ok_or_else(|| Error::NotFound(format!("workspace {name} not found")))
    }

    /// A project whose settings (quota, policy) the caller may read: its
    /// own (`workspace_read`), or any (`quota_admin`, install admins);
    /// another's is 404, as if it were not there.
    pub(crate) async fn project_to_read(
        &self,
        caller: &Principal,
        project: &str,
    ) -> Result<ProjectRecord> {
        if project == caller.project_name {
            caller.require(Permission::WorkspaceRead)?;
        } else if !caller.can(Permission::QuotaAdmin) {
            return Err(Error::NotFound(format!(
                "workspace {project} not found (requests act in your current workspace, {})",
                caller.project_name
            )));
        }
        self.project_named(project).await
    }

    /// The caller's workspaces; an install admin sees every project.
    pub async fn workspaces(&self, caller: &Principal) -> Result<Vec<Workspace>> {
        caller.require(Permission::WorkspaceRead)?;
        let mine = self.store.memberships(&caller.user_id).await?;
        let mut workspaces: Vec<Workspace> = mine
            .into_iter()
            .map(|m| Workspace {
                active: m.project_id == caller.project_id,
                name: m.project_name,
                path: m.path,
                role: Some(m.role),
                last_used: m.last_used,
            })
            .collect();
        if caller.is_install_admin() {
            for project in self.store.projects().await? {
                if !workspaces.iter().any(|w| w.name == project.name) {
                    workspaces.push(Workspace {
                        active: false,
                        name: project.name,
                        path: project.path,
                        role: None,
                        last_used: None,
                    });
                }
            }
            workspaces.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Ok(workspaces)
    }

    /// Creates a project (install admins: `workspace_create` is a fleet
    /// permission); the caller becomes its admin.
    pub async fn create_workspace(
        &self,
        caller: &Principal,
        req: CreateWorkspace,
    ) -> Result<Workspace> {
        caller.require(Permission::WorkspaceCreate)?;
        validate_name("name", &req.name)?;
        let path = match req.path {
            Some(path)
                if path.is_empty() || path.len() > 1024 || path.chars().any(char::is_control) =>
            {
                return Err(Error::invalid(
                    "path",
                    "path must be 1 to 1024 printable characters",
                ));
            }
            Some(path) => path,
            None => format!("/workspaces/{}", req.name),
        };
        let project = ProjectRecord {
            id: new_id("prj"),
            name: req.name.clone(),
            path,
            created_at: tessera_store::now(),
        };
        let role = tessera_core::Role::Admin.as_str();
        if !self
            .store
            .insert_project(&project, Some((&caller.user_id, role)))
            .await?
        {
            return Err(Error::Conflict(format!(
                "workspace {} already exists",
                req.name
            )));
        }
        if req.activate {
            self.store
                .activate_project(&caller.user_id, &project.id)
                .await?;
            self.identity.forget_all();
        }
        tracing::info!(workspace = %req.name, by = %caller.username, "workspace created");
        let membership = self.store.membership(&caller.user_id, &project.id).await?;
        Ok(Workspace {
            name: project.name,
            path: project.path,
            role: Some(role.to_string()),
            active: req.activate && acts_in_active(caller, &project.id),
            last_used: membership.and_then(|m| m.last_used),
        })
    }

    /// Makes a workspace the caller's active one (for its logins; an API
    /// token stays bound to its own project).
    pub async fn activate_workspace(&self, caller: &Principal, name: &str) -> Result<Workspace> {
        caller.require(Permission::WorkspaceRead)?;
        let project = self.project_named(name).await?;
        if !self
            .store
            .activate_project(&caller.user_id, &project.id)
            .await?
        {
            return Err(Error::NotFound(format!("workspace {name} not found")));
        }
        self.identity.forget_all();
        let membership = self.store.membership(&caller.user_id, &project.id).await?;
        Ok(Workspace {
            name: project.name,
            path: project.path,
            role: membership.as_ref().map(|m| m.role.clone()),
            active: acts_in_active(caller, &project.id),
            last_used: membership.and_then(|m| m.last_used),
        })
    }

    /// The project a request names in its `workspace` field: the caller's
    /// current one when absent; another project the caller is not a member
    /// of is a 404.
    pub(crate) async fn workspace_of(
        &self,
        caller: &Principal,
        workspace: Option<&str>,
    ) -> Result<String> {
        let Some(name) = workspace.filter(|w| !w.is_empty()) else {
            return Ok(caller.project_id.clone());
        };
        if name == caller.project_name {
            return Ok(caller.project_id.clone());
        }
        Err(Error::NotFound(format!(
            "workspace {name} not found (requests act in your current workspace, {}; activate \
             another with POST /v1/workspaces/{{name}}/activate)",
            caller.project_name
        )))
    }
}

/// Whether `caller` acts in `project_id` once it is the user's active
/// workspace: a login does; an API token acts in its own workspace
/// whatever the user activates (`active` then says so, as the list does).
fn acts_in_active(caller: &Principal, project_id: &str) -> bool {
    caller.token_id.is_none() || caller.project_id == project_id
}
