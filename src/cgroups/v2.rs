//! cgroup v2: one unified tree. A controller works in a cgroup only when its
//! parent lists it in `cgroup.subtree_control`, so creating a cgroup enables
//! the controllers ketch uses at every level above it. Limits are written in
//! v2 terms, converted from the v1-style [`Resources`] as runc does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::error::{CgroupError, Result};
use super::files;
use super::parse::parse_flat_keyed;
use super::plan::{self, CgroupPlan, LevelSetup, Write};
use super::resources::{Resources, shares_to_weight, swap_v2_value};
use super::stats::{self, Stats};
use super::v1::pids_value;

/// Controllers enabled down the path of every cgroup ketch creates, where
/// the parent has them.
const WANTED: &[&str] = &[
    "cpu", "cpuset", "hugetlb", "io", "memory", "misc", "pids", "rdma",
];

/// How long the freezer fallback of `kill_all` waits for `frozen 1`.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct V2 {
    /// The directory every path is relative to: the cgroup2 mount point, or
    /// a delegated subtree of it.
    pub root: PathBuf,
}

impl V2 {
    pub fn dir(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    pub fn controllers(&self) -> Result<Vec<String>> {
        let file = self.root.join("cgroup.controllers");
        Ok(files::read(&file)?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    pub fn exists(&self, path: &str) -> bool {
        self.dir(path).is_dir()
    }

    pub fn create(&self, path: &str, resources: &Resources) -> Result<()> {
        plan::create(&self.plan(path, resources)?)
    }

    pub fn apply(&self, path: &str, r: &Resources) -> Result<()> {
        let dir = self.dir(path);
        if !dir.is_dir() {
            return Err(CgroupError::NotFound {
                path: dir.display().to_string(),
            });
        }
        plan::apply(&self.writes(path, r)?)
    }

    /// The cgroup's directory, each level with the wanted controllers
    /// enabled in its parent, then its settings.
    pub(crate) fn plan(&self, path: &str, resources: &Resources) -> Result<CgroupPlan> {
        Ok(CgroupPlan {
            dirs: plan::levels(&self.root, path, LevelSetup::EnableControllers),
            writes: self.writes(path, resources)?,
        })
    }

    /// The writes that apply `r`, in v2 terms (converted as runc does).
    pub(crate) fn writes(&self, path: &str, r: &Resources) -> Result<Vec<Write>> {
        let dir = self.dir(path);
        let mut writes = Vec::new();
        if let Some(shares) = r.cpu_shares {
            writes.push(Write::setting(
                &dir,
                "cpu.weight",
                shares_to_weight(shares).to_string(),
            ));
        }
        if let Some(max) = cpu_max(r.cpu_quota, r.cpu_period) {
            writes.push(Write::setting(&dir, "cpu.max", max));
        }
        for (file, value) in [
            ("cpuset.cpus", &r.cpuset_cpus),
            ("cpuset.mems", &r.cpuset_mems),
        ] {
            if let Some(v) = value {
                writes.push(Write::setting(&dir, file, v.as_str()));
            }
        }
        if let Some(swap) = swap_v2_value(r.memory_swap, r.memory_limit)? {
            // No swap controller (swap off or not accounted): "no swap" and
            // "unlimited swap" are both what the host gives anyway.
            let file = "memory.swap.max".to_owned();
            writes.push(if swap == "max" || swap == "0" {
                Write::SettingIfAvailable {
                    dir: dir.clone(),
                    file,
                    value: swap,
                }
            } else {
                Write::setting(&dir, file, swap)
            });
        }
        if let Some(limit) = r.memory_limit {
            let value = if limit == -1 {
                "max".to_string()
            } else {
                limit.to_string()
            };
            writes.push(Write::setting(&dir, "memory.max", value));
        }
        if let Some(limit) = r.pids_limit {
            writes.push(Write::setting(&dir, "pids.max", pids_value(limit)));
        }
        for h in &r.hugepage_limits {
            let file = format!("hugetlb.{}.max", h.page_size);
            writes.push(Write::setting(&dir, file, h.limit.to_string()));
        }
        if !r.devices.is_empty() {
            writes.push(Write::DeviceFilter {
                dir: dir.clone(),
                rules: r.devices.clone(),
            });
        }
        // Last, so a raw value wins over the typed one for the same file.
        for (key, value) in &r.unified {
            writes.push(Write::setting(&dir, key.as_str(), value.as_str()));
        }
        Ok(writes)
    }

    pub fn add_process(&self, path: &str, pid: Pid) -> Result<()> {
        let dir = self.dir(path);
        if !dir.is_dir() {
            return Err(CgroupError::NotFound {
                path: dir.display().to_string(),
            });
        }
        files::write(&dir.join("cgroup.procs"), &pid.as_raw().to_string())
    }

    pub fn pids(&self, path: &str) -> Result<Vec<Pid>> {
        let mut pids = Vec::new();
        files::procs_recursive(&self.dir(path), &mut pids)?;
        pids.sort_by_key(|p| p.as_raw());
        pids.dedup();
        Ok(pids)
    }

    pub fn stats(&self, path: &str) -> Result<Stats> {
        let dir = self.dir(path);
        let timestamp = std::time::SystemTime::now();
        if !dir.is_dir() {
            return Err(CgroupError::NotFound {
                path: dir.display().to_string(),
            });
        }
        // cpu.stat's usage fields exist in every cgroup, controller or not.
        let cpu = files::read_optional(&dir.join("cpu.stat"))?
            .and_then(|s| stats::cpu_v2(&parse_flat_keyed(&s)));
        let memory = match files::read_u64_optional(&dir.join("memory.current"))? {
            Some(current) => {
                let stat = parse_flat_keyed(&files::read(&dir.join("memory.stat"))?);
                let max = files::read_limit(&dir.join("memory.max"))?;
                let swap = files::read_u64_optional(&dir.join("memory.swap.current"))?;
                Some(stats::memory_v2(current, &stat, max, swap))
            }
            None => None,
        };
        let pids = files::pids_stats(&dir)?;
        Ok(Stats {
            timestamp,
            cpu,
            memory,
            pids,
            pressure: stats::Pressure {
                cpu: read_psi(&dir, "cpu.pressure"),
                memory: read_psi(&dir, "memory.pressure"),
                io: read_psi(&dir, "io.pressure"),
            },
        })
    }

    /// `oom_kill` in `memory.events`: OOM kills in this cgroup and below.
    /// Without the memory controller there is no memory limit to hit.
    pub fn oom_killed(&self, path: &str) -> Result<bool> {
        let dir = self.dir(path);
        if !dir.is_dir() {
            return Err(CgroupError::NotFound {
                path: dir.display().to_string(),
            });
        }
        Ok(files::read_optional(&dir.join("memory.events"))?
            .and_then(|s| parse_flat_keyed(&s).get("oom_kill").copied())
            .unwrap_or(0)
            > 0)
    }

    /// `cgroup.kill` (Linux 5.14+) kills the whole subtree atomically, forks
    /// included. Older kernels: freeze, kill, thaw.
    pub fn kill_all(&self, path: &str) -> Result<()> {
        let dir = self.dir(path);
        if !dir.is_dir() {
            return Ok(());
        }
        if dir.join("cgroup.kill").exists() {
            return files::write(&dir.join("cgroup.kill"), "1");
        }
        self.kill_by_freezing(path)
    }

    /// The fallback of `kill_all`, also used by tests on kernels that have
    /// `cgroup.kill`. `cgroup.freeze` is Linux 5.2+; without it, kill in
    /// rounds.
    pub fn kill_by_freezing(&self, path: &str) -> Result<()> {
        let dir = self.dir(path);
        let freeze = dir.join("cgroup.freeze");
        if !freeze.exists() {
            return files::kill_in_rounds(|| self.pids(path));
        }
        files::write(&freeze, "1")?;
        let frozen = files::wait_for(FREEZE_TIMEOUT, || {
            let events = files::read(&dir.join("cgroup.events"))?;
            Ok(parse_flat_keyed(&events).get("frozen") == Some(&1))
        });
        let killed = frozen.and_then(|frozen| {
            if !frozen {
                tracing::warn!(
                    cgroup = path,
                    "cgroup did not report frozen; killing anyway"
                );
            }
            files::kill_pids(&self.pids(path)?);
            Ok(())
        });
        // Never leave a cgroup frozen.
        let thawed = files::write(&freeze, "0");
        killed.and(thawed)
    }

    pub fn destroy(&self, path: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        files::remove_tree(&self.dir(path), started + timeout, started)
    }
}

/// `cpu.max` is `<quota|max> [period]`; only the parts asked for are
/// written (the kernel keeps the period when it is left out), as runc does.
fn cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    if quota.is_none() && period.is_none() {
        return None;
    }
    let mut value = match quota {
        Some(q) if q > 0 => q.to_string(),
        _ => "max".to_string(),
    };
    if let Some(p) = period {
        value.push(' ');
        value.push_str(&p.to_string());
    }
    Some(value)
}

/// The wanted controllers `dir` offers its children but does not yet
/// enable, as `+a +b` for `cgroup.subtree_control`.
fn controllers_to_enable(available: &str, enabled: &str) -> Vec<String> {
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    available
        .split_whitespace()
        .filter(|c| WANTED.contains(c) && !enabled.contains(c))
        .map(|c| format!("+{c}"))
        .collect()
}

/// Enables the wanted controllers in `dir`'s `cgroup.subtree_control`.
/// Best effort: a parent with processes of its own cannot enable
/// controllers (the no-internal-process rule), and then a limit that needs
/// one fails later with a clear `ControllerUnavailable`.
pub(super) fn enable_controllers(dir: &Path) {
    let read = |f: &str| files::read(&dir.join(f)).unwrap_or_default();
    let missing =
        controllers_to_enable(&read("cgroup.controllers"), &read("cgroup.subtree_control"));
    if missing.is_empty() {
        return;
    }
    let control = dir.join("cgroup.subtree_control");
    if files::write(&control, &missing.join(" ")).is_ok() {
        return;
    }
    // One at a time, so one refusal does not cost the others.
    for c in &missing {
        if let Err(e) = files::write(&control, c) {
            tracing::debug!(error = %e, "cannot enable cgroup controller");
        }
    }
}

/// A `*.pressure` file of `dir`, `None` when it is missing or unreadable:
/// PSI may be off for the kernel (`psi=0`) or for this cgroup
/// (`cgroup.pressure` 0, where reading fails with EOPNOTSUPP), and stats
/// are still wanted then.
fn read_psi(dir: &Path, file: &str) -> Option<stats::Psi> {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|s| stats::parse_psi(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_values() {
        assert_eq!(cpu_max(None, None), None);
        assert_eq!(
            cpu_max(Some(50_000), Some(100_000)).as_deref(),
            Some("50000 100000")
        );
        assert_eq!(cpu_max(Some(50_000), None).as_deref(), Some("50000"));
        assert_eq!(cpu_max(Some(-1), None).as_deref(), Some("max"));
        assert_eq!(cpu_max(None, Some(20_000)).as_deref(), Some("max 20000"));
    }

    #[test]
    fn controllers_enabled_once() {
        assert_eq!(
            controllers_to_enable("cpuset cpu io memory hugetlb pids rdma misc", "cpu memory"),
            vec!["+cpuset", "+io", "+hugetlb", "+pids", "+rdma", "+misc"]
        );
        assert!(controllers_to_enable("cpu memory", "cpu memory").is_empty());
        assert!(controllers_to_enable("perf_event", "").is_empty());
    }
}
