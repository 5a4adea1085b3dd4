//! The placement engine: given a view of the hosts, decide where a request
//! goes. Pure and in memory.
//!
//! The engine only decides. The caller commits a decision to the store with a
//! conflict check (the per-CPU ledger's unique key) and, when the commit loses
//! a race, refreshes that host's view and asks again. So the engine's view may
//! be stale without any CPU ever being handed out twice.
//!
//! Policies:
//! - hosts are packed: the fitting host with the fewest free CPUs wins, which
//!   keeps whole hosts free for large requests (ties go to the lower host id);
//!   a host the caller says is busy (a claim on it is being committed) is
//!   passed over for the next fitting one, and taken only when every
//!   fitting host is busy: concurrent claims then land on different hosts,
//!   instead of queueing on one host's row lock in the store (a shared-CPU
//!   instance still goes to a CPU shared already, busy or not);
//! - a Kloigos unit request takes a free unit of exactly `cpu_count` CPUs;
//! - on a partitioned host an instance takes the smallest free unit that fits;
//! - on a pooled host an instance gets exclusive CPUs inside one NUMA node
//!   when one has room (the fullest such node), chosen from the free runs of
//!   neighbouring CPUs so as to leave the fewest fragments;
//! - a shared-CPU instance (a fraction of a CPU, enforced as a quota) goes on
//!   a host's shared CPU that has room, the fullest first, and only when
//!   none has, makes a free CPU shared. A shared CPU is held in the same
//!   ledger as exclusive ones, so no shared instance ever runs on a CPU
//!   another instance has to itself, nor the reverse;
//! - an instance type's architecture must be its host's;
//! - an instance of an image its host must have (one no registry reference
//!   lets the host pull) goes only where the host said it has that image.

use crate::{ComputeId, CpuSet, HostId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// One host as placement sees it.
#[derive(Clone, Debug)]
pub struct HostInventory {
    pub id: HostId,
    pub region: String,
    pub zone: String,
    /// Whether new work may land here (a host being prepared or retired
    /// takes none).
    pub schedulable: bool,
    pub cpus: CpuSet,
    /// The host's NUMA nodes; empty means one node holding every CPU.
    pub numa_nodes: Vec<CpuSet>,
    /// A partitioned host's fixed units (Kloigos `cpu_ranges`); empty for a
    /// pooled host.
    pub units: Vec<UnitSlot>,
    /// CPUs held by allocations.
    pub held: CpuSet,
    pub memory_mb: u64,
    pub memory_held_mb: u64,
    /// Whether instances may run here (a host whose agent serves Kloigos
    /// units only takes unit requests).
    pub runs_instances: bool,
    /// Its CPU architecture: `amd64`, `arm64`.
    pub arch: String,
    /// Its shared CPUs, each with the thousandths of it that shared-CPU
    /// instances hold (at most [`CPU_MILLIS`]). They are in `held` too.
    pub shared: BTreeMap<u32, u32>,
    /// The images the host has, as its agent last said; `None` when it
    /// says none (a simulated host, a driver that needs no image): any.
    pub images: Option<Arc<BTreeSet<String>>>,
}

/// A whole CPU, in the thousandths shared-CPU instances are measured in.
pub const CPU_MILLIS: u32 = 1000;

#[derive(Clone, Debug)]
pub struct UnitSlot {
    pub id: ComputeId,
    pub cpus: CpuSet,
    pub free: bool,
}

impl HostInventory {
    pub fn is_partitioned(&self) -> bool {
        !self.units.is_empty()
    }

    pub fn free_cpus(&self) -> CpuSet {
        if self.is_partitioned() {
            self.units
                .iter()
                .filter(|u| u.free)
                .fold(CpuSet::new(), |acc, u| acc.union(&u.cpus))
        } else {
            self.cpus.difference(&self.held)
        }
    }

    fn in_location(&self, region: Option<&str>, zone: Option<&str>) -> bool {
        region.is_none_or(|r| r == self.region) && zone.is_none_or(|z| z == self.zone)
    }

    /// Whether an instance of `image` can run here.
    pub fn has_image(&self, image: &str) -> bool {
        self.images.as_ref().is_none_or(|have| have.contains(image))
    }

    /// The shared CPU with room for `millis` that has the least room left
    /// (of the host's CPUs: one taken out of scheduling takes no more).
    fn shared_cpu_for(&self, millis: u32) -> Option<u32> {
        self.shared
            .iter()
            .filter(|(cpu, used)| **used + millis <= CPU_MILLIS && self.cpus.contains(**cpu))
            .max_by_key(|(cpu, used)| (**used, std::cmp::Reverse(**cpu)))
            .map(|(cpu, _)| *cpu)
    }
}

/// What is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A Kloigos compute unit of exactly `cpu_count` CPUs.
    Unit {
        cpu_count: u32,
        region: Option<String>,
        zone: Option<String>,
    },
    /// An instance's CPUs and memory: `count` exclusive CPUs, or with
    /// `share`, that many thousandths of one shared CPU.
    Cpus {
        count: u32,
        memory_mb: u64,
        region: Option<String>,
        zone: Option<String>,
        /// Whether a partitioned host's whole unit may be taken; without,
        /// only pooled hosts are considered.
        whole_units: bool,
        /// The host architecture it needs; `None`: any.
        arch: Option<String>,
        /// A shared-CPU instance's share of a CPU, in thousandths (1 to
        /// [`CPU_MILLIS`]).
        share: Option<u32>,
        /// The image its host must have; `None`: any host will do (the
        /// host pulls it, or needs none).
        image: Option<String>,
    },
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub host: HostId,
    /// Set when the request took a whole unit of a partitioned host.
    pub unit: Option<ComputeId>,
    pub cpus: CpuSet,
    pub memory_mb: u64,
    /// A shared-CPU instance's share of `cpus` (one shared CPU).
    pub share: Option<u32>,
}

/// The engine's view of the fleet.
///
/// Indexes keep a decision from scanning the fleet: schedulable hosts by free
/// CPU count (for best fit), under every scope a request can name (anywhere,
/// the host's region, its zone) and its architecture or any; and hosts with a
/// free unit of each size, by scope. A request walks only the hosts of its
/// zone or region and architecture, so asking for a place a fleet does not
/// have costs as little as finding one.
#[derive(Default)]
pub struct PlacementEngine {
    hosts: BTreeMap<HostId, HostInventory>,
    by_free: HashMap<(Scope, Option<String>), BestFit>,
    by_free_unit: HashMap<(usize, Scope), BestFit>,
    /// Schedulable hosts with a shared CPU that has some room left.
    with_shared_room: BTreeSet<HostId>,
}

/// Hosts ordered by free CPUs, fewest first: `(free CPUs, host)`.
type BestFit = BTreeSet<(usize, HostId)>;

/// The hosts an index entry covers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    Anywhere,
    Region(String),
    Zone(String),
}

impl Scope {
    /// The narrowest scope a request names: its zone, else its region.
    fn of(region: Option<&str>, zone: Option<&str>) -> Self {
        match (zone, region) {
            (Some(zone), _) => Self::Zone(zone.to_string()),
            (None, Some(region)) => Self::Region(region.to_string()),
            (None, None) => Self::Anywhere,
        }
    }

    /// Every scope `host` is in.
    fn all_of(host: &HostInventory) -> [Self; 3] {
        [
            Self::Anywhere,
            Self::Region(host.region.clone()),
            Self::Zone(host.zone.clone()),
        ]
    }
}

impl PlacementEngine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn hosts(&self) -> impl Iterator<Item = &HostInventory> {
        self.hosts.values()
    }

    pub fn host(&self, id: &HostId) -> Option<&HostInventory> {
        self.hosts.get(id)
    }

    /// Adds a host or replaces the view of it.
    pub fn upsert_host(&mut self, host: HostInventory) {
        self.remove_host(&host.id);
        self.index(&host, true);
        self.hosts.insert(host.id.clone(), host);
    }

    pub fn remove_host(&mut self, id: &HostId) -> Option<HostInventory> {
        let old = self.hosts.remove(id)?;
        self.index(&old, false);
        Some(old)
    }

    /// Adds `host` to the indexes, or takes it out.
    fn index(&mut self, host: &HostInventory, add: bool) {
        if !host.schedulable {
            return;
        }
        if host.shared.values().any(|used| *used < CPU_MILLIS) {
            if add {
                self.with_shared_room.insert(host.id.clone());
            } else {
                self.with_shared_room.remove(&host.id);
            }
        }
        let free = host.free_cpus().len();
        let entry = (free, host.id.clone());
        let sizes: BTreeSet<usize> = host
            .units
            .iter()
            .filter(|u| u.free)
            .map(|u| u.cpus.len())
            .collect();
        let change = |set: &mut BestFit| match add {
            true => set.insert(entry.clone()),
            false => set.remove(&entry),
        };
        for scope in Scope::all_of(host) {
            for &size in &sizes {
                change(self.by_free_unit.entry((size, scope.clone())).or_default());
            }
            for arch in [None, Some(host.arch.clone())] {
                change(self.by_free.entry((scope.clone(), arch)).or_default());
            }
        }
    }

    /// Decides where `request` goes, or `None` when no host has room.
    pub fn place(&self, request: &Request) -> Option<Decision> {
        self.place_avoiding(request, |_| false)
    }

    /// [`PlacementEngine::place`], passing over the hosts `busy` names while
    /// another fitting host is not busy.
    pub fn place_avoiding(
        &self,
        request: &Request,
        busy: impl Fn(&HostId) -> bool,
    ) -> Option<Decision> {
        if let Request::Cpus {
            share: Some(millis),
            region,
            zone,
            ..
        } = request
        {
            // A shared CPU with room first, so free CPUs stay whole.
            let on_shared = self
                .with_shared_room
                .iter()
                .filter_map(|id| self.hosts.get(id))
                .filter(|h| h.in_location(region.as_deref(), zone.as_deref()))
                .filter(|h| h.shared_cpu_for(*millis).is_some())
                .filter_map(|host| place_on(host, request))
                .min_by_key(|d| {
                    (
                        busy(&d.host),
                        self.hosts.get(&d.host).map(|h| h.free_cpus().len()),
                        d.host.clone(),
                    )
                });
            if on_shared.is_some() {
                return on_shared;
            }
        }
        let (candidates, need, region, zone) = match request {
            Request::Unit {
                cpu_count,
                region,
                zone,
            } => (
                self.by_free_unit.get(&(
                    *cpu_count as usize,
                    Scope::of(region.as_deref(), zone.as_deref()),
                )),
                *cpu_count,
                region,
                zone,
            ),
            Request::Cpus {
                count,
                region,
                zone,
                share,
                arch,
                ..
            } => (
                self.by_free
                    .get(&(Scope::of(region.as_deref(), zone.as_deref()), arch.clone())),
                if share.is_some() { 1 } else { *count },
                region,
                zone,
            ),
        };
        let start = (need as usize, HostId::new(String::new()));
        let mut fitting = candidates?
            .range(start..)
            .filter_map(|(_, id)| self.hosts.get(id))
            .filter(|h| h.in_location(region.as_deref(), zone.as_deref()))
            .filter_map(|host| place_on(host, request));
        // Busy hosts are few (one per claim under way), so this looks at a
        // handful of hosts past the packed choice at most.
        let first = fitting.next()?;
        if !busy(&first.host) {
            return Some(first);
        }
        Some(fitting.find(|d| !busy(&d.host)).unwrap_or(first))
    }

    /// Records a committed decision in the view.
    pub fn apply(&mut self, decision: &Decision) {
        self.update(&decision.host, |host| {
            set_unit_free(host, decision.unit.as_ref(), false);
            host.held = host.held.union(&decision.cpus);
            host.memory_held_mb += decision.memory_mb;
            if let Some(millis) = decision.share {
                for cpu in decision.cpus.iter() {
                    *host.shared.entry(cpu).or_default() += millis;
                }
            }
        });
    }

    /// Returns a decision's resources to the view.
    pub fn release(&mut self, decision: &Decision) {
        self.update(&decision.host, |host| {
            set_unit_free(host, decision.unit.as_ref(), true);
            host.memory_held_mb = host.memory_held_mb.saturating_sub(decision.memory_mb);
            match decision.share {
                None => host.held = host.held.difference(&decision.cpus),
                Some(millis) => {
                    for cpu in decision.cpus.iter() {
                        let left = host
                            .shared
                            .get(&cpu)
                            .map_or(0, |used| used.saturating_sub(millis));
                        if left == 0 {
                            host.shared.remove(&cpu);
                            host.held.remove(cpu);
                        } else {
                            host.shared.insert(cpu, left);
                        }
                    }
                }
            }
        });
    }

    fn update(&mut self, id: &HostId, change: impl FnOnce(&mut HostInventory)) {
        if let Some(mut host) = self.remove_host(id) {
            change(&mut host);
            self.upsert_host(host);
        }
    }
}

fn set_unit_free(host: &mut HostInventory, unit: Option<&ComputeId>, free: bool) {
    if let Some(slot) = unit.and_then(|id| host.units.iter_mut().find(|u| &u.id == id)) {
        slot.free = free;
    }
}

fn place_on(host: &HostInventory, request: &Request) -> Option<Decision> {
    match request {
        Request::Unit { cpu_count, .. } => host
            .units
            .iter()
            .filter(|u| u.free && u.cpus.len() == *cpu_count as usize)
            .min_by_key(|u| u.cpus.first())
            .map(|u| Decision {
                host: host.id.clone(),
                unit: Some(u.id.clone()),
                cpus: u.cpus.clone(),
                memory_mb: 0,
                share: None,
            }),
        Request::Cpus {
            count,
            memory_mb,
            whole_units,
            arch,
            share,
            image,
            ..
        } => {
            if !host.runs_instances || host.memory_held_mb + memory_mb > host.memory_mb {
                return None;
            }
            if arch.as_ref().is_some_and(|a| *a != host.arch) {
                return None;
            }
            if image.as_ref().is_some_and(|i| !host.has_image(i)) {
                return None;
            }
            if let Some(millis) = share {
                // Shared CPUs are a pooled host's.
                if host.is_partitioned() || *millis == 0 || *millis > CPU_MILLIS {
                    return None;
                }
                let cpu = match host.shared_cpu_for(*millis) {
                    Some(cpu) => cpu,
                    None => choose_cpus(&host.free_cpus(), &host.numa_nodes, 1)?.first()?,
                };
                return Some(Decision {
                    host: host.id.clone(),
                    unit: None,
                    cpus: std::iter::once(cpu).collect(),
                    memory_mb: *memory_mb,
                    share: Some(*millis),
                });
            }
            if host.is_partitioned() {
                if !whole_units {
                    return None;
                }
                return host
                    .units
                    .iter()
                    .filter(|u| u.free && u.cpus.len() >= *count as usize)
                    .min_by_key(|u| (u.cpus.len(), u.cpus.first()))
                    .map(|u| Decision {
                        host: host.id.clone(),
                        unit: Some(u.id.clone()),
                        cpus: u.cpus.clone(),
                        memory_mb: *memory_mb,
                        share: None,
                    });
            }
            choose_cpus(&host.free_cpus(), &host.numa_nodes, *count as usize).map(|cpus| Decision {
                host: host.id.clone(),
                unit: None,
                cpus,
                memory_mb: *memory_mb,
                share: None,
            })
        }
    }
}

/// Picks `n` CPUs from `free`, inside one NUMA node when one has room.
pub fn choose_cpus(free: &CpuSet, numa_nodes: &[CpuSet], n: usize) -> Option<CpuSet> {
    if n == 0 || free.len() < n {
        return None;
    }
    if numa_nodes.is_empty() {
        return Some(choose_in(free, n));
    }
    let mut per_node: Vec<CpuSet> = numa_nodes
        .iter()
        .map(|node| free.intersection(node))
        .collect();
    // The fullest node that still fits keeps the emptier nodes for larger sets.
    if let Some(node) = per_node
        .iter()
        .filter(|f| f.len() >= n)
        .min_by_key(|f| (f.len(), f.first()))
    {
        return Some(choose_in(node, n));
    }
    // No node has room: span as few nodes as possible, emptiest first.
    per_node.sort_by_key(|f| std::cmp::Reverse(f.len()));
    let mut chosen = CpuSet::new();
    for node in per_node {
        let want = n - chosen.len();
        if want == 0 {
            break;
        }
        chosen = chosen.union(&choose_in(&node, want.min(node.len())));
    }
    // CPUs in no declared node count too, so a partial NUMA map never strands them.
    let rest = n - chosen.len();
    if rest > 0 {
        let outside = free.difference(&chosen);
        chosen = chosen.union(&choose_in(&outside, rest.min(outside.len())));
    }
    (chosen.len() == n).then_some(chosen)
}

/// Picks `n` of `free` leaving the fewest fragments: the smallest run of
/// neighbours that holds `n`, else whole runs from the largest down.
fn choose_in(free: &CpuSet, n: usize) -> CpuSet {
    let runs = free.runs();
    let len = |(a, b): (u32, u32)| (b - a + 1) as usize;
    if let Some(&(a, _)) = runs
        .iter()
        .filter(|&&r| len(r) >= n)
        .min_by_key(|&&r| (len(r), r.0))
    {
        return (a..a + n as u32).collect();
    }
    let mut sorted = runs;
    sorted.sort_by_key(|&r| (std::cmp::Reverse(len(r)), r.0));
    let mut chosen = CpuSet::new();
    for (a, b) in sorted {
        for cpu in a..=b {
            if chosen.len() == n {
                return chosen;
            }
            chosen.insert(cpu);
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::CpuRange;

    fn set(text: &str) -> CpuSet {
        CpuSet::parse_list(text).expect("cpu list")
    }

    fn pooled(id: &str, cpus: &str, numa: &[&str]) -> HostInventory {
        HostInventory {
            id: HostId::new(id),
            region: "r1".into(),
            zone: "z1".into(),
            schedulable: true,
            cpus: set(cpus),
            numa_nodes: numa.iter().map(|n| set(n)).collect(),
            units: vec![],
            held: CpuSet::new(),
            memory_mb: 1 << 20,
            memory_held_mb: 0,
            runs_instances: true,
            arch: "amd64".into(),
            shared: BTreeMap::new(),
            images: None,
        }
    }

    fn partitioned(id: &str, ranges: &[&str]) -> HostInventory {
        let units: Vec<UnitSlot> = ranges
            .iter()
            .map(|r| {
                let range: CpuRange = r.parse().expect("range");
                UnitSlot {
                    id: ComputeId::for_unit(id, &range),
                    cpus: range.cpus(),
                    free: true,
                }
            })
            .collect();
        let cpus = units.iter().fold(CpuSet::new(), |a, u| a.union(&u.cpus));
        HostInventory {
            units,
            cpus,
            ..pooled(id, "", &[])
        }
    }

    fn unit(n: u32) -> Request {
        Request::Unit {
            cpu_count: n,
            region: None,
            zone: None,
        }
    }

    fn cpus(n: u32) -> Request {
        Request::Cpus {
            count: n,
            memory_mb: 0,
            region: None,
            zone: None,
            whole_units: true,
            arch: None,
            share: None,
            image: None,
        }
    }

    fn shared(millis: u32, arch: &str) -> Request {
        Request::Cpus {
            count: 1,
            memory_mb: 0,
            region: None,
            zone: None,
            whole_units: false,
            arch: Some(arch.into()),
            share: Some(millis),
            image: None,
        }
    }

    #[test]
    fn shared_instances_fill_a_shared_cpu_and_never_touch_exclusive_ones() {
        let mut engine = PlacementEngine::new();
        engine.upsert_host(pooled("h1", "0-3", &[]));
        // Two exclusive CPUs, then half CPUs: they share one CPU, the next
        // free one.
        let exclusive = engine.place(&cpus(2)).expect("exclusive");
        engine.apply(&exclusive);
        let a = engine.place(&shared(500, "amd64")).expect("a");
        engine.apply(&a);
        let b = engine.place(&shared(500, "amd64")).expect("b");
        engine.apply(&b);
        assert!(a.cpus.intersection(&exclusive.cpus).is_empty());
        assert_eq!(a.cpus, b.cpus, "two halves share one CPU");
        // That CPU is full: a third half takes the last free CPU, and no
        // exclusive request can have either.
        let c = engine.place(&shared(500, "amd64")).expect("c");
        engine.apply(&c);
        assert_ne!(c.cpus, a.cpus);
        assert_eq!(engine.place(&cpus(1)), None, "every CPU is held");
        // Once both halves go, their CPU is whole again.
        engine.release(&a);
        assert_eq!(engine.place(&cpus(1)), None, "b still runs there");
        engine.release(&b);
        let whole = engine.place(&cpus(1)).expect("whole again");
        assert_eq!(whole.cpus, a.cpus);
        // The architecture must match.
        assert_eq!(engine.place(&shared(500, "arm64")), None);
        let mut arm = pooled("h2", "0-1", &[]);
        arm.arch = "arm64".into();
        engine.upsert_host(arm);
        assert_eq!(
            engine.place(&shared(500, "arm64")).map(|d| d.host),
            Some(HostId::new("h2"))
        );
    }

    #[test]
    fn unit_requests_take_exact_size_and_never_the_same_unit() {
        let mut engine = PlacementEngine::new();
        engine.upsert_host(partitioned("h1", &["0-3", "4-7", "8-15"]));
        let a = engine.place(&unit(4)).expect("a");
        assert_eq!(a.unit.as_ref().map(|u| u.as_str()), Some("h1_c0-3"));
        engine.apply(&a);
        let b = engine.place(&unit(4)).expect("b");
        assert_eq!(b.unit.as_ref().map(|u| u.as_str()), Some("h1_c4-7"));
        engine.apply(&b);
        assert_eq!(engine.place(&unit(4)), None, "no exact fit left");
        let c = engine.place(&unit(8)).expect("c");
        assert_eq!(c.cpus.to_string(), "8-15");
        engine.release(&a);
        assert_eq!(engine.place(&unit(4)), Some(a));
    }

    #[test]
    fn busy_hosts_are_passed_over_while_another_fits() {
        let mut engine = PlacementEngine::new();
        engine.upsert_host(pooled("h1", "0-3", &[]));
        engine.upsert_host(pooled("h2", "0-7", &[]));
        engine.upsert_host(pooled("h3", "0-7", &[]));
        let on = |d: Option<Decision>| d.map(|d| d.host.to_string());
        // Packed: h1 has the fewest free CPUs.
        assert_eq!(on(engine.place(&cpus(2))), Some("h1".into()));
        // h1 busy: the next packed choice.
        let busy = |h: &HostId| h.as_str() == "h1";
        assert_eq!(on(engine.place_avoiding(&cpus(2), busy)), Some("h2".into()));
        let two_busy = |h: &HostId| h.as_str() != "h3";
        assert_eq!(
            on(engine.place_avoiding(&cpus(2), two_busy)),
            Some("h3".into())
        );
        // Every fitting host busy: the packed choice all the same, never
        // "no room".
        assert_eq!(
            on(engine.place_avoiding(&cpus(2), |_| true)),
            Some("h1".into())
        );
        // Only h2 and h3 fit 6 CPUs; h2 busy leaves h3.
        let h2_busy = |h: &HostId| h.as_str() == "h2";
        assert_eq!(
            on(engine.place_avoiding(&cpus(6), h2_busy)),
            Some("h3".into())
        );
        // A shared-CPU instance goes where a CPU is shared already, busy
        // or not (free CPUs stay whole); with none shared, busy hosts are
        // passed over as above.
        assert_eq!(
            on(engine.place_avoiding(&shared(500, "amd64"), busy)),
            Some("h2".into())
        );
        let a = engine.place(&shared(500, "amd64")).expect("a");
        assert_eq!(a.host.as_str(), "h1");
        engine.apply(&a);
        assert_eq!(
            on(engine.place_avoiding(&shared(500, "amd64"), busy)),
            Some("h1".into())
        );
    }

    #[test]
    fn location_filters_and_packing() {
        let mut engine = PlacementEngine::new();
        let mut far = partitioned("h0", &["0-3"]);
        far.region = "r2".into();
        engine.upsert_host(far);
        engine.upsert_host(partitioned("h1", &["0-3", "4-7", "8-11"]));
        engine.upsert_host(partitioned("h2", &["0-3", "4-7"]));
        // Anywhere: h0 has the fewest free CPUs, so it is packed first.
        assert_eq!(
            engine.place(&unit(4)).map(|d| d.host),
            Some(HostId::new("h0"))
        );
        // In r1: h2 has fewer free CPUs than h1.
        let in_r1 = Request::Unit {
            cpu_count: 4,
            region: Some("r1".into()),
            zone: Some("z1".into()),
        };
        assert_eq!(
            engine.place(&in_r1).map(|d| d.host),
            Some(HostId::new("h2"))
        );
        let in_r2 = Request::Unit {
            cpu_count: 4,
            region: Some("r2".into()),
            zone: None,
        };
        assert_eq!(
            engine.place(&in_r2).map(|d| d.host),
            Some(HostId::new("h0"))
        );
        let in_z9 = Request::Unit {
            cpu_count: 4,
            region: None,
            zone: Some("z9".into()),
        };
        assert_eq!(engine.place(&in_z9), None);
    }

    #[test]
    fn zones_and_architectures_are_indexed_apart() {
        let mut engine = PlacementEngine::new();
        // h1 has the fewest free CPUs, but is in another zone and arch.
        let mut small = pooled("h1", "0-1", &[]);
        small.zone = "z2".into();
        small.arch = "arm64".into();
        engine.upsert_host(small);
        engine.upsert_host(pooled("h2", "0-7", &[]));
        engine.upsert_host(pooled("h3", "0-3", &[]));
        let request =
            |region: Option<&str>, zone: Option<&str>, arch: Option<&str>| Request::Cpus {
                count: 2,
                memory_mb: 0,
                region: region.map(Into::into),
                zone: zone.map(Into::into),
                whole_units: true,
                arch: arch.map(Into::into),
                share: None,
                image: None,
            };
        fn host(engine: &PlacementEngine, r: Request) -> Option<String> {
            engine.place(&r).map(|d| d.host.to_string())
        }
        assert_eq!(
            host(&engine, request(None, None, None)).as_deref(),
            Some("h1")
        );
        assert_eq!(
            host(&engine, request(None, Some("z1"), None)).as_deref(),
            Some("h3")
        );
        assert_eq!(
            host(&engine, request(None, None, Some("amd64"))).as_deref(),
            Some("h3")
        );
        assert_eq!(
            host(&engine, request(None, Some("z2"), Some("arm64"))).as_deref(),
            Some("h1")
        );
        assert_eq!(
            host(&engine, request(Some("r1"), Some("z2"), None)).as_deref(),
            Some("h1")
        );
        // A zone named with a region it is not in has no host.
        assert_eq!(host(&engine, request(Some("r9"), Some("z1"), None)), None);
        assert_eq!(
            host(&engine, request(None, Some("z2"), Some("amd64"))),
            None
        );
        assert_eq!(host(&engine, request(None, Some("z9"), None)), None);
        // Taking h1's CPUs moves it in every index it is in.
        let taken = engine.place(&request(None, Some("z2"), None)).expect("h1");
        engine.apply(&taken);
        assert_eq!(host(&engine, request(None, None, Some("arm64"))), None);
        engine.release(&taken);
        assert_eq!(
            host(&engine, request(None, None, Some("arm64"))).as_deref(),
            Some("h1")
        );
    }

    #[test]
    fn unschedulable_hosts_take_nothing() {
        let mut engine = PlacementEngine::new();
        let mut host = partitioned("h1", &["0-3"]);
        host.schedulable = false;
        engine.upsert_host(host);
        assert_eq!(engine.place(&unit(4)), None);
    }

    #[test]
    fn instances_stay_inside_one_numa_node_when_possible() {
        let mut engine = PlacementEngine::new();
        engine.upsert_host(pooled("h1", "0-15", &["0-7", "8-15"]));
        let a = engine.place(&cpus(6)).expect("a");
        assert_eq!(a.cpus.to_string(), "0-5");
        engine.apply(&a);
        // Node 0 has 2 left, node 1 has 8: a 4-CPU set goes to node 1 whole.
        let b = engine.place(&cpus(4)).expect("b");
        assert_eq!(b.cpus.to_string(), "8-11");
        engine.apply(&b);
        // 2-CPU set fits node 0's remaining pair exactly (fullest node).
        let c = engine.place(&cpus(2)).expect("c");
        assert_eq!(c.cpus.to_string(), "6-7");
        engine.apply(&c);
        // 4 left, all in node 1.
        assert_eq!(engine.place(&cpus(5)), None);
        assert_eq!(
            engine.place(&cpus(4)).map(|d| d.cpus.to_string()),
            Some("12-15".into())
        );
    }

    #[test]
    fn spans_nodes_only_when_no_node_has_room() {
        let free = set("2-7,10-15");
        let nodes = [set("0-7"), set("8-15")];
        let chosen = choose_cpus(&free, &nodes, 8).expect("fits across nodes");
        assert_eq!(chosen.len(), 8);
        assert!(chosen.is_subset(&free));
        assert_eq!(choose_cpus(&free, &nodes, 13), None);
    }

    #[test]
    fn picks_the_smallest_run_that_fits() {
        // Runs: 0-1 (2), 4-9 (6), 12-14 (3). A 3-CPU set takes 12-14, leaving 0-1 and 4-9.
        assert_eq!(choose_in(&set("0-1,4-9,12-14"), 3).to_string(), "12-14");
        // No run holds 7: take the largest runs first.
        assert_eq!(choose_in(&set("0-1,4-9,12-14"), 7).to_string(), "4-9,12");
    }

    #[test]
    fn partitioned_hosts_give_instances_the_smallest_unit_that_fits() {
        let mut engine = PlacementEngine::new();
        engine.upsert_host(partitioned("h1", &["0-7", "8-11", "12-13"]));
        let d = engine.place(&cpus(3)).expect("fits");
        assert_eq!(d.unit.as_ref().map(|u| u.as_str()), Some("h1_c8-11"));
    }

    #[test]
    fn a_host_that_serves_units_only_takes_no_instance() {
        let mut engine = PlacementEngine::new();
        let mut host = partitioned("h1", &["0-3"]);
        host.runs_instances = false;
        engine.upsert_host(host);
        assert_eq!(engine.place(&cpus(2)), None);
        assert!(
            engine.place(&unit(4)).is_some(),
            "Kloigos still gets its unit"
        );
    }

    #[test]
    fn memory_limits_instances() {
        let mut engine = PlacementEngine::new();
        let mut host = pooled("h1", "0-3", &[]);
        host.memory_mb = 4096;
        engine.upsert_host(host);
        let big = Request::Cpus {
            count: 1,
            memory_mb: 8192,
            region: None,
            zone: None,
            whole_units: false,
            arch: None,
            share: None,
            image: None,
        };
        assert_eq!(engine.place(&big), None);
    }

    #[test]
    fn a_shared_cpu_taken_out_of_scheduling_takes_no_more() {
        let mut engine = PlacementEngine::new();
        // CPU 3 is shared, half used, but no longer the host's to give
        // (its agent stopped offering it).
        let mut host = pooled("h1", "0-2", &[]);
        host.held = set("3");
        host.shared = [(3, 500)].into();
        engine.upsert_host(host);
        let placed = engine.place(&shared(250, "amd64")).expect("placed");
        assert_ne!(placed.cpus, set("3"), "{placed:?}");
    }

    #[test]
    fn an_image_a_host_must_have_sends_the_instance_where_it_is() {
        let mut engine = PlacementEngine::new();
        // h1 is the packed choice but has only `tiny`; h2 has both; h3
        // said nothing of its images (it takes any).
        let mut h1 = pooled("h1", "0-1", &[]);
        h1.images = Some(Arc::new(["tiny".to_string()].into()));
        let mut h2 = pooled("h2", "0-3", &[]);
        h2.images = Some(Arc::new(
            ["debian-12".to_string(), "tiny".to_string()].into(),
        ));
        engine.upsert_host(h1);
        engine.upsert_host(h2);
        fn with_image(mut request: Request, wanted: &str) -> Request {
            if let Request::Cpus { image, .. } = &mut request {
                *image = Some(wanted.into());
            }
            request
        }
        let of = |image: &str| with_image(cpus(2), image);
        let host =
            |engine: &PlacementEngine, r: &Request| engine.place(r).map(|d| d.host.to_string());
        assert_eq!(host(&engine, &of("tiny")).as_deref(), Some("h1"));
        assert_eq!(host(&engine, &of("debian-12")).as_deref(), Some("h2"));
        assert_eq!(host(&engine, &of("ubuntu-24.04")), None);
        // An image any host can get (pulled from a registry) asks nothing.
        assert_eq!(host(&engine, &cpus(2)).as_deref(), Some("h1"));
        engine.upsert_host(pooled("h3", "0-7", &[]));
        assert_eq!(host(&engine, &of("ubuntu-24.04")).as_deref(), Some("h3"));
        // Shared CPUs too.
        let shared_of = |image: &str| with_image(shared(250, "amd64"), image);
        assert_eq!(
            host(&engine, &shared_of("ubuntu-24.04")).as_deref(),
            Some("h3")
        );
    }
}
