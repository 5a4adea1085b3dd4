//! `GET /v1/events`: a WebSocket that streams the caller's project's
//! instance and operation state changes (and host changes, for callers who
//! may read servers) as they happen.

use super::{ErrorBody, NativeError, Query, bad_request};
use axum::extract::State;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use tessera_app::{App, Event, Principal};
use tessera_core::Permission;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// The bearer credential, for clients that cannot set headers (browsers).
    pub access_token: Option<String>,
    /// Replay the logged events after this `seq` first (events are kept a
    /// week), so a client that reconnects misses nothing. At most 10,000
    /// are replayed; then a `{"kind": "truncated", "seq"}` message says where
    /// to reconnect from.
    pub since: Option<i64>,
}

/// Stream state changes over a WebSocket: one JSON text message per event,
/// `{"seq", "kind": "instance"|"operation"|"host", "id", "project_id", "state", "at"}`.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventParams),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket request", body = ErrorBody),
        (status = 401, description = "Unauthorized", body = ErrorBody),
        (status = 403, description = "Forbidden", body = ErrorBody),
    ))]
pub async fn events(
    State(app): State<App>,
    headers: HeaderMap,
    Query(params): Query<EventParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, NativeError> {
    let bearer = super::bearer(&headers)
        .map(str::to_string)
        .or(params.access_token);
    let caller = app.authenticate(bearer.as_deref()).await?;
    caller.require(Permission::OperationRead)?;
    let upgrade = upgrade.map_err(|_| {
        bad_request("GET /v1/events speaks WebSocket: connect with `Upgrade: websocket`".into())
    })?;
    // Subscribed before the replay is read, so nothing falls between.
    let events = app.subscribe();
    let (replay, truncated) = match params.since {
        Some(seq) => {
            app.events_after(&caller.project_id, caller.can(Permission::ServerRead), seq)
                .await?
        }
        None => (Vec::new(), false),
    };
    Ok(upgrade
        .on_upgrade(move |socket| stream(socket, app, bearer, caller, (replay, truncated), events)))
}

/// How often a stream checks that its credential still holds (a revoked
/// token or a disabled user is cut off).
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

fn visible(caller: &Principal, event: &Event) -> bool {
    match &event.project_id {
        Some(project) => *project == caller.project_id,
        None => caller.can(Permission::ServerRead),
    }
}

async fn stream(
    mut socket: WebSocket,
    app: App,
    bearer: Option<String>,
    mut caller: Principal,
    (replay, truncated): (Vec<Event>, bool),
    mut events: tokio::sync::broadcast::Receiver<Event>,
) {
    let mut last = i64::MIN;
    for event in replay {
        last = event.seq;
        let text = serde_json::to_string(&event).unwrap_or_default();
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    if truncated {
        // More were logged than one replay sends: reconnect with this seq.
        let text = serde_json::json!({"kind": "truncated", "seq": last}).to_string();
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.tick().await;
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                match app.authenticate(bearer.as_deref()).await {
                    Ok(now) if now.can(Permission::OperationRead) => caller = now,
                    _ => {
                        let _ = socket.send(Message::Close(None)).await;
                        return;
                    }
                }
            }
            event = events.recv() => {
                let text = match event {
                    Ok(event) if event.seq > last && visible(&caller, &event) => {
                        serde_json::to_string(&event).unwrap_or_default()
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(missed)) => {
                        serde_json::json!({"kind": "lagged", "missed": missed}).to_string()
                    }
                    Err(RecvError::Closed) => return,
                };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the library; anything else is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}
