//! The client commands against a running server: an operator creates a
//! project, a user and a token from a shell, and they work.

use crate::harness::{ServerProcess, TOKEN};
use std::io::Write;
use std::process::{Command, Stdio};

fn tessera(url: &str, token: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env("TESSERA_SERVER", url)
        .env("TESSERA_TOKEN", token)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_up_a_team_from_the_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = tessera_store::Store::sqlite_url(&dir.path().join("tessera.db"));
    let server = ServerProcess::start(&url, dir.path(), &[]);
    let (ok, out, err) = tessera(&server.url, TOKEN, &["project", "create", "research"], None);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = tessera(
        &server.url,
        TOKEN,
        &[
            "user",
            "create",
            "ada",
            "--role",
            "member",
            "--project",
            "research",
        ],
        Some("ada-password-1\n"),
    );
    assert!(ok, "{out}{err}");
    let (ok, secret, err) = tessera(
        &server.url,
        TOKEN,
        &[
            "token",
            "create",
            "--project",
            "research",
            "--scope",
            "instance_read",
        ],
        None,
    );
    assert!(ok, "{secret}{err}");
    let secret = secret.trim();
    assert!(secret.starts_with("tsr_"), "{secret}");
    // The token lists the project's (empty) instances; it may do nothing else.
    let (ok, out, err) = tessera(&server.url, secret, &["instance", "list", "--json"], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("\"items\": []"), "{out}");
    let (ok, _, err) = tessera(&server.url, secret, &["user", "list"], None);
    assert!(!ok);
    assert!(
        err.starts_with("error: permission user_admin is required"),
        "{err}"
    );
    // Ada logs in with the password given on stdin.
    let response = reqwest::Client::new()
        .post(format!("{}/v1/auth/login", server.url))
        .json(&serde_json::json!({"username": "ada", "password": "ada-password-1"}))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    // Mistakes are errors with the server's message and exit 1.
    let (ok, _, err) = tessera(
        &server.url,
        TOKEN,
        &[
            "user",
            "create",
            "bob",
            "--role",
            "root",
            "--project",
            "research",
        ],
        Some("bob-password-1\n"),
    );
    assert!(!ok);
    assert!(err.contains("unknown role"), "{err}");
    server.stop();
}

/// A workspace's network from the shell: a VPC, a subnet, a group with
/// rules in the short form, an instance in them (on a simulated host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_lays_out_a_network_from_the_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = tessera_store::Store::sqlite_url(&dir.path().join("tessera.db"));
    let server = ServerProcess::start(&url, dir.path(), &[]);
    let run = |args: &[&str]| {
        let (ok, out, err) = tessera(&server.url, TOKEN, args, None);
        assert!(ok, "tessera {}: {out}{err}", args.join(" "));
        out
    };
    let vpc = run(&["vpc", "create", "app", "--cidr-block", "10.200.0.0/16"]);
    assert!(vpc.trim().starts_with("vpc-"), "{vpc}");
    run(&[
        "subnet",
        "create",
        "web",
        "--vpc",
        "app",
        "--cidr-block",
        "10.200.1.0/24",
    ]);
    let subnets = run(&["subnet", "list", "--vpc", "app"]);
    assert!(
        subnets.contains("10.200.1.0/24") && subnets.contains("free=253"),
        "{subnets}"
    );
    run(&[
        "security-group",
        "create",
        "web",
        "--allow",
        "tcp:80-443",
        "--allow",
        "tcp:22@203.0.113.0/24",
        "--allow",
        "all@web",
    ]);
    let groups = run(&["security-group", "list"]);
    assert!(
        groups.contains("tcp:80-443@0.0.0.0/0 tcp:22@203.0.113.0/24 all@sg-"),
        "{groups}"
    );
    assert!(groups.contains("(default)"), "{groups}");
    run(&["security-group", "set-rules", "web", "--allow", "icmp"]);
    assert!(run(&["security-group", "list"]).contains("icmp@0.0.0.0/0"));
    let vpcs = run(&["vpc", "list"]);
    assert!(
        vpcs.contains("default") && vpcs.contains("10.200.0.0/16"),
        "{vpcs}"
    );
    let (ok, _, err) = tessera(
        &server.url,
        TOKEN,
        &["security-group", "create", "x", "--allow", "tcp:"],
        None,
    );
    assert!(!ok && err.contains("PROTOCOL[:PORTS][@SOURCE]"), "{err}");
    let (ok, _, err) = tessera(
        &server.url,
        TOKEN,
        &["vpc", "create", "y", "--cidr-block", "10.200.4.0/24"],
        None,
    );
    assert!(!ok && err.contains("overlaps"), "{err}");
    // An instance in them, on a simulated host.
    let http = reqwest::Client::new();
    let op: serde_json::Value = http
        .post(format!("{}/v1/servers/create", server.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"hostname": "sim-1", "ip_address": "192.0.2.20", "zone": "fin-01", "cpus": "0-3"}))
        .send()
        .await
        .expect("servers/create")
        .json()
        .await
        .expect("an operation");
    let done: serde_json::Value = http
        .get(format!(
            "{}/v1/operations/{}/wait?timeout=30",
            server.url,
            op["id"].as_str().expect("id")
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("wait")
        .json()
        .await
        .expect("the operation");
    assert_eq!(done["status"], "completed", "{done}");
    let shown = run(&[
        "instance",
        "create",
        "web-1",
        "--vpc",
        "app",
        "--subnet",
        "web",
        "--security-group",
        "web",
        "--json",
    ]);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["status"]["private_ip"], "10.200.1.2", "{shown}");
    assert_eq!(shown["spec"]["security_groups"], serde_json::json!(["web"]));
    // Known by its name as by its id: stopped, started, shown.
    let id = shown["id"].as_str().expect("an id").to_string();
    let stopped = run(&["instance", "stop", "web-1"]);
    assert!(
        stopped.starts_with(&id) && stopped.contains(" stopped "),
        "{stopped}"
    );
    assert!(run(&["instance", "start", "web-1"]).contains(" running "));
    let got: serde_json::Value =
        serde_json::from_str(&run(&["instance", "get", "web-1", "--json"])).expect("json");
    assert_eq!(got["id"], id.as_str(), "{got}");
    // A name two instances have, or none has, is an error that says so.
    let twin: serde_json::Value =
        serde_json::from_str(&run(&["instance", "create", "web-1", "--json"])).expect("json");
    let twin = twin["id"].as_str().expect("an id").to_string();
    let (ok, _, err) = tessera(&server.url, TOKEN, &["instance", "get", "web-1"], None);
    assert!(!ok, "{err}");
    assert!(
        err.contains("2 instances are named \"web-1\"") && err.contains(&id) && err.contains(&twin),
        "{err}"
    );
    let (ok, _, err) = tessera(&server.url, TOKEN, &["instance", "delete", "web-9"], None);
    assert!(
        !ok && err.contains("no instance is named \"web-9\""),
        "{err}"
    );
    // A name that looks like an id is still a name.
    let named_like_an_id: serde_json::Value =
        serde_json::from_str(&run(&["instance", "create", "inst-web", "--json"])).expect("json");
    let got: serde_json::Value =
        serde_json::from_str(&run(&["instance", "get", "inst-web", "--json"])).expect("json");
    assert_eq!(got["id"], named_like_an_id["id"], "{got}");
    assert!(run(&["instance", "delete", "inst-web"]).contains(" deleted"));
    let (ok, _, err) = tessera(&server.url, TOKEN, &["instance", "get", "inst-0000"], None);
    assert!(
        !ok && err.contains("no instance is named \"inst-0000\""),
        "{err}"
    );
    // Deleted by id, the name is one instance's again.
    run(&["instance", "delete", &twin]);
    assert!(run(&["instance", "delete", "web-1"]).contains(&format!("instance {id} deleted")));
    let (ok, _, err) = tessera(&server.url, TOKEN, &["instance", "get", "web-1"], None);
    assert!(!ok && err.contains("no instance is named"), "{err}");
    assert!(run(&["instance", "get", &id]).contains(" terminated "));
    server.stop();
}

/// `tessera bench gateway` runs end to end (a few requests: the figures
/// are for people, never asserted on).
#[test]
fn the_gateway_benchmark_runs_and_prints_its_rows() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["bench", "gateway", "--requests", "20", "--clients", "2"])
        .env("TESSERA_LOG", "warn")
        .output()
        .expect("tessera bench gateway");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in ["direct (http)", "gateway http :80", "gateway https :443"] {
        assert_eq!(stdout.matches(row).count(), 3, "{row}: {stdout}");
    }
}

/// `tessera image pull` from a local registry: progress per layer, the
/// image listed, a second pull of the same layers fetching nothing, and a
/// private registry's password read from standard input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pulls_images_from_a_registry() {
    use tessera_agent::testkit::{Registry, registry_missing};
    if let Some(reason) = registry_missing() {
        eprintln!("skipped: {reason}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let open = Registry::start(&dir.path().join("open"), None).await;
    let files: &[(&str, &[u8])] = &[("etc/motd", b"pulled\n")];
    let anonymous = oci_client::secrets::RegistryAuth::Anonymous;
    open.push("team/app", "v1", &[files], &anonymous).await;
    let state = dir.path().join("agent");
    let image = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["image"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--state-dir", state.to_str().expect("path")]);
        tessera("http://unused", TOKEN, &all, stdin)
    };
    let reference = format!("{}/team/app:v1", open.addr);
    let (ok, out, err) = image(
        &["pull", &reference, "--insecure-registry", &open.addr],
        None,
    );
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("as app-v1") && out.contains("fetched"),
        "{out}"
    );
    eprintln!("$ tessera image pull {reference} --insecure-registry ...\n{err}{out}");
    assert!(
        err.contains("2 B") || err.contains("fetched"),
        "progress: {err}"
    );
    let (ok, out, _) = image(&["list"], None);
    assert!(ok && out.lines().any(|l| l == "app-v1"), "{out}");
    assert_eq!(
        std::fs::read(state.join("images/app-v1/rootfs/etc/motd")).expect("its file"),
        b"pulled\n"
    );
    let (ok, out, err) = image(
        &[
            "pull",
            &reference,
            "--insecure-registry",
            &open.addr,
            "--name",
            "again",
        ],
        None,
    );
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("already here") && !err.contains(" fetched"),
        "{err}"
    );
    // Plain HTTP only when asked.
    let (ok, _, err) = image(&["pull", &reference, "--name", "tls"], None);
    assert!(!ok && err.contains("error:"), "{err}");

    let private = Registry::start(&dir.path().join("private"), Some(("ops", "pull-secret"))).await;
    let auth = oci_client::secrets::RegistryAuth::Basic("ops".into(), "pull-secret".into());
    private.push("team/secret", "v1", &[files], &auth).await;
    let reference = format!("{}/team/secret:v1", private.addr);
    let (ok, _, err) = image(
        &["pull", &reference, "--insecure-registry", &private.addr],
        None,
    );
    assert!(!ok && err.to_lowercase().contains("authoriz"), "{err}");
    let (ok, out, err) = image(
        &[
            "pull",
            &reference,
            "--insecure-registry",
            &private.addr,
            "--username",
            "ops",
        ],
        Some("pull-secret\n"),
    );
    assert!(ok, "{out}{err}");
}
