//! A fleet: N hosts, M instances created through the native API by C
//! clients, then every list endpoint of every face read at the end.
//!
//! It prints creations per second end to end (from the first request to
//! the last instance `running`), the create requests' p50/p99, each read's
//! p50/p99 on its own and under a steady load, and the control plane's
//! resident memory. The hosts are simulated in the server's process, or,
//! with `--agents`, each is a real agent (the `sim` driver) speaking the
//! agent protocol from a second process, as `tessera agent` does.

use super::{BENCH_SSH_KEY, quantile};
use crate::server;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tessera_store::Store;

#[derive(clap::Args, Clone)]
pub struct FleetArgs {
    /// The store to measure [default: a fresh SQLite file in a temp dir].
    #[arg(long)]
    database_url: Option<String>,
    /// Hosts in the fleet.
    #[arg(long, default_value_t = 1_000)]
    hosts: usize,
    /// Instances to create (`CPU.4V.16G`, four dedicated CPUs each).
    #[arg(long, default_value_t = 10_000)]
    instances: usize,
    /// Concurrent clients creating them.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// CPUs of each host.
    #[arg(long, default_value_t = 64)]
    cpus: u32,
    /// Requests per read endpoint, one at a time.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Requests per second of the loaded read run (every endpoint in turn).
    #[arg(long, default_value_t = 1_000)]
    read_rate: u64,
    /// Seconds of the loaded read run.
    #[arg(long, default_value_t = 5)]
    read_seconds: u64,
    /// Run each host as a real agent over the agent protocol (join,
    /// heartbeats, long-polls, reports) from a child process, and measure
    /// the server at rest with them for this many seconds.
    #[arg(long)]
    agents: bool,
    /// Seconds to measure the server at rest (with `--agents`).
    #[arg(long, default_value_t = 30)]
    rest_seconds: u64,
    /// Seconds to measure the server at rest once the instances are made,
    /// before the reads (0: not measured).
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Agents joining per second (with `--agents`), as a fleet's hosts come
    /// up: each join is a registration and its host's preparation.
    #[arg(long, default_value_t = 500)]
    join_rate: u32,
    /// Set no quota at all, so creations skip the quota check (as a
    /// project whose every limit is -1). By default every limit is set far
    /// above what the run uses: each creation is checked against its
    /// project's quota, as it is with the server's default quotas.
    #[arg(long)]
    unlimited_quotas: bool,
    /// Instances deleted at the end, by the same clients, through
    /// `DELETE /v1/instances/{id}` [default: a tenth of them].
    #[arg(long)]
    deletions: Option<usize>,
}

/// What the control plane's process has used so far.
#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    rss_mib: f64,
}

fn usage_of(pid: u32) -> Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command's closing parenthesis: utime is the 14th
    // field of the line, stime the 15th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = rustix::param::clock_ticks_per_second().max(1);
    let cpu = Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(Usage {
        cpu,
        rss_mib: rss_kib / 1024.0,
    })
}

/// CPU used so far by this machine's PostgreSQL processes (the store's
/// own work when the database is local; zero otherwise).
fn postgres_cpu() -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "postgres")
        })
        .filter_map(|pid| usage_of(pid).ok())
        .map(|u| u.cpu)
        .sum()
}

/// Raises this process's open-file limit: tens of thousands of
/// connections each way. Root may go past the hard limit; others get it.
pub(crate) fn raise_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let wanted = 262_144;
    let raised = Rlimit {
        current: Some(wanted),
        maximum: Some(wanted),
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        let hard = getrlimit(Resource::Nofile).maximum;
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: hard,
                maximum: hard,
            },
        );
    }
}

struct Bench {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Bench {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: &str,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        Ok((status, headers, response.bytes().await?.to_vec()))
    }

    async fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: &str,
    ) -> Result<Value> {
        let (status, _, bytes) = self.send(method.clone(), path, body, token).await?;
        if !status.is_success() {
            bail!(
                "{method} {path} answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

pub async fn run(args: FleetArgs) -> Result<()> {
    raise_file_limit();
    let dir = tempfile::tempdir()?;
    let mut settings = super::bench_settings(dir.path(), args.database_url.clone(), !args.agents)?;
    let token = settings.admin_token.clone().unwrap_or_default();
    settings.http.max_connections = 100_000;
    settings.http.max_per_address = 100_000;
    if !args.unlimited_quotas {
        let far = 1 << 40;
        settings.quota_defaults = tessera_store::Usage {
            instances: far,
            vcpus: far,
            memory_mb: far,
            volumes: far,
            volume_gb: far,
            containers: far,
            ssh_keys: far,
        };
    }
    let running = server::start(&settings).await?;
    let store = running.app.store().clone();
    let bench = Bench {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            // Shorter than the server's 15 s for an idle connection, so the
            // clients never send on one the server is closing (the creations'
            // connections sit idle through the long Verda list reads).
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?,
        base: running.url(),
        token: token.clone(),
    };
    let backend = store.backend().name();
    println!(
        "fleet on {backend}: {} hosts of {} CPUs ({}), {} instances by {} clients, {}",
        args.hosts,
        args.cpus,
        if args.agents {
            "real agents, sim driver, over the agent protocol"
        } else {
            "simulated in the server's process"
        },
        args.instances,
        args.clients,
        if args.unlimited_quotas {
            "no quota checked"
        } else {
            "each creation checked against its project's quota"
        }
    );
    let pid = std::process::id();
    let before = usage_of(pid)?;

    // The hosts.
    let started = Instant::now();
    let mut agents = None;
    if args.agents {
        agents = Some(start_agents(&bench, &args).await?);
    } else {
        register_hosts(&bench, &args).await?;
    }
    wait_hosts_ready(&store, args.hosts).await?;
    println!("hosts ready in {:.1} s", started.elapsed().as_secs_f64());
    if args.agents {
        let (cpu, rss) = at_rest(pid, args.rest_seconds).await?;
        println!(
            "at rest with {} agents for {} s: server CPU {:.1}% of one core, memory {:.0} MiB",
            args.hosts, args.rest_seconds, cpu, rss
        );
    }

    // The creations.
    let created = create_instances(&bench, &store, &args, pid).await?;
    println!(
        "created {} instances: {:.0} creations/s to running; create p50 {:.1} ms, p99 {:.1} ms; {} failed",
        created.count, created.rate, created.p50_ms, created.p99_ms, created.failed,
    );
    println!(
        "CPU per creation: control plane {:.2} ms (this process, clients included), PostgreSQL {:.2} ms",
        created.cpu_ms_each, created.postgres_ms_each
    );

    println!(
        "control plane memory with the fleet made: {:.0} MiB resident",
        usage_of(pid)?.rss_mib
    );
    if args.idle_seconds > 0 {
        let passes_before = running.app.background_passes();
        let (cpu, rss) = at_rest(pid, args.idle_seconds).await?;
        println!(
            "at rest with the fleet made for {} s: control plane CPU {:.1}% of one core, memory {:.0} MiB",
            args.idle_seconds, cpu, rss
        );
        print_passes(
            "background task at rest",
            &passes_before,
            &running.app.background_passes(),
        );
    }

    // The reads, on fresh planner statistics (PostgreSQL), as after any
    // bulk load: autovacuum's would come within a minute or so.
    store.analyze().await?;
    let endpoints = read_endpoints(&bench, &store).await?;
    println!(
        "{:<58} {:>9} {:>9} {:>8}",
        "read (one at a time)", "p50 ms", "p99 ms", "bytes"
    );
    for endpoint in &endpoints {
        let samples = match endpoint.whole {
            true => args.samples.min(5),
            false => args.samples,
        };
        let mut times = Vec::with_capacity(samples);
        let mut bytes = 0;
        for _ in 0..samples {
            let start = Instant::now();
            let (status, _, body) = bench
                .send(reqwest::Method::GET, &endpoint.path, None, &endpoint.token)
                .await?;
            times.push(start.elapsed());
            if !status.is_success() {
                bail!(
                    "GET {} answered {status}: {}",
                    endpoint.path,
                    String::from_utf8_lossy(&body)
                );
            }
            bytes = body.len();
        }
        times.sort_unstable();
        println!(
            "{:<58} {:>9.2} {:>9.2} {:>8}",
            format!("{} {}", endpoint.face, endpoint.label),
            ms(quantile(&times, 0.5)),
            ms(quantile(&times, 0.99)),
            bytes
        );
    }
    let paged: Vec<Endpoint> = endpoints.into_iter().filter(|e| !e.whole).collect();
    let passes_before = running.app.background_passes();
    let loaded = loaded_reads(&bench, &paged, &args).await;
    let passes_after = running.app.background_passes();
    println!(
        "reads at {} requests/s for {} s, every paged endpoint in turn: {} answered, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        args.read_rate, args.read_seconds, loaded.answered, loaded.p50, loaded.p99, loaded.errors
    );
    let mut slowest = loaded.by_endpoint;
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let slowest: Vec<String> = slowest
        .iter()
        .take(5)
        .map(|(label, p99)| format!("{label} {p99:.2}"))
        .collect();
    println!("slowest p99 under that load (ms): {}", slowest.join("; "));
    print_passes(
        "background task during the reads",
        &passes_before,
        &passes_after,
    );
    let after = usage_of(pid)?;
    println!(
        "control plane memory after the reads: {:.0} MiB resident ({:.0} MiB at start); process CPU {:.1} s",
        after.rss_mib,
        before.rss_mib,
        (after.cpu - before.cpu).as_secs_f64()
    );
    let deletions = args.deletions.unwrap_or(args.instances / 10);
    if deletions > 0 {
        let deleted = delete_instances(&bench, &store, &args, pid, deletions).await?;
        println!(
            "deleted {} instances: {:.0} deletions/s to terminated; delete p50 {:.1} ms, p99 {:.1} ms; {} failed",
            deleted.count, deleted.rate, deleted.p50_ms, deleted.p99_ms, deleted.failed,
        );
        println!(
            "CPU per deletion: control plane {:.2} ms (this process, clients included), PostgreSQL {:.2} ms",
            deleted.cpu_ms_each, deleted.postgres_ms_each
        );
    }
    if let Some(mut agents) = agents {
        let _ = agents.kill().await;
    }
    running.shutdown().await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Registers the hosts through `/v1/servers/create`, C at a time.
async fn register_hosts(bench: &Bench, args: &FleetArgs) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let bench = Arc::new(Bench {
        client: bench.client.clone(),
        base: bench.base.clone(),
        token: bench.token.clone(),
    });
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (next, bench) = (next.clone(), bench.clone());
        let (hosts, cpus) = (args.hosts, args.cpus);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= hosts {
                    return Ok::<(), anyhow::Error>(());
                }
                let body = json!({
                    "hostname": format!("host-{i:05}"),
                    "ip_address": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                    "zone": "bench",
                    "cpus": format!("0-{}", cpus - 1),
                });
                bench
                    .json(
                        reqwest::Method::POST,
                        "/v1/servers/create",
                        Some(&body),
                        &bench.token,
                    )
                    .await?;
            }
        }));
    }
    for task in tasks {
        task.await.context("registering hosts")??;
    }
    Ok(())
}

async fn wait_hosts_ready(store: &Store, hosts: usize) -> Result<()> {
    let started = Instant::now();
    let mut last = 0;
    let mut last_change = Instant::now();
    loop {
        let ready = store
            .host_counts()
            .await?
            .into_iter()
            .find(|(status, _)| status == "READY")
            .map_or(0, |(_, n)| n as usize);
        if ready >= hosts {
            return Ok(());
        }
        if ready != last {
            last = ready;
            last_change = Instant::now();
        }
        if last_change.elapsed() > Duration::from_secs(120) {
            let counts = store.host_counts().await?;
            bail!(
                "only {ready} of {hosts} hosts became ready in {:.0} s (by status: {counts:?})",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's CPU (percent of one core) and memory over `seconds` at rest.
async fn at_rest(pid: u32, seconds: u64) -> Result<(f64, f64)> {
    let before = usage_of(pid)?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = usage_of(pid)?;
    let cpu = (after.cpu - before.cpu).as_secs_f64() / seconds as f64 * 100.0;
    Ok((cpu, after.rss_mib))
}

/// What a phase of creations or deletions measured.
struct Phase {
    count: usize,
    failed: usize,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_ms_each: f64,
    postgres_ms_each: f64,
}

async fn create_instances(
    bench: &Bench,
    store: &Store,
    args: &FleetArgs,
    pid: u32,
) -> Result<Phase> {
    // A /16 subnet holds 65,534 instances: enough subnets for them all.
    let mut subnets = Vec::new();
    for n in 0..args.instances.div_ceil(60_000) {
        let vpc = bench
            .json(
                reqwest::Method::POST,
                "/v1/vpcs",
                Some(&json!({"name": format!("fleet-{n}"), "cidr_block": format!("10.{}.0.0/16", 200 + n)})),
                &bench.token,
            )
            .await?;
        let subnet = bench
            .json(
                reqwest::Method::POST,
                "/v1/subnets",
                Some(&json!({
                    "vpc_id": vpc["id"], "name": format!("fleet-{n}"),
                    "cidr_block": format!("10.{}.0.0/16", 200 + n),
                })),
                &bench.token,
            )
            .await?;
        subnets.push(subnet["id"].as_str().context("no subnet id")?.to_string());
    }
    let subnets = Arc::new(subnets);
    let request = move |i: usize| {
        let body = json!({
            "metadata": {
                "name": format!("i-{i:06}"),
                "labels": {"app": "bench", "shard": format!("s{}", i % 100)},
            },
            "spec": {
                "type": "CPU.4V.16G", "image": "ubuntu-22.04",
                "subnet_id": subnets[i % subnets.len()],
            },
        });
        (
            reqwest::Method::POST,
            "/v1/instances".to_string(),
            Some(body),
        )
    };
    // Each accepted creation ends running, or terminated (failed).
    let ended = |(running, terminated): (usize, usize), (r0, t0): (usize, usize)| {
        let terminated = terminated.saturating_sub(t0);
        (running.saturating_sub(r0) + terminated, terminated)
    };
    measure_phase(
        bench,
        store,
        args.clients,
        args.instances,
        pid,
        request,
        ended,
    )
    .await
}

/// Deletes `count` running instances (the first of the list), `clients` at
/// a time, and waits until each has ended.
async fn delete_instances(
    bench: &Bench,
    store: &Store,
    args: &FleetArgs,
    pid: u32,
    count: usize,
) -> Result<Phase> {
    let mut ids = Vec::with_capacity(count);
    let mut token: Option<String> = None;
    while ids.len() < count {
        let mut url = "/v1/instances?state=running&limit=1000".to_string();
        if let Some(token) = &token {
            url.push_str(&format!("&page_token={token}"));
        }
        let page = bench
            .json(reqwest::Method::GET, &url, None, &bench.token)
            .await?;
        for item in page["items"].as_array().into_iter().flatten() {
            if ids.len() < count {
                ids.push(item["id"].as_str().context("no instance id")?.to_string());
            }
        }
        match page["next_page_token"].as_str() {
            Some(next) => token = Some(next.to_string()),
            None => break,
        }
    }
    let total = ids.len();
    let request = move |i: usize| {
        let path = format!("/v1/instances/{}", ids[i]);
        (reqwest::Method::DELETE, path, None)
    };
    let ended = |(_, terminated): (usize, usize), (_, t0): (usize, usize)| {
        (terminated.saturating_sub(t0), 0)
    };
    measure_phase(bench, store, args.clients, total, pid, request, ended).await
}

/// Has `clients` clients send `request(i)` for each `i` below `total`,
/// timing each answer, then waits until `ended` (from the instances
/// running and terminated, now and before) says every accepted request
/// has ended; answers the phase's rate, latency, failures and CPU.
async fn measure_phase<R, E>(
    bench: &Bench,
    store: &Store,
    clients: usize,
    total: usize,
    pid: u32,
    request: R,
    ended: E,
) -> Result<Phase>
where
    R: Fn(usize) -> (reqwest::Method, String, Option<Value>) + Send + Sync + 'static,
    E: Fn((usize, usize), (usize, usize)) -> (usize, usize),
{
    let baseline = running_or_ended(store).await?;
    let cpu_before = usage_of(pid)?.cpu;
    let postgres_before = postgres_cpu();
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (next, errors, request) = (next.clone(), errors.clone(), request.clone());
        let bench = Bench {
            client: bench.client.clone(),
            base: bench.base.clone(),
            token: bench.token.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return times;
                }
                let (method, path, body) = request(i);
                let start = Instant::now();
                match bench
                    .send(method.clone(), &path, body.as_ref(), &bench.token)
                    .await
                {
                    Ok((status, _, _)) if status.is_success() => times.push(start.elapsed()),
                    Ok((status, _, body)) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!(
                                "{method} {path} answered {status}: {}",
                                String::from_utf8_lossy(&body)
                            );
                        }
                    }
                    Err(err) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("{method} {path} failed: {err}");
                        }
                    }
                }
            }
        }));
    }
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.context("a client")?);
    }
    let accepted = times.len();
    // Then until each accepted request has ended.
    let mut last = (0, Instant::now());
    let (elapsed, failed) = loop {
        let (done, failed) = ended(running_or_ended(store).await?, baseline);
        if done >= accepted {
            break (started.elapsed(), failed);
        }
        if done != last.0 {
            last = (done, Instant::now());
        }
        if last.1.elapsed() > Duration::from_secs(120) {
            bail!("only {done} of {accepted} ended; none for 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let cpu = usage_of(pid)?.cpu - cpu_before;
    let postgres = postgres_cpu().saturating_sub(postgres_before);
    times.sort_unstable();
    Ok(Phase {
        count: accepted,
        failed: failed + errors.load(Ordering::Relaxed) as usize,
        rate: accepted as f64 / elapsed.as_secs_f64(),
        p50_ms: ms(quantile(&times, 0.5)),
        p99_ms: ms(quantile(&times, 0.99)),
        cpu_ms_each: cpu.as_secs_f64() * 1000.0 / accepted.max(1) as f64,
        postgres_ms_each: postgres.as_secs_f64() * 1000.0 / accepted.max(1) as f64,
    })
}

/// Instances running, and instances terminated.
async fn running_or_ended(store: &Store) -> Result<(usize, usize)> {
    let counts = store.instance_counts().await?;
    let count = |state: &str| {
        counts
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n as usize)
    };
    Ok((count("running"), count("terminated")))
}

/// The token of a page near the end of a paged list at `path` (`?` or `&`
/// already in it), walked a thousand at a time as a client would: the
/// token of the last page but one, so that what follows it is between one
/// and two thousand rows deep in the list. `None` for a list of one page.
/// A page read with it must cost what the first page costs.
async fn deep_page_token(bench: &Bench, path: &str) -> Result<Option<String>> {
    let (mut before, mut last) = (None, None);
    loop {
        let mut url = format!("{path}limit=1000");
        if let Some(token) = &last {
            url.push_str(&format!("&page_token={token}"));
        }
        let (status, headers, bytes) = bench
            .send(reqwest::Method::GET, &url, None, &bench.token)
            .await?;
        if !status.is_success() {
            bail!("GET {url} answered {status}");
        }
        // In the body (`/v1/instances`) or in a header (`/v1/operations`).
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let next = body["next_page_token"]
            .as_str()
            .or_else(|| headers.get("x-next-page-token")?.to_str().ok())
            .map(str::to_string);
        match next {
            Some(token) => (before, last) = (last, Some(token)),
            None => return Ok(before.or(last)),
        }
    }
}

struct Endpoint {
    face: &'static str,
    label: String,
    path: String,
    token: String,
    /// A list that answers every row (Verda's, as Verda does): read a few
    /// times, and left out of the loaded run.
    whole: bool,
}

/// Every list endpoint of every face with the bench's data, and a single
/// get of what each lists.
async fn read_endpoints(bench: &Bench, store: &Store) -> Result<Vec<Endpoint>> {
    let token = bench.token.clone();
    let get = reqwest::Method::GET;
    // Something of each kind to list and to get.
    let key = bench
        .json(
            reqwest::Method::POST,
            "/v1/ssh-keys",
            Some(&json!({"name": "bench", "public_key": BENCH_SSH_KEY})),
            &token,
        )
        .await?;
    let credentials = bench
        .json(
            reqwest::Method::POST,
            "/v1/credentials",
            Some(&json!({"project": "default"})),
            &token,
        )
        .await?;
    let verda = bench
        .json(
            reqwest::Method::POST,
            "/verda/v1/oauth2/token",
            Some(&json!({
                "grant_type": "client_credentials",
                "client_id": credentials["client_id"],
                "client_secret": credentials["client_secret"],
            })),
            "",
        )
        .await?;
    let verda_token = verda["access_token"]
        .as_str()
        .context("no access token")?
        .to_string();
    let instances = bench
        .json(get.clone(), "/v1/instances?limit=1", None, &token)
        .await?;
    let instance = instances["items"][0]["id"]
        .as_str()
        .unwrap_or("none")
        .to_string();
    let operations = bench
        .json(get.clone(), "/v1/operations?limit=1", None, &token)
        .await?;
    let operation = operations[0]["id"].as_str().unwrap_or("none").to_string();
    let host = store
        .hosts(&[])
        .await?
        .first()
        .map(|h| h.id.clone())
        .unwrap_or_default();
    let key_id = key["id"].as_str().unwrap_or("none").to_string();
    let deep = |path: &str, token: Option<String>| match token {
        Some(token) => format!("{path}?limit=100&page_token={token}"),
        None => format!("{path}?limit=100"),
    };
    let deep_instances = deep(
        "/v1/instances",
        deep_page_token(bench, "/v1/instances?").await?,
    );
    let deep_operations = deep(
        "/v1/operations",
        deep_page_token(bench, "/v1/operations?").await?,
    );
    let native = |label: &str, path: String| Endpoint {
        face: "native",
        label: label.to_string(),
        path,
        token: token.clone(),
        whole: false,
    };
    let mut endpoints = vec![
        native(
            "GET /v1/instances?limit=100",
            "/v1/instances?limit=100".into(),
        ),
        native(
            "GET /v1/instances?labels=shard=s7&limit=100",
            "/v1/instances?labels=shard%3Ds7&limit=100".into(),
        ),
        native(
            "GET /v1/instances?state=running&limit=100",
            "/v1/instances?state=running&limit=100".into(),
        ),
        native(
            "GET /v1/instances/{id}",
            format!("/v1/instances/{instance}"),
        ),
        native(
            "GET /v1/operations?limit=100",
            "/v1/operations?limit=100".into(),
        ),
        native(
            "GET /v1/instances?limit=100 (a page at the end)",
            deep_instances,
        ),
        native(
            "GET /v1/operations?limit=100 (a page at the end)",
            deep_operations,
        ),
        native(
            "GET /v1/operations/{id}",
            format!("/v1/operations/{operation}"),
        ),
        native("GET /v1/servers?limit=100", "/v1/servers?limit=100".into()),
        native(
            "GET /v1/servers/{id}/status",
            format!("/v1/servers/{host}/status"),
        ),
        native("GET /v1/ssh-keys", "/v1/ssh-keys".into()),
        native("GET /v1/ssh-keys/{id}", format!("/v1/ssh-keys/{key_id}")),
        native("GET /v1/vpcs", "/v1/vpcs".into()),
        native("GET /v1/subnets", "/v1/subnets".into()),
        native("GET /v1/security-groups", "/v1/security-groups".into()),
        native("GET /v1/taskservs", "/v1/taskservs".into()),
        native("GET /v1/users", "/v1/users".into()),
        native("GET /v1/tokens", "/v1/tokens".into()),
        native("GET /v1/credentials", "/v1/credentials".into()),
        native("GET /v1/inference-keys", "/v1/inference-keys".into()),
        native("GET /v1/workspaces", "/v1/workspaces".into()),
    ];
    endpoints.push(Endpoint {
        face: "kloigos",
        label: "GET /api/compute_units/".into(),
        path: "/api/compute_units/?zone=bench".into(),
        token: token.clone(),
        whole: false,
    });
    for (label, path) in [
        ("GET /compute/containers", "/compute/containers".to_string()),
        ("GET /compute/ssh-keys", "/compute/ssh-keys".to_string()),
    ] {
        endpoints.push(Endpoint {
            face: "compute",
            label: label.into(),
            path,
            token: token.clone(),
            whole: false,
        });
    }
    for (label, path) in [
        (
            "GET /v1/instances (every one, as Verda)",
            "/verda/v1/instances".to_string(),
        ),
        (
            "GET /v1/instances/{id}",
            format!("/verda/v1/instances/{instance}"),
        ),
        ("GET /v1/volumes", "/verda/v1/volumes".to_string()),
        ("GET /v1/ssh-keys", "/verda/v1/ssh-keys".to_string()),
        ("GET /v1/scripts", "/verda/v1/scripts".to_string()),
        ("GET /v1/secrets", "/verda/v1/secrets".to_string()),
        ("GET /v1/file-secrets", "/verda/v1/file-secrets".to_string()),
        (
            "GET /v1/container-deployments",
            "/verda/v1/container-deployments".to_string(),
        ),
        (
            "GET /v1/job-deployments",
            "/verda/v1/job-deployments".to_string(),
        ),
        (
            "GET /v1/container-registry-credentials",
            "/verda/v1/container-registry-credentials".to_string(),
        ),
        (
            "GET /v1/instance-types",
            "/verda/v1/instance-types".to_string(),
        ),
        (
            "GET /v1/instance-availability",
            "/verda/v1/instance-availability".to_string(),
        ),
    ] {
        endpoints.push(Endpoint {
            face: "verda",
            whole: path == "/verda/v1/instances",
            label: label.into(),
            path,
            token: verda_token.clone(),
        });
    }
    Ok(endpoints)
}

/// What a loaded read run measured: p50 and p99 in ms over every read,
/// how many answered and failed, and each endpoint's p99 in ms.
struct Loaded {
    p50: f64,
    p99: f64,
    answered: usize,
    errors: u64,
    by_endpoint: Vec<(String, f64)>,
}

/// Reads at a steady rate, every endpoint in turn.
async fn loaded_reads(bench: &Bench, endpoints: &[Endpoint], args: &FleetArgs) -> Loaded {
    let errors = Arc::new(AtomicU64::new(0));
    let every = Duration::from_secs_f64(1.0 / args.read_rate.max(1) as f64);
    let total = (args.read_rate * args.read_seconds) as usize;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let endpoint = &endpoints[i % endpoints.len()];
        let request = bench
            .client
            .get(format!("{}{}", bench.base, endpoint.path))
            .bearer_auth(&endpoint.token);
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let _ = response.bytes().await;
                    Some(start.elapsed())
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        }));
    }
    let mut times = Vec::new();
    let mut by_endpoint = vec![Vec::new(); endpoints.len()];
    for (i, task) in tasks.into_iter().enumerate() {
        if let Ok(Some(t)) = task.await {
            times.push(t);
            by_endpoint[i % endpoints.len()].push(t);
        }
    }
    times.sort_unstable();
    let by_endpoint = endpoints
        .iter()
        .zip(by_endpoint)
        .map(|(endpoint, mut times)| {
            times.sort_unstable();
            (
                format!("{} {}", endpoint.face, endpoint.label),
                ms(quantile(&times, 0.99)),
            )
        })
        .collect();
    Loaded {
        p50: ms(quantile(&times, 0.5)),
        p99: ms(quantile(&times, 0.99)),
        answered: times.len(),
        errors: errors.load(Ordering::Relaxed),
        by_endpoint,
    }
}

/// Prints what the background tasks' passes cost between two snapshots,
/// the costliest first.
fn print_passes(
    title: &str,
    before: &[(&'static str, tessera_app::reconciler::TaskPasses)],
    after: &[(&'static str, tessera_app::reconciler::TaskPasses)],
) {
    let mut rows: Vec<(&str, u64, Duration, Duration)> = after
        .iter()
        .map(|(task, now)| {
            let was = before
                .iter()
                .find(|(t, _)| t == task)
                .map(|(_, p)| *p)
                .unwrap_or_default();
            (
                *task,
                now.passes - was.passes,
                now.total.saturating_sub(was.total),
                now.longest,
            )
        })
        .filter(|(_, passes, _, _)| *passes > 0)
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.2));
    println!(
        "{:<36} {:>7} {:>10} {:>10} {:>12}",
        title, "passes", "total ms", "mean ms", "longest ms*"
    );
    for (task, passes, total, longest) in rows {
        println!(
            "{:<36} {:>7} {:>10.1} {:>10.2} {:>12.1}",
            task,
            passes,
            ms(total),
            ms(total) / passes as f64,
            ms(longest)
        );
    }
    println!("(* since the server started)");
}

/// Starts `tessera bench agents` in a child process with a join token.
async fn start_agents(bench: &Bench, args: &FleetArgs) -> Result<tokio::process::Child> {
    let joined = bench
        .json(
            reqwest::Method::POST,
            "/v1/servers/join-tokens",
            Some(&json!({"ttl_seconds": 3600, "description": "fleet benchmark"})),
            &bench.token,
        )
        .await?;
    let join_token = joined["token"].as_str().context("no join token")?;
    let exe = std::env::current_exe()?;
    let child = tokio::process::Command::new(exe)
        .args(["bench", "agents", "--server", &bench.base])
        .args(["--count", &args.hosts.to_string()])
        .args(["--cpus", &args.cpus.to_string()])
        .args(["--join-rate", &args.join_rate.to_string()])
        .env("TESSERA_JOIN_TOKEN", join_token)
        .kill_on_drop(true)
        .spawn()
        .context("starting the agents' process")?;
    Ok(child)
}
