//! Pod networking, seen from the sandbox: the one place where a pod's
//! network is set up and torn down, through CNI ([`crate::network::Cni`]).
//!
//! [`setup`] turns the pod's record into a CNI request ([`PodNetwork`]:
//! the sandbox ID, the pinned netns, `eth0`, the pod's name, namespace and
//! UID for `CNI_ARGS`, its port mappings, bandwidth annotations, DNS
//! config, annotations and cgroup parent) and runs ADD. What comes back
//! (the pod IPs, IPv4 first, and the [`CachedResult`] of the ADD) is
//! persisted in the pod's record, so [`teardown`] runs DEL with the
//! network config and result of the ADD even after a restart, a config
//! change, or when the netns is already gone. Both run with the pod's
//! lock held (or, in RunPodSandbox, before anyone else can see the pod).
//!
//! Contract the callers keep (containerd #3667, cri-o #9301):
//! - `setup` runs only for pods with their own netns, after it is pinned.
//!   When it fails it has undone its own work (DEL of what it added), so
//!   only [`NetworkError::CleanupFailed`] leaves a teardown owed; on any
//!   later failure of RunPodSandbox, `teardown` runs.
//! - `teardown` runs on StopPodSandbox, RemovePodSandbox and the cleanup of
//!   a half-made pod, for every pod whose record still holds a network
//!   status (or whose creation was interrupted: then with the cached
//!   result if it was persisted, else with the current config). It
//!   tolerates a missing netns and repeated calls. Whatever it returns,
//!   the netns is unpinned afterwards and Remove goes on: a pod is never
//!   stuck undeletable.
//!
//! Bad input (a port out of range, an unparsable host IP or bandwidth
//! annotation, a `;` in a name that would corrupt `CNI_ARGS`) is refused
//! by [`validate`] before anything is made.

use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::error::SandboxError;
use super::record::{PodConfig, PodSandbox, PortMapping};
use crate::network::{
    self, Bandwidth, CachedResult, Cni, DnsConfig, NetworkError, PodNetwork, Protocol,
};

/// What the network reported for a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkStatus {
    /// The primary pod IP (IPv4 when the pod has one); empty when the pod
    /// has none (loopback only).
    pub ip: String,
    /// The other IPs (an IPv6 address of a dual-stack pod).
    pub additional_ips: Vec<String>,
    /// The record of the ADD, which DEL needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CachedResult>,
}

/// Checks, before anything is made, that the network request of a pod
/// with its own netns is one the plugins can be given.
pub(super) fn validate(config: &PodConfig) -> Result<(), SandboxError> {
    // The real ID and pin path are not known yet; these stand in for them.
    let placeholder = PodNetwork::new("0", "/", "", "", "");
    request_with(config, placeholder, Strictness::Refuse)?
        .validate()
        .map_err(|e| SandboxError::invalid("metadata", e.to_string()))
}

/// Sets up the network of `pod`, whose netns is pinned at
/// `pod.namespaces.net`. Called only for pods with their own netns.
pub(super) async fn setup(pod: &PodSandbox, cni: &Cni) -> Result<PodNetworkStatus, SandboxError> {
    let Some(netns) = &pod.namespaces.net else {
        return Ok(PodNetworkStatus::default());
    };
    let request = request(pod, netns, Strictness::Refuse)?;
    let started = Instant::now();
    let status = cni
        .setup(&request)
        .await
        .map_err(|source| SandboxError::Network {
            id: pod.id.clone(),
            op: "setup",
            source,
        })?;
    let mut ips = status.ips.iter().map(IpAddr::to_string);
    let network = PodNetworkStatus {
        ip: ips.next().unwrap_or_default(),
        additional_ips: ips.collect(),
        result: Some(status.cached),
    };
    tracing::info!(
        pod = %pod.id,
        network = network.result.as_ref().map(CachedResult::network_name).unwrap_or_default(),
        ip = %network.ip,
        additional_ips = ?network.additional_ips,
        cni_ms = started.elapsed().as_secs_f64() * 1e3,
        "pod network set up"
    );
    Ok(network)
}

/// Tears the network of `pod` down, with the cached result of its ADD
/// when the record has one (else with the current config).
pub(super) async fn teardown(pod: &PodSandbox, cni: &Cni) -> Result<(), SandboxError> {
    let Some(netns) = &pod.namespaces.net else {
        return Ok(());
    };
    // Lenient: a record is torn down whatever it holds.
    let request = request(pod, netns, Strictness::Skip)?;
    let cached = pod.network.as_ref().and_then(|n| n.result.as_ref());
    let started = Instant::now();
    cni.teardown(&request, cached)
        .await
        .map_err(|source| SandboxError::Network {
            id: pod.id.clone(),
            op: "teardown",
            source,
        })?;
    tracing::info!(
        pod = %pod.id,
        cached = cached.is_some(),
        cni_ms = started.elapsed().as_secs_f64() * 1e3,
        "pod network torn down"
    );
    Ok(())
}

/// Whether a failed [`setup`] may have left something that a teardown
/// must remove: only when its own clean-up failed, or when it never
/// reached the plugins' clean-up (its task died).
pub(super) fn left_behind(error: &SandboxError) -> bool {
    match error {
        SandboxError::Network { source, .. } => matches!(
            source,
            NetworkError::CleanupFailed { .. } | NetworkError::Runtime(_)
        ),
        // Refused before any plugin ran.
        SandboxError::InvalidArgument { .. } => false,
        _ => true,
    }
}

/// What to do with a part of the request that is not valid.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Refuse the request (RunPodSandbox).
    Refuse,
    /// Leave the part out and log it (teardown must go on).
    Skip,
}

fn request(
    pod: &PodSandbox,
    netns: &Path,
    strictness: Strictness,
) -> Result<PodNetwork, SandboxError> {
    let base = PodNetwork::new(pod.id.clone(), netns, "", "", "");
    request_with(&pod.config, base, strictness)
}

/// Fills `base` (which has the ID and netns) from the pod's config.
fn request_with(
    config: &PodConfig,
    mut pod: PodNetwork,
    strictness: Strictness,
) -> Result<PodNetwork, SandboxError> {
    let m = &config.metadata;
    pod.name.clone_from(&m.name);
    pod.namespace.clone_from(&m.namespace);
    pod.uid.clone_from(&m.uid);
    for (i, mapping) in config.port_mappings.iter().enumerate() {
        match port_mapping(mapping) {
            Ok(Some(pm)) => pod.port_mappings.push(pm),
            Ok(None) => {}
            Err(reason) if strictness == Strictness::Refuse => {
                return Err(SandboxError::invalid(format!("port_mappings[{i}]"), reason));
            }
            Err(reason) => {
                tracing::warn!(pod = %pod.id, mapping = i, %reason, "port mapping left out")
            }
        }
    }
    pod.bandwidth = match Bandwidth::from_annotations(&config.annotations) {
        Ok(bw) => bw,
        Err(e) if strictness == Strictness::Refuse => {
            return Err(SandboxError::invalid("annotations", e.to_string()));
        }
        Err(e) => {
            tracing::warn!(pod = %pod.id, error = %e, "bandwidth limit left out");
            None
        }
    };
    pod.dns = config.dns.as_ref().map(|d| DnsConfig {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    pod.annotations = config.annotations.clone();
    let cgroup_parent = &config.linux.cgroup_parent;
    pod.cgroup_path = (!cgroup_parent.is_empty()).then(|| cgroup_parent.clone());
    Ok(pod)
}

/// A CRI port mapping as the `portMappings` capability takes it; `None`
/// for one that only declares a port (host port 0), which kubelet sends
/// for every container port and which is not forwarded.
fn port_mapping(pm: &PortMapping) -> Result<Option<network::PortMapping>, String> {
    let port = |what: &str, value: i32| {
        u16::try_from(value).map_err(|_| format!("{what} {value} is not a port number (0-65535)"))
    };
    let host_port = port("host_port", pm.host_port)?;
    let container_port = port("container_port", pm.container_port)?;
    if host_port == 0 {
        return Ok(None);
    }
    if container_port == 0 {
        return Err(format!(
            "host_port {host_port} is mapped to container_port 0"
        ));
    }
    let protocol = match pm.protocol.as_str() {
        "TCP" | "" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => return Err(format!("unknown protocol {other:?}")),
    };
    let host_ip = match pm.host_ip.as_str() {
        "" => None,
        ip => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| format!("host_ip {ip:?} is not an IP address"))?,
        ),
    };
    Ok(Some(network::PortMapping {
        container_port,
        host_port,
        protocol,
        host_ip,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::record::{LinuxPodConfig, PodMetadata};

    fn config() -> PodConfig {
        PodConfig {
            metadata: PodMetadata {
                name: "web".into(),
                uid: "u-1".into(),
                namespace: "default".into(),
                attempt: 0,
            },
            hostname: "web".into(),
            log_directory: String::new(),
            dns: None,
            port_mappings: Vec::new(),
            labels: Default::default(),
            annotations: Default::default(),
            runtime_handler: String::new(),
            linux: LinuxPodConfig::default(),
        }
    }

    fn mapping(protocol: &str, container: i32, host: i32, ip: &str) -> PortMapping {
        PortMapping {
            protocol: protocol.into(),
            container_port: container,
            host_port: host,
            host_ip: ip.into(),
        }
    }

    #[test]
    fn request_carries_the_pod() {
        let mut c = config();
        c.port_mappings = vec![
            mapping("TCP", 80, 8080, ""),
            // Declared, not published: left out.
            mapping("UDP", 53, 0, ""),
            mapping("SCTP", 9, 9999, "127.0.0.1"),
        ];
        c.annotations.insert(
            crate::network::INGRESS_BANDWIDTH_ANNOTATION.into(),
            "10M".into(),
        );
        c.linux.cgroup_parent = "/kubepods/pod-u-1".into();
        c.dns = Some(crate::sandbox::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["svc".into()],
            options: vec![],
        });
        validate(&c).unwrap();
        let base = PodNetwork::new("abc", "/run/p/ns/net", "", "", "");
        let pod = request_with(&c, base, Strictness::Refuse).unwrap();
        assert_eq!((pod.id.as_str(), pod.ifname.as_str()), ("abc", "eth0"));
        assert_eq!(
            (pod.name.as_str(), pod.namespace.as_str(), pod.uid.as_str()),
            ("web", "default", "u-1")
        );
        assert_eq!(
            pod.port_mappings,
            vec![
                network::PortMapping {
                    container_port: 80,
                    host_port: 8080,
                    protocol: Protocol::Tcp,
                    host_ip: None,
                },
                network::PortMapping {
                    container_port: 9,
                    host_port: 9999,
                    protocol: Protocol::Sctp,
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                },
            ]
        );
        assert_eq!(pod.bandwidth.unwrap().ingress_bps, Some(10_000_000));
        assert_eq!(pod.dns.unwrap().servers, vec!["10.96.0.10".to_owned()]);
        assert_eq!(pod.cgroup_path.as_deref(), Some("/kubepods/pod-u-1"));
        assert_eq!(pod.annotations.len(), 1);
    }

    #[test]
    fn bad_requests_are_named() {
        for (m, needle) in [
            (mapping("TCP", 80, 70000, ""), "70000"),
            (mapping("TCP", -1, 8080, ""), "container_port -1"),
            (mapping("TCP", 0, 8080, ""), "container_port 0"),
            (mapping("TCP", 80, 8080, "localhost"), "localhost"),
        ] {
            let mut c = config();
            c.port_mappings = vec![mapping("TCP", 1, 1, ""), m];
            let e = validate(&c).unwrap_err();
            assert!(matches!(e, SandboxError::InvalidArgument { .. }), "{e:?}");
            let text = e.to_string();
            assert!(
                text.contains("port_mappings[1]") && text.contains(needle),
                "{text}"
            );
            // A teardown goes on without it.
            let base = PodNetwork::new("abc", "/p", "", "", "");
            let pod = request_with(&c, base, Strictness::Skip).unwrap();
            assert_eq!(pod.port_mappings.len(), 1);
        }

        let mut c = config();
        c.annotations.insert(
            crate::network::EGRESS_BANDWIDTH_ANNOTATION.into(),
            "lots".into(),
        );
        let e = validate(&c).unwrap_err().to_string();
        assert!(
            e.contains(crate::network::EGRESS_BANDWIDTH_ANNOTATION),
            "{e}"
        );

        let mut c = config();
        c.metadata.namespace = "a;K8S_POD_NAME=b".into();
        let e = validate(&c).unwrap_err();
        assert!(matches!(e, SandboxError::InvalidArgument { .. }), "{e:?}");
        assert!(e.to_string().contains("a;K8S_POD_NAME=b"), "{e}");
    }

    #[test]
    fn only_a_failed_cleanup_leaves_a_teardown_owed() {
        let failed = |source| SandboxError::Network {
            id: "p".into(),
            op: "setup",
            source,
        };
        let plugin = || NetworkError::PluginFailed {
            plugin: "bridge".into(),
            command: network::CniCommand::Add,
            code: None,
            message: "no".into(),
        };
        assert!(!left_behind(&failed(plugin())));
        assert!(left_behind(&failed(NetworkError::CleanupFailed {
            failure: Box::new(plugin()),
            cleanup: Box::new(plugin()),
        })));
        assert!(!left_behind(&SandboxError::invalid("port_mappings", "x")));
    }

    #[test]
    fn status_without_result_reads_records_written_before_it() {
        let old = r#"{"ip":"","additional_ips":[]}"#;
        let status: PodNetworkStatus = serde_json::from_str(old).unwrap();
        assert_eq!(status, PodNetworkStatus::default());
    }
}
