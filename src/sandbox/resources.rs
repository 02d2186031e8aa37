//! UpdatePodSandboxResources: kubelet's in-place pod resize tells the
//! runtime the pod's new resources (`resources`, the pod's total without
//! its overhead) and its RuntimeClass overhead (`overhead`).
//!
//! What the runtimes do: containerd (`internal/cri/server/
//! sandbox_update_resources.go`, 2.1+) records both in the sandbox's status
//! and hands them to NRI plugins; it writes no cgroup, because kubelet
//! itself resizes the pod cgroup (`kubepods/<qos>/pod<uid>`) before it
//! calls the runtime. CRI-O likewise only relays them to NRI. ketch
//! records them (persisted with the pod, reported in PodSandboxStatus's
//! verbose `info` as `resources`: the 1.36 PodSandboxStatus message has no
//! field for them) and, when the pod has a `cgroup_parent` whose cgroup
//! exists, writes the pod's total (resources plus overhead, what kubelet
//! sizes the pod cgroup to) into it, so a pod resized without kubelet
//! managing its cgroup gets the limits too; with kubelet the values are the
//! ones it wrote already. A pod without a `cgroup_parent` has no cgroup of
//! its own (its containers share `/ketch`): only the record changes. ketch
//! never creates or removes a pod cgroup: it belongs to whoever named it.

use serde::{Deserialize, Serialize};

use super::SandboxManager;
use super::error::SandboxError;
use super::record::PodSandbox;
use crate::cgroups::{HugepageLimit, Resources};

/// A pod's resources as UpdatePodSandboxResources last set them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodResources {
    /// The RuntimeClass overhead.
    pub overhead: Option<Resources>,
    /// The pod's resources without the overhead.
    pub resources: Option<Resources>,
}

/// The CFS period kubelet uses when none is given (µs).
const DEFAULT_CPU_PERIOD: u64 = 100_000;

impl PodResources {
    /// Refuses what no cgroup would take, naming the field.
    pub fn validate(&self) -> Result<(), SandboxError> {
        for (field, r) in [("overhead", &self.overhead), ("resources", &self.resources)] {
            if let Some(r) = r {
                r.validate()
                    .map_err(|e| SandboxError::invalid(field, e.to_string()))?;
            }
        }
        Ok(())
    }

    /// The limits of the pod cgroup: the resources with the overhead added
    /// to each limit they set (kubelet's pod cgroup is sized to both). A
    /// setting the resources leave unset, or unlimited, stays so; the
    /// overhead's quota is scaled to the resources' period.
    pub fn pod_cgroup_limits(&self) -> Resources {
        let Some(base) = &self.resources else {
            return Resources::default();
        };
        let extra = self.overhead.clone().unwrap_or_default();
        let mut out = base.clone();
        out.devices.clear();
        if let (Some(shares), Some(more)) = (base.cpu_shares, extra.cpu_shares) {
            out.cpu_shares = Some(shares.saturating_add(more));
        }
        if let Some(quota) = base.cpu_quota.filter(|q| *q > 0) {
            let period = base.cpu_period.unwrap_or(DEFAULT_CPU_PERIOD);
            let more = match extra.cpu_quota.filter(|q| *q > 0) {
                Some(q) => {
                    let extra_period = extra.cpu_period.unwrap_or(DEFAULT_CPU_PERIOD).max(1);
                    (i128::from(q) * i128::from(period) / i128::from(extra_period))
                        .try_into()
                        .unwrap_or(i64::MAX)
                }
                None => 0,
            };
            out.cpu_quota = Some(quota.saturating_add(more));
            out.cpu_period = Some(period);
        }
        if let Some(limit) = base.memory_limit.filter(|l| *l > 0) {
            let more = extra.memory_limit.filter(|l| *l > 0).unwrap_or(0);
            out.memory_limit = Some(limit.saturating_add(more));
        }
        for page in &mut out.hugepage_limits {
            if let Some(more) = extra
                .hugepage_limits
                .iter()
                .find(|h: &&HugepageLimit| h.page_size == page.page_size)
            {
                page.limit = page.limit.saturating_add(more.limit);
            }
        }
        out
    }
}

impl SandboxManager {
    /// Records the pod's new resources once `apply` (given the pod and the
    /// limits of its cgroup) has put them in force; the pod's lock is held
    /// throughout, so concurrent resizes apply and record in one order. A
    /// failed `apply` records nothing.
    pub async fn update_resources<F>(
        &self,
        id_or_prefix: &str,
        resources: PodResources,
        apply: F,
    ) -> Result<(), SandboxError>
    where
        F: FnOnce(&PodSandbox, &Resources) -> Result<(), SandboxError>,
    {
        resources.validate()?;
        let mut guard = self.store.lock(id_or_prefix).await?;
        let mut pod = (*guard.get()).clone();
        apply(&pod, &resources.pod_cgroup_limits())?;
        pod.resources = Some(resources);
        guard.save(pod)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(shares: u64, quota: i64, period: u64, memory: i64) -> Resources {
        Resources {
            cpu_shares: Some(shares),
            cpu_quota: Some(quota),
            cpu_period: Some(period),
            memory_limit: Some(memory),
            ..Default::default()
        }
    }

    #[test]
    fn the_pod_cgroup_gets_resources_plus_overhead() {
        let r = PodResources {
            overhead: Some(res(102, 10_000, 50_000, 64 << 20)),
            resources: Some(res(1024, 50_000, 100_000, 256 << 20)),
        };
        let limits = r.pod_cgroup_limits();
        assert_eq!(limits.cpu_shares, Some(1126));
        // 10ms per 50ms of overhead is 20ms per 100ms.
        assert_eq!(limits.cpu_quota, Some(70_000));
        assert_eq!(limits.cpu_period, Some(100_000));
        assert_eq!(limits.memory_limit, Some(320 << 20));
    }

    #[test]
    fn unlimited_and_unset_stay_so() {
        let r = PodResources {
            overhead: Some(res(102, 10_000, 100_000, 64 << 20)),
            resources: Some(Resources {
                cpu_quota: Some(-1),
                ..Default::default()
            }),
        };
        let limits = r.pod_cgroup_limits();
        assert_eq!(limits.cpu_quota, Some(-1));
        assert_eq!(limits.memory_limit, None);
        assert_eq!(limits.cpu_shares, None);
        assert_eq!(
            PodResources::default().pod_cgroup_limits(),
            Resources::default()
        );
        // No overhead: the resources as they are.
        let plain = PodResources {
            overhead: None,
            resources: Some(res(2, 1000, 100_000, 4096)),
        };
        assert_eq!(plain.pod_cgroup_limits(), res(2, 1000, 100_000, 4096));
    }

    #[test]
    fn invalid_values_name_their_field() {
        let r = PodResources {
            overhead: Some(Resources {
                cpu_period: Some(5),
                ..Default::default()
            }),
            resources: None,
        };
        let err = r.validate().unwrap_err().to_string();
        assert!(
            err.contains("overhead") && err.contains("cpu_period"),
            "{err}"
        );
    }
}
