//! The module's one error type. Every variant names the file or cgroup it
//! is about, so a failure in a log says where to look.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Neither a cgroup2 mount at the root nor any cgroup v1 hierarchy.
    #[error("no usable cgroup filesystem: {0}")]
    NoCgroupFs(String),

    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },

    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },

    #[error("invalid systemd slice {name:?}: {reason}")]
    InvalidSlice { name: String, reason: String },

    #[error("invalid resources: {field}: {reason}")]
    InvalidResources { field: String, reason: String },

    /// A limit needs a controller this cgroup does not have (not mounted on
    /// v1, not enabled in the parent's `cgroup.subtree_control` on v2).
    #[error("controller file {file} is missing in {dir}: controller not available")]
    ControllerUnavailable { file: String, dir: PathBuf },

    #[error("cgroup {path} does not exist")]
    NotFound { path: String },

    #[error("cannot parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },

    /// `destroy` gave up: processes were still in the cgroup.
    #[error("cgroup dir {path} still busy after {waited:?} (processes {pids:?})")]
    Busy {
        path: PathBuf,
        waited: Duration,
        pids: Vec<i32>,
    },
}

impl CgroupError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidResources {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = CgroupError> = std::result::Result<T, E>;
