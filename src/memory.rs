//! Keeping the daemon's resident memory down between bursts of work.
//!
//! glibc's malloc keeps freed memory in its arenas for reuse instead of
//! giving it back: after a pull, or after a hundred pods came and went,
//! the daemon stays at its peak (measured: 44 MiB resident after a
//! benchmark run, 20 MiB once trimmed, 10 MiB fresh). So the daemon
//!
//! - caps malloc at two arenas per core before its threads start (glibc's
//!   default is eight per core, each with its own free memory),
//! - gives every block of 128 KiB or more a mapping of its own, returned
//!   to the system when it is freed: a pull's network buffers and layer
//!   chunks (tens of MiB while it runs) are gone the moment it ends, where
//!   glibc's dynamic threshold would have moved such blocks into the
//!   arenas after the first was freed (measured: 44 MiB of anonymous
//!   memory one second after a benchmark run's pulls, 12 MiB with the
//!   fixed threshold), and
//! - checks every second how much freed memory malloc holds, and
//!   when it is more than 1 MiB, hands it back with `malloc_trim`
//!   (which leaves the chunks in malloc's free lists but drops their
//!   pages; doing it again on pages already dropped costs little).
//!
//! Both are glibc calls the `libc` crate binds; on other C libraries this
//! module does nothing.

use std::time::Duration;

use crate::sys::malloc;

/// How often the trimmer looks (`mallinfo2` walks malloc's free lists,
/// on a blocking thread).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// Freed memory malloc may keep before it is trimmed.
const TRIM_THRESHOLD: usize = 1024 * 1024;
/// Arenas per core.
const ARENAS_PER_CORE: usize = 2;
/// Blocks from this size up get a mapping of their own (glibc's initial
/// threshold, kept fixed).
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// How long an idle blocking thread of the daemon's runtime lives.
pub const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Caps malloc's arenas and fixes its mmap threshold. Call before any
/// thread starts.
pub fn tune_malloc() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = i32::try_from(cores * ARENAS_PER_CORE).unwrap_or(i32::MAX);
    malloc::set_arena_max(arenas);
    malloc::set_mmap_threshold(MMAP_THRESHOLD);
}

/// Spawns the trimmer on the current tokio runtime; it runs until the
/// runtime stops.
pub fn spawn_trimmer() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Both calls walk every arena under its lock: not on a worker.
            let _ = tokio::task::spawn_blocking(trim_if_worth_it).await;
        }
    });
}

/// Trims when malloc holds more than [`TRIM_THRESHOLD`] of freed memory.
/// Returns whether it trimmed.
pub fn trim_if_worth_it() -> bool {
    let free = malloc::free_bytes();
    if !worth_trimming(free) {
        return false;
    }
    malloc::trim();
    tracing::trace!(free_bytes = free, "returned freed heap pages to the system");
    true
}

fn worth_trimming(free_bytes: Option<usize>) -> bool {
    free_bytes.is_some_and(|free| free > TRIM_THRESHOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_megabytes_of_freed_memory_are_worth_a_trim() {
        assert!(!worth_trimming(None));
        assert!(!worth_trimming(Some(TRIM_THRESHOLD)));
        assert!(worth_trimming(Some(TRIM_THRESHOLD + 1)));
    }

    #[test]
    fn fragmented_freed_memory_is_trimmed() {
        // Every other 1 KiB block freed: 10 MiB of holes malloc keeps in
        // its free lists (a block at the top of the heap it would trim
        // itself; a large one it would unmap).
        let mut blocks: Vec<Option<Vec<u8>>> =
            (0..20_000).map(|i| Some(vec![i as u8; 1024])).collect();
        for block in blocks.iter_mut().step_by(2) {
            *block = None;
        }
        assert!(malloc::free_bytes().is_some_and(|free| free >= 10 * 1024 * 1024));
        assert!(trim_if_worth_it());
        drop(blocks);
    }
}
