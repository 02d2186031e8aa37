//! StopPodSandbox: stop the containers, commit NOTREADY, kill the PID
//! namespace holder, tear the network down, release the namespaces and
//! shm; keep the record and the files. Idempotent, also for IDs that do
//! not exist.
//!
//! NOTREADY is committed before anything the pod needs to be ready is
//! taken away, so a crash in the middle leaves a pod that says it is not
//! ready (and still owes the teardown its record names), never a READY pod
//! without its holder or its namespaces.

use super::crash::crash_point;
use super::error::SandboxError;
use super::record::{PodSandbox, PodState};
use super::{SandboxManager, blocking, release_kernel_resources};
use crate::store::Guard;

impl SandboxManager {
    pub async fn stop(&self, id_or_prefix: &str) -> Result<(), SandboxError> {
        let mut guard = match self.store.lock(id_or_prefix).await {
            Ok(guard) => guard,
            Err(e) if e.is_not_found() => {
                tracing::debug!(
                    pod = id_or_prefix,
                    "stop of an unknown pod sandbox: nothing to do"
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.stop_locked(&mut guard).await
    }

    /// Stop with the pod's lock held (also the first half of Remove).
    pub(super) async fn stop_locked(
        &self,
        guard: &mut Guard<PodSandbox>,
    ) -> Result<(), SandboxError> {
        let pod = guard.get();
        if let Some(containers) = self.containers.get() {
            containers
                .stop_all(&pod.id)
                .await
                .map_err(|source| SandboxError::Containers {
                    id: pod.id.clone(),
                    op: "stop",
                    source,
                })?;
        }

        if pod.is_ready() {
            let mut stopping = (*pod).clone();
            stopping.state = PodState::NotReady;
            guard.save(stopping)?;
            crash_point("stop-pod-after-not-ready");
        }

        // After the containers: killing it kills whatever is left in the
        // namespace.
        self.kill_pid_holders(&pod).await;
        crash_point("stop-pod-after-pid-holder");

        // THE place the pod's network is torn down (CNI DEL), as long as
        // the record says it is up.
        let teardown = match &pod.network {
            Some(_) => self.teardown_network(&pod).await,
            None => Ok(()),
        };
        // Always release the namespaces, even when the teardown failed: a
        // pod must never be stuck (containerd #3667, cri-o #9301).
        let released = {
            let owned = pod.clone();
            blocking(&pod.id, move || release_kernel_resources(&owned)).await
        };

        let saved = guard.get();
        let mut next = (*saved).clone();
        next.pid_holder = None;
        if teardown.is_ok() {
            next.network = None;
        }
        if next != *saved {
            guard.save(next)?;
        }
        if *guard.get() != *pod {
            tracing::info!(pod = %pod.id, "pod sandbox stopped");
        }
        teardown?;
        released
    }
}
