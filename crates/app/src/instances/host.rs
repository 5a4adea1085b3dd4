//! What an instance's host is told: its spec, and calls to it made under
//! the instance's guard.

use super::Instance;
use crate::error::{Error, Result};
use crate::{App, HostCallError, InFlight};
use base64::Engine;
use tessera_agent_api::InstanceSpec;

impl App {
    /// What the host must run for `instance`.
    pub(super) async fn instance_spec(&self, instance: &Instance) -> Result<InstanceSpec> {
        self.instance_spec_with(instance, None).await
    }

    /// [`App::instance_spec`] with its surroundings, when they were just
    /// read (by [`App::prepare_volumes`]).
    async fn instance_spec_with(
        &self,
        instance: &Instance,
        surroundings: Option<tessera_store::InstanceSurroundings>,
    ) -> Result<InstanceSpec> {
        let spec = &instance.spec;
        let mut ssh_keys = Vec::new();
        for id in &spec.ssh_key_ids {
            // A key deleted since creation is simply not installed again.
            if let Some(key) = self.store.ssh_key(&instance.project_id, id).await? {
                ssh_keys.push(key.public_key);
            }
        }
        let user_data = spec.user_data.as_deref().and_then(|u| {
            base64::engine::general_purpose::STANDARD
                .decode(u.trim())
                .ok()
        });
        // Its project's policy, a container's SSH switch and storage, its
        // address, its groups and its volumes: one read.
        let surroundings = match surroundings {
            Some(surroundings) => surroundings,
            None => {
                self.store
                    .instance_surroundings(&instance.id, &instance.project_id)
                    .await?
            }
        };
        let volumes = attached_volumes(surroundings.volumes);
        let container = surroundings.container;
        let storage = container
            .as_ref()
            .map(|c| tessera_agent_api::InstanceStorage {
                size_gb: u64::try_from(c.storage_gb).unwrap_or(0),
                mount_paths: c.mount_paths.clone(),
            });
        let policy = surroundings.policy;
        let (network, security_groups) =
            self.instance_network(instance, surroundings.place, surroundings.groups)?;
        Ok(InstanceSpec {
            id: instance.id.to_string(),
            name: instance.name.clone(),
            project_id: instance.project_id.to_string(),
            cpus: instance.cpus.clone().unwrap_or_default(),
            memory_mb: instance.memory_mb,
            disk_gb: spec.disk_gb.unwrap_or(0),
            image: spec.image.clone(),
            image_ref: self.image_ref(spec),
            ssh_keys,
            user_data,
            volumes,
            cpu_millis: self.placement_needs(spec).1,
            // A serverless replica has no SSH server to forward to.
            ssh_forward: spec.workload.is_none()
                && container.as_ref().is_none_or(|c| c.ssh_enabled),
            egress: policy.egress,
            // What it was made with; instances made before that was kept
            // follow their project.
            privileged: spec.privileged || policy.privileged,
            storage,
            network,
            security_groups,
            workload: match &spec.workload {
                Some(w) => Some(
                    self.replica_workload(instance.project_id.as_str(), w)
                        .await?,
                ),
                None => None,
            },
            sealed_workload: None,
        })
    }

    /// A replica's workload as its host runs it: secrets opened, and the
    /// login its image is pulled with.
    async fn replica_workload(
        &self,
        project_id: &str,
        w: &tessera_core::serverless::Workload,
    ) -> Result<tessera_agent_api::Workload> {
        use tessera_core::serverless::Mount;
        let mut env = Vec::new();
        for var in &w.env {
            let value = match var.secret {
                true => String::from_utf8_lossy(&self.secret_value(project_id, &var.value).await?)
                    .into_owned(),
                false => var.value.clone(),
            };
            env.push(format!("{}={value}", var.name));
        }
        let mut mounts = Vec::new();
        for mount in &w.mounts {
            mounts.push(match mount {
                Mount::Scratch { path } => {
                    tessera_agent_api::WorkloadMount::Scratch { path: path.clone() }
                }
                Mount::Memory { path, size_mb } => tessera_agent_api::WorkloadMount::Memory {
                    path: path.clone(),
                    size_mb: *size_mb,
                },
                Mount::Secret { path, secret } => tessera_agent_api::WorkloadMount::Files {
                    path: path.clone(),
                    files: self
                        .secret_files(project_id, secret)
                        .await?
                        .into_iter()
                        .map(|(name, bytes)| (name, tessera_agent_api::Base64Bytes(bytes)))
                        .collect(),
                },
            });
        }
        let pull_login = match &w.registry_credentials {
            Some(name) => self
                .pull_login(project_id, name, &w.image)
                .await?
                .map(|l| (l.username, l.password)),
            None => None,
        };
        Ok(tessera_agent_api::Workload {
            entrypoint: w.entrypoint.clone(),
            cmd: w.cmd.clone(),
            env,
            mounts,
            pull_login,
        })
    }

    /// Waits until no other work of this process acts on the instance on
    /// its host (a resync, an operation), and holds it off until dropped.
    pub(crate) async fn instance_guard(&self, id: &str) -> Result<InFlight> {
        let deadline = std::time::Instant::now() + self.config.agent_timeout * 2;
        loop {
            if let Some(guard) = InFlight::enter(&self.in_flight, format!("instance:{id}")) {
                return Ok(guard);
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "instance {id} is busy on its host"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Calls the instance's host with its spec.
    pub(crate) async fn on_host<T, F, Fut>(
        &self,
        instance: &Instance,
        call: F,
    ) -> Result<T, HostCallError>
    where
        F: FnOnce(std::sync::Arc<dyn tessera_agent_api::HostAgent>, InstanceSpec) -> Fut,
        Fut: std::future::Future<Output = Result<T, tessera_agent_api::AgentError>>,
    {
        self.on_host_with(instance, None, call).await
    }

    /// [`App::on_host`] with the instance's surroundings (its volumes among
    /// them) as [`App::prepare_volumes`] just read them, not read again.
    pub(crate) async fn on_host_with<T, F, Fut>(
        &self,
        instance: &Instance,
        surroundings: Option<tessera_store::InstanceSurroundings>,
        call: F,
    ) -> Result<T, HostCallError>
    where
        F: FnOnce(std::sync::Arc<dyn tessera_agent_api::HostAgent>, InstanceSpec) -> Fut,
        Fut: std::future::Future<Output = Result<T, tessera_agent_api::AgentError>>,
    {
        let agent = self.host_agent(instance).await?;
        let spec = self
            .instance_spec_with(instance, surroundings)
            .await
            .map_err(|e| HostCallError::Failed(e.to_string()))?;
        self.host_call(call(agent, spec)).await
    }

    /// Calls the instance's host with what needs only the instance's id (a
    /// stop, a delete): its spec, a dozen reads, is not made.
    pub(crate) async fn on_host_by_id<T, F, Fut>(
        &self,
        instance: &Instance,
        call: F,
    ) -> Result<T, HostCallError>
    where
        F: FnOnce(std::sync::Arc<dyn tessera_agent_api::HostAgent>, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, tessera_agent_api::AgentError>>,
    {
        let agent = self.host_agent(instance).await?;
        self.host_call(call(agent, instance.id.to_string())).await
    }

    /// The agent of the instance's host.
    async fn host_agent(
        &self,
        instance: &Instance,
    ) -> Result<std::sync::Arc<dyn tessera_agent_api::HostAgent>, HostCallError> {
        let host = instance.host_id.clone().ok_or(HostCallError::NoAgent)?;
        self.agent(&host)
            .await
            .map_err(|e| HostCallError::Failed(e.to_string()))?
            .ok_or(HostCallError::NoAgent)
    }

    /// Has the instance's host let it go. A host with no agent (gone for
    /// good) has nothing left to let go of. It needs no spec, so an
    /// instance whose spec cannot be made (a replica whose secret is gone)
    /// still goes.
    pub(crate) async fn remove_from_host(&self, instance: &Instance) -> Result<(), HostCallError> {
        let host = instance.host_id.clone().ok_or(HostCallError::NoAgent);
        let agent = match host {
            Ok(host) => self
                .agent(&host)
                .await
                .map_err(|e| HostCallError::Failed(e.to_string()))?,
            Err(_) => None,
        };
        let removed = match agent {
            None => Err(HostCallError::NoAgent),
            Some(agent) => {
                let id = instance.id.to_string();
                self.host_call(async move { agent.delete_instance(&id).await })
                    .await
            }
        };
        match removed {
            Ok(()) | Err(HostCallError::NoAgent) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

impl App {
    /// Opens an interactive session (a shell, with a terminal when asked)
    /// into one of the project's running instances, through its host's
    /// agent.
    pub async fn open_instance_session(
        &self,
        caller: &crate::identity::Principal,
        id: &str,
        request: &tessera_agent_api::SessionRequest,
    ) -> Result<tessera_agent_api::Session> {
        caller.require(tessera_core::Permission::InstanceCreate)?;
        let instance = self.project_instance(&caller.project_id, id).await?;
        if instance.state != tessera_core::status::InstanceState::Running {
            return Err(Error::invalid(
                "id",
                format!("instance {id} is {}, not running", instance.state),
            ));
        }
        let host = instance
            .host_id
            .clone()
            .ok_or_else(|| Error::Unavailable(format!("instance {id} has no host")))?;
        let agent = self
            .agent(&host)
            .await?
            .ok_or_else(|| Error::Unavailable(format!("the host of instance {id} has no agent")))?;
        let opened =
            tokio::time::timeout(self.config.agent_timeout, agent.open_session(id, request))
                .await
                .map_err(|_| {
                    Error::HostTimeout(format!(
                        "the host of instance {id} did not open the session in time"
                    ))
                })?;
        opened.map_err(|e| Error::HostFailed(format!("opening a session into {id}: {e}")))
    }
}

/// An instance's volumes as its host attaches them: every one but the OS
/// volume, which is the instance's own root file system.
fn attached_volumes(
    volumes: Vec<tessera_store::VolumeRecord>,
) -> Vec<tessera_agent_api::AttachedVolume> {
    volumes
        .into_iter()
        .filter(|v| v.is_os_volume == 0)
        .filter_map(|v| {
            Some(tessera_agent_api::AttachedVolume {
                target: v.target?,
                id: v.id,
            })
        })
        .collect()
}
