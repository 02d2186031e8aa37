//! The few raw syscalls nix does not wrap the way the executor needs them,
//! each in a small safe function with the reason it is sound.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{ForkResult, Pid};

/// fork(2).
///
/// Sound for our callers: every process that forks through this function is
/// single-threaded (the monitor, and the short-lived `ketch pause`/`ketch
/// exec` helpers, all plain blocking code re-executed from our binary), so
/// the child may run any code, allocation included. The multi-threaded
/// daemon never calls it: it re-executes the binary instead.
pub fn fork() -> nix::Result<ForkResult> {
    // SAFETY: see above; the callers are single-threaded processes.
    unsafe { nix::unistd::fork() }
}

/// kill(2) with a signal number, real-time signals included (nix's
/// `Signal` has no `SIGRTMIN+n`).
pub fn kill(pid: Pid, signo: i32) -> nix::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    Errno::result(unsafe { libc::kill(pid.as_raw(), signo) }).map(drop)
}

/// Ends the current process at once, without running atexit handlers or
/// flushing stdio buffers that belong to the parent (a forked child must
/// not flush its parent's buffers twice).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions.
    unsafe { libc::_exit(code) }
}

/// dup2(2) on raw descriptor numbers: places `from` at `to` (without
/// close-on-exec), for the stdio of a process about to exec.
pub fn dup_onto(from: BorrowedFd<'_>, to: RawFd) -> nix::Result<()> {
    if from.as_raw_fd() == to {
        // dup2 onto itself keeps CLOEXEC: clear it explicitly.
        return set_cloexec(to, false);
    }
    // SAFETY: dup2 only manipulates the descriptor table; `from` is a valid
    // borrowed descriptor and `to` is a plain number we mean to overwrite.
    Errno::result(unsafe { libc::dup2(from.as_raw_fd(), to) }).map(drop)
}

/// Sets or clears FD_CLOEXEC on a descriptor number.
pub fn set_cloexec(fd: RawFd, on: bool) -> nix::Result<()> {
    // SAFETY: fcntl(F_GETFD/F_SETFD) on a descriptor number is harmless if
    // the number is not open (EBADF).
    let flags = Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let flags = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) }).map(drop)
}

/// Marks every descriptor from `first` on close-on-exec, so the container
/// inherits exactly its stdio (close_range(2), Linux 5.11).
pub fn cloexec_from(first: u32) -> nix::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    })
    .map(drop)
}

/// Makes `fd` (a terminal) the controlling terminal of this session.
pub fn set_controlling_tty(fd: RawFd) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument, no pointers.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: RawFd, cols: u16, rows: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own for the call.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}

/// Unblocks every signal and resets every handler to its default: a
/// process inherits both across fork and execve, and the container must
/// not start with the monitor's blocked SIGCHLD or Rust's ignored SIGPIPE.
pub fn reset_signals() -> nix::Result<()> {
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) }?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// pidfd-free check that `pid` is still the process we started: compares
/// the start time (clock ticks since boot, /proc/<pid>/stat field 22).
pub fn start_time(pid: Pid) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 1..];
    // after[0] is field 3 (state); field 22 is 19 further.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Writes all of `data`, retrying short writes and EINTR; gives up
/// silently on any other error (used for reports that have no one to
/// report their own failure to).
pub fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(0) => break,
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
}
