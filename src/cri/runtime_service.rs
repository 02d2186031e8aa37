//! RuntimeService: the trait impl, dispatching each RPC to its group's
//! function (`runtime_status`, `pods`, `containers`, `streaming`). RPCs
//! not built yet answer `Unimplemented` naming themselves.

use super::api::runtime_service_server::RuntimeService;
use super::api::*;
use tonic::{Request, Response, Status};

use super::{
    CriService, ReplyStream, containers, events, not_implemented, pods, runtime_status, stats,
    stream_in_chunks, streaming,
};

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        runtime_status::version(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        runtime_status::status(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn runtime_config(
        &self,
        request: Request<RuntimeConfigRequest>,
    ) -> Result<Response<RuntimeConfigResponse>, Status> {
        runtime_status::runtime_config(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_runtime_config(
        &self,
        request: Request<UpdateRuntimeConfigRequest>,
    ) -> Result<Response<UpdateRuntimeConfigResponse>, Status> {
        runtime_status::update_runtime_config(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        pods::run(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        pods::stop(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        pods::remove(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        pods::status(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        pods::list(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        containers::create(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Result<Response<StartContainerResponse>, Status> {
        containers::start(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Result<Response<StopContainerResponse>, Status> {
        containers::stop(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<RemoveContainerResponse>, Status> {
        containers::remove(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        containers::list(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        containers::status(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Result<Response<UpdateContainerResourcesResponse>, Status> {
        containers::update_resources(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Result<Response<ReopenContainerLogResponse>, Status> {
        containers::reopen_log(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec_sync(
        &self,
        request: Request<ExecSyncRequest>,
    ) -> Result<Response<ExecSyncResponse>, Status> {
        containers::exec_sync(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Result<Response<ExecResponse>, Status> {
        streaming::exec(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        streaming::attach(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Result<Response<PortForwardResponse>, Status> {
        streaming::port_forward(self, request.into_inner())
            .await
            .map(Response::new)
    }

    type GetContainerEventsStream = ReplyStream<ContainerEventResponse>;
    type StreamPodSandboxesStream = ReplyStream<StreamPodSandboxesResponse>;
    type StreamContainersStream = ReplyStream<StreamContainersResponse>;
    type StreamContainerStatsStream = ReplyStream<StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = ReplyStream<StreamPodSandboxStatsResponse>;
    type StreamPodSandboxMetricsStream = ReplyStream<StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandboxes(
        &self,
        request: Request<StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let filter = request.into_inner().filter;
        let items = pods::list(self, ListPodSandboxRequest { filter })
            .await?
            .items;
        Ok(Response::new(stream_in_chunks(items, |pod_sandboxes| {
            StreamPodSandboxesResponse { pod_sandboxes }
        })))
    }

    async fn stream_containers(
        &self,
        request: Request<StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        let filter = request.into_inner().filter;
        let containers = containers::list(self, ListContainersRequest { filter })
            .await?
            .containers;
        Ok(Response::new(stream_in_chunks(containers, |containers| {
            StreamContainersResponse { containers }
        })))
    }

    async fn stream_container_stats(
        &self,
        request: Request<StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let filter = request.into_inner().filter;
        let stats = stats::list_container_stats(self, ListContainerStatsRequest { filter })
            .await?
            .stats;
        Ok(Response::new(stream_in_chunks(stats, |stats| {
            StreamContainerStatsResponse {
                container_stats: stats,
            }
        })))
    }

    async fn stream_pod_sandbox_stats(
        &self,
        request: Request<StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let filter = request.into_inner().filter;
        let stats = stats::list_pod_sandbox_stats(self, ListPodSandboxStatsRequest { filter })
            .await?
            .stats;
        Ok(Response::new(stream_in_chunks(stats, |stats| {
            StreamPodSandboxStatsResponse {
                pod_sandbox_stats: stats,
            }
        })))
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        request: Request<StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let _ = request.into_inner();
        let pod_metrics = stats::list_pod_sandbox_metrics(self, ListPodSandboxMetricsRequest {})
            .await?
            .pod_metrics;
        Ok(Response::new(stream_in_chunks(
            pod_metrics,
            |pod_metrics| StreamPodSandboxMetricsResponse {
                pod_sandbox_metrics: pod_metrics,
            },
        )))
    }

    async fn update_pod_sandbox_resources(
        &self,
        request: Request<UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        pods::update_resources(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_container_events(
        &self,
        request: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(events::get_container_events(
            self,
            request.into_inner(),
        )))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Result<Response<ContainerStatsResponse>, Status> {
        stats::container_stats(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Result<Response<ListContainerStatsResponse>, Status> {
        stats::list_container_stats(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Result<Response<PodSandboxStatsResponse>, Status> {
        stats::pod_sandbox_stats(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Result<Response<ListPodSandboxStatsResponse>, Status> {
        stats::list_pod_sandbox_stats(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn checkpoint_container(
        &self,
        _request: Request<CheckpointContainerRequest>,
    ) -> Result<Response<CheckpointContainerResponse>, Status> {
        not_implemented("CheckpointContainer")
    }

    async fn list_metric_descriptors(
        &self,
        request: Request<ListMetricDescriptorsRequest>,
    ) -> Result<Response<ListMetricDescriptorsResponse>, Status> {
        stats::list_metric_descriptors(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox_metrics(
        &self,
        request: Request<ListPodSandboxMetricsRequest>,
    ) -> Result<Response<ListPodSandboxMetricsResponse>, Status> {
        stats::list_pod_sandbox_metrics(self, request.into_inner())
            .await
            .map(Response::new)
    }
}
