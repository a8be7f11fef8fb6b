//! Service errors as gRPC statuses, through the one table in `verdict`.
//! Internal causes are logged by the service layer and never sent.

use tonic::Status;

use crate::service::ServiceError;
use crate::verdict::Verdict;

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        Verdict::from(e).to_status()
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::domain::FieldError;
    use crate::store::StoreError;

    #[test]
    fn a_bad_field_is_invalid_argument_naming_the_field() {
        let s = Status::from(ServiceError::InvalidArgument(FieldError::new(
            "note", "too long",
        )));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "note: too long");
    }

    #[test]
    fn the_limit_is_resource_exhausted_with_the_limit() {
        let s = Status::from(ServiceError::LimitReached { limit: 50 });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("50"));
    }

    #[test]
    fn an_unknown_token_id_is_not_found() {
        assert_eq!(Status::from(ServiceError::NotFound).code(), Code::NotFound);
    }

    #[test]
    fn a_store_failure_is_unavailable_without_its_cause() {
        let cause = StoreError::Corrupt {
            token_id: "abc".into(),
            reason: "secret detail".into(),
        };
        let s = Status::from(ServiceError::Unavailable(cause));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("secret detail"));
    }
}
