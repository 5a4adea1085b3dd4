//! Serverless deployments on the real `container` driver: an image the
//! test builds (busybox's httpd serving a page, a health file and two CGI
//! scripts) pushed to a private registry on localhost, deployed through
//! the Verda face, called through the front door with an inference key.
//! Root, runc and Debian's docker-registry are needed (see `dataplane.rs`;
//! elsewhere it says why it is skipped).

use crate::dataplane::{cannot_run, container_agent_with, tiny_tarball};
use crate::harness::{Backend, Options, TOKEN, TestServer, eventually};
use crate::verda::{Verda, plant_request, top_up};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The app's layer: a tar.gz of `files` (path, mode, text).
fn layer(dir: &Path, files: &[(&str, u32, &str)]) -> Vec<u8> {
    let root = dir.join("layer");
    for (path, mode, text) in files {
        let file = root.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, text).expect("write");
        let mut perms = std::fs::metadata(&file).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, *mode);
        std::fs::set_permissions(&file, perms).expect("chmod");
    }
    let out = dir.join("layer.tar.gz");
    let made = Command::new("tar")
        .args(["--owner=0", "--group=0", "-C"])
        .arg(&root)
        .arg("-czf")
        .arg(&out)
        .arg(".")
        .output()
        .expect("tar");
    assert!(made.status.success(), "{made:?}");
    std::fs::read(out).expect("layer")
}

/// Pushes the app image (the tiny image's root and the app's layer).
async fn push_app(
    registry: &tessera_agent::testkit::Registry,
    dir: &Path,
    auth: (&str, &str),
) -> String {
    let app = layer(
        dir,
        &[
            ("www/index.html", 0o644, "hello from a replica\n"),
            ("www/health", 0o644, "ok\n"),
            (
                "www/cgi-bin/env",
                0o755,
                "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\n\
                 echo \"API_TOKEN=$API_TOKEN\"\necho \"GREETING=$GREETING\"\n\
                 cat /secret-files/tokens.txt\n\
                 grep -q ' /dev/shm tmpfs' /proc/mounts && echo shm=tmpfs\n\
                 [ -d /data ] && echo data=dir\n\
                 echo \"host=$(hostname)\"\n",
            ),
            (
                "www/cgi-bin/spin",
                0o755,
                "#!/bin/sh\n(timeout \"${QUERY_STRING:-5}\" sh -c 'while :; do :; done') </dev/null >/dev/null 2>&1 &\n\
                 printf 'Content-Type: text/plain\\r\\n\\r\\n'\necho spinning\n",
            ),
            (
                "www/cgi-bin/slow",
                0o755,
                "#!/bin/sh\nsleep \"${QUERY_STRING:-1}\"\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"done by $(hostname)\"\n",
            ),
        ],
    );
    let reference = format!("{}/apps/echo:v1", registry.addr);
    let config = json!({"architecture": tessera_agent::testkit::go_arch(), "os": "linux",
        "config": {"Entrypoint": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
                   "Env": ["GREETING=from-the-image"], "WorkingDir": "/www"},
        "rootfs": {"type": "layers", "diff_ids": []}});
    registry
        .client()
        .push(
            &reference.parse().expect("reference"),
            &[
                oci_client::client::ImageLayer::oci_v1_gzip(
                    std::fs::read(tiny_tarball()).expect("the tiny image"),
                    None,
                ),
                oci_client::client::ImageLayer::oci_v1_gzip(app, None),
            ],
            oci_client::client::Config::oci_v1(config.to_string().into_bytes(), None),
            &oci_client::secrets::RegistryAuth::Basic(auth.0.into(), auth.1.into()),
            None,
        )
        .await
        .expect("push");
    reference
}

/// A request through the front door: status, body, time taken.
async fn call(url: &str, key: &str) -> (StatusCode, String, Duration) {
    let started = Instant::now();
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await
        .expect("the front door answers");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    (status, body, started.elapsed())
}

async fn replicas(verda: &Verda<'_>, name: &str) -> Vec<Value> {
    verda
        .get(&format!("/container-deployments/{name}/replicas"))
        .await["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_scales_from_zero_serves_its_secrets_and_goes_back_to_zero() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: the real data plane cannot run here: {why}");
        return;
    }
    if let Some(why) = tessera_agent::testkit::registry_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = tessera_agent::testkit::Registry::start(
        &dir.path().join("registry"),
        Some(("pusher", "s3cret-pw")),
    )
    .await;
    let image = push_app(&registry, dir.path(), ("pusher", "s3cret-pw")).await;
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            agent_timeout: Duration::from_secs(60),
            vpc_pool: Some("10.252.9.0/24"),
            ..Options::default()
        },
    )
    .await;
    let state = dir.path().join("agent");
    let _agent = container_agent_with(
        &server,
        "serverless-host",
        &state,
        9,
        &["--insecure-registry", &registry.addr],
    )
    .await;
    let verda = Verda::login(&server, "default").await;
    top_up(&server, "default", 1000.0).await;

    // Secrets, file secrets and the registry's credentials.
    for (path, body) in [
        (
            "/secrets",
            json!({"name": "api-token", "value": "tk_live_123"}),
        ),
        (
            "/file-secrets",
            json!({"name": "conf", "files": [{"file_name": "tokens.txt", "base64_content": STANDARD.encode("file-secret-line\n")}]}),
        ),
        (
            "/container-registry-credentials",
            json!({"name": "local", "type": "custom", "docker_config_json":
                json!({"auths": {registry.addr.clone(): {"auth": STANDARD.encode("pusher:s3cret-pw")}}}).to_string()}),
        ),
    ] {
        let (status, answer) = verda.json(Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {answer}");
    }
    let (status, created) = verda
        .json(
            Method::POST,
            "/container-deployments",
            Some(json!({
                "name": "echo",
                "container_registry_settings": {"is_private": true, "credentials": {"name": "local"}},
                "containers": [{
                    "image": image,
                    "exposed_port": 8080.0,
                    "healthcheck": {"enabled": true, "port": 8080, "path": "/health"},
                    "env": [
                        {"name": "API_TOKEN", "value_or_reference_to_secret": "api-token", "type": "secret"},
                    ],
                    "volume_mounts": [
                        {"type": "secret", "mount_path": "/secret-files", "secret_name": "conf"},
                        {"type": "memory", "mount_path": "/dev/shm", "size_in_mb": 64},
                        {"type": "scratch", "mount_path": "/data"},
                    ],
                }],
                "compute": {"name": "General Compute", "size": 1},
                "scaling": {
                    "min_replica_count": 0, "max_replica_count": 2,
                    "scale_up_policy": {"delay_seconds": 0},
                    "scale_down_policy": {"delay_seconds": 2},
                    "queue_message_ttl_seconds": 120,
                    "concurrent_requests_per_replica": 1,
                    "scaling_triggers": {"queue_load": {"threshold": 1}},
                },
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let endpoint = created["endpoint_base_url"]
        .as_str()
        .expect("endpoint")
        .to_string();
    assert!(endpoint.ends_with("/inference/echo"), "{endpoint}");
    // While in use, its secrets and credentials stay.
    for path in [
        "/secrets/api-token",
        "/file-secrets/conf",
        "/container-registry-credentials/local",
    ] {
        let (status, answer) = verda.json(Method::DELETE, path, None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {answer}");
    }
    // At zero: healthy, no replica.
    assert_eq!(
        verda.get("/container-deployments/echo/status").await["status"],
        "healthy"
    );
    assert!(replicas(&verda, "echo").await.is_empty());

    let (status, key) = server
        .call(
            Method::POST,
            "/v1/inference-keys",
            Some(&json!({"name": "test"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().expect("key").to_string();
    let (status, _, _) = call(&format!("{endpoint}/"), "tsk_inf_wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A cold start: from zero to the first answer (the image is pulled
    // from the private registry the first time).
    let (status, body, cold) = call(&format!("{endpoint}/cgi-bin/env"), &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eprintln!("cold start with the image pull: {} ms", cold.as_millis());
    // The desired state kept for the agent holds the replica's workload
    // sealed: no secret in clear in the database.
    let kept = server
        .running
        .app
        .store()
        .work_after("serverless-host", 0)
        .await
        .expect("store");
    assert!(kept.iter().any(|w| w.desired.contains("sealed_workload")));
    for work in &kept {
        for secret in ["tk_live_123", "file-secret-line", "s3cret-pw"] {
            assert!(!work.desired.contains(secret), "{}", work.desired);
        }
    }
    for line in [
        "API_TOKEN=tk_live_123",
        "GREETING=from-the-image",
        "file-secret-line",
        "shm=tmpfs",
        "data=dir",
    ] {
        assert!(body.contains(line), "{line} not in {body}");
    }
    let (status, body, _) = call(&format!("{endpoint}/"), &key).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "hello from a replica\n")
    );
    assert_eq!(replicas(&verda, "echo").await.len(), 1);

    // Asynchronously: an id at once, then its status and its answer, at
    // the deployment's sibling paths (as Verda's SDK builds them).
    let accepted = reqwest::Client::new()
        .post(format!("{endpoint}/cgi-bin/env"))
        .bearer_auth(&key)
        .header("Prefer", "respond-async")
        .body("{}")
        .send()
        .await
        .expect("the front door answers");
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let inference_id = accepted.headers()["x-inference-id"]
        .to_str()
        .expect("id")
        .to_string();
    let accepted: Value = accepted.json().await.expect("json");
    assert_eq!(accepted["Id"], inference_id.as_str());
    assert_eq!(accepted["StatusPath"], "/status/echo");
    let base = endpoint.rsplit_once('/').expect("a path").0.to_string();
    let ask = |what: &'static str| {
        let (url, key, id) = (
            format!("{base}/{what}/echo"),
            key.clone(),
            inference_id.clone(),
        );
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth(key)
                .header("X-Inference-Id", id)
                .send()
                .await
                .expect("answered");
            (response.status(), response.text().await.unwrap_or_default())
        }
    };
    eventually(
        Duration::from_secs(30),
        "the async request completed",
        || async {
            let (status, body) = ask("status").await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body.contains("\"Completed\"").then_some(())
        },
    )
    .await;
    let (status, result) = ask("result").await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert!(result.contains("API_TOKEN=tk_live_123"), "{result}");

    // An async request whose control-plane process stopped before sending
    // it is taken over and answered: rebuilt as it was asked.
    let d = plant_request(
        &server,
        "echo",
        ("orphaned-request", "a-process-that-stopped", "Queue"),
        json!({"method": "GET", "path": "/cgi-bin/env?from=orphan", "headers": [], "body": ""}),
    )
    .await;
    let store = server.running.app.store();
    let recovered = eventually(
        Duration::from_secs(30),
        "the orphaned request answered",
        || async {
            let r = store
                .inference_request(&d.project_id, "orphaned-request")
                .await
                .expect("read")
                .expect("kept");
            (r.status == "Completed").then_some(r)
        },
    )
    .await;
    assert_eq!(recovered.status_code, 200, "{recovered:?}");
    let answer = STANDARD.decode(&recovered.body).expect("base64");
    assert!(
        String::from_utf8_lossy(&answer).contains("API_TOKEN=tk_live_123"),
        "{recovered:?}"
    );

    // A burst of slow requests: a second replica, no more than the max.
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let (url, key) = (format!("{endpoint}/cgi-bin/slow?2"), key.clone());
            tokio::spawn(async move { call(&url, &key).await })
        })
        .collect();
    let mut most = 0;
    for _ in 0..40 {
        // (One let go before the burst may still be stopping.)
        let serving = replicas(&verda, "echo")
            .await
            .iter()
            .filter(|r| r["status"] != "terminating")
            .count();
        most = most.max(serving);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut served_by = std::collections::BTreeSet::new();
    for request in burst {
        let (status, body, _) = request.await.expect("request");
        assert_eq!(status, StatusCode::OK, "{body}");
        served_by.insert(body.trim().to_string());
    }
    assert_eq!(
        most, 2,
        "the burst should take the deployment to its max of 2"
    );
    assert_eq!(served_by.len(), 2, "both replicas answered: {served_by:?}");

    // Idle: back to zero after the down delay.
    eventually(Duration::from_secs(60), "back to zero replicas", || async {
        replicas(&verda, "echo").await.is_empty().then_some(())
    })
    .await;

    // Paused: requests are refused; resumed, served again.
    let (status, _) = verda
        .json(Method::POST, "/container-deployments/echo/pause", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        verda.get("/container-deployments/echo/status").await["status"],
        "paused"
    );
    let (status, body, _) = call(&format!("{endpoint}/"), &key).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _) = verda
        .json(Method::POST, "/container-deployments/echo/resume", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body, warm_cold) = call(&format!("{endpoint}/"), &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eprintln!("cold start, image cached: {} ms", warm_cold.as_millis());

    // The CPU trigger: a replica kept busy past the threshold brings a
    // second one (the queue alone would not), and at rest the deployment
    // goes back to its least.
    let (status, answer) = verda
        .json(
            Method::PATCH,
            "/container-deployments/echo/scaling",
            Some(json!({"min_replica_count": 1, "max_replica_count": 2,
                        "scaling_triggers": {"queue_load": {"threshold": 100},
                                             "cpu_utilization": {"enabled": true, "threshold": 40}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["scaling_triggers"]["cpu_utilization"]["enabled"],
        true
    );
    let (status, body, _) = call(&format!("{endpoint}/cgi-bin/spin?25"), &key).await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "spinning"));
    eventually(
        Duration::from_secs(25),
        "a second replica for a busy CPU",
        || async {
            let now = replicas(&verda, "echo").await;
            (now.len() == 2 && now.iter().all(|r| r["status"] == "running")).then_some(())
        },
    )
    .await;
    // Scaling down lets a replica go without cutting its requests short:
    // with both replicas answering slow requests, the max drops to one;
    // one replica drains (terminating), both requests are answered, then
    // it goes.
    // (The front door finds the new replica healthy within a moment.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (url, key) = (format!("{endpoint}/cgi-bin/slow?5"), key.clone());
            tokio::spawn(async move { call(&url, &key).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, answer) = verda
        .json(
            Method::PATCH,
            "/container-deployments/echo/scaling",
            Some(json!({"max_replica_count": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    eventually(Duration::from_secs(10), "a replica draining", || async {
        let now = replicas(&verda, "echo").await;
        (now.len() == 2 && now.iter().any(|r| r["status"] == "terminating")).then_some(())
    })
    .await;
    let mut served_by = std::collections::BTreeSet::new();
    for request in slow {
        let (status, body, _) = request.await.expect("request");
        assert_eq!(
            status,
            StatusCode::OK,
            "a draining replica's request is answered: {body}"
        );
        served_by.insert(body.trim().to_string());
    }
    assert_eq!(
        served_by.len(),
        2,
        "one request on each replica: {served_by:?}"
    );
    eventually(
        Duration::from_secs(30),
        "the drained replica gone",
        || async { (replicas(&verda, "echo").await.len() == 1).then_some(()) },
    )
    .await;

    // Purge: with one replica busy (its max is one now), waiting requests
    // are dropped.
    let busy = {
        let (url, key) = (format!("{endpoint}/cgi-bin/slow?4"), key.clone());
        tokio::spawn(async move { call(&url, &key).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (url, key) = (format!("{endpoint}/"), key.clone());
            tokio::spawn(async move { call(&url, &key).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, _) = verda
        .json(
            Method::POST,
            "/container-deployments/echo/purge-queue",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    for request in waiting {
        let (status, body, took) = request.await.expect("request");
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            took < Duration::from_secs(3),
            "dropped at once, not served: {took:?}"
        );
    }
    let (status, body, _) = busy.await.expect("request");
    assert_eq!(
        status,
        StatusCode::OK,
        "the request being served is not dropped: {body}"
    );

    // Deleted: its replicas go, then it; its secrets can go then.
    let (status, _) = verda
        .json(
            Method::DELETE,
            "/container-deployments/echo?timeout=60000",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = verda
        .json(Method::GET, "/container-deployments/echo", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body, _) = call(&format!("{endpoint}/"), &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for path in [
        "/secrets/api-token",
        "/file-secrets/conf",
        "/container-registry-credentials/local",
    ] {
        let (status, answer) = verda.json(Method::DELETE, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
    }
    server.stop().await;
}

/// Asks the front door where an async request is: (status, result).
async fn job_outcome(base: &str, name: &str, key: &str, id: &str) -> (Value, (StatusCode, String)) {
    let client = reqwest::Client::new();
    let status: Value = client
        .get(format!("{base}/status/{name}"))
        .bearer_auth(key)
        .header("X-Inference-Id", id)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    let result = client
        .get(format!("{base}/result/{name}"))
        .bearer_auth(key)
        .header("X-Inference-Id", id)
        .send()
        .await
        .expect("result");
    let code = result.status();
    (status, (code, result.text().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_runs_to_completion_and_one_is_stopped_at_its_deadline() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: the real data plane cannot run here: {why}");
        return;
    }
    if let Some(why) = tessera_agent::testkit::registry_missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = tessera_agent::testkit::Registry::start(
        &dir.path().join("registry"),
        Some(("pusher", "pw")),
    )
    .await;
    let image = push_app(&registry, dir.path(), ("pusher", "pw")).await;
    let server = TestServer::start_with(
        Backend::Sqlite,
        Options {
            sim_hosts: false,
            agent_timeout: Duration::from_secs(60),
            vpc_pool: Some("10.252.3.0/24"),
            ..Options::default()
        },
    )
    .await;
    let state = dir.path().join("agent");
    let _agent = container_agent_with(
        &server,
        "jobs-host",
        &state,
        3,
        &["--insecure-registry", &registry.addr],
    )
    .await;
    let verda = Verda::login(&server, "default").await;
    top_up(&server, "default", 1000.0).await;
    let (status, answer) = verda
        .json(
            Method::POST,
            "/container-registry-credentials",
            Some(json!({"name": "local", "type": "custom", "docker_config_json":
                json!({"auths": {registry.addr.clone(): {"auth": STANDARD.encode("pusher:pw")}}}).to_string()})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let job = |name: &str, entrypoint: Option<Value>, deadline: u32| {
        json!({
            "name": name,
            "container_registry_settings": {"is_private": true, "credentials": {"name": "local"}},
            "containers": [{
                "image": image,
                "exposed_port": 8080,
                "healthcheck": {"enabled": true, "port": 8081, "path": "/health"},
                "entrypoint_overrides": entrypoint.unwrap_or(json!({"enabled": true,
                    "entrypoint": ["/bin/busybox", "sh", "-c", "/bin/busybox httpd -p 8081 -h /www; exec /bin/busybox httpd -f -p 8080 -h /www"]})),
            }],
            "compute": {"name": "General Compute", "size": 1},
            "scaling": {"max_replica_count": 2, "queue_message_ttl_seconds": 120, "deadline_seconds": deadline},
        })
    };
    // One that answers its request and exits.
    let once = json!({"enabled": true, "entrypoint": ["/bin/busybox", "sh", "-c",
        "/bin/busybox nc -l -p 8080 -e /bin/busybox httpd -i -h /www & sleep 1; /bin/busybox httpd -p 8081 -h /www; wait"]});
    for body in [job("once", Some(once), 120), job("forever", None, 5)] {
        let (status, created) = verda
            .json(Method::POST, "/job-deployments", Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert!(
            created["endpoint_base_url"]
                .as_str()
                .is_some_and(|u| u.contains("/inference/"))
        );
        assert!(created["created_by_user_id"].is_string(), "{created}");
    }
    let listed = verda.get("/job-deployments").await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(
        verda.get("/job-deployments/once/status").await["status"],
        "running"
    );
    assert_eq!(
        verda.get("/job-deployments/forever/scaling").await,
        json!({"max_replica_count": 2, "queue_message_ttl_seconds": 120, "deadline_seconds": 5})
    );
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
    let submit = |name: &'static str, path: &'static str| {
        let (url, key) = (format!("{base}/{name}{path}"), key.clone());
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .body("{\"work\": 1}")
                .send()
                .await
                .expect("the front door answers");
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            let body: Value = response.json().await.expect("json");
            body["Id"].as_str().expect("an id").to_string()
        }
    };

    // A job runs on its own replica, answers, and its process ends.
    let started = Instant::now();
    let done = submit("once", "/cgi-bin/env").await;
    let result = eventually(Duration::from_secs(60), "the job completed", || async {
        let (status, result) = job_outcome(&base, "once", &key, &done).await;
        (status["Status"] == "Completed").then_some(result)
    })
    .await;
    assert_eq!(result.0, StatusCode::OK, "{}", result.1);
    assert!(result.1.contains("GREETING=from-the-image"), "{}", result.1);
    eprintln!(
        "a job from request to answer: {} ms",
        started.elapsed().as_millis()
    );
    eventually(
        Duration::from_secs(60),
        "its replica gone once it exited",
        || async {
            let instances = server.get_ok("/v1/instances").await;
            let live = instances["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter(|i| i["metadata"]["labels"]["deployment"] == "once")
                .count();
            (live == 0).then_some(())
        },
    )
    .await;
    assert_eq!(
        verda.get("/job-deployments/once/status").await["status"],
        "running"
    );

    // A job that outlives its deadline is stopped, and says so.
    let overdue = submit("forever", "/cgi-bin/slow?300").await;
    let (code, body) = eventually(
        Duration::from_secs(60),
        "the job stopped at its deadline",
        || async {
            let (status, result) = job_outcome(&base, "forever", &key, &overdue).await;
            (status["Status"] == "Completed").then_some(result)
        },
    )
    .await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("deadline_exceeded"), "{body}");

    // Paused: refused; purged: waiting jobs are dropped.
    let (status, _) = verda
        .json(Method::POST, "/job-deployments/forever/pause", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        verda.get("/job-deployments/forever/status").await["status"],
        "paused"
    );
    let response = reqwest::Client::new()
        .post(format!("{base}/forever/"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = verda
        .json(Method::POST, "/job-deployments/forever/resume", None)
        .await;
    assert_eq!(status, StatusCode::CREATED);

    for name in ["once", "forever"] {
        let (status, _) = verda
            .json(Method::DELETE, &format!("/job-deployments/{name}"), None)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(verda.get("/job-deployments").await, json!([]));
    server.stop().await;
}
