//! SPDY/3.1 frames and their wire codec.
//!
//! Every frame starts with 8 bytes. A control frame: `1 | version(15) |
//! type(16) | flags(8) | length(24)`; a data frame: `0 | stream-id(31) |
//! flags(8) | length(24)`. Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are
//! a count and length-prefixed name/value pairs, compressed with one zlib
//! stream per direction that lives as long as the connection, preset with
//! the SPDY dictionary and sync-flushed after each block.
//!
//! The codec is a [`tokio_util::codec`] decoder/encoder pair; each direction
//! of a connection owns its own instance since each owns a zlib stream.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio_util::codec::{Decoder, Encoder};

use super::dictionary::dictionary;

pub const VERSION: u16 = 3;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// FIN on control frames (SYN_STREAM, SYN_REPLY, HEADERS) and data frames.
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM: the sender will not receive on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// SETTINGS id of the initial per-stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// RST_STREAM status codes (SPDY/3 section 2.6.2).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// The largest payload the 24-bit length field allows.
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;
/// Decompressed header blocks larger than this are refused (a zlib bomb
/// would otherwise cost memory before anything checks it).
const MAX_HEADER_BLOCK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    #[error("SPDY header compression error: {0}")]
    Compression(String),
    #[error("SPDY connection I/O error: {0}")]
    Io(#[from] std::io::Error),
}

fn protocol(msg: impl Into<String>) -> FrameError {
    FrameError::Protocol(msg.into())
}

/// Header name/value pairs. Names are lowercase on the wire; several values
/// of one name travel NUL-separated in one value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        /// (flags, id, value)
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame type this implementation does not know (CREDENTIAL,
    /// NOOP of older drafts...). The specification says to ignore them.
    Unknown {
        frame_type: u16,
    },
}

/// One direction's header compressor (a single zlib stream for the whole
/// connection, as the specification requires).
pub struct HeaderCompressor {
    zlib: Compress,
}

impl HeaderCompressor {
    pub fn new() -> Result<Self, FrameError> {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(dictionary())
            .map_err(|e| FrameError::Compression(format!("preset dictionary: {e}")))?;
        Ok(Self { zlib })
    }

    /// Compresses one header block, ending with a sync flush so the peer can
    /// decode it without waiting for more.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let raw = encode_header_block(headers)?;
        let mut out = Vec::with_capacity(raw.len() / 2 + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before_in = self.zlib.total_in();
            let spare_before = out.capacity() - out.len();
            self.zlib
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            consumed += (self.zlib.total_in() - before_in) as usize;
            let produced = spare_before - (out.capacity() - out.len());
            // Done once all input is in and the flush did not fill the space
            // it had: zlib had nothing more to emit.
            if consumed == raw.len() && produced < spare_before {
                return Ok(out);
            }
        }
    }
}

/// One direction's header decompressor.
pub struct HeaderDecompressor {
    zlib: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }
}

impl HeaderDecompressor {
    pub fn decompress(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let mut out: Vec<u8> = Vec::with_capacity(block.len() * 4 + 128);
        let mut consumed = 0usize;
        loop {
            if out.len() > MAX_HEADER_BLOCK {
                return Err(FrameError::Compression(format!(
                    "header block larger than {MAX_HEADER_BLOCK} bytes"
                )));
            }
            if out.capacity() - out.len() < 128 {
                out.reserve(out.capacity().max(256));
            }
            let before_in = self.zlib.total_in();
            let spare_before = out.capacity() - out.len();
            let result =
                self.zlib
                    .decompress_vec(&block[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.zlib.total_in() - before_in) as usize;
            let produced = spare_before - (out.capacity() - out.len());
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(FrameError::Compression(
                        "peer ended its header compression stream".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(_) => {
                        self.zlib
                            .set_dictionary(dictionary())
                            .map_err(|e| FrameError::Compression(e.to_string()))?;
                        continue;
                    }
                    None => return Err(FrameError::Compression(e.to_string())),
                },
            }
            if consumed == block.len() && produced < spare_before {
                break;
            }
            if produced == 0 && consumed < block.len() && before_in == self.zlib.total_in() {
                return Err(FrameError::Compression(
                    "decompressor made no progress".into(),
                ));
            }
        }
        decode_header_block(&out)
    }
}

fn encode_header_block(headers: &Headers) -> Result<Vec<u8>, FrameError> {
    // Values of a repeated name are joined with NUL into one pair.
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, value) in &headers.0 {
        let name = name.to_ascii_lowercase();
        match pairs.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(0);
                v.extend_from_slice(value.as_bytes());
            }
            None => pairs.push((name, value.as_bytes().to_vec())),
        }
    }
    let len32 =
        |n: usize| u32::try_from(n).map_err(|_| protocol("header block too large to encode"));
    let mut raw = Vec::new();
    raw.put_u32(len32(pairs.len())?);
    for (name, value) in &pairs {
        raw.put_u32(len32(name.len())?);
        raw.put_slice(name.as_bytes());
        raw.put_u32(len32(value.len())?);
        raw.put_slice(value);
    }
    Ok(raw)
}

fn decode_header_block(mut raw: &[u8]) -> Result<Headers, FrameError> {
    fn take<'a>(raw: &mut &'a [u8], what: &str) -> Result<&'a [u8], FrameError> {
        if raw.len() < 4 {
            return Err(protocol(format!("header block truncated in {what} length")));
        }
        let len = raw.get_u32() as usize;
        if raw.len() < len {
            return Err(protocol(format!("header block truncated in {what}")));
        }
        let (value, rest) = raw.split_at(len);
        *raw = rest;
        Ok(value)
    }
    if raw.len() < 4 {
        return Err(protocol("header block shorter than its count"));
    }
    let count = raw.get_u32();
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = take(&mut raw, "name")?;
        let value = take(&mut raw, "value")?;
        if name.is_empty() {
            return Err(protocol("empty header name"));
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        for part in value.split(|&b| b == 0) {
            headers.push((name.clone(), String::from_utf8_lossy(part).into_owned()));
        }
    }
    Ok(Headers(headers))
}

/// Decodes frames from the peer.
#[derive(Default)]
pub struct FrameDecoder {
    headers: HeaderDecompressor,
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 8 {
            return Ok(None);
        }
        let length = (usize::from(src[5]) << 16) | (usize::from(src[6]) << 8) | usize::from(src[7]);
        if src.len() < 8 + length {
            src.reserve(8 + length - src.len());
            return Ok(None);
        }
        let mut head = src.split_to(8);
        let payload = src.split_to(length).freeze();
        let word = head.get_u32();
        let flags = head.get_u8();
        if word & 0x8000_0000 == 0 {
            let stream_id = word & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(protocol("data frame on stream 0"));
            }
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(protocol(format!("unsupported SPDY version {version}")));
        }
        let frame_type = (word & 0xffff) as u16;
        self.control(frame_type, flags, payload).map(Some)
    }
}

impl FrameDecoder {
    fn control(&mut self, frame_type: u16, flags: u8, mut p: Bytes) -> Result<Frame, FrameError> {
        let need = |p: &Bytes, n: usize, what: &str| {
            if p.len() < n {
                Err(protocol(format!(
                    "{what} frame too short ({} bytes)",
                    p.len()
                )))
            } else {
                Ok(())
            }
        };
        Ok(match frame_type {
            TYPE_SYN_STREAM => {
                need(&p, 10, "SYN_STREAM")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated_to = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let _slot = p.get_u8();
                // Decompress even a stream we will refuse: the zlib stream
                // must see every block to stay in step.
                let headers = self.headers.decompress(&p)?;
                if stream_id == 0 {
                    return Err(protocol("SYN_STREAM for stream 0"));
                }
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY => {
                need(&p, 4, "SYN_REPLY")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let headers = self.headers.decompress(&p)?;
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            }
            TYPE_HEADERS => {
                need(&p, 4, "HEADERS")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let headers = self.headers.decompress(&p)?;
                Frame::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
            TYPE_RST_STREAM => {
                need(&p, 8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need(&p, 4, "SETTINGS")?;
                let count = p.get_u32() as usize;
                if p.len() / 8 < count {
                    return Err(protocol("SETTINGS frame shorter than its entry count"));
                }
                let entries = (0..count)
                    .map(|_| {
                        let id = p.get_u32();
                        ((id >> 24) as u8, id & 0x00ff_ffff, p.get_u32())
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                need(&p, 4, "PING")?;
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                need(&p, 4, "GOAWAY")?;
                let last_good_stream_id = p.get_u32() & 0x7fff_ffff;
                // SPDY/2 had no status; accept its absence.
                let status = if p.len() >= 4 {
                    p.get_u32()
                } else {
                    goaway::OK
                };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(&p, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        })
    }
}

/// Encodes frames for the peer.
pub struct FrameEncoder {
    headers: HeaderCompressor,
}

impl FrameEncoder {
    pub fn new() -> Result<Self, FrameError> {
        Ok(Self {
            headers: HeaderCompressor::new()?,
        })
    }
}

fn put_control(dst: &mut BytesMut, frame_type: u16, flags: u8, payload: &[u8]) {
    dst.reserve(8 + payload.len());
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(frame_type);
    dst.put_u8(flags);
    // Callers keep payloads under MAX_PAYLOAD (checked in `encode`).
    dst.put_uint(payload.len() as u64, 3);
    dst.put_slice(payload);
}

impl Encoder<Frame> for FrameEncoder {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let mut p = Vec::new();
        let (frame_type, flags) = match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(protocol("data frame payload exceeds 24 bits"));
                }
                dst.reserve(8 + data.len());
                dst.put_u32(stream_id & 0x7fff_ffff);
                dst.put_u8(flags);
                dst.put_uint(data.len() as u64, 3);
                dst.put_slice(&data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(associated_to & 0x7fff_ffff);
                p.put_u8((priority & 0x07) << 5);
                p.put_u8(0);
                p.extend_from_slice(&self.headers.compress(&headers)?);
                (TYPE_SYN_STREAM, flags)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                p.put_u32(stream_id & 0x7fff_ffff);
                p.extend_from_slice(&self.headers.compress(&headers)?);
                (TYPE_SYN_REPLY, flags)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                p.put_u32(stream_id & 0x7fff_ffff);
                p.extend_from_slice(&self.headers.compress(&headers)?);
                (TYPE_HEADERS, flags)
            }
            Frame::RstStream { stream_id, status } => {
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(status);
                (TYPE_RST_STREAM, 0)
            }
            Frame::Settings { flags, entries } => {
                p.put_u32(entries.len() as u32);
                for (entry_flags, id, value) in entries {
                    p.put_u32((u32::from(entry_flags) << 24) | (id & 0x00ff_ffff));
                    p.put_u32(value);
                }
                (TYPE_SETTINGS, flags)
            }
            Frame::Ping { id } => {
                p.put_u32(id);
                (TYPE_PING, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                p.put_u32(last_good_stream_id & 0x7fff_ffff);
                p.put_u32(status);
                (TYPE_GOAWAY, 0)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(delta & 0x7fff_ffff);
                (TYPE_WINDOW_UPDATE, 0)
            }
            Frame::Unknown { frame_type } => {
                return Err(protocol(format!(
                    "cannot encode unknown frame type {frame_type}"
                )));
            }
        };
        if p.len() > MAX_PAYLOAD {
            return Err(protocol("control frame payload exceeds 24 bits"));
        }
        put_control(dst, frame_type, flags, &p);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(frame: Frame) -> Vec<u8> {
        let mut enc = FrameEncoder::new().unwrap();
        let mut buf = BytesMut::new();
        enc.encode(frame, &mut buf).unwrap();
        buf.to_vec()
    }

    fn decode_all(bytes: &[u8]) -> Vec<Frame> {
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty(), "trailing bytes");
        frames
    }

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        Headers(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn data_frame_bytes() {
        let bytes = encode(Frame::Data {
            stream_id: 5,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"hi"),
        });
        assert_eq!(bytes, [0, 0, 0, 5, 1, 0, 0, 2, b'h', b'i']);
        assert_eq!(
            decode_all(&bytes),
            [Frame::Data {
                stream_id: 5,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hi")
            }]
        );
    }

    #[test]
    fn fixed_control_frame_bytes() {
        let cases: Vec<(Frame, Vec<u8>)> = vec![
            (
                Frame::RstStream {
                    stream_id: 3,
                    status: rst::CANCEL,
                },
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 5],
            ),
            (
                Frame::Ping { id: 7 },
                vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7],
            ),
            (
                Frame::GoAway {
                    last_good_stream_id: 9,
                    status: goaway::OK,
                },
                vec![0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 0],
            ),
            (
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta: 0x10000,
                },
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 1, 0, 0],
            ),
            (
                Frame::Settings {
                    flags: 0,
                    entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 0x4000)],
                },
                vec![
                    0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0x40, 0,
                ],
            ),
        ];
        for (frame, bytes) in cases {
            assert_eq!(encode(frame.clone()), bytes, "{frame:?}");
            assert_eq!(decode_all(&bytes), [frame]);
        }
    }

    #[test]
    fn settings_flags_live_in_the_top_byte_of_the_id() {
        let bytes = [
            0x80, 3, 0, 4, 1, 0, 0, 12, 0, 0, 0, 1, 0x01, 0, 0, 4, 0, 0, 0, 100,
        ];
        assert_eq!(
            decode_all(&bytes),
            [Frame::Settings {
                flags: 1,
                entries: vec![(1, 4, 100)]
            }]
        );
    }

    #[test]
    fn syn_stream_header_block_is_zlib_with_the_spdy_dictionary() {
        let frame = Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: headers(&[("streamtype", "error")]),
        };
        let bytes = encode(frame.clone());
        assert_eq!(&bytes[..4], [0x80, 3, 0, 1]);
        assert_eq!(bytes[4], 0, "flags");
        let len =
            (usize::from(bytes[5]) << 16) | (usize::from(bytes[6]) << 8) | usize::from(bytes[7]);
        assert_eq!(len, bytes.len() - 8);
        assert_eq!(&bytes[8..18], [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        // zlib header with FDICT set, then the dictionary's Adler-32.
        let zlib = &bytes[18..];
        assert_eq!(zlib[0] & 0x0f, 8, "deflate");
        assert_ne!(zlib[1] & 0x20, 0, "FDICT");
        assert_eq!(&zlib[2..6], [0xe3, 0xc6, 0xa7, 0xc2]);
        // A sync flush ends with an empty stored block.
        assert!(zlib.ends_with(&[0, 0, 0xff, 0xff]));
        // And a plain zlib inflater with the dictionary reads the block.
        let mut inflate = Decompress::new(true);
        let mut out = Vec::with_capacity(256);
        let err = inflate
            .decompress_vec(zlib, &mut out, FlushDecompress::Sync)
            .unwrap_err();
        assert_eq!(err.needs_dictionary(), Some(0xe3c6_a7c2));
        inflate.set_dictionary(dictionary()).unwrap();
        let used = inflate.total_in() as usize;
        inflate
            .decompress_vec(&zlib[used..], &mut out, FlushDecompress::Sync)
            .unwrap();
        let mut expected = vec![0, 0, 0, 1, 0, 0, 0, 10];
        expected.extend_from_slice(b"streamtype");
        expected.extend_from_slice(&[0, 0, 0, 5]);
        expected.extend_from_slice(b"error");
        assert_eq!(out, expected);
        assert_eq!(decode_all(&bytes), [frame]);
    }

    #[test]
    fn header_blocks_share_one_zlib_stream_per_direction() {
        let mut enc = FrameEncoder::new().unwrap();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for (i, kind) in ["error", "stdin", "stdout", "stderr", "resize"]
            .iter()
            .enumerate()
        {
            let frame = Frame::SynStream {
                stream_id: 2 * i as u32 + 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: headers(&[("streamtype", kind), ("port", "8080")]),
            };
            enc.encode(frame.clone(), &mut buf).unwrap();
            frames.push(frame);
        }
        frames.push(Frame::SynReply {
            stream_id: 11,
            flags: FLAG_FIN,
            headers: Headers::default(),
        });
        enc.encode(frames[5].clone(), &mut buf).unwrap();
        assert_eq!(decode_all(&buf), frames);
    }

    #[test]
    fn repeated_header_names_travel_nul_joined() {
        let frame = Frame::SynReply {
            stream_id: 1,
            flags: 0,
            headers: headers(&[("x-a", "1"), ("x-a", "2")]),
        };
        assert_eq!(decode_all(&encode(frame.clone())), [frame]);
    }

    #[test]
    fn partial_input_waits_for_more() {
        let bytes = encode(Frame::Ping { id: 1 });
        let mut dec = FrameDecoder::default();
        let mut buf = BytesMut::from(&bytes[..5]);
        assert!(dec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&bytes[5..]);
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(Frame::Ping { id: 1 }));
    }

    #[test]
    fn unknown_control_frames_are_skipped_not_fatal() {
        // CREDENTIAL (type 10) with a 2-byte payload, then a PING.
        let mut bytes = vec![0x80, 3, 0, 10, 0, 0, 0, 2, 0xaa, 0xbb];
        bytes.extend_from_slice(&encode(Frame::Ping { id: 3 }));
        assert_eq!(
            decode_all(&bytes),
            [Frame::Unknown { frame_type: 10 }, Frame::Ping { id: 3 }]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut dec = FrameDecoder::default();
        // SPDY/2 control frame.
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(dec.decode(&mut buf).is_err());
        // Truncated RST_STREAM.
        let mut buf = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(FrameDecoder::default().decode(&mut buf).is_err());
        // Garbage header block.
        let mut buf = BytesMut::from(&[0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4][..]);
        assert!(FrameDecoder::default().decode(&mut buf).is_err());
        // Data on stream 0.
        let mut buf = BytesMut::from(&[0, 0, 0, 0, 0, 0, 0, 0][..]);
        assert!(FrameDecoder::default().decode(&mut buf).is_err());
    }

    #[test]
    fn large_header_blocks_round_trip() {
        let big = "x".repeat(100_000);
        let frame = Frame::Headers {
            stream_id: 1,
            flags: 0,
            headers: headers(&[("big", &big)]),
        };
        assert_eq!(decode_all(&encode(frame.clone())), [frame]);
    }
}
