//! Small I/O helpers over cgroupfs, shared by the v1 and v2 code.
//!
//! cgroupfs files are not ordinary files: a value must arrive in one
//! `write(2)` (so no create/truncate and no buffering), a missing file
//! means a controller is absent, and `rmdir` of a cgroup fails with `EBUSY`
//! while tasks are still leaving it.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::error::{CgroupError, Result};
use super::stats::PidsStats;

pub(crate) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| CgroupError::io("read", path, e))
}

/// `None` when the file does not exist (its controller is absent).
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CgroupError::io("read", path, e)),
    }
}

/// Writes `value` in a single `write(2)` to an existing control file.
pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    let wrap = |source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(wrap)?;
    file.write_all(value.as_bytes()).map_err(wrap)
}

/// Writes a limit into `dir/file`; a missing file becomes
/// [`CgroupError::ControllerUnavailable`], which says more than `ENOENT`.
pub(crate) fn write_setting(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    let written = write(&path, value);
    // Which is missing, the cgroup or the file, is asked only after the
    // write failed: a container's start makes a dozen of these writes.
    if let Err(CgroupError::Write { source, .. }) = &written
        && source.kind() == ErrorKind::NotFound
    {
        if !dir.exists() {
            return Err(CgroupError::NotFound {
                path: dir.display().to_string(),
            });
        }
        return Err(CgroupError::ControllerUnavailable {
            file: file.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    written
}

pub(crate) fn parse_u64(path: &Path, content: &str) -> Result<u64> {
    content.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        reason: format!("expected an unsigned integer, found {:?}", content.trim()),
    })
}

/// Reads a single-number file; `None` when the file is missing.
pub(crate) fn read_u64_optional(path: &Path) -> Result<Option<u64>> {
    match read_optional(path)? {
        Some(s) => parse_u64(path, &s).map(Some),
        None => Ok(None),
    }
}

/// The pids in `cgroup.procs` of `dir`, and of every cgroup below it.
pub(crate) fn procs_recursive(dir: &Path, out: &mut Vec<Pid>) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    match read_optional(&procs)? {
        Some(content) => {
            for line in content.lines().filter(|l| !l.trim().is_empty()) {
                let pid: i32 = line.trim().parse().map_err(|_| CgroupError::Parse {
                    path: procs.clone(),
                    reason: format!("bad pid {line:?}"),
                })?;
                out.push(Pid::from_raw(pid));
            }
        }
        // The cgroup went away while we looked: no processes in it.
        None => return Ok(()),
    }
    for child in subdirs(dir)? {
        procs_recursive(&child, out)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CgroupError::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CgroupError::io("list", dir, e))?;
        let ty = entry
            .file_type()
            .map_err(|e| CgroupError::io("stat", entry.path(), e))?;
        if ty.is_dir() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// SIGKILLs every pid; one already gone is not an error.
pub(crate) fn kill_pids(pids: &[Pid]) {
    for &pid in pids {
        match kill(pid, Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pid = pid.as_raw(), error = %e, "cannot SIGKILL process in cgroup")
            }
        }
    }
}

/// Removes dirs this call created, innermost first; used on failure paths,
/// so errors are logged rather than returned.
pub(crate) fn remove_created(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        if let Err(e) = std::fs::remove_dir(dir)
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove cgroup dir while cleaning up");
        }
    }
}

/// Removes a cgroup dir and every cgroup below it, deepest first. `rmdir`
/// fails with `EBUSY` while exiting tasks still count as members, so it is
/// retried until `deadline`. A missing dir is success: destroy is idempotent.
pub(crate) fn remove_tree(dir: &Path, deadline: Instant, started: Instant) -> Result<()> {
    for child in subdirs(dir)? {
        remove_tree(&child, deadline, started)?;
    }
    let mut backoff = Duration::from_millis(5);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                if Instant::now() >= deadline {
                    let mut pids = Vec::new();
                    // Best effort: the pids only enrich the error.
                    let _ = procs_recursive(dir, &mut pids);
                    return Err(CgroupError::Busy {
                        path: dir.to_path_buf(),
                        waited: started.elapsed(),
                        pids: pids.iter().map(|p| p.as_raw()).collect(),
                    });
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(CgroupError::io("remove cgroup dir", dir, e)),
        }
    }
}

/// Reads a limit file (`max` or a number); `None` when unlimited or missing.
pub(crate) fn read_limit(path: &Path) -> Result<Option<u64>> {
    match read_optional(path)? {
        Some(s) => super::parse::parse_limit(&s).map_err(|reason| CgroupError::Parse {
            path: path.to_path_buf(),
            reason,
        }),
        None => Ok(None),
    }
}

pub(crate) fn pids_stats(dir: &Path) -> Result<Option<PidsStats>> {
    let Some(current) = read_u64_optional(&dir.join("pids.current"))? else {
        return Ok(None);
    };
    let limit = read_limit(&dir.join("pids.max"))?;
    Ok(Some(PidsStats { current, limit }))
}

/// Polls `check` until it says yes or `timeout` passes.
pub(crate) fn wait_for(timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Without a freezer a process may fork between the read and the kill;
/// repeat until the cgroup is empty, a bounded number of times.
pub(crate) fn kill_in_rounds(mut list: impl FnMut() -> Result<Vec<Pid>>) -> Result<()> {
    for _ in 0..20 {
        let pids = list()?;
        if pids.is_empty() {
            return Ok(());
        }
        kill_pids(&pids);
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!("processes kept appearing in a cgroup while killing them; gave up");
    Ok(())
}
