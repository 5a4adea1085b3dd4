//! The ingress gateway's added latency: the same requests to a local
//! upstream, directly and through a gateway started in this process (plain
//! HTTP on port 80, TLS on 443), one client in sequence and many at once.
//!
//! Design decision: each client keeps one keep-alive connection and the
//! figures are per request, so they show what the gateway adds to a request
//! (routing, header rewriting, a pooled hop to the container, TLS record
//! work); a separate row opens a new connection per request, which is what a
//! TLS handshake costs.

use super::quantile;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_gateway::{CertificateSource, Gateway, GatewayConfig, MemoryRoutes, PortMapping};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// Requests measured per row.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients in the concurrent rows.
    #[arg(long, default_value_t = 32)]
    clients: usize,
}

const CONTAINER: &str = "be4c4000";
const HOST: &str = "be4c4000.bench.localhost";

/// Where a client sends its requests.
#[derive(Clone)]
enum Path {
    Direct(SocketAddr),
    Gateway(SocketAddr),
    GatewayTls(SocketAddr, TlsConnector),
}

impl Path {
    fn name(&self) -> &'static str {
        match self {
            Path::Direct(_) => "direct (http)",
            Path::Gateway(_) => "gateway http :80",
            Path::GatewayTls(..) => "gateway https :443",
        }
    }

    async fn connect(&self) -> Result<SendRequest<Empty<Bytes>>> {
        let (Path::Direct(addr) | Path::Gateway(addr) | Path::GatewayTls(addr, _)) = self;
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        if let Path::GatewayTls(_, tls) = self {
            let stream = tls.connect(ServerName::try_from(HOST)?, stream).await?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            Ok(sender)
        } else {
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            Ok(sender)
        }
    }
}

async fn request(sender: &mut SendRequest<Empty<Bytes>>) -> Result<()> {
    sender.ready().await?;
    let request = hyper::Request::builder()
        .uri("/")
        .header(hyper::header::HOST, HOST)
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("answered {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// Per-request latencies of `requests` requests shared among `clients`,
/// each on its own connection (a new one per request when `fresh`).
async fn measure(
    path: &Path,
    requests: usize,
    clients: usize,
    fresh: bool,
) -> Result<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..clients {
        let share = requests / clients + usize::from(worker < requests % clients);
        let path = path.clone();
        workers.spawn(async move {
            let mut samples = Vec::with_capacity(share);
            let mut sender = path.connect().await?;
            for _ in 0..share {
                let begun = Instant::now();
                if fresh {
                    sender = path.connect().await?;
                }
                request(&mut sender).await?;
                samples.push(begun.elapsed());
            }
            anyhow::Ok(samples)
        });
    }
    let mut samples = Vec::with_capacity(requests);
    while let Some(done) = workers.join_next().await {
        samples.extend(done??);
    }
    let elapsed = started.elapsed();
    samples.sort_unstable();
    Ok((samples, elapsed))
}

pub async fn run(args: GatewayArgs) -> Result<()> {
    let clients = args.clients.max(1);
    let requests = args.requests.max(clients);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let routes = Arc::new(MemoryRoutes::new());
    routes.set_container(CONTAINER, Some(upstream.ip()));
    routes.set_rule(CONTAINER, 80, upstream.port());
    routes.set_rule(CONTAINER, 443, upstream.port());
    let dir = tempfile::tempdir()?;
    let config = GatewayConfig {
        max_connections: 4 * clients + 64,
        ..GatewayConfig::new(
            "bench.localhost",
            upstream.ip(),
            PortMapping::Ephemeral,
            CertificateSource::SelfSigned {
                dir: dir.path().to_path_buf(),
            },
        )
    };
    let gateway = Gateway::start(config, routes).await?;
    let tls = trusting(gateway.certificate_pem())?;
    let paths = [
        Path::Direct(upstream),
        Path::Gateway(gateway.local_addr(80).context("port 80 is not open")?),
        Path::GatewayTls(
            gateway.local_addr(443).context("port 443 is not open")?,
            tls,
        ),
    ];

    println!(
        "gateway: {requests} requests per row to a local upstream answering \"ok\"; latencies per request"
    );
    println!(
        "{:<28} {:<20} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "clients", "path", "p50 µs", "p99 µs", "req/s", "+p50 µs", "+p99 µs"
    );
    let modes = [
        ("1, keep-alive".to_string(), 1, false),
        (format!("{clients}, keep-alive"), clients, false),
        ("1, new connection each".to_string(), 1, true),
    ];
    for (mode, clients, fresh) in modes {
        let mut direct = None;
        for path in &paths {
            // Warm up: connections, the upstream pool, caches.
            measure(path, requests.min(200), clients, fresh).await?;
            let (samples, elapsed) = measure(path, requests, clients, fresh).await?;
            let p50 = quantile(&samples, 0.50);
            let p99 = quantile(&samples, 0.99);
            let rate = samples.len() as f64 / elapsed.as_secs_f64();
            let added = match direct {
                None => {
                    direct = Some((p50, p99));
                    ("-".to_string(), "-".to_string())
                }
                Some((d50, d99)) => (micros_diff(p50, d50), micros_diff(p99, d99)),
            };
            println!(
                "{:<28} {:<20} {:>9} {:>9} {:>10.0} {:>10} {:>10}",
                mode,
                path.name(),
                p50.as_micros(),
                p99.as_micros(),
                rate,
                added.0,
                added.1
            );
        }
    }
    gateway.stop().await;
    Ok(())
}

/// `a - b` in microseconds, signed.
fn micros_diff(a: Duration, b: Duration) -> String {
    let diff = a.as_micros() as i128 - b.as_micros() as i128;
    format!("{diff:+}")
}

/// A TLS client that trusts only the gateway's (self-signed) certificate.
fn trusting(pem: &str) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(certificate?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
