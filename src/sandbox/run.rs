//! RunPodSandbox: validate, reserve the name, write a `creating` record,
//! make the pod (dir, pinned namespaces, shm, PID namespace holder,
//! network, files), then commit it READY.
//!
//! The `creating` record is written before anything else is made, so that
//! a crash at any later point leaves a trace [`super::recover`] finds and
//! cleans; the holder of a shared PID namespace is recorded in it before
//! READY (see [`super::pid_holder`]). Any error undoes everything made so
//! far ([`SandboxManager::undo`]) and the dropped name reservation frees
//! the name.

use std::sync::Arc;

use super::crash::crash_point;
use super::error::{OsError, SandboxError};
use super::files::{self, make_dir};
use super::namespaces::{self, PinRequest};
use super::record::{HOST_SHM, NS_DIR, NamespaceMode, PodConfig, PodSandbox, PodState, SHM_DIR};
use super::{SandboxManager, blocking, network, remove_pod_dir};
use crate::names;

impl SandboxManager {
    /// Makes a pod and returns it READY.
    pub async fn run(&self, config: PodConfig) -> Result<Arc<PodSandbox>, SandboxError> {
        validate(&config)?;
        runtime_handler(&config.runtime_handler, &self.runtime_handlers)?;
        let hostname = effective_hostname(&config)?;
        let reservation = self.store.reserve(&config.reservation_name())?;
        let id = reservation.id().to_owned();
        let dir = self.pods_dir.join(&id);

        let pin_request = PinRequest {
            dir: dir.join(NS_DIR),
            net: !config.host_network(),
            ipc: !config.host_ipc(),
            // The UTS namespace follows the network: a host-network pod
            // has the node's name.
            uts_hostname: (!config.host_network()).then(|| hostname.clone()),
            userns: config.linux.namespaces.userns,
        };
        let shm = if config.host_ipc() {
            HOST_SHM.into()
        } else {
            dir.join(SHM_DIR)
        };
        let mut pod = PodSandbox {
            id: id.clone(),
            name: reservation.name().to_owned(),
            state: PodState::Creating,
            created_at: crate::clock::now_unix_nanos(),
            hostname,
            namespaces: pin_request.paths(),
            shm,
            dir,
            network: None,
            pid_holder: None,
            resources: None,
            config,
        };

        self.store.persist(&pod)?;
        crash_point("run-pod-after-record");

        // Whether undoing needs a network teardown; see `make`.
        let mut network_owed = false;
        if let Err(e) = self.make(&mut pod, pin_request, &mut network_owed).await {
            self.undo(&pod, network_owed).await;
            return Err(e);
        }
        pod.state = PodState::Ready;
        match self.store.insert(reservation, pod.clone()) {
            Ok(pod) => {
                tracing::info!(pod = %pod.id, name = %pod.name, ip = ?pod.ips(), "pod sandbox ready");
                Ok(pod)
            }
            Err(e) => {
                self.undo(&pod, network_owed).await;
                Err(e.into())
            }
        }
    }

    /// Everything RunPodSandbox makes, in order. Records in `pod` what it
    /// made, so [`SandboxManager::undo`] knows what to take down.
    /// `network_owed` is set while a network teardown would be needed to
    /// undo it.
    async fn make(
        &self,
        pod: &mut PodSandbox,
        pins: PinRequest,
        network_owed: &mut bool,
    ) -> Result<(), SandboxError> {
        let dir = pod.dir.clone();
        let own_shm = pod.owns_shm();
        let shm = pod.shm.clone();
        blocking(&pod.id, move || {
            make_dir(&dir, 0o711)?;
            make_dir(&pins.dir, 0o711)?;
            namespaces::create_pinned(pins)?;
            if own_shm {
                files::mount_shm(&shm)?;
            }
            Ok(())
        })
        .await?;
        crash_point("run-pod-after-namespaces");

        // The holder of a shared PID namespace, on disk before the pod can
        // be READY (the next record write carries it). A crash before that
        // is cleaned by `undo`, which finds the holder by the pinned
        // namespaces it joined; only a holder that joined none (a pod on
        // the node's network and IPC) must be recorded at once, or nothing
        // would find it.
        self.start_pid_holder(pod).await?;
        if pod.pid_holder.is_some() {
            crash_point("run-pod-after-pid-holder");
            if !crate::pod_pid::findable(&pod.namespaces) {
                self.store.persist(pod)?;
                crash_point("run-pod-after-pid-holder-record");
            }
        }

        // THE place the pod's network is set up (CNI ADD).
        if pod.namespaces.net.is_some()
            && let Some(cni) = &self.network
        {
            *network_owed = true;
            match network::setup(pod, cni).await {
                Ok(status) => pod.network = Some(status),
                Err(e) => {
                    // A failed setup has deleted what it added, unless
                    // that failed too.
                    *network_owed = network::left_behind(&e);
                    return Err(e);
                }
            }
            crash_point("run-pod-after-cni-add");
            // The result of the ADD, on disk before anything else: a crash
            // from here on is torn down with it (before, with the config).
            self.store.persist(pod)?;
        }
        crash_point("run-pod-after-network");

        let snapshot = pod.clone();
        let host_files = self.host_files.clone();
        blocking(&pod.id, move || {
            files::write_pod_files(&snapshot, &host_files)
        })
        .await?;
        crash_point("run-pod-before-ready");
        Ok(())
    }

    /// Takes down whatever a failed or interrupted RunPodSandbox made:
    /// PID namespace holder, network, mounts, directory, record. Failures
    /// are logged, not returned: the caller already has the error that
    /// matters, and the `creating` record stays for the next start to
    /// clean if this fails.
    ///
    /// The network is torn down first, while the netns is still pinned,
    /// when `network_owed` (always for a record found at start: its setup
    /// may have been cut short); with the persisted ADD result if there is
    /// one, else with the current config.
    pub(super) async fn undo(&self, pod: &PodSandbox, network_owed: bool) {
        self.kill_pid_holders(pod).await;
        if network_owed && let Err(e) = self.teardown_network(pod).await {
            tracing::warn!(pod = %pod.id, error = %e, "network teardown of a half-made pod failed");
        }
        let dir = pod.dir.clone();
        match blocking(&pod.id, move || remove_pod_dir(&dir)).await {
            Ok(()) => {
                if let Err(e) = self.store.discard(&pod.id) {
                    tracing::error!(pod = %pod.id, error = %e, "cannot delete the record of a half-made pod");
                }
            }
            Err(e) => {
                tracing::error!(pod = %pod.id, error = %e, "cannot clean a half-made pod; the next start retries");
            }
        }
    }
}

/// Checks what the CRI requires and what ketch supports, before anything
/// is made.
fn validate(config: &PodConfig) -> Result<(), SandboxError> {
    let m = &config.metadata;
    for (field, value) in [
        ("metadata.name", &m.name),
        ("metadata.namespace", &m.namespace),
        ("metadata.uid", &m.uid),
    ] {
        if value.is_empty() {
            return Err(SandboxError::invalid(field, "is required"));
        }
        // kubelet makes `<namespace>_<name>_<uid>` a directory name.
        names::path_component(field, value)?;
    }
    names::log_directory(&config.log_directory)?;
    let ns = &config.linux.namespaces;
    for (field, mode) in [
        ("namespace_options.network", ns.network),
        ("namespace_options.ipc", ns.ipc),
        ("namespace_options.pid", ns.pid),
    ] {
        if mode == NamespaceMode::Target {
            return Err(SandboxError::invalid(
                field,
                "TARGET is for containers, not pods",
            ));
        }
    }
    if ns.userns.is_some() {
        validate_userns(config)?;
    }
    if let Some(dns) = &config.dns {
        files::validate_dns(dns)?;
    }
    for key in config.linux.sysctls.keys() {
        let host_ipc = ns.ipc == NamespaceMode::Node;
        let host_net = ns.network == NamespaceMode::Node;
        if let Err(reason) = sysctl_allowed(key, host_net, host_ipc) {
            return Err(SandboxError::invalid(format!("sysctls[{key:?}]"), reason));
        }
    }
    if !config.host_network() {
        network::validate(config)?;
    }
    Ok(())
}

/// Checks the pod's `runtime_handler`: the default `""`, or a configured
/// one whose runtime binary is there (checked now, so a handler installed
/// after the daemon started works, and a missing one fails this pod, not
/// the daemon). An unknown name is bad input naming the configured ones.
fn runtime_handler(
    name: &str,
    handlers: &std::collections::BTreeMap<String, std::path::PathBuf>,
) -> Result<(), SandboxError> {
    match handlers.get(name) {
        Some(path) => {
            crate::executor::oci_runtime::OciRuntime::check_binary(path).map_err(|reason| {
                SandboxError::RuntimeUnavailable {
                    handler: name.to_owned(),
                    reason: format!("its runtime cannot run: {reason}"),
                }
            })
        }
        None if name.is_empty() => Ok(()),
        None => {
            let mut known: Vec<String> = vec!["\"\"".to_owned()];
            known.extend(
                handlers
                    .keys()
                    .filter(|k| !k.is_empty())
                    .map(|k| format!("{k:?}")),
            );
            Err(SandboxError::invalid(
                "runtime_handler",
                format!(
                    "{name:?} is not configured (configured: {})",
                    known.join(", ")
                ),
            ))
        }
    }
}

/// A pod with its own user namespace must own its network, IPC and PID
/// namespaces too (Kubernetes refuses `hostUsers: false` with
/// `hostNetwork`, `hostIPC` or `hostPID`; ketch reports
/// `user_namespaces_host_network: false`): the node's namespaces are not
/// the user namespace's to join or configure. And the idmapped mounts its
/// root filesystem needs must work here (probed at start).
fn validate_userns(config: &PodConfig) -> Result<(), SandboxError> {
    let ns = &config.linux.namespaces;
    for (field, mode) in [
        ("namespace_options.network", ns.network),
        ("namespace_options.ipc", ns.ipc),
        ("namespace_options.pid", ns.pid),
    ] {
        if mode == NamespaceMode::Node {
            return Err(SandboxError::invalid(
                field,
                "NODE cannot be combined with a user namespace of the pod's own (userns_options mode POD)",
            ));
        }
    }
    if !crate::idmap::supported() {
        return Err(SandboxError::Unsupported(
            "user namespaces need idmapped mounts, which do not work on this node (see the log at start)"
                .into(),
        ));
    }
    Ok(())
}

/// Whether a pod may set sysctl `key`: only the namespaced ones, which
/// a pod's own namespaces scope (Kubernetes' `sysctl` allowlist rules,
/// `pkg/kubelet/sysctl`): the IPC ones (`kernel.shm*`, `kernel.msg*`,
/// `kernel.sem`, `fs.mqueue.*`) not with the node's IPC namespace, `net.*`
/// not with the node's network namespace. Anything else would change the
/// node for every pod.
pub(crate) fn sysctl_allowed(key: &str, host_net: bool, host_ipc: bool) -> Result<(), String> {
    // Both spellings: `net.ipv4.ip_forward` and `net/ipv4/ip_forward`.
    let key = key.replace('/', ".");
    let ipc = key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.");
    let net = key.starts_with("net.");
    if key.is_empty() || key.contains("..") {
        Err("is not a sysctl name".to_owned())
    } else if ipc && host_ipc {
        Err("is an IPC sysctl and the pod uses the node's IPC namespace".to_owned())
    } else if net && host_net {
        Err("is a network sysctl and the pod uses the node's network namespace".to_owned())
    } else if !ipc && !net {
        Err("is not a namespaced sysctl: only kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* and net.* may be set by a pod".to_owned())
    } else {
        Ok(())
    }
}

/// The hostname the pod's containers see: the node's for host network,
/// else the requested one (the node's when none is given, as containerd).
fn effective_hostname(config: &PodConfig) -> Result<String, SandboxError> {
    if config.host_network() || config.hostname.is_empty() {
        let name = nix::unistd::gethostname()
            .map_err(|e| SandboxError::Host(OsError::new("read the hostname of", "the node", e)))?;
        return Ok(name.to_string_lossy().into_owned());
    }
    files::validate_hostname(&config.hostname)?;
    Ok(config.hostname.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespaced_sysctls_pass() {
        assert!(sysctl_allowed("net.ipv4.ip_forward", false, false).is_ok());
        assert!(sysctl_allowed("net/ipv4/ping_group_range", false, false).is_ok());
        assert!(sysctl_allowed("kernel.shm_rmid_forced", false, false).is_ok());
        assert!(sysctl_allowed("kernel.sem", false, false).is_ok());
        assert!(sysctl_allowed("fs.mqueue.msg_max", false, false).is_ok());
        assert!(sysctl_allowed("kernel.domainname", false, false).is_err());
        assert!(sysctl_allowed("vm.swappiness", false, false).is_err());
        assert!(sysctl_allowed("kernel.semx", false, false).is_err());
        let net = sysctl_allowed("net.core.somaxconn", true, false).unwrap_err();
        assert!(net.contains("network namespace"), "{net}");
        let ipc = sysctl_allowed("kernel.msgmax", false, true).unwrap_err();
        assert!(ipc.contains("IPC namespace"), "{ipc}");
    }
}

#[cfg(test)]
mod handler_tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_pod_names_the_default_or_a_configured_handler_whose_runtime_is_there() {
        let mut handlers = BTreeMap::new();
        handlers.insert("sh".to_owned(), PathBuf::from("/bin/sh"));
        handlers.insert("gone".to_owned(), PathBuf::from("/nonexistent/runc"));
        runtime_handler("", &handlers).unwrap();
        runtime_handler("sh", &handlers).unwrap();

        let e = runtime_handler("kata", &handlers).unwrap_err();
        assert!(matches!(e, SandboxError::InvalidArgument { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("runtime_handler")
                && text.contains("\"kata\"")
                && text.contains("\"\", \"gone\", \"sh\""),
            "{text}"
        );

        let e = runtime_handler("gone", &handlers).unwrap_err();
        assert!(matches!(e, SandboxError::RuntimeUnavailable { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/runc"), "{e}");

        // Without a configured handler only the default is known.
        let e = runtime_handler("runc", &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("(configured: \"\")"), "{e}");
    }
}
