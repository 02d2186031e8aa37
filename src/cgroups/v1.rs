//! cgroup v1: one hierarchy per mount (`/sys/fs/cgroup/memory`,
//! `/sys/fs/cgroup/cpu,cpuacct`, `name=systemd`...). A cgroup is the same
//! relative path in every hierarchy; processes join it in each, as runc's
//! cgroupfs driver does, so the named `systemd` hierarchy sees them too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::error::{CgroupError, Result};
use super::files;
use super::parse::{CgroupMount, MountKind, parse_flat_keyed};
use super::plan::{self, CgroupPlan, LevelSetup, Write};
use super::resources::Resources;
use super::stats::{self, CpuStats, Stats};

/// One mounted v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hierarchy {
    pub mount_point: PathBuf,
    pub controllers: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct V1 {
    pub hierarchies: Vec<Hierarchy>,
}

/// How long `kill_all` waits for the freezer to report FROZEN before it
/// kills anyway (a task in uninterruptible sleep can hold FREEZING).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

impl V1 {
    /// The v1 hierarchies among `mounts`, one per superblock: a hierarchy
    /// bind-mounted twice is kept once, preferring a mount of its root.
    pub fn from_mounts(mounts: &[CgroupMount]) -> Option<Self> {
        let mut kept: Vec<(&CgroupMount, Hierarchy)> = Vec::new();
        for m in mounts
            .iter()
            .filter(|m| m.kind == MountKind::V1 && !m.controllers.is_empty())
        {
            let h = Hierarchy {
                mount_point: m.mount_point.clone(),
                controllers: m.controllers.clone(),
            };
            match kept.iter_mut().find(|(k, _)| k.device == m.device) {
                Some(slot) if slot.0.root != "/" && m.root == "/" => *slot = (m, h),
                Some(_) => {}
                None => kept.push((m, h)),
            }
        }
        (!kept.is_empty()).then(|| Self {
            hierarchies: kept.into_iter().map(|(_, h)| h).collect(),
        })
    }

    pub fn controllers(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .hierarchies
            .iter()
            .flat_map(|h| h.controllers.iter().cloned())
            .collect();
        all.sort();
        all
    }

    fn dir(h: &Hierarchy, path: &str) -> PathBuf {
        h.mount_point.join(path.trim_start_matches('/'))
    }

    /// The cgroup's dir in the hierarchy holding `controller`.
    fn controller_dir(&self, controller: &str, path: &str) -> Option<PathBuf> {
        self.hierarchies
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller))
            .map(|h| Self::dir(h, path))
    }

    /// Like `controller_dir`, for a limit that needs the controller.
    fn require(&self, controller: &str, path: &str, file: &str) -> Result<PathBuf> {
        self.controller_dir(controller, path)
            .ok_or_else(|| CgroupError::ControllerUnavailable {
                file: file.to_string(),
                dir: PathBuf::from(format!("{path} (no {controller} hierarchy is mounted)")),
            })
    }

    pub fn dirs(&self, path: &str) -> Vec<(Vec<String>, PathBuf)> {
        self.hierarchies
            .iter()
            .map(|h| (h.controllers.clone(), Self::dir(h, path)))
            .collect()
    }

    pub fn exists(&self, path: &str) -> bool {
        self.hierarchies.iter().any(|h| Self::dir(h, path).is_dir())
    }

    pub fn create(&self, path: &str, resources: &Resources) -> Result<()> {
        plan::create(&self.plan(path, resources)?)
    }

    pub fn apply(&self, path: &str, r: &Resources) -> Result<()> {
        plan::apply(&self.writes(path, r)?)
    }

    /// The cgroup's directories in every hierarchy, then its settings.
    pub(crate) fn plan(&self, path: &str, resources: &Resources) -> Result<CgroupPlan> {
        let dirs = self
            .hierarchies
            .iter()
            .flat_map(|h| {
                let cpuset = h.controllers.iter().any(|c| c == "cpuset");
                let setup = if cpuset {
                    LevelSetup::InheritCpuset
                } else {
                    LevelSetup::Nothing
                };
                plan::levels(&h.mount_point, path, setup)
            })
            .collect();
        Ok(CgroupPlan {
            dirs,
            writes: self.writes(path, resources)?,
        })
    }

    /// The writes that apply `r`, each in the hierarchy of its controller.
    /// A setting whose controller has no hierarchy fails the whole plan.
    pub(crate) fn writes(&self, path: &str, r: &Resources) -> Result<Vec<Write>> {
        if !r.unified.is_empty() {
            return Err(CgroupError::invalid(
                "unified",
                "this host uses cgroup v1; cgroup v2 settings cannot be applied",
            ));
        }
        let mut writes = Vec::new();
        if r.cpu_shares.is_some() || r.cpu_period.is_some() || r.cpu_quota.is_some() {
            let dir = self.require("cpu", path, "cpu.shares")?;
            if let Some(shares) = r.cpu_shares {
                writes.push(Write::setting(&dir, "cpu.shares", shares.to_string()));
            }
            // The period first: the kernel checks a quota against it.
            if let Some(period) = r.cpu_period {
                writes.push(Write::setting(
                    &dir,
                    "cpu.cfs_period_us",
                    period.to_string(),
                ));
            }
            if let Some(quota) = r.cpu_quota {
                writes.push(Write::setting(&dir, "cpu.cfs_quota_us", quota.to_string()));
            }
        }
        for (file, value) in [
            ("cpuset.cpus", &r.cpuset_cpus),
            ("cpuset.mems", &r.cpuset_mems),
        ] {
            if let Some(v) = value {
                let dir = self.require("cpuset", path, file)?;
                writes.push(Write::setting(&dir, file, v.as_str()));
            }
        }
        if r.memory_limit.is_some() || r.memory_swap.is_some() {
            let dir = self.require("memory", path, "memory.limit_in_bytes")?;
            writes.push(Write::MemoryV1 {
                dir,
                limit: r.memory_limit,
                swap: r.memory_swap,
            });
        }
        if let Some(limit) = r.pids_limit {
            let dir = self.require("pids", path, "pids.max")?;
            writes.push(Write::setting(&dir, "pids.max", pids_value(limit)));
        }
        // kubelet sends a limit (0 when none is asked) for every page size
        // the node has, whether or not a hugetlb hierarchy is mounted: as
        // CRI-O does, the limits are left out without one (containerd
        // leaves them out always, `disable_hugetlb_controller`). Refusing
        // would fail every pod on such a node.
        match self.controller_dir("hugetlb", path) {
            Some(dir) => {
                for h in &r.hugepage_limits {
                    let file = format!("hugetlb.{}.limit_in_bytes", h.page_size);
                    writes.push(Write::setting(&dir, file, h.limit.to_string()));
                }
            }
            None if !r.hugepage_limits.is_empty() => {
                tracing::debug!(
                    cgroup = path,
                    "no hugetlb hierarchy: hugepage limits left out"
                );
            }
            None => {}
        }
        if !r.devices.is_empty() {
            let dir = self.require("devices", path, "devices.allow")?;
            // In order: the kernel keeps an allow list that each line edits.
            for rule in &r.devices {
                let file = if rule.allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                writes.push(Write::setting(&dir, file, rule.v1_line()));
            }
        }
        Ok(writes)
    }

    pub fn add_process(&self, path: &str, pid: Pid) -> Result<()> {
        for h in &self.hierarchies {
            let dir = Self::dir(h, path);
            if !dir.is_dir() {
                return Err(CgroupError::NotFound {
                    path: dir.display().to_string(),
                });
            }
            files::write(&dir.join("cgroup.procs"), &pid.as_raw().to_string())?;
        }
        Ok(())
    }

    /// Every process in the cgroup (and below it) in any hierarchy.
    pub fn pids(&self, path: &str) -> Result<Vec<Pid>> {
        let mut pids = Vec::new();
        for h in &self.hierarchies {
            files::procs_recursive(&Self::dir(h, path), &mut pids)?;
        }
        pids.sort_by_key(|p| p.as_raw());
        pids.dedup();
        Ok(pids)
    }

    pub fn stats(&self, path: &str) -> Result<Stats> {
        let timestamp = std::time::SystemTime::now();
        let cpu = match self.controller_dir("cpuacct", path) {
            Some(dir) => match files::read_u64_optional(&dir.join("cpuacct.usage"))? {
                Some(usage) => Some(CpuStats {
                    usage_nanos: usage,
                    user_nanos: files::read_u64_optional(&dir.join("cpuacct.usage_user"))?,
                    system_nanos: files::read_u64_optional(&dir.join("cpuacct.usage_sys"))?,
                }),
                None => None,
            },
            None => None,
        };
        let memory = match self.controller_dir("memory", path) {
            Some(dir) => match files::read_u64_optional(&dir.join("memory.usage_in_bytes"))? {
                Some(usage) => {
                    let stat = parse_flat_keyed(&files::read(&dir.join("memory.stat"))?);
                    let limit_file = dir.join("memory.limit_in_bytes");
                    let limit = files::parse_u64(&limit_file, &files::read(&limit_file)?)?;
                    let memsw = files::read_u64_optional(&dir.join("memory.memsw.usage_in_bytes"))?;
                    Some(stats::memory_v1(usage, &stat, limit, memsw))
                }
                None => None,
            },
            None => None,
        };
        let pids = match self.controller_dir("pids", path) {
            Some(dir) => files::pids_stats(&dir)?,
            None => None,
        };
        if cpu.is_none() && memory.is_none() && !self.exists(path) {
            return Err(CgroupError::NotFound {
                path: path.to_string(),
            });
        }
        Ok(Stats {
            timestamp,
            cpu,
            memory,
            pids,
            // v1 keeps no pressure per cgroup.
            pressure: Default::default(),
        })
    }

    /// `oom_kill` of `memory.oom_control` (Linux 4.13+) counts the
    /// OOM kills in this cgroup. Older kernels lack the field; then a
    /// non-zero `memory.failcnt` (the limit was hit at least once) is taken
    /// as a sign, which can be a false positive when reclaim sufficed.
    pub fn oom_killed(&self, path: &str) -> Result<bool> {
        let dir = self.require("memory", path, "memory.oom_control")?;
        let control = dir.join("memory.oom_control");
        let Some(content) = files::read_optional(&control)? else {
            return Err(CgroupError::NotFound {
                path: dir.display().to_string(),
            });
        };
        if let Some(kills) = parse_flat_keyed(&content).get("oom_kill") {
            return Ok(*kills > 0);
        }
        Ok(files::read_u64_optional(&dir.join("memory.failcnt"))?.unwrap_or(0) > 0)
    }

    /// Freezes the cgroup so nothing forks while the pids are read,
    /// SIGKILLs them all, and thaws so the signals are delivered. Without a
    /// freezer hierarchy, kills in rounds until no process is left.
    pub fn kill_all(&self, path: &str) -> Result<()> {
        if !self.exists(path) {
            return Ok(());
        }
        let freezer = self
            .controller_dir("freezer", path)
            .map(|d| d.join("freezer.state"))
            .filter(|f| f.exists());
        let Some(state) = freezer else {
            return files::kill_in_rounds(|| self.pids(path));
        };
        files::write(&state, "FROZEN")?;
        let frozen = files::wait_for(FREEZE_TIMEOUT, || {
            Ok(files::read(&state)?.trim() == "FROZEN")
        });
        let killed = frozen.and_then(|frozen| {
            if !frozen {
                tracing::warn!(
                    cgroup = path,
                    "freezer did not reach FROZEN; killing anyway"
                );
            }
            files::kill_pids(&self.pids(path)?);
            Ok(())
        });
        // Thaw whatever happened: SIGKILL is delivered once tasks run again,
        // and a cgroup must never be left frozen.
        let thawed = files::write(&state, "THAWED");
        killed.and(thawed)
    }

    pub fn destroy(&self, path: &str, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let deadline = started + timeout;
        // Every hierarchy is tried even when one fails, so a retry has
        // less left to do; the first error is reported.
        let mut first_error = None;
        for h in &self.hierarchies {
            if let Err(e) = files::remove_tree(&Self::dir(h, path), deadline, started) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A new v1 cpuset starts with no CPUs and no memory nodes (unless the
/// parent has `cgroup.clone_children`), and adding a task to it fails with
/// ENOSPC; copy the parent's sets down, as runc does.
pub(super) fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = files::read(&dir.join(file))?;
        if own.trim().is_empty() {
            let inherited = files::read(&parent.join(file))?;
            files::write(&dir.join(file), inherited.trim())?;
        }
    }
    Ok(())
}

pub(crate) fn pids_value(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::parse::parse_mountinfo;

    #[test]
    fn hierarchies_deduplicated_by_superblock() {
        let info = "\
32 31 0:29 /sub /mnt/cpu-bind rw - cgroup cgroup rw,cpu
33 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
34 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 31 0:30 / /sys/fs/cgroup/memory-again rw - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let v1 = V1::from_mounts(&parse_mountinfo(info)).unwrap();
        let mounts: Vec<_> = v1
            .hierarchies
            .iter()
            .map(|h| h.mount_point.clone())
            .collect();
        assert_eq!(
            mounts,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory"),
            ]
        );
        assert_eq!(
            v1.controller_dir("memory", "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/a/b"))
        );
        assert_eq!(v1.controller_dir("pids", "/a"), None);
        assert!(
            V1::from_mounts(&parse_mountinfo("41 31 0:38 / /u rw - cgroup2 cgroup2 rw")).is_none()
        );
    }

    #[test]
    fn pids_values() {
        assert_eq!(pids_value(100), "100");
        assert_eq!(pids_value(0), "max");
        assert_eq!(pids_value(-1), "max");
    }
}
