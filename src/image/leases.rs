//! Leases: a container's claim on its image's layers, one JSON file per
//! container under `leases/`, written atomically.
//!
//! A lease names the layers (chain IDs) and config it holds, copied from the
//! image when it was taken, so it keeps them on disk even after the image
//! record is removed (as containerd's leases do): garbage collection counts
//! every lease as a root. A container holds one lease, on its own image and
//! on the images of its image volumes (`volumes`), so the one file still
//! names the container and releasing it releases them all.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::ImageError;
use super::fsutil::{self, sync_dir, write_atomic};

/// One container's hold on an image's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub container_id: String,
    /// The image ID at the time the lease was taken.
    pub image_id: String,
    /// Bottom layer first.
    pub chain_ids: Vec<Digest>,
    /// The images of the container's image volumes (absent in leases
    /// written before image volumes existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<HeldImage>,
}

/// An image a lease holds besides the container's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldImage {
    pub image_id: String,
    /// Bottom layer first.
    pub chain_ids: Vec<Digest>,
}

impl Lease {
    /// Every layer the lease holds: the image's and its volumes'.
    pub fn all_chain_ids(&self) -> impl Iterator<Item = &Digest> {
        self.chain_ids
            .iter()
            .chain(self.volumes.iter().flat_map(|v| v.chain_ids.iter()))
    }
}

#[derive(Debug, Clone)]
pub struct Leases {
    dir: PathBuf,
}

impl Leases {
    pub fn open(dir: PathBuf) -> Result<Leases, ImageError> {
        fsutil::ensure_dir(&dir, 0o700)?;
        Ok(Leases { dir })
    }

    fn path(&self, container_id: &str) -> Result<PathBuf, ImageError> {
        validate_id(container_id)?;
        Ok(self.dir.join(format!("{container_id}.json")))
    }

    /// Writes (or replaces) the lease of `lease.container_id`.
    pub fn put(&self, lease: &Lease) -> Result<(), ImageError> {
        let path = self.path(&lease.container_id)?;
        let bytes = serde_json::to_vec(lease)
            .map_err(|e| ImageError::Internal(format!("encode lease: {e}")))?;
        write_atomic(&path, &bytes)
    }

    /// Removes the lease of `container_id`; none is fine.
    pub fn remove(&self, container_id: &str) -> Result<bool, ImageError> {
        let path = self.path(container_id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ImageError::io("remove lease", &path, e)),
        }
    }

    pub fn get(&self, container_id: &str) -> Result<Option<Lease>, ImageError> {
        let path = self.path(container_id)?;
        read_lease(&path)
    }

    /// Every lease; unreadable ones are logged and skipped.
    pub fn list(&self) -> Result<Vec<Lease>, ImageError> {
        let mut out = Vec::new();
        for name in fsutil::list_names(&self.dir)? {
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let path = self.dir.join(&name);
            match read_lease(&path) {
                Ok(Some(lease)) => out.push(lease),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a bad lease")
                }
            }
        }
        Ok(out)
    }

    /// Leftover temp files of interrupted writes.
    pub fn temp_paths(&self) -> Result<Vec<PathBuf>, ImageError> {
        fsutil::temp_paths(&self.dir)
    }
}

fn read_lease(path: &Path) -> Result<Option<Lease>, ImageError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io("read lease", path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ImageError::Malformed {
            what: "lease",
            name: path.display().to_string(),
            reason: e.to_string(),
        })
}

/// A container ID must be a plain file name.
fn validate_id(id: &str) -> Result<(), ImageError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidArgument(format!(
            "container ID {id:?} is not a plain name ([A-Za-z0-9_.-], at most 128)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::open(dir.path().join("leases")).unwrap();
        let lease = Lease {
            container_id: "c1".into(),
            image_id: format!("sha256:{}", "a".repeat(64)),
            chain_ids: vec![Digest::of(b"x")],
            volumes: vec![HeldImage {
                image_id: format!("sha256:{}", "b".repeat(64)),
                chain_ids: vec![Digest::of(b"y")],
            }],
        };
        assert_eq!(
            lease.all_chain_ids().cloned().collect::<Vec<_>>(),
            vec![Digest::of(b"x"), Digest::of(b"y")]
        );
        leases.put(&lease).unwrap();
        assert_eq!(leases.get("c1").unwrap(), Some(lease.clone()));
        // A new instance (a restart) sees it.
        let again = Leases::open(dir.path().join("leases")).unwrap();
        assert_eq!(again.list().unwrap(), vec![lease]);
        assert!(again.remove("c1").unwrap());
        assert!(!again.remove("c1").unwrap());
        assert!(leases.list().unwrap().is_empty());
        assert!(leases.get("../etc/passwd").is_err());
        assert!(leases.get("").is_err());
        assert!(leases.temp_paths().unwrap().is_empty());
    }

    #[test]
    fn leases_without_volumes_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::open(dir.path().to_path_buf()).unwrap();
        let old = format!(
            r#"{{"container_id":"c1","image_id":"sha256:{}","chain_ids":["{}"]}}"#,
            "a".repeat(64),
            Digest::of(b"x")
        );
        std::fs::write(dir.path().join("c1.json"), old).unwrap();
        let lease = leases.get("c1").unwrap().unwrap();
        assert!(lease.volumes.is_empty());
    }
}
