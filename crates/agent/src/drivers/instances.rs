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
//! What no runtime can run as asked (a CPU share the kernel cannot enforce,
//! storage mount paths that are not plain absolute paths) is refused by
//! [`check_spec`], the same for every driver.

use tessera_agent_api::{
    AgentError, InstanceObservation, InstanceReport, InstanceSpec, InstanceStorage, Session,
    SessionRequest, VolumeReport, VolumeSpec,
};

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

    /// Every instance on the host as it is now: whether it runs, why not
    /// when the driver knows, the memory it uses while it runs, and what
    /// its persistent storage holds. Cheap enough for every heartbeat.
    async fn observe(&self) -> Result<Vec<InstanceObservation>, AgentError>;

    /// After an agent restart: takes over the instances that still run
    /// (their network, their port forwards) without restarting them, and
    /// leaves stopped ones stopped.
    async fn adopt(&self) -> Result<(), AgentError>;

    /// What isolation the driver gives instances on this host, in a
    /// sentence for operators (`/v1/servers`); `None` where it is not a
    /// question (a simulated host).
    fn isolation(&self) -> Option<String> {
        None
    }

    /// Makes a volume's storage (a copy of `clone_of` when new), or grows it
    /// to `size_gb`; never shrinks it. Done already is success.
    async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<VolumeReport, AgentError>;

    /// Destroys a volume's storage; gone already is success. Refused while
    /// a running instance has it.
    async fn delete_volume(&self, id: &str) -> Result<(), AgentError>;

    /// Opens an interactive session into a running instance: the request's
    /// command (a program and its arguments) or, when it names none, the
    /// instance's shell; over a pseudo-terminal of the requested size, or
    /// plain pipes without one (see [`super::session`]).
    async fn open_session(&self, id: &str, request: &SessionRequest)
    -> Result<Session, AgentError>;
}

/// The least CPU share the kernel enforces: a CFS quota of 1 ms per 100 ms.
const MIN_CPU_MILLIS: u32 = 10;
/// The largest storage an instance may ask for (1 PiB): a bound on typos,
/// not on disks.
const MAX_STORAGE_GB: u64 = 1 << 20;
/// Kernel file systems an instance's storage must not hide.
const RESERVED_PATHS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Refuses a spec no runtime can run as asked, before anything is made: a
/// CPU share below what the kernel enforces or above the instance's CPUs,
/// and storage that [`check_storage`] refuses.
pub fn check_spec(spec: &InstanceSpec) -> Result<(), AgentError> {
    if let Some(millis) = spec.cpu_millis {
        let most = (spec.cpus.len() as u64).saturating_mul(1000);
        if millis < MIN_CPU_MILLIS {
            return Err(AgentError::Failed(format!(
                "a CPU share of {millis} thousandths is below the least the kernel enforces \
                 ({MIN_CPU_MILLIS})"
            )));
        }
        if u64::from(millis) > most {
            return Err(AgentError::Failed(format!(
                "a CPU share of {millis} thousandths is more than its {} CPUs",
                spec.cpus.len()
            )));
        }
    }
    if let Some(storage) = &spec.storage {
        check_storage(storage)?;
    }
    Ok(())
}

/// Refuses storage of no size, and mount paths that are not absolute and
/// normalised (no `//`, `.` or `..`, no trailing `/`), are `/`, lie in
/// `/proc`, `/sys` or `/dev`, hold control characters, repeat, or lie
/// inside one another.
pub fn check_storage(storage: &InstanceStorage) -> Result<(), AgentError> {
    let fail = |msg: String| Err(AgentError::Failed(msg));
    if storage.size_gb == 0 {
        return fail("persistent storage needs at least 1 GB".into());
    }
    if storage.size_gb > MAX_STORAGE_GB {
        return fail(format!(
            "persistent storage of {} GB is more than {MAX_STORAGE_GB} GB",
            storage.size_gb
        ));
    }
    let mut seen: Vec<&str> = Vec::new();
    for path in &storage.mount_paths {
        check_mount_path(path)?;
        for other in &seen {
            if *other == path {
                return fail(format!("mount path {path} is named twice"));
            }
            let (outer, inner) = match other.len() < path.len() {
                true => (*other, path.as_str()),
                false => (path.as_str(), *other),
            };
            if is_under(inner, outer) {
                return fail(format!("mount path {inner} is inside mount path {outer}"));
            }
        }
        seen.push(path);
    }
    Ok(())
}

/// Whether `path` is strictly inside `dir`.
fn is_under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

fn check_mount_path(path: &str) -> Result<(), AgentError> {
    let bad = |why: &str| {
        Err(AgentError::Failed(format!(
            "bad mount path {path:?}: {why}"
        )))
    };
    if !path.starts_with('/') {
        return bad("it must be absolute");
    }
    if path == "/" {
        return bad("the instance's root cannot be storage");
    }
    if path.chars().any(char::is_control) {
        return bad("it has control characters");
    }
    if path.len() > 4000 {
        return bad("it is too long");
    }
    if path.ends_with('/') {
        return bad("it ends with '/'");
    }
    for part in path[1..].split('/') {
        match part {
            "" => return bad("it has an empty component ('//')"),
            "." | ".." => return bad("it has '.' or '..' components"),
            _ => {}
        }
    }
    if RESERVED_PATHS
        .iter()
        .any(|dir| path == *dir || is_under(path, dir))
    {
        return bad("/proc, /sys and /dev are the kernel's");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(paths: &[&str]) -> InstanceStorage {
        InstanceStorage {
            size_gb: 1,
            mount_paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn storage_mount_paths_are_plain_distinct_and_apart() {
        for bad in [
            &["relative"][..],
            &["/"],
            &[""],
            &["/var/"],
            &["/var//data"],
            &["/var/./data"],
            &["/var/../etc"],
            &["/.."],
            &["/proc"],
            &["/dev/shm"],
            &["/sys/fs"],
            &["/data\n"],
            &["/data", "/data"],
            &["/var", "/var/data"],
            &["/var/data", "/var"],
        ] {
            assert!(check_storage(&storage(bad)).is_err(), "{bad:?} passed");
        }
        let none = InstanceStorage {
            size_gb: 0,
            mount_paths: vec![],
        };
        assert!(check_storage(&none).is_err(), "no size");
        check_storage(&storage(&[
            "/var/data",
            "/var-data",
            "/variable",
            "/procfs",
            "/srv/a b",
        ]))
        .expect("fine paths");
        check_storage(&storage(&[])).expect("storage mounted nowhere");
    }

    #[test]
    fn a_cpu_share_fits_its_cpus() {
        let spec = |cpus: &str, millis| InstanceSpec {
            id: "i".into(),
            name: "i".into(),
            project_id: "p".into(),
            cpus: tessera_core::CpuSet::parse_list(cpus).expect("cpus"),
            memory_mb: 64,
            disk_gb: 1,
            image: "tiny".into(),
            ssh_keys: vec![],
            user_data: None,
            volumes: vec![],
            cpu_millis: millis,
            ssh_forward: true,
            egress: true,
            privileged: false,
            network: None,
            image_ref: None,
            security_groups: Vec::new(),
            workload: None,
            sealed_workload: None,
            storage: None,
        };
        check_spec(&spec("1", None)).expect("exclusive");
        check_spec(&spec("1", Some(250))).expect("a quarter");
        check_spec(&spec("0-1", Some(2000))).expect("all of two");
        assert!(
            check_spec(&spec("1", Some(1001))).is_err(),
            "more than one CPU"
        );
        assert!(
            check_spec(&spec("1", Some(5))).is_err(),
            "below 1 ms per 100 ms"
        );
    }
}
