//! The `tessera` binary's library half: settings, the server's start-up and
//! shutdown, the client commands, and the benchmarks. Integration tests and benchmarks start the
//! server through [`server::start`] exactly as `tessera server` does.

pub mod agent;
pub mod bench;
pub mod client;
pub mod compute;
pub mod deployments;
pub mod ingress;
pub mod logging;
pub mod networks;
pub mod server;
pub mod settings;
pub mod up;
