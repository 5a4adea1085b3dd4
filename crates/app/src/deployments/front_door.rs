//! The front door's queues: a request for a deployment waits here for a
//! healthy replica with room (`concurrent_requests_per_replica`), first
//! come first served, until its `queue_message_ttl_seconds` runs out; the
//! face then forwards it to the replica it was given ([`Slot`]).
//!
//! Each control-plane process keeps its own queues and reports their
//! length to the store (the scaler adds every process's reports). A
//! request that finds no replica wakes the scaler at once, so a deployment
//! at zero starts a replica without waiting for the scaler's next pass.
//! Replicas get requests only once their health check answers 200 (or,
//! without one, once their port accepts connections), and none once the
//! scaler lets them go (draining): the requests they have are answered,
//! and each process reports which replicas it has requests in flight to,
//! so that the scaler deletes a draining replica only once none has.

use crate::App;
use crate::error::{Error, Result};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How often replicas are discovered and probed, and load reported.
pub const TICK: Duration = Duration::from_millis(100);
/// How often a healthy replica's health is asked again.
const RECHECK: Duration = Duration::from_secs(2);
/// A queue unused this long is dropped from memory.
const IDLE: Duration = Duration::from_secs(600);
/// How long one health check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The most requests one deployment's queue holds in this process; past
/// it, new ones are refused (429) until some are taken.
pub const MAX_WAITING: usize = 10_000;

/// Every deployment's queue in this process.
#[derive(Default)]
pub struct FrontDoor {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// Sends the async requests this process takes over.
    pub(crate) runner: std::sync::OnceLock<super::requests::AsyncRunner>,
}

struct Queue {
    deployment_id: String,
    state: Mutex<QueueState>,
    changed: Notify,
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<u64>,
    next_ticket: u64,
    /// Bumped by a purge: waiters of an older one give up.
    purges: u64,
    /// The deployment's purge count this queue has acted on.
    purges_seen: i64,
    backends: Vec<Backend>,
    concurrency: u32,
    last_used: Option<Instant>,
    /// What was last reported (the load, the busy replicas), and when.
    reported: Option<((u32, u32), Vec<String>, Instant)>,
}

/// Where a replica's health is asked: a port and a path.
pub(crate) type HealthPath = (u16, String);

#[derive(Clone, Debug)]
struct Backend {
    replica: String,
    addr: SocketAddr,
    health: Option<HealthPath>,
    healthy: bool,
    checked: Option<Instant>,
    in_flight: u32,
    /// Let go by the scaler: no new requests.
    draining: bool,
}

/// A replica's room for one request, given back when dropped.
pub struct Slot {
    queue: Arc<Queue>,
    replica: String,
    /// Where to send the request.
    pub addr: SocketAddr,
    /// How long the request waited in the queue.
    pub waited: Duration,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        if let Some(b) = state
            .backends
            .iter_mut()
            .find(|b| b.replica == self.replica)
        {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
        drop(state);
        self.queue.changed.notify_waiters();
    }
}

/// A place in a queue, left when dropped (an answered or abandoned
/// request).
struct Ticket<'a> {
    queue: &'a Queue,
    number: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.waiting.retain(|t| *t != self.number);
        drop(state);
        self.queue.changed.notify_waiters();
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The replicas with requests in flight from here, sorted.
    fn busy(state: &QueueState) -> Vec<String> {
        let mut busy: Vec<String> = state
            .backends
            .iter()
            .filter(|b| b.in_flight > 0)
            .map(|b| b.replica.clone())
            .collect();
        busy.sort();
        busy
    }

    fn load(state: &QueueState) -> (u32, u32) {
        (
            state.waiting.len() as u32,
            state.backends.iter().map(|b| b.in_flight).sum(),
        )
    }
}

impl FrontDoor {
    fn queue(&self, deployment_id: &str) -> Arc<Queue> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .entry(deployment_id.to_string())
            .or_insert_with(|| {
                Arc::new(Queue {
                    deployment_id: deployment_id.to_string(),
                    state: Mutex::new(QueueState::default()),
                    changed: Notify::new(),
                })
            })
            .clone()
    }

    /// Drops every request waiting for the deployment here, for its purge
    /// number `purge` (once: a purge already seen changes nothing).
    pub fn purge(&self, deployment_id: &str, purge: i64) {
        let queue = self.queue(deployment_id);
        let mut state = queue.lock();
        if purge <= state.purges_seen {
            return;
        }
        state.purges_seen = purge;
        state.purges += 1;
        state.waiting.clear();
        drop(state);
        queue.changed.notify_waiters();
    }

    /// What this process's queues hold: `(deployment, waiting, in flight)`.
    pub fn loads(&self) -> Vec<(String, u32, u32)> {
        let queues: Vec<Arc<Queue>> = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        queues
            .iter()
            .map(|q| {
                let (waiting, in_flight) = Queue::load(&q.lock());
                (q.deployment_id.clone(), waiting, in_flight)
            })
            .collect()
    }

    /// The replicas of a deployment this process has requests in flight
    /// to.
    pub fn busy(&self, deployment_id: &str) -> Vec<String> {
        let queue = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(deployment_id)
            .cloned();
        queue.map_or_else(Vec::new, |q| Queue::busy(&q.lock()))
    }

    fn active(&self) -> Vec<Arc<Queue>> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.retain(|_, q| {
            let state = q.lock();
            let (waiting, in_flight) = Queue::load(&state);
            waiting + in_flight > 0 || state.last_used.is_some_and(|t| t.elapsed() < IDLE)
        });
        queues.values().cloned().collect()
    }
}

impl App {
    /// Waits in the deployment's queue for a healthy replica with room;
    /// answers where to send the request.
    pub async fn deployment_slot(&self, project_id: &str, name: &str) -> Result<Slot> {
        let deployment = self.project_deployment(project_id, name).await?;
        if deployment.deleting {
            return Err(Error::NotFound(format!("deployment {name} not found")));
        }
        if deployment.paused {
            return Err(Error::Unavailable(format!(
                "deployment {name} is paused; resume it to serve requests"
            )));
        }
        let queue = self.front_door.queue(&deployment.id);
        let ttl = Duration::from_secs(u64::from(deployment.scaling.queue_message_ttl_s));
        let started = Instant::now();
        let (number, purges) = {
            let mut state = queue.lock();
            state.concurrency = deployment.scaling.concurrent_requests_per_replica.max(1);
            state.last_used = Some(started);
            // Purges before this request are not its.
            state.purges_seen = state.purges_seen.max(deployment.purges);
            if state.waiting.len() >= MAX_WAITING {
                return Err(Error::RateLimited {
                    message: format!(
                        "deployment {name} already has {MAX_WAITING} requests waiting; retry later"
                    ),
                    retry_after: 1,
                });
            }
            let number = state.next_ticket;
            state.next_ticket += 1;
            state.waiting.push_back(number);
            (number, state.purges)
        };
        let ticket = Ticket {
            queue: &queue,
            number,
        };
        let mut woke_scaler = false;
        loop {
            let notified = queue.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = queue.lock();
                if state.purges != purges {
                    return Err(Error::Conflict(format!(
                        "the request was dropped: deployment {name}'s queue was purged"
                    )));
                }
                let concurrency = state.concurrency;
                let free: u32 = state
                    .backends
                    .iter()
                    .filter(|b| b.healthy && !b.draining)
                    .map(|b| concurrency.saturating_sub(b.in_flight))
                    .sum();
                let place = state.waiting.iter().position(|t| *t == number).unwrap_or(0);
                if (place as u32) < free {
                    // The least busy healthy replica.
                    let backend = state
                        .backends
                        .iter_mut()
                        .filter(|b| b.healthy && !b.draining && b.in_flight < concurrency)
                        .min_by_key(|b| b.in_flight);
                    if let Some(backend) = backend {
                        backend.in_flight += 1;
                        let slot = Slot {
                            queue: queue.clone(),
                            replica: backend.replica.clone(),
                            addr: backend.addr,
                            waited: started.elapsed(),
                        };
                        drop(state);
                        drop(ticket);
                        return Ok(slot);
                    }
                }
                if free == 0 && !woke_scaler {
                    woke_scaler = true;
                    self.poke_front_door();
                    self.poke_scaler();
                }
            }
            let left = ttl.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(Error::HostTimeout(format!(
                    "no replica of deployment {name} took the request within its queue_message_ttl_seconds ({} s)",
                    ttl.as_secs()
                )));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), notified).await;
        }
    }

    /// One pass of the front door's upkeep: for each queue in use here,
    /// learn its replicas, ask their health, and report the load.
    pub(crate) async fn tend_front_door(&self) -> Result<()> {
        let queues = self.front_door.active();
        for queue in queues {
            let Some(record) = self.store.deployment_by_id(&queue.deployment_id).await? else {
                continue;
            };
            let deployment = super::Deployment::try_from(record)?;
            // Another process's purge.
            self.front_door.purge(&deployment.id, deployment.purges);
            let health = deployment
                .spec
                .containers
                .first()
                .map(|c| (c.exposed_port, c.healthcheck.clone()));
            let replicas = self.replicas_of(&deployment).await?;
            let wanted: Vec<(String, SocketAddr, Option<HealthPath>, bool)> = replicas
                .iter()
                .filter(|r| {
                    r.status == super::ReplicaStatus::Running
                        || (r.draining && r.status == super::ReplicaStatus::Terminating)
                })
                .filter_map(|r| {
                    let (port, check) = health.clone()?;
                    let addr = SocketAddr::new(r.address?.into(), port);
                    let probe = check.enabled.then(|| (check.port, check.path.clone()));
                    Some((r.id.clone(), addr, probe, r.draining))
                })
                .collect();
            let to_probe = {
                let mut state = queue.lock();
                state.concurrency = deployment.scaling.concurrent_requests_per_replica.max(1);
                // Gone replicas leave; new ones join unhealthy until asked.
                state.backends.retain(|b| {
                    wanted
                        .iter()
                        .any(|(id, addr, _, _)| *id == b.replica && *addr == b.addr)
                });
                for (id, addr, probe, draining) in &wanted {
                    match state.backends.iter_mut().find(|b| &b.replica == id) {
                        Some(b) => b.draining = *draining,
                        // A replica let go before this process used it is
                        // not taken up.
                        None if *draining => {}
                        None => state.backends.push(Backend {
                            replica: id.clone(),
                            addr: *addr,
                            health: probe.clone(),
                            healthy: false,
                            checked: None,
                            in_flight: 0,
                            draining: false,
                        }),
                    }
                }
                state
                    .backends
                    .iter()
                    .filter(|b| !b.healthy || b.checked.is_none_or(|t| t.elapsed() >= RECHECK))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let results =
                futures::future::join_all(to_probe.iter().map(|b| probe(b.addr, b.health.clone())))
                    .await;
            let load = {
                let mut state = queue.lock();
                for (backend, healthy) in to_probe.iter().zip(results) {
                    if let Some(b) = state
                        .backends
                        .iter_mut()
                        .find(|b| b.replica == backend.replica)
                    {
                        b.healthy = healthy;
                        b.checked = Some(Instant::now());
                    }
                }
                let load = Queue::load(&state);
                let busy = Queue::busy(&state);
                let due = match &state.reported {
                    Some((last, was_busy, at)) => {
                        *last != load || *was_busy != busy || at.elapsed() >= Duration::from_secs(1)
                    }
                    None => true,
                };
                if due {
                    state.reported = Some((load, busy.clone(), Instant::now()));
                }
                due.then_some((load, busy))
            };
            queue.changed.notify_waiters();
            if let Some(((waiting, in_flight), busy)) = load {
                self.store
                    .report_deployment_load(
                        &queue.deployment_id,
                        self.store.owner(),
                        (i64::from(waiting), i64::from(in_flight)),
                        &busy,
                        // When it was measured, not when the pass began.
                        tessera_store::now_ms(),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

/// Whether a replica answers: its health check's 200, or a connection to
/// its port when it has none.
pub(crate) async fn probe(addr: SocketAddr, health: Option<HealthPath>) -> bool {
    let Some((port, path)) = health else {
        return tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .is_ok_and(|c| c.is_ok());
    };
    let url = format!("http://{}:{port}{path}", addr.ip());
    // Never to where a replica redirects: only the replica is asked.
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build();
    match client {
        Ok(client) => client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == reqwest::StatusCode::OK),
        Err(_) => false,
    }
}
