//! ContainerStatus and ListContainers: records with their state brought up
//! to date from the monitor's exit file, without waiting on any operation.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::error::ContainerError;
use super::manager::ContainerManager;
use super::record::ContainerRecord;
use super::state::{Exit, State, Transition};
use crate::events::EventKind;
use crate::monitor;

/// Filters of ListContainers, in domain terms.
#[derive(Debug, Default, Clone)]
pub struct ContainerFilter {
    /// A full ID or a unique prefix.
    pub id: Option<String>,
    pub pod_id: Option<String>,
    pub state: Option<State>,
    pub labels: BTreeMap<String, String>,
}

/// How much a refresh may look at to notice an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    /// The exit file only (ListContainers, for possibly many containers:
    /// a monitor that died without an exit file is noticed by the next
    /// ContainerStatus).
    ExitFile,
    /// The exit file, then whether the monitor and the process still live.
    Processes,
}

impl ContainerManager {
    /// Moves a RUNNING record to EXITED when its process is gone: the exit
    /// file's status, or (monitor and process both gone without one) an
    /// unknown exit.
    pub(super) fn refresh(&self, record: &mut ContainerRecord, probe: Probe) {
        if record.state != State::Running {
            return;
        }
        if let Some(exit) = self.observed_exit(record, probe) {
            // RUNNING → EXITED is always allowed.
            let _ = record.apply(Transition::Exit(exit));
        }
    }

    /// The exit of a running container, if it has ended.
    fn observed_exit(&self, record: &ContainerRecord, probe: Probe) -> Option<Exit> {
        let exit_file = self.exit_file(&record.id);
        match monitor::read_exit_file(&exit_file) {
            Ok(Some(status)) => Some(Exit::from_status(&status)),
            Ok(None) => {
                let started = record
                    .started
                    .as_ref()
                    .filter(|_| probe == Probe::Processes)?;
                let alive = monitor::is_alive(started.monitor_pid, started.monitor_start_time)
                    || monitor::is_alive(started.container_pid, started.container_start_time);
                if alive {
                    return None;
                }
                // The monitor writes the exit file before it exits; read
                // again so an exit between the two reads is not lost.
                match monitor::read_exit_file(&exit_file) {
                    Ok(Some(status)) => Some(Exit::from_status(&status)),
                    Ok(None) => Some(self.unrecorded_exit(record)),
                    Err(e) => {
                        tracing::warn!(container = %record.id, "unreadable exit file: {e}");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(container = %record.id, "unreadable exit file: {e}");
                None
            }
        }
    }

    /// The exit of a container whose monitor ended without recording one
    /// (killed, or lost with the node's memory): `Unknown`, unless the
    /// container's memory cgroup counted an OOM kill, the one cause the
    /// kernel still remembers; its code stays unknown.
    fn unrecorded_exit(&self, record: &ContainerRecord) -> Exit {
        let mut exit = Exit::unknown(crate::clock::now_unix_nanos());
        let oom = self
            .cgroups
            .as_ref()
            .filter(|_| !record.cgroup_path.is_empty())
            .and_then(|m| m.open(&record.cgroup_path).ok())
            .is_some_and(|cg| cg.oom_killed().unwrap_or(false));
        if oom {
            exit.reason = crate::monitor::exit_reason(exit.code, true).into();
            exit.message = "the container's monitor ended without recording an exit \
                            status; its memory cgroup counted an OOM kill"
                .into();
        }
        exit
    }

    /// The record with its state brought up to date (persisted when it
    /// changed and the lock is free; never waits on an operation).
    pub fn status(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        let mut record = (*self.store.get(id)?).clone();
        self.refresh_and_record(&mut record, Probe::Processes);
        Ok(record)
    }

    /// Refreshes `record`; an exit seen is recorded in the background.
    fn refresh_and_record(&self, record: &mut ContainerRecord, probe: Probe) {
        let before = record.state;
        self.refresh(record, probe);
        if record.state != before {
            self.persist_refresh(&record.id);
        }
    }

    /// Records an exit seen by a reader, in the background under the lock.
    fn persist_refresh(&self, id: &str) {
        let manager = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            if let Ok(mut guard) = manager.store.lock(&id).await {
                let mut record = (*guard.get()).clone();
                if record.state == State::Running {
                    manager.refresh(&mut record, Probe::Processes);
                    if record.state != State::Running {
                        match guard.save(record.clone()) {
                            Ok(_) => manager.emit(&record, EventKind::Stopped),
                            Err(e) => tracing::warn!(container = %id, "cannot record exit: {e}"),
                        }
                    }
                }
            }
        });
    }

    pub fn list(&self, filter: &ContainerFilter) -> Vec<Arc<ContainerRecord>> {
        let id = match filter.id.as_deref().filter(|s| !s.is_empty()) {
            Some(prefix) => match self.store.resolve(prefix) {
                Ok(id) => Some(id),
                Err(_) => return Vec::new(),
            },
            None => None,
        };
        self.store
            .list()
            .into_iter()
            .filter(|r| id.as_ref().is_none_or(|id| &r.id == id))
            .filter(|r| {
                filter
                    .pod_id
                    .as_ref()
                    .is_none_or(|p| p.is_empty() || r.pod_id == *p)
            })
            .filter(|r| r.has_labels(&filter.labels))
            .map(|r| self.refreshed(r))
            .filter(|r| filter.state.is_none_or(|s| r.state == s))
            .collect()
    }

    /// The record as its exit file leaves it: the stored one itself unless
    /// the container has exited unnoticed (then a copy that says so, and
    /// the exit recorded in the background). A list of a hundred
    /// containers copies none of them.
    fn refreshed(&self, record: Arc<ContainerRecord>) -> Arc<ContainerRecord> {
        if record.state != State::Running {
            return record;
        }
        let Some(exit) = self.observed_exit(&record, Probe::ExitFile) else {
            return record;
        };
        let mut exited = (*record).clone();
        // RUNNING → EXITED is always allowed.
        let _ = exited.apply(Transition::Exit(exit));
        self.persist_refresh(&exited.id);
        Arc::new(exited)
    }

    /// IDs of a pod's containers.
    pub fn pod_containers(&self, pod_id: &str) -> Vec<String> {
        self.store
            .list()
            .into_iter()
            .filter(|r| r.pod_id == pod_id)
            .map(|r| r.id.clone())
            .collect()
    }
}
