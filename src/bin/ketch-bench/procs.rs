//! Memory of processes, read from /proc: the daemon's resident set, and
//! the per-container processes beside it (containerd's shims, ketch's
//! monitors) found by what their executable and arguments say.
//!
//! RSS (`VmRSS`) counts every page a process maps, shared ones included, so
//! fifty shims of one binary each count its text; PSS (`Pss` of
//! `smaps_rollup`) shares such pages out between the processes mapping
//! them, which is what they really add up to. Both are reported.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} has no {field} line")]
    NoField { path: String, field: &'static str },
}

/// A `kB` field of a /proc file, e.g. `VmRSS` of `status`.
fn kib_field(path: &str, field: &'static str) -> Result<u64, ProcError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .ok_or(ProcError::NoField {
            path: path.to_owned(),
            field,
        })
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    kib_field(&format!("/proc/{pid}/status"), "VmRSS")
}

/// Proportional set size of `pid`, in KiB.
pub fn pss_kib(pid: u32) -> Result<u64, ProcError> {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss")
}

/// What a process is, for matching: its executable's path, then its
/// arguments after argv[0], space-separated.
pub fn describe(pid: u32) -> Option<String> {
    let dir = format!("/proc/{pid}");
    let exe = std::fs::read_link(Path::new(&dir).join("exe")).ok()?;
    let cmdline = std::fs::read(Path::new(&dir).join("cmdline")).ok()?;
    let mut text = exe.to_string_lossy().into_owned();
    for arg in cmdline.split(|b| *b == 0).skip(1).filter(|a| !a.is_empty()) {
        text.push(' ');
        text.push_str(&String::from_utf8_lossy(arg));
    }
    Some(text)
}

/// Every process (but this one) whose description contains all `needles`.
pub fn matching(needles: &[String]) -> Vec<u32> {
    if needles.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            describe(*pid).is_some_and(|d| needles.iter().all(|n| d.contains(n.as_str())))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Summed memory of a set of processes, in KiB; processes that exit while
/// being read are skipped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub processes: usize,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

pub fn usage(pids: &[u32]) -> Usage {
    let mut u = Usage::default();
    for pid in pids {
        if let Ok(rss) = rss_kib(*pid) {
            u.processes += 1;
            u.rss_kib += rss;
            u.pss_kib += pss_kib(*pid).unwrap_or(rss);
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory_and_finds_a_child_by_its_arguments() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(pss_kib(me).unwrap() > 0);
        let marker = format!("ketch-bench-procs-test-{}", fastrand::u64(..));
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg("sleep 30")
            .arg(&marker)
            .spawn()
            .unwrap();
        // The child's command line is ours until it has exec'd, and a
        // process the shell forks carries the shell's until it execs in
        // turn: wait until only the child matches.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = matching(&["/bin/".to_owned(), marker.clone()]);
        while found != [child.id()] && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = matching(&["/bin/".to_owned(), marker.clone()]);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, vec![child.id()]);
        let none = matching(&[marker, "no-such-word".to_owned()]);
        assert!(none.is_empty());
        assert!(matches!(rss_kib(u32::MAX), Err(ProcError::Read { .. })));
    }
}
