//! Workflows: `cluster_create` (all nodes or none) and `server_drain`.

use crate::harness::{Backend, Options, TOKEN, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use tessera_core::{CpuSet, HostId};

crate::on_both_backends!(
    a_cluster_is_created_whole,
    a_cluster_that_does_not_fit_leaves_nothing,
    a_cancelled_cluster_leaves_nothing,
    draining_a_server_moves_its_instances,
    a_drain_without_room_changes_nothing,
    a_forced_delete_drains_first,
    bad_workflows_are_400
);

async fn submit(server: &TestServer, workflow_type: &str, parameters: Value) -> Value {
    let (status, op) = server
        .post(
            "/v1/workflows/submit",
            &json!({"workspace": "default", "workflow_type": workflow_type, "parameters": parameters}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    assert_eq!(op["status"], "pending");
    op
}

async fn cluster_nodes(server: &TestServer, name: &str, state: &str) -> Vec<Value> {
    let list = server
        .get_ok(&format!(
            "/v1/instances?labels=cluster={name}&state={state}"
        ))
        .await;
    list["items"].as_array().cloned().unwrap_or_default()
}

async fn a_cluster_is_created_whole(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-3", "fin-01").await;
    server.add_server("node-2", "0-3", "fin-01").await;
    let op = submit(
        &server,
        "cluster_create",
        json!({"cluster_name": "k8s-prod", "node_count": 3, "type": "cx21"}),
    )
    .await;
    let id = op["id"].as_str().expect("id");
    let done = server.wait_operation(id, TOKEN).await;
    assert_eq!(done["status"], "completed", "{done}");
    let workflow = server.get_ok(&format!("/v1/workflows/{id}")).await;
    assert_eq!(workflow["workflow_type"], "cluster_create");
    assert_eq!(workflow["status"], "completed");
    assert!(workflow["created_at"].is_string() && workflow["updated_at"].is_string());
    let nodes = cluster_nodes(&server, "k8s-prod", "running").await;
    let names: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["k8s-prod-1", "k8s-prod-2", "k8s-prod-3"]);
    assert_eq!(
        done["result"]["instances"].as_array().map(Vec::len),
        Some(3)
    );
    let mut seen = HashSet::new();
    for node in &nodes {
        let host = node["status"]["host_id"]
            .as_str()
            .expect("host")
            .to_string();
        for cpu in CpuSet::parse_list(node["status"]["cpus"].as_str().expect("cpus"))
            .expect("cpus")
            .iter()
        {
            assert!(
                seen.insert((host.clone(), cpu)),
                "CPU {cpu} of {host} twice"
            );
        }
    }
    // It is an operation too; a finished workflow cannot be cancelled; an
    // ordinary operation is not a workflow.
    let ops = server.get_ok("/v1/operations?kind=cluster_create").await;
    assert_eq!(ops[0]["id"], json!(id));
    let (status, _) = server
        .post_raw(&format!("/v1/workflows/{id}/cancel"), "")
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, servers) = server.get("/v1/operations?kind=server_create").await;
    let (status, body) = server
        .get(&format!(
            "/v1/workflows/{}",
            servers[0]["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    server.stop().await;
}

async fn a_cluster_that_does_not_fit_leaves_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-3", "fin-01").await;
    // Three nodes of 2 CPUs on 4 CPUs: two would fit, so none may stay.
    let op = submit(
        &server,
        "cluster_create",
        json!({"cluster_name": "big", "node_count": 3, "type": "cx21"}),
    )
    .await;
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"].as_str().is_some_and(|e| e.contains("big-3")),
        "{done}"
    );
    assert!(cluster_nodes(&server, "big", "running").await.is_empty());
    let terminated = cluster_nodes(&server, "big", "terminated").await;
    assert_eq!(terminated.len(), 3);
    assert!(terminated.iter().all(|n| n["status"]["cpus"] == ""));
    let whole = server.run_instance(TOKEN, "whole", "cx41").await;
    assert_eq!(
        whole["status"]["cpus"], "0-3",
        "every CPU is free again: {whole}"
    );
    server.stop().await;
}

async fn a_cancelled_cluster_leaves_nothing(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["create:slow-:hang"],
            agent_timeout: Duration::from_secs(20),
            ..Options::default()
        },
    )
    .await;
    let host = server.add_server("slow-1", "0-7", "fin-01").await;
    let op = submit(
        &server,
        "cluster_create",
        json!({"cluster_name": "stuck", "node_count": 2, "type": "cx21"}),
    )
    .await;
    let id = op["id"].as_str().expect("id");
    for _ in 0..200 {
        let placed = cluster_nodes(&server, "stuck", "provisioning").await;
        if placed
            .iter()
            .filter(|n| n["status"]["host_id"] == json!(host))
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, cancelled) = server
        .post_raw(&format!("/v1/workflows/{id}/cancel"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let done = server.wait_operation(id, TOKEN).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    let terminated = cluster_nodes(&server, "stuck", "terminated").await;
    assert_eq!(terminated.len(), 2);
    assert!(terminated.iter().all(|n| n["status"]["cpus"] == ""));
    let sim = server.running.sim.as_ref().expect("sim");
    assert_eq!(
        sim.host(&HostId::new(host.as_str()))
            .expect("host")
            .instance_count(),
        0
    );
    server.stop().await;
}

async fn draining_a_server_moves_its_instances(backend: Backend) {
    let server = TestServer::start(backend).await;
    let a = server.add_server("node-a", "0-7", "fin-01").await;
    let running = server.run_instance(TOKEN, "web", "cx21").await;
    let stopped = server.run_instance(TOKEN, "batch", "cx21").await;
    let stopped_id = stopped["id"].as_str().expect("id");
    let (_, stopping) = server
        .post_raw(&format!("/v1/instances/{stopped_id}/stop"), "")
        .await;
    server
        .wait_operation(stopping["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    let b = server.add_server("node-b", "0-7", "fin-01").await;

    let op = submit(&server, "server_drain", json!({"server_id": a})).await;
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["moved"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        server.get_ok(&format!("/v1/servers/{a}/status")).await["status"],
        "drained"
    );
    let sim = server.running.sim.as_ref().expect("sim");
    let (sim_a, sim_b) = (
        sim.host(&HostId::new(a.as_str())).expect("a"),
        sim.host(&HostId::new(b.as_str())).expect("b"),
    );
    assert_eq!(sim_a.instance_count(), 0);
    for (instance, state, runs) in [(&running, "running", true), (&stopped, "stopped", false)] {
        let id = instance["id"].as_str().expect("id");
        let now = server.get_ok(&format!("/v1/instances/{id}")).await;
        assert_eq!(now["status"]["host_id"], json!(b), "{now}");
        assert_eq!(now["status"]["state"], state);
        assert_eq!(now["operation_id"], json!(null));
        assert_eq!(sim_b.instance(id), Some(runs));
    }
    // A drained host takes nothing new; the moved instances still work.
    let next = server.run_instance(TOKEN, "next", "cx11").await;
    assert_eq!(next["status"]["host_id"], json!(b));
    let (status, deleting) = server
        .delete(&format!(
            "/v1/instances/{}",
            running["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let op = server
        .wait_operation(deleting["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(op["status"], "completed");
    // Draining a drained server is a conflict.
    let (status, body) = server
        .post(
            "/v1/workflows/submit",
            &json!({"workflow_type": "server_drain", "parameters": {"server_id": a}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    server.stop().await;
}

async fn a_drain_without_room_changes_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let a = server.add_server("node-a", "0-3", "fin-01").await;
    let instance = server.run_instance(TOKEN, "web", "cx41").await;
    server.add_server("node-b", "0-1", "fin-01").await;
    let op = submit(&server, "server_drain", json!({"server_id": "node-a"})).await;
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(
        server.get_ok(&format!("/v1/servers/{a}/status")).await["status"],
        "running"
    );
    let now = server
        .get_ok(&format!(
            "/v1/instances/{}",
            instance["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(now["status"]["host_id"], json!(a));
    assert_eq!(now["status"]["state"], "running");
    assert_eq!(now["operation_id"], json!(null));
    server.stop().await;
}

async fn a_forced_delete_drains_first(backend: Backend) {
    let server = TestServer::start(backend).await;
    let a = server.add_server("node-a", "0-3", "fin-01").await;
    let instance = server.run_instance(TOKEN, "web", "cx21").await;
    let b = server.add_server("node-b", "0-3", "fin-01").await;
    let (status, body) = server.delete(&format!("/v1/servers/{a}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, op) = server.delete(&format!("/v1/servers/{a}?force=true")).await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        server.get_ok(&format!("/v1/servers/{a}/status")).await["status"],
        "decommissioned"
    );
    let now = server
        .get_ok(&format!(
            "/v1/instances/{}",
            instance["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(now["status"]["host_id"], json!(b), "{now}");
    assert_eq!(now["status"]["state"], "running");
    server.stop().await;
}

async fn bad_workflows_are_400(backend: Backend) {
    let server = TestServer::start(backend).await;
    for body in [
        json!({"workflow_type": "world_peace", "parameters": {}}),
        json!({"workflow_type": "cluster_create", "parameters": {"cluster_name": "x"}}),
        json!({"workflow_type": "cluster_create", "parameters": {"cluster_name": "x", "node_count": 0}}),
        json!({"workflow_type": "cluster_create", "parameters": {"cluster_name": "x", "node_count": 1000}}),
        json!({"workflow_type": "cluster_create", "parameters": {"cluster_name": "bad name", "node_count": 1}}),
        json!({"workflow_type": "cluster_create", "parameters": {"cluster_name": "x", "node_count": 1, "type": "zz"}}),
        json!({"workflow_type": "cluster_create", "parameters": {"cluster_name": "x", "node_count": 1, "colour": 1}}),
        json!({"workflow_type": "cluster_create", "parameters": {"cluster_name": "x", "node_count": 1, "labels": {"cluster": "other"}}}),
        json!({"workflow_type": "server_drain", "parameters": {}}),
        json!({"workflow_type": "cluster_create"}),
    ] {
        let (status, reply) = server.post("/v1/workflows/submit", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {reply}");
        assert_eq!(reply["error"], "INVALID_REQUEST");
    }
    let (status, _) = server
        .post(
            "/v1/workflows/submit",
            &json!({"workflow_type": "server_drain", "parameters": {"server_id": "nope"}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .post("/v1/workflows/submit", &json!({"workspace": "elsewhere", "workflow_type": "cluster_create", "parameters": {"cluster_name": "x", "node_count": 1}}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(server.get_ok("/v1/operations").await, json!([]));
    assert_eq!(
        server.get_ok("/v1/instances?state=terminated").await["items"],
        json!([])
    );
    server.stop().await;
}
