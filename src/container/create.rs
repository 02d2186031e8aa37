//! CreateContainer: reserves the name, prepares the rootfs and the bundle,
//! records CREATED. Every failure undoes what it made.

use std::path::Path;

use super::config::{ContainerConfig, Propagation};
use super::error::{ContainerError, io_err};
use super::manager::{ContainerManager, ImageInfo, PodInfo};
use super::record::{ContainerRecord, SCHEMA};
use super::rootfs::{IDMAPPED_DIR, ImageVolume, Overlay, OverlayIdmap, VOLUMES_DIR};
use super::state::State;
use super::{signal, spec, user};
use crate::events::EventKind;
use crate::store::StoreError;
use crate::task::blocking;
use crate::{cgroups, names};

impl ContainerManager {
    /// Creates the container under `id` (an ID the caller generated, so it
    /// can take the image lease for it before the record exists: a crash
    /// in between leaves a lease without a container, which the next start
    /// releases, never a container without its lease).
    pub async fn create(
        &self,
        id: &str,
        pod: &PodInfo,
        config: ContainerConfig,
        image: ImageInfo,
    ) -> Result<(), ContainerError> {
        if config.name.is_empty() {
            return Err(ContainerError::EmptyName);
        }
        // The name becomes part of paths (the log file kubelet names after
        // it, the reserved name): nothing that leads elsewhere.
        names::path_component("metadata.name", &config.name)?;
        for (i, mount) in config.mounts.iter().enumerate() {
            names::mount_propagation(
                &format!("mounts[{i}].propagation"),
                mount.propagation == Propagation::Bidirectional,
                config.security.privileged,
            )?;
        }
        spec::validate(&config, &pod.context)?;
        super::rootfs::check_mount_mappings(&config)?;
        if let Some(label) = config
            .security
            .selinux
            .as_ref()
            .filter(|l| !l.r#type.is_empty() || !l.level.is_empty())
        {
            // Accepted, as containerd does where SELinux is off; logged so the
            // label asked for is not silently lost.
            tracing::info!(
                container = %config.name,
                selinux_type = %label.r#type,
                selinux_level = %label.level,
                "SELinux options accepted but not applied: ketch does not label processes or mounts"
            );
        }
        if !pod.ready {
            return Err(ContainerError::PodNotReady(pod.id.clone()));
        }
        // The CRI's stop signal, else the image's; checked now, so a stop
        // never falls back to SIGTERM without a word.
        let stop_signal = if config.stop_signal.is_empty() {
            image.run_config.stop_signal.clone()
        } else {
            config.stop_signal.clone()
        };
        signal::parse(&stop_signal)?;
        let reserved_name = format!(
            "{}_{}_{}_{}_{}",
            config.name, pod.name, pod.namespace, pod.uid, config.attempt
        );
        let reservation = self
            .store
            .reserve_with_id(&reserved_name, id)
            .map_err(|e| match e {
                StoreError::NameTaken { name, id, .. } => ContainerError::NameTaken { name, id },
                other => other.into(),
            })?;
        let bundle = self.bundle_dir(id);
        // The mount points a container's process resolves by path: in a
        // pod's user namespace it does so as that namespace's root, an
        // unprivileged ID on the host, which may traverse the state dir
        // (0711) but not the root dir (0700); elsewhere, the bundle.
        let mounts_dir = if pod.context.user.is_some() {
            self.exit_dir(id)
        } else {
            bundle.clone()
        };
        let overlay = Overlay {
            lowerdirs: image.lowerdirs.clone(),
            upperdir: bundle.join("upper"),
            workdir: bundle.join("work"),
            target: mounts_dir.join("rootfs"),
            idmap: pod.context.user.as_ref().map(|(userns, mappings)| {
                let (root_uid, root_gid) = mappings.root();
                OverlayIdmap {
                    userns: userns.clone(),
                    dir: mounts_dir.join(IDMAPPED_DIR),
                    root_uid,
                    root_gid,
                }
            }),
        };
        let image_volumes: Vec<ImageVolume> = image
            .volumes
            .iter()
            .map(|v| ImageVolume {
                mount_index: v.mount_index,
                image_id: v.image_id.clone(),
                lowerdirs: v.lowerdirs.clone(),
                target: mounts_dir.join(VOLUMES_DIR).join(v.mount_index.to_string()),
            })
            .collect();
        let log_path = if pod.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            names::log_path(Path::new(&pod.log_directory), &config.log_path)?
                .display()
                .to_string()
        };
        let mut cgroup_path =
            cgroups::container_cgroup_path(self.driver, &pod.context.cgroup_parent, id)?;
        if let Some(systemd) = &self.systemd {
            // Where the manager's units live (another instance than the
            // system manager keeps them below its own cgroup).
            cgroup_path = format!("{}{cgroup_path}", systemd.cgroup_root());
        }

        let prepared = {
            let mounts_dir = mounts_dir.clone();
            let (config, image, pod, overlay, bundle, cgroup_path, exit_dir, volumes) = (
                config.clone(),
                image.clone(),
                pod.clone(),
                overlay.clone(),
                bundle.clone(),
                cgroup_path.clone(),
                self.exit_dir(id),
                image_volumes.clone(),
            );
            blocking(move || {
                if config
                    .mounts
                    .iter()
                    .any(|m| m.propagation != Propagation::Private)
                {
                    let info = Path::new("/proc/self/mountinfo");
                    let text = std::fs::read_to_string(info).map_err(io_err("read", info))?;
                    spec::check_mount_propagation(&config, &text)?;
                }
                std::fs::create_dir_all(&bundle).map_err(io_err("create", &bundle))?;
                std::fs::create_dir_all(&exit_dir).map_err(io_err("create", &exit_dir))?;
                overlay.mount()?;
                let user =
                    user::resolve(&overlay.target, &image.run_config.user, &config.security)?;
                let mut spec = spec::build(
                    &config,
                    &image.run_config,
                    &pod.context,
                    &user,
                    &overlay.target,
                    &cgroup_path,
                    &spec::held_capabilities(),
                )?;
                for volume in &volumes {
                    volume.mount()?;
                }
                // CRI mounts sent with ID mappings: idmapped clones (not
                // of the mounts below their source) under `mounts_dir`,
                // bound from there.
                for (i, m) in config.mounts.iter().enumerate() {
                    if m.uid_mappings.is_empty() {
                        continue;
                    }
                    let target = mounts_dir.join(IDMAPPED_DIR).join(format!("m{i}"));
                    let source = std::fs::canonicalize(&m.host_path)
                        .map_err(io_err("resolve", Path::new(&m.host_path)))?;
                    super::rootfs::mount_idmapped_volume(
                        &source,
                        &target,
                        &m.uid_mappings,
                        &m.gid_mappings,
                    )?;
                    spec::set_mount_source(&mut spec, &m.container_path, &target);
                }
                let sources: Vec<_> = volumes
                    .iter()
                    .map(|v| (v.mount_index, v.target.clone()))
                    .collect();
                spec::add_image_volumes(&mut spec, &config, &sources)?;
                spec::write(&bundle, &spec)?;
                // The seccomp filter compiled once per profile, here, so
                // that no start compiles it (`seccomp::program`). Without
                // the file (a profile libseccomp refuses) the start
                // compiles it and reports the error, as it always did.
                if let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
                    let _ = crate::seccomp::program::write(&bundle, seccomp);
                }
                Ok::<_, ContainerError>(user)
            })
            .await
        };
        let user = match prepared {
            Ok(user) => user,
            Err(e) => {
                let (manager, id, target) = (self.clone(), id.to_owned(), overlay.target.clone());
                let _ = blocking(move || {
                    manager.remove_files(&id, &target);
                    Ok::<_, ContainerError>(())
                })
                .await;
                return Err(e);
            }
        };

        let record = ContainerRecord {
            schema: SCHEMA,
            id: id.to_owned(),
            reserved_name,
            pod_id: pod.id.clone(),
            image_id: image.id.clone(),
            image_ref: image.reference.clone(),
            created_at: crate::clock::now_unix_nanos(),
            state: State::Created,
            started: None,
            exit: None,
            log_path,
            cgroup_path,
            overlay: overlay.clone(),
            stop_signal,
            starting: false,
            image_volumes,
            user: Some(user),
            runtime: pod.runtime.clone(),
            config,
        };
        crate::sandbox::crash_point("create-container-before-record");
        let event = super::manager::event_of(&record, EventKind::Created);
        if let Err(e) = self.store.insert(reservation, record) {
            self.remove_files(id, &overlay.target);
            return Err(e.into());
        }
        self.events.publish(event);
        crate::sandbox::crash_point("create-container-after-record");
        Ok(())
    }
}
