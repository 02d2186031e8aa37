//! The streaming RPCs of RuntimeService: `Exec`, `Attach` and
//! `PortForward` check the request and the container or pod, and answer
//! with a single-use URL on the streaming server, where the session itself
//! runs.

use super::api as cri;
use tonic::Status;

use super::CriService;
use crate::container::state::State;
use crate::streaming::{self, StreamingServer};

fn server(cri: &CriService) -> Result<&StreamingServer, Status> {
    cri.streaming
        .as_deref()
        .ok_or_else(|| Status::unavailable("the streaming server is not running"))
}

/// The full ID of a running container (`id` may be a prefix).
fn running_container(cri: &CriService, id: &str) -> Result<String, Status> {
    let record = cri.runtime.containers().status(id)?;
    if record.state != State::Running {
        return Err(Status::failed_precondition(format!(
            "container {} is {}: streaming needs a running container",
            record.id,
            record.state.cri_name()
        )));
    }
    Ok(record.id)
}

pub(super) async fn exec(
    cri: &CriService,
    req: cri::ExecRequest,
) -> Result<cri::ExecResponse, Status> {
    let mut exec = streaming::ExecRequest {
        container_id: req.container_id,
        cmd: req.cmd,
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    };
    let server = server(cri)?;
    exec.validate()?;
    exec.container_id = running_container(cri, &exec.container_id)?;
    let url = server.get_exec_url(&exec)?;
    Ok(cri::ExecResponse { url })
}

pub(super) async fn attach(
    cri: &CriService,
    req: cri::AttachRequest,
) -> Result<cri::AttachResponse, Status> {
    let mut attach = streaming::AttachRequest {
        container_id: req.container_id,
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    };
    let server = server(cri)?;
    attach.validate()?;
    attach.container_id = running_container(cri, &attach.container_id)?;
    let url = server.get_attach_url(&attach)?;
    Ok(cri::AttachResponse { url })
}

pub(super) async fn port_forward(
    cri: &CriService,
    req: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    let server = server(cri)?;
    let mut forward = streaming::PortForwardRequest::from_cri(&req.pod_sandbox_id, &req.port)?;
    forward.validate()?;
    let pod = cri.runtime.sandboxes().get(&forward.pod_sandbox_id)?;
    if !pod.is_ready() {
        return Err(Status::failed_precondition(format!(
            "pod sandbox {} is not ready: port forwarding needs a ready pod",
            pod.id
        )));
    }
    forward.pod_sandbox_id = pod.id.clone();
    let url = server.get_port_forward_url(&forward)?;
    Ok(cri::PortForwardResponse { url })
}
