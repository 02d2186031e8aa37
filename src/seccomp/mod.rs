//! Seccomp: which filter a container gets (`RuntimeDefault`, `Unconfined`
//! or a `Localhost` profile file, the container's choice or else its
//! pod's), the default profile, and the filter the executor loads.
//!
//! Decisions are pure and made at CreateContainer: the container's OCI
//! spec gets the resolved `linux.seccomp` (conditional rules already
//! picked for its capabilities), so a bad profile file is refused there
//! with the path and the problem, and every later process of the
//! container (its first, and each exec) loads the same filter.
//!
//! The filter is compiled by the daemon, once per distinct profile, into
//! the BPF program the container's processes load (`program`), by
//! libseccomp (the `libseccomp` crate over
//! Debian's `libseccomp2`), the library runc, crun and youki use: it
//! resolves syscall names per architecture (profiles name syscalls, and
//! a filter for x86_64 must also cover the x86 and x32 ABIs), handles
//! the multiplexed `socketcall`/`ipc` of 32-bit ABIs and 64-bit argument
//! comparisons on 32-bit ones. The pure-Rust `seccompiler` covers only
//! x86_64 and aarch64 and has no public syscall-name table, so we would
//! have to keep one ourselves.

pub mod default;
pub mod filter;
pub mod profile;
pub mod program;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capability, LinuxSeccomp};

use crate::container::config::SecurityProfile;
use profile::{Profile, Target};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp profile type {0:?} is not RuntimeDefault, Unconfined or Localhost")]
    UnknownType(String),
    #[error("seccomp profile Localhost needs localhost_ref, the path of a profile file")]
    NoLocalhostRef,
    #[error("seccomp profile {0:?}: the path must be absolute")]
    RelativePath(String),
    #[error("seccomp profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("seccomp profile {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("the default seccomp profile: {0}")]
    Default(String),
}

/// The profile a container runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Unconfined,
    RuntimeDefault,
    /// A profile file on the host.
    Localhost(PathBuf),
}

/// The container's own profile, else its pod's; none means unconfined,
/// as in containerd and CRI-O (kubelet sends `RuntimeDefault` when a pod
/// asks for it). A privileged container is unconfined whatever it asks,
/// as in containerd: privileged means every syscall.
pub fn choose(
    container: Option<&SecurityProfile>,
    pod: Option<&SecurityProfile>,
    privileged: bool,
) -> Result<Choice, SeccompError> {
    let Some(p) = container
        .filter(|p| !p.profile_type.is_empty())
        .or(pod.filter(|p| !p.profile_type.is_empty()))
    else {
        return Ok(Choice::Unconfined);
    };
    let choice = match p.profile_type.as_str() {
        "Unconfined" => Choice::Unconfined,
        "RuntimeDefault" => Choice::RuntimeDefault,
        "Localhost" => {
            // kubelet sends the path; the older `localhost/<path>` form too.
            let path = p
                .localhost_ref
                .strip_prefix("localhost/")
                .unwrap_or(&p.localhost_ref);
            if path.is_empty() {
                return Err(SeccompError::NoLocalhostRef);
            }
            if !Path::new(path).is_absolute() {
                return Err(SeccompError::RelativePath(p.localhost_ref.clone()));
            }
            Choice::Localhost(PathBuf::from(path))
        }
        other => return Err(SeccompError::UnknownType(other.to_owned())),
    };
    Ok(if privileged {
        Choice::Unconfined
    } else {
        choice
    })
}

/// The CRI's deprecated `seccomp_profile_path` (`runtime/default`,
/// `docker/default`, `unconfined`, `localhost/<path>`) as a profile, as
/// containerd reads it; `None` when empty.
pub fn from_deprecated_path(path: &str) -> Option<SecurityProfile> {
    let (profile_type, localhost_ref) = match path {
        "" => return None,
        "runtime/default" | "docker/default" => ("RuntimeDefault", ""),
        "unconfined" => ("Unconfined", ""),
        other => ("Localhost", other),
    };
    Some(SecurityProfile {
        profile_type: profile_type.into(),
        localhost_ref: localhost_ref.into(),
    })
}

/// The `linux.seccomp` of a container with `caps` (its bounding set);
/// `None` when unconfined.
pub fn for_container(
    choice: &Choice,
    caps: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>, SeccompError> {
    let target = Target::host(caps.iter().map(|c| format!("CAP_{c}")).collect());
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::RuntimeDefault => default::profile()
            .resolve(&target)
            .map(Some)
            .map_err(SeccompError::Default),
        Choice::Localhost(path) => {
            let json = std::fs::read(path).map_err(|source| SeccompError::Read {
                path: path.clone(),
                source,
            })?;
            Profile::parse(&json)
                .and_then(|p| p.resolve(&target))
                .map(Some)
                .map_err(|message| SeccompError::Invalid {
                    path: path.clone(),
                    message,
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompAction, LinuxSeccompOperator};

    fn p(t: &str, r: &str) -> SecurityProfile {
        SecurityProfile {
            profile_type: t.into(),
            localhost_ref: r.into(),
        }
    }

    #[test]
    fn the_container_wins_then_the_pod_then_unconfined() {
        let rd = p("RuntimeDefault", "");
        let un = p("Unconfined", "");
        assert_eq!(choose(None, None, false).unwrap(), Choice::Unconfined);
        assert_eq!(
            choose(None, Some(&rd), false).unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            choose(Some(&un), Some(&rd), false).unwrap(),
            Choice::Unconfined
        );
        assert_eq!(
            choose(Some(&rd), Some(&un), false).unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            choose(Some(&p("", "")), Some(&rd), false).unwrap(),
            Choice::RuntimeDefault
        );
        assert_eq!(
            choose(Some(&p("Localhost", "localhost/x/y.json")), None, false)
                .unwrap_err()
                .to_string(),
            "seccomp profile \"localhost/x/y.json\": the path must be absolute"
        );
        assert_eq!(
            choose(Some(&p("Localhost", "/p/a.json")), None, false).unwrap(),
            Choice::Localhost("/p/a.json".into())
        );
        assert!(matches!(
            choose(Some(&p("Localhost", "")), None, false),
            Err(SeccompError::NoLocalhostRef)
        ));
        assert!(matches!(
            choose(Some(&p("Strict", "")), None, false),
            Err(SeccompError::UnknownType(_))
        ));
    }

    #[test]
    fn privileged_containers_are_unconfined() {
        let rd = p("RuntimeDefault", "");
        assert_eq!(choose(Some(&rd), None, true).unwrap(), Choice::Unconfined);
        assert_eq!(choose(None, Some(&rd), true).unwrap(), Choice::Unconfined);
    }

    #[test]
    fn deprecated_paths_map_like_containerd() {
        assert_eq!(from_deprecated_path(""), None);
        assert_eq!(
            from_deprecated_path("runtime/default"),
            Some(p("RuntimeDefault", ""))
        );
        assert_eq!(
            from_deprecated_path("docker/default"),
            Some(p("RuntimeDefault", ""))
        );
        assert_eq!(
            from_deprecated_path("unconfined"),
            Some(p("Unconfined", ""))
        );
        assert_eq!(
            from_deprecated_path("localhost//a.json"),
            Some(p("Localhost", "localhost//a.json"))
        );
        assert_eq!(
            choose(
                from_deprecated_path("localhost//a.json").as_ref(),
                None,
                false
            )
            .unwrap(),
            Choice::Localhost("/a.json".into())
        );
    }

    fn rules_for<'a>(s: &'a LinuxSeccomp, name: &str) -> Vec<&'a oci_spec::runtime::LinuxSyscall> {
        s.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.names().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn the_default_profile_unlocks_syscalls_by_capability() {
        let none = for_container(&Choice::RuntimeDefault, &HashSet::new())
            .unwrap()
            .unwrap();
        assert_eq!(none.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(none.default_errno_ret(), Some(libc::EPERM as u32));
        assert!(rules_for(&none, "read")[0].action() == LinuxSeccompAction::ScmpActAllow);
        assert!(rules_for(&none, "unshare").is_empty());
        assert!(rules_for(&none, "mount").is_empty());
        assert!(rules_for(&none, "chroot").is_empty());
        // clone only without namespace flags; clone3 answers ENOSYS.
        let clone = rules_for(&none, "clone");
        assert_eq!(clone.len(), 1);
        let arg = clone[0].args().as_ref().unwrap()[0];
        assert_eq!(arg.op(), LinuxSeccompOperator::ScmpCmpMaskedEq);
        assert_eq!(arg.value(), 0x7E02_0000);
        assert_eq!(
            rules_for(&none, "clone3")[0].errno_ret(),
            Some(libc::ENOSYS as u32)
        );
        // socket: anything but AF_VSOCK; personality: five personas.
        assert_eq!(
            rules_for(&none, "socket")[0].args().as_ref().unwrap()[0].value(),
            40
        );
        assert_eq!(rules_for(&none, "personality").len(), 5);

        let admin: HashSet<_> = [Capability::SysAdmin, Capability::SysChroot].into();
        let admin = for_container(&Choice::RuntimeDefault, &admin)
            .unwrap()
            .unwrap();
        assert_eq!(rules_for(&admin, "unshare").len(), 1);
        assert_eq!(rules_for(&admin, "mount").len(), 1);
        assert_eq!(rules_for(&admin, "chroot").len(), 1);
        let clone = rules_for(&admin, "clone");
        assert_eq!(clone.len(), 1);
        assert!(clone[0].args().is_none());
        assert!(
            rules_for(&admin, "clone3")
                .iter()
                .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
        );
    }

    #[test]
    fn localhost_files_are_read_and_checked_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let err = for_container(&Choice::Localhost(missing.clone()), &HashSet::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "seccomp profile {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"defaultAction":"SCMP_ACT_SOMETIMES"}"#).unwrap();
        let err = for_container(&Choice::Localhost(bad.clone()), &HashSet::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "seccomp profile {}: unknown action \"SCMP_ACT_SOMETIMES\"",
                bad.display()
            )
        );
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#).unwrap();
        let s = for_container(&Choice::Localhost(good), &HashSet::new())
            .unwrap()
            .unwrap();
        assert_eq!(rules_for(&s, "chmod").len(), 1);
        assert!(
            for_container(&Choice::Unconfined, &HashSet::new())
                .unwrap()
                .is_none()
        );
    }
}
