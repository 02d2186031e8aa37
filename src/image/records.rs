//! Image records: `images/images.json`, one JSON document holding every
//! image, rewritten atomically on each change.
//!
//! One file makes multi-record changes atomic: moving a tag from one image
//! to another is a single rename, never a moment where two images (or none)
//! claim it. Every change runs under an exclusive `flock` on
//! `images/db.lock` and re-reads the file first, so a `ketch image import`
//! running beside the daemon merges instead of overwriting. Readers use an
//! in-memory copy, reloaded when the file's identity (inode, size, mtime,
//! ctime) changed. A record that does not parse is logged and skipped, never
//! fatal.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::digest::{Digest, is_sha256_hex};
use super::error::ImageError;
use super::fsutil::write_atomic;
use super::manifest::RunConfig;
use super::reference::Reference;

const DB_VERSION: u32 = 1;

/// One image: what the CRI reports and what containers need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<config digest hex>`.
    pub id: String,
    /// `registry/repository:tag`, normalised.
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// `registry/repository@sha256:<manifest or index digest>`.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes, as containerd reports it.
    pub size: u64,
    /// The runtime part of the image config (Env, Entrypoint, Cmd, ...).
    #[serde(default)]
    pub config: RunConfig,
    /// Manifest annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    /// Manifests and indexes kept in the content store for this image.
    #[serde(default)]
    pub manifests: Vec<Digest>,
    /// `os/architecture[/variant]` from the config.
    #[serde(default)]
    pub platform: String,
    /// When the image was first stored, Unix nanoseconds.
    #[serde(default)]
    pub created_at: i64,
}

/// One layer of an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// The compressed blob's digest, when the image came with one.
    pub digest: Option<Digest>,
    /// The blob's size (the tar's, when imported uncompressed).
    pub size: u64,
    pub diff_id: Digest,
    pub chain_id: Digest,
}

impl Image {
    /// The config digest (the ID).
    pub fn config_digest(&self) -> Result<Digest, ImageError> {
        Digest::parse(&self.id)
    }

    /// The image's USER as the CRI wants it: a numeric user gives `uid`,
    /// a name gives `username` (the group part is dropped), as containerd
    /// does. No USER gives neither.
    pub fn user(&self) -> (Option<i64>, String) {
        let user = self.config.user.split(':').next().unwrap_or("");
        if user.is_empty() {
            return (None, String::new());
        }
        match user.parse::<i64>() {
            Ok(uid) => (Some(uid), String::new()),
            Err(_) => (None, user.to_owned()),
        }
    }

    /// Chain IDs, bottom first.
    pub fn chain_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }
}

/// What a lookup key turned out to be.
pub enum Key {
    Id(String),
    Reference(Reference),
    IdPrefix(String),
    /// Neither a reference nor an ID: matches nothing.
    Nothing,
}

/// Classifies `key`: full ID, reference, or ID prefix (in that order, as
/// docker and containerd resolve them).
pub fn classify(key: &str) -> Key {
    if let Some(hex) = key.strip_prefix("sha256:") {
        if is_sha256_hex(hex) {
            return Key::Id(key.to_owned());
        }
        if is_hex_prefix(hex) {
            return Key::IdPrefix(hex.to_owned());
        }
        return Key::Nothing;
    }
    if is_sha256_hex(key) {
        return Key::Id(format!("sha256:{key}"));
    }
    if let Ok(r) = Reference::parse(key) {
        return Key::Reference(r);
    }
    if is_hex_prefix(key) {
        return Key::IdPrefix(key.to_owned());
    }
    Key::Nothing
}

fn is_hex_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() < 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Finds the image `key` names among `images`.
pub fn find<'a>(images: &'a [Image], key: &str) -> Result<Option<&'a Image>, ImageError> {
    match classify(key) {
        Key::Id(id) => Ok(images.iter().find(|i| i.id == id)),
        Key::Reference(r) => {
            let wanted = r.to_string();
            let by_ref = images.iter().find(|i| match &r.digest {
                Some(_) => i.repo_digests.contains(&wanted),
                None => i.repo_tags.contains(&wanted),
            });
            if by_ref.is_some() {
                return Ok(by_ref);
            }
            // A short name that is also hex may be an ID prefix.
            if is_hex_prefix(key) {
                return find_prefix(images, key);
            }
            Ok(None)
        }
        Key::IdPrefix(prefix) => find_prefix(images, &prefix),
        Key::Nothing => Ok(None),
    }
}

fn find_prefix<'a>(images: &'a [Image], prefix: &str) -> Result<Option<&'a Image>, ImageError> {
    let mut matches = images.iter().filter(|i| {
        i.id.strip_prefix("sha256:")
            .is_some_and(|h| h.starts_with(prefix))
    });
    let first = matches.next();
    let more = matches.count();
    if more > 0 {
        return Err(ImageError::AmbiguousId {
            prefix: prefix.to_owned(),
            count: more + 1,
        });
    }
    Ok(first)
}

#[derive(Serialize, Deserialize)]
struct DbFile {
    version: u32,
    images: Vec<serde_json::Value>,
}

/// The file identity readers compare to know whether to reload.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

fn stamp(path: &Path) -> Result<Option<Stamp>, ImageError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ImageError::io("stat", path, e)),
    }
}

struct Cached {
    stamp: Option<Stamp>,
    images: Arc<Vec<Image>>,
}

/// The image records of one root dir.
pub struct Records {
    path: PathBuf,
    lock_path: PathBuf,
    cache: RwLock<Cached>,
    /// Serialises writers inside this process (flock serialises processes).
    writer: Mutex<()>,
}

impl Records {
    /// Opens the records in `dir` (created if missing) and loads them.
    pub fn open(dir: &Path) -> Result<Records, ImageError> {
        super::fsutil::ensure_dir(dir, 0o700)?;
        let records = Records {
            path: dir.join("images.json"),
            lock_path: dir.join("db.lock"),
            cache: RwLock::new(Cached {
                stamp: None,
                images: Arc::new(Vec::new()),
            }),
            writer: Mutex::new(()),
        };
        records.snapshot()?;
        Ok(records)
    }

    /// The current images (reloaded if another process changed them).
    pub fn snapshot(&self) -> Result<Arc<Vec<Image>>, ImageError> {
        let now = stamp(&self.path)?;
        {
            let cache = self.cache.read().map_err(|_| poisoned())?;
            if cache.stamp == now && (now.is_some() || cache.images.is_empty()) {
                return Ok(cache.images.clone());
            }
        }
        let images = Arc::new(self.load()?);
        let mut cache = self.cache.write().map_err(|_| poisoned())?;
        cache.stamp = now;
        cache.images = images.clone();
        Ok(images)
    }

    fn load(&self) -> Result<Vec<Image>, ImageError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("read", &self.path, e)),
        };
        let db: DbFile = serde_json::from_slice(&bytes).map_err(|e| ImageError::Malformed {
            what: "image records",
            name: self.path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut images = Vec::with_capacity(db.images.len());
        for value in db.images {
            match serde_json::from_value::<Image>(value) {
                Ok(image) => images.push(image),
                Err(e) => tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "skipping an image record that does not parse"
                ),
            }
        }
        Ok(images)
    }

    /// Applies `change` to the records on disk, atomically, and returns
    /// its result. Blocking (flock, fsync): call from a blocking context.
    pub fn update<T>(&self, change: impl FnOnce(&mut Vec<Image>) -> T) -> Result<T, ImageError> {
        let _writer = self.writer.lock().map_err(|_| poisoned())?;
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| ImageError::io("open", &self.lock_path, e))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| ImageError::nix("lock", &self.lock_path, e))?;
        let mut images = self.load()?;
        let result = change(&mut images);
        let db = DbFile {
            version: DB_VERSION,
            images: images
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<_, _>>()
                .map_err(|e| ImageError::Internal(format!("encode image record: {e}")))?,
        };
        let bytes = serde_json::to_vec(&db)
            .map_err(|e| ImageError::Internal(format!("encode image records: {e}")))?;
        write_atomic(&self.path, &bytes)?;
        let mut cache = self.cache.write().map_err(|_| poisoned())?;
        cache.stamp = stamp(&self.path)?;
        cache.images = Arc::new(images);
        Ok(result)
    }
}

fn poisoned() -> ImageError {
    ImageError::Internal("image records lock poisoned".into())
}

/// Adds a stored image or merges it into the record with the same ID, and
/// takes its tags away from any other image (a tag names one image).
pub fn merge(images: &mut Vec<Image>, new: Image) -> Image {
    for other in images.iter_mut().filter(|i| i.id != new.id) {
        other.repo_tags.retain(|t| !new.repo_tags.contains(t));
    }
    match images.iter_mut().find(|i| i.id == new.id) {
        Some(existing) => {
            for tag in new.repo_tags {
                if !existing.repo_tags.contains(&tag) {
                    existing.repo_tags.push(tag);
                }
            }
            for digest in new.repo_digests {
                if !existing.repo_digests.contains(&digest) {
                    existing.repo_digests.push(digest);
                }
            }
            for manifest in new.manifests {
                if !existing.manifests.contains(&manifest) {
                    existing.manifests.push(manifest);
                }
            }
            existing.clone()
        }
        None => {
            images.push(new.clone());
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn image(id_char: char, tags: &[&str]) -> Image {
        let diff = Digest::of(id_char.to_string().as_bytes());
        Image {
            id: format!("sha256:{}", id_char.to_string().repeat(64)),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: Vec::new(),
            size: 10,
            config: RunConfig::default(),
            annotations: BTreeMap::new(),
            layers: vec![Layer {
                digest: None,
                size: 10,
                diff_id: diff.clone(),
                chain_id: diff,
            }],
            manifests: Vec::new(),
            platform: "linux/amd64".into(),
            created_at: 0,
        }
    }

    #[test]
    fn lookup_by_every_key() {
        let mut a = image('a', &["docker.io/library/busybox:latest"]);
        a.repo_digests = vec![format!(
            "docker.io/library/busybox@sha256:{}",
            "c".repeat(64)
        )];
        let b = image('b', &["127.0.0.1:5000/app:v1"]);
        let mut ab = image('a', &[]);
        ab.id = format!("sha256:a{}", "b".repeat(63));
        let images = vec![a.clone(), b.clone(), ab];
        let id = |k: &str| find(&images, k).unwrap().map(|i| i.id.clone());
        assert_eq!(id("busybox"), Some(a.id.clone()));
        assert_eq!(id("docker.io/library/busybox:latest"), Some(a.id.clone()));
        assert_eq!(
            id(&format!("busybox@sha256:{}", "c".repeat(64))),
            Some(a.id.clone())
        );
        assert_eq!(id(&a.id), Some(a.id.clone()));
        assert_eq!(id(&"a".repeat(64)), Some(a.id.clone()));
        assert_eq!(id("127.0.0.1:5000/app:v1"), Some(b.id.clone()));
        assert_eq!(id("bbb"), Some(b.id.clone()), "hex prefix");
        assert_eq!(id("sha256:bb"), Some(b.id.clone()));
        assert_eq!(id("busybox:other"), None);
        assert_eq!(id("NOT A REF"), None);
        let err = find(&images, "a").unwrap_err().to_string();
        assert!(
            err.contains("ambiguous") && err.contains("2 images"),
            "{err}"
        );
    }

    #[test]
    fn user_forms() {
        let mut i = image('a', &[]);
        assert_eq!(i.user(), (None, String::new()));
        i.config.user = "1000:1000".into();
        assert_eq!(i.user(), (Some(1000), String::new()));
        i.config.user = "www:staff".into();
        assert_eq!(i.user(), (None, "www".into()));
        i.config.user = "0".into();
        assert_eq!(i.user(), (Some(0), String::new()));
    }

    #[test]
    fn tags_move_and_merge() {
        let mut images = vec![image('a', &["r/x:1", "r/x:2"])];
        let merged = merge(&mut images, image('b', &["r/x:1"]));
        assert_eq!(merged.repo_tags, vec!["r/x:1"]);
        assert_eq!(
            images[0].repo_tags,
            vec!["r/x:2"],
            "the tag moved away from a"
        );
        let merged = merge(&mut images, image('a', &["r/x:3"]));
        assert_eq!(merged.repo_tags, vec!["r/x:2", "r/x:3"]);
        assert_eq!(images.len(), 2);
    }

    #[test]
    fn records_persist_and_reload_across_instances() {
        let dir = tempfile::tempdir().unwrap();
        let r1 = Records::open(dir.path()).unwrap();
        assert!(r1.snapshot().unwrap().is_empty());
        r1.update(|imgs| merge(imgs, image('a', &["example.com/x:1"])))
            .unwrap();
        // A second instance (another process, or the daemon after a restart).
        let r2 = Records::open(dir.path()).unwrap();
        assert_eq!(r2.snapshot().unwrap().len(), 1);
        r2.update(|imgs| merge(imgs, image('b', &["example.com/x:1"])))
            .unwrap();
        // The first instance sees the other's change.
        let snap = r1.snapshot().unwrap();
        assert_eq!(snap.len(), 2);
        assert!(
            find(&snap, "example.com/x:1")
                .unwrap()
                .unwrap()
                .id
                .contains("bbbb")
        );
        r1.update(|imgs| imgs.retain(|i| !i.id.contains("aaaa")))
            .unwrap();
        assert_eq!(r2.snapshot().unwrap().len(), 1);
    }

    #[test]
    fn a_bad_record_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let good = serde_json::to_value(image('a', &["r/x:1"])).unwrap();
        let db = serde_json::json!({"version": 1, "images": [good, {"id": 5}]});
        std::fs::write(dir.path().join("images.json"), db.to_string()).unwrap();
        let r = Records::open(dir.path()).unwrap();
        assert_eq!(r.snapshot().unwrap().len(), 1);
    }
}
