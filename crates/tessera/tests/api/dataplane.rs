//! The real data plane: `tessera agent` with the `unit` and `container`
//! drivers changing this machine, checked over SSH. These need root,
//! cpuset cgroups, runc, dropbear, busybox and an SSH client
//! (`scripts/host-packages` installs them); elsewhere they print why they
//! are skipped. They run on SQLite only: they share the machine's users,
//! ports and network, and the store is not what they test.

use crate::harness::{
    AgentProcess, Backend, Options, ServerProcess, TOKEN, TestServer, eventually, free_port,
    join_token,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tessera_core::CpuSet;

/// Why this machine cannot run the real drivers, if it cannot.
pub(crate) fn cannot_run() -> Option<String> {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if !root {
        return Some("not running as root".into());
    }
    let cpuset = Path::new("/sys/fs/cgroup/cpuset/cpuset.cpus").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.contains("cpuset"));
    if !cpuset {
        return Some("no cpuset cgroup".into());
    }
    let missing: Vec<&str> = ["runc", "dropbear", "busybox", "ssh", "ssh-keygen", "ip"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args([
                    "-c",
                    &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    match missing.is_empty() {
        true => None,
        false => Some(format!(
            "{} missing (run scripts/host-packages)",
            missing.join(", ")
        )),
    }
}

macro_rules! skip_unless_dataplane {
    () => {
        if let Some(why) = cannot_run() {
            eprintln!("skipped: the real data plane cannot run here: {why}");
            return;
        }
    };
}

use tessera_agent::testkit::key_pair;

/// `ssh -p port user@host command`; answers stdout on success.
pub(crate) fn ssh(
    key: &Path,
    user: &str,
    host: &str,
    port: u16,
    command: &str,
) -> Result<String, String> {
    let output = tessera_agent::testkit::ssh_command(key, user, host, port, command)
        .output()
        .expect("ssh");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

/// [`ssh`] until it succeeds, for up to ten seconds (a startup script
/// runs once SSH is up).
pub(crate) async fn ssh_until(
    key: &Path,
    user: &str,
    host: &str,
    port: u16,
    command: &str,
) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        match ssh(key, user, host, port, command) {
            Ok(out) => return out,
            Err(err) => last = err,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("ssh {user}@{host} -p {port} {command:?} never worked: {last}");
}

/// The live processes of `user`. A zombie is not counted: it has ended,
/// and only waits for PID 1 to reap it (which this sandbox's init does
/// about once a second).
fn processes_of(user: &str) -> String {
    let output = Command::new("ps")
        .args(["-u", user, "-o", "stat=,pid=,args="])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.trim_start().starts_with('Z'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn user_exists(user: &str) -> bool {
    Command::new("id")
        .arg(user)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kloigos_unit_on_a_real_agent_is_a_pinned_ssh_login() {
    skip_unless_dataplane!();
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            ..Options::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!("tu{}-", std::process::id() % 10000);
    // The host is registered first and waits for its agent.
    server
        .init_host_in("unit-host", "eu-north", "a", &["0-0", "1-1"])
        .await;
    let waiting = server.units("?hostname=unit-host").await;
    assert!(
        waiting
            .iter()
            .all(|u| u["status"] == "INITIALIZING" || u["status"] == "UNAVAILABLE"),
        "units are not FREE before the host is prepared: {waiting:?}"
    );
    let token = join_token(&server.url).await;
    let agent = AgentProcess::start(
        &server.url,
        Some(&token),
        "unit-host",
        &dir.path().join("agent"),
        "unit",
        &["--user-prefix", &prefix],
    );
    server.wait_host_status("unit-host", "FREE", 2).await;

    let (key, public) = key_pair(dir.path());
    let started = std::time::Instant::now();
    let (status, unit) = server
        .allocate(json!({"cpu_count": 1, "ssh_public_key": public, "tags": {"t": "dp"}}))
        .await;
    let allocate_ms = started.elapsed().as_millis();
    assert_eq!(status, StatusCode::OK, "{unit}");
    assert_eq!(unit["status"], "ALLOCATED", "{unit}");
    eprintln!("allocate on a real host answered in {allocate_ms} ms");
    let cpu_list = unit["cpu_list"].as_str().expect("cpu_list").to_string();
    let range = unit["cpu_range"].as_str().expect("cpu_range");
    let user = format!("{prefix}c{range}");
    let port: u16 = unit["ports_range"]
        .as_str()
        .and_then(|r| r.split('-').next())
        .and_then(|p| p.parse().ok())
        .expect("ports_range");
    let seen = ssh(
        &key,
        &user,
        "127.0.0.1",
        port,
        "grep Cpus_allowed_list /proc/self/status",
    )
    .unwrap_or_else(|e| panic!("ssh into the unit: {e}\n{}", agent.log()));
    assert_eq!(
        seen.trim(),
        format!("Cpus_allowed_list:\t{cpu_list}"),
        "the session is pinned to the unit's CPUs"
    );
    ssh(
        &key,
        &user,
        "127.0.0.1",
        port,
        "nohup sleep 1000 >/dev/null 2>&1 &",
    )
    .expect("background job");
    assert!(processes_of(&user).contains("sleep 1000"));

    let compute_id = unit["compute_id"].as_str().expect("compute_id");
    let (status, body) = server
        .delete(&format!("/api/compute_units/deallocate/{compute_id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        ssh(&key, &user, "127.0.0.1", port, "true").is_err(),
        "the login is refused after deallocate"
    );
    assert_eq!(processes_of(&user), "", "no process of {user} remains");

    // Decommission leaves nothing behind.
    let (status, body) = server
        .delete("/api/admin/decommission_server/unit-host")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(
        Duration::from_secs(30),
        "the host decommissioned",
        || async {
            let servers = server.get_ok("/v1/servers").await;
            let status = servers
                .as_array()
                .and_then(|l| l.iter().find(|s| s["hostname"] == "unit-host"))
                .map(|s| s["status"].as_str().unwrap_or("").to_string());
            assert_ne!(status.as_deref(), Some("decommission_failed"), "{servers}");
            (status.as_deref() == Some("decommissioned")).then_some(())
        },
    )
    .await;
    for unit_user in [format!("{prefix}c0-0"), format!("{prefix}c1-1")] {
        assert!(!user_exists(&unit_user), "{unit_user} removed");
    }
    assert!(!Path::new(&format!("/home/{user}")).exists());
    assert!(!Path::new(&format!("/sys/fs/cgroup/cpuset/tessera/{user}")).exists());
    drop(agent);
    server.stop().await;
}

/// A `container`-driver agent for `hostname` on network `net` of its own
/// (bridge `tsrt<net>`, subnet `10.251.<net>.0/24`, SSH ports from
/// `44<net>00`: tests run side by side and must not share them), joined to
/// `server` and running.
pub(crate) async fn container_agent(
    server: &TestServer,
    hostname: &str,
    state: &Path,
    net: u8,
) -> AgentProcess {
    container_agent_with(server, hostname, state, net, &[]).await
}

/// [`container_agent`] with more of `tessera agent`'s flags.
pub(crate) async fn container_agent_with(
    server: &TestServer,
    hostname: &str,
    state: &Path,
    net: u8,
    extra: &[&str],
) -> AgentProcess {
    let token = join_token(&server.url).await;
    let (bridge, subnet) = (format!("tsrt{net}"), format!("10.251.{net}.0/24"));
    let (ports, prefix) = (format!("44{net}00"), format!("tc{net}-"));
    let mut args = vec![
        "--bridge",
        &bridge,
        "--subnet",
        &subnet,
        "--ssh-port-base",
        &ports,
        "--user-prefix",
        &prefix,
    ];
    args.extend_from_slice(extra);
    let agent = AgentProcess::start(
        &server.url,
        Some(&token),
        hostname,
        state,
        "container",
        &args,
    );
    eventually(Duration::from_secs(20), "the host running", || async {
        let servers = server.get_ok("/v1/servers").await;
        servers
            .as_array()
            .and_then(|l| l.iter().find(|s| s["hostname"] == hostname))
            .filter(|s| s["status"] == "running")
            .map(|_| ())
    })
    .await;
    agent
}

/// Builds the tiny image once and imports it into `state_dir`.
pub(crate) fn import_tiny(state_dir: &Path) {
    import_tiny_as(state_dir, "tiny");
}

/// Imports the tiny image into `state_dir` as image `name`.
fn import_tiny_as(state_dir: &Path, name: &str) {
    let imported = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["image", "import", name])
        .arg(tiny_tarball())
        .arg("--state-dir")
        .arg(state_dir)
        .output()
        .expect("tessera image import");
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
}

/// The tiny image's root file system (gzipped tar), built once per run.
pub(crate) fn tiny_tarball() -> &'static Path {
    static TARBALL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TARBALL.get_or_init(|| {
        // Cargo's scratch directory for integration tests: one file,
        // rebuilt by each run, not one left in /tmp per run.
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tessera-tiny.tar.gz");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/images/tiny");
        let built = Command::new("bash")
            .arg(script)
            .arg(&out)
            .output()
            .expect("scripts/images/tiny");
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
}

/// Waits for an operation through the API of `url`.
async fn wait_op(url: &str, op: &str) -> Value {
    let client = reqwest::Client::new();
    let reply: Value = client
        .get(format!("{url}/v1/operations/{op}/wait?timeout=60"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("wait")
        .json()
        .await
        .expect("operation");
    reply
}

async fn api(url: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method, format!("{url}{path}"))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Deletes an instance and waits for its deletion to complete.
async fn delete_instance(url: &str, id: &str) {
    let (status, deleted) = api(url, Method::DELETE, &format!("/v1/instances/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleted}");
    let op = wait_op(url, deleted["operation_id"].as_str().expect("op")).await;
    assert_eq!(op["status"], "completed", "{op}");
}

/// Creates an instance of the tiny image with `key` and a startup script,
/// and waits for it to run.
async fn create_tiny(url: &str, name: &str, public: &str) -> Value {
    let (status, key) = api(
        url,
        Method::POST,
        "/v1/ssh-keys",
        Some(json!({"name": format!("{name}-key"), "public_key": public})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    use base64::Engine;
    let script = "#!/bin/sh\necho booted-once >> /root/startup-ran\n";
    let (status, created) = api(
        url,
        Method::POST,
        "/v1/instances",
        Some(json!({
            "metadata": {"name": name},
            "spec": {
                "type": "cx11", "image": "tiny",
                "ssh_key_ids": [key["id"]],
                "user_data": base64::engine::general_purpose::STANDARD.encode(script),
            },
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let op = wait_op(url, created["operation_id"].as_str().expect("op")).await;
    assert_eq!(op["status"], "completed", "{op}");
    let id = created["id"].as_str().expect("id");
    let (_, instance) = api(url, Method::GET, &format!("/v1/instances/{id}"), None).await;
    assert_eq!(instance["status"]["state"], "running", "{instance}");
    instance
}

/// How many times the agent's log says it applied `id`'s desired state.
fn applied_count(state_dir: &Path, id: &str) -> usize {
    std::fs::read_to_string(state_dir.join("agent.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" applied") && l.contains(id))
        .count()
}

/// What a container leaves on the host, by instance id.
pub(crate) fn traces_of(state_dir: &Path, id: &str) -> Vec<String> {
    let mut found = Vec::new();
    if state_dir.join("containers").join(id).exists() {
        found.push("its directory".to_string());
    }
    let runc = Command::new("runc")
        .arg("--root")
        .arg(state_dir.join("runc"))
        .args(["list", "-q"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if runc.lines().any(|l| l.trim() == id) {
        found.push("a runc container".into());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts.contains(id) {
        found.push("a mount".into());
    }
    // cgroup v1 controllers' trees and the v2 tree alike.
    let cgroups = Command::new("find")
        .args([
            "/sys/fs/cgroup",
            "-maxdepth",
            "3",
            "-name",
            &format!("*{id}*"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !cgroups.trim().is_empty() {
        found.push(format!("cgroups {}", cgroups.trim()));
    }
    found
}

/// How many links are attached to `bridge`.
/// The last verdict of the project chain (in the agent's nftables table)
/// of the instance at `ip`: `accept` when its project has egress, `drop`
/// when not.
pub(crate) fn project_verdict(ip: &str) -> Option<String> {
    let ruleset = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let table = ruleset.split("\ntable ").find(|t| {
        [" ", ",", "\n", "}"]
            .iter()
            .any(|end| t.contains(&format!(" . {ip}{end}")))
    })?;
    let chain = table.split("chain net_").nth(1)?;
    let body = chain.split('}').next()?;
    body.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
}

/// How many instances the host routes into the VPC pool of the test
/// server whose agent is on `net` (`container_agent`; the server's pool is
/// `10.252.<net>.0/24`): one `/32` route to a veth each.
pub(crate) fn routed_instances(net: u8) -> usize {
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "root", &format!("10.252.{net}.0/24")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    routes.lines().filter(|l| l.contains(" dev tv")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_instance_is_reached_over_ssh_and_leaves_nothing() {
    skip_unless_dataplane!();
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            agent_timeout: Duration::from_secs(60),
            vpc_pool: Some("10.252.1.0/24"),
            ..Options::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("agent");
    import_tiny(&state);
    let agent = container_agent(&server, "box-host", &state, 1).await;
    // The server says what isolation its instances get.
    let servers = server.get_ok("/v1/servers").await;
    let host = servers
        .as_array()
        .and_then(|l| l.iter().find(|s| s["hostname"] == "box-host"))
        .expect("box-host");
    assert!(
        host["isolation"]
            .as_str()
            .is_some_and(|i| i.starts_with("unprivileged:")),
        "{host}"
    );
    let (key, public) = key_pair(dir.path());
    let started = std::time::Instant::now();
    let instance = create_tiny(&server.url, "web-1", &public).await;
    eprintln!("instance running in {} ms", started.elapsed().as_millis());
    let id = instance["id"].as_str().expect("id").to_string();
    let ip = instance["status"]["private_ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let cpus = instance["status"]["cpus"]
        .as_str()
        .expect("cpus")
        .to_string();
    // SSH answers when the instance is reported running (retried only for
    // slow machines); the startup script may still be finishing.
    ssh_until(&key, "root", &ip, 22, "true").await;
    let seen = ssh_until(
        &key,
        "root",
        &ip,
        22,
        "hostname; grep Cpus_allowed_list /proc/self/status; cat /root/startup-ran",
    )
    .await;
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines.first().copied(), Some("web-1"), "{seen}");
    assert_eq!(
        lines
            .get(1)
            .map(|l| l.split_whitespace().last().unwrap_or("")),
        Some(cpus.as_str()),
        "pinned to its CPUs: {seen}"
    );
    assert_eq!(lines.get(2).copied(), Some("booted-once"), "{seen}");
    // And from outside, through the port its host forwards.
    let endpoint = instance["status"]["ssh_endpoint"]
        .as_str()
        .expect("ssh_endpoint");
    let (host, port) = endpoint.rsplit_once(':').expect("HOST:PORT");
    assert_eq!(host, "127.0.0.1", "the host's address: {endpoint}");
    let through = ssh(&key, "root", host, port.parse().expect("port"), "hostname")
        .expect("ssh through the forwarded port");
    assert_eq!(through.trim(), "web-1");
    // Unprivileged, as every instance is by default.
    let map = ssh(&key, "root", &ip, 22, "cat /proc/self/uid_map").expect("uid_map");
    assert!(
        !map.split_whitespace().eq(["0", "0", "4294967295"]),
        "{map}"
    );

    // An install admin turns the project's egress off: its host's firewall
    // says so at once for the running instance, and on again.
    for egress in [false, true] {
        let (status, set) = api(
            &server.url,
            Method::PUT,
            "/v1/workspaces/default/policy",
            Some(json!({"egress": egress})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{set}");
        let verdict = if egress { "accept" } else { "drop" };
        assert_eq!(
            project_verdict(&ip).as_deref(),
            Some(verdict),
            "the project's chain on the host"
        );
    }

    // Stop: SSH is gone. Start: it is back, and the startup script did not
    // run again.
    let (status, stopped) = api(
        &server.url,
        Method::POST,
        &format!("/v1/instances/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{stopped}");
    wait_op(&server.url, stopped["operation_id"].as_str().expect("op")).await;
    assert!(
        ssh(&key, "root", &ip, 22, "true").is_err(),
        "a stopped instance answers no SSH"
    );
    let (status, started) = api(
        &server.url,
        Method::POST,
        &format!("/v1/instances/{id}/start"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let op = wait_op(&server.url, started["operation_id"].as_str().expect("op")).await;
    assert_eq!(op["status"], "completed", "{op}");
    let seen = ssh(&key, "root", &ip, 22, "cat /root/startup-ran").expect("ssh after start");
    assert_eq!(seen.trim(), "booted-once", "the startup script runs once");

    // Delete leaves no process, mount, cgroup, veth or file.
    let links = routed_instances(1);
    assert!(links >= 1, "the host routes to the instance's veth");
    delete_instance(&server.url, &id).await;
    assert_eq!(traces_of(&state, &id), Vec::<String>::new(), "left behind");
    assert_eq!(routed_instances(1), links - 1, "its veth is gone");
    drop(agent);
    server.stop().await;
}

/// Creates an instance of `image` and answers its operation once ended.
async fn create_of_image(url: &str, name: &str, image: &str) -> Value {
    let (status, created) = api(
        url,
        Method::POST,
        "/v1/instances",
        Some(json!({
            "metadata": {"name": name},
            "spec": {"type": "cx11", "image": image},
        })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    wait_op(url, created["operation_id"].as_str().expect("op")).await
}

/// A host takes what its agent offers. The images it says it has: an
/// instance of an image no host has (and none can pull) is refused without
/// any host being asked, saying so; once an operator imports it, the
/// agent's next heartbeat says so and the instance goes there. Its CPUs:
/// restarted with CPUs reserved for the host, its agent offers fewer, and
/// no instance is placed on the reserved ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_takes_only_what_its_agent_offers() {
    skip_unless_dataplane!();
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            agent_timeout: Duration::from_secs(60),
            vpc_pool: Some("10.252.2.0/24"),
            ..Options::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("agent");
    import_tiny(&state);
    let agent = container_agent(&server, "image-host", &state, 2).await;
    let refused = create_of_image(&server.url, "deb-1", "debian-12").await;
    assert_eq!(refused["status"], "failed", "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains("has image debian-12"), "{refused}");
    assert!(
        !agent.log().contains("debian-12"),
        "the host was never asked: {}",
        agent.log()
    );
    // Imported on the host (the tiny image, named so): the agent says so
    // within a heartbeat (1 s here), and the next instance runs there.
    import_tiny_as(&state, "debian-12");
    let tries = std::sync::atomic::AtomicUsize::new(2);
    let done = eventually(Duration::from_secs(20), "debian-12 placed", || async {
        let name = format!(
            "deb-{}",
            tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let op = create_of_image(&server.url, &name, "debian-12").await;
        (op["status"] == "completed").then_some(op)
    })
    .await;
    let id = done["result"]["instance_id"].as_str().expect("id");
    let (_, instance) = api(
        &server.url,
        Method::GET,
        &format!("/v1/instances/{id}"),
        None,
    )
    .await;
    assert_eq!(instance["status"]["state"], "running", "{instance}");
    delete_instance(&server.url, id).await;

    // Its disk: at --disk-overcommit 1 a root disk the host's free space
    // could not hold written in full is refused, saying why; a small one
    // runs.
    drop(agent);
    let agent = container_agent_with(
        &server,
        "image-host",
        &state,
        2,
        &["--disk-overcommit", "1"],
    )
    .await;
    for (name, disk_gb, fits) in [("huge-disk", 60_000, false), ("small-disk", 1, true)] {
        let (status, created) = api(
            &server.url,
            Method::POST,
            "/v1/instances",
            Some(json!({
                "metadata": {"name": name},
                "spec": {"type": "cx11", "image": "tiny", "disk_gb": disk_gb},
            })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let op = wait_op(&server.url, created["operation_id"].as_str().expect("op")).await;
        let id = created["id"].as_str().expect("id");
        if fits {
            assert_eq!(op["status"], "completed", "{op}");
        } else {
            assert_eq!(op["status"], "failed", "{op}");
            assert!(
                op["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("--disk-overcommit")),
                "{op}"
            );
            assert!(
                !state.join(format!("containers/{id}/rw.img")).exists(),
                "no disk made"
            );
        }
        if fits {
            delete_instance(&server.url, id).await;
        }
    }

    // Every CPU but the first reserved for the host itself.
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online");
    let online = CpuSet::parse_list(online.trim()).expect("online CPUs");
    let first = online.first().expect("a CPU");
    let reserved: CpuSet = online.iter().filter(|c| *c != first).collect();
    if reserved.is_empty() {
        eprintln!("skipped the reserved CPUs' part: this machine has one CPU");
    } else {
        drop(agent);
        let reserved = reserved.to_string();
        let agent = container_agent_with(
            &server,
            "image-host",
            &state,
            2,
            &["--reserved-cpus", &reserved],
        )
        .await;
        eventually(Duration::from_secs(20), "one CPU scheduled", || async {
            let client = reqwest::Client::new();
            let text = client
                .get(format!("{}/metrics", server.url))
                .bearer_auth(TOKEN)
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.lines().any(|l| l == "tessera_cpus 1").then_some(())
        })
        .await;
        let placed = create_of_image(&server.url, "pinned", "tiny").await;
        assert_eq!(placed["status"], "completed", "{placed}");
        let id = placed["result"]["instance_id"].as_str().expect("id");
        let (_, instance) = api(
            &server.url,
            Method::GET,
            &format!("/v1/instances/{id}"),
            None,
        )
        .await;
        assert_eq!(instance["status"]["cpus"], first.to_string(), "{instance}");
        let refused = create_of_image(&server.url, "no-room", "tiny").await;
        assert_eq!(refused["status"], "failed", "{refused}");
        assert!(
            refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("no host has 1 free CPUs")),
            "{refused}"
        );
        delete_instance(&server.url, id).await;
        drop(agent);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_survive_restarts_of_the_agent_and_the_server() {
    skip_unless_dataplane!();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("server");
    let database_url = tessera_store::Store::sqlite_url(&data.join("tessera.db"));
    std::fs::create_dir_all(&data).expect("data dir");
    let listen = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start_on(
        &database_url,
        &data,
        &listen,
        &["--agent-silence-ms", "3000", "--vpc-pool", "10.252.2.0/24"],
    );
    let url = server.url.clone();
    let state = dir.path().join("agent");
    import_tiny(&state);
    let token = join_token(&url).await;
    let agent_args = [
        "--bridge",
        "tsrt2",
        "--subnet",
        "10.251.2.0/24",
        "--ssh-port-base",
        "44200",
        "--user-prefix",
        "tc2-",
    ];
    let agent = AgentProcess::start(
        &url,
        Some(&token),
        "restart-host",
        &state,
        "container",
        &agent_args,
    );
    let (key, public) = key_pair(dir.path());
    eventually(Duration::from_secs(20), "the host running", || async {
        let (_, servers) = api(&url, Method::GET, "/v1/servers", None).await;
        servers
            .as_array()
            .and_then(|l| l.iter().find(|s| s["hostname"] == "restart-host"))
            .filter(|s| s["status"] == "running")
            .map(|_| ())
    })
    .await;
    let instance = create_tiny(&url, "keeper", &public).await;
    let id = instance["id"].as_str().expect("id").to_string();
    let ip = instance["status"]["private_ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let pid_of = |state: &Path| -> String {
        let out = Command::new("runc")
            .arg("--root")
            .arg(state.join("runc"))
            .args(["state", &id])
            .output()
            .expect("runc state");
        let state: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        format!("{}:{}", state["status"], state["pid"])
    };
    let before = pid_of(&state);
    assert!(before.starts_with("\"running\""), "{before}");

    let applied_before = applied_count(&state, &id);
    // Both die at once; the instance keeps running on its own.
    agent.crash();
    server.crash();
    ssh(&key, "root", &ip, 22, "true").expect("the instance runs with no control plane");
    assert_eq!(pid_of(&state), before);

    // Both come back: the agent adopts, neither restarting nor duplicating.
    let server = ServerProcess::start_on(
        &database_url,
        &data,
        &listen,
        &["--agent-silence-ms", "3000", "--vpc-pool", "10.252.2.0/24"],
    );
    let agent = AgentProcess::start(&url, None, "restart-host", &state, "container", &agent_args);
    eventually(
        Duration::from_secs(20),
        "the instance listed as running",
        || async {
            let (_, got) = api(&url, Method::GET, &format!("/v1/instances/{id}"), None).await;
            (got["status"]["state"] == "running").then_some(())
        },
    )
    .await;
    // The restarted agent re-applied the instance's desired state.
    eventually(
        Duration::from_secs(20),
        "the agent's resync of the instance",
        || async { (applied_count(&state, &id) > applied_before).then_some(()) },
    )
    .await;
    assert_eq!(pid_of(&state), before, "the same process, not a new one");
    let (_, listed) = api(&url, Method::GET, "/v1/instances", None).await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    let runc = Command::new("runc")
        .arg("--root")
        .arg(state.join("runc"))
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    assert_eq!(
        String::from_utf8_lossy(&runc.stdout).trim(),
        id,
        "one container"
    );
    ssh(&key, "root", &ip, 22, "true").expect("still reachable");

    // The agent alone dies: its host becomes unreachable and the instance
    // unknown; it returns and all is as it was.
    agent.crash();
    eventually(Duration::from_secs(15), "the instance unknown", || async {
        let (_, got) = api(&url, Method::GET, &format!("/v1/instances/{id}"), None).await;
        (got["status"]["state"] == "unknown").then_some(())
    })
    .await;
    let agent = AgentProcess::start(&url, None, "restart-host", &state, "container", &agent_args);
    eventually(
        Duration::from_secs(15),
        "the instance running again",
        || async {
            let (_, got) = api(&url, Method::GET, &format!("/v1/instances/{id}"), None).await;
            (got["status"]["state"] == "running").then_some(())
        },
    )
    .await;
    assert_eq!(pid_of(&state), before);

    let (status, deleted) = api(&url, Method::DELETE, &format!("/v1/instances/{id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleted}");
    let op = wait_op(&url, deleted["operation_id"].as_str().expect("op")).await;
    assert_eq!(op["status"], "completed", "{op}");
    assert_eq!(traces_of(&state, &id), Vec::<String>::new());
    drop(agent);
    server.stop();
}

/// One ledger on a real host: a server registered only through Kloigos,
/// whose agent runs the container driver, serves an instance on a whole
/// unit, pinned to the unit's CPUs, and a Kloigos tenant on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_on_a_kloigos_unit_of_a_real_host_is_pinned_to_it() {
    skip_unless_dataplane!();
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            agent_timeout: Duration::from_secs(60),
            vpc_pool: Some("10.252.4.0/24"),
            ..Options::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("agent");
    import_tiny(&state);
    let prefix = format!("tk{}-", std::process::id() % 10000);
    server
        .init_host_in("carved-host", "eu-north", "a", &["0-0", "1-1"])
        .await;
    let token = join_token(&server.url).await;
    let agent = AgentProcess::start(
        &server.url,
        Some(&token),
        "carved-host",
        &state,
        "container",
        &[
            "--bridge",
            "tsrt4",
            "--subnet",
            "10.251.4.0/24",
            "--ssh-port-base",
            "44400",
            "--user-prefix",
            &prefix,
        ],
    );
    server.wait_host_status("carved-host", "FREE", 2).await;
    let (key, public) = key_pair(dir.path());
    let instance = create_tiny(&server.url, "on-a-unit", &public).await;
    let id = instance["id"].as_str().expect("id").to_string();
    let cpus = instance["status"]["cpus"]
        .as_str()
        .expect("cpus")
        .to_string();
    let ip = instance["status"]["private_ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let units = server.units("?hostname=carved-host").await;
    let held = units
        .iter()
        .find(|u| u["tags"]["instance_id"] == id.as_str())
        .unwrap_or_else(|| panic!("a unit held by {id}: {units:?}"));
    assert_eq!(held["status"], "ALLOCATED");
    assert_eq!(
        held["cpu_list"],
        cpus.as_str(),
        "the instance has the unit's CPUs"
    );
    let seen = ssh_until(
        &key,
        "root",
        &ip,
        22,
        "grep Cpus_allowed_list /proc/self/status",
    )
    .await;
    assert_eq!(
        seen.split_whitespace().last(),
        Some(cpus.as_str()),
        "pinned to the unit's CPUs: {seen}\n{}",
        agent.log()
    );
    // The other unit goes to a Kloigos tenant, and nothing more fits.
    let (status, unit) = server
        .allocate(json!({"cpu_count": 1, "ssh_public_key": public, "tags": null}))
        .await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    assert_ne!(unit["cpu_list"], cpus.as_str());
    let (status, _) = server
        .allocate(json!({"cpu_count": 1, "ssh_public_key": public, "tags": null}))
        .await;
    assert_eq!(status.as_u16(), 460);
    // Deleting the instance frees its unit; then everything is retired.
    delete_instance(&server.url, &id).await;
    let freed = server.units("?hostname=carved-host&status=FREE").await;
    assert_eq!(freed.len(), 1, "{freed:?}");
    let compute_id = unit["compute_id"].as_str().expect("compute_id");
    let (status, body) = server
        .delete(&format!("/api/compute_units/deallocate/{compute_id}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .delete("/api/admin/decommission_server/carved-host")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually(
        Duration::from_secs(30),
        "the host decommissioned",
        || async {
            let servers = server.get_ok("/v1/servers").await;
            let status = servers
                .as_array()
                .and_then(|l| l.iter().find(|s| s["hostname"] == "carved-host"))
                .map(|s| s["status"].as_str().unwrap_or("").to_string());
            (status.as_deref() == Some("decommissioned")).then_some(())
        },
    )
    .await;
    for unit_user in [format!("{prefix}c0-0"), format!("{prefix}c1-1")] {
        assert!(!user_exists(&unit_user), "{unit_user} removed");
    }
    drop(agent);
    server.stop().await;
}

/// A catalog image that names an OCI reference: the control plane tells
/// the host where to pull it, the host pulls it (through its
/// `--insecure-registry`) the first time an instance needs it, and the
/// instance runs from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_image_is_pulled_from_its_registry_on_first_use() {
    skip_unless_dataplane!();
    if let Some(why) = tessera_agent::testkit::registry_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry =
        tessera_agent::testkit::Registry::start(&dir.path().join("registry"), None).await;
    let reference = format!("{}/images/tiny:v1", registry.addr);
    let config = json!({"architecture": tessera_agent::testkit::go_arch(), "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": []}});
    registry
        .client()
        .push(
            &reference.parse().expect("reference"),
            &[oci_client::client::ImageLayer::oci_v1_gzip(
                std::fs::read(tiny_tarball()).expect("the tiny image"),
                None,
            )],
            oci_client::client::Config::oci_v1(config.to_string().into_bytes(), None),
            &oci_client::secrets::RegistryAuth::Anonymous,
            None,
        )
        .await
        .expect("push");
    // The built-in catalog, with an image from that registry that cx11 runs.
    let catalog = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/catalog.toml"),
    )
    .expect("the built-in catalog")
    .replace(
        "\"debian-12\", \"tiny\"]",
        "\"debian-12\", \"tiny\", \"tiny-oci\"]",
    ) + &format!(
        "\n[[images]]\nid = \"0b7c1c8e-0000-4000-8000-000000000008\"\nimage_type = \"tiny-oci\"\n\
             name = \"Tiny, pulled\"\ncategory = \"tiny\"\noci = \"{reference}\"\n"
    );
    let catalog_file = dir.path().join("catalog.toml");
    std::fs::write(&catalog_file, catalog).expect("catalog");
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            agent_timeout: Duration::from_secs(60),
            vpc_pool: Some("10.252.8.0/24"),
            catalog: Some(catalog_file),
            ..Options::default()
        },
    )
    .await;
    let state = dir.path().join("agent");
    let _agent = container_agent_with(
        &server,
        "pull-host",
        &state,
        8,
        &["--insecure-registry", &registry.addr],
    )
    .await;
    assert!(!state.join("images/tiny-oci").exists(), "not there before");
    let (key, public) = key_pair(dir.path());
    let (status, made) = api(
        &server.url,
        Method::POST,
        "/v1/ssh-keys",
        Some(json!({"name": "puller", "public_key": public})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let (status, created) = api(
        &server.url,
        Method::POST,
        "/v1/instances",
        Some(json!({"metadata": {"name": "pulled-1"},
            "spec": {"type": "cx11", "image": "tiny-oci", "ssh_key_ids": [made["id"]]}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let op = wait_op(&server.url, created["operation_id"].as_str().expect("op")).await;
    assert_eq!(op["status"], "completed", "{op}");
    let meta = std::fs::read_to_string(state.join("images/tiny-oci/image.json")).expect("pulled");
    assert!(meta.contains(&format!("{reference}@sha256:")), "{meta}");
    let ip = created["status"]["private_ip"]
        .as_str()
        .expect("ip")
        .to_string();
    let name = ssh_until(&key, "root", &ip, 22, "hostname").await;
    assert_eq!(name.trim(), "pulled-1");
    let id = created["id"].as_str().expect("id");
    delete_instance(&server.url, id).await;
    server.stop().await;
}
