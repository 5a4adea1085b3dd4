//! The agent's control channel (see
//! [`tessera_agent_api::protocol`]): a streamed answer the agent keeps
//! open from the control plane, one message a line, on which it is asked
//! to open sessions into instances. Over HTTP/2 it shares the one
//! connection of the agent's other calls. For each session, the agent
//! opens it on its host and dials back a WebSocket of the session's own,
//! then carries its bytes: binary frames both ways, text frames for
//! resizes and the exit code.
//!
//! The design decision: the agent always dials, as it does for everything
//! else, so a host behind NAT serves terminals too; and each session has
//! its own socket, so one busy terminal never slows another.

use crate::host::LocalHost;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tessera_agent_api::protocol::{ChannelMessage, SessionControlFrame};
use tessera_agent_api::{HostAgent, Session, SessionRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// How long the channel may stay silent before it is taken for dead and
/// dialled again (the control plane sends an empty line every 20 s).
const CHANNEL_SILENCE: Duration = Duration::from_secs(60);

/// Where and how the agent reaches the control plane.
#[derive(Clone)]
pub(crate) struct Dialer {
    /// The control plane's base URL (`http://...`).
    pub base: String,
    /// The host's credential.
    pub credential: String,
    /// The client the agent's other calls go through (its connection).
    pub transport: Arc<crate::transport::Transport>,
}

impl Dialer {
    /// The same credential towards another base URL (a replica's own).
    fn towards(&self, base: &str) -> Dialer {
        Dialer {
            base: base.trim_end_matches('/').to_string(),
            credential: self.credential.clone(),
            transport: self.transport.clone(),
        }
    }

    fn request(
        &self,
        path: &str,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, String> {
        let url = match self.base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}{path}"),
            None => format!("ws://{}{path}", self.base.trim_start_matches("http://")),
        };
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("{url}: {e}"))?;
        let bearer = format!("Bearer {}", self.credential)
            .parse()
            .map_err(|_| "the host credential is not a header value".to_string())?;
        request.headers_mut().insert("authorization", bearer);
        Ok(request)
    }
}

/// Keeps the control channel open until `stop`, dialling again (with a
/// growing pause) whenever it drops.
pub(crate) async fn keep(dialer: Dialer, host: Arc<LocalHost>, stop: CancellationToken) {
    let mut pause = Duration::from_millis(500);
    loop {
        let session = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = serve_channel(&dialer, &host, &stop) => outcome,
        };
        match session {
            Ok(()) => pause = Duration::from_millis(500),
            Err(why) => {
                tracing::debug!(error = %why, "the control channel is down; dialling again")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// One connection of the control channel, until it closes.
async fn serve_channel(
    dialer: &Dialer,
    host: &Arc<LocalHost>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut response = dialer
        .transport
        .http()
        .get(format!("{}/v1/agent/channel", dialer.base))
        .bearer_auth(&dialer.credential)
        .send()
        .await
        .map_err(|e| {
            dialer.transport.unreached();
            format!(
                "dialling the control channel: {}",
                crate::runtime::error_chain(&e)
            )
        })?;
    dialer.transport.reached();
    if !response.status().is_success() {
        return Err(format!(
            "the control plane refused the control channel: {}",
            response.status()
        ));
    }
    tracing::debug!("control channel open");
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            chunk = tokio::time::timeout(CHANNEL_SILENCE, response.chunk()) => chunk,
        };
        let bytes = match chunk {
            Err(_) => return Err("the control channel went silent".into()),
            Ok(Err(e)) => return Err(crate::runtime::error_chain(&e)),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(bytes))) => bytes,
        };
        pending.extend_from_slice(&bytes);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = &line[..line.len() - 1];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            handle(dialer, host, line);
        }
        if pending.len() > 1 << 20 {
            return Err("the control channel sent a line over 1 MiB".into());
        }
    }
}

/// Acts on one message of the control channel.
fn handle(dialer: &Dialer, host: &Arc<LocalHost>, line: &[u8]) {
    match serde_json::from_slice::<ChannelMessage>(line) {
        Ok(ChannelMessage::Open {
            session,
            instance_id,
            request,
            dial_back,
        }) => {
            let dialer = match &dial_back {
                Some(base) if base.starts_with("http://") || base.starts_with("https://") => {
                    dialer.towards(base)
                }
                _ => dialer.clone(),
            };
            let host = host.clone();
            tokio::spawn(async move {
                if let Err(why) =
                    serve_session(&dialer, &host, &session, &instance_id, &request).await
                {
                    tracing::warn!(%instance_id, error = %why, "session ended badly");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "an unreadable control message"),
    }
}

/// Opens a session on the host, dials its socket back, and carries it.
async fn serve_session(
    dialer: &Dialer,
    host: &Arc<LocalHost>,
    session_id: &str,
    instance_id: &str,
    request: &SessionRequest,
) -> Result<(), String> {
    let opened = host.open_session(instance_id, request).await;
    let (socket, _) = tokio_tungstenite::connect_async(
        dialer.request(&format!("/v1/agent/sessions/{session_id}"))?,
    )
    .await
    .map_err(|e| format!("dialling the session's socket: {e}"))?;
    let (mut tx, mut rx) = socket.split();
    let Session {
        mut input,
        mut output,
        mut control,
    } = match opened {
        Ok(session) => session,
        Err(err) => {
            let frame = SessionControlFrame::Error(err.to_string());
            let text = serde_json::to_string(&frame).unwrap_or_default();
            let _ = tx.send(Message::Text(text.into())).await;
            let _ = tx.send(Message::Close(None)).await;
            return Ok(());
        }
    };
    tracing::info!(%instance_id, "session open");
    let mut buffer = vec![0u8; 16 * 1024];
    let mut output_open = true;
    loop {
        tokio::select! {
            read = output.read(&mut buffer), if output_open => match read {
                Ok(0) | Err(_) => output_open = false,
                Ok(n) => tx
                    .send(Message::Binary(buffer[..n].to_vec().into()))
                    .await
                    .map_err(|e| e.to_string())?,
            },
            code = control.wait(), if !output_open => {
                let code = code.map_err(|e| e.to_string())?;
                let text = serde_json::to_string(&SessionControlFrame::Exit(code)).unwrap_or_default();
                let _ = tx.send(Message::Text(text.into())).await;
                let _ = tx.send(Message::Close(None)).await;
                tracing::info!(%instance_id, code, "session ended");
                return Ok(());
            }
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Binary(bytes))) => {
                    input.write_all(&bytes).await.map_err(|e| e.to_string())?;
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(SessionControlFrame::Resize(size)) = serde_json::from_str(&text)
                        && let Err(e) = control.resize(size)
                    {
                        tracing::debug!(error = %e, "resize refused");
                    }
                }
                // The user went: the session's process goes too (dropping
                // its control ends it).
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            }
        }
    }
}
