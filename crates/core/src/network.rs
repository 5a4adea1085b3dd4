//! Private networks: the address blocks of VPCs and subnets, and the
//! inbound rules of security groups, as the control plane checks them and
//! a host enforces them.
//!
//! Addresses are unique across an install: hosts route each instance's
//! address to it (no overlay), so two VPCs never share a block, whichever
//! projects own them.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// The narrowest and widest blocks a VPC or subnet may have.
pub const WIDEST_PREFIX: u8 = 16;
pub const NARROWEST_PREFIX: u8 = 28;
/// The most rules a security group holds.
pub const MAX_RULES: usize = 64;

/// Why a block or rule is refused, said to the user as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Parses an IPv4 block written as `10.0.0.0/16`: its address must be the
/// block's first (no host bits set), so that what is stored is what was
/// meant.
pub fn parse_block(text: &str) -> Result<Ipv4Net, Invalid> {
    let net: Ipv4Net = text.trim().parse().map_err(|_| {
        Invalid(format!(
            "{text:?} is not an IPv4 CIDR block like 10.0.0.0/16"
        ))
    })?;
    if net.network() != net.addr() {
        return Err(Invalid(format!(
            "{text:?} has host bits set; did you mean {}?",
            net.trunc()
        )));
    }
    Ok(net)
}

/// Checks a VPC's or subnet's size: between /16 and /28.
pub fn check_block_size(net: &Ipv4Net) -> Result<(), Invalid> {
    if !(WIDEST_PREFIX..=NARROWEST_PREFIX).contains(&net.prefix_len()) {
        return Err(Invalid(format!(
            "{net}: a block must be between /{WIDEST_PREFIX} and /{NARROWEST_PREFIX}"
        )));
    }
    Ok(())
}

/// Whether a block touches addresses no instance may have: this network
/// (0/8), loopback, link-local (where clouds serve metadata), multicast
/// and the reserved range above it.
pub fn is_reserved(net: &Ipv4Net) -> bool {
    ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"]
        .iter()
        .filter_map(|p| p.parse::<Ipv4Net>().ok())
        .any(|r| overlap(&r, net))
}

/// Whether two blocks share an address.
pub fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The addresses instances may have in a subnet: all but its first two
/// (the network, and the gateway's by convention) and its last (broadcast).
pub fn instance_addresses(subnet: &Ipv4Net) -> impl Iterator<Item = Ipv4Addr> + use<> {
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    (first..=last).map(Ipv4Addr::from)
}

/// The last of [`instance_addresses`], without walking them: `None` when
/// the subnet has none.
pub fn last_instance_address(subnet: &Ipv4Net) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.broadcast()).saturating_sub(1);
    (first <= last).then(|| Ipv4Addr::from(last))
}

/// How many addresses instances may have in a subnet.
pub fn instance_capacity(subnet: &Ipv4Net) -> u64 {
    (1u64 << (32 - subnet.prefix_len())).saturating_sub(3)
}

/// The first block of `prefix` in `pool` that overlaps none of `taken`.
pub fn first_free_block(pool: &Ipv4Net, prefix: u8, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pool.subnets(prefix)
        .ok()?
        .find(|candidate| taken.iter().all(|t| !overlap(candidate, t)))
}

/// What a rule lets in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    /// Every protocol and port.
    All,
}

impl Protocol {
    pub fn parse(text: &str) -> Result<Protocol, Invalid> {
        match text.trim().to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "icmp" => Ok(Protocol::Icmp),
            "all" | "-1" | "any" => Ok(Protocol::All),
            _ => Err(Invalid(format!(
                "protocol {text:?} is not one of tcp, udp, icmp or all"
            ))),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::All => "all",
        }
    }

    /// Whether the protocol has ports.
    pub fn has_ports(&self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

/// Ports a rule lets in, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ports {
    pub from: u16,
    pub to: u16,
}

impl Ports {
    /// `22` or `8000-8100`.
    pub fn parse(text: &str) -> Result<Ports, Invalid> {
        let bad = || {
            Invalid(format!(
                "port range {text:?} is not a port (22) or a range (8000-8100) of ports 1 to 65535"
            ))
        };
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(bad)
        };
        let (from, to) = match text.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(text)?, port(text)?),
        };
        if from > to {
            return Err(bad());
        }
        Ok(Ports { from, to })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.from..=self.to).contains(&port)
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from == self.to {
            true => write!(f, "{}", self.from),
            false => write!(f, "{}-{}", self.from, self.to),
        }
    }
}

/// Where a rule lets traffic in from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Any address of an IPv4 block (`0.0.0.0/0`: anywhere).
    Cidr(String),
    /// Instances that are members of a security group (its id).
    Group(String),
}

/// One inbound rule of a security group.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InboundRule {
    pub protocol: Protocol,
    /// For TCP and UDP; `None`: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Ports>,
    pub source: Source,
}

impl InboundRule {
    /// Whether a TCP connection from `from` to `port` is let in by this
    /// rule, for a source that is no instance (a group never matches it).
    pub fn admits_tcp(&self, from: Ipv4Addr, port: u16) -> bool {
        let protocol = matches!(self.protocol, Protocol::Tcp | Protocol::All);
        let ports = self.ports.is_none_or(|p| p.contains(port));
        let source = match &self.source {
            Source::Cidr(block) => block.parse::<Ipv4Net>().is_ok_and(|b| b.contains(&from)),
            Source::Group(_) => false,
        };
        protocol && ports && source
    }
}

/// A security group as a host enforces it: its id and its rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRules {
    pub id: String,
    pub rules: Vec<InboundRule>,
}

/// The rules of a project's default security group, as clouds make it:
/// SSH and ping from anywhere, everything from its own members.
pub fn default_rules(own_id: &str) -> Vec<InboundRule> {
    vec![
        InboundRule {
            protocol: Protocol::Tcp,
            ports: Some(Ports { from: 22, to: 22 }),
            source: Source::Cidr("0.0.0.0/0".into()),
        },
        InboundRule {
            protocol: Protocol::Icmp,
            ports: None,
            source: Source::Cidr("0.0.0.0/0".into()),
        },
        InboundRule {
            protocol: Protocol::All,
            ports: None,
            source: Source::Group(own_id.to_string()),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_checked() {
        let net = parse_block("10.128.0.0/16").expect("fine");
        assert!(check_block_size(&net).is_ok());
        assert!(parse_block("10.128.0.1/16").is_err(), "host bits");
        assert!(parse_block("10.0.0.0").is_err());
        assert!(parse_block("fd00::/8").is_err());
        for bad in ["10.0.0.0/8", "10.0.0.0/29"] {
            let net = parse_block(bad).expect("parses");
            assert!(check_block_size(&net).is_err(), "{bad}");
        }
        for reserved in [
            "127.0.0.0/16",
            "169.254.0.0/16",
            "0.0.0.0/0",
            "239.0.0.0/16",
        ] {
            assert!(
                is_reserved(&parse_block(reserved).expect("parses")),
                "{reserved}"
            );
        }
        assert!(!is_reserved(&parse_block("192.0.2.0/24").expect("parses")));
        let (a, b) = (
            parse_block("10.1.0.0/16").expect("a"),
            parse_block("10.1.4.0/24").expect("b"),
        );
        assert!(overlap(&a, &b) && overlap(&b, &a));
        assert!(!overlap(&b, &parse_block("10.1.5.0/24").expect("c")));
    }

    #[test]
    fn addresses_skip_network_gateway_and_broadcast() {
        let net = parse_block("10.0.1.0/28").expect("fine");
        let all: Vec<_> = instance_addresses(&net).collect();
        assert_eq!(last_instance_address(&net), all.last().copied());
        let tiny: Ipv4Net = "10.0.1.0/31".parse().expect("a block");
        assert_eq!(instance_addresses(&tiny).count(), 0);
        assert_eq!(last_instance_address(&tiny), None);
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 0, 1, 2)));
        assert_eq!(all.last(), Some(&Ipv4Addr::new(10, 0, 1, 14)));
        assert_eq!(all.len() as u64, instance_capacity(&net));
    }

    #[test]
    fn free_blocks_avoid_taken_ones() {
        let pool = parse_block("10.128.0.0/9").expect("pool");
        let taken = [
            parse_block("10.128.0.0/16").expect("t"),
            parse_block("10.129.3.0/24").expect("t"),
        ];
        assert_eq!(
            first_free_block(&pool, 16, &taken).map(|n| n.to_string()),
            Some("10.130.0.0/16".into())
        );
        assert!(first_free_block(&pool, 8, &[]).is_none());
    }

    #[test]
    fn ports_and_protocols_parse() {
        assert_eq!(Ports::parse("22").expect("p"), Ports { from: 22, to: 22 });
        assert_eq!(
            Ports::parse("8000-8100").expect("p").to_string(),
            "8000-8100"
        );
        for bad in ["0", "80-70", "x", "1-65536", ""] {
            assert!(Ports::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Protocol::parse("TCP").expect("p"), Protocol::Tcp);
        assert!(Protocol::parse("sctp").is_err());
    }

    #[test]
    fn tcp_admission_follows_cidr_rules_only() {
        let rules = default_rules("sg-1");
        let ssh = |ip: [u8; 4], port| rules.iter().any(|r| r.admits_tcp(Ipv4Addr::from(ip), port));
        assert!(ssh([203, 0, 113, 9], 22));
        assert!(!ssh([203, 0, 113, 9], 80));
        let narrow = InboundRule {
            protocol: Protocol::Tcp,
            ports: Some(Ports { from: 22, to: 22 }),
            source: Source::Cidr("192.0.2.0/24".into()),
        };
        assert!(narrow.admits_tcp(Ipv4Addr::new(192, 0, 2, 7), 22));
        assert!(!narrow.admits_tcp(Ipv4Addr::new(192, 0, 3, 7), 22));
    }
}
