//! Exec, attach and port-forward end to end: the real daemon, containers
//! from the pushed busybox images, the URLs the CRI RPCs hand out, and
//! clients of ours (SPDY/3.1, WebSocket) and one we did not write (Python's
//! websocket-client).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use ketch::cri::api::*;
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;

use crate::harness::cri::{container_config, namespace_options, pod_config, unique};
use crate::harness::env::Env;
use crate::harness::images::{WEB_INDEX_HTML, WEB_PORT};
use crate::harness::stream_client::{
    SpdySession, V5, exit_code, http, saw, spdy_forward, status_json, ws_collect, ws_connect,
};

/// The harness's [`Env`] with the web image pulled too.
async fn env_with_web() -> Env {
    let mut env = Env::start().await;
    let web = env.web();
    env.pull(&web).await;
    env
}

impl Env {
    /// A busybox container that sleeps, to exec into.
    async fn sleeper(&mut self, pod: &(String, PodSandboxConfig)) -> String {
        let config = container_config("sleeper", &self.busybox(), &["sleep", "3600"]);
        self.run_container(pod, config).await
    }

    async fn assert_running(&mut self, id: &str) {
        let status = self.status(id).await;
        assert_eq!(
            status.state,
            ContainerState::ContainerRunning as i32,
            "container {id} should still run: {status:?}"
        );
    }

    async fn exec_url(
        &mut self,
        id: &str,
        cmd: &[&str],
        tty: bool,
        stdin: bool,
    ) -> Result<String, tonic::Status> {
        self.rt
            .exec(ExecRequest {
                container_id: id.to_owned(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                tty,
                stdin,
                stdout: true,
                stderr: !tty,
            })
            .await
            .map(|r| r.into_inner().url)
    }

    async fn attach_url(
        &mut self,
        id: &str,
        tty: bool,
        stdin: bool,
    ) -> Result<String, tonic::Status> {
        self.rt
            .attach(AttachRequest {
                container_id: id.to_owned(),
                stdin,
                tty,
                stdout: true,
                stderr: !tty,
            })
            .await
            .map(|r| r.into_inner().url)
    }

    pub(crate) async fn port_forward_url(
        &mut self,
        pod: &str,
        ports: &[i32],
    ) -> Result<String, tonic::Status> {
        self.rt
            .port_forward(PortForwardRequest {
                pod_sandbox_id: pod.to_owned(),
                port: ports.to_vec(),
            })
            .await
            .map(|r| r.into_inner().url)
    }

    async fn exec_sync(&mut self, id: &str, cmd: &[&str]) -> ExecSyncResponse {
        self.rt
            .exec_sync(ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            })
            .await
            .expect("exec sync")
            .into_inner()
    }

    /// An HTTP GET of `/` through a port-forward of `pod`'s `port`, retried
    /// while the server inside is still starting.
    async fn get_through_tunnel(&mut self, pod: &str, port: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let url = self
                .port_forward_url(pod, &[i32::from(port)])
                .await
                .expect("port forward URL");
            let (reply, error) =
                spdy_forward(&url, port, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").await;
            let reply = String::from_utf8_lossy(&reply).into_owned();
            if reply.starts_with("HTTP/1") {
                assert!(error.is_empty(), "{error}");
                return reply;
            }
            assert!(
                Instant::now() < deadline,
                "no HTTP reply through the tunnel: {reply:?}, error {error:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A number no other test of this run uses: marks a process so it can be
/// found in /proc.
fn marker() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{:03}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Pids of processes whose argv is exactly `args`.
fn pids_running(args: &[&str]) -> Vec<i32> {
    let mut wanted = args.join("\0").into_bytes();
    wanted.push(0);
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if std::fs::read(entry.path().join("cmdline")).ok().as_deref() == Some(&wanted[..]) {
            pids.push(pid);
        }
    }
    pids
}

async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---- exec ----------------------------------------------------------------

#[tokio::test]
async fn exec_without_a_terminal_over_spdy_and_websocket() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("exec").await;
    let id = env.sleeper(&pod).await;

    // `echo hi`, no stdin, over SPDY; an ID prefix is enough.
    let url = env.exec_url(&id[..12], &["echo", "hi"], false, false).await;
    let mut s = SpdySession::open(&url.unwrap(), false, true, true, false).await;
    assert_eq!(s.stdout().read_to_end(10).await, (b"hi\n".to_vec(), true));
    assert_eq!(s.stderr().read_to_end(10).await, (Vec::new(), true));
    assert_eq!(exit_code(&s.status(10).await), 0);

    // Both output streams over WebSocket (v5).
    let url = env
        .exec_url(&id, &["sh", "-c", "echo out; echo err >&2"], false, false)
        .await
        .unwrap();
    let mut ws = ws_connect(&url, V5).await;
    let channels = ws_collect(&mut ws, 10).await;
    assert_eq!(channels[&1], b"out\n");
    assert_eq!(channels[&2], b"err\n");
    assert_eq!(exit_code(&status_json(&channels[&3])), 0);

    // stdin: 200 KiB through `cat`, then the end of input ends it.
    let url = env.exec_url(&id, &["cat"], false, true).await.unwrap();
    let mut s = SpdySession::open(&url, true, true, true, false).await;
    let data: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for chunk in data.chunks(16 * 1024) {
        s.send_stdin(chunk).await;
    }
    s.close_stdin().await;
    let (out, fin) = s.stdout().read_to_end(20).await;
    assert!(fin, "stdout did not end; {} bytes came", out.len());
    assert!(
        out == data,
        "cat returned {} of {} bytes",
        out.len(),
        data.len()
    );
    assert_eq!(exit_code(&s.status(10).await), 0);
    env.assert_running(&id).await;
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn exec_exit_codes_and_start_failures_are_statuses() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("exit").await;
    let id = env.sleeper(&pod).await;

    let url = env
        .exec_url(&id, &["sh", "-c", "echo bye; exit 3"], false, false)
        .await
        .unwrap();
    let mut s = SpdySession::open(&url, false, true, true, false).await;
    assert_eq!(s.stdout().read_to_end(10).await.0, b"bye\n");
    let status = s.status(10).await;
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(exit_code(&status), 3);

    // A killed process: 128 + the signal.
    let url = env
        .exec_url(&id, &["sh", "-c", "kill -9 $$"], false, false)
        .await
        .unwrap();
    let mut s = SpdySession::open(&url, false, true, true, false).await;
    assert_eq!(exit_code(&s.status(10).await), 137);

    // A program that is not there: the status says why.
    let url = env
        .exec_url(&id, &["/no/such/program"], false, false)
        .await
        .unwrap();
    let mut s = SpdySession::open(&url, false, true, true, false).await;
    let status = s.status(10).await;
    assert_eq!(status["status"], "Failure", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap_or_default()
            .contains("/no/such/program"),
        "{status}"
    );
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn exec_with_a_terminal_echoes_stdin_and_resizes() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("tty").await;
    let id = env.sleeper(&pod).await;

    let script = "echo ready; read line; echo got:$line; stty size; [ -t 0 ] && echo is-a-tty";
    let url = env
        .exec_url(&id, &["sh", "-c", script], true, true)
        .await
        .unwrap();
    let mut s = SpdySession::open(&url, true, true, false, true).await;
    s.stdout().read_until("ready", 10).await;
    s.resize(100, 40).await;
    // The resize goes its own way; give it a moment before the input.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send_stdin(b"hello\n").await;
    let out = s.stdout().read_until("is-a-tty", 10).await;
    // The terminal echoes the input, and the program reads it.
    assert!(out.contains("hello\r\n"), "{out:?}");
    assert!(out.contains("got:hello"), "{out:?}");
    assert!(out.contains("40 100"), "{out:?}");
    assert_eq!(exit_code(&s.status(10).await), 0);

    // An interactive shell: input line by line, its exit code at the end.
    let url = env.exec_url(&id, &["sh"], true, true).await.unwrap();
    let mut s = SpdySession::open(&url, true, true, false, true).await;
    s.send_stdin(b"echo $((6 * 7))\n").await;
    s.stdout().read_until("42", 10).await;
    s.send_stdin(b"exit 5\n").await;
    let (_, fin) = s.stdout().read_to_end(10).await;
    assert!(fin);
    assert_eq!(exit_code(&s.status(10).await), 5);
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn exec_returns_when_the_process_exits_though_a_child_keeps_its_output() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("bg").await;
    let id = env.sleeper(&pod).await;
    let mark = marker();
    let script = format!("sleep {mark} & echo started");
    let url = env
        .exec_url(&id, &["sh", "-c", &script], false, false)
        .await
        .unwrap();
    let started = Instant::now();
    let mut s = SpdySession::open(&url, false, true, true, false).await;
    assert_eq!(
        s.stdout().read_to_end(10).await,
        (b"started\n".to_vec(), true)
    );
    assert_eq!(exit_code(&s.status(10).await), 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "exec waited for the background child"
    );
    // The background child is the command's own business: it runs on.
    let args = ["sleep", mark.as_str()];
    assert!(eventually(10, || pids_running(&args).len() == 1).await);
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn a_client_that_goes_away_takes_its_exec_process_with_it() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("gone").await;
    let id = env.sleeper(&pod).await;

    // SPDY, pipes.
    let mark = marker();
    let script = format!("echo started; exec sleep {mark}");
    let url = env
        .exec_url(&id, &["sh", "-c", &script], false, true)
        .await
        .unwrap();
    let mut s = SpdySession::open(&url, true, true, true, false).await;
    s.stdout().read_until("started", 10).await;
    let args = ["sleep", mark.as_str()];
    assert!(eventually(10, || pids_running(&args).len() == 1).await);
    drop(s);
    assert!(
        eventually(10, || pids_running(&args).is_empty()).await,
        "the exec'd process outlived its client"
    );
    let ps = env.exec_sync(&id, &["ps"]).await;
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(!ps.contains(&mark), "{ps}");

    // WebSocket, a terminal.
    let mark = marker();
    let script = format!("echo started; exec sleep {mark}");
    let url = env
        .exec_url(&id, &["sh", "-c", &script], true, true)
        .await
        .unwrap();
    let ws = ws_connect(&url, V5).await;
    let args = ["sleep", mark.as_str()];
    assert!(eventually(10, || pids_running(&args).len() == 1).await);
    drop(ws);
    assert!(
        eventually(10, || pids_running(&args).is_empty()).await,
        "the exec'd process outlived its client"
    );
    env.assert_running(&id).await;
    env.remove_pod(&pod.0).await;
}

// ---- attach --------------------------------------------------------------

#[tokio::test]
async fn attach_serves_several_clients_and_detaching_leaves_the_container_running() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("attach").await;
    let mut config = container_config(
        "reader",
        &env.busybox(),
        &["sh", "-c", "while read l; do echo got $l; done"],
    );
    config.stdin = true;
    let id = env.run_container(&pod, config).await;

    let url = env.attach_url(&id, false, true).await.unwrap();
    let mut a = SpdySession::open(&url, true, true, true, false).await;
    let url = env.attach_url(&id, false, false).await.unwrap();
    let mut b = SpdySession::open(&url, false, true, true, false).await;
    // B gets only the output made after its attach: feed lines through A
    // until one reaches B.
    let mut n = 0;
    loop {
        let line = format!("sync{n}");
        a.send_stdin(format!("{line}\n").as_bytes()).await;
        let needle = format!("got {line}\n");
        if saw(b.stdout(), &needle, Duration::from_millis(500)).await {
            break;
        }
        n += 1;
        assert!(n < 40, "the second client never got output");
    }
    a.send_stdin(b"one\n").await;
    a.stdout().read_until("got one\n", 10).await;
    b.stdout().read_until("got one\n", 10).await;

    // A detaches (its connection closes); the container runs on and the
    // other client still gets output.
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.assert_running(&id).await;
    let url = env.attach_url(&id, false, true).await.unwrap();
    let c = SpdySession::open(&url, true, true, true, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.send_stdin(b"two\n").await;
    b.stdout().read_until("got two\n", 10).await;
    drop((b, c));
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.assert_running(&id).await;
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn attach_ends_when_the_container_exits() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("attach-exit").await;
    let mut config = container_config(
        "once",
        &env.busybox(),
        &["sh", "-c", "read l; echo bye $l; echo oops >&2; exit 4"],
    );
    config.stdin = true;
    let id = env.run_container(&pod, config).await;
    let url = env.attach_url(&id, false, true).await.unwrap();
    let mut s = SpdySession::open(&url, true, true, true, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send_stdin(b"x\n").await;
    assert_eq!(
        s.stdout().read_to_end(10).await,
        (b"bye x\n".to_vec(), true)
    );
    assert_eq!(s.stderr().read_to_end(10).await, (b"oops\n".to_vec(), true));
    assert_eq!(exit_code(&s.status(10).await), 0);
    assert_eq!(env.wait_exited(&id).await.exit_code, 4);
    // A container that is gone cannot be attached to.
    let err = env.attach_url(&id, false, true).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn attach_with_a_terminal_resizes_it() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("attach-tty").await;
    let mut config = container_config(
        "term",
        &env.busybox(),
        &["sh", "-c", "while read l; do echo size; stty size; done"],
    );
    config.stdin = true;
    config.tty = true;
    let id = env.run_container(&pod, config).await;
    let url = env.attach_url(&id, true, true).await.unwrap();
    let mut s = SpdySession::open(&url, true, true, false, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.resize(90, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.send_stdin(b"\n").await;
    let out = s.stdout().read_until("30 90", 10).await;
    assert!(out.contains("size"), "{out:?}");
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.assert_running(&id).await;
    env.remove_pod(&pod.0).await;
}

// ---- port forwarding -----------------------------------------------------

#[tokio::test]
async fn port_forward_reaches_httpd_in_the_pod() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("web").await;
    let config = container_config("httpd", &env.web(), &[]);
    let id = env.run_container(&pod, config).await;
    let reply = env.get_through_tunnel(&pod.0, WEB_PORT).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.ends_with(WEB_INDEX_HTML), "{reply}");

    // A page made through exec is served too: the tunnel reaches the same
    // server the container runs.
    let exec = env
        .exec_sync(&id, &["sh", "-c", "echo made by exec > /www/exec.html"])
        .await;
    assert_eq!(exec.exit_code, 0, "{exec:?}");
    let url = env.port_forward_url(&pod.0, &[80]).await.unwrap();
    let (reply, error) = spdy_forward(&url, 80, b"GET /exec.html HTTP/1.0\r\n\r\n").await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.ends_with("made by exec\n"), "{reply} {error}");

    // Nothing listens on this port: the error stream says so.
    let url = env.port_forward_url(&pod.0, &[]).await.unwrap();
    let (reply, error) = spdy_forward(&url, 81, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(reply.is_empty());
    assert!(error.contains("81"), "{error}");
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn port_forward_in_a_host_network_pod_reaches_the_node_loopback() {
    let mut env = env_with_web().await;
    let mut config = pod_config(&unique("hostnet"), &env.log_dir());
    namespace_options(&mut config).network = NamespaceMode::Node as i32;
    let pod = env.run_pod_with(config).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let config = container_config(
        "httpd",
        &env.web(),
        &["httpd", "-f", "-p", &listen, "-h", "/www"],
    );
    env.run_container(&pod, config).await;
    let reply = env.get_through_tunnel(&pod.0, port).await;
    assert!(reply.ends_with(WEB_INDEX_HTML), "{reply}");
    env.remove_pod(&pod.0).await;
}

// ---- URLs, errors, shutdown ------------------------------------------------

fn spdy_upgrade_headers(protocol: &str) -> Vec<(&str, &str)> {
    vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", protocol),
    ]
}

#[tokio::test]
async fn streaming_urls_are_single_use() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("token").await;
    let id = env.sleeper(&pod).await;
    let url = env.exec_url(&id, &["true"], false, false).await.unwrap();
    let headers = spdy_upgrade_headers("v4.channel.k8s.io");
    let first = http::request(&url, "POST", &headers).await;
    assert_eq!(first.status, 101);
    let again = http::request(&url, "POST", &headers).await;
    assert_eq!(again.status, 404, "{}", again.body);

    let url = env.port_forward_url(&pod.0, &[80]).await.unwrap();
    let headers = spdy_upgrade_headers("portforward.k8s.io");
    assert_eq!(http::request(&url, "POST", &headers).await.status, 101);
    assert_eq!(http::request(&url, "POST", &headers).await.status, 404);
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn bad_streaming_requests_get_grpc_errors() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("errors").await;
    let id = env.sleeper(&pod).await;
    let config = container_config("done", &env.busybox(), &["true"]);
    let exited = env.run_container(&pod, config).await;
    env.wait_exited(&exited).await;

    let code = |r: Result<String, tonic::Status>| r.unwrap_err().code();
    let exec = env.exec_url(&exited, &["echo", "hi"], false, false).await;
    assert_eq!(code(exec), Code::FailedPrecondition);
    let attach = env.attach_url(&exited, false, false).await;
    assert_eq!(code(attach), Code::FailedPrecondition);
    let empty = env.exec_url(&id, &[], false, false).await;
    assert_eq!(code(empty), Code::InvalidArgument);
    let unknown = env.exec_url(&"f".repeat(64), &["true"], false, false).await;
    assert_eq!(code(unknown), Code::NotFound);
    let tty_and_stderr = env
        .rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            tty: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await;
    assert_eq!(tty_and_stderr.unwrap_err().code(), Code::InvalidArgument);
    let no_streams = env
        .rt
        .exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(no_streams.unwrap_err().code(), Code::InvalidArgument);

    let unknown_pod = env.port_forward_url(&"e".repeat(64), &[80]).await;
    assert_eq!(code(unknown_pod), Code::NotFound);
    let bad_port = env.port_forward_url(&pod.0, &[70000]).await;
    assert_eq!(code(bad_port), Code::InvalidArgument);
    env.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap();
    let stopped_pod = env.port_forward_url(&pod.0, &[80]).await;
    assert_eq!(code(stopped_pod), Code::FailedPrecondition);
    env.remove_pod(&pod.0).await;
}

#[tokio::test]
async fn daemon_stop_ends_exec_sessions_and_leaves_containers_running() {
    let mut env = env_with_web().await;
    let pod = env.run_pod("stop").await;
    let own = marker();
    let config = container_config("sleeper", &env.busybox(), &["sleep", &own]);
    let id = env.run_container(&pod, config).await;
    let mark = marker();
    let script = format!("echo started; exec sleep {mark}");
    let url = env
        .exec_url(&id, &["sh", "-c", &script], false, false)
        .await
        .unwrap();
    let mut s = SpdySession::open(&url, false, true, true, false).await;
    s.stdout().read_until("started", 10).await;
    let args = ["sleep", mark.as_str()];
    assert!(eventually(10, || pids_running(&args).len() == 1).await);
    assert_eq!(env.daemon.stop().await, Some(0));
    assert!(
        pids_running(&args).is_empty(),
        "an exec'd process outlived the daemon"
    );
    assert_eq!(
        pids_running(&["sleep", &own]).len(),
        1,
        "the container died"
    );
    drop(s);
    env.daemon.restart().await;
    env.rt = env.daemon.runtime().await;
    env.assert_running(&id).await;
    env.remove_pod(&pod.0).await;
}

// ---- a client we did not write ------------------------------------------

#[tokio::test]
async fn python_websocket_client_execs_and_forwards_a_port() {
    let python = "python3";
    let has_module = std::process::Command::new(python)
        .args(["-c", "import websocket"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        has_module,
        "python3 with websocket-client is needed: run deploy/install-deps.sh test"
    );
    let mut env = env_with_web().await;
    let pod = env.run_pod("python").await;
    let id = env.sleeper(&pod).await;
    let echo_port = 7000;
    let config = container_config(
        "echo",
        &env.busybox(),
        &["nc", "-ll", "-p", "7000", "-e", "/bin/cat"],
    );
    env.run_container(&pod, config).await;
    // Until the echo server listens, a forward ends without an echo.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = env.port_forward_url(&pod.0, &[echo_port]).await.unwrap();
        let (reply, _) = spdy_forward(&url, 7000, b"ping").await;
        if reply == b"ping" {
            break;
        }
        assert!(Instant::now() < deadline, "the echo server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let script = "read line; echo out:$line; echo err >&2; exit 7";
    let exec_url = env
        .exec_url(&id, &["sh", "-c", script], false, true)
        .await
        .unwrap();
    let pf_url = env.port_forward_url(&pod.0, &[echo_port]).await.unwrap();
    let client = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/streaming_py/ws_client.py"
    );
    let output = tokio::process::Command::new(python)
        .arg(client)
        .arg(exec_url.replace("http://", "ws://"))
        .arg(pf_url.replace("http://", "ws://"))
        .arg(echo_port.to_string())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed: {stderr}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("its output");
    assert_eq!(result["stdout"], "out:from python\n", "{result}");
    assert_eq!(result["stderr"], "err\n", "{result}");
    assert_eq!(result["exit_code"], 7, "{result}");
    assert_eq!(result["forwarded"], "echo via python", "{result}");

    // And a WebSocket of ours on the same port: the port in both channels'
    // first frame, then the echo.
    let url = env.port_forward_url(&pod.0, &[echo_port]).await.unwrap();
    let mut ws = ws_connect(&url, "v4.channel.k8s.io").await;
    ws.send(Message::Binary(b"\x00over a socket".to_vec().into()))
        .await
        .unwrap();
    let mut data = Vec::new();
    let want = [&7000u16.to_le_bytes()[..], b"over a socket"].concat();
    while data.len() < want.len() {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the echo in time");
        match msg {
            Some(Ok(Message::Binary(frame))) if frame.first() == Some(&0) => {
                data.extend_from_slice(&frame[1..]);
            }
            Some(Ok(_)) => {}
            other => panic!("WebSocket ended before the echo: {other:?}; got {data:?}"),
        }
    }
    assert_eq!(data, want);
    env.remove_pod(&pod.0).await;
}
