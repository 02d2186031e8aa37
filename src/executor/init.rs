//! The two children of a start (see the module docs of `executor`): A joins
//! and makes namespaces, B builds the container and execs its program.

use std::convert::Infallible;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{OFlag, open};
use nix::sched::{setns, unshare};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, sethostname, setsid};

use super::mount_plan::MountStep;
use super::process::{self, Finalize};
use super::step::{self, StepError};
use super::{Plan, StartRequest, Stdio, console, rootfs};
use crate::sys;

/// Process A, already in the container's cgroups. Returns after reporting
/// B's pid; B never returns here.
pub(super) fn intermediate(
    plan: &Plan<'_>,
    req: &StartRequest<'_>,
    report: &OwnedFd,
    pid_pipe: OwnedFd,
    console: Option<OwnedFd>,
) -> Result<(), StepError> {
    if plan.namespaces.joins_user_ns()
        && let Some(adj) = plan.oom_score_adj
    {
        // While still the host's root: in the user namespace our own
        // /proc files belong to an ID it does not map (a process that
        // changed IDs is not dumpable), so B could not write it. B
        // inherits it across the fork.
        process::set_oom_score_adj(adj)?;
    }
    // Open every namespace first: the paths are the host's.
    let mut fds = Vec::with_capacity(plan.namespaces.join.len());
    for (flag, path) in &plan.namespaces.join {
        let fd = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| StepError::errno(format!("open namespace {}", path.display()), e))?;
        fds.push((*flag, fd, path));
    }
    for (flag, fd, path) in &fds {
        setns(fd, *flag)
            .map_err(|e| StepError::errno(format!("join namespace {}", path.display()), e))?;
    }
    drop(fds);
    if plan.namespaces.joins_user_ns() {
        process::become_userns_root()?;
    }
    unshare(plan.namespaces.unshare).map_err(|e| StepError::errno("unshare namespaces", e))?;
    // SAFETY: A is a forked child of the single-threaded monitor, and a
    // child has only the thread that forked it.
    let forked = unsafe { sys::fork() };
    match forked.map_err(|e| StepError::errno("fork the container process", e))? {
        ForkResult::Child => {
            drop(pid_pipe);
            let Err(e) = container(plan, req, console);
            step::report(report, &e);
            sys::exit_now(127);
        }
        ForkResult::Parent { child } => {
            let bytes = child.as_raw().to_le_bytes();
            nix::unistd::write(pid_pipe.as_fd(), &bytes)
                .map_err(|e| StepError::errno("report the container pid", e))?;
            Ok(())
        }
    }
}

/// Process B: everything inside the namespaces, ending in execve.
fn container(
    plan: &Plan<'_>,
    req: &StartRequest<'_>,
    console: Option<OwnedFd>,
) -> Result<Infallible, StepError> {
    setsid().map_err(|e| StepError::errno("setsid", e))?;
    if let Stdio::Fds(stdio) = req.stdio {
        for (i, fd) in stdio.iter().enumerate() {
            sys::dup_onto(*fd, i as i32).map_err(|e| StepError::errno("set up stdio", e))?;
        }
    }
    if plan.namespaces.new_uts() {
        if let Some(name) = plan.spec.hostname() {
            sethostname(name).map_err(|e| StepError::errno(format!("sethostname {name:?}"), e))?;
        }
        if let Some(name) = plan.spec.domainname() {
            set_domainname(name)?;
        }
    }
    // The console is bound after the pivot, below: the pty does not exist
    // before the container's /dev/ptmx can be opened.
    rootfs::execute(&plan.rootfs, &plan.mounts.before_pivot, None)?;
    if let Some(sock) = console {
        terminal(plan, &sock)?;
    }
    process::create_cwd(plan.process)?;
    rootfs::execute(&plan.rootfs, &plan.mounts.after_pivot, None)?;
    process::finalize_and_exec(
        plan.process,
        Finalize {
            // Set by A already in a user namespace.
            oom_score_adj: plan
                .oom_score_adj
                .filter(|_| !plan.namespaces.joins_user_ns()),
            seccomp: plan.seccomp.as_ref(),
        },
    )
}

/// After the pivot, before anything is made read-only (runc's
/// `setupConsole`): a pty from the container's own `/dev/ptmx`, sized as
/// the spec says, bound onto `/dev/console` when the plan has a console,
/// its master passed back over `sock`, its slave made stdio and the
/// controlling terminal.
fn terminal(plan: &Plan<'_>, sock: &OwnedFd) -> Result<(), StepError> {
    let size = plan
        .process
        .console_size()
        .as_ref()
        .map(|s| (clamp(s.width()), clamp(s.height())));
    let pty = console::open_pty(size)?;
    let bind_console: Vec<MountStep> = plan
        .mounts
        .before_pivot
        .iter()
        .filter(|s| matches!(s, MountStep::BindConsole(_)))
        .cloned()
        .collect();
    // `/` is the rootfs now: the plan's /dev targets resolve from it.
    rootfs::execute(Path::new("/"), &bind_console, Some(Path::new(&pty.name)))?;
    console::send_master(sock.as_fd(), pty.master.as_fd())?;
    // Only the receiver holds the master from here on: the terminal hangs
    // up when it closes it.
    drop(pty.master);
    console::become_stdio(&pty.slave)
}

fn clamp(n: u64) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn set_domainname(name: &str) -> Result<(), StepError> {
    sys::set_domainname(name).map_err(|e| StepError::errno(format!("setdomainname {name:?}"), e))
}
