//! The control plane's side of the agent protocol
//! ([`tessera_agent_api::protocol`]): join tokens, registration,
//! heartbeats, and [`RemoteAgent`], which drives a host by writing its
//! desired state to the store and waiting for the agent's report.
//!
//! A host whose agent has registered is driven through [`RemoteAgent`];
//! any other host through the directory the server was started with (the
//! simulated fleet, or none: the host then waits for its agent).
//!
//! Rooms: `join_tokens` (made by admins), `registration` (a token traded
//! for a host's credential), `serving` (heartbeats, the long-polled desired
//! state, reports), `liveness` (heartbeats written in batches, verified
//! credentials kept), `remote` (the [`RemoteAgent`] a host is driven
//! through).

use crate::App;
use crate::error::Result;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tessera_agent_api::HostAgent;
use tessera_store::AgentChange;
use tokio::sync::Notify;

mod join_tokens;
mod liveness;
mod registration;
mod remote;
mod serving;
pub mod sessions;

pub use join_tokens::JoinToken;
pub(crate) use liveness::Liveness;
use remote::RemoteAgent;

/// How long a desired-state poll waits for a change before answering empty.
pub const LONG_POLL: Duration = Duration::from_secs(20);

/// How often a waiter looks in the store for changes another replica made
/// (a report, a new desired state) while no notification of them can be
/// heard (PostgreSQL's listener is down).
const STORE_POLL: Duration = Duration::from_millis(250);
/// How often a waiter looks anyway while notifications are heard: a
/// safety net, not the way changes arrive.
const HEARD_POLL: Duration = Duration::from_secs(5);
/// How often the listener for other replicas' changes sends itself an echo.
const ECHO_EVERY: Duration = Duration::from_secs(5);
/// How long an echo may take to come back before the listener is taken
/// for dead (and made again).
const ECHO_WITHIN: Duration = Duration::from_secs(10);

/// Wakes whoever waits on a host's desired state or reports in this
/// process: at once for this process's changes, and for other replicas'
/// through the store's notifications ([`App::spawn_agent_listener`]).
#[derive(Default)]
pub(crate) struct AgentSignals {
    hosts: Mutex<HashMap<String, Arc<HostSignals>>>,
    /// Whether every change this process makes reaches its waiters as a
    /// signal (while the listener is there: PostgreSQL's own notices come
    /// through it).
    heard: AtomicBool,
    /// Whether every change, whichever process made it, reaches this
    /// process: PostgreSQL's notifications while the listener is connected;
    /// on SQLite, while no other process writes the file (two may share
    /// one: the listener looks every second whether another committed, and
    /// takes everything as changed when one did, see
    /// [`tessera_store::AgentChange::Unheard`]).
    notified: AtomicBool,
    /// How many times the listener was lost (PostgreSQL).
    listener_lost: AtomicU64,
}

/// A host's two signals: its long-polls wait for a new desired state, its
/// operations for its agent's reports; neither is woken by the other's
/// changes (each wake-up is a read of the store).
#[derive(Default)]
pub(crate) struct HostSignals {
    desired: Notify,
    reported: Notify,
}

/// What changed of a host, for [`AgentSignals::wake`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HostChange {
    Desired,
    Reported,
    /// Anything (its agent's credential, its removal, a change missed).
    Any,
}

impl HostSignals {
    fn wake(&self, change: HostChange) {
        if change != HostChange::Reported {
            self.desired.notify_waiters();
        }
        if change != HostChange::Desired {
            self.reported.notify_waiters();
        }
    }
}

impl AgentSignals {
    fn of(&self, hostname: &str) -> Arc<HostSignals> {
        self.hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(hostname.to_string())
            .or_default()
            .clone()
    }

    /// Wakes whoever waits on `change` of `hostname` (none: nothing to do).
    fn wake(&self, hostname: &str, change: HostChange) {
        let signal = self
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hostname)
            .cloned();
        if let Some(signal) = signal {
            signal.wake(change);
        }
    }

    /// Wakes every waiter: changes may have been missed.
    fn wake_all(&self) {
        let signals: Vec<Arc<HostSignals>> = self
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for signal in signals {
            signal.wake(HostChange::Any);
        }
    }

    /// How long a waiter for a report may wait between looks in the
    /// store.
    fn poll(&self) -> Duration {
        match self.heard() {
            true => HEARD_POLL,
            false => STORE_POLL,
        }
    }

    fn heard(&self) -> bool {
        self.heard.load(Ordering::Relaxed)
    }

    /// How long a long-poll may wait between looks in the store. With the
    /// store's notifications, a long-poll, which answers within 20 s
    /// anyway, needs no look until it is woken (at 10,000 agents, a look
    /// every 5 s each was 2,000 reads a second on PostgreSQL).
    fn long_poll_nap(&self) -> Option<Duration> {
        match self.notified.load(Ordering::Relaxed) {
            true => None,
            false => Some(self.poll().max(STORE_POLL * 4)),
        }
    }

    /// Whether the store's notifications reach this process.
    fn notified(&self) -> bool {
        self.notified.load(Ordering::Relaxed)
    }

    fn set_notified(&self, notified: bool) {
        self.notified.store(notified, Ordering::Relaxed);
        self.heard.store(notified, Ordering::Relaxed);
    }
}

/// The agent an authenticated agent request comes from.
#[derive(Clone, Debug)]
pub struct AgentCaller {
    pub hostname: String,
}

/// What an agent's inventory offers placement, as stored: its CPUs, and
/// the images its host has (a sorted JSON list), unless its driver runs no
/// image of its own.
fn offer(inventory: &tessera_agent_api::protocol::Inventory) -> tessera_store::AgentOffer {
    let images = inventory.images.clone().map(|mut images| {
        images.sort();
        images.dedup();
        serde_json::to_string(&images).unwrap_or_default()
    });
    tessera_store::AgentOffer {
        cpus: inventory.cpus.to_string(),
        images,
    }
}
impl App {
    /// Hears the changes other replicas make to agents' desired states and
    /// reports, and wakes this process's waiters on them, until the app
    /// stops. On SQLite, it hears this process's own changes as the store
    /// tells them, and whether another process writes the file.
    pub(crate) fn spawn_agent_listener(&self) {
        let app = self.clone();
        self.tasks.spawn(async move {
            let signals = &app.agent_signals;
            let mut pause = Duration::from_millis(250);
            loop {
                let listening = tokio::select! {
                    listening = app.store.agent_changes() => listening,
                    _ = app.stopping.cancelled() => return,
                };
                let mut changes = match listening {
                    Ok(changes) => changes,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot listen for agents' changes; polling the store meanwhile");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = app.stopping.cancelled() => return,
                        }
                        pause = (pause * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                pause = Duration::from_millis(250);
                signals.set_notified(true);
                // What changed before the listener was there.
                app.liveness.forget_credentials();
                signals.wake_all();
                let lost = tokio::select! {
                    lost = app.hear_agent_changes(&mut changes) => lost,
                    _ = app.stopping.cancelled() => return,
                };
                tracing::warn!("{lost}; listening again, polling the store meanwhile");
                signals.listener_lost.fetch_add(1, Ordering::Relaxed);
                signals.set_notified(false);
                signals.wake_all();
            }
        });
    }

    /// Wakes the waiters of each change `changes` hears until it no longer
    /// hears: answers why. Every [`ECHO_EVERY`] it sends itself an echo
    /// through the store's pool; one not heard within [`ECHO_WITHIN`] means
    /// the listening connection died without a word (a peer gone without
    /// closing, a middlebox dropping it), which would otherwise leave this
    /// replica trusting credentials and waiting on long-polls for changes
    /// it will never hear of.
    async fn hear_agent_changes(&self, changes: &mut tessera_store::AgentChanges) -> String {
        let signals = &self.agent_signals;
        let mut echo = tokio::time::interval(ECHO_EVERY);
        echo.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaited: Option<(String, tokio::time::Instant)> = None;
        loop {
            // Not cancelled by the echo's turns: a notification half read
            // would be lost.
            let next = changes.next();
            tokio::pin!(next);
            let change = loop {
                let overdue = awaited.as_ref().map(|(_, sent)| *sent + ECHO_WITHIN);
                tokio::select! {
                    change = &mut next => break change,
                    _ = tokio::time::sleep_until(overdue.unwrap_or_else(far_future)), if overdue.is_some() => {
                        return format!(
                            "the listener for agents' changes did not hear its echo within {} s",
                            ECHO_WITHIN.as_secs()
                        );
                    }
                    _ = echo.tick(), if awaited.is_none() => {
                        let token = secret("echo");
                        match self.store.echo_agent_changes(&token).await {
                            Ok(()) => awaited = Some((token, tokio::time::Instant::now())),
                            Err(err) => tracing::debug!(error = %err, "cannot send the agents' listener its echo"),
                        }
                    }
                }
            };
            match change {
                Ok(AgentChange::Desired(hostname)) => signals.wake(&hostname, HostChange::Desired),
                Ok(AgentChange::Reported(hostname)) => {
                    signals.wake(&hostname, HostChange::Reported);
                }
                Ok(AgentChange::Host(hostname)) => {
                    // Its credential may be another now, or gone.
                    self.liveness.forget_credential(&hostname);
                    signals.wake(&hostname, HostChange::Any);
                }
                Ok(AgentChange::Echo(token)) => {
                    if awaited.as_ref().is_some_and(|(sent, _)| *sent == token) {
                        awaited = None;
                    }
                }
                Ok(AgentChange::Missed) => {
                    // A new connection: an echo sent before is lost with
                    // the old one.
                    awaited = None;
                    self.liveness.forget_credentials();
                    signals.wake_all();
                }
                Ok(AgentChange::Unheard) => {
                    // Another process writes this SQLite file: what it
                    // changed is not told. Look again now, and in the store
                    // as when nothing is heard until it has stopped.
                    tracing::info!(
                        "another process writes this SQLite store: agents' credentials are trusted 5 s and long-polls look in the store every 5 s while it does"
                    );
                    signals.notified.store(false, Ordering::Relaxed);
                    self.liveness.forget_credentials();
                    signals.wake_all();
                }
                Ok(AgentChange::Heard) => {
                    tracing::info!(
                        "no other process has written this SQLite store for a minute: every change to agents is heard again"
                    );
                    // A credential read while the other process wrote may
                    // have been kept since: trusted a minute from now on,
                    // it is read again first.
                    self.liveness.forget_credentials();
                    signals.notified.store(true, Ordering::Relaxed);
                }
                Err(err) => return format!("listening for agents' changes failed: {err}"),
            }
        }
    }

    /// Whether this replica hears the store's notifications of agents'
    /// changes now (PostgreSQL; else it polls the store for other
    /// processes' changes), and how many times its listener was lost.
    pub fn agent_listener(&self) -> (bool, u64) {
        let signals = &self.agent_signals;
        (
            signals.notified(),
            signals.listener_lost.load(Ordering::Relaxed),
        )
    }

    /// The remote agent of a host, when one has registered.
    pub(crate) async fn remote_agent(&self, hostname: &str) -> Result<Option<Arc<dyn HostAgent>>> {
        if self.store.agent(hostname).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(RemoteAgent {
            hostname: hostname.to_string(),
            store: self.store.clone(),
            signals: self.agent_signals.clone(),
            sessions: self.sessions.clone(),
            advertise_url: self.config.advertise_url.clone(),
            sealing: self.config.secrets_key.clone(),
        })))
    }
}

/// A deadline that never comes (a disabled `select!` branch's).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// A high-entropy secret: `prefix_` and 64 hex digits.
pub(super) fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}
