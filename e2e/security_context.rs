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

async fn privileged_pod(env: &mut Env, name: &str) -> (String, PodSandboxConfig) {
    env.run_privileged_pod(name).await
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
                "grep -o ' {p}[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null; rm -rf {p}"
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
            seen.push(env.exec_ok(id, &["ls", "/mnt/from-host"]).await);
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
        env.exec_ok(
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

/// Our own bounding set: what "all capabilities" means for ketch, which
/// runs as this test's user.
fn own_bounding_set() -> String {
    status_field(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        "CapBnd",
    )
}

#[tokio::test]
async fn privileged_container_has_everything_ketch_holds() {
    let mut env = Env::start().await;
    let pod = privileged_pod(&mut env, "priv").await;
    let mut config = container_config("priv", &env.busybox(), &["sleep", "1000"]);
    let sc = security(&mut config);
    sc.privileged = true;
    // Sent by kubelet for procMount Default: a privileged container
    // ignores them.
    sc.masked_paths = vec!["/proc/kcore".into()];
    sc.readonly_paths = vec!["/proc/sys".into()];
    let id = env.run_container(&pod, config).await;

    let status = env.exec_ok(&id, &["cat", "/proc/self/status"]).await;
    let own = own_bounding_set();
    for field in ["CapBnd", "CapEff", "CapPrm"] {
        assert_eq!(status_field(&status, field), own, "{field}");
    }
    // A network device in the pod's network namespace: a dummy where the
    // kernel has the driver, else a bridge.
    let kind = if Path::new("/sys/module/dummy").exists() {
        "dummy"
    } else {
        "bridge"
    };
    env.exec_ok(&id, &["ip", "link", "add", "ketch0", "type", kind])
        .await;
    let links = env.exec_ok(&id, &["ip", "link", "show", "ketch0"]).await;
    assert!(links.contains("ketch0"), "{links}");
    // /sys read-write, nothing masked or read-only.
    let mounts = env.exec_ok(&id, &["cat", "/proc/mounts"]).await;
    let sys = mounts.lines().find(|l| l.split(' ').nth(1) == Some("/sys"));
    assert!(sys.is_some_and(|l| l.contains(" rw,")), "{mounts}");
    assert!(
        !mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == Some("/proc/kcore")),
        "{mounts}"
    );
    env.exec_ok(&id, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])
        .await;
    // The host's devices, and the device cgroup open.
    if Path::new("/dev/loop-control").exists() {
        env.exec_ok(&id, &["test", "-c", "/dev/loop-control"]).await;
    }
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn capabilities_add_drop_and_ambient() {
    let mut env = Env::start().await;
    let pod = env.run_pod("caps").await;

    // ALL: the runtime's bounding set, not a fixed list (a host may lack
    // some, e.g. CAP_SYS_RESOURCE).
    let mut config = container_config("all", &env.busybox(), &["sleep", "1000"]);
    security(&mut config).capabilities = Some(Capability {
        add_capabilities: vec!["ALL".into()],
        ..Default::default()
    });
    let all = env.run_container(&pod, config).await;
    let status = env.exec_ok(&all, &["cat", "/proc/self/status"]).await;
    assert_eq!(status_field(&status, "CapEff"), own_bounding_set());

    // drop ALL + add NET_BIND_SERVICE, for a non-root user; and the same
    // raised as ambient, which survives the exec of a non-root program.
    let mut config = container_config("nbs", &env.busybox(), &["sleep", "1000"]);
    let sc = security(&mut config);
    sc.run_as_user = Some(Int64Value { value: 1000 });
    sc.capabilities = Some(Capability {
        add_capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
        drop_capabilities: vec!["all".into()],
        add_ambient_capabilities: vec!["NET_BIND_SERVICE".into()],
    });
    let nbs = env.run_container(&pod, config).await;
    let status = env.exec_ok(&nbs, &["cat", "/proc/self/status"]).await;
    let bit = format!("{:016x}", 1u64 << 10);
    for field in ["CapBnd", "CapPrm", "CapEff", "CapInh", "CapAmb"] {
        assert_eq!(status_field(&status, field), bit, "{field}: {status}");
    }
    // Port 80 as uid 1000.
    env.exec_ok(
        &nbs,
        &[
            "sh",
            "-c",
            "nc -l -p 80 & sleep 0.3; netstat -ltn | grep -q ':80 '",
        ],
    )
    .await;

    // An unknown name is refused and named.
    let mut config = container_config("bogus", &env.busybox(), &["true"]);
    security(&mut config).capabilities = Some(Capability {
        add_capabilities: vec!["CAP_BOGUS".into()],
        ..Default::default()
    });
    let err = env.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("CAP_BOGUS"), "{err:?}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn users_groups_and_supplemental_groups_policy() {
    let mut env = Env::start().await;
    let pod = env.run_pod("users").await;
    let status = env
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(status.features.unwrap().supplemental_groups_policy);

    // www (1000) is a member of `users` (100) in the image's /etc/group.
    for (policy, groups) in [
        (SupplementalGroupsPolicy::Merge, vec![100, 1000, 1234]),
        (SupplementalGroupsPolicy::Strict, vec![1000, 1234]),
    ] {
        let name = format!("{policy:?}").to_lowercase();
        let mut config = container_config(&name, &env.busybox(), &["sleep", "1000"]);
        let sc = security(&mut config);
        sc.run_as_user = Some(Int64Value { value: 1000 });
        sc.supplemental_groups = vec![1234];
        sc.supplemental_groups_policy = policy as i32;
        let id = env.run_container(&pod, config).await;
        let user = env.status(&id).await.user.and_then(|u| u.linux).unwrap();
        let mut reported = user.supplemental_groups.clone();
        reported.sort_unstable();
        assert_eq!((user.uid, user.gid, reported), (1000, 1000, groups.clone()));
        let out = env.exec_ok(&id, &["id", "-G"]).await;
        let mut seen: Vec<i64> = out.split_whitespace().map(|g| g.parse().unwrap()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, groups, "{policy:?}: {out}");
    }

    // run_as_group with run_as_username works; without a user it is refused.
    let mut config = container_config("named", &env.busybox(), &["sleep", "1000"]);
    let sc = security(&mut config);
    sc.run_as_username = "www".into();
    sc.run_as_group = Some(Int64Value { value: 4321 });
    let id = env.run_container(&pod, config).await;
    assert_eq!(env.exec_ok(&id, &["id", "-u"]).await, "1000\n");
    assert_eq!(env.exec_ok(&id, &["id", "-g"]).await, "4321\n");
    let mut config = container_config("nouser", &env.busybox(), &["true"]);
    security(&mut config).run_as_group = Some(Int64Value { value: 4321 });
    let err = env.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("run_as_group is set without run_as_user"),
        "{err:?}"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn masked_and_readonly_paths_as_sent() {
    let mut env = Env::start().await;
    let pod = env.run_pod("masks").await;
    let mut config = container_config("masked", &env.busybox(), &["sleep", "1000"]);
    let sc = security(&mut config);
    sc.masked_paths = vec!["/etc/passwd".into(), "/home".into(), "/proc/kcore".into()];
    sc.readonly_paths = vec!["/tmp".into()];
    let id = env.run_container(&pod, config).await;
    // A file gets /dev/null, a directory an empty read-only tmpfs.
    assert_eq!(env.exec_ok(&id, &["cat", "/etc/passwd"]).await, "");
    assert_eq!(env.exec_ok(&id, &["ls", "-A", "/home"]).await, "");
    let out = env.exec(&id, &["mkdir", "/home/x"], 10).await.unwrap();
    assert_ne!(out.exit_code, 0, "{out:?}");
    let out = env.exec(&id, &["touch", "/tmp/x"], 10).await.unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    // Only what was sent: /proc/sys stays writable here.
    let mounts = env.exec_ok(&id, &["cat", "/proc/mounts"]).await;
    assert!(!mounts.contains(" /proc/sys "), "{mounts}");
    assert!(!mounts.contains(" /proc/keys "), "{mounts}");

    // procMount: Unmasked sends no paths: nothing is masked.
    let config = container_config("unmasked", &env.busybox(), &["sleep", "1000"]);
    let id = env.run_container(&pod, config).await;
    let mounts = env.exec_ok(&id, &["cat", "/proc/mounts"]).await;
    assert!(
        !mounts.contains(" /proc/kcore ") && !mounts.contains(" /proc/sys "),
        "{mounts}"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn recursive_read_only_mounts() {
    let mut env = Env::start().await;
    let status = env
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(status.runtime_handlers.iter().all(|h| {
        h.features
            .as_ref()
            .is_some_and(|f| f.recursive_read_only_mounts)
    }));
    let pod = env.run_pod("rro").await;
    // A host directory with a tmpfs below it.
    let host = PathBuf::from(format!("/var/tmp/ketch-e2e/{}", unique("rro")));
    std::fs::create_dir_all(host.join("sub")).unwrap();
    sh(&format!("mount -t tmpfs tmpfs {}/sub", host.display()));
    let mut ids = Vec::new();
    for (name, rro) in [("plain", false), ("rro", true)] {
        let mut config = container_config(name, &env.busybox(), &["sleep", "1000"]);
        config.mounts = vec![Mount {
            readonly: true,
            recursive_read_only: rro,
            ..cri_mount(&host, "/data", MountPropagation::PropagationPrivate)
        }];
        ids.push(env.run_container(&pod, config).await);
    }
    let plain = env
        .exec(&ids[0], &["touch", "/data/sub/x"], 10)
        .await
        .unwrap();
    assert_eq!(
        plain.exit_code, 0,
        "a plain ro bind leaves submounts writable"
    );
    for path in ["/data/y", "/data/sub/y"] {
        let out = env.exec(&ids[1], &["touch", path], 10).await.unwrap();
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
            "{path}: {out:?}"
        );
    }
    // Refused without readonly and with propagation.
    for (readonly, propagation, wanted) in [
        (
            false,
            MountPropagation::PropagationPrivate,
            "needs readonly",
        ),
        (
            true,
            MountPropagation::PropagationHostToContainer,
            "needs private propagation",
        ),
    ] {
        let mut config = container_config("bad", &env.busybox(), &["true"]);
        config.mounts = vec![Mount {
            readonly,
            recursive_read_only: true,
            ..cri_mount(&host, "/data", propagation)
        }];
        let err = env.create(&pod, config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("/data") && err.message().contains(wanted),
            "{err:?}"
        );
    }
    env.remove_pod(&pod.0).await;
    sh(&format!("umount {p}/sub && rm -rf {p}", p = host.display()));
    env.daemon.assert_clean();
}

#[tokio::test]
async fn privileged_needs_a_privileged_pod_and_bidirectional_a_privileged_container() {
    let mut env = Env::start().await;
    let pod = env.run_pod("unpriv").await;
    let mut config = container_config("priv", &env.busybox(), &["true"]);
    security(&mut config).privileged = true;
    let err = env.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("privileged pod sandbox"), "{err:?}");
    let shared = SharedDir::new("bidi");
    let mut config = container_config("bidi", &env.busybox(), &["true"]);
    config.mounts = vec![cri_mount(
        &shared.path,
        "/mnt",
        MountPropagation::PropagationBidirectional,
    )];
    let err = env.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("Bidirectional"), "{err:?}");
    env.remove_pod(&pod.0).await;
    drop(shared);
    env.daemon.assert_clean();
}

#[tokio::test]
async fn only_namespaced_sysctls() {
    let mut env = Env::start().await;
    for (sysctl, host_network, host_ipc, wanted) in [
        ("vm.swappiness", false, false, "not a namespaced sysctl"),
        ("kernel.domainname", false, false, "not a namespaced sysctl"),
        (
            "net.ipv4.ip_forward",
            true,
            false,
            "node's network namespace",
        ),
        ("kernel.shmmax", false, true, "node's IPC namespace"),
    ] {
        let mut config = pod_config(&unique("sysctl"), &env.log_dir());
        let linux = config.linux.get_or_insert_with(Default::default);
        linux.sysctls = [(sysctl.to_owned(), "1".to_owned())].into();
        let ns = namespace_options(&mut config);
        if host_network {
            ns.network = NamespaceMode::Node as i32;
        }
        if host_ipc {
            ns.ipc = NamespaceMode::Node as i32;
        }
        let err = env
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{sysctl}: {err:?}");
        assert!(
            err.message().contains(sysctl) && err.message().contains(wanted),
            "{err:?}"
        );
    }
    // Namespaced ones are set in the pod's namespaces.
    let mut config = pod_config(&unique("sysctl"), &env.log_dir());
    config.linux.get_or_insert_with(Default::default).sysctls = [
        (
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "100".to_owned(),
        ),
        ("kernel.shm_rmid_forced".to_owned(), "1".to_owned()),
    ]
    .into();
    let pod = env.run_pod_with(config).await;
    let id = env
        .run_container(
            &pod,
            container_config("c", &env.busybox(), &["sleep", "1000"]),
        )
        .await;
    let out = env
        .exec_ok(
            &id,
            &[
                "cat",
                "/proc/sys/net/ipv4/ip_unprivileged_port_start",
                "/proc/sys/kernel/shm_rmid_forced",
            ],
        )
        .await;
    assert_eq!(out, "100\n1\n");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn devices_with_their_permissions() {
    let mut env = Env::start().await;
    let pod = env.run_pod("dev").await;
    let mut config = container_config("dev", &env.busybox(), &["sleep", "1000"]);
    // /dev/loop-control is none of the devices every container may use:
    // only what the rule allows (opening it does nothing).
    config.devices = vec![
        Device {
            container_path: "/dev/lc".into(),
            host_path: "/dev/loop-control".into(),
            permissions: "r".into(),
        },
        Device {
            container_path: "/dev/rw-null".into(),
            host_path: "/dev/null".into(),
            permissions: "rw".into(),
        },
    ];
    let id = env.run_container(&pod, config).await;
    env.exec_ok(&id, &["sh", "-c", ": < /dev/lc"]).await;
    env.exec_ok(&id, &["sh", "-c", "echo x > /dev/rw-null"])
        .await;
    let out = env
        .exec(&id, &["sh", "-c", ": > /dev/lc"], 10)
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0, "write to a read-only device: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not permitted"),
        "{out:?}"
    );
    // A device that is not one is refused, named.
    let mut config = container_config("nodev", &env.busybox(), &["true"]);
    config.devices = vec![Device {
        container_path: "/dev/x".into(),
        host_path: "/etc/hostname".into(),
        permissions: "r".into(),
    }];
    let err = env.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("/etc/hostname"), "{err:?}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}
