//! An in-memory [`RouteTable`]: containers, their addresses and their
//! ingress rules in a map, for tests, benchmarks, and as a snapshot the app
//! can keep up to date.
//!
//! Design decision: a rule may exist for a container without an address
//! (stopped), and its port stays open, so a request to it is answered "not
//! running" rather than refused at the TCP level.

use crate::routes::{NoRoute, RouteTable};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{PoisonError, RwLock};

/// Containers and their ingress rules, held in memory.
#[derive(Debug, Default)]
pub struct MemoryRoutes {
    containers: RwLock<HashMap<String, Container>>,
}

#[derive(Debug, Default)]
struct Container {
    /// `None` while the container is not running.
    address: Option<IpAddr>,
    /// External port -> target port inside the container.
    rules: BTreeMap<u16, u16>,
}

impl MemoryRoutes {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the container or changes its address; `None` means not running.
    /// Its rules are kept.
    pub fn set_container(&self, id: &str, address: Option<IpAddr>) {
        let mut containers = self
            .containers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        containers.entry(id.to_string()).or_default().address = address;
    }

    /// Forgets the container and its rules.
    pub fn remove_container(&self, id: &str) {
        let mut containers = self
            .containers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        containers.remove(id);
    }

    /// Adds or replaces the rule for external `port` (an upsert, as the API
    /// does). A container not yet known is added as not running.
    pub fn set_rule(&self, id: &str, port: u16, target_port: u16) {
        let mut containers = self
            .containers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        containers
            .entry(id.to_string())
            .or_default()
            .rules
            .insert(port, target_port);
    }

    /// Replaces everything at once with `containers`: `(id, address,
    /// rules as (port, target_port))`. A request sees the old table or the
    /// new one, never half of each.
    pub fn replace_all(
        &self,
        containers: impl IntoIterator<Item = (String, Option<IpAddr>, Vec<(u16, u16)>)>,
    ) {
        let fresh: HashMap<String, Container> = containers
            .into_iter()
            .map(|(id, address, rules)| {
                let rules = rules.into_iter().collect();
                (id, Container { address, rules })
            })
            .collect();
        *self
            .containers
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
    }

    /// Removes the rule for external `port`, if there is one.
    pub fn remove_rule(&self, id: &str, port: u16) {
        let mut containers = self
            .containers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(container) = containers.get_mut(id) {
            container.rules.remove(&port);
        }
    }
}

impl RouteTable for MemoryRoutes {
    fn route(&self, container: &str, port: u16) -> Result<SocketAddr, NoRoute> {
        let containers = self
            .containers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let found = containers.get(container).ok_or(NoRoute::UnknownContainer)?;
        let target_port = found.rules.get(&port).ok_or(NoRoute::NoRule)?;
        let address = found.address.ok_or(NoRoute::NotRunning)?;
        Ok(SocketAddr::new(address, *target_port))
    }

    fn ports(&self) -> Vec<u16> {
        let containers = self
            .containers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let ports: BTreeSet<u16> = containers
            .values()
            .flat_map(|c| c.rules.keys().copied())
            .collect();
        ports.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_why_a_request_has_no_route() {
        let routes = MemoryRoutes::new();
        routes.set_rule("abc12345", 8080, 3000);
        assert_eq!(routes.route("abc12345", 8080), Err(NoRoute::NotRunning));
        assert_eq!(routes.route("abc12345", 80), Err(NoRoute::NoRule));
        assert_eq!(
            routes.route("deadbeef", 8080),
            Err(NoRoute::UnknownContainer)
        );
        routes.set_container("abc12345", Some(IpAddr::from([10, 0, 0, 7])));
        assert_eq!(
            routes.route("abc12345", 8080),
            Ok(SocketAddr::from(([10, 0, 0, 7], 3000)))
        );
        assert_eq!(routes.ports(), vec![8080]);
        routes.remove_rule("abc12345", 8080);
        assert!(routes.ports().is_empty());
        routes.replace_all([("deadbeef".to_string(), None, vec![(80, 3000)])]);
        assert_eq!(
            routes.route("abc12345", 8080),
            Err(NoRoute::UnknownContainer)
        );
        assert_eq!(routes.route("deadbeef", 80), Err(NoRoute::NotRunning));
        assert_eq!(routes.ports(), vec![80]);
    }
}
