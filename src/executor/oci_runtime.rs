//! An external OCI runtime (runc, crun, youki, runsc) behind the
//! [`Executor`] trait: a pod's RuntimeClass handler names one in the
//! config (`[runtime_handlers.<name>]`), and its containers are started,
//! exec'd into, updated and deleted through the runtime's command line,
//! which all of these share with runc (`runc(8)`, `runc-create(8)`, …):
//!
//! ```text
//! monitor ─run→ <rt> --root R --log L --log-format json create --bundle B
//!                    --pid-file P [--console-socket S] <id>
//!           (the container's init waits for `start`; `create` exits and
//!            the init is reparented to the monitor, a child subreaper)
//!         ─run→ <rt> --root R start <id>
//! ```
//!
//! As conmon does for CRI-O, ketch's monitor stays the parent: it hands
//! `create` the container's stdio pipes (the runtime passes its own stdio
//! to the init when there is no terminal), or receives the pty master the
//! runtime sends to the console socket, writes the CRI log and the exit
//! status, and reaps the init. The bundle is the one the built-in executor
//! runs: its spec already names the cgroup (`linux.cgroupsPath`, which
//! ketch's cgroup manager has made and the runtime joins and applies
//! `linux.resources` to), the pod's namespaces by path and the rootfs by
//! absolute path.
//!
//! Exec goes through `<rt> exec --detach --process <json> --pid-file P
//! [--tty --console-socket S]` run by the `ketch-shim exec` helper, which
//! is a child subreaper too: it waits for the process and reports its exit
//! as it does for the built-in executor ([`exec_in_runtime`]).
//!
//! The runtime's error text is read from its `--log` file in JSON (what
//! runc, crun and youki write there), as CRI-O does: with no terminal its
//! stderr is the container's.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcStdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxResources, Process};
use serde::{Deserialize, Serialize};

use super::{Executor, ExecutorError, StartRequest, StartedProcess, Stdio};
use crate::sys;

/// How long a runtime command other than `create` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum OciRuntimeError {
    #[error("run the OCI runtime {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} {command}: {message}")]
    Failed {
        path: PathBuf,
        command: &'static str,
        message: String,
    },
    #[error("{path} {command} did not finish within {timeout:?}")]
    Timeout {
        path: PathBuf,
        command: &'static str,
        timeout: Duration,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// A configured handler's runtime: its binary and the `--root` where it
/// keeps its containers' state. Kept in each container's record, so a
/// container is deleted by the runtime that made it even after the config
/// changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRuntime {
    /// The handler's name (`runtime_handler` of the pod).
    pub handler: String,
    pub path: PathBuf,
    pub root: PathBuf,
}

/// What a handler can do, as `Status.runtime_handlers` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// The runtime knows the `rro` mount option (recursive read-only).
    pub recursive_read_only_mounts: bool,
    /// ketch does not give pods a user namespace through a runtime.
    pub user_namespaces: bool,
}

/// One line of a runtime's `--log-format json` log.
#[derive(Deserialize)]
struct LogLine {
    #[serde(default)]
    level: String,
    #[serde(default)]
    msg: String,
}

/// The runtime's last error in its JSON log (runc and crun write one
/// object per line, `{"level":"error","msg":…}`); `None` without one.
pub fn last_logged_error(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
        .filter(|l| matches!(l.level.as_str(), "error" | "fatal" | "panic"))
        .map(|l| l.msg.trim().to_owned())
        .rfind(|m| !m.is_empty())
}

/// The features in a runtime's `features` output (the OCI "features"
/// document, runtime-spec `features.md`); all false when it has no such
/// command or says nothing.
pub fn parse_features(json: &str) -> Features {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default, rename = "mountOptions")]
        mount_options: Vec<String>,
    }
    let doc: Option<Doc> = serde_json::from_str(json).ok();
    Features {
        recursive_read_only_mounts: doc.is_some_and(|d| d.mount_options.iter().any(|o| o == "rro")),
        user_namespaces: false,
    }
}

/// The arguments of `create`, after the global ones.
pub fn create_args(
    bundle: &Path,
    pid_file: &Path,
    console: Option<&Path>,
    id: &str,
) -> Vec<OsString> {
    let args: Vec<OsString> = vec![
        "create".into(),
        "--bundle".into(),
        bundle.into(),
        "--pid-file".into(),
        pid_file.into(),
    ];
    with_console_and_id(args, console, false, id)
}

/// `args`, then the console socket (with `--tty` when the command needs it
/// said: `exec`; `create` takes the terminal from the spec) and the ID.
fn with_console_and_id(
    mut args: Vec<OsString>,
    console: Option<&Path>,
    tty_flag: bool,
    id: &str,
) -> Vec<OsString> {
    if let Some(socket) = console {
        if tty_flag {
            args.push("--tty".into());
        }
        args.push("--console-socket".into());
        args.push(socket.into());
    }
    args.push(id.into());
    args
}

/// The arguments of a detached `exec`, after the global ones.
pub fn exec_args(
    process: &Path,
    pid_file: &Path,
    console: Option<&Path>,
    id: &str,
) -> Vec<OsString> {
    let args: Vec<OsString> = vec![
        "exec".into(),
        "--detach".into(),
        "--process".into(),
        process.into(),
        "--pid-file".into(),
        pid_file.into(),
    ];
    with_console_and_id(args, console, true, id)
}

impl OciRuntime {
    /// `<path> --root <root> [--log <log> --log-format json]`.
    fn command(&self, log: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg("--root").arg(&self.root);
        if let Some(log) = log {
            cmd.arg("--log").arg(log).arg("--log-format").arg("json");
        }
        cmd.stdin(ProcStdio::null());
        cmd
    }

    fn spawn_error(&self) -> impl FnOnce(std::io::Error) -> OciRuntimeError + '_ {
        move |source| OciRuntimeError::Spawn {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `args` to its end (at most [`COMMAND_TIMEOUT`]) with `input` on
    /// its stdin; its stderr's last line is the error when it fails.
    fn run(
        &self,
        command: &'static str,
        args: &[&std::ffi::OsStr],
        input: Option<&[u8]>,
    ) -> Result<(), OciRuntimeError> {
        let mut cmd = self.command(None);
        cmd.args(args)
            .stdout(ProcStdio::null())
            .stderr(ProcStdio::piped());
        if input.is_some() {
            cmd.stdin(ProcStdio::piped());
        }
        let mut child = cmd.spawn().map_err(self.spawn_error())?;
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            let _ = stdin.write_all(data);
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(OciRuntimeError::Timeout {
                        path: self.path.clone(),
                        command,
                        timeout: COMMAND_TIMEOUT,
                    });
                }
                Err(source) => {
                    return Err(OciRuntimeError::Io {
                        context: format!("wait for {} {command}", self.path.display()),
                        source,
                    });
                }
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            use std::io::Read;
            let _ = (&mut pipe).take(64 << 10).read_to_string(&mut stderr);
        }
        Err(OciRuntimeError::Failed {
            path: self.path.clone(),
            command,
            message: last_line(&stderr).unwrap_or_else(|| status.to_string()),
        })
    }

    /// `delete --force <id>`: the container's processes killed and its
    /// state (the runtime's `<root>/<id>` and the cgroups it made) gone. A
    /// container the runtime does not know is fine (never created, or
    /// deleted already).
    pub fn delete(&self, id: &str) -> Result<(), OciRuntimeError> {
        let result = self.run(
            "delete",
            &["delete".as_ref(), "--force".as_ref(), id.as_ref()],
            None,
        );
        let state = self.root.join(id);
        let result = match result {
            Err(OciRuntimeError::Failed { message, .. })
                if message.contains("does not exist") || message.contains("not exist") =>
            {
                Ok(())
            }
            other => other,
        };
        // A create cut short may leave a state dir without its state file,
        // which the runtime does not see as a container (runc removes it
        // itself; not every runtime does).
        if result.is_ok()
            && let Err(e) = std::fs::remove_dir_all(&state)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(OciRuntimeError::Io {
                context: format!("remove {}", state.display()),
                source: e,
            });
        }
        result
    }

    /// `update --resources - <id>`: new limits for a running container,
    /// as the runtime applies them (the `linux.resources` JSON on stdin).
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<(), OciRuntimeError> {
        let json = serde_json::to_vec(resources).map_err(|e| OciRuntimeError::Io {
            context: "encode the resources".into(),
            source: e.into(),
        })?;
        self.run(
            "update",
            &[
                "update".as_ref(),
                "--resources".as_ref(),
                "-".as_ref(),
                id.as_ref(),
            ],
            Some(&json),
        )
    }

    /// `kill <id> <signal>`: for a container whose process ketch cannot
    /// signal itself.
    pub fn kill(&self, id: &str, signal: i32) -> Result<(), OciRuntimeError> {
        let signal = signal.to_string();
        self.run(
            "kill",
            &["kill".as_ref(), id.as_ref(), signal.as_ref()],
            None,
        )
    }

    /// What `features` says (`runc features`, runc ≥ 1.1; crun ≥ 1.6).
    /// `None` when the binary cannot run (or hangs past the command
    /// timeout); all false when it has no such command.
    pub fn features(&self) -> Option<Features> {
        let mut child = Command::new(&self.path)
            .arg("features")
            .stdin(ProcStdio::null())
            .stdout(ProcStdio::piped())
            .stderr(ProcStdio::null())
            .spawn()
            .ok()?;
        // The document is a few KiB: it fits the pipe, so waiting first
        // cannot block the runtime.
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        };
        if !status.success() {
            return Some(Features::default());
        }
        let mut out = String::new();
        if let Some(mut pipe) = child.stdout.take() {
            use std::io::Read;
            let _ = (&mut pipe).take(1 << 20).read_to_string(&mut out);
        }
        Some(parse_features(&out))
    }

    /// Whether the binary is there to run: an executable file.
    pub fn check_binary(path: &Path) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
            Ok(_) => Err(format!("{} is not an executable file", path.display())),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

fn last_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_owned)
}

/// One container run by an external runtime: the runtime, the container's
/// ID there (ketch's), and where the runtime's per-start files go (the
/// console socket, which must fit a unix socket path).
pub struct OciExecutor<'a> {
    pub runtime: &'a OciRuntime,
    pub id: &'a str,
    pub console_socket: &'a Path,
}

impl OciExecutor<'_> {
    fn log_path(bundle: &Path) -> PathBuf {
        bundle.join("runtime.log")
    }

    /// The runtime's error from its log, else `fallback`.
    fn logged_error(bundle: &Path, fallback: String) -> ExecutorError {
        let log = std::fs::read_to_string(Self::log_path(bundle)).unwrap_or_default();
        ExecutorError::Start(last_logged_error(&log).unwrap_or(fallback))
    }

    /// A failed start leaves nothing: the init killed and reaped, the
    /// runtime's state deleted.
    fn abandon(&self, pid: Option<Pid>) {
        if let Some(pid) = pid {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Err(e) = self.runtime.delete(self.id) {
            tracing::warn!(container = %self.id, "{e}");
        }
        reap_orphans();
    }
}

/// Reaps whatever of the runtime's exited processes were reparented here.
fn reap_orphans() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

fn io_start(context: &str) -> impl FnOnce(std::io::Error) -> ExecutorError + '_ {
    move |e| ExecutorError::Start(format!("{context}: {e}"))
}

impl Executor for OciExecutor<'_> {
    fn start(&self, req: &StartRequest<'_>) -> Result<StartedProcess, ExecutorError> {
        let bundle = req.bundle;
        let pid_file = bundle.join("runtime.pid");
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(Self::log_path(bundle));
        let listener = match req.stdio {
            Stdio::Terminal => {
                let _ = std::fs::remove_file(self.console_socket);
                Some(
                    UnixListener::bind(self.console_socket)
                        .map_err(io_start("listen on the console socket"))?,
                )
            }
            Stdio::Fds(_) => None,
        };
        let mut cmd = self.runtime.command(Some(&Self::log_path(bundle)));
        cmd.args(create_args(
            bundle,
            &pid_file,
            listener.as_ref().map(|_| self.console_socket),
            self.id,
        ));
        match req.stdio {
            Stdio::Fds([i, o, e]) => {
                let own = |fd: std::os::fd::BorrowedFd<'_>| {
                    fd.try_clone_to_owned()
                        .map_err(io_start("dup the container's stdio"))
                };
                cmd.stdin(own(i)?).stdout(own(o)?).stderr(own(e)?);
            }
            Stdio::Terminal => {
                cmd.stdout(ProcStdio::null()).stderr(ProcStdio::null());
            }
        }
        let created = cmd.status();
        drop(cmd);
        let created = match created {
            Ok(status) => status,
            Err(e) => {
                let _ = std::fs::remove_file(self.console_socket);
                return Err(ExecutorError::Start(format!(
                    "run the OCI runtime {}: {e}",
                    self.runtime.path.display()
                )));
            }
        };
        let fail = |pid: Option<Pid>, e: ExecutorError| {
            let _ = std::fs::remove_file(self.console_socket);
            self.abandon(pid);
            Err(e)
        };
        if !created.success() {
            let e = Self::logged_error(
                bundle,
                format!("{} create: {created}", self.runtime.path.display()),
            );
            return fail(None, e);
        }
        let pid = match std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            Some(pid) if pid > 0 => Pid::from_raw(pid),
            _ => {
                let e = ExecutorError::Start(format!(
                    "{} create wrote no pid to {}",
                    self.runtime.path.display(),
                    pid_file.display()
                ));
                return fail(None, e);
            }
        };
        let console = match &listener {
            Some(listener) => match receive_console(listener) {
                Ok(master) => Some(master),
                Err(e) => return fail(Some(pid), e),
            },
            None => None,
        };
        drop(listener);
        let _ = std::fs::remove_file(self.console_socket);
        let mut start = self.runtime.command(Some(&Self::log_path(bundle)));
        start
            .arg("start")
            .arg(self.id)
            .stdout(ProcStdio::null())
            .stderr(ProcStdio::null());
        match start.status() {
            Ok(s) if s.success() => {}
            Ok(s) => {
                let e = Self::logged_error(
                    bundle,
                    format!("{} start: {s}", self.runtime.path.display()),
                );
                return fail(Some(pid), e);
            }
            Err(e) => {
                let e = ExecutorError::Start(format!(
                    "run the OCI runtime {}: {e}",
                    self.runtime.path.display()
                ));
                return fail(Some(pid), e);
            }
        }
        Ok(StartedProcess {
            pid,
            warnings: Vec::new(),
            console,
        })
    }
}

/// The pty master the runtime sent to the console socket (runc's
/// `--console-socket` protocol: one message with the fd, its name as data).
/// The runtime has exited, so the connection is queued or never comes.
fn receive_console(listener: &UnixListener) -> Result<OwnedFd, ExecutorError> {
    listener
        .set_nonblocking(true)
        .map_err(io_start("the console socket"))?;
    let (conn, _) = listener.accept().map_err(|e| {
        ExecutorError::Start(format!(
            "the runtime sent no terminal to the console socket: {e}"
        ))
    })?;
    conn.set_nonblocking(false)
        .map_err(io_start("the console socket"))?;
    let master = super::console::recv_master(conn.as_fd(), true)
        .map_err(io_start("receive the terminal's master"))?;
    // Blocking, as the built-in executor hands it over (the runtime may
    // have made it non-blocking, and the flag is the open file's).
    set_blocking(&master)
        .map_err(|e| ExecutorError::Start(format!("the terminal's master: {e}")))?;
    Ok(master)
}

fn set_blocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).map(drop)
}

/// What the exec helper needs to exec through a runtime: the container and
/// a directory for the per-exec files (the process JSON goes through a
/// pipe; the console socket and pid file live here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeExec {
    pub runtime: OciRuntime,
    pub id: String,
    pub scratch_dir: PathBuf,
}

/// The exec helper's side for a container of an external runtime: the
/// helper becomes a child subreaper, runs `<rt> exec --detach` with its
/// own stdio (or a console socket), and then waits for the process, which
/// is reparented to it when the runtime exits. `started` gets the pid once
/// the process runs (and, for a terminal exec, its pty master was sent on
/// `console`). The
/// process's exit code (128 + signal) is returned.
pub fn exec_in_runtime(
    target: &RuntimeExec,
    process: &Process,
    started: &mut dyn FnMut(Pid),
    console: Option<OwnedFd>,
) -> Result<i32, String> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("become a child subreaper: {e}"))?;
    let me = std::process::id();
    let pid_file = target.scratch_dir.join(format!("exec-{me}.pid"));
    let log = target.scratch_dir.join(format!("exec-{me}.log"));
    let socket = target.scratch_dir.join(format!("exec-{me}.sock"));
    let cleanup = || {
        for f in [&pid_file, &log, &socket] {
            let _ = std::fs::remove_file(f);
        }
    };
    let result = exec_and_wait(target, process, started, console, &pid_file, &log, &socket);
    cleanup();
    result
}

fn exec_and_wait(
    target: &RuntimeExec,
    process: &Process,
    started: &mut dyn FnMut(Pid),
    console: Option<OwnedFd>,
    pid_file: &Path,
    log: &Path,
    socket: &Path,
) -> Result<i32, String> {
    let json = serde_json::to_vec(process).map_err(|e| format!("encode the process: {e}"))?;
    // The process JSON travels in a pipe the runtime opens by its
    // /proc/self/fd path: no file to clean up.
    let (spec_r, spec_w) = nix::unistd::pipe().map_err(|e| format!("create a pipe: {e}"))?;
    let terminal = process.terminal() == Some(true);
    if json.len() >= 60 << 10 {
        return Err("the process spec is too large".into());
    }
    sys::write_all(spec_w.as_fd(), &json);
    drop(spec_w);
    let listener = if terminal {
        let _ = std::fs::remove_file(socket);
        Some(
            UnixListener::bind(socket)
                .map_err(|e| format!("listen on {}: {e}", socket.display()))?,
        )
    } else {
        None
    };
    let process_path = PathBuf::from(format!("/proc/self/fd/{}", spec_r.as_raw_fd()));
    let mut cmd = target.runtime.command(Some(log));
    cmd.args(exec_args(
        &process_path,
        pid_file,
        listener.as_ref().map(|_| socket),
        &target.id,
    ));
    if terminal {
        cmd.stdout(ProcStdio::null()).stderr(ProcStdio::null());
    } else {
        // The process inherits the runtime's stdio: ours, the caller's.
        cmd.stdin(ProcStdio::inherit());
    }
    let status = cmd
        .status()
        .map_err(|e| format!("run the OCI runtime {}: {e}", target.runtime.path.display()));
    drop(spec_r);
    let status = status?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        reap_orphans();
        return Err(last_logged_error(&text)
            .unwrap_or_else(|| format!("{} exec: {status}", target.runtime.path.display())));
    }
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
        .ok_or_else(|| format!("{} exec wrote no pid", target.runtime.path.display()))?;
    if let (Some(listener), Some(console)) = (&listener, &console) {
        let master = receive_console(listener).map_err(|e| e.to_string());
        let sent = master.and_then(|m| {
            super::console::send_master(console.as_fd(), m.as_fd()).map_err(|e| e.to_string())
        });
        if let Err(e) = sent {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = wait_for(pid);
            return Err(e);
        }
    }
    started(pid);
    Ok(wait_for(pid))
}

/// Waits for `pid` (a child now), reaping anything else reparented here on
/// the way; its exit code, 128 + signal for a signal death.
fn wait_for(pid: Pid) -> i32 {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return 128 + sig as i32,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => return -1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_error_of_a_json_log_is_the_message() {
        let log = concat!(
            "{\"level\":\"info\",\"msg\":\"starting\",\"time\":\"t\"}\n",
            "{\"level\":\"error\",\"msg\":\"first\",\"time\":\"t\"}\n",
            "not json\n",
            "{\"level\":\"error\",\"msg\":\"runc create failed: unable to start container process: exec: \\\"/nope\\\": stat /nope: no such file or directory\"}\n",
            "{\"level\":\"warning\",\"msg\":\"later\"}\n",
        );
        let e = last_logged_error(log).unwrap();
        assert!(e.contains("/nope") && e.contains("no such file"), "{e}");
        assert_eq!(
            last_logged_error("{\"level\":\"info\",\"msg\":\"x\"}"),
            None
        );
        assert_eq!(last_logged_error(""), None);
    }

    #[test]
    fn features_say_rro_only_when_the_runtime_lists_it() {
        let runc_115 = r#"{"ociVersionMin":"1.0.0","mountOptions":["bind","ro","rbind"]}"#;
        assert_eq!(parse_features(runc_115), Features::default());
        let newer = r#"{"mountOptions":["bind","rro","ro"]}"#;
        assert!(parse_features(newer).recursive_read_only_mounts);
        assert!(!parse_features(newer).user_namespaces);
        assert_eq!(
            parse_features("No help topic for 'features'"),
            Features::default()
        );
    }

    #[test]
    fn create_and_exec_take_runcs_command_line() {
        let args = create_args(Path::new("/b"), Path::new("/b/pid"), None, "c1");
        assert_eq!(
            args,
            ["create", "--bundle", "/b", "--pid-file", "/b/pid", "c1"]
        );
        let args = create_args(
            Path::new("/b"),
            Path::new("/p"),
            Some(Path::new("/s")),
            "c1",
        );
        assert_eq!(
            args,
            [
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/p",
                "--console-socket",
                "/s",
                "c1"
            ]
        );
        let args = exec_args(Path::new("/proc/self/fd/7"), Path::new("/p"), None, "c1");
        assert_eq!(
            args,
            [
                "exec",
                "--detach",
                "--process",
                "/proc/self/fd/7",
                "--pid-file",
                "/p",
                "c1"
            ]
        );
        let args = exec_args(
            Path::new("/j"),
            Path::new("/p"),
            Some(Path::new("/s")),
            "c1",
        );
        assert!(args.ends_with(&[
            "--tty".into(),
            "--console-socket".into(),
            "/s".into(),
            "c1".into()
        ]));
    }

    #[test]
    fn a_missing_binary_is_named() {
        let e = OciRuntime::check_binary(Path::new("/nonexistent/runc")).unwrap_err();
        assert!(e.contains("/nonexistent/runc"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = OciRuntime::check_binary(dir.path()).unwrap_err();
        assert!(e.contains("not an executable file"), "{e}");
        OciRuntime::check_binary(Path::new("/bin/sh")).unwrap();
    }

    #[test]
    fn deleting_an_unknown_container_is_fine_and_a_missing_binary_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let rt = OciRuntime {
            handler: "none".into(),
            path: "/nonexistent/runc".into(),
            root: dir.path().to_owned(),
        };
        let e = rt.delete("c1").unwrap_err().to_string();
        assert!(e.contains("/nonexistent/runc"), "{e}");
        if !crate::testing::root_or_skip("runc delete in a temp root") {
            return;
        }
        if !Path::new("/usr/sbin/runc").exists() {
            eprintln!("skipped: /usr/sbin/runc is not installed");
        } else {
            let rt = OciRuntime {
                path: "/usr/sbin/runc".into(),
                ..rt
            };
            std::fs::create_dir(dir.path().join("c2")).unwrap();
            rt.delete("c2").unwrap();
            assert!(!dir.path().join("c2").exists());
        }
    }
}
