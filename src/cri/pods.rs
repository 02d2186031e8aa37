//! The pod sandbox RPCs of RuntimeService, and the conversions of pod
//! messages: CRI proto ↔ the `sandbox` domain types.

use std::collections::HashMap;
use std::sync::Arc;

use super::api as cri;
use tonic::Status;

use super::CriService;
use crate::container::ContainerFilter;
use crate::idmap::{IdMapping, UserNamespace};
use crate::runtime::Runtime;
use crate::sandbox::{
    DnsConfig, LinuxPodConfig, NamespaceMode, NamespaceOptions, PodConfig, PodFilter, PodMetadata,
    PodResources, PodSandbox, PodSecurity, PodState, PortMapping, SandboxError, SeLinuxOptions,
    SecurityProfile,
};

pub(super) async fn run(
    cri: &CriService,
    req: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    let config = pod_config(req)?;
    let pod = detached(&cri.runtime, "RunPodSandbox", |runtime| async move {
        runtime.run_pod(config).await
    })
    .await?;
    Ok(cri::RunPodSandboxResponse {
        pod_sandbox_id: pod.id.clone(),
    })
}

pub(super) async fn stop(
    cri: &CriService,
    req: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse, Status> {
    let id = req.pod_sandbox_id;
    detached(&cri.runtime, "StopPodSandbox", |runtime| async move {
        runtime.sandboxes().stop(&id).await
    })
    .await?;
    Ok(cri::StopPodSandboxResponse {})
}

pub(super) async fn remove(
    cri: &CriService,
    req: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, Status> {
    let id = req.pod_sandbox_id;
    detached(&cri.runtime, "RemovePodSandbox", |runtime| async move {
        runtime.sandboxes().remove(&id).await
    })
    .await?;
    Ok(cri::RemovePodSandboxResponse {})
}

pub(super) async fn status(
    cri: &CriService,
    req: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    let pod = cri.runtime.sandboxes().get(&req.pod_sandbox_id)?;
    let mut reply = pod_status(&pod, req.verbose)?;
    // kubelet's Evented PLEG takes the pod's containers from here, with
    // the timestamp: an empty list would read as "no containers" and make
    // it create them again and again.
    reply.containers_statuses = container_statuses(cri, &pod.id);
    Ok(reply)
}

/// The statuses of a pod's containers, as PodSandboxStatus and the
/// container events carry them.
pub(super) fn container_statuses(cri: &CriService, pod_id: &str) -> Vec<cri::ContainerStatus> {
    let filter = ContainerFilter {
        pod_id: Some(pod_id.to_owned()),
        ..Default::default()
    };
    let mut statuses: Vec<cri::ContainerStatus> = cri
        .runtime
        .containers()
        .list(&filter)
        .iter()
        .map(|record| super::containers::to_status(record))
        .collect();
    newest_first(&mut statuses);
    statuses
}

/// Newest container first, as kubelet sorts its own list: with Evented
/// PLEG it takes PodSandboxStatus's list as it comes
/// (`kuberuntime_manager.go` GetPodStatus) and the first status of a name
/// as that container's current one; an exited predecessor listed first
/// looks like a crashed container to restart (CrashLoopBackOff).
fn newest_first(statuses: &mut [cri::ContainerStatus]) {
    statuses.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
}

pub(super) async fn list(
    cri: &CriService,
    req: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse, Status> {
    let filter = pod_filter(req.filter)?;
    let items = cri
        .runtime
        .sandboxes()
        .list(&filter)
        .iter()
        .map(|pod| pod_item(pod))
        .collect();
    Ok(cri::ListPodSandboxResponse { items })
}

/// UpdatePodSandboxResources (kubelet's in-place pod resize): the pod's
/// new resources and overhead, recorded and reported in the verbose
/// PodSandboxStatus; see `sandbox::resources`. CRI zero values are "not
/// set", as in UpdateContainerResources.
pub(super) async fn update_resources(
    cri: &CriService,
    req: cri::UpdatePodSandboxResourcesRequest,
) -> Result<cri::UpdatePodSandboxResourcesResponse, Status> {
    if req.pod_sandbox_id.is_empty() {
        return Err(Status::invalid_argument("pod_sandbox_id is required"));
    }
    let convert = |r: cri::LinuxContainerResources| super::containers::resources_from_cri(r).cgroup;
    let resources = PodResources {
        overhead: req.overhead.map(convert),
        resources: req.resources.map(convert),
    };
    cri.runtime
        .update_pod_resources(&req.pod_sandbox_id, resources)
        .await?;
    Ok(cri::UpdatePodSandboxResourcesResponse {})
}

/// Runs a pod operation as a task of its own, so it finishes even if the
/// caller goes away (kubelet gives up on a slow CNI plugin and the RPC is
/// dropped): a RunPodSandbox cut short would leave a half-made pod for the
/// next start to clean, while a finished one is listed and kubelet adopts
/// it, as CRI-O keeps a timed-out creation for the retry.
async fn detached<T, E, F, Fut>(runtime: &Arc<Runtime>, rpc: &str, op: F) -> Result<T, Status>
where
    F: FnOnce(Arc<Runtime>) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Into<Status> + Send + 'static,
{
    tokio::spawn(op(runtime.clone()))
        .await
        .map_err(|e| Status::internal(format!("{rpc} task failed: {e}")))?
        .map_err(Into::into)
}

/// The domain config of a RunPodSandbox request.
fn pod_config(request: cri::RunPodSandboxRequest) -> Result<PodConfig, SandboxError> {
    let config = request
        .config
        .ok_or_else(|| SandboxError::invalid("config", "is required"))?;
    let metadata = config
        .metadata
        .ok_or_else(|| SandboxError::invalid("metadata", "is required"))?;
    let linux = config.linux.unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    let ns = security.namespace_options.clone().unwrap_or_default();
    let userns = user_namespace(ns.userns_options.as_ref())?;
    Ok(PodConfig {
        metadata: PodMetadata {
            name: metadata.name,
            uid: metadata.uid,
            namespace: metadata.namespace,
            attempt: metadata.attempt,
        },
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: config.dns_config.map(|d| DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings: config
            .port_mappings
            .into_iter()
            .map(|p| {
                Ok(PortMapping {
                    protocol: cri::Protocol::try_from(p.protocol)
                        .map_err(|_| {
                            SandboxError::invalid(
                                "port_mappings.protocol",
                                format!("unknown protocol {}", p.protocol),
                            )
                        })?
                        .as_str_name()
                        .to_owned(),
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: p.host_ip,
                })
            })
            .collect::<Result<_, SandboxError>>()?,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        runtime_handler: request.runtime_handler,
        linux: LinuxPodConfig {
            cgroup_parent: linux.cgroup_parent,
            sysctls: linux.sysctls.into_iter().collect(),
            namespaces: NamespaceOptions {
                network: namespace_mode("namespace_options.network", ns.network)?,
                pid: namespace_mode("namespace_options.pid", ns.pid)?,
                ipc: namespace_mode("namespace_options.ipc", ns.ipc)?,
                target_id: ns.target_id,
                userns,
            },
            security: PodSecurity {
                privileged: security.privileged,
                run_as_user: security.run_as_user.map(|v| v.value),
                run_as_group: security.run_as_group.map(|v| v.value),
                supplemental_groups: security.supplemental_groups,
                readonly_rootfs: security.readonly_rootfs,
                seccomp: security
                    .seccomp
                    .map(|p| profile("seccomp", p))
                    .transpose()?,
                apparmor: security
                    .apparmor
                    .map(|p| profile("apparmor", p))
                    .transpose()?,
                selinux: security.selinux_options.map(|s| SeLinuxOptions {
                    user: s.user,
                    role: s.role,
                    r#type: s.r#type,
                    level: s.level,
                }),
            },
        },
    })
}

const USERNS: &str = "namespace_options.userns_options";

/// The pod's user namespace from `userns_options`: mode `NODE` (or none)
/// is the node's, without mappings; mode `POD` is one of the pod's own,
/// with exactly one UID and one GID mapping that maps container ID 0 (as
/// kubelet sends; containerd and CRI-O refuse the rest the same way).
/// `CONTAINER` and `TARGET` are refused: the CRI supports neither for
/// user namespaces.
fn user_namespace(
    options: Option<&cri::UserNamespace>,
) -> Result<Option<UserNamespace>, SandboxError> {
    let Some(options) = options else {
        return Ok(None);
    };
    let field = |sub: &str| format!("{USERNS}.{sub}");
    match cri::NamespaceMode::try_from(options.mode) {
        Ok(cri::NamespaceMode::Node) => {
            if !options.uids.is_empty() || !options.gids.is_empty() {
                return Err(SandboxError::invalid(
                    field("uids/gids"),
                    "mappings are not allowed with mode NODE (the node's user namespace)",
                ));
            }
            Ok(None)
        }
        Ok(cri::NamespaceMode::Pod) => {
            let one = |name: &str, list: &[cri::IdMapping]| -> Result<IdMapping, SandboxError> {
                let [m] = list else {
                    return Err(SandboxError::invalid(
                        field(name),
                        format!("mode POD needs exactly one mapping, got {}", list.len()),
                    ));
                };
                let mapping = IdMapping {
                    container_id: m.container_id,
                    host_id: m.host_id,
                    length: m.length,
                };
                if mapping.container_id != 0 {
                    return Err(SandboxError::invalid(
                        field(name),
                        format!(
                            "container ID 0 is not mapped (the mapping starts at {})",
                            mapping.container_id
                        ),
                    ));
                }
                if !mapping.fits() {
                    return Err(SandboxError::invalid(
                        field(name),
                        format!(
                            "mapping of {} IDs from host ID {} is empty or overflows 32 bits",
                            mapping.length, mapping.host_id
                        ),
                    ));
                }
                if mapping.host_id == 0 {
                    return Err(SandboxError::invalid(
                        field(name),
                        "maps the container's root to the host's root: that is the node's user namespace, use mode NODE",
                    ));
                }
                Ok(mapping)
            };
            Ok(Some(UserNamespace {
                uid: one("uids", &options.uids)?,
                gid: one("gids", &options.gids)?,
            }))
        }
        Ok(mode @ (cri::NamespaceMode::Container | cri::NamespaceMode::Target)) => {
            Err(SandboxError::invalid(
                field("mode"),
                format!(
                    "{} is not supported for user namespaces: only POD or NODE",
                    mode.as_str_name()
                ),
            ))
        }
        Err(_) => Err(SandboxError::invalid(
            field("mode"),
            format!("unknown namespace mode {}", options.mode),
        )),
    }
}

/// The `userns_options` PodSandboxStatus reports for a pod.
fn user_namespace_to_cri(userns: Option<&UserNamespace>) -> cri::UserNamespace {
    let map = |m: &IdMapping| cri::IdMapping {
        host_id: m.host_id,
        container_id: m.container_id,
        length: m.length,
    };
    match userns {
        Some(u) => cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: vec![map(&u.uid)],
            gids: vec![map(&u.gid)],
        },
        None => cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            uids: Vec::new(),
            gids: Vec::new(),
        },
    }
}

fn namespace_mode(field: &'static str, value: i32) -> Result<NamespaceMode, SandboxError> {
    match cri::NamespaceMode::try_from(value) {
        Ok(cri::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(cri::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(cri::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(cri::NamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(SandboxError::invalid(
            field,
            format!("unknown namespace mode {value}"),
        )),
    }
}

fn mode_to_cri(mode: NamespaceMode) -> i32 {
    (match mode {
        NamespaceMode::Pod => cri::NamespaceMode::Pod,
        NamespaceMode::Container => cri::NamespaceMode::Container,
        NamespaceMode::Node => cri::NamespaceMode::Node,
        NamespaceMode::Target => cri::NamespaceMode::Target,
    }) as i32
}

fn profile(field: &'static str, p: cri::SecurityProfile) -> Result<SecurityProfile, SandboxError> {
    let kind = cri::security_profile::ProfileType::try_from(p.profile_type).map_err(|_| {
        SandboxError::invalid(field, format!("unknown profile type {}", p.profile_type))
    })?;
    Ok(SecurityProfile {
        profile_type: kind.as_str_name().to_owned(),
        localhost_ref: p.localhost_ref,
    })
}

fn state_to_cri(state: PodState) -> i32 {
    (match state {
        PodState::Ready => cri::PodSandboxState::SandboxReady,
        PodState::NotReady | PodState::Creating => cri::PodSandboxState::SandboxNotready,
    }) as i32
}

fn metadata(pod: &PodSandbox) -> cri::PodSandboxMetadata {
    let m = &pod.config.metadata;
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

fn map(m: &std::collections::BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The PodSandboxStatus reply for `pod`.
pub(super) fn pod_status(
    pod: &PodSandbox,
    verbose: bool,
) -> Result<cri::PodSandboxStatusResponse, SandboxError> {
    let ns = &pod.config.linux.namespaces;
    // A pod that is not ready has given its netns up: no IP to report
    // (containerd reports none once the netns is closed, too).
    let ips = if pod.is_ready() {
        pod.ips()
    } else {
        Vec::new()
    };
    let status = cri::PodSandboxStatus {
        id: pod.id.clone(),
        metadata: Some(metadata(pod)),
        state: state_to_cri(pod.state),
        created_at: pod.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ips.first().cloned().unwrap_or_default(),
            additional_ips: ips
                .iter()
                .skip(1)
                .map(|ip| cri::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: mode_to_cri(ns.network),
                    pid: mode_to_cri(ns.pid),
                    ipc: mode_to_cri(ns.ipc),
                    target_id: ns.target_id.clone(),
                    userns_options: Some(user_namespace_to_cri(ns.userns.as_ref())),
                }),
            }),
        }),
        labels: map(&pod.config.labels),
        annotations: map(&pod.config.annotations),
        runtime_handler: pod.config.runtime_handler.clone(),
    };
    let mut info = HashMap::new();
    if verbose {
        let json = serde_json::to_string(&pod.verbose_info()).map_err(|e| SandboxError::Task {
            id: pod.id.clone(),
            message: format!("cannot encode status info: {e}"),
        })?;
        info.insert("info".to_owned(), json);
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(status),
        info,
        containers_statuses: Vec::new(),
        timestamp: crate::clock::now_unix_nanos(),
    })
}

/// One ListPodSandbox item.
fn pod_item(pod: &PodSandbox) -> cri::PodSandbox {
    cri::PodSandbox {
        id: pod.id.clone(),
        metadata: Some(metadata(pod)),
        state: state_to_cri(pod.state),
        created_at: pod.created_at,
        labels: map(&pod.config.labels),
        annotations: map(&pod.config.annotations),
        runtime_handler: pod.config.runtime_handler.clone(),
    }
}

/// The domain filter of a ListPodSandbox request.
fn pod_filter(filter: Option<cri::PodSandboxFilter>) -> Result<PodFilter, SandboxError> {
    let Some(filter) = filter else {
        return Ok(PodFilter::default());
    };
    let state = match filter.state {
        None => None,
        Some(s) => Some(match cri::PodSandboxState::try_from(s.state) {
            Ok(cri::PodSandboxState::SandboxReady) => PodState::Ready,
            Ok(cri::PodSandboxState::SandboxNotready) => PodState::NotReady,
            Err(_) => {
                return Err(SandboxError::invalid(
                    "filter.state",
                    format!("unknown pod sandbox state {}", s.state),
                ));
            }
        }),
    };
    Ok(PodFilter {
        id: (!filter.id.is_empty()).then_some(filter.id),
        state,
        labels: filter.label_selector.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_statuses_come_newest_first() {
        let status = |id: &str, created_at: i64| cri::ContainerStatus {
            id: id.to_owned(),
            created_at,
            ..Default::default()
        };
        let mut list = vec![status("old", 1), status("new", 3), status("mid", 2)];
        newest_first(&mut list);
        let ids: Vec<&str> = list.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["new", "mid", "old"]);
    }

    fn mapping(container_id: u32, host_id: u32, length: u32) -> cri::IdMapping {
        cri::IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    fn userns(mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>) -> cri::UserNamespace {
        cri::UserNamespace {
            mode: mode as i32,
            gids: uids.clone(),
            uids,
        }
    }

    fn refusal(options: cri::UserNamespace) -> String {
        let err = user_namespace(Some(&options)).unwrap_err();
        let status: Status = err.into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status.message().to_owned()
    }

    #[test]
    fn pod_mode_with_one_mapping_of_root_is_the_pods_own() {
        let got = user_namespace(Some(&userns(
            cri::NamespaceMode::Pod,
            vec![mapping(0, 1000, 100000)],
        )))
        .unwrap()
        .unwrap();
        let want = IdMapping {
            container_id: 0,
            host_id: 1000,
            length: 100000,
        };
        assert_eq!(
            got,
            UserNamespace {
                uid: want,
                gid: want
            }
        );
        assert_eq!(
            user_namespace_to_cri(Some(&got)),
            userns(cri::NamespaceMode::Pod, vec![mapping(0, 1000, 100000)])
        );
    }

    #[test]
    fn node_mode_or_nothing_is_the_nodes() {
        assert_eq!(user_namespace(None).unwrap(), None);
        assert_eq!(
            user_namespace(Some(&userns(cri::NamespaceMode::Node, vec![]))).unwrap(),
            None
        );
        assert_eq!(
            user_namespace_to_cri(None).mode,
            cri::NamespaceMode::Node as i32
        );
    }

    #[test]
    fn every_other_shape_is_refused_naming_the_problem() {
        use cri::NamespaceMode::*;
        let two = vec![mapping(0, 1000, 100000), mapping(0, 2000, 100000)];
        assert!(refusal(userns(Pod, two)).contains("exactly one mapping, got 2"));
        assert!(refusal(userns(Pod, vec![])).contains("exactly one mapping, got 0"));
        assert!(
            refusal(userns(Pod, vec![mapping(1, 1000, 100000)]))
                .contains("container ID 0 is not mapped")
        );
        assert!(refusal(userns(Pod, vec![mapping(0, 1000, 0)])).contains("empty or overflows"));
        assert!(refusal(userns(Pod, vec![mapping(0, u32::MAX, 2)])).contains("empty or overflows"));
        assert!(refusal(userns(Pod, vec![mapping(0, 0, 65536)])).contains("host's root"));
        assert!(refusal(userns(Container, vec![])).contains("CONTAINER is not supported"));
        assert!(refusal(userns(Target, vec![])).contains("TARGET is not supported"));
        assert!(
            refusal(userns(Node, vec![mapping(0, 1000, 10)]))
                .contains("not allowed with mode NODE")
        );
        let unknown = cri::UserNamespace {
            mode: 42,
            uids: vec![],
            gids: vec![],
        };
        assert!(refusal(unknown).contains("unknown namespace mode 42"));
        assert!(
            refusal(userns(Pod, vec![]))
                .starts_with("invalid pod sandbox config: namespace_options.userns_options.uids:")
        );
    }
}
