//! The container RPCs of RuntimeService, and the conversions of container
//! messages: CRI → the domain's `ContainerConfig` on the way in, records
//! → CRI messages on the way out.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::api as cri;
use tonic::Status;

use super::{CriService, require};
use crate::cgroups::HugepageLimit;
use crate::container::ContainerFilter;
use crate::container::config::{
    ContainerConfig, ContainerResources, CriResourceFields, DeviceRequest, EnvVar, IdMapping,
    ImageRequest, MountRequest, Propagation, SeLinuxLabel, SecurityContext, SecurityProfile,
};
use crate::container::record::ContainerRecord;
use crate::container::state::State;

pub(super) async fn create(
    cri: &CriService,
    req: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    require("pod_sandbox_id", &req.pod_sandbox_id)?;
    let config = req
        .config
        .ok_or_else(|| Status::invalid_argument("container config is required"))?;
    let config = container_config(config)?;
    let container_id = cri
        .runtime
        .create_container(&req.pod_sandbox_id, config)
        .await?;
    Ok(cri::CreateContainerResponse { container_id })
}

pub(super) async fn start(
    cri: &CriService,
    req: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse, Status> {
    require("container_id", &req.container_id)?;
    cri.runtime.start_container(&req.container_id).await?;
    Ok(cri::StartContainerResponse {})
}

pub(super) async fn stop(
    cri: &CriService,
    req: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, Status> {
    require("container_id", &req.container_id)?;
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    cri.runtime
        .containers()
        .stop(&req.container_id, timeout)
        .await?;
    Ok(cri::StopContainerResponse {})
}

pub(super) async fn remove(
    cri: &CriService,
    req: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, Status> {
    require("container_id", &req.container_id)?;
    cri.runtime.remove_container(&req.container_id).await?;
    Ok(cri::RemoveContainerResponse {})
}

pub(super) async fn list(
    cri: &CriService,
    req: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let state = filter.state.and_then(|s| state_from_cri(s.state));
    let filter = container_filter(
        cri,
        filter.id,
        &filter.pod_sandbox_id,
        state,
        filter.label_selector,
    );
    let containers = cri
        .runtime
        .containers()
        .list(&filter)
        .iter()
        .map(|record| to_container(record))
        .collect();
    Ok(cri::ListContainersResponse { containers })
}

pub(super) async fn status(
    cri: &CriService,
    req: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    require("container_id", &req.container_id)?;
    let record = cri.runtime.containers().status(&req.container_id)?;
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = cri.runtime.container_verbose_info(&record);
        info.insert("info".to_owned(), verbose.to_string());
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(to_status(&record)),
        info,
    })
}

pub(super) async fn exec_sync(
    cri: &CriService,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    require("container_id", &req.container_id)?;
    if req.cmd.is_empty() {
        return Err(Status::invalid_argument("cmd must not be empty"));
    }
    let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
    let output = cri
        .runtime
        .containers()
        .exec_sync(&req.container_id, req.cmd, timeout)
        .await?;
    Ok(cri::ExecSyncResponse {
        stdout: output.stdout,
        stderr: output.stderr,
        exit_code: output.exit_code,
    })
}

pub(super) async fn reopen_log(
    cri: &CriService,
    req: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    require("container_id", &req.container_id)?;
    cri.runtime
        .containers()
        .reopen_log(&req.container_id)
        .await?;
    Ok(cri::ReopenContainerLogResponse {})
}

pub(super) async fn update_resources(
    cri: &CriService,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    require("container_id", &req.container_id)?;
    let resources = req.linux.map(resources_from_cri).unwrap_or_default();
    cri.runtime
        .containers()
        .update_resources(&req.container_id, resources)
        .await?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

// CRI → domain.

/// A ListContainers-style filter: an ID or prefix, a pod ID or prefix, a
/// state, labels.
pub(super) fn container_filter(
    cri: &CriService,
    id: String,
    pod_sandbox_id: &str,
    state: Option<State>,
    labels: HashMap<String, String>,
) -> ContainerFilter {
    ContainerFilter {
        id: Some(id).filter(|s| !s.is_empty()),
        pod_id: cri
            .runtime
            .resolve_pod_filter(pod_sandbox_id)
            .map_or(Some(pod_sandbox_id.to_owned()), Some)
            .filter(|s| !s.is_empty()),
        state,
        labels: labels.into_iter().collect(),
    }
}

fn container_config(c: cri::ContainerConfig) -> Result<ContainerConfig, Status> {
    let metadata = c
        .metadata
        .ok_or_else(|| Status::invalid_argument("container config has no metadata"))?;
    let linux = c.linux.unwrap_or_default();
    Ok(ContainerConfig {
        name: metadata.name,
        attempt: metadata.attempt,
        image: c.image.map(image_request).unwrap_or_default(),
        command: c.command,
        args: c.args,
        working_dir: c.working_dir,
        envs: c.envs.into_iter().map(env_var).collect::<Result<_, _>>()?,
        mounts: c
            .mounts
            .into_iter()
            .map(mount_request)
            .collect::<Result<_, _>>()?,
        devices: c
            .devices
            .into_iter()
            .map(|d| DeviceRequest {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        labels: c.labels.into_iter().collect(),
        annotations: c.annotations.into_iter().collect(),
        log_path: c.log_path,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        resources: linux.resources.map(resources_from_cri),
        security: linux
            .security_context
            .map(security_context)
            .transpose()?
            .unwrap_or_default(),
        stop_signal: stop_signal_from_cri(c.stop_signal)?,
    })
}

/// An environment variable; the OCI spec holds text, so the value must be
/// UTF-8.
fn env_var(kv: cri::KeyValue) -> Result<EnvVar, Status> {
    let value = String::from_utf8(kv.value).map_err(|_| {
        Status::invalid_argument(format!(
            "environment variable {:?}: the value is not UTF-8",
            kv.key
        ))
    })?;
    Ok(EnvVar {
        name: kv.key,
        value,
    })
}

/// The CRI's stop signal by name (`SIGRTMINPLUS3` → `SIGRTMIN+3`); empty
/// for the runtime's default.
fn stop_signal_from_cri(value: i32) -> Result<String, Status> {
    match cri::Signal::try_from(value) {
        Ok(cri::Signal::RuntimeDefault) => Ok(String::new()),
        Ok(signal) => Ok(signal
            .as_str_name()
            .replace("PLUS", "+")
            .replace("MINUS", "-")),
        Err(_) => Err(Status::invalid_argument(format!(
            "stop_signal: unknown signal {value}"
        ))),
    }
}

/// The stop signal in force as the CRI names it.
fn stop_signal_to_cri(name: &str) -> i32 {
    if name.is_empty() {
        return cri::Signal::Sigterm as i32;
    }
    crate::container::signal::canonical_name(name)
        .ok()
        .and_then(|n| cri::Signal::from_str_name(&n.replace('+', "PLUS").replace('-', "MINUS")))
        .unwrap_or(cri::Signal::RuntimeDefault) as i32
}

fn image_request(i: cri::ImageSpec) -> ImageRequest {
    ImageRequest {
        image: i.image,
        annotations: i.annotations.into_iter().collect(),
        user_specified_image: i.user_specified_image,
        runtime_handler: i.runtime_handler,
    }
}

fn id_mapping(m: cri::IdMapping) -> IdMapping {
    IdMapping {
        host_id: m.host_id,
        container_id: m.container_id,
        length: m.length,
    }
}

fn mount_request(m: cri::Mount) -> Result<MountRequest, Status> {
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "mount {:?}: unknown propagation {}",
                m.container_path, m.propagation
            )));
        }
    };
    Ok(MountRequest {
        container_path: m.container_path,
        host_path: m.host_path,
        readonly: m.readonly,
        recursive_read_only: m.recursive_read_only,
        selinux_relabel: m.selinux_relabel,
        propagation,
        uid_mappings: m.uid_mappings.into_iter().map(id_mapping).collect(),
        gid_mappings: m.gid_mappings.into_iter().map(id_mapping).collect(),
        image: m.image.map(|i| i.image).unwrap_or_default(),
        image_sub_path: m.image_sub_path,
    })
}

/// CRI zero values mean "not specified".
pub(super) fn resources_from_cri(r: cri::LinuxContainerResources) -> ContainerResources {
    CriResourceFields {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| HugepageLimit {
                page_size: h.page_size,
                limit: h.limit,
            })
            .collect(),
        unified: r.unified.into_iter().collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
    .into()
}

fn profile(field: &str, p: cri::SecurityProfile) -> Result<SecurityProfile, Status> {
    let kind = cri::security_profile::ProfileType::try_from(p.profile_type).map_err(|_| {
        Status::invalid_argument(format!("{field}: unknown profile type {}", p.profile_type))
    })?;
    Ok(SecurityProfile {
        profile_type: kind.as_str_name().to_owned(),
        localhost_ref: p.localhost_ref,
    })
}

// `seccomp_profile_path` and `apparmor_profile` are deprecated in the
// CRI, and read on purpose for clients that still send them.
#[allow(deprecated)]
fn security_context(s: cri::LinuxContainerSecurityContext) -> Result<SecurityContext, Status> {
    let caps = s.capabilities.unwrap_or_default();
    let policy =
        cri::SupplementalGroupsPolicy::try_from(s.supplemental_groups_policy).map_err(|_| {
            Status::invalid_argument(format!(
                "security_context.supplemental_groups_policy: unknown policy {}",
                s.supplemental_groups_policy
            ))
        })?;
    Ok(SecurityContext {
        privileged: s.privileged,
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        add_ambient_capabilities: caps.add_ambient_capabilities,
        run_as_user: s.run_as_user.map(|v| v.value),
        run_as_group: s.run_as_group.map(|v| v.value),
        run_as_username: s.run_as_username,
        supplemental_groups: s.supplemental_groups,
        supplemental_groups_policy: match policy {
            cri::SupplementalGroupsPolicy::Merge => "Merge",
            cri::SupplementalGroupsPolicy::Strict => "Strict",
        }
        .into(),
        readonly_rootfs: s.readonly_rootfs,
        no_new_privs: s.no_new_privs,
        masked_paths: s.masked_paths,
        readonly_paths: s.readonly_paths,
        seccomp: s
            .seccomp
            .map(|p| profile("security_context.seccomp", p))
            .transpose()?
            .or_else(|| crate::seccomp::from_deprecated_path(&s.seccomp_profile_path)),
        apparmor: s
            .apparmor
            .map(|p| profile("security_context.apparmor", p))
            .transpose()?
            .or_else(|| crate::apparmor::from_deprecated_name(&s.apparmor_profile)),
        selinux: s.selinux_options.map(|o| SeLinuxLabel {
            user: o.user,
            role: o.role,
            r#type: o.r#type,
            level: o.level,
        }),
    })
}

fn state_from_cri(value: i32) -> Option<State> {
    match cri::ContainerState::try_from(value).ok()? {
        cri::ContainerState::ContainerCreated => Some(State::Created),
        cri::ContainerState::ContainerRunning => Some(State::Running),
        cri::ContainerState::ContainerExited => Some(State::Exited),
        cri::ContainerState::ContainerUnknown => None,
    }
}

// Domain → CRI.

fn state_to_cri(state: State) -> i32 {
    (match state {
        State::Created => cri::ContainerState::ContainerCreated,
        State::Running => cri::ContainerState::ContainerRunning,
        State::Exited => cri::ContainerState::ContainerExited,
    }) as i32
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn metadata(record: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: record.config.name.clone(),
        attempt: record.config.attempt,
    }
}

/// The image as the container asked for it; the reference it was resolved
/// from when the request named none.
fn image_spec(record: &ContainerRecord) -> cri::ImageSpec {
    let i = &record.config.image;
    cri::ImageSpec {
        image: if i.image.is_empty() {
            record.image_ref.clone()
        } else {
            i.image.clone()
        },
        annotations: map(&i.annotations),
        user_specified_image: i.user_specified_image.clone(),
        runtime_handler: i.runtime_handler.clone(),
        image_ref: String::new(),
    }
}

fn id_mapping_to_cri(m: &IdMapping) -> cri::IdMapping {
    cri::IdMapping {
        host_id: m.host_id,
        container_id: m.container_id,
        length: m.length,
    }
}

fn mount_to_cri(m: &MountRequest) -> cri::Mount {
    cri::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation: (match m.propagation {
            Propagation::Private => cri::MountPropagation::PropagationPrivate,
            Propagation::HostToContainer => cri::MountPropagation::PropagationHostToContainer,
            Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
        }) as i32,
        uid_mappings: m.uid_mappings.iter().map(id_mapping_to_cri).collect(),
        gid_mappings: m.gid_mappings.iter().map(id_mapping_to_cri).collect(),
        recursive_read_only: m.recursive_read_only,
        image: (!m.image.is_empty()).then(|| cri::ImageSpec {
            image: m.image.clone(),
            ..Default::default()
        }),
        image_sub_path: m.image_sub_path.clone(),
    }
}

fn resources_to_cri(r: &ContainerResources) -> cri::LinuxContainerResources {
    let c = &r.cgroup;
    let unsigned = |v: Option<u64>| v.map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
    cri::LinuxContainerResources {
        cpu_period: unsigned(c.cpu_period),
        cpu_quota: c.cpu_quota.unwrap_or(0),
        cpu_shares: unsigned(c.cpu_shares),
        memory_limit_in_bytes: c.memory_limit.unwrap_or(0),
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: c.cpuset_cpus.clone().unwrap_or_default(),
        cpuset_mems: c.cpuset_mems.clone().unwrap_or_default(),
        hugepage_limits: c
            .hugepage_limits
            .iter()
            .map(|h| cri::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: map(&c.unified),
        memory_swap_limit_in_bytes: c.memory_swap.unwrap_or(0),
    }
}

fn to_container(record: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: record.id.clone(),
        pod_sandbox_id: record.pod_id.clone(),
        metadata: Some(metadata(record)),
        image: Some(image_spec(record)),
        image_ref: record.image_id.clone(),
        state: state_to_cri(record.state),
        created_at: record.created_at,
        labels: map(&record.config.labels),
        annotations: map(&record.config.annotations),
        image_id: record.image_id.clone(),
    }
}

pub(super) fn to_status(record: &ContainerRecord) -> cri::ContainerStatus {
    let exit = record.exit.clone().unwrap_or_default();
    cri::ContainerStatus {
        id: record.id.clone(),
        metadata: Some(metadata(record)),
        state: state_to_cri(record.state),
        created_at: record.created_at,
        started_at: record.started_at(),
        finished_at: exit.finished_at,
        exit_code: exit.code,
        image: Some(image_spec(record)),
        image_ref: record.image_id.clone(),
        reason: exit.reason,
        message: exit.message,
        labels: map(&record.config.labels),
        annotations: map(&record.config.annotations),
        mounts: record.config.mounts.iter().map(mount_to_cri).collect(),
        log_path: record.log_path.clone(),
        resources: record
            .config
            .resources
            .as_ref()
            .map(|r| cri::ContainerResources {
                linux: Some(resources_to_cri(r)),
                windows: None,
            }),
        image_id: record.image_id.clone(),
        user: record.user.as_ref().map(|u| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(u.uid),
                gid: i64::from(u.gid),
                supplemental_groups: u.groups().into_iter().map(i64::from).collect(),
            }),
        }),
        stop_signal: stop_signal_to_cri(&record.stop_signal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_config() -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "web".into(),
                attempt: 3,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox".into(),
                annotations: [("a".to_string(), "b".to_string())].into(),
                ..Default::default()
            }),
            command: vec!["sh".into()],
            args: vec!["-c".into(), "true".into()],
            working_dir: "/w".into(),
            envs: vec![cri::KeyValue {
                key: "K".into(),
                value: b"V".to_vec(),
            }],
            stop_signal: cri::Signal::Sigrtminplus3 as i32,
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/srv".into(),
                readonly: true,
                propagation: cri::MountPropagation::PropagationBidirectional as i32,
                uid_mappings: vec![cri::IdMapping {
                    host_id: 1000,
                    container_id: 0,
                    length: 10,
                }],
                ..Default::default()
            }],
            labels: [("l".to_string(), "1".to_string())].into(),
            log_path: "web/3.log".into(),
            tty: true,
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    cpu_shares: 256,
                    memory_limit_in_bytes: 1 << 26,
                    oom_score_adj: 10,
                    hugepage_limits: vec![cri::HugepageLimit {
                        page_size: "2MB".into(),
                        limit: 1 << 21,
                    }],
                    unified: [("memory.high".to_string(), "1G".to_string())].into(),
                    ..Default::default()
                }),
                security_context: Some(cri::LinuxContainerSecurityContext {
                    run_as_user: Some(cri::Int64Value { value: 7 }),
                    supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
                    seccomp: Some(cri::SecurityProfile {
                        profile_type: cri::security_profile::ProfileType::Localhost as i32,
                        localhost_ref: "/p.json".into(),
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    #[allow(deprecated)]
    fn deprecated_profile_strings_are_read_when_the_profiles_are_absent() {
        let mut cfg = full_config();
        let s = cfg
            .linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap();
        s.seccomp = None;
        s.seccomp_profile_path = "runtime/default".into();
        s.apparmor_profile = "localhost/my-profile".into();
        let c = container_config(cfg).unwrap();
        let seccomp = c.security.seccomp.unwrap();
        assert_eq!(seccomp.profile_type, "RuntimeDefault");
        let apparmor = c.security.apparmor.unwrap();
        assert_eq!(
            (
                apparmor.profile_type.as_str(),
                apparmor.localhost_ref.as_str()
            ),
            ("Localhost", "localhost/my-profile")
        );
        // The structured field wins.
        let c = container_config(full_config()).unwrap();
        assert_eq!(c.security.seccomp.unwrap().localhost_ref, "/p.json");
    }

    #[test]
    fn a_cri_config_becomes_the_domain_config() {
        let c = container_config(full_config()).unwrap();
        assert_eq!((c.name.as_str(), c.attempt), ("web", 3));
        assert_eq!(c.image.image, "busybox");
        assert_eq!(c.envs[0].name, "K");
        assert_eq!(c.stop_signal, "SIGRTMIN+3");
        assert_eq!(c.mounts[0].propagation, Propagation::Bidirectional);
        assert_eq!(c.mounts[0].uid_mappings[0].host_id, 1000);
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.cgroup.cpu_shares, Some(256));
        assert_eq!(r.cgroup.cpu_quota, None, "0 means unset");
        assert_eq!(r.cgroup.hugepage_limits[0].limit, 1 << 21);
        assert_eq!(r.cgroup.unified["memory.high"], "1G");
        assert_eq!(r.oom_score_adj, 10);
        assert_eq!(c.security.run_as_user, Some(7));
        assert_eq!(c.security.supplemental_groups_policy, "Strict");
        assert_eq!(
            c.security.seccomp.as_ref().unwrap().profile_type,
            "Localhost"
        );
    }

    #[test]
    fn bad_enums_and_missing_metadata_are_refused() {
        let mut c = full_config();
        c.metadata = None;
        assert_eq!(
            container_config(c).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut c = full_config();
        c.envs[0].value = vec![0xff, 0xfe];
        let err = container_config(c).unwrap_err();
        assert!(err.message().contains("\"K\""), "{}", err.message());
        let mut c = full_config();
        c.stop_signal = 999;
        assert_eq!(
            container_config(c).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut c = full_config();
        c.mounts[0].propagation = 9;
        let err = container_config(c).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("/data"), "{}", err.message());
    }

    #[test]
    fn status_echoes_what_was_asked() {
        let config = full_config();
        let record = ContainerRecord {
            schema: crate::container::record::SCHEMA,
            id: "c".into(),
            reserved_name: "n".into(),
            pod_id: "p".into(),
            config: container_config(config.clone()).unwrap(),
            image_id: "sha256:x".into(),
            image_ref: "busybox".into(),
            created_at: 1,
            state: State::Created,
            started: None,
            exit: None,
            log_path: String::new(),
            cgroup_path: String::new(),
            overlay: crate::container::rootfs::Overlay {
                lowerdirs: vec![],
                upperdir: "/u".into(),
                workdir: "/w".into(),
                target: "/t".into(),
                idmap: None,
            },
            stop_signal: String::new(),
            starting: false,
            image_volumes: Vec::new(),
            user: Some(crate::container::spec::ResolvedUser {
                uid: 1000,
                gid: 1000,
                additional_gids: vec![1234, 50000],
            }),
            runtime: None,
        };
        let status = to_status(&record);
        assert_eq!(
            status.user.clone().and_then(|u| u.linux),
            Some(cri::LinuxContainerUser {
                uid: 1000,
                gid: 1000,
                supplemental_groups: vec![1000, 1234, 50000],
            })
        );
        assert_eq!(status.mounts, config.mounts);
        assert_eq!(
            status.resources.unwrap().linux,
            config.linux.unwrap().resources
        );
        assert_eq!(status.image, config.image);
        assert_eq!(status.metadata, config.metadata);
        assert_eq!(status.labels, config.labels);
        assert_eq!(status.state, cri::ContainerState::ContainerCreated as i32);
        assert_eq!(status.stop_signal, cri::Signal::Sigterm as i32);
    }

    #[test]
    fn every_resource_field_converts() {
        let cri = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 1 << 30,
            oom_score_adj: 999,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: String::new(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "900M".to_string())].into(),
            memory_swap_limit_in_bytes: 0,
        };
        let all = resources_from_cri(cri);
        assert_eq!(all.oom_score_adj, 999);
        let r = all.cgroup;
        assert_eq!(r.cpu_period, Some(100_000));
        assert_eq!(r.cpu_quota, Some(50_000));
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!(r.memory_limit, Some(1 << 30));
        assert_eq!(r.memory_swap, None);
        assert_eq!(r.cpuset_cpus.as_deref(), Some("0-1"));
        assert_eq!(r.cpuset_mems, None);
        assert_eq!(r.hugepage_limits[0].page_size, "2MB");
        assert_eq!(r.unified["memory.high"], "900M");
        r.validate().unwrap();

        let empty = resources_from_cri(cri::LinuxContainerResources::default());
        assert!(empty.cgroup.is_empty());
    }
}
