//! The streaming RPCs: Exec, Attach and PortForward validate and return a URL on berthd's
//! streaming server, where the client then connects.

use tonic::{Request, Response, Status};

use super::{Cri, record};
use crate::proto::runtime::v1 as cri;
use crate::streaming::Error as StreamingError;
use crate::streaming::requests::Error as RequestsError;

impl From<StreamingError> for Status {
    fn from(e: StreamingError) -> Status {
        let msg = e.to_string();
        match e {
            StreamingError::InvalidArgument(_) => Status::invalid_argument(msg),
            StreamingError::FailedPrecondition(_) => Status::failed_precondition(msg),
            StreamingError::Sandbox(e) => e.into(),
            StreamingError::Requests(RequestsError::TooManyInFlight) => {
                Status::resource_exhausted(msg)
            }
            StreamingError::Requests(RequestsError::Random(_)) => Status::internal(msg),
        }
    }
}

impl Cri {
    pub(super) async fn port_forward_impl(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let r = req.into_inner();
        record("pod_id", &r.pod_sandbox_id);
        let url = self.streaming.port_forward(&r.pod_sandbox_id)?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }
}
