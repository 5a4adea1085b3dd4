//! Drivers realise what the control plane asks on a host.

pub mod sim;
