//! The content store: verified blobs by digest under `content/sha256/<hex>`.
//!
//! A blob is written to a temp file in `content/` while it streams in and is
//! hashed, fsynced, and renamed into place only when its digest and size
//! match what the manifest promised. So a blob present under its name is
//! always whole and correct; a crash leaves at most a `.tmp-*` file, which
//! garbage collection removes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::digest::{Digest, Hasher};
use super::error::ImageError;
use super::fsutil::{self, sync_dir, temp_name};

#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) the store at `dir`.
    pub fn open(dir: PathBuf) -> Result<ContentStore, ImageError> {
        fsutil::ensure_dir(&dir.join("sha256"), 0o700)?;
        Ok(ContentStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where blob `digest` lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha256").join(digest.hex())
    }

    pub fn exists(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Reads a blob of at most `limit` bytes and checks its digest again
    /// (cheap for the small documents this is used for).
    pub fn read(
        &self,
        digest: &Digest,
        limit: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest);
        let file = std::fs::File::open(&path).map_err(|e| ImageError::io("open blob", &path, e))?;
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::io("read blob", &path, e))?;
        if bytes.len() as u64 > limit {
            return Err(ImageError::TooLarge {
                what,
                name: digest.to_string(),
                limit,
            });
        }
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(ImageError::Verification {
                what,
                digest: digest.to_string(),
                reason: format!("stored content hashes to {actual}"),
            });
        }
        Ok(bytes)
    }

    /// Stores `bytes` as `expected` after checking they hash to it.
    pub fn write(
        &self,
        expected: &Digest,
        bytes: &[u8],
        what: &'static str,
    ) -> Result<(), ImageError> {
        if self.exists(expected) {
            return Ok(());
        }
        let mut w = self.writer()?;
        w.write_all(bytes)
            .map_err(|e| ImageError::io("write blob", &w.path, e))?;
        w.commit(expected, bytes.len() as u64, what)
    }

    /// A writer for a blob streaming in.
    pub fn writer(&self) -> Result<BlobWriter, ImageError> {
        let path = self.dir.join(temp_name("blob"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ImageError::io("create blob temp file", &path, e))?;
        Ok(BlobWriter {
            store: self.clone(),
            path,
            file,
            hasher: Hasher::new(),
            committed: false,
        })
    }

    /// Digests of every stored blob.
    pub fn list(&self) -> Result<Vec<Digest>, ImageError> {
        fsutil::digests_in(&self.dir.join("sha256"))
    }

    /// Paths of leftover temp files.
    pub fn temp_paths(&self) -> Result<Vec<PathBuf>, ImageError> {
        fsutil::temp_paths(&self.dir)
    }
}

/// A blob being written: hashed as it goes, removed unless committed.
pub struct BlobWriter {
    store: ContentStore,
    path: PathBuf,
    file: std::fs::File,
    hasher: Hasher,
    committed: bool,
}

impl BlobWriter {
    /// Verifies digest and size, fsyncs and renames the blob into place.
    pub fn commit(
        self,
        expected: &Digest,
        size: u64,
        what: &'static str,
    ) -> Result<(), ImageError> {
        self.commit_synced(expected, size, what, None)
    }

    /// As [`BlobWriter::commit`]; `synced_fs` is the device of a file
    /// system `syncfs`'d since the last write: on that one the blob's data
    /// is on disk already and needs no fsync of its own.
    pub fn commit_synced(
        mut self,
        expected: &Digest,
        size: u64,
        what: &'static str,
        synced_fs: Option<u64>,
    ) -> Result<(), ImageError> {
        let len = self.hasher.len();
        let hasher = std::mem::take(&mut self.hasher);
        if len != size {
            return Err(ImageError::Verification {
                what,
                digest: expected.to_string(),
                reason: format!("size is {len} bytes, the manifest says {size}"),
            });
        }
        let actual = hasher.finish();
        if &actual != expected {
            return Err(ImageError::Verification {
                what,
                digest: expected.to_string(),
                reason: format!("content hashes to {actual}"),
            });
        }
        let same_fs = |dev| {
            self.file
                .metadata()
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::dev(&m) == dev)
        };
        if !synced_fs.is_some_and(same_fs) {
            self.file
                .sync_all()
                .map_err(|e| ImageError::io("fsync blob", &self.path, e))?;
        }
        let target = self.store.path(expected);
        std::fs::rename(&self.path, &target)
            .map_err(|e| ImageError::io("rename blob into place", &target, e))?;
        self.committed = true;
        sync_dir(&self.store.dir.join("sha256"))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().join("content")).unwrap();
        let good = Digest::of(b"hello");
        store.write(&good, b"hello", "blob").unwrap();
        assert!(store.exists(&good));
        assert_eq!(store.read(&good, 100, "blob").unwrap(), b"hello");
        assert_eq!(store.list().unwrap(), vec![good.clone()]);

        // Wrong content under a digest: refused, nothing left behind.
        let other = Digest::of(b"other");
        let err = store
            .write(&other, b"hello", "config")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(other.as_str()) && err.contains("config"),
            "{err}"
        );
        assert!(!store.exists(&other));
        assert!(store.temp_paths().unwrap().is_empty());

        // Right bytes, wrong size claim.
        let mut w = store.writer().unwrap();
        w.write_all(b"abc").unwrap();
        let err = w
            .commit(&Digest::of(b"abc"), 4, "layer")
            .unwrap_err()
            .to_string();
        assert!(err.contains("size is 3 bytes"), "{err}");
        assert!(store.temp_paths().unwrap().is_empty());

        // Limits on reads.
        let err = store.read(&good, 2, "manifest").unwrap_err().to_string();
        assert!(err.contains("larger than the limit"), "{err}");

        // A blob tampered with on disk is caught on read.
        std::fs::write(store.path(&good), b"HELLO").unwrap();
        assert!(store.read(&good, 100, "blob").is_err());
    }

    #[test]
    fn an_abandoned_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path().join("content")).unwrap();
        let mut w = store.writer().unwrap();
        w.write_all(b"partial").unwrap();
        assert_eq!(store.temp_paths().unwrap().len(), 1);
        drop(w);
        assert!(store.temp_paths().unwrap().is_empty());
        assert!(store.list().unwrap().is_empty());
    }
}
