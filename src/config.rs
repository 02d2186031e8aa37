//! The daemon's configuration: `/etc/ketch/ketch.toml`, overridden by flags.
//!
//! Every key and its default is documented in `deploy/ketch.toml`; keep the
//! two in step. Unknown keys and bad values are errors that name the key, so
//! a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the config file lives when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ketch/ketch.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config value for `{key}`: {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

impl std::str::FromStr for CgroupDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cgroupfs" => Ok(Self::Cgroupfs),
            "systemd" => Ok(Self::Systemd),
            other => Err(format!(
                "unknown cgroup driver {other:?} (cgroupfs or systemd)"
            )),
        }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (text or json)")),
        }
    }
}

/// The whole configuration. Field names are the TOML keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent state: images, layers, container upper dirs, metadata.
    pub root_dir: PathBuf,
    /// Volatile state (tmpfs): socket, pod namespace pins, monitor sockets.
    pub state_dir: PathBuf,
    /// Mount a tmpfs on `state_dir` when it is on persistent storage.
    pub state_dir_tmpfs: bool,
    /// The CRI gRPC unix socket.
    pub listen: PathBuf,
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` wins when set.
    pub log_level: String,
    pub log_format: LogFormat,
    pub cgroup_driver: CgroupDriver,
    /// With the systemd driver: the D-Bus address of the systemd manager
    /// that gets each container's scope unit.
    pub systemd_bus: String,
    pub cni: CniConfig,
    pub streaming: StreamingConfig,
    pub image: ImageConfig,
    pub metrics: MetricsConfig,
    /// Per-registry settings, keyed by host[:port] as written in references.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// External OCI runtimes a pod's `runtime_handler` may name, keyed by
    /// handler name. The default handler `""` is the built-in executor
    /// unless a `[runtime_handlers.""]` table names another.
    pub runtime_handlers: BTreeMap<String, RuntimeHandlerConfig>,
}

/// One `[runtime_handlers.<name>]` table: an OCI runtime with runc's
/// command line (runc, crun, youki, runsc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeHandlerConfig {
    /// The runtime's binary (absolute). Checked when a pod asks for the
    /// handler, not at daemon start.
    pub path: PathBuf,
    /// Its `--root` (state directory); absent: `<state_dir>/runtimes/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Directories searched, in order, for `.conflist`/`.conf` files.
    pub conf_dirs: Vec<PathBuf>,
    /// Directories searched for plugin binaries.
    pub bin_dirs: Vec<PathBuf>,
    /// How long one plugin invocation may take.
    pub plugin_timeout_secs: u64,
    /// A CNI config template rendered with the pod CIDR kubelet sends
    /// through UpdateRuntimeConfig (containerd's `conf_template`).
    pub conf_template: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Address the exec/attach/port-forward server listens on.
    pub address: String,
    /// Port of the streaming server; 0 picks a free one.
    pub port: u16,
    /// How long a streaming URL stays valid.
    pub token_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Layers of one pull downloaded at the same time.
    pub max_concurrent_downloads: usize,
    /// The most bytes one layer may unpack to (its tar, inflated).
    pub max_layer_unpacked_bytes: u64,
    /// The most unpacked bytes per compressed byte of a layer: more is a
    /// decompression bomb.
    pub max_layer_compression_ratio: u64,
    /// Free bytes the root dir's filesystem must keep while layers unpack;
    /// 0 turns the check off.
    pub free_space_reserve_bytes: u64,
    /// Whether a pulled layer's compressed blob is dropped once the layer
    /// is unpacked and verified (containerd's `discard_unpacked_layers`;
    /// CRI-O never keeps them): nothing in the CRI reads them again, and
    /// keeping them doubles what a pull writes and what images take on
    /// disk. A layer whose unpacked copy is lost is then downloaded again.
    pub discard_unpacked_layers: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` of the Prometheus `/metrics` endpoint; empty: off.
    pub listen: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Mirrors (`https://host[:port]`) tried in order before the origin.
    pub mirrors: Vec<String>,
    /// Speak plain HTTP (or TLS without verification) to this registry.
    pub insecure: bool,
    /// A PEM CA bundle trusted for this registry, beside the system roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root_dir: PathBuf::from("/var/lib/ketch"),
            state_dir: PathBuf::from("/run/ketch"),
            state_dir_tmpfs: true,
            listen: PathBuf::from("/run/ketch/ketch.sock"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            cgroup_driver: CgroupDriver::Cgroupfs,
            systemd_bus: crate::systemd::DEFAULT_BUS.into(),
            cni: CniConfig::default(),
            streaming: StreamingConfig::default(),
            image: ImageConfig::default(),
            metrics: MetricsConfig::default(),
            registries: BTreeMap::new(),
            runtime_handlers: BTreeMap::new(),
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dirs: vec![PathBuf::from("/etc/cni/net.d")],
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            plugin_timeout_secs: 30,
            conf_template: None,
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".into(),
            port: 0,
            token_ttl_secs: 60,
        }
    }
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            max_concurrent_downloads: 4,
            max_layer_unpacked_bytes: 64 << 30,
            max_layer_compression_ratio: 1000,
            free_space_reserve_bytes: 1 << 30,
            discard_unpacked_layers: true,
        }
    }
}

const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Reads `path`. A missing file is only an error when `required` (the
    /// user named it); the default path may be absent.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the values serde cannot: relations and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: &dyn std::fmt::Debug, reason: &str| ConfigError::Invalid {
            key,
            value: format!("{value:?}"),
            reason: reason.to_owned(),
        };
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(invalid(
                "log_level",
                &self.log_level,
                "must be one of error, warn, info, debug, trace",
            ));
        }
        for (key, path) in [
            ("root_dir", &self.root_dir),
            ("state_dir", &self.state_dir),
            ("listen", &self.listen),
        ] {
            if !path.is_absolute() {
                return Err(invalid(key, path, "must be an absolute path"));
            }
        }
        if self.cni.plugin_timeout_secs == 0 {
            return Err(invalid(
                "cni.plugin_timeout_secs",
                &self.cni.plugin_timeout_secs,
                "must be at least 1",
            ));
        }
        if let Some(template) = &self.cni.conf_template
            && !template.is_absolute()
        {
            return Err(invalid(
                "cni.conf_template",
                template,
                "must be an absolute path",
            ));
        }
        if self.streaming.address.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "streaming.address",
                &self.streaming.address,
                "must be an IP address",
            ));
        }
        if !self.metrics.listen.is_empty()
            && self.metrics.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "metrics.listen",
                &self.metrics.listen,
                "must be an address and port (127.0.0.1:9100, [::1]:9100), or empty",
            ));
        }
        if self.streaming.token_ttl_secs == 0 {
            return Err(invalid(
                "streaming.token_ttl_secs",
                &self.streaming.token_ttl_secs,
                "must be at least 1",
            ));
        }
        if self.image.max_concurrent_downloads == 0 {
            return Err(invalid(
                "image.max_concurrent_downloads",
                &self.image.max_concurrent_downloads,
                "must be at least 1",
            ));
        }
        for (key, value) in [
            (
                "image.max_layer_unpacked_bytes",
                self.image.max_layer_unpacked_bytes,
            ),
            (
                "image.max_layer_compression_ratio",
                self.image.max_layer_compression_ratio,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, &value, "must be at least 1"));
            }
        }
        for (name, handler) in &self.runtime_handlers {
            if let Err(reason) = handler_name(name) {
                return Err(invalid("runtime_handlers.<name>", name, &reason));
            }
            if !handler.path.is_absolute() {
                return Err(invalid(
                    "runtime_handlers.<name>.path",
                    &handler.path,
                    "must be an absolute path",
                ));
            }
            if let Some(root) = handler.root.as_ref().filter(|r| !r.is_absolute()) {
                return Err(invalid(
                    "runtime_handlers.<name>.root",
                    root,
                    "must be an absolute path",
                ));
            }
        }
        for registry in self.registries.values() {
            for mirror in &registry.mirrors {
                if !(mirror.starts_with("http://") || mirror.starts_with("https://")) {
                    return Err(invalid(
                        "registries.<host>.mirrors",
                        mirror,
                        "must start with http:// or https://",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The runtime handlers configured, each with its binary and the
    /// `--root` it runs with (the default root filled in).
    pub fn runtime_handler_roots(&self) -> BTreeMap<String, (PathBuf, PathBuf)> {
        self.runtime_handlers
            .iter()
            .map(|(name, h)| {
                let root = h.root.clone().unwrap_or_else(|| {
                    let dir = if name.is_empty() { "default" } else { name };
                    self.state_dir.join("runtimes").join(dir)
                });
                (name.clone(), (h.path.clone(), root))
            })
            .collect()
    }

    /// The registry settings for `host`, or the defaults.
    pub fn registry(&self, host: &str) -> RegistryConfig {
        self.registries.get(host).cloned().unwrap_or_default()
    }
}

/// A handler name is a RuntimeClass `handler`: a DNS label (Kubernetes'
/// `ValidateRuntimeClassName`), or `""` for the default; it becomes a
/// directory name under the state dir.
fn handler_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if name.is_empty() {
        return Ok(());
    }
    if name.len() > 63 || !name.chars().all(ok_char) || name.starts_with('-') || name.ends_with('-')
    {
        return Err("a handler name is a DNS label: at most 63 of a-z, 0-9 and '-', starting and ending with a letter or digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.root_dir, PathBuf::from("/var/lib/ketch"));
        assert_eq!(c.listen, PathBuf::from("/run/ketch/ketch.sock"));
        assert_eq!(c.cgroup_driver, CgroupDriver::Cgroupfs);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("root_dirr = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("root_dirr"), "{err}");
        let err = parse("[cni]\nconf_dir = []").unwrap_err().to_string();
        assert!(err.contains("conf_dir"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = parse("log_format = \"xml\"").unwrap_err().to_string();
        assert!(err.contains("log_format") && err.contains("xml"), "{err}");
        let err = parse("log_level = \"loud\"").unwrap_err().to_string();
        assert!(err.contains("log_level") && err.contains("loud"), "{err}");
        let err = parse("[streaming]\nport = \"eighty\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
        let err = parse("root_dir = \"relative\"").unwrap_err().to_string();
        assert!(
            err.contains("root_dir") && err.contains("relative"),
            "{err}"
        );
    }

    #[test]
    fn cni_conf_template() {
        let c = parse("[cni]\nconf_template = \"/etc/ketch/cni.tmpl\"").unwrap();
        assert_eq!(
            c.cni.conf_template,
            Some(PathBuf::from("/etc/ketch/cni.tmpl"))
        );
        let err = parse("[cni]\nconf_template = \"cni.tmpl\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cni.conf_template"), "{err}");
    }

    #[test]
    fn unpack_limits_parse_and_zero_caps_are_named() {
        let c = parse(
            "[image]\nmax_layer_unpacked_bytes = 1048576\n\
             max_layer_compression_ratio = 50\nfree_space_reserve_bytes = 0",
        )
        .unwrap();
        assert_eq!(c.image.max_layer_unpacked_bytes, 1 << 20);
        assert_eq!(c.image.max_layer_compression_ratio, 50);
        assert_eq!(c.image.free_space_reserve_bytes, 0);
        for key in ["max_layer_unpacked_bytes", "max_layer_compression_ratio"] {
            let err = parse(&format!("[image]\n{key} = 0"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("image.{key}")), "{err}");
        }
    }

    #[test]
    fn registries_parse() {
        let c = parse(
            "[registries.\"localhost:5000\"]\ninsecure = true\nmirrors = [\"http://127.0.0.1:6000\"]",
        )
        .unwrap();
        let r = c.registry("localhost:5000");
        assert!(r.insecure);
        assert_eq!(r.mirrors, vec!["http://127.0.0.1:6000"]);
        assert!(!c.registry("other").insecure);
    }

    #[test]
    fn runtime_handlers_parse_with_their_default_root() {
        let c = parse(
            "state_dir = \"/run/k\"\n[runtime_handlers.runc]\npath = \"/usr/sbin/runc\"\n\
             [runtime_handlers.crun]\npath = \"/usr/bin/crun\"\nroot = \"/run/crun-k\"",
        )
        .unwrap();
        let roots = c.runtime_handler_roots();
        assert_eq!(
            roots["runc"],
            (
                PathBuf::from("/usr/sbin/runc"),
                PathBuf::from("/run/k/runtimes/runc")
            )
        );
        assert_eq!(roots["crun"].1, PathBuf::from("/run/crun-k"));
        let err = parse("[runtime_handlers.runc]\nroot = \"/x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("path"), "{err}");
        let err = parse("[runtime_handlers.runc]\npath = \"runc\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtime_handlers.<name>.path"), "{err}");
        let err = parse("[runtime_handlers.Bad_Name]\npath = \"/bin/true\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Bad_Name") && err.contains("DNS label"),
            "{err}"
        );
        let err = parse("[runtime_handlers.runc]\npath = \"/usr/sbin/runc\"\nflags = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("flags"), "{err}");
    }

    #[test]
    fn shipped_config_is_valid_and_default() {
        let text = include_str!("../deploy/ketch.toml");
        let c = parse(text).unwrap();
        let d = Config::default();
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            serde_json::to_value(&d).unwrap(),
            "deploy/ketch.toml must state exactly the defaults"
        );
    }

    #[test]
    fn kind_node_config_is_valid() {
        let c = parse(include_str!("../deploy/kind/ketch.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(c.cni.bin_dirs, vec![PathBuf::from("/opt/cni/bin")]);
    }
}
