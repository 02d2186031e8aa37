//! A pod's network usage, read from its own network namespace: a thread
//! of its own enters the pinned netns (`setns(2)`, which moves only the
//! calling thread) and reads `/proc/thread-self/net/dev`, the counters of
//! the interfaces of the namespace that thread is in (`proc(5)`); the
//! thread ends right after, so no other work runs in the pod's netns.

use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use crate::cgroups::Stats;
use crate::cgroups::stats::{CpuStats, MemoryStats, PidsStats};

/// The counters of one interface, as `/proc/net/dev` has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

/// The interface kubelet reports as the pod's own (`eth0`, the CNI
/// convention and kubelet's `network.DefaultInterfaceName`).
pub const DEFAULT_INTERFACE: &str = "eth0";

/// Parses `/proc/net/dev`: two header lines, then `name: rx_bytes
/// rx_packets rx_errs … (8 fields) tx_bytes tx_packets tx_errs …`.
/// Loopback is left out, as cAdvisor does.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = counters
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            if v.len() < 16 {
                return None;
            }
            Some(InterfaceUsage {
                name: name.to_owned(),
                rx_bytes: v[0],
                rx_errors: v[2],
                tx_bytes: v[8],
                tx_errors: v[10],
            })
        })
        .collect()
}

/// The interfaces of each network namespace in `netns` (pins under the
/// state dir), in order, all read by one short-lived thread; a namespace
/// that cannot be entered gives `None`.
pub async fn network_usage(netns: Vec<PathBuf>) -> Vec<Option<Vec<InterfaceUsage>>> {
    if netns.is_empty() {
        return Vec::new();
    }
    let n = netns.len();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("ketch-netns-stats".into())
        .spawn(move || {
            let all: Vec<_> = netns.iter().map(|p| read_in(p)).collect();
            let _ = tx.send(all);
        });
    if spawned.is_err() {
        return vec![None; n];
    }
    rx.await.unwrap_or_else(|_| vec![None; n])
}

fn read_in(netns: &Path) -> Option<Vec<InterfaceUsage>> {
    let file = std::fs::File::open(netns).ok()?;
    if let Err(e) = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET) {
        tracing::debug!(netns = %netns.display(), "cannot enter network namespace: {e}");
        return None;
    }
    let text = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
    Some(parse_net_dev(&text))
}

/// A pod's usage as the sum of its containers' (a pod without a cgroup
/// of its own, whose containers sit beside other pods' under ketch's
/// default parent); `None` when no container has a sample. Limits are
/// the containers' own, so the sum has none.
pub fn sum(samples: &[&Stats]) -> Option<Stats> {
    let first = samples.first()?;
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    };
    let mut out = Stats {
        timestamp: first.timestamp,
        cpu: None,
        memory: None,
        pids: None,
        // Stall time does not add up across cgroups.
        pressure: Default::default(),
    };
    for s in samples {
        out.timestamp = out.timestamp.max(s.timestamp);
        if let Some(c) = &s.cpu {
            let acc = out.cpu.get_or_insert(CpuStats {
                usage_nanos: 0,
                user_nanos: None,
                system_nanos: None,
            });
            acc.usage_nanos = acc.usage_nanos.saturating_add(c.usage_nanos);
            acc.user_nanos = add(acc.user_nanos, c.user_nanos);
            acc.system_nanos = add(acc.system_nanos, c.system_nanos);
        }
        if let Some(m) = &s.memory {
            let acc = out.memory.get_or_insert(MemoryStats {
                usage_bytes: 0,
                working_set_bytes: 0,
                rss_bytes: 0,
                page_faults: 0,
                major_page_faults: 0,
                limit_bytes: None,
                swap_usage_bytes: None,
            });
            acc.usage_bytes = acc.usage_bytes.saturating_add(m.usage_bytes);
            acc.working_set_bytes = acc.working_set_bytes.saturating_add(m.working_set_bytes);
            acc.rss_bytes = acc.rss_bytes.saturating_add(m.rss_bytes);
            acc.page_faults = acc.page_faults.saturating_add(m.page_faults);
            acc.major_page_faults = acc.major_page_faults.saturating_add(m.major_page_faults);
            acc.swap_usage_bytes = add(acc.swap_usage_bytes, m.swap_usage_bytes);
        }
        if let Some(p) = &s.pids {
            let acc = out.pids.get_or_insert(PidsStats {
                current: 0,
                limit: None,
            });
            acc.current = acc.current.saturating_add(p.current);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_without_a_cgroup_is_the_sum_of_its_containers() {
        let sample = |cpu: u64, mem: u64, pids: u64| Stats {
            timestamp: std::time::SystemTime::now(),
            cpu: Some(CpuStats {
                usage_nanos: cpu,
                user_nanos: None,
                system_nanos: None,
            }),
            memory: Some(MemoryStats {
                usage_bytes: mem,
                working_set_bytes: mem / 2,
                rss_bytes: mem / 4,
                page_faults: 1,
                major_page_faults: 0,
                limit_bytes: Some(1 << 30),
                swap_usage_bytes: None,
            }),
            pids: Some(PidsStats {
                current: pids,
                limit: Some(10),
            }),
            pressure: Default::default(),
        };
        let (a, b) = (sample(10, 100, 1), sample(5, 40, 2));
        let s = sum(&[&a, &b]).unwrap();
        assert_eq!(s.cpu.unwrap().usage_nanos, 15);
        let m = s.memory.unwrap();
        assert_eq!(
            (m.usage_bytes, m.working_set_bytes, m.rss_bytes),
            (140, 70, 35)
        );
        assert_eq!(m.limit_bytes, None);
        assert_eq!(s.pids.unwrap().current, 3);
        assert!(sum(&[]).is_none());
    }

    #[test]
    fn net_dev_counters_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
 lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    5000      40    2    0    0     0          0         0     3000      30    1    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(text),
            vec![InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_errors: 2,
                tx_bytes: 3000,
                tx_errors: 1,
            }]
        );
        assert!(parse_net_dev("garbage").is_empty());
    }
}
