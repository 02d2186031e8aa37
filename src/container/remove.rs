//! RemoveContainer: stops the container if it runs, then releases its
//! rootfs, cgroup, directories and name.

use std::time::Duration;

use super::error::ContainerError;
use super::manager::ContainerManager;
use super::record::ContainerRecord;
use super::state::State;
use super::status::Probe;
use crate::events::EventKind;
use crate::executor::oci_runtime::OciRuntimeError;
use crate::store::StoreError;
use crate::task::blocking;

impl ContainerManager {
    /// Returns the removed record (its image lease is the caller's to
    /// release); `None` for an unknown ID.
    pub async fn remove(&self, id: &str) -> Result<Option<ContainerRecord>, ContainerError> {
        let guard = match self.store.lock(id).await {
            Ok(g) => g,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut record = (*guard.get()).clone();
        self.refresh(&mut record, Probe::Processes);
        if record.state == State::Running {
            self.kill(&record, Duration::ZERO).await?;
            self.refresh(&mut record, Probe::Processes);
            self.emit(&record, EventKind::Stopped);
        }
        if let Some(systemd) = &self.systemd {
            systemd
                .stop_unit(&crate::systemd::scope_name(&record.id))
                .await?;
        }
        let manager = self.clone();
        let r = record.clone();
        blocking(move || {
            // The runtime first: its state and the cgroups it made beside
            // ketch's (every v1 hierarchy) go with `delete --force`.
            if let Some(rt) = &r.runtime {
                match rt.delete(&r.id) {
                    Ok(()) => {}
                    // The runtime's binary is gone: nothing can ask it, so
                    // its state goes by hand and the cgroups below are
                    // ketch's to kill and remove.
                    Err(e @ OciRuntimeError::Spawn { .. }) => {
                        tracing::warn!(container = %r.id, "{e}; removing its state without it");
                        let state = rt.root.join(&r.id);
                        if let Err(e) = std::fs::remove_dir_all(&state)
                            && e.kind() != std::io::ErrorKind::NotFound
                        {
                            tracing::warn!(container = %r.id, "remove {}: {e}", state.display());
                        }
                    }
                    Err(source) => {
                        return Err(ContainerError::Runtime {
                            id: r.id.clone(),
                            source,
                        });
                    }
                }
            }
            if let Some(cg) = manager.open_cgroup(&r) {
                cg.kill_all()?;
                cg.destroy()?;
            }
            manager.remove_files(&r.id, &r.overlay.target);
            Ok::<_, ContainerError>(())
        })
        .await?;
        guard.remove()?;
        self.stats_cache.forget(&record.id);
        self.emit(&record, EventKind::Deleted);
        Ok(Some(record))
    }
}
