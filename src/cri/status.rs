//! Domain errors → gRPC status codes. The message is the error's own
//! text, which names the object and what failed.

use tonic::Status;

use crate::sandbox::SandboxError;
use crate::store::StoreError;

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound { .. } => Status::not_found(message),
            StoreError::Ambiguous { .. } | StoreError::EmptyId { .. } => {
                Status::invalid_argument(message)
            }
            StoreError::NameTaken { .. } => Status::already_exists(message),
            StoreError::IdTaken { .. }
            | StoreError::Mismatch { .. }
            | StoreError::Io(_)
            | StoreError::Read { .. }
            | StoreError::Encode { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Random { .. } => Status::internal(message),
        }
    }
}

impl From<SandboxError> for Status {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Store(e) => e.into(),
            SandboxError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            SandboxError::NotReady { .. } => Status::failed_precondition(e.to_string()),
            SandboxError::Os { .. }
            | SandboxError::Host(_)
            | SandboxError::Network { .. }
            | SandboxError::Containers { .. }
            | SandboxError::Task { .. }
            | SandboxError::HooksAlreadySet => Status::internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes() {
        let not_found: Status = SandboxError::Store(StoreError::NotFound {
            kind: "pod sandbox",
            id: "abc".into(),
        })
        .into();
        assert_eq!(not_found.code(), Code::NotFound);
        assert!(not_found.message().contains("abc"));
        let taken: Status = SandboxError::Store(StoreError::NameTaken {
            kind: "pod sandbox",
            name: "n".into(),
            id: "0123".into(),
        })
        .into();
        assert_eq!(taken.code(), Code::AlreadyExists);
        assert!(taken.message().contains("0123"));
        let ambiguous: Status = StoreError::Ambiguous {
            kind: "pod sandbox",
            prefix: "a".into(),
            count: 2,
        }
        .into();
        assert_eq!(ambiguous.code(), Code::InvalidArgument);
        let invalid: Status = SandboxError::invalid("metadata.uid", "is required").into();
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert!(invalid.message().contains("metadata.uid"));
    }
}
