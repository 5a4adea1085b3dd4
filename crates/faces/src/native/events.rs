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
use tessera_app::App;
use tessera_app::events::{EventFeed, FeedItem};
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
    let bearer = crate::kit::bearer(&headers)
        .map(str::to_string)
        .or(params.access_token);
    let feed = app.event_feed(bearer.as_deref(), params.since).await?;
    let upgrade = upgrade.map_err(|_| {
        bad_request("GET /v1/events speaks WebSocket: connect with `Upgrade: websocket`".into())
    })?;
    Ok(upgrade.on_upgrade(move |socket| stream(socket, feed)))
}

/// Sends the feed's events, one JSON text message each, until it ends or
/// the client goes.
async fn stream(mut socket: WebSocket, mut feed: EventFeed) {
    for event in std::mem::take(&mut feed.replay) {
        if send(
            &mut socket,
            serde_json::to_string(&event).unwrap_or_default(),
        )
        .await
        .is_err()
        {
            return;
        }
    }
    if feed.truncated {
        // More were logged than one replay sends: reconnect with this seq.
        let text = serde_json::json!({"kind": "truncated", "seq": feed.last_seq()}).to_string();
        if send(&mut socket, text).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            item = feed.next() => {
                let text = match item {
                    FeedItem::Event(event) => serde_json::to_string(&event).unwrap_or_default(),
                    FeedItem::Lagged(missed) => {
                        serde_json::json!({"kind": "lagged", "missed": missed}).to_string()
                    }
                    FeedItem::Ended(end) => {
                        let _ = socket.send(crate::kit::feed_closed(end)).await;
                        return;
                    }
                };
                if send(&mut socket, text).await.is_err() {
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

async fn send(socket: &mut WebSocket, text: String) -> Result<(), axum::Error> {
    socket.send(Message::Text(text.into())).await
}
