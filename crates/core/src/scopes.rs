//! The containers API's token scopes: grants of actions on dotted paths
//! (`compute.<uid>.containers.<id>`), where a grant on a path covers every
//! path under it (`compute.<uid>` covers `compute.<uid>.containers.abc12345`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// What a grant allows on its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ComputeAction {
    Read,
    Create,
    Update,
    Delete,
    /// Starting a container (`update` covers it too).
    Start,
    /// Stopping a container (`update` covers it too).
    Stop,
}

impl ComputeAction {
    pub const ALL: [ComputeAction; 6] = [
        ComputeAction::Read,
        ComputeAction::Create,
        ComputeAction::Update,
        ComputeAction::Delete,
        ComputeAction::Start,
        ComputeAction::Stop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ComputeAction::Read => "read",
            ComputeAction::Create => "create",
            ComputeAction::Update => "update",
            ComputeAction::Delete => "delete",
            ComputeAction::Start => "start",
            ComputeAction::Stop => "stop",
        }
    }

    /// Whether a grant of `self` allows `wanted`.
    fn allows(self, wanted: ComputeAction) -> bool {
        self == wanted
            || (self == ComputeAction::Update
                && matches!(wanted, ComputeAction::Start | ComputeAction::Stop))
    }
}

impl fmt::Display for ComputeAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ComputeAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ComputeAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown action {:?}: read, create, update, delete, start or stop",
                    s
                )
            })
    }
}

/// A token's grants: paths under `compute`, each with its actions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComputeScopes(BTreeMap<String, BTreeSet<ComputeAction>>);

impl ComputeScopes {
    /// Reads grants as a request gives them (`{"compute.u1.containers":
    /// ["read"]}`): every path under `compute`, of non-empty dot-separated
    /// parts, and known actions.
    pub fn parse(grants: &BTreeMap<String, Vec<String>>) -> Result<ComputeScopes, String> {
        if grants.len() > 64 {
            return Err("at most 64 scope paths".into());
        }
        let mut scopes = BTreeMap::new();
        for (path, actions) in grants {
            let parts: Vec<&str> = path.split('.').collect();
            let ok = path.len() <= 200
                && parts.first() == Some(&"compute")
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                });
            if !ok {
                return Err(format!(
                    "scope path {:?} must be `compute` or `compute.<uid>...`: dot-separated letters, digits, '-' and '_'",
                    path
                ));
            }
            let actions = actions
                .iter()
                .map(|a| a.parse())
                .collect::<Result<BTreeSet<_>, _>>()?;
            if actions.is_empty() {
                return Err(format!("scope path {path} grants no action"));
            }
            scopes.insert(path.clone(), actions);
        }
        Ok(ComputeScopes(scopes))
    }

    /// Whether a grant covers `action` on `path`.
    pub fn allows(&self, path: &str, action: ComputeAction) -> bool {
        self.0.iter().any(|(granted, actions)| {
            let under = path == granted
                || (path.starts_with(granted.as_str())
                    && path.as_bytes().get(granted.len()) == Some(&b'.'));
            under && actions.iter().any(|a| a.allows(action))
        })
    }

    /// Whether every grant of `other` is one of these.
    pub fn covers(&self, other: &ComputeScopes) -> bool {
        other
            .0
            .iter()
            .all(|(path, actions)| actions.iter().all(|a| self.allows(path, *a)))
    }

    /// The paths granted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// As a request gives them.
    pub fn to_map(&self) -> BTreeMap<String, Vec<String>> {
        self.0
            .iter()
            .map(|(path, actions)| {
                (
                    path.clone(),
                    actions.iter().map(|a| a.as_str().to_string()).collect(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(grants: &[(&str, &[&str])]) -> ComputeScopes {
        let map = grants
            .iter()
            .map(|(p, a)| (p.to_string(), a.iter().map(|s| s.to_string()).collect()))
            .collect();
        ComputeScopes::parse(&map).expect("scopes")
    }

    #[test]
    fn a_grant_covers_what_is_under_its_path() {
        let s = scopes(&[("compute.u1.containers", &["read", "update"])]);
        assert!(s.allows("compute.u1.containers", ComputeAction::Read));
        assert!(s.allows("compute.u1.containers.abc12345", ComputeAction::Read));
        assert!(s.allows("compute.u1.containers.abc12345", ComputeAction::Stop));
        assert!(!s.allows("compute.u1.containers.abc12345", ComputeAction::Delete));
        assert!(!s.allows("compute.u1", ComputeAction::Read));
        assert!(!s.allows("compute.u1.containersx", ComputeAction::Read));
        assert!(!s.allows("compute.u1.keys", ComputeAction::Read));
        let all = scopes(&[("compute.u1", &["read", "create", "update", "delete"])]);
        assert!(all.covers(&s));
        assert!(!s.covers(&all));
        let bad = |p: &str, a: &str| {
            ComputeScopes::parse(&[(p.to_string(), vec![a.to_string()])].into()).is_err()
        };
        assert!(bad("other.u1", "read"));
        assert!(bad("compute..x", "read"));
        assert!(bad("compute.u1", "explode"));
    }
}
