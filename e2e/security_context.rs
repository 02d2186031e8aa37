//! Security contexts end to end: privileged containers, capabilities,
//! users and groups, masked and read-only paths, mount propagation,
//! recursive read-only mounts, sysctls, devices, and the refusals of what
//! the CRI forbids (each error's code and message).

use std::path::{Path, PathBuf};
use std::process::Command;

use ketch::cri::api::*;
use tonic::Code;

use crate::harness::cri::{container_config, namespace_options, pod_config, unique};
use crate::harness::env::Env;

/// A pod whose security context is privileged (only such a pod may hold
/// privileged containers).
async fn privileged_pod(env: &mut Env, name: &str) -> (String, PodSandboxConfig) {
    let mut config = pod_config(&unique(name), &env.log_dir());
    if let Some(sc) = config
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
    {
        sc.privileged = true;
    }
    env.run_pod_with(config).await
}

fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The value of a `/proc/<pid>/status` field (`CapBnd`, `CapEff`, ...).
fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

async fn exec_ok(env: &mut Env, id: &str, cmd: &[&str]) -> String {
    let out = env.exec(id, cmd, 20).await.unwrap();
    assert_eq!(
        out.exit_code,
        0,
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(cmd: &str) {
    let status = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(status.success(), "{cmd}");
}

/// A host directory that is its own mount point, shared (a bind mount of
/// itself made `rshared`), as kubelet's pod volume directories are; it is
/// unmounted and removed on drop.
struct SharedDir {
    path: PathBuf,
}

impl SharedDir {
    fn new(tag: &str) -> SharedDir {
        let path = PathBuf::from(format!("/var/tmp/ketch-e2e/{}", unique(tag)));
        std::fs::create_dir_all(&path).unwrap();
        let p = path.display();
        sh(&format!(
            "mount --bind {p} {p} && mount --make-private {p} && mount --make-shared {p}"
        ));
        SharedDir { path }
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let p = self.path.display();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {p}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l; rm -rf {p}"
            ))
            .status();
    }
}

fn cri_mount(host: &Path, container: &str, propagation: MountPropagation) -> Mount {
    Mount {
        host_path: host.display().to_string(),
        container_path: container.to_owned(),
        propagation: propagation as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn mount_propagation_private_host_to_container_and_bidirectional() {
    let mut env = Env::start().await;
    let pod = privileged_pod(&mut env, "prop").await;
    let shared = SharedDir::new("prop");
    let mut ids = Vec::new();
    for (name, propagation) in [
        ("private", MountPropagation::PropagationPrivate),
        ("slave", MountPropagation::PropagationHostToContainer),
        ("shared", MountPropagation::PropagationBidirectional),
    ] {
        let mut config = container_config(name, &env.busybox(), &["sleep", "1000"]);
        config.mounts = vec![cri_mount(&shared.path, "/mnt", propagation)];
        security(&mut config).privileged = true;
        ids.push(env.run_container(&pod, config).await);
    }

    // A mount made on the host after the start.
    let from_host = shared.path.join("from-host");
    std::fs::create_dir_all(&from_host).unwrap();
    sh(&format!("mount -t tmpfs tmpfs {}", from_host.display()));
    std::fs::write(from_host.join("flag"), "x").unwrap();
    let seen: Vec<String> = {
        let mut seen = Vec::new();
        for id in &ids {
            seen.push(exec_ok(&mut env, id, &["ls", "/mnt/from-host"]).await);
        }
        seen
    };
    assert_eq!(seen[0], "", "private: nothing comes in");
    assert_eq!(seen[1], "flag\n", "HostToContainer: host mounts come in");
    assert_eq!(seen[2], "flag\n", "Bidirectional: host mounts come in");

    // Mounts made in each container: only the Bidirectional one's reaches
    // the host.
    for (i, id) in ids.iter().enumerate() {
        let dir = format!("/mnt/from-ctr{i}");
        exec_ok(
            &mut env,
            id,
            &[
                "sh",
                "-c",
                &format!("mkdir -p {dir} && mount -t tmpfs tmpfs {dir} && touch {dir}/mark"),
            ],
        )
        .await;
    }
    for (i, expect) in [false, false, true].into_iter().enumerate() {
        let on_host = shared.path.join(format!("from-ctr{i}/mark")).exists();
        assert_eq!(on_host, expect, "container {i}'s mount on the host");
    }
    // Nothing but the Bidirectional mount's reaches the host: the
    // container's /proc and the like never do.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains("/rootfs/proc "), "{mountinfo}");

    sh(&format!(
        "umount -l {p}/from-host {p}/from-ctr2",
        p = shared.path.display()
    ));
    env.remove_pod(&pod.0).await;
    drop(shared);
    env.daemon.assert_clean();
}

#[tokio::test]
async fn propagation_needs_a_shared_or_slave_source() {
    let mut env = Env::start().await;
    let pod = privileged_pod(&mut env, "prop-bad").await;
    // A directory on a private mount of its own.
    let dir = PathBuf::from(format!("/var/tmp/ketch-e2e/{}", unique("private")));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.display().to_string();
    sh(&format!("mount --bind {p} {p} && mount --make-private {p}"));
    for (propagation, wanted) in [
        (
            MountPropagation::PropagationBidirectional,
            "not a shared mount",
        ),
        (
            MountPropagation::PropagationHostToContainer,
            "not a shared or slave mount",
        ),
    ] {
        let mut config = container_config("c", &env.busybox(), &["true"]);
        config.mounts = vec![cri_mount(&dir, "/mnt", propagation)];
        security(&mut config).privileged = true;
        let err = env.create(&pod, config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(&p) && err.message().contains(wanted),
            "{err:?}"
        );
    }
    sh(&format!("umount {p} && rmdir {p}"));
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}
