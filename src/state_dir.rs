//! The state directory is volatile: what it holds (namespace pins, pod
//! files, monitor sockets, exit files) describes processes and mounts of
//! this boot only, and must be gone after a reboot. Nodes get that from a
//! `/run` on tmpfs; where `state_dir` is on persistent storage instead (a
//! host whose `/run` is part of the root filesystem), ketch mounts a tmpfs
//! on it at start (`state_dir_tmpfs`, on by default).
//!
//! That is also what makes it cheap: every pod and container makes and
//! later removes a dozen inodes there, and on a filesystem such as ext4
//! without a journal each new inode is found by skipping the ones freed in
//! the last seconds, one inode-table lookup each (`find_inode_bit`,
//! `recently_deleted` in fs/ext4/ialloc.c), which many pods started at
//! once pay over and over.
//!
//! The mount is made before the socket's lock is taken, so a second daemon
//! finds the same tmpfs. It is never made over a directory that holds
//! another run's pods or containers (a ketch that ran there before this
//! version, whose containers may still run): those would be hidden; nor
//! over a mount point, a volume given to ketch on purpose (a host directory
//! bound into ketch's container so the host sees its socket), which a tmpfs
//! would cut off. It stays mounted when ketch stops, as the containers
//! outlive the daemon; a start that fails before serving takes it down
//! again.
//!
//! [`plan`] decides from facts; [`prepare`] reads them and mounts.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};

/// ramfs's `f_type` (linux/magic.h), which nix does not name.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// The subdirectories of `state_dir` whose entries are a run's live state.
const STATE_SUBDIRS: [&str; 3] = ["pods", "containers", "sock"];

/// Where the runtime handlers' state is: a directory per handler (made by
/// the OCI runtime and left when its last container goes), whose entries
/// are containers.
const RUNTIMES_SUBDIR: &str = "runtimes";

/// What to do with the state directory at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// `state_dir_tmpfs = false`.
    Disabled,
    /// Already on a memory filesystem (the node's tmpfs `/run`, or the
    /// tmpfs an earlier start of ketch mounted).
    AlreadyVolatile,
    /// On persistent storage and empty of state: mount a tmpfs.
    Mount,
    /// A mount point of its own (a volume someone gave ketch, e.g. a host
    /// directory bound into ketch's container to share the socket), which
    /// a tmpfs over it would cut off from whoever else sees it.
    KeepVolume,
    /// On persistent storage with another run's state in it (this path),
    /// which a mount would hide.
    KeepForState(PathBuf),
}

/// What is known of the state directory at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// On tmpfs or ramfs.
    pub on_memory_fs: bool,
    /// A mount point itself.
    pub is_mount_point: bool,
    /// The first entry of a run's state found in it.
    pub live_entry: Option<PathBuf>,
}

/// Decides from the facts and the `state_dir_tmpfs` setting.
pub(crate) fn plan(enabled: bool, facts: Facts) -> Plan {
    if !enabled {
        Plan::Disabled
    } else if facts.on_memory_fs {
        Plan::AlreadyVolatile
    } else if facts.is_mount_point {
        Plan::KeepVolume
    } else if let Some(entry) = facts.live_entry {
        Plan::KeepForState(entry)
    } else {
        Plan::Mount
    }
}

/// Whether a filesystem type keeps its content in memory only.
fn is_memory_fs(fs_type: FsType) -> bool {
    fs_type == TMPFS_MAGIC || fs_type == RAMFS_MAGIC
}

/// Whether `dir` is a mount point (by the mount table: a bind mount from
/// the same filesystem has the same device as its parent).
fn is_mount_point(dir: &Path) -> bool {
    // The table names real paths; `dir` may pass through a symlink
    // (`/var/run`).
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    crate::sandbox::mounts::mount_points_under(&dir).is_ok_and(|points| points.contains(&dir))
}

/// The first entry of a run's state under `state_dir`, if any.
fn live_entry(state_dir: &Path) -> Option<PathBuf> {
    let first_in = |dir: &Path| {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .next()
            .map(|entry| entry.path())
    };
    STATE_SUBDIRS
        .iter()
        .find_map(|sub| first_in(&state_dir.join(sub)))
        .or_else(|| {
            std::fs::read_dir(state_dir.join(RUNTIMES_SUBDIR))
                .ok()?
                .flatten()
                .find_map(|handler| first_in(&handler.path()))
        })
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StateDirError {
    #[error("cannot tell the filesystem of {path}: {source}")]
    Statfs { path: PathBuf, source: nix::Error },
}

/// A tmpfs this start mounted on `state_dir`: taken down again when
/// dropped, unless [`VolatileMount::keep`] was called.
#[derive(Debug)]
#[must_use = "dropping it unmounts the tmpfs"]
pub(crate) struct VolatileMount {
    path: PathBuf,
    /// Unmount on drop.
    armed: bool,
}

impl VolatileMount {
    /// Leaves the tmpfs mounted for good: the daemon is serving.
    pub(crate) fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for VolatileMount {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot unmount the state dir's tmpfs");
        }
    }
}

/// Makes `state_dir` (which exists) volatile when it is not: returns the
/// tmpfs it mounted, if it mounted one. A refused mount (no
/// `CAP_SYS_ADMIN` in this mount namespace) is logged and ketch goes on
/// with the directory as it is.
pub(crate) fn prepare(
    state_dir: &Path,
    enabled: bool,
) -> Result<Option<VolatileMount>, StateDirError> {
    let on_memory_fs = statfs(state_dir)
        .map(|fs| is_memory_fs(fs.filesystem_type()))
        .map_err(|source| StateDirError::Statfs {
            path: state_dir.to_owned(),
            source,
        })?;
    let facts = if on_memory_fs || !enabled {
        Facts {
            on_memory_fs,
            ..Facts::default()
        }
    } else {
        Facts {
            on_memory_fs,
            is_mount_point: is_mount_point(state_dir),
            live_entry: live_entry(state_dir),
        }
    };
    match plan(enabled, facts) {
        Plan::Disabled | Plan::AlreadyVolatile => Ok(None),
        Plan::KeepVolume => {
            tracing::info!(
                state_dir = %state_dir.display(),
                "state_dir is a mount point on persistent storage; left as it is"
            );
            Ok(None)
        }
        Plan::KeepForState(entry) => {
            tracing::warn!(
                state_dir = %state_dir.display(),
                entry = %entry.display(),
                "state_dir is on persistent storage and holds another run's state; \
                 not mounting a tmpfs over it"
            );
            Ok(None)
        }
        Plan::Mount => match mount_tmpfs(state_dir) {
            Ok(()) => {
                tracing::info!(state_dir = %state_dir.display(), "mounted a tmpfs on state_dir (it was on persistent storage)");
                Ok(Some(VolatileMount {
                    path: state_dir.to_owned(),
                    armed: true,
                }))
            }
            Err(e) => {
                tracing::warn!(
                    state_dir = %state_dir.display(),
                    error = %e,
                    "state_dir is on persistent storage and a tmpfs cannot be mounted on it; \
                     going on without"
                );
                Ok(None)
            }
        },
    }
}

/// Mode 0711 as the directory's own; no `noexec`, as an OCI runtime
/// handler's state (`<state_dir>/runtimes/`) may need it.
fn mount_tmpfs(path: &Path) -> nix::Result<()> {
    mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0711"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_disk() -> Facts {
        Facts::default()
    }

    #[test]
    fn a_persistent_empty_state_dir_gets_a_tmpfs() {
        assert_eq!(plan(true, on_disk()), Plan::Mount);
    }

    #[test]
    fn a_memory_fs_or_the_setting_off_leaves_it_alone() {
        let tmpfs = Facts {
            on_memory_fs: true,
            ..Facts::default()
        };
        assert_eq!(plan(true, tmpfs), Plan::AlreadyVolatile);
        assert_eq!(plan(false, on_disk()), Plan::Disabled);
    }

    #[test]
    fn a_volume_is_left_to_whoever_mounted_it() {
        let volume = Facts {
            is_mount_point: true,
            ..Facts::default()
        };
        assert_eq!(plan(true, volume), Plan::KeepVolume);
    }

    #[test]
    fn another_runs_state_is_never_hidden() {
        let entry = PathBuf::from("/run/k/containers/abc");
        let facts = Facts {
            live_entry: Some(entry.clone()),
            ..Facts::default()
        };
        assert_eq!(plan(true, facts), Plan::KeepForState(entry));
    }

    #[test]
    fn live_state_is_an_entry_in_a_state_subdir_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ketch.sock.lock"), b"").unwrap();
        for sub in STATE_SUBDIRS {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let runc = dir.path().join(RUNTIMES_SUBDIR).join("runc");
        std::fs::create_dir_all(&runc).unwrap();
        assert_eq!(live_entry(dir.path()), None, "empty dirs are no state");
        let runc_container = runc.join("abc");
        std::fs::create_dir(&runc_container).unwrap();
        assert_eq!(live_entry(dir.path()), Some(runc_container.clone()));
        std::fs::remove_dir(&runc_container).unwrap();
        let socket = dir.path().join("sock").join("abc.sock");
        std::fs::write(&socket, b"").unwrap();
        assert_eq!(live_entry(dir.path()), Some(socket));
    }

    #[test]
    fn a_mounted_tmpfs_is_taken_down_unless_kept() {
        if !crate::testing::root_or_skip("mounting a tmpfs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("run");
        std::fs::create_dir(&state).unwrap();
        // A mount point is on another device than its parent.
        let mounted = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).unwrap().dev() != std::fs::metadata(dir.path()).unwrap().dev()
        };
        assert!(!is_mount_point(&state));
        mount_tmpfs(&state).unwrap();
        assert!(is_memory_fs(statfs(&state).unwrap().filesystem_type()));
        assert!(is_mount_point(&state));
        drop(VolatileMount {
            path: state.clone(),
            armed: true,
        });
        assert!(!mounted(&state), "the guard unmounts");
        mount_tmpfs(&state).unwrap();
        VolatileMount {
            path: state.clone(),
            armed: true,
        }
        .keep();
        assert!(mounted(&state), "a kept mount stays");
        umount2(&state, MntFlags::MNT_DETACH).unwrap();
    }
}
