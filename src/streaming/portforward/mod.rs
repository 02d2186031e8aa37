//! Port forwarding: sessions over SPDY and WebSocket, and the connection to
//! a port inside a pod's network namespace.

pub mod spdy;
pub mod websocket;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::CloneFlags;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How long a connect to a pod's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on the loopback of the network namespace pinned at
/// `netns` (e.g. `/run/ketch/pods/<id>/ns/net`), or of the host's namespace
/// when `None` (host-network pods). IPv4 loopback is tried first, then IPv6,
/// as `localhost` resolves for containerd and CRI-O.
///
/// A socket stays in the namespace it was created in, so a short-lived
/// thread enters the namespace, connects, and hands the socket back; no
/// thread of the runtime ever changes namespace.
pub async fn connect_in_netns(netns: Option<&Path>, port: u16) -> io::Result<TcpStream> {
    let Some(netns) = netns else {
        return connect_loopback_async(port).await;
    };
    let netns: PathBuf = netns.to_owned();
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("ketch-netns-connect".into())
        .spawn(move || {
            let _ = tx.send(connect_in(&netns, port));
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("network namespace connect thread died"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

fn connect_in(netns: &Path, port: u16) -> io::Result<std::net::TcpStream> {
    let context = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("{what} network namespace {}: {e}", netns.display()),
        )
    };
    let file = std::fs::File::open(netns).map_err(|e| context("cannot open", e))?;
    // Only this thread moves; it ends right after the connect.
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| context("cannot enter", io::Error::from(e)))?;
    let mut last = None;
    for ip in loopbacks() {
        match std::net::TcpStream::connect_timeout(&SocketAddr::new(ip, port), CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no loopback address")))
}

async fn connect_loopback_async(port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for ip in loopbacks() {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((ip, port))).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = Some(e),
            Err(_) => last = Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no loopback address")))
}

fn loopbacks() -> [IpAddr; 2] {
    [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ]
}
