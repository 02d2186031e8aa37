//! `ketch-shim pause`: PID 1 of a pod's shared PID namespace. It holds the
//! namespace open for the pod's containers (they join `/proc/<pid>/ns/pid`)
//! and reaps the orphans reparented to it. No pause image is needed.
//!
//! [`spawn`] starts one in a new PID namespace, joined to the pod's pinned
//! net/ipc/uts namespaces and detached like a monitor: `ketch-shim pause
//! --spawn` makes its own session, joins the namespaces, unshares the PID
//! namespace and forks; the child is PID 1 there and runs [`run_pause`];
//! the parent reports the child's pid over a pipe and exits.
//!
//! As PID 1, it receives a signal from outside its namespace only if it
//! handles it or has it blocked (the kernel drops default-action signals to
//! a namespace init): it blocks every signal and takes them with sigwait.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, pipe2, setsid};
use serde::{Deserialize, Serialize};

use super::{MonitorError, SELF_EXE};
use crate::sys;

/// The pod's pinned namespaces: a path for each namespace the pod owns;
/// `None` where it uses the node's. Made and persisted by `sandbox` (the
/// pod record), joined here; it lives at this end so the `ketch-shim`
/// binary does not link the sandbox code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNamespaces {
    /// The pod's own user namespace: the others are owned by it, so it is
    /// joined first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<PathBuf>,
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl PodNamespaces {
    /// Every pin with its namespace type name.
    pub fn pins(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [
            ("user", &self.user),
            ("net", &self.net),
            ("ipc", &self.ipc),
            ("uts", &self.uts),
        ]
        .into_iter()
        .filter_map(|(kind, path)| path.as_deref().map(|p| (kind, p)))
    }
}

/// A started pause process: persist both, to check it after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    pub pid: i32,
    pub start_time: u64,
}

/// Arguments of the `ketch-shim pause` subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PauseArgs {
    /// Start a detached pause in a new PID namespace and report its pid on
    /// fd 3 (what [`spawn`] runs); without it, be the pause in place.
    #[arg(long)]
    pub spawn: bool,
    #[arg(long)]
    pub user: Option<PathBuf>,
    #[arg(long)]
    pub net: Option<PathBuf>,
    #[arg(long)]
    pub ipc: Option<PathBuf>,
    #[arg(long)]
    pub uts: Option<PathBuf>,
}

/// Starts a pod's pause: PID 1 of a new PID namespace, in the pod's
/// namespaces, detached. `exe` is the ketch binary (`None`: this one).
/// Blocking but quick.
pub fn spawn(exe: Option<&Path>, ns: &PodNamespaces) -> Result<Spawned, MonitorError> {
    let exe = exe.map_or_else(|| PathBuf::from(SELF_EXE), Path::to_path_buf);
    let (r, w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| MonitorError::Io {
        context: "create a pipe".into(),
        source: e.into(),
    })?;
    let mut cmd = Command::new(&exe);
    cmd.arg("pause")
        .arg("--spawn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::null());
    for (kind, path) in ns.pins() {
        cmd.arg(format!("--{kind}")).arg(path);
    }
    let mut child = cmd.spawn().map_err(|source| MonitorError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    // Closes our copy of the pipe's write end (see `take_report_pipe`).
    drop(cmd);
    let _ = child.wait();
    let line = super::read_report(&r, Duration::from_secs(10))?;
    let line = String::from_utf8_lossy(&line).into_owned();
    if let Some(err) = line.strip_prefix("error ") {
        return Err(MonitorError::Start(err.to_owned()));
    }
    let pid: i32 = line
        .strip_prefix("ok ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| MonitorError::BadReport(line.clone()))?;
    let start_time = sys::start_time(Pid::from_raw(pid))
        .ok_or_else(|| MonitorError::Start(format!("pause process {pid} died at once")))?;
    Ok(Spawned { pid, start_time })
}

/// `ketch-shim pause`.
pub fn main(args: &PauseArgs) -> ExitCode {
    if !args.spawn {
        run_pause();
    }
    let report = match super::take_report_pipe() {
        Ok(report) => report,
        Err(_) => return ExitCode::FAILURE,
    };
    match spawn_here(args, &report) {
        Ok(pid) => {
            sys::write_all(report.as_fd(), format!("ok {pid}\n").as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            sys::write_all(report.as_fd(), format!("error {e}\n").as_bytes());
            ExitCode::FAILURE
        }
    }
}

fn spawn_here(args: &PauseArgs, report: &OwnedFd) -> Result<Pid, String> {
    setsid().map_err(|e| format!("setsid: {e}"))?;
    // The user namespace first: the pod's others are owned by it, and the
    // PID namespace unshared below must be too, or the pod's containers
    // (in the pod's user namespace) could not join it (setns(2)).
    for (path, flag) in [
        (&args.user, CloneFlags::CLONE_NEWUSER),
        (&args.net, CloneFlags::CLONE_NEWNET),
        (&args.ipc, CloneFlags::CLONE_NEWIPC),
        (&args.uts, CloneFlags::CLONE_NEWUTS),
    ] {
        if let Some(path) = path {
            let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| format!("open namespace {}: {e}", path.display()))?;
            setns(&fd, flag).map_err(|e| format!("join namespace {}: {e}", path.display()))?;
        }
    }
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("unshare the pid namespace: {e}"))?;
    // SAFETY: `ketch-shim pause` is plain blocking code that starts no
    // thread: this process is single-threaded.
    let forked = unsafe { sys::fork() };
    match forked.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            // The pipe is the daemon's to close: only the parent reports.
            let _ = nix::unistd::close(report.as_raw_fd());
            run_pause()
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Reaps children until SIGTERM or SIGINT; never returns.
pub fn run_pause() -> ! {
    let _ = std::env::set_current_dir("/");
    let all = SigSet::all();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None);
    loop {
        match all.wait() {
            Ok(Signal::SIGTERM | Signal::SIGINT) => sys::exit_now(0),
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            },
            _ => {}
        }
    }
}
