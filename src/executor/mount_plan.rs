//! The container's mounts decided as plain data: from the OCI spec and the
//! rootfs path, [`MountPlan::new`] lists every mount, node, symlink and
//! pivot step in the order `rootfs::execute` takes them, with their flags,
//! data and propagation. Nothing here touches the system, so the order and
//! the flags are unit-tested without root.
//!
//! The order and the rules are runc's (`libcontainer/rootfs_linux.go`):
//! 1. `/` is made rslave recursively before anything is mounted or
//!    unmounted, so nothing done in the container's mount namespace ever
//!    propagates to the host (an unmount that reaches the host takes its
//!    /proc, /sys and cgroups). Only a spec whose `rootfsPropagation` is
//!    shared (a Bidirectional mount) makes `/` rshared instead, so its
//!    mounts stay peers of the host's; the mount the rootfs lives on is
//!    then made private first, so the container's own mounts under the
//!    rootfs do not reach the host (runc's `rootfsParentMountPrivate`).
//! 2. The rootfs is bind-mounted onto itself: pivot_root(2) needs a mount
//!    point. (The container module mounts the overlay there before start;
//!    overlays are not mounted here.)
//! 3. The spec's mounts, in order. A bind mount ignores every flag but
//!    `MS_BIND|MS_REC`, so `ro`, `nosuid` and the others take a second,
//!    remounting call; propagation is a call of its own after either kind.
//!    A `cgroup` mount becomes the host's cgroup filesystems as runc mounts
//!    them ([`CgroupMounts`]).
//! 4. A fresh /dev (a tmpfs on `/dev`) gets runc's default nodes, the
//!    `/proc/self/fd` symlinks, `ptmx` pointing into its own devpts and the
//!    console; then the spec's devices.
//! 5. `pivot_root(".", ".")` stacks the old root on top of the new one;
//!    after making it rslave (again so the unmount cannot propagate) it is
//!    detached with `umount2(MNT_DETACH)`. This avoids needing a directory
//!    for the old root inside the container (pivot_root(2), NOTES).
//! 6. After the pivot (and after the working directory is made): sysctls,
//!    the spec's rootfs propagation, masked paths, read-only paths, and a
//!    read-only root last.
//!
//! What only the running system can tell is left to the executing step and
//! said in its doc: whether a bind source is a directory, whether a masked
//! path is one, the locked flags a read-only remount must keep.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::step::StepError;
use crate::cgroups::CgroupFs;

/// Where a step acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A path as the process sees it before the pivot (`/`, the rootfs).
    Host(PathBuf),
    /// A path inside the rootfs, resolved at execution with symlinks
    /// followed as if the rootfs were `/` (`rootfs::secure_join`), so an
    /// image's symlink cannot point a mount at the host.
    Rootfs(PathBuf),
    /// An entry of the container's `/dev`: `/dev` resolved as `Rootfs`,
    /// the name itself not followed.
    Dev(String),
    /// A path as the container sees it, after the pivot.
    Container(PathBuf),
}

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCall {
    pub source: Option<PathBuf>,
    pub target: Target,
    pub fstype: Option<String>,
    pub flags: MsFlags,
    pub data: Option<String>,
}

impl MountCall {
    /// A propagation change (`MS_SLAVE | MS_REC`, ...) of the mount at
    /// `target`: mount(2) with only the flags.
    pub fn propagation(target: Target, flags: MsFlags) -> Self {
        Self {
            source: None,
            target,
            fstype: None,
            flags,
            data: None,
        }
    }

    /// A bind mount (`MS_BIND`, plus `MS_REC` when `recursive`).
    pub fn bind(source: impl Into<PathBuf>, target: Target, recursive: bool) -> Self {
        let rec = if recursive {
            MsFlags::MS_REC
        } else {
            MsFlags::empty()
        };
        Self {
            source: Some(source.into()),
            target,
            fstype: None,
            flags: MsFlags::MS_BIND | rec,
            data: None,
        }
    }

    /// The remount that gives a bind mount its other flags.
    pub fn bind_remount(target: Target, flags: MsFlags) -> Self {
        Self::propagation(target, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags)
    }
}

/// A device node to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub target: Target,
    pub kind: NodeKind,
    pub major: u64,
    pub minor: u64,
    /// Permission bits, set exactly (mknod's are filtered by the umask).
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// One step of building the container's filesystem view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountStep {
    /// mount(2); its failure fails the start.
    Mount(MountCall),
    /// mount(2); when it fails, `fallback` instead. sysfs may refuse a fresh
    /// mount (a network namespace not owned by our user namespace): the
    /// host's /sys is bound read-only instead, as runc does.
    MountOr {
        call: MountCall,
        fallback: Vec<MountStep>,
    },
    /// `mkdir -p` (mode 0755) of a filesystem's mount point.
    MakeDir(Target),
    /// The mount point of a bind mount: a directory when `source` is one,
    /// else an empty file (and its parent directories).
    BindTarget { source: PathBuf, target: Target },
    /// mknod(2), unless something is already there; without `CAP_MKNOD`
    /// the host's node of the same name in /dev is bound instead.
    MakeNode(Node),
    /// symlink(2) `path` → `to`; an existing `path` is kept, or first
    /// removed when `replace`. With `only_if_exists`, only when that path
    /// exists (on the host, before the pivot).
    Symlink {
        to: PathBuf,
        path: Target,
        replace: bool,
        only_if_exists: Option<PathBuf>,
    },
    /// The process's terminal bound onto `target` (an empty file made
    /// first), so programs opening /dev/console reach the same pty. The
    /// terminal's name is known only in the container's process.
    BindConsole(Target),
    /// chdir(2).
    Chdir(Target),
    /// `pivot_root(".", ".")`: the directory we are in becomes `/`, the old
    /// root stacked on top of it.
    PivotRoot,
    /// umount2(".", `MNT_DETACH`): the old root, stacked on top of the new
    /// one by the pivot, leaves the container's view.
    DetachOldRoot,
    /// Writes `value` to `/proc/sys/<key with dots as slashes>`.
    Sysctl { key: String, value: String },
    /// Hides a path: a file gets /dev/null bound on top, a directory an
    /// empty read-only tmpfs; a missing path needs no mask.
    Mask(Target),
    /// mount_setattr(2) of `MOUNT_ATTR_RDONLY` with `AT_RECURSIVE`: the
    /// bind mount and every mount below it read-only (a plain `ro` bind
    /// leaves the submounts writable).
    RecursiveReadOnly(Target),
    /// Makes the mount `path` lives on private (not recursive): the
    /// nearest ancestor that is a mount point.
    PrivateParent(Target),
    /// Makes a path read-only (bound onto itself first when `bind_first`),
    /// keeping the nosuid/nodev/noexec it has: a bind remount that drops a
    /// locked flag fails. A missing path is skipped.
    ReadOnly { target: Target, bind_first: bool },
}

/// What a spec's `cgroup` mount (at `/sys/fs/cgroup`) needs to know.
///
/// With a cgroup namespace of its own (new or joined), the container gets
/// fresh mounts of the host's hierarchies, which show the namespace's root:
/// its own cgroup. Without one, a fresh mount would show the host's whole
/// tree, so the container's own directories are bound instead (runc's
/// choice for v1 without a cgroup namespace). Read-only unless the spec's
/// options say `rw` (privileged containers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// The host's cgroup filesystems; `None` on a host without any (the
    /// mount is then left out).
    pub fs: Option<CgroupFs>,
    /// The container has a cgroup namespace of its own.
    pub namespaced: bool,
    /// The container's cgroup directories on the host, one per hierarchy
    /// (for the bound form).
    pub dirs: Vec<PathBuf>,
}

/// Every step of a container's mounts, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountPlan {
    /// Up to and including the pivot: paths are the host's or the rootfs's.
    pub before_pivot: Vec<MountStep>,
    /// After the pivot and the working directory: the container's paths.
    pub after_pivot: Vec<MountStep>,
}

/// The nodes every container gets on a fresh /dev (runc's defaults).
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The symlinks of a fresh /dev: name → target.
const DEV_SYMLINKS: [(&str, &str); 4] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

impl MountPlan {
    /// The plan for `spec`, whose root filesystem is already at `rootfs`
    /// (an absolute, canonical path); `cgroups` serves its `cgroup` mount.
    pub fn new(rootfs: &Path, spec: &Spec, cgroups: &CgroupMounts) -> Result<Self, StepError> {
        let slave_rec = MsFlags::MS_SLAVE | MsFlags::MS_REC;
        let linux = spec.linux().as_ref();
        let root_shared = linux
            .and_then(|l| l.rootfs_propagation().as_deref())
            .and_then(propagation_flag)
            .is_some_and(|f| f.contains(MsFlags::MS_SHARED));
        let mut steps = if root_shared {
            vec![
                MountStep::Mount(MountCall::propagation(
                    Target::Host("/".into()),
                    MsFlags::MS_SHARED | MsFlags::MS_REC,
                )),
                MountStep::PrivateParent(Target::Host(rootfs.into())),
            ]
        } else {
            vec![MountStep::Mount(MountCall::propagation(
                Target::Host("/".into()),
                slave_rec,
            ))]
        };
        steps.push(MountStep::Mount(MountCall::bind(
            rootfs,
            Target::Host(rootfs.into()),
            true,
        )));

        let mut dev_tmpfs = false;
        let mut devpts = false;
        for m in spec.mounts().as_deref().unwrap_or_default() {
            let target = Target::Rootfs(m.destination().clone());
            let options = MountOptions::parse(m.options().as_deref().unwrap_or_default());
            let typ = m.typ().as_deref().unwrap_or("bind");
            if typ == "cgroup" {
                steps.extend(cgroup_steps(target, &options, cgroups));
                continue;
            }
            if options.flags.contains(MsFlags::MS_BIND) || typ == "bind" {
                let source = m.source().as_deref().ok_or_else(|| {
                    StepError::msg(
                        format!("mount on {}", m.destination().display()),
                        "a bind mount needs a source",
                    )
                })?;
                steps.extend(bind(source, target, &options));
                continue;
            }
            steps.push(MountStep::MakeDir(target.clone()));
            let call = MountCall {
                source: Some(m.source().clone().unwrap_or_else(|| PathBuf::from(typ))),
                target: target.clone(),
                fstype: Some(typ.to_owned()),
                flags: options.flags,
                data: options.data(),
            };
            steps.push(if typ == "sysfs" {
                let ro_sys = MountOptions::parse(&["rbind", "ro", "nosuid", "nodev", "noexec"]);
                MountStep::MountOr {
                    call,
                    fallback: bind(Path::new("/sys"), target.clone(), &ro_sys),
                }
            } else {
                MountStep::Mount(call)
            });
            for p in &options.propagation {
                steps.push(MountStep::Mount(MountCall::propagation(target.clone(), *p)));
            }
            if options.recursive_readonly {
                steps.push(MountStep::RecursiveReadOnly(target.clone()));
            }
            dev_tmpfs |= m.destination() == Path::new("/dev") && typ == "tmpfs";
            devpts |= typ == "devpts";
        }

        if dev_tmpfs {
            for (name, major, minor) in DEFAULT_DEVICES {
                steps.push(MountStep::MakeNode(Node {
                    target: Target::Dev(name.to_owned()),
                    kind: NodeKind::Char,
                    major,
                    minor,
                    mode: 0o666,
                    uid: None,
                    gid: None,
                }));
            }
            for (name, to) in DEV_SYMLINKS {
                steps.push(MountStep::Symlink {
                    to: to.into(),
                    path: Target::Dev(name.to_owned()),
                    replace: false,
                    only_if_exists: None,
                });
            }
            steps.push(MountStep::Symlink {
                to: "/proc/kcore".into(),
                path: Target::Dev("core".into()),
                replace: false,
                only_if_exists: Some("/proc/kcore".into()),
            });
            if devpts {
                // The ptmx of the container's own devpts instance.
                steps.push(MountStep::Symlink {
                    to: "pts/ptmx".into(),
                    path: Target::Dev("ptmx".into()),
                    replace: true,
                    only_if_exists: None,
                });
            }
            let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
            if terminal {
                steps.push(MountStep::BindConsole(Target::Dev("console".into())));
            }
        }
        for d in linux
            .and_then(|l| l.devices().as_deref())
            .unwrap_or_default()
        {
            let kind = match d.typ() {
                LinuxDeviceType::B => NodeKind::Block,
                LinuxDeviceType::P => NodeKind::Fifo,
                _ => NodeKind::Char,
            };
            steps.push(MountStep::MakeNode(Node {
                target: Target::Rootfs(d.path().clone()),
                kind,
                major: d.major() as u64,
                minor: d.minor() as u64,
                mode: d.file_mode().unwrap_or(0o666),
                uid: d.uid(),
                gid: d.gid(),
            }));
        }

        let dot = || Target::Container(".".into());
        steps.extend([
            MountStep::Chdir(Target::Host(rootfs.into())),
            MountStep::PivotRoot,
            // A private or shared old root could carry our unmount to the
            // host (runc: "we don't want our unmount to propagate").
            MountStep::Mount(MountCall::propagation(dot(), slave_rec)),
            MountStep::DetachOldRoot,
            MountStep::Chdir(Target::Container("/".into())),
        ]);

        let mut after = Vec::new();
        if let Some(sysctls) = linux.and_then(|l| l.sysctl().as_ref()) {
            for (key, value) in sysctls {
                after.push(MountStep::Sysctl {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        if let Some(word) = linux.and_then(|l| l.rootfs_propagation().as_deref()) {
            let flags = propagation_flag(word).ok_or_else(|| {
                StepError::msg("rootfs propagation", format!("unknown mode {word:?}"))
            })?;
            after.push(MountStep::Mount(MountCall::propagation(
                Target::Container("/".into()),
                flags,
            )));
        }
        for path in linux
            .and_then(|l| l.masked_paths().as_deref())
            .unwrap_or_default()
        {
            after.push(MountStep::Mask(Target::Container(path.into())));
        }
        for path in linux
            .and_then(|l| l.readonly_paths().as_deref())
            .unwrap_or_default()
        {
            after.push(MountStep::ReadOnly {
                target: Target::Container(path.into()),
                bind_first: true,
            });
        }
        if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
            after.push(MountStep::ReadOnly {
                target: Target::Container("/".into()),
                bind_first: false,
            });
        }
        Ok(Self {
            before_pivot: steps,
            after_pivot: after,
        })
    }
}

/// The steps of a `cgroup` mount at `target` (see [`CgroupMounts`]). The
/// spec's flags (`nosuid`, `noexec`, `nodev`, `ro`) go to every mount; on
/// v1 the tmpfs holding the hierarchies is made read-only last, once its
/// mount points and symlinks are in place.
fn cgroup_steps(target: Target, options: &MountOptions, cgroups: &CgroupMounts) -> Vec<MountStep> {
    let Some(fs) = &cgroups.fs else {
        return Vec::new();
    };
    let Target::Rootfs(base) = &target else {
        return Vec::new();
    };
    let flags = options.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    let bound = MountOptions {
        flags: flags | MsFlags::MS_BIND | MsFlags::MS_REC,
        ..MountOptions::default()
    };
    // The form of one hierarchy whose host mount point is `mount_point`.
    let hierarchy = |at: Target, fstype: &str, data: Option<&str>, mount_point: Option<&Path>| {
        if cgroups.namespaced {
            return vec![
                MountStep::MakeDir(at.clone()),
                MountStep::Mount(MountCall {
                    source: Some(PathBuf::from(fstype)),
                    target: at,
                    fstype: Some(fstype.to_owned()),
                    flags,
                    data: data.map(str::to_owned),
                }),
            ];
        }
        let own = cgroups
            .dirs
            .iter()
            .find(|d| mount_point.is_none_or(|m| d.starts_with(m)));
        match own {
            Some(dir) => bind(dir, at, &bound),
            // Not in this hierarchy: nothing of it to show.
            None => Vec::new(),
        }
    };
    match fs {
        CgroupFs::V2 => hierarchy(target, "cgroup2", None, None),
        CgroupFs::V1(hierarchies) => {
            let tmpfs_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            let mut steps = vec![
                MountStep::MakeDir(target.clone()),
                MountStep::Mount(MountCall {
                    source: Some("tmpfs".into()),
                    target: target.clone(),
                    fstype: Some("tmpfs".into()),
                    flags: tmpfs_flags,
                    data: Some("mode=755".into()),
                }),
            ];
            for h in hierarchies {
                let at = Target::Rootfs(base.join(&h.name));
                steps.extend(hierarchy(at, "cgroup", Some(&h.data), Some(&h.mount_point)));
                for alias in &h.aliases {
                    steps.push(MountStep::Symlink {
                        to: PathBuf::from(&h.name),
                        path: Target::Rootfs(base.join(alias)),
                        replace: false,
                        only_if_exists: None,
                    });
                }
            }
            if flags.contains(MsFlags::MS_RDONLY) {
                steps.push(MountStep::Mount(MountCall::bind_remount(
                    target,
                    tmpfs_flags | MsFlags::MS_RDONLY,
                )));
            }
            steps
        }
    }
}

/// A bind mount's steps: its mount point, the bind, the remount that
/// applies its other flags, its propagation.
fn bind(source: &Path, target: Target, options: &MountOptions) -> Vec<MountStep> {
    let mut steps = vec![
        MountStep::BindTarget {
            source: source.to_owned(),
            target: target.clone(),
        },
        MountStep::Mount(MountCall::bind(
            source,
            target.clone(),
            options.flags.contains(MsFlags::MS_REC),
        )),
    ];
    let extra = options.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if !extra.is_empty() {
        steps.push(MountStep::Mount(MountCall::bind_remount(
            target.clone(),
            extra,
        )));
    }
    if options.recursive_readonly {
        steps.push(MountStep::RecursiveReadOnly(target.clone()));
    }
    for p in &options.propagation {
        steps.push(MountStep::Mount(MountCall::propagation(target.clone(), *p)));
    }
    steps
}

/// Mount options split the way mount(2) wants them.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Flags to clear, for `rw`, `suid` and friends over a default.
    pub clear: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: Vec<String>,
    /// `rro` (runc's word): read-only recursively, by mount_setattr(2).
    pub recursive_readonly: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            clear: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
            recursive_readonly: false,
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
                "rro" => {
                    out.recursive_readonly = true;
                    continue;
                }
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

#[cfg(test)]
#[path = "mount_plan_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "mount_plan_cgroup_tests.rs"]
mod cgroup_tests;
