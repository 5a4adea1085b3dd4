//! The Verda face at `/verda/v1`: OAuth2, the catalog, instances,
//! volumes, keys, scripts, balance and billing, rate limits, and the
//! isolation of projects. (`verda_sdk.rs` drives the same face with the
//! official Python SDK.)

use crate::harness::{Backend, Options, TOKEN, TestServer, eventually};
use crate::on_both_backends;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

on_both_backends!(
    oauth_tokens_refresh_once_and_guard_every_private_path,
    the_catalog_and_availability_follow_the_hosts,
    instances_and_volumes_through_their_lifecycle_and_billed,
    projects_cannot_see_each_others_resources,
    rate_limits_answer_429_with_headers,
    scripts_are_paginated_under_a_quota,
    concurrent_attaches_never_share_a_device,
    go_clients_read_every_answer_and_add_their_keys,
    tags_on_instances_and_volumes,
    a_long_instance_list_is_whole_json_across_pages,
    hibernate_deletes_a_shut_down_instance_and_keeps_its_volumes,
    a_delete_joining_another_still_takes_the_volumes_it_names,
    a_deploy_its_host_fails_runs_elsewhere_with_its_volumes,
    a_deploy_needs_an_hour_of_everything_the_project_runs,
    a_deploy_counts_the_instances_still_being_made,
    a_start_needs_an_hour_of_everything_the_project_runs,
    meters_that_billed_volumes_twice_are_repaired_at_start,
    an_instance_sized_past_its_type_is_billed_for_its_size,
    deletes_sent_together_start_one_and_the_rest_answer_204,
    a_bulk_delete_takes_each_instance_its_own_volumes,
);

/// A Verda client of one project.
pub struct Verda<'a> {
    server: &'a TestServer,
    pub token: String,
    pub refresh_token: String,
}

/// Client credentials for `project`, made by the admin.
pub async fn credentials(server: &TestServer, project: &str) -> (String, String) {
    let (status, created) = server
        .call(
            Method::POST,
            "/v1/credentials",
            Some(&json!({"project": project})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["client_id"].as_str().expect("client_id").into(),
        created["client_secret"].as_str().expect("secret").into(),
    )
}

pub async fn top_up(server: &TestServer, project: &str, amount: f64) {
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/v1/workspaces/{project}/balance/top-ups"),
            Some(&json!({ "amount": amount })),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

impl<'a> Verda<'a> {
    /// Logs in with new credentials of `project`.
    pub async fn login(server: &'a TestServer, project: &str) -> Verda<'a> {
        let (id, secret) = credentials(server, project).await;
        let mut verda = Verda {
            server,
            token: String::new(),
            refresh_token: String::new(),
        };
        let (status, tokens) = verda
            .json(
                Method::POST,
                "/oauth2/token",
                Some(json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        verda.token = tokens["access_token"].as_str().expect("token").into();
        verda.refresh_token = tokens["refresh_token"].as_str().expect("refresh").into();
        verda
    }

    /// A request as the SDK sends it: JSON content type, even when empty.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        let mut request = self
            .server
            .client
            .request(method, format!("{}/verda/v1{path}", self.server.url))
            .header("content-type", "application/json")
            .body(body.unwrap_or_default());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, response.text().await.expect("body"))
    }

    /// A request with this client's token; answers its JSON (or `Null`
    /// for an empty body; a non-JSON body fails the test unless 2xx).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let token = (!self.token.is_empty()).then_some(self.token.as_str());
        let (status, _, text) = self
            .raw(method, path, body.map(|b| b.to_string()), token)
            .await;
        (status, parse(path, status, &text))
    }

    /// A POST that answers a new id as bare text.
    pub async fn create(&self, path: &str, body: Value) -> String {
        let (status, headers, text) = self
            .raw(
                Method::POST,
                path,
                Some(body.to_string()),
                Some(&self.token),
            )
            .await;
        assert!(status.is_success(), "POST {path}: {status} {text}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/plain"),
            "{headers:?}"
        );
        assert!(!text.contains('"') && !text.contains('\n'), "{text:?}");
        text
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, body) = self.json(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.json(Method::PUT, path, Some(body)).await
    }

    /// `PUT /instances {"action": ACTION, "id": ID}`, which must start;
    /// then waits for the instance to be `until`.
    pub async fn act(&self, action: &str, id: &str, until: &str) {
        let (status, body) = self
            .put("/instances", json!({"action": action, "id": id}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{action} {id}: {body}");
        self.wait_status(id, until).await;
    }

    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        eventually(
            Duration::from_secs(20),
            &format!("instance {id} {status}"),
            || async {
                let instance = self.get(&format!("/instances/{id}")).await;
                (instance["status"] == status).then_some(instance)
            },
        )
        .await
    }

    pub async fn balance(&self) -> f64 {
        self.get("/balance").await["amount"]
            .as_f64()
            .expect("amount")
    }
}

fn parse(path: &str, status: StatusCode, text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    let value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(_) if status.is_success() => Value::String(text.into()),
        Err(_) => panic!("{path} answered {status} with a non-JSON error {text:?}"),
    };
    assert_javascript_numbers(path, &value);
    value
}

/// Fails when an answer writes a whole number with a fraction (`50.0`):
/// Verda's (JavaScript) service never does, and its Go clients decode such
/// fields into integers, failing on the whole answer. Every answer the
/// Verda tests read goes through here.
pub fn assert_javascript_numbers(path: &str, value: &Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.5);
            assert!(
                f.fract() != 0.0,
                "{path}: the whole number {f} is written with a fraction"
            );
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| assert_javascript_numbers(path, v)),
        Value::Object(fields) => fields
            .values()
            .for_each(|v| assert_javascript_numbers(path, v)),
        _ => {}
    }
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

async fn oauth_tokens_refresh_once_and_guard_every_private_path(backend: Backend) {
    let server = TestServer::start(backend).await;
    let verda = Verda::login(&server, "default").await;
    let anonymous = Verda {
        server: &server,
        token: String::new(),
        refresh_token: String::new(),
    };
    // The token answer has every field the SDK reads.
    let (id, secret) = credentials(&server, "default").await;
    let (status, tokens) = anonymous
        .json(
            Method::POST,
            "/oauth2/token",
            Some(json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["scope"], "cloud-api-v1");
    assert_eq!(tokens["expires_in"], 3600);
    // A refresh token works once.
    let refresh = json!({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]});
    let (status, renewed) = anonymous
        .json(Method::POST, "/oauth2/token", Some(refresh.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_ne!(renewed["refresh_token"], tokens["refresh_token"]);
    let (status, body) = anonymous
        .json(Method::POST, "/oauth2/token", Some(refresh))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized_request",
    );
    // The renewed access token works.
    let (status, _, _) = verda
        .raw(
            Method::GET,
            "/balance",
            None,
            renewed["access_token"].as_str(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Wrong secrets, missing fields, unknown grants, bad JSON.
    for (body, want, code) in [
        (
            json!({"grant_type": "client_credentials", "client_id": id, "client_secret": "wrong"}),
            StatusCode::UNAUTHORIZED,
            "unauthorized_request",
        ),
        (
            json!({"grant_type": "client_credentials", "client_id": "nobody", "client_secret": "x"}),
            StatusCode::UNAUTHORIZED,
            "unauthorized_request",
        ),
        (
            json!({"grant_type": "client_credentials", "client_id": id}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            json!({"grant_type": "password"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (json!({}), StatusCode::BAD_REQUEST, "invalid_request"),
    ] {
        let (status, reply) = anonymous
            .json(Method::POST, "/oauth2/token", Some(body))
            .await;
        assert_error(status, &reply, want, code);
    }
    let (status, _, text) = anonymous
        .raw(Method::POST, "/oauth2/token", Some("{oops".into()), None)
        .await;
    assert_error(
        status,
        &parse("/oauth2/token", status, &text),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    // Private paths need an OAuth access token: none, garbage, or the
    // native admin token are all 401 in Verda's shape.
    for path in [
        "/balance",
        "/instances",
        "/volumes",
        "/sshkeys",
        "/scripts",
        "/locations",
        "/images",
    ] {
        for token in [None, Some("garbage"), Some(TOKEN)] {
            let (status, headers, text) = anonymous.raw(Method::GET, path, None, token).await;
            let body = parse(path, status, &text);
            assert_error(
                status,
                &body,
                StatusCode::UNAUTHORIZED,
                "unauthorized_request",
            );
            if token.is_some() {
                // It says which credential this API takes.
                assert!(
                    body["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("POST /oauth2/token")),
                    "{body}"
                );
            }
            assert!(!headers.contains_key("ratelimit"), "{path}");
        }
    }
    // Public ones need none.
    for path in [
        "/instance-types",
        "/volume-types",
        "/long-term/periods",
        "/long-term/periods/instances",
        "/long-term/periods/clusters",
        "/container-types",
        "/cluster-types",
        "/instance-types/price-history",
    ] {
        let (status, body) = anonymous.json(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        // The price history is a map of type to records, as clients read it.
        match path {
            "/instance-types/price-history" => assert!(body.is_object(), "{path}: {body}"),
            _ => assert!(body.is_array(), "{path}: {body}"),
        }
    }
    // Unknown paths and methods are Verda errors too.
    let (status, body) = verda.json(Method::GET, "/no-such-thing", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = verda.json(Method::PATCH, "/balance", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(
        body["code"].is_string() && body["message"].is_string(),
        "{body}"
    );
    // A revoked credential's tokens stop working.
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("/v1/credentials/{id}"),
            None,
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let revoked = renewed["access_token"].as_str().map(str::to_string);
    eventually(Duration::from_secs(10), "revocation", || async {
        let (status, _, _) = anonymous
            .raw(Method::GET, "/balance", None, revoked.as_deref())
            .await;
        (status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
}

async fn the_catalog_and_availability_follow_the_hosts(backend: Backend) {
    let server = TestServer::start(backend).await;
    let verda = Verda::login(&server, "default").await;
    let locations = verda.get("/locations").await;
    let codes: Vec<&str> = locations
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|l| l["code"].as_str())
        .collect();
    // In Verda's order, oldest first.
    assert_eq!(
        codes,
        ["FIN-01", "ICE-01", "FIN-02", "FIN-03"],
        "{locations}"
    );
    let types = verda.get("/instance-types").await;
    let cpu = types
        .as_array()
        .expect("list")
        .iter()
        .find(|t| t["instance_type"] == "CPU.4V.16G")
        .cloned()
        .expect("CPU.4V.16G");
    for key in [
        "id",
        "instance_type",
        "price_per_hour",
        "spot_price",
        "description",
        "cpu",
        "gpu",
        "memory",
        "gpu_memory",
        "storage",
        "best_for",
        "model",
        "name",
        "p2p",
        "currency",
        "manufacturer",
        "display_name",
        "supported_os",
    ] {
        assert!(cpu.get(key).is_some(), "{key} missing: {cpu}");
    }
    assert_eq!(cpu["cpu"]["number_of_cores"], 4);
    assert_eq!(cpu["memory"]["size_in_gigabytes"], 16);
    assert!(
        types
            .as_array()
            .expect("list")
            .iter()
            .any(|t| t["gpu"]["number_of_gpus"].as_u64() > Some(0))
    );
    let images = verda.get("/images").await;
    assert!(
        images
            .as_array()
            .expect("list")
            .iter()
            .any(|i| i["image_type"] == "ubuntu-24.04")
    );
    let filtered = verda.get("/images?instance_type=CPU.4V.16G").await;
    assert!(!filtered.as_array().expect("list").is_empty());
    let volume_types = verda.get("/volume-types").await;
    assert!(
        volume_types
            .as_array()
            .expect("list")
            .iter()
            .any(|t| t["type"] == "NVMe" && t["price"]["price_per_month_per_gb"].is_number())
    );
    let (status, body) = verda
        .json(Method::GET, "/instance-types?currency=gbp", None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // In euros, as the SDKs may ask: at the catalog's rate (0.86 a dollar).
    let euros = verda.get("/instance-types/CPU.4V.16G?currency=eur").await;
    assert_eq!(euros["currency"], "eur", "{euros}");
    let amount = |body: &Value| {
        body["price_per_hour"]
            .as_str()
            .and_then(|p| p.parse::<f64>().ok())
            .expect("a price")
    };
    assert!(
        (amount(&euros) - amount(&cpu) * 0.86).abs() < 0.0001,
        "{euros} {cpu}"
    );
    let containers = verda.get("/container-types?currency=eur").await;
    assert!(
        containers
            .as_array()
            .is_some_and(|l| l.iter().all(|t| t["currency"] == "eur")),
        "{containers}"
    );
    // One type, as the Go SDK's GetByInstanceType reads it.
    let one = verda
        .get("/instance-types/CPU.4V.16G?is_spot=true&location_code=FIN-03&currency=usd")
        .await;
    assert_eq!(one, cpu, "{one}");
    for (path, status, code) in [
        (
            "/instance-types/CPU.4V.17G",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/instance-types/CPU.4V.16G?location_code=MARS-1",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/instance-types/CPU.4V.16G?is_spot=maybe",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/instance-types/CPU.4V.16G?currency=gbp",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ] {
        let (got, body) = verda.json(Method::GET, path, None).await;
        assert_error(got, &body, status, code);
    }
    // The price history is still its own path, not a type's.
    assert!(verda.get("/instance-types/price-history").await.is_object());
    // Clusters are not offered yet: no type available anywhere.
    let clusters = verda.get("/cluster-availability").await;
    let places: Vec<&str> = clusters
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|a| a["location_code"].as_str())
        .collect();
    assert_eq!(places, codes, "{clusters}");
    assert!(
        clusters
            .as_array()
            .expect("list")
            .iter()
            .all(|a| a["availabilities"] == json!([])),
        "{clusters}"
    );
    assert_eq!(
        verda
            .get("/cluster-availability?location_code=FIN-03")
            .await,
        json!([{"location_code": "FIN-03", "availabilities": []}])
    );
    assert_eq!(verda.get("/cluster-availability/16B200").await, false);
    let (status, body) = verda
        .json(
            Method::GET,
            "/cluster-availability/16B200?location_code=MARS-1",
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // Nothing can be placed before there are hosts.
    let available = |path: &'static str| {
        let verda = &verda;
        async move { verda.get(path).await }
    };
    assert_eq!(
        available("/instance-availability/CPU.4V.16G?location_code=FIN-01").await,
        false
    );
    // One host of 8 CPUs and 32 GB in FIN-01.
    let (status, op) = server
        .call(
            Method::POST,
            "/v1/servers/create",
            Some(&json!({"hostname": "fin-a", "ip_address": "192.0.2.30", "zone": "FIN-01", "plan": "8xCPU-32GB"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(
        available("/instance-availability/CPU.4V.16G?location_code=FIN-01").await,
        true
    );
    assert_eq!(
        available("/instance-availability/CPU.4V.16G?isSpot=false&location_code=FIN-01").await,
        true
    );
    assert_eq!(available("/instance-availability/CPU.4V.16G").await, true);
    assert_eq!(
        available("/instance-availability/CPU.4V.16G?location_code=ICE-01").await,
        false
    );
    assert_eq!(
        available("/instance-availability/CPU.16V.64G?location_code=FIN-01").await,
        false
    );
    assert_eq!(available("/instances/availability/CPU.4V.16G").await, true);
    let all = verda.get("/instance-availability").await;
    let fin = all
        .as_array()
        .expect("list")
        .iter()
        .find(|a| a["location_code"] == "FIN-01")
        .expect("FIN-01");
    let listed: Vec<&str> = fin["availabilities"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        listed.contains(&"CPU.8V.32G") && !listed.contains(&"CPU.16V.64G"),
        "{fin}"
    );
    // A GPU type would fit the host's CPUs and memory, but no host offers
    // GPUs: not available, not listed, and a deploy is refused at once,
    // making nothing (it ran without its GPU, billed for one).
    assert_eq!(
        available("/instance-availability/1V100.6V?location_code=FIN-01").await,
        false
    );
    assert!(!listed.contains(&"1V100.6V"), "{fin}");
    let mut gpu = deploy("gpu-1", json!({}));
    gpu["instance_type"] = json!("1V100.6V");
    let (status, body) = verda.json(Method::POST, "/instances", Some(gpu)).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    );
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("GPU")),
        "{body}"
    );
    assert_eq!(verda.get("/instances").await, json!([]));
    // Of a type the catalog does not have, as Verda answers: not available,
    // no images, and no price history (a map).
    assert_eq!(available("/instance-availability/NOPE").await, false);
    assert_eq!(
        available("/instance-availability/NOPE?location_code=FIN-01").await,
        false
    );
    assert_eq!(available("/instances/availability/NOPE").await, false);
    assert_eq!(verda.get("/images?instance_type=NOPE").await, json!([]));
    assert_eq!(
        verda.get("/images/cluster?instance_type=NOPE").await,
        json!([])
    );
    assert_eq!(verda.get("/instance-types/price-history").await, json!({}));
    let (status, body) = verda
        .json(
            Method::GET,
            "/instance-availability?location_code=MARS-1",
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
}

/// A deploy body for a `cx11` with a 1 GB OS volume in FIN-01: 0.0075 +
/// 0.2 / 730 = 0.0078 an hour.
fn small_deploy(hostname: &str) -> Value {
    let mut body = deploy(hostname, json!({"os_volume": {"name": "os", "size": 1}}));
    body["instance_type"] = json!("cx11");
    body
}

/// A deploy body for `CPU.4V.16G` in FIN-01.
fn deploy(hostname: &str, extra: Value) -> Value {
    let mut body = json!({
        "instance_type": "CPU.4V.16G",
        "image": "ubuntu-24.04",
        "hostname": hostname,
        "description": "test",
        "location_code": "FIN-01",
        "os_volume": null,
        "coupon": null,
        "startup_script_id": null,
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        body[k] = v.clone();
    }
    body
}

/// Registers a pooled host in FIN-01 and waits until it is ready.
pub async fn add_fin_host(server: &TestServer, name: &str, plan: &str) {
    let (status, op) = server
        .call(
            Method::POST,
            "/v1/servers/create",
            Some(&json!({"hostname": name, "ip_address": "192.0.2.31", "zone": "FIN-01", "plan": plan})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
}

async fn instances_and_volumes_through_their_lifecycle_and_billed(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-b", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    // No money: 402, and nothing is made.
    let (status, body) = verda
        .json(Method::POST, "/instances", Some(deploy("web-1", json!({}))))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_funds",
    );
    assert_eq!(verda.get("/instances").await, json!([]));
    assert_eq!(verda.get("/volumes").await, json!([]));
    top_up(&server, "default", 10.0).await;
    assert_eq!(verda.balance().await, 10.0);
    // Bad input: 400 with the reason, and nothing is made.
    for (body, why) in [
        (
            json!({"instance_type": "CPU.4V.16G", "image": "ubuntu-24.04", "hostname": "x", "description": ""}),
            "location_code",
        ),
        (deploy("x", json!({"location_code": "MARS-1"})), "location"),
        (
            deploy("x", json!({"instance_type": "HUGE"})),
            "instance_type",
        ),
        (deploy("x", json!({"image": "windows"})), "image"),
        (deploy("x", json!({"ssh_key_ids": ["nope"]})), "SSH key"),
        (
            deploy("x", json!({"startup_script_id": "nope"})),
            "startup script",
        ),
        (
            deploy(
                "x",
                json!({"volumes": [{"name": "d", "size": 1.5, "type": "NVMe"}]}),
            ),
            "size",
        ),
        (
            deploy(
                "x",
                json!({"volumes": [{"name": "d", "size": 10, "type": "TAPE"}]}),
            ),
            "volume type",
        ),
        (deploy("x", json!({"existing_volumes": ["nope"]})), "volume"),
        (
            deploy("x", json!({"existing_volumes": ["v-1", "v-1"]})),
            "listed twice",
        ),
        (deploy("x", json!({"contract": "FOREVER"})), "contract"),
        (
            deploy("x", json!({"is_spot": true, "contract": "PAY_AS_YOU_GO"})),
            "contract is SPOT",
        ),
        // Dynamic pricing is gone: not taken and billed at another price.
        (
            deploy("x", json!({"pricing": "DYNAMIC_PRICE"})),
            "only FIXED_PRICE",
        ),
        // Nor with a coupon it would not honour.
        (deploy("x", json!({"coupon": "DISCOUNT20"})), "no coupons"),
        // In the deploy's own words, not the native request's.
        (deploy("bad name!", json!({})), "hostname must be"),
        // A host name read as an option (`hostname -lead`).
        (
            deploy("-lead", json!({})),
            "starting with a letter or digit",
        ),
        (
            deploy(".hidden", json!({})),
            "starting with a letter or digit",
        ),
        (
            deploy("x", json!({"os_volume": {"name": "o", "size": 1e12}})),
            "os_volume.size must be",
        ),
    ] {
        let (status, reply) = verda.json(Method::POST, "/instances", Some(body)).await;
        assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_request");
        let message = reply["message"].as_str().unwrap_or("");
        assert!(message.contains(why), "{why}: {reply}");
        assert!(
            !message.contains("metadata.") && !message.contains("disk_gb"),
            "{reply}"
        );
    }
    let (status, reply) = verda
        .json(
            Method::POST,
            "/sshkeys",
            Some(json!({"name": "k", "key": "ssh-ed25519 !!!"})),
        )
        .await;
    assert_error(status, &reply, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("key") && !m.contains("public_key")),
        "{reply}"
    );
    assert_eq!(verda.get("/instances").await, json!([]));
    // Too big for any host: 503, as Verda answers "not enough resources"
    // (its SDK raises it), and nothing is made.
    let (status, reply) = verda
        .json(
            Method::POST,
            "/instances",
            Some(deploy("big-1", json!({"instance_type": "CPU.32V.128G"}))),
        )
        .await;
    assert_error(
        status,
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    );
    assert!(
        reply["message"]
            .as_str()
            .is_some_and(|m| m.contains("CPU.32V.128G")),
        "{reply}"
    );
    assert_eq!(verda.get("/instances?status=no_capacity").await, json!([]));
    assert_eq!(verda.get("/volumes").await, json!([]));
    // A key, a script, and an instance with an extra volume.
    let key = verda
        .create(
            "/sshkeys",
            json!({"name": "laptop", "key": crate::harness::KEY}),
        )
        .await;
    let (status, body) = verda
        .json(
            Method::POST,
            "/sshkeys",
            Some(json!({"name": "bad", "key": "ssh-rsa nope"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let script = verda
        .create(
            "/scripts",
            json!({"name": "hello", "script": "#!/bin/sh\necho hello"}),
        )
        .await;
    let id = verda
        .create(
            "/instances",
            deploy(
                "web-1",
                json!({"ssh_key_ids": [key], "startup_script_id": script,
                       "os_volume": {"name": "root", "size": 60},
                       "volumes": [{"name": "data", "size": 20, "type": "NVMe"}]}),
            ),
        )
        .await;
    let running = verda.wait_status(&id, "running").await;
    assert_eq!(running["instance_type"], "CPU.4V.16G");
    assert_eq!(running["location"], "FIN-01");
    assert_eq!(running["ssh_key_ids"], json!([key]));
    assert_eq!(running["startup_script_id"], script.as_str());
    assert_eq!(running["volume_ids"].as_array().map(Vec::len), Some(2));
    assert_eq!(running["price_per_hour"], 0.0799);
    assert!(running["ip"].is_string(), "{running}");
    let os_volume = running["os_volume_id"]
        .as_str()
        .expect("os volume")
        .to_string();
    let os = verda.get(&format!("/volumes/{os_volume}")).await;
    assert_eq!(
        (
            os["is_os_volume"].as_bool(),
            os["size"].as_f64(),
            os["name"].as_str()
        ),
        (Some(true), Some(60.0), Some("root"))
    );
    assert_eq!(os["status"], "attached");
    assert!(os.get("deleted_at").is_none(), "{os}");
    assert_eq!(
        verda
            .get("/instances?status=running")
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(verda.get("/instances?status=offline").await, json!([]));
    let (status, body) = verda
        .json(Method::GET, "/instances?status=sleeping", None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // The same instance through the native API.
    let (status, native) = server
        .call(Method::GET, &format!("/v1/instances/{id}"), None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(native["status"]["state"], "running", "{native}");
    // Attaching needs the instance shut down.
    let volume = verda
        .create(
            "/volumes",
            json!({"type": "NVMe", "location_code": "FIN-01", "size": 5, "name": "extra"}),
        )
        .await;
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "attach", "id": volume, "instance_id": id}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // Shut down: 202, then 204 when asked again.
    let (status, results) = verda
        .put(
            "/instances",
            json!({"action": "shutdown", "id": id, "volume_ids": null}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{results}");
    assert_eq!(results[0]["status"], "success");
    verda.wait_status(&id, "offline").await;
    let (status, _) = verda
        .put("/instances", json!({"action": "shutdown", "id": id}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // A new volume for an instance that cannot take it (in another
    // location) is refused and leaves nothing behind.
    let count = |list: Value| list.as_array().map_or(0, Vec::len);
    let before = (
        count(verda.get("/volumes").await),
        count(verda.get("/volumes/trash").await),
    );
    let (status, body) = verda
        .json(
            Method::POST,
            "/volumes",
            Some(
                json!({"type": "NVMe", "location_code": "ICE-01", "size": 1, "name": "far",
                        "instance_id": id}),
            ),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let after = (
        count(verda.get("/volumes").await),
        count(verda.get("/volumes/trash").await),
    );
    assert_eq!(before, after);
    // Not even a deleted record under the id the refusal names.
    let named = body["message"]
        .as_str()
        .and_then(|m| m.strip_prefix("volume "))
        .and_then(|m| m.split(' ').next())
        .expect("the volume named")
        .to_string();
    let (status, _) = verda
        .json(Method::GET, &format!("/volumes/{named}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Volume actions.
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "attach", "id": [volume], "instance_id": id}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let attached = verda.get(&format!("/volumes/{volume}")).await;
    assert_eq!(
        (
            attached["status"].as_str(),
            attached["instance_id"].as_str()
        ),
        (Some("attached"), Some(id.as_str()))
    );
    assert_eq!(attached["target"], "vdc");
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "attach", "id": os_volume, "instance_id": id}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "attaching again is a no-op: {body}"
    );
    // Its OS volume is the instance's root: neither detached nor deleted
    // while the instance exists (it stopped, too).
    for action in ["detach", "delete"] {
        let (status, body) = verda
            .put("/volumes", json!({"action": action, "id": os_volume}))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("OS volume")),
            "{body}"
        );
    }
    let (status, body) = verda
        .json(Method::DELETE, &format!("/volumes/{os_volume}"), None)
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        verda.get(&format!("/volumes/{os_volume}")).await["status"],
        "attached"
    );
    let (status, _) = verda
        .put("/volumes", json!({"action": "detach", "id": volume}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        verda.get(&format!("/volumes/{volume}")).await["status"],
        "detached"
    );
    let (status, _) = verda
        .put(
            "/volumes",
            json!({"action": "resize", "id": volume, "size": 8}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(verda.get(&format!("/volumes/{volume}")).await["size"], 8.0);
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "resize", "id": volume, "size": 4}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, _) = verda
        .put(
            "/volumes",
            json!({"action": "rename", "id": volume, "name": "renamed"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // A clone of another type (an unknown one changes nothing).
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "clone", "id": volume, "name": "copy", "type": "TAPE"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "clone", "id": volume, "location_code": "XX"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown location")),
        "{body}"
    );
    let (status, clones) = verda
        .put(
            "/volumes",
            json!({"action": "clone", "id": volume, "name": "copy", "type": "HDD"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{clones}");
    let clone = clones[0].as_str().expect("clone id").to_string();
    let copy = verda.get(&format!("/volumes/{clone}")).await;
    assert_eq!(
        (
            copy["name"].as_str(),
            copy["size"].as_f64(),
            copy["type"].as_str()
        ),
        (Some("copy"), Some(8.0), Some("HDD"))
    );
    // A bulk action checks every volume first: one bad id changes none.
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "resize", "id": [clone, volume, os_volume], "size": 9}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(verda.get(&format!("/volumes/{clone}")).await["size"], 8.0);
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "rename", "id": [clone, "nope"], "name": "x"}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        verda.get(&format!("/volumes/{clone}")).await["name"],
        "copy"
    );
    // Clones and a resize of several volumes are checked against the quota
    // together: short for all of them, none is made or grown.
    let usage = server.get_ok("/v1/workspaces/default/quota").await["usage"].clone();
    let volumes_listed = verda.get("/volumes").await.as_array().map(Vec::len);
    let quota = |limits: Value| {
        let server = &server;
        async move {
            let (status, body) = server
                .call(
                    Method::PUT,
                    "/v1/workspaces/default/quota",
                    Some(&limits),
                    TOKEN,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    quota(json!({"volumes": usage["volumes"].as_i64().expect("volumes") + 1})).await;
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "clone", "id": [clone, clone], "name": "twice"}),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden_action");
    assert_eq!(
        verda.get("/volumes").await.as_array().map(Vec::len),
        volumes_listed
    );
    quota(json!({"volumes": null, "volume_gb": usage["volume_gb"].as_i64().expect("gb") + 1}))
        .await;
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "resize", "id": [clone, volume], "size": 9}),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden_action");
    assert_eq!(verda.get(&format!("/volumes/{clone}")).await["size"], 8.0);
    quota(json!({"volume_gb": null})).await;
    let (status, body) = verda
        .put("/volumes", json!({"action": "teleport", "id": volume}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = verda
        .put(
            "/volumes",
            json!({"action": "rename", "id": "nope", "name": "x"}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // Delete to the trash (202, then 204), restore, delete for good.
    let (status, _, _) = verda
        .raw(
            Method::DELETE,
            &format!("/volumes/{volume}"),
            Some(json!({"is_permanent": false}).to_string()),
            Some(&verda.token),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, _) = verda
        .raw(
            Method::DELETE,
            &format!("/volumes/{volume}"),
            None,
            Some(&verda.token),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let trashed = verda.get(&format!("/volumes/{volume}")).await;
    assert_eq!(
        (
            trashed["status"].as_str(),
            trashed["is_permanently_deleted"].as_bool()
        ),
        (Some("deleted"), Some(false))
    );
    assert!(trashed["deleted_at"].is_string());
    assert!(
        verda
            .get("/volumes/trash")
            .await
            .as_array()
            .expect("list")
            .iter()
            .any(|v| v["id"] == volume.as_str())
    );
    assert!(
        !verda
            .get("/volumes")
            .await
            .as_array()
            .expect("list")
            .iter()
            .any(|v| v["id"] == volume.as_str())
    );
    let (status, _) = verda
        .put("/volumes", json!({"action": "restore", "id": volume}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        verda.get(&format!("/volumes/{volume}")).await["status"],
        "detached"
    );
    let (status, _) = verda
        .put(
            "/volumes",
            json!({"action": "delete", "id": [volume, clone], "is_permanent": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let purged = eventually(Duration::from_secs(15), "purge", || async {
        let v = verda.get(&format!("/volumes/{volume}")).await;
        (v["is_permanently_deleted"] == true).then_some(v)
    })
    .await;
    // Deleted for good when it was, not when it was made or first trashed.
    let (made, first, last) = (
        purged["created_at"].as_str().expect("created_at"),
        trashed["deleted_at"].as_str().expect("trashed"),
        purged["deleted_at"].as_str().expect("deleted_at"),
    );
    assert!(made < first && first < last, "{made} {first} {last}");
    // Boot, then delete the instance with its volumes.
    let (status, _) = verda
        .put("/instances", json!({"action": "boot", "id": id}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    verda.wait_status(&id, "running").await;
    let (status, body) = verda
        .put("/instances", json!({"action": "hover", "id": id}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = verda
        .put("/instances", json!({"action": "shutdown", "id": "nope"}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, results) = verda
        .put(
            "/instances",
            json!({"action": "shutdown", "id": [id, "nope"]}),
        )
        .await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{results}");
    assert_eq!(results[0]["status"], "success");
    assert_eq!(
        (
            results[1]["status"].as_str(),
            results[1]["statusCode"].as_u64()
        ),
        (Some("error"), Some(404))
    );
    verda.wait_status(&id, "offline").await;
    let before = verda.balance().await;
    assert!(before < 10.0, "running cost something: {before}");
    let (status, body) = verda
        .put(
            "/instances",
            json!({"action": "delete", "id": id, "volume_ids": null, "delete_permanently": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    verda.wait_status(&id, "discontinued").await;
    assert_eq!(verda.get("/instances").await, json!([]));
    assert_eq!(
        verda
            .get("/instances?status=discontinued")
            .await
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let (status, _) = verda
        .put("/instances", json!({"action": "delete", "id": id}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let gone = verda.get(&format!("/volumes/{os_volume}")).await;
    assert_eq!(gone["status"], "deleted");
    // Without `volume_ids` only the OS volume went, as Verda's document
    // says: the data volume is detached and kept (the SDK's
    // `instances.action(id, "delete")` sends `volume_ids: null`).
    let data = running["volume_ids"]
        .as_array()
        .expect("volume ids")
        .iter()
        .filter_map(Value::as_str)
        .find(|v| *v != os_volume)
        .expect("data volume")
        .to_string();
    let kept = verda.get(&format!("/volumes/{data}")).await;
    assert_eq!(
        (kept["status"].as_str(), &kept["instance_id"]),
        (Some("detached"), &Value::Null),
        "{kept}"
    );
    let (status, _) = verda
        .put(
            "/volumes",
            json!({"action": "delete", "id": data, "is_permanent": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually(Duration::from_secs(15), "purge", || async {
        let v = verda.get(&format!("/volumes/{data}")).await;
        (v["is_permanently_deleted"] == true).then_some(())
    })
    .await;
    // Once nothing runs and every volume is purged, the balance stays put.
    let trash = verda.get("/volumes/trash").await;
    let live = verda.get("/volumes").await;
    assert_eq!((trash, live), (json!([]), json!([])));
    let settled = eventually(Duration::from_secs(15), "the balance settled", || async {
        let first = verda.balance().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        (verda.balance().await == first).then_some(first)
    })
    .await;
    assert!(settled < before);
    // The native API shows the same figure.
    let native = server.get_ok("/v1/workspaces/default/balance").await;
    assert_eq!(native["amount"].as_f64(), Some(settled));
    // Keys and scripts go; unknown ones are 404.
    let (status, _) = verda
        .json(Method::DELETE, "/sshkeys", Some(json!({"keys": [key]})))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = verda
        .json(Method::DELETE, &format!("/sshkeys/{key}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, _) = verda
        .json(Method::DELETE, &format!("/scripts/{script}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = verda
        .json(Method::GET, &format!("/scripts/{script}"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

async fn projects_cannot_see_each_others_resources(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-c", "16xCPU-64GB").await;
    server.user_in("alice", "member", "alpha").await;
    server.user_in("bob", "member", "beta").await;
    top_up(&server, "alpha", 5.0).await;
    top_up(&server, "beta", 1.0).await;
    let alpha = Verda::login(&server, "alpha").await;
    let beta = Verda::login(&server, "beta").await;
    let key = alpha
        .create("/sshkeys", json!({"name": "k", "key": crate::harness::KEY}))
        .await;
    let script = alpha
        .create("/scripts", json!({"name": "s", "script": "echo"}))
        .await;
    let volume = alpha
        .create(
            "/volumes",
            json!({"type": "HDD", "location_code": "FIN-01", "size": 10, "name": "v"}),
        )
        .await;
    let instance = alpha.create("/instances", deploy("a-1", json!({}))).await;
    alpha.wait_status(&instance, "running").await;
    // Beta sees none of it, and cannot act on it.
    for path in [
        "/instances",
        "/volumes",
        "/sshkeys",
        "/scripts",
        "/volumes/trash",
    ] {
        assert_eq!(beta.get(path).await, json!([]), "{path}");
    }
    for path in [
        format!("/instances/{instance}"),
        format!("/volumes/{volume}"),
        format!("/sshkeys/{key}"),
        format!("/ssh-keys/{key}"),
        format!("/scripts/{script}"),
    ] {
        let (status, body) = beta.json(Method::GET, &path, None).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    }
    let (status, body) = beta
        .put("/instances", json!({"action": "delete", "id": instance}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = beta
        .put("/volumes", json!({"action": "delete", "id": volume}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = beta
        .json(Method::DELETE, "/sshkeys", Some(json!({"keys": [key]})))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    let (status, body) = beta
        .json(
            Method::POST,
            "/instances",
            Some(deploy("b-1", json!({"ssh_key_ids": [key]}))),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let (status, body) = beta
        .json(
            Method::POST,
            "/instances",
            Some(deploy("b-1", json!({"existing_volumes": [volume]}))),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    // Each pays for its own: beta's balance is untouched, alpha's goes
    // down as its instance runs (a micro-dollar at a time: the first may
    // take a while at its price).
    assert_eq!(beta.balance().await, 1.0);
    eventually(
        std::time::Duration::from_secs(20),
        "alpha charged",
        || async { (alpha.balance().await < 5.0).then_some(()) },
    )
    .await;
    // Alpha's things are all still there.
    assert_eq!(
        alpha.get(&format!("/instances/{instance}")).await["status"],
        "running"
    );
    assert_eq!(
        alpha.get(&format!("/sshkeys/{key}")).await[0]["id"],
        key.as_str()
    );
    // A member cannot top up, nor make credentials for another project.
    let alice = server.login("alice", "alice-password").await;
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/workspaces/alpha/balance/top-ups",
            Some(&json!({"amount": 1})),
            &alice,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/credentials",
            Some(&json!({"project": "beta"})),
            &alice,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, mine) = server
        .call(Method::POST, "/v1/credentials", Some(&json!({})), &alice)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{mine}");
    assert_eq!(mine["project"], "alpha");
}

async fn rate_limits_answer_429_with_headers(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            rate_limits: tessera_app::RateLimits {
                project: 6,
                endpoint: 3,
                client: 100,
                window: Duration::from_secs(60),
            },
            ..Options::default()
        },
    )
    .await;
    let verda = Verda::login(&server, "default").await;
    for n in 0..3 {
        let (status, headers, _) = verda
            .raw(Method::GET, "/balance", None, Some(&verda.token))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers["ratelimit-policy"],
            "\"project\";q=6;w=60, \"endpoint\";q=3;w=60, \"client\";q=100;w=60"
        );
        let state = headers["ratelimit"].to_str().expect("text");
        assert!(
            state.starts_with(&format!("\"project\";r={};t=", 5 - n))
                && state.contains(&format!("\"endpoint\";r={};t=", 2 - n)),
            "{state}"
        );
    }
    let (status, headers, text) = verda
        .raw(Method::GET, "/balance", None, Some(&verda.token))
        .await;
    assert_error(
        status,
        &parse("/balance", status, &text),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    );
    let retry: u64 = headers["retry-after"]
        .to_str()
        .expect("text")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(headers.contains_key("ratelimit-policy"));
    // Other paths still answer until the project's limit.
    for path in ["/sshkeys", "/scripts", "/volumes"] {
        let (status, _, _) = verda.raw(Method::GET, path, None, Some(&verda.token)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let (status, _, text) = verda
        .raw(Method::GET, "/locations", None, Some(&verda.token))
        .await;
    assert_error(
        status,
        &parse("/locations", status, &text),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
    );
    // Another project has its own windows; public paths are not limited.
    let other = Verda::login(&server, "default").await;
    let (status, _, _) = other.raw(Method::GET, "/instance-types", None, None).await;
    assert_eq!(status, StatusCode::OK);
    server.user_in("carol", "member", "gamma").await;
    let gamma = Verda::login(&server, "gamma").await;
    let (status, _, _) = gamma
        .raw(Method::GET, "/balance", None, Some(&gamma.token))
        .await;
    assert_eq!(status, StatusCode::OK);
}

async fn scripts_are_paginated_under_a_quota(backend: Backend) {
    let server = TestServer::start(backend).await;
    let verda = Verda::login(&server, "default").await;
    let mut ids = Vec::new();
    for n in 0..100 {
        ids.push(
            verda
                .create(
                    "/scripts",
                    json!({"name": format!("script-{n:03}"), "script": "echo hi"}),
                )
                .await,
        );
    }
    // The quota (100 by default) is reached.
    let (status, body) = verda
        .json(
            Method::POST,
            "/scripts",
            Some(json!({"name": "one-more", "script": "echo"})),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden_action");
    let (status, headers, text) = verda
        .raw(
            Method::GET,
            "/scripts?page=2&pageSize=30",
            None,
            Some(&verda.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let page: Value = serde_json::from_str(&text).expect("json");
    let page = page.as_array().expect("list");
    assert_eq!(page.len(), 30);
    assert_eq!(page[0]["id"], ids[30].as_str());
    assert_eq!(headers["x-page"], "2");
    assert_eq!(headers["x-page-size"], "30");
    assert_eq!(headers["x-total-count"], "100");
    let (_, headers, text) = verda
        .raw(
            Method::GET,
            "/scripts?page=4&pageSize=30",
            None,
            Some(&verda.token),
        )
        .await;
    assert_eq!(
        serde_json::from_str::<Value>(&text)
            .expect("json")
            .as_array()
            .map(Vec::len),
        Some(10)
    );
    assert_eq!(headers["x-total-count"], "100");
    // Unpaged, as before pagination: every script.
    assert_eq!(
        verda.get("/scripts").await.as_array().map(Vec::len),
        Some(100)
    );
    assert_eq!(
        verda
            .get("/scripts?name=script-09")
            .await
            .as_array()
            .map(Vec::len),
        Some(10)
    );
    for bad in ["page=0", "pageSize=101", "pageSize=abc", "page=-1"] {
        let (status, body) = verda
            .json(Method::GET, &format!("/scripts?{bad}"), None)
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // Bulk delete is all or none.
    let (status, body) = verda
        .json(
            Method::DELETE,
            "/scripts",
            Some(json!({"scripts": [ids[0], "nope"]})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        verda.get("/scripts").await.as_array().map(Vec::len),
        Some(100)
    );
    let (status, _) = verda
        .json(
            Method::DELETE,
            "/scripts",
            Some(json!({"scripts": ids[..50]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        verda.get("/scripts").await.as_array().map(Vec::len),
        Some(50)
    );
    let (status, body) = verda
        .json(
            Method::POST,
            "/scripts",
            Some(json!({"name": "", "script": "echo"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    verda
        .create("/scripts", json!({"name": "fits again", "script": "echo"}))
        .await;
}

async fn concurrent_attaches_never_share_a_device(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-d", "16xCPU-64GB").await;
    top_up(&server, "default", 10.0).await;
    let verda = Verda::login(&server, "default").await;
    let id = verda.create("/instances", deploy("att-1", json!({}))).await;
    verda.wait_status(&id, "running").await;
    let (status, _) = verda
        .put("/instances", json!({"action": "shutdown", "id": id}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    verda.wait_status(&id, "offline").await;
    let mut volumes = Vec::new();
    for n in 0..6 {
        volumes.push(
            verda
                .create(
                    "/volumes",
                    json!({"type": "HDD", "location_code": "FIN-01", "size": 1, "name": format!("c{n}")}),
                )
                .await,
        );
    }
    let attaches = volumes.iter().map(|v| {
        verda.put(
            "/volumes",
            json!({"action": "attach", "id": v, "instance_id": id}),
        )
    });
    for (status, body) in futures::future::join_all(attaches).await {
        assert!(
            status == StatusCode::ACCEPTED || status == StatusCode::CONFLICT,
            "{status} {body}"
        );
    }
    let mut targets: Vec<String> = Vec::new();
    for v in &volumes {
        let volume = verda.get(&format!("/volumes/{v}")).await;
        if let Some(target) = volume["target"].as_str() {
            targets.push(target.to_string());
        }
    }
    let unique: std::collections::BTreeSet<&String> = targets.iter().collect();
    assert_eq!(unique.len(), targets.len(), "{targets:?}");
    assert!(!targets.is_empty());
}

/// What Verda's Go SDK needs: every whole number an integer in every
/// answer (checked by `parse` for each one read here), and the keys it adds
/// on the real service.
async fn go_clients_read_every_answer_and_add_their_keys(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-go", "16xCPU-64GB").await;
    top_up(&server, "default", 100.0).await;
    let verda = Verda::login(&server, "default").await;
    // A key body real Verda takes that is no key the ssh-key crate reads;
    // the host writes it and its SSH server ignores what it cannot use.
    let odd = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7c2VjcmV0IHN0dWZm go-client";
    let odd_key = verda
        .create("/sshkeys", json!({"name": "go", "key": odd}))
        .await;
    let key = verda
        .create("/sshkeys", json!({"name": "k", "key": crate::harness::KEY}))
        .await;
    // Bodies of base64's letters that no base64 decodes (305 characters;
    // padding left off), as the Terraform provider's and the Go SDK's own
    // tests send them to Verda, which takes them.
    let terraform = format!("ssh-rsa AAAAB3NzaC1yc2E{} terraform@test", "Q".repeat(290));
    let sdk = format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5{}", "x".repeat(154));
    let mut loose = Vec::new();
    for (name, line) in [("tf", &terraform), ("sdk", &sdk)] {
        loose.push(
            verda
                .create("/sshkeys", json!({"name": name, "key": line}))
                .await,
        );
    }
    let shown = verda.get(&format!("/sshkeys/{}", loose[0])).await;
    assert_eq!(shown[0]["key"], terraform.as_str(), "{shown}");
    // The Go SDK's SSHKey and StartupScript read `fingerprint` and an RFC
    // 3339 `created_at`.
    let script = verda
        .create("/scripts", json!({"name": "s", "script": "echo"}))
        .await;
    let script = verda.get(&format!("/scripts/{script}")).await;
    for (what, shown) in [("key", &shown[0]), ("script", &script[0])] {
        let created = shown["created_at"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(created).is_ok(),
            "{what}: {shown}"
        );
    }
    let listed = verda.get("/sshkeys").await;
    let mine = listed
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["id"] == key.as_str()))
        .expect("listed");
    assert_eq!(
        mine["fingerprint"],
        crate::harness::KEY_FINGERPRINT,
        "{mine}"
    );
    assert!(
        shown[0]["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:")),
        "{shown}"
    );
    for bad in [
        "AAAAB3NzaC1yc2EAAAADAQABAAABgQC7c2VjcmV0IHN0dWZm",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7\\nssh-rsa AAAA",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7\\u0000",
        "ssh-rsa not-base64!",
    ] {
        let body = format!("{{\"name\": \"bad\", \"key\": \"{bad}\"}}");
        let (status, _, text) = verda
            .raw(Method::POST, "/sshkeys", Some(body), Some(&verda.token))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {text}");
    }
    let id = verda
        .create(
            "/instances",
            deploy(
                "go-1",
                json!({"ssh_key_ids": [key, odd_key, loose[0], loose[1]],
                       "os_volume": {"name": "root", "size": 50}}),
            ),
        )
        .await;
    let instance = verda.wait_status(&id, "running").await;
    assert_eq!(
        instance["ssh_key_ids"],
        json!([key, odd_key, loose[0], loose[1]])
    );
    let volume = verda
        .create(
            "/volumes",
            json!({"type": "NVMe", "location_code": "FIN-01", "size": 50, "name": "data"}),
        )
        .await;
    let shown = verda.get(&format!("/volumes/{volume}")).await;
    assert!(shown["size"].is_u64() && shown["size"] == 50, "{shown}");
    let periods = verda.get("/long-term/periods").await;
    assert!(
        periods
            .as_array()
            .expect("list")
            .iter()
            .all(|p| p["unit_value"].is_u64()),
        "{periods}"
    );
    // Every read path, resources present, through `parse`.
    for path in [
        "/instance-types",
        "/instances/types",
        "/instance-types/price-history",
        "/volume-types",
        "/long-term/periods/instances",
        "/long-term/periods/clusters",
        "/container-types",
        "/cluster-types",
        "/locations",
        "/images",
        "/images/cluster",
        "/instance-availability",
        "/instances",
        "/volumes",
        "/volumes/trash",
        "/sshkeys",
        "/scripts",
        "/balance",
    ] {
        verda.get(path).await;
    }
    verda.get(&format!("/instances/{id}")).await;
    verda.get(&format!("/sshkeys/{key}")).await;
}

async fn tags_on_instances_and_volumes(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-t", "16xCPU-64GB").await;
    top_up(&server, "default", 100.0).await;
    let verda = Verda::login(&server, "default").await;
    let id = verda
        .create(
            "/instances",
            deploy(
                "tagged",
                json!({"tags": [{"key": "Team", "value": "platform"}, {"key": "free"}]}),
            ),
        )
        .await;
    let instance = verda.get(&format!("/instances/{id}")).await;
    let keys: Vec<&str> = instance["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["key"].as_str())
        .collect();
    assert_eq!(
        keys,
        ["team", "free"],
        "keys are kept in lower case: {instance}"
    );
    assert!(instance["tags"][0]["id"].is_string());
    // Adding one answers it; a key the instance has is a 409.
    let (status, tag) = verda
        .json(
            Method::POST,
            &format!("/instances/{id}/tags"),
            Some(json!({"key": "env", "value": "prod"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{tag}");
    assert_eq!(
        (&tag["key"], &tag["value"]),
        (&json!("env"), &json!("prod"))
    );
    let (status, body) = verda
        .json(
            Method::POST,
            &format!("/instances/{id}/tags"),
            Some(json!({"key": "ENV", "value": "dev"})),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict");
    // Bad tags change nothing.
    for bad in [
        json!({"value": "no key"}),
        json!({"key": "k".repeat(64)}),
        json!({"key": "long", "value": "v".repeat(128)}),
    ] {
        let (status, body) = verda
            .json(Method::POST, &format!("/instances/{id}/tags"), Some(bad))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    // At most ten.
    for n in 3..10 {
        let (status, body) = verda
            .json(
                Method::POST,
                &format!("/instances/{id}/tags"),
                Some(json!({"key": format!("k{n}")})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = verda
        .json(
            Method::POST,
            &format!("/instances/{id}/tags"),
            Some(json!({"key": "eleventh"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let listed = verda.get("/instances").await;
    assert_eq!(
        listed[0]["tags"].as_array().map(Vec::len),
        Some(10),
        "{listed}"
    );
    let (status, _) = verda
        .json(Method::DELETE, &format!("/instances/{id}/tags/Team"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = verda
        .json(Method::DELETE, &format!("/instances/{id}/tags/team"), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    // The native API shows and manages the same tags.
    let (_, native) = server
        .call(Method::GET, &format!("/v1/instances/{id}"), None, TOKEN)
        .await;
    assert_eq!(
        native["metadata"]["tags"].as_array().map(Vec::len),
        Some(9),
        "{native}"
    );
    // A page of the native list reads its own instances' tags.
    let (_, page) = server
        .call(Method::GET, "/v1/instances?limit=10", None, TOKEN)
        .await;
    let listed = page["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == id.as_str()))
        .unwrap_or_else(|| panic!("{id} not in {page}"));
    assert_eq!(
        listed["metadata"]["tags"], native["metadata"]["tags"],
        "{page}"
    );
    let (status, _) = server
        .call(
            Method::DELETE,
            &format!("/v1/instances/{id}/tags/env"),
            None,
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, tag) = server
        .call(
            Method::POST,
            &format!("/v1/instances/{id}/tags"),
            Some(&json!({"key": "from-native", "value": "yes"})),
            TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{tag}");
    let instance = verda.get(&format!("/instances/{id}")).await;
    assert!(
        instance["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .any(|t| t["key"] == "from-native"),
        "{instance}"
    );

    // Volumes: at creation, added, listed, removed.
    let volume = verda
        .create(
            "/volumes",
            json!({"type": "NVMe", "location_code": "FIN-01", "size": 5, "name": "v",
                   "tags": [{"key": "backup", "value": "daily"}]}),
        )
        .await;
    let shown = verda.get(&format!("/volumes/{volume}")).await;
    assert_eq!(shown["tags"][0]["key"], "backup", "{shown}");
    let (status, _) = verda
        .json(
            Method::POST,
            &format!("/volumes/{volume}/tags"),
            Some(json!({"key": "tier", "value": "gold"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let listed = verda.get("/volumes").await;
    let mine = listed
        .as_array()
        .expect("list")
        .iter()
        .find(|v| v["id"] == volume.as_str())
        .expect("listed")
        .clone();
    assert_eq!(mine["tags"].as_array().map(Vec::len), Some(2), "{mine}");
    let (status, _) = verda
        .json(
            Method::DELETE,
            &format!("/volumes/{volume}/tags/tier"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // A deleted volume keeps its tags and takes no new one.
    let trashed = verda
        .create(
            "/volumes",
            json!({"type": "NVMe", "location_code": "FIN-01", "size": 1, "name": "gone",
                   "tags": [{"key": "kept", "value": "yes"}]}),
        )
        .await;
    let (status, _, _) = verda
        .raw(
            Method::DELETE,
            &format!("/volumes/{trashed}"),
            None,
            Some(&verda.token),
        )
        .await;
    assert!(status.is_success(), "{status}");
    let (status, body) = verda
        .json(
            Method::POST,
            &format!("/volumes/{trashed}/tags"),
            Some(json!({"key": "late", "value": "no"})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    let gone = verda.get(&format!("/volumes/{trashed}")).await;
    assert_eq!(
        (
            gone["tags"].as_array().map(Vec::len),
            &gone["tags"][0]["key"]
        ),
        (Some(1), &json!("kept")),
        "{gone}"
    );
    // Eleven tags at creation, or a key twice: nothing is made.
    let many: Vec<Value> = (0..11).map(|n| json!({"key": format!("t{n}")})).collect();
    for tags in [json!(many), json!([{"key": "a"}, {"key": "A"}])] {
        let (status, body) = verda
            .json(
                Method::POST,
                "/volumes",
                Some(json!({"type": "NVMe", "location_code": "FIN-01", "size": 5, "name": "w", "tags": tags})),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert_eq!(
        verda.get("/volumes").await.as_array().map(Vec::len),
        Some(2)
    );
    // Another project's resources are not found.
    server.user_in("olga", "member", "other").await;
    let other = Verda::login(&server, "other").await;
    let (status, body) = other
        .json(
            Method::POST,
            &format!("/volumes/{volume}/tags"),
            Some(json!({"key": "mine"})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

/// Records an async request to the deployment `name` as if the process
/// `owner` had taken it a minute ago (`status`, asked as `request`): what
/// a control-plane process that stopped leaves behind. Answers the
/// deployment's row.
pub async fn plant_request(
    server: &TestServer,
    name: &str,
    (id, owner, status): (&str, &str, &str),
    request: Value,
) -> tessera_store::DeploymentRecord {
    let store = server.running.app.store();
    let d = store
        .all_deployments()
        .await
        .expect("deployments")
        .into_iter()
        .find(|d| d.name == name)
        .expect("the deployment");
    let long_ago = tessera_store::now_ms() - 60_000;
    let planted = tessera_store::InferenceRequestRecord {
        id: id.into(),
        project_id: d.project_id.clone(),
        deployment_id: d.id.clone(),
        status: status.into(),
        status_code: 0,
        content_type: String::new(),
        body: String::new(),
        created_ms: long_ago,
        updated_ms: long_ago,
        request: request.to_string(),
        instance_id: None,
        deadline_ms: 0,
        owner: owner.into(),
    };
    assert!(
        store
            .insert_inference_request(&planted, 100)
            .await
            .expect("insert")
    );
    d
}

/// Verda answers every instance at once; Tessera writes the list a page of
/// 500 at a time. Across pages it is one JSON array, each instance once,
/// and a filter that leaves a page empty leaves no stray comma.
async fn a_long_instance_list_is_whole_json_across_pages(backend: Backend) {
    let server = TestServer::start(backend).await;
    // No hosts: every creation ends `no_capacity`, quickly.
    let mut ops = Vec::new();
    for i in 0..1_001 {
        let created = server
            .create_instance(TOKEN, &format!("n-{i}"), "CPU.4V.16G")
            .await;
        ops.push(created["operation_id"].as_str().expect("op").to_string());
    }
    for op in &ops {
        server.wait_operation(op, TOKEN).await;
    }
    let verda = Verda::login(&server, "default").await;
    let (status, headers, text) = verda
        .raw(
            Method::GET,
            "/instances?status=no_capacity",
            None,
            Some(&verda.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-type"], "application/json");
    let listed: Vec<Value> = serde_json::from_str(&text).expect("one JSON array");
    assert_eq!(listed.len(), 1_001);
    let ids: std::collections::HashSet<&str> =
        listed.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids.len(), 1_001, "each instance once");
    assert!(listed.iter().all(|i| i["status"] == "no_capacity"));
    // Never placed, they never had an address.
    assert!(listed.iter().all(|i| i["ip"].is_null()), "{}", listed[0]);
    // Every page filtered out, and no instance live: empty arrays.
    for path in ["/instances?status=discontinued", "/instances"] {
        let (status, _, text) = verda.raw(Method::GET, path, None, Some(&verda.token)).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(text, "[]", "{path}");
    }
}

/// `hibernate`, as Verda's document has it: refused while the instance
/// runs ("you must first `shutdown` it"); then the instance is deleted and
/// every volume, its OS volume too, stays, detached.
async fn hibernate_deletes_a_shut_down_instance_and_keeps_its_volumes(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-h", "16xCPU-64GB").await;
    top_up(&server, "default", 10.0).await;
    let verda = Verda::login(&server, "default").await;
    let id = verda
        .create(
            "/instances",
            deploy(
                "sleepy",
                json!({"volumes": [{"name": "data", "size": 5, "type": "NVMe"}]}),
            ),
        )
        .await;
    let running = verda.wait_status(&id, "running").await;
    let volumes: Vec<String> = running["volume_ids"]
        .as_array()
        .expect("volume ids")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    assert_eq!(volumes.len(), 2, "{running}");
    let hibernate = json!({"action": "hibernate", "id": id});
    let (status, body) = verda.put("/instances", hibernate.clone()).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("shut it down")),
        "{body}"
    );
    assert_eq!(
        verda.get(&format!("/instances/{id}")).await["status"],
        "running"
    );
    let (status, _) = verda
        .put("/instances", json!({"action": "shutdown", "id": id}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    verda.wait_status(&id, "offline").await;
    let (status, body) = verda.put("/instances", hibernate.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    verda.wait_status(&id, "discontinued").await;
    for volume in &volumes {
        let kept = eventually(Duration::from_secs(15), "detached", || async {
            let v = verda.get(&format!("/volumes/{volume}")).await;
            (v["status"] == "detached").then_some(v)
        })
        .await;
        assert_eq!(kept["instance_id"], Value::Null, "{kept}");
    }
    assert_eq!(verda.get("/volumes/trash").await, json!([]));
    // Again: the instance is already gone.
    let (status, _) = verda.put("/instances", hibernate).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// A delete sent while another delete of the same instance is under way
/// joins it (204, as Verda answers a delete of a deleted instance), and
/// still deletes the volumes it names: they would otherwise stay, and be
/// billed, after the caller was told they went. Sent again, it has nothing
/// left to do.
async fn a_delete_joining_another_still_takes_the_volumes_it_names(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            // The host never answers a delete: the first stays under way.
            faults: vec!["delete:slow-:hang"],
            agent_timeout: Duration::from_secs(5),
            ..Options::default()
        },
    )
    .await;
    add_fin_host(&server, "slow-fin", "16xCPU-64GB").await;
    top_up(&server, "default", 10.0).await;
    let verda = Verda::login(&server, "default").await;
    let (id, os_volume, data) = running_with_data_volume(&verda, "two-deletes").await;
    // The first delete keeps every volume.
    let (status, body) = verda
        .put(
            "/instances",
            json!({"action": "delete", "id": id, "volume_ids": []}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Answered as a delete under way is (204), and the volume goes.
    let second = json!({"action": "delete", "id": id, "volume_ids": [data]});
    let (status, body) = verda.put("/instances", second.clone()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let trashed = verda.get("/volumes/trash").await;
    let trashed: Vec<&str> = trashed
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(trashed, vec![data.as_str()]);
    // Again: the volume is gone already, the instance still going.
    let (status, body) = verda.put("/instances", second).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // Again, for good: out of the trash too.
    let (status, body) = verda
        .put(
            "/instances",
            json!({"action": "delete", "id": id, "volume_ids": [data], "delete_permanently": true}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(verda.get("/volumes/trash").await, json!([]));
    // A volume it never had is still refused, a NUL in its id too.
    for bad in [os_volume.replace('-', "0"), "a\u{0}b".to_string()] {
        let (status, body) = verda
            .put(
                "/instances",
                json!({"action": "delete", "id": id, "volume_ids": [bad]}),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
    server.stop().await;
}

/// A deploy whose host fails to create it runs on another host, with the
/// volume made for it: the failing host destroyed the volume's storage,
/// and the volume is stored where the instance runs.
async fn a_deploy_its_host_fails_runs_elsewhere_with_its_volumes(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["create:bad-"],
            ..Options::default()
        },
    )
    .await;
    // Packing tries the host with the fewest free CPUs first: the bad one.
    add_fin_host(&server, "bad-fin", "16xCPU-64GB").await;
    add_fin_host(&server, "good-fin", "32xCPU-128GB").await;
    top_up(&server, "default", 10.0).await;
    let verda = Verda::login(&server, "default").await;
    let (id, _, data) = running_with_data_volume(&verda, "rescued").await;
    let on_good = |table: &str| {
        format!(
            "SELECT COUNT(*) FROM {table} r JOIN hosts h ON h.id = r.host_id \
             WHERE r.id = $1 AND h.hostname = 'good-fin'"
        )
    };
    assert_eq!(server.sql_int(&on_good("instances"), &id).await, 1);
    assert_eq!(server.sql_int(&on_good("volumes"), &data).await, 1);
    let failed_on = "SELECT COUNT(*) FROM operations WHERE resource_id = $1 \
                     AND steps LIKE '%failed_on%'";
    assert_eq!(server.sql_int(failed_on, &id).await, 1);
    server.stop().await;
}

/// Deploys `name` with a 5 GB data volume and waits for it to run:
/// its id, its OS volume's and its data volume's.
async fn running_with_data_volume(verda: &Verda<'_>, name: &str) -> (String, String, String) {
    let id = verda
        .create(
            "/instances",
            deploy(
                name,
                json!({"volumes": [{"name": "data", "size": 5, "type": "NVMe"}]}),
            ),
        )
        .await;
    let running = verda.wait_status(&id, "running").await;
    let os_volume = running["os_volume_id"]
        .as_str()
        .expect("OS volume")
        .to_string();
    let data = running["volume_ids"]
        .as_array()
        .expect("volume ids")
        .iter()
        .filter_map(Value::as_str)
        .find(|v| *v != os_volume)
        .expect("a data volume")
        .to_string();
    (id, os_volume, data)
}

/// A deploy needs the balance to cover an hour of the new instance on top
/// of what the project already runs, not of the new one alone.
async fn a_deploy_needs_an_hour_of_everything_the_project_runs(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-f", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    // One costs 0.0075 + 0.2 / 730 (its 1 GB OS volume) = 0.0078 an hour:
    // the balance covers an hour of one, not of two.
    top_up(&server, "default", 0.012).await;
    let first = verda.create("/instances", small_deploy("a")).await;
    verda.wait_status(&first, "running").await;
    // Each pays once: the instance at its type's price, its OS volume
    // through its own meter (not in the instance's too).
    let rate = "SELECT micros_per_hour FROM meters WHERE resource_id = $1";
    assert_eq!(server.sql_int(rate, &first).await, 7_500);
    let os_volume = verda.get(&format!("/instances/{first}")).await["os_volume_id"]
        .as_str()
        .expect("an OS volume")
        .to_string();
    assert_eq!(server.sql_int(rate, &os_volume).await, 274);
    let (status, body) = verda
        .json(Method::POST, "/instances", Some(small_deploy("b")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_funds",
    );
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("runs")),
        "{body}"
    );
    assert_eq!(
        verda.get("/instances").await.as_array().map(Vec::len),
        Some(1)
    );
    // Once the first is gone, there is room for one again.
    let (status, _) = verda
        .put("/instances", json!({"action": "delete", "id": first}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    verda.wait_status(&first, "discontinued").await;
    let second = verda.create("/instances", small_deploy("b")).await;
    verda.wait_status(&second, "running").await;
    server.stop().await;
}

/// The balance covers what the project is making as well as what it
/// runs: deploys one after the other while the first is still being made,
/// or all at once, cannot each pass on the same money.
async fn a_deploy_counts_the_instances_still_being_made(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            // Its instances stay `provisioning`.
            faults: vec!["create:slow-:hang"],
            agent_timeout: Duration::from_secs(10),
            ..Options::default()
        },
    )
    .await;
    add_fin_host(&server, "slow-fin", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    // An hour of one (0.0078, as above), not of two.
    top_up(&server, "default", 0.012).await;
    let first = verda.create("/instances", small_deploy("a")).await;
    verda.wait_status(&first, "provisioning").await;
    let (status, body) = verda
        .json(Method::POST, "/instances", Some(small_deploy("b")))
        .await;
    assert_error(
        status,
        &body,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_funds",
    );
    // With room for one more, six at once: one gets it.
    top_up(&server, "default", 0.008).await;
    let tries = (0..6).map(|n| {
        verda.json(
            Method::POST,
            "/instances",
            Some(small_deploy(&format!("c{n}"))),
        )
    });
    let answers = futures::future::join_all(tries).await;
    let statuses: Vec<StatusCode> = answers.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        1,
        "{answers:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| [StatusCode::ACCEPTED, StatusCode::PAYMENT_REQUIRED].contains(s)),
        "{answers:?}"
    );
    server.stop().await;
}

/// A start spends as a deploy does: shutting an instance down, spending
/// the money on another and starting the first again is a 402, for one
/// id or a list, and changes nothing.
async fn a_start_needs_an_hour_of_everything_the_project_runs(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-s", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    // An hour of one small instance (0.0078 with its OS volume), not two.
    top_up(&server, "default", 0.012).await;
    let first = verda.create("/instances", small_deploy("a")).await;
    verda.wait_status(&first, "running").await;
    verda.act("shutdown", &first, "offline").await;
    let second = verda.create("/instances", small_deploy("b")).await;
    verda.wait_status(&second, "running").await;
    for id in [json!(first), json!([first, second])] {
        let (status, body) = verda
            .put("/instances", json!({"action": "start", "id": id}))
            .await;
        assert_error(
            status,
            &body,
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_funds",
        );
    }
    assert_eq!(
        verda.get(&format!("/instances/{first}")).await["status"],
        "offline"
    );
    // With the second gone, the first may run again.
    verda.act("delete", &second, "discontinued").await;
    verda.act("start", &first, "running").await;
    server.stop().await;
}

/// An instance made with its OS volume before 2026-12-06 had a meter at
/// its type's price plus its volume's, which the volume's own meter
/// charged too: the next start books what it accrued and runs it on at the
/// type's price.
async fn meters_that_billed_volumes_twice_are_repaired_at_start(backend: Backend) {
    let database = crate::harness::SharedDatabase::new(backend).await;
    let options = || database.options();
    let server = TestServer::start_with(backend, options()).await;
    add_fin_host(&server, "fin-r", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    top_up(&server, "default", 10.0).await;
    let id = verda.create("/instances", small_deploy("old")).await;
    verda.wait_status(&id, "running").await;
    // As the version before made it: 0.0075 + 0.000274 an hour.
    server
        .sql(
            "UPDATE meters SET micros_per_hour = 7774 WHERE resource_id = $1",
            &id,
        )
        .await;
    drop(verda);
    server.stop().await;
    let again = TestServer::start_with(backend, options()).await;
    let rate = "SELECT micros_per_hour FROM meters WHERE resource_id = $1";
    eventually(Duration::from_secs(15), "the meter repaired", || async {
        (again.sql_int(rate, &id).await == 7_500).then_some(())
    })
    .await;
    again.stop().await;
}

/// The native API lets a creation give its own vCPUs, memory and root
/// disk: its meter runs at its type's price times the largest of those
/// over the type's own (never below the type's price), and Verda shows
/// that price. 14 vCPUs on a one-vCPU cx11 were billed as one.
async fn an_instance_sized_past_its_type_is_billed_for_its_size(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-z", "16xCPU-64GB").await;
    let verda = Verda::login(&server, "default").await;
    let rate = "SELECT micros_per_hour FROM meters WHERE resource_id = $1";
    // cx11: 1 vCPU, 2 GB, 20 GB of disk, 0.0075 an hour.
    for (name, size, micros, price) in [
        ("vcpus", json!({"vcpus": 4}), 30_000, 0.03),
        (
            "memory",
            json!({"vcpus": 2, "memory_mb": 16384}),
            60_000,
            0.06,
        ),
        ("disk", json!({"disk_gb": 100}), 37_500, 0.0375),
        (
            "smaller",
            json!({"memory_mb": 512, "disk_gb": 5}),
            7_500,
            0.0075,
        ),
    ] {
        let mut spec = json!({"type": "cx11", "image": "ubuntu-22.04", "location": "FIN-01"});
        spec.as_object_mut()
            .expect("spec")
            .extend(size.as_object().expect("size").clone());
        let body = json!({"metadata": {"name": name}, "spec": spec});
        let (status, created) = server
            .call(Method::POST, "/v1/instances", Some(&body), TOKEN)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().expect("id").to_string();
        assert_eq!(server.sql_int(rate, &id).await, micros, "{name}");
        let shown = verda.get(&format!("/instances/{id}")).await;
        assert_eq!(shown["price_per_hour"], price, "{name}: {shown}");
    }
    server.stop().await;
}

/// Six deletes of one instance at once: one starts it (202), the others
/// find it under way or done and answer 204, as a delete of a deleted
/// instance does; then a delete sent again is 204 too.
async fn deletes_sent_together_start_one_and_the_rest_answer_204(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-d", "16xCPU-64GB").await;
    top_up(&server, "default", 10.0).await;
    let verda = Verda::login(&server, "default").await;
    let id = verda.create("/instances", deploy("twice", json!({}))).await;
    verda.wait_status(&id, "running").await;
    let delete = json!({"action": "delete", "id": id});
    let answers =
        futures::future::join_all((0..6).map(|_| verda.put("/instances", delete.clone()))).await;
    let started = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(started, 1, "{answers:?}");
    for (status, body) in &answers {
        assert!(
            [StatusCode::ACCEPTED, StatusCode::NO_CONTENT].contains(status),
            "{status} {body}"
        );
    }
    verda.wait_status(&id, "discontinued").await;
    let (status, _) = verda.put("/instances", delete).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// `PUT /instances` deleting several instances with `volume_ids` naming
/// the volumes of all of them: each instance takes its own (as the SDK's
/// `instances.action(ids, "delete", volume_ids=...)` means); a volume of
/// none of them refuses the request whole, before anything is deleted.
async fn a_bulk_delete_takes_each_instance_its_own_volumes(backend: Backend) {
    let server = TestServer::start(backend).await;
    add_fin_host(&server, "fin-e", "16xCPU-64GB").await;
    top_up(&server, "default", 10.0).await;
    let verda = Verda::login(&server, "default").await;
    let mut instances = Vec::new();
    let mut data = Vec::new();
    for name in ["bulk-1", "bulk-2"] {
        let (id, _, own) = running_with_data_volume(&verda, name).await;
        data.push(own);
        instances.push(id);
    }
    let loose = verda
        .create(
            "/volumes",
            json!({"name": "loose", "size": 1, "type": "NVMe", "location_code": "FIN-01"}),
        )
        .await;

    let (status, body) = verda
        .put(
            "/instances",
            json!({"action": "delete", "id": instances, "volume_ids": [data[0], loose]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    for id in &instances {
        assert_eq!(
            verda.get(&format!("/instances/{id}")).await["status"],
            "running"
        );
    }

    let (status, body) = verda
        .put(
            "/instances",
            json!({"action": "delete", "id": instances, "volume_ids": data}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        body.as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["status"] == "success")),
        "{body}"
    );
    for id in &instances {
        verda.wait_status(id, "discontinued").await;
    }
    for volume in &data {
        let v = verda.get(&format!("/volumes/{volume}")).await;
        assert_eq!(v["status"], "deleted", "{v}");
    }
    assert_eq!(
        verda.get(&format!("/volumes/{loose}")).await["status"],
        "detached"
    );
    server.stop().await;
}
