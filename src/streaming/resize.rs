//! Terminal resize events: a stream of JSON objects
//! (`{"Width":80,"Height":24}`) with no separator, as Go's `json.Encoder`
//! writes them, decoded as they arrive and handed on in order.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::backend::TerminalSize;

/// Longest partial object kept while waiting for its end.
const MAX_PENDING: usize = 4096;

/// Reads resize events from `input` until EOF or malformed input (kubelet
/// stops there too) and sends them to `tx`.
pub async fn pump<R: AsyncRead + Unpin>(mut input: R, tx: mpsc::Sender<TerminalSize>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match input.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let (sizes, consumed, malformed) = decode(&buf);
        buf.drain(..consumed);
        for size in sizes {
            if tx.send(size).await.is_err() {
                return;
            }
        }
        if malformed || buf.len() > MAX_PENDING {
            tracing::debug!("malformed terminal resize stream; ignoring the rest");
            return;
        }
    }
}

/// Decodes the complete objects at the start of `buf`: the sizes, how many
/// bytes they took, and whether what follows is not JSON.
fn decode(buf: &[u8]) -> (Vec<TerminalSize>, usize, bool) {
    let mut sizes = Vec::new();
    let mut iter = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    let mut consumed = 0;
    loop {
        match iter.next() {
            Some(Ok(size)) => {
                sizes.push(size);
                consumed = iter.byte_offset();
            }
            Some(Err(e)) if e.is_eof() => return (sizes, consumed, false),
            Some(Err(_)) => return (sizes, consumed, true),
            None => return (sizes, iter.byte_offset(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(width: u16, height: u16) -> TerminalSize {
        TerminalSize { width, height }
    }

    #[test]
    fn decodes_concatenated_and_partial_objects() {
        let input = br#"{"Width":80,"Height":24}{"Width":100,"Height":50}
{"width":1,"height":2}{"Width":3"#;
        let (sizes, consumed, bad) = decode(input);
        assert_eq!(sizes, vec![ts(80, 24), ts(100, 50), ts(1, 2)]);
        assert!(!bad);
        assert_eq!(&input[consumed..], br#"{"Width":3"#);
        let (_, _, bad) = decode(b"]]");
        assert!(bad);
    }

    #[tokio::test]
    async fn pump_splits_across_reads() {
        let (mut w, r) = tokio::io::duplex(64);
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(pump(r, tx));
        use tokio::io::AsyncWriteExt;
        w.write_all(br#"{"Width":12,"#).await.unwrap();
        w.write_all(br#""Height":34}"#).await.unwrap();
        assert_eq!(rx.recv().await, Some(ts(12, 34)));
        drop(w);
        task.await.unwrap();
        assert_eq!(rx.recv().await, None);
    }
}
