//! No unit is ever handed out twice: 200 concurrent allocations at fewer
//! units, on each backend, and across two server processes sharing one
//! PostgreSQL.

use crate::harness::{
    Backend, ServerProcess, TOKEN, TestServer, fresh_postgres_database, unit_request, wait_for,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::HashSet;

crate::on_both_backends!(concurrent_allocations_never_share_a_unit);

const REQUESTS: usize = 200;

fn ranges16() -> Vec<String> {
    (0..16)
        .map(|i| format!("{}-{}", i * 4, i * 4 + 3))
        .collect()
}

async fn concurrent_allocations_never_share_a_unit(backend: Backend) {
    let server = TestServer::start(backend).await;
    let ranges = ranges16();
    let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
    for host in ["c1", "c2", "c3"] {
        server.init_host(host, &ranges).await;
    }
    let units = 48;
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let (client, url) = (server.client.clone(), server.url.clone());
        tasks.push(tokio::spawn(
            async move { allocate(&client, &url, i).await },
        ));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    check_outcomes(&outcomes, units);
    let allocated = server.units("?status=ALLOCATED").await;
    assert_eq!(allocated.len(), units, "the store agrees with the answers");
    // The ledger holds each allocated CPU once.
    let claims = server
        .running
        .app
        .store()
        .cpu_claims(None)
        .await
        .expect("claims");
    assert_eq!(claims.len(), units * 4);
    assert_eq!(claims.iter().collect::<HashSet<_>>().len(), claims.len());
    server.stop().await;
}

async fn allocate(client: &reqwest::Client, url: &str, i: usize) -> (StatusCode, Value) {
    let response = client
        .post(format!("{url}/api/compute_units/allocate"))
        .bearer_auth(TOKEN)
        .json(&unit_request(4, json!({"deployment_id": format!("d{i}")})))
        .send()
        .await
        .expect("allocate sent");
    let status = response.status();
    (status, response.json().await.expect("JSON answer"))
}

/// Every unit handed out at most once; exactly `units` successes.
fn check_outcomes(outcomes: &[(StatusCode, Value)], units: usize) {
    let mut seen = HashSet::new();
    let mut granted = 0;
    for (status, body) in outcomes {
        match status.as_u16() {
            200 => {
                assert_eq!(body["status"], "ALLOCATED", "{body}");
                let id = body["compute_id"].as_str().expect("compute_id").to_string();
                assert!(seen.insert(id.clone()), "{id} was handed out twice");
                granted += 1;
            }
            460 => assert_eq!(
                body["detail"], "No free Compute Unit found to match your request",
                "{body}"
            ),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(granted, units, "every free unit was handed out, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_sharing_postgres_never_share_a_unit() {
    let database_url = fresh_postgres_database().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = ServerProcess::start(&database_url, &dir.path().join("a"), &[]);
    let b = ServerProcess::start(&database_url, &dir.path().join("b"), &[]);
    let client = reqwest::Client::new();
    for host in ["p1", "p2", "p3"] {
        let response = client
            .post(format!("{}/api/admin/init_server", a.url))
            .bearer_auth(TOKEN)
            .json(&json!({"hostname": host, "ip": "192.0.2.1", "region": "r", "zone": "z", "cpu_ranges": ranges16()}))
            .send()
            .await
            .expect("init_server");
        assert_eq!(response.status(), StatusCode::OK);
    }
    // Both processes see the units become FREE.
    for url in [&a.url, &b.url] {
        wait_for(&client, url, "?status=FREE", 48).await;
    }
    // Warm both processes' placement views, and show that each hands out
    // units: one allocation through each.
    for url in [&b.url, &a.url] {
        let (status, unit) = allocate(&client, url, 999).await;
        assert_eq!(status, StatusCode::OK, "{unit}");
        let id = unit["compute_id"].as_str().expect("compute_id");
        let response = client
            .delete(format!("{url}/api/compute_units/deallocate/{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("deallocate");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let client = client.clone();
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        tasks.push(tokio::spawn(
            async move { allocate(&client, &url, i).await },
        ));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    check_outcomes(&outcomes, 48);
    // Which process won how many is up to the scheduler; what must hold is
    // that the shared ledger holds each allocated CPU exactly once.
    let store = tessera_store::Store::open(&database_url)
        .await
        .expect("store");
    let claims = store.cpu_claims(None).await.expect("claims");
    assert_eq!(claims.len(), 48 * 4);
    assert_eq!(claims.iter().collect::<HashSet<_>>().len(), claims.len());
    store.close().await;
    a.stop();
    b.stop();
}
