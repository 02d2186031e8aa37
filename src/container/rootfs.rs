//! A container's root filesystem: an overlay of its image's unpacked layers
//! (read-only lowerdirs) under a fresh upper and work dir of its own.
//!
//! The mount data of overlayfs must fit one page. Layer dirs have long
//! names (chain IDs), so an image of many layers can overflow it; then the
//! lowerdirs are given relative to their common parent, mounted from a
//! short-lived thread whose working directory is that parent (the trick
//! containerd's overlay snapshotter uses). Threads have their own cwd only
//! after `unshare(CLONE_FS)`, which is what keeps the daemon's cwd intact.
//!
//! In a pod with its own user namespace, each layer is first cloned as an
//! idmapped mount ([`crate::idmap`]) under the bundle's `idmapped/` dir
//! and the overlay is made of those clones: the layers stay as they are on
//! disk, shared with every other pod, and the container's root sees its
//! files owned by root. overlayfs keeps private clones of its layers
//! (with their ID mapping), so the clones are detached right after the
//! overlay is mounted. The upper dir belongs to the pod's root on the host
//! (what the container's root is there), so it can write at `/`.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::config::{ContainerConfig, IdMapping as ConfigIdMapping};
use super::spec::SpecError;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("image has no layers")]
    NoLayers,
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("overlay mount on {target}: {source}")]
    Mount { target: PathBuf, source: nix::Error },
    #[error("unmount {target}: {source}")]
    Unmount { target: PathBuf, source: nix::Error },
    #[error("overlay options too long for {layers} layers even relative to {parent}")]
    TooManyLayers { layers: usize, parent: PathBuf },
    #[error("mount thread failed: {0}")]
    Thread(String),
    #[error("image volume on {target}: {source}")]
    Volume { target: PathBuf, source: nix::Error },
    #[error(transparent)]
    Idmap(#[from] crate::idmap::IdmapError),
    #[error("chown {path} to the pod's root: {source}")]
    Chown { path: PathBuf, source: nix::Error },
}

/// The dirs of one container's overlay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overlay {
    /// Topmost first, as overlayfs wants them.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: PathBuf,
    pub workdir: PathBuf,
    pub target: PathBuf,
    /// The pod's user namespace, when it has one: the layers are idmapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idmap: Option<OverlayIdmap>,
}

/// How a container of a pod with its own user namespace sees its layers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OverlayIdmap {
    /// The pod's pinned user namespace.
    pub userns: PathBuf,
    /// The bundle's dir for idmapped clones ([`IDMAPPED_DIR`]).
    pub dir: PathBuf,
    /// The host IDs of the container's root: the upper dir's owner.
    pub root_uid: u32,
    pub root_gid: u32,
}

/// The dir under a bundle where idmapped clones are mounted: `l<n>` for
/// the overlay's layers (only while it is being mounted), `m<n>` for the
/// CRI mount of index n.
pub const IDMAPPED_DIR: &str = "idmapped";

/// The most mount data the kernel takes (one page).
const MAX_MOUNT_DATA: usize = 4095;

fn escape(path: &Path) -> String {
    // Overlay splits lowerdir on ':' and honours '\' escapes.
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

fn options(lower: &[String], upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        lower.join(":"),
        escape(upper),
        escape(work)
    )
}

impl Overlay {
    /// Creates upper, work and target dirs and mounts the overlay.
    pub fn mount(&self) -> Result<(), RootfsError> {
        if self.lowerdirs.is_empty() {
            return Err(RootfsError::NoLayers);
        }
        for dir in [&self.upperdir, &self.workdir, &self.target] {
            std::fs::create_dir_all(dir).map_err(|source| RootfsError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        }
        let Some(idmap) = &self.idmap else {
            return mount_layers(&self.lowerdirs, &self.upperdir, &self.workdir, &self.target);
        };
        nix::unistd::chown(
            &self.upperdir,
            Some(nix::unistd::Uid::from_raw(idmap.root_uid)),
            Some(nix::unistd::Gid::from_raw(idmap.root_gid)),
        )
        .map_err(|source| RootfsError::Chown {
            path: self.upperdir.clone(),
            source,
        })?;
        let result = idmapped_layers(&self.lowerdirs, idmap)
            .and_then(|clones| mount_layers(&clones, &self.upperdir, &self.workdir, &self.target));
        // The overlay holds its own clones of the layers: these go, on
        // success and failure alike.
        let cleanup = unmount_entries(&idmap.dir, "l");
        result.and(cleanup)
    }

    /// Unmounts the overlay if mounted. Idempotent.
    pub fn unmount(&self) -> Result<(), RootfsError> {
        unmount(&self.target)
    }
}

/// Each layer cloned as an idmapped mount on `<dir>/l<n>`, topmost first.
fn idmapped_layers(
    lowerdirs: &[PathBuf],
    idmap: &OverlayIdmap,
) -> Result<Vec<PathBuf>, RootfsError> {
    let userns = std::fs::File::open(&idmap.userns).map_err(|source| {
        crate::idmap::IdmapError::OpenUserns {
            path: idmap.userns.clone(),
            source,
        }
    })?;
    let mut clones = Vec::with_capacity(lowerdirs.len());
    for (i, layer) in lowerdirs.iter().enumerate() {
        let target = idmap.dir.join(format!("l{i}"));
        std::fs::create_dir_all(&target).map_err(|source| RootfsError::CreateDir {
            path: target.clone(),
            source,
        })?;
        crate::idmap::mount_idmapped_with(layer, &target, &userns)?;
        clones.push(target);
    }
    Ok(clones)
}

/// Mounts an overlay of `lowerdirs` (topmost first) on `target`.
fn mount_layers(
    lowerdirs: &[PathBuf],
    upperdir: &Path,
    workdir: &Path,
    target: &Path,
) -> Result<(), RootfsError> {
    {
        let absolute: Vec<String> = lowerdirs.iter().map(|p| escape(p)).collect();
        let data = options(&absolute, upperdir, workdir);
        if data.len() <= MAX_MOUNT_DATA {
            return mount_overlay(target, &data);
        }
        // Too long: name the lowerdirs relative to their common parent.
        let parent = lowerdirs[0]
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let relative: Option<Vec<String>> = lowerdirs
            .iter()
            .map(|p| p.strip_prefix(&parent).ok().map(escape))
            .collect();
        let data = relative.map(|r| options(&r, upperdir, workdir));
        match data {
            Some(data) if data.len() <= MAX_MOUNT_DATA => {
                let target = target.to_owned();
                std::thread::spawn(move || -> Result<(), RootfsError> {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(|source| {
                        RootfsError::Mount {
                            target: target.clone(),
                            source,
                        }
                    })?;
                    nix::unistd::chdir(&parent).map_err(|source| RootfsError::Mount {
                        target: target.clone(),
                        source,
                    })?;
                    mount_overlay(&target, &data)
                })
                .join()
                .map_err(|_| RootfsError::Thread("overlay mount thread panicked".into()))?
            }
            _ => Err(RootfsError::TooManyLayers {
                layers: lowerdirs.len(),
                parent,
            }),
        }
    }
}

/// An image mounted as a volume (a CRI mount with `image`): the image's
/// root filesystem, read-only, at a mount point in the container's bundle,
/// from which the spec binds it (or a sub-path of it) into the container.
/// Several layers make a lower-only overlay, which overlayfs mounts
/// read-only by nature (`overlayfs(5)`: no upperdir); one layer is a
/// read-only bind of its dir, as overlayfs refuses a single lowerdir
/// without an upperdir.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageVolume {
    /// The index of the CRI mount it serves.
    pub mount_index: usize,
    pub image_id: String,
    /// Topmost first.
    pub lowerdirs: Vec<PathBuf>,
    pub target: PathBuf,
}

/// The dir under a bundle where its image volumes are mounted, one
/// subdir per CRI mount index.
pub const VOLUMES_DIR: &str = "volumes";

impl ImageVolume {
    /// Creates the mount point and mounts the image read-only on it.
    pub fn mount(&self) -> Result<(), RootfsError> {
        std::fs::create_dir_all(&self.target).map_err(|source| RootfsError::CreateDir {
            path: self.target.clone(),
            source,
        })?;
        let err = |source| RootfsError::Volume {
            target: self.target.clone(),
            source,
        };
        match self.lowerdirs.as_slice() {
            [] => Err(RootfsError::NoLayers),
            [only] => {
                nix::mount::mount(
                    Some(only),
                    &self.target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(err)?;
                // A bind mount takes MS_RDONLY only on a remount
                // (`mount(2)`, "Creating a bind mount").
                nix::mount::mount(
                    None::<&str>,
                    &self.target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(|source| {
                    let _ = unmount(&self.target);
                    err(source)
                })
            }
            layers => {
                let lower: Vec<String> = layers.iter().map(|p| escape(p)).collect();
                let data = format!("lowerdir={}", lower.join(":"));
                if data.len() > MAX_MOUNT_DATA {
                    return Err(RootfsError::TooManyLayers {
                        layers: layers.len(),
                        parent: self.target.clone(),
                    });
                }
                nix::mount::mount(
                    Some("overlay"),
                    &self.target,
                    Some("overlay"),
                    MsFlags::MS_RDONLY,
                    Some(data.as_str()),
                )
                .map_err(err)
            }
        }
    }
}

/// Checks the ID mappings of the CRI mounts (`uid_mappings`,
/// `gid_mappings`, sent for idmapped volumes): both or neither, each
/// mapping non-empty and within 32 bits.
pub fn check_mount_mappings(config: &ContainerConfig) -> Result<(), SpecError> {
    for m in &config.mounts {
        let bad = |reason: String| {
            Err(SpecError::Mount {
                container_path: m.container_path.clone(),
                reason,
            })
        };
        if m.uid_mappings.is_empty() != m.gid_mappings.is_empty() {
            return bad("uid_mappings and gid_mappings must be given together".into());
        }
        if !m.uid_mappings.is_empty() && !m.image.is_empty() {
            return bad("an image volume cannot be idmapped".into());
        }
        for (field, list) in [
            ("uid_mappings", &m.uid_mappings),
            ("gid_mappings", &m.gid_mappings),
        ] {
            if let Some(bad_one) = list.iter().find(|x| !mapping(x).fits()) {
                return bad(format!(
                    "{field}: mapping of {} IDs from host ID {} is empty or overflows 32 bits",
                    bad_one.length, bad_one.host_id
                ));
            }
        }
    }
    Ok(())
}

fn mapping(m: &ConfigIdMapping) -> crate::idmap::IdMapping {
    crate::idmap::IdMapping {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    }
}

/// A CRI mount with ID mappings, as an idmapped clone of its source (not
/// of the mounts below it) at `target`, which is made a file or a
/// directory as the source is.
pub fn mount_idmapped_volume(
    source: &Path,
    target: &Path,
    uids: &[ConfigIdMapping],
    gids: &[ConfigIdMapping],
) -> Result<(), RootfsError> {
    let create = |r: std::io::Result<()>| {
        r.map_err(|source| RootfsError::CreateDir {
            path: target.to_owned(),
            source,
        })
    };
    if let Some(parent) = target.parent() {
        create(std::fs::create_dir_all(parent))?;
    }
    if source.is_dir() {
        create(std::fs::create_dir_all(target))?;
    } else {
        create(std::fs::write(target, b""))?;
    }
    let uids: Vec<_> = uids.iter().map(mapping).collect();
    let gids: Vec<_> = gids.iter().map(mapping).collect();
    Ok(crate::idmap::mount_with_mappings(
        source, target, &uids, &gids,
    )?)
}

/// Unmounts every image volume under `bundle` (before the bundle is
/// deleted: a mounted image would otherwise be walked into). Nothing
/// there is fine.
pub fn unmount_volumes(bundle: &Path) -> Result<(), RootfsError> {
    unmount_entries(&bundle.join(VOLUMES_DIR), "")?;
    unmount_entries(&bundle.join(IDMAPPED_DIR), "")
}

/// Unmounts every entry of `dir` whose name starts with `prefix`.
fn unmount_entries(dir: &Path, prefix: &str) -> Result<(), RootfsError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            unmount(&entry.path())?;
        }
    }
    Ok(())
}

fn mount_overlay(target: &Path, data: &str) -> Result<(), RootfsError> {
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data),
    )
    .map_err(|source| RootfsError::Mount {
        target: target.to_owned(),
        source,
    })
}

/// Detaches whatever is mounted at `target`; nothing mounted is fine.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    loop {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => continue, // stacked mounts: take them all
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(source) => {
                return Err(RootfsError::Unmount {
                    target: target.to_owned(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_mounted(path: &Path) -> bool {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = path.display().to_string();
        text.lines()
            .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
    }

    fn layers(dir: &Path, n: usize, name_len: usize) -> Vec<PathBuf> {
        (0..n)
            .map(|i| {
                let p = dir.join(format!("{i:0>width$}", width = name_len));
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join(format!("file{i}")), format!("{i}")).unwrap();
                std::fs::write(p.join("top"), format!("{i}")).unwrap();
                p
            })
            .rev() // topmost first
            .collect()
    }

    #[test]
    fn overlay_mounts_and_unmounts() {
        if !crate::testing::root_or_skip("mounts an overlay") {
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let o = Overlay {
            lowerdirs: layers(&dir.path().join("layers"), 3, 8),
            upperdir: dir.path().join("c/upper"),
            workdir: dir.path().join("c/work"),
            target: dir.path().join("c/rootfs"),
            idmap: None,
        };
        o.mount().unwrap();
        assert!(is_mounted(&o.target));
        assert_eq!(std::fs::read_to_string(o.target.join("top")).unwrap(), "2");
        assert!(o.target.join("file0").exists());
        std::fs::write(o.target.join("new"), "x").unwrap();
        assert!(
            o.upperdir.join("new").exists(),
            "writes land in the upper dir"
        );
        o.unmount().unwrap();
        assert!(!is_mounted(&o.target));
        o.unmount().unwrap();
    }

    #[test]
    fn idmapped_layers_show_root_as_the_pods_root_and_stay_unchanged() {
        if !crate::testing::root_or_skip("makes a user namespace and idmapped mounts") {
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let holder = crate::sys::spawn_ns_holder(nix::sched::CloneFlags::CLONE_NEWUSER).unwrap();
        for file in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{}/{file}", holder.pid), "0 300000 65536\n").unwrap();
        }
        let userns = dir.path().join("userns");
        std::fs::write(&userns, "").unwrap();
        nix::mount::mount(
            Some(Path::new(&format!("/proc/{}/ns/user", holder.pid))),
            &userns,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        holder.finish();
        let lowerdirs = layers(&dir.path().join("layers"), 3, 8);
        let o = Overlay {
            lowerdirs: lowerdirs.clone(),
            upperdir: dir.path().join("c/upper"),
            workdir: dir.path().join("c/work"),
            target: dir.path().join("c/rootfs"),
            idmap: Some(OverlayIdmap {
                userns: userns.clone(),
                dir: dir.path().join("c").join(IDMAPPED_DIR),
                root_uid: 300000,
                root_gid: 300000,
            }),
        };
        o.mount().unwrap();
        let layer_file = o.target.join("file0");
        assert_eq!(std::fs::metadata(&layer_file).unwrap().uid(), 300000);
        assert_eq!(std::fs::metadata(&o.target).unwrap().uid(), 300000, "upper");
        let on_disk = lowerdirs.last().unwrap().join("file0");
        assert_eq!(
            std::fs::metadata(&on_disk).unwrap().uid(),
            0,
            "layer unchanged"
        );
        assert_eq!(
            std::fs::metadata(&layer_file).unwrap().ino(),
            std::fs::metadata(&on_disk).unwrap().ino(),
            "the layer's own file, no copy"
        );
        std::fs::write(o.target.join("new"), "x").unwrap();
        assert!(o.upperdir.join("new").exists());
        let idmapped = dir.path().join("c").join(IDMAPPED_DIR);
        for entry in std::fs::read_dir(&idmapped).unwrap() {
            assert!(!is_mounted(&entry.unwrap().path()), "clones detached");
        }
        o.unmount().unwrap();
        crate::container::rootfs::unmount(&userns).unwrap();
    }

    #[test]
    fn many_layers_use_relative_lowerdirs() {
        if !crate::testing::root_or_skip("mounts an overlay") {
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        // 60 layers with 64-char names overflow a page as absolute paths.
        let o = Overlay {
            lowerdirs: layers(&dir.path().join("layers"), 60, 64),
            upperdir: dir.path().join("c/upper"),
            workdir: dir.path().join("c/work"),
            target: dir.path().join("c/rootfs"),
            idmap: None,
        };
        let cwd = std::env::current_dir().unwrap();
        o.mount().unwrap();
        assert_eq!(
            std::env::current_dir().unwrap(),
            cwd,
            "daemon cwd untouched"
        );
        assert_eq!(std::fs::read_to_string(o.target.join("top")).unwrap(), "59");
        assert!(o.target.join("file0").exists());
        o.unmount().unwrap();
    }

    #[test]
    fn image_volumes_mount_read_only() {
        if !crate::testing::root_or_skip("mounts image volumes") {
            return;
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let bundle = dir.path().join("bundle");
        for n in [1, 3] {
            let v = ImageVolume {
                mount_index: n,
                image_id: "sha256:x".into(),
                lowerdirs: layers(&dir.path().join(format!("layers{n}")), n, 8),
                target: bundle.join(VOLUMES_DIR).join(n.to_string()),
            };
            v.mount().unwrap();
            assert!(is_mounted(&v.target));
            assert_eq!(
                std::fs::read_to_string(v.target.join("top")).unwrap(),
                (n - 1).to_string()
            );
            assert!(v.target.join("file0").exists());
            let write = std::fs::write(v.target.join("new"), "x").unwrap_err();
            assert_eq!(write.raw_os_error(), Some(libc::EROFS), "{n} layers");
        }
        unmount_volumes(&bundle).unwrap();
        assert!(!is_mounted(&bundle.join(VOLUMES_DIR).join("1")));
        assert!(!is_mounted(&bundle.join(VOLUMES_DIR).join("3")));
        unmount_volumes(&dir.path().join("none")).unwrap();
    }

    #[test]
    fn no_layers_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let o = Overlay {
            lowerdirs: vec![],
            upperdir: dir.path().join("u"),
            workdir: dir.path().join("w"),
            target: dir.path().join("t"),
            idmap: None,
        };
        assert!(matches!(o.mount(), Err(RootfsError::NoLayers)));
    }
}
