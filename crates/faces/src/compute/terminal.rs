//! `GET /compute/containers/{id}/terminal`: a WebSocket carrying a
//! terminal (`xterm-256color`, 24x80 unless `?cols=&rows=` say otherwise)
//! into a running container, through its host's agent: no SSH server in
//! the image and no key written into the container.
//!
//! Every frame the client sends, text or binary, is the terminal's input,
//! and its output comes back in binary frames; the socket closes when the
//! shell ends. A client that asks for the `tessera.terminal.v1`
//! subprotocol may also resize: its text frames are then control messages,
//! `{"resize": {"cols": C, "rows": R}}` (its input goes in binary frames),
//! and the last frame before the close is `{"exit": CODE}`. Without the
//! subprotocol no text is ever taken for a control message, so pasted text
//! is always input.

use super::ws::{credential_caller, socket_caller};
use super::{ComputeError, bad_request};
use crate::kit::Path;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{
    Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use tessera_agent_api::{Session, SessionRequest, TtySize};
use tessera_app::containers::ContainerStatus;
use tessera_app::events::RECHECK_EVERY;
use tessera_app::{App, Error};
use tessera_core::Permission;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The subprotocol that turns text frames into control messages.
pub const CONTROL_PROTOCOL: &str = "tessera.terminal.v1";
/// The largest message a terminal takes: a socket that sends more is
/// closed.
const MAX_INPUT_MESSAGE: usize = 64 * 1024;

#[derive(Deserialize)]
pub struct TerminalParams {
    pub token: Option<String>,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

#[derive(Deserialize)]
struct Control {
    resize: Option<TtySize>,
}

pub async fn terminal(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    params: Result<Query<TerminalParams>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ComputeError> {
    let Query(params) =
        params.map_err(|e| bad_request(format!("invalid query: {}", e.body_text())))?;
    let path = format!("/containers/{id}/terminal");
    let (caller, credential) = socket_caller(&app, &headers, params.token, &path).await?;
    let container = app.container(&caller, &id).await?;
    if container.status != ContainerStatus::Running {
        return Err(bad_request("container not running"));
    }
    let size = TtySize {
        cols: params.cols.filter(|c| (1..=1000).contains(c)).unwrap_or(80),
        rows: params.rows.filter(|r| (1..=1000).contains(r)).unwrap_or(24),
    };
    let upgrade = upgrade.map_err(|_| {
        bad_request("the terminal speaks WebSocket: connect with `Upgrade: websocket`")
    })?;
    let slot = app.terminal_slot(&container)?;
    let session = app
        .open_instance_session(
            &caller,
            container.id(),
            &SessionRequest {
                command: None,
                tty: Some(size),
            },
        )
        .await?;
    // Typed keys and pastes, never megabytes at once.
    let upgrade = upgrade
        .protocols([CONTROL_PROTOCOL])
        .max_message_size(MAX_INPUT_MESSAGE)
        .max_frame_size(MAX_INPUT_MESSAGE);
    let allowed = Allowed {
        app,
        credential,
        project: caller.project_id.clone(),
        path,
        id,
    };
    Ok(upgrade.on_upgrade(move |socket| async move {
        let control = socket.protocol().is_some_and(|p| p == CONTROL_PROTOCOL);
        pipe(socket, session, control, allowed).await;
        drop(slot);
    }))
}

/// What opened a terminal, asked again every [`RECHECK_EVERY`] while it is
/// open: a revoked token, a user taken out of the workspace or a role that
/// no longer opens terminals closes it.
struct Allowed {
    app: App,
    credential: Option<String>,
    /// The workspace it was opened in (a login may make another active).
    project: String,
    path: String,
    id: String,
}

impl Allowed {
    /// Whether the terminal may stay open (`Err`: why not); `None` when
    /// that cannot be told now (the store unreachable): asked again at the
    /// next check.
    async fn still(&self) -> Option<Result<(), &'static str>> {
        const REVOKED: &str = "the credential that opened this terminal no longer allows it";
        let settled = |err: &Error| {
            matches!(
                err,
                Error::Unauthenticated(_) | Error::Forbidden(_) | Error::NotFound(_)
            )
        };
        let caller = match credential_caller(
            &self.app,
            self.credential.as_deref(),
            Some(&self.project),
            &self.path,
        )
        .await
        {
            Ok(caller) => caller,
            Err(ComputeError(err)) if settled(&err) => return Some(Err(REVOKED)),
            Err(_) => return None,
        };
        if !caller.can(Permission::InstanceCreate) {
            return Some(Err(REVOKED));
        }
        match self.app.container(&caller, &self.id).await {
            Ok(container) => match container.status {
                ContainerStatus::Running => Some(Ok(())),
                _ => Some(Err("the container is no longer running")),
            },
            Err(Error::NotFound(_)) => Some(Err("the container was deleted")),
            Err(err) if settled(&err) => Some(Err(REVOKED)),
            Err(_) => None,
        }
    }
}

/// Carries input and output between the socket and the session until
/// either ends, or the caller may no longer have it.
async fn pipe(mut socket: WebSocket, session: Session, control: bool, allowed: Allowed) {
    let Session {
        mut input,
        mut output,
        control: mut end,
    } = session;
    let mut buffer = vec![0u8; 16 * 1024];
    let mut output_open = true;
    let mut recheck = tokio::time::interval(RECHECK_EVERY);
    recheck.reset();
    loop {
        tokio::select! {
            _ = recheck.tick() => {
                if let Some(Err(reason)) = allowed.still().await {
                    let _ = socket.send(Message::Text(format!("error: {reason}").into())).await;
                    let _ = socket
                        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                            code: axum::extract::ws::close_code::POLICY,
                            reason: reason.into(),
                        })))
                        .await;
                    return;
                }
            }
            read = output.read(&mut buffer), if output_open => match read {
                Ok(0) | Err(_) => output_open = false,
                Ok(n) => {
                    let frame = Message::Binary(buffer[..n].to_vec().into());
                    if socket.send(frame).await.is_err() {
                        return;
                    }
                }
            },
            code = end.wait(), if !output_open => {
                match code {
                    Ok(code) if control => {
                        let text = serde_json::json!({ "exit": code }).to_string();
                        let _ = socket.send(Message::Text(text.into())).await;
                    }
                    Ok(_) => {}
                    // As upstream's clients read a setup failure.
                    Err(why) => {
                        let _ = socket.send(Message::Text(format!("error: {why}").into())).await;
                    }
                }
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Binary(bytes))) => {
                    if input.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Text(text))) if control => {
                    if let Ok(Control { resize: Some(size) }) = serde_json::from_str(text.as_str())
                        && (1..=1000).contains(&size.cols)
                        && (1..=1000).contains(&size.rows)
                    {
                        let _ = end.resize(size);
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if input.write_all(text.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    }
}
