//! Request rate limits, Verda's way, for every face that has them: fixed
//! windows per project (all its authenticated requests), per project and
//! endpoint (method and route), and per client (one credential), with the
//! IETF `RateLimit-Policy` and `RateLimit` headers and `Retry-After` on
//! 429. The endpoints that hand out credentials (login, refresh, the OAuth
//! token endpoint) count per client address and per named client instead.
//!
//! Counters live in this process: with several control-plane replicas
//! behind a load balancer, a project gets up to the limit at each replica.

use axum::http::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tessera_app::RateLimits;

/// Counters kept before old windows are swept.
const SWEEP_AT: usize = 100_000;

pub struct RateLimiter {
    window: Duration,
    windows: Mutex<HashMap<String, Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    used: u32,
}

/// One limit a request counts against: its name in the headers, the key
/// it counts under, and how many requests a window allows.
#[derive(Clone, Debug)]
pub struct Limit {
    pub name: &'static str,
    pub key: String,
    pub quota: u32,
}

/// Where a request stands against one limit.
#[derive(Clone, Debug)]
pub struct Standing {
    pub name: &'static str,
    pub quota: u32,
    pub remaining: u32,
    /// Seconds until the window resets.
    pub reset: u64,
}

/// What a request was told.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub standings: Vec<Standing>,
    pub window_secs: u64,
    /// The limit that was exceeded, if one was.
    pub exceeded: Option<&'static str>,
    /// Seconds until the exceeded limit's window resets.
    pub retry_after: Option<u64>,
}

impl Verdict {
    /// The quota of the exceeded limit.
    pub fn exceeded_quota(&self) -> u32 {
        self.standings
            .iter()
            .find(|s| Some(s.name) == self.exceeded)
            .map_or(0, |s| s.quota)
    }

    /// The 429 message of an exceeded limit.
    pub fn message(&self) -> String {
        format!(
            "Too many requests: the {} limit is {} requests per {} seconds; retry in {} s",
            self.exceeded.unwrap_or("request"),
            self.exceeded_quota(),
            self.window_secs,
            self.retry_after.unwrap_or(1),
        )
    }

    /// The app error of an exceeded limit (`None` when none was).
    pub fn error(&self) -> Option<tessera_app::Error> {
        self.retry_after
            .map(|retry_after| tessera_app::Error::RateLimited {
                message: self.message(),
                retry_after,
            })
    }

    /// `RateLimit-Policy` and `RateLimit`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let w = self.window_secs;
        let policy: Vec<String> = self
            .standings
            .iter()
            .map(|s| format!("\"{}\";q={};w={w}", s.name, s.quota))
            .collect();
        let state: Vec<String> = self
            .standings
            .iter()
            .map(|s| format!("\"{}\";r={};t={}", s.name, s.remaining, s.reset))
            .collect();
        for (name, value) in [
            ("ratelimit-policy", policy.join(", ")),
            ("ratelimit", state.join(", ")),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
}

impl RateLimiter {
    pub fn new(window: Duration) -> Self {
        RateLimiter {
            window: window.max(Duration::from_secs(1)),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// A request of `project`, made with credential `client`, to
    /// `endpoint` (`METHOD /route`), under `limits`.
    pub fn check_request(
        &self,
        limits: &RateLimits,
        project: &str,
        client: &str,
        endpoint: &str,
    ) -> Verdict {
        self.check(&[
            Limit {
                name: "project",
                key: format!("p\0{project}"),
                quota: limits.project,
            },
            Limit {
                name: "endpoint",
                key: format!("e\0{project}\0{endpoint}"),
                quota: limits.endpoint,
            },
            Limit {
                name: "client",
                key: format!("c\0{client}"),
                quota: limits.client,
            },
        ])
    }

    /// Counts a request against every limit in `limits`, unless it is over
    /// one of them (then it counts against none).
    pub fn check(&self, limits: &[Limit]) -> Verdict {
        let now = Instant::now();
        let window = self.window;
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > SWEEP_AT {
            windows.retain(|_, w| now.duration_since(w.started) < window);
        }
        let reset = |w: &Window| -> u64 {
            let left = window.saturating_sub(now.duration_since(w.started));
            left.as_secs() + u64::from(left.subsec_nanos() > 0)
        };
        let mut current = Vec::with_capacity(limits.len());
        for limit in limits {
            let w = windows.entry(limit.key.clone()).or_insert(Window {
                started: now,
                used: 0,
            });
            if now.duration_since(w.started) >= window {
                *w = Window {
                    started: now,
                    used: 0,
                };
            }
            current.push(*w);
        }
        let exceeded = limits
            .iter()
            .zip(&current)
            .position(|(limit, w)| w.used >= limit.quota);
        if exceeded.is_none() {
            for (limit, w) in limits.iter().zip(current.iter_mut()) {
                if let Some(stored) = windows.get_mut(&limit.key) {
                    stored.used = stored.used.saturating_add(1);
                }
                w.used = w.used.saturating_add(1);
            }
        }
        Verdict {
            standings: limits
                .iter()
                .zip(&current)
                .map(|(limit, w)| Standing {
                    name: limit.name,
                    quota: limit.quota,
                    remaining: limit.quota.saturating_sub(w.used),
                    reset: reset(w),
                })
                .collect(),
            window_secs: window.as_secs().max(1),
            exceeded: exceeded.map(|n| limits[n].name),
            retry_after: exceeded.map(|n| reset(&current[n]).max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(project: u32, endpoint: u32) -> RateLimits {
        RateLimits {
            project,
            endpoint,
            client: 1_000,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_endpoint_limit_counts_one_method_and_path() {
        let limiter = RateLimiter::new(Duration::from_secs(60));
        let limits = limits(100, 2);
        assert!(
            limiter
                .check_request(&limits, "p", "c", "GET /a")
                .exceeded
                .is_none()
        );
        let second = limiter.check_request(&limits, "p", "c", "GET /a");
        assert_eq!(second.standings[1].remaining, 0);
        let third = limiter.check_request(&limits, "p", "c", "GET /a");
        assert_eq!(third.exceeded, Some("endpoint"));
        assert!(third.retry_after.is_some_and(|s| (1..=60).contains(&s)));
        assert!(
            limiter
                .check_request(&limits, "p", "c", "POST /a")
                .exceeded
                .is_none()
        );
        assert!(
            limiter
                .check_request(&limits, "q", "d", "GET /a")
                .exceeded
                .is_none()
        );
    }

    #[test]
    fn the_project_limit_counts_every_path_and_client() {
        let limiter = RateLimiter::new(Duration::from_secs(60));
        let limits = limits(3, 10);
        for (client, path) in [("a", "GET /a"), ("b", "GET /b"), ("c", "GET /c")] {
            assert!(
                limiter
                    .check_request(&limits, "p", client, path)
                    .exceeded
                    .is_none()
            );
        }
        let over = limiter.check_request(&limits, "p", "d", "GET /d");
        assert_eq!(over.exceeded, Some("project"));
        assert_eq!(over.standings[0].remaining, 0);
        let mut headers = HeaderMap::new();
        over.write_headers(&mut headers);
        assert_eq!(
            headers["ratelimit-policy"],
            "\"project\";q=3;w=60, \"endpoint\";q=10;w=60, \"client\";q=1000;w=60"
        );
        assert!(
            headers["ratelimit"]
                .to_str()
                .expect("text")
                .starts_with("\"project\";r=0;t=")
        );
    }

    #[test]
    fn the_client_limit_counts_one_credential_across_projects() {
        let limiter = RateLimiter::new(Duration::from_secs(60));
        let limits = RateLimits {
            client: 2,
            ..limits(100, 100)
        };
        assert!(
            limiter
                .check_request(&limits, "p", "tok", "GET /a")
                .exceeded
                .is_none()
        );
        assert!(
            limiter
                .check_request(&limits, "q", "tok", "GET /b")
                .exceeded
                .is_none()
        );
        assert_eq!(
            limiter
                .check_request(&limits, "r", "tok", "GET /c")
                .exceeded,
            Some("client")
        );
    }

    #[test]
    fn a_window_resets() {
        let limiter = RateLimiter::new(Duration::from_millis(30));
        let one = [Limit {
            name: "address",
            key: "a\u{0}192.0.2.1".into(),
            quota: 1,
        }];
        // Windows are at least a second long.
        assert!(limiter.check(&one).exceeded.is_none());
        assert!(limiter.check(&one).exceeded.is_some());
        let short = RateLimiter {
            window: Duration::from_millis(30),
            windows: Mutex::default(),
        };
        assert!(short.check(&one).exceeded.is_none());
        assert!(short.check(&one).exceeded.is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(short.check(&one).exceeded.is_none());
    }
}
