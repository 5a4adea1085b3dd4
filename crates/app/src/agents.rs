//! The control plane's side of the agent protocol
//! ([`tessera_agent_api::protocol`]): join tokens, registration,
//! heartbeats, and [`RemoteAgent`], which drives a host by writing its
//! desired state to the store and waiting for the agent's report.
//!
//! A host whose agent has registered is driven through [`RemoteAgent`];
//! any other host through the directory the server was started with (the
//! simulated fleet, or none: the host then waits for its agent).

use crate::error::{Error, Result};
use crate::identity::{Principal, hash_token};
use crate::servers::CreateServer;
use crate::{App, new_id};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tessera_agent_api::protocol::{
    self, Desired, DesiredPage, Heartbeat, InstanceState, Inventory, Observed, Outcome,
    RegisterRequest, RegisterResponse, WorkItem,
};
use tessera_agent_api::{
    AgentError, HostAgent, HostReport, HostScript, HostSpec, InstanceReport, InstanceSpec,
    ScriptOutcome, UnitSpec, VolumeReport, VolumeSpec,
};
use tessera_core::Permission;
use tessera_core::status::HostStatus;
use tessera_store::{AgentRecord, Store};
use tokio::sync::Notify;

/// How long a desired-state poll waits for a change before answering empty.
pub const LONG_POLL: Duration = Duration::from_secs(20);

/// How often a replica looks in the store for changes another replica made
/// (a report, a new desired state), besides being woken by its own.
const STORE_POLL: Duration = Duration::from_millis(250);

/// A new join token.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JoinToken {
    pub id: String,
    /// The secret, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub description: String,
    pub created_at: String,
    pub expires_at: String,
    pub revoked: bool,
    /// Past its expiry: no host joins with it any more.
    pub expired: bool,
    /// The one host whose agent it may replace, if any.
    pub replaces: Option<String>,
}

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
    /// Creates a join token a new host's agent registers with. With
    /// `replaces`, it also admits a new agent for that one registered host,
    /// which no other token does once the host has had an agent.
    pub async fn create_join_token(
        &self,
        caller: &Principal,
        description: Option<String>,
        ttl: Option<Duration>,
        replaces: Option<String>,
    ) -> Result<JoinToken> {
        caller.require(Permission::ServerCreate)?;
        if let Some(hostname) = &replaces {
            let host = self.find_server(hostname).await.map_err(|_| {
                Error::invalid(
                    "replaces",
                    format!("replaces names server {hostname}, which is not registered"),
                )
            })?;
            if host.status == HostStatus::Decommissioned {
                return Err(Error::invalid(
                    "replaces",
                    format!("server {hostname} is decommissioned; register it again instead"),
                ));
            }
        }
        let replaces = match replaces {
            Some(name) => Some(self.find_server(&name).await?.hostname),
            None => None,
        };
        let description = description.unwrap_or_default();
        if description.len() > 200 || description.chars().any(char::is_control) {
            return Err(Error::invalid(
                "description",
                "description must be at most 200 printable characters",
            ));
        }
        let ttl = ttl.unwrap_or(Duration::from_secs(24 * 3600));
        if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(365 * 24 * 3600) {
            return Err(Error::invalid(
                "ttl_seconds",
                "ttl_seconds must be between 60 and 31536000",
            ));
        }
        let token = secret("tsj");
        let id = new_id("jt");
        let expires_at = tessera_store::timestamp(
            chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default(),
        );
        self.store
            .insert_join_token(
                &id,
                &hash_token(&token),
                &description,
                Some(&caller.username),
                &expires_at,
                replaces.as_deref(),
            )
            .await?;
        if let Some(hostname) = &replaces {
            tracing::warn!(%hostname, by = %caller.username, "join token made to replace a host's agent");
        }
        Ok(JoinToken {
            id,
            token: Some(token),
            description,
            created_at: tessera_store::now(),
            expires_at,
            revoked: false,
            expired: false,
            replaces,
        })
    }

    /// A join token for the agent `tessera up` starts beside the control
    /// plane, valid for an hour. It may replace the agent of `hostname`, this
    /// machine (one that lost its state directory): the token never leaves
    /// the process.
    pub async fn local_join_token(&self, hostname: &str) -> Result<String> {
        let token = secret("tsj");
        let expires_at = tessera_store::timestamp(chrono::Utc::now() + chrono::Duration::hours(1));
        self.store
            .insert_join_token(
                &new_id("jt"),
                &hash_token(&token),
                "tessera up: the local agent",
                None,
                &expires_at,
                Some(hostname),
            )
            .await?;
        Ok(token)
    }

    pub async fn join_tokens(&self, caller: &Principal) -> Result<Vec<JoinToken>> {
        caller.require(Permission::ServerRead)?;
        Ok(self
            .store
            .join_tokens()
            .await?
            .into_iter()
            .map(|t| JoinToken {
                id: t.id,
                token: None,
                description: t.description,
                created_at: t.created_at,
                expired: t.expires_at.as_str() <= tessera_store::now().as_str(),
                expires_at: t.expires_at,
                revoked: t.revoked_at.is_some(),
                replaces: t.replaces,
            })
            .collect())
    }

    pub async fn revoke_join_token(&self, caller: &Principal, id: &str) -> Result<()> {
        caller.require(Permission::ServerCreate)?;
        let revoked = match crate::has_nul(id) {
            true => false,
            false => self.store.revoke_join_token(id).await?,
        };
        match revoked {
            true => Ok(()),
            false => Err(Error::NotFound(format!(
                "join token {} not found or already revoked",
                id.escape_debug()
            ))),
        }
    }

    /// Registers the agent of a host: exchanges a join token for the host's
    /// own credential. A host the control plane does not know yet is
    /// registered as a pooled host with the CPUs the agent reported (unless
    /// its agent serves units only); one
    /// registered before (Kloigos `init_server`, `POST /v1/servers`) gets
    /// its agent, and its preparation, waiting for it, goes on.
    pub async fn register_agent(&self, req: RegisterRequest) -> Result<RegisterResponse> {
        let token = self
            .store
            .join_token_by_hash(&hash_token(&req.join_token))
            .await?;
        let token = token.filter(|t| {
            t.revoked_at.is_none() && t.expires_at.as_str() > tessera_store::now().as_str()
        });
        let Some(token) = token else {
            return Err(Error::Unauthenticated(
                "the join token is unknown, expired or revoked; create one with `tessera \
                 join-token create`"
                    .into(),
            ));
        };
        crate::hosts::validate_hostname(&req.hostname)?;
        if req.ip.parse::<std::net::IpAddr>().is_err()
            && crate::hosts::validate_hostname(&req.ip).is_err()
        {
            return Err(Error::invalid(
                "ip",
                format!("{:?} is neither an IP address nor a host name", req.ip),
            ));
        }
        let previous_agent = self.store.agent(&req.hostname).await?;
        if let Some(live) = &previous_agent {
            let silence = chrono::Duration::from_std(self.config.agent_silence).unwrap_or_default();
            let quiet_since = tessera_store::timestamp(chrono::Utc::now() - silence);
            if live.reachable == 1 && live.last_seen.as_str() > quiet_since.as_str() {
                return Err(Error::Conflict(format!(
                    "{} already has a live agent (last heard from at {}); stop it, or give \
                     this one another --hostname",
                    req.hostname, live.last_seen
                )));
            }
        }
        if !matches!(req.driver.as_str(), "unit" | "container" | "sim") {
            return Err(Error::invalid(
                "driver",
                format!("driver {:?} is not one of unit, container, sim", req.driver),
            ));
        }
        if req.inventory.cpus.is_empty() {
            return Err(Error::invalid(
                "inventory",
                "the host reports no CPU for instances",
            ));
        }
        let location = req.location.clone().unwrap_or_else(|| "local".into());
        let existing = self.store.host_by_hostname(&req.hostname).await?;
        // A host that has had an agent (or is served without one, as a
        // simulated host is) is handed to a new agent only with a join token
        // an admin made for that: holding a join token is not enough to
        // take over a host.
        let waiting_for_first_agent = |host: &tessera_store::HostRecord| {
            matches!(host.status, HostStatus::Initializing | HostStatus::InitFail)
        };
        let claimable = match &existing {
            Some(host) if host.status == HostStatus::Decommissioned => true,
            Some(host) => previous_agent.is_none() && waiting_for_first_agent(host),
            None => previous_agent.is_none(),
        };
        if !claimable && token.replaces.as_deref() != Some(req.hostname.as_str()) {
            return Err(Error::Conflict(format!(
                "{} is a registered host that has had an agent; to give it a new one, an admin \
                 makes a join token for that: `tessera join-token create --replace {}`",
                req.hostname, req.hostname
            )));
        }
        let new_host = match &existing {
            Some(host) if host.status != HostStatus::Decommissioned => None,
            Some(host) => {
                return Err(Error::Conflict(format!(
                    "server {} was decommissioned; register it again (POST /v1/servers/create \
                     or Kloigos init_server) before its agent rejoins",
                    host.hostname
                )));
            }
            // A units-only host serves the Kloigos partition an operator
            // registers for it (`init_server`), and nothing before that.
            None if req.driver == "unit" => None,
            None => {
                let numa_nodes = req
                    .inventory
                    .numa_nodes
                    .iter()
                    .map(|n| n.intersection(&req.inventory.cpus))
                    .filter(|n| !n.is_empty())
                    .map(|n| n.to_string())
                    .collect();
                let create = CreateServer {
                    hostname: req.hostname.clone(),
                    ip_address: req.ip.clone(),
                    provider: Some("tessera-agent".into()),
                    region: Some(location.clone()),
                    zone: location.clone(),
                    cpus: Some(req.inventory.cpus.to_string()),
                    numa_nodes,
                    server_id: new_id("host"),
                    ..CreateServer::default()
                };
                let mut host = self.new_host(&create)?;
                host.memory_mb = i64::try_from(req.inventory.memory_mb).unwrap_or(i64::MAX);
                Some(host)
            }
        };
        let credential = secret("tsh");
        let inventory = serde_json::to_string(&req.inventory).unwrap_or_default();
        self.store
            .register_agent(
                &req.hostname,
                &hash_token(&credential),
                &req.driver,
                &inventory,
            )
            .await?;
        let host_id = match (new_host, existing) {
            (Some(new), _) => {
                if !self.store.insert_host(&new).await? {
                    return Err(Error::Conflict(format!(
                        "server {} was registered meanwhile; register the agent again",
                        new.hostname
                    )));
                }
                self.placement.refresh_host(&self.store, &new.id).await?;
                new.id
            }
            (None, Some(host)) => {
                if host.ip.is_empty()
                    && self
                        .store
                        .set_host_address_if_unknown(&host.id, &req.ip)
                        .await?
                {
                    tracing::info!(hostname = %req.hostname, ip = %req.ip, "server takes the address its agent reported");
                }
                host.id
            }
            (None, None) => {
                tracing::info!(hostname = %req.hostname, "units-only agent registered; its host waits for init_server");
                return Ok(RegisterResponse {
                    credential,
                    hostname: req.hostname,
                });
            }
        };
        tracing::info!(hostname = %req.hostname, driver = %req.driver, "agent registered");
        self.forget_agent(&tessera_core::HostId::new(host_id.as_str()));
        let app = self.clone();
        self.tasks
            .spawn(async move { app.drive_host(&host_id).await });
        Ok(RegisterResponse {
            credential,
            hostname: req.hostname,
        })
    }

    /// The agent a bearer credential belongs to.
    pub async fn authenticate_agent(&self, bearer: Option<&str>) -> Result<AgentCaller> {
        let Some(credential) = bearer else {
            return Err(Error::Unauthenticated(
                "an agent credential is required".into(),
            ));
        };
        match self
            .store
            .agent_by_credential(&hash_token(credential))
            .await?
        {
            Some(agent) => Ok(AgentCaller {
                hostname: agent.hostname,
            }),
            None => Err(Error::Unauthenticated(
                "the agent credential is unknown or was replaced; register again with a join \
                 token"
                    .into(),
            )),
        }
    }

    /// Notes an agent's heartbeat and what it reports of its host.
    pub async fn agent_heartbeat(&self, agent: &AgentCaller, beat: Heartbeat) -> Result<()> {
        let inventory = serde_json::to_string(&beat.inventory).unwrap_or_default();
        if self
            .store
            .agent_heartbeat(&agent.hostname, &inventory)
            .await?
        {
            tracing::info!(hostname = %agent.hostname, "host reachable again");
            if let Some(host) = self.store.host_by_hostname(&agent.hostname).await? {
                self.placement.refresh_host(&self.store, &host.id).await?;
                self.publish("host", &host.id, None, "reachable");
            }
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
            let notified = signal.notified();
            let record = self.agent_record(&agent.hostname).await?;
            if record.generation != after {
                // Newer work, or a generation from before a reset of the
                // store: answer from scratch in the second case.
                let from = if after > record.generation { 0 } else { after };
                let rows = self.store.work_after(&agent.hostname, from).await?;
                let items = rows
                    .into_iter()
                    .filter_map(|row| {
                        let desired = serde_json::from_str::<Desired>(&row.desired).ok()?;
                        Some(WorkItem {
                            observed: row.observed_generation >= row.generation,
                            key: row.key,
                            generation: row.generation,
                            desired,
                        })
                    })
                    .collect();
                return Ok(DesiredPage {
                    generation: record.generation,
                    items,
                });
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(DesiredPage {
                    generation: record.generation,
                    items: Vec::new(),
                });
            }
            let nap = (deadline - now).min(STORE_POLL * 4);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(nap) => {}
                _ = self.stopping.cancelled() => {
                    return Ok(DesiredPage { generation: record.generation, items: Vec::new() });
                }
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
        self.agent_signals.of(&agent.hostname).notify_waiters();
        Ok(())
    }

    async fn agent_record(&self, hostname: &str) -> Result<AgentRecord> {
        self.store.agent(hostname).await?.ok_or_else(|| {
            Error::Unauthenticated(format!("the agent of {hostname} is no longer registered"))
        })
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
        })))
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

/// A high-entropy secret: `prefix_` and 64 hex digits.
fn secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// A host driven through its agent's desired state.
struct RemoteAgent {
    hostname: String,
    store: Store,
    signals: Arc<AgentSignals>,
}

impl RemoteAgent {
    /// Sets `key`'s desired state and waits for the agent's report on it;
    /// answers the report and the generation it answers.
    async fn converge(&self, key: &str, desired: &Desired) -> Result<(Outcome, i64), AgentError> {
        let body = serde_json::to_string(desired)
            .map_err(|e| AgentError::Failed(format!("cannot encode the desired state: {e}")))?;
        let pending = self
            .store
            .work(&self.hostname, key)
            .await
            .map_err(store_error)?
            .filter(|row| row.desired == body && row.observed_generation < row.generation);
        let generation = match pending {
            // The same change is still under way (a call repeated after a
            // timeout): wait for it rather than ask for it twice.
            Some(row) => row.generation,
            None => self
                .store
                .set_desired(&self.hostname, key, &body)
                .await
                .map_err(store_error)?
                .ok_or_else(|| {
                    AgentError::Unreachable(format!("{} has no registered agent", self.hostname))
                })?,
        };
        let signal = self.signals.of(&self.hostname);
        signal.notify_waiters();
        let agent = self
            .store
            .agent(&self.hostname)
            .await
            .map_err(store_error)?;
        if agent.is_some_and(|a| a.reachable == 0) {
            return Err(AgentError::Unreachable(format!(
                "the agent of {} missed its heartbeats",
                self.hostname
            )));
        }
        loop {
            let notified = signal.notified();
            let row = self
                .store
                .work(&self.hostname, key)
                .await
                .map_err(store_error)?;
            match row {
                None => {
                    return Err(AgentError::Failed(format!(
                        "{key} on {} was superseded",
                        self.hostname
                    )));
                }
                Some(row) if row.generation > generation => {
                    return Err(AgentError::Failed(format!(
                        "{key} on {} was superseded by a newer change",
                        self.hostname
                    )));
                }
                Some(row) if row.observed_generation >= generation => {
                    let observed = row.observed.unwrap_or_default();
                    let outcome = serde_json::from_str::<Result<Outcome, AgentError>>(&observed)
                        .map_err(|e| {
                        AgentError::Failed(format!("the agent's report is unreadable: {e}"))
                    })??;
                    return Ok((outcome, generation));
                }
                Some(_) => {}
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(STORE_POLL) => {}
            }
        }
    }

    /// [`RemoteAgent::converge`] for a change that must not happen later
    /// when it did not happen now (a stop or a start that failed or timed
    /// out leaves the instance as it was): unless it succeeds, the key's
    /// earlier desired state is written back, even when the wait is cut
    /// short by the caller's timeout.
    async fn converge_or_restore(
        &self,
        key: &str,
        desired: &Desired,
    ) -> Result<(Outcome, i64), AgentError> {
        let previous = self
            .store
            .work(&self.hostname, key)
            .await
            .map_err(store_error)?
            .map(|row| row.desired);
        let mut restore = RestoreOnDrop {
            store: self.store.clone(),
            hostname: self.hostname.clone(),
            key: key.to_string(),
            previous,
        };
        let outcome = self.converge(key, desired).await;
        if outcome.is_ok() {
            restore.previous = None;
        }
        outcome
    }

    async fn instance(
        &self,
        spec: &InstanceSpec,
        state: InstanceState,
    ) -> Result<Option<InstanceReport>, AgentError> {
        let key = protocol::instance_key(&spec.id);
        let desired = Desired::Instance {
            spec: spec.clone(),
            state,
        };
        let (outcome, generation) = match state {
            InstanceState::Absent => self.converge(&key, &desired).await?,
            _ => self.converge_or_restore(&key, &desired).await?,
        };
        if state == InstanceState::Absent {
            // The agent confirmed it is gone: the row has nothing left to
            // say (unless a newer change took it over meanwhile).
            let _ = self
                .store
                .forget_work(&self.hostname, &key, generation)
                .await;
        }
        match outcome {
            Outcome::Instance { report } => Ok(Some(report)),
            _ => Ok(None),
        }
    }

    /// The last spec of an instance this host was asked to run.
    async fn known_instance(&self, id: &str) -> Result<Option<InstanceSpec>, AgentError> {
        let row = self
            .store
            .work(&self.hostname, &protocol::instance_key(id))
            .await
            .map_err(store_error)?;
        Ok(
            row.and_then(|row| match serde_json::from_str::<Desired>(&row.desired) {
                Ok(Desired::Instance { spec, .. }) => Some(spec),
                _ => None,
            }),
        )
    }
}

/// Writes a key's earlier desired state back when dropped armed.
struct RestoreOnDrop {
    store: Store,
    hostname: String,
    key: String,
    /// The desired state to write back; `None` disarms.
    previous: Option<String>,
}

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        let Some(previous) = self.previous.take() else {
            return;
        };
        let (store, hostname, key) = (self.store.clone(), self.hostname.clone(), self.key.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = store.set_desired(&hostname, &key, &previous).await {
                    tracing::warn!(%hostname, %key, error = %err, "restoring a desired state failed");
                }
            });
        }
    }
}

fn store_error(err: tessera_store::StoreError) -> AgentError {
    AgentError::Unreachable(format!("the store is unavailable: {err}"))
}

#[async_trait::async_trait]
impl HostAgent for RemoteAgent {
    fn keeps_desired_state(&self) -> bool {
        true
    }

    async fn report(&self) -> Result<HostReport, AgentError> {
        let agent = self
            .store
            .agent(&self.hostname)
            .await
            .map_err(store_error)?
            .ok_or_else(|| AgentError::Unreachable(format!("{} has no agent", self.hostname)))?;
        let inventory: Inventory = serde_json::from_str(&agent.inventory)
            .map_err(|e| AgentError::Failed(format!("the host's inventory is unreadable: {e}")))?;
        Ok(HostReport {
            cpus: inventory.cpus,
            numa_nodes: inventory.numa_nodes,
            memory_mb: inventory.memory_mb,
        })
    }

    async fn prepare_host(&self, host: &HostSpec) -> Result<(), AgentError> {
        let desired = Desired::Host {
            spec: host.clone(),
            retired: false,
        };
        self.converge(&protocol::host_key(), &desired)
            .await
            .map(drop)
    }

    async fn activate_unit(&self, unit: &UnitSpec, ssh_public_key: &str) -> Result<(), AgentError> {
        let desired = Desired::Unit {
            unit: unit.clone(),
            ssh_public_key: Some(ssh_public_key.to_string()),
        };
        let key = protocol::unit_key(unit.compute_id.as_str());
        self.converge(&key, &desired).await.map(drop)
    }

    async fn release_unit(&self, unit: &UnitSpec) -> Result<(), AgentError> {
        let desired = Desired::Unit {
            unit: unit.clone(),
            ssh_public_key: None,
        };
        let key = protocol::unit_key(unit.compute_id.as_str());
        self.converge(&key, &desired).await.map(drop)
    }

    async fn retire_host(&self, host: &HostSpec) -> Result<(), AgentError> {
        let desired = Desired::Host {
            spec: host.clone(),
            retired: true,
        };
        self.converge(&protocol::host_key(), &desired)
            .await
            .map(drop)
    }

    async fn create_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        self.instance(instance, InstanceState::Running)
            .await?
            .ok_or_else(|| AgentError::Failed("the agent reported no instance".into()))
    }

    async fn start_instance(&self, instance: &InstanceSpec) -> Result<InstanceReport, AgentError> {
        self.create_instance(instance).await
    }

    async fn stop_instance(&self, instance_id: &str) -> Result<(), AgentError> {
        let Some(spec) = self.known_instance(instance_id).await? else {
            // Never asked to run here: nothing to stop.
            return Ok(());
        };
        self.instance(&spec, InstanceState::Stopped).await.map(drop)
    }

    async fn delete_instance(&self, instance_id: &str) -> Result<(), AgentError> {
        let Some(spec) = self.known_instance(instance_id).await? else {
            return Ok(());
        };
        self.instance(&spec, InstanceState::Absent).await.map(drop)
    }

    async fn ensure_volume(&self, volume: &VolumeSpec) -> Result<VolumeReport, AgentError> {
        let desired = Desired::Volume {
            spec: volume.clone(),
            present: true,
        };
        match self
            .converge(&protocol::volume_key(&volume.id), &desired)
            .await?
        {
            (Outcome::Volume { report }, _) => Ok(report),
            _ => Err(AgentError::Failed("the agent reported no volume".into())),
        }
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), AgentError> {
        let key = protocol::volume_key(volume_id);
        let desired = Desired::Volume {
            spec: VolumeSpec {
                id: volume_id.to_string(),
                size_gb: 0,
                clone_of: None,
            },
            present: false,
        };
        let (_, generation) = self.converge(&key, &desired).await?;
        // The agent confirmed it is gone: the row has nothing left to say.
        let _ = self
            .store
            .forget_work(&self.hostname, &key, generation)
            .await;
        Ok(())
    }

    async fn run_script(&self, script: &HostScript) -> Result<ScriptOutcome, AgentError> {
        // The same script (body and environment) has one key, so a call
        // repeated after a timeout waits for the run under way instead of
        // starting a second one.
        let digest = {
            use sha2::Digest;
            let mut hasher = sha2::Sha256::new();
            hasher.update(script.body.as_bytes());
            for (name, value) in &script.env {
                hasher.update([0]);
                hasher.update(name.as_bytes());
                hasher.update([0]);
                hasher.update(value.as_bytes());
            }
            hex::encode(&hasher.finalize()[..8])
        };
        let key = protocol::script_key(&script.label, &digest);
        let desired = Desired::Script {
            script: script.clone(),
        };
        let (outcome, generation) = self.converge(&key, &desired).await?;
        // A script's row is done with once answered.
        let _ = self
            .store
            .forget_work(&self.hostname, &key, generation)
            .await;
        match outcome {
            Outcome::Script { outcome } => Ok(outcome),
            _ => Err(AgentError::Failed(
                "the agent reported no script outcome".into(),
            )),
        }
    }
}
