//! The cgroup plans of typical containers, checked without root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::cgroups::parse::parse_mountinfo;
use crate::cgroups::resources::shares_to_weight;
use crate::cgroups::resources::{DeviceKind, DeviceRule, HugepageLimit, Resources};
use crate::cgroups::v1::V1;
use crate::cgroups::v2::V2;

const MIB: i64 = 1 << 20;
const PATH: &str = "/kubepods/pod1/c1";

/// A hybrid host's v1 hierarchies (systemd's layout).
fn v1_host() -> V1 {
    let info = "\
30 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
32 25 0:28 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
33 25 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 25 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
35 25 0:31 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
36 25 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    V1::from_mounts(&parse_mountinfo(info)).unwrap()
}

fn dir(p: &str) -> PathBuf {
    PathBuf::from(p)
}

fn set(d: &str, file: &str, value: &str) -> Write {
    Write::setting(Path::new(d), file, value)
}

fn limits() -> Resources {
    Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpuset_cpus: Some("0-1".into()),
        memory_limit: Some(64 * MIB),
        memory_swap: Some(128 * MIB),
        pids_limit: Some(64),
        ..Default::default()
    }
}

#[test]
fn v1_dirs_are_made_in_every_hierarchy_cpuset_inheriting() {
    let plan = v1_host().plan(PATH, &Resources::default()).unwrap();
    let roots = [
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/cpuset",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/devices",
    ];
    assert_eq!(plan.dirs.len(), roots.len() * 3);
    for (root, levels) in roots.iter().zip(plan.dirs.chunks(3)) {
        let setup = if root.ends_with("cpuset") {
            LevelSetup::InheritCpuset
        } else {
            LevelSetup::Nothing
        };
        assert_eq!(
            levels,
            [
                MakeDir {
                    parent: dir(root),
                    dir: dir(&format!("{root}/kubepods")),
                    setup,
                },
                MakeDir {
                    parent: dir(&format!("{root}/kubepods")),
                    dir: dir(&format!("{root}/kubepods/pod1")),
                    setup,
                },
                MakeDir {
                    parent: dir(&format!("{root}/kubepods/pod1")),
                    dir: dir(&format!("{root}{PATH}")),
                    setup,
                },
            ]
        );
    }
    assert!(plan.writes.is_empty());
}

#[test]
fn v1_writes_go_to_their_controllers_period_before_quota() {
    let mut r = limits();
    r.devices = vec![
        DeviceRule {
            allow: false,
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: "rwm".into(),
        },
        DeviceRule {
            allow: true,
            kind: DeviceKind::Char,
            major: Some(1),
            minor: Some(3),
            access: "rwm".into(),
        },
    ];
    let plan = v1_host().plan(PATH, &r).unwrap();
    let cpu = format!("/sys/fs/cgroup/cpu,cpuacct{PATH}");
    let devices = format!("/sys/fs/cgroup/devices{PATH}");
    assert_eq!(
        plan.writes,
        vec![
            set(&cpu, "cpu.shares", "512"),
            set(&cpu, "cpu.cfs_period_us", "100000"),
            set(&cpu, "cpu.cfs_quota_us", "50000"),
            set(
                &format!("/sys/fs/cgroup/cpuset{PATH}"),
                "cpuset.cpus",
                "0-1"
            ),
            Write::MemoryV1 {
                dir: dir(&format!("/sys/fs/cgroup/memory{PATH}")),
                limit: Some(64 * MIB),
                swap: Some(128 * MIB),
            },
            set(&format!("/sys/fs/cgroup/pids{PATH}"), "pids.max", "64"),
            set(&devices, "devices.deny", "a"),
            set(&devices, "devices.allow", "c 1:3 rwm"),
        ]
    );
}

#[test]
fn v1_refuses_a_plan_it_cannot_apply() {
    // What kubelet sends on a node whose hugetlb controller is not a v1
    // hierarchy: left out, not refused (it would fail every pod).
    let r = Resources {
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 0,
        }],
        ..Default::default()
    };
    let plan = v1_host().plan(PATH, &r).expect("hugepage limits skipped");
    assert!(
        !format!("{plan:?}").contains("hugetlb"),
        "no hugetlb write without a hugetlb hierarchy: {plan:?}"
    );
    let r = Resources {
        unified: BTreeMap::from([("memory.high".to_string(), "1G".to_string())]),
        ..Default::default()
    };
    assert!(v1_host().plan(PATH, &r).is_err());
}

#[test]
fn v2_one_dir_controllers_enabled_down_the_path() {
    let v2 = V2 {
        root: dir("/sys/fs/cgroup"),
    };
    let plan = v2.plan(PATH, &Resources::default()).unwrap();
    assert_eq!(
        plan.dirs,
        vec![
            MakeDir {
                parent: dir("/sys/fs/cgroup"),
                dir: dir("/sys/fs/cgroup/kubepods"),
                setup: LevelSetup::EnableControllers,
            },
            MakeDir {
                parent: dir("/sys/fs/cgroup/kubepods"),
                dir: dir("/sys/fs/cgroup/kubepods/pod1"),
                setup: LevelSetup::EnableControllers,
            },
            MakeDir {
                parent: dir("/sys/fs/cgroup/kubepods/pod1"),
                dir: dir("/sys/fs/cgroup/kubepods/pod1/c1"),
                setup: LevelSetup::EnableControllers,
            },
        ]
    );
    assert!(plan.writes.is_empty());
}

#[test]
fn v2_writes_converted_raw_values_last() {
    let v2 = V2 {
        root: dir("/sys/fs/cgroup"),
    };
    let mut r = limits();
    r.hugepage_limits = vec![HugepageLimit {
        page_size: "2MB".into(),
        limit: 4 * MIB as u64,
    }];
    r.unified = BTreeMap::from([("memory.high".to_string(), "48M".to_string())]);
    let d = format!("/sys/fs/cgroup{PATH}");
    assert_eq!(
        v2.plan(PATH, &r).unwrap().writes,
        vec![
            set(&d, "cpu.weight", &shares_to_weight(512).to_string()),
            set(&d, "cpu.max", "50000 100000"),
            set(&d, "cpuset.cpus", "0-1"),
            set(&d, "memory.swap.max", &(64 * MIB).to_string()),
            set(&d, "memory.max", &(64 * MIB).to_string()),
            set(&d, "pids.max", "64"),
            set(&d, "hugetlb.2MB.max", &(4 * MIB).to_string()),
            set(&d, "memory.high", "48M"),
        ]
    );
}

#[test]
fn v2_no_swap_or_unlimited_swap_tolerates_a_missing_swap_controller() {
    let v2 = V2 {
        root: dir("/sys/fs/cgroup"),
    };
    let d = dir(&format!("/sys/fs/cgroup{PATH}"));
    for (swap, value) in [(-1, "max"), (64 * MIB, "0")] {
        let r = Resources {
            memory_limit: Some(64 * MIB),
            memory_swap: Some(swap),
            ..Default::default()
        };
        assert_eq!(
            v2.writes(PATH, &r).unwrap()[0],
            Write::SettingIfAvailable {
                dir: d.clone(),
                file: "memory.swap.max".into(),
                value: value.into(),
            }
        );
    }
    let r = Resources {
        memory_limit: Some(64 * MIB),
        memory_swap: Some(32 * MIB),
        ..Default::default()
    };
    assert!(v2.writes(PATH, &r).is_err(), "memory+swap below memory");
}

#[test]
fn v1_memory_order_follows_the_current_limit() {
    const LIMIT: &str = "memory.limit_in_bytes";
    const SWAP: &str = "memory.memsw.limit_in_bytes";
    let (m64, m128) = (64 * MIB, 128 * MIB);
    // Raising above the current limit: memsw first.
    assert_eq!(
        memory_v1_writes(Some(m64), Some(m128), Some(32 << 20)),
        vec![(SWAP, m128), (LIMIT, m64)]
    );
    assert_eq!(
        memory_v1_writes(Some(m64), Some(-1), Some(u64::MAX)),
        vec![(SWAP, -1), (LIMIT, m64)]
    );
    // Lowering (new memsw not above the current limit): memory first.
    assert_eq!(
        memory_v1_writes(Some(m64), Some(m64), Some(256 << 20)),
        vec![(LIMIT, m64), (SWAP, m64)]
    );
    assert_eq!(memory_v1_writes(Some(m64), None, None), vec![(LIMIT, m64)]);
    assert_eq!(memory_v1_writes(None, Some(m64), None), vec![(SWAP, m64)]);
    // Unlimited memory with no word on swap: both unlimited.
    assert_eq!(memory_v1_swap(Some(-1), None), Some(-1));
    assert_eq!(memory_v1_swap(Some(m64), None), None);
    assert_eq!(memory_v1_swap(Some(m64), Some(m128)), Some(m128));
}
