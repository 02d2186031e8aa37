//! A pod's shared PID namespace (`NamespaceMode::POD` for pid): held by a
//! `ketch pause` process, PID 1 of the namespace, which reaps the zombies
//! of every container in it. No pause image is involved.
//!
//! The pause runs detached, like a monitor, so it survives daemon
//! restarts; its pid and start time (the guard against pid reuse) are kept
//! in `pause.json` in the pod's state dir. Containers join the namespace
//! through `/proc/<pid>/ns/pid`. It is started once the pod's namespaces
//! are pinned and killed when the pod's containers are stopped.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::monitor::pause::{self, PodNamespaces};
use crate::monitor::{self, MonitorError};

const FILE: &str = "pause.json";

#[derive(Debug, thiserror::Error)]
pub enum PodPidError {
    #[error("start the pod's PID namespace holder: {0}")]
    Start(#[from] MonitorError),
    #[error("record the pod's PID namespace holder in {path}: {source}")]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the pod's PID namespace holder is gone (pod {0}): recreate the pod")]
    Gone(String),
}

/// The running pause of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInit {
    pub pid: i32,
    pub start_time: u64,
}

impl PodInit {
    /// Where containers join the pod's PID namespace.
    pub fn namespace_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/pid", self.pid))
    }

    fn alive(&self) -> bool {
        monitor::is_alive(self.pid, self.start_time)
    }
}

/// Starts the pause in a new PID namespace joined to the pod's namespaces
/// and records it in `pod_dir`. Blocking but quick.
pub fn start(exe: &Path, pod_dir: &Path, ns: PodNamespaces) -> Result<PodInit, PodPidError> {
    let spawned = pause::spawn(Some(exe), &ns)?;
    let init = PodInit {
        pid: spawned.pid,
        start_time: spawned.start_time,
    };
    let path = pod_dir.join(FILE);
    let json = serde_json::to_vec(&init).map_err(|e| PodPidError::Record {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    if let Err(e) = crate::store::write_atomic(&path, &json, 0o644) {
        kill(&init);
        return Err(PodPidError::Record {
            path,
            source: e.into(),
        });
    }
    Ok(init)
}

/// The pod's running pause, if it has one.
pub fn find(pod_dir: &Path) -> Option<PodInit> {
    let bytes = std::fs::read(pod_dir.join(FILE)).ok()?;
    let init: PodInit = serde_json::from_slice(&bytes).ok()?;
    init.alive().then_some(init)
}

/// The namespace path for a pod that shares its PID namespace.
pub fn namespace_of(pod_id: &str, pod_dir: &Path) -> Result<PathBuf, PodPidError> {
    find(pod_dir)
        .map(|init| init.namespace_path())
        .ok_or_else(|| PodPidError::Gone(pod_id.to_owned()))
}

fn kill(init: &PodInit) {
    // SIGKILL to PID 1 of a namespace from outside it works, and takes
    // every process left in the namespace with it.
    let _ = monitor::signal_container(init.pid, init.start_time, Signal::SIGKILL);
}

/// Kills the pod's pause, if any, and forgets it. Idempotent.
pub fn stop(pod_dir: &Path) {
    if let Some(init) = find(pod_dir) {
        kill(&init);
    }
    let _ = std::fs::remove_file(pod_dir.join(FILE));
}
