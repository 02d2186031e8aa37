//! ImageFsInfo: bytes and inodes used by `content/` and `layers/`, and the
//! mountpoint of the filesystem they are on.
//!
//! Unpacked layers never change, so each layer's usage is measured once and
//! cached by chain ID; only the content dir (flat, small) is walked on every
//! call. Bytes are allocated blocks (`st_blocks * 512`), as `du` and
//! cadvisor count them; a file with several hard links counts once.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Inner;
use super::error::ImageError;

/// Disk use of one tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// What ImageFsInfo reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    /// Unix nanoseconds when measured.
    pub timestamp: i64,
    /// The mountpoint of the filesystem holding the store.
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

impl Inner {
    pub(super) fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let mut total = du(self.content.dir())?;
        let layers_dir = du_shallow(self.layers.dir())?;
        total.bytes += layers_dir.bytes;
        total.inodes += layers_dir.inodes;
        for chain in self.layers.list()? {
            let cached = self.usage.lock().ok().and_then(|u| u.get(&chain).copied());
            let usage = match cached {
                Some(u) => u,
                None => {
                    let u = du(&self.layers.path(&chain))?;
                    if let Ok(mut cache) = self.usage.lock() {
                        cache.insert(chain, u);
                    }
                    u
                }
            };
            total.bytes += usage.bytes;
            total.inodes += usage.inodes;
        }
        Ok(FsUsage {
            timestamp: crate::clock::now_unix_nanos(),
            mountpoint: mountpoint(&self.root)?,
            used_bytes: total.bytes,
            inodes_used: total.inodes,
        })
    }
}

/// The directory itself only.
fn du_shallow(dir: &Path) -> Result<Usage, ImageError> {
    let m = std::fs::symlink_metadata(dir).map_err(|e| ImageError::io("stat", dir, e))?;
    Ok(Usage {
        bytes: m.blocks() * 512,
        inodes: 1,
    })
}

/// Everything under `root` (included), never following symlinks. Entries
/// vanishing meanwhile (a collection) are skipped.
pub fn du(root: &Path) -> Result<Usage, ImageError> {
    let mut usage = Usage::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let m = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ImageError::io("stat", &path, e)),
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        usage.bytes += m.blocks() * 512;
        usage.inodes += 1;
        if m.is_dir() {
            let entries = match std::fs::read_dir(&path) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io("list", &path, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| ImageError::io("list", &path, e))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// The mountpoint of the filesystem holding `path`: the highest ancestor
/// on the same device.
pub fn mountpoint(path: &Path) -> Result<PathBuf, ImageError> {
    let dev = std::fs::metadata(path)
        .map_err(|e| ImageError::io("stat", path, e))?
        .dev();
    let mut current = path
        .canonicalize()
        .map_err(|e| ImageError::io("resolve", path, e))?;
    while let Some(parent) = current.parent() {
        match std::fs::metadata(parent) {
            Ok(m) if m.dev() == dev => current = parent.to_path_buf(),
            _ => break,
        }
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_counts_blocks_inodes_and_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("a"), vec![1u8; 10_000]).unwrap();
        std::fs::hard_link(d.join("a"), d.join("b")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("sub/link")).unwrap();
        let u = du(d).unwrap();
        assert_eq!(u.inodes, 4, "dir, a (=b), sub, link");
        assert!(u.bytes >= 10_000, "{u:?}");
    }

    #[test]
    fn mountpoint_of_a_dir() {
        let mp = mountpoint(Path::new("/proc/self")).unwrap();
        assert_eq!(mp, Path::new("/proc"));
        let tmp = tempfile::tempdir().unwrap();
        let mp = mountpoint(tmp.path()).unwrap();
        assert!(tmp.path().canonicalize().unwrap().starts_with(&mp));
    }
}
