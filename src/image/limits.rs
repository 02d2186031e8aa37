//! What unpacking one layer may cost the node, and what a full disk looks
//! like to a pull.
//!
//! A gzip bomb (an 11 MB layer of zeros that inflates to 10.7 GiB) fills
//! the disk before any digest can be checked, since the diff ID is only
//! known at the end of the tar. So the inflated stream is counted as it is
//! read and refused as soon as it passes the layer size cap, the
//! compression-ratio cap (gzip and zstd cannot do better than ~1000:1 even
//! on pure zeros; no real layer comes near) or eats into the free space the
//! root dir's filesystem must keep (`statvfs(3)`).
//!
//! A disk that fills anyway (other writers, a tiny quota) fails a pull with
//! ENOSPC or EDQUOT somewhere below; [`ImageError::no_space`] recognises
//! that cause however deep it is wrapped, so it is never mistaken for
//! content that does not match its digest.

use std::cell::{Cell, RefCell};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::error::ImageError;
use crate::config::ImageConfig;

/// Below this many unpacked bytes the ratio is not checked: a tiny layer
/// (an empty tar is 10 KiB of zeros) compresses far better than any large
/// one can, and cannot fill a disk.
const RATIO_FLOOR: u64 = 1 << 20;

/// How many unpacked bytes between two free-space checks.
const SPACE_CHECK_INTERVAL: u64 = 8 << 20;

/// The caps on unpacking one layer (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// The most bytes a layer's tar may have once inflated.
    pub max_unpacked_bytes: u64,
    /// The most inflated bytes per compressed byte.
    pub max_ratio: u64,
    /// The free bytes the filesystem of the layer store must keep; 0 turns
    /// the check off.
    pub free_space_reserve: u64,
}

impl UnpackLimits {
    pub fn from_config(config: &ImageConfig) -> Self {
        UnpackLimits {
            max_unpacked_bytes: config.max_layer_unpacked_bytes,
            max_ratio: config.max_layer_compression_ratio,
            free_space_reserve: config.free_space_reserve_bytes,
        }
    }
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self::from_config(&ImageConfig::default())
    }
}

/// The counts a [`Bounded`] reader keeps, shared with the layer code that
/// feeds it and reads the verdict.
#[derive(Debug, Default)]
pub struct Meter {
    /// Compressed bytes read so far (the blob).
    pub compressed: Cell<u64>,
    /// Why the stream was cut off, if it was.
    pub refusal: RefCell<Option<String>>,
}

/// Inflated tar bytes, counted against the [`UnpackLimits`]. Once a limit
/// is passed every read fails, and [`Meter::refusal`] says which.
pub struct Bounded<R> {
    inner: R,
    limits: UnpackLimits,
    meter: Rc<Meter>,
    /// The directory whose filesystem must keep the reserve.
    dir: PathBuf,
    unpacked: u64,
    next_space_check: u64,
}

impl<R: Read> Bounded<R> {
    pub fn new(inner: R, limits: UnpackLimits, meter: Rc<Meter>, dir: &Path) -> Self {
        Bounded {
            inner,
            limits,
            meter,
            dir: dir.to_owned(),
            unpacked: 0,
            next_space_check: 0,
        }
    }

    fn check(&mut self) -> Option<String> {
        let l = &self.limits;
        if self.unpacked > l.max_unpacked_bytes {
            return Some(format!(
                "it unpacks to more than the limit of {} (image.max_layer_unpacked_bytes)",
                human(l.max_unpacked_bytes)
            ));
        }
        let compressed = self.meter.compressed.get().max(1);
        if self.unpacked > RATIO_FLOOR && self.unpacked / compressed > l.max_ratio {
            return Some(format!(
                "{} compressed bytes unpack to {}, more than {}:1 \
                 (image.max_layer_compression_ratio): a decompression bomb",
                compressed,
                human(self.unpacked),
                l.max_ratio
            ));
        }
        if l.free_space_reserve > 0 && self.unpacked >= self.next_space_check {
            self.next_space_check = self.unpacked + SPACE_CHECK_INTERVAL;
            if let Some(free) = free_bytes(&self.dir)
                && free < l.free_space_reserve
            {
                return Some(format!(
                    "{} has {} free, less than the reserve of {} \
                     (image.free_space_reserve_bytes)",
                    self.dir.display(),
                    human(free),
                    human(l.free_space_reserve)
                ));
            }
        }
        None
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.meter.refusal.borrow().is_some() {
            return Err(io::Error::other("layer refused"));
        }
        let n = self.inner.read(buf)?;
        self.unpacked += n as u64;
        if let Some(why) = self.check() {
            *self.meter.refusal.borrow_mut() = Some(why);
            return Err(io::Error::other("layer refused"));
        }
        Ok(n)
    }
}

/// Bytes an unprivileged writer may still use on the filesystem of `path`
/// (or of its nearest existing ancestor); `None` if statvfs fails.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    loop {
        match nix::sys::statvfs::statvfs(p) {
            Ok(st) => {
                #[allow(clippy::unnecessary_cast)] // u64 or u32, by target
                return Some((st.blocks_available() as u64).saturating_mul(st.fragment_size()));
            }
            Err(nix::errno::Errno::ENOENT) => p = p.parent()?,
            Err(_) => return None,
        }
    }
}

/// `n` bytes for people: "512 B", "3.5 MiB", "64.0 GiB".
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The I/O error among `e` and its causes that says the disk or the quota
/// is full. io::Error's own `source()` skips the error it wraps, so wrapped
/// io::Errors (tar wraps the reader's) are opened by hand.
pub fn disk_full_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a io::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io_err) = err.downcast_ref::<io::Error>() {
            if is_disk_full(io_err) {
                return Some(io_err);
            }
            if let Some(inner) = io_err.get_ref() {
                let inner: &(dyn std::error::Error + 'static) = inner;
                if let Some(found) = disk_full_cause(inner) {
                    return Some(found);
                }
            }
        }
        next = err.source();
    }
    None
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

impl ImageError {
    /// This error as [`ImageError::NoSpace`] if a full disk or quota caused
    /// it, for work on `what` in `dir` (the path of a failed file operation
    /// wins, being more precise); otherwise unchanged.
    pub(crate) fn no_space(self, what: &str, dir: &Path) -> ImageError {
        if matches!(self, ImageError::NoSpace { .. }) || disk_full_cause(&self).is_none() {
            return self;
        }
        let path = match &self {
            ImageError::Io { path, .. } => path.clone(),
            _ => dir.to_owned(),
        };
        let free = free_bytes(&path).map_or_else(|| "unknown".to_owned(), human);
        ImageError::NoSpace {
            what: what.to_owned(),
            path,
            free,
            cause: crate::errors::chain(&self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u64, ratio: u64, reserve: u64) -> UnpackLimits {
        UnpackLimits {
            max_unpacked_bytes: max,
            max_ratio: ratio,
            free_space_reserve: reserve,
        }
    }

    /// Reads `total` zeros through a [`Bounded`] whose blob is said to be
    /// `compressed` bytes; returns the refusal.
    fn read_zeros(total: u64, compressed: u64, l: UnpackLimits) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let meter = Rc::new(Meter::default());
        meter.compressed.set(compressed);
        let mut r = Bounded::new(io::repeat(0).take(total), l, meter.clone(), dir.path());
        let result = io::copy(&mut r, &mut io::sink());
        let refusal = meter.refusal.borrow().clone();
        assert_eq!(result.is_err(), refusal.is_some(), "{result:?} {refusal:?}");
        refusal
    }

    #[test]
    fn each_limit_refuses_and_names_its_key() {
        let big = u64::MAX;
        assert_eq!(read_zeros(8 << 20, 8 << 20, limits(8 << 20, 10, 0)), None);
        let size = read_zeros((8 << 20) + 1, 8 << 20, limits(8 << 20, 10, 0)).unwrap();
        assert!(size.contains("image.max_layer_unpacked_bytes"), "{size}");
        let ratio = read_zeros(4 << 20, 1 << 10, limits(big, 1000, 0)).unwrap();
        assert!(
            ratio.contains("image.max_layer_compression_ratio"),
            "{ratio}"
        );
        // Small layers compress as they like.
        assert_eq!(read_zeros(RATIO_FLOOR, 1, limits(big, 1000, 0)), None);
        let reserve = read_zeros(1, 1, limits(big, 1000, big)).unwrap();
        assert!(
            reserve.contains("image.free_space_reserve_bytes"),
            "{reserve}"
        );
    }

    #[test]
    fn disk_full_is_found_however_wrapped() {
        let enospc = io::Error::from_raw_os_error(libc::ENOSPC);
        let wrapped = io::Error::new(enospc.kind(), io::Error::other(enospc));
        let e = ImageError::Unpack {
            digest: "sha256:abc".into(),
            source: super::super::error::UnpackError::Read(wrapped),
        };
        let e = e.no_space("layer sha256:abc", Path::new("/"));
        assert!(matches!(e, ImageError::NoSpace { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("layer sha256:abc") && msg.contains("free"),
            "{msg}"
        );
        let other = ImageError::io("write", "/x", io::Error::other("broken"));
        assert!(matches!(
            other.no_space("x", Path::new("/")),
            ImageError::Io { .. }
        ));
    }

    #[test]
    fn zeros_become_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let mut data = vec![0u8; 8 << 20];
        data[5000] = 1; // one block of data amid the zeros
        let mut file = std::fs::File::create(&path).unwrap();
        let copied = super::super::unpack::copy_sparse(&mut &data[..], &mut file).unwrap();
        drop(file);
        assert_eq!(copied, data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "{allocated} bytes allocated for 8 MiB");
    }

    /// Hands out its bytes in reads of odd sizes, so runs of data and
    /// holes straddle the copy's buffer.
    struct Dribble<'a>(&'a [u8], usize);

    impl std::io::Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 += 1;
            let n = self
                .0
                .len()
                .min(buf.len())
                .min(3_001 + (self.1 % 7) * 9_973);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn data_between_holes_is_copied_in_place_whatever_the_reads() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mixed");
        // Data, a long hole, data across block edges, short holes, data
        // ending mid-block, then trailing zeros.
        let mut data = vec![0u8; 3 << 20];
        data[..200_000].fill(7);
        data[1 << 20..(1 << 20) + 70_001].fill(9);
        for at in (1_500_000..1_600_000).step_by(12_288) {
            data[at] = 3;
        }
        data[2_000_001..2_100_003].fill(5);
        let mut file = std::fs::File::create(&path).unwrap();
        let copied = super::super::unpack::copy_sparse(&mut Dribble(&data, 0), &mut file).unwrap();
        drop(file);
        assert_eq!(copied, data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "{allocated} bytes allocated for 3 MiB");
    }

    #[test]
    fn a_gzip_bomb_is_refused_naming_the_layer_and_leaves_nothing() {
        if !crate::testing::root_or_skip("unpacking chowns every entry") {
            return;
        }
        use super::super::content::ContentStore;
        use super::super::digest::Digest;
        use super::super::layers::{LayerSpec, LayerStore, apply_layer};
        use crate::image::unpack::tests::{E, TarWriter};
        use std::io::Write;

        let zeros = vec![0u8; 32 << 20];
        let tar = TarWriter::default().add(E::file("zeros", &zeros)).finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&tar).unwrap();
        let blob = gz.finish().unwrap();
        let spec = LayerSpec {
            blob: Some((Digest::of(&blob), blob.len() as u64)),
            diff_id: Digest::of(&tar),
            chain_id: Digest::of(&tar),
        };
        let dir = tempfile::tempdir().unwrap();
        let content = ContentStore::open(dir.path().join("content")).unwrap();
        for (l, key) in [
            (limits(16 << 20, 1000, 0), "max_layer_unpacked_bytes"),
            (limits(u64::MAX, 100, 0), "max_layer_compression_ratio"),
        ] {
            let layers = LayerStore::open(dir.path().join("layers"))
                .unwrap()
                .with_limits(l);
            let err = apply_layer(&layers, Some(&content), &blob[..], &spec).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ImageError::LayerRefused { .. }), "{msg}");
            assert!(
                msg.contains(spec.blob.as_ref().unwrap().0.as_str()),
                "{msg}"
            );
            assert!(msg.contains(key), "{msg}");
            assert!(layers.list().unwrap().is_empty());
            assert!(layers.temp_paths().unwrap().is_empty());
            assert!(content.list().unwrap().is_empty());
            assert!(content.temp_paths().unwrap().is_empty());
        }
        // Within the limits the same layer unpacks, its zeros as holes.
        let layers = LayerStore::open(dir.path().join("layers"))
            .unwrap()
            .with_limits(limits(u64::MAX, 10_000, 0));
        apply_layer(&layers, Some(&content), &blob[..], &spec).unwrap();
        let file = layers.path(&spec.chain_id).join("zeros");
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.len(), zeros.len() as u64);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 19), "1.5 MiB");
        assert_eq!(human(64 << 30), "64.0 GiB");
    }
}
