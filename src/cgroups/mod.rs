//! Control groups: a container's limits, usage statistics, OOM detection and
//! the "kill everything in it" that stopping a container needs.
//!
//! Both cgroup versions are supported and chosen once, at start, by
//! [`CgroupManager::detect`]: cgroup v2 when `/sys/fs/cgroup` is a cgroup2
//! mount (`CGROUP2_SUPER_MAGIC`), otherwise the v1 hierarchies listed in
//! `/proc/self/mountinfo`. On a hybrid host (v1 controllers plus a
//! controller-less cgroup2 at `/sys/fs/cgroup/unified`) ketch uses v1, as
//! runc's cgroupfs driver does, and leaves the unified tree alone.
//!
//! # Paths
//! A cgroup is named by a path relative to the hierarchy root,
//! `/kubepods/burstable/pod<uid>/<container-id>`; the same path is used in
//! every v1 hierarchy. [`container_cgroup_path`] derives it from the pod's
//! `cgroup_parent` and the configured `cgroup_driver`:
//! - `cgroupfs`: `<cgroup_parent>/<id>`, or `/ketch/<id>` without a parent.
//! - `systemd`: kubelet sends a slice name (`kubepods-burstable-pod1234.slice`);
//!   it is expanded as systemd does ([`expand_slice`]) to
//!   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice`
//!   and the container gets `ketch-<id>.scope` in it. ketch still writes
//!   these dirs through cgroupfs as well; the container's scope unit is
//!   made over D-Bus by [`crate::systemd`], which also prefixes the path
//!   with the systemd manager's own cgroup.
//!
//! # Use by the container lifecycle and the executor
//! - Once at start: `let cgroups = CgroupManager::detect()?` (cheap to clone).
//! - CreateContainer: `path = container_cgroup_path(driver,
//!   &pod.cgroup_parent, &id)?`; put it in the OCI spec's
//!   `linux.cgroupsPath` and persist it.
//! - StartContainer (executor), before the process exists: `let cg =
//!   cgroups.create(&path, &Resources::from(spec_linux_resources))?`. The OCI
//!   route carries the device rules (with runc's default-allowed devices
//!   appended) and pids limit; `Resources::from(&cri_resources)` has
//!   neither. The executor forks the container process, which waits
//!   (on a sync pipe) while the parent calls `cg.add_process(pid)`; only then
//!   does it `unshare(CLONE_NEWCGROUP)` (so its cgroup namespace is rooted at
//!   its own cgroup), set up and exec. A process in the cgroup from the
//!   first instruction cannot allocate outside its limit. Set
//!   `oom_score_adj` on the process: it is not a cgroup setting.
//! - UpdateContainerResources: `cg.update(&Resources::from(&r))`, and keep the
//!   effective set with [`Resources::merge`] for ContainerStatus.
//! - ContainerStats / PodSandboxStats: `cg.stats()`; the pod's through
//!   `cgroups.open(&parent_cgroup_path(driver, &pod.cgroup_parent)?)`. CPU
//!   nano-cores come from two samples.
//! - When the container process exits, the monitor compares the memory
//!   cgroup's `oom_kill` count with the one it took before the start, for
//!   the `OOMKilled` reason (`monitor::run`: it knows the container's
//!   directories, not its cgroup path, and must count before the start);
//!   `cg.oom_killed()` answers for an exit no monitor recorded
//!   (`container::status`). Read either before `destroy`, which discards
//!   the counter.
//! - Inside the container, `/sys/fs/cgroup` shows its own cgroup as the
//!   root of its cgroup namespace ([`CgroupFs`], `executor::mount_plan`).
//! - StopContainer: signal the main process; at the timeout `cg.kill_all()`
//!   kills every process in the cgroup (also those the main process left
//!   behind, which a single kill would miss).
//! - RemoveContainer: `cg.kill_all()` if anything is left, then
//!   `cg.destroy()`: idempotent, waits briefly for exiting tasks, removes
//!   the dir in every hierarchy (and any cgroups the container made below
//!   it). Parents are never removed: the pod's belongs to kubelet and
//!   `/ketch` is shared by every container.
//! - After a daemon restart: `cgroups.open(&persisted_path)` (NotFound when it
//!   is gone, e.g. after a reboot: nothing to clean then).
//!
//! All calls are synchronous file operations on cgroupfs: microseconds,
//! except `destroy` and `kill_all`, which may wait up to a few seconds for
//! tasks to leave; async callers run those in `spawn_blocking`.
//!
//! # Why hand-written
//! The file interface is small. youki's libcgroups brings a D-Bus systemd
//! client and a large dependency tree; generic wrappers such as cgroups-rs
//! still leave what matters most here to the caller: kubelet's working-set
//! arithmetic, runc's v1→v2 conversions and write ordering, OOM and
//! kill-everything semantics, a manager rooted at a delegated v2 subtree.
//! Owning these few hundred lines keeps every write and its order visible.
//! A create or an update is first a plan (`plan`: the directories per
//! hierarchy and the writes in order, built from [`Resources`] alone), then
//! applied; the plans are unit-tested without root.
//!
//! Device access rules ([`DeviceRule`]) are `devices.allow`/`devices.deny`
//! writes on v1 and an eBPF device program attached to the cgroup on v2
//! ([`devices_bpf`]), with the same meaning.

pub(crate) mod container_fs;
mod devices_bpf;
mod error;
mod files;
pub mod parse;
mod path;
mod plan;
mod resources;
pub mod stats;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};
use nix::unistd::Pid;

pub use container_fs::CgroupFs;
pub use error::{CgroupError, Result};
pub use path::{container_cgroup_path, normalize, parent_cgroup_path};
pub use resources::{HugepageLimit, Resources, shares_to_weight};
pub use stats::Stats;

/// Where the cgroup filesystems are mounted on every mainstream distribution.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long `destroy` retries `rmdir` while tasks are still leaving.
pub const DESTROY_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl std::fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        })
    }
}

/// One directory of a cgroup: v1 has one per hierarchy, v2 exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The hierarchy's controllers (`["cpu", "cpuacct"]`, `["name=systemd"]`);
    /// empty for v2.
    pub controllers: Vec<String>,
    /// The hierarchy's mount point (for bind-mounting it into a container).
    pub mount_point: PathBuf,
    /// The cgroup's directory in it.
    pub path: PathBuf,
}

#[derive(Debug)]
enum Layout {
    V1(v1::V1),
    V2(v2::V2),
}

/// The host's cgroup layout; makes and opens [`Cgroup`]s. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CgroupManager {
    layout: Arc<Layout>,
}

impl CgroupManager {
    /// Detects the host's cgroup version and mounts (see the module doc).
    pub fn detect() -> Result<Self> {
        Self::detect_with(None)
    }

    /// [`CgroupManager::detect`] with the cgroup lines of the mount table
    /// given (a container's monitor gets them from the daemon, which read
    /// them once), so that `/proc/self/mountinfo`, which lists every mount
    /// of the node, is read only when they are not.
    pub fn detect_with(mount_table: Option<&str>) -> Result<Self> {
        let root = Path::new(CGROUP_ROOT);
        if is_cgroup2(root) {
            return Self::v2_at(root);
        }
        let read;
        let mountinfo = match mount_table {
            Some(table) => table,
            None => {
                read = files::read(Path::new("/proc/self/mountinfo"))?;
                read.as_str()
            }
        };
        let mounts = parse::parse_mountinfo(mountinfo);
        let v1 = v1::V1::from_mounts(&mounts).ok_or_else(|| {
            CgroupError::NoCgroupFs(format!(
                "{CGROUP_ROOT} is not cgroup2 and no cgroup v1 hierarchy is mounted"
            ))
        })?;
        Ok(Self {
            layout: Arc::new(Layout::V1(v1)),
        })
    }

    /// A v2 manager whose paths are relative to `root`: a cgroup2 mount
    /// point, or a cgroup2 directory delegated to ketch (paths then never
    /// leave it, and controllers are enabled only inside it). Fails unless
    /// `root` is on a cgroup2 filesystem.
    pub fn v2_at(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        if !is_cgroup2(root) {
            return Err(CgroupError::NoCgroupFs(format!(
                "{} is not a cgroup2 directory",
                root.display()
            )));
        }
        Ok(Self {
            layout: Arc::new(Layout::V2(v2::V2 {
                root: root.to_path_buf(),
            })),
        })
    }

    pub fn version(&self) -> CgroupVersion {
        match &*self.layout {
            Layout::V1(_) => CgroupVersion::V1,
            Layout::V2(_) => CgroupVersion::V2,
        }
    }

    /// How a container mounts this host's cgroup filesystems at
    /// `/sys/fs/cgroup` (see [`CgroupFs`]).
    pub fn container_fs(&self) -> CgroupFs {
        match &*self.layout {
            Layout::V1(v) => CgroupFs::v1(&v.hierarchies),
            Layout::V2(_) => CgroupFs::V2,
        }
    }

    /// Controllers available: every mounted v1 controller, or those the v2
    /// root offers its children (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>> {
        match &*self.layout {
            Layout::V1(v) => Ok(v.controllers()),
            Layout::V2(v) => v.controllers(),
        }
    }

    /// Creates the cgroup at `path` (and any missing parents) and applies
    /// `resources`. An existing cgroup is reused and reconfigured. On
    /// failure every dir this call made is removed again.
    pub fn create(&self, path: &str, resources: &Resources) -> Result<Cgroup> {
        let path = normalize(path)?;
        resources.validate()?;
        match &*self.layout {
            Layout::V1(v) => v.create(&path, resources)?,
            Layout::V2(v) => v.create(&path, resources)?,
        }
        Ok(self.handle(path))
    }

    /// Opens an existing cgroup (a container's after a restart, a pod's
    /// parent for its stats). `NotFound` when it does not exist.
    pub fn open(&self, path: &str) -> Result<Cgroup> {
        let path = normalize(path)?;
        let exists = match &*self.layout {
            Layout::V1(v) => v.exists(&path),
            Layout::V2(v) => v.exists(&path),
        };
        if !exists {
            return Err(CgroupError::NotFound { path });
        }
        Ok(self.handle(path))
    }

    /// The cgroup of process `pid` as the kernel reports it in
    /// `/proc/<pid>/cgroup`: on v2 the unified path, on v1 the path in the
    /// memory hierarchy (or the first one listed without memory). For the
    /// managers `detect` returns this is the form [`Cgroup::path`] has.
    pub fn cgroup_of(&self, pid: Pid) -> Result<String> {
        let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let entries = parse::parse_proc_cgroup(&files::read(&file)?);
        let entry = match &*self.layout {
            Layout::V2(_) => entries.iter().find(|e| e.hierarchy_id == 0),
            Layout::V1(_) => entries
                .iter()
                .find(|e| e.controllers.iter().any(|c| c == "memory"))
                .or_else(|| entries.iter().find(|e| e.hierarchy_id != 0)),
        };
        entry
            .map(|e| e.path.clone())
            .ok_or_else(|| CgroupError::Parse {
                path: file,
                reason: format!("no {} entry", self.version()),
            })
    }

    fn handle(&self, path: String) -> Cgroup {
        Cgroup {
            manager: self.clone(),
            path,
        }
    }
}

fn is_cgroup2(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// One cgroup (in every hierarchy, on v1). Holds no file descriptors:
/// persisting [`Cgroup::path`] is enough to come back to it.
#[derive(Debug, Clone)]
pub struct Cgroup {
    manager: CgroupManager,
    path: String,
}

impl Cgroup {
    /// The normalised path (`/kubepods/pod1/<id>`), the thing to persist.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// On a hybrid host (v1 controllers, a cgroup2 tree beside them): the
    /// cgroup's directory in that cgroup2 tree, when it exists. ketch
    /// leaves that tree alone, but systemd tracks its units' processes
    /// there, so a process of a scope unit must be in it too.
    pub fn hybrid_unified_dir(&self) -> Option<PathBuf> {
        let Layout::V1(_) = &*self.manager.layout else {
            return None;
        };
        let mountinfo = files::read(Path::new("/proc/self/mountinfo")).ok()?;
        let mount = parse::parse_mountinfo(&mountinfo)
            .into_iter()
            .find(|m| m.kind == parse::MountKind::V2)?;
        let dir = mount.mount_point.join(self.path.trim_start_matches('/'));
        dir.is_dir().then_some(dir)
    }

    /// The cgroup's directories (one per v1 hierarchy).
    pub fn dirs(&self) -> Vec<CgroupDir> {
        match &*self.manager.layout {
            Layout::V1(v) => v
                .hierarchies
                .iter()
                .zip(v.dirs(&self.path))
                .map(|(h, (controllers, path))| CgroupDir {
                    controllers,
                    mount_point: h.mount_point.clone(),
                    path,
                })
                .collect(),
            Layout::V2(v) => vec![CgroupDir {
                controllers: Vec::new(),
                mount_point: v.root.clone(),
                path: v.dir(&self.path),
            }],
        }
    }

    /// Moves process `pid` (all its threads) into the cgroup; its future
    /// children are born in it.
    pub fn add_process(&self, pid: Pid) -> Result<()> {
        match &*self.manager.layout {
            Layout::V1(v) => v.add_process(&self.path, pid),
            Layout::V2(v) => v.add_process(&self.path, pid),
        }
    }

    /// Applies the settings `resources` has; the others stay as they are.
    pub fn update(&self, resources: &Resources) -> Result<()> {
        resources.validate()?;
        match &*self.manager.layout {
            Layout::V1(v) => v.apply(&self.path, resources),
            Layout::V2(v) => v.apply(&self.path, resources),
        }
    }

    pub fn stats(&self) -> Result<Stats> {
        match &*self.manager.layout {
            Layout::V1(v) => v.stats(&self.path),
            Layout::V2(v) => v.stats(&self.path),
        }
    }

    /// Whether the kernel's OOM killer killed a process in this cgroup:
    /// v2 `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill`
    /// (with a `memory.failcnt` heuristic on kernels before 4.13).
    pub fn oom_killed(&self) -> Result<bool> {
        match &*self.manager.layout {
            Layout::V1(v) => v.oom_killed(&self.path),
            Layout::V2(v) => v.oom_killed(&self.path),
        }
    }

    /// Every process in the cgroup and in cgroups below it, sorted.
    pub fn pids(&self) -> Result<Vec<Pid>> {
        match &*self.manager.layout {
            Layout::V1(v) => v.pids(&self.path),
            Layout::V2(v) => v.pids(&self.path),
        }
    }

    /// SIGKILLs every process in the cgroup and below, without a window for
    /// one to fork away: v2 `cgroup.kill` where the kernel has it, else
    /// freeze, kill each pid, thaw. Returns once signalled; the processes
    /// are gone when their parents reap them, which `destroy` waits for.
    /// A cgroup that no longer exists has nothing to kill: `Ok`.
    pub fn kill_all(&self) -> Result<()> {
        match &*self.manager.layout {
            Layout::V1(v) => v.kill_all(&self.path),
            Layout::V2(v) => v.kill_all(&self.path),
        }
    }

    /// Removes the cgroup in every hierarchy, with any cgroups below it.
    /// Idempotent: a missing dir is success. Retries for up to
    /// [`DESTROY_TIMEOUT`] while tasks are still leaving, then fails with
    /// `Busy`; it never kills (call `kill_all` first).
    pub fn destroy(&self) -> Result<()> {
        match &*self.manager.layout {
            Layout::V1(v) => v.destroy(&self.path, DESTROY_TIMEOUT),
            Layout::V2(v) => v.destroy(&self.path, DESTROY_TIMEOUT),
        }
    }
}
