//! The container lifecycle: create, start, stop, remove, status, list,
//! ExecSync and log reopening, over crash-safe records.
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1::{ContainerConfig, ContainerMetadata};
use nix::sys::signal::Signal;
use oci_spec::runtime::{ProcessBuilder, Spec};
use serde::{Deserialize, Serialize};

use crate::cgroups::{self, CgroupManager, Resources};
use crate::config::CgroupDriver;
use crate::executor::exec::{ExecSyncOutput, ExecTarget};
use crate::monitor::{self, MonitorSpec, Started};
use crate::store::{Record, Store, StoreError};

use super::rootfs::{Overlay, RootfsError};
use super::spec::{self, ImageRunConfig, PodContext, SpecError};
use super::state::{Exit, State};
use super::user::{self, UserError};

/// How long a container may take to die after SIGKILL before Stop fails.
const KILL_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container config has no metadata")]
    NoMetadata,
    #[error("container metadata has an empty name")]
    EmptyName,
    #[error("pod sandbox {0} is not ready: containers can only be created in a ready pod")]
    PodNotReady(String),
    #[error("container name {name:?} is already in use by container {id}")]
    NameTaken { name: String, id: String },
    #[error("container {id} is {state}: {action}")]
    WrongState {
        id: String,
        state: &'static str,
        action: &'static str,
    },
    #[error("failed to start container {id}: {message}")]
    StartFailed { id: String, message: String },
    #[error("exec in container {id}: {message}")]
    Exec { id: String, message: String },
    #[error("command timed out after {0:?}")]
    ExecTimeout(Duration),
    #[error("container {id} did not exit within {grace:?} of SIGKILL")]
    Unkillable { id: String, grace: Duration },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    User(#[from] UserError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Monitor(#[from] monitor::MonitorError),
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("internal task failed: {0}")]
    Join(String),
}

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
}

/// A container's persisted record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// The reserved name: `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`.
    pub reserved_name: String,
    pub pod_id: String,
    pub metadata: ContainerMetadata,
    pub config: ContainerConfig,
    pub image_id: String,
    pub image_ref: String,
    pub created_at: i64,
    pub state: State,
    pub started: Option<Started>,
    pub exit: Option<Exit>,
    /// Empty when the pod has no log directory.
    pub log_path: String,
    pub cgroup_path: String,
    pub overlay: Overlay,
    pub stop_signal: String,
    /// Set while StartContainer runs: found set at start, the start was
    /// cut off by a crash.
    #[serde(default)]
    pub starting: bool,
}

impl Record for ContainerRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.reserved_name
    }
}

impl ContainerRecord {
    pub fn started_at(&self) -> i64 {
        self.started
            .as_ref()
            .map(|s| s.started_at_unix_nano)
            .unwrap_or(0)
    }
}

/// Filters of ListContainers, in domain terms.
#[derive(Debug, Default, Clone)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub pod_id: Option<String>,
    pub state: Option<State>,
    pub labels: HashMap<String, String>,
}

/// What ExecSync returns.
pub type ExecOutput = ExecSyncOutput;

#[derive(Clone)]
pub struct ContainerManager {
    store: Store<ContainerRecord>,
    bundles: PathBuf,
    exits: PathBuf,
    sockets: PathBuf,
    cgroups: Option<CgroupManager>,
    driver: CgroupDriver,
    exe: PathBuf,
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_owned();
    move |source| ContainerError::Io {
        context,
        path,
        source,
    }
}

/// Runs blocking work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ContainerError> + Send + 'static,
) -> Result<T, ContainerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ContainerError::Join(e.to_string()))?
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
        };
        manager.reconcile().await?;
        Ok(manager)
    }

    fn bundle_dir(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    fn exit_file(&self, id: &str) -> PathBuf {
        self.exits.join(id).join("exit")
    }

    fn socket(&self, id: &str) -> PathBuf {
        self.sockets
            .join(format!("{}.sock", &id[..id.len().min(32)]))
    }

    /// The ketch binary that exec helpers (`ketch exec`) run.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// The attach/control socket of a container's monitor.
    pub fn attach_socket(&self, id: &str) -> Result<PathBuf, ContainerError> {
        let record = self.store.get(id)?;
        Ok(self.socket(&record.id))
    }

    /// Loads every record; a container whose monitor died while ketch was
    /// down gets its exit status; half-made containers are removed; one
    /// bad record is logged and skipped.
    async fn reconcile(&self) -> Result<(), ContainerError> {
        let mut known = std::collections::HashSet::new();
        for (id, record) in self.store.load()? {
            let mut record = match record {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(container = %id, "skipping unreadable container record: {e}");
                    known.insert(id);
                    continue;
                }
            };
            known.insert(id.clone());
            let reservation = match self.store.reserve_with_id(&record.reserved_name, &id) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(container = %id, "skipping container record: {e}");
                    continue;
                }
            };
            if record.state == State::Running {
                self.refresh(&mut record);
                if record.state != State::Running {
                    self.store.persist(&record)?;
                }
            }
            if record.starting {
                self.abandon_start(&mut record);
                self.store.persist(&record)?;
            }
            self.store.adopt(reservation, record)?;
        }
        // Bundles without a record: a create cut off by a crash.
        if let Ok(entries) = std::fs::read_dir(&self.bundles) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if !known.contains(&id) {
                    tracing::info!(container = %id, "removing a container left half-made by a crash");
                    self.remove_files(&id, &entry.path().join("rootfs"));
                }
            }
        }
        Ok(())
    }

    /// A StartContainer cut off by a crash: whatever it started (the
    /// monitor, found by its bundle argument, and everything in the
    /// container's cgroup) is killed, and the container is EXITED with a
    /// start error, as if the start had failed.
    fn abandon_start(&self, record: &mut ContainerRecord) {
        let bundle = self.bundle_dir(&record.id).display().to_string();
        for pid in processes_mentioning(&bundle) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(cg) = self.open_cgroup(record) {
            let _ = cg.kill_all();
        }
        tracing::warn!(container = %record.id, "a start was cut off by a restart; marking it failed");
        record.starting = false;
        record.state = State::Exited;
        record.exit = Some(Exit::start_error(
            "the start was interrupted by a ketch restart".into(),
            now_nanos(),
        ));
    }

    /// Moves a RUNNING record to EXITED when its process is gone: the exit
    /// file's status, or (monitor and process both gone without one) an
    /// unknown exit.
    fn refresh(&self, record: &mut ContainerRecord) {
        self.refresh_with(record, true)
    }

    /// As [`Self::refresh`]; without `probe_processes` only the exit file
    /// is read (what ListContainers does for each of possibly many
    /// containers: a monitor that died without an exit file is noticed by
    /// the next ContainerStatus).
    fn refresh_with(&self, record: &mut ContainerRecord, probe_processes: bool) {
        if record.state != State::Running {
            return;
        }
        let exit_file = self.exit_file(&record.id);
        match monitor::read_exit_file(&exit_file) {
            Ok(Some(status)) => {
                let mut exit = Exit::from_code(
                    status.exit_code,
                    status.finished_at_unix_nano,
                    status.oom_killed,
                );
                exit.reason = status.reason;
                record.exit = Some(exit);
                record.state = State::Exited;
            }
            Ok(None) => {
                let Some(started) = record.started.as_ref().filter(|_| probe_processes) else {
                    return;
                };
                let alive = monitor::is_alive(started.monitor_pid, started.monitor_start_time)
                    || monitor::is_alive(started.container_pid, started.container_start_time);
                // The monitor writes the exit file before it exits; check
                // again so an exit between the two reads is not lost.
                if !alive && matches!(monitor::read_exit_file(&exit_file), Ok(None)) {
                    record.exit = Some(Exit {
                        code: 255,
                        finished_at: now_nanos(),
                        reason: "Unknown".into(),
                        message: "the container's monitor ended without recording an exit status"
                            .into(),
                    });
                    record.state = State::Exited;
                } else if !alive {
                    self.refresh(record);
                }
            }
            Err(e) => tracing::warn!(container = %record.id, "unreadable exit file: {e}"),
        }
    }

    /// The record with its state brought up to date (persisted when it
    /// changed and the lock is free; never waits on an operation).
    pub fn status(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        let mut record = (*self.store.get(id)?).clone();
        let before = record.state;
        self.refresh(&mut record);
        if record.state != before {
            self.persist_refresh(&record);
        }
        Ok(record)
    }

    /// Records an exit seen by a reader, in the background under the lock.
    fn persist_refresh(&self, seen: &ContainerRecord) {
        let manager = self.clone();
        let id = seen.id.clone();
        tokio::spawn(async move {
            if let Ok(mut guard) = manager.store.lock(&id).await {
                let mut record = (*guard.get()).clone();
                if record.state == State::Running {
                    manager.refresh(&mut record);
                    if record.state != State::Running
                        && let Err(e) = guard.save(record)
                    {
                        tracing::warn!(container = %id, "cannot record exit: {e}");
                    }
                }
            }
        });
    }

    pub fn list(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
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
            .filter(|r| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| r.config.labels.get(k) == Some(v))
            })
            .map(|r| {
                let mut record = (*r).clone();
                let before = record.state;
                self.refresh_with(&mut record, false);
                if record.state != before {
                    self.persist_refresh(&record);
                }
                record
            })
            .filter(|r| filter.state.is_none_or(|s| r.state == s))
            .collect()
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

    /// CreateContainer: reserves the name, prepares the rootfs and the
    /// bundle, records CREATED. Every failure undoes what it made.
    pub async fn create(
        &self,
        pod: &PodInfo,
        config: ContainerConfig,
        image: ImageInfo,
    ) -> Result<String, ContainerError> {
        let metadata = config.metadata.clone().ok_or(ContainerError::NoMetadata)?;
        if metadata.name.is_empty() {
            return Err(ContainerError::EmptyName);
        }
        if !pod.ready {
            return Err(ContainerError::PodNotReady(pod.id.clone()));
        }
        let reserved_name = format!(
            "{}_{}_{}_{}_{}",
            metadata.name, pod.name, pod.namespace, pod.uid, metadata.attempt
        );
        let reservation = self.store.reserve(&reserved_name).map_err(|e| match e {
            StoreError::NameTaken { name, id, .. } => ContainerError::NameTaken { name, id },
            other => other.into(),
        })?;
        let id = reservation.id().to_owned();
        let bundle = self.bundle_dir(&id);
        let overlay = Overlay {
            lowerdirs: image.lowerdirs.clone(),
            upperdir: bundle.join("upper"),
            workdir: bundle.join("work"),
            target: bundle.join("rootfs"),
        };
        let log_path = if pod.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(&pod.log_directory)
                .join(&config.log_path)
                .display()
                .to_string()
        };
        let cgroup_path =
            cgroups::container_cgroup_path(self.driver, &pod.context.cgroup_parent, &id)?;

        let prepared = {
            let (config, image, pod, overlay, bundle, cgroup_path, exit_dir) = (
                config.clone(),
                image.clone(),
                pod.clone(),
                overlay.clone(),
                bundle.clone(),
                cgroup_path.clone(),
                self.exits.join(&id),
            );
            blocking(move || {
                std::fs::create_dir_all(&bundle).map_err(io_err("create", &bundle))?;
                std::fs::create_dir_all(&exit_dir).map_err(io_err("create", &exit_dir))?;
                overlay.mount()?;
                let security = config
                    .linux
                    .as_ref()
                    .and_then(|l| l.security_context.as_ref());
                let user = user::resolve(&overlay.target, &image.run_config.user, security)?;
                let spec = spec::build(
                    &config,
                    &image.run_config,
                    &pod.context,
                    &user,
                    &overlay.target,
                    &cgroup_path,
                )?;
                let json = serde_json::to_vec_pretty(&spec).map_err(|e| {
                    io_err("encode spec", &bundle)(std::io::Error::other(e.to_string()))
                })?;
                crate::store::write_atomic(&bundle.join("config.json"), &json, 0o644)
                    .map_err(|e| io_err("write", &bundle.join("config.json"))(e.into()))?;
                Ok(())
            })
            .await
        };
        if let Err(e) = prepared {
            let (manager, id2, target) = (self.clone(), id.clone(), overlay.target.clone());
            let _ = blocking(move || {
                manager.remove_files(&id2, &target);
                Ok(())
            })
            .await;
            return Err(e);
        }

        let record = ContainerRecord {
            id: id.clone(),
            reserved_name,
            pod_id: pod.id.clone(),
            metadata,
            image_id: image.id.clone(),
            image_ref: image.reference.clone(),
            created_at: now_nanos(),
            state: State::Created,
            started: None,
            exit: None,
            log_path,
            cgroup_path,
            overlay: overlay.clone(),
            stop_signal: image.run_config.stop_signal.clone(),
            starting: false,
            config,
        };
        crate::sandbox::crash_point("create-container-before-record");
        if let Err(e) = self.store.insert(reservation, record) {
            self.remove_files(&id, &overlay.target);
            return Err(e.into());
        }
        Ok(id)
    }

    /// Unmounts and deletes what a container made on disk. Best effort:
    /// logs what it cannot remove.
    fn remove_files(&self, id: &str, rootfs: &Path) {
        if let Err(e) = super::rootfs::unmount(rootfs) {
            tracing::warn!(container = %id, "{e}");
        }
        for dir in [self.bundle_dir(id), self.exits.join(id)] {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(container = %id, "remove {}: {e}", dir.display());
            }
        }
        let _ = std::fs::remove_file(self.socket(id));
    }

    /// StartContainer: only from CREATED. A start that fails leaves the
    /// container EXITED with reason StartError and the cause as message.
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let mut guard = self.store.lock(id).await?;
        let record = (*guard.get()).clone();
        record
            .state
            .check_start()
            .map_err(|_| ContainerError::WrongState {
                id: record.id.clone(),
                state: record.state.cri_name(),
                action: "only a created container can be started",
            })?;
        let id = record.id.clone();

        // Mark the start in the record first: a crash while the monitor
        // starts leaves a trace the reconcile acts on.
        let mut record = record;
        record.starting = true;
        guard.save(record.clone())?;
        crate::sandbox::crash_point("start-container-before-monitor");
        let manager = self.clone();
        let r = record.clone();
        let result = blocking(move || manager.launch(&r)).await;
        crate::sandbox::crash_point("start-container-after-monitor");
        record.starting = false;
        match result {
            Ok(started) => {
                for warning in &started.warnings {
                    tracing::warn!(container = %id, "{warning}");
                }
                record.started = Some(started);
                record.state = State::Running;
                guard.save(record)?;
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                record.exit = Some(Exit::start_error(message.clone(), now_nanos()));
                record.state = State::Exited;
                guard.save(record)?;
                Err(ContainerError::StartFailed { id, message })
            }
        }
    }

    /// Mounts the rootfs if a reboot took it, makes the cgroup and starts
    /// the monitor. Blocking.
    fn launch(&self, record: &ContainerRecord) -> Result<Started, ContainerError> {
        if !is_mountpoint(&record.overlay.target) {
            record.overlay.mount()?;
        }
        let bundle = self.bundle_dir(&record.id);
        let exit_file = self.exit_file(&record.id);
        if let Some(dir) = exit_file.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let mut cgroup_dirs = Vec::new();
        let mut cgroup = None;
        if let Some(manager) = &self.cgroups {
            let spec: Spec =
                crate::executor::load_spec(&bundle).map_err(|e| ContainerError::StartFailed {
                    id: record.id.clone(),
                    message: e.to_string(),
                })?;
            let resources = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().as_ref())
                .map(Resources::from)
                .unwrap_or_default();
            let cg = manager.create(&record.cgroup_path, &resources)?;
            cgroup_dirs = cg.dirs().into_iter().map(|d| d.path).collect();
            cgroup = Some(cg);
        }
        if !record.log_path.is_empty()
            && let Some(dir) = Path::new(&record.log_path).parent()
        {
            std::fs::create_dir_all(dir).map_err(io_err("create log dir", dir))?;
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
            exe: Some(self.exe.clone()),
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

    /// StopContainer: the stop signal, then SIGKILL at the timeout; returns
    /// once the process is gone. Unknown IDs and stopped containers are
    /// fine.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let mut guard = match self.store.lock(id).await {
            Ok(g) => g,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut record = (*guard.get()).clone();
        self.refresh(&mut record);
        if record.state == State::Running {
            self.kill(&record, timeout).await?;
            self.refresh(&mut record);
        }
        if record.state == State::Created {
            // Never started: nothing runs, but it can no longer start.
            record.state = State::Exited;
            record.exit = Some(Exit {
                code: 0,
                finished_at: now_nanos(),
                reason: "Stopped".into(),
                message: "stopped before it started".into(),
            });
        }
        if record.state != guard.get().state {
            guard.save(record)?;
        }
        Ok(())
    }

    async fn kill(
        &self,
        record: &ContainerRecord,
        timeout: Duration,
    ) -> Result<(), ContainerError> {
        let Some(started) = record.started.clone() else {
            return Ok(());
        };
        let exit_file = self.exit_file(&record.id);
        let signal = parse_signal(&record.stop_signal).unwrap_or(Signal::SIGTERM);
        if !timeout.is_zero() {
            monitor::signal_container(started.container_pid, started.container_start_time, signal)?;
            if monitor::wait_for_exit(&exit_file, timeout).await?.is_some() {
                return Ok(());
            }
        }
        monitor::signal_container(
            started.container_pid,
            started.container_start_time,
            Signal::SIGKILL,
        )?;
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
        self.refresh(&mut probe);
        if probe.state == State::Exited {
            return Ok(());
        }
        Err(ContainerError::Unkillable {
            id: record.id.clone(),
            grace: KILL_GRACE,
        })
    }

    fn open_cgroup(&self, record: &ContainerRecord) -> Option<cgroups::Cgroup> {
        self.cgroups
            .as_ref()
            .and_then(|m| m.open(&record.cgroup_path).ok())
    }

    /// RemoveContainer: stops it if running, then releases the rootfs,
    /// cgroup, dirs and name. Returns the removed record (its image lease
    /// is the caller's to release); `None` for an unknown ID.
    pub async fn remove(&self, id: &str) -> Result<Option<ContainerRecord>, ContainerError> {
        let guard = match self.store.lock(id).await {
            Ok(g) => g,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut record = (*guard.get()).clone();
        self.refresh(&mut record);
        if record.state == State::Running {
            self.kill(&record, Duration::ZERO).await?;
        }
        let manager = self.clone();
        let r = record.clone();
        blocking(move || {
            if let Some(cg) = manager.open_cgroup(&r) {
                cg.kill_all()?;
                cg.destroy()?;
            }
            manager.remove_files(&r.id, &r.overlay.target);
            Ok(())
        })
        .await?;
        guard.remove()?;
        Ok(Some(record))
    }

    /// ExecSync: runs `cmd` in the running container with its env, user
    /// and working dir.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, ContainerError> {
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
        let exe = self.exe.clone();
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

    /// The process of an exec: the container's own user, env, cwd and
    /// capabilities with another argv.
    pub fn exec_process(
        &self,
        record: &ContainerRecord,
        cmd: Vec<String>,
        tty: bool,
    ) -> Result<oci_spec::runtime::Process, ContainerError> {
        let spec = crate::executor::load_spec(&self.bundle_dir(&record.id)).map_err(|e| {
            ContainerError::Exec {
                id: record.id.clone(),
                message: e.to_string(),
            }
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
        builder.build().map_err(|e| ContainerError::Spec(e.into()))
    }

    /// ReopenContainerLog: never waits on the container's operation lock.
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

    /// UpdateContainerResources: applies to the container's cgroup.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: Resources,
    ) -> Result<(), ContainerError> {
        let guard = self.store.lock(id).await?;
        let record = guard.get();
        if record.state == State::Running
            && let Some(cg) = self.open_cgroup(&record)
        {
            blocking(move || cg.update(&resources).map_err(ContainerError::from)).await?;
        }
        Ok(())
    }

    /// Resource usage of a running container's cgroup.
    pub fn stats(&self, id: &str) -> Result<Option<cgroups::Stats>, ContainerError> {
        let record = self.store.get(id)?;
        match self.open_cgroup(&record) {
            Some(cg) => Ok(Some(cg.stats()?)),
            None => Ok(None),
        }
    }
}

fn parse_signal(name: &str) -> Option<Signal> {
    if name.is_empty() {
        return None;
    }
    if let Ok(n) = name.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().ok()
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

fn is_mountpoint(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.display().to_string();
    text.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == wanted))
}

/// Shared handle, as the runtime holds it.
pub type SharedContainers = Arc<ContainerManager>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_every_form() {
        assert_eq!(parse_signal("SIGUSR1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("usr1"), Some(Signal::SIGUSR1));
        assert_eq!(parse_signal("15"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
