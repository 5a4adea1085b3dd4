//! Roles and the permissions they grant.
//!
//! Permissions are the provisioning API's (`server_read`, `workflow_submit`,
//! ...) plus the native API's own for instances, SSH keys and users. A role
//! is a fixed set of them; an API token may narrow its user's set further
//! with scopes, never widen it.

use std::fmt;
use std::str::FromStr;

macro_rules! permissions {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// Something a caller may be allowed to do.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Permission {
            $($variant),*
        }

        impl Permission {
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Permission::$variant => $name),*
                }
            }
        }
    };
}

permissions! {
    ServerRead => "server_read",
    ServerCreate => "server_create",
    ServerDelete => "server_delete",
    TaskservRead => "taskserv_read",
    TaskservCreate => "taskserv_create",
    TaskservDelete => "taskserv_delete",
    WorkflowSubmit => "workflow_submit",
    WorkflowRead => "workflow_read",
    WorkflowCancel => "workflow_cancel",
    OperationRead => "operation_read",
    OperationCancel => "operation_cancel",
    WorkspaceRead => "workspace_read",
    WorkspaceCreate => "workspace_create",
    SystemMetrics => "system_metrics",
    InstanceRead => "instance_read",
    InstanceCreate => "instance_create",
    InstanceDelete => "instance_delete",
    SshKeyRead => "ssh_key_read",
    SshKeyWrite => "ssh_key_write",
    VolumeRead => "volume_read",
    VolumeWrite => "volume_write",
    ScriptRead => "script_read",
    ScriptWrite => "script_write",
    BalanceRead => "balance_read",
    BalanceAdmin => "balance_admin",
    CredentialWrite => "credential_write",
    UserAdmin => "user_admin",
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown permission {s:?}"))
    }
}

/// A user's role in a project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs the cloud: everything, including users and the fleet.
    Admin,
    /// Runs the fleet: hosts, taskservs, workflows, and the project's
    /// instances; no users, no new workspaces.
    Operator,
    /// Uses the cloud: the project's instances, keys, workflows and
    /// operations; reads taskservs.
    Member,
    /// Reads what a member can see.
    Viewer,
}

impl Role {
    pub const ALL: &'static [Role] = &[Role::Admin, Role::Operator, Role::Member, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn grants(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Operator => !matches!(permission, UserAdmin | WorkspaceCreate | BalanceAdmin),
            Role::Member => matches!(
                permission,
                TaskservRead
                    | WorkflowSubmit
                    | WorkflowRead
                    | WorkflowCancel
                    | OperationRead
                    | OperationCancel
                    | WorkspaceRead
                    | InstanceRead
                    | InstanceCreate
                    | InstanceDelete
                    | SshKeyRead
                    | SshKeyWrite
                    | VolumeRead
                    | VolumeWrite
                    | ScriptRead
                    | ScriptWrite
                    | BalanceRead
                    | CredentialWrite
            ),
            Role::Viewer => matches!(
                permission,
                TaskservRead
                    | WorkflowRead
                    | OperationRead
                    | WorkspaceRead
                    | InstanceRead
                    | SshKeyRead
                    | VolumeRead
                    | ScriptRead
                    | BalanceRead
            ),
        }
    }

    pub fn permissions(self) -> Vec<Permission> {
        Permission::ALL
            .iter()
            .copied()
            .filter(|p| self.grants(*p))
            .collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: use admin, operator, member or viewer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(*p));
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(*r));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn roles_nest() {
        for p in Permission::ALL {
            if Role::Viewer.grants(*p) {
                assert!(Role::Member.grants(*p), "{p}");
            }
            if Role::Member.grants(*p) {
                assert!(Role::Operator.grants(*p), "{p}");
            }
        }
        assert!(!Role::Operator.grants(Permission::UserAdmin));
        assert!(!Role::Member.grants(Permission::ServerRead));
        assert!(!Role::Viewer.grants(Permission::InstanceCreate));
    }
}
