//! Errors of the pod sandbox module, each naming the pod and what failed.

use std::path::PathBuf;

use crate::names::NameError;
use crate::network::NetworkError;
use crate::store::StoreError;

/// The error type the container hooks return.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// A failed system operation on a path: the building block of the
/// low-level helpers (mounts, pins, files).
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}: {source}")]
pub struct OsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl OsError {
    pub fn new(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        Self {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// A closure for `map_err`.
    pub fn with<'a, E: Into<std::io::Error>>(
        op: &'static str,
        path: &'a std::path::Path,
    ) -> impl FnOnce(E) -> OsError + 'a {
        move |e| OsError::new(op, path, e)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Bad input: the field and why.
    #[error("invalid pod sandbox config: {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// Lookups, names, records: see [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pod sandbox {id} is not ready")]
    NotReady { id: String },
    /// The pod's runtime handler is configured but its runtime cannot run.
    #[error("runtime handler {handler:?}: {reason}")]
    RuntimeUnavailable { handler: String, reason: String },
    /// A system operation not tied to one pod (the pods dir, the node).
    #[error(transparent)]
    Host(OsError),
    #[error("pod sandbox {id}: {source}")]
    Os {
        id: String,
        #[source]
        source: OsError,
    },
    /// CNI failed for the pod; `source` carries the plugin's own message.
    #[error("pod sandbox {id}: network {op} failed: {source}")]
    Network {
        id: String,
        op: &'static str,
        #[source]
        source: NetworkError,
    },
    /// `UpdateRuntimeConfig`'s pod CIDR could not be applied.
    #[error("cannot apply the node's pod CIDR: {0}")]
    PodCidr(#[source] NetworkError),
    #[error("pod sandbox {id}: cannot {op} its containers: {source}")]
    Containers {
        id: String,
        op: &'static str,
        #[source]
        source: HookError,
    },
    #[error("pod sandbox {id}: internal task failed: {message}")]
    Task { id: String, message: String },
    #[error("the container hooks of the pod sandbox manager are already set")]
    HooksAlreadySet,
    /// The pod asks for what this node cannot do.
    #[error("unsupported pod sandbox config: {0}")]
    Unsupported(String),
    /// The pod's cgroup refused its new resources.
    #[error("pod sandbox {id}: cgroup: {source}")]
    Cgroup {
        id: String,
        #[source]
        source: crate::cgroups::CgroupError,
    },
}

/// A refused name or log directory is bad input, naming its field.
impl From<NameError> for SandboxError {
    fn from(e: NameError) -> Self {
        SandboxError::invalid(e.field, e.problem.to_string())
    }
}

impl SandboxError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SandboxError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn os(id: &str) -> impl FnOnce(OsError) -> SandboxError + '_ {
        move |source| SandboxError::Os {
            id: id.to_owned(),
            source,
        }
    }
}
