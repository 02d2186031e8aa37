//! Garbage collection: removes blobs and layers no image and no lease refers
//! to, and every `.tmp-*` a writer left behind.
//!
//! `images/gc.lock` coordinates it with writers, in this process and in
//! others (`ketch image import`): writers hold it shared from before they
//! look at what exists until their record or lease is written; a collection
//! takes it exclusive without waiting. Under the exclusive lock the roots are
//! read and the garbage renamed to `.tmp-gc.*` names (cheap); the slow
//! deletion runs after the lock is released. A collection that finds the
//! lock busy stays pending and runs when this process's last writer is
//! done, or on a retry a few seconds later.

use std::collections::HashSet;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::Inner;
use super::digest::Digest;
use super::error::ImageError;
use super::fsutil::{self, temp_name};
use crate::task::blocking;

/// How long a busy collection waits before trying again.
const RETRY: Duration = Duration::from_secs(3);

/// Held by a writer: the shared side of `gc.lock`.
pub struct WriterGuard {
    lock: Option<Flock<File>>,
    inner: Arc<Inner>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        // Unlock first, so the pending collection can take the lock.
        drop(self.lock.take());
        if self.inner.gc_pending.load(Ordering::SeqCst) {
            self.inner.request_gc();
        }
    }
}

impl Inner {
    fn open_gc_lock(&self) -> Result<File, ImageError> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.gc_lock)
            .map_err(|e| ImageError::io("open", &self.gc_lock, e))
    }

    /// Takes the writers' shared lock (waits only for a collection's short
    /// exclusive phase).
    pub(super) async fn writer_guard(self: &Arc<Self>) -> Result<WriterGuard, ImageError> {
        let inner = self.clone();
        let lock = blocking(move || {
            let file = inner.open_gc_lock()?;
            Flock::lock(file, FlockArg::LockShared)
                .map_err(|(_, e)| ImageError::nix("lock", &inner.gc_lock, e))
        })
        .await?;
        Ok(WriterGuard {
            lock: Some(lock),
            inner: self.clone(),
        })
    }

    /// The blocking form of [`Inner::writer_guard`].
    pub(super) fn writer_guard_blocking(self: &Arc<Self>) -> Result<WriterGuard, ImageError> {
        let file = self.open_gc_lock()?;
        let lock = Flock::lock(file, FlockArg::LockShared)
            .map_err(|(_, e)| ImageError::nix("lock", &self.gc_lock, e))?;
        Ok(WriterGuard {
            lock: Some(lock),
            inner: self.clone(),
        })
    }

    /// Marks a collection as wanted and starts it (in the background when a
    /// runtime is there).
    pub(super) fn request_gc(self: &Arc<Self>) {
        self.gc_pending.store(true, Ordering::SeqCst);
        let inner = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || inner.run_pending_gc());
            }
            Err(_) => inner.run_pending_gc(),
        }
    }

    fn run_pending_gc(self: &Arc<Self>) {
        if !self.gc_pending.swap(false, Ordering::SeqCst) {
            return;
        }
        match self.collect() {
            Ok(true) => {}
            Ok(false) => {
                self.gc_pending.store(true, Ordering::SeqCst);
                self.schedule_retry();
            }
            Err(e) => tracing::warn!(error = %e, "image garbage collection failed"),
        }
    }

    /// Retries a busy collection later (a writer in another process will
    /// not wake us).
    fn schedule_retry(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.gc_retry_scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.clone();
        handle.spawn(async move {
            tokio::time::sleep(RETRY).await;
            inner.gc_retry_scheduled.store(false, Ordering::SeqCst);
            let again = inner.clone();
            let _ = tokio::task::spawn_blocking(move || again.run_pending_gc()).await;
        });
    }

    /// One collection. `Ok(false)`: a writer holds the lock; nothing done.
    pub(super) fn collect(&self) -> Result<bool, ImageError> {
        let file = self.open_gc_lock()?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(false),
            Err((_, e)) => return Err(ImageError::nix("lock", &self.gc_lock, e)),
        };
        let images = self.records.snapshot()?;
        let leases = self.leases.list()?;
        let mut blobs: HashSet<Digest> = HashSet::new();
        let mut chains: HashSet<Digest> = HashSet::new();
        for image in images.iter() {
            if let Ok(d) = image.config_digest() {
                blobs.insert(d);
            }
            blobs.extend(image.manifests.iter().cloned());
            for layer in &image.layers {
                if let Some(d) = &layer.digest {
                    blobs.insert(d.clone());
                }
                chains.insert(layer.chain_id.clone());
            }
        }
        for lease in &leases {
            chains.extend(lease.all_chain_ids().cloned());
        }

        // Everything half-made is garbage while we hold the lock exclusive.
        let mut doomed = self.content.temp_paths()?;
        doomed.extend(self.layers.temp_paths()?);
        doomed.extend(self.leases.temp_paths()?);
        doomed.extend(fsutil::temp_paths(&self.root.join("images"))?);
        let mut removed_blobs = 0;
        for digest in self.content.list()? {
            if !blobs.contains(&digest) {
                let from = self.content.path(&digest);
                let to = self.content.dir().join(temp_name("gc"));
                std::fs::rename(&from, &to).map_err(|e| ImageError::io("rename", &from, e))?;
                doomed.push(to);
                removed_blobs += 1;
            }
        }
        let mut removed_layers = Vec::new();
        for chain in self.layers.list()? {
            if !chains.contains(&chain) {
                let from = self.layers.path(&chain);
                let to = self.layers.dir().join(temp_name("gc"));
                std::fs::rename(&from, &to).map_err(|e| ImageError::io("rename", &from, e))?;
                doomed.push(to);
                removed_layers.push(chain);
            }
        }
        if removed_blobs > 0 || !removed_layers.is_empty() {
            fsutil::sync_dir(&self.content.dir().join("sha256"))?;
            fsutil::sync_dir(self.layers.dir())?;
        }
        drop(lock);

        if let Ok(mut usage) = self.usage.lock() {
            for chain in &removed_layers {
                usage.remove(chain);
            }
        }
        for path in &doomed {
            if let Err(e) = fsutil::remove_any(path) {
                tracing::warn!(error = %e, "cannot remove garbage");
            }
        }
        if !doomed.is_empty() {
            tracing::info!(
                blobs = removed_blobs,
                layers = removed_layers.len(),
                leftovers = doomed.len() - removed_blobs - removed_layers.len(),
                "image garbage collected"
            );
        }
        Ok(true)
    }
}
