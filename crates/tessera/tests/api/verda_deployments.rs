//! The Verda face's container deployments on simulated hosts: what is
//! checked and refused, the shapes Verda's SDKs read, replicas following
//! the scaling options and changes, pause and delete, compute resources,
//! inference keys, and projects kept apart. (`serverless_dataplane.rs`
//! calls a deployment through its front door on the real driver.)

use crate::harness::{Backend, TOKEN, TestServer, eventually};
use crate::on_both_backends;
use crate::verda::{Verda, add_fin_host, plant_request, top_up};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

on_both_backends!(
    deployments_are_checked_and_answered_as_the_sdks_read_them,
    replicas_follow_scaling_changes_pause_and_delete,
    inference_keys_and_projects_guard_the_front_door,
    job_deployments_queue_purge_and_refuse_bad_input,
    concurrent_changes_lose_nothing_and_limits_hold,
    async_requests_of_a_stopped_process_are_taken_over,
    replicas_the_balance_cannot_pay_for_are_not_made,
);

fn refused(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["code"], code, "{body}");
}

/// A deployment as Verda's Python SDK sends one: whole dataclasses, nulls
/// included.
pub fn deployment(name: &str, min: u32, max: u32) -> Value {
    json!({
        "name": name,
        "container_registry_settings": {"is_private": false, "credentials": null},
        "containers": [{
            "image": "registry-1.docker.io/chentex/random-logger:v1.0.1",
            "exposed_port": 8080,
            "name": null,
            "healthcheck": {"enabled": true, "port": 8081, "path": "/health"},
            "entrypoint_overrides": {"enabled": true, "entrypoint": ["python3", "main.py"], "cmd": ["--port", "8080"]},
            "env": [{"name": "MODE", "value_or_reference_to_secret": "test", "type": "plain"}],
            "volume_mounts": [{"type": "scratch", "mount_path": "/data", "size_in_mb": null}],
        }],
        "compute": {"name": "General Compute", "size": 1, "is_available": null},
        "is_spot": false,
        "endpoint_base_url": null,
        "created_at": null,
        "scaling": {
            "min_replica_count": min, "max_replica_count": max,
            "scale_down_policy": {"delay_seconds": 300}, "scale_up_policy": {"delay_seconds": 0},
            "queue_message_ttl_seconds": 500, "concurrent_requests_per_replica": 1,
            "scaling_triggers": {"queue_load": {"threshold": 1}, "cpu_utilization": {"enabled": false, "threshold": null}, "gpu_utilization": null},
        },
    })
}

async fn running_replicas(verda: &Verda<'_>, name: &str, count: usize) -> Vec<Value> {
    eventually(
        Duration::from_secs(30),
        &format!("{name} with {count} running replicas"),
        || async {
            let list = verda
                .get(&format!("/container-deployments/{name}/replicas"))
                .await["list"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (list.len() == count && list.iter().all(|r| r["status"] == "running")).then_some(list)
        },
    )
    .await
}

async fn deployments_are_checked_and_answered_as_the_sdks_read_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-d", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    top_up(&server, "default", 1000.0).await;

    let (status, created) = verda
        .json(
            Method::POST,
            "/container-deployments",
            Some(deployment("logger", 0, 3)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let container = &created["containers"][0];
    assert_eq!(container["name"], "random-logger-0");
    // The Go SDK reads `image` as an object.
    assert_eq!(
        container["image"]["image"],
        "registry-1.docker.io/chentex/random-logger:v1.0.1"
    );
    assert!(container["image"]["last_updated_at"].is_string());
    assert_eq!(container["exposed_port"], 8080);
    assert_eq!(
        container["healthcheck"],
        json!({"enabled": true, "port": 8081, "path": "/health"})
    );
    // A check enabled with neither port nor path, as the Python SDK's
    // HealthcheckSettings() sends it: the exposed port, at /health.
    let mut bare = deployment("bare-check", 0, 1);
    bare["containers"][0]["healthcheck"] = json!({"enabled": true, "port": null, "path": null});
    let (status, made) = verda
        .json(Method::POST, "/container-deployments", Some(bare))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(
        made["containers"][0]["healthcheck"],
        json!({"enabled": true, "port": 8080, "path": "/health"})
    );
    let (status, _) = verda
        .json(Method::DELETE, "/container-deployments/bare-check", None)
        .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        container["volume_mounts"],
        json!([{"type": "scratch", "mount_path": "/data"}])
    );
    assert_eq!(created["scaling"]["max_replica_count"], 3);
    assert_eq!(
        created["scaling"]["scaling_triggers"]["queue_load"]["threshold"],
        1
    );
    assert_eq!(
        created["compute"],
        json!({"name": "General Compute", "size": 1})
    );
    assert!(
        created["endpoint_base_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://") && u.ends_with("/inference/logger")),
        "{created}"
    );
    assert_eq!(verda.get("/container-deployments/logger").await, created);
    assert_eq!(verda.get("/container-deployments").await, json!([created]));
    assert_eq!(
        verda.get("/container-deployments/logger/status").await,
        json!({"status": "healthy"})
    );
    assert_eq!(
        verda.get("/container-deployments/logger/replicas").await,
        json!({"list": []})
    );

    // Credentials that cannot pull its image: ECR's (no token exchange
    // here), and GHCR's for an image on Docker Hub.
    for body in [
        json!({"name": "ecr", "type": "aws-ecr", "access_key_id": "AKIA", "secret_access_key": "s", "region": "eu-north-1", "ecr_repo": "1.dkr.ecr.eu-north-1.amazonaws.com"}),
        json!({"name": "gh", "type": "ghcr", "username": "me", "access_token": "t"}),
    ] {
        let (status, answer) = verda
            .json(Method::POST, "/container-registry-credentials", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }

    // What is refused, and why; nothing is made.
    let with = |patch: &dyn Fn(&mut Value)| {
        let mut body = deployment("other", 0, 1);
        patch(&mut body);
        body
    };
    let bad = [
        (
            with(&|b| b["name"] = json!("Not_Valid")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["name"] = json!("status")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["name"] = json!("logger")),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            with(&|b| b["containers"] = json!([])),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["containers"][0]["exposed_port"] = json!(0)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["containers"][0]["exposed_port"] = json!(80.5)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["containers"][0]["image"] = json!("not an image")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["containers"][0]["env"][0]["type"] = json!("secret")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["containers"][0]["env"][0]["type"] = json!("other")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["containers"][0]["env"][0]["name"] = json!("1BAD")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| {
                b["containers"][0]["volume_mounts"] =
                    json!([{"type": "shared", "mount_path": "/s", "volume_id": "v"}])
            }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| {
                b["containers"][0]["volume_mounts"] =
                    json!([{"type": "memory", "mount_path": "/dev/shm", "size_in_mb": 100}])
            }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| {
                b["containers"][0]["volume_mounts"] =
                    json!([{"type": "secret", "mount_path": "/s", "secret_name": "none"}])
            }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| {
                b["containers"][0]["volume_mounts"] =
                    json!([{"type": "scratch", "mount_path": "/a/../b"}])
            }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| {
                b["containers"][0]["volume_mounts"] =
                    json!([{"type": "scratch", "mount_path": "//"}])
            }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| {
                b["containers"][0]["volume_mounts"] =
                    json!([{"type": "scratch", "mount_path": "/proc/x"}])
            }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| {
                b["container_registry_settings"] =
                    json!({"is_private": true, "credentials": {"name": "ecr"}})
            }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| {
                b["container_registry_settings"] =
                    json!({"is_private": true, "credentials": {"name": "gh"}})
            }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["compute"] = json!({"name": "Quantum", "size": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["compute"] = json!({"name": "General Compute", "size": 3})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["compute"] = json!({"name": "H100", "size": 1})),
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        ),
        (
            with(&|b| b["container_registry_settings"] = json!({"is_private": true})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| {
                b["container_registry_settings"] =
                    json!({"is_private": true, "credentials": {"name": "none"}})
            }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["scaling"]["min_replica_count"] = json!(5)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["scaling"]["max_replica_count"] = json!(0)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // serde would read a struct from an array; no client sends one.
        (
            with(&|b| b["scaling"]["scaling_triggers"]["gpu_utilization"] = json!([null, null])),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["containers"][0]["env"] = json!([["A", "b", "plain"]])),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            with(&|b| b["scaling"]["queue_message_ttl_seconds"] = json!(-1)),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (body, want, code) in bad {
        let (status, answer) = verda
            .json(Method::POST, "/container-deployments", Some(body.clone()))
            .await;
        refused(status, &answer, want, code);
    }
    assert_eq!(
        verda
            .get("/container-deployments")
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Environment variables: each item names its container, with the
    // container's whole list (Python) and one variable (Go).
    let env = verda
        .get("/container-deployments/logger/environment-variables")
        .await;
    assert_eq!(
        env,
        json!([{"container_name": "random-logger-0", "env": [{"name": "MODE", "value_or_reference_to_secret": "test", "type": "plain"}],
                "name": "MODE", "value_or_reference_to_secret": "test", "type": "plain"}])
    );
    let (status, added) = verda
        .json(
            Method::POST,
            "/container-deployments/logger/environment-variables",
            Some(json!({"container_name": "random-logger-0", "env": [{"name": "LEVEL", "value_or_reference_to_secret": "debug", "type": "plain"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added.as_array().map(Vec::len), Some(2));
    let (status, again) = verda
        .json(
            Method::POST,
            "/container-deployments/logger/environment-variables",
            Some(json!({"container_name": "random-logger-0", "env": [{"name": "LEVEL", "value_or_reference_to_secret": "x", "type": "plain"}]})),
        )
        .await;
    refused(status, &again, StatusCode::CONFLICT, "conflict");
    let (status, set) = verda
        .json(
            Method::PATCH,
            "/container-deployments/logger/environment-variables",
            Some(json!({"container_name": "random-logger-0", "env": [{"name": "LEVEL", "value_or_reference_to_secret": "info", "type": "plain"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["container_name"], "random-logger-0");
    assert_eq!(
        set["env"][1],
        json!({"name": "LEVEL", "value_or_reference_to_secret": "info", "type": "plain"})
    );
    let (status, gone) = verda
        .json(
            Method::DELETE,
            "/container-deployments/logger/environment-variables",
            Some(json!({"container_name": "random-logger-0", "env": ["MODE"]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{gone}");
    assert_eq!(
        gone[0]["env"],
        json!([{"name": "LEVEL", "value_or_reference_to_secret": "info", "type": "plain"}])
    );
    let (status, none) = verda
        .json(
            Method::POST,
            "/container-deployments/logger/environment-variables",
            Some(json!({"container_name": "no-such", "env": []})),
        )
        .await;
    refused(status, &none, StatusCode::BAD_REQUEST, "invalid_request");

    // Scaling: a PATCH of any subset answers all of them.
    let (status, scaling) = verda
        .json(
            Method::PATCH,
            "/container-deployments/logger/scaling",
            Some(json!({"max_replica_count": 5, "scale_down_policy": {"delay_seconds": 30}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{scaling}");
    assert_eq!(scaling["max_replica_count"], 5);
    assert_eq!(scaling["scale_down_policy"]["delay_seconds"], 30);
    assert_eq!(scaling["queue_message_ttl_seconds"], 500);
    assert_eq!(
        verda.get("/container-deployments/logger/scaling").await,
        scaling
    );
    let (status, answer) = verda
        .json(
            Method::PATCH,
            "/container-deployments/logger/scaling",
            Some(json!({"min_replica_count": 9})),
        )
        .await;
    refused(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");

    // The Python SDK's update sends back what it read.
    let mut read = verda.get("/container-deployments/logger").await;
    read["is_spot"] = json!(true);
    let (status, updated) = verda
        .json(Method::PATCH, "/container-deployments/logger", Some(read))
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["is_spot"], true);
    assert_eq!(updated["containers"][0]["name"], "random-logger-0");

    // Compute resources: General Compute fits here, GPUs do not.
    let resources = verda.get("/serverless-compute-resources").await;
    let list = resources.as_array().expect("list");
    assert!(
        list.contains(&json!({"name": "General Compute", "size": 1, "is_available": true})),
        "{resources}"
    );
    assert!(
        list.contains(&json!({"name": "H100", "size": 1, "is_available": false})),
        "{resources}"
    );

    for path in [
        "/container-deployments/none",
        "/container-deployments/none/status",
        "/container-deployments/none/replicas",
    ] {
        let (status, answer) = verda.json(Method::GET, path, None).await;
        refused(status, &answer, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, answer) = verda
        .json(
            Method::DELETE,
            "/container-deployments/logger?timeout=nope",
            None,
        )
        .await;
    refused(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");
    server.stop().await;
}

async fn replicas_follow_scaling_changes_pause_and_delete(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-e", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    top_up(&server, "default", 1000.0).await;
    let (status, created) = verda
        .json(
            Method::POST,
            "/container-deployments",
            Some(deployment("web", 1, 3)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let first = running_replicas(&verda, "web", 1).await;
    assert_eq!(
        verda.get("/container-deployments/web/status").await["status"],
        "healthy"
    );
    let replica = &first[0];
    assert_eq!(replica["image_name"], "random-logger");
    assert_eq!(replica["image_tag"], "v1.0.1");
    // A replica is an instance of the project, labelled with its deployment.
    let instance = server
        .get_ok(&format!(
            "/v1/instances/{}",
            replica["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(
        instance["metadata"]["labels"]["deployment"], "web",
        "{instance}"
    );
    // Verda's instance list is the user's instances, not the deployment's.
    let listed = verda.get("/instances").await;
    assert!(
        !listed
            .to_string()
            .contains(replica["id"].as_str().expect("id")),
        "{listed}"
    );
    // Nor is one found, shut down or given a volume through `/instances`:
    // it is its deployment's.
    let replica_id = replica["id"].as_str().expect("id");
    let (status, body) = verda
        .json(Method::GET, &format!("/instances/{replica_id}"), None)
        .await;
    refused(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = verda
        .json(
            Method::PUT,
            "/instances",
            Some(json!({"action": "shutdown", "id": replica_id})),
        )
        .await;
    refused(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let volume = verda
        .create(
            "/volumes",
            json!({"name": "v", "size": 1, "type": "NVMe", "location_code": "FIN-01"}),
        )
        .await;
    let (status, body) = verda
        .json(
            Method::PUT,
            "/volumes",
            Some(json!({"action": "attach", "id": volume, "instance_id": replica_id})),
        )
        .await;
    refused(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        verda.get("/container-deployments/web/status").await["status"],
        "healthy"
    );

    // More at least: made at once.
    let (status, _) = verda
        .json(
            Method::PATCH,
            "/container-deployments/web/scaling",
            Some(json!({"min_replica_count": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let two = running_replicas(&verda, "web", 2).await;

    // A change of what it runs replaces every replica.
    let (status, _) = verda
        .json(
            Method::POST,
            "/container-deployments/web/environment-variables",
            Some(json!({"container_name": "random-logger-0", "env": [{"name": "NEW", "value_or_reference_to_secret": "1", "type": "plain"}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let replaced = eventually(Duration::from_secs(30), "replicas replaced", || async {
        let list = running_replicas(&verda, "web", 2).await;
        let old: Vec<&Value> = list.iter().filter(|r| two.contains(r)).collect();
        old.is_empty().then_some(list)
    })
    .await;
    assert_eq!(replaced.len(), 2);
    let (status, _) = verda
        .json(Method::POST, "/container-deployments/web/restart", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    eventually(Duration::from_secs(30), "replicas restarted", || async {
        let list = running_replicas(&verda, "web", 2).await;
        list.iter().all(|r| !replaced.contains(r)).then_some(())
    })
    .await;

    // Paused: no replica; resumed: back to its minimum.
    let (status, _) = verda
        .json(Method::POST, "/container-deployments/web/pause", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        verda.get("/container-deployments/web/status").await["status"],
        "paused"
    );
    running_replicas(&verda, "web", 0).await;
    let (status, _) = verda
        .json(Method::POST, "/container-deployments/web/resume", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    running_replicas(&verda, "web", 2).await;

    // Deleted: its replicas end, then it goes; its name is free again.
    let (status, _) = verda
        .json(Method::DELETE, "/container-deployments/web", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = verda
        .json(Method::GET, "/container-deployments/web", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let instances = server.get_ok("/v1/instances").await;
    assert!(
        instances["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["metadata"]["labels"]["deployment"] != "web"),
        "{instances}"
    );
    let (status, again) = verda
        .json(
            Method::POST,
            "/container-deployments",
            Some(deployment("web", 0, 1)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    server.stop().await;
}

async fn inference_keys_and_projects_guard_the_front_door(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.user_in("alice", "member", "alpha").await;
    server.user_in("bob", "member", "beta").await;
    let alpha = Verda::login(&server, "alpha").await;
    top_up(&server, "alpha", 1000.0).await;
    let beta = Verda::login(&server, "beta").await;
    top_up(&server, "beta", 1000.0).await;
    let (status, created) = alpha
        .json(
            Method::POST,
            "/container-deployments",
            Some(deployment("private-app", 0, 1)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let endpoint = created["endpoint_base_url"]
        .as_str()
        .expect("url")
        .to_string();
    for (method, path) in [
        (Method::GET, "/container-deployments/private-app"),
        (Method::PATCH, "/container-deployments/private-app/scaling"),
        (Method::POST, "/container-deployments/private-app/pause"),
        (Method::DELETE, "/container-deployments/private-app"),
    ] {
        let (status, answer) = beta.json(method, path, Some(json!({}))).await;
        refused(status, &answer, StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(beta.get("/container-deployments").await, json!([]));

    // Keys: shown once, listed without the key, refused once revoked.
    let beta_token = server.login("bob", "bob-password").await;
    let (status, key) = server
        .call(
            Method::POST,
            "/v1/inference-keys",
            Some(&json!({"name": "prod"})),
            &beta_token,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let beta_key = key["key"].as_str().expect("key").to_string();
    assert!(
        beta_key.starts_with("tsk_inf_")
            && beta_key.starts_with(key["prefix"].as_str().expect("prefix"))
    );
    let (status, dup) = server
        .call(
            Method::POST,
            "/v1/inference-keys",
            Some(&json!({"name": "prod"})),
            &beta_token,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    let (_, listed) = server
        .call(Method::GET, "/v1/inference-keys", None, &beta_token)
        .await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    assert!(listed["items"][0].get("key").is_none(), "{listed}");
    let (_, other) = server
        .call(Method::GET, "/v1/inference-keys", None, TOKEN)
        .await;
    assert_eq!(
        other["items"],
        json!([]),
        "another workspace's keys are not listed"
    );

    let call = |key: Option<String>| {
        let url = format!("{endpoint}/anything");
        async move {
            let mut request = reqwest::Client::new().post(url).body("{}");
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.expect("the front door answers");
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = call(None).await;
    refused(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized_request",
    );
    let (status, body) = call(Some("tsk_inf_".to_string() + &"0".repeat(64))).await;
    refused(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized_request",
    );
    // Beta's key does not reach alpha's deployment.
    let (status, body) = call(Some(beta_key.clone())).await;
    refused(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, _) = server
        .call(Method::DELETE, "/v1/inference-keys/prod", None, &beta_token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(Some(beta_key)).await;
    refused(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized_request",
    );
    let (status, body) = server
        .call(Method::DELETE, "/v1/inference-keys/prod", None, &beta_token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    server.stop().await;
}

async fn job_deployments_queue_purge_and_refuse_bad_input(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-j", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    top_up(&server, "default", 1000.0).await;
    let job = |name: &str, scaling: Value| {
        json!({
            "name": name,
            "containers": [{"image": "registry-1.docker.io/library/busybox:1.36", "exposed_port": 8080,
                "volume_mounts": [{"type": "scratch", "mount_path": "/work", "volumeId": null}]}],
            "compute": {"name": "General Compute", "size": 1},
            "scaling": scaling,
        })
    };
    for scaling in [
        json!({"max_replica_count": 1, "queue_message_ttl_seconds": 300}),
        json!({"max_replica_count": 1, "queue_message_ttl_seconds": 300, "deadline_seconds": 0}),
        json!({"max_replica_count": 1, "queue_message_ttl_seconds": 300, "deadline_seconds": 604801}),
        json!({"max_replica_count": 0, "queue_message_ttl_seconds": 300, "deadline_seconds": 600}),
    ] {
        let (status, answer) = verda
            .json(Method::POST, "/job-deployments", Some(job("bad", scaling)))
            .await;
        refused(status, &answer, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let scaling =
        json!({"max_replica_count": 1, "queue_message_ttl_seconds": 300, "deadline_seconds": 600});
    let (status, created) = verda
        .json(
            Method::POST,
            "/job-deployments",
            Some(job("batch", scaling.clone())),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["scaling"], scaling);
    assert!(created["created_by_user_id"].is_string(), "{created}");
    // A job's container says it (the spec requires it): no cached-image
    // proxy here.
    assert_eq!(
        created["containers"][0]["should_use_cached_image"],
        json!(false),
        "{created}"
    );
    // One namespace with container deployments.
    let (status, answer) = verda
        .json(
            Method::POST,
            "/container-deployments",
            Some(deployment("batch", 0, 1)),
        )
        .await;
    refused(status, &answer, StatusCode::CONFLICT, "conflict");
    let (status, answer) = verda
        .json(Method::GET, "/container-deployments/batch", None)
        .await;
    refused(status, &answer, StatusCode::NOT_FOUND, "not_found");
    let listed = verda.get("/job-deployments").await;
    let mut keys: Vec<&String> = listed[0].as_object().expect("a job").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["compute", "created_at", "created_by_user_id", "name"]
    );
    assert_eq!(
        verda.get("/job-deployments/batch/status").await["status"],
        "running"
    );
    assert_eq!(verda.get("/job-deployments/batch/scaling").await, scaling);

    // Requests are answered at once; with room for one job, the second
    // waits, and a purge drops it.
    let (status, key) = server
        .call(
            Method::POST,
            "/v1/inference-keys",
            Some(&json!({"name": "jobs"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().expect("key").to_string();
    let base = format!("{}/inference", server.url);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = reqwest::Client::new()
            .post(format!("{base}/batch/run"))
            .bearer_auth(&key)
            .body("{}")
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["StatusPath"], "/status/batch");
        ids.push(body["Id"].as_str().expect("id").to_string());
    }
    let ask = |what: &'static str, id: String| {
        let (url, key) = (format!("{base}/{what}/batch"), key.clone());
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .header("X-Inference-Id", id)
                .send()
                .await
                .expect("answered");
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    // The first gets a replica of its own.
    eventually(
        Duration::from_secs(30),
        "a replica for the first job",
        || async {
            let instances = server.get_ok("/v1/instances").await;
            instances["items"]
                .as_array()
                .expect("items")
                .iter()
                .any(|i| i["metadata"]["labels"]["deployment"] == "batch")
                .then_some(())
        },
    )
    .await;
    let (status, waiting) = ask("status", ids[1].clone()).await;
    assert_eq!(status, StatusCode::OK, "{waiting}");
    assert_eq!(waiting["Status"], "Queue");
    let (status, _) = verda
        .json(Method::POST, "/job-deployments/batch/purge-queue", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, dropped) = ask("result", ids[1].clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{dropped}");
    assert_eq!(dropped["code"], "purged");
    let (status, unknown) = ask("status", "not-a-request".into()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");

    let (status, _) = verda
        .json(Method::POST, "/job-deployments/batch/pause", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        verda.get("/job-deployments/batch/status").await["status"],
        "paused"
    );
    let refused_while_paused = reqwest::Client::new()
        .post(format!("{base}/batch/run"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("answered");
    assert_eq!(
        refused_while_paused.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, _) = verda
        .json(Method::DELETE, "/job-deployments/batch", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verda.get("/job-deployments").await, json!([]));
    server.stop().await;
}

/// Changes made at once are each kept (each is made on what the others
/// left, never on a stale read), and limits checked by counting hold when
/// many requests race for the last places.
async fn concurrent_changes_lose_nothing_and_limits_hold(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-c", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    top_up(&server, "default", 1000.0).await;
    let (status, created) = verda
        .json(
            Method::POST,
            "/container-deployments",
            Some(deployment("busy", 0, 2)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");

    // Twelve variables added at once, and the compute changed meanwhile:
    // every one of them is there after.
    let adds = (0..12).map(|i| {
        verda.json(
            Method::POST,
            "/container-deployments/busy/environment-variables",
            Some(json!({"container_name": "random-logger-0",
                        "env": [{"name": format!("VAR_{i}"), "value_or_reference_to_secret": i.to_string(), "type": "plain"}]})),
        )
    });
    let patch = verda.json(
        Method::PATCH,
        "/container-deployments/busy",
        Some(json!({"compute": {"name": "General Compute", "size": 2}})),
    );
    let (answers, patched) = tokio::join!(futures::future::join_all(adds), patch);
    assert_eq!(patched.0, StatusCode::OK, "{}", patched.1);
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
    }
    let env = verda
        .get("/container-deployments/busy/environment-variables")
        .await;
    let names: Vec<&str> = env[0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for i in 0..12 {
        assert!(
            names.contains(&format!("VAR_{i}").as_str()),
            "VAR_{i} kept: {names:?}"
        );
    }
    let now = verda.get("/container-deployments/busy").await;
    assert_eq!(now["compute"]["size"], 2, "{now}");

    // Inference keys: 100 per project, however many ask at once.
    for i in 0..95 {
        let (status, key) = server
            .call(
                Method::POST,
                "/v1/inference-keys",
                Some(&json!({"name": format!("k{i}")})),
                TOKEN,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
    }
    let names: Vec<String> = (0..12).map(|i| format!("late{i}")).collect();
    let bodies: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
    let answers = futures::future::join_all(
        bodies
            .iter()
            .map(|b| server.call(Method::POST, "/v1/inference-keys", Some(b), TOKEN)),
    )
    .await;
    let made = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(made, 5, "{answers:?}");
    for (status, body) in &answers {
        assert!(
            *status == StatusCode::CREATED || *status == StatusCode::FORBIDDEN,
            "{status}: {body}"
        );
    }
    let (_, listed) = server
        .call(Method::GET, "/v1/inference-keys", None, TOKEN)
        .await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(100));
    server.stop().await;
}

/// An async request whose control-plane process stopped (its front door
/// no longer reports) is taken over by another process and queued again;
/// one whose process still reports is left alone.
async fn async_requests_of_a_stopped_process_are_taken_over(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-o", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    top_up(&server, "default", 1000.0).await;
    let (status, created) = verda
        .json(
            Method::POST,
            "/container-deployments",
            Some(deployment("orphans", 0, 1)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let asked = json!({"method": "POST", "path": "/predict?x=1",
                       "headers": [["content-type", "application/json"]], "body": "e30="});
    let store = server.running.app.store();
    let d = plant_request(
        &server,
        "orphans",
        ("req-gone", "process-gone", "Inference"),
        asked.clone(),
    )
    .await;
    // The live process has reported before its request is there: a
    // recovery pass between the two would rightly take an unreported
    // process's request over.
    store
        .report_deployment_load(&d.id, "process-alive", (0, 1), &[], tessera_store::now_ms())
        .await
        .expect("report");
    plant_request(
        &server,
        "orphans",
        ("req-alive", "process-alive", "Inference"),
        asked,
    )
    .await;
    // The live process reports its front door's load; the other does not.
    let reporting = async {
        loop {
            store
                .report_deployment_load(
                    &d.id,
                    "process-alive",
                    (0, 1),
                    &[],
                    tessera_store::now_ms(),
                )
                .await
                .expect("report");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let taken = async {
        let taken = eventually(Duration::from_secs(30), "the orphan taken over", || async {
            let r = store
                .inference_request(&d.project_id, "req-gone")
                .await
                .expect("read")
                .expect("kept");
            (r.owner == store.owner()).then_some(r)
        })
        .await;
        // Another recovery pass (every 5 s) leaves the live one alone too.
        tokio::time::sleep(Duration::from_secs(6)).await;
        taken
    };
    let taken = tokio::select! {
        taken = taken => taken,
        () = reporting => unreachable!("reporting ends never"),
    };
    assert!(
        taken.status == "Queue" || taken.status == "Inference",
        "{taken:?}"
    );
    let alive = store
        .inference_request(&d.project_id, "req-alive")
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(
        alive.owner, "process-alive",
        "a live process keeps its request"
    );
    server.stop().await;
}

/// Replicas are paid for as Verda's instances are: a deployment whose
/// minimum the balance cannot cover for an hour (with what else the project
/// runs) is a 402, as is a change that raises it; and the scaler records
/// no replica the balance cannot pay for (it answers `quota_reached`).
async fn replicas_the_balance_cannot_pay_for_are_not_made(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-f", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    let deploy = |name: &'static str, min: u32| {
        verda.json(
            Method::POST,
            "/container-deployments",
            Some(deployment(name, min, 2)),
        )
    };

    // Nothing in the balance: a minimum of one is refused, none is not.
    let (status, answer) = deploy("paid", 1).await;
    refused(
        status,
        &answer,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_funds",
    );
    let (status, answer) = deploy("idle", 0).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let names = |list: Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["name"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(names(verda.get("/container-deployments").await), ["idle"]);

    // An hour of one replica (0.01 an hour) and a half: one runs, a
    // second is refused, by a new deployment or a raised minimum.
    top_up(&server, "default", 0.015).await;
    let (status, answer) = deploy("paid", 1).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    running_replicas(&verda, "paid", 1).await;
    for (method, path, body) in [
        (
            Method::PATCH,
            "/container-deployments/idle/scaling",
            json!({"min_replica_count": 1}),
        ),
        (
            Method::PATCH,
            "/container-deployments/paid/scaling",
            json!({"min_replica_count": 2}),
        ),
    ] {
        let (status, answer) = verda.json(method, path, Some(body)).await;
        refused(
            status,
            &answer,
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_funds",
        );
    }
    assert_eq!(
        verda.get("/container-deployments/idle/scaling").await["min_replica_count"],
        0
    );

    // A minimum raised behind the API's back (as a balance spent after a
    // deployment was made leaves it): the scaler makes no replica.
    let store = server.running.app.store();
    let idle = store
        .all_deployments()
        .await
        .expect("deployments")
        .into_iter()
        .find(|d| d.name == "idle")
        .expect("idle");
    let mut scaling: Value = serde_json::from_str(&idle.scaling).expect("scaling");
    scaling["min_replicas"] = json!(1);
    assert!(
        store
            .change_deployment(
                &idle.id,
                &tessera_store::DeploymentChange {
                    scaling: Some(scaling.to_string()),
                    ..tessera_store::DeploymentChange::default()
                },
            )
            .await
            .expect("changed")
    );
    eventually(Duration::from_secs(30), "idle at quota_reached", || async {
        (verda.get("/container-deployments/idle/status").await["status"] == "quota_reached")
            .then_some(())
    })
    .await;
    let replicas = verda.get("/container-deployments/idle/replicas").await;
    assert_eq!(replicas["list"], json!([]), "{replicas}");
    server.stop().await;
}
