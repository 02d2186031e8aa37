//! The CRI v1 gRPC layer: proto messages in, domain calls, proto messages
//! out. No runtime logic lives here; errors of the domain modules become
//! `tonic::Status` in `status`.

mod containers;
mod image_service;
mod runtime_service;
mod sandbox;
mod status;
mod streaming;

use std::sync::Arc;

use tonic::{Response, Status};

use crate::runtime::Runtime;
use crate::streaming::StreamingServer;

/// Serves both CRI services over one shared runtime.
#[derive(Clone)]
pub struct CriService {
    runtime: Arc<Runtime>,
    /// Where Exec, Attach and PortForward send their clients; without it
    /// those RPCs answer Unavailable.
    streaming: Option<Arc<StreamingServer>>,
}

impl CriService {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            runtime,
            streaming: None,
        }
    }

    /// Serves Exec, Attach and PortForward through `server`.
    pub fn with_streaming(mut self, server: Arc<StreamingServer>) -> Self {
        self.streaming = Some(server);
        self
    }
}

/// The answer of an RPC whose issue has not landed yet.
fn not_implemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc} is not implemented by ketch yet"
    )))
}
