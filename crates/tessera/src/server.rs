//! Starting and stopping the control plane.

use crate::ingress::RunningGateway;
use crate::settings::Settings;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use tessera_agent::drivers::sim::SimFleet;
use tessera_agent_api::{AgentDirectory, HostAgent, HostSpec};
use tessera_app::{App, AppConfig};
use tessera_store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A control plane serving HTTP.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub app: App,
    /// The generated bootstrap admin token, on the very first start only.
    pub new_admin_token: Option<String>,
    /// The simulated hosts, with `--sim-hosts`.
    pub sim: Option<Arc<SimFleet>>,
    /// The ingress gateway, unless this replica runs none.
    pub gateway: Option<RunningGateway>,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<std::io::Result<()>>,
}

/// Hosts with no agent, when simulated hosts are off: they wait for their
/// agent to join.
struct NoAgents;

impl AgentDirectory for NoAgents {
    fn agent_for(&self, _host: &HostSpec) -> Option<Arc<dyn HostAgent>> {
        None
    }
}

/// Nobody but its owner may list or write the data directory (its
/// database, keys, an agent's volumes): it keeps only the search bit for
/// others, which instances' roots need to reach their own directories
/// under an agent's state directory within it (`tessera up`).
fn close_data_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the data directory {}", dir.display()))?
        .permissions()
        .mode();
    let closed = mode & !0o066;
    if closed != mode {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(closed & 0o7777)) {
            Ok(()) => {}
            // Not this process's directory (a service user in the group of
            // a directory root made): its owner decides.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::warn!(dir = %dir.display(), error = %e, "the data directory is open to others, and this process may not change that");
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot protect the data directory {}", dir.display())
                });
            }
        }
    }
    Ok(())
}

/// Opens the store, bootstraps access, and serves the API on
/// `settings.listen` (port 0 picks a free port; see [`RunningServer::addr`]).
pub async fn start(settings: &Settings) -> Result<RunningServer> {
    std::fs::create_dir_all(&settings.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            settings.data_dir.display()
        )
    })?;
    close_data_dir(&settings.data_dir)?;
    let replica = replica_id(settings)?;
    let store = Store::open(&settings.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                redact(&settings.database_url)
            )
        })?
        .with_owner(&replica);
    let sim = settings.sim.clone().map(|mut config| {
        config
            .root_dir
            .get_or_insert_with(|| settings.data_dir.join("sim-hosts"));
        Arc::new(SimFleet::new(config))
    });
    let agents: Arc<dyn AgentDirectory> = match &sim {
        Some(fleet) => fleet.clone(),
        None => Arc::new(NoAgents),
    };
    let taskservs = match &settings.taskserv_dir {
        Some(dir) => tessera_app::taskservs::Catalog::load(dir)
            .map_err(anyhow::Error::msg)
            .context("cannot read the taskserv catalog")?,
        None => tessera_app::taskservs::Catalog::built_in(),
    };
    let catalog = match &settings.catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the catalog {}", path.display()))?;
            tessera_core::catalog::Catalog::from_toml(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("in the catalog {}", path.display()))?
        }
        None => tessera_core::catalog::Catalog::built_in(),
    };
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let advertise_url = settings.advertise_url.clone().unwrap_or_else(|| {
        let mut own = addr;
        if own.ip().is_unspecified() {
            own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{own}")
    });
    let config = AppConfig {
        agent_timeout: settings.agent_timeout,
        agent_silence: settings.agent_silence,
        taskservs,
        catalog,
        rate_limits: settings.rate_limits.clone(),
        native_rate_limits: settings.native_rate_limits.clone(),
        credential_rate_limit: settings.credential_rate_limit,
        request_timeout: settings.request_timeout,
        login_limits: settings.login_limits.clone(),
        quota_defaults: settings.quota_defaults,
        script_quota: settings.script_quota,
        compute: settings.compute.clone(),
        advertise_url: Some(advertise_url),
        vpc_pool: settings.vpc_pool,
        inference_url: settings.inference_url.clone(),
        secrets_key: Some(
            tessera_app::secrets::sealing::SealingKey::load_or_create(&settings.secrets_key)
                .map_err(anyhow::Error::msg)?,
        ),
        ..AppConfig::default()
    };
    let app = App::new(store, agents, config).await?;
    // The ingress gateway shares the process's file descriptors with the
    // API: each of its connections may hold one to a container too. Half
    // of them go to the API, a quarter to the gateway's clients (and a
    // quarter to its containers), so neither can starve the other, the
    // store or the agent (a tenant's containers that never answer held
    // every descriptor once).
    let mut limits = settings.http.clone();
    let gateway = match &settings.gateway {
        Some(gateway) => {
            let budget = tessera_faces::serve::descriptor_budget();
            limits.max_connections = limits.max_connections.min(budget / 2).max(1);
            let clients = (budget / 4).max(1);
            Some(RunningGateway::start(app.clone(), gateway, clients).await?)
        }
        None => None,
    };
    // The event log's pump starts from the log's end before anyone is
    // served.
    app.spawn_event_tasks().await?;
    // The last step that can fail: a token generated here is shown only
    // once, so nothing may fail between its making and its showing.
    let new_admin_token = app
        .bootstrap_admin(
            settings.admin_token.as_deref(),
            settings.admin_password.as_deref(),
        )
        .await?;
    app.spawn_reconciler();
    let (stop, stopped) = oneshot::channel::<()>();
    let router = tessera_faces::router(app.clone());
    let serving = tokio::spawn(async move {
        tessera_faces::serve::serve(listener, router, limits, async {
            let _ = stopped.await;
        })
        .await
    });
    tracing::info!(
        %addr,
        backend = app.store().backend().name(),
        sim_hosts = sim.is_some(),
        gateway = gateway.as_ref().map(RunningGateway::describe),
        "tessera serving"
    );
    Ok(RunningServer {
        addr,
        app,
        new_admin_token,
        sim,
        gateway,
        stop,
        serving,
    })
}

impl RunningServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops taking requests, lets those under way finish, and closes the store.
    pub async fn shutdown(self) -> Result<()> {
        self.app.begin_shutdown();
        if let Some(gateway) = self.gateway {
            gateway.stop().await;
        }
        let _ = self.stop.send(());
        let served = self.serving.await;
        self.app.shutdown().await;
        self.app.store().close().await;
        served.context("the HTTP server task failed")??;
        Ok(())
    }
}

/// This replica's name: the configured one, else the one kept in the data
/// directory (made on the first start). A restarted replica keeps it, so it
/// takes back at once the operations it was driving.
fn replica_id(settings: &Settings) -> Result<String> {
    let valid = |id: &str| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if let Some(id) = &settings.replica_id {
        anyhow::ensure!(
            valid(id),
            "the replica id must be 1 to 64 letters, digits, '-', '_' or '.'"
        );
        return Ok(id.clone());
    }
    let path = settings.data_dir.join("replica-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if valid(text.trim()) => return Ok(text.trim().to_string()),
        Ok(_) => anyhow::bail!(
            "{} does not hold a replica id; remove it to make a new one",
            path.display()
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("cannot read {}", path.display()));
        }
    }
    let mut bytes = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let id = format!(
        "replica-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
