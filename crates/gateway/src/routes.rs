//! The gateway's only view of the world: where a request goes, and which
//! ports to listen on.
//!
//! Design decision: the table is synchronous and asked on every request, so
//! an implementation answers from memory (the app keeps a snapshot it
//! updates when rules or containers change); the gateway caches nothing and
//! a change is seen by the next request.

use std::fmt;
use std::net::SocketAddr;

/// Where requests for containers go. Implemented by the app over its model,
/// and by [`crate::MemoryRoutes`] for tests and benchmarks.
pub trait RouteTable: Send + Sync + 'static {
    /// The address to forward to for a request to `container` that arrived
    /// on external `port`: the container's address with the rule's
    /// `target_port`, or why there is none.
    ///
    /// `container` is always 8 lowercase hexadecimal characters (the
    /// gateway answers other hostnames itself). Called once per request:
    /// answer from memory, without blocking.
    fn route(&self, container: &str, port: u16) -> Result<SocketAddr, NoRoute>;

    /// The external ports used by at least one ingress rule. The gateway
    /// reads this every `refresh_interval` (and on [`crate::Gateway::refresh`]),
    /// opens the ports it lacks and closes the ones no longer listed. Ports 80
    /// and 443 are always open; ports outside 80, 443 and 8000-8999 are ignored.
    fn ports(&self) -> Vec<u16>;
}

/// Why a request has nowhere to go. Each is answered 502 with a body saying
/// which, so a user can tell a stopped container from a missing rule; an
/// unknown container is answered as one without a rule for the port, so
/// nobody can learn, without a credential, which containers exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoute {
    /// No container has this id.
    UnknownContainer,
    /// The container exists but is not running (or has no address yet).
    NotRunning,
    /// The container has no ingress rule for the port the request came on.
    NoRule,
}

impl NoRoute {
    /// A short machine-readable word for the answer's `reason` field.
    pub fn code(self) -> &'static str {
        match self {
            NoRoute::NotRunning => "not_running",
            NoRoute::UnknownContainer | NoRoute::NoRule => "no_rule",
        }
    }

    /// The sentence the 502 body carries.
    pub fn describe(self, container: &str, port: u16) -> String {
        match self {
            NoRoute::NotRunning => format!("container {container} is not running"),
            NoRoute::UnknownContainer | NoRoute::NoRule => {
                format!("no ingress rule for port {port} on container {container}")
            }
        }
    }
}

impl fmt::Display for NoRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
