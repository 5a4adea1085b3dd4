//! Servers, instances, SSH keys and operations through the native API.

use crate::harness::{Backend, KEY, Options, TOKEN, TestServer, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use tessera_core::CpuSet;

crate::on_both_backends!(
    servers_are_created_listed_and_deleted_through_operations,
    an_instance_lives_its_whole_lifecycle,
    bad_instance_requests_are_400_and_create_nothing,
    instances_filter_by_labels_and_page,
    concurrent_instances_never_share_a_cpu,
    a_creation_without_room_fails_and_holds_nothing,
    a_cancelled_creation_is_unwound,
    a_delete_supersedes_a_creation_under_way,
    a_server_registration_cancelled_midway_is_retired,
    ssh_keys_are_validated_and_installed,
    replicas_never_overcommit_a_hosts_memory,
    replicas_never_place_two_instances_on_one_cpu,
    a_delete_the_host_refuses_is_retried_and_says_why,
    a_creation_its_host_fails_is_placed_again,
    a_creation_three_hosts_fail_fails,
    operations_page_and_refuse_bad_queries
);

async fn servers_are_created_listed_and_deleted_through_operations(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Validation answers at once; check_mode validates and changes nothing.
    let (status, body) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "-bad", "ip_address": "192.0.2.1", "zone": "z", "cpus": "0-3"}),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_REQUEST")),
        "{body}"
    );
    let (status, body) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "h", "ip_address": "192.0.2.1", "zone": "z"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no CPUs: {body}");
    // A blank zone is named as the zone, though the region left out is it.
    let (status, body) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "h", "zone": "", "cpus": "0-3"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("zone")),
        "{body}"
    );
    let (status, op) = server
        .post("/v1/servers/create", &json!({"hostname": "web-01", "ip_address": "10.0.0.1", "zone": "de-fra1", "plan": "4xCPU-8GB", "check_mode": true}))
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let op = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(op["result"]["check_mode"], true);
    assert_eq!(server.get_ok("/v1/servers").await, json!([]));

    // The seed's request: a plan gives the CPUs.
    let (status, op) = server
        .post("/v1/servers/create", &json!({"workspace": "default", "provider": "upcloud", "plan": "4xCPU-8GB", "hostname": "web-01", "ip_address": "10.0.0.1", "zone": "de-fra1", "check_mode": false, "tags": ["web", "production"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    assert_eq!(op["status"], "pending");
    assert_eq!(op["result"], json!(null));
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let id = done["result"]["server_id"].as_str().expect("server_id");
    let listed = server.get_ok("/v1/servers").await;
    let host = &listed[0];
    for (field, value) in [
        ("id", json!(id)),
        ("hostname", json!("web-01")),
        ("provider", json!("upcloud")),
        ("plan", json!("4xCPU-8GB")),
        ("zone", json!("de-fra1")),
        ("ip_address", json!("10.0.0.1")),
        ("status", json!("running")),
        ("cpus", json!("0-3")),
        ("memory_mb", json!(8192)),
        ("tags", json!(["web", "production"])),
    ] {
        assert_eq!(host[field], value, "{field}: {host}");
    }
    assert_eq!(
        server.get_ok(&format!("/v1/servers/{id}/status")).await,
        *host
    );
    assert_eq!(server.get_ok("/v1/servers/web-01/status").await, *host);
    let (status, body) = server
        .post("/v1/servers/create", &json!({"hostname": "web-01", "ip_address": "10.0.0.1", "zone": "de-fra1", "cpus": "0-3"}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("CONFLICT"))
    );
    // Kloigos sees the same hosts: a pooled one has no units.
    let (_, units) = server.get("/api/compute_units/?hostname=web-01").await;
    assert_eq!(units, json!([]));

    // Deleting is refused while an instance runs there.
    let instance = server.run_instance(TOKEN, "on-web-01", "cx11").await;
    assert_eq!(instance["status"]["host_id"], id);
    let (status, body) = server.delete(&format!("/v1/servers/{id}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("CONFLICT")),
        "{body}"
    );
    let (status, body) = server.delete("/v1/servers/no-such").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, gone) = server
        .delete(&format!(
            "/v1/instances/{}",
            instance["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    server
        .wait_operation(gone["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    // The body's server_id names the path's server, or is a 400 (a
    // server named two ways, its hostname and its id, is one server).
    let (status, body) = server
        .request(
            Method::DELETE,
            "/v1/servers/web-01",
            Some(&json!({"server_id": "no-such"}).to_string()),
            Some(TOKEN),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_REQUEST")),
        "{body}"
    );
    let (status, op) = server
        .request(
            Method::DELETE,
            "/v1/servers/web-01",
            Some(&json!({"workspace": "default", "server_id": id, "force": false}).to_string()),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let done = server
        .wait_operation(op["id"].as_str().expect("id"), TOKEN)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let status_now = server.get_ok(&format!("/v1/servers/{id}/status")).await;
    assert_eq!(status_now["status"], "decommissioned");
    // A plan of the NxCPU-MGB form must say what a server can have, and
    // agree with cpus; a provider's own plan name is taken as it is.
    for plan in [
        "2xCPU-999999999999GB",
        "2xCPU-0GB",
        "2xCPU",
        "2xCPU-4",
        "0xCPU-4GB",
    ] {
        let (status, body) = server
            .post(
                "/v1/servers/create",
                &json!({"hostname": "web-02", "zone": "z", "plan": plan}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{plan}: {body}");
        assert_eq!(body["error"], "INVALID_REQUEST", "{body}");
    }
    let (status, body) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "web-02", "zone": "z", "cpus": "0-7", "plan": "4xCPU-4GB"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Fewer CPUs than the plan's (some kept for the host), or a provider's
    // own plan name, are taken.
    for (hostname, cpus, plan) in [
        ("web-02", "1-3", "4xCPU-8GB"),
        ("web-03", "0-3", "standard-4"),
    ] {
        let (status, body) = server
            .post(
                "/v1/servers/create",
                &json!({"hostname": hostname, "zone": "z", "cpus": cpus, "plan": plan}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    server.stop().await;
}

async fn an_instance_lives_its_whole_lifecycle(backend: Backend) {
    let server = TestServer::start(backend).await;
    let host = server.add_server("node-1", "0-7", "fin-01").await;
    let (status, key) = server
        .post(
            "/v1/ssh-keys",
            &json!({"name": "laptop", "public_key": KEY}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    // The network the seed's example names, by those names.
    let (status, vpc) = server
        .post(
            "/v1/vpcs",
            &json!({"name": "vpc-abc123", "cidr_block": "10.200.0.0/16"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vpc}");
    let (status, subnet) = server
        .post(
            "/v1/subnets",
            &json!({"vpc_id": vpc["id"], "name": "subnet-def456", "cidr_block": "10.200.1.0/24"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{subnet}");
    for name in ["sg-web", "sg-ssh"] {
        let (status, group) = server
            .post("/v1/security-groups", &json!({"name": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{group}");
    }
    let body = json!({
        "metadata": {"name": "web-server-01", "labels": {"env": "production", "team": "platform"}},
        "spec": {
            "type": "cx31", "image": "ubuntu-22.04", "vcpus": 2, "memory_mb": 4096, "disk_gb": 80,
            "vpc_id": "vpc-abc123", "subnet_id": "subnet-def456", "security_groups": ["sg-web", "sg-ssh"],
            "ssh_key_ids": [key["id"]], "user_data": "IyEvYmluL2Jhc2gKYXB0IHVwZGF0ZQ=="
        }
    });
    let (status, created) = server.post("/v1/instances", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(
        created["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("inst-"))
    );
    assert_eq!(created["status"]["state"], "provisioning");
    assert_eq!(created["status"]["host_id"], "");
    assert_eq!(created["metadata"]["labels"], body["metadata"]["labels"]);
    for field in [
        "type",
        "image",
        "vcpus",
        "memory_mb",
        "disk_gb",
        "vpc_id",
        "subnet_id",
        "security_groups",
        "ssh_key_ids",
        "user_data",
    ] {
        assert_eq!(created["spec"][field], body["spec"][field], "{field}");
    }
    let id = created["id"].as_str().expect("id").to_string();
    let op = server
        .wait_operation(created["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(op["status"], "completed", "{op}");
    assert_eq!(op["result"]["instance_id"], json!(id));
    let running = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(running["status"]["state"], "running");
    assert_eq!(running["status"]["host_id"], json!(host));
    // The first address of its subnet (the network and gateway are not
    // given).
    assert_eq!(running["status"]["private_ip"], "10.200.1.2");
    assert_eq!(running["operation_id"], json!(null));
    // The creation's answer is the instance as recorded (its address given
    // with it), as a read of it answers but for what the operation did.
    assert_eq!(created["status"]["private_ip"], "10.200.1.2");
    assert_eq!(created["metadata"], running["metadata"]);
    assert_eq!(created["spec"], running["spec"]);
    assert_eq!(created["metadata"]["tags"], json!([]));
    let cpus =
        CpuSet::parse_list(running["status"]["cpus"].as_str().expect("cpus")).expect("cpu list");
    assert_eq!(cpus.len(), 2);
    let sim = server.running.sim.as_ref().expect("sim");
    let sim_host = sim
        .host(&tessera_core::HostId::new(host.as_str()))
        .expect("sim host");
    assert_eq!(sim_host.instance(&id), Some(true), "the host runs it");
    // Its host was told its key, read with the rest of what it is told.
    assert_eq!(sim_host.instance_ssh_keys(&id), Some(vec![KEY.to_string()]));

    // Stop, start, and the 409s of wrong states.
    let (status, stopping) = server
        .post_raw(&format!("/v1/instances/{id}/stop"), "")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{stopping}");
    assert_eq!(stopping["status"]["state"], "stopping");
    server
        .wait_operation(stopping["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(
        server.get_ok(&format!("/v1/instances/{id}")).await["status"]["state"],
        "stopped"
    );
    assert_eq!(sim_host.instance(&id), Some(false), "stopped on the host");
    let (status, body) = server
        .post_raw(&format!("/v1/instances/{id}/stop"), "")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("CONFLICT"))
    );
    // A key deleted meanwhile is not installed again when it starts.
    let (status, body) = server
        .delete(&format!(
            "/v1/ssh-keys/{}",
            key["id"].as_str().expect("key id")
        ))
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (status, starting) = server
        .post_raw(&format!("/v1/instances/{id}/start"), "")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{starting}");
    server
        .wait_operation(starting["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(sim_host.instance_ssh_keys(&id), Some(Vec::new()));
    let again = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(again["status"]["state"], "running");
    assert_eq!(
        again["status"]["cpus"], running["status"]["cpus"],
        "a stopped instance keeps its CPUs"
    );

    // Delete: 202 with an operation; the host forgets it, its CPUs are free.
    let (status, deleting) = server.delete(&format!("/v1/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleting}");
    let op_id = deleting["operation_id"].as_str().expect("op").to_string();
    let op = server.wait_operation(&op_id, TOKEN).await;
    assert_eq!(
        (op["status"].as_str(), op["kind"].as_str()),
        (Some("completed"), Some("instance_delete"))
    );
    let gone = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(gone["status"]["state"], "terminated");
    assert_eq!(gone["status"]["cpus"], "");
    assert_eq!(sim_host.instance(&id), None);
    assert_eq!(
        server.get_ok("/v1/instances").await["items"],
        json!([]),
        "terminated instances are left out"
    );
    assert_eq!(
        server.get_ok("/v1/instances?state=terminated").await["items"][0]["id"],
        json!(id)
    );
    // Deleting it again changes nothing and is no error.
    let (status, again) = server.delete(&format!("/v1/instances/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["status"]["state"], "terminated");
    // The operations are listed oldest first, and a finished one cannot be cancelled.
    let ops = server.get_ok("/v1/operations?kind=instance_delete").await;
    assert_eq!(ops.as_array().map(Vec::len), Some(1));
    let (status, body) = server
        .post_raw(&format!("/v1/operations/{op_id}/cancel"), "")
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("CONFLICT"))
    );
    let metrics = server.get_ok("/v1/metrics").await;
    assert_eq!(metrics["tasks"]["running"], 0);
    assert!(
        metrics["tasks"]["total"].as_i64().is_some_and(|n| n >= 5),
        "{metrics}"
    );
    server.stop().await;
}

async fn bad_instance_requests_are_400_and_create_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    let spec = |extra: Value| {
        let mut spec = json!({"type": "cx11", "image": "ubuntu-22.04"});
        for (k, v) in extra.as_object().expect("object") {
            spec[k] = v.clone();
        }
        json!({"metadata": {"name": "ok"}, "spec": spec})
    };
    let bodies = [
        json!({"metadata": {"name": ""}, "spec": {"type": "cx11", "image": "ubuntu-22.04"}}),
        json!({"metadata": {"name": "has space"}, "spec": {"type": "cx11", "image": "ubuntu-22.04"}}),
        json!({"metadata": {"name": "ok", "labels": {"bad key!": "v"}}, "spec": {"type": "cx11", "image": "ubuntu-22.04"}}),
        json!({"metadata": {"name": "ok"}, "spec": {"image": "ubuntu-22.04"}}),
        json!({"metadata": {"name": "ok"}}),
        spec(json!({"type": "m5.huge"})),
        spec(json!({"image": "windows-95"})),
        spec(json!({"vcpus": 0})),
        spec(json!({"vcpus": -1})),
        spec(json!({"memory_mb": 1})),
        spec(json!({"disk_gb": 0})),
        spec(json!({"user_data": "not base64!"})),
        spec(json!({"ssh_key_ids": ["key-nope"]})),
        spec(json!({"vpc_id": ""})),
        spec(json!({"security_groups": [""]})),
        spec(json!({"colour": "red"})),
    ];
    for body in bodies {
        let (status, reply) = server.post("/v1/instances", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {reply}");
        assert_eq!(reply["error"], "INVALID_REQUEST");
        assert!(
            reply["message"].as_str().is_some_and(|m| m.len() > 10),
            "{reply}"
        );
    }
    let listed = server.get_ok("/v1/instances?state=terminated").await;
    assert_eq!(listed["items"], json!([]));
    assert_eq!(server.get_ok("/v1/instances").await["items"], json!([]));
    assert_eq!(
        server.get_ok("/v1/operations?kind=instance_create").await,
        json!([])
    );
    server.stop().await;
}

async fn instances_filter_by_labels_and_page(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-15", "fin-01").await;
    for (name, env, team) in [
        ("a", "production", "platform"),
        ("b", "production", "web"),
        ("c", "staging", "platform"),
        ("d", "production", "platform"),
    ] {
        let body = json!({"metadata": {"name": name, "labels": {"env": env, "team": team}}, "spec": {"type": "cx11", "image": "debian-12"}});
        let (status, reply) = server.post("/v1/instances", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{reply}");
    }
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let selected = server
        .get_ok("/v1/instances?labels=env=production,team=platform")
        .await;
    assert_eq!(names(&selected), ["a", "d"]);
    assert_eq!(
        names(&server.get_ok("/v1/instances?labels=team=web").await),
        ["b"]
    );
    assert_eq!(
        names(&server.get_ok("/v1/instances?labels=team=nobody").await),
        Vec::<String>::new()
    );
    let (status, body) = server.get("/v1/instances?labels=env").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // What no instance could have as a label is refused, not matched
    // against nothing; and a selector names no more labels than an
    // instance has (a thousand terms once answered 500).
    let many = vec!["k=v"; 1000].join(",");
    for bad in ["grp!=g1", "==", "a=b=c", many.as_str()] {
        let (status, body) = server.get(&format!("/v1/instances?labels={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "INVALID_REQUEST", "{body}");
    }

    let first = server.get_ok("/v1/instances?limit=3").await;
    assert_eq!(names(&first), ["a", "b", "c"]);
    let token = first["next_page_token"].as_str().expect("a next page");
    let second = server
        .get_ok(&format!("/v1/instances?limit=3&page_token={token}"))
        .await;
    assert_eq!(names(&second), ["d"]);
    assert!(second.get("next_page_token").is_none(), "{second}");

    // A selector pages too, in creation order, with a state beside it.
    let first = server
        .get_ok("/v1/instances?labels=env=production&limit=2")
        .await;
    assert_eq!(names(&first), ["a", "b"]);
    let token = first["next_page_token"].as_str().expect("a next page");
    let second = server
        .get_ok(&format!(
            "/v1/instances?labels=env=production&limit=2&page_token={token}"
        ))
        .await;
    assert_eq!(names(&second), ["d"]);
    assert!(second.get("next_page_token").is_none(), "{second}");
    // The same selector written in another order pages on; a token given
    // for one listing is refused by another (other filters, another list),
    // with why.
    let first = server
        .get_ok("/v1/instances?labels=team=platform,env=production&limit=1")
        .await;
    let token = first["next_page_token"].as_str().expect("a next page");
    let second = server
        .get_ok(&format!(
            "/v1/instances?labels=env=production,team=platform&limit=1&page_token={token}"
        ))
        .await;
    assert_eq!(names(&second), ["d"]);
    for other in [
        format!("/v1/instances?limit=1&page_token={token}"),
        format!("/v1/instances?labels=env=production&limit=1&page_token={token}"),
        format!("/v1/operations?limit=1&page_token={token}"),
        format!("/v1/servers?limit=1&page_token={token}"),
    ] {
        let (status, body) = server.get(&other).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{other}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("another listing")),
            "{other}: {body}"
        );
    }
    let all = server.get_ok("/v1/instances").await;
    for item in all["items"].as_array().expect("items") {
        let op = item["operation_id"].as_str().map(str::to_string);
        if let Some(op) = op {
            server.wait_operation(&op, TOKEN).await;
        }
    }
    assert_eq!(
        names(
            &server
                .get_ok("/v1/instances?labels=team=platform,env=production&state=running")
                .await
        ),
        ["a", "d"]
    );
    assert_eq!(
        names(
            &server
                .get_ok("/v1/instances?labels=team=platform&state=terminated")
                .await
        ),
        Vec::<String>::new()
    );

    // Servers page through a header, in hostname order.
    server.add_server("node-0", "0-3", "fin-01").await;
    server.add_server("node-2", "0-3", "fin-01").await;
    let mut hostnames = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("{}/v1/servers?limit=2&page_token={t}", server.url),
            None => format!("{}/v1/servers?limit=2", server.url),
        };
        let response = server
            .client
            .get(path)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("list");
        assert_eq!(response.status(), StatusCode::OK);
        token = response
            .headers()
            .get("x-next-page-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let page: Value = response.json().await.expect("servers");
        let page = page.as_array().expect("an array, as before paging");
        assert!(page.len() <= 2);
        hostnames.extend(
            page.iter()
                .filter_map(|s| s["hostname"].as_str().map(str::to_string)),
        );
        if token.is_none() {
            break;
        }
    }
    assert_eq!(hostnames, ["node-0", "node-1", "node-2"]);
    let (status, body) = server.get("/v1/servers?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = server.get("/v1/servers?page_token=%25%25").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    server.stop().await;
}

async fn concurrent_instances_never_share_a_cpu(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    server.add_server("node-2", "0-7", "fin-01").await;
    // 16 CPUs for 12 requests of 2: 8 fit.
    let requests = (0..12).map(|i| {
        let server = &server;
        async move {
            let body = json!({"metadata": {"name": format!("i{i}")}, "spec": {"type": "cx21", "image": "ubuntu-22.04"}});
            let (status, reply) = server.post("/v1/instances", &body).await;
            assert_eq!(status, StatusCode::CREATED, "{reply}");
            server.wait_operation(reply["operation_id"].as_str().expect("op"), TOKEN).await
        }
    });
    let ops = futures::future::join_all(requests).await;
    let completed = ops.iter().filter(|o| o["status"] == "completed").count();
    assert_eq!(completed, 8, "{ops:?}");
    let running = server.get_ok("/v1/instances?state=running").await;
    let mut seen: HashSet<(String, u32)> = HashSet::new();
    for instance in running["items"].as_array().expect("items") {
        let host = instance["status"]["host_id"]
            .as_str()
            .expect("host")
            .to_string();
        let cpus =
            CpuSet::parse_list(instance["status"]["cpus"].as_str().expect("cpus")).expect("cpus");
        assert_eq!(cpus.len(), 2);
        for cpu in cpus.iter() {
            assert!(
                seen.insert((host.clone(), cpu)),
                "CPU {cpu} of {host} given twice"
            );
        }
    }
    assert_eq!(seen.len(), 16);
    let failed = server.get_ok("/v1/instances?state=terminated").await;
    assert_eq!(failed["items"].as_array().map(Vec::len), Some(4));
    server.stop().await;
}

async fn a_creation_without_room_fails_and_holds_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-3", "fin-01").await;
    let body =
        json!({"metadata": {"name": "big"}, "spec": {"type": "cx61", "image": "ubuntu-22.04"}});
    let (_, created) = server.post("/v1/instances", &body).await;
    let op = server
        .wait_operation(created["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(op["status"], "failed");
    assert!(
        op["error"]
            .as_str()
            .is_some_and(|e| e.contains("16 free CPUs")),
        "{op}"
    );
    let instance = server
        .get_ok(&format!(
            "/v1/instances/{}",
            created["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(instance["status"]["state"], "terminated");
    assert_eq!(instance["status"]["cpus"], "");
    // Deleting what failed is no error: 200, as it is, again and again.
    let path = format!("/v1/instances/{}", created["id"].as_str().expect("id"));
    for _ in 0..2 {
        let (status, deleted) = server.delete(&path).await;
        assert_eq!(status, StatusCode::OK, "{deleted}");
        assert_eq!(deleted["status"]["state"], "terminated");
        assert_eq!(deleted["operation_id"], Value::Null);
    }
    // A location no server is in is refused at once, and nothing is
    // recorded.
    let body = json!({"metadata": {"name": "far"}, "spec": {"type": "cx11", "image": "ubuntu-22.04", "location": "mars-01"}});
    let (status, refused) = server.post("/v1/instances", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"], "INVALID_REQUEST");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.location")
                && m.contains("mars-01")
                && m.contains("servers here are in: ")
                && m.contains("fin-01")),
        "{refused}"
    );
    let listed = server.get_ok("/v1/instances?state=terminated").await;
    assert!(
        !listed.to_string().contains("\"far\""),
        "nothing recorded: {listed}"
    );
    // A server's zone without room: recorded, and failed for want of a host.
    let body = json!({"metadata": {"name": "near"}, "spec": {"type": "cx51", "image": "ubuntu-22.04", "location": "fin-01"}});
    let (_, created) = server.post("/v1/instances", &body).await;
    let op = server
        .wait_operation(created["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(op["status"], "failed", "{op}");
    // The whole host is still free.
    let all = server.run_instance(TOKEN, "fits", "cx41").await;
    assert_eq!(all["status"]["cpus"], "0-3", "{all}");
    // Deleted, its CPUs and memory are placed again at once.
    let (status, deleting) = server
        .delete(&format!(
            "/v1/instances/{}",
            all["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleting}");
    server
        .wait_operation(deleting["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    let again = server.run_instance(TOKEN, "fits-again", "cx41").await;
    assert_eq!(again["status"]["cpus"], "0-3", "{again}");
    server.stop().await;
}

/// A server whose host never answers a creation (within a 20 s agent
/// timeout), its id, and an instance being created there (its 201 body).
async fn creating_on_a_hanging_host(backend: Backend) -> (TestServer, String, Value) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["create:slow-:hang"],
            agent_timeout: Duration::from_secs(20),
            ..Options::default()
        },
    )
    .await;
    let host = server.add_server("slow-1", "0-3", "fin-01").await;
    let created = server.create_instance(TOKEN, "hangs", "cx21").await;
    (server, host, created)
}

async fn a_cancelled_creation_is_unwound(backend: Backend) {
    let (server, host, created) = creating_on_a_hanging_host(backend).await;
    let op_id = created["operation_id"].as_str().expect("op");
    // It is placed, and waits on the host.
    let id = created["id"].as_str().expect("id");
    let mut placed = Value::Null;
    for _ in 0..200 {
        placed = server.get_ok(&format!("/v1/instances/{id}")).await;
        if placed["status"]["host_id"] != "" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(placed["status"]["host_id"], json!(host), "{placed}");
    let (status, waited) = server
        .get(&format!("/v1/operations/{op_id}/wait?timeout=0.2"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(waited["status"], "running", "{waited}");
    let (status, cancelled) = server
        .post_raw(&format!("/v1/operations/{op_id}/cancel"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let op = server.wait_operation(op_id, TOKEN).await;
    assert_eq!(op["status"], "cancelled", "{op}");
    let instance = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(instance["status"]["state"], "terminated");
    assert_eq!(instance["status"]["cpus"], "");
    server.stop().await;
}

/// A delete of an instance still being created supersedes the creation,
/// as clouds let a pending instance be terminated: the creation is
/// cancelled and undone on its host, and the instance ends deleted,
/// holding nothing. A delete sent again answers as done.
async fn a_delete_supersedes_a_creation_under_way(backend: Backend) {
    let (server, host, created) = creating_on_a_hanging_host(backend).await;
    let op_id = created["operation_id"].as_str().expect("op");
    let id = created["id"].as_str().expect("id");
    eventually(Duration::from_secs(10), "the instance placed", || async {
        let now = server.get_ok(&format!("/v1/instances/{id}")).await;
        (now["status"]["host_id"] == json!(host)).then_some(())
    })
    .await;
    let (status, deleting) = server.delete(&format!("/v1/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleting}");
    assert_eq!(deleting["operation_id"], json!(op_id), "{deleting}");
    let op = server.wait_operation(op_id, TOKEN).await;
    assert_eq!(op["status"], "cancelled", "{op}");
    let instance = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(instance["status"]["state"], "terminated", "{instance}");
    assert_eq!(instance["status"]["cpus"], "", "{instance}");
    assert_eq!(
        instance["status"]["message"], "deleted while it was being created",
        "{instance}"
    );
    let (status, again) = server.delete(&format!("/v1/instances/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    // Its CPUs are free: the whole host is another's.
    let (_, all) = server
        .post(
            "/v1/instances",
            &json!({"metadata": {"name": "all"}, "spec": {"type": "cx41", "image": "ubuntu-22.04"}}),
        )
        .await;
    eventually(
        Duration::from_secs(10),
        "the next instance placed",
        || async {
            let now = server
                .get_ok(&format!(
                    "/v1/instances/{}",
                    all["id"].as_str().expect("id")
                ))
                .await;
            (now["status"]["cpus"] == "0-3").then_some(())
        },
    )
    .await;
    server.stop().await;
}

/// A server's registration cancelled while its host is being prepared
/// ends cancelled, and the server is retired again.
async fn a_server_registration_cancelled_midway_is_retired(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["prepare:hang-:hang"],
            agent_timeout: Duration::from_secs(2),
            ..Options::default()
        },
    )
    .await;
    let (status, op) = server
        .post(
            "/v1/servers/create",
            &json!({"hostname": "hang-1", "ip_address": "192.0.2.40", "zone": "z", "cpus": "0-3"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{op}");
    let op_id = op["id"].as_str().expect("id");
    let id = op["resource_id"].as_str().expect("server id").to_string();
    eventually(Duration::from_secs(10), "hang-1 registered", || async {
        let (status, _) = server.get(&format!("/v1/servers/{id}/status")).await;
        (status == StatusCode::OK).then_some(())
    })
    .await;
    let (status, cancelling) = server
        .post_raw(&format!("/v1/operations/{op_id}/cancel"), "")
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelling}");
    let op = server.wait_operation(op_id, TOKEN).await;
    assert_eq!(op["status"], "cancelled", "{op}");
    eventually(Duration::from_secs(30), "hang-1 retired", || async {
        let now = server.get_ok(&format!("/v1/servers/{id}/status")).await;
        (now["status"] == "decommissioned").then_some(())
    })
    .await;
    server.stop().await;
}

async fn ssh_keys_are_validated_and_installed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, key) = server
        .post(
            "/v1/ssh-keys",
            &json!({"name": "laptop", "public_key": KEY}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    assert!(
        key["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:")),
        "{key}"
    );
    let id = key["id"].as_str().expect("id");
    assert_eq!(server.get_ok(&format!("/v1/ssh-keys/{id}")).await, key);
    assert_eq!(server.get_ok("/v1/ssh-keys").await, json!([key]));
    for body in [
        json!({"name": "laptop", "public_key": KEY}),
        json!({"name": "x", "public_key": "ssh-rsa not-a-key"}),
        json!({"name": "x", "public_key": format!("{KEY}\u{0}")}),
        json!({"name": "x", "public_key": format!("{KEY} with\u{7}bell")}),
        json!({"name": "", "public_key": KEY}),
        json!({"name": "x"}),
    ] {
        let (status, reply) = server.post("/v1/ssh-keys", &body).await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::CONFLICT,
            "{body} -> {status} {reply}"
        );
    }
    // A key named twice in an instance's spec is one key.
    server.add_server("node-1", "0-3", "fin-01").await;
    let (status, made) = server
        .post(
            "/v1/instances",
            &json!({"metadata": {"name": "twice"}, "spec": {"type": "cx11", "image": "ubuntu-22.04", "ssh_key_ids": [id, id]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["spec"]["ssh_key_ids"], json!([id]), "{made}");
    let done = server
        .wait_operation(made["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let (status, gone) = server
        .delete(&format!(
            "/v1/instances/{}",
            made["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{gone}");
    server
        .wait_operation(gone["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    let (status, _) = server.delete(&format!("/v1/ssh-keys/{id}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server.get(&format!("/v1/ssh-keys/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

/// Two replicas, A and B, of one cloud with one host, `node-1`: 4 CPUs,
/// 32 GB (simulated hosts have 8 GB per CPU). B has seen the host once,
/// as it started; what A places there later, B's placement view does not
/// see.
async fn two_replicas_one_host(
    backend: Backend,
) -> (TestServer, TestServer, crate::harness::SharedDatabase) {
    let database = crate::harness::SharedDatabase::new(backend).await;
    let shared = || database.options();
    let a = TestServer::start_with(backend, shared()).await;
    a.add_server("node-1", "0-3", "fin-01").await;
    let b = TestServer::start_with(backend, shared()).await;
    // B pushes the hosts' desired state to its own simulated hosts as it
    // starts; let that pass before A places anything, or B's simulated
    // node-1 would hold A's first instance forever (a real host is one).
    let node = tessera_core::HostId::new(a.host_id("node-1").await.as_str());
    let sim = b.running.sim.clone().expect("simulated hosts");
    crate::harness::eventually(
        Duration::from_secs(10),
        "B's first contact with node-1",
        || {
            let sim = sim.clone();
            let node = node.clone();
            async move { sim.host(&node).map(|_| ()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    (a, b, database)
}

async fn replicas_never_place_two_instances_on_one_cpu(backend: Backend) {
    let (a, b, _database) = two_replicas_one_host(backend).await;
    let on_a = a.run_instance(TOKEN, "on-a", "cx11").await;
    assert_eq!(on_a["status"]["cpus"], "0", "{on_a}");
    // B's view has CPU 0 free and picks it; the ledger refuses it, and B
    // places the instance on a CPU no one holds.
    let on_b = b.run_instance(TOKEN, "on-b", "cx11").await;
    assert_eq!(on_b["status"]["state"], "running", "{on_b}");
    assert_ne!(on_b["status"]["cpus"], "0", "{on_b}");
    for (server, instance) in [(&a, &on_a), (&b, &on_b)] {
        let id = instance["id"].as_str().expect("id");
        let now = server.get_ok(&format!("/v1/instances/{id}")).await;
        assert_eq!(now["status"]["cpus"], instance["status"]["cpus"], "{now}");
    }
    a.stop().await;
    b.stop().await;
}

async fn replicas_never_overcommit_a_hosts_memory(backend: Backend) {
    let (a, b, _database) = two_replicas_one_host(backend).await;
    let big = |name: &str| json!({"metadata": {"name": name}, "spec": {"type": "cx11", "image": "ubuntu-22.04", "memory_mb": 20480}});
    // On A: instances on CPUs 0, 1 and 2 (the last with 20 GB); the one on
    // CPU 0 goes again, leaving CPUs 0 and 3 and 10 GB free.
    let small = a.run_instance(TOKEN, "small-first", "cx11").await;
    let first = a.run_instance(TOKEN, "first", "cx11").await;
    assert_eq!(first["status"]["cpus"], "1", "{first}");
    let (_, big_one) = a.post("/v1/instances", &big("big")).await;
    let op = a
        .wait_operation(big_one["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(op["status"], "completed", "{op}");
    let (_, gone) = a
        .delete(&format!(
            "/v1/instances/{}",
            small["id"].as_str().expect("id")
        ))
        .await;
    a.wait_operation(gone["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    // B's placement view has seen none of it and picks CPU 0, which is
    // free; the store knows the memory is not.
    let (_, second) = b.post("/v1/instances", &big("second")).await;
    let op = b
        .wait_operation(second["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(
        op["status"], "failed",
        "20 GB more on a host with 10 GB left: {op}"
    );
    assert!(
        op["error"].as_str().is_some_and(|e| e.contains("20480 MB")),
        "{op}"
    );
    // Smaller ones still fit, on the free CPUs.
    let small = b.run_instance(TOKEN, "small", "cx11").await;
    assert_eq!(small["status"]["state"], "running", "{small}");
    a.stop().await;
    b.stop().await;
}

async fn a_delete_the_host_refuses_is_retried_and_says_why(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["delete:bad-"],
            agent_timeout: std::time::Duration::from_secs(1),
            ..Options::default()
        },
    )
    .await;
    server.add_server("bad-1", "0-3", "fin-01").await;
    let instance = server.run_instance(TOKEN, "sticky", "cx11").await;
    let id = instance["id"].as_str().expect("id");
    let (status, deleting) = server.delete(&format!("/v1/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let op_id = deleting["operation_id"].as_str().expect("op");
    let mut op = Value::Null;
    for _ in 0..100 {
        op = server.get_ok(&format!("/v1/operations/{op_id}")).await;
        if op["last_error"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still running: its CPUs stay held until the host lets the instance go.
    assert_eq!(op["status"], "running", "{op}");
    assert!(
        op["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("simulated")),
        "{op}"
    );
    let now = server.get_ok(&format!("/v1/instances/{id}")).await;
    assert_eq!(now["status"]["state"], "stopping");
    assert_ne!(now["status"]["cpus"], "");
    // Deletes are idempotent: another, sent meanwhile, answers as the one
    // under way (its operation), not with a 409.
    let (status, again) = server.delete(&format!("/v1/instances/{id}")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["operation_id"], op_id, "{again}");
    // Taken up again once its lease has passed (2 x 1 s + 5 s).
    for _ in 0..200 {
        op = server.get_ok(&format!("/v1/operations/{op_id}")).await;
        if op["attempts"].as_i64().unwrap_or(0) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(op["attempts"].as_i64().unwrap_or(0) >= 2, "{op}");
    server.stop().await;
}

/// Packing sends a creation to the host with the fewest free CPUs: one
/// that fails every creation would get them all. A creation it fails is
/// taken off it and placed again, on another host that fits, and runs;
/// the next ones go to that host without trying the failing one.
async fn a_creation_its_host_fails_is_placed_again(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["create:bad-"],
            ..Options::default()
        },
    )
    .await;
    server.add_server("bad-1", "0-3", "fin-01").await;
    let node = server.add_server("node-1", "0-15", "fin-01").await;
    for name in ["first", "second", "third"] {
        let next = server.run_instance(TOKEN, name, "cx11").await;
        assert_eq!(next["status"]["state"], "running", "{next}");
        assert_eq!(next["status"]["host_id"], node.as_str(), "{next}");
        // Only the first tried the failing host.
        let id = next["id"].as_str().expect("id");
        let tried = if name == "first" { 1 } else { 0 };
        assert_eq!(hosts_failed(&server, id).await, tried, "{name}");
    }
    // The failing host holds nothing of the creation it failed.
    let held = "SELECT COUNT(*) FROM cpu_claims c JOIN hosts h ON h.id = c.host_id \
                WHERE h.hostname = $1";
    assert_eq!(server.sql_int(held, "bad-1").await, 0);
    assert_eq!(server.sql_int(held, "node-1").await, 3);
    server.stop().await;
}

/// A creation that fails three times fails, holding nothing, as Nova's
/// builds do after `max_attempts`: on one host that fits (tried again, as
/// nothing else fits), as on three of four.
async fn a_creation_three_hosts_fail_fails(backend: Backend) {
    let server = TestServer::start_with(
        backend,
        Options {
            faults: vec!["create:bad-"],
            ..Options::default()
        },
    )
    .await;
    server.add_server("bad-1", "0-3", "fin-01").await;
    for (name, more) in [
        ("alone", &[][..]),
        ("unlucky", &["bad-2", "bad-3", "bad-4"]),
    ] {
        for host in more {
            server.add_server(host, "0-3", "fin-01").await;
        }
        let failed = server.run_instance(TOKEN, name, "cx11").await;
        assert_eq!(failed["status"]["state"], "terminated", "{failed}");
        assert!(
            failed["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("simulated")),
            "{failed}"
        );
        let id = failed["id"].as_str().expect("id");
        assert_eq!(hosts_failed(&server, id).await, 2, "{name}");
    }
    assert_eq!(
        server
            .sql_int("SELECT COUNT(*) FROM cpu_claims WHERE holder <> $1", "")
            .await,
        0
    );
    server.stop().await;
}

/// How many hosts failed to create `instance` and let it go, as its
/// creation's step log has them.
async fn hosts_failed(server: &TestServer, instance: &str) -> i64 {
    server
        .sql_int(
            "SELECT CAST((LENGTH(steps) - LENGTH(REPLACE(steps, 'failed_on', ''))) / 9 AS BIGINT) \
             FROM operations WHERE resource_id = $1 AND kind = 'instance_create'",
            instance,
        )
        .await
}

async fn operations_page_and_refuse_bad_queries(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    for n in 0..3 {
        server.run_instance(TOKEN, &format!("p{n}"), "cx11").await;
    }
    // Four operations: the server's and three creations.
    let response = server
        .client
        .get(format!("{}/v1/operations?limit=3", server.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("list");
    assert_eq!(response.status(), StatusCode::OK);
    let token = response
        .headers()
        .get("x-next-page-token")
        .and_then(|v| v.to_str().ok())
        .expect("a next page")
        .to_string();
    let first: Value = response.json().await.expect("json");
    assert_eq!(first.as_array().map(Vec::len), Some(3));
    assert_eq!(first[0]["kind"], "server_create");
    let rest = server
        .get_ok(&format!("/v1/operations?limit=3&page_token={token}"))
        .await;
    assert_eq!(rest.as_array().map(Vec::len), Some(1));
    assert_ne!(rest[0]["id"], first[2]["id"]);
    assert_eq!(
        server.get_ok("/v1/operations?status=failed").await,
        json!([])
    );
    for bad in [
        "/v1/operations?limit=0",
        "/v1/operations?limit=x",
        "/v1/operations?page_token=nonsense",
        "/v1/operations/any/wait?timeout=-1",
        "/v1/operations/any/wait?timeout=soon",
        // A filter on a state or kind that does not exist is a mistake,
        // not an empty list.
        "/v1/operations?kind=instance_explode",
        "/v1/operations?status=done",
        "/v1/instances?state=sleeping",
    ] {
        let (status, body) = server.get(bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("INVALID_REQUEST")),
            "{bad}: {body}"
        );
    }
    // Waiting on an operation that has ended answers at once.
    let id = first[0]["id"].as_str().expect("id");
    let started = std::time::Instant::now();
    let (status, op) = server
        .get(&format!("/v1/operations/{id}/wait?timeout=30"))
        .await;
    assert_eq!(
        (status, op["status"].as_str()),
        (StatusCode::OK, Some("completed"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered without waiting out the timeout"
    );
    server.stop().await;
}
