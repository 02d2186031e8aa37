//! A minimal SPDY/3.1 client, written apart from the server's codec so the
//! two check each other: it opens streams, sends data, and routes what the
//! server sends to per-stream queues.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use ketch::streaming::spdy::dictionary::dictionary;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::http;

#[derive(Debug, PartialEq, Eq)]
pub enum Ev {
    Data(Vec<u8>),
    Fin,
    Reset(u32),
}

struct Writer {
    io: OwnedWriteHalf,
    zlib: Compress,
}

pub struct SpdyClient {
    writer: Arc<tokio::sync::Mutex<Writer>>,
    streams: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Ev>>>>,
    next_id: AtomicU32,
    pub goaway: Arc<AtomicBool>,
    pub closed: Arc<AtomicBool>,
    /// WINDOW_UPDATE deltas received, by stream (0: session).
    pub window_updates: Arc<Mutex<HashMap<u32, u64>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for SpdyClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub struct ClientStream {
    pub id: u32,
    pub rx: mpsc::UnboundedReceiver<Ev>,
}

impl ClientStream {
    /// Everything until FIN or RST (or `secs` pass); the bool tells a FIN.
    pub async fn read_to_end(&mut self, secs: u64) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::Data(d))) => out.extend_from_slice(&d),
                Ok(Some(Ev::Fin)) => return (out, true),
                Ok(Some(Ev::Reset(_))) | Ok(None) | Err(_) => return (out, false),
            }
        }
    }

    /// Reads until the collected output contains `needle`.
    pub async fn read_until(&mut self, needle: &str, secs: u64) -> String {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        while !String::from_utf8_lossy(&out).contains(needle) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::Data(d))) => out.extend_from_slice(&d),
                other => panic!(
                    "stream {} ended before {needle:?}: {other:?}; got {:?}",
                    self.id,
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (n, v) in headers {
        raw.extend_from_slice(&(n.len() as u32).to_be_bytes());
        raw.extend_from_slice(n.as_bytes());
        raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
        raw.extend_from_slice(v.as_bytes());
    }
    raw
}

fn control(frame_type: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 3];
    f.extend_from_slice(&frame_type.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

impl SpdyClient {
    /// Upgrades `url` to SPDY/3.1 offering `protocols`; returns the client
    /// and the negotiated protocol.
    pub async fn connect(url: &str, protocols: &[&str]) -> (Self, String) {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        for p in protocols {
            headers.push(("X-Stream-Protocol-Version", p));
        }
        let resp = http::request(url, "POST", &headers).await;
        assert_eq!(resp.status, 101, "upgrade refused: {}", resp.body);
        let protocol = resp
            .header("x-stream-protocol-version")
            .unwrap_or_default()
            .to_string();
        (Self::over(resp.stream), protocol)
    }

    pub fn over(stream: TcpStream) -> Self {
        let (mut read, write) = stream.into_split();
        let mut zlib = Compress::new(Compression::best(), true);
        zlib.set_dictionary(dictionary()).unwrap();
        let streams: Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Ev>>>> = Arc::default();
        let goaway = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let window_updates: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
        let reader = {
            let (streams, goaway, closed, wu) = (
                streams.clone(),
                goaway.clone(),
                closed.clone(),
                window_updates.clone(),
            );
            tokio::spawn(async move {
                let mut inflate = Decompress::new(true);
                loop {
                    let mut head = [0u8; 8];
                    if read.read_exact(&mut head).await.is_err() {
                        break;
                    }
                    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
                    let mut payload = vec![0u8; len];
                    if read.read_exact(&mut payload).await.is_err() {
                        break;
                    }
                    let flags = head[4];
                    let send = |id: u32, ev: Ev| {
                        if let Some(tx) = streams.lock().unwrap().get(&id) {
                            let _ = tx.send(ev);
                        }
                    };
                    if head[0] & 0x80 == 0 {
                        let id = u32::from_be_bytes(head[..4].try_into().unwrap());
                        if !payload.is_empty() {
                            send(id, Ev::Data(payload));
                        }
                        if flags & 1 != 0 {
                            send(id, Ev::Fin);
                        }
                        continue;
                    }
                    assert_eq!(&head[..2], &[0x80, 3], "SPDY/3 control frame");
                    let id = u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                    match u16::from_be_bytes([head[2], head[3]]) {
                        2 => {
                            // SYN_REPLY: inflate to keep the zlib stream in step.
                            inflate_block(&mut inflate, &payload[4..]);
                            if flags & 1 != 0 {
                                send(id, Ev::Fin);
                            }
                        }
                        3 => {
                            let status = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                            send(id, Ev::Reset(status));
                        }
                        7 => goaway.store(true, Ordering::SeqCst),
                        9 => {
                            let delta = u32::from_be_bytes(payload[4..8].try_into().unwrap());
                            *wu.lock().unwrap().entry(id).or_default() += u64::from(delta);
                        }
                        _ => {}
                    }
                }
                closed.store(true, Ordering::SeqCst);
                streams.lock().unwrap().clear();
            })
        };
        Self {
            writer: Arc::new(tokio::sync::Mutex::new(Writer { io: write, zlib })),
            streams,
            next_id: AtomicU32::new(1),
            goaway,
            closed,
            window_updates,
            reader,
        }
    }

    pub async fn raw(&self, bytes: &[u8]) {
        let mut w = self.writer.lock().await;
        w.io.write_all(bytes).await.expect("write frame");
    }

    /// Opens a stream with `headers` (a SYN_STREAM).
    pub async fn open(&self, headers: &[(&str, &str)]) -> ClientStream {
        let id = self.next_id.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams.lock().unwrap().insert(id, tx);
        let raw = header_block(headers);
        let mut w = self.writer.lock().await;
        let mut block = Vec::with_capacity(raw.len() + 64);
        let before = w.zlib.total_in();
        w.zlib
            .compress_vec(&raw, &mut block, FlushCompress::Sync)
            .unwrap();
        assert_eq!((w.zlib.total_in() - before) as usize, raw.len());
        let mut payload = id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&block);
        let frame = control(1, 0, &payload);
        w.io.write_all(&frame).await.expect("SYN_STREAM");
        ClientStream { id, rx }
    }

    pub async fn send(&self, id: u32, data: &[u8], fin: bool) {
        let mut frame = id.to_be_bytes().to_vec();
        frame.push(u8::from(fin));
        frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        frame.extend_from_slice(data);
        self.raw(&frame).await;
    }

    pub async fn reset(&self, id: u32) {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&5u32.to_be_bytes());
        self.raw(&control(3, 0, &p)).await;
    }

    pub async fn settings_initial_window(&self, window: u32) {
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&window.to_be_bytes());
        self.raw(&control(4, 0, &p)).await;
    }

    pub async fn window_update(&self, id: u32, delta: u32) {
        let mut p = id.to_be_bytes().to_vec();
        p.extend_from_slice(&delta.to_be_bytes());
        self.raw(&control(9, 0, &p)).await;
    }

    pub async fn ping(&self, id: u32) {
        self.raw(&control(6, 0, &id.to_be_bytes())).await;
    }

    pub async fn goaway(&self) {
        self.raw(&control(7, 0, &[0, 0, 0, 0, 0, 0, 0, 0])).await;
    }
}

fn inflate_block(inflate: &mut Decompress, block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let mut pos = 0;
    while pos < block.len() {
        let before = inflate.total_in();
        match inflate.decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync) {
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                inflate.set_dictionary(dictionary()).unwrap();
            }
            Err(e) => panic!("bad header block from server: {e}"),
        }
        pos += (inflate.total_in() - before) as usize;
    }
    out
}
