//! PullImage: resolve the reference to this platform's manifest, fetch the
//! config, then download, verify and unpack the missing layers in parallel
//! (at most `image.max_concurrent_downloads` at once), and record the image.
//!
//! A layer streams from the network into a blocking task through a bounded
//! channel: hashing, inflating and unpacking happen while it downloads. A
//! layer already unpacked (by chain ID) is not downloaded at all; a blob
//! already in the content store is unpacked from disk. Pulls that need the
//! same layer or config at the same time download it once: the first takes
//! a per-key lock ([`SingleFlight`]), the others wait for it and then find
//! the result on disk (or, if it failed, try themselves).

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use tokio::sync::{OwnedMutexGuard, Semaphore};
use tokio::task::JoinSet;

use super::Inner;
use super::digest::{Digest, chain_ids};
use super::error::ImageError;
use super::layers::{LayerSpec, apply_layer};
use super::manifest::{
    MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, ManifestKind, choose_platform, host_platform,
    layer_media_type, parse_config, parse_manifest,
};
use super::records::{self, Image, Layer};
use super::reference::Reference;
use super::registry::{RegistryAuth, Session};
use crate::clock::now_unix_nanos;
use crate::errors::chain;
use crate::task::{TaskFailed, blocking};

/// Per-key mutual exclusion for downloads, with no entry left once nobody
/// waits.
#[derive(Default)]
pub struct SingleFlight {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a key of a [`SingleFlight`].
pub struct FlightGuard<'a> {
    flights: &'a SingleFlight,
    key: String,
    slot: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl SingleFlight {
    pub async fn lock(&self, key: String) -> FlightGuard<'_> {
        let slot = match self.map.lock() {
            Ok(mut map) => map.entry(key.clone()).or_default().clone(),
            // A poisoned map only loses sharing, never correctness.
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        };
        let guard = slot.clone().lock_owned().await;
        FlightGuard {
            flights: self,
            key,
            slot,
            guard: Some(guard),
        }
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Ok(mut map) = self.flights.map.lock()
            && Arc::strong_count(&self.slot) == 2
        {
            // Only the map and we hold it: nobody waits.
            map.remove(&self.key);
        }
    }
}

impl Inner {
    pub(super) async fn pull(
        self: &Arc<Self>,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?;
        let name = r.to_string();
        let _writer = self.writer_guard().await?;
        let session = Arc::new(self.registry.session(&r, auth)?);
        tracing::info!(reference = %name, "pulling image");

        // The manifest (through an index, if the reference names one).
        let top = session
            .manifest(&r.manifest_reference(), MAX_MANIFEST_SIZE)
            .await?;
        let top_digest = Digest::of(&top.bytes);
        if let Some(wanted) = &r.digest
            && wanted != &top_digest
        {
            return Err(ImageError::Verification {
                what: "manifest",
                digest: wanted.to_string(),
                reason: format!("the registry sent content hashing to {top_digest}"),
            });
        }
        let mut documents = vec![(top_digest.clone(), top.bytes.clone())];
        let manifest = match parse_manifest(&top.bytes, top.content_type.as_deref(), &name)? {
            ManifestKind::Manifest(m) => m,
            ManifestKind::Index(index) => {
                let desc = choose_platform(&index, &host_platform(), &name)?;
                let digest = desc.digest()?;
                let size = desc.size()?;
                if size > MAX_MANIFEST_SIZE {
                    return Err(ImageError::TooLarge {
                        what: "manifest",
                        name: digest.to_string(),
                        limit: MAX_MANIFEST_SIZE,
                    });
                }
                let fetched = session.manifest(digest.as_str(), MAX_MANIFEST_SIZE).await?;
                verify("manifest", &digest, size, &fetched.bytes)?;
                let m = match parse_manifest(
                    &fetched.bytes,
                    fetched.content_type.as_deref(),
                    digest.as_str(),
                )? {
                    ManifestKind::Manifest(m) => m,
                    ManifestKind::Index(_) => {
                        return Err(ImageError::Unsupported {
                            what: "manifest",
                            detail: format!("{digest}: an index inside an index"),
                        });
                    }
                };
                documents.push((digest, fetched.bytes));
                m
            }
        };

        // The config.
        let config_digest = manifest.config.digest()?;
        let config_size = manifest.config.size()?;
        if config_size > MAX_CONFIG_SIZE {
            return Err(ImageError::TooLarge {
                what: "image config",
                name: config_digest.to_string(),
                limit: MAX_CONFIG_SIZE,
            });
        }
        let config_bytes = self
            .fetch_config(&session, &config_digest, config_size)
            .await?;
        let config = parse_config(&config_bytes, config_digest.as_str(), manifest.layers.len())?;
        let diff_ids = config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<Vec<_>, _>>()?;
        let chains = chain_ids(&diff_ids);

        // The layers.
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (i, desc) in manifest.layers.iter().enumerate() {
            layer_media_type(&desc.media_type)?;
            layers.push(Layer {
                digest: Some(desc.digest()?),
                size: desc.size()?,
                diff_id: diff_ids[i].clone(),
                chain_id: chains[i].clone(),
            });
        }
        let limit = Arc::new(Semaphore::new(
            self.config.image.max_concurrent_downloads.max(1),
        ));
        let mut tasks = JoinSet::new();
        for layer in &layers {
            let spec = LayerSpec {
                blob: layer.digest.clone().map(|d| (d, layer.size)),
                diff_id: layer.diff_id.clone(),
                chain_id: layer.chain_id.clone(),
            };
            let inner = self.clone();
            let session = session.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit
                    .acquire_owned()
                    .await
                    .map_err(|_| ImageError::Internal("download limiter closed".into()))?;
                inner.ensure_layer(&session, spec).await
            });
        }
        // The first failure ends the pull; dropping the set aborts the rest.
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| TaskFailed(e.to_string()))??;
        }

        // Manifests, then the record: the image becomes visible last.
        let inner = self.clone();
        let docs = documents.clone();
        blocking(move || {
            for (digest, bytes) in &docs {
                inner.content.write(digest, bytes, "manifest")?;
            }
            Ok::<_, ImageError>(())
        })
        .await?;
        let image = Image {
            id: config_digest.to_string(),
            repo_tags: r
                .tag
                .as_ref()
                .map(|_| vec![name.clone()])
                .unwrap_or_default(),
            repo_digests: vec![r.with_digest(&top_digest)],
            size: layers.iter().map(|l| l.size).sum(),
            config: config.config.clone().unwrap_or_default(),
            annotations: manifest.annotations.clone(),
            layers,
            manifests: documents.into_iter().map(|(d, _)| d).collect(),
            platform: platform_string(&config),
            created_at: now_unix_nanos(),
        };
        let inner = self.clone();
        let stored =
            blocking(move || inner.records.update(|images| records::merge(images, image))).await?;
        tracing::info!(reference = %name, id = %stored.id, "pulled image");
        Ok(stored)
    }

    /// The config blob: from the content store, or fetched and stored.
    async fn fetch_config(
        self: &Arc<Self>,
        session: &Session,
        digest: &Digest,
        size: u64,
    ) -> Result<Vec<u8>, ImageError> {
        let _flight = self.flights.lock(format!("blob:{digest}")).await;
        if self.content.exists(digest) {
            let inner = self.clone();
            let d = digest.clone();
            return blocking(move || inner.content.read(&d, MAX_CONFIG_SIZE, "image config")).await;
        }
        let bytes = session
            .blob_bytes(digest, MAX_CONFIG_SIZE, "image config")
            .await?;
        verify("image config", digest, size, &bytes)?;
        let inner = self.clone();
        let d = digest.clone();
        let b = bytes.clone();
        blocking(move || inner.content.write(&d, &b, "image config")).await?;
        Ok(bytes)
    }

    /// Makes sure the layer is unpacked: nothing to do, unpack the stored
    /// blob, or stream it from the registry.
    async fn ensure_layer(
        self: &Arc<Self>,
        session: &Session,
        spec: LayerSpec,
    ) -> Result<(), ImageError> {
        if self.layers.exists(&spec.chain_id) {
            return Ok(());
        }
        let _flight = self.flights.lock(format!("layer:{}", spec.chain_id)).await;
        if self.layers.exists(&spec.chain_id) {
            return Ok(());
        }
        let Some((digest, size)) = spec.blob.clone() else {
            return Err(ImageError::Internal(
                "a pulled layer without a digest".into(),
            ));
        };
        if self.content.exists(&digest) {
            let inner = self.clone();
            let path = self.content.path(&digest);
            return blocking(move || {
                let file = std::fs::File::open(&path)
                    .map_err(|e| ImageError::io("open blob", &path, e))?;
                apply_layer(&inner.layers, None, file, &spec).map(|_| ())
            })
            .await;
        }

        let mut resp = session.blob(&digest).await?;
        if let Some(len) = resp.content_length()
            && len != size
        {
            return Err(ImageError::Verification {
                what: "layer",
                digest: digest.to_string(),
                reason: format!("the registry sends {len} bytes, the manifest says {size}"),
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(16);
        let inner = self.clone();
        let keep_blob = !self.config.image.discard_unpacked_layers;
        let unpack = tokio::task::spawn_blocking(move || {
            // Verified against its digest either way; stored only if kept.
            let content = keep_blob.then_some(&inner.content);
            apply_layer(&inner.layers, content, ChannelReader::new(rx), &spec)
        });
        let mut received: u64 = 0;
        let mut feed_error = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    received += chunk.len() as u64;
                    if received > size {
                        feed_error = Some(ImageError::Verification {
                            what: "layer",
                            digest: digest.to_string(),
                            reason: format!(
                                "the registry sends more than the {size} bytes the manifest says"
                            ),
                        });
                        let _ = tx
                            .send(Err(io::Error::other("blob longer than its descriptor")))
                            .await;
                        break;
                    }
                    if tx.send(Ok(chunk)).await.is_err() {
                        // The unpacker stopped: its error tells why.
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let message = format!("downloading layer {digest}: {}", chain(&e));
                    let _ = tx.send(Err(io::Error::other(message.clone()))).await;
                    feed_error = Some(ImageError::Network {
                        registry: session.registry().to_owned(),
                        message,
                    });
                    break;
                }
            }
        }
        drop(tx);
        let result = unpack.await.map_err(|e| TaskFailed(e.to_string()))?;
        if let Some(e) = feed_error {
            return Err(e);
        }
        result.map(|stats| {
            tracing::debug!(layer = %digest, entries = stats.entries, "layer unpacked");
        })
    }
}

/// Checks a whole blob against its descriptor.
fn verify(what: &'static str, digest: &Digest, size: u64, bytes: &[u8]) -> Result<(), ImageError> {
    if bytes.len() as u64 != size {
        return Err(ImageError::Verification {
            what,
            digest: digest.to_string(),
            reason: format!("size is {} bytes, the descriptor says {size}", bytes.len()),
        });
    }
    let actual = Digest::of(bytes);
    if &actual != digest {
        return Err(ImageError::Verification {
            what,
            digest: digest.to_string(),
            reason: format!("content hashes to {actual}"),
        });
    }
    Ok(())
}

pub(super) fn platform_string(config: &super::manifest::ConfigFile) -> String {
    format!("{}/{}", config.os, config.architecture)
}

/// The blocking side of the download channel, as a `Read`.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
