//! Tessera's domain core: typed ids, CPU sets and the Kloigos range syntax,
//! unit port ranges, and the placement engine.
//!
//! Nothing here does I/O. The app layer feeds the placement engine a view of
//! the hosts it loaded from the store and commits the engine's decisions back
//! with a conflict check; the engine itself only decides.

pub mod catalog;
pub mod cpuset;
pub mod ids;
pub mod network;
pub mod permissions;
pub mod placement;
pub mod ports;
pub mod quota;
pub mod range;
pub mod scopes;
pub mod serverless;
pub mod status;

pub use cpuset::CpuSet;
pub use ids::{ComputeId, HostId, InstanceId, OperationId, ProjectId, UserId, VolumeId};
pub use permissions::{InstallRole, Permission, Reach, Role};
pub use range::{CpuRange, CpuRangeError};
