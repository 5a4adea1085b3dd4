//! The step log of an operation: the steps done so far, each a typed
//! value, written to the store as JSON with the step's own changes.
//!
//! Logs written before steps were typed hold strings (`placed`,
//! `reserved:<instance>:<host>:<cpus>`, ...); they are read here, once,
//! into the same values, so an operation under way across an upgrade
//! carries on.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tessera_core::{CpuSet, HostId, InstanceId};

/// One step of a saga, done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub(crate) enum Step {
    /// `instance_create`: the instance holds its CPUs on a host.
    Placed,
    /// `instance_create`: the host failed to create the instance (its
    /// `attempt`th, from 1), which was taken off it to be placed again.
    /// The same host may fail it again (the only one that fits): each
    /// failure is its own step.
    FailedOn { host: HostId, attempt: u32 },
    /// `cluster_create`: a node holds its CPUs on a host.
    NodePlaced { instance: InstanceId },
    /// `server_create`: the server is registered and prepared.
    Registered,
    /// `server_drain`: the host takes no new work.
    Draining,
    /// `server_drain`: CPUs are held for an instance on the host it moves
    /// to, beside those it holds where it runs.
    Reserved {
        instance: InstanceId,
        host: HostId,
        cpus: CpuSet,
    },
    /// `server_drain`: the instance is recorded on its new host.
    Switched { instance: InstanceId },
    /// `server_drain`: the old host let the instance go and its CPUs there
    /// are free.
    Moved { instance: InstanceId },
    /// A forced server delete: the instance moved without the old host
    /// letting it go (its agent gone for good); its CPUs there are free.
    MovedWithoutSource { instance: InstanceId },
}

impl Step {
    /// A step as logs before typed steps wrote it.
    fn from_legacy(text: &str) -> Option<Step> {
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        let instance = || InstanceId::new(rest);
        Some(match kind {
            "placed" if rest.is_empty() => Step::Placed,
            "placed" => Step::NodePlaced {
                instance: instance(),
            },
            "registered" => Step::Registered,
            "draining" => Step::Draining,
            "switched" => Step::Switched {
                instance: instance(),
            },
            "moved" => Step::Moved {
                instance: instance(),
            },
            "reserved" => {
                let mut parts = rest.splitn(3, ':');
                let (id, host, cpus) = (parts.next()?, parts.next()?, parts.next()?);
                Step::Reserved {
                    instance: InstanceId::new(id),
                    host: HostId::new(host),
                    cpus: CpuSet::parse_list(cpus).ok()?,
                }
            }
            _ => return None,
        })
    }
}

/// A logged step: typed, or a string from an older log.
#[derive(Deserialize)]
#[serde(untagged)]
enum Logged {
    Typed(Step),
    Legacy(String),
}

/// The steps an operation has done, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct StepLog(Vec<Step>);

impl StepLog {
    /// The log an operation's record holds (`op` names it in errors).
    pub(crate) fn read(op: &str, json: &str) -> Result<StepLog> {
        let corrupt = |what: String| Error::corrupt(format!("operation {op}: step log: {what}"));
        let logged: Vec<Logged> = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
        logged
            .into_iter()
            .map(|entry| match entry {
                Logged::Typed(step) => Ok(step),
                Logged::Legacy(text) => {
                    Step::from_legacy(&text).ok_or_else(|| corrupt(format!("step {text:?}")))
                }
            })
            .collect::<Result<_>>()
            .map(StepLog)
    }

    pub(crate) fn done(&self, step: &Step) -> bool {
        self.0.contains(step)
    }

    /// The log with `step` added (once).
    pub(crate) fn with(&self, step: Step) -> StepLog {
        let mut steps = self.0.clone();
        if !self.done(&step) {
            steps.push(step);
        }
        StepLog(steps)
    }

    /// The log without the steps `drop` picks.
    pub(crate) fn without(&self, drop: impl Fn(&Step) -> bool) -> StepLog {
        StepLog(self.0.iter().filter(|s| !drop(s)).cloned().collect())
    }

    /// The instances moved without their old host letting them go.
    pub(crate) fn moved_without_source(&self) -> Vec<InstanceId> {
        self.0
            .iter()
            .filter_map(|step| match step {
                Step::MovedWithoutSource { instance } => Some(instance.clone()),
                _ => None,
            })
            .collect()
    }

    /// How many hosts failed to create the instance and let it go.
    pub(crate) fn failed_hosts(&self) -> usize {
        self.0
            .iter()
            .filter(|step| matches!(step, Step::FailedOn { .. }))
            .count()
    }

    /// Where CPUs are held for `instance` to move to, if they are.
    pub(crate) fn reservation(&self, of: &InstanceId) -> Option<(HostId, CpuSet)> {
        self.0.iter().find_map(|step| match step {
            Step::Reserved {
                instance,
                host,
                cpus,
            } if instance == of => Some((host.clone(), cpus.clone())),
            _ => None,
        })
    }

    /// The log as the store keeps it.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_steps_round_trip_and_old_logs_read_the_same() {
        let log = StepLog::default()
            .with(Step::Draining)
            .with(Step::Reserved {
                instance: InstanceId::new("inst-1"),
                host: HostId::new("host-2"),
                cpus: CpuSet::parse_list("4-7").expect("cpus"),
            })
            .with(Step::Switched {
                instance: InstanceId::new("inst-1"),
            });
        assert_eq!(StepLog::read("op", &log.to_json()).expect("read"), log);
        let old = r#"["draining","reserved:inst-1:host-2:4-7","switched:inst-1"]"#;
        assert_eq!(StepLog::read("op", old).expect("read"), log);
        assert_eq!(
            log.reservation(&InstanceId::new("inst-1")),
            Some((
                HostId::new("host-2"),
                CpuSet::parse_list("4-7").expect("cpus")
            ))
        );
        // A move without its source reads back as itself, not as a move.
        let without = log.with(Step::MovedWithoutSource {
            instance: InstanceId::new("inst-1"),
        });
        let read = StepLog::read("op", &without.to_json()).expect("read");
        assert_eq!(read, without);
        assert!(read.done(&Step::MovedWithoutSource {
            instance: InstanceId::new("inst-1")
        }));
        assert_eq!(read.moved_without_source(), [InstanceId::new("inst-1")]);
        assert!(!read.done(&Step::Moved {
            instance: InstanceId::new("inst-1")
        }));
        // The hosts a creation failed on count, and come back as written.
        // The same host failing twice is two steps.
        let failed = StepLog::default()
            .with(Step::FailedOn {
                host: HostId::new("host-1"),
                attempt: 1,
            })
            .with(Step::FailedOn {
                host: HostId::new("host-1"),
                attempt: 2,
            })
            .with(Step::Placed);
        let read = StepLog::read("op", &failed.to_json()).expect("read");
        assert_eq!((read.failed_hosts(), read.done(&Step::Placed)), (2, true));
        assert_eq!(read.without(|s| *s == Step::Placed).failed_hosts(), 2);
        assert!(StepLog::read("op", r#"["exploded"]"#).is_err());
        assert!(StepLog::read("op", "not json").is_err());
        assert_eq!(
            StepLog::read("op", r#"["placed","placed:inst-9"]"#).expect("read"),
            StepLog::default()
                .with(Step::Placed)
                .with(Step::NodePlaced {
                    instance: InstanceId::new("inst-9")
                })
        );
    }
}
