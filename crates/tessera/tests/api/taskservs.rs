//! Taskservs: installed on servers by their agents, really changing them
//! (a file written, a process started), and removed again.

use crate::harness::{Backend, Options, TOKEN, TestServer};
use reqwest::StatusCode;
use serde_json::json;
use std::path::PathBuf;
use tessera_core::HostId;

crate::on_both_backends!(
    a_taskserv_is_installed_and_removed_on_its_servers,
    a_failed_install_is_rolled_back_everywhere,
    bad_taskserv_requests_change_nothing
);

fn host_root(server: &TestServer, host_id: &str) -> PathBuf {
    let sim = server.running.sim.as_ref().expect("sim");
    sim.host(&HostId::new(host_id))
        .expect("sim host")
        .root()
        .to_path_buf()
}

/// Whether a process runs (a zombie does not).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

async fn a_taskserv_is_installed_and_removed_on_its_servers(backend: Backend) {
    let server = TestServer::start(backend).await;
    let a = server.add_server("web-01", "0-3", "fin-01").await;
    let b = server.add_server("web-02", "0-3", "fin-01").await;
    let catalog = server.get_ok("/v1/taskservs/catalog").await;
    let names: Vec<&str> = catalog
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(
        names.contains(&"hello") && names.contains(&"motd"),
        "{catalog}"
    );

    let (status, op) = server
        .post(
            "/v1/taskservs/create",
            &json!({"workspace": "default", "name": "hello", "servers": ["web-01", "web-02"], "config": {"version": "1.2.3", "greeting": "hi there"}, "check_mode": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    assert_eq!(op["status"], "pending");
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["result"]["taskserv_id"]
        .as_str()
        .expect("id")
        .to_string();
    let list = server.get_ok("/v1/taskservs").await;
    assert_eq!(list[0]["id"], json!(id));
    assert_eq!(list[0]["name"], "hello");
    assert_eq!(list[0]["version"], "1.2.3");
    assert_eq!(list[0]["servers"], json!(["web-01", "web-02"]));
    assert_eq!(list[0]["status"], "running");
    let mut pids = Vec::new();
    for (host, hostname) in [(&a, "web-01"), (&b, "web-02")] {
        let root = host_root(&server, host);
        let conf =
            std::fs::read_to_string(root.join("etc/hello/hello.conf")).expect("hello.conf written");
        assert!(
            conf.contains("version=1.2.3")
                && conf.contains("greeting=hi there")
                && conf.contains(&format!("host={hostname}")),
            "{conf}"
        );
        let pid = std::fs::read_to_string(root.join("run/hello.pid"))
            .expect("pid")
            .trim()
            .to_string();
        assert!(alive(&pid), "hello runs on {hostname} as {pid}");
        pids.push(pid);
        let result = &list[0]["results"][hostname];
        assert_eq!(result["status"], "installed", "{result}");
        assert!(
            result["output"]
                .as_str()
                .is_some_and(|o| o.contains("running as pid")),
            "{result}"
        );
    }

    let (status, op) = server
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/taskservs/{id}"),
            Some(&json!({"workspace": "default", "taskserv_id": id}).to_string()),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    for (host, pid) in [(&a, &pids[0]), (&b, &pids[1])] {
        let root = host_root(&server, host);
        assert!(!root.join("etc/hello").exists());
        for _ in 0..50 {
            if !alive(pid) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "hello stopped");
    }
    assert_eq!(server.get_ok("/v1/taskservs").await, json!([]));
    let (status, _) = server.get(&format!("/v1/taskservs/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

async fn a_failed_install_is_rolled_back_everywhere(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["script:bad-"],
            ..Options::default()
        },
    )
    .await;
    let good = server.add_server("good-1", "0-3", "fin-01").await;
    server.add_server("bad-1", "0-3", "fin-01").await;
    let (status, op) = server
        .post("/v1/taskservs/create", &json!({"name": "motd", "servers": ["good-1", "bad-1"], "config": {"message": "hello"}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"].as_str().is_some_and(|e| e.contains("bad-1")),
        "{done}"
    );
    let taskserv = server
        .get_ok(&format!(
            "/v1/taskservs/{}",
            done["resource_id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(taskserv["status"], "failed");
    assert_eq!(
        taskserv["results"]["good-1"]["status"], "rolled_back",
        "{taskserv}"
    );
    assert_eq!(taskserv["results"]["bad-1"]["status"], "failed");
    assert!(
        !host_root(&server, &good).join("etc/motd").exists(),
        "rolled back on good-1"
    );
    server.stop().await;
}

async fn bad_taskserv_requests_change_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("web-01", "0-3", "fin-01").await;
    for (body, expected) in [
        (
            json!({"name": "kubernetes", "servers": ["web-01"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "hello", "servers": []}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "hello", "servers": ["web-01"], "config": [1]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "hello", "servers": ["web-01"], "config": {"bad key": 1}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "hello", "servers": ["web-01"], "config": {"version": 7}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "hello", "servers": ["web-99"]}),
            StatusCode::NOT_FOUND,
        ),
        (json!({"name": "hello"}), StatusCode::BAD_REQUEST),
        (
            json!({"workspace": "elsewhere", "name": "hello", "servers": ["web-01"]}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, reply) = server.post("/v1/taskservs/create", &body).await;
        assert_eq!(status, expected, "{body} -> {reply}");
        assert!(reply["message"].is_string(), "{reply}");
    }
    let (status, op) = server
        .post(
            "/v1/taskservs/create",
            &json!({"name": "hello", "servers": ["web-01"], "check_mode": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["result"]["check_mode"], true, "{done}");
    assert_eq!(server.get_ok("/v1/taskservs").await, json!([]));
    let (status, _) = server.delete("/v1/taskservs/tsk-nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}
