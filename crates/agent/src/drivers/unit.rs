//! Kloigos compute units on a real Linux host.
//!
//! (Interface fixed; implementation in progress.)

use std::path::PathBuf;
use tessera_agent_api::{AgentError, HostSpec, UnitSpec};

/// Where and how units live on this host.
#[derive(Clone, Debug)]
pub struct UnitConfig {
    /// The agent's state directory; the driver keeps its files under
    /// `STATE/units/`.
    pub state_dir: PathBuf,
    /// Prepended to each unit's Linux user name (`c0-3`), so several agents
    /// can share one machine in tests. Empty on real hosts.
    pub user_prefix: String,
}

/// Units on this host.
pub struct UnitDriver {
    #[allow(dead_code)]
    config: UnitConfig,
}

impl UnitDriver {
    /// Checks what the host offers (cgroups, `dropbear`, `useradd`).
    pub fn new(config: UnitConfig) -> Result<Self, AgentError> {
        Ok(Self { config })
    }

    /// Makes the host serve exactly `host.units`: each unit's user, pinned
    /// cgroup and directories exist; units no longer listed are removed.
    pub async fn prepare(&self, _host: &HostSpec) -> Result<(), AgentError> {
        Err(AgentError::Failed("unit driver not built yet".into()))
    }

    /// Installs the tenant's key and starts the unit's SSH endpoint.
    pub async fn activate(&self, _unit: &UnitSpec, _ssh_public_key: &str) -> Result<(), AgentError> {
        Err(AgentError::Failed("unit driver not built yet".into()))
    }

    /// Removes the key, stops the SSH endpoint, kills the user's processes,
    /// wipes its directories.
    pub async fn release(&self, _unit: &UnitSpec) -> Result<(), AgentError> {
        Err(AgentError::Failed("unit driver not built yet".into()))
    }

    /// Removes every unit of the host: users, cgroups, directories.
    pub async fn retire(&self, _host: &HostSpec) -> Result<(), AgentError> {
        Err(AgentError::Failed("unit driver not built yet".into()))
    }

    /// After an agent restart: restarts the SSH endpoint of every active
    /// unit that is not running.
    pub async fn adopt(&self) -> Result<(), AgentError> {
        Ok(())
    }
}
