//! Executes a [`MountPlan`](super::mount_plan::MountPlan) inside the
//! container's new mount namespace: the plan says what is mounted, in which
//! order, with which flags; this module resolves the paths and makes the
//! calls.
//!
//! Paths inside the rootfs are resolved with symlinks followed as if the
//! rootfs were `/` ([`secure_join`]), so an image's symlink cannot point a
//! mount at the host. Each failed call becomes the step's error, reported
//! to the caller of the start.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid, chdir, chown, pivot_root};

use super::mount_plan::{MountCall, MountStep, Node, NodeKind, Target};
use super::step::StepError;

/// Resolves `path` inside `root` as if `root` were `/`: `..` stops at the
/// root and absolute symlinks restart from it. Missing components are kept
/// as they are (they will be created).
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, StepError> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<OsString> = components(path);
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(StepError::errno(
                        format!("resolve {} in the rootfs", path.display()),
                        Errno::ELOOP,
                    ));
                }
                let target = std::fs::read_link(&full)
                    .map_err(|e| StepError::io(format!("readlink {}", full.display()), &e))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut next = components(&target);
                next.extend(pending);
                pending = next;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

fn mnt(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), StepError> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        let what = match (fstype, source) {
            (Some(t), _) => t.to_owned(),
            (None, Some(s)) => s.display().to_string(),
            (None, None) => "remount".to_owned(),
        };
        StepError::errno(format!("mount {what} on {}", target.display()), e)
    })
}

/// Takes the plan's steps in order. `console` is the process's terminal
/// (for [`MountStep::BindConsole`]), if it has one.
pub fn execute(
    rootfs: &Path,
    steps: &[MountStep],
    console: Option<&Path>,
) -> Result<(), StepError> {
    for step in steps {
        execute_step(rootfs, step, console)?;
    }
    Ok(())
}

fn execute_step(rootfs: &Path, step: &MountStep, console: Option<&Path>) -> Result<(), StepError> {
    let resolve = |target: &Target| resolve(rootfs, target);
    match step {
        MountStep::Mount(call) => mount_call(rootfs, call),
        MountStep::MountOr { call, fallback } => match mount_call(rootfs, call) {
            Err(_) => execute(rootfs, fallback, console),
            Ok(()) => Ok(()),
        },
        MountStep::MakeDir(target) => mkdir_all(&resolve(target)?),
        MountStep::BindTarget { source, target } => {
            let dest = resolve(target)?;
            let meta = std::fs::metadata(source).map_err(|e| {
                StepError::io(format!("bind mount source {}", source.display()), &e)
            })?;
            if meta.is_dir() {
                mkdir_all(&dest)
            } else {
                if let Some(parent) = dest.parent() {
                    mkdir_all(parent)?;
                }
                create_file(&dest)
            }
        }
        MountStep::MakeNode(node) => {
            let path = resolve(&node.target)?;
            if let Some(parent) = path.parent() {
                mkdir_all(parent)?;
            }
            make_node(&path, node)
        }
        MountStep::Symlink {
            to,
            path,
            replace,
            only_if_exists,
        } => {
            if only_if_exists.as_ref().is_some_and(|p| !p.exists()) {
                return Ok(());
            }
            let path = resolve(path)?;
            if *replace {
                let _ = std::fs::remove_file(&path);
            }
            link(to, &path)
        }
        MountStep::BindConsole(target) => match console {
            Some(console) => {
                let target = resolve(target)?;
                create_file(&target)?;
                mnt(Some(console), &target, None, MsFlags::MS_BIND, None)
            }
            None => Ok(()),
        },
        MountStep::Chdir(target) => {
            let dir = resolve(target)?;
            chdir(&dir).map_err(|e| StepError::errno(format!("chdir {}", dir.display()), e))
        }
        MountStep::PivotRoot => pivot(),
        MountStep::DetachOldRoot => umount2(".", MntFlags::MNT_DETACH)
            .map_err(|e| StepError::errno("unmount the old root", e)),
        MountStep::Sysctl { key, value } => {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(|e| StepError::io(format!("set sysctl {key}={value}"), &e))
        }
        MountStep::Mask(target) => mask(&resolve(target)?),
        MountStep::RecursiveReadOnly(target) => {
            let path = resolve(target)?;
            crate::sys::mount_setattr_readonly_recursive(&path).map_err(|e| {
                StepError::errno(format!("make {} read-only recursively", path.display()), e)
            })
        }
        MountStep::PrivateParent(target) => private_parent(&resolve(target)?),
        MountStep::ReadOnly { target, bind_first } => readonly(&resolve(target)?, *bind_first),
    }
}

/// `pivot_root(".", ".")`, then into the old root, as runc does: the
/// kernel keeps the working directory on the new root's mount, and a
/// mount(2) of "." then acts on it, not on the old root stacked on top
/// (only umount(2) looks past it). Without this, the old root's `rslave`
/// made every container mount a slave, and a Bidirectional mount stopped
/// reaching the host.
fn pivot() -> Result<(), StepError> {
    let old_root = std::fs::File::open("/").map_err(|e| StepError::io("open the old root", &e))?;
    pivot_root(".", ".").map_err(|e| StepError::errno("pivot_root", e))?;
    nix::unistd::fchdir(&old_root).map_err(|e| StepError::errno("chdir to the old root", e))
}

/// The path a target names, in this process's current view.
fn resolve(rootfs: &Path, target: &Target) -> Result<PathBuf, StepError> {
    match target {
        Target::Host(path) | Target::Container(path) => Ok(path.clone()),
        Target::Rootfs(path) => secure_join(rootfs, path),
        Target::Dev(name) => Ok(secure_join(rootfs, Path::new("/dev"))?.join(name)),
    }
}

fn mount_call(rootfs: &Path, call: &MountCall) -> Result<(), StepError> {
    mnt(
        call.source.as_deref(),
        &resolve(rootfs, &call.target)?,
        call.fstype.as_deref(),
        call.flags,
        call.data.as_deref(),
    )
}

/// An empty file to mount a file onto; an existing one is kept.
fn create_file(path: &Path) -> Result<(), StepError> {
    if std::fs::symlink_metadata(path).is_err() {
        std::fs::File::create(path)
            .map_err(|e| StepError::io(format!("create {}", path.display()), &e))?;
    }
    Ok(())
}

fn mkdir_all(path: &Path) -> Result<(), StepError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| StepError::io(format!("mkdir {}", path.display()), &e))
}

fn make_node(path: &Path, node: &Node) -> Result<(), StepError> {
    let kind = match node.kind {
        NodeKind::Char => SFlag::S_IFCHR,
        NodeKind::Block => SFlag::S_IFBLK,
        NodeKind::Fifo => SFlag::S_IFIFO,
    };
    let (major, minor, mode) = (node.major, node.minor, node.mode);
    let (uid, gid) = (node.uid, node.gid);
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    let perm = Mode::from_bits_truncate(mode & 0o7777);
    match mknod(path, kind, perm, makedev(major, minor)) {
        Ok(()) => {
            // mknod's mode is filtered by the umask: set it exactly.
            std::fs::set_permissions(
                path,
                std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
            )
            .map_err(|e| StepError::io(format!("chmod {}", path.display()), &e))?;
            chown(path, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
                .map_err(|e| StepError::errno(format!("chown {}", path.display()), e))
        }
        // Without CAP_MKNOD, bind the host's node of the same name.
        Err(Errno::EPERM) => {
            let name = path.file_name().map(PathBuf::from).unwrap_or_default();
            let host = Path::new("/dev").join(name);
            std::fs::File::create(path)
                .map_err(|e| StepError::io(format!("create {}", path.display()), &e))?;
            mnt(Some(&host), path, None, MsFlags::MS_BIND, None)
        }
        Err(e) => Err(StepError::errno(format!("mknod {}", path.display()), e)),
    }
}

fn link(target: &Path, path: &Path) -> Result<(), StepError> {
    match symlink(target, path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(StepError::io(
            format!("symlink {} -> {}", path.display(), target.display()),
            &e,
        )),
        _ => Ok(()),
    }
}

/// A masked file gets /dev/null on top, a masked directory an empty
/// read-only tmpfs; a missing path needs no mask.
fn mask(path: &Path) -> Result<(), StepError> {
    match std::fs::metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => mnt(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        ),
        Ok(_) => mnt(
            Some(Path::new("/dev/null")),
            path,
            None,
            MsFlags::MS_BIND,
            None,
        ),
    }
}

/// Makes the mount `path` lives on private: the first of `path` and its
/// ancestors that is a mount point (mount(2) fails with EINVAL on any
/// other directory), as runc's `rootfsParentMountPrivate` does.
fn private_parent(path: &Path) -> Result<(), StepError> {
    for dir in path.ancestors() {
        match mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) => continue,
            Err(e) => {
                return Err(StepError::errno(
                    format!("make the mount of {} private", path.display()),
                    e,
                ));
            }
        }
    }
    Err(StepError::msg(
        format!("make the mount of {} private", path.display()),
        "no mount point found",
    ))
}

/// Makes a path read-only, keeping the nosuid/nodev/noexec it has (a bind
/// remount that drops a locked flag fails).
fn readonly(path: &Path, bind_first: bool) -> Result<(), StepError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if bind_first {
        mnt(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    }
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        let have = st.flags();
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if have.contains(fs) {
                flags |= ms;
            }
        }
    }
    mnt(None, path, None, flags, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("/", root.join("usr/top")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/lib/x")).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/usr/escape/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../proc")).unwrap(),
            root.join("proc")
        );
        assert_eq!(
            secure_join(root, Path::new("/usr/top/usr/top/dev")).unwrap(),
            root.join("dev")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(secure_join(root, Path::new("/loop/x")).is_err());
    }
}
