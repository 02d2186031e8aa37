//! The CRI client: a tonic channel over a unix socket, every call bounded in
//! time, and failures sorted into "the runtime does not serve this RPC"
//! (`Unimplemented`, shown as n/a) and real errors.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use ketch::cri::api::image_service_client::ImageServiceClient;
use ketch::cri::api::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// kubelet's message limit; large List replies need more than tonic's 4 MiB.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// A failed CRI call, or a call whose answer was not what the benchmark
/// needs to go on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpError {
    #[error("{rpc}: Unimplemented")]
    Unimplemented { rpc: &'static str },
    #[error("{rpc}: {code:?}: {message}")]
    Status {
        rpc: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("{rpc}: no answer within {secs}s")]
    Timeout { rpc: &'static str, secs: u64 },
    #[error("{rpc}: {detail}")]
    Unexpected { rpc: &'static str, detail: String },
}

impl OpError {
    pub fn rpc(&self) -> &'static str {
        match self {
            OpError::Unimplemented { rpc }
            | OpError::Status { rpc, .. }
            | OpError::Timeout { rpc, .. }
            | OpError::Unexpected { rpc, .. } => rpc,
        }
    }

    pub fn is_unimplemented(&self) -> bool {
        matches!(self, OpError::Unimplemented { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            OpError::Status {
                code: tonic::Code::NotFound,
                ..
            }
        )
    }

    /// What a metric that could not be attempted because of this says.
    pub fn blocking_reason(&self) -> String {
        if self.is_unimplemented() {
            format!("needs {}: Unimplemented", self.rpc())
        } else {
            format!("needs {}: failed", self.rpc())
        }
    }
}

/// Both CRI services over one connection.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    /// Bound on one ordinary call.
    pub timeout: Duration,
    /// Bound on one image pull.
    pub pull_timeout: Duration,
}

/// `unix:///run/x.sock` or `/run/x.sock` → the socket path.
pub fn socket_path(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Cri, ConnectError> {
        let path = socket.to_owned();
        let connector_path = path.clone();
        // The URI is required by tonic but unused: the connector dials the socket.
        let channel = Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = connector_path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|source| ConnectError::Connect { path, source })?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            timeout: Duration::from_secs(120),
            pull_timeout: Duration::from_secs(600),
        })
    }
}

/// Runs one call within `limit`; returns its answer and how long it took.
pub async fn timed<T, F>(
    rpc: &'static str,
    limit: Duration,
    call: F,
) -> Result<(T, Duration), OpError>
where
    F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let start = Instant::now();
    let result = tokio::time::timeout(limit, call).await;
    let elapsed = start.elapsed();
    match result {
        Err(_) => Err(OpError::Timeout {
            rpc,
            secs: limit.as_secs(),
        }),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            Err(OpError::Unimplemented { rpc })
        }
        Ok(Err(status)) => Err(OpError::Status {
            rpc,
            code: status.code(),
            message: status.message().to_owned(),
        }),
        Ok(Ok(response)) => Ok((response.into_inner(), elapsed)),
    }
}

/// Milliseconds, as the table shows them.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
