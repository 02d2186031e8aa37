//! Usage statistics of a cgroup, computed the way kubelet and cAdvisor do
//! so `ContainerStats` from ketch match what the kubelet expects:
//! working set = usage - inactive file cache (floored at 0), rss = anonymous
//! memory (`total_rss` on v1, `anon` on v2).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A sample of a cgroup's usage. A section is `None` when its controller is
/// not available for the cgroup (the pids controller on a host without it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// When the sample was taken.
    pub timestamp: SystemTime,
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    /// Pressure stall information (cgroup v2 `*.pressure` files; none on
    /// v1). Defaults so records of samples without it still load.
    #[serde(default)]
    pub pressure: Pressure,
}

/// PSI of a cgroup's CPU, memory and IO (Documentation/accounting/psi.rst);
/// a resource is `None` where its file is missing (v1, or a kernel
/// without PSI, or booted with `psi=0`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    pub cpu: Option<Psi>,
    pub memory: Option<Psi>,
    pub io: Option<Psi>,
}

/// One `*.pressure` file: the `some` line and, where the kernel writes it,
/// the `full` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Psi {
    pub some: PsiLine,
    pub full: Option<PsiLine>,
}

/// `avg10=0.52 avg60=0.10 avg300=0.02 total=123456`: the averages in
/// hundredths of a percent, as the kernel prints them with two decimals
/// (kept exact), the total stall time in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsiLine {
    pub avg10_centi: u32,
    pub avg60_centi: u32,
    pub avg300_centi: u32,
    pub total_micros: u64,
}

/// Parses a `*.pressure` file; `None` when it has no valid `some` line.
pub fn parse_psi(content: &str) -> Option<Psi> {
    let mut some = None;
    let mut full = None;
    for line in content.lines() {
        let mut fields = line.split_whitespace();
        let kind = fields.next();
        let mut parsed = PsiLine {
            avg10_centi: 0,
            avg60_centi: 0,
            avg300_centi: 0,
            total_micros: 0,
        };
        for field in fields {
            let (key, value) = field.split_once('=')?;
            match key {
                "avg10" => parsed.avg10_centi = centi(value)?,
                "avg60" => parsed.avg60_centi = centi(value)?,
                "avg300" => parsed.avg300_centi = centi(value)?,
                "total" => parsed.total_micros = value.parse().ok()?,
                _ => {}
            }
        }
        match kind {
            Some("some") => some = Some(parsed),
            Some("full") => full = Some(parsed),
            _ => {}
        }
    }
    Some(Psi { some: some?, full })
}

/// `97.30` → 9730.
fn centi(value: &str) -> Option<u32> {
    let (whole, frac) = value.split_once('.').unwrap_or((value, "0"));
    let frac = format!("{frac:0<2}");
    let whole: u32 = whole.parse().ok()?;
    let frac: u32 = frac.get(..2)?.parse().ok()?;
    whole.checked_mul(100)?.checked_add(frac)
}

impl Stats {
    /// The timestamp in nanoseconds since the epoch, as CRI messages carry it.
    pub fn timestamp_nanos(&self) -> i64 {
        self.timestamp
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Cumulative CPU time of all tasks, all cores, in nanoseconds
    /// (`usage_core_nano_seconds`). `usage_nano_cores` is the caller's to
    /// derive from two samples.
    pub usage_nanos: u64,
    pub user_nanos: Option<u64>,
    pub system_nanos: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// All memory charged to the cgroup, page cache included.
    pub usage_bytes: u64,
    /// What the kubelet evicts on: usage minus inactive file cache.
    pub working_set_bytes: u64,
    /// Anonymous memory and swap cache.
    pub rss_bytes: u64,
    /// Cumulative page faults (minor and major).
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The memory limit; `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// Swap in use, where the kernel accounts it.
    pub swap_usage_bytes: Option<u64>,
}

impl MemoryStats {
    /// `limit - working set`, the CRI's `available_bytes`; `None` without a limit.
    pub fn available_bytes(&self) -> Option<u64> {
        self.limit_bytes
            .map(|l| l.saturating_sub(self.working_set_bytes))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    /// Tasks (threads included) in the cgroup.
    pub current: u64,
    /// `None` when unlimited.
    pub limit: Option<u64>,
}

/// v1 reports "unlimited" as the largest page-aligned i64
/// (9223372036854771712); anything this large is no limit.
const V1_UNLIMITED: u64 = 1 << 62;

pub(crate) fn v1_limit(raw: u64) -> Option<u64> {
    (raw < V1_UNLIMITED).then_some(raw)
}

/// v1: `memory.usage_in_bytes`, `memory.stat` (its hierarchical `total_*`
/// keys), `memory.limit_in_bytes`, `memory.memsw.usage_in_bytes`.
pub(crate) fn memory_v1(
    usage: u64,
    stat: &BTreeMap<String, u64>,
    limit: u64,
    memsw_usage: Option<u64>,
) -> MemoryStats {
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    MemoryStats {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(get("total_inactive_file")),
        rss_bytes: get("total_rss"),
        page_faults: get("total_pgfault"),
        major_page_faults: get("total_pgmajfault"),
        limit_bytes: v1_limit(limit),
        swap_usage_bytes: memsw_usage.map(|m| m.saturating_sub(usage)),
    }
}

/// v2: `memory.current`, `memory.stat`, `memory.max`, `memory.swap.current`.
pub(crate) fn memory_v2(
    current: u64,
    stat: &BTreeMap<String, u64>,
    max: Option<u64>,
    swap_current: Option<u64>,
) -> MemoryStats {
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    MemoryStats {
        usage_bytes: current,
        working_set_bytes: current.saturating_sub(get("inactive_file")),
        rss_bytes: get("anon"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit_bytes: max,
        swap_usage_bytes: swap_current,
    }
}

/// v2 `cpu.stat` is in microseconds.
pub(crate) fn cpu_v2(stat: &BTreeMap<String, u64>) -> Option<CpuStats> {
    let usec = |k: &str| stat.get(k).map(|v| v.saturating_mul(1000));
    Some(CpuStats {
        usage_nanos: usec("usage_usec")?,
        user_nanos: usec("user_usec"),
        system_nanos: usec("system_usec"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::parse::parse_flat_keyed;

    #[test]
    fn psi_files_parse_exactly() {
        let cpu = "some avg10=97.30 avg60=96.08 avg300=71.01 total=7589431316\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        let psi = parse_psi(cpu).expect("parses");
        assert_eq!(
            psi.some,
            PsiLine {
                avg10_centi: 9730,
                avg60_centi: 9608,
                avg300_centi: 7101,
                total_micros: 7_589_431_316,
            }
        );
        assert_eq!(psi.full.map(|f| f.total_micros), Some(0));
        // Kernels before 5.13 write no `full` line for CPU.
        let old = parse_psi("some avg10=0.5 avg60=1.00 avg300=100.00 total=12\n").expect("parses");
        assert_eq!(old.some.avg10_centi, 50);
        assert_eq!(old.some.avg300_centi, 10000);
        assert!(old.full.is_none());
        assert!(parse_psi("").is_none());
        assert!(parse_psi("some avg10=x total=1").is_none());
        assert!(parse_psi("full avg10=1.00 avg60=0 avg300=0 total=1").is_none());
    }

    #[test]
    fn v1_memory_like_cadvisor() {
        let stat = parse_flat_keyed(
            "cache 421888\nrss 1671168\ninactive_file 229376\npgfault 5\n\
             total_rss 2000000\ntotal_inactive_file 1000000\ntotal_pgfault 32226\ntotal_pgmajfault 9\n",
        );
        let m = memory_v1(3_000_000, &stat, 9_223_372_036_854_771_712, Some(3_500_000));
        assert_eq!(m.working_set_bytes, 2_000_000);
        assert_eq!(m.rss_bytes, 2_000_000);
        assert_eq!(m.page_faults, 32226);
        assert_eq!(m.major_page_faults, 9);
        assert_eq!(m.limit_bytes, None);
        assert_eq!(m.available_bytes(), None);
        assert_eq!(m.swap_usage_bytes, Some(500_000));

        let limited = memory_v1(100, &stat, 64 << 20, None);
        assert_eq!(limited.working_set_bytes, 0, "floored at zero");
        assert_eq!(limited.limit_bytes, Some(64 << 20));
        assert_eq!(limited.available_bytes(), Some(64 << 20));
    }

    #[test]
    fn v2_memory_and_cpu() {
        let stat =
            parse_flat_keyed("anon 700\nfile 300\ninactive_file 200\npgfault 11\npgmajfault 1\n");
        let m = memory_v2(1000, &stat, Some(4000), Some(0));
        assert_eq!(m.working_set_bytes, 800);
        assert_eq!(m.rss_bytes, 700);
        assert_eq!(m.available_bytes(), Some(3200));

        let cpu = cpu_v2(&parse_flat_keyed(
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        ));
        assert_eq!(
            cpu,
            Some(CpuStats {
                usage_nanos: 1_500_000,
                user_nanos: Some(1_000_000),
                system_nanos: Some(500_000)
            })
        );
        assert_eq!(cpu_v2(&BTreeMap::new()), None);
    }
}
