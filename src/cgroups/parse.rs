//! Pure parsers for the kernel's tables: `/proc/self/mountinfo` (where the
//! hierarchies are), `/proc/<pid>/cgroup` (where a process is) and the
//! flat-keyed stat files (`memory.stat`, `cpu.stat`, `memory.events`,
//! `memory.oom_control`). No I/O here, so all of it is unit-tested.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The cgroup v1 controllers the kernel knows. A mount option not in this
/// list (`rw`, `noprefix`, `clone_children`, `xattr`...) is not a controller;
/// named hierarchies (`name=systemd`) are recognised by their prefix.
const V1_CONTROLLERS: &[&str] = &[
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// A `cgroup` (v1) hierarchy.
    V1,
    /// The `cgroup2` unified hierarchy.
    V2,
}

/// One cgroup filesystem mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub kind: MountKind,
    /// Where it is mounted, octal escapes decoded.
    pub mount_point: PathBuf,
    /// The cgroup of the hierarchy shown at the mount point (`/` unless
    /// this is a bind mount of a sub-cgroup or inside a cgroup namespace).
    pub root: String,
    /// `major:minor` of the superblock: two mounts of one hierarchy share it.
    pub device: String,
    /// v1 controllers (and `name=...`) of the hierarchy; empty for v2.
    pub controllers: Vec<String>,
}

/// Every cgroup and cgroup2 mount in a mountinfo table, in table order.
/// Lines that are not cgroup mounts, or are malformed, are skipped.
pub fn parse_mountinfo(content: &str) -> Vec<CgroupMount> {
    content.lines().filter_map(parse_mountinfo_line).collect()
}

fn parse_mountinfo_line(line: &str) -> Option<CgroupMount> {
    // id parent major:minor root mount-point options [optional...] - fstype source super-options
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    if left.len() < 6 || right.len() < 3 {
        return None;
    }
    let kind = match right[0] {
        "cgroup" => MountKind::V1,
        "cgroup2" => MountKind::V2,
        _ => return None,
    };
    let controllers = match kind {
        MountKind::V2 => Vec::new(),
        MountKind::V1 => right[2]
            .split(',')
            .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
            .map(str::to_string)
            .collect(),
    };
    Some(CgroupMount {
        kind,
        device: left[2].to_string(),
        root: unescape_octal(left[3]),
        mount_point: PathBuf::from(unescape_octal(left[4])),
        controllers,
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub hierarchy_id: u32,
    /// Empty for the v2 line (`0::/path`).
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parses `/proc/<pid>/cgroup`; malformed lines are skipped.
pub fn parse_proc_cgroup(content: &str) -> Vec<ProcCgroup> {
    content
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy_id = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(ProcCgroup {
                hierarchy_id,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// Parses a flat-keyed file (`key value` per line). Lines whose value is
/// not an unsigned integer are skipped: the kernel adds keys over time and
/// a reader must not break on one it does not use.
pub fn parse_flat_keyed(content: &str) -> BTreeMap<String, u64> {
    content
        .lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let key = it.next()?;
            let value = it.next()?.parse().ok()?;
            Some((key.to_string(), value))
        })
        .collect()
}

/// Parses a single-value limit file: `max` (v2) is `None`.
pub fn parse_limit(content: &str) -> Result<Option<u64>, String> {
    match content.trim() {
        "max" => Ok(None),
        s => s
            .parse()
            .map(Some)
            .map_err(|_| format!("expected a number or \"max\", found {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid shared:7 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /proc rw - proc proc rw
";

    #[test]
    fn mountinfo_hybrid() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(mounts[0].controllers, vec!["cpu"]);
        assert_eq!(mounts[0].device, "0:29");
        assert_eq!(mounts[2].controllers, vec!["memory"]);
        assert_eq!(mounts[3].controllers, vec!["name=systemd"]);
        assert_eq!(mounts[4].kind, MountKind::V2);
        assert!(mounts[4].controllers.is_empty());
        assert!(mounts[..4].iter().all(|m| m.kind == MountKind::V1));
    }

    #[test]
    fn mountinfo_comounted_and_escaped() {
        let info = "\
25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct,noprefix
26 24 0:23 /sub /mnt/my\\040cgroups rw - cgroup cgroup rw,clone_children,pids
";
        let mounts = parse_mountinfo(info);
        assert_eq!(mounts[0].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(mounts[1].mount_point, PathBuf::from("/mnt/my cgroups"));
        assert_eq!(mounts[1].root, "/sub");
        assert_eq!(mounts[1].controllers, vec!["pids"]);
    }

    #[test]
    fn mountinfo_pure_v2_and_garbage() {
        let info = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
garbage line
1 2 3
";
        let mounts = parse_mountinfo(info);
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].kind, MountKind::V2);
        assert_eq!(mounts[0].mount_point, PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn proc_cgroup() {
        let content =
            "9:name=systemd:/\n4:memory:/a/b:c\n2:cpu,cpuacct:/x\n0::/kubepods/pod1/c1\nbad\n";
        let entries = parse_proc_cgroup(content);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].controllers, vec!["name=systemd"]);
        assert_eq!(entries[1].path, "/a/b:c");
        assert_eq!(entries[2].controllers, vec!["cpu", "cpuacct"]);
        assert_eq!(entries[3].hierarchy_id, 0);
        assert!(entries[3].controllers.is_empty());
        assert_eq!(entries[3].path, "/kubepods/pod1/c1");
    }

    #[test]
    fn flat_keyed() {
        let m = parse_flat_keyed("usage_usec 42\nuser_usec 40\nsome avg10=0.00\n\nnr_periods 0\n");
        assert_eq!(m["usage_usec"], 42);
        assert_eq!(m["nr_periods"], 0);
        assert!(!m.contains_key("some"));
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), Ok(None));
        assert_eq!(parse_limit("1048576\n"), Ok(Some(1048576)));
        assert!(parse_limit("lots").is_err());
    }
}
