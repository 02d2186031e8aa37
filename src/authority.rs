//! Any `:authority` on the CRI unix socket.
//!
//! On a unix socket the HTTP/2 `:authority` says nothing (the socket path
//! names the peer), and gRPC clients fill it in as they please:
//! grpc-python and grpc-java send the socket path, raw (`/run/ketch/
//! ketch.sock`) or percent-encoded (`%2Frun%2Fketch%2Fketch.sock`); older
//! grpc-go sent `unix:///...`. h2, under hyper and tonic, parses the value
//! as an RFC 3986 authority and resets the stream with PROTOCOL_ERROR when
//! it is none, before any of our code runs (hyperium/h2#487 would relax
//! this; hyperium/tonic#243, grpc/grpc#38142). h2 offers no switch for it.
//!
//! So [`AnyAuthority`] sits between the socket and h2 and rewrites, in the
//! HPACK header blocks the client sends (RFC 7541), an `:authority` value
//! that is no valid authority into one that is: every byte that is not
//! unreserved (RFC 3986 §2.3) becomes `_`. The length stays the same, so
//! the HPACK dynamic table, whose entry sizes count the decoded bytes,
//! stays identical on both sides and later references to the entry still
//! resolve. Everything else passes through unchanged: DATA and other
//! frames are streamed, only HEADERS and CONTINUATION are held until their
//! block is complete. A block that cannot be parsed is passed on as it
//! came, for h2 to reject as it would have.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The connection preface every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's
/// initial value): rewritten blocks are split to it.
const MAX_FRAME_LEN: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE's initial value, h2's default.
const INITIAL_TABLE_SIZE: usize = 4_096;

/// An accepted connection whose client `:authority` values h2 accepts.
pub struct AnyAuthority<S> {
    inner: S,
    /// Bytes read from the client, not yet looked at.
    raw: BytesMut,
    /// Bytes ready for h2.
    ready: BytesMut,
    state: State,
    table: Table,
    eof: bool,
}

enum State {
    Preface,
    /// Waiting for a frame header.
    FrameHeader,
    /// Passing on the rest of a frame that is no header block.
    Passing(usize),
    /// A header block split over HEADERS and CONTINUATION frames.
    Block(PendingBlock),
}

struct PendingBlock {
    stream_id: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
}

impl<S> AnyAuthority<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            state: State::Preface,
            table: Table::default(),
            eof: false,
        }
    }

    /// Moves what `raw` holds through the state machine into `ready`.
    fn process(&mut self) {
        loop {
            match &mut self.state {
                State::Preface => {
                    if self.raw.len() < PREFACE_LEN {
                        return;
                    }
                    self.ready.put(self.raw.split_to(PREFACE_LEN));
                    self.state = State::FrameHeader;
                }
                State::Passing(left) => {
                    let n = (*left).min(self.raw.len());
                    self.ready.put(self.raw.split_to(n));
                    *left -= n;
                    if *left > 0 {
                        return;
                    }
                    self.state = State::FrameHeader;
                }
                State::FrameHeader | State::Block(_) => {
                    if self.raw.len() < FRAME_HEADER_LEN {
                        return;
                    }
                    let len = usize::from(self.raw[0]) << 16
                        | usize::from(self.raw[1]) << 8
                        | usize::from(self.raw[2]);
                    let kind = self.raw[3];
                    let in_block = matches!(self.state, State::Block(_));
                    if kind != HEADERS && !(in_block && kind == CONTINUATION) {
                        if in_block {
                            // Not what RFC 9113 allows: let h2 say so.
                            self.flush_block_raw();
                        }
                        self.ready.put(self.raw.split_to(FRAME_HEADER_LEN));
                        self.state = State::Passing(len);
                        continue;
                    }
                    if self.raw.len() < FRAME_HEADER_LEN + len {
                        return;
                    }
                    let header = self.raw.split_to(FRAME_HEADER_LEN);
                    let payload = self.raw.split_to(len);
                    self.take_header_frame(&header, payload);
                }
            }
        }
    }

    /// A HEADERS or CONTINUATION frame, whole.
    fn take_header_frame(&mut self, header: &[u8], mut payload: BytesMut) {
        let kind = header[3];
        let flags = header[4];
        let stream_id = [header[5], header[6], header[7], header[8]];
        if kind == HEADERS {
            if matches!(self.state, State::Block(_)) {
                self.flush_block_raw();
            }
            let mut priority = None;
            if flags & PADDED != 0 {
                let pad = payload.first().map_or(usize::MAX, |p| usize::from(*p));
                if pad >= payload.len() {
                    return self.pass_frame(header, payload);
                }
                payload.advance(1);
                payload.truncate(payload.len() - pad);
            }
            if flags & PRIORITY != 0 {
                if payload.len() < 5 {
                    return self.pass_frame(header, payload);
                }
                let mut p = [0; 5];
                p.copy_from_slice(&payload[..5]);
                priority = Some(p);
                payload.advance(5);
            }
            self.state = State::Block(PendingBlock {
                stream_id,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: payload,
            });
        } else if let State::Block(block) = &mut self.state {
            block.fragment.put(payload);
        }
        if flags & END_HEADERS != 0
            && let State::Block(block) = std::mem::replace(&mut self.state, State::FrameHeader)
        {
            let fragment = match rewrite_block(&block.fragment, &mut self.table) {
                Some(rewritten) => rewritten,
                None => block.fragment.to_vec(),
            };
            self.put_block(&block, &fragment, true);
        }
    }

    /// Passes a frame on as it came.
    fn pass_frame(&mut self, header: &[u8], payload: BytesMut) {
        self.ready.put(header);
        self.ready.put(payload);
    }

    /// Passes an unfinished block on as it is, without END_HEADERS.
    fn flush_block_raw(&mut self) {
        if let State::Block(block) = std::mem::replace(&mut self.state, State::FrameHeader) {
            let fragment = block.fragment.to_vec();
            self.put_block(&block, &fragment, false);
        }
    }

    /// Writes `fragment` as a HEADERS frame and as many CONTINUATION frames
    /// as the frame size needs.
    fn put_block(&mut self, block: &PendingBlock, fragment: &[u8], end_headers: bool) {
        let first_room = MAX_FRAME_LEN - block.priority.map_or(0, |p| p.len());
        let (first, mut rest) = fragment.split_at(fragment.len().min(first_room));
        let mut flags = if block.end_stream { END_STREAM } else { 0 };
        if block.priority.is_some() {
            flags |= PRIORITY;
        }
        if end_headers && rest.is_empty() {
            flags |= END_HEADERS;
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        self.put_frame(HEADERS, flags, block.stream_id, &[priority, first]);
        while !rest.is_empty() {
            let (chunk, more) = rest.split_at(rest.len().min(MAX_FRAME_LEN));
            rest = more;
            let flags = if end_headers && rest.is_empty() {
                END_HEADERS
            } else {
                0
            };
            self.put_frame(CONTINUATION, flags, block.stream_id, &[chunk]);
        }
    }

    fn put_frame(&mut self, kind: u8, flags: u8, stream_id: [u8; 4], parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.ready.put_uint(len as u64, 3);
        self.ready.put_u8(kind);
        self.ready.put_u8(flags);
        self.ready.put_slice(&stream_id);
        for part in parts {
            self.ready.put_slice(part);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // Whatever was left unfinished goes on as it is.
                this.flush_block_raw();
                if this.raw.is_empty() && this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                let rest = this.raw.split();
                this.ready.put(rest);
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.raw.put_slice(read.filled());
                this.process();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AnyAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// What the rewriter must know of the decoder's dynamic table: for each
/// entry, whether its name is `:authority`, and its size.
struct Table {
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
}

#[derive(Clone, Copy)]
struct Entry {
    authority: bool,
    name_len: usize,
    size: usize,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max: INITIAL_TABLE_SIZE,
        }
    }
}

impl Table {
    /// The name of index `index` (1-based, static then dynamic):
    /// whether it is `:authority`, and its length.
    fn name(&self, index: usize) -> Option<(bool, usize)> {
        match index {
            0 => None,
            1..=61 => Some((index == 1, STATIC_NAMES[index - 1].len())),
            _ => self
                .entries
                .get(index - 62)
                .map(|e| (e.authority, e.name_len)),
        }
    }

    /// RFC 7541 §4.4: evict from the oldest end until the entry fits.
    fn insert(&mut self, authority: bool, name_len: usize, value_len: usize) {
        let size = name_len + value_len + 32;
        while self.size + size > self.max {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
        if size <= self.max {
            self.entries.push_front(Entry {
                authority,
                name_len,
                size,
            });
            self.size += size;
        }
    }

    fn resize(&mut self, max: usize) {
        self.max = max;
        while self.size > self.max {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
    }
}

/// The header block with every invalid `:authority` value made valid, or
/// `None` if the block cannot be parsed (it is then passed on as is; h2
/// will reset the connection, as it would have).
fn rewrite_block(block: &[u8], table: &mut Table) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 16);
    let mut pos = 0;
    while pos < block.len() {
        let start = pos;
        let first = block[pos];
        if first & 0x80 != 0 {
            // Indexed field (§6.1): nothing to rewrite; an entry made from
            // an `:authority` literal was rewritten when it was inserted.
            read_int(block, &mut pos, 7)?;
            out.extend_from_slice(&block[start..pos]);
            continue;
        }
        if first & 0xe0 == 0x20 {
            // Dynamic table size update (§6.3).
            let max = read_int(block, &mut pos, 5)?;
            table.resize(max);
            out.extend_from_slice(&block[start..pos]);
            continue;
        }
        // Literal field (§6.2): with incremental indexing (01), without
        // indexing (0000) or never indexed (0001).
        let (prefix_bits, pattern, indexed) = if first & 0xc0 == 0x40 {
            (6, 0x40, true)
        } else {
            (4, first & 0xf0, false)
        };
        let index = read_int(block, &mut pos, prefix_bits)?;
        let (authority, name_len) = if index == 0 {
            let name = read_string(block, &mut pos)?;
            (name == b":authority", name.len())
        } else {
            table.name(index)?
        };
        let value = read_string(block, &mut pos)?;
        if indexed {
            table.insert(authority, name_len, value.len());
        }
        if authority && http::uri::Authority::try_from(value.as_slice()).is_err() {
            let fixed: Vec<u8> = value
                .iter()
                .map(|&b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => b,
                    _ => b'_',
                })
                .collect();
            write_int(&mut out, pattern, prefix_bits, index);
            if index == 0 {
                write_string(&mut out, b":authority");
            }
            write_string(&mut out, &fixed);
        } else {
            out.extend_from_slice(&block[start..pos]);
        }
    }
    Some(out)
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn read_int(block: &[u8], pos: &mut usize, n: u32) -> Option<usize> {
    let mask = (1usize << n) - 1;
    let mut value = usize::from(*block.get(*pos)?) & mask;
    *pos += 1;
    if value < mask {
        return Some(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *block.get(*pos)?;
        *pos += 1;
        value = value.checked_add(usize::from(b & 0x7f).checked_shl(shift)?)?;
        if b & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

fn write_int(out: &mut Vec<u8>, pattern: u8, n: u32, mut value: usize) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(pattern | value as u8);
        return;
    }
    out.push(pattern | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// An HPACK string literal (§5.2), Huffman-decoded when it is coded so.
fn read_string(block: &[u8], pos: &mut usize) -> Option<Vec<u8>> {
    let huffman = *block.get(*pos)? & 0x80 != 0;
    let len = read_int(block, pos, 7)?;
    let bytes = block.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    if huffman {
        huffman_decode(bytes)
    } else {
        Some(bytes.to_vec())
    }
}

/// A raw (not Huffman-coded) string literal.
fn write_string(out: &mut Vec<u8>, value: &[u8]) {
    write_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// Decodes the canonical Huffman code of RFC 7541 Appendix B. The padding
/// (at most 7 bits, all ones) is dropped.
fn huffman_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    static CODES: OnceLock<std::collections::HashMap<(u8, u32), u8>> = OnceLock::new();
    let codes = CODES.get_or_init(|| {
        (0..=255u8)
            .map(|sym| {
                let i = usize::from(sym);
                ((HUFFMAN_CODE_LENGTHS[i], HUFFMAN_CODES[i]), sym)
            })
            .collect()
    });
    let mut out = Vec::with_capacity(bytes.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0u8);
    for byte in bytes {
        for bit in (0..8).rev() {
            code = code << 1 | u32::from(byte >> bit & 1);
            len += 1;
            if let Some(&sym) = codes.get(&(len, code)) {
                out.push(sym);
                (code, len) = (0, 0);
            } else if len >= 30 {
                return None;
            }
        }
    }
    // What is left must be padding: fewer than 8 bits, all ones.
    (len < 8 && code == (1u32 << len) - 1).then_some(out)
}

/// The names of the HPACK static table (RFC 7541 Appendix A), by index - 1.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

// The Huffman code of RFC 7541 Appendix B: code and length of each byte.
const HUFFMAN_CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

const HUFFMAN_CODE_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A literal with incremental indexing of `:authority` (static index 1).
    fn authority_literal(value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_int(&mut out, 0x40, 6, 1);
        write_string(&mut out, value);
        out
    }

    #[test]
    fn huffman_strings_decode_as_rfc_7541_shows() {
        // RFC 7541 C.4.1 and C.4.2.
        assert_eq!(
            huffman_decode(&hex("f1e3c2e5f23a6ba0ab90f4ff")).unwrap(),
            b"www.example.com"
        );
        assert_eq!(huffman_decode(&hex("a8eb10649cbf")).unwrap(), b"no-cache");
        // Padding that is not all ones is an error.
        assert_eq!(huffman_decode(&hex("f1e3c2e5f23a6ba0ab90f400")), None);
    }

    #[test]
    fn integers_round_trip_past_their_prefix() {
        for value in [0, 30, 31, 62, 63, 127, 128, 1337, 70_000] {
            let mut out = Vec::new();
            write_int(&mut out, 0x40, 6, value);
            let mut pos = 0;
            assert_eq!(read_int(&out, &mut pos, 6), Some(value), "{value}");
            assert_eq!(pos, out.len());
        }
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix.
        let mut pos = 0;
        assert_eq!(read_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Some(1337));
    }

    #[test]
    fn an_invalid_authority_is_rewritten_to_the_same_length() {
        let mut table = Table::default();
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.extend(authority_literal(b"/run/ketch/ketch.sock"));
        let out = rewrite_block(&block, &mut table).unwrap();
        let mut expected = vec![0x83, 0x86];
        expected.extend(authority_literal(b"_run_ketch_ketch.sock"));
        assert_eq!(out, expected);
        // The entry is in the table with the same size either way, and
        // named `:authority`.
        assert_eq!(table.size, ":authority".len() + 21 + 32);
        assert_eq!(table.name(62), Some((true, ":authority".len())));

        // Percent forms, Huffman-coded ones and literal names too.
        for bad in [&b"unix:%2Frun%2Fketch.sock"[..], b"unix:///run/k.sock"] {
            let out = rewrite_block(&authority_literal(bad), &mut Table::default()).unwrap();
            let mut pos = 1;
            let value = read_string(&out, &mut pos).unwrap();
            assert_eq!(value.len(), bad.len());
            assert!(http::uri::Authority::try_from(value.as_slice()).is_ok());
        }
        let mut literal_name = vec![0x00];
        write_string(&mut literal_name, b":authority");
        write_string(&mut literal_name, b"a/b");
        let out = rewrite_block(&literal_name, &mut Table::default()).unwrap();
        assert!(out.ends_with(b"\x03a_b"), "{out:?}");
    }

    #[test]
    fn a_valid_authority_and_other_headers_pass_unchanged() {
        let mut table = Table::default();
        let mut block = vec![0x83, 0x86, 0x84];
        block.extend(authority_literal(b"localhost"));
        // content-type (static 31) as a literal with indexing, Huffman value.
        block.push(0x40 | 31);
        block.push(0x80 | 6);
        block.extend(hex("a8eb10649cbf"));
        block.push(0xbe); // index 62: the newest entry
        let out = rewrite_block(&block, &mut table).unwrap();
        assert_eq!(out, block);
        assert_eq!(table.entries.len(), 2);
        assert_eq!(table.name(62), Some((false, "content-type".len())));
        assert_eq!(table.name(63), Some((true, ":authority".len())));
    }

    #[test]
    fn the_table_evicts_as_the_decoder_does() {
        let mut table = Table::default();
        table.resize(100);
        table.insert(true, 10, 20); // 62 bytes
        table.insert(false, 10, 20); // evicts the first
        assert_eq!(table.entries.len(), 1);
        assert_eq!(table.name(62), Some((false, 10)));
        table.resize(0);
        assert_eq!(table.name(62), None);
    }

    #[tokio::test]
    async fn a_header_block_split_over_frames_comes_out_rewritten_and_data_unchanged() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut server = AnyAuthority::new(server);
        let mut block = vec![0x83, 0x86];
        block.extend(authority_literal(b"/run/ketch/ketch.sock"));
        let (a, b) = block.split_at(5);
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS, empty.
        wire.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        // HEADERS, PADDED (2 bytes of padding), no END_HEADERS.
        wire.extend([0, 0, (a.len() + 3) as u8, HEADERS, PADDED, 0, 0, 0, 1, 2]);
        wire.extend(a);
        wire.extend([0, 0]);
        wire.extend([0, 0, b.len() as u8, CONTINUATION, END_HEADERS, 0, 0, 0, 1]);
        wire.extend(b);
        // DATA, END_STREAM.
        wire.extend([0, 0, 3, 0x0, END_STREAM, 0, 0, 0, 1, 7, 8, 9]);
        client.write_all(&wire).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();

        let mut expected = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        expected.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let mut fixed = vec![0x83, 0x86];
        fixed.extend(authority_literal(b"_run_ketch_ketch.sock"));
        expected.extend([0, 0, fixed.len() as u8, HEADERS, END_HEADERS, 0, 0, 0, 1]);
        expected.extend(&fixed);
        expected.extend([0, 0, 3, 0x0, END_STREAM, 0, 0, 0, 1, 7, 8, 9]);
        assert_eq!(got, expected);
    }
}
