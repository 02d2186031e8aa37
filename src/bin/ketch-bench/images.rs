//! The benchmark's images, built here from the host's busybox binary
//! (Debian's busybox-static) so no outside registry is needed:
//! - `busybox`: one layer, busybox and a link per applet; the containers'
//!   image.
//! - `pause`: the same layer, running `sleep` forever; the sandbox image a
//!   runtime that needs one (containerd) is configured with.
//! - `big`: a busybox layer of its own (so no layer is shared with the
//!   others and a cold pull is really cold) and `layers` layers of
//!   pseudo-random data, about `layer_mib` MiB each once gzipped.
//!
//! The layer data has four bits of entropy per byte, so gzip halves it, as
//! it does typical image content: a pull then spends time inflating as
//! well as transferring. The generator is seeded, so the same parameters
//! make the same digests.

use std::path::Path;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read busybox at {path}: {source}")]
    Busybox {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot list busybox applets: {0}")]
    Applets(std::io::Error),
    #[error("cannot build a layer tar: {0}")]
    Tar(std::io::Error),
    #[error("cannot encode {what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// A content-addressed blob.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub media_type: &'static str,
    pub data: Bytes,
}

impl Blob {
    fn new(media_type: &'static str, data: Vec<u8>) -> Blob {
        Blob {
            digest: sha256(&data),
            media_type,
            data: Bytes::from(data),
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.data.len(),
        })
    }
}

/// An image ready to push: its layers, config and manifest.
#[derive(Debug, Clone)]
pub struct Image {
    /// Repository path in the registry, e.g. `bench/busybox`.
    pub repository: String,
    pub tag: String,
    pub layers: Vec<Blob>,
    pub config: Blob,
    pub manifest: Blob,
}

impl Image {
    /// Compressed bytes a pull transfers.
    pub fn size(&self) -> usize {
        self.layers.iter().map(|l| l.data.len()).sum::<usize>()
            + self.config.data.len()
            + self.manifest.data.len()
    }
}

pub fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A gzipped layer and the digest of its uncompressed tar (the diff ID).
struct Layer {
    blob: Blob,
    diff_id: String,
}

fn gzip_layer(tar: Vec<u8>) -> Result<Layer, ImageError> {
    use std::io::Write;
    let diff_id = sha256(&tar);
    let mut gz = GzEncoder::new(Vec::with_capacity(tar.len() / 2), Compression::new(2));
    gz.write_all(&tar).map_err(ImageError::Tar)?;
    let data = gz.finish().map_err(ImageError::Tar)?;
    Ok(Layer {
        blob: Blob::new(MEDIA_LAYER_GZIP, data),
        diff_id,
    })
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> Result<(), ImageError> {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, path, std::io::empty())
        .map_err(ImageError::Tar)
}

fn add_file(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> Result<(), ImageError> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    b.append_data(&mut h, path, data).map_err(ImageError::Tar)
}

/// A root filesystem of busybox: the binary, a symlink per applet in
/// /bin, the usual directories, and minimal passwd/group files.
/// `marker`, when given, is written to /etc/image-marker to make the layer
/// (and its digest) distinct.
fn busybox_layer(busybox: &Path, marker: Option<&str>) -> Result<Layer, ImageError> {
    let binary = std::fs::read(busybox).map_err(|source| ImageError::Busybox {
        path: busybox.display().to_string(),
        source,
    })?;
    let out = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(ImageError::Applets)?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    applets.sort();
    applets.dedup();

    let mut b = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("var", 0o755),
        ("var/run", 0o755),
    ] {
        add_dir(&mut b, dir, mode)?;
    }
    add_file(&mut b, "bin/busybox", 0o755, &binary)?;
    for applet in &applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .map_err(ImageError::Tar)?;
    }
    add_file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    )?;
    add_file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    if let Some(marker) = marker {
        add_file(&mut b, "etc/image-marker", 0o644, marker.as_bytes())?;
    }
    let tar = b.into_inner().map_err(ImageError::Tar)?;
    gzip_layer(tar)
}

/// One file of `bytes` pseudo-random bytes, 4 bits of entropy each.
fn data_layer(index: usize, bytes: usize, rng: &mut fastrand::Rng) -> Result<Layer, ImageError> {
    const ALPHABET: &[u8; 16] = b"acdeghilmnorstu ";
    let mut data = vec![0u8; bytes];
    for chunk in data.chunks_mut(16) {
        let mut bits = rng.u64(..);
        for byte in chunk.iter_mut() {
            *byte = ALPHABET[(bits & 0xf) as usize];
            bits >>= 4;
        }
    }
    let mut b = tar::Builder::new(Vec::with_capacity(bytes + 4096));
    add_dir(&mut b, "data", 0o755)?;
    add_file(&mut b, &format!("data/layer-{index}.bin"), 0o644, &data)?;
    let tar = b.into_inner().map_err(ImageError::Tar)?;
    gzip_layer(tar)
}

fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn assemble(repository: &str, layers: Vec<Layer>, cmd: &[&str]) -> Result<Image, ImageError> {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config = json!({
        "architecture": platform_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| json!({"created_by": "ketch-bench push-images"})).collect::<Vec<_>>(),
    });
    let config = Blob::new(
        MEDIA_CONFIG,
        serde_json::to_vec(&config).map_err(|source| ImageError::Json {
            what: "image config",
            source,
        })?,
    );
    let layers: Vec<Blob> = layers.into_iter().map(|l| l.blob).collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(
        MEDIA_MANIFEST,
        serde_json::to_vec(&manifest).map_err(|source| ImageError::Json {
            what: "image manifest",
            source,
        })?,
    );
    Ok(Image {
        repository: repository.to_owned(),
        tag: "latest".to_owned(),
        layers,
        config,
        manifest,
    })
}

/// The three images, see the module doc.
pub struct Set {
    pub busybox: Image,
    pub pause: Image,
    pub big: Image,
}

pub fn build(busybox: &Path, layers: usize, layer_mib: usize) -> Result<Set, ImageError> {
    let base = busybox_layer(busybox, None)?;
    let base_again = Layer {
        blob: base.blob.clone(),
        diff_id: base.diff_id.clone(),
    };
    let busybox_image = assemble("bench/busybox", vec![base], &["sh"])?;
    let pause = assemble("bench/pause", vec![base_again], &["sleep", "2147483647"])?;
    let mut big_layers = vec![busybox_layer(busybox, Some("ketch-bench big image"))?];
    let mut rng = fastrand::Rng::with_seed(0x6b65_7463_6862);
    // Four bits of entropy per byte: gzip output is half the input.
    let raw = layer_mib * 2 * 1024 * 1024;
    for i in 0..layers {
        big_layers.push(data_layer(i, raw, &mut rng)?);
    }
    let big = assemble("bench/big", big_layers, &["sh"])?;
    Ok(Set {
        busybox: busybox_image,
        pause,
        big,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_consistent() {
        let set = build(Path::new("/bin/busybox"), 2, 1).unwrap();
        // The same layer serves busybox and pause; big has its own.
        assert_eq!(set.busybox.layers[0].digest, set.pause.layers[0].digest);
        assert_ne!(set.busybox.layers[0].digest, set.big.layers[0].digest);
        assert_eq!(set.big.layers.len(), 3);
        for l in &set.big.layers[1..] {
            // ~1 MiB each once gzipped.
            let mib = l.data.len() as f64 / (1024.0 * 1024.0);
            assert!((0.8..1.3).contains(&mib), "layer of {mib} MiB");
            assert_eq!(l.digest, sha256(&l.data));
        }
        let manifest: serde_json::Value = serde_json::from_slice(&set.big.manifest.data).unwrap();
        assert_eq!(manifest["config"]["digest"], set.big.config.digest.as_str());
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
        let config: serde_json::Value = serde_json::from_slice(&set.big.config.data).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);

        // The busybox layer has the shell and its applets.
        let mut tar = Vec::new();
        let mut gz = flate2::read::GzDecoder::new(&set.busybox.layers[0].data[..]);
        std::io::Read::read_to_end(&mut gz, &mut tar).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "bin/busybox",
            "bin/sh",
            "bin/echo",
            "bin/sleep",
            "etc/passwd",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }
}
