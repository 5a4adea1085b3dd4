//! What the control plane asks of a host, whoever carries it out.
//!
//! The control plane drives every host through [`HostAgent`]: the simulated
//! host (in process, for tests, demos and scale runs) and the real `tessera
//! agent` implement the same trait, so the state machines above it do not
//! know which one they talk to. Every call is idempotent: the control plane
//! repeats a call whose answer it never saw, after a crash or a timeout.

pub mod protocol;

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tessera_core::{ComputeId, CpuSet, HostId, ports::PortRange};

/// A host as the control plane registered it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostSpec {
    pub id: HostId,
    pub hostname: String,
    pub ip: String,
    pub cpus: CpuSet,
    pub numa_nodes: Vec<CpuSet>,
    pub units: Vec<UnitSpec>,
    /// The memory it was registered with (a plan's), if any; a real host
    /// reports what it has.
    pub memory_mb: Option<u64>,
}

/// A Kloigos compute unit: a Linux user confined to its CPUs and ports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitSpec {
    pub compute_id: ComputeId,
    /// The unit's Linux user (`c0-3`).
    pub user: String,
    pub cpus: CpuSet,
    pub ports: PortRange,
    /// A fencing token: the unit's generation in the store when this step
    /// was decided. It grows with every step, so an agent refuses a step
    /// older than one it has already done (a late key install must not land
    /// on the unit's next tenant).
    pub generation: i64,
}

/// An instance as its host must run it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub id: String,
    pub name: String,
    pub project_id: String,
    /// The host CPUs the instance has to itself.
    pub cpus: CpuSet,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub image: String,
    /// Where a host that does not have `image` pulls it from (an OCI
    /// registry reference the catalog gives), the first time it needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    /// Public keys to install for the instance's login user.
    pub ssh_keys: Vec<String>,
    /// The startup script, decoded.
    pub user_data: Option<Vec<u8>>,
    /// Volumes it sees as block devices (`/dev/<target>`).
    #[serde(default)]
    pub volumes: Vec<AttachedVolume>,
    /// A shared-CPU instance: its share of `cpus` in thousandths of a CPU
    /// (500 is half of one), enforced as a CPU quota, while other
    /// shared-CPU instances may run on the same CPUs. `None`: `cpus` are
    /// the instance's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Whether the host forwards a port to the instance's SSH server
    /// ([`InstanceReport::ssh_port`]). Starting a running instance with a
    /// spec that changes it opens or closes the forward at once, without a
    /// restart.
    #[serde(default = "forward_ssh")]
    pub ssh_forward: bool,
    /// Persistent storage mounted into the instance, if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<InstanceStorage>,
    /// Whether it may reach beyond its host and its project's instances
    /// (through the host's NAT). Off, it reaches only its project and its
    /// host's DNS forwarder.
    #[serde(default = "egress")]
    pub egress: bool,
    /// Made as the host's root, without a user namespace of its own: an
    /// install admin's explicit choice for its project. Read when the
    /// instance is made; it keeps what it was made with.
    #[serde(default)]
    pub privileged: bool,
    /// Its place in its project's private network. `None`: an address of
    /// the host's own instance network, and one network per project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkAttachment>,
    /// The security groups it is a member of, with their inbound rules,
    /// enforced on its host. Empty: the defaults of a project without
    /// groups (SSH and ping from anywhere, everything from its project).
    #[serde(default)]
    pub security_groups: Vec<tessera_core::network::GroupRules>,
    /// A serverless replica's application: what it runs instead of the
    /// image's system (no init, no SSH), with its environment, mounts and
    /// the login its image is pulled with. Holds opened secrets: the agent
    /// keeps it only in the instance's own root-only directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// The control plane's own form of `workload` while it keeps the spec
    /// in its store (sealed: it holds opened secrets); an agent is always
    /// sent the workload itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_workload: Option<String>,
}

/// What a serverless replica runs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Replaces the image's entrypoint (and then its command too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `NAME=value`, over the image's own.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub mounts: Vec<WorkloadMount>,
    /// The user name and password its image is pulled with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_login: Option<(String, String)>,
}

impl std::fmt::Debug for Workload {
    /// Names only: values may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workload")
            .field("entrypoint", &self.entrypoint)
            .field("cmd", &self.cmd)
            .field(
                "env",
                &self
                    .env
                    .iter()
                    .map(|e| e.split('=').next().unwrap_or_default())
                    .collect::<Vec<_>>(),
            )
            .field("mounts", &self.mounts.len())
            .field(
                "pull_login",
                &self.pull_login.as_ref().map(|(user, _)| user),
            )
            .finish()
    }
}

/// A mount of a serverless replica.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkloadMount {
    /// A directory of the replica's own disk.
    Scratch { path: String },
    /// A memory file system of `size_mb`.
    Memory { path: String, size_mb: u32 },
    /// Files, read-only: name to content (base64 in JSON).
    Files {
        path: String,
        files: std::collections::BTreeMap<String, Base64Bytes>,
    },
}

/// Bytes written as base64 in JSON.
#[derive(Clone, PartialEq, Eq)]
pub struct Base64Bytes(pub Vec<u8>);

impl Serialize for Base64Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Base64Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Where an instance sits in its project's private network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// Its VPC: instances of one VPC reach each other (as their security
    /// groups let them), and no instance of another.
    pub vpc_id: String,
    /// The VPC's block: no packet to an address of it leaves the host.
    pub vpc_cidr: String,
    /// The block every VPC of the install lies in (the control plane's
    /// `--vpc-pool`): no instance's packet to it leaves the host, and no
    /// packet from it reaches an instance but from an instance. Empty: the
    /// VPC's block alone.
    #[serde(default)]
    pub pool: String,
    /// Its address, given by the control plane, and its subnet's prefix
    /// length.
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
}

fn egress() -> bool {
    true
}

fn forward_ssh() -> bool {
    true
}

/// An instance's persistent storage: one file system of `size_gb` (writing
/// past it fails inside the instance), of which each of `mount_paths`
/// (absolute, distinct, not `/`) is a directory mounted at that path. It
/// survives stops, starts and agent restarts, and goes with the instance.
/// Starting an instance with other paths mounts those; what the storage
/// holds stays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStorage {
    pub size_gb: u64,
    pub mount_paths: Vec<String>,
}

/// An instance as its host finds it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceObservation {
    pub id: String,
    pub running: bool,
    /// Why it is not running, when the host knows (it exited with a code,
    /// it keeps dying, its image is missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The memory its processes use (its memory cgroup), while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// What its persistent storage holds (not the host's disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_used_bytes: Option<u64>,
    /// How busy its CPUs were since the host last looked, in percent of
    /// what it is given (its pinned CPUs, or its share of shared ones):
    /// 100 is all of it. `None` until the host has looked twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    /// It is being made and waits on its image's pull; `detail` says how
    /// far the pull got.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pulling: bool,
}

/// A terminal's size, in characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub cols: u16,
    pub rows: u16,
}

/// What a session into an instance runs, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// A program and its arguments; `None`: the instance's shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A pseudo-terminal of this size (`TERM=xterm-256color`); `None`: plain
    /// pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
}

/// An open session into an instance: its input, its output (standard
/// output and error, interleaved; a terminal's output with a tty) and its
/// control.
pub struct Session {
    /// The process's input; dropping it closes it (end of file).
    pub input: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    pub output: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub control: Box<dyn SessionControl>,
}

/// How a session is resized and ends. Dropping it ends a process that
/// still runs.
#[async_trait::async_trait]
pub trait SessionControl: Send {
    /// Waits until the session's process ends; answers its exit code, or
    /// 128 + N when signal N ended it. Waiting again answers the same.
    async fn wait(&mut self) -> Result<i32, AgentError>;
    /// Resizes the session's terminal; refused without one.
    fn resize(&mut self, size: TtySize) -> Result<(), AgentError>;
    /// Whether nothing real runs behind the session (a simulated host).
    fn is_simulated(&self) -> bool {
        false
    }
}

/// A volume attached to an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedVolume {
    pub id: String,
    /// Its device name inside the instance: `vdb` is `/dev/vdb`.
    pub target: String,
}

/// A block volume's storage on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub id: String,
    pub size_gb: u64,
    /// Made as a copy of this volume when new.
    #[serde(default)]
    pub clone_of: Option<String>,
}

/// What a host made of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReport {
    pub size_bytes: u64,
}

/// What a host made of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// Where the instance answers inside the cloud's network.
    pub private_ip: String,
    /// The host port forwarded to the instance's SSH server, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
}

/// A script a host runs as root: a taskserv's install or remove step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostScript {
    /// What it is for, for logs: `hello:install`.
    pub label: String,
    /// A bash script.
    pub body: String,
    /// Its environment, besides `TESSERA_HOST_ROOT` (the root of the host's
    /// file system: `/` on a real host) and `TESSERA_HOSTNAME`.
    pub env: Vec<(String, String)>,
}

/// How a script ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptOutcome {
    pub exit_code: i32,
    /// Its output, stdout then stderr, cut to the last 16 KiB.
    pub output: String,
}

/// What a host has, as its agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    pub cpus: CpuSet,
    pub numa_nodes: Vec<CpuSet>,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum AgentError {
    /// The host refused or failed the work; the message says why.
    #[error("{0}")]
    Failed(String),
    /// The host cannot be reached.
    #[error("host unreachable: {0}")]
    Unreachable(String),
}

#[async_trait::async_trait]
pub trait HostAgent: Send + Sync {
    /// Whether the host keeps its desired state across restarts of either
    /// side, so the control plane need not push it again on first contact
    /// (a remote agent: its desired state is in the store).
    fn keeps_desired_state(&self) -> bool {
        false
    }
    /// What the host has.
    async fn report(&self) -> Result<HostReport, AgentError>;
    /// Makes the host ready to serve `host.units`: their users, CPU-pinned
    /// groups and directories.
    async fn prepare_host(&self, host: &HostSpec) -> Result<(), AgentError>;
    /// Gives a unit to a tenant: installs the tenant's SSH key for the
    /// unit's user.
    async fn activate_unit(&self, unit: &UnitSpec, ssh_public_key: &str) -> Result<(), AgentError>;
    /// Takes a unit back: removes the key, stops the user's processes and
    /// wipes its directories.
    async fn release_unit(&self, unit: &UnitSpec) -> Result<(), AgentError>;
    /// Undoes `prepare_host`.
    async fn retire_host(&self, host: &HostSpec) -> Result<(), AgentError>;
    /// Creates and starts an instance; done already is success.
    async fn create_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError>;
    /// Starts a stopped instance; running already is success.
    async fn start_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError>;
    /// Stops an instance, keeping its disk; stopped already is success.
    async fn stop_instance(&self, instance_id: &str) -> Result<(), AgentError>;
    /// Stops an instance and removes everything it had on the host; gone
    /// already is success.
    async fn delete_instance(&self, instance_id: &str) -> Result<(), AgentError>;
    /// Runs a script on the host and answers how it ended (a script that
    /// fails is an outcome, not an error).
    async fn run_script(&self, script: &HostScript) -> Result<ScriptOutcome, AgentError>;
    /// Makes a volume's storage (a copy of `clone_of` when new), or grows it
    /// to `size_gb`; never shrinks it. Done already is success.
    async fn ensure_volume(&self, volume: &VolumeSpec) -> Result<VolumeReport, AgentError> {
        Err(AgentError::Failed(format!(
            "this host cannot store volumes (volume {})",
            volume.id
        )))
    }
    /// Destroys a volume's storage; gone already is success. A volume an
    /// instance on the host still has is refused.
    async fn delete_volume(&self, volume_id: &str) -> Result<(), AgentError> {
        Err(AgentError::Failed(format!(
            "this host cannot store volumes (volume {volume_id})"
        )))
    }
    /// The instances on the host as they are now: whether each runs, why
    /// not, and what it uses.
    async fn observe_instances(&self) -> Result<Vec<InstanceObservation>, AgentError> {
        Ok(Vec::new())
    }
    /// Opens an interactive session into a running instance.
    async fn open_session(
        &self,
        instance_id: &str,
        request: &SessionRequest,
    ) -> Result<Session, AgentError> {
        let _ = request;
        Err(AgentError::Failed(format!(
            "this host opens no sessions (instance {instance_id})"
        )))
    }
}

/// Finds the agent of a host.
pub trait AgentDirectory: Send + Sync {
    /// The agent that serves `host`, or `None` while it has none: the host
    /// then waits for its agent to join.
    fn agent_for(&self, host: &HostSpec) -> Option<Arc<dyn HostAgent>>;
}
