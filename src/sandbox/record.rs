//! A pod sandbox in domain terms: what was asked for ([`PodConfig`], a
//! serialisable mirror of the CRI `PodSandboxConfig`) and what was made
//! ([`PodSandbox`], the persistent record).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::network::PodNetworkStatus;
/// The pod's pinned namespaces, the type the pause process joins.
pub use crate::monitor::pause::PodNamespaces;
use crate::pod_pid::PodInit;
use crate::store::Record;

/// Names of the pod's own files under its directory.
pub const HOSTNAME_FILE: &str = "hostname";
pub const HOSTS_FILE: &str = "hosts";
pub const RESOLV_CONF_FILE: &str = "resolv.conf";
pub const SHM_DIR: &str = "shm";
pub const NS_DIR: &str = "ns";
/// The node's shared memory, used by pods in the node's IPC namespace.
pub const HOST_SHM: &str = "/dev/shm";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

/// Where a namespace comes from (CRI `NamespaceMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    /// Shared by the pod's containers (the CRI default value).
    #[default]
    Pod,
    /// One per container.
    Container,
    /// The node's.
    Node,
    /// Another container's (`target_id`).
    Target,
}

impl NamespaceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NamespaceMode::Pod => "pod",
            NamespaceMode::Container => "container",
            NamespaceMode::Node => "node",
            NamespaceMode::Target => "target",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_id: String,
    /// The pod's own user namespace and its mappings (CRI `userns_options`
    /// mode `POD`); `None` is the node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<crate::idmap::UserNamespace>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// A seccomp or AppArmor profile choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityProfile {
    /// `RuntimeDefault`, `Unconfined` or `Localhost`.
    pub profile_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub localhost_ref: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeLinuxOptions {
    pub user: String,
    pub role: String,
    pub r#type: String,
    pub level: String,
}

/// The pod-level security context; containers inherit parts of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSecurity {
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub readonly_rootfs: bool,
    pub seccomp: Option<SecurityProfile>,
    pub apparmor: Option<SecurityProfile>,
    pub selinux: Option<SeLinuxOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxPodConfig {
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub namespaces: NamespaceOptions,
    pub security: PodSecurity,
}

/// What RunPodSandbox asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodConfig {
    pub metadata: PodMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
    pub linux: LinuxPodConfig,
}

impl PodConfig {
    /// The unique name of the pod: `<name>_<namespace>_<uid>_<attempt>`.
    pub fn reservation_name(&self) -> String {
        let m = &self.metadata;
        format!("{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
    }

    pub fn host_network(&self) -> bool {
        self.linux.namespaces.network == NamespaceMode::Node
    }

    pub fn host_ipc(&self) -> bool {
        self.linux.namespaces.ipc == NamespaceMode::Node
    }
}

/// The lifecycle of a pod. `Creating` exists only on disk, while
/// RunPodSandbox is at work: a record found in it at start is a crash's
/// leftover and is cleaned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodState {
    Creating,
    Ready,
    NotReady,
}

/// The persistent record of a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSandbox {
    pub id: String,
    /// The reserved name (see [`PodConfig::reservation_name`]).
    pub name: String,
    pub config: PodConfig,
    pub state: PodState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    /// The hostname the pod's containers see.
    pub hostname: String,
    /// `<state_dir>/pods/<id>`: pins, files, shm.
    pub dir: PathBuf,
    /// Valid while the pod is ready; released by StopPodSandbox.
    pub namespaces: PodNamespaces,
    /// The pod's `/dev/shm`: its own tmpfs, or the node's for host IPC.
    pub shm: PathBuf,
    /// Set once the network is up, cleared once it is torn down: while
    /// set, Stop and Remove owe a teardown.
    pub network: Option<PodNetworkStatus>,
    /// The process holding the pod's shared PID namespace (pid mode
    /// `Pod`): recorded before the pod is committed READY, cleared once
    /// StopPodSandbox has killed it. A READY pod whose holder is dead is
    /// reported NOTREADY (see `SandboxManager::get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_holder: Option<PodInit>,
    /// What UpdatePodSandboxResources last set (kubelet's in-place pod
    /// resize); none before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<super::resources::PodResources>,
}

impl Record for PodSandbox {
    fn id(&self) -> &str {
        &self.id
    }

    fn name(&self) -> &str {
        &self.name
    }
}

impl PodSandbox {
    pub fn is_ready(&self) -> bool {
        self.state == PodState::Ready
    }

    pub fn hostname_path(&self) -> PathBuf {
        self.dir.join(HOSTNAME_FILE)
    }

    pub fn hosts_path(&self) -> PathBuf {
        self.dir.join(HOSTS_FILE)
    }

    pub fn resolv_conf_path(&self) -> PathBuf {
        self.dir.join(RESOLV_CONF_FILE)
    }

    /// Whether `shm` is the pod's own tmpfs (else the node's /dev/shm).
    pub fn owns_shm(&self) -> bool {
        self.shm.starts_with(&self.dir)
    }

    /// The PID namespace mode containers of this pod get.
    pub fn pid_mode(&self) -> NamespaceMode {
        self.config.linux.namespaces.pid
    }

    /// The pod IP and any others, primary first.
    pub fn ips(&self) -> Vec<String> {
        self.network
            .as_ref()
            .map(|n| {
                std::iter::once(n.ip.clone())
                    .filter(|ip| !ip.is_empty())
                    .chain(n.additional_ips.iter().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// What PodSandboxStatus reports under `info` when verbose. Pin paths
    /// only while the pod is ready: a stopped pod has released them.
    pub fn verbose_info(&self) -> serde_json::Value {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .filter(|_| self.is_ready())
                .map(|p| p.display().to_string())
        };
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "createdAt": self.created_at,
            "hostname": self.hostname,
            "podDir": self.dir.display().to_string(),
            "namespaces": {
                "network": path(&self.namespaces.net),
                "ipc": path(&self.namespaces.ipc),
                "uts": path(&self.namespaces.uts),
                "pidMode": self.pid_mode().as_str(),
            },
            "shm": self.shm.display().to_string(),
            "files": {
                "hostname": self.hostname_path().display().to_string(),
                "hosts": self.hosts_path().display().to_string(),
                "resolvConf": self.resolv_conf_path().display().to_string(),
            },
            "network": self.network,
            "pidHolder": self.pid_holder,
            "resources": self.resources,
            "config": self.config,
        })
    }
}

/// ListPodSandbox's filter; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    /// A full ID or a prefix of one.
    pub id: Option<String>,
    pub state: Option<PodState>,
    /// Every pair must be among the pod's labels.
    pub labels: BTreeMap<String, String>,
}

impl PodFilter {
    pub fn matches(&self, pod: &PodSandbox) -> bool {
        self.id
            .as_ref()
            .is_none_or(|p| pod.id.starts_with(p.as_str()))
            && self.state.is_none_or(|s| pod.state == s)
            && self
                .labels
                .iter()
                .all(|(k, v)| pod.config.labels.get(k) == Some(v))
    }
}
