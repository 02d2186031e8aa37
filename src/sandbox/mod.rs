//! Pod sandboxes: their lifecycle, pinned namespaces and files.
//!
//! A pod is no process here (no pause container): it is a set of pinned
//! namespaces (network, IPC, UTS; see [`namespaces`]), a directory of files
//! its containers mount (`hostname`, `hosts`, `resolv.conf`, a `/dev/shm`
//! tmpfs; see [`files`]) and a persistent record ([`PodSandbox`]) in a
//! [`Store`]. The [`SandboxManager`] runs the CRI operations on them, one
//! file each: [`run`], [`stop`], [`remove`], and [`recover`] at start.
//!
//! ## On disk
//! - `<root_dir>/pods/<id>.json`: the record (persistent, so a pod outlives
//!   a daemon restart; after a reboot it comes back NOTREADY).
//! - `<state_dir>/pods/<id>/`: `ns/{user,net,ipc,uts}` pins, `hostname`,
//!   `hosts`, `resolv.conf`, `shm/` (volatile: gone at reboot).
//!
//! ## Stop and Remove
//! StopPodSandbox stops the containers, tears the network down and then
//! releases everything the kernel holds for the pod: it unpins the
//! namespaces and unmounts the shm tmpfs (the containers are gone, so
//! nothing uses them, and a stopped pod should not keep a netns, SysV IPC
//! objects or 64 MiB of shm alive until kubelet gets round to removing
//! it). The record and the small files stay until RemovePodSandbox, so
//! status and logs of a stopped pod remain readable. Both are idempotent
//! and accept unknown IDs.
//!
//! ## Network
//! A pod with its own network namespace is attached to the node's CNI
//! network ([`SandboxManager::with_network`]) in [`network::setup`] and
//! detached in [`network::teardown`]; see [`network`] for the contract.
//! A pod without its own netns (host network) never meets CNI. Without a
//! [`Cni`] (the module's own tests), pods get loopback only.
//!
//! ## Resources
//! UpdatePodSandboxResources records the pod's resources and overhead and
//! writes their sum into the pod's own cgroup when it has one; see
//! [`resources`].
//!
//! ## Hooks
//! Containers plug in through [`hooks::PodContainers`].
//!
//! ## User namespace
//! A pod asking for one of its own (`userns_options` mode `POD`) gets it
//! made with its other namespaces, which it owns ([`userns`]); its
//! containers join it first, and see their image and volumes through
//! idmapped mounts ([`crate::idmap`]).
//!
//! ## Shared PID namespace
//! A pod asking for one (`NamespaceMode::Pod` for pid) gets a process
//! holding it ([`pid_holder`]), started in [`run`] before the pod is READY
//! and killed in [`stop`] after it is NOTREADY; a pod whose holder died
//! is NOTREADY.

mod crash;
pub mod error;
pub mod files;
pub mod hooks;
pub mod mounts;
pub mod namespaces;
pub mod network;
pub mod pid_holder;
pub mod record;
pub mod recover;
pub mod remove;
pub mod resources;
pub mod run;
pub mod stats;
pub mod stop;
#[cfg(test)]
mod tests;
pub mod userns;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub(crate) use crash::crash_point;
pub use error::{HookError, OsError, SandboxError};
pub use files::HostFiles;
pub use hooks::PodContainers;
pub use record::{
    DnsConfig, LinuxPodConfig, NamespaceMode, NamespaceOptions, PodConfig, PodFilter, PodMetadata,
    PodSandbox, PodSecurity, PodState, PortMapping, SeLinuxOptions, SecurityProfile,
};
pub use resources::PodResources;

use crate::network::Cni;
use crate::store::{Guard, Store};
use crate::task::TaskFailed;

/// What the records of pods are called in messages.
pub const KIND: &str = "pod sandbox";

/// Runs the pod lifecycle. One per daemon, shared by the CRI layer.
pub struct SandboxManager {
    store: Store<PodSandbox>,
    /// `<state_dir>/pods`, canonical (mount points are compared to it).
    pods_dir: PathBuf,
    host_files: HostFiles,
    containers: OnceLock<Arc<dyn PodContainers>>,
    /// The node's pod network; `None`: loopback only.
    network: Option<Cni>,
    /// The binary pods' PID namespace holders run; `None`: no holders.
    pause_exe: Option<PathBuf>,
    /// The configured runtime handlers and their runtimes' binaries.
    runtime_handlers: std::collections::BTreeMap<String, PathBuf>,
}

impl SandboxManager {
    /// Opens the record store under `root_dir` and the pod directories under
    /// `state_dir`. Records are not read yet: call [`SandboxManager::recover`].
    pub fn open(root_dir: &Path, state_dir: &Path) -> Result<Self, SandboxError> {
        let store = Store::open(root_dir.join("pods"), KIND)?;
        let pods_dir = state_dir.join("pods");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&pods_dir)
            .map_err(|e| SandboxError::Host(OsError::new("create directory", &pods_dir, e)))?;
        let pods_dir = pods_dir
            .canonicalize()
            .map_err(|e| SandboxError::Host(OsError::new("resolve", &pods_dir, e)))?;
        Ok(Self {
            store,
            pods_dir,
            host_files: HostFiles::default(),
            containers: OnceLock::new(),
            network: None,
            pause_exe: None,
            runtime_handlers: Default::default(),
        })
    }

    /// Attaches pods with their own network namespace to the CNI network
    /// `cni` finds (read on every call, so a config added later is used
    /// without a restart).
    pub fn with_network(mut self, cni: Cni) -> Self {
        self.network = Some(cni);
        self
    }

    /// The runtime handlers (name → the runtime's binary) a pod may name
    /// besides the default `""`; RunPodSandbox refuses any other name.
    pub fn with_runtime_handlers(
        mut self,
        handlers: std::collections::BTreeMap<String, PathBuf>,
    ) -> Self {
        self.runtime_handlers = handlers;
        self
    }

    /// The CNI client pods are attached with, if any.
    pub fn network(&self) -> Option<&Cni> {
        self.network.as_ref()
    }

    /// Applies the node's pod CIDRs from `UpdateRuntimeConfig`
    /// (`"10.244.1.0/24,fd00:1::/64"`): recorded by the CNI client, and
    /// `cni.conf_template` rendered with them while no network config
    /// exists (see [`Cni::update_pod_cidr`]). An empty value changes
    /// nothing, as with containerd. Returns the config file written.
    pub async fn update_pod_cidr(&self, pod_cidr: &str) -> Result<Option<PathBuf>, SandboxError> {
        let Some(cni) = self.network.clone() else {
            return Ok(None);
        };
        if pod_cidr.trim().is_empty() {
            return Ok(None);
        }
        let pod_cidr = pod_cidr.to_owned();
        let written = crate::task::blocking(move || cni.update_pod_cidr(&pod_cidr))
            .await
            .map_err(SandboxError::PodCidr)?;
        let cidrs = self
            .network
            .as_ref()
            .map(Cni::pod_cidrs)
            .unwrap_or_default();
        tracing::info!(?cidrs, written = ?written, "node pod CIDR updated");
        Ok(written)
    }

    /// Tears the network of `pod` down if it has one of its own and a
    /// network is configured.
    async fn teardown_network(&self, pod: &PodSandbox) -> Result<(), SandboxError> {
        match &self.network {
            Some(cni) if pod.namespaces.net.is_some() => network::teardown(pod, cni).await,
            _ => Ok(()),
        }
    }

    /// Uses other node files than /etc/hosts and /etc/resolv.conf.
    pub fn with_host_files(mut self, host_files: HostFiles) -> Self {
        self.host_files = host_files;
        self
    }

    /// Registers the container module's hooks; once.
    pub fn set_container_hooks(&self, hooks: Arc<dyn PodContainers>) -> Result<(), SandboxError> {
        self.containers
            .set(hooks)
            .map_err(|_| SandboxError::HooksAlreadySet)
    }

    /// Where pod directories live.
    pub fn pods_dir(&self) -> &Path {
        &self.pods_dir
    }

    /// The pod of `id_or_prefix`, as last committed (NOTREADY if its PID
    /// namespace holder died since); never waits.
    pub fn get(&self, id_or_prefix: &str) -> Result<Arc<PodSandbox>, SandboxError> {
        Ok(self.observed(self.store.get(id_or_prefix)?))
    }

    /// Every pod `filter` matches, oldest first; never waits.
    pub fn list(&self, filter: &PodFilter) -> Vec<Arc<PodSandbox>> {
        let mut pods: Vec<_> = self
            .store
            .list()
            .into_iter()
            .map(|p| self.observed(p))
            .filter(|p| filter.matches(p))
            .collect();
        pods.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        pods
    }

    /// Locks a ready pod for an operation that needs it to stay ready
    /// (creating or starting a container in it): Stop and Remove of the
    /// pod wait until the returned guard is dropped. `NotReady` if the pod
    /// is stopped or its PID namespace holder died.
    pub async fn lock_ready(&self, id_or_prefix: &str) -> Result<ReadyPod, SandboxError> {
        let guard = self.store.lock(id_or_prefix).await?;
        let pod = guard.get();
        if !pod.is_ready() || !self.holder_alive(&pod) {
            return Err(SandboxError::NotReady { id: pod.id.clone() });
        }
        Ok(ReadyPod { guard })
    }
}

/// A ready pod, locked: see [`SandboxManager::lock_ready`].
pub struct ReadyPod {
    guard: Guard<PodSandbox>,
}

impl ReadyPod {
    pub fn pod(&self) -> Arc<PodSandbox> {
        self.guard.get()
    }
}

/// Runs blocking file system work (mounts, unlinks, writes) off the async
/// threads.
async fn blocking<T, F>(id: &str, work: F) -> Result<T, SandboxError>
where
    F: FnOnce() -> Result<T, OsError> + Send + 'static,
    T: Send + 'static,
{
    // The worker's death is caught here rather than through a `From`, so
    // that both failures name the pod.
    match crate::task::blocking(move || Ok::<_, TaskFailed>(work())).await {
        Ok(result) => result.map_err(SandboxError::os(id)),
        Err(TaskFailed(message)) => Err(SandboxError::Task {
            id: id.to_owned(),
            message,
        }),
    }
}

/// Takes down everything mounted under the pod's directory (pins, shm)
/// and removes the pin files: what Stop releases.
fn release_kernel_resources(pod: &PodSandbox) -> Result<(), OsError> {
    mounts::unmount_all_under(&pod.dir)?;
    namespaces::unpin_all(&pod.namespaces)
}

/// Takes down everything under `dir` and removes it.
fn remove_pod_dir(dir: &Path) -> Result<(), OsError> {
    mounts::unmount_all_under(dir)?;
    mounts::remove_dir_all(dir)
}
