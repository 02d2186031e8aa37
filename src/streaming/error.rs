//! Errors of the streaming server's public API.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The request's shape is wrong (maps to gRPC InvalidArgument).
    #[error("invalid streaming request: {0}")]
    InvalidRequest(String),
    /// Too many URLs handed out and not yet used (maps to ResourceExhausted).
    #[error("too many streaming requests in flight ({0}); retry later")]
    TooManyRequests(usize),
    #[error("cannot generate a streaming token: {0}")]
    Random(String),
    #[error("invalid streaming address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("cannot listen on {addr} for the streaming server: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}
