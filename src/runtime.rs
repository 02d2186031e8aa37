//! The runtime as a whole: the domain object the CRI layer talks to. It owns
//! the configuration and, as they land, the pod, container and image stores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{CgroupDriver, Config};
use crate::container::config::ContainerConfig;
use crate::container::spec::{ImageRunConfig, PidNamespace, PodContext};
use crate::container::stats::ContainerStats;
use crate::container::stream::{PodNetwork, PodNetworks};
use crate::container::{
    ContainerError, ContainerManager, ContainerRecord, ImageInfo, PodInfo, VolumeImage,
};
use crate::executor::oci_runtime::{Features, OciRuntime};
use crate::image::{ImageError, ImageStore};
use crate::network;
use crate::pod_pid::{self, PodPidError};
use crate::sandbox::{
    HookError, NamespaceMode, PodConfig, PodContainers, PodResources, PodSandbox, SandboxError,
    SandboxManager,
};
use crate::systemd::Systemd;

/// One condition of `Status`, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("container config has no image")]
    NoImage,
    #[error("image {0:?} not found: pull it first")]
    ImageNotFound(String),
    #[error("cannot find our own executable: {0}")]
    SelfExe(std::io::Error),
    #[error("no {} at {}: ketch runs its monitors from it (`make install` puts it there)", SHIM_NAME, .0.display())]
    NoShim(PathBuf),
    #[error(transparent)]
    PodPid(#[from] PodPidError),
    #[error("cannot generate a container ID: {0}")]
    Random(String),
    #[error("cgroup_driver = \"systemd\" needs systemd: {0}")]
    Systemd(#[from] crate::systemd::SystemdError),
    /// The pod's handler was configured when it started, not now.
    #[error("pod sandbox {pod}: runtime handler {handler:?} is no longer configured")]
    HandlerGone { pod: String, handler: String },
}

/// A pod's sample: its own cgroup's (or its containers' summed), its
/// containers' and its network interfaces'.
#[derive(Debug, Clone)]
pub struct PodStats {
    pub pod: Arc<PodSandbox>,
    pub cgroup: Option<crate::cgroups::Stats>,
    /// The containers' CPU rates summed.
    pub usage_nano_cores: Option<u64>,
    pub containers: Vec<(ContainerRecord, ContainerStats)>,
    /// `None` for a pod on the host's network or one not ready.
    pub network: Option<Vec<crate::sandbox::stats::InterfaceUsage>>,
}

pub struct Runtime {
    config: Arc<Config>,
    sandboxes: SandboxManager,
    containers: ContainerManager,
    images: ImageStore,
    /// The configured runtime handlers' runtimes, by handler name.
    handlers: BTreeMap<String, OciRuntime>,
    /// Each handler's features once its runtime answered `features`.
    handler_features: Arc<Mutex<BTreeMap<String, Features>>>,
}

/// Lets StopPodSandbox and RemovePodSandbox stop and remove the pod's
/// containers, releasing their image leases.
struct PodContainerHooks {
    containers: ContainerManager,
    images: ImageStore,
}

#[async_trait::async_trait]
impl PodContainers for PodContainerHooks {
    async fn stop_all(&self, pod_id: &str) -> Result<(), HookError> {
        for id in self.containers.pod_containers(pod_id) {
            self.containers.stop(&id, Duration::ZERO).await?;
        }
        Ok(())
    }

    async fn remove_all(&self, pod_id: &str) -> Result<(), HookError> {
        for id in self.containers.pod_containers(pod_id) {
            if let Some(record) = self.containers.remove(&id).await? {
                self.images.release(&record.id).await?;
            }
        }
        Ok(())
    }
}

/// Port forwarding reaches a ready pod's ports in its network namespace.
impl PodNetworks for Runtime {
    fn pod_network(&self, id: &str) -> Option<PodNetwork> {
        let pod = self.sandboxes.get(id).ok().filter(|p| p.is_ready())?;
        Some(match &pod.namespaces.net {
            Some(path) => PodNetwork::Namespace(path.clone()),
            None => PodNetwork::Host,
        })
    }
}

/// The sandbox's record of a profile as the container module takes it.
fn profile(p: &crate::sandbox::SecurityProfile) -> crate::container::config::SecurityProfile {
    crate::container::config::SecurityProfile {
        profile_type: p.profile_type.clone(),
        localhost_ref: p.localhost_ref.clone(),
    }
}

/// What the container module needs of a pod.
fn pod_info(pod: &PodSandbox) -> Result<PodInfo, PodPidError> {
    let linux = &pod.config.linux;
    let pid = match pod.pid_mode() {
        NamespaceMode::Node => PidNamespace::Host,
        NamespaceMode::Pod => {
            PidNamespace::Pod(pod_pid::namespace_of(&pod.id, pod.pid_holder.as_ref())?)
        }
        NamespaceMode::Container | NamespaceMode::Target => PidNamespace::Private,
    };
    Ok(PodInfo {
        id: pod.id.clone(),
        name: pod.config.metadata.name.clone(),
        namespace: pod.config.metadata.namespace.clone(),
        uid: pod.config.metadata.uid.clone(),
        ready: pod.is_ready(),
        log_directory: pod.config.log_directory.clone(),
        context: PodContext {
            user: pod.namespaces.user.clone().zip(linux.namespaces.userns),
            net: pod.namespaces.net.clone(),
            ipc: pod.namespaces.ipc.clone(),
            uts: pod.namespaces.uts.clone(),
            pid,
            hostname: pod.hostname.clone(),
            hosts_file: pod.hosts_path(),
            resolv_conf: pod.resolv_conf_path(),
            hostname_file: pod.hostname_path(),
            shm: pod.shm.clone(),
            sysctls: linux
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cgroup_parent: linux.cgroup_parent.clone(),
            seccomp: linux.security.seccomp.as_ref().map(profile),
            apparmor: linux.security.apparmor.as_ref().map(profile),
            privileged: linux.security.privileged,
        },
        runtime: None,
    })
}

/// The binary monitors, pauses and exec helpers run: `ketch-shim`, beside
/// the daemon's own executable (as containerd has its shims and CRI-O its
/// conmon). The daemon's binary does not carry their code.
pub(crate) fn helper_exe(daemon_exe: &Path) -> Result<PathBuf, RuntimeError> {
    let shim = daemon_exe.with_file_name(SHIM_NAME);
    if shim.is_file() {
        Ok(shim)
    } else {
        Err(RuntimeError::NoShim(shim))
    }
}

/// The file name of the per-container helper binary.
const SHIM_NAME: &str = "ketch-shim";

impl Runtime {
    /// Opens the stores and reconciles them with what survived the last
    /// run (a restart, a crash, a reboot).
    pub async fn new(config: Config) -> Result<Self, RuntimeError> {
        let exe = std::env::current_exe().map_err(RuntimeError::SelfExe)?;
        Self::with_exe(config, helper_exe(&exe)?).await
    }

    /// As [`Runtime::new`], with the binary that monitors, pauses and exec
    /// helpers run given (`ketch-shim` in the daemon).
    pub async fn with_exe(config: Config, exe: PathBuf) -> Result<Self, RuntimeError> {
        let images = ImageStore::new(&config)?;
        // Whether pods may have a user namespace of their own: their layers
        // (under the root dir) must take idmapped mounts. A few ms, once.
        crate::idmap::probe(&config.root_dir);
        let mut containers = ContainerManager::open(
            &config.root_dir,
            &config.state_dir,
            config.cgroup_driver,
            exe.clone(),
        )
        .await?;
        if config.cgroup_driver == CgroupDriver::Systemd {
            let systemd = Systemd::connect(&config.systemd_bus).await?;
            tracing::info!(
                bus = %config.systemd_bus,
                cgroup_root = systemd.cgroup_root(),
                "systemd cgroup driver: containers get transient scope units"
            );
            containers = containers.with_systemd(systemd);
        }
        let handlers: BTreeMap<String, OciRuntime> = config
            .runtime_handler_roots()
            .into_iter()
            .map(|(handler, (path, root))| {
                let runtime = OciRuntime {
                    handler: handler.clone(),
                    path,
                    root,
                };
                (handler, runtime)
            })
            .collect();
        let sandboxes = SandboxManager::open(&config.root_dir, &config.state_dir)?
            .with_network(network::Cni::new(&config.cni))
            .with_pid_holder(exe.clone())
            .with_runtime_handlers(
                handlers
                    .iter()
                    .map(|(name, rt)| (name.clone(), rt.path.clone()))
                    .collect(),
            );
        sandboxes.set_container_hooks(Arc::new(PodContainerHooks {
            containers: containers.clone(),
            images: images.clone(),
        }))?;
        sandboxes.recover().await?;
        let runtime = Self {
            config: Arc::new(config),
            sandboxes,
            containers,
            images,
            handlers,
            handler_features: Arc::default(),
        };
        runtime.release_orphan_leases().await;
        Ok(runtime)
    }

    /// Leases of containers that no longer exist (removed while a crash
    /// cut the release off) are released, so their layers can go.
    async fn release_orphan_leases(&self) {
        let Ok(leases) = self.images.leases() else {
            return;
        };
        for lease in leases {
            if self.containers.status(&lease.container_id).is_err()
                && let Err(e) = self.images.release(&lease.container_id).await
            {
                tracing::warn!(container = %lease.container_id, "cannot release image lease: {e}");
            }
        }
    }

    pub fn sandboxes(&self) -> &SandboxManager {
        &self.sandboxes
    }

    pub fn containers(&self) -> &ContainerManager {
        &self.containers
    }

    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// RunPodSandbox: the pod, and for a pod that shares one PID namespace
    /// among its containers, the process that holds it (started by the
    /// sandbox module before the pod is READY; see `sandbox::pid_holder`).
    pub async fn run_pod(&self, config: PodConfig) -> Result<Arc<PodSandbox>, RuntimeError> {
        Ok(self.sandboxes.run(config).await?)
    }

    /// CreateContainer: the pod must be ready (and stays so meanwhile), the
    /// image present; the container holds a lease on the image's layers,
    /// taken before the container's record exists (so no crash can leave
    /// a container whose layers garbage collection may take). The images
    /// of its image volumes (mounts with `image`) must be present too
    /// (kubelet pulls them first, as it does the container's image) and
    /// the same lease holds them.
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let reference = Some(config.image.image.clone())
            .filter(|r| !r.is_empty())
            .ok_or(RuntimeError::NoImage)?;
        let ready = self.sandboxes.lock_ready(pod_id).await?;
        let pod = ready.pod();
        let image = self
            .images
            .find(&reference)?
            .ok_or_else(|| RuntimeError::ImageNotFound(reference.clone()))?;
        let lowerdirs = self.images.layer_dirs(&image.id)?;
        let mut volumes = Vec::new();
        for (mount_index, mount) in config.mounts.iter().enumerate() {
            if mount.image.is_empty() {
                continue;
            }
            let volume = self
                .images
                .find(&mount.image)?
                .ok_or_else(|| RuntimeError::ImageNotFound(mount.image.clone()))?;
            volumes.push(VolumeImage {
                mount_index,
                lowerdirs: self.images.layer_dirs(&volume.id)?,
                image_id: volume.id,
            });
        }
        let volume_ids: Vec<String> = volumes.iter().map(|v| v.image_id.clone()).collect();
        let c = &image.config;
        let run_config = ImageRunConfig {
            env: c.env.clone(),
            entrypoint: c.entrypoint.clone(),
            cmd: c.cmd.clone(),
            working_dir: c.working_dir.clone(),
            user: c.user.clone(),
            stop_signal: c.stop_signal.clone(),
        };
        let info = ImageInfo {
            id: image.id.clone(),
            reference,
            lowerdirs,
            run_config,
            volumes,
        };
        let mut pod_info = pod_info(&pod)?;
        pod_info.runtime = self.pod_runtime(&pod)?;
        let id = crate::store::generate_id().map_err(|e| RuntimeError::Random(e.to_string()))?;
        self.images
            .acquire_with_volumes(&id, &image.id, &volume_ids)
            .await?;
        crate::sandbox::crash_point("create-container-after-lease");
        if let Err(e) = self.containers.create(&id, &pod_info, config, info).await {
            if let Err(release) = self.images.release(&id).await {
                tracing::warn!(container = %id, "cannot release image lease: {release}");
            }
            return Err(e.into());
        }
        Ok(id)
    }

    /// UpdatePodSandboxResources: recorded with the pod, and written into
    /// the pod's own cgroup (its `cgroup_parent`) when that exists; see
    /// `sandbox::resources` for why this and no more.
    pub async fn update_pod_resources(
        &self,
        pod_id: &str,
        resources: PodResources,
    ) -> Result<(), RuntimeError> {
        let (cgroups, driver) = self.containers.cgroups();
        let cgroups = cgroups.cloned();
        self.sandboxes
            .update_resources(pod_id, resources, |pod, limits| {
                let parent = &pod.config.linux.cgroup_parent;
                let Some(cgroups) = cgroups.filter(|_| !parent.is_empty()) else {
                    return Ok(());
                };
                let cgroup_err = |e: crate::cgroups::CgroupError| SandboxError::Cgroup {
                    id: pod.id.clone(),
                    source: e,
                };
                let path =
                    crate::cgroups::parent_cgroup_path(driver, parent).map_err(cgroup_err)?;
                match cgroups.open(&path) {
                    Ok(cg) => cg.update(limits).map_err(cgroup_err),
                    Err(crate::cgroups::CgroupError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(cgroup_err(e)),
                }
            })
            .await?;
        Ok(())
    }

    /// StartContainer: only in a ready pod (one whose PID namespace holder
    /// died is not), which stays ready meanwhile.
    pub async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let record = self.containers.status(id)?;
        let _ready = self.sandboxes.lock_ready(&record.pod_id).await?;
        self.containers.start(&record.id).await?;
        Ok(())
    }

    /// RemoveContainer: idempotent; releases the image lease.
    pub async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(record) = self.containers.remove(id).await? {
            self.images.release(&record.id).await?;
        }
        Ok(())
    }

    /// The full pod ID for a ListContainers filter given as a prefix.
    pub fn resolve_pod_filter(&self, prefix: &str) -> Option<String> {
        if prefix.is_empty() {
            return None;
        }
        self.sandboxes.get(prefix).ok().map(|p| p.id.clone())
    }

    /// ContainerStatus's verbose `info`: pid and the OCI spec.
    pub fn container_verbose_info(&self, record: &ContainerRecord) -> serde_json::Value {
        let spec = std::fs::read(
            self.config
                .root_dir
                .join("containers")
                .join(&record.id)
                .join("config.json"),
        )
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        serde_json::json!({
            "pid": record.started.as_ref().map(|s| s.container_pid),
            "sandboxID": record.pod_id,
            "image": record.image_id,
            "logPath": record.log_path,
            "cgroupPath": record.cgroup_path,
            "rootfs": record.overlay.target,
            "runtimeSpec": spec,
            // containerd's key: the OCI runtime that runs it (the built-in
            // executor when absent).
            "runtimeType": record.runtime.as_ref().map(|rt| serde_json::json!({
                "handler": rt.handler,
                "path": rt.path,
                "root": rt.root,
            })),
        })
    }

    /// The stats of every pod in `pods`, with their containers'.
    pub async fn pod_stats(
        &self,
        pods: Vec<Arc<PodSandbox>>,
    ) -> Result<Vec<PodStats>, RuntimeError> {
        let netns: Vec<_> = pods
            .iter()
            .filter(|p| p.is_ready() && !p.config.host_network())
            .filter_map(|p| p.namespaces.net.clone().map(|n| (p.id.clone(), n)))
            .collect();
        let usage =
            crate::sandbox::stats::network_usage(netns.iter().map(|(_, n)| n.clone()).collect())
                .await;
        let mut networks: std::collections::HashMap<_, _> =
            netns.into_iter().map(|(id, _)| id).zip(usage).collect();
        let mut out = Vec::with_capacity(pods.len());
        for pod in pods {
            let filter = crate::container::ContainerFilter {
                pod_id: Some(pod.id.clone()),
                ..Default::default()
            };
            let containers = self.containers.stats_list(&filter).await?;
            // A pod given a cgroup parent has a cgroup of its own, the
            // parent of its containers' (kubelet's pod cgroup).
            let own = match containers.first() {
                Some((record, _)) if !pod.config.linux.cgroup_parent.is_empty() => {
                    match record.cgroup_path.rsplit_once('/') {
                        Some((parent, _)) if !parent.is_empty() => {
                            self.containers.cgroup_stats(parent.to_owned()).await
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let cgroup = own.or_else(|| {
                let samples: Vec<_> = containers
                    .iter()
                    .filter_map(|(_, s)| s.cgroup.as_ref())
                    .collect();
                crate::sandbox::stats::sum(&samples)
            });
            let rates: Vec<u64> = containers
                .iter()
                .filter_map(|(_, s)| s.usage_nano_cores)
                .collect();
            let usage_nano_cores = (!rates.is_empty()).then(|| rates.iter().sum());
            out.push(PodStats {
                network: networks.remove(&pod.id).flatten(),
                pod,
                cgroup,
                usage_nano_cores,
                containers,
            });
        }
        Ok(out)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The external runtime that runs the pod's containers; `None` for the
    /// built-in executor.
    fn pod_runtime(&self, pod: &PodSandbox) -> Result<Option<OciRuntime>, RuntimeError> {
        let handler = &pod.config.runtime_handler;
        match self.handlers.get(handler) {
            Some(runtime) => Ok(Some(runtime.clone())),
            None if handler.is_empty() => Ok(None),
            None => Err(RuntimeError::HandlerGone {
                pod: pod.id.clone(),
                handler: handler.clone(),
            }),
        }
    }

    /// Every handler a pod may name: the default `""` first, then the
    /// configured ones by name, each with its runtime's features (`None`:
    /// the built-in executor). A runtime is asked (`<rt> features`) once it
    /// answers; one that cannot run yet reports no features and is asked
    /// again next time.
    pub async fn runtime_handlers(&self) -> Vec<(String, Option<Features>)> {
        let mut names: Vec<String> = self.handlers.keys().cloned().collect();
        if !self.handlers.contains_key("") {
            names.insert(0, String::new());
        }
        let mut out = Vec::new();
        for name in names {
            let Some(runtime) = self.handlers.get(&name) else {
                out.push((name, None));
                continue;
            };
            let known = self
                .handler_features
                .lock()
                .ok()
                .and_then(|m| m.get(&name).copied());
            let features = match known {
                Some(f) => f,
                None => {
                    let rt = runtime.clone();
                    let probed = tokio::task::spawn_blocking(move || rt.features())
                        .await
                        .ok()
                        .flatten();
                    if let (Some(f), Ok(mut cache)) = (probed, self.handler_features.lock()) {
                        cache.insert(name.clone(), f);
                    }
                    probed.unwrap_or_default()
                }
            };
            out.push((name, Some(features)));
        }
        out
    }

    /// RuntimeReady and NetworkReady, each with a reason when false.
    pub fn conditions(&self) -> Vec<Condition> {
        let runtime = match std::fs::metadata(&self.config.root_dir) {
            Ok(m) if m.is_dir() => Condition {
                kind: RUNTIME_READY,
                ready: true,
                reason: String::new(),
                message: String::new(),
            },
            _ => Condition {
                kind: RUNTIME_READY,
                ready: false,
                reason: "RootDirMissing".into(),
                message: format!(
                    "root directory {} is not available",
                    self.config.root_dir.display()
                ),
            },
        };
        // Read on every call, so a config dropped in later is picked up
        // without a restart.
        let network = match network::find_network(&self.config.cni.conf_dirs) {
            Ok(_) => Condition {
                kind: NETWORK_READY,
                ready: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(e) => Condition {
                kind: NETWORK_READY,
                ready: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: cni plugin not initialized: {e}"),
            },
        };
        vec![runtime, network]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_is_found_beside_the_daemon_or_its_absence_named() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = dir.path().join("ketch");
        std::fs::write(&daemon, b"").unwrap();
        let shim = dir.path().join(SHIM_NAME);

        let err = helper_exe(&daemon).unwrap_err();
        assert!(
            matches!(&err, RuntimeError::NoShim(p) if *p == shim),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&shim.display().to_string()),
            "{err}"
        );

        std::fs::write(&shim, b"").unwrap();
        assert_eq!(helper_exe(&daemon).unwrap(), shim);
    }
}
