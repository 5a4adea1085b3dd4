//! A set of CPU ids, as a bitset.
//!
//! Hosts have at most a few thousand CPUs, so a bitset makes the set
//! operations placement runs in its inner loop (free = all - held, fits in a
//! NUMA node, runs of neighbours) a handful of word operations.

use std::fmt;

/// The largest CPU id Tessera accepts (Linux's `NR_CPUS` maximum is 8192;
/// real servers stay far below).
pub const MAX_CPU_ID: u32 = 8191;

#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CpuSet {
    /// Bit `i % 64` of word `i / 64` is CPU `i`. No trailing zero words, so
    /// that equal sets compare equal.
    words: Vec<u64>,
}

impl CpuSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `cpu`; answers whether it was absent. Panics above [`MAX_CPU_ID`],
    /// which parsing rejects before any set is built.
    pub fn insert(&mut self, cpu: u32) -> bool {
        assert!(cpu <= MAX_CPU_ID, "CPU id {cpu} above {MAX_CPU_ID}");
        let (w, b) = ((cpu / 64) as usize, cpu % 64);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let absent = self.words[w] & (1 << b) == 0;
        self.words[w] |= 1 << b;
        absent
    }

    /// Adds every CPU from `first` to `last`, a word at a time.
    pub fn insert_range(&mut self, first: u32, last: u32) {
        assert!(last <= MAX_CPU_ID, "CPU id {last} above {MAX_CPU_ID}");
        if first > last {
            return;
        }
        let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
        if self.words.len() <= lw {
            self.words.resize(lw + 1, 0);
        }
        for w in fw..=lw {
            let low = if w == fw { first % 64 } else { 0 };
            let high = if w == lw { last % 64 } else { 63 };
            let mask = (u64::MAX >> (63 - high)) & (u64::MAX << low);
            self.words[w] |= mask;
        }
    }

    pub fn remove(&mut self, cpu: u32) -> bool {
        let (w, b) = ((cpu / 64) as usize, cpu % 64);
        let Some(word) = self.words.get_mut(w) else {
            return false;
        };
        let present = *word & (1 << b) != 0;
        *word &= !(1 << b);
        self.trim();
        present
    }

    pub fn contains(&self, cpu: u32) -> bool {
        let (w, b) = ((cpu / 64) as usize, cpu % 64);
        self.words.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros();
                rest &= rest - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }

    pub fn first(&self) -> Option<u32> {
        self.iter().next()
    }

    pub fn union(&self, other: &CpuSet) -> CpuSet {
        let n = self.words.len().max(other.words.len());
        let words = (0..n)
            .map(|i| self.word(i) | other.word(i))
            .collect::<Vec<_>>();
        CpuSet { words }.trimmed()
    }

    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        let n = self.words.len().min(other.words.len());
        let words = (0..n)
            .map(|i| self.word(i) & other.word(i))
            .collect::<Vec<_>>();
        CpuSet { words }.trimmed()
    }

    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        let words = (0..self.words.len())
            .map(|i| self.word(i) & !other.word(i))
            .collect::<Vec<_>>();
        CpuSet { words }.trimmed()
    }

    pub fn is_disjoint(&self, other: &CpuSet) -> bool {
        self.words.iter().zip(&other.words).all(|(a, b)| a & b == 0)
    }

    pub fn is_subset(&self, other: &CpuSet) -> bool {
        (0..self.words.len()).all(|i| self.word(i) & !other.word(i) == 0)
    }

    /// Maximal runs of consecutive CPUs, as inclusive `(first, last)` pairs.
    pub fn runs(&self) -> Vec<(u32, u32)> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for cpu in self.iter() {
            match runs.last_mut() {
                Some((_, last)) if *last + 1 == cpu => *last = cpu,
                _ => runs.push((cpu, cpu)),
            }
        }
        runs
    }

    /// Kloigos's `cpu_list`: every CPU, comma-separated (`"0,2,4,6"`).
    pub fn to_list(&self) -> String {
        let mut out = String::new();
        for cpu in self.iter() {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&cpu.to_string());
        }
        out
    }

    /// Parses Linux's cpuset list format (`"0-3,8,10-11"`), which also reads
    /// Kloigos's expanded `cpu_list`.
    pub fn parse_list(text: &str) -> Result<CpuSet, String> {
        let mut set = CpuSet::new();
        if text.trim().is_empty() {
            return Ok(set);
        }
        // No list of this machine's CPUs needs more items than there are
        // CPU ids: more is a request built to cost its reader.
        let most = MAX_CPU_ID as usize + 1;
        if text.split(',').nth(most).is_some() {
            return Err(format!("a CPU list has at most {most} items"));
        }
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("{text:?} has an empty item between commas"));
            }
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let parse = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|&c| c <= MAX_CPU_ID)
                    .ok_or_else(|| format!("{part:?} is not a CPU or a CPU range"))
            };
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("{part:?} runs backwards"));
            }
            set.insert_range(a, b);
        }
        Ok(set)
    }

    fn word(&self, i: usize) -> u64 {
        self.words.get(i).copied().unwrap_or(0)
    }

    fn trim(&mut self) {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }

    fn trimmed(mut self) -> Self {
        self.trim();
        self
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut set = CpuSet::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
    }
}

/// Linux's compact cpuset format (`0-3,8`), as cgroups' `cpuset.cpus` takes it.
/// On the wire a set is its Linux list (`"0-3,8"`), as in `cpuset.cpus`.
impl serde::Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for CpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CpuSet::parse_list(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, b)) in self.runs().into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let a: CpuSet = [0, 1, 2, 3, 64, 65].into_iter().collect();
        let b: CpuSet = [2, 3, 4, 64].into_iter().collect();
        assert_eq!(a.len(), 6);
        assert_eq!(a.union(&b).to_string(), "0-4,64-65");
        assert_eq!(a.intersection(&b).to_string(), "2-3,64");
        assert_eq!(a.difference(&b).to_string(), "0-1,65");
        assert!(!a.is_disjoint(&b));
        assert!(a.intersection(&b).is_subset(&a));
        assert!(!b.is_subset(&a));
        assert_eq!(a.runs(), vec![(0, 3), (64, 65)]);
        assert_eq!(a.to_list(), "0,1,2,3,64,65");
    }

    #[test]
    fn ranges_fill_a_word_at_a_time_as_one_by_one() {
        for (first, last) in [
            (0, 0),
            (0, 63),
            (1, 62),
            (60, 70),
            (63, 64),
            (5, 200),
            (0, 8191),
        ] {
            let mut by_range = CpuSet::new();
            by_range.insert_range(first, last);
            let one_by_one: CpuSet = (first..=last).collect();
            assert_eq!(by_range, one_by_one, "{first}-{last}");
            assert_eq!(by_range.len(), (last - first + 1) as usize);
        }
        let mut grown: CpuSet = [3, 300].into_iter().collect();
        grown.insert_range(100, 130);
        assert_eq!(grown.to_string(), "3,100-130,300");
    }

    #[test]
    fn a_list_has_at_most_as_many_items_as_cpu_ids() {
        let most = MAX_CPU_ID as usize + 1;
        let every: Vec<String> = (0..most).map(|c| c.to_string()).collect();
        assert_eq!(
            CpuSet::parse_list(&every.join(",")).map(|s| s.len()),
            Ok(most)
        );
        let over = vec!["0-8191"; most + 1].join(",");
        assert!(CpuSet::parse_list(&over).is_err());
    }

    #[test]
    fn equal_sets_compare_equal_after_removal() {
        let mut a: CpuSet = [1, 100].into_iter().collect();
        a.remove(100);
        assert_eq!(a, [1].into_iter().collect());
        assert!(!a.contains(100));
        a.remove(1);
        assert!(a.is_empty());
    }

    #[test]
    fn parses_linux_lists() {
        assert_eq!(CpuSet::parse_list("0-3,8").map(|s| s.len()), Ok(5));
        assert_eq!(
            CpuSet::parse_list("0,2,4,6").map(|s| s.to_string()),
            Ok("0,2,4,6".to_string())
        );
        assert!(CpuSet::parse_list("3-1").is_err());
        assert!(CpuSet::parse_list("x").is_err());
        // Linux's list format: no empty items; an empty list is the empty set.
        assert!(CpuSet::parse_list("0-3,,4").is_err());
        assert!(CpuSet::parse_list("0-3,").is_err());
        assert_eq!(CpuSet::parse_list(" \n").map(|s| s.len()), Ok(0));
        assert_eq!(CpuSet::parse_list("0-1\n").map(|s| s.len()), Ok(2));
    }
}
