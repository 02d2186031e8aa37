//! CNI network configuration discovery: the first valid `.conflist`,
//! `.conf` or `.json` file, in lexical order, across the configured
//! directories, as containerd and CRI-O pick it.

use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("no valid CNI network config in {dirs}")]
    NoConfig { dirs: String },
}

/// A network configuration list; a single `.conf` is read as a list of one.
#[derive(Debug, Clone)]
pub struct NetworkConfList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    /// Each plugin's own config object, as written.
    pub plugins: Vec<Value>,
    /// `disableCheck`: the network asks runtimes not to run CHECK.
    pub disable_check: bool,
}

impl NetworkConfList {
    /// Parses one file; `None` when it is not a usable network config.
    pub fn from_file(path: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path).ok()?;
        let value: Value = serde_json::from_str(&text).ok()?;
        let name = value.get("name")?.as_str()?.to_owned();
        let cni_version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.4.0")
            .to_owned();
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        let plugins = if is_list {
            value.get("plugins")?.as_array()?.clone()
        } else {
            value.get("type")?.as_str()?;
            vec![value.clone()]
        };
        if plugins.is_empty()
            || !plugins
                .iter()
                .all(|p| p.get("type").and_then(Value::as_str).is_some())
        {
            return None;
        }
        let disable_check = match value.get("disableCheck") {
            None => false,
            Some(v) => v.as_bool()?,
        };
        Some(Self {
            path: path.to_owned(),
            name,
            cni_version,
            plugins,
            disable_check,
        })
    }
}

/// The network ketch uses now: the first valid config, in lexical order of
/// file name within each directory, directories in the given order.
pub fn find_network(dirs: &[PathBuf]) -> Result<NetworkConfList, ConfError> {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
            })
            .collect();
        files.sort();
        if let Some(conf) = files.iter().find_map(|f| NetworkConfList::from_file(f)) {
            return Ok(conf);
        }
    }
    Err(ConfError::NoConfig {
        dirs: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_first_valid_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{not json").unwrap();
        std::fs::write(
            dir.path().join("20-b.conflist"),
            r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-a.conf"),
            r#"{"cniVersion":"0.4.0","name":"a","type":"bridge"}"#,
        )
        .unwrap();
        let conf = find_network(&[dir.path().to_owned()]).unwrap();
        assert_eq!(conf.name, "a");
        assert_eq!(conf.plugins.len(), 1);
    }

    #[test]
    fn empty_dir_names_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_network(&[dir.path().to_owned()]).unwrap_err();
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn list_without_plugin_type_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"nottype":1}]}"#,
        )
        .unwrap();
        assert!(find_network(&[dir.path().to_owned()]).is_err());
    }
}
