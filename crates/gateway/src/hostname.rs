//! Which container a request is for, read from its host name.
//!
//! Design decision: only `<id>.<domain>` is ours, compared without regard to
//! case, with a port suffix and a final dot ignored. A host under another
//! name is misdirected (421); a first label under our domain that cannot be
//! a container id (8 lowercase hex characters) is answered as an unknown
//! container without asking the route table.

use std::fmt;

/// The domain under which containers have hostnames (`compute.localhost`
/// gives `abc12345.compute.localhost`), lowercased and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain(String);

/// A domain that is not a DNS name.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a DNS domain name (labels of letters, digits and '-', dot-separated)")]
pub struct InvalidDomain(pub String);

impl Domain {
    /// Checks and lowercases a domain name (a final dot is dropped).
    pub fn parse(text: &str) -> Result<Domain, InvalidDomain> {
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(InvalidDomain(text.to_string()));
        }
        Ok(Domain(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The container a host (as in a `Host` header: `name[:port]`) names.
    pub(crate) fn container_of(&self, host: &str) -> Result<String, HostMismatch> {
        let name = strip_port(host).ok_or(HostMismatch::Foreign)?;
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let (label, rest) = name.split_once('.').ok_or(HostMismatch::Foreign)?;
        if label.is_empty() || rest != self.0 {
            return Err(HostMismatch::Foreign);
        }
        if is_container_id(label) {
            Ok(label.to_string())
        } else {
            Err(HostMismatch::NotAContainer(label.to_string()))
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a host does not name one of our containers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostMismatch {
    /// Not `<label>.<domain>`: another site, an IP address, the bare domain.
    Foreign,
    /// Under our domain, but the label cannot be a container id.
    NotAContainer(String),
}

/// Container ids are 8 lowercase hexadecimal characters.
pub(crate) fn is_container_id(label: &str) -> bool {
    label.len() == 8
        && label
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `name` from `name` or `name:port`; `None` for an IPv6 literal or a port
/// that is not a number.
fn strip_port(host: &str) -> Option<&str> {
    if host.starts_with('[') {
        return None;
    }
    match host.split_once(':') {
        None => Some(host),
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Some(name)
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Domain {
        Domain::parse("Compute.Localhost").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_container_hostname_names_its_container_in_any_case_and_with_a_port() {
        let d = domain();
        assert_eq!(
            d.container_of("abc12345.compute.localhost"),
            Ok("abc12345".into())
        );
        assert_eq!(
            d.container_of("ABC12345.Compute.LOCALHOST:20080"),
            Ok("abc12345".into())
        );
        assert_eq!(
            d.container_of("abc12345.compute.localhost."),
            Ok("abc12345".into())
        );
    }

    #[test]
    fn other_hosts_are_foreign_or_not_containers() {
        let d = domain();
        for host in [
            "abc12345.example.com",
            "compute.localhost",
            "a.abc12345.compute.localhost",
            ".compute.localhost",
            "127.0.0.1:20080",
            "[::1]:20080",
            "abc12345.compute.localhost:http",
        ] {
            assert_eq!(d.container_of(host), Err(HostMismatch::Foreign), "{host}");
        }
        assert_eq!(
            d.container_of("www.compute.localhost"),
            Err(HostMismatch::NotAContainer("www".into()))
        );
        assert_eq!(
            d.container_of("abc1234g.compute.localhost"),
            Err(HostMismatch::NotAContainer("abc1234g".into()))
        );
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(domain().as_str(), "compute.localhost");
        for bad in ["", ".", "a..b", "-a.b", "a b", "a_b.c"] {
            assert!(Domain::parse(bad).is_err(), "{bad:?}");
        }
    }
}
