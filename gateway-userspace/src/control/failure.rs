//! An admin API failure: the status and a message that says what to do. Domain errors map
//! to statuses here, and only here.

use hyper::StatusCode;

use crate::{api::valid::Invalid, firewall::FirewallError};

#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (a 400 about one value).
    pub field: Option<String>,
}

impl ApiFailure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiFailure {
        ApiFailure {
            status,
            message: message.into(),
            field: None,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiFailure>;

impl From<Invalid> for ApiFailure {
    fn from(invalid: Invalid) -> ApiFailure {
        ApiFailure {
            status: StatusCode::BAD_REQUEST,
            message: invalid.to_string(),
            field: Some(invalid.field),
        }
    }
}

impl From<FirewallError> for ApiFailure {
    fn from(error: FirewallError) -> ApiFailure {
        let status = match &error {
            FirewallError::Invalid(invalid) => return invalid.clone().into(),
            FirewallError::NotFound(_) => StatusCode::NOT_FOUND,
            FirewallError::Conflict(_) => StatusCode::CONFLICT,
            FirewallError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            FirewallError::Kernel(_) | FirewallError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiFailure::new(status, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_domain_error_has_its_status() {
        let table = [
            (
                FirewallError::Invalid(Invalid::new("cidr", "bad")),
                StatusCode::BAD_REQUEST,
            ),
            (FirewallError::NotFound("x".into()), StatusCode::NOT_FOUND),
            (FirewallError::Conflict("x".into()), StatusCode::CONFLICT),
            (
                FirewallError::Full("x".into()),
                StatusCode::INSUFFICIENT_STORAGE,
            ),
            (
                FirewallError::Kernel(crate::xdp::XdpError::Off),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (error, status) in table {
            assert_eq!(ApiFailure::from(error).status, status);
        }
        let failure = ApiFailure::from(FirewallError::Invalid(Invalid::new("cidr", "bad")));
        assert_eq!(failure.field.as_deref(), Some("cidr"));
    }
}
