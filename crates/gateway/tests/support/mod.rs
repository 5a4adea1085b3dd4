//! What the gateway's tests share: an upstream that echoes what reached it,
//! a gateway on ephemeral ports, and HTTP clients over TCP and TLS.

#![allow(dead_code)]

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderMap};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tessera_gateway::{CertificateSource, Gateway, GatewayConfig, MemoryRoutes, PortMapping};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

pub const DOMAIN: &str = "compute.localhost";
pub const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A gateway on 127.0.0.1, every external port on an ephemeral local port,
/// with a self-signed certificate kept in `dir`.
pub fn config(dir: &Path) -> GatewayConfig {
    GatewayConfig::new(
        DOMAIN,
        LOCALHOST,
        PortMapping::Ephemeral,
        CertificateSource::SelfSigned {
            dir: dir.to_path_buf(),
        },
    )
}

pub async fn start(dir: &Path, routes: &Arc<MemoryRoutes>) -> Gateway {
    Gateway::start(config(dir), routes.clone())
        .await
        .expect("the gateway starts")
}

/// The local address serving external `port`, waiting up to `within` for
/// it to open.
pub async fn opened(gateway: &Gateway, port: u16, within: Duration) -> Option<SocketAddr> {
    let mut bound = gateway.watch_bound();
    let found = tokio::time::timeout(within, bound.wait_for(|b| b.contains_key(&port))).await;
    match found {
        Ok(Ok(bound)) => bound.get(&port).copied(),
        _ => None,
    }
}

/// Whether external `port` closes within `within`.
pub async fn closed(gateway: &Gateway, port: u16, within: Duration) -> bool {
    let mut bound = gateway.watch_bound();
    let found = tokio::time::timeout(within, bound.wait_for(|b| !b.contains_key(&port))).await;
    matches!(found, Ok(Ok(_)))
}

pub fn port_of(gateway: &Gateway, port: u16) -> SocketAddr {
    gateway
        .local_addr(port)
        .unwrap_or_else(|| panic!("external port {port} is open"))
}

/// An HTTP server on 127.0.0.1 that answers every request with JSON saying
/// what reached it: method, target, headers, body. `/slow` waits 300 ms
/// first; a request asking to upgrade to `echo` is switched and echoed.
pub async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0))
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn echo(mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if request
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "echo")
    {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::new(Bytes::new()))
            .unwrap_or_default();
        return Ok(response);
    }
    // Repeated headers are joined, so a duplicate shows.
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .keys()
        .map(|name| {
            let values: Vec<String> = request
                .headers()
                .get_all(name)
                .iter()
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                .collect();
            (name.to_string(), values.join(", ").into())
        })
        .collect();
    let method = request.method().to_string();
    let target = request.uri().to_string();
    let body = match request.into_body().collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let seen =
        serde_json::json!({ "method": method, "target": target, "headers": headers, "body": body });
    Ok(Response::new(Full::new(Bytes::from(seen.to_string()))))
}

/// A WebSocket server on 127.0.0.1 that echoes every message.
pub async fn websocket_upstream() -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0))
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() && socket.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A port on 127.0.0.1 that nothing listens on.
pub async fn dead_port() -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.expect("bind");
    listener.local_addr().expect("address")
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("a JSON body ({e}): {:?}", self.body))
    }

    /// The `error` sentence of a gateway refusal.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

pub fn request(host: &str, target: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(target)
        .header(HOST, host)
        .body(Full::new(Bytes::new()))
        .expect("a request")
}

/// Sends one request on a new connection over `stream`.
pub async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Answer
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(connection);
    let response = sender.send_request(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, host: &str, target: &str) -> Answer {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    send(stream, request(host, target)).await
}

/// A TLS client that trusts only `pem`.
pub fn tls_client(pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(certificate.expect("a PEM certificate"))
            .expect("a usable root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection to `addr` for server name `name`, trusting only `pem`.
pub async fn connect_tls(
    addr: SocketAddr,
    name: &str,
    pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).expect("a server name");
    tls_client(pem).connect(name, stream).await
}

pub async fn get_tls(addr: SocketAddr, host: &str, pem: &str, target: &str) -> Answer {
    let stream = connect_tls(addr, host, pem)
        .await
        .expect("a TLS connection");
    send(stream, request(host, target)).await
}
