//! What the gateway is told at start: its domain, where it listens, how
//! external ports map to local ones, its certificate, and its limits.
//!
//! Design decision: the external-to-local port mapping is a value
//! ([`PortMapping`]) so production (offset 0), development (offset 20000:
//! port 80 on 20080) and tests (ephemeral ports) run the same code; the
//! request is always routed by its *external* port.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The ports ingress rules may use: 80, 443 and 8000-8999.
pub fn is_ingress_port(port: u16) -> bool {
    port == 80 || port == 443 || (8000..=8999).contains(&port)
}

/// The ports the gateway listens on whatever the rules say.
pub(crate) const ALWAYS_OPEN: [u16; 2] = [80, 443];

/// The gateway's configuration. [`GatewayConfig::new`] sets every limit to
/// its default; change the public fields to tune them.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Containers' hostnames are `<id>.<domain>`, e.g. `compute.localhost`.
    pub domain: String,
    /// The address every listener binds (`0.0.0.0`, `::`, `127.0.0.1`).
    pub listen: IpAddr,
    /// Where external port `p` is served locally.
    pub ports: PortMapping,
    /// The certificate for TLS on 443 and on 8000-8999.
    pub certificate: CertificateSource,
    /// How often the route table's ports are read to open and close
    /// listeners (default 250 ms; [`crate::Gateway::refresh`] reads it at once).
    pub refresh_interval: Duration,
    /// How long a client has to send a request's head, and the first byte
    /// of a connection on a port that tells TLS from HTTP (default 30 s).
    pub header_read_timeout: Duration,
    /// How long a client has to finish the TLS handshake (default 10 s).
    pub tls_handshake_timeout: Duration,
    /// How long to wait for a container to accept a connection (default 5 s).
    pub upstream_connect_timeout: Duration,
    /// On stop, how long requests in flight have to finish (default 10 s).
    pub drain_timeout: Duration,
    /// Client connections served at once, upgraded ones (WebSockets)
    /// included; further ones are closed at accept (default 10 000). Each
    /// may hold a connection to a container too: the process needs twice
    /// as many file descriptors.
    pub max_connections: usize,
    /// Client connections one address may hold at once (default 1 000), so
    /// that no single client fills the gateway for everyone.
    pub max_per_address: usize,
    /// How long a container may take to begin its answer (its status line
    /// and headers), from the request's last byte, before the client gets
    /// a 504 (default 60 s). What follows (a streamed body, an upgraded
    /// connection) is not bounded.
    pub upstream_response_timeout: Duration,
}

impl GatewayConfig {
    pub fn new(
        domain: impl Into<String>,
        listen: IpAddr,
        ports: PortMapping,
        certificate: CertificateSource,
    ) -> Self {
        GatewayConfig {
            domain: domain.into(),
            listen,
            ports,
            certificate,
            refresh_interval: Duration::from_millis(250),
            header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            upstream_connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_per_address: 1_000,
            upstream_response_timeout: Duration::from_secs(60),
        }
    }
}

/// Where external port `p` is listened on locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMapping {
    /// On `p + offset`: 0 in production, e.g. 20000 in development (80 on
    /// 20080, 8123 on 28123). At most 56536, so that 8999 still fits.
    Offset(u16),
    /// On a port the system picks, different for each external port; ask
    /// [`crate::Gateway::local_addr`]. For tests that run side by side.
    Ephemeral,
}

impl PortMapping {
    /// The local port for external `port` (0: let the system pick), or
    /// `None` when the offset pushes it beyond 65535.
    pub(crate) fn local_port(self, port: u16) -> Option<u16> {
        match self {
            PortMapping::Offset(offset) => port.checked_add(offset),
            PortMapping::Ephemeral => Some(0),
        }
    }
}

/// The certificate the gateway serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// The operator's certificate chain and private key, PEM files (a
    /// wildcard for `*.<domain>`, typically). Read once, at start.
    Files {
        certificate: PathBuf,
        private_key: PathBuf,
    },
    /// A self-signed certificate for `*.<domain>` and `<domain>`, generated
    /// at first start into `dir` and reused after, so clients that trust it
    /// keep trusting it across restarts.
    SelfSigned { dir: PathBuf },
}
