//! The server side of a SPDY/3.1 connection: a reader task that demultiplexes
//! frames into per-stream buffers, a writer task that owns the socket's write
//! half, and stream handles that are `AsyncRead`/`AsyncWrite`.
//!
//! Kubernetes clients open every stream; the server never does. Each
//! SYN_STREAM is answered with an empty SYN_REPLY before its handle is handed
//! out, so no data of ours can precede the reply.
//!
//! Back-pressure and fairness:
//! - Outbound, each stream may have at most [`QUEUE_LIMIT`] bytes queued for
//!   the writer; a stream whose reader on the far side is slow waits on its
//!   own quota without taking space from the others. Every frame goes through
//!   one FIFO, so a stream's data, its FIN and the final GOAWAY keep order.
//! - Peer windows (SETTINGS_INITIAL_WINDOW_SIZE, WINDOW_UPDATE per stream and
//!   for the session, stream 0 in SPDY/3.1) are enforced once the peer shows
//!   it does flow control by sending either. The Go `spdystream` library that
//!   kubectl, crictl and kubelet use never sends WINDOW_UPDATE and ignores
//!   ours, so enforcing from the first byte would stall them after 64 KiB.
//! - Inbound, we send WINDOW_UPDATEs as the application consumes data (each
//!   stream and the session start with the 64 KiB default window). A peer
//!   that does flow control and overruns a window gets RST_STREAM
//!   FLOW_CONTROL_ERROR; one that does not is held back by TCP once a stream
//!   has [`UNCONTROLLED_BUFFER`] bytes unread: nothing is ever dropped.
//!
//! When the transport ends (EOF, error, or a write that fails), `dead` is
//! cancelled, every blocked reader and writer wakes with an error, and the
//! owner of the [`Connection`] sees it through [`Connection::closed`].

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;

use super::frame::{
    FLAG_FIN, FLAG_UNIDIRECTIONAL, Frame, FrameDecoder, FrameEncoder, FrameError, Headers,
    SETTINGS_INITIAL_WINDOW_SIZE, goaway, rst,
};

/// The SPDY/3.1 default window, per stream and for the session.
const DEFAULT_WINDOW: i64 = 64 * 1024;
/// Bytes a stream may have waiting in the writer's queue.
pub const QUEUE_LIMIT: usize = 64 * 1024;
/// Largest data frame we send.
const MAX_DATA_FRAME: usize = 32 * 1024;
/// Unread bytes a stream may hold from a peer without flow control before
/// the reader stops taking frames off the socket.
pub const UNCONTROLLED_BUFFER: usize = 1024 * 1024;
/// Streams open at once on one connection.
const MAX_STREAMS: usize = 512;
/// PING echoes waiting to be written; further PINGs are not answered.
const MAX_PENDING_PINGS: usize = 16;

enum Out {
    Frame(Frame),
    /// Write a GOAWAY, flush, and shut the write half down.
    Close(u32),
}

#[derive(Default)]
struct StreamState {
    recv: VecDeque<Bytes>,
    recv_len: usize,
    recv_fin: bool,
    reset: bool,
    recv_open: bool,
    send_open: bool,
    recv_waker: Option<Waker>,
    recv_unacked: usize,
    send_window: i64,
    queued: usize,
    send_waker: Option<Waker>,
    local_fin: bool,
}

impl StreamState {
    fn wake(&mut self) {
        if let Some(w) = self.recv_waker.take() {
            w.wake();
        }
        if let Some(w) = self.send_waker.take() {
            w.wake();
        }
    }
}

struct State {
    streams: HashMap<u32, StreamState>,
    last_peer_stream: u32,
    flow_control: bool,
    initial_send_window: i64,
    session_send_window: i64,
    session_waiters: Vec<Waker>,
    session_recv_unacked: usize,
    pending_pings: usize,
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    out: mpsc::UnboundedSender<Out>,
    /// Signalled when a stream's receive buffer shrinks.
    space: Notify,
    /// Cancelled when the transport is gone.
    dead: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; carry on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, frame: Frame) {
        // A closed queue means the writer is gone; `dead` tells everyone.
        let _ = self.out.send(Out::Frame(frame));
    }

    /// Acknowledges `n` consumed (or discarded) bytes of stream `id`.
    fn credit(&self, st: &mut State, id: u32, n: usize) {
        if n == 0 {
            return;
        }
        st.session_recv_unacked += n;
        if st.session_recv_unacked as i64 >= DEFAULT_WINDOW / 2 {
            self.send(Frame::WindowUpdate {
                stream_id: 0,
                delta: st.session_recv_unacked as u32,
            });
            st.session_recv_unacked = 0;
        }
        if let Some(s) = st.streams.get_mut(&id)
            && !s.recv_fin
            && !s.reset
        {
            s.recv_unacked += n;
            if s.recv_unacked as i64 >= DEFAULT_WINDOW / 2 {
                self.send(Frame::WindowUpdate {
                    stream_id: id,
                    delta: s.recv_unacked as u32,
                });
                s.recv_unacked = 0;
            }
        }
    }

    fn mark_dead(&self) {
        self.dead.cancel();
        let mut st = self.lock();
        for s in st.streams.values_mut() {
            s.wake();
        }
        for w in st.session_waiters.drain(..) {
            w.wake();
        }
        drop(st);
        self.space.notify_waiters();
    }

    fn remove_if_unused(st: &mut State, id: u32) {
        if let Some(s) = st.streams.get(&id)
            && !s.recv_open
            && !s.send_open
        {
            st.streams.remove(&id);
        }
    }
}

/// A server-side SPDY/3.1 connection. Dropping it aborts its tasks and
/// closes the transport.
pub struct Connection {
    shared: Arc<Shared>,
    incoming: mpsc::UnboundedReceiver<Stream>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
        self.shared.mark_dead();
    }
}

impl Connection {
    /// Starts serving SPDY on `io` (the upgraded HTTP connection).
    pub fn new<IO>(io: IO) -> Result<Self, FrameError>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let encoder = FrameEncoder::new()?;
        let (read_half, write_half) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                streams: HashMap::new(),
                last_peer_stream: 0,
                flow_control: false,
                initial_send_window: DEFAULT_WINDOW,
                session_send_window: DEFAULT_WINDOW,
                session_waiters: Vec::new(),
                session_recv_unacked: 0,
                pending_pings: 0,
                closing: false,
            }),
            out: out_tx,
            space: Notify::new(),
            dead: CancellationToken::new(),
        });
        let reader = tokio::spawn(read_loop(
            shared.clone(),
            FramedRead::new(read_half, FrameDecoder::default()),
            in_tx,
        ));
        let writer = tokio::spawn(write_loop(shared.clone(), out_rx, write_half, encoder));
        Ok(Self {
            shared,
            incoming: in_rx,
            reader,
            writer,
        })
    }

    /// The next stream the peer opens; `None` once it sent GOAWAY or the
    /// transport is gone.
    pub async fn accept(&mut self) -> Option<Stream> {
        tokio::select! {
            s = self.incoming.recv() => s,
            _ = self.shared.dead.cancelled() => None,
        }
    }

    /// Resolves when the transport is gone (the peer vanished or closed).
    pub async fn closed(&self) {
        self.shared.dead.cancelled().await
    }

    /// A token cancelled when the transport is gone.
    pub fn closed_token(&self) -> CancellationToken {
        self.shared.dead.clone()
    }

    /// Ends the connection gracefully: everything queued so far is written,
    /// then GOAWAY, then the write half is shut down. Waits up to `grace`
    /// for that and for the peer to close its side.
    pub async fn close(mut self, grace: Duration) {
        let last = {
            let mut st = self.shared.lock();
            st.closing = true;
            st.last_peer_stream
        };
        let _ = self.shared.out.send(Out::Close(last));
        let deadline = tokio::time::Instant::now() + grace;
        let _ = tokio::time::timeout_at(deadline, &mut self.writer).await;
        let _ = tokio::time::timeout_at(deadline, &mut self.reader).await;
        // Drop aborts whatever is left.
    }
}

async fn read_loop<R>(
    shared: Arc<Shared>,
    mut frames: FramedRead<R, FrameDecoder>,
    incoming: mpsc::UnboundedSender<Stream>,
) where
    R: AsyncRead + Unpin,
{
    let mut incoming = Some(incoming);
    loop {
        let frame = tokio::select! {
            f = frames.next() => f,
            _ = shared.dead.cancelled() => break,
        };
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "SPDY connection read failed");
                if let FrameError::Protocol(_) | FrameError::Compression(_) = e {
                    let last = shared.lock().last_peer_stream;
                    shared.send(Frame::GoAway {
                        last_good_stream_id: last,
                        status: goaway::PROTOCOL_ERROR,
                    });
                }
                break;
            }
            None => break,
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => on_syn_stream(&shared, incoming.as_ref(), stream_id, flags, headers),
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if !on_data(&shared, stream_id, flags & FLAG_FIN != 0, data).await {
                    break;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                let mut st = shared.lock();
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.reset = true;
                    s.wake();
                }
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    let mut st = shared.lock();
                    if let Some(s) = st.streams.get_mut(&stream_id) {
                        s.recv_fin = true;
                        s.wake();
                    }
                }
            }
            Frame::Settings { entries, .. } => {
                let mut st = shared.lock();
                for (_, id, value) in entries {
                    if id == SETTINGS_INITIAL_WINDOW_SIZE {
                        let delta = i64::from(value) - st.initial_send_window;
                        st.initial_send_window = i64::from(value);
                        st.flow_control = true;
                        for s in st.streams.values_mut() {
                            s.send_window += delta;
                            s.wake();
                        }
                    }
                }
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut st = shared.lock();
                st.flow_control = true;
                if stream_id == 0 {
                    st.session_send_window += i64::from(delta);
                    for w in st.session_waiters.drain(..) {
                        w.wake();
                    }
                } else if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.send_window += i64::from(delta);
                    s.wake();
                }
            }
            Frame::Ping { id } => {
                // Odd ids are the client's; even ones would answer ours, and
                // we send none.
                let mut st = shared.lock();
                if id % 2 == 1 && st.pending_pings < MAX_PENDING_PINGS {
                    st.pending_pings += 1;
                    shared.send(Frame::Ping { id });
                }
            }
            Frame::GoAway { .. } => {
                // No new streams; the open ones carry on.
                incoming = None;
            }
            Frame::SynReply { .. } | Frame::Unknown { .. } => {}
        }
    }
    shared.mark_dead();
}

fn on_syn_stream(
    shared: &Arc<Shared>,
    incoming: Option<&mpsc::UnboundedSender<Stream>>,
    id: u32,
    flags: u8,
    headers: Headers,
) {
    let mut st = shared.lock();
    if id.is_multiple_of(2) || id <= st.last_peer_stream {
        shared.send(Frame::RstStream {
            stream_id: id,
            status: if st.streams.contains_key(&id) {
                rst::STREAM_IN_USE
            } else {
                rst::PROTOCOL_ERROR
            },
        });
        return;
    }
    st.last_peer_stream = id;
    let Some(incoming) = incoming.filter(|_| !st.closing && st.streams.len() < MAX_STREAMS) else {
        shared.send(Frame::RstStream {
            stream_id: id,
            status: rst::REFUSED_STREAM,
        });
        return;
    };
    let send_window = st.initial_send_window;
    st.streams.insert(
        id,
        StreamState {
            recv_fin: flags & FLAG_FIN != 0,
            local_fin: flags & FLAG_UNIDIRECTIONAL != 0,
            recv_open: true,
            send_open: true,
            send_window,
            ..Default::default()
        },
    );
    // The reply goes into the queue before the handle exists, so it
    // precedes anything written on the stream.
    shared.send(Frame::SynReply {
        stream_id: id,
        flags: 0,
        headers: Headers::default(),
    });
    drop(st);
    let stream = Stream {
        headers,
        recv: RecvHalf {
            shared: shared.clone(),
            id,
        },
        send: SendHalf {
            shared: shared.clone(),
            id,
        },
    };
    // If nobody accepts any more, the handle drops here and resets itself.
    let _ = incoming.send(stream);
}

/// Queues inbound data; returns false if the connection must end.
async fn on_data(shared: &Arc<Shared>, id: u32, fin: bool, data: Bytes) -> bool {
    loop {
        let space = shared.space.notified();
        tokio::pin!(space);
        space.as_mut().enable();
        {
            let mut st = shared.lock();
            let flow_control = st.flow_control;
            let last = st.last_peer_stream;
            let Some(s) = st.streams.get_mut(&id) else {
                if id.is_multiple_of(2) || id > last {
                    shared.send(Frame::RstStream {
                        stream_id: id,
                        status: rst::INVALID_STREAM,
                    });
                }
                // A stream we already closed: drop the data, keep the
                // session window open.
                shared.credit(&mut st, id, data.len());
                return true;
            };
            if s.reset || s.recv_fin || !s.recv_open {
                let n = data.len();
                if fin {
                    s.recv_fin = true;
                    s.wake();
                }
                shared.credit(&mut st, id, n);
                return true;
            }
            if flow_control && (s.recv_len + s.recv_unacked + data.len()) as i64 > DEFAULT_WINDOW {
                s.reset = true;
                s.wake();
                shared.send(Frame::RstStream {
                    stream_id: id,
                    status: rst::FLOW_CONTROL_ERROR,
                });
                return true;
            }
            if flow_control || s.recv_len < UNCONTROLLED_BUFFER {
                if !data.is_empty() {
                    s.recv_len += data.len();
                    s.recv.push_back(data);
                }
                if fin {
                    s.recv_fin = true;
                }
                s.wake();
                return true;
            }
        }
        // The stream's reader is behind: hold the socket until it catches up.
        tokio::select! {
            _ = &mut space => {}
            _ = shared.dead.cancelled() => return false,
        }
    }
}

async fn write_loop<W>(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    mut io: W,
    mut encoder: FrameEncoder,
) where
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'outer: loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = shared.dead.cancelled() => break,
        };
        let Some(mut next) = first else { break };
        let mut sent: Vec<(u32, usize)> = Vec::new();
        let mut pings = 0usize;
        let mut close = false;
        buf.clear();
        loop {
            let frame = match next {
                Out::Frame(frame) => frame,
                Out::Close(last) => {
                    close = true;
                    Frame::GoAway {
                        last_good_stream_id: last,
                        status: goaway::OK,
                    }
                }
            };
            match &frame {
                Frame::Data {
                    stream_id, data, ..
                } => sent.push((*stream_id, data.len())),
                Frame::Ping { .. } => pings += 1,
                _ => {}
            }
            if let Err(e) = encoder.encode(frame, &mut buf) {
                tracing::warn!(error = %e, "cannot encode SPDY frame");
                break 'outer;
            }
            if close || buf.len() >= 64 * 1024 {
                break;
            }
            match rx.try_recv() {
                Ok(m) => next = m,
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            r = async {
                io.write_all(&buf).await?;
                io.flush().await
            } => r,
            _ = shared.dead.cancelled() => break,
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "SPDY connection write failed");
            break;
        }
        {
            let mut st = shared.lock();
            st.pending_pings = st.pending_pings.saturating_sub(pings);
            for (id, n) in sent {
                if let Some(s) = st.streams.get_mut(&id) {
                    s.queued = s.queued.saturating_sub(n);
                    if let Some(w) = s.send_waker.take() {
                        w.wake();
                    }
                }
            }
        }
        if close {
            let _ = io.shutdown().await;
            return;
        }
    }
    shared.mark_dead();
}

/// A stream the peer opened. Both halves are usable on their own; the
/// stream is forgotten when both are dropped.
pub struct Stream {
    headers: Headers,
    recv: RecvHalf,
    send: SendHalf,
}

impl Stream {
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    pub fn id(&self) -> u32 {
        self.recv.id
    }

    pub fn into_split(self) -> (RecvHalf, SendHalf) {
        (self.recv, self.send)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

/// The receiving half: data the peer sends on the stream, EOF at its FIN.
pub struct RecvHalf {
    shared: Arc<Shared>,
    id: u32,
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let shared = &self.shared;
        let mut st = shared.lock();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if let Some(front) = s.recv.front_mut() {
            let n = front.len().min(buf.remaining());
            buf.put_slice(&front.split_to(n));
            if front.is_empty() {
                s.recv.pop_front();
            }
            let was_full = s.recv_len >= UNCONTROLLED_BUFFER;
            s.recv_len -= n;
            let now_below = s.recv_len < UNCONTROLLED_BUFFER;
            shared.credit(&mut st, self.id, n);
            drop(st);
            if was_full && now_below {
                shared.space.notify_waiters();
            }
            return Poll::Ready(Ok(()));
        }
        if s.recv_fin {
            return Poll::Ready(Ok(()));
        }
        if s.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset by peer",
            )));
        }
        if shared.dead.is_cancelled() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed",
            )));
        }
        s.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for RecvHalf {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let mut discarded = 0;
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.recv_open = false;
            discarded = s.recv_len;
            s.recv.clear();
            s.recv_len = 0;
        }
        self.shared.credit(&mut st, self.id, discarded);
        Shared::remove_if_unused(&mut st, self.id);
        drop(st);
        self.shared.space.notify_waiters();
    }
}

/// The sending half. Dropping it without `shutdown` still ends the stream
/// gracefully with a FIN after the queued data; [`SendHalf::reset`] aborts.
pub struct SendHalf {
    shared: Arc<Shared>,
    id: u32,
}

impl SendHalf {
    /// Aborts the stream with RST_STREAM CANCEL.
    pub fn reset(&self) {
        let mut st = self.shared.lock();
        if let Some(s) = st.streams.get_mut(&self.id)
            && !s.reset
        {
            s.reset = true;
            s.local_fin = true;
            s.wake();
            self.shared.send(Frame::RstStream {
                stream_id: self.id,
                status: rst::CANCEL,
            });
        }
    }

    fn fin(&self, st: &mut State) {
        if let Some(s) = st.streams.get_mut(&self.id)
            && !s.local_fin
            && !s.reset
        {
            s.local_fin = true;
            self.shared.send(Frame::Data {
                stream_id: self.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            });
        }
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let shared = &self.shared;
        let mut guard = shared.lock();
        let State {
            streams,
            flow_control,
            session_send_window,
            session_waiters,
            ..
        } = &mut *guard;
        let broken = |msg: &str| {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                msg.to_string(),
            )))
        };
        let Some(s) = streams.get_mut(&self.id) else {
            return broken("stream closed");
        };
        if s.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset",
            )));
        }
        if shared.dead.is_cancelled() {
            return broken("connection closed");
        }
        if s.local_fin {
            return broken("write after the stream was closed");
        }
        if s.queued >= QUEUE_LIMIT {
            s.send_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = buf.len().min(MAX_DATA_FRAME);
        if *flow_control {
            let allowed = s.send_window.min(*session_send_window);
            if allowed <= 0 {
                s.send_waker = Some(cx.waker().clone());
                session_waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            n = n.min(allowed as usize);
        }
        s.send_window -= n as i64;
        *session_send_window -= n as i64;
        s.queued += n;
        shared.send(Frame::Data {
            stream_id: self.id,
            flags: 0,
            data: Bytes::copy_from_slice(&buf[..n]),
        });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        self.fin(&mut st);
        Poll::Ready(Ok(()))
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        self.fin(&mut st);
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.send_open = false;
        }
        Shared::remove_if_unused(&mut st, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::spdy::frame::{FrameDecoder, FrameEncoder};
    use futures_util::SinkExt;
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio_util::codec::{FramedRead, FramedWrite};

    type ClientOut = FramedWrite<tokio::io::WriteHalf<DuplexStream>, FrameEncoder>;
    type ClientIn = FramedRead<tokio::io::ReadHalf<DuplexStream>, FrameDecoder>;

    fn pair() -> (Connection, ClientOut, ClientIn) {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let conn = Connection::new(server).unwrap();
        let (r, w) = tokio::io::split(client);
        (
            conn,
            FramedWrite::new(w, FrameEncoder::new().unwrap()),
            FramedRead::new(r, FrameDecoder::default()),
        )
    }

    fn syn(id: u32) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: Headers(vec![("streamtype".into(), "stdin".into())]),
        }
    }

    fn data(id: u32, bytes: Vec<u8>, fin: bool) -> Frame {
        Frame::Data {
            stream_id: id,
            flags: if fin { FLAG_FIN } else { 0 },
            data: bytes.into(),
        }
    }

    #[tokio::test]
    async fn a_slow_reader_loses_nothing() {
        let (mut conn, mut out, mut inp) = pair();
        // Drain what the server sends so its writer never blocks.
        tokio::spawn(async move { while inp.next().await.is_some() {} });
        let total = 3 * UNCONTROLLED_BUFFER;
        let sender = tokio::spawn(async move {
            out.send(syn(1)).await.unwrap();
            let mut sent = 0;
            while sent < total {
                let chunk: Vec<u8> = (sent..sent + 16384).map(|i| (i % 251) as u8).collect();
                sent += chunk.len();
                out.send(data(1, chunk, sent >= total)).await.unwrap();
            }
            out
        });
        let mut stream = conn.accept().await.unwrap();
        assert_eq!(stream.headers().get("streamType"), Some("stdin"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), total);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        let _out = sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_flow_controlled_peer_that_overruns_its_window_is_reset() {
        let (mut conn, mut out, mut inp) = pair();
        out.send(Frame::Settings {
            flags: 0,
            entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 65536)],
        })
        .await
        .unwrap();
        out.send(syn(1)).await.unwrap();
        let _stream = conn.accept().await.unwrap();
        for _ in 0..5 {
            out.send(data(1, vec![0; 16384], false)).await.unwrap();
        }
        loop {
            match inp.next().await.unwrap().unwrap() {
                Frame::RstStream { stream_id, status } => {
                    assert_eq!((stream_id, status), (1, rst::FLOW_CONTROL_ERROR));
                    break;
                }
                Frame::SynReply { .. } | Frame::WindowUpdate { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn streams_end_with_fin_and_are_forgotten() {
        let (mut conn, mut out, mut inp) = pair();
        out.send(syn(1)).await.unwrap();
        out.send(data(1, b"x".to_vec(), true)).await.unwrap();
        let stream = conn.accept().await.unwrap();
        let (recv, mut send) = stream.into_split();
        send.write_all(b"reply").await.unwrap();
        drop(send);
        drop(recv);
        let mut frames = Vec::new();
        while frames.len() < 3 {
            frames.push(inp.next().await.unwrap().unwrap());
        }
        assert!(matches!(frames[0], Frame::SynReply { stream_id: 1, .. }));
        assert_eq!(frames[1], data(1, b"reply".to_vec(), false));
        assert_eq!(frames[2], data(1, Vec::new(), true));
        assert!(conn.shared.lock().streams.is_empty());
        // Data for a forgotten stream is dropped quietly.
        out.send(data(1, b"late".to_vec(), false)).await.unwrap();
        out.send(Frame::Ping { id: 7 }).await.unwrap();
        assert_eq!(inp.next().await.unwrap().unwrap(), Frame::Ping { id: 7 });
    }

    #[tokio::test]
    async fn a_vanished_peer_wakes_blocked_readers_with_an_error() {
        let (mut conn, mut out, inp) = pair();
        out.send(syn(1)).await.unwrap();
        let mut stream = conn.accept().await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            stream.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(out);
        drop(inp);
        let r = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert!(r.is_err());
        tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap();
        assert!(conn.accept().await.is_none());
    }

    #[tokio::test]
    async fn bad_stream_ids_are_refused() {
        let (mut conn, mut out, mut inp) = pair();
        out.send(syn(2)).await.unwrap();
        out.send(syn(5)).await.unwrap();
        out.send(syn(3)).await.unwrap();
        let s = conn.accept().await.unwrap();
        assert_eq!(s.id(), 5);
        let mut resets = Vec::new();
        while resets.len() < 2 {
            if let Frame::RstStream { stream_id, status } = inp.next().await.unwrap().unwrap() {
                resets.push((stream_id, status));
            }
        }
        assert_eq!(resets, [(2, rst::PROTOCOL_ERROR), (3, rst::PROTOCOL_ERROR)]);
    }
}
