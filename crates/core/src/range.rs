//! Kloigos's CPU range syntax, `start-end[:step]`: `"0-3"` is CPUs 0..=3 and
//! `"0-7:2"` is CPUs 0, 2, 4 and 6.
//!
//! A range prints exactly as it was written (the compute id is built from the
//! text), so only the canonical spelling is accepted: no leading zeros, no
//! spaces, no sign.

use crate::cpuset::{CpuSet, MAX_CPU_ID};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CpuRange {
    start: u32,
    end: u32,
    /// `None` when the text had no `:step`; it then prints without one.
    step: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpuRangeError {
    #[error("CPU range {range:?} is malformed: {reason}")]
    Malformed { range: String, reason: String },
    #[error("CPU ranges {first:?} and {second:?} overlap on CPU {cpu}")]
    Overlap {
        first: String,
        second: String,
        cpu: u32,
    },
    #[error("at least one CPU range is required")]
    Empty,
}

impl CpuRange {
    pub fn start(&self) -> u32 {
        self.start
    }

    pub fn end(&self) -> u32 {
        self.end
    }

    pub fn step(&self) -> u32 {
        self.step.unwrap_or(1)
    }

    pub fn cpus(&self) -> CpuSet {
        (self.start..=self.end)
            .step_by(self.step() as usize)
            .collect()
    }

    pub fn cpu_count(&self) -> u32 {
        (self.end - self.start) / self.step() + 1
    }

    /// The unit's name on its host, which is also its Linux user: `c` and the
    /// range with `:` made `-` (`"0-7:2"` -> `c0-7-2`).
    pub fn unit_name(&self) -> String {
        format!("c{}", self.to_string().replace(':', "-"))
    }
}

impl FromStr for CpuRange {
    type Err = CpuRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| CpuRangeError::Malformed {
            range: text.to_string(),
            reason: reason.to_string(),
        };
        let (span, step) = match text.split_once(':') {
            Some((span, step)) => (span, Some(step)),
            None => (text, None),
        };
        let Some((start, end)) = span.split_once('-') else {
            return Err(bad(
                "expected start-end or start-end:step, e.g. \"0-3\" or \"0-7:2\"",
            ));
        };
        let number = |s: &str, what: &str| -> Result<u32, CpuRangeError> {
            let canonical = !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && (s == "0" || !s.starts_with('0'));
            if !canonical {
                return Err(bad(&format!("{what} {s:?} is not a plain decimal number")));
            }
            s.parse::<u32>()
                .ok()
                .filter(|&n| n <= MAX_CPU_ID)
                .ok_or_else(|| {
                    bad(&format!(
                        "{what} {s} is above the largest CPU id, {MAX_CPU_ID}"
                    ))
                })
        };
        let start = number(start, "start")?;
        let end = number(end, "end")?;
        let step = step.map(|s| number(s, "step")).transpose()?;
        if start > end {
            return Err(bad("start is after end"));
        }
        if step == Some(0) {
            return Err(bad("step must be at least 1"));
        }
        Ok(CpuRange { start, end, step })
    }
}

impl fmt::Display for CpuRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)?;
        if let Some(step) = self.step {
            write!(f, ":{step}")?;
        }
        Ok(())
    }
}

/// Parses a host's list of ranges and checks that no CPU is in two of them.
pub fn parse_ranges<S: AsRef<str>>(texts: &[S]) -> Result<Vec<CpuRange>, CpuRangeError> {
    if texts.is_empty() {
        return Err(CpuRangeError::Empty);
    }
    let ranges = texts
        .iter()
        .map(|t| t.as_ref().parse::<CpuRange>())
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = CpuSet::new();
    for (i, range) in ranges.iter().enumerate() {
        let cpus = range.cpus();
        if !cpus.is_disjoint(&seen) {
            // Name the earlier range that holds the first shared CPU.
            let cpu = cpus.intersection(&seen).first().unwrap_or(range.start);
            let first = ranges[..i]
                .iter()
                .find(|r| r.cpus().contains(cpu))
                .map(ToString::to_string)
                .unwrap_or_default();
            return Err(CpuRangeError::Overlap {
                first,
                second: range.to_string(),
                cpu,
            });
        }
        seen = seen.union(&cpus);
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> CpuRange {
        s.parse().expect("valid range")
    }

    #[test]
    fn parses_and_prints_exactly() {
        for text in ["0-3", "0-7:2", "4-7", "0-3:1", "5-5", "10-31:3"] {
            assert_eq!(r(text).to_string(), text);
        }
        assert_eq!(r("0-7:2").cpus().to_list(), "0,2,4,6");
        assert_eq!(r("0-7:2").cpu_count(), 4);
        assert_eq!(r("0-3").cpus().to_list(), "0,1,2,3");
        assert_eq!(r("10-31:3").cpu_count(), 8);
        assert_eq!(r("0-7:2").unit_name(), "c0-7-2");
    }

    #[test]
    fn rejects_malformed_ranges_naming_them() {
        for text in [
            "", "3", "a-b", "3-1", "0-7:0", "01-3", " 0-3", "0-3 ", "-1-3", "0--3", "0-3:",
            "0-3:x", "0-99999", "0-3:2:1",
        ] {
            let err = text.parse::<CpuRange>().expect_err(text);
            assert!(
                err.to_string().contains(&format!("{text:?}")),
                "{err} should name {text:?}"
            );
        }
    }

    #[test]
    fn overlapping_ranges_are_named() {
        let err = parse_ranges(&["0-3", "8-15", "2-5"]).expect_err("overlap");
        assert_eq!(
            err,
            CpuRangeError::Overlap {
                first: "0-3".into(),
                second: "2-5".into(),
                cpu: 2
            }
        );
        // Interleaved strides do not overlap.
        assert!(parse_ranges(&["0-7:2", "1-7:2"]).is_ok());
        assert!(matches!(
            parse_ranges::<&str>(&[]),
            Err(CpuRangeError::Empty)
        ));
    }
}
