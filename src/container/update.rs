//! UpdateContainerResources: new limits for a container. A running
//! container's cgroup changes at once; the record and the bundle's spec
//! change whatever the state, so ContainerStatus reports what is in force
//! and a created container starts with the new limits.

use super::config::ContainerResources;
use super::error::ContainerError;
use super::manager::ContainerManager;
use super::spec;
use super::state::State;
use super::status::Probe;
use crate::task::blocking;

impl ContainerManager {
    pub async fn update_resources(
        &self,
        id: &str,
        update: ContainerResources,
    ) -> Result<(), ContainerError> {
        let mut guard = self.store.lock(id).await?;
        let mut record = (*guard.get()).clone();
        self.refresh(&mut record, Probe::Processes);
        update.cgroup.validate()?;
        let mut resources = record.config.resources.clone().unwrap_or_default();
        resources.merge(&update);
        record.config.resources = Some(resources);

        let cgroup = (record.state == State::Running)
            .then(|| self.open_cgroup(&record))
            .flatten();
        if let (Some(systemd), Some(_)) = (&self.systemd, &cgroup) {
            let v2 = self.cgroup_v2();
            systemd
                .set_limits(
                    &crate::systemd::scope_name(&record.id),
                    crate::systemd::limit_properties(&update.cgroup, v2),
                )
                .await?;
        }
        let (bundle, config) = (self.bundle_dir(&record.id), record.config.clone());
        let runtime = record.runtime.clone().map(|rt| (rt, record.id.clone()));
        blocking(move || {
            let mut spec = spec::load(&bundle)?;
            spec::set_resources(&mut spec, &config)?;
            match (cgroup, runtime) {
                // A container of an external runtime: the runtime applies
                // the spec's new resources (`update --resources -`), so
                // its own state agrees with the cgroup.
                (Some(_), Some((rt, id))) => {
                    let resources = spec
                        .linux()
                        .as_ref()
                        .and_then(|l| l.resources().clone())
                        .unwrap_or_default();
                    rt.update(&id, &resources)
                        .map_err(|source| ContainerError::Runtime { id, source })?;
                }
                (Some(cg), None) => cg.update(&update.cgroup)?,
                (None, _) => {}
            }
            spec::write(&bundle, &spec)?;
            Ok::<_, ContainerError>(())
        })
        .await?;
        guard.save(record)?;
        Ok(())
    }
}
