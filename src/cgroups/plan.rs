//! A container's cgroup decided as plain data: which directories are made
//! (one per v1 hierarchy, or one in the unified v2 tree), what each new
//! level needs from its parent, and which file gets which value in which
//! order. `V1::plan` and `V2::plan` build it from [`Resources`] without
//! touching the system; [`apply`] writes it. The order rules (a CPU period
//! before its quota, memory before or after memory+swap, device rules in
//! their list order, raw v2 values last) are unit-tested without root.
//!
//! [`Resources`]: super::Resources

use std::path::{Path, PathBuf};

use super::error::{CgroupError, Result};
use super::files;
use super::resources::DeviceRule;
use super::{devices_bpf, v1, v2};

/// One level of a cgroup's path in one hierarchy: `dir` is made (if
/// missing) under `parent`, then `setup` runs, for a new or an existing
/// level alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MakeDir {
    pub parent: PathBuf,
    pub dir: PathBuf,
    pub setup: LevelSetup,
}

/// What a level needs from its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LevelSetup {
    Nothing,
    /// v1 cpuset: copy the parent's `cpuset.cpus`/`cpuset.mems` into an
    /// empty child (a task cannot join a cpuset without them).
    InheritCpuset,
    /// v2: enable the wanted controllers in the parent's
    /// `cgroup.subtree_control`, best effort.
    EnableControllers,
}

/// One write to a cgroup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    /// `value` into `dir/file`; a missing file is `ControllerUnavailable`.
    Setting {
        dir: PathBuf,
        file: String,
        value: String,
    },
    /// As `Setting`, but a missing file is fine: what it would set is what
    /// the host gives anyway (v2 `memory.swap.max` of `0` or `max` without
    /// swap accounting).
    SettingIfAvailable {
        dir: PathBuf,
        file: String,
        value: String,
    },
    /// v1 memory and memory+swap limits: their order depends on the
    /// current limit, read when applied ([`memory_v1_writes`]).
    MemoryV1 {
        dir: PathBuf,
        limit: Option<i64>,
        swap: Option<i64>,
    },
    /// cgroup v2 device rules: the eBPF device program for `rules`
    /// attached to `dir` in place of any attached before
    /// ([`super::devices_bpf`]).
    DeviceFilter {
        dir: PathBuf,
        rules: Vec<DeviceRule>,
    },
}

impl Write {
    pub fn setting(dir: &Path, file: impl Into<String>, value: impl Into<String>) -> Self {
        Self::Setting {
            dir: dir.to_owned(),
            file: file.into(),
            value: value.into(),
        }
    }
}

/// Everything a create does, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct CgroupPlan {
    pub dirs: Vec<MakeDir>,
    pub writes: Vec<Write>,
}

/// The levels of `path` under `base`, outermost first.
pub(crate) fn levels(base: &Path, path: &str, setup: LevelSetup) -> Vec<MakeDir> {
    let mut dir = base.to_path_buf();
    let mut out = Vec::new();
    for component in path.split('/').filter(|c| !c.is_empty()) {
        let parent = dir.clone();
        dir.push(component);
        out.push(MakeDir {
            parent,
            dir: dir.clone(),
            setup,
        });
    }
    out
}

/// Makes the plan's directories and applies its writes. On failure every
/// directory this call made is removed again.
pub(crate) fn create(plan: &CgroupPlan) -> Result<()> {
    let mut created = Vec::new();
    let result = make_dirs(&plan.dirs, &mut created).and_then(|()| apply(&plan.writes));
    if result.is_err() {
        files::remove_created(&created);
    }
    result
}

fn make_dirs(dirs: &[MakeDir], created: &mut Vec<PathBuf>) -> Result<()> {
    for level in dirs {
        match std::fs::create_dir(&level.dir) {
            Ok(()) => created.push(level.dir.clone()),
            // Another create shares this parent (the pod's cgroup, /ketch).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(CgroupError::io("create cgroup dir", &level.dir, e)),
        }
        match level.setup {
            LevelSetup::Nothing => {}
            LevelSetup::InheritCpuset => v1::inherit_cpuset(&level.parent, &level.dir)?,
            LevelSetup::EnableControllers => v2::enable_controllers(&level.parent),
        }
    }
    Ok(())
}

/// Applies the writes in order; the first failure stops them.
pub(crate) fn apply(writes: &[Write]) -> Result<()> {
    for write in writes {
        match write {
            Write::Setting { dir, file, value } => files::write_setting(dir, file, value)?,
            Write::SettingIfAvailable { dir, file, value } => {
                match files::write_setting(dir, file, value) {
                    Err(CgroupError::ControllerUnavailable { .. }) => {}
                    other => other?,
                }
            }
            Write::MemoryV1 { dir, limit, swap } => set_memory_v1(dir, *limit, *swap)?,
            Write::DeviceFilter { dir, rules } => devices_bpf::attach(dir, rules)?,
        }
    }
    Ok(())
}

/// Reads what the order of the v1 memory writes depends on, then writes.
fn set_memory_v1(dir: &Path, limit: Option<i64>, swap: Option<i64>) -> Result<()> {
    let mut swap = memory_v1_swap(limit, swap);
    if swap.is_some() && !dir.join("memory.memsw.limit_in_bytes").exists() {
        // Swap accounting is off (kernel without it, or swapaccount=0):
        // there is no swap limit to set. Kubelet sends swap = limit by
        // default, so this is normal, not an error.
        tracing::debug!(dir = %dir.display(), "no swap accounting; memory+swap limit not set");
        swap = None;
    }
    let current = match (limit, swap) {
        (Some(_), Some(_)) => {
            let file = dir.join("memory.limit_in_bytes");
            Some(files::parse_u64(&file, &files::read(&file)?)?)
        }
        _ => None,
    };
    for (file, value) in memory_v1_writes(limit, swap, current) {
        files::write_setting(dir, file, &value.to_string())?;
    }
    Ok(())
}

/// The memory+swap limit to set: unlimited memory with no word on swap
/// means both unlimited.
pub(crate) fn memory_v1_swap(limit: Option<i64>, swap: Option<i64>) -> Option<i64> {
    match (limit, swap) {
        (Some(-1), None) => Some(-1),
        (_, s) => s,
    }
}

/// Memory and memory+swap limits in the order the kernel accepts: it
/// refuses a memory limit above memsw and a memsw below the memory limit,
/// so when raising (the new memsw above the `current` memory limit),
/// memsw goes first (the logic of runc's fs/memory.go).
pub(crate) fn memory_v1_writes(
    limit: Option<i64>,
    swap: Option<i64>,
    current: Option<u64>,
) -> Vec<(&'static str, i64)> {
    const LIMIT: &str = "memory.limit_in_bytes";
    const SWAP: &str = "memory.memsw.limit_in_bytes";
    if let (Some(l), Some(s), Some(current)) = (limit, swap, current)
        && (s == -1 || u64::try_from(s).is_ok_and(|s| current < s))
    {
        return vec![(SWAP, s), (LIMIT, l)];
    }
    let mut out = Vec::new();
    if let Some(l) = limit {
        out.push((LIMIT, l));
    }
    if let Some(s) = swap {
        out.push((SWAP, s));
    }
    out
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
