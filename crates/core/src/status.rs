//! The life cycles of what Tessera manages: hosts and compute units, in
//! Kloigos's upper-case vocabulary; instances, volumes and operations, in
//! the native API's lower-case one. Each is stored as its text, and every
//! face maps these enums to its own words with a `match`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! upper_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            /// Case-insensitive, as Kloigos clients send `free` as well as `FREE`.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $(if s.eq_ignore_ascii_case($text) {
                    return Ok($name::$variant);
                })+
                Err(UnknownStatus(s.to_string()))
            }
        }
    };
}

/// A status string that names no known status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

upper_enum!(
    /// Where a compute unit is in its life.
    UnitStatus {
        Free => "FREE",
        Allocating => "ALLOCATING",
        Allocated => "ALLOCATED",
        AllocationFail => "ALLOCATION_FAIL",
        Deallocating => "DEALLOCATING",
        DeallocationFail => "DEALLOCATION_FAIL",
        Unavailable => "UNAVAILABLE",
    }
);

impl UnitStatus {
    /// A unit in this status belongs to a tenant: its CPUs are held in the
    /// host's ledger and it must be deallocated before its host can go.
    pub fn is_held(self) -> bool {
        matches!(
            self,
            UnitStatus::Allocating
                | UnitStatus::Allocated
                | UnitStatus::AllocationFail
                | UnitStatus::Deallocating
                | UnitStatus::DeallocationFail
        )
    }
}

upper_enum!(
    /// Where a host is in its life. `READY` is Tessera's name for a host whose
    /// preparation is done, and `DRAINING`/`DRAINED` those of a host whose
    /// instances are being moved off (it takes no new work); the others are
    /// Kloigos's.
    HostStatus {
        Initializing => "INITIALIZING",
        InitFail => "INIT_FAIL",
        Ready => "READY",
        Draining => "DRAINING",
        Drained => "DRAINED",
        Decommissioning => "DECOMMISSIONING",
        Decommissioned => "DECOMMISSIONED",
        DecommissionFail => "DECOMMISSION_FAIL",
    }
);

upper_enum!(
    /// Where an instance is in its life. `unknown`: its host's agent is
    /// silent, so nobody can say.
    InstanceState {
        Provisioning => "provisioning",
        Running => "running",
        Stopping => "stopping",
        Stopped => "stopped",
        Terminated => "terminated",
        Unknown => "unknown",
    }
);

upper_enum!(
    /// Why an instance was terminated, or stopped on its own.
    TerminationCause {
        /// Deleted by its project.
        Deleted => "deleted",
        /// No host had room for it.
        NoCapacity => "no_capacity",
        /// Its host could not make it (or its volumes).
        HostFailed => "host_failed",
        /// Its creation was cancelled.
        Cancelled => "cancelled",
        /// It kept dying on its host, so it was left stopped (its state is
        /// `stopped`, not `terminated`).
        Crashed => "crashed",
        /// Its process ended and it is not started again: a job's replica
        /// (its state is `stopped`).
        Exited => "exited",
    }
);

upper_enum!(
    /// Where a volume is in its life. `deleted` covers the trash and the
    /// volumes purged for good.
    VolumeStatus {
        Detached => "detached",
        Attached => "attached",
        Deleted => "deleted",
    }
);

upper_enum!(
    /// Where an operation is.
    OperationStatus {
        Pending => "pending",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl OperationStatus {
    /// It has ended, one way or another.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            OperationStatus::Completed | OperationStatus::Failed | OperationStatus::Cancelled
        )
    }
}

upper_enum!(
    /// Where a taskserv (a service installed on servers) is in its life.
    TaskservStatus {
        Pending => "pending",
        Installing => "installing",
        Running => "running",
        Failed => "failed",
        Removing => "removing",
        Removed => "removed",
    }
);

upper_enum!(
    /// What an operation does.
    OperationKind {
        InstanceCreate => "instance_create",
        InstanceDelete => "instance_delete",
        InstanceStart => "instance_start",
        InstanceStop => "instance_stop",
        ServerCreate => "server_create",
        ServerDelete => "server_delete",
        ClusterCreate => "cluster_create",
        ServerDrain => "server_drain",
        TaskservCreate => "taskserv_create",
        TaskservDelete => "taskserv_delete",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_in_any_case_and_print_upper() {
        assert_eq!("free".parse::<UnitStatus>(), Ok(UnitStatus::Free));
        assert_eq!(
            "Allocation_Fail".parse::<UnitStatus>(),
            Ok(UnitStatus::AllocationFail)
        );
        assert_eq!(UnitStatus::Deallocating.to_string(), "DEALLOCATING");
        assert!("gone".parse::<UnitStatus>().is_err());
        assert_eq!(HostStatus::InitFail.as_str(), "INIT_FAIL");
        for state in InstanceState::ALL {
            assert_eq!(state.as_str().parse::<InstanceState>(), Ok(*state));
        }
        for kind in OperationKind::ALL {
            assert_eq!(kind.as_str().parse::<OperationKind>(), Ok(*kind));
        }
        assert!(OperationStatus::Cancelled.is_finished());
        assert!(!OperationStatus::Running.is_finished());
    }
}
