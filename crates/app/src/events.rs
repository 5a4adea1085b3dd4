//! State changes as they happen: instance, host and operation events.
//!
//! Published in process on a broadcast channel. `GET /v1/events` streams a
//! project's events to WebSocket clients, and waiting on an operation wakes
//! on them; a waiter also polls the store, so that it sees what other
//! replicas did.

use crate::App;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// `instance`, `host` or `operation`.
    pub kind: &'static str,
    pub id: String,
    /// The project the resource belongs to; `None` for hosts, which
    /// belong to the fleet.
    pub project_id: Option<String>,
    /// The resource's new state or status.
    pub state: String,
    pub at: String,
}

impl App {
    pub(crate) fn publish(
        &self,
        kind: &'static str,
        id: &str,
        project_id: Option<&str>,
        state: &str,
    ) {
        // No receiver is not an error: nobody is listening.
        let _ = self.events.send(Event {
            kind,
            id: id.to_string(),
            project_id: project_id.map(str::to_string),
            state: state.to_string(),
            at: tessera_store::now(),
        });
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}
