//! The control plane's placement view: the core engine fed from the store.
//!
//! The view is a cache. Decisions are taken on it under a short lock and
//! applied to it at once, so that requests in this process do not pick the
//! same unit; the store's conditional writes then decide for real. When a
//! commit loses (another replica, or a stale view), the host is reloaded and
//! placement asked again; when the view finds no room, the hosts whose
//! generation changed in the store are reloaded before answering "none".
//!
//! A decision is [`Taken`] until its claim's commit is over: its host counts
//! as busy meanwhile, and the engine places other requests elsewhere while
//! another host fits. On PostgreSQL a claim holds its host's row until it
//! commits, so packed claims on one host ran one commit after another; at
//! 32 concurrent creations that bounded a fleet to one host's commit rate.
//!
//! A host that just failed to make what was placed on it (an instance, a
//! unit) is passed over the same way for [`FAILING_FOR`], unless nothing
//! else fits: packing would otherwise send every request to the one broken
//! host, as it has the fewest free CPUs.

use crate::error::Result;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;
use tessera_core::placement::{Decision, HostInventory, PlacementEngine, Request, UnitSlot};
use tessera_core::status::{HostStatus, UnitStatus};
use tessera_core::{ComputeId, CpuSet, HostId};
use tessera_store::{HostRecord, HostSighting, Store, UnitFilter, UnitRecord};

/// How long a host that failed to make what was placed on it is passed over.
pub const FAILING_FOR: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Default)]
pub struct PlacementView {
    state: Mutex<ViewState>,
    /// When the last look for changed hosts started: requests that ran out
    /// of room share one look instead of each scanning the store.
    last_look: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Default)]
struct ViewState {
    engine: PlacementEngine,
    /// The store version (see `Store::host_versions`) each host was loaded at.
    versions: HashMap<HostId, i64>,
    /// Claims being committed, by host.
    claiming: HashMap<HostId, usize>,
    /// Hosts that failed to make what was placed on them, and when.
    failing: HashMap<HostId, Instant>,
    /// Each host as it was when loaded: its status, whether its agent was
    /// heard, what the agent offered.
    sightings: HashMap<HostId, HostSighting>,
}

/// A decision taken on the view, its host busy until this is dropped (once
/// the claim's commit is over, whichever way it went).
#[must_use = "dropping it at once frees its host for other claims"]
pub struct Taken {
    decision: Decision,
    view: Arc<PlacementView>,
}

impl Taken {
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        let mut state = self.view.state();
        if let Some(n) = state.claiming.get_mut(&self.decision.host) {
            *n -= 1;
            if *n == 0 {
                state.claiming.remove(&self.decision.host);
            }
        }
    }
}

/// A host's version as `Store::host_versions` computes it.
fn version(host: &HostRecord, units: &[UnitRecord]) -> i64 {
    host.generation + units.iter().map(|u| u.generation).sum::<i64>()
}

impl PlacementView {
    fn state(&self) -> MutexGuard<'_, ViewState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads every host from the store.
    pub async fn load_all(&self, store: &Store) -> Result<()> {
        let hosts = store.hosts(&[]).await?;
        let units = store.units(&UnitFilter::default()).await?;
        let claims = store.cpu_claims(None).await?;
        let mut shares: HashMap<String, BTreeMap<u32, u32>> = HashMap::new();
        for (host, cpu, millis) in store.cpu_shares(None).await? {
            shares.entry(host).or_default().insert(cpu, millis);
        }
        let mut memory: HashMap<String, i64> = store
            .instance_memory_by_host(None)
            .await?
            .into_iter()
            .collect();
        let mut units_by_host: HashMap<String, Vec<UnitRecord>> = HashMap::new();
        for unit in units {
            units_by_host
                .entry(unit.host_id.clone())
                .or_default()
                .push(unit);
        }
        let mut held: HashMap<String, CpuSet> = HashMap::new();
        for (host, cpu) in claims {
            held.entry(host).or_default().insert(cpu);
        }
        let mut state = self.state();
        for host in hosts {
            let units = units_by_host.remove(&host.id).unwrap_or_default();
            let held = held.remove(&host.id).unwrap_or_default();
            let memory_held = memory.remove(&host.id).unwrap_or(0);
            let shared = shares.remove(&host.id).unwrap_or_default();
            state.put(
                inventory(&host, &units, (held, shared), memory_held),
                version(&host, &units),
                host.sighting(),
            );
        }
        Ok(())
    }

    /// Reloads one host from the store (or forgets it when it is gone).
    pub async fn refresh_host(&self, store: &Store, id: &str) -> Result<()> {
        let Some(host) = store.host(id).await? else {
            self.state().forget(&HostId::new(id));
            return Ok(());
        };
        let filter = UnitFilter {
            host_id: Some(id.to_string()),
            ..UnitFilter::default()
        };
        let units = store.units(&filter).await?;
        let held = store
            .cpu_claims(Some(id))
            .await?
            .into_iter()
            .map(|(_, cpu)| cpu)
            .collect();
        let memory_held = store
            .instance_memory_by_host(Some(id))
            .await?
            .first()
            .map_or(0, |(_, mb)| *mb);
        let shared = store
            .cpu_shares(Some(id))
            .await?
            .into_iter()
            .map(|(_, cpu, millis)| (cpu, millis))
            .collect();
        self.state().put(
            inventory(&host, &units, (held, shared), memory_held),
            version(&host, &units),
            host.sighting(),
        );
        Ok(())
    }

    /// Catches the view up with what other replicas saw of the hosts:
    /// one read of every host's status, reachability and agent's offer,
    /// then a reload of those that differ from the view's (and of hosts
    /// it lacks), and the gone forgotten. A replica's own claims change
    /// none of these, so a busy fleet costs the read alone. Answers how
    /// many hosts changed.
    pub async fn catch_up(&self, store: &Store) -> Result<usize> {
        let sightings = store.host_sightings().await?;
        self.reload_where(store, sightings, |state, id, seen| {
            state.sightings.get(id) != Some(seen)
        })
        .await
    }

    /// Whether a look for changed hosts started at or after `at`, or one
    /// is under way.
    pub fn looked_since(&self, at: Instant) -> bool {
        match self.last_look.try_lock() {
            Ok(last_look) => last_look.is_some_and(|looked| looked >= at),
            Err(_) => true,
        }
    }

    /// Reloads the hosts whose version in the store differs from the view's,
    /// and forgets those the store no longer has, unless a look that started
    /// after `needed_at` already did so. Answers how many hosts changed.
    pub async fn refresh_changed(&self, store: &Store, needed_at: Instant) -> Result<usize> {
        let mut last_look = self.last_look.lock().await;
        if last_look.is_some_and(|at| at >= needed_at) {
            return Ok(0);
        }
        *last_look = Some(Instant::now());
        let current = store.host_versions().await?;
        self.reload_where(store, current, |state, id, version| {
            state.versions.get(id) != Some(version)
        })
        .await
    }

    /// Forgets the hosts `current` (every host in the store, with what is
    /// compared of it) no longer has, and reloads those `differs` says the
    /// view has otherwise. Answers how many were reloaded.
    async fn reload_where<T>(
        &self,
        store: &Store,
        current: Vec<(String, T)>,
        differs: impl Fn(&ViewState, &HostId, &T) -> bool,
    ) -> Result<usize> {
        let stale: Vec<String> = {
            let mut state = self.state();
            let known: HashSet<&str> = current.iter().map(|(id, _)| id.as_str()).collect();
            let gone: Vec<HostId> = state
                .versions
                .keys()
                .filter(|id| !known.contains(id.as_str()))
                .cloned()
                .collect();
            for id in &gone {
                state.forget(id);
            }
            current
                .into_iter()
                .filter(|(id, value)| differs(&state, &HostId::new(id.as_str()), value))
                .map(|(id, _)| id)
                .collect()
        };
        for id in &stale {
            self.refresh_host(store, id).await?;
            // SQLite reads complete where they are asked, without ever
            // pending: a look that reloads thousands of hosts would
            // otherwise hold its worker thread from every request for
            // seconds.
            tokio::task::yield_now().await;
        }
        Ok(stale.len())
    }

    /// Decides where `request` goes and marks the decision taken in the
    /// view; its host is busy for other requests while the answer lives.
    pub fn take(self: &Arc<Self>, request: &Request) -> Option<Taken> {
        let mut state = self.state();
        let (claiming, failing) = (&state.claiming, &state.failing);
        let decision = state.engine.place_avoiding(request, |host| {
            claiming.contains_key(host)
                || failing
                    .get(host)
                    .is_some_and(|at| at.elapsed() < FAILING_FOR)
        })?;
        state.engine.apply(&decision);
        *state.claiming.entry(decision.host.clone()).or_default() += 1;
        Some(Taken {
            decision,
            view: self.clone(),
        })
    }

    /// Notes that `host` failed to make what was placed on it: it is passed
    /// over while another host fits, for [`FAILING_FOR`] or until it makes
    /// something again.
    pub fn host_failed(&self, host: &HostId) {
        let mut state = self.state();
        state.failing.retain(|_, at| at.elapsed() < FAILING_FOR);
        state.failing.insert(host.clone(), Instant::now());
    }

    /// Notes that a claim of this process on whole CPUs of pooled `host`
    /// (no unit) committed. The store moved the host's generation on by one
    /// with it (`Store::claim_instance_cpus`), and the view, which applied
    /// the decision already, moves the version it holds for the host with
    /// it: a look for changed hosts then passes over the hosts this
    /// process placed on, where it reloaded each of them (five reads) at
    /// every look, up to once a second under availability reads. Another
    /// replica's change still leaves the versions apart. A reload of the
    /// host that ran beside the claim may have read it before its commit:
    /// the view then shows its CPUs free until a claim on them fails in the
    /// store and reloads the host, as with any stale view (the store's
    /// conditional writes decide).
    pub fn claimed_on(&self, host: &HostId) {
        if let Some(version) = self.state().versions.get_mut(host) {
            *version += 1;
        }
    }

    /// Notes that `host` made what was placed on it.
    pub fn host_succeeded(&self, host: &HostId) {
        let mut state = self.state();
        if !state.failing.is_empty() {
            state.failing.remove(host);
        }
    }

    /// Whether decisions taken are still being claimed in the store: what
    /// they hold may come free again if their claims fail.
    pub fn claims_in_flight(&self) -> bool {
        !self.state().claiming.is_empty()
    }

    /// Frees in the view what an instance of whole CPUs held on a pooled
    /// host (its CPUs, its memory) once the store's release of them was
    /// committed, and moves the host's version on by the one step that
    /// release moved its generation: a deletion costs no reads of its
    /// host. `false`, changing nothing, where the view cannot tell what
    /// the release freed (a share of a CPU, a host of units, whose units'
    /// generations moved too, or a host it does not hold): reload the
    /// host then. A reload that read the host's generation before the
    /// release committed and its holdings after has freed them already:
    /// the view then shows them freed twice until a claim the store
    /// refuses reloads the host, as with any stale view (the store's
    /// conditional writes decide).
    pub fn released(
        &self,
        host: &HostId,
        cpus: &CpuSet,
        memory_mb: u64,
        share: Option<u32>,
    ) -> bool {
        let mut state = self.state();
        let pooled = state.engine.host(host).is_some_and(|h| h.units.is_empty());
        if share.is_some() || !pooled {
            return false;
        }
        let Some(version) = state.versions.get_mut(host) else {
            return false;
        };
        *version += 1;
        state.engine.release(&Decision {
            host: host.clone(),
            unit: None,
            cpus: cpus.clone(),
            memory_mb,
            share: None,
        });
        true
    }

    /// Marks a unit free again in the view after its release was committed.
    pub fn release_unit(&self, host: &HostId, unit: &ComputeId, cpus: CpuSet) {
        self.state().engine.release(&Decision {
            host: host.clone(),
            unit: Some(unit.clone()),
            cpus,
            memory_mb: 0,
            share: None,
        });
    }

    /// Runs `f` on the engine: for benchmarks and diagnostics.
    pub fn with_engine<T>(&self, f: impl FnOnce(&PlacementEngine) -> T) -> T {
        f(&self.state().engine)
    }
}

impl ViewState {
    fn put(&mut self, inventory: HostInventory, version: i64, seen: HostSighting) {
        self.versions.insert(inventory.id.clone(), version);
        self.sightings.insert(inventory.id.clone(), seen);
        self.engine.upsert_host(inventory);
    }

    fn forget(&mut self, id: &HostId) {
        self.versions.remove(id);
        self.sightings.remove(id);
        self.engine.remove_host(id);
    }
}

/// A host's inventory as placement sees it.
pub(crate) fn inventory(
    host: &HostRecord,
    units: &[UnitRecord],
    (held, shared): (CpuSet, BTreeMap<u32, u32>),
    memory_held_mb: i64,
) -> HostInventory {
    // CPUs its agent does not offer (offline, or reserved for the host
    // since it registered) take nothing new; what holds them keeps them.
    // Nor does a FREE unit one of whose CPUs the ledger holds for another
    // (its claim would fail on the ledger's key, again and again).
    let offered = host
        .offer
        .cpus
        .as_deref()
        .and_then(|list| CpuSet::parse_list(list).ok());
    let slots: Vec<UnitSlot> = units
        .iter()
        .map(|u| {
            let cpus = CpuSet::parse_list(&u.cpu_list).unwrap_or_default();
            UnitSlot {
                id: ComputeId::new(u.compute_id.as_str()),
                free: u.status == UnitStatus::Free
                    && offered.as_ref().is_none_or(|o| cpus.is_subset(o))
                    && cpus.is_disjoint(&held),
                cpus,
            }
        })
        .collect();
    let cpus = match &host.cpus {
        Some(list) => {
            let registered = CpuSet::parse_list(list).unwrap_or_default();
            match &offered {
                Some(offered) => registered.intersection(offered),
                None => registered,
            }
        }
        None => slots
            .iter()
            .fold(CpuSet::new(), |all, u| all.union(&u.cpus)),
    };
    HostInventory {
        id: HostId::new(host.id.as_str()),
        region: host.region.clone(),
        zone: host.zone.clone(),
        schedulable: host.status == HostStatus::Ready && host.reachable,
        cpus,
        numa_nodes: numa_nodes(host),
        units: slots,
        held,
        memory_mb: u64::try_from(host.memory_mb).unwrap_or(0),
        memory_held_mb: u64::try_from(memory_held_mb).unwrap_or(0),
        runs_instances: host.runs_instances,
        arch: host.arch.clone(),
        shared,
        images: host
            .offer
            .images
            .as_ref()
            .map(|images| Arc::new(images.iter().cloned().collect())),
    }
}

/// A host's NUMA nodes, as stored (validated at registration).
pub(crate) fn numa_nodes(host: &HostRecord) -> Vec<CpuSet> {
    host.numa_nodes
        .iter()
        .filter_map(|n| CpuSet::parse_list(n).ok())
        .collect()
}
