//! The OCI runtime configuration of an instance.
//!
//! One decision to know: a shared-CPU instance is still confined to its
//! CPUs (cpuset) and gets, on top, a CFS quota of its share per
//! [`CPU_PERIOD_US`], so several of them can share the same CPUs.

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder, get_default_maskedpaths, get_default_mounts,
    get_default_readonly_paths,
};
use std::collections::HashSet;
use std::path::PathBuf;
use tessera_agent_api::AgentError;

/// What an instance's `config.json` says.
pub(super) struct BundleParams {
    pub hostname: String,
    pub args: Vec<String>,
    /// Where its process starts.
    pub cwd: String,
    pub env: Vec<String>,
    /// A Linux CPU list: `1`, `0-3`.
    pub cpus: String,
    /// The memory nodes (`0`).
    pub mems: String,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    /// The open files limit (at most the host's own hard limit).
    pub nofile: u64,
    pub cgroups_path: PathBuf,
    /// An unprivileged instance's host ids (its own user namespace); `None`
    /// runs it as the host's root, for an operator who chose that.
    pub ids: Option<super::idmap::IdRange>,
    /// Block devices it sees (its volumes).
    pub devices: Vec<Device>,
    /// A shared-CPU instance's share of its CPUs, in thousandths of a CPU.
    pub cpu_millis: Option<u32>,
    /// Host directories mounted into it (its persistent storage).
    pub binds: Vec<Bind>,
    /// Memory file systems: `(path inside, size in MB)`.
    pub tmpfs: Vec<(String, u32)>,
}

/// The CFS period of a shared-CPU instance's quota, in microseconds.
pub(super) const CPU_PERIOD_US: u64 = 100_000;

/// A shared-CPU instance's CFS quota per [`CPU_PERIOD_US`]: its share of a
/// period per thousandth of a CPU.
pub(super) fn cpu_quota_us(millis: u32) -> i64 {
    i64::from(millis) * (CPU_PERIOD_US as i64 / 1000)
}

/// A host directory bind-mounted into an instance.
pub(super) struct Bind {
    pub source: PathBuf,
    /// Absolute, inside the instance.
    pub destination: String,
    /// Made just now, empty: it starts with what the image has at
    /// `destination`, as a new Docker volume does.
    pub fresh: bool,
    /// Mounted read-only (a secret's files).
    pub readonly: bool,
}

/// A block device inside an instance.
pub(super) struct Device {
    /// `/dev/vdb`.
    pub path: String,
    pub major: i64,
    pub minor: i64,
    /// A node of it on the host, owned by the instance's root, bound in
    /// at `path` (a user namespace cannot make device nodes).
    pub node: PathBuf,
}

/// The capabilities of an instance's processes: runc's defaults plus what a
/// system container's daemons (sshd, ping) need.
fn capabilities() -> HashSet<Capability> {
    [
        Capability::AuditWrite,
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fowner,
        Capability::Fsetid,
        Capability::Kill,
        Capability::Mknod,
        Capability::NetBindService,
        Capability::NetRaw,
        Capability::Setfcap,
        Capability::Setgid,
        Capability::Setpcap,
        Capability::Setuid,
        Capability::SysChroot,
    ]
    .into_iter()
    .collect()
}

fn err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Failed(format!("building the OCI runtime configuration: {e}"))
}

pub(super) fn build(p: &BundleParams) -> Result<Spec, AgentError> {
    let caps = capabilities();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(err)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(err)?,
        )
        .args(p.args.clone())
        .env(p.env.clone())
        .cwd(p.cwd.clone())
        .no_new_privileges(false)
        .capabilities(capabilities)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(p.nofile)
                .soft(p.nofile)
                .build()
                .map_err(err)?,
        ])
        .build()
        .map_err(err)?;

    let mut mounts: Vec<Mount> = get_default_mounts();
    mounts.push(
        MountBuilder::default()
            .destination("/run")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".to_string(),
                "nodev".to_string(),
                "mode=755".to_string(),
                "size=65536k".to_string(),
            ])
            .build()
            .map_err(err)?,
    );

    for bind in &p.binds {
        mounts.push(
            MountBuilder::default()
                .destination(bind.destination.clone())
                .typ("bind")
                .source(bind.source.clone())
                .options(vec![
                    "rbind".to_string(),
                    match bind.readonly {
                        true => "ro".to_string(),
                        false => "rw".to_string(),
                    },
                    "nosuid".to_string(),
                    "nodev".to_string(),
                ])
                .build()
                .map_err(err)?,
        );
    }
    for (path, size_mb) in &p.tmpfs {
        mounts.push(
            MountBuilder::default()
                .destination(path.clone())
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec![
                    "nosuid".to_string(),
                    "nodev".to_string(),
                    "mode=1777".to_string(),
                    format!("size={}k", u64::from(*size_mb) * 1024),
                ])
                .build()
                .map_err(err)?,
        );
    }

    let ns = |typ: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(typ).build();
    let namespaces = vec![
        ns(LinuxNamespaceType::Pid).map_err(err)?,
        ns(LinuxNamespaceType::Ipc).map_err(err)?,
        ns(LinuxNamespaceType::Uts).map_err(err)?,
        ns(LinuxNamespaceType::Mount).map_err(err)?,
        // Its own, made with it (inside its user namespace); the driver
        // moves its veth in before it starts.
        ns(LinuxNamespaceType::Network).map_err(err)?,
    ];
    let mut namespaces = namespaces;
    if p.ids.is_some() {
        namespaces.push(ns(LinuxNamespaceType::User).map_err(err)?);
    }

    // Every device is denied but the defaults runc allows, and the volumes.
    let mut allowed = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .map_err(err)?,
    ];
    let mut devices = Vec::new();
    for d in &p.devices {
        allowed.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::B)
                .major(d.major)
                .minor(d.minor)
                .access("rwm")
                .build()
                .map_err(err)?,
        );
        if p.ids.is_some() {
            mounts.push(
                MountBuilder::default()
                    .destination(d.path.clone())
                    .typ("bind")
                    .source(d.node.clone())
                    .options(vec!["bind".to_string(), "nosuid".to_string()])
                    .build()
                    .map_err(err)?,
            );
            continue;
        }
        devices.push(
            LinuxDeviceBuilder::default()
                .path(d.path.clone())
                .typ(LinuxDeviceType::B)
                .major(d.major)
                .minor(d.minor)
                .file_mode(0o660u32)
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(err)?,
        );
    }
    let mut cpu = LinuxCpuBuilder::default()
        .cpus(p.cpus.clone())
        .mems(p.mems.clone());
    if let Some(millis) = p.cpu_millis {
        cpu = cpu.quota(cpu_quota_us(millis)).period(CPU_PERIOD_US);
    }
    let resources = LinuxResourcesBuilder::default()
        .devices(allowed)
        .cpu(cpu.build().map_err(err)?)
        .memory(
            LinuxMemoryBuilder::default()
                .limit(p.memory_bytes)
                // No swap beyond its memory: a hog meets its limit.
                .swap(p.memory_bytes)
                .build()
                .map_err(err)?,
        )
        .pids(
            LinuxPidsBuilder::default()
                .limit(p.pids_limit)
                .build()
                .map_err(err)?,
        )
        .build()
        .map_err(err)?;

    let mut linux = LinuxBuilder::default();
    if let Some(ids) = p.ids {
        let map = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(ids.base)
            .size(super::idmap::RANGE)
            .build()
            .map_err(err)?;
        linux = linux.uid_mappings(vec![map]).gid_mappings(vec![map]);
    }
    let linux = linux
        .seccomp(super::seccomp::default_profile()?)
        .devices(devices)
        .namespaces(namespaces)
        .resources(resources)
        .cgroups_path(p.cgroups_path.clone())
        .masked_paths(masked_paths())
        .readonly_paths(get_default_readonly_paths())
        .build()
        .map_err(err)?;

    SpecBuilder::default()
        .version("1.0.2-dev")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .map_err(err)?,
        )
        .hostname(p.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(err)
}

/// What an instance cannot see of the host's `/proc` and `/sys`: runc's
/// usual list, with two of Docker's: `powercap` (the CPUs' energy
/// counters, a side channel on a neighbour's computation) and the host's
/// virtual block devices, whose loop devices name the files behind
/// them: every instance's and volume's disk on the host, other tenants'
/// ids among them.
fn masked_paths() -> Vec<String> {
    let mut paths = get_default_maskedpaths();
    paths.extend(
        [
            "/sys/devices/virtual/powercap",
            "/sys/devices/virtual/block",
        ]
        .map(String::from),
    );
    paths
}
