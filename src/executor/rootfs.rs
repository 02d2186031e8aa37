//! The container's filesystem view, built inside its new mount namespace:
//! spec mounts in order, /dev nodes and symlinks, `pivot_root`, then masked
//! and read-only paths.
//!
//! The order and the rules are runc's (`libcontainer/rootfs_linux.go`):
//! 1. `/` is made rslave recursively before anything is mounted or
//!    unmounted, so nothing done here ever propagates to the host (an
//!    unmount that reaches the host takes its /proc, /sys and cgroups).
//! 2. The root is bind-mounted onto itself: pivot_root(2) needs a mount
//!    point. The rootfs dir is prepared by the caller (the container module
//!    mounts the overlay there before start); we do not mount overlays.
//! 3. Mount destinations are resolved inside the rootfs with symlinks
//!    followed as if the rootfs were `/`, so an image's symlink cannot point
//!    a mount at the host.
//! 4. `pivot_root(".", ".")` stacks the old root on top of the new one;
//!    after making it rslave (again so the unmount cannot propagate) it is
//!    detached with `umount2(MNT_DETACH)`. This avoids needing a directory
//!    for the old root inside the container (pivot_root(2), NOTES).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid, chdir, chown, pivot_root};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

use super::step::StepError;

/// Resolves `path` inside `root` as if `root` were `/`: `..` stops at the
/// root and absolute symlinks restart from it. Missing components are kept
/// as they are (they will be created).
pub fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, StepError> {
    let mut resolved = PathBuf::new();
    let mut pending: VecDeque<OsString> = components(path);
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(StepError::errno(
                        format!("resolve {} in the rootfs", path.display()),
                        Errno::ELOOP,
                    ));
                }
                let target = std::fs::read_link(&full)
                    .map_err(|e| StepError::io(format!("readlink {}", full.display()), &e))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut next = components(&target);
                next.extend(pending);
                pending = next;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// Mount options split the way mount(2) wants them.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags to clear, for `rw`, `suid` and friends over a default.
    pub clear: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            clear: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
        }
    }
}

impl MountOptions {
    pub fn parse<S: AsRef<str>>(options: &[S]) -> Self {
        let mut out = Self::default();
        for option in options {
            let option = option.as_ref();
            let (set, clear) = match option {
                "defaults" => (MsFlags::empty(), MsFlags::empty()),
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
                "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
                "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
                "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
                _ => {
                    if let Some(p) = propagation_flag(option) {
                        out.propagation.push(p);
                    } else {
                        out.data.push(option.to_owned());
                    }
                    continue;
                }
            };
            out.flags.insert(set);
            out.flags.remove(clear);
            out.clear.insert(clear);
        }
        out
    }

    fn data(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

/// `rslave` → `MS_SLAVE | MS_REC`, and the other propagation words.
pub fn propagation_flag(word: &str) -> Option<MsFlags> {
    Some(match word {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

fn mnt(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), StepError> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        let what = match (fstype, source) {
            (Some(t), _) => t.to_owned(),
            (None, Some(s)) => s.display().to_string(),
            (None, None) => "remount".to_owned(),
        };
        StepError::errno(format!("mount {what} on {}", target.display()), e)
    })
}

/// Steps 1 and 2: the namespace's mounts become slaves of the host's, and
/// the rootfs becomes a mount point of its own.
pub fn prepare(rootfs: &Path) -> Result<(), StepError> {
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    mnt(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
}

/// What the mount steps found that later steps need.
#[derive(Debug, Default)]
pub struct MountSummary {
    /// A tmpfs was mounted on /dev: it needs nodes and symlinks.
    pub dev_tmpfs: bool,
    pub devpts: bool,
}

/// Mounts the spec's mounts into the rootfs, in order.
pub fn mount_all(rootfs: &Path, mounts: &[Mount]) -> Result<MountSummary, StepError> {
    let mut summary = MountSummary::default();
    for m in mounts {
        let dest = secure_join(rootfs, m.destination())?;
        let options = MountOptions::parse(m.options().as_deref().unwrap_or_default());
        let typ = m.typ().as_deref().unwrap_or("bind");
        if options.flags.contains(MsFlags::MS_BIND) || typ == "bind" {
            let source = m.source().as_deref().ok_or_else(|| {
                StepError::msg(
                    format!("mount on {}", m.destination().display()),
                    "a bind mount needs a source",
                )
            })?;
            bind(source, &dest, &options)?;
        } else {
            mkdir_all(&dest)?;
            let source = m.source().as_deref().unwrap_or(Path::new(typ));
            let flags = options.flags;
            let result = mnt(
                Some(source),
                &dest,
                Some(typ),
                flags,
                options.data().as_deref(),
            );
            match result {
                // sysfs may refuse a fresh mount (a network namespace not
                // owned by our user namespace): bind the host's, read-only,
                // as runc does.
                Err(_) if typ == "sysfs" => bind(
                    Path::new("/sys"),
                    &dest,
                    &MountOptions::parse(&["rbind", "ro", "nosuid", "nodev", "noexec"]),
                )?,
                other => other?,
            }
            for p in &options.propagation {
                mnt(None, &dest, None, *p, None)?;
            }
            if m.destination() == Path::new("/dev") && typ == "tmpfs" {
                summary.dev_tmpfs = true;
            }
            if typ == "devpts" {
                summary.devpts = true;
            }
        }
    }
    Ok(summary)
}

fn bind(source: &Path, dest: &Path, options: &MountOptions) -> Result<(), StepError> {
    let meta = std::fs::metadata(source)
        .map_err(|e| StepError::io(format!("bind mount source {}", source.display()), &e))?;
    if meta.is_dir() {
        mkdir_all(dest)?;
    } else {
        if let Some(parent) = dest.parent() {
            mkdir_all(parent)?;
        }
        if std::fs::symlink_metadata(dest).is_err() {
            std::fs::File::create(dest)
                .map_err(|e| StepError::io(format!("create {}", dest.display()), &e))?;
        }
    }
    let recursive = options.flags & MsFlags::MS_REC;
    mnt(Some(source), dest, None, MsFlags::MS_BIND | recursive, None)?;
    // A bind mount ignores every flag but MS_BIND|MS_REC: ro, nosuid and
    // the others need a remount of the new mount.
    let extra = options.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if !extra.is_empty() {
        mnt(
            None,
            dest,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            None,
        )?;
    }
    for p in &options.propagation {
        mnt(None, dest, None, *p, None)?;
    }
    Ok(())
}

fn mkdir_all(path: &Path) -> Result<(), StepError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| StepError::io(format!("mkdir {}", path.display()), &e))
}

/// The nodes every container gets on a fresh /dev (runc's defaults).
fn default_devices() -> [(&'static str, u64, u64); 6] {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
}

/// Nodes, symlinks and the console of a fresh /dev, then the spec's devices.
pub fn populate_dev(
    rootfs: &Path,
    summary: &MountSummary,
    devices: &[LinuxDevice],
    console: Option<&Path>,
) -> Result<(), StepError> {
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    if summary.dev_tmpfs {
        for (name, major, minor) in default_devices() {
            make_node(
                &dev.join(name),
                SFlag::S_IFCHR,
                major,
                minor,
                0o666,
                None,
                None,
            )?;
        }
        let links = [
            ("/proc/self/fd", "fd"),
            ("/proc/self/fd/0", "stdin"),
            ("/proc/self/fd/1", "stdout"),
            ("/proc/self/fd/2", "stderr"),
        ];
        for (target, name) in links {
            link(target, &dev.join(name))?;
        }
        if Path::new("/proc/kcore").exists() {
            link("/proc/kcore", &dev.join("core"))?;
        }
        if summary.devpts {
            // The ptmx of the container's own devpts instance.
            let ptmx = dev.join("ptmx");
            let _ = std::fs::remove_file(&ptmx);
            link("pts/ptmx", &ptmx)?;
        }
        if let Some(console) = console {
            // runc binds the terminal onto /dev/console so `tty` and
            // programs opening the console reach the same pty.
            let target = dev.join("console");
            if std::fs::symlink_metadata(&target).is_err() {
                std::fs::File::create(&target)
                    .map_err(|e| StepError::io(format!("create {}", target.display()), &e))?;
            }
            mnt(Some(console), &target, None, MsFlags::MS_BIND, None)?;
        }
    }
    for d in devices {
        let path = secure_join(rootfs, d.path())?;
        if let Some(parent) = path.parent() {
            mkdir_all(parent)?;
        }
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        make_node(
            &path,
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid(),
            d.gid(),
        )?;
    }
    Ok(())
}

fn make_node(
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), StepError> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    let perm = Mode::from_bits_truncate(mode & 0o7777);
    match mknod(path, kind, perm, makedev(major, minor)) {
        Ok(()) => {
            // mknod's mode is filtered by the umask: set it exactly.
            std::fs::set_permissions(
                path,
                std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777),
            )
            .map_err(|e| StepError::io(format!("chmod {}", path.display()), &e))?;
            chown(path, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
                .map_err(|e| StepError::errno(format!("chown {}", path.display()), e))
        }
        // Without CAP_MKNOD, bind the host's node of the same name.
        Err(Errno::EPERM) => {
            let name = path.file_name().map(PathBuf::from).unwrap_or_default();
            let host = Path::new("/dev").join(name);
            std::fs::File::create(path)
                .map_err(|e| StepError::io(format!("create {}", path.display()), &e))?;
            mnt(Some(&host), path, None, MsFlags::MS_BIND, None)
        }
        Err(e) => Err(StepError::errno(format!("mknod {}", path.display()), e)),
    }
}

fn link(target: &str, path: &Path) -> Result<(), StepError> {
    match symlink(target, path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(StepError::io(
            format!("symlink {} -> {target}", path.display()),
            &e,
        )),
        _ => Ok(()),
    }
}

/// Step 4: the rootfs becomes `/`; the host's tree is gone from view.
pub fn pivot(rootfs: &Path) -> Result<(), StepError> {
    chdir(rootfs).map_err(|e| StepError::errno(format!("chdir {}", rootfs.display()), e))?;
    pivot_root(".", ".").map_err(|e| StepError::errno("pivot_root", e))?;
    // The old root now sits on top of the new one at ".". Make it a slave
    // first: a private or shared old root could carry our unmount to the
    // host (runc: "we don't want our unmount to propagate").
    mnt(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| StepError::errno("unmount the old root", e))?;
    chdir("/").map_err(|e| StepError::errno("chdir /", e))
}

/// After the pivot: the spec's rootfs propagation, sysctls, masked and
/// read-only paths, and a read-only root. Paths are the container's.
pub fn finish(spec: &Spec) -> Result<(), StepError> {
    let linux = spec.linux().as_ref();
    if let Some(sysctls) = linux.and_then(|l| l.sysctl().as_ref()) {
        for (key, value) in sysctls {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value)
                .map_err(|e| StepError::io(format!("set sysctl {key}={value}"), &e))?;
        }
    }
    if let Some(word) = linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        let flag = propagation_flag(word).ok_or_else(|| {
            StepError::msg("rootfs propagation", format!("unknown mode {word:?}"))
        })?;
        mnt(None, Path::new("/"), None, flag, None)?;
    }
    for path in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        mask(Path::new(path))?;
    }
    for path in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        readonly(Path::new(path), true)?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        readonly(Path::new("/"), false)?;
    }
    Ok(())
}

/// A masked file gets /dev/null on top, a masked directory an empty
/// read-only tmpfs; a missing path needs no mask.
fn mask(path: &Path) -> Result<(), StepError> {
    match std::fs::metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => mnt(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        ),
        Ok(_) => mnt(
            Some(Path::new("/dev/null")),
            path,
            None,
            MsFlags::MS_BIND,
            None,
        ),
    }
}

/// Makes a path read-only, keeping the nosuid/nodev/noexec it has (a bind
/// remount that drops a locked flag fails).
fn readonly(path: &Path, bind_first: bool) -> Result<(), StepError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if bind_first {
        mnt(
            Some(path),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    }
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    if let Ok(st) = nix::sys::statvfs::statvfs(path) {
        use nix::sys::statvfs::FsFlags;
        let have = st.flags();
        for (fs, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ] {
            if have.contains(fs) {
                flags |= ms;
            }
        }
    }
    mnt(None, path, None, flags, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("/", root.join("usr/top")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/lib/x")).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            secure_join(root, Path::new("/usr/escape/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../proc")).unwrap(),
            root.join("proc")
        );
        assert_eq!(
            secure_join(root, Path::new("/usr/top/usr/top/dev")).unwrap(),
            root.join("dev")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(secure_join(root, Path::new("/loop/x")).is_err());
    }

    #[test]
    fn mount_options_split_flags_propagation_and_data() {
        let o =
            MountOptions::parse(&["rbind", "rslave", "ro", "nosuid", "mode=755", "size=65536k"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(o.data().as_deref(), Some("mode=755,size=65536k"));
        let o = MountOptions::parse(&["ro", "rw"]);
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
    }
}
