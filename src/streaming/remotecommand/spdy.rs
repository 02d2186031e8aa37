//! Exec/attach over SPDY: the client opens one stream per role, named by
//! its `streamType` header (`error`, `stdin`, `stdout`, `stderr`, `resize`),
//! and the server waits for all it expects before running the command.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Action, Protocol, drive};
use crate::streaming::backend::{InputStream, OutputStream, StreamIo};
use crate::streaming::resize;
use crate::streaming::session::{AbortOnDrop, SessionCtx};
use crate::streaming::spdy::{Connection, SendHalf, Stream};

#[derive(Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

impl Streams {
    /// Files `stream` by type; false if the type is unknown or taken.
    fn add(&mut self, stream: Stream) -> bool {
        let slot = match stream.headers().get("streamtype") {
            Some("error") => &mut self.error,
            Some("stdin") => &mut self.stdin,
            Some("stdout") => &mut self.stdout,
            Some("stderr") => &mut self.stderr,
            Some("resize") => &mut self.resize,
            other => {
                tracing::debug!(stream_type = ?other, "unexpected stream type");
                return false;
            }
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(stream);
        true
    }
}

pub async fn serve<IO>(io: IO, protocol: Protocol, action: Action, ctx: SessionCtx)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = match Connection::new(io) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start SPDY connection");
            return;
        }
    };
    let opts = action.opts();
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && protocol.supports_resize());
    let mut streams = Streams::default();
    let mut received = 0;
    let deadline = tokio::time::sleep(ctx.stream_creation_timeout);
    tokio::pin!(deadline);
    while received < expected {
        tokio::select! {
            s = conn.accept() => match s {
                Some(s) => if streams.add(s) { received += 1 },
                None => return,
            },
            _ = &mut deadline => {
                tracing::warn!(kind = action.kind(), container = action.container_id(),
                    "timed out waiting for the client to create streams");
                conn.close(ctx.cancel_grace).await;
                return;
            }
            _ = ctx.cancel.cancelled() => return,
        }
    }

    let split = |s: Option<Stream>| s.map(Stream::into_split);
    let (stdin_recv, stdin_send) = split(streams.stdin).unzip();
    let (_, stdout_send) = split(streams.stdout).unzip();
    let (_, stderr_send) = split(streams.stderr).unzip();
    let (resize_recv, _resize_send) = split(streams.resize).unzip();
    let mut stdin_send: Option<SendHalf> = stdin_send;
    if protocol == Protocol::V1 {
        // v1 servers close their side of stdin at once; clients expect it.
        stdin_send = None;
    }

    let mut _resize_task = None;
    let resize_rx = resize_recv.map(|recv| {
        let (tx, rx) = mpsc::channel(16);
        _resize_task = Some(AbortOnDrop(tokio::spawn(resize::pump(recv, tx))));
        rx
    });
    let io = StreamIo {
        stdin: stdin_recv.map(|r| Box::new(r) as InputStream),
        stdout: stdout_send.map(|w| Box::new(w) as OutputStream),
        stderr: stderr_send.map(|w| Box::new(w) as OutputStream),
        resize: resize_rx,
        cancel: ctx.cancel.child_token(),
    };
    let Some(status) = drive(&ctx, &action, io, conn.closed()).await else {
        // The client is gone; dropping the connection frees the rest.
        return;
    };
    if let Some(error) = streams.error {
        let (_, mut error_send) = error.into_split();
        if let Some(payload) = protocol.error_payload(&status) {
            let write = async {
                error_send.write_all(&payload).await?;
                error_send.shutdown().await
            };
            if tokio::time::timeout(ctx.cancel_grace, write).await.is_err() {
                tracing::debug!("client did not take the exit status in time");
            }
        }
    }
    drop(stdin_send);
    conn.close(ctx.cancel_grace.max(Duration::from_secs(1)))
        .await;
}
