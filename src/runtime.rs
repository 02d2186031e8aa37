//! The runtime as a whole: the domain object the CRI layer talks to. It owns
//! the configuration and, as they land, the pod, container and image stores.

use std::sync::Arc;

use crate::config::Config;
use crate::image::{ImageError, ImageStore};
use crate::network;

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

/// Why the runtime could not be assembled at start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image store: {0}")]
    Images(#[from] ImageError),
}

pub struct Runtime {
    config: Arc<Config>,
    images: ImageStore,
}

impl Runtime {
    pub fn new(config: Config) -> Result<Self, RuntimeError> {
        let images = ImageStore::new(&config)?;
        Ok(Self {
            config: Arc::new(config),
            images,
        })
    }

    /// Images: pulls, records, layers and leases.
    pub fn images(&self) -> &ImageStore {
        &self.images
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
