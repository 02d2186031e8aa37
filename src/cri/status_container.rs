//! Container errors as gRPC status codes.

use tonic::Status;

use crate::container::manager::ContainerError;
use crate::store::StoreError;

pub(super) fn store_status(e: &StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::Ambiguous { .. } | StoreError::EmptyId { .. } => {
            Status::invalid_argument(e.to_string())
        }
        StoreError::NameTaken { .. } | StoreError::IdTaken { .. } => {
            Status::already_exists(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Self {
        use ContainerError::*;
        let message = e.to_string();
        match &e {
            NoMetadata | EmptyName | Spec(_) => Status::invalid_argument(message),
            PodNotReady(_) | WrongState { .. } => Status::failed_precondition(message),
            NameTaken { .. } => Status::already_exists(message),
            ExecTimeout(_) => Status::deadline_exceeded(message),
            User(_) => Status::invalid_argument(message),
            Store(s) => store_status(s),
            StartFailed { .. } | Exec { .. } => Status::unknown(message),
            _ => Status::internal(message),
        }
    }
}
