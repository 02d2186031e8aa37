//! A new process in a running container (CRI `ExecSync` and `Exec`).
//!
//! The daemon is multi-threaded, so it must not fork and then run Rust code:
//! only async-signal-safe calls are allowed between fork and exec there.
//! Instead it runs the `ketch-shim exec` helper
//! ([`spawn`]), which is single-threaded and free to do the work:
//!
//! ```text
//! daemon ─spawn→ ketch-shim exec --pid P --start-time T   (fd 3: the OCI Process
//!                 │  as JSON; fd 4: status pipe back; 0-2: the stdio)
//!                 │  check P is still the container's init (start time),
//!                 │  join P's cgroups, setns ipc, uts, net, cgroup, pid,
//!                 │  and mnt last (it changes the root), fork
//!                 └─→ B: setsid (its own process group), controlling tty,
//!                     rlimits, user, capabilities, cwd, execve
//! ```
//!
//! With `process.terminal` the helper, once in the container's mount
//! namespace, opens a pty through the container's `/dev/ptmx` (see
//! [`super::console`]), sized from `process.consoleSize`, and passes the
//! master to the daemon over a unix socket at fd 5 (`SCM_RIGHTS`) before B
//! exists; B's stdio and controlling terminal are the slave, a
//! `/dev/pts/N` of the container's own devpts.
//!
//! The helper stays outside the container's pid namespace and waits for B,
//! so the daemon learns the exit from the status pipe the moment B exits,
//! not when the last holder of B's stdout closes it (a daemonised
//! grandchild may keep it open forever).
//!
//! Status pipe (helper → daemon), in order: `P` + u32 LE pid of B (host
//! numbering), then `S` (B exec'd) or `E` + error text (then end of file),
//! then `X` + i32 LE exit code (128 + signal for a signal death).

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, pipe2, setsid};
use oci_spec::runtime::{LinuxSeccomp, Process};

use super::enter_cgroups;
use super::process::{Finalize, SeccompFilter, finalize_and_exec};
use super::step::{self, StepError};
use crate::sys;

/// The most ExecSync output kept, stdout and stderr together, marker
/// included: the CRI reply must fit kubelet's 16 MiB message limit.
pub const MAX_OUTPUT: usize = 16 << 20;
/// Appended to a stream cut at [`MAX_OUTPUT`].
pub const TRUNCATION_MARKER: &[u8] = b"\n[ketch: output truncated at 16 MiB]\n";

const SPEC_FD: RawFd = 3;
const STATUS_FD: RawFd = 4;
/// With `process.terminal`: the socket the pty master is passed on.
const CONSOLE_FD: RawFd = 5;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("spawn the exec helper {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
    #[error("encode the process: {0}")]
    Encode(serde_json::Error),
    /// The helper or the process's setup said why it could not start.
    #[error("{0}")]
    Start(String),
    #[error("the exec helper ended without a report")]
    NoReport,
}

/// The running container to exec into: its first process, with the start
/// time that guards against pid reuse (/proc/<pid>/stat field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecTarget {
    pub pid: i32,
    pub start_time: u64,
}

/// What the helper runs: the process, and the container's seccomp filter
/// (its OCI `linux.seccomp`), which an exec'd process gets too.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ExecProcess {
    pub process: Process,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<LinuxSeccomp>,
    /// The container's external OCI runtime, which then makes the process
    /// (`<rt> exec`, applying the container's own seccomp filter) instead
    /// of the helper joining the namespaces itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<super::oci_runtime::RuntimeExec>,
    /// `seccomp` compiled (`seccomp::program`, base64): [`spawn`] fills it
    /// from the daemon's cache, so the helper does not compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp_program: Option<String>,
    /// The cgroup lines of the daemon's mount table ([`spawn`] fills it
    /// from [`cgroup_mount_table`]), so the helper need not read
    /// `/proc/self/mountinfo`: on a node that lists every container's
    /// mounts, and the kernel formats all of them on each read (a fifth of
    /// the helper's time with a handful of containers, read twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_mounts: Option<String>,
}

impl From<&Process> for ExecProcess {
    fn from(process: &Process) -> Self {
        Self {
            process: process.clone(),
            seccomp: None,
            runtime: None,
            seccomp_program: None,
            cgroup_mounts: None,
        }
    }
}

impl From<&ExecProcess> for ExecProcess {
    fn from(p: &ExecProcess) -> Self {
        p.clone()
    }
}

/// One of the stdio descriptors [`spawn`] gives the helper.
#[derive(Debug)]
pub enum ChildStdio {
    /// /dev/null, read and write.
    Null,
    /// This descriptor (the child's end; closed here once it holds it).
    Fd(OwnedFd),
}

/// A process started in a container.
pub struct ExecHandle {
    helper: sys::SpawnedChild,
    status: std::fs::File,
    pid: Pid,
    console: Option<OwnedFd>,
}

impl ExecHandle {
    /// With `process.terminal`: the master of the process's terminal
    /// (close-on-exec, blocking), once.
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// The process (B), in the daemon's pid numbering; also its process
    /// group.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Kills the process's whole process group.
    pub fn kill_group(&self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
        // A runtime's exec may not make the process a group leader.
        let _ = kill(self.pid, Signal::SIGKILL);
    }

    /// Blocks until the process exits; its exit code (128 + signal for a
    /// signal death).
    pub fn wait(mut self) -> Result<i32, ExecError> {
        let code = read_exit(&mut self.status);
        let _ = self.helper.wait();
        code.ok_or(ExecError::NoReport)
    }
}

/// Starts `process` in the container of `target`, with the given stdio.
/// With `process.terminal` the stdio given is the helper's only (pass
/// /dev/null): the process gets a terminal made in the container, whose
/// master [`ExecHandle::take_console`] returns. Returns once the program
/// runs, or why it cannot.
///
/// `exe` is the helper binary (`ketch-shim` beside the daemon). Blocking:
/// call it from a blocking thread.
pub fn spawn(
    exe: &Path,
    target: ExecTarget,
    process: impl Into<ExecProcess>,
    stdin: ChildStdio,
    stdout: ChildStdio,
    stderr: ChildStdio,
) -> Result<ExecHandle, ExecError> {
    let io = |context| move |source| ExecError::Io { context, source };
    let mut process: ExecProcess = process.into();
    if let (Some(spec), None) = (&process.seccomp, &process.seccomp_program) {
        // A profile that does not compile is left to the helper, which
        // reports why.
        if let Ok(program) = crate::seccomp::program::cached(spec) {
            process.seccomp_program =
                Some(base64::engine::general_purpose::STANDARD.encode(&program.bytes));
        }
    }
    if process.cgroup_mounts.is_none() {
        process.cgroup_mounts = cgroup_mount_table().map(str::to_owned);
    }
    let json = serde_json::to_vec(&process).map_err(ExecError::Encode)?;
    let (spec_r, spec_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| io("create a pipe")(e.into()))?;
    let (status_r, status_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| io("create a pipe")(e.into()))?;
    let terminal = process.process.terminal() == Some(true);
    let console = terminal
        .then(super::console::channel)
        .transpose()
        .map_err(|e| io("create a socket pair")(e.into()))?;
    let (pid_arg, start_arg) = (target.pid.to_string(), target.start_time.to_string());
    let args = [
        "exec".as_ref(),
        "--pid".as_ref(),
        pid_arg.as_ref(),
        "--start-time".as_ref(),
        start_arg.as_ref(),
    ];
    // For the stdio given as `Null`; opened whether needed or not, which
    // costs one open(2).
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(io("open /dev/null"))?;
    let mut fds: Vec<(BorrowedFd<'_>, RawFd)> = Vec::with_capacity(6);
    for (fd, stdio) in [(0, &stdin), (1, &stdout), (2, &stderr)] {
        let source = match stdio {
            ChildStdio::Fd(owned) => owned.as_fd(),
            ChildStdio::Null => null.as_fd(),
        };
        fds.push((source, fd));
    }
    fds.push((spec_r.as_fd(), SPEC_FD));
    fds.push((status_w.as_fd(), STATUS_FD));
    if let Some((_, theirs)) = &console {
        fds.push((theirs.as_fd(), CONSOLE_FD));
    }
    let helper = sys::spawn_with_fds(exe, &args, &fds).map_err(|source| ExecError::Spawn {
        exe: exe.to_owned(),
        source,
    })?;
    drop(fds);
    drop((stdin, stdout, stderr, null));
    drop(spec_r);
    drop(status_w);
    let console = console.map(|(ours, _)| ours);
    let mut status = std::fs::File::from(status_r);
    // The helper reads the whole spec before anything else; a failure to
    // write means it died, and the status pipe says why.
    let _ = std::fs::File::from(spec_w).write_all(&json);
    // The helper passes the master before B exists, so it is waiting in
    // the socket once B runs.
    let started = read_start(&mut status).and_then(|pid| match &console {
        Some(sock) => super::console::recv_master(sock.as_fd(), false)
            .map(|m| (pid, Some(m)))
            .map_err(|source| ExecError::Io {
                context: "receive the terminal's master",
                source,
            }),
        None => Ok((pid, None)),
    });
    match started {
        Ok((pid, console)) => Ok(ExecHandle {
            helper,
            status,
            pid,
            console,
        }),
        Err(e) => {
            let mut helper = helper;
            let _ = helper.wait();
            Err(e)
        }
    }
}

fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> Option<()> {
    r.read_exact(buf).ok()
}

fn read_start(status: &mut std::fs::File) -> Result<Pid, ExecError> {
    let mut tag = [0u8; 1];
    let mut pid = None;
    loop {
        if read_exact_or_eof(status, &mut tag).is_none() {
            return Err(ExecError::NoReport);
        }
        match tag[0] {
            b'P' => {
                let mut b = [0u8; 4];
                read_exact_or_eof(status, &mut b).ok_or(ExecError::NoReport)?;
                pid = Some(Pid::from_raw(i32::from_le_bytes(b)));
            }
            b'S' => return pid.ok_or(ExecError::NoReport),
            b'E' => {
                let mut text = String::new();
                let _ = status.take(8192).read_to_string(&mut text);
                return Err(ExecError::Start(text));
            }
            _ => return Err(ExecError::NoReport),
        }
    }
}

fn read_exit(status: &mut std::fs::File) -> Option<i32> {
    let mut tag = [0u8; 1];
    read_exact_or_eof(status, &mut tag)?;
    if tag[0] != b'X' {
        return None;
    }
    let mut b = [0u8; 4];
    read_exact_or_eof(status, &mut b)?;
    Some(i32::from_le_bytes(b))
}

/// What an ExecSync returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecSyncOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The exit code; after a timeout, that of the killed process (137).
    pub exit_code: i32,
    /// The timeout expired and the process group was killed.
    pub timed_out: bool,
    /// Output beyond [`MAX_OUTPUT`] was dropped (the stream that hit the
    /// limit ends with [`TRUNCATION_MARKER`]).
    pub truncated: bool,
}

/// Runs `process` in the container and collects its output, with stdin
/// from /dev/null. Returns when the process exits, or after `timeout` with
/// its process group killed. Blocking: call it from a blocking thread.
pub fn exec_sync(
    exe: &Path,
    target: ExecTarget,
    process: impl Into<ExecProcess>,
    timeout: Option<Duration>,
) -> Result<ExecSyncOutput, ExecError> {
    let io = |context| move |source| ExecError::Io { context, source };
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| io("create a pipe")(e.into()))?;
    let (err_r, err_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| io("create a pipe")(e.into()))?;
    let handle = spawn(
        exe,
        target,
        process,
        ChildStdio::Null,
        ChildStdio::Fd(out_w),
        ChildStdio::Fd(err_w),
    )?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut collector = Collector::default();
    let mut pipes = [Some(out_r), Some(err_r)];
    let mut timed_out = false;
    let mut killed_at: Option<Instant> = None;
    let mut status_buf = Vec::new();
    let status_fd = handle.status.as_fd();
    loop {
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() && !timed_out {
                    timed_out = true;
                    killed_at = Some(Instant::now());
                    handle.kill_group();
                    // Killing B ends the helper's wait at once; from here
                    // on the loop runs until the exit record arrives.
                }
                if killed_at.is_some_and(|k| k.elapsed() > Duration::from_secs(10)) {
                    // A process stuck in the kernel: do not wait forever.
                    let _ = kill(handle.helper.pid(), Signal::SIGKILL);
                    break;
                }
                if timed_out {
                    PollTimeout::from(1000u16)
                } else {
                    PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                        .unwrap_or(PollTimeout::MAX)
                }
            }
            None => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(status_fd, PollFlags::POLLIN)];
        for p in pipes.iter().flatten() {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, wait) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(io("poll the exec's output")(e.into())),
            Ok(_) => {}
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut idx = 1;
        for (stream, slot) in pipes.iter_mut().enumerate() {
            if slot.is_none() {
                continue;
            }
            if ready[idx] && !collector.read_from(slot.as_ref().map(|p| p.as_fd()), stream) {
                *slot = None;
            }
            idx += 1;
        }
        if ready[0] {
            let mut chunk = [0u8; 64];
            match nix::unistd::read(status_fd, &mut chunk) {
                Ok(0) => break,
                Ok(n) => status_buf.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => break,
            }
            if status_buf.len() >= 5 && status_buf[0] == b'X' {
                break;
            }
        }
    }
    // The process has exited: take what it wrote before, without waiting
    // for descendants that may hold the pipes open.
    for (stream, slot) in pipes.iter_mut().enumerate() {
        if let Some(p) = slot.take() {
            let _ = nix::fcntl::fcntl(&p, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
            while collector.read_from(Some(p.as_fd()), stream) {}
        }
    }
    let exit_code = if status_buf.len() >= 5 && status_buf[0] == b'X' {
        i32::from_le_bytes([status_buf[1], status_buf[2], status_buf[3], status_buf[4]])
    } else {
        -1
    };
    let mut helper = handle.helper;
    let _ = helper.wait();
    Ok(ExecSyncOutput {
        stdout: collector.out[0].clone(),
        stderr: collector.out[1].clone(),
        exit_code,
        timed_out,
        truncated: collector.truncated,
    })
}

/// Output of both streams under one budget.
#[derive(Default)]
struct Collector {
    out: [Vec<u8>; 2],
    truncated: bool,
}

impl Collector {
    /// Reads once; false at end of file (or when nothing more is ready on a
    /// non-blocking pipe).
    fn read_from(&mut self, fd: Option<std::os::fd::BorrowedFd<'_>>, stream: usize) -> bool {
        let Some(fd) = fd else { return false };
        let mut buf = [0u8; 65536];
        let n = loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(n) => break n,
                Err(Errno::EINTR) => continue,
                Err(_) => return false,
            }
        };
        if n == 0 {
            return false;
        }
        self.push(stream, &buf[..n]);
        true
    }

    fn push(&mut self, stream: usize, data: &[u8]) {
        if self.truncated {
            return;
        }
        let used = self.out[0].len() + self.out[1].len();
        let room = MAX_OUTPUT - TRUNCATION_MARKER.len() - used;
        if data.len() <= room {
            self.out[stream].extend_from_slice(data);
        } else {
            self.out[stream].extend_from_slice(&data[..room]);
            self.out[stream].extend_from_slice(TRUNCATION_MARKER);
            self.truncated = true;
        }
    }
}

/// Arguments of the `ketch-shim exec` helper.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// The container's first process.
    #[arg(long)]
    pub pid: i32,
    /// Its start time (/proc/<pid>/stat field 22), against pid reuse.
    #[arg(long)]
    pub start_time: u64,
}

/// `ketch-shim exec`: the helper side. Plain blocking code, single-threaded.
pub fn main(args: &ExecArgs) -> ExitCode {
    // SAFETY: the daemon placed these descriptors for us (see `spawn`); no
    // other code in this fresh process owns them.
    let spec = unsafe { OwnedFd::from_raw_fd(SPEC_FD) };
    // SAFETY: as above.
    let status = unsafe { OwnedFd::from_raw_fd(STATUS_FD) };
    let _ = sys::set_cloexec(STATUS_FD, true);
    match helper(args, spec, &status) {
        Ok(code) => {
            let mut msg = vec![b'X'];
            msg.extend_from_slice(&code.to_le_bytes());
            write_all(&status, &msg);
            ExitCode::from((code & 0xff) as u8)
        }
        Err(e) => {
            let mut msg = vec![b'E'];
            msg.extend_from_slice(e.0.as_bytes());
            write_all(&status, &msg);
            ExitCode::from(126)
        }
    }
}

fn write_all(fd: &OwnedFd, data: &[u8]) {
    sys::write_all(fd.as_fd(), data);
}

/// Why the helper could not run the process: a step of its own, or the
/// report of the process (already `"<step>: <cause>"`).
struct HelperError(String);

impl From<StepError> for HelperError {
    fn from(e: StepError) -> Self {
        Self(e.to_string())
    }
}

fn helper(args: &ExecArgs, spec: OwnedFd, status: &OwnedFd) -> Result<i32, HelperError> {
    let mut json = Vec::new();
    std::fs::File::from(spec)
        .read_to_end(&mut json)
        .map_err(|e| StepError::io("read the process spec", &e))?;
    let ExecProcess {
        process,
        seccomp,
        runtime,
        seccomp_program,
        cgroup_mounts,
    } = serde_json::from_slice(&json)
        .map_err(|e| StepError::msg("parse the process spec", e.to_string()))?;
    if let Some(target) = runtime {
        if sys::start_time(Pid::from_raw(args.pid)) != Some(args.start_time) {
            return Err(StepError::msg(
                format!("exec in container process {}", args.pid),
                "the process is not running",
            )
            .into());
        }
        let console = (process.terminal() == Some(true))
            .then(console_socket)
            .transpose()?;
        // Called once the process runs (and its terminal's master is
        // passed on): the same report as below, and the caller's stdio is
        // the process's alone from here on.
        let mut started = |pid: Pid| {
            let mut msg = vec![b'P'];
            msg.extend_from_slice(&pid.as_raw().to_le_bytes());
            write_all(status, &msg);
            if let Ok(null) = std::fs::File::open("/dev/null") {
                for fd in 0..3 {
                    let _ = sys::dup_onto(null.as_fd(), fd);
                }
            }
            write_all(status, b"S");
        };
        let code = super::oci_runtime::exec_in_runtime(&target, &process, &mut started, console)
            .map_err(HelperError)?;
        return Ok(code);
    }
    // The daemon's compiled program when it sent one, else compiled here;
    // before any namespace is joined, like a container's first process:
    // the child only loads it.
    let seccomp = match (seccomp, seccomp_program) {
        (None, _) => None,
        (Some(spec), Some(encoded)) => {
            Some(SeccompFilter::from(&crate::seccomp::program::Program {
                bytes: base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| StepError::msg("decode the seccomp program", e.to_string()))?,
                flags: crate::seccomp::program::flags(&spec),
            }))
        }
        (Some(spec), None) => Some(
            super::process::seccomp_filter(None, &spec)
                .map_err(|e| StepError::msg("compile the seccomp filter", e.to_string()))?,
        ),
    };
    let pid = Pid::from_raw(args.pid);
    if sys::start_time(pid) != Some(args.start_time) {
        return Err(StepError::msg(
            format!("exec in container process {pid}"),
            "the process is not running",
        )
        .into());
    }
    // Namespaces are opened before any is joined: the paths are the host's.
    // The user namespace first: a pod's own owns the others, and an exec
    // must never run as the host's root in them.
    let kinds = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut namespaces = Vec::new();
    for (name, flag) in kinds {
        let theirs = format!("/proc/{pid}/ns/{name}");
        if same_file(&theirs, &format!("/proc/self/ns/{name}")) {
            continue;
        }
        let fd = nix::fcntl::open(
            theirs.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| StepError::errno(format!("open {theirs}"), e))?;
        namespaces.push((name, flag, fd));
    }
    // A cgroup the helper is already in is not joined again: even a move
    // to where one is takes the kernel's migration lock (on a hybrid host,
    // the unified tree's root, which ketch leaves alone).
    // The daemon's cgroup mounts when it sent them (the helper is in its
    // mount namespace still), else one read of the mount table for both.
    let mountinfo = match cgroup_mounts {
        Some(table) => table,
        None => read_mountinfo()?,
    };
    let ours = resolve_cgroup_dirs(&read_proc_cgroup(Pid::this())?, &mountinfo);
    let theirs: Vec<PathBuf> = resolve_cgroup_dirs(&read_proc_cgroup(pid)?, &mountinfo)
        .into_iter()
        .filter(|d| !ours.contains(d))
        .collect();
    // On cgroup2, B is born in the container's cgroup (see
    // `super::clone_target`) and the helper stays where it is; else the
    // helper joins them and B inherits them.
    let cgroup = super::open_clone_target(&theirs);
    if cgroup.is_none() {
        enter_cgroups(&theirs)?;
    }
    let joins_user = namespaces.iter().any(|(name, _, _)| *name == "user");
    for (name, flag, fd) in &namespaces {
        setns(fd, *flag).map_err(|e| StepError::errno(format!("join the {name} namespace"), e))?;
    }
    drop(namespaces);
    if joins_user {
        super::process::become_userns_root()?;
    }

    // In the container's mount namespace now: its /dev/ptmx is its own
    // devpts's.
    let pty = if process.terminal() == Some(true) {
        let size = process
            .console_size()
            .as_ref()
            .map(|s| (clamp_u16(s.width()), clamp_u16(s.height())));
        let pty = super::console::open_pty(size)?;
        let sock = console_socket()?;
        super::console::send_master(sock.as_fd(), pty.master.as_fd())?;
        // The daemon holds the only master: the terminal hangs up when it
        // closes it, and when the last holder of the slave is gone.
        drop(pty.master);
        Some(pty.slave)
    } else {
        None
    };

    let (report_r, report_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| StepError::errno("create a pipe", e))?;
    // SAFETY: the `ketch-shim exec` helper is plain blocking code that
    // starts no thread: this process is single-threaded. B born by clone3
    // only makes syscalls through nix, caps and std, and execs.
    let forked = unsafe { sys::fork_maybe_into_cgroup(cgroup.as_ref().map(|fd| fd.as_fd())) };
    let (forked, in_cgroup) = forked.map_err(|e| StepError::errno("fork", e))?;
    match forked {
        ForkResult::Child => {
            drop(report_r);
            let result = (|| {
                // clone3 refused: join through the fd, the host's path is
                // not there in the container's mount namespace.
                if let (Some(dir), false) = (&cgroup, in_cgroup) {
                    super::enter_cgroup_at(dir.as_fd())?;
                }
                setsid().map_err(|e| StepError::errno("setsid", e))?;
                if let Some(slave) = &pty {
                    super::console::become_stdio(slave)?;
                }
                finalize_and_exec(
                    &process,
                    Finalize {
                        oom_score_adj: None,
                        seccomp: seccomp.as_ref(),
                    },
                )
            })();
            let Err(e) = result;
            step::report(&report_w, &e);
            sys::exit_now(127);
        }
        ForkResult::Parent { child } => {
            drop(report_w);
            drop(pty);
            let mut msg = vec![b'P'];
            msg.extend_from_slice(&child.as_raw().to_le_bytes());
            write_all(status, &msg);
            // Only B holds the caller's stdio from here on, so its end of
            // file is B's.
            if let Ok(null) = std::fs::File::open("/dev/null") {
                for fd in 0..3 {
                    let _ = sys::dup_onto(null.as_fd(), fd);
                }
            }
            match step::read_report(report_r) {
                Ok(None) => {}
                Ok(Some(text)) => {
                    let _ = wait_code(child);
                    return Err(HelperError(text));
                }
                Err(e) => {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = wait_code(child);
                    return Err(StepError::io("read the exec report", &e).into());
                }
            }
            write_all(status, b"S");
            Ok(wait_code(child).unwrap_or(-1))
        }
    }
}

/// The socket the daemon placed at [`CONSOLE_FD`] for a terminal exec.
fn console_socket() -> Result<OwnedFd, StepError> {
    // EBADF when the daemon placed nothing there.
    sys::set_cloexec(CONSOLE_FD, true)
        .map_err(|e| StepError::errno("take the console socket at fd 5", e))?;
    // SAFETY: the daemon placed this descriptor for us (see `spawn`) and
    // it was just checked to be open; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(CONSOLE_FD) })
}

fn clamp_u16(n: u64) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn wait_code(child: Pid) -> Option<i32> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Some(128 + sig as i32),
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

fn same_file(a: &str, b: &str) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The cgroup directories of `pid`, one per hierarchy, found through this
/// process's mount table (/proc/<pid>/cgroup paths are relative to each
/// hierarchy's root).
pub fn cgroup_dirs(pid: Pid) -> Result<Vec<PathBuf>, StepError> {
    Ok(resolve_cgroup_dirs(
        &read_proc_cgroup(pid)?,
        &read_mountinfo()?,
    ))
}

/// The cgroup and cgroup2 lines of this process's `/proc/self/mountinfo`,
/// read once: cgroup hierarchies are mounted when the node boots and stay.
/// None when the table cannot be read (the helper then reads its own).
pub fn cgroup_mount_table() -> Option<&'static str> {
    static TABLE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TABLE
        .get_or_init(|| {
            let all = read_mountinfo().ok()?;
            Some(cgroup_lines(&all))
        })
        .as_deref()
}

/// The lines of a mountinfo table whose filesystem is cgroup or cgroup2.
fn cgroup_lines(mountinfo: &str) -> String {
    let mut out = String::new();
    for line in mountinfo.lines() {
        let fstype = line
            .split_once(" - ")
            .and_then(|(_, right)| right.split(' ').next());
        if matches!(fstype, Some("cgroup" | "cgroup2")) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn read_proc_cgroup(pid: Pid) -> Result<String, StepError> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| StepError::io(format!("read /proc/{pid}/cgroup"), &e))
}

fn read_mountinfo() -> Result<String, StepError> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| StepError::io("read /proc/self/mountinfo", &e))
}

fn resolve_cgroup_dirs(cgroups: &str, mountinfo: &str) -> Vec<PathBuf> {
    struct CgMount<'a> {
        root: &'a str,
        point: &'a str,
        fstype: &'a str,
        superopts: Vec<&'a str>,
    }
    let mounts: Vec<CgMount<'_>> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fstype = *right.first()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(CgMount {
                root: left.get(3)?,
                point: left.get(4)?,
                fstype,
                superopts: right.get(2)?.split(',').collect(),
            })
        })
        .collect();
    let mut dirs = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let found = mounts.iter().find(|m| {
            if controllers.is_empty() {
                m.fstype == "cgroup2"
            } else {
                m.fstype == "cgroup" && controllers.split(',').all(|c| m.superopts.contains(&c))
            }
        });
        let Some(m) = found else { continue };
        let rel = path
            .strip_prefix(m.root.trim_end_matches('/'))
            .unwrap_or(path)
            .trim_start_matches('/');
        let dir = Path::new(m.point).join(rel);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Sends `sig` to `pid` only if it is still the process that started at
/// `start_time`. False when it is gone (or the pid now names another).
pub fn signal_checked(pid: i32, start_time: u64, signo: i32) -> Result<bool, Errno> {
    let pid = Pid::from_raw(pid);
    if sys::start_time(pid) != Some(start_time) {
        return Ok(false);
    }
    match sys::kill(pid, signo) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_dirs_resolve_v1_and_v2_hierarchies() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let cgroups = "\
5:memory:/pods/c1
3:cpu:/pods/c1
1:name=systemd:/
0::/pods/c1
9:freezer:/x
";
        assert_eq!(
            resolve_cgroup_dirs(cgroups, mountinfo),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/pods/c1"),
                PathBuf::from("/sys/fs/cgroup/cpu/pods/c1"),
                PathBuf::from("/sys/fs/cgroup/systemd"),
                PathBuf::from("/sys/fs/cgroup/unified/pods/c1"),
            ]
        );
    }

    #[test]
    fn the_cgroup_lines_of_a_mount_table_resolve_as_the_whole_table() {
        let mountinfo = "\
22 1 0:21 / / rw - ext4 /dev/vda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /kubepods /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
90 22 0:50 / /var/lib/ketch/c1/rootfs rw - overlay overlay rw,lowerdir=/l/cgroup
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let table = cgroup_lines(mountinfo);
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(!table.contains("overlay") && !table.contains("tmpfs"));
        let cgroups = "4:memory:/kubepods/c1\n3:cpu,cpuacct:/c1\n0::/c1\n";
        assert_eq!(
            resolve_cgroup_dirs(cgroups, &table),
            resolve_cgroup_dirs(cgroups, mountinfo)
        );
        assert_eq!(
            resolve_cgroup_dirs(cgroups, &table),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/c1"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/c1"),
                PathBuf::from("/sys/fs/cgroup/unified/c1"),
            ]
        );
    }

    #[test]
    fn collector_caps_output_with_a_marker() {
        let mut c = Collector::default();
        let chunk = vec![b'a'; 1 << 20];
        for i in 0..20 {
            c.push(i % 2, &chunk);
        }
        let total = c.out[0].len() + c.out[1].len();
        assert_eq!(total, MAX_OUTPUT);
        assert!(c.truncated);
        let cut = if c.out[0].ends_with(TRUNCATION_MARKER) {
            &c.out[0]
        } else {
            &c.out[1]
        };
        assert!(cut.ends_with(TRUNCATION_MARKER));
    }
}
