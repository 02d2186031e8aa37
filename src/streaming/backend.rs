//! The seam between the streaming server and the containers: the server
//! speaks the protocols, a [`StreamBackend`] runs processes and opens
//! connections. The container module implements it over its executor and
//! the per-container monitor; tests implement it over host processes.

use std::io;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::request::{AttachRequest, ExecRequest};

/// The client's end of a process's stdin: EOF when the client closes it.
pub type InputStream = Box<dyn AsyncRead + Send + Unpin>;
/// The client's end of a process's stdout or stderr.
pub type OutputStream = Box<dyn AsyncWrite + Send + Unpin>;

/// A byte stream both ways (a forwarded TCP connection).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A connection opened for port forwarding.
pub type ForwardedConn = Box<dyn Duplex>;

/// A terminal size as clients send it: `{"Width":80,"Height":24}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width", alias = "width")]
    pub width: u16,
    #[serde(rename = "Height", alias = "height")]
    pub height: u16,
}

/// The client's side of an exec or attach session. Only the streams the
/// request asked for are `Some`; `resize` is `Some` when it asked for a TTY.
pub struct StreamIo {
    pub stdin: Option<InputStream>,
    pub stdout: Option<OutputStream>,
    pub stderr: Option<OutputStream>,
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    /// Cancelled when the client is gone (or the server shuts down): stop,
    /// release everything, and return.
    pub cancel: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("container {0} is not running")]
    ContainerNotRunning(String),
    #[error("pod sandbox {0} not found")]
    PodNotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

/// What the streaming server needs from the runtime.
///
/// Cancellation: the server cancels `io.cancel` when the client vanishes and
/// then waits a few seconds for the call to return; after that it drops the
/// future. Implementations must leave nothing behind either way: an exec
/// kills its process (and the process group) and reaps it; an attach detaches
/// from the monitor and leaves the container running.
#[async_trait]
pub trait StreamBackend: Send + Sync + 'static {
    /// Runs `req.cmd` in the running container `req.container_id`, copying
    /// `io.stdin` to the process (closing the process's stdin at EOF) and its
    /// output to `io.stdout`/`io.stderr`; with a TTY the terminal is the
    /// process's stdin/stdout and `io.resize` sizes it. Returns the exit code
    /// (128 + signal number for a process killed by a signal) once the
    /// process has exited and all its output has been written.
    async fn exec(&self, req: &ExecRequest, io: StreamIo) -> Result<i32, BackendError>;

    /// Connects `io` to the running container's stdio through its monitor
    /// until the container's output ends or `io.cancel` fires.
    async fn attach(&self, req: &AttachRequest, io: StreamIo) -> Result<(), BackendError>;

    /// Opens a TCP connection to `port` on the loopback of the pod's network
    /// namespace (see [`super::portforward::connect_in_netns`]).
    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<ForwardedConn, BackendError>;
}
