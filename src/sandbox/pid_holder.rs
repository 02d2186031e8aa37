//! The process holding a pod's shared PID namespace (pid mode `Pod`; see
//! [`crate::pod_pid`]), as part of the pod's lifecycle.
//!
//! The order of the steps is what makes a `kill -9` of the daemon at any
//! point harmless; every pod is then either READY with a live, recorded
//! holder, or NOTREADY, or gone:
//!
//! - RunPodSandbox starts the holder once the namespaces are pinned and
//!   records it in the still `creating` record, and only then goes on to
//!   commit READY. A crash before the record leaves a `creating` pod
//!   whose undo finds the holder by its namespaces
//!   ([`pod_pid::find_by_namespaces`]).
//! - StopPodSandbox commits NOTREADY before it kills the holder, so a
//!   crash after the kill cannot leave a READY pod without one.
//! - A holder that dies on its own (killed by hand, OOM) makes the pod
//!   NOTREADY at once in Status, List and for new containers
//!   ([`SandboxManager::get`], `list`, `lock_ready`), and in the record
//!   at the next start (the reconcile); kubelet then stops it and makes a
//!   new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{OsError, SandboxError};
use super::record::{NamespaceMode, PodSandbox, PodState};
use super::{SandboxManager, blocking};
use crate::monitor::pause::PodNamespaces as PauseNamespaces;
use crate::pod_pid;

impl SandboxManager {
    /// Starts pods that share one PID namespace with a holder: `exe` is
    /// the binary with the `pause` subcommand (`ketch-shim` or `ketch`).
    /// Without it (the module's own tests), such pods get none.
    pub fn with_pid_holder(mut self, exe: PathBuf) -> Self {
        self.pause_exe = Some(exe);
        self
    }

    /// Whether `pod` must have a live holder to be ready.
    fn needs_holder(&self, pod: &PodSandbox) -> bool {
        pod.pid_mode() == NamespaceMode::Pod && self.pause_exe.is_some()
    }

    /// Whether the holder `pod` needs, if any, is recorded and alive.
    pub(super) fn holder_alive(&self, pod: &PodSandbox) -> bool {
        !self.needs_holder(pod) || pod.pid_holder.is_some_and(|h| h.alive())
    }

    /// The pod as it is: a READY record whose holder died is NOTREADY.
    pub(super) fn observed(&self, pod: Arc<PodSandbox>) -> Arc<PodSandbox> {
        if pod.is_ready() && !self.holder_alive(&pod) {
            let mut dead = (*pod).clone();
            dead.state = PodState::NotReady;
            Arc::new(dead)
        } else {
            pod
        }
    }

    /// Starts the pod's holder if it needs one, and records it in `pod`
    /// (the caller persists it). Runs after the namespaces are pinned: the
    /// holder joins them.
    pub(super) async fn start_pid_holder(&self, pod: &mut PodSandbox) -> Result<(), SandboxError> {
        let Some(exe) = self.pause_exe.clone().filter(|_| self.needs_holder(pod)) else {
            return Ok(());
        };
        let namespaces = PauseNamespaces {
            user: pod.namespaces.user.clone(),
            net: pod.namespaces.net.clone(),
            ipc: pod.namespaces.ipc.clone(),
            uts: pod.namespaces.uts.clone(),
        };
        let dir = pod.dir.clone();
        let holder = blocking(&pod.id, move || {
            pod_pid::start(&exe, namespaces).map_err(|e| {
                OsError::new(
                    "start the PID namespace holder of",
                    dir,
                    std::io::Error::other(e),
                )
            })
        })
        .await?;
        tracing::debug!(pod = %pod.id, pid = holder.pid, "PID namespace holder started");
        pod.pid_holder = Some(holder);
        Ok(())
    }

    /// Kills the pod's holder: the recorded one and any other found by the
    /// pod's namespaces (one a crash left unrecorded). Idempotent.
    pub(super) async fn kill_pid_holders(&self, pod: &PodSandbox) {
        let recorded = pod.pid_holder;
        let pins: Vec<PathBuf> = pod.namespaces.pins().map(|(_, p)| p.to_owned()).collect();
        let killed = blocking(&pod.id, move || {
            let pins: Vec<&Path> = pins.iter().map(PathBuf::as_path).collect();
            let mut holders = pod_pid::find_by_namespaces(&pins);
            holders.extend(recorded.filter(|h| h.alive() && !holders.contains(h)));
            for holder in &holders {
                pod_pid::kill(holder);
            }
            Ok(holders.len())
        })
        .await;
        match killed {
            Ok(0) => {}
            Ok(n) => tracing::info!(pod = %pod.id, count = n, "PID namespace holder killed"),
            Err(e) => {
                tracing::warn!(pod = %pod.id, error = %e, "cannot kill the PID namespace holder")
            }
        }
    }

    /// At start: a READY pod whose holder is missing or dead becomes
    /// NOTREADY (a stray holder found by its namespaces is killed). A pod
    /// an earlier ketch recorded in `pause.json` has its holder adopted
    /// into the record. Returns whether `pod` changed.
    pub(super) async fn recover_pid_holder(&self, pod: &mut PodSandbox) -> bool {
        if pod.state != PodState::Ready || !self.needs_holder(pod) {
            return false;
        }
        let mut changed = false;
        if pod.pid_holder.is_none() {
            let dir = pod.dir.clone();
            pod.pid_holder = blocking(&pod.id, move || Ok(pod_pid::take_legacy_record(&dir)))
                .await
                .ok()
                .flatten();
            changed = pod.pid_holder.is_some();
        }
        if self.holder_alive(pod) {
            return changed;
        }
        tracing::warn!(pod = %pod.id, "the pod's PID namespace holder is gone: now NOTREADY");
        self.kill_pid_holders(pod).await;
        pod.state = PodState::NotReady;
        true
    }
}
