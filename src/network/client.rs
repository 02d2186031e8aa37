//! The CNI client: ADD, DEL and CHECK of a pod's network, plugin by plugin.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::exec::{Invocation, find_plugin, invoke};
use super::pod::{plugin_stdin, version_at_least};
use super::{
    CachedResult, CniCommand, CniResult, ConfError, NetworkConfList, NetworkError, NetworkStatus,
    PodNetwork, find_network,
};
use crate::config::CniConfig;

/// The CNI client.
#[derive(Debug, Clone)]
pub struct Cni {
    pub(super) conf_dirs: Vec<PathBuf>,
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
    pub(super) conf_template: Option<PathBuf>,
    pub(super) pod_cidrs: Arc<Mutex<Vec<IpNet>>>,
}

/// One network attached to one pod: what every plugin call shares.
struct Attachment<'a> {
    name: &'a str,
    cni_version: &'a str,
    plugins: &'a [Value],
    ifname: &'a str,
    netns: &'a OsStr,
    container_id: &'a str,
    cni_args: &'a str,
    capability_args: &'a Map<String, Value>,
}

/// Where an ADD chain stopped.
struct AddFailure {
    error: NetworkError,
    /// Plugins to DEL: those that ran, the failing one included.
    reached: usize,
    /// The last result obtained before the failure.
    prev: Option<Value>,
}

fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// Adds to `failure` the error of undoing it, if any.
fn with_cleanup(failure: NetworkError, cleanup: Result<(), NetworkError>) -> NetworkError {
    match cleanup {
        Ok(()) => failure,
        Err(cleanup) => NetworkError::CleanupFailed {
            failure: Box::new(failure),
            cleanup: Box::new(cleanup),
        },
    }
}

/// The tokio runtime setup and teardown run their tasks on.
fn runtime_handle() -> Result<tokio::runtime::Handle, NetworkError> {
    tokio::runtime::Handle::try_current().map_err(|e| NetworkError::Runtime(e.to_string()))
}

fn is_netns(path: &Path) -> bool {
    // A pinned namespace is a bind-mounted nsfs inode.
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// CNI_NETNS for DEL. A pin file that exists but no longer holds a
/// namespace (unmounted, not yet unlinked) is passed as empty, which the
/// spec allows for DEL; a missing one is passed as is and plugins report
/// it as already gone.
fn netns_for_del(path: &Path) -> OsString {
    match std::fs::symlink_metadata(path) {
        Ok(_) if !is_netns(path) => OsString::new(),
        _ => path.as_os_str().to_owned(),
    }
}

impl Cni {
    pub fn new(config: &CniConfig) -> Self {
        Self {
            conf_dirs: config.conf_dirs.clone(),
            bin_dirs: config.bin_dirs.clone(),
            timeout: Duration::from_secs(config.plugin_timeout_secs),
            conf_template: config.conf_template.clone(),
            pod_cidrs: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The network config in use now (read on every call).
    pub fn network(&self) -> Result<NetworkConfList, ConfError> {
        find_network(&self.conf_dirs)
    }

    /// Attaches the pod to the network. See the module doc.
    ///
    /// The work runs as its own task: if this future is dropped (a
    /// cancelled RPC), setup still finishes, and since no one will persist
    /// its result, it is torn down again rather than leaked.
    pub async fn setup(&self, pod: &PodNetwork) -> Result<NetworkStatus, NetworkError> {
        let handle = runtime_handle()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (this, pod) = (self.clone(), pod.clone());
        handle.spawn(async move {
            let result = this.setup_now(&pod).await;
            if let Err(Ok(status)) = tx.send(result) {
                tracing::warn!(id = %pod.id, "pod network setup abandoned by its caller; undoing it");
                if let Err(e) = this.teardown_now(&pod, Some(&status.cached)).await {
                    tracing::warn!(id = %pod.id, error = %e, "undoing an abandoned pod network setup failed");
                }
            }
        });
        rx.await.map_err(|_| {
            NetworkError::Runtime("pod network setup task ended without a result".into())
        })?
    }

    /// Detaches the pod from the network. See the module doc.
    ///
    /// Runs to completion as its own task even if this future is dropped.
    pub async fn teardown(
        &self,
        pod: &PodNetwork,
        cached: Option<&CachedResult>,
    ) -> Result<(), NetworkError> {
        let handle = runtime_handle()?;
        let (this, pod, cached) = (self.clone(), pod.clone(), cached.cloned());
        handle
            .spawn(async move { this.teardown_now(&pod, cached.as_ref()).await })
            .await
            .map_err(|e| NetworkError::Runtime(format!("pod network teardown task failed: {e}")))?
    }

    async fn setup_now(&self, pod: &PodNetwork) -> Result<NetworkStatus, NetworkError> {
        pod.validate()?;
        if !is_netns(&pod.netns) {
            return Err(NetworkError::InvalidArgument(format!(
                "{} is not a network namespace",
                pod.netns.display()
            )));
        }
        let conf = self.network()?;
        // Every binary first: a missing one fails before anything is made.
        for ty in conf.plugins.iter().map(plugin_type) {
            find_plugin(ty, &self.bin_dirs)?;
        }
        let cni_args = pod.cni_args();
        let capability_args = pod.capability_args();
        // `lo` is up already: the sandbox brings it up when it makes the
        // namespace, which spares the exec of the loopback plugin that
        // containerd and CRI-O run as a network of its own.
        let main = Attachment {
            name: &conf.name,
            cni_version: &conf.cni_version,
            plugins: &conf.plugins,
            ifname: &pod.ifname,
            netns: pod.netns.as_os_str(),
            container_id: &pod.id,
            cni_args: &cni_args,
            capability_args: &capability_args,
        };
        let raw = match self.add_chain(&main).await {
            Ok(raw) => raw,
            Err(f) => {
                let cleanup = self.del_chain(&main, f.reached, f.prev.as_ref()).await;
                return Err(with_cleanup(f.error, cleanup));
            }
        };
        let checked = CniResult::parse(&raw, &conf.cni_version)
            .map_err(|e| NetworkError::BadResult {
                plugin: conf
                    .plugins
                    .last()
                    .map(plugin_type)
                    .unwrap_or("")
                    .to_owned(),
                command: CniCommand::Add,
                reason: e.0,
            })
            .and_then(|result| {
                let ips = result.pod_ips(&pod.ifname);
                if ips.is_empty() {
                    return Err(NetworkError::NoPodIp {
                        network: conf.name.clone(),
                        id: pod.id.clone(),
                        ifname: pod.ifname.clone(),
                    });
                }
                Ok((result, ips))
            });
        let (result, ips) = match checked {
            Ok(ok) => ok,
            Err(e) => {
                let cleanup = self.del_chain(&main, main.plugins.len(), Some(&raw)).await;
                return Err(with_cleanup(e, cleanup));
            }
        };
        tracing::debug!(id = %pod.id, network = %conf.name, ?ips, "pod network set up");
        Ok(NetworkStatus {
            ips,
            result,
            cached: CachedResult {
                format: 1,
                network_name: conf.name.clone(),
                cni_version: conf.cni_version.clone(),
                disable_check: conf.disable_check,
                plugins: conf.plugins.clone(),
                runtime_config: capability_args,
                ifname: pod.ifname.clone(),
                config_path: conf.path.clone(),
                result: raw,
            },
        })
    }

    async fn teardown_now(
        &self,
        pod: &PodNetwork,
        cached: Option<&CachedResult>,
    ) -> Result<(), NetworkError> {
        pod.validate()?;
        let netns = netns_for_del(&pod.netns);
        let cni_args = pod.cni_args();
        match cached {
            Some(c) => {
                let main = Attachment {
                    name: &c.network_name,
                    cni_version: &c.cni_version,
                    plugins: &c.plugins,
                    ifname: &c.ifname,
                    netns: &netns,
                    container_id: &pod.id,
                    cni_args: &cni_args,
                    capability_args: &c.runtime_config,
                };
                self.del_chain(&main, main.plugins.len(), Some(&c.result))
                    .await?;
            }
            None => {
                let conf = self.network()?;
                let capability_args = pod.capability_args();
                let main = Attachment {
                    name: &conf.name,
                    cni_version: &conf.cni_version,
                    plugins: &conf.plugins,
                    ifname: &pod.ifname,
                    netns: &netns,
                    container_id: &pod.id,
                    cni_args: &cni_args,
                    capability_args: &capability_args,
                };
                self.del_chain(&main, main.plugins.len(), None).await?;
            }
        }
        tracing::debug!(id = %pod.id, "pod network torn down");
        Ok(())
    }

    /// Runs CHECK against the cached ADD; `Ok` when the network opts out.
    pub async fn check(&self, pod: &PodNetwork, cached: &CachedResult) -> Result<(), NetworkError> {
        pod.validate()?;
        if cached.disable_check || !version_at_least(&cached.cni_version, (0, 4, 0)) {
            return Ok(());
        }
        let cni_args = pod.cni_args();
        for plugin in &cached.plugins {
            let stdin = plugin_stdin(
                plugin,
                &cached.network_name,
                &cached.cni_version,
                Some(&cached.result),
                &cached.runtime_config,
            );
            let inv = Invocation {
                command: CniCommand::Check,
                container_id: &pod.id,
                netns: pod.netns.as_os_str(),
                ifname: &cached.ifname,
                cni_args: &cni_args,
                bin_dirs: &self.bin_dirs,
                timeout: self.timeout,
            };
            invoke(plugin_type(plugin), &inv, &stdin).await?;
        }
        Ok(())
    }

    fn invocation<'a>(&'a self, a: &'a Attachment<'a>, command: CniCommand) -> Invocation<'a> {
        Invocation {
            command,
            container_id: a.container_id,
            netns: a.netns,
            ifname: a.ifname,
            cni_args: a.cni_args,
            bin_dirs: &self.bin_dirs,
            timeout: self.timeout,
        }
    }

    /// ADD of every plugin in order, each chained on the previous result.
    async fn add_chain(&self, a: &Attachment<'_>) -> Result<Value, AddFailure> {
        let inv = self.invocation(a, CniCommand::Add);
        let mut prev: Option<Value> = None;
        for (i, plugin) in a.plugins.iter().enumerate() {
            let stdin = plugin_stdin(
                plugin,
                a.name,
                a.cni_version,
                prev.as_ref(),
                a.capability_args,
            );
            match invoke(plugin_type(plugin), &inv, &stdin).await {
                Ok(Some(result)) => prev = Some(result),
                Ok(None) => {}
                Err(error) => {
                    return Err(AddFailure {
                        error,
                        reached: i + 1,
                        prev,
                    });
                }
            }
        }
        prev.ok_or_else(|| AddFailure {
            error: NetworkError::BadResult {
                plugin: String::new(),
                command: CniCommand::Add,
                reason: format!("network {} has no plugins", a.name),
            },
            reached: 0,
            prev: None,
        })
    }

    /// DEL of the first `count` plugins, in reverse order. Runs them all;
    /// returns the first error.
    async fn del_chain(
        &self,
        a: &Attachment<'_>,
        count: usize,
        prev: Option<&Value>,
    ) -> Result<(), NetworkError> {
        let inv = self.invocation(a, CniCommand::Del);
        // prevResult on DEL exists from spec 0.4.0 on.
        let prev = prev.filter(|_| version_at_least(a.cni_version, (0, 4, 0)));
        let mut first_error = None;
        for plugin in a.plugins.iter().take(count).rev() {
            let stdin = plugin_stdin(plugin, a.name, a.cni_version, prev, a.capability_args);
            if let Err(e) = invoke(plugin_type(plugin), &inv, &stdin).await {
                tracing::warn!(id = inv.container_id, network = a.name, error = %e, "CNI DEL failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
