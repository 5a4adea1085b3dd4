//! The reconciler: background tasks that find work the store says is
//! unfinished and finish it, and keep the store tidy.
//!
//! Each task is a [`Task`]: a name, a period, and one pass. Every task runs
//! in its own loop, so a slow one (a host that takes long to destroy a
//! volume) never holds up another, and its passes never overlap. A pass
//! takes no input and is safe to run any number of times, in any number of
//! control-plane processes: an orphaned operation is taken over, a host
//! still INITIALIZING is prepared, one DECOMMISSIONING retired, a unit
//! DEALLOCATING past its deadline wiped again, and a unit still ALLOCATING
//! past its deadline (its request died with a crashed process, so nobody
//! learnt its id) unwound: wiped and returned to the pool. Every unit step
//! is fenced by the unit's generation, so a late request never undoes what
//! the reconciler did, nor the reverse. Meters that can never run again
//! are folded into their projects' balances.
//!
//! At start it first takes back this replica's own operations and pushes
//! the desired state to every ready host, so a host that lost its state (a
//! restarted simulated host, a reinstalled agent) gets its unit users,
//! tenants' keys and instances back.
//!
//! A new background task is a [`Task`] added to [`App::spawn_reconciler`].

use crate::error::Result;
use crate::hosts::unit_spec;
use crate::{App, InFlight};
use std::future::Future;
use std::time::Duration;
use tessera_core::HostId;
use tessera_core::status::{HostStatus, UnitStatus};
use tessera_store::UnitFilter;

/// A piece of work the control plane does on its own, again and again.
pub(crate) trait Task: Send + Sync + 'static {
    /// Its name, in logs.
    const NAME: &'static str;

    /// How long from the start of one pass to the start of the next.
    fn period(app: &App) -> Duration;

    /// One pass.
    fn run(app: &App) -> impl Future<Output = Result<()>> + Send;
}

/// Takes over operations whose driver died (their lease ran out).
struct ResumeOperations;

impl Task for ResumeOperations {
    const NAME: &'static str = "resume operations";
    fn period(app: &App) -> Duration {
        app.config.reconcile_every
    }
    async fn run(app: &App) -> Result<()> {
        app.resume_operations().await
    }
}

/// Marks hosts whose agents went silent unreachable.
struct Heartbeats;

impl Task for Heartbeats {
    const NAME: &'static str = "check heartbeats";
    fn period(app: &App) -> Duration {
        app.config.reconcile_every
    }
    async fn run(app: &App) -> Result<()> {
        app.check_heartbeats().await
    }
}

/// Catches the placement view up with what other replicas saw of the
/// hosts (a host registered, retired, gone silent or heard again, what its
/// agent offers): a view is otherwise reloaded only where this replica's
/// own claims lose, or when it finds no room, so it placed on a host whose
/// agent another replica found silent. One read of every host a pass. Not
/// run on SQLite (one process).
struct CatchUpPlacement;

impl Task for CatchUpPlacement {
    const NAME: &'static str = "catch up placement";
    fn period(_: &App) -> Duration {
        Duration::from_secs(10)
    }
    async fn run(app: &App) -> Result<()> {
        app.placement.catch_up(&app.store).await.map(drop)
    }
}

/// Writes the agents' heartbeats heard since the last pass, in one
/// transaction.
struct NoteHeartbeats;

impl Task for NoteHeartbeats {
    const NAME: &'static str = "note heartbeats";
    fn period(_: &App) -> Duration {
        Duration::from_secs(1)
    }
    async fn run(app: &App) -> Result<()> {
        app.note_heartbeats().await
    }
}

/// Asks in-process hosts what they see of their instances: usage, and
/// instances that died (remote agents report with their heartbeats).
struct ObserveInstances;

impl Task for ObserveInstances {
    const NAME: &'static str = "observe instances";
    fn period(app: &App) -> Duration {
        app.config.reconcile_every
    }
    async fn run(app: &App) -> Result<()> {
        app.observe_hosts().await
    }
}

/// Sends down this replica's agent channels the terminal sessions other
/// replicas asked of those hosts.
struct RelaySessions;

impl Task for RelaySessions {
    const NAME: &'static str = "relay sessions";
    fn period(_: &App) -> Duration {
        crate::agents::sessions::RELAY_POLL
    }
    async fn run(app: &App) -> Result<()> {
        app.relay_sessions().await
    }
}

/// Removes terminal-session requests nobody waits for any more.
struct PruneSessionRequests;

impl Task for PruneSessionRequests {
    const NAME: &'static str = "prune session requests";
    fn period(app: &App) -> Duration {
        app.config.reconcile_every
    }
    async fn run(app: &App) -> Result<()> {
        app.prune_session_requests().await
    }
}

/// Destroys the storage of volumes whose time in the trash is up.
struct PurgeVolumes;

impl Task for PurgeVolumes {
    const NAME: &'static str = "purge volumes";
    fn period(app: &App) -> Duration {
        app.config.reconcile_every
    }
    async fn run(app: &App) -> Result<()> {
        app.purge_volumes().await
    }
}

/// Prepares hosts still INITIALIZING and retires those DECOMMISSIONING.
struct PendingHosts;

impl Task for PendingHosts {
    const NAME: &'static str = "drive pending hosts";
    fn period(app: &App) -> Duration {
        app.config.reconcile_every
    }
    async fn run(app: &App) -> Result<()> {
        let pending = [HostStatus::Initializing, HostStatus::Decommissioning];
        for host in app.store.hosts(&pending).await? {
            // In the background: a host that takes long holds up no other.
            let driver = app.clone();
            app.tasks
                .spawn(async move { driver.drive_host(&host.id).await });
        }
        Ok(())
    }
}

/// Unwinds allocations whose request died, and wipes again units whose
/// wipe stalled.
struct OverdueUnits;

impl Task for OverdueUnits {
    const NAME: &'static str = "settle overdue units";
    fn period(app: &App) -> Duration {
        app.config.reconcile_every
    }
    async fn run(app: &App) -> Result<()> {
        for unit in app.overdue_units().await? {
            let Some(guard) = InFlight::enter(&app.in_flight, format!("unit:{}", unit.compute_id))
            else {
                continue;
            };
            if !matches!(
                unit.status,
                UnitStatus::Allocating | UnitStatus::Deallocating
            ) {
                continue;
            }
            // An allocation whose request died (crash, lost client) is
            // unwound like a deallocation; a stalled wipe is tried again.
            let worker = app.clone();
            app.tasks.spawn(async move {
                let _guard = guard;
                let compute_id = unit.compute_id.clone();
                let interrupted = unit.status == UnitStatus::Allocating;
                let result = match worker.begin_release(unit).await {
                    Ok(Some(unit)) => worker.release(&unit).await,
                    Ok(None) => Ok(()),
                    Err(err) => Err(err),
                };
                match result {
                    Ok(()) if interrupted => {
                        tracing::warn!(compute_id, "interrupted allocation unwound");
                    }
                    Ok(()) => {}
                    Err(err) => {
                        tracing::warn!(compute_id, error = %err, "wiping the unit failed again");
                    }
                }
            });
        }
        Ok(())
    }
}

/// Takes over the async requests of control-plane processes that stopped.
struct RecoverRequests;

impl Task for RecoverRequests {
    const NAME: &'static str = "recover async requests";
    fn period(_: &App) -> Duration {
        Duration::from_secs(5)
    }
    async fn run(app: &App) -> Result<()> {
        app.recover_async_requests().await
    }
}

/// Forgets events older than their retention, and agents' answered
/// scripts older than a day.
struct Prune;

impl Task for Prune {
    const NAME: &'static str = "prune";
    fn period(_: &App) -> Duration {
        Duration::from_secs(600)
    }
    async fn run(app: &App) -> Result<()> {
        app.prune_events().await?;
        let day_ago = tessera_store::timestamp(chrono::Utc::now() - chrono::Duration::days(1));
        app.store.prune_agent_work(&day_ago).await?;
        app.prune_async_requests().await?;
        Ok(())
    }
}

/// Folds the meters that can never run again into their projects'
/// balances, so a balance read (and a prepaid creation's check) costs what
/// the project has now, not all it ever had.
struct FoldMeters;

impl Task for FoldMeters {
    const NAME: &'static str = "fold meters";
    fn period(_: &App) -> Duration {
        Duration::from_secs(600)
    }
    async fn run(app: &App) -> Result<()> {
        let folded = app.store.fold_meters().await?;
        if folded > 0 {
            tracing::debug!(folded, "closed meters folded into balances");
        }
        Ok(())
    }
}

/// What each background task's passes have cost in this process, for
/// `/metrics` and the fleet benchmark: a pass that takes longer than its
/// period means the task no longer keeps up.
#[derive(Default)]
pub struct PassStats {
    tasks: std::sync::Mutex<std::collections::BTreeMap<&'static str, TaskPasses>>,
}

/// One task's passes so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskPasses {
    /// Passes finished.
    pub passes: u64,
    /// Of those, passes that failed.
    pub failed: u64,
    /// Their time, summed.
    pub total: Duration,
    /// The longest one.
    pub longest: Duration,
}

impl PassStats {
    fn record(&self, task: &'static str, took: Duration, ok: bool) {
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let passes = tasks.entry(task).or_default();
        passes.passes += 1;
        passes.failed += u64::from(!ok);
        passes.total += took;
        passes.longest = passes.longest.max(took);
    }

    /// Every task that has finished a pass, by name.
    pub fn snapshot(&self) -> Vec<(&'static str, TaskPasses)> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, passes)| (*name, *passes))
            .collect()
    }
}

impl App {
    /// What the background tasks' passes have cost so far in this process.
    pub fn background_passes(&self) -> Vec<(&'static str, TaskPasses)> {
        self.passes.snapshot()
    }

    /// Starts the reconciler's tasks, after this replica has taken back its
    /// own operations and pushed the desired state to its hosts; they run
    /// until [`App::shutdown`].
    pub fn spawn_reconciler(&self) {
        self.spawn_agent_listener();
        let app = self.clone();
        self.tasks.spawn(async move {
            if let Err(err) = app.resume_own_operations().await {
                tracing::warn!(error = %err, "resuming this replica's operations failed");
            }
            if let Err(err) = app.resync_hosts().await {
                tracing::warn!(error = %err, "pushing desired state to hosts failed");
            }
            match app.repair_instance_meters().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    meters = n,
                    "instance meters that billed their volumes too repaired"
                ),
                Err(err) => tracing::warn!(error = %err, "repairing instance meters failed"),
            }
            app.spawn_task::<ResumeOperations>();
            app.spawn_task::<Heartbeats>();
            app.spawn_task::<NoteHeartbeats>();
            app.spawn_task::<ObserveInstances>();
            app.spawn_task::<RelaySessions>();
            app.spawn_task::<PruneSessionRequests>();
            app.spawn_task::<PurgeVolumes>();
            app.spawn_task::<PendingHosts>();
            app.spawn_task::<OverdueUnits>();
            app.spawn_task::<Prune>();
            app.spawn_task::<FoldMeters>();
            app.spawn_task::<RecoverRequests>();
            if app.store.backend() != tessera_store::Backend::Sqlite {
                app.spawn_task::<CatchUpPlacement>();
            }
            app.spawn_serverless();
        });
    }

    /// Runs a task's passes, one at a time, every period (the first at
    /// once), until the app stops.
    fn spawn_task<T: Task>(&self) {
        let app = self.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(T::period(&app));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = app.stopping.cancelled() => return,
                }
                let began = std::time::Instant::now();
                let result = T::run(&app).await;
                app.passes.record(T::NAME, began.elapsed(), result.is_ok());
                if let Err(err) = result {
                    tracing::warn!(task = T::NAME, error = %err, "background task failed; it runs again");
                }
            }
        });
    }

    /// Pushes every ready host's desired state to its agent: its units
    /// prepared and each allocated unit's key installed.
    pub async fn resync_hosts(&self) -> Result<()> {
        for host in self.store.hosts(&[HostStatus::Ready]).await? {
            // First contact prepares the host's units (see `App::agent`).
            let Some(agent) = self.agent(&HostId::new(host.id.as_str())).await? else {
                continue;
            };
            if agent.keeps_desired_state() {
                continue;
            }
            let filter = UnitFilter {
                host_id: Some(host.id.clone()),
                statuses: vec![UnitStatus::Allocated],
                ..UnitFilter::default()
            };
            for unit in self.store.units(&filter).await? {
                let (Ok(unit_spec), Some(key)) = (unit_spec(&unit), unit.ssh_public_key.as_deref())
                else {
                    continue;
                };
                if let Err(err) = self.host_call(agent.activate_unit(&unit_spec, key)).await {
                    tracing::warn!(compute_id = %unit.compute_id, error = %err, "key resync failed");
                }
            }
            self.resync_instances(&host.id, agent).await?;
        }
        Ok(())
    }
}
