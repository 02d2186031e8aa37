//! A `StreamBackend` over host processes: the test double for a container.
//! `exec` runs the command on the host (a pty when `tty`), `attach` echoes
//! stdin to stdout like a `cat` container, `port_forward` connects with
//! `connect_in_netns` to the namespace registered for the pod.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ketch::streaming::{
    AttachRequest, BackendError, ExecRequest, ForwardedConn, StreamBackend, StreamIo, TerminalSize,
    connect_in_netns,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

#[derive(Default)]
pub struct HostBackend {
    /// Pids of every process exec started.
    pub pids: Mutex<Vec<u32>>,
    /// Pod id -> network namespace (None: the host's).
    pub pods: Mutex<HashMap<String, Option<PathBuf>>>,
    /// Exec calls that returned (normally or cancelled).
    pub finished: Mutex<usize>,
}

impl HostBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn add_pod(&self, id: &str, netns: Option<PathBuf>) {
        self.pods.lock().unwrap().insert(id.to_string(), netns);
    }

    pub fn last_pid(&self) -> Option<u32> {
        self.pids.lock().unwrap().last().copied()
    }
}

fn failed(e: impl std::fmt::Display) -> BackendError {
    BackendError::Failed(e.to_string())
}

fn set_winsize(fd: i32, size: TerminalSize) {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own from a valid fd.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

impl HostBackend {
    async fn exec_inner(&self, req: &ExecRequest, mut io: StreamIo) -> Result<i32, BackendError> {
        let mut cmd = Command::new(&req.cmd[0]);
        cmd.args(&req.cmd[1..]).kill_on_drop(true);
        let mut master: Option<OwnedFd> = None;
        if req.tty {
            let pty = nix::pty::openpty(None, None).map_err(failed)?;
            let slave = pty.slave;
            cmd.stdin(Stdio::from(slave.try_clone().map_err(failed)?));
            cmd.stdout(Stdio::from(slave.try_clone().map_err(failed)?));
            cmd.stderr(Stdio::from(slave));
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            master = Some(pty.master);
        } else {
            cmd.process_group(0);
            cmd.stdin(if io.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            cmd.stdout(if io.stdout.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            cmd.stderr(if io.stderr.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        }
        let mut child = cmd.spawn().map_err(failed)?;
        drop(cmd); // closes our copies of the pty slave
        let pid = child.id().ok_or_else(|| failed("no pid"))?;
        self.pids.lock().unwrap().push(pid);

        let mut tasks = tokio::task::JoinSet::new();
        let mut outputs = tokio::task::JoinSet::new();
        if let Some(master) = master {
            let resize_fd = master.try_clone().map_err(failed)?;
            let writer = std::fs::File::from(master.try_clone().map_err(failed)?);
            let reader = std::fs::File::from(master);
            if let Some(mut resize) = io.resize.take() {
                tasks.spawn(async move {
                    while let Some(size) = resize.recv().await {
                        set_winsize(resize_fd.as_raw_fd(), size);
                    }
                });
            }
            if let Some(mut stdin) = io.stdin.take() {
                let mut w = tokio::fs::File::from_std(writer);
                tasks.spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stdin.read(&mut buf).await {
                        if n == 0 || w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let _ = w.flush().await;
                    }
                    // EOF on a terminal: ^D.
                    let _ = w.write_all(&[4]).await;
                    let _ = w.flush().await;
                });
            }
            if let Some(mut out) = io.stdout.take() {
                let mut r = tokio::fs::File::from_std(reader);
                outputs.spawn(async move {
                    let mut buf = [0u8; 4096];
                    // EIO once the process and its terminal are gone.
                    while let Ok(n) = r.read(&mut buf).await {
                        if n == 0 || out.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = out.shutdown().await;
                });
            }
        } else {
            if let (Some(mut src), Some(mut dst)) = (io.stdin.take(), child.stdin.take()) {
                tasks.spawn(async move {
                    let _ = tokio::io::copy(&mut src, &mut dst).await;
                    // Dropping dst closes the process's stdin.
                });
            }
            if let (Some(mut src), Some(mut dst)) = (child.stdout.take(), io.stdout.take()) {
                outputs.spawn(async move {
                    let _ = tokio::io::copy(&mut src, &mut dst).await;
                    let _ = dst.shutdown().await;
                });
            }
            if let (Some(mut src), Some(mut dst)) = (child.stderr.take(), io.stderr.take()) {
                outputs.spawn(async move {
                    let _ = tokio::io::copy(&mut src, &mut dst).await;
                    let _ = dst.shutdown().await;
                });
            }
        }
        let cancel = io.cancel.clone();
        let status = tokio::select! {
            s = child.wait() => s.map_err(failed)?,
            _ = cancel.cancelled() => {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                let _ = child.wait().await;
                return Err(failed("cancelled"));
            }
        };
        if req.tty {
            // The process is gone; what it wrote is in the pty already.
            tokio::select! {
                _ = async { while outputs.join_next().await.is_some() {} } => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            }
        } else {
            tokio::select! {
                _ = async { while outputs.join_next().await.is_some() {} } => {}
                _ = cancel.cancelled() => return Err(failed("cancelled")),
            }
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }
}

#[async_trait]
impl StreamBackend for HostBackend {
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, BackendError> {
        let r = self.exec_inner(req, io).await;
        *self.finished.lock().unwrap() += 1;
        r
    }

    async fn attach(&self, req: &AttachRequest, mut io: StreamIo) -> Result<(), BackendError> {
        if req.container_id == "missing" {
            return Err(BackendError::ContainerNotFound(req.container_id.clone()));
        }
        let (Some(mut stdin), Some(mut stdout)) = (io.stdin.take(), io.stdout.take()) else {
            return Ok(());
        };
        tokio::select! {
            _ = tokio::io::copy(&mut stdin, &mut stdout) => Ok(()),
            _ = io.cancel.cancelled() => Ok(()),
        }
    }

    async fn port_forward(&self, pod: &str, port: u16) -> Result<ForwardedConn, BackendError> {
        let netns = self
            .pods
            .lock()
            .unwrap()
            .get(pod)
            .cloned()
            .ok_or_else(|| BackendError::PodNotFound(pod.to_string()))?;
        let conn = connect_in_netns(netns.as_deref(), port)
            .await
            .map_err(|source| BackendError::Io {
                context: format!("connect to port {port}"),
                source,
            })?;
        Ok(Box::new(conn))
    }
}
