//! The wire protocol between the control plane and `tessera agent`.
//!
//! The agent speaks first and always: it registers with a join token
//! (`POST /v1/agent/register`) and gets a credential for its host, then
//! heartbeats (`POST /v1/agent/heartbeat`), long-polls the desired state of
//! its host (`GET /v1/agent/desired?after=GENERATION`), and reports what it
//! observed of each object (`POST /v1/agent/observed`). The control plane
//! never connects to a host, so hosts behind NAT or a firewall work, and any
//! replica can serve any agent: the desired state lives in the store.
//!
//! Every change of an object's desired state takes the host's next
//! generation. A report names the generation it answers; the control plane
//! keeps it only while that generation is the object's current one.
//!
//! Sessions into instances (a terminal) need the control plane to reach
//! the host at once, which polling cannot do. So the agent also keeps its
//! control channel open, `GET /v1/agent/channel`, on which the control
//! plane sends [`ChannelMessage`]s: a streamed answer
//! (`application/x-ndjson`, one message a line, an empty line every 20 s
//! when idle), or a WebSocket (one message a text frame) when the agent
//! asks for an upgrade. The agent speaks HTTP/2 when the control plane
//! does, so its calls, its long-poll and its channel share one connection. For each `open`, the agent
//! opens the session on its host and dials back
//! `GET /v1/agent/sessions/{session}` (a WebSocket of its own per session,
//! so a busy terminal never holds up another): binary frames carry the
//! session's bytes both ways, text frames carry [`SessionControlFrame`]s.
//! The agent still speaks first: hosts behind NAT keep working. A terminal
//! asked of another replica than the channel's is relayed through the
//! store: that replica records the request, the channel's replica sends it
//! down the channel with the asking replica's address as `dial_back`, and
//! the agent dials that replica directly.

use crate::{
    AgentError, HostScript, HostSpec, InstanceReport, InstanceSpec, ScriptOutcome, UnitSpec,
    VolumeReport, VolumeSpec,
};
use serde::{Deserialize, Serialize};
use tessera_core::CpuSet;

/// What an agent finds on its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The CPUs instances may have: the host's online CPUs less those the
    /// operator reserved for the host itself.
    pub cpus: CpuSet,
    /// Each NUMA node's CPUs (of `cpus`).
    pub numa_nodes: Vec<CpuSet>,
    /// CPUs kept for the host itself.
    #[serde(default)]
    pub reserved_cpus: CpuSet,
    pub memory_mb: u64,
    /// Free space where instances' disks go.
    #[serde(default)]
    pub disk_gb: u64,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    /// Images present on the host; `None` when its driver runs no images
    /// of its own (a simulated host, Kloigos units): any image will do.
    /// (An older agent sends a list for every driver; an older control
    /// plane reads none as an empty list.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
    /// The host's CPU architecture, as instance types name it: `amd64` or
    /// `arm64`.
    #[serde(default = "default_arch")]
    pub arch: String,
    /// What isolation the host gives instances, in a sentence for
    /// operators: unprivileged (user namespaces, seccomp, firewall), or why
    /// not and what it does instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
}

fn default_arch() -> String {
    "amd64".into()
}

/// The architecture of the machine this runs on, as instance types name it.
pub fn this_arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        other => other.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub model: String,
    pub memory_mb: u64,
}

/// `POST /v1/agent/register`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub join_token: String,
    pub hostname: String,
    /// The address the host is reached at (its instances' SSH endpoints).
    pub ip: String,
    /// A location code such as `FIN-01`: the host's region and zone.
    pub location: Option<String>,
    /// `unit`, `container` or `sim`.
    pub driver: String,
    pub inventory: Inventory,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The host's own credential: a bearer token for every later call.
    pub credential: String,
    pub hostname: String,
}

/// `POST /v1/agent/heartbeat`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub inventory: Inventory,
    /// The host's instances as the agent finds them now (whether each runs,
    /// what it uses).
    #[serde(default)]
    pub instances: Vec<crate::InstanceObservation>,
}

/// What the control plane wants of one object on a host.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Desired {
    /// The host serves these units (`retired`: none, and is cleaned up).
    Host { spec: HostSpec, retired: bool },
    /// A unit held by a tenant with this key, or free (`None`).
    Unit {
        unit: UnitSpec,
        ssh_public_key: Option<String>,
    },
    /// An instance in this state.
    Instance {
        spec: Box<InstanceSpec>,
        state: InstanceState,
    },
    /// A script to run once.
    Script { script: HostScript },
    /// A volume's storage, there (at least this large) or gone.
    Volume { spec: VolumeSpec, present: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Running,
    Stopped,
    Absent,
}

/// One object of a host's desired state, as the agent reads it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkItem {
    pub key: String,
    pub generation: i64,
    pub desired: Desired,
    /// Whether the agent already reported on this generation (a script
    /// then is not run again).
    pub observed: bool,
}

/// `GET /v1/agent/desired?after=G`: what changed after generation `G`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DesiredPage {
    /// The host's current generation: the next poll's `after`.
    pub generation: i64,
    pub items: Vec<WorkItem>,
}

/// What came of working on an object.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Done,
    Instance { report: InstanceReport },
    Script { outcome: ScriptOutcome },
    Volume { report: VolumeReport },
}

/// `POST /v1/agent/observed`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Observed {
    pub key: String,
    pub generation: i64,
    pub result: Result<Outcome, AgentError>,
}

/// The key of an object in a host's desired state.
pub fn host_key() -> String {
    "host".to_string()
}

pub fn unit_key(compute_id: &str) -> String {
    format!("unit:{compute_id}")
}

pub fn instance_key(id: &str) -> String {
    format!("instance:{id}")
}

pub fn volume_key(id: &str) -> String {
    format!("volume:{id}")
}

pub fn script_key(label: &str, nonce: &str) -> String {
    format!("script:{label}:{nonce}")
}

/// What the control plane sends on an agent's control channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelMessage {
    /// Open a session into an instance and dial back
    /// `/v1/agent/sessions/{session}`: at `dial_back` (the base URL of the
    /// replica the user is connected to) when given, else at the URL the
    /// agent reaches the control plane by.
    Open {
        session: String,
        instance_id: String,
        request: crate::SessionRequest,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dial_back: Option<String>,
    },
}

/// A control frame of a session's WebSocket (a text frame).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionControlFrame {
    /// Control plane to agent: the terminal's new size.
    Resize(crate::TtySize),
    /// Agent to control plane: the session's process ended with this code.
    Exit(i32),
    /// Agent to control plane: the session could not be opened.
    Error(String),
}
