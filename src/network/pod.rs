//! What a pod asks of the network, and how that becomes what a plugin
//! reads: `CNI_ARGS`, and the `runtimeConfig` filled from the capabilities
//! a plugin declares (the CNI conventions document, as libcni does it).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::NetworkError;
use super::quantity::parse_quantity;

/// The pod annotation limiting traffic into the pod (bits per second).
pub const INGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
/// The pod annotation limiting traffic out of the pod (bits per second).
pub const EGRESS_BANDWIDTH_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";
/// The capability under which plugins receive the pod's annotations.
pub const POD_ANNOTATIONS_CAPABILITY: &str = "io.kubernetes.cri.pod-annotations";

/// One pod's network request: everything setup and teardown need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The sandbox ID (`CNI_CONTAINERID`).
    pub id: String,
    /// The pod's pinned network namespace file (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The interface name inside the pod (`CNI_IFNAME`), `eth0`.
    pub ifname: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// Host port mappings; entries with `host_port == 0` are not forwarded
    /// (kubelet lists every declared container port).
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<Bandwidth>,
    /// Addresses asked for (`ips` capability), e.g. `10.88.0.9/24`.
    pub ips: Vec<IpNet>,
    /// A MAC address asked for (`mac` capability).
    pub mac: Option<String>,
    /// The pod's DNS settings (`dns` capability).
    pub dns: Option<DnsConfig>,
    /// The pod's annotations (`io.kubernetes.cri.pod-annotations`).
    pub annotations: BTreeMap<String, String>,
    /// The pod's cgroup parent (`cgroupPath` capability).
    pub cgroup_path: Option<String>,
}

impl PodNetwork {
    /// A request with interface `eth0` and nothing optional.
    pub fn new(
        id: impl Into<String>,
        netns: impl Into<PathBuf>,
        name: impl Into<String>,
        namespace: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            port_mappings: Vec::new(),
            bandwidth: None,
            ips: Vec::new(),
            mac: None,
            dns: None,
            annotations: BTreeMap::new(),
            cgroup_path: None,
        }
    }

    /// Refuses what no plugin could be given safely.
    pub(crate) fn validate(&self) -> Result<(), NetworkError> {
        let invalid = |what: String| Err(NetworkError::InvalidArgument(what));
        if self.id.is_empty() {
            return invalid("empty sandbox id".into());
        }
        if !self.netns.is_absolute() {
            return invalid(format!(
                "netns path {} is not absolute",
                self.netns.display()
            ));
        }
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || self.ifname.contains(['/', ' ', ':'])
            || self.ifname == "."
            || self.ifname == ".."
        {
            return invalid(format!("bad interface name {:?}", self.ifname));
        }
        for (key, value) in [
            ("sandbox id", &self.id),
            ("pod name", &self.name),
            ("pod namespace", &self.namespace),
            ("pod uid", &self.uid),
        ] {
            // CNI_ARGS is `K=V;K=V`: these would change its meaning.
            if value.contains([';', '=']) || value.chars().any(char::is_control) {
                return invalid(format!(
                    "{key} {value:?} contains ';', '=' or a control character"
                ));
            }
        }
        for pm in &self.port_mappings {
            if pm.host_port != 0 && pm.container_port == 0 {
                return invalid(format!(
                    "port mapping of host port {} has container port 0",
                    pm.host_port
                ));
            }
        }
        Ok(())
    }

    /// `CNI_ARGS`, as kubelet's network plugins have always received them.
    pub(crate) fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace, self.name, self.id, self.uid
        )
    }

    /// The capability arguments this pod offers; a plugin receives, in its
    /// `runtimeConfig`, those it declares in `capabilities`.
    pub(crate) fn capability_args(&self) -> Map<String, Value> {
        let mut args = Map::new();
        let mappings: Vec<Value> = self
            .port_mappings
            .iter()
            .filter(|pm| pm.host_port != 0)
            .map(PortMapping::to_cni)
            .collect();
        if !mappings.is_empty() {
            args.insert("portMappings".into(), Value::Array(mappings));
        }
        if let Some(bw) = &self.bandwidth
            && let Some(value) = bw.to_cni()
        {
            args.insert("bandwidth".into(), value);
        }
        if !self.ips.is_empty() {
            let ips = self.ips.iter().map(|ip| json!(ip.to_string())).collect();
            args.insert("ips".into(), Value::Array(ips));
        }
        if let Some(mac) = &self.mac {
            args.insert("mac".into(), json!(mac));
        }
        if let Some(dns) = &self.dns {
            args.insert("dns".into(), json!(dns));
        }
        if !self.annotations.is_empty() {
            args.insert(POD_ANNOTATIONS_CAPABILITY.into(), json!(self.annotations));
        }
        if let Some(path) = &self.cgroup_path {
            args.insert("cgroupPath".into(), json!(path));
        }
        args
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A host port forwarded to the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: u16,
    pub protocol: Protocol,
    /// Only this host address, or all when `None`.
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    fn to_cni(&self) -> Value {
        let mut v = json!({
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        });
        if let Some(ip) = self.host_ip {
            v["hostIP"] = json!(ip.to_string());
        }
        v
    }
}

/// Traffic shaping, in bits per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bandwidth {
    pub ingress_bps: Option<u64>,
    pub egress_bps: Option<u64>,
}

/// The burst given with a rate: 4 Gibit, the bandwidth plugin's ceiling,
/// as containerd gives it (kubelet has no burst annotation).
const BURST_BITS: u64 = u32::MAX as u64;
/// kubelet's bounds for the bandwidth annotations.
const MIN_BPS: u64 = 1_000;
const MAX_BPS: u64 = 1_000_000_000_000_000;

impl Bandwidth {
    /// Reads `kubernetes.io/ingress-bandwidth` and `egress-bandwidth`
    /// (Kubernetes quantities in bits per second, `10M`); `None` when
    /// neither is set. Values outside kubelet's bounds (1k..=1P) are errors.
    pub fn from_annotations<'a, I>(annotations: I) -> Result<Option<Self>, NetworkError>
    where
        I: IntoIterator<Item = (&'a String, &'a String)>,
    {
        let mut bw = Self::default();
        for (key, value) in annotations {
            let slot = match key.as_str() {
                INGRESS_BANDWIDTH_ANNOTATION => &mut bw.ingress_bps,
                EGRESS_BANDWIDTH_ANNOTATION => &mut bw.egress_bps,
                _ => continue,
            };
            let bad = |reason: String| NetworkError::InvalidBandwidth {
                annotation: key.clone(),
                value: value.clone(),
                reason,
            };
            let bps = parse_quantity(value).map_err(|e| bad(e.to_string()))?;
            if bps < MIN_BPS {
                return Err(bad("unreasonably small (< 1kbit)".into()));
            }
            if bps > MAX_BPS {
                return Err(bad("unreasonably large (> 1Pbit)".into()));
            }
            *slot = Some(bps);
        }
        Ok((bw != Self::default()).then_some(bw))
    }

    fn to_cni(self) -> Option<Value> {
        let mut v = Map::new();
        if let Some(rate) = self.ingress_bps {
            v.insert("ingressRate".into(), json!(rate));
            v.insert("ingressBurst".into(), json!(BURST_BITS));
        }
        if let Some(rate) = self.egress_bps {
            v.insert("egressRate".into(), json!(rate));
            v.insert("egressBurst".into(), json!(BURST_BITS));
        }
        (!v.is_empty()).then_some(Value::Object(v))
    }
}

/// The pod's resolver settings, as the `dns` capability carries them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// Builds the stdin of one plugin: its own config with the network's
/// `name` and `cniVersion`, the `prevResult` it chains on, and a
/// `runtimeConfig` holding the capability arguments it declared. A plugin
/// declaring none keeps its config as written.
pub(crate) fn plugin_stdin(
    plugin: &Value,
    network_name: &str,
    cni_version: &str,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Value {
    let mut conf = match plugin {
        Value::Object(map) => map.clone(),
        // Discovery only accepts objects with a `type`; be total anyway.
        _ => Map::new(),
    };
    conf.insert("name".into(), json!(network_name));
    conf.insert("cniVersion".into(), json!(cni_version));
    match prev_result {
        Some(prev) => {
            conf.insert("prevResult".into(), prev.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    let declared = plugin.get("capabilities").and_then(Value::as_object);
    let runtime_config: Map<String, Value> = declared
        .into_iter()
        .flatten()
        .filter(|(_, enabled)| enabled.as_bool() == Some(true))
        .filter_map(|(cap, _)| capability_args.get(cap).map(|v| (cap.clone(), v.clone())))
        .collect();
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    Value::Object(conf)
}

/// Whether spec version `version` is at least `min`. Unparsable versions
/// are not.
pub(crate) fn version_at_least(version: &str, min: (u32, u32, u32)) -> bool {
    let mut parts = version.split('.').map(str::parse::<u32>);
    let mut next = || parts.next().unwrap_or(Ok(0));
    match (next(), next(), next()) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c) >= min,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn pod() -> PodNetwork {
        PodNetwork::new("abc123", "/run/netns/p", "web", "default", "u-1")
    }

    #[test]
    fn cni_args_are_kubelets() {
        assert_eq!(
            pod().cni_args(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
             K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1"
        );
    }

    #[test]
    fn separators_in_args_are_refused() {
        let mut p = pod();
        p.name = "a;K8S_POD_NAME=b".into();
        assert!(matches!(
            p.validate(),
            Err(NetworkError::InvalidArgument(_))
        ));
        let mut p = pod();
        p.netns = "relative".into();
        assert!(p.validate().is_err());
        let mut p = pod();
        p.ifname = "a-name-far-too-long".into();
        assert!(p.validate().is_err());
        assert!(pod().validate().is_ok());
    }

    #[test]
    fn runtime_config_gets_declared_capabilities_only() {
        let mut p = pod();
        p.port_mappings = vec![
            PortMapping {
                container_port: 80,
                host_port: 8080,
                protocol: Protocol::Tcp,
                host_ip: Some("127.0.0.1".parse().unwrap()),
            },
            // Declared but not published: skipped.
            PortMapping {
                container_port: 53,
                host_port: 0,
                protocol: Protocol::Udp,
                host_ip: None,
            },
            PortMapping {
                container_port: 53,
                host_port: 5353,
                protocol: Protocol::Sctp,
                host_ip: None,
            },
        ];
        p.bandwidth = Some(Bandwidth {
            ingress_bps: Some(1_000_000),
            egress_bps: None,
        });
        p.mac = Some("02:00:00:00:00:01".into());
        let caps = p.capability_args();

        let portmap =
            json!({"type": "portmap", "capabilities": {"portMappings": true, "mac": false}});
        let conf = plugin_stdin(&portmap, "net", "1.0.0", Some(&json!({"ips": []})), &caps);
        assert_eq!(conf["name"], "net");
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["prevResult"], json!({"ips": []}));
        assert_eq!(
            conf["runtimeConfig"],
            json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "sctp"}
            ]})
        );

        let bw = json!({"type": "bandwidth", "capabilities": {"bandwidth": true}});
        let conf = plugin_stdin(&bw, "net", "1.0.0", None, &caps);
        assert_eq!(
            conf["runtimeConfig"],
            json!({"bandwidth": {"ingressRate": 1_000_000, "ingressBurst": 4_294_967_295u64}})
        );
        assert!(conf.get("prevResult").is_none());

        // No capabilities: the config stays as written.
        let bridge = json!({"type": "bridge", "bridge": "cni0"});
        let conf = plugin_stdin(&bridge, "net", "0.4.0", None, &caps);
        assert!(conf.get("runtimeConfig").is_none());
        assert_eq!(conf["bridge"], "cni0");

        // Declared but not offered: nothing injected.
        let ips = json!({"type": "host-device", "capabilities": {"ips": true}});
        assert!(
            plugin_stdin(&ips, "n", "1.0.0", None, &caps)
                .get("runtimeConfig")
                .is_none()
        );
    }

    #[test]
    fn other_capabilities() {
        let mut p = pod();
        p.ips = vec!["10.9.0.7/24".parse().unwrap()];
        p.dns = Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["svc".into()],
            options: vec!["ndots:5".into()],
        });
        p.annotations.insert("a".into(), "b".into());
        p.cgroup_path = Some("/kubepods/pod1".into());
        let caps = p.capability_args();
        let plugin = json!({"type": "x", "capabilities": {
            "ips": true, "dns": true, "io.kubernetes.cri.pod-annotations": true, "cgroupPath": true
        }});
        let conf = plugin_stdin(&plugin, "n", "1.0.0", None, &caps);
        assert_eq!(
            conf["runtimeConfig"],
            json!({
                "ips": ["10.9.0.7/24"],
                "dns": {"servers": ["10.96.0.10"], "searches": ["svc"], "options": ["ndots:5"]},
                "io.kubernetes.cri.pod-annotations": {"a": "b"},
                "cgroupPath": "/kubepods/pod1"
            })
        );
    }

    #[test]
    fn bandwidth_annotations() {
        let mut a = HashMap::new();
        assert_eq!(Bandwidth::from_annotations(&a).unwrap(), None);
        a.insert("other".to_string(), "x".to_string());
        a.insert(INGRESS_BANDWIDTH_ANNOTATION.to_string(), "10M".to_string());
        a.insert(EGRESS_BANDWIDTH_ANNOTATION.to_string(), "1.5Gi".to_string());
        assert_eq!(
            Bandwidth::from_annotations(&a).unwrap(),
            Some(Bandwidth {
                ingress_bps: Some(10_000_000),
                egress_bps: Some(1_610_612_736),
            })
        );
        for (value, needle) in [
            ("10 Mbit", "not a quantity"),
            ("10", "small"),
            ("2P", "large"),
        ] {
            a.insert(EGRESS_BANDWIDTH_ANNOTATION.to_string(), value.to_string());
            let err = Bandwidth::from_annotations(&a).unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains(EGRESS_BANDWIDTH_ANNOTATION),
                "{err}"
            );
        }
    }

    #[test]
    fn versions() {
        assert!(version_at_least("0.4.0", (0, 4, 0)));
        assert!(version_at_least("1.0.0", (0, 4, 0)));
        assert!(version_at_least("1.1", (0, 4, 0)));
        assert!(!version_at_least("0.3.1", (0, 4, 0)));
        assert!(!version_at_least("x", (0, 0, 0)));
    }
}
