//! The host's cgroup filesystems as a container mounts them at
//! `/sys/fs/cgroup`: plain data the executor's mount plan turns into
//! mounts (`executor::mount_plan`).
//!
//! - v2: the unified hierarchy, one `cgroup2` mount.
//! - v1: a tmpfs at `/sys/fs/cgroup` and one `cgroup` mount per hierarchy,
//!   named after the host's mount point (`memory`, `cpu,cpuacct`,
//!   `systemd`), with a symlink per controller of a co-mounted hierarchy
//!   (`cpu` → `cpu,cpuacct`): runc's layout (`libcontainer/rootfs_linux.go`,
//!   `mountCgroupV1`), which programs reading their limits expect.
//! - hybrid hosts count as v1, as in [`CgroupManager::detect`]: ketch
//!   places containers only in the v1 hierarchies, and runc does not mount
//!   the controller-less `unified` tree into containers either.
//!
//! In a cgroup namespace of its own, a fresh mount of a hierarchy shows the
//! namespace's root, the container's own cgroup (cgroup_namespaces(7)).
//!
//! [`CgroupManager::detect`]: super::CgroupManager::detect

use std::path::PathBuf;

use super::v1::Hierarchy;

/// How a container mounts the host's cgroup filesystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupFs {
    V1(Vec<V1Fs>),
    V2,
}

/// One v1 hierarchy, as a container mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Fs {
    /// Its directory under `/sys/fs/cgroup`: the last component of the
    /// host's mount point.
    pub name: String,
    /// The mount(2) data that names the hierarchy: its controllers
    /// (`cpu,cpuacct`), or `none,name=systemd` for a named one. A mount
    /// inside a cgroup namespace may only name an existing hierarchy.
    pub data: String,
    /// Symlinks to `name` in `/sys/fs/cgroup`: each controller of a
    /// co-mounted hierarchy whose name differs (`cpu`, `cpuacct`).
    pub aliases: Vec<String>,
    /// The host's mount point: the container's own directory in it is
    /// bound instead of a fresh mount when it has no cgroup namespace.
    pub mount_point: PathBuf,
}

impl CgroupFs {
    /// The v1 form of the hierarchies `V1::from_mounts` kept (one per
    /// superblock). A hierarchy mounted at `/` (no name to give it) is left
    /// out.
    pub(crate) fn v1(hierarchies: &[Hierarchy]) -> Self {
        let fs = hierarchies
            .iter()
            .filter_map(|h| {
                let name = h.mount_point.file_name()?.to_str()?.to_owned();
                let named = h.controllers.iter().all(|c| c.starts_with("name="));
                let data = if named {
                    format!("none,{}", h.controllers.join(","))
                } else {
                    h.controllers.join(",")
                };
                let aliases = if h.controllers.len() > 1 {
                    h.controllers
                        .iter()
                        .filter(|c| !c.starts_with("name=") && **c != name)
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                Some(V1Fs {
                    name,
                    data,
                    aliases,
                    mount_point: h.mount_point.clone(),
                })
            })
            .collect();
        Self::V1(fs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::parse::parse_mountinfo;
    use crate::cgroups::v1::V1;

    #[test]
    fn a_hybrid_host_gives_its_v1_hierarchies_named_and_aliased() {
        let info = "\
30 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 25 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 25 0:30 / /sys/fs/cgroup/net_cls rw - cgroup cgroup rw,net_cls,net_prio
36 25 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let v1 = V1::from_mounts(&parse_mountinfo(info)).unwrap();
        let CgroupFs::V1(fs) = CgroupFs::v1(&v1.hierarchies) else {
            panic!("v1 expected");
        };
        let got: Vec<(&str, &str, Vec<&str>)> = fs
            .iter()
            .map(|h| {
                (
                    h.name.as_str(),
                    h.data.as_str(),
                    h.aliases.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("systemd", "none,name=systemd", vec![]),
                ("cpu,cpuacct", "cpu,cpuacct", vec!["cpu", "cpuacct"]),
                ("memory", "memory", vec![]),
                // Mounted under one controller's name: the other is the alias.
                ("net_cls", "net_cls,net_prio", vec!["net_prio"]),
            ]
        );
        assert_eq!(fs[2].mount_point, PathBuf::from("/sys/fs/cgroup/memory"));
    }
}
