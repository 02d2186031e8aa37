//! Cgroup path rules: validation, the systemd slice expansion and the path
//! a container's cgroup gets from its pod's `cgroup_parent`.

use crate::config::CgroupDriver;

use super::error::{CgroupError, Result};

/// Where containers of pods without a `cgroup_parent` go (cgroupfs driver).
pub const DEFAULT_PARENT: &str = "/ketch";
/// The same for the systemd driver.
pub const DEFAULT_SLICE: &str = "ketch.slice";

/// Normalises a cgroup path to `/a/b/c`: a missing leading `/` is added and
/// repeated slashes collapse; `.`, `..`, NUL and newline are refused (a path
/// must never climb out of the hierarchy), and so is the root itself, which
/// ketch never configures or removes.
pub fn normalize(path: &str) -> Result<String> {
    let bad = |reason: &str| CgroupError::InvalidPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if path.contains('\0') || path.contains('\n') {
        return Err(bad("contains NUL or newline"));
    }
    let mut out = String::with_capacity(path.len() + 1);
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if component == "." || component == ".." {
            return Err(bad("contains a . or .. component"));
        }
        out.push('/');
        out.push_str(component);
    }
    if out.is_empty() {
        return Err(bad("is the root cgroup"));
    }
    Ok(out)
}

/// Expands a systemd slice name to the cgroup path systemd gives it: every
/// dash opens a parent slice, so `kubepods-burstable-pod1234.slice` is
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice`
/// and `-.slice` is the root. The rules are systemd's
/// (`systemd.slice(5)`): the name ends in `.slice`, holds no `/`, and no
/// component between dashes is empty.
pub fn expand_slice(slice: &str) -> Result<String> {
    let bad = |reason: &str| CgroupError::InvalidSlice {
        name: slice.to_string(),
        reason: reason.to_string(),
    };
    const SUFFIX: &str = ".slice";
    let Some(name) = slice.strip_suffix(SUFFIX) else {
        return Err(bad("does not end in .slice"));
    };
    if slice.contains('/') {
        return Err(bad("contains /"));
    }
    if name == "-" {
        return Ok("/".to_string());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in name.split('-') {
        if component.is_empty() {
            return Err(bad(
                "has an empty component (leading, trailing or double dash)",
            ));
        }
        path.push('/');
        path.push_str(&prefix);
        path.push_str(component);
        path.push_str(SUFFIX);
        prefix.push_str(component);
        prefix.push('-');
    }
    Ok(path)
}

/// The cgroup path of a container (or of a pod's pause process, with the
/// sandbox ID) given the pod's `cgroup_parent` from kubelet.
///
/// - cgroupfs: `<cgroup_parent>/<id>`, or `/ketch/<id>` without a parent.
/// - systemd: kubelet names the parent as a slice
///   (`kubepods-burstable-pod1234.slice`); it is expanded as systemd would
///   and the container gets a scope-named dir in it:
///   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/ketch-<id>.scope`,
///   or `/ketch.slice/ketch-<id>.scope` without a parent. A parent that is
///   already a path (starts with `/`) is used as is. ketch writes these
///   paths through cgroupfs itself; it does not ask systemd for a unit.
pub fn container_cgroup_path(
    driver: CgroupDriver,
    cgroup_parent: &str,
    id: &str,
) -> Result<String> {
    if id.is_empty() || id.contains('/') || id == "." || id == ".." {
        return Err(CgroupError::InvalidPath {
            path: id.to_string(),
            reason: "not a valid container ID".to_string(),
        });
    }
    let parent = parent_raw(driver, cgroup_parent)?;
    match driver {
        CgroupDriver::Cgroupfs => normalize(&format!("{parent}/{id}")),
        CgroupDriver::Systemd => normalize(&format!("{parent}/ketch-{id}.scope")),
    }
}

/// The cgroup path of a pod's `cgroup_parent` (for the pod's stats): the
/// path itself with cgroupfs, the expanded slice with systemd, and the
/// ketch default parent when kubelet gave none.
pub fn parent_cgroup_path(driver: CgroupDriver, cgroup_parent: &str) -> Result<String> {
    normalize(&parent_raw(driver, cgroup_parent)?)
}

/// The parent before normalisation: may be `/` (the `-.slice` root), which
/// is fine as a container's parent but not as a cgroup of its own.
fn parent_raw(driver: CgroupDriver, cgroup_parent: &str) -> Result<String> {
    Ok(match driver {
        CgroupDriver::Cgroupfs if cgroup_parent.is_empty() => DEFAULT_PARENT.to_string(),
        CgroupDriver::Systemd if cgroup_parent.is_empty() => expand_slice(DEFAULT_SLICE)?,
        CgroupDriver::Systemd if !cgroup_parent.starts_with('/') => expand_slice(cgroup_parent)?,
        _ => cgroup_parent.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize("/a/b").unwrap(), "/a/b");
        assert_eq!(normalize("a//b/").unwrap(), "/a/b");
        assert!(normalize("/").is_err());
        assert!(normalize("").is_err());
        assert!(normalize("/a/../b").is_err());
        assert!(normalize("/a/./b").is_err());
        assert!(normalize("/a\nb").is_err());
    }

    #[test]
    fn slices() {
        assert_eq!(
            expand_slice("kubepods-burstable-pod1234.slice").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"
        );
        assert_eq!(expand_slice("kubepods.slice").unwrap(), "/kubepods.slice");
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
        assert_eq!(
            expand_slice("kubepods-besteffort-pod5f1a_22.slice").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5f1a_22.slice"
        );
        for bad in [
            ".slice",
            "kubepods",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a/b.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn container_paths() {
        let id = "abc123";
        assert_eq!(
            container_cgroup_path(CgroupDriver::Cgroupfs, "", id).unwrap(),
            "/ketch/abc123"
        );
        assert_eq!(
            container_cgroup_path(CgroupDriver::Cgroupfs, "/kubepods/burstable/pod1", id).unwrap(),
            "/kubepods/burstable/pod1/abc123"
        );
        assert_eq!(
            container_cgroup_path(CgroupDriver::Systemd, "kubepods-burstable-pod1.slice", id)
                .unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/ketch-abc123.scope"
        );
        assert_eq!(
            container_cgroup_path(CgroupDriver::Systemd, "", id).unwrap(),
            "/ketch.slice/ketch-abc123.scope"
        );
        assert_eq!(
            container_cgroup_path(CgroupDriver::Systemd, "/custom/path", id).unwrap(),
            "/custom/path/ketch-abc123.scope"
        );
        assert!(container_cgroup_path(CgroupDriver::Systemd, "not-a-slice", id).is_err());
        assert!(container_cgroup_path(CgroupDriver::Cgroupfs, "/kubepods/../x", id).is_err());
        assert!(container_cgroup_path(CgroupDriver::Cgroupfs, "", "a/b").is_err());
        assert!(container_cgroup_path(CgroupDriver::Cgroupfs, "", "").is_err());
        assert!(container_cgroup_path(CgroupDriver::Systemd, "-.slice", id).is_ok());
    }

    #[test]
    fn parent_paths() {
        assert_eq!(
            parent_cgroup_path(CgroupDriver::Cgroupfs, "kubepods/pod1").unwrap(),
            "/kubepods/pod1"
        );
        assert_eq!(
            parent_cgroup_path(CgroupDriver::Cgroupfs, "").unwrap(),
            "/ketch"
        );
        assert_eq!(
            parent_cgroup_path(CgroupDriver::Systemd, "kubepods-pod1.slice").unwrap(),
            "/kubepods.slice/kubepods-pod1.slice"
        );
        assert_eq!(
            parent_cgroup_path(CgroupDriver::Systemd, "").unwrap(),
            "/ketch.slice"
        );
        // The root slice is the root cgroup, which ketch never touches.
        assert!(parent_cgroup_path(CgroupDriver::Systemd, "-.slice").is_err());
    }
}
