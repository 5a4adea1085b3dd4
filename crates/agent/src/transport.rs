//! How the agent's calls reach the control plane: one HTTP client, HTTP/2
//! when the way there speaks it (so heartbeats, the long-poll, reports and
//! the control channel share one connection: at 10,000 hosts, 10,000
//! connections rather than 30,000), HTTP/1.1 when something between speaks
//! only that (a proxy), with a connection per call under way.
//!
//! The choice is made at start, and made again when it turns out wrong:
//! after [`RECHOOSE_AFTER`] calls in a row that do not reach the control
//! plane (it was away at start and taken to speak HTTP/2, and a proxy that
//! refuses HTTP/2 is what answers now), and, while on HTTP/1.1, every
//! [`HTTP2_AGAIN_EVERY`] (the proxy gone). A control plane slow to answer
//! is never taken for one that does not speak HTTP/2: a proxy that hangs
//! on HTTP/2's preface instead of refusing it is not told apart from an
//! overloaded control plane.

use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Calls in a row that do not reach the control plane before the protocol
/// is chosen again.
const RECHOOSE_AFTER: u32 = 3;
/// While on HTTP/1.1, how often HTTP/2 is tried again.
const HTTP2_AGAIN_EVERY: Duration = Duration::from_secs(600);
/// How long a probe (`GET /health`) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's client to the control plane at `base`, and the protocol it
/// speaks (see the module's doc). Calls take [`Transport::http`] and say
/// whether they reached the control plane.
pub(crate) struct Transport {
    base: String,
    /// The client, and whether it speaks HTTP/2.
    current: RwLock<(reqwest::Client, bool)>,
    /// Calls in a row that did not reach the control plane.
    failures: AtomicU32,
    /// A probe is under way.
    probing: AtomicBool,
    /// When HTTP/2 was last tried.
    http2_tried: Mutex<Instant>,
    /// Given by the caller ([`crate::runtime::AgentOptions::http`]): kept.
    fixed: bool,
}

impl Transport {
    /// Chooses at start: HTTP/2 unless it is refused where HTTP/1.1 is
    /// answered. A control plane that does not answer yet, or is slow to
    /// (a busy one, a fleet joining at once), is taken to speak HTTP/2, as
    /// Tessera's own listener does.
    pub(crate) async fn connect(base: &str) -> Result<Transport> {
        let h2 = http2_client()?;
        let speaks_h2 = match probe(&h2, base).await {
            Ok(()) => true,
            Err(e) if e.is_timeout() => true,
            Err(h2_error) => match probe(&http1_client()?, base).await {
                Ok(()) => {
                    tracing::warn!(
                        server = base,
                        error = %crate::runtime::error_chain(&h2_error),
                        "the control plane does not answer HTTP/2 here (a proxy between?): \
                         speaking HTTP/1.1, with a connection per call under way"
                    );
                    false
                }
                Err(_) => true,
            },
        };
        let client = match speaks_h2 {
            true => h2,
            false => http1_client()?,
        };
        Ok(Transport::new(base, client, speaks_h2, false))
    }

    /// A transport over `client`, which is kept whatever happens.
    pub(crate) fn fixed(base: &str, client: reqwest::Client) -> Transport {
        Transport::new(base, client, true, true)
    }

    fn new(base: &str, client: reqwest::Client, speaks_h2: bool, fixed: bool) -> Transport {
        Transport {
            base: base.to_string(),
            current: RwLock::new((client, speaks_h2)),
            failures: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            http2_tried: Mutex::new(Instant::now()),
            fixed,
        }
    }

    /// The client to make a call with.
    pub(crate) fn http(&self) -> reqwest::Client {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// Whether the client speaks HTTP/2.
    pub(crate) fn speaks_http2(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
    }

    /// A call got an answer (any status).
    pub(crate) fn reached(self: &Arc<Self>) {
        self.failures.store(0, Ordering::Relaxed);
        if self.fixed || self.speaks_http2() {
            return;
        }
        let due = {
            let mut tried = self
                .http2_tried
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let due = tried.elapsed() >= HTTP2_AGAIN_EVERY;
            if due {
                *tried = Instant::now();
            }
            due
        };
        if due {
            self.spawn_probe(Rechoice::Http2Again);
        }
    }

    /// A call did not reach the control plane (no answer at all).
    pub(crate) fn unreached(self: &Arc<Self>) {
        if self.fixed {
            return;
        }
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 >= RECHOOSE_AFTER {
            self.spawn_probe(Rechoice::Failing);
        }
    }

    fn spawn_probe(self: &Arc<Self>, why: Rechoice) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let transport = self.clone();
        tokio::spawn(async move {
            if let Err(err) = transport.rechoose(why).await {
                tracing::warn!(error = %err, "cannot choose the control plane's protocol again");
            }
            transport.failures.store(0, Ordering::Relaxed);
            transport.probing.store(false, Ordering::Release);
        });
    }

    /// Probes HTTP/2 on a new connection, and keeps it if it answers (the
    /// connection calls were failing on may be the stuck one). HTTP/2
    /// refused where HTTP/1.1 answers: HTTP/1.1. A probe answered late is
    /// no sign of a protocol not spoken (a busy control plane would send a
    /// fleet to HTTP/1.1 while it is overloaded): the client stays, as it
    /// does when neither answers (the control plane is away).
    async fn rechoose(&self, why: Rechoice) -> Result<()> {
        let base = &self.base;
        let speaks_h2 = self.speaks_http2();
        let h2 = http2_client()?;
        *self
            .http2_tried
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let h2_error = match probe(&h2, base).await {
            Ok(()) => {
                if !speaks_h2 {
                    tracing::info!(
                        server = %base,
                        "the control plane answers HTTP/2 again: one connection for every call"
                    );
                }
                self.set(h2, true);
                return Ok(());
            }
            Err(e) if e.is_timeout() => return Ok(()),
            Err(e) => e,
        };
        if why == Rechoice::Http2Again || !speaks_h2 {
            return Ok(());
        }
        let h1 = http1_client()?;
        if probe(&h1, base).await.is_ok() {
            tracing::warn!(
                server = %base,
                error = %crate::runtime::error_chain(&h2_error),
                "the control plane does not answer HTTP/2 here (a proxy between?): speaking \
                 HTTP/1.1, with a connection per call under way"
            );
            self.set(h1, false);
        }
        Ok(())
    }

    fn set(&self, client: reqwest::Client, speaks_h2: bool) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (client, speaks_h2);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Rechoice {
    /// Calls keep failing: either protocol, whichever answers.
    Failing,
    /// On HTTP/1.1 for a while: HTTP/2 if it answers now.
    Http2Again,
}

fn http2_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .http2_prior_knowledge()
        // A connection that stops answering is found and made again.
        .http2_keep_alive_interval(Some(Duration::from_secs(30)))
        .http2_keep_alive_timeout(Duration::from_secs(20))
        .http2_keep_alive_while_idle(true)
        .build()
        .context("cannot build the HTTP client")
}

fn http1_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .http1_only()
        .build()
        .context("cannot build the HTTP client")
}

/// `GET /health`: whether the control plane answers this client at all.
async fn probe(client: &reqwest::Client, base: &str) -> Result<(), reqwest::Error> {
    client
        .get(format!("{base}/health"))
        .timeout(PROBE_TIMEOUT)
        .send()
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that speaks only HTTP/1.1 (a proxy, say) on `listener`:
    /// every request, whatever it is, gets `200` and the connection is
    /// closed.
    fn serve_http1_only(listener: tokio::net::TcpListener) {
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
    }

    async fn http1_only() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        serve_http1_only(listener);
        base
    }

    async fn version(transport: &Transport, base: &str) -> Option<reqwest::Version> {
        let answer = transport
            .http()
            .get(format!("{base}/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        answer.ok().map(|a| a.version())
    }

    #[tokio::test]
    async fn a_control_plane_behind_an_http1_proxy_is_spoken_to_in_http1() {
        let base = http1_only().await;
        let transport = Transport::connect(&base).await.expect("transport");
        assert_eq!(
            version(&transport, &base).await,
            Some(reqwest::Version::HTTP_11)
        );
    }

    /// Away at start, it is taken to speak HTTP/2; an HTTP/1.1-only proxy
    /// is what answers when it is back: after a few calls that do not get
    /// through, the agent speaks HTTP/1.1 to it.
    #[tokio::test]
    async fn an_agent_that_guessed_http2_wrong_speaks_http1_after_a_few_failed_calls() {
        // A port nobody listens on yet: bound (so that no other test or
        // process takes it meanwhile), not listening (so a connection to
        // it is refused), until the proxy starts listening on it.
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&any_port.into()).expect("bind");
        let addr = socket
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("an IP address");
        let base = format!("http://{addr}");
        let transport = Arc::new(Transport::connect(&base).await.expect("transport"));
        assert!(transport.speaks_http2());
        socket.listen(128).expect("listen");
        socket.set_nonblocking(true).expect("nonblocking");
        let listener = std::net::TcpListener::from(socket);
        serve_http1_only(tokio::net::TcpListener::from_std(listener).expect("listener"));
        assert_eq!(version(&transport, &base).await, None, "HTTP/2 fails there");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match version(&transport, &base).await {
                Some(version) => {
                    assert_eq!(version, reqwest::Version::HTTP_11);
                    break;
                }
                None => transport.unreached(),
            }
            assert!(Instant::now() < deadline, "still HTTP/2");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!transport.speaks_http2());
    }

    /// A transport given by the caller stays what it is.
    #[tokio::test]
    async fn a_fixed_client_is_kept() {
        let base = http1_only().await;
        let transport = Arc::new(Transport::fixed(&base, http2_client().expect("client")));
        for _ in 0..(RECHOOSE_AFTER * 2) {
            transport.unreached();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(version(&transport, &base).await, None);
    }
}
