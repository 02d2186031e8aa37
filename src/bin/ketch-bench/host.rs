//! What the table's header says about the machine, and critest's
//! benchmark results as ketch-bench runs.
//!
//! `favordynmods`: every migration of a process into a cgroup takes the
//! kernel's global `cgroup_threadgroup_rwsem` for writing, which waits for
//! an RCU grace period unless a cgroup hierarchy is mounted with
//! `favordynmods` (then the lock stays in its slow-reader mode for every
//! hierarchy). A fresh node does not have it, so a figure taken with it
//! says little about one: the header says which it was.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::report::{Metric, Run, SCHEMA, Unit};

/// One cgroup mount of `/proc/self/mountinfo`: where, which version, and
/// whether it has `favordynmods`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub point: String,
    pub v2: bool,
    pub favordynmods: bool,
}

/// The cgroup mounts of a mountinfo text.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let superopts = right.nth(1).unwrap_or_default();
            let v2 = match fstype {
                "cgroup" => false,
                "cgroup2" => true,
                _ => return None,
            };
            let favordynmods = superopts.split(',').any(|o| o == "favordynmods");
            Some(CgroupMount {
                point: point.to_owned(),
                v2,
                favordynmods,
            })
        })
        .collect()
}

/// The header line about the host's cgroups.
pub fn cgroup_summary(mounts: &[CgroupMount]) -> String {
    let v1 = mounts.iter().filter(|m| !m.v2).count();
    let v2 = mounts.iter().filter(|m| m.v2).count();
    let layout = match (v1, v2) {
        (0, 0) => "none mounted".to_owned(),
        (0, _) => "v2".to_owned(),
        (_, 0) => format!("v1 ({v1} hierarchies)"),
        _ => format!("hybrid ({v1} v1 hierarchies and cgroup2)"),
    };
    let with: Vec<&str> = mounts
        .iter()
        .filter(|m| m.favordynmods)
        .map(|m| m.point.as_str())
        .collect();
    let dynmods = if with.is_empty() {
        "favordynmods off (stock: a cgroup migration waits for an RCU grace period)".to_owned()
    } else {
        format!(
            "favordynmods ON at {} (not a stock kernel's setting)",
            with.join(", ")
        )
    };
    format!("cgroups {layout}, {dynmods}")
}

/// critest's `LifecycleBenchmarksResultsSet` (cri-tools
/// `pkg/benchmark/util.go`): operation names and, per sample, the
/// duration of each in nanoseconds.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleResults {
    operations_names: Vec<String>,
    #[serde(default)]
    datapoints: Vec<Datapoint>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Datapoint {
    #[serde(default)]
    operations_durations_ns: Vec<i64>,
}

/// The metrics of one critest results file (`name` is its file stem,
/// e.g. `pod_benchmark_data`): one per operation, in milliseconds.
pub fn critest_metrics(name: &str, json: &str) -> Result<Vec<Metric>, serde_json::Error> {
    let results: LifecycleResults = serde_json::from_str(json)?;
    let group = format!("critest -benchmark: {}", name.trim_end_matches("_data"));
    Ok(results
        .operations_names
        .iter()
        .enumerate()
        .map(|(i, op)| Metric {
            key: format!("critest.{name}.{op}"),
            group: group.clone(),
            name: op.clone(),
            unit: Unit::Ms,
            samples: results
                .datapoints
                .iter()
                .filter_map(|d| d.operations_durations_ns.get(i))
                .map(|ns| *ns as f64 / 1e6)
                .collect(),
            errors: 0,
            last_error: None,
            unavailable: None,
        })
        .collect())
}

/// A run made of the critest results files in `dir`.
pub fn critest_run(label: &str, dir: &Path) -> std::io::Result<Run> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            files.insert(stem.to_owned(), std::fs::read_to_string(&path)?);
        }
    }
    let mut metrics = Vec::new();
    for (name, json) in &files {
        metrics.extend(critest_metrics(name, json).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{name}.json: {e}"))
        })?);
    }
    Ok(Run {
        schema: SCHEMA.to_owned(),
        label: label.to_owned(),
        endpoint: String::new(),
        runtime_name: label.to_owned(),
        runtime_version: String::new(),
        started_unix: 0,
        duration_secs: 0.0,
        params: BTreeMap::new(),
        metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_header_says_whether_favordynmods_is_on() {
        let mounts = cgroup_mounts(HYBRID);
        assert_eq!(mounts.len(), 3);
        assert_eq!(
            cgroup_summary(&mounts),
            "cgroups hybrid (2 v1 hierarchies and cgroup2), favordynmods off (stock: a cgroup \
             migration waits for an RCU grace period)"
        );
        let v2 =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,favordynmods\n";
        assert_eq!(
            cgroup_summary(&cgroup_mounts(v2)),
            "cgroups v2, favordynmods ON at /sys/fs/cgroup (not a stock kernel's setting)"
        );
        let v1 = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,favordynmods\n";
        assert!(
            cgroup_summary(&cgroup_mounts(v1))
                .starts_with("cgroups v1 (1 hierarchies), favordynmods ON")
        );
        assert_eq!(
            cgroup_summary(&[]),
            "cgroups none mounted, favordynmods off (stock: a cgroup migration waits for an RCU grace period)"
        );
    }

    #[test]
    fn critest_results_become_metrics_per_operation() {
        let json = r#"{"operationsNames":["CreatePodSandbox","StopPodSandbox"],"numParallel":1,
            "datapoints":[{"sampleIndex":0,"operationsDurationsNs":[50000000,2000000]},
                          {"sampleIndex":1,"operationsDurationsNs":[40000000]}]}"#;
        let m = critest_metrics("pod_benchmark_data", json).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].key, "critest.pod_benchmark_data.CreatePodSandbox");
        assert_eq!(m[0].group, "critest -benchmark: pod_benchmark");
        assert_eq!(m[0].samples, vec![50.0, 40.0]);
        assert_eq!(m[1].samples, vec![2.0]);
        assert!(critest_metrics("x", "{}").is_err());
    }
}
