//! A control plane killed with SIGKILL in the middle of host work finishes
//! or settles that work when it starts again.

use crate::harness::{Backend, KEY, ServerProcess, TOKEN, fresh_postgres_database, wait_for};
use reqwest::StatusCode;
use serde_json::json;

crate::on_both_backends!(work_cut_short_by_a_crash_is_settled_at_restart);

async fn work_cut_short_by_a_crash_is_settled_at_restart(backend: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = match backend {
        Backend::Sqlite => tessera_store::Store::sqlite_url(&dir.path().join("tessera.db")),
        Backend::Postgres => fresh_postgres_database().await,
    };
    let client = reqwest::Client::new();
    // First life: preparing "stuck-1" and installing keys on "slow-*" never finish.
    let first = ServerProcess::start(
        &database_url,
        dir.path(),
        &[
            "--sim-faults",
            "prepare:stuck-:hang,activate:slow-:hang",
            "--agent-timeout-ms",
            "1000",
        ],
    );
    for (host, range) in [("stuck-1", "0-3"), ("slow-1", "0-3")] {
        let response = client
            .post(format!("{}/api/admin/init_server", first.url))
            .bearer_auth(TOKEN)
            .json(&json!({"hostname": host, "ip": "192.0.2.1", "region": "r", "zone": "z", "cpu_ranges": [range]}))
            .send()
            .await
            .expect("init_server");
        assert_eq!(response.status(), StatusCode::OK);
    }
    wait_for(&client, &first.url, "?hostname=slow-1&status=FREE", 1).await;
    let allocate = tokio::spawn({
        let (client, url) = (client.clone(), first.url.clone());
        async move {
            client
                .post(format!("{url}/api/compute_units/allocate"))
                .bearer_auth(TOKEN)
                .json(&json!({"ssh_public_key": KEY, "tags": {"deployment_id": "crash"}}))
                .send()
                .await
        }
    });
    wait_for(&client, &first.url, "?status=ALLOCATING", 1).await;
    first.crash();
    assert!(
        allocate.await.expect("task").is_err(),
        "the request died with the server"
    );

    // Second life, healthy hosts: the stuck host is prepared, and the
    // interrupted allocation (nobody learnt its id) is unwound once its
    // deadline passes: wiped and back in the pool, its tags gone.
    let second = ServerProcess::start(&database_url, dir.path(), &[]);
    wait_for(&client, &second.url, "?hostname=stuck-1&status=FREE", 1).await;
    let unwound = wait_for(&client, &second.url, "?hostname=slow-1&status=FREE", 1).await;
    assert_eq!(unwound[0]["tags"], json!(null));
    // Both serve again.
    for _ in 0..2 {
        let response = client
            .post(format!("{}/api/compute_units/allocate", second.url))
            .bearer_auth(TOKEN)
            .json(&json!({"ssh_public_key": KEY, "tags": null}))
            .send()
            .await
            .expect("allocate");
        assert_eq!(response.status(), StatusCode::OK);
    }
    second.stop();
}
