//! A container's persisted record: one JSON file per container in the
//! container store, written atomically at every state change.
//!
//! The format carries a `schema` number. Records without one were written
//! before the domain config existed (they hold the CRI message itself) and
//! are upgraded as they load (`legacy`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::ContainerConfig;
use super::rootfs::{ImageVolume, Overlay};
use super::state::{Exit, State, Transition, TransitionError};
use crate::monitor::Started;
use crate::store::Record;

/// The record format this build writes.
pub const SCHEMA: u32 = 1;

/// A container's persisted record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub schema: u32,
    pub id: String,
    /// The reserved name: `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`.
    pub reserved_name: String,
    pub pod_id: String,
    /// What CreateContainer asked for; `resources` follows
    /// UpdateContainerResources, so it is what is in force.
    pub config: ContainerConfig,
    /// `sha256:<config digest>` of the image.
    pub image_id: String,
    /// The reference the container asked for.
    pub image_ref: String,
    pub created_at: i64,
    pub state: State,
    pub started: Option<Started>,
    pub exit: Option<Exit>,
    /// Absolute; empty when the pod has no log directory.
    pub log_path: String,
    pub cgroup_path: String,
    pub overlay: Overlay,
    /// The signal StopContainer sends first (the image's STOPSIGNAL).
    pub stop_signal: String,
    /// Set while StartContainer ran by versions that marked a start in the
    /// record (now a file in the state dir): found set at start, the start
    /// was cut off by a crash.
    #[serde(default)]
    pub starting: bool,
    /// The image volumes mounted for the container (remounted by a start
    /// after a reboot, as the overlay is).
    #[serde(default)]
    pub image_volumes: Vec<ImageVolume>,
    /// Who the process runs as, resolved at creation (ContainerStatus.user);
    /// `None` in records written before it was kept.
    #[serde(default)]
    pub user: Option<super::spec::ResolvedUser>,
    /// The external OCI runtime of the pod's handler that runs the
    /// container, kept so it is deleted by the runtime that made it even
    /// after the config changed; `None`: the built-in executor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::executor::oci_runtime::OciRuntime>,
}

impl Record for ContainerRecord {
    fn id(&self) -> &str {
        &self.id
    }

    fn name(&self) -> &str {
        &self.reserved_name
    }

    fn decode(bytes: &[u8]) -> serde_json::Result<Self> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        if value.get("schema").is_none() {
            return serde_json::from_value::<legacy::RecordV0>(value).map(Into::into);
        }
        serde_json::from_value(value)
    }
}

impl ContainerRecord {
    pub fn started_at(&self) -> i64 {
        self.started
            .as_ref()
            .map(|s| s.started_at_unix_nano)
            .unwrap_or(0)
    }

    /// Moves the record to its next state, with what the move brings (the
    /// start's pids, the exit); refuses a move the lifecycle forbids.
    pub fn apply(&mut self, transition: Transition) -> Result<(), TransitionError> {
        self.state = self.state.next(&transition)?;
        self.starting = false;
        match transition {
            Transition::Start(started) => self.started = Some(started),
            Transition::FailStart(exit)
            | Transition::Exit(exit)
            | Transition::StopUnstarted(exit) => self.exit = Some(exit),
        }
        Ok(())
    }

    /// Does the record carry every label of `selector`?
    pub fn has_labels(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(k, v)| self.config.labels.get(k) == Some(v))
    }
}

/// Records without a `schema`: the container's CRI `ContainerConfig`
/// stored as prost's serde JSON. Only what the domain config keeps is read.
mod legacy {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::{ContainerRecord, SCHEMA};
    use crate::container::config::{
        ContainerConfig, CriResourceFields, DeviceRequest, EnvVar, IdMapping, ImageRequest,
        MountRequest, Propagation, SeLinuxLabel, SecurityContext, SecurityProfile,
    };
    use crate::container::rootfs::Overlay;
    use crate::container::state::{Exit, State};
    use crate::monitor::Started;

    #[derive(Deserialize)]
    pub(super) struct RecordV0 {
        id: String,
        reserved_name: String,
        pod_id: String,
        config: ConfigV0,
        image_id: String,
        image_ref: String,
        created_at: i64,
        state: State,
        started: Option<Started>,
        exit: Option<Exit>,
        log_path: String,
        cgroup_path: String,
        overlay: Overlay,
        stop_signal: String,
        #[serde(default)]
        starting: bool,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct ConfigV0 {
        metadata: Option<MetadataV0>,
        image: Option<ImageV0>,
        command: Vec<String>,
        args: Vec<String>,
        working_dir: String,
        envs: Vec<KeyValueV0>,
        mounts: Vec<MountV0>,
        devices: Vec<DeviceRequest>,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
        log_path: String,
        stdin: bool,
        stdin_once: bool,
        tty: bool,
        linux: Option<LinuxV0>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct MetadataV0 {
        name: String,
        attempt: u32,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct ImageV0 {
        image: String,
        annotations: BTreeMap<String, String>,
        user_specified_image: String,
        runtime_handler: String,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct KeyValueV0 {
        key: String,
        value: String,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct MountV0 {
        container_path: String,
        host_path: String,
        readonly: bool,
        selinux_relabel: bool,
        /// The CRI enum: 0 private, 1 host-to-container, 2 bidirectional.
        propagation: i32,
        uid_mappings: Vec<IdMapping>,
        gid_mappings: Vec<IdMapping>,
        recursive_read_only: bool,
        image: Option<ImageV0>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct LinuxV0 {
        resources: Option<CriResourceFields>,
        security_context: Option<SecurityV0>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct CapabilitiesV0 {
        add_capabilities: Vec<String>,
        drop_capabilities: Vec<String>,
        add_ambient_capabilities: Vec<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Int64V0 {
        value: i64,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct ProfileV0 {
        /// The CRI enum: 0 RuntimeDefault, 1 Unconfined, 2 Localhost.
        profile_type: i32,
        localhost_ref: String,
    }

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct SecurityV0 {
        capabilities: Option<CapabilitiesV0>,
        privileged: bool,
        selinux_options: Option<SeLinuxLabel>,
        run_as_user: Option<Int64V0>,
        run_as_group: Option<Int64V0>,
        run_as_username: String,
        readonly_rootfs: bool,
        supplemental_groups: Vec<i64>,
        /// The CRI enum: 0 Merge, 1 Strict.
        supplemental_groups_policy: i32,
        no_new_privs: bool,
        masked_paths: Vec<String>,
        readonly_paths: Vec<String>,
        seccomp: Option<ProfileV0>,
        apparmor: Option<ProfileV0>,
    }

    fn profile(p: ProfileV0) -> SecurityProfile {
        SecurityProfile {
            profile_type: match p.profile_type {
                1 => "Unconfined",
                2 => "Localhost",
                _ => "RuntimeDefault",
            }
            .into(),
            localhost_ref: p.localhost_ref,
        }
    }

    impl From<SecurityV0> for SecurityContext {
        fn from(s: SecurityV0) -> Self {
            let caps = s.capabilities.unwrap_or_default();
            SecurityContext {
                privileged: s.privileged,
                add_capabilities: caps.add_capabilities,
                drop_capabilities: caps.drop_capabilities,
                add_ambient_capabilities: caps.add_ambient_capabilities,
                run_as_user: s.run_as_user.map(|v| v.value),
                run_as_group: s.run_as_group.map(|v| v.value),
                run_as_username: s.run_as_username,
                supplemental_groups: s.supplemental_groups,
                supplemental_groups_policy: if s.supplemental_groups_policy == 1 {
                    "Strict"
                } else {
                    "Merge"
                }
                .into(),
                readonly_rootfs: s.readonly_rootfs,
                no_new_privs: s.no_new_privs,
                masked_paths: s.masked_paths,
                readonly_paths: s.readonly_paths,
                seccomp: s.seccomp.map(profile),
                apparmor: s.apparmor.map(profile),
                selinux: s.selinux_options,
            }
        }
    }

    impl From<ImageV0> for ImageRequest {
        fn from(i: ImageV0) -> Self {
            ImageRequest {
                image: i.image,
                annotations: i.annotations,
                user_specified_image: i.user_specified_image,
                runtime_handler: i.runtime_handler,
            }
        }
    }

    impl From<MountV0> for MountRequest {
        fn from(m: MountV0) -> Self {
            MountRequest {
                container_path: m.container_path,
                host_path: m.host_path,
                readonly: m.readonly,
                recursive_read_only: m.recursive_read_only,
                selinux_relabel: m.selinux_relabel,
                propagation: match m.propagation {
                    1 => Propagation::HostToContainer,
                    2 => Propagation::Bidirectional,
                    _ => Propagation::Private,
                },
                uid_mappings: m.uid_mappings,
                gid_mappings: m.gid_mappings,
                image: m.image.map(|i| i.image).unwrap_or_default(),
                image_sub_path: String::new(),
            }
        }
    }

    impl From<ConfigV0> for ContainerConfig {
        fn from(c: ConfigV0) -> Self {
            let metadata = c.metadata.unwrap_or_default();
            let linux = c.linux.unwrap_or_default();
            ContainerConfig {
                name: metadata.name,
                attempt: metadata.attempt,
                image: c.image.map(Into::into).unwrap_or_default(),
                command: c.command,
                args: c.args,
                working_dir: c.working_dir,
                envs: c
                    .envs
                    .into_iter()
                    .map(|kv| EnvVar {
                        name: kv.key,
                        value: kv.value,
                    })
                    .collect(),
                mounts: c.mounts.into_iter().map(Into::into).collect(),
                devices: c.devices,
                labels: c.labels,
                annotations: c.annotations,
                log_path: c.log_path,
                stdin: c.stdin,
                stdin_once: c.stdin_once,
                tty: c.tty,
                resources: linux.resources.map(Into::into),
                security: linux.security_context.map(Into::into).unwrap_or_default(),
                stop_signal: String::new(),
            }
        }
    }

    impl From<RecordV0> for ContainerRecord {
        fn from(r: RecordV0) -> Self {
            ContainerRecord {
                schema: SCHEMA,
                id: r.id,
                reserved_name: r.reserved_name,
                pod_id: r.pod_id,
                config: r.config.into(),
                image_id: r.image_id,
                image_ref: r.image_ref,
                created_at: r.created_at,
                state: r.state,
                started: r.started,
                exit: r.exit,
                log_path: r.log_path,
                cgroup_path: r.cgroup_path,
                overlay: r.overlay,
                stop_signal: r.stop_signal,
                starting: r.starting,
                image_volumes: Vec::new(),
                user: None,
                runtime: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::config::{Propagation, SecurityProfile};

    /// A record as the first release wrote it (the CRI message inside).
    const RECORD_V0: &str = include_str!("testdata/record-v0.json");

    #[test]
    fn records_without_schema_are_upgraded() {
        let r = ContainerRecord::decode(RECORD_V0.as_bytes()).unwrap();
        assert_eq!(r.schema, SCHEMA);
        assert_eq!((r.config.name.as_str(), r.config.attempt), ("web", 2));
        assert_eq!(r.config.image.image, "registry.local/web:1");
        assert_eq!(r.config.image.annotations["a"], "b");
        assert_eq!(r.config.command, ["/bin/sh"]);
        assert_eq!(r.config.args, ["-c", "sleep 1000"]);
        assert_eq!(r.config.working_dir, "/srv");
        assert_eq!(
            (
                r.config.envs[0].name.as_str(),
                r.config.envs[0].value.as_str()
            ),
            ("K", "V")
        );
        let mount = &r.config.mounts[0];
        assert_eq!(mount.host_path, "/var/tmp/data");
        assert!(mount.readonly);
        assert_eq!(mount.propagation, Propagation::HostToContainer);
        assert_eq!(r.config.devices[0].permissions, "rw");
        assert_eq!(r.config.labels["io.kubernetes.container.name"], "web");
        assert_eq!(r.config.log_path, "web/2.log");
        assert!(r.config.stdin && r.config.stdin_once && !r.config.tty);
        let res = r.config.resources.as_ref().unwrap();
        assert_eq!(res.cgroup.cpu_shares, Some(512));
        assert_eq!(res.cgroup.cpu_quota, Some(50000));
        assert_eq!(res.cgroup.cpu_period, Some(100000));
        assert_eq!(res.cgroup.memory_limit, Some(64 << 20));
        assert_eq!(res.cgroup.memory_swap, None);
        assert_eq!(res.cgroup.cpuset_cpus.as_deref(), Some("0"));
        assert_eq!(res.cgroup.cpuset_mems, None);
        assert_eq!(res.cgroup.hugepage_limits[0].page_size, "2MB");
        assert_eq!(res.cgroup.unified["memory.high"], "60000000");
        assert_eq!(res.oom_score_adj, 900);
        let sc = &r.config.security;
        assert_eq!(sc.add_capabilities, ["NET_ADMIN"]);
        assert_eq!(sc.drop_capabilities, ["KILL"]);
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1000), Some(1000)));
        assert_eq!(sc.supplemental_groups, [5]);
        assert_eq!(sc.supplemental_groups_policy, "Merge");
        assert!(sc.no_new_privs && !sc.privileged);
        assert_eq!(sc.masked_paths, ["/proc/kcore"]);
        assert_eq!(r.state, State::Exited);
        assert_eq!(r.exit.as_ref().unwrap().code, 137);
        assert_eq!(r.started.as_ref().unwrap().container_pid, 4243);
        assert_eq!(r.stop_signal, "SIGQUIT");
        assert_eq!(r.overlay.lowerdirs.len(), 1);
        assert!(!r.starting);
    }

    #[test]
    fn current_records_round_trip() {
        let mut r = ContainerRecord::decode(RECORD_V0.as_bytes()).unwrap();
        r.config.security.seccomp = Some(SecurityProfile {
            profile_type: "Localhost".into(),
            localhost_ref: "/p.json".into(),
        });
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(ContainerRecord::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn a_record_of_unknown_shape_is_an_error() {
        assert!(ContainerRecord::decode(br#"{"schema": 1, "id": 7}"#).is_err());
        assert!(ContainerRecord::decode(br#"{"id": "x"}"#).is_err());
    }
}
