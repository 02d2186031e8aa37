//! Keeping the daemon's resident memory down between bursts of work.
//!
//! glibc's malloc keeps freed memory for reuse instead of giving it back:
//! after a pull, or after a hundred pods came and went, the daemon stays
//! at its peak (measured: 44 MiB resident after a benchmark run, 20 MiB
//! once trimmed, 10 MiB fresh). So the daemon
//!
//! - turns off malloc's per-thread caches (`glibc.malloc.tcache_count=0`):
//!   each thread keeps up to seven freed blocks of each of 64 sizes for
//!   itself, and the ones the runtime's long-lived threads hold pin the
//!   pages they sit on, which no trim can return (measured after a short
//!   benchmark run: 755 cached blocks, 0.37 MB, kept 219 heap pages
//!   resident that held nothing else; the daemon's resident memory was
//!   14.5 MiB with the caches and 12.6 MiB without). That setting is a
//!   tunable glibc reads only when a program starts, so `serve` re-executes
//!   itself once with `GLIBC_TUNABLES` carrying it, unless the environment
//!   already sets it; the processes it starts inherit it, as they would
//!   any environment of the daemon's,
//! - keeps malloc to its one main arena before any thread starts (glibc's
//!   default is eight per core, and each arena keeps its own free memory
//!   and its own partly used pages: measured after a benchmark run, four
//!   arenas held 4.5 MiB from the system, 0.76 MiB of it in use; the
//!   daemon's threads mostly wait on syscalls, so they seldom wait for the
//!   arena's lock),
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
//! All are glibc's (tunables, and calls the `libc` crate binds); on other
//! C libraries this module does nothing.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use crate::sys::malloc;

/// How often the trimmer looks (`mallinfo2` walks malloc's free lists,
/// on a blocking thread).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// Freed memory malloc may keep before it is trimmed.
const TRIM_THRESHOLD: usize = 1024 * 1024;
/// malloc arenas (`M_ARENA_MAX`): the main one only.
const ARENAS: i32 = 1;
/// Blocks from this size up get a mapping of their own (glibc's initial
/// threshold, kept fixed).
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// How long an idle blocking thread of the daemon's runtime lives.
pub const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// The environment variable glibc reads its tunables from (tunables(7)).
const TUNABLES_VAR: &str = "GLIBC_TUNABLES";
/// The tunable that sizes malloc's per-thread caches, and our value.
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";
const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";

/// Re-executes the daemon with malloc's per-thread caches turned off,
/// unless `GLIBC_TUNABLES` already sizes them (this process was started
/// so, by us or by whoever started it). Call first thing in `serve`,
/// before any thread starts. When the exec fails, says so and returns:
/// the daemon then runs with the caches.
pub fn reexec_with_malloc_tunables() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let Some(tunables) = tunables_to_set(std::env::var_os(TUNABLES_VAR).as_deref()) else {
        return;
    };
    // The executable's own path rather than /proc/self/exe, which would
    // make the process's name (comm, what ps and pgrep show) "exe".
    let err = match std::env::current_exe() {
        Ok(exe) => {
            let mut args = std::env::args_os();
            let mut cmd = std::process::Command::new(exe);
            if let Some(arg0) = args.next() {
                std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
            }
            cmd.args(args).env(TUNABLES_VAR, tunables);
            std::os::unix::process::CommandExt::exec(&mut cmd)
        }
        Err(err) => err,
    };
    eprintln!(
        "ketch: cannot re-execute with {TUNABLES_VAR} set ({err}); malloc keeps its per-thread caches"
    );
}

/// The `GLIBC_TUNABLES` value that turns the caches off, keeping whatever
/// else `current` sets; `None` when `current` already sizes them.
fn tunables_to_set(current: Option<&OsStr>) -> Option<OsString> {
    let Some(current) = current.filter(|v| !v.is_empty()) else {
        return Some(TCACHE_OFF.into());
    };
    let sized = current
        .as_encoded_bytes()
        .split(|b| *b == b':')
        .any(|tunable| tunable.split(|b| *b == b'=').next() == Some(TCACHE_COUNT.as_bytes()));
    if sized {
        return None;
    }
    let mut tunables = current.to_owned();
    tunables.push(":");
    tunables.push(TCACHE_OFF);
    Some(tunables)
}

/// Caps malloc's arenas and fixes its mmap threshold. Call before any
/// thread starts.
pub fn tune_malloc() {
    malloc::set_arena_max(ARENAS);
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
    fn the_caches_are_turned_off_unless_the_environment_sizes_them() {
        let set = |v: Option<&str>| tunables_to_set(v.map(OsStr::new));
        assert_eq!(set(None), Some(TCACHE_OFF.into()));
        assert_eq!(set(Some("")), Some(TCACHE_OFF.into()));
        // Other tunables are kept.
        assert_eq!(
            set(Some("glibc.malloc.check=3")),
            Some("glibc.malloc.check=3:glibc.malloc.tcache_count=0".into())
        );
        // Ours (after the re-exec) or the user's own count: left alone.
        assert_eq!(set(Some(TCACHE_OFF)), None);
        assert_eq!(
            set(Some("glibc.malloc.check=3:glibc.malloc.tcache_count=7")),
            None
        );
        // A tunable whose name only starts the same is another one.
        assert_eq!(
            set(Some("glibc.malloc.tcache_count_x=1")),
            Some("glibc.malloc.tcache_count_x=1:glibc.malloc.tcache_count=0".into())
        );
    }

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
