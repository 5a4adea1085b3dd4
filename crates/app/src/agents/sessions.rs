//! Sessions into instances on remote hosts (a terminal), through each
//! agent's control channel (see [`tessera_agent_api::protocol`]): this
//! process asks the agent, on its channel, to open a session and dial back,
//! and hands the session's socket, when it arrives, to whoever asked.
//!
//! The design decision: channels and sessions waiting for their socket are
//! this process's (in memory), since a socket cannot move between
//! processes. A session asked of a host whose channel is connected to
//! another replica is relayed through the store: this replica records the
//! request with its own address (`advertise_url`), the replica holding the
//! channel takes it within [`RELAY_POLL`] and sends it down the channel,
//! and the agent dials this replica back directly, so the session's bytes
//! never cross a second replica.

use super::AgentCaller;
use crate::App;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tessera_agent_api::protocol::ChannelMessage;
use tessera_agent_api::{AgentError, Session, SessionRequest};
use tokio::sync::{mpsc, oneshot};

/// How long an agent has to open a session and dial its socket back.
const DIAL_BACK: Duration = Duration::from_secs(15);
/// How often a replica holding agent channels looks for sessions other
/// replicas asked of them.
pub(crate) const RELAY_POLL: Duration = Duration::from_millis(200);

/// How a replica without a host's channel asks the one with it: through
/// the store, to be dialled back at this replica's own address.
pub(crate) struct Relay<'a> {
    pub store: &'a tessera_store::Store,
    pub dial_back: &'a str,
}

/// The channels of the agents connected to this process, and the sessions
/// waiting for their socket.
#[derive(Default)]
pub(crate) struct SessionHub {
    channels: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<ChannelMessage>)>>,
    waiting: Mutex<HashMap<String, (String, oneshot::Sender<Session>)>>,
    next: AtomicU64,
}

/// An agent's channel, registered until dropped.
pub struct ChannelGuard {
    hub: Arc<SessionHub>,
    hostname: String,
    id: u64,
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let mut channels = self
            .hub
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A newer connection of the same agent may have replaced this one.
        if channels
            .get(&self.hostname)
            .is_some_and(|(id, _)| *id == self.id)
        {
            channels.remove(&self.hostname);
        }
    }
}

impl SessionHub {
    /// Asks `hostname`'s agent for a session and waits for its socket:
    /// down its channel when this process holds it, else through `relay`.
    pub(crate) async fn open(
        &self,
        hostname: &str,
        instance_id: &str,
        request: &SessionRequest,
        relay: Option<Relay<'_>>,
    ) -> Result<Session, AgentError> {
        let channel = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hostname)
            .map(|(_, tx)| tx.clone());
        if channel.is_none() && relay.is_none() {
            return Err(AgentError::Unreachable(format!(
                "the agent of {hostname} has no control channel to this control-plane process \
                 (it is down, or connected to another replica, and this one has no \
                 advertise_url to be dialled back at)"
            )));
        }
        let session = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session.clone(), (hostname.to_string(), tx));
        let mut relayed = None;
        let sent = match (channel, relay) {
            (Some(channel), _) => channel
                .send(ChannelMessage::Open {
                    session: session.clone(),
                    instance_id: instance_id.to_string(),
                    request: request.clone(),
                    dial_back: None,
                })
                .map_err(|_| {
                    AgentError::Unreachable(format!("the control channel of {hostname} closed"))
                }),
            (None, Some(relay)) => {
                let record = tessera_store::SessionRequestRecord {
                    session: session.clone(),
                    hostname: hostname.to_string(),
                    instance_id: instance_id.to_string(),
                    request: serde_json::to_string(request).unwrap_or_default(),
                    dial_back: relay.dial_back.to_string(),
                    created_at: tessera_store::now(),
                };
                relayed = Some(relay.store);
                relay.store.request_session(&record).await.map_err(|e| {
                    AgentError::Unreachable(format!(
                        "cannot ask the replica holding {hostname}'s channel: {e}"
                    ))
                })
            }
            (None, None) => unreachable!("checked above"),
        };
        let outcome = match sent {
            Err(err) => Err(err),
            Ok(()) => match tokio::time::timeout(DIAL_BACK, rx).await {
                Ok(Ok(session)) => Ok(session),
                Ok(Err(_)) => Err(AgentError::Failed("the session was dropped".into())),
                Err(_) => Err(AgentError::Unreachable(format!(
                    "the agent of {hostname} did not open the session within {} s \
                     (is it connected?)",
                    DIAL_BACK.as_secs()
                ))),
            },
        };
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session);
        if let Some(store) = relayed {
            // Not taken (no replica holds the channel): withdrawn.
            let _ = store.take_session_request(&session).await;
        }
        outcome
    }

    /// The hosts whose agents' channels this process holds.
    fn holds_any(&self) -> bool {
        !self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Whether this process holds the host's control channel.
    fn holds(&self, hostname: &str) -> bool {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(hostname)
    }

    /// Sends a message down a host's channel; `false` when this process no
    /// longer holds it.
    fn send(&self, hostname: &str, message: ChannelMessage) -> bool {
        let channel = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hostname)
            .map(|(_, tx)| tx.clone());
        channel.is_some_and(|tx| tx.send(message).is_ok())
    }
}

impl App {
    /// An agent's control channel opened: the messages to send on it, until
    /// the guard drops. A newer connection of the same agent replaces an
    /// older one.
    pub fn agent_channel(
        &self,
        agent: &AgentCaller,
    ) -> (ChannelGuard, mpsc::UnboundedReceiver<ChannelMessage>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.sessions.next.fetch_add(1, Ordering::Relaxed);
        self.sessions
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(agent.hostname.clone(), (id, tx));
        tracing::debug!(hostname = %agent.hostname, "agent control channel open");
        let guard = ChannelGuard {
            hub: self.sessions.clone(),
            hostname: agent.hostname.clone(),
            id,
        };
        (guard, rx)
    }

    /// Removes the session requests nobody waits for any more (an asker
    /// that went without withdrawing its own).
    pub(crate) async fn prune_session_requests(&self) -> Result<()> {
        let pruned = self.store.prune_session_requests(&stale_requests()).await?;
        if pruned > 0 {
            tracing::debug!(pruned, "stale session requests removed");
        }
        Ok(())
    }

    /// Sends down this process's channels the sessions other replicas
    /// asked of their hosts (each taken by one replica only); requests
    /// older than their asker waits are dropped.
    pub(crate) async fn relay_sessions(&self) -> Result<()> {
        if !self.sessions.holds_any() {
            return Ok(());
        }
        let stale = stale_requests();
        for asked in self.store.pending_session_requests(&stale).await? {
            if !self.sessions.holds(&asked.hostname) {
                continue;
            }
            if !self.store.take_session_request(&asked.session).await? {
                continue;
            }
            if asked.created_at < stale {
                continue;
            }
            let request = match serde_json::from_str::<SessionRequest>(&asked.request) {
                Ok(request) => request,
                Err(err) => {
                    tracing::warn!(session = %asked.session, error = %err, "an unreadable session request");
                    continue;
                }
            };
            let sent = self.sessions.send(
                &asked.hostname,
                ChannelMessage::Open {
                    session: asked.session.clone(),
                    instance_id: asked.instance_id,
                    request,
                    dial_back: Some(asked.dial_back),
                },
            );
            tracing::debug!(session = %asked.session, hostname = %asked.hostname, sent, "relayed a session");
        }
        Ok(())
    }

    /// The socket of a session an agent opened arrived: hands it to
    /// whoever asked for the session. Unknown, or another host's: 404.
    pub fn agent_session_arrived(
        &self,
        agent: &AgentCaller,
        session_id: &str,
        session: Session,
    ) -> Result<()> {
        let waiting = self
            .sessions
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(session_id);
        match waiting {
            Some((hostname, tx)) if hostname == agent.hostname => tx.send(session).map_err(|_| {
                Error::NotFound(format!("session {session_id} is no longer waited for"))
            }),
            Some(other) => {
                // Not this agent's: put it back for its own.
                self.sessions
                    .waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(session_id.to_string(), other);
                Err(Error::NotFound(format!("session {session_id} not found")))
            }
            None => Err(Error::NotFound(format!("session {session_id} not found"))),
        }
    }

    /// Whether `session_id` is waited for from this agent (checked before
    /// its socket is taken).
    pub fn agent_session_expected(&self, agent: &AgentCaller, session_id: &str) -> bool {
        self.sessions
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(session_id)
            .is_some_and(|(hostname, _)| *hostname == agent.hostname)
    }
}

/// Session requests made before this no longer have an asker waiting.
fn stale_requests() -> String {
    tessera_store::timestamp(
        chrono::Utc::now()
            - chrono::Duration::from_std(DIAL_BACK).unwrap_or(chrono::Duration::zero()),
    )
}
