//! StartContainer: only from CREATED. The container's monitor starts the
//! process and reports back; a start that fails leaves the container
//! EXITED with reason StartError and the cause as message.

use std::path::{Path, PathBuf};

use super::error::{ContainerError, io_err};
use super::manager::ContainerManager;
use super::record::ContainerRecord;
use super::spec;
use super::state::{Exit, Transition};
use crate::cgroups::Resources;
use crate::events::EventKind;
use crate::monitor::{self, MonitorSpec, Started};
use crate::store::Guard;
use crate::task::blocking;

impl ContainerManager {
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let mut guard = self.store.lock(id).await?;
        let mut record = (*guard.get()).clone();
        let id = record.id.clone();
        // Refuse early: a container that cannot start is left as it is.
        record
            .state
            .startable()
            .map_err(ContainerError::transition(&id))?;

        // Mark the start first: a crash while the monitor starts leaves a
        // trace the reconcile acts on. Only a crash of the daemon needs it
        // (a reboot ends the monitor too), so it is a file in the state
        // dir, not a rewrite of the record.
        let mark = self.start_mark(&id);
        set_mark(&mark)?;
        crate::sandbox::crash_point("start-container-before-monitor");
        let scope = self.start_scope(&record).await;
        let manager = self.clone();
        let r = record.clone();
        let result = match scope {
            Ok(holder) => {
                let result = blocking(move || manager.launch(&r)).await;
                if let Some(mut holder) = holder {
                    // The container's process is in the scope (or failed to
                    // start): the placeholder may go.
                    let _ = holder.kill();
                    let _ = holder.wait();
                    if result.is_err()
                        && let Some(systemd) = &self.systemd
                    {
                        let _ = systemd.stop_unit(&crate::systemd::scope_name(&id)).await;
                    }
                }
                result
            }
            Err(e) => Err(e),
        };
        crate::sandbox::crash_point("start-container-after-monitor");
        match result {
            Ok(started) => {
                for warning in &started.warnings {
                    tracing::warn!(container = %id, "{warning}");
                }
                record
                    .apply(Transition::Start(started))
                    .map_err(ContainerError::transition(&id))?;
                // Answered before the record's fsyncs: what it adds (the
                // process runs) a power loss makes untrue anyway, and the
                // container stays locked until the record is durable.
                guard.save_unsynced(record.clone())?;
                clear_mark(&mark);
                self.emit(&record, EventKind::Started);
                sync_later(guard);
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                let exit = Exit::start_error(message.clone(), crate::clock::now_unix_nanos());
                record
                    .apply(Transition::FailStart(exit))
                    .map_err(ContainerError::transition(&id))?;
                guard.save(record.clone())?;
                clear_mark(&mark);
                self.emit(&record, EventKind::Stopped);
                Err(ContainerError::StartFailed { id, message })
            }
        }
    }

    /// The file that says a StartContainer is under way: found with the
    /// container still CREATED when the daemon starts, the start was cut
    /// off (see the reconcile).
    pub(super) fn start_mark(&self, id: &str) -> PathBuf {
        self.exit_dir(id).join("starting")
    }

    /// With the systemd driver: the container's scope unit, started in its
    /// pod's slice holding a placeholder process (a scope cannot start
    /// empty), which the caller ends once the container's process is in
    /// the scope's cgroup. `None` without the systemd driver, or for a
    /// cgroup path that is no scope in a slice (a pod whose cgroup parent
    /// is a plain path).
    async fn start_scope(
        &self,
        record: &ContainerRecord,
    ) -> Result<Option<std::process::Child>, ContainerError> {
        let Some(systemd) = &self.systemd else {
            return Ok(None);
        };
        let scope = crate::systemd::scope_name(&record.id);
        let mut parts = record.cgroup_path.rsplit('/');
        let (Some(leaf), Some(slice)) = (parts.next(), parts.next()) else {
            return Ok(None);
        };
        if leaf != scope || !slice.ends_with(".slice") {
            tracing::warn!(
                container = %record.id,
                cgroup = %record.cgroup_path,
                "not in a systemd slice: the cgroup is made without a scope unit"
            );
            return Ok(None);
        }
        let resources = spec::load(&self.bundle_dir(&record.id))?
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .map(Resources::from)
            .unwrap_or_default();
        let v2 = self.cgroup_v2();
        let mut holder = std::process::Command::new(self.exe())
            .arg("pause")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(io_err("start the scope's placeholder", self.exe()))?;
        let started = systemd
            .start_scope(
                &scope,
                slice,
                holder.id(),
                crate::systemd::limit_properties(&resources, v2),
            )
            .await;
        if let Err(e) = started {
            let _ = holder.kill();
            let _ = holder.wait();
            let _ = systemd.stop_unit(&scope).await;
            return Err(e.into());
        }
        Ok(Some(holder))
    }

    /// Mounts the rootfs if a reboot took it, makes the cgroup and starts
    /// the monitor. Blocking.
    fn launch(&self, record: &ContainerRecord) -> Result<Started, ContainerError> {
        if !is_mountpoint(&record.overlay.target) {
            record.overlay.mount()?;
        }
        for volume in &record.image_volumes {
            if !is_mountpoint(&volume.target) {
                volume.mount()?;
            }
        }
        let bundle = self.bundle_dir(&record.id);
        let exit_file = self.exit_file(&record.id);
        if let Some(dir) = exit_file.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let mut cgroup_dirs = Vec::new();
        let mut cgroup = None;
        if let Some(manager) = &self.cgroups {
            // The spec is what the executor runs: its limits are the
            // cgroup's (UpdateContainerResources of a created container
            // rewrites them there).
            let spec = spec::load(&bundle)?;
            let resources = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref())
                .map(Resources::from)
                .unwrap_or_default();
            let cg = manager.create(&record.cgroup_path, &resources)?;
            cgroup_dirs = cg.dirs().into_iter().map(|d| d.path).collect();
            if self.systemd.is_some() {
                // systemd (hybrid mode) tracks the scope's processes in
                // the cgroup2 tree: an empty scope there is stopped.
                cgroup_dirs.extend(cg.hybrid_unified_dir());
            }
            cgroup = Some(cg);
        }
        if !record.log_path.is_empty()
            && let Some(dir) = Path::new(&record.log_path).parent()
        {
            // Without following symlinks: a link planted in a log
            // directory a container can write must not send the log
            // elsewhere.
            crate::names::create_dir_nofollow(dir, 0o755)?;
        }
        let spec = MonitorSpec {
            bundle,
            log_path: if record.log_path.is_empty() {
                PathBuf::from("/dev/null")
            } else {
                PathBuf::from(&record.log_path)
            },
            exit_file,
            socket: self.socket(&record.id),
            tty: record.config.tty,
            stdin: record.config.stdin,
            stdin_once: record.config.stdin_once,
            cgroup_dirs,
            cgroup_mounts: crate::executor::exec::cgroup_mount_table().map(str::to_owned),
            exe: Some(self.exe().to_owned()),
            runtime: record.runtime.clone().map(|rt| (rt, record.id.clone())),
        };
        match monitor::start(&spec) {
            Ok(started) => Ok(started),
            Err(e) => {
                if let Some(cg) = cgroup {
                    let _ = cg.kill_all();
                    let _ = cg.destroy();
                }
                Err(e.into())
            }
        }
    }
}

/// Whether the overlay at `path` is mounted (a reboot empties the overlay
/// mounts). An overlay always has a device number of its own, unlike the
/// directory it is mounted on: two stats, where reading
/// `/proc/self/mountinfo` had the kernel format every mount of the node,
/// a few for each pod, at every start.
fn is_mountpoint(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(target), Some(parent)) = (std::fs::symlink_metadata(path), path.parent()) else {
        return false;
    };
    std::fs::symlink_metadata(parent).is_ok_and(|parent| parent.dev() != target.dev())
}

fn set_mark(mark: &Path) -> Result<(), ContainerError> {
    if let Some(dir) = mark.parent() {
        // The exit dir: in the state dir, which a reboot empties.
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    std::fs::File::create(mark).map_err(io_err("create the start mark", mark))?;
    Ok(())
}

/// Best effort: a mark left behind beside a record that is no longer
/// CREATED is only removed by the next reconcile.
fn clear_mark(mark: &Path) {
    if let Err(e) = std::fs::remove_file(mark)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(mark = %mark.display(), "cannot remove the start mark: {e}");
    }
}

/// Makes the started container's record durable after the answer, holding
/// the container's lock until it is.
fn sync_later(guard: Guard<ContainerRecord>) {
    let id = guard.get().id.clone();
    tokio::spawn(async move {
        let synced = blocking(move || guard.sync().map_err(ContainerError::from)).await;
        if let Err(e) = synced {
            tracing::error!(container = %id, "the record of the start is not durable: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_of_another_file_system_is_a_mount_point_a_plain_dir_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("rootfs");
        std::fs::create_dir(&plain).unwrap();
        assert!(!is_mountpoint(&plain));
        assert!(!is_mountpoint(&dir.path().join("missing")));
        // procfs on its mount point, below a root of another file system.
        assert!(is_mountpoint(Path::new("/proc")));
    }
}
