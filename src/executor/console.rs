//! The terminal of a container's process, made inside the container the
//! way runc's `--console-socket` does it: the process that sets the
//! container up opens `/dev/ptmx` in the container's mount namespace (so
//! the pty belongs to the container's own devpts instance and its slave is
//! a `/dev/pts/N` that exists in there), keeps the slave as its stdio and
//! controlling terminal, and hands the master to whoever pumps it (the
//! monitor, or the daemon for an exec) over a unix socket with
//! `SCM_RIGHTS` (unix(7)).
//!
//! A host pty would do for `isatty()`, but its `/dev/pts/N` is not in the
//! container's devpts: `tty`, `ps`'s TTY column, `sudo` and anything that
//! reopens its terminal by name then fail.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

use super::step::StepError;
use crate::sys;

/// A pty opened in the current mount namespace's `/dev/ptmx`.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's path as this mount namespace names it (`/dev/pts/N`).
    pub name: String,
}

/// Opens a new pty through `/dev/ptmx` (in a container: the symlink to its
/// own devpts's `ptmx`), both ends close-on-exec and not yet anyone's
/// controlling terminal. `size` (columns, rows) is set before anything can
/// read it.
pub fn open_pty(size: Option<(u16, u16)>) -> Result<Pty, StepError> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master =
        nix::pty::posix_openpt(flags).map_err(|e| StepError::errno("open /dev/ptmx", e))?;
    nix::pty::unlockpt(&master).map_err(|e| StepError::errno("unlock the pty", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| StepError::errno("name the pty", e))?;
    let master = OwnedFd::from(master);
    let slave = sys::pty_peer(master.as_fd(), flags)
        .map_err(|e| StepError::errno(format!("open the pty slave {name}"), e))?;
    if let Some((cols, rows)) = size {
        sys::set_winsize(master.as_raw_fd(), cols, rows)
            .map_err(|e| StepError::errno("set the terminal size", e))?;
    }
    Ok(Pty {
        master,
        slave,
        name,
    })
}

/// Makes `slave` this process's stdin, stdout, stderr and controlling
/// terminal. The caller has called setsid(2): a session leader without a
/// terminal gets this one with `TIOCSCTTY` (tty_ioctl(4)).
pub fn become_stdio(slave: &OwnedFd) -> Result<(), StepError> {
    for fd in 0..3 {
        sys::dup_onto(slave.as_fd(), fd).map_err(|e| StepError::errno("set up stdio", e))?;
    }
    sys::set_controlling_tty(0).map_err(|e| StepError::errno("set the controlling tty", e))
}

/// A terminal's window size: columns, rows.
pub fn size(fd: BorrowedFd<'_>) -> nix::Result<(u16, u16)> {
    sys::winsize(fd.as_raw_fd())
}

/// Sets a terminal's window size (on either end of a pty).
pub fn resize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> nix::Result<()> {
    sys::set_winsize(fd.as_raw_fd(), cols, rows)
}

/// A connected pair of unix sockets to pass a master on, both ends
/// close-on-exec.
pub fn channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Sends `master` over `sock` (one byte with the descriptor attached).
pub fn send_master(sock: BorrowedFd<'_>, master: BorrowedFd<'_>) -> Result<(), StepError> {
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"M")];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(StepError::errno("pass the terminal's master", e)),
        }
    }
}

/// Takes the master sent with [`send_master`]. With `wait` false the
/// message must be there already (the sender passed it before its exec).
pub fn recv_master(sock: BorrowedFd<'_>, wait: bool) -> std::io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if !wait {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let msg = loop {
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Ok(msg) => {
                let mut got = None;
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for fd in fds {
                            // Owned at once, so extra ones are closed.
                            let owned = sys::own_received_fd(fd);
                            if got.is_none() {
                                got = Some(owned);
                            }
                        }
                    }
                }
                break got;
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    msg.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no terminal master in the console message",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_travels_over_the_channel_and_still_drives_its_slave() {
        let pty = open_pty(Some((100, 30))).unwrap();
        assert!(pty.name.starts_with("/dev/pts/"), "{}", pty.name);
        let (a, b) = channel().unwrap();
        send_master(a.as_fd(), pty.master.as_fd()).unwrap();
        drop(pty.master);
        let master = recv_master(b.as_fd(), false).unwrap();
        assert_eq!(size(pty.slave.as_fd()).unwrap(), (100, 30));
        nix::unistd::write(&master, b"hi\n").unwrap();
        let mut buf = [0u8; 8];
        let n = nix::unistd::read(pty.slave.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi\n");
        // Nothing was sent: no wait, a clear error.
        assert!(recv_master(b.as_fd(), false).is_err());
    }
}
