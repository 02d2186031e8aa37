//! Mount bookkeeping for pod directories: find every mount under a
//! directory in `/proc/self/mountinfo` and take them all down.
//!
//! Unmounting by what the kernel says is mounted, rather than by what we
//! remember mounting, is what makes cleanup exact after a crash: a half-made
//! pod, a mount stacked twice, or a pin made just before the daemon died are
//! all found. Every unmount is `MNT_DETACH` of a path under a directory
//! ketch owns; nothing above that directory is ever touched.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use super::error::OsError;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Mount points at `dir` or below it, in mount order (a path mounted twice
/// appears twice).
pub fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>, OsError> {
    let text = std::fs::read(MOUNTINFO).map_err(OsError::with("read", Path::new(MOUNTINFO)))?;
    Ok(parse_mount_points(&text)
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// The mount point field (5th) of each mountinfo line, unescaped.
fn parse_mount_points(text: &[u8]) -> Vec<PathBuf> {
    text.split(|b| *b == b'\n')
        .filter_map(|line| line.split(|b| *b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\134` for `\`).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let digits = &field[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Unmounts `path` if something is mounted there. Returns whether it was.
pub fn unmount(path: &Path) -> Result<bool, OsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(true),
        // Not a mount point (EINVAL) or gone (ENOENT): nothing to do.
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(OsError::new("unmount", path, e)),
    }
}

/// Unmounts everything at or below `dir`, deepest first, and checks that
/// nothing is left.
pub fn unmount_all_under(dir: &Path) -> Result<(), OsError> {
    let mut points = mount_points_under(dir)?;
    if points.is_empty() {
        return Ok(());
    }
    // Deepest first; a path mounted twice is unmounted twice. The sort is
    // stable, so the later (upper) of two stacked mounts goes first.
    points.reverse();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in &points {
        unmount(point)?;
    }
    let left = mount_points_under(dir)?;
    if !left.is_empty() {
        return Err(OsError::new(
            "unmount everything under",
            dir,
            std::io::Error::other(format!("still mounted: {left:?}")),
        ));
    }
    Ok(())
}

/// Whether `path` is a pinned namespace (an nsfs bind mount).
pub fn is_nsfs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Whether `path` is a mount point: its device differs from its parent's.
/// (A statfs type check would not do for the shm tmpfs: the state dir is
/// itself often a tmpfs.)
pub fn is_mount_point(path: &Path) -> bool {
    let Some(parent) = path.parent() else {
        return true;
    };
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(p), Ok(q)) => p.dev() != q.dev(),
        _ => false,
    }
}

/// Removes `dir` and everything in it; a missing dir is fine. Call only
/// after [`unmount_all_under`], so nothing mounted is walked into.
pub fn remove_dir_all(dir: &Path) -> Result<(), OsError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(OsError::new("remove directory", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes_mount_points() {
        let text = b"22 27 0:21 / /proc rw,relatime - proc proc rw\n\
36 27 0:30 / /run/ketch/pods/a\\040b/shm rw - tmpfs shm rw\n\
37 27 0:4 net:[4026532] /x\\134y rw - nsfs nsfs rw\n";
        let points = parse_mount_points(text);
        assert_eq!(
            points,
            vec![
                PathBuf::from("/proc"),
                PathBuf::from("/run/ketch/pods/a b/shm"),
                PathBuf::from("/x\\y"),
            ]
        );
    }

    #[test]
    fn unescape_leaves_odd_backslashes() {
        assert_eq!(unescape(b"a\\0"), b"a\\0");
        assert_eq!(unescape(b"a\\999"), b"a\\999");
        assert_eq!(unescape(b"\\011x"), b"\tx");
    }

    #[test]
    fn only_paths_under_dir_count() {
        // starts_with on paths compares components: /a/bc is not under /a/b.
        assert!(!Path::new("/a/bc").starts_with("/a/b"));
        assert!(Path::new("/a/b/c").starts_with("/a/b"));
    }

    #[test]
    fn unmounts_stacked_and_nested_mounts() {
        if !crate::testing::root_or_skip("mounts tmpfs") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let sub = base.join("m");
        std::fs::create_dir(&sub).unwrap();
        let tmpfs = |target: &Path| {
            nix::mount::mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some("size=1m"),
            )
            .unwrap()
        };
        tmpfs(&sub);
        tmpfs(&sub);
        std::fs::create_dir(sub.join("inner")).unwrap();
        tmpfs(&sub.join("inner"));
        assert_eq!(mount_points_under(&base).unwrap().len(), 3);
        assert!(is_mount_point(&sub));
        unmount_all_under(&base).unwrap();
        assert!(mount_points_under(&base).unwrap().is_empty());
        assert!(!is_mount_point(&sub));
        assert!(!unmount(&sub).unwrap(), "nothing left to unmount");
    }
}
