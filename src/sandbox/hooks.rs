//! How the container module plugs into the pod lifecycle.
//!
//! StopPodSandbox must stop every container of the pod and
//! RemovePodSandbox must remove them, but the sandbox module sits below the
//! container module and knows nothing of containers. So the container
//! module implements [`PodContainers`] and registers it once, at start,
//! with `SandboxManager::set_container_hooks`. With no hooks registered (no
//! container module), a pod has no containers to stop.
//!
//! Lock order: the hooks run with the pod's lock held, so they must not
//! call back into the `SandboxManager` for the same pod (`lock_ready`,
//! `stop`, `remove`); reading it (`get`, `list`) is fine. A container
//! operation that needs the pod (CreateContainer, StartContainer) takes
//! the pod's lock first with `lock_ready`, then its container's: pod
//! before container, always.

use async_trait::async_trait;

pub use super::error::HookError;

#[async_trait]
pub trait PodContainers: Send + Sync + 'static {
    /// Stops every container of pod `pod_id` (kills what does not stop in
    /// time). Must succeed when there is nothing to stop.
    async fn stop_all(&self, pod_id: &str) -> Result<(), HookError>;

    /// Removes every container of pod `pod_id`, stopping any still running.
    /// Must succeed when there is nothing to remove.
    async fn remove_all(&self, pod_id: &str) -> Result<(), HookError>;
}
