//! User namespace ID mappings and idmapped mounts.
//!
//! A pod with its own user namespace (`hostUsers: false`) maps container
//! IDs `0..length` to host IDs `host_id..host_id+length`. Its files come
//! through idmapped mounts (mount_setattr(2), `MOUNT_ATTR_IDMAP`): a
//! detached clone of a mount whose owners are translated through the pod's
//! mappings, so the image layers shared with every other pod stay as they
//! are on disk (owned by 0) and appear owned by the pod's root, never
//! chowned per pod. The syscalls are in [`crate::sys`] (neither `nix` nor
//! `rustix` has mount_setattr).

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// One line of `/proc/<pid>/uid_map` or `gid_map` (user_namespaces(7)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

impl IdMapping {
    /// The line the kernel takes in a map file.
    pub fn map_line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }

    /// The host ID of container ID `id`, if mapped.
    pub fn host_of(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container_id)?;
        (offset < self.length).then(|| self.host_id + offset)
    }

    /// Whether the mapping fits in the 32-bit ID space on both sides.
    pub fn fits(&self) -> bool {
        self.length > 0
            && self.container_id.checked_add(self.length - 1).is_some()
            && self.host_id.checked_add(self.length - 1).is_some()
    }
}

/// The mappings of a pod's user namespace: one for users, one for groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    pub uid: IdMapping,
    pub gid: IdMapping,
}

impl UserNamespace {
    /// The host IDs the container's root (0:0) maps to.
    pub fn root(&self) -> (u32, u32) {
        (
            self.uid.host_of(0).unwrap_or(self.uid.host_id),
            self.gid.host_of(0).unwrap_or(self.gid.host_id),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("open the user namespace {path}: {source}")]
    OpenUserns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("idmapped mount of {path}: {step}: {source}")]
    Mount {
        path: PathBuf,
        step: &'static str,
        source: nix::Error,
    },
}

/// Mounts an idmapped clone of the mount at `source` (not of the mounts
/// below it) on `target`, which must exist (a directory for a directory,
/// a file for a file), translated through the user namespace `userns`.
pub fn mount_idmapped_with(
    source: &Path,
    target: &Path,
    userns: &impl AsFd,
) -> Result<(), IdmapError> {
    let err = |step| {
        move |e| IdmapError::Mount {
            path: source.to_owned(),
            step,
            source: e,
        }
    };
    let tree = crate::sys::open_tree_clone(source).map_err(err("clone the mount"))?;
    crate::sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd())
        .map_err(err("set the ID mapping"))?;
    crate::sys::move_mount_to(tree.as_fd(), target).map_err(err("attach the clone"))
}

/// Mounts an idmapped clone of `source` on `target` through a user
/// namespace made for it with exactly these map lines (a CRI mount's own
/// `uid_mappings` and `gid_mappings`, which need not be a pod's).
pub fn mount_with_mappings(
    source: &Path,
    target: &Path,
    uids: &[IdMapping],
    gids: &[IdMapping],
) -> Result<(), IdmapError> {
    let err = |step| {
        move |e| IdmapError::Mount {
            path: source.to_owned(),
            step,
            source: e,
        }
    };
    let holder = crate::sys::spawn_ns_holder(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(err("make a user namespace for the mapping"))?;
    let result = (|| {
        for (file, list) in [("uid_map", uids), ("gid_map", gids)] {
            let lines: String = list.iter().map(IdMapping::map_line).collect();
            std::fs::write(format!("/proc/{}/{file}", holder.pid), lines)
                .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
                .map_err(err("write the ID mapping"))?;
        }
        let ns = std::fs::File::open(format!("/proc/{}/ns/user", holder.pid)).map_err(|e| {
            IdmapError::OpenUserns {
                path: PathBuf::from(format!("/proc/{}/ns/user", holder.pid)),
                source: e,
            }
        })?;
        mount_idmapped_with(source, target, &ns)
    })();
    holder.finish();
    result
}

/// Whether idmapped mounts work under `dir` (ketch's root dir), probed
/// once by [`probe`]; `false` before it ran.
pub fn supported() -> bool {
    PROBED.get().copied().unwrap_or(false)
}

static PROBED: OnceLock<bool> = OnceLock::new();

/// Probes at start whether a directory under `dir` can be idmapped to a
/// fresh user namespace, records the answer for [`supported`] and logs
/// why not. Blocking, quick.
pub fn probe(dir: &Path) -> bool {
    let result = try_probe(dir);
    if let Err(why) = &result {
        tracing::warn!(dir = %dir.display(), reason = %why, "idmapped mounts do not work here: pods with their own user namespace are refused");
    }
    let ok = result.is_ok();
    let _ = PROBED.set(ok);
    ok
}

fn try_probe(dir: &Path) -> Result<(), String> {
    let holder = crate::sys::spawn_ns_holder(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| format!("make a user namespace: {e}"))?;
    let result = (|| {
        let map = IdMapping {
            container_id: 0,
            host_id: 65536,
            length: 65536,
        };
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{}/{file}", holder.pid), map.map_line())
                .map_err(|e| format!("write {file}: {e}"))?;
        }
        let ns = std::fs::File::open(format!("/proc/{}/ns/user", holder.pid))
            .map_err(|e| format!("open the user namespace: {e}"))?;
        let probe_dir = tempfile_dir(dir)?;
        let source = probe_dir.join("source");
        let target = probe_dir.join("target");
        let made = std::fs::create_dir(&source)
            .and_then(|()| std::fs::create_dir(&target))
            .map_err(|e| format!("create {}: {e}", probe_dir.display()));
        let mounted = made
            .and_then(|()| mount_idmapped_with(&source, &target, &ns).map_err(|e| e.to_string()));
        let seen = mounted.and_then(|()| {
            let owner = std::os::unix::fs::MetadataExt::uid(
                &std::fs::metadata(&target).map_err(|e| e.to_string())?,
            );
            let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
            if owner == 65536 {
                Ok(())
            } else {
                Err(format!(
                    "the idmapped probe dir is owned by {owner}, not 65536"
                ))
            }
        });
        let _ = std::fs::remove_dir_all(&probe_dir);
        seen
    })();
    holder.finish();
    result
}

/// A fresh directory under `dir` for the probe.
fn tempfile_dir(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join(format!(".idmap-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_translate_and_check_their_range() {
        let m = IdMapping {
            container_id: 0,
            host_id: 1000,
            length: 100000,
        };
        assert_eq!(m.map_line(), "0 1000 100000\n");
        assert_eq!(m.host_of(0), Some(1000));
        assert_eq!(m.host_of(99999), Some(100999));
        assert_eq!(m.host_of(100000), None);
        assert!(m.fits());
        let wraps = IdMapping {
            container_id: 0,
            host_id: u32::MAX - 5,
            length: 10,
        };
        assert!(!wraps.fits());
        assert!(!IdMapping { length: 0, ..m }.fits());
        let ns = UserNamespace {
            uid: m,
            gid: IdMapping { host_id: 2000, ..m },
        };
        assert_eq!(ns.root(), (1000, 2000));
    }

    #[test]
    fn the_probe_idmaps_a_dir_under_the_root() {
        if !crate::testing::root_or_skip("makes a user namespace and an idmapped mount") {
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        assert!(
            probe(dir.path()),
            "idmapped mounts work on this kernel and ext4"
        );
        assert!(supported());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing left"
        );
    }
}
