use super::*;
use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, SpecBuilder,
};

const ROOTFS: &str = "/var/lib/ketch/containers/c/rootfs";

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

/// The mounts `container::spec` gives every container.
fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ]
}

struct Shape {
    mounts: Vec<Mount>,
    masked: Vec<&'static str>,
    readonly: Vec<&'static str>,
    readonly_root: bool,
    terminal: bool,
    rootfs_propagation: Option<&'static str>,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            mounts: default_mounts(),
            masked: vec!["/proc/kcore", "/sys/firmware"],
            readonly: vec!["/proc/sys", "/proc/sysrq-trigger"],
            readonly_root: false,
            terminal: false,
            rootfs_propagation: None,
        }
    }
}

fn spec(shape: Shape) -> Spec {
    let mut linux = LinuxBuilder::default()
        .masked_paths(
            shape
                .masked
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            shape
                .readonly
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
    if let Some(p) = shape.rootfs_propagation {
        linux = linux.rootfs_propagation(p);
    }
    SpecBuilder::default()
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(shape.readonly_root)
                .build()
                .unwrap(),
        )
        .process(
            ProcessBuilder::default()
                .terminal(shape.terminal)
                .build()
                .unwrap(),
        )
        .mounts(shape.mounts)
        .linux(linux.build().unwrap())
        .build()
        .unwrap()
}

fn plan(shape: Shape) -> MountPlan {
    MountPlan::new(Path::new(ROOTFS), &spec(shape), &CgroupMounts::default()).unwrap()
}

fn rootfs(path: &str) -> Target {
    Target::Rootfs(path.into())
}

fn container(path: &str) -> Target {
    Target::Container(path.into())
}

fn position(steps: &[MountStep], wanted: &MountStep) -> usize {
    steps
        .iter()
        .position(|s| s == wanted)
        .unwrap_or_else(|| panic!("{wanted:?} is not in the plan {steps:#?}"))
}

#[test]
fn an_ordinary_container() {
    let plan = plan(Shape::default());
    let steps = &plan.before_pivot;
    let slave_rec = MsFlags::MS_SLAVE | MsFlags::MS_REC;
    // Nothing is mounted before the whole tree is a slave of the host's.
    assert_eq!(
        steps[0],
        MountStep::Mount(MountCall::propagation(Target::Host("/".into()), slave_rec))
    );
    assert_eq!(
        steps[1],
        MountStep::Mount(MountCall {
            source: Some(ROOTFS.into()),
            target: Target::Host(ROOTFS.into()),
            fstype: None,
            flags: MsFlags::MS_BIND | MsFlags::MS_REC,
            data: None,
        })
    );
    assert_eq!(steps[2], MountStep::MakeDir(rootfs("/proc")));
    assert_eq!(
        steps[3],
        MountStep::Mount(MountCall {
            source: Some("proc".into()),
            target: rootfs("/proc"),
            fstype: Some("proc".into()),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
            data: None,
        })
    );
    assert_eq!(
        steps[5],
        MountStep::Mount(MountCall {
            source: Some("tmpfs".into()),
            target: rootfs("/dev"),
            fstype: Some("tmpfs".into()),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            data: Some("mode=755,size=65536k".into()),
        })
    );
    // sysfs falls back to the host's /sys, bound and remounted read-only.
    let sysfs = steps
        .iter()
        .find_map(|s| match s {
            MountStep::MountOr { call, fallback } => Some((call, fallback)),
            _ => None,
        })
        .unwrap();
    assert_eq!(sysfs.0.fstype.as_deref(), Some("sysfs"));
    assert_eq!(
        sysfs.1,
        &vec![
            MountStep::BindTarget {
                source: "/sys".into(),
                target: rootfs("/sys"),
            },
            MountStep::Mount(MountCall::bind("/sys", rootfs("/sys"), true)),
            MountStep::Mount(MountCall::bind_remount(
                rootfs("/sys"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )),
        ]
    );
    // A fresh /dev: nodes and symlinks after every mount, ptmx into the
    // container's devpts; no console without a terminal.
    let null = MountStep::MakeNode(Node {
        target: Target::Dev("null".into()),
        kind: NodeKind::Char,
        major: 1,
        minor: 3,
        mode: 0o666,
        uid: None,
        gid: None,
    });
    let ptmx = MountStep::Symlink {
        to: "pts/ptmx".into(),
        path: Target::Dev("ptmx".into()),
        replace: true,
        only_if_exists: None,
    };
    assert!(position(steps, &null) > position(steps, &MountStep::MakeDir(rootfs("/sys"))));
    assert!(position(steps, &ptmx) > position(steps, &null));
    let nodes = steps
        .iter()
        .filter(|s| matches!(s, MountStep::MakeNode(_)))
        .count();
    assert_eq!(nodes, 6);
    assert!(!steps.iter().any(|s| matches!(s, MountStep::BindConsole(_))));
    // The pivot ends the first half: the old root made a slave, then
    // detached.
    assert_eq!(
        steps[steps.len() - 5..],
        [
            MountStep::Chdir(Target::Host(ROOTFS.into())),
            MountStep::PivotRoot,
            MountStep::Mount(MountCall::propagation(container("."), slave_rec)),
            MountStep::DetachOldRoot,
            MountStep::Chdir(container("/")),
        ]
    );
    assert_eq!(
        plan.after_pivot,
        vec![
            MountStep::Mask(container("/proc/kcore")),
            MountStep::Mask(container("/sys/firmware")),
            MountStep::ReadOnly {
                target: container("/proc/sys"),
                bind_first: true,
            },
            MountStep::ReadOnly {
                target: container("/proc/sysrq-trigger"),
                bind_first: true,
            },
        ]
    );
}

#[test]
fn a_read_only_rootfs_is_remounted_last() {
    let plan = plan(Shape {
        readonly_root: true,
        ..Shape::default()
    });
    assert_eq!(
        plan.after_pivot.last(),
        Some(&MountStep::ReadOnly {
            target: container("/"),
            bind_first: false,
        })
    );
    assert_eq!(plan.after_pivot.len(), 5);
}

#[test]
fn a_privileged_container_has_no_masks() {
    let plan = plan(Shape {
        masked: vec![],
        readonly: vec![],
        ..Shape::default()
    });
    assert!(plan.after_pivot.is_empty());
    // Its mounts are the same as anyone's.
    assert_eq!(plan.before_pivot, self::plan(Shape::default()).before_pivot);
}

#[test]
fn cri_bind_mounts_with_each_propagation() {
    for (word, flags) in [
        ("rprivate", MsFlags::MS_PRIVATE | MsFlags::MS_REC),
        ("rslave", MsFlags::MS_SLAVE | MsFlags::MS_REC),
        ("rshared", MsFlags::MS_SHARED | MsFlags::MS_REC),
    ] {
        for (mode, remount) in [("rw", None), ("ro", Some(MsFlags::MS_RDONLY))] {
            let mut mounts = default_mounts();
            mounts.push(mount("/data", "bind", "/srv/data", &["rbind", word, mode]));
            let plan = plan(Shape {
                mounts,
                ..Shape::default()
            });
            let steps = &plan.before_pivot;
            let at = position(
                steps,
                &MountStep::BindTarget {
                    source: "/srv/data".into(),
                    target: rootfs("/data"),
                },
            );
            let mut expected = vec![MountStep::Mount(MountCall::bind(
                "/srv/data",
                rootfs("/data"),
                true,
            ))];
            if let Some(extra) = remount {
                expected.push(MountStep::Mount(MountCall::bind_remount(
                    rootfs("/data"),
                    extra,
                )));
            }
            expected.push(MountStep::Mount(MountCall::propagation(
                rootfs("/data"),
                flags,
            )));
            assert_eq!(
                steps[at + 1..at + 1 + expected.len()],
                expected[..],
                "{word} {mode}"
            );
        }
    }
}

#[test]
fn a_mount_over_a_default_one_comes_after_it() {
    let mut mounts = default_mounts();
    mounts.push(mount(
        "/dev/shm",
        "bind",
        "/run/ketch/pods/p/shm",
        &["rbind"],
    ));
    mounts.push(mount("/sys", "bind", "/srv/sys", &["rbind", "ro"]));
    let plan = plan(Shape {
        mounts,
        ..Shape::default()
    });
    let steps = &plan.before_pivot;
    let dev = position(steps, &MountStep::MakeDir(rootfs("/dev")));
    let shm = position(
        steps,
        &MountStep::BindTarget {
            source: "/run/ketch/pods/p/shm".into(),
            target: rootfs("/dev/shm"),
        },
    );
    let default_sys = position(steps, &MountStep::MakeDir(rootfs("/sys")));
    let over_sys = position(
        steps,
        &MountStep::BindTarget {
            source: "/srv/sys".into(),
            target: rootfs("/sys"),
        },
    );
    assert!(dev < shm);
    assert!(default_sys < over_sys);
    // Bind mounts make no /dev: the nodes still follow every mount.
    let first_node = steps
        .iter()
        .position(|s| matches!(s, MountStep::MakeNode(_)))
        .unwrap();
    assert!(first_node > over_sys);
}

#[test]
fn a_terminal_gets_the_console_and_devices_their_nodes() {
    let mut spec = spec(Shape {
        terminal: true,
        ..Shape::default()
    });
    let mut linux = spec.linux().clone().unwrap();
    linux.set_devices(Some(vec![
        LinuxDeviceBuilder::default()
            .path("/dev/fuse")
            .typ(LinuxDeviceType::C)
            .major(10)
            .minor(229)
            .file_mode(0o600u32)
            .uid(0u32)
            .gid(0u32)
            .build()
            .unwrap(),
    ]));
    spec.set_linux(Some(linux));
    let plan = MountPlan::new(Path::new(ROOTFS), &spec, &CgroupMounts::default()).unwrap();
    let steps = &plan.before_pivot;
    let console = position(
        steps,
        &MountStep::BindConsole(Target::Dev("console".into())),
    );
    let fuse = position(
        steps,
        &MountStep::MakeNode(Node {
            target: rootfs("/dev/fuse"),
            kind: NodeKind::Char,
            major: 10,
            minor: 229,
            mode: 0o600,
            uid: Some(0),
            gid: Some(0),
        }),
    );
    assert!(console < fuse);
    assert!(fuse < position(steps, &MountStep::PivotRoot));
}

#[test]
fn without_a_dev_tmpfs_no_nodes_are_made() {
    let plan = plan(Shape {
        mounts: vec![mount("/proc", "proc", "proc", &[])],
        terminal: true,
        ..Shape::default()
    });
    assert!(!plan.before_pivot.iter().any(|s| matches!(
        s,
        MountStep::MakeNode(_) | MountStep::Symlink { .. } | MountStep::BindConsole(_)
    )));
}

#[test]
fn rootfs_propagation_comes_before_the_masks() {
    let plan = plan(Shape {
        rootfs_propagation: Some("rshared"),
        ..Shape::default()
    });
    assert_eq!(
        plan.after_pivot[0],
        MountStep::Mount(MountCall::propagation(
            container("/"),
            MsFlags::MS_SHARED | MsFlags::MS_REC
        ))
    );
    let err = MountPlan::new(
        Path::new(ROOTFS),
        &spec(Shape {
            rootfs_propagation: Some("sideways"),
            ..Shape::default()
        }),
        &CgroupMounts::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "rootfs propagation: unknown mode \"sideways\""
    );
}

#[test]
fn a_bind_mount_needs_a_source() {
    let mut mounts = default_mounts();
    mounts.push(
        MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .options(vec!["rbind".to_string()])
            .build()
            .unwrap(),
    );
    let err = MountPlan::new(
        Path::new(ROOTFS),
        &spec(Shape {
            mounts,
            ..Shape::default()
        }),
        &CgroupMounts::default(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "mount on /data: a bind mount needs a source"
    );
}

#[test]
fn mount_options_split_flags_propagation_and_data() {
    let o = MountOptions::parse(&["rbind", "rslave", "ro", "nosuid", "mode=755", "size=65536k"]);
    assert_eq!(
        o.flags,
        MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
    );
    assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
    assert_eq!(o.data().as_deref(), Some("mode=755,size=65536k"));
    let o = MountOptions::parse(&["ro", "rw"]);
    assert!(!o.flags.contains(MsFlags::MS_RDONLY));
}

#[test]
fn a_shared_rootfs_propagation_keeps_the_host_peers_and_privatises_the_rootfs_mount() {
    let shared = plan(Shape {
        rootfs_propagation: Some("rshared"),
        ..Shape::default()
    });
    assert_eq!(
        shared.before_pivot[..3],
        [
            MountStep::Mount(MountCall::propagation(
                Target::Host("/".into()),
                MsFlags::MS_SHARED | MsFlags::MS_REC
            )),
            MountStep::PrivateParent(Target::Host(ROOTFS.into())),
            MountStep::Mount(MountCall::bind(ROOTFS, Target::Host(ROOTFS.into()), true)),
        ]
    );
    // Anything else keeps `/` rslave, with nothing made private.
    let slave = plan(Shape {
        rootfs_propagation: Some("rslave"),
        ..Shape::default()
    });
    assert!(
        !slave
            .before_pivot
            .iter()
            .any(|s| matches!(s, MountStep::PrivateParent(_)))
    );
}

#[test]
fn rro_makes_a_bind_read_only_recursively_after_the_bind() {
    let mut mounts = default_mounts();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source("/srv/data")
            .options(vec![
                "rbind".into(),
                "rprivate".into(),
                "ro".into(),
                "rro".into(),
            ])
            .build()
            .unwrap(),
    );
    let plan = plan(Shape {
        mounts,
        ..Shape::default()
    });
    let steps = &plan.before_pivot;
    let bind = position(
        steps,
        &MountStep::Mount(MountCall::bind("/srv/data", rootfs("/data"), true)),
    );
    let rro = position(steps, &MountStep::RecursiveReadOnly(rootfs("/data")));
    assert!(bind < rro);
    assert!(
        MountOptions::parse(&["rro"]).data.is_empty(),
        "rro is not passed to mount(2) as data"
    );
}
