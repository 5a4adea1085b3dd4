//! Private networks through the native API: the default VPC, subnet and
//! security group of a workspace; VPCs that never overlap, in any
//! workspace; subnets within their VPC; security groups' rules; and
//! instances that name them (by id or name), get addresses of their subnet
//! and keep what they are in from being deleted.

use crate::harness::{Backend, TOKEN, TestServer, assert_error};
use crate::on_both_backends;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_backends!(
    a_workspace_has_a_default_network_and_makes_its_own,
    instances_get_addresses_of_their_subnet_and_hold_their_network,
    a_subnet_another_replica_deleted_is_not_found,
    a_name_with_the_shape_of_an_id_is_refused,
);

async fn call(
    server: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    server.call(method, path, body.as_ref(), token).await
}

async fn made(server: &TestServer, token: &str, path: &str, body: Value) -> Value {
    let (status, made) = call(server, token, Method::POST, path, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{path}: {made}");
    made
}

/// A creation's body: a `cx11` of `ubuntu-22.04` named `name`, with
/// `spec`'s network fields.
fn create(name: &str, mut spec: Value) -> Value {
    spec["type"] = json!("cx11");
    spec["image"] = json!("ubuntu-22.04");
    json!({"metadata": {"name": name}, "spec": spec})
}

fn bad(status: StatusCode, body: &Value, what: &str) {
    assert_error(status, body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains(what)),
        "the message names {what}: {body}"
    );
}

async fn a_workspace_has_a_default_network_and_makes_its_own(backend: Backend) {
    let server = TestServer::start(backend).await;

    // The default VPC, subnet and group, made on first sight.
    let (status, vpcs) = call(&server, TOKEN, Method::GET, "/v1/vpcs", None).await;
    assert_eq!(status, StatusCode::OK, "{vpcs}");
    let vpcs = vpcs["items"].as_array().expect("items").clone();
    assert_eq!(vpcs.len(), 1, "{vpcs:?}");
    let default = &vpcs[0];
    assert_eq!(
        (
            &default["name"],
            &default["cidr_block"],
            &default["is_default"]
        ),
        (&json!("default"), &json!("10.128.0.0/20"), &json!(true))
    );
    let default_id = default["id"].as_str().expect("id").to_string();
    assert!(default_id.starts_with("vpc-"), "{default_id}");
    let subnets = server.get_ok("/v1/subnets").await["items"].clone();
    assert_eq!(subnets.as_array().map(Vec::len), Some(1), "{subnets}");
    assert_eq!(subnets[0]["vpc_id"], json!(default_id));
    assert_eq!(subnets[0]["cidr_block"], "10.128.0.0/20");
    assert_eq!(subnets[0]["available_ips"], 4093);
    let groups = server.get_ok("/v1/security-groups").await["items"].clone();
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    let group_id = groups[0]["id"].as_str().expect("id").to_string();
    assert_eq!(groups[0]["name"], "default");
    assert_eq!(
        groups[0]["rules"],
        json!([
            {"protocol": "tcp", "port_range": "22", "cidr": "0.0.0.0/0"},
            {"protocol": "icmp", "cidr": "0.0.0.0/0"},
            {"protocol": "all", "source_security_group": group_id},
        ])
    );
    // By id or by name.
    assert_eq!(
        server.get_ok("/v1/vpcs/default").await["id"],
        json!(default_id)
    );
    assert_eq!(
        server.get_ok("/v1/security-groups/default").await["id"],
        json!(group_id)
    );

    // A VPC of its own: given a block of the pool, or given one.
    let mine = made(
        &server,
        TOKEN,
        "/v1/vpcs",
        json!({"name": "mine", "cidr_block": "10.200.0.0/16"}),
    )
    .await;
    assert_eq!(mine["cidr_block"], "10.200.0.0/16");
    assert_eq!(mine["is_default"], false);
    let chosen = made(&server, TOKEN, "/v1/vpcs", json!({"name": "chosen"})).await;
    assert_eq!(chosen["cidr_block"], "10.128.16.0/20");
    // What is refused, and changes nothing.
    for (body, what) in [
        (
            json!({"name": "x", "cidr_block": "10.200.0.1/16"}),
            "host bits",
        ),
        (json!({"name": "x", "cidr_block": "10.0.0.0/8"}), "/16"),
        (json!({"name": "x", "cidr_block": "10.0.0.0/16"}), "pool"),
        (json!({"name": "x", "cidr_block": "8.8.8.0/24"}), "pool"),
        (json!({"name": "x", "cidr_block": "nope"}), "CIDR"),
        (json!({"name": "bad name!"}), "name"),
        (json!({"name": ""}), "name"),
    ] {
        let (status, body) = call(&server, TOKEN, Method::POST, "/v1/vpcs", Some(body)).await;
        bad(status, &body, what);
    }
    let (status, body) = call(
        &server,
        TOKEN,
        Method::POST,
        "/v1/vpcs",
        Some(json!({"name": "x", "cidr": "10.1.0.0/16"})),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    let (status, body) = call(
        &server,
        TOKEN,
        Method::POST,
        "/v1/vpcs",
        Some(json!({"name": "over", "cidr_block": "10.200.4.0/24"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("10.200.0.0/16")),
        "its own block is named: {body}"
    );
    let (status, body) = call(
        &server,
        TOKEN,
        Method::POST,
        "/v1/vpcs",
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    assert_eq!(
        server.get_ok("/v1/vpcs").await["items"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    // At most five VPCs a workspace, its default one included.
    for name in ["fourth", "fifth"] {
        made(&server, TOKEN, "/v1/vpcs", json!({"name": name})).await;
    }
    let (status, body) = call(
        &server,
        TOKEN,
        Method::POST,
        "/v1/vpcs",
        Some(json!({"name": "sixth"})),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "QUOTA_EXCEEDED");
    for name in ["fourth", "fifth"] {
        let (status, _) = call(
            &server,
            TOKEN,
            Method::DELETE,
            &format!("/v1/vpcs/{name}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }

    // Another workspace: its default VPC overlaps none, it sees none of
    // this one's, and its blocks cannot overlap this one's either.
    let other = server.user_in("olga", "member", "other").await;
    let (_, theirs) = call(&server, &other, Method::GET, "/v1/vpcs", None).await;
    let theirs = theirs["items"].as_array().expect("items").clone();
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(theirs[0]["cidr_block"], "10.128.32.0/20");
    let (status, body) = call(
        &server,
        &other,
        Method::GET,
        &format!("/v1/vpcs/{default_id}"),
        None,
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (status, body) = call(
        &server,
        &other,
        Method::GET,
        &format!("/v1/security-groups/{group_id}"),
        None,
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    let (status, body) = call(
        &server,
        &other,
        Method::POST,
        "/v1/vpcs",
        Some(json!({"name": "mine", "cidr_block": "10.200.0.0/20"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    assert!(
        !body.to_string().contains("10.200.0.0/16"),
        "another workspace's block is not named: {body}"
    );
    let (status, body) = call(
        &server,
        &other,
        Method::DELETE,
        &format!("/v1/vpcs/{}", mine["id"].as_str().expect("id")),
        None,
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    // A viewer reads, and makes nothing.
    let viewer = server.user_in("vera", "viewer", "other").await;
    let (status, _) = call(&server, &viewer, Method::GET, "/v1/subnets", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = call(
        &server,
        &viewer,
        Method::POST,
        "/v1/security-groups",
        Some(json!({"name": "v"})),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "FORBIDDEN");

    // Subnets: within their VPC, overlapping none of its others.
    let first = made(
        &server,
        TOKEN,
        "/v1/subnets",
        json!({"vpc_id": "mine", "name": "a"}),
    )
    .await;
    assert_eq!(first["cidr_block"], "10.200.0.0/24");
    assert_eq!(first["available_ips"], 253);
    let second = made(
        &server,
        TOKEN,
        "/v1/subnets",
        json!({"vpc_id": mine["id"], "name": "b", "cidr_block": "10.200.9.0/28"}),
    )
    .await;
    assert_eq!(second["available_ips"], 13);
    for (body, what) in [
        (
            json!({"vpc_id": "mine", "name": "c", "cidr_block": "10.201.0.0/24"}),
            "within",
        ),
        (json!({"vpc_id": "nope", "name": "c"}), "nope"),
        (
            json!({"vpc_id": "mine", "name": "c", "cidr_block": "10.200.1.0/29"}),
            "/28",
        ),
        (json!({"vpc_id": "", "name": "c"}), "vpc_id"),
    ] {
        let (status, body) = call(&server, TOKEN, Method::POST, "/v1/subnets", Some(body)).await;
        bad(status, &body, what);
    }
    let (status, body) = call(
        &server,
        TOKEN,
        Method::POST,
        "/v1/subnets",
        Some(json!({"vpc_id": "mine", "name": "c", "cidr_block": "10.200.9.0/24"})),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    let only_mine = server.get_ok("/v1/subnets?vpc_id=mine").await["items"].clone();
    assert_eq!(only_mine.as_array().map(Vec::len), Some(2), "{only_mine}");

    // Security groups: rules checked, a source by name (its own too).
    let web = made(
        &server,
        TOKEN,
        "/v1/security-groups",
        json!({
            "name": "web", "description": "the web tier",
            "rules": [
                {"protocol": "tcp", "port_range": "80-443", "cidr": "0.0.0.0/0"},
                {"protocol": "tcp", "port_range": "8080", "source_security_group": "web"},
                {"protocol": "udp", "cidr": "192.0.2.7"},
            ],
        }),
    )
    .await;
    let web_id = web["id"].as_str().expect("id").to_string();
    assert_eq!(web["rules"][1]["source_security_group"], json!(web_id));
    assert_eq!(web["rules"][2]["cidr"], "192.0.2.7/32");
    let ssh = made(
        &server,
        TOKEN,
        "/v1/security-groups",
        json!({"name": "ssh"}),
    )
    .await;
    assert_eq!(
        ssh["rules"],
        json!([{"protocol": "tcp", "port_range": "22", "cidr": "0.0.0.0/0"}])
    );
    for (rule, what) in [
        (json!({"protocol": "sctp"}), "sctp"),
        (
            json!({"protocol": "icmp", "port_range": "22"}),
            "port_range",
        ),
        (json!({"protocol": "tcp", "port_range": "90-80"}), "90-80"),
        (json!({"protocol": "tcp", "port_range": "0"}), "port"),
        (json!({"protocol": "tcp", "cidr": "10.0.0.0/33"}), "cidr"),
        (
            json!({"protocol": "tcp", "cidr": "0.0.0.0/0", "source_security_group": "web"}),
            "both",
        ),
        (
            json!({"protocol": "tcp", "source_security_group": "nope"}),
            "nope",
        ),
    ] {
        let (status, body) = call(
            &server,
            TOKEN,
            Method::POST,
            "/v1/security-groups",
            Some(json!({"name": "x", "rules": [rule]})),
        )
        .await;
        bad(status, &body, what);
        let (status, body) = call(
            &server,
            TOKEN,
            Method::PUT,
            "/v1/security-groups/ssh",
            Some(json!({"rules": [json!(rule)]})),
        )
        .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    }
    let too_many: Vec<Value> = (0..65).map(|_| json!({"protocol": "all"})).collect();
    let (status, body) = call(
        &server,
        TOKEN,
        Method::PUT,
        "/v1/security-groups/ssh",
        Some(json!({"rules": too_many})),
    )
    .await;
    bad(status, &body, "at most 64");
    assert_eq!(
        server.get_ok("/v1/security-groups/ssh").await["rules"],
        ssh["rules"],
        "refused changes changed nothing"
    );
    let (status, set) = call(
        &server,
        TOKEN,
        Method::PUT,
        "/v1/security-groups/ssh",
        Some(json!({"rules": [{"protocol": "tcp", "port_range": "22", "cidr": "203.0.113.0/24"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["rules"][0]["cidr"], "203.0.113.0/24");
    // web names itself; ssh is named by no rule and goes.
    let (status, body) = call(
        &server,
        TOKEN,
        Method::PUT,
        "/v1/security-groups/ssh",
        Some(json!({"rules": [{"protocol": "all", "source_security_group": "web"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(
        &server,
        TOKEN,
        Method::DELETE,
        &format!("/v1/security-groups/{web_id}"),
        None,
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    let (status, _) = call(
        &server,
        TOKEN,
        Method::DELETE,
        "/v1/security-groups/ssh",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &server,
        TOKEN,
        Method::DELETE,
        &format!("/v1/security-groups/{web_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The defaults stay; a VPC goes with its subnets.
    for path in ["/v1/vpcs/default", "/v1/security-groups/default"] {
        let (status, body) = call(&server, TOKEN, Method::DELETE, path, None).await;
        assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    }
    let default_subnet = subnets[0]["id"].as_str().expect("id").to_string();
    let (status, body) = call(
        &server,
        TOKEN,
        Method::DELETE,
        &format!("/v1/subnets/{default_subnet}"),
        None,
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    let (status, _) = call(&server, TOKEN, Method::DELETE, "/v1/vpcs/mine", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(
        &server,
        TOKEN,
        Method::GET,
        &format!("/v1/subnets/{}", first["id"].as_str().expect("id")),
        None,
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    // Its block is free again.
    made(
        &server,
        &other,
        "/v1/vpcs",
        json!({"name": "reuse", "cidr_block": "10.200.0.0/20"}),
    )
    .await;
    server.stop().await;
}

async fn instances_get_addresses_of_their_subnet_and_hold_their_network(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-31", "fin-01").await;

    // Named nothing: the defaults, shown by id.
    let (status, plain) = call(
        &server,
        TOKEN,
        Method::POST,
        "/v1/instances",
        Some(create("plain", json!({}))),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{plain}");
    let default_vpc = server.get_ok("/v1/vpcs/default").await;
    let default_group = server.get_ok("/v1/security-groups/default").await;
    assert_eq!(plain["spec"]["vpc_id"], default_vpc["id"]);
    assert_eq!(
        plain["spec"]["security_groups"],
        json!([default_group["id"]])
    );
    assert_eq!(plain["status"]["private_ip"], "10.128.0.2");

    // Named: a VPC and subnet and groups, by name.
    let vpc = made(
        &server,
        TOKEN,
        "/v1/vpcs",
        json!({"name": "app", "cidr_block": "10.210.0.0/16"}),
    )
    .await;
    let tiny = made(
        &server,
        TOKEN,
        "/v1/subnets",
        json!({"vpc_id": "app", "name": "tiny", "cidr_block": "10.210.5.0/28"}),
    )
    .await;
    made(
        &server,
        TOKEN,
        "/v1/subnets",
        json!({"vpc_id": "app", "name": "other", "cidr_block": "10.210.6.0/24"}),
    )
    .await;
    let group = made(
        &server,
        TOKEN,
        "/v1/security-groups",
        json!({"name": "app-sg"}),
    )
    .await;
    let spec =
        json!({"vpc_id": "app", "subnet_id": "tiny", "security_groups": ["app-sg", "default"]});
    let (status, first) = call(
        &server,
        TOKEN,
        Method::POST,
        "/v1/instances",
        Some(create("a-1", spec.clone())),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(
        first["spec"]["subnet_id"], "tiny",
        "the spec shows what was asked"
    );
    assert_eq!(first["status"]["private_ip"], "10.210.5.2");
    // Its host is told its groups and their rules.
    let op = server
        .wait_operation(first["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(op["status"], "completed", "{op}");
    let first_id = first["id"].as_str().expect("id");
    let running = server.get_ok(&format!("/v1/instances/{first_id}")).await;
    let host = tessera_core::HostId::new(running["status"]["host_id"].as_str().expect("host"));
    let told = server
        .running
        .sim
        .clone()
        .expect("simulated hosts")
        .host(&host)
        .and_then(|h| h.instance_groups(first_id))
        .expect("the instance on its host");
    let default_group = server.get_ok("/v1/security-groups/default").await;
    let default_id = default_group["id"].as_str().expect("id");
    let group_id = group["id"].as_str().expect("id");
    let mut ids: Vec<&str> = told.iter().map(|g| g.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![default_id, group_id];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    for g in &told {
        let rules = match g.id == default_id {
            true => tessera_core::network::default_rules(default_id).len(),
            false => group["rules"].as_array().map_or(0, Vec::len),
        };
        assert_eq!(g.rules.len(), rules, "{g:?}");
    }
    assert_eq!(
        told.iter()
            .find(|g| g.id == default_id)
            .map(|g| g.rules.clone()),
        Some(tessera_core::network::default_rules(default_id))
    );
    // Bad references change nothing.
    for (spec, what) in [
        (json!({"vpc_id": "nope"}), "nope"),
        (json!({"subnet_id": "nope"}), "nope"),
        (
            json!({"vpc_id": "default", "subnet_id": tiny["id"]}),
            "not in VPC",
        ),
        (json!({"security_groups": ["app-sg", "nope"]}), "nope"),
    ] {
        let (status, body) = call(
            &server,
            TOKEN,
            Method::POST,
            "/v1/instances",
            Some(create("bad", spec)),
        )
        .await;
        bad(status, &body, what);
    }
    let other = server.user_in("otto", "member", "elsewhere").await;
    let (status, body) = call(
        &server,
        &other,
        Method::POST,
        "/v1/instances",
        Some(create("x", json!({"vpc_id": vpc["id"]}))),
    )
    .await;
    bad(status, &body, vpc["id"].as_str().expect("id"));
    assert_eq!(
        server
            .get_ok(&format!("/v1/subnets/{}", tiny["id"].as_str().expect("id")))
            .await["available_ips"],
        12
    );

    // The subnet fills up: 13 addresses in a /28.
    let mut ids = vec![first["id"].as_str().expect("id").to_string()];
    for n in 2..=13 {
        let (status, made) = call(
            &server,
            TOKEN,
            Method::POST,
            "/v1/instances",
            Some(create(&format!("a-{n}"), spec.clone())),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{made}");
        assert_eq!(made["status"]["private_ip"], format!("10.210.5.{}", n + 1));
        ids.push(made["id"].as_str().expect("id").to_string());
    }
    let (status, body) = call(
        &server,
        TOKEN,
        Method::POST,
        "/v1/instances",
        Some(create("a-14", spec.clone())),
    )
    .await;
    assert_error(status, &body, StatusCode::CONFLICT, "INSUFFICIENT_CAPACITY");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no free address")),
        "{body}"
    );
    let tiny_path = format!("/v1/subnets/{}", tiny["id"].as_str().expect("id"));
    assert_eq!(server.get_ok(&tiny_path).await["available_ips"], 0);

    // What instances are in cannot go.
    for path in [
        format!("/v1/subnets/{}", tiny["id"].as_str().expect("id")),
        "/v1/vpcs/app".to_string(),
        format!("/v1/security-groups/{}", group["id"].as_str().expect("id")),
    ] {
        let (status, body) = call(&server, TOKEN, Method::DELETE, &path, None).await;
        assert_error(status, &body, StatusCode::CONFLICT, "CONFLICT");
    }
    // Deleting one frees its address for the next.
    let gone = ids.remove(3);
    let (status, deleted) = call(
        &server,
        TOKEN,
        Method::DELETE,
        &format!("/v1/instances/{gone}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleted}");
    server
        .wait_operation(deleted["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(server.get_ok(&tiny_path).await["available_ips"], 1);
    let (status, again) = call(
        &server,
        TOKEN,
        Method::POST,
        "/v1/instances",
        Some(create("a-again", spec.clone())),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["status"]["private_ip"], "10.210.5.5");
    ids.push(again["id"].as_str().expect("id").to_string());
    // Running, its host reports the address it was given.
    let op = server
        .wait_operation(again["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(op["status"], "completed", "{op}");
    let running = server
        .get_ok(&format!("/v1/instances/{}", ids.last().expect("id")))
        .await;
    assert_eq!(running["status"]["private_ip"], "10.210.5.5");

    // Once they are all gone, so can their network be.
    for id in &ids {
        let (status, deleted) = call(
            &server,
            TOKEN,
            Method::DELETE,
            &format!("/v1/instances/{id}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{deleted}");
        server
            .wait_operation(deleted["operation_id"].as_str().expect("op"), TOKEN)
            .await;
    }
    assert_eq!(server.get_ok(&tiny_path).await["available_ips"], 13);
    let (status, _) = call(
        &server,
        TOKEN,
        Method::DELETE,
        &format!("/v1/security-groups/{}", group["id"].as_str().expect("id")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&server, TOKEN, Method::DELETE, "/v1/vpcs/app", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.stop().await;
}

/// A replica keeps the subnets new instances named (a subnet never
/// changes), so one another replica deleted since is still known there;
/// the instance's write finds it gone, and the creation looks again and
/// answers what a creation anywhere answers: not found, nothing made. By
/// id and by name, each known to replica A when replica B deletes it.
async fn a_subnet_another_replica_deleted_is_not_found(backend: Backend) {
    let database = crate::harness::SharedDatabase::new(backend).await;
    let shared = || database.options();
    let a = TestServer::start_with(backend, shared()).await;
    let b = TestServer::start_with(backend, shared()).await;
    a.add_server("node-1", "0-15", "fin-01").await;
    made(
        &a,
        TOKEN,
        "/v1/vpcs",
        json!({"name": "app", "cidr_block": "10.211.0.0/16"}),
    )
    .await;
    for (n, name, by_id) in [(1, "web", true), (2, "api", false)] {
        let subnet = made(
            &a,
            TOKEN,
            "/v1/subnets",
            json!({"vpc_id": "app", "name": name, "cidr_block": format!("10.211.{n}.0/24")}),
        )
        .await;
        let subnet_id = subnet["id"].as_str().expect("id").to_string();
        let spec = match by_id {
            true => json!({"subnet_id": subnet_id}),
            false => json!({"vpc_id": "app", "subnet_id": name}),
        };
        // Replica A makes an instance in it (and so knows it), then
        // deletes the instance.
        let (status, body) = call(
            &a,
            TOKEN,
            Method::POST,
            "/v1/instances",
            Some(create(&format!("{name}-1"), spec.clone())),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        a.wait_operation(body["operation_id"].as_str().expect("op"), TOKEN)
            .await;
        let id = body["id"].as_str().expect("id");
        let (status, gone) = a.delete(&format!("/v1/instances/{id}")).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{gone}");
        a.wait_operation(gone["operation_id"].as_str().expect("op"), TOKEN)
            .await;
        // Replica B deletes the subnet.
        let (status, body) = b.delete(&format!("/v1/subnets/{subnet_id}")).await;
        assert!(status.is_success(), "{status} {body}");
        // On A, asked as before: not found, and nothing made.
        let late = format!("{name}-late");
        let (status, body) = call(
            &a,
            TOKEN,
            Method::POST,
            "/v1/instances",
            Some(create(&late, spec)),
        )
        .await;
        bad(status, &body, "not found");
        let listed = a.get_ok("/v1/instances?limit=100").await;
        assert_eq!(listed["items"], json!([]), "{listed}");
        let ended = a.get_ok("/v1/instances?state=terminated&limit=100").await;
        let ended = ended["items"].as_array().expect("items");
        assert_eq!(ended.len(), n, "{ended:?}");
        assert!(
            ended.iter().all(|i| i["metadata"]["name"] != json!(late)),
            "{ended:?}"
        );
    }
    // A subnet of a gone one's name, made again, is the one used.
    let again = made(
        &b,
        TOKEN,
        "/v1/subnets",
        json!({"vpc_id": "app", "name": "api", "cidr_block": "10.211.9.0/24"}),
    )
    .await;
    let (status, body) = call(
        &a,
        TOKEN,
        Method::POST,
        "/v1/instances",
        Some(create(
            "renewed",
            json!({"vpc_id": "app", "subnet_id": "api"}),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"]["private_ip"], "10.211.9.2", "{body} {again}");
    a.stop().await;
    b.stop().await;
}

/// VPCs, subnets and groups are found by id or name, so a name with the
/// shape of its kind's ids would answer for that id once the resource
/// holding it is gone: an instance made later naming the old group would
/// get the impostor's rules. Such a name is a 400 and makes nothing.
async fn a_name_with_the_shape_of_an_id_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let group = made(
        &server,
        TOKEN,
        "/v1/security-groups",
        json!({"name": "web", "rules": []}),
    )
    .await;
    let group_id = group["id"].as_str().expect("id").to_string();
    let vpc = made(
        &server,
        TOKEN,
        "/v1/vpcs",
        json!({"name": "vpc-abc123", "cidr_block": "10.130.0.0/16"}),
    )
    .await;
    let vpc_id = vpc["id"].as_str().expect("id").to_string();
    let subnet = made(
        &server,
        TOKEN,
        "/v1/subnets",
        json!({"vpc_id": "vpc-abc123", "name": "subnet-def456", "cidr_block": "10.130.1.0/24"}),
    )
    .await;
    let subnet_id = subnet["id"].as_str().expect("id").to_string();
    let before = (
        server.get_ok("/v1/security-groups").await["items"].clone(),
        server.get_ok("/v1/vpcs").await["items"].clone(),
        server.get_ok("/v1/subnets").await["items"].clone(),
    );

    let open = json!([{"protocol": "all", "cidr": "0.0.0.0/0"}]);
    for (path, body) in [
        (
            "/v1/security-groups",
            json!({"name": group_id, "rules": open}),
        ),
        // Another, unused id of the kind (the shape is enough).
        (
            "/v1/security-groups",
            json!({"name": "sg-0123456789abcdef0123456789ab"}),
        ),
        (
            "/v1/vpcs",
            json!({"name": vpc_id, "cidr_block": "10.131.0.0/16"}),
        ),
        (
            "/v1/subnets",
            json!({"vpc_id": vpc_id, "name": subnet_id, "cidr_block": "10.130.2.0/24"}),
        ),
    ] {
        let (status, body) = call(&server, TOKEN, Method::POST, path, Some(body)).await;
        bad(status, &body, "shape of an id");
    }
    let after = (
        server.get_ok("/v1/security-groups").await["items"].clone(),
        server.get_ok("/v1/vpcs").await["items"].clone(),
        server.get_ok("/v1/subnets").await["items"].clone(),
    );
    assert_eq!(before, after, "a refused name makes nothing");

    // The group's id names nothing once it is gone.
    let (status, body) = call(
        &server,
        TOKEN,
        Method::DELETE,
        &format!("/v1/security-groups/{group_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = call(
        &server,
        TOKEN,
        Method::GET,
        &format!("/v1/security-groups/{group_id}"),
        None,
    )
    .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
}
