//! Clients of the streaming server (the URLs of CRI Exec, Attach and
//! PortForward): the SPDY/3.1 client and raw HTTP requests written for the
//! streaming server's own tests (shared from `tests/streaming_support/`,
//! not copied), WebSocket over tokio-tungstenite, the exit Status, and
//! sessions built from them.

#[path = "../../tests/streaming_support/http.rs"]
pub mod http;
#[path = "../../tests/streaming_support/spdy_client.rs"]
pub mod spdy_client;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub use spdy_client::{ClientStream, SpdyClient};

pub const V4: &str = "v4.channel.k8s.io";
pub const V5: &str = "v5.channel.k8s.io";
pub const PORT_FORWARD: &str = "portforward.k8s.io";

/// The exit Status JSON of the error stream (v4 and later).
pub fn status_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("status {:?}: {e}", String::from_utf8_lossy(bytes)))
}

/// The exit code a Status carries, as kubectl reads it.
pub fn exit_code(status: &Value) -> i64 {
    if status["status"] == "Success" {
        return 0;
    }
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    let cause = &status["details"]["causes"][0];
    assert_eq!(cause["reason"], "ExitCode", "{status}");
    cause["message"]
        .as_str()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no exit code in {status}"))
}

/// An exec or attach session over SPDY, with the streams it asked for.
pub struct SpdySession {
    pub client: SpdyClient,
    pub error: ClientStream,
    pub stdin: Option<ClientStream>,
    pub stdout: Option<ClientStream>,
    pub stderr: Option<ClientStream>,
    pub resize: Option<ClientStream>,
}

impl SpdySession {
    /// Connects to an exec or attach URL with `v4.channel.k8s.io` and opens
    /// the streams (a resize stream with `tty`).
    pub async fn open(url: &str, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Self {
        let (client, protocol) = SpdyClient::connect(url, &[V4]).await;
        assert_eq!(protocol, V4);
        let error = client.open(&[("streamtype", "error")]).await;
        let mut session = Self {
            error,
            stdin: None,
            stdout: None,
            stderr: None,
            resize: None,
            client,
        };
        if stdin {
            session.stdin = Some(session.client.open(&[("streamtype", "stdin")]).await);
        }
        if stdout {
            session.stdout = Some(session.client.open(&[("streamtype", "stdout")]).await);
        }
        if stderr {
            session.stderr = Some(session.client.open(&[("streamtype", "stderr")]).await);
        }
        if tty {
            session.resize = Some(session.client.open(&[("streamtype", "resize")]).await);
        }
        session
    }

    pub async fn send_stdin(&self, data: &[u8]) {
        let id = self.stdin.as_ref().expect("a stdin stream").id;
        self.client.send(id, data, false).await;
    }

    /// FIN on stdin: the client's input ended.
    pub async fn close_stdin(&self) {
        let id = self.stdin.as_ref().expect("a stdin stream").id;
        self.client.send(id, b"", true).await;
    }

    pub async fn resize(&self, width: u16, height: u16) {
        let id = self.resize.as_ref().expect("a resize stream").id;
        let event = format!(r#"{{"Width":{width},"Height":{height}}}"#);
        self.client.send(id, event.as_bytes(), false).await;
    }

    pub fn stdout(&mut self) -> &mut ClientStream {
        self.stdout.as_mut().expect("a stdout stream")
    }

    pub fn stderr(&mut self) -> &mut ClientStream {
        self.stderr.as_mut().expect("a stderr stream")
    }

    /// The Status the session ended with.
    pub async fn status(&mut self, secs: u64) -> Value {
        let (bytes, fin) = self.error.read_to_end(secs).await;
        assert!(
            fin,
            "error stream did not end: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        status_json(&bytes)
    }
}

/// One forwarded connection over SPDY: sends `request`, half-closes, and
/// returns (what came back until the end, what the error stream said).
pub async fn spdy_forward(url: &str, port: u16, request: &[u8]) -> (Vec<u8>, String) {
    let (client, protocol) = SpdyClient::connect(url, &[PORT_FORWARD]).await;
    assert_eq!(protocol, PORT_FORWARD);
    let port = port.to_string();
    let mut error = client
        .open(&[("streamtype", "error"), ("port", &port), ("requestid", "0")])
        .await;
    let mut data = client
        .open(&[("streamtype", "data"), ("port", &port), ("requestid", "0")])
        .await;
    client.send(data.id, request, false).await;
    client.send(data.id, b"", true).await;
    let ((reply, _), (err, _)) = tokio::join!(data.read_to_end(20), error.read_to_end(20));
    (reply, String::from_utf8_lossy(&err).into_owned())
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Upgrades `url` to a WebSocket offering `protocol`, which the server must
/// pick.
pub async fn ws_connect(url: &str, protocol: &str) -> Ws {
    let mut req = url
        .replace("http://", "ws://")
        .into_client_request()
        .expect("WebSocket request");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocol.parse().expect("header value"),
    );
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("WebSocket connect");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some(protocol)
    );
    ws
}

/// Channel payloads until the server closes the WebSocket.
pub async fn ws_collect(ws: &mut Ws, secs: u64) -> BTreeMap<u8, Vec<u8>> {
    let mut channels = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Binary(data)))) => {
                let Some((ch, payload)) = data.split_first() else {
                    continue;
                };
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
