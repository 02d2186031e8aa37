//! Making and pinning a pod's namespaces.
//!
//! A pod's network, IPC and UTS namespaces must outlive any one process
//! (a pod has no pause process). They are made by a short-lived thread:
//! `unshare(2)` of `CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS` moves only
//! the calling thread, so the rest of the daemon stays where it is. The
//! thread sets the pod's hostname, brings `lo` up, then bind-mounts its own
//! `/proc/thread-self/ns/<type>` onto files under the pod's `ns/` dir. Those
//! mounts keep the namespaces alive after the thread exits; containers join
//! them by path; unmounting the pins releases them.
//!
//! The thread is a fresh `std::thread`, never one of tokio's blocking pool:
//! a pooled thread would carry the pod's namespaces into the next job.
//!
//! A pod with its own user namespace is made by a process instead (a
//! thread cannot make one): see [`super::userns`]. Its network, IPC and
//! UTS namespaces are made in the same unshare, so the user namespace owns
//! them.

use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use super::error::OsError;
use super::mounts;
use super::record::PodNamespaces;
use crate::idmap::UserNamespace;

/// Which new namespaces a pod needs and where to pin them.
#[derive(Debug, Clone)]
pub struct PinRequest {
    /// The pod's `ns/` directory (must exist).
    pub dir: PathBuf,
    pub net: bool,
    pub ipc: bool,
    /// With a new UTS namespace, the hostname to set in it.
    pub uts_hostname: Option<String>,
    /// A user namespace of the pod's own, with these mappings.
    pub userns: Option<UserNamespace>,
}

impl PinRequest {
    /// The pin paths this request will make.
    pub fn paths(&self) -> PodNamespaces {
        let at = |wanted: bool, name: &str| wanted.then(|| self.dir.join(name));
        PodNamespaces {
            user: at(self.userns.is_some(), "user"),
            net: at(self.net, "net"),
            ipc: at(self.ipc, "ipc"),
            uts: at(self.uts_hostname.is_some(), "uts"),
        }
    }
}

/// Creates and pins the requested namespaces; blocks until done. On error
/// some pins may exist: the caller cleans the pod dir with
/// [`mounts::unmount_all_under`].
pub fn create_pinned(req: PinRequest) -> Result<PodNamespaces, OsError> {
    let paths = req.paths();
    if paths.pins().next().is_none() {
        return Ok(paths);
    }
    if let Some(userns) = req.userns {
        super::userns::create_pinned(&req, &userns)?;
        return Ok(paths);
    }
    let dir = req.dir.clone();
    let thread = std::thread::Builder::new()
        .name("ketch-pod-ns".into())
        .spawn(move || pin_from_this_thread(&req))
        .map_err(OsError::with("spawn the namespace thread for", &dir))?;
    match thread.join() {
        Ok(result) => result.map(|()| paths),
        Err(_) => Err(OsError::new(
            "pin namespaces in",
            &dir,
            std::io::Error::other("the namespace thread panicked"),
        )),
    }
}

/// Runs on the throwaway thread: after `unshare` this thread, and only
/// it, is in the new namespaces.
fn pin_from_this_thread(req: &PinRequest) -> Result<(), OsError> {
    let mut flags = CloneFlags::empty();
    flags.set(CloneFlags::CLONE_NEWNET, req.net);
    flags.set(CloneFlags::CLONE_NEWIPC, req.ipc);
    flags.set(CloneFlags::CLONE_NEWUTS, req.uts_hostname.is_some());
    unshare(flags).map_err(OsError::with("unshare namespaces for", &req.dir))?;
    if let Some(hostname) = &req.uts_hostname {
        nix::unistd::sethostname(hostname).map_err(OsError::with(
            "set the hostname in the new UTS namespace of",
            &req.dir,
        ))?;
    }
    if req.net {
        loopback_up().map_err(OsError::with(
            "bring lo up in the new network namespace of",
            &req.dir,
        ))?;
    }
    let paths = req.paths();
    for (kind, target) in paths.pins() {
        pin(Path::new(&format!("/proc/thread-self/ns/{kind}")), target)?;
    }
    Ok(())
}

/// Bind-mounts the namespace file `source` onto a new file `target`.
pub(super) fn pin(source: &Path, target: &Path) -> Result<(), OsError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(target)
        .map_err(OsError::with("create namespace pin", target))?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(OsError::with("bind-mount the namespace onto", target))
}

/// Brings `lo` up in the calling thread's network namespace: an
/// `SIOCSIFFLAGS` ioctl on a socket made in that namespace (netdevice(7)).
pub(super) fn loopback_up() -> std::io::Result<()> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    crate::sys::set_interface_up(sock.as_fd(), c"lo")
}

/// Unmounts and unlinks every pin in `ns`; missing ones are fine.
pub fn unpin_all(ns: &PodNamespaces) -> Result<(), OsError> {
    for (_, path) in ns.pins() {
        mounts::unmount(path)?;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(OsError::new("remove namespace pin", path, e)),
        }
    }
    Ok(())
}

/// Whether every pin of `ns` still holds a namespace (false after a
/// reboot, or after someone unmounted them).
pub fn all_pinned(ns: &PodNamespaces) -> bool {
    ns.pins().all(|(_, path)| mounts::is_nsfs(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn pins_new_namespaces_with_hostname_and_lo_up_then_unpins() {
        if !crate::testing::root_or_skip("makes and pins namespaces") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns_dir = dir.path().canonicalize().unwrap().join("ns");
        std::fs::create_dir(&ns_dir).unwrap();
        let req = PinRequest {
            dir: ns_dir.clone(),
            net: true,
            ipc: true,
            uts_hostname: Some("pinned-host".into()),
            userns: None,
        };
        let ns = create_pinned(req).unwrap();
        assert!(all_pinned(&ns));
        let net = ns.net.clone().unwrap();
        let own = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_ne!(std::fs::metadata(&net).unwrap().ino(), own, "a new netns");

        // Look inside from another throwaway thread.
        let uts = ns.uts.clone().unwrap();
        let (hostname, lo_up) = std::thread::spawn(move || {
            let f = std::fs::File::open(&uts).unwrap();
            nix::sched::setns(f, CloneFlags::CLONE_NEWUTS).unwrap();
            let n = std::fs::File::open(&net).unwrap();
            nix::sched::setns(n, CloneFlags::CLONE_NEWNET).unwrap();
            let hostname = nix::unistd::gethostname().unwrap();
            // In the pod's netns, a socket can bind 127.0.0.1 only if lo is up.
            let lo_up = std::net::UdpSocket::bind("127.0.0.1:0").is_ok();
            (hostname, lo_up)
        })
        .join()
        .unwrap();
        assert_eq!(hostname, "pinned-host");
        assert!(lo_up, "lo is up in the pod's netns");

        unpin_all(&ns).unwrap();
        assert!(!all_pinned(&ns));
        assert!(mounts::mount_points_under(&ns_dir).unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&ns_dir).unwrap().count(), 0);
    }

    #[test]
    fn nothing_requested_means_no_thread_and_no_pins() {
        let dir = tempfile::tempdir().unwrap();
        let ns = create_pinned(PinRequest {
            dir: dir.path().to_owned(),
            net: false,
            ipc: false,
            uts_hostname: None,
            userns: None,
        })
        .unwrap();
        assert_eq!(ns, PodNamespaces::default());
        assert!(all_pinned(&ns));
    }
}
