//! Pinning processes to CPUs with cgroups written directly (cgroupfs), for
//! any driver: a unit's SSH endpoint today, a VM's process tomorrow.
//!
//! A pinned group is `PARENT/NAME`: on cgroup v1 a directory in the `cpuset`
//! hierarchy (and, when mounted, the same in the `pids` one); on cgroup v2
//! `PARENT.slice/NAME` with the `cpuset` (and `pids`) controllers enabled
//! down to it. v1 is preferred where both exist, as on hybrid hosts.
//!
//! The one thing to know: a group is only the CPU fence. It does not follow
//! processes: whoever starts a process must put it in the group before it
//! forks what must stay fenced (the unit driver's `setsid` shell writes its
//! own pid to [`Cgroupfs::procs_files`] before it becomes dropbear), and
//! [`Cgroupfs::remove`] fails while a process is still in it. Where systemd
//! owns the tree, use systemd instead (see `drivers/unit/systemd.rs`).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tessera_agent_api::AgentError;
use tessera_core::CpuSet;

/// Why a cgroup could not be made, joined or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a v1 `cpuset` hierarchy nor a v2 mount offering `cpuset`.
    #[error(
        "no cgroup cpuset controller on this host (neither a cgroup v1 `cpuset` hierarchy nor a \
         cgroup v2 mount offering `cpuset`)"
    )]
    NoCpuset,
    /// A cgroup file or directory could not be read, written or removed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done: `reading`, `creating`, `removing cgroup`...
        action: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<CgroupError> for AgentError {
    /// The control plane sees one line: the error and its cause.
    fn from(e: CgroupError) -> AgentError {
        match &e {
            CgroupError::NoCpuset => AgentError::Failed(e.to_string()),
            CgroupError::Io { source, .. } => AgentError::Failed(format!("{e}: {source}")),
        }
    }
}

type Result<T, E = CgroupError> = std::result::Result<T, E>;

fn io_error(action: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let (action, path) = (action.into(), path.to_owned());
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

/// The host's cgroup hierarchies that can pin processes to CPUs.
#[derive(Debug, Clone)]
pub struct Cgroupfs {
    flavour: Flavour,
}

#[derive(Debug, Clone)]
enum Flavour {
    /// cgroup v1: the `cpuset` hierarchy and, if mounted, the `pids` one.
    V1 {
        cpuset: PathBuf,
        pids: Option<PathBuf>,
    },
    /// cgroup v2 with the `cpuset` controller.
    V2 { root: PathBuf, pids: bool },
}

impl Cgroupfs {
    /// Finds the hierarchies in `/proc/self/mounts`.
    pub fn detect() -> Result<Cgroupfs> {
        let path = Path::new("/proc/self/mounts");
        let mounts = fs::read_to_string(path).map_err(io_error("reading", path))?;
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
                        v2 = Some(Flavour::V2 {
                            root: mount_point,
                            pids: controllers.contains(&"pids"),
                        });
                    }
                }
                _ => {}
            }
        }
        let flavour = match v1_cpuset {
            Some(cpuset) => Flavour::V1 {
                cpuset,
                pids: v1_pids,
            },
            None => v2.ok_or(CgroupError::NoCpuset)?,
        };
        Ok(Cgroupfs { flavour })
    }

    /// The parent's directories: one per hierarchy.
    fn parent_dirs(&self, parent: &str) -> Vec<PathBuf> {
        match &self.flavour {
            Flavour::V1 { cpuset, pids } => {
                let mut dirs = vec![cpuset.join(parent)];
                dirs.extend(pids.iter().map(|p| p.join(parent)));
                dirs
            }
            Flavour::V2 { root, .. } => vec![root.join(format!("{parent}.slice"))],
        }
    }

    /// The group's directories, the cpuset one first.
    pub fn group_dirs(&self, parent: &str, name: &str) -> Vec<PathBuf> {
        self.parent_dirs(parent)
            .into_iter()
            .map(|d| d.join(name))
            .collect()
    }

    /// Makes the parent of pinned groups: on v1 it gets all of the root's
    /// CPUs and memory nodes, on v2 it passes `cpuset` (and `pids`) down.
    pub fn ensure_parent(&self, parent: &str) -> Result<()> {
        match &self.flavour {
            Flavour::V1 { cpuset, pids } => {
                let dir = cpuset.join(parent);
                mkdir(&dir)?;
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
                    mkdir(&pids.join(parent))?;
                }
            }
            Flavour::V2 { root, pids } => {
                let controllers = if *pids { "+cpuset +pids" } else { "+cpuset" };
                enable_controllers(root, controllers)?;
                let dir = root.join(format!("{parent}.slice"));
                mkdir(&dir)?;
                enable_controllers(&dir, controllers)?;
            }
        }
        Ok(())
    }

    /// Makes the group `parent/name` (and its parent) pinned to `cpus`,
    /// with at most `pids_max` tasks where the `pids` controller is there
    /// (`None`: no limit). Done already is success; changed CPUs are
    /// rewritten.
    pub fn pin(
        &self,
        parent: &str,
        name: &str,
        cpus: &CpuSet,
        pids_max: Option<u64>,
    ) -> Result<()> {
        self.ensure_parent(parent)?;
        let list = cpus.to_string();
        let dirs = self.group_dirs(parent, name);
        let Some(cpuset_dir) = dirs.first() else {
            return Ok(());
        };
        mkdir(cpuset_dir)?;
        if read_trimmed(&cpuset_dir.join("cpuset.cpus"))? != list {
            write_file(&cpuset_dir.join("cpuset.cpus"), &list)?;
        }
        let pids_dir = match &self.flavour {
            Flavour::V1 { .. } => {
                let parent_mems = self.parent_dirs(parent)[0].join("cpuset.mems");
                let mems = read_trimmed(&parent_mems)?;
                if read_trimmed(&cpuset_dir.join("cpuset.mems"))? != mems {
                    write_file(&cpuset_dir.join("cpuset.mems"), &mems)?;
                }
                dirs.get(1)
            }
            Flavour::V2 { pids, .. } => pids.then_some(cpuset_dir),
        };
        if let Some(dir) = pids_dir {
            mkdir(dir)?;
            let max = pids_max.map_or_else(|| "max".to_owned(), |n| n.to_string());
            let file = dir.join("pids.max");
            if file.exists() && read_trimmed(&file)? != max {
                write_file(&file, &max)?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process of the group goes in, the cpuset
    /// one first: for a process that moves itself (a shell writing `$$`).
    pub fn procs_files(&self, parent: &str, name: &str) -> Vec<PathBuf> {
        self.group_dirs(parent, name)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Moves a running process into the group (every hierarchy). Its
    /// children born afterwards are born there; those it already has stay
    /// where they are.
    pub fn add_process(&self, parent: &str, name: &str, pid: u32) -> Result<()> {
        for file in self.procs_files(parent, name) {
            write_file(&file, &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the group.
    pub fn pids(&self, parent: &str, name: &str) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        for file in self.procs_files(parent, name) {
            if let Ok(text) = fs::read_to_string(&file) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        pids
    }

    /// Removes the group; gone already is success. Waits up to 3 s for the
    /// last tasks to exit, and fails if some remain.
    pub fn remove(&self, parent: &str, name: &str) -> Result<()> {
        for dir in self.group_dirs(parent, name) {
            rmdir_cgroup(&dir)?;
        }
        Ok(())
    }

    /// Removes the parent if no group (of any agent) is left in it.
    pub fn remove_parent_if_empty(&self, parent: &str) {
        for dir in self.parent_dirs(parent) {
            let _ = fs::remove_dir(&dir);
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
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(nix::libc::EBUSY) => {
                // The last tasks are still exiting.
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io_error("removing cgroup", dir)(e)),
        }
    }
}

fn read_trimmed(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(io_error("reading", path))
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("opening", path))?;
    file.write_all(value.as_bytes())
        .map_err(io_error(format!("writing `{value}` to"), path))
}

fn mkdir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_error("creating", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_reads_as_one_line_with_its_cause() {
        let e = io_error("reading", Path::new("/sys/fs/cgroup/x/cpuset.cpus"))(
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(e.to_string(), "reading /sys/fs/cgroup/x/cpuset.cpus");
        let AgentError::Failed(message) = AgentError::from(e) else {
            panic!("not a failure");
        };
        assert!(
            message.starts_with("reading /sys/fs/cgroup/x/cpuset.cpus: "),
            "{message}"
        );
    }

    /// Why groups cannot be made here, if they cannot.
    fn skip_reason() -> Option<String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Some("not root".into());
        }
        Cgroupfs::detect().err().map(|e| e.to_string())
    }

    fn allowed_cpus(pid: u32) -> String {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    #[test]
    fn a_process_put_in_a_group_runs_on_its_cpus_only() {
        if let Some(why) = skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let cgroups = Cgroupfs::detect().expect("detected above");
        let parent = format!("tessera-cgtest-{}", std::process::id());
        let cpus = CpuSet::parse_list("0").expect("cpu 0");
        cgroups.pin(&parent, "g", &cpus, Some(64)).expect("pin");
        cgroups
            .pin(&parent, "g", &cpus, Some(64))
            .expect("pin again");
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let added = cgroups.add_process(&parent, "g", sleeper.id());
        let seen = allowed_cpus(sleeper.id());
        let listed = cgroups.pids(&parent, "g");
        // A group with a process in it stays.
        let busy = cgroups.remove(&parent, "g");
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let removed = cgroups.remove(&parent, "g");
        cgroups.remove_parent_if_empty(&parent);
        added.expect("add the process");
        assert_eq!(seen, "0");
        assert!(listed.contains(&(sleeper.id() as i32)), "{listed:?}");
        assert!(busy.is_err(), "a busy group was removed");
        removed.expect("remove once empty");
        for dir in cgroups.group_dirs(&parent, "g") {
            assert!(!dir.exists(), "{} left", dir.display());
            assert!(
                !dir.parent().is_some_and(Path::exists),
                "the parent is left"
            );
        }
    }
}
