//! The runtime as a whole: the domain object the CRI layer talks to. It owns
//! the configuration and, as they land, the pod, container and image stores.

use std::sync::Arc;

use crate::config::Config;
use crate::network;
use crate::sandbox::{SandboxError, SandboxManager};

/// One condition of `Status`, in domain terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub ready: bool,
    pub reason: String,
    pub message: String,
}

pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("pod sandboxes: {0}")]
    Sandbox(#[from] SandboxError),
}

pub struct Runtime {
    config: Arc<Config>,
    sandboxes: SandboxManager,
}

impl Runtime {
    /// Opens the stores and reconciles them with what survived the last
    /// run (a restart, a crash, a reboot).
    pub async fn new(config: Config) -> Result<Self, RuntimeError> {
        let sandboxes = SandboxManager::open(&config.root_dir, &config.state_dir)?
            .with_network(network::Cni::new(&config.cni));
        sandboxes.recover().await?;
        Ok(Self {
            config: Arc::new(config),
            sandboxes,
        })
    }

    pub fn sandboxes(&self) -> &SandboxManager {
        &self.sandboxes
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// RuntimeReady and NetworkReady, each with a reason when false.
    pub fn conditions(&self) -> Vec<Condition> {
        let runtime = match std::fs::metadata(&self.config.root_dir) {
            Ok(m) if m.is_dir() => Condition {
                kind: RUNTIME_READY,
                ready: true,
                reason: String::new(),
                message: String::new(),
            },
            _ => Condition {
                kind: RUNTIME_READY,
                ready: false,
                reason: "RootDirMissing".into(),
                message: format!(
                    "root directory {} is not available",
                    self.config.root_dir.display()
                ),
            },
        };
        // Read on every call, so a config dropped in later is picked up
        // without a restart.
        let network = match network::find_network(&self.config.cni.conf_dirs) {
            Ok(_) => Condition {
                kind: NETWORK_READY,
                ready: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(e) => Condition {
                kind: NETWORK_READY,
                ready: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("Network plugin returns error: cni plugin not initialized: {e}"),
            },
        };
        vec![runtime, network]
    }
}
