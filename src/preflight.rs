//! What a node needs before ketch can run a single container, checked when
//! `ketch serve` starts, so a node that lacks it fails at once and says
//! what is missing instead of failing every RunPodSandbox later:
//!
//! - **CNI plugins**: at least one of `cni.bin_dirs` exists. Which plugins
//!   a network needs is known only once its config is there (kubeadm nodes
//!   get it from a DaemonSet after ketch starts), so a config naming a
//!   plugin no directory has is logged, not refused.
//! - **overlayfs** with its upper directory under `root_dir`: a probe
//!   mount in `root_dir/tmp` (the module is loaded on demand by the mount
//!   itself). overlayfs refuses another overlayfs as its upper layer,
//!   which is what ketch inside a container meets when `root_dir` is not
//!   on a volume.
//! - **a writable cgroup hierarchy**: a probe cgroup made and removed with
//!   the cgroup manager, in every v1 hierarchy ketch uses or in the v2
//!   tree (a container that got `/sys/fs/cgroup` read-only cannot limit
//!   anything).
//! - **ketch-shim** beside the daemon's executable: the binary every
//!   monitor, pause and exec helper runs (`runtime::helper_exe`).
//!
//! The findings are plain data ([`Problem`]); [`problems_of_cni`] decides
//! from facts passed in, and the probes are a few syscalls each.

use std::path::{Path, PathBuf};

use crate::cgroups::{CgroupManager, Resources};
use crate::config::Config;

/// One thing the node lacks, said so an operator can fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem(pub String);

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every check; empty when the node has what ketch needs.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = problems_of_cni(&config.cni.bin_dirs, |p| p.is_dir());
    warn_of_missing_plugins(config);
    problems.extend(probe_overlay(&config.root_dir));
    problems.extend(probe_cgroups());
    problems.extend(find_shim());
    problems
}

/// The helper binary, found as the runtime will look for it.
fn find_shim() -> Option<Problem> {
    let found = std::env::current_exe()
        .map_err(crate::runtime::RuntimeError::SelfExe)
        .and_then(|exe| crate::runtime::helper_exe(&exe));
    found.err().map(|e| Problem(e.to_string()))
}

/// The CNI plugin directories: one of them must exist.
pub fn problems_of_cni(bin_dirs: &[PathBuf], is_dir: impl Fn(&Path) -> bool) -> Vec<Problem> {
    if bin_dirs.iter().any(|d| is_dir(d)) {
        return Vec::new();
    }
    let dirs: Vec<String> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
    vec![Problem(format!(
        "no CNI plugin directory exists (cni.bin_dirs: {}): install the CNI plugins \
         (Debian: containernetworking-plugins) or name their directory in cni.bin_dirs",
        if dirs.is_empty() {
            "none".to_owned()
        } else {
            dirs.join(", ")
        }
    ))]
}

/// The plugins the current network config names that no bin dir has.
pub fn missing_plugins(
    types: &[String],
    bin_dirs: &[PathBuf],
    exists: impl Fn(&Path) -> bool,
) -> Vec<String> {
    types
        .iter()
        .filter(|t| !bin_dirs.iter().any(|d| exists(&d.join(t))))
        .cloned()
        .collect()
}

fn warn_of_missing_plugins(config: &Config) {
    let Ok(network) = crate::network::find_network(&config.cni.conf_dirs) else {
        return;
    };
    let types: Vec<String> = network
        .plugins
        .iter()
        .filter_map(|p| p.get("type")?.as_str().map(str::to_owned))
        .collect();
    let missing = missing_plugins(&types, &config.cni.bin_dirs, Path::exists);
    if !missing.is_empty() {
        tracing::warn!(
            network = %network.path.display(),
            plugins = ?missing,
            bin_dirs = ?config.cni.bin_dirs,
            "the CNI network names plugins no plugin directory has: pods will fail until they are installed"
        );
    }
}

/// Mounts a one-layer overlay whose upper directory is under `root_dir`
/// and unmounts it again.
fn probe_overlay(root_dir: &Path) -> Option<Problem> {
    let base = root_dir
        .join("tmp")
        .join(format!("preflight-{}", std::process::id()));
    let result = overlay_mounts_in(&base);
    let _ = std::fs::remove_dir_all(&base);
    result.err().map(|e| {
        Problem(format!(
            "overlayfs cannot use {} for container layers: {e}; root_dir must be on a \
             filesystem overlayfs takes as its upper layer (ext4, xfs, btrfs — not overlayfs: \
             inside a container, put root_dir on a volume)",
            root_dir.display()
        ))
    })
}

fn overlay_mounts_in(base: &Path) -> Result<(), String> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let dirs = ["lower", "upper", "work", "merged"].map(|d| base.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let [lower, upper, work, merged] = &dirs;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        merged,
        Some("overlay"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(data.as_str()),
    )
    .map_err(|e| format!("mount overlay: {e}"))?;
    umount2(merged, MntFlags::MNT_DETACH).map_err(|e| format!("unmount the probe: {e}"))
}

/// Makes and removes a cgroup at the top of the hierarchies ketch uses.
fn probe_cgroups() -> Option<Problem> {
    let manager = match CgroupManager::detect() {
        Ok(m) => m,
        Err(e) => return Some(Problem(format!("no usable cgroup hierarchy: {e}"))),
    };
    let path = format!("/ketch-preflight-{}", std::process::id());
    match manager.create(&path, &Resources::default()) {
        Ok(cgroup) => {
            if let Err(e) = cgroup.destroy() {
                tracing::warn!(cgroup = %path, "cannot remove the start-up probe cgroup: {e}");
            }
            None
        }
        Err(e) => Some(Problem(format!(
            "the cgroup hierarchy ({}) is not writable: {e}; ketch must be able to make \
             cgroups (inside a container: /sys/fs/cgroup read-write, with its own cgroup namespace)",
            manager.version()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_existing_cni_dir_is_enough() {
        let dirs = vec![PathBuf::from("/a"), PathBuf::from("/b")];
        assert!(problems_of_cni(&dirs, |p| p == Path::new("/b")).is_empty());
        let none = problems_of_cni(&dirs, |_| false);
        assert_eq!(none.len(), 1);
        assert!(none[0].0.contains("/a, /b"), "{}", none[0]);
        assert!(problems_of_cni(&[], |_| true)[0].0.contains("none"));
    }

    #[test]
    fn missing_plugins_are_named() {
        let dirs = vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")];
        let types = vec![
            "bridge".to_owned(),
            "portmap".to_owned(),
            "calico".to_owned(),
        ];
        let have = |p: &Path| {
            p == Path::new("/usr/lib/cni/bridge") || p == Path::new("/opt/cni/bin/portmap")
        };
        assert_eq!(
            missing_plugins(&types, &dirs, have),
            vec!["calico".to_owned()]
        );
    }

    #[test]
    fn the_probes_pass_on_a_node_that_runs_containers() {
        if !crate::testing::root_or_skip("mounts an overlay and makes a cgroup") {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(probe_overlay(dir.path()), None);
        assert!(
            !dir.path()
                .join("tmp")
                .read_dir()
                .expect("tmp")
                .any(|_| true),
            "the probe's dirs are removed"
        );
        assert_eq!(probe_cgroups(), None);
    }
}
