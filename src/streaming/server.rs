//! The HTTP side: routing `/exec/<token>`, `/attach/<token>` and
//! `/portforward/<token>`, checking the upgrade request, negotiating the
//! protocol, consuming the token, answering 101 and handing the upgraded
//! connection to a session task.
//!
//! Order of checks: the request's shape first (400, 403 for an SPDY
//! protocol mismatch as kubelet answers), so a malformed request does not
//! burn its token; then the token (404 when unknown, used or expired).

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{CONNECTION, HeaderMap, HeaderName, HeaderValue, UPGRADE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::Inner;
use super::portforward;
use super::remotecommand::{self, Action, Protocol};
use super::token::CachedRequest;

const SPDY: &str = "SPDY/3.1";
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";
const PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_HEADER: &str = "x-accepted-stream-protocol-versions";

type Body = Full<Bytes>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exec,
    Attach,
    PortForward,
}

enum Transport {
    Spdy,
    WebSocket,
}

/// A refusal: status, a reason for the body, extra headers.
#[derive(Debug)]
struct Reject {
    status: StatusCode,
    reason: String,
    headers: Vec<(&'static str, String)>,
}

fn reject(status: StatusCode, reason: impl Into<String>) -> Reject {
    Reject {
        status,
        reason: reason.into(),
        headers: Vec::new(),
    }
}

impl Reject {
    fn into_response(self) -> Response<Body> {
        let mut resp = Response::new(Full::new(Bytes::from(format!("{}\n", self.reason))));
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.append(HeaderName::from_static(name), value);
            }
        }
        resp
    }
}

pub async fn handle(
    inner: Arc<Inner>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let response = match route(&inner, &mut req) {
        Ok(resp) => resp,
        Err(r) => {
            tracing::debug!(path = req.uri().path(), status = %r.status, reason = %r.reason,
                "streaming request refused");
            r.into_response()
        }
    };
    Ok(response)
}

fn parse_path(path: &str) -> Option<(Kind, &str)> {
    let (kind, token) = path.strip_prefix('/')?.split_once('/')?;
    let kind = match kind {
        "exec" => Kind::Exec,
        "attach" => Kind::Attach,
        "portforward" => Kind::PortForward,
        _ => return None,
    };
    (!token.is_empty() && !token.contains('/')).then_some((kind, token))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// All values of `name`, split at commas.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn transport(headers: &HeaderMap) -> Result<Transport, Reject> {
    let connection_upgrade = header_list(headers, CONNECTION.as_str())
        .iter()
        .any(|t| t.eq_ignore_ascii_case("upgrade"));
    let upgrade = header(headers, UPGRADE.as_str());
    let (true, Some(upgrade)) = (connection_upgrade, upgrade) else {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request (need Connection: Upgrade \
             and Upgrade: SPDY/3.1 or websocket)",
        ));
    };
    if upgrade.eq_ignore_ascii_case(SPDY) {
        Ok(Transport::Spdy)
    } else if upgrade.eq_ignore_ascii_case("websocket") {
        Ok(Transport::WebSocket)
    } else {
        Err(reject(
            StatusCode::BAD_REQUEST,
            format!(
                "unable to upgrade: unsupported protocol {upgrade:?}; supported: SPDY/3.1, websocket"
            ),
        ))
    }
}

fn spdy_protocols(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::PortForward => vec![PORT_FORWARD_PROTOCOL],
        _ => Protocol::SPDY.iter().map(|p| p.name()).collect(),
    }
}

/// The first protocol in the client's order that the server speaks.
fn negotiate_spdy(headers: &HeaderMap, kind: Kind) -> Result<&'static str, Reject> {
    let offered = header_list(headers, PROTOCOL_HEADER);
    if offered.is_empty() {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required",
        ));
    }
    let supported = spdy_protocols(kind);
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
        .ok_or_else(|| Reject {
            status: StatusCode::FORBIDDEN,
            reason: format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, \
                 server accepts {supported:?}"
            ),
            headers: supported
                .iter()
                .map(|s| (ACCEPTED_HEADER, s.to_string()))
                .collect(),
        })
}

fn ws_protocols(kind: Kind) -> Vec<&'static str> {
    match kind {
        Kind::PortForward => vec![
            Protocol::V4.name(),
            PORT_FORWARD_PROTOCOL,
            Protocol::V1.name(),
        ],
        _ => Protocol::WEBSOCKET.iter().map(|p| p.name()).collect(),
    }
}

/// Checks the WebSocket handshake and picks the subprotocol ("" when the
/// client offers none). Returns (accept key, subprotocol).
fn websocket_handshake(
    method: &Method,
    headers: &HeaderMap,
    kind: Kind,
) -> Result<(String, &'static str), Reject> {
    let bad = |reason: String| reject(StatusCode::BAD_REQUEST, reason);
    if method != Method::GET {
        return Err(bad(format!(
            "unable to upgrade: a WebSocket handshake must use GET, not {method}"
        )));
    }
    if header(headers, "sec-websocket-version") != Some("13") {
        let mut r = bad("unable to upgrade: Sec-WebSocket-Version must be 13".into());
        r.headers.push(("sec-websocket-version", "13".into()));
        return Err(r);
    }
    let key = header(headers, "sec-websocket-key").unwrap_or("");
    if STANDARD.decode(key.trim()).map(|k| k.len()) != Ok(16) {
        return Err(bad(
            "unable to upgrade: Sec-WebSocket-Key must be 16 bytes in base64".into(),
        ));
    }
    let offered = header_list(headers, "sec-websocket-protocol");
    let supported = ws_protocols(kind);
    let chosen = if offered.is_empty() {
        ""
    } else {
        offered
            .iter()
            .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
            .ok_or_else(|| {
                bad(format!(
                    "unable to upgrade: requested protocol(s) are not supported: {offered:?}; \
                     supports {supported:?}"
                ))
            })?
    };
    Ok((derive_accept_key(key.trim().as_bytes()), chosen))
}

fn ws_exec_protocol(name: &str) -> Protocol {
    match name {
        "v5.channel.k8s.io" => Protocol::V5,
        "v4.channel.k8s.io" => Protocol::V4,
        _ => Protocol::V1,
    }
}

fn spdy_exec_protocol(name: &str) -> Protocol {
    Protocol::SPDY
        .into_iter()
        .find(|p| p.name() == name)
        .unwrap_or(Protocol::V1)
}

/// Ports named in the URL (`?port=80&port=8080` or `?port=80,8080`).
fn query_ports(query: Option<&str>) -> Result<Vec<u16>, Reject> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or("").split('&') {
        let Some(("port", value)) = pair.split_once('=') else {
            continue;
        };
        for p in value.split(',') {
            match p.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => {
                    return Err(reject(
                        StatusCode::BAD_REQUEST,
                        format!("unable to parse {p:?} as a port"),
                    ));
                }
            }
        }
    }
    Ok(ports)
}

fn consume(inner: &Inner, token: &str, kind: Kind) -> Result<CachedRequest, Reject> {
    let not_found = || {
        reject(
            StatusCode::NOT_FOUND,
            "unknown, used or expired streaming token",
        )
    };
    let request = inner.tokens.consume(token).ok_or_else(not_found)?;
    let matches = matches!(
        (&request, kind),
        (CachedRequest::Exec(_), Kind::Exec)
            | (CachedRequest::Attach(_), Kind::Attach)
            | (CachedRequest::PortForward(_), Kind::PortForward)
    );
    if matches {
        Ok(request)
    } else {
        Err(not_found())
    }
}

fn switching(upgrade: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    resp.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static(upgrade));
    resp
}

fn route(inner: &Arc<Inner>, req: &mut Request<Incoming>) -> Result<Response<Body>, Reject> {
    let Some((kind, token)) = parse_path(req.uri().path()) else {
        return Err(reject(StatusCode::NOT_FOUND, "not found"));
    };
    let token = token.to_string();
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(reject(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"));
    }
    let ctx = inner.session_ctx();
    match transport(req.headers())? {
        Transport::Spdy => {
            let protocol = negotiate_spdy(req.headers(), kind)?;
            let request = consume(inner, &token, kind)?;
            let on_upgrade = hyper::upgrade::on(&mut *req);
            inner.sessions.spawn(async move {
                let io = match on_upgrade.await {
                    Ok(upgraded) => TokioIo::new(upgraded),
                    Err(e) => {
                        tracing::debug!(error = %e, "SPDY upgrade failed");
                        return;
                    }
                };
                match request {
                    CachedRequest::Exec(r) => {
                        let p = spdy_exec_protocol(protocol);
                        remotecommand::spdy::serve(io, p, Action::Exec(r), ctx).await
                    }
                    CachedRequest::Attach(r) => {
                        let p = spdy_exec_protocol(protocol);
                        remotecommand::spdy::serve(io, p, Action::Attach(r), ctx).await
                    }
                    CachedRequest::PortForward(r) => {
                        portforward::spdy::serve(io, r.pod_sandbox_id, ctx).await
                    }
                }
            });
            let mut resp = switching(SPDY);
            resp.headers_mut()
                .insert(PROTOCOL_HEADER, HeaderValue::from_static(protocol));
            Ok(resp)
        }
        Transport::WebSocket => {
            let (accept, protocol) = websocket_handshake(req.method(), req.headers(), kind)?;
            let query = query_ports(req.uri().query())?;
            let request = consume(inner, &token, kind)?;
            let request = match request {
                CachedRequest::PortForward(mut r) => {
                    if r.ports.is_empty() {
                        r.ports = query;
                    }
                    if r.ports.is_empty() {
                        return Err(reject(
                            StatusCode::BAD_REQUEST,
                            "no ports to forward: name them in the PortForward request or the \
                             URL's port parameter",
                        ));
                    }
                    CachedRequest::PortForward(r)
                }
                other => other,
            };
            let on_upgrade = hyper::upgrade::on(&mut *req);
            inner.sessions.spawn(async move {
                let io = match on_upgrade.await {
                    Ok(upgraded) => TokioIo::new(upgraded),
                    Err(e) => {
                        tracing::debug!(error = %e, "WebSocket upgrade failed");
                        return;
                    }
                };
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                let p = ws_exec_protocol(protocol);
                match request {
                    CachedRequest::Exec(r) => {
                        remotecommand::websocket::serve(ws, p, Action::Exec(r), ctx).await
                    }
                    CachedRequest::Attach(r) => {
                        remotecommand::websocket::serve(ws, p, Action::Attach(r), ctx).await
                    }
                    CachedRequest::PortForward(r) => {
                        portforward::websocket::serve(ws, r.pod_sandbox_id, r.ports, ctx).await
                    }
                }
            });
            let mut resp = switching("websocket");
            let headers = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&accept) {
                headers.insert("sec-websocket-accept", v);
            }
            if !protocol.is_empty() {
                headers.insert("sec-websocket-protocol", HeaderValue::from_static(protocol));
            }
            Ok(resp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path("/exec/abc"), Some((Kind::Exec, "abc")));
        assert_eq!(parse_path("/portforward/x"), Some((Kind::PortForward, "x")));
        assert_eq!(parse_path("/exec/"), None);
        assert_eq!(parse_path("/exec/a/b"), None);
        assert_eq!(parse_path("/run/a"), None);
    }

    #[test]
    fn spdy_negotiation_follows_the_client_order() {
        let h = headers(&[
            (PROTOCOL_HEADER, "v4.channel.k8s.io"),
            (PROTOCOL_HEADER, "v5.channel.k8s.io, channel.k8s.io"),
        ]);
        assert_eq!(
            negotiate_spdy(&h, Kind::Exec).ok(),
            Some("v4.channel.k8s.io")
        );
        let h = headers(&[(PROTOCOL_HEADER, "v9.channel.k8s.io")]);
        let r = negotiate_spdy(&h, Kind::Exec).err().unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.headers.iter().any(|(n, _)| *n == ACCEPTED_HEADER));
        let r = negotiate_spdy(&HeaderMap::new(), Kind::Exec).err().unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let h = headers(&[(PROTOCOL_HEADER, "portforward.k8s.io")]);
        assert_eq!(
            negotiate_spdy(&h, Kind::PortForward).ok(),
            Some("portforward.k8s.io")
        );
        assert!(negotiate_spdy(&h, Kind::Exec).is_err());
    }

    #[test]
    fn transports() {
        let ok = |u| {
            transport(&headers(&[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", u),
            ]))
        };
        assert!(matches!(ok("spdy/3.1"), Ok(Transport::Spdy)));
        assert!(matches!(ok("WebSocket"), Ok(Transport::WebSocket)));
        assert!(ok("h2c").is_err());
        assert!(transport(&headers(&[("upgrade", "websocket")])).is_err());
    }

    #[test]
    fn websocket_checks() {
        let base = [
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let (accept, p) = websocket_handshake(&Method::GET, &headers(&base), Kind::Exec).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(p, "");
        let mut with = base.to_vec();
        with.push((
            "sec-websocket-protocol",
            "v5.channel.k8s.io, v4.channel.k8s.io",
        ));
        let (_, p) = websocket_handshake(&Method::GET, &headers(&with), Kind::Exec).unwrap();
        assert_eq!(p, "v5.channel.k8s.io");
        let (_, p) = websocket_handshake(&Method::GET, &headers(&with), Kind::PortForward).unwrap();
        assert_eq!(p, "v4.channel.k8s.io");
        assert!(websocket_handshake(&Method::POST, &headers(&base), Kind::Exec).is_err());
        let bad_key = [
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "short"),
        ];
        assert!(websocket_handshake(&Method::GET, &headers(&bad_key), Kind::Exec).is_err());
        let mut unknown = base.to_vec();
        unknown.push(("sec-websocket-protocol", "base64.channel.k8s.io"));
        assert!(websocket_handshake(&Method::GET, &headers(&unknown), Kind::Exec).is_err());
    }

    #[test]
    fn ports_from_the_query() {
        assert_eq!(
            query_ports(Some("port=80&port=81,82")).ok(),
            Some(vec![80, 81, 82])
        );
        assert_eq!(query_ports(None).ok(), Some(vec![]));
        assert!(query_ports(Some("port=x")).is_err());
        assert!(query_ports(Some("port=0")).is_err());
    }
}
