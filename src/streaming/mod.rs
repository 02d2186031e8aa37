//! The streaming server: the HTTP endpoint behind the CRI `Exec`, `Attach`
//! and `PortForward` RPCs.
//!
//! The RPCs validate the request and return a URL on this server with a
//! single-use token that expires after `streaming.token_ttl_secs`; the
//! client (kubelet, crictl) then connects and upgrades to SPDY/3.1 or
//! WebSocket:
//!
//! | path | SPDY `X-Stream-Protocol-Version` | WebSocket subprotocol |
//! | --- | --- | --- |
//! | `/exec/<token>`, `/attach/<token>` | `v5`/`v4`/`v3`/`v2.channel.k8s.io`, `channel.k8s.io` | `v5`/`v4.channel.k8s.io`, `channel.k8s.io` |
//! | `/portforward/<token>` | `portforward.k8s.io` | `v4.channel.k8s.io`, `portforward.k8s.io` |
//!
//! The processes and connections behind a session come from a
//! [`StreamBackend`], so this module knows nothing of containers.
//!
//! Files: `server` (HTTP, handshakes), `token` (the URL cache), `spdy` (our
//! SPDY/3.1 implementation; its doc says why it is ours), `wschannel` (the
//! WebSocket channel framing), `remotecommand` (exec/attach sessions),
//! `portforward` (port-forward sessions, `connect_in_netns`), `status` (the
//! exit status JSON), `resize` (terminal size events).

pub mod backend;
pub mod error;
pub mod portforward;
pub(crate) mod remotecommand;
pub mod request;
pub(crate) mod resize;
pub(crate) mod server;
pub(crate) mod session;
pub mod spdy;
pub(crate) mod status;
pub(crate) mod token;
pub(crate) mod wschannel;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use backend::{
    BackendError, Duplex, ForwardedConn, InputStream, OutputStream, StreamBackend, StreamIo,
    TerminalSize,
};
pub use error::StreamError;
pub use portforward::connect_in_netns;
pub use request::{AttachRequest, ExecRequest, PortForwardRequest};

use crate::config::StreamingConfig;
use session::SessionCtx;
use token::{CachedRequest, TokenCache};

/// Timings that are not in the config file (kubelet's defaults).
#[derive(Debug, Clone)]
pub struct Tunables {
    /// How long a client may take to open the streams of a session.
    pub stream_creation_timeout: Duration,
    /// How long a cancelled backend call or a last flush may take.
    pub cancel_grace: Duration,
    /// How long a client may take to send its request headers.
    pub header_read_timeout: Duration,
}

impl Default for Tunables {
    fn default() -> Self {
        Self {
            stream_creation_timeout: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

pub(crate) struct Inner {
    tokens: TokenCache,
    backend: Arc<dyn StreamBackend>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
    tunables: Tunables,
}

impl Inner {
    fn session_ctx(&self) -> SessionCtx {
        SessionCtx {
            backend: self.backend.clone(),
            cancel: self.shutdown.child_token(),
            stream_creation_timeout: self.tunables.stream_creation_timeout,
            cancel_grace: self.tunables.cancel_grace,
        }
    }
}

/// A running streaming server. Dropping it stops accepting connections and
/// cancels every session.
pub struct StreamingServer {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
    /// `http://host:port` as URLs name it.
    base_url: String,
    accept_task: JoinHandle<()>,
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
        self.accept_task.abort();
    }
}

impl StreamingServer {
    /// Binds `config.address:config.port` (port 0 picks a free one) and
    /// starts serving.
    pub async fn start(
        config: &StreamingConfig,
        backend: Arc<dyn StreamBackend>,
    ) -> Result<Self, StreamError> {
        Self::start_with(config, backend, Tunables::default()).await
    }

    pub async fn start_with(
        config: &StreamingConfig,
        backend: Arc<dyn StreamBackend>,
        tunables: Tunables,
    ) -> Result<Self, StreamError> {
        let ip: IpAddr = config.address.parse().map_err(|e| StreamError::Address {
            address: config.address.clone(),
            reason: format!("{e}"),
        })?;
        let addr = SocketAddr::new(ip, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StreamError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StreamError::Bind { addr, source })?;
        // A wildcard bind still needs a concrete address in URLs; the
        // client (kubelet) runs on this host.
        let url_ip = match local_addr.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            other => other,
        };
        let base_url = format!("http://{}", SocketAddr::new(url_ip, local_addr.port()));
        let inner = Arc::new(Inner {
            tokens: TokenCache::new(Duration::from_secs(config.token_ttl_secs)),
            backend,
            sessions: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            tunables,
        });
        let accept_task = tokio::spawn(accept_loop(inner.clone(), listener));
        tracing::info!(address = %local_addr, "streaming server listening");
        Ok(Self {
            inner,
            local_addr,
            base_url,
            accept_task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn get_exec_url(&self, req: &ExecRequest) -> Result<String, StreamError> {
        req.validate()?;
        self.url("exec", CachedRequest::Exec(req.clone()))
    }

    pub fn get_attach_url(&self, req: &AttachRequest) -> Result<String, StreamError> {
        req.validate()?;
        self.url("attach", CachedRequest::Attach(req.clone()))
    }

    pub fn get_port_forward_url(&self, req: &PortForwardRequest) -> Result<String, StreamError> {
        req.validate()?;
        self.url("portforward", CachedRequest::PortForward(req.clone()))
    }

    fn url(&self, path: &str, request: CachedRequest) -> Result<String, StreamError> {
        let token = self.inner.tokens.insert(request)?;
        Ok(format!("{}/{path}/{token}", self.base_url))
    }

    /// URLs handed out and not yet used or expired.
    pub fn pending_urls(&self) -> usize {
        self.inner.tokens.len()
    }

    /// Sessions (upgraded connections) still running.
    pub fn active_sessions(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Stops accepting, cancels every session and waits up to `grace` for
    /// them to end.
    pub async fn shutdown(self, grace: Duration) {
        self.inner.shutdown.cancel();
        self.inner.sessions.close();
        let _ = tokio::time::timeout(grace, self.inner.sessions.wait()).await;
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = inner.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "streaming server accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            let service_inner = inner.clone();
            let service = service_fn(move |req| server::handle(service_inner.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(inner.tunables.header_read_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "streaming HTTP connection failed");
                    }
                }
                _ = inner.shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}
