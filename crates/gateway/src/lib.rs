//! Tessera's ingress gateway: the front door of containers' published ports.
//!
//! A container `abc12345` has the hostname `abc12345.<domain>` and ingress
//! rules mapping an external port (80, 443 or 8000-8999) to a `target_port`
//! inside it. The gateway listens on those external ports, reads the `Host`
//! of each HTTP/1.1 request, and proxies it to the container's address and
//! the rule's target port; on 443, and on 8000-8999 when the first byte is a
//! TLS handshake, it terminates TLS first and forwards plain HTTP.
//!
//! The one design decision: the gateway knows nothing of the store or the
//! app. It asks a [`RouteTable`] (a trait object given at start) where each
//! request goes and which ports to open, so the control plane can feed it
//! from the database and tests from a [`MemoryRoutes`].
//!
//! ```no_run
//! # async fn example() -> Result<(), tessera_gateway::StartError> {
//! use std::sync::Arc;
//! use tessera_gateway::{CertificateSource, Gateway, GatewayConfig, MemoryRoutes, PortMapping};
//!
//! let routes = Arc::new(MemoryRoutes::new());
//! routes.set_container("abc12345", Some("10.0.0.7".parse().unwrap()));
//! routes.set_rule("abc12345", 80, 3000);
//! let config = GatewayConfig::new(
//!     "compute.localhost",
//!     "0.0.0.0".parse().unwrap(),
//!     PortMapping::Offset(20_000),
//!     CertificateSource::SelfSigned { dir: "/var/lib/tessera/gateway".into() },
//! );
//! let gateway = Gateway::start(config, routes.clone()).await?;
//! // ... `curl -H 'Host: abc12345.compute.localhost' localhost:20080` reaches 10.0.0.7:3000
//! gateway.stop().await;
//! # Ok(()) }
//! ```

mod answers;
mod certificate;
mod config;
mod connection;
mod gateway;
mod hostname;
mod limits;
mod listeners;
mod memory;
mod proxy;
mod routes;

pub use certificate::CertificateError;
pub use config::{CertificateSource, GatewayConfig, PortMapping, is_ingress_port};
pub use gateway::{Gateway, StartError};
pub use hostname::{Domain, InvalidDomain};
pub use limits::{ConnectionLimits, Slot, client_block};
pub use memory::MemoryRoutes;
pub use proxy::strip_hop_by_hop;
pub use routes::{NoRoute, RouteTable};
