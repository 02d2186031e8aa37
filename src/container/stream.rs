//! The containers behind the streaming server: [`ContainerStreams`] is the
//! [`StreamBackend`] that CRI `Exec`, `Attach` and `PortForward` sessions
//! run on.
//!
//! - **exec** starts a new process in the running container through the
//!   executor's `ketch-shim exec` helper ([`exec::spawn`]). Without a terminal its
//!   stdin, stdout and stderr are pipes (only those the client asked for;
//!   the others are /dev/null); with one, the helper opens a pty in the
//!   container's own devpts and passes its master back (the slave, a
//!   `/dev/pts/N` that exists in the container, is the process's stdio and
//!   controlling terminal), and the client's resize events size it. A size
//!   the client sends first is set before the process starts: the session
//!   waits up to [`FIRST_SIZE_WAIT`] for it, as clients send it at once. The daemon's ends are non-blocking and pumped
//!   by the async runtime. The call returns once the process has exited and
//!   what it wrote before exiting has been forwarded: a daemonised
//!   grandchild that keeps the pipes open does not hold the session (as for
//!   ExecSync). When the client goes away (or the daemon stops) the
//!   process group is killed and the process reaped; a guard does the same
//!   if the call is dropped mid-way.
//! - **attach** is a client of the container's monitor socket
//!   (`proto/monitor.md`): STDOUT/STDERR frames go to the client, the
//!   client's stdin becomes STDIN frames (its end a STDIN_CLOSE), resize
//!   events become RESIZE frames. It ends with the container (the EXIT
//!   frame) or when the client goes away: closing the socket detaches and
//!   the container runs on.
//! - **port-forward** connects to the port on the loopback of the pod's
//!   network namespace (the host's for a host-network pod) with
//!   [`connect_in_netns`].
//!
//! Pods are found through [`PodNetworks`], which the runtime implements, so
//! this module needs nothing of the sandbox module.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::pipe::{Receiver, Sender};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::state::State;
use super::{ContainerError, ContainerManager, ContainerRecord};
use crate::executor::exec::{self, ChildStdio, ExecError, ExecTarget};
use crate::monitor::proto;
use crate::store::StoreError;
use crate::streaming::{
    AttachRequest, BackendError, ExecRequest, ForwardedConn, InputStream, OutputStream,
    StreamBackend, StreamIo, TerminalSize, connect_in_netns,
};
use crate::sys;

/// Bytes moved per read.
const CHUNK: usize = 32 * 1024;
/// With a terminal, output the process wrote just before exiting may still
/// be on its way through the pty; it is read until the terminal hangs up,
/// or until no byte came for this long.
const TTY_QUIET: Duration = Duration::from_millis(250);
/// ... and for this long at most (a background process may hold the
/// terminal open for ever).
const TTY_DRAIN_MAX: Duration = Duration::from_secs(2);
/// How long a terminal exec waits for the client's first size before it
/// starts the process without one. kubectl and crictl send the size of
/// their terminal as soon as the streams are up; a program that reads it
/// at start (`stty size`, a shell's `$COLUMNS`, `top`) then sees the right
/// one.
const FIRST_SIZE_WAIT: Duration = Duration::from_millis(250);
/// The terminal's end-of-file character (VEOF, ^D): what a client's end of
/// stdin becomes on a terminal, as a raw client terminal would send it.
const VEOF: u8 = 4;

/// The network a ready pod's ports are reached in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetwork {
    /// A host-network pod: the node's own loopback.
    Host,
    /// The pod's pinned network namespace.
    Namespace(PathBuf),
}

/// How port forwarding finds a pod; the runtime implements it over its pod
/// store.
pub trait PodNetworks: Send + Sync + 'static {
    /// The network of the ready pod `id` (or a unique ID prefix); `None`
    /// when there is no such pod or it is not ready.
    fn pod_network(&self, id: &str) -> Option<PodNetwork>;
}

/// Exec, attach and port forwarding on real containers.
pub struct ContainerStreams {
    containers: ContainerManager,
    pods: Arc<dyn PodNetworks>,
    /// Cancelled by [`ContainerStreams::shutdown`]: every session ends.
    stop: CancellationToken,
    sessions: TaskTracker,
}

/// A session ends when its client goes away or the daemon stops.
#[derive(Clone)]
struct Cancel {
    client: CancellationToken,
    stop: CancellationToken,
}

impl Cancel {
    fn is_cancelled(&self) -> bool {
        self.client.is_cancelled() || self.stop.is_cancelled()
    }

    async fn cancelled(&self) {
        tokio::select! {
            _ = self.client.cancelled() => {}
            _ = self.stop.cancelled() => {}
        }
    }
}

fn failed(context: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed(format!("{context}: {e}"))
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BackendError {
    let context = context.into();
    move |source| BackendError::Io { context, source }
}

impl ContainerStreams {
    pub fn new(containers: ContainerManager, pods: Arc<dyn PodNetworks>) -> Self {
        Self {
            containers,
            pods,
            stop: CancellationToken::new(),
            sessions: TaskTracker::new(),
        }
    }

    /// Ends every session (exec'd processes are killed and reaped, attach
    /// clients detached) and waits up to `grace` for them; new sessions
    /// are refused from here on.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = self.sessions.len(),
                "streaming sessions still running {grace:?} after shutdown"
            );
        }
    }

    fn cancel(&self, io: &StreamIo) -> Cancel {
        Cancel {
            client: io.cancel.clone(),
            stop: self.stop.clone(),
        }
    }

    /// The record of a running container, with its first process.
    fn running(&self, id: &str) -> Result<(ContainerRecord, ExecTarget), BackendError> {
        let record = self.containers.status(id).map_err(|e| match e {
            ContainerError::Store(StoreError::NotFound { .. }) => {
                BackendError::ContainerNotFound(id.to_owned())
            }
            other => failed(&format!("container {id}"), other),
        })?;
        match (record.state, &record.started) {
            (State::Running, Some(started)) => {
                let target = ExecTarget {
                    pid: started.container_pid,
                    start_time: started.container_start_time,
                };
                Ok((record, target))
            }
            _ => Err(BackendError::ContainerNotRunning(record.id)),
        }
    }

    async fn exec_session(&self, req: &ExecRequest, mut io: StreamIo) -> Result<i32, BackendError> {
        let cancel = self.cancel(&io);
        if cancel.is_cancelled() {
            return Err(BackendError::Failed("the runtime is shutting down".into()));
        }
        let (record, target) = self.running(&req.container_id)?;
        let mut process = self
            .containers
            .exec_process(&record, req.cmd.clone(), req.tty)
            .map_err(|e| failed(&format!("exec in container {}", record.id), e))?;
        if req.tty
            && let Some(size) = first_size(&mut io.resize).await
        {
            process.process.set_console_size(console_size(size));
        }
        let spawner = Spawner {
            exe: self.containers.exe().to_owned(),
            target,
            process,
            container: record.id.clone(),
        };
        if req.tty {
            exec_tty(spawner, io, cancel).await
        } else {
            exec_pipes(spawner, io, cancel).await
        }
    }

    async fn attach_session(
        &self,
        req: &AttachRequest,
        mut io: StreamIo,
    ) -> Result<(), BackendError> {
        let cancel = self.cancel(&io);
        let (record, _) = self.running(&req.container_id)?;
        let socket = self
            .containers
            .attach_socket(&record.id)
            .map_err(|e| failed(&format!("attach to container {}", record.id), e))?;
        let stream = match UnixStream::connect(&socket).await {
            Ok(s) => s,
            // The monitor removes its socket when the container exits.
            Err(_) if self.running(&record.id).is_err() => {
                return Err(BackendError::ContainerNotRunning(record.id));
            }
            Err(e) => {
                return Err(io_err(format!(
                    "connect to the monitor of container {} at {}",
                    record.id,
                    socket.display()
                ))(e));
            }
        };
        let sends_stdin = req.stdin && io.stdin.is_some();
        let outcome = tokio::select! {
            r = attach_pump(stream, sends_stdin, &mut io) => r,
            // Detach: dropping the connection leaves the container running.
            _ = cancel.cancelled() => return Ok(()),
        };
        match outcome {
            Ok(AttachEnd::Exited) => Ok(()),
            Ok(AttachEnd::Closed) if self.running(&record.id).is_err() => Ok(()),
            Ok(AttachEnd::Closed) => Err(BackendError::Failed(format!(
                "the monitor of container {} closed the attach connection (a client that \
                 does not keep up with the output is dropped)",
                record.id
            ))),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl StreamBackend for ContainerStreams {
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, BackendError> {
        let _session = self.sessions.token();
        let result = self.exec_session(req, io).await;
        if let Err(e) = &result {
            tracing::debug!(container = %req.container_id, "exec session ended: {e}");
        }
        result
    }

    async fn attach(&self, req: &AttachRequest, io: StreamIo) -> Result<(), BackendError> {
        let _session = self.sessions.token();
        self.attach_session(req, io).await
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<ForwardedConn, BackendError> {
        let network = self
            .pods
            .pod_network(pod_sandbox_id)
            .ok_or_else(|| BackendError::PodNotFound(pod_sandbox_id.to_owned()))?;
        let netns = match &network {
            PodNetwork::Host => None,
            PodNetwork::Namespace(path) => Some(path.as_path()),
        };
        let conn = connect_in_netns(netns, port).await.map_err(io_err(format!(
            "connect to port {port} in pod sandbox {pod_sandbox_id}"
        )))?;
        Ok(Box::new(conn))
    }
}

// ---- exec ----------------------------------------------------------------

/// Everything needed to start the exec'd process.
struct Spawner {
    exe: PathBuf,
    target: ExecTarget,
    process: exec::ExecProcess,
    container: String,
}

/// The client's first terminal size, if it comes within
/// [`FIRST_SIZE_WAIT`]; a closed channel is dropped.
async fn first_size(resize: &mut Option<mpsc::Receiver<TerminalSize>>) -> Option<TerminalSize> {
    let rx = resize.as_mut()?;
    match tokio::time::timeout(FIRST_SIZE_WAIT, rx.recv()).await {
        Ok(Some(size)) => Some(size),
        Ok(None) => {
            *resize = None;
            None
        }
        Err(_) => None,
    }
}

fn console_size(size: TerminalSize) -> Option<oci_spec::runtime::Box> {
    oci_spec::runtime::BoxBuilder::default()
        .width(u64::from(size.width))
        .height(u64::from(size.height))
        .build()
        .ok()
}

/// A started process: the blocking wait for its exit runs on its own
/// thread; the guard kills the process group unless the wait is over.
struct Running {
    pid: Pid,
    wait: JoinHandle<Result<i32, ExecError>>,
    guard: KillGuard,
}

/// Kills the process group when dropped before the process was reaped.
struct KillGuard {
    pid: Pid,
    reaped: Arc<AtomicBool>,
}

impl KillGuard {
    fn kill(&self) {
        if !self.reaped.load(Ordering::SeqCst) {
            let _ = killpg(self.pid, Signal::SIGKILL);
        }
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Spawner {
    /// Starts the process with the given stdio (the child's ends, closed
    /// here once it holds them).
    async fn start(
        self,
        stdio: [ChildStdio; 3],
        cancel: &Cancel,
    ) -> Result<(Running, Option<OwnedFd>), BackendError> {
        let cancel = cancel.clone();
        let container = self.container.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let [stdin, stdout, stderr] = stdio;
            let mut handle =
                exec::spawn(&self.exe, self.target, &self.process, stdin, stdout, stderr)?;
            if cancel.is_cancelled() {
                // The session ended while the process started: the caller
                // may be gone already, so end it here.
                handle.kill_group();
                let _ = handle.wait();
                return Err(ExecError::Start(
                    "the session ended during the start".into(),
                ));
            }
            let console = handle.take_console();
            Ok((handle, console))
        })
        .await
        .map_err(|e| failed("exec start task", e))?
        .map_err(|e| failed(&format!("exec in container {container}"), e))?;
        let (handle, console) = handle;
        let pid = handle.pid();
        let reaped = Arc::new(AtomicBool::new(false));
        let done = reaped.clone();
        let wait = tokio::task::spawn_blocking(move || {
            let code = handle.wait();
            done.store(true, Ordering::SeqCst);
            code
        });
        Ok((
            Running {
                pid,
                wait,
                guard: KillGuard { pid, reaped },
            },
            console,
        ))
    }
}

/// A pipe whose `ours` end is for the daemon; both ends close on exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), BackendError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| io_err("create a pipe")(e.into()))
}

/// Sets `O_NONBLOCK`, as the runtime's pipe types need.
fn set_nonblocking(fd: &OwnedFd) -> Result<(), BackendError> {
    sys::set_nonblocking(fd.as_fd()).map_err(|e| io_err("fcntl O_NONBLOCK")(e.into()))
}

/// The daemon's read end of an output pipe, driven by the runtime.
fn receiver(fd: OwnedFd) -> Result<Receiver, BackendError> {
    Receiver::from_owned_fd(fd).map_err(io_err("register a pipe with the runtime"))
}

/// The pty master as a reader and a writer. The runtime's pipe types poll
/// any descriptor epoll supports, a pty master included; the `_unchecked`
/// constructors skip only their check that it is a FIFO.
fn terminal(master: OwnedFd) -> Result<(Receiver, Sender), BackendError> {
    set_nonblocking(&master)?;
    let writer = master
        .try_clone()
        .map_err(io_err("duplicate the pty master"))?;
    let register = io_err("register the pty master with the runtime");
    let rx = Receiver::from_owned_fd_unchecked(master).map_err(register)?;
    let register = io_err("register the pty master with the runtime");
    let tx = Sender::from_owned_fd_unchecked(writer).map_err(register)?;
    Ok((rx, tx))
}

#[cfg(test)]
/// A new pty, both ends close-on-exec from the start so no process the
/// daemon spawns meanwhile inherits them (a stray holder of the slave would
/// keep the terminal from hanging up).
fn open_pty() -> Result<(OwnedFd, OwnedFd), BackendError> {
    let err = |what: &'static str| move |e: Errno| io_err(what)(e.into());
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(err("open a pty"))?;
    nix::pty::grantpt(&master).map_err(err("grant the pty"))?;
    nix::pty::unlockpt(&master).map_err(err("unlock the pty"))?;
    let name = nix::pty::ptsname_r(&master).map_err(err("name the pty"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(err("open the pty slave"))?;
    Ok((master.into(), slave))
}

/// One read; a pty's EIO (its slave side is closed) is an end of file.
async fn read_output(rx: &mut Receiver, buf: &mut [u8]) -> io::Result<usize> {
    match rx.read(buf).await {
        Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
        other => other,
    }
}

/// Writes to the client while it takes output; a client that stopped
/// taking it is skipped from then on (the process must not block).
async fn forward(out: &mut Option<OutputStream>, data: &[u8]) {
    if let Some(w) = out
        && w.write_all(data).await.is_err()
    {
        *out = None;
    }
}

/// How the output of an exited process is finished.
#[derive(Clone, Copy)]
enum Drain {
    /// A pipe holds all the process wrote: read until it is empty.
    Pipe,
    /// A pty may still be moving it: read until hang-up or a quiet spell.
    Terminal,
}

/// Copies a process's output to the client until the end of file, or,
/// once the process exited, until what it wrote before is taken.
async fn pump_output(
    rx: &mut Receiver,
    out: Option<OutputStream>,
    mut exited: watch::Receiver<bool>,
    drain: Drain,
) {
    let mut out = out;
    let mut buf = vec![0u8; CHUNK];
    let mut ended = false;
    while !ended {
        let read = tokio::select! {
            biased;
            r = read_output(rx, &mut buf) => r,
            _ = exited.wait_for(|e| *e) => break,
        };
        match read {
            Ok(0) | Err(_) => ended = true,
            Ok(n) => forward(&mut out, &buf[..n]).await,
        }
    }
    if !ended {
        match drain {
            Drain::Pipe => loop {
                // Straight to the descriptor: the runtime's readiness may
                // not have caught up with the last writes yet.
                match nix::unistd::read(rx.as_fd(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => forward(&mut out, &buf[..n]).await,
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
            },
            Drain::Terminal => {
                let deadline = tokio::time::Instant::now() + TTY_DRAIN_MAX;
                loop {
                    let wait = deadline
                        .saturating_duration_since(tokio::time::Instant::now())
                        .min(TTY_QUIET);
                    match tokio::time::timeout(wait, read_output(rx, &mut buf)).await {
                        Ok(Ok(n)) if n > 0 => forward(&mut out, &buf[..n]).await,
                        _ => break,
                    }
                }
            }
        }
    }
    if let Some(mut w) = out {
        let _ = w.shutdown().await;
    }
}

/// The next chunk of the client's stdin; never resolves without one.
async fn read_input(input: &mut Option<InputStream>, buf: &mut [u8]) -> io::Result<usize> {
    match input {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The next resize event; never resolves without a channel.
async fn next_resize(resize: &mut Option<mpsc::Receiver<TerminalSize>>) -> Option<TerminalSize> {
    match resize {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Copies the client's stdin into a pipe and closes the pipe at its end
/// (or when the process stops reading). Never resolves.
async fn pump_stdin_pipe(mut input: Option<InputStream>, pipe: Option<Sender>) {
    if let Some(mut pipe) = pipe {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read_input(&mut input, &mut buf).await {
                Ok(n) if n > 0 => {
                    if pipe.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
        // Dropping the daemon's end: the process reads end of file.
        drop(pipe);
    }
    std::future::pending().await
}

/// Copies the client's stdin to the terminal (its end becomes ^D) and
/// applies resize events. Never resolves.
async fn pump_terminal_input(
    mut master: Sender,
    mut input: Option<InputStream>,
    mut resize: Option<mpsc::Receiver<TerminalSize>>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        tokio::select! {
            r = read_input(&mut input, &mut buf) => match r {
                Ok(n) if n > 0 => {
                    if master.write_all(&buf[..n]).await.is_err() {
                        input = None;
                    }
                }
                _ => {
                    let _ = master.write_all(&[VEOF]).await;
                    input = None;
                }
            },
            size = next_resize(&mut resize) => match size {
                Some(size) => {
                    if let Err(e) = sys::set_winsize(master.as_raw_fd(), size.width, size.height) {
                        tracing::debug!("cannot resize an exec terminal: {e}");
                    }
                }
                None => resize = None,
            },
        }
    }
}

/// Waits for the process's exit and the end of its output, feeding input
/// meanwhile; on cancellation kills the process group and reaps.
async fn finish(
    running: Running,
    exited: watch::Sender<bool>,
    outputs: impl Future<Output = ()>,
    input: impl Future<Output = ()>,
    cancel: &Cancel,
) -> Result<i32, BackendError> {
    let Running {
        pid,
        mut wait,
        guard,
    } = running;
    let outcome = {
        // The output is pumped all along (a process blocked on a full pipe
        // would never exit); after the exit the pumps take what is left.
        let exit = async {
            let code = (&mut wait).await;
            let _ = exited.send(true);
            code
        };
        let done = async { tokio::join!(exit, outputs).0 };
        tokio::select! {
            code = done => Some(code),
            _ = input => None,
            _ = cancel.cancelled() => None,
        }
    };
    match outcome {
        Some(code) => code
            .map_err(|e| failed("exec wait task", e))?
            .map_err(|e| failed("exec", e)),
        None => {
            tracing::debug!(%pid, "exec session cancelled: killing the process group");
            guard.kill();
            let _ = wait.await;
            Err(BackendError::Failed("exec cancelled".into()))
        }
    }
}

async fn exec_pipes(
    spawner: Spawner,
    mut io: StreamIo,
    cancel: Cancel,
) -> Result<i32, BackendError> {
    // (child's end, daemon's end) per stream the client asked for.
    let input = io.stdin.is_some().then(pipe).transpose()?;
    let output = io.stdout.is_some().then(pipe).transpose()?;
    let errors = io.stderr.is_some().then(pipe).transpose()?;
    let (child_in, our_in) = match input {
        Some((r, w)) => (ChildStdio::Fd(r), Some(w)),
        None => (ChildStdio::Null, None),
    };
    let (child_out, our_out) = match output {
        Some((r, w)) => (ChildStdio::Fd(w), Some(r)),
        None => (ChildStdio::Null, None),
    };
    let (child_err, our_err) = match errors {
        Some((r, w)) => (ChildStdio::Fd(w), Some(r)),
        None => (ChildStdio::Null, None),
    };
    let (running, _) = spawner
        .start([child_in, child_out, child_err], &cancel)
        .await?;
    let our_in = our_in
        .map(|fd| Sender::from_owned_fd(fd).map_err(io_err("register a pipe with the runtime")))
        .transpose()?;
    let mut our_out = our_out.map(receiver).transpose()?;
    let mut our_err = our_err.map(receiver).transpose()?;

    let (exited_tx, exited_rx) = watch::channel(false);
    let (stdout, stderr) = (io.stdout.take(), io.stderr.take());
    let outputs = async {
        let out = async {
            if let Some(rx) = &mut our_out {
                pump_output(rx, stdout, exited_rx.clone(), Drain::Pipe).await;
            }
        };
        let err = async {
            if let Some(rx) = &mut our_err {
                pump_output(rx, stderr, exited_rx.clone(), Drain::Pipe).await;
            }
        };
        tokio::join!(out, err);
    };
    let input = pump_stdin_pipe(io.stdin.take(), our_in);
    finish(running, exited_tx, outputs, input, &cancel).await
}

async fn exec_tty(spawner: Spawner, mut io: StreamIo, cancel: Cancel) -> Result<i32, BackendError> {
    // The terminal is made in the container; the helper's own stdio is
    // /dev/null.
    let stdio = [ChildStdio::Null, ChildStdio::Null, ChildStdio::Null];
    let (running, master) = spawner.start(stdio, &cancel).await?;
    let master = master.ok_or_else(|| failed("exec", "the exec helper passed no terminal"))?;
    let (mut output, input) = terminal(master)?;
    let (exited_tx, exited_rx) = watch::channel(false);
    let stdout = io.stdout.take();
    let outputs = pump_output(&mut output, stdout, exited_rx, Drain::Terminal);
    let input = pump_terminal_input(input, io.stdin.take(), io.resize.take());
    finish(running, exited_tx, outputs, input, &cancel).await
}

// ---- attach --------------------------------------------------------------

enum AttachEnd {
    /// The monitor sent EXIT: the container is gone.
    Exited,
    /// The monitor closed the connection without EXIT.
    Closed,
}

async fn send_frame(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    kind: u8,
    payload: &[u8],
) -> Result<(), BackendError> {
    w.write_all(&proto::encode(kind, payload))
        .await
        .map_err(io_err("write to the container's monitor"))
}

/// Relays between the client and the monitor until the container exits
/// or the monitor closes the connection.
async fn attach_pump(
    stream: UnixStream,
    sends_stdin: bool,
    io: &mut StreamIo,
) -> Result<AttachEnd, BackendError> {
    let (mut rd, mut wr) = stream.into_split();
    let flags = if sends_stdin { proto::ATTACH_STDIN } else { 0 };
    send_frame(&mut wr, proto::ATTACH, &[flags]).await?;
    let mut stdin = if sends_stdin { io.stdin.take() } else { None };
    let mut resize = io.resize.take();
    let mut stdout = io.stdout.take();
    let mut stderr = io.stderr.take();
    let mut decoder = proto::Decoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut in_buf = vec![0u8; CHUNK];
    let end = loop {
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = r.map_err(io_err("read from the container's monitor"))?;
                if n == 0 {
                    break AttachEnd::Closed;
                }
                decoder.push(&buf[..n]);
                let mut exited = false;
                while let Some((kind, payload)) = decoder
                    .next_frame()
                    .map_err(|e| failed("a frame from the container's monitor", e))?
                {
                    match kind {
                        proto::STDOUT => forward(&mut stdout, &payload).await,
                        proto::STDERR => forward(&mut stderr, &payload).await,
                        proto::EXIT => exited = true,
                        proto::ERROR => {
                            return Err(BackendError::Failed(format!(
                                "the container's monitor refused the attach: {}",
                                String::from_utf8_lossy(&payload)
                            )));
                        }
                        _ => {}
                    }
                }
                if exited {
                    break AttachEnd::Exited;
                }
            }
            r = read_input(&mut stdin, &mut in_buf) => match r {
                Ok(n) if n > 0 => send_frame(&mut wr, proto::STDIN, &in_buf[..n]).await?,
                _ => {
                    stdin = None;
                    send_frame(&mut wr, proto::STDIN_CLOSE, &[]).await?;
                }
            },
            size = next_resize(&mut resize) => match size {
                Some(size) => {
                    let payload = proto::resize_payload(size.width, size.height);
                    send_frame(&mut wr, proto::RESIZE, &payload).await?;
                }
                None => resize = None,
            },
        }
    };
    for w in [stdout, stderr].into_iter().flatten() {
        let mut w = w;
        let _ = w.shutdown().await;
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pipe_output_is_drained_after_exit_without_waiting_for_eof() {
        let (r, w) = pipe().unwrap();
        let mut r = receiver(r).unwrap();
        // A holder of the write end (a daemonised grandchild) stays; the
        // process wrote before it exited.
        nix::unistd::write(&w, b"before exit").unwrap();
        let (tx, rx) = watch::channel(true);
        let (client, mut ours) = tokio::io::duplex(1024);
        let out: OutputStream = Box::new(client);
        tokio::time::timeout(
            Duration::from_secs(5),
            pump_output(&mut r, Some(out), rx, Drain::Pipe),
        )
        .await
        .expect("pump returns though the pipe stays open");
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"before exit");
        drop((w, tx));
    }

    #[tokio::test]
    async fn terminal_output_ends_at_hang_up() {
        let (master, slave) = open_pty().unwrap();
        let (mut master, _writer) = terminal(master).unwrap();
        nix::unistd::write(&slave, b"last words\n").unwrap();
        drop(slave);
        let (_tx, rx) = watch::channel(false);
        let (client, mut ours) = tokio::io::duplex(1024);
        let started = std::time::Instant::now();
        pump_output(&mut master, Some(Box::new(client)), rx, Drain::Terminal).await;
        assert!(started.elapsed() < TTY_DRAIN_MAX);
        let mut got = Vec::new();
        ours.read_to_end(&mut got).await.unwrap();
        // The line discipline turns \n into \r\n.
        assert_eq!(got, b"last words\r\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_does_not_stop_the_pump() {
        let (r, w) = pipe().unwrap();
        let mut r = receiver(r).unwrap();
        let (tx, rx) = watch::channel(false);
        let (client, ours) = tokio::io::duplex(16);
        drop(ours);
        let pump = tokio::spawn(async move {
            pump_output(&mut r, Some(Box::new(client)), rx, Drain::Pipe).await;
        });
        // More than a pipe holds: written while the pump reads.
        let writer = tokio::task::spawn_blocking(move || {
            for _ in 0..100 {
                nix::unistd::write(&w, &[b'x'; 1024]).unwrap();
            }
        });
        // A pump that stopped reading would leave the writer blocked on a
        // full pipe for ever: fail instead. Aborting the pump drops the
        // read end, which ends the blocked write (EPIPE), so the runtime
        // can shut down.
        match tokio::time::timeout(Duration::from_secs(5), writer).await {
            Ok(written) => written.unwrap(),
            Err(_) => {
                pump.abort();
                panic!("the pump stopped reading: 100 KiB not taken in 5 s");
            }
        }
        tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .expect("pump ends at end of file")
            .unwrap();
        drop(tx);
    }
}
