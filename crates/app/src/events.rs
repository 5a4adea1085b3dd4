//! State changes: instance, host and operation events.
//!
//! Every change is appended to the store's event log (kept a week, for
//! audit), from which each process streams, so a client of any replica sees
//! every replica's changes, in order. Writes are batched by a writer task;
//! a pump polls the log and fans new events out to this process's
//! subscribers (`GET /v1/events`). Waiting on an operation does not go
//! through the log: it wakes on this process's changes at once and polls
//! the store for the others'.

use crate::App;
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tessera_store::{EventRecord, NewEvent};
use tokio::sync::{broadcast, mpsc};

/// How often the log is polled for new events.
const PUMP_EVERY: Duration = Duration::from_millis(200);
/// How far back each poll looks: a PostgreSQL transaction may commit an
/// event a little after later ones were seen.
const PUMP_WINDOW: chrono::Duration = chrono::Duration::seconds(3);
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

/// The channels of the event machinery.
pub(crate) struct EventBus {
    /// Events from the log, for subscribers.
    pub(crate) public: broadcast::Sender<Event>,
    /// Ids of resources this process just changed, for waiters.
    pub(crate) changes: broadcast::Sender<String>,
    outbox: mpsc::UnboundedSender<NewEvent>,
    inbox: std::sync::Mutex<Option<mpsc::UnboundedReceiver<NewEvent>>>,
    origin: String,
}

impl EventBus {
    pub(crate) fn new() -> EventBus {
        let (outbox, inbox) = mpsc::unbounded_channel();
        EventBus {
            public: broadcast::channel(4096).0,
            changes: broadcast::channel(1024).0,
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
        let _ = self.events.changes.send(id.to_string());
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

    /// Ids of what this process changes from now on.
    pub(crate) fn changes(&self) -> broadcast::Receiver<String> {
        self.events.changes.subscribe()
    }

    /// A project's events after `seq` from the log (with host events when
    /// `hosts`), for a client catching up.
    pub async fn events_after(
        &self,
        project_id: &str,
        hosts: bool,
        seq: i64,
    ) -> crate::Result<Vec<Event>> {
        Ok(self
            .store
            .project_events_after(project_id, hosts, seq, 1000)
            .await?
            .into_iter()
            .map(Event::from)
            .collect())
    }

    /// Starts the writer and the pump (once).
    pub fn spawn_event_tasks(&self) {
        let Some(mut inbox) = self
            .events
            .inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
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
            let started = chrono::Utc::now();
            let mut seen: HashMap<i64, Instant> = HashMap::new();
            let mut tick = tokio::time::interval(PUMP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = app.stopping.cancelled() => return,
                }
                let since = (chrono::Utc::now() - PUMP_WINDOW).max(started);
                let rows = match app
                    .store
                    .events_since_time(&tessera_store::timestamp(since))
                    .await
                {
                    Ok(rows) => rows,
                    Err(err) => {
                        tracing::debug!(error = %err, "polling the event log failed");
                        continue;
                    }
                };
                let now = Instant::now();
                for row in rows {
                    if seen.insert(row.seq, now).is_none() {
                        let _ = app.events.public.send(Event::from(row));
                    }
                }
                seen.retain(|_, at| now.duration_since(*at) < Duration::from_secs(10));
            }
        });
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
