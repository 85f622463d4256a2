//! The streaming RPCs: Exec, Attach and PortForward validate and return a URL on berthd's
//! streaming server, where the client then connects.

use tonic::{Request, Response, Status};

use super::{Cri, record};
use crate::proto::runtime::v1 as cri;
use crate::streaming::Error as StreamingError;
use crate::streaming::remotecommand::{AttachRequest, ExecRequest};
use crate::streaming::requests::Error as RequestsError;

impl From<StreamingError> for Status {
    fn from(e: StreamingError) -> Status {
        let msg = e.to_string();
        match e {
            StreamingError::InvalidArgument(_) => Status::invalid_argument(msg),
            StreamingError::FailedPrecondition(_) => Status::failed_precondition(msg),
            StreamingError::Container(e) => e.into(),
            StreamingError::Sandbox(e) => e.into(),
            StreamingError::Requests(RequestsError::TooManyInFlight) => {
                Status::resource_exhausted(msg)
            }
            StreamingError::Requests(RequestsError::Random(_)) => Status::internal(msg),
        }
    }
}

impl Cri {
    pub(super) async fn exec_impl(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let r = req.into_inner();
        record("container_id", &r.container_id);
        let url = self
            .streaming
            .exec(ExecRequest {
                container_id: r.container_id,
                cmd: r.cmd,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .await?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    pub(super) async fn attach_impl(
        &self,
        req: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let r = req.into_inner();
        record("container_id", &r.container_id);
        let url = self
            .streaming
            .attach(AttachRequest {
                container_id: r.container_id,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                stdin_once: false,
            })
            .await?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    pub(super) async fn port_forward_impl(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let r = req.into_inner();
        record("pod_id", &r.pod_sandbox_id);
        let url = self.streaming.port_forward(&r.pod_sandbox_id, &r.port)?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }
}
