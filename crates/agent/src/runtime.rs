//! `tessera agent`: registers with the control plane, heartbeats (with what
//! its host's instances are doing: running or not, memory and storage used),
//! and makes its host match the desired state it reads, reporting what it
//! observed.
//!
//! The agent keeps its credential in its state directory, so a restart
//! neither registers again nor touches what runs: drivers adopt their
//! running units and containers, and the first poll (from generation 0)
//! re-applies the whole desired state, which is idempotent. While the
//! control plane is away, the agent keeps retrying and its instances keep
//! running.

use crate::host::{DriverKind, HostConfig, LocalHost};
use crate::transport::Transport;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tessera_agent_api::protocol::{
    Desired, Heartbeat, Observed, RegisterRequest, RegisterResponse, WorkItem,
};
use tessera_agent_api::{AgentError, HostAgent};
use tessera_core::CpuSet;
use tokio_util::sync::CancellationToken;

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The control plane's URL.
    pub server: String,
    /// Needed on the first start only (the credential is kept).
    pub join_token: Option<String>,
    pub hostname: String,
    /// The address instances and units are reached at.
    pub ip: String,
    pub location: Option<String>,
    pub state_dir: PathBuf,
    pub driver: DriverKind,
    pub reserved_cpus: CpuSet,
    pub user_prefix: String,
    pub bridge: String,
    pub subnet: String,
    pub ssh_port_base: u16,
    /// The resolvers instances' DNS goes to (empty: the host's own).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// Run instances as the host's root where they cannot have user
    /// namespaces of their own.
    pub allow_privileged: bool,
    /// Destinations instances may never reach (IPv4 CIDRs).
    pub egress_denied: Vec<String>,
    /// How images the catalog names by reference are pulled.
    pub registry: crate::drivers::container::PullOptions,
    /// How many times the disk's free space instances' disks may promise.
    pub disk_overcommit: f64,
    pub heartbeat_every: Duration,
    /// What the host offers, instead of what is found on this machine
    /// (benchmarks' simulated fleets).
    pub inventory: Option<tessera_agent_api::protocol::Inventory>,
    /// The HTTP client to speak to the control plane with, instead of one
    /// of its own (benchmarks run thousands of agents in one process).
    pub http: Option<reqwest::Client>,
}

/// Why an agent stopped for good: the control plane refused its
/// credential (its host was retired, or the credential replaced). Running
/// again needs a new join token.
#[derive(Debug, thiserror::Error)]
#[error("the control plane no longer accepts this agent: {0}")]
pub struct Rejected(pub String);

/// What the agent keeps between runs.
#[derive(Serialize, Deserialize)]
struct Credential {
    server: String,
    hostname: String,
    credential: String,
}

const CREDENTIAL_FILE: &str = "credential.json";

/// Runs the agent until `stop` is cancelled.
pub async fn run(options: AgentOptions, stop: CancellationToken) -> Result<()> {
    std::fs::create_dir_all(&options.state_dir).with_context(|| {
        format!(
            "cannot create the state directory {}",
            options.state_dir.display()
        )
    })?;
    let host = Arc::new(
        LocalHost::new(HostConfig {
            hostname: options.hostname.clone(),
            state_dir: options.state_dir.clone(),
            driver: options.driver,
            user_prefix: options.user_prefix.clone(),
            bridge: options.bridge.clone(),
            subnet: options.subnet.clone(),
            ssh_port_base: options.ssh_port_base,
            dns_upstreams: options.dns_upstreams.clone(),
            allow_privileged: options.allow_privileged,
            egress_denied: options.egress_denied.clone(),
            registry: options.registry.clone(),
            disk_overcommit: options.disk_overcommit,
            reserved_cpus: options.reserved_cpus.clone(),
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "the {} driver cannot run here: {e}",
                options.driver.as_str()
            )
        })?,
    );
    host.adopt()
        .await
        .map_err(|e| anyhow::anyhow!("cannot take over what runs on the host: {e}"))?;
    let base = options.server.trim_end_matches('/');
    let transport = Arc::new(match &options.http {
        Some(http) => Transport::fixed(base, http.clone()),
        None => Transport::connect(base).await?,
    });
    let client = Client {
        transport,
        base: base.to_string(),
        credential: String::new(),
    };
    let client = tokio::select! {
        registered = register(client, &options, &host) => registered?,
        _ = stop.cancelled() => return Ok(()),
    };
    tracing::info!(hostname = %options.hostname, driver = options.driver.as_str(), server = %options.server, "agent running");
    let client = Arc::new(client);
    let channel = tokio::spawn(crate::channel::keep(
        crate::channel::Dialer {
            base: client.base.clone(),
            credential: client.credential.clone(),
            transport: client.transport.clone(),
        },
        host.clone(),
        stop.clone(),
    ));
    let beating = tokio::spawn(heartbeats(
        client.clone(),
        options.clone(),
        host.clone(),
        stop.clone(),
    ));
    let working = reconcile(client, host, stop.clone()).await;
    stop.cancel();
    let _ = channel.await;
    let beat = beating.await.context("the heartbeat task failed")?;
    working.and(beat)
}

struct Client {
    transport: Arc<Transport>,
    base: String,
    credential: String,
}

/// Why a call to the control plane failed.
enum CallError {
    /// Our credential is not accepted: retrying will not help.
    Rejected(String),
    /// The control plane is away or failing: try again later.
    Retry(String),
}

impl Client {
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Option<T>, CallError> {
        let request = match self.credential.is_empty() {
            true => request,
            false => request.bearer_auth(&self.credential),
        };
        let response = request.send().await.map_err(|e| {
            self.transport.unreached();
            CallError::Retry(format!(
                "cannot reach the control plane: {}",
                error_chain(&e)
            ))
        })?;
        self.transport.reached();
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let body = response
            .text()
            .await
            .map_err(|e| CallError::Retry(e.to_string()))?;
        if status == reqwest::StatusCode::UNAUTHORIZED
            || status == reqwest::StatusCode::FORBIDDEN
            || status == reqwest::StatusCode::BAD_REQUEST
            || status == reqwest::StatusCode::CONFLICT
        {
            return Err(CallError::Rejected(error_message(&body, status)));
        }
        if !status.is_success() {
            return Err(CallError::Retry(error_message(&body, status)));
        }
        serde_json::from_str(&body)
            .map(Some)
            .map_err(|e| CallError::Retry(format!("unreadable answer: {e}")))
    }
}

/// An error and its causes, as one line: reqwest's own message alone
/// ("error sending request") says nothing of why.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = inner.source();
    }
    line
}

fn error_message(body: &str, status: reqwest::StatusCode) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    format!("{status}: {message}")
}

/// Loads the kept credential, or registers with the join token.
async fn register(mut client: Client, options: &AgentOptions, host: &LocalHost) -> Result<Client> {
    let path = options.state_dir.join(CREDENTIAL_FILE);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(kept) = serde_json::from_str::<Credential>(&text)
        && kept.hostname == options.hostname
        && kept.server.trim_end_matches('/') == client.base
    {
        client.credential = kept.credential;
        match (verify(&client).await, &options.join_token) {
            (Err(why), Some(_)) => {
                tracing::warn!(error = %why, "the kept credential is refused; joining again");
                client.credential.clear();
            }
            (Err(why), None) => bail!(
                "the control plane refuses this agent's credential ({why}); give --join-token to \
                 join again"
            ),
            (Ok(()), _) => return Ok(client),
        }
    }
    let Some(join_token) = options.join_token.clone() else {
        bail!(
            "this agent has not joined {} yet: give --join-token (an admin creates one with \
             `tessera join-token create`)",
            client.base
        );
    };
    let mut inventory = match &options.inventory {
        Some(inventory) => inventory.clone(),
        None => crate::inventory::discover(&options.state_dir, &options.reserved_cpus)?,
    };
    inventory.images = host.images();
    inventory.isolation = host.isolation();
    let request = RegisterRequest {
        join_token,
        hostname: options.hostname.clone(),
        ip: options.ip.clone(),
        location: options.location.clone(),
        driver: options.driver.as_str().to_string(),
        inventory,
    };
    let mut backoff = Backoff::default();
    let registered: RegisterResponse = loop {
        let call = client
            .call(
                client
                    .transport
                    .http()
                    .post(format!("{}/v1/agent/register", client.base))
                    .json(&request),
            )
            .await;
        match call {
            Ok(Some(registered)) => break registered,
            Ok(None) => bail!("the control plane answered the registration with no body"),
            Err(CallError::Rejected(why)) => bail!("registration refused: {why}"),
            Err(CallError::Retry(why)) => {
                tracing::warn!(error = %why, "registration failed; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    };
    let kept = Credential {
        server: client.base.clone(),
        hostname: registered.hostname,
        credential: registered.credential,
    };
    write_private(&path, &serde_json::to_vec_pretty(&kept)?)?;
    tracing::info!(hostname = %kept.hostname, "agent joined the control plane");
    client.credential = kept.credential;
    Ok(client)
}

/// Whether the control plane accepts the kept credential (a desired-state
/// read that does not wait). Only a refusal is an error: an absent control
/// plane is waited for later.
async fn verify(client: &Client) -> Result<(), String> {
    let call = client
        .call::<serde_json::Value>(
            client
                .transport
                .http()
                .get(format!("{}/v1/agent/desired", client.base))
                .query(&[("after", "0"), ("wait", "0")])
                .timeout(Duration::from_secs(10)),
        )
        .await;
    match call {
        Err(CallError::Rejected(why)) => Err(why),
        _ => Ok(()),
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)?;
    Ok(())
}

async fn heartbeats(
    client: Arc<Client>,
    options: AgentOptions,
    host: Arc<LocalHost>,
    stop: CancellationToken,
) -> Result<()> {
    let mut tick = tokio::time::interval(options.heartbeat_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return Ok(()),
        }
        let found = match &options.inventory {
            Some(inventory) => Ok(inventory.clone()),
            None => crate::inventory::discover(&options.state_dir, &options.reserved_cpus),
        };
        let mut inventory = match found {
            Ok(inventory) => inventory,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the host's inventory");
                continue;
            }
        };
        inventory.images = host.images();
        inventory.isolation = host.isolation();
        // What runs is news, not a condition of the heartbeat.
        let instances = match host.observe_instances().await {
            Ok(instances) => instances,
            Err(err) => {
                tracing::warn!(error = %err, "cannot observe the host's instances");
                Vec::new()
            }
        };
        let call = client
            .call::<serde_json::Value>(
                client
                    .transport
                    .http()
                    .post(format!("{}/v1/agent/heartbeat", client.base))
                    .timeout(Duration::from_secs(10))
                    .json(&Heartbeat {
                        inventory,
                        instances,
                    }),
            )
            .await;
        match call {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("control plane reachable again");
            }
            Ok(_) => {}
            Err(CallError::Rejected(why)) => {
                stop.cancel();
                return Err(Rejected(why).into());
            }
            Err(CallError::Retry(why)) => {
                if !failing {
                    tracing::warn!(error = %why, "heartbeat failed; instances keep running");
                }
                failing = true;
            }
        }
    }
}

/// Reads the desired state and applies each change, one task per object,
/// changes of one object in order.
async fn reconcile(
    client: Arc<Client>,
    host: Arc<LocalHost>,
    stop: CancellationToken,
) -> Result<()> {
    let locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<i64>>>>> = Arc::default();
    let mut after = 0i64;
    let mut backoff = Backoff::default();
    loop {
        let poll = client.call::<serde_json::Value>(
            client
                .transport
                .http()
                .get(format!("{}/v1/agent/desired", client.base))
                .query(&[("after", after.to_string()), ("wait", "20".to_string())])
                .timeout(Duration::from_secs(40)),
        );
        let page = tokio::select! {
            page = poll => page,
            _ = stop.cancelled() => return Ok(()),
        };
        let page = match page {
            Ok(Some(page)) => {
                backoff = Backoff::default();
                page
            }
            Ok(None) => continue,
            Err(CallError::Rejected(why)) => return Err(Rejected(why).into()),
            Err(CallError::Retry(why)) => {
                tracing::warn!(error = %why, "reading the desired state failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next()) => {}
                    _ = stop.cancelled() => return Ok(()),
                }
                continue;
            }
        };
        let Some(generation) = page.get("generation").and_then(serde_json::Value::as_i64) else {
            tracing::warn!("the desired state has no generation; retrying");
            tokio::time::sleep(backoff.next()).await;
            continue;
        };
        let snapshot = after == 0 || generation < after;
        if generation < after {
            // The control plane's store went back (a restore): generations
            // restart, so what this agent did under them says nothing.
            tracing::warn!(
                generation,
                after,
                "the desired state went back; applying it all again"
            );
            locks.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
        after = generation;
        let mut items = Vec::new();
        for raw in page
            .get("items")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            match serde_json::from_value::<WorkItem>(raw.clone()) {
                Ok(item) => items.push(item),
                // A kind of work this agent does not know (a newer control
                // plane): say so for that object, and go on with the rest.
                Err(err) => {
                    let key = raw.get("key").and_then(|k| k.as_str()).unwrap_or_default();
                    let generation = raw.get("generation").and_then(|g| g.as_i64()).unwrap_or(0);
                    tracing::warn!(key, error = %err, "cannot read a desired state");
                    let report = Observed {
                        key: key.to_string(),
                        generation,
                        result: Err(AgentError::Failed(format!(
                            "this agent cannot read the desired state of {key} ({err}); upgrade it"
                        ))),
                    };
                    tokio::spawn(report_observed(client.clone(), report));
                }
            }
        }
        if snapshot {
            let known: HashSet<String> = items.iter().map(|i| i.key.clone()).collect();
            if let Err(err) = host.stop_unknown_instances(&known).await {
                tracing::warn!(error = %err, "looking for unknown instances failed");
            }
        }
        let (hosts, others): (Vec<WorkItem>, Vec<WorkItem>) = items
            .into_iter()
            .partition(|item| matches!(item.desired, Desired::Host { .. }));
        // The host first: its units exist before a key goes in.
        for item in hosts {
            work_on(client.clone(), host.clone(), locks.clone(), item).await;
        }
        for item in others {
            if item.observed && matches!(item.desired, Desired::Script { .. }) {
                continue;
            }
            tokio::spawn(work_on(client.clone(), host.clone(), locks.clone(), item));
        }
    }
}

/// Applies one object's desired state (after any earlier change of the same
/// object) and reports what came of it.
async fn work_on(
    client: Arc<Client>,
    host: Arc<LocalHost>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<i64>>>>>,
    item: WorkItem,
) {
    let lock = locks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(item.key.clone())
        .or_default()
        .clone();
    let mut done = lock.lock().await;
    if *done >= item.generation {
        return;
    }
    let result = host.apply(&item.desired).await;
    match &result {
        Ok(_) => tracing::info!(key = %item.key, generation = item.generation, "applied"),
        Err(err) => {
            tracing::warn!(key = %item.key, generation = item.generation, error = %err, "failed")
        }
    }
    *done = item.generation;
    drop(done);
    {
        // Forget the object's lock once nobody else waits on it.
        let mut map = locks.lock().unwrap_or_else(PoisonError::into_inner);
        if map
            .get(&item.key)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            map.remove(&item.key);
        }
    }
    drop(lock);
    let report = Observed {
        key: item.key.clone(),
        generation: item.generation,
        result,
    };
    report_observed(client, report).await;
}

/// Sends a report, retrying a while; the control plane asks again (a new
/// generation) if it still cares after that.
async fn report_observed(client: Arc<Client>, report: Observed) {
    let mut backoff = Backoff::default();
    for _ in 0..8 {
        let call = client
            .call::<serde_json::Value>(
                client
                    .transport
                    .http()
                    .post(format!("{}/v1/agent/observed", client.base))
                    .timeout(Duration::from_secs(10))
                    .json(&report),
            )
            .await;
        match call {
            Ok(_) => return,
            Err(CallError::Rejected(why)) => {
                tracing::warn!(key = %report.key, error = %why, "report refused");
                return;
            }
            Err(CallError::Retry(why)) => {
                tracing::debug!(key = %report.key, error = %why, "report failed; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
    tracing::warn!(key = %report.key, "report not delivered");
}

/// Exponential backoff from 250 ms to 5 s.
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(250))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_says_its_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = anyhow::Error::new(io).context("cannot reach the control plane");
        let line = error_chain(outer.as_ref());
        assert_eq!(line, "cannot reach the control plane: refused");
    }
}
