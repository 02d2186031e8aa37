//! The `serve` subcommand: prepares the directories, claims the socket and
//! serves CRI until SIGTERM or SIGINT.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;

use crate::authority::AnyAuthority;
use crate::config::Config;
use crate::container::stream::ContainerStreams;
use crate::cri::CriService;
use crate::runtime::Runtime;
use crate::streaming::{StreamError, StreamingServer};

/// How long in-flight calls may run on after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long exec sessions may take to kill and reap their processes at
/// shutdown.
const STREAMING_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another ketch is already serving {0}")]
    AlreadyServing(PathBuf),
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("cannot start the streaming server: {0}")]
    Streaming(#[from] StreamError),
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: String,
        source: std::io::Error,
    },
    #[error("this node cannot run containers:\n  - {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
    Preflight(Vec<crate::preflight::Problem>),
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

pub async fn run(config: Config) -> Result<(), DaemonError> {
    make_dir(&config.root_dir, 0o700)?;
    make_dir(&config.state_dir, 0o711)?;
    // Before the socket's lock, which may live in it.
    let state_tmpfs = crate::state_dir::prepare(&config.state_dir, config.state_dir_tmpfs)?;
    let socket_dir = config.listen.parent().unwrap_or(Path::new("/"));
    make_dir(socket_dir, 0o711)?;

    let _lock = lock_socket(&config.listen)?;
    let problems = crate::preflight::check(&config);
    if !problems.is_empty() {
        return Err(DaemonError::Preflight(problems));
    }
    // Before the socket exists: a client that sees it may stop ketch at
    // once, and SIGTERM must then mean a clean stop, not the default death.
    let signal = shutdown_signal()?;
    let listener = bind_socket(&config.listen)?;
    let socket_path = config.listen.clone();

    let runtime = Arc::new(Runtime::new(config).await?);
    let streams = Arc::new(ContainerStreams::new(
        runtime.containers().clone(),
        runtime.clone(),
    ));
    let streaming =
        Arc::new(StreamingServer::start(&runtime.config().streaming, streams.clone()).await?);
    let (runtime_service, image_service) = CriService::new(runtime.clone())
        .with_streaming(streaming.clone())
        .into_services();

    crate::memory::spawn_trimmer();
    spawn_exit_watch(&runtime);
    runtime
        .containers()
        .events()
        .observe(Box::new(|event| crate::metrics::get().observe_event(event)));
    let metrics_addr = runtime.config().metrics.listen.clone();
    if !metrics_addr.is_empty() {
        let listener = tokio::net::TcpListener::bind(&metrics_addr)
            .await
            .map_err(|source| DaemonError::Metrics {
                addr: metrics_addr.clone(),
                source,
            })?;
        // The bound address: with port 0 the kernel picks one.
        let bound = listener
            .local_addr()
            .map_or_else(|_| metrics_addr.clone(), |a| a.to_string());
        tracing::info!(address = %bound, "serving Prometheus metrics on /metrics");
        tokio::spawn(crate::metrics::serve(listener, runtime.clone()));
    }
    // Serving from here on: containers started now outlive the daemon, and
    // their sockets and exit files live on this tmpfs.
    if let Some(tmpfs) = state_tmpfs {
        tmpfs.keep();
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signal.await;
        let _ = stop_tx.send(true);
    });
    let mut stop_serving = stop_rx.clone();
    let mut stop_waiting = stop_rx;
    tracing::info!(
        socket = %socket_path.display(),
        streaming = %streaming.local_addr(),
        version = env!("CARGO_PKG_VERSION"),
        "ketch serving CRI v1"
    );
    // Any `:authority` a client sends is accepted: see `AnyAuthority`.
    let incoming = UnixListenerStream::new(listener).map(|s| s.map(AnyAuthority::new));
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .layer(crate::metrics::RpcMetricsLayer)
        .add_service(runtime_service)
        .add_service(image_service)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_serving.wait_for(|stop| *stop).await;
        });
    // Graceful shutdown waits for every connection to close; a client that
    // keeps an idle connection open must not hold the daemon forever.
    let grace = async move {
        let _ = stop_waiting.wait_for(|stop| *stop).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        result = serve => result?,
        _ = grace => tracing::warn!(
            "connections still open {}s after the stop signal; exiting anyway",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    // No new streaming sessions; the running ones end: exec'd processes
    // are killed and reaped, attached clients detach (containers run on).
    match Arc::try_unwrap(streaming) {
        Ok(server) => server.shutdown(STREAMING_GRACE).await,
        // A gRPC connection task still holds the service; dropping the last
        // reference stops the server.
        Err(shared) => drop(shared),
    }
    streams.shutdown(STREAMING_GRACE).await;
    // Only the holder of the lock gets here, so the socket is ours to remove.
    let _ = std::fs::remove_file(&socket_path);
    tracing::info!("ketch stopped; containers keep running");
    Ok(())
}

/// How often running containers are checked for an exit, so a STOPPED
/// event (and the exit metrics) follow an exit within this, without a
/// client asking for the container's status.
const EXIT_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Checks running containers for exits in the background (the exit files
/// the monitors write: one open per running container and tick).
fn spawn_exit_watch(runtime: &Arc<Runtime>) {
    let runtime = Arc::downgrade(runtime);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXIT_WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(runtime) = runtime.upgrade() else {
                return;
            };
            runtime.containers().poll_exits();
        }
    });
}

fn make_dir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| DaemonError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

/// Holds an exclusive lock beside the socket for the daemon's lifetime: the
/// one sure way to tell a live ketch from a stale socket file, free of the
/// race between two daemons starting at once.
fn lock_socket(socket: &Path) -> Result<Flock<std::fs::File>, DaemonError> {
    let mut lock_path = socket.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| DaemonError::Listen {
            path: lock_path.clone(),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| DaemonError::AlreadyServing(socket.to_owned()))
}

/// Binds the socket, replacing a stale socket file, mode 0660.
fn bind_socket(path: &Path) -> Result<UnixListener, DaemonError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // We hold the lock, so nobody serves this socket any more.
            std::fs::remove_file(path).map_err(|source| DaemonError::Listen {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(DaemonError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| DaemonError::Listen {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        DaemonError::Listen {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight calls"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight calls"),
        }
    })
}
