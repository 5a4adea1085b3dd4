//! Heartbeats at fleet scale: what a replica heard is written to the store
//! in batches, and a credential it verified is trusted a while.
//!
//! At 10,000 hosts an agent's heartbeat every 5 s is 2,000 a second, and
//! every agent request carries its credential. Written one by one, the
//! heartbeats alone were a transaction each (the host's time and its
//! whole inventory, unchanged); now a heartbeat whose inventory this
//! replica wrote lately only marks its host heard, and [`App::note_heartbeats`]
//! writes the hosts heard every second in one transaction. A new or
//! changed inventory is written at once, as is the first heartbeat this
//! replica hears from a host, and any after a minute (another replica may
//! have written an older one since).
//!
//! A verified credential is trusted [`CREDENTIAL_KEPT`] while every change
//! to agents reaches this replica ([`App::spawn_agent_listener`] turns
//! them into [`Liveness::forget_credential`] as soon as an agent registers
//! again or goes: PostgreSQL's notifications, or on SQLite the store's own
//! word while no other process writes the file), else a few seconds, as a
//! user's token is.

use crate::App;
use crate::error::Result;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an inventory this replica wrote is taken as the stored one.
const INVENTORY_KEPT: Duration = Duration::from_secs(60);
/// Credentials kept verified, at most (then forgotten all at once).
const CREDENTIALS_KEPT: usize = 100_000;
/// How long a verified credential is trusted while this replica hears of
/// every change to agents.
pub(crate) const CREDENTIAL_KEPT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct Liveness {
    /// Hosts heard from since the last batch.
    heard: Mutex<HashSet<String>>,
    /// Each host's inventory as this replica last wrote it (a digest), and
    /// when.
    written: Mutex<HashMap<String, (u64, Instant)>>,
    /// Agents' verified credentials.
    credentials: Mutex<Credentials>,
}

/// Verified credentials (their digest) with their host name and when, and
/// each host's, so that forgetting a host costs one lookup.
#[derive(Default)]
struct Credentials {
    by_hash: HashMap<String, (String, Instant)>,
    by_host: HashMap<String, String>,
    /// Counts forgettings; each host's last one. A credential read from
    /// the store before its host was forgotten is not kept: the change
    /// that made it stale may have been heard between the read and
    /// [`Liveness::verify`].
    epoch: u64,
    forgotten: HashMap<String, u64>,
    /// The last forgetting of every host at once.
    forgotten_all: u64,
}

/// Where the forgettings stood when a credential was read from the store.
#[derive(Clone, Copy)]
pub(crate) struct Epoch(u64);

fn digest(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

impl Liveness {
    /// Notes a heartbeat whose inventory this replica wrote lately:
    /// `true`, and the host goes in the next batch; `false`, and the
    /// caller writes it at once.
    pub(crate) fn heard(&self, hostname: &str, inventory: &str) -> bool {
        let known = self
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hostname)
            .is_some_and(|(kept, at)| *kept == digest(inventory) && at.elapsed() < INVENTORY_KEPT);
        if known {
            self.heard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(hostname.to_string());
        }
        known
    }

    /// Notes the inventory written for a host.
    pub(crate) fn written(&self, hostname: &str, inventory: &str) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hostname.to_string(), (digest(inventory), Instant::now()));
    }

    fn take_heard(&self) -> Vec<String> {
        std::mem::take(&mut *self.heard.lock().unwrap_or_else(PoisonError::into_inner))
            .into_iter()
            .collect()
    }

    fn put_back(&self, hostnames: Vec<String>) {
        self.heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(hostnames);
    }

    /// The host of a credential verified within `ttl`.
    pub(crate) fn verified(&self, credential_hash: &str, ttl: Duration) -> Option<String> {
        self.credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_hash
            .get(credential_hash)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(hostname, _)| hostname.clone())
    }

    /// Taken before reading a credential from the store, for
    /// [`Liveness::verify`].
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(
            self.credentials
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .epoch,
        )
    }

    /// Keeps a credential read from the store at `read`, unless its host
    /// was forgotten since.
    pub(crate) fn verify(&self, credential_hash: &str, hostname: &str, read: Epoch) {
        let mut credentials = self
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let forgotten = credentials
            .forgotten
            .get(hostname)
            .copied()
            .unwrap_or_default()
            .max(credentials.forgotten_all);
        if forgotten > read.0 {
            return;
        }
        if credentials.by_hash.len() >= CREDENTIALS_KEPT {
            // Each host's last forgetting goes too: count them all as
            // forgotten now.
            let epoch = credentials.epoch;
            *credentials = Credentials::default();
            credentials.epoch = epoch;
            credentials.forgotten_all = epoch;
        }
        let earlier = credentials
            .by_host
            .insert(hostname.to_string(), credential_hash.to_string());
        if let Some(earlier) = earlier.filter(|e| e != credential_hash) {
            credentials.by_hash.remove(&earlier);
        }
        credentials.by_hash.insert(
            credential_hash.to_string(),
            (hostname.to_string(), Instant::now()),
        );
    }

    /// Forgets every verified credential (changes may have been missed):
    /// none read before is kept either.
    pub(crate) fn forget_credentials(&self) {
        let mut credentials = self
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let epoch = credentials.epoch + 1;
        *credentials = Credentials::default();
        credentials.epoch = epoch;
        credentials.forgotten_all = epoch;
    }

    /// Forgets a host's verified credential: the next request with it
    /// reads the store.
    pub(crate) fn forget_credential(&self, hostname: &str) {
        let mut credentials = self
            .credentials
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(hash) = credentials.by_host.remove(hostname) {
            credentials.by_hash.remove(&hash);
        }
        credentials.epoch += 1;
        let epoch = credentials.epoch;
        credentials.forgotten.insert(hostname.to_string(), epoch);
    }

    /// Forgets a host's credentials and inventory (its agent registered
    /// again, or went with its host).
    pub(crate) fn forget(&self, hostname: &str) {
        self.forget_credential(hostname);
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(hostname);
    }
}

impl App {
    /// Writes the heartbeats heard since the last batch (every second, by
    /// the reconciler); a host whose agent had gone silent is reachable
    /// again.
    pub(crate) async fn note_heartbeats(&self) -> Result<()> {
        let heard = self.liveness.take_heard();
        if heard.is_empty() {
            return Ok(());
        }
        let back = match self.store.agents_seen(&heard, &tessera_store::now()).await {
            Ok(back) => back,
            Err(err) => {
                self.liveness.put_back(heard);
                return Err(err.into());
            }
        };
        for hostname in back {
            self.host_reachable_again(&hostname).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_batched_only_when_its_inventory_was_written_here() {
        let liveness = Liveness::default();
        // Never written by this replica: the caller writes it.
        assert!(!liveness.heard("node-a", "{\"cpus\":\"0-3\"}"));
        liveness.written("node-a", "{\"cpus\":\"0-3\"}");
        assert!(liveness.heard("node-a", "{\"cpus\":\"0-3\"}"));
        // A changed inventory is written at once.
        assert!(!liveness.heard("node-a", "{\"cpus\":\"0-7\"}"));
        // Another host's is its own.
        assert!(!liveness.heard("node-b", "{\"cpus\":\"0-3\"}"));
        assert_eq!(liveness.take_heard(), vec!["node-a".to_string()]);
        assert!(liveness.take_heard().is_empty());
        // A batch that could not be written is tried again.
        liveness.put_back(vec!["node-a".into()]);
        assert_eq!(liveness.take_heard(), vec!["node-a".to_string()]);
        // Forgotten (registered again): written at once again.
        liveness.forget("node-a");
        assert!(!liveness.heard("node-a", "{\"cpus\":\"0-3\"}"));
    }

    #[test]
    fn a_verified_credential_is_kept_a_while_and_forgotten_with_its_host() {
        let liveness = Liveness::default();
        let ttl = Duration::from_secs(5);
        assert_eq!(liveness.verified("hash-a", ttl), None);
        liveness.verify("hash-a", "node-a", liveness.epoch());
        liveness.verify("hash-b", "node-b", liveness.epoch());
        assert_eq!(liveness.verified("hash-a", ttl).as_deref(), Some("node-a"));
        assert_eq!(liveness.verified("hash-a", Duration::ZERO), None);
        liveness.forget("node-a");
        assert_eq!(liveness.verified("hash-a", ttl), None);
        assert_eq!(liveness.verified("hash-b", ttl).as_deref(), Some("node-b"));
        // A host's new credential replaces its old one.
        liveness.verify("hash-c", "node-b", liveness.epoch());
        assert_eq!(liveness.verified("hash-b", ttl), None);
        assert_eq!(liveness.verified("hash-c", ttl).as_deref(), Some("node-b"));
        liveness.forget_credentials();
        assert_eq!(liveness.verified("hash-c", ttl), None);
    }

    #[test]
    fn a_credential_read_before_its_host_was_forgotten_is_not_kept() {
        let liveness = Liveness::default();
        let ttl = Duration::from_secs(60);
        // Read from the store, then the host's agent is replaced (and
        // forgotten) before the read is kept: not kept.
        let read = liveness.epoch();
        liveness.forget_credential("node-a");
        liveness.verify("hash-old", "node-a", read);
        assert_eq!(liveness.verified("hash-old", ttl), None);
        // Another host's is.
        liveness.verify("hash-b", "node-b", read);
        assert_eq!(liveness.verified("hash-b", ttl).as_deref(), Some("node-b"));
        // After everything was forgotten, nothing read before is kept.
        let read = liveness.epoch();
        liveness.forget_credentials();
        liveness.verify("hash-c", "node-c", read);
        assert_eq!(liveness.verified("hash-c", ttl), None);
        // A read after the forgetting is.
        liveness.verify("hash-a", "node-a", liveness.epoch());
        assert_eq!(liveness.verified("hash-a", ttl).as_deref(), Some("node-a"));
    }
}
