//! Container state kept right through crashes, updates and stops: the
//! image lease taken before the record, a cut-off start that kills only
//! what ketch started, UpdateContainerResources of a created container,
//! real-time stop signals.

use std::process::{Command, Stdio};
use std::time::Duration;

use ketch::cri::api::*;

use crate::harness::DaemonOptions;
use crate::harness::cri::container_config;
use crate::harness::env::Env;
use crate::harness::images::ImageBuilder;

fn crash_at(point: &str) -> DaemonOptions {
    DaemonOptions {
        env: vec![("KETCH_TEST_CRASH_POINT".into(), point.into())],
        ..Default::default()
    }
}

/// Restarts a daemon that a crash point killed, without the crash point.
async fn restart(env: &mut Env) {
    env.daemon.kill9();
    env.daemon.set_env(Vec::new());
    env.daemon.restart().await;
    env.rt = env.daemon.runtime().await;
    env.img = env.daemon.images().await;
}

fn layer_count(env: &Env) -> usize {
    std::fs::read_dir(env.daemon.root_dir.join("layers"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// A crash right after CreateContainer recorded the container: the
/// container already holds its image lease, so removing the image keeps
/// the layers it runs on, and it starts after the restart.
#[tokio::test]
async fn a_container_recorded_before_a_crash_keeps_its_layers() {
    let mut env = Env::start_with(crash_at("create-container-after-record")).await;
    let pod = env.run_pod("lease").await;
    let config = container_config("leased", &env.busybox(), &["sleep", "1000"]);
    assert!(
        env.create(&pod, config).await.is_err(),
        "the daemon died at the crash point"
    );
    restart(&mut env).await;
    let listed = env
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0].id.clone();
    assert_eq!(listed[0].state, ContainerState::ContainerCreated as i32);
    let layers = layer_count(&env);
    assert!(layers > 0);

    let busybox = env.busybox();
    env.remove_image(&busybox).await;
    // Give a garbage collection the time to run, had it anything to take.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(layer_count(&env), layers, "the container's layers stay");
    env.start_container(&id).await.expect("it starts");
    let out = env.exec(&id, &["cat", "/bin/busybox"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(!out.stdout.is_empty());

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// A crash after the lease was taken and before the record: nothing is
/// left, the lease is released at the restart and the name is free.
#[tokio::test]
async fn a_crash_between_lease_and_record_leaves_nothing() {
    let mut env = Env::start_with(crash_at("create-container-after-lease")).await;
    let pod = env.run_pod("lease2").await;
    let config = container_config("victim", &env.busybox(), &["sleep", "1000"]);
    assert!(env.create(&pod, config.clone()).await.is_err());
    restart(&mut env).await;
    let listed = env
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");
    let leases = env.daemon.root_dir.join("leases");
    let left: Vec<_> = std::fs::read_dir(&leases)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "orphan leases: {left:?}");
    let id = env.create(&pod, config).await.expect("the name is free");
    env.start_container(&id).await.expect("and it starts");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// The reconcile of a start cut off by a crash kills the container's
/// monitor, and nothing else that merely mentions the bundle.
#[tokio::test]
async fn a_cut_off_start_spares_processes_that_mention_the_bundle() {
    let mut env = Env::start_with(crash_at("start-container-after-monitor")).await;
    let pod = env.run_pod("spare").await;
    let config = container_config("victim", &env.busybox(), &["sleep", "1000"]);
    let id = env.create(&pod, config).await.expect("create");
    let spec = env
        .daemon
        .root_dir
        .join("containers")
        .join(&id)
        .join("config.json");
    // An operator watching the container's spec.
    let mut watcher = Command::new("tail")
        .arg("-f")
        .arg(&spec)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn tail");
    assert!(env.start_container(&id).await.is_err(), "the daemon died");
    restart(&mut env).await;
    let status = env.status(&id).await;
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    assert_eq!(status.reason, "StartError");
    assert!(
        watcher.try_wait().unwrap().is_none(),
        "the reconcile killed a process that only mentions the bundle"
    );
    watcher.kill().unwrap();
    watcher.wait().unwrap();
    // The monitor it started is gone, with its container.
    let bundle = env.daemon.root_dir.join("containers").join(&id);
    let left = crate::harness::daemon::pids_referencing(&bundle.display().to_string());
    assert!(left.is_empty(), "processes of the bundle left: {left:?}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// The start mark (a file in the state dir) decides a reconcile only
/// beside a record still CREATED: beside a started container it is stale
/// and goes, and the container keeps running.
#[tokio::test]
async fn a_start_mark_fails_only_a_container_left_created() {
    let mut env = Env::start().await;
    let pod = env.run_pod("marks").await;
    let running = container_config("running", &env.busybox(), &["sleep", "1000"]);
    let running = env.create(&pod, running).await.expect("create");
    env.start_container(&running).await.expect("start");
    let created = container_config("created", &env.busybox(), &["sleep", "1000"]);
    let created = env.create(&pod, created).await.expect("create");
    let mark = |id: &str| {
        env.daemon
            .state_dir
            .join("containers")
            .join(id)
            .join("starting")
    };
    let (running_mark, created_mark) = (mark(&running), mark(&created));
    assert!(!running_mark.exists(), "a finished start leaves no mark");
    for m in [&running_mark, &created_mark] {
        std::fs::write(m, b"").unwrap();
    }
    restart(&mut env).await;
    let status = env.status(&running).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);
    let status = env.status(&created).await;
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    assert_eq!(status.reason, "StartError");
    assert!(
        !running_mark.exists() && !created_mark.exists(),
        "marks left"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

fn resources(memory: i64, shares: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        memory_limit_in_bytes: memory,
        cpu_shares: shares,
        ..Default::default()
    }
}

fn reported(status: &ContainerStatus) -> LinuxContainerResources {
    status
        .resources
        .clone()
        .and_then(|r| r.linux)
        .expect("resources reported")
}

/// The memory limit the container's own cgroup holds, read inside: its
/// cgroup namespace has it at the root of /sys/fs/cgroup (v1: the memory
/// hierarchy's `memory.limit_in_bytes`; v2: `memory.max`).
async fn cgroup_memory_limit(env: &mut Env, id: &str) -> Option<i64> {
    let script = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null \
                  || cat /sys/fs/cgroup/memory.max";
    let out = env.exec(id, &["sh", "-c", script], 10).await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// UpdateContainerResources while CREATED changes what ContainerStatus
/// reports and what the container starts with; while RUNNING, its cgroup.
#[tokio::test]
async fn resources_follow_updates_while_created_and_running() {
    let mut env = Env::start().await;
    let pod = env.run_pod("update").await;
    let mut config = container_config("limited", &env.busybox(), &["sleep", "1000"]);
    config.linux = Some(LinuxContainerConfig {
        resources: Some(resources(64 << 20, 512)),
        ..Default::default()
    });
    let id = env.create(&pod, config).await.expect("create");
    assert_eq!(
        reported(&env.status(&id).await).memory_limit_in_bytes,
        64 << 20
    );

    env.rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(resources(96 << 20, 0)),
            ..Default::default()
        })
        .await
        .expect("update a created container");
    let now = reported(&env.status(&id).await);
    assert_eq!(
        now.memory_limit_in_bytes,
        96 << 20,
        "the update is reported"
    );
    assert_eq!(now.cpu_shares, 512, "what the update left unset stays");

    env.start_container(&id).await.expect("start");
    assert_eq!(
        cgroup_memory_limit(&mut env, &id).await,
        Some(96 << 20),
        "the container started with the updated limit"
    );

    env.rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(resources(128 << 20, 0)),
            ..Default::default()
        })
        .await
        .expect("update a running container");
    assert_eq!(
        reported(&env.status(&id).await).memory_limit_in_bytes,
        128 << 20
    );
    assert_eq!(cgroup_memory_limit(&mut env, &id).await, Some(128 << 20));

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// Pushes busybox with `STOPSIGNAL signal` as `repo:latest` and pulls it.
async fn pull_with_stop_signal(env: &mut Env, repo: &str, signal: &str) -> String {
    let image = ImageBuilder::busybox().stop_signal(signal).build();
    image
        .push(&env.registry.client(), repo, Some("latest"))
        .await;
    let reference = format!("{}/{repo}:latest", env.registry.host());
    env.pull(&reference).await;
    reference
}

/// An image's `STOPSIGNAL SIGRTMIN+3` (systemd's) is what StopContainer
/// sends first: the container's handler for it decides the exit code.
#[tokio::test]
async fn a_realtime_stop_signal_reaches_the_container() {
    let mut env = Env::start().await;
    let reference = pull_with_stop_signal(&mut env, "rtstop", "SIGRTMIN+3").await;
    let pod = env.run_pod("rtstop").await;
    let script = crate::harness::env::EXIT_42_ON_SIGRTMIN_3;
    let config = container_config("systemd-like", &reference, &["sh", "-c", script]);
    let id = env.run_container(&pod, config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = env.stop_and_wait(&id, 20).await;
    assert_eq!(
        status.exit_code, 42,
        "the trap ran: SIGRTMIN+3 was sent, not SIGTERM then SIGKILL"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// An image whose STOPSIGNAL names no signal is refused at creation,
/// naming it, instead of being stopped with SIGTERM without a word.
#[tokio::test]
async fn an_unknown_stop_signal_is_refused_at_create() {
    let mut env = Env::start().await;
    let reference = pull_with_stop_signal(&mut env, "badstop", "SIGBOGUS").await;
    let pod = env.run_pod("badstop").await;
    let config = container_config("c", &reference, &["sleep", "1"]);
    let err = env.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("SIGBOGUS"), "{}", err.message());
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// A container of a pod whose PID namespace holder died cannot start:
/// the pod is not ready, and StartContainer says so instead of failing
/// deep in the fork.
#[tokio::test]
async fn a_container_does_not_start_in_a_pod_whose_pause_died() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let mut env = Env::start().await;
    let mut config =
        crate::harness::cri::pod_config(&crate::harness::cri::unique("pausedied"), &env.log_dir());
    let linux = config.linux.get_or_insert_with(Default::default);
    let security = linux.security_context.get_or_insert_with(Default::default);
    security
        .namespace_options
        .get_or_insert_with(Default::default)
        .pid = NamespaceMode::Pod as i32;
    let pod = env.run_pod_with(config).await;
    let pod_id = pod.0.clone();
    let id = env
        .create(
            &pod,
            container_config("late", &env.busybox(), &["sleep", "1000"]),
        )
        .await
        .expect("create");
    let pause = crate::faults::pause_of(&env.daemon, &pod_id).expect("the pod's pause");
    kill(Pid::from_raw(pause), Signal::SIGKILL).unwrap();
    crate::faults::wait_dead(pause).await;

    let err = env.start_container(&id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&pod_id), "{}", err.message());
    assert!(err.message().contains("not ready"), "{}", err.message());
    assert_eq!(
        env.status(&id).await.state,
        ContainerState::ContainerCreated as i32,
        "the container was not touched"
    );
    env.remove_pod(&pod_id).await;
    env.daemon.assert_clean();
}
