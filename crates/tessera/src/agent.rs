//! `tessera agent` and `tessera image`: the host side.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tessera_agent::host::DriverKind;
use tessera_agent::runtime::AgentOptions;
use tessera_core::CpuSet;

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// The control plane's URL.
    #[arg(long, env = "TESSERA_SERVER")]
    pub server: String,
    /// A join token (`tessera join-token create`); needed on the first start
    /// only, the agent keeps its own credential afterwards. Give it in the
    /// environment or with --join-token-file: on the command line every
    /// account of the host can read it (/proc/PID/cmdline).
    #[arg(long, env = "TESSERA_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// A file holding the join token (read once, at start; it wins over
    /// TESSERA_JOIN_TOKEN).
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// The host's name in the cloud (default: the machine's host name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// The address the host's units and instances are reached at.
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: String,
    /// A location code such as FIN-01: the host's region and zone.
    #[arg(long)]
    pub location: Option<String>,
    /// Where the agent keeps its credential, images and instances.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// How instances run: unit (Kloigos units only), container, or sim.
    #[arg(long, default_value = "container", value_parser = parse_driver)]
    pub driver: DriverKind,
    /// CPUs kept for the host itself, in Linux list format (`0-1`).
    #[arg(long, default_value = "", value_parser = parse_cpus)]
    pub reserved_cpus: CpuSet,
    /// Prepended to unit users' names, to run several agents on one machine.
    #[arg(long, default_value = "")]
    pub user_prefix: String,
    /// The bridge containers attach to.
    #[arg(long, default_value = "tsr0")]
    pub bridge: String,
    /// The host's own instance network: the bridge takes its first address,
    /// every instance's gateway and DNS forwarder. Instances have addresses
    /// of their VPC subnets (the control plane's `--vpc-pool`); only those
    /// made without one get addresses from here. It must not overlap the
    /// VPC pool.
    #[arg(long, default_value = "10.88.0.0/24")]
    pub subnet: String,
    /// The first host port forwarded to containers' SSH servers.
    #[arg(long, default_value_t = 2200)]
    pub ssh_port_base: u16,
    /// A DNS resolver (`ADDRESS` or `ADDRESS:PORT`) the agent's forwarder
    /// asks for instances; repeat for more. Default: the host's own, from
    /// /etc/resolv.conf.
    #[arg(long = "dns", value_parser = parse_resolver)]
    pub dns: Vec<std::net::SocketAddr>,
    /// Run instances as the host's root when this host cannot give them
    /// user namespaces of their own (no idmapped mounts). Only for hosts
    /// whose instances are all trusted: by default such a host refuses to
    /// run any.
    #[arg(long)]
    pub allow_privileged_instances: bool,
    /// A destination (IPv4 CIDR) no instance may reach, egress or not;
    /// repeat for more. Link-local (169.254.0.0/16, where clouds serve
    /// metadata) is always denied; add the host's management networks.
    #[arg(long = "egress-deny")]
    pub egress_deny: Vec<String>,
    /// Pull REGISTRY's images from URL instead (repeatable), for images the
    /// catalog names by reference: `docker.io=http://10.0.0.5:5000`.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL")]
    pub registry_mirrors: Vec<tessera_agent::drivers::container::Mirror>,
    /// Speak plain HTTP to this registry (`registry.internal:5000`;
    /// repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// How many times the disk's free space instances' disks (sparse files:
    /// root disks, persistent storage, volumes) may promise together. At 1
    /// no disk is made that the free space could not hold once written in
    /// full; above it, several tenants filling their disks may fill the
    /// host's (no one disk is ever larger than what is free, unless
    /// `unlimited`: no check at all).
    #[arg(long, env = "TESSERA_DISK_OVERCOMMIT", default_value_t = 1.0, value_parser = parse_overcommit)]
    pub disk_overcommit: f64,
    /// The most an image pulled for an instance may weigh, downloaded and
    /// again unpacked, in GiB (a tenant names any image; 0: no limit).
    #[arg(long, default_value_t = 20)]
    pub max_image_size_gb: u64,
    /// Seconds between heartbeats; three missed make the host unreachable.
    #[arg(long, default_value_t = 5)]
    pub heartbeat_secs: u64,
}

/// A disk overcommit: a finite number above 0, or `unlimited` (no check).
pub(crate) fn parse_overcommit(s: &str) -> Result<f64, String> {
    match s.trim() {
        "unlimited" => Ok(f64::INFINITY),
        number => match number.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(format!(
                "{s:?} is not a number above 0 (1: no overcommit) or `unlimited`"
            )),
        },
    }
}

fn parse_resolver(s: &str) -> Result<std::net::SocketAddr, String> {
    let s = s.trim();
    s.parse::<std::net::SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("{s:?} is not an IP address or ADDRESS:PORT"))
}

fn parse_driver(s: &str) -> Result<DriverKind, String> {
    s.parse()
}

fn parse_cpus(s: &str) -> Result<CpuSet, String> {
    match s.trim() {
        "" => Ok(CpuSet::new()),
        list => CpuSet::parse_list(list),
    }
}

/// The state directory when none is given: the system's as root, the
/// user's otherwise.
/// A byte count for people.
fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{:.1} kB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// A digest's first twelve hex digits, as registries' tools show them.
fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}

pub fn default_state_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/lib/tessera/agent")
    } else {
        dirs::data_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("tessera")
            .join("agent")
    }
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl AgentArgs {
    /// Warns when the join token was given on the command line (as
    /// `tessera agent` parsed it), where every account of the host reads it.
    pub fn warn_of_a_visible_token(&self) {
        if let Some(token) = &self.join_token
            && std::env::var("TESSERA_JOIN_TOKEN").ok().as_deref() != Some(token.as_str())
        {
            tracing::warn!(
                "the join token is on the command line, where every account of this host \
                 can read it while the agent runs (/proc/PID/cmdline); give it in \
                 TESSERA_JOIN_TOKEN or with --join-token-file"
            );
        }
    }

    pub fn options(self) -> Result<AgentOptions> {
        let hostname = match self.hostname {
            Some(name) => name,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .context("cannot read the machine's host name; pass --hostname")?
                .trim()
                .to_string(),
        };
        if self.heartbeat_secs == 0 {
            anyhow::bail!("--heartbeat-secs must be at least 1");
        }
        let join_token = match (&self.join_token, &self.join_token_file) {
            (_, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read the join token in {}", file.display()))?
                    .trim()
                    .to_string(),
            ),
            (token, None) => token.clone(),
        };
        Ok(AgentOptions {
            server: self.server,
            join_token,
            hostname,
            ip: self.ip,
            location: self.location,
            state_dir: self.state_dir.unwrap_or_else(default_state_dir),
            driver: self.driver,
            reserved_cpus: self.reserved_cpus,
            user_prefix: self.user_prefix,
            bridge: self.bridge,
            subnet: self.subnet,
            ssh_port_base: self.ssh_port_base,
            dns_upstreams: self.dns,
            allow_privileged: self.allow_privileged_instances,
            egress_denied: self.egress_deny,
            registry: tessera_agent::drivers::container::PullOptions {
                credentials: None,
                mirrors: self.registry_mirrors,
                plain_http: self.insecure_registries,
                scope: None,
                max_bytes: (self.max_image_size_gb > 0)
                    .then(|| self.max_image_size_gb.saturating_mul(1 << 30)),
                public_only: None,
            },
            disk_overcommit: self.disk_overcommit,
            heartbeat_every: Duration::from_secs(self.heartbeat_secs),
            inventory: None,
            http: None,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import a root filesystem tarball (optionally gzipped) or an OCI image
    /// layout (directory or tar) as image NAME on this host.
    Import {
        name: String,
        file: PathBuf,
        /// The agent's state directory.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// List the images on this host.
    List {
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Pull an image from an OCI registry (`registry/name:tag` or
    /// `registry/name@sha256:...`; `busybox:1.36` is Docker Hub's) as image
    /// NAME on this host. Digests are checked; layers already on the host
    /// are not fetched again.
    Pull {
        reference: String,
        /// The name instances use [default: the reference's last path part
        /// and tag, as `busybox-1.36`].
        #[arg(long)]
        name: Option<String>,
        /// A user name for the registry (the password or token is read from
        /// standard input).
        #[arg(long)]
        username: Option<String>,
        /// Pull REGISTRY's images from URL instead (repeatable):
        /// `docker.io=http://10.0.0.5:5000`.
        #[arg(long = "mirror", value_name = "REGISTRY=URL")]
        mirrors: Vec<tessera_agent::drivers::container::Mirror>,
        /// Speak plain HTTP to this registry (`localhost:5000`; repeatable).
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure: Vec<String>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

/// The image name a reference gets when none is given: its last path part
/// and its tag (or the start of its digest), as `busybox-1.36`.
pub fn default_image_name(reference: &str) -> String {
    let (path, version) = match reference.rsplit_once('@') {
        Some((path, digest)) => (
            path,
            digest
                .split_once(':')
                .map_or(digest, |(_, hex)| &hex[..hex.len().min(12)]),
        ),
        None => match reference.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, tag),
            _ => (reference, "latest"),
        },
    };
    let base = path.rsplit('/').next().unwrap_or(path);
    let name: String = format!("{base}-{version}")
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                true => c,
                false => '-',
            },
        )
        .take(64)
        .collect();
    name.trim_start_matches('.').to_string()
}

pub async fn image(command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Import {
            name,
            file,
            state_dir,
        } => {
            let dir = state_dir.unwrap_or_else(default_state_dir).join("images");
            tessera_agent::drivers::container::import_image(&dir, &name, &file)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("imported {name} into {}", dir.display());
        }
        ImageCommand::Pull {
            reference,
            name,
            username,
            mirrors,
            insecure,
            state_dir,
        } => {
            use std::io::BufRead;
            use tessera_agent::drivers::container::{Progress, PullOptions, pull_image};
            let dir = state_dir.unwrap_or_else(default_state_dir).join("images");
            let name = name.unwrap_or_else(|| default_image_name(&reference));
            let credentials = match username {
                Some(user) => {
                    let mut password = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut password)
                        .context("reading the registry password from standard input")?;
                    Some((user, password.trim_end_matches(['\r', '\n']).to_string()))
                }
                None => None,
            };
            let options = PullOptions {
                credentials,
                mirrors,
                plain_http: insecure,
                // The operator's own pull: no limit, and its blobs are
                // shared (the image is one every tenant may run).
                scope: None,
                max_bytes: None,
                public_only: None,
            };
            let mut report = |p: Progress| match p {
                Progress::Manifest {
                    digest,
                    layers,
                    bytes,
                } => {
                    let noun = if layers == 1 { "layer" } else { "layers" };
                    eprintln!("{reference}: {digest}, {layers} {noun}, {}", size(bytes));
                }
                Progress::Cached { digest, bytes } => {
                    eprintln!("  {} {} already here", short(&digest), size(bytes));
                }
                Progress::Fetched { digest, bytes } => {
                    eprintln!("  {} {} fetched", short(&digest), size(bytes));
                }
                Progress::Unpacking => eprintln!("  unpacking"),
            };
            let pulled = pull_image(&dir, &name, &reference, &options, &mut report)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "pulled {reference} ({}) as {name} into {}: {} fetched, {} already here",
                pulled.digest,
                dir.display(),
                size(pulled.fetched_bytes),
                size(pulled.cached_bytes)
            );
        }
        ImageCommand::List { state_dir } => {
            let dir = state_dir.unwrap_or_else(default_state_dir).join("images");
            for name in tessera_agent::drivers::container::list_images(&dir)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                println!("{name}");
            }
        }
    }
    Ok(())
}
