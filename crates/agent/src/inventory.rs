//! What a host has, read from the kernel: online CPUs and their NUMA nodes
//! (`/sys/devices/system`), memory (`/proc/meminfo`), free disk where the
//! agent keeps instances, and GPUs when `nvidia-smi` is there.

use std::path::Path;
use tessera_agent_api::protocol::{Gpu, Inventory};
use tessera_core::CpuSet;

/// Reads the host's inventory. `reserved` CPUs are kept for the host itself
/// and offered to no instance.
pub fn discover(state_dir: &Path, reserved: &CpuSet) -> anyhow::Result<Inventory> {
    let online = read_cpu_list(Path::new("/sys/devices/system/cpu/online"))?;
    let cpus = online.difference(reserved);
    let numa_nodes = numa_nodes(&online)
        .into_iter()
        .map(|node| node.intersection(&cpus))
        .filter(|node| !node.is_empty())
        .collect();
    Ok(Inventory {
        cpus,
        numa_nodes,
        reserved_cpus: reserved.intersection(&online),
        memory_mb: memory_mb()?,
        disk_gb: disk_gb(state_dir),
        gpus: gpus(),
        images: None,
        arch: tessera_agent_api::protocol::this_arch(),
        isolation: None,
    })
}

fn read_cpu_list(path: &Path) -> anyhow::Result<CpuSet> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    CpuSet::parse_list(text.trim())
        .map_err(|e| anyhow::anyhow!("{} is not a CPU list: {e}", path.display()))
}

/// Each NUMA node's CPUs; one node with every CPU where the kernel shows no
/// nodes.
fn numa_nodes(online: &CpuSet) -> Vec<CpuSet> {
    let mut nodes: Vec<(u32, CpuSet)> = std::fs::read_dir("/sys/devices/system/node")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let index: u32 = name.strip_prefix("node")?.parse().ok()?;
            let cpus = read_cpu_list(&entry.path().join("cpulist")).ok()?;
            Some((index, cpus.intersection(online)))
        })
        .filter(|(_, cpus)| !cpus.is_empty())
        .collect();
    nodes.sort_by_key(|(index, _)| *index);
    match nodes.is_empty() {
        true => vec![online.clone()],
        false => nodes.into_iter().map(|(_, cpus)| cpus).collect(),
    }
}

fn memory_mb() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|line| {
            let kb = line.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kb.trim().parse::<u64>().ok()
        })
        .map(|kb| kb / 1024)
        .ok_or_else(|| anyhow::anyhow!("/proc/meminfo has no MemTotal"))
}

/// Free space on the file system of the state directory, in GB.
fn disk_gb(state_dir: &Path) -> u64 {
    let probe = std::iter::successors(Some(state_dir), |p| p.parent()).find(|p| p.exists());
    probe
        .and_then(|p| nix::sys::statvfs::statvfs(p).ok())
        .map(|s| s.blocks_available() * s.fragment_size() / 1_000_000_000)
        .unwrap_or(0)
}

/// GPUs `nvidia-smi` lists; none where it is absent or fails.
fn gpus() -> Vec<Gpu> {
    let output = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,memory.total",
            "--format=csv,noheader,nounits",
        ])
        .output();
    let Ok(output) = output else {
        return Vec::new();
    };
    if !output.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (model, memory) = line.rsplit_once(',')?;
            Some(Gpu {
                model: model.trim().to_string(),
                memory_mb: memory.trim().parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_cpus_are_offered_to_no_instance() {
        let all = discover(Path::new("/tmp"), &CpuSet::new()).expect("inventory");
        assert!(!all.cpus.is_empty());
        assert!(all.memory_mb > 0);
        let first = all.cpus.iter().next().expect("a CPU");
        let reserved: CpuSet = [first].into_iter().collect();
        let less = discover(Path::new("/tmp"), &reserved).expect("inventory");
        assert!(!less.cpus.contains(first));
        assert_eq!(less.reserved_cpus, reserved);
        assert_eq!(less.cpus.len() + 1, all.cpus.len());
    }
}
