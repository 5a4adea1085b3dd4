//! Typed identifiers. A bare `String` says nothing about what it names; these
//! do, and the compiler keeps a host id from being passed as a unit id.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }

        /// Read as the text it is (the store and the wire speak text); the
        /// type still keeps one kind of id from standing for another.
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(
    /// A registered host (a server of the fleet).
    HostId
);
string_id!(
    /// A Kloigos compute unit: `<hostname>_c<range>`, see [`crate::range::CpuRange::unit_suffix`].
    ComputeId
);
string_id!(
    /// A project (a workspace).
    ProjectId
);
string_id!(
    /// An instance: `inst-` and 16 hex digits.
    InstanceId
);
string_id!(
    /// A block volume.
    VolumeId
);
string_id!(
    /// An operation.
    OperationId
);
string_id!(
    /// A user.
    UserId
);

impl ComputeId {
    /// The Kloigos id of the unit made of `range` on `hostname`.
    pub fn for_unit(hostname: &str, range: &crate::CpuRange) -> Self {
        Self(format!("{hostname}_{}", range.unit_name()))
    }
}
