//! Test support for the streaming server: a backend that runs real host
//! processes (a stand-in for a container), a minimal SPDY/3.1 client of our
//! own, raw HTTP helpers, and a throw-away network namespace.

#![allow(dead_code)]

pub mod backend;
pub mod http;
pub mod netns;
pub mod spdy_client;

use std::sync::Arc;
use std::time::Duration;

use ketch::config::StreamingConfig;
use ketch::streaming::{StreamingServer, Tunables};

pub use backend::HostBackend;

pub async fn start(backend: Arc<HostBackend>, ttl_secs: u64) -> StreamingServer {
    let config = StreamingConfig {
        address: "127.0.0.1".into(),
        port: 0,
        token_ttl_secs: ttl_secs,
    };
    let tunables = Tunables {
        stream_creation_timeout: Duration::from_secs(5),
        cancel_grace: Duration::from_secs(3),
        header_read_timeout: Duration::from_secs(5),
    };
    StreamingServer::start_with(&config, backend, tunables)
        .await
        .expect("start streaming server")
}

/// Polls `cond` every 50 ms for up to `secs`.
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

/// Whether a process with this pid still exists (zombies count as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}
