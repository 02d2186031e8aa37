//! What the container store looks like after a restart, a crash or a
//! reboot, made true: records loaded, exits that happened while ketch was
//! down recorded, starts cut off by a crash undone, half-made containers
//! removed. One bad record is logged and skipped.

use std::collections::HashSet;
use std::path::Path;

use nix::sys::signal::Signal;

use super::error::ContainerError;
use super::manager::ContainerManager;
use super::record::ContainerRecord;
use super::state::{Exit, State, Transition};
use super::status::Probe;
use crate::events::EventKind;

impl ContainerManager {
    pub(super) async fn reconcile(&self) -> Result<(), ContainerError> {
        let mut known = HashSet::new();
        for (id, record) in self.store.load()? {
            known.insert(id.clone());
            let mut record = match record {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(container = %id, "skipping unreadable container record: {e}");
                    continue;
                }
            };
            let reservation = match self.store.reserve_with_id(&record.reserved_name, &id) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(container = %id, "skipping container record: {e}");
                    continue;
                }
            };
            if record.state == State::Running {
                self.refresh(&mut record, Probe::Processes);
                if record.state != State::Running {
                    self.store.persist(&record)?;
                    self.events
                        .publish_recovered(super::manager::event_of(&record, EventKind::Stopped));
                }
            }
            // A start mark beside a record still CREATED: the start was cut
            // off. (Versions before the mark file set `starting` in the
            // record.) Beside any other state the mark is stale.
            let mark = self.start_mark(&id);
            let marked = mark.exists();
            if record.starting || (marked && record.state == State::Created) {
                self.abandon_start(&mut record);
                self.store.persist(&record)?;
                self.events
                    .publish_recovered(super::manager::event_of(&record, EventKind::Stopped));
            }
            if marked && let Err(e) = std::fs::remove_file(&mark) {
                tracing::warn!(container = %id, "cannot remove the start mark: {e}");
            }
            self.store.adopt(reservation, record)?;
        }
        // Bundles without a record: a create cut off by a crash.
        if let Ok(entries) = std::fs::read_dir(self.bundles_dir()) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if !known.contains(&id) {
                    tracing::info!(container = %id, "removing a container left half-made by a crash");
                    self.remove_files(&id, &entry.path().join("rootfs"));
                }
            }
        }
        Ok(())
    }

    /// A StartContainer cut off by a crash: whatever it started (the
    /// container's monitor, and everything in the container's cgroup) is
    /// killed, and the container is EXITED with a start error, as if the
    /// start had failed.
    fn abandon_start(&self, record: &mut ContainerRecord) {
        let bundle = self.bundle_dir(&record.id);
        for pid in monitors_of(Path::new("/proc"), self.exe(), &bundle) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(cg) = self.open_cgroup(record) {
            let _ = cg.kill_all();
        }
        tracing::warn!(container = %record.id, "a start was cut off by a restart; marking it failed");
        let exit = Exit::start_error(
            "the start was interrupted by a ketch restart".into(),
            crate::clock::now_unix_nanos(),
        );
        if let Err(e) = record.apply(Transition::FailStart(exit)) {
            tracing::warn!(container = %record.id, "{e}");
            record.starting = false;
        }
    }
}

/// The pids, among `/proc`'s, of monitors ketch started for `bundle`: the
/// process runs `exe` (`ketch-shim`) with
/// `--bundle <bundle>` among its arguments. Nothing else is ours, even if
/// its command line mentions the bundle (`tail …/config.json`).
fn monitors_of(proc_dir: &Path, exe: &Path, bundle: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let dir = proc_dir.join(pid.to_string());
            let runs_exe = std::fs::read_link(dir.join("exe")).is_ok_and(|p| p == exe);
            runs_exe
                && std::fs::read(dir.join("cmdline")).is_ok_and(|argv| is_monitor_of(&argv, bundle))
        })
        .collect()
}

/// Whether a NUL-separated argv holds `--bundle <bundle>` (or
/// `--bundle=<bundle>`).
fn is_monitor_of(argv: &[u8], bundle: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let bundle = bundle.as_os_str().as_bytes();
    let mut args = argv.split(|b| *b == 0);
    while let Some(arg) = args.next() {
        if arg == b"--bundle" {
            if args.next() == Some(bundle) {
                return true;
            }
        } else if arg.strip_prefix(b"--bundle=") == Some(bundle) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_monitor_of_the_bundle_matches() {
        let bundle = Path::new("/var/lib/ketch/containers/abc");
        assert!(is_monitor_of(
            b"/usr/local/bin/ketch-shim\0monitor\0--bundle\0/var/lib/ketch/containers/abc\0--tty\0",
            bundle
        ));
        assert!(is_monitor_of(
            b"ketch\0monitor\0--bundle=/var/lib/ketch/containers/abc\0",
            bundle
        ));
        // Mentions the bundle, but is not a monitor of it.
        assert!(!is_monitor_of(
            b"tail\0-f\0/var/lib/ketch/containers/abc/config.json\0",
            bundle
        ));
        assert!(!is_monitor_of(
            b"ketch-shim\0monitor\0--bundle\0/var/lib/ketch/containers/abcd\0",
            bundle
        ));
    }

    #[test]
    fn a_process_that_only_mentions_the_bundle_is_spared() {
        // A fake /proc: pid 10 is our monitor, pid 11 runs another program
        // with the same arguments, pid 12 is `tail` on the bundle's spec.
        let proc_dir = tempfile::tempdir().unwrap();
        let exe = proc_dir.path().join("ketch-shim");
        let other = proc_dir.path().join("tail");
        std::fs::write(&exe, "").unwrap();
        std::fs::write(&other, "").unwrap();
        let bundle = Path::new("/var/lib/ketch/containers/abc");
        let fake = |pid: i32, runs: &Path, argv: &str| {
            let dir = proc_dir.path().join(pid.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::symlink(runs, dir.join("exe")).unwrap();
            std::fs::write(dir.join("cmdline"), argv.replace(' ', "\0")).unwrap();
        };
        fake(
            10,
            &exe,
            "ketch-shim monitor --bundle /var/lib/ketch/containers/abc ",
        );
        fake(
            11,
            &other,
            "x monitor --bundle /var/lib/ketch/containers/abc ",
        );
        fake(
            12,
            &other,
            "tail -f /var/lib/ketch/containers/abc/config.json ",
        );
        assert_eq!(monitors_of(proc_dir.path(), &exe, bundle), vec![10]);
    }
}
