//! What a successful setup leaves for later: the pod IPs, the typed result
//! and the record DEL and CHECK need, which the caller persists.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{CniCommand, CniResult, NetworkError};

/// What `setup` gives back.
#[derive(Debug, Clone)]
pub struct NetworkStatus {
    /// The pod's IPs, IPv4 first; never empty.
    pub ips: Vec<IpAddr>,
    /// The final result of the plugin chain.
    pub result: CniResult,
    /// To be persisted with the sandbox and handed to `teardown`/`check`.
    pub cached: CachedResult,
}

/// The record of one ADD that DEL and CHECK need, like libcni's cache
/// file: the network config as it was used, the runtime config offered to
/// the plugins and the final result JSON, verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedResult {
    /// The record's format; 1.
    pub(super) format: u32,
    pub(super) network_name: String,
    pub(super) cni_version: String,
    #[serde(default)]
    pub(super) disable_check: bool,
    /// Each plugin's config as written in the network config.
    pub(super) plugins: Vec<Value>,
    /// The capability arguments (`portMappings`, `bandwidth`, ...).
    #[serde(default)]
    pub(super) runtime_config: Map<String, Value>,
    pub(super) ifname: String,
    /// Where the config came from (for humans).
    pub(super) config_path: PathBuf,
    /// The final result, as the last plugin printed it.
    pub(super) result: Value,
}

impl CachedResult {
    pub fn network_name(&self) -> &str {
        &self.network_name
    }

    pub fn cni_version(&self) -> &str {
        &self.cni_version
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The final result, typed.
    pub fn result(&self) -> Result<CniResult, NetworkError> {
        CniResult::parse(&self.result, &self.cni_version).map_err(|e| NetworkError::BadResult {
            plugin: "(cached)".into(),
            command: CniCommand::Add,
            reason: e.0,
        })
    }

    /// The pod IPs recorded at ADD, IPv4 first.
    pub fn pod_ips(&self) -> Result<Vec<IpAddr>, NetworkError> {
        Ok(self.result()?.pod_ips(&self.ifname))
    }
}
