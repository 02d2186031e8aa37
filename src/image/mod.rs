//! Images: references, registry pulls, the content and layer stores, image
//! records, leases, garbage collection, imports and filesystem usage.
//!
//! # The interface other modules use
//!
//! [`ImageStore`] is the facade, built once from the [`Config`] (cheap:
//! creates the dirs, reads one JSON file, schedules a garbage collection
//! that also sweeps what a crash left half-made):
//!
//! ```text
//! ImageStore::new(&Config) -> Result<ImageStore, ImageError>
//! async pull(&self, reference: &str, auth: Option<RegistryAuth>) -> Result<Image, _>
//! find(&self, key: &str) -> Result<Option<Image>, _>       // ID, ID prefix, tag or digest reference
//! resolve(&self, key: &str) -> Result<Image, _>             // the same; unknown is ImageError::NotFound
//! list(&self) -> Result<Vec<Image>, _>
//! async remove(&self, key: &str) -> Result<Option<Image>, _>   // every tag goes; unknown is Ok(None)
//! layer_dirs(&self, key: &str) -> Result<Vec<PathBuf>, _>   // topmost first: overlay's lowerdir= order
//! config_json(&self, image: &Image) -> Result<serde_json::Value, _>  // the full OCI image config
//! async acquire(&self, container_id: &str, image_key: &str) -> Result<Lease, _>
//! async acquire_with_volumes(&self, container_id, image_key, volume_keys: &[String]) -> Result<Lease, _>
//! async release(&self, container_id: &str) -> Result<(), _>  // unknown is Ok
//! lease(&self, container_id: &str) -> Result<Option<Lease>, _>
//! leases(&self) -> Result<Vec<Lease>, _>                    // to reconcile with the container store at start
//! lease_dirs(&self, lease: &Lease) -> Vec<PathBuf>          // topmost first, valid even after RemoveImage
//! async fs_usage(&self) -> Result<FsUsage, _>              // ImageFsInfo
//! import(&self, path: &Path, progress: &dyn Fn(&ImportProgress)) -> Result<Vec<Image>, _>  // blocking
//! ```
//!
//! An [`Image`] carries `id` (`sha256:<config digest>`), `repo_tags`,
//! `repo_digests`, `size`, `config` ([`RunConfig`]: Env, Entrypoint, Cmd,
//! WorkingDir, User, StopSignal, ExposedPorts, Volumes, Labels),
//! `annotations`, its layers and [`Image::user`] (uid or user name).
//!
//! A container takes a lease on its image (and the images of its image
//! volumes, in the same lease) when it is created and releases it when it
//! is removed. RemoveImage deletes the record at once; layers a
//! lease still holds stay on disk until the last lease on them is released,
//! then garbage collection removes them (containerd's model).
//!
//! # On disk (under `root_dir`)
//!
//! ```text
//! content/sha256/<hex>     verified blobs: manifests, indexes, configs (and pulled layer
//!                          blobs when `discard_unpacked_layers` is off)
//! content/.tmp-*           blobs being written
//! layers/<chain-id hex>/   one unpacked layer, an overlay lowerdir
//! layers/.tmp-*            layers being unpacked
//! images/images.json       every image record (atomic rewrite)
//! images/db.lock           flock serialising record changes across processes
//! images/gc.lock           flock: writers shared, garbage collection exclusive
//! leases/<container>.json  one lease per container
//! ```
//!
//! # Crash safety and concurrency
//!
//! Blobs and layers are made under `.tmp-*` names and renamed into place
//! only once verified, and the image record is written last: a pull that
//! fails or is killed leaves no visible image and no half layer (complete
//! layers it made stay until the next collection, which lets a retry reuse
//! them). Every writer (pull, import, acquire) holds `gc.lock` shared for
//! its whole run; a collection takes it exclusive and without waiting, so it
//! never blocks an RPC: when busy it is retried when the last writer is done.
//! With the lock exclusive, every `.tmp-*` entry is garbage. No lock is held
//! across network I/O except that shared one, which blocks nothing but a
//! collection. Concurrent pulls needing the same layer (by chain ID) or
//! config (by digest) download it once: the others wait for it.

mod content;
mod digest;
mod error;
mod fsinfo;
mod fsutil;
mod gc;
mod import;
mod layers;
mod leases;
mod limits;
mod manifest;
mod pull;
mod records;
mod reference;
mod registry;
mod unpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub use content::ContentStore;
pub use digest::Digest;
pub use error::ImageError;
pub use fsinfo::FsUsage;
pub use import::{ImportProgress, import_command};
pub use layers::LayerStore;
pub use leases::{HeldImage, Lease};
pub use limits::UnpackLimits;
pub use records::Image;
pub use registry::{Credentials, RegistryAuth};

use crate::config::Config;
use crate::task::blocking;
use leases::Leases;
use records::Records;
use registry::RegistryClient;

/// The image subsystem of one root dir. Cheap to clone.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    root: PathBuf,
    content: ContentStore,
    layers: LayerStore,
    records: Records,
    leases: Leases,
    registry: Arc<RegistryClient>,
    flights: pull::SingleFlight,
    gc_lock: PathBuf,
    gc_pending: AtomicBool,
    gc_retry_scheduled: AtomicBool,
    /// Disk usage of unpacked layers (immutable once made), by chain ID.
    usage: Mutex<HashMap<Digest, fsinfo::Usage>>,
}

impl ImageStore {
    /// Opens the store under `config.root_dir`, loading existing records.
    /// A collection (which also removes what a crash left half-made) is
    /// started in the background when a tokio runtime is running, else run
    /// here.
    pub fn new(config: &Config) -> Result<ImageStore, ImageError> {
        let root = config.root_dir.clone();
        let images_dir = root.join("images");
        let records = Records::open(&images_dir)?;
        let config = Arc::new(config.clone());
        let inner = Arc::new(Inner {
            registry: Arc::new(RegistryClient::new(config.clone())),
            content: ContentStore::open(root.join("content"))?,
            layers: LayerStore::open(root.join("layers"))?
                .with_limits(UnpackLimits::from_config(&config.image)),
            leases: Leases::open(root.join("leases"))?,
            records,
            gc_lock: images_dir.join("gc.lock"),
            gc_pending: AtomicBool::new(false),
            gc_retry_scheduled: AtomicBool::new(false),
            flights: pull::SingleFlight::default(),
            usage: Mutex::new(HashMap::new()),
            root,
            config,
        });
        inner.request_gc();
        Ok(ImageStore { inner })
    }

    /// Pulls `reference` (normalised as docker does) for this machine's
    /// platform and records it. Returns the stored image (merged with an
    /// existing one of the same ID).
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<Image, ImageError> {
        // A full disk can fail any step: whichever did, say so.
        self.inner
            .pull(reference, auth)
            .await
            .map_err(|e| e.no_space(&format!("image {reference}"), &self.inner.root))
    }

    /// The image `key` names: a full ID (`sha256:<hex>` or the 64 hex
    /// digits), a tag or digest reference (normalised), or a unique ID
    /// prefix. An ambiguous prefix is an error; an unknown key is `None`.
    pub fn find(&self, key: &str) -> Result<Option<Image>, ImageError> {
        let images = self.inner.records.snapshot()?;
        Ok(records::find(&images, key)?.cloned())
    }

    /// Like [`ImageStore::find`], but an unknown key is [`ImageError::NotFound`].
    pub fn resolve(&self, key: &str) -> Result<Image, ImageError> {
        self.find(key)?
            .ok_or_else(|| ImageError::NotFound(key.to_owned()))
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        Ok(self.inner.records.snapshot()?.as_ref().clone())
    }

    /// Removes the image `key` names, with all its tags and digests. Its
    /// layers go too, unless a lease holds them. `None` if there was none.
    pub async fn remove(&self, key: &str) -> Result<Option<Image>, ImageError> {
        let Some(image) = self.find(key)? else {
            return Ok(None);
        };
        // The record rewrite makes a temp file, which a collection running
        // meanwhile would take for a crash's leftover.
        let writer = self.inner.writer_guard().await?;
        let inner = self.inner.clone();
        let id = image.id.clone();
        let removed = blocking(move || {
            inner.records.update(|images| {
                let pos = images.iter().position(|i| i.id == id);
                pos.map(|p| images.remove(p))
            })
        })
        .await?;
        drop(writer);
        if removed.is_some() {
            self.inner.request_gc();
        }
        Ok(removed)
    }

    /// The unpacked layer dirs of the image `key` names, topmost first (the
    /// order of overlayfs' `lowerdir=`).
    pub fn layer_dirs(&self, key: &str) -> Result<Vec<PathBuf>, ImageError> {
        let image = self.resolve(key)?;
        Ok(self.dirs_of(&image.chain_ids()))
    }

    fn dirs_of(&self, chain_ids: &[Digest]) -> Vec<PathBuf> {
        chain_ids
            .iter()
            .rev()
            .map(|c| self.inner.layers.path(c))
            .collect()
    }

    /// The image's full config blob as JSON (verbose ImageStatus).
    pub fn config_json(&self, image: &Image) -> Result<serde_json::Value, ImageError> {
        let digest = image.config_digest()?;
        let bytes = self
            .inner
            .content
            .read(&digest, manifest::MAX_CONFIG_SIZE, "image config")?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Malformed {
            what: "image config",
            name: digest.to_string(),
            reason: e.to_string(),
        })
    }

    /// Takes (or replaces) `container_id`'s lease on the image `image_key`
    /// names, persisted before this returns.
    pub async fn acquire(&self, container_id: &str, image_key: &str) -> Result<Lease, ImageError> {
        self.acquire_with_volumes(container_id, image_key, &[])
            .await
    }

    /// As [`ImageStore::acquire`], the lease holding as well the images
    /// `volume_keys` name (the container's image volumes).
    pub async fn acquire_with_volumes(
        &self,
        container_id: &str,
        image_key: &str,
        volume_keys: &[String],
    ) -> Result<Lease, ImageError> {
        // Held while the lease is written, so no collection runs between the
        // lookup and the lease.
        let _writer = self.inner.writer_guard().await?;
        let image = self.resolve(image_key)?;
        let volumes = volume_keys
            .iter()
            .map(|key| {
                let v = self.resolve(key)?;
                Ok(HeldImage {
                    image_id: v.id.clone(),
                    chain_ids: v.chain_ids(),
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        let lease = Lease {
            container_id: container_id.to_owned(),
            image_id: image.id.clone(),
            chain_ids: image.chain_ids(),
            volumes,
        };
        let inner = self.inner.clone();
        let l = lease.clone();
        blocking(move || inner.leases.put(&l)).await?;
        Ok(lease)
    }

    /// Drops `container_id`'s lease; layers no longer held by an image or a
    /// lease are then collected. No lease is fine.
    pub async fn release(&self, container_id: &str) -> Result<(), ImageError> {
        let inner = self.inner.clone();
        let id = container_id.to_owned();
        if blocking(move || inner.leases.remove(&id)).await? {
            self.inner.request_gc();
        }
        Ok(())
    }

    pub fn lease(&self, container_id: &str) -> Result<Option<Lease>, ImageError> {
        self.inner.leases.get(container_id)
    }

    /// Every lease (for reconciling with the containers that exist).
    pub fn leases(&self) -> Result<Vec<Lease>, ImageError> {
        self.inner.leases.list()
    }

    /// The layer dirs a lease holds, topmost first.
    pub fn lease_dirs(&self, lease: &Lease) -> Vec<PathBuf> {
        self.dirs_of(&lease.chain_ids)
    }

    /// Bytes and inodes used by content and layers, and the mountpoint of
    /// the filesystem holding them.
    pub async fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let inner = self.inner.clone();
        blocking(move || inner.fs_usage()).await
    }

    /// Imports an OCI image layout directory, or a tar of one, or a
    /// `docker save` tar. `progress` is called as layers go. Blocking.
    pub fn import(
        &self,
        path: &Path,
        progress: &dyn Fn(&ImportProgress),
    ) -> Result<Vec<Image>, ImageError> {
        self.inner
            .import(path, progress)
            .map_err(|e| e.no_space(&format!("import of {}", path.display()), &self.inner.root))
    }

    /// Runs a garbage collection now if none is running or blocked (tests
    /// and the import command). Returns whether it ran.
    pub async fn collect_garbage(&self) -> Result<bool, ImageError> {
        let inner = self.inner.clone();
        blocking(move || inner.collect()).await
    }

    /// The root dir of the store.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

#[cfg(test)]
mod tests;
