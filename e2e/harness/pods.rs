//! The pod RPCs as the pod and network tests make them, over a runtime
//! client, and the host-side checks they share.

use std::path::Path;

use ketch::cri::api::runtime_service_client::RuntimeServiceClient;
use ketch::cri::api::*;
use tonic::transport::Channel;

use super::Daemon;
use super::cri::pod_config;
use super::daemon::mountpoints;

pub type Client = RuntimeServiceClient<Channel>;

/// A pod config named `name`, logging under the daemon's test dir.
pub fn config(daemon: &Daemon, name: &str) -> PodSandboxConfig {
    pod_config(name, &daemon.dir.path().join("logs").join(name))
}

pub async fn try_run(client: &mut Client, cfg: PodSandboxConfig) -> Result<String, tonic::Status> {
    client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// RunPodSandbox; a failure fails the test.
pub async fn run(client: &mut Client, cfg: PodSandboxConfig) -> String {
    try_run(client, cfg).await.expect("RunPodSandbox")
}

/// The verbose PodSandboxStatus.
pub async fn status(
    client: &mut Client,
    id: &str,
) -> Result<PodSandboxStatusResponse, tonic::Status> {
    client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn stop(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
        .map(|_| ())
}

pub async fn remove(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
        .map(|_| ())
}

pub async fn list(client: &mut Client, filter: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
    client
        .list_pod_sandbox(ListPodSandboxRequest { filter })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
}

/// The host's mount points at or below `path`.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let prefix = path.to_string_lossy().into_owned();
    mountpoints()
        .into_iter()
        .filter(|m| m.starts_with(&prefix))
        .collect()
}
