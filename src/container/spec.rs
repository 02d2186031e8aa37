//! Builds a container's OCI runtime spec from its config (the domain form
//! of the CRI's), its image's config and its pod: the contract between the
//! container lifecycle and the executor, written to the bundle as
//! `config.json`. Pure: no I/O except `stat` of device nodes and host
//! paths, so it is tested without root.
//!
//! The rules follow Kubernetes and containerd (`internal/cri/server/
//! container_create_linux.go`, `pkg/oci/spec_opts.go`): `command` replaces
//! the image's Entrypoint and `args` its Cmd; CRI env overrides the image's
//! by name; the default capability set, masked and read-only paths are
//! containerd's.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceBuilder,
    LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxHugepageLimitBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResources, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use super::config::{ContainerConfig, SecurityProfile};

/// What the image's config contributes to a container.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageRunConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}

/// How the container's PID namespace is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// A new one: the container's process is PID 1.
    Private,
    /// The pod's, joined by path (the pod's init holds it).
    Pod(PathBuf),
    /// The node's.
    Host,
}

/// What the pod contributes: its namespaces (a path joins it, `None` means
/// the node's) and its files.
#[derive(Debug, Clone)]
pub struct PodContext {
    /// The pod's own user namespace (joined first) and its mappings.
    pub user: Option<(PathBuf, crate::idmap::UserNamespace)>,
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub pid: PidNamespace,
    pub hostname: String,
    pub hosts_file: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname_file: PathBuf,
    /// The pod's /dev/shm (a tmpfs of the pod, or the host's).
    pub shm: PathBuf,
    pub sysctls: HashMap<String, String>,
    pub cgroup_parent: String,
    /// The pod's seccomp and AppArmor profiles, for containers without
    /// their own.
    pub seccomp: Option<SecurityProfile>,
    pub apparmor: Option<SecurityProfile>,
    /// The pod's security context is privileged: only then may its
    /// containers be.
    pub privileged: bool,
}

/// The numeric identity the process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// The supplementary groups besides `gid`.
    pub additional_gids: Vec<u32>,
}

impl ResolvedUser {
    /// The process's supplementary groups: its primary group and the
    /// others, as containerd passes them to setgroups(2) and reports them
    /// in ContainerStatus.user.
    pub fn groups(&self) -> Vec<u32> {
        let mut groups = vec![self.gid];
        groups.extend(self.additional_gids.iter().filter(|g| **g != self.gid));
        groups
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "no command specified: the container config has no command or args and the image has no Entrypoint or Cmd"
    )]
    NoCommand,
    #[error("invalid environment variable {0:?}: no name")]
    BadEnv(String),
    #[error("mount host path {path}: {source}")]
    MountSource {
        path: String,
        source: std::io::Error,
    },
    #[error("mount container path {0:?} must be absolute")]
    MountTarget(String),
    #[error("image volume {image:?}: image_sub_path {sub_path:?} {reason}")]
    ImageSubPath {
        image: String,
        sub_path: String,
        reason: String,
    },
    #[error("device {path}: {reason}")]
    Device { path: String, reason: String },
    #[error("unknown capability {0:?}")]
    Capability(String),
    #[error("invalid security context: {0}")]
    Security(String),
    #[error("mount {container_path:?}: {reason}")]
    Mount {
        container_path: String,
        reason: String,
    },
    #[error("building the OCI spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error(transparent)]
    AppArmor(#[from] crate::apparmor::AppArmorError),
    #[error("load the OCI spec of bundle {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("write the OCI spec {path}: {message}")]
    Write { path: PathBuf, message: String },
}

/// The checks of a container's security context and mounts that need no
/// system: what the CRI forbids, refused before anything is made.
pub fn validate(config: &ContainerConfig, pod: &PodContext) -> Result<(), SpecError> {
    let sc = &config.security;
    let bad = |m: &str| Err(SpecError::Security(m.to_owned()));
    if sc.privileged && !pod.privileged {
        // containerd: "no privileged container allowed in sandbox".
        return bad("a privileged container needs a privileged pod sandbox");
    }
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        // The CRI: run_as_group "should only be specified when
        // run_as_user or run_as_username is specified".
        return bad("run_as_group is set without run_as_user or run_as_username");
    }
    if let Some(uid) = sc.run_as_user.filter(|u| u32::try_from(*u).is_err()) {
        return Err(SpecError::Security(format!(
            "run_as_user {uid} is not a valid uid"
        )));
    }
    if let Some(gid) = sc.run_as_group.filter(|g| u32::try_from(*g).is_err()) {
        return Err(SpecError::Security(format!(
            "run_as_group {gid} is not a valid gid"
        )));
    }
    if let Some(gid) = sc
        .supplemental_groups
        .iter()
        .find(|g| u32::try_from(**g).is_err())
    {
        return Err(SpecError::Security(format!(
            "supplemental group {gid} is not a valid gid"
        )));
    }
    if !matches!(
        sc.supplemental_groups_policy.as_str(),
        "" | "Merge" | "Strict"
    ) {
        return Err(SpecError::Security(format!(
            "unknown supplemental_groups_policy {:?}",
            sc.supplemental_groups_policy
        )));
    }
    for m in &config.mounts {
        let reason = if !m.recursive_read_only {
            continue;
        } else if !m.readonly {
            "recursive_read_only needs readonly"
        } else if m.propagation != super::config::Propagation::Private {
            "recursive_read_only needs private propagation"
        } else {
            continue;
        };
        return Err(SpecError::Mount {
            container_path: m.container_path.clone(),
            reason: reason.to_owned(),
        });
    }
    Ok(())
}

/// The argv per Kubernetes: command replaces Entrypoint, args replace Cmd;
/// args alone run after the image's Entrypoint.
pub fn argv(config: &ContainerConfig, image: &ImageRunConfig) -> Result<Vec<String>, SpecError> {
    let argv: Vec<String> = match (config.command.is_empty(), config.args.is_empty()) {
        (true, true) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
        (true, false) => image
            .entrypoint
            .iter()
            .chain(&config.args)
            .cloned()
            .collect(),
        (false, _) => config.command.iter().chain(&config.args).cloned().collect(),
    };
    if argv.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(argv)
}

/// The image's env with the CRI's laid over it by name, order kept, plus
/// PATH and HOSTNAME when neither sets them.
pub fn environment(
    config: &ContainerConfig,
    image: &ImageRunConfig,
    hostname: &str,
) -> Result<Vec<String>, SpecError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    fn set(vars: &mut Vec<(String, String)>, name: &str, value: &str) {
        match vars.iter_mut().find(|(n, _)| n == name) {
            Some(existing) => existing.1 = value.to_owned(),
            None => vars.push((name.to_owned(), value.to_owned())),
        }
    }
    for entry in &image.env {
        let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
        if name.is_empty() {
            return Err(SpecError::BadEnv(entry.clone()));
        }
        set(&mut vars, name, value);
    }
    for var in &config.envs {
        if var.name.is_empty() {
            return Err(SpecError::BadEnv(format!("={}", var.value)));
        }
        set(&mut vars, &var.name, &var.value);
    }
    let has = |vars: &[(String, String)], name: &str| vars.iter().any(|(n, _)| n == name);
    if !has(&vars, "PATH") {
        set(
            &mut vars,
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    if !has(&vars, "HOSTNAME") && !hostname.is_empty() {
        set(&mut vars, "HOSTNAME", hostname);
    }
    Ok(vars
        .into_iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect())
}

/// containerd's default capability set for unprivileged containers.
const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The capabilities this process may hand on: its bounding set. "ALL" and
/// privileged mean these, never a fixed list, as in runc and containerd
/// (`cap.GetAllCapabilities`): a host whose bounding set lacks one (say
/// `CAP_SYS_RESOURCE`) would otherwise fail every privileged start with
/// `capset: Operation not permitted`. A capability this build's OCI types
/// do not name is left out.
pub fn held_capabilities() -> HashSet<Capability> {
    caps::read(None, caps::CapSet::Bounding)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|cap| {
            let name = cap.to_string();
            name.strip_prefix("CAP_")
                .unwrap_or(&name)
                .parse::<Capability>()
                .ok()
        })
        .collect()
}

fn parse_capability(name: &str) -> Result<Capability, SpecError> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse::<Capability>()
        .map_err(|_| SpecError::Capability(name.to_owned()))
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL") || name.eq_ignore_ascii_case("CAP_ALL")
}

/// The capability set: the default (`held`, the runtime's own bounding
/// set, when privileged), with the security context's adds and drops.
/// "ALL" works on either side; adds win over a drop of ALL, as Kubernetes
/// means `drop: [ALL], add: [NET_BIND_SERVICE]`. Every name is checked,
/// so an unknown one is refused even when ALL makes it moot.
pub fn capabilities(
    config: &ContainerConfig,
    held: &HashSet<Capability>,
) -> Result<HashSet<Capability>, SpecError> {
    let sc = &config.security;
    let parse_all = |names: &[String]| -> Result<Vec<Capability>, SpecError> {
        names
            .iter()
            .filter(|n| !is_all(n))
            .map(|n| parse_capability(n))
            .collect()
    };
    let add = parse_all(&sc.add_capabilities)?;
    let drop = parse_all(&sc.drop_capabilities)?;
    parse_all(&sc.add_ambient_capabilities)?;
    if sc.privileged {
        return Ok(held.clone());
    }
    let mut caps: HashSet<Capability> = DEFAULT_CAPABILITIES
        .iter()
        .copied()
        .filter(|c| held.contains(c))
        .collect();
    if sc.add_capabilities.iter().any(|n| is_all(n)) {
        caps.extend(held);
    }
    if sc.drop_capabilities.iter().any(|n| is_all(n)) {
        caps.clear();
    }
    for cap in &drop {
        caps.remove(cap);
    }
    caps.extend(add.iter().filter(|c| held.contains(c)));
    Ok(caps)
}

/// The ambient capabilities asked for, each also kept in the other sets
/// (the kernel raises an ambient capability only when it is permitted and
/// inheritable), and only those the runtime holds.
pub fn ambient_capabilities(
    config: &ContainerConfig,
    held: &HashSet<Capability>,
) -> Result<HashSet<Capability>, SpecError> {
    let mut ambient = HashSet::new();
    for name in &config.security.add_ambient_capabilities {
        if is_all(name) {
            ambient.extend(held);
        } else {
            let cap = parse_capability(name)?;
            if held.contains(&cap) {
                ambient.insert(cap);
            }
        }
    }
    Ok(ambient)
}

fn mount(
    destination: &str,
    typ: &str,
    source: &Path,
    options: &[&str],
) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The mounts every container gets, then the pod's files, then the CRI's.
/// A CRI mount over one of the defaults replaces it, as in containerd.
pub fn mounts(config: &ContainerConfig, pod: &PodContext) -> Result<Vec<Mount>, SpecError> {
    let privileged = config.security.privileged;
    let readonly_rootfs = config.security.readonly_rootfs;
    let sys_mode = if privileged { "rw" } else { "ro" };
    let pod_file_mode = if readonly_rootfs { "ro" } else { "rw" };
    let mut mounts = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
        // The container's own cgroup, as the root of its cgroup namespace:
        // runtimes (JVM, Go, .NET) size themselves from its limits.
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            Path::new("cgroup"),
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        )?,
        mount(
            "/dev/shm",
            "bind",
            &pod.shm,
            &["rbind", "rprivate", "nosuid", "nodev", "noexec", "rw"],
        )?,
        mount(
            "/etc/hosts",
            "bind",
            &pod.hosts_file,
            &["rbind", "rprivate", pod_file_mode],
        )?,
        mount(
            "/etc/resolv.conf",
            "bind",
            &pod.resolv_conf,
            &["rbind", "rprivate", pod_file_mode],
        )?,
        mount(
            "/etc/hostname",
            "bind",
            &pod.hostname_file,
            &["rbind", "rprivate", pod_file_mode],
        )?,
    ];
    for m in &config.mounts {
        if !m.image.is_empty() {
            // An image volume: bound by `add_image_volumes` once mounted.
            continue;
        }
        if !m.container_path.starts_with('/') {
            return Err(SpecError::MountTarget(m.container_path.clone()));
        }
        // A symlinked host path is resolved here, once, so the container
        // sees what the path named at creation.
        let source =
            std::fs::canonicalize(&m.host_path).map_err(|source| SpecError::MountSource {
                path: m.host_path.clone(),
                source,
            })?;
        let propagation = m.propagation.oci_option();
        let mode = if m.readonly { "ro" } else { "rw" };
        let destination = m.container_path.trim_end_matches('/');
        let destination = if destination.is_empty() {
            "/"
        } else {
            destination
        };
        mounts.retain(|existing| existing.destination() != Path::new(destination));
        let mut options = vec!["rbind", propagation, mode];
        if m.recursive_read_only {
            options.push("rro");
        }
        mounts.push(mount(destination, "bind", &source, &options)?);
    }
    Ok(mounts)
}

/// The dir of a mounted image volume that its mount binds: the image's
/// root, or `sub_path` in it, which must be a directory inside the image.
/// The sub-path is relative and has no `..`; a symlink on the way that
/// leads out of the image (an absolute one included: it would name a host
/// path here) is refused rather than followed.
pub fn image_volume_source(root: &Path, image: &str, sub_path: &str) -> Result<PathBuf, SpecError> {
    let bad = |reason: &str| SpecError::ImageSubPath {
        image: image.to_owned(),
        sub_path: sub_path.to_owned(),
        reason: reason.to_owned(),
    };
    let root = std::fs::canonicalize(root).map_err(|e| bad(&format!("cannot resolve: {e}")))?;
    if sub_path.is_empty() {
        return Ok(root);
    }
    let relative = Path::new(sub_path);
    let plain = relative.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !plain {
        return Err(bad("must be a relative path without .. components"));
    }
    let full = match std::fs::canonicalize(root.join(relative)) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(bad("does not exist in the image"));
        }
        Err(e) => return Err(bad(&format!("cannot resolve: {e}"))),
    };
    if !full.starts_with(&root) {
        return Err(bad("leads outside the image"));
    }
    if !full.is_dir() {
        return Err(bad("is not a directory"));
    }
    Ok(full)
}

/// Binds each image volume into the container, read-only whatever the
/// mount asks: `volumes` pairs the index of a CRI mount with `image` with
/// the dir its image is mounted on. A volume over a default mount replaces
/// it, as a host-path mount does.
pub fn add_image_volumes(
    spec: &mut Spec,
    config: &ContainerConfig,
    volumes: &[(usize, PathBuf)],
) -> Result<(), SpecError> {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (index, root) in volumes {
        let Some(m) = config.mounts.get(*index) else {
            continue;
        };
        if !m.container_path.starts_with('/') {
            return Err(SpecError::MountTarget(m.container_path.clone()));
        }
        let source = image_volume_source(root, &m.image, &m.image_sub_path)?;
        let destination = match m.container_path.trim_end_matches('/') {
            "" => "/",
            d => d,
        };
        mounts.retain(|existing| existing.destination() != Path::new(destination));
        mounts.push(mount(
            destination,
            "bind",
            &source,
            &["rbind", "rprivate", "nosuid", "nodev", "ro"],
        )?);
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// Points the spec's mount at `container_path` (as a CRI mount names it)
/// at `source` instead: an idmapped clone of what it bound.
pub fn set_mount_source(spec: &mut Spec, container_path: &str, source: &Path) {
    let destination = match container_path.trim_end_matches('/') {
        "" => "/",
        d => d,
    };
    if let Some(mounts) = spec.mounts_mut().as_mut() {
        for m in mounts.iter_mut() {
            if m.destination() == Path::new(destination) {
                m.set_source(Some(source.to_owned()));
            }
        }
    }
}

/// The propagation of the mount a path lives on, from the text of
/// `/proc/self/mountinfo` (proc(5)): the mount point whose path is the
/// longest prefix of `path` (the last one listed wins, as it is on top),
/// and whether it is shared and whether it is a slave.
pub fn mount_propagation_of(mountinfo: &str, path: &Path) -> Option<(PathBuf, bool, bool)> {
    let mut best: Option<(PathBuf, bool, bool)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        // Spaces and the like are octal escapes (`\040`).
        let point = PathBuf::from(crate::cgroups::parse::unescape_octal(point));
        if !path.starts_with(&point) {
            continue;
        }
        let optional = fields.iter().skip(6).take_while(|f| **f != "-");
        let (mut shared, mut slave) = (false, false);
        for f in optional {
            shared |= f.starts_with("shared:");
            slave |= f.starts_with("master:");
        }
        let longer = best
            .as_ref()
            .is_none_or(|(b, _, _)| point.as_os_str().len() >= b.as_os_str().len());
        if longer {
            best = Some((point, shared, slave));
        }
    }
    best
}

/// Checks that each HostToContainer mount's source lives on a shared or
/// slave mount and each Bidirectional one's on a shared mount: otherwise
/// nothing would propagate and the container would silently see less
/// than it asked for (containerd's `ensureShared`/`ensureSharedOrSlave`).
/// `mountinfo` is the text of the daemon's `/proc/self/mountinfo`.
pub fn check_mount_propagation(config: &ContainerConfig, mountinfo: &str) -> Result<(), SpecError> {
    use super::config::Propagation;
    for m in &config.mounts {
        let need_shared = match m.propagation {
            Propagation::Private => continue,
            Propagation::HostToContainer => false,
            Propagation::Bidirectional => true,
        };
        let source =
            std::fs::canonicalize(&m.host_path).map_err(|source| SpecError::MountSource {
                path: m.host_path.clone(),
                source,
            })?;
        let Some((point, shared, slave)) = mount_propagation_of(mountinfo, &source) else {
            continue;
        };
        let ok = if need_shared { shared } else { shared || slave };
        if !ok {
            let wanted = if need_shared {
                "a shared mount (Bidirectional propagation)"
            } else {
                "a shared or slave mount (HostToContainer propagation)"
            };
            return Err(SpecError::Mount {
                container_path: m.container_path.clone(),
                reason: format!(
                    "host path {} is on mount {}, which is not {wanted}",
                    m.host_path,
                    point.display()
                ),
            });
        }
    }
    Ok(())
}

fn device_numbers(path: &str) -> Result<(LinuxDeviceType, i64, i64, u32), SpecError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(path).map_err(|e| SpecError::Device {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let kind = if meta.file_type().is_char_device() {
        LinuxDeviceType::C
    } else if meta.file_type().is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(SpecError::Device {
            path: path.to_owned(),
            reason: "not a device node".into(),
        });
    };
    let rdev = meta.rdev();
    Ok((
        kind,
        i64::from(nix::sys::stat::major(rdev) as u32),
        i64::from(nix::sys::stat::minor(rdev) as u32),
        meta.mode() & 0o7777,
    ))
}

/// The host's device nodes under /dev, for a privileged container: the
/// directories of other filesystems (`pts`, `shm`, `mqueue`) and the
/// descriptor links skipped, `console` too (the container gets its own),
/// as containerd's `HostDevices` does. A node that vanishes meanwhile is
/// skipped.
fn host_devices() -> Vec<(PathBuf, (LinuxDeviceType, i64, i64, u32))> {
    const SKIP: &[&str] = &[
        "pts",
        "shm",
        "fd",
        "mqueue",
        ".lxc",
        ".lxd-mounts",
        ".udev",
        "console",
    ];
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/dev")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| SKIP.contains(&n) && dir == Path::new("/dev"))
            {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(path);
            } else if let Some(numbers) = (!kind.is_symlink())
                .then(|| device_numbers(&path.display().to_string()).ok())
                .flatten()
            {
                out.push((path, numbers));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The device cgroup rules: deny all (allow all when privileged), then the
/// container's devices with their permissions (runc style; the cgroups
/// module adds the devices every container may use: null, zero, tty...).
fn device_rules(config: &ContainerConfig) -> Result<Vec<LinuxDeviceCgroup>, SpecError> {
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(config.security.privileged)
            .access("rwm")
            .build()?,
    ];
    for device in &config.devices {
        let (typ, major, minor, _) = device_numbers(&device.host_path)?;
        let permissions = if device.permissions.is_empty() {
            "rwm".to_owned()
        } else {
            device.permissions.clone()
        };
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(typ)
                .major(major)
                .minor(minor)
                .access(permissions)
                .build()?,
        );
    }
    Ok(rules)
}

/// The spec's `linux.resources`: the device rules and every limit of the
/// container's resources (CPU, memory and swap, hugepages, `unified`).
pub fn resources(config: &ContainerConfig) -> Result<LinuxResources, SpecError> {
    let mut resources = LinuxResourcesBuilder::default().devices(device_rules(config)?);
    if let Some(r) = config.resources.as_ref().map(|r| &r.cgroup) {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(shares) = r.cpu_shares {
            cpu = cpu.shares(shares);
        }
        if let Some(quota) = r.cpu_quota {
            cpu = cpu.quota(quota);
        }
        if let Some(period) = r.cpu_period {
            cpu = cpu.period(period);
        }
        if let Some(cpus) = &r.cpuset_cpus {
            cpu = cpu.cpus(cpus.clone());
        }
        if let Some(mems) = &r.cpuset_mems {
            cpu = cpu.mems(mems.clone());
        }
        resources = resources.cpu(cpu.build()?);
        if let Some(limit) = r.memory_limit {
            let mut memory = LinuxMemoryBuilder::default().limit(limit);
            if let Some(swap) = r.memory_swap {
                memory = memory.swap(swap);
            }
            resources = resources.memory(memory.build()?);
        }
        if !r.hugepage_limits.is_empty() {
            let limits = r
                .hugepage_limits
                .iter()
                .map(|h| {
                    LinuxHugepageLimitBuilder::default()
                        .page_size(h.page_size.clone())
                        .limit(i64::try_from(h.limit).unwrap_or(i64::MAX))
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            resources = resources.hugepage_limits(limits);
        }
        if !r.unified.is_empty() {
            resources = resources.unified(
                r.unified
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<HashMap<_, _>>(),
            );
        }
    }
    Ok(resources.build()?)
}

/// Replaces the spec's resources with the container's (after an update).
pub fn set_resources(spec: &mut Spec, config: &ContainerConfig) -> Result<(), SpecError> {
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_resources(Some(resources(config)?));
    spec.set_linux(Some(linux));
    Ok(())
}

/// The spec of a bundle (`<bundle>/config.json`).
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    crate::executor::load_spec(bundle).map_err(|e| SpecError::Load {
        path: bundle.to_owned(),
        message: e.to_string(),
    })
}

/// Writes the spec into the bundle, atomically.
pub fn write(bundle: &Path, spec: &Spec) -> Result<(), SpecError> {
    let path = bundle.join("config.json");
    let write_err = |message: String| SpecError::Write {
        path: path.clone(),
        message,
    };
    let json = serde_json::to_vec_pretty(spec).map_err(|e| write_err(e.to_string()))?;
    crate::store::write_atomic(&path, &json, 0o644).map_err(|e| write_err(e.to_string()))
}

/// Builds the whole spec. `rootfs` is the prepared root filesystem and
/// `cgroup_path` the container's own cgroup (`cgroups::container_cgroup_path`).
/// The device rules are deny-all plus the CRI's devices; the cgroups module
/// adds the devices every container may use (null, zero, tty...).
pub fn build(
    config: &ContainerConfig,
    image: &ImageRunConfig,
    pod: &PodContext,
    user: &ResolvedUser,
    rootfs: &Path,
    cgroup_path: &str,
    held: &HashSet<Capability>,
) -> Result<Spec, SpecError> {
    let security = &config.security;
    let privileged = security.privileged;

    let mut caps = capabilities(config, held)?;
    let ambient = ambient_capabilities(config, held)?;
    caps.extend(&ambient);
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .inheritable(ambient.clone())
        .ambient(ambient)
        .build()?;

    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".to_owned()
    };

    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.groups())
                .build()?,
        )
        .args(argv(config, image)?)
        .env(environment(config, image, &pod.hostname)?)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(security.no_new_privs)
        .build()?;
    let apparmor = crate::apparmor::choose(
        security.apparmor.as_ref(),
        pod.apparmor.as_ref(),
        privileged,
        crate::apparmor::host_enabled(),
    )?;
    process.set_apparmor_profile(crate::apparmor::profile_for(&apparmor)?);
    if let Some(adj) = config
        .resources
        .as_ref()
        .map(|r| r.oom_score_adj)
        .filter(|adj| *adj != 0)
    {
        process.set_oom_score_adj(Some(adj.clamp(-1000, 1000) as i32));
    }

    // A cgroup namespace of its own for every container: the CRI has no
    // way to ask for the node's.
    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Cgroup)
            .build()?,
    ];
    let mut join = |typ, path: &Option<PathBuf>| -> Result<(), SpecError> {
        if let Some(path) = path {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(typ)
                    .path(path.clone())
                    .build()?,
            );
        }
        Ok(())
    };
    join(
        LinuxNamespaceType::User,
        &pod.user.as_ref().map(|(path, _)| path.clone()),
    )?;
    join(LinuxNamespaceType::Network, &pod.net)?;
    join(LinuxNamespaceType::Ipc, &pod.ipc)?;
    join(LinuxNamespaceType::Uts, &pod.uts)?;
    match &pod.pid {
        PidNamespace::Private => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()?,
        ),
        PidNamespace::Pod(path) => join(LinuxNamespaceType::Pid, &Some(path.clone()))?,
        PidNamespace::Host => {}
    }

    let mut devices = Vec::new();
    if privileged {
        // Every device node of the host, as containerd's
        // `WithHostDevices`; the CRI's own devices below still win by path.
        for (path, (typ, major, minor, mode)) in host_devices() {
            if config
                .devices
                .iter()
                .any(|d| Path::new(&d.container_path) == path)
            {
                continue;
            }
            devices.push(
                LinuxDeviceBuilder::default()
                    .path(path)
                    .typ(typ)
                    .major(major)
                    .minor(minor)
                    .file_mode(mode)
                    .uid(0u32)
                    .gid(0u32)
                    .build()?,
            );
        }
    }
    for device in &config.devices {
        let (typ, major, minor, mode) = device_numbers(&device.host_path)?;
        devices.push(
            LinuxDeviceBuilder::default()
                .path(&device.container_path)
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(mode)
                .uid(0u32)
                .gid(0u32)
                .build()?,
        );
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .devices(devices)
        .resources(resources(config)?)
        .sysctl(pod.sysctls.clone());
    if let Some((_, userns)) = &pod.user {
        // The pod's mappings, as runc would write them for a new user
        // namespace; the joined one has them already, they are recorded
        // for whoever reads the bundle.
        let map = |m: &crate::idmap::IdMapping| {
            LinuxIdMappingBuilder::default()
                .container_id(m.container_id)
                .host_id(m.host_id)
                .size(m.length)
                .build()
        };
        linux = linux
            .uid_mappings(vec![map(&userns.uid)?])
            .gid_mappings(vec![map(&userns.gid)?]);
    }
    // Exactly the paths the CRI sends: kubelet sends the defaults for
    // `procMount: Default` and none for `Unmasked`; a privileged container
    // gets none (containerd's `WithPrivileged` clears them too). Always
    // set: oci-spec's default `Linux` carries a list of its own.
    let (masked, readonly) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            security.masked_paths.clone(),
            security.readonly_paths.clone(),
        )
    };
    linux = linux.masked_paths(masked).readonly_paths(readonly);
    if !cgroup_path.is_empty() {
        linux = linux.cgroups_path(PathBuf::from(cgroup_path));
    }
    let seccomp =
        crate::seccomp::choose(security.seccomp.as_ref(), pod.seccomp.as_ref(), privileged)?;
    if let Some(seccomp) = crate::seccomp::for_container(&seccomp, &caps)? {
        linux = linux.seccomp(seccomp);
    }
    // As containerd: a Bidirectional mount needs the container's mounts to
    // stay peers of the host's (`rshared`), a HostToContainer one slaves.
    use super::config::Propagation;
    if config
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
    {
        linux = linux.rootfs_propagation("rshared");
    } else if config
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::HostToContainer)
    {
        linux = linux.rootfs_propagation("rslave");
    }

    let root = RootBuilder::default()
        .path(rootfs)
        .readonly(security.readonly_rootfs)
        .build()?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(root)
        .process(process)
        .mounts(mounts(config, pod)?)
        .linux(linux.build()?)
        .build()?;
    if pod.uts.is_none() {
        // On the node's UTS namespace the hostname is the node's.
        spec.set_hostname(None);
    } else {
        spec.set_hostname(Some(pod.hostname.clone()));
    }
    let mut annotations: HashMap<String, String> = config
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    spec.set_annotations(Some(annotations));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{HugepageLimit, Resources};
    use crate::container::config::{ContainerResources, EnvVar, MountRequest, Propagation};

    fn image() -> ImageRunConfig {
        ImageRunConfig {
            env: vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()],
            entrypoint: vec!["/ep".into()],
            cmd: vec!["cmd1".into(), "cmd2".into()],
            working_dir: "/work".into(),
            user: String::new(),
            stop_signal: String::new(),
        }
    }

    fn pod(dir: &Path) -> PodContext {
        PodContext {
            user: None,
            net: Some(dir.join("net")),
            ipc: Some(dir.join("ipc")),
            uts: Some(dir.join("uts")),
            pid: PidNamespace::Private,
            hostname: "web-1".into(),
            hosts_file: dir.join("hosts"),
            resolv_conf: dir.join("resolv.conf"),
            hostname_file: dir.join("hostname"),
            shm: dir.join("shm"),
            sysctls: HashMap::new(),
            cgroup_parent: String::new(),
            seccomp: None,
            apparmor: None,
            privileged: false,
        }
    }

    /// Every capability this build names: a host whose bounding set is full.
    fn all_held() -> HashSet<Capability> {
        caps::all()
            .into_iter()
            .filter_map(|c| c.to_string()[4..].parse::<Capability>().ok())
            .collect()
    }

    #[test]
    fn argv_follows_kubernetes_rules() {
        let img = image();
        let mut c = ContainerConfig::default();
        assert_eq!(argv(&c, &img).unwrap(), ["/ep", "cmd1", "cmd2"]);
        c.args = vec!["a".into()];
        assert_eq!(argv(&c, &img).unwrap(), ["/ep", "a"]);
        c.command = vec!["/bin/x".into()];
        assert_eq!(argv(&c, &img).unwrap(), ["/bin/x", "a"]);
        c.args.clear();
        assert_eq!(argv(&c, &img).unwrap(), ["/bin/x"]);
        let empty = ImageRunConfig::default();
        assert!(matches!(
            argv(&ContainerConfig::default(), &empty),
            Err(SpecError::NoCommand)
        ));
    }

    #[test]
    fn env_overrides_by_name_and_keeps_order() {
        let c = ContainerConfig {
            envs: vec![
                EnvVar {
                    name: "B".into(),
                    value: "cri".into(),
                },
                EnvVar {
                    name: "C".into(),
                    value: "x=y".into(),
                },
            ],
            ..Default::default()
        };
        let env = environment(&c, &image(), "h").unwrap();
        assert_eq!(
            env,
            ["PATH=/bin", "A=image", "B=cri", "C=x=y", "HOSTNAME=h"]
        );
        let env = environment(&ContainerConfig::default(), &ImageRunConfig::default(), "").unwrap();
        assert!(env[0].starts_with("PATH=/usr/local/sbin"));
    }

    #[test]
    fn capabilities_add_drop_all() {
        let held = all_held();
        let mut c = ContainerConfig::default();
        let caps = capabilities(&c, &held).unwrap();
        assert!(caps.contains(&Capability::Chown));
        assert!(!caps.contains(&Capability::SysAdmin));
        c.security.add_capabilities = vec!["NET_ADMIN".into()];
        c.security.drop_capabilities = vec!["ALL".into()];
        let caps = capabilities(&c, &held).unwrap();
        assert_eq!(caps, HashSet::from([Capability::NetAdmin]));
        c.security.add_capabilities = vec!["CAP_BOGUS".into()];
        assert!(matches!(
            capabilities(&c, &held),
            Err(SpecError::Capability(_))
        ));
    }

    #[test]
    fn all_means_what_the_runtime_holds() {
        // A bounding set without SYS_RESOURCE, as on some hosts.
        let mut held = all_held();
        held.remove(&Capability::SysResource);
        let mut c = ContainerConfig::default();
        c.security.add_capabilities = vec!["ALL".into()];
        let caps = capabilities(&c, &held).unwrap();
        assert_eq!(caps, held);
        c.security.add_capabilities = vec!["all".into(), "cap_sys_resource".into()];
        assert_eq!(capabilities(&c, &held).unwrap(), held);
        c.security = Default::default();
        c.security.privileged = true;
        assert_eq!(capabilities(&c, &held).unwrap(), held);
        c.security.drop_capabilities = vec!["SYS_ADMIN".into()];
        assert_eq!(
            capabilities(&c, &held).unwrap(),
            held,
            "privileged ignores drops, as containerd"
        );
        // Names with or without CAP_, any case; an unknown one is named.
        let mut c = ContainerConfig::default();
        c.security.drop_capabilities = vec!["all".into()];
        c.security.add_capabilities = vec!["cap_net_bind_service".into()];
        assert_eq!(
            capabilities(&c, &held).unwrap(),
            HashSet::from([Capability::NetBindService])
        );
        c.security.add_ambient_capabilities = vec!["CAP_NOPE".into()];
        let err = capabilities(&c, &held).unwrap_err().to_string();
        assert!(err.contains("CAP_NOPE"), "{err}");
    }

    #[test]
    fn ambient_capabilities_are_inheritable_and_permitted() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ContainerConfig::default();
        c.security.drop_capabilities = vec!["ALL".into()];
        c.security.add_ambient_capabilities = vec!["NET_BIND_SERVICE".into()];
        let spec = build(
            &c,
            &image(),
            &pod(dir.path()),
            &ResolvedUser::default(),
            Path::new("/r"),
            "",
            &all_held(),
        )
        .unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .clone()
            .unwrap();
        let only = HashSet::from([Capability::NetBindService]);
        assert_eq!(caps.ambient().as_ref(), Some(&only));
        assert_eq!(caps.inheritable().as_ref(), Some(&only));
        assert_eq!(caps.permitted().as_ref(), Some(&only));
        assert_eq!(caps.effective().as_ref(), Some(&only));
    }

    #[test]
    fn masked_and_readonly_paths_are_exactly_the_requested_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ContainerConfig::default();
        c.security.masked_paths = vec!["/bin/ls".into()];
        c.security.readonly_paths = vec!["/tmp".into()];
        let held = all_held();
        let build_it = |c: &ContainerConfig| {
            build(
                c,
                &image(),
                &pod(dir.path()),
                &ResolvedUser::default(),
                Path::new("/r"),
                "",
                &held,
            )
            .unwrap()
        };
        let spec = build_it(&c);
        let linux = spec.linux().clone().unwrap();
        assert_eq!(
            linux.masked_paths().as_deref(),
            Some(&["/bin/ls".to_string()][..])
        );
        assert_eq!(
            linux.readonly_paths().as_deref(),
            Some(&["/tmp".to_string()][..])
        );
        // procMount: Unmasked sends none: none are applied.
        let spec = build_it(&ContainerConfig::default());
        let linux = spec.linux().clone().unwrap();
        assert!(linux.masked_paths().as_ref().is_none_or(|p| p.is_empty()));
        // A privileged container gets none, whatever is sent.
        c.security.privileged = true;
        let spec = build_it(&c);
        let linux = spec.linux().clone().unwrap();
        assert!(linux.masked_paths().as_ref().is_none_or(|p| p.is_empty()));
        assert!(linux.readonly_paths().as_ref().is_none_or(|p| p.is_empty()));
    }

    #[test]
    fn the_primary_group_leads_the_supplementary_ones() {
        let dir = tempfile::tempdir().unwrap();
        let user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![1234, 50000],
        };
        let spec = build(
            &ContainerConfig::default(),
            &image(),
            &pod(dir.path()),
            &user,
            Path::new("/r"),
            "",
            &all_held(),
        )
        .unwrap();
        let u = spec.process().as_ref().unwrap().user().clone();
        assert_eq!(
            u.additional_gids().as_deref(),
            Some(&[1000, 1234, 50000][..])
        );
    }

    #[test]
    fn security_rules_of_the_cri_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pod(dir.path());
        let mut c = ContainerConfig::default();
        c.security.run_as_group = Some(10);
        let err = validate(&c, &p).unwrap_err().to_string();
        assert!(err.contains("run_as_group"), "{err}");
        c.security.run_as_username = "www".into();
        validate(&c, &p).unwrap();
        c.security.privileged = true;
        let err = validate(&c, &p).unwrap_err().to_string();
        assert!(err.contains("privileged pod"), "{err}");
        p.privileged = true;
        validate(&c, &p).unwrap();
        c.security.supplemental_groups_policy = "Loose".into();
        assert!(validate(&c, &p).unwrap_err().to_string().contains("Loose"));
        c.security.supplemental_groups_policy = "Strict".into();
        c.mounts = vec![MountRequest {
            container_path: "/mnt".into(),
            host_path: "/tmp".into(),
            recursive_read_only: true,
            ..Default::default()
        }];
        let err = validate(&c, &p).unwrap_err().to_string();
        assert!(
            err.contains("/mnt") && err.contains("needs readonly"),
            "{err}"
        );
        c.mounts[0].readonly = true;
        c.mounts[0].propagation = Propagation::HostToContainer;
        let err = validate(&c, &p).unwrap_err().to_string();
        assert!(err.contains("private propagation"), "{err}");
        c.mounts[0].propagation = Propagation::Private;
        validate(&c, &p).unwrap();
        let m = mounts(&c, &p).unwrap();
        let opts = m.last().unwrap().options().clone().unwrap();
        assert!(opts.contains(&"rro".to_string()), "{opts:?}");
    }

    #[test]
    fn propagation_of_the_mount_a_path_lives_on() {
        let info = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
51 22 254:0 /x /tmp/shared rw,relatime shared:1 - ext4 /dev/vda rw
52 22 254:0 /y /tmp/slave rw master:3 - ext4 /dev/vda rw
53 22 0:5 / /tmp/with\\040space rw shared:9 master:2 - tmpfs none rw
";
        let of = |p: &str| mount_propagation_of(info, Path::new(p)).unwrap();
        assert_eq!(of("/etc"), (PathBuf::from("/"), false, false));
        assert_eq!(
            of("/tmp/shared/a"),
            (PathBuf::from("/tmp/shared"), true, false)
        );
        assert_eq!(of("/tmp/slave"), (PathBuf::from("/tmp/slave"), false, true));
        assert_eq!(
            of("/tmp/with space/z"),
            (PathBuf::from("/tmp/with space"), true, true)
        );
        assert_eq!(of("/tmp/sharedx"), (PathBuf::from("/"), false, false));
    }

    #[test]
    fn spec_joins_pod_namespaces_and_mounts_pod_files() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("data");
        std::fs::create_dir(&host).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&host, &link).unwrap();
        let c = ContainerConfig {
            mounts: vec![MountRequest {
                container_path: "/data/".into(),
                host_path: link.display().to_string(),
                readonly: true,
                propagation: Propagation::HostToContainer,
                ..Default::default()
            }],
            ..Default::default()
        };
        let p = pod(dir.path());
        let spec = build(
            &c,
            &image(),
            &p,
            &ResolvedUser::default(),
            Path::new("/rootfs"),
            "/ketch/c1",
            &all_held(),
        )
        .unwrap();
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        let find = |t| ns.iter().find(|n| n.typ() == t);
        assert_eq!(
            find(LinuxNamespaceType::Network).unwrap().path().as_deref(),
            Some(dir.path().join("net").as_path())
        );
        assert!(find(LinuxNamespaceType::Pid).unwrap().path().is_none());
        assert!(find(LinuxNamespaceType::Mount).is_some());
        assert!(find(LinuxNamespaceType::Cgroup).unwrap().path().is_none());
        let mounts = spec.mounts().as_ref().unwrap();
        let cgroup = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/sys/fs/cgroup"))
            .unwrap();
        assert_eq!(cgroup.typ().as_deref(), Some("cgroup"));
        assert!(cgroup.options().as_ref().unwrap().contains(&"ro".into()));
        let data = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/data"))
            .unwrap();
        assert_eq!(
            data.source().as_deref(),
            Some(host.as_path()),
            "symlink resolved"
        );
        let opts = data.options().as_ref().unwrap();
        assert!(opts.contains(&"ro".to_string()) && opts.contains(&"rslave".to_string()));
        assert!(
            mounts
                .iter()
                .any(|m| m.destination() == Path::new("/etc/hosts"))
        );
        assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/work"));
        assert_eq!(
            spec.linux().as_ref().unwrap().cgroups_path().as_deref(),
            Some(Path::new("/ketch/c1"))
        );
    }

    #[test]
    fn missing_host_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let c = ContainerConfig {
            mounts: vec![MountRequest {
                container_path: "/x".into(),
                host_path: "/nonexistent/ketch-path".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = mounts(&c, &pod(dir.path())).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ketch-path"), "{err}");
    }

    #[test]
    fn host_pid_and_host_network_leave_namespaces_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = pod(dir.path());
        p.net = None;
        p.uts = None;
        p.pid = PidNamespace::Host;
        let spec = build(
            &ContainerConfig::default(),
            &image(),
            &p,
            &ResolvedUser::default(),
            Path::new("/r"),
            "",
            &all_held(),
        )
        .unwrap();
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(ns.iter().all(|n| !matches!(
            n.typ(),
            LinuxNamespaceType::Network | LinuxNamespaceType::Pid | LinuxNamespaceType::Uts
        )));
        assert!(spec.hostname().is_none());
    }

    #[test]
    fn every_limit_reaches_the_spec() {
        // CreateContainer once dropped hugepage limits and `unified`.
        let c = ContainerConfig {
            resources: Some(ContainerResources {
                cgroup: Resources {
                    cpu_shares: Some(512),
                    cpu_quota: Some(20_000),
                    cpu_period: Some(100_000),
                    cpuset_cpus: Some("0".into()),
                    memory_limit: Some(64 << 20),
                    memory_swap: Some(128 << 20),
                    hugepage_limits: vec![HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 4 << 20,
                    }],
                    unified: [("memory.high".to_string(), "50000000".to_string())].into(),
                    ..Default::default()
                },
                oom_score_adj: 500,
            }),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let spec = build(
            &c,
            &image(),
            &pod(dir.path()),
            &ResolvedUser::default(),
            Path::new("/r"),
            "",
            &all_held(),
        )
        .unwrap();
        let r = spec.linux().as_ref().unwrap().resources().clone().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(20_000), Some(100_000))
        );
        assert_eq!(cpu.cpus().as_deref(), Some("0"));
        let memory = r.memory().as_ref().unwrap();
        assert_eq!(
            (memory.limit(), memory.swap()),
            (Some(64 << 20), Some(128 << 20))
        );
        let huge = r.hugepage_limits().as_ref().unwrap();
        assert_eq!(
            (huge[0].page_size().as_str(), huge[0].limit()),
            ("2MB", 4 << 20)
        );
        assert_eq!(r.unified().as_ref().unwrap()["memory.high"], "50000000");
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(500));
        // And the cgroup made from the spec gets them too.
        let cgroup = Resources::from(&r);
        assert_eq!(cgroup.hugepage_limits.len(), 1);
        assert_eq!(cgroup.unified["memory.high"], "50000000");
    }

    #[test]
    fn a_written_spec_loads_back_and_takes_new_resources() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ContainerConfig::default();
        let mut spec = build(
            &c,
            &image(),
            &pod(dir.path()),
            &ResolvedUser::default(),
            Path::new("/r"),
            "",
            &all_held(),
        )
        .unwrap();
        c.resources = Some(ContainerResources {
            cgroup: Resources {
                memory_limit: Some(32 << 20),
                ..Default::default()
            },
            oom_score_adj: 0,
        });
        set_resources(&mut spec, &c).unwrap();
        write(dir.path(), &spec).unwrap();
        let loaded = load(dir.path()).unwrap();
        let memory = loaded
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap();
        assert_eq!(memory.memory().as_ref().unwrap().limit(), Some(32 << 20));
        assert!(matches!(
            load(&dir.path().join("missing")),
            Err(SpecError::Load { .. })
        ));
    }

    #[test]
    fn image_volume_sub_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("image");
        std::fs::create_dir_all(root.join("etc/conf")).unwrap();
        std::fs::write(root.join("etc/file"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("etc/conf", root.join("rel")).unwrap();
        let root_c = std::fs::canonicalize(&root).unwrap();
        let ok = |sub: &str| image_volume_source(&root, "img", sub).unwrap();
        assert_eq!(ok(""), root_c);
        assert_eq!(ok("etc/conf"), root_c.join("etc/conf"));
        assert_eq!(ok("./etc/conf/"), root_c.join("etc/conf"));
        assert_eq!(
            ok("rel"),
            root_c.join("etc/conf"),
            "a symlink inside is fine"
        );
        for (sub, reason) in [
            ("../image/etc", "without .."),
            ("/etc", "without .."),
            ("etc/../etc", "without .."),
            ("missing", "does not exist"),
            ("etc/file", "not a directory"),
            ("abs", "outside the image"),
        ] {
            let err = image_volume_source(&root, "img", sub).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(reason), "{sub}: {text}");
            assert!(text.contains("\"img\""), "{text}");
        }
    }

    #[test]
    fn image_volumes_are_bound_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("v0");
        std::fs::create_dir_all(root.join("data")).unwrap();
        let mut config = ContainerConfig::default();
        config.mounts.push(MountRequest {
            container_path: "/models/".into(),
            image: "models:1".into(),
            image_sub_path: "data".into(),
            ..Default::default()
        });
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![]));
        add_image_volumes(&mut spec, &config, &[(0, root.clone())]).unwrap();
        let mounts = spec.mounts().clone().unwrap();
        let m = mounts.last().unwrap();
        assert_eq!(m.destination(), Path::new("/models"));
        assert_eq!(
            m.source().as_deref(),
            Some(std::fs::canonicalize(root.join("data")).unwrap().as_path())
        );
        assert!(m.options().as_ref().unwrap().contains(&"ro".to_string()));
    }
}
