//! SPDY/3.1, as far as Kubernetes streaming needs it: the server side of a
//! connection whose streams the client opens (exec/attach stdio, resize,
//! error; port-forward data/error pairs).
//!
//! Written here rather than taken from the `spdystream-rs` crate (0.1.2),
//! which was evaluated first and failed our tests:
//! - a stream's inbound queue is a bounded channel fed with `try_send`, so
//!   data from a client that writes faster than the stream is read is
//!   silently dropped (204 800 bytes sent to a slow reader, 65 536 arrived);
//! - no flow control: WINDOW_UPDATE is ignored and never sent;
//! - `AsyncRead` is implemented on `Stream` but handlers only get an
//!   `Arc<Stream>`, so it cannot be used, and writes that find the queue
//!   full re-wake themselves in a busy loop;
//! - streams closed by FIN are never removed from the connection's map, an
//!   unknown control frame type or RST status ends the whole connection, and
//!   a header block that inflates past 4x its size is silently truncated.
//!
//! `frame` is the byte-exact codec (unit-tested against the specification's
//! layouts), `dictionary` the zlib preset dictionary, `conn` the multiplexer.

pub mod conn;
pub mod dictionary;
pub mod frame;

pub use conn::{Connection, RecvHalf, SendHalf, Stream};
pub use frame::{Frame, FrameDecoder, FrameEncoder, FrameError, Headers};
