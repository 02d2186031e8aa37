//! Exec and attach sessions ("remote command" in Kubernetes): the stdio of a
//! process carried over SPDY streams or WebSocket channels, the exit status
//! reported on the error stream.

pub mod spdy;
pub mod websocket;

use std::future::Future;

use super::backend::StreamIo;
use super::request::{AttachRequest, ExecRequest};
use super::session::SessionCtx;
use super::status::Status;

/// Which streams a session carries.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// What the session runs.
#[derive(Debug, Clone)]
pub enum Action {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

impl Action {
    pub fn opts(&self) -> Opts {
        match self {
            Action::Exec(r) => Opts {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            Action::Attach(r) => Opts {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Action::Exec(_) => "exec",
            Action::Attach(_) => "attach",
        }
    }

    fn container_id(&self) -> &str {
        match self {
            Action::Exec(r) => &r.container_id,
            Action::Attach(r) => &r.container_id,
        }
    }
}

/// The remote command protocol versions (`X-Stream-Protocol-Version` for
/// SPDY, the WebSocket subprotocol otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    /// `channel.k8s.io`: error stream carries text; no resize.
    V1,
    /// `v2.channel.k8s.io`: as v1 without v1's quirk of closing stdin early.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: error stream carries a JSON Status with the
    /// exit code.
    V4,
    /// `v5.channel.k8s.io`: WebSocket close signal for stdin; as v4 on SPDY.
    V5,
}

impl Protocol {
    pub const SPDY: [Protocol; 5] = [
        Protocol::V5,
        Protocol::V4,
        Protocol::V3,
        Protocol::V2,
        Protocol::V1,
    ];
    pub const WEBSOCKET: [Protocol; 3] = [Protocol::V5, Protocol::V4, Protocol::V1];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::V1 => "channel.k8s.io",
            Protocol::V2 => "v2.channel.k8s.io",
            Protocol::V3 => "v3.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V5 => "v5.channel.k8s.io",
        }
    }

    fn supports_resize(self) -> bool {
        self >= Protocol::V3
    }

    fn json_status(self) -> bool {
        self >= Protocol::V4
    }

    /// What goes on the error stream for `status`, if anything.
    fn error_payload(self, status: &Status) -> Option<Vec<u8>> {
        if self.json_status() {
            Some(status.to_json())
        } else {
            status.legacy_text().map(String::into_bytes)
        }
    }
}

/// Runs the backend until it returns, or until `client_gone` resolves or
/// the server shuts down; then cancels it, gives it the grace period to
/// clean up, and returns `None`.
async fn drive(
    ctx: &SessionCtx,
    action: &Action,
    io: StreamIo,
    client_gone: impl Future<Output = ()>,
) -> Option<Status> {
    let cancel = io.cancel.clone();
    let backend = ctx.backend.clone();
    let run = async move {
        match action {
            Action::Exec(req) => match backend.exec(req, io).await {
                Ok(0) => Status::success(),
                Ok(code) => Status::exit_code(code, &req.cmd),
                Err(e) => Status::internal(&e.to_string()),
            },
            Action::Attach(req) => match backend.attach(req, io).await {
                Ok(()) => Status::success(),
                Err(e) => Status::internal(&e.to_string()),
            },
        }
    };
    tokio::pin!(run);
    tokio::select! {
        status = &mut run => return Some(status),
        _ = client_gone => {
            tracing::info!(kind = action.kind(), container = action.container_id(),
                "streaming client went away; stopping the session");
        }
        _ = ctx.cancel.cancelled() => {}
    }
    cancel.cancel();
    if tokio::time::timeout(ctx.cancel_grace, &mut run)
        .await
        .is_err()
    {
        tracing::warn!(
            kind = action.kind(),
            container = action.container_id(),
            "backend did not stop within {:?} of cancellation; dropping it",
            ctx.cancel_grace
        );
    }
    None
}
