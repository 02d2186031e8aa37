//! Pod sandboxes end to end: RunPodSandbox, PodSandboxStatus,
//! ListPodSandbox, StopPodSandbox, RemovePodSandbox against the real
//! daemon, with the namespaces and files checked on the host, restarts,
//! crashes in the middle of RunPodSandbox, and leak checks.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ketch::cri::api::*;
use tonic::Code;

use crate::harness::Daemon;
use crate::harness::crash::crash_at;
use crate::harness::cri::{namespace_options, unique};
use crate::harness::pods::{Client, config, list, mounts_under, remove, run, status, stop};

/// The verbose `info` of a pod, parsed.
async fn pod_info(client: &mut Client, id: &str) -> serde_json::Value {
    let status = status(client, id).await.expect("PodSandboxStatus");
    serde_json::from_str(&status.info["info"]).expect("info is JSON")
}

fn state(status: &PodSandboxStatusResponse) -> PodSandboxState {
    PodSandboxState::try_from(status.status.as_ref().unwrap().state).unwrap()
}

fn pod_dir(daemon: &Daemon, id: &str) -> PathBuf {
    daemon.state_dir.join("pods").join(id)
}

fn record(daemon: &Daemon, id: &str) -> PathBuf {
    daemon.root_dir.join("pods").join(format!("{id}.json"))
}

/// Nothing of the pod is left: no mount, no directory, no record.
fn assert_pod_gone(daemon: &Daemon, id: &str) {
    let dir = pod_dir(daemon, id);
    assert!(
        mounts_under(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_under(&dir)
    );
    assert!(!dir.exists(), "pod dir left: {}", dir.display());
    assert!(!record(daemon, id).exists(), "record left for {id}");
}

fn ns_inode(path: impl AsRef<Path>) -> u64 {
    std::fs::metadata(path).expect("stat namespace").ino()
}

fn nsenter(args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "nsenter {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ns_path(info: &serde_json::Value, kind: &str) -> Option<String> {
    info["namespaces"][kind].as_str().map(str::to_owned)
}

#[tokio::test]
async fn run_status_list_stop_remove() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let name = unique("lifecycle");
    let mut cfg = config(&daemon, &name);
    cfg.annotations.insert("note".into(), "kept".into());
    let before = ketch::clock::now_unix_nanos();
    let id = run(&mut client, cfg.clone()).await;
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    let st = status(&mut client, &id).await.unwrap();
    assert_eq!(state(&st), PodSandboxState::SandboxReady);
    let s = st.status.as_ref().unwrap();
    assert_eq!(s.id, id);
    assert_eq!(s.metadata, cfg.metadata);
    assert!(s.created_at >= before, "created_at in ns");
    assert_eq!(s.labels, cfg.labels);
    assert_eq!(s.annotations["note"], "kept");
    let ip = &s.network.as_ref().unwrap().ip;
    assert!(
        daemon.network.as_ref().unwrap().contains(ip),
        "the pod's IP {ip:?} is on the daemon's network"
    );
    let opts = s.linux.as_ref().unwrap().namespaces.as_ref().unwrap();
    assert_eq!(
        opts.options.as_ref().unwrap().network,
        NamespaceMode::Pod as i32
    );
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert_eq!(info["id"], id.as_str());
    for kind in ["network", "ipc", "uts"] {
        let pin = ns_path(&info, kind).expect("pinned");
        assert!(
            mounts_under(Path::new(&pin)).contains(&pin),
            "{kind} pin mounted"
        );
    }

    let items = list(&mut client, None).await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].id, id);
    assert_eq!(items[0].state, PodSandboxState::SandboxReady as i32);

    stop(&mut client, &id).await.unwrap();
    let st = status(&mut client, &id).await.unwrap();
    assert_eq!(state(&st), PodSandboxState::SandboxNotready);
    assert!(
        mounts_under(&pod_dir(&daemon, &id)).is_empty(),
        "stop releases the pins and shm"
    );
    assert!(
        pod_dir(&daemon, &id).join("resolv.conf").exists(),
        "files stay until remove"
    );
    stop(&mut client, &id).await.expect("stop is idempotent");
    assert_eq!(
        list(&mut client, None).await.len(),
        1,
        "a stopped pod is listed"
    );

    remove(&mut client, &id).await.unwrap();
    let err = status(&mut client, &id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&id), "{}", err.message());
    assert!(list(&mut client, None).await.is_empty());
    assert_pod_gone(&daemon, &id);
    remove(&mut client, &id)
        .await
        .expect("remove is idempotent");
    daemon.assert_clean();
}

#[tokio::test]
async fn metadata_name_namespace_uid_are_required() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let mut cfg = config(&daemon, &unique("meta"));
    cfg.metadata = None;
    let err = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("metadata"), "{}", err.message());

    for field in ["name", "namespace", "uid"] {
        let mut cfg = config(&daemon, &unique("meta"));
        let m = cfg.metadata.as_mut().unwrap();
        match field {
            "name" => m.name.clear(),
            "namespace" => m.namespace.clear(),
            _ => m.uid.clear(),
        }
        let err = client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().contains(&format!("metadata.{field}")),
            "{field}: {}",
            err.message()
        );
    }
    assert!(list(&mut client, None).await.is_empty());
    assert!(
        std::fs::read_dir(daemon.state_dir.join("pods"))
            .unwrap()
            .next()
            .is_none(),
        "nothing made for a rejected pod"
    );
}

#[tokio::test]
async fn duplicate_name_is_already_exists_until_removed() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let cfg = config(&daemon, &unique("dup"));
    let id = run(&mut client, cfg.clone()).await;
    let err = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.message().contains(&id),
        "names the holder: {}",
        err.message()
    );

    // Another attempt is another name.
    let mut next = cfg.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    let id2 = run(&mut client, next).await;

    // Stopping does not free the name; removing does.
    stop(&mut client, &id).await.unwrap();
    let err = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    remove(&mut client, &id).await.unwrap();
    let id3 = run(&mut client, cfg).await;
    assert_ne!(id3, id);
    for id in [id2, id3] {
        remove(&mut client, &id).await.unwrap();
        assert_pod_gone(&daemon, &id);
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn stop_and_remove_of_unknown_ids_succeed_status_is_not_found() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let unknown = "0123456789abcdef".repeat(4);
    stop(&mut client, &unknown).await.unwrap();
    remove(&mut client, &unknown).await.unwrap();
    stop(&mut client, "deadbeef").await.unwrap();
    remove(&mut client, "deadbeef").await.unwrap();
    let err = status(&mut client, &unknown).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&unknown), "{}", err.message());
}

#[tokio::test]
async fn id_prefixes_resolve_and_ambiguous_prefixes_are_refused() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    // 17 pods: two of them must share a first hex digit.
    let mut ids = Vec::new();
    for _ in 0..17 {
        ids.push(run(&mut client, config(&daemon, &unique("prefix"))).await);
    }
    let (a, b) = ids
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            ids[i + 1..]
                .iter()
                .find(|b| b.as_bytes()[0] == a.as_bytes()[0])
                .map(|b| (a.clone(), b.clone()))
        })
        .expect("pigeonhole");
    let shared = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let ambiguous = &a[..shared];
    let err = status(&mut client, ambiguous).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("ambiguous"), "{}", err.message());
    let err = stop(&mut client, ambiguous).await.unwrap_err();
    assert!(
        err.message().contains("ambiguous"),
        "stop refuses too: {}",
        err.message()
    );
    let err = remove(&mut client, ambiguous).await.unwrap_err();
    assert!(
        err.message().contains("ambiguous"),
        "remove refuses too: {}",
        err.message()
    );

    // The shortest prefix unique among all pods resolves.
    let unique_len = |id: &str| {
        (1..=64)
            .find(|n| ids.iter().filter(|o| o.starts_with(&id[..*n])).count() == 1)
            .unwrap()
    };
    for id in &ids {
        let st = status(&mut client, &id[..unique_len(id)]).await.unwrap();
        assert_eq!(&st.status.unwrap().id, id);
    }

    // Stop and remove by prefix: one longer than the part `a` shares with
    // `b` may still be shared with a third pod, so the unique one.
    let short = &a[..unique_len(&a)];
    stop(&mut client, short).await.unwrap();
    assert_eq!(
        state(&status(&mut client, &a).await.unwrap()),
        PodSandboxState::SandboxNotready
    );
    remove(&mut client, short).await.unwrap();
    assert_pod_gone(&daemon, &a);
    for id in ids.iter().filter(|id| **id != a) {
        remove(&mut client, id).await.unwrap();
        assert_pod_gone(&daemon, id);
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn pod_namespaces_are_new_and_files_are_right() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let name = unique("ns");
    let mut cfg = config(&daemon, &name);
    cfg.hostname = "pod-host-x".into();
    cfg.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let id = run(&mut client, cfg).await;
    let info = pod_info(&mut client, &id).await;

    let net = ns_path(&info, "network").unwrap();
    let ipc = ns_path(&info, "ipc").unwrap();
    let uts = ns_path(&info, "uts").unwrap();
    assert_ne!(ns_inode(&net), ns_inode("/proc/self/ns/net"), "a new netns");
    assert_ne!(
        ns_inode(&ipc),
        ns_inode("/proc/self/ns/ipc"),
        "a new ipc ns"
    );
    assert_ne!(
        ns_inode(&uts),
        ns_inode("/proc/self/ns/uts"),
        "a new uts ns"
    );

    let links = nsenter(&[&format!("--net={net}"), "ip", "-o", "link", "show"]);
    let links: Vec<&str> = links.lines().collect();
    assert_eq!(links.len(), 2, "lo and the CNI's eth0: {links:?}");
    assert!(links[0].contains(": lo:"), "{links:?}");
    assert!(links[0].contains(",UP"), "lo is up: {links:?}");
    assert!(links[1].contains(": eth0@"), "{links:?}");
    let hostname = nsenter(&[&format!("--uts={uts}"), "hostname"]);
    assert_eq!(hostname.trim(), "pod-host-x");

    let dir = pod_dir(&daemon, &id);
    assert_eq!(
        std::fs::read_to_string(dir.join("hostname")).unwrap(),
        "pod-host-x\n"
    );
    let hosts = std::fs::read_to_string(dir.join("hosts")).unwrap();
    assert!(hosts.contains("127.0.0.1\tlocalhost"), "{hosts}");
    assert!(hosts.contains("\tpod-host-x\n"), "{hosts}");
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
        "search default.svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );

    // shm: a tmpfs of 64 MiB, mode 1777, nosuid,nodev,noexec.
    let shm = info["shm"].as_str().unwrap().to_owned();
    assert_eq!(Path::new(&shm), dir.join("shm"));
    let line = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(shm.as_str()))
        .map(str::to_owned)
        .expect("shm mounted");
    assert!(line.contains(" - tmpfs "), "{line}");
    for opt in ["nosuid", "nodev", "noexec"] {
        assert!(
            line.split(' ').nth(5).unwrap().contains(opt),
            "{opt}: {line}"
        );
    }
    assert!(line.contains("size=65536k"), "{line}");
    let mode = std::fs::metadata(&shm).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o1777);

    remove(&mut client, &id).await.unwrap();
    assert_pod_gone(&daemon, &id);
    assert!(!Path::new(&net).exists());
    daemon.assert_clean();
}

#[tokio::test]
async fn host_network_and_host_ipc_use_the_nodes() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let mut cfg = config(&daemon, &unique("hostnet"));
    cfg.hostname = "ignored-for-host-network".into();
    let opts = namespace_options(&mut cfg);
    opts.network = NamespaceMode::Node as i32;
    opts.ipc = NamespaceMode::Node as i32;
    opts.pid = NamespaceMode::Node as i32;
    let id = run(&mut client, cfg).await;
    let st = status(&mut client, &id).await.unwrap();
    assert_eq!(state(&st), PodSandboxState::SandboxReady);
    let o = st
        .status
        .unwrap()
        .linux
        .unwrap()
        .namespaces
        .unwrap()
        .options
        .unwrap();
    assert_eq!(o.network, NamespaceMode::Node as i32);
    assert_eq!(o.ipc, NamespaceMode::Node as i32);
    assert_eq!(o.pid, NamespaceMode::Node as i32);
    let info = pod_info(&mut client, &id).await;
    for kind in ["network", "ipc", "uts"] {
        assert!(ns_path(&info, kind).is_none(), "{kind}: the node's");
    }
    assert_eq!(info["shm"], "/dev/shm");
    assert_eq!(info["namespaces"]["pidMode"], "node");
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(info["hostname"], node.as_str());
    let dir = pod_dir(&daemon, &id);
    assert_eq!(
        std::fs::read(dir.join("hosts")).unwrap(),
        std::fs::read("/etc/hosts").unwrap_or_default(),
        "a host-network pod gets the node's hosts file"
    );
    assert_eq!(
        std::fs::read(dir.join("resolv.conf")).unwrap(),
        std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        "no DNS config: the node's resolv.conf"
    );
    assert!(mounts_under(&dir).is_empty(), "nothing pinned");

    // IPC from the node, network of its own.
    let mut cfg = config(&daemon, &unique("hostipc"));
    namespace_options(&mut cfg).ipc = NamespaceMode::Node as i32;
    let id2 = run(&mut client, cfg).await;
    let info2 = pod_info(&mut client, &id2).await;
    assert!(ns_path(&info2, "ipc").is_none());
    assert!(ns_path(&info2, "network").is_some());
    assert_eq!(info2["shm"], "/dev/shm");

    for id in [id, id2] {
        stop(&mut client, &id).await.unwrap();
        remove(&mut client, &id).await.unwrap();
        assert_pod_gone(&daemon, &id);
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn list_filters_by_id_state_and_labels() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let mut ids = Vec::new();
    for (i, tier) in ["web", "web", "db"].iter().enumerate() {
        let mut cfg = config(&daemon, &unique("filter"));
        cfg.labels.insert("tier".into(), tier.to_string());
        cfg.labels.insert("index".into(), i.to_string());
        ids.push(run(&mut client, cfg).await);
    }
    stop(&mut client, &ids[1]).await.unwrap();

    let by_id = list(
        &mut client,
        Some(PodSandboxFilter {
            id: ids[2][..12].to_owned(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        by_id.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&ids[2]]
    );

    let ready = list(
        &mut client,
        Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }),
    )
    .await;
    let mut ready_ids: Vec<_> = ready.iter().map(|p| p.id.clone()).collect();
    ready_ids.sort();
    let mut expected = vec![ids[0].clone(), ids[2].clone()];
    expected.sort();
    assert_eq!(ready_ids, expected);

    let not_ready = list(
        &mut client,
        Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        not_ready.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&ids[1]]
    );

    let web = list(
        &mut client,
        Some(PodSandboxFilter {
            label_selector: [("tier".to_owned(), "web".to_owned())].into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(web.len(), 2);
    // Every label of the selector must match.
    let web0 = list(
        &mut client,
        Some(PodSandboxFilter {
            label_selector: [
                ("tier".to_owned(), "web".to_owned()),
                ("index".to_owned(), "0".to_owned()),
            ]
            .into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(
        web0.iter().map(|p| &p.id).collect::<Vec<_>>(),
        vec![&ids[0]]
    );
    let none = list(
        &mut client,
        Some(PodSandboxFilter {
            label_selector: [("tier".to_owned(), "cache".to_owned())].into(),
            ..Default::default()
        }),
    )
    .await;
    assert!(none.is_empty());
    // All three filters together.
    let web_ready = list(
        &mut client,
        Some(PodSandboxFilter {
            id: ids[1][..10].to_owned(),
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady as i32,
            }),
            label_selector: [("tier".to_owned(), "web".to_owned())].into(),
        }),
    )
    .await;
    assert!(web_ready.is_empty(), "ids[1] is stopped");

    for id in &ids {
        remove(&mut client, id).await.unwrap();
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn pods_survive_a_daemon_crash() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let ready = run(&mut client, config(&daemon, &unique("survive"))).await;
    let stopped = run(&mut client, config(&daemon, &unique("survive"))).await;
    stop(&mut client, &stopped).await.unwrap();
    let info_before = pod_info(&mut client, &ready).await;
    let net = ns_path(&info_before, "network").unwrap();
    let inode = ns_inode(&net);
    let before = list(&mut client, None).await;
    drop(client);

    daemon.kill9();
    daemon.restart().await;
    let mut client = daemon.runtime().await;
    let mut after = list(&mut client, None).await;
    let mut before = before;
    before.sort_by(|a, b| a.id.cmp(&b.id));
    after.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(before, after, "same pods, same states, same metadata");
    assert_eq!(
        state(&status(&mut client, &ready).await.unwrap()),
        PodSandboxState::SandboxReady
    );
    assert_eq!(ns_inode(&net), inode, "the same netns is still pinned");
    assert!(mounts_under(Path::new(&net)).contains(&net));

    // The names are still reserved after the restart.
    let st = status(&mut client, &ready).await.unwrap();
    let meta = st.status.unwrap().metadata.unwrap();
    let mut dup = config(&daemon, &meta.name);
    dup.metadata = Some(meta);
    let err = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(dup),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    for id in [&ready, &stopped] {
        remove(&mut client, id).await.unwrap();
        assert_pod_gone(&daemon, id);
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn pods_whose_namespaces_vanished_come_back_not_ready() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let id = run(&mut client, config(&daemon, &unique("reboot"))).await;
    drop(client);
    daemon.kill9();
    // What a reboot does to the volatile state dir: every mount is gone.
    let dir = pod_dir(&daemon, &id);
    let mut points = mounts_under(&dir);
    assert!(!points.is_empty());
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    daemon.restart().await;
    let mut client = daemon.runtime().await;
    let st = status(&mut client, &id).await.unwrap();
    assert_eq!(state(&st), PodSandboxState::SandboxNotready);
    stop(&mut client, &id).await.unwrap();
    remove(&mut client, &id).await.unwrap();
    assert_pod_gone(&daemon, &id);
    daemon.assert_clean();
}

#[tokio::test]
async fn a_bad_record_does_not_stop_the_daemon() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let id = run(&mut client, config(&daemon, &unique("bad"))).await;
    drop(client);
    daemon.stop().await;
    let bogus = "f".repeat(64);
    std::fs::write(record(&daemon, &bogus), b"{ this is not a record").unwrap();
    daemon.restart().await;
    let mut client = daemon.runtime().await;
    let items = list(&mut client, None).await;
    assert_eq!(items.iter().map(|p| &p.id).collect::<Vec<_>>(), vec![&id]);
    assert!(daemon.log().contains("unreadable pod record"), "reported");
    remove(&mut client, &id).await.unwrap();
    assert_pod_gone(&daemon, &id);
    std::fs::remove_file(record(&daemon, &bogus)).unwrap();
    daemon.assert_clean();
}

#[tokio::test]
async fn a_crash_in_the_middle_of_run_pod_sandbox_leaves_nothing_half_made() {
    let mut daemon = Daemon::start().await;
    for point in [
        "run-pod-after-record",
        "run-pod-after-namespaces",
        "run-pod-after-network",
        "run-pod-before-ready",
    ] {
        let cfg = config(&daemon, &unique("crash"));
        crash_at(&mut daemon, point, cfg.clone()).await;
        let pods = daemon.state_dir.join("pods");
        if point != "run-pod-after-record" {
            assert!(
                !mounts_under(&pods).is_empty(),
                "{point}: the crash left pins behind to clean"
            );
        }
        daemon.restart().await;
        let mut client = daemon.runtime().await;
        assert!(list(&mut client, None).await.is_empty(), "{point}");
        assert!(mounts_under(&pods).is_empty(), "{point}: mounts left");
        assert_eq!(
            std::fs::read_dir(&pods).unwrap().count(),
            0,
            "{point}: dirs left"
        );
        assert_eq!(
            std::fs::read_dir(daemon.root_dir.join("pods"))
                .unwrap()
                .count(),
            0,
            "{point}: records left"
        );
        // The name is free again.
        let id = run(&mut client, cfg).await;
        remove(&mut client, &id).await.unwrap();
        assert_pod_gone(&daemon, &id);
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn fifty_pods_in_parallel() {
    let daemon = Daemon::start().await;
    let client = daemon.runtime().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut client = client.clone();
        let cfg = config(&daemon, &unique("many"));
        tasks.spawn(async move { run(&mut client, cfg).await });
    }
    let mut ids = Vec::new();
    while let Some(id) = tasks.join_next().await {
        ids.push(id.unwrap());
    }
    let mut client = client.clone();
    let items = list(&mut client, None).await;
    assert_eq!(items.len(), 50);
    assert!(
        items
            .iter()
            .all(|p| p.state == PodSandboxState::SandboxReady as i32)
    );
    let mut inodes: Vec<u64> = Vec::new();
    for id in &ids {
        inodes.push(ns_inode(pod_dir(&daemon, id).join("ns/net")));
    }
    inodes.sort();
    inodes.dedup();
    assert_eq!(inodes.len(), 50, "every pod has its own netns");

    for id in ids.clone() {
        let mut client = client.clone();
        tasks.spawn(async move {
            remove(&mut client, &id).await.unwrap();
            id
        });
    }
    while let Some(id) = tasks.join_next().await {
        id.unwrap();
    }
    assert!(list(&mut client, None).await.is_empty());
    for id in &ids {
        assert_pod_gone(&daemon, id);
    }
    daemon.assert_clean();
}
