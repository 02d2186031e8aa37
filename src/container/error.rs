//! The container module's errors; `cri/status.rs` maps each to a gRPC code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::rootfs::RootfsError;
use super::signal::SignalError;
use super::spec::SpecError;
use super::state::TransitionError;
use super::user::UserError;
use crate::cgroups::CgroupError;
use crate::monitor::MonitorError;
use crate::names::{CreateDirError, NameError};
use crate::store::StoreError;
use crate::task::TaskFailed;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container metadata has an empty name")]
    EmptyName,
    #[error("pod sandbox {0} is not ready: containers can only be created in a ready pod")]
    PodNotReady(String),
    #[error("container name {name:?} is already in use by container {id}")]
    NameTaken { name: String, id: String },
    #[error("container {id} is {state}: {action}")]
    WrongState {
        id: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("container {id}: {source}")]
    Transition { id: String, source: TransitionError },
    #[error("failed to start container {id}: {message}")]
    StartFailed { id: String, message: String },
    #[error("exec in container {id}: {message}")]
    Exec { id: String, message: String },
    #[error("command timed out after {0:?}")]
    ExecTimeout(Duration),
    #[error("container {id} did not exit within {grace:?} of SIGKILL")]
    Unkillable { id: String, grace: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Systemd(#[from] crate::systemd::SystemdError),
    #[error(transparent)]
    Monitor(#[from] MonitorError),
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    LogDir(#[from] CreateDirError),
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Task(#[from] TaskFailed),
    /// The external OCI runtime of the container's handler failed.
    #[error("container {id}: {source}")]
    Runtime {
        id: String,
        source: crate::executor::oci_runtime::OciRuntimeError,
    },
}

impl ContainerError {
    /// The error of a state move the lifecycle refuses.
    pub fn transition(id: &str) -> impl FnOnce(TransitionError) -> Self {
        let id = id.to_owned();
        move |source| ContainerError::Transition { id, source }
    }
}

/// Maps an I/O error on `path` to [`ContainerError::Io`].
pub(super) fn io_err(
    context: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_owned();
    move |source| ContainerError::Io {
        context,
        path,
        source,
    }
}
