//! Roles and the permissions they grant.
//!
//! Permissions are the provisioning API's (`server_read`, `workflow_submit`,
//! ...) plus the native API's own for instances, SSH keys, users, tokens
//! and quotas. Each permission has a reach ([`Reach`]): a *workspace*
//! permission acts inside the one project the caller acts in, and comes from
//! the caller's [`Role`] there; a *fleet* permission acts on the whole
//! install (hosts, join tokens, Kloigos administration, every workspace),
//! and comes only from the user's [`InstallRole`], which only an install
//! admin grants. No workspace role grants a fleet permission, so an admin of
//! one workspace is nobody in another. An API token may narrow its user's
//! set further with scopes, never widen it.

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
    NetworkRead => "network_read",
    NetworkWrite => "network_write",
    VolumeRead => "volume_read",
    VolumeWrite => "volume_write",
    ScriptRead => "script_read",
    ScriptWrite => "script_write",
    SecretRead => "secret_read",
    SecretWrite => "secret_write",
    BalanceRead => "balance_read",
    BalanceAdmin => "balance_admin",
    CredentialWrite => "credential_write",
    CredentialAdmin => "credential_admin",
    TokenWrite => "token_write",
    UserAdmin => "user_admin",
    QuotaAdmin => "quota_admin",
}

/// Where a permission acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Inside the caller's workspace (project), granted by its [`Role`] there.
    Workspace,
    /// On the whole install, granted by an [`InstallRole`] only.
    Fleet,
}

impl Permission {
    pub fn reach(self) -> Reach {
        use Permission::*;
        match self {
            ServerRead | ServerCreate | ServerDelete | TaskservCreate | TaskservDelete
            | WorkspaceCreate | SystemMetrics | BalanceAdmin | QuotaAdmin => Reach::Fleet,
            _ => Reach::Workspace,
        }
    }
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

/// A user's role in one workspace (project). It grants workspace
/// permissions only, and only there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything in the workspace, its members included.
    Admin,
    /// Everything in the workspace but its members: also sees and revokes
    /// every member's API tokens and OAuth credentials there.
    Operator,
    /// Uses the workspace: instances, keys, volumes, scripts, workflows,
    /// operations, its own tokens and credentials.
    Member,
    /// Reads what a member can see; makes read-only tokens.
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

    /// Whether the role grants `permission` in its workspace. Never a
    /// fleet permission.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission::*;
        if permission.reach() == Reach::Fleet {
            return false;
        }
        match self {
            Role::Admin => true,
            Role::Operator => permission != UserAdmin,
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
                    | NetworkRead
                    | NetworkWrite
                    | VolumeRead
                    | VolumeWrite
                    | ScriptRead
                    | ScriptWrite
                    | SecretRead
                    | SecretWrite
                    | BalanceRead
                    | CredentialWrite
                    | TokenWrite
            ),
            Role::Viewer => matches!(
                permission,
                TaskservRead
                    | WorkflowRead
                    | OperationRead
                    | WorkspaceRead
                    | InstanceRead
                    | SshKeyRead
                    | NetworkRead
                    | VolumeRead
                    | ScriptRead
                    | SecretRead
                    | BalanceRead
                    | TokenWrite
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

    /// Roles nest: each grants all that the ones below it grant.
    fn rank(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::Member => 1,
            Role::Operator => 2,
            Role::Admin => 3,
        }
    }

    /// The lesser of two roles.
    pub fn min(self, other: Role) -> Role {
        if self.rank() <= other.rank() {
            self
        } else {
            other
        }
    }

    /// Whether this role grants nothing `other` does not.
    pub fn within(self, other: Role) -> bool {
        self.rank() <= other.rank()
    }
}

/// A user's role over the whole install, besides its workspace roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InstallRole {
    /// Every fleet permission, every workspace and every user; grants
    /// install roles.
    Admin,
    /// Runs the fleet: hosts, join tokens, taskservs on hosts, Kloigos
    /// administration and every workspace's units, fleet metrics and events.
    Operator,
}

impl InstallRole {
    pub const ALL: &'static [InstallRole] = &[InstallRole::Admin, InstallRole::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            InstallRole::Admin => "admin",
            InstallRole::Operator => "operator",
        }
    }

    /// Whether the role grants `permission`: fleet permissions only.
    pub fn grants(self, permission: Permission) -> bool {
        use Permission::*;
        if permission.reach() != Reach::Fleet {
            return false;
        }
        match self {
            InstallRole::Admin => true,
            InstallRole::Operator => {
                !matches!(permission, WorkspaceCreate | BalanceAdmin | QuotaAdmin)
            }
        }
    }
}

impl fmt::Display for InstallRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for InstallRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InstallRole::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown install role {s:?}: use admin or operator"))
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
        for r in InstallRole::ALL {
            assert_eq!(r.as_str().parse::<InstallRole>(), Ok(*r));
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
        assert_eq!(Role::Admin.min(Role::Viewer), Role::Viewer);
        assert!(Role::Member.within(Role::Operator));
        assert!(!Role::Admin.within(Role::Member));
    }

    #[test]
    fn no_workspace_role_reaches_the_fleet() {
        for p in Permission::ALL {
            match p.reach() {
                Reach::Fleet => {
                    for r in Role::ALL {
                        assert!(!r.grants(*p), "{r} grants {p}");
                    }
                    assert!(InstallRole::Admin.grants(*p), "{p}");
                }
                Reach::Workspace => {
                    for r in InstallRole::ALL {
                        assert!(!r.grants(*p), "install {r} grants {p}");
                    }
                    assert!(Role::Admin.grants(*p), "{p}");
                }
            }
        }
        assert!(InstallRole::Operator.grants(Permission::ServerDelete));
        assert!(!InstallRole::Operator.grants(Permission::WorkspaceCreate));
        assert!(!InstallRole::Operator.grants(Permission::QuotaAdmin));
    }
}
