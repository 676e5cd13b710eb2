//! What a service answers a neighbour when it refuses or fails, in kinds every layer above
//! understands: the defender and the cluster speak it across the traits they define
//! (`Enforcer`, `Replica`) without naming the firewall's own error, and the admin API maps
//! each kind to a status (control/failure.rs).

use super::valid::Invalid;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    /// A request value out of range (names the field).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// What the change names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts what exists.
    #[error("{0}")]
    Conflict(String),
    /// No room for it.
    #[error("{0}")]
    Full(String),
    /// The kernel or the store failed: nothing changed.
    #[error("{0}")]
    Failed(String),
}

pub type ServiceResult<T> = Result<T, ServiceError>;
