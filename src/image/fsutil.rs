//! Small filesystem helpers: atomic file writes, directory fsync, unique
//! temporary names (`.tmp-*`, which garbage collection sweeps).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::ImageError;

/// Names that start with this are half-made and belong to whoever holds the
/// store's writer lock; with no writer, they are garbage.
pub const TEMP_PREFIX: &str = ".tmp-";

/// A name unique to this process and call: `.tmp-<pid>-<n>-<nanos>`.
pub fn temp_name(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{TEMP_PREFIX}{tag}-{}-{n}-{nanos}", std::process::id())
}

/// fsyncs a directory, making renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ImageError::io("fsync dir", dir, e))
}

/// Writes `bytes` to `path` atomically: temp file in the same dir, fsync,
/// rename, fsync of the dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(temp_name("write"));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| ImageError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ImageError::io("rename into place", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and parents) with `mode` if missing.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| ImageError::io("create dir", dir, e))
}

/// Removes a file or a whole tree; absent is fine.
pub fn remove_any(path: &Path) -> Result<(), ImageError> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ImageError::io("remove", path, e))
        }
        _ => Ok(()),
    }
}

/// The entries of `dir` (names only); a missing dir is empty.
pub fn list_names(dir: &Path) -> Result<Vec<String>, ImageError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ImageError::io("list", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ImageError::io("list", dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}
