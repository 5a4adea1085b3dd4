//! Instances as system containers.
//!
//! (Interface fixed; implementation in progress.)

use std::path::{Path, PathBuf};
use tessera_agent_api::{AgentError, InstanceReport, InstanceSpec};

/// Where and how containers live on this host.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// The agent's state directory; containers live under
    /// `STATE/containers/`.
    pub state_dir: PathBuf,
    /// The image store (`STATE/images` by default).
    pub image_dir: PathBuf,
    /// The host bridge instances attach to.
    pub bridge: String,
    /// The host-local IPv4 subnet instances get addresses from, such as
    /// `10.88.0.0/24`: the bridge takes the first address.
    pub subnet: String,
    /// The first host port forwarded to instances' SSH servers.
    pub ssh_port_base: u16,
}

/// An instance as the host has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub running: bool,
}

/// Containers on this host.
pub struct ContainerDriver {
    #[allow(dead_code)]
    config: ContainerConfig,
}

impl ContainerDriver {
    /// Checks what the host offers (an OCI runtime, cgroups).
    pub fn new(config: ContainerConfig) -> Result<Self, AgentError> {
        Ok(Self { config })
    }

    /// Creates and starts an instance; done already is success.
    pub async fn create(&self, _spec: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        Err(AgentError::Failed("container driver not built yet".into()))
    }

    /// Starts a stopped instance; running already is success.
    pub async fn start(&self, _spec: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        Err(AgentError::Failed("container driver not built yet".into()))
    }

    /// Stops an instance, keeping its disk; stopped already is success.
    pub async fn stop(&self, _id: &str) -> Result<(), AgentError> {
        Err(AgentError::Failed("container driver not built yet".into()))
    }

    /// Removes everything the instance had; gone already is success.
    pub async fn delete(&self, _id: &str) -> Result<(), AgentError> {
        Err(AgentError::Failed("container driver not built yet".into()))
    }

    /// The instances on this host and whether each runs.
    pub async fn list(&self) -> Result<Vec<ContainerState>, AgentError> {
        Ok(Vec::new())
    }

    /// After an agent restart: takes over running instances (their network
    /// and port forwards) without restarting them.
    pub async fn adopt(&self) -> Result<(), AgentError> {
        Ok(())
    }
}

/// Imports a root filesystem tarball (optionally gzipped) or an OCI image
/// layout (directory or tar) as image `name` in `image_dir`.
pub fn import_image(_image_dir: &Path, _name: &str, _file: &Path) -> Result<(), AgentError> {
    Err(AgentError::Failed("image import not built yet".into()))
}
