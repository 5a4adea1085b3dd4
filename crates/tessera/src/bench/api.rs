//! Allocate + deallocate round trips through the Kloigos HTTP API, against
//! a server started in this process (simulated hosts, durable store), with
//! N concurrent clients over keep-alive connections.

use super::{BENCH_SSH_KEY, quantile};
use crate::server;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ApiArgs {
    /// The store to measure [default: a fresh SQLite file in a temp dir].
    #[arg(long)]
    database_url: Option<String>,
    /// Concurrent clients; one run per value.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32])]
    clients: Vec<usize>,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Simulated hosts, 16 units of 4 CPUs each.
    #[arg(long, default_value_t = 16)]
    hosts: usize,
}

pub async fn run(args: ApiArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let settings = super::bench_settings(dir.path(), args.database_url.clone(), true)?;
    let token = settings.admin_token.clone().unwrap_or_default();
    let running = server::start(&settings).await?;
    let base = running.url();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let prefix = token[..14].to_string();
    let ranges: Vec<String> = (0..16)
        .map(|i| format!("{}-{}", i * 4, i * 4 + 3))
        .collect();
    for i in 0..args.hosts {
        let body = json!({
            "hostname": format!("{prefix}-{i}"), "ip": "127.0.0.1",
            "region": "bench", "zone": prefix, "cpu_ranges": ranges,
        });
        let response = client
            .post(format!("{base}/api/admin/init_server"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "init_server answered {}: {}",
                response.status(),
                response.text().await?
            );
        }
    }
    let want = args.hosts * 16;
    let started = Instant::now();
    loop {
        let units: Vec<Value> = client
            .get(format!(
                "{base}/api/compute_units/?zone={prefix}&status=FREE"
            ))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if units.len() == want {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("only {} of {want} units became FREE", units.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "allocate + deallocate through HTTP, backend {}, {} hosts x 16 units, {} s per run",
        running.app.store().backend().name(),
        args.hosts,
        args.seconds
    );
    println!(
        "{:>8} {:>12} {:>14} {:>14} {:>14} {:>14} {:>8}",
        "clients",
        "round trips",
        "round trips/s",
        "alloc p50 ms",
        "alloc p99 ms",
        "dealloc p50 ms",
        "errors"
    );
    for &clients in &args.clients {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        let begun = Instant::now();
        for _ in 0..clients {
            let (client, base, token, prefix) =
                (client.clone(), base.clone(), token.clone(), prefix.clone());
            let (stop, errors) = (stop.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut alloc = Vec::new();
                let mut dealloc = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match round_trip(&client, &base, &token, &prefix).await {
                        Ok((a, d)) => {
                            alloc.push(a);
                            dealloc.push(d);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (alloc, dealloc)
            }));
        }
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut alloc = Vec::new();
        let mut dealloc = Vec::new();
        for task in tasks {
            let (a, d) = task.await.context("client task")?;
            alloc.extend(a);
            dealloc.extend(d);
        }
        let elapsed = begun.elapsed().as_secs_f64();
        alloc.sort_unstable();
        dealloc.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{:>8} {:>12} {:>14.0} {:>14.3} {:>14.3} {:>14.3} {:>8}",
            clients,
            alloc.len(),
            alloc.len() as f64 / elapsed,
            ms(quantile(&alloc, 0.5)),
            ms(quantile(&alloc, 0.99)),
            ms(quantile(&dealloc, 0.5)),
            errors.load(Ordering::Relaxed)
        );
    }
    for i in 0..args.hosts {
        let _ = client
            .delete(format!(
                "{base}/api/admin/decommission_server/{prefix}-{i}?force=true"
            ))
            .bearer_auth(&token)
            .send()
            .await;
    }
    running.shutdown().await
}

async fn round_trip(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    zone: &str,
) -> Result<(Duration, Duration)> {
    let body = json!({
        "cpu_count": 4, "zone": zone, "ssh_public_key": BENCH_SSH_KEY,
        "tags": {"deployment_id": "bench"},
    });
    let start = Instant::now();
    let response = client
        .post(format!("{base}/api/compute_units/allocate"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("allocate answered {}", response.status());
    }
    let unit: Value = response.json().await?;
    let allocated = start.elapsed();
    let id = unit["compute_id"].as_str().context("no compute_id")?;
    let start = Instant::now();
    let response = client
        .delete(format!("{base}/api/compute_units/deallocate/{id}"))
        .bearer_auth(token)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("deallocate answered {}", response.status());
    }
    Ok((allocated, start.elapsed()))
}
