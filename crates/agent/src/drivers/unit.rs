//! Kloigos compute units on a real Linux host.
//!
//! A unit is a Linux user (`c0-3`) with its home, `/opt/<user>` and
//! `/mnt/<user>`, a cgroup pinned to the unit's CPUs and, while a tenant
//! holds it, an SSH endpoint: a `dropbear` of its own on the unit's first
//! port, started in the unit's cgroup so that every session lands there.
//!
//! The cgroup comes in two flavours (`UnitConfig::cgroup_manager`):
//! - cgroupfs: the driver writes the cgroup file system itself, cgroup v1
//!   `cpuset` (and `pids`) hierarchies or cgroup v2 with the `cpuset`
//!   controller, and starts dropbear through a `setsid` shell that moves
//!   itself into the unit's cgroups first;
//! - systemd, where systemd is PID 1 (with the unified hierarchy): a slice
//!   per unit with `AllowedCPUs=` and dropbear as a transient service in it;
//!   see `unit/systemd.rs`. Not exercised end to end on the development
//!   machine, which has no systemd as PID 1.
//!
//! By default (`Auto`) the driver uses systemd where it can, else cgroupfs. `dropbear -G <user>`
//! admits only the unit's user (its private group), `-w` refuses root and
//! `-s` password logins.
//!
//! The driver keeps what it knows in `STATE/units/units.json`: the units of
//! the host, the highest generation (fencing token) seen per unit and whether
//! a tenant holds it; per unit, `STATE/units/<user>/` holds dropbear's host
//! key, pid file and log.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_agent_api::{AgentError, HostSpec, UnitSpec};
use tessera_core::CpuSet;

mod systemd;
use systemd::Systemd;

/// Who makes the units' cgroups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CgroupManager {
    /// systemd where it is PID 1 (`/run/systemd/system` exists, `systemctl`
    /// and `systemd-run` are there) and the unified hierarchy offers
    /// `cpuset`; cgroupfs elsewhere.
    #[default]
    Auto,
    /// The driver writes the cgroup file system itself (cgroup v1 `cpuset`,
    /// or cgroup v2 with `cpuset`).
    Cgroupfs,
    /// A systemd slice per unit (`AllowedCPUs=`), the SSH endpoint a
    /// transient service in it.
    Systemd,
}

/// Where and how units live on this host.
#[derive(Clone, Debug)]
pub struct UnitConfig {
    /// The agent's state directory; the driver keeps its files under
    /// `STATE/units/`.
    pub state_dir: PathBuf,
    /// Prepended to each unit's Linux user name (`c0-3`), so several agents
    /// can share one machine in tests. Empty on real hosts.
    pub user_prefix: String,
    /// Where the users' homes go (`/home`).
    pub home_base: PathBuf,
    /// Where each unit's `/opt/<user>` goes (`/opt`).
    pub opt_base: PathBuf,
    /// Where each unit's `/mnt/<user>` goes (`/mnt`).
    pub mnt_base: PathBuf,
    /// The parent cgroup of the units: `tessera` under cgroup v1 hierarchies,
    /// `tessera.slice` under cgroup v2 and systemd.
    pub cgroup_name: String,
    /// Who makes the units' cgroups; `Auto` by default.
    pub cgroup_manager: CgroupManager,
    /// The most tasks a unit may have (`pids.max`), where the `pids`
    /// controller is available; `None` for no limit.
    pub pids_max: Option<u64>,
    /// How long `activate` waits for the unit's SSH port to accept
    /// connections.
    pub ssh_ready_timeout: Duration,
}

impl UnitConfig {
    /// The defaults of a real host, with the given state directory.
    pub fn new(state_dir: PathBuf) -> UnitConfig {
        UnitConfig {
            state_dir,
            user_prefix: String::new(),
            home_base: PathBuf::from("/home"),
            opt_base: PathBuf::from("/opt"),
            mnt_base: PathBuf::from("/mnt"),
            cgroup_name: "tessera".into(),
            cgroup_manager: CgroupManager::Auto,
            pids_max: Some(16384),
            ssh_ready_timeout: Duration::from_secs(2),
        }
    }
}

/// Units on this host.
pub struct UnitDriver {
    inner: Arc<Inner>,
    /// `prepare`, `retire` and `adopt` take it for writing; unit steps for
    /// reading, plus their unit's lock.
    host_lock: tokio::sync::RwLock<()>,
    unit_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl UnitDriver {
    /// Checks what the host offers (cgroups, `dropbear`, `useradd`).
    pub fn new(config: UnitConfig) -> Result<Self, AgentError> {
        let inner = Inner::new(config)?;
        Ok(Self {
            inner: Arc::new(inner),
            host_lock: tokio::sync::RwLock::new(()),
            unit_locks: Mutex::new(HashMap::new()),
        })
    }

    /// Makes the host serve exactly `host.units`: each unit's user, pinned
    /// cgroup and directories exist; units no longer listed are removed.
    pub async fn prepare(&self, host: &HostSpec) -> Result<(), AgentError> {
        let _host = self.host_lock.write().await;
        let inner = self.inner.clone();
        let units = host.units.clone();
        blocking(move || inner.prepare(&units)).await
    }

    /// Installs the tenant's key and starts the unit's SSH endpoint.
    pub async fn activate(&self, unit: &UnitSpec, ssh_public_key: &str) -> Result<(), AgentError> {
        let _host = self.host_lock.read().await;
        let lock = self.unit_lock(&unit.user);
        let _unit = lock.lock().await;
        let inner = self.inner.clone();
        let unit = unit.clone();
        let key = ssh_public_key.to_owned();
        blocking(move || inner.activate(&unit, &key)).await
    }

    /// Removes the key, stops the SSH endpoint, kills the user's processes,
    /// wipes its directories.
    pub async fn release(&self, unit: &UnitSpec) -> Result<(), AgentError> {
        let _host = self.host_lock.read().await;
        let lock = self.unit_lock(&unit.user);
        let _unit = lock.lock().await;
        let inner = self.inner.clone();
        let unit = unit.clone();
        blocking(move || inner.release(&unit)).await
    }

    /// Removes every unit of the host: users, cgroups, directories.
    pub async fn retire(&self, host: &HostSpec) -> Result<(), AgentError> {
        let _host = self.host_lock.write().await;
        let inner = self.inner.clone();
        let units = host.units.clone();
        blocking(move || inner.retire(&units)).await
    }

    /// After an agent restart: restarts the SSH endpoint of every active
    /// unit that is not running.
    pub async fn adopt(&self) -> Result<(), AgentError> {
        let _host = self.host_lock.write().await;
        let inner = self.inner.clone();
        blocking(move || inner.adopt()).await
    }

    fn unit_lock(&self, user: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.unit_locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(user.to_owned()).or_default().clone()
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::Failed(format!("unit driver task failed: {e}")))?
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

fn failed(message: impl Into<String>) -> AgentError {
    AgentError::Failed(message.into())
}

fn io_failed(what: impl std::fmt::Display, err: std::io::Error) -> AgentError {
    AgentError::Failed(format!("{what}: {err}"))
}

// ---------------------------------------------------------------------------
// Host facilities
// ---------------------------------------------------------------------------

/// The programs the driver runs.
#[derive(Debug)]
struct Tools {
    dropbear: PathBuf,
    dropbearkey: PathBuf,
    setsid: PathBuf,
    useradd: PathBuf,
    userdel: PathBuf,
    sh: PathBuf,
}

const SEARCH_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/usr/local/sbin",
    "/usr/local/bin",
];

fn find_tool(name: &str, package: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = SEARCH_DIRS.iter().map(PathBuf::from).collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    for dir in &dirs {
        let candidate = dir.join(name);
        if let Ok(meta) = fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(failed(format!(
        "unit driver: `{name}` not found (looked in {} and PATH); install the Debian package `{package}`",
        SEARCH_DIRS.join(", ")
    )))
}

impl Tools {
    fn find() -> Result<Tools> {
        Ok(Tools {
            dropbear: find_tool("dropbear", "dropbear-bin")?,
            dropbearkey: find_tool("dropbearkey", "dropbear-bin")?,
            setsid: find_tool("setsid", "util-linux")?,
            useradd: find_tool("useradd", "passwd")?,
            userdel: find_tool("userdel", "passwd")?,
            sh: find_tool("sh", "dash")?,
        })
    }
}

/// The cgroup hierarchies units are confined with.
#[derive(Debug, Clone)]
enum Cgroups {
    /// cgroup v1: the `cpuset` hierarchy and, if mounted, the `pids` one.
    V1 {
        cpuset: PathBuf,
        pids: Option<PathBuf>,
    },
    /// cgroup v2 with the `cpuset` controller.
    V2 { root: PathBuf, pids: bool },
}

impl Cgroups {
    fn detect() -> Result<Cgroups> {
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map_err(|e| io_failed("unit driver: reading /proc/self/mounts", e))?;
        let mut v1_cpuset = None;
        let mut v1_pids = None;
        let mut v2 = None;
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, mount_point, fs_type, options, ..] = fields[..] else {
                continue;
            };
            let mount_point = PathBuf::from(mount_point);
            match fs_type {
                "cgroup" => {
                    let options: Vec<&str> = options.split(',').collect();
                    if options.contains(&"cpuset") && v1_cpuset.is_none() {
                        v1_cpuset = Some(mount_point.clone());
                    }
                    if options.contains(&"pids") && v1_pids.is_none() {
                        v1_pids = Some(mount_point);
                    }
                }
                "cgroup2" if v2.is_none() => {
                    let controllers = fs::read_to_string(mount_point.join("cgroup.controllers"))
                        .unwrap_or_default();
                    let controllers: Vec<&str> = controllers.split_whitespace().collect();
                    if controllers.contains(&"cpuset") {
                        v2 = Some(Cgroups::V2 {
                            root: mount_point,
                            pids: controllers.contains(&"pids"),
                        });
                    }
                }
                _ => {}
            }
        }
        if let Some(cpuset) = v1_cpuset {
            return Ok(Cgroups::V1 {
                cpuset,
                pids: v1_pids,
            });
        }
        v2.ok_or_else(|| {
            failed(
                "unit driver: no cgroup cpuset controller on this host (neither a cgroup v1 `cpuset` \
                 hierarchy nor a cgroup v2 mount offering `cpuset`)",
            )
        })
    }

    fn parent_dirs(&self, name: &str) -> Vec<PathBuf> {
        match self {
            Cgroups::V1 { cpuset, pids } => {
                let mut dirs = vec![cpuset.join(name)];
                dirs.extend(pids.iter().map(|p| p.join(name)));
                dirs
            }
            Cgroups::V2 { root, .. } => vec![root.join(format!("{name}.slice"))],
        }
    }

    /// The unit's cgroup directories, the cpuset one first.
    fn unit_dirs(&self, parent: &str, user: &str) -> Vec<PathBuf> {
        self.parent_dirs(parent)
            .into_iter()
            .map(|d| d.join(user))
            .collect()
    }

    fn ensure_parent(&self, name: &str) -> Result<()> {
        match self {
            Cgroups::V1 { cpuset, pids } => {
                let dir = cpuset.join(name);
                mkdir(&dir, None)?;
                // A v1 cpuset takes tasks and children only once it has
                // CPUs and memory nodes: give the parent all of the root's.
                let cpus = read_trimmed(&cpuset.join("cpuset.cpus"))?;
                let mems = read_trimmed(&cpuset.join("cpuset.mems"))?;
                if read_trimmed(&dir.join("cpuset.cpus"))? != cpus {
                    write_file(&dir.join("cpuset.cpus"), &cpus)?;
                }
                if read_trimmed(&dir.join("cpuset.mems"))? != mems {
                    write_file(&dir.join("cpuset.mems"), &mems)?;
                }
                if let Some(pids) = pids {
                    mkdir(&pids.join(name), None)?;
                }
            }
            Cgroups::V2 { root, pids } => {
                let controllers = if *pids { "+cpuset +pids" } else { "+cpuset" };
                enable_controllers(root, controllers)?;
                let dir = root.join(format!("{name}.slice"));
                mkdir(&dir, None)?;
                enable_controllers(&dir, controllers)?;
            }
        }
        Ok(())
    }

    fn ensure_unit(
        &self,
        parent: &str,
        user: &str,
        cpus: &CpuSet,
        pids_max: Option<u64>,
    ) -> Result<()> {
        self.ensure_parent(parent)?;
        let list = cpus.to_string();
        let dirs = self.unit_dirs(parent, user);
        let pids_dir = match self {
            Cgroups::V1 { .. } => {
                let dir = &dirs[0];
                mkdir(dir, None)?;
                if read_trimmed(&dir.join("cpuset.cpus"))? != list {
                    write_file(&dir.join("cpuset.cpus"), &list)?;
                }
                let mems = read_trimmed(&self.parent_dirs(parent)[0].join("cpuset.mems"))?;
                if read_trimmed(&dir.join("cpuset.mems"))? != mems {
                    write_file(&dir.join("cpuset.mems"), &mems)?;
                }
                dirs.get(1)
            }
            Cgroups::V2 { pids, .. } => {
                let dir = &dirs[0];
                mkdir(dir, None)?;
                if read_trimmed(&dir.join("cpuset.cpus"))? != list {
                    write_file(&dir.join("cpuset.cpus"), &list)?;
                }
                pids.then_some(dir)
            }
        };
        if let Some(dir) = pids_dir {
            mkdir(dir, None)?;
            let max = pids_max.map_or_else(|| "max".to_owned(), |n| n.to_string());
            let file = dir.join("pids.max");
            if file.exists() && read_trimmed(&file)? != max {
                write_file(&file, &max)?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process of the unit goes in.
    fn procs_files(&self, parent: &str, user: &str) -> Vec<PathBuf> {
        self.unit_dirs(parent, user)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn pids(&self, parent: &str, user: &str) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        for file in self.procs_files(parent, user) {
            if let Ok(text) = fs::read_to_string(&file) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids
    }

    fn remove_unit(&self, parent: &str, user: &str) -> Result<()> {
        for dir in self.unit_dirs(parent, user) {
            rmdir_cgroup(&dir)?;
        }
        Ok(())
    }

    /// Removes the parent groups if no unit (of any agent) is left in them.
    fn remove_parent_if_empty(&self, name: &str) {
        for dir in self.parent_dirs(name) {
            let _ = fs::remove_dir(&dir);
        }
    }
}

/// How the units are confined to their CPUs.
#[derive(Debug)]
enum Backend {
    /// The driver writes the cgroup file system.
    Cgroupfs(Cgroups),
    /// systemd slices and transient services.
    Systemd(Systemd),
}

impl Backend {
    fn detect(manager: CgroupManager) -> Result<Backend> {
        match manager {
            CgroupManager::Cgroupfs => Ok(Backend::Cgroupfs(Cgroups::detect()?)),
            CgroupManager::Systemd => Ok(Backend::Systemd(Systemd::detect()?)),
            CgroupManager::Auto => match Systemd::detect() {
                Ok(systemd) => Ok(Backend::Systemd(systemd)),
                Err(why) => {
                    tracing::debug!(%why, "unit driver: using the cgroup file system");
                    Ok(Backend::Cgroupfs(Cgroups::detect()?))
                }
            },
        }
    }
}

fn enable_controllers(dir: &Path, controllers: &str) -> Result<()> {
    let current = read_trimmed(&dir.join("cgroup.subtree_control"))?;
    let current: Vec<&str> = current.split_whitespace().collect();
    let missing = controllers
        .split_whitespace()
        .any(|c| !current.contains(&c.trim_start_matches('+')));
    if missing {
        write_file(&dir.join("cgroup.subtree_control"), controllers)?;
    }
    Ok(())
}

fn rmdir_cgroup(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(16) => {
                // EBUSY: the last tasks are still exiting.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io_failed(format!("removing cgroup {}", dir.display()), e)),
        }
    }
}

// ---------------------------------------------------------------------------
// State file
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    /// By Linux user name (prefix included).
    units: BTreeMap<String, UnitRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UnitRecord {
    spec: UnitSpec,
    /// The highest generation seen for the unit.
    generation: i64,
    /// Whether a tenant holds it (a key is installed, dropbear should run).
    active: bool,
}

// ---------------------------------------------------------------------------
// The driver proper (blocking)
// ---------------------------------------------------------------------------

struct Inner {
    config: UnitConfig,
    tools: Tools,
    backend: Backend,
    /// The driver's directory: `STATE/units`.
    dir: PathBuf,
    /// Serialises read-modify-write of the state file.
    state_lock: Mutex<()>,
}

/// A unit's Linux identity.
struct Account {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

const SKEL: &str = "/etc/skel";

impl Inner {
    fn new(config: UnitConfig) -> Result<Inner> {
        let tools = Tools::find()?;
        let backend = Backend::detect(config.cgroup_manager)?;
        let dir = config.state_dir.join("units");
        fs::create_dir_all(&dir)
            .map_err(|e| io_failed(format!("creating {}", dir.display()), e))?;
        set_mode(&dir, 0o700)?;
        tracing::debug!(?backend, ?tools, "unit driver ready");
        Ok(Inner {
            config,
            tools,
            backend,
            dir,
            state_lock: Mutex::new(()),
        })
    }

    // --- names and paths ---

    fn user_name(&self, unit: &UnitSpec) -> Result<String> {
        let name = format!("{}{}", self.config.user_prefix, unit.user);
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if valid {
            Ok(name)
        } else {
            Err(failed(format!(
                "unit {}: `{name}` is not a valid Linux user name",
                unit.compute_id
            )))
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("units.json")
    }
    fn unit_state_dir(&self, user: &str) -> PathBuf {
        self.dir.join(user)
    }
    fn host_key(&self, user: &str) -> PathBuf {
        self.unit_state_dir(user).join("dropbear_ed25519_host_key")
    }
    fn pid_file(&self, user: &str) -> PathBuf {
        self.unit_state_dir(user).join("dropbear.pid")
    }
    fn log_file(&self, user: &str) -> PathBuf {
        self.unit_state_dir(user).join("dropbear.log")
    }
    fn home(&self, user: &str) -> PathBuf {
        self.config.home_base.join(user)
    }
    fn extra_dirs(&self, user: &str) -> [PathBuf; 2] {
        [
            self.config.opt_base.join(user),
            self.config.mnt_base.join(user),
        ]
    }

    // --- state file ---

    fn load_state(&self) -> Result<StateFile> {
        let path = self.state_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| failed(format!("unit driver: reading {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(e) => Err(io_failed(
                format!("unit driver: reading {}", path.display()),
                e,
            )),
        }
    }

    fn save_state(&self, state: &StateFile) -> Result<()> {
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| failed(format!("unit driver: encoding state: {e}")))?;
        write_atomic(&path, &bytes, 0o600)
    }

    fn update_state<R>(&self, change: impl FnOnce(&mut StateFile) -> Result<R>) -> Result<R> {
        let _guard = self.state_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.load_state()?;
        let result = change(&mut state)?;
        self.save_state(&state)?;
        Ok(result)
    }

    /// Fencing: refuses a step older than one already seen for the unit,
    /// records its generation and whether the unit is now held. Answers
    /// whether the unit was known.
    fn fence(&self, unit: &UnitSpec, user: &str, active: bool) -> Result<bool> {
        self.update_state(|state| match state.units.get_mut(user) {
            Some(record) if unit.generation < record.generation => Err(failed(format!(
                "unit {} ({user}): refusing a stale step of generation {}; generation {} is already done",
                unit.compute_id, unit.generation, record.generation
            ))),
            Some(record) => {
                record.generation = unit.generation;
                record.spec = unit.clone();
                record.active = active;
                Ok(true)
            }
            None => {
                state.units.insert(
                    user.to_owned(),
                    UnitRecord {
                        spec: unit.clone(),
                        generation: unit.generation,
                        active,
                    },
                );
                Ok(false)
            }
        })
    }

    // --- operations ---

    fn prepare(&self, units: &[UnitSpec]) -> Result<()> {
        let online = online_cpus()?;
        let mut wanted = BTreeMap::new();
        for unit in units {
            let user = self.user_name(unit)?;
            if unit.cpus.is_empty() {
                return Err(failed(format!(
                    "unit {} ({user}) has no CPUs",
                    unit.compute_id
                )));
            }
            if !unit.cpus.is_subset(&online) {
                return Err(failed(format!(
                    "unit {} ({user}): CPUs {} are not all online on this host (online: {online})",
                    unit.compute_id, unit.cpus
                )));
            }
            if unit.ports.start == 0 {
                return Err(failed(format!(
                    "unit {} ({user}) has no SSH port",
                    unit.compute_id
                )));
            }
            if wanted.insert(user.clone(), unit.clone()).is_some() {
                return Err(failed(format!("unit user {user} is listed twice")));
            }
        }
        // Record first, so that a prepare cut short is still retired.
        let stale: Vec<String> = self.update_state(|state| {
            for (user, unit) in &wanted {
                let record = state
                    .units
                    .entry(user.clone())
                    .or_insert_with(|| UnitRecord {
                        spec: unit.clone(),
                        generation: unit.generation,
                        active: false,
                    });
                record.generation = record.generation.max(unit.generation);
                record.spec = UnitSpec {
                    generation: record.generation,
                    ..unit.clone()
                };
            }
            Ok(state
                .units
                .keys()
                .filter(|u| !wanted.contains_key(*u))
                .cloned()
                .collect())
        })?;
        if let Backend::Cgroupfs(cgroups) = &self.backend {
            cgroups.ensure_parent(&self.config.cgroup_name)?;
        }
        for (user, unit) in &wanted {
            self.ensure_unit(unit, user)?;
        }
        for user in stale {
            self.remove_unit(&user)?;
            self.update_state(|state| {
                state.units.remove(&user);
                Ok(())
            })?;
        }
        Ok(())
    }

    fn ensure_unit(&self, unit: &UnitSpec, user: &str) -> Result<Account> {
        let account = self.ensure_user(user)?;
        ensure_owned_dir(&account.home, &account, 0o700)?;
        for dir in self.extra_dirs(user) {
            ensure_owned_dir(&dir, &account, 0o700)?;
        }
        self.confine(user, &unit.cpus, Some(&account))?;
        self.ensure_host_key(user)?;
        Ok(account)
    }

    fn ensure_user(&self, user: &str) -> Result<Account> {
        if let Some(account) = lookup_user(user)? {
            return Ok(account);
        }
        let shell = if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let home = self.home(user);
        let mut cmd = Command::new(&self.tools.useradd);
        cmd.arg("-m").arg("-d").arg(&home).arg("-s").arg(shell);
        // A group of the name left behind by an earlier run: join it rather
        // than fail.
        if nix::unistd::Group::from_name(user).ok().flatten().is_some() {
            cmd.arg("-g").arg(user);
        } else {
            cmd.arg("-U");
        }
        cmd.arg(user);
        run_retrying_lock(&mut cmd, &format!("creating user {user}"))?;
        // useradd leaves the password locked (`!`); logins are by key only.
        lookup_user(user)?.ok_or_else(|| failed(format!("user {user} missing right after useradd")))
    }

    fn ensure_host_key(&self, user: &str) -> Result<()> {
        let dir = self.unit_state_dir(user);
        fs::create_dir_all(&dir)
            .map_err(|e| io_failed(format!("creating {}", dir.display()), e))?;
        set_mode(&dir, 0o700)?;
        let key = self.host_key(user);
        if key.exists() {
            return Ok(());
        }
        let tmp = dir.join("host_key.tmp");
        let _ = fs::remove_file(&tmp);
        run(
            Command::new(&self.tools.dropbearkey)
                .arg("-t")
                .arg("ed25519")
                .arg("-f")
                .arg(&tmp),
            &format!("generating the SSH host key of {user}"),
        )?;
        fs::rename(&tmp, &key).map_err(|e| io_failed(format!("installing {}", key.display()), e))
    }

    fn activate(&self, unit: &UnitSpec, key: &str) -> Result<()> {
        let user = self.user_name(unit)?;
        let key = validate_key(key).map_err(|why| {
            failed(format!(
                "unit {} ({user}): refusing the SSH key: {why}",
                unit.compute_id
            ))
        })?;
        let known = self.fence(unit, &user, true)?;
        let account = match lookup_user(&user)? {
            Some(account) if known && self.host_key(&user).exists() => account,
            _ => {
                // Never prepared (or its user vanished): make it now.
                if !unit.cpus.is_subset(&online_cpus()?) {
                    return Err(failed(format!(
                        "unit {} ({user}): CPUs {} are not all online on this host",
                        unit.compute_id, unit.cpus
                    )));
                }
                self.ensure_unit(unit, &user)?
            }
        };
        let ssh = account.home.join(".ssh");
        ensure_owned_dir(&ssh, &account, 0o700)?;
        let authorized = ssh.join("authorized_keys");
        write_atomic(&authorized, format!("{key}\n").as_bytes(), 0o600)?;
        chown(&authorized, &account)?;
        self.ensure_dropbear(unit, &user)
    }

    fn release(&self, unit: &UnitSpec) -> Result<()> {
        let user = self.user_name(unit)?;
        self.fence(unit, &user, false)?;
        let account = lookup_user(&user)?;
        if let Some(account) = &account {
            let _ = fs::remove_file(account.home.join(".ssh/authorized_keys"));
        }
        self.stop_dropbear(&user)?;
        self.kill_all(&user, account.as_ref().map(|a| a.uid))?;
        if let Some(account) = &account {
            self.wipe(&user, account)?;
        }
        Ok(())
    }

    fn retire(&self, units: &[UnitSpec]) -> Result<()> {
        let mut users = BTreeSet::new();
        for unit in units {
            users.insert(self.user_name(unit)?);
        }
        {
            let _guard = self.state_lock.lock().unwrap_or_else(|e| e.into_inner());
            users.extend(self.load_state()?.units.into_keys());
        }
        for user in &users {
            self.remove_unit(user)?;
            self.update_state(|state| {
                state.units.remove(user);
                Ok(())
            })?;
        }
        {
            let _guard = self.state_lock.lock().unwrap_or_else(|e| e.into_inner());
            if self.load_state()?.units.is_empty() {
                let _ = fs::remove_file(self.state_path());
            }
        }
        match &self.backend {
            Backend::Cgroupfs(cgroups) => cgroups.remove_parent_if_empty(&self.config.cgroup_name),
            Backend::Systemd(systemd) => systemd.remove_parent_if_empty(&self.config.cgroup_name),
        }
        Ok(())
    }

    fn adopt(&self) -> Result<()> {
        let state = {
            let _guard = self.state_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.load_state()?
        };
        let mut errors = Vec::new();
        for (user, record) in &state.units {
            // After a reboot the cgroups are gone: make them again.
            let result = lookup_user(user)
                .and_then(|account| self.confine(user, &record.spec.cpus, account.as_ref()))
                .and_then(|()| {
                    if record.active {
                        self.ensure_dropbear(&record.spec, user)
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = result {
                errors.push(format!("{user}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(failed(format!("adopting units: {}", errors.join("; "))))
        }
    }

    /// Everything of a unit gone: its processes, user, directories, cgroups
    /// and files.
    fn remove_unit(&self, user: &str) -> Result<()> {
        let account = lookup_user(user)?;
        self.stop_dropbear(user)?;
        self.kill_all(user, account.as_ref().map(|a| a.uid))?;
        if let Backend::Systemd(systemd) = &self.backend {
            systemd.remove_slice(&self.config.cgroup_name, user)?;
        }
        if let Some(account) = &account {
            self.wipe_shared(account)?;
            let mut cmd = Command::new(&self.tools.userdel);
            cmd.arg("-r").arg(user);
            match run_retrying_lock(&mut cmd, &format!("removing user {user}")) {
                Ok(_) => {}
                // 6: no such user (gone meanwhile); 12: could not remove the
                // home directory (removed below).
                Err(_) if matches!(lookup_user(user), Ok(None)) => {}
                Err(e) => return Err(e),
            }
        }
        remove_tree(&self.home(user))?;
        for dir in self.extra_dirs(user) {
            remove_tree(&dir)?;
        }
        let _ = fs::remove_file(Path::new("/var/spool/cron/crontabs").join(user));
        if let Backend::Cgroupfs(cgroups) = &self.backend {
            cgroups.remove_unit(&self.config.cgroup_name, user)?;
        }
        remove_tree(&self.unit_state_dir(user))
    }

    // --- confinement ---

    /// The unit's cgroup exists and is pinned to `cpus`. `account`: the
    /// unit's user, if it exists (systemd pins its logins too).
    fn confine(&self, user: &str, cpus: &CpuSet, account: Option<&Account>) -> Result<()> {
        let parent = &self.config.cgroup_name;
        match &self.backend {
            Backend::Cgroupfs(cgroups) => {
                cgroups.ensure_unit(parent, user, cpus, self.config.pids_max)
            }
            Backend::Systemd(systemd) => systemd.ensure_slice(
                parent,
                user,
                cpus,
                self.config.pids_max,
                account.map(|a| a.uid),
            ),
        }
    }

    /// The unit's cgroup directories, the cpuset one first.
    #[cfg_attr(not(test), allow(dead_code))]
    fn unit_cgroup_dirs(&self, user: &str) -> Vec<PathBuf> {
        match &self.backend {
            Backend::Cgroupfs(cgroups) => cgroups.unit_dirs(&self.config.cgroup_name, user),
            Backend::Systemd(systemd) => vec![systemd.cgroup_dir(&self.config.cgroup_name, user)],
        }
    }

    /// The processes in the unit's cgroups.
    fn confined_pids(&self, user: &str) -> BTreeSet<i32> {
        match &self.backend {
            Backend::Cgroupfs(cgroups) => cgroups.pids(&self.config.cgroup_name, user),
            Backend::Systemd(systemd) => systemd.pids(&self.config.cgroup_name, user),
        }
    }

    // --- dropbear ---

    /// The pid of the unit's running dropbear, if it runs.
    fn dropbear_pid(&self, user: &str) -> Option<i32> {
        if let Backend::Systemd(systemd) = &self.backend {
            let service = systemd::ssh_service(&self.config.cgroup_name, user);
            let status = systemd.status(&service).ok()?;
            return status.main_pid.filter(|_| status.active == "active");
        }
        let text = fs::read_to_string(self.pid_file(user)).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        if pid <= 1 || !process_alive(pid) {
            return None;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let key = self.host_key(user);
        let key = key.as_os_str().as_encoded_bytes();
        let ours = comm.trim() == "dropbear" && cmdline.split(|b| *b == 0).any(|arg| arg == key);
        ours.then_some(pid)
    }

    fn ensure_dropbear(&self, unit: &UnitSpec, user: &str) -> Result<()> {
        if let Backend::Systemd(systemd) = &self.backend {
            return self.ensure_dropbear_service(systemd, unit, user);
        }
        if self.dropbear_pid(user).is_some() {
            return Ok(());
        }
        let port = unit.ports.start;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Err(failed(format!(
                "unit {} ({user}): cannot start its SSH endpoint: port {port} is already in use by another process",
                unit.compute_id
            )));
        }
        self.ensure_host_key(user)?;
        let pid_file = self.pid_file(user);
        let _ = fs::remove_file(&pid_file);
        let log_path = self.log_file(user);
        let log = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| io_failed(format!("opening {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| io_failed(format!("opening {}", log_path.display()), e))?;
        let Backend::Cgroupfs(cgroups) = &self.backend else {
            return Err(failed(
                "unit driver: cgroupfs start of dropbear under systemd",
            ));
        };
        let procs = cgroups.procs_files(&self.config.cgroup_name, user);
        // The shell writes its pid (dropbear's, after exec) to the pid file,
        // moves itself into the unit's cgroups and becomes dropbear: every
        // session dropbear forks is born in the unit's cgroups.
        const SCRIPT: &str = r#"echo $$ > "$TESSERA_PIDFILE" || exit 1
echo $$ > "$TESSERA_PROCS1" || exit 1
[ -z "$TESSERA_PROCS2" ] || echo $$ > "$TESSERA_PROCS2" || exit 1
exec "$@""#;
        let mut cmd = Command::new(&self.tools.setsid);
        cmd.arg("-f")
            .arg(&self.tools.sh)
            .arg("-c")
            .arg(SCRIPT)
            .arg("sh")
            .arg(&self.tools.dropbear)
            .args(["-F", "-E", "-s", "-w", "-m"])
            .arg("-G")
            .arg(user)
            .arg("-r")
            .arg(self.host_key(user))
            .arg("-P")
            .arg(&pid_file)
            .arg("-p")
            .arg(port.to_string())
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("TESSERA_PIDFILE", &pid_file)
            .env("TESSERA_PROCS1", procs.first().cloned().unwrap_or_default())
            .env("TESSERA_PROCS2", procs.get(1).cloned().unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        let status = cmd
            .status()
            .map_err(|e| io_failed(format!("unit {user}: starting dropbear"), e))?;
        if !status.success() {
            return Err(failed(format!(
                "unit {user}: starting dropbear: setsid exited with {status}: {}",
                tail(&log_path)
            )));
        }
        let deadline = Instant::now() + self.config.ssh_ready_timeout;
        loop {
            let pid = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid {
                if !process_alive(pid) {
                    return Err(failed(format!(
                        "unit {user}: dropbear exited at start: {}",
                        tail(&log_path)
                    )));
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
                    && self.dropbear_pid(user).is_some()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "unit {user}: dropbear did not accept connections on port {port} within {:?}: {}",
                    self.config.ssh_ready_timeout,
                    tail(&log_path)
                )));
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    /// systemd: dropbear as a transient service in the unit's slice; no
    /// `setsid` shell, systemd makes it a session leader in the slice.
    fn ensure_dropbear_service(
        &self,
        systemd: &Systemd,
        unit: &UnitSpec,
        user: &str,
    ) -> Result<()> {
        let parent = &self.config.cgroup_name;
        let service = systemd::ssh_service(parent, user);
        let slice = systemd::unit_slice(parent, user);
        let port = unit.ports.start;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = self.log_file(user);
        if !systemd.status(&service)?.running() {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Err(failed(format!(
                    "unit {} ({user}): cannot start its SSH endpoint: port {port} is already in use by another process",
                    unit.compute_id
                )));
            }
            self.ensure_host_key(user)?;
            // After a reboot the slice is not started; `systemd-run` would
            // start it too, but with its file possibly missing.
            let account = lookup_user(user)?;
            self.confine(user, &unit.cpus, account.as_ref())?;
            let pid_file = self.pid_file(user);
            let _ = fs::remove_file(&pid_file);
            fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&log_path)
                .map_err(|e| io_failed(format!("opening {}", log_path.display()), e))?;
            let host_key = self.host_key(user);
            systemd.start_ssh(&systemd::SshService {
                service: &service,
                slice: &slice,
                user,
                dropbear: &self.tools.dropbear,
                host_key: &host_key,
                pid_file: &pid_file,
                log_file: &log_path,
                port,
            })?;
        }
        let deadline = Instant::now() + self.config.ssh_ready_timeout;
        let mut checked = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if checked.elapsed() > Duration::from_millis(50) {
                checked = Instant::now();
                if !systemd.status(&service)?.running() {
                    return Err(failed(format!(
                        "unit {user}: dropbear ({service}) exited at start: {}",
                        tail(&log_path)
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "unit {user}: dropbear ({service}) did not accept connections on port {port} within {:?}: {}",
                    self.config.ssh_ready_timeout,
                    tail(&log_path)
                )));
            }
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    fn stop_dropbear(&self, user: &str) -> Result<()> {
        if let Backend::Systemd(systemd) = &self.backend {
            // Stops the sessions in the service's cgroup too.
            systemd.stop_ssh(&self.config.cgroup_name, user)?;
            let _ = fs::remove_file(self.pid_file(user));
            return Ok(());
        }
        if let Some(pid) = self.dropbear_pid(user) {
            let _ = signal(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(1);
            while process_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if process_alive(pid) {
                let _ = signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = fs::remove_file(self.pid_file(user));
        Ok(())
    }

    /// Kills every process of the user and every process in the unit's
    /// cgroups, until none is left.
    fn kill_all(&self, user: &str, uid: Option<u32>) -> Result<()> {
        let me = std::process::id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Backend::Systemd(systemd) = &self.backend {
            systemd.kill_slice(&self.config.cgroup_name, user);
        }
        loop {
            let mut pids = self.confined_pids(user);
            if let Some(uid) = uid {
                pids.extend(processes_of(uid));
            }
            pids.retain(|&pid| pid > 1 && pid != me);
            let live: Vec<i32> = pids.iter().copied().filter(|&p| process_alive(p)).collect();
            if live.is_empty() {
                if !pids.is_empty() {
                    self.await_reaping(user, &pids);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "unit {user}: processes {pids:?} survive SIGKILL after 10 s"
                )));
            }
            for &pid in &live {
                let _ = signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Killed processes stay zombies until their parent (often init) reaps
    /// them: give it a moment, so that none of the user's is listed when the
    /// step returns, but do not fail for it.
    fn await_reaping(&self, user: &str, zombies: &BTreeSet<i32>) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let left: Vec<i32> = zombies
                .iter()
                .copied()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                .collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                tracing::warn!(
                    user,
                    ?left,
                    "killed processes of the unit are not reaped yet"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A released unit's directories, as new.
    fn wipe(&self, user: &str, account: &Account) -> Result<()> {
        clear_dir(&account.home)?;
        ensure_owned_dir(&account.home, account, 0o700)?;
        copy_skel(Path::new(SKEL), &account.home, account)?;
        for dir in self.extra_dirs(user) {
            clear_dir(&dir)?;
            ensure_owned_dir(&dir, account, 0o700)?;
        }
        self.wipe_shared(account)?;
        let _ = fs::remove_file(Path::new("/var/spool/cron/crontabs").join(user));
        Ok(())
    }

    /// What the user left in the shared temporary directories.
    fn wipe_shared(&self, account: &Account) -> Result<()> {
        for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
            remove_owned(Path::new(dir), account, 0)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn validate_key(key: &str) -> Result<&str, &'static str> {
    let key = key.trim();
    if key.is_empty() {
        return Err("it is empty");
    }
    if key.chars().any(|c| c.is_control()) {
        return Err("it is not a single line");
    }
    if !["ssh-", "ecdsa-", "sk-"].iter().any(|p| key.starts_with(p)) {
        return Err("it does not start with ssh-, ecdsa- or sk-");
    }
    Ok(key)
}

fn online_cpus() -> Result<CpuSet> {
    let path = "/sys/devices/system/cpu/online";
    let text = fs::read_to_string(path).map_err(|e| io_failed(format!("reading {path}"), e))?;
    CpuSet::parse_list(text.trim()).map_err(|e| failed(format!("parsing {path}: {e}")))
}

fn lookup_user(user: &str) -> Result<Option<Account>> {
    let found = nix::unistd::User::from_name(user)
        .map_err(|e| failed(format!("looking up user {user}: {e}")))?;
    Ok(found.map(|u| Account {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        home: u.dir,
    }))
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_failed(format!("{what}: running {:?}", cmd.get_program()), e))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let args: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Err(failed(format!(
        "{what}: `{}` exited with {}: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// `useradd` and `userdel` fail when another one holds `/etc/passwd`'s lock.
fn run_retrying_lock(cmd: &mut Command, what: &str) -> Result<String> {
    let mut attempt = 0;
    loop {
        match run(cmd, what) {
            Err(AgentError::Failed(msg)) if attempt < 50 && msg.contains("lock") => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn read_trimmed(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|e| io_failed(format!("reading {}", path.display()), e))
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_failed(format!("opening {}", path.display()), e))?;
    file.write_all(value.as_bytes())
        .map_err(|e| io_failed(format!("writing `{value}` to {}", path.display()), e))
}

/// Writes a file through a temporary one and a rename.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_failed(format!("creating {}", tmp.display()), e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_failed(format!("writing {}", tmp.display()), e))?;
    fs::rename(&tmp, path).map_err(|e| io_failed(format!("renaming to {}", path.display()), e))
}

fn mkdir(path: &Path, mode: Option<u32>) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_failed(format!("creating {}", path.display()), e)),
    }
    if let Some(mode) = mode {
        set_mode(path, mode)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| io_failed(format!("chmod {mode:o} {}", path.display()), e))
}

fn chown(path: &Path, account: &Account) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(account.uid), Some(account.gid))
        .map_err(|e| io_failed(format!("chown {}", path.display()), e))
}

/// A real directory (not a symlink) owned by the account, with `mode`.
fn ensure_owned_dir(path: &Path, account: &Account, mode: u32) -> Result<()> {
    if let Ok(meta) = fs::symlink_metadata(path)
        && !meta.is_dir()
    {
        fs::remove_file(path).map_err(|e| io_failed(format!("removing {}", path.display()), e))?;
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| io_failed(format!("creating {}", parent.display()), e))?;
    }
    mkdir(path, None)?;
    let meta = fs::symlink_metadata(path)
        .map_err(|e| io_failed(format!("reading {}", path.display()), e))?;
    if meta.uid() != account.uid || meta.gid() != account.gid {
        chown(path, account)?;
    }
    if meta.permissions().mode() & 0o7777 != mode {
        set_mode(path, mode)?;
    }
    Ok(())
}

/// Removes a file, symlink or directory tree (never following symlinks);
/// absent is fine.
fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_failed(format!("reading {}", path.display()), e)),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_failed(format!("removing {}", path.display()), e)),
    }
}

/// Removes what is in a directory, keeping it.
fn clear_dir(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_failed(format!("reading {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_failed(format!("reading {}", dir.display()), e))?;
        remove_tree(&entry.path())?;
    }
    Ok(())
}

/// Copies the skeleton into a fresh home, owned by the account.
fn copy_skel(from: &Path, to: &Path, account: &Account) -> Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let source = entry.path();
        let target = to.join(entry.file_name());
        let Ok(meta) = fs::symlink_metadata(&source) else {
            continue;
        };
        if meta.is_dir() {
            mkdir(&target, Some(meta.permissions().mode() & 0o7777))?;
            chown(&target, account)?;
            copy_skel(&source, &target, account)?;
        } else if meta.is_file() {
            fs::copy(&source, &target)
                .map_err(|e| io_failed(format!("copying {}", source.display()), e))?;
            chown(&target, account)?;
        }
    }
    Ok(())
}

/// Removes everything under `dir` owned by the account (not following
/// symlinks). The user can only have made entries in directories it may
/// write to: its own (removed whole) and those writable by all (or by its
/// group), so only these are searched; a shared `/tmp` may hold millions of
/// files.
fn remove_owned(dir: &Path, account: &Account, depth: u32) -> Result<()> {
    if depth > 16 {
        return Ok(());
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.mode();
        let writable = mode & 0o002 != 0 || (mode & 0o020 != 0 && meta.gid() == account.gid);
        if meta.uid() == account.uid {
            remove_tree(&path)?;
        } else if meta.is_dir() && writable {
            remove_owned(&path, account, depth + 1)?;
        }
    }
    Ok(())
}

/// Whether the process exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last `)`.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// The live processes whose real, effective, saved or file-system uid is
/// `uid`.
fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    let mut buf = String::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        buf.clear();
        let Ok(mut file) = fs::File::open(entry.path().join("status")) else {
            continue;
        };
        if file.read_to_string(&mut buf).is_err() {
            continue;
        }
        let owned = buf
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|ids| ids.split_whitespace().any(|id| id.parse() == Ok(uid)));
        if owned {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
}

/// The end of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let text = text.trim();
    let start = text.len().saturating_sub(1000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    if text.is_empty() {
        "(no output)".into()
    } else {
        text[start..].to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_agent_api::HostSpec;
    use tessera_core::ports::PortRange;
    use tessera_core::{ComputeId, HostId};

    #[test]
    fn keys_are_single_lines_of_known_types() {
        assert!(validate_key("ssh-ed25519 AAAA me@x\n").is_ok());
        assert!(validate_key("ecdsa-sha2-nistp256 AAAA").is_ok());
        assert!(validate_key("sk-ssh-ed25519@openssh.com AAAA").is_ok());
        assert!(validate_key("ssh-ed25519 AAAA\nssh-rsa BBBB").is_err());
        assert!(validate_key("command=\"x\" ssh-ed25519 AAAA").is_err());
        assert!(validate_key("").is_err());
    }

    #[test]
    fn process_state_is_read_past_the_command_name() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX));
    }

    /// Why the driver cannot be exercised here, if it cannot.
    fn skip_reason() -> Option<String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Some("not root".into());
        }
        if let Err(e) = Backend::detect(CgroupManager::Auto) {
            return Some(e.to_string());
        }
        if let Err(e) = Tools::find() {
            return Some(e.to_string());
        }
        for tool in ["ssh", "ssh-keygen", "pgrep"] {
            if find_tool(tool, "openssh-client").is_err() {
                return Some(format!("no `{tool}`"));
            }
        }
        None
    }

    fn unit(user: &str, cpus: &str, port: u16, generation: i64) -> UnitSpec {
        UnitSpec {
            compute_id: ComputeId::new(format!("test-{user}")),
            user: user.into(),
            cpus: CpuSet::parse_list(cpus).expect("cpus"),
            ports: PortRange {
                start: port,
                end: port + 124,
            },
            generation,
        }
    }

    fn host(units: Vec<UnitSpec>) -> HostSpec {
        HostSpec {
            id: HostId::new("test-host"),
            hostname: "test-host".into(),
            ip: "127.0.0.1".into(),
            cpus: online_cpus().expect("online cpus"),
            numa_nodes: vec![],
            units,
            memory_mb: None,
        }
    }

    fn ssh(key: &Path, port: u16, user: &str, command: &str) -> std::process::Output {
        crate::testkit::ssh_command(key, user, "127.0.0.1", port, command)
            .output()
            .expect("run ssh")
    }

    fn pgrep(user: &str) -> String {
        let out = Command::new("pgrep")
            .args(["-a", "-u", user])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn units_on_this_host() {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let state = tempfile::tempdir().expect("tempdir");
        let mut config = UnitConfig::new(state.path().to_owned());
        config.user_prefix = format!("tt{}-", std::process::id());
        let outcome = tokio::spawn(scenario(config.clone())).await;
        // Whatever happened, leave nothing behind: retire what the state
        // file still lists.
        let driver = UnitDriver::new(config).expect("driver");
        driver.retire(&host(vec![])).await.expect("cleanup retire");
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    async fn scenario(config: UnitConfig) {
        let online = online_cpus().expect("online");
        let cpus: Vec<u32> = online.iter().collect();
        let (cpu_a, cpu_b) = (cpus[0], *cpus.get(1).unwrap_or(&cpus[0]));
        let pid = std::process::id();
        let prefix = config.user_prefix.clone();
        let port_a = 42000 + (pid % 2000) as u16 * 4;
        let port_b = port_a + 2;
        let work = tempfile::tempdir().expect("tempdir");
        let driver = UnitDriver::new(config.clone()).expect("driver");
        let a = unit(&format!("c{cpu_a}"), &cpu_a.to_string(), port_a, 1);
        let b = unit(&format!("c{cpu_b}x"), &cpu_b.to_string(), port_b, 1);
        let (user_a, user_b) = (format!("{prefix}{}", a.user), format!("{prefix}{}", b.user));
        let spec = host(vec![a.clone(), b.clone()]);

        // A CPU the host lacks is refused before anything is made.
        let bad = host(vec![unit("cbad", "4000", port_a, 1)]);
        let err = driver.prepare(&bad).await.expect_err("missing CPU refused");
        eprintln!("bad CPU: {err}");
        assert!(
            lookup_user(&format!("{prefix}cbad"))
                .expect("lookup")
                .is_none()
        );

        let t = Instant::now();
        driver.prepare(&spec).await.expect("prepare");
        eprintln!("prepare: {:?}", t.elapsed());
        driver.prepare(&spec).await.expect("prepare again");
        let inner = &driver.inner;
        for (user, cpu) in [(&user_a, cpu_a), (&user_b, cpu_b)] {
            assert!(
                lookup_user(user).expect("lookup").is_some(),
                "{user} exists"
            );
            for dir in inner.extra_dirs(user) {
                assert!(dir.is_dir(), "{} exists", dir.display());
            }
            let cg = &inner.unit_cgroup_dirs(user)[0];
            assert_eq!(
                read_trimmed(&cg.join("cpuset.cpus")).expect("cpus"),
                cpu.to_string()
            );
        }

        let (key, public) = crate::testkit::key_pair(work.path());

        let a2 = UnitSpec {
            generation: 2,
            ..a.clone()
        };
        let t = Instant::now();
        driver.activate(&a2, &public).await.expect("activate");
        eprintln!("activate (dropbear start included): {:?}", t.elapsed());
        let t = Instant::now();
        driver.activate(&a2, &public).await.expect("activate again");
        eprintln!("activate again: {:?}", t.elapsed());
        // dropbear leads its own session, outside the agent's: it survives
        // the agent.
        let dropbear_a = inner.dropbear_pid(&user_a).expect("a's dropbear");
        let stat = fs::read_to_string(format!("/proc/{dropbear_a}/stat")).expect("stat");
        let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..]
            .split_whitespace()
            .collect();
        assert_eq!(
            fields[3],
            dropbear_a.to_string(),
            "dropbear leads its session"
        );
        assert_ne!(
            fields[1],
            std::process::id().to_string(),
            "not the agent's child"
        );
        let b2 = UnitSpec {
            generation: 2,
            ..b.clone()
        };
        driver.activate(&b2, &public).await.expect("activate b");

        let out = ssh(
            &key,
            port_a,
            &user_a,
            "grep Cpus_allowed_list /proc/self/status",
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("ssh a: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success());
        assert_eq!(stdout.trim(), format!("Cpus_allowed_list:\t{cpu_a}"));
        let out = ssh(
            &key,
            port_b,
            &user_b,
            "grep Cpus_allowed_list /proc/self/status",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("Cpus_allowed_list:\t{cpu_b}")
        );
        // B's user, though its key works on B, cannot use A's endpoint (and
        // so A's CPUs); nor can root.
        let out = ssh(&key, port_a, &user_b, "true");
        assert!(!out.status.success(), "b logged in through a's endpoint");
        let out = ssh(&key, port_a, "root", "true");
        assert!(
            !out.status.success(),
            "root logged in through a unit's endpoint"
        );

        let out = ssh(
            &key,
            port_a,
            &user_a,
            "touch /tmp/tessera-test-$(id -u) ~/junk /opt/$(id -un)/junk; \
             nohup sleep 1000 </dev/null >/dev/null 2>&1 &",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(pgrep(&user_a).contains("sleep 1000"), "the sleep runs");
        let uid_a = lookup_user(&user_a).expect("lookup").expect("a").uid;

        let a3 = UnitSpec {
            generation: 3,
            ..a.clone()
        };
        let t = Instant::now();
        driver.release(&a3).await.expect("release");
        eprintln!("release: {:?}", t.elapsed());
        driver.release(&a3).await.expect("release again");
        assert!(
            !ssh(&key, port_a, &user_a, "true").status.success(),
            "ssh after release"
        );
        assert_eq!(pgrep(&user_a), "", "no process of {user_a} remains");
        assert!(!Path::new(&format!("/tmp/tessera-test-{uid_a}")).exists());
        assert!(!inner.home(&user_a).join("junk").exists());
        assert!(inner.home(&user_a).is_dir());
        assert!(!inner.extra_dirs(&user_a)[0].join("junk").exists());

        // A late key install of the previous tenant is refused.
        let err = driver
            .activate(&a2, &public)
            .await
            .expect_err("stale activate");
        eprintln!("stale: {err}");
        assert!(!inner.home(&user_a).join(".ssh/authorized_keys").exists());
        assert!(!ssh(&key, port_a, &user_a, "true").status.success());

        // An agent restart: B's dropbear died meanwhile; adopt restarts it.
        let dropbear_b = inner.dropbear_pid(&user_b).expect("b's dropbear");
        signal(dropbear_b, nix::sys::signal::Signal::SIGKILL).expect("kill");
        while process_alive(dropbear_b) {
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(driver);
        let driver = UnitDriver::new(config.clone()).expect("driver again");
        driver.adopt().await.expect("adopt");
        let out = ssh(
            &key,
            port_b,
            &user_b,
            "grep Cpus_allowed_list /proc/self/status",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("Cpus_allowed_list:\t{cpu_b}")
        );
        assert!(
            driver.inner.dropbear_pid(&user_a).is_none(),
            "released a stays down"
        );

        // Dropping B from the host removes it.
        driver
            .prepare(&host(vec![a3.clone()]))
            .await
            .expect("prepare without b");
        assert!(lookup_user(&user_b).expect("lookup").is_none());
        assert!(!ssh(&key, port_b, &user_b, "true").status.success());

        driver.retire(&spec).await.expect("retire");
        driver.retire(&spec).await.expect("retire again");
        for user in [&user_a, &user_b] {
            assert!(
                lookup_user(user).expect("lookup").is_none(),
                "{user} removed"
            );
            assert!(!driver.inner.home(user).exists());
            for dir in driver.inner.extra_dirs(user) {
                assert!(!dir.exists(), "{} removed", dir.display());
            }
            for dir in driver.inner.unit_cgroup_dirs(user) {
                assert!(!dir.exists(), "{} removed", dir.display());
            }
            assert_eq!(pgrep(user), "");
        }
        assert!(!driver.inner.state_path().exists());
        assert!(!driver.inner.unit_state_dir(&user_a).exists());
    }
}
