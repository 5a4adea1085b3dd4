//! Drivers realise what the control plane asks on a host.
//!
//! - [`instances`]: [`InstanceRuntime`], the one trait for what runs
//!   instances on a host, and [`session`]: what sessions into instances
//!   are made of here (the contract's `Session`, a host pseudo-terminal).
//! - [`sim`]: a simulated host, in memory, for tests and scale runs; it
//!   runs (pretend) instances through [`InstanceRuntime`] too.
//! - [`unit`]: Kloigos compute units: a Linux user per unit in a cgroup
//!   pinned to its CPUs, reached over SSH on the unit's first port.
//! - [`container`]: instances as system containers run by an OCI runtime,
//!   an [`InstanceRuntime`].
//!
//! The design decision: instances go through [`InstanceRuntime`] only, so a
//! VM driver is one more implementation; units are not instances and keep
//! their own driver. CPU pinning with cgroups, for any driver, is in
//! [`crate::cgroup`].

pub mod container;
pub mod instances;
pub mod session;
pub mod sim;
pub mod unit;

pub use instances::{InstanceRuntime, InstanceStatus};
pub use session::{Session, SessionControl, SessionRequest, TtySize};
