//! Instance networking: a network namespace per instance, a veth pair from
//! it to the host, and a route per instance; the host device named by the
//! agent's `--bridge` only holds the gateway's address (no instance is a
//! port of it). The filter between them is `firewall.rs`.

use super::{fail, run};
use std::net::Ipv4Addr;
use tessera_agent_api::AgentError;

/// A host-local IPv4 subnet; its first host address is the bridge's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Subnet {
    network: u32,
    prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Result<Subnet, AgentError> {
        let bad = || {
            fail(format!(
                "bad subnet {text:?}: expected an IPv4 CIDR like 10.88.0.0/24"
            ))
        };
        let (addr, prefix) = text.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=29).contains(&prefix) {
            return Err(fail(format!(
                "bad subnet {text:?}: the prefix must be between /8 and /29"
            )));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok(Subnet {
            network: u32::from(addr) & mask,
            prefix,
        })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// The addresses instances may have: all hosts but the bridge's.
    pub fn instance_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        let (first, last) = (self.network + 2, self.network + size - 2);
        (first..=last).map(Ipv4Addr::from)
    }
}

/// Whether a network device exists on the host.
async fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).await.is_ok()
}

/// Makes sure the bridge exists, has the subnet's first address and is up.
pub(super) async fn ensure_bridge(bridge: &str, subnet: &Subnet) -> Result<(), AgentError> {
    if !link_exists(bridge).await
        && let Err(e) = run("ip", &["link", "add", bridge, "type", "bridge"]).await
        // Another agent or call may have made it meanwhile.
        && !link_exists(bridge).await
    {
        return Err(e);
    }
    let cidr = format!("{}/{}", subnet.gateway(), subnet.prefix());
    let addrs = run("ip", &["-4", "-o", "addr", "show", "dev", bridge]).await?;
    if !addrs.split_whitespace().any(|w| w == cidr)
        && let Err(e) = run("ip", &["addr", "add", &cidr, "dev", bridge]).await
        && !e.to_string().contains("File exists")
    {
        return Err(e);
    }
    run("ip", &["link", "set", bridge, "up"]).await?;
    Ok(())
}

/// The names of an instance's network devices and namespace.
#[derive(Clone, Debug)]
pub(super) struct NetNames {
    pub netns: String,
    pub host_veth: String,
    pub peer_veth: String,
}

impl NetNames {
    /// `tag`: 8 hex digits unique to the agent and instance.
    pub fn new(tag: &str) -> NetNames {
        NetNames {
            netns: format!("tsr-{tag}"),
            host_veth: format!("tv{tag}"),
            peer_veth: format!("tp{tag}"),
        }
    }

    pub fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.netns)
    }
}

/// Gives a created (not yet started) instance its network: names its
/// network namespace (that of its init, `pid`, made by runc inside its user
/// namespace) `names.netns`, and routes `address` (its IP, and the prefix
/// length of its subnet: this host's instance network, or its VPC subnet)
/// to it through a veth pair. The host end has no address of its own: it
/// answers ARP for the subnet (proxy ARP), and the host routes `ip/32` to
/// it, so every packet between instances crosses the host's filter. The
/// instance's gateway is the host's (`subnet`'s first address), on-link
/// whatever its own subnet. Any remains of an earlier attempt are removed
/// first.
pub(super) async fn setup(
    names: &NetNames,
    gateway_dev: &str,
    subnet: &Subnet,
    address: (Ipv4Addr, u8),
    pid: i64,
) -> Result<(), AgentError> {
    let (ip, prefix) = address;
    teardown(names).await;
    ensure_bridge(gateway_dev, subnet).await?;
    let ns = names.netns.as_str();
    let host = names.host_veth.as_str();
    let result = async {
        run("ip", &["netns", "attach", ns, &pid.to_string()]).await?;
        run(
            "ip",
            &[
                "link",
                "add",
                host,
                "type",
                "veth",
                "peer",
                "name",
                &names.peer_veth,
            ],
        )
        .await?;
        sysctl(&format!("ipv6/conf/{host}/disable_ipv6"), "1").await?;
        sysctl(&format!("ipv4/conf/{host}/proxy_arp"), "1").await?;
        sysctl(&format!("ipv4/conf/{host}/rp_filter"), "1").await?;
        // Answer at once (the default waits up to 0.8 s per new neighbour).
        sysctl(&format!("ipv4/neigh/{host}/proxy_delay"), "0").await?;
        run("ip", &["link", "set", host, "up"]).await?;
        run("ip", &["link", "set", &names.peer_veth, "netns", ns]).await?;
        run(
            "ip",
            &["-n", ns, "link", "set", &names.peer_veth, "name", "eth0"],
        )
        .await?;
        let cidr = format!("{ip}/{prefix}");
        run("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"]).await?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"]).await?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"]).await?;
        let gw = subnet.gateway().to_string();
        run(
            "ip",
            &[
                "-n", ns, "route", "add", "default", "via", &gw, "dev", "eth0", "onlink",
            ],
        )
        .await?;
        let route = format!("{ip}/32");
        run("ip", &["route", "replace", &route, "dev", host]).await?;
        Ok::<(), AgentError>(())
    }
    .await;
    if let Err(e) = result {
        teardown(names).await;
        return Err(e);
    }
    Ok(())
}

/// Writes `/proc/sys/net/<key>`.
async fn sysctl(key: &str, value: &str) -> Result<(), AgentError> {
    let path = format!("/proc/sys/net/{key}");
    tokio::fs::write(&path, value)
        .await
        .map_err(|e| fail(format!("writing {path}: {e}")))
}

/// Removes the instance's veth pair and namespace; missing is fine.
pub(super) async fn teardown(names: &NetNames) {
    if link_exists(&names.host_veth).await
        && let Err(e) = run("ip", &["link", "del", &names.host_veth]).await
    {
        tracing::warn!(veth = %names.host_veth, error = %e, "removing veth");
    }
    if link_exists(&names.peer_veth).await {
        let _ = run("ip", &["link", "del", &names.peer_veth]).await;
    }
    if netns_exists(names).await
        && let Err(e) = run("ip", &["netns", "del", &names.netns]).await
    {
        tracing::warn!(netns = %names.netns, error = %e, "removing network namespace");
    }
}

pub(super) async fn netns_exists(names: &NetNames) -> bool {
    tokio::fs::symlink_metadata(names.netns_path())
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_addresses() {
        let s = Subnet::parse("10.250.7.9/24").expect("parses");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 250, 7, 1));
        let all: Vec<_> = s.instance_addresses().collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 250, 7, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 250, 7, 254)));
        assert_eq!(all.len(), 253);
        assert!(Subnet::parse("10.0.0.0").is_err());
        assert!(Subnet::parse("10.0.0.0/31").is_err());
        assert!(Subnet::parse("nope/24").is_err());
    }
}
