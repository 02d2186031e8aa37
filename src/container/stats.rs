//! ContainerStats and ListContainerStats, in domain terms: the cgroup's
//! sample (`cgroups::Stats`), the CPU rate from the previous sample of the
//! same container, and the writable layer's bytes and inodes.
//!
//! The writable layer (the overlay's upper dir) is measured by a walk,
//! which on a container that writes much is costly: a measure is cached
//! and served for [`LAYER_MAX_AGE`], then refreshed in the background (one
//! walk per container at a time, [`MAX_BACKGROUND_WALKS`] over all, at
//! most [`LAYER_MAX_ENTRIES`] entries each),
//! so a stats call never waits on a walk but the first of a container.
//! containerd measures its snapshots the same way, on a timer.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::error::ContainerError;
use super::manager::ContainerManager;
use super::record::ContainerRecord;
use super::state::State;
use super::status::ContainerFilter;
use crate::cgroups;
use crate::task::{TaskFailed, blocking};

/// How long a writable layer measure is served before a refresh starts.
pub const LAYER_MAX_AGE: Duration = Duration::from_secs(30);

/// Entries a walk of a writable layer counts at most; past it the measure
/// is a lower bound.
pub const LAYER_MAX_ENTRIES: u64 = 1_000_000;

/// Background walks running at once, over all containers; a stale
/// measure whose refresh finds no slot is served again and retried at the
/// next call.
pub const MAX_BACKGROUND_WALKS: usize = 2;

/// A CPU sample kept for the next rate: less than this apart, a sample is
/// not kept (the rate over a few milliseconds is noise).
const MIN_RATE_WINDOW_NANOS: i64 = 1_000_000_000;

/// The usage of a writable layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerUsage {
    /// Allocated bytes (`st_blocks * 512`, each inode once).
    pub bytes: u64,
    pub inodes: u64,
    /// When it was measured, nanoseconds since the epoch.
    pub at: i64,
}

/// One container's sample.
#[derive(Debug, Clone)]
pub struct ContainerStats {
    /// `None` when the container has no cgroup (not started, removed).
    pub cgroup: Option<cgroups::Stats>,
    /// CPU use over the time since the previous sample, in nanocores.
    pub usage_nano_cores: Option<u64>,
    pub writable_layer: Option<LayerUsage>,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    usage_nanos: u64,
    at: i64,
}

#[derive(Debug, Default)]
struct LayerEntry {
    usage: Option<LayerUsage>,
    measured: Option<Instant>,
    refreshing: bool,
}

/// The previous CPU samples and the writable layer measures.
#[derive(Debug, Default)]
pub(crate) struct StatsCache {
    cpu: Mutex<HashMap<String, CpuSample>>,
    layers: Mutex<HashMap<String, LayerEntry>>,
    walks: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatsCache {
    /// Forgets a removed container.
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.cpu).remove(id);
        lock(&self.layers).remove(id);
    }

    /// Claims one of the [`MAX_BACKGROUND_WALKS`] slots.
    fn take_walk_slot(&self) -> bool {
        self.walks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_BACKGROUND_WALKS).then_some(n + 1)
            })
            .is_ok()
    }

    /// The rate since the kept sample, keeping `cur` when the kept one is
    /// old enough (or absent).
    fn cpu_rate(&self, id: &str, cur: CpuSample) -> Option<u64> {
        let mut cpu = lock(&self.cpu);
        let prev = cpu.get(id).copied();
        let rate = prev.and_then(|p| nano_cores(p, cur));
        if prev.is_none_or(|p| {
            cur.at - p.at >= MIN_RATE_WINDOW_NANOS || cur.usage_nanos < p.usage_nanos
        }) {
            cpu.insert(id.to_owned(), cur);
        }
        rate
    }
}

/// CPU use between two samples in nanocores (1e9 = one core busy), as
/// kubelet's `usage_nano_cores`; `None` when time did not move forward.
fn nano_cores(prev: CpuSample, cur: CpuSample) -> Option<u64> {
    let elapsed = u128::try_from(cur.at.checked_sub(prev.at)?).ok()?;
    if elapsed == 0 || cur.usage_nanos < prev.usage_nanos {
        return None;
    }
    let used = u128::from(cur.usage_nanos - prev.usage_nanos);
    u64::try_from(used * 1_000_000_000 / elapsed).ok()
}

/// Walks `dir` without following symlinks or crossing into other
/// filesystems, counting allocated bytes (hard links once) and inodes,
/// `LAYER_MAX_ENTRIES` at most. A missing dir is empty.
pub fn measure_layer(dir: &Path) -> std::io::Result<(u64, u64)> {
    let root = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let dev = root.dev();
    let mut seen = std::collections::HashSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if inodes >= LAYER_MAX_ENTRIES {
                return Ok((bytes, inodes));
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.nlink() > 1 && !seen.insert(meta.ino()) {
                continue;
            }
            inodes += 1;
            bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() && meta.dev() == dev {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

impl ContainerManager {
    /// The stats of one container (ID or unique prefix).
    pub async fn stats(
        &self,
        id: &str,
    ) -> Result<(ContainerRecord, ContainerStats), ContainerError> {
        let record = self.status(id)?;
        let mut all = self.sample(vec![record]).await?;
        all.pop()
            .ok_or_else(|| TaskFailed(format!("no stats sampled for container {id}")).into())
    }

    /// The stats of every container `filter` selects.
    pub async fn stats_list(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<(ContainerRecord, ContainerStats)>, ContainerError> {
        let records = self.list(filter).into_iter().map(Arc::unwrap_or_clone);
        self.sample(records.collect()).await
    }

    /// The cgroup stats of `path` (a pod's cgroup), if it exists.
    pub async fn cgroup_stats(&self, path: String) -> Option<cgroups::Stats> {
        let manager = self.clone();
        blocking(move || {
            Ok::<_, ContainerError>(
                manager
                    .cgroups
                    .as_ref()
                    .and_then(|m| m.open(&path).ok())
                    .and_then(|cg| cg.stats().ok()),
            )
        })
        .await
        .ok()
        .flatten()
    }

    async fn sample(
        &self,
        records: Vec<ContainerRecord>,
    ) -> Result<Vec<(ContainerRecord, ContainerStats)>, ContainerError> {
        let manager = self.clone();
        blocking(move || {
            Ok(records
                .into_iter()
                .map(|record| {
                    let stats = manager.sample_one(&record);
                    (record, stats)
                })
                .collect())
        })
        .await
    }

    /// Runs on a blocking thread: cgroup files and maybe the first walk.
    fn sample_one(&self, record: &ContainerRecord) -> ContainerStats {
        let cgroup = if record.state == State::Running {
            self.open_cgroup(record).and_then(|cg| match cg.stats() {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::debug!(container = %record.id, "no cgroup stats: {e}");
                    None
                }
            })
        } else {
            None
        };
        let usage_nano_cores = cgroup.as_ref().and_then(|s| {
            let cpu = s.cpu.as_ref()?;
            self.stats_cache.cpu_rate(
                &record.id,
                CpuSample {
                    usage_nanos: cpu.usage_nanos,
                    at: s.timestamp_nanos(),
                },
            )
        });
        ContainerStats {
            cgroup,
            usage_nano_cores,
            writable_layer: self.writable_layer(record),
        }
    }

    /// The cached measure of the container's upper dir; the first one is
    /// taken now, a stale one refreshed in the background.
    fn writable_layer(&self, record: &ContainerRecord) -> Option<LayerUsage> {
        let upper = record.overlay.upperdir.clone();
        let (cached, stale) = {
            let mut layers = lock(&self.stats_cache.layers);
            let entry = layers.entry(record.id.clone()).or_default();
            let stale = entry.measured.is_none_or(|t| t.elapsed() >= LAYER_MAX_AGE);
            // The first measure is taken now, whatever the slots; a
            // refresh only in a free one.
            let start = stale
                && !entry.refreshing
                && (entry.usage.is_none() || self.stats_cache.take_walk_slot());
            if start {
                entry.refreshing = true;
            }
            (entry.usage, start)
        };
        let measure = {
            let cache = self.stats_cache.clone();
            let id = record.id.clone();
            move || {
                let result = measure_layer(&upper);
                let mut layers = lock(&cache.layers);
                let entry = layers.entry(id.clone()).or_default();
                entry.refreshing = false;
                match result {
                    Ok((bytes, inodes)) => {
                        entry.measured = Some(Instant::now());
                        entry.usage = Some(LayerUsage {
                            bytes,
                            inodes,
                            at: crate::clock::now_unix_nanos(),
                        });
                    }
                    Err(e) => {
                        tracing::debug!(container = %id, "cannot measure writable layer: {e}")
                    }
                }
                entry.usage
            }
        };
        match (cached, stale) {
            (None, true) => measure(),
            (cached, true) => {
                let cache = self.stats_cache.clone();
                let spawned = std::thread::Builder::new()
                    .name("ketch-layer-du".into())
                    .spawn(move || {
                        measure();
                        cache.walks.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    self.stats_cache.walks.fetch_sub(1, Ordering::SeqCst);
                    if let Some(e) = lock(&self.stats_cache.layers).get_mut(&record.id) {
                        e.refreshing = false;
                    }
                }
                cached
            }
            (cached, false) => cached,
        }
    }
}

/// A handle for the manager.
pub(crate) fn new_cache() -> Arc<StatsCache> {
    Arc::new(StatsCache::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(usage_nanos: u64, at: i64) -> CpuSample {
        CpuSample { usage_nanos, at }
    }

    #[test]
    fn nano_cores_is_cpu_time_over_wall_time() {
        // Half a core for two seconds.
        assert_eq!(
            nano_cores(s(0, 0), s(1_000_000_000, 2_000_000_000)),
            Some(500_000_000)
        );
        assert_eq!(nano_cores(s(5, 10), s(5, 10)), None, "no time passed");
        assert_eq!(nano_cores(s(9, 0), s(5, 10)), None, "counter went back");
    }

    #[test]
    fn a_rate_needs_a_kept_sample_at_least_a_second_old() {
        let cache = StatsCache::default();
        assert_eq!(cache.cpu_rate("c", s(0, 0)), None);
        // 10 ms later: a rate against the first, which is kept.
        assert_eq!(
            cache.cpu_rate("c", s(10_000_000, 10_000_000)),
            Some(1_000_000_000)
        );
        assert_eq!(
            cache.cpu_rate("c", s(1_000_000_000, 2_000_000_000)),
            Some(500_000_000)
        );
        // The 2 s sample replaced the first.
        assert_eq!(
            cache.cpu_rate("c", s(1_000_000_000, 3_000_000_000)),
            Some(0)
        );
        cache.forget("c");
        assert_eq!(cache.cpu_rate("c", s(0, 0)), None);
    }

    #[test]
    fn background_walks_are_bounded() {
        let cache = StatsCache::default();
        for _ in 0..MAX_BACKGROUND_WALKS {
            assert!(cache.take_walk_slot());
        }
        assert!(!cache.take_walk_slot());
        cache.walks.fetch_sub(1, Ordering::SeqCst);
        assert!(cache.take_walk_slot());
    }

    #[test]
    fn a_layer_counts_bytes_and_inodes_once_per_hard_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::hard_link(dir.path().join("d/f"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("sym")).unwrap();
        let (bytes, inodes) = measure_layer(dir.path()).unwrap();
        assert_eq!(inodes, 3, "d, f (once), sym");
        assert!(bytes >= 64 * 1024, "{bytes}");
        assert_eq!(measure_layer(&dir.path().join("missing")).unwrap(), (0, 0));
    }
}
