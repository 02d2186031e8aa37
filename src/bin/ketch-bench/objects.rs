//! What the benchmark makes in a runtime and how it unmakes it: the
//! configs of its pods and containers (valid for any CRI runtime: unique
//! names and uids, a log directory, kubelet's namespace defaults, the
//! node's CNI network), starting a pod with its container, teardown that
//! never gives up half-way, image helpers, and the sweep of leftovers.
//!
//! Every pod and container carries the label `ketch-bench=<run id>`, so a
//! run interrupted half-way can be swept (`sweep`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ketch::cri::api::*;
use tokio::task::JoinSet;

use crate::client::{Cri, OpError, timed};

/// The label every object the benchmark makes carries.
pub const LABEL_KEY: &str = "ketch-bench";

/// A container that stops at once on SIGTERM (as PID 1 it would otherwise
/// ignore it, and StopContainer would measure the kill timeout). It says
/// `ready` once its trap is set: see `wait_log_ready`.
pub const SLEEPER: &str = "trap 'exit 0' TERM; echo ready; sleep 3600 & wait";

/// How long a started container may take to show RUNNING.
pub const RUNNING_DEADLINE: Duration = Duration::from_secs(30);

/// The objects one scenario made, for cleanup.
#[derive(Debug, Default)]
pub struct Made {
    pub pod: Option<String>,
    pub containers: Vec<String>,
}

/// Builds the configs of the benchmark's pods and containers.
#[derive(Debug, Clone)]
pub struct Specs {
    pub image: String,
    pub log_dir: PathBuf,
    pub cgroup_parent: String,
    pub run_id: String,
    /// The RuntimeClass handler the pods name (`""`: the default).
    pub runtime_handler: String,
}

impl Specs {
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([(LABEL_KEY.to_owned(), self.run_id.clone())])
    }

    /// A pod unique in name and uid, its log directory made.
    pub fn pod(&self, tag: &str) -> PodSandboxConfig {
        let name = format!("kb-{}-{tag}-{:08x}", self.run_id, fastrand::u32(..));
        let uid = format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            fastrand::u32(..),
            fastrand::u16(..),
            fastrand::u16(..),
            fastrand::u16(..),
            fastrand::u64(..) & 0xffff_ffff_ffff
        );
        let log_directory = self.log_dir.join(&name);
        // A missing log dir shows up as a CreateContainer error naming it.
        let _ = std::fs::create_dir_all(&log_directory);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.clone(),
                uid,
                namespace: "ketch-bench".to_owned(),
                attempt: 0,
            }),
            hostname: name,
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels: self.labels(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn container(&self, name: &str) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".to_owned(), "-c".to_owned(), SLEEPER.to_owned()],
            log_path: format!("{name}.log"),
            labels: self.labels(),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// kubelet's defaults: pod network and IPC, a PID namespace per container.
pub fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

pub fn pull_request(image: &str) -> PullImageRequest {
    PullImageRequest {
        image: Some(ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn container_state(status: &ContainerStatusResponse) -> i32 {
    status.status.as_ref().map_or(-1, |s| s.state)
}

/// The CRI log file of container `name` of a pod.
pub fn log_file(pod: &PodSandboxConfig, name: &str) -> PathBuf {
    PathBuf::from(&pod.log_directory).join(format!("{name}.log"))
}

/// Waits until the CRI log file at `path` has a line ending in `ready`,
/// for at most `limit`; says whether it came. RUNNING means the process
/// exists, not that the shell in it has set its SIGTERM trap yet; a
/// SIGTERM before that is lost on PID 1 and StopContainer would time the
/// kill timeout instead of the stop.
pub async fn wait_log_ready(path: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = tokio::fs::read_to_string(path).await
            && text.lines().any(|l| l.ends_with(" ready"))
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Polls ContainerStatus until RUNNING (or a deadline, or an exit).
pub async fn wait_running(cri: &Cri, cid: &str) -> Result<(), OpError> {
    let deadline = Instant::now() + RUNNING_DEADLINE;
    let mut rt = cri.runtime.clone();
    loop {
        let (status, _) = timed(
            "ContainerStatus",
            cri.timeout,
            rt.container_status(ContainerStatusRequest {
                container_id: cid.to_owned(),
                verbose: false,
            }),
        )
        .await?;
        let state = container_state(&status);
        if state == ContainerState::ContainerRunning as i32 {
            return Ok(());
        }
        if state == ContainerState::ContainerExited as i32 || Instant::now() > deadline {
            return Err(OpError::Unexpected {
                rpc: "ContainerStatus",
                detail: format!("container {cid} is in state {state}, not RUNNING"),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// RunPodSandbox, CreateContainer, StartContainer, then RUNNING. Returns
/// what was made whatever happened, for teardown.
pub async fn start_pod(
    cri: &Cri,
    specs: &Specs,
    config: PodSandboxConfig,
) -> (Made, Result<(), OpError>) {
    let mut made = Made::default();
    let result = async {
        let mut rt = cri.runtime.clone();
        let t = cri.timeout;
        let (pod, _) = timed(
            "RunPodSandbox",
            t,
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: specs.runtime_handler.clone(),
            }),
        )
        .await?;
        made.pod = Some(pod.pod_sandbox_id.clone());
        let (ctr, _) = timed(
            "CreateContainer",
            t,
            rt.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.pod_sandbox_id,
                config: Some(specs.container("app")),
                sandbox_config: Some(config),
            }),
        )
        .await?;
        made.containers.push(ctr.container_id.clone());
        timed(
            "StartContainer",
            t,
            rt.start_container(StartContainerRequest {
                container_id: ctr.container_id.clone(),
            }),
        )
        .await?;
        wait_running(cri, &ctr.container_id).await
    }
    .await;
    (made, result)
}

/// Stops and removes what a scenario made, best effort, untimed.
pub async fn teardown(cri: &Cri, made: Made) {
    let mut rt = cri.runtime.clone();
    let t = cri.timeout;
    for cid in made.containers {
        let _ = timed(
            "StopContainer",
            t,
            rt.stop_container(StopContainerRequest {
                container_id: cid.clone(),
                timeout: 0,
            }),
        )
        .await;
        let _ = timed(
            "RemoveContainer",
            t,
            rt.remove_container(RemoveContainerRequest { container_id: cid }),
        )
        .await;
    }
    if let Some(pod) = made.pod {
        let _ = timed(
            "StopPodSandbox",
            t,
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            }),
        )
        .await;
        let _ = timed(
            "RemovePodSandbox",
            t,
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            }),
        )
        .await;
    }
}

/// Tears down many scenarios, `parallelism` at a time.
pub async fn teardown_all(cri: &Cri, all: Vec<Made>, parallelism: usize) {
    let mut set = JoinSet::new();
    for made in all {
        while set.len() >= parallelism.max(1) {
            let _ = set.join_next().await;
        }
        let cri = cri.clone();
        set.spawn(async move { teardown(&cri, made).await });
    }
    while set.join_next().await.is_some() {}
}

/// Whether the runtime has `image`.
pub async fn image_present(cri: &Cri, image: &str) -> Result<bool, OpError> {
    let mut images = cri.images.clone();
    let (status, _) = timed(
        "ImageStatus",
        cri.timeout,
        images.image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            verbose: false,
        }),
    )
    .await?;
    Ok(status.image.is_some())
}

/// Pulls `image` unless the runtime has it.
pub async fn ensure_image(cri: &Cri, image: &str) -> Result<(), OpError> {
    if image_present(cri, image).await.unwrap_or(false) {
        return Ok(());
    }
    let mut images = cri.images.clone();
    timed(
        "PullImage",
        cri.pull_timeout,
        images.pull_image(pull_request(image)),
    )
    .await
    .map(|_| ())
}

/// Removes `image`; an image already gone is fine.
pub async fn remove_image(cri: &Cri, image: &str) -> Result<(), OpError> {
    let mut images = cri.images.clone();
    match timed(
        "RemoveImage",
        cri.timeout,
        images.remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
        }),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Stops and removes every pod and container labelled by any benchmark
/// run; returns how many pods and containers were removed.
/// A runtime that cannot list has nothing to sweep through the CRI.
pub async fn sweep(cri: &Cri) -> Result<(usize, usize), OpError> {
    match sweep_listed(cri).await {
        Err(e) if e.is_unimplemented() => Ok((0, 0)),
        other => other,
    }
}

async fn sweep_listed(cri: &Cri) -> Result<(usize, usize), OpError> {
    let mut rt = cri.runtime.clone();
    let (ctrs, _) = timed(
        "ListContainers",
        cri.timeout,
        rt.list_containers(ListContainersRequest { filter: None }),
    )
    .await?;
    let containers: Vec<String> = ctrs
        .containers
        .into_iter()
        .filter(|c| c.labels.contains_key(LABEL_KEY))
        .map(|c| c.id)
        .collect();
    let (pods, _) = timed(
        "ListPodSandbox",
        cri.timeout,
        rt.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
    )
    .await?;
    let pods: Vec<String> = pods
        .items
        .into_iter()
        .filter(|p| p.labels.contains_key(LABEL_KEY))
        .map(|p| p.id)
        .collect();
    let counts = (pods.len(), containers.len());
    let mut all = vec![Made {
        pod: None,
        containers,
    }];
    all.extend(pods.into_iter().map(|p| Made {
        pod: Some(p),
        containers: Vec::new(),
    }));
    // Containers first, then pods.
    let first = all.remove(0);
    teardown(cri, first).await;
    teardown_all(cri, all, 8).await;
    Ok(counts)
}
