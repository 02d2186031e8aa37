//! Domain errors → gRPC status codes. The message is the error's own
//! text, which names the object and what failed.

use tonic::{Code, Status};

use crate::container::ContainerError;
use crate::image::ImageError;
use crate::network::NetworkError;
use crate::pod_pid::PodPidError;
use crate::runtime::RuntimeError;
use crate::sandbox::SandboxError;
use crate::store::StoreError;
use crate::streaming::{BackendError, StreamError};

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
            SandboxError::NotReady { .. }
            | SandboxError::RuntimeUnavailable { .. }
            | SandboxError::Unsupported(_) => Status::failed_precondition(e.to_string()),
            SandboxError::Network { ref source, .. } | SandboxError::PodCidr(ref source) => {
                Status::new(network_code(source), e.to_string())
            }
            SandboxError::Os { .. }
            | SandboxError::Host(_)
            | SandboxError::Containers { .. }
            | SandboxError::Task { .. }
            | SandboxError::HooksAlreadySet => Status::internal(e.to_string()),
            SandboxError::Cgroup { .. } => Status::internal(e.to_string()),
        }
    }
}

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Self {
        use ContainerError::*;
        let message = e.to_string();
        match e {
            Store(s) => s.into(),
            EmptyName | Spec(_) | User(_) | Signal(_) | Name(_) => {
                Status::invalid_argument(message)
            }
            PodNotReady(_) | WrongState { .. } | Transition { .. } => {
                Status::failed_precondition(message)
            }
            NameTaken { .. } => Status::already_exists(message),
            ExecTimeout(_) => Status::deadline_exceeded(message),
            StartFailed { .. } | Exec { .. } => Status::unknown(message),
            Rootfs(_)
            | Cgroup(_)
            | Systemd(_)
            | Monitor(_)
            | Io { .. }
            | Unkillable { .. }
            | Task(_)
            | LogDir(_)
            | Runtime { .. } => Status::internal(message),
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
            RuntimeError::PodPid(PodPidError::Gone(_)) | RuntimeError::HandlerGone { .. } => {
                Status::failed_precondition(e.to_string())
            }
            RuntimeError::SelfExe(_)
            | RuntimeError::NoShim(_)
            | RuntimeError::PodPid(_)
            | RuntimeError::Random(_)
            | RuntimeError::Systemd(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<StreamError> for Status {
    fn from(e: StreamError) -> Self {
        let message = e.to_string();
        match e {
            StreamError::InvalidRequest(_) => Status::invalid_argument(message),
            StreamError::TooManyRequests(_) => Status::resource_exhausted(message),
            StreamError::Random(_) | StreamError::Address { .. } | StreamError::Bind { .. } => {
                Status::internal(message)
            }
        }
    }
}

impl From<BackendError> for Status {
    fn from(e: BackendError) -> Self {
        let message = e.to_string();
        match e {
            BackendError::ContainerNotFound(_) | BackendError::PodNotFound(_) => {
                Status::not_found(message)
            }
            BackendError::ContainerNotRunning(_) => Status::failed_precondition(message),
            BackendError::Io { .. } | BackendError::Failed(_) => Status::internal(message),
        }
    }
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
            ImageError::NoSpace { .. } | ImageError::LayerRefused { .. } => Code::ResourceExhausted,
            ImageError::TooLarge { .. }
            | ImageError::Unsupported { .. }
            | ImageError::Malformed { .. }
            | ImageError::NoMatchingPlatform { .. }
            | ImageError::Unpack { .. } => Code::FailedPrecondition,
            ImageError::Io { .. } | ImageError::Internal(_) => Code::Internal,
        };
        Status::new(code, crate::errors::chain(&e))
    }
}

/// The code of a network failure, as containerd gives them: bad input is
/// `InvalidArgument`; a node not set up for pod networking (no config, a
/// plugin binary missing or not executable) is `FailedPrecondition`; a
/// plugin that fails, hangs or answers nonsense is `Unknown` (the message
/// is the plugin's own); only ketch's own trouble is `Internal`.
fn network_code(e: &NetworkError) -> Code {
    if e.is_invalid_argument() {
        return Code::InvalidArgument;
    }
    match e {
        NetworkError::Config(_)
        | NetworkError::PluginNotFound { .. }
        | NetworkError::Spawn { .. } => Code::FailedPrecondition,
        NetworkError::PluginFailed { .. }
        | NetworkError::Timeout { .. }
        | NetworkError::BadResult { .. }
        | NetworkError::NoPodIp { .. } => Code::Unknown,
        NetworkError::CleanupFailed { failure, .. } => network_code(failure),
        NetworkError::Template { .. } => Code::FailedPrecondition,
        NetworkError::InvalidArgument(_)
        | NetworkError::InvalidBandwidth { .. }
        | NetworkError::InvalidPodCidr { .. } => Code::InvalidArgument,
        NetworkError::Io { .. } | NetworkError::Runtime(_) => Code::Internal,
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
    fn streaming_errors_map_to_codes() {
        let s = Status::from(StreamError::InvalidRequest("cmd must not be empty".into()));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("cmd must not be empty"));
        let s = Status::from(StreamError::TooManyRequests(1000));
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s = Status::from(BackendError::ContainerNotFound("c1".into()));
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().contains("c1"));
        let s = Status::from(BackendError::PodNotFound("p1".into()));
        assert_eq!(s.code(), Code::NotFound);
        let s = Status::from(BackendError::ContainerNotRunning("c2".into()));
        assert_eq!(s.code(), Code::FailedPrecondition);
        let s = Status::from(BackendError::Failed("boom".into()));
        assert_eq!(s.code(), Code::Internal);
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

    #[test]
    fn network_codes() {
        let setup = |source| -> Status {
            SandboxError::Network {
                id: "abc".into(),
                op: "setup",
                source,
            }
            .into()
        };
        let plugin = || NetworkError::PluginFailed {
            plugin: "bridge".into(),
            command: crate::network::CniCommand::Add,
            code: Some(11),
            message: "failed to allocate: no IP addresses available".into(),
        };
        let failed = setup(plugin());
        assert_eq!(failed.code(), Code::Unknown);
        assert!(
            failed.message().contains("abc")
                && failed.message().contains("no IP addresses available"),
            "{}",
            failed.message()
        );
        let cleanup = setup(NetworkError::CleanupFailed {
            failure: Box::new(plugin()),
            cleanup: Box::new(NetworkError::Runtime("x".into())),
        });
        assert_eq!(cleanup.code(), Code::Unknown);
        let no_config = setup(NetworkError::Config(crate::network::ConfError::NoConfig {
            dirs: "/etc/cni/net.d".into(),
        }));
        assert_eq!(no_config.code(), Code::FailedPrecondition);
        assert!(no_config.message().contains("/etc/cni/net.d"));
        let timeout = setup(NetworkError::Timeout {
            plugin: "slow".into(),
            command: crate::network::CniCommand::Add,
            timeout: std::time::Duration::from_secs(2),
        });
        assert_eq!(timeout.code(), Code::Unknown);
        let cidr: Status = SandboxError::PodCidr(NetworkError::InvalidPodCidr {
            value: "x".into(),
            reason: "bad".into(),
        })
        .into();
        assert_eq!(cidr.code(), Code::InvalidArgument);
    }
}
