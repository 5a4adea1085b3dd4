//! The Kloigos face, endpoint by endpoint: success and error paths.

use crate::harness::{Backend, KEY, Options, TOKEN, TestServer, eventually, unit_request};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

crate::on_both_backends!(
    init_server_publishes_units_as_kloigos_shows_them,
    init_server_rejects_bad_bodies_with_every_problem,
    init_server_refuses_a_registered_hostname,
    allocate_installs_the_key_and_answers_the_real_state,
    allocate_without_a_free_unit_is_460,
    a_unit_whose_cpus_the_ledger_holds_is_not_handed_out,
    allocate_rejects_bad_bodies,
    list_filters_match_kloigos,
    list_rejects_bad_queries,
    deallocate_wipes_the_unit_and_frees_it,
    decommission_guards_allocated_units,
    host_failures_surface_as_kloigos_states,
    a_host_slow_to_prepare_is_not_failed,
    allocation_times_out_into_allocation_fail,
    nul_characters_are_user_errors_not_server_errors,
    a_routes_permission_follows_the_route_not_the_paths_text,
    a_retried_deallocate_is_safe,
    a_trailing_slash_is_redirected_as_fastapi_does,
    an_allocated_unit_is_charged_until_its_deallocation,
);

async fn nul_characters_are_user_errors_not_server_errors(backend: Backend) {
    // PostgreSQL refuses NUL in text; none of these may become a 500.
    let server = TestServer::start(backend).await;
    server.init_host("host1", &["0-3"]).await;
    assert_eq!(
        server.units("?hostname=host%001").await,
        Vec::<Value>::new()
    );
    assert_eq!(
        server.units("?deployment_id=a%00b&zone=a").await,
        Vec::<Value>::new()
    );
    let (status, _) = server
        .delete("/api/compute_units/deallocate/host1_c0-3%00")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .delete("/api/admin/decommission_server/host1%00")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A path that is not UTF-8 is a validation error in FastAPI's shape
    // (the harness fails on a body that is not JSON).
    for path in [
        "/api/compute_units/deallocate/%FF%FE",
        "/api/admin/decommission_server/%FF%FE",
    ] {
        let (status, body) = server.delete(path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["detail"].is_array(), "{body}");
    }
    let (status, body) = server
        .allocate(json!({"ssh_public_key": KEY, "tags": {"deployment_id": "a\u{0}b"}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "tags"]));
    // Tags are bounded (16 KiB of JSON), as they are kept and listed.
    let (status, body) = server
        .allocate(json!({"ssh_public_key": KEY, "tags": {"note": "x".repeat(17 * 1024)}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["detail"][0]["loc"], json!(["body", "tags"]));
    let (status, body) = server
        .post(
            "/api/admin/init_server",
            &json!({"hostname": "h\u{0}", "ip": "192.0.2.1", "region": "r\u{0}", "zone": "z", "cpu_ranges": ["0-3"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // Nothing changed.
    assert_eq!(server.units("?status=FREE").await.len(), 1);
    server.stop().await;
}

async fn init_server_publishes_units_as_kloigos_shows_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_server_and_check().await;
    server.stop().await;
}

impl TestServer {
    async fn init_server_and_check(&self) {
        let (status, body) = self
            .post(
                "/api/admin/init_server",
                &json!({
                    "hostname": "host1", "ip": "192.0.2.10", "region": "eu-north", "zone": "a",
                    "cpu_ranges": ["0-3", "4-7", "8-15", "16-23:2"],
                    "numa_nodes": ["0-11", "12-23"],
                }),
            )
            .await;
        assert_eq!((status, body), (StatusCode::OK, json!({})));
        // Answered at once; the units are FREE when the host side is done.
        let units = self.wait_host_status("host1", "FREE", 4).await;
        let ids: Vec<&str> = units
            .iter()
            .filter_map(|u| u["compute_id"].as_str())
            .collect();
        assert_eq!(
            ids,
            ["host1_c0-3", "host1_c4-7", "host1_c8-15", "host1_c16-23-2"]
        );
        assert_eq!(
            units[3],
            json!({
                "started_at": null, "ip": "192.0.2.10", "ports_range": "3500-3999",
                "cpu_range": "16-23:2", "tags": null, "compute_id": "host1_c16-23-2",
                "region": "eu-north", "zone": "a", "cpu_list": "16,18,20,22",
                "hostname": "host1", "status": "FREE", "cpu_count": 4,
            })
        );
        let ports: Vec<&str> = units
            .iter()
            .filter_map(|u| u["ports_range"].as_str())
            .collect();
        assert_eq!(ports, ["1500-1999", "2000-2499", "2500-3499", "3500-3999"]);
        // The simulated host has a user per unit.
        let host = self.host_id("host1").await;
        let sim = self.running.sim.as_ref().expect("sim");
        let sim_host = sim
            .host(&tessera_core::HostId::new(host))
            .expect("sim host");
        assert!(sim_host.is_prepared());
    }
}

async fn init_server_rejects_bad_bodies_with_every_problem(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.post_raw("/api/admin/init_server", "{}").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let missing: Vec<Value> = body["detail"]
        .as_array()
        .expect("detail list")
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "missing");
            assert_eq!(e["msg"], "Field required");
            e["loc"].clone()
        })
        .collect();
    assert_eq!(
        missing,
        [
            json!(["body", "ip"]),
            json!(["body", "region"]),
            json!(["body", "zone"]),
            json!(["body", "cpu_ranges"]),
            json!(["body", "hostname"]),
        ]
    );

    let cases: [(Value, &str, Value, &str); 7] = [
        (
            json!({"hostname": "h", "ip": "1.2.3.4", "region": "r", "zone": "z", "cpu_ranges": ["0-3"], "numa_nodes": ["0-3", "2-7"]}),
            "value_error",
            json!(["body", "numa_nodes"]),
            "Value error, NUMA node 1 (\"2-7\") is empty or shares CPUs with an earlier node",
        ),
        (
            json!({"hostname": "h", "ip": 7, "region": "r", "zone": "z", "cpu_ranges": "0-3"}),
            "string_type",
            json!(["body", "ip"]),
            "Input should be a valid string",
        ),
        (
            json!({"hostname": "h", "ip": "1.2.3.4", "region": "r", "zone": "z", "cpu_ranges": ["0-3", 4]}),
            "string_type",
            json!(["body", "cpu_ranges", 1]),
            "Input should be a valid string",
        ),
        (
            json!({"hostname": "h", "ip": "1.2.3.4", "region": "r", "zone": "z", "cpu_ranges": ["0-3", "7-4"]}),
            "value_error",
            json!(["body", "cpu_ranges"]),
            "Value error, CPU range \"7-4\" is malformed: start is after end",
        ),
        (
            json!({"hostname": "h", "ip": "1.2.3.4", "region": "r", "zone": "z", "cpu_ranges": ["0-7", "4-11"]}),
            "value_error",
            json!(["body", "cpu_ranges"]),
            "Value error, CPU ranges \"0-7\" and \"4-11\" overlap on CPU 4",
        ),
        (
            json!({"hostname": "bad_name", "ip": "1.2.3.4", "region": "r", "zone": "z", "cpu_ranges": ["0-3"]}),
            "value_error",
            json!(["body", "hostname"]),
            "Value error, \"bad_name\" is not a valid host name (letters, digits, inner hyphens and dots, at most 253 characters)",
        ),
        (
            json!({"hostname": "h", "ip": "1.2.3.4", "region": "r", "zone": "z", "cpu_ranges": []}),
            "value_error",
            json!(["body", "cpu_ranges"]),
            "Value error, at least one CPU range is required",
        ),
    ];
    for (request, kind, loc, msg) in cases {
        let (status, body) = server.post("/api/admin/init_server", &request).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{request}: {body}"
        );
        let first = &body["detail"][0];
        assert_eq!(
            (&first["type"], &first["loc"], &first["msg"]),
            (&json!(kind), &loc, &json!(msg)),
            "{request}"
        );
    }
    // Every problem of the values at once, in the fields' order.
    let request = json!({"hostname": "bad_host", "ip": "not an ip!", "region": "", "zone": "",
                         "cpu_ranges": ["7-0"]});
    let (status, body) = server.post("/api/admin/init_server", &request).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let locs: Vec<&Value> = body["detail"]
        .as_array()
        .expect("detail")
        .iter()
        .map(|e| &e["loc"][1])
        .collect();
    assert_eq!(
        locs,
        [
            &json!("ip"),
            &json!("region"),
            &json!("zone"),
            &json!("cpu_ranges"),
            &json!("hostname")
        ],
        "{body}"
    );
    // Addresses no server has, and mistyped ones that are no host names;
    // a region's length is in characters.
    for (ip, region) in [
        ("256.1.1.1", "r"),
        ("1.2.3", "r"),
        ("0.0.0.0", "r"),
        ("::", "r"),
        ("224.0.0.1", "r"),
        ("255.255.255.255", "r"),
    ] {
        let request = json!({"hostname": "h", "ip": ip, "region": region, "zone": "z", "cpu_ranges": ["0-3"]});
        let (status, body) = server.post("/api/admin/init_server", &request).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{request}: {body}"
        );
        assert_eq!(body["detail"][0]["loc"], json!(["body", "ip"]), "{body}");
    }
    for raw in ["", "{not json", "[1, 2]", "\"host\""] {
        let (status, body) = server.post_raw("/api/admin/init_server", raw).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{raw:?}: {body}");
        assert!(body["detail"][0]["loc"][0] == "body", "{body}");
    }
    // None of it registered anything.
    assert_eq!(server.units("").await, Vec::<Value>::new());
    // A name for an address, and 40 characters of region (80 bytes).
    for (hostname, ip, region) in [
        ("h1", "host-1.example.com", "r".to_string()),
        ("h2", "10.0.0.9", "Ω".repeat(40)),
    ] {
        let request = json!({"hostname": hostname, "ip": ip, "region": region, "zone": "z", "cpu_ranges": ["0-3"]});
        let (status, body) = server.post("/api/admin/init_server", &request).await;
        assert_eq!(status, StatusCode::OK, "{request}: {body}");
    }
    server.stop().await;
}

async fn init_server_refuses_a_registered_hostname(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("host1", &["0-3"]).await;
    // Host names know no case: HOST1 is host1 too, on either API.
    for (hostname, ranges) in [("host1", "0-7"), ("HOST1", "0-3")] {
        let (status, body) = server
            .post(
                "/api/admin/init_server",
                &json!({"hostname": hostname, "ip": "192.0.2.99", "region": "x", "zone": "y", "cpu_ranges": [ranges]}),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{hostname}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| d.contains("host1")),
            "{body}"
        );
    }
    let (status, body) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "Host1", "ip_address": "192.0.2.98", "zone": "z", "cpus": "0-3"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // The registered host is unchanged, and alone.
    let units = server.units("?hostname=host1").await;
    assert_eq!(units.len(), 1);
    assert_eq!(units[0]["ip"], "192.0.2.10");
    assert_eq!(server.units("").await.len(), 1);
    // Once retired, the name is free again, in any case.
    let (status, body) = server
        .request(
            Method::DELETE,
            "/api/admin/decommission_server/host1",
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let again = json!({"hostname": "HOST1", "ip": "192.0.2.10", "region": "x", "zone": "y", "cpu_ranges": ["0-3"]});
    eventually(Duration::from_secs(20), "host1 retired", || async {
        let (status, _) = server.post("/api/admin/init_server", &again).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    server.stop().await;
}

/// `ssh-keygen -t ecdsa -b 384`'s public key.
const ECDSA_KEY: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBDN8SeQYD4olgiV2aIulurIvIDBLtIJfxtbBhTYykyBvVaISWbBlSdhRhkFswtHFZU/BAPi6svHnzW6VRMslU/+oZ2QV61LLHqTFEgNKM+yNIa2O75KGZHj/eGAqs+SGWw== probe@ecdsa";

async fn allocate_installs_the_key_and_answers_the_real_state(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("host1", &["0-3", "4-11"]).await;
    // cpu_count defaults to 4.
    let (status, unit) = server
        .allocate(json!({"ssh_public_key": KEY, "tags": {"deployment_id": "web", "team": "a"}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    assert_eq!(
        unit["status"], "ALLOCATED",
        "upstream answers FREE here; we answer the truth"
    );
    assert_eq!(unit["compute_id"], "host1_c0-3");
    assert_eq!(unit["cpu_count"], 4);
    assert_eq!(unit["tags"], json!({"deployment_id": "web", "team": "a"}));
    assert!(
        unit["started_at"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{unit}"
    );
    let host = server.host_id("host1").await;
    assert_eq!(server.installed_key(&host, "c0-3").as_deref(), Some(KEY));
    assert_eq!(server.installed_key(&host, "c4-11"), None);
    // The list shows the same unit in the same state.
    let listed = server.units("?compute_id=host1_c0-3").await;
    assert_eq!(listed, vec![unit]);
    // An 8-CPU unit exists; nulls are accepted for the optional fields;
    // ECDSA keys (ssh-keygen -t ecdsa) as well as any other.
    let (status, unit) = server
        .allocate(json!({"cpu_count": 8, "region": null, "zone": null, "ssh_public_key": ECDSA_KEY, "tags": null}))
        .await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    assert_eq!(
        (unit["compute_id"].as_str(), unit["status"].as_str()),
        (Some("host1_c4-11"), Some("ALLOCATED"))
    );
    assert_eq!(
        server.installed_key(&host, "c4-11").as_deref(),
        Some(ECDSA_KEY)
    );
    server.stop().await;
}

async fn allocate_without_a_free_unit_is_460(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("host1", &["0-3"]).await;
    let no_unit = json!({"detail": "No free Compute Unit found to match your request"});
    for request in [
        unit_request(2, json!(null)),
        json!({"cpu_count": 4, "region": "elsewhere", "ssh_public_key": KEY, "tags": null}),
        json!({"cpu_count": 4, "zone": "b", "ssh_public_key": KEY, "tags": null}),
    ] {
        let (status, body) = server.allocate(request.clone()).await;
        assert_eq!(status.as_u16(), 460, "{request}");
        assert_eq!(body, no_unit);
    }
    let (status, _) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!((status.as_u16(), body), (460, no_unit));
    server.stop().await;
}

/// A FREE unit one of whose CPUs the ledger already holds (here written
/// behind the server's back, so its view still sees the unit free) loses
/// its claim whole: no half-claimed CPUs, the unit stays FREE, and the
/// allocation goes to a unit whose CPUs are free.
async fn a_unit_whose_cpus_the_ledger_holds_is_not_handed_out(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("host1", &["0-3", "4-7"]).await;
    let host = server.host_id("host1").await;
    server
        .sql(
            "INSERT INTO cpu_claims (host_id, cpu, holder) VALUES ($1, 2, 'instance:ghost')",
            &host,
        )
        .await;
    let (status, unit) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    assert_eq!(unit["compute_id"], "host1_c4-7");
    let first = server.units("?compute_id=host1_c0-3").await;
    assert_eq!(first[0]["status"], "FREE", "{first:?}");
    let held = |holder: &'static str| {
        server.sql_int("SELECT COUNT(*) FROM cpu_claims WHERE holder = $1", holder)
    };
    assert_eq!(held("unit:host1_c0-3").await, 0);
    assert_eq!(held("unit:host1_c4-7").await, 4);
    assert_eq!(held("instance:ghost").await, 1);
    server.stop().await;
}

async fn allocate_rejects_bad_bodies(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Every problem at once, and cpu_count's bounds said as they are.
    let (status, body) = server
        .allocate(json!({"cpu_count": 0, "ssh_public_key": "garbage", "tags": null}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let locs: Vec<&Value> = body["detail"]
        .as_array()
        .expect("detail")
        .iter()
        .map(|e| &e["loc"][1])
        .collect();
    assert_eq!(
        locs,
        [&json!("ssh_public_key"), &json!("cpu_count")],
        "{body}"
    );
    for (count, kind) in [
        (4_294_967_296_i64, "less_than_equal"),
        (9000, "less_than_equal"),
        (-1, "greater_than"),
    ] {
        let (status, body) = server
            .allocate(json!({"cpu_count": count, "ssh_public_key": KEY, "tags": null}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["detail"][0]["type"], kind, "{body}");
    }
    server.init_host("host1", &["0-3"]).await;
    let cases: [(Value, &str, Value); 7] = [
        (
            json!({"ssh_public_key": KEY}),
            "missing",
            json!(["body", "tags"]),
        ),
        (
            json!({"tags": null}),
            "missing",
            json!(["body", "ssh_public_key"]),
        ),
        (
            json!({"ssh_public_key": KEY, "tags": [1]}),
            "dict_type",
            json!(["body", "tags"]),
        ),
        (
            json!({"ssh_public_key": KEY, "tags": null, "cpu_count": 0}),
            "greater_than",
            json!(["body", "cpu_count"]),
        ),
        (
            json!({"ssh_public_key": KEY, "tags": null, "cpu_count": "four"}),
            "int_parsing",
            json!(["body", "cpu_count"]),
        ),
        (
            json!({"ssh_public_key": KEY, "tags": null, "cpu_count": 2.5}),
            "int_from_float",
            json!(["body", "cpu_count"]),
        ),
        (
            json!({"ssh_public_key": "not a key", "tags": null}),
            "value_error",
            json!(["body", "ssh_public_key"]),
        ),
    ];
    for (request, kind, loc) in cases {
        let (status, body) = server.allocate(request.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{request}: {body}"
        );
        assert_eq!(
            (&body["detail"][0]["type"], &body["detail"][0]["loc"]),
            (&json!(kind), &loc),
            "{request}"
        );
    }
    // Nothing was allocated by the refused requests.
    assert_eq!(server.units("?status=FREE").await.len(), 1);
    server.stop().await;
}

async fn list_filters_match_kloigos(backend: Backend) {
    let server = TestServer::start(backend).await;
    server
        .init_host_in("h1", "eu", "a", &["0-3", "4-7", "8-15"])
        .await;
    server.init_host_in("h2", "us", "b", &["0-3", "4-7"]).await;
    server.wait_host_status("h1", "FREE", 3).await;
    server.wait_host_status("h2", "FREE", 2).await;
    let (status, _) = server
        .allocate(json!({"cpu_count": 4, "region": "eu", "ssh_public_key": KEY, "tags": {"deployment_id": "web_app_v1"}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids = |units: Vec<Value>| -> Vec<String> {
        units
            .iter()
            .filter_map(|u| u["compute_id"].as_str().map(str::to_string))
            .collect()
    };
    let cases: [(&str, Vec<&str>); 11] = [
        (
            "",
            vec!["h1_c0-3", "h1_c4-7", "h1_c8-15", "h2_c0-3", "h2_c4-7"],
        ),
        ("?hostname=h2", vec!["h2_c0-3", "h2_c4-7"]),
        ("?region=eu&zone=a", vec!["h1_c0-3", "h1_c4-7", "h1_c8-15"]),
        ("?zone=b", vec!["h2_c0-3", "h2_c4-7"]),
        ("?cpu_count=8", vec!["h1_c8-15"]),
        ("?deployment_id=web_app_v1", vec!["h1_c0-3"]),
        ("?status=free&hostname=h1", vec!["h1_c4-7", "h1_c8-15"]),
        ("?status=ALLOCATED", vec!["h1_c0-3"]),
        ("?status=Allocated", vec!["h1_c0-3"]),
        ("?compute_id=h2_c4-7", vec!["h2_c4-7"]),
        ("?compute_id=nope", vec![]),
    ];
    for (query, want) in cases {
        assert_eq!(ids(server.units(query).await), want, "{query}");
    }
    // A null deployment_id is none (as `tags->>'deployment_id'` reads it),
    // not the text "null".
    let (status, unit) = server
        .allocate(json!({"cpu_count": 4, "region": "us", "ssh_public_key": KEY, "tags": {"deployment_id": null}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    assert_eq!(unit["tags"], json!({"deployment_id": null}));
    assert_eq!(
        ids(server.units("?deployment_id=null").await),
        Vec::<String>::new()
    );
    // The path without the trailing slash lists too.
    let (status, body) = server.get("/api/compute_units?hostname=h2").await;
    assert_eq!(
        (status, body.as_array().map(Vec::len)),
        (StatusCode::OK, Some(2))
    );
    server.stop().await;
}

async fn list_rejects_bad_queries(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.get("/api/compute_units/?cpu_count=many").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["query", "cpu_count"]));
    assert_eq!(body["detail"][0]["type"], "int_parsing");
    let (status, body) = server.get("/api/compute_units/?status=gone").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["query", "status"]));
    assert_eq!(body["detail"][0]["input"], "gone");
    server.stop().await;
}

async fn deallocate_wipes_the_unit_and_frees_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("host1", &["0-3"]).await;
    let (status, body) = server
        .delete("/api/compute_units/deallocate/host1_c9-9")
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"detail": "Compute unit host1_c9-9 not found"})
        )
    );
    let (_, unit) = server
        .allocate(unit_request(4, json!({"deployment_id": "d"})))
        .await;
    assert_eq!(unit["status"], "ALLOCATED");
    let (status, body) = server
        .delete("/api/compute_units/deallocate/host1_c0-3")
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let units = server.units("").await;
    assert_eq!(units[0]["status"], "FREE");
    assert_eq!(
        (&units[0]["tags"], &units[0]["started_at"]),
        (&json!(null), &json!(null))
    );
    let host = server.host_id("host1").await;
    assert_eq!(
        server.installed_key(&host, "c0-3"),
        None,
        "the key is removed"
    );
    // Deallocating a free unit changes nothing.
    let (status, _) = server
        .delete("/api/compute_units/deallocate/host1_c0-3")
        .await;
    assert_eq!(status, StatusCode::OK);
    // And the unit can be allocated again.
    let (status, unit) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(
        (status, unit["status"].as_str()),
        (StatusCode::OK, Some("ALLOCATED"))
    );
    server.stop().await;
}

async fn decommission_guards_allocated_units(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = server.delete("/api/admin/decommission_server/ghost").await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"detail": "Server ghost not found"})
        )
    );
    server.init_host("host1", &["0-3", "4-7"]).await;
    let (_, unit) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(unit["status"], "ALLOCATED");
    let (status, body) = server.delete("/api/admin/decommission_server/host1").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("host1_c0-3") && d.contains("force=true"))
    );
    // Refused means unchanged: the other unit can still be allocated.
    let (status, _) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .delete("/api/admin/decommission_server/host1?force=maybe")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["detail"][0]["loc"], json!(["query", "force"]));

    let (status, body) = server
        .delete("/api/admin/decommission_server/host1?force=true")
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    // No unit of a decommissioning host is handed out.
    let (status, _) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(status.as_u16(), 460);
    let host = server.host_id("host1").await;
    wait_until(|| async { server.units("?hostname=host1").await.is_empty() }).await;
    assert_eq!(server.installed_key(&host, "c0-3"), None);
    // The name can be registered again, with a new layout.
    server.init_host("host1", &["0-7"]).await;
    let (status, body) = server.delete("/api/admin/decommission_server/host1").await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    server.stop().await;
}

async fn host_failures_surface_as_kloigos_states(backend: Backend) {
    let options = Options {
        faults: vec!["activate:badkey-", "prepare:broken-", "release:sticky-"],
        ..Options::default()
    };
    let server = TestServer::start_with(backend, options).await;
    // A host whose preparation fails never offers its units.
    server
        .init_host_in("broken-1", "eu-north", "a", &["0-3"])
        .await;
    wait_until(|| async {
        let host = server
            .running
            .app
            .store()
            .host_by_hostname("broken-1")
            .await;
        host.ok()
            .flatten()
            .is_some_and(|h| h.status.as_str() == "INIT_FAIL")
    })
    .await;
    server.wait_host_status("broken-1", "UNAVAILABLE", 1).await;
    let (status, _) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(status.as_u16(), 460);
    // A failed key install answers ALLOCATION_FAIL, and deallocation recovers the unit.
    server.init_host("badkey-1", &["0-3"]).await;
    let (status, unit) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(
        (status, unit["status"].as_str()),
        (StatusCode::OK, Some("ALLOCATION_FAIL"))
    );
    let (status, _) = server
        .delete("/api/compute_units/deallocate/badkey-1_c0-3")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.units("?hostname=badkey-1").await[0]["status"],
        "FREE"
    );
    // A failed wipe answers 502 and leaves DEALLOCATION_FAIL, still held.
    server.decommission("badkey-1").await;
    server.init_host("sticky-1", &["0-3"]).await;
    let (_, unit) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(unit["status"], "ALLOCATED");
    let (status, body) = server
        .delete("/api/compute_units/deallocate/sticky-1_c0-3")
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        server.units("?hostname=sticky-1").await[0]["status"],
        "DEALLOCATION_FAIL"
    );
    let (status, _) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(
        status.as_u16(),
        460,
        "a unit that failed to wipe is not handed out"
    );
    server.stop().await;
}

/// A preparation its agent does not answer in time is asked again, not
/// failed: a busy control plane or a fleet joining at once is not a broken
/// host. Only an answer that refuses (above) makes it INIT_FAIL.
async fn a_host_slow_to_prepare_is_not_failed(backend: Backend) {
    let options = Options {
        faults: vec!["prepare:stuck-:hang"],
        agent_timeout: Duration::from_millis(200),
        ..Options::default()
    };
    let server = TestServer::start_with(backend, options).await;
    server
        .init_host_in("stuck-1", "eu-north", "a", &["0-3"])
        .await;
    // Several timeouts' worth: it never fails, and its units never serve.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let host = server
            .running
            .app
            .store()
            .host_by_hostname("stuck-1")
            .await
            .expect("host")
            .expect("registered");
        assert_eq!(host.status.as_str(), "INITIALIZING");
    }
    assert!(server.units("?status=FREE").await.is_empty());
    server.stop().await;
}

async fn allocation_times_out_into_allocation_fail(backend: Backend) {
    let options = Options {
        faults: vec!["activate:slow-:hang"],
        agent_timeout: Duration::from_millis(300),
        ..Options::default()
    };
    let server = TestServer::start_with(backend, options).await;
    server.init_host("slow-1", &["0-3"]).await;
    let (status, unit) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(
        (status, unit["status"].as_str()),
        (StatusCode::OK, Some("ALLOCATION_FAIL"))
    );
    server.stop().await;
}

impl TestServer {
    async fn decommission(&self, hostname: &str) {
        let (status, body) = self
            .delete(&format!(
                "/api/admin/decommission_server/{hostname}?force=true"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        wait_until(|| async {
            self.units(&format!("?hostname={hostname}"))
                .await
                .is_empty()
        })
        .await;
    }
}

async fn wait_until<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met within 10 s");
}

/// An API token scoped to its permissions (made by the admin).
async fn scoped_token(server: &TestServer, scopes: &[&str]) -> String {
    let (status, made) = server
        .call(
            reqwest::Method::POST,
            "/v1/tokens",
            Some(&json!({"name": "scoped", "scopes": scopes})),
            crate::harness::TOKEN,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    made["token"].as_str().expect("token").to_string()
}

/// The permission a route needs is the route's: a unit of a server named
/// `allocate` (`/deallocate/allocate_c0-3`) still needs `instance_delete`
/// to deallocate, and `instance_create` does not do it.
async fn a_routes_permission_follows_the_route_not_the_paths_text(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("allocate", &["0-3"]).await;
    let (status, unit) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    let path = "/api/compute_units/deallocate/allocate_c0-3";
    let creator = scoped_token(&server, &["instance_create", "instance_read"]).await;
    let (status, body) = server
        .request(reqwest::Method::DELETE, path, None, Some(&creator))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(server.units("").await[0]["status"], "ALLOCATED");
    let deleter = scoped_token(&server, &["instance_delete", "instance_read"]).await;
    let (status, body) = server
        .request(reqwest::Method::DELETE, path, None, Some(&deleter))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert_eq!(server.units("").await[0]["status"], "FREE");
    // Nor does a path that merely contains `/admin/` need less or more
    // than its route: listing with a read-only token works.
    let reader = scoped_token(&server, &["instance_read"]).await;
    let (status, body) = server
        .request(
            reqwest::Method::GET,
            "/api/compute_units/?hostname=admin",
            None,
            Some(&reader),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server.stop().await;
}

/// A deallocate sent again, after the first answered or while it is under
/// way, answers 200 as the first did: for a tenant (whose unit, once FREE,
/// is no longer its own) as for an admin.
async fn a_retried_deallocate_is_safe(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("host1", &["0-3", "4-7"]).await;
    let alice = server.user_in("alice", "member", "alpha").await;
    let (status, unit) = server
        .call(
            reqwest::Method::POST,
            "/api/compute_units/allocate",
            Some(&unit_request(4, json!(null))),
            &alice,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    let path = format!(
        "/api/compute_units/deallocate/{}",
        unit["compute_id"].as_str().expect("id")
    );
    for _ in 0..2 {
        let (status, body) = server
            .call(reqwest::Method::DELETE, &path, None, &alice)
            .await;
        assert_eq!((status, body), (StatusCode::OK, json!({})));
    }
    // Twenty at once: every one answers 200, and the unit is FREE.
    let (status, unit) = server.allocate(unit_request(4, json!(null))).await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    let id = unit["compute_id"].as_str().expect("id").to_string();
    let path = format!("/api/compute_units/deallocate/{id}");
    let answers = futures::future::join_all((0..20).map(|_| server.delete(&path))).await;
    for (status, body) in answers {
        assert_eq!((status, body), (StatusCode::OK, json!({})));
    }
    let units = server.units("").await;
    assert!(units.iter().all(|u| u["status"] == "FREE"), "{units:?}");
    server.stop().await;
}

/// A route's path with a trailing slash answers 307 to the route, query
/// kept, as FastAPI does; a client that follows it (method and body kept)
/// gets the route's answer.
async fn a_trailing_slash_is_redirected_as_fastapi_does(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("host1", &["0-3"]).await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let answer = plain
        .post(format!("{}/api/compute_units/allocate/?x=1", server.url))
        .bearer_auth(crate::harness::TOKEN)
        .json(&unit_request(4, json!(null)))
        .send()
        .await
        .expect("send");
    assert_eq!(answer.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        answer.headers()["location"],
        "/api/compute_units/allocate?x=1"
    );
    // Followed, as FastAPI's clients do.
    let (status, unit) = server
        .post(
            "/api/compute_units/allocate/",
            &unit_request(4, json!(null)),
        )
        .await;
    assert_eq!(
        (status, &unit["status"]),
        (StatusCode::OK, &json!("ALLOCATED")),
        "{unit}"
    );
    let (status, body) = server
        .delete("/api/compute_units/deallocate/host1_c0-3/")
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    // What is no route with or without the slash stays a 404.
    let (status, body) = server.post("/api/nowhere/", &json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = server.delete("/api/compute_units/deallocate//").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

/// A tenant's unit is metered like an instance: its CPUs at the catalog's
/// price per CPU and hour (0.02 in the built-in one) while it is
/// allocated, and nothing once it is deallocated.
async fn an_allocated_unit_is_charged_until_its_deallocation(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("host1", &["0-3"]).await;
    crate::verda::top_up(&server, "default", 1.0).await;
    let balance = || async {
        let body = server.get_ok("/v1/workspaces/default/balance").await;
        body["amount"].as_f64().expect("amount")
    };
    let (status, unit) = server
        .allocate(json!({"ssh_public_key": KEY, "tags": null}))
        .await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 4 CPUs at 0.02 an hour: 0.08 an hour, 0.0000333 in 1.5 s.
    let charged = 1.0 - balance().await;
    assert!(
        (0.000_032..0.001).contains(&charged),
        "charged {charged} for 1.5 s of a 4-CPU unit"
    );
    let (status, body) = server
        .delete("/api/compute_units/deallocate/host1_c0-3")
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let after = balance().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(balance().await, after, "a free unit costs nothing");
    server.stop().await;
}
