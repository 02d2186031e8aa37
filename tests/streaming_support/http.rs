//! Raw HTTP/1.1 upgrade requests, so tests control every header.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub stream: TcpStream,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `http://host:port/path` into (host:port, path).
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("path in URL");
    (host.to_string(), format!("/{path}"))
}

/// Sends a request with `headers` and reads the response head (and body,
/// when it has a Content-Length).
pub async fn request(url: &str, method: &str, headers: &[(&str, &str)]) -> Response {
    let (host, path) = split_url(url);
    let mut stream = TcpStream::connect(&host).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .expect("send request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response in time")
            .expect("read response");
        assert_eq!(n, 1, "connection closed before the response head ended");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("utf8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let mut resp = Response {
        status,
        headers,
        body: String::new(),
        stream,
    };
    if let Some(len) = resp
        .header("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        resp.stream.read_exact(&mut body).await.expect("body");
        resp.body = String::from_utf8_lossy(&body).into_owned();
    }
    resp
}
