//! Small filesystem helpers. Atomic writes, directory fsyncs and the
//! `.tmp-*` names garbage collection sweeps are `store::atomic`'s, here
//! with [`ImageError`] for the image store's callers.

use std::path::{Path, PathBuf};

use super::error::ImageError;

// Names that start with `TEMP_PREFIX` are half-made and belong to whoever
// holds the image store's writer lock; with no writer, they are garbage.
pub use crate::store::atomic::{TEMP_PREFIX, temp_name};

/// fsyncs a directory, making renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    Ok(crate::store::sync_dir(dir)?)
}

/// Writes `bytes` to `path` atomically and durably (see `store::atomic`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    Ok(crate::store::write_atomic(path, bytes, 0o644)?)
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

/// The `.tmp-*` entries of `dir`: what interrupted writers left there.
pub fn temp_paths(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    Ok(list_names(dir)?
        .into_iter()
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .map(|n| dir.join(n))
        .collect())
}

/// The digests `dir` holds as entries named by their sha256 hex.
pub fn digests_in(dir: &Path) -> Result<Vec<super::Digest>, ImageError> {
    Ok(list_names(dir)?
        .into_iter()
        .filter_map(|hex| super::Digest::parse(&format!("sha256:{hex}")).ok())
        .collect())
}
