//! RemovePodSandbox: stop if needed, remove the containers, take down and
//! delete the pod's directory, delete the record and free the name.
//! Idempotent, also for IDs that do not exist.

use super::error::SandboxError;
use super::{SandboxManager, blocking, remove_pod_dir};

impl SandboxManager {
    pub async fn remove(&self, id_or_prefix: &str) -> Result<(), SandboxError> {
        let mut guard = match self.store.lock(id_or_prefix).await {
            Ok(guard) => guard,
            Err(e) if e.is_not_found() => {
                tracing::debug!(
                    pod = id_or_prefix,
                    "remove of an unknown pod sandbox: nothing to do"
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let pod = guard.get();
        match self.stop_locked(&mut guard).await {
            Ok(()) => {}
            // Containers still running: removing the pod would strand them.
            Err(e @ SandboxError::Containers { .. }) => return Err(e),
            // Anything else (a failed network teardown above all) must not
            // keep the pod: what is left is released below.
            Err(e) => {
                tracing::warn!(pod = %pod.id, error = %e, "stopping the pod failed; removing it anyway")
            }
        }
        if let Some(containers) = self.containers.get() {
            containers
                .remove_all(&pod.id)
                .await
                .map_err(|source| SandboxError::Containers {
                    id: pod.id.clone(),
                    op: "remove",
                    source,
                })?;
        }
        let dir = pod.dir.clone();
        blocking(&pod.id, move || remove_pod_dir(&dir)).await?;
        guard.remove()?;
        tracing::info!(pod = %pod.id, name = %pod.name, "pod sandbox removed");
        Ok(())
    }
}
