//! What can go wrong with a firewall change, in the domain's words. The admin API maps each
//! kind to a status (`control::failure`, through [`ServiceError`]); the messages say what to do.

use crate::{
    api::{failure::ServiceError, valid::Invalid},
    xdp::XdpError,
};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// A request value out of range (names the field).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The rule or ban named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts what exists (a duplicate, a config-file rule, XDP off).
    #[error("{0}")]
    Conflict(String),
    /// The maps (or `xdp.max_bans`) have no room for it.
    #[error("{0}")]
    Full(String),
    /// The kernel refused a map update.
    #[error("{0}")]
    Kernel(#[from] XdpError),
    /// The store could not record the change: nothing changed.
    #[error("{0}")]
    Store(#[from] super::store::StoreError),
}

pub type FirewallResult<T> = Result<T, FirewallError>;

/// The firewall's error as its neighbours see it: the kind and the same message.
impl From<FirewallError> for ServiceError {
    fn from(error: FirewallError) -> ServiceError {
        let message = error.to_string();
        match error {
            FirewallError::Invalid(invalid) => ServiceError::Invalid(invalid),
            FirewallError::NotFound(_) => ServiceError::NotFound(message),
            FirewallError::Conflict(_) => ServiceError::Conflict(message),
            FirewallError::Full(_) => ServiceError::Full(message),
            FirewallError::Kernel(_) | FirewallError::Store(_) => ServiceError::Failed(message),
        }
    }
}
