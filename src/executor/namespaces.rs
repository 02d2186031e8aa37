//! Which namespaces a container's process joins and which it makes, as
//! plain data from the spec's `linux.namespaces` (process A takes these
//! steps, see the module docs of `executor`).
//!
//! - A namespace with a path is joined with setns(2); one without is made
//!   by a single unshare(2) after every join.
//! - setns order: the user namespace first, the pid namespace last. The
//!   pod's user namespace owns its other namespaces: joined first, it
//!   gives the process the capabilities to join them (setns(2): the
//!   caller needs CAP_SYS_ADMIN in the namespace's owning user
//!   namespace), and everything unshared after it (mount, cgroup, pid) is
//!   owned by it too, so /proc, sysfs and mqueue can be mounted inside. A
//!   pid namespace takes effect only for children forked after it
//!   (pid_namespaces(7)).
//! - A mount namespace is required and always made anew (mounting in the
//!   host's is never what anyone wants; joining one is not supported).
//!   A new user namespace (one without a path) is refused: its ID
//!   mappings would have to be written from outside; pods make theirs.
//!   The time namespace is refused.
//!
//! A second fork (B, the container's PID 1 or a member of the joined pid
//! namespace) follows in every case: a new or joined pid namespace applies
//! only to children, and A must exit after reporting B's pid, so B is
//! reparented to the monitor, a child subreaper.

use std::path::PathBuf;

use nix::sched::CloneFlags;
use oci_spec::runtime::{Linux, LinuxNamespaceType};

use super::ExecutorError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    /// Namespaces joined by path, in setns order.
    pub join: Vec<(CloneFlags, PathBuf)>,
    /// Namespaces made anew by one unshare(2), after the joins.
    pub unshare: CloneFlags,
}

impl NamespacePlan {
    pub fn new(linux: &Linux) -> Result<Self, ExecutorError> {
        let invalid = |m: &str| ExecutorError::InvalidSpec(m.to_owned());
        let mut join = Vec::new();
        let mut unshare = CloneFlags::empty();
        let mut has_mount = false;
        for ns in linux.namespaces().as_deref().unwrap_or_default() {
            let flag = match ns.typ() {
                LinuxNamespaceType::Mount => {
                    has_mount = true;
                    CloneFlags::CLONE_NEWNS
                }
                LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
                LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
                LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
                LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
                LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
                LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
                other => {
                    return Err(ExecutorError::InvalidSpec(format!(
                        "{other:?} namespaces are not supported"
                    )));
                }
            };
            match ns.path() {
                Some(path) if !path.as_os_str().is_empty() => {
                    if flag == CloneFlags::CLONE_NEWNS {
                        return Err(invalid("joining a mount namespace is not supported"));
                    }
                    join.push((flag, path.clone()));
                }
                _ if flag == CloneFlags::CLONE_NEWUSER => {
                    return Err(invalid(
                        "a new user namespace is not supported: join one by path",
                    ));
                }
                _ => unshare |= flag,
            }
        }
        if !has_mount {
            return Err(invalid("a mount namespace is required"));
        }
        // Stable: the spec's order among the others.
        join.sort_by_key(|(flag, _)| setns_rank(*flag));
        Ok(Self { join, unshare })
    }

    /// A cgroup namespace of the container's own, new or joined: a fresh
    /// mount of the cgroup filesystem shows its root, not the host's tree.
    /// A new one is made after A has entered the container's cgroups, so
    /// its root is the container's own cgroup (cgroup_namespaces(7)).
    pub fn own_cgroup_ns(&self) -> bool {
        self.unshare.contains(CloneFlags::CLONE_NEWCGROUP)
            || self
                .join
                .iter()
                .any(|(flag, _)| *flag == CloneFlags::CLONE_NEWCGROUP)
    }

    /// The process joins a user namespace: it is root only in there, and
    /// the mounts it makes belong to that namespace.
    pub fn joins_user_ns(&self) -> bool {
        self.join
            .iter()
            .any(|(flag, _)| *flag == CloneFlags::CLONE_NEWUSER)
    }

    /// A new UTS namespace: the spec's hostname and domainname are set in
    /// it (in a joined or the host's one they are not ours to change).
    pub fn new_uts(&self) -> bool {
        self.unshare.contains(CloneFlags::CLONE_NEWUTS)
    }
}

/// setns order: user first, pid last, the others in between.
fn setns_rank(flag: CloneFlags) -> u8 {
    if flag == CloneFlags::CLONE_NEWUSER {
        0
    } else if flag == CloneFlags::CLONE_NEWPID {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder};

    fn linux(namespaces: &[(LinuxNamespaceType, Option<&str>)]) -> Linux {
        let namespaces = namespaces
            .iter()
            .map(|(typ, path)| {
                let mut b = LinuxNamespaceBuilder::default().typ(*typ);
                if let Some(path) = path {
                    b = b.path(*path);
                }
                b.build().unwrap()
            })
            .collect::<Vec<_>>();
        LinuxBuilder::default()
            .namespaces(namespaces)
            .build()
            .unwrap()
    }

    #[test]
    fn a_pod_container_joins_the_pods_namespaces_pid_last() {
        use LinuxNamespaceType::*;
        let plan = NamespacePlan::new(&linux(&[
            (Pid, Some("/proc/42/ns/pid")),
            (Ipc, Some("/run/ketch/pods/p/ns/ipc")),
            (Uts, Some("/run/ketch/pods/p/ns/uts")),
            (Network, Some("/run/ketch/pods/p/ns/net")),
            (Mount, None),
            (Cgroup, None),
        ]))
        .unwrap();
        assert_eq!(
            plan.join,
            vec![
                (CloneFlags::CLONE_NEWIPC, "/run/ketch/pods/p/ns/ipc".into()),
                (CloneFlags::CLONE_NEWUTS, "/run/ketch/pods/p/ns/uts".into()),
                (CloneFlags::CLONE_NEWNET, "/run/ketch/pods/p/ns/net".into()),
                (CloneFlags::CLONE_NEWPID, "/proc/42/ns/pid".into()),
            ]
        );
        assert_eq!(
            plan.unshare,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP
        );
        assert!(!plan.new_uts());
        assert!(plan.own_cgroup_ns());
    }

    #[test]
    fn a_cgroup_namespace_is_the_containers_own_when_made_or_joined() {
        use LinuxNamespaceType::*;
        let own = |ns: &[(LinuxNamespaceType, Option<&str>)]| {
            NamespacePlan::new(&linux(ns)).unwrap().own_cgroup_ns()
        };
        assert!(own(&[(Mount, None), (Cgroup, None)]));
        assert!(own(&[(Mount, None), (Cgroup, Some("/proc/42/ns/cgroup"))]));
        assert!(!own(&[(Mount, None), (Pid, None)]));
    }

    #[test]
    fn namespaces_without_a_path_are_made_in_one_unshare() {
        use LinuxNamespaceType::*;
        let plan =
            NamespacePlan::new(&linux(&[(Mount, None), (Pid, None), (Uts, Some(""))])).unwrap();
        assert!(plan.join.is_empty());
        assert_eq!(
            plan.unshare,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS
        );
        assert!(plan.new_uts());
    }

    #[test]
    fn the_pods_user_namespace_is_joined_first() {
        use LinuxNamespaceType::*;
        let plan = NamespacePlan::new(&linux(&[
            (Network, Some("/run/ketch/pods/p/ns/net")),
            (Pid, Some("/proc/42/ns/pid")),
            (User, Some("/run/ketch/pods/p/ns/user")),
            (Mount, None),
            (Cgroup, None),
        ]))
        .unwrap();
        assert_eq!(
            plan.join,
            vec![
                (
                    CloneFlags::CLONE_NEWUSER,
                    "/run/ketch/pods/p/ns/user".into()
                ),
                (CloneFlags::CLONE_NEWNET, "/run/ketch/pods/p/ns/net".into()),
                (CloneFlags::CLONE_NEWPID, "/proc/42/ns/pid".into()),
            ]
        );
        assert!(plan.joins_user_ns());
        assert!(!plan.unshare.contains(CloneFlags::CLONE_NEWUSER));
        let host = NamespacePlan::new(&linux(&[(Mount, None)])).unwrap();
        assert!(!host.joins_user_ns());
    }

    #[test]
    fn unsupported_shapes_are_refused() {
        use LinuxNamespaceType::*;
        let err = |ns: &[(LinuxNamespaceType, Option<&str>)]| {
            NamespacePlan::new(&linux(ns)).unwrap_err().to_string()
        };
        assert_eq!(
            err(&[(Pid, None)]),
            "invalid OCI spec: a mount namespace is required"
        );
        assert_eq!(
            err(&[(Mount, Some("/proc/1/ns/mnt"))]),
            "invalid OCI spec: joining a mount namespace is not supported"
        );
        assert_eq!(
            err(&[(Mount, None), (User, None)]),
            "invalid OCI spec: a new user namespace is not supported: join one by path"
        );
        assert_eq!(
            err(&[(Mount, None), (Time, None)]),
            "invalid OCI spec: Time namespaces are not supported"
        );
    }
}
