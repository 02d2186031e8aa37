//! Domain errors → gRPC status codes. The message is the error's own
//! text, which names the object and what failed.

use tonic::{Code, Status};

use crate::container::manager::ContainerError;
use crate::image::ImageError;
use crate::pod_pid::PodPidError;
use crate::runtime::RuntimeError;
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

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Self {
        use ContainerError::*;
        let message = e.to_string();
        match e {
            Store(s) => s.into(),
            NoMetadata | EmptyName | Spec(_) | User(_) => Status::invalid_argument(message),
            PodNotReady(_) | WrongState { .. } => Status::failed_precondition(message),
            NameTaken { .. } => Status::already_exists(message),
            ExecTimeout(_) => Status::deadline_exceeded(message),
            StartFailed { .. } | Exec { .. } => Status::unknown(message),
            Rootfs(_) | Cgroup(_) | Monitor(_) | Io { .. } | Unkillable { .. } | Join(_) => {
                Status::internal(message)
            }
        }
    }
}

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Sandbox(e) => e.into(),
            RuntimeError::Container(e) => e.into(),
            RuntimeError::Image(e) => e.into(),
            RuntimeError::NoImage => Status::invalid_argument(e.to_string()),
            RuntimeError::ImageNotFound(_) => Status::not_found(e.to_string()),
            RuntimeError::PodPid(PodPidError::Gone(_)) => {
                Status::failed_precondition(e.to_string())
            }
            RuntimeError::SelfExe(_) | RuntimeError::PodPid(_) => Status::internal(e.to_string()),
        }
    }
}

/// The error and its sources, joined with ": ".
fn message(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        let code = match &e {
            ImageError::InvalidReference { .. }
            | ImageError::InvalidArgument(_)
            | ImageError::AmbiguousId { .. }
            | ImageError::Import { .. } => Code::InvalidArgument,
            ImageError::NotFound(_) | ImageError::RegistryNotFound { .. } => Code::NotFound,
            ImageError::Unauthorized { .. } => Code::Unauthenticated,
            ImageError::Forbidden { .. } => Code::PermissionDenied,
            ImageError::Network { .. } | ImageError::Registry { .. } => Code::Unavailable,
            ImageError::Verification { .. } => Code::DataLoss,
            ImageError::TooLarge { .. }
            | ImageError::Unsupported { .. }
            | ImageError::Malformed { .. }
            | ImageError::NoMatchingPlatform { .. }
            | ImageError::Unpack { .. } => Code::FailedPrecondition,
            ImageError::Io { .. } | ImageError::Internal(_) => Code::Internal,
        };
        Status::new(code, message(&e))
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

    #[test]
    fn image_errors_map_to_codes() {
        let s = Status::from(ImageError::NotFound("x".into()));
        assert_eq!(s.code(), Code::NotFound);
        let s = Status::from(ImageError::Unauthorized {
            registry: "r".into(),
            reason: "the registry rejected the username or password".into(),
        });
        assert_eq!(s.code(), Code::Unauthenticated);
        assert!(s.message().contains("username or password"));
        let s = Status::from(ImageError::io(
            "open",
            "/x",
            std::io::Error::from_raw_os_error(libc::EACCES),
        ));
        assert_eq!(s.code(), Code::Internal);
        assert!(s.message().contains("/x"), "{}", s.message());
    }
}
