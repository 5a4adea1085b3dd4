//! `/health`, authentication, unknown routes.

use crate::harness::{Backend, TOKEN, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

crate::on_both_backends!(
    health_is_open,
    every_endpoint_requires_a_token,
    unknown_routes_answer_fastapi_errors
);

async fn health_is_open(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.request(Method::GET, "/health", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime_seconds"].is_u64(), "{body}");
    server.stop().await;
}

async fn every_endpoint_requires_a_token(backend: Backend) {
    let server = TestServer::start(backend).await;
    let endpoints = [
        (Method::POST, "/api/admin/init_server", Some("{}")),
        (Method::DELETE, "/api/admin/decommission_server/h1", None),
        (Method::POST, "/api/compute_units/allocate", Some("{}")),
        (
            Method::DELETE,
            "/api/compute_units/deallocate/h1_c0-3",
            None,
        ),
        (Method::GET, "/api/compute_units/", None),
        (Method::GET, "/api/compute_units", None),
    ];
    for (method, path, body) in endpoints {
        for token in [None, Some("wrong-token"), Some("")] {
            let (status, reply) = server.request(method.clone(), path, body, token).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(reply["detail"].is_string(), "{reply}");
        }
    }
    // Nothing was created by the refused requests.
    let (status, units) = server
        .request(Method::GET, "/api/compute_units/", None, Some(TOKEN))
        .await;
    assert_eq!((status, units), (StatusCode::OK, json!([])));
    server.stop().await;
}

async fn unknown_routes_answer_fastapi_errors(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.get("/api/nothing/here").await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"detail": "Not Found"}))
    );
    let (status, body) = server
        .request(
            Method::PUT,
            "/api/compute_units/allocate",
            Some("{}"),
            Some(TOKEN),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"detail": "Method Not Allowed"})
        )
    );
    // A path under no face's routes is a JSON 404 too: its prefix's face's,
    // else the native API's.
    let (status, body) = server.get("/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "NOT_FOUND", "{body}");
    let (status, body) = server.get("/compute/").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string(), "{body}");
    for path in ["/verda/", "/inference/"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "not_found", "{path}: {body}");
    }
    server.stop().await;
}

/// The bootstrap admin token is shown once, so nothing may fail between
/// its making and its showing: a first start that fails (here the ingress
/// gateway's port is taken) makes none, and the next start shows one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_start_does_not_lose_the_admin_token() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = taken.local_addr().expect("address").port();
    // External port 80 is served on 80 + offset: the port just taken.
    let offset = (port - 80).to_string();
    let server = |data: &std::path::Path, gateway: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
        command
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(gateway)
            .env_remove("TESSERA_ADMIN_TOKEN")
            .env_remove("TESSERA_DATABASE_URL")
            .env("TESSERA_LOG", "warn");
        command
    };
    let gateway = [
        "--gateway-listen",
        "127.0.0.1",
        "--gateway-port-offset",
        &offset,
    ];
    let failed = server(dir.path(), &gateway)
        .output()
        .expect("tessera server");
    assert!(!failed.status.success(), "the first start failed");
    let said = String::from_utf8_lossy(&failed.stderr);
    assert!(said.contains("ingress gateway"), "{said}");
    drop(taken);
    // Without the gateway: a port freed here may be any other test's by
    // now (the suite runs in parallel).
    let mut child = server(dir.path(), &["--gateway-listen", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tessera server");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut token = None;
    let url = loop {
        let line = lines.next().expect("a line").expect("stdout");
        if let Some(t) = line.trim().strip_prefix("export TESSERA_TOKEN=") {
            token = Some(t.to_string());
        }
        if let Some(url) = line.strip_prefix("Tessera is serving on ") {
            break url.trim().to_string();
        }
    };
    let token = token.expect("the admin token shown at the second start");
    let status = reqwest::Client::new()
        .get(format!("{url}/v1/workspaces"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request")
        .status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, StatusCode::OK);
}
