//! CNI results: the JSON a plugin prints on a successful ADD, parsed into
//! one typed shape whatever the spec version that wrote it.
//!
//! Three wire formats exist: 0.1.0/0.2.0 (`ip4`/`ip6` objects), 0.3.x/0.4.0
//! (`interfaces`, `ips` with a `version` field, `routes`, `dns`) and
//! 1.0.0/1.1.0 (the same without `version`, with optional route and
//! interface attributes). The raw JSON is kept beside the typed form by the
//! caller: plugins chain on it (`prevResult`) and DEL gets it back verbatim.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

/// A parsed CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the pod; absent on host side.
    #[serde(default)]
    pub sandbox: Option<String>,
    #[serde(default)]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID")]
    pub pci_id: Option<String>,
}

impl Interface {
    fn in_sandbox(&self) -> bool {
        self.sandbox.as_deref().is_some_and(|s| !s.is_empty())
    }
}

/// One address; `address` keeps its host bits (`10.88.0.5/24`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`, when the plugin says which one.
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub advmss: Option<u32>,
    #[serde(default)]
    pub priority: Option<u32>,
    #[serde(default)]
    pub table: Option<u32>,
    #[serde(default)]
    pub scope: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Dns {
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub search: Vec<String>,
    #[serde(default)]
    pub options: Vec<String>,
}

/// Why a result could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResultError(pub String);

// Wire shapes. Unknown fields are ignored: later spec versions add some.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCurrent {
    #[serde(default)]
    cni_version: Option<String>,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<RawIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Deserialize)]
struct RawIp {
    /// 0.3.x/0.4.0 only: "4" or "6".
    #[serde(default)]
    version: Option<String>,
    address: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLegacy {
    #[serde(default)]
    cni_version: Option<String>,
    #[serde(default)]
    ip4: Option<RawLegacyIp>,
    #[serde(default)]
    ip6: Option<RawLegacyIp>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Deserialize)]
struct RawLegacyIp {
    ip: IpNet,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    routes: Vec<Route>,
}

impl CniResult {
    /// Parses any supported result version. A result without `cniVersion`
    /// is read as `default_version` (the network's version).
    pub fn parse(value: &Value, default_version: &str) -> Result<Self, ResultError> {
        let version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or(default_version)
            .to_owned();
        if !value.is_object() {
            return Err(ResultError("result is not a JSON object".into()));
        }
        let legacy = matches!(version.as_str(), "0.1.0" | "0.2.0");
        let mut result = if legacy {
            Self::parse_legacy(value)?
        } else {
            Self::parse_current(value)?
        };
        result.cni_version = version;
        Ok(result)
    }

    fn parse_current(value: &Value) -> Result<Self, ResultError> {
        let raw = RawCurrent::deserialize(value).map_err(|e| ResultError(e.to_string()))?;
        let mut ips = Vec::with_capacity(raw.ips.len());
        for ip in raw.ips {
            let family_ok = match ip.version.as_deref() {
                None => true,
                Some("4") => ip.address.addr().is_ipv4(),
                Some("6") => ip.address.addr().is_ipv6(),
                Some(_) => false,
            };
            if !family_ok {
                return Err(ResultError(format!(
                    "address {} does not match its version {:?}",
                    ip.address, ip.version
                )));
            }
            if let Some(i) = ip.interface
                && i >= raw.interfaces.len()
            {
                return Err(ResultError(format!(
                    "address {} names interface {i}, but there are {}",
                    ip.address,
                    raw.interfaces.len()
                )));
            }
            ips.push(IpConfig {
                address: ip.address,
                gateway: ip.gateway,
                interface: ip.interface,
            });
        }
        Ok(Self {
            cni_version: raw.cni_version.unwrap_or_default(),
            interfaces: raw.interfaces,
            ips,
            routes: raw.routes,
            dns: raw.dns,
        })
    }

    fn parse_legacy(value: &Value) -> Result<Self, ResultError> {
        let raw = RawLegacy::deserialize(value).map_err(|e| ResultError(e.to_string()))?;
        let mut result = Self {
            cni_version: raw.cni_version.unwrap_or_default(),
            dns: raw.dns,
            ..Self::default()
        };
        for ip in [raw.ip4, raw.ip6].into_iter().flatten() {
            result.ips.push(IpConfig {
                address: ip.ip,
                gateway: ip.gateway,
                interface: None,
            });
            result.routes.extend(ip.routes);
        }
        Ok(result)
    }

    /// The pod's addresses: those on interface `ifname` inside the sandbox,
    /// or, when the plugin names no interface for an address, that address
    /// too (the rule the portmap plugin applies). IPv4 first, then IPv6,
    /// each in result order, without duplicates.
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in &self.ips {
            let on_pod = match ip.interface.and_then(|i| self.interfaces.get(i)) {
                Some(iface) => iface.name == ifname && iface.in_sandbox(),
                None => true,
            };
            let addr = ip.address.addr();
            if on_pod && !ips.contains(&addr) {
                ips.push(addr);
            }
        }
        // Stable: keeps each family's order.
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_040() {
        let v = json!({
            "cniVersion": "0.4.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1234", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/x"}
            ],
            "ips": [
                {"version": "6", "address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
                {"version": "4", "address": "10.88.0.5/24", "gateway": "10.88.0.1", "interface": 2}
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "10.88.0.1"}],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.local"]}
        });
        let r = CniResult::parse(&v, "0.4.0").unwrap();
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/run/netns/x"));
        assert_eq!(r.ips[1].address.to_string(), "10.88.0.5/24");
        assert_eq!(r.ips[1].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(r.routes[1].gw, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(r.dns.nameservers, vec!["10.96.0.10"]);
        assert_eq!(
            r.pod_ips("eth0"),
            vec![
                "10.88.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ],
            "v4 first"
        );
    }

    #[test]
    fn parses_100_with_optional_attributes() {
        let v = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mtu": 1450, "sandbox": "/run/netns/y"}],
            "ips": [{"address": "192.168.1.7/16", "interface": 0}],
            "routes": [{"dst": "::/0", "mtu": 1400, "priority": 10, "table": 5, "scope": 0}],
            "dns": {}
        });
        let r = CniResult::parse(&v, "1.0.0").unwrap();
        assert_eq!(r.interfaces[0].mtu, Some(1450));
        assert_eq!(r.ips[0].gateway, None);
        assert_eq!(r.routes[0].mtu, Some(1400));
        assert_eq!(r.routes[0].table, Some(5));
        assert_eq!(
            r.pod_ips("eth0"),
            vec!["192.168.1.7".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn parses_020() {
        let v = json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.2.3/24", "gateway": "10.1.2.1", "routes": [{"dst": "0.0.0.0/0"}]},
            "dns": {"nameservers": ["1.1.1.1"]}
        });
        let r = CniResult::parse(&v, "0.2.0").unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.routes.len(), 1);
        assert_eq!(
            r.pod_ips("eth0"),
            vec!["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn only_the_pod_interface_counts() {
        // A plugin that also reports an address on the host side.
        let v = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "br0"},
                {"name": "eth0", "sandbox": "/run/netns/z"},
                {"name": "net1", "sandbox": "/run/netns/z"}
            ],
            "ips": [
                {"address": "10.0.0.1/24", "interface": 0},
                {"address": "fd00::9/64", "interface": 1},
                {"address": "10.0.0.9/24", "interface": 1},
                {"address": "10.5.0.9/24", "interface": 2}
            ]
        });
        let r = CniResult::parse(&v, "1.0.0").unwrap();
        assert_eq!(
            r.pod_ips("eth0"),
            vec![
                "10.0.0.9".parse::<IpAddr>().unwrap(),
                "fd00::9".parse().unwrap()
            ]
        );
    }

    #[test]
    fn no_interface_index_means_all() {
        let v = json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "fd00::2/64"}, {"address": "10.0.0.2/24"}]
        });
        let r = CniResult::parse(&v, "1.0.0").unwrap();
        assert_eq!(
            r.pod_ips("eth0"),
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "fd00::2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn version_taken_from_network_when_missing() {
        let r = CniResult::parse(&json!({"ips": []}), "1.0.0").unwrap();
        assert_eq!(r.cni_version, "1.0.0");
    }

    #[test]
    fn bad_results_are_refused() {
        let bad = [
            json!([]),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]}),
            json!({"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.0.0.1/8"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "interface": 3}]}),
            json!({"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}),
        ];
        for v in bad {
            assert!(CniResult::parse(&v, "1.0.0").is_err(), "{v}");
        }
    }
}
