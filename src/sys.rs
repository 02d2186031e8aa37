//! The raw syscalls: every call that needs `unsafe` (libc, or a nix
//! function marked unsafe) lives here, each in a small function that says
//! why it is sound. The rest of the crate calls these and holds no
//! `unsafe` of its own (but for taking ownership of inherited descriptor
//! numbers, which is no syscall).
//!
//! Linked by `ketch-shim` as well as the daemon: it depends on `libc`,
//! `nix` and `std` only.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{ForkResult, Pid};

/// fork(2).
///
/// The callers are the monitor and the short-lived `ketch-shim pause` and
/// `ketch-shim exec` helpers: plain blocking code re-executed from our
/// binary, single-threaded, so the child may run any code, allocation
/// included. The multi-threaded daemon never calls it: it re-executes the
/// binary instead.
///
/// # Safety
///
/// The calling process must be single-threaded. In a multi-threaded
/// process the child holds only the forking thread, and a lock another
/// thread held (malloc's, for one) stays locked forever; only
/// async-signal-safe calls would then be sound in the child
/// (signal-safety(7)).
pub unsafe fn fork() -> nix::Result<ForkResult> {
    // SAFETY: the caller guarantees this process is single-threaded (see
    // `# Safety`), which is nix's own precondition.
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

/// Opens the slave of the pty whose master is `master` (ioctl
/// `TIOCGPTPEER`, Linux 4.13): the slave of that master's own devpts
/// instance, found without a path lookup that a container's mounts could
/// redirect (the reason runc uses it too).
pub fn pty_peer(master: BorrowedFd<'_>, flags: OFlag) -> nix::Result<std::os::fd::OwnedFd> {
    // SAFETY: TIOCGPTPEER takes the open flags as an int argument, no
    // pointers, and returns a new descriptor that nothing else owns.
    let fd =
        Errno::result(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags.bits()) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by no one.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Takes ownership of a descriptor the kernel just installed in this
/// process: one received in an `SCM_RIGHTS` message (unix(7)).
pub fn own_received_fd(fd: RawFd) -> std::os::fd::OwnedFd {
    // SAFETY: the kernel installed `fd` for this receive; no other owner
    // exists, and the caller takes it exactly once.
    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
}

/// A terminal's window size (ioctl `TIOCGWINSZ`): columns, rows.
pub fn winsize(fd: RawFd) -> nix::Result<(u16, u16)> {
    // SAFETY: winsize is plain old data; all-zero bytes are a valid value.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ fills the winsize struct we own for the call.
    Errno::result(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) })?;
    Ok((ws.ws_col, ws.ws_row))
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

/// Sets `O_NONBLOCK` on a descriptor (fcntl(2) `F_GETFL`/`F_SETFL`).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map(drop)
}

/// setdomainname(2): nix has no wrapper.
pub fn set_domainname(name: &str) -> nix::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes for the call;
    // the kernel copies them and keeps no reference.
    Errno::result(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// A child process started by [`spawn_with_fds`]; wait for it with
/// [`SpawnedChild::wait`] (nothing reaps it otherwise).
#[derive(Debug)]
pub struct SpawnedChild {
    pid: Pid,
    status: Option<i32>,
}

impl SpawnedChild {
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits for the child (once; later calls return the same status):
    /// its exit code, or 128 + the signal that killed it.
    pub fn wait(&mut self) -> std::io::Result<i32> {
        if let Some(code) = self.status {
            return Ok(code);
        }
        loop {
            match nix::sys::wait::waitpid(self.pid, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => {
                    self.status = Some(code);
                    return Ok(code);
                }
                Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                    self.status = Some(128 + sig as i32);
                    return Ok(128 + sig as i32);
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Starts `program` with `args` and this process's environment, each
/// `(from, to)` pair of `fds` placed at descriptor `to` (stdio included);
/// every other descriptor of ours is close-on-exec and stays behind.
///
/// posix_spawn(3) and not `Command` with a `pre_exec` hook: glibc makes
/// the child with `clone(CLONE_VM | CLONE_VFORK)`, where a hook forces a
/// fork, which copies the daemon's page tables and makes every page it
/// writes afterwards a copy-on-write fault. The child starts with no
/// signal blocked and SIGPIPE at its default, as with `Command`.
pub fn spawn_with_fds(
    program: &std::path::Path,
    args: &[&std::ffi::OsStr],
    fds: &[(BorrowedFd<'_>, RawFd)],
) -> std::io::Result<SpawnedChild> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstring = |bytes: &[u8]| {
        CString::new(bytes).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let path = cstring(program.as_os_str().as_bytes())?;
    let mut argv_owned = vec![path.clone()];
    for arg in args {
        argv_owned.push(cstring(arg.as_bytes())?);
    }
    let mut envp_owned = Vec::new();
    for (key, value) in std::env::vars_os() {
        let mut pair = key.as_bytes().to_vec();
        pair.push(b'=');
        pair.extend_from_slice(value.as_bytes());
        envp_owned.push(cstring(&pair)?);
    }
    let mut argv: Vec<*mut libc::c_char> =
        argv_owned.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> =
        envp_owned.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());
    // Every source first moves above the targets (close-on-exec copies,
    // ours until the spawn returns), so that placing one cannot overwrite
    // a source still to be placed.
    let mut moved = Vec::with_capacity(fds.len());
    for (from, to) in fds {
        let high = fcntl(from, FcntlArg::F_DUPFD_CLOEXEC(64))?;
        // SAFETY: fcntl just returned this new descriptor; nothing else
        // owns it.
        moved.push((unsafe { std::os::fd::OwnedFd::from_raw_fd(high) }, *to));
    }

    let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    // SAFETY: initialises the object `actions` points to; it is destroyed
    // below on every path once initialised.
    let rc = unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    let mut attr = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
    // SAFETY: as above, for the attributes object.
    let rc = unsafe { libc::posix_spawnattr_init(attr.as_mut_ptr()) };
    if rc != 0 {
        // SAFETY: initialised just above and not used after this.
        unsafe { libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr()) };
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    let spawned = (|| {
        for (fd, to) in &moved {
            // SAFETY: `actions` is initialised; dup2 in the child clears
            // close-on-exec on `to` (a copy of a descriptor that stays
            // open until the spawn returns).
            let rc = unsafe {
                libc::posix_spawn_file_actions_adddup2(actions.as_mut_ptr(), fd.as_raw_fd(), *to)
            };
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
        }
        // SAFETY: sigset_t is plain data that sigemptyset/sigaddset fill;
        // `attr` is initialised and the sets outlive the calls.
        let rc = unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let mut pipe: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            let a = libc::posix_spawnattr_setsigmask(attr.as_mut_ptr(), &empty);
            let b = libc::posix_spawnattr_setsigdefault(attr.as_mut_ptr(), &pipe);
            let flags =
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short;
            let c = libc::posix_spawnattr_setflags(attr.as_mut_ptr(), flags);
            if a != 0 {
                a
            } else if b != 0 {
                b
            } else {
                c
            }
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        let mut pid: libc::pid_t = 0;
        // SAFETY: path, argv and envp are NUL-terminated strings in
        // null-terminated arrays that outlive the call; `actions` and
        // `attr` are initialised. The child runs no code of ours: glibc
        // applies the actions and execs.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                actions.as_ptr(),
                attr.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(SpawnedChild {
            pid: Pid::from_raw(pid),
            status: None,
        })
    })();
    // SAFETY: both were initialised above and are not used after this.
    unsafe {
        libc::posix_spawnattr_destroy(attr.as_mut_ptr());
        libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
    }
    spawned
}

/// Sets `IFF_UP` on the network interface `name` of the namespace `sock`
/// was made in: `SIOCGIFFLAGS`, then `SIOCSIFFLAGS` (netdevice(7)); nix has
/// no wrapper for the interface ioctls.
pub fn set_interface_up(sock: BorrowedFd<'_>, name: &CStr) -> std::io::Result<()> {
    let name = name.to_bytes_with_nul();
    // SAFETY: ifreq is plain old data (a name array and a union of plain
    // fields); all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() > req.ifr_name.len() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the fd is open for the whole call and `req` is a valid,
    // NUL-terminated ifreq the kernel reads and fills within its size.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; the kernel only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// fsetxattr(2): nix has no xattr calls.
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: the fd is open for the duration of the call; name is a valid C
    // string and value a valid buffer of the given length.
    let rc = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// lsetxattr(2): sets an xattr on `path` itself, not on what a symlink
/// there points to.
pub fn lsetxattr(path: &CStr, name: &CStr, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: both strings are valid C strings and value a valid buffer of
    // the given length for the duration of the call.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// lgetxattr(2): reads an xattr of `path` itself into `buf`; returns its
/// length.
#[cfg(test)]
pub fn lgetxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: valid C strings; buf is a writable buffer of the given length.
    let rc = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    usize::try_from(rc).map_err(|_| std::io::Error::last_os_error())
}

/// glibc's malloc tuning (mallopt(3), mallinfo2(3), malloc_trim(3)); on
/// other C libraries these do nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub mod malloc {
    /// Caps the number of malloc arenas (`M_ARENA_MAX`).
    pub fn set_arena_max(arenas: i32) {
        // SAFETY: mallopt only sets a malloc parameter; any value is
        // accepted or refused with 0.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }

    /// Serves every allocation of `bytes` or more with its own mmap
    /// (`M_MMAP_THRESHOLD`), unmapped when freed. Setting it also turns
    /// off glibc's dynamic threshold, which otherwise rises to the size of
    /// the largest mapped block freed, from then on serving such blocks
    /// from the arenas, where they stay after being freed.
    pub fn set_mmap_threshold(bytes: i32) {
        // SAFETY: as above: a malloc parameter, refused with 0 when out
        // of range.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) };
    }

    /// Bytes malloc holds in free chunks, over all arenas.
    pub fn free_bytes() -> Option<usize> {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct
        // of counters (glibc 2.33 and later).
        Some(unsafe { libc::mallinfo2() }.fordblks)
    }

    /// Hands the pages of free chunks back to the system.
    pub fn trim() {
        // SAFETY: malloc_trim only returns free memory to the system; it
        // is safe to call at any time from any thread.
        unsafe { libc::malloc_trim(0) };
    }
}

/// glibc's malloc tuning: nothing to tune on this C library.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub mod malloc {
    pub fn set_arena_max(_arenas: i32) {}
    pub fn set_mmap_threshold(_bytes: i32) {}
    pub fn free_bytes() -> Option<usize> {
        None
    }
    pub fn trim() {}
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
/// the start time (clock ticks since boot, `/proc/<pid>/stat` field 22).
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

/// mount_setattr(2) setting `MOUNT_ATTR_RDONLY` on the mount at `path` and,
/// with `AT_RECURSIVE`, on every mount below it (Linux 5.12). The struct
/// is declared here as the kernel's `struct mount_attr` (linux/mount.h):
/// not every libc release exports it.
pub fn mount_setattr_readonly_recursive(path: &std::path::Path) -> nix::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
    let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| Errno::EINVAL)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `path` is a NUL-terminated string and `attr` a live struct of
    // the size passed; the kernel only reads both during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            (libc::AT_RECURSIVE | libc::AT_SYMLINK_NOFOLLOW) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

/// Whether this kernel has mount_setattr(2): a call with no path and no
/// attributes fails with EBADF/EINVAL/ENOENT where it exists, ENOSYS where
/// it does not.
pub fn has_mount_setattr() -> bool {
    // SAFETY: a null attribute pointer with size 0 and an empty path: the
    // kernel reads nothing of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            0 as libc::c_uint,
            std::ptr::null::<u8>(),
            0usize,
        )
    };
    !(rc < 0 && Errno::last() == Errno::ENOSYS)
}

/// `struct mount_attr` of linux/mount.h, for mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(path: &std::path::Path) -> nix::Result<std::ffi::CString> {
    std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
        .map_err(|_| Errno::EINVAL)
}

/// open_tree(2) with `OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC` (Linux 5.2): a
/// detached copy of the mount at `path` (not of the mounts below it), held
/// by the returned descriptor until it is attached with [`move_mount_to`]
/// or closed, when the kernel drops it.
pub fn open_tree_clone(path: &std::path::Path) -> nix::Result<std::os::fd::OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let path = c_path(path)?;
    // SAFETY: `path` is NUL-terminated and only read during the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE
                | libc::O_CLOEXEC as libc::c_uint
                | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
        )
    };
    let fd = Errno::result(fd)?;
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// mount_setattr(2) with `MOUNT_ATTR_IDMAP` on the detached mount `tree`
/// (from [`open_tree_clone`]): its files' owners are then seen through
/// the ID mappings of the user namespace `userns` (Linux 5.12; the
/// filesystem must support it: ext4, xfs, btrfs, tmpfs since 6.3; overlayfs
/// takes idmapped layers since 5.19). Only a mount never attached may be
/// idmapped.
pub fn mount_setattr_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> nix::Result<()> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let userns_fd = u64::try_from(userns.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd,
    };
    // SAFETY: the empty path is a static NUL-terminated string and `attr`
    // a live struct of the size passed; the kernel only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

/// move_mount(2) of the detached mount `tree` onto `target` (an existing
/// directory or file), with `MOVE_MOUNT_F_EMPTY_PATH`.
pub fn move_mount_to(tree: BorrowedFd<'_>, target: &std::path::Path) -> nix::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;
    let target = c_path(target)?;
    // SAFETY: both paths are NUL-terminated and only read during the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(rc).map(drop)
}

/// A process sitting in namespaces it made, so that they can be opened
/// and pinned through `/proc/<pid>/ns/`: see [`spawn_ns_holder`]. The
/// caller kills and reaps it ([`NsHolder::finish`]) once done.
#[derive(Debug)]
pub struct NsHolder {
    pub pid: Pid,
}

impl NsHolder {
    /// SIGKILL and reap. Idempotent enough: a second call finds no child.
    pub fn finish(&self) {
        let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// Forks a child that unshares `flags` and then sleeps until killed,
/// returning once the unshare is done (or with its errno). Unlike a
/// thread, a process can make a user namespace: unshare(2) refuses
/// `CLONE_NEWUSER` to a multi-threaded caller. With `CLONE_NEWUSER` among
/// `flags`, the user namespace is made first and owns the others
/// (user_namespaces(7)). The child dies with its parent thread
/// (`PR_SET_PDEATHSIG`), so a daemon killed mid-way leaves no holder.
///
/// Sound in the multi-threaded daemon, unlike [`fork`], because the child
/// only makes raw async-signal-safe syscalls (prctl, unshare, write,
/// pause, _exit: signal-safety(7)) on memory set up before the fork; it
/// never allocates, locks or returns into Rust code of the parent.
pub fn spawn_ns_holder(flags: nix::sched::CloneFlags) -> nix::Result<NsHolder> {
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let bits = flags.bits();
    let ready_fd = ready_w.as_raw_fd();
    // SAFETY: see the doc: in the child only raw syscalls run, on the
    // integers copied above, and it ends in _exit; the parent only reads
    // the child's pid.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: in the child, raw syscalls on plain integers and a
        // stack buffer only; _exit never returns.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            let rc = libc::unshare(bits);
            let err: u8 = if rc == 0 {
                0
            } else {
                // errno values fit a byte; 0 means success.
                (*libc::__errno_location()).clamp(1, 255) as u8
            };
            libc::write(ready_fd, (&err as *const u8).cast(), 1);
            if err != 0 {
                libc::_exit(1);
            }
            loop {
                libc::pause();
            }
        }
    }
    let pid = Errno::result(pid)?;
    drop(ready_w);
    let holder = NsHolder {
        pid: Pid::from_raw(pid),
    };
    let mut byte = [0u8; 1];
    let got = loop {
        match nix::unistd::read(&ready_r, &mut byte) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    match got {
        Ok(1) if byte[0] == 0 => Ok(holder),
        Ok(1) => {
            holder.finish();
            Err(Errno::from_raw(i32::from(byte[0])))
        }
        Ok(_) => {
            holder.finish();
            Err(Errno::ECHILD)
        }
        Err(e) => {
            holder.finish();
            Err(e)
        }
    }
}

/// The bpf(2) commands, program type and attach type the cgroup v2 device
/// filter uses (linux/bpf.h). Each command's `union bpf_attr` member is
/// declared below as its own struct: libc does not export them.
mod bpf {
    pub const PROG_LOAD: libc::c_long = 5;
    pub const PROG_ATTACH: libc::c_long = 8;
    pub const PROG_DETACH: libc::c_long = 9;
    pub const PROG_GET_FD_BY_ID: libc::c_long = 13;
    pub const PROG_QUERY: libc::c_long = 16;
    pub const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    pub const CGROUP_DEVICE: u32 = 6;
    pub const F_ALLOW_MULTI: u32 = 1 << 1;

    #[repr(C)]
    #[derive(Default)]
    pub struct ProgLoad {
        pub prog_type: u32,
        pub insn_cnt: u32,
        pub insns: u64,
        pub license: u64,
        pub log_level: u32,
        pub log_size: u32,
        pub log_buf: u64,
        pub kern_version: u32,
        pub prog_flags: u32,
        pub prog_name: [u8; 16],
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct Attach {
        pub target_fd: u32,
        pub attach_bpf_fd: u32,
        pub attach_type: u32,
        pub attach_flags: u32,
        pub replace_bpf_fd: u32,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct Query {
        pub target_fd: u32,
        pub attach_type: u32,
        pub query_flags: u32,
        pub attach_flags: u32,
        pub prog_ids: u64,
        pub prog_cnt: u32,
        pub _pad: u32,
        pub prog_attach_flags: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct GetFdById {
        pub id: u32,
        pub next_id: u32,
        pub open_flags: u32,
    }

    /// bpf(2) with one command's attribute struct.
    pub fn call<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
        // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` struct
        // of the size passed, laid out as the command's member of `union
        // bpf_attr`; the kernel reads it and writes back only within it
        // (a query's count) or into buffers it points to, which the
        // callers keep alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                std::mem::size_of::<T>() as libc::c_uint,
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// A descriptor bpf(2) returned, owned from here on.
    pub fn owned(fd: libc::c_long) -> std::io::Result<std::os::fd::OwnedFd> {
        let fd = std::os::fd::RawFd::try_from(fd)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: bpf(2) just returned this descriptor to us; nothing else
        // owns it.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }
}

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program (8-byte `struct
/// bpf_insn`s). A program the verifier refuses fails with the verifier's
/// log in the error.
pub fn bpf_load_device_program(insns: &[[u8; 8]]) -> std::io::Result<std::os::fd::OwnedFd> {
    const LICENSE: &CStr = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"ketch_devs");
    let load = |log: Option<&mut [u8]>| {
        let mut attr = bpf::ProgLoad {
            prog_type: bpf::PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            prog_name: name,
            ..Default::default()
        };
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        bpf::call(bpf::PROG_LOAD, &mut attr)
    };
    match load(None) {
        Ok(fd) => bpf::owned(fd),
        Err(e) => {
            let mut log = vec![0u8; 16 * 1024];
            let _ = load(Some(&mut log));
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            if text.is_empty() {
                Err(e)
            } else {
                Err(std::io::Error::new(
                    e.kind(),
                    format!("{e}: verifier: {text}"),
                ))
            }
        }
    }
}

/// The ids of the device programs attached to the cgroup `cgroup` (a
/// directory descriptor) itself.
pub fn bpf_attached_device_programs(cgroup: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = bpf::Query {
        target_fd: fd_u32(cgroup),
        attach_type: bpf::CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: u32::try_from(ids.len()).unwrap_or(0),
        ..Default::default()
    };
    bpf::call(bpf::PROG_QUERY, &mut attr)?;
    ids.truncate(usize::try_from(attr.prog_cnt).unwrap_or(0).min(64));
    Ok(ids)
}

/// Attaches a device program to the cgroup, beside any others
/// (`BPF_F_ALLOW_MULTI`).
pub fn bpf_attach_device_program(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
) -> std::io::Result<()> {
    bpf_device_attachment(bpf::PROG_ATTACH, cgroup, prog, bpf::F_ALLOW_MULTI)
}

/// Detaches one device program from the cgroup.
pub fn bpf_detach_device_program(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
) -> std::io::Result<()> {
    bpf_device_attachment(bpf::PROG_DETACH, cgroup, prog, 0)
}

fn bpf_device_attachment(
    cmd: libc::c_long,
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_flags: u32,
) -> std::io::Result<()> {
    let mut attr = bpf::Attach {
        target_fd: fd_u32(cgroup),
        attach_bpf_fd: fd_u32(prog),
        attach_type: bpf::CGROUP_DEVICE,
        attach_flags,
        ..Default::default()
    };
    bpf::call(cmd, &mut attr).map(drop)
}

/// A descriptor for the loaded program with this id.
pub fn bpf_program_by_id(id: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    let mut attr = bpf::GetFdById {
        id,
        ..Default::default()
    };
    bpf::call(bpf::PROG_GET_FD_BY_ID, &mut attr).and_then(bpf::owned)
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// Loads a classic BPF program as the calling thread's seccomp filter:
/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog)` (seccomp(2)). Without
/// no_new_privs the caller needs CAP_SYS_ADMIN. With
/// `SECCOMP_FILTER_FLAG_TSYNC` a positive return names a thread that could
/// not be synchronised: ESRCH then, as libseccomp reports it.
pub fn seccomp_set_mode_filter(program: &[libc::sock_filter], flags: u32) -> nix::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| Errno::E2BIG)?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `program`, `len` instructions long, both
    // alive across the call; the kernel copies the program and never
    // writes through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            flags as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    match rc {
        0 => Ok(()),
        rc if rc > 0 => Err(Errno::ESRCH),
        _ => Err(Errno::last()),
    }
}

/// [`fork_into_cgroup`] when `cgroup` is given, falling back to [`fork`]
/// when the kernel refuses it; with whether the child was born in it (if
/// not, it must join the cgroup itself).
///
/// # Safety
/// As [`fork_into_cgroup`].
pub unsafe fn fork_maybe_into_cgroup(
    cgroup: Option<BorrowedFd<'_>>,
) -> nix::Result<(ForkResult, bool)> {
    if let Some(fd) = cgroup {
        // SAFETY: the caller's contract is this function's.
        if let Ok(forked) = unsafe { fork_into_cgroup(fd) } {
            return Ok((forked, true));
        }
    }
    // SAFETY: the caller's contract is this function's.
    unsafe { fork() }.map(|forked| (forked, false))
}

/// `struct clone_args` of clone3(2), up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (Linux 5.7, `include/uapi/linux/sched.h`).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Like [`fork`], but the child starts in the cgroup v2 directory `cgroup`
/// (an open fd of it): `clone3(CLONE_INTO_CGROUP)`, so no migration and no
/// wait for the kernel's cgroup migration lock. An error means no child
/// was made (ENOSYS before 5.3, E2BIG or EINVAL before 5.7, EOPNOTSUPP or
/// EBUSY for a cgroup that cannot take the process): the caller falls
/// back to fork and joins the cgroup itself.
///
/// # Safety
/// As [`fork`]: only in a single-threaded caller. Besides, glibc does not
/// know of this child: the thread id cached in its thread descriptor is
/// still the parent's, so the child must not use what reads it
/// (`raise`, `pthread_kill`, `abort`, recursive-lock owners); it may
/// `fork` (glibc sets the id in its own child) and exec.
pub unsafe fn fork_into_cgroup(cgroup: BorrowedFd<'_>) -> nix::Result<ForkResult> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: `args` is a valid clone_args of the size passed; no stack,
    // tid or pidfd pointers are given, so the kernel writes nothing of
    // ours; the child gets a copy of the address space as with fork, which
    // the caller's contract makes sound.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        0 => Ok(ForkResult::Child),
        pid if pid > 0 => Ok(ForkResult::Parent {
            child: Pid::from_raw(pid as i32),
        }),
        _ => Err(Errno::last()),
    }
}
