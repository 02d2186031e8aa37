//! Pod networking, seen from the sandbox: the one place where a pod's
//! network is set up and torn down.
//!
//! Today a pod with its own network namespace gets loopback only (brought
//! up by the thread that made the namespace, see `namespaces`). CNI ADD
//! belongs in [`setup`] and CNI DEL in [`teardown`]: `setup` returns what
//! the plugins reported, which is persisted in the pod's record so that
//! `teardown` can run DEL with the cached result even after a restart or
//! when the netns is already gone. Both run with the pod's lock held.
//!
//! Contract the callers keep (containerd #3667, cri-o #9301):
//! - `setup` runs only for pods with their own netns, after it is pinned;
//!   on any later failure of RunPodSandbox, `teardown` runs.
//! - `teardown` runs on StopPodSandbox, RemovePodSandbox and the cleanup of
//!   a half-made pod, for every pod whose record still holds a network
//!   status (or whose creation was interrupted); it must tolerate a missing
//!   netns and repeated calls. Whatever it returns, the netns is unpinned
//!   afterwards and Remove goes on: a pod is never stuck undeletable.

use serde::{Deserialize, Serialize};

use super::error::SandboxError;
use super::record::PodSandbox;

/// What the network reported for a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkStatus {
    /// The primary pod IP; empty when the pod has none (loopback only).
    pub ip: String,
    pub additional_ips: Vec<String>,
    /// The plugins' result (CNI result JSON), kept for DEL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// Sets up the network of `pod`, whose netns is pinned at
/// `pod.namespaces.net`. Called only for pods with their own netns.
pub(super) async fn setup(pod: &PodSandbox) -> Result<PodNetworkStatus, SandboxError> {
    // CNI ADD on `pod.namespaces.net` with `pod.config.port_mappings`,
    // the pod's name, namespace, uid and id goes here.
    tracing::debug!(pod = %pod.id, "pod network: loopback only");
    Ok(PodNetworkStatus::default())
}

/// Tears the network of `pod` down, with the cached `pod.network` result
/// when there is one.
pub(super) async fn teardown(pod: &PodSandbox) -> Result<(), SandboxError> {
    // CNI DEL with `pod.network.result` goes here.
    tracing::debug!(pod = %pod.id, "pod network: nothing to tear down beyond the netns");
    Ok(())
}
