//! The manager in-process, on real namespaces and mounts under a temp dir
//! (needs root): the container hooks, `lock_ready`, and the restart
//! reconcile on hand-made leftovers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::*;
use crate::sandbox::record::PodNamespaces;
use crate::sandbox::recover::Recovery;

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    host: HostFiles,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let host = HostFiles {
        hosts: base.join("etc-hosts"),
        resolv_conf: base.join("etc-resolv.conf"),
    };
    std::fs::write(&host.hosts, "127.0.0.1 node\n").unwrap();
    std::fs::write(&host.resolv_conf, "nameserver 192.0.2.53\n").unwrap();
    Dirs {
        root: base.join("root"),
        state: base.join("run"),
        host,
        _tmp: tmp,
    }
}

fn manager(d: &Dirs) -> SandboxManager {
    SandboxManager::open(&d.root, &d.state)
        .unwrap()
        .with_host_files(d.host.clone())
}

fn config(name: &str) -> PodConfig {
    PodConfig {
        metadata: PodMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        },
        hostname: name.into(),
        log_directory: String::new(),
        dns: None,
        port_mappings: Vec::new(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        runtime_handler: String::new(),
        linux: LinuxPodConfig::default(),
    }
}

/// Records the calls the manager makes; fails removal when told to.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    fail_remove: Mutex<bool>,
}

#[async_trait]
impl PodContainers for Recorder {
    async fn stop_all(&self, pod_id: &str) -> Result<(), HookError> {
        self.calls.lock().unwrap().push(format!("stop {pod_id}"));
        Ok(())
    }

    async fn remove_all(&self, pod_id: &str) -> Result<(), HookError> {
        self.calls.lock().unwrap().push(format!("remove {pod_id}"));
        if *self.fail_remove.lock().unwrap() {
            return Err("a container refused to go".into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn container_hooks_run_on_stop_and_remove_and_a_failure_keeps_the_pod() {
    if !crate::testing::root_or_skip("makes and pins pod namespaces") {
        return;
    }
    let d = dirs();
    let m = manager(&d);
    let hooks = Arc::new(Recorder::default());
    m.set_container_hooks(hooks.clone()).unwrap();
    assert!(matches!(
        m.set_container_hooks(hooks.clone()),
        Err(SandboxError::HooksAlreadySet)
    ));
    let pod = m.run(config("hooked")).await.unwrap();
    let id = pod.id.clone();

    m.stop(&id).await.unwrap();
    assert_eq!(*hooks.calls.lock().unwrap(), vec![format!("stop {id}")]);

    *hooks.fail_remove.lock().unwrap() = true;
    let e = m.remove(&id).await.unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(m.get(&id).is_ok(), "the pod stays while its containers do");
    assert!(pod.dir.exists());

    *hooks.fail_remove.lock().unwrap() = false;
    m.remove(&id).await.unwrap();
    assert!(m.get(&id).unwrap_err().to_string().contains(&id));
    assert!(!pod.dir.exists());
    assert!(mounts::mount_points_under(&d.state).unwrap().is_empty());
}

#[tokio::test]
async fn lock_ready_holds_stop_off_and_refuses_stopped_pods() {
    if !crate::testing::root_or_skip("makes and pins pod namespaces") {
        return;
    }
    let d = dirs();
    let m = Arc::new(manager(&d));
    let pod = m.run(config("locked")).await.unwrap();
    let ready = m.lock_ready(&pod.id[..6]).await.unwrap();
    assert_eq!(ready.pod().id, pod.id);

    let stopper = {
        let m = m.clone();
        let id = pod.id.clone();
        tokio::spawn(async move { m.stop(&id).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(!stopper.is_finished(), "stop waits for the ready lock");
    assert!(m.get(&pod.id).unwrap().is_ready(), "readers do not wait");
    drop(ready);
    stopper.await.unwrap().unwrap();

    assert!(matches!(
        m.lock_ready(&pod.id).await,
        Err(SandboxError::NotReady { .. })
    ));
    m.remove(&pod.id).await.unwrap();
}

#[tokio::test]
async fn node_files_are_copied_without_dns_config() {
    if !crate::testing::root_or_skip("makes and pins pod namespaces") {
        return;
    }
    let d = dirs();
    let m = manager(&d);
    let pod = m.run(config("copies")).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(pod.resolv_conf_path()).unwrap(),
        "nameserver 192.0.2.53\n"
    );
    assert!(
        std::fs::read_to_string(pod.hosts_path())
            .unwrap()
            .contains("127.0.1.1\tcopies\n")
    );
    m.remove(&pod.id).await.unwrap();
}

#[tokio::test]
async fn unsupported_requests_are_refused_before_anything_is_made() {
    let d = dirs();
    let m = manager(&d);
    let mut c = config("handler");
    c.runtime_handler = "kata".into();
    let e = m.run(c).await.unwrap_err().to_string();
    assert!(e.contains("runtime_handler") && e.contains("kata"), "{e}");
    let mut c = config("target");
    c.linux.namespaces.network = NamespaceMode::Target;
    let e = m.run(c).await.unwrap_err().to_string();
    assert!(e.contains("namespace_options.network"), "{e}");
    let mut c = config("longname");
    c.hostname = "h".repeat(65);
    let e = m.run(c).await.unwrap_err().to_string();
    assert!(e.contains("hostname"), "{e}");
    assert_eq!(std::fs::read_dir(m.pods_dir()).unwrap().count(), 0);
    assert!(
        m.store
            .name_holder("handler_default_uid-handler_0")
            .is_none()
    );
}

#[tokio::test]
async fn recover_cleans_half_made_pods_and_stray_dirs_and_keeps_the_rest() {
    if !crate::testing::root_or_skip("makes and pins pod namespaces") {
        return;
    }
    let d = dirs();
    let first = manager(&d);
    let whole = first.run(config("whole")).await.unwrap();
    let broken = first.run(config("broken")).await.unwrap();
    let stopped = first.run(config("stopped")).await.unwrap();
    first.stop(&stopped.id).await.unwrap();
    drop(first);

    // A pod whose pins vanished, as after a reboot.
    mounts::unmount_all_under(&broken.dir).unwrap();
    // A RunPodSandbox interrupted after it pinned namespaces.
    let half_dir = d.state.join("pods").join("a".repeat(64));
    let half = PodSandbox {
        pid_holder: None,
        resources: None,
        id: "a".repeat(64),
        name: config("half").reservation_name(),
        config: config("half"),
        state: PodState::Creating,
        created_at: 1,
        hostname: "half".into(),
        dir: half_dir.clone(),
        namespaces: PodNamespaces {
            net: Some(half_dir.join("ns/net")),
            ..Default::default()
        },
        shm: half_dir.join("shm"),
        network: None,
    };
    std::fs::create_dir_all(half_dir.join("ns")).unwrap();
    namespaces::create_pinned(namespaces::PinRequest {
        dir: half_dir.join("ns"),
        net: true,
        ipc: false,
        uts_hostname: None,
        userns: None,
    })
    .unwrap();
    files::mount_shm(&half.shm).unwrap();
    let store: Store<PodSandbox> = Store::open(d.root.join("pods"), KIND).unwrap();
    store.persist(&half).unwrap();
    // A directory nobody accounts for, with a mount in it.
    let stray = d.state.join("pods").join("b".repeat(64));
    std::fs::create_dir_all(&stray).unwrap();
    files::mount_shm(&stray.join("shm")).unwrap();
    // A record nobody can read.
    std::fs::write(
        d.root.join("pods").join(format!("{}.json", "c".repeat(64))),
        b"[",
    )
    .unwrap();

    let m = manager(&d);
    let report = m.recover().await.unwrap();
    assert_eq!(
        report,
        Recovery {
            ready: 1,
            not_ready: 2,
            cleaned: 2,
            skipped: 1
        }
    );
    assert!(m.get(&whole.id).unwrap().is_ready());
    assert_eq!(m.get(&broken.id).unwrap().state, PodState::NotReady);
    assert_eq!(m.get(&stopped.id).unwrap().state, PodState::NotReady);
    assert!(m.get(&half.id).is_err());
    assert!(!half_dir.exists() && !stray.exists());
    assert!(!store.record_path(&half.id).exists());
    // Names: kept for adopted pods, free for the cleaned one.
    assert!(m.run(config("whole")).await.is_err());
    let again = m.run(config("half")).await.unwrap();

    for id in [&whole.id, &broken.id, &stopped.id, &again.id] {
        m.remove(id).await.unwrap();
    }
    assert!(mounts::mount_points_under(&d.state).unwrap().is_empty());
}

#[tokio::test]
async fn names_that_would_escape_a_path_are_refused_naming_the_field() {
    let d = dirs();
    let m = manager(&d);
    type Spoil = fn(&mut PodConfig);
    let cases: [(&str, Spoil); 6] = [
        ("metadata.name", |c| c.metadata.name = "..".into()),
        ("metadata.name", |c| c.metadata.name = "a/../../b".into()),
        ("metadata.name", |c| c.metadata.name = "a\0b".into()),
        ("metadata.namespace", |c| {
            c.metadata.namespace = "../..".into()
        }),
        ("metadata.uid", |c| c.metadata.uid = "../../../etc".into()),
        ("log_directory", |c| c.log_directory = "/etc".into()),
    ];
    for (field, spoil) in cases {
        let mut cfg = config("refused");
        spoil(&mut cfg);
        match m.run(cfg).await {
            Err(SandboxError::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert!(m.list(&PodFilter::default()).is_empty(), "nothing made");
}
