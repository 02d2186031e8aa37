//! The container RPCs of RuntimeService: proto in, `Runtime` call, proto
//! out. `runtime_service.rs` delegates here.

use std::collections::HashMap;
use std::time::Duration;

use k8s_cri::v1::*;
use tonic::{Request, Response, Status};

use super::CriService;
use crate::container::manager::{ContainerFilter, ContainerRecord};
use crate::container::state::State;

fn state_to_proto(state: State) -> ContainerState {
    match state {
        State::Created => ContainerState::ContainerCreated,
        State::Running => ContainerState::ContainerRunning,
        State::Exited => ContainerState::ContainerExited,
    }
}

fn state_from_proto(value: i32) -> Option<State> {
    match ContainerState::try_from(value).ok()? {
        ContainerState::ContainerCreated => Some(State::Created),
        ContainerState::ContainerRunning => Some(State::Running),
        ContainerState::ContainerExited => Some(State::Exited),
        ContainerState::ContainerUnknown => None,
    }
}

fn image_spec(record: &ContainerRecord) -> ImageSpec {
    let mut spec = record.config.image.clone().unwrap_or_default();
    if spec.image.is_empty() {
        spec.image = record.image_ref.clone();
    }
    spec
}

pub(super) fn to_container(record: &ContainerRecord) -> Container {
    Container {
        id: record.id.clone(),
        pod_sandbox_id: record.pod_id.clone(),
        metadata: Some(record.metadata.clone()),
        image: Some(image_spec(record)),
        image_ref: record.image_id.clone(),
        state: state_to_proto(record.state) as i32,
        created_at: record.created_at,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        image_id: record.image_id.clone(),
    }
}

pub(super) fn to_status(record: &ContainerRecord) -> ContainerStatus {
    let exit = record.exit.clone().unwrap_or_default();
    ContainerStatus {
        id: record.id.clone(),
        metadata: Some(record.metadata.clone()),
        state: state_to_proto(record.state) as i32,
        created_at: record.created_at,
        started_at: record.started_at(),
        finished_at: exit.finished_at,
        exit_code: exit.code,
        image: Some(image_spec(record)),
        image_ref: record.image_id.clone(),
        reason: exit.reason,
        message: exit.message,
        labels: record.config.labels.clone(),
        annotations: record.config.annotations.clone(),
        mounts: record.config.mounts.clone(),
        log_path: record.log_path.clone(),
        resources: record
            .config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .map(|r| ContainerResources {
                linux: Some(r),
                windows: None,
            }),
        image_id: record.image_id.clone(),
        user: None,
    }
}

impl CriService {
    pub(super) async fn do_create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let req = request.into_inner();
        if req.pod_sandbox_id.is_empty() {
            return Err(Status::invalid_argument("pod_sandbox_id must not be empty"));
        }
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("container config is required"))?;
        let id = self
            .runtime
            .create_container(&req.pod_sandbox_id, config)
            .await?;
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    pub(super) async fn do_start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        require_id(&id)?;
        self.runtime.containers().start(&id).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    pub(super) async fn do_stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        let req = request.into_inner();
        require_id(&req.container_id)?;
        let timeout = Duration::from_secs(req.timeout.max(0) as u64);
        self.runtime
            .containers()
            .stop(&req.container_id, timeout)
            .await?;
        Ok(Response::new(StopContainerResponse {}))
    }

    pub(super) async fn do_remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        require_id(&id)?;
        self.runtime.remove_container(&id).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    pub(super) async fn do_list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let filter = ContainerFilter {
            id: Some(filter.id).filter(|s| !s.is_empty()),
            pod_id: self
                .runtime
                .resolve_pod_filter(&filter.pod_sandbox_id)
                .map_or(Some(filter.pod_sandbox_id.clone()), Some)
                .filter(|s| !s.is_empty()),
            state: filter.state.and_then(|s| state_from_proto(s.state)),
            labels: filter.label_selector,
        };
        let containers = self
            .runtime
            .containers()
            .list(&filter)
            .iter()
            .map(to_container)
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    pub(super) async fn do_container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        require_id(&req.container_id)?;
        let record = self.runtime.containers().status(&req.container_id)?;
        let mut info = HashMap::new();
        if req.verbose {
            let verbose = self.runtime.container_verbose_info(&record);
            info.insert("info".to_owned(), verbose.to_string());
        }
        Ok(Response::new(ContainerStatusResponse {
            status: Some(to_status(&record)),
            info,
        }))
    }

    pub(super) async fn do_exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        let req = request.into_inner();
        require_id(&req.container_id)?;
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd must not be empty"));
        }
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let output = self
            .runtime
            .containers()
            .exec_sync(&req.container_id, req.cmd, timeout)
            .await?;
        Ok(Response::new(ExecSyncResponse {
            stdout: output.stdout,
            stderr: output.stderr,
            exit_code: output.exit_code,
        }))
    }

    pub(super) async fn do_reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        require_id(&id)?;
        self.runtime.containers().reopen_log(&id).await?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    pub(super) async fn do_update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        let req = request.into_inner();
        require_id(&req.container_id)?;
        let resources = req
            .linux
            .as_ref()
            .map(crate::cgroups::Resources::from)
            .unwrap_or_default();
        self.runtime
            .containers()
            .update_resources(&req.container_id, resources)
            .await?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }
}

fn require_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("container_id must not be empty"));
    }
    Ok(())
}
