//! Drivers realise what the control plane asks on a host.
//!
//! - [`sim`]: a simulated host, in memory, for tests and scale runs.
//! - [`unit`]: Kloigos compute units: a Linux user per unit in a cgroup
//!   pinned to its CPUs, reached over SSH on the unit's first port.
//! - [`container`]: instances as system containers run by an OCI runtime.

pub mod container;
pub mod sim;
pub mod unit;
