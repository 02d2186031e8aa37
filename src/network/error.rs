//! The network module's errors.

use std::path::PathBuf;
use std::time::Duration;

use super::conf::ConfError;
use super::exec::CniCommand;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No usable network config (the NetworkReady reason, too).
    #[error(transparent)]
    Config(#[from] ConfError),

    #[error("invalid pod network request: {0}")]
    InvalidArgument(String),

    #[error("invalid {annotation} annotation {value:?}: {reason}")]
    InvalidBandwidth {
        annotation: String,
        value: String,
        reason: String,
    },

    #[error("invalid pod CIDR {value:?}: {reason}")]
    InvalidPodCidr { value: String, reason: String },

    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },

    #[error("cannot run CNI plugin {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The plugin exited non-zero; `message` is its own error message
    /// (`msg: details`), or its stderr when it printed no CNI error.
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    PluginFailed {
        plugin: String,
        command: CniCommand,
        /// The CNI error code, when the plugin printed one.
        code: Option<u64>,
        message: String,
    },

    #[error("CNI plugin {plugin} {command} timed out after {}s and was killed", timeout.as_secs_f32())]
    Timeout {
        plugin: String,
        command: CniCommand,
        timeout: Duration,
    },

    #[error("CNI plugin {plugin} {command} returned an unusable result: {reason}")]
    BadResult {
        plugin: String,
        command: CniCommand,
        reason: String,
    },

    #[error("network {network} gave sandbox {id} no IP address on {ifname}")]
    NoPodIp {
        network: String,
        id: String,
        ifname: String,
    },

    /// A setup failed and undoing what it had done failed too: something
    /// may be left behind (an IP, a veth, iptables rules).
    #[error("{failure}; cleaning up after it also failed: {cleanup}")]
    CleanupFailed {
        failure: Box<NetworkError>,
        cleanup: Box<NetworkError>,
    },

    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    /// No tokio runtime to run plugins on, or its task died.
    #[error("{0}")]
    Runtime(String),

    #[error("invalid CNI config template {}: {reason}", path.display())]
    Template { path: PathBuf, reason: String },
}

impl From<crate::task::TaskFailed> for NetworkError {
    fn from(e: crate::task::TaskFailed) -> Self {
        NetworkError::Runtime(e.to_string())
    }
}

impl NetworkError {
    /// Whether the request itself was bad (a CRI `InvalidArgument`), as
    /// opposed to the network failing it.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(
            self,
            Self::InvalidArgument(_) | Self::InvalidBandwidth { .. } | Self::InvalidPodCidr { .. }
        )
    }
}
