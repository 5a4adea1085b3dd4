//! `GET /metrics` (Prometheus) and `GET /v1/events` (WebSocket).

use crate::harness::{Backend, TOKEN, TestServer};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

crate::on_both_backends!(
    metrics_count_requests_and_the_fleet,
    events_stream_the_projects_state_changes,
    events_are_logged_and_reach_every_replica
);

pub async fn scrape(server: &TestServer, token: Option<&str>) -> (StatusCode, String) {
    let mut request = server.client.get(format!("{}/metrics", server.url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("scrape");
    (response.status(), response.text().await.expect("body"))
}

async fn metrics_count_requests_and_the_fleet(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    let web = server.run_instance(TOKEN, "web", "cx21").await;
    let (status, text) = scrape(&server, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    for line in [
        "tessera_http_requests_total{method=\"POST\",route=\"/v1/instances\",status=\"201\"} 1",
        "tessera_instances{state=\"running\"} 1",
        "tessera_hosts{state=\"ready\"} 1",
        "tessera_operations{state=\"completed\"} 2",
        "tessera_cpus 8",
        "tessera_cpus_free 6",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(
        text.contains("tessera_http_request_duration_seconds_bucket{le=")
            || text.contains("tessera_http_request_duration_seconds_bucket{method=\"GET\""),
        "{text}"
    );
    // Route templates, never raw ids.
    assert!(text.contains("route=\"/v1/instances/{id}\""), "{text}");
    // The reconciler's tasks, each by name: every one runs its first pass
    // at once (counted once it is over, which a loaded machine may take a
    // while to reach).
    const TASKS: [&str; 3] = ["resume operations", "observe instances", "check heartbeats"];
    let passes = |text: &str, task: &str| {
        let passes = format!("tessera_background_passes_total{{task=\"{task}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(passes.as_str()))
            .and_then(|n| n.parse::<u64>().ok())
    };
    let text = crate::harness::eventually(
        Duration::from_secs(30),
        "every task's first pass",
        || async {
            let (_, text) = scrape(&server, Some(TOKEN)).await;
            TASKS
                .iter()
                .all(|task| passes(&text, task).is_some_and(|n| n >= 1))
                .then_some(text)
        },
    )
    .await;
    for task in TASKS {
        for family in [
            "tessera_background_pass_failures_total",
            "tessera_background_pass_seconds_total",
            "tessera_background_pass_longest_seconds",
        ] {
            let line = format!("{family}{{task=\"{task}\"}} ");
            assert!(
                text.lines().any(|l| l.starts_with(&line)),
                "{line} missing from\n{text}"
            );
        }
    }
    assert!(!text.contains("inst-"), "{text}");
    // What is live is counted at every scrape (history, ended operations
    // and terminated instances, once a minute at most): the instance
    // deleted is no longer running at the next.
    let id = web["id"].as_str().expect("id");
    let (status, deleting) = server
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/instances/{id}"),
            None,
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleting}");
    server
        .wait_operation(deleting["operation_id"].as_str().expect("op"), TOKEN)
        .await;
    let (_, text) = scrape(&server, Some(TOKEN)).await;
    assert!(
        !text.contains("tessera_instances{state=\"running\"}"),
        "{text}"
    );
    assert!(!text.contains("state=\"running\"} 1"), "{text}");
    assert!(text.lines().any(|l| l == "tessera_cpus_free 8"), "{text}");
    let (status, _) = scrape(&server, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let viewer = server.user_in("vic", "viewer", "default").await;
    let (status, _) = scrape(&server, Some(&viewer)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    server.stop().await;
}

async fn next_event(
    socket: &mut (
             impl StreamExt<
        Item = Result<
            tokio_tungstenite::tungstenite::Message,
            tokio_tungstenite::tungstenite::Error,
        >,
    > + Unpin
         ),
    wait: Duration,
) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(wait, socket.next())
            .await
            .ok()??
            .ok()?;
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(&text).ok();
        }
    }
}

async fn events_stream_the_projects_state_changes(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.add_server("node-1", "0-7", "fin-01").await;
    let outsider = server.user_in("olga", "member", "elsewhere").await;
    let ws_url = server.url.replacen("http", "ws", 1) + "/v1/events";
    let mut request = ws_url.as_str().into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("header"),
    );
    let (mut mine, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect");
    let (mut theirs, _) =
        tokio_tungstenite::connect_async(format!("{ws_url}?access_token={outsider}"))
            .await
            .expect("connect with a query token");

    let instance = server.run_instance(TOKEN, "watched", "cx11").await;
    let id = instance["id"].as_str().expect("id");
    let mut seen = Vec::new();
    while let Some(event) = next_event(&mut mine, Duration::from_secs(5)).await {
        seen.push((
            event["kind"].as_str().unwrap_or("").to_string(),
            event["state"].as_str().unwrap_or("").to_string(),
        ));
        if event["kind"] == "instance" && event["id"] == json!(id) && event["state"] == "running" {
            break;
        }
    }
    assert!(
        seen.contains(&("instance".into(), "provisioning".into())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("instance".into(), "running".into())),
        "{seen:?}"
    );
    let mut more = Vec::new();
    while let Some(event) = next_event(&mut mine, Duration::from_millis(500)).await {
        more.push(event);
    }
    assert!(
        seen.iter()
            .any(|(k, s)| k == "operation" && s == "completed")
            || more
                .iter()
                .any(|e| e["kind"] == "operation" && e["state"] == "completed"),
        "{seen:?} {more:?}"
    );
    // Another project hears nothing of it.
    assert_eq!(
        next_event(&mut theirs, Duration::from_millis(300)).await,
        None
    );
    // Without credentials, or without the upgrade, no stream.
    assert!(
        tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .is_err()
    );
    let (status, body) = server.get("/v1/events").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    server.stop().await;
}

async fn events_are_logged_and_reach_every_replica(backend: Backend) {
    let database = crate::harness::SharedDatabase::new(backend).await;
    let shared = || database.options();
    let a = TestServer::start_with(backend, shared()).await;
    let b = TestServer::start_with(backend, shared()).await;
    a.add_server("node-1", "0-7", "fin-01").await;
    // A client of replica B hears what replica A does.
    let ws_b = b.url.replacen("http", "ws", 1) + "/v1/events";
    let (mut on_b, _) = tokio_tungstenite::connect_async(format!("{ws_b}?access_token={TOKEN}"))
        .await
        .expect("connect to b");
    let instance = a.run_instance(TOKEN, "far", "cx11").await;
    let id = instance["id"].as_str().expect("id");
    let mut heard = false;
    while let Some(event) = next_event(&mut on_b, Duration::from_secs(5)).await {
        if event["id"] == json!(id) && event["state"] == "running" {
            heard = true;
            break;
        }
    }
    assert!(heard, "replica B streamed replica A's change");
    // The log replays in order to a client that comes back.
    let (mut again, _) =
        tokio_tungstenite::connect_async(format!("{ws_b}?access_token={TOKEN}&since=0"))
            .await
            .expect("reconnect");
    let mut states = Vec::new();
    let mut last_seq = 0;
    while let Some(event) = next_event(&mut again, Duration::from_millis(500)).await {
        let seq = event["seq"].as_i64().expect("seq");
        assert!(seq > last_seq, "in order");
        last_seq = seq;
        if event["id"] == json!(id) {
            states.push(event["state"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(states, ["provisioning", "running"]);
    a.stop().await;
    b.stop().await;
}
