//! `/v1/agent/channel` and `/v1/agent/sessions/{id}`: the WebSockets of
//! agents' control channels and of the sessions they open (see
//! [`tessera_agent_api::protocol`]). A session's socket becomes a
//! [`Session`] for the app: its binary frames are the session's bytes, its
//! text frames resizes (out) and the exit code (in).

use super::agent::Agent;
use super::{NativeError, Path};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tessera_agent_api::protocol::SessionControlFrame;
use tessera_agent_api::{AgentError, Session, SessionControl, TtySize};
use tessera_app::agents::AgentCaller;
use tessera_app::{App, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// How often an idle control channel sends something (a ping, or an empty
/// line on a stream), so both sides and anything between know it lives.
const CHANNEL_KEEPALIVE: Duration = Duration::from_secs(20);

/// An agent's control channel: what the app asks of the agent, until
/// either side closes. Two forms of one channel: a streamed answer, one
/// [`ChannelMessage`](tessera_agent_api::protocol::ChannelMessage) a line
/// (`application/x-ndjson`), which an agent speaking HTTP/2 carries on the
/// one connection its other calls share; or, for an agent that asks for
/// it, a WebSocket with one message a text frame.
pub async fn channel(State(app): State<App>, Agent(agent): Agent, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    if !parts.headers.contains_key(header::UPGRADE) {
        return channel_stream(app, agent);
    }
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => channel_socket(app, agent, upgrade),
        Err(rejection) => rejection.into_response(),
    }
}

fn channel_stream(app: App, agent: AgentCaller) -> Response {
    let (guard, asks) = app.agent_channel(&agent);
    let start = tokio::time::Instant::now() + CHANNEL_KEEPALIVE;
    let keepalive = tokio::time::interval_at(start, CHANNEL_KEEPALIVE);
    let lines = futures::stream::unfold(
        (guard, asks, keepalive, app),
        |(guard, mut asks, mut keepalive, app)| async move {
            let line = tokio::select! {
                // The server is stopping: the answer ends (the agent dials
                // again, elsewhere or once it is back), so the drain does
                // not wait half a minute for it.
                () = app.stopping() => return None,
                // None: a newer channel of this agent replaced this one.
                ask = asks.recv() => {
                    let mut line = serde_json::to_string(&ask?).unwrap_or_default();
                    line.push('\n');
                    line
                }
                _ = keepalive.tick() => "\n".to_string(),
            };
            Some((
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line)),
                (guard, asks, keepalive, app),
            ))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from_stream(lines),
    )
        .into_response()
}

fn channel_socket(app: App, agent: AgentCaller, upgrade: WebSocketUpgrade) -> Response {
    // Its messages are a few hundred bytes: no need for the default
    // buffers of 128 KiB each way, per agent.
    // What an agent sends on it is read only to be dropped: nothing large
    // is taken.
    let upgrade = upgrade
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_message_size(16 * 1024)
        .max_frame_size(16 * 1024);
    upgrade.on_upgrade(move |mut socket| async move {
        let (_guard, mut asks) = app.agent_channel(&agent);
        let mut ping = tokio::time::interval(CHANNEL_KEEPALIVE);
        ping.reset();
        loop {
            tokio::select! {
                () = app.stopping() => {
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
                ask = asks.recv() => {
                    let Some(ask) = ask else { return };
                    let text = serde_json::to_string(&ask).unwrap_or_default();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return;
                    }
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        }
    })
}

/// The socket of a session an agent opened.
pub async fn session(
    State(app): State<App>,
    Agent(agent): Agent,
    Path(id): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, NativeError> {
    if !app.agent_session_expected(&agent, &id) {
        return Err(NativeError(Error::NotFound(format!(
            "session {id} not found"
        ))));
    }
    Ok(upgrade.on_upgrade(move |socket| async move {
        let session = carry(socket);
        if let Err(err) = app.agent_session_arrived(&agent, &id, session) {
            tracing::debug!(session = %id, error = %err, "a session's socket came too late");
        }
    }))
}

/// How a session carried by a socket ends, and its resizes.
struct SocketControl {
    resize: mpsc::UnboundedSender<TtySize>,
    ended: watch::Receiver<Option<Result<i32, String>>>,
}

#[async_trait::async_trait]
impl SessionControl for SocketControl {
    async fn wait(&mut self) -> Result<i32, AgentError> {
        let ended = self
            .ended
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::Failed("the session's socket closed".into()))?;
        match ended.clone() {
            Some(Ok(code)) => Ok(code),
            Some(Err(why)) => Err(AgentError::Failed(why)),
            None => Err(AgentError::Failed("the session's socket closed".into())),
        }
    }

    fn resize(&mut self, size: TtySize) -> Result<(), AgentError> {
        self.resize
            .send(size)
            .map_err(|_| AgentError::Failed("the session has ended".into()))
    }
}

/// A session whose bytes a task carries to and from `socket`.
fn carry(mut socket: WebSocket) -> Session {
    let (to_app, output) = tokio::io::duplex(64 * 1024);
    let (input, mut from_app) = tokio::io::duplex(64 * 1024);
    let (resize_tx, mut resize_rx) = mpsc::unbounded_channel();
    let (ended_tx, ended_rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut to_app = to_app;
        let mut buffer = vec![0u8; 16 * 1024];
        let mut outcome: Option<Result<i32, String>> = None;
        let mut input_open = true;
        loop {
            tokio::select! {
                read = from_app.read(&mut buffer), if input_open => match read {
                    Ok(0) | Err(_) => {
                        // The user went: close, which ends the session.
                        input_open = false;
                        let _ = socket.send(Message::Close(None)).await;
                    }
                    Ok(n) => {
                        if socket.send(Message::Binary(buffer[..n].to_vec().into())).await.is_err() {
                            break;
                        }
                    }
                },
                size = resize_rx.recv() => {
                    if let Some(size) = size {
                        let text = serde_json::to_string(&SessionControlFrame::Resize(size)).unwrap_or_default();
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Binary(bytes))) => {
                        if to_app.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                        Ok(SessionControlFrame::Exit(code)) => outcome = Some(Ok(code)),
                        Ok(SessionControlFrame::Error(why)) => outcome = Some(Err(why)),
                        _ => {}
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
        // The output ends (end of file for the reader), then the outcome.
        drop(to_app);
        let _ =
            ended_tx.send(Some(outcome.unwrap_or_else(|| {
                Err("the session's socket closed before it ended".into())
            })));
    });
    Session {
        input: Box::new(input),
        output: Box::new(output),
        control: Box::new(SocketControl {
            resize: resize_tx,
            ended: ended_rx,
        }),
    }
}
