//! What a project uses, and the limits on it.

/// What a project uses, or may use, or asks for. `-1` as a limit is
/// unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub instances: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
    pub volumes: i64,
    pub volume_gb: i64,
    /// Containers of the containers API (`/compute`); they are instances
    /// too.
    pub containers: i64,
    pub ssh_keys: i64,
}

/// What two writes add together.
impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, more: Usage) {
        self.instances += more.instances;
        self.vcpus += more.vcpus;
        self.memory_mb += more.memory_mb;
        self.volumes += more.volumes;
        self.volume_gb += more.volume_gb;
        self.containers += more.containers;
        self.ssh_keys += more.ssh_keys;
    }
}

impl Usage {
    /// Limits that limit nothing.
    pub const UNLIMITED: Usage = Usage {
        instances: -1,
        vcpus: -1,
        memory_mb: -1,
        volumes: -1,
        volume_gb: -1,
        containers: -1,
        ssh_keys: -1,
    };

    /// `(name, value)` of each resource.
    pub fn items(&self) -> [(&'static str, i64); 7] {
        [
            ("instances", self.instances),
            ("vcpus", self.vcpus),
            ("memory_mb", self.memory_mb),
            ("volumes", self.volumes),
            ("volume_gb", self.volume_gb),
            ("containers", self.containers),
            ("ssh_keys", self.ssh_keys),
        ]
    }
}

/// The limits a project has set for itself; `None` takes the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaOverrides {
    pub instances: Option<i64>,
    pub vcpus: Option<i64>,
    pub memory_mb: Option<i64>,
    pub volumes: Option<i64>,
    pub volume_gb: Option<i64>,
    pub containers: Option<i64>,
    pub ssh_keys: Option<i64>,
}

impl QuotaOverrides {
    /// The limits that apply: these where set, else `defaults`.
    pub fn over(&self, defaults: &Usage) -> Usage {
        Usage {
            instances: self.instances.unwrap_or(defaults.instances),
            vcpus: self.vcpus.unwrap_or(defaults.vcpus),
            memory_mb: self.memory_mb.unwrap_or(defaults.memory_mb),
            volumes: self.volumes.unwrap_or(defaults.volumes),
            volume_gb: self.volume_gb.unwrap_or(defaults.volume_gb),
            containers: self.containers.unwrap_or(defaults.containers),
            ssh_keys: self.ssh_keys.unwrap_or(defaults.ssh_keys),
        }
    }
}

/// Which limit a write would have gone over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub resource: &'static str,
    pub limit: i64,
    pub used: i64,
    pub requested: i64,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quota exceeded: {} would be {} with this request, over the project's limit of {} \
             ({} in use, {} asked for)",
            self.resource,
            self.used + self.requested,
            self.limit,
            self.used,
            self.requested
        )
    }
}
