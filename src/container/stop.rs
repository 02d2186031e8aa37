//! StopContainer: the stop signal, then SIGKILL at the timeout; returns
//! once the process is gone. Unknown IDs and stopped containers are fine.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::error::ContainerError;
use super::manager::ContainerManager;
use super::record::ContainerRecord;
use super::signal;
use super::state::{Exit, State, Transition};
use super::status::Probe;
use crate::events::EventKind;
use crate::monitor;
use crate::store::StoreError;
use crate::task::blocking;

/// How long a container may take to die after SIGKILL before Stop fails.
const KILL_GRACE: Duration = Duration::from_secs(10);

impl ContainerManager {
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let mut guard = match self.store.lock(id).await {
            Ok(g) => g,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut record = (*guard.get()).clone();
        self.refresh(&mut record, Probe::Processes);
        if record.state == State::Running {
            self.kill(&record, timeout).await?;
            self.refresh(&mut record, Probe::Processes);
        }
        if record.state == State::Created {
            // Never started: nothing runs, but it can no longer start.
            let exit = Exit::stopped_unstarted(crate::clock::now_unix_nanos());
            record
                .apply(Transition::StopUnstarted(exit))
                .map_err(ContainerError::transition(&record.id.clone()))?;
        }
        if record.state != guard.get().state {
            guard.save(record.clone())?;
            self.emit(&record, EventKind::Stopped);
        }
        Ok(())
    }

    /// Signals a running container to end (its stop signal, then SIGKILL
    /// after `timeout`; SIGKILL at once for a zero timeout) and waits for
    /// its exit.
    pub(super) async fn kill(
        &self,
        record: &ContainerRecord,
        timeout: Duration,
    ) -> Result<(), ContainerError> {
        let Some(started) = record.started.clone() else {
            return Ok(());
        };
        let exit_file = self.exit_file(&record.id);
        if !timeout.is_zero() {
            let signo = signal::parse(&record.stop_signal)?;
            self.signal(record, &started, signo).await?;
            if monitor::wait_for_exit(&exit_file, timeout).await?.is_some() {
                return Ok(());
            }
        }
        self.signal(record, &started, Signal::SIGKILL as i32)
            .await?;
        // Everything in its cgroup too: a shared or host PID namespace
        // means the container's children are not killed with its PID 1.
        if let Some(cg) = self.open_cgroup(record) {
            let _ = blocking(move || cg.kill_all().map_err(ContainerError::from)).await;
        }
        if monitor::wait_for_exit(&exit_file, KILL_GRACE)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let mut probe = record.clone();
        self.refresh(&mut probe, Probe::Processes);
        if probe.state == State::Exited {
            return Ok(());
        }
        Err(ContainerError::Unkillable {
            id: record.id.clone(),
            grace: KILL_GRACE,
        })
    }

    /// Signals the container's process, guarded against pid reuse; for a
    /// container of an external runtime whose process ketch may not
    /// signal itself (another user namespace, a sandbox such as gVisor's),
    /// through the runtime's `kill`.
    async fn signal(
        &self,
        record: &ContainerRecord,
        started: &crate::monitor::Started,
        signo: i32,
    ) -> Result<(), ContainerError> {
        let sent = monitor::signal_container_number(
            started.container_pid,
            started.container_start_time,
            signo,
        );
        match (sent, &record.runtime) {
            (Ok(_), _) => Ok(()),
            (Err(e), Some(rt)) => {
                tracing::debug!(container = %record.id, "{e}; signalling through the runtime");
                let (rt, id) = (rt.clone(), record.id.clone());
                blocking(move || {
                    rt.kill(&id, signo)
                        .map_err(|source| ContainerError::Runtime { id, source })
                })
                .await
            }
            (Err(e), None) => Err(e.into()),
        }
    }
}
