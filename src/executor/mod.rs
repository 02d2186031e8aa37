//! The executor: an OCI runtime spec (a bundle's `config.json`) becomes a
//! running process in its namespaces on its root filesystem.
//!
//! It sits behind the [`Executor`] trait: [`Builtin`] is the default, and
//! a pod's `runtime_handler` may name an external OCI runtime (runc, crun,
//! youki) that takes the same bundle ([`oci_runtime`]).
//!
//! # How a container's process is made
//!
//! [`Builtin::start`] runs inside the container's monitor, a single-threaded
//! process (so `fork` is safe there: the child may allocate and run any
//! code, see [`crate::sys::fork`]). It forks twice:
//!
//! ```text
//! monitor ─fork→ A: born in the container's cgroup on v2
//!                   (`clone3(CLONE_INTO_CGROUP)`, [`clone_target`]), else
//!                   join the cgroups (write 0 to `tasks` on v1, see
//!                   [`enter_cgroups`]), setns into
//!                   the spec's namespace paths (user first, then its root;
//!                   net, ipc, uts, pid), unshare
//!                   the new ones (mount always; pid, cgroup, net, ipc, uts
//!                   when the spec has no path), fork, report the child's
//!                   pid, exit
//!             └─fork→ B: PID 1 of a new pid namespace (or a member of the
//!                   joined one): setsid, stdio, mounts and pivot_root
//!                   (`rootfs`), the terminal (`console`), hostname,
//!                   rlimits, oom_score_adj, cwd, user, capabilities,
//!                   no_new_privs, umask, AppArmor profile, seccomp
//!                   filter, execve (`process`)
//! ```
//!
//! With `process.terminal`, B opens the pty after the pivot, through the
//! container's own `/dev/ptmx`, so its slave is a `/dev/pts/N` of the
//! container's devpts; the slave becomes B's stdio and controlling
//! terminal (and `/dev/console`), and the master comes back to the caller
//! over a socket pair ([`StartedProcess::console`]).
//!
//! Everything is decided before the first fork, in the monitor, as plain
//! data (`Plan`): the namespaces to join and to make
//! ([`namespaces::NamespacePlan`]) and every mount step
//! ([`mount_plan::MountPlan`]); A and B only carry it out.
//!
//! A second fork is needed because a new (or joined) pid namespace applies
//! only to children of the process that unshares or joins it. B is
//! reparented to the monitor, which is a child subreaper: the monitor waits
//! for it like a child of its own.
//!
//! # Start errors
//!
//! A and B report a failed step over a close-on-exec pipe (`step`), so a
//! start that cannot work returns the cause (`exec "/bin/nope": no such
//! file or directory`) before the start call returns, and the failed
//! process is reaped: no hang, no stray process.
//!
//! # Not done (yet)
//!
//! SELinux labels in the spec are not applied; the start succeeds and says
//! so in its warnings. A new user namespace (one to make rather than join
//! by path: its ID maps would be ours to write) and joining a mount
//! namespace are refused. Overlays are not mounted here: the
//! container module mounts the rootfs at `root.path` before start.

pub mod console;
pub mod exec;
mod init;
pub mod mount_plan;
pub mod namespaces;
pub mod oci_runtime;
pub mod process;
pub mod rootfs;
pub mod step;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, pipe2};
use oci_spec::runtime::{Process, Spec};

use crate::cgroups::CgroupManager;
use crate::sys;
use mount_plan::{CgroupMounts, MountPlan};
use namespaces::NamespacePlan;
use step::StepError;

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("load the OCI spec {path}: {source}")]
    LoadSpec {
        path: PathBuf,
        source: oci_spec::OciSpecError,
    },
    #[error("invalid OCI spec: {0}")]
    InvalidSpec(String),
    #[error("{context}: {source}")]
    Sys {
        context: &'static str,
        source: nix::Error,
    },
    #[error("read the start report: {0}")]
    Report(std::io::Error),
    /// The container process's own account of the step that failed.
    #[error("{0}")]
    Start(String),
}

/// The stdio of a container's process.
#[derive(Debug, Clone, Copy)]
pub enum Stdio<'a> {
    /// stdin, stdout, stderr, already open (no `process.terminal`).
    Fds([BorrowedFd<'a>; 3]),
    /// A pty made inside the container (`process.terminal`): its slave is
    /// all three and the controlling terminal, its master is returned in
    /// [`StartedProcess::console`].
    Terminal,
}

/// What a start needs besides the spec.
pub struct StartRequest<'a> {
    /// The bundle directory: a relative `root.path` is relative to it.
    pub bundle: &'a Path,
    pub spec: &'a Spec,
    /// Must be [`Stdio::Terminal`] exactly when the spec asks for
    /// `process.terminal`.
    pub stdio: Stdio<'a>,
    /// Cgroup directories to enter before any namespace is made (one per
    /// v1 hierarchy, or the single v2 one); empty leaves the process in the
    /// caller's cgroups.
    pub cgroup_dirs: &'a [PathBuf],
    /// The cgroup and cgroup2 lines of the host's mount table, when the
    /// caller has them ([`exec::cgroup_mount_table`]); `None` reads them.
    pub cgroup_mounts: Option<&'a str>,
}

#[derive(Debug)]
pub struct StartedProcess {
    /// The process's pid, as the caller's pid namespace numbers it.
    pub pid: Pid,
    /// Things the spec asked for that were adjusted or not applied.
    pub warnings: Vec<String>,
    /// With [`Stdio::Terminal`]: the master of the process's terminal
    /// (close-on-exec, blocking).
    pub console: Option<OwnedFd>,
}

/// OCI spec → running process.
pub trait Executor {
    /// Creates and starts the container's process. Returns once the spec's
    /// program runs (execve succeeded) or with the step that failed.
    ///
    /// The caller must be a child subreaper (`PR_SET_CHILD_SUBREAPER`): the
    /// process is its grandchild and becomes its child.
    fn start(&self, req: &StartRequest<'_>) -> Result<StartedProcess, ExecutorError>;
}

/// The executor built into ketch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Builtin;

/// Reads `<bundle>/config.json`.
pub fn load_spec(bundle: &Path) -> Result<Spec, ExecutorError> {
    let path = bundle.join("config.json");
    Spec::load(&path).map_err(|source| ExecutorError::LoadSpec { path, source })
}

/// A spec checked and turned into the steps the two children take: every
/// decision is made here, in the monitor, before the first fork.
pub(crate) struct Plan<'a> {
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub rootfs: PathBuf,
    pub namespaces: NamespacePlan,
    pub mounts: MountPlan,
    pub oom_score_adj: Option<i32>,
    /// The spec's `linux.seccomp`, compiled (by the daemon, read from the
    /// bundle); B loads it (see `process`).
    pub seccomp: Option<process::SeccompFilter>,
    pub warnings: Vec<String>,
}

impl<'a> Plan<'a> {
    /// `cgroup_dirs` are the container's cgroups (see [`StartRequest`]).
    pub fn new(
        bundle: &Path,
        spec: &'a Spec,
        stdio: &Stdio<'_>,
        cgroup_dirs: &[PathBuf],
        cgroup_mount_table: Option<&str>,
    ) -> Result<Self, ExecutorError> {
        let invalid = |m: &str| ExecutorError::InvalidSpec(m.to_owned());
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("no process"))?;
        if process.args().as_deref().unwrap_or_default().is_empty() {
            return Err(invalid("process.args is empty"));
        }
        let terminal = process.terminal() == Some(true);
        if terminal != matches!(stdio, Stdio::Terminal) {
            return Err(invalid(if terminal {
                "process.terminal is set: the stdio must be a terminal made by the executor"
            } else {
                "a terminal was asked for but process.terminal is not set"
            }));
        }
        if !process.cwd().is_absolute() {
            return Err(invalid("process.cwd must be absolute"));
        }
        let root = spec.root().as_ref().ok_or_else(|| invalid("no root"))?;
        let rootfs = bundle.join(root.path());
        let rootfs = std::fs::canonicalize(&rootfs).map_err(|e| {
            ExecutorError::InvalidSpec(format!("root.path {}: {e}", rootfs.display()))
        })?;
        let linux = spec.linux().as_ref().ok_or_else(|| invalid("no linux"))?;
        let namespaces = NamespacePlan::new(linux)?;
        let mut warnings = Vec::new();
        let cgroups = cgroup_mounts(
            spec,
            &namespaces,
            cgroup_dirs,
            cgroup_mount_table,
            &mut warnings,
        );
        // A spec the container's process would refuse at its mount steps
        // is refused with the same words before anything is made.
        let mounts = MountPlan::new(&rootfs, spec, &cgroups)
            .map_err(|e| ExecutorError::Start(e.to_string()))?;

        // An absent value means 0: inheriting the runtime's own (often
        // -999 under systemd) would shield the container from the OOM killer.
        let (adj, warning) = process::clamp_oom_score_adj(process.oom_score_adj().unwrap_or(0));
        warnings.extend(warning);
        let oom_score_adj = Some(adj);
        let seccomp = linux
            .seccomp()
            .as_ref()
            .map(|s| process::seccomp_filter(Some(bundle), s))
            .transpose()
            .map_err(|e| ExecutorError::InvalidSpec(e.to_string()))?;
        if process.selinux_label().is_some() {
            warnings.push("SELinux labels are not applied by this executor".into());
        }
        Ok(Self {
            spec,
            process,
            rootfs,
            namespaces,
            mounts,
            oom_score_adj,
            seccomp,
            warnings,
        })
    }
}

impl Executor for Builtin {
    fn start(&self, req: &StartRequest<'_>) -> Result<StartedProcess, ExecutorError> {
        let plan = Plan::new(
            req.bundle,
            req.spec,
            &req.stdio,
            req.cgroup_dirs,
            req.cgroup_mounts,
        )?;
        let sys = |context| move |source| ExecutorError::Sys { context, source };
        let (report_r, report_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
        let console = match req.stdio {
            Stdio::Terminal => Some(console::channel().map_err(sys("create a socket pair"))?),
            Stdio::Fds(_) => None,
        };
        let (pid_r, pid_w) = pipe2(OFlag::O_CLOEXEC).map_err(sys("create a pipe"))?;
        // On cgroup2, A is born in the container's cgroup: no migration.
        let cgroup = open_clone_target(req.cgroup_dirs);
        // SAFETY: `start` runs in the container's monitor, which is
        // single-threaded (see the module docs); A only joins namespaces,
        // forks (glibc's fork, so B is whole) and exits.
        let forked = unsafe { sys::fork_maybe_into_cgroup(cgroup.as_ref().map(|fd| fd.as_fd())) };
        let (forked, in_cgroup) = forked.map_err(sys("fork"))?;
        drop(cgroup);
        match forked {
            ForkResult::Child => {
                drop(report_r);
                drop(pid_r);
                let console = console.map(|(_, theirs)| theirs);
                let joined = if in_cgroup {
                    Ok(())
                } else {
                    enter_cgroups(req.cgroup_dirs)
                };
                if let Err(e) =
                    joined.and_then(|()| init::intermediate(&plan, req, &report_w, pid_w, console))
                {
                    step::report(&report_w, &e);
                    sys::exit_now(1);
                }
                sys::exit_now(0);
            }
            ForkResult::Parent { child } => {
                drop(report_w);
                drop(pid_w);
                let console = console.map(|(ours, _)| ours);
                let report = step::read_report(report_r);
                // A exits right after reporting B's pid; reap it.
                let _ = waitpid(child, None);
                let pid = read_pid(pid_r);
                // B passed the master before its execve: it is waiting in
                // the socket once the report says B runs.
                let master = match (&report, &console) {
                    (Ok(None), Some(sock)) => Some(
                        console::recv_master(sock.as_fd(), false)
                            .map_err(|e| format!("receive the terminal's master: {e}")),
                    ),
                    _ => None,
                };
                let (report, master) = match master {
                    Some(Err(e)) => (Ok(Some(e)), None),
                    Some(Ok(m)) => (report, Some(m)),
                    None => (report, None),
                };
                match (report, pid) {
                    (Ok(None), Some(pid)) => Ok(StartedProcess {
                        pid,
                        warnings: plan.warnings,
                        console: master,
                    }),
                    (report, pid) => {
                        if let Some(pid) = pid {
                            // B failed (or we cannot tell): make sure it is
                            // gone before saying so.
                            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
                            let _ = waitpid(pid, None);
                        }
                        Err(match report {
                            Ok(Some(text)) => ExecutorError::Start(text),
                            Ok(None) => ExecutorError::Start(
                                "the container's setup process died without a report".into(),
                            ),
                            Err(e) => ExecutorError::Report(e),
                        })
                    }
                }
            }
        }
    }
}

/// What the spec's `cgroup` mount needs: the host's cgroup filesystems
/// (looked up only when the spec has such a mount), whether the container
/// has a cgroup namespace of its own, and its cgroup directories. A host
/// without cgroups runs the container without the mount, and says so.
fn cgroup_mounts(
    spec: &Spec,
    namespaces: &NamespacePlan,
    cgroup_dirs: &[PathBuf],
    mount_table: Option<&str>,
    warnings: &mut Vec<String>,
) -> CgroupMounts {
    let wanted = spec
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|m| m.typ().as_deref() == Some("cgroup"));
    let fs = if wanted {
        match CgroupManager::detect_with(mount_table) {
            Ok(manager) => Some(manager.container_fs()),
            Err(e) => {
                warnings.push(format!("no cgroup filesystem to mount: {e}"));
                None
            }
        }
    } else {
        None
    };
    CgroupMounts {
        fs,
        namespaced: namespaces.own_cgroup_ns(),
        dirs: cgroup_dirs.to_vec(),
    }
}

fn read_pid(pipe: OwnedFd) -> Option<Pid> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match nix::unistd::read(pipe.as_fd(), &mut buf[got..]) {
            Ok(0) => return None,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
    Some(Pid::from_raw(i32::from_le_bytes(buf)))
}

/// The cgroup a child can be born in with `clone3(CLONE_INTO_CGROUP)`:
/// the container's one directory when it is on cgroup2 (a v2 host). On a
/// v1 or hybrid host the process joins one cgroup per hierarchy and
/// CLONE_INTO_CGROUP, which takes a single cgroup2 directory, cannot
/// place it.
pub(crate) fn clone_target(dirs: &[PathBuf], is_cgroup2: impl Fn(&Path) -> bool) -> Option<&Path> {
    match dirs {
        [one] if is_cgroup2(one) => Some(one),
        _ => None,
    }
}

/// Whether `dir` is on a cgroup2 filesystem.
pub(crate) fn is_cgroup2(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// An fd of the cgroup2 directory a child is to be born in, if any (see
/// [`clone_target`]); none when it cannot be opened: the child then joins
/// as on v1 and reports the error.
pub(crate) fn open_clone_target(dirs: &[PathBuf]) -> Option<OwnedFd> {
    let dir = clone_target(dirs, is_cgroup2)?;
    nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}

/// Moves the calling process into the cgroup2 directory open at `dir`.
pub(crate) fn enter_cgroup_at(dir: BorrowedFd<'_>) -> Result<(), StepError> {
    let procs = nix::fcntl::openat(
        dir,
        "cgroup.procs",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| StepError::errno("join the container's cgroup", e))?;
    nix::unistd::write(&procs, b"0")
        .map(drop)
        .map_err(|e| StepError::errno("join the container's cgroup", e))
}

/// Moves the calling process into each of `dirs`.
///
/// On a cgroup v1 hierarchy it writes "0" to `tasks`, which moves only the
/// calling thread: the kernel then skips the global
/// `cgroup_threadgroup_rwsem` (`cgroup_procs_write_start` takes it only for
/// a thread group or another task's pid), whose write side waits for an RCU
/// grace period on every migration unless the hierarchy is mounted with
/// `favordynmods` (kernel 6.0+, `kernel/cgroup/cgroup.c`). Measured here
/// (6.18, nine v1 hierarchies): 13 ms through `cgroup.procs`, 0.2 ms
/// through `tasks`. It is the same move for the callers, which are
/// single-threaded (a forked child of the monitor, the exec helper); a v2
/// directory has no `tasks` and gets "0" in `cgroup.procs`.
pub(crate) fn enter_cgroups(dirs: &[PathBuf]) -> Result<(), StepError> {
    // Without O_CREAT: cgroupfs answers a create of a missing file with
    // EACCES, not ENOENT, and `tasks` is missing on cgroup2.
    let write_zero = |file: PathBuf| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"0"))
    };
    for dir in dirs {
        let joined = match write_zero(dir.join("tasks")) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_zero(dir.join("cgroup.procs"))
            }
            other => other,
        };
        joined.map_err(|e| StepError::io(format!("join cgroup {}", dir.display()), &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_error(terminal: bool, stdio: &Stdio<'_>) -> Option<String> {
        let bundle = tempfile::tempdir().unwrap();
        std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_terminal(Some(terminal));
        spec.set_process(Some(process));
        match Plan::new(bundle.path(), &spec, stdio, &[], None) {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    #[test]
    fn only_a_single_cgroup2_directory_is_a_clone_target() {
        let v2 = |p: &Path| p.starts_with("/sys/fs/cgroup/unified") || p.starts_with("/v2");
        let one = [PathBuf::from("/v2/kubepods/c1")];
        assert_eq!(clone_target(&one, v2), Some(Path::new("/v2/kubepods/c1")));
        let v1 = [
            PathBuf::from("/sys/fs/cgroup/memory/c1"),
            PathBuf::from("/sys/fs/cgroup/cpu/c1"),
        ];
        assert_eq!(clone_target(&v1, v2), None);
        assert_eq!(clone_target(&v1[..1], v2), None);
        assert_eq!(clone_target(&[], v2), None);
    }

    /// The cgroup2 directory the tests may make cgroups in: the host's v2
    /// root, or the unified tree of a hybrid host.
    fn cgroup2_root() -> Option<PathBuf> {
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| is_cgroup2(p))
    }

    #[test]
    fn a_child_is_born_in_a_cgroup2_directory() {
        if !crate::testing::root_or_skip("making a cgroup") {
            return;
        }
        let Some(root) = cgroup2_root() else {
            println!("skipped: no cgroup2 hierarchy");
            return;
        };
        let name = format!("ketch-clone-test-{}", std::process::id());
        let dir = root.join(&name);
        if let Err(e) = std::fs::create_dir(&dir) {
            println!("skipped: cannot make a cgroup in {}: {e}", root.display());
            return;
        }
        let fd = open_clone_target(std::slice::from_ref(&dir)).expect("a cgroup2 dir");
        // SAFETY: the child makes only async-signal-safe calls (pause,
        // _exit), so the test harness's threads do not matter.
        let (forked, born_there) =
            unsafe { sys::fork_maybe_into_cgroup(Some(fd.as_fd())) }.unwrap();
        let child = match forked {
            ForkResult::Child => loop {
                nix::unistd::pause();
            },
            ForkResult::Parent { child } => child,
        };
        let cgroup = std::fs::read_to_string(format!("/proc/{child}/cgroup")).unwrap();
        let _ = nix::sys::signal::kill(child, nix::sys::signal::SIGKILL);
        let _ = waitpid(child, None);
        let _ = std::fs::remove_dir(&dir);
        assert!(born_there, "clone3(CLONE_INTO_CGROUP) was refused");
        assert!(
            cgroup.lines().any(|l| l == format!("0::/{name}")),
            "{cgroup}"
        );
    }

    #[test]
    fn the_stdio_must_agree_with_process_terminal() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let fds = Stdio::Fds([null.as_fd(), null.as_fd(), null.as_fd()]);
        assert_eq!(plan_error(true, &Stdio::Terminal), None);
        assert_eq!(plan_error(false, &fds), None);
        assert_eq!(
            plan_error(true, &fds).as_deref(),
            Some(
                "invalid OCI spec: process.terminal is set: the stdio must be a terminal made \
                 by the executor"
            )
        );
        assert_eq!(
            plan_error(false, &Stdio::Terminal).as_deref(),
            Some("invalid OCI spec: a terminal was asked for but process.terminal is not set")
        );
    }
}
