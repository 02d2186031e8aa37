//! ReopenContainerLog: the monitor reopens the CRI log file (after
//! kubelet rotated it). Never waits on the container's operation lock.

use super::error::ContainerError;
use super::manager::ContainerManager;
use super::state::State;
use crate::monitor;
use crate::task::blocking;

impl ContainerManager {
    pub async fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let record = self.status(id)?;
        if record.state != State::Running {
            return Err(ContainerError::WrongState {
                id: record.id.clone(),
                state: record.state.cri_name(),
                action: "only a running container's log can be reopened",
            });
        }
        let socket = self.socket(&record.id);
        blocking(move || monitor::reopen_log(&socket).map_err(ContainerError::from)).await
    }
}
