//! The node's pod CIDR from `UpdateRuntimeConfig`, and the network config
//! rendered from `cni.conf_template` with it (see the module doc).

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::Value;

use super::{Cni, NetworkError, template};

/// The file `update_pod_cidr` writes into the first conf dir.
pub const GENERATED_CONF_NAME: &str = "10-ketch-net.conflist";

impl Cni {
    /// Records the node's pod CIDRs (`"10.244.1.0/24,fd00:1::/64"`; empty
    /// clears them) and renders `cni.conf_template` from them when set and
    /// no network config exists yet. Returns the file written, if any.
    /// Blocking file IO (a few KiB).
    pub fn update_pod_cidr(&self, pod_cidr: &str) -> Result<Option<PathBuf>, NetworkError> {
        let mut cidrs = Vec::new();
        for part in pod_cidr.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let cidr = part
                .parse::<IpNet>()
                .map_err(|e| NetworkError::InvalidPodCidr {
                    value: pod_cidr.to_owned(),
                    reason: format!("{part:?}: {e}"),
                })?;
            cidrs.push(cidr);
        }
        match self.pod_cidrs.lock() {
            Ok(mut recorded) => recorded.clone_from(&cidrs),
            Err(poisoned) => poisoned.into_inner().clone_from(&cidrs),
        }
        let Some(template_path) = &self.conf_template else {
            return Ok(None);
        };
        if cidrs.is_empty() || self.network().is_ok() {
            return Ok(None);
        }
        let template =
            std::fs::read_to_string(template_path).map_err(|source| NetworkError::Io {
                op: "read CNI config template",
                path: template_path.clone(),
                source,
            })?;
        let bad = |reason: String| NetworkError::Template {
            path: template_path.clone(),
            reason,
        };
        let rendered =
            template::render(&template, &template::TemplateVars::new(&cidrs)).map_err(bad)?;
        let value: Value = serde_json::from_str(&rendered)
            .map_err(|e| bad(format!("renders to invalid JSON: {e}")))?;
        if value.get("name").and_then(Value::as_str).is_none() {
            return Err(bad("renders to a config without a name".into()));
        }
        let Some(dir) = self.conf_dirs.first() else {
            return Err(bad("no cni.conf_dirs to write it into".into()));
        };
        let path = dir.join(GENERATED_CONF_NAME);
        write_atomic(&path, rendered.as_bytes())?;
        tracing::info!(path = %path.display(), ?cidrs, "wrote CNI config from template");
        Ok(Some(path))
    }

    /// The pod CIDRs last given to `update_pod_cidr`.
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        match self.pod_cidrs.lock() {
            Ok(recorded) => recorded.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Writes `path` atomically and durably, creating its directory.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), NetworkError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|source| NetworkError::Io {
        op: "create",
        path: dir.to_owned(),
        source,
    })?;
    crate::store::write_atomic(path, data, 0o644).map_err(|e| NetworkError::Io {
        op: e.op,
        path: e.path,
        source: e.source,
    })
}
