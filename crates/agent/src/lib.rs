//! The host agent and its drivers.
//!
//! For now the only driver is [`drivers::sim`], a simulated host that keeps
//! its state in memory and checks that the control plane's calls make sense
//! (a key is only installed on a prepared unit, and so on). The real drivers
//! plug into the same [`tessera_agent_api::HostAgent`] trait.

pub mod drivers;
