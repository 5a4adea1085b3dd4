//! Serverless deployments on this machine's real container driver: the
//! front door's added latency (the same requests at a fixed rate to a
//! replica, directly and through `/inference/<deployment>`), and cold
//! starts (from zero replicas to the first answer, the image on the host).
//!
//! It starts a control plane and a container agent in this process (as
//! `tessera up` does, on its own bridge and subnets), builds the
//! `scripts/images/echo` image (busybox httpd) and imports it into the
//! agent's store under the name a deployment of it pulls to, so no
//! registry is involved. Root, runc and cgroups are needed.
//!
//! Design decision: requests are sent open-loop, each at its scheduled
//! time, and each latency is measured from that time, so a slow answer
//! delays no later request and queueing in either path shows in the p99.

use super::quantile;
use crate::agent::{AgentArgs, is_root};
use crate::server;
use crate::settings::Settings;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tessera_agent::host::DriverKind;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args)]
pub struct ServerlessArgs {
    /// Requests per latency row.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Requests per second offered in the latency rows.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Cold starts measured.
    #[arg(long, default_value_t = 5)]
    cold_starts: usize,
}

const TOKEN: &str = "bench-serverless-admin-token";
const IMAGE: &str = "bench.local/apps/echo:v1";

/// The bench's client of its own control plane.
struct Cloud {
    base: String,
    http: reqwest::Client,
    verda_token: String,
}

impl Cloud {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: &str,
    ) -> Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn verda(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.call(method, &format!("/verda/v1{path}"), body, &self.verda_token)
            .await
    }

    async fn replicas(&self) -> Result<Vec<Value>> {
        Ok(self
            .verda(
                reqwest::Method::GET,
                "/container-deployments/echo/replicas",
                None,
            )
            .await?["list"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn wait_replicas(&self, count: usize, running: bool) -> Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let list = self.replicas().await?;
            if list.len() == count && (!running || list.iter().all(|r| r["status"] == "running")) {
                return Ok(list);
            }
            if Instant::now() > deadline {
                bail!("the deployment did not reach {count} replicas: {list:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn run(args: ServerlessArgs) -> Result<()> {
    if !is_root() {
        bail!("the serverless benchmark runs replicas on the container driver: run it as root");
    }
    let dir = tempfile::tempdir()?;
    let settings = Settings {
        listen: "127.0.0.1:0".parse()?,
        sim: None,
        admin_token: Some(TOKEN.into()),
        vpc_pool: "10.253.0.0/24".parse()?,
        // The benchmark polls; it measures requests, not a tenant's limits.
        rate_limits: tessera_app::RateLimits {
            project: 1_000_000,
            endpoint: 1_000_000,
            client: 1_000_000,
            window: Duration::from_secs(60),
        },
        ..Settings::with_defaults(
            dir.path().to_path_buf(),
            tessera_store::Store::sqlite_url(&dir.path().join("bench.db")),
        )
    };
    let running = server::start(&settings).await?;
    let base = running.url();
    let state_dir = dir.path().join("agent");
    let image_dir = state_dir.join("images");
    std::fs::create_dir_all(&image_dir)?;
    let layout = dir.path().join("echo-oci");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/images/echo");
    let built = std::process::Command::new("bash")
        .arg(&script)
        .arg(&layout)
        .output()
        .context("scripts/images/echo")?;
    if !built.status.success() {
        bail!(
            "scripts/images/echo: {}",
            String::from_utf8_lossy(&built.stderr)
        );
    }
    let name = tessera_app::deployments::host_image_name(IMAGE, None);
    tessera_agent::drivers::container::import_image(&image_dir, &name, &layout)
        .map_err(|e| anyhow::anyhow!("importing the echo image: {e}"))?;

    let join_token = running.app.local_join_token("bench-serverless").await?;
    let agent = AgentArgs {
        server: base.clone(),
        join_token: Some(join_token),
        join_token_file: None,
        hostname: Some("bench-serverless".into()),
        ip: "127.0.0.1".into(),
        location: Some("FIN-01".into()),
        state_dir: Some(state_dir),
        driver: DriverKind::Container,
        reserved_cpus: Default::default(),
        user_prefix: "tb-".into(),
        bridge: "tsrb0".into(),
        subnet: "10.89.0.0/24".into(),
        ssh_port_base: 45000,
        dns: Vec::new(),
        allow_privileged_instances: false,
        egress_deny: Vec::new(),
        registry_mirrors: Vec::new(),
        insecure_registries: Vec::new(),
        max_image_size_gb: 20,
        // Its replicas' disks are sparse and barely written.
        disk_overcommit: f64::INFINITY,
        heartbeat_secs: 5,
    }
    .options()?;
    let stop = CancellationToken::new();
    let agent_task = tokio::spawn(tessera_agent::runtime::run(agent, stop.clone()));
    let outcome = measure(&args, &base).await;
    stop.cancel();
    let _ = agent_task.await;
    running.shutdown().await?;
    outcome
}

async fn measure(args: &ServerlessArgs, base: &str) -> Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()?;
    let mut cloud = Cloud {
        base: base.to_string(),
        http: http.clone(),
        verda_token: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while cloud
        .call(reqwest::Method::GET, "/v1/servers", None, TOKEN)
        .await?
        .as_array()
        .is_none_or(|s| !s.iter().any(|s| s["status"] == "running"))
    {
        if Instant::now() > deadline {
            bail!("the container agent did not join");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = cloud
        .call(
            reqwest::Method::POST,
            "/v1/credentials",
            Some(json!({"project": "default"})),
            TOKEN,
        )
        .await?;
    let tokens = cloud
        .call(
            reqwest::Method::POST,
            "/verda/v1/oauth2/token",
            Some(json!({"grant_type": "client_credentials", "client_id": client["client_id"], "client_secret": client["client_secret"]})),
            "",
        )
        .await?;
    cloud.verda_token = tokens["access_token"]
        .as_str()
        .context("access token")?
        .to_string();
    let key = cloud
        .call(
            reqwest::Method::POST,
            "/v1/inference-keys",
            Some(json!({"name": "bench"})),
            TOKEN,
        )
        .await?["key"]
        .as_str()
        .context("inference key")?
        .to_string();
    let created = cloud
        .verda(
            reqwest::Method::POST,
            "/container-deployments",
            Some(json!({
                "name": "echo",
                "containers": [{"image": IMAGE, "exposed_port": 8080,
                    "healthcheck": {"enabled": true, "port": 8080, "path": "/health"}}],
                "compute": {"name": "General Compute", "size": 1},
                "scaling": {"min_replica_count": 0, "max_replica_count": 1,
                    "scale_up_policy": {"delay_seconds": 0}, "scale_down_policy": {"delay_seconds": 0},
                    "queue_message_ttl_seconds": 60, "concurrent_requests_per_replica": 1000,
                    "scaling_triggers": {"queue_load": {"threshold": 1000}}},
            })),
        )
        .await?;
    let endpoint = created["endpoint_base_url"]
        .as_str()
        .context("endpoint")?
        .to_string();

    println!("serverless: the echo image (busybox httpd) on this machine's container driver");
    let mut cold = Vec::new();
    for _ in 0..args.cold_starts {
        cloud.wait_replicas(0, false).await?;
        let started = Instant::now();
        let response = http
            .get(format!("{endpoint}/"))
            .bearer_auth(&key)
            .send()
            .await?;
        let status = response.status();
        response.bytes().await?;
        if !status.is_success() {
            bail!("a cold request answered {status}");
        }
        cold.push(started.elapsed());
    }
    cold.sort();
    println!(
        "cold start (0 replicas -> first answer, image cached): p50 {:.0} ms, max {:.0} ms over {} starts",
        ms(quantile(&cold, 0.5)),
        ms(cold.last().copied().unwrap_or_default()),
        cold.len()
    );

    // A warm replica for the latency rows.
    cloud
        .verda(
            reqwest::Method::PATCH,
            "/container-deployments/echo/scaling",
            Some(json!({"min_replica_count": 1})),
        )
        .await?;
    let replica = cloud.wait_replicas(1, true).await?;
    let instance = cloud
        .call(
            reqwest::Method::GET,
            &format!(
                "/v1/instances/{}",
                replica[0]["id"].as_str().context("replica id")?
            ),
            None,
            TOKEN,
        )
        .await?;
    let ip = instance["status"]["private_ip"]
        .as_str()
        .or_else(|| instance["private_ip"].as_str())
        .context("the replica's address")?
        .to_string();
    let direct = format!("http://{ip}:8080/");
    let through = format!("{endpoint}/");
    // Until the front door has found the replica healthy.
    for _ in 0..200 {
        if http
            .get(&through)
            .bearer_auth(&key)
            .send()
            .await?
            .status()
            .is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{:<26} {:>8} {:>10} {:>10} {:>8}",
        "path", "rate/s", "p50 ms", "p99 ms", "errors"
    );
    let mut medians = Vec::new();
    for (label, url) in [
        ("direct to the replica", &direct),
        ("through the front door", &through),
    ] {
        // Warm the connections and the replica's page cache.
        open_loop(&http, url, &key, args.rate, args.requests / 10).await;
        let (sorted, errors) = open_loop(&http, url, &key, args.rate, args.requests).await;
        let (p50, p99) = (quantile(&sorted, 0.5), quantile(&sorted, 0.99));
        println!(
            "{label:<26} {:>8} {:>10.3} {:>10.3} {errors:>8}",
            args.rate,
            ms(p50),
            ms(p99)
        );
        medians.push((p50, p99));
    }
    if let [(d50, d99), (f50, f99)] = medians[..] {
        println!(
            "added by the front door: p50 {:+.3} ms, p99 {:+.3} ms",
            ms(f50) - ms(d50),
            ms(f99) - ms(d99)
        );
    }
    cloud
        .verda(
            reqwest::Method::DELETE,
            "/container-deployments/echo?timeout=60000",
            None,
        )
        .await?;
    Ok(())
}

/// `count` requests at `rate` per second, each measured from its scheduled
/// time: sorted latencies of the answered ones, and how many failed.
async fn open_loop(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    rate: u32,
    count: usize,
) -> (Vec<Duration>, usize) {
    let start = tokio::time::Instant::now();
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let at = start + gap * n as u32;
        tokio::time::sleep_until(at).await;
        let (http, url, key) = (http.clone(), url.to_string(), key.to_string());
        tasks.push(tokio::spawn(async move {
            let answered = http.get(&url).bearer_auth(&key).send().await;
            match answered {
                Ok(r) if r.status().is_success() => {
                    r.bytes().await.ok()?;
                    Some(at.elapsed())
                }
                _ => None,
            }
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    let mut errors = 0;
    for task in tasks {
        match task.await.ok().flatten() {
            Some(latency) => latencies.push(latency),
            None => errors += 1,
        }
    }
    latencies.sort();
    (latencies, errors)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
