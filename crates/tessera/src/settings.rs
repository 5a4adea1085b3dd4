//! `tessera server`'s settings, from flags, `TESSERA_*` environment
//! variables and a TOML config file, in that order of precedence, over the
//! defaults.
//!
//! The config file is `--config FILE` (or `TESSERA_CONFIG`), else
//! `tessera.toml` in the user's config directory when it exists. Its keys
//! are the flags' names with underscores: `data_dir`, `listen`,
//! `database_url`, `sim_hosts`, `sim_faults`, `sim_latency_ms`,
//! `sim_memory_per_cpu_mb`, `agent_timeout_ms`, `agent_silence_ms`, `log_format`, `taskserv_dir`,
//! `catalog`, `rate_limit_project`, `rate_limit_endpoint`, `rate_limit_client`,
//! `rate_limit_window_secs`, `native_rate_limit_project`,
//! `native_rate_limit_endpoint`, `native_rate_limit_client`,
//! `credential_rate_limit`, `login_attempts_per_minute`, `login_concurrency`,
//! `request_timeout_secs`, `header_timeout_secs`, `write_timeout_secs`,
//! `max_connections`, `max_connections_per_address`, `quota_instances`,
//! `quota_vcpus`, `quota_memory_mb`, `quota_volumes`, `quota_volume_gb`,
//! `quota_containers`, `quota_ssh_keys`, `script_quota`, `replica_id`,
//! `compute_domain`, `compute_max_memory_mb`, `compute_max_storage_gb`,
//! `gateway_listen`, `gateway_port_offset`, `gateway_certificate`,
//! `gateway_private_key`, `advertise_url`, `vpc_pool`, `secrets_key`,
//! `inference_url`.

use crate::logging::LogFormat;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_agent::drivers::sim::{SimConfig, SimFault};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Where the gateway serves external port P unless told: P + 20000, clear
/// of privileged ports and of the API's own 8080.
pub const DEFAULT_GATEWAY_OFFSET: u16 = 20_000;

#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServerArgs {
    /// A TOML config file; flags and environment variables override it.
    #[arg(long, env = "TESSERA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where Tessera keeps its state [default: the user's data directory/tessera].
    #[arg(long, env = "TESSERA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to serve the API on [default: 127.0.0.1:8080].
    #[arg(long, env = "TESSERA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// sqlite://PATH or postgres://... [default: SQLite file tessera.db in the data dir].
    #[arg(long, env = "TESSERA_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Realise every host that has no agent with the simulated driver.
    #[arg(long, env = "TESSERA_SIM_HOSTS", num_args = 0..=1, default_missing_value = "true")]
    pub sim_hosts: Option<bool>,
    /// Simulated failures, STEP:HOSTPREFIX[:hang] (steps: prepare, activate,
    /// release, retire, create, start, stop, delete, script).
    #[arg(long, env = "TESSERA_SIM_FAULTS", value_delimiter = ',')]
    pub sim_faults: Vec<SimFault>,
    /// Latency added to every simulated host call, in milliseconds.
    #[arg(long, env = "TESSERA_SIM_LATENCY_MS")]
    pub sim_latency_ms: Option<u64>,
    /// Memory of simulated hosts per CPU, in MiB [default: 8192].
    #[arg(long, env = "TESSERA_SIM_MEMORY_PER_CPU_MB")]
    pub sim_memory_per_cpu_mb: Option<u64>,
    /// How long a host may take over one step before it is given up on, in
    /// milliseconds [default: 30000].
    #[arg(long, env = "TESSERA_AGENT_TIMEOUT_MS")]
    pub agent_timeout_ms: Option<u64>,
    /// How long an agent may stay silent before its host is unreachable and
    /// its instances unknown, in milliseconds [default: 15000].
    #[arg(long, env = "TESSERA_AGENT_SILENCE_MS")]
    pub agent_silence_ms: Option<u64>,
    /// Log format [default: text].
    #[arg(long, env = "TESSERA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// A directory of taskserv definitions [default: the built-in catalog].
    #[arg(long, env = "TESSERA_TASKSERV_DIR")]
    pub taskserv_dir: Option<PathBuf>,
    /// A catalog file: locations, instance types, images, volume types and
    /// prices [default: the built-in one, crates/core/catalog.toml].
    #[arg(long, env = "TESSERA_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Verda face: authenticated requests a project may make per window
    /// [default: 500].
    #[arg(long, env = "TESSERA_RATE_LIMIT_PROJECT")]
    pub rate_limit_project: Option<u32>,
    /// Verda face: requests a project may make per window to one method
    /// and path [default: 60].
    #[arg(long, env = "TESSERA_RATE_LIMIT_ENDPOINT")]
    pub rate_limit_endpoint: Option<u32>,
    /// Verda face: requests one OAuth credential may make per window
    /// [default: 500].
    #[arg(long, env = "TESSERA_RATE_LIMIT_CLIENT")]
    pub rate_limit_client: Option<u32>,
    /// The rate-limit window of every face, in seconds [default: 60].
    #[arg(long, env = "TESSERA_RATE_LIMIT_WINDOW_SECS")]
    pub rate_limit_window_secs: Option<u64>,
    /// Native API: authenticated requests a project may make per window
    /// [default: 3000].
    #[arg(long, env = "TESSERA_NATIVE_RATE_LIMIT_PROJECT")]
    pub native_rate_limit_project: Option<u32>,
    /// Native API: requests a project may make per window to one method and
    /// route [default: 600].
    #[arg(long, env = "TESSERA_NATIVE_RATE_LIMIT_ENDPOINT")]
    pub native_rate_limit_endpoint: Option<u32>,
    /// Native API: requests one credential (API token, or a login's user)
    /// may make per window [default: 1500].
    #[arg(long, env = "TESSERA_NATIVE_RATE_LIMIT_CLIENT")]
    pub native_rate_limit_client: Option<u32>,
    /// Requests per window to login, refresh and the OAuth token endpoint,
    /// per client address, and per client id at the token endpoint
    /// [default: 60].
    #[arg(long, env = "TESSERA_CREDENTIAL_RATE_LIMIT")]
    pub credential_rate_limit: Option<u32>,
    /// Password logins a client address may try per minute [default: 30].
    #[arg(long, env = "TESSERA_LOGIN_ATTEMPTS_PER_MINUTE")]
    pub login_attempts_per_minute: Option<u32>,
    /// Password checks (Argon2, about 19 MiB each) run at once [default:
    /// the CPU count, 2 to 8].
    #[arg(long, env = "TESSERA_LOGIN_CONCURRENCY")]
    pub login_concurrency: Option<usize>,
    /// Seconds a request may take to be answered (long-polls and
    /// WebSockets excepted) [default: 60].
    #[arg(long, env = "TESSERA_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Seconds a client has to send a request's headers, and that an idle
    /// kept-alive connection stays open [default: 15].
    #[arg(long, env = "TESSERA_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a write to a client may make no progress before the
    /// connection is dropped [default: 60].
    #[arg(long, env = "TESSERA_WRITE_TIMEOUT_SECS")]
    pub write_timeout_secs: Option<u64>,
    /// Client connections open at once, agents' included (one each)
    /// [default: 20000, within the file-descriptor limit].
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Client connections open at once from one address [default: 1000].
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// Default quota: instances per project (-1: unlimited) [default: 100].
    #[arg(long, env = "TESSERA_QUOTA_INSTANCES", allow_negative_numbers = true)]
    pub quota_instances: Option<i64>,
    /// Default quota: vCPUs per project [default: 256].
    #[arg(long, env = "TESSERA_QUOTA_VCPUS", allow_negative_numbers = true)]
    pub quota_vcpus: Option<i64>,
    /// Default quota: instance memory per project, MiB [default: 1048576].
    #[arg(long, env = "TESSERA_QUOTA_MEMORY_MB", allow_negative_numbers = true)]
    pub quota_memory_mb: Option<i64>,
    /// Default quota: volumes per project [default: 100].
    #[arg(long, env = "TESSERA_QUOTA_VOLUMES", allow_negative_numbers = true)]
    pub quota_volumes: Option<i64>,
    /// Default quota: volume GB per project [default: 10240].
    #[arg(long, env = "TESSERA_QUOTA_VOLUME_GB", allow_negative_numbers = true)]
    pub quota_volume_gb: Option<i64>,
    /// Default quota: containers of the containers API per project
    /// [default: 3].
    #[arg(long, env = "TESSERA_QUOTA_CONTAINERS", allow_negative_numbers = true)]
    pub quota_containers: Option<i64>,
    /// Default quota: SSH keys per project [default: 10].
    #[arg(long, env = "TESSERA_QUOTA_SSH_KEYS", allow_negative_numbers = true)]
    pub quota_ssh_keys: Option<i64>,
    /// How many startup scripts a project may have [default: 100, at most
    /// 10000].
    #[arg(long, env = "TESSERA_SCRIPT_QUOTA")]
    pub script_quota: Option<u32>,
    /// This control-plane replica's name, unique among the replicas of one
    /// store [default: made on the first start and kept in DATA_DIR/replica-id].
    #[arg(long, env = "TESSERA_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// The containers API: containers answer at `<id>.<domain>` (the
    /// gateway routes them by it) [default: compute.localhost].
    #[arg(long, env = "TESSERA_COMPUTE_DOMAIN")]
    pub compute_domain: Option<String>,
    /// The containers API: the most memory a container may have, MB
    /// [default: 8192; at least 128].
    #[arg(long, env = "TESSERA_COMPUTE_MAX_MEMORY_MB")]
    pub compute_max_memory_mb: Option<u64>,
    /// The containers API: the most storage a container may have, GB
    /// [default: 100].
    #[arg(long, env = "TESSERA_COMPUTE_MAX_STORAGE_GB")]
    pub compute_max_storage_gb: Option<u64>,
    /// The ingress gateway: the address its ports listen on, or `off` for
    /// a replica that runs none [default: 0.0.0.0].
    #[arg(long, env = "TESSERA_GATEWAY_LISTEN")]
    pub gateway_listen: Option<GatewayListen>,
    /// The ingress gateway serves external port P on P + this offset: 0 in
    /// production (the API then listens outside 80, 443 and 8000-8999)
    /// [default: 20000, port 80 on 20080].
    #[arg(long, env = "TESSERA_GATEWAY_PORT_OFFSET")]
    pub gateway_port_offset: Option<u16>,
    /// The ingress gateway's certificate chain, PEM (with
    /// --gateway-private-key) [default: a self-signed one for *.DOMAIN,
    /// made at the first start in DATA_DIR/gateway].
    #[arg(long, env = "TESSERA_GATEWAY_CERTIFICATE")]
    pub gateway_certificate: Option<PathBuf>,
    /// The private key of --gateway-certificate, PEM.
    #[arg(long, env = "TESSERA_GATEWAY_PRIVATE_KEY")]
    pub gateway_private_key: Option<PathBuf>,
    /// This replica's own base URL as agents reach it directly (not through
    /// a load balancer), so terminals asked here of hosts whose agents are
    /// connected to another replica are dialled back here [default:
    /// http://LISTEN, with 127.0.0.1 for an unspecified address].
    #[arg(long, env = "TESSERA_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The addresses instances have: VPCs' blocks lie within it (a /20
    /// each when a project asks for none, the default VPC's too). Hosts
    /// route it, so it must not overlap their own networks [default:
    /// 10.128.0.0/9]. No two VPCs of the install overlap.
    #[arg(long, env = "TESSERA_VPC_POOL")]
    pub vpc_pool: Option<String>,
    /// The key that seals secrets and registry credentials at rest: 64 hex
    /// digits in a file, made there on first start when missing. Every
    /// replica of one install needs the same key [default:
    /// DATA_DIR/secrets.key].
    #[arg(long, env = "TESSERA_SECRETS_KEY")]
    pub secrets_key: Option<PathBuf>,
    /// Where callers reach serverless deployments' front door: a
    /// deployment's `endpoint_base_url` is this and its name [default: the
    /// advertised URL's /inference].
    #[arg(long, env = "TESSERA_INFERENCE_URL")]
    pub inference_url: Option<String>,
}

/// Where the ingress gateway listens: an address, or nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum GatewayListen {
    Off,
    On(IpAddr),
}

impl std::str::FromStr for GatewayListen {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(GatewayListen::Off);
        }
        text.parse()
            .map(GatewayListen::On)
            .map_err(|_| format!("{text:?} is neither an IP address nor `off`"))
    }
}

impl TryFrom<String> for GatewayListen {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Self, String> {
        text.parse()
    }
}

/// The ingress gateway a replica runs.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub listen: IpAddr,
    pub ports: tessera_gateway::PortMapping,
    pub certificate: tessera_gateway::CertificateSource,
}

/// The config file's keys.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    sim_hosts: Option<bool>,
    #[serde(default)]
    sim_faults: Vec<String>,
    sim_latency_ms: Option<u64>,
    sim_memory_per_cpu_mb: Option<u64>,
    agent_timeout_ms: Option<u64>,
    agent_silence_ms: Option<u64>,
    log_format: Option<LogFormat>,
    taskserv_dir: Option<PathBuf>,
    catalog: Option<PathBuf>,
    rate_limit_project: Option<u32>,
    rate_limit_endpoint: Option<u32>,
    rate_limit_client: Option<u32>,
    rate_limit_window_secs: Option<u64>,
    native_rate_limit_project: Option<u32>,
    native_rate_limit_endpoint: Option<u32>,
    native_rate_limit_client: Option<u32>,
    credential_rate_limit: Option<u32>,
    login_attempts_per_minute: Option<u32>,
    login_concurrency: Option<usize>,
    request_timeout_secs: Option<u64>,
    header_timeout_secs: Option<u64>,
    write_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    quota_instances: Option<i64>,
    quota_vcpus: Option<i64>,
    quota_memory_mb: Option<i64>,
    quota_volumes: Option<i64>,
    quota_volume_gb: Option<i64>,
    quota_containers: Option<i64>,
    quota_ssh_keys: Option<i64>,
    script_quota: Option<u32>,
    replica_id: Option<String>,
    compute_domain: Option<String>,
    compute_max_memory_mb: Option<u64>,
    compute_max_storage_gb: Option<u64>,
    gateway_listen: Option<GatewayListen>,
    gateway_port_offset: Option<u16>,
    gateway_certificate: Option<PathBuf>,
    gateway_private_key: Option<PathBuf>,
    advertise_url: Option<String>,
    vpc_pool: Option<String>,
    secrets_key: Option<PathBuf>,
    inference_url: Option<String>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub database_url: String,
    /// `Some` with `--sim-hosts`.
    pub sim: Option<SimConfig>,
    pub agent_timeout: Duration,
    pub agent_silence: Duration,
    pub log_format: LogFormat,
    /// `TESSERA_ADMIN_TOKEN`: the bootstrap admin's token.
    pub admin_token: Option<String>,
    /// `TESSERA_ADMIN_PASSWORD`: sets the `admin` user's password at start.
    pub admin_password: Option<String>,
    /// `None`: the built-in catalog.
    pub taskserv_dir: Option<PathBuf>,
    /// `None`: the built-in catalog.
    pub catalog: Option<PathBuf>,
    /// The Verda face's request limits.
    pub rate_limits: tessera_app::RateLimits,
    /// The native API's request limits.
    pub native_rate_limits: tessera_app::RateLimits,
    pub credential_rate_limit: u32,
    pub login_limits: tessera_app::throttle::LoginLimits,
    pub request_timeout: Duration,
    pub http: tessera_faces::serve::HttpLimits,
    /// Each project's quota unless it has its own.
    pub quota_defaults: tessera_store::Usage,
    pub script_quota: u32,
    /// `None`: the one kept in the data directory.
    pub replica_id: Option<String>,
    /// The containers API's settings.
    pub compute: tessera_app::containers::ComputeConfig,
    /// The ingress gateway this replica runs, if any.
    pub gateway: Option<GatewaySettings>,
    /// `None`: made from the address the API is served on.
    pub advertise_url: Option<String>,
    /// Where VPCs get their blocks.
    pub vpc_pool: ipnet::Ipv4Net,
    /// The file holding the key that seals secrets.
    pub secrets_key: PathBuf,
    /// `None`: made from the advertised URL.
    pub inference_url: Option<String>,
}

impl Settings {
    /// Every default, for a server on `database_url` keeping its files in
    /// `data_dir` (tests and benchmarks change what they need).
    pub fn with_defaults(data_dir: PathBuf, database_url: String) -> Settings {
        let resolved = ServerArgs {
            data_dir: Some(data_dir),
            database_url: Some(database_url),
            ..ServerArgs::default()
        }
        .resolve_with(FileSettings::default());
        // The defaults are valid by construction.
        let mut settings =
            resolved.unwrap_or_else(|e| unreachable!("default settings are invalid: {e:#}"));
        // Servers side by side cannot share ports 80 and 443: a test or a
        // benchmark that wants a gateway opens one on ephemeral ports.
        settings.gateway = None;
        settings
    }
}

impl ServerArgs {
    pub fn resolve(self) -> Result<Settings> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => match dirs::config_dir().map(|d| d.join("tessera").join("tessera.toml")) {
                Some(path) if path.exists() => read_file(&path)?,
                _ => FileSettings::default(),
            },
        };
        let mut settings = self.resolve_with(file)?;
        settings.admin_token = std::env::var("TESSERA_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        settings.admin_password = std::env::var("TESSERA_ADMIN_PASSWORD")
            .ok()
            .filter(|t| !t.is_empty());
        Ok(settings)
    }

    /// The settings from the flags over `file`, without the environment's
    /// secrets.
    fn resolve_with(self, file: FileSettings) -> Result<Settings> {
        let data_dir = match self.data_dir.or(file.data_dir) {
            Some(dir) => dir,
            None => default_data_dir()?,
        };
        let listen = match self.listen.or(file.listen) {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse()?,
        };
        let database_url = self
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| tessera_store::Store::sqlite_url(&data_dir.join("tessera.db")));
        let mut faults = self.sim_faults;
        if faults.is_empty() {
            faults = file
                .sim_faults
                .iter()
                .map(|f| f.parse::<SimFault>())
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)
                .context("in the config file's sim_faults")?;
        }
        let sim = self
            .sim_hosts
            .or(file.sim_hosts)
            .unwrap_or(false)
            .then(|| SimConfig {
                memory_mb_per_cpu: self.sim_memory_per_cpu_mb.or(file.sim_memory_per_cpu_mb),
                latency: Duration::from_millis(
                    self.sim_latency_ms.or(file.sim_latency_ms).unwrap_or(0),
                ),
                faults,
                root_dir: None,
            });
        let agent_timeout_ms = self
            .agent_timeout_ms
            .or(file.agent_timeout_ms)
            .unwrap_or(30_000);
        if agent_timeout_ms == 0 {
            bail!("the agent timeout must be at least 1 ms");
        }
        let window = seconds(self.rate_limit_window_secs, file.rate_limit_window_secs, 60);
        let login_defaults = tessera_app::throttle::LoginLimits::default();
        let http_defaults = tessera_faces::serve::HttpLimits::default();
        let defaults = tessera_app::DEFAULT_QUOTA;
        let quota_defaults = tessera_store::Usage {
            instances: self
                .quota_instances
                .or(file.quota_instances)
                .unwrap_or(defaults.instances),
            vcpus: self
                .quota_vcpus
                .or(file.quota_vcpus)
                .unwrap_or(defaults.vcpus),
            memory_mb: self
                .quota_memory_mb
                .or(file.quota_memory_mb)
                .unwrap_or(defaults.memory_mb),
            volumes: self
                .quota_volumes
                .or(file.quota_volumes)
                .unwrap_or(defaults.volumes),
            volume_gb: self
                .quota_volume_gb
                .or(file.quota_volume_gb)
                .unwrap_or(defaults.volume_gb),
            containers: self
                .quota_containers
                .or(file.quota_containers)
                .unwrap_or(defaults.containers),
            ssh_keys: self
                .quota_ssh_keys
                .or(file.quota_ssh_keys)
                .unwrap_or(defaults.ssh_keys),
        };
        tessera_app::quotas::validate_limits(&quota_defaults).map_err(anyhow::Error::msg)?;
        let compute_defaults = tessera_app::containers::ComputeConfig::default();
        let domain = self
            .compute_domain
            .or(file.compute_domain)
            .unwrap_or(compute_defaults.domain)
            .to_ascii_lowercase();
        let domain_ok = !domain.is_empty()
            && domain.len() <= 200
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !domain_ok {
            bail!("compute_domain {domain:?} is not a DNS name");
        }
        let max_memory = self
            .compute_max_memory_mb
            .or(file.compute_max_memory_mb)
            .unwrap_or(compute_defaults.memory_mb.1);
        let max_storage = self
            .compute_max_storage_gb
            .or(file.compute_max_storage_gb)
            .unwrap_or(compute_defaults.storage_gb.1);
        if max_memory < compute_defaults.memory_mb.0 || max_storage < 1 {
            bail!(
                "compute_max_memory_mb must be at least {} and compute_max_storage_gb at least 1",
                compute_defaults.memory_mb.0
            );
        }
        let compute = tessera_app::containers::ComputeConfig {
            domain,
            memory_mb: (compute_defaults.memory_mb.0, max_memory),
            storage_gb: (compute_defaults.storage_gb.0, max_storage),
        };
        let gateway = match self.gateway_listen.or(file.gateway_listen) {
            Some(GatewayListen::Off) => None,
            gateway_listen => {
                let offset = self
                    .gateway_port_offset
                    .or(file.gateway_port_offset)
                    .unwrap_or(DEFAULT_GATEWAY_OFFSET);
                if offset > u16::MAX - 8999 {
                    bail!(
                        "gateway_port_offset {offset} is too large: port 8999 must fit below 65536"
                    );
                }
                let api = listen.port();
                let clash = api
                    .checked_sub(offset)
                    .is_some_and(tessera_gateway::is_ingress_port);
                if clash {
                    bail!(
                        "the API listens on port {api}, which the ingress gateway needs for \
                         external port {} (gateway_port_offset {offset}): move the API \
                         (--listen) or the gateway (--gateway-port-offset, or \
                         --gateway-listen off)",
                        api - offset
                    );
                }
                let certificate = match (
                    self.gateway_certificate.or(file.gateway_certificate),
                    self.gateway_private_key.or(file.gateway_private_key),
                ) {
                    (Some(certificate), Some(private_key)) => {
                        tessera_gateway::CertificateSource::Files {
                            certificate,
                            private_key,
                        }
                    }
                    (None, None) => tessera_gateway::CertificateSource::SelfSigned {
                        dir: data_dir.join("gateway"),
                    },
                    _ => bail!(
                        "gateway_certificate and gateway_private_key go together: give both or neither"
                    ),
                };
                Some(GatewaySettings {
                    listen: match gateway_listen {
                        Some(GatewayListen::On(ip)) => ip,
                        _ => IpAddr::from([0, 0, 0, 0]),
                    },
                    ports: tessera_gateway::PortMapping::Offset(offset),
                    certificate,
                })
            }
        };
        Ok(Settings {
            listen,
            database_url,
            sim,
            agent_timeout: Duration::from_millis(agent_timeout_ms),
            agent_silence: Duration::from_millis(
                self.agent_silence_ms
                    .or(file.agent_silence_ms)
                    .unwrap_or(15_000)
                    .max(1),
            ),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            admin_token: None,
            admin_password: None,
            taskserv_dir: self.taskserv_dir.or(file.taskserv_dir),
            catalog: self.catalog.or(file.catalog),
            script_quota: {
                let quota = self.script_quota.or(file.script_quota).unwrap_or(100);
                if !(1..=tessera_app::scripts::MAX_SCRIPT_QUOTA).contains(&quota) {
                    bail!(
                        "the script quota must be 1 to {}",
                        tessera_app::scripts::MAX_SCRIPT_QUOTA
                    );
                }
                quota
            },
            rate_limits: tessera_app::RateLimits {
                project: pick(self.rate_limit_project, file.rate_limit_project, 500),
                endpoint: pick(self.rate_limit_endpoint, file.rate_limit_endpoint, 60),
                client: pick(self.rate_limit_client, file.rate_limit_client, 500),
                window,
            },
            native_rate_limits: tessera_app::RateLimits {
                project: pick(
                    self.native_rate_limit_project,
                    file.native_rate_limit_project,
                    3_000,
                ),
                endpoint: pick(
                    self.native_rate_limit_endpoint,
                    file.native_rate_limit_endpoint,
                    600,
                ),
                client: pick(
                    self.native_rate_limit_client,
                    file.native_rate_limit_client,
                    1_500,
                ),
                window,
            },
            credential_rate_limit: pick(self.credential_rate_limit, file.credential_rate_limit, 60),
            login_limits: tessera_app::throttle::LoginLimits {
                per_address_per_minute: pick(
                    self.login_attempts_per_minute,
                    file.login_attempts_per_minute,
                    login_defaults.per_address_per_minute,
                ),
                concurrent_checks: pick(
                    self.login_concurrency,
                    file.login_concurrency,
                    login_defaults.concurrent_checks,
                ),
                ..login_defaults
            },
            request_timeout: seconds(self.request_timeout_secs, file.request_timeout_secs, 60),
            http: tessera_faces::serve::HttpLimits {
                max_connections: pick(
                    self.max_connections,
                    file.max_connections,
                    http_defaults.max_connections,
                ),
                max_per_address: pick(
                    self.max_connections_per_address,
                    file.max_connections_per_address,
                    http_defaults.max_per_address,
                ),
                header_timeout: seconds(self.header_timeout_secs, file.header_timeout_secs, 15),
                write_timeout: seconds(self.write_timeout_secs, file.write_timeout_secs, 60),
            },
            quota_defaults,
            replica_id: self.replica_id.or(file.replica_id),
            compute,
            gateway,
            advertise_url: match self.advertise_url.or(file.advertise_url) {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    Some(url.trim_end_matches('/').to_string())
                }
                Some(url) => bail!("advertise_url {url:?} is not an http:// or https:// URL"),
                None => None,
            },
            vpc_pool: {
                let text = self
                    .vpc_pool
                    .or(file.vpc_pool)
                    .unwrap_or_else(|| tessera_app::DEFAULT_VPC_POOL.to_string());
                let pool = tessera_core::network::parse_block(&text)
                    .map_err(|e| anyhow::anyhow!("vpc_pool: {e}"))?;
                if pool.prefix_len() > tessera_core::network::NARROWEST_PREFIX
                    || tessera_core::network::is_reserved(&pool)
                {
                    bail!(
                        "vpc_pool {text:?} must be a block of /28 or wider outside loopback, link-local and multicast (and outside the network the hosts use)"
                    );
                }
                pool
            },
            inference_url: match self.inference_url.or(file.inference_url) {
                Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                    Some(url.trim_end_matches('/').to_string())
                }
                Some(url) => bail!("inference_url {url:?} is not an http:// or https:// URL"),
                None => None,
            },
            secrets_key: self
                .secrets_key
                .or(file.secrets_key)
                .unwrap_or_else(|| data_dir.join("secrets.key")),
            data_dir,
        })
    }
}

/// A flag, else the file's key, else the default; at least 1.
fn pick<T: PartialOrd + From<u8>>(flag: Option<T>, file: Option<T>, default: T) -> T {
    let value = flag.or(file).unwrap_or(default);
    if value < T::from(1) {
        T::from(1)
    } else {
        value
    }
}

/// [`pick`] for a number of seconds.
fn seconds(flag: Option<u64>, file: Option<u64>, default: u64) -> Duration {
    Duration::from_secs(pick(flag, file, default))
}

fn read_file(path: &Path) -> Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
}

/// Where Tessera keeps its state when not told: a system service's place as
/// root, as `tessera agent` does (its containers' users must be able to
/// reach their root file systems, and `/root` is closed to them); the
/// user's data directory otherwise.
fn default_data_dir() -> Result<PathBuf> {
    if crate::agent::is_root() {
        return Ok(PathBuf::from("/var/lib/tessera"));
    }
    Ok(dirs::data_dir()
        .context("no data directory is known for this user; pass --data-dir")?
        .join("tessera"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9999\"\ndata_dir = \"/tmp/from-file\"\nsim_hosts = true\nsim_faults = [\"activate:bad-\"]\n",
        )
        .expect("write");
        let args = ServerArgs {
            config: Some(file.clone()),
            listen: Some("127.0.0.1:7777".parse().expect("addr")),
            ..ServerArgs::default()
        };
        let settings = args.resolve().expect("settings");
        assert_eq!(settings.listen.port(), 7777);
        assert_eq!(settings.data_dir, PathBuf::from("/tmp/from-file"));
        assert!(
            settings
                .database_url
                .starts_with("sqlite:///tmp/from-file/tessera.db")
        );
        let sim = settings.sim.expect("sim hosts from the file");
        assert_eq!(sim.faults.len(), 1);
    }

    #[test]
    fn the_gateway_and_the_api_never_want_one_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = |offset: Option<u16>, listen: GatewayListen| ServerArgs {
            data_dir: Some(dir.path().to_path_buf()),
            listen: Some("127.0.0.1:8080".parse().expect("addr")),
            gateway_port_offset: offset,
            gateway_listen: Some(listen),
            ..ServerArgs::default()
        };
        let on = GatewayListen::On([0, 0, 0, 0].into());
        let err = format!("{:#}", args(Some(0), on).resolve().expect_err("clash"));
        assert!(err.contains("8080"), "{err}");
        let settings = args(None, on)
            .resolve()
            .expect("the default offset clears 8080");
        let gateway = settings.gateway.expect("a gateway");
        assert_eq!(gateway.ports, tessera_gateway::PortMapping::Offset(20_000));
        assert!(matches!(
            gateway.certificate,
            tessera_gateway::CertificateSource::SelfSigned { .. }
        ));
        let off = args(Some(0), GatewayListen::Off)
            .resolve()
            .expect("no gateway");
        assert!(off.gateway.is_none());
        assert_eq!("off".parse::<GatewayListen>(), Ok(GatewayListen::Off));
        assert!("nowhere".parse::<GatewayListen>().is_err());
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:1\"\n").expect("write");
        let args = ServerArgs {
            config: Some(file),
            ..ServerArgs::default()
        };
        let err = format!("{:#}", args.resolve().expect_err("typo"));
        assert!(err.contains("lisen"), "{err}");
    }
}
