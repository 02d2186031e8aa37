//! RuntimeClass handlers end to end: Debian's `runc` (and `crun` where it
//! is installed) configured as `[runtime_handlers.<name>]`, pods of each
//! handler beside a pod of the built-in executor on one daemon, and the
//! container operations through the runtime's command line: HTTP at the
//! pod IP, exec, logs, attach, port-forward, stop codes, updates, a daemon
//! kill -9 and restart, removal that leaves nothing, and the refusals.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ketch::cri::api::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::harness::DaemonOptions;
use crate::harness::cri::{container_config, pod_config, unique};
use crate::harness::daemon::mountpoints;
use crate::harness::env::Env;
use crate::harness::images::{WEB_INDEX_HTML, WEB_PORT};
use crate::harness::stream_client::{SpdySession, saw, spdy_forward};

const RUNC: &str = "/usr/sbin/runc";
const CRUN: &str = "/usr/bin/crun";

/// The external handlers every test here drives: runc (a test
/// dependency). crun has a test of its own, as it cannot run containers
/// on every host (see [`crun_runs_a_pod_where_the_host_lets_it`]).
fn handlers() -> Vec<(&'static str, &'static str)> {
    vec![("runc", RUNC)]
}

/// An Env whose daemon knows the handlers (plus one whose binary is
/// missing), with the web image pulled. `None` (and `skipped:` said) when
/// runc is not installed.
async fn env_with_handlers() -> Option<Env> {
    if !Path::new(RUNC).exists() {
        println!("skipped: {RUNC} is not installed (deploy/install-deps.sh test installs it)");
        return None;
    }
    let mut toml = String::new();
    for (name, path) in [("runc", RUNC), ("crun", CRUN)] {
        toml.push_str(&format!("[runtime_handlers.{name}]\npath = \"{path}\"\n"));
    }
    toml.push_str("[runtime_handlers.gone]\npath = \"/nonexistent/bin/runc\"\n");
    let mut env = Env::start_with(DaemonOptions {
        config_toml: toml,
        ..Default::default()
    })
    .await;
    let web = env.web();
    env.pull(&web).await;
    Some(env)
}

/// The runtime's `--root` the daemon gives a handler by default.
fn runtime_root(env: &Env, handler: &str) -> PathBuf {
    env.daemon.state_dir.join("runtimes").join(handler)
}

async fn run_pod_on(env: &mut Env, name: &str, handler: &str) -> (String, PodSandboxConfig) {
    let config = pod_config(&unique(name), &env.log_dir());
    let id = env
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        })
        .await
        .unwrap_or_else(|e| panic!("run a pod on handler {handler:?}: {e}"))
        .into_inner()
        .pod_sandbox_id;
    (id, config)
}

async fn pod_ip(env: &mut Env, pod: &str) -> String {
    let ip = env
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_owned(),
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
    ip
}

/// GET `path` from the web server at `ip`, retried while it starts.
async fn http_get(ip: &str, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let mut conn = tokio::net::TcpStream::connect((ip, WEB_PORT)).await?;
            conn.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .await?;
            let mut reply = Vec::new();
            conn.read_to_end(&mut reply).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).into_owned())
        };
        match attempt.await {
            Ok(reply) if reply.contains("200") => return reply,
            other => {
                assert!(Instant::now() < deadline, "no answer from {ip}: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The container's cgroup directories in every hierarchy that has one
/// (runc makes one in each v1 hierarchy, ketch in the ones it manages).
fn cgroup_dirs_named(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(id))
            {
                found.push(path);
            } else if path.components().count() < 10 {
                stack.push(path);
            }
        }
    }
    found
}

fn log_text(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn wait_log(path: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = log_text(path);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the log {path}: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn remove_container(env: &mut Env, id: &str) {
    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: id.to_owned(),
        })
        .await
        .expect("remove container");
}

#[tokio::test]
async fn pods_of_each_handler_serve_http_side_by_side_with_a_builtin_pod() {
    let Some(mut env) = env_with_handlers().await else {
        return;
    };
    let mut names = vec![""];
    names.extend(handlers().into_iter().map(|(n, _)| n));
    let mut running = Vec::new();
    for handler in &names {
        let pod = run_pod_on(&mut env, &format!("web{handler}"), handler).await;
        let web = env.web();
        let id = env
            .run_container(&pod, container_config("httpd", &web, &[]))
            .await;
        running.push((*handler, pod, id));
    }
    for (handler, pod, id) in &running {
        let ip = pod_ip(&mut env, &pod.0).await;
        let body = http_get(&ip, "/index.html").await;
        assert!(body.ends_with(WEB_INDEX_HTML), "{handler}: {body}");
        // Made by the runtime of its handler: only an external runtime
        // keeps the container's state under its root.
        let state = runtime_root(&env, if handler.is_empty() { "runc" } else { handler }).join(id);
        assert_eq!(
            state.exists(),
            !handler.is_empty(),
            "{handler}: {}",
            state.display()
        );

        // ExecSync through the runtime, in the container's mount namespace.
        let page = format!("made by exec on {handler:?}\n");
        let cmd = format!(
            "printf '{}' > /www/exec.html; id -u; hostname",
            page.trim_end()
        );
        let out = env
            .exec(id, &["sh", "-c", &cmd], 10)
            .await
            .expect("exec sync");
        assert_eq!(out.exit_code, 0, "{handler}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("0\n"), "{handler}: {stdout}");
        assert!(stdout.contains(&pod.1.hostname), "{handler}: {stdout}");
        let body = http_get(&ip, "/exec.html").await;
        assert!(body.ends_with(page.trim_end()), "{handler}: {body}");
        // A failing command's code comes back as it is.
        let out = env
            .exec(id, &["sh", "-c", "echo oops >&2; exit 3"], 10)
            .await
            .unwrap();
        assert_eq!(
            (out.exit_code, out.stderr.as_slice()),
            (3, &b"oops\n"[..]),
            "{handler}"
        );
        // A program that is not there: refused with its name, as the
        // built-in executor refuses it.
        let err = env
            .exec(id, &["/bin/no-such-program"], 10)
            .await
            .unwrap_err();
        assert!(
            err.message().contains("/bin/no-such-program"),
            "{handler}: {err:?}"
        );

        // Port-forward reaches the same server.
        let url = env
            .port_forward_url(&pod.0, &[i32::from(WEB_PORT)])
            .await
            .unwrap();
        let (reply, error) = spdy_forward(&url, WEB_PORT, b"GET /exec.html HTTP/1.0\r\n\r\n").await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.ends_with(page.trim_end()),
            "{handler}: {reply} {error}"
        );

        // Streaming exec, with a terminal made by the runtime.
        let url = env
            .rt
            .exec(ExecRequest {
                container_id: id.clone(),
                cmd: vec!["sh".into(), "-c".into(), "tty; echo in-$((6*7))".into()],
                tty: true,
                stdin: false,
                stdout: true,
                stderr: false,
            })
            .await
            .unwrap()
            .into_inner()
            .url;
        let mut session = SpdySession::open(&url, false, true, false, true).await;
        assert!(
            saw(session.stdout(), "/dev/pts/", Duration::from_secs(10)).await,
            "{handler}"
        );
        let status = session.status(10).await;
        assert_eq!(status["status"], "Success", "{handler}: {status}");
    }
    // The stats of a runtime's container come from ketch's cgroup.
    for (handler, _, id) in &running {
        let stats = env
            .rt
            .container_stats(ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let memory = stats
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value);
        assert!(memory.is_some_and(|m| m > 0), "{handler}: {memory:?}");
    }
    for (_, pod, _) in &running {
        env.remove_pod(&pod.0).await;
    }
    env.daemon.assert_clean();
}

#[tokio::test]
async fn logs_attach_stop_codes_and_a_removal_that_leaves_nothing() {
    let Some(mut env) = env_with_handlers().await else {
        return;
    };
    for (handler, _) in handlers() {
        let pod = run_pod_on(&mut env, "life", handler).await;
        let mut config = container_config(
            "talker",
            &env.busybox(),
            &[
                "sh",
                "-c",
                "echo out-$((40+2)); echo err-line >&2; trap 'echo bye; exit 42' TERM; \
                 while read line; do echo got-$line; done; while true; do sleep 0.1; done",
            ],
        );
        config.stdin = true;
        config.log_path = format!("{handler}.log");
        let id = env.run_container(&pod, config).await;
        let status = env.status(&id).await;
        let log = wait_log(&status.log_path, "out-42").await;
        assert!(log.contains(" stdout F out-42\n"), "{handler}: {log}");
        let log = wait_log(&status.log_path, "err-line").await;
        assert!(log.contains(" stderr F err-line\n"), "{handler}: {log}");

        // Attach: stdin reaches the container, its output comes back.
        let url = env
            .rt
            .attach(AttachRequest {
                container_id: id.clone(),
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
        session.send_stdin(b"ping\n").await;
        assert!(
            saw(session.stdout(), "got-ping", Duration::from_secs(10)).await,
            "{handler}"
        );
        drop(session);
        wait_log(&status.log_path, "got-ping").await;

        // The process runs in ketch's cgroup for it, which the runtime
        // joined (and applies the limits of).
        let pid = env.container_pid(&id).await;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(cgroup.contains(&id), "{handler}: {cgroup}");

        // UpdateContainerResources goes through the runtime to the cgroup.
        let limit = 96 << 20;
        env.rt
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: limit,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{handler}: update: {e}"));
        let dirs = cgroup_dirs_named(&id);
        let memory = dirs
            .iter()
            .find_map(|d| {
                ["memory.limit_in_bytes", "memory.max"]
                    .iter()
                    .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
            })
            .unwrap_or_else(|| panic!("{handler}: no memory cgroup among {dirs:?}"));
        assert_eq!(memory.trim(), limit.to_string(), "{handler}");

        // StopContainer: the stop signal, the container's own exit code.
        let stopped = env.stop_and_wait(&id, 10).await;
        assert_eq!(stopped.exit_code, 42, "{handler}: {stopped:?}");
        assert_eq!(stopped.reason, "Error", "{handler}");
        wait_log(&status.log_path, "bye").await;

        // RemoveContainer: the runtime's state, the cgroups (every
        // hierarchy, the runtime's own included), mounts and files gone.
        let bundle = env.daemon.root_dir.join("containers").join(&id);
        assert!(runtime_root(&env, handler).join(&id).exists(), "{handler}");
        remove_container(&mut env, &id).await;
        assert!(!runtime_root(&env, handler).join(&id).exists(), "{handler}");
        assert_eq!(cgroup_dirs_named(&id), Vec::<PathBuf>::new(), "{handler}");
        let base = bundle.to_string_lossy().into_owned();
        let mounts: Vec<String> = mountpoints()
            .into_iter()
            .filter(|m| m.starts_with(&base))
            .collect();
        assert!(mounts.is_empty(), "{handler}: {mounts:?}");
        assert!(!bundle.exists(), "{handler}");
        env.remove_pod(&pod.0).await;
    }
    env.daemon.assert_clean();
}

#[tokio::test]
async fn runtime_containers_outlive_a_daemon_kill_and_stay_manageable() {
    let Some(mut env) = env_with_handlers().await else {
        return;
    };
    let mut running = Vec::new();
    for (handler, _) in handlers() {
        let pod = run_pod_on(&mut env, "survivor", handler).await;
        let web = env.web();
        let id = env
            .run_container(&pod, container_config("httpd", &web, &[]))
            .await;
        running.push((handler, pod, id));
    }
    env.daemon.kill9();
    env.daemon.restart().await;
    env.rt = env.daemon.runtime().await;
    for (handler, pod, id) in &running {
        let status = env.status(id).await;
        assert_eq!(
            status.state,
            ContainerState::ContainerRunning as i32,
            "{handler}"
        );
        let ip = pod_ip(&mut env, &pod.0).await;
        assert!(http_get(&ip, "/index.html").await.ends_with(WEB_INDEX_HTML));
        let out = env.exec(id, &["cat", "/www/index.html"], 10).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            WEB_INDEX_HTML,
            "{handler}"
        );
        // httpd is PID 1 of its pid namespace, which SIGTERM does not end:
        // the SIGKILL after a zero timeout does, 128 + 9.
        let stopped = env.stop_and_wait(id, 0).await;
        assert_eq!(stopped.exit_code, 137, "{handler}: {stopped:?}");
        env.remove_pod(&pod.0).await;
        assert!(!runtime_root(&env, handler).join(id).exists(), "{handler}");
        assert_eq!(cgroup_dirs_named(id), Vec::<PathBuf>::new(), "{handler}");
    }
    env.daemon.assert_clean();
}

#[tokio::test]
async fn a_tty_container_of_a_runtime_gets_its_terminal_and_a_bad_start_says_why() {
    let Some(mut env) = env_with_handlers().await else {
        return;
    };
    let (handler, _) = handlers()[0];
    let pod = run_pod_on(&mut env, "tty", handler).await;
    let mut config = container_config("term", &env.busybox(), &["sh", "-c", "tty; sleep 3600"]);
    config.tty = true;
    config.log_path = "tty.log".into();
    let id = env.run_container(&pod, config).await;
    let log = wait_log(&env.status(&id).await.log_path, "/dev/pts/").await;
    assert!(log.contains("stdout"), "{log}");

    // A program that does not exist: StartContainer fails with the
    // runtime's own words, and nothing of the runtime's is left.
    let config = container_config("nope", &env.busybox(), &["/bin/no-such-program"]);
    let bad = env.create(&pod, config).await.unwrap();
    let err = env.start_container(&bad).await.unwrap_err();
    assert!(err.message().contains("no-such-program"), "{err:?}");
    let status = env.status(&bad).await;
    assert_eq!(status.reason, "StartError", "{status:?}");
    assert!(!runtime_root(&env, handler).join(&bad).exists());
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn unknown_handlers_and_missing_runtimes_are_refused_and_status_lists_handlers() {
    let Some(mut env) = env_with_handlers().await else {
        return;
    };
    let status = env
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "crun", "gone", "runc"]);
    for h in &status.runtime_handlers {
        let f = h.features.as_ref().unwrap();
        // The built-in executor's depends on this node's idmapped mounts.
        if !h.name.is_empty() {
            assert!(!f.user_namespaces, "{h:?}");
        }
        // As the runtime's own `features` says (runc 1.1.5 lists `rro`);
        // false for a runtime that cannot run.
        let listed = [("runc", RUNC), ("crun", CRUN)]
            .iter()
            .find(|(n, path)| *n == h.name && Path::new(path).exists())
            .map(|(_, path)| {
                let out = std::process::Command::new(path)
                    .arg("features")
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("\"rro\"")
            });
        match listed {
            Some(rro) => assert_eq!(f.recursive_read_only_mounts, rro, "{h:?}"),
            None if h.name == "gone" => assert!(!f.recursive_read_only_mounts, "{h:?}"),
            None => {}
        }
    }

    let config = pod_config(&unique("nope"), &env.log_dir());
    let err = env
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("\"kata\"") && err.message().contains("\"runc\""),
        "{err:?}"
    );

    let err = env
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: "gone".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("/nonexistent/bin/runc"), "{err:?}");
    // Neither left a pod behind.
    let pods = env.pods().await;
    assert!(pods.is_empty(), "{pods:?}");
    env.daemon.assert_clean();
}

/// crun 1.8 refuses cgroups on a hybrid host whose cgroup2 hierarchy holds
/// a controller ("cgroups in hybrid mode not supported, drop all
/// controllers from cgroupv2"): there the test says so and stops.
#[tokio::test]
async fn crun_runs_a_pod_where_the_host_lets_it() {
    if !Path::new(CRUN).exists() {
        println!("skipped: {CRUN} is not installed (deploy/install-deps.sh test installs it)");
        return;
    }
    let Some(mut env) = env_with_handlers().await else {
        return;
    };
    let pod = run_pod_on(&mut env, "crun", "crun").await;
    let web = env.web();
    let id = env
        .create(&pod, container_config("httpd", &web, &[]))
        .await
        .unwrap();
    if let Err(e) = env.start_container(&id).await {
        if e.message().contains("hybrid mode not supported") {
            println!(
                "skipped: crun cannot run containers on this host: {}",
                e.message()
            );
            env.remove_pod(&pod.0).await;
            env.daemon.assert_clean();
            return;
        }
        panic!("start on crun: {e:?}");
    }
    let ip = pod_ip(&mut env, &pod.0).await;
    assert!(http_get(&ip, "/index.html").await.ends_with(WEB_INDEX_HTML));
    let out = env
        .exec(&id, &["cat", "/www/index.html"], 10)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), WEB_INDEX_HTML);
    let stopped = env.stop_and_wait(&id, 0).await;
    assert_eq!(stopped.exit_code, 137, "{stopped:?}");
    assert!(runtime_root(&env, "crun").join(&id).exists());
    env.remove_pod(&pod.0).await;
    assert!(!runtime_root(&env, "crun").join(&id).exists());
    assert_eq!(cgroup_dirs_named(&id), Vec::<PathBuf>::new());
    env.daemon.assert_clean();
}
