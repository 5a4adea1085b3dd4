//! The host's firewall for instances, in nftables: one table per agent,
//! `inet tessera-<agent tag>`, changed only in whole transactions
//! (`nft -f -`), so a rule set is never seen half made.
//!
//! Instances are routed, not bridged: each has a veth whose host end is a
//! port of this table, so every packet an instance sends goes through the
//! host's filter, and no two instances share a link (nothing to spoof at
//! layer 2). What the table says:
//!
//! - **No forged sources** (`prerouting`): a port's packets must come from
//!   its instance's address; IPv6 from instances is dropped.
//! - **Networks per VPC** (`forward`): a port jumps to its VPC's chain
//!   `net_<hash>` (its project's, for an instance made without one), which
//!   lets replies pass, sends what goes to a port of the same VPC through
//!   that port's inbound chain, drops what goes to any other instance or to
//!   any other address of the install's VPC pool, and then lets egress out
//!   (or drops it, when the project has egress turned off).
//! - **Security groups** (`in_<port>`): each port has an inbound chain made
//!   from its groups' rules: replies pass, then what a rule lets in (from a
//!   block, or from the ports of a group's members: sets `sg_<hash>`), and
//!   the rest is dropped. A source in the VPC pool that did not come from
//!   an instance's port is forged, and dropped first. Traffic to an instance from outside its host goes
//!   through it too. An instance made without groups gets what clouds'
//!   default group gives: SSH and ping from anywhere, everything from its
//!   project.
//! - **The host is closed** (`input`): from an instance, the host answers
//!   only replies, DNS on the gateway's address (the agent's forwarder) and
//!   ping of the gateway. The agent, the control plane and the host's SSH
//!   are out of reach.
//! - **Egress** (`postrouting`): what leaves for the outside is masqueraded
//!   behind the host. Some destinations no instance reaches, egress or not
//!   (`denied`: link-local, where clouds serve the host's metadata, and
//!   what the operator adds).
//! - **The host stays what it was**: a host that did not route before its
//!   agent turned IPv4 forwarding on forwards nothing but its instances'
//!   traffic.

use super::fail;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use tessera_agent_api::AgentError;
use tessera_core::network::{GroupRules, InboundRule, Protocol, Source};
use tokio::io::AsyncWriteExt;

/// An agent's table.
#[derive(Clone, Debug)]
pub(super) struct Firewall {
    table: String,
    gateway: Ipv4Addr,
    /// Where instances may never go, egress or not (the link-local range of
    /// cloud metadata services, by default, and what the operator adds).
    denied: Vec<String>,
}

/// Destinations no instance reaches by default: link-local, where clouds
/// serve their metadata (and the host's cloud credentials).
pub(super) const DENIED_BY_DEFAULT: &[&str] = &["169.254.0.0/16"];

/// An instance's place in the table.
pub(super) struct Port<'a> {
    /// Its veth's host end.
    pub ifname: &'a str,
    pub ip: Ipv4Addr,
    /// Its network's chain suffix ([`net_of`]).
    pub net: &'a str,
    /// Whether it may reach beyond the host and its project.
    pub egress: bool,
    /// Its VPC's block, where nothing but the VPC's ports is reached.
    pub vpc_cidr: Option<&'a str>,
    /// The install's VPC pool: no port reaches it but through the host's
    /// routes to its own ports, and nothing from it reaches the instance
    /// but from a port (a forged source on the host's other links).
    pub pool: Option<&'a str>,
    /// Its security groups; empty: the defaults of an instance without.
    pub groups: &'a [GroupRules],
}

/// The chain suffix of a network (a VPC, or a project for instances made
/// without one): 16 hex digits of a hash of its id (64 bits: two networks
/// of one host never share a chain).
pub(super) fn net_of(network_id: &str) -> String {
    long_hash(&[b"net", network_id.as_bytes()])
}

/// The set of a security group's member ports: `sg_` and 16 hex digits.
fn group_set(group_id: &str) -> String {
    format!("sg_{}", long_hash(&[b"sg", group_id.as_bytes()]))
}

/// 16 hex digits of a SHA-256 of `parts`.
fn long_hash(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    hex::encode(h.finalize())[..16].to_string()
}

/// One rule as nft writes it, in chain `chain`; `None` for a rule it
/// cannot write (a block that is not one: the control plane checks them).
fn rule_line(t: &str, chain: &str, rule: &InboundRule) -> Option<String> {
    let source = match &rule.source {
        Source::Cidr(block) if block == "0.0.0.0/0" => String::new(),
        Source::Cidr(block) => format!("ip saddr {} ", parse_cidr(block).ok()?),
        Source::Group(id) => format!("iifname @{} ", group_set(id)),
    };
    let ports = |proto: &str| match rule.ports {
        Some(p) if p.from == p.to => format!("{proto} dport {} ", p.from),
        Some(p) => format!("{proto} dport {}-{} ", p.from, p.to),
        None => format!("meta l4proto {proto} "),
    };
    let what = match rule.protocol {
        Protocol::Tcp => ports("tcp"),
        Protocol::Udp => ports("udp"),
        Protocol::Icmp => "meta l4proto icmp ".to_string(),
        Protocol::All => String::new(),
    };
    Some(format!("add rule inet {t} {chain} {source}{what}accept\n"))
}

impl Firewall {
    /// The blocks no instance reaches (the defaults and the operator's),
    /// as networks (`a.b.c.d/n`).
    pub fn denied(&self) -> &[String] {
        &self.denied
    }

    pub fn new(table: String, gateway: Ipv4Addr, denied: Vec<String>) -> Firewall {
        Firewall {
            table,
            gateway,
            denied,
        }
    }

    /// An instance's packet to the host that conntrack calls related (an
    /// ICMP error) is taken only when it is about a flow to that instance
    /// (the host's SSH forward to it, say): one quoting another of the
    /// host's flows (the DNS forwarder's to its resolvers) is made up.
    ///
    /// Makes the table and its base chains (replacing their rules, keeping
    /// the ports the sets hold): run at every agent start. `route_only_instances`:
    /// the host forwards nothing but its instances' traffic (it did not
    /// route before the agent turned forwarding on).
    pub async fn ensure(&self, route_only_instances: bool) -> Result<(), AgentError> {
        nft(&self.ensure_script(route_only_instances)).await
    }

    fn ensure_script(&self, route_only_instances: bool) -> String {
        let t = &self.table;
        let gw = self.gateway;
        let denied = match self.denied.is_empty() {
            true => String::new(),
            false => format!(" elements = {{ {} }}", self.denied.join(", ")),
        };
        let others = match route_only_instances {
            // Every agent's instance ports are `tv<tag>`: other agents'
            // instances on this machine are routed too.
            true => {
                format!("add rule inet {t} forward iifname != \"tv*\" oifname != \"tv*\" drop\n")
            }
            false => String::new(),
        };
        format!(
            r#"add table inet {t}
add set inet {t} ports {{ type ifname; }}
add set inet {t} port_addr {{ type ifname . ipv4_addr; }}
add map inet {t} port_net {{ type ifname : verdict; }}
add set inet {t} denied {{ type ipv4_addr; flags interval; }}
flush set inet {t} denied
add set inet {t} denied {{ type ipv4_addr; flags interval;{denied} }}
add chain inet {t} prerouting {{ type filter hook prerouting priority raw; policy accept; }}
add chain inet {t} input {{ type filter hook input priority filter; policy accept; }}
add map inet {t} port_in {{ type ifname : verdict; }}
add chain inet {t} forward {{ type filter hook forward priority filter; policy accept; }}
add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain inet {t} prerouting
flush chain inet {t} input
flush chain inet {t} forward
flush chain inet {t} postrouting
add chain inet {t} inbound
delete chain inet {t} inbound
add rule inet {t} prerouting iifname @ports meta nfproto ipv6 drop
add rule inet {t} prerouting iifname @ports iifname . ip saddr != @port_addr drop
add rule inet {t} input iifname != @ports accept
add rule inet {t} input ct state established accept
add rule inet {t} input ct state related iifname . ct original ip daddr @port_addr accept
add rule inet {t} input ip daddr {gw} udp dport 53 accept
add rule inet {t} input ip daddr {gw} tcp dport 53 accept
add rule inet {t} input ip daddr {gw} icmp type echo-request accept
add rule inet {t} input drop
add rule inet {t} forward iifname @ports ip daddr @denied drop
add rule inet {t} forward iifname @ports iifname vmap @port_net
add rule inet {t} forward iifname @ports drop
add rule inet {t} forward oifname @ports oifname vmap @port_in
add rule inet {t} forward oifname @ports drop
add rule inet {t} postrouting iifname @ports oifname != @ports masquerade
{others}"#
        )
    }

    /// Puts an instance's port in the table, or leaves it there, and makes
    /// or refreshes its network's chain (its egress) and its inbound chain
    /// (its groups' rules): one transaction, so the port is never out of
    /// the table or half filtered meanwhile.
    pub async fn add(&self, port: &Port<'_>) -> Result<(), AgentError> {
        nft(&self.add_script(port)).await
    }

    /// The network's chain takes what is `related` (ICMP errors) only
    /// after the drop of other networks' ports: an error a tenant makes up,
    /// quoting a neighbour's flow, is related to that flow and was let into
    /// another VPC.
    fn add_script(&self, port: &Port<'_>) -> String {
        let t = &self.table;
        let (ifname, ip, net) = (port.ifname, port.ip, port.net);
        let egress = if port.egress { "accept" } else { "drop" };
        let blocks: Vec<String> = [port.vpc_cidr, port.pool]
            .into_iter()
            .flatten()
            .filter_map(|c| parse_cidr(c).ok())
            .collect();
        let block: String = blocks
            .iter()
            .map(|b| format!("add rule inet {t} net_{net} ip daddr {b} drop\n"))
            .collect();
        let mut script = format!(
            r#"add set inet {t} net_{net}_ports {{ type ifname; }}
add chain inet {t} net_{net}
flush chain inet {t} net_{net}
add rule inet {t} net_{net} ct state established accept
add rule inet {t} net_{net} oifname @net_{net}_ports oifname vmap @port_in
add rule inet {t} net_{net} oifname @ports drop
{block}add rule inet {t} net_{net} ct state related accept
add rule inet {t} net_{net} {egress}
"#
        );
        let chain = format!("in_{ifname}");
        for group in port.groups {
            let set = group_set(&group.id);
            let _ = writeln!(script, "add set inet {t} {set} {{ type ifname; }}");
            let _ = writeln!(script, "add element inet {t} {set} {{ {ifname} }}");
            for rule in &group.rules {
                if let Source::Group(id) = &rule.source {
                    let set = group_set(id);
                    let _ = writeln!(script, "add set inet {t} {set} {{ type ifname; }}");
                }
            }
        }
        let _ = write!(
            script,
            "add chain inet {t} {chain}\nflush chain inet {t} {chain}\n"
        );
        // From the VPCs' addresses, only instances' ports send: the same
        // source on another link is forged.
        for block in &blocks {
            let _ = writeln!(
                script,
                "add rule inet {t} {chain} iifname != @ports ip saddr {block} drop"
            );
        }
        let _ = writeln!(
            script,
            "add rule inet {t} {chain} ct state established,related accept"
        );
        if port.groups.is_empty() {
            let _ = write!(
                script,
                r#"add rule inet {t} {chain} tcp dport 22 accept
add rule inet {t} {chain} icmp type echo-request accept
add rule inet {t} {chain} iifname @net_{net}_ports accept
"#
            );
        }
        for rule in port.groups.iter().flat_map(|g| &g.rules) {
            if let Some(line) = rule_line(t, &chain, rule) {
                script.push_str(&line);
            }
        }
        let _ = write!(
            script,
            r#"add rule inet {t} {chain} drop
add element inet {t} net_{net}_ports {{ {ifname} }}
add element inet {t} ports {{ {ifname} }}
add element inet {t} port_addr {{ {ifname} . {ip} }}
add element inet {t} port_in {{ {ifname} : jump {chain} }}
add element inet {t} port_net {{ {ifname} : jump net_{net} }}
"#
        );
        script
    }

    /// Takes an instance's port out of the table (and out of its groups'
    /// sets); not there is fine.
    pub async fn remove(
        &self,
        ifname: &str,
        ip: Ipv4Addr,
        net: &str,
        groups: &[GroupRules],
    ) -> Result<(), AgentError> {
        let t = &self.table;
        // Adding first makes each deletion sure to succeed, in one
        // transaction; a port of another network under this name would
        // make the map's add fail, so that one is deleted on its own.
        let _ = nft(&format!(
            "delete element inet {t} port_net {{ {ifname} }}\n"
        ))
        .await;
        let _ = nft(&format!("delete element inet {t} port_in {{ {ifname} }}\n")).await;
        let mut script = format!(
            r#"add set inet {t} net_{net}_ports {{ type ifname; }}
add element inet {t} net_{net}_ports {{ {ifname} }}
delete element inet {t} net_{net}_ports {{ {ifname} }}
add element inet {t} ports {{ {ifname} }}
delete element inet {t} ports {{ {ifname} }}
add element inet {t} port_addr {{ {ifname} . {ip} }}
delete element inet {t} port_addr {{ {ifname} . {ip} }}
add chain inet {t} in_{ifname}
delete chain inet {t} in_{ifname}
"#
        );
        for group in groups {
            let set = group_set(&group.id);
            let _ = write!(
                script,
                "add set inet {t} {set} {{ type ifname; }}\n\
                 add element inet {t} {set} {{ {ifname} }}\n\
                 delete element inet {t} {set} {{ {ifname} }}\n"
            );
        }
        nft(&script).await
    }
}

/// Checks an IPv4 CIDR (`169.254.0.0/16`, or an address alone); answers it
/// as nft writes it.
pub(super) fn parse_cidr(text: &str) -> Result<String, AgentError> {
    let bad = || {
        fail(format!(
            "bad CIDR {text:?}: expected an IPv4 network like 10.0.0.0/8"
        ))
    };
    let (addr, prefix) = match text.trim().split_once('/') {
        Some((addr, prefix)) => (addr, prefix.parse::<u8>().map_err(|_| bad())?),
        None => (text.trim(), 32),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ok(format!(
        "{}/{prefix}",
        Ipv4Addr::from(u32::from(addr) & mask)
    ))
}

/// Applies an nft script as one transaction.
async fn nft(script: &str) -> Result<(), AgentError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("running `nft` (install the package nftables): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| fail(format!("writing to `nft`: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("running `nft`: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!(
            "`nft -f -` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Turns on IPv4 forwarding on the host (instances are routed through it).
/// Answers whether the host routes only for its instances: it did not
/// forward before an agent turned it on, which `marker` (in the agent's
/// state directory) remembers across restarts.
pub(super) async fn enable_forwarding(marker: &std::path::Path) -> Result<bool, AgentError> {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if tokio::fs::read_to_string(path)
        .await
        .is_ok_and(|v| v.trim() == "1")
    {
        return Ok(tokio::fs::metadata(marker).await.is_ok());
    }
    tokio::fs::write(
        marker,
        b"the host did not forward IPv4 before this agent turned it on\n",
    )
    .await
    .map_err(|e| fail(format!("writing {}: {e}", marker.display())))?;
    tokio::fs::write(path, b"1")
        .await
        .map_err(|e| fail(format!("turning on IPv4 forwarding ({path}): {e}")))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host takes an instance's related packets only about flows to
    /// that instance.
    #[test]
    fn the_host_takes_related_packets_only_about_the_instances_own_flows() {
        let firewall = Firewall::new("tessera-t".into(), Ipv4Addr::new(10, 250, 0, 1), Vec::new());
        let script = firewall.ensure_script(false);
        let input: Vec<&str> = script
            .lines()
            .filter_map(|l| l.strip_prefix("add rule inet tessera-t input "))
            .collect();
        assert!(input.contains(&"ct state established accept"), "{input:#?}");
        assert!(
            input.contains(&"ct state related iifname . ct original ip daddr @port_addr accept"),
            "{input:#?}"
        );
        assert!(
            input.iter().all(|r| !r.contains("established,related")),
            "{input:#?}"
        );
    }

    /// A network's chain lets nothing `related` through to another
    /// network's ports: it accepts related packets (ICMP errors) only after
    /// dropping whatever goes to ports not of its network.
    #[test]
    fn related_packets_never_cross_to_another_network() {
        let firewall = Firewall::new("tessera-t".into(), Ipv4Addr::new(10, 250, 0, 1), Vec::new());
        let script = firewall.add_script(&Port {
            ifname: "tvabc",
            ip: Ipv4Addr::new(10, 254, 0, 2),
            net: "n1",
            egress: true,
            vpc_cidr: Some("10.254.0.0/20"),
            pool: Some("10.254.0.0/16"),
            groups: &[],
        });
        let chain: Vec<&str> = script
            .lines()
            .filter(|l| l.starts_with("add rule inet tessera-t net_n1 "))
            .map(|l| l.trim_start_matches("add rule inet tessera-t net_n1 "))
            .collect();
        let at = |rule: &str| {
            chain
                .iter()
                .position(|r| *r == rule)
                .unwrap_or_else(|| panic!("no rule {rule:?} in {chain:#?}"))
        };
        assert!(at("ct state established accept") < at("oifname @ports drop"));
        assert!(at("oifname @ports drop") < at("ct state related accept"));
        assert!(at("ip daddr 10.254.0.0/16 drop") < at("ct state related accept"));
        assert!(
            chain.iter().all(|r| !r.contains("established,related")),
            "{chain:#?}"
        );
    }

    #[test]
    fn cidrs_are_checked_and_written_as_networks() {
        assert_eq!(
            parse_cidr("169.254.0.0/16").expect("fine"),
            "169.254.0.0/16"
        );
        assert_eq!(parse_cidr(" 10.1.2.3/8 ").expect("fine"), "10.0.0.0/8");
        assert_eq!(parse_cidr("192.0.2.7").expect("fine"), "192.0.2.7/32");
        assert_eq!(parse_cidr("0.0.0.0/0").expect("fine"), "0.0.0.0/0");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "fe80::/10",
            "10.0.0.0/x",
            "1.2.3.4; flush ruleset",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad:?}");
        }
    }
}
