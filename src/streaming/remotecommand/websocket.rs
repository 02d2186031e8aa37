//! Exec/attach over WebSocket with the channel protocol (see
//! [`crate::streaming::wschannel`]).

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use super::{Action, Protocol, drive};
use crate::streaming::backend::{InputStream, OutputStream, StreamIo};
use crate::streaming::resize;
use crate::streaming::session::{AbortOnDrop, SessionCtx};
use crate::streaming::wschannel::{
    self, ChannelReader, ChannelWriter, INBOUND_QUEUE, OUTBOUND_QUEUE, message,
};

const STDIN: usize = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: usize = 4;

pub async fn serve<S>(ws: WebSocketStream<S>, protocol: Protocol, action: Action, ctx: SessionCtx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let opts = action.opts();
    let (sink, stream) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(OUTBOUND_QUEUE);
    let mut writer = AbortOnDrop(tokio::spawn(wschannel::write_loop(sink, out_rx)));

    let mut inbound: Vec<Option<mpsc::Sender<Bytes>>> = vec![None, None, None, None, None];
    let mut channel = |on: bool, n: usize| {
        on.then(|| {
            let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
            inbound[n] = Some(tx);
            ChannelReader::new(rx)
        })
    };
    let stdin = channel(opts.stdin, STDIN);
    let resize_reader = channel(opts.tty && protocol.supports_resize(), RESIZE);
    let gone = CancellationToken::new();
    let _reader = AbortOnDrop(tokio::spawn(wschannel::read_loop(
        stream,
        inbound,
        protocol == Protocol::V5,
        gone.clone(),
    )));

    // Tell the client the session is up: an empty message on the lowest
    // channel it reads (what kubelet sends).
    let hello = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    if out_tx.send(message(hello, &[])).await.is_err() {
        return;
    }

    let mut _resize_task = None;
    let resize_rx = resize_reader.map(|reader| {
        let (tx, rx) = mpsc::channel(16);
        _resize_task = Some(AbortOnDrop(tokio::spawn(resize::pump(reader, tx))));
        rx
    });
    let writer_for = |on: bool, n: u8| {
        on.then(|| Box::new(ChannelWriter::new(n, out_tx.clone())) as OutputStream)
    };
    let io = StreamIo {
        stdin: stdin.map(|r| Box::new(r) as InputStream),
        stdout: writer_for(opts.stdout, STDOUT),
        stderr: writer_for(opts.stderr, STDERR),
        resize: resize_rx,
        cancel: ctx.cancel.child_token(),
    };
    let Some(status) = drive(&ctx, &action, io, gone.cancelled()).await else {
        return;
    };
    let finish = async {
        if let Some(payload) = protocol.error_payload(&status) {
            out_tx.send(message(ERROR, &payload)).await.ok()?;
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        out_tx.send(Message::Close(Some(close))).await.ok()?;
        drop(out_tx);
        (&mut writer.0).await.ok()
    };
    if tokio::time::timeout(ctx.cancel_grace, finish)
        .await
        .is_err()
    {
        tracing::debug!("client did not take the end of the session in time");
    }
}
