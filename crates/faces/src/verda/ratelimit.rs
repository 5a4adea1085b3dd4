//! Verda's rate limits: fixed windows per project (all its authenticated
//! requests) and per project, method and path, with the IETF
//! `RateLimit-Policy` and `RateLimit` headers and `Retry-After` on 429.
//!
//! Counters live in this process: with several control-plane replicas
//! behind a load balancer, a project gets up to the limit at each replica.

use axum::http::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_app::RateLimits;

/// Counters kept before old windows are swept.
const SWEEP_AT: usize = 100_000;

pub struct RateLimiter {
    limits: RateLimits,
    windows: Mutex<HashMap<String, Window>>,
}

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    used: u32,
}

/// What a request was told.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub project: (u32, u32, u64),
    pub endpoint: (u32, u32, u64),
    pub window_secs: u64,
    /// Which limit was exceeded, if one was.
    pub exceeded: Option<&'static str>,
    /// Seconds until the exceeded limit's window resets.
    pub retry_after: Option<u64>,
}

impl Verdict {
    pub fn exceeded_quota(&self) -> u32 {
        match self.exceeded {
            Some("endpoint") => self.endpoint.0,
            _ => self.project.0,
        }
    }

    /// `RateLimit-Policy` and `RateLimit`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let (pq, pr, pt) = self.project;
        let (eq, er, et) = self.endpoint;
        let w = self.window_secs;
        let policy = format!("\"project\";q={pq};w={w}, \"endpoint\";q={eq};w={w}");
        let state = format!("\"project\";r={pr};t={pt}, \"endpoint\";r={er};t={et}");
        for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a request of `project` to `endpoint` (`METHOD /path`) unless
    /// it is over a limit.
    pub fn check(&self, project: &str, endpoint: &str) -> Verdict {
        let now = Instant::now();
        let window = self.limits.window;
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > SWEEP_AT {
            windows.retain(|_, w| now.duration_since(w.started) < window);
        }
        let keys = [
            format!("p\u{0}{project}"),
            format!("e\u{0}{project}\u{0}{endpoint}"),
        ];
        let mut current = [Window {
            started: now,
            used: 0,
        }; 2];
        for (slot, key) in current.iter_mut().zip(&keys) {
            let w = windows.entry(key.clone()).or_insert(Window {
                started: now,
                used: 0,
            });
            if now.duration_since(w.started) >= window {
                *w = Window {
                    started: now,
                    used: 0,
                };
            }
            *slot = *w;
        }
        let quotas = [self.limits.project, self.limits.endpoint];
        let reset = |w: &Window| -> u64 {
            let left = window.saturating_sub(now.duration_since(w.started));
            left.as_secs() + u64::from(left.subsec_nanos() > 0)
        };
        let exceeded = match (current[0].used >= quotas[0], current[1].used >= quotas[1]) {
            (true, _) => Some("project"),
            (false, true) => Some("endpoint"),
            (false, false) => None,
        };
        if exceeded.is_none() {
            for key in &keys {
                if let Some(w) = windows.get_mut(key) {
                    w.used += 1;
                }
            }
            current[0].used += 1;
            current[1].used += 1;
        }
        let retry_after = exceeded.map(|which| {
            let w = match which {
                "project" => &current[0],
                _ => &current[1],
            };
            reset(w).max(1)
        });
        Verdict {
            project: (
                quotas[0],
                quotas[0].saturating_sub(current[0].used),
                reset(&current[0]),
            ),
            endpoint: (
                quotas[1],
                quotas[1].saturating_sub(current[1].used),
                reset(&current[1]),
            ),
            window_secs: window.as_secs().max(1),
            exceeded,
            retry_after,
        }
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(RateLimits {
            project: 500,
            endpoint: 60,
            window: Duration::from_secs(60),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(project: u32, endpoint: u32) -> RateLimiter {
        RateLimiter::new(RateLimits {
            project,
            endpoint,
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn the_endpoint_limit_counts_one_method_and_path() {
        let limiter = limiter(100, 2);
        assert!(limiter.check("p", "GET /a").exceeded.is_none());
        let second = limiter.check("p", "GET /a");
        assert_eq!(second.endpoint.1, 0);
        let third = limiter.check("p", "GET /a");
        assert_eq!(third.exceeded, Some("endpoint"));
        assert!(third.retry_after.is_some_and(|s| (1..=60).contains(&s)));
        assert!(limiter.check("p", "POST /a").exceeded.is_none());
        assert!(limiter.check("q", "GET /a").exceeded.is_none());
    }

    #[test]
    fn the_project_limit_counts_every_path() {
        let limiter = limiter(3, 10);
        for path in ["GET /a", "GET /b", "GET /c"] {
            assert!(limiter.check("p", path).exceeded.is_none());
        }
        let over = limiter.check("p", "GET /d");
        assert_eq!(over.exceeded, Some("project"));
        assert_eq!(over.project.1, 0);
        let mut headers = HeaderMap::new();
        over.write_headers(&mut headers);
        assert_eq!(
            headers["ratelimit-policy"],
            "\"project\";q=3;w=60, \"endpoint\";q=10;w=60"
        );
        assert!(
            headers["ratelimit"]
                .to_str()
                .expect("text")
                .starts_with("\"project\";r=0;t=")
        );
    }

    #[test]
    fn a_window_resets() {
        let limiter = RateLimiter::new(RateLimits {
            project: 1,
            endpoint: 1,
            window: Duration::from_millis(30),
        });
        assert!(limiter.check("p", "GET /a").exceeded.is_none());
        assert!(limiter.check("p", "GET /a").exceeded.is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(limiter.check("p", "GET /a").exceeded.is_none());
    }
}
