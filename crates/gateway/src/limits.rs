//! Admission of client connections under two limits: how many are open in
//! all, and how many from one address. The ingress gateway and the API's
//! listener (`tessera_faces::serve`) both admit connections with it.
//!
//! An "address" is a client's [`client_block`]: an IPv6 client is its
//! /64, which one subscriber is given whole (RFC 6177), so that it cannot
//! take a fresh address of its own for every connection.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

/// What limits per client address count `ip` as: an IPv4 address (or
/// one mapped into IPv6) as itself, an IPv6 address as its /64.
pub fn client_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        },
    }
}
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The connections open, in all and per client address.
pub struct ConnectionLimits {
    open: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
}

/// One admitted connection's place under the limits, given back when it
/// is dropped.
pub struct Slot {
    _open: OwnedSemaphorePermit,
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    pub fn new(max_connections: usize, max_per_address: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            open: Arc::new(Semaphore::new(max_connections)),
            per_address: Mutex::default(),
            max_per_address,
        })
    }

    /// A place for a new connection from `ip` (counted as its
    /// [`client_block`]), or `None` over a limit.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = client_block(ip);
        let open = self.open.clone().try_acquire_owned().ok()?;
        let mut per_address = self
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = per_address.entry(ip).or_insert(0);
        if *n >= self.max_per_address {
            return None;
        }
        *n += 1;
        drop(per_address);
        Some(Slot {
            _open: open,
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_address = self
            .limits
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_address.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_in_all_and_per_address_and_given_back() {
        let limits = ConnectionLimits::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        let a1 = limits.admit(a).expect("first of a");
        let _a2 = limits.admit(a).expect("second of a");
        assert!(limits.admit(a).is_none(), "a third of one address");
        let _b1 = limits.admit(b).expect("first of b");
        assert!(limits.admit(b).is_none(), "over the limit in all");
        drop(a1);
        assert!(limits.admit(b).is_some(), "a place given back");
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let limits = ConnectionLimits::new(10, 2);
        let one: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let same_64: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().expect("ip");
        let next_64: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        let _first = limits.admit(one).expect("first");
        let _second = limits.admit(same_64).expect("second, of the same /64");
        assert!(limits.admit(one).is_none(), "a third of the /64");
        assert!(limits.admit(next_64).is_some(), "another /64");
        assert_eq!(
            client_block("::ffff:192.0.2.7".parse().expect("ip")),
            "192.0.2.7".parse::<IpAddr>().expect("ip"),
            "an IPv4 client mapped into IPv6 is itself"
        );
        assert_eq!(
            client_block("198.51.100.1".parse().expect("ip")),
            "198.51.100.1".parse::<IpAddr>().expect("ip")
        );
    }
}
