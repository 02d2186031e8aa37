//! ExecSync, and the process every exec runs: the container's own user,
//! env, cwd and capabilities with another argv.

use std::time::Duration;

use oci_spec::runtime::ProcessBuilder;

use super::error::ContainerError;
use super::manager::ContainerManager;
use super::record::ContainerRecord;
use super::spec;
use super::state::State;
use crate::executor::exec::{ExecProcess, ExecSyncOutput, ExecTarget};
use crate::executor::oci_runtime::RuntimeExec;
use crate::task::blocking;

impl ContainerManager {
    /// Runs `cmd` in the running container and returns its output; on
    /// timeout the command's process group is killed.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecSyncOutput, ContainerError> {
        let record = self.status(id)?;
        let started = match (&record.state, &record.started) {
            (State::Running, Some(s)) => s.clone(),
            _ => {
                return Err(ContainerError::WrongState {
                    id: record.id.clone(),
                    state: record.state.cri_name(),
                    action: "exec needs a running container",
                });
            }
        };
        let process = self.exec_process(&record, cmd, false)?;
        let exe = self.exe().to_owned();
        let id = record.id.clone();
        let output = blocking(move || {
            crate::executor::exec::exec_sync(
                &exe,
                ExecTarget {
                    pid: started.container_pid,
                    start_time: started.container_start_time,
                },
                &process,
                timeout,
            )
            .map_err(|e| ContainerError::Exec {
                id,
                message: e.to_string(),
            })
        })
        .await?;
        if output.timed_out {
            return Err(ContainerError::ExecTimeout(timeout.unwrap_or_default()));
        }
        Ok(output)
    }

    /// The process of an exec: the container's own user, env, cwd,
    /// capabilities, AppArmor profile and seccomp filter with another argv.
    pub fn exec_process(
        &self,
        record: &ContainerRecord,
        cmd: Vec<String>,
        tty: bool,
    ) -> Result<ExecProcess, ContainerError> {
        let spec = spec::load(&self.bundle_dir(&record.id)).map_err(|e| ContainerError::Exec {
            id: record.id.clone(),
            message: e.to_string(),
        })?;
        let base = spec.process().clone().unwrap_or_default();
        let mut builder = ProcessBuilder::default()
            .args(cmd)
            .terminal(tty)
            .user(base.user().clone())
            .cwd(base.cwd().clone());
        if let Some(env) = base.env() {
            builder = builder.env(env.clone());
        }
        if let Some(caps) = base.capabilities() {
            builder = builder.capabilities(caps.clone());
        }
        if let Some(nnp) = base.no_new_privileges() {
            builder = builder.no_new_privileges(nnp);
        }
        if let Some(profile) = base.apparmor_profile() {
            builder = builder.apparmor_profile(profile.clone());
        }
        Ok(ExecProcess {
            process: builder
                .build()
                .map_err(|e| ContainerError::Spec(e.into()))?,
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
            runtime: record.runtime.clone().map(|runtime| RuntimeExec {
                runtime,
                id: record.id.clone(),
                scratch_dir: self.sockets_dir().to_owned(),
            }),
            seccomp_program: None,
            cgroup_mounts: None,
        })
    }
}
