//! Sessions into instances on remote hosts (a terminal), through each
//! agent's control channel (see [`tessera_agent_api::protocol`]): this
//! process asks the agent, on its channel, to open a session and dial back,
//! and hands the session's socket, when it arrives, to whoever asked.
//!
//! The design decision: channels and sessions waiting for their socket are
//! this process's (in memory), since a socket cannot move between
//! processes; a session asked of a host whose channel is connected to
//! another replica is refused, saying so.

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
    /// Asks `hostname`'s agent for a session and waits for its socket.
    pub(crate) async fn open(
        &self,
        hostname: &str,
        instance_id: &str,
        request: &SessionRequest,
    ) -> Result<Session, AgentError> {
        let channel = self
            .channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hostname)
            .map(|(_, tx)| tx.clone());
        let Some(channel) = channel else {
            return Err(AgentError::Unreachable(format!(
                "the agent of {hostname} has no control channel to this control-plane process \
                 (it is down, or connected to another replica)"
            )));
        };
        let session = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(session.clone(), (hostname.to_string(), tx));
        let sent = channel.send(ChannelMessage::Open {
            session: session.clone(),
            instance_id: instance_id.to_string(),
            request: request.clone(),
        });
        let outcome = match sent {
            Err(_) => Err(AgentError::Unreachable(format!(
                "the control channel of {hostname} closed"
            ))),
            Ok(()) => match tokio::time::timeout(DIAL_BACK, rx).await {
                Ok(Ok(session)) => Ok(session),
                Ok(Err(_)) => Err(AgentError::Failed("the session was dropped".into())),
                Err(_) => Err(AgentError::Unreachable(format!(
                    "the agent of {hostname} did not open the session within {} s",
                    DIAL_BACK.as_secs()
                ))),
            },
        };
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&session);
        outcome
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
