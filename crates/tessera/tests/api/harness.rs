//! Starting servers for tests and talking to them.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::Executor;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tessera::server::{self, RunningServer};
use tessera::settings::Settings;
use tessera_agent::drivers::sim::{SimConfig, SimFault};

pub const TOKEN: &str = "test-admin-token-0123456789";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
pub const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILmnyh5Zhh+xjmtoWSoe3i1RmWA29P+9P0gB1tgCQjT5 test@tessera";
/// [`KEY`]'s fingerprint, as `ssh-keygen -lf` prints it.
pub const KEY_FINGERPRINT: &str = "SHA256:FvkVF1pKIac5OiRxuehP7jrq9VSUMMoi59wf7711yuE";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Declares a `sqlite` and a `postgres` test for each named async fn taking a
/// [`Backend`].
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Postgres).await
                }
            )*
        }
    };
}

/// A database that outlives one server: several replicas of one cloud
/// share it, or one server's restarts find it again. A SQLite file in a
/// directory of its own (`dir`, kept while this lives), or a fresh
/// PostgreSQL database.
pub struct SharedDatabase {
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl SharedDatabase {
    pub async fn new(backend: Backend) -> SharedDatabase {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = match backend {
            Backend::Sqlite => tessera_store::Store::sqlite_url(&dir.path().join("tessera.db")),
            Backend::Postgres => fresh_postgres_database().await,
        };
        SharedDatabase { url, dir }
    }

    /// A server's options on this database.
    pub fn options(&self) -> Options {
        Options {
            database_url: Some(self.url.clone()),
            ..Options::default()
        }
    }
}

/// A fresh, empty PostgreSQL database on the server `scripts/test` started.
pub async fn fresh_postgres_database() -> String {
    let admin = std::env::var("TESSERA_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "TESSERA_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which starts \
             a throwaway PostgreSQL"
        )
    });
    let name = format!("tessera_test_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create a test database");
    let (base, _) = admin.rsplit_once('/').expect("a database URL");
    format!("{base}/{name}")
}

pub struct TestServer {
    pub running: RunningServer,
    pub url: String,
    pub client: reqwest::Client,
    /// The store's database, for what a test must do behind the server's
    /// back ([`TestServer::sql`]).
    database_url: String,
    _dir: tempfile::TempDir,
}

/// What a test may change in the server's settings.
pub struct Options {
    pub faults: Vec<&'static str>,
    pub agent_timeout: Duration,
    pub database_url: Option<String>,
    /// Hosts without a registered agent are simulated in process.
    pub sim_hosts: bool,
    /// How long an agent may stay silent before its host is unreachable.
    pub agent_silence: Duration,
    /// The Verda face's rate limits.
    pub rate_limits: tessera_app::RateLimits,
    /// The native API's rate limits.
    pub native_rate_limits: tessera_app::RateLimits,
    /// Requests per window to login, refresh and the OAuth token endpoint.
    pub credential_rate_limit: u32,
    pub login_limits: tessera_app::throttle::LoginLimits,
    /// Each project's quota unless it has its own.
    pub quota_defaults: tessera_store::Usage,
    pub http: tessera_faces::serve::HttpLimits,
    pub request_timeout: Duration,
    /// Run the ingress gateway, on ephemeral ports of 127.0.0.1.
    pub gateway: bool,
    /// The addresses of instances (`--vpc-pool`); `None`: the default.
    pub vpc_pool: Option<&'static str>,
    /// A catalog file (`--catalog`); `None`: the built-in one.
    pub catalog: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            faults: Vec::new(),
            agent_timeout: Duration::from_secs(10),
            database_url: None,
            sim_hosts: true,
            agent_silence: Duration::from_secs(15),
            // High enough that tests which do not test limits never meet them.
            rate_limits: tessera_app::RateLimits {
                project: 100_000,
                endpoint: 100_000,
                client: 100_000,
                window: Duration::from_secs(60),
            },
            native_rate_limits: tessera_app::RateLimits {
                project: 100_000,
                endpoint: 100_000,
                client: 100_000,
                window: Duration::from_secs(60),
            },
            credential_rate_limit: 100_000,
            login_limits: tessera_app::throttle::LoginLimits {
                per_address_per_minute: 100_000,
                ..Default::default()
            },
            quota_defaults: tessera_app::DEFAULT_QUOTA,
            http: Default::default(),
            request_timeout: Duration::from_secs(60),
            gateway: false,
            vpc_pool: None,
            catalog: None,
        }
    }
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> TestServer {
        // The server's log, shown for failing tests (filter: TESSERA_LOG).
        let filter = std::env::var("TESSERA_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = match (options.database_url, backend) {
            (Some(url), _) => url,
            (None, Backend::Sqlite) => {
                tessera_store::Store::sqlite_url(&dir.path().join("tessera.db"))
            }
            (None, Backend::Postgres) => fresh_postgres_database().await,
        };
        let kept_url = database_url.clone();
        let settings = Settings {
            listen: "127.0.0.1:0".parse().expect("addr"),
            sim: options.sim_hosts.then(|| SimConfig {
                faults: options
                    .faults
                    .iter()
                    .map(|f| f.parse::<SimFault>().expect("fault"))
                    .collect(),
                ..SimConfig::default()
            }),
            agent_timeout: options.agent_timeout,
            agent_silence: options.agent_silence,
            admin_token: Some(TOKEN.to_string()),
            admin_password: Some(ADMIN_PASSWORD.to_string()),
            rate_limits: options.rate_limits,
            native_rate_limits: options.native_rate_limits,
            credential_rate_limit: options.credential_rate_limit,
            login_limits: options.login_limits,
            quota_defaults: options.quota_defaults,
            http: options.http,
            request_timeout: options.request_timeout,
            gateway: options.gateway.then(|| tessera::settings::GatewaySettings {
                listen: [127, 0, 0, 1].into(),
                ports: tessera_gateway::PortMapping::Ephemeral,
                certificate: tessera_gateway::CertificateSource::SelfSigned {
                    dir: dir.path().join("gateway"),
                },
            }),
            ..Settings::with_defaults(dir.path().to_path_buf(), database_url)
        };
        let settings = Settings {
            catalog: options.catalog.clone(),
            ..settings
        };
        let settings = match options.vpc_pool {
            Some(pool) => Settings {
                vpc_pool: pool.parse().expect("a VPC pool"),
                ..settings
            },
            None => settings,
        };
        let running = server::start(&settings).await.expect("server starts");
        TestServer {
            url: running.url(),
            running,
            // Idle connections are dropped well before the server closes
            // them (15 s without a request), so a request never goes out on
            // one the server is closing (a test that waits 15 s, then calls).
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .expect("a client"),
            database_url: kept_url,
            _dir: dir,
        }
    }

    /// Runs one statement with one text argument (`$1`) on the store,
    /// behind the server's back: for what only time would do (a token
    /// that has expired).
    pub async fn sql(&self, statement: &str, arg: &str) {
        let mut conn = self.store_connection().await;
        let query = sqlx::query(statement).bind(arg.to_string());
        query.execute(&mut conn).await.expect("the statement");
    }

    /// The first column of the first row `statement` (with `$1` = `arg`)
    /// reads from the store: an integer.
    pub async fn sql_int(&self, statement: &str, arg: &str) -> i64 {
        use sqlx::Row;
        let mut conn = self.store_connection().await;
        let row = sqlx::query(statement)
            .bind(arg.to_string())
            .fetch_one(&mut conn)
            .await
            .expect("a row");
        row.get::<i64, _>(0)
    }

    /// A connection of its own to the server's store, either backend.
    async fn store_connection(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("the store")
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = match text.is_empty() {
            true => Value::Null,
            false => serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{path} answered {status} with non-JSON {text:?}")),
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, path, None, Some(TOKEN))
            .await
    }

    /// `GET path` as the admin, which must answer 200; answers the body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        body
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, &body.to_string()).await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, path, Some(body), Some(TOKEN))
            .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::DELETE, path, None, Some(TOKEN))
            .await
    }

    /// Registers a host and waits until its units are FREE.
    pub async fn init_host(&self, hostname: &str, ranges: &[&str]) {
        self.init_host_in(hostname, "eu-north", "a", ranges).await;
        self.wait_host_status(hostname, "FREE", ranges.len()).await;
    }

    pub async fn init_host_in(&self, hostname: &str, region: &str, zone: &str, ranges: &[&str]) {
        let (status, body) = self
            .post(
                "/api/admin/init_server",
                &json!({
                    "hostname": hostname, "ip": "192.0.2.10", "region": region,
                    "zone": zone, "cpu_ranges": ranges,
                }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "init_server {hostname}: {body}");
        assert_eq!(body, json!({}));
    }

    /// Waits until `count` units of `hostname` have `status`.
    pub async fn wait_host_status(&self, hostname: &str, status: &str, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let units = self
                .units(&format!("?hostname={hostname}&status={status}"))
                .await;
            if units.len() == count {
                return units;
            }
            assert!(
                Instant::now() < deadline,
                "{hostname}: {} units {status}, wanted {count}",
                units.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn units(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/compute_units/{query}")).await;
        assert_eq!(status, StatusCode::OK, "list {query}: {body}");
        body.as_array().cloned().expect("a list")
    }

    pub async fn allocate(&self, body: Value) -> (StatusCode, Value) {
        self.post("/api/compute_units/allocate", &body).await
    }

    /// The key the simulated host holds for a unit's user, if any.
    pub fn installed_key(&self, hostname_id: &str, user: &str) -> Option<String> {
        let sim = self.running.sim.as_ref().expect("simulated hosts");
        sim.host(&tessera_core::HostId::new(hostname_id))
            .and_then(|h| h.installed_key(user))
    }

    /// The store id of a host.
    pub async fn host_id(&self, hostname: &str) -> String {
        self.running
            .app
            .store()
            .host_by_hostname(hostname)
            .await
            .expect("store")
            .expect("host")
            .id
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Stops the server, once every project's usage as the store keeps it
    /// (migration 0028) is checked against its rows: whatever the test did
    /// through whichever face, the two agree.
    pub async fn stop(self) {
        let store = self.running.app.store().clone();
        for project in store.projects().await.expect("projects") {
            let (kept, counted) = store.project_usage_audit(&project.id).await.expect("usage");
            assert_eq!(
                kept, counted,
                "project {}: the usage the store keeps is not its rows'",
                project.id
            );
        }
        self.running.shutdown().await.expect("clean shutdown");
    }

    /// A native API call with `token`.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: &str,
    ) -> (StatusCode, Value) {
        let body = body.map(Value::to_string);
        self.request(method, path, body.as_deref(), Some(token))
            .await
    }

    /// Logs in; answers the access token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let body = json!({"username": username, "password": password}).to_string();
        let (status, reply) = self
            .request(reqwest::Method::POST, "/v1/auth/login", Some(&body), None)
            .await;
        assert_eq!(status, StatusCode::OK, "login {username}: {reply}");
        reply["token"].as_str().expect("token").to_string()
    }

    /// Creates a workspace (if missing) and a user with `role` in it, and
    /// answers the user's access token.
    pub async fn user_in(&self, username: &str, role: &str, workspace: &str) -> String {
        let (status, _) = self
            .call(
                reqwest::Method::POST,
                "/v1/workspaces/create",
                Some(&json!({"name": workspace})),
                TOKEN,
            )
            .await;
        assert!(
            status == StatusCode::OK || status == StatusCode::CONFLICT,
            "create workspace {workspace}: {status}"
        );
        let password = format!("{username}-password");
        let (status, reply) = self
            .call(
                reqwest::Method::POST,
                "/v1/users",
                Some(&json!({"username": username, "password": password, "workspace": workspace, "role": role})),
                TOKEN,
            )
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "create user {username}: {reply}"
        );
        self.login(username, &password).await
    }

    /// Waits for an operation to end; answers it.
    pub async fn wait_operation(&self, id: &str, token: &str) -> Value {
        let (status, op) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/operations/{id}/wait?timeout=30"),
                None,
                token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{op}");
        assert!(
            ["completed", "failed", "cancelled"].contains(&op["status"].as_str().unwrap_or("")),
            "operation {id} did not end: {op}"
        );
        op
    }

    /// Registers a pooled server through `/v1/servers/create` and waits
    /// until it runs.
    pub async fn add_server(&self, hostname: &str, cpus: &str, zone: &str) -> String {
        let (status, op) = self
            .call(
                reqwest::Method::POST,
                "/v1/servers/create",
                Some(&json!({"hostname": hostname, "ip_address": "192.0.2.20", "zone": zone, "cpus": cpus})),
                TOKEN,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "create server {hostname}: {op}");
        let op = self
            .wait_operation(op["id"].as_str().expect("id"), TOKEN)
            .await;
        assert_eq!(op["status"], "completed", "{op}");
        op["result"]["server_id"]
            .as_str()
            .expect("server_id")
            .to_string()
    }

    /// Creates an instance of `instance_type`; answers the 201 body.
    pub async fn create_instance(&self, token: &str, name: &str, instance_type: &str) -> Value {
        let body = json!({
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"type": instance_type, "image": "ubuntu-22.04"},
        });
        let (status, reply) = self
            .call(reqwest::Method::POST, "/v1/instances", Some(&body), token)
            .await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "create instance {name}: {reply}"
        );
        reply
    }

    /// Creates an instance and waits for its creation to end; answers the
    /// instance then.
    pub async fn run_instance(&self, token: &str, name: &str, instance_type: &str) -> Value {
        let created = self.create_instance(token, name, instance_type).await;
        let op = created["operation_id"].as_str().expect("operation_id");
        self.wait_operation(op, token).await;
        let id = created["id"].as_str().expect("id");
        let (status, instance) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/instances/{id}"),
                None,
                token,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        instance
    }
}

/// Asserts a native API error: its status and the provisioning API's body.
pub fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert_eq!(body["code"], expected.as_u16().to_string(), "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// An allocate body.
pub fn unit_request(cpu_count: u32, tags: Value) -> Value {
    json!({"cpu_count": cpu_count, "ssh_public_key": KEY, "tags": tags})
}

/// A `tessera server` process.
pub struct ServerProcess {
    child: Child,
    pub url: String,
}

impl ServerProcess {
    pub fn start(database_url: &str, data_dir: &std::path::Path, args: &[&str]) -> ServerProcess {
        let mut with_sim = vec!["--sim-hosts"];
        with_sim.extend_from_slice(args);
        Self::start_on(database_url, data_dir, "127.0.0.1:0", &with_sim)
    }

    /// A server on `listen`, which a restart can take again.
    pub fn start_on(
        database_url: &str,
        data_dir: &std::path::Path,
        listen: &str,
        args: &[&str],
    ) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["server", "--listen", listen])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .env("TESSERA_DATABASE_URL", database_url)
            .env("TESSERA_ADMIN_TOKEN", TOKEN)
            .env("TESSERA_LOG", "warn")
            // Servers side by side cannot all have ports 80 and 443.
            .env("TESSERA_GATEWAY_LISTEN", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tessera server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("the server printed its address")
                .expect("stdout line");
            if let Some(url) = line.strip_prefix("Tessera is serving on ") {
                break url.trim().to_string();
            }
        };
        ServerProcess { child, url }
    }

    /// The server's resident memory, in bytes (Linux).
    pub fn resident_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS")
    }

    /// SIGTERM, and the process must exit cleanly.
    pub fn stop(mut self) {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(stopped.success());
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "graceful shutdown exits 0, got {status}");
    }
}

impl ServerProcess {
    /// SIGKILL: a crash, with no chance to clean up.
    pub fn crash(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }
}

impl Drop for ServerProcess {
    /// A test that fails midway must not leave servers running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The units `url` lists for `query`.
pub async fn list(client: &reqwest::Client, url: &str, query: &str) -> Vec<Value> {
    client
        .get(format!("{url}/api/compute_units/{query}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON")
}

/// Waits until `url` lists `count` units for `query`.
pub async fn wait_for(
    client: &reqwest::Client,
    url: &str,
    query: &str,
    count: usize,
) -> Vec<Value> {
    for _ in 0..1000 {
        let units = list(client, url, query).await;
        if units.len() == count {
            return units;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{query}: never {count} units");
}

/// A free TCP port on the loopback interface, for a server that restarts
/// on the same address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A join token, created through the API as the admin.
pub async fn join_token(url: &str) -> String {
    let reply: Value = reqwest::Client::new()
        .post(format!("{url}/v1/servers/join-tokens"))
        .bearer_auth(TOKEN)
        .json(&json!({"description": "test"}))
        .send()
        .await
        .expect("join token request")
        .json()
        .await
        .expect("join token body");
    reply["token"].as_str().expect("token").to_string()
}

/// A `tessera agent` process; its log goes to `STATE/agent.log`. Dropped,
/// it is killed and what its driver left on the machine for a restart
/// (a container agent's nftables table and bridge) is removed, unless it
/// was [`AgentProcess::crash`]ed: then a later agent on the same state
/// directory takes them over.
pub struct AgentProcess {
    child: Child,
    pub state_dir: std::path::PathBuf,
    /// A container agent's bridge: it, the agent's table and containers
    /// go when dropped.
    leftovers: Option<String>,
}

impl AgentProcess {
    /// Starts an agent for `hostname` with `driver` (`--heartbeat-secs 1`).
    pub fn start(
        server: &str,
        join_token: Option<&str>,
        hostname: &str,
        state_dir: &std::path::Path,
        driver: &str,
        args: &[&str],
    ) -> AgentProcess {
        std::fs::create_dir_all(state_dir).expect("state dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.join("agent.log"))
            .expect("agent log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
        command
            .args(["agent", "--server", server, "--hostname", hostname])
            .args(["--driver", driver, "--heartbeat-secs", "1"])
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .env("TESSERA_LOG", "info")
            // Tests make more (sparse, barely written) disks than a test
            // machine's disk holds; the test of the limit sets its own.
            .env("TESSERA_DISK_OVERCOMMIT", "unlimited")
            .env_remove("TESSERA_JOIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(token) = join_token {
            command.args(["--join-token", token]);
        }
        let child = command.spawn().expect("spawn tessera agent");
        // A container agent's bridge, when the test names one (else none:
        // the default is the machine's own).
        let leftovers = (driver == "container").then(|| {
            args.iter()
                .position(|a| *a == "--bridge")
                .and_then(|i| args.get(i + 1))
                .map(|b| b.to_string())
                .unwrap_or_default()
        });
        AgentProcess {
            child,
            state_dir: state_dir.to_path_buf(),
            leftovers,
        }
    }

    /// SIGKILL: the agent dies with no chance to clean up, and what it
    /// left on the machine stays for the next agent of its state directory.
    pub fn crash(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
        self.leftovers = None;
    }

    /// Waits for the agent to exit by itself; answers its exit status and
    /// log.
    pub fn wait_exit(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let log =
                    std::fs::read_to_string(self.state_dir.join("agent.log")).unwrap_or_default();
                return (status, log);
            }
            assert!(Instant::now() < deadline, "the agent did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("agent.log")).unwrap_or_default()
    }

    /// The agent's established TCP connections to `port` (its sockets,
    /// found in `/proc/net/tcp{,6}` by inode).
    pub fn connections_to(&self, port: u16) -> usize {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).expect("its fds");
        let sockets: BTreeSet<String> = fds
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter_map(|target| {
                let target = target.to_string_lossy().to_string();
                Some(
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_string(),
                )
            })
            .collect();
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .flat_map(|table| {
                table
                    .lines()
                    .skip(1)
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|line| {
                // sl local rem st ... uid timeout inode
                let fields: Vec<&str> = line.split_whitespace().collect();
                let remote_port = fields
                    .get(2)
                    .and_then(|rem| rem.rsplit(':').next())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                fields.get(3) == Some(&"01")
                    && remote_port == Some(port)
                    && fields.get(9).is_some_and(|inode| sockets.contains(*inode))
            })
            .count()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(bridge) = self.leftovers.take() {
            tessera_agent::testkit::remove_container_leftovers(&self.state_dir, &bridge, &[]);
        }
    }
}

/// Polls `what` every 50 ms until it answers `Some`, for up to `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
