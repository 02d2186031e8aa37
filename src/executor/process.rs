//! The last steps of a container process before execve, shared by a
//! container's first process and by processes exec'd into it later:
//! rlimits, oom_score_adj, working directory, identity, capabilities,
//! no_new_privs, umask, then the program looked up in the container's PATH,
//! the AppArmor profile for the exec and the seccomp filter.
//!
//! Identity and capabilities follow runc's order (`finalizeNamespace`):
//! drop the bounding set while still root, keep the permitted set across
//! setresuid (PR_SET_KEEPCAPS), then set the inheritable, effective and
//! permitted sets, then raise the ambient ones.

use std::collections::HashSet;
use std::convert::Infallible;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use caps::CapSet;
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::stat::{Mode, umask};
use nix::unistd::{AccessFlags, Gid, Uid, access, chdir, execve, setgroups, setresgid, setresuid};
use oci_spec::runtime::{Capability, PosixRlimitType, Process};

use super::step::StepError;
use crate::sys;

/// Used to find the program when the environment has no PATH.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Clone, Copy)]
pub struct Finalize<'a> {
    /// Already clamped by the caller to what this host allows.
    pub oom_score_adj: Option<i32>,
    /// The compiled seccomp filter to load.
    pub seccomp: Option<&'a SeccompFilter>,
}

/// A seccomp filter ready for `seccomp(2)`: decoded before the fork, so
/// the child only makes the call.
#[derive(Debug)]
pub struct SeccompFilter {
    pub instructions: Vec<libc::sock_filter>,
    pub flags: u32,
}

impl From<&crate::seccomp::program::Program> for SeccompFilter {
    fn from(p: &crate::seccomp::program::Program) -> Self {
        Self {
            instructions: p.instructions(),
            flags: p.flags,
        }
    }
}

/// The filter of `spec`: the program in `bundle` when it holds a good one
/// for it (the daemon compiles each profile once and writes it there),
/// else compiled here with libseccomp (a bundle written by an older
/// version, or an exec without the program).
pub fn seccomp_filter(
    bundle: Option<&Path>,
    spec: &oci_spec::runtime::LinuxSeccomp,
) -> Result<SeccompFilter, crate::seccomp::filter::FilterError> {
    use crate::seccomp::program;
    match bundle.and_then(|b| program::read(b, spec)) {
        Some(p) => Ok(SeccompFilter::from(&p)),
        None => program::compile(spec).map(|p| SeccompFilter::from(&p)),
    }
}

/// Applies `process` to the calling process and execs its program. Returns
/// only the step that failed.
pub fn finalize_and_exec(process: &Process, opts: Finalize<'_>) -> Result<Infallible, StepError> {
    // Everything that allocates is prepared first; no failure after the
    // identity change can leave a half-privileged process running on.
    let args: Vec<CString> = process
        .args()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|a| cstring(a, "argument"))
        .collect::<Result<_, _>>()?;
    let program = args
        .first()
        .ok_or_else(|| StepError::msg("exec", "the process has no args"))?
        .to_string_lossy()
        .into_owned();
    let env_list = process.env().as_deref().unwrap_or_default();
    let env: Vec<CString> = env_list
        .iter()
        .map(|e| cstring(e, "environment variable"))
        .collect::<Result<_, _>>()?;
    let path_var = env_list
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_owned();

    for rlimit in process.rlimits().as_deref().unwrap_or_default() {
        let resource = rlimit_resource(rlimit.typ());
        setrlimit(resource, rlimit.soft(), rlimit.hard())
            .map_err(|e| StepError::errno(format!("setrlimit {}", rlimit.typ()), e))?;
    }
    if let Some(adj) = opts.oom_score_adj {
        set_oom_score_adj(adj)?;
    }

    let user = process.user();
    let uid = Uid::from_raw(user.uid());
    let gid = Gid::from_raw(user.gid());
    let cwd = process.cwd();

    let spec_caps = process.capabilities().as_ref();
    let no_new_privs = process.no_new_privileges() == Some(true);
    // The filter is loaded as late as it can be, so that it filters the
    // container's program and not our setup: just before execve when
    // seccomp(2) allows it there, that is with no_new_privs set or with
    // CAP_SYS_ADMIN still in effect at that point. Otherwise it must go
    // in while we still have CAP_SYS_ADMIN, before the identity change,
    // as runc does (`standard_init_linux.go`); the filter then sees the
    // setuid, capset, chdir and execve that follow.
    let keeps_admin = spec_caps
        .and_then(|c| c.effective().as_ref())
        .is_some_and(|e| e.contains(&Capability::SysAdmin));
    let load_late = no_new_privs || keeps_admin;
    let load_seccomp = || match opts.seccomp {
        Some(filter) => sys::seccomp_set_mode_filter(&filter.instructions, filter.flags)
            .map_err(|e| StepError::errno("apply the seccomp profile", e)),
        None => Ok(()),
    };
    if !load_late {
        load_seccomp()?;
    }
    if let Some(bounding) = spec_caps.and_then(|c| c.bounding().as_ref()) {
        let keep = to_caps(bounding)?;
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(|e| {
                    StepError::msg(format!("drop {cap} from the bounding set"), e.to_string())
                })?;
            }
        }
    }

    nix::sys::prctl::set_keepcaps(true).map_err(|e| StepError::errno("prctl keepcaps", e))?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).map_err(|e| StepError::errno("setgroups", e))?;
    setresgid(gid, gid, gid).map_err(|e| StepError::errno(format!("setgid {gid}"), e))?;
    setresuid(uid, uid, uid).map_err(|e| StepError::errno(format!("setuid {uid}"), e))?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| StepError::errno("prctl keepcaps", e))?;

    if let Some(c) = spec_caps {
        let sets = [
            (CapSet::Inheritable, c.inheritable()),
            (CapSet::Effective, c.effective()),
            (CapSet::Permitted, c.permitted()),
        ];
        for (set, wanted) in sets {
            let wanted = to_caps(wanted.as_ref().unwrap_or(&HashSet::new()))?;
            caps::set(None, set, &wanted)
                .map_err(|e| StepError::msg(format!("set {set:?} capabilities"), e.to_string()))?;
        }
        if let Some(ambient) = c.ambient() {
            for cap in to_caps(ambient)? {
                caps::raise(None, CapSet::Ambient, cap)
                    .map_err(|e| StepError::msg(format!("raise ambient {cap}"), e.to_string()))?;
            }
        }
    }

    if no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(|e| StepError::errno("no_new_privs", e))?;
    }
    umask(Mode::from_bits_truncate(user.umask().unwrap_or(0o022)));
    // After the identity change, so a directory the user may not enter
    // fails here, as it would for a login.
    chdir(cwd).map_err(|e| StepError::errno(format!("chdir to cwd {:?}", cwd.display()), e))?;

    let binary = lookup(&program, &path_var)?;
    let binary = cstring(binary.as_os_str().as_bytes(), "program path")?;
    sys::reset_signals().map_err(|e| StepError::errno("reset signals", e))?;
    if let Some(profile) = process.apparmor_profile() {
        crate::apparmor::apply_on_exec(profile)
            .map_err(|e| StepError::io(format!("apply the AppArmor profile {profile:?}"), &e))?;
    }
    sys::cloexec_from(3).map_err(|e| StepError::errno("close inherited descriptors", e))?;
    if load_late {
        load_seccomp()?;
    }
    let Err(err) = execve(&binary, &args, &env);
    Err(StepError::errno(format!("exec {program:?}"), err))
}

/// Writes the calling process's oom_score_adj.
pub fn set_oom_score_adj(adj: i32) -> Result<(), StepError> {
    std::fs::write("/proc/self/oom_score_adj", adj.to_string())
        .map_err(|e| StepError::io(format!("set oom_score_adj {adj}"), &e))
}

/// Right after joining a user namespace: become its root (uid and gid 0,
/// no supplementary groups). The caller's IDs are the host's root, which
/// the namespace does not map, and a file made with an unmapped fsuid
/// fails with EOVERFLOW (the container's /dev, its ptys); as runc does
/// after its setns. The capabilities joining gave are kept: the old uid
/// was not the namespace's root, so capabilities(7)'s "all IDs become
/// nonzero" clearing does not apply.
pub fn become_userns_root() -> Result<(), StepError> {
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    setgroups(&[]).map_err(|e| StepError::errno("setgroups in the user namespace", e))?;
    setresgid(root_gid, root_gid, root_gid)
        .map_err(|e| StepError::errno("setgid 0 in the user namespace", e))?;
    setresuid(root_uid, root_uid, root_uid)
        .map_err(|e| StepError::errno("setuid 0 in the user namespace", e))
}

fn cstring(s: impl AsRef<[u8]>, what: &str) -> Result<CString, StepError> {
    CString::new(s.as_ref())
        .map_err(|_| StepError::msg(format!("prepare {what}"), "contains a NUL byte"))
}

/// Creates a container's missing working directory. Called after the
/// pivot and before a read-only root is remounted. Each new directory
/// belongs to the process's user, as containerd does for a missing WORKDIR.
pub fn create_cwd(process: &Process) -> Result<(), StepError> {
    let cwd = process.cwd();
    let uid = Uid::from_raw(process.user().uid());
    let gid = Gid::from_raw(process.user().gid());
    let mut path = PathBuf::from("/");
    for part in cwd.components().skip(1) {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => continue,
            Err(_) => {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&path)
                    .map_err(|e| StepError::io(format!("create cwd {:?}", cwd.display()), &e))?;
                nix::unistd::chown(&path, Some(uid), Some(gid))
                    .map_err(|e| StepError::errno(format!("chown cwd {:?}", cwd.display()), e))?;
            }
        }
    }
    Ok(())
}

/// `args[0]` with a slash is used as is; without one it is searched in PATH
/// like execvp(3), skipping what is not an executable regular file.
pub fn lookup(program: &str, path_var: &str) -> Result<PathBuf, StepError> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    if program.is_empty() {
        return Err(StepError::msg("exec \"\"", "empty program name"));
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(program);
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
            && access(&candidate, AccessFlags::X_OK).is_ok()
        {
            return Ok(candidate);
        }
    }
    Err(StepError::msg(
        format!("exec {program:?}"),
        "executable file not found in $PATH",
    ))
}

fn to_caps(set: &HashSet<Capability>) -> Result<HashSet<caps::Capability>, StepError> {
    set.iter().map(|c| to_cap(*c)).collect()
}

/// oci-spec's names are `AUDIT_CONTROL`, caps' are `CAP_AUDIT_CONTROL`.
pub fn to_cap(cap: Capability) -> Result<caps::Capability, StepError> {
    format!("CAP_{cap}")
        .parse()
        .map_err(|_| StepError::msg("capabilities", format!("unknown capability {cap}")))
}

fn rlimit_resource(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// The oom_score_adj a process may get here: never below our own, which
/// the kernel refuses without CAP_SYS_RESOURCE. Returns the value to set
/// and, when clamped, a warning.
pub fn clamp_oom_score_adj(wanted: i32) -> (i32, Option<String>) {
    let own = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    if wanted < own {
        (
            own,
            Some(format!(
                "oom_score_adj {wanted} is below the runtime's own {own}: using {own}"
            )),
        )
    } else {
        (wanted, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_map_to_caps() {
        assert_eq!(
            to_cap(Capability::NetBindService).unwrap(),
            caps::Capability::CAP_NET_BIND_SERVICE
        );
        assert_eq!(
            to_cap(Capability::SysAdmin).unwrap(),
            caps::Capability::CAP_SYS_ADMIN
        );
    }

    #[test]
    fn lookup_searches_path_and_skips_non_executables() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(lookup("tool", &path).unwrap(), b.join("tool"));
        assert_eq!(
            lookup("nope", &path).unwrap_err().to_string(),
            "exec \"nope\": executable file not found in $PATH"
        );
        assert_eq!(lookup("/x/y", &path).unwrap(), PathBuf::from("/x/y"));
    }
}
