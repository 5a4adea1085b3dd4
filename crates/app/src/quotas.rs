//! Per-project quotas: instances, vCPUs, memory, volumes and volume GB,
//! containers (of the containers API) and SSH keys.
//!
//! Each limit is the project's own when an install admin set one, else the
//! configured default; `-1` is unlimited. Every face's creations go through
//! the same check, run by the store inside the transaction that takes the
//! room ([`tessera_store::QuotaCheck`]), so racing requests, on any replica,
//! never take a project past a limit. Kloigos units count as instances of
//! their CPU count; volumes count until they are purged (the trash holds
//! storage), OS volumes included. A project's members see its quota and
//! usage; install admins see and set any project's.

use crate::App;
use crate::error::{Error, Result};
use crate::identity::Principal;
use tessera_core::Permission;
use tessera_core::quota::{QuotaOverrides, Usage};
use tessera_store::QuotaCheck;

/// The highest limit that may be set (besides `-1`, unlimited).
pub const MAX_LIMIT: i64 = 1 << 40;

/// A project's quota as shown.
#[derive(Clone, Debug)]
pub struct Quota {
    pub project: String,
    /// What applies: the project's own limits, else the defaults.
    pub limits: Usage,
    /// The limits the project has set for itself.
    pub overrides: QuotaOverrides,
    pub usage: Usage,
}

/// New limits for a project: each `Some(Some(n))` sets one, `Some(None)`
/// goes back to the default, `None` keeps what there is.
#[derive(Clone, Debug, Default)]
pub struct SetQuota {
    pub instances: Option<Option<i64>>,
    pub vcpus: Option<Option<i64>>,
    pub memory_mb: Option<Option<i64>>,
    pub volumes: Option<Option<i64>>,
    pub volume_gb: Option<Option<i64>>,
    pub containers: Option<Option<i64>>,
    pub ssh_keys: Option<Option<i64>>,
}

/// Checks configured or requested limits: `-1` or 0 to [`MAX_LIMIT`].
pub fn validate_limits(limits: &Usage) -> std::result::Result<(), String> {
    for (name, value) in limits.items() {
        if value != -1 && !(0..=MAX_LIMIT).contains(&value) {
            return Err(format!(
                "quota {name} must be -1 (unlimited) or 0 to {MAX_LIMIT}"
            ));
        }
    }
    Ok(())
}

impl App {
    /// The check a write that adds `adds` to a project runs in its
    /// transaction, where it reads the project's own limits too.
    pub(crate) fn quota_check(&self, project_id: &str, adds: Usage) -> QuotaCheck {
        QuotaCheck {
            project_id: project_id.to_string(),
            defaults: self.config.quota_defaults,
            adds,
            funds: false,
        }
    }

    /// [`App::quota_check`] for a write the project's balance must cover
    /// too (an hour of it and all the project runs or is creating), checked
    /// in the same transaction.
    pub(crate) fn paid_check(&self, project_id: &str, adds: Usage) -> QuotaCheck {
        QuotaCheck {
            funds: true,
            ..self.quota_check(project_id, adds)
        }
    }

    /// A project's quota and usage: the caller's own (`workspace_read`), or
    /// any (`quota_admin`, install admins).
    pub async fn quota(&self, caller: &Principal, project: &str) -> Result<Quota> {
        let record = self.project_to_read(caller, project).await?;
        let overrides = self.store.project_quota(&record.id).await?;
        Ok(Quota {
            project: record.name,
            limits: overrides.over(&self.config.quota_defaults),
            overrides,
            usage: self.store.project_usage(&record.id).await?,
        })
    }

    /// Sets a project's limits (`quota_admin`, install admins). A limit
    /// below what the project uses now is allowed: it only stops growth.
    pub async fn set_quota(
        &self,
        caller: &Principal,
        project: &str,
        req: SetQuota,
    ) -> Result<Quota> {
        caller.require(Permission::QuotaAdmin)?;
        let record = self.project_named(project).await?;
        let mut own = self.store.project_quota(&record.id).await?;
        for (slot, change, name) in [
            (&mut own.instances, req.instances, "instances"),
            (&mut own.vcpus, req.vcpus, "vcpus"),
            (&mut own.memory_mb, req.memory_mb, "memory_mb"),
            (&mut own.volumes, req.volumes, "volumes"),
            (&mut own.volume_gb, req.volume_gb, "volume_gb"),
            (&mut own.containers, req.containers, "containers"),
            (&mut own.ssh_keys, req.ssh_keys, "ssh_keys"),
        ] {
            if let Some(value) = change {
                if let Some(n) = value
                    && n != -1
                    && !(0..=MAX_LIMIT).contains(&n)
                {
                    return Err(Error::invalid(
                        name,
                        format!(
                            "{name} must be -1 (unlimited), 0 to {MAX_LIMIT}, or null for the default"
                        ),
                    ));
                }
                *slot = value;
            }
        }
        self.store.set_project_quota(&record.id, &own).await?;
        tracing::info!(project = %record.name, by = %caller.username, ?own, "quota set");
        self.quota(caller, project).await
    }
}
