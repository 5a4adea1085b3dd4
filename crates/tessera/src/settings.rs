//! `tessera server`'s settings, from flags, `TESSERA_*` environment
//! variables and a TOML config file, in that order of precedence, over the
//! defaults.
//!
//! The config file is `--config FILE` (or `TESSERA_CONFIG`), else
//! `tessera.toml` in the user's config directory when it exists. Its keys
//! are the flags' names with underscores: `data_dir`, `listen`,
//! `database_url`, `sim_hosts`, `sim_faults`, `sim_latency_ms`,
//! `sim_memory_per_cpu_mb`, `agent_timeout_ms`, `agent_silence_ms`, `log_format`, `taskserv_dir`,
//! `catalog`, `rate_limit_project`, `rate_limit_endpoint`, `rate_limit_window_secs`,
//! `script_quota`.

use crate::logging::LogFormat;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tessera_agent::drivers::sim::{SimConfig, SimFault};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

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
    /// Verda face: the rate-limit window in seconds [default: 60].
    #[arg(long, env = "TESSERA_RATE_LIMIT_WINDOW_SECS")]
    pub rate_limit_window_secs: Option<u64>,
    /// How many startup scripts a project may have [default: 100, at most
    /// 10000].
    #[arg(long, env = "TESSERA_SCRIPT_QUOTA")]
    pub script_quota: Option<u32>,
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
    rate_limit_window_secs: Option<u64>,
    script_quota: Option<u32>,
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
    pub rate_limits: tessera_app::RateLimits,
    pub script_quota: u32,
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
        let data_dir = match self.data_dir.or(file.data_dir) {
            Some(dir) => dir,
            None => dirs::data_dir()
                .context("no data directory is known for this user; pass --data-dir")?
                .join("tessera"),
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
        Ok(Settings {
            data_dir,
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
            admin_token: std::env::var("TESSERA_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            admin_password: std::env::var("TESSERA_ADMIN_PASSWORD")
                .ok()
                .filter(|t| !t.is_empty()),
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
                project: self
                    .rate_limit_project
                    .or(file.rate_limit_project)
                    .unwrap_or(500),
                endpoint: self
                    .rate_limit_endpoint
                    .or(file.rate_limit_endpoint)
                    .unwrap_or(60),
                window: Duration::from_secs(
                    self.rate_limit_window_secs
                        .or(file.rate_limit_window_secs)
                        .unwrap_or(60)
                        .max(1),
                ),
            },
        })
    }
}

fn read_file(path: &Path) -> Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
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
