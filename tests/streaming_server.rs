//! The streaming server end to end: real HTTP upgrades, SPDY/3.1 from our
//! own client, WebSocket from tokio-tungstenite and from Python's
//! `websocket-client`, real processes behind a host-process backend, and
//! port forwarding into a network namespace made for the test. Needs root.

mod streaming_support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use ketch::streaming::{AttachRequest, ExecRequest, PortForwardRequest, StreamingServer};
use serde_json::Value;
use streaming_support::netns::{Netns, echo_server, source_server};
use streaming_support::spdy_client::{Ev, SpdyClient};
use streaming_support::{HostBackend, eventually, http, process_alive, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const V4: &str = "v4.channel.k8s.io";

fn exec(cmd: &[&str], tty: bool, stdin: bool, stdout: bool, stderr: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
    }
}

fn sh(script: &str) -> Vec<&str> {
    vec!["sh", "-c", script]
}

fn status_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("status {:?}: {e}", String::from_utf8_lossy(bytes)))
}

fn exit_code(status: &Value) -> i64 {
    if status["status"] == "Success" {
        return 0;
    }
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    status["details"]["causes"][0]["message"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

// ---- SPDY exec ---------------------------------------------------------

#[tokio::test]
async fn spdy_exec_without_tty_or_stdin() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(
            &sh("echo out; echo err >&2"),
            false,
            false,
            true,
            true,
        ))
        .unwrap();
    let (client, protocol) =
        SpdyClient::connect(&url, &["v5.channel.k8s.io", V4, "channel.k8s.io"]).await;
    assert_eq!(protocol, "v5.channel.k8s.io");
    let mut error = client.open(&[("streamtype", "error")]).await;
    let mut stdout = client.open(&[("streamtype", "stdout")]).await;
    let mut stderr = client.open(&[("streamtype", "stderr")]).await;
    assert_eq!(stdout.read_to_end(10).await, (b"out\n".to_vec(), true));
    assert_eq!(stderr.read_to_end(10).await, (b"err\n".to_vec(), true));
    let (status, fin) = error.read_to_end(10).await;
    assert!(fin);
    assert_eq!(
        status_json(&status),
        serde_json::json!({"metadata": {}, "status": "Success"})
    );
    assert!(
        eventually(5, || client
            .goaway
            .load(std::sync::atomic::Ordering::SeqCst))
        .await
    );
    assert!(eventually(5, || server.active_sessions() == 0).await);
}

#[tokio::test]
async fn spdy_exec_reports_a_non_zero_exit_code() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(&sh("exit 3"), false, false, true, true))
        .unwrap();
    let (client, _) = SpdyClient::connect(&url, &[V4]).await;
    let mut error = client.open(&[("streamtype", "error")]).await;
    let _stdout = client.open(&[("streamtype", "stdout")]).await;
    let _stderr = client.open(&[("streamtype", "stderr")]).await;
    let status = status_json(&error.read_to_end(10).await.0);
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    assert_eq!(exit_code(&status), 3);

    // v3 carries text, no JSON.
    let url = server
        .get_exec_url(&exec(&sh("exit 4"), false, false, true, false))
        .unwrap();
    let (client, protocol) = SpdyClient::connect(&url, &["v3.channel.k8s.io"]).await;
    assert_eq!(protocol, "v3.channel.k8s.io");
    let mut error = client.open(&[("streamtype", "error")]).await;
    let _stdout = client.open(&[("streamtype", "stdout")]).await;
    let text = String::from_utf8(error.read_to_end(10).await.0).unwrap();
    assert!(
        text.contains("non-zero exit code") && text.contains('4'),
        "{text}"
    );
}

#[tokio::test]
async fn spdy_exec_tty_echoes_stdin_and_applies_resize() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let script = "stty -echo; echo ready; read line; echo got:$line; stty size";
    let url = server
        .get_exec_url(&exec(&sh(script), true, true, true, false))
        .unwrap();
    let (client, _) = SpdyClient::connect(&url, &[V4]).await;
    let mut error = client.open(&[("streamtype", "error")]).await;
    let stdin = client.open(&[("streamtype", "stdin")]).await;
    let mut stdout = client.open(&[("streamtype", "stdout")]).await;
    let resize = client.open(&[("streamtype", "resize")]).await;
    stdout.read_until("ready", 10).await;
    // Two events in one frame and one split over two frames.
    client
        .send(resize.id, br#"{"Width":10,"Height":5}{"Width":100"#, false)
        .await;
    client.send(resize.id, br#","Height":40}"#, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.send(stdin.id, b"hello\n", false).await;
    let out = stdout.read_until("40 100", 10).await;
    assert!(out.contains("got:hello"), "{out:?}");
    assert_eq!(exit_code(&status_json(&error.read_to_end(10).await.0)), 0);
}

#[tokio::test]
async fn spdy_exec_stdin_close_reaches_the_process() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(&["cat"], false, true, true, false))
        .unwrap();
    let (client, _) = SpdyClient::connect(&url, &[V4]).await;
    let mut error = client.open(&[("streamtype", "error")]).await;
    let mut stdin = client.open(&[("streamtype", "stdin")]).await;
    let mut stdout = client.open(&[("streamtype", "stdout")]).await;
    // More than a window's worth, to go through flow accounting.
    let data: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for chunk in data.chunks(32 * 1024) {
        client.send(stdin.id, chunk, false).await;
    }
    client.send(stdin.id, b"", true).await;
    let (out, fin) = stdout.read_to_end(20).await;
    assert!(fin);
    assert_eq!(out.len(), data.len());
    assert!(out == data);
    assert_eq!(exit_code(&status_json(&error.read_to_end(10).await.0)), 0);
    // The server closes its side of stdin at the end.
    assert_eq!(stdin.read_to_end(5).await, (Vec::new(), true));
    // The server acknowledged what it consumed.
    let wu = client.window_updates.lock().unwrap().clone();
    assert!(wu.get(&0).copied().unwrap_or(0) >= 200_000, "{wu:?}");
}

#[tokio::test]
async fn spdy_attach_streams_the_container_stdio() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let req = AttachRequest {
        container_id: "c1".into(),
        tty: false,
        stdin: true,
        stdout: true,
        stderr: false,
    };
    let url = server.get_attach_url(&req).unwrap();
    let (client, _) = SpdyClient::connect(&url, &[V4]).await;
    let mut error = client.open(&[("streamtype", "error")]).await;
    let stdin = client.open(&[("streamtype", "stdin")]).await;
    let mut stdout = client.open(&[("streamtype", "stdout")]).await;
    client.send(stdin.id, b"attached\n", true).await;
    assert_eq!(stdout.read_to_end(10).await, (b"attached\n".to_vec(), true));
    assert_eq!(exit_code(&status_json(&error.read_to_end(10).await.0)), 0);

    // A backend failure becomes an InternalError status.
    let url = server
        .get_attach_url(&AttachRequest {
            container_id: "missing".into(),
            ..req
        })
        .unwrap();
    let (client, _) = SpdyClient::connect(&url, &[V4]).await;
    let mut error = client.open(&[("streamtype", "error")]).await;
    let _stdin = client.open(&[("streamtype", "stdin")]).await;
    let _stdout = client.open(&[("streamtype", "stdout")]).await;
    let status = status_json(&error.read_to_end(10).await.0);
    assert_eq!(status["reason"], "InternalError");
    assert!(
        status["message"].as_str().unwrap().contains("missing"),
        "{status}"
    );
}

// ---- WebSocket exec ----------------------------------------------------

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(url: &str, protocol: &str) -> Ws {
    let mut req = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        protocol
    );
    ws
}

/// Collects channel payloads until the server closes the socket.
async fn ws_collect(ws: &mut Ws, secs: u64) -> std::collections::BTreeMap<u8, Vec<u8>> {
    let mut channels = std::collections::BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => {
                let (ch, payload) = data.split_first().unwrap();
                channels
                    .entry(*ch)
                    .or_insert_with(Vec::new)
                    .extend_from_slice(payload);
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return channels,
            Ok(Some(Ok(_))) => {}
            Err(_) => panic!("server did not close the WebSocket in time: {channels:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_v4_exec() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(
            &sh("echo hi; echo oops >&2; exit 2"),
            false,
            false,
            true,
            true,
        ))
        .unwrap();
    let mut ws = ws_connect(&url, V4).await;
    let channels = ws_collect(&mut ws, 10).await;
    assert_eq!(channels[&1], b"hi\n");
    assert_eq!(channels[&2], b"oops\n");
    assert_eq!(exit_code(&status_json(&channels[&3])), 2);
}

#[tokio::test]
async fn websocket_v5_exec_closes_stdin() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(&["cat"], false, true, true, false))
        .unwrap();
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    ws.send(Message::Binary(b"\x00piped data".to_vec().into()))
        .await
        .unwrap();
    // v5 close signal for channel 0: stdin EOF, cat exits.
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let channels = ws_collect(&mut ws, 10).await;
    assert_eq!(channels[&1], b"piped data");
    assert_eq!(exit_code(&status_json(&channels[&3])), 0);
}

#[tokio::test]
async fn websocket_tty_resize() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let script = "stty -echo; echo ready; read x; stty size";
    let url = server
        .get_exec_url(&exec(&sh(script), true, true, true, false))
        .unwrap();
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("ready") {
        if let Some(Ok(Message::Binary(d))) = ws.next().await {
            seen.extend_from_slice(&d[1..]);
        }
    }
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":77,"Height":33}"#);
    ws.send(Message::Binary(resize.into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(Message::Binary(b"\x00go\n".to_vec().into()))
        .await
        .unwrap();
    let channels = ws_collect(&mut ws, 10).await;
    let out = String::from_utf8_lossy(&channels[&1]).into_owned();
    assert!(out.contains("33 77"), "{out:?}");
}

// ---- port forwarding ---------------------------------------------------

#[tokio::test]
async fn spdy_port_forward_into_a_netns_and_the_host() {
    let ns = Netns::new();
    let ns_port = echo_server(ns.listen(), Some(b"hello from the pod\n"));
    let host_port = echo_server(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), None);
    let backend = HostBackend::new();
    backend.add_pod("pod", Some(ns.path()));
    backend.add_pod("hostpod", None);
    let server = start(backend.clone(), 60).await;

    let url = server
        .get_port_forward_url(&PortForwardRequest {
            pod_sandbox_id: "pod".into(),
            ports: vec![],
        })
        .unwrap();
    let (client, protocol) = SpdyClient::connect(&url, &["portforward.k8s.io"]).await;
    assert_eq!(protocol, "portforward.k8s.io");
    let port = ns_port.to_string();
    // Three connections at once on one SPDY connection.
    let mut pairs = Vec::new();
    for req in 0..3 {
        let rid = req.to_string();
        let error = client
            .open(&[
                ("streamtype", "error"),
                ("port", &port),
                ("requestid", &rid),
            ])
            .await;
        let data = client
            .open(&[("streamtype", "data"), ("port", &port), ("requestid", &rid)])
            .await;
        pairs.push((error, data));
    }
    for (i, (_, data)) in pairs.iter_mut().enumerate() {
        data.read_until("hello from the pod\n", 10).await;
        client
            .send(data.id, format!("ping {i}\n").as_bytes(), false)
            .await;
    }
    for (i, (_, data)) in pairs.iter_mut().enumerate() {
        data.read_until(&format!("ping {i}\n"), 10).await;
    }
    // Closing our side ends the connection: the echo server closes, the
    // server FINs data and error.
    for (error, data) in pairs.iter_mut() {
        client.send(data.id, b"", true).await;
        assert!(data.read_to_end(10).await.1);
        assert_eq!(error.read_to_end(10).await, (Vec::new(), true));
    }

    // Nothing listening: the error stream says so.
    let error_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let mut error = client
        .open(&[
            ("streamtype", "error"),
            ("port", &error_port),
            ("requestid", "9"),
        ])
        .await;
    let _data = client
        .open(&[
            ("streamtype", "data"),
            ("port", &error_port),
            ("requestid", "9"),
        ])
        .await;
    let msg = String::from_utf8(error.read_to_end(10).await.0).unwrap();
    assert!(
        msg.contains("error forwarding port") && msg.contains("pod"),
        "{msg}"
    );
    drop(client);

    // A host-network pod reaches the host's loopback.
    let url = server
        .get_port_forward_url(&PortForwardRequest {
            pod_sandbox_id: "hostpod".into(),
            ports: vec![],
        })
        .unwrap();
    let (client, _) = SpdyClient::connect(&url, &["portforward.k8s.io"]).await;
    let port = host_port.to_string();
    let _error = client
        .open(&[("streamtype", "error"), ("port", &port), ("requestid", "1")])
        .await;
    let mut data = client
        .open(&[("streamtype", "data"), ("port", &port), ("requestid", "1")])
        .await;
    client.send(data.id, b"host echo\n", false).await;
    data.read_until("host echo\n", 10).await;
    client.goaway().await;
    client.send(data.id, b"", true).await;
    assert!(data.read_to_end(10).await.1);
    assert!(eventually(10, || server.active_sessions() == 0).await);
}

#[tokio::test]
async fn spdy_flow_control_keeps_a_stuck_stream_from_stalling_others() {
    let ns = Netns::new();
    let size = 1024 * 1024;
    let port = source_server(ns.listen(), size).to_string();
    let backend = HostBackend::new();
    backend.add_pod("pod", Some(ns.path()));
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_port_forward_url(&PortForwardRequest {
            pod_sandbox_id: "pod".into(),
            ports: vec![],
        })
        .unwrap();
    let (client, _) = SpdyClient::connect(&url, &["portforward.k8s.io"]).await;
    // This client does flow control: 64 KiB windows, updates sent by hand.
    client.settings_initial_window(65536).await;
    let open = |rid: &'static str| {
        let client = &client;
        let port = port.clone();
        async move {
            let e = client
                .open(&[("streamtype", "error"), ("port", &port), ("requestid", rid)])
                .await;
            let d = client
                .open(&[("streamtype", "data"), ("port", &port), ("requestid", rid)])
                .await;
            (e, d)
        }
    };
    let (_stuck_error, mut stuck) = open("stuck").await;
    let (_error, mut live) = open("live").await;
    // Never acknowledge the stuck stream; acknowledge the live one as read.
    let mut got = 0usize;
    let mut stuck_got = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got < size {
        tokio::select! {
            ev = live.rx.recv() => match ev {
                Some(Ev::Data(d)) => {
                    got += d.len();
                    client.window_update(live.id, d.len() as u32).await;
                    client.window_update(0, d.len() as u32).await;
                }
                other => panic!("live stream ended early at {got}: {other:?}"),
            },
            Some(Ev::Data(d)) = stuck.rx.recv() => {
                // Received is received for the session window; only the
                // stream's own window stays closed.
                stuck_got += d.len();
                client.window_update(0, d.len() as u32).await;
            }
            _ = tokio::time::sleep_until(deadline) => panic!("live stream stalled at {got}"),
        }
    }
    while let Ok(Some(Ev::Data(d))) =
        tokio::time::timeout(Duration::from_millis(300), stuck.rx.recv()).await
    {
        stuck_got += d.len();
    }
    assert_eq!(got, size);
    assert!(
        stuck_got <= 65536,
        "stuck stream got {stuck_got} bytes past its window"
    );
    // Opening its window lets it finish.
    client.window_update(stuck.id, size as u32).await;
    client.window_update(0, size as u32).await;
    let (rest, fin) = stuck.read_to_end(20).await;
    assert!(fin);
    assert_eq!(stuck_got + rest.len(), size);
}

#[tokio::test]
async fn websocket_port_forward() {
    let ns = Netns::new();
    let port = echo_server(ns.listen(), None);
    let backend = HostBackend::new();
    backend.add_pod("pod", Some(ns.path()));
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_port_forward_url(&PortForwardRequest {
            pod_sandbox_id: "pod".into(),
            ports: vec![port],
        })
        .unwrap();
    let mut ws = ws_connect(&url, V4).await;
    let mut first = Vec::new();
    for _ in 0..2 {
        match ws.next().await {
            Some(Ok(Message::Binary(d))) => first.push(d.to_vec()),
            other => panic!("{other:?}"),
        }
    }
    let le = port.to_le_bytes();
    assert!(first.contains(&vec![0, le[0], le[1]]), "{first:?}");
    assert!(first.contains(&vec![1, le[0], le[1]]), "{first:?}");
    ws.send(Message::Binary(b"\x00over websocket".to_vec().into()))
        .await
        .unwrap();
    let mut echoed = Vec::new();
    while echoed != b"over websocket" {
        match ws.next().await {
            Some(Ok(Message::Binary(d))) => {
                assert_eq!(d[0], 0);
                echoed.extend_from_slice(&d[1..]);
            }
            other => panic!("{other:?}"),
        }
    }
    drop(ws);
    assert!(eventually(10, || server.active_sessions() == 0).await);

    // Ports may also come from the URL.
    let url = server
        .get_port_forward_url(&PortForwardRequest {
            pod_sandbox_id: "pod".into(),
            ports: vec![],
        })
        .unwrap();
    let mut ws = ws_connect(&format!("{url}?port={port}"), "portforward.k8s.io").await;
    assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))));
}

// ---- bad input ---------------------------------------------------------

fn spdy_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "SPDY/3.1"),
        ("X-Stream-Protocol-Version", V4),
    ]
}

#[tokio::test]
async fn tokens_are_single_use_and_expire() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 1).await;
    let req = exec(&["true"], false, false, true, false);

    let url = server.get_exec_url(&req).unwrap();
    assert_eq!(
        http::request(&url, "POST", &spdy_headers()).await.status,
        101
    );
    let reused = http::request(&url, "POST", &spdy_headers()).await;
    assert_eq!(reused.status, 404);
    assert!(reused.body.contains("token"), "{}", reused.body);

    let (host, _) = http::split_url(&url);
    let unknown = format!("http://{host}/exec/AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(
        http::request(&unknown, "POST", &spdy_headers())
            .await
            .status,
        404
    );

    // A token for exec does not open an attach.
    let url = server.get_exec_url(&req).unwrap();
    let attach = url.replace("/exec/", "/attach/");
    assert_eq!(
        http::request(&attach, "POST", &spdy_headers()).await.status,
        404
    );

    let url = server.get_exec_url(&req).unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        http::request(&url, "POST", &spdy_headers()).await.status,
        404
    );
    assert_eq!(server.pending_urls(), 0);
}

#[tokio::test]
async fn malformed_upgrades_are_refused_with_a_reason() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(&["true"], false, false, true, false))
        .unwrap();
    type Headers = Vec<(&'static str, &'static str)>;
    let cases: Vec<(Headers, u16, &str)> = vec![
        (vec![], 400, "missing upgrade headers"),
        (
            vec![("Connection", "Upgrade"), ("Upgrade", "h2c")],
            400,
            "unsupported protocol",
        ),
        (
            vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
            400,
            "X-Stream-Protocol-Version is required",
        ),
        (
            vec![
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", "v9.channel.k8s.io"),
            ],
            403,
            "unable to negotiate protocol",
        ),
        (
            vec![
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "8"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            400,
            "Sec-WebSocket-Version",
        ),
        (
            vec![
                ("Connection", "Upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Version", "13"),
            ],
            400,
            "Sec-WebSocket-Key",
        ),
    ];
    for (headers, status, reason) in cases {
        let resp = http::request(&url, "GET", &headers).await;
        assert_eq!(resp.status, status, "{headers:?}: {}", resp.body);
        assert!(resp.body.contains(reason), "{headers:?}: {}", resp.body);
    }
    // None of that burned the token.
    assert_eq!(
        http::request(&url, "POST", &spdy_headers()).await.status,
        101
    );
    // Bad requests never get a URL.
    assert!(
        server
            .get_exec_url(&exec(&[], false, false, true, false))
            .is_err()
    );
    assert!(
        server
            .get_exec_url(&exec(&["sh"], true, false, true, true))
            .is_err()
    );
}

#[tokio::test]
async fn a_client_that_never_opens_its_streams_times_out() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(&["true"], false, false, true, false))
        .unwrap();
    let (client, _) = SpdyClient::connect(&url, &[V4]).await;
    let _error = client.open(&[("streamtype", "error")]).await;
    assert_eq!(server.active_sessions(), 1);
    // Stream creation timeout is 5 s in these tests.
    assert!(eventually(10, || server.active_sessions() == 0).await);
    assert!(backend.pids.lock().unwrap().is_empty(), "nothing ran");
}

// ---- clients that vanish or get stuck ------------------------------------

async fn wait_for_pid(backend: &HostBackend) -> u32 {
    assert!(eventually(10, || backend.last_pid().is_some()).await);
    backend.last_pid().unwrap()
}

#[tokio::test]
async fn spdy_client_vanishing_kills_the_process_and_ends_the_session() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(
            &sh("echo started; exec sleep 1000"),
            false,
            true,
            true,
            false,
        ))
        .unwrap();
    let (client, _) = SpdyClient::connect(&url, &[V4]).await;
    let _error = client.open(&[("streamtype", "error")]).await;
    let _stdin = client.open(&[("streamtype", "stdin")]).await;
    let mut stdout = client.open(&[("streamtype", "stdout")]).await;
    stdout.read_until("started", 10).await;
    let pid = wait_for_pid(&backend).await;
    assert!(process_alive(pid));
    drop(stdout);
    drop(client);
    assert!(
        eventually(10, || !process_alive(pid)).await,
        "process {pid} left behind"
    );
    assert!(eventually(10, || server.active_sessions() == 0).await);
    assert!(eventually(5, || *backend.finished.lock().unwrap() == 1).await);
}

#[tokio::test]
async fn websocket_client_vanishing_kills_the_process() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(
            &sh("echo started; exec sleep 1000"),
            true,
            true,
            true,
            false,
        ))
        .unwrap();
    let mut ws = ws_connect(&url, "v5.channel.k8s.io").await;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("started") {
        if let Some(Ok(Message::Binary(d))) = ws.next().await {
            seen.extend_from_slice(&d[1..]);
        }
    }
    let pid = wait_for_pid(&backend).await;
    drop(ws);
    assert!(
        eventually(10, || !process_alive(pid)).await,
        "process {pid} left behind"
    );
    assert!(eventually(10, || server.active_sessions() == 0).await);
}

#[tokio::test]
async fn a_stuck_client_does_not_stall_other_sessions() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    // A client that asks for endless output and never reads it.
    let url = server
        .get_exec_url(&exec(&["yes"], false, false, true, false))
        .unwrap();
    let (stuck, _) = SpdyClient::connect(&url, &[V4]).await;
    let _e = stuck.open(&[("streamtype", "error")]).await;
    let _o = stuck.open(&[("streamtype", "stdout")]).await;
    let stuck_pid = wait_for_pid(&backend).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Other sessions carry on meanwhile.
    for i in 0..3 {
        let url = server
            .get_exec_url(&exec(
                &sh(&format!("echo run {i}")),
                false,
                false,
                true,
                false,
            ))
            .unwrap();
        let (client, _) = SpdyClient::connect(&url, &[V4]).await;
        let mut error = client.open(&[("streamtype", "error")]).await;
        let mut out = client.open(&[("streamtype", "stdout")]).await;
        let got = tokio::time::timeout(Duration::from_secs(10), out.read_to_end(10))
            .await
            .expect("session stalled");
        assert_eq!(got.0, format!("run {i}\n").into_bytes());
        assert_eq!(exit_code(&status_json(&error.read_to_end(10).await.0)), 0);
    }
    assert!(process_alive(stuck_pid));
    drop(stuck);
    assert!(eventually(10, || !process_alive(stuck_pid)).await);
    assert!(eventually(10, || server.active_sessions() == 0).await);
}

#[tokio::test]
async fn shutdown_ends_running_sessions() {
    let backend = HostBackend::new();
    let server: StreamingServer = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(&["sleep", "1000"], false, false, true, false))
        .unwrap();
    let (client, _) = SpdyClient::connect(&url, &[V4]).await;
    let _e = client.open(&[("streamtype", "error")]).await;
    let _o = client.open(&[("streamtype", "stdout")]).await;
    let pid = wait_for_pid(&backend).await;
    server.shutdown(Duration::from_secs(10)).await;
    assert!(eventually(5, || !process_alive(pid)).await);
}

// ---- a client we did not write -----------------------------------------

fn python_with_websocket_client() -> &'static str {
    let has = |py: &str| {
        std::process::Command::new(py)
            .args(["-c", "import websocket"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !has("python3") {
        let status = std::process::Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "websocket-client"])
            .status()
            .expect("run pip");
        assert!(status.success(), "pip install websocket-client failed");
        assert!(has("python3"), "websocket-client still missing");
    }
    "python3"
}

#[tokio::test]
async fn python_websocket_client_speaks_v4_channel_protocol() {
    let python = python_with_websocket_client();
    let ns = Netns::new();
    let port = echo_server(ns.listen(), None);
    let backend = HostBackend::new();
    backend.add_pod("pod", Some(ns.path()));
    let server = start(backend.clone(), 60).await;
    let exec_url = server
        .get_exec_url(&exec(
            &sh("read line; echo out:$line; echo err >&2; exit 7"),
            false,
            true,
            true,
            true,
        ))
        .unwrap();
    let pf_url = server
        .get_port_forward_url(&PortForwardRequest {
            pod_sandbox_id: "pod".into(),
            ports: vec![port],
        })
        .unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/streaming_py/ws_client.py"
    );
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(exec_url.replace("http://", "ws://"))
        .arg(pf_url.replace("http://", "ws://"))
        .arg(port.to_string())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed: {stderr}");
    let result: Value = serde_json::from_slice(&output.stdout).expect("python output");
    assert_eq!(result["stdout"], "out:from python\n", "{result}");
    assert_eq!(result["stderr"], "err\n", "{result}");
    assert_eq!(result["exit_code"], 7, "{result}");
    assert_eq!(result["forwarded"], "echo via python", "{result}");
    assert!(eventually(10, || server.active_sessions() == 0).await);
}

#[tokio::test]
async fn spdy_ping_is_answered() {
    let backend = HostBackend::new();
    let server = start(backend.clone(), 60).await;
    let url = server
        .get_exec_url(&exec(&["sleep", "1000"], false, false, true, false))
        .unwrap();
    let (host, path) = http::split_url(&url);
    let mut tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: {V4}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    // PING id 1, byte for byte, comes back unchanged.
    let ping = [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1];
    tcp.write_all(&ping).await.unwrap();
    let mut back = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, ping);
    drop(tcp);
    assert!(eventually(10, || server.active_sessions() == 0).await);
    let _ = Arc::strong_count(&backend);
}
