//! Kloigos compute units on a real Linux host.
//!
//! A unit is a Linux user (`c0-3`) with its home, `/opt/<user>` and
//! `/mnt/<user>`, a cgroup pinned to the unit's CPUs and, while a tenant
//! holds it, an SSH endpoint: a `dropbear` of its own on the unit's first
//! port, started in the unit's cgroup so that every session lands there.
//!
//! The cgroup comes in two flavours (`UnitConfig::cgroup_manager`):
//! - cgroupfs: the driver writes the cgroup file system itself through
//!   [`crate::cgroup`], cgroup v1 `cpuset` (and `pids`) hierarchies or
//!   cgroup v2 with the `cpuset` controller, and starts dropbear through a
//!   `setsid` shell that moves itself into the unit's cgroups first;
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
//!
//! The design decision to know: every step is blocking work on one `Inner`,
//! run on tokio's blocking pool; [`UnitDriver`] only orders the steps (host
//! steps exclude all others, unit steps exclude each other per unit). The
//! work is split by concern: [`state`] (the state file and fencing),
//! [`accounts`] (Linux users), [`sshd`] (the SSH endpoint), [`processes`]
//! (ending a unit's processes), [`wipe`] (its files, as new), [`files`]
//! (file helpers that never follow symlinks), [`tools`] (the programs it
//! runs) and [`systemd`].

use crate::cgroup::Cgroupfs;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_agent_api::{AgentError, HostSpec, UnitSpec};
use tessera_core::CpuSet;

mod accounts;
mod files;
mod processes;
mod sshd;
mod state;
mod systemd;
#[cfg(test)]
mod tests;
mod tools;
mod wipe;

use accounts::{Account, lookup_user};
use files::{chown, ensure_owned_dir, remove_tree, set_mode, write_atomic};
use sshd::validate_key;
use state::UnitRecord;
use systemd::Systemd;
use tools::Tools;

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
    /// connections. A dead dropbear is noticed at once; this bounds only a
    /// live one that is slow to listen, as on a host (or CI machine) whose
    /// pinned CPUs are busy, so it is generous.
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
            ssh_ready_timeout: Duration::from_secs(15),
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

/// How the units are confined to their CPUs.
#[derive(Debug)]
enum Backend {
    /// The driver writes the cgroup file system.
    Cgroupfs(Cgroupfs),
    /// systemd slices and transient services.
    Systemd(Systemd),
}

impl Backend {
    fn detect(manager: CgroupManager) -> Result<Backend> {
        match manager {
            CgroupManager::Cgroupfs => Ok(Backend::Cgroupfs(detect_cgroupfs()?)),
            CgroupManager::Systemd => Ok(Backend::Systemd(Systemd::detect()?)),
            CgroupManager::Auto => match Systemd::detect() {
                Ok(systemd) => Ok(Backend::Systemd(systemd)),
                Err(why) => {
                    tracing::debug!(%why, "unit driver: using the cgroup file system");
                    Ok(Backend::Cgroupfs(detect_cgroupfs()?))
                }
            },
        }
    }
}

fn detect_cgroupfs() -> Result<Cgroupfs> {
    Cgroupfs::detect().map_err(|e| failed(format!("unit driver: {}", AgentError::from(e))))
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
            self.remove_user(user)?;
        }
        remove_tree(&self.home(user))?;
        for dir in self.extra_dirs(user) {
            remove_tree(&dir)?;
        }
        let _ = fs::remove_file(Path::new("/var/spool/cron/crontabs").join(user));
        if let Backend::Cgroupfs(cgroups) = &self.backend {
            cgroups.remove(&self.config.cgroup_name, user)?;
        }
        remove_tree(&self.unit_state_dir(user))
    }

    // --- confinement ---

    /// The unit's cgroup exists and is pinned to `cpus`. `account`: the
    /// unit's user, if it exists (systemd pins its logins too).
    fn confine(&self, user: &str, cpus: &CpuSet, account: Option<&Account>) -> Result<()> {
        let parent = &self.config.cgroup_name;
        match &self.backend {
            Backend::Cgroupfs(cgroups) => cgroups
                .pin(parent, user, cpus, self.config.pids_max)
                .map_err(AgentError::from),
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
            Backend::Cgroupfs(cgroups) => cgroups.group_dirs(&self.config.cgroup_name, user),
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
}

fn online_cpus() -> Result<CpuSet> {
    let path = "/sys/devices/system/cpu/online";
    let text = fs::read_to_string(path).map_err(|e| io_failed(format!("reading {path}"), e))?;
    CpuSet::parse_list(text.trim()).map_err(|e| failed(format!("parsing {path}: {e}")))
}
