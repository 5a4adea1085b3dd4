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
//! state, reports), `remote` (the [`RemoteAgent`] a host is driven through).

use crate::App;
use crate::error::Result;
use rand::RngCore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tessera_agent_api::HostAgent;
use tokio::sync::Notify;

mod join_tokens;
mod registration;
mod remote;
mod serving;
pub mod sessions;

pub use join_tokens::JoinToken;
use remote::RemoteAgent;

/// How long a desired-state poll waits for a change before answering empty.
pub const LONG_POLL: Duration = Duration::from_secs(20);

/// How often a replica looks in the store for changes another replica made
/// (a report, a new desired state), besides being woken by its own.
const STORE_POLL: Duration = Duration::from_millis(250);

/// Wakes whoever waits on a host's desired state or reports in this process.
#[derive(Default)]
pub(crate) struct AgentSignals {
    hosts: Mutex<HashMap<String, Arc<Notify>>>,
}

impl AgentSignals {
    fn of(&self, hostname: &str) -> Arc<Notify> {
        self.hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(hostname.to_string())
            .or_default()
            .clone()
    }
}

/// The agent an authenticated agent request comes from.
#[derive(Clone, Debug)]
pub struct AgentCaller {
    pub hostname: String,
}
impl App {
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

/// A high-entropy secret: `prefix_` and 64 hex digits.
pub(super) fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}
