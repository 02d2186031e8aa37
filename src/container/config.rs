//! A container as CreateContainer asks for it, in domain terms: what the
//! CRI's `ContainerConfig` says, converted once in `cri/containers.rs`, so
//! nothing below `cri/` reads protocol types. It is persisted in the
//! container's record (and reported back by ContainerStatus), so every
//! field derives serde with defaults: a record written before a field
//! existed still loads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cgroups::{HugepageLimit, Resources};

/// Everything a CreateContainer request asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerConfig {
    /// The name within the pod (`metadata.name`).
    pub name: String,
    /// Which restart of the same container this is (`metadata.attempt`).
    pub attempt: u32,
    pub image: ImageRequest,
    /// Replaces the image's Entrypoint.
    pub command: Vec<String>,
    /// Replaces the image's Cmd.
    pub args: Vec<String>,
    pub working_dir: String,
    /// In the order given; a later one wins over an earlier one of the
    /// same name.
    pub envs: Vec<EnvVar>,
    pub mounts: Vec<MountRequest>,
    pub devices: Vec<DeviceRequest>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Relative to the pod's log directory; empty: no log file.
    pub log_path: String,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// The limits asked for; `None` when the request had none.
    pub resources: Option<ContainerResources>,
    pub security: SecurityContext,
    /// The signal StopContainer sends first (`SIGRTMIN+3`); empty: the
    /// image's STOPSIGNAL, else SIGTERM.
    pub stop_signal: String,
}

/// The image a container asks for, as ContainerStatus echoes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageRequest {
    pub image: String,
    pub annotations: BTreeMap<String, String>,
    pub user_specified_image: String,
    pub runtime_handler: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// How a bind mount propagates between the host and the container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// `rprivate`: nothing propagates either way.
    #[default]
    Private,
    /// `rslave`: mounts made on the host later appear inside.
    HostToContainer,
    /// `rshared`: both ways.
    Bidirectional,
}

impl Propagation {
    /// The OCI mount option.
    pub fn oci_option(self) -> &'static str {
        match self {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        }
    }
}

/// A uid or gid range of an idmapped mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub host_id: u32,
    pub container_id: u32,
    pub length: u32,
}

/// One CRI mount: a host path bound into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountRequest {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub recursive_read_only: bool,
    pub selinux_relabel: bool,
    pub propagation: Propagation,
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
    /// An image whose root filesystem is the source (image volumes);
    /// empty for a host path.
    pub image: String,
    /// With `image`: the directory of the image to mount, relative to its
    /// root; empty for the whole image.
    pub image_sub_path: String,
}

/// A host device node given to the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceRequest {
    pub container_path: String,
    pub host_path: String,
    /// A subset of `rwm`; empty means all three.
    pub permissions: String,
}

/// The container's limits: the cgroup's, and the one process setting the
/// CRI sends with them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerResources {
    pub cgroup: Resources,
    /// `/proc/<pid>/oom_score_adj` of the container's process; 0 leaves the
    /// inherited value.
    pub oom_score_adj: i64,
}

/// Resources in the CRI's own shape, where 0 and "" mean "not set": what
/// the CRI message carries and what records of the first format hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct CriResourceFields {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub oom_score_adj: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: Vec<HugepageLimit>,
    pub unified: BTreeMap<String, String>,
    pub memory_swap_limit_in_bytes: i64,
}

impl From<CriResourceFields> for ContainerResources {
    fn from(r: CriResourceFields) -> Self {
        let nonzero = |v: i64| (v != 0).then_some(v);
        let positive = |v: i64| u64::try_from(v).ok().filter(|&v| v > 0);
        let text = |s: String| (!s.is_empty()).then_some(s);
        ContainerResources {
            cgroup: Resources {
                cpu_shares: positive(r.cpu_shares),
                cpu_quota: nonzero(r.cpu_quota),
                cpu_period: positive(r.cpu_period),
                cpuset_cpus: text(r.cpuset_cpus),
                cpuset_mems: text(r.cpuset_mems),
                memory_limit: nonzero(r.memory_limit_in_bytes),
                memory_swap: nonzero(r.memory_swap_limit_in_bytes),
                pids_limit: None,
                hugepage_limits: r.hugepage_limits,
                unified: r.unified,
                devices: Vec::new(),
            },
            oom_score_adj: r.oom_score_adj,
        }
    }
}

impl ContainerResources {
    /// Lays an update over these limits: what the update sets wins, what
    /// it leaves unset (`None`, empty, 0) stays, as containerd merges an
    /// UpdateContainerResources into the spec.
    pub fn merge(&mut self, update: &ContainerResources) {
        let (to, from) = (&mut self.cgroup, &update.cgroup);
        fn set<T: Clone>(to: &mut Option<T>, from: &Option<T>) {
            if from.is_some() {
                to.clone_from(from);
            }
        }
        set(&mut to.cpu_shares, &from.cpu_shares);
        set(&mut to.cpu_quota, &from.cpu_quota);
        set(&mut to.cpu_period, &from.cpu_period);
        set(&mut to.cpuset_cpus, &from.cpuset_cpus);
        set(&mut to.cpuset_mems, &from.cpuset_mems);
        set(&mut to.memory_limit, &from.memory_limit);
        set(&mut to.memory_swap, &from.memory_swap);
        set(&mut to.pids_limit, &from.pids_limit);
        if !from.hugepage_limits.is_empty() {
            to.hugepage_limits.clone_from(&from.hugepage_limits);
        }
        to.unified
            .extend(from.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
        if update.oom_score_adj != 0 {
            self.oom_score_adj = update.oom_score_adj;
        }
    }
}

/// A seccomp or AppArmor profile choice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityProfile {
    /// `RuntimeDefault`, `Unconfined` or `Localhost`.
    pub profile_type: String,
    pub localhost_ref: String,
}

/// SELinux labels (accepted and kept; this host class has no SELinux).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeLinuxLabel {
    pub user: String,
    pub role: String,
    pub r#type: String,
    pub level: String,
}

/// The container's Linux security context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecurityContext {
    pub privileged: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub add_ambient_capabilities: Vec<String>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub supplemental_groups: Vec<i64>,
    /// `Merge` (the image's groups of the user added) or `Strict`.
    pub supplemental_groups_policy: String,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    pub seccomp: Option<SecurityProfile>,
    pub apparmor: Option<SecurityProfile>,
    pub selinux: Option<SeLinuxLabel>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_overrides_what_it_sets_and_keeps_the_rest() {
        let mut now = ContainerResources {
            cgroup: Resources {
                cpu_shares: Some(512),
                memory_limit: Some(64 << 20),
                unified: [("memory.high".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
            oom_score_adj: 900,
        };
        now.merge(&ContainerResources {
            cgroup: Resources {
                memory_limit: Some(128 << 20),
                hugepage_limits: vec![HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 4 << 20,
                }],
                unified: [("memory.max".to_string(), "2".to_string())].into(),
                ..Default::default()
            },
            oom_score_adj: 0,
        });
        assert_eq!(now.cgroup.cpu_shares, Some(512));
        assert_eq!(now.cgroup.memory_limit, Some(128 << 20));
        assert_eq!(now.cgroup.hugepage_limits.len(), 1);
        assert_eq!(now.cgroup.unified.len(), 2);
        assert_eq!(now.oom_score_adj, 900);
    }
}
