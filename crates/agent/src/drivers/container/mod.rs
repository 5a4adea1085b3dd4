//! Instances as system containers.
//!
//! Each instance is an OCI bundle under `STATE/containers/<id>/` run by
//! `runc` (with its own `--root`, `STATE/runc`, so that several agents on
//! one machine never see each other's containers):
//!
//! - `lower/`: a hard-linked copy of the image's root filesystem (so that
//!   re-importing the image does not change instances made from it), under
//!   an overlay mount `rootfs/` whose writes land in `rw/upper/`;
//! - `rw.img`, mounted at `rw/` while it runs: an ext4 file system of the
//!   instance's disk size that holds its writes (`upper/`, `work/`), so
//!   filling its disk never fills the host's;
//! - `config.json`: written with `oci-spec`: the image's init as PID 1, the
//!   instance's name as hostname, its CPUs, memory and a pids limit in its
//!   own cgroup, its own user namespace (see `idmap.rs`), network namespace
//!   and Tessera's seccomp profile (`seccomp.rs`);
//! - `instance.json`: the instance's address, SSH port and host ids, and
//!   whether the port is forwarded, kept for its whole life (across stops
//!   and agent restarts);
//! - `console.log`: the init's output;
//! - `storage.img`, mounted at `storage/` while it runs: its persistent
//!   storage, if it has any (see `storage.rs`).
//!
//! **Isolation.** Root inside is an unprivileged range of host ids
//! (`idmap.rs`): the instance's files are seen through idmapped mounts, and
//! the agent writes into them as the instance's root, never as the host's.
//! Instances made before this, or on a host without idmapped mounts whose
//! operator allowed it, run as the host's root (`Record::ids` is `None`,
//! with the old layout `upper/`, `work/`).
//!
//! **Network.** runc makes the instance's network namespace inside its user
//! namespace; between `runc create` and `runc start` the driver names it
//! `tsr-<tag>`, moves in `eth0`, one end of a veth pair whose other end
//! (`tv<tag>`) stays on the host with a route to the instance's address, and
//! puts that port in the agent's nftables table (`firewall.rs`): instances
//! are routed, not bridged, so every packet crosses the host's filter. The
//! agent serves DNS to them on their gateway (`dns.rs`). `<tag>` is 8 hex
//! digits of a hash of the state directory and the instance id. The SSH
//! port is a userspace TCP proxy owned by the driver; an instance whose
//! spec turns it off keeps its port reserved (in `instance.json`), so
//! turning it on again reopens the same one unless something else has
//! taken it meanwhile.
//!
//! The driver is an [`InstanceRuntime`]; sessions into an instance are
//! `runc exec` (see `exec.rs`). CPU pinning is runc's: `config.json` names
//! the instance's CPUs and runc makes (and normally removes) the cgroup
//! `/tessera-<agent tag>-<id>` in every hierarchy, so the driver does not
//! use [`crate::cgroup`]; it only sweeps what runc left after a stop, and
//! reads the memory an instance uses there. A shared-CPU instance gets a
//! CFS quota besides its CPUs (see `bundle.rs`).

mod bundle;
mod disk;
mod dns;
mod exec;
mod firewall;
mod forward;
mod idmap;
mod image;
#[cfg(test)]
mod isolation_tests;
mod network;
mod pull_guard;
mod registry;
#[cfg(test)]
mod registry_tests;
mod seccomp;
mod storage;
#[cfg(test)]
mod tests;
mod volume;

pub use image::{import_image, list_images};
pub use registry::{Mirror, Progress, PullOptions, Pulled, pull_image};

use super::instances::check_spec;
use super::{InstanceRuntime, InstanceStatus, Session};
use forward::Proxy;
use network::{NetNames, Subnet};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_agent_api::{
    AgentError, InstanceObservation, InstanceReport, InstanceSpec, NetworkAttachment,
    SessionRequest, VolumeReport, VolumeSpec, Workload, WorkloadMount,
};
use tessera_core::network::GroupRules;

/// Where and how containers live on this host.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// The agent's state directory; containers live under
    /// `STATE/containers/`.
    pub state_dir: PathBuf,
    /// The image store (`STATE/images` by default).
    pub image_dir: PathBuf,
    /// The host bridge instances attach to.
    pub bridge: String,
    /// The host-local IPv4 subnet instances get addresses from, such as
    /// `10.88.0.0/24`: the bridge takes the first address.
    pub subnet: String,
    /// The first host port forwarded to instances' SSH servers.
    pub ssh_port_base: u16,
    /// The resolvers the agent's DNS forwarder asks for instances; empty:
    /// the host's own (`/etc/resolv.conf`).
    pub dns_upstreams: Vec<SocketAddr>,
    /// Runs instances as the host's root when this host cannot give them a
    /// user namespace of their own (no idmapped mounts): the operator's
    /// explicit choice, for hosts that only run trusted instances.
    pub allow_privileged: bool,
    /// Destinations (IPv4 CIDRs) no instance may reach, besides
    /// [`firewall::DENIED_BY_DEFAULT`].
    pub egress_denied: Vec<String>,
    /// How images the catalog names by reference are pulled on first use.
    pub registry: PullOptions,
    /// How many times the host disk's free space instances' disks may
    /// promise together (they are sparse); 1: no more than is free.
    pub disk_overcommit: f64,
}

/// The most processes an instance may have.
const PIDS_LIMIT: i64 = 1024;
/// How often unused pulled images are looked for.
const IMAGE_GC_EVERY: Duration = Duration::from_secs(600);
/// How long an image pulled for instances is kept once none uses it.
const IMAGE_GC_UNUSED: Duration = Duration::from_secs(3600);
/// The size of the root disk of an instance whose spec gives none.
const DEFAULT_DISK_GB: u64 = 10;
/// How long an instance has to stop after TERM before it gets KILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a start waits for the instance's SSH server to answer.
const SSH_WAIT: Duration = Duration::from_secs(10);

/// Waits until `addr` accepts a TCP connection, up to `within`; answers
/// whether it did.
async fn wait_for_port(addr: SocketAddr, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) fn fail(msg: impl Into<String>) -> AgentError {
    AgentError::Failed(msg.into())
}

/// Runs a command; answers its stdout, or fails with its stderr.
pub(super) async fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Result<String, AgentError> {
    run_path(Path::new(program), args).await
}

async fn run_path<S: AsRef<OsStr>>(program: &Path, args: &[S]) -> Result<String, AgentError> {
    let shown = || {
        let mut s = program.display().to_string();
        for a in args {
            s.push(' ');
            s.push_str(&a.as_ref().to_string_lossy());
        }
        s
    };
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| fail(format!("running `{}`: {e}", shown())))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(fail(format!(
            "`{}` failed ({}): {}",
            shown(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| fail(format!("a blocking task failed: {e}")))?
}

pub(super) fn io_fail(what: &str, path: &Path, e: std::io::Error) -> AgentError {
    fail(format!("{what} {}: {e}", path.display()))
}

/// What the driver keeps about an instance (`instance.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    id: String,
    name: String,
    image: String,
    ip: Ipv4Addr,
    /// Its SSH port on the host: reserved for it while the forward is off.
    ssh_port: u16,
    /// Whether `ssh_port` is forwarded (the spec's last word).
    #[serde(default = "forwarded")]
    ssh_forward: bool,
    /// Whether it was last started rather than stopped: after a host
    /// reboot, an instance that should run but does not is reported stopped.
    should_run: bool,
    /// Its host ids (its own user namespace); `None`: it runs as the host's
    /// root (made before instances had their own, or by the operator's
    /// choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ids: Option<idmap::IdRange>,
    /// Its project's network on this host ([`firewall::net_of`]), while it
    /// has a port in the firewall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net: Option<String>,
    /// Its project's egress as its last spec said (the firewall is remade
    /// from it when the agent adopts the instance).
    #[serde(default = "egress_on")]
    egress: bool,
    /// Its place in its VPC, as the spec it was made with said; `None`: an
    /// address of this host's instance network (made before VPCs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<NetworkAttachment>,
    /// Its security groups as its last spec said (the firewall and its SSH
    /// forward admit from them; adopting remakes them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<GroupRules>,
    /// Its project, whose forwards share a bound ([`forward`]); empty in
    /// records written before, until its next start.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    project: String,
}

/// Records written before forwards could be turned off had one.
fn forwarded() -> bool {
    true
}

/// Records written before projects could lose egress had it.
fn egress_on() -> bool {
    true
}

impl Record {
    /// Whose places its SSH forward's connections take: its project's,
    /// or, in a record that does not name its project yet (written before
    /// they did), its own.
    fn forward_places(&self) -> String {
        match self.project.is_empty() {
            true => format!("instance {}", self.id),
            false => self.project.clone(),
        }
    }

    /// The network its firewall chain is of: its VPC, or its project.
    fn net_of(spec: &InstanceSpec) -> String {
        match &spec.network {
            Some(n) => firewall::net_of(&n.vpc_id),
            None => firewall::net_of(&spec.project_id),
        }
    }

    /// Its port in the firewall, on `ifname`, in network `net`.
    fn port<'a>(&'a self, ifname: &'a str, net: &'a str) -> firewall::Port<'a> {
        firewall::Port {
            ifname,
            ip: self.ip,
            net,
            egress: self.egress,
            vpc_cidr: self.network.as_ref().map(|n| n.vpc_cidr.as_str()),
            pool: self
                .network
                .as_ref()
                .map(|n| n.pool.as_str())
                .filter(|p| !p.is_empty()),
            groups: &self.groups,
        }
    }

    /// Its address's prefix length inside the instance.
    fn prefix(&self, host_subnet: &Subnet) -> u8 {
        self.network
            .as_ref()
            .map_or_else(|| host_subnet.prefix(), |n| n.prefix)
    }

    fn report(&self) -> InstanceReport {
        InstanceReport {
            private_ip: self.ip.to_string(),
            ssh_port: self.ssh_forward.then_some(self.ssh_port),
        }
    }
}

/// What `runc state` says.
#[derive(Debug, Deserialize)]
struct RuncState {
    status: String,
    #[serde(default)]
    pid: i64,
}

pub(super) fn validate_id(id: &str) -> Result<(), AgentError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(fail(format!(
            "bad id {id:?}: use 1 to 64 letters, digits, '.', '-' or '_'"
        )))
    }
}

pub(crate) fn find_runc() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter()
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
}

fn host_mems() -> String {
    for path in [
        "/sys/fs/cgroup/cpuset/cpuset.mems",
        "/sys/fs/cgroup/cpuset.mems.effective",
        "/sys/devices/system/node/online",
    ] {
        if let Ok(text) = fs::read_to_string(path) {
            let text = text.trim();
            if !text.is_empty() {
                return text.to_string();
            }
        }
    }
    "0".to_string()
}

/// The open files limit for instances: 65536, or the agent's own hard
/// limit when lower (runc cannot raise it).
fn nofile_limit() -> u64 {
    let hard = fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(4)?.parse::<u64>().ok()
        });
    hard.map_or(1024, |h| h.min(65536))
}

/// The nftables table (family `inet`) of the container driver of an agent
/// keeping `state_dir` (absolute, symlinks resolved): named from the
/// directory, so a restarted agent finds its own. It stays when the agent
/// stops, so its instances stay filtered; once the host has left the cloud,
/// `nft delete table inet NAME` removes it.
pub fn firewall_table(state_dir: &Path) -> String {
    format!(
        "tessera-{}",
        short_hash(&[state_dir.as_os_str().as_encoded_bytes()])
    )
}

fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    hex::encode(h.finalize())[..8].to_string()
}

/// Whether something is mounted at `path`.
fn is_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Makes `root/rel` a real directory, replacing a symlink or file in the
/// way: nothing written into an instance's root may follow its symlinks.
fn safe_dir(root: &Path, rel: &str) -> std::io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    for part in rel.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if part == ".." {
            return Err(std::io::Error::other("'..' in a path inside an instance"));
        }
        p.push(part);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&p)?;
                fs::create_dir(&p)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir(&p)?,
            Err(e) => return Err(e),
        }
    }
    Ok(p)
}

/// Writes `root/dir/name`, owned by `owner` (the instance's root, as the
/// host sees it) with `mode`, never through a symlink.
fn safe_write(
    root: &Path,
    dir: &str,
    name: &str,
    data: &[u8],
    mode: u32,
    owner: u32,
) -> Result<(), AgentError> {
    let d = safe_dir(root, dir).map_err(|e| io_fail("preparing", &root.join(dir), e))?;
    let path = d.join(name);
    let err = |e| io_fail("writing", &path, e);
    if let Ok(m) = fs::symlink_metadata(&path) {
        if m.is_dir() {
            fs::remove_dir_all(&path).map_err(err)?;
        } else {
            // Made anew: a file of another owner inside could not be
            // truncated by the instance's root without overriding it.
            fs::remove_file(&path).map_err(err)?;
        }
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    std::os::unix::fs::fchown(&f, Some(owner), Some(owner)).map_err(err)?;
    Ok(())
}

/// Runs `f` (file work in an instance's trees) as the instance's root when
/// it has ids of its own, or else as the host's root.
async fn as_root_of<T: Send + 'static>(
    ids: Option<idmap::IdRange>,
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    match ids {
        Some(ids) => blocking(move || idmap::as_instance_root(ids, f)).await,
        None => blocking(f).await,
    }
}

/// What a serverless replica runs: its own entrypoint or the image's,
/// then its own command or (unless it replaced the entrypoint, as Docker
/// does) the image's.
fn workload_args(w: &Workload, meta: &image::ImageMeta) -> Result<Vec<String>, AgentError> {
    let (image_entrypoint, image_cmd) = match meta.entrypoint.is_empty() && meta.cmd.is_empty() {
        // Imported before entrypoint and command were kept apart.
        true => (Vec::new(), meta.command.clone()),
        false => (meta.entrypoint.clone(), meta.cmd.clone()),
    };
    let mut args = w.entrypoint.clone().unwrap_or(image_entrypoint);
    match (&w.entrypoint, &w.cmd) {
        (_, Some(cmd)) => args.extend(cmd.iter().cloned()),
        (Some(_), None) => {}
        (None, None) => args.extend(image_cmd),
    }
    match args.is_empty() {
        true => Err(fail(
            "the image names no command, and the deployment gives none".to_string(),
        )),
        false => Ok(args),
    }
}

/// Writes a secret's files into `dir` (made anew), readable by the
/// instance's root only.
fn write_secret_files(
    dir: &Path,
    files: &std::collections::BTreeMap<String, tessera_agent_api::Base64Bytes>,
    owner: u32,
) -> Result<(), AgentError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| io_fail("clearing", dir, e))?;
    }
    fs::create_dir_all(dir).map_err(|e| io_fail("making", dir, e))?;
    for (name, content) in files {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(fail(format!("bad secret file name {name:?}")));
        }
        let path = dir.join(name);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true).mode(0o400);
        let mut file = options
            .open(&path)
            .map_err(|e| io_fail("writing", &path, e))?;
        file.write_all(&content.0)
            .map_err(|e| io_fail("writing", &path, e))?;
        std::os::unix::fs::chown(&path, Some(owner), Some(owner))
            .map_err(|e| io_fail("writing", &path, e))?;
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o500))
        .map_err(|e| io_fail("preparing", dir, e))?;
    std::os::unix::fs::chown(dir, Some(owner), Some(owner))
        .map_err(|e| io_fail("preparing", dir, e))
}

/// Makes a block device node at `path` owned by `owner`, as a volume of an
/// unprivileged instance is bound in (replacing what is there).
fn make_device_node(path: &Path, major: i64, minor: i64, owner: u32) -> Result<(), AgentError> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| io_fail("creating", parent, e))?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_fail("removing", path, e)),
    }
    let dev = makedev(
        u64::try_from(major).unwrap_or_default(),
        u64::try_from(minor).unwrap_or_default(),
    );
    mknod(path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), dev)
        .map_err(|e| fail(format!("making the device node {}: {e}", path.display())))?;
    std::os::unix::fs::chown(path, Some(owner), Some(owner)).map_err(|e| io_fail("owning", path, e))
}

/// Containers on this host.
pub struct ContainerDriver {
    config: ContainerConfig,
    runc: PathBuf,
    subnet: Subnet,
    /// 8 hex digits unique to this agent (its state directory).
    agent_tag: String,
    mems: String,
    /// One lock per instance: its operations never overlap.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while choosing addresses and ports.
    alloc: tokio::sync::Mutex<()>,
    /// Held while a disk is checked against the host's and made or grown.
    disk: tokio::sync::Mutex<()>,
    proxies: Mutex<HashMap<String, Proxy>>,
    /// Whether instances can have user namespaces of their own here, or
    /// why not (found at start).
    isolation: Result<(), String>,
    firewall: firewall::Firewall,
    /// The host's side of instances' networks, made at the first start or
    /// adoption: the gateway's device, forwarding, the firewall's table and
    /// the DNS forwarder (held here while the driver lives).
    host_net: tokio::sync::Mutex<Option<dns::DnsForwarder>>,
    /// Each running instance's CPU time when last observed, to tell how
    /// busy it was since.
    cpu_samples: Mutex<HashMap<String, CpuSample>>,
    /// Instances waiting on their image's pull, and how far it got: what
    /// the host reports of them until they run.
    pulls: Mutex<HashMap<String, String>>,
    /// Held shared by pulls, alone by the collection of unused images.
    image_gc: Arc<tokio::sync::RwLock<Option<std::time::Instant>>>,
}

impl ContainerDriver {
    /// Checks what the host offers (an OCI runtime, cgroups).
    pub fn new(mut config: ContainerConfig) -> Result<Self, AgentError> {
        let runc = find_runc().ok_or_else(|| {
            fail("no OCI runtime: `runc` is not installed (install the Debian package `runc`)")
        })?;
        if !Path::new("/sys/fs/cgroup/cpuset/cpuset.cpus").exists()
            && !fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpuset"))
        {
            return Err(fail(
                "the host has no cpuset cgroup controller (neither /sys/fs/cgroup/cpuset nor cpuset in cgroup v2)",
            ));
        }
        let subnet = Subnet::parse(&config.subnet)?;
        if config.bridge.is_empty() || config.bridge.len() > 15 {
            return Err(fail(format!(
                "bad bridge name {:?}: 1 to 15 characters",
                config.bridge
            )));
        }
        for dir in [
            config.state_dir.join("containers"),
            config.state_dir.join("runc"),
        ] {
            fs::create_dir_all(&dir).map_err(|e| io_fail("creating", &dir, e))?;
        }
        // Absolute and free of symlinks: mounts are found by path.
        config.state_dir = fs::canonicalize(&config.state_dir)
            .map_err(|e| io_fail("resolving", &config.state_dir, e))?;
        if let Ok(images) = fs::canonicalize(&config.image_dir) {
            config.image_dir = images;
        }
        let agent_tag = short_hash(&[config.state_dir.as_os_str().as_encoded_bytes()]);
        // Traversable (not readable) by instances' roots, which runc mounts
        // their roots as.
        for dir in [
            config.state_dir.clone(),
            config.state_dir.join("containers"),
        ] {
            let mode = fs::metadata(&dir)
                .map_err(|e| io_fail("reading", &dir, e))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(&dir, fs::Permissions::from_mode((mode & 0o7777) | 0o111))
                    .map_err(|e| io_fail("opening", &dir, e))?;
            }
        }
        let isolation = idmap::probe(&config.state_dir);
        // The firewall is made at the first start; whether it can be is
        // known now.
        let isolation = isolation.and_then(|()| {
            let listed = std::process::Command::new("nft")
                .args(["list", "tables"])
                .output()
                .map_err(|e| format!("no nftables (`nft`: {e}; install the package nftables)"))?;
            match listed.status.success() {
                true => Ok(()),
                false => Err(format!(
                    "no nftables: `nft list tables` failed: {}",
                    String::from_utf8_lossy(&listed.stderr).trim()
                )),
            }
        });
        match &isolation {
            Ok(()) => tracing::info!(
                "instances run unprivileged: user namespaces with idmapped mounts, seccomp, nftables"
            ),
            Err(why) if config.allow_privileged => {
                tracing::warn!(%why, "this host cannot isolate instances; they run as the host's root (--allow-privileged-instances)")
            }
            Err(why) => {
                tracing::warn!(%why, "this host cannot isolate instances; it refuses to run them (--allow-privileged-instances runs them as the host's root)")
            }
        }
        let mut denied: Vec<String> = firewall::DENIED_BY_DEFAULT
            .iter()
            .map(|c| c.to_string())
            .collect();
        for cidr in &config.egress_denied {
            denied.push(firewall::parse_cidr(cidr)?);
        }
        let firewall =
            firewall::Firewall::new(firewall_table(&config.state_dir), subnet.gateway(), denied);
        close_earlier_state(&config);
        Ok(Self {
            isolation,
            firewall,
            host_net: tokio::sync::Mutex::new(None),
            cpu_samples: Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
            image_gc: Arc::new(tokio::sync::RwLock::new(None)),
            runc,
            subnet,
            agent_tag,
            mems: host_mems(),
            locks: Mutex::new(HashMap::new()),
            alloc: tokio::sync::Mutex::new(()),
            disk: tokio::sync::Mutex::new(()),
            proxies: Mutex::new(HashMap::new()),
            config,
        })
    }

    /// Makes the host's side of instances' networks, once: the gateway's
    /// device, IPv4 forwarding, the firewall's table (nftables) and the DNS
    /// forwarder on the gateway's address.
    async fn ensure_host_net(&self) -> Result<(), AgentError> {
        let mut ready = self.host_net.lock().await;
        if ready.is_some() {
            return Ok(());
        }
        network::ensure_bridge(&self.config.bridge, &self.subnet).await?;
        let marker = self.config.state_dir.join("forwarding-turned-on");
        let route_only_instances = firewall::enable_forwarding(&marker).await?;
        self.firewall.ensure(route_only_instances).await?;
        let upstreams = if self.config.dns_upstreams.is_empty() {
            let text = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            dns::upstreams_from_resolv_conf(&text)
        } else {
            self.config.dns_upstreams.clone()
        };
        if upstreams.is_empty() {
            tracing::warn!(
                "no DNS resolvers for instances: the host's /etc/resolv.conf names none and none were given"
            );
        }
        let listen = SocketAddr::from((self.subnet.gateway(), 53));
        let forwarder = dns::DnsForwarder::spawn(listen, upstreams.clone()).await?;
        tracing::info!(dns = %forwarder.local_addr(), ?upstreams, "instances' network ready: firewall table, forwarding, DNS");
        *ready = Some(forwarder);
        Ok(())
    }

    /// The pid of an instance's init while it runs.
    pub async fn pid(&self, id: &str) -> Result<Option<i64>, AgentError> {
        Ok(self
            .runc_state(id)
            .await?
            .filter(|s| s.status == "running")
            .map(|s| s.pid))
    }

    // --- the steps ---

    async fn start_locked(
        &self,
        spec: &InstanceSpec,
        mut rec: Record,
    ) -> Result<InstanceReport, AgentError> {
        let id = rec.id.clone();
        match self.runc_state(&id).await? {
            Some(state) if state.status == "running" => {
                // Its CPUs, limits and mounts stay as they are until its
                // next start; its SSH forward and its project's egress
                // follow the spec at once.
                if rec.egress != spec.egress
                    || rec.groups != spec.security_groups
                    || rec.project != spec.project_id
                {
                    rec.egress = spec.egress;
                    rec.groups = spec.security_groups.clone();
                    rec.project = spec.project_id.clone();
                    self.save_record(&rec)?;
                }
                self.converge_forward(&mut rec, spec.ssh_forward).await?;
                if let Some(net) = &rec.net {
                    self.ensure_host_net().await?;
                    let ifname = self.net_names(&id).host_veth;
                    self.firewall.add(&rec.port(&ifname, net)).await?;
                }
                return Ok(rec.report());
            }
            Some(_) => {
                self.runc(&["delete", "--force", &id]).await?;
            }
            None => {}
        }
        let dir = self.dir(&id);
        self.ensure_host_net().await?;
        self.ensure_rootfs(&rec, spec.disk_gb).await?;

        // What the instance's root gets from the spec.
        let rootfs = dir.join("rootfs");
        let (spec2, ip, gateway) = (spec.clone(), rec.ip, self.subnet.gateway());
        let root2 = rootfs.clone();
        let owner = rec.ids.map_or(0, |ids| ids.base);
        as_root_of(rec.ids, move || {
            prepare_rootfs(&root2, &spec2, ip, gateway, owner)
        })
        .await?;

        let net = Record::net_of(spec);
        let old_groups = rec.groups.clone();
        if rec.egress != spec.egress
            || rec.groups != spec.security_groups
            || rec.project != spec.project_id
        {
            rec.egress = spec.egress;
            rec.groups = spec.security_groups.clone();
            rec.project = spec.project_id.clone();
            self.save_record(&rec)?;
        }
        if rec.net.as_deref() != Some(net.as_str()) {
            if let Some(old) = rec.net.take() {
                self.firewall
                    .remove(&self.net_names(&id).host_veth, rec.ip, &old, &old_groups)
                    .await?;
            }
            rec.net = Some(net);
            self.save_record(&rec)?;
        }
        let names = self.net_names(&id);
        if let Err(e) = self.launch(spec, &rec, &names).await {
            // A failed start leaves nothing running: no container, network,
            // firewall port, loop devices or storage mount.
            let _ = self.runc(&["delete", "--force", &id]).await;
            self.unplug(&rec).await;
            self.release_volumes(&id).await;
            if let Err(e) = self.unmount_storage(&dir).await {
                tracing::warn!(%id, error = %e, "unmounting the persistent storage");
            }
            return Err(e);
        }
        if !rec.should_run {
            rec.should_run = true;
            self.save_record(&rec)?;
        }
        self.converge_forward(&mut rec, spec.ssh_forward).await?;
        // Answer once SSH does, as a cloud's "running" means reachable; an
        // image without an SSH server still runs, so this only waits. A
        // serverless replica has none: its front door asks its health.
        let ssh_answers = match spec.workload {
            Some(_) => false,
            None => wait_for_port(SocketAddr::from((rec.ip, 22)), SSH_WAIT).await,
        };
        tracing::info!(%id, ip = %rec.ip, ssh_port = ?rec.report().ssh_port, ssh_answers, "instance running");
        Ok(rec.report())
    }

    /// Runs a prepared instance in its network namespace: attaches its
    /// volumes, mounts its storage, writes its `config.json` and starts it
    /// (the caller undoes all of it on failure).
    async fn launch(
        &self,
        spec: &InstanceSpec,
        rec: &Record,
        names: &NetNames,
    ) -> Result<(), AgentError> {
        let id = rec.id.as_str();
        let dir = self.dir(id);
        let rootfs = dir.join("rootfs");
        // Its volumes, as block devices; the ids are kept so that a stop
        // releases them.
        let mut devices = Vec::new();
        let attached = dir.join("volumes");
        let ids: Vec<String> = spec.volumes.iter().map(|v| v.id.clone()).collect();
        fs::write(&attached, ids.join("\n")).map_err(|e| io_fail("writing", &attached, e))?;
        for v in &spec.volumes {
            if !v.target.starts_with("vd") || validate_id(&v.target).is_err() {
                return Err(fail(format!("bad volume target {:?}", v.target)));
            }
            let device = volume::attach(&self.config.state_dir, &v.id).await?;
            let node = dir.join("dev").join(&v.target);
            if let Some(ids) = rec.ids {
                make_device_node(&node, device.major, device.minor, ids.base)?;
            }
            devices.push(bundle::Device {
                path: format!("/dev/{}", v.target),
                major: device.major,
                minor: device.minor,
                node,
            });
        }

        // Its persistent storage, mounted on the host and bound in (through
        // an idmapped clone of its mount, for an unprivileged instance).
        let mut binds = match &spec.storage {
            Some(storage) => {
                let wanted = storage.size_gb.saturating_mul(storage::GIB);
                let _disk = self
                    .disk_room(&storage::image(&dir), wanted, "its persistent storage")
                    .await?;
                storage::mount(&dir, id, storage).await?
            }
            None => Vec::new(),
        };
        if let (Some(ids), false) = (rec.ids, binds.is_empty()) {
            let (raw, mapped) = (storage::mount_point(&dir), dir.join("storage.id"));
            if !is_mounted(&mapped) {
                fs::create_dir_all(&mapped).map_err(|e| io_fail("creating", &mapped, e))?;
                let (raw2, mapped2) = (raw.clone(), mapped.clone());
                blocking(move || idmap::Userns::new(ids)?.bind(&raw2, &mapped2)).await?;
            }
            for bind in &mut binds {
                if let Ok(rel) = bind.source.strip_prefix(&raw) {
                    bind.source = mapped.join(rel);
                }
            }
        }
        // A path new to the storage starts with what the image has there
        // (a home's dotfiles under `/root`), as a new Docker volume does.
        for bind in binds.iter().filter(|b| b.fresh) {
            seed_from_image(&rootfs, bind, rec.ids).await;
        }
        // A mount path over root's keys (`/root`, the containers API's
        // default) hides those written into the root filesystem: write
        // them where the instance will see them.
        if let Some((source, rel)) = covering_bind(&binds, "/root/.ssh") {
            let keys = authorized_keys(spec);
            let owner = rec.ids.map_or(0, |ids| ids.base);
            as_root_of(rec.ids, move || {
                let ssh = safe_dir(&source, &rel).map_err(|e| io_fail("preparing", &source, e))?;
                fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))
                    .map_err(|e| io_fail("preparing", &ssh, e))?;
                std::os::unix::fs::chown(&ssh, Some(owner), Some(owner))
                    .map_err(|e| io_fail("preparing", &ssh, e))?;
                safe_write(
                    &source,
                    &rel,
                    "authorized_keys",
                    keys.as_bytes(),
                    0o600,
                    owner,
                )
            })
            .await?;
        }

        let meta = image::read_meta(&self.config.image_dir, &rec.image).unwrap_or_default();
        let mut env = vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            "HOME=/root".to_string(),
            "container=tessera".to_string(),
        ];
        env.extend(meta.env.iter().filter(|e| !e.starts_with("PATH=")).cloned());
        let mut tmpfs = Vec::new();
        let (args, cwd) = match &spec.workload {
            // A serverless replica runs its application, not a system.
            Some(w) => {
                self.mount_workload(w, &dir, &rootfs, rec.ids, &mut binds, &mut tmpfs)
                    .await?;
                for var in &w.env {
                    let name = var.split('=').next().unwrap_or_default();
                    env.retain(|e| e.split('=').next() != Some(name));
                    env.push(var.clone());
                }
                (workload_args(w, &meta)?, meta.workdir.clone())
            }
            None if fs::symlink_metadata(rootfs.join("sbin/tessera-init")).is_ok() => {
                (vec!["/sbin/tessera-init".to_string()], String::new())
            }
            None if !meta.command.is_empty() => (meta.command.clone(), meta.workdir.clone()),
            None => (vec!["/sbin/init".to_string()], String::new()),
        };
        let oci = bundle::build(&bundle::BundleParams {
            hostname: spec.name.clone(),
            args,
            cwd: match cwd.starts_with('/') {
                true => cwd,
                false => "/".to_string(),
            },
            env,
            tmpfs,
            cpus: spec.cpus.to_string(),
            mems: self.mems.clone(),
            memory_bytes: i64::try_from(spec.memory_mb.saturating_mul(1024 * 1024))
                .unwrap_or(i64::MAX),
            pids_limit: PIDS_LIMIT,
            nofile: nofile_limit(),
            cgroups_path: PathBuf::from(self.cgroups_path(id)),
            ids: rec.ids,
            devices,
            cpu_millis: spec.cpu_millis,
            binds,
        })?;
        let config_path = dir.join("config.json");
        let json = serde_json::to_vec_pretty(&oci).map_err(|e| fail(e.to_string()))?;
        // Its environment may hold a replica's secrets: root's eyes only.
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true).mode(0o600);
        options
            .open(&config_path)
            .and_then(|mut file| {
                file.set_permissions(fs::Permissions::from_mode(0o600))?;
                file.write_all(&json)
            })
            .map_err(|e| io_fail("writing", &config_path, e))?;

        // Made but not started: its network goes into its namespace and its
        // port into the firewall before its init runs.
        self.runc_create(id).await?;
        let pid = self
            .runc_state(id)
            .await?
            .map(|s| s.pid)
            .filter(|pid| *pid > 0)
            .ok_or_else(|| fail(format!("`runc create {id}` left no init process")))?;
        let address = (rec.ip, rec.prefix(&self.subnet));
        network::setup(names, &self.config.bridge, &self.subnet, address, pid).await?;
        let net = rec.net.as_deref().unwrap_or_default();
        self.firewall.add(&rec.port(&names.host_veth, net)).await?;
        self.runc(&["start", id]).await?;
        Ok(())
    }

    /// Takes an instance's network away: its firewall port, veth and
    /// namespace.
    async fn unplug(&self, rec: &Record) {
        let names = self.net_names(&rec.id);
        if let Some(net) = &rec.net
            && let Err(e) = self
                .firewall
                .remove(&names.host_veth, rec.ip, net, &rec.groups)
                .await
        {
            tracing::warn!(id = %rec.id, error = %e, "removing the instance's firewall port");
        }
        network::teardown(&names).await;
    }

    /// Unmounts an instance's persistent storage (and its idmapped clone).
    async fn unmount_storage(&self, dir: &Path) -> Result<(), AgentError> {
        let mapped = dir.join("storage.id");
        blocking(move || unmount_all(&mapped)).await?;
        storage::unmount(dir).await
    }

    async fn runc_create(&self, id: &str) -> Result<(), AgentError> {
        let dir = self.dir(id);
        let console = dir.join("console.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console)
            .map_err(|e| io_fail("opening", &console, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| io_fail("opening", &console, e))?;
        let before = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = tokio::process::Command::new(&self.runc)
            .arg("--root")
            .arg(self.runc_root())
            .args(["create", "--bundle"])
            .arg(&dir)
            .arg("--pid-file")
            .arg(dir.join("init.pid"))
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .status();
        let status = tokio::time::timeout(Duration::from_secs(60), child)
            .await
            .map_err(|_| fail(format!("`runc create {id}` did not finish in 60 s")))?
            .map_err(|e| fail(format!("running runc: {e}")))?;
        if status.success() {
            return Ok(());
        }
        let text = fs::read(&console).unwrap_or_default();
        let tail = String::from_utf8_lossy(text.get(before as usize..).unwrap_or(&text));
        let tail: String = tail
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(fail(format!(
            "`runc create {id}` failed ({status}): {}",
            tail.trim()
        )))
    }

    async fn stop_locked(&self, id: &str) -> Result<(), AgentError> {
        // Closing the forward first: no new sessions while it stops.
        self.close_forward(id).await;
        if let Some(state) = self.runc_state(id).await? {
            if state.status == "running" {
                let _ = self.runc(&["kill", id, "TERM"]).await;
                if !self.wait_stopped(id, STOP_GRACE).await? {
                    tracing::info!(%id, "instance ignored TERM; killing it");
                    let _ = self.runc(&["kill", id, "KILL"]).await;
                    self.wait_stopped(id, Duration::from_secs(5)).await?;
                }
            }
            self.runc(&["delete", "--force", id]).await?;
        }
        self.remove_cgroups(id).await;
        match self.load_record(id)? {
            Some(rec) => self.unplug(&rec).await,
            None => network::teardown(&self.net_names(id)).await,
        }
        let (rootfs, rw) = (self.dir(id).join("rootfs"), self.dir(id).join("rw"));
        blocking(move || {
            unmount_all(&rootfs)?;
            unmount_all(&rw)
        })
        .await?;
        self.unmount_storage(&self.dir(id)).await?;
        self.release_volumes(id).await;
        Ok(())
    }

    /// Releases the loop devices of the volumes an instance was started
    /// with.
    async fn release_volumes(&self, id: &str) {
        let attached = self.dir(id).join("volumes");
        let Ok(ids) = fs::read_to_string(&attached) else {
            return;
        };
        for volume in ids.lines().filter(|l| !l.is_empty()) {
            if let Err(e) = volume::detach(&self.config.state_dir, volume).await {
                tracing::warn!(%id, %volume, error = %e, "releasing the volume's loop device");
            }
        }
    }

    /// Waits until runc says the instance is stopped; answers whether it is.
    async fn wait_stopped(&self, id: &str, limit: Duration) -> Result<bool, AgentError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.runc_state(id).await? {
                None => return Ok(true),
                Some(s) if s.status == "stopped" => return Ok(true),
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes cgroup directories runc left (it normally removes them).
    async fn remove_cgroups(&self, id: &str) {
        let rel = self.cgroups_path(id);
        let rel = rel.trim_start_matches('/').to_string();
        let _ = blocking(move || {
            let base = Path::new("/sys/fs/cgroup");
            let mut candidates = vec![base.join(&rel)];
            if let Ok(entries) = fs::read_dir(base) {
                for e in entries.flatten() {
                    candidates.push(e.path().join(&rel));
                }
            }
            for c in candidates {
                if c.is_dir()
                    && let Err(e) = fs::remove_dir(&c)
                {
                    tracing::warn!(path = %c.display(), error = %e, "removing a leftover cgroup");
                }
            }
            Ok(())
        })
        .await;
    }

    /// Makes sure the instance's root is mounted: its own copy of the image
    /// under an overlay.
    async fn ensure_rootfs(&self, rec: &Record, disk_gb: u64) -> Result<(), AgentError> {
        let dir = self.dir(&rec.id);
        // An instance made by an earlier version has a directory any
        // account could search.
        protect_dir(&dir, rec.ids)?;
        let lower = dir.join("lower");
        if !lower.is_dir() {
            let image_root = image::image_rootfs(&self.config.image_dir, &rec.image);
            if !image_root.is_dir() {
                return Err(fail(format!(
                    "image {} is not on this host; import it with `tessera image import {} FILE`",
                    rec.image, rec.image
                )));
            }
            let tmp = dir.join("lower.tmp");
            let tmp2 = tmp.clone();
            blocking(move || match fs::remove_dir_all(&tmp2) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_fail("removing", &tmp2, e)),
            })
            .await?;
            // Hard links are instant and share nothing writable: the overlay
            // never writes to its lower layer.
            let linked = run(
                "cp",
                &[OsStr::new("-al"), image_root.as_os_str(), tmp.as_os_str()],
            )
            .await;
            if let Err(e) = linked {
                tracing::info!(error = %e, "cannot hard-link the image; copying it");
                let _ = run("rm", &[OsStr::new("-rf"), tmp.as_os_str()]).await;
                run(
                    "cp",
                    &[OsStr::new("-a"), image_root.as_os_str(), tmp.as_os_str()],
                )
                .await?;
            }
            fs::rename(&tmp, &lower).map_err(|e| io_fail("renaming", &tmp, e))?;
        }
        let rootfs = dir.join("rootfs");
        if is_mounted(&rootfs) {
            return Ok(());
        }
        if let Some(ids) = rec.ids {
            let gb = if disk_gb == 0 {
                DEFAULT_DISK_GB
            } else {
                disk_gb
            };
            let rw = dir.join("rw");
            let _disk = self
                .disk_room(
                    &dir.join("rw.img"),
                    gb.saturating_mul(storage::GIB),
                    "its root disk",
                )
                .await?;
            // The instance's writes land in a file system of its disk's
            // size: filling it fills its disk, never the host's.
            storage::ensure_fs(
                &dir.join("rw.img"),
                &rw,
                gb.saturating_mul(storage::GIB),
                "nodev",
            )
            .await
            .map_err(|e| fail(format!("the root disk of {}: {e}", rec.id)))?;
            return mount_idmapped_root(&dir, ids).await;
        }
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        for d in [&upper, &work, &rootfs] {
            fs::create_dir_all(d).map_err(|e| io_fail("creating", d, e))?;
        }
        blocking(move || mount_overlay(&rootfs, &lower, &upper, &work)).await
    }

    /// Opens or closes the SSH forward of a running instance as `want`
    /// says, keeping the choice in its record (an agent restart honours
    /// it).
    async fn converge_forward(&self, rec: &mut Record, want: bool) -> Result<(), AgentError> {
        if rec.ssh_forward != want {
            rec.ssh_forward = want;
            self.save_record(rec)?;
        }
        if want {
            self.open_forward(rec).await
        } else {
            self.close_forward(&rec.id).await;
            Ok(())
        }
    }

    /// Starts the SSH forward of a running instance unless it has one: on
    /// its port, or on another one (kept from then on) when something else
    /// holds that one.
    async fn open_forward(&self, rec: &mut Record) -> Result<(), AgentError> {
        let target = SocketAddr::new(rec.ip.into(), 22);
        let old = {
            let mut proxies = self.proxies.lock().unwrap_or_else(|p| p.into_inner());
            match proxies.get(&rec.id) {
                Some(p) if p.is_alive() && p.port == rec.ssh_port && p.target == target => {
                    p.set_groups(&rec.groups);
                    p.set_project(&rec.forward_places());
                    return Ok(());
                }
                _ => proxies.remove(&rec.id),
            }
        };
        if let Some(old) = old {
            old.close().await;
        }
        let proxy = match Proxy::spawn(
            rec.ssh_port,
            target,
            rec.groups.clone(),
            &rec.forward_places(),
        )
        .await
        {
            Ok(proxy) => proxy,
            Err(e) => {
                let _alloc = self.alloc.lock().await;
                let port = self.free_port().await?;
                tracing::warn!(id = %rec.id, error = %e, old = rec.ssh_port, new = port, "the instance's SSH port is taken; forwarding another one");
                let proxy =
                    Proxy::spawn(port, target, rec.groups.clone(), &rec.forward_places()).await?;
                rec.ssh_port = port;
                self.save_record(rec)?;
                proxy
            }
        };
        self.proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rec.id.clone(), proxy);
        Ok(())
    }

    /// Closes an instance's SSH forward and the connections through it
    /// (closed when this returns); its port stays reserved for it.
    async fn close_forward(&self, id: &str) {
        let proxy = self
            .proxies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(proxy) = proxy {
            proxy.close().await;
            tracing::info!(%id, "SSH forward closed");
        }
    }

    /// A serverless replica's mounts: its scratch directories made, its
    /// secrets' files written and bound in read-only, its memory file
    /// systems listed for its bundle.
    async fn mount_workload(
        &self,
        w: &Workload,
        dir: &Path,
        rootfs: &Path,
        ids: Option<idmap::IdRange>,
        binds: &mut Vec<bundle::Bind>,
        tmpfs: &mut Vec<(String, u32)>,
    ) -> Result<(), AgentError> {
        let owner = ids.map_or(0, |ids| ids.base);
        for (n, mount) in w.mounts.iter().enumerate() {
            match mount {
                WorkloadMount::Scratch { path } => {
                    let (root, rel) = (rootfs.to_path_buf(), path.clone());
                    as_root_of(ids, move || {
                        safe_dir(&root, &rel).map(|_| ()).map_err(|e| {
                            io_fail("preparing", &root.join(rel.trim_start_matches('/')), e)
                        })
                    })
                    .await?;
                }
                WorkloadMount::Memory { path, size_mb } => tmpfs.push((path.clone(), *size_mb)),
                WorkloadMount::Files { path, files } => {
                    let source = dir.join("secrets").join(n.to_string());
                    write_secret_files(&source, files, owner)?;
                    binds.push(bundle::Bind {
                        source,
                        destination: path.clone(),
                        fresh: false,
                        readonly: true,
                    });
                }
            }
        }
        Ok(())
    }

    /// Makes sure the spec's image is on this host: pulled, the first time
    /// an instance needs it, from the registry reference the catalog gives
    /// (through the agent's mirrors), one pull at a time per image.
    async fn ensure_image(&self, spec: &InstanceSpec) -> Result<(), AgentError> {
        let _pulls = self.image_gc.read().await;
        let root = image::image_rootfs(&self.config.image_dir, &spec.image);
        if root.is_dir() {
            image::mark_used(&self.config.image_dir, &spec.image);
            return Ok(());
        }
        let Some(reference) = &spec.image_ref else {
            return Err(fail(format!(
                "image {name} is not on this host; import it with `tessera image import {name} FILE` or pull it with `tessera image pull REFERENCE --name {name}`",
                name = spec.image
            )));
        };
        let lock = self.lock(&format!("image:{}", spec.image));
        let _held = lock.lock().await;
        if root.is_dir() {
            image::mark_used(&self.config.image_dir, &spec.image);
            return Ok(());
        }
        tracing::info!(image = %spec.image, %reference, "pulling the image on its first use");
        let name = spec.image.clone();
        let mut told = PullProgress::new(reference);
        // Told until the pull ends, however it ends (its future dropped
        // included).
        struct Telling<'a>(&'a Mutex<HashMap<String, String>>, &'a str);
        impl Drop for Telling<'_> {
            fn drop(&mut self) {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(self.1);
            }
        }
        let _telling = Telling(&self.pulls, &spec.id);
        let say = |text: String| {
            self.pulls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(spec.id.clone(), text);
        };
        say(told.text());
        let mut progress = |p: Progress| {
            tracing::info!(image = %name, progress = ?p, "pulling");
            told.add(&p);
            say(told.text());
        };
        let mut options = self.config.registry.clone();
        // A serverless replica's image is the tenant's choice: from public
        // registries, or one the operator named. A catalog image's
        // reference is the operator's own (its registry may be internal).
        if spec.workload.is_some() {
            options.public_only = Some(self.firewall.denied().to_vec());
        }
        if let Some(login) = spec.workload.as_ref().and_then(|w| w.pull_login.clone()) {
            options.credentials = Some(login);
            options.scope = Some(spec.project_id.clone());
        }
        let pulled = registry::pull_image(
            &self.config.image_dir,
            &spec.image,
            reference,
            &options,
            &mut progress,
        )
        .await?;
        image::set_on_demand(&self.config.image_dir, &spec.image)?;
        image::mark_used(&self.config.image_dir, &spec.image);
        tracing::info!(image = %spec.image, digest = %pulled.digest, fetched = pulled.fetched_bytes, "image pulled");
        Ok(())
    }

    /// Removes, at most every [`IMAGE_GC_EVERY`], the images this host
    /// pulled for instances that none has used for [`IMAGE_GC_UNUSED`],
    /// and the blobs no image left needs, pulls held off meanwhile. It
    /// runs on its own: the caller (a heartbeat's observation) never waits
    /// for it.
    fn collect_images(&self, records: &[Record]) {
        // With a pull under way, another time.
        let Ok(mut last) = self.image_gc.clone().try_write_owned() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < IMAGE_GC_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        let in_use: std::collections::HashSet<String> =
            records.iter().map(|r| r.image.clone()).collect();
        let dir = self.config.image_dir.clone();
        tokio::task::spawn_blocking(move || {
            let _held = last;
            match image::collect_images(&dir, &in_use, IMAGE_GC_UNUSED) {
                Ok(c) if c.images.is_empty() && c.blobs == 0 => {}
                Ok(c) => {
                    tracing::info!(images = ?c.images, blobs = c.blobs, "unused pulled images removed")
                }
                Err(e) => tracing::warn!(error = %e, "collecting unused images"),
            }
        });
    }

    /// The instance's address (its VPC's choice, or the first free one of
    /// this host's instance network) and a free port (the caller holds
    /// `alloc`).
    async fn allocate(&self, spec: &InstanceSpec) -> Result<(Ipv4Addr, u16), AgentError> {
        let records = self.records()?;
        let ip = match &spec.network {
            Some(network) => {
                let ip = network.address;
                if let Some(other) = records.iter().find(|r| r.ip == ip && r.id != spec.id) {
                    return Err(fail(format!(
                        "address {ip} is already instance {}'s on this host",
                        other.id
                    )));
                }
                if ip == self.subnet.gateway() {
                    return Err(fail(format!("address {ip} is this host's gateway")));
                }
                ip
            }
            None => self
                .subnet
                .instance_addresses()
                .find(|a| records.iter().all(|r| r.ip != *a))
                .ok_or_else(|| {
                    fail(format!("subnet {} has no free address", self.config.subnet))
                })?,
        };
        Ok((ip, self.free_port().await?))
    }

    /// The first host port from the base that no instance has and nothing
    /// listens on (the caller holds `alloc`).
    async fn free_port(&self) -> Result<u16, AgentError> {
        let records = self.records()?;
        let base = self.config.ssh_port_base;
        blocking(move || {
            (base..=u16::MAX)
                .filter(|p| *p != 0 && records.iter().all(|r| r.ssh_port != *p))
                .find(|p| std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok())
                .ok_or_else(|| fail(format!("no free host port from {base} up")))
        })
        .await
    }

    // --- runc ---

    fn runc_root(&self) -> PathBuf {
        self.config.state_dir.join("runc")
    }

    async fn runc(&self, args: &[&str]) -> Result<String, AgentError> {
        let root = self.runc_root();
        let mut all: Vec<&OsStr> = vec![OsStr::new("--root"), root.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        run_path(&self.runc, &all).await
    }

    async fn runc_state(&self, id: &str) -> Result<Option<RuncState>, AgentError> {
        if !self.runc_root().join(id).exists() {
            return Ok(None);
        }
        match self.runc(&["state", id]).await {
            Ok(out) => serde_json::from_str(&out)
                .map(Some)
                .map_err(|e| fail(format!("reading `runc state {id}`: {e}"))),
            Err(e) if e.to_string().contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Running containers by id, with their pids.
    async fn running_ids(&self) -> Result<HashMap<String, i64>, AgentError> {
        Ok(self
            .runc_list()
            .await?
            .into_iter()
            .filter(|(_, state)| state.status == "running")
            .map(|(id, state)| (id, state.pid))
            .collect())
    }

    /// Every container runc has, by id, whatever its status.
    async fn runc_list(&self) -> Result<HashMap<String, RuncState>, AgentError> {
        let out = self.runc(&["list", "--format", "json"]).await?;
        let list: Option<Vec<serde_json::Value>> = serde_json::from_str(out.trim())
            .map_err(|e| fail(format!("reading `runc list`: {e}")))?;
        Ok(list
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| {
                Some((
                    c["id"].as_str()?.to_string(),
                    RuncState {
                        status: c["status"].as_str()?.to_string(),
                        pid: c["pid"].as_i64().unwrap_or(0),
                    },
                ))
            })
            .collect())
    }

    // --- names and records ---

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.config.state_dir.join("containers").join(id)
    }

    fn tag(&self, id: &str) -> String {
        short_hash(&[
            self.config.state_dir.as_os_str().as_encoded_bytes(),
            id.as_bytes(),
        ])
    }

    fn net_names(&self, id: &str) -> NetNames {
        NetNames::new(&self.tag(id))
    }

    /// Holds the host's disk for a file about to be made or grown to
    /// `bytes`, once what it adds fits (see [`disk`]); the guard is held
    /// until the file has its size.
    async fn disk_room(
        &self,
        file: &Path,
        bytes: u64,
        what: &str,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, AgentError> {
        let held = self.disk.lock().await;
        let (state_dir, file2) = (self.config.state_dir.clone(), file.to_path_buf());
        let overcommit = self.config.disk_overcommit;
        let what = what.to_string();
        blocking(move || {
            disk::check_room(&state_dir, disk::growth(&file2, bytes), overcommit, &what)
        })
        .await?;
        Ok(held)
    }

    fn cgroups_path(&self, id: &str) -> String {
        format!("/tessera-{}-{id}", self.agent_tag)
    }

    fn load_record(&self, id: &str) -> Result<Option<Record>, AgentError> {
        let path = self.dir(id).join("instance.json");
        match fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(|e| fail(format!("reading {}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_fail("reading", &path, e)),
        }
    }

    fn save_record(&self, rec: &Record) -> Result<(), AgentError> {
        let dir = self.dir(&rec.id);
        let path = dir.join("instance.json");
        let tmp = dir.join("instance.json.tmp");
        let json = serde_json::to_vec_pretty(rec).map_err(|e| fail(e.to_string()))?;
        fs::write(&tmp, json).map_err(|e| io_fail("writing", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| io_fail("writing", &path, e))
    }

    fn records(&self) -> Result<Vec<Record>, AgentError> {
        let dir = self.config.state_dir.join("containers");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_fail("listing", &dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_id(&id).is_err() {
                continue;
            }
            match self.load_record(&id) {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => {}
                Err(e) => tracing::warn!(%id, error = %e, "skipping an unreadable instance record"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

#[async_trait::async_trait]
impl InstanceRuntime for ContainerDriver {
    /// Creates and starts an instance; done already is success.
    async fn create(&self, spec: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        validate_id(&spec.id)?;
        image::validate_image_name(&spec.image)?;
        check_spec(spec)?;
        if let Some(storage) = &spec.storage {
            storage::validate(storage)?;
        }
        let lock = self.lock(&spec.id);
        let _held = lock.lock().await;
        if let Some(rec) = self.load_record(&spec.id)? {
            return self.start_locked(spec, rec).await;
        }
        if spec.cpus.is_empty() {
            return Err(fail("an instance needs at least one CPU"));
        }
        if spec.memory_mb == 0 {
            return Err(fail("an instance needs some memory"));
        }
        self.ensure_image(spec).await?;
        let ids = match &self.isolation {
            _ if spec.privileged => {
                tracing::warn!(id = %spec.id, "making a privileged instance (its project's policy): root inside is the host's root");
                Some(None)
            }
            Ok(()) => None,
            Err(_) if self.config.allow_privileged => Some(None),
            Err(why) => {
                return Err(fail(format!(
                    "this host cannot run instances unprivileged ({why}); it runs none unless its agent is started with --allow-privileged-instances"
                )));
            }
        };
        let dir = self.dir(&spec.id);
        fs::create_dir_all(&dir).map_err(|e| io_fail("creating", &dir, e))?;
        protect_dir(&dir, None)?;
        let ids = match ids {
            Some(none) => none,
            None => Some(idmap::claim(dir.clone()).await?),
        };
        protect_dir(&dir, ids)?;
        let rec = {
            let _alloc = self.alloc.lock().await;
            let (ip, ssh_port) = self.allocate(spec).await?;
            let rec = Record {
                id: spec.id.clone(),
                name: spec.name.clone(),
                image: spec.image.clone(),
                ip,
                ssh_port,
                ssh_forward: spec.ssh_forward,
                should_run: true,
                ids,
                net: None,
                egress: spec.egress,
                network: spec.network.clone(),
                groups: spec.security_groups.clone(),
                project: spec.project_id.clone(),
            };
            self.save_record(&rec)?;
            rec
        };
        tracing::info!(id = %rec.id, ip = %rec.ip, ssh_port = rec.ssh_port, "creating instance");
        self.start_locked(spec, rec).await
    }

    /// Starts a stopped instance; running already is success.
    async fn start(&self, spec: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        validate_id(&spec.id)?;
        check_spec(spec)?;
        if let Some(storage) = &spec.storage {
            storage::validate(storage)?;
        }
        let lock = self.lock(&spec.id);
        let _held = lock.lock().await;
        let rec = self
            .load_record(&spec.id)?
            .ok_or_else(|| fail(format!("instance {} is not on this host", spec.id)))?;
        self.start_locked(spec, rec).await
    }

    /// Stops an instance, keeping its disk; stopped already is success.
    async fn stop(&self, id: &str) -> Result<(), AgentError> {
        validate_id(id)?;
        let lock = self.lock(id);
        let _held = lock.lock().await;
        self.stop_locked(id).await?;
        if let Some(mut rec) = self.load_record(id)?
            && rec.should_run
        {
            rec.should_run = false;
            self.save_record(&rec)?;
        }
        Ok(())
    }

    /// Removes everything the instance had; gone already is success.
    async fn delete(&self, id: &str) -> Result<(), AgentError> {
        validate_id(id)?;
        let lock = self.lock(id);
        let _held = lock.lock().await;
        self.stop_locked(id).await?;
        let dir = self.dir(id);
        for mounted in [
            dir.join("rootfs"),
            dir.join("rw"),
            storage::mount_point(&dir),
            dir.join("storage.id"),
        ] {
            if is_mounted(&mounted) {
                return Err(fail(format!(
                    "{} is still mounted; not removing the instance",
                    mounted.display()
                )));
            }
        }
        let ids = self.load_record(id)?.and_then(|rec| rec.ids);
        let dir2 = dir.clone();
        blocking(move || match fs::remove_dir_all(&dir2) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_fail("removing", &dir2, e)),
        })
        .await?;
        if let Some(ids) = ids {
            idmap::release(ids, dir).await?;
        }
        tracing::info!(%id, "deleted instance");
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// Makes a volume's storage, or grows it (see [`volume`]).
    async fn ensure_volume(&self, spec: &VolumeSpec) -> Result<VolumeReport, AgentError> {
        let file = volume::file(&self.config.state_dir, &spec.id);
        let what = format!("volume {}", spec.id);
        let _disk = self
            .disk_room(&file, spec.size_gb.saturating_mul(storage::GIB), &what)
            .await?;
        volume::ensure(&self.config.state_dir, spec).await
    }

    /// Destroys a volume's storage unless a running instance uses it.
    async fn delete_volume(&self, id: &str) -> Result<(), AgentError> {
        volume::delete(&self.config.state_dir, id).await
    }

    /// The instances on this host and whether each runs.
    async fn list(&self) -> Result<Vec<InstanceStatus>, AgentError> {
        let records = self.records()?;
        let running = self.running_ids().await?;
        Ok(records
            .into_iter()
            .map(|r| InstanceStatus {
                running: running.contains_key(&r.id),
                id: r.id,
            })
            .collect())
    }

    /// After an agent restart: takes over running instances (their network
    /// and port forwards) without restarting them.
    async fn adopt(&self) -> Result<(), AgentError> {
        let mut first_error = None;
        if let Err(e) = self.ensure_host_net().await {
            tracing::warn!(error = %e, "making the instances' network on this host");
            first_error = Some(e);
        }
        for mut rec in self.records()? {
            let lock = self.lock(&rec.id);
            let _held = lock.lock().await;
            match self.runc_state(&rec.id).await {
                Ok(Some(state)) if state.status == "running" => {
                    // Its port in the firewall, should the table have been
                    // lost (a flushed ruleset); adding it again is a no-op.
                    if let Some(net) = rec.net.clone() {
                        let ifname = self.net_names(&rec.id).host_veth;
                        if let Err(e) = self.firewall.add(&rec.port(&ifname, &net)).await {
                            tracing::warn!(id = %rec.id, error = %e, "putting the instance's port back in the firewall");
                            first_error.get_or_insert(e);
                        }
                    }
                    let want = rec.ssh_forward;
                    if let Err(e) = self.converge_forward(&mut rec, want).await {
                        tracing::warn!(id = %rec.id, error = %e, "re-forwarding SSH");
                        first_error.get_or_insert(e);
                    } else {
                        tracing::info!(id = %rec.id, pid = state.pid, "adopted running instance");
                    }
                }
                Ok(_) => {
                    if rec.should_run {
                        tracing::info!(id = %rec.id, "instance should run but is stopped; leaving it stopped");
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every instance, from its record, runc's list, its cgroup and its
    /// storage: one `runc list` for all of them.
    async fn observe(&self) -> Result<Vec<InstanceObservation>, AgentError> {
        let records = self.records()?;
        self.collect_images(&records);
        let states = self.runc_list().await?;
        let seen: Vec<(Record, Option<String>, PathBuf, String)> = records
            .into_iter()
            .map(|rec| {
                let status = states.get(&rec.id).map(|s| s.status.clone());
                let dir = self.dir(&rec.id);
                let cgroup = self.cgroups_path(&rec.id);
                (rec, status, dir, cgroup)
            })
            .collect();
        let mut observed: Vec<(InstanceObservation, Option<CpuSample>)> = blocking(move || {
            Ok(seen
                .into_iter()
                .map(|(rec, status, dir, cgroup)| {
                    let seen = observe_one(&rec, status.as_deref(), &dir, &cgroup);
                    let sample = seen.running.then(|| cpu_sample(&cgroup)).flatten();
                    (seen, sample)
                })
                .collect())
        })
        .await?;
        // Those waiting on a pull have no record yet: their progress.
        let pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (id, text) in pulls {
            if !observed.iter().any(|(o, _)| o.id == id) {
                observed.push((
                    InstanceObservation {
                        id,
                        running: false,
                        detail: Some(text),
                        memory_used_bytes: None,
                        storage_used_bytes: None,
                        cpu_percent: None,
                        pulling: true,
                    },
                    None,
                ));
            }
        }
        let mut samples = self.cpu_samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.retain(|id, _| observed.iter().any(|(o, s)| &o.id == id && s.is_some()));
        for (seen, sample) in &mut observed {
            let Some(now) = sample else { continue };
            if let Some(before) = samples.insert(seen.id.clone(), *now) {
                seen.cpu_percent = now.busy_since(&before);
            }
        }
        Ok(observed.into_iter().map(|(o, _)| o).collect())
    }

    async fn open_session(
        &self,
        id: &str,
        request: &SessionRequest,
    ) -> Result<Session, AgentError> {
        self.exec(id, request).await
    }

    fn isolation(&self) -> Option<String> {
        Some(match &self.isolation {
            Ok(()) => "unprivileged: each instance in its own user namespace, under a seccomp \
                       filter, behind the host's firewall (projects apart, the host closed)"
                .to_string(),
            Err(why) if self.config.allow_privileged => format!(
                "privileged: {why}; instances run as the host's root (--allow-privileged-instances)"
            ),
            Err(why) => format!("none: {why}; this host refuses to run instances"),
        })
    }
}

/// What an instance is now, from runc's `status` of it (`None`: runc has
/// no such container), its directory and its cgroup.
fn observe_one(
    rec: &Record,
    status: Option<&str>,
    dir: &Path,
    cgroup: &str,
) -> InstanceObservation {
    let running = status == Some("running");
    let detail = match (running, status) {
        (true, _) => None,
        // Stops delete the container: one runc still has stopped ended on
        // its own (or was killed behind the driver's back).
        (false, Some(status)) => {
            let mut why = match status {
                "stopped" => "its init exited on its own (runc keeps no exit code)".to_string(),
                other => format!("runc has it {other}"),
            };
            if cgroup_counter(cgroup, "memory.oom_control", "memory.events", "oom_kill")
                .is_some_and(|kills| kills > 0)
            {
                why.push_str("; the out-of-memory killer killed a process of it");
            }
            if let Some(line) = last_line(&dir.join("console.log")) {
                why.push_str("; its last output: ");
                why.push_str(&line);
            }
            Some(why)
        }
        (false, None) if rec.should_run => Some(
            "it should run but is not running (its start failed, or the host restarted)"
                .to_string(),
        ),
        (false, None) => None,
    };
    InstanceObservation {
        id: rec.id.clone(),
        running,
        detail,
        memory_used_bytes: running.then(|| memory_used(cgroup)).flatten(),
        storage_used_bytes: storage::used_bytes(dir),
        cpu_percent: None,
        pulling: false,
    }
}

/// How far an image's pull got, as an instance's status tells it.
struct PullProgress {
    reference: String,
    layers: usize,
    bytes: u64,
    blobs_done: usize,
    bytes_done: u64,
    unpacking: bool,
}

impl PullProgress {
    fn new(reference: &str) -> PullProgress {
        PullProgress {
            reference: reference.to_string(),
            layers: 0,
            bytes: 0,
            blobs_done: 0,
            bytes_done: 0,
            unpacking: false,
        }
    }

    fn add(&mut self, p: &Progress) {
        match p {
            Progress::Manifest { layers, bytes, .. } => {
                self.layers = *layers;
                self.bytes = *bytes;
            }
            Progress::Cached { bytes, .. } | Progress::Fetched { bytes, .. } => {
                // The first is the image's config, not a layer.
                if self.blobs_done > 0 {
                    self.bytes_done += bytes;
                }
                self.blobs_done += 1;
            }
            Progress::Unpacking => self.unpacking = true,
        }
    }

    /// `pulling image R: 2 of 3 layers, 41.2 of 80.0 MB`.
    fn text(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        let what = match (self.unpacking, self.layers) {
            (true, _) => "unpacking".to_string(),
            (false, 0) => "reading its manifest".to_string(),
            // The config blob comes first and is not a layer.
            (false, layers) => format!(
                "{} of {layers} layers, {:.1} of {:.1} MB",
                self.blobs_done.saturating_sub(1).min(layers),
                mb(self.bytes_done.min(self.bytes)),
                mb(self.bytes)
            ),
        };
        format!("pulling image {}: {what}", self.reference)
    }
}

/// An instance's CPU time at a moment, and how much CPU it is given.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuSample {
    used_us: u64,
    at: std::time::Instant,
    /// Its CPUs' worth, in thousandths of a CPU.
    given_millis: u64,
}

impl CpuSample {
    /// How busy it was between `before` and this sample, in percent of
    /// what it is given.
    fn busy_since(&self, before: &CpuSample) -> Option<u32> {
        let wall_us = self.at.checked_duration_since(before.at)?.as_micros() as u64;
        let used_us = self.used_us.checked_sub(before.used_us)?;
        let capacity_us = wall_us.checked_mul(self.given_millis)? / 1000;
        (capacity_us > 0).then(|| u32::try_from(used_us * 100 / capacity_us).unwrap_or(u32::MAX))
    }
}

/// A running instance's CPU time and what it is given, from its cgroup:
/// `cpuacct.usage`, the CFS quota and the cpuset in cgroup v1, `cpu.stat`,
/// `cpu.max` and the effective cpuset in v2.
fn cpu_sample(cgroup: &str) -> Option<CpuSample> {
    let read = |path: String| fs::read_to_string(path).ok();
    let v1 = read(format!("/sys/fs/cgroup/cpuacct{cgroup}/cpuacct.usage"))
        .and_then(|ns| ns.trim().parse::<u64>().ok())
        .map(|ns| ns / 1000);
    let at = std::time::Instant::now();
    let (used_us, quota, cpus) = match v1 {
        Some(used_us) => {
            let quota = read(format!("/sys/fs/cgroup/cpu{cgroup}/cpu.cfs_quota_us"))
                .zip(read(format!(
                    "/sys/fs/cgroup/cpu{cgroup}/cpu.cfs_period_us"
                )))
                .and_then(|(q, p)| {
                    Some((q.trim().parse::<i64>().ok()?, p.trim().parse::<i64>().ok()?))
                });
            let cpus = read(format!("/sys/fs/cgroup/cpuset{cgroup}/cpuset.cpus"));
            (used_us, quota, cpus)
        }
        None => {
            let stat = read(format!("/sys/fs/cgroup{cgroup}/cpu.stat"))?;
            let used_us = stat.lines().find_map(|l| {
                l.strip_prefix("usage_usec ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })?;
            let quota = read(format!("/sys/fs/cgroup{cgroup}/cpu.max")).and_then(|m| {
                let mut parts = m.split_whitespace();
                let quota = parts.next()?.parse::<i64>().ok()?;
                Some((quota, parts.next()?.parse::<i64>().ok()?))
            });
            let cpus = read(format!("/sys/fs/cgroup{cgroup}/cpuset.cpus.effective"));
            (used_us, quota, cpus)
        }
    };
    let pinned = cpus
        .and_then(|c| tessera_core::cpuset::CpuSet::parse_list(c.trim()).ok())
        .map_or(0, |set| set.len() as u64);
    let given_millis = match quota {
        Some((quota, period)) if quota > 0 && period > 0 => {
            let share = (quota as u64).saturating_mul(1000) / period as u64;
            match pinned {
                0 => share,
                n => share.min(n * 1000),
            }
        }
        _ => pinned * 1000,
    };
    (given_millis > 0).then_some(CpuSample {
        used_us,
        at,
        given_millis,
    })
}

/// The memory a cgroup's processes use now: `memory.usage_in_bytes` in
/// cgroup v1's memory hierarchy, `memory.current` in v2.
fn memory_used(cgroup: &str) -> Option<u64> {
    let read = |path: String| fs::read_to_string(path).ok()?.trim().parse::<u64>().ok();
    read(format!(
        "/sys/fs/cgroup/memory{cgroup}/memory.usage_in_bytes"
    ))
    .or_else(|| read(format!("/sys/fs/cgroup{cgroup}/memory.current")))
}

/// A `key value` counter of a cgroup's memory controller: in `v1` (cgroup
/// v1's memory hierarchy) or else `v2`.
fn cgroup_counter(cgroup: &str, v1: &str, v2: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/sys/fs/cgroup/memory{cgroup}/{v1}"))
        .or_else(|_| fs::read_to_string(format!("/sys/fs/cgroup{cgroup}/{v2}")))
        .ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The last line a file has (of its last 4 KiB), cut to 200 characters.
fn last_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().filter(|c| !c.is_control()).take(200).collect())
}

/// Mounts an overlay of `lower` at `target`, its writes in `upper`.
fn mount_overlay(target: &Path, lower: &Path, upper: &Path, work: &Path) -> Result<(), AgentError> {
    for p in [lower, upper, work] {
        let s = p.to_string_lossy();
        if s.contains(',') || s.contains(':') {
            return Err(fail(format!(
                "{} has ',' or ':' in its path: it cannot be an overlay layer",
                p.display()
            )));
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(|e| {
        fail(format!(
            "mounting the overlay at {} ({opts}): {e}",
            target.display()
        ))
    })
}

/// Mounts an unprivileged instance's root at `dir/rootfs`: an overlay of
/// idmapped mounts of its layers (`lower/`, and `rw/` holding `upper/` and
/// `work/`), mounted as the instance's root. The layers' mounts are
/// detached at once: the overlay holds them, and nothing else may.
/// What an earlier version left open to every host account: the image
/// store, the volumes' directory, and instances' directories (each is closed again at its next
/// start too). Says so when the host's disks already promise more than its
/// free space allows: new disks are refused until some go (or the operator
/// raises `--disk-overcommit`). Failures are logged: the agent runs on.
fn close_earlier_state(config: &ContainerConfig) {
    if config.image_dir.is_dir()
        && let Err(e) = image::close_image_dir(&config.image_dir)
    {
        tracing::warn!(dir = %config.image_dir.display(), error = %e, "closing the image store");
    }
    let volumes = volume::dir(&config.state_dir);
    if volumes.is_dir()
        && let Err(e) = fs::set_permissions(&volumes, fs::Permissions::from_mode(0o700))
    {
        tracing::warn!(dir = %volumes.display(), error = %e, "closing the volumes' directory");
    }
    let containers = config.state_dir.join("containers");
    for entry in fs::read_dir(&containers).into_iter().flatten().flatten() {
        let dir = entry.path();
        let ids = fs::read(dir.join("instance.json"))
            .ok()
            .and_then(|text| serde_json::from_slice::<Record>(&text).ok())
            .map(|rec| rec.ids);
        if let Some(ids) = ids
            && let Err(e) = protect_dir(&dir, ids)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "closing an instance's directory");
        }
    }
    if let Ok(stat) = nix::sys::statvfs::statvfs(&config.state_dir) {
        let free = stat.blocks_available().saturating_mul(stat.fragment_size());
        let promised = disk::promised_bytes(&config.state_dir);
        if promised as f64 > free as f64 * config.disk_overcommit {
            tracing::warn!(
                promised_gb = promised >> 30,
                free_gb = free >> 30,
                overcommit = config.disk_overcommit,
                "this host's disks already promise more than its free space allows: new disks and volumes are refused until some go (--disk-overcommit raises the limit)"
            );
        }
    }
}

/// An instance's directory (its root file system, its disk, its storage,
/// its console, its runtime configuration) is the host root's; the
/// instance's own root may search it (`0710`, its group its root's host
/// id: runc mounts its root from here as that user), and no other account,
/// on the host or another instance's, may search or list it: through its
/// `rootfs` they would read the instance's files. A privileged instance's
/// root is the host's: `0700`.
fn protect_dir(dir: &Path, ids: Option<idmap::IdRange>) -> Result<(), AgentError> {
    let (group, mode) = match ids {
        Some(ids) => (Some(nix::unistd::Gid::from_raw(ids.base)), 0o710),
        None => (None, 0o700),
    };
    nix::unistd::chown(dir, Some(nix::unistd::Uid::from_raw(0)), group)
        .map_err(|e| fail(format!("protecting {}: {e}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(|e| io_fail("protecting", dir, e))
}

async fn mount_idmapped_root(dir: &Path, ids: idmap::IdRange) -> Result<(), AgentError> {
    let dir = dir.to_path_buf();
    blocking(move || {
        let (lower, rw, rootfs) = (dir.join("lower"), dir.join("rw"), dir.join("rootfs"));
        let (ilower, irw) = (dir.join("lower.id"), dir.join("rw.id"));
        for d in [rw.join("upper"), rw.join("work"), rootfs.clone(), ilower.clone(), irw.clone()] {
            fs::create_dir_all(&d).map_err(|e| io_fail("creating", &d, e))?;
        }
        // What the instance writes is owned by 0 on disk, set-user-id bits
        // and all: no host account may reach it but through the overlay.
        fs::set_permissions(&rw, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_fail("protecting", &rw, e))?;
        unmount_all(&ilower)?;
        unmount_all(&irw)?;
        let ns = idmap::Userns::new(ids)?;
        ns.bind(&lower, &ilower)?;
        ns.bind(&rw, &irw)?;
        let mounted = idmap::mount_overlay(
            ids,
            &rootfs,
            &ilower,
            &irw.join("upper"),
            &irw.join("work"),
        );
        for p in [&ilower, &irw] {
            if let Err(e) = nix::mount::umount2(p.as_path(), nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %e, "detaching a layer's idmapped mount");
            }
        }
        mounted
    })
    .await
}

/// Unmounts everything mounted at `path`.
fn unmount_all(path: &Path) -> Result<(), AgentError> {
    let mut tries = 0;
    while is_mounted(path) {
        tries += 1;
        if tries > 8 {
            return Err(fail(format!("{} stays mounted", path.display())));
        }
        if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::empty()) {
            tracing::debug!(path = %path.display(), error = %e, "unmount failed; detaching");
            nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| fail(format!("unmounting {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// Copies what the image has at `bind.destination` into the new, empty
/// `bind.source`. The path is followed inside the root filesystem only
/// while each of its components is a directory there, never a symlink,
/// which would be resolved on the host (the instance is not running, so
/// nothing changes it meanwhile); links inside are copied as links. A copy
/// that fails (the storage is too small for it) leaves what it copied and
/// says so in the log: the instance starts all the same.
async fn seed_from_image(rootfs: &Path, bind: &bundle::Bind, ids: Option<idmap::IdRange>) {
    let mut from = rootfs.to_path_buf();
    for part in bind.destination.split('/').filter(|p| !p.is_empty()) {
        from.push(part);
        match fs::symlink_metadata(&from) {
            Ok(meta) if meta.is_dir() => {}
            _ => return,
        }
    }
    // An unprivileged instance's files are copied by its root (through
    // idmapped mounts, where the host's root has no id).
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let program = match ids {
        Some(ids) => {
            args.extend(idmap::setpriv_args(ids).into_iter().map(Into::into));
            args.push("cp".into());
            "setpriv"
        }
        None => "cp",
    };
    args.extend(["-a", "--no-dereference", "--"].map(Into::into));
    args.push(from.join(".").into_os_string());
    args.push(bind.source.clone().into_os_string());
    let copied = run(program, &args).await;
    if let Err(err) = copied {
        tracing::warn!(
            path = %bind.destination,
            error = %err,
            "could not copy the image's files into new persistent storage"
        );
    }
}

/// Root's `authorized_keys`: the spec's keys, one per line.
fn authorized_keys(spec: &InstanceSpec) -> String {
    let mut keys = String::new();
    for key in &spec.ssh_keys {
        let key = key.trim();
        if !key.is_empty() && !key.contains('\n') {
            keys.push_str(key);
            keys.push('\n');
        }
    }
    keys
}

/// The bind whose destination holds `path` most closely, with `path`
/// relative to its source (`""` for the destination itself).
fn covering_bind(binds: &[bundle::Bind], path: &str) -> Option<(PathBuf, String)> {
    binds
        .iter()
        .filter_map(|bind| {
            let destination = bind.destination.trim_end_matches('/');
            let rest = path.strip_prefix(destination)?;
            (rest.is_empty() || rest.starts_with('/')).then(|| {
                (
                    destination.len(),
                    bind.source.clone(),
                    rest.trim_start_matches('/').to_string(),
                )
            })
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, source, rest)| (source, rest))
}

/// Writes what the instance's root gets from its spec: hostname, hosts,
/// root's authorized keys, and the startup script before the first boot.
fn prepare_rootfs(
    root: &Path,
    spec: &InstanceSpec,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    owner: u32,
) -> Result<(), AgentError> {
    let name = &spec.name;
    safe_write(
        root,
        "etc",
        "hostname",
        format!("{name}\n").as_bytes(),
        0o644,
        owner,
    )?;
    let hosts = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{ip}\t{name}\n");
    safe_write(root, "etc", "hosts", hosts.as_bytes(), 0o644, owner)?;
    // The agent's DNS forwarder, on the gateway.
    let resolv = format!(
        "# Written by Tessera at each start: the host's DNS forwarder.\nnameserver {gateway}\n"
    );
    safe_write(root, "etc", "resolv.conf", resolv.as_bytes(), 0o644, owner)?;
    let home = safe_dir(root, "root").map_err(|e| io_fail("preparing", &root.join("root"), e))?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_fail("preparing", &home, e))?;
    let ssh = safe_dir(root, "root/.ssh").map_err(|e| io_fail("preparing", &home, e))?;
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))
        .map_err(|e| io_fail("preparing", &ssh, e))?;
    std::os::unix::fs::chown(&ssh, Some(owner), Some(owner))
        .map_err(|e| io_fail("preparing", &ssh, e))?;
    let keys = authorized_keys(spec);
    safe_write(
        root,
        "root/.ssh",
        "authorized_keys",
        keys.as_bytes(),
        0o600,
        owner,
    )?;
    if let Some(script) = &spec.user_data {
        let lib = safe_dir(root, "var/lib/tessera")
            .map_err(|e| io_fail("preparing", &root.join("var/lib/tessera"), e))?;
        let exists = |n: &str| fs::symlink_metadata(lib.join(n)).is_ok();
        if !exists("user-data") && !exists("user-data.done") {
            safe_write(root, "var/lib/tessera", "user-data", script, 0o700, owner)?;
        }
    }
    Ok(())
}
