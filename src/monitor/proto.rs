//! The monitor's socket protocol: attach (output fan-out, stdin, resize)
//! and control (log reopen) on one unix stream socket per container. The
//! full description is `proto/monitor.md`.
//!
//! Every message is a frame: 1 byte kind, u32 big-endian payload length,
//! payload. A connection receives output only after it sends [`ATTACH`].

use std::io::{self, Read};

/// Client → monitor: subscribe to output. Payload: one flags byte
/// ([`ATTACH_STDIN`]), or empty.
pub const ATTACH: u8 = 0;
/// Monitor → client: container stdout bytes (all output when a tty).
pub const STDOUT: u8 = 1;
/// Monitor → client: container stderr bytes.
pub const STDERR: u8 = 2;
/// Client → monitor: bytes for the container's stdin.
pub const STDIN: u8 = 3;
/// Client → monitor: this client's stdin ended (closes the container's
/// stdin when the container is `stdin_once`).
pub const STDIN_CLOSE: u8 = 4;
/// Client → monitor: terminal size, u16 BE columns then u16 BE rows.
pub const RESIZE: u8 = 5;
/// Client → monitor: reopen the log file (after kubelet rotated it).
pub const REOPEN_LOG: u8 = 6;
/// Monitor → client: the last request succeeded.
pub const OK: u8 = 7;
/// Monitor → client: the last request failed; payload is the reason.
pub const ERROR: u8 = 8;
/// Monitor → client: the container exited; payload i32 BE exit code. The
/// monitor closes the connection after it.
pub const EXIT: u8 = 9;

/// [`ATTACH`] flag: this client sends stdin.
pub const ATTACH_STDIN: u8 = 1;

/// Largest payload accepted; a bigger frame is a protocol error.
pub const MAX_PAYLOAD: usize = 1 << 20;

pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    encode_into(&mut frame, kind, payload);
    frame
}

pub fn encode_into(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    buf.push(kind);
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("frame of {0} bytes is over the {MAX_PAYLOAD} byte limit")]
pub struct FrameTooLarge(pub usize);

/// Incremental decoder for a non-blocking reader.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, FrameTooLarge> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameTooLarge(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((kind, payload)))
    }
}

/// Blocking read of one frame; `None` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            FrameTooLarge(len),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// The payload of a [`RESIZE`] frame.
pub fn resize_payload(cols: u16, rows: u16) -> [u8; 4] {
    let c = cols.to_be_bytes();
    let r = rows.to_be_bytes();
    [c[0], c[1], r[0], r[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_decode_across_arbitrary_splits() {
        let mut wire = encode(STDOUT, b"hello");
        wire.extend(encode(RESIZE, &resize_payload(80, 24)));
        wire.extend(encode(EXIT, &3i32.to_be_bytes()));
        wire.extend(encode(OK, b""));
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for b in &wire {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![
                (STDOUT, b"hello".to_vec()),
                (RESIZE, vec![0, 80, 0, 24]),
                (EXIT, vec![0, 0, 0, 3]),
                (OK, vec![]),
            ]
        );
        let mut r = std::io::Cursor::new(wire);
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((STDOUT, b"hello".to_vec()))
        );
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut d = Decoder::default();
        d.push(&[STDIN, 0xff, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameTooLarge(0xff00_0000)));
        let mut r = std::io::Cursor::new(vec![STDIN, 0, 0x20, 0, 0]);
        assert!(read_frame(&mut r).is_err());
    }
}
