//! The fixture of the container and streaming tests: a daemon, a registry
//! with the standard images pushed and busybox pulled, and the CRI calls
//! those tests make over and over.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ketch::cri::api::image_service_client::ImageServiceClient;
use ketch::cri::api::runtime_service_client::RuntimeServiceClient;
use ketch::cri::api::*;
use tonic::transport::Channel;

use super::cri::{pod_config, unique};
use super::images::TestImages;
use super::registry::Registry;
use super::{Daemon, DaemonOptions};

/// A shell command that exits 42 on SIGRTMIN+3 (signal 37: glibc keeps
/// two real-time signals for itself) and otherwise waits: a stop signal
/// test's container.
pub const EXIT_42_ON_SIGRTMIN_3: &str = "trap 'exit 42' 37; while true; do sleep 0.1; done";

/// A daemon, a registry with the standard images, busybox pulled.
pub struct Env {
    pub daemon: Daemon,
    pub registry: Registry,
    pub images: TestImages,
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(DaemonOptions::default()).await
    }

    pub async fn start_with(options: DaemonOptions) -> Self {
        let registry = Registry::start_plain().await;
        let images = TestImages::push_all(&registry).await;
        let daemon = Daemon::start_with(options).await;
        let rt = daemon.runtime().await;
        let img = daemon.images().await;
        let mut env = Env {
            daemon,
            registry,
            images,
            rt,
            img,
        };
        env.pull(&env.busybox()).await;
        env
    }

    /// Pulls `reference`; a failure fails the test.
    pub async fn pull(&mut self, reference: &str) {
        self.img
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: reference.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
    }

    /// RemoveImage of `reference`, which must succeed.
    pub async fn remove_image(&mut self, reference: &str) {
        self.img
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: reference.to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_or_else(|e| panic!("remove image {reference}: {e}"));
    }

    pub fn busybox(&self) -> String {
        self.images.busybox.reference.clone()
    }

    pub fn web(&self) -> String {
        self.images.web.reference.clone()
    }

    /// A fresh log directory for a pod.
    pub fn log_dir(&self) -> PathBuf {
        let dir = self.daemon.dir.path().join("logs").join(unique("pod"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub async fn run_pod_with(&mut self, config: PodSandboxConfig) -> (String, PodSandboxConfig) {
        let id = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("run pod")
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    /// A pod whose security context is privileged (only such a pod may
    /// hold privileged containers).
    pub async fn run_privileged_pod(&mut self, name: &str) -> (String, PodSandboxConfig) {
        let mut config = pod_config(&unique(name), &self.log_dir());
        config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
        self.run_pod_with(config).await
    }

    pub async fn run_pod(&mut self, name: &str) -> (String, PodSandboxConfig) {
        let config = pod_config(&unique(name), &self.log_dir());
        self.run_pod_with(config).await
    }

    pub async fn create(
        &mut self,
        pod: &(String, PodSandboxConfig),
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        self.rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.to_owned(),
            })
            .await
            .map(|_| ())
    }

    /// Creates and starts a container; a failure fails the test.
    pub async fn run_container(
        &mut self,
        pod: &(String, PodSandboxConfig),
        config: ContainerConfig,
    ) -> String {
        let id = self.create(pod, config).await.expect("create container");
        self.start_container(&id).await.expect("start container");
        id
    }

    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        self.rt
            .container_status(ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await
            .expect("container status")
            .into_inner()
            .status
            .expect("status set")
    }

    /// The container's status once it has exited (20 s at most).
    pub async fn wait_exited(&mut self, id: &str) -> ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status(id).await;
            if status.state == ContainerState::ContainerExited as i32 {
                return status;
            }
            assert!(Instant::now() < deadline, "container {id} did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops and removes a pod; a failure fails the test.
    /// StopContainer with `timeout` (seconds), then the status once the
    /// container has exited.
    pub async fn stop_and_wait(&mut self, id: &str, timeout: i64) -> ContainerStatus {
        self.rt
            .stop_container(StopContainerRequest {
                container_id: id.to_owned(),
                timeout,
            })
            .await
            .expect("stop container");
        self.wait_exited(id).await
    }

    /// ExecSync, its status returned.
    pub async fn exec(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        self.rt
            .exec_sync(ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// ExecSync that must succeed: its stdout (the output in the panic
    /// message otherwise).
    pub async fn exec_ok(&mut self, id: &str, cmd: &[&str]) -> String {
        let out = self.exec(id, cmd, 20).await.expect("exec");
        assert_eq!(
            out.exit_code,
            0,
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `info` of a container's verbose status, parsed.
    pub async fn verbose_info(&mut self, id: &str) -> serde_json::Value {
        let reply = self
            .rt
            .container_status(ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: true,
            })
            .await
            .expect("verbose container status")
            .into_inner();
        serde_json::from_str(&reply.info["info"]).expect("verbose info is JSON")
    }

    /// A running container's pid on the host, from its verbose status.
    pub async fn container_pid(&mut self, id: &str) -> i32 {
        let info = self.verbose_info(id).await;
        info["pid"].as_i64().expect("a running container has a pid") as i32
    }

    /// Every pod the daemon lists.
    pub async fn pods(&mut self) -> Vec<PodSandbox> {
        self.rt
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
            .expect("list pods")
            .into_inner()
            .items
    }

    pub async fn remove_container(&mut self, id: &str) {
        self.rt
            .remove_container(RemoveContainerRequest {
                container_id: id.to_owned(),
            })
            .await
            .expect("remove container");
    }

    pub async fn remove_pod(&mut self, id: &str) {
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            })
            .await
            .expect("stop pod");
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_owned(),
            })
            .await
            .expect("remove pod");
    }
}
