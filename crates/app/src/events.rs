//! State changes: instance, host and operation events.
//!
//! Every change is appended to the store's event log (kept a week, for
//! audit), from which each process streams, so a client of any replica sees
//! every replica's changes, in order. Writes are batched by a writer task;
//! a pump polls the log and fans new events out to this process's
//! subscribers (`GET /v1/events`). Waiting on an operation does not go
//! through the log: it wakes on this process's changes at once and polls
//! the store for the others'.

use crate::identity::Principal;
use crate::{App, Error, Result};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::sync::PoisonError;
use std::time::{Duration, Instant};
use tessera_core::Permission;
use tessera_store::{EventRecord, NewEvent};
use tokio::sync::{broadcast, mpsc, watch};

/// How often the log is polled for new events.
const PUMP_EVERY: Duration = Duration::from_millis(200);
/// How long a gap in `seq` is waited for before it is taken for a
/// rolled-back insert: on PostgreSQL a transaction may commit an event a
/// little after later ones were seen.
const GAP_PATIENCE: Duration = Duration::from_secs(10);
/// The most events a reconnecting client is replayed at once.
pub const REPLAY_LIMIT: usize = 10_000;
/// How long events are kept.
pub const RETENTION: chrono::Duration = chrono::Duration::days(7);

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Its place in the log.
    pub seq: i64,
    /// `instance`, `host` or `operation`.
    pub kind: String,
    pub id: String,
    /// The project the resource belongs to; `None` for hosts, which
    /// belong to the fleet.
    pub project_id: Option<String>,
    /// The resource's new state or status.
    pub state: String,
    pub at: String,
}

impl From<EventRecord> for Event {
    fn from(r: EventRecord) -> Self {
        Event {
            seq: r.seq,
            kind: r.kind,
            id: r.resource_id,
            project_id: r.project_id,
            state: r.state,
            at: r.at,
        }
    }
}

/// How often a feed, or any long-lived session, checks that its
/// credential still holds (a revoked token or a disabled user is cut off).
pub const RECHECK_EVERY: Duration = Duration::from_secs(15);

/// What a feed gives next.
#[derive(Debug)]
pub enum FeedItem {
    /// An event the caller may see, in `seq` order.
    Event(Event),
    /// The feed fell behind and skipped this many events: reconnect with
    /// the last `seq` seen to catch up.
    Lagged(u64),
    /// The feed is over, for this reason.
    Ended(FeedEnd),
}

/// Why an event feed ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedEnd {
    /// The credential it was opened with no longer allows it (revoked,
    /// expired, its user disabled, its grants changed).
    CredentialGone,
    /// The credential could not be checked again (the store failed).
    Unchecked,
    /// The server is stopping.
    Stopping,
}

impl FeedEnd {
    /// Why, as the stream's last words.
    pub fn reason(self) -> &'static str {
        match self {
            FeedEnd::CredentialGone => {
                "the credential this stream was opened with no longer allows it"
            }
            FeedEnd::Unchecked => "the credential could not be checked again; reconnect",
            FeedEnd::Stopping => "the server is stopping; reconnect",
        }
    }
}

/// A caller's live view of the event log: first the logged events after
/// the `seq` it asked for, then each new one it may see (its project's,
/// and the fleet's hosts' for those who may read servers). It checks its
/// credential again every [`RECHECK_EVERY`], so a revoked credential or a
/// disabled user stops seeing events.
pub struct EventFeed {
    app: App,
    bearer: Option<String>,
    /// Read as the containers API reads credentials.
    compute: bool,
    caller: Principal,
    /// The logged events replayed before the live ones.
    pub replay: Vec<Event>,
    /// More were logged than one replay gives ([`REPLAY_LIMIT`]).
    pub truncated: bool,
    live: broadcast::Receiver<Event>,
    recheck: tokio::time::Interval,
    /// The last `seq` given, so nothing is given twice.
    last: i64,
}

impl EventFeed {
    /// The next event the caller may see, or why there are no more.
    pub async fn next(&mut self) -> FeedItem {
        loop {
            tokio::select! {
                _ = self.recheck.tick() => {
                    match self.app.feed_caller(self.bearer.as_deref(), self.compute).await {
                        Ok(now) => self.caller = now,
                        Err(Error::Unauthenticated(_) | Error::Forbidden(_)) => {
                            return FeedItem::Ended(FeedEnd::CredentialGone);
                        }
                        Err(_) => return FeedItem::Ended(FeedEnd::Unchecked),
                    }
                }
                _ = self.app.stopping.cancelled() => return FeedItem::Ended(FeedEnd::Stopping),
                event = self.live.recv() => match event {
                    Ok(event) if event.seq > self.last && visible(&self.caller, &event) => {
                        self.last = event.seq;
                        return FeedItem::Event(event);
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return FeedItem::Lagged(missed);
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return FeedItem::Ended(FeedEnd::Stopping);
                    }
                },
            }
        }
    }

    /// The `seq` of the last event given (replayed or live).
    pub fn last_seq(&self) -> i64 {
        self.last
    }
}

/// Whether a caller may see an event: its own project's, and hosts' (which
/// belong to the fleet) if it may read servers.
fn visible(caller: &Principal, event: &Event) -> bool {
    match &event.project_id {
        Some(project) => *project == caller.project_id,
        None => caller.can(Permission::ServerRead),
    }
}

/// The channels of the event machinery.
pub(crate) struct EventBus {
    /// Events from the log, for subscribers.
    pub(crate) public: broadcast::Sender<Event>,
    /// Waiters on resources this process changes, by id.
    pub(crate) changes: std::sync::Arc<ChangeWaiters>,
    outbox: mpsc::UnboundedSender<NewEvent>,
    inbox: std::sync::Mutex<Option<mpsc::UnboundedReceiver<NewEvent>>>,
    origin: String,
}

/// Who waits on which resource, so that a change wakes only its own
/// waiters: with one channel for every change, each of a thousand creations
/// in flight would wake at each of the others' changes.
#[derive(Default)]
pub(crate) struct ChangeWaiters {
    /// A resource's change count, and how many watch it.
    watched: std::sync::Mutex<HashMap<String, (watch::Sender<u64>, usize)>>,
}

impl ChangeWaiters {
    fn changed(&self, id: &str) {
        let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((count, _)) = watched.get(id) {
            count.send_modify(|n| *n += 1);
        }
    }
}

/// A watch on one resource's changes in this process; dropping it stops
/// watching.
pub(crate) struct ChangeWatch {
    waiters: std::sync::Arc<ChangeWaiters>,
    id: String,
    changes: watch::Receiver<u64>,
}

impl ChangeWatch {
    fn new(waiters: &std::sync::Arc<ChangeWaiters>, id: &str) -> ChangeWatch {
        let mut watched = waiters
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (count, watchers) = watched
            .entry(id.to_string())
            .or_insert_with(|| (watch::channel(0).0, 0));
        *watchers += 1;
        ChangeWatch {
            waiters: waiters.clone(),
            id: id.to_string(),
            changes: count.subscribe(),
        }
    }

    /// Resolves at the next change since the last one this watch saw.
    pub(crate) async fn changed(&mut self) {
        // The sender lives as long as this watch does.
        let _ = self.changes.changed().await;
    }
}

impl Drop for ChangeWatch {
    fn drop(&mut self) {
        let mut watched = self
            .waiters
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, watchers)) = watched.get_mut(&self.id) {
            *watchers -= 1;
            if *watchers == 0 {
                watched.remove(&self.id);
            }
        }
    }
}

impl EventBus {
    pub(crate) fn new() -> EventBus {
        let (outbox, inbox) = mpsc::unbounded_channel();
        EventBus {
            public: broadcast::channel(4096).0,
            changes: std::sync::Arc::default(),
            outbox,
            inbox: std::sync::Mutex::new(Some(inbox)),
            origin: uuid::Uuid::new_v4().to_string(),
        }
    }
}

impl App {
    pub(crate) fn publish(
        &self,
        kind: &'static str,
        id: &str,
        project_id: Option<&str>,
        state: &str,
    ) {
        // No receiver is not an error: nobody is waiting.
        self.events.changes.changed(id);
        let _ = self.events.outbox.send(NewEvent {
            origin: self.events.origin.clone(),
            kind: kind.to_string(),
            resource_id: id.to_string(),
            project_id: project_id.map(str::to_string),
            state: state.to_string(),
            at: tessera_store::now(),
        });
    }

    /// Every event from now on, from every replica.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.public.subscribe()
    }

    /// Opens a feed of the events a bearer credential's caller may see,
    /// replaying the logged ones after `since` first.
    pub async fn event_feed(&self, bearer: Option<&str>, since: Option<i64>) -> Result<EventFeed> {
        self.feed(bearer, since, false).await
    }

    /// [`App::event_feed`] for the containers API's socket: its credential
    /// is read as that API reads it ([`Principal::on_compute_face`]), so a
    /// token limited by containers-API grants alone has its feed.
    pub async fn compute_event_feed(&self, bearer: Option<&str>) -> Result<EventFeed> {
        self.feed(bearer, None, true).await
    }

    async fn feed_caller(&self, bearer: Option<&str>, compute: bool) -> Result<Principal> {
        let caller = self.authenticate(bearer).await?;
        let caller = match compute {
            true => caller.on_compute_face(),
            false => caller,
        };
        caller.require(Permission::OperationRead)?;
        Ok(caller)
    }

    async fn feed(
        &self,
        bearer: Option<&str>,
        since: Option<i64>,
        compute: bool,
    ) -> Result<EventFeed> {
        let caller = self.feed_caller(bearer, compute).await?;
        // Subscribed before the replay is read, so nothing falls between.
        let live = self.subscribe();
        let (replay, truncated) = match since {
            Some(seq) => {
                self.events_after(&caller.project_id, caller.can(Permission::ServerRead), seq)
                    .await?
            }
            None => (Vec::new(), false),
        };
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.reset();
        Ok(EventFeed {
            app: self.clone(),
            bearer: bearer.map(str::to_string),
            compute,
            last: replay.last().map_or(i64::MIN, |e| e.seq),
            caller,
            replay,
            truncated,
            live,
            recheck,
        })
    }

    /// A watch on this process's changes to `id` from now on.
    pub(crate) fn watch_changes(&self, id: &str) -> ChangeWatch {
        ChangeWatch::new(&self.events.changes, id)
    }

    /// A project's events after `seq` from the log (with host events when
    /// `hosts`), for a client catching up: at most [`REPLAY_LIMIT`], and
    /// whether more were left out.
    pub async fn events_after(
        &self,
        project_id: &str,
        hosts: bool,
        seq: i64,
    ) -> Result<(Vec<Event>, bool)> {
        let mut events: Vec<Event> = Vec::new();
        let mut after = seq;
        loop {
            let page = self
                .store
                .project_events_after(project_id, hosts, after, 1000)
                .await?;
            let full = page.len() == 1000;
            events.extend(page.into_iter().map(Event::from));
            after = events.last().map_or(after, |e| e.seq);
            if !full {
                return Ok((events, false));
            }
            if events.len() >= REPLAY_LIMIT {
                return Ok((events, true));
            }
        }
    }

    /// Starts the writer and the pump (once). The pump starts from the
    /// log's end as it is now, before this process serves anyone: a client
    /// that connects once it serves hears every event recorded after, by
    /// any replica. (Read at the pump's first tick, the end could be later
    /// than a client's connection, on a loaded machine, and what was
    /// recorded between was never streamed.)
    pub async fn spawn_event_tasks(&self) -> crate::Result<()> {
        let start = self.store.max_event_seq().await?;
        let Some(mut inbox) = self
            .events
            .inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        let app = self.clone();
        self.tasks.spawn(async move {
            loop {
                let first = tokio::select! {
                    first = inbox.recv() => first,
                    _ = app.stopping.cancelled() => None,
                };
                let Some(first) = first else { break };
                let mut batch = vec![first];
                while batch.len() < 500 {
                    match inbox.try_recv() {
                        Ok(event) => batch.push(event),
                        Err(_) => break,
                    }
                }
                if let Err(err) = app.store.insert_events(&batch).await {
                    tracing::warn!(error = %err, lost = batch.len(), "recording events failed");
                }
            }
            // Record what is left at shutdown.
            let mut rest = Vec::new();
            while let Ok(event) = inbox.try_recv() {
                rest.push(event);
            }
            if !rest.is_empty()
                && let Err(err) = app.store.insert_events(&rest).await
            {
                tracing::warn!(error = %err, lost = rest.len(), "recording events failed");
            }
        });
        let app = self.clone();
        self.tasks.spawn(async move {
            let mut pump = Pump {
                cursor: start,
                ahead: BTreeSet::new(),
                gap_since: None,
            };
            let mut tick = tokio::time::interval(PUMP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = app.stopping.cancelled() => return,
                }
                if let Err(err) = pump.poll(&app).await {
                    tracing::debug!(error = %err, "polling the event log failed");
                }
            }
        });
        Ok(())
    }

    /// Forgets events older than [`RETENTION`].
    pub(crate) async fn prune_events(&self) -> crate::Result<()> {
        let before = tessera_store::timestamp(chrono::Utc::now() - RETENTION);
        let pruned = self.store.prune_events(&before).await?;
        if pruned > 0 {
            tracing::debug!(pruned, "old events forgotten");
        }
        Ok(())
    }
}

/// Reads the log in `seq` order and publishes what is new.
struct Pump {
    /// Every event up to here has been published (or given up on).
    cursor: i64,
    /// Published events beyond a gap.
    ahead: BTreeSet<i64>,
    /// Since when the gap after `cursor` has been open.
    gap_since: Option<Instant>,
}

impl Pump {
    async fn poll(&mut self, app: &App) -> crate::Result<()> {
        let cursor = self.cursor;
        let rows = app.store.events_after_seq(cursor, 2000).await?;
        for row in rows {
            if self.ahead.insert(row.seq) {
                let _ = app.events.public.send(Event::from(row));
            }
        }
        let mut cursor = cursor;
        loop {
            while self.ahead.remove(&(cursor + 1)) {
                cursor += 1;
                self.gap_since = None;
            }
            let Some(&next) = self.ahead.first() else {
                break;
            };
            // A gap before `next`: a transaction still to commit, or an
            // insert that was rolled back. Wait a while, then move on.
            let since = *self.gap_since.get_or_insert_with(Instant::now);
            if since.elapsed() < GAP_PATIENCE {
                break;
            }
            cursor = next - 1;
            self.gap_since = None;
        }
        self.cursor = cursor;
        Ok(())
    }
}
