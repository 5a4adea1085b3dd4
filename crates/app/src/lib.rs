//! The app services every face shares: identity, projects, hosts, compute
//! units, instances, SSH keys, operations and placement, over the store and
//! the host agents.
//!
//! Faces call methods on [`App`] and get [`Error`] back; they never touch the
//! store or an agent themselves. Work on hosts is driven from the store's
//! recorded state, so that any control-plane process can finish what another
//! started (see [`reconciler`]).

pub mod agents;
pub mod billing;
pub mod catalog;
pub mod containers;
pub mod deployments;
pub mod error;
pub mod events;
pub mod hosts;
pub mod identity;
pub mod instance_actions;
pub mod instances;
pub mod networks;
pub mod oauth;
pub mod operations;
pub mod placement;
pub mod policies;
pub mod projects;
pub mod quotas;
pub mod reconciler;
pub mod scripts;
pub mod secrets;
pub mod servers;
pub mod ssh_keys;
pub mod tags;
pub mod taskservs;
pub mod throttle;
pub mod tokens;
pub mod units;
pub mod users;
pub mod volumes;
pub mod workflows;

pub use error::{Error, Result};
pub use events::Event;
pub use identity::Principal;
pub(crate) use units::has_nul;

use identity::Identity;
use placement::PlacementView;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tessera_agent_api::{AgentDirectory, AgentError, HostAgent};
use tessera_core::HostId;
use tessera_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug)]
pub struct AppConfig {
    /// How long a host may take over one step (installing a key, wiping a
    /// unit, preparing the host) before the control plane gives up on it.
    pub agent_timeout: Duration,
    /// How long an agent may stay silent before its host is unreachable.
    pub agent_silence: Duration,
    /// How often the reconciler looks for unfinished work.
    pub reconcile_every: Duration,
    /// The taskserv definitions offered.
    pub taskservs: taskservs::Catalog,
    /// Locations, instance types, images, volume types and prices.
    pub catalog: tessera_core::catalog::Catalog,
    /// The Verda face's request limits.
    pub rate_limits: RateLimits,
    /// The native API's request limits.
    pub native_rate_limits: RateLimits,
    /// Requests per rate-limit window to the endpoints that hand out
    /// credentials (login, refresh, the OAuth token endpoint), per client
    /// address and per named client.
    pub credential_rate_limit: u32,
    /// How long a request may take to be answered (long-polls and
    /// WebSockets keep their own bounds).
    pub request_timeout: Duration,
    /// How many startup scripts a project may have (at most
    /// [`scripts::MAX_SCRIPT_QUOTA`]).
    pub script_quota: u32,
    /// How long a deleted volume stays in the trash before it is purged.
    pub volume_trash: Duration,
    /// How logins are limited.
    pub login_limits: throttle::LoginLimits,
    /// Each project's quota unless it has its own (`-1`: unlimited).
    pub quota_defaults: tessera_core::quota::Usage,
    /// The containers API's settings.
    pub compute: containers::ComputeConfig,
    /// This replica's base URL as agents reach it directly, so a terminal
    /// asked here of a host whose channel is at another replica can be
    /// relayed; `None`: such a terminal is refused.
    pub advertise_url: Option<String>,
    /// The addresses of instances: every VPC's block lies within it (a /20
    /// of it when none is asked for); no VPC overlaps another in the
    /// install.
    pub vpc_pool: ipnet::Ipv4Net,
    /// Seals secrets and registry credentials at rest; `None`: none can
    /// be stored.
    pub secrets_key: Option<secrets::sealing::SealingKey>,
    /// Where callers reach deployments' front door (a deployment's
    /// `endpoint_base_url` is this and its name); `None`: the advertised
    /// URL's `/inference`.
    pub inference_url: Option<String>,
}

/// The default of [`AppConfig::vpc_pool`].
pub const DEFAULT_VPC_POOL: &str = "10.128.0.0/9";

/// A project's quota unless configured otherwise.
pub const DEFAULT_QUOTA: tessera_core::quota::Usage = tessera_core::quota::Usage {
    instances: 100,
    vcpus: 256,
    memory_mb: 1024 * 1024,
    volumes: 100,
    volume_gb: 10 * 1024,
    // The containers API's own defaults: 3 containers and 10 keys.
    containers: 3,
    ssh_keys: 10,
};

/// How many authenticated requests a project may make per window: in all,
/// to one method and path, and with one credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    pub project: u32,
    pub endpoint: u32,
    pub client: u32,
    pub window: Duration,
}

impl RateLimits {
    /// Verda's documented limits.
    pub fn verda() -> Self {
        RateLimits {
            project: 500,
            endpoint: 60,
            client: 500,
            window: Duration::from_secs(60),
        }
    }

    /// The native API's: room for automation that polls.
    pub fn native() -> Self {
        RateLimits {
            project: 3_000,
            endpoint: 600,
            client: 1_500,
            window: Duration::from_secs(60),
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits::verda()
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            agent_timeout: Duration::from_secs(30),
            agent_silence: Duration::from_secs(15),
            reconcile_every: Duration::from_secs(2),
            taskservs: taskservs::Catalog::built_in(),
            catalog: tessera_core::catalog::Catalog::built_in(),
            rate_limits: RateLimits::verda(),
            native_rate_limits: RateLimits::native(),
            credential_rate_limit: 60,
            request_timeout: Duration::from_secs(60),
            script_quota: 100,
            volume_trash: Duration::from_secs(96 * 3600),
            login_limits: throttle::LoginLimits::default(),
            quota_defaults: DEFAULT_QUOTA,
            compute: containers::ComputeConfig::default(),
            advertise_url: None,
            vpc_pool: DEFAULT_VPC_POOL.parse().unwrap_or_else(|_| unreachable!()),
            secrets_key: None,
            inference_url: None,
        }
    }
}

/// The control plane's services. Cheap to clone.
#[derive(Clone)]
pub struct App {
    store: Store,
    agents: Arc<dyn AgentDirectory>,
    placement: Arc<PlacementView>,
    identity: Arc<Identity>,
    throttle: Arc<throttle::Throttle>,
    taskservs: Arc<taskservs::Catalog>,
    /// What can be ordered, where, at what price.
    catalog: Arc<tessera_core::catalog::Catalog>,
    events: Arc<events::EventBus>,
    config: Arc<AppConfig>,
    /// Work this process is doing on hosts and units now, so the reconciler
    /// does not start the same work twice.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Projects' default networks and the subnets new instances named,
    /// read once each.
    networks: Arc<networks::KnownNetworks>,
    agent_of_host: Arc<Mutex<HashMap<HostId, Arc<dyn HostAgent>>>>,
    /// What this process last wrote of each instance's usage, so that a
    /// fleet's unchanged observations are not written again at every look.
    usage_written: Arc<instances::observe::UsageWritten>,
    /// The last count of operations ended and instances terminated.
    history: Arc<operations::HistoryCounts>,
    agent_signals: Arc<agents::AgentSignals>,
    liveness: Arc<agents::Liveness>,
    /// Remote agents' control channels to this process, for sessions.
    sessions: Arc<agents::sessions::SessionHub>,
    /// The terminals open through this process, by container.
    terminals: Arc<Mutex<HashMap<String, usize>>>,
    /// Serverless deployments' queues in this process.
    front_door: Arc<deployments::front_door::FrontDoor>,
    /// Wakes the scaler, and the front door's upkeep.
    scaler_poke: Arc<tokio::sync::Notify>,
    front_door_poke: Arc<tokio::sync::Notify>,
    /// Background work (host steps, the reconciler), waited for at shutdown.
    tasks: TaskTracker,
    /// What the reconciler's passes cost.
    passes: Arc<reconciler::PassStats>,
    stopping: CancellationToken,
    started: Instant,
}

impl App {
    /// Builds the services over `store` and loads the placement view.
    pub async fn new(
        store: Store,
        agents: Arc<dyn AgentDirectory>,
        config: AppConfig,
    ) -> Result<App> {
        let placement = Arc::new(PlacementView::default());
        placement.load_all(&store).await?;
        store
            .set_unit_price(config.catalog.compute_unit_micros_per_cpu_hour())
            .await?;
        let metered = store.meter_unmetered_units().await?;
        if metered > 0 {
            tracing::info!(
                units = metered,
                "units allocated before units were metered are metered from now"
            );
        }
        let identity = Arc::new(Identity::load(&store).await?);
        Ok(App {
            identity,
            throttle: Arc::new(throttle::Throttle::new(config.login_limits.clone())),
            taskservs: Arc::new(config.taskservs.clone()),
            catalog: Arc::new(config.catalog.clone()),
            events: Arc::new(events::EventBus::new()),
            store,
            agents,
            placement,
            config: Arc::new(config),
            in_flight: Arc::default(),
            networks: Arc::default(),
            sessions: Arc::default(),
            terminals: Arc::default(),
            agent_of_host: Arc::default(),
            usage_written: Arc::default(),
            history: Arc::default(),
            agent_signals: Arc::default(),
            liveness: Arc::default(),
            front_door: Arc::default(),
            scaler_poke: Arc::default(),
            front_door_poke: Arc::default(),
            tasks: TaskTracker::new(),
            passes: Arc::default(),
            stopping: CancellationToken::new(),
            started: Instant::now(),
        })
    }

    /// Tells long waits (agents' long-polls, operation waits) to answer now
    /// and background loops to stop, so a stopping server drains at once.
    pub fn begin_shutdown(&self) {
        self.stopping.cancel();
    }

    /// Resolves once the server begins to stop: streams that would
    /// otherwise run for ever (an agent's control channel) end then, so the
    /// drain does not wait for them.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await;
    }

    /// Stops the reconciler and waits for host work under way, up to the
    /// agent timeout; what is cut short is finished by the next start.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        self.tasks.close();
        let waited = tokio::time::timeout(self.config.agent_timeout, self.tasks.wait()).await;
        if waited.is_err() {
            tracing::warn!("host work still under way at shutdown; it resumes at the next start");
        }
    }

    /// The store, for the process that runs the app (its backend's name,
    /// closing it at shutdown). Faces go through the app's services.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the database answers.
    pub async fn healthy(&self) -> bool {
        self.store.ping().await.is_ok()
    }

    /// What can be ordered, where, at what price.
    pub fn catalog(&self) -> &tessera_core::catalog::Catalog {
        &self.catalog
    }

    /// The containers API's settings.
    /// Where a deployment's front door takes its requests.
    pub fn endpoint_base_url(&self, deployment: &str) -> String {
        let base = match (&self.config.inference_url, &self.config.advertise_url) {
            (Some(url), _) => url.clone(),
            (None, Some(url)) => format!("{url}/inference"),
            (None, None) => "/inference".to_string(),
        };
        format!("{}/{deployment}", base.trim_end_matches('/'))
    }

    pub fn compute_config(&self) -> &containers::ComputeConfig {
        &self.config.compute
    }

    /// The Verda face's request limits.
    pub fn rate_limits(&self) -> &RateLimits {
        &self.config.rate_limits
    }

    /// The native API's request limits.
    pub fn native_rate_limits(&self) -> &RateLimits {
        &self.config.native_rate_limits
    }

    /// Requests per window to the endpoints that hand out credentials, per
    /// client address and per named client.
    pub fn credential_rate_limit(&self) -> u32 {
        self.config.credential_rate_limit
    }

    /// How long a request may take to be answered.
    pub fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// When a unit step started now is given up on, as stored: room for two
    /// host calls (pushing a host's state on first contact, then the step)
    /// and a margin, so the reconciler never takes over a request that is
    /// still within its own time limits.
    fn deadline(&self) -> String {
        let timeout = chrono::Duration::from_std(self.config.agent_timeout * 2)
            .unwrap_or(chrono::Duration::seconds(60));
        tessera_store::timestamp(chrono::Utc::now() + timeout + chrono::Duration::seconds(5))
    }

    /// The agent of a host, or `None` while it has none.
    ///
    /// On this process's first contact with a ready host, the host's desired
    /// state is pushed to the agent (its units prepared): an agent that lost
    /// its state, or a simulated host new to this replica, then serves
    /// the units the store says it has.
    async fn agent(&self, host: &HostId) -> Result<Option<Arc<dyn HostAgent>>> {
        if let Some(agent) = self.agents_cache().get(host) {
            return Ok(Some(agent.clone()));
        }
        let Some(record) = self.store.host(host.as_str()).await? else {
            return Ok(None);
        };
        let spec = self.host_spec(&record).await?;
        let Some(agent) = self.agent_for(&spec).await? else {
            return Ok(None);
        };
        if record.status == tessera_core::status::HostStatus::Ready
            && !agent.keeps_desired_state()
            && let Err(err) = self.host_call(agent.prepare_host(&spec)).await
        {
            tracing::warn!(hostname = %record.hostname, error = %err, "pushing the host's state failed");
        }
        self.agents_cache().insert(host.clone(), agent.clone());
        Ok(Some(agent))
    }

    /// The agent of a host: its registered `tessera agent`, or else the
    /// one of the directory the server started with (simulated hosts).
    pub(crate) async fn agent_for(
        &self,
        spec: &tessera_agent_api::HostSpec,
    ) -> Result<Option<Arc<dyn HostAgent>>> {
        if let Some(remote) = self.remote_agent(&spec.hostname).await? {
            return Ok(Some(remote));
        }
        Ok(self.agents.agent_for(spec))
    }

    /// Records the agent of a host this process has just prepared, so the
    /// first allocation there does not push the host's state again.
    fn remember_agent(&self, host: &HostId, agent: Arc<dyn HostAgent>) {
        self.agents_cache().insert(host.clone(), agent);
    }

    fn forget_agent(&self, host: &HostId) {
        self.agents_cache().remove(host);
    }

    fn agents_cache(&self) -> std::sync::MutexGuard<'_, HashMap<HostId, Arc<dyn HostAgent>>> {
        self.agent_of_host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One call to a host, bounded by the agent timeout.
    async fn host_call<T>(
        &self,
        call: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<T, HostCallError> {
        match tokio::time::timeout(self.config.agent_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(HostCallError::Failed(err.to_string())),
            Err(_) => Err(HostCallError::Timeout(self.config.agent_timeout)),
        }
    }
}

/// A new id: `prefix-`, the time in milliseconds (12 hex digits) and 64
/// random bits (16 hex digits).
///
/// Ids made in the same moment sort together, so every index that holds
/// one (a table's key, and the many keyed by instance) grows at its end:
/// a commit of many creations writes a few pages of each, not one page
/// per creation, as random ids did.
pub(crate) fn new_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    format!("{prefix}-{millis:012x}{}", hex::encode(bytes))
}

/// Whether `text` has the shape of an id [`new_id`] makes with `prefix`.
/// A name of that shape is refused where a resource is found by id or
/// name: once the resource with that id is gone, the name would answer for
/// it, and whatever still holds the id would get the impostor.
pub(crate) fn has_id_shape(prefix: &str, text: &str) -> bool {
    text.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|digits| digits.len() == 28 && digits.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A new id in the shape of a UUID, ordered by time (version 7) for the
/// same reason as [`new_id`]. Not for secrets: a token's id or a session's
/// is a random (version 4) UUID.
pub(crate) fn new_uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Why a call to a host did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostCallError {
    #[error("{0}")]
    Failed(String),
    #[error("the host did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the host has no agent")]
    NoAgent,
}

impl HostCallError {
    /// The host said nothing: no answer within the agent timeout, or no
    /// agent to ask (as against an answer that said no).
    pub(crate) fn is_silence(&self) -> bool {
        matches!(self, HostCallError::Timeout(_) | HostCallError::NoAgent)
    }
}

impl From<HostCallError> for String {
    fn from(err: HostCallError) -> Self {
        err.to_string()
    }
}

/// Marks a piece of work as under way in this process until dropped.
pub(crate) struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// `None` when the work is already under way.
    pub(crate) fn enter(set: &Arc<Mutex<HashSet<String>>>, key: String) -> Option<InFlight> {
        let fresh = set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone());
        fresh.then(|| InFlight {
            set: set.clone(),
            key,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}
