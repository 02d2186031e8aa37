//! Crash-safe file writes: a reader (or a daemon restarting after a crash)
//! sees either the old content or the new one, never a torn file.
//!
//! The recipe is the classic one: write a temp file in the same directory,
//! fsync it, rename it over the target (atomic within one file system),
//! then fsync the directory so the rename itself is durable.
//!
//! Files under the state directory (a tmpfs in production, emptied by a
//! reboot, as are the processes they describe) need only the first half:
//! [`write_volatile`] renames without the fsyncs, which a daemon crash does
//! not need (the page cache outlives the process) and which cost about
//! 0.3 ms each on a disk. A record whose durability can wait until an
//! answer is sent is written so too, and made durable afterwards by
//! [`sync_file`] (the same fsyncs, in the same order: the file's, then its
//! directory's).
//!
//! Every temp name is `.tmp-<tag>.<pid>.<n>.<nanos>.tmp` ([`temp_name`]):
//! the store's own sweep ([`remove_stale_temp_files`]) knows them by the
//! leading dot and the suffix, the image store's garbage collection by the
//! prefix.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Prefix of in-flight temp files and dirs.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Suffix of in-flight temp files; [`remove_stale_temp_files`] sweeps them.
pub const TEMP_SUFFIX: &str = ".tmp";

/// A name for a temp file or dir, unique to this process and call. The
/// nanoseconds keep a daemon whose pid was reused after a crash from
/// meeting its predecessor's leftovers (which `create_new` would refuse).
pub fn temp_name(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{TEMP_PREFIX}{tag}.{}.{n}.{nanos}{TEMP_SUFFIX}",
        std::process::id()
    )
}

/// An I/O failure with the operation and the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}: {source}")]
pub struct AtomicWriteError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl From<AtomicWriteError> for std::io::Error {
    /// For callers whose errors carry an `io::Error`: the kind is kept, the
    /// message names the operation and the path.
    fn from(e: AtomicWriteError) -> Self {
        std::io::Error::new(e.source.kind(), e.to_string())
    }
}

fn err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> AtomicWriteError + 'a {
    move |source| AtomicWriteError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Replaces `path` with `data` atomically and durably, file mode `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    replace(path, data, mode, true)
}

/// Replaces `path` with `data` atomically but not durably: for files that
/// a reboot makes meaningless (see the module doc).
pub fn write_volatile(path: &Path, data: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    replace(path, data, mode, false)
}

fn replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> Result<(), AtomicWriteError> {
    let dir = parent(path);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and call, so two writers never share a temp file.
    let tmp = dir.join(temp_name(&file_name));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("create", &tmp))?;
        file.write_all(data).map_err(err("write", &tmp))?;
        if durable {
            file.sync_all().map_err(err("fsync", &tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(err("rename into place", path))?;
        if durable { sync_dir(dir) } else { Ok(()) }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` durably: a missing file is fine.
pub fn remove_durably(path: &Path) -> Result<(), AtomicWriteError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(parent(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", path)(e)),
    }
}

/// Makes a file written without fsyncs durable: fsyncs it, then its
/// directory (which holds the rename that put it there).
pub fn sync_file(path: &Path) -> Result<(), AtomicWriteError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(err("fsync", path))?;
    sync_dir(parent(path))
}

/// fsyncs a directory, making renames and unlinks in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), AtomicWriteError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync directory", dir))
}

/// Deletes temp files a crash left behind in `dir`; returns how many.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize, AtomicWriteError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).map_err(err("read directory", dir))? {
        let entry = entry.map_err(err("read directory", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(err("remove stale temp file", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        for write in [write_atomic, write_volatile] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("record.json");
            write(&path, b"first", 0o600).unwrap();
            write(&path, b"second", 0o640).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"second");
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("record.json")]);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
        }
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename must fail.
        let path = dir.path().join("busy");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("inside"), b"x").unwrap();
        let e = write_atomic(&path, b"data", 0o600).unwrap_err();
        assert_eq!(e.op, "rename into place");
        assert!(e.to_string().contains("busy"), "{e}");
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 0);
        assert!(path.join("inside").exists());
    }

    #[test]
    fn stale_temp_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".a.json.1.2.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join("a.json"), b"{}").unwrap();
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 1);
        assert!(dir.path().join("a.json").exists());
    }

    #[test]
    fn temp_names_are_unique_and_swept() {
        let dir = tempfile::tempdir().unwrap();
        let a = temp_name("record.json");
        let b = temp_name("record.json");
        assert_ne!(a, b);
        assert!(
            a.starts_with(TEMP_PREFIX) && a.ends_with(TEMP_SUFFIX),
            "{a}"
        );
        std::fs::write(dir.path().join(&a), b"half").unwrap();
        std::fs::write(dir.path().join(&b), b"half").unwrap();
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 2);
    }

    #[test]
    fn remove_durably_accepts_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        remove_durably(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        remove_durably(&path).unwrap();
        assert!(!path.exists());
    }
}
