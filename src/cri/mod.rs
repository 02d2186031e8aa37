//! The CRI v1 gRPC layer: proto messages in, domain calls, proto messages
//! out. No runtime logic lives here, and no module below this one sees a
//! protocol type.
//!
//! `runtime_service.rs` and `image_service.rs` are the tonic trait impls
//! and only dispatch: every RPC is a function `(cri, request) ->
//! Result<response, Status>` in the file of its group (`runtime_status`,
//! `pods`, `containers`, `streaming`, `images`), which converts the
//! request, calls the domain and converts the answer. Domain errors become
//! `tonic::Status` in `status`, in one place.

mod containers;
mod image_service;
mod images;
mod pods;
mod runtime_service;
mod runtime_status;
mod status;
mod streaming;

use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tonic::{Response, Status};

use crate::runtime::Runtime;
use crate::streaming::StreamingServer;

/// kubelet, containerd and CRI-O all allow 16 MiB messages; tonic's 4 MiB
/// default makes large List replies fail.
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

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

    /// The two tonic services, with the message size limits kubelet uses.
    pub fn into_services(
        self,
    ) -> (
        RuntimeServiceServer<CriService>,
        ImageServiceServer<CriService>,
    ) {
        let runtime = RuntimeServiceServer::new(self.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let image = ImageServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        (runtime, image)
    }
}

/// The answer of an RPC whose issue has not landed yet.
fn not_implemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc} is not implemented by ketch yet"
    )))
}

/// Refuses an empty required field, naming it.
fn require(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} must not be empty"
        )));
    }
    Ok(())
}
