//! Serverless containers' values: what a deployment's replica runs (its
//! [`Workload`]), how a deployment scales ([`Scaling`]), and the scaler's
//! decision ([`decide`]), which only decides: the app feeds it the load its
//! front doors measured and acts on the answer.

use serde::{Deserialize, Serialize};

/// What one replica of a deployment runs, as recorded with the replica:
/// secrets are named here, never held; the app opens them when it tells
/// the host what to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// The deployment it serves.
    pub deployment_id: String,
    /// The container's name within its deployment (`<image>-0`).
    pub container: String,
    /// The OCI image reference it runs.
    pub image: String,
    /// Replaces the image's entrypoint (and, as Docker does, its command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// The port requests are sent to.
    pub port: u16,
    /// Where its health is asked (`GET`); `None`: a replica is healthy
    /// once its port accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// The project's registry credentials to pull the image with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_credentials: Option<String>,
    /// A job's replica: it runs once, and is not started again when its
    /// process ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub run_once: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    /// The value, or the name of the project's secret holding it.
    pub value: String,
    pub secret: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mount {
    /// The replica's own disk at a path.
    Scratch { path: String },
    /// A file secret's files, read-only, one file per name.
    Secret { path: String, secret: String },
    /// A memory file system of this size.
    Memory { path: String, size_mb: u32 },
}

impl Mount {
    pub fn path(&self) -> &str {
        match self {
            Mount::Scratch { path } | Mount::Secret { path, .. } | Mount::Memory { path, .. } => {
                path
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub port: u16,
    pub path: String,
}

/// How a deployment scales.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// How long more replicas must be wanted before they are made (from
    /// zero they are made at once: a request is waiting).
    pub scale_up_delay_s: u32,
    /// How long fewer replicas must be enough before some go.
    pub scale_down_delay_s: u32,
    /// How long a request may wait in the queue before it is dropped.
    pub queue_message_ttl_s: u32,
    /// Requests one replica is sent at once.
    pub concurrent_requests_per_replica: u32,
    /// Requests (waiting and in flight) per replica above which more
    /// replicas are wanted.
    pub queue_load_threshold: f64,
    /// Average CPU use (percent) above which more replicas are wanted.
    pub cpu_utilization: Option<u32>,
    /// Average GPU use (percent) above which more replicas are wanted.
    pub gpu_utilization: Option<u32>,
    /// A job's longest run, after which its replica is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u32>,
}

/// The largest deployment.
pub const MAX_REPLICAS: u32 = 100;

/// How far the replicas' CPU use may be from its target before the CPU
/// trigger asks for a change (Kubernetes' default tolerance).
pub const CPU_TOLERANCE: f64 = 0.1;

/// Replicas' CPU work (in replicas at the threshold) below which the CPU
/// trigger asks for none.
pub const CPU_IDLE: f64 = 0.5;

impl Default for Scaling {
    /// Verda's defaults.
    fn default() -> Self {
        Scaling {
            min_replicas: 1,
            max_replicas: 1,
            scale_up_delay_s: 0,
            scale_down_delay_s: 300,
            queue_message_ttl_s: 300,
            concurrent_requests_per_replica: 1,
            queue_load_threshold: 1.0,
            cpu_utilization: None,
            gpu_utilization: None,
            deadline_s: None,
        }
    }
}

/// What a deployment's front doors and its replicas' hosts measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests waiting for a replica.
    pub waiting: u32,
    /// Requests a replica is answering.
    pub in_flight: u32,
    /// How busy the running replicas' CPUs were: how many were measured,
    /// and their average use in percent of what each is given.
    pub cpu: Option<CpuUse>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuUse {
    pub replicas: u32,
    pub average_percent: u32,
}

/// A change of size the scaler is waiting out: since when (ms) it has
/// wanted more (or fewer) replicas than it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub up: bool,
    pub since_ms: i64,
}

/// The scaler's answer: how many replicas to have, and what it waits out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub pending: Option<Pending>,
}

/// How many replicas the load asks for, within the deployment's bounds:
/// one per `threshold` requests waiting or in flight, or, with the CPU
/// trigger on, as many as bring the replicas' average CPU use to its
/// threshold (as Kubernetes' horizontal autoscaler reckons: measured
/// replicas times use over threshold, up and down), whichever is more.
/// Within [`CPU_TOLERANCE`] of the threshold the CPU keeps the replicas
/// there are; when their work is less than half a replica's worth, the
/// queue alone decides (down to zero).
pub fn wanted(scaling: &Scaling, load: Load) -> u32 {
    let demand = f64::from(load.waiting.saturating_add(load.in_flight));
    let threshold = scaling.queue_load_threshold.max(0.01);
    let by_load = (demand / threshold).ceil().min(f64::from(MAX_REPLICAS)) as u32;
    let by_cpu = match (scaling.cpu_utilization, load.cpu) {
        (Some(target), Some(cpu)) if target > 0 && cpu.replicas > 0 => {
            let ratio = f64::from(cpu.average_percent) / f64::from(target);
            let needed = f64::from(cpu.replicas) * ratio;
            if (ratio - 1.0).abs() <= CPU_TOLERANCE {
                cpu.replicas
            } else if needed < CPU_IDLE {
                // Next to no work: the queue decides (down to zero).
                0
            } else {
                needed.ceil().min(f64::from(MAX_REPLICAS)) as u32
            }
        }
        _ => 0,
    };
    by_load.max(by_cpu).clamp(
        scaling.min_replicas,
        scaling.max_replicas.max(scaling.min_replicas),
    )
}

/// How many replicas a deployment should have now, given how many it has,
/// its load, whether it is paused, and the change it was waiting out.
pub fn decide(
    scaling: &Scaling,
    current: u32,
    load: Load,
    paused: bool,
    pending: Option<Pending>,
    now_ms: i64,
) -> Decision {
    let settled = |replicas| Decision {
        replicas,
        pending: None,
    };
    if paused {
        return settled(0);
    }
    let want = wanted(scaling, load);
    // Out of bounds (bounds just changed), or cold with work waiting:
    // at once.
    if current < scaling.min_replicas
        || current > scaling.max_replicas.max(scaling.min_replicas)
        || (current == 0 && want > 0)
    {
        return settled(want);
    }
    if want == current {
        return settled(current);
    }
    let up = want > current;
    let delay_s = match up {
        true => scaling.scale_up_delay_s,
        false => scaling.scale_down_delay_s,
    };
    let since_ms = match pending {
        Some(p) if p.up == up => p.since_ms,
        _ => now_ms,
    };
    match now_ms - since_ms >= i64::from(delay_s) * 1000 {
        true => settled(want),
        false => Decision {
            replicas: current,
            pending: Some(Pending { up, since_ms }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(min: u32, max: u32) -> Scaling {
        Scaling {
            min_replicas: min,
            max_replicas: max,
            scale_up_delay_s: 10,
            scale_down_delay_s: 60,
            ..Scaling::default()
        }
    }

    fn load(waiting: u32, in_flight: u32) -> Load {
        Load {
            waiting,
            in_flight,
            cpu: None,
        }
    }

    #[test]
    fn with_its_trigger_on_busy_cpus_ask_for_more_replicas() {
        let cpu = |replicas, average_percent| Load {
            cpu: Some(CpuUse {
                replicas,
                average_percent,
            }),
            ..Load::default()
        };
        let off = scaling(1, 10);
        assert_eq!(wanted(&off, cpu(2, 100)), 1, "the trigger is off");
        let on = Scaling {
            cpu_utilization: Some(50),
            ..off.clone()
        };
        assert_eq!(
            wanted(&on, cpu(2, 100)),
            4,
            "2 replicas at twice the target"
        );
        assert_eq!(wanted(&on, cpu(4, 52)), 4, "near enough the target");
        assert_eq!(wanted(&on, cpu(4, 10)), 1, "down to what the work needs");
        assert_eq!(wanted(&on, cpu(4, 40)), 4, "4 x 40 / 50 = 3.2: still 4");
        assert_eq!(wanted(&on, cpu(4, 30)), 3, "4 x 30 / 50 = 2.4: 3");
        // No flapping: 2 replicas at 80% of a 50% target ask for 4, which
        // at 40% each (the same work) ask for 4 again.
        assert_eq!(wanted(&on, cpu(2, 80)), 4);
        assert_eq!(wanted(&on, cpu(4, 40)), 4);
        let to_zero = Scaling {
            min_replicas: 0,
            ..on.clone()
        };
        assert_eq!(wanted(&to_zero, cpu(2, 5)), 0, "down to zero");
        assert_eq!(wanted(&on, cpu(9, 100)), 10, "never past the most");
        // The queue may ask for more than the CPU does.
        let mut both = cpu(1, 60);
        both.waiting = 6;
        assert_eq!(wanted(&on, both), 6);
    }

    #[test]
    fn the_load_asks_for_one_replica_per_threshold_within_bounds() {
        let s = scaling(0, 5);
        assert_eq!(wanted(&s, load(0, 0)), 0);
        assert_eq!(wanted(&s, load(1, 0)), 1);
        assert_eq!(wanted(&s, load(2, 1)), 3);
        assert_eq!(wanted(&s, load(50, 0)), 5);
        let halves = Scaling {
            queue_load_threshold: 2.0,
            ..s.clone()
        };
        assert_eq!(wanted(&halves, load(3, 0)), 2);
        assert_eq!(wanted(&scaling(2, 5), load(0, 0)), 2);
    }

    #[test]
    fn from_zero_at_once_then_up_and_down_after_their_delays() {
        let s = scaling(0, 4);
        // A request at zero: a replica now.
        assert_eq!(
            decide(&s, 0, load(1, 0), false, None, 0),
            Decision {
                replicas: 1,
                pending: None
            }
        );
        // More wanted: waits out the up delay.
        let d = decide(&s, 1, load(3, 1), false, None, 1_000);
        assert_eq!(d.replicas, 1);
        let pending = d.pending.expect("pending");
        assert!(pending.up);
        let d = decide(&s, 1, load(3, 1), false, Some(pending), 10_999);
        assert_eq!(d.replicas, 1);
        let d = decide(&s, 1, load(3, 1), false, Some(pending), 11_000);
        assert_eq!(
            d,
            Decision {
                replicas: 4,
                pending: None
            }
        );
        // Idle: down after the down delay, to zero.
        let d = decide(&s, 4, load(0, 0), false, None, 20_000);
        assert_eq!(d.replicas, 4);
        let pending = d.pending.expect("pending");
        assert!(!pending.up);
        assert_eq!(
            decide(&s, 4, load(0, 0), false, Some(pending), 79_999).replicas,
            4
        );
        assert_eq!(
            decide(&s, 4, load(0, 0), false, Some(pending), 80_000).replicas,
            0
        );
        // A wish that flips direction starts its own wait.
        let d = decide(&s, 2, load(5, 0), false, Some(pending), 90_000);
        assert_eq!(
            d.pending,
            Some(Pending {
                up: true,
                since_ms: 90_000
            })
        );
    }

    #[test]
    fn paused_is_zero_and_bounds_apply_at_once() {
        let s = scaling(1, 3);
        assert_eq!(decide(&s, 3, load(9, 0), true, None, 0).replicas, 0);
        assert_eq!(decide(&s, 0, load(0, 0), false, None, 0).replicas, 1);
        assert_eq!(decide(&s, 6, load(0, 0), false, None, 0).replicas, 1);
        assert_eq!(
            decide(&scaling(2, 2), 1, load(0, 0), false, None, 0).replicas,
            2
        );
    }
}
