//! Serving the agent protocol: heartbeats, the long-polled desired state,
//! and what agents observed; silent agents make their hosts unreachable.

use super::{AgentCaller, LONG_POLL};
use crate::App;
use crate::error::{Error, Result};
use crate::identity::{CACHE_TTL, hash_token};
use std::time::Duration;
use tessera_agent_api::protocol::{Desired, DesiredPage, Heartbeat, Observed, WorkItem};

impl App {
    /// The agent a bearer credential belongs to. A credential verified is
    /// trusted without asking the store again for a minute while the
    /// store's notifications reach this replica (see [`super::liveness`]),
    /// else for [`CACHE_TTL`], like a user's.
    pub async fn authenticate_agent(&self, bearer: Option<&str>) -> Result<AgentCaller> {
        let Some(credential) = bearer else {
            return Err(Error::Unauthenticated(
                "an agent credential is required".into(),
            ));
        };
        let hash = hash_token(credential);
        let ttl = match self.agent_signals.notified() {
            true => super::liveness::CREDENTIAL_KEPT,
            false => CACHE_TTL,
        };
        if let Some(hostname) = self.liveness.verified(&hash, ttl) {
            return Ok(AgentCaller { hostname });
        }
        let read = self.liveness.epoch();
        match self.store.agent_by_credential(&hash).await? {
            Some(agent) => {
                self.liveness.verify(&hash, &agent.hostname, read);
                Ok(AgentCaller {
                    hostname: agent.hostname,
                })
            }
            None => Err(Error::Unauthenticated(
                "the agent credential is unknown or was replaced; register again with a join \
                 token"
                    .into(),
            )),
        }
    }

    /// Notes an agent's heartbeat and what it reports of its host. The
    /// host's time goes in the next batch when its inventory is the one
    /// this replica wrote lately (see [`super::liveness`]); else it is
    /// written now.
    pub async fn agent_heartbeat(&self, agent: &AgentCaller, beat: Heartbeat) -> Result<()> {
        let inventory = serde_json::to_string(&beat.inventory).unwrap_or_default();
        if !beat.instances.is_empty()
            && let Some(host) = self.store.host_by_hostname(&agent.hostname).await?
        {
            self.instances_observed(&host.id, beat.instances).await?;
        }
        if self.liveness.heard(&agent.hostname, &inventory) {
            return Ok(());
        }
        let news = self
            .store
            .agent_heartbeat(&agent.hostname, &inventory, &super::offer(&beat.inventory))
            .await?;
        self.liveness.written(&agent.hostname, &inventory);
        if news.back {
            self.host_reachable_again(&agent.hostname).await?;
        } else if news.offer_changed
            && let Some(host) = self.store.host_by_hostname(&agent.hostname).await?
        {
            tracing::info!(hostname = %agent.hostname, cpus = %beat.inventory.cpus, images = ?beat.inventory.images, "what the server offers changed");
            self.placement.refresh_host(&self.store, &host.id).await?;
        }
        Ok(())
    }

    /// A host whose agent had gone silent was heard from again.
    pub(super) async fn host_reachable_again(&self, hostname: &str) -> Result<()> {
        tracing::info!(%hostname, "host reachable again");
        if let Some(host) = self.store.host_by_hostname(hostname).await? {
            self.placement.refresh_host(&self.store, &host.id).await?;
            self.publish("host", &host.id, None, "reachable");
        }
        Ok(())
    }

    /// What changed in the agent's desired state after generation `after`,
    /// waiting up to `wait` for a change when nothing has.
    pub async fn agent_desired(
        &self,
        agent: &AgentCaller,
        after: i64,
        wait: Duration,
    ) -> Result<DesiredPage> {
        let signal = self.agent_signals.of(&agent.hostname);
        let deadline = tokio::time::Instant::now() + wait.min(LONG_POLL);
        loop {
            let notified = signal.desired.notified();
            // Newer work, or a generation from before a reset of the
            // store (then every object, from scratch).
            let (generation, rows) = self
                .store
                .desired_since(&agent.hostname, after)
                .await?
                .ok_or_else(|| no_longer_registered(&agent.hostname))?;
            if generation != after {
                let items = rows
                    .into_iter()
                    .filter_map(|row| {
                        let desired = serde_json::from_str::<Desired>(&row.desired).ok()?;
                        let desired = self.opened(desired)?;
                        Some(WorkItem {
                            observed: row.observed_generation >= row.generation,
                            key: row.key,
                            generation: row.generation,
                            desired,
                        })
                    })
                    .collect();
                return Ok(DesiredPage { generation, items });
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(DesiredPage {
                    generation,
                    items: Vec::new(),
                });
            }
            let nap = match self.agent_signals.long_poll_nap() {
                None => deadline - now,
                Some(nap) => (deadline - now).min(nap),
            };
            let unchanged = DesiredPage {
                generation,
                items: Vec::new(),
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(nap) => {
                    // Notified of every change, and none came: nothing to
                    // look for in the store.
                    if nap == deadline - now {
                        return Ok(unchanged);
                    }
                }
                _ = self.stopping.cancelled() => return Ok(unchanged),
            }
        }
    }

    /// A desired state as an agent is sent it: a replica's workload opened.
    /// One that cannot be opened (another replica's secrets key) is left
    /// out, and said so, rather than sent without its workload.
    fn opened(&self, desired: Desired) -> Option<Desired> {
        let Desired::Instance { mut spec, state } = desired else {
            return Some(desired);
        };
        let Some(sealed) = spec.sealed_workload.take() else {
            return Some(Desired::Instance { spec, state });
        };
        let context = super::remote::workload_context(&spec.id);
        let opened = self
            .sealing_key()
            .ok()
            .and_then(|key| key.open(&context, &sealed).ok())
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        match opened {
            Some(workload) => {
                spec.workload = Some(workload);
                Some(Desired::Instance { spec, state })
            }
            None => {
                tracing::error!(instance = %spec.id, "a replica's workload cannot be opened with this control plane's secrets key; every replica needs the same key");
                None
            }
        }
    }

    /// Records what an agent observed of one object.
    pub async fn agent_observed(&self, agent: &AgentCaller, observed: Observed) -> Result<()> {
        let body = serde_json::to_string(&observed.result).unwrap_or_default();
        let kept = self
            .store
            .set_observed(&agent.hostname, &observed.key, observed.generation, &body)
            .await?;
        if !kept {
            tracing::debug!(hostname = %agent.hostname, key = %observed.key, generation = observed.generation, "stale report ignored");
        }
        self.agent_signals
            .wake(&agent.hostname, super::HostChange::Reported);
        Ok(())
    }

    /// Marks hosts whose agent missed its heartbeats as unreachable.
    pub(crate) async fn check_heartbeats(&self) -> Result<()> {
        let silence = chrono::Duration::from_std(self.config.agent_silence).unwrap_or_default();
        let before = tessera_store::timestamp(chrono::Utc::now() - silence);
        for hostname in self.store.mark_agents_unreachable(&before).await? {
            tracing::warn!(%hostname, "host unreachable: its agent missed its heartbeats");
            if let Some(host) = self.store.host_by_hostname(&hostname).await? {
                self.placement.refresh_host(&self.store, &host.id).await?;
                self.publish("host", &host.id, None, "unreachable");
            }
        }
        Ok(())
    }
}

/// An agent's request after its host's agent was removed.
fn no_longer_registered(hostname: &str) -> Error {
    Error::Unauthenticated(format!("the agent of {hostname} is no longer registered"))
}
