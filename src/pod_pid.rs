//! A pod's shared PID namespace (`NamespaceMode::POD` for pid): held by a
//! `ketch-shim pause` process, PID 1 of the namespace, which reaps the zombies
//! of every container in it. No pause image is involved.
//!
//! The pause runs detached, like a monitor, so it survives daemon
//! restarts. The sandbox module starts it once the pod's namespaces are
//! pinned and records its pid and start time (the guard against pid reuse)
//! in the pod's record before the pod is committed READY; containers join
//! the namespace through `/proc/<pid>/ns/pid`. A pod whose pause is dead is
//! NOTREADY: its containers died with it and none can join it again.
//!
//! A crash can leave a pause that no record names (spawned, not yet
//! recorded): [`find_by_namespaces`] finds it by the pod's namespace pins
//! on its command line, so the pod's cleanup still kills it.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::monitor::pause::{self, PodNamespaces};
use crate::monitor::{self, MonitorError};

/// Where ketch before this version recorded a pod's pause, in the pod's
/// state dir; read once at start to adopt such pods.
const LEGACY_FILE: &str = "pause.json";

#[derive(Debug, thiserror::Error)]
pub enum PodPidError {
    #[error("start the pod's PID namespace holder: {0}")]
    Start(#[from] MonitorError),
    #[error("the pod's PID namespace holder is gone (pod {0}): recreate the pod")]
    Gone(String),
}

/// The running pause of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInit {
    pub pid: i32,
    pub start_time: u64,
}

impl PodInit {
    /// Where containers join the pod's PID namespace.
    pub fn namespace_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/pid", self.pid))
    }

    /// Whether the process is still this pause: same pid, same start time,
    /// and not a zombie (a killed pause stays one until its reaper, which
    /// is not ketch, gets round to it).
    pub fn alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        // Fields after the command name, which may hold spaces and ")":
        // state (field 3) first, start time (field 22) 19 further.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let start_time = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
        !matches!(state, Some("Z" | "X" | "x")) && start_time == Some(self.start_time)
    }
}

/// Starts the pause in a new PID namespace joined to the pod's namespaces.
/// Blocking but quick. The caller records the result.
pub fn start(exe: &Path, ns: PodNamespaces) -> Result<PodInit, PodPidError> {
    let spawned = pause::spawn(Some(exe), &ns)?;
    Ok(PodInit {
        pid: spawned.pid,
        start_time: spawned.start_time,
    })
}

/// The namespace path for a pod that shares its PID namespace, from the
/// holder its record names.
pub fn namespace_of(pod_id: &str, holder: Option<&PodInit>) -> Result<PathBuf, PodPidError> {
    holder
        .filter(|init| init.alive())
        .map(PodInit::namespace_path)
        .ok_or_else(|| PodPidError::Gone(pod_id.to_owned()))
}

/// Kills `init` if it is still that process. SIGKILL to PID 1 of a
/// namespace from outside it works, and takes every process left in the
/// namespace with it (pid_namespaces(7)).
pub fn kill(init: &PodInit) {
    let _ = monitor::signal_container(init.pid, init.start_time, Signal::SIGKILL);
}

/// The pause an earlier ketch recorded in `<pod_dir>/pause.json`, if it
/// still runs; the file is removed either way.
pub fn take_legacy_record(pod_dir: &Path) -> Option<PodInit> {
    let path = pod_dir.join(LEGACY_FILE);
    let bytes = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    let init: PodInit = serde_json::from_slice(&bytes).ok()?;
    init.alive().then_some(init)
}

/// Every running pause started for the namespaces pinned at `pins`: a
/// `pause` whose command line joins one of them (`--net <pin>` ...) and
/// which is PID 1 of a namespace of its own (its `--spawn` parent, gone in
/// an instant, is not). Found without any record, so a crash between the
/// spawn and the record leaks nothing.
pub fn find_by_namespaces(pins: &[&Path]) -> Vec<PodInit> {
    if pins.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| joins_pins(&cmdline, pins))
                && is_namespace_init(pid)
        })
        .filter_map(|pid| {
            let start_time = monitor::process_start_time(pid)?;
            Some(PodInit { pid, start_time })
        })
        .collect()
}

/// Whether [`find_by_namespaces`] can find the holder of a pod with these
/// namespaces without a record: only by a pinned network, IPC or UTS
/// namespace it joined (the flags [`joins_pins`] matches).
pub fn findable(namespaces: &PodNamespaces) -> bool {
    namespaces.net.is_some() || namespaces.ipc.is_some() || namespaces.uts.is_some()
}

/// Whether a NUL-separated command line is `<exe> pause ... --net|--ipc|--uts <pin>`
/// for one of `pins`.
fn joins_pins(cmdline: &[u8], pins: &[&Path]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    if args.get(1) != Some(&&b"pause"[..]) {
        return false;
    }
    args.windows(2).any(|pair| {
        matches!(pair[0], b"--net" | b"--ipc" | b"--uts")
            && pins.iter().any(|pin| pin.as_os_str().as_bytes() == pair[1])
    })
}

/// Whether `pid` is PID 1 of its PID namespace, seen from an outer one
/// (`NSpid: <ours> ... 1` in its status, proc(5)).
fn is_namespace_init(pid: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() > 1 && ids.last() == Some(&"1")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_is_recognised_by_the_pins_it_joins() {
        let net = Path::new("/run/ketch/pods/abc/ns/net");
        let ipc = Path::new("/run/ketch/pods/abc/ns/ipc");
        let pause = b"/usr/bin/ketch-shim\0pause\0--spawn\0--net\0/run/ketch/pods/abc/ns/net\0";
        assert!(joins_pins(pause, &[net, ipc]));
        assert!(joins_pins(
            b"ketch\0pause\0--spawn\0--ipc\0/run/ketch/pods/abc/ns/ipc\0",
            &[net, ipc]
        ));
        // Another pod's pause, a monitor, a path that is only a prefix.
        assert!(!joins_pins(
            b"ketch\0pause\0--spawn\0--net\0/run/ketch/pods/abd/ns/net\0",
            &[net]
        ));
        assert!(!joins_pins(
            b"ketch\0monitor\0--net\0/run/ketch/pods/abc/ns/net\0",
            &[net]
        ));
        assert!(!joins_pins(
            b"ketch\0pause\0--net\0/run/ketch/pods/abc/ns/net2\0",
            &[net]
        ));
        assert!(!joins_pins(b"", &[net]));
    }

    #[test]
    fn a_holder_is_findable_only_by_a_pinned_net_ipc_or_uts_namespace() {
        let pin = || Some(PathBuf::from("/run/ketch/pods/abc/ns/x"));
        let none = PodNamespaces {
            user: None,
            net: None,
            ipc: None,
            uts: None,
        };
        assert!(!findable(&none), "the node's network and IPC");
        assert!(!findable(&PodNamespaces {
            user: pin(),
            ..none.clone()
        }));
        assert!(findable(&PodNamespaces {
            net: pin(),
            ..none.clone()
        }));
        assert!(findable(&PodNamespaces {
            ipc: pin(),
            ..none.clone()
        }));
        assert!(findable(&PodNamespaces { uts: pin(), ..none }));
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id() as i32;
        let start_time = monitor::process_start_time(pid).expect("our own start time");
        assert!(PodInit { pid, start_time }.alive());
        assert!(
            !PodInit {
                pid,
                start_time: start_time + 1
            }
            .alive()
        );
        assert!(
            namespace_of("pod", Some(&PodInit { pid, start_time })).is_ok(),
            "a live holder gives its namespace"
        );
        assert!(matches!(
            namespace_of("pod", None),
            Err(PodPidError::Gone(id)) if id == "pod"
        ));
    }
}
