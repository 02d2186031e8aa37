//! The layer store: each layer unpacked once into `layers/<chain-id hex>/`,
//! a directory overlayfs can use as a lowerdir as it is.
//!
//! A layer is keyed by its chain ID, so a layer shared by two images (same
//! diff on the same parents) is stored once, whichever compressed blob it
//! came from. [`apply_layer`] reads a compressed blob stream once:
//! it tees the bytes into the content store while hashing them, inflates
//! them (gzip via flate2/zlib-rs, zstd, or plain tar, told by the magic
//! bytes), hashes the tar (the diff ID) and unpacks it into a temp dir. Only
//! when blob digest, blob size and diff ID all match is the blob renamed
//! into the content store and the directory renamed to its chain ID, after
//! a `syncfs`: a layer directory under its name is always whole.

use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::content::{BlobWriter, ContentStore};
use super::digest::{Digest, Hasher, HashingReader};
use super::error::ImageError;
use super::fsutil::{self, sync_dir, temp_name};
use super::limits::{Bounded, Meter, UnpackLimits};
use super::unpack::{UnpackStats, unpack};

#[derive(Debug, Clone)]
pub struct LayerStore {
    dir: PathBuf,
    limits: UnpackLimits,
}

impl LayerStore {
    /// Opens (creating if needed) the store at `dir`, with the default
    /// [`UnpackLimits`].
    pub fn open(dir: PathBuf) -> Result<LayerStore, ImageError> {
        fsutil::ensure_dir(&dir, 0o700)?;
        Ok(LayerStore {
            dir,
            limits: UnpackLimits::default(),
        })
    }

    /// The same store, unpacking within `limits`.
    pub fn with_limits(self, limits: UnpackLimits) -> LayerStore {
        LayerStore { limits, ..self }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The unpacked directory of the layer with this chain ID.
    pub fn path(&self, chain_id: &Digest) -> PathBuf {
        self.dir.join(chain_id.hex())
    }

    pub fn exists(&self, chain_id: &Digest) -> bool {
        self.path(chain_id).is_dir()
    }

    /// Chain IDs of every stored layer.
    pub fn list(&self) -> Result<Vec<Digest>, ImageError> {
        fsutil::digests_in(&self.dir)
    }

    /// Paths of leftover half-made layers.
    pub fn temp_paths(&self) -> Result<Vec<PathBuf>, ImageError> {
        fsutil::temp_paths(&self.dir)
    }
}

/// What a layer blob must turn out to be.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// The compressed blob's digest and size, from the manifest; `None` when
    /// unknown (a docker-save archive names layers by path only).
    pub blob: Option<(Digest, u64)>,
    /// The uncompressed tar's digest, from the image config.
    pub diff_id: Digest,
    pub chain_id: Digest,
}

impl LayerSpec {
    fn name(&self) -> String {
        match &self.blob {
            Some((d, _)) => d.to_string(),
            None => self.diff_id.to_string(),
        }
    }
}

/// Unpacks the layer blob read from `source` into the store (blocking),
/// within the store's [`UnpackLimits`]. With `content`, the blob is also
/// kept in the content store. On any error nothing is left behind.
pub fn apply_layer(
    layers: &LayerStore,
    content: Option<&ContentStore>,
    source: impl Read,
    spec: &LayerSpec,
) -> Result<UnpackStats, ImageError> {
    let name = spec.name();
    let blob = match (content, &spec.blob) {
        (Some(c), Some(_)) => Some(c.writer()?),
        _ => None,
    };
    let meter = Rc::new(Meter::default());
    let mut tee = Tee {
        inner: source,
        hasher: Hasher::new(),
        blob,
        meter: meter.clone(),
    };
    let tmp = TempDir::create(&layers.dir)?;
    let read_err = |e: io::Error| ImageError::Unpack {
        digest: name.clone(),
        source: super::error::UnpackError::Read(e),
    };
    let unpacked: Result<(UnpackStats, Digest), ImageError> = (|| {
        let mut head = Vec::with_capacity(4);
        (&mut tee)
            .take(4)
            .read_to_end(&mut head)
            .map_err(read_err)?;
        let stream = io::Cursor::new(head.clone()).chain(&mut tee);
        let decoded: Box<dyn Read + '_> = match head.as_slice() {
            [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(stream)),
            [0x28, 0xb5, 0x2f, 0xfd] => {
                Box::new(zstd::stream::read::Decoder::new(stream).map_err(read_err)?)
            }
            _ => Box::new(stream),
        };
        let bounded = Bounded::new(decoded, layers.limits, meter.clone(), &layers.dir);
        let mut diff = HashingReader::new(bounded);
        let stats = unpack(&mut diff, &tmp.path).map_err(|source| ImageError::Unpack {
            digest: name.clone(),
            source,
        })?;
        // Whatever follows the tar's end marker counts for the diff ID.
        let (diff_id, _) = diff.finish().map_err(read_err)?;
        Ok((stats, diff_id))
    })();
    // A refused layer is not read further (a bomb's rest is more of it),
    // and a full disk explains any error (the blob's copy stops short, so
    // it would look like content that does not match its digest).
    if let Some(reason) = meter.refusal.take() {
        return Err(ImageError::LayerRefused {
            digest: name,
            reason,
        });
    }
    let what = format!("layer {name}");
    let no_space = |e: ImageError| e.no_space(&what, &layers.dir);
    let unpacked = unpacked.map_err(no_space);
    if let Err(e @ ImageError::NoSpace { .. }) = unpacked {
        return Err(e);
    }
    // Whatever follows the compressed stream counts for the blob digest.
    // After a failure too: content that is not what its digest promised
    // explains any error unpacking it.
    let drained = io::copy(&mut tee, &mut io::sink());
    let (stats, diff_id) = match (unpacked, drained) {
        (Ok(done), Ok(_)) => done,
        (Ok(_), Err(e)) => return Err(no_space(read_err(e))),
        (Err(e), _) => {
            if let Some((digest, size)) = &spec.blob
                && (tee.hasher.len() != *size
                    || &std::mem::take(&mut tee.hasher).finish() != digest)
            {
                return Err(ImageError::Verification {
                    what: "layer",
                    digest: digest.to_string(),
                    reason: format!("content does not match the digest ({e})"),
                });
            }
            return Err(e);
        }
    };
    let Tee { hasher, blob, .. } = tee;
    if let Some((digest, size)) = &spec.blob {
        if hasher.len() != *size {
            return Err(ImageError::Verification {
                what: "layer",
                digest: digest.to_string(),
                reason: format!("size is {} bytes, the manifest says {size}", hasher.len()),
            });
        }
        let actual = hasher.finish();
        if &actual != digest {
            return Err(ImageError::Verification {
                what: "layer",
                digest: digest.to_string(),
                reason: format!("content hashes to {actual}"),
            });
        }
    }
    if diff_id != spec.diff_id {
        return Err(ImageError::Verification {
            what: "layer",
            digest: name,
            reason: format!(
                "uncompressed content hashes to {diff_id}, the image config says {}",
                spec.diff_id
            ),
        });
    }
    let commit = || {
        // One flush for the layer's files and the blob's copy (when both
        // are on one file system): the blob is committed after it without
        // an fsync of its own, then the layer is named.
        let synced_fs = tmp.sync()?;
        if let (Some(blob), Some((digest, size))) = (blob, &spec.blob) {
            blob.commit_synced(digest, *size, "layer", Some(synced_fs))?;
        }
        tmp.commit(&layers.path(&spec.chain_id))?;
        sync_dir(&layers.dir)
    };
    commit().map_err(no_space)?;
    Ok(stats)
}

/// Hashes (and optionally stores) the compressed bytes as they are read,
/// and counts them for the compression-ratio cap.
struct Tee<R> {
    inner: R,
    hasher: Hasher,
    blob: Option<BlobWriter>,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.meter.compressed.set(self.hasher.len());
        if let Some(blob) = &mut self.blob {
            io::Write::write_all(blob, &buf[..n])?;
        }
        Ok(n)
    }
}

/// A directory being filled; removed on drop unless renamed into place.
struct TempDir {
    path: PathBuf,
    committed: bool,
}

impl TempDir {
    fn create(parent: &Path) -> Result<TempDir, ImageError> {
        let path = parent.join(temp_name("layer"));
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(|e| ImageError::io("create layer temp dir", &path, e))?;
        Ok(TempDir {
            path,
            committed: false,
        })
    }

    /// Flushes the file system the directory is on (so its files are
    /// durable before its name is); returns that file system's device.
    fn sync(&self) -> Result<u64, ImageError> {
        let dir = std::fs::File::open(&self.path)
            .map_err(|e| ImageError::io("open layer", &self.path, e))?;
        nix::unistd::syncfs(&dir).map_err(|e| ImageError::nix("syncfs", &self.path, e))?;
        let meta = dir
            .metadata()
            .map_err(|e| ImageError::io("stat layer", &self.path, e))?;
        Ok(std::os::unix::fs::MetadataExt::dev(&meta))
    }

    /// Renames the directory, [`TempDir::sync`]'d, to `target`. A target
    /// someone else made meanwhile wins; ours is dropped.
    fn commit(mut self, target: &Path) -> Result<(), ImageError> {
        match std::fs::rename(&self.path, target) {
            Ok(()) => {
                self.committed = true;
                Ok(())
            }
            Err(_) if target.is_dir() => Ok(()),
            Err(e) => Err(ImageError::io("rename layer into place", target, e)),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fsutil::remove_any(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::unpack::tests::{E, TarWriter};
    use std::io::Write;

    struct Stores {
        _dir: tempfile::TempDir,
        content: ContentStore,
        layers: LayerStore,
    }

    fn stores() -> Stores {
        let dir = tempfile::tempdir().unwrap();
        Stores {
            content: ContentStore::open(dir.path().join("content")).unwrap(),
            layers: LayerStore::open(dir.path().join("layers")).unwrap(),
            _dir: dir,
        }
    }

    fn tar() -> Vec<u8> {
        TarWriter::default()
            .add(E::file("etc/hello", b"hello\n"))
            .finish()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn spec(blob: &[u8], tar: &[u8]) -> LayerSpec {
        let diff_id = Digest::of(tar);
        LayerSpec {
            blob: Some((Digest::of(blob), blob.len() as u64)),
            chain_id: diff_id.clone(),
            diff_id,
        }
    }

    #[test]
    fn every_compression_unpacks_and_verifies() {
        if !crate::testing::root_or_skip("unpacking chowns entries to their owners") {
            return;
        }
        let tar = tar();
        for blob in [
            tar.clone(),
            gzip(&tar),
            zstd::encode_all(&tar[..], 3).unwrap(),
        ] {
            let s = stores();
            let spec = spec(&blob, &tar);
            apply_layer(&s.layers, Some(&s.content), &blob[..], &spec).unwrap();
            let dir = s.layers.path(&spec.chain_id);
            assert_eq!(std::fs::read(dir.join("etc/hello")).unwrap(), b"hello\n");
            assert!(s.content.exists(&spec.blob.as_ref().unwrap().0));
            assert!(s.layers.temp_paths().unwrap().is_empty());
        }
    }

    #[test]
    fn mismatches_fail_naming_the_blob_and_leave_nothing() {
        if !crate::testing::root_or_skip("unpacking chowns entries to their owners") {
            return;
        }
        let tar = tar();
        let blob = gzip(&tar);
        let good = spec(&blob, &tar);
        let cases = [
            LayerSpec {
                blob: Some((Digest::of(b"other"), blob.len() as u64)),
                ..good.clone()
            },
            LayerSpec {
                blob: Some((Digest::of(&blob), blob.len() as u64 + 1)),
                ..good.clone()
            },
            LayerSpec {
                diff_id: Digest::of(b"not the tar"),
                ..good.clone()
            },
        ];
        for case in cases {
            let s = stores();
            let err = apply_layer(&s.layers, Some(&s.content), &blob[..], &case).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ImageError::Verification { .. }), "{msg}");
            assert!(
                msg.contains(case.blob.as_ref().unwrap().0.as_str()),
                "{msg}"
            );
            assert!(s.layers.list().unwrap().is_empty());
            assert!(s.layers.temp_paths().unwrap().is_empty());
            assert!(s.content.list().unwrap().is_empty());
            assert!(s.content.temp_paths().unwrap().is_empty());
        }
    }

    #[test]
    fn hostile_or_broken_streams_leave_nothing() {
        if !crate::testing::root_or_skip("unpacking chowns entries to their owners") {
            return;
        }
        let s = stores();
        let evil = TarWriter::default()
            .add(E::file("ok", b"x"))
            .add(E::file("../escape", b"x"))
            .finish();
        let blob = gzip(&evil);
        let err = apply_layer(&s.layers, Some(&s.content), &blob[..], &spec(&blob, &evil))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("../escape") && err.contains(Digest::of(&blob).as_str()),
            "{err}"
        );
        let mut cut = gzip(&tar());
        cut.truncate(cut.len() / 2);
        assert!(apply_layer(&s.layers, Some(&s.content), &cut[..], &spec(&cut, &tar())).is_err());
        assert!(s.layers.list().unwrap().is_empty());
        assert!(s.layers.temp_paths().unwrap().is_empty());
        assert!(s.content.temp_paths().unwrap().is_empty());
    }

    #[test]
    fn layers_without_a_blob_digest_check_the_diff_id() {
        if !crate::testing::root_or_skip("unpacking chowns entries to their owners") {
            return;
        }
        let s = stores();
        let tar = tar();
        let spec = LayerSpec {
            blob: None,
            diff_id: Digest::of(&tar),
            chain_id: Digest::of(b"chain"),
        };
        apply_layer(&s.layers, Some(&s.content), &tar[..], &spec).unwrap();
        assert!(s.layers.exists(&spec.chain_id));
        assert!(
            s.content.list().unwrap().is_empty(),
            "no blob digest, no blob kept"
        );
    }
}
