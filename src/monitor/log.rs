//! The CRI container log format, as kubelet reads it:
//!
//! ```text
//! <RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>\n
//! ```
//!
//! A line is written once its newline arrives (`F`, full). A line longer
//! than [`MAX_RECORD`] bytes is cut into `P` (partial) records of that size
//! and a final `F`; output still without a newline when the container exits
//! is flushed as `F` by [`CriLog::flush_partial`]. Each record is one
//! `write` to an `O_APPEND` file, so a concurrent reader never sees half a
//! record.

use std::io::{self, Write};
use std::time::SystemTime;

use crate::clock::rfc3339_nano;

/// Longest content of one record (kubelet's and containerd's 16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Turns a container's output into CRI log records.
pub struct CriLog<W: Write> {
    out: W,
    /// The unterminated tail of each stream, shorter than [`MAX_RECORD`].
    pending: [Vec<u8>; 2],
}

impl<W: Write> CriLog<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            pending: [Vec::new(), Vec::new()],
        }
    }

    /// Replaces the output (a reopened log file) and returns the old one.
    /// Pending partial lines stay, so nothing is lost across a rotation.
    pub fn replace_output(&mut self, out: W) -> W {
        std::mem::replace(&mut self.out, out)
    }

    /// Writes `data` read from `stream` at `now`. On an I/O error the
    /// records of this call that failed are lost; later calls carry on.
    pub fn write(&mut self, stream: Stream, data: &[u8], now: SystemTime) -> io::Result<()> {
        let ts = rfc3339_nano(now);
        let mut records = Vec::new();
        let mut pending = std::mem::take(&mut self.pending[stream as usize]);
        let mut rest = data;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    pending.extend_from_slice(&rest[..i]);
                    rest = &rest[i + 1..];
                    // "\r\n" ends a line as "\n" does: a terminal's
                    // output discipline (ONLCR) writes it, and containerd
                    // (Go's bufio ReadLine) drops both bytes too.
                    if pending.last() == Some(&b'\r') {
                        pending.pop();
                    }
                    let mut line = pending.as_slice();
                    while line.len() > MAX_RECORD {
                        record(&mut records, &ts, stream, b'P', &line[..MAX_RECORD]);
                        line = &line[MAX_RECORD..];
                    }
                    record(&mut records, &ts, stream, b'F', line);
                    pending.clear();
                }
                None => {
                    pending.extend_from_slice(rest);
                    rest = &[];
                    while pending.len() >= MAX_RECORD {
                        record(&mut records, &ts, stream, b'P', &pending[..MAX_RECORD]);
                        pending.drain(..MAX_RECORD);
                    }
                }
            }
        }
        self.pending[stream as usize] = pending;
        if records.is_empty() {
            return Ok(());
        }
        self.out.write_all(&records)
    }

    /// Writes each stream's unterminated tail as a full line: the container
    /// is gone and will not finish it.
    pub fn flush_partial(&mut self, now: SystemTime) -> io::Result<()> {
        let ts = rfc3339_nano(now);
        let mut records = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(&mut self.pending[stream as usize]);
            if !pending.is_empty() {
                record(&mut records, &ts, stream, b'F', &pending);
            }
        }
        if !records.is_empty() {
            self.out.write_all(&records)?;
        }
        self.out.flush()
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }
}

fn record(buf: &mut Vec<u8>, ts: &str, stream: Stream, tag: u8, content: &[u8]) {
    buf.extend_from_slice(ts.as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(stream.name().as_bytes());
    buf.push(b' ');
    buf.push(tag);
    buf.push(b' ');
    buf.extend_from_slice(content);
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const TS: &str = "2024-05-01T12:34:56.000000001Z";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_714_566_896, 1)
    }

    fn lines(log: &CriLog<Vec<u8>>) -> Vec<String> {
        String::from_utf8(log.get_ref().clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn full_lines_across_reads() {
        let mut log = CriLog::new(Vec::new());
        log.write(Stream::Stdout, b"hel", now()).unwrap();
        assert!(log.get_ref().is_empty());
        log.write(Stream::Stdout, b"lo\nworld\n", now()).unwrap();
        log.write(Stream::Stderr, b"oops\n\n", now()).unwrap();
        assert_eq!(
            lines(&log),
            vec![
                format!("{TS} stdout F hello"),
                format!("{TS} stdout F world"),
                format!("{TS} stderr F oops"),
                format!("{TS} stderr F "),
            ]
        );
    }

    #[test]
    fn a_terminal_line_end_is_dropped_whole() {
        let mut log = CriLog::new(Vec::new());
        // As a pty delivers `tty` output, the \r and the \n apart.
        log.write(Stream::Stdout, b"/dev/pts/0\r", now()).unwrap();
        log.write(Stream::Stdout, b"\nx\ry\r\n", now()).unwrap();
        assert_eq!(
            log.get_ref().as_slice(),
            format!("{TS} stdout F /dev/pts/0\n{TS} stdout F x\ry\n").as_bytes()
        );
    }

    #[test]
    fn long_lines_split_into_partials() {
        let mut log = CriLog::new(Vec::new());
        let mut data = vec![b'a'; MAX_RECORD * 2 + 10];
        data.push(b'\n');
        // Fed in odd chunks, as a pipe delivers it.
        for chunk in data.chunks(7000) {
            log.write(Stream::Stdout, chunk, now()).unwrap();
        }
        let got = lines(&log);
        assert_eq!(got.len(), 3);
        let a16 = "a".repeat(MAX_RECORD);
        assert_eq!(got[0], format!("{TS} stdout P {a16}"));
        assert_eq!(got[1], format!("{TS} stdout P {a16}"));
        assert_eq!(got[2], format!("{TS} stdout F {}", "a".repeat(10)));
    }

    #[test]
    fn unterminated_tail_is_flushed_full() {
        let mut log = CriLog::new(Vec::new());
        log.write(Stream::Stderr, b"no newline", now()).unwrap();
        log.flush_partial(now()).unwrap();
        assert_eq!(lines(&log), vec![format!("{TS} stderr F no newline")]);
        log.flush_partial(now()).unwrap();
        assert_eq!(lines(&log).len(), 1);
    }

    #[test]
    fn replacing_the_output_keeps_the_pending_line() {
        let mut log = CriLog::new(Vec::new());
        log.write(Stream::Stdout, b"one\ntw", now()).unwrap();
        let old = log.replace_output(Vec::new());
        log.write(Stream::Stdout, b"o\n", now()).unwrap();
        assert_eq!(
            String::from_utf8(old).unwrap(),
            format!("{TS} stdout F one\n")
        );
        assert_eq!(lines(&log), vec![format!("{TS} stdout F two")]);
    }
}
