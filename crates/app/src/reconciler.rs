//! The reconciler: finds work the store says is unfinished and finishes it.
//!
//! It takes no input and is safe to run any number of times, in any number of
//! control-plane processes: a host still INITIALIZING is prepared, one
//! DECOMMISSIONING retired, a unit DEALLOCATING past its deadline wiped
//! again, and a unit still ALLOCATING past its deadline (its request died
//! with a crashed process, so nobody learnt its id) unwound: wiped and
//! returned to the pool. Every unit step is fenced by the unit's generation,
//! so a late request never undoes what the reconciler did, nor the reverse. At start it also pushes the desired state to every
//! ready host, so a host that lost its state (a restarted simulated host, a
//! reinstalled agent) gets its unit users and tenants' keys back.

use crate::error::Result;
use crate::hosts::unit_spec;
use crate::{App, InFlight};
use tessera_core::HostId;
use tessera_core::status::{HostStatus, UnitStatus};
use tessera_store::UnitFilter;

impl App {
    /// Runs the reconciler until [`App::shutdown`].
    pub fn spawn_reconciler(&self) {
        let app = self.clone();
        self.tasks.spawn(async move {
            if let Err(err) = app.resume_own_operations().await {
                tracing::warn!(error = %err, "resuming this replica's operations failed");
            }
            if let Err(err) = app.resync_hosts().await {
                tracing::warn!(error = %err, "pushing desired state to hosts failed");
            }
            let mut tick = tokio::time::interval(app.config.reconcile_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune: Option<std::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = app.stopping.cancelled() => return,
                }
                if let Err(err) = app.reconcile_once().await {
                    tracing::warn!(error = %err, "reconcile pass failed");
                }
                if last_prune.is_none_or(|at| at.elapsed() > std::time::Duration::from_secs(3600)) {
                    last_prune = Some(std::time::Instant::now());
                    if let Err(err) = app.prune_events().await {
                        tracing::warn!(error = %err, "forgetting old events failed");
                    }
                    let day_ago =
                        tessera_store::timestamp(chrono::Utc::now() - chrono::Duration::days(1));
                    if let Err(err) = app.store.prune_agent_work(&day_ago).await {
                        tracing::warn!(error = %err, "forgetting answered scripts failed");
                    }
                }
            }
        });
    }

    /// One pass over everything unfinished.
    pub async fn reconcile_once(&self) -> Result<()> {
        self.resume_operations().await?;
        self.check_heartbeats().await?;
        // Destroying volumes' storage waits on hosts: in the background,
        // one pass at a time, so a slow host never holds up the rest.
        if let Some(guard) = InFlight::enter(&self.in_flight, "purge-volumes".into()) {
            let app = self.clone();
            self.tasks.spawn(async move {
                let _guard = guard;
                if let Err(err) = app.purge_volumes().await {
                    tracing::warn!(error = %err, "purging volumes failed; retrying later");
                }
            });
        }
        let pending = [HostStatus::Initializing, HostStatus::Decommissioning];
        for host in self.store.hosts(&pending).await? {
            let app = self.clone();
            self.tasks
                .spawn(async move { app.drive_host(&host.id).await });
        }
        for unit in self.overdue_units().await? {
            let Some(guard) = InFlight::enter(&self.in_flight, format!("unit:{}", unit.compute_id))
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
            let app = self.clone();
            self.tasks.spawn(async move {
                let _guard = guard;
                let compute_id = unit.compute_id.clone();
                let interrupted = unit.status == UnitStatus::Allocating;
                let result = match app.begin_release(unit).await {
                    Ok(Some(unit)) => app.release(&unit).await,
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
