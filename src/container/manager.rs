//! The container manager: the store of container records and the paths and
//! resources every operation shares. Each operation is a file of its own
//! (`create`, `start`, `stop`, `remove`, `exec`, `reopen_log`, `update`,
//! `status`, `reconcile`), an `impl ContainerManager` block.
//!
//! The manager knows nothing of gRPC, nor of how pods and images are
//! stored: the runtime hands it a [`PodInfo`] and an [`ImageInfo`]. Each
//! container has its own operation lock (the store's), so a slow stop of
//! one never delays another.
//!
//! On disk, per container:
//! - `<root_dir>/containers/<id>/`: the bundle (`config.json`, the OCI
//!   spec), the overlay's `upper/` and `work/` dirs and its mount point
//!   `rootfs/`. Persistent, so a created container can start after a
//!   reboot (the overlay is mounted again when missing).
//! - `<state_dir>/containers/<id>/exit`: written by the monitor when the
//!   container ends; volatile, like the processes it describes.
//! - `<state_dir>/sock/<id prefix>.sock`: the monitor's attach/control
//!   socket, kept short for the 107-byte limit of unix socket paths.
//! - the record, in the container store (`<root_dir>/store/containers`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{ContainerError, io_err};
use super::record::ContainerRecord;
use super::rootfs;
use super::spec::{ImageRunConfig, PodContext};
use super::state::State;
use super::stats::StatsCache;
use super::status::ContainerFilter;
use crate::cgroups::{self, CgroupManager};
use crate::config::CgroupDriver;
use crate::events::{ContainerEvent, EventKind, Events};
use crate::store::Store;

/// The pod a container is made in, as the container module needs it.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub ready: bool,
    pub log_directory: String,
    pub context: PodContext,
    /// The external OCI runtime of the pod's handler; `None`: built-in.
    pub runtime: Option<crate::executor::oci_runtime::OciRuntime>,
}

/// The image a container is made from.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// `sha256:<config digest>`.
    pub id: String,
    /// The reference the container asked for, as ContainerStatus echoes it.
    pub reference: String,
    /// Unpacked layers, topmost first.
    pub lowerdirs: Vec<PathBuf>,
    pub run_config: ImageRunConfig,
    /// The images of the container's image volumes (CRI mounts with
    /// `image`), with the index of their mount.
    pub volumes: Vec<VolumeImage>,
}

/// The image of one image volume, found by the runtime.
#[derive(Debug, Clone)]
pub struct VolumeImage {
    pub mount_index: usize,
    pub image_id: String,
    /// Unpacked layers, topmost first.
    pub lowerdirs: Vec<PathBuf>,
}

#[derive(Clone)]
pub struct ContainerManager {
    pub(super) store: Store<ContainerRecord>,
    bundles: PathBuf,
    exits: PathBuf,
    sockets: PathBuf,
    pub(super) cgroups: Option<CgroupManager>,
    pub(super) driver: CgroupDriver,
    exe: PathBuf,
    pub(super) stats_cache: Arc<StatsCache>,
    pub(super) events: Events,
    /// With the systemd driver: the manager that gets each container's
    /// scope unit.
    pub(super) systemd: Option<crate::systemd::Systemd>,
}

impl ContainerManager {
    /// Opens the store and reconciles every record with what is running.
    pub async fn open(
        root_dir: &Path,
        state_dir: &Path,
        driver: CgroupDriver,
        exe: PathBuf,
    ) -> Result<Self, ContainerError> {
        let store = Store::open(root_dir.join("store").join("containers"), "container")?;
        let bundles = root_dir.join("containers");
        let exits = state_dir.join("containers");
        let sockets = state_dir.join("sock");
        for dir in [&bundles, &exits, &sockets] {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let cgroups = match CgroupManager::detect() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("cgroups unavailable, containers run without limits: {e}");
                None
            }
        };
        let manager = Self {
            store,
            bundles,
            exits,
            sockets,
            cgroups,
            driver,
            exe,
            stats_cache: super::stats::new_cache(),
            events: Events::new(),
            systemd: None,
        };
        manager.reconcile().await?;
        Ok(manager)
    }

    /// Registers containers' cgroups with this systemd manager (the
    /// systemd cgroup driver).
    pub fn with_systemd(mut self, systemd: crate::systemd::Systemd) -> Self {
        self.systemd = Some(systemd);
        self
    }

    /// Whether containers' cgroups are on cgroup v2.
    pub(super) fn cgroup_v2(&self) -> bool {
        self.cgroups.as_ref().map(CgroupManager::version) == Some(crate::cgroups::CgroupVersion::V2)
    }

    pub(super) fn bundles_dir(&self) -> &Path {
        &self.bundles
    }

    pub(super) fn bundle_dir(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    /// The directory of a container's exit file.
    pub(super) fn exit_dir(&self, id: &str) -> PathBuf {
        self.exits.join(id)
    }

    pub(super) fn exit_file(&self, id: &str) -> PathBuf {
        self.exit_dir(id).join("exit")
    }

    /// Where monitor sockets and per-exec runtime files live.
    pub(super) fn sockets_dir(&self) -> &Path {
        &self.sockets
    }

    pub(super) fn socket(&self, id: &str) -> PathBuf {
        self.sockets
            .join(format!("{}.sock", &id[..id.len().min(32)]))
    }

    /// The cgroup hierarchies in use (none when cgroups are unavailable)
    /// and the driver naming paths in them.
    pub fn cgroups(&self) -> (Option<&CgroupManager>, CgroupDriver) {
        (self.cgroups.as_ref(), self.driver)
    }

    /// The hub of this manager's lifecycle events.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Publishes `kind` for `record` (a `Stopped` event carries the exit's
    /// reason).
    pub(super) fn emit(&self, record: &ContainerRecord, kind: EventKind) {
        self.events.publish(event_of(record, kind));
    }

    /// Checks every running container for an exit: an exit seen is
    /// recorded (and so published) in the background.
    pub fn poll_exits(&self) {
        let running = ContainerFilter {
            state: Some(State::Running),
            ..Default::default()
        };
        let _ = self.list(&running);
    }

    /// The binary exec helpers run (`ketch-shim`, for `ketch-shim exec`).
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The attach/control socket of a container's monitor.
    pub fn attach_socket(&self, id: &str) -> Result<PathBuf, ContainerError> {
        let record = self.store.get(id)?;
        Ok(self.socket(&record.id))
    }

    /// The container's cgroup, if cgroups are in use and it exists.
    pub(super) fn open_cgroup(&self, record: &ContainerRecord) -> Option<cgroups::Cgroup> {
        self.cgroups
            .as_ref()
            .and_then(|m| m.open(&record.cgroup_path).ok())
    }

    /// Unmounts and deletes what a container made on disk. Best effort:
    /// logs what it cannot remove.
    pub(super) fn remove_files(&self, id: &str, rootfs: &Path) {
        if let Err(e) = rootfs::unmount(rootfs) {
            tracing::warn!(container = %id, "{e}");
        }
        // A container of a pod with its own user namespace has its mount
        // points in its state dir (see `create`): both are cleared.
        let state_rootfs = self.exit_dir(id).join("rootfs");
        if let Err(e) = rootfs::unmount(&state_rootfs) {
            tracing::warn!(container = %id, "{e}");
        }
        for dir in [self.bundle_dir(id), self.exit_dir(id)] {
            if let Err(e) = rootfs::unmount_volumes(&dir) {
                tracing::warn!(container = %id, "{e}");
            }
        }
        for dir in [self.bundle_dir(id), self.exit_dir(id)] {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(container = %id, "remove {}: {e}", dir.display());
            }
        }
        let _ = std::fs::remove_file(self.socket(id));
    }
}

/// The event of `kind` for `record`.
pub(super) fn event_of(record: &ContainerRecord, kind: EventKind) -> ContainerEvent {
    let exit = record.exit.as_ref().filter(|_| kind == EventKind::Stopped);
    ContainerEvent {
        kind,
        container_id: record.id.clone(),
        pod_id: record.pod_id.clone(),
        at: exit.map_or_else(crate::clock::now_unix_nanos, |e| e.finished_at),
        exit_reason: exit.map(|e| e.reason.clone()),
    }
}
