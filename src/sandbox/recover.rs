//! The restart reconcile: make the store match what survived.
//!
//! - A READY pod whose pins or shm are gone (a reboot cleared the state
//!   dir, or someone unmounted them) becomes NOTREADY; whatever is left of
//!   it is released. Its network status stays, so StopPodSandbox still
//!   runs the teardown with the cached result.
//! - A READY pod that shares one PID namespace and whose holder is not
//!   recorded or dead becomes NOTREADY (see [`super::pid_holder`]); its
//!   pins stay for StopPodSandbox to tear the network down in.
//! - A `creating` record is a RunPodSandbox a crash interrupted: its
//!   network is torn down (CNI DEL, with the ADD's result when it was
//!   persisted, else with the current config) while its netns is still
//!   pinned, then its mounts and directory are removed and its record
//!   deleted (so its name is free).
//! - A pod directory with no record at all is removed the same way.
//! - A record that cannot be read is logged and skipped; its directory is
//!   left alone. It never stops the daemon.

use std::collections::HashSet;

use super::error::{OsError, SandboxError};
use super::record::{PodSandbox, PodState};
use super::{
    SandboxManager, blocking, mounts, namespaces, release_kernel_resources, remove_pod_dir,
};

/// What [`SandboxManager::recover`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub ready: usize,
    pub not_ready: usize,
    /// Half-made pods and stray directories cleaned.
    pub cleaned: usize,
    /// Records skipped because they could not be read or adopted.
    pub skipped: usize,
}

impl SandboxManager {
    /// Loads every pod record and reconciles it with what exists.
    pub async fn recover(&self) -> Result<Recovery, SandboxError> {
        let mut report = Recovery::default();
        let mut known = HashSet::new();
        for (file_id, loaded) in self.store.load()? {
            known.insert(file_id.clone());
            let pod = match loaded {
                Ok(pod) if pod.id == file_id => pod,
                Ok(pod) => {
                    tracing::error!(file = %file_id, id = %pod.id, "pod record's ID does not match its file name; skipped");
                    report.skipped += 1;
                    continue;
                }
                Err(e) => {
                    tracing::error!(id = %file_id, error = %e, "unreadable pod record; skipped");
                    report.skipped += 1;
                    continue;
                }
            };
            match pod.state {
                PodState::Creating => {
                    tracing::warn!(pod = %pod.id, name = %pod.name, "cleaning a pod whose creation was interrupted");
                    self.undo(&pod, true).await;
                    report.cleaned += 1;
                }
                PodState::Ready | PodState::NotReady => self.readopt(pod, &mut report).await,
            }
        }
        report.cleaned += self.remove_stray_dirs(&known).await?;
        tracing::info!(
            ready = report.ready,
            not_ready = report.not_ready,
            cleaned = report.cleaned,
            skipped = report.skipped,
            "pod sandboxes recovered"
        );
        Ok(report)
    }

    async fn readopt(&self, mut pod: PodSandbox, report: &mut Recovery) {
        let mut changed = self.recover_pid_holder(&mut pod).await;
        if pod.state == PodState::Ready && !still_whole(&pod) {
            tracing::warn!(pod = %pod.id, "pod's namespaces or shm are gone (reboot?): now NOTREADY");
            pod.state = PodState::NotReady;
            let leftover = pod.clone();
            if let Err(e) = blocking(&pod.id, move || release_kernel_resources(&leftover)).await {
                tracing::warn!(pod = %pod.id, error = %e, "cannot release what is left of the pod");
            }
            changed = true;
        }
        if changed && let Err(e) = self.store.persist(&pod) {
            tracing::warn!(pod = %pod.id, error = %e, "cannot record the pod's recovered state; kept in memory");
        }
        let adopted = self
            .store
            .reserve_with_id(&pod.name, &pod.id)
            .and_then(|reservation| self.store.adopt(reservation, pod.clone()));
        match adopted {
            Ok(pod) if pod.is_ready() => report.ready += 1,
            Ok(_) => report.not_ready += 1,
            Err(e) => {
                tracing::error!(pod = %pod.id, error = %e, "cannot adopt pod record; skipped");
                report.skipped += 1;
            }
        }
    }

    /// Removes pod directories no record accounts for.
    async fn remove_stray_dirs(&self, known: &HashSet<String>) -> Result<usize, SandboxError> {
        let pods_dir = self.pods_dir.clone();
        let entries = std::fs::read_dir(&pods_dir)
            .map_err(|e| SandboxError::Host(OsError::new("read directory", &pods_dir, e)))?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            let dir = entry.path();
            tracing::warn!(dir = %dir.display(), "removing a pod directory without a record");
            match blocking(&name, move || remove_pod_dir(&dir)).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::error!(error = %e, "cannot remove stray pod directory"),
            }
        }
        Ok(removed)
    }
}

/// Whether every namespace and the shm a READY pod had are still there.
fn still_whole(pod: &PodSandbox) -> bool {
    pod.dir.is_dir()
        && namespaces::all_pinned(&pod.namespaces)
        && (!pod.owns_shm() || mounts::is_mount_point(&pod.shm))
}
