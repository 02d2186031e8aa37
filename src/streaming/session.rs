//! What every streaming session gets from the server.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::backend::StreamBackend;

#[derive(Clone)]
pub struct SessionCtx {
    pub backend: Arc<dyn StreamBackend>,
    /// Cancelled when the server shuts down.
    pub cancel: CancellationToken,
    /// How long a client may take to open the streams it announced.
    pub stream_creation_timeout: Duration,
    /// How long a cancelled backend call, or a final flush to a slow
    /// client, may take before it is dropped.
    pub cancel_grace: Duration,
}

/// A spawned task that dies with its owner.
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
