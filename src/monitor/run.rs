//! The monitor process itself (`ketch-shim monitor ...`): plain blocking code
//! around one poll(2) loop, single-threaded, so it stays small and may
//! fork (the executor forks from here).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, pipe2, setsid};

use super::log::{CriLog, Stream};
use super::proto;
use super::{ExitStatus, MonitorArgs, StartReport, take_report_pipe};
use crate::executor::{self, Executor, StartRequest, Stdio};
use crate::sys;

/// A client whose unsent output grows past this is too slow and is
/// dropped: the container must never wait on a reader.
const CLIENT_BUFFER_LIMIT: usize = 4 << 20;
/// Stdin waiting for the container to read it; past this, clients are not
/// read until it drains.
const STDIN_BUFFER_LIMIT: usize = 1 << 20;
const READ_CHUNK: usize = 32 * 1024;

/// `ketch-shim monitor`: detaches, then runs the container to its end.
pub fn main(args: &MonitorArgs) -> ExitCode {
    let report = match take_report_pipe() {
        Ok(report) => report,
        // Nobody to tell: the daemon sees the pipe close without a report.
        Err(_) => return ExitCode::FAILURE,
    };
    // Own session, then fork: the daemon's child exits at once, and the
    // monitor, nobody's child now, outlives the daemon.
    if let Err(e) = setsid() {
        send_report(&report, &StartReport::error(format!("setsid: {e}")));
        return ExitCode::FAILURE;
    }
    // SAFETY: the monitor is single-threaded blocking code (no async
    // runtime, no thread started before this point).
    match unsafe { sys::fork() } {
        Err(e) => {
            send_report(&report, &StartReport::error(format!("fork: {e}")));
            ExitCode::FAILURE
        }
        Ok(ForkResult::Parent { .. }) => sys::exit_now(0),
        Ok(ForkResult::Child) => match Monitor::start(args, report) {
            Ok(mut monitor) => {
                monitor.run();
                ExitCode::SUCCESS
            }
            Err(()) => ExitCode::FAILURE,
        },
    }
}

fn send_report(fd: &OwnedFd, report: &StartReport) {
    if let Ok(mut line) = serde_json::to_vec(report) {
        line.push(b'\n');
        sys::write_all(fd.as_fd(), &line);
    }
}

struct Output {
    fd: OwnedFd,
    stream: Stream,
}

struct Client {
    sock: UnixStream,
    decoder: proto::Decoder,
    out: Vec<u8>,
    attached: bool,
    sends_stdin: bool,
    closing: bool,
}

struct Stdin {
    fd: OwnedFd,
    pending: Vec<u8>,
    /// Close once `pending` is written (stdin_once ended).
    close_when_drained: bool,
}

struct Monitor {
    log: CriLog<File>,
    log_path: PathBuf,
    exit_file: PathBuf,
    socket: PathBuf,
    outputs: Vec<Output>,
    stdin: Option<Stdin>,
    tty: Option<OwnedFd>,
    stdin_once: bool,
    listener: UnixListener,
    clients: Vec<Client>,
    signals: SignalFd,
    container: Pid,
    status: Option<WaitStatus>,
    oom: Option<OomWatch>,
}

impl Monitor {
    /// Everything up to the container running; the report goes to the
    /// daemon either way.
    fn start(args: &MonitorArgs, report: OwnedFd) -> Result<Self, ()> {
        match Self::try_start(args) {
            Ok((monitor, started)) => {
                send_report(&report, &started);
                Ok(monitor)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&args.socket);
                send_report(&report, &StartReport::error(e));
                Err(())
            }
        }
    }

    fn try_start(args: &MonitorArgs) -> Result<(Self, StartReport), String> {
        let monitor_pid = Pid::this();
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("become a child subreaper: {e}"))?;
        let mut mask = SigSet::empty();
        for sig in [
            Signal::SIGCHLD,
            Signal::SIGUSR1,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(sig);
        }
        // Blocked: SIGCHLD and SIGUSR1 (reopen the log) arrive through the
        // signalfd; the monitor lives as long as its container, so the
        // termination signals are simply held.
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(|e| format!("block signals: {e}"))?;
        let mut wanted = SigSet::empty();
        wanted.add(Signal::SIGCHLD);
        wanted.add(Signal::SIGUSR1);
        let signals = SignalFd::with_flags(&wanted, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;

        let spec = executor::load_spec(&args.bundle).map_err(|e| e.to_string())?;
        let spec_tty = spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false);
        if spec_tty != args.tty {
            return Err(format!(
                "--tty={} disagrees with process.terminal={spec_tty} in the spec",
                args.tty
            ));
        }

        // The container's side of stdio, and ours.
        let cloexec = OFlag::O_CLOEXEC;
        let mut outputs = Vec::new();
        let mut stdin = None;
        let mut tty = None;
        // With a terminal the container makes its own pty (in its devpts)
        // and the executor hands back the master.
        let mut child_stdio: Option<[OwnedFd; 3]> = None;
        if !args.tty {
            let (out_r, out_w) = pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
            let (err_r, err_w) = pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
            set_nonblocking(out_r.as_fd())?;
            set_nonblocking(err_r.as_fd())?;
            outputs.push(Output {
                fd: out_r,
                stream: Stream::Stdout,
            });
            outputs.push(Output {
                fd: err_r,
                stream: Stream::Stderr,
            });
            let child_in = if args.stdin {
                let (in_r, in_w) = pipe2(cloexec).map_err(|e| format!("pipe: {e}"))?;
                set_nonblocking(in_w.as_fd())?;
                stdin = Some(Stdin {
                    fd: in_w,
                    pending: Vec::new(),
                    close_when_drained: false,
                });
                in_r
            } else {
                OwnedFd::from(File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?)
            };
            child_stdio = Some([child_in, out_w, err_w]);
        }

        let _ = std::fs::remove_file(&args.socket);
        let listener = UnixListener::bind(&args.socket)
            .map_err(|e| format!("listen on {}: {e}", args.socket.display()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listen on {}: {e}", args.socket.display()))?;
        let log = CriLog::new(open_log(&args.log_path)?);
        // Counted before the start: a container that runs out of memory at
        // once is killed before a count taken after the start could see it.
        let mut oom = OomWatch::new(&args.cgroup_dir);

        let request = StartRequest {
            bundle: &args.bundle,
            spec: &spec,
            stdio: match &child_stdio {
                Some([i, o, e]) => Stdio::Fds([i.as_fd(), o.as_fd(), e.as_fd()]),
                None => Stdio::Terminal,
            },
            cgroup_dirs: &args.cgroup_dir,
            cgroup_mounts: args.cgroup_mounts.as_deref(),
        };
        // The pod's runtime handler picks the executor: an external OCI
        // runtime gets the same bundle, and this monitor stays the parent.
        let started = match args.runtime() {
            None => executor::Builtin.start(&request),
            Some((runtime, id)) => executor::oci_runtime::OciExecutor {
                runtime: &runtime,
                id: &id,
                console_socket: &args.socket.with_extension("console"),
            }
            .start(&request),
        }
        .map_err(|e| e.to_string())?;
        let started_at = SystemTime::now();
        // Only the container holds its ends now: our output reads see end
        // of file when it (and whatever inherited them) is done.
        drop(child_stdio);
        if let Some(master) = started.console {
            set_nonblocking(master.as_fd())?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
            outputs.push(Output {
                fd: dup(&master)?,
                stream: Stream::Stdout,
            });
            if args.stdin {
                stdin = Some(Stdin {
                    fd: dup(&master)?,
                    pending: Vec::new(),
                    close_when_drained: false,
                });
            }
            tty = Some(master);
        }
        let pid = started.pid;
        let start_time = sys::start_time(pid).unwrap_or(0);
        if args.cgroup_dir.is_empty() {
            // Left in our cgroups: watch them.
            oom = executor::exec::cgroup_dirs(pid)
                .ok()
                .and_then(|dirs| OomWatch::new(&dirs));
        }
        let report = StartReport {
            monitor_pid: Some(monitor_pid.as_raw()),
            monitor_start_time: sys::start_time(monitor_pid),
            container_pid: Some(pid.as_raw()),
            container_start_time: Some(start_time),
            started_at_unix_nano: Some(crate::clock::unix_nanos(started_at)),
            warnings: started.warnings,
            error: None,
        };
        Ok((
            Self {
                log,
                log_path: args.log_path.clone(),
                exit_file: args.exit_file.clone(),
                socket: args.socket.clone(),
                outputs,
                stdin,
                tty,
                stdin_once: args.stdin_once,
                listener,
                clients: Vec::new(),
                signals,
                container: pid,
                status: None,
                oom,
            },
            report,
        ))
    }

    fn run(&mut self) {
        while self.status.is_none() {
            self.turn(PollTimeout::NONE);
        }
        self.finish();
    }

    /// One poll and the work it found.
    fn turn(&mut self, timeout: PollTimeout) {
        let stdin_full = self
            .stdin
            .as_ref()
            .is_some_and(|s| s.pending.len() >= STDIN_BUFFER_LIMIT);
        let mut fds = vec![
            PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
        ];
        for o in &self.outputs {
            fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
        }
        let stdin_slot = fds.len();
        if let Some(s) = &self.stdin {
            let events = if s.pending.is_empty() {
                PollFlags::empty()
            } else {
                PollFlags::POLLOUT
            };
            fds.push(PollFd::new(s.fd.as_fd(), events));
        }
        let clients_from = fds.len();
        for c in &self.clients {
            let mut events = PollFlags::empty();
            if !stdin_full {
                events |= PollFlags::POLLIN;
            }
            if !c.out.is_empty() {
                events |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.sock.as_fd(), events));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        let ready: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);

        if !ready[0].is_empty() {
            self.on_signals();
        }
        // Outputs before anything else: they are what must never stall.
        let readable: Vec<usize> = (0..self.outputs.len())
            .filter(|n| !ready[2 + n].is_empty())
            .collect();
        let mut gone = Vec::new();
        for n in readable {
            if !self.read_output(n) {
                gone.push(n);
            }
        }
        for n in gone.into_iter().rev() {
            self.outputs.remove(n);
        }
        if self.stdin.is_some() && !ready[stdin_slot].is_empty() {
            self.flush_stdin();
        }
        if !ready[1].is_empty() {
            self.accept();
        }
        let client_ready: Vec<PollFlags> = ready[clients_from..].to_vec();
        for (n, flags) in client_ready.into_iter().enumerate() {
            if n >= self.clients.len() {
                break;
            }
            if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_client(n);
            }
            if flags.contains(PollFlags::POLLOUT) {
                let _ = flush_client(&mut self.clients[n]);
            }
        }
        self.drop_closed_clients();
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            if info.ssi_signo == Signal::SIGUSR1 as u32 {
                let _ = self.reopen_log();
            }
        }
        // Reap everything: orphans of the container are ours too.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(self.container) {
                        self.status = Some(status);
                    }
                }
            }
        }
    }

    /// One read; false when the output is finished (end of file, or EIO
    /// from a pty whose slave is closed).
    fn read_output(&mut self, n: usize) -> bool {
        let mut buf = [0u8; READ_CHUNK];
        let got = loop {
            match nix::unistd::read(self.outputs[n].fd.as_fd(), &mut buf) {
                Ok(got) => break got,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
        };
        if got == 0 {
            return false;
        }
        let stream = self.outputs[n].stream;
        let data = &buf[..got];
        // A full disk loses log lines but never blocks the container.
        let _ = self.log.write(stream, data, SystemTime::now());
        let kind = match stream {
            Stream::Stdout => proto::STDOUT,
            Stream::Stderr => proto::STDERR,
        };
        for c in self.clients.iter_mut().filter(|c| c.attached && !c.closing) {
            proto::encode_into(&mut c.out, kind, data);
            if c.out.len() > CLIENT_BUFFER_LIMIT {
                c.closing = true;
            }
        }
        true
    }

    fn accept(&mut self) {
        while let Ok((sock, _)) = self.listener.accept() {
            if sock.set_nonblocking(true).is_err() {
                continue;
            }
            self.clients.push(Client {
                sock,
                decoder: proto::Decoder::default(),
                out: Vec::new(),
                attached: false,
                sends_stdin: false,
                closing: false,
            });
        }
    }

    fn read_client(&mut self, n: usize) {
        let mut buf = [0u8; READ_CHUNK];
        let got = match self.clients[n].sock.read(&mut buf) {
            Ok(0) => {
                self.clients[n].closing = true;
                return;
            }
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(_) => {
                self.clients[n].closing = true;
                return;
            }
        };
        self.clients[n].decoder.push(&buf[..got]);
        loop {
            let frame = match self.clients[n].decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let c = &mut self.clients[n];
                    proto::encode_into(&mut c.out, proto::ERROR, e.to_string().as_bytes());
                    c.closing = true;
                    break;
                }
            };
            self.on_frame(n, frame.0, &frame.1);
        }
    }

    fn on_frame(&mut self, n: usize, kind: u8, payload: &[u8]) {
        match kind {
            proto::ATTACH => {
                let c = &mut self.clients[n];
                c.attached = true;
                c.sends_stdin = payload
                    .first()
                    .is_some_and(|f| f & proto::ATTACH_STDIN != 0);
            }
            proto::STDIN => {
                if let Some(s) = self.stdin.as_mut().filter(|s| !s.close_when_drained) {
                    s.pending.extend_from_slice(payload);
                    self.flush_stdin();
                }
            }
            proto::STDIN_CLOSE => {
                self.clients[n].sends_stdin = false;
                self.stdin_ended();
            }
            proto::RESIZE => {
                if let (Some(tty), [c0, c1, r0, r1]) = (&self.tty, payload) {
                    let cols = u16::from_be_bytes([*c0, *c1]);
                    let rows = u16::from_be_bytes([*r0, *r1]);
                    let _ = sys::set_winsize(tty.as_raw_fd(), cols, rows);
                }
            }
            proto::REOPEN_LOG => {
                let reply = match self.reopen_log() {
                    Ok(()) => proto::encode(proto::OK, b""),
                    Err(e) => proto::encode(proto::ERROR, e.as_bytes()),
                };
                self.clients[n].out.extend_from_slice(&reply);
                let _ = flush_client(&mut self.clients[n]);
            }
            other => {
                let c = &mut self.clients[n];
                let msg = format!("unknown frame kind {other}");
                proto::encode_into(&mut c.out, proto::ERROR, msg.as_bytes());
            }
        }
    }

    /// A stdin-sending client is done: with stdin_once the container's
    /// stdin closes (after what is buffered), as kubelet expects.
    fn stdin_ended(&mut self) {
        if !self.stdin_once || self.tty.is_some() {
            return;
        }
        if let Some(s) = self.stdin.as_mut() {
            s.close_when_drained = true;
        }
        self.flush_stdin();
    }

    fn flush_stdin(&mut self) {
        let Some(s) = self.stdin.as_mut() else { return };
        while !s.pending.is_empty() {
            match nix::unistd::write(s.fd.as_fd(), &s.pending) {
                Ok(n) => {
                    s.pending.drain(..n);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    // The container closed its stdin: nothing more to do.
                    s.pending.clear();
                    s.close_when_drained = true;
                }
            }
        }
        if s.close_when_drained {
            self.stdin = None;
        }
    }

    fn drop_closed_clients(&mut self) {
        let mut ended_stdin = false;
        self.clients.retain(|c| {
            let keep = !(c.closing && (c.out.is_empty() || c.out.len() > CLIENT_BUFFER_LIMIT));
            if !keep && c.sends_stdin {
                ended_stdin = true;
            }
            keep
        });
        if ended_stdin {
            self.stdin_ended();
        }
    }

    fn reopen_log(&mut self) -> Result<(), String> {
        let file = open_log(&self.log_path)?;
        let old = self.log.replace_output(file);
        drop(old);
        Ok(())
    }

    /// The container is gone: take its last output, record the exit, tell
    /// the clients, leave.
    fn finish(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(200);
        // What it wrote before exiting is in the pipes; descendants still
        // holding them do not keep the exit waiting.
        for n in (0..self.outputs.len()).rev() {
            while Instant::now() < deadline && self.read_output(n) {
                let mut probe = [PollFd::new(self.outputs[n].fd.as_fd(), PollFlags::POLLIN)];
                if poll(&mut probe, PollTimeout::ZERO).unwrap_or(0) == 0 {
                    break;
                }
            }
        }
        let now = SystemTime::now();
        let _ = self.log.flush_partial(now);
        let _ = self.log.get_ref().sync_data();
        let status = self.exit_status(now);
        if let Ok(json) = serde_json::to_vec_pretty(&status) {
            let _ = crate::store::write_atomic(&self.exit_file, &json, 0o644);
        }
        for c in self.clients.iter_mut().filter(|c| c.attached) {
            proto::encode_into(&mut c.out, proto::EXIT, &status.exit_code.to_be_bytes());
            c.closing = true;
        }
        let _ = std::fs::remove_file(&self.socket);
        // Give attached clients a moment to take their last frames.
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.clients.iter().any(|c| !c.out.is_empty()) && Instant::now() < deadline {
            let mut fds: Vec<PollFd<'_>> = self
                .clients
                .iter()
                .map(|c| PollFd::new(c.sock.as_fd(), PollFlags::POLLOUT))
                .collect();
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            drop(fds);
            for c in &mut self.clients {
                if flush_client(c).is_err() {
                    c.out.clear();
                }
            }
        }
    }

    fn exit_status(&self, finished: SystemTime) -> ExitStatus {
        let (exit_code, signal) = match self.status {
            Some(WaitStatus::Exited(_, code)) => (code, None),
            Some(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, Some(sig as i32)),
            _ => (-1, None),
        };
        let fired = self.oom.as_ref().is_some_and(|o| o.fired());
        ExitStatus::new(exit_code, signal, finished, oom_killed(exit_code, fired))
    }
}

/// Writes what the client can take now. Err when the client is gone.
fn flush_client(c: &mut Client) -> Result<(), ()> {
    while !c.out.is_empty() {
        match c.sock.write(&c.out) {
            Ok(0) => return Err(()),
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                c.out.clear();
                c.closing = true;
                return Err(());
            }
        }
    }
    if c.out.capacity() > READ_CHUNK * 4 {
        c.out.shrink_to(READ_CHUNK);
    }
    Ok(())
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), String> {
    sys::set_nonblocking(fd).map_err(|e| format!("fcntl: {e}"))
}

fn open_log(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("open the log {}: {e}", path.display()))
}

/// Whether an exit is reported as an OOM kill: the kernel's OOM killer
/// killed a process of the container's cgroup while it ran, and the
/// container did not end well. The killed process need not be the main
/// one: a `sh -c` in front of the program it killed exits 137 itself
/// (containerd and CRI-O report `OOMKilled` on the cgroup's OOM event too).
fn oom_killed(exit_code: i32, oom_kills_seen: bool) -> bool {
    oom_kills_seen && exit_code != 0
}

/// Counts the container's cgroup OOM kills, to tell an OOM kill from any
/// other SIGKILL (cgroup v2 `memory.events`, v1 `memory.oom_control`).
struct OomWatch {
    file: PathBuf,
    base: u64,
}

impl OomWatch {
    /// Watches the memory cgroup among `dirs` (the container's cgroup
    /// directories, one per hierarchy).
    fn new(dirs: &[PathBuf]) -> Option<Self> {
        dirs.iter()
            .flat_map(|d| ["memory.events", "memory.oom_control"].map(|f| (d, f)))
            .find_map(|(dir, name)| {
                let file = dir.join(name);
                let base = oom_kills(&file)?;
                // A hierarchy's root counts the whole host's kills: its
                // parent has no such file.
                let parent = dir.parent()?.join(name);
                parent.exists().then_some(Self { file, base })
            })
    }

    fn fired(&self) -> bool {
        oom_kills(&self.file).is_some_and(|n| n > self.base)
    }
}

fn oom_kills(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_kill_is_the_reason_of_an_exit_that_was_not_clean() {
        assert!(oom_killed(137, true));
        // The shell in front of the killed program exits with its status.
        assert!(oom_killed(1, true));
        assert!(!oom_killed(0, true), "it recovered and ended well");
        assert!(!oom_killed(137, false), "a SIGKILL of someone else's");
    }

    #[test]
    fn the_memory_cgroups_counter_is_watched_not_a_hierarchys_root() {
        let root = tempfile::tempdir().unwrap();
        let memory = root.path().join("memory");
        let own = memory.join("ketch").join("c1");
        std::fs::create_dir_all(&own).unwrap();
        let control = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        std::fs::write(memory.join("memory.oom_control"), control).unwrap();
        std::fs::write(memory.join("ketch").join("memory.oom_control"), control).unwrap();
        std::fs::write(own.join("memory.oom_control"), control).unwrap();
        let pids = root.path().join("pids").join("ketch").join("c1");
        std::fs::create_dir_all(&pids).unwrap();
        let watch = OomWatch::new(&[pids, own.clone()]).expect("the memory cgroup");
        assert_eq!(watch.file, own.join("memory.oom_control"));
        assert!(!watch.fired(), "kills before the start do not count");
        std::fs::write(own.join("memory.oom_control"), "oom_kill 3\n").unwrap();
        assert!(watch.fired());
        // A hierarchy's root counts the whole host's kills: not watched.
        assert!(OomWatch::new(&[memory]).is_none());
    }
}
