//! A client of the OCI distribution API (pull side), on `reqwest` + rustls.
//!
//! Hand-written instead of `oci-client` because the pull path needs, on
//! every request, things that crate does not offer: mirrors tried in order
//! before the origin (with their own TLS settings), HTTPS with a fallback to
//! plain HTTP for loopback and insecure registries (containerd's rule), a
//! per-registry CA next to the system roots, the CRI's identity tokens
//! (OAuth2 refresh-token grant) and registry tokens, size limits on
//! manifests, and raw blob streams fed into our own verifier and unpacker.
//! The protocol part is small: `GET /v2/<repo>/manifests/<ref>`,
//! `GET /v2/<repo>/blobs/<digest>` (redirects followed; reqwest drops the
//! `Authorization` header on a cross-host redirect), and the 401 challenge:
//! `Basic` (credentials sent as is) or `Bearer realm=..,service=..,scope=..`
//! (a token fetched from the realm, cached until it expires).
//!
//! TLS roots are the system's (rustls-platform-verifier) plus the
//! registry's `ca_file`; the crypto provider is ring, installed as the
//! process default on first use.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::digest::Digest;
use super::error::ImageError;
use super::reference::{DOCKER_HUB, Reference, api_host};
use crate::config::Config;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A transfer that delivers nothing for this long is given up.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Token lifetime when the server does not say (the distribution spec's).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("ketch/", env!("CARGO_PKG_VERSION"));

/// Credentials for a registry, in domain terms (the CRI `AuthConfig`
/// mapped by the CRI layer).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The registry these credentials are for (`host[:port]`, a URL is
    /// accepted). Empty: any registry of the pull, mirrors included, as
    /// containerd does.
    pub server_address: String,
    pub credentials: Credentials,
}

/// How to prove who we are.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    /// Username and password: HTTP basic, or exchanged for a bearer token.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token, exchanged at the token realm.
    IdentityToken { username: String, token: String },
    /// A bearer token sent as is.
    RegistryToken(String),
}

impl std::fmt::Debug for Credentials {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken { username, .. } => {
                write!(f, "IdentityToken({username}, ***)")
            }
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(***)"),
        }
    }
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server_address", &self.server_address)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl RegistryAuth {
    /// Username and password for any registry.
    pub fn basic(username: &str, password: &str) -> RegistryAuth {
        RegistryAuth {
            server_address: String::new(),
            credentials: Credentials::Basic {
                username: username.into(),
                password: password.into(),
            },
        }
    }

    /// Whether these credentials may be sent to `host`.
    fn applies_to(&self, host: &str) -> bool {
        if self.server_address.is_empty() {
            return true;
        }
        let mut server = self.server_address.as_str();
        for scheme in ["https://", "http://"] {
            server = server.strip_prefix(scheme).unwrap_or(server);
        }
        let server = server.split('/').next().unwrap_or("");
        let norm = |h: &str| -> String {
            match h {
                "index.docker.io" | "registry-1.docker.io" | DOCKER_HUB => DOCKER_HUB.into(),
                other => other.to_owned(),
            }
        };
        norm(server) == norm(host)
    }

    /// `username:password` of basic credentials, base64 (an `auth` field).
    pub fn decode_auth_field(auth: &str) -> Result<(String, String), ImageError> {
        let bad = |reason: &str| ImageError::InvalidArgument(format!("auth field: {reason}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad("not base64"))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| bad("expected base64 of username:password"))?;
        Ok((user.to_owned(), password.to_owned()))
    }
}

/// How an endpoint may be spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Scheme {
    Https,
    Http,
    /// HTTPS, and plain HTTP if the server does not speak TLS.
    HttpsThenHttp,
}

/// One place the repository can be fetched from: a mirror or the origin.
#[derive(Clone, Debug)]
struct Endpoint {
    /// `host[:port]`, for errors, credentials and the scheme cache.
    host: String,
    /// A path prefix before `/v2` (mirrors may have one).
    prefix: String,
    scheme: Scheme,
    tls: TlsSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
struct TlsSettings {
    ca_file: Option<PathBuf>,
    skip_verify: bool,
}

/// Whether `host[:port]` is a loopback name or address.
pub fn is_loopback(host: &str) -> bool {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    bare == "localhost"
        || bare.ends_with(".localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// (host, repository, identity) an `Authorization` value is good for.
type TokenKey = (String, String, String);

/// The shared client: HTTP clients per TLS setting, learned schemes, and
/// bearer tokens, reused across pulls.
pub struct RegistryClient {
    config: Arc<Config>,
    clients: Mutex<HashMap<TlsSettings, reqwest::Client>>,
    /// The scheme that worked for hosts that may use either.
    schemes: Mutex<HashMap<String, Scheme>>,
    /// `Authorization` values by (host, repository, identity).
    tokens: Mutex<HashMap<TokenKey, (HeaderValue, Option<Instant>)>>,
}

impl RegistryClient {
    pub fn new(config: Arc<Config>) -> RegistryClient {
        static PROVIDER: Once = Once::new();
        PROVIDER.call_once(|| {
            // Fails only if another provider was installed first: fine too.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        RegistryClient {
            config,
            clients: Mutex::new(HashMap::new()),
            schemes: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// A session for pulling from `reference`'s repository.
    pub fn session(
        self: &Arc<Self>,
        reference: &Reference,
        auth: Option<RegistryAuth>,
    ) -> Result<Session, ImageError> {
        let registry = &reference.registry;
        let settings = self.config.registry(registry);
        let mut endpoints = Vec::new();
        for mirror in &settings.mirrors {
            endpoints.push(self.mirror_endpoint(mirror)?);
        }
        let host = api_host(registry).to_owned();
        let scheme = if settings.insecure || is_loopback(&host) {
            Scheme::HttpsThenHttp
        } else {
            Scheme::Https
        };
        endpoints.push(Endpoint {
            host,
            prefix: String::new(),
            scheme,
            tls: TlsSettings {
                ca_file: settings.ca_file.clone(),
                skip_verify: settings.insecure,
            },
        });
        Ok(Session {
            client: self.clone(),
            registry: registry.clone(),
            repository: reference.repository.clone(),
            endpoints,
            auth,
            dead: Mutex::new(HashSet::new()),
        })
    }

    fn mirror_endpoint(&self, url: &str) -> Result<Endpoint, ImageError> {
        let bad = |reason: &str| ImageError::InvalidArgument(format!("mirror {url:?}: {reason}"));
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else {
            return Err(bad("must start with http:// or https://"));
        };
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let prefix = prefix.strip_suffix("/v2").unwrap_or(prefix);
        let settings = self.config.registry(host);
        Ok(Endpoint {
            host: host.to_owned(),
            prefix: prefix.to_owned(),
            scheme,
            tls: TlsSettings {
                ca_file: settings.ca_file.clone(),
                skip_verify: settings.insecure,
            },
        })
    }

    fn http_client(&self, tls: &TlsSettings, host: &str) -> Result<reqwest::Client, ImageError> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| ImageError::Internal("registry client lock poisoned".into()))?;
        if let Some(c) = clients.get(tls) {
            return Ok(c.clone());
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT);
        if tls.skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca).map_err(|e| ImageError::io("read CA file", ca, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ImageError::InvalidArgument(format!("CA file {} for {host}: {e}", ca.display()))
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build().map_err(|e| ImageError::Network {
            registry: host.to_owned(),
            message: format!("cannot build HTTP client: {}", crate::errors::chain(&e)),
        })?;
        clients.insert(tls.clone(), client.clone());
        Ok(client)
    }
}

/// Pulling from one repository: the endpoints to try and the credentials.
pub struct Session {
    client: Arc<RegistryClient>,
    /// The registry as named in the reference (for errors).
    registry: String,
    repository: String,
    endpoints: Vec<Endpoint>,
    auth: Option<RegistryAuth>,
    /// Endpoints that failed to connect during this session.
    dead: Mutex<HashSet<usize>>,
}

/// A manifest as fetched.
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

impl Session {
    /// `GET /v2/<repo>/manifests/<reference>`, at most `limit` bytes.
    pub async fn manifest(
        &self,
        reference: &str,
        limit: u64,
    ) -> Result<FetchedManifest, ImageError> {
        let name = format!("{}:{reference}", self.repository);
        let what = format!("manifest {name}");
        let resp = self
            .get(
                &format!("manifests/{reference}"),
                Some(super::manifest::MANIFEST_ACCEPT),
                &what,
            )
            .await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_limited(resp, limit, "manifest", &name, &self.registry).await?;
        Ok(FetchedManifest {
            bytes,
            content_type,
        })
    }

    /// `GET /v2/<repo>/blobs/<digest>`: the response, to be streamed.
    pub async fn blob(&self, digest: &Digest) -> Result<reqwest::Response, ImageError> {
        self.get(&format!("blobs/{digest}"), None, &format!("blob {digest}"))
            .await
    }

    /// A small blob (a config), whole, at most `limit` bytes.
    pub async fn blob_bytes(
        &self,
        digest: &Digest,
        limit: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, ImageError> {
        let resp = self.blob(digest).await?;
        read_limited(resp, limit, what, digest.as_str(), &self.registry).await
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// Tries each endpoint in order (mirrors first) and returns the first
    /// success; otherwise the origin's error (mirror failures are logged).
    async fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, ImageError> {
        let mut last_err = None;
        for (i, ep) in self.endpoints.iter().enumerate() {
            let is_origin = i + 1 == self.endpoints.len();
            if !is_origin && self.dead.lock().is_ok_and(|d| d.contains(&i)) {
                continue;
            }
            match self.get_from(ep, path, accept, what).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    if !is_origin {
                        tracing::info!(mirror = %ep.host, error = %e, "mirror failed; trying the next endpoint");
                        if matches!(e, ImageError::Network { .. })
                            && let Ok(mut dead) = self.dead.lock()
                        {
                            dead.insert(i);
                        }
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| ImageError::Internal("no registry endpoint".into())))
    }

    async fn get_from(
        &self,
        ep: &Endpoint,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, ImageError> {
        let known = self
            .client
            .schemes
            .lock()
            .ok()
            .and_then(|s| s.get(&ep.host).copied());
        let schemes: Vec<Scheme> = match (ep.scheme, known) {
            (Scheme::HttpsThenHttp, Some(s)) => vec![s],
            (Scheme::HttpsThenHttp, None) => vec![Scheme::Https, Scheme::Http],
            (s, _) => vec![s],
        };
        let mut first_err = None;
        for scheme in schemes {
            let url = format!(
                "{}://{}{}/v2/{}/{path}",
                if scheme == Scheme::Http {
                    "http"
                } else {
                    "https"
                },
                ep.host,
                ep.prefix,
                self.repository
            );
            match self.send_authorized(ep, &url, accept, what).await {
                Ok(resp) => {
                    if ep.scheme == Scheme::HttpsThenHttp
                        && let Ok(mut s) = self.client.schemes.lock()
                    {
                        s.insert(ep.host.clone(), scheme);
                    }
                    return Ok(resp);
                }
                // Only a failure to talk TLS at all falls back to HTTP.
                Err(e @ ImageError::Network { .. }) if first_err.is_none() => first_err = Some(e),
                Err(e) => {
                    // A TLS-only server answers plain HTTP with 400 (or not
                    // at all): then the TLS error is the one that explains.
                    let tls_server = matches!(&e, ImageError::Network { .. })
                        || matches!(&e, ImageError::Registry { message, .. } if message.contains("400 Bad Request"));
                    return Err(match first_err {
                        Some(tls) if tls_server => tls,
                        _ => e,
                    });
                }
            }
        }
        Err(first_err.unwrap_or_else(|| ImageError::Internal("no scheme to try".into())))
    }

    /// Sends the request, answering one 401 challenge.
    async fn send_authorized(
        &self,
        ep: &Endpoint,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, ImageError> {
        let http = self.client.http_client(&ep.tls, &ep.host)?;
        let auth = self.auth.as_ref().filter(|a| a.applies_to(&ep.host));
        let identity = auth.map(|a| identity(&a.credentials)).unwrap_or_default();
        let cache_key = (ep.host.clone(), self.repository.clone(), identity);
        let mut header = self.cached_header(&cache_key);
        if header.is_none()
            && let Some(RegistryAuth {
                credentials: Credentials::RegistryToken(token),
                ..
            }) = auth
        {
            header = Some(header_value(&format!("Bearer {token}"))?);
        }
        let resp = send(&http, url, accept, header.as_ref(), &ep.host).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return check_status(resp, &ep.host, &self.repository, what).await;
        }
        let challenges: Vec<String> = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let challenge = pick_challenge(&challenges).ok_or_else(|| ImageError::Unauthorized {
            registry: ep.host.clone(),
            reason: "401 Unauthorized without a usable WWW-Authenticate challenge".into(),
        })?;
        let (value, expiry) = self.answer(&http, ep, &challenge, auth).await?;
        let resp = send(&http, url, accept, Some(&value), &ep.host).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(ImageError::Unauthorized {
                registry: ep.host.clone(),
                reason: match auth.map(|a| &a.credentials) {
                    None | Some(Credentials::Anonymous) => {
                        "the registry requires credentials and none were given (401 Unauthorized)"
                            .into()
                    }
                    Some(Credentials::Basic { .. }) => {
                        "the registry rejected the username or password (401 Unauthorized)".into()
                    }
                    Some(_) => "the registry rejected the token (401 Unauthorized)".into(),
                },
            });
        }
        if let Ok(mut tokens) = self.client.tokens.lock() {
            tokens.insert(cache_key, (value, expiry));
        }
        check_status(resp, &ep.host, &self.repository, what).await
    }

    fn cached_header(&self, key: &TokenKey) -> Option<HeaderValue> {
        let mut tokens = self.client.tokens.lock().ok()?;
        match tokens.get(key) {
            Some((_, Some(expiry))) if *expiry <= Instant::now() => {
                tokens.remove(key);
                None
            }
            Some((value, _)) => Some(value.clone()),
            None => None,
        }
    }

    /// The `Authorization` value answering `challenge`, and when it expires.
    async fn answer(
        &self,
        http: &reqwest::Client,
        ep: &Endpoint,
        challenge: &Challenge,
        auth: Option<&RegistryAuth>,
    ) -> Result<(HeaderValue, Option<Instant>), ImageError> {
        let credentials = auth
            .map(|a| &a.credentials)
            .unwrap_or(&Credentials::Anonymous);
        let unauthorized = |reason: String| ImageError::Unauthorized {
            registry: ep.host.clone(),
            reason,
        };
        if challenge.scheme.eq_ignore_ascii_case("basic") {
            return match credentials {
                Credentials::Basic { username, password } => {
                    let raw = format!("{username}:{password}");
                    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
                    Ok((header_value(&format!("Basic {encoded}"))?, None))
                }
                Credentials::Anonymous => Err(unauthorized(
                    "the registry requires credentials and none were given (401 Unauthorized)"
                        .into(),
                )),
                _ => Err(unauthorized(
                    "the registry asks for basic auth, but only a token was given".into(),
                )),
            };
        }
        // Bearer: fetch a token from the realm.
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| unauthorized("bearer challenge without a realm".into()))?;
        let mut url = reqwest::Url::parse(realm)
            .map_err(|e| unauthorized(format!("bad token realm {realm:?}: {e}")))?;
        let service = challenge.params.get("service").cloned();
        let scope = challenge
            .params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        let started = Instant::now();
        let resp = match credentials {
            Credentials::IdentityToken { token, .. } => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_owned()),
                    ("refresh_token", token.clone()),
                    ("client_id", "ketch".to_owned()),
                    ("scope", scope.clone()),
                ];
                if let Some(s) = &service {
                    form.push(("service", s.clone()));
                }
                http.request(Method::POST, url.clone())
                    .form(&form)
                    .send()
                    .await
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &scope);
                }
                let mut req = http.get(url.clone());
                if let Credentials::Basic { username, password } = credentials {
                    req = req.basic_auth(username, Some(password));
                }
                req.send().await
            }
        }
        .map_err(|e| ImageError::Network {
            registry: ep.host.clone(),
            message: format!("token server {realm}: {}", crate::errors::chain(&e)),
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(unauthorized(match credentials {
                Credentials::Anonymous => format!(
                    "the token server {realm} requires credentials and none were given ({status})"
                ),
                Credentials::Basic { .. } => {
                    format!("the token server {realm} rejected the username or password ({status})")
                }
                _ => format!("the token server {realm} rejected the token ({status})"),
            }));
        }
        if !status.is_success() {
            return Err(unauthorized(format!(
                "the token server {realm} answered {status}"
            )));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let body = read_limited(resp, 1 << 20, "token response", realm, &ep.host).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| unauthorized(format!("bad token response from {realm}: {e}")))?;
        let token = if parsed.access_token.is_empty() {
            parsed.token
        } else {
            parsed.access_token
        };
        if token.is_empty() {
            return Err(unauthorized(format!(
                "the token server {realm} sent no token"
            )));
        }
        let ttl = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_TTL);
        // Renew a little early.
        let expiry = started + ttl.saturating_sub(Duration::from_secs(5).min(ttl / 2));
        Ok((header_value(&format!("Bearer {token}"))?, Some(expiry)))
    }
}

/// A cache key for credentials: a hash of all of them, secrets included,
/// so a token got with one password is never reused for another.
fn identity(credentials: &Credentials) -> String {
    let text = match credentials {
        Credentials::Anonymous => String::new(),
        Credentials::Basic { username, password } => format!("basic\0{username}\0{password}"),
        Credentials::IdentityToken { username, token } => format!("identity\0{username}\0{token}"),
        Credentials::RegistryToken(token) => format!("registry\0{token}"),
    };
    super::digest::Digest::of(text.as_bytes()).to_string()
}

fn header_value(s: &str) -> Result<HeaderValue, ImageError> {
    HeaderValue::from_str(s).map_err(|_| {
        ImageError::InvalidArgument(
            "credentials hold characters not allowed in an HTTP header".into(),
        )
    })
}

async fn send(
    http: &reqwest::Client,
    url: &str,
    accept: Option<&str>,
    auth: Option<&HeaderValue>,
    host: &str,
) -> Result<reqwest::Response, ImageError> {
    let mut req = http.get(url);
    if let Some(a) = accept {
        req = req.header(ACCEPT, a);
    }
    if let Some(h) = auth {
        req = req.header(AUTHORIZATION, h.clone());
    }
    req.send().await.map_err(|e| ImageError::Network {
        registry: host.to_owned(),
        message: format!("GET {url}: {}", crate::errors::chain(&e)),
    })
}

/// Maps a non-2xx answer to an error that says what it means.
async fn check_status(
    resp: reqwest::Response,
    host: &str,
    repository: &str,
    what: &str,
) -> Result<reqwest::Response, ImageError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let detail = registry_error_message(&body);
    Err(match status {
        StatusCode::NOT_FOUND => ImageError::RegistryNotFound {
            registry: host.to_owned(),
            what: what.to_owned(),
        },
        StatusCode::FORBIDDEN => ImageError::Forbidden {
            registry: host.to_owned(),
            repository: repository.to_owned(),
            reason: detail.unwrap_or_else(|| status.to_string()),
        },
        _ => ImageError::Registry {
            registry: host.to_owned(),
            message: format!(
                "{what}: {status}{}",
                detail.map(|d| format!(": {d}")).unwrap_or_default()
            ),
        },
    })
}

/// The message of a distribution-spec error body, if it is one.
fn registry_error_message(body: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let errors: Errors = serde_json::from_str(body).ok()?;
    let parts: Vec<String> = errors
        .errors
        .into_iter()
        .map(|e| format!("{} {}", e.code, e.message).trim().to_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Reads a response body of at most `limit` bytes.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: u64,
    what: &'static str,
    name: &str,
    registry: &str,
) -> Result<Vec<u8>, ImageError> {
    let too_large = || ImageError::TooLarge {
        what,
        name: name.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| ImageError::Network {
        registry: registry.to_owned(),
        message: format!("reading {what} {name}: {}", crate::errors::chain(&e)),
    })? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq)]
struct Challenge {
    scheme: String,
    params: HashMap<String, String>,
}

/// Picks Bearer over Basic among the challenges of a 401.
fn pick_challenge(headers: &[String]) -> Option<Challenge> {
    let all: Vec<Challenge> = headers.iter().flat_map(|h| parse_challenges(h)).collect();
    let bearer = all
        .iter()
        .position(|c| c.scheme.eq_ignore_ascii_case("bearer"));
    let basic = all
        .iter()
        .position(|c| c.scheme.eq_ignore_ascii_case("basic"));
    let pick = bearer.or(basic)?;
    all.into_iter().nth(pick)
}

/// Parses `Scheme k=v, k="v", Scheme2 k=v` (RFC 7235, quoted strings with
/// backslash escapes).
fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let s = header.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == b' ' || s[*i] == b'\t' || s[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| -> String {
        let start = *i;
        while *i < s.len() && !matches!(s[*i], b' ' | b'\t' | b',' | b'=') {
            *i += 1;
        }
        header[start..*i].to_owned()
    };
    loop {
        skip_ws(&mut i);
        if i >= s.len() {
            break;
        }
        let word = token(&mut i);
        if i < s.len() && s[i] == b'=' {
            // A parameter of the current challenge.
            i += 1;
            let value = if i < s.len() && s[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < s.len() && s[i] != b'"' {
                    if s[i] == b'\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1;
                String::from_utf8_lossy(&v).into_owned()
            } else {
                token(&mut i)
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(word.to_ascii_lowercase(), value);
            }
        } else if !word.is_empty() {
            out.push(Challenge {
                scheme: word,
                params: HashMap::new(),
            });
        } else {
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "Bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull");
        let c = parse_challenges(r#"Basic realm="a \"quoted\" realm", Bearer realm=x,scope=y"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].params["realm"], r#"a "quoted" realm"#);
        assert_eq!(c[1].params["scope"], "y");
        let picked =
            pick_challenge(&[r#"Basic realm="r""#.into(), r#"Bearer realm="t""#.into()]).unwrap();
        assert_eq!(picked.scheme, "Bearer");
        assert!(pick_challenge(&["Negotiate".into()]).is_none());
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.9.9.9",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "example.com",
            "10.0.0.1:5000",
            "[2001:db8::1]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn credentials_go_to_their_registry_only() {
        let mut auth = RegistryAuth::basic("u", "p");
        assert!(auth.applies_to("anything:5000"));
        auth.server_address = "https://index.docker.io/v1/".into();
        assert!(auth.applies_to("docker.io"));
        assert!(auth.applies_to("registry-1.docker.io"));
        assert!(!auth.applies_to("quay.io"));
        auth.server_address = "127.0.0.1:5000".into();
        assert!(auth.applies_to("127.0.0.1:5000"));
        assert!(!auth.applies_to("127.0.0.1:5001"));
        assert!(!format!("{auth:?}").contains('p') || !format!("{auth:?}").contains("\"p\""));
        assert!(format!("{:?}", auth.credentials).contains("***"));
    }

    #[test]
    fn token_cache_keys_tell_secrets_apart() {
        let a = identity(&Credentials::Basic {
            username: "u".into(),
            password: "right".into(),
        });
        let b = identity(&Credentials::Basic {
            username: "u".into(),
            password: "wrong".into(),
        });
        assert_ne!(a, b);
        assert!(!a.contains("right"));
    }

    #[test]
    fn auth_field_decodes() {
        let enc = base64::engine::general_purpose::STANDARD.encode("user:pa:ss");
        assert_eq!(
            RegistryAuth::decode_auth_field(&enc).unwrap(),
            ("user".into(), "pa:ss".into())
        );
        assert!(RegistryAuth::decode_auth_field("!!").is_err());
        let enc = base64::engine::general_purpose::STANDARD.encode("nocolon");
        assert!(RegistryAuth::decode_auth_field(&enc).is_err());
    }

    #[test]
    fn mirror_urls() {
        let client = RegistryClient::new(Arc::new(Config::default()));
        let ep = client
            .mirror_endpoint("https://mirror.example.com:5000/prefix/v2/")
            .unwrap();
        assert_eq!(ep.host, "mirror.example.com:5000");
        assert_eq!(ep.prefix, "/prefix");
        assert_eq!(ep.scheme, Scheme::Https);
        let ep = client.mirror_endpoint("http://127.0.0.1:6000").unwrap();
        assert_eq!((ep.prefix.as_str(), ep.scheme), ("", Scheme::Http));
        assert!(client.mirror_endpoint("ftp://x").is_err());
    }

    #[test]
    fn error_bodies() {
        let body = r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
        assert_eq!(
            registry_error_message(body).unwrap(),
            "DENIED requested access to the resource is denied"
        );
        assert!(registry_error_message("<html>").is_none());
    }
}
