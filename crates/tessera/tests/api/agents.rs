//! `tessera agent` processes against one server: joining with a join
//! token, placement across their hosts, a host lost (agent killed) and
//! found again, and the protocol's refusals. The agents use the `sim`
//! driver, so these run anywhere; `dataplane.rs` runs the real drivers.

use crate::harness::{
    AgentProcess, Backend, Options, TOKEN, TestServer, eventually, fresh_postgres_database,
    join_token, unit_request,
};
use crate::on_both_backends;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

on_both_backends!(
    a_stopping_server_does_not_wait_for_its_agents_channels,
    agents_join_share_the_load_and_survive_a_lost_host,
    join_tokens_are_checked_and_agents_authenticated,
    a_server_registered_without_an_address_takes_its_agents,
    a_server_deleted_before_its_agent_came_ends_its_registration,
    a_server_whose_agent_does_not_answer_leaves_when_deleted_with_force,
    a_server_whose_agent_died_leaves_and_the_agent_is_shut_out,
    a_server_whose_agent_does_not_answer_is_deleted_with_force_with_its_instances_and_units,
    a_dead_server_deleted_with_force_moves_its_instances_without_it,
    a_delete_waiting_for_a_host_that_does_not_answer_costs_nothing,
    a_creation_whose_host_does_not_let_go_is_handed_to_a_delete,
    an_agent_holds_one_connection_and_its_channel_has_two_forms,
);

async fn server_status(server: &TestServer, hostname: &str) -> Option<String> {
    let servers = server.get_ok("/v1/servers").await;
    servers
        .as_array()?
        .iter()
        .find(|s| s["hostname"] == hostname)
        .and_then(|s| s["status"].as_str().map(str::to_string))
}

/// A `sim` agent joined to `server` as `hostname`, once its host runs.
async fn running_agent(
    server: &TestServer,
    token: &str,
    hostname: &str,
    state: &std::path::Path,
    extra: &[&str],
) -> AgentProcess {
    let agent = AgentProcess::start(&server.url, Some(token), hostname, state, "sim", extra);
    eventually(
        Duration::from_secs(20),
        &format!("{hostname} running"),
        || async {
            (server_status(server, hostname).await.as_deref() == Some("running")).then_some(())
        },
    )
    .await;
    agent
}

/// A server of real agents only (no simulated hosts; agents silent for
/// `silence` unreachable, when given), a join token, and a directory for
/// the agents' states.
async fn agents_only(
    backend: Backend,
    silence: Option<Duration>,
) -> (TestServer, String, tempfile::TempDir) {
    let mut options = Options {
        sim_hosts: false,
        ..Options::default()
    };
    if let Some(silence) = silence {
        options.agent_silence = silence;
    }
    let server = TestServer::start_with(backend, options).await;
    let token = join_token(&server.url).await;
    let dir = tempfile::tempdir().expect("tempdir");
    (server, token, dir)
}

/// Starts an agent the control plane refuses; it exits saying `why`.
fn refused_agent(
    server: &TestServer,
    token: Option<&str>,
    hostname: &str,
    state: &std::path::Path,
    why: &str,
) {
    let agent = AgentProcess::start(&server.url, token, hostname, state, "sim", &[]);
    let (status, log) = agent.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "{log}");
    assert!(log.contains(why), "{log}");
}

/// Once `hostname` is registered: its status as `GET /v1/servers/{id}/status` shows it.
async fn registered(server: &TestServer, hostname: &str) -> Value {
    let path = format!("/v1/servers/{hostname}/status");
    eventually(
        Duration::from_secs(10),
        &format!("{hostname} registered"),
        || async {
            let (status, shown) = server.call(Method::GET, &path, None, TOKEN).await;
            (status == StatusCode::OK).then_some(shown)
        },
    )
    .await
}

/// `DELETE path` (a server), and the operation it answered, ended.
async fn delete_server(server: &TestServer, path: &str) -> Value {
    let (status, op) = server.call(Method::DELETE, path, None, TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{op}");
    server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await
}

/// An admin's request for a join token that replaces `hostname`'s agent.
async fn replace_token(server: &TestServer, hostname: &str) -> (StatusCode, Value) {
    server
        .call(
            Method::POST,
            "/v1/servers/join-tokens",
            Some(&json!({"replaces": hostname})),
            TOKEN,
        )
        .await
}

async fn instances(server: &TestServer) -> Vec<Value> {
    let (status, list) = server.call(Method::GET, "/v1/instances", None, TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"].as_array().cloned().unwrap_or_default()
}

async fn agents_join_share_the_load_and_survive_a_lost_host(backend: Backend) {
    let (server, token, dir) = agents_only(backend, Some(Duration::from_secs(3))).await;
    let mut agents = Vec::new();
    for name in ["node-a", "node-b"] {
        agents.push(AgentProcess::start(
            &server.url,
            Some(&token),
            name,
            &dir.path().join(name),
            "sim",
            &[],
        ));
    }
    for name in ["node-a", "node-b"] {
        eventually(Duration::from_secs(20), "both hosts running", || async {
            (server_status(&server, name).await.as_deref() == Some("running")).then_some(())
        })
        .await;
    }
    // Each host has this machine's CPUs; four 1-CPU instances spread over
    // both (the placement fills the emptiest host first).
    let mut hosts = BTreeSet::new();
    for i in 0..4 {
        let instance = server
            .run_instance(TOKEN, &format!("web-{i}"), "cx11")
            .await;
        assert_eq!(instance["status"]["state"], "running", "{instance}");
        hosts.insert(
            instance["status"]["host_id"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert_eq!(hosts.len(), 2, "instances landed on both hosts: {hosts:?}");
    let node_a = server.host_id("node-a").await;

    // node-a's agent dies: the host becomes unreachable, its instances
    // unknown, and nothing new is placed there.
    let a = agents.remove(0);
    let a_dir = a.state_dir.clone();
    a.crash();
    eventually(Duration::from_secs(15), "node-a unreachable", || async {
        (server_status(&server, "node-a").await.as_deref() == Some("unreachable")).then_some(())
    })
    .await;
    let listed = instances(&server).await;
    for instance in &listed {
        let on_a = instance["status"]["host_id"] == node_a.as_str();
        let state = instance["status"]["state"].as_str().unwrap_or("");
        match on_a {
            true => assert_eq!(state, "unknown", "{instance}"),
            false => assert_eq!(state, "running", "{instance}"),
        }
    }
    assert_eq!(
        server_status(&server, "node-b").await.as_deref(),
        Some("running")
    );

    // It comes back, without a join token: it kept its credential. The
    // same instances run again, none lost or duplicated.
    let _a = AgentProcess::start(&server.url, None, "node-a", &a_dir, "sim", &[]);
    eventually(Duration::from_secs(15), "node-a back", || async {
        (server_status(&server, "node-a").await.as_deref() == Some("running")).then_some(())
    })
    .await;
    let again = instances(&server).await;
    let ids = |list: &[Value]| -> BTreeSet<String> {
        list.iter()
            .map(|i| i["id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(ids(&again), ids(&listed));
    assert_eq!(again.len(), 4);
    for instance in &again {
        assert_eq!(instance["status"]["state"], "running", "{instance}");
    }
    // The restarted agent was handed its instances again.
    let log = std::fs::read_to_string(a_dir.join("agent.log")).unwrap_or_default();
    assert!(log.contains("agent running"), "{log}");

    // Deleting them goes through the agents.
    for instance in &again {
        let id = instance["id"].as_str().expect("id");
        let (status, reply) = server
            .call(Method::DELETE, &format!("/v1/instances/{id}"), None, TOKEN)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
        let op = reply["operation_id"].as_str().expect("operation");
        let op = server.wait_operation(op, TOKEN).await;
        assert_eq!(op["status"], "completed", "{op}");
    }
    server.stop().await;
}

async fn join_tokens_are_checked_and_agents_authenticated(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            sim_hosts: false,
            ..Options::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");

    // A made-up join token: the agent says why and exits.
    refused_agent(
        &server,
        Some("tsj_not-a-real-token"),
        "node-x",
        &dir.path().join("x"),
        "registration refused",
    );
    assert_eq!(server_status(&server, "node-x").await, None);

    // Without any token or kept credential, it says what to do.
    refused_agent(
        &server,
        None,
        "node-y",
        &dir.path().join("y"),
        "--join-token",
    );

    // A revoked token no longer admits anyone.
    let (status, created) = server
        .call(
            Method::POST,
            "/v1/servers/join-tokens",
            Some(&json!({"ttl_seconds": 600})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id");
    let secret = created["token"].as_str().expect("token");
    let listed = server.get_ok("/v1/servers/join-tokens").await;
    assert!(listed.to_string().contains(id));
    assert!(
        !listed.to_string().contains(secret),
        "secrets are shown once"
    );
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("/v1/servers/join-tokens/{id}"),
            None,
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    refused_agent(
        &server,
        Some(secret),
        "node-z",
        &dir.path().join("z"),
        "registration refused",
    );
    assert_eq!(server_status(&server, "node-z").await, None);

    // A token made for one host admits one, then no other.
    let (status, created) = server
        .call(
            Method::POST,
            "/v1/servers/join-tokens",
            Some(&json!({"uses": 1})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["uses_left"], 1, "{created}");
    let once = created["token"].as_str().expect("token").to_string();
    let _first = running_agent(&server, &once, "node-once", &dir.path().join("once"), &[]).await;
    refused_agent(
        &server,
        Some(&once),
        "node-twice",
        &dir.path().join("twice"),
        "used up",
    );
    assert_eq!(server_status(&server, "node-twice").await, None);
    let listed = server.get_ok("/v1/servers/join-tokens").await;
    let shown = listed
        .as_array()
        .and_then(|l| l.iter().find(|t| t["id"] == created["id"]))
        .expect("listed");
    assert_eq!(shown["uses_left"], 0, "{shown}");
    for uses in [0, -1, 100_001] {
        let (status, body) = server
            .call(
                Method::POST,
                "/v1/servers/join-tokens",
                Some(&json!({ "uses": uses })),
                TOKEN,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uses}: {body}");
    }

    // A token made for one host name admits an agent under that name
    // only; one under another name takes none of its uses. The server,
    // registered first, keeps the CPUs its registration gave it.
    let (status, op) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "node-named", "zone": "z", "cpus": "0-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let (status, created) = server
        .call(
            Method::POST,
            "/v1/servers/join-tokens",
            Some(&json!({"hostname": "node-named", "uses": 1})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["hostname"], "node-named", "{created}");
    let named = created["token"].as_str().expect("token").to_string();
    refused_agent(
        &server,
        Some(&named),
        "node-impostor",
        &dir.path().join("impostor"),
        "is for host node-named",
    );
    assert_eq!(server_status(&server, "node-impostor").await, None);
    let _named = running_agent(
        &server,
        &named,
        "node-named",
        &dir.path().join("named"),
        &[],
    )
    .await;
    let shown = registered(&server, "node-named").await;
    assert_eq!(shown["cpus"], "0-1", "{shown}");
    // Made for a name no server is registered under, it admits no host
    // of the agent's own declaring.
    let (status, created) = server
        .call(
            Method::POST,
            "/v1/servers/join-tokens",
            Some(&json!({"hostname": "node-unregistered"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    refused_agent(
        &server,
        created["token"].as_str(),
        "node-unregistered",
        &dir.path().join("unregistered"),
        "which is not registered",
    );
    assert_eq!(server_status(&server, "node-unregistered").await, None);
    for bad in [
        json!({"hostname": "-bad"}),
        json!({"hostname": "node-live", "replaces": "node-once"}),
    ] {
        let (status, body) = server
            .call(Method::POST, "/v1/servers/join-tokens", Some(&bad), TOKEN)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }

    // A host name with a live agent cannot be taken over by another
    // machine holding a join token.
    let token = join_token(&server.url).await;
    let _live = running_agent(&server, &token, "node-live", &dir.path().join("live"), &[]).await;
    refused_agent(
        &server,
        Some(&token),
        "node-live",
        &dir.path().join("usurper"),
        "already has a live agent",
    );

    // Bad input to the token API is the face's 400.
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/servers/join-tokens",
            Some(&json!({"ttl_seconds": 1})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "INVALID_REQUEST");

    // A registration's join token is checked before the rest is read: one
    // without a good token is a 401 whatever its inventory holds (a list
    // of CPUs built to cost its reader is not parsed).
    let costly = json!({
        "join_token": "not-a-token", "hostname": "h1", "ip": "192.0.2.9", "driver": "sim",
        "inventory": {"cpus": vec!["0-8191"; 9000].join(","), "numa_nodes": ["x"]},
    });
    let (status, body) = server
        .request(
            Method::POST,
            "/v1/agent/register",
            Some(&costly.to_string()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // The agent protocol wants a host credential, not a user's token.
    for (method, path) in [
        (Method::GET, "/v1/agent/desired"),
        (Method::POST, "/v1/agent/heartbeat"),
        (Method::POST, "/v1/agent/observed"),
    ] {
        let (status, body) = server.request(method, path, Some("{}"), Some(TOKEN)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    // A tenant cannot make join tokens.
    let member = server.user_in("joiner", "member", "default").await;
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/servers/join-tokens",
            Some(&json!({})),
            &member,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.stop().await;
}

async fn a_server_registered_without_an_address_takes_its_agents(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            sim_hosts: false,
            ..Options::default()
        },
    )
    .await;
    // The provisioning API's example: no address.
    let (status, op) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "web-01", "provider": "upcloud", "plan": "2xCPU-4GB", "zone": "de-fra1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let shown = registered(&server, "web-01").await;
    assert_eq!(shown["ip_address"], "", "{shown}");
    assert_eq!(
        shown["status"], "initializing",
        "it waits for its agent: {shown}"
    );
    let token = join_token(&server.url).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _agent = running_agent(
        &server,
        &token,
        "web-01",
        &dir.path().join("web-01"),
        &["--ip", "192.0.2.77"],
    )
    .await;
    let (_, shown) = server
        .call(Method::GET, "/v1/servers/web-01/status", None, TOKEN)
        .await;
    assert_eq!(shown["ip_address"], "192.0.2.77", "{shown}");
    let op = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(op["status"], "completed", "{op}");
    server.stop().await;
}

/// A registration waits for the server's agent; the server deleted first,
/// it fails at once, saying so, instead of waiting for ever.
async fn a_server_deleted_before_its_agent_came_ends_its_registration(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            sim_hosts: false,
            ..Options::default()
        },
    )
    .await;
    let (status, created) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "never-01", "plan": "2xCPU-4GB", "zone": "de-fra1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let shown = registered(&server, "never-01").await;
    assert_eq!(shown["status"], "initializing", "{shown}");
    let deleted = delete_server(&server, "/v1/servers/never-01").await;
    assert_eq!(deleted["status"], "completed", "{deleted}");
    let created = server
        .wait_operation(created["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(created["status"], "failed", "{created}");
    assert_eq!(
        created["error"], "server never-01 was deleted before it was ready",
        "{created}"
    );
    server.stop().await;
}

/// A server whose agent never answers (here its preparation and its
/// retirement hang) stays in the fleet when deleted: the deletion fails,
/// saying so and how to go on. Deleted with force, it leaves without its
/// agent, saying what stays on the machine, and its registration ends.
async fn a_server_whose_agent_does_not_answer_leaves_when_deleted_with_force(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["prepare:dead-:hang", "retire:dead-:hang"],
            agent_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await;
    let (status, created) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "dead-1", "plan": "2xCPU-4GB", "zone": "de-fra1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(
        registered(&server, "dead-1").await["status"],
        "initializing"
    );
    let status_of = || async { registered(&server, "dead-1").await["status"].clone() };
    let delete = |path: &'static str| delete_server(&server, path);
    let refused = delete("/v1/servers/dead-1").await;
    assert_eq!(refused["status"], "failed", "{refused}");
    let why = refused["error"].as_str().unwrap_or_default();
    assert!(why.contains("did not answer"), "{refused}");
    assert!(why.contains("delete the server with force"), "{refused}");
    assert_eq!(status_of().await, "decommission_failed");

    let forced = delete("/v1/servers/dead-1?force=true").await;
    assert_eq!(forced["status"], "completed", "{forced}");
    let detail = forced["result"]["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("retired without its agent"), "{forced}");
    assert_eq!(status_of().await, "decommissioned");
    let created = server
        .wait_operation(created["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(created["status"], "failed", "{created}");
    server.stop().await;
}

/// A real agent dies for good: its server cannot be retired by it, but
/// deleted with force it leaves the fleet, and the agent's credential stops
/// working (were it to come back, it would be refused and stop).
async fn a_server_whose_agent_died_leaves_and_the_agent_is_shut_out(backend: Backend) {
    let (server, token, dir) = agents_only(backend, Some(Duration::from_millis(1500))).await;
    let state = dir.path().join("gone-1");
    running_agent(&server, &token, "gone-1", &state, &[])
        .await
        .crash();
    let kept = std::fs::read_to_string(state.join("credential.json")).expect("kept");
    let kept: Value = serde_json::from_str(&kept).expect("json");
    let credential = kept["credential"].as_str().expect("credential").to_string();
    let desired = || {
        let request = server
            .client
            .get(format!("{}/v1/agent/desired?after=0&wait=0", server.url))
            .bearer_auth(&credential);
        async move { request.send().await.expect("desired").status() }
    };
    assert_eq!(desired().await, StatusCode::OK);
    eventually(Duration::from_secs(20), "gone-1 unreachable", || async {
        (server_status(&server, "gone-1").await.as_deref() == Some("unreachable")).then_some(())
    })
    .await;
    // A token an admin makes to replace its agent, before it retires.
    let (status, early) = replace_token(&server, "gone-1").await;
    assert_eq!(status, StatusCode::CREATED, "{early}");
    let early = early["token"].as_str().expect("token").to_string();
    let delete = |path: &'static str| delete_server(&server, path);
    let refused = delete("/v1/servers/gone-1").await;
    assert_eq!(refused["status"], "failed", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("missed its heartbeats") && e.contains("with force")),
        "{refused}"
    );
    let forced = delete("/v1/servers/gone-1?force=true").await;
    assert_eq!(forced["status"], "completed", "{forced}");
    assert!(
        forced["result"]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("retired without its agent")),
        "{forced}"
    );
    assert_eq!(desired().await, StatusCode::UNAUTHORIZED);

    // Retired, it does not come back with any join token, not even one
    // made to replace its agent before (nor may the API make one now), but
    // with the one `tessera up` makes for its own machine when started
    // again.
    let plain = join_token(&server.url).await;
    for (token, name) in [(plain.as_str(), "plain"), (early.as_str(), "early")] {
        let refused = AgentProcess::start(
            &server.url,
            Some(token),
            "gone-1",
            &dir.path().join(format!("gone-1-{name}")),
            "sim",
            &[],
        );
        let (status, log) = refused.wait_exit(Duration::from_secs(20));
        assert!(!status.success(), "{name}");
        assert!(log.contains("was decommissioned"), "{name}: {log}");
    }
    assert_eq!(
        server_status(&server, "gone-1").await.as_deref(),
        Some("decommissioned")
    );
    let (status, made) = replace_token(&server, "gone-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{made}");
    let up_token = server
        .running
        .app
        .local_join_token("gone-1")
        .await
        .expect("a join token");
    let back = running_agent(&server, &up_token, "gone-1", &state, &[]).await;
    let (status, instance) = server
        .call(
            Method::POST,
            "/v1/instances",
            Some(&json!({"metadata": {"name": "back"},
                         "spec": {"type": "cx11", "image": "ubuntu-22.04"}})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{instance}");
    let op = instance["operation_id"].as_str().expect("operation");
    let done = server.wait_operation(op, TOKEN).await;
    assert_eq!(done["status"], "completed", "{done}");
    drop(back);
    server.stop().await;
}

/// A carved server whose agent no longer answers (every call to it hangs)
/// while it runs an instance, another is being deleted there and a
/// Kloigos unit is allocated there: deleted with force, the instance moves
/// to another server without the old one letting it go, the delete ends
/// without it, the unit goes back without its wipe, and the server
/// leaves; the deletion's result says what stays on the machine.
async fn a_server_whose_agent_does_not_answer_is_deleted_with_force_with_its_instances_and_units(
    backend: Backend,
) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec![
                "delete:dead-:hang",
                "release:dead-:hang",
                "retire:dead-:hang",
            ],
            agent_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await;
    server.init_host("dead-a", &["0-3", "4-7", "8-11"]).await;
    let instance = server.run_instance(TOKEN, "web", "cx21").await;
    let id = instance["id"].as_str().expect("id").to_string();
    assert_eq!(instance["status"]["cpus"], "0-3", "{instance}");
    let doomed = server.run_instance(TOKEN, "doomed", "cx21").await;
    let doomed = doomed["id"].as_str().expect("id").to_string();
    let (status, unit) = server.allocate(unit_request(4, Value::Null)).await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    assert_eq!(unit["compute_id"], "dead-a_c8-11", "{unit}");
    let live = server.add_server("live-b", "0-3", "fin-01").await;
    let dead = server.host_id("dead-a").await;
    // Its project deletes one: the host does not answer, so the delete
    // stays under way (tried again when its lease ends).
    let (status, deleting) = server
        .call(
            Method::DELETE,
            &format!("/v1/instances/{doomed}"),
            None,
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleting}");
    let deleting = deleting["operation_id"].as_str().expect("op").to_string();
    // Its first try times out before the server is deleted: the deletion
    // then waits for it, and what it says comes from a resumed run.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Not forced: refused while it runs the instance.
    let (status, refused) = server.delete(&format!("/v1/servers/{dead}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");

    let done = delete_server(&server, &format!("/v1/servers/{dead}?force=true")).await;
    assert_eq!(done["status"], "completed", "{done}");
    let detail = done["result"]["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("retired without its agent"), "{done}");
    assert!(
        detail.contains("compute unit(s) dead-a_c8-11 went back to the pool without being wiped"),
        "{done}"
    );
    assert!(!detail.contains(&doomed), "{done}");
    // The instance being deleted was not moved: its delete ended as its
    // host left.
    let deleted = server.wait_operation(&deleting, TOKEN).await;
    assert_eq!(deleted["status"], "completed", "{deleted}");
    assert!(
        deleted["result"]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("deleted as its host left the fleet without its agent")),
        "{deleted}"
    );
    let gone = server.get_ok(&format!("/v1/instances/{doomed}")).await;
    assert_eq!(gone["status"]["state"], "terminated", "{gone}");
    assert!(
        detail.contains(&format!(
            "instance(s) {id} moved to other servers without this one letting them go"
        )),
        "{done}"
    );
    assert_eq!(
        server.get_ok(&format!("/v1/servers/{dead}/status")).await["status"],
        "decommissioned"
    );
    let now = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(now["status"]["host_id"], json!(live), "{now}");
    assert_eq!(now["status"]["state"], "running", "{now}");
    assert_eq!(now["operation_id"], json!(null), "{now}");
    // Nothing is held on the server that left.
    for unit in server.units("?hostname=dead-a").await {
        assert!(
            !["ALLOCATED", "DEALLOCATING", "DEALLOCATION_FAIL"]
                .contains(&unit["status"].as_str().unwrap_or_default()),
            "{unit}"
        );
        assert_eq!(unit["tags"], json!(null), "{unit}");
    }
    // The moved instance still works: stopped and deleted on its new host.
    let (status, deleting) = server
        .call(Method::DELETE, &format!("/v1/instances/{id}"), None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleting}");
    let deleted = server
        .wait_operation(deleting["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(deleted["status"], "completed", "{deleted}");
    server.stop().await;
}

/// The default workspace's balance, in dollars (to the micro-dollar).
async fn balance(server: &TestServer) -> f64 {
    let body = server.get_ok("/v1/workspaces/default/balance").await;
    body["amount"].as_f64().expect("amount")
}

/// An instance is deleted while its host does not answer: the delete
/// waits for the host (tried again until it answers or leaves the fleet)
/// and the instance keeps its CPUs meanwhile, but its meter stopped when
/// the delete was asked for: the tenant does not pay for the wait.
async fn a_delete_waiting_for_a_host_that_does_not_answer_costs_nothing(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["delete:dead-:hang"],
            agent_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await;
    server.init_host("dead-a", &["0-3", "4-7"]).await;
    let instance = server.run_instance(TOKEN, "web", "cx21").await;
    let id = instance["id"].as_str().expect("id").to_string();
    // It costs while it runs (cx21: $0.015 an hour, 4 micro-dollars a second).
    let before = balance(&server).await;
    eventually(Duration::from_secs(10), "the instance billed", || async {
        (balance(&server).await < before).then_some(())
    })
    .await;
    let (status, deleting) = server
        .call(Method::DELETE, &format!("/v1/instances/{id}"), None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleting}");
    let op = deleting["operation_id"].as_str().expect("op").to_string();
    let asked = balance(&server).await;
    // Several of the host's timeouts later the delete is still under way,
    // its CPUs still held, and nothing more was charged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = server.get_ok(&format!("/v1/operations/{op}")).await;
    assert!(
        ["pending", "running"].contains(&waiting["status"].as_str().unwrap_or_default()),
        "{waiting}"
    );
    let now = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(now["status"]["cpus"], instance["status"]["cpus"], "{now}");
    assert_ne!(now["status"]["state"], "terminated", "{now}");
    assert_eq!(balance(&server).await, asked);
    server.stop().await;
}

/// A creation whose host neither makes the instance nor lets it go (it
/// heartbeats but never acts) ends failed after the host's timeouts, not
/// never: a delete takes the instance over, `stopping`, its CPUs held
/// until the host lets go or leaves the fleet; a tenant's delete joins it
/// rather than being refused, and nothing is charged. When the host
/// leaves, the instance ends terminated, holding nothing.
async fn a_creation_whose_host_does_not_let_go_is_handed_to_a_delete(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["create:dead-:hang", "delete:dead-:hang"],
            agent_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await;
    let host = server.add_server("dead-1", "0-3", "fin-01").await;
    let before = balance(&server).await;
    let created = server.create_instance(TOKEN, "stuck", "cx21").await;
    let id = created["id"].as_str().expect("id").to_string();
    let creation = created["operation_id"].as_str().expect("op").to_string();
    let failed = server.wait_operation(&creation, TOKEN).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.contains("has not let go of it yet"), "{failed}");
    let now = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(now["status"]["state"], "stopping", "{now}");
    assert_eq!(now["status"]["host_id"], json!(host), "{now}");
    assert_ne!(now["status"]["cpus"], "", "{now}");
    let deleting = now["operation_id"].as_str().expect("a delete").to_string();
    assert_ne!(deleting, creation);
    let delete = server.get_ok(&format!("/v1/operations/{deleting}")).await;
    assert_eq!(delete["kind"], "instance_delete", "{delete}");
    // The tenant's delete joins it.
    let (status, joined) = server
        .call(Method::DELETE, &format!("/v1/instances/{id}"), None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{joined}");
    assert_eq!(joined["operation_id"], json!(deleting), "{joined}");
    // Several of the host's timeouts later it still waits, holding its
    // CPUs, and nothing was charged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = server.get_ok(&format!("/v1/operations/{deleting}")).await;
    assert!(
        ["pending", "running"].contains(&waiting["status"].as_str().unwrap_or_default()),
        "{waiting}"
    );
    let now = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(now["status"]["state"], "stopping", "{now}");
    assert_ne!(now["status"]["cpus"], "", "{now}");
    assert_eq!(balance(&server).await, before);
    // The host leaves the fleet: the delete ends without it.
    let done = delete_server(&server, &format!("/v1/servers/{host}?force=true")).await;
    assert_eq!(done["status"], "completed", "{done}");
    let deleted = server.wait_operation(&deleting, TOKEN).await;
    assert_eq!(deleted["status"], "completed", "{deleted}");
    let gone = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(gone["status"]["state"], "terminated", "{gone}");
    assert_eq!(gone["status"]["cpus"], "", "{gone}");
    assert_eq!(gone["operation_id"], json!(null), "{gone}");
    server.stop().await;
}

/// A real agent dies for good while its server runs an instance: deleted
/// with force, the server's instance comes up on another server (from its
/// image) without the dead one letting it go, and the server leaves.
async fn a_dead_server_deleted_with_force_moves_its_instances_without_it(backend: Backend) {
    let (server, token, dir) = agents_only(backend, Some(Duration::from_millis(1500))).await;
    let gone = running_agent(&server, &token, "gone-2", &dir.path().join("gone"), &[]).await;
    let instance = server.run_instance(TOKEN, "keeper", "cx11").await;
    assert_eq!(instance["status"]["state"], "running", "{instance}");
    let id = instance["id"].as_str().expect("id").to_string();
    let gone_id = server.host_id("gone-2").await;
    assert_eq!(instance["status"]["host_id"], json!(gone_id), "{instance}");
    let live = running_agent(&server, &token, "live-2", &dir.path().join("live"), &[]).await;
    let live_id = server.host_id("live-2").await;
    gone.crash();
    eventually(Duration::from_secs(20), "gone-2 unreachable", || async {
        (server_status(&server, "gone-2").await.as_deref() == Some("unreachable")).then_some(())
    })
    .await;
    let done = delete_server(&server, "/v1/servers/gone-2?force=true").await;
    assert_eq!(done["status"], "completed", "{done}");
    let detail = done["result"]["detail"].as_str().unwrap_or_default();
    assert!(detail.starts_with("retired without its agent"), "{done}");
    assert!(detail.contains(&id), "{done}");
    let now = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(now["status"]["host_id"], json!(live_id), "{now}");
    assert_eq!(now["status"]["state"], "running", "{now}");
    assert_eq!(
        server_status(&server, "gone-2").await.as_deref(),
        Some("decommissioned")
    );
    // Its long-poll ends with it, not after the server waited for it.
    drop(live);
    server.stop().await;
}

/// An agent's heartbeats, long-poll, reports and control channel share one
/// HTTP/2 connection (at 10,000 hosts: 10,000 connections, not 30,000).
/// Its channel is a streamed answer; an agent that asks for a WebSocket
/// (one of an earlier version) gets that.
async fn an_agent_holds_one_connection_and_its_channel_has_two_forms(backend: Backend) {
    let (server, token, dir) = agents_only(backend, None).await;
    let agent = running_agent(&server, &token, "node-one", &dir.path().join("one"), &[]).await;
    // It works through the agent: an instance runs there.
    let instance = server.run_instance(TOKEN, "solo", "cx11").await;
    assert_eq!(instance["status"]["state"], "running", "{instance}");
    let port = reqwest::Url::parse(&server.url)
        .expect("url")
        .port()
        .expect("port");
    // Heartbeats every second (the harness's agents), a long-poll always
    // under way, the channel open: one connection all along.
    for _ in 0..5 {
        assert_eq!(agent.connections_to(port), 1, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(400)).await;
    }

    let kept = std::fs::read_to_string(dir.path().join("one/credential.json")).expect("kept");
    let kept: Value = serde_json::from_str(&kept).expect("json");
    let credential = kept["credential"].as_str().expect("credential");
    // The channel as a stream of lines.
    let answer = reqwest::Client::new()
        .get(format!("{}/v1/agent/channel", server.url))
        .bearer_auth(credential)
        .send()
        .await
        .expect("channel");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()["content-type"],
        "application/x-ndjson",
        "{:?}",
        answer.headers()
    );
    drop(answer);
    // And as a WebSocket.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/v1/agent/channel", server.url.replacen("http", "ws", 1));
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {credential}").parse().expect("header"),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the channel as a WebSocket");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    drop(socket);
    // Without a host credential, neither.
    let (status, _) = server
        .request(Method::GET, "/v1/agent/channel", None, Some(TOKEN))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    drop(agent);
    server.stop().await;
}

/// How many passes `server`'s background task `task` has made.
async fn passes(server: &TestServer, task: &str) -> u64 {
    let (status, text) = crate::observability::scrape(server, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let prefix = format!("tessera_background_passes_total{{task=\"{task}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// PostgreSQL only: two replicas, the agents speaking to the first. A host
/// whose agent the first finds silent takes nothing new from the second,
/// though the second never heard from the agent and never judges it silent
/// itself (its silence is ten minutes), and its view had the dead host as
/// the emptiest: the second learns it from its catch-up with the hosts
/// (every 10 s; waited for here), or else from its claim there losing to
/// the host's bumped generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_another_replica_found_silent_takes_nothing_new() {
    let database_url = fresh_postgres_database().await;
    let replica = |silence: Duration| {
        let url = database_url.clone();
        async move {
            TestServer::start_with(
                Backend::Postgres,
                Options {
                    database_url: Some(url),
                    sim_hosts: false,
                    agent_silence: silence,
                    ..Options::default()
                },
            )
            .await
        }
    };
    let first = replica(Duration::from_secs(2)).await;
    let second = replica(Duration::from_secs(600)).await;
    let token = join_token(&first.url).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agents = Vec::new();
    for name in ["node-a", "node-b"] {
        let state = dir.path().join(name);
        agents.push((name, running_agent(&first, &token, name, &state, &[]).await));
    }
    for (name, _) in &agents {
        eventually(
            Duration::from_secs(20),
            "the second sees it run",
            || async {
                (server_status(&second, name).await.as_deref() == Some("running")).then_some(())
            },
        )
        .await;
    }
    // One instance through the second: the other host is then the
    // emptiest, and its agent dies.
    let warm = second.run_instance(TOKEN, "warm", "cx11").await;
    assert_eq!(warm["status"]["state"], "running", "{warm}");
    let busy = warm["status"]["host_id"]
        .as_str()
        .expect("host")
        .to_string();
    let dead = match second.host_id("node-a").await == busy {
        true => "node-b",
        false => "node-a",
    };
    let index = agents
        .iter()
        .position(|(name, _)| *name == dead)
        .expect("agent");
    agents.remove(index).1.crash();
    eventually(
        Duration::from_secs(20),
        "the first finds it silent",
        || async {
            (server_status(&first, dead).await.as_deref() == Some("unreachable")).then_some(())
        },
    )
    .await;
    // A whole catch-up pass of the second's after that.
    let task = "catch up placement";
    let seen = passes(&second, task).await;
    eventually(Duration::from_secs(30), "a catch-up pass", || async {
        (passes(&second, task).await >= seen + 2).then_some(())
    })
    .await;
    let placed = second.run_instance(TOKEN, "after", "cx11").await;
    assert_eq!(placed["status"]["state"], "running", "{placed}");
    assert_eq!(placed["status"]["host_id"], busy.as_str(), "{placed}");
    drop(agents);
    second.stop().await;
    first.stop().await;
}

/// A stopping server does not wait for its agents' control channels: each
/// is an answer that never ends (a line every 20 s), and the drain waited
/// its whole half minute for them before giving up (2026-12-07).
async fn a_stopping_server_does_not_wait_for_its_agents_channels(backend: Backend) {
    let (server, token, dir) = agents_only(backend, None).await;
    let _agent = running_agent(&server, &token, "node-s", &dir.path().join("s"), &[]).await;
    // Its channel is dialled as it starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::time::timeout(Duration::from_secs(20), server.stop())
        .await
        .expect("stopped without waiting out the drain for the agent's channel");
}
