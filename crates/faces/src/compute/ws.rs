//! `GET /compute/ws`: a WebSocket of the caller's containers. The first
//! message is the full list, `{"type": "containers", "data": [...]}` (the
//! containers as `GET /compute/containers/{id}` shows them); then every
//! change of one of them, from any replica, as
//! `{"type": "container_status", "data": {"container_id", "status",
//! "external_ip"?}}`, and a deletion as `{"type": "container_deleted",
//! "data": {"container_id"}}`. A client that falls behind gets
//! `{"type": "resync", ...}` with the full list again. Client frames are
//! ignored; the server pings every 30 seconds.

use super::containers::ContainerBody;
use super::{ComputeError, check_origin, grant_needed, socket_credential};
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tessera_app::containers::{Container, ContainerStatus};
use tessera_app::events::{EventFeed, FeedItem};
use tessera_app::{App, Error, Principal};

#[derive(Deserialize)]
pub struct SocketParams {
    /// The credential, for browsers (which cannot set headers here).
    pub token: Option<String>,
}

/// The caller of a WebSocket request, checked like any other request of
/// this face (its credential, its grant on `path`).
pub(crate) async fn socket_caller(
    app: &App,
    headers: &HeaderMap,
    token: Option<String>,
    path: &str,
) -> Result<(Principal, Option<String>), ComputeError> {
    check_origin(headers)?;
    let credential = socket_credential(headers, token);
    let caller = credential_caller(app, credential.as_deref(), None, path).await?;
    Ok((caller, credential))
}

/// The caller `credential` stands for now, if it may `GET` `path`; with
/// `project`, in that workspace (a socket open for a while asks again in
/// the one it was opened in).
pub(crate) async fn credential_caller(
    app: &App,
    credential: Option<&str>,
    project: Option<&str>,
    path: &str,
) -> Result<Principal, ComputeError> {
    let caller = match project {
        Some(project) => app.authenticate_in(credential, project).await?,
        None => app.authenticate(credential).await?,
    }
    .on_compute_face();
    let (grant, action) = grant_needed(&caller.user_id, &Method::GET, path);
    if !caller.compute_allows(&grant, action) {
        return Err(ComputeError(Error::Forbidden(format!(
            "this token is not granted {action} on {grant}"
        ))));
    }
    Ok(caller)
}

/// The largest message a client of the status stream may send.
const MAX_CLIENT_MESSAGE: usize = 4 * 1024;

pub async fn status(
    State(app): State<App>,
    headers: HeaderMap,
    params: Result<Query<SocketParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ComputeError> {
    let Query(params) =
        params.map_err(|e| super::bad_request(format!("invalid query: {}", e.body_text())))?;
    let (caller, credential) = socket_caller(&app, &headers, params.token, "/ws").await?;
    let upgrade = upgrade
        .map_err(|_| {
            super::bad_request(
                "GET /compute/ws speaks WebSocket: connect with `Upgrade: websocket`",
            )
        })?
        // What a client sends is read only to be dropped (and to answer
        // pings): nothing of megabytes is held for it.
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE);
    let feed = app.compute_event_feed(credential.as_deref()).await?;
    let containers = app.containers(&caller).await?;
    Ok(upgrade.on_upgrade(move |socket| stream(socket, app, caller, feed, containers)))
}

fn list_message(containers: Vec<tessera_app::containers::Container>, kind: &str) -> String {
    let data: Vec<ContainerBody> = containers.into_iter().map(Into::into).collect();
    json!({ "type": kind, "data": data }).to_string()
}

async fn stream(
    mut socket: WebSocket,
    app: App,
    caller: Principal,
    mut feed: EventFeed,
    containers: Vec<tessera_app::containers::Container>,
) {
    let mut known: BTreeSet<String> = containers.iter().map(|c| c.id().to_string()).collect();
    // What each container's last frame said (the list, to begin with): a
    // change that shows nothing new (two events read after both happened,
    // or one the list showed already) sends nothing.
    let mut told: BTreeMap<String, Value> = containers
        .iter()
        .map(|c| (c.id().to_string(), status_data(c, c.status)))
        .collect();
    if send(&mut socket, list_message(containers, "containers"))
        .await
        .is_err()
    {
        return;
    }
    let mut ping = tokio::time::interval(std::time::Duration::from_secs(30));
    ping.reset();
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            item = feed.next() => {
                let texts = match item {
                    FeedItem::Event(event) if event.kind == "instance" => {
                        match app.container(&caller, &event.id).await {
                            Ok(container) => {
                                known.insert(container.id().to_string());
                                // What the change showed, from after the
                                // status last said of the container when
                                // that is among it (a list that showed it
                                // `initializing` is not followed by its
                                // `pending`).
                                let shown: Vec<Value> =
                                    ContainerStatus::at_change(&event.state, &container.instance)
                                        .into_iter()
                                        .map(|status| status_data(&container, status))
                                        .collect();
                                let last = told.get(container.id());
                                let at = shown.iter().position(|data| {
                                    last.is_some_and(|l| l["status"] == data["status"])
                                });
                                let from = match at {
                                    // Said already, as it is.
                                    Some(p) if Some(&shown[p]) == last => p + 1,
                                    // Its status said, its address new.
                                    Some(p) => p,
                                    None => 0,
                                };
                                let frames: Vec<String> = shown[from..]
                                    .iter()
                                    .map(|data| {
                                        json!({ "type": "container_status", "data": data })
                                            .to_string()
                                    })
                                    .collect();
                                match shown.last() {
                                    Some(data) if from < shown.len() => {
                                        told.insert(container.id().to_string(), data.clone());
                                    }
                                    _ => continue,
                                }
                                frames
                            }
                            Err(Error::NotFound(_)) if known.remove(&event.id) => {
                                told.remove(&event.id);
                                vec![json!({
                                    "type": "container_deleted",
                                    "data": { "container_id": event.id },
                                })
                                .to_string()]
                            }
                            Err(_) => continue,
                        }
                    }
                    FeedItem::Event(_) => continue,
                    FeedItem::Lagged(_) => match app.containers(&caller).await {
                        Ok(containers) => {
                            known = containers.iter().map(|c| c.id().to_string()).collect();
                            told = containers
                                .iter()
                                .map(|c| (c.id().to_string(), status_data(c, c.status)))
                                .collect();
                            vec![list_message(containers, "resync")]
                        }
                        Err(_) => {
                            // Said, as every end of the stream is.
                            let _ = socket
                                .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                                    code: axum::extract::ws::close_code::ERROR,
                                    reason: "the server could not read the containers again; reconnect"
                                        .into(),
                                })))
                                .await;
                            return;
                        }
                    },
                    FeedItem::Ended(end) => {
                        let _ = socket.send(crate::kit::feed_closed(end)).await;
                        return;
                    }
                };
                for text in texts {
                    if send(&mut socket, text).await.is_err() {
                        return;
                    }
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}

async fn send(socket: &mut WebSocket, text: String) -> Result<(), axum::Error> {
    socket.send(Message::Text(text.into())).await
}

/// A `container_status` frame's data: the container's id, `status`, and
/// its address once it has one.
fn status_data(container: &Container, status: ContainerStatus) -> Value {
    let mut data = json!({
        "container_id": container.id(),
        "status": status.as_str(),
    });
    if !container.instance.private_ip.is_empty() {
        data["external_ip"] = json!(container.instance.private_ip);
    }
    data
}
