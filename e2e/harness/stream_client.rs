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

/// Reads `stream` until what came in this call contains `needle`; false
/// when `within` passes or the stream ends first.
pub async fn saw(stream: &mut ClientStream, needle: &str, within: Duration) -> bool {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout_at(deadline, stream.rx.recv()).await {
            Ok(Some(spdy_client::Ev::Data(d))) => got.extend_from_slice(&d),
            _ => return false,
        }
    }
    true
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

/// A user's terminal on the client side of an exec or attach, the way
/// `crictl exec -it` or `kubectl exec -it` runs in one: a real pty whose
/// slave is the client's terminal, in raw mode, its input relayed to the
/// session's stdin and the session's output written back to it; the
/// terminal's size is sent at start and again on every change (the
/// client's SIGWINCH). The test is the terminal emulator: it types into
/// the master and reads the screen from it.
pub struct ClientTerminal {
    screen_rx: tokio::net::unix::pipe::Receiver,
    keys: tokio::net::unix::pipe::Sender,
    master: std::os::fd::OwnedFd,
    winch: tokio::sync::mpsc::UnboundedSender<()>,
    relay: tokio::task::JoinHandle<Value>,
    /// Everything shown so far.
    pub screen: String,
}

impl ClientTerminal {
    /// Opens `url` (exec or attach with a tty and stdin) over SPDY from a
    /// terminal of `cols` x `rows`.
    pub async fn open(url: &str, cols: u16, rows: u16) -> Self {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        use std::os::fd::AsFd;
        use tokio::io::AsyncWriteExt;
        let size = nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        // Raw, as a client puts its terminal: every key goes through as a
        // byte (^C included), nothing is echoed locally.
        let mut t = tcgetattr(&pty.slave).expect("tcgetattr");
        cfmakeraw(&mut t);
        tcsetattr(&pty.slave, SetArg::TCSANOW, &t).expect("tcsetattr");
        let nonblocking = |fd: &std::os::fd::OwnedFd| {
            let fd = fd.try_clone().expect("dup");
            let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
            let flags =
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
            fd
        };
        use tokio::net::unix::pipe::{Receiver, Sender};
        let screen_rx = Receiver::from_owned_fd_unchecked(nonblocking(&pty.master)).unwrap();
        let keys = Sender::from_owned_fd_unchecked(nonblocking(&pty.master)).unwrap();
        let mut tty_in = Receiver::from_owned_fd_unchecked(nonblocking(&pty.slave)).unwrap();
        let mut tty_out = Sender::from_owned_fd_unchecked(nonblocking(&pty.slave)).unwrap();
        let slave = pty.slave;

        let session = SpdySession::open(url, true, true, false, true).await;
        let (winch, mut winched) = tokio::sync::mpsc::unbounded_channel::<()>();
        let relay = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let SpdySession {
                client,
                mut error,
                stdin,
                stdout,
                resize,
                ..
            } = session;
            let (stdin, mut stdout, resize) = (
                stdin.expect("stdin").id,
                stdout.expect("stdout"),
                resize.expect("resize").id,
            );
            let send_size = |slave: &std::os::fd::OwnedFd| {
                let (cols, rows) =
                    ketch::executor::console::size(slave.as_fd()).expect("TIOCGWINSZ");
                format!(r#"{{"Width":{cols},"Height":{rows}}}"#)
            };
            client
                .send(resize, send_size(&slave).as_bytes(), false)
                .await;
            let mut buf = vec![0u8; 4096];
            loop {
                tokio::select! {
                    n = tty_in.read(&mut buf) => match n {
                        Ok(n) if n > 0 => client.send(stdin, &buf[..n], false).await,
                        _ => break,
                    },
                    ev = stdout.rx.recv() => match ev {
                        Some(spdy_client::Ev::Data(d)) => {
                            if tty_out.write_all(&d).await.is_err() {
                                break;
                            }
                        }
                        _ => break,
                    },
                    Some(()) = winched.recv() => {
                        client.send(resize, send_size(&slave).as_bytes(), false).await;
                    }
                }
            }
            let (bytes, fin) = error.read_to_end(10).await;
            assert!(fin, "error stream: {:?}", String::from_utf8_lossy(&bytes));
            drop(client);
            status_json(&bytes)
        });
        Self {
            screen_rx,
            keys,
            master: pty.master,
            winch,
            relay,
            screen: String::new(),
        }
    }

    /// Types `keys` (a raw terminal sends Enter as `\r`, Ctrl-C as 0x03).
    pub async fn type_keys(&mut self, keys: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.keys.write_all(keys).await.expect("type");
    }

    /// Reads the screen until what came since the last call to this
    /// contains `needle`; returns that part.
    pub async fn wait_for(&mut self, needle: &str, secs: u64) -> String {
        use tokio::io::AsyncReadExt;
        let from = self.screen.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = vec![0u8; 4096];
        while !self.screen[from..].contains(needle) {
            match tokio::time::timeout_at(deadline, self.screen_rx.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => self.screen.push_str(&String::from_utf8_lossy(&buf[..n])),
                other => panic!(
                    "no {needle:?} on the screen ({other:?}): {:?}",
                    &self.screen[from..]
                ),
            }
        }
        self.screen[from..].to_owned()
    }

    /// The user resizes the terminal window.
    pub fn resize(&self, cols: u16, rows: u16) {
        use std::os::fd::AsFd;
        ketch::executor::console::resize(self.master.as_fd(), cols, rows).expect("TIOCSWINSZ");
        let _ = self.winch.send(());
    }

    /// The Status the session ended with.
    pub async fn status(self) -> Value {
        tokio::time::timeout(Duration::from_secs(20), self.relay)
            .await
            .expect("the session ends")
            .expect("relay")
    }
}
