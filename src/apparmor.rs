//! AppArmor: which profile a container's process execs under.
//!
//! On a host with AppArmor enabled (`/sys/module/apparmor/parameters/
//! enabled` is `Y`), `RuntimeDefault` (and no choice at all, per
//! kubernetes#51746, as containerd and CRI-O do) means our default profile
//! [`DEFAULT_PROFILE`], loaded with `apparmor_parser` the first time it
//! is needed; `Localhost` names a profile already loaded on the host;
//! `Unconfined` and privileged containers without a `Localhost` profile
//! get none. On a host without AppArmor, `Unconfined` and
//! `RuntimeDefault` run unconfined (there is nothing to confine with) and
//! `Localhost` is refused: the pod asked for a specific confinement this
//! host cannot give.
//!
//! The executor applies the profile by writing `exec <name>` to
//! `/proc/self/attr/apparmor/exec` (`/proc/self/attr/exec` on kernels
//! before 5.8) just before execve, as runc does: the profile changes at
//! the exec (apparmor(7), `aa_change_onexec(2)`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::container::config::SecurityProfile;

/// The name of our default profile.
pub const DEFAULT_PROFILE: &str = "ketch-default";

const ENABLED: &str = "/sys/module/apparmor/parameters/enabled";
const LOADED: &str = "/sys/kernel/security/apparmor/profiles";

#[derive(Debug, thiserror::Error)]
pub enum AppArmorError {
    #[error(
        "apparmor profile Localhost {0:?}: AppArmor is not enabled on this host, so the profile cannot be applied"
    )]
    NotEnabled(String),
    #[error("apparmor profile Localhost needs localhost_ref, the name of a loaded profile")]
    NoLocalhostRef,
    #[error("apparmor profile {0:?} is not loaded on this host")]
    NotLoaded(String),
    #[error("apparmor profile type {0:?} is not RuntimeDefault, Unconfined or Localhost")]
    UnknownType(String),
    #[error("load the default AppArmor profile {DEFAULT_PROFILE}: {0}")]
    LoadDefault(String),
}

/// What the executor is to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Unconfined,
    /// [`DEFAULT_PROFILE`], loaded by us.
    Default,
    /// A profile the host has loaded.
    Named(String),
}

/// Whether this host runs AppArmor; read once.
pub fn host_enabled() -> bool {
    static ENABLED_ONCE: OnceLock<bool> = OnceLock::new();
    *ENABLED_ONCE.get_or_init(|| std::fs::read_to_string(ENABLED).is_ok_and(|s| enabled_value(&s)))
}

fn enabled_value(content: &str) -> bool {
    content.trim() == "Y"
}

/// The container's profile, else its pod's, on a host where AppArmor is
/// `enabled` or not.
pub fn choose(
    container: Option<&SecurityProfile>,
    pod: Option<&SecurityProfile>,
    privileged: bool,
    enabled: bool,
) -> Result<Choice, AppArmorError> {
    let wanted = container
        .filter(|p| !p.profile_type.is_empty())
        .or(pod.filter(|p| !p.profile_type.is_empty()));
    let kind = wanted.map_or("RuntimeDefault", |p| p.profile_type.as_str());
    match kind {
        "Unconfined" => Ok(Choice::Unconfined),
        "RuntimeDefault" if !enabled || privileged => Ok(Choice::Unconfined),
        "RuntimeDefault" => Ok(Choice::Default),
        "Localhost" => {
            let reference = wanted.map(|p| p.localhost_ref.as_str()).unwrap_or_default();
            let name = reference.strip_prefix("localhost/").unwrap_or(reference);
            if name.is_empty() {
                return Err(AppArmorError::NoLocalhostRef);
            }
            if !enabled {
                return Err(AppArmorError::NotEnabled(name.to_owned()));
            }
            Ok(Choice::Named(name.to_owned()))
        }
        other => Err(AppArmorError::UnknownType(other.to_owned())),
    }
}

/// The CRI's deprecated `apparmor_profile` string (`runtime/default`,
/// `unconfined`, `localhost/<name>`) as a profile, as containerd reads it;
/// `None` when empty.
pub fn from_deprecated_name(name: &str) -> Option<SecurityProfile> {
    let (profile_type, localhost_ref) = match name {
        "" => return None,
        "runtime/default" => ("RuntimeDefault", ""),
        "unconfined" => ("Unconfined", ""),
        other => ("Localhost", other),
    };
    Some(SecurityProfile {
        profile_type: profile_type.into(),
        localhost_ref: localhost_ref.into(),
    })
}

/// Whether `name` is among the loaded profiles (`<name> (<mode>)` lines).
pub fn is_loaded(profiles: &str, name: &str) -> bool {
    profiles
        .lines()
        .any(|l| l.rsplit_once(" (").is_some_and(|(n, _)| n == name))
}

fn loaded_profiles() -> String {
    std::fs::read_to_string(LOADED).unwrap_or_default()
}

/// The profile name for the OCI spec's `process.apparmorProfile`: checks
/// a named profile is loaded and loads ours when missing.
pub fn profile_for(choice: &Choice) -> Result<Option<String>, AppArmorError> {
    match choice {
        Choice::Unconfined => Ok(None),
        Choice::Named(name) => {
            if is_loaded(&loaded_profiles(), name) {
                Ok(Some(name.clone()))
            } else {
                Err(AppArmorError::NotLoaded(name.clone()))
            }
        }
        Choice::Default => {
            if !is_loaded(&loaded_profiles(), DEFAULT_PROFILE) {
                load_default()?;
            }
            Ok(Some(DEFAULT_PROFILE.to_owned()))
        }
    }
}

/// Our default profile: files, network and signals within the container
/// allowed; mounts, raw kernel interfaces under /proc and /sys, and
/// ptrace of processes outside the profile denied (the effect of
/// containerd's and moby's default profiles).
pub fn default_profile_text() -> String {
    format!(
        r#"#include <tunables/global>

profile {DEFAULT_PROFILE} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer={DEFAULT_PROFILE},

  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny mount,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,

  ptrace (trace,read,tracedby,readby) peer={DEFAULT_PROFILE},
}}
"#
    )
}

fn load_default() -> Result<(), AppArmorError> {
    let err = |m: String| AppArmorError::LoadDefault(m);
    let mut child = Command::new("apparmor_parser")
        .args(["-Kr"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("run apparmor_parser: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(default_profile_text().as_bytes())
            .map_err(|e| err(format!("write to apparmor_parser: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("wait for apparmor_parser: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "apparmor_parser {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Where a process asks for a profile at its next exec: the per-LSM file
/// when the kernel has it (5.8+), else the shared one.
pub fn exec_attr_path(per_lsm_exists: bool) -> &'static str {
    if per_lsm_exists {
        "/proc/self/attr/apparmor/exec"
    } else {
        "/proc/self/attr/exec"
    }
}

/// Makes the calling process change to `profile` at its next execve.
pub fn apply_on_exec(profile: &str) -> std::io::Result<()> {
    let path = exec_attr_path(Path::new("/proc/self/attr/apparmor/exec").exists());
    std::fs::write(path, format!("exec {profile}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str, r: &str) -> SecurityProfile {
        SecurityProfile {
            profile_type: t.into(),
            localhost_ref: r.into(),
        }
    }

    #[test]
    fn without_apparmor_only_localhost_is_refused() {
        assert_eq!(
            choose(None, None, false, false).unwrap(),
            Choice::Unconfined
        );
        let rd = p("RuntimeDefault", "");
        assert_eq!(
            choose(Some(&rd), None, false, false).unwrap(),
            Choice::Unconfined
        );
        let un = p("Unconfined", "");
        assert_eq!(
            choose(Some(&un), None, false, false).unwrap(),
            Choice::Unconfined
        );
        let local = p("Localhost", "localhost/my-profile");
        assert_eq!(
            choose(Some(&local), None, false, false)
                .unwrap_err()
                .to_string(),
            "apparmor profile Localhost \"my-profile\": AppArmor is not enabled on this host, so the profile cannot be applied"
        );
        assert!(matches!(
            choose(None, Some(&local), false, false),
            Err(AppArmorError::NotEnabled(_))
        ));
    }

    #[test]
    fn with_apparmor_the_default_applies_unless_unconfined_or_privileged() {
        assert_eq!(choose(None, None, false, true).unwrap(), Choice::Default);
        let rd = p("RuntimeDefault", "");
        let un = p("Unconfined", "");
        assert_eq!(
            choose(Some(&rd), None, false, true).unwrap(),
            Choice::Default
        );
        assert_eq!(
            choose(None, Some(&un), false, true).unwrap(),
            Choice::Unconfined
        );
        assert_eq!(
            choose(Some(&rd), Some(&un), false, true).unwrap(),
            Choice::Default
        );
        assert_eq!(
            choose(Some(&rd), None, true, true).unwrap(),
            Choice::Unconfined
        );
        let local = p("Localhost", "my-profile");
        assert_eq!(
            choose(Some(&local), None, true, true).unwrap(),
            Choice::Named("my-profile".into())
        );
        assert!(matches!(
            choose(Some(&p("Localhost", "")), None, false, true),
            Err(AppArmorError::NoLocalhostRef)
        ));
        assert!(matches!(
            choose(Some(&p("Sometimes", "")), None, false, true),
            Err(AppArmorError::UnknownType(_))
        ));
    }

    #[test]
    fn loaded_profiles_are_found_by_exact_name() {
        let list = "ketch-default (enforce)\n/usr/bin/man (complain)\nmy profile (enforce)\n";
        assert!(is_loaded(list, "ketch-default"));
        assert!(is_loaded(list, "/usr/bin/man"));
        assert!(is_loaded(list, "my profile"));
        assert!(!is_loaded(list, "ketch"));
        assert!(!is_loaded("", "ketch-default"));
        assert_eq!(
            profile_for(&Choice::Unconfined).unwrap(),
            None,
            "unconfined needs nothing loaded"
        );
    }

    #[test]
    fn deprecated_names_map_like_containerd() {
        assert_eq!(from_deprecated_name(""), None);
        assert_eq!(
            from_deprecated_name("runtime/default"),
            Some(p("RuntimeDefault", ""))
        );
        assert_eq!(
            from_deprecated_name("unconfined"),
            Some(p("Unconfined", ""))
        );
        let local = from_deprecated_name("localhost/my-profile");
        assert_eq!(
            choose(local.as_ref(), None, false, true).unwrap(),
            Choice::Named("my-profile".into())
        );
    }

    #[test]
    fn the_enabled_flag_and_attr_path() {
        assert!(enabled_value("Y\n"));
        assert!(!enabled_value("N\n"));
        assert_eq!(exec_attr_path(true), "/proc/self/attr/apparmor/exec");
        assert_eq!(exec_attr_path(false), "/proc/self/attr/exec");
    }

    #[test]
    fn the_default_profile_names_itself() {
        let text = default_profile_text();
        assert!(text.contains("profile ketch-default flags="));
        assert!(text.contains("deny mount,"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }
}
