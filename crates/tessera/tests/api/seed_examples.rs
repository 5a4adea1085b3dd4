//! Every request example of the provisioning and instances API documents,
//! sent byte for byte as they are written there. Each is accepted, except
//! where it names an object that does not exist, which gets the documented
//! error naming it.

use crate::harness::{Backend, KEY, TOKEN, TestServer, assert_error};
use crate::on_both_backends;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_backends!(the_seeds_request_examples_are_accepted_as_written);

const LOGIN: &str = r#"{
  "username": "admin",
  "password": "admin123"
}"#;

const REFRESH: &str = r#"{
  "refresh_token": "eyJhbGc..."
}"#;

const SERVER_CREATE: &str = r#"{
  "workspace": "production",
  "provider": "upcloud",
  "plan": "2xCPU-4GB",
  "hostname": "web-01",
  "zone": "de-fra1",
  "check_mode": false,
  "tags": ["web", "production"]
}"#;

const SERVER_DELETE: &str = r#"{
  "workspace": "production",
  "server_id": "srv-abc123",
  "force": false
}"#;

const TASKSERV_CREATE: &str = r#"{
  "workspace": "production",
  "name": "kubernetes",
  "servers": ["web-01", "web-02"],
  "config": {
    "version": "1.28.0"
  },
  "check_mode": false
}"#;

const TASKSERV_DELETE: &str = r#"{
  "workspace": "production",
  "taskserv_id": "tsk-xyz789"
}"#;

const WORKFLOW_SUBMIT: &str = r#"{
  "workspace": "production",
  "workflow_type": "cluster_create",
  "parameters": {
    "cluster_name": "k8s-prod",
    "node_count": 3
  }
}"#;

const WORKSPACE_CREATE: &str = r#"{
  "name": "staging",
  "path": "/opt/workspaces/staging",
  "activate": false
}"#;

const INSTANCE_CREATE: &str = r#"{
  "metadata": {
    "name": "web-server-01",
    "labels": {
      "env": "production",
      "team": "platform"
    }
  },
  "spec": {
    "type": "cx31",
    "image": "ubuntu-22.04",
    "vcpus": 2,
    "memory_mb": 4096,
    "disk_gb": 80,
    "vpc_id": "vpc-abc123",
    "subnet_id": "subnet-def456",
    "security_groups": ["sg-web", "sg-ssh"],
    "ssh_key_ids": ["key-001"],
    "user_data": "IyEvYmluL2Jhc2gKYXB0IHVwZGF0ZQ=="
  }
}"#;

/// Sends `body` as written.
async fn send(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, Value) {
    server.request(method, path, body, token).await
}

fn names(body: &Value, what: &str) {
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains(what)),
        "the error names {what}: {body}"
    );
}

async fn the_seeds_request_examples_are_accepted_as_written(backend: Backend) {
    let server = TestServer::start(backend).await;
    // The documents' world: an admin whose password is admin123, working
    // in the workspace "production".
    let (_, users) = server.call(Method::GET, "/v1/users", None, TOKEN).await;
    let admin_id = users[0]["id"].as_str().expect("admin").to_string();
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/v1/users/{admin_id}"),
            Some(&json!({"password": "admin123"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/workspaces/create",
            Some(&json!({"name": "production", "activate": true})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // POST /v1/auth/login
    let (status, session) = send(&server, Method::POST, "/v1/auth/login", Some(LOGIN), None).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["expires_in"], 86400);
    let jwt = session["token"].as_str().expect("token").to_string();
    let token = Some(jwt.as_str());
    // POST /v1/auth/refresh: the document's token is a placeholder.
    let (status, body) = send(
        &server,
        Method::POST,
        "/v1/auth/refresh",
        Some(REFRESH),
        None,
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    names(&body, "refresh token");

    // POST /v1/servers/create: no address; the server takes its agent's.
    let (status, op) = send(
        &server,
        Method::POST,
        "/v1/servers/create",
        Some(SERVER_CREATE),
        token,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    assert_eq!(op["status"], "pending");
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), &jwt)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let (status, web01) = server
        .call(Method::GET, "/v1/servers/web-01/status", None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK, "{web01}");
    assert_eq!(
        (&web01["provider"], &web01["plan"], &web01["zone"]),
        (&json!("upcloud"), &json!("2xCPU-4GB"), &json!("de-fra1")),
        "{web01}"
    );
    // DELETE /v1/servers/{id}: the document's server does not exist.
    let (status, body) = send(
        &server,
        Method::DELETE,
        "/v1/servers/srv-abc123",
        Some(SERVER_DELETE),
        token,
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    names(&body, "srv-abc123");

    // POST /v1/taskservs/create: no taskserv "kubernetes" in the catalog.
    let (status, body) = send(
        &server,
        Method::POST,
        "/v1/taskservs/create",
        Some(TASKSERV_CREATE),
        token,
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    names(&body, "kubernetes");
    // DELETE /v1/taskservs/{id}
    let (status, body) = send(
        &server,
        Method::DELETE,
        "/v1/taskservs/tsk-xyz789",
        Some(TASKSERV_DELETE),
        token,
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    names(&body, "tsk-xyz789");

    // POST /v1/workflows/submit
    let (status, op) = send(
        &server,
        Method::POST,
        "/v1/workflows/submit",
        Some(WORKFLOW_SUBMIT),
        token,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    assert_eq!(op["status"], "pending");

    // POST /v1/workspaces/create
    let (status, created) = send(
        &server,
        Method::POST,
        "/v1/workspaces/create",
        Some(WORKSPACE_CREATE),
        token,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(
        (&created["name"], &created["path"], &created["active"]),
        (
            &json!("staging"),
            &json!("/opt/workspaces/staging"),
            &json!(false)
        )
    );

    // POST /v1/instances: the document's key does not exist ...
    let (status, body) = send(
        &server,
        Method::POST,
        "/v1/instances",
        Some(INSTANCE_CREATE),
        token,
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    names(&body, "key-001");
    // ... and the same request with a key of the workspace is made.
    let (status, key) = server
        .call(
            Method::POST,
            "/v1/ssh-keys",
            Some(&json!({"name": "mine", "public_key": KEY})),
            &jwt,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let with_key = INSTANCE_CREATE.replace("key-001", key["id"].as_str().expect("id"));
    // Its network does not exist either ...
    let (status, body) = send(
        &server,
        Method::POST,
        "/v1/instances",
        Some(&with_key),
        token,
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    names(&body, "vpc-abc123");
    // ... until the workspace has a VPC, subnet and groups of those names
    // (references take ids or names).
    for (path, body) in [
        ("/v1/vpcs", json!({"name": "vpc-abc123"})),
        (
            "/v1/subnets",
            json!({"vpc_id": "vpc-abc123", "name": "subnet-def456"}),
        ),
        ("/v1/security-groups", json!({"name": "sg-web"})),
        ("/v1/security-groups", json!({"name": "sg-ssh"})),
    ] {
        let (status, made) = server.call(Method::POST, path, Some(&body), &jwt).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {made}");
    }
    let (status, instance) = send(
        &server,
        Method::POST,
        "/v1/instances",
        Some(&with_key),
        token,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{instance}");
    assert_eq!(instance["metadata"]["labels"]["team"], "platform");
    assert_eq!(
        instance["spec"]["security_groups"],
        json!(["sg-web", "sg-ssh"])
    );
    assert_eq!(instance["status"]["state"], "provisioning");
    // DELETE /v1/instances/inst-a1b2c3
    let (status, body) = send(
        &server,
        Method::DELETE,
        "/v1/instances/inst-a1b2c3",
        None,
        token,
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    names(&body, "inst-a1b2c3");
    server.stop().await;
}
