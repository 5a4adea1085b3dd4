//! Placement decisions on a synthetic fleet of 64-CPU hosts, half
//! partitioned into Kloigos units and half pooled with two NUMA nodes, in
//! four regions, kept about 60% full while decisions are measured.

use super::quantile;
use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;
use tessera_core::placement::{Decision, HostInventory, PlacementEngine, Request, UnitSlot};
use tessera_core::range::parse_ranges;
use tessera_core::{ComputeId, CpuSet, HostId};

#[derive(clap::Args)]
pub struct PlacementArgs {
    /// Fleet sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000])]
    hosts: Vec<usize>,
    /// Decisions measured per fleet size.
    #[arg(long, default_value_t = 50_000)]
    decisions: usize,
}

const REGIONS: [&str; 4] = ["FIN-01", "FIN-02", "ICE-01", "NOR-01"];

fn fleet(n: usize) -> PlacementEngine {
    let units = parse_ranges(&[
        "0-3", "4-7", "8-11", "12-15", "16-23", "24-31", "32-39:2", "33-39:2", "40-47", "48-63",
    ])
    .unwrap_or_default();
    let mut engine = PlacementEngine::new();
    let images: std::sync::Arc<std::collections::BTreeSet<String>> = std::sync::Arc::new(
        ["debian-12", "tiny", "ubuntu-22.04", "ubuntu-24.04"]
            .map(String::from)
            .into(),
    );
    for i in 0..n {
        let id = format!("host-{i:06}");
        let partitioned = i % 2 == 0;
        let slots: Vec<UnitSlot> = if partitioned {
            units
                .iter()
                .map(|r| UnitSlot {
                    id: ComputeId::for_unit(&id, r),
                    cpus: r.cpus(),
                    free: true,
                })
                .collect()
        } else {
            Vec::new()
        };
        engine.upsert_host(HostInventory {
            id: HostId::new(id),
            region: REGIONS[i % REGIONS.len()].to_string(),
            zone: "a".to_string(),
            schedulable: true,
            cpus: (0..64).collect(),
            numa_nodes: vec![(0..32).collect::<CpuSet>(), (32..64).collect()],
            units: slots,
            held: CpuSet::new(),
            memory_mb: 64 * 8192,
            memory_held_mb: 0,
            runs_instances: true,
            arch: "amd64".into(),
            shared: Default::default(),
            // As a container host reports them: what each instance asks
            // for is checked against them.
            images: Some(images.clone()),
        });
    }
    engine
}

fn random_request(rng: &mut impl Rng) -> Request {
    let region = rng
        .random_bool(0.5)
        .then(|| REGIONS[rng.random_range(0..REGIONS.len())].to_string());
    if rng.random_bool(0.5) {
        Request::Unit {
            cpu_count: [4, 4, 4, 8, 16][rng.random_range(0..5)],
            region,
            zone: None,
        }
    } else {
        let count = [1, 2, 4, 8, 16][rng.random_range(0..5)];
        Request::Cpus {
            count,
            memory_mb: u64::from(count) * 4096,
            region,
            zone: None,
            whole_units: true,
            arch: Some("amd64".into()),
            share: None,
            image: Some("ubuntu-24.04".into()),
        }
    }
}

pub fn run(args: PlacementArgs) -> Result<()> {
    println!("placement decisions (engine only, one thread), fleet kept ~60% full");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10} {:>12}",
        "hosts", "decisions", "p50 µs", "p99 µs", "max µs", "placed %"
    );
    for &n in &args.hosts {
        let mut engine = fleet(n);
        let mut rng = StdRng::seed_from_u64(42);
        let capacity = n * 64;
        let mut live: Vec<Decision> = Vec::new();
        let mut held = 0usize;
        // Fill to 60%.
        while held * 10 < capacity * 6 {
            match engine.place(&random_request(&mut rng)) {
                Some(d) => {
                    held += d.cpus.len();
                    engine.apply(&d);
                    live.push(d);
                }
                None => break,
            }
        }
        let mut samples = Vec::with_capacity(args.decisions);
        let mut placed = 0usize;
        for _ in 0..args.decisions {
            let request = random_request(&mut rng);
            let start = Instant::now();
            let decision = engine.place(&request);
            samples.push(start.elapsed().as_nanos() as u64);
            if let Some(d) = decision {
                placed += 1;
                held += d.cpus.len();
                engine.apply(&d);
                live.push(d);
            }
            // Keep the fill steady: release a random live decision.
            while held * 10 > capacity * 6 && !live.is_empty() {
                let d = live.swap_remove(rng.random_range(0..live.len()));
                held -= d.cpus.len();
                engine.release(&d);
            }
        }
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        println!(
            "{:>8} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>12.1}",
            n,
            args.decisions,
            us(quantile(&samples, 0.50)),
            us(quantile(&samples, 0.99)),
            us(samples.last().copied().unwrap_or(0)),
            placed as f64 * 100.0 / args.decisions as f64
        );
    }
    Ok(())
}
