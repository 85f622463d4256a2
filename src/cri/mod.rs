//! The gRPC layer: translate CRI messages, delegate, map errors to status codes. No Linux
//! detail lives here.

mod container_config;
mod image;
mod rpc;
mod runtime;
mod runtime_container;
mod runtime_sandbox;
mod runtime_stats;
mod runtime_streaming;

use std::sync::Arc;

use tonic::Status;

pub use rpc::serve;

use crate::config::Config;
use crate::container::ContainerService;
use crate::image::{Error as ImageError, ImageService};
use crate::proto::runtime::v1::image_service_server::ImageServiceServer;
use crate::proto::runtime::v1::runtime_service_server::RuntimeServiceServer;
use crate::sandbox::SandboxService;

/// Everything the CRI services delegate to.
pub struct Cri {
    pub config: Arc<Config>,
    pub images: ImageService,
    pub sandboxes: SandboxService,
    pub containers: ContainerService,
    pub streaming: crate::streaming::StreamServer,
}

/// Message size limit as kubelet's client sets it (16 MiB), so large lists go through.
const MAX_MESSAGE: usize = 16 << 20;

/// The RuntimeService and ImageService routes for `serve`.
pub fn routes(cri: Arc<Cri>) -> tonic::service::Routes {
    let rt = RuntimeServiceServer::from_arc(cri.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let im = ImageServiceServer::from_arc(cri)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tonic::service::Routes::new(rt).add_service(im)
}

impl From<ImageError> for Status {
    fn from(e: ImageError) -> Status {
        let msg = e.to_string();
        match e {
            ImageError::InvalidReference(_) | ImageError::Invalid { .. } => {
                Status::invalid_argument(msg)
            }
            ImageError::NotFound { .. } => Status::not_found(msg),
            ImageError::Unauthorized { .. } => Status::unauthenticated(msg),
            ImageError::Forbidden { .. } => Status::permission_denied(msg),
            ImageError::Unavailable { .. } => Status::unavailable(msg),
            ImageError::Corrupt { .. } => Status::data_loss(msg),
            ImageError::DeadlineExceeded { .. } => Status::deadline_exceeded(msg),
            ImageError::Cancelled { .. } => Status::cancelled(msg),
            ImageError::Internal { .. } => Status::internal(msg),
        }
    }
}

/// Records an id on the current RPC span (declared in `rpc`), for the RPC's log line.
fn record(field: &'static str, value: &str) {
    tracing::Span::current().record(field, value);
}
