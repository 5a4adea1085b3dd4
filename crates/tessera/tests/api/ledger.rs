//! One allocation ledger for every host: instances from any face land on
//! hosts carved into Kloigos units, each taking one whole free unit (the
//! smallest that fits), which Kloigos lists as ALLOCATED with the instance
//! as its holder until the instance is deleted; Kloigos allocations and
//! instance creations racing for the same units never share one.

use crate::harness::{Backend, TOKEN, TestServer, assert_error, unit_request};
use crate::on_both_backends;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashSet;
use tessera_core::CpuSet;

on_both_backends!(
    an_instance_takes_the_smallest_free_unit_and_gives_it_back,
    kloigos_and_instances_racing_for_units_never_share_one,
);

fn unit_of<'a>(units: &'a [Value], compute_id: &str) -> &'a Value {
    units
        .iter()
        .find(|u| u["compute_id"] == compute_id)
        .unwrap_or_else(|| panic!("no unit {compute_id}: {units:?}"))
}

async fn an_instance_takes_the_smallest_free_unit_and_gives_it_back(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.init_host("carved", &["0-3", "4-7", "8-15"]).await;
    server.wait_host_status("carved", "FREE", 3).await;
    // Two vCPUs: the smallest free unit that fits is 0-3, taken whole.
    let instance = server.run_instance(TOKEN, "on-a-unit", "cx21").await;
    assert_eq!(instance["status"]["state"], "running", "{instance}");
    assert_eq!(instance["status"]["cpus"], "0-3", "{instance}");
    let id = instance["id"].as_str().expect("id");
    let units = server.units("?hostname=carved").await;
    let held = unit_of(&units, "carved_c0-3");
    assert_eq!(held["status"], "ALLOCATED", "{held}");
    assert_eq!(held["tags"]["instance_id"], id, "{held}");
    assert_eq!(unit_of(&units, "carved_c4-7")["status"], "FREE");
    // Kloigos neither hands it out nor takes it from the instance.
    let (status, unit) = server.allocate(unit_request(4, Value::Null)).await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    assert_eq!(unit["compute_id"], "carved_c4-7", "{unit}");
    let (status, body) = server
        .request(
            Method::DELETE,
            "/api/compute_units/deallocate/carved_c0-3",
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains(id)),
        "{body}"
    );
    let (status, body) = server
        .request(
            Method::DELETE,
            "/api/admin/decommission_server/carved?force=true",
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| d.contains(id)),
        "{body}"
    );
    // Deleting the instance gives the unit back.
    let (status, deleting) = server
        .call(Method::DELETE, &format!("/v1/instances/{id}"), None, TOKEN)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleting}");
    server
        .wait_operation(deleting["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    let units = server.units("?hostname=carved").await;
    let freed = unit_of(&units, "carved_c0-3");
    assert_eq!(freed["status"], "FREE", "{freed}");
    assert_eq!(freed["tags"], Value::Null, "{freed}");
    let (status, unit) = server.allocate(unit_request(4, Value::Null)).await;
    assert_eq!(status, StatusCode::OK, "{unit}");
    assert_eq!(unit["compute_id"], "carved_c0-3", "{unit}");
    // Too big for any unit: no capacity, nothing held.
    let body =
        json!({"metadata": {"name": "big"}, "spec": {"type": "cx61", "image": "ubuntu-22.04"}});
    let (_, created) = server
        .call(Method::POST, "/v1/instances", Some(&body), TOKEN)
        .await;
    let op = server
        .wait_operation(created["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    assert_eq!(op["status"], "failed", "{op}");
    assert_eq!(
        server.units("?hostname=carved&status=FREE").await.len(),
        1,
        "only 8-15 is free"
    );
    server.stop().await;
}

async fn kloigos_and_instances_racing_for_units_never_share_one(backend: Backend) {
    let server = TestServer::start(backend).await;
    server
        .init_host("contested", &["0-1", "2-3", "4-5", "6-7", "8-9", "10-11"])
        .await;
    server.wait_host_status("contested", "FREE", 6).await;
    // Twelve requests for six units: Kloigos tenants and instances at once.
    let allocations = (0..6).map(|n| {
        let server = &server;
        async move {
            server
                .allocate(unit_request(2, json!({"deployment_id": format!("k-{n}")})))
                .await
        }
    });
    let creations = (0..6).map(|n| {
        let server = &server;
        async move {
            let body = json!({"metadata": {"name": format!("i-{n}")}, "spec": {"type": "cx21", "image": "ubuntu-22.04"}});
            server.call(Method::POST, "/v1/instances", Some(&body), TOKEN).await
        }
    });
    let (allocated, created) = tokio::join!(
        futures::future::join_all(allocations),
        futures::future::join_all(creations)
    );
    let mut taken: Vec<CpuSet> = Vec::new();
    for (status, unit) in &allocated {
        match status.as_u16() {
            200 => taken
                .push(CpuSet::parse_list(unit["cpu_list"].as_str().expect("cpus")).expect("cpus")),
            460 => {}
            other => panic!("allocate answered {other}: {unit}"),
        }
    }
    let kloigos = taken.len();
    let mut running = 0;
    for (status, instance) in &created {
        assert_eq!(*status, StatusCode::CREATED, "{instance}");
        let op = server
            .wait_operation(instance["operation_id"].as_str().expect("op"), TOKEN)
            .await;
        let (_, now) = server
            .call(
                Method::GET,
                &format!("/v1/instances/{}", instance["id"].as_str().expect("id")),
                None,
                TOKEN,
            )
            .await;
        match op["status"].as_str() {
            Some("completed") => {
                running += 1;
                taken.push(
                    CpuSet::parse_list(now["status"]["cpus"].as_str().expect("cpus"))
                        .expect("cpus"),
                );
            }
            Some("failed") => assert_eq!(now["status"]["cpus"], "", "{now}"),
            other => panic!("creation ended {other:?}: {op}"),
        }
    }
    assert_eq!(
        kloigos + running,
        6,
        "every unit is taken, once: {kloigos} + {running}"
    );
    let mut seen = HashSet::new();
    for cpus in &taken {
        for cpu in cpus.iter() {
            assert!(seen.insert(cpu), "CPU {cpu} given twice: {taken:?}");
        }
    }
    // Kloigos lists every unit ALLOCATED, the instances' with their holder.
    let units = server.units("?hostname=contested").await;
    assert!(
        units.iter().all(|u| u["status"] == "ALLOCATED"),
        "{units:?}"
    );
    let held_by_instances = units
        .iter()
        .filter(|u| u["tags"]["instance_id"].is_string())
        .count();
    assert_eq!(held_by_instances, running, "{units:?}");
    // A failed creation holds nothing and says why.
    if running < 6 {
        let (status, body) = server
            .call(
                Method::POST,
                "/v1/instances",
                Some(&json!({"metadata": {"name": "late"}, "spec": {"type": "cx21", "image": "ubuntu-22.04"}})),
                TOKEN,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let op = server
            .wait_operation(body["operation_id"].as_str().expect("op"), TOKEN)
            .await;
        assert_eq!(op["status"], "failed", "no unit is left: {op}");
    }
    let (status, body) = server
        .call(Method::GET, "/v1/instances/inst-none", None, TOKEN)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    server.stop().await;
}
