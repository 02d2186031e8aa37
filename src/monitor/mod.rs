//! The per-container monitor: `ketch-shim monitor`, one process per container,
//! the way conmon serves CRI-O.
//!
//! The daemon calls [`start`], which re-executes our binary as `ketch
//! monitor`. That process starts a new session and forks: its parent exits
//! at once, so the monitor is nobody's child and outlives the daemon (a
//! restarted daemon finds it running and logging). The monitor
//!
//! - becomes a child subreaper and starts the container through the
//!   executor, then reports the container's pid (or the start error, with
//!   its cause) to [`start`] over a pipe, before [`start`] returns;
//! - owns the container's stdout/stderr pipes (or the pty master) and
//!   writes the CRI log file (`log`); it reopens it on request, for
//!   kubelet's rotation, without losing a line;
//! - serves attach and log reopening on a unix socket (`proto`, and
//!   `proto/monitor.md`): several clients, stdin, output fan-out, resize;
//!   detaching never stops the container;
//! - reaps the container, writes its exit status atomically to the exit
//!   file ([`ExitStatus`]) and exits.
//!
//! It is plain blocking code around poll(2), one thread, no async runtime:
//! a few MiB of RSS, and fork is safe in it (the executor forks there).
//!
//! The daemon stops a container by signalling its pid ([`signal_container`],
//! guarded by the start time against pid reuse) and waits for the exit file
//! ([`wait_for_exit`]).

pub mod log;
pub mod pause;
pub mod proto;
mod run;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::unistd::{Pid, pipe2};
use serde::{Deserialize, Serialize};

pub use run::main;

use crate::sys;

/// Takes the start report pipe that [`start`] (or `pause::spawn`) handed
/// over as the process's stdout, and puts /dev/null in its place.
///
/// The pipe travels as stdout, not at a fixed higher number, because then
/// `Command` needs no `pre_exec` hook and spawns with posix_spawn (vfork)
/// instead of fork: a fork of the daemon copies its page tables, and cost
/// 2-3 ms of every StartContainer.
fn take_report_pipe() -> std::io::Result<OwnedFd> {
    let report = std::io::stdout().as_fd().try_clone_to_owned()?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&null)?;
    Ok(report)
}

/// How long a start may take before the daemon gives up on it.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The program [`start`] runs when the spec names none: the running binary.
pub const SELF_EXE: &str = "/proc/self/exe";

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("spawn the monitor {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// The container could not start; the text is the cause.
    #[error("{0}")]
    Start(String),
    #[error("the monitor exited without reporting a start")]
    NoReport,
    #[error("bad report from the monitor: {0}")]
    BadReport(String),
    #[error("the container did not start within {0:?}")]
    Timeout(Duration),
    #[error("read the exit file {path}: {source}")]
    ExitFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the monitor socket {socket}: {message}")]
    Control { socket: PathBuf, message: String },
    #[error("signal process {pid}: {source}")]
    Signal { pid: i32, source: nix::Error },
}

/// What a container's monitor is started with. The directories of the
/// paths must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    /// The bundle: `config.json`, and the rootfs it names, mounted.
    pub bundle: PathBuf,
    /// The CRI log file (appended to; created 0640 when missing).
    pub log_path: PathBuf,
    /// Written once, atomically, when the container exits.
    pub exit_file: PathBuf,
    /// The attach/control socket (at most 107 bytes: a sockaddr_un limit).
    pub socket: PathBuf,
    /// Must match `process.terminal` in the spec.
    pub tty: bool,
    /// Keep the container's stdin open for attach clients.
    pub stdin: bool,
    /// Close the container's stdin when the first attach that sent it ends.
    pub stdin_once: bool,
    /// Cgroups to enter before the container's namespaces are made.
    pub cgroup_dirs: Vec<PathBuf>,
    /// The cgroup lines of the host's mount table, for the container's
    /// cgroup mounts; `None`: the monitor reads `/proc/self/mountinfo`.
    pub cgroup_mounts: Option<String>,
    /// The ketch binary to run as the monitor; `None` is [`SELF_EXE`].
    pub exe: Option<PathBuf>,
    /// The external OCI runtime that starts the container, and the
    /// container's ID there; `None`: the built-in executor.
    pub runtime: Option<(crate::executor::oci_runtime::OciRuntime, String)>,
}

/// A running container, as [`start`] reports it. Persist it: a restarted
/// daemon needs the pids and start times to find the processes again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub monitor_pid: i32,
    pub monitor_start_time: u64,
    pub container_pid: i32,
    /// /proc/<pid>/stat field 22: tells the container from a process that
    /// later reuses its pid.
    pub container_start_time: u64,
    pub started_at_unix_nano: i64,
    /// Spec settings that were adjusted or not applied (log them).
    pub warnings: Vec<String>,
}

/// The monitor's report line (JSON) to [`start`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct StartReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    monitor_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    monitor_start_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_start_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at_unix_nano: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl StartReport {
    fn error(message: impl Into<String>) -> Self {
        Self {
            error: Some(message.into()),
            ..Self::default()
        }
    }
}

/// The exit file: how the container ended.
///
/// ```json
/// { "exit_code": 137, "signal": 9, "finished_at": "2024-05-01T12:34:56.123456789Z",
///   "finished_at_unix_nano": 1714566896123456789, "oom_killed": false, "reason": "Error" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + the signal that killed it.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// RFC 3339 with nanoseconds, UTC.
    pub finished_at: String,
    pub finished_at_unix_nano: i64,
    /// Killed by the kernel's OOM killer in its cgroup.
    pub oom_killed: bool,
    /// CRI's reason: `Completed`, `Error` or `OOMKilled`.
    pub reason: String,
}

/// The CRI's reason for an exit, as containerd words it: `OOMKilled` when
/// the kernel's OOM killer ended it, else `Completed` for 0, `Error` for
/// anything else.
pub fn exit_reason(exit_code: i32, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

impl ExitStatus {
    pub fn new(
        exit_code: i32,
        signal: Option<i32>,
        finished: SystemTime,
        oom_killed: bool,
    ) -> Self {
        let reason = exit_reason(exit_code, oom_killed);
        Self {
            exit_code,
            signal,
            finished_at: crate::clock::rfc3339_nano(finished),
            finished_at_unix_nano: crate::clock::unix_nanos(finished),
            oom_killed,
            reason: reason.to_owned(),
        }
    }
}

/// Arguments of the `ketch-shim monitor` subcommand (see [`MonitorSpec`]).
#[derive(Debug, Clone, clap::Args)]
pub struct MonitorArgs {
    #[arg(long)]
    pub bundle: PathBuf,
    #[arg(long)]
    pub log_path: PathBuf,
    #[arg(long)]
    pub exit_file: PathBuf,
    #[arg(long)]
    pub socket: PathBuf,
    #[arg(long)]
    pub tty: bool,
    #[arg(long)]
    pub stdin: bool,
    #[arg(long)]
    pub stdin_once: bool,
    #[arg(long)]
    pub cgroup_dir: Vec<PathBuf>,
    #[arg(long)]
    pub cgroup_mounts: Option<String>,
    /// An external OCI runtime's binary (with `--runtime-root`,
    /// `--runtime-handler` and `--container-id`).
    #[arg(long, requires_all = ["runtime_root", "container_id"])]
    pub runtime: Option<PathBuf>,
    #[arg(long)]
    pub runtime_root: Option<PathBuf>,
    #[arg(long, default_value = "")]
    pub runtime_handler: String,
    #[arg(long)]
    pub container_id: Option<String>,
}

impl MonitorArgs {
    /// The external runtime and the container's ID there, if any.
    fn runtime(&self) -> Option<(crate::executor::oci_runtime::OciRuntime, String)> {
        Some((
            crate::executor::oci_runtime::OciRuntime {
                handler: self.runtime_handler.clone(),
                path: self.runtime.clone()?,
                root: self.runtime_root.clone()?,
            },
            self.container_id.clone()?,
        ))
    }
}

/// Starts a container's monitor, which starts the container. Returns when
/// the container's program runs, or with the reason it cannot (`exec
/// "/bin/nope": no such file or directory`); a failed start leaves no
/// process behind.
///
/// Blocking (for up to [`START_TIMEOUT`]): call it from a blocking thread.
pub fn start(spec: &MonitorSpec) -> Result<Started, MonitorError> {
    let exe = spec.exe.clone().unwrap_or_else(|| PathBuf::from(SELF_EXE));
    let (report_r, report_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| MonitorError::Io {
        context: "create a pipe".into(),
        source: e.into(),
    })?;
    let mut cmd = Command::new(&exe);
    cmd.arg("monitor")
        .arg("--bundle")
        .arg(&spec.bundle)
        .arg("--log-path")
        .arg(&spec.log_path)
        .arg("--exit-file")
        .arg(&spec.exit_file)
        .arg("--socket")
        .arg(&spec.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::from(report_w))
        .stderr(Stdio::null());
    for (flag, on) in [
        ("--tty", spec.tty),
        ("--stdin", spec.stdin),
        ("--stdin-once", spec.stdin_once),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    for dir in &spec.cgroup_dirs {
        cmd.arg("--cgroup-dir").arg(dir);
    }
    if let Some(table) = &spec.cgroup_mounts {
        cmd.arg("--cgroup-mounts").arg(table);
    }
    if let Some((runtime, id)) = &spec.runtime {
        cmd.arg("--runtime")
            .arg(&runtime.path)
            .arg("--runtime-root")
            .arg(&runtime.root)
            .arg("--runtime-handler")
            .arg(&runtime.handler)
            .arg("--container-id")
            .arg(id);
    }
    let mut child = cmd.spawn().map_err(|source| MonitorError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    // Closes our copy of the pipe's write end: EOF once the monitor is gone.
    drop(cmd);
    // The spawned process forks the monitor and exits at once.
    let _ = child.wait();
    let line = read_report(&report_r, START_TIMEOUT)?;
    let report: StartReport = serde_json::from_slice(&line)
        .map_err(|e| MonitorError::BadReport(format!("{e}: {}", String::from_utf8_lossy(&line))))?;
    if let Some(error) = report.error {
        return Err(MonitorError::Start(error));
    }
    match (
        report.monitor_pid,
        report.container_pid,
        report.container_start_time,
    ) {
        (Some(monitor_pid), Some(container_pid), Some(container_start_time)) => Ok(Started {
            monitor_pid,
            monitor_start_time: report.monitor_start_time.unwrap_or(0),
            container_pid,
            container_start_time,
            started_at_unix_nano: report.started_at_unix_nano.unwrap_or(0),
            warnings: report.warnings,
        }),
        _ => Err(MonitorError::BadReport(
            String::from_utf8_lossy(&line).into_owned(),
        )),
    }
}

/// Reads the report line, up to `timeout`.
fn read_report(pipe: &OwnedFd, timeout: Duration) -> Result<Vec<u8>, MonitorError> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return Ok(buf);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(MonitorError::Timeout(timeout));
        }
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(MonitorError::Io {
                    context: "wait for the monitor's report".into(),
                    source: e.into(),
                });
            }
        }
        let mut chunk = [0u8; 4096];
        match nix::unistd::read(pipe.as_fd(), &mut chunk) {
            Ok(0) if buf.is_empty() => return Err(MonitorError::NoReport),
            Ok(0) => return Ok(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(MonitorError::Io {
                    context: "read the monitor's report".into(),
                    source: e.into(),
                });
            }
        }
    }
}

/// Sends `sig` to the container's process if it is still the one that
/// started at `start_time`. `Ok(false)`: it is gone already.
pub fn signal_container(pid: i32, start_time: u64, sig: Signal) -> Result<bool, MonitorError> {
    signal_container_number(pid, start_time, sig as i32)
}

/// As [`signal_container`], with a signal number (real-time signals
/// included).
pub fn signal_container_number(
    pid: i32,
    start_time: u64,
    signo: i32,
) -> Result<bool, MonitorError> {
    crate::executor::exec::signal_checked(pid, start_time, signo)
        .map_err(|source| MonitorError::Signal { pid, source })
}

/// Whether `pid` is still the process that started at `start_time` (a
/// monitor or a container, after a daemon restart).
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    sys::start_time(Pid::from_raw(pid)) == Some(start_time)
}

/// The start time of a process (/proc/<pid>/stat field 22), if it exists.
pub fn process_start_time(pid: i32) -> Option<u64> {
    sys::start_time(Pid::from_raw(pid))
}

/// The exit file's content; `None` while the container runs.
pub fn read_exit_file(path: &Path) -> Result<Option<ExitStatus>, MonitorError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| MonitorError::ExitFile {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MonitorError::ExitFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Waits up to `timeout` for the exit file. `None`: still running.
pub async fn wait_for_exit(
    exit_file: &Path,
    timeout: Duration,
) -> Result<Option<ExitStatus>, MonitorError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut step = Duration::from_millis(10);
    loop {
        if let Some(status) = read_exit_file(exit_file)? {
            return Ok(Some(status));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(step.min(deadline - now)).await;
        step = (step * 2).min(Duration::from_millis(100));
    }
}

/// Asks the monitor to reopen the container's log file (CRI
/// ReopenContainerLog, after kubelet renamed it). Returns once the new file
/// is in use. Blocking, bounded by a 5 s timeout.
pub fn reopen_log(socket: &Path) -> Result<(), MonitorError> {
    let control = |message: String| MonitorError::Control {
        socket: socket.to_owned(),
        message,
    };
    let mut conn = UnixStream::connect(socket).map_err(|e| control(format!("connect: {e}")))?;
    let timeout = Some(Duration::from_secs(5));
    conn.set_read_timeout(timeout)
        .and_then(|()| conn.set_write_timeout(timeout))
        .map_err(|e| control(e.to_string()))?;
    conn.write_all(&proto::encode(proto::REOPEN_LOG, b""))
        .map_err(|e| control(format!("send: {e}")))?;
    loop {
        match proto::read_frame(&mut conn) {
            Ok(Some((proto::OK, _))) => return Ok(()),
            Ok(Some((proto::ERROR, msg))) => {
                return Err(control(String::from_utf8_lossy(&msg).into_owned()));
            }
            Ok(Some(_)) => continue,
            Ok(None) => return Err(control("closed without a reply".into())),
            Err(e) => return Err(control(format!("read: {e}"))),
        }
    }
}

/// Reads an attach client's frames until EXIT (for tools and tests): the
/// container's stdout, stderr and exit code.
pub fn attach_collect(conn: &mut UnixStream) -> std::io::Result<(Vec<u8>, Vec<u8>, Option<i32>)> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some((kind, payload)) = proto::read_frame(conn)? {
        match kind {
            proto::STDOUT => out.extend(payload),
            proto::STDERR => err.extend(payload),
            proto::EXIT => {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                return Ok((out, err, code));
            }
            _ => {}
        }
    }
    Ok((out, err, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_reasons_and_json() {
        let t = std::time::UNIX_EPOCH + Duration::new(1_714_566_896, 123_456_789);
        let s = ExitStatus::new(0, None, t, false);
        assert_eq!(s.reason, "Completed");
        assert_eq!(ExitStatus::new(137, Some(9), t, true).reason, "OOMKilled");
        assert_eq!(ExitStatus::new(2, None, t, false).reason, "Error");
        let json = serde_json::to_value(ExitStatus::new(137, Some(9), t, false)).unwrap();
        assert_eq!(json["finished_at"], "2024-05-01T12:34:56.123456789Z");
        assert_eq!(json["finished_at_unix_nano"], 1_714_566_896_123_456_789i64);
        assert_eq!(json["signal"], 9);
    }

    #[test]
    fn atomic_write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit");
        assert_eq!(read_exit_file(&path).unwrap(), None);
        let s = ExitStatus::new(3, None, SystemTime::now(), false);
        crate::store::write_atomic(&path, &serde_json::to_vec(&s).unwrap(), 0o644).unwrap();
        assert_eq!(read_exit_file(&path).unwrap(), Some(s));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
