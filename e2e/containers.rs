//! Containers end to end: lifecycle, CRI logs, ExecSync, start errors, bad
//! input, image config, prefixes, crash survival, many pods at once.

use std::time::{Duration, Instant};

use ketch::cri::api::*;
use tonic::Code;

use crate::harness::DaemonOptions;
use crate::harness::cri::{container_config, pod_config, unique};
use crate::harness::env::Env;
use crate::harness::images::CONFIGURED_OUTPUT;

impl Env {
    /// A busybox container running `command`, started.
    async fn run(
        &mut self,
        pod: &(String, PodSandboxConfig),
        name: &str,
        command: &[&str],
    ) -> String {
        let config = container_config(name, &self.busybox(), command);
        self.run_container(pod, config).await
    }
}

/// The lines of a CRI log: (stream, tag, content).
fn log_lines(path: &str) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let ts = parts.next().unwrap();
            assert!(
                ts.contains('T') && ts.ends_with('Z'),
                "timestamp {ts:?} in {line:?}"
            );
            (
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
                parts.next().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn container_lifecycle_with_logs() {
    let mut env = Env::start().await;
    let pod = env.run_pod("life").await;
    let id = env
        .run(
            &pod,
            "echo",
            &["sh", "-c", "echo hello; echo oops >&2; printf tail"],
        )
        .await;
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 0);
    assert_eq!(status.reason, "Completed");
    assert!(status.started_at > 0 && status.finished_at >= status.started_at);
    assert_eq!(status.image_ref, env.images.busybox.id());
    let lines = log_lines(&status.log_path);
    assert!(
        lines.contains(&("stdout".into(), "F".into(), "hello".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stderr".into(), "F".into(), "oops".into())),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("stdout".into(), "F".into(), "tail".into())),
        "{lines:?}"
    );

    // Listed with its pod, by state and label.
    let list = env
        .rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.0.clone(),
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);

    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    let err = env
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn stop_running_container_and_exec() {
    let mut env = Env::start().await;
    let pod = env.run_pod("stop").await;
    let id = env.run(&pod, "sleeper", &["sleep", "1000"]).await;
    let status = env.status(&id).await;
    assert_eq!(status.state, ContainerState::ContainerRunning as i32);

    let out = env.exec(&id, &["echo", "hi"], 10).await.unwrap();
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.exit_code, 0);
    let out = env
        .exec(&id, &["sh", "-c", "echo err >&2; exit 3"], 10)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stderr, b"err\n");
    // The container's own PID namespace: sleep is PID 1.
    let out = env
        .exec(&id, &["cat", "/proc/1/cmdline"], 10)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"sleep\x001000\x00");
    let err = env.exec(&id, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("timed out"), "{err:?}");

    // By a unique prefix of its ID.
    let short = &id[..12];
    assert_eq!(env.status(short).await.id, id);

    // PID 1 of its namespace ignores SIGTERM without a handler: the
    // timeout's SIGKILL ends it.
    let started = Instant::now();
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    let status = env.status(&id).await;
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 137, "killed by SIGKILL");
    assert_eq!(status.reason, "Error");

    // One that handles SIGTERM stops at once with its own code.
    let trapper = env
        .run(
            &pod,
            "trapper",
            &[
                "sh",
                "-c",
                "trap 'exit 42' TERM; while true; do sleep 0.1; done",
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    env.rt
        .stop_container(StopContainerRequest {
            container_id: trapper.clone(),
            timeout: 10,
        })
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SIGTERM suffices"
    );
    assert_eq!(env.status(&trapper).await.exit_code, 42);
    // Stop again, and on unknown IDs: fine.
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    let err = env.exec(&id, &["true"], 5).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn start_errors_are_reported_and_leave_nothing() {
    let mut env = Env::start().await;
    let pod = env.run_pod("bad").await;
    let config = container_config("nope", &env.busybox(), &["/bin/nope"]);
    let id = env.create(&pod, config).await.unwrap();
    let err = env.start_container(&id).await.unwrap_err();
    assert!(err.message().contains("/bin/nope"), "{err:?}");
    let status = env.status(&id).await;
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    assert_eq!(status.reason, "StartError");
    assert!(status.message.contains("/bin/nope"), "{status:?}");
    // Starting it again is a state error.
    let err = env.start_container(&id).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let mut config = container_config("badcwd", &env.busybox(), &["true"]);
    config.working_dir = "/etc/passwd".into();
    let id = env.create(&pod, config).await.unwrap();
    let err = env.start_container(&id).await.unwrap_err();
    assert!(err.message().contains("/etc/passwd"), "{err:?}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let mut env = Env::start().await;
    let pod = env.run_pod("input").await;
    let busybox = env.busybox();

    let err = env
        .create(
            &("0".repeat(64), pod.1.clone()),
            container_config("x", &busybox, &["true"]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let mut no_meta = container_config("x", &busybox, &["true"]);
    no_meta.metadata = None;
    let err = env.create(&pod, no_meta).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    let err = env
        .create(
            &pod,
            container_config("x", "127.0.0.1:1/not/there:1", &["true"]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("127.0.0.1:1/not/there:1"), "{err:?}");

    let mut mount = container_config("m", &busybox, &["true"]);
    mount.mounts.push(Mount {
        container_path: "/data".into(),
        host_path: "/nonexistent/ketch-e2e".into(),
        ..Default::default()
    });
    let err = env.create(&pod, mount).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("/nonexistent/ketch-e2e"), "{err:?}");

    let first = env
        .create(&pod, container_config("dup", &busybox, &["true"]))
        .await
        .unwrap();
    let err = env
        .create(&pod, container_config("dup", &busybox, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains(&first), "names the holder: {err:?}");

    for call in ["start", "status", "remove", "stop", "exec"] {
        let result = match call {
            "start" => env.start_container("").await,
            "status" => env
                .rt
                .container_status(ContainerStatusRequest::default())
                .await
                .map(|_| ()),
            "remove" => env
                .rt
                .remove_container(RemoveContainerRequest::default())
                .await
                .map(|_| ()),
            "stop" => env
                .rt
                .stop_container(StopContainerRequest::default())
                .await
                .map(|_| ()),
            _ => env.exec("", &["true"], 1).await.map(|_| ()),
        };
        assert_eq!(
            result.unwrap_err().code(),
            Code::InvalidArgument,
            "{call} with empty ID"
        );
    }
    let unknown = "f".repeat(64);
    assert_eq!(
        env.start_container(&unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    env.rt
        .stop_container(StopContainerRequest {
            container_id: unknown.clone(),
            timeout: 0,
        })
        .await
        .expect("stop of an unknown container is fine");
    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: unknown.clone(),
        })
        .await
        .expect("remove of an unknown container is fine");

    // A stopped pod takes no new containers.
    env.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
    let err = env
        .create(&pod, container_config("late", &busybox, &["true"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn image_config_user_workdir_env_entrypoint() {
    let mut env = Env::start().await;
    let configured = env.images.configured.reference.clone();
    env.pull(&configured).await;
    let pod = env.run_pod("conf").await;
    let id = env
        .run_container(&pod, container_config("conf", &configured, &[]))
        .await;
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    let lines = log_lines(&status.log_path);
    let text: String = lines.iter().map(|l| format!("{}\n", l.2)).collect();
    assert_eq!(text, CONFIGURED_OUTPUT);

    // A long-running one: uid from USER, cwd created, env merged.
    let mut config = container_config("conf2", &configured, &["sleep", "1000"]);
    config.envs.push(KeyValue {
        key: "GREETING".into(),
        value: "overridden".into(),
    });
    let id = env.create(&pod, config).await.unwrap();
    env.start_container(&id).await.unwrap();
    let out = env
        .exec(
            &id,
            &["sh", "-c", "id -u; id -g; pwd; echo $GREETING; hostname"],
            10,
        )
        .await
        .unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let expected_host = pod.1.hostname.clone();
    assert_eq!(
        out,
        format!("1000\n1000\n/work\noverridden\n{expected_host}\n")
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn containers_survive_a_daemon_crash() {
    let mut env = Env::start().await;
    let pod = env.run_pod("crash").await;
    let ticker = env
        .run(
            &pod,
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done",
            ],
        )
        .await;
    let short = env
        .run(&pod, "short", &["sh", "-c", "sleep 1; exit 7"])
        .await;
    let before = env.status(&ticker).await;
    env.daemon.kill9();
    let lines_at_kill = log_lines(&before.log_path).len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let lines_while_down = log_lines(&before.log_path).len();
    assert!(
        lines_while_down > lines_at_kill,
        "the container kept logging while ketch was down"
    );
    env.daemon.restart().await;
    env.rt = env.daemon.runtime().await;
    let after = env.status(&ticker).await;
    assert_eq!(after.state, ContainerState::ContainerRunning as i32);
    assert_eq!(after.started_at, before.started_at);
    let out = env
        .exec(&ticker, &["echo", "still here"], 10)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"still here\n");
    let short_status = env.status(&short).await;
    assert_eq!(short_status.state, ContainerState::ContainerExited as i32);
    assert_eq!(short_status.exit_code, 7);
    assert!(short_status.finished_at > 0);
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn reopen_log_loses_no_line() {
    let mut env = Env::start().await;
    let pod = env.run_pod("rotate").await;
    let id = env
        .run(
            &pod,
            "rot",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.01; done",
            ],
        )
        .await;
    let log = env.status(&id).await.log_path;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = format!("{log}.1");
    std::fs::rename(&log, &rotated).unwrap();
    env.rt
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 5,
        })
        .await
        .unwrap();
    let mut numbers: Vec<u64> = log_lines(&rotated)
        .into_iter()
        .chain(log_lines(&log))
        .filter_map(|(_, _, c)| c.strip_prefix("line ").and_then(|n| n.parse().ok()))
        .collect();
    assert!(log_lines(&log).len() > 3, "the new file is written");
    let n = numbers.len() as u64;
    numbers.dedup();
    assert_eq!(
        numbers,
        (0..n).collect::<Vec<_>>(),
        "no line lost or repeated"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn fifty_pods_in_parallel() {
    let env = Env::start().await;
    let busybox = env.busybox();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut rt = env.daemon.runtime().await;
        let log_dir = env.log_dir();
        let busybox = busybox.clone();
        tasks.push(tokio::spawn(async move {
            let config = pod_config(&unique(&format!("many{i}")), &log_dir);
            let pod = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap()
                .into_inner()
                .pod_sandbox_id;
            let id = rt
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.clone(),
                    config: Some(container_config("c", &busybox, &["sleep", "1000"])),
                    sandbox_config: Some(config),
                })
                .await
                .unwrap()
                .into_inner()
                .container_id;
            rt.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap();
            (pod, id)
        }));
    }
    let mut pods = Vec::new();
    for t in tasks {
        pods.push(t.await.unwrap());
    }
    let mut rt = env.daemon.runtime().await;
    let running = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(running.len(), 50);
    let mut removals = Vec::new();
    for (pod, _) in pods {
        let mut rt = env.daemon.runtime().await;
        removals.push(tokio::spawn(async move {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.clone(),
            })
            .await
            .unwrap();
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .unwrap();
        }));
    }
    for r in removals {
        r.await.unwrap();
    }
    let left = rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "removing a pod removes its containers");
    env.daemon.assert_clean();
}

#[tokio::test]
async fn pod_shared_pid_namespace() {
    let mut env = Env::start().await;
    let mut config = pod_config(&unique("sharedpid"), &env.log_dir());
    config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let pod_id = env
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let pod = (pod_id.clone(), config);
    let a = env.run(&pod, "a", &["sleep", "1000"]).await;
    let b = env.run(&pod, "b", &["sleep", "2000"]).await;
    // PID 1 is the pod's pause, and each container sees the other.
    let out = env.exec(&b, &["cat", "/proc/1/cmdline"], 10).await.unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("pause"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = env.exec(&a, &["ps", "-o", "args"], 10).await.unwrap();
    let ps = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        ps.contains("sleep 1000") && ps.contains("sleep 2000"),
        "{ps}"
    );
    // Stopping the pod ends the pause and every process in the namespace.
    env.remove_pod(&pod_id).await;
    env.daemon.assert_clean();
}

/// kill -9 in the middle of CreateContainer and StartContainer: after a
/// restart nothing is left half made and the names are free again.
#[tokio::test]
async fn crash_mid_create_and_start_leaves_nothing_half() {
    for point in [
        "create-container-before-record",
        "start-container-before-monitor",
        "start-container-after-monitor",
    ] {
        let mut env = Env::start_with(DaemonOptions {
            env: vec![("KETCH_TEST_CRASH_POINT".into(), point.into())],
            ..Default::default()
        })
        .await;
        let pod = env.run_pod("crashc").await;
        let config = container_config("victim", &env.busybox(), &["sleep", "1000"]);
        let created = env.create(&pod, config.clone()).await;
        let id = match created {
            Ok(id) => {
                assert!(
                    env.start_container(&id).await.is_err(),
                    "{point}: the daemon died"
                );
                Some(id)
            }
            Err(_) => None,
        };
        env.daemon.kill9();
        env.daemon.set_env(Vec::new());
        env.daemon.restart().await;
        env.rt = env.daemon.runtime().await;
        let listed = env
            .rt
            .list_containers(ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        match &id {
            None => assert!(listed.is_empty(), "{point}: {listed:?}"),
            Some(id) => {
                let status = env.status(id).await;
                assert_eq!(
                    status.state,
                    ContainerState::ContainerExited as i32,
                    "{point}"
                );
                assert_eq!(status.reason, "StartError", "{point}");
                env.rt
                    .remove_container(RemoveContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                    .unwrap();
            }
        }
        // No rootfs stays mounted, the name is free and the pod works.
        let root = env.daemon.root_dir.display().to_string();
        let mounts: Vec<String> = crate::harness::daemon::mountpoints()
            .into_iter()
            .filter(|m| m.starts_with(&root))
            .collect();
        assert!(mounts.is_empty(), "{point}: {mounts:?}");
        let again = env
            .create(&pod, config)
            .await
            .expect("the name is free again");
        env.start_container(&again).await.expect("and it starts");
        env.rt
            .remove_container(RemoveContainerRequest {
                container_id: again,
            })
            .await
            .unwrap();
        env.remove_pod(&pod.0).await;
        env.daemon.assert_clean();
    }
}

/// The seed's demo: a web server in a pod answers the host at the pod IP.
#[tokio::test]
async fn web_server_pod_answers_at_its_ip() {
    use crate::harness::images::{WEB_INDEX_HTML, WEB_PORT};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut env = Env::start().await;
    let web = env.images.web.reference.clone();
    env.pull(&web).await;
    let pod = env.run_pod("web").await;
    env.run_container(&pod, container_config("web", &web, &[]))
        .await;
    let ip = env
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.0.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .network
        .unwrap()
        .ip;
    assert!(!ip.is_empty(), "the pod has an IP");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let attempt = async {
            let mut conn = tokio::net::TcpStream::connect((ip.as_str(), WEB_PORT)).await?;
            conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await?;
            let mut reply = Vec::new();
            conn.read_to_end(&mut reply).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).into_owned())
        };
        match attempt.await {
            Ok(reply) if reply.contains("200") => break reply,
            other => {
                assert!(Instant::now() < deadline, "no answer from {ip}: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(body.ends_with(WEB_INDEX_HTML), "{body}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}
