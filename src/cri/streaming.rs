//! The streaming RPCs of RuntimeService: `Exec`, `Attach` and
//! `PortForward` check the request and the container or pod, and answer
//! with a single-use URL on the streaming server, where the session itself
//! runs. `runtime_service.rs` delegates here.

use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::CriService;
use crate::container::state::State;
use crate::streaming::{self, StreamingServer};

impl CriService {
    fn streaming(&self) -> Result<&StreamingServer, Status> {
        self.streaming
            .as_deref()
            .ok_or_else(|| Status::unavailable("the streaming server is not running"))
    }

    /// The full ID of a running container (`id` may be a prefix).
    fn running_container(&self, id: &str) -> Result<String, Status> {
        let record = self.runtime.containers().status(id)?;
        if record.state != State::Running {
            return Err(Status::failed_precondition(format!(
                "container {} is {}: streaming needs a running container",
                record.id,
                record.state.cri_name()
            )));
        }
        Ok(record.id)
    }

    pub(super) async fn do_exec(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<ExecResponse>, Status> {
        let req = request.into_inner();
        let mut exec = streaming::ExecRequest {
            container_id: req.container_id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        };
        let server = self.streaming()?;
        exec.validate()?;
        exec.container_id = self.running_container(&exec.container_id)?;
        let url = server.get_exec_url(&exec)?;
        Ok(Response::new(ExecResponse { url }))
    }

    pub(super) async fn do_attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        let req = request.into_inner();
        let mut attach = streaming::AttachRequest {
            container_id: req.container_id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        };
        let server = self.streaming()?;
        attach.validate()?;
        attach.container_id = self.running_container(&attach.container_id)?;
        let url = server.get_attach_url(&attach)?;
        Ok(Response::new(AttachResponse { url }))
    }

    pub(super) async fn do_port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        let req = request.into_inner();
        let server = self.streaming()?;
        let mut forward = streaming::PortForwardRequest::from_cri(&req.pod_sandbox_id, &req.port)?;
        forward.validate()?;
        let pod = self.runtime.sandboxes().get(&forward.pod_sandbox_id)?;
        if !pod.is_ready() {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready: port forwarding needs a ready pod",
                pod.id
            )));
        }
        forward.pod_sandbox_id = pod.id.clone();
        let url = server.get_port_forward_url(&forward)?;
        Ok(Response::new(PortForwardResponse { url }))
    }
}
