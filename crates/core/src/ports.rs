//! Port ranges of compute units.
//!
//! The formula: order a host's units by their lowest CPU; unit `i` gets
//! `PORTS_PER_CPU` ports for each of its CPUs, starting where unit `i-1`'s
//! block ended, from `FIRST_PORT`. So `start_i = 1500 + 125 * (CPUs of the
//! units before i)` and `end_i = start_i + 125 * cpu_count_i - 1`: `"0-3"` gets
//! 1500-1999 and `"4-7"` 2000-2499, as in later Kloigos versions. The blocks are
//! consecutive, so no two units of a host ever share a port (early Kloigos
//! derived ports from the last digit of the CPU list and could collide).

use crate::CpuRange;
use std::fmt;

pub const FIRST_PORT: u32 = 1500;
pub const PORTS_PER_CPU: u32 = 125;
/// The most CPUs one host can have in units: 512 * 125 + 1500 = 65,500.
pub const MAX_UNIT_CPUS_PER_HOST: u32 = (65535 - FIRST_PORT + 1) / PORTS_PER_CPU;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the units have {cpus} CPUs in all, but at most {MAX_UNIT_CPUS_PER_HOST} fit the port space ({PORTS_PER_CPU} ports per CPU from port {FIRST_PORT})"
)]
pub struct PortSpaceExhausted {
    pub cpus: u32,
}

/// The port range of each unit, in the order the units were given.
pub fn unit_port_ranges(units: &[CpuRange]) -> Result<Vec<PortRange>, PortSpaceExhausted> {
    let total: u32 = units.iter().map(CpuRange::cpu_count).sum();
    if total > MAX_UNIT_CPUS_PER_HOST {
        return Err(PortSpaceExhausted { cpus: total });
    }
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by_key(|&i| (units[i].start(), units[i].step()));
    let mut ranges = vec![PortRange { start: 0, end: 0 }; units.len()];
    let mut next = FIRST_PORT;
    for i in order {
        let len = units[i].cpu_count() * PORTS_PER_CPU;
        // Both bounds fit in u16: total CPUs were checked above.
        ranges[i] = PortRange {
            start: next as u16,
            end: (next + len - 1) as u16,
        };
        next += len;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::parse_ranges;

    #[test]
    fn matches_kloigos_and_never_overlaps() {
        let units = parse_ranges(&["4-7", "0-3", "8-15", "16-23:2", "17-23:2"]).expect("ranges");
        let ports = unit_port_ranges(&units).expect("fits");
        assert_eq!(ports[1].to_string(), "1500-1999");
        assert_eq!(ports[0].to_string(), "2000-2499");
        assert_eq!(ports[2].to_string(), "2500-3499");
        for (i, a) in ports.iter().enumerate() {
            for b in &ports[i + 1..] {
                assert!(a.end < b.start || b.end < a.start, "{a} overlaps {b}");
            }
        }
    }

    #[test]
    fn refuses_more_cpus_than_ports() {
        let units = parse_ranges(&["0-511", "512-512"]).expect("ranges");
        assert_eq!(
            unit_port_ranges(&units),
            Err(PortSpaceExhausted { cpus: 513 })
        );
        let units = parse_ranges(&["0-511"]).expect("ranges");
        assert_eq!(
            unit_port_ranges(&units).expect("fits")[0].to_string(),
            "1500-65499"
        );
    }
}
