//! The containers API on the real `container` driver: the seed walked as a
//! user would, end to end on this machine (root, runc, dropbear, busybox:
//! see `dataplane.rs`; elsewhere it says why it is skipped).

use crate::compute::{
    compute, next_json, run_in_terminal, socket, try_run_in_terminal, wait_status_within,
};
use crate::dataplane::{cannot_run, container_agent, import_tiny, routed_instances, traces_of};
use crate::harness::{Backend, KEY, Options, TOKEN, TestServer, eventually};
use reqwest::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tessera_agent::testkit::key_pair;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Waits (up to a minute: a restart stops and starts a real container)
/// for a container's status.
async fn until_status(server: &TestServer, id: &str, status: &str) -> Value {
    wait_status_within(server, id, status, Duration::from_secs(60)).await
}

/// `GET /` with `host` through the gateway's local port for external
/// `port`: status and body.
async fn http_get(addr: SocketAddr, host: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .header("host", host)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status();
    (status, response.text().await.unwrap_or_default())
}

/// `GET /` over TLS to `addr`, verifying the certificate against `pem` for
/// `host`: the raw response.
async fn https_get(addr: SocketAddr, host: &str, pem: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(host.to_string()).expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("the certificate verifies for the container's hostname");
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Runs `ssh_command` as printed (plus the key, a command and a
/// known-hosts file that must match).
fn run_ssh_command(
    ssh_command: &str,
    key: &Path,
    known_hosts: &Path,
    strict: bool,
    command: &str,
) -> Result<String, String> {
    let mut words = ssh_command.split_whitespace();
    assert_eq!(words.next(), Some("ssh"), "{ssh_command}");
    let output = Command::new("ssh")
        .args(words)
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-o")
        .arg(if strict {
            "StrictHostKeyChecking=yes"
        } else {
            "StrictHostKeyChecking=accept-new"
        })
        .arg(command)
        .output()
        .expect("ssh");
    match output.status.success() {
        true => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        false => Err(String::from_utf8_lossy(&output.stderr).into_owned()),
    }
}

async fn ssh_command_until(
    ssh_command: &str,
    key: &Path,
    known_hosts: &Path,
    strict: bool,
    command: &str,
) -> String {
    let mut last = String::new();
    for _ in 0..60 {
        match run_ssh_command(ssh_command, key, known_hosts, strict, command) {
            Ok(out) => return out,
            Err(err) => last = err,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("{ssh_command} {command:?} never worked: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_walks_the_seed_on_the_real_driver() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: the real data plane cannot run here: {why}");
        return;
    }
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            agent_timeout: Duration::from_secs(60),
            vpc_pool: Some("10.252.5.0/24"),
            gateway: true,
            ..Options::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("agent");
    import_tiny(&state);
    let agent = container_agent(&server, "compute-host", &state, 5).await;

    // A key, then the status socket, then a container with SSH and ingress
    // on 80 and 443 (TLS ends at the gateway) and a second mount path.
    let (key, public) = key_pair(dir.path());
    assert_ne!(public.trim(), KEY, "a key of this test's own");
    let (status, added) = compute(
        &server,
        Method::POST,
        "/ssh-keys",
        Some(json!({"name": "laptop", "public_key": public})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    let mut ws = socket(&server, &format!("/compute/ws?token={TOKEN}"), None).await;
    let list = next_json(&mut ws).await.expect("the list");
    assert_eq!(list["type"], "containers", "{list}");
    let (status, created) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({
            "name": "web", "instance_type": "tiny", "image": "tiny",
            "ssh_key_ids": [added["id"]], "ssh_enabled": true,
            "memory_mb": 256, "storage_gb": 1, "mount_paths": ["/root", "/data"],
            "ingress_rules": [{"port": 80, "target_port": 3000}, {"port": 443, "target_port": 3000}],
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let mut running = None;
    while let Some(message) = next_json(&mut ws).await {
        if message["type"] == "container_status"
            && message["data"]["container_id"] == json!(id)
            && message["data"]["status"] == "running"
        {
            running = Some(message);
            break;
        }
    }
    assert!(running.is_some(), "the status socket said running");
    let container = until_status(&server, &id, "running").await;
    assert_eq!(container["https_enabled"], true, "{container}");
    let hostname = container["hostname"]
        .as_str()
        .expect("hostname")
        .to_string();
    assert_eq!(hostname, format!("{id}.compute.localhost"));

    // A command through the terminal, which needs no SSH and no key: it
    // starts a web server in the container and answers.
    let (output, exit) = run_in_terminal(
        &server,
        &id,
        b"mkdir -p /root/www && echo hello-from-$(hostname) > /root/www/index.html && \
          busybox httpd -p 3000 -h /root/www && echo started-$((6*7)); exit\n",
    )
    .await;
    assert!(output.contains("started-42"), "terminal output: {output:?}");
    assert!(
        exit.is_some(),
        "the session closed with the shell: {output:?}"
    );

    // The page, through the gateway by hostname: HTTP on 80, HTTPS on 443
    // with the generated certificate; and a 502 naming the missing rule.
    let gateway = &server.running.gateway.as_ref().expect("gateway").gateway;
    let port_80 = gateway.local_addr(80).expect("80");
    // The gateway reads the store every quarter second.
    let page = eventually(Duration::from_secs(1), "the page", || async {
        let (status, page) = http_get(port_80, &hostname).await;
        (status == StatusCode::OK).then_some(page)
    })
    .await;
    assert_eq!(page.trim(), "hello-from-web", "{page}");
    let answer = https_get(
        gateway.local_addr(443).expect("443"),
        &hostname,
        gateway.certificate_pem(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello-from-web"), "{answer}");
    let (status, _) = compute(
        &server,
        Method::DELETE,
        &format!("/containers/{id}/ingress/80"),
        None,
    )
    .await;
    assert!(status.is_success(), "{status}");
    let page = eventually(
        Duration::from_secs(2),
        "the rule's removal applies",
        || async {
            let (status, page) = http_get(port_80, &hostname).await;
            (status == StatusCode::BAD_GATEWAY).then_some(page)
        },
    )
    .await;
    assert!(page.contains("no ingress rule for port 80"), "{page}");

    // SSH with ssh_command as printed; a file under a mount path.
    let ssh_command = container["ssh_command"]
        .as_str()
        .expect("ssh_command")
        .to_string();
    let known_hosts = dir.path().join("known_hosts");
    let seen = ssh_command_until(
        &ssh_command,
        &key,
        &known_hosts,
        false,
        "hostname; echo kept > /data/file; cat /data/file",
    )
    .await;
    assert_eq!(seen.lines().collect::<Vec<_>>(), ["web", "kept"], "{seen}");
    // Storage is the container's own, and bounded by storage_gb.
    let full = run_ssh_command(
        &ssh_command,
        &key,
        &known_hosts,
        true,
        "dd if=/dev/zero of=/data/big bs=1M count=1300 2>&1; echo dd-exit=$?; rm -f /data/big",
    )
    .expect("ssh");
    assert!(
        !full.contains("dd-exit=0") && full.contains("No space left"),
        "writing past 1 GB fails: {full}"
    );
    eprintln!(
        "writing past storage_gb: {}",
        full.trim().replace('\n', " | ")
    );

    // New mounts restart it; the file is still there, the host key the same.
    let (status, changed) = compute(
        &server,
        Method::PUT,
        &format!("/containers/{id}/mounts"),
        Some(json!({"mount_paths": ["/root", "/data", "/srv"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["restarted"], true, "{changed}");
    until_status(&server, &id, "running").await;
    let seen = ssh_command_until(
        &ssh_command,
        &key,
        &known_hosts,
        true,
        "cat /data/file; cat /root/www/index.html; test -d /srv && echo srv",
    )
    .await;
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["kept", "hello-from-web", "srv"],
        "{seen}"
    );

    // SSH off closes it at once; on opens it again.
    let (status, off) = compute(
        &server,
        Method::PUT,
        &format!("/containers/{id}/ssh"),
        Some(json!({"ssh_enabled": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{off}");
    assert!(
        run_ssh_command(&ssh_command, &key, &known_hosts, true, "true").is_err(),
        "SSH is closed"
    );
    let (status, on) = compute(
        &server,
        Method::PUT,
        &format!("/containers/{id}/ssh"),
        Some(json!({"ssh_enabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{on}");
    ssh_command_until(&ssh_command, &key, &known_hosts, true, "true").await;

    // Stop, start, delete: nothing is left on the host.
    let (status, _) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    until_status(&server, &id, "stopped").await;
    assert!(run_ssh_command(&ssh_command, &key, &known_hosts, true, "true").is_err());
    let (status, _) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/start"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    until_status(&server, &id, "running").await;
    let seen = ssh_command_until(&ssh_command, &key, &known_hosts, true, "cat /data/file").await;
    assert_eq!(seen.trim(), "kept");
    let links = routed_instances(5);
    assert!(links >= 1, "the host routes to the container's veth");
    let (status, _) = compute(&server, Method::DELETE, &format!("/containers/{id}"), None).await;
    assert!(status.is_success(), "{status}");
    let mut deleted = false;
    while let Some(message) = next_json(&mut ws).await {
        if message["type"] == "container_deleted" && message["data"]["container_id"] == json!(id) {
            deleted = true;
            break;
        }
    }
    assert!(deleted, "the status socket said deleted");
    eventually(
        Duration::from_secs(30),
        "nothing left on the host",
        || async { traces_of(&state, &id).is_empty().then_some(()) },
    )
    .await;
    assert_eq!(routed_instances(5), links - 1, "its veth is gone");
    drop(agent);
    server.stop().await;
}

/// A container whose init keeps ending is started again three times, then
/// left `failed` with why: observed on the real driver, never stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_keeps_dying_ends_failed_with_why() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: the real data plane cannot run here: {why}");
        return;
    }
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            agent_timeout: Duration::from_secs(60),
            vpc_pool: Some("10.252.6.0/24"),
            ..Options::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("agent");
    import_tiny(&state);
    let agent = container_agent(&server, "crash-host", &state, 6).await;
    let (status, key) = compute(
        &server,
        Method::POST,
        "/ssh-keys",
        Some(json!({"name": "k", "public_key": KEY})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let (status, created) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "doomed", "instance_type": "tiny", "ssh_key_ids": [key["id"]], "storage_gb": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    until_status(&server, &id, "running").await;
    // What it uses is measured on its host while it runs.
    let measured = eventually(Duration::from_secs(10), "usage measured", || async {
        let (_, c) = compute(&server, Method::GET, &format!("/containers/{id}"), None).await;
        (c["memory_used_mb"].as_f64().is_some_and(|m| m > 0.0)
            && c["storage_used_gb"].as_f64().is_some())
        .then_some(c)
    })
    .await;
    eprintln!(
        "measured: memory_used_mb {} storage_used_gb {}",
        measured["memory_used_mb"], measured["storage_used_gb"]
    );
    for death in 1..=4 {
        // A death soon after a (re)start may predate it; the control plane
        // waits ten seconds before it believes one.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let before = init_started(&server, &id)
            .await
            .expect("a running container has a terminal");
        run_in_terminal(&server, &id, b"kill -TERM 1\n").await;
        if death <= 3 {
            eventually(
                Duration::from_secs(30),
                &format!("restart {death}"),
                || async {
                    let (_, c) =
                        compute(&server, Method::GET, &format!("/containers/{id}"), None).await;
                    if c["status"] != "running" {
                        return None;
                    }
                    let now = init_started(&server, &id).await?;
                    (now != before).then_some(())
                },
            )
            .await;
        } else {
            let failed = until_status(&server, &id, "failed").await;
            let why = failed["status_reason"].as_str().unwrap_or_default();
            assert!(why.contains("kept dying"), "{failed}");
            eprintln!("failed: {why}");
        }
    }
    let (status, _) = compute(&server, Method::DELETE, &format!("/containers/{id}"), None).await;
    assert!(status.is_success(), "{status}");
    eventually(
        Duration::from_secs(30),
        "nothing left on the host",
        || async { traces_of(&state, &id).is_empty().then_some(()) },
    )
    .await;
    // An image its host cannot have: failed at once, saying which.
    let (status, created) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "no-image", "instance_type": "tiny", "image": "debian-12", "ssh_key_ids": [key["id"]], "storage_gb": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let failed = until_status(&server, created["id"].as_str().expect("id"), "failed").await;
    let why = failed["status_reason"].as_str().unwrap_or_default();
    assert!(why.contains("debian-12"), "{failed}");
    drop(agent);
    server.stop().await;
}

/// When the container's init started (clock ticks after boot), read
/// through the terminal; `None` when no session could run.
async fn init_started(server: &TestServer, id: &str) -> Option<String> {
    let (output, _) = try_run_in_terminal(
        server,
        id,
        b"echo \"started=$(cut -d' ' -f22 /proc/1/stat)\"; exit\n",
    )
    .await?;
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("started="))
        .find(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_string)
}
