//! The RPCs about the runtime itself: Version, Status, RuntimeConfig and
//! UpdateRuntimeConfig.

use std::collections::HashMap;

use super::api as cri;
use tonic::Status;

use super::CriService;
use crate::config::CgroupDriver;

/// The CRI API version ketch implements.
const CRI_API_VERSION: &str = "v1";

pub(super) async fn version(
    _cri: &CriService,
    _req: cri::VersionRequest,
) -> Result<cri::VersionResponse, Status> {
    Ok(cri::VersionResponse {
        // The kubelet-facing API version, as containerd and CRI-O report it.
        version: "0.1.0".into(),
        runtime_name: "ketch".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: CRI_API_VERSION.into(),
    })
}

pub(super) async fn status(
    cri: &CriService,
    req: cri::StatusRequest,
) -> Result<cri::StatusResponse, Status> {
    let conditions = cri
        .runtime
        .conditions()
        .into_iter()
        .map(|c| cri::RuntimeCondition {
            r#type: c.kind.into(),
            status: c.ready,
            reason: c.reason,
            message: c.message,
        })
        .collect();
    let mut info = HashMap::new();
    if req.verbose {
        let config = serde_json::to_string(cri.runtime.config())
            .map_err(|e| Status::internal(format!("cannot encode config: {e}")))?;
        info.insert("config".to_owned(), config);
    }
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions }),
        info,
        runtime_handlers: runtime_handlers(cri).await,
        features: Some(runtime_features()),
    })
}

/// The handlers kubelet may name in RunPodSandbox: the default one (`""`)
/// and every configured `[runtime_handlers.<name>]`. Kubelet 1.36
/// (`pkg/kubelet/kuberuntime`, `kubelet.go` `updateRuntimeStatus`) keeps
/// each handler's features to decide whether a pod may ask for
/// recursive read-only mounts or a user namespace.
async fn runtime_handlers(cri: &CriService) -> Vec<cri::RuntimeHandler> {
    cri.runtime
        .runtime_handlers()
        .await
        .into_iter()
        .map(|(name, features)| cri::RuntimeHandler {
            name,
            features: Some(match features {
                None => handler_features(),
                // An external runtime's, as its `features` command says.
                Some(f) => cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: f.recursive_read_only_mounts,
                    user_namespaces: f.user_namespaces,
                },
            }),
        })
        .collect()
}

/// What the built-in executor supports, each feature decided here and
/// only here.
fn handler_features() -> cri::RuntimeHandlerFeatures {
    cri::RuntimeHandlerFeatures {
        // `recursive_read_only` mounts need mount_setattr(MOUNT_ATTR_RDONLY,
        // AT_RECURSIVE) (Linux 5.12): probed on this kernel.
        recursive_read_only_mounts: crate::sys::has_mount_setattr(),
        // Pods with their own user namespace (`userns_options` mode POD)
        // need idmapped mounts of the image layers: probed at start on
        // ketch's root dir (`idmap::probe`, which logs why not).
        user_namespaces: crate::idmap::supported(),
    }
}

/// The runtime-wide features kubelet reads: whether
/// `supplemental_groups_policy: Strict` is honoured (kubelet refuses
/// such pods otherwise), and whether a host-network pod may have a user
/// namespace.
fn runtime_features() -> cri::RuntimeFeatures {
    cri::RuntimeFeatures {
        supplemental_groups_policy: true,
        user_namespaces_host_network: false,
    }
}

pub(super) async fn runtime_config(
    cri: &CriService,
    _req: cri::RuntimeConfigRequest,
) -> Result<cri::RuntimeConfigResponse, Status> {
    let cgroup_driver = match cri.runtime.config().cgroup_driver {
        CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
        CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
    };
    Ok(cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration {
            cgroup_driver: cgroup_driver as i32,
        }),
    })
}

pub(super) async fn update_runtime_config(
    cri: &CriService,
    req: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse, Status> {
    // The pod CIDR is all the CRI carries here today.
    let pod_cidr = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
        .unwrap_or_default();
    cri.runtime.sandboxes().update_pod_cidr(&pod_cidr).await?;
    Ok(cri::UpdateRuntimeConfigResponse {})
}
