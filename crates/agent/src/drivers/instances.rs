//! What runs instances on a host: the one trait every instance driver
//! implements.
//!
//! [`InstanceRuntime`] is implemented by the container driver (instances as
//! system containers under `runc`) and by the simulated host; a VM driver
//! is one more implementation. [`crate::host::LocalHost`] holds the host's
//! runtime as a `dyn InstanceRuntime` and never asks which one it is.
//!
//! The design decision: every call is idempotent and answers for the host
//! as it is now, because the agent repeats calls (after a restart, or when
//! the control plane re-sends the desired state): creating an instance that
//! exists starts it, stopping a stopped one or deleting a deleted one is
//! success. Compute units are not instances and stay with the unit driver.

use super::session::Session;
use tessera_agent_api::{AgentError, InstanceReport, InstanceSpec, VolumeReport, VolumeSpec};

/// An instance as its host has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceStatus {
    pub id: String,
    pub running: bool,
}

/// Runs instances on a host: their life, their volumes, and sessions into
/// them.
#[async_trait::async_trait]
pub trait InstanceRuntime: Send + Sync {
    /// Creates and starts an instance; done already is success (an
    /// instance that exists is started).
    async fn create(&self, spec: &InstanceSpec) -> Result<InstanceReport, AgentError>;

    /// Starts an instance the host has; running already is success.
    async fn start(&self, spec: &InstanceSpec) -> Result<InstanceReport, AgentError>;

    /// Stops an instance, keeping its disk; stopped already is success. An
    /// id the host never had: the container driver answers success, the
    /// simulated host refuses it (to catch a control plane that stops what
    /// it never made).
    async fn stop(&self, id: &str) -> Result<(), AgentError>;

    /// Stops an instance and removes everything it had on the host; gone
    /// already is success.
    async fn delete(&self, id: &str) -> Result<(), AgentError>;

    /// The instances on the host and whether each runs.
    async fn list(&self) -> Result<Vec<InstanceStatus>, AgentError>;

    /// After an agent restart: takes over the instances that still run
    /// (their network, their port forwards) without restarting them, and
    /// leaves stopped ones stopped.
    async fn adopt(&self) -> Result<(), AgentError>;

    /// Makes a volume's storage (a copy of `clone_of` when new), or grows it
    /// to `size_gb`; never shrinks it. Done already is success.
    async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<VolumeReport, AgentError>;

    /// Destroys a volume's storage; gone already is success. Refused while
    /// a running instance has it.
    async fn delete_volume(&self, id: &str) -> Result<(), AgentError>;

    /// Opens an interactive session into a running instance: `command` (a
    /// program and its arguments) or, when `None`, the instance's shell.
    /// See [`Session`] for what a session is (and is not: a pty).
    async fn open_session(
        &self,
        id: &str,
        command: Option<Vec<String>>,
    ) -> Result<Session, AgentError>;
}
