//! The two children of a start (see the module docs of `executor`): A joins
//! and makes namespaces, B builds the container and execs its program.

use std::convert::Infallible;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{OFlag, open};
use nix::sched::{setns, unshare};
use nix::sys::stat::Mode;
use nix::unistd::{ForkResult, sethostname, setsid};

use super::process::{self, Finalize};
use super::step::{self, StepError};
use super::{Plan, StartRequest, enter_cgroups, rootfs};
use crate::sys;

/// Process A. Returns after reporting B's pid; B never returns here.
pub(super) fn intermediate(
    plan: &Plan<'_>,
    req: &StartRequest<'_>,
    report: &OwnedFd,
    pid_pipe: OwnedFd,
) -> Result<(), StepError> {
    enter_cgroups(req.cgroup_dirs)?;
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
    unshare(plan.namespaces.unshare).map_err(|e| StepError::errno("unshare namespaces", e))?;
    // SAFETY: A is a forked child of the single-threaded monitor, and a
    // child has only the thread that forked it.
    let forked = unsafe { sys::fork() };
    match forked.map_err(|e| StepError::errno("fork the container process", e))? {
        ForkResult::Child => {
            drop(pid_pipe);
            let Err(e) = container(plan, req);
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
fn container(plan: &Plan<'_>, req: &StartRequest<'_>) -> Result<Infallible, StepError> {
    setsid().map_err(|e| StepError::errno("setsid", e))?;
    for (i, fd) in req.stdio.iter().enumerate() {
        sys::dup_onto(*fd, i as i32).map_err(|e| StepError::errno("set up stdio", e))?;
    }
    let terminal = plan.process.terminal() == Some(true);
    let console = if terminal {
        sys::set_controlling_tty(0).map_err(|e| StepError::errno("set the controlling tty", e))?;
        Some(
            nix::unistd::ttyname(std::io::stdin().as_fd())
                .map_err(|e| StepError::errno("name the terminal", e))?,
        )
    } else {
        None
    };
    if plan.namespaces.new_uts() {
        if let Some(name) = plan.spec.hostname() {
            sethostname(name).map_err(|e| StepError::errno(format!("sethostname {name:?}"), e))?;
        }
        if let Some(name) = plan.spec.domainname() {
            set_domainname(name)?;
        }
    }
    rootfs::execute(&plan.rootfs, &plan.mounts.before_pivot, console.as_deref())?;
    process::create_cwd(plan.process)?;
    rootfs::execute(&plan.rootfs, &plan.mounts.after_pivot, None)?;
    process::finalize_and_exec(
        plan.process,
        Finalize {
            oom_score_adj: plan.oom_score_adj,
            seccomp: plan.seccomp.as_ref(),
        },
    )
}

fn set_domainname(name: &str) -> Result<(), StepError> {
    sys::set_domainname(name).map_err(|e| StepError::errno(format!("setdomainname {name:?}"), e))
}
