//! `tessera bench agents`: thousands of real agents (the `sim` driver) in
//! one process, each joining, heartbeating, long-polling its desired state,
//! reporting and keeping its control channel open as `tessera agent` does.
//! `tessera bench fleet --agents` starts it against its server, so that a
//! fleet's protocol traffic is measured rather than assumed.
//!
//! Each agent has its own HTTP client and its one HTTP/2 connection, as a
//! host's agent does (its calls, long-poll and control channel share it):
//! a socket per host on each side, so one process's open-file limit
//! bounds how many can run here.

use anyhow::Result;
use std::time::Duration;
use tessera_agent::host::DriverKind;
use tessera_agent::runtime::AgentOptions;
use tessera_agent_api::protocol::Inventory;
use tessera_core::CpuSet;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct AgentsArgs {
    /// The control plane's URL.
    #[arg(long)]
    server: String,
    /// Agents to run.
    #[arg(long, default_value_t = 1_000)]
    count: usize,
    /// CPUs each host offers.
    #[arg(long, default_value_t = 64)]
    cpus: u32,
    /// Seconds between each agent's heartbeats (as `tessera agent`).
    #[arg(long, default_value_t = 5)]
    heartbeat_secs: u64,
    /// Agents joining per second, as a fleet's hosts come up.
    #[arg(long, default_value_t = 500)]
    join_rate: u32,
    /// The join token (or `TESSERA_JOIN_TOKEN`).
    #[arg(long, env = "TESSERA_JOIN_TOKEN", hide_env_values = true)]
    join_token: String,
}

pub async fn run(args: AgentsArgs) -> Result<()> {
    super::fleet::raise_file_limit();
    let dir = tempfile::tempdir()?;
    let cpus = CpuSet::parse_list(&format!("0-{}", args.cpus.max(1) - 1))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let inventory = Inventory {
        cpus: cpus.clone(),
        numa_nodes: vec![cpus],
        reserved_cpus: CpuSet::new(),
        memory_mb: u64::from(args.cpus) * 8192,
        disk_gb: 1024,
        gpus: Vec::new(),
        images: None,
        arch: tessera_agent_api::protocol::this_arch(),
        isolation: None,
    };
    let stop = CancellationToken::new();
    let mut agents = tokio::task::JoinSet::new();
    // Joins spread over time, as a fleet's hosts come up: a tick of 10 ms
    // lets a hundredth of the second's joins in.
    let mut joins = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (args.join_rate.max(100) / 100) as usize;
    for i in 0..args.count {
        if i % per_tick == 0 {
            joins.tick().await;
        }
        let options = AgentOptions {
            server: args.server.clone(),
            join_token: Some(args.join_token.clone()),
            hostname: format!("agent-{i:05}"),
            ip: "127.0.0.1".into(),
            location: Some("bench".into()),
            state_dir: dir.path().join(format!("agent-{i:05}")),
            driver: DriverKind::Sim,
            reserved_cpus: CpuSet::new(),
            user_prefix: "bench".into(),
            bridge: "tessera-bench".into(),
            subnet: "10.99.0.0/16".into(),
            ssh_port_base: 20_000,
            dns_upstreams: Vec::new(),
            allow_privileged: false,
            egress_denied: Vec::new(),
            registry: Default::default(),
            disk_overcommit: 1.0,
            heartbeat_every: Duration::from_secs(args.heartbeat_secs.max(1)),
            inventory: Some(inventory.clone()),
            http: None,
        };
        let stop = stop.clone();
        agents.spawn(async move {
            if let Err(err) = tessera_agent::runtime::run(options, stop).await {
                eprintln!("an agent stopped: {err:#}");
            }
        });
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { while agents.join_next().await.is_some() {} } => {}
    }
    stop.cancel();
    while agents.join_next().await.is_some() {}
    Ok(())
}
