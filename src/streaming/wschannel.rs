//! The Kubernetes channel protocol over WebSocket (`channel.k8s.io` and its
//! `v4.`/`v5.` versions): every binary message starts with one byte naming
//! the channel. For exec/attach 0 is stdin, 1 stdout, 2 stderr, 3 the error
//! channel, 4 resize; v5 adds 255, a close signal whose one-byte payload
//! names the channel the client will not write any more (stdin EOF). For
//! port forwarding each port has a data and an error channel.
//!
//! Here: the reader that routes inbound messages to per-channel queues, the
//! writer task that owns the socket's sink, and `AsyncRead`/`AsyncWrite`
//! adapters for single channels.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::{CancellationToken, PollSender};

/// The v5 close signal channel.
pub const CLOSE_CHANNEL: u8 = 255;
/// Largest payload per message we send.
const MAX_MESSAGE: usize = 32 * 1024;
/// Inbound messages queued per channel before the reader waits.
pub const INBOUND_QUEUE: usize = 16;
/// Outbound messages queued for the socket.
pub const OUTBOUND_QUEUE: usize = 32;

/// Routes the client's messages to `channels[n]` until the socket ends,
/// then cancels `gone`. With `close_signal` (v5), a message on channel 255
/// closes the channel it names.
pub async fn read_loop<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    mut channels: Vec<Option<mpsc::Sender<Bytes>>>,
    close_signal: bool,
    gone: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = stream.next().await {
        let data = match msg {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) | Err(_) => break,
            // Text (the base64 protocols), ping and pong carry nothing here;
            // tungstenite answers pings itself.
            Ok(_) => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        if close_signal && channel == CLOSE_CHANNEL {
            if let [target] = payload
                && let Some(slot) = channels.get_mut(usize::from(*target))
            {
                *slot = None;
            }
            continue;
        }
        let Some(slot) = channels.get_mut(usize::from(channel)) else {
            continue;
        };
        if let Some(tx) = slot
            && !payload.is_empty()
            && tx.send(data.slice(1..)).await.is_err()
        {
            *slot = None;
        }
    }
    gone.cancel();
}

/// Sends queued messages until the queue closes or a Close message went out.
pub async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Message>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = rx.recv().await {
        let close = msg.is_close();
        if sink.send(msg).await.is_err() || close {
            break;
        }
    }
    let _ = sink.flush().await;
}

/// A binary message on `channel`.
pub fn message(channel: u8, payload: &[u8]) -> Message {
    let mut data = Vec::with_capacity(payload.len() + 1);
    data.push(channel);
    data.extend_from_slice(payload);
    Message::Binary(data.into())
}

/// Writes to one channel.
pub struct ChannelWriter {
    channel: u8,
    tx: PollSender<Message>,
}

impl ChannelWriter {
    pub fn new(channel: u8, tx: mpsc::Sender<Message>) -> Self {
        Self {
            channel,
            tx: PollSender::new(tx),
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "websocket connection closed")
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.tx.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(MAX_MESSAGE);
        let msg = message(self.channel, &buf[..n]);
        self.tx.send_item(msg).map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Reads from one channel; EOF when the channel is closed (v5 close signal)
/// or the socket ends.
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                let chunk = self.current.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(data) => self.current = data,
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}
