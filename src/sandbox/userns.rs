//! A pod's own user namespace (`hostUsers: false`, CRI `userns_options`
//! mode `POD`), made with the pod and pinned beside its other namespaces.
//!
//! unshare(2) refuses `CLONE_NEWUSER` to a thread of a multi-threaded
//! process, so a short-lived child process makes it
//! ([`crate::sys::spawn_ns_holder`]): one unshare of the user namespace
//! together with the pod's new network, IPC and UTS namespaces, which the
//! kernel makes after the user namespace and so owned by it
//! (user_namespaces(7)). That ownership is what lets the pod's containers,
//! root only inside the user namespace, set `net.*` and IPC sysctls and
//! mount sysfs and mqueue. The daemon (root on the host, the namespace's
//! owner) then writes the child's `uid_map` and `gid_map`, bind-mounts its
//! `/proc/<pid>/ns/*` onto the pod's pins, sets the hostname and brings
//! `lo` up from a throwaway thread that joins the new UTS and network
//! namespaces (as root of the parent namespace it holds every capability
//! in them), and kills the child. CNI then runs on the pinned netns as
//! for any pod.
//!
//! Every error leaves at most some pins, which the caller removes with the
//! pod dir; the child is killed and reaped on every path.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

use super::error::OsError;
use super::namespaces::{PinRequest, loopback_up, pin};
use crate::idmap::UserNamespace;

/// Makes the pod's user namespace and, inside it, the namespaces `req`
/// asks for; pins them all where `req.paths()` says.
pub(super) fn create_pinned(req: &PinRequest, userns: &UserNamespace) -> Result<(), OsError> {
    let mut flags = CloneFlags::CLONE_NEWUSER;
    flags.set(CloneFlags::CLONE_NEWNET, req.net);
    flags.set(CloneFlags::CLONE_NEWIPC, req.ipc);
    flags.set(CloneFlags::CLONE_NEWUTS, req.uts_hostname.is_some());
    let holder = crate::sys::spawn_ns_holder(flags).map_err(|e| {
        OsError::new(
            "make the user namespace of",
            &req.dir,
            std::io::Error::from(e),
        )
    })?;
    let proc_dir = PathBuf::from(format!("/proc/{}", holder.pid));
    let result = set_up(req, userns, &proc_dir);
    holder.finish();
    result
}

fn set_up(req: &PinRequest, userns: &UserNamespace, proc_dir: &Path) -> Result<(), OsError> {
    write_maps(proc_dir, userns)?;
    for (kind, target) in req.paths().pins() {
        pin(&proc_dir.join("ns").join(kind), target)?;
    }
    let paths = req.paths();
    let (net, uts, hostname) = (
        paths.net.clone(),
        paths.uts.clone(),
        req.uts_hostname.clone(),
    );
    if net.is_none() && uts.is_none() {
        return Ok(());
    }
    let dir = req.dir.clone();
    // A fresh thread, thrown away after: it joins the pod's namespaces.
    std::thread::Builder::new()
        .name("ketch-pod-ns".into())
        .spawn(move || inside(uts.as_deref(), hostname.as_deref(), net.as_deref(), &dir))
        .map_err(OsError::with("spawn the namespace thread for", &req.dir))?
        .join()
        .map_err(|_| {
            OsError::new(
                "set up the namespaces of",
                &req.dir,
                std::io::Error::other("the namespace thread panicked"),
            )
        })?
}

/// The child's ID maps: written once, by the daemon, which holds
/// CAP_SETUID and CAP_SETGID where the namespace's parent is, so the
/// child's `setgroups` stays allowed (user_namespaces(7), "Interaction
/// with system calls that change process UIDs or GIDs").
fn write_maps(proc_dir: &Path, userns: &UserNamespace) -> Result<(), OsError> {
    for (file, mapping) in [("uid_map", userns.uid), ("gid_map", userns.gid)] {
        let path = proc_dir.join(file);
        std::fs::write(&path, mapping.map_line()).map_err(OsError::with("write", &path))?;
    }
    Ok(())
}

/// On the throwaway thread: the hostname in the new UTS namespace and
/// `lo` up in the new network namespace (pinned already).
fn inside(
    uts: Option<&Path>,
    hostname: Option<&str>,
    net: Option<&Path>,
    dir: &Path,
) -> Result<(), OsError> {
    if let (Some(uts), Some(hostname)) = (uts, hostname) {
        join(uts, CloneFlags::CLONE_NEWUTS)?;
        nix::unistd::sethostname(hostname).map_err(OsError::with(
            "set the hostname in the new UTS namespace of",
            dir,
        ))?;
    }
    if let Some(net) = net {
        join(net, CloneFlags::CLONE_NEWNET)?;
        loopback_up().map_err(OsError::with(
            "bring lo up in the new network namespace of",
            dir,
        ))?;
    }
    Ok(())
}

fn join(path: &Path, flag: CloneFlags) -> Result<(), OsError> {
    let file = std::fs::File::open(path).map_err(OsError::with("open namespace", path))?;
    setns(file.as_fd(), flag).map_err(OsError::with("join namespace", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::IdMapping;
    use crate::sandbox::mounts;
    use crate::sandbox::namespaces::{all_pinned, create_pinned as pin_all, unpin_all};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_user_namespace_owns_the_pods_other_namespaces() {
        if !crate::testing::root_or_skip("makes and pins a user namespace") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ns_dir = dir.path().canonicalize().unwrap().join("ns");
        std::fs::create_dir(&ns_dir).unwrap();
        let map = IdMapping {
            container_id: 0,
            host_id: 200000,
            length: 65536,
        };
        let ns = pin_all(PinRequest {
            dir: ns_dir.clone(),
            net: true,
            ipc: true,
            uts_hostname: Some("userns-host".into()),
            userns: Some(UserNamespace { uid: map, gid: map }),
        })
        .unwrap();
        assert!(all_pinned(&ns));
        let user = ns.user.clone().unwrap();
        let own = std::fs::metadata("/proc/self/ns/user").unwrap().ino();
        assert_ne!(std::fs::metadata(&user).unwrap().ino(), own, "a new userns");

        // The netns belongs to the new user namespace: NS_GET_USERNS is not
        // in nix, so look from a process that joins both.
        let net = ns.net.clone().unwrap();
        let uts = ns.uts.clone().unwrap();
        let (hostname, lo_up) = std::thread::spawn(move || {
            join(&uts, CloneFlags::CLONE_NEWUTS).unwrap();
            join(&net, CloneFlags::CLONE_NEWNET).unwrap();
            let hostname = nix::unistd::gethostname().unwrap();
            (hostname, std::net::UdpSocket::bind("127.0.0.1:0").is_ok())
        })
        .join()
        .unwrap();
        assert_eq!(hostname, "userns-host");
        assert!(lo_up);
        let out = std::process::Command::new("nsenter")
            .arg(format!("--user={}", user.display()))
            .arg(format!("--net={}", ns.net.as_ref().unwrap().display()))
            .args(["cat", "/proc/self/uid_map"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.split_whitespace().collect::<Vec<_>>(),
            ["0", "200000", "65536"]
        );

        unpin_all(&ns).unwrap();
        assert!(!all_pinned(&ns));
        assert!(mounts::mount_points_under(&ns_dir).unwrap().is_empty());
    }
}
