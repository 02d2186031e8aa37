//! `ketch image import`: loads images from an OCI image layout (a directory
//! or a tar of one) or a `docker save` tar (legacy, or the OCI-based one of
//! docker 25+), without a registry.
//!
//! Every blob with a digest is verified as it is read, and every layer's
//! diff ID against the config, exactly as for a pull; layers already present
//! are skipped. A tar is indexed once (names → offsets) and read in place,
//! never extracted. Names: a docker archive's `RepoTags`; an OCI layout's
//! `io.containerd.image.name` annotation, or `org.opencontainers.image.
//! ref.name` when it is a full reference (a bare tag names no repository,
//! so such an image is imported untagged and shown by ID).
//!
//! Blocking: call it from a blocking thread (the CLI has no runtime).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::Inner;
use super::digest::{Digest, chain_ids};
use super::error::ImageError;
use super::layers::{LayerSpec, apply_layer};
use super::manifest::{
    Index, MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, Manifest, ManifestKind, choose_platform,
    host_platform, layer_media_type, parse_config, parse_manifest,
};
use super::pull::platform_string;
use super::records::{self, Image, Layer};
use super::reference::Reference;
use crate::clock::now_unix_nanos;

/// `ketch image import PATH`: imports into the store of `config` and
/// prints a progress line to stderr (rewritten in place on a terminal) and
/// one line per image to stdout.
pub fn import_command(config: &crate::config::Config, path: &Path) -> Result<(), ImageError> {
    use std::io::{IsTerminal, Write};
    let store = super::ImageStore::new(config)?;
    let tty = std::io::stderr().is_terminal();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let progress = |p: &ImportProgress| {
        let line = if p.skipped {
            format!(
                "{}: layer {}/{} already present",
                p.image, p.layer, p.layers
            )
        } else {
            format!(
                "{}: layer {}/{} {:.1}/{:.1} MiB",
                p.image,
                p.layer,
                p.layers,
                mib(p.bytes),
                mib(p.total)
            )
        };
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
    };
    let result = store.import(path, &progress);
    if tty {
        eprintln!();
    }
    for image in result? {
        let name = image
            .repo_tags
            .first()
            .cloned()
            .unwrap_or_else(|| "<untagged>".into());
        println!("imported {name} {}", image.id);
    }
    Ok(())
}

/// Where an import is, for a progress line.
#[derive(Debug, Clone)]
pub struct ImportProgress {
    /// The image's name (or its config digest when it has none).
    pub image: String,
    /// 1-based index of the layer being read.
    pub layer: usize,
    pub layers: usize,
    /// Bytes of this layer read so far, and its size.
    pub bytes: u64,
    pub total: u64,
    /// The layer was already present and was skipped.
    pub skipped: bool,
}

/// How often (in bytes) progress is reported within a layer.
const PROGRESS_STEP: u64 = 32 << 20;

impl Inner {
    pub(super) fn import(
        self: &Arc<Self>,
        path: &Path,
        progress: &dyn Fn(&ImportProgress),
    ) -> Result<Vec<Image>, ImageError> {
        let bad = |reason: String| ImageError::Import {
            path: path.to_owned(),
            reason,
        };
        let source = if path.is_dir() {
            Source::Dir(path.to_owned())
        } else {
            Source::Tar(TarSource::index(path)?)
        };
        let _writer = self.writer_guard_blocking()?;
        let mut imported = Vec::new();
        if source.exists("manifest.json") {
            let bytes = source.read_all("manifest.json", MAX_MANIFEST_SIZE)?;
            let entries: Vec<DockerEntry> =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest.json: {e}")))?;
            for entry in entries {
                imported.push(self.import_docker(&source, &entry, progress)?);
            }
        } else if source.exists("index.json") {
            let bytes = source.read_all("index.json", MAX_MANIFEST_SIZE)?;
            let index: Index =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("index.json: {e}")))?;
            for desc in &index.manifests {
                let name = desc
                    .annotations
                    .get("io.containerd.image.name")
                    .or_else(|| {
                        desc.annotations
                            .get("org.opencontainers.image.ref.name")
                            .filter(|n| n.contains('/'))
                    })
                    .map(|n| Reference::parse(n))
                    .transpose()?;
                imported.push(self.import_oci(&source, desc, name, progress)?);
            }
        } else {
            return Err(bad(
                "neither manifest.json (docker save) nor index.json (OCI layout) found".into(),
            ));
        }
        if imported.is_empty() {
            return Err(bad("the archive holds no image".into()));
        }
        Ok(imported)
    }

    fn import_oci(
        self: &Arc<Self>,
        source: &Source,
        desc: &super::manifest::Descriptor,
        name: Option<Reference>,
        progress: &dyn Fn(&ImportProgress),
    ) -> Result<Image, ImageError> {
        let top_digest = desc.digest()?;
        let top = source.read_blob(&top_digest, desc.size()?, MAX_MANIFEST_SIZE, "manifest")?;
        let label = name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_else(|| top_digest.to_string());
        let mut documents = vec![(top_digest.clone(), top.clone())];
        let manifest: Manifest = match parse_manifest(&top, Some(&desc.media_type), &label)? {
            ManifestKind::Manifest(m) => m,
            ManifestKind::Index(index) => {
                let d = choose_platform(&index, &host_platform(), &label)?;
                let digest = d.digest()?;
                let bytes = source.read_blob(&digest, d.size()?, MAX_MANIFEST_SIZE, "manifest")?;
                let m = match parse_manifest(&bytes, Some(&d.media_type), digest.as_str())? {
                    ManifestKind::Manifest(m) => m,
                    ManifestKind::Index(_) => {
                        return Err(ImageError::Unsupported {
                            what: "manifest",
                            detail: format!("{digest}: an index inside an index"),
                        });
                    }
                };
                documents.push((digest, bytes));
                m
            }
        };
        let config_digest = manifest.config.digest()?;
        let config_bytes = source.read_blob(
            &config_digest,
            manifest.config.size()?,
            MAX_CONFIG_SIZE,
            "image config",
        )?;
        let mut layers = Vec::new();
        for d in &manifest.layers {
            layer_media_type(&d.media_type)?;
            let digest = d.digest()?;
            layers.push((blob_path(&digest), Some((digest, d.size()?))));
        }
        let image = self.import_layers(
            source,
            &label,
            &config_digest,
            &config_bytes,
            layers,
            progress,
        )?;
        let image = Image {
            repo_tags: name
                .as_ref()
                .filter(|n| n.tag.is_some())
                .map(|n| vec![n.to_string()])
                .unwrap_or_default(),
            repo_digests: name
                .as_ref()
                .map(|n| vec![n.with_digest(&top_digest)])
                .unwrap_or_default(),
            annotations: manifest.annotations.clone(),
            manifests: documents.iter().map(|(d, _)| d.clone()).collect(),
            ..image
        };
        for (digest, bytes) in &documents {
            self.content.write(digest, bytes, "manifest")?;
        }
        self.records.update(|images| records::merge(images, image))
    }

    fn import_docker(
        self: &Arc<Self>,
        source: &Source,
        entry: &DockerEntry,
        progress: &dyn Fn(&ImportProgress),
    ) -> Result<Image, ImageError> {
        let config_bytes = source.read_all(&entry.config, MAX_CONFIG_SIZE)?;
        let config_digest = Digest::of(&config_bytes);
        if let Some(named) = digest_of_blob_path(&entry.config)
            && named != config_digest
        {
            return Err(ImageError::Verification {
                what: "image config",
                digest: named.to_string(),
                reason: format!("content hashes to {config_digest}"),
            });
        }
        let tags = entry
            .repo_tags
            .iter()
            .map(|t| Reference::parse(t).map(|r| r.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let label = tags
            .first()
            .cloned()
            .unwrap_or_else(|| config_digest.to_string());
        let mut layers = Vec::new();
        for path in &entry.layers {
            // Blobs of the OCI-based format are named by digest: verify them.
            let blob = match digest_of_blob_path(path) {
                Some(d) => Some((d, source.size(path)?)),
                None => None,
            };
            layers.push((path.clone(), blob));
        }
        let image = self.import_layers(
            source,
            &label,
            &config_digest,
            &config_bytes,
            layers,
            progress,
        )?;
        let image = Image {
            repo_tags: tags,
            ..image
        };
        self.records.update(|images| records::merge(images, image))
    }

    /// Stores the config, unpacks the layers, and returns the record
    /// (without names).
    fn import_layers(
        self: &Arc<Self>,
        source: &Source,
        label: &str,
        config_digest: &Digest,
        config_bytes: &[u8],
        layers: Vec<(String, Option<(Digest, u64)>)>,
        progress: &dyn Fn(&ImportProgress),
    ) -> Result<Image, ImageError> {
        let config = parse_config(config_bytes, config_digest.as_str(), layers.len())?;
        let diff_ids = config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let chains = chain_ids(&diff_ids);
        let count = layers.len();
        let mut records = Vec::with_capacity(count);
        for (i, (path, blob)) in layers.into_iter().enumerate() {
            let total = source.size(&path)?;
            let spec = LayerSpec {
                blob: blob.clone(),
                diff_id: diff_ids[i].clone(),
                chain_id: chains[i].clone(),
            };
            let mut report = ImportProgress {
                image: label.to_owned(),
                layer: i + 1,
                layers: count,
                bytes: 0,
                total,
                skipped: false,
            };
            if self.layers.exists(&spec.chain_id) {
                report.skipped = true;
                progress(&report);
            } else {
                progress(&report);
                let reader = Progress {
                    inner: source.open(&path)?,
                    report: report.clone(),
                    next: PROGRESS_STEP,
                    progress,
                };
                apply_layer(&self.layers, None, reader, &spec)?;
                report.bytes = total;
                progress(&report);
            }
            records.push(Layer {
                digest: blob.map(|(d, _)| d),
                size: total,
                diff_id: spec.diff_id,
                chain_id: spec.chain_id,
            });
        }
        self.content
            .write(config_digest, config_bytes, "image config")?;
        Ok(Image {
            id: config_digest.to_string(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size: records.iter().map(|l| l.size).sum(),
            config: config.config.clone().unwrap_or_default(),
            annotations: Default::default(),
            layers: records,
            manifests: Vec::new(),
            platform: platform_string(&config),
            created_at: now_unix_nanos(),
        })
    }
}

/// One image of a docker-save `manifest.json`.
#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_vec")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn null_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The digest a `blobs/sha256/<hex>` path names.
fn digest_of_blob_path(path: &str) -> Option<Digest> {
    let hex = normalize(path)
        .ok()?
        .strip_prefix("blobs/sha256/")?
        .to_owned();
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// A relative archive path with `.`/`..` resolved lexically; `..` above the
/// top is refused.
fn normalize(path: &str) -> Result<String, String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!("path {path:?} leaves the archive"));
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Reports progress as a layer is read.
struct Progress<'a, R> {
    inner: R,
    report: ImportProgress,
    next: u64,
    progress: &'a dyn Fn(&ImportProgress),
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.report.bytes += n as u64;
        if self.report.bytes >= self.next {
            self.next = self.report.bytes + PROGRESS_STEP;
            (self.progress)(&self.report);
        }
        Ok(n)
    }
}

/// Where the archive's files are.
enum Source {
    Dir(PathBuf),
    Tar(TarSource),
}

impl Source {
    fn err(&self, reason: String) -> ImageError {
        let path = match self {
            Source::Dir(p) => p.clone(),
            Source::Tar(t) => t.path.clone(),
        };
        ImageError::Import { path, reason }
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(root) => normalize(name).is_ok_and(|n| root.join(n).is_file()),
            Source::Tar(t) => t.resolve(name).is_ok(),
        }
    }

    fn size(&self, name: &str) -> Result<u64, ImageError> {
        match self {
            Source::Dir(root) => {
                let path = root.join(normalize(name).map_err(|r| self.err(r))?);
                std::fs::metadata(&path)
                    .map(|m| m.len())
                    .map_err(|e| ImageError::io("stat", &path, e))
            }
            Source::Tar(t) => t.resolve(name).map(|(_, size)| size),
        }
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read>, ImageError> {
        match self {
            Source::Dir(root) => {
                let path = root.join(normalize(name).map_err(|r| self.err(r))?);
                // A symlink inside a layout is not followed anywhere.
                let meta = std::fs::symlink_metadata(&path)
                    .map_err(|e| ImageError::io("stat", &path, e))?;
                if !meta.is_file() {
                    return Err(self.err(format!("{name} is not a regular file")));
                }
                Ok(Box::new(
                    File::open(&path).map_err(|e| ImageError::io("open", &path, e))?,
                ))
            }
            Source::Tar(t) => t.open(name),
        }
    }

    fn read_all(&self, name: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
        let mut bytes = Vec::new();
        self.open(name)?
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| self.err(format!("reading {name}: {e}")))?;
        if bytes.len() as u64 > limit {
            return Err(ImageError::TooLarge {
                what: "file",
                name: name.to_owned(),
                limit,
            });
        }
        Ok(bytes)
    }

    /// A blob by digest, verified.
    fn read_blob(
        &self,
        digest: &Digest,
        size: u64,
        limit: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, ImageError> {
        if size > limit {
            return Err(ImageError::TooLarge {
                what,
                name: digest.to_string(),
                limit,
            });
        }
        let bytes = self.read_all(&blob_path(digest), limit)?;
        let actual = Digest::of(&bytes);
        if bytes.len() as u64 != size || &actual != digest {
            return Err(ImageError::Verification {
                what,
                digest: digest.to_string(),
                reason: format!(
                    "{} bytes hashing to {actual}, expected {size} bytes",
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }
}

/// A tar indexed by name: regular files by offset, links by target.
struct TarSource {
    path: PathBuf,
    entries: HashMap<String, TarItem>,
}

enum TarItem {
    File { offset: u64, size: u64 },
    Link(String),
}

impl TarSource {
    fn index(path: &Path) -> Result<TarSource, ImageError> {
        let bad = |reason: String| ImageError::Import {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(|e| ImageError::io("open", path, e))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive
            .entries_with_seek()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?
        {
            let entry = entry.map_err(|e| bad(format!("not a readable tar archive: {e}")))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Ok(name) = normalize(&raw) else { continue };
            let item = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => TarItem::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
                    match normalize(&format!("{parent}/{target}")) {
                        Ok(t) if !target.starts_with('/') => TarItem::Link(t),
                        _ => continue,
                    }
                }
                tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| String::from_utf8_lossy(&t).into_owned())
                        .unwrap_or_default();
                    match normalize(&target) {
                        Ok(t) => TarItem::Link(t),
                        Err(_) => continue,
                    }
                }
                _ => continue,
            };
            entries.insert(name, item);
        }
        Ok(TarSource {
            path: path.to_owned(),
            entries,
        })
    }

    /// Offset and size of `name`, following links (a few hops).
    fn resolve(&self, name: &str) -> Result<(u64, u64), ImageError> {
        let missing = || ImageError::Import {
            path: self.path.clone(),
            reason: format!("{name} not found in the archive"),
        };
        let mut current = normalize(name).map_err(|_| missing())?;
        for _ in 0..8 {
            match self.entries.get(&current) {
                Some(TarItem::File { offset, size }) => return Ok((*offset, *size)),
                Some(TarItem::Link(target)) => current = target.clone(),
                None => return Err(missing()),
            }
        }
        Err(missing())
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read>, ImageError> {
        let (offset, size) = self.resolve(name)?;
        let mut file = File::open(&self.path).map_err(|e| ImageError::io("open", &self.path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| ImageError::io("seek", &self.path, e))?;
        Ok(Box::new(file.take(size)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths() {
        assert_eq!(normalize("./blobs/sha256/ab").unwrap(), "blobs/sha256/ab");
        assert_eq!(normalize("a/../b").unwrap(), "b");
        assert!(normalize("../x").is_err());
        let d = Digest::of(b"x");
        assert_eq!(
            digest_of_blob_path(&format!("blobs/sha256/{}", d.hex())),
            Some(d)
        );
        assert_eq!(digest_of_blob_path("abc/layer.tar"), None);
    }
}
