//! The containers API at `/compute`, on simulated hosts: the seed walked as
//! a user would, its limits under racing requests, token grants, errors,
//! shared-CPU and exclusive instances on one host, architectures, and the
//! status and terminal WebSockets.

use crate::harness::{
    AgentProcess, Backend, KEY, Options, TOKEN, TestServer, eventually, join_token,
};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use tessera_core::CpuSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

crate::on_both_backends!(
    a_container_lives_its_whole_life_through_the_seed,
    limits_hold_under_racing_requests,
    token_grants_reach_only_what_they_name,
    bad_requests_are_clear_and_change_nothing,
    shared_and_exclusive_cpus_share_a_host_without_overlap,
    the_status_socket_streams_every_change,
    the_terminal_socket_runs_a_shell,
    a_remote_agents_container_has_a_terminal_through_its_channel,
    the_gateway_follows_the_rules_and_says_why_it_cannot_route,
    a_terminal_asked_of_another_replica_is_relayed_to_the_agents,
    a_terminal_closes_once_its_token_is_revoked,
    a_container_started_again_is_answered_pending
);

/// Registers a pooled simulated server of an architecture and waits for
/// it.
async fn add_server_arch(server: &TestServer, hostname: &str, cpus: &str, arch: &str) {
    let (status, op) = server
        .call(
            Method::POST,
            "/v1/servers/create",
            Some(&json!({"hostname": hostname, "ip_address": "192.0.2.30", "zone": "fin-01", "cpus": cpus, "arch": arch})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let op = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(op["status"], "completed", "{op}");
}

pub(crate) async fn compute(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| b.to_string());
    server
        .request(
            method,
            &format!("/compute{path}"),
            body.as_deref(),
            Some(TOKEN),
        )
        .await
}

async fn add_key(server: &TestServer, name: &str) -> i64 {
    let (status, key) = compute(
        server,
        Method::POST,
        "/ssh-keys",
        Some(json!({"name": name, "public_key": KEY})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    key["id"].as_i64().expect("integer id")
}

pub(crate) async fn wait_status(server: &TestServer, id: &str, status: &str) -> Value {
    wait_status_within(server, id, status, Duration::from_secs(15)).await
}

/// [`wait_status`] for up to `within`.
pub(crate) async fn wait_status_within(
    server: &TestServer,
    id: &str,
    status: &str,
    within: Duration,
) -> Value {
    eventually(within, &format!("{id} {status}"), || async {
        let (code, container) =
            compute(server, Method::GET, &format!("/containers/{id}"), None).await;
        (code == StatusCode::OK && container["status"] == status).then_some(container)
    })
    .await
}

async fn a_container_lives_its_whole_life_through_the_seed(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-3", "fin-01").await;
    let key = add_key(&server, "laptop").await;
    assert_eq!(key, 1, "the first key is id 1");
    let (status, keys) = compute(&server, Method::GET, "/ssh-keys", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys["ssh_keys"][0]["name"], "laptop");
    // Created pending, as the console sends it (enable_ssh, ingress_rules,
    // an unknown field).
    let (status, created) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({
            "name": "my-app", "instance_type": "tiny", "ssh_key_ids": [key],
            "enable_ssh": true, "ingress_rules": [{"port": 8080, "target_port": 3000}],
            "pull_policy": "IfNotPresent"
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(id.len(), 8);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    assert!(
        matches!(
            created["status"].as_str(),
            Some("pending" | "initializing" | "running")
        ),
        "{created}"
    );
    assert_eq!(created["memory_mb"], 512);
    assert_eq!(created["storage_gb"], 5);
    assert_eq!(created["ssh_enabled"], true);
    assert_eq!(created["mount_paths"], json!(["/root"]));
    assert_eq!(created["hostname"], format!("{id}.compute.localhost"));
    assert_ne!(created["created_at"], "0001-01-01T00:00:00Z");
    // Verda shows it at its compute type's price (it showed 0).
    let verda = crate::verda::Verda::login(&server, "default").await;
    let tiny = tessera_core::catalog::Catalog::built_in()
        .compute_type("tiny")
        .map(|t| t.price_per_hour)
        .expect("tiny");
    assert!(tiny > 0.0);
    assert_eq!(
        verda.get(&format!("/instances/{id}")).await["price_per_hour"],
        tiny
    );
    let running = wait_status(&server, &id, "running").await;
    // A simulated host forwards no real SSH server; where one does, the
    // command names its port (the data-plane test SSHes in with it).
    assert!(
        running["ssh_command"]
            .as_str()
            .is_none_or(|c| c.starts_with("ssh -p ")),
        "{running}"
    );
    // It is an instance of the project too.
    let instance = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(instance["spec"]["type"], "tiny");
    assert_eq!(instance["status"]["state"], "running");
    // And on the Verda face, as far as its shape goes.
    let verda = crate::verda::Verda::login(&server, "default").await;
    let seen = verda.get(&format!("/instances/{id}")).await;
    assert_eq!(seen["id"], json!(id), "{seen}");
    assert_eq!(seen["instance_type"], "tiny", "{seen}");
    assert_eq!(seen["status"], "running", "{seen}");
    let (_, list) = compute(&server, Method::GET, "/containers", None).await;
    assert_eq!(list["containers"][0]["id"], json!(id));
    // SSH off, then on.
    let path = format!("/containers/{id}/ssh");
    let (status, ssh) = compute(
        &server,
        Method::PUT,
        &path,
        Some(json!({"ssh_enabled": false})),
    )
    .await;
    assert_eq!(
        (status, ssh),
        (StatusCode::OK, json!({"ssh_enabled": false}))
    );
    let (_, ssh) = compute(&server, Method::GET, &path, None).await;
    assert_eq!(ssh, json!({"ssh_enabled": false}));
    let (_, shown) = compute(&server, Method::GET, &format!("/containers/{id}"), None).await;
    assert!(shown.get("ssh_command").is_none(), "{shown}");
    compute(
        &server,
        Method::PUT,
        &path,
        Some(json!({"ssh_enabled": true})),
    )
    .await;
    // Ingress: the rule made with it, an upsert, 443 turns HTTPS on, a
    // removal (twice: no error).
    let ingress = format!("/containers/{id}/ingress");
    let (_, rules) = compute(&server, Method::GET, &ingress, None).await;
    assert_eq!(rules["rules"][0]["port"], 8080);
    assert_eq!(rules["rules"][0]["target_port"], 3000);
    assert!(
        rules["rules"][0]["created_at"].as_i64().is_some(),
        "unix seconds"
    );
    let (status, rule) = compute(
        &server,
        Method::POST,
        &ingress,
        Some(json!({"port": 443, "target_port": 8443})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    assert_eq!(rule["id"], 2);
    let (_, shown) = compute(&server, Method::GET, &format!("/containers/{id}"), None).await;
    assert_eq!(shown["https_enabled"], true);
    let (status, rule) =
        compute(&server, Method::POST, &ingress, Some(json!({"port": 8080}))).await;
    assert_eq!(
        (status, &rule["id"], &rule["target_port"]),
        (StatusCode::OK, &json!(1), &json!(8080))
    );
    for _ in 0..2 {
        let (status, body) =
            compute(&server, Method::DELETE, &format!("{ingress}/443"), None).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    }
    let (_, shown) = compute(&server, Method::GET, &format!("/containers/{id}"), None).await;
    assert_eq!(shown["https_enabled"], false);
    // A number is never given twice: 443's 2 stays gone.
    let (status, rule) =
        compute(&server, Method::POST, &ingress, Some(json!({"port": 8001}))).await;
    assert_eq!((status, &rule["id"]), (StatusCode::OK, &json!(3)), "{rule}");
    let (status, _) = compute(&server, Method::DELETE, &format!("{ingress}/8001"), None).await;
    assert_eq!(status, StatusCode::OK);
    // Mounts: a running container restarts to take them.
    let mounts = format!("/containers/{id}/mounts");
    let (status, changed) = compute(
        &server,
        Method::PUT,
        &mounts,
        Some(json!({"mount_paths": ["/root", "/var/data"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        changed,
        json!({"mount_paths": ["/root", "/var/data"], "restarted": true})
    );
    let (_, now) = compute(&server, Method::GET, &mounts, None).await;
    assert_eq!(now, json!({"mount_paths": ["/root", "/var/data"]}));
    wait_status(&server, &id, "running").await;
    // Stop, stop again (unchanged), start.
    let (status, stopped) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(
        (status, &stopped["status"]),
        (StatusCode::OK, &json!("stopped")),
        "{stopped}"
    );
    let (status, again) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(
        (status, &again["status"]),
        (StatusCode::OK, &json!("stopped"))
    );
    let (status, _) = compute(
        &server,
        Method::PUT,
        &mounts,
        Some(json!({"mount_paths": ["/root"]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/start"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_ne!(started["status"], "stopped", "{started}");
    wait_status(&server, &id, "running").await;
    let (_, again) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/start"),
        None,
    )
    .await;
    assert_eq!(
        again["status"], "running",
        "start on a running container changes nothing"
    );
    // Delete: gone from the API, terminated in the native one.
    let (status, body) = compute(&server, Method::DELETE, &format!("/containers/{id}"), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    eventually(Duration::from_secs(10), "the container is gone", || async {
        let (status, _) = compute(&server, Method::GET, &format!("/containers/{id}"), None).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let (_, list) = compute(&server, Method::GET, "/containers", None).await;
    assert_eq!(list, json!({"containers": []}));
    let instance = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(instance["status"]["state"], "terminated");
    // The key goes too.
    let (status, _) = compute(&server, Method::DELETE, "/ssh-keys/1", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = compute(&server, Method::DELETE, "/ssh-keys/1", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Its number is not given again: an id a client kept never names a
    // newer key (upstream's serial ids are never reused either).
    assert_eq!(add_key(&server, "laptop-2").await, 2);
    server.stop().await;
}

async fn limits_hold_under_racing_requests(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-63", "fin-01").await;
    let key = add_key(&server, "k0").await;
    // 50 racing creates: three containers, the rest the document's 400.
    let creates = (0..50).map(|i| {
        let server = &server;
        async move {
            compute(
                server,
                Method::POST,
                "/containers",
                Some(json!({"name": format!("c{i}"), "instance_type": "tiny", "ssh_key_ids": [key], "memory_mb": 128})),
            )
            .await
        }
    });
    let answers = futures::future::join_all(creates).await;
    let made = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    assert_eq!(made, 3, "{answers:?}");
    for (status, body) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert_eq!(*status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "container limit reached (3)", "{body}");
    }
    let (_, list) = compute(&server, Method::GET, "/containers", None).await;
    assert_eq!(list["containers"].as_array().map(Vec::len), Some(3));
    // Keys: ten, racing for the last places; the eleventh is refused.
    let adds = (1..20).map(|i| {
        let server = &server;
        async move {
            compute(
                server,
                Method::POST,
                "/ssh-keys",
                Some(json!({"name": format!("k{i}"), "public_key": KEY})),
            )
            .await
        }
    });
    let answers = futures::future::join_all(adds).await;
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == StatusCode::OK).count(),
        9
    );
    let refused: Vec<_> = answers
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .collect();
    assert!(
        refused
            .iter()
            .all(|(s, b)| *s == StatusCode::BAD_REQUEST
                && b["error"] == "SSH key limit reached (10)"),
        "{refused:?}"
    );
    let (_, keys) = compute(&server, Method::GET, "/ssh-keys", None).await;
    let ids: HashSet<i64> = keys["ssh_keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["id"].as_i64())
        .collect();
    assert_eq!(ids, (1..=10).collect(), "ids are 1 to 10, none twice");
    // The limits are the project's quota, which an admin may raise.
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/workspaces/default/quota",
            Some(&json!({"containers": 4})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "fourth", "instance_type": "tiny", "ssh_key_ids": [key], "memory_mb": 128})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Racing changes to one container wait for one another: stops, starts,
    // ingress rules and deletes sent at once all succeed, none a 409 or 500.
    let id = body["id"].as_str().expect("id").to_string();
    wait_status(&server, &id, "running").await;
    let at_once = |method: Method, path: String, body: Option<Value>, n: usize| {
        let server = &server;
        futures::future::join_all((0..n).map(move |_| {
            let (method, path, body) = (method.clone(), path.clone(), body.clone());
            async move { compute(server, method, &path, body).await }
        }))
    };
    for action in ["stop", "start"] {
        let answers = at_once(Method::POST, format!("/containers/{id}/{action}"), None, 4).await;
        assert!(
            answers.iter().all(|(s, _)| *s == StatusCode::OK),
            "{action}: {answers:?}"
        );
    }
    wait_status(&server, &id, "running").await;
    // Mount changes sent together wait for one another's restart; one
    // sent with a stop stores its paths and leaves the container stopped
    // (they apply at its next start). Neither is a 409 after its paths
    // were stored.
    let mounts = format!("/containers/{id}/mounts");
    let changes = futures::future::join_all(["/a", "/b", "/c"].map(|path| {
        compute(
            &server,
            Method::PUT,
            &mounts,
            Some(json!({"mount_paths": [path]})),
        )
    }))
    .await;
    // (One that finds the container stopped halfway through another's
    // restart leaves it to that restart, which starts it with its paths.)
    assert!(
        changes.iter().all(|(s, _)| *s == StatusCode::OK)
            && changes.iter().any(|(_, b)| b["restarted"] == true),
        "{changes:?}"
    );
    let (_, now) = compute(&server, Method::GET, &mounts, None).await;
    wait_status(&server, &id, "running").await;
    let (change, stop) = futures::future::join(
        compute(
            &server,
            Method::PUT,
            &mounts,
            Some(json!({"mount_paths": ["/d"]})),
        ),
        compute(
            &server,
            Method::POST,
            &format!("/containers/{id}/stop"),
            None,
        ),
    )
    .await;
    assert_eq!(change.0, StatusCode::OK, "{change:?} (before: {now})");
    assert_eq!(stop.0, StatusCode::OK, "{stop:?}");
    let (_, now) = compute(&server, Method::GET, &mounts, None).await;
    assert_eq!(now, json!({"mount_paths": ["/d"]}));
    let (status, _) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/start"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    wait_status(&server, &id, "running").await;
    let ingress = format!("/containers/{id}/ingress");
    let (puts, deletes) = futures::future::join(
        at_once(
            Method::POST,
            ingress.clone(),
            Some(json!({"port": 8123})),
            4,
        ),
        at_once(Method::DELETE, format!("{ingress}/8123"), None, 4),
    )
    .await;
    assert!(
        puts.iter().chain(&deletes).all(|(s, _)| s.is_success()),
        "{puts:?} {deletes:?}"
    );
    // Deletes: done, or (once it is gone) not found; never a conflict.
    let answers = at_once(Method::DELETE, format!("/containers/{id}"), None, 4).await;
    assert!(
        answers
            .iter()
            .all(|(s, b)| (*s == StatusCode::OK && b["status"] == "ok")
                || *s == StatusCode::NOT_FOUND),
        "{answers:?}"
    );
    assert!(
        answers.iter().any(|(s, _)| *s == StatusCode::OK),
        "{answers:?}"
    );
    server.stop().await;
}

/// An API token of the admin limited to `grants`.
async fn token_with(server: &TestServer, grants: Value) -> String {
    let (status, me) = server.call(Method::GET, "/v1/users", None, TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    let admin = me
        .as_array()
        .and_then(|users| users.iter().find(|u| u["username"] == "admin"))
        .and_then(|u| u["id"].as_str())
        .expect("the admin user")
        .to_string();
    let grants =
        serde_json::from_str::<Value>(&grants.to_string().replace("{uid}", &admin)).expect("json");
    let (status, token) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "limited", "compute_scopes": grants})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    token["token"].as_str().expect("secret").to_string()
}

async fn as_token(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> StatusCode {
    let body = body.map(|b| b.to_string());
    server
        .request(
            method,
            &format!("/compute{path}"),
            body.as_deref(),
            Some(token),
        )
        .await
        .0
}

async fn token_grants_reach_only_what_they_name(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    let key = add_key(&server, "k").await;
    let (_, a) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "a", "instance_type": "tiny", "ssh_key_ids": [key]})),
    )
    .await;
    let (_, b) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "b", "instance_type": "tiny", "ssh_key_ids": [key]})),
    )
    .await;
    let (a, b) = (a["id"].as_str().expect("a"), b["id"].as_str().expect("b"));
    wait_status(&server, a, "running").await;
    wait_status(&server, b, "running").await;
    // Read on the list only: no create, no keys.
    let reader = token_with(&server, json!({"compute.{uid}.containers": ["read"]})).await;
    let (status, spare) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "spare"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{spare}");
    let spare = spare["id"].as_str().expect("id").to_string();
    // Grants on this API alone reach nothing on the others: not the
    // instances, not a stop, not a new token, not the user's other tokens.
    for (method, path, body) in [
        (Method::GET, "/v1/instances".to_string(), None),
        (Method::POST, format!("/v1/instances/{a}/stop"), None),
        (
            Method::POST,
            "/v1/tokens".to_string(),
            Some(json!({"name": "child"}).to_string()),
        ),
        (Method::GET, "/v1/tokens".to_string(), None),
        (Method::DELETE, format!("/v1/tokens/{spare}"), None),
    ] {
        let (status, body) = server
            .request(method.clone(), &path, body.as_deref(), Some(&reader))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
    }
    let (_, tokens) = server.call(Method::GET, "/v1/tokens", None, TOKEN).await;
    assert!(
        tokens.as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["id"] == spare.as_str() && t["revoked_at"].is_null())),
        "{tokens}"
    );
    assert_eq!(
        as_token(&server, &reader, Method::GET, "/containers", None).await,
        StatusCode::OK
    );
    assert_eq!(
        as_token(
            &server,
            &reader,
            Method::GET,
            &format!("/containers/{a}"),
            None
        )
        .await,
        StatusCode::OK
    );
    let create = json!({"name": "c", "instance_type": "tiny", "ssh_key_ids": [key]});
    assert_eq!(
        as_token(
            &server,
            &reader,
            Method::POST,
            "/containers",
            Some(create.clone())
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_token(
            &server,
            &reader,
            Method::POST,
            &format!("/containers/{a}/stop"),
            None
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_token(&server, &reader, Method::GET, "/ssh-keys", None).await,
        StatusCode::FORBIDDEN
    );
    // One container, every action: the other is out of reach.
    let one = token_with(
        &server,
        json!({format!("compute.{{uid}}.containers.{a}"): ["read", "update", "delete"]}),
    )
    .await;
    assert_eq!(
        as_token(
            &server,
            &one,
            Method::GET,
            &format!("/containers/{a}/ssh"),
            None
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        as_token(
            &server,
            &one,
            Method::GET,
            &format!("/containers/{b}"),
            None
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_token(
            &server,
            &one,
            Method::DELETE,
            &format!("/containers/{b}"),
            None
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_token(&server, &one, Method::GET, "/containers", None).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        as_token(
            &server,
            &one,
            Method::POST,
            &format!("/containers/{a}/stop"),
            None
        )
        .await,
        StatusCode::OK
    );
    // Keys: create but not delete.
    let keys = token_with(&server, json!({"compute.{uid}.keys": ["read", "create"]})).await;
    assert_eq!(
        as_token(
            &server,
            &keys,
            Method::POST,
            "/ssh-keys",
            Some(json!({"name": "k2", "public_key": KEY}))
        )
        .await,
        StatusCode::OK
    );
    assert_eq!(
        as_token(&server, &keys, Method::DELETE, "/ssh-keys/1", None).await,
        StatusCode::FORBIDDEN
    );
    // A grant on the user covers everything under it.
    let all = token_with(
        &server,
        json!({"compute.{uid}": ["read", "create", "update", "delete"]}),
    )
    .await;
    assert_eq!(
        as_token(&server, &all, Method::POST, "/containers", Some(create)).await,
        StatusCode::OK
    );
    assert_eq!(
        as_token(
            &server,
            &all,
            Method::DELETE,
            &format!("/containers/{b}"),
            None
        )
        .await,
        StatusCode::OK
    );
    // A read grant on the whole API opens the status socket, whose feed
    // reads the credential as this API does.
    let watcher = token_with(&server, json!({"compute.{uid}": ["read"]})).await;
    let mut ws = socket(&server, &format!("/compute/ws?token={watcher}"), None).await;
    let list = next_json(&mut ws).await.expect("the list");
    assert_eq!(list["type"], "containers", "{list}");
    drop(ws);
    // Grants must be the token user's own and read as grants.
    for bad in [
        json!({"compute.someone-else": ["read"]}),
        json!({"compute.{uid}": ["explode"]}),
        json!({"storage.{uid}": ["read"]}),
    ] {
        let (status, _) = server
            .call(
                Method::POST,
                "/v1/tokens",
                Some(&json!({"name": "bad", "compute_scopes": bad})),
                TOKEN,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    server.stop().await;
}

async fn bad_requests_are_clear_and_change_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    let key = add_key(&server, "k").await;
    // The sockets' queries are checked in the API's error format too.
    for path in [
        "/ws?token=a&token=b",
        "/containers/x/terminal?token=a&token=b",
    ] {
        let (status, body) = compute(&server, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("invalid query")),
            "{path}: {body}"
        );
    }
    let bad_creates = [
        (
            json!({"instance_type": "tiny", "ssh_key_ids": [key]}),
            "name",
        ),
        // A value is quoted in a message once, escaped once.
        (
            json!({"name": "x", "instance_type": "huge\u{0}", "ssh_key_ids": [key]}),
            "unknown instance_type \"huge\\0\";",
        ),
        (json!({"name": "x", "instance_type": "tiny"}), "ssh_key_ids"),
        // Its host name, read as an option by hostname(1).
        (
            json!({"name": "-lead", "instance_type": "tiny", "ssh_key_ids": [key]}),
            "starting with a letter or digit",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": []}),
            "ssh",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": [99]}),
            "99",
        ),
        // A value of the wrong type names its field.
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": ["1"]}),
            "ssh_key_ids[0]: invalid type",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": [key], "memory_mb": "big"}),
            "memory_mb: invalid type",
        ),
        (
            json!({"name": "x", "instance_type": "huge", "ssh_key_ids": [key]}),
            "huge",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": [key], "memory_mb": 64}),
            "memory_mb",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": [key], "storage_gb": 1000}),
            "storage_gb",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": [key], "mount_paths": ["/"]}),
            "/",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": [key], "mount_paths": ["/a", "/a/b"]}),
            "collide",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": [key], "mount_paths": ["relative"]}),
            "absolute",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": [key], "ingress_rules": [{"port": 22}]}),
            "22",
        ),
        (
            json!({"name": "x", "instance_type": "tiny", "ssh_key_ids": [key], "image": "windows"}),
            "windows",
        ),
        // No arm64 host: the default `nano` fails at once, saying why.
        (json!({"name": "x", "ssh_key_ids": [key]}), "arm64"),
        (
            json!({"name": "bad name!", "instance_type": "tiny", "ssh_key_ids": [key]}),
            "name",
        ),
    ];
    for (body, says) in bad_creates {
        let (status, answer) =
            compute(&server, Method::POST, "/containers", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(says)),
            "{body}: {answer}"
        );
    }
    let (_, list) = compute(&server, Method::GET, "/containers", None).await;
    assert_eq!(list, json!({"containers": []}), "nothing was made");
    let (status, answer) = server
        .request(
            Method::POST,
            "/compute/containers",
            Some("[1, 2"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, answer) = server
        .request(Method::GET, "/compute/containers", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
    assert!(answer["error"].is_string());
    let (status, _) = server
        .request(Method::GET, "/compute/containers", None, Some("tsr_wrong"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for path in [
        "/containers/deadbeef",
        "/containers/deadbeef/ssh",
        "/containers/deadbeef/mounts",
        "/nowhere",
    ] {
        let (status, answer) = compute(&server, Method::GET, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, _) = compute(&server, Method::DELETE, "/ssh-keys/not-a-number", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, answer) = compute(
        &server,
        Method::POST,
        "/ssh-keys",
        Some(json!({"name": "dsa", "public_key": "ssh-dss AAAAB3NzaC1kc3MAAACBAP"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    // Another workspace's container is a 404 everywhere.
    let (_, made) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "mine", "instance_type": "tiny", "ssh_key_ids": [key]})),
    )
    .await;
    let id = made["id"].as_str().expect("id");
    let outsider = server.user_in("olga", "member", "elsewhere").await;
    for (method, path) in [
        (Method::GET, format!("/compute/containers/{id}")),
        (Method::DELETE, format!("/compute/containers/{id}")),
        (Method::POST, format!("/compute/containers/{id}/stop")),
        (Method::GET, format!("/compute/containers/{id}/ingress")),
    ] {
        let (status, _) = server
            .request(method.clone(), &path, None, Some(&outsider))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
    }
    // A path or method the API lacks is named as the client sent it.
    let (status, body) = server
        .request(
            Method::PATCH,
            &format!("/compute/containers/{id}"),
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert_eq!(
        body["error"],
        format!("PATCH is not allowed on /compute/containers/{id}")
    );
    let (status, body) = server
        .request(Method::GET, "/compute/nothing", None, Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["error"],
        "GET /compute/nothing is not a path of this API"
    );
    server.stop().await;
}

async fn shared_and_exclusive_cpus_share_a_host_without_overlap(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_server_arch(&server, "arm-1", "0-3", "arm64").await;
    let key = add_key(&server, "k").await;
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/workspaces/default/quota",
            Some(&json!({"containers": 10})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Three half-CPU nanos and a 2-CPU mini on one 4-CPU arm64 host.
    let mut ids = Vec::new();
    for (name, kind) in [
        ("n1", "nano"),
        ("m1", "mini"),
        ("n2", "nano"),
        ("n3", "nano"),
    ] {
        let (status, made) = compute(&server, Method::POST, "/containers", Some(json!({"name": name, "instance_type": kind, "ssh_key_ids": [key], "memory_mb": 128}))).await;
        assert_eq!(status, StatusCode::OK, "{made}");
        let id = made["id"].as_str().expect("id").to_string();
        wait_status(&server, &id, "running").await;
        ids.push((kind, id));
    }
    let mut exclusive = CpuSet::new();
    let mut shared: Vec<CpuSet> = Vec::new();
    for (kind, id) in &ids {
        let instance = server.get_ok(&format!("/v1/instances/{id}")).await;
        let cpus =
            CpuSet::parse_list(instance["status"]["cpus"].as_str().expect("cpus")).expect("cpus");
        match *kind {
            "mini" => {
                assert_eq!(cpus.len(), 2);
                exclusive = cpus;
            }
            _ => {
                assert_eq!(cpus.len(), 1, "a nano runs on one shared CPU");
                shared.push(cpus);
            }
        }
    }
    for cpus in &shared {
        assert!(
            cpus.intersection(&exclusive).is_empty(),
            "a shared CPU is never an exclusive one"
        );
    }
    let distinct: HashSet<String> = shared.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        distinct.len(),
        2,
        "two halves share a CPU, the third takes another: {shared:?}"
    );
    // Every CPU is held now: an exclusive 1-CPU micro finds no room, and
    // fails saying so.
    let (status, made) = compute(&server, Method::POST, "/containers", Some(json!({"name": "full", "instance_type": "micro", "ssh_key_ids": [key], "memory_mb": 128}))).await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let failed = wait_status(&server, made["id"].as_str().expect("id"), "failed").await;
    assert!(
        failed["status_reason"]
            .as_str()
            .is_some_and(|r| r.contains("CPU")),
        "{failed}"
    );
    // Never made: there is nothing to start, and a start says so.
    let (status, body) = compute(
        &server,
        Method::POST,
        &format!("/containers/{}/start", made["id"].as_str().expect("id")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("create it again")),
        "{body}"
    );
    // A nano still fits beside the lone half.
    let (_, made) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(
            json!({"name": "n4", "instance_type": "nano", "ssh_key_ids": [key], "memory_mb": 128}),
        ),
    )
    .await;
    let n4 = made["id"].as_str().expect("id").to_string();
    wait_status(&server, &n4, "running").await;
    let beside = server.get_ok(&format!("/v1/instances/{n4}")).await;
    assert_eq!(
        beside["status"]["cpus"],
        shared[2].to_string(),
        "n4 shares n3's CPU"
    );
    // A shared CPU is whole again only when its last share goes: with n3
    // deleted, n4 still holds half of it and a micro still finds no room;
    // with n4 deleted too, a micro runs there.
    let micro = |name: &'static str| {
        let server = &server;
        async move {
            let (status, made) = compute(server, Method::POST, "/containers", Some(json!({"name": name, "instance_type": "micro", "ssh_key_ids": [key], "memory_mb": 128}))).await;
            assert_eq!(status, StatusCode::OK, "{made}");
            made["id"].as_str().expect("id").to_string()
        }
    };
    let n3 = ids[3].1.clone();
    for (gone, then) in [(n3, "failed"), (n4, "running")] {
        let (status, body) = compute(
            &server,
            Method::DELETE,
            &format!("/containers/{gone}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        eventually(Duration::from_secs(10), "the nano is gone", || async {
            let (status, _) =
                compute(&server, Method::GET, &format!("/containers/{gone}"), None).await;
            (status == StatusCode::NOT_FOUND).then_some(())
        })
        .await;
        let id = micro(if then == "failed" {
            "micro-1"
        } else {
            "micro-2"
        })
        .await;
        let ended = wait_status(&server, &id, then).await;
        assert!(
            then == "running"
                || ended["status_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("CPU")),
            "{ended}"
        );
    }
    // amd64 types find no host of theirs.
    let (status, answer) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "x86", "instance_type": "small", "ssh_key_ids": [key]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("amd64")),
        "{answer}"
    );
    server.stop().await;
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn socket(server: &TestServer, path: &str, protocol: Option<&str>) -> Socket {
    try_socket(server, path, protocol).await.expect("connect")
}

/// A WebSocket to `path`, or why the server refused the upgrade.
pub(crate) async fn try_socket(
    server: &TestServer,
    path: &str,
    protocol: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let url = server.url.replacen("http", "ws", 1) + path;
    let mut request = url.as_str().into_client_request().expect("request");
    if let Some(protocol) = protocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().expect("header"));
    }
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(socket)
}

pub(crate) async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).ok();
        }
    }
}

/// The statuses the socket tells of container `id`, up to `last`.
async fn statuses_until(ws: &mut Socket, id: &str, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(message) = next_json(ws).await {
        if message["type"] == "container_status" && message["data"]["container_id"] == json!(id) {
            let status = message["data"]["status"].as_str().unwrap_or("").to_string();
            let done = status == last;
            seen.push(status);
            if done {
                break;
            }
        }
    }
    seen
}

async fn the_status_socket_streams_every_change(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    let key = add_key(&server, "k").await;
    let (_, first) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "first", "instance_type": "tiny", "ssh_key_ids": [key]})),
    )
    .await;
    let first = first["id"].as_str().expect("id").to_string();
    wait_status(&server, &first, "running").await;
    // A browser page of another site may not open it.
    let url = server.url.replacen("http", "ws", 1) + &format!("/compute/ws?token={TOKEN}");
    let mut foreign = url.as_str().into_client_request().expect("request");
    foreign
        .headers_mut()
        .insert("origin", "https://evil.example".parse().expect("header"));
    assert!(
        tokio_tungstenite::connect_async(foreign).await.is_err(),
        "a foreign origin is refused"
    );
    let mut ws = socket(&server, &format!("/compute/ws?token={TOKEN}"), None).await;
    let list = next_json(&mut ws).await.expect("the list");
    assert_eq!(list["type"], "containers");
    assert_eq!(list["data"][0]["id"], json!(first));
    assert_eq!(list["data"][0]["status"], "running");
    assert_eq!(
        list["data"][0]["instance_type"], "tiny",
        "full container objects"
    );
    // What a client sends is dropped, and no large message is taken: a
    // socket sent one is closed.
    let mut big = socket(&server, &format!("/compute/ws?token={TOKEN}"), None).await;
    next_json(&mut big).await.expect("the list");
    big.send(Message::Text("x".repeat(64 * 1024).into()))
        .await
        .expect("sent");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match big.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a 64 KiB message ends the socket");
    let (_, second) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "second", "instance_type": "tiny", "ssh_key_ids": [key]})),
    )
    .await;
    let second = second["id"].as_str().expect("id").to_string();
    // Each change once, in order, from pending to running (on simulated
    // hosts the states between may pass before they are read: a frame
    // then says what the change was, never the same thing twice).
    let seen = statuses_until(&mut ws, &second, "running").await;
    assert_eq!(
        seen.first().map(String::as_str),
        Some("pending"),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("running"), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    let (status, _) = compute(
        &server,
        Method::POST,
        &format!("/containers/{second}/stop"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        statuses_until(&mut ws, &second, "stopped").await,
        ["stopped"]
    );
    compute(
        &server,
        Method::DELETE,
        &format!("/containers/{first}"),
        None,
    )
    .await;
    // The next frame is the deletion: the stop was told once.
    let next = next_json(&mut ws).await.expect("a frame");
    assert_eq!(next["type"], "container_deleted", "{next}");
    assert_eq!(next["data"]["container_id"], json!(first), "{next}");
    server.stop().await;
}

async fn the_terminal_socket_runs_a_shell(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    let key = add_key(&server, "k").await;
    let id = running_container(&server, "t", key).await;
    let mut term = socket(
        &server,
        &format!("/compute/containers/{id}/terminal?token={TOKEN}"),
        Some("tessera.terminal.v1"),
    )
    .await;
    term.send(Message::Binary(
        b"echo hello-from-the-terminal\n".to_vec().into(),
    ))
    .await
    .expect("send");
    term.send(Message::Text(
        r#"{"resize": {"cols": 100, "rows": 30}}"#.into(),
    ))
    .await
    .expect("resize");
    term.send(Message::Binary(b"exit 3\n".to_vec().into()))
        .await
        .expect("send");
    let mut output = Vec::new();
    let mut exit = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(10), term.next()).await
    {
        match message {
            Message::Binary(bytes) => output.extend_from_slice(&bytes),
            Message::Text(text) => exit = serde_json::from_str::<Value>(&text).ok(),
            Message::Close(_) => break,
            _ => {}
        }
    }
    let output = String::from_utf8_lossy(&output);
    assert!(output.contains("hello-from-the-terminal"), "{output}");
    assert_eq!(exit, Some(json!({"exit": 3})), "{output}");
    // Eight terminals at once, not nine; a closed one frees its place.
    let path = format!("/compute/containers/{id}/terminal?token={TOKEN}");
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(socket(&server, &path, None).await);
    }
    assert!(
        try_socket(&server, &path, None).await.is_err(),
        "a ninth terminal is refused"
    );
    let mut closed = open.pop().expect("one");
    closed.close(None).await.expect("close");
    drop(closed);
    eventually(Duration::from_secs(5), "a place frees", || async {
        try_socket(&server, &path, None).await.ok()
    })
    .await;
    drop(open);
    // A stopped container has no terminal.
    compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/stop"),
        None,
    )
    .await;
    let (status, answer) = server
        .request(
            Method::GET,
            &format!("/compute/containers/{id}/terminal"),
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "container not running");
    server.stop().await;
}

/// A `tiny` container named `name` with key `key`, once it runs; its id.
async fn running_container(server: &TestServer, name: &str, key: i64) -> String {
    let (_, made) = compute(
        server,
        Method::POST,
        "/containers",
        Some(json!({"name": name, "instance_type": "tiny", "ssh_key_ids": [key]})),
    )
    .await;
    let id = made["id"].as_str().expect("id").to_string();
    wait_status(server, &id, "running").await;
    id
}

/// A start answers `pending`, as the seed's does, while its host makes the
/// container again (here a host that never finishes a start), not
/// `initializing`; a start of a running container answers `running`.
async fn a_container_started_again_is_answered_pending(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["start:slow-:hang"],
            agent_timeout: Duration::from_secs(2),
            ..Options::default()
        },
    )
    .await;
    server.add_server("slow-1", "0-3", "fin-01").await;
    let key = add_key(&server, "laptop").await;
    let id = running_container(&server, "app", key).await;
    let (_, running) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/start"),
        None,
    )
    .await;
    assert_eq!(running["status"], "running", "{running}");
    let (status, _) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    wait_status(&server, &id, "stopped").await;
    let (status, started) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/start"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["status"], "pending", "{started}");
    // A delete sent while that start is under way waits for it to end,
    // then deletes: not a 409 for a change the caller just asked for.
    let (status, body) = compute(&server, Method::DELETE, &format!("/containers/{id}"), None).await;
    assert_eq!(
        (status, &body),
        (StatusCode::OK, &json!({"status": "ok"})),
        "{body}"
    );
}

/// Sends `echo MARKER` into a terminal and reads until it answers.
async fn echoes(term: &mut Socket, marker: &str) {
    term.send(Message::Binary(
        format!("echo {marker}\n").into_bytes().into(),
    ))
    .await
    .expect("send");
    let mut output = Vec::new();
    while !String::from_utf8_lossy(&output).contains(marker) {
        match tokio::time::timeout(Duration::from_secs(10), term.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => output.extend_from_slice(&bytes),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => {
                panic!("the terminal closed: {}", String::from_utf8_lossy(&output))
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no output: {other:?}"),
        }
    }
}

/// A terminal asks again, while open, whether its credential still holds:
/// revoking the token that opened it closes it (at the next check, within
/// 15 s), as the status stream opened with it is cut off, both saying why.
async fn a_terminal_closes_once_its_token_is_revoked(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    let key = add_key(&server, "k").await;
    let id = running_container(&server, "t", key).await;
    // A member logged in, with a second workspace, opens one too, then
    // makes the other workspace active: her terminal stays, in its own.
    let tina = server.user_in("tina", "member", "default").await;
    server.user_in("other-admin", "admin", "other").await;
    let (_, users) = server.call(Method::GET, "/v1/users", None, TOKEN).await;
    let tina_id = users
        .as_array()
        .and_then(|u| u.iter().find(|u| u["username"] == "tina"))
        .and_then(|u| u["id"].as_str())
        .expect("tina")
        .to_string();
    let (status, body) = server
        .call(
            Method::PATCH,
            &format!("/v1/users/{tina_id}"),
            Some(&json!({"workspace": "other", "role": "member"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut hers = socket(
        &server,
        &format!("/compute/containers/{id}/terminal?token={tina}"),
        None,
    )
    .await;
    let (status, body) = server
        .call(Method::POST, "/v1/workspaces/other/activate", None, &tina)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, token) = server
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "terminal"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let secret = token["token"].as_str().expect("secret");
    let mut term = socket(
        &server,
        &format!("/compute/containers/{id}/terminal?token={secret}"),
        None,
    )
    .await;
    echoes(&mut term, "still-here").await;
    // The status stream opened with it ends too, saying why.
    let mut status_stream = socket(&server, &format!("/compute/ws?token={secret}"), None).await;
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{}", token["id"].as_str().expect("id")),
            None,
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (said, closed) = until_closed(
        &mut term,
        "the terminal stayed open after its token was revoked",
    )
    .await;
    assert!(said.contains("no longer allows"), "{said:?}");
    assert!(
        closed.is_some_and(|f| f.reason.contains("no longer allows")),
        "{said:?}"
    );
    let ended = until_closed(
        &mut status_stream,
        "the status stream stayed open after its token was revoked",
    )
    .await
    .1
    .expect("a close frame");
    assert_eq!(u16::from(ended.code), 1008, "{ended:?}");
    assert!(ended.reason.contains("no longer allows"), "{ended:?}");
    // Tina's, opened first, has been checked again by now, and answers.
    echoes(&mut hers, "hers-still").await;
    // A terminal ends with its container, saying so (a simulated host's
    // shell outlives the stop; a real one's dies with the container).
    let (status, stopped) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    let ended = until_closed(
        &mut hers,
        "the terminal stayed open after its container stopped",
    )
    .await
    .1
    .expect("a close frame");
    assert!(ended.reason.contains("no longer running"), "{ended:?}");
    server.stop().await;
}

/// Reads `socket` until it ends, each message within 40 s (else panics
/// with `stayed_open`): the text it sent on the way, and its close frame
/// if it sent one.
async fn until_closed(
    socket: &mut Socket,
    stayed_open: &str,
) -> (
    String,
    Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) {
    let mut said = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(40), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => said.push_str(text.as_str()),
            Ok(Some(Ok(Message::Close(frame)))) => return (said, frame),
            Ok(Some(Ok(_))) => {}
            Ok(None) | Ok(Some(Err(_))) => return (said, None),
            Err(_) => panic!("{stayed_open}"),
        }
    }
}

/// Runs `exit`-terminated input through a terminal socket; answers its
/// output and exit frame.
pub(crate) async fn run_in_terminal(
    server: &TestServer,
    id: &str,
    input: &[u8],
) -> (String, Option<Value>) {
    try_run_in_terminal(server, id, input)
        .await
        .expect("the terminal opens")
}

/// [`run_in_terminal`], or `None` when the server refuses the terminal
/// (the container is not running).
pub(crate) async fn try_run_in_terminal(
    server: &TestServer,
    id: &str,
    input: &[u8],
) -> Option<(String, Option<Value>)> {
    let mut term = try_socket(
        server,
        &format!("/compute/containers/{id}/terminal?token={TOKEN}"),
        Some("tessera.terminal.v1"),
    )
    .await
    .ok()?;
    term.send(Message::Binary(input.to_vec().into()))
        .await
        .ok()?;
    let mut output = Vec::new();
    let mut exit = None;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(15), term.next()).await
    {
        match message {
            Message::Binary(bytes) => output.extend_from_slice(&bytes),
            Message::Text(text) => exit = serde_json::from_str::<Value>(&text).ok(),
            Message::Close(_) => break,
            _ => {}
        }
    }
    Some((String::from_utf8_lossy(&output).into_owned(), exit))
}

async fn a_remote_agents_container_has_a_terminal_through_its_channel(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_agent, id) = remote_container(&server, &server, "remote-1", dir.path(), "far").await;
    // The agent's control channel may still be dialling: try a few times.
    let (output, exit) = eventually(
        Duration::from_secs(20),
        "a terminal through the channel",
        || async {
            let (output, exit) = run_in_terminal(&server, &id, b"echo far-away\nexit 7\n").await;
            output.contains("far-away").then_some((output, exit))
        },
    )
    .await;
    assert_eq!(exit, Some(json!({"exit": 7})), "{output}");
    server.stop().await;
}

/// A request through the gateway's local port for external `port`.
async fn through_gateway(server: &TestServer, port: u16, host: &str) -> (StatusCode, Value) {
    let gateway = server.running.gateway.as_ref().expect("the gateway runs");
    let addr = gateway.gateway.local_addr(port).expect("the port is open");
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .header("host", host)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status();
    (status, response.json().await.expect("a JSON body"))
}

/// Over simulated hosts (whose addresses lead nowhere): rules made and
/// removed through the API open and close the gateway's ports within a
/// second, and every request it cannot route is a 502 that says why. The
/// data-plane test fetches real pages through it.
async fn the_gateway_follows_the_rules_and_says_why_it_cannot_route(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        crate::harness::Options {
            gateway: true,
            // Addresses beside the simulated host's own, which lead nowhere
            // either.
            vpc_pool: Some("192.0.2.64/26"),
            ..Default::default()
        },
    )
    .await;
    server.add_server("node-1", "0-3", "fin-01").await;
    let key = add_key(&server, "laptop").await;
    let (status, created) = compute(
        &server,
        Method::POST,
        "/containers",
        Some(json!({"name": "web", "instance_type": "tiny", "ssh_key_ids": [key]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    wait_status(&server, &id, "running").await;
    let gateway = &server.running.gateway.as_ref().expect("gateway").gateway;
    assert!(gateway.local_addr(8123).is_none(), "no rule uses 8123 yet");
    let host = format!("{id}.compute.localhost");

    // Without a rule, a container reads as one that does not exist (which
    // exist is not told to whoever asks, without a credential).
    let (status, known) = through_gateway(&server, 80, &host).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{known}");
    assert_eq!(known["reason"], "no_rule", "{known}");
    let (status, unknown) = through_gateway(&server, 80, "ffffffff.compute.localhost").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{unknown}");
    assert_eq!(
        unknown["error"]
            .as_str()
            .map(|e| e.replace("ffffffff", &id)),
        known["error"].as_str().map(str::to_string),
        "{unknown} {known}"
    );

    let (status, rule) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/ingress"),
        Some(json!({"port": 8123, "target_port": 3000})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{rule}");
    eventually(Duration::from_secs(1), "port 8123 opens", || async {
        gateway.local_addr(8123)
    })
    .await;
    // The simulated container's address answers nothing: the gateway says
    // it tried.
    let body = eventually(Duration::from_secs(1), "the rule applies", || async {
        let (status, body) = through_gateway(&server, 8123, &host).await;
        (status == StatusCode::BAD_GATEWAY && body["reason"] != "no_rule").then_some(body)
    })
    .await;
    assert_eq!(body["reason"], "container_unreachable", "{body}");

    let (status, _) = compute(
        &server,
        Method::POST,
        &format!("/containers/{id}/stop"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    wait_status(&server, &id, "stopped").await;
    // A second later the gateway knows (a probe sooner could wait out the
    // connect timeout to the old address).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = through_gateway(&server, 8123, &host).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["reason"], "not_running", "{body}");

    let (status, _) = compute(
        &server,
        Method::DELETE,
        &format!("/containers/{id}/ingress/8123"),
        None,
    )
    .await;
    assert!(status.is_success(), "{status}");
    eventually(Duration::from_secs(1), "port 8123 closes", || async {
        gateway.local_addr(8123).is_none().then_some(())
    })
    .await;
    server.stop().await;
}

/// Two replicas of one store; the agent's channel is at the first. A
/// terminal asked of the second is relayed through the store and the agent
/// dials the second back directly.
async fn a_terminal_asked_of_another_replica_is_relayed_to_the_agents(backend: Backend) {
    let database = crate::harness::SharedDatabase::new(backend).await;
    let replica = |url: String| async move {
        TestServer::start_with(
            backend,
            crate::harness::Options {
                database_url: Some(url),
                ..Default::default()
            },
        )
        .await
    };
    let first = replica(database.url.clone()).await;
    let second = replica(database.url.clone()).await;
    let (_agent, id) = remote_container(
        &first,
        &second,
        "remote-2",
        &database.dir.path().join("agent"),
        "relayed",
    )
    .await;
    let (output, exit) = eventually(
        Duration::from_secs(20),
        "a terminal through the other replica's channel",
        || async {
            let (output, exit) =
                run_in_terminal(&second, &id, b"echo relayed-here\nexit 3\n").await;
            output.contains("relayed-here").then_some((output, exit))
        },
    )
    .await;
    assert_eq!(exit, Some(json!({"exit": 3})), "{output}");
    second.stop().await;
    first.stop().await;
}

/// A `sim` agent for `hostname` joined to `joined`, and a running container
/// on it made through `via` (the same server, or another replica).
async fn remote_container(
    joined: &TestServer,
    via: &TestServer,
    hostname: &str,
    state: &std::path::Path,
    name: &str,
) -> (AgentProcess, String) {
    let token = join_token(&joined.url).await;
    let agent = AgentProcess::start(&joined.url, Some(&token), hostname, state, "sim", &[]);
    eventually(Duration::from_secs(20), "the remote host runs", || async {
        let servers = via.get_ok("/v1/servers").await;
        servers
            .as_array()?
            .iter()
            .any(|s| s["hostname"] == hostname && s["status"] == "running")
            .then_some(())
    })
    .await;
    let key = add_key(via, "k").await;
    let (status, made) = compute(
        via,
        Method::POST,
        "/containers",
        Some(json!({"name": name, "instance_type": "tiny", "ssh_key_ids": [key]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let id = made["id"].as_str().expect("id").to_string();
    wait_status(via, &id, "running").await;
    (agent, id)
}
