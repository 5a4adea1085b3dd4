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
}

impl Usage {
    /// `(name, value)` of each resource.
    pub fn items(&self) -> [(&'static str, i64); 5] {
        [
            ("instances", self.instances),
            ("vcpus", self.vcpus),
            ("memory_mb", self.memory_mb),
            ("volumes", self.volumes),
            ("volume_gb", self.volume_gb),
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
}
