//! The `cgroup` mount of a spec, on v1 and v2 hosts, with and without a
//! cgroup namespace of the container's own.

use super::*;
use crate::cgroups::CgroupFs;
use crate::cgroups::container_fs::V1Fs;
use oci_spec::runtime::{Mount, MountBuilder, SpecBuilder};

const ROOTFS: &str = "/var/lib/ketch/containers/c/rootfs";
const RO: &[&str] = &["nosuid", "noexec", "nodev", "relatime", "ro"];
const RW: &[&str] = &["nosuid", "noexec", "nodev", "relatime", "rw"];

fn mount(destination: &str, typ: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(typ)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

/// The steps of a spec with /sys and a cgroup mount that act under
/// /sys/fs/cgroup, in order.
fn cgroup_steps(options: &[&str], cgroups: &CgroupMounts) -> Vec<MountStep> {
    let spec = SpecBuilder::default()
        .mounts(vec![
            mount("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
            mount("/sys/fs/cgroup", "cgroup", options),
        ])
        .build()
        .unwrap();
    let plan = MountPlan::new(Path::new(ROOTFS), &spec, cgroups).unwrap();
    let under = |t: &Target| matches!(t, Target::Rootfs(p) if p.starts_with("/sys/fs/cgroup"));
    plan.before_pivot
        .into_iter()
        .filter(|s| match s {
            MountStep::Mount(c) => under(&c.target),
            MountStep::MakeDir(t) => under(t),
            MountStep::BindTarget { target, .. } => under(target),
            MountStep::Symlink { path, .. } => under(path),
            _ => false,
        })
        .collect()
}

fn v1_host() -> CgroupFs {
    let h = |name: &str, data: &str, aliases: &[&str]| V1Fs {
        name: name.into(),
        data: data.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        mount_point: Path::new("/sys/fs/cgroup").join(name),
    };
    CgroupFs::V1(vec![
        h("cpu,cpuacct", "cpu,cpuacct", &["cpu", "cpuacct"]),
        h("memory", "memory", &[]),
        h("systemd", "none,name=systemd", &[]),
    ])
}

fn at(p: &str) -> Target {
    Target::Rootfs(p.into())
}

const DEFAULT: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_RELATIME);

fn fresh(target: &str, fstype: &str, data: Option<&str>, flags: MsFlags) -> [MountStep; 2] {
    [
        MountStep::MakeDir(at(target)),
        MountStep::Mount(MountCall {
            source: Some(fstype.into()),
            target: at(target),
            fstype: Some(fstype.into()),
            flags,
            data: data.map(str::to_owned),
        }),
    ]
}

fn tmpfs() -> [MountStep; 2] {
    [
        MountStep::MakeDir(at("/sys/fs/cgroup")),
        MountStep::Mount(MountCall {
            source: Some("tmpfs".into()),
            target: at("/sys/fs/cgroup"),
            fstype: Some("tmpfs".into()),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            data: Some("mode=755".into()),
        }),
    ]
}

fn symlink(name: &str, to: &str) -> MountStep {
    MountStep::Symlink {
        to: to.into(),
        path: at(&format!("/sys/fs/cgroup/{name}")),
        replace: false,
        only_if_exists: None,
    }
}

#[test]
fn v1_in_a_cgroup_namespace_mounts_every_hierarchy_read_only_as_runc() {
    let cgroups = CgroupMounts {
        fs: Some(v1_host()),
        namespaced: true,
        dirs: Vec::new(),
    };
    let ro = DEFAULT | MsFlags::MS_RDONLY;
    let mut want = tmpfs().to_vec();
    want.extend(fresh(
        "/sys/fs/cgroup/cpu,cpuacct",
        "cgroup",
        Some("cpu,cpuacct"),
        ro,
    ));
    want.push(symlink("cpu", "cpu,cpuacct"));
    want.push(symlink("cpuacct", "cpu,cpuacct"));
    want.extend(fresh("/sys/fs/cgroup/memory", "cgroup", Some("memory"), ro));
    want.extend(fresh(
        "/sys/fs/cgroup/systemd",
        "cgroup",
        Some("none,name=systemd"),
        ro,
    ));
    // The tmpfs goes read-only last, once its mount points exist.
    want.push(MountStep::Mount(MountCall::bind_remount(
        at("/sys/fs/cgroup"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
    )));
    assert_eq!(cgroup_steps(RO, &cgroups), want);
}

#[test]
fn a_privileged_container_gets_them_writable() {
    let cgroups = CgroupMounts {
        fs: Some(v1_host()),
        namespaced: true,
        dirs: Vec::new(),
    };
    let steps = cgroup_steps(RW, &cgroups);
    assert!(steps.iter().all(|s| match s {
        MountStep::Mount(c) => !c.flags.contains(MsFlags::MS_RDONLY),
        _ => true,
    }));
    assert!(steps.contains(&fresh("/sys/fs/cgroup/memory", "cgroup", Some("memory"), DEFAULT)[1]));
}

#[test]
fn v2_in_a_cgroup_namespace_is_one_cgroup2_mount() {
    let cgroups = CgroupMounts {
        fs: Some(CgroupFs::V2),
        namespaced: true,
        dirs: vec!["/sys/fs/cgroup/kubepods/pod1/c1".into()],
    };
    assert_eq!(
        cgroup_steps(RO, &cgroups),
        fresh(
            "/sys/fs/cgroup",
            "cgroup2",
            None,
            DEFAULT | MsFlags::MS_RDONLY
        )
        .to_vec()
    );
    assert_eq!(
        cgroup_steps(RW, &cgroups),
        fresh("/sys/fs/cgroup", "cgroup2", None, DEFAULT).to_vec()
    );
}

fn bound(source: &str, target: &str, flags: MsFlags) -> Vec<MountStep> {
    vec![
        MountStep::BindTarget {
            source: source.into(),
            target: at(target),
        },
        MountStep::Mount(MountCall::bind(source, at(target), true)),
        MountStep::Mount(MountCall::bind_remount(at(target), flags)),
    ]
}

#[test]
fn without_a_cgroup_namespace_only_the_containers_own_dirs_are_bound() {
    let dirs = vec![
        PathBuf::from("/sys/fs/cgroup/memory/ketch/c1"),
        PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/ketch/c1"),
    ];
    let cgroups = CgroupMounts {
        fs: Some(v1_host()),
        namespaced: false,
        dirs,
    };
    let ro = DEFAULT | MsFlags::MS_RDONLY;
    let mut want = tmpfs().to_vec();
    want.extend(bound(
        "/sys/fs/cgroup/cpu,cpuacct/ketch/c1",
        "/sys/fs/cgroup/cpu,cpuacct",
        ro,
    ));
    want.push(symlink("cpu", "cpu,cpuacct"));
    want.push(symlink("cpuacct", "cpu,cpuacct"));
    want.extend(bound(
        "/sys/fs/cgroup/memory/ketch/c1",
        "/sys/fs/cgroup/memory",
        ro,
    ));
    // Not placed in the systemd hierarchy: nothing of it is shown.
    want.push(MountStep::Mount(MountCall::bind_remount(
        at("/sys/fs/cgroup"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
    )));
    assert_eq!(cgroup_steps(RO, &cgroups), want);

    let v2 = CgroupMounts {
        fs: Some(CgroupFs::V2),
        namespaced: false,
        dirs: vec!["/sys/fs/cgroup/ketch/c1".into()],
    };
    assert_eq!(
        cgroup_steps(RO, &v2),
        bound("/sys/fs/cgroup/ketch/c1", "/sys/fs/cgroup", ro)
    );
}

#[test]
fn a_host_without_cgroups_gets_no_cgroup_mount() {
    assert!(cgroup_steps(RO, &CgroupMounts::default()).is_empty());
}
