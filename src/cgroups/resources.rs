//! Resource limits in domain terms, their validation, and the conversion
//! from the OCI spec (the CRI message is converted in `cri/`). Units are
//! the kernel's v1 units (shares, microseconds, bytes), as in the CRI and
//! OCI; the v2 code converts (shares → weight, memory+swap → swap) the way
//! runc does, so a pod gets the same limits from ketch as from containerd
//! or CRI-O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::{CgroupError, Result};

/// Limits of one cgroup. `None` (or empty) leaves a setting as it is, so the
/// same type serves creation and `UpdateContainerResources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Resources {
    /// Relative CPU weight, 2..=262144 (v1 `cpu.shares`; v2 `cpu.weight`
    /// through [`shares_to_weight`]).
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per period; -1 is unlimited (v1
    /// `cpu.cfs_quota_us`; v2 first field of `cpu.max`).
    pub cpu_quota: Option<i64>,
    /// CFS period in µs, 1000..=1000000 (v1 `cpu.cfs_period_us`; v2 second
    /// field of `cpu.max`).
    pub cpu_period: Option<u64>,
    /// CPUs allowed, in the kernel's list format (`0-3,6`).
    pub cpuset_cpus: Option<String>,
    /// Memory nodes allowed, same format.
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes; -1 is unlimited.
    pub memory_limit: Option<i64>,
    /// Memory plus swap in bytes, as in v1 `memory.memsw.limit_in_bytes`, the
    /// CRI and OCI; -1 is unlimited. v2 gets `memory.swap.max` = this - limit.
    pub memory_swap: Option<i64>,
    /// Maximum number of tasks; 0 or less is unlimited.
    pub pids_limit: Option<i64>,
    pub hugepage_limits: Vec<HugepageLimit>,
    /// Raw cgroup v2 files and values (`"memory.high": "1G"`), written after
    /// the typed settings so they win. Keys are checked against
    /// [`UNIFIED_CONTROLLERS`]; refused on cgroup v1.
    pub unified: BTreeMap<String, String>,
    /// Device access rules, applied in order (the last match wins), so a
    /// list starts with a deny-all. `devices.allow`/`devices.deny` on
    /// cgroup v1, an eBPF device program on v2.
    pub devices: Vec<DeviceRule>,
}

/// One device cgroup rule: `allow` or deny `access` (a subset of `rwm`) to
/// devices of `kind` with the given numbers (`None` is any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: DeviceKind,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    All,
    Char,
    Block,
}

impl DeviceRule {
    /// The v1 `devices.allow`/`devices.deny` line: `c 1:3 rwm`, `a`.
    pub fn v1_line(&self) -> String {
        let number = |n: Option<i64>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        match self.kind {
            DeviceKind::All => "a".to_string(),
            DeviceKind::Char | DeviceKind::Block => format!(
                "{} {}:{} {}",
                if self.kind == DeviceKind::Char {
                    'c'
                } else {
                    'b'
                },
                number(self.major),
                number(self.minor),
                self.access
            ),
        }
    }

    fn char(major: i64, minor: Option<i64>) -> Self {
        Self {
            allow: true,
            kind: DeviceKind::Char,
            major: Some(major),
            minor,
            access: "rwm".into(),
        }
    }

    /// What every container may use whatever its spec says, the list runc
    /// appends to a spec's rules: mknod of any device (using one still needs
    /// a rule), /dev/null, zero, full, random, urandom, tty, console, ptmx,
    /// the pty slaves (136:*) and /dev/net/tun.
    pub fn default_allowed() -> Vec<DeviceRule> {
        let mknod = |kind| Self {
            allow: true,
            kind,
            major: None,
            minor: None,
            access: "m".into(),
        };
        vec![
            mknod(DeviceKind::Char),
            mknod(DeviceKind::Block),
            Self::char(1, Some(3)),
            Self::char(1, Some(8)),
            Self::char(1, Some(7)),
            Self::char(5, Some(0)),
            Self::char(1, Some(5)),
            Self::char(1, Some(9)),
            Self::char(5, Some(1)),
            Self::char(136, None),
            Self::char(5, Some(2)),
            Self::char(10, Some(200)),
        ]
    }
}

/// A hugetlb limit: `page_size` is the kernel's file-name form (`2MB`, `1GB`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

/// Controllers whose files the `unified` map may write. Core `cgroup.*`
/// files (procs, subtree_control, kill, type...) would let a pod escape or
/// break its cgroup, so they are never accepted.
pub const UNIFIED_CONTROLLERS: &[&str] = &[
    "cpu", "cpuset", "hugetlb", "io", "memory", "misc", "pids", "rdma",
];

pub const MIN_SHARES: u64 = 2;
pub const MAX_SHARES: u64 = 262_144;
const MIN_PERIOD_US: u64 = 1_000;
const MAX_PERIOD_US: u64 = 1_000_000;
const MIN_QUOTA_US: i64 = 1_000;

/// Converts v1 CPU shares (2..=262144) to a v2 `cpu.weight` (1..=10000),
/// linearly, as runc does: `1 + ((shares - 2) * 9999) / 262142`.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - MIN_SHARES) * 9999) / (MAX_SHARES - MIN_SHARES)
}

/// The v2 `memory.swap.max` value for a v1-style memory+swap limit, as
/// runc converts it. `None` means leave the file alone.
pub fn swap_v2_value(
    memory_swap: Option<i64>,
    memory_limit: Option<i64>,
) -> Result<Option<String>> {
    let memory = memory_limit.unwrap_or(0);
    match memory_swap {
        // Unlimited memory without a swap request means unlimited swap
        // too: the v1 meaning of "no limit" covers both.
        None if memory == -1 => Ok(Some("max".into())),
        None | Some(0) => Ok(None),
        Some(-1) => Ok(Some("max".into())),
        Some(swap) => {
            if memory <= 0 {
                return Err(CgroupError::invalid(
                    "memory_swap",
                    "a swap limit needs a memory limit",
                ));
            }
            if swap < memory {
                return Err(CgroupError::invalid(
                    "memory_swap",
                    format!("memory+swap {swap} is below the memory limit {memory}"),
                ));
            }
            Ok(Some((swap - memory).to_string()))
        }
    }
}

impl Resources {
    /// Checks every value before anything is written, so a bad request
    /// never leaves a cgroup half-configured.
    pub fn validate(&self) -> Result<()> {
        if let Some(s) = self.cpu_shares
            && !(MIN_SHARES..=MAX_SHARES).contains(&s)
        {
            return Err(CgroupError::invalid(
                "cpu_shares",
                format!("{s} is outside {MIN_SHARES}..={MAX_SHARES}"),
            ));
        }
        if let Some(p) = self.cpu_period
            && !(MIN_PERIOD_US..=MAX_PERIOD_US).contains(&p)
        {
            return Err(CgroupError::invalid(
                "cpu_period",
                format!("{p}µs is outside {MIN_PERIOD_US}..={MAX_PERIOD_US}"),
            ));
        }
        if let Some(q) = self.cpu_quota
            && q != -1
            && q < MIN_QUOTA_US
        {
            return Err(CgroupError::invalid(
                "cpu_quota",
                format!("{q}µs: must be -1 (unlimited) or at least {MIN_QUOTA_US}"),
            ));
        }
        for (field, value) in [
            ("cpuset_cpus", &self.cpuset_cpus),
            ("cpuset_mems", &self.cpuset_mems),
        ] {
            if let Some(v) = value {
                validate_cpu_list(v).map_err(|reason| CgroupError::invalid(field, reason))?;
            }
        }
        if let Some(m) = self.memory_limit
            && m != -1
            && m <= 0
        {
            return Err(CgroupError::invalid(
                "memory_limit",
                format!("{m}: must be -1 (unlimited) or positive"),
            ));
        }
        if let Some(s) = self.memory_swap
            && s != -1
            && s < 0
        {
            return Err(CgroupError::invalid(
                "memory_swap",
                format!("{s}: must be -1 (unlimited) or positive"),
            ));
        }
        if let (Some(m), Some(s)) = (self.memory_limit, self.memory_swap)
            && m > 0
            && s > 0
            && s < m
        {
            return Err(CgroupError::invalid(
                "memory_swap",
                format!("memory+swap {s} is below the memory limit {m}"),
            ));
        }
        for h in &self.hugepage_limits {
            validate_page_size(&h.page_size)
                .map_err(|reason| CgroupError::invalid("hugepage_limits.page_size", reason))?;
        }
        for (key, value) in &self.unified {
            validate_unified(key, value)?;
        }
        for d in &self.devices {
            if d.kind != DeviceKind::All
                && (d.access.is_empty() || !d.access.chars().all(|c| "rwm".contains(c)))
            {
                return Err(CgroupError::invalid(
                    "devices.access",
                    format!("{:?} is not a subset of rwm", d.access),
                ));
            }
            if d.major.is_some_and(|n| n < 0) || d.minor.is_some_and(|n| n < 0) {
                return Err(CgroupError::invalid(
                    "devices",
                    format!("negative device number in {}", d.v1_line()),
                ));
            }
        }
        Ok(())
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Applies an update on top of `self`: whatever `update` sets wins,
    /// the rest stays. For keeping a container's effective resources.
    pub fn merge(&mut self, update: &Resources) {
        macro_rules! take {
            ($($f:ident),*) => { $( if update.$f.is_some() { self.$f = update.$f.clone(); } )* };
        }
        take!(
            cpu_shares,
            cpu_quota,
            cpu_period,
            cpuset_cpus,
            cpuset_mems,
            memory_limit,
            memory_swap,
            pids_limit
        );
        for h in &update.hugepage_limits {
            self.hugepage_limits.retain(|x| x.page_size != h.page_size);
            self.hugepage_limits.push(h.clone());
        }
        self.unified
            .extend(update.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
        if !update.devices.is_empty() {
            self.devices = update.devices.clone();
        }
    }
}

/// `0-3,6,8-9`: comma-separated numbers or ascending ranges.
fn validate_cpu_list(list: &str) -> Result<(), String> {
    let list = list.trim();
    if list.is_empty() {
        return Err("empty list".into());
    }
    for part in list.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: u32 = lo.parse().map_err(|_| format!("bad entry {part:?}"))?;
        let hi: u32 = hi.parse().map_err(|_| format!("bad entry {part:?}"))?;
        if lo > hi {
            return Err(format!("descending range {part:?}"));
        }
    }
    Ok(())
}

/// `<digits><KB|MB|GB|TB|PB>`, the form of hugetlb file names.
fn validate_page_size(size: &str) -> Result<(), String> {
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &size[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !["KB", "MB", "GB", "TB", "PB"].contains(&unit)
    {
        return Err(format!("{size:?} is not like 2MB or 1GB"));
    }
    Ok(())
}

fn validate_unified(key: &str, value: &str) -> Result<()> {
    let field = || format!("unified[{key:?}]");
    let Some((controller, rest)) = key.split_once('.') else {
        return Err(CgroupError::invalid(
            field(),
            "not a <controller>.<file> name",
        ));
    };
    if !UNIFIED_CONTROLLERS.contains(&controller) {
        return Err(CgroupError::invalid(
            field(),
            format!("controller {controller:?} is not one of {UNIFIED_CONTROLLERS:?}"),
        ));
    }
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        || rest.contains("..")
    {
        return Err(CgroupError::invalid(field(), "bad file name"));
    }
    if value.contains('\0') {
        return Err(CgroupError::invalid(field(), "value contains NUL"));
    }
    Ok(())
}

impl From<&oci_spec::runtime::LinuxResources> for Resources {
    /// For an executor that holds only the OCI spec. When the spec has
    /// device rules, [`DeviceRule::default_allowed`] follows them, as runc
    /// does, so a spec's deny-all never takes /dev/null away. Block I/O,
    /// network and RDMA settings are not carried.
    fn from(r: &oci_spec::runtime::LinuxResources) -> Self {
        let cpu = r.cpu().as_ref();
        let memory = r.memory().as_ref();
        Self {
            cpu_shares: cpu.and_then(|c| c.shares()),
            cpu_quota: cpu.and_then(|c| c.quota()),
            cpu_period: cpu.and_then(|c| c.period()),
            cpuset_cpus: cpu.and_then(|c| c.cpus().clone()),
            cpuset_mems: cpu.and_then(|c| c.mems().clone()),
            memory_limit: memory.and_then(|m| m.limit()),
            memory_swap: memory.and_then(|m| m.swap()),
            pids_limit: r.pids().as_ref().map(|p| p.limit()),
            hugepage_limits: r
                .hugepage_limits()
                .iter()
                .flatten()
                .map(|h| HugepageLimit {
                    page_size: h.page_size().clone(),
                    limit: u64::try_from(h.limit()).unwrap_or(0),
                })
                .collect(),
            unified: r
                .unified()
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            devices: oci_devices(r.devices().as_deref().unwrap_or_default()),
        }
    }
}

fn oci_devices(rules: &[oci_spec::runtime::LinuxDeviceCgroup]) -> Vec<DeviceRule> {
    use oci_spec::runtime::LinuxDeviceType as T;
    if rules.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<DeviceRule> = rules
        .iter()
        .filter_map(|d| {
            let kind = match d.typ().unwrap_or(T::A) {
                T::A => DeviceKind::All,
                T::C | T::U => DeviceKind::Char,
                T::B => DeviceKind::Block,
                // A FIFO is no device to the cgroup.
                T::P => return None,
            };
            Some(DeviceRule {
                allow: d.allow(),
                kind,
                major: d.major(),
                minor: d.minor(),
                access: d.access().clone().unwrap_or_else(|| "rwm".into()),
            })
        })
        .collect();
    out.extend(DeviceRule::default_allowed());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_matches_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(1_000_000), 10_000);
    }

    #[test]
    fn swap_conversion() {
        assert_eq!(swap_v2_value(None, None).unwrap(), None);
        assert_eq!(swap_v2_value(None, Some(-1)).unwrap(), Some("max".into()));
        assert_eq!(
            swap_v2_value(Some(-1), Some(100)).unwrap(),
            Some("max".into())
        );
        assert_eq!(
            swap_v2_value(Some(300), Some(100)).unwrap(),
            Some("200".into())
        );
        assert_eq!(
            swap_v2_value(Some(100), Some(100)).unwrap(),
            Some("0".into())
        );
        assert!(swap_v2_value(Some(300), None).is_err());
        assert!(swap_v2_value(Some(50), Some(100)).is_err());
    }

    #[test]
    fn from_oci() {
        use oci_spec::runtime::*;
        let oci = LinuxResourcesBuilder::default()
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(256u64)
                    .quota(20_000i64)
                    .cpus("0")
                    .build()
                    .unwrap(),
            )
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(1_000_000i64)
                    .swap(2_000_000i64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(64i64).build().unwrap())
            .build()
            .unwrap();
        let r = Resources::from(&oci);
        assert_eq!(r.cpu_shares, Some(256));
        assert_eq!(r.cpu_quota, Some(20_000));
        assert_eq!(r.cpuset_cpus.as_deref(), Some("0"));
        assert_eq!(r.memory_limit, Some(1_000_000));
        assert_eq!(r.memory_swap, Some(2_000_000));
        assert_eq!(r.pids_limit, Some(64));
        assert!(r.devices.is_empty());

        let with_devices = LinuxResourcesBuilder::default()
            .devices(vec![
                LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()
                    .unwrap(),
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::B)
                    .major(8i64)
                    .minor(0i64)
                    .access("r")
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        let r = Resources::from(&with_devices);
        assert_eq!(r.devices[0].v1_line(), "a");
        assert!(!r.devices[0].allow);
        assert_eq!(r.devices[1].v1_line(), "b 8:0 r");
        assert_eq!(&r.devices[2..], DeviceRule::default_allowed().as_slice());
        assert_eq!(r.devices[2].v1_line(), "c *:* m");
        assert_eq!(r.devices[11].v1_line(), "c 136:* rwm");
        r.validate().unwrap();
    }

    #[test]
    fn validation() {
        let ok = |r: Resources| r.validate().is_ok();
        assert!(ok(Resources::default()));
        assert!(!ok(Resources {
            cpu_shares: Some(1),
            ..Default::default()
        }));
        assert!(!ok(Resources {
            cpu_shares: Some(300_000),
            ..Default::default()
        }));
        assert!(!ok(Resources {
            cpu_period: Some(10),
            ..Default::default()
        }));
        assert!(ok(Resources {
            cpu_quota: Some(-1),
            ..Default::default()
        }));
        assert!(!ok(Resources {
            cpu_quota: Some(0),
            ..Default::default()
        }));
        assert!(!ok(Resources {
            cpu_quota: Some(-5),
            ..Default::default()
        }));
        assert!(ok(Resources {
            cpuset_cpus: Some("0-3,6".into()),
            ..Default::default()
        }));
        assert!(!ok(Resources {
            cpuset_cpus: Some("3-0".into()),
            ..Default::default()
        }));
        assert!(!ok(Resources {
            cpuset_mems: Some("a".into()),
            ..Default::default()
        }));
        assert!(!ok(Resources {
            memory_limit: Some(0),
            ..Default::default()
        }));
        assert!(ok(Resources {
            memory_limit: Some(-1),
            ..Default::default()
        }));
        assert!(!ok(Resources {
            memory_limit: Some(100),
            memory_swap: Some(50),
            ..Default::default()
        }));
        let huge = |s: &str| Resources {
            hugepage_limits: vec![HugepageLimit {
                page_size: s.into(),
                limit: 1,
            }],
            ..Default::default()
        };
        assert!(ok(huge("2MB")));
        assert!(ok(huge("1GB")));
        assert!(!ok(huge("2M")));
        assert!(!ok(huge("MB")));
        assert!(!ok(huge("../2MB")));
        let unified = |k: &str, v: &str| Resources {
            unified: [(k.to_string(), v.to_string())].into(),
            ..Default::default()
        };
        assert!(ok(unified("memory.high", "1G")));
        assert!(ok(unified("io.max", "8:0 rbps=1048576")));
        assert!(ok(unified("hugetlb.2MB.max", "0")));
        assert!(!ok(unified("cgroup.procs", "1")));
        assert!(!ok(unified("cgroup.subtree_control", "+memory")));
        assert!(!ok(unified("memory/../../x", "1")));
        assert!(!ok(unified("memory", "1")));
        assert!(!ok(unified("memory.", "1")));
        assert!(!ok(unified("memory.high", "1\0")));
        let device = |access: &str| Resources {
            devices: vec![DeviceRule {
                allow: true,
                kind: DeviceKind::Char,
                major: Some(1),
                minor: None,
                access: access.into(),
            }],
            ..Default::default()
        };
        assert!(ok(device("rw")));
        assert!(!ok(device("")));
        assert!(!ok(device("rwx")));
    }

    #[test]
    fn merge_overrides_only_what_is_set() {
        let mut base = Resources {
            cpu_shares: Some(512),
            memory_limit: Some(100),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 1,
            }],
            ..Default::default()
        };
        base.merge(&Resources {
            memory_limit: Some(200),
            hugepage_limits: vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 2,
            }],
            ..Default::default()
        });
        assert_eq!(base.cpu_shares, Some(512));
        assert_eq!(base.memory_limit, Some(200));
        assert_eq!(
            base.hugepage_limits,
            vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: 2
            }]
        );
    }
}
