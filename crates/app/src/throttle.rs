//! Limits on guessing passwords, and on what checking them costs.
//!
//! A password check runs Argon2, which takes about 19 MiB and tens of
//! milliseconds of one core. Unbounded, a burst of wrong-password logins
//! takes the server's memory (and the allocator keeps it). So:
//!
//! - at most [`LoginLimits::concurrent_checks`] checks run at once, each in
//!   an Argon2 work area taken from a pool and given back, so a burst costs
//!   no more memory than that many checks and leaves nothing behind; a
//!   login that cannot get a turn within a few seconds, or finds too many
//!   waiting, is told to retry (429);
//! - each client address may try [`LoginLimits::per_address_per_minute`]
//!   logins a minute (a token bucket), so one client cannot fill the queue;
//! - failures back off, doubling from one second up to
//!   [`LoginLimits::max_backoff`]: per user and address after
//!   [`LoginLimits::free_failures`] failures in a row, and per user from
//!   all addresses after [`LoginLimits::user_free_failures`], so guessing
//!   one account from many addresses is slowed too; an address the user
//!   logged in from in the last 30 days is spared that per-user backoff
//!   (its own failures still count), so somebody else's guessing does not
//!   lock its owner out.
//!
//! An attempt over a limit is refused before any password is checked. The
//! counters live in this process: behind a load balancer, each replica
//! keeps its own.

use crate::error::{Error, Result};
use argon2::password_hash::{Output, PasswordHash};
use argon2::{Argon2, Block, Params};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Logins allowed to wait for a password check at once; more are refused.
const MAX_WAITING: usize = 256;
/// How long a login waits for its turn to check a password.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Failure counters forgotten after this long without a failure.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Counters kept before idle ones are swept.
const SWEEP_AT: usize = 50_000;
/// The largest Argon2 work area a stored hash may ask for, in KiB blocks.
const MAX_BLOCKS: u32 = 1 << 20;

/// How logins are limited. See the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginLimits {
    pub per_address_per_minute: u32,
    pub free_failures: u32,
    pub user_free_failures: u32,
    pub max_backoff: Duration,
    pub concurrent_checks: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_address_per_minute: 30,
            free_failures: 5,
            user_free_failures: 50,
            max_backoff: Duration::from_secs(15 * 60),
            concurrent_checks: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 8),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct Counters {
    failures: HashMap<String, Failures>,
    buckets: HashMap<IpAddr, Bucket>,
    /// When a user last logged in from an address (by user-and-address
    /// key): such an address is spared the user's backoff from all
    /// addresses, so guessers elsewhere do not lock its owner out.
    trusted: HashMap<String, Instant>,
}

/// How long an address a user logged in from is spared the backoff that
/// others' failures put on the user.
const TRUSTED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most such addresses kept.
const MAX_TRUSTED: usize = 100_000;

/// The login limits of this process, and its password-check slots.
pub struct Throttle {
    limits: LoginLimits,
    counters: Mutex<Counters>,
    checks: Semaphore,
    waiting: AtomicUsize,
    /// Argon2 work areas, reused: at most one per check slot.
    memory: Mutex<Vec<Vec<Block>>>,
}

/// A login under way, which reports how it went.
pub struct LoginAttempt<'a> {
    throttle: &'a Throttle,
    keys: [String; 2],
}

fn too_many(message: String, retry: Duration) -> Error {
    let retry_after = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
    Error::RateLimited {
        message,
        retry_after: retry_after.max(1),
    }
}

/// A username as a counter key: bounded, whatever was sent.
fn user_key(username: &str) -> String {
    username.chars().take(128).collect()
}

impl Throttle {
    pub fn new(limits: LoginLimits) -> Throttle {
        let slots = limits.concurrent_checks.max(1);
        Throttle {
            limits,
            counters: Mutex::default(),
            checks: Semaphore::new(slots),
            waiting: AtomicUsize::new(0),
            memory: Mutex::default(),
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a login of `username` from `client`, or refuses it (429)
    /// when the address is over its rate or the user is backing off.
    pub fn begin_login(&self, username: &str, client: Option<IpAddr>) -> Result<LoginAttempt<'_>> {
        let now = Instant::now();
        let user = user_key(username);
        let address = client.map_or_else(|| "-".to_string(), |ip| ip.to_string());
        let keys = [format!("u\0{user}"), format!("a\0{user}\0{address}")];
        let mut counters = self.counters();
        if counters.failures.len() + counters.buckets.len() > SWEEP_AT {
            counters.failures.retain(|_, f| {
                f.blocked_until.is_some_and(|t| t > now)
                    || now.duration_since(f.last) < FORGET_AFTER
            });
            counters
                .buckets
                .retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
            counters
                .trusted
                .retain(|_, at| now.duration_since(*at) < TRUSTED_FOR);
        }
        if let Some(ip) = client {
            let rate = f64::from(self.limits.per_address_per_minute.max(1)) / 60.0;
            let burst = f64::from(self.limits.per_address_per_minute.max(1));
            let bucket = counters.buckets.entry(ip).or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            bucket.tokens =
                (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
            bucket.at = now;
            if bucket.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
                return Err(too_many(
                    format!(
                        "too many logins from {ip}: at most {} a minute",
                        self.limits.per_address_per_minute
                    ),
                    wait,
                ));
            }
            bucket.tokens -= 1.0;
        }
        let trusted = counters
            .trusted
            .get(&keys[1])
            .is_some_and(|at| now.duration_since(*at) < TRUSTED_FOR);
        // The user's backoff from all addresses spares one it logged in
        // from; that address's own failures still count against it.
        for key in keys.iter().skip(usize::from(trusted)) {
            if let Some(until) = counters.failures.get(key).and_then(|f| f.blocked_until)
                && until > now
            {
                return Err(too_many(
                    "too many failed logins for this user; wait before trying again".into(),
                    until - now,
                ));
            }
        }
        Ok(LoginAttempt {
            throttle: self,
            keys,
        })
    }

    /// Checks `password` against a stored Argon2 hash, waiting for a free
    /// check slot (429 when none frees up soon).
    pub async fn verify_password(&self, password: &str, hash: &str) -> Result<bool> {
        let password = password.as_bytes().to_vec();
        let hash = hash.to_string();
        self.with_check_slot(move |memory| verify(&password, &hash, memory))
            .await
    }

    /// Hashes a new password in a check slot.
    pub async fn hash_password(&self, password: &str) -> Result<String> {
        let password = password.to_string();
        self.with_check_slot(move |_| crate::identity::hash_password(&password))
            .await?
    }

    async fn with_check_slot<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T> {
        let busy = || {
            too_many(
                "too many password checks are under way; retry in a moment".into(),
                Duration::from_secs(1),
            )
        };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(busy());
        }
        let permit = tokio::time::timeout(MAX_WAIT, self.checks.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let _permit = match permit {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => return Err(busy()),
        };
        let mut memory = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        let (result, memory) = tokio::task::spawn_blocking(move || {
            let result = work(&mut memory);
            (result, memory)
        })
        .await
        .map_err(|e| Error::Unavailable(format!("the password check failed: {e}")))?;
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(memory);
        Ok(result)
    }

    /// Password checks that may run at once.
    pub fn concurrent_checks(&self) -> usize {
        self.limits.concurrent_checks.max(1)
    }
}

impl LoginAttempt<'_> {
    /// The password was wrong (or the user unknown): count it, and back off
    /// once past the free failures.
    pub fn failed(self) {
        let now = Instant::now();
        let limits = &self.throttle.limits;
        let mut counters = self.throttle.counters();
        for (key, free) in self
            .keys
            .iter()
            .zip([limits.user_free_failures, limits.free_failures])
        {
            let entry = counters.failures.entry(key.clone()).or_insert(Failures {
                count: 0,
                last: now,
                blocked_until: None,
            });
            if now.duration_since(entry.last) >= FORGET_AFTER {
                entry.count = 0;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
            if entry.count > free {
                let doublings = (entry.count - free - 1).min(20);
                let backoff = Duration::from_secs(1u64 << doublings).min(limits.max_backoff);
                entry.blocked_until = Some(now + backoff);
            }
        }
    }

    /// The password was right: this user's failures from this address are
    /// forgotten.
    pub fn succeeded(self) {
        let mut counters = self.throttle.counters();
        counters.failures.remove(&self.keys[1]);
        let now = Instant::now();
        if counters.trusted.len() >= MAX_TRUSTED {
            counters
                .trusted
                .retain(|_, at| now.duration_since(*at) < TRUSTED_FOR);
            if counters.trusted.len() >= MAX_TRUSTED {
                // Bounded memory first: the exemption is lost, not safety.
                counters.trusted.clear();
            }
        }
        counters.trusted.insert(self.keys[1].clone(), now);
    }
}

/// Argon2 verification in `memory`, a work area reused between checks. A
/// hash that cannot be read never matches.
fn verify(password: &[u8], phc: &str, memory: &mut Vec<Block>) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = match hash.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    if params.m_cost() > MAX_BLOCKS {
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut out = vec![0u8; expected.len()];
    let hashed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password,
        salt,
        &mut out,
        &mut memory[..blocks],
    );
    // Output compares in constant time.
    hashed.is_ok() && Output::new(&out).is_ok_and(|out| out == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            per_address_per_minute: 3,
            free_failures: 2,
            user_free_failures: 4,
            max_backoff: Duration::from_secs(60),
            concurrent_checks: 2,
        }
    }

    #[test]
    fn the_pooled_check_agrees_with_argon2() {
        let hash = crate::identity::hash_password("correct horse").expect("hash");
        let mut memory = Vec::new();
        assert!(verify(b"correct horse", &hash, &mut memory));
        assert!(!verify(b"correct horsf", &hash, &mut memory));
        assert!(!verify(b"correct horse", "not a hash", &mut memory));
        assert!(
            !memory.is_empty(),
            "the work area is kept for the next check"
        );
    }

    #[test]
    fn an_address_gets_its_rate() {
        let throttle = Throttle::new(limits());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..3 {
            assert!(throttle.begin_login("alice", Some(ip)).is_ok());
        }
        let Err(Error::RateLimited { retry_after, .. }) = throttle.begin_login("bob", Some(ip))
        else {
            panic!("the fourth login of the minute is refused");
        };
        assert!((1..=20).contains(&retry_after), "{retry_after}");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert!(throttle.begin_login("bob", Some(other)).is_ok());
    }

    #[test]
    fn failures_back_off_per_user_and_address_and_a_success_forgets_them() {
        let throttle = Throttle::new(LoginLimits {
            per_address_per_minute: 1000,
            ..limits()
        });
        let guesser: IpAddr = "198.51.100.7".parse().expect("ip");
        let owner: IpAddr = "198.51.100.8".parse().expect("ip");
        for _ in 0..2 {
            throttle
                .begin_login("alice", Some(guesser))
                .expect("free failures")
                .failed();
        }
        throttle
            .begin_login("alice", Some(guesser))
            .expect("third try")
            .failed();
        assert!(matches!(
            throttle.begin_login("alice", Some(guesser)),
            Err(Error::RateLimited { .. })
        ));
        // Alice herself, elsewhere, is not locked out by the guesser.
        throttle
            .begin_login("alice", Some(owner))
            .expect("the owner logs in")
            .succeeded();
        // Guessing from many addresses is slowed for the user as a whole.
        for n in 0..2 {
            let ip: IpAddr = format!("203.0.113.{n}").parse().expect("ip");
            throttle
                .begin_login("alice", Some(ip))
                .expect("try")
                .failed();
        }
        let fresh: IpAddr = "203.0.113.99".parse().expect("ip");
        assert!(matches!(
            throttle.begin_login("alice", Some(fresh)),
            Err(Error::RateLimited { .. })
        ));
        // ... but not from where alice logged in before: her guessers do
        // not lock her out.
        throttle
            .begin_login("alice", Some(owner))
            .expect("the owner, from where she logged in, is spared")
            .succeeded();
    }
}
