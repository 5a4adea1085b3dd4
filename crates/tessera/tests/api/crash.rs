//! A control plane killed with SIGKILL in the middle of host work finishes
//! or settles that work when it starts again; one whose PostgreSQL ended
//! its sessions goes on without an error.

use crate::harness::{
    Backend, KEY, Options, ServerProcess, TOKEN, TestServer, fresh_postgres_database, wait_for,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use tessera_core::CpuSet;

crate::on_both_backends!(
    work_cut_short_by_a_crash_is_settled_at_restart,
    an_instance_creation_cut_short_by_a_crash_is_finished_at_restart,
    a_cluster_creation_cut_short_by_a_crash_is_finished_at_restart,
    a_restarted_replica_resumes_its_own_operations_at_once
);

async fn work_cut_short_by_a_crash_is_settled_at_restart(backend: Backend) {
    let database = crate::harness::SharedDatabase::new(backend).await;
    let client = reqwest::Client::new();
    // First life: preparing "stuck-1" and installing keys on "slow-*" never finish.
    let first = ServerProcess::start(
        &database.url,
        database.dir.path(),
        &[
            "--sim-faults",
            "prepare:stuck-:hang,activate:slow-:hang",
            "--agent-timeout-ms",
            "1000",
        ],
    );
    for (host, range) in [("stuck-1", "0-3"), ("slow-1", "0-3")] {
        let response = client
            .post(format!("{}/api/admin/init_server", first.url))
            .bearer_auth(TOKEN)
            .json(&json!({"hostname": host, "ip": "192.0.2.1", "region": "r", "zone": "z", "cpu_ranges": [range]}))
            .send()
            .await
            .expect("init_server");
        assert_eq!(response.status(), StatusCode::OK);
    }
    wait_for(&client, &first.url, "?hostname=slow-1&status=FREE", 1).await;
    let allocate = tokio::spawn({
        let (client, url) = (client.clone(), first.url.clone());
        async move {
            client
                .post(format!("{url}/api/compute_units/allocate"))
                .bearer_auth(TOKEN)
                .json(&json!({"ssh_public_key": KEY, "tags": {"deployment_id": "crash"}}))
                .send()
                .await
        }
    });
    wait_for(&client, &first.url, "?status=ALLOCATING", 1).await;
    first.crash();
    assert!(
        allocate.await.expect("task").is_err(),
        "the request died with the server"
    );

    // Second life, healthy hosts: the stuck host is prepared, and the
    // interrupted allocation (nobody learnt its id) is unwound once its
    // deadline passes: wiped and back in the pool, its tags gone.
    let second = ServerProcess::start(&database.url, database.dir.path(), &[]);
    wait_for(&client, &second.url, "?hostname=stuck-1&status=FREE", 1).await;
    let unwound = wait_for(&client, &second.url, "?hostname=slow-1&status=FREE", 1).await;
    assert_eq!(unwound[0]["tags"], json!(null));
    // Both serve again.
    for _ in 0..2 {
        let response = client
            .post(format!("{}/api/compute_units/allocate", second.url))
            .bearer_auth(TOKEN)
            .json(&json!({"ssh_public_key": KEY, "tags": null}))
            .send()
            .await
            .expect("allocate");
        assert_eq!(response.status(), StatusCode::OK);
    }
    second.stop();
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = client.request(method, url).bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_operation(client: &reqwest::Client, url: &str, id: &str) -> Value {
    let (status, op) = call(
        client,
        reqwest::Method::GET,
        format!("{url}/v1/operations/{id}/wait?timeout=60"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    op
}

/// A fresh store and a server process on it whose host `slow-1` (CPUs 0-7,
/// pooled) never finishes creating an instance.
async fn first_life_with_a_hanging_host(
    backend: Backend,
) -> (crate::harness::SharedDatabase, ServerProcess) {
    let database = crate::harness::SharedDatabase::new(backend).await;
    let first = ServerProcess::start(
        &database.url,
        database.dir.path(),
        &[
            "--sim-faults",
            "create:slow-:hang",
            "--agent-timeout-ms",
            "1000",
        ],
    );
    let client = reqwest::Client::new();
    let (status, op) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/v1/servers/create", first.url),
        Some(json!({"hostname": "slow-1", "ip_address": "192.0.2.7", "zone": "z", "cpus": "0-7"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let done = wait_operation(&client, &first.url, op["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "completed", "{done}");
    (database, first)
}

async fn an_instance_creation_cut_short_by_a_crash_is_finished_at_restart(backend: Backend) {
    let (database, first) = first_life_with_a_hanging_host(backend).await;
    let client = reqwest::Client::new();
    let (status, created) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/v1/instances", first.url),
        Some(json!({"metadata": {"name": "survivor"}, "spec": {"type": "cx21", "image": "ubuntu-22.04"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let op_id = created["operation_id"].as_str().expect("op").to_string();
    // Wait until it holds its CPUs and waits on the host, then kill -9.
    let mut placed = Value::Null;
    for _ in 0..200 {
        (_, placed) = call(
            &client,
            reqwest::Method::GET,
            format!("{}/v1/instances/{id}", first.url),
            None,
        )
        .await;
        if placed["status"]["host_id"] != "" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(placed["status"]["state"], "provisioning", "{placed}");
    assert_ne!(placed["status"]["cpus"], "", "{placed}");
    first.crash();

    // Another replica, healthy hosts: once the dead driver's lease has
    // passed (not before: the dead one might have been alive), it takes the
    // operation over and finishes it from its step log.
    let second = ServerProcess::start(
        &database.url,
        database.dir.path(),
        &["--replica-id", "another"],
    );
    let op = wait_operation(&client, &second.url, &op_id).await;
    assert_eq!(op["status"], "completed", "{op}");
    let (_, instance) = call(
        &client,
        reqwest::Method::GET,
        format!("{}/v1/instances/{id}", second.url),
        None,
    )
    .await;
    assert_eq!(instance["status"]["state"], "running", "{instance}");
    assert_eq!(
        instance["status"]["cpus"], placed["status"]["cpus"],
        "the CPUs it was placed on"
    );
    // The ledger agrees: three more instances fill the host exactly, on
    // CPUs disjoint from the survivor's.
    let mut seen: HashSet<u32> =
        CpuSet::parse_list(instance["status"]["cpus"].as_str().expect("cpus"))
            .expect("cpus")
            .iter()
            .collect();
    for n in 0..4 {
        let (_, created) = call(
            &client,
            reqwest::Method::POST,
            format!("{}/v1/instances", second.url),
            Some(json!({"metadata": {"name": format!("after-{n}")}, "spec": {"type": "cx21", "image": "ubuntu-22.04"}})),
        )
        .await;
        let op = wait_operation(
            &client,
            &second.url,
            created["operation_id"].as_str().expect("op"),
        )
        .await;
        if n == 3 {
            assert_eq!(op["status"], "failed", "the host is full: {op}");
            continue;
        }
        assert_eq!(op["status"], "completed", "{op}");
        let (_, got) = call(
            &client,
            reqwest::Method::GET,
            format!(
                "{}/v1/instances/{}",
                second.url,
                created["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
        for cpu in CpuSet::parse_list(got["status"]["cpus"].as_str().expect("cpus"))
            .expect("cpus")
            .iter()
        {
            assert!(seen.insert(cpu), "CPU {cpu} given twice");
        }
    }
    assert_eq!(seen.len(), 8);
    second.stop();
}

async fn a_cluster_creation_cut_short_by_a_crash_is_finished_at_restart(backend: Backend) {
    let (database, first) = first_life_with_a_hanging_host(backend).await;
    let client = reqwest::Client::new();
    let (status, workflow) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/v1/workflows/submit", first.url),
        Some(json!({"workflow_type": "cluster_create", "parameters": {"cluster_name": "c", "node_count": 3, "type": "cx21"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{workflow}");
    let workflow_id = workflow["id"].as_str().expect("id").to_string();
    // Every node placed, the hosts hanging on them: kill -9.
    let placed = |list: &Value| {
        list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|i| i["status"]["host_id"] != "")
                    .count()
            })
            .unwrap_or(0)
    };
    for _ in 0..200 {
        let (_, list) = call(
            &client,
            reqwest::Method::GET,
            format!("{}/v1/instances?labels=cluster=c", first.url),
            None,
        )
        .await;
        if placed(&list) == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    first.crash();

    let second = ServerProcess::start(&database.url, database.dir.path(), &[]);
    let done = wait_operation(&client, &second.url, &workflow_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (_, list) = call(
        &client,
        reqwest::Method::GET,
        format!("{}/v1/instances?labels=cluster=c", second.url),
        None,
    )
    .await;
    let nodes = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{list}");
    let mut seen = HashSet::new();
    for node in &nodes {
        assert_eq!(node["status"]["state"], "running", "{node}");
        for cpu in CpuSet::parse_list(node["status"]["cpus"].as_str().expect("cpus"))
            .expect("cpus")
            .iter()
        {
            assert!(seen.insert(cpu), "CPU {cpu} given twice");
        }
    }
    // One instance of 2 fits in what is left, a second does not.
    for (n, expected) in [(0, "completed"), (1, "failed")] {
        let (_, created) = call(
            &client,
            reqwest::Method::POST,
            format!("{}/v1/instances", second.url),
            Some(json!({"metadata": {"name": format!("after-{n}")}, "spec": {"type": "cx21", "image": "ubuntu-22.04"}})),
        )
        .await;
        let op = wait_operation(
            &client,
            &second.url,
            created["operation_id"].as_str().expect("op"),
        )
        .await;
        assert_eq!(op["status"], expected, "{op}");
    }
    second.stop();
}

async fn a_restarted_replica_resumes_its_own_operations_at_once(backend: Backend) {
    let database = crate::harness::SharedDatabase::new(backend).await;
    // Leases of over a minute (twice the agent timeout, and a margin).
    let first = ServerProcess::start(
        &database.url,
        database.dir.path(),
        &[
            "--sim-faults",
            "create:slow-:hang",
            "--agent-timeout-ms",
            "30000",
        ],
    );
    let client = reqwest::Client::new();
    let (status, op) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/v1/servers/create", first.url),
        Some(json!({"hostname": "slow-1", "ip_address": "192.0.2.7", "zone": "z", "cpus": "0-15"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let done = wait_operation(&client, &first.url, op["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "completed", "{done}");
    let mut creations = Vec::new();
    for n in 0..4 {
        let (status, created) = call(
            &client,
            reqwest::Method::POST,
            format!("{}/v1/instances", first.url),
            Some(json!({"metadata": {"name": format!("c-{n}")}, "spec": {"type": "cx21", "image": "ubuntu-22.04"}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        creations.push((
            created["id"].as_str().expect("id").to_string(),
            created["operation_id"].as_str().expect("op").to_string(),
        ));
    }
    // Every one waits on the host, holding its CPUs; then kill -9.
    for (id, _) in &creations {
        let mut placed = Value::Null;
        for _ in 0..200 {
            (_, placed) = call(
                &client,
                reqwest::Method::GET,
                format!("{}/v1/instances/{id}", first.url),
                None,
            )
            .await;
            if placed["status"]["host_id"] != "" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_ne!(placed["status"]["cpus"], "", "{placed}");
    }
    first.crash();

    // The same replica (its name kept in the data directory) restarts: it
    // takes its operations back at once instead of waiting out its leases.
    let second = ServerProcess::start(
        &database.url,
        database.dir.path(),
        &["--agent-timeout-ms", "30000"],
    );
    for (id, op_id) in &creations {
        let (status, op) = call(
            &client,
            reqwest::Method::GET,
            format!("{}/v1/operations/{op_id}/wait?timeout=15", second.url),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{op}");
        assert_eq!(
            op["status"], "completed",
            "finished well within the lease of the replica that died: {op}"
        );
        let (_, instance) = call(
            &client,
            reqwest::Method::GET,
            format!("{}/v1/instances/{id}", second.url),
            None,
        )
        .await;
        assert_eq!(instance["status"]["state"], "running", "{instance}");
    }
    second.stop();
}

/// PostgreSQL ending every session of the control plane (a restart, a
/// failover, an operator's `pg_terminate_backend`) fails no request: the
/// connections the store kept at hand without a ping are replaced, reads
/// are read again and writes that never ran are run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_postgresql_ended_fail_no_request() {
    use sqlx::Connection;
    let database_url = fresh_postgres_database().await;
    let server = TestServer::start_with(
        Backend::Postgres,
        Options {
            database_url: Some(database_url.clone()),
            ..Options::default()
        },
    )
    .await;
    // Connections in use, then kept.
    busy_reads(&server).await;
    token_writes(&server, 0).await;
    let name = database_url.rsplit('/').next().expect("a database name");
    let admin = std::env::var("TESSERA_TEST_POSTGRES_URL").expect("the test PostgreSQL");
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
    let pids: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(&mut conn)
    .await
    .expect("the server's sessions");
    assert!(!pids.is_empty(), "the server had no session to end");
    sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS ended (pid)")
        .bind(&pids)
        .execute(&mut conn)
        .await
        .expect("end the sessions");
    // They are gone once PostgreSQL no longer lists them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&pids)
                .fetch_one(&mut conn)
                .await
                .expect("count the sessions");
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions still listed: {left}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    busy_reads(&server).await;
    token_writes(&server, 1).await;
    busy_reads(&server).await;
    server.stop().await;
}

/// Sixteen reads at once, each answered.
async fn busy_reads(server: &TestServer) {
    let calls = (0..16).map(|_| server.call(reqwest::Method::GET, "/v1/instances", None, TOKEN));
    for (status, body) in futures::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// Four API tokens made at once, each made.
async fn token_writes(server: &TestServer, round: usize) {
    let bodies: Vec<Value> = (0..4)
        .map(|i| json!({"name": format!("t-{round}-{i}")}))
        .collect();
    let calls = bodies
        .iter()
        .map(|body| server.call(reqwest::Method::POST, "/v1/tokens", Some(body), TOKEN));
    for (status, body) in futures::future::join_all(calls).await {
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}
