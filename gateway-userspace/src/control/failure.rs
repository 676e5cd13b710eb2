//! An admin API failure: the status and a message that says what to do. Domain errors map
//! to statuses here, and only here.

use hyper::StatusCode;

use crate::{
    api::{failure::ServiceError, valid::Invalid},
    firewall::FirewallError,
};

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

impl From<ServiceError> for ApiFailure {
    fn from(error: ServiceError) -> ApiFailure {
        let status = match &error {
            ServiceError::Invalid(invalid) => return invalid.clone().into(),
            ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
            ServiceError::Conflict(_) => StatusCode::CONFLICT,
            ServiceError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            ServiceError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiFailure::new(status, error.to_string())
    }
}

impl From<FirewallError> for ApiFailure {
    fn from(error: FirewallError) -> ApiFailure {
        ServiceError::from(error).into()
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
            let message = error.to_string();
            let failure = ApiFailure::from(error);
            assert_eq!((failure.status, failure.message), (status, message));
        }
        let failure = ApiFailure::from(FirewallError::Invalid(Invalid::new("cidr", "bad")));
        assert_eq!(failure.field.as_deref(), Some("cidr"));
    }
}
