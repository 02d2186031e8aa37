//! The CRI v1 gRPC layer: proto messages in, domain calls, proto messages
//! out. No runtime logic lives here, and no module below this one sees a
//! protocol type.
//!
//! `runtime_service.rs` and `image_service.rs` are the tonic trait impls
//! and only dispatch: every RPC is a function `(cri, request) ->
//! Result<response, Status>` in the file of its group (`runtime_status`,
//! `pods`, `containers`, `streaming`, `images`, `stats`, `events`), which converts the
//! request, calls the domain and converts the answer. Domain errors become
//! `tonic::Status` in `status`, in one place.

pub mod api;
mod containers;
mod events;
mod image_service;
mod images;
mod pods;
mod runtime_service;
mod runtime_status;
mod stats;
mod status;
mod streaming;

use std::sync::Arc;

use api::image_service_server::ImageServiceServer;
use api::runtime_service_server::RuntimeServiceServer;
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

/// The reply stream of a server-streaming RPC.
type ReplyStream<R> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<R, Status>> + Send + 'static>>;

/// Most of one gRPC message a `Stream*` list reply fills (of the 16 MiB
/// allowed), leaving room for the envelope.
const STREAM_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// A list as a stream of replies of at most [`STREAM_CHUNK_BYTES`] each
/// (one item alone may be larger), in order; an empty list is one empty
/// reply, as List would answer.
fn stream_in_chunks<T, R>(items: Vec<T>, wrap: impl Fn(Vec<T>) -> R) -> ReplyStream<R>
where
    T: prost::Message,
    R: Send + 'static,
{
    let mut replies = Vec::new();
    let mut chunk = Vec::new();
    let mut size = 0;
    for item in items {
        let len = item.encoded_len() + 8;
        if !chunk.is_empty() && size + len > STREAM_CHUNK_BYTES {
            replies.push(Ok(wrap(std::mem::take(&mut chunk))));
            size = 0;
        }
        size += len;
        chunk.push(item);
    }
    if !chunk.is_empty() || replies.is_empty() {
        replies.push(Ok(wrap(chunk)));
    }
    Box::pin(tokio_stream::iter(replies))
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn long_lists_stream_in_chunks_of_bounded_size_in_order() {
        let item = |i: usize| api::KeyValue {
            key: format!("{i:08}"),
            value: vec![b'x'; 1 << 20],
        };
        let items: Vec<_> = (0..10).map(item).collect();
        let replies: Vec<_> = stream_in_chunks(items, |c| c).collect().await;
        assert!(replies.len() >= 3, "{} replies", replies.len());
        let mut seen = Vec::new();
        for reply in replies {
            let chunk = reply.unwrap();
            let bytes: usize = chunk.iter().map(|kv| kv.encoded_len()).sum();
            assert!(bytes <= STREAM_CHUNK_BYTES, "{bytes}");
            seen.extend(chunk.into_iter().map(|kv| kv.key));
        }
        let want: Vec<_> = (0..10).map(|i| format!("{i:08}")).collect();
        assert_eq!(seen, want);

        let empty: Vec<_> = stream_in_chunks(Vec::<api::KeyValue>::new(), |c| c)
            .collect()
            .await;
        assert_eq!(empty.len(), 1, "one empty reply");
    }
}
