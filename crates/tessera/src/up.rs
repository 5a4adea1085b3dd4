//! `tessera up`: the control plane on the embedded store plus an agent for
//! this machine, in one process. The agent uses the best driver the machine
//! allows: containers when run as root with cgroups and an OCI runtime,
//! otherwise simulated instances; `up` says which and why.

use crate::agent::{AgentArgs, is_root};
use crate::settings::ServerArgs;
use crate::{logging, server};
use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use tessera_agent::host::DriverKind;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Force a driver instead of the best this machine allows.
    #[arg(long, value_parser = parse_driver)]
    pub driver: Option<DriverKind>,
    /// Do not install missing host packages (runc, dropbear, busybox,
    /// nftables).
    #[arg(long)]
    pub no_install: bool,
    /// The location of this machine's host [default: the catalog's first,
    /// FIN-01 with the built-in catalog, so that Verda clients find it].
    #[arg(long)]
    pub location: Option<String>,
    /// Pull REGISTRY's images from URL instead (repeatable):
    /// `docker.io=http://10.0.0.5:5000`.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL")]
    pub registry_mirrors: Vec<tessera_agent::drivers::container::Mirror>,
    /// Speak plain HTTP to this registry (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// The most an image pulled for an instance may weigh, downloaded and
    /// again unpacked, in GiB (0: no limit).
    #[arg(long, default_value_t = 20)]
    pub max_image_size_gb: u64,
    /// How many times the disk's free space instances' disks (sparse files)
    /// may promise together; 1: none is made that the free space could not
    /// hold written in full. One machine's cloud promises 4 times by
    /// default (a few instances and containers on a laptop's disk); no one
    /// disk may be larger than what is free.
    #[arg(long, env = "TESSERA_DISK_OVERCOMMIT", default_value_t = 4.0, value_parser = crate::agent::parse_overcommit)]
    pub disk_overcommit: f64,
}

fn parse_driver(s: &str) -> Result<DriverKind, String> {
    s.parse()
}

/// The repository's `scripts` directory, when running from a checkout.
fn scripts_dir() -> Option<PathBuf> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts");
    [built, PathBuf::from("scripts")]
        .into_iter()
        .find(|dir| dir.join("host-packages").exists())
}

fn has_cpuset_cgroups() -> bool {
    Path::new("/sys/fs/cgroup/cpuset/cpuset.cpus").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpuset"))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|dir| dir.join(program).is_file())
}

fn missing_tools() -> Vec<&'static str> {
    ["runc", "dropbear", "busybox", "nft"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect()
}

/// The best driver here, and why.
fn choose_driver(no_install: bool) -> (DriverKind, String) {
    if !is_root() {
        return (
            DriverKind::Sim,
            "not running as root, so instances cannot be real containers".into(),
        );
    }
    if !has_cpuset_cgroups() {
        return (
            DriverKind::Sim,
            "this machine has no cpuset cgroup to pin CPUs with".into(),
        );
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        let script = scripts_dir().map(|d| d.join("host-packages"));
        match (no_install, script) {
            (false, Some(script)) => {
                eprintln!(
                    "installing what containers need ({}) with {}",
                    missing.join(", "),
                    script.display()
                );
                let installed = std::process::Command::new("bash")
                    .arg(&script)
                    .status()
                    .is_ok_and(|s| s.success());
                if !installed {
                    return (
                        DriverKind::Sim,
                        format!("installing {} failed", missing.join(", ")),
                    );
                }
            }
            _ => {
                return (
                    DriverKind::Sim,
                    format!(
                        "{} missing (Debian packages runc, dropbear-bin, busybox-static, nftables)",
                        missing.join(", ")
                    ),
                );
            }
        }
    }
    (
        DriverKind::Container,
        "root, cpuset cgroups and runc are here".into(),
    )
}

/// Builds and imports the `tiny` image when the host has none.
fn ensure_tiny_image(state_dir: &Path) -> Result<()> {
    let images = state_dir.join("images");
    let present = tessera_agent::drivers::container::list_images(&images).unwrap_or_default();
    if present.iter().any(|i| i == "tiny") {
        return Ok(());
    }
    let script = scripts_dir()
        .map(|d| d.join("images/tiny"))
        .filter(|s| s.exists())
        .context("scripts/images/tiny is not here to build the tiny image; import one with `tessera image import tiny FILE`")?;
    let out = tempfile::tempdir()?;
    let tarball = out.path().join("tiny.tar.gz");
    eprintln!(
        "building the tiny image (busybox + dropbear) with {}",
        script.display()
    );
    let built = std::process::Command::new("bash")
        .arg(&script)
        .arg(&tarball)
        .status()
        .context("cannot run the image script")?;
    if !built.success() {
        anyhow::bail!("{} failed", script.display());
    }
    tessera_agent::drivers::container::import_image(&images, "tiny", &tarball)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

pub async fn run(args: UpArgs) -> Result<()> {
    let settings = args.server.resolve()?;
    logging::init(settings.log_format);
    let (driver, why) = match args.driver {
        Some(driver) => (driver, "asked for with --driver".to_string()),
        None => choose_driver(args.no_install),
    };
    let state_dir = settings.data_dir.join("agent");
    if driver == DriverKind::Container {
        ensure_tiny_image(&state_dir)?;
    }
    let running = server::start(&settings).await?;
    // Shown at once: it is shown only this once, and what follows may fail.
    if let Some(token) = &running.new_admin_token {
        println!(
            "\nThe bootstrap admin token, shown this once (only its hash is stored):\n\n    \
             export TESSERA_TOKEN={token}\n"
        );
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let join_token = running.app.local_join_token(&hostname).await?;
    let location = args.location.clone().or_else(|| {
        running
            .app
            .catalog()
            .locations
            .first()
            .map(|l| l.code.clone())
    });
    let agent = AgentArgs {
        server: running.url(),
        join_token: Some(join_token),
        join_token_file: None,
        hostname: Some(hostname.clone()),
        ip: "127.0.0.1".into(),
        location: location.clone(),
        state_dir: Some(state_dir),
        driver,
        reserved_cpus: Default::default(),
        user_prefix: String::new(),
        bridge: "tsr0".into(),
        subnet: "10.88.0.0/24".into(),
        ssh_port_base: 2200,
        dns: Vec::new(),
        allow_privileged_instances: false,
        egress_deny: Vec::new(),
        registry_mirrors: args.registry_mirrors.clone(),
        insecure_registries: args.insecure_registries.clone(),
        max_image_size_gb: args.max_image_size_gb,
        disk_overcommit: args.disk_overcommit,
        heartbeat_secs: 5,
    }
    .options()?;
    let stop = CancellationToken::new();
    let agent_task = tokio::spawn(tessera_agent::runtime::run(agent, stop.clone()));
    println!(
        "\nTessera is up on {} with host {hostname} in {}",
        running.url(),
        location.as_deref().unwrap_or("no location")
    );
    println!("driver: {} ({why})", driver.as_str());
    if let Some(gateway) = &running.gateway {
        println!(
            "ingress gateway for containers at <id>.{}: external port {}",
            running.app.compute_config().domain,
            gateway.describe()
        );
    }
    match &running.new_admin_token {
        Some(_) => println!("\nUse the admin token printed above (export TESSERA_TOKEN=...).\n"),
        None => println!(
            "\nUse the admin token printed at the first start (export TESSERA_TOKEN=...).\n"
        ),
    }
    let image = match driver {
        DriverKind::Container => "tiny",
        _ => "ubuntu-22.04",
    };
    println!(
        "Try, in another shell:\n\n    \
         export TESSERA_TOKEN=...        # the admin token\n    \
         ssh-keygen -t ed25519 -N '' -f ~/.ssh/tessera\n    \
         KEY=$(cargo run -q --release -- ssh-key add mine --public-key-file ~/.ssh/tessera.pub)\n    \
         cargo run -q --release -- instance create web-1 --image {image} --ssh-key $KEY\n    \
         ssh -i ~/.ssh/tessera root@IP     # IP: the ip= the last command printed\n    \
         cargo run -q --release -- instance ssh ID -i ~/.ssh/tessera   # the same, by instance id\n"
    );
    println!(
        "Verda Cloud clients (base URL {}/verda/v1) need credentials and money:\n\n    \
         cargo run -q --release -- credentials create --project default\n    \
         cargo run -q --release -- balance add --project default 100\n",
        running.url()
    );
    let mut agent_task = agent_task;
    // One wait for the signal throughout: none is missed between two.
    let stop_signal = server::stop_signal();
    tokio::pin!(stop_signal);
    let agent_ended = tokio::select! {
        _ = &mut stop_signal => None,
        ended = &mut agent_task => Some(ended),
    };
    // The local host retired (`decommission_server`, `DELETE
    // /v1/servers/{id}`): the agent is refused, and stops, but the cloud
    // goes on for its other hosts until asked to stop.
    if let Some(Ok(Err(err))) = &agent_ended
        && let Some(rejected) = err.downcast_ref::<tessera_agent::runtime::Rejected>()
    {
        tracing::warn!(
            hostname,
            why = %rejected.0,
            "the local host no longer has an agent (retired?); the control plane keeps \
             running; start `tessera up` again to add this machine back"
        );
        stop_signal.await;
        stop.cancel();
        return running.shutdown().await;
    }
    stop.cancel();
    let agent_result = match agent_ended {
        Some(ended) => ended,
        None => {
            tracing::info!("stopping; instances keep running and are adopted at the next start");
            agent_task.await
        }
    };
    let shutdown = running.shutdown().await;
    match agent_result {
        Ok(Err(err)) => Err(err.context("the local agent stopped")),
        Err(err) => Err(anyhow::anyhow!("the local agent failed: {err}")),
        Ok(Ok(())) => shutdown,
    }
}
