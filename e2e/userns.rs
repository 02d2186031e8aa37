//! Pods with a user namespace of their own (`hostUsers: false`, CRI
//! `userns_options` mode POD): root inside is an unprivileged ID on the
//! host, the image's layers are shared unchanged through idmapped mounts,
//! volumes are plain binds (files land as the mapped ID, as containerd
//! does) or idmapped when the mount carries ID mappings (files land as the
//! ID the container sees); every refusal with its code; a daemon restart
//! keeps such a pod running; removal leaves nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ketch::cri::api::*;
use tonic::Code;

use crate::harness::cri::{container_config, namespace_options, pod_config, unique};
use crate::harness::env::Env;
use crate::harness::images::{WEB_INDEX_HTML, WEB_PORT};
use crate::harness::stream_client::{SpdySession, spdy_forward};

/// The mapped range of the tests' pods: container 0 is host `HOST_ID`.
const HOST_ID: u32 = 3_000_000;
const LENGTH: u32 = 65536;

fn mapping(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping {
        host_id,
        container_id,
        length,
    }
}

fn pod_userns(uids: Vec<IdMapping>) -> UserNamespace {
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        gids: uids.clone(),
        uids,
    }
}

/// A pod config asking for its own user namespace.
fn userns_pod_config(env: &Env, name: &str) -> PodSandboxConfig {
    let mut config = pod_config(&unique(name), &env.log_dir());
    namespace_options(&mut config).userns_options =
        Some(pod_userns(vec![mapping(0, HOST_ID, LENGTH)]));
    config
}

/// Whether idmapped mounts should work for a daemon whose root dir is
/// `root`: idmapped overlay layers need Linux 5.19, and the layers'
/// filesystem must take idmapped mounts (ext4, xfs, btrfs, tmpfs).
pub(crate) fn idmap_expected(root: &Path) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let fs = nix::sys::statfs::statfs(root).map(|s| s.filesystem_type());
    use nix::sys::statfs::{BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
    let fs_ok = fs.is_ok_and(|t| {
        [
            EXT4_SUPER_MAGIC,
            XFS_SUPER_MAGIC,
            BTRFS_SUPER_MAGIC,
            TMPFS_MAGIC,
        ]
        .contains(&t)
    });
    (major, minor) >= (5, 19) && fs_ok
}

/// Whether the daemon says it runs such pods; if not, the test says it
/// is skipped and why. The test's private dir (0700 as made) becomes
/// 0711 as a node's /run is: the container's root, an unprivileged ID on
/// the host, must traverse it to reach its mount points in the state dir.
async fn supported(env: &mut Env) -> bool {
    std::fs::set_permissions(
        env.daemon.dir.path(),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    let status = env
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner();
    let on = status
        .runtime_handlers
        .iter()
        .any(|h| h.name.is_empty() && h.features.is_some_and(|f| f.user_namespaces));
    if !on {
        eprintln!("skipped: idmapped mounts do not work on this host (user_namespaces false)");
    }
    on
}

/// A `/proc/<pid>/status` field, split into its values.
fn status_ids(pid: i32, field: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test]
async fn root_inside_is_the_mapped_id_outside_and_the_pod_works() {
    let mut env = Env::start().await;
    if !supported(&mut env).await {
        return;
    }
    let config = userns_pod_config(&env, "userns");
    let hostname = config.hostname.clone();
    let pod = env.run_pod_with(config).await;
    let id = env
        .run_container(
            &pod,
            container_config("main", &env.busybox(), &["sleep", "1000"]),
        )
        .await;

    // Inside: root, in a namespace mapping 0 to HOST_ID.
    let uid_map = env.exec_ok(&id, &["cat", "/proc/self/uid_map"]).await;
    assert_eq!(
        words(&uid_map),
        ["0", &HOST_ID.to_string(), &LENGTH.to_string()]
    );
    let gid_map = env.exec_ok(&id, &["cat", "/proc/self/gid_map"]).await;
    assert_eq!(words(&gid_map)[1], HOST_ID.to_string());
    assert_eq!(env.exec_ok(&id, &["id", "-u"]).await.trim(), "0");
    assert_eq!(env.exec_ok(&id, &["id", "-g"]).await.trim(), "0");

    // Outside: the container's process and its exec'd ones are HOST_ID.
    let pid = env.container_pid(&id).await;
    assert_eq!(status_ids(pid, "Uid"), [HOST_ID; 4]);
    assert_eq!(status_ids(pid, "Gid"), [HOST_ID; 4]);

    // The image's files are root's inside, HOST_ID's seen from the host,
    // through the container's root.
    assert_eq!(
        env.exec_ok(&id, &["stat", "-c", "%u:%g", "/bin/busybox"])
            .await
            .trim(),
        "0:0"
    );
    let seen = std::fs::metadata(format!("/proc/{pid}/root/bin/busybox")).unwrap();
    assert_eq!((seen.uid(), seen.gid()), (HOST_ID, HOST_ID));

    // Root may write at / (the upper dir is the mapped root's), and what
    // it writes is HOST_ID's on the host.
    env.exec_ok(&id, &["touch", "/made-by-root"]).await;
    let upper = env
        .daemon
        .root_dir
        .join("containers")
        .join(&id)
        .join("upper/made-by-root");
    assert_eq!(std::fs::metadata(&upper).unwrap().uid(), HOST_ID);

    // The pod's files, /dev/shm, /proc and /sys as a pod needs them.
    assert_eq!(
        env.exec_ok(&id, &["cat", "/etc/hostname"]).await.trim(),
        hostname
    );
    assert_eq!(env.exec_ok(&id, &["hostname"]).await.trim(), hostname);
    env.exec_ok(&id, &["cat", "/etc/hosts", "/etc/resolv.conf"])
        .await;
    env.exec_ok(&id, &["touch", "/dev/shm/x"]).await;
    let nets = env.exec_ok(&id, &["ls", "/sys/class/net"]).await;
    assert!(words(&nets).contains(&"lo".to_owned()), "{nets}");
    let ps = env.exec_ok(&id, &["ps", "-o", "pid,comm"]).await;
    assert!(ps.contains("sleep"), "{ps}");
    let cgroups = env.exec_ok(&id, &["ls", "/sys/fs/cgroup"]).await;
    assert!(
        !cgroups.trim().is_empty(),
        "the cgroup filesystems are mounted"
    );
    // Capabilities are the user namespace's: CAP_CHOWN gives a file to
    // another of its IDs, which is that ID's mapped one on the host.
    env.exec_ok(&id, &["chown", "1000:1000", "/made-by-root"])
        .await;
    let chowned = std::fs::metadata(&upper).unwrap();
    assert_eq!(
        (chowned.uid(), chowned.gid()),
        (HOST_ID + 1000, HOST_ID + 1000)
    );
    let out = env
        .exec(&id, &["chown", &format!("{LENGTH}"), "/made-by-root"], 20)
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0, "an ID outside the mapping is no one's");

    // The log and the stats of such a container.
    let mut cfg = container_config("talks", &env.busybox(), &["sh", "-c", "id -u; id -g"]);
    cfg.log_path = "talks.log".into();
    let talks = env.run_container(&pod, cfg).await;
    let exited = env.wait_exited(&talks).await;
    assert_eq!(exited.exit_code, 0);
    let log = std::fs::read_to_string(Path::new(&pod.1.log_directory).join("talks.log")).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(log.lines().all(|l| l.ends_with(" 0")), "{log}");
    let stats = env
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .expect("stats of a container in a user namespace")
        .into_inner();
    assert!(stats.stats.and_then(|s| s.memory).is_some());

    // PodSandboxStatus reports the namespace as it was asked for.
    let status = env
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.0.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let reported = status
        .status
        .and_then(|s| s.linux)
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .and_then(|o| o.userns_options)
        .unwrap();
    assert_eq!(reported, pod_userns(vec![mapping(0, HOST_ID, LENGTH)]));

    let pod_dir = env.daemon.state_dir.join("pods").join(&pod.0);
    assert!(pod_dir.join("ns/user").exists());
    env.remove_pod(&pod.0).await;
    assert!(
        !pod_dir.exists(),
        "the pod's dir, its pins with it, is gone"
    );
    env.daemon.assert_clean();
}

/// The inode of `/bin/busybox` as seen in the container.
async fn busybox_inode(env: &mut Env, id: &str) -> String {
    env.exec_ok(id, &["stat", "-c", "%i %u", "/bin/busybox"])
        .await
        .trim()
        .to_owned()
}

#[tokio::test]
async fn image_layers_are_shared_with_host_userns_pods_without_a_copy() {
    let mut env = Env::start().await;
    if !supported(&mut env).await {
        return;
    }
    let config = userns_pod_config(&env, "shared-userns");
    let in_userns = env.run_pod_with(config).await;
    let on_host = env.run_pod("shared-host").await;
    let cmd = ["sleep", "1000"];
    let a = env
        .run_container(&in_userns, container_config("a", &env.busybox(), &cmd))
        .await;
    let b = env
        .run_container(&on_host, container_config("b", &env.busybox(), &cmd))
        .await;
    let seen_a = busybox_inode(&mut env, &a).await;
    let seen_b = busybox_inode(&mut env, &b).await;
    assert_eq!(seen_a, seen_b, "same file, same owner as each sees it");

    // The one file on disk, in the layer store, still root's.
    let layers = env.daemon.root_dir.join("layers");
    let on_disk: Vec<PathBuf> = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("bin/busybox"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(on_disk.len(), 1, "one layer holds busybox: {on_disk:?}");
    let meta = std::fs::metadata(&on_disk[0]).unwrap();
    assert_eq!(seen_a, format!("{} 0", meta.ino()));
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "never chowned");

    env.remove_pod(&in_userns.0).await;
    env.remove_pod(&on_host.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn volumes_are_plain_binds_unless_the_mount_carries_id_mappings() {
    let mut env = Env::start().await;
    if !supported(&mut env).await {
        return;
    }
    let base = env.daemon.dir.path().join(unique("volumes"));
    // An emptyDir as kubelet makes it: 0777, root's.
    let plain = base.join("plain");
    let idmapped = base.join("idmapped");
    for dir in [&plain, &idmapped] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    // Root's own directory: only writable through an idmapped mount.
    std::fs::set_permissions(&idmapped, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(idmapped.join("from-host"), "x").unwrap();

    let pod = env.run_pod_with(userns_pod_config(&env, "vol")).await;
    let mut cfg = container_config("v", &env.busybox(), &["sleep", "1000"]);
    cfg.mounts = vec![
        Mount {
            host_path: plain.display().to_string(),
            container_path: "/plain".into(),
            ..Default::default()
        },
        Mount {
            host_path: idmapped.display().to_string(),
            container_path: "/idmapped".into(),
            uid_mappings: vec![mapping(0, HOST_ID, LENGTH)],
            gid_mappings: vec![mapping(0, HOST_ID, LENGTH)],
            ..Default::default()
        },
    ];
    let id = env.run_container(&pod, cfg).await;

    env.exec_ok(&id, &["touch", "/plain/written"]).await;
    let plain_file = std::fs::metadata(plain.join("written")).unwrap();
    assert_eq!(
        (plain_file.uid(), plain_file.gid()),
        (HOST_ID, HOST_ID),
        "a plain bind: the mapped ID on the host"
    );

    assert_eq!(
        env.exec_ok(&id, &["stat", "-c", "%u", "/idmapped/from-host"])
            .await
            .trim(),
        "0",
        "the host's root file is the container root's"
    );
    env.exec_ok(&id, &["touch", "/idmapped/written"]).await;
    let idmapped_file = std::fs::metadata(idmapped.join("written")).unwrap();
    assert_eq!(
        (idmapped_file.uid(), idmapped_file.gid()),
        (0, 0),
        "an idmapped mount: the ID the container sees"
    );

    // Unbalanced mappings are refused, naming the mount.
    let mut bad = container_config("bad", &env.busybox(), &["true"]);
    bad.mounts = vec![Mount {
        host_path: plain.display().to_string(),
        container_path: "/bad".into(),
        uid_mappings: vec![mapping(0, HOST_ID, LENGTH)],
        ..Default::default()
    }];
    let err = env.create(&pod, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("\"/bad\""), "{}", err.message());

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn refusals_name_the_problem_with_their_code() {
    let mut env = Env::start().await;
    let cases: Vec<(&str, UserNamespace, Option<NamespaceMode>, &str)> = vec![
        (
            "two mappings",
            pod_userns(vec![
                mapping(0, HOST_ID, LENGTH),
                mapping(0, HOST_ID + LENGTH, LENGTH),
            ]),
            None,
            "exactly one mapping, got 2",
        ),
        (
            "0 unmapped",
            pod_userns(vec![mapping(1, HOST_ID, LENGTH)]),
            None,
            "container ID 0 is not mapped",
        ),
        (
            "CONTAINER",
            UserNamespace {
                mode: NamespaceMode::Container as i32,
                ..Default::default()
            },
            None,
            "CONTAINER is not supported",
        ),
        (
            "TARGET",
            UserNamespace {
                mode: NamespaceMode::Target as i32,
                ..Default::default()
            },
            None,
            "TARGET is not supported",
        ),
        (
            "NODE with mappings",
            UserNamespace {
                mode: NamespaceMode::Node as i32,
                uids: vec![mapping(0, HOST_ID, LENGTH)],
                gids: vec![mapping(0, HOST_ID, LENGTH)],
            },
            None,
            "not allowed with mode NODE",
        ),
        (
            "host network",
            pod_userns(vec![mapping(0, HOST_ID, LENGTH)]),
            Some(NamespaceMode::Node),
            "namespace_options.network: NODE cannot be combined",
        ),
    ];
    for (what, userns, network, expected) in cases {
        let mut config = pod_config(&unique("refused"), &env.log_dir());
        let ns = namespace_options(&mut config);
        ns.userns_options = Some(userns);
        if let Some(mode) = network {
            ns.network = mode as i32;
        }
        let err = env
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(expected),
            "{what}: {}",
            err.message()
        );
    }
    // NODE without mappings is the node's user namespace.
    let mut config = pod_config(&unique("node"), &env.log_dir());
    namespace_options(&mut config).userns_options = Some(UserNamespace {
        mode: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let pod = env.run_pod_with(config).await;
    let id = env
        .run_container(
            &pod,
            container_config("n", &env.busybox(), &["sleep", "1000"]),
        )
        .await;
    let host_map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert_eq!(
        words(&env.exec_ok(&id, &["cat", "/proc/self/uid_map"]).await),
        words(&host_map)
    );
    env.remove_pod(&pod.0).await;
    let listed = env.pods().await;
    assert!(listed.is_empty(), "no half-made pod: {listed:?}");
    env.daemon.assert_clean();
}

#[tokio::test]
async fn a_daemon_restart_keeps_userns_pods_running_and_usable() {
    let mut env = Env::start().await;
    if !supported(&mut env).await {
        return;
    }
    // A shared PID namespace too: its holder must be in the pod's user
    // namespace for the containers to join it.
    let mut config = userns_pod_config(&env, "restart");
    namespace_options(&mut config).pid = NamespaceMode::Pod as i32;
    let pod = env.run_pod_with(config).await;
    let id = env
        .run_container(
            &pod,
            container_config("r", &env.busybox(), &["sleep", "1000"]),
        )
        .await;
    let ps = env.exec_ok(&id, &["ps", "-o", "pid,comm"]).await;
    assert!(
        ps.lines()
            .any(|l| words(l) == ["1", "ketch-shim"] || words(l) == ["1", "ketch"]),
        "{ps}"
    );
    let pid = env.container_pid(&id).await;

    env.daemon.kill9();
    env.daemon.restart().await;
    env.rt = env.daemon.runtime().await;

    let status = env.status(&id).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);
    assert_eq!(env.container_pid(&id).await, pid);
    assert_eq!(env.exec_ok(&id, &["id", "-u"]).await.trim(), "0");
    assert_eq!(status_ids(pid, "Uid")[0], HOST_ID);
    // A new container after the restart joins the same namespaces.
    let second = env
        .run_container(
            &pod,
            container_config("after", &env.busybox(), &["sleep", "1000"]),
        )
        .await;
    let second_pid = env.container_pid(&second).await;
    for ns in ["user", "net", "pid"] {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/{second_pid}/ns/{ns}")).unwrap(),
            "{ns}"
        );
    }
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn port_forward_and_attach_reach_a_userns_pod() {
    let mut env = Env::start().await;
    if !supported(&mut env).await {
        return;
    }
    let web = env.web();
    env.pull(&web).await;
    let pod = env.run_pod_with(userns_pod_config(&env, "stream")).await;
    // httpd binds port 80 as the user namespace's root, which owns the
    // pod's netns.
    env.run_container(&pod, container_config("httpd", &web, &[]))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let reply = loop {
        let url = env
            .port_forward_url(&pod.0, &[i32::from(WEB_PORT)])
            .await
            .unwrap();
        let (reply, _) = spdy_forward(&url, WEB_PORT, b"GET / HTTP/1.0\r\n\r\n").await;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        if reply.starts_with("HTTP/1") || std::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with(WEB_INDEX_HTML), "{reply}");

    let mut config = container_config(
        "reader",
        &env.busybox(),
        &["sh", "-c", "while read l; do echo got $l $(id -u); done"],
    );
    config.stdin = true;
    let reader = env.run_container(&pod, config).await;
    let url = env
        .rt
        .attach(AttachRequest {
            container_id: reader.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut session = SpdySession::open(&url, true, true, true, false).await;
    session.send_stdin(b"hello\n").await;
    session.stdout().read_until("got hello 0\n", 10).await;
    drop(session);
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}
