//! The host agent and its drivers.
//!
//! [`runtime`] is `tessera agent`: it joins the control plane, heartbeats,
//! and makes its host match the desired state it reads, through
//! [`host::LocalHost`] and the [`drivers`]: `unit` (Kloigos compute units),
//! `container` (instances as system containers) and `sim` (a simulated host,
//! also used in process by `tessera server --sim-hosts`). Instances go
//! through one trait, [`drivers::InstanceRuntime`]; [`cgroup`] pins
//! processes to CPUs for any driver that needs it. `transport` is how the
//! agent's calls reach the control plane (HTTP/2, or HTTP/1.1 through a
//! proxy that speaks only that, chosen again when calls stop getting
//! through).

pub mod cgroup;
mod channel;
pub mod drivers;
pub mod host;
pub mod inventory;
pub mod runtime;
mod script;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
mod transport;
