//! Builders for CRI requests, so tests state only what they care about.

use std::sync::atomic::{AtomicU32, Ordering};

use ketch::cri::api::*;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique within this test process and across parallel processes.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A pod config with unique metadata and the given log directory, with the
/// namespace options kubelet sends for an ordinary pod (PID per container;
/// the CRI's zero value would share one PID namespace across the pod).
pub fn pod_config(name: &str, log_directory: &std::path::Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_owned(),
            uid: unique("uid"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: log_directory.display().to_string(),
        labels: [("app".to_owned(), name.to_owned())].into(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The namespace options of a config made by [`pod_config`].
pub fn namespace_options(cfg: &mut PodSandboxConfig) -> &mut NamespaceOption {
    cfg.linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
        .expect("a pod config with namespace options")
}

/// A container config running `command` in `image`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: [("container".to_owned(), name.to_owned())].into(),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}
