//! `tessera bench`: benchmarks that print figures. Nothing here asserts on
//! time; the figures go in the README with the command that printed them.

mod agents;
mod api;
mod fleet;
mod gateway;
mod placement;
mod serverless;

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Placement decisions on a synthetic fleet: p50/p99 per decision.
    Placement(placement::PlacementArgs),
    /// Allocate + deallocate round trips through the HTTP API.
    Api(api::ApiArgs),
    /// A fleet of simulated hosts: creations per second to running, create
    /// and read latencies of every list endpoint, memory.
    Fleet(fleet::FleetArgs),
    /// Thousands of real agents (the `sim` driver) against a server: what
    /// `fleet --agents` starts in a process of its own.
    #[command(hide = true)]
    Agents(agents::AgentsArgs),
    /// Latency through the ingress gateway (HTTP and HTTPS) versus direct.
    Gateway(gateway::GatewayArgs),
    /// Serverless deployments on the container driver: the front door's
    /// added latency and cold starts (root).
    Serverless(serverless::ServerlessArgs),
}

impl BenchCommand {
    pub async fn run(self) -> Result<()> {
        match self {
            BenchCommand::Placement(args) => placement::run(args),
            BenchCommand::Api(args) => api::run(args).await,
            BenchCommand::Fleet(args) => fleet::run(args).await,
            BenchCommand::Agents(args) => agents::run(args).await,
            BenchCommand::Gateway(args) => gateway::run(args).await,
            BenchCommand::Serverless(args) => serverless::run(args).await,
        }
    }
}

/// The value at quantile `q` of sorted samples.
pub(crate) fn quantile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// An OpenSSH public key for benchmark tenants.
pub(crate) const BENCH_SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILmnyh5Zhh+xjmtoWSoe3i1RmWA29P+9P0gB1tgCQjT5 bench@tessera";

/// A server's settings for a benchmark on `database_url` (a fresh SQLite
/// file in `dir` when `None`): simulated hosts (unless `sim` is false), a
/// random bootstrap admin token (`admin_token`), and no quota or rate
/// limit, since a benchmark measures the server, not a tenant's limits.
pub(crate) fn bench_settings(
    dir: &std::path::Path,
    database_url: Option<String>,
    sim: bool,
) -> anyhow::Result<crate::settings::Settings> {
    use rand::RngCore;
    let mut secret = [0u8; 16];
    rand::rng().fill_bytes(&mut secret);
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let database_url =
        database_url.unwrap_or_else(|| tessera_store::Store::sqlite_url(&dir.join("bench.db")));
    Ok(crate::settings::Settings {
        listen: "127.0.0.1:0".parse()?,
        sim: sim.then(Default::default),
        agent_timeout: std::time::Duration::from_secs(30),
        admin_token: Some(format!("bench-{token}")),
        quota_defaults: tessera_store::Usage::UNLIMITED,
        rate_limits: unlimited_rates(),
        native_rate_limits: unlimited_rates(),
        credential_rate_limit: u32::MAX,
        ..crate::settings::Settings::with_defaults(dir.to_path_buf(), database_url)
    })
}

/// Rate limits no benchmark reaches.
fn unlimited_rates() -> tessera_app::RateLimits {
    tessera_app::RateLimits {
        project: u32::MAX,
        endpoint: u32::MAX,
        client: u32::MAX,
        window: std::time::Duration::from_secs(60),
    }
}
