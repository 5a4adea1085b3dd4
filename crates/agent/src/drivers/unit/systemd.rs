//! The systemd flavour of unit confinement, used where systemd is PID 1.
//!
//! There the cgroup tree belongs to systemd, so the driver writes none of it:
//! each unit gets a slice, `/etc/systemd/system/<parent>-<user>.slice`, with
//! `AllowedCPUs=` (the unit's CPUs), `AllowedMemoryNodes=` (the host's online
//! nodes, if known) and `TasksMax=` (`UnitConfig::pids_max`), and its SSH
//! endpoint runs as a transient service in that slice
//! (`systemd-run --unit=<parent>-ssh-<user>.service --slice=... --collect`),
//! so that every session dropbear forks is born there. The unit's user's own
//! logind sessions (`su`, cron with `pam_systemd`, ...) land in
//! `user-<uid>.slice`, which a drop-in pins to the same CPUs.
//!
//! Names: a dash in a slice name means hierarchy (`a-b.slice` lives in
//! `a.slice`), so the parent and user names are escaped as `systemd-escape`
//! does (`-` becomes `\x2d`): unit `c0-3` under parent `tessera` is the slice
//! `tessera-c0\x2d3.slice` in `tessera.slice`, with the cgroup
//! `/sys/fs/cgroup/tessera.slice/tessera-c0\x2d3.slice`, and its endpoint is
//! `tessera-ssh-c0\x2d3.service`. The escaping is injective, so no mapping
//! needs to be kept.
//!
//! `AllowedCPUs=` works on the unified (cgroup v2) hierarchy only: a systemd
//! host still on cgroup v1 (or hybrid) uses the cgroupfs flavour.
//!
//! Differences from the cgroupfs flavour: the endpoint's sessions live in
//! the service's cgroup (`KillMode=control-group`), so stopping the service
//! (or the endpoint dying) ends them too; systemd, not a `setsid` shell,
//! makes dropbear the leader of its own session.
//!
//! NOT exercised end to end: the development machine has no systemd as its
//! PID 1. The pure functions (names, unit file text, the `systemd-run`
//! command line, `systemctl show` parsing) are unit-tested below; the rest
//! is written against systemd's documented behaviour (`--collect` needs
//! v236, `append:` outputs v240, `AllowedCPUs=` v244).

use super::files::{remove_tree, write_atomic};
use super::tools::{find_tool, run};
use super::{Result, failed, io_failed};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tessera_core::CpuSet;

/// Where the driver writes its slice units and drop-ins.
const UNIT_DIR: &str = "/etc/systemd/system";

/// systemd as PID 1, with the unified cgroup hierarchy offering `cpuset`.
#[derive(Debug)]
pub(super) struct Systemd {
    systemctl: PathBuf,
    systemd_run: PathBuf,
    /// The cgroup v2 mount (`/sys/fs/cgroup`).
    cgroup_root: PathBuf,
    /// The host's online memory nodes (`0-1`), if known.
    mems: Option<String>,
    unit_dir: PathBuf,
}

/// What `systemctl show` says of a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UnitStatus {
    /// `loaded`, `not-found`, ...
    pub load: String,
    /// `active`, `activating`, `inactive`, `failed`, ...
    pub active: String,
    /// The main process, if any.
    pub main_pid: Option<i32>,
}

impl UnitStatus {
    /// Running or on its way to: starting it again would fail.
    pub fn running(&self) -> bool {
        matches!(
            self.active.as_str(),
            "active" | "activating" | "reloading" | "refreshing"
        )
    }
}

impl Systemd {
    /// systemd is PID 1 (`/run/systemd/system` exists), `systemctl` and
    /// `systemd-run` are there, and the unified hierarchy offers `cpuset`.
    pub(super) fn detect() -> Result<Systemd> {
        if !Path::new("/run/systemd/system").is_dir() {
            return Err(failed(
                "unit driver: systemd is not running as PID 1 (no /run/systemd/system)",
            ));
        }
        let systemctl = find_tool("systemctl", "systemd")?;
        let systemd_run = find_tool("systemd-run", "systemd")?;
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map_err(|e| io_failed("unit driver: reading /proc/self/mounts", e))?;
        let cgroup_root = mounts
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                match fields[..] {
                    [_, mount_point, "cgroup2", ..] => Some(PathBuf::from(mount_point)),
                    _ => None,
                }
            })
            .find(|root| {
                fs::read_to_string(root.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .any(|c| c == "cpuset")
            })
            .ok_or_else(|| {
                failed(
                    "unit driver: systemd runs, but no cgroup v2 mount offers `cpuset` \
                     (AllowedCPUs= needs the unified hierarchy)",
                )
            })?;
        let mems = fs::read_to_string("/sys/devices/system/node/online")
            .ok()
            .map(|m| m.trim().to_owned())
            .filter(|m| CpuSet::parse_list(m).is_ok_and(|s| !s.is_empty()));
        Ok(Systemd {
            systemctl,
            systemd_run,
            cgroup_root,
            mems,
            unit_dir: PathBuf::from(UNIT_DIR),
        })
    }

    fn systemctl(&self, args: &[&str], what: &str) -> Result<String> {
        run(Command::new(&self.systemctl).args(args), what)
    }

    /// Best effort: for steps whose failure the caller checks otherwise.
    fn systemctl_quietly(&self, args: &[&str]) {
        let _ = Command::new(&self.systemctl)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    pub(super) fn status(&self, unit: &str) -> Result<UnitStatus> {
        let text = self.systemctl(
            &[
                "show",
                "-p",
                "LoadState",
                "-p",
                "ActiveState",
                "-p",
                "MainPID",
                "--",
                unit,
            ],
            &format!("querying {unit}"),
        )?;
        Ok(parse_status(&text))
    }

    pub(super) fn cgroup_dir(&self, parent: &str, user: &str) -> PathBuf {
        self.cgroup_root
            .join(slice_cgroup(&unit_slice(parent, user)))
    }

    /// Every process in the unit's slice, whatever service or scope of it.
    pub(super) fn pids(&self, parent: &str, user: &str) -> BTreeSet<i32> {
        let mut pids = BTreeSet::new();
        collect_pids(&self.cgroup_dir(parent, user), &mut pids, 0);
        pids
    }

    fn slice_file(&self, parent: &str, user: &str) -> PathBuf {
        self.unit_dir.join(unit_slice(parent, user))
    }

    /// The unit's slice (and its user's logins' drop-in) written, loaded
    /// and started. Writes and reloads only what changed. A changed
    /// `AllowedCPUs=` reaches a running slice with the `daemon-reload`.
    pub(super) fn ensure_slice(
        &self,
        parent: &str,
        user: &str,
        cpus: &CpuSet,
        tasks_max: Option<u64>,
        uid: Option<u32>,
    ) -> Result<()> {
        let mut changed = write_if_changed(
            &self.slice_file(parent, user),
            &slice_unit_text(user, cpus, self.mems.as_deref(), tasks_max),
        )?;
        if let Some(uid) = uid {
            let dir = self.unit_dir.join(format!("user-{uid}.slice.d"));
            fs::create_dir_all(&dir)
                .map_err(|e| io_failed(format!("creating {}", dir.display()), e))?;
            changed |= write_if_changed(
                &dir.join(user_dropin_name(user)),
                &user_dropin_text(user, cpus, self.mems.as_deref()),
            )?;
        }
        // A uid the user had before (removed and made again): drop its pin.
        changed |= self.remove_user_dropins(user, uid)?;
        if changed {
            self.systemctl(&["daemon-reload"], "systemctl daemon-reload")?;
        }
        let slice = unit_slice(parent, user);
        self.systemctl(&["start", "--", &slice], &format!("starting {slice}"))?;
        Ok(())
    }

    /// Removes the user's login drop-ins, but the one for `keep`; answers
    /// whether one was removed.
    fn remove_user_dropins(&self, user: &str, keep: Option<u32>) -> Result<bool> {
        let Ok(entries) = fs::read_dir(&self.unit_dir) else {
            return Ok(false);
        };
        let keep = keep.map(|uid| format!("user-{uid}.slice.d"));
        let mut removed = false;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with("user-") && name.ends_with(".slice.d"))
                || keep.as_deref() == Some(name)
            {
                continue;
            }
            let file = entry.path().join(user_dropin_name(user));
            if fs::symlink_metadata(&file).is_ok() {
                remove_tree(&file)?;
                let _ = fs::remove_dir(entry.path());
                removed = true;
            }
        }
        Ok(removed)
    }

    /// The unit's slice stopped (anything left in it killed) and its files
    /// removed.
    pub(super) fn remove_slice(&self, parent: &str, user: &str) -> Result<()> {
        let slice = unit_slice(parent, user);
        if self.status(&slice)?.running() {
            self.systemctl(&["stop", "--", &slice], &format!("stopping {slice}"))?;
        }
        let file = self.slice_file(parent, user);
        let mut changed = fs::symlink_metadata(&file).is_ok();
        remove_tree(&file)?;
        changed |= self.remove_user_dropins(user, None)?;
        if changed {
            self.systemctl(&["daemon-reload"], "systemctl daemon-reload")?;
        }
        self.systemctl_quietly(&["reset-failed", "--", &slice]);
        Ok(())
    }

    /// Stops the parent slice if no unit (of any agent) is left in it.
    pub(super) fn remove_parent_if_empty(&self, parent: &str) {
        let slice = parent_slice(parent);
        let dir = self.cgroup_root.join(slice_cgroup(&slice));
        let has_children = fs::read_dir(&dir)
            .map(|entries| entries.flatten().any(|e| e.path().is_dir()))
            .unwrap_or(false);
        if !has_children {
            self.systemctl_quietly(&["stop", "--", &slice]);
        }
    }

    /// SIGKILL to everything in the unit's slice; best effort (`systemctl
    /// kill` of a slice needs a recent systemd): the caller kills what is
    /// left one by one.
    pub(super) fn kill_slice(&self, parent: &str, user: &str) {
        let slice = unit_slice(parent, user);
        self.systemctl_quietly(&["kill", "--signal=SIGKILL", "--", &slice]);
    }

    /// Starts the unit's SSH endpoint service. A previous run that systemd
    /// has not collected yet makes `systemd-run` fail: retried for a second.
    pub(super) fn start_ssh(&self, service: &SshService<'_>) -> Result<()> {
        let argv = ssh_service_command(&self.systemd_run, service)?;
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| failed("empty systemd-run command"))?;
        let what = format!("unit {}: starting {}", service.user, service.service);
        let mut attempt = 0;
        loop {
            // A failed run of the service not collected yet: out with it.
            self.systemctl_quietly(&["reset-failed", "--", service.service]);
            match run(Command::new(program).args(args), &what) {
                Ok(_) => return Ok(()),
                Err(e) if attempt < 20 && !self.status(service.service)?.running() => {
                    tracing::debug!(error = %e, "retrying the start of {}", service.service);
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops the unit's SSH endpoint service and every session in it.
    pub(super) fn stop_ssh(&self, parent: &str, user: &str) -> Result<()> {
        let service = ssh_service(parent, user);
        let status = self.status(&service)?;
        if status.running() || status.load == "loaded" {
            self.systemctl(&["stop", "--", &service], &format!("stopping {service}"))?;
        }
        self.systemctl_quietly(&["reset-failed", "--", &service]);
        Ok(())
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<bool> {
    if fs::read_to_string(path).is_ok_and(|current| current == text) {
        return Ok(false);
    }
    write_atomic(path, text.as_bytes(), 0o644)?;
    Ok(true)
}

fn collect_pids(dir: &Path, pids: &mut BTreeSet<i32>, depth: u32) {
    if depth > 16 {
        return;
    }
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&entry.path(), pids, depth + 1);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Pure: names, unit texts, command lines
// ---------------------------------------------------------------------------

/// A string as `systemd-escape` (without `--path`) writes it: `/` becomes
/// `-`; ASCII letters, digits, `:`, `_` and `.` (but a leading one) stay;
/// every other byte, `-` included, becomes `\xNN`.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.') => {
                out.push(char::from(b));
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The slice all units of the driver live in (`tessera.slice`).
pub(super) fn parent_slice(parent: &str) -> String {
    format!("{}.slice", escape(parent))
}

/// A unit's slice, in the parent slice (`tessera-c0\x2d3.slice`).
pub(super) fn unit_slice(parent: &str, user: &str) -> String {
    format!("{}-{}.slice", escape(parent), escape(user))
}

/// A unit's SSH endpoint (`tessera-ssh-c0\x2d3.service`).
pub(super) fn ssh_service(parent: &str, user: &str) -> String {
    format!("{}-ssh-{}.service", escape(parent), escape(user))
}

/// The cgroup of a slice, relative to the cgroup v2 root: every dash of the
/// name opens a level (`a-b.slice` is `a.slice/a-b.slice`).
pub(super) fn slice_cgroup(slice: &str) -> PathBuf {
    let stem = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut path = PathBuf::new();
    if stem == "-" || stem.is_empty() {
        return path;
    }
    let mut prefix = String::new();
    for (i, part) in stem.split('-').enumerate() {
        if i > 0 {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path
}

/// The name of the drop-in that pins the user's logins.
pub(super) fn user_dropin_name(user: &str) -> String {
    format!("50-tessera-{}.conf", escape(user))
}

fn limits(cpus: &CpuSet, mems: Option<&str>) -> String {
    let mut text = format!("AllowedCPUs={cpus}\n");
    if let Some(mems) = mems {
        text.push_str(&format!("AllowedMemoryNodes={mems}\n"));
    }
    text
}

/// `/etc/systemd/system/<unit_slice>`.
pub(super) fn slice_unit_text(
    user: &str,
    cpus: &CpuSet,
    mems: Option<&str>,
    tasks_max: Option<u64>,
) -> String {
    let tasks = tasks_max.map_or_else(|| "infinity".to_owned(), |n| n.to_string());
    format!(
        "# Written by the Tessera agent: compute unit {user}, its SSH endpoint and sessions.\n\
         [Unit]\n\
         Description=Tessera compute unit {user}\n\
         \n\
         [Slice]\n\
         {}TasksMax={tasks}\n",
        limits(cpus, mems)
    )
}

/// `/etc/systemd/system/user-<uid>.slice.d/<user_dropin_name>`: the user's
/// own logins (logind puts them in `user-<uid>.slice`) on the unit's CPUs.
pub(super) fn user_dropin_text(user: &str, cpus: &CpuSet, mems: Option<&str>) -> String {
    format!(
        "# Written by the Tessera agent: logins of compute unit {user} stay on its CPUs.\n\
         [Slice]\n\
         {}",
        limits(cpus, mems)
    )
}

/// What the SSH endpoint's transient service is made of.
#[derive(Debug, Clone)]
pub(super) struct SshService<'a> {
    pub service: &'a str,
    pub slice: &'a str,
    pub user: &'a str,
    pub dropbear: &'a Path,
    pub host_key: &'a Path,
    pub pid_file: &'a Path,
    pub log_file: &'a Path,
    pub port: u16,
}

/// A path as it may go into a `systemd-run` property or command line: no
/// blanks, quotes, `\`, or `$`/`%` (which systemd could expand).
fn plain(path: &Path) -> Result<&str> {
    path.to_str()
        .filter(|s| {
            !s.is_empty()
                && !s.chars().any(|c| {
                    c.is_whitespace()
                        || c.is_control()
                        || matches!(c, '$' | '%' | '\\' | '"' | '\'')
                })
        })
        .ok_or_else(|| {
            failed(format!(
                "unit driver: the path {} cannot be passed to systemd-run",
                path.display()
            ))
        })
}

/// `systemd-run ... -- dropbear ...`: dropbear in the foreground (`-F`,
/// logging to stderr, `-E`, appended to the unit's log) as a transient
/// service in the unit's slice, collected once it stops. `-P`: dropbear
/// writes a pid file even in the foreground; without it, it would be
/// `/var/run/dropbear.pid`, shared by all units.
pub(super) fn ssh_service_command(systemd_run: &Path, s: &SshService<'_>) -> Result<Vec<String>> {
    let log = plain(s.log_file)?;
    let mut argv: Vec<String> = vec![
        plain(systemd_run)?.to_owned(),
        format!("--unit={}", s.service),
        format!("--slice={}", s.slice),
        format!("--description=Tessera compute unit {} SSH endpoint", s.user),
        "--collect".into(),
        "--quiet".into(),
        "--property=Type=simple".into(),
        "--property=KillMode=control-group".into(),
        "--property=TimeoutStopSec=5s".into(),
        "--property=StandardInput=null".into(),
        format!("--property=StandardOutput=append:{log}"),
        format!("--property=StandardError=append:{log}"),
        "--".into(),
        plain(s.dropbear)?.to_owned(),
    ];
    argv.extend(["-F", "-E", "-s", "-w", "-m"].map(String::from));
    argv.extend([
        "-G".into(),
        s.user.to_owned(),
        "-r".into(),
        plain(s.host_key)?.to_owned(),
        "-P".into(),
        plain(s.pid_file)?.to_owned(),
        "-p".into(),
        s.port.to_string(),
    ]);
    Ok(argv)
}

/// `systemctl show -p LoadState -p ActiveState -p MainPID` output.
pub(super) fn parse_status(text: &str) -> UnitStatus {
    let props: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    UnitStatus {
        load: props.get("LoadState").copied().unwrap_or("").to_owned(),
        active: props.get("ActiveState").copied().unwrap_or("").to_owned(),
        main_pid: props
            .get("MainPID")
            .and_then(|p| p.parse::<i32>().ok())
            .filter(|&p| p > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(list: &str) -> CpuSet {
        CpuSet::parse_list(list).expect("cpus")
    }

    #[test]
    fn names_escape_as_systemd_escape_does() {
        // Checked against `systemd-escape c0-3 tt12-c0_x .a 'a b'`.
        assert_eq!(escape("c0-3"), "c0\\x2d3");
        assert_eq!(escape("tt12-c0_x"), "tt12\\x2dc0_x");
        assert_eq!(escape(".a"), "\\x2ea");
        assert_eq!(escape("a b"), "a\\x20b");
        assert_eq!(escape("tessera"), "tessera");
        // Injective where a `-` to `_` mapping is not.
        assert_ne!(escape("c0-3"), escape("c0_3"));
    }

    /// Against the real `systemd-escape`, where there is one (it needs no
    /// running systemd).
    #[test]
    fn names_match_the_systemd_escape_binary() {
        let names = ["c0-3", "tt12-c0_x", "_a-b", "c12x", ".a", "a/b"];
        let Ok(out) = Command::new("systemd-escape").args(names).output() else {
            eprintln!("skipped: no systemd-escape");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let theirs: Vec<&str> = text.split_whitespace().collect();
        let ours: Vec<String> = names.iter().map(|n| escape(n)).collect();
        assert_eq!(theirs, ours);
    }

    /// Without systemd as PID 1 (as on the development machine), asking for
    /// it fails clearly and `Auto` falls back to the cgroup file system.
    #[test]
    fn no_systemd_no_systemd_flavour() {
        if Path::new("/run/systemd/system").is_dir() {
            eprintln!("skipped: systemd runs here");
            return;
        }
        let err = Systemd::detect().expect_err("no systemd");
        assert!(err.to_string().contains("not running as PID 1"), "{err}");
        if let Ok(backend) = super::super::Backend::detect(super::super::CgroupManager::Auto) {
            assert!(matches!(backend, super::super::Backend::Cgroupfs(_)));
        }
    }

    #[test]
    fn unit_names_keep_the_dash_for_hierarchy_only() {
        assert_eq!(parent_slice("tessera"), "tessera.slice");
        assert_eq!(unit_slice("tessera", "c0-3"), "tessera-c0\\x2d3.slice");
        assert_eq!(unit_slice("tessera", "c4"), "tessera-c4.slice");
        assert_eq!(
            ssh_service("tessera", "c0-3"),
            "tessera-ssh-c0\\x2d3.service"
        );
        assert_eq!(
            slice_cgroup(&unit_slice("tessera", "c0-3")),
            PathBuf::from("tessera.slice/tessera-c0\\x2d3.slice")
        );
        assert_eq!(
            slice_cgroup("a-b-c.slice"),
            PathBuf::from("a.slice/a-b.slice/a-b-c.slice")
        );
        assert_eq!(slice_cgroup("-.slice"), PathBuf::new());
        assert_eq!(user_dropin_name("c0-3"), "50-tessera-c0\\x2d3.conf");
    }

    #[test]
    fn slice_file_pins_cpus_memory_and_tasks() {
        let text = slice_unit_text("c0-3", &cpus("0-3,8"), Some("0"), Some(16384));
        assert_eq!(
            text,
            "# Written by the Tessera agent: compute unit c0-3, its SSH endpoint and sessions.\n\
             [Unit]\n\
             Description=Tessera compute unit c0-3\n\
             \n\
             [Slice]\n\
             AllowedCPUs=0-3,8\n\
             AllowedMemoryNodes=0\n\
             TasksMax=16384\n"
        );
        let text = slice_unit_text("c5", &cpus("5"), None, None);
        assert!(text.contains("[Slice]\nAllowedCPUs=5\nTasksMax=infinity\n"));
        assert!(!text.contains("AllowedMemoryNodes"));
        let dropin = user_dropin_text("c5", &cpus("5"), Some("0-1"));
        assert!(dropin.ends_with("[Slice]\nAllowedCPUs=5\nAllowedMemoryNodes=0-1\n"));
    }

    #[test]
    fn ssh_service_runs_dropbear_in_the_slice() {
        let service = SshService {
            service: "tessera-ssh-c0\\x2d3.service",
            slice: "tessera-c0\\x2d3.slice",
            user: "c0-3",
            dropbear: Path::new("/usr/sbin/dropbear"),
            host_key: Path::new("/var/lib/tessera/units/c0-3/dropbear_ed25519_host_key"),
            pid_file: Path::new("/var/lib/tessera/units/c0-3/dropbear.pid"),
            log_file: Path::new("/var/lib/tessera/units/c0-3/dropbear.log"),
            port: 22000,
        };
        let argv =
            ssh_service_command(Path::new("/usr/bin/systemd-run"), &service).expect("command");
        let expected = [
            "/usr/bin/systemd-run",
            "--unit=tessera-ssh-c0\\x2d3.service",
            "--slice=tessera-c0\\x2d3.slice",
            "--description=Tessera compute unit c0-3 SSH endpoint",
            "--collect",
            "--quiet",
            "--property=Type=simple",
            "--property=KillMode=control-group",
            "--property=TimeoutStopSec=5s",
            "--property=StandardInput=null",
            "--property=StandardOutput=append:/var/lib/tessera/units/c0-3/dropbear.log",
            "--property=StandardError=append:/var/lib/tessera/units/c0-3/dropbear.log",
            "--",
            "/usr/sbin/dropbear",
            "-F",
            "-E",
            "-s",
            "-w",
            "-m",
            "-G",
            "c0-3",
            "-r",
            "/var/lib/tessera/units/c0-3/dropbear_ed25519_host_key",
            "-P",
            "/var/lib/tessera/units/c0-3/dropbear.pid",
            "-p",
            "22000",
        ];
        assert_eq!(argv, expected);

        // Paths systemd would mangle are refused rather than passed on.
        for bad in ["/tmp/a b/log", "/tmp/$HOME/log", "/tmp/%h/log"] {
            let s = SshService {
                log_file: Path::new(bad),
                ..service.clone()
            };
            assert!(ssh_service_command(Path::new("/usr/bin/systemd-run"), &s).is_err());
        }
    }

    #[test]
    fn status_is_read_from_systemctl_show() {
        let status = parse_status("MainPID=4242\nLoadState=loaded\nActiveState=active\n");
        assert_eq!(
            status,
            UnitStatus {
                load: "loaded".into(),
                active: "active".into(),
                main_pid: Some(4242),
            }
        );
        assert!(status.running());
        let status = parse_status("MainPID=0\nLoadState=not-found\nActiveState=inactive\n");
        assert_eq!(status.main_pid, None);
        assert!(!status.running());
        assert!(!parse_status("ActiveState=failed").running());
        assert!(parse_status("ActiveState=activating").running());
    }
}
