//! Real OCI registries for the end-to-end tests.
//!
//! Each [`Registry`] is Debian's `docker-registry` (CNCF distribution 2.8) on a free loopback
//! port with its storage in a fresh temporary directory, in one of three flavours:
//! - [`Registry::start_plain`]: plain HTTP, anonymous;
//! - [`Registry::start_tls_auth`]: HTTPS with a certificate from a CA the harness makes
//!   (rcgen), and htpasswd basic auth (bcrypt);
//! - [`Registry::start_token_auth`]: plain HTTP with bearer-token auth; the token server runs
//!   inside the test process (axum on its own loopback port) and signs JWTs with a key whose
//!   certificate chains to the registry's `rootcertbundle`.
//!
//! [`RegistryClient`] is a small distribution-API client (reqwest) that honours both auth
//! schemes; [`super::images`] pushes through it and tests read back through it. It is
//! hand-written rather than a registry crate because tests need the raw responses (status
//! codes, headers, bytes) and the ability to push content a careful client would refuse.
//!
//! Dropping a `Registry` kills the process (also when a test panics) and removes its files.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use tempfile::TempDir;

/// The registry binary from Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How long a registry may take to answer `GET /v2/` after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The `service` the token-auth registry names in its challenges and expects as `aud`.
pub const TOKEN_SERVICE: &str = "ketch-e2e-registry";
/// The `iss` of the tokens the test token server issues.
pub const TOKEN_ISSUER: &str = "ketch-e2e-token-server";
/// Every manifest media type a client should accept.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// `sha256:<hex>` of `bytes`, the OCI digest form. (ring's assembly SHA-256 stays fast in
/// unoptimized test builds, where a pure-Rust one costs tens of ms per MiB.)
pub fn sha256_digest(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in ring::digest::digest(&ring::digest::SHA256, bytes).as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A loopback port nobody in this process has been handed before and the kernel had free a
/// moment ago. The process-wide set keeps parallel tests from ever being handed the same
/// port; a race with another process is caught by [`Registry`]'s retry on "address in use".
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(Default::default);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound socket")
            .port();
        if handed.lock().expect("port set lock").insert(port) {
            return port;
        }
    }
}

/// How the registry authenticates clients.
enum AuthMode {
    None,
    /// htpasswd basic auth (always over TLS here).
    Basic,
    /// Bearer tokens from the in-process token server.
    Token(TokenServer),
}

/// TLS material written into the registry's directory.
struct Tls {
    ca_pem: String,
    ca_pem_path: PathBuf,
}

/// One running (or stopped) `docker-registry`.
pub struct Registry {
    dir: TempDir,
    port: u16,
    host: String,
    child: Option<Child>,
    tls: Option<Tls>,
    credentials: Option<(String, String)>,
    auth: AuthMode,
}

impl Registry {
    /// A plain-HTTP, anonymous registry.
    pub async fn start_plain() -> Registry {
        Self::start(false, None, AuthMode::None).await
    }

    /// An HTTPS registry (certificate from a harness CA, SANs 127.0.0.1 and localhost) that
    /// requires basic auth with `user`/`password`.
    pub async fn start_tls_auth(user: &str, password: &str) -> Registry {
        Self::start(true, Some((user, password)), AuthMode::Basic).await
    }

    /// A plain-HTTP registry that requires bearer tokens, issued by a token server running in
    /// this process to clients that present `user`/`password` with basic auth.
    pub async fn start_token_auth(user: &str, password: &str) -> Registry {
        let server = TokenServer::start(user, password).await;
        Self::start(false, Some((user, password)), AuthMode::Token(server)).await
    }

    async fn start(tls: bool, credentials: Option<(&str, &str)>, auth: AuthMode) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("ketch-e2e-registry-")
            .tempdir()
            .expect("create registry temp dir");
        fs::create_dir(dir.path().join("storage")).expect("create registry storage dir");
        let tls = tls.then(|| write_tls_material(dir.path()));
        if let Some((user, password)) = credentials
            && matches!(auth, AuthMode::Basic)
        {
            write_htpasswd(&dir.path().join("htpasswd"), user, password);
        }
        if let AuthMode::Token(server) = &auth {
            fs::write(dir.path().join("token-ca.pem"), &server.ca_pem)
                .expect("write token root certificate bundle");
        }
        let mut registry = Registry {
            dir,
            port: 0,
            host: String::new(),
            child: None,
            tls,
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            auth,
        };
        // Another process may grab the port between `free_port` and the registry's bind:
        // then pick a new one.
        for attempt in 0..5 {
            registry.port = free_port();
            registry.host = format!("127.0.0.1:{}", registry.port);
            registry.write_config();
            match registry.spawn_and_wait().await {
                Ok(()) => return registry,
                Err(log) if log.contains("address already in use") && attempt < 4 => continue,
                Err(log) => panic!(
                    "docker-registry on {} failed to start:\n{log}",
                    registry.host
                ),
            }
        }
        unreachable!("the loop returns or panics on its last attempt")
    }

    /// "127.0.0.1:PORT", the registry host as it appears in image references.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port the registry listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT" or "https://127.0.0.1:PORT".
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host)
    }

    /// Whether the registry serves HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The PEM file of the CA that signed the registry's certificate (TLS registries only).
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_pem_path.as_path())
    }

    /// The PEM text of that CA.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|t| t.ca_pem.as_str())
    }

    /// The user and password the registry (or its token server) accepts.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The token endpoint ("http://127.0.0.1:PORT/token") of a token-auth registry.
    pub fn token_realm(&self) -> Option<String> {
        match &self.auth {
            AuthMode::Token(server) => Some(server.realm()),
            _ => None,
        }
    }

    /// How many tokens the token server has issued so far (token-auth registries only).
    pub fn tokens_issued(&self) -> Option<usize> {
        match &self.auth {
            AuthMode::Token(server) => Some(server.state.issued.load(Ordering::SeqCst)),
            _ => None,
        }
    }

    /// The registry's storage root (the filesystem driver's `rootdirectory`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of blob `digest` ("sha256:<hex>").
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Replaces the stored bytes of blob `digest` behind the registry's back, so that it
    /// serves `bytes` under a digest they do not have. (The registry verifies digests on
    /// upload, so this is the only way to make it serve corrupt content.) Keep the length
    /// equal to test digest verification alone, or change it to test length checks too.
    pub fn corrupt_blob(&self, digest: &str, bytes: &[u8]) {
        let path = self.blob_data_path(digest);
        assert!(
            path.exists(),
            "blob {digest} is not in the registry's storage ({path:?})"
        );
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("overwrite {path:?}: {e}"));
    }

    /// The registry's own output (stdout and stderr of every run).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Whether the registry process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the registry (SIGKILL, like a crash or a cut network: clients see connection
    /// errors mid-transfer). Storage and port are kept for [`Registry::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port with the same storage, configuration and
    /// credentials (stopping it first if it runs).
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn_and_wait().await {
            panic!("docker-registry on {} failed to restart:\n{log}", self.host);
        }
    }

    /// A client that authenticates with the registry's credentials (if any) and trusts its CA.
    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.base_url(), self.ca_pem(), self.credentials())
    }

    /// A client that sends no credentials.
    pub fn anonymous_client(&self) -> RegistryClient {
        RegistryClient::new(&self.base_url(), self.ca_pem(), None)
    }

    /// A client that authenticates with the given credentials.
    pub fn client_with(&self, user: &str, password: &str) -> RegistryClient {
        RegistryClient::new(&self.base_url(), self.ca_pem(), Some((user, password)))
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {host}\n  secret: ketch-e2e-upload-state-secret\n",
            storage = dir.join("storage").display(),
            host = self.host,
        );
        if self.tls.is_some() {
            let _ = write!(
                config,
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            );
        }
        match &self.auth {
            AuthMode::None => {}
            AuthMode::Basic => {
                let _ = write!(
                    config,
                    "auth:\n  htpasswd:\n    realm: ketch-e2e\n    path: {}\n",
                    dir.join("htpasswd").display()
                );
            }
            AuthMode::Token(server) => {
                let _ = write!(
                    config,
                    "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    \
                     issuer: {TOKEN_ISSUER}\n    rootcertbundle: {bundle}\n",
                    realm = server.realm(),
                    bundle = dir.join("token-ca.pem").display()
                );
            }
        }
        fs::write(dir.join("config.yml"), config).expect("write registry config");
    }

    /// Starts the process and waits until `GET /v2/` answers. On failure returns the log.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let dir = self.dir.path();
        let log_path = dir.join("registry.log");
        // Only this run's output goes into an error: earlier runs append to the same file.
        let log_start = fs::metadata(&log_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        let run_log =
            |registry: &Registry| registry.log().get(log_start..).unwrap_or("").to_owned();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup registry log"))
            .stderr(log)
            // REGISTRY_* variables override the config file; keep the test environment out.
            .env_clear()
            .envs(std::env::vars().filter(|(k, _)| !k.starts_with("REGISTRY_")))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn {REGISTRY_BIN} (is docker-registry installed?): {e}")
            });
        self.child = Some(child);

        let probe = self.anonymous_client();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "exited with {status}; its output:\n{}",
                    run_log(self)
                ));
            }
            if let Ok(resp) = probe.raw(Method::GET, "/v2/", HeaderMap::new(), None).await {
                // 200 for anonymous registries, 401 for the others: both mean "serving".
                if resp.status() == StatusCode::OK || resp.status() == StatusCode::UNAUTHORIZED {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "GET /v2/ did not answer within {READY_TIMEOUT:?}; its output:\n{}",
                    run_log(self)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        // The token server task stops when its `TokenServer` drops; the temp dir removes itself.
    }
}

/// Writes `ca.pem`, `server.pem` and `server.key` into `dir`.
fn write_tls_material(dir: &Path) -> Tls {
    let (ca_pem, issuer) = new_ca("ketch e2e registry CA");
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("SAN localhost");
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("generate server key");
    let cert = params
        .signed_by(&key, &issuer)
        .expect("sign server certificate");
    let ca_pem_path = dir.join("ca.pem");
    fs::write(&ca_pem_path, &ca_pem).expect("write ca.pem");
    fs::write(dir.join("server.pem"), cert.pem()).expect("write server.pem");
    fs::write(dir.join("server.key"), key.serialize_pem()).expect("write server.key");
    Tls {
        ca_pem,
        ca_pem_path,
    }
}

/// A fresh self-signed CA: its PEM and an issuer to sign with.
fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).expect("empty SAN list");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = KeyPair::generate().expect("generate CA key");
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert.pem(), Issuer::new(params, key))
}

/// An htpasswd file with one bcrypt entry, as `htpasswd -B` writes it.
fn write_htpasswd(path: &Path, user: &str, password: &str) {
    // Cost 4 (the minimum) keeps every authenticated request cheap for the registry.
    let hash = bcrypt::hash_with_result(password, 4)
        .expect("bcrypt hash")
        .format_for_version(bcrypt::Version::TwoY);
    fs::write(path, format!("{user}:{hash}\n")).expect("write htpasswd");
}

// ---------------------------------------------------------------------------------------------
// Token server
// ---------------------------------------------------------------------------------------------

/// A bearer-token server for distribution's `auth: token`, running as a tokio task.
///
/// It answers `GET /token?service=..&scope=..` (basic auth) and `POST /token` (OAuth2 password
/// grant form), grants every requested action to the right credentials and refuses anything
/// else with 401. Tokens are ES256 JWTs whose `x5c` header carries the signing certificate,
/// issued by a CA that the registry trusts as its `rootcertbundle`.
struct TokenServer {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<TokenState>,
    task: tokio::task::JoinHandle<()>,
}

struct TokenState {
    user: String,
    password: String,
    key: EcdsaKeyPair,
    cert_der_b64: String,
    issued: AtomicUsize,
}

impl TokenServer {
    async fn start(user: &str, password: &str) -> TokenServer {
        let (ca_pem, issuer) = new_ca("ketch e2e token CA");
        let mut params = CertificateParams::new(Vec::new()).expect("empty SAN list");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ketch e2e token signer");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("generate token signing key");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("sign token certificate");
        let signing_key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            key.serialized_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("load token signing key into ring");
        let state = Arc::new(TokenState {
            user: user.to_owned(),
            password: password.to_owned(),
            key: signing_key,
            cert_der_b64: B64.encode(cert.der()),
            issued: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind token server");
        let addr = listener.local_addr().expect("token server address");
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token_get).post(token_post))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenServer {
            addr,
            ca_pem,
            state,
            task,
        }
    }

    fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type TokenReply = (StatusCode, HeaderMap, String);

async fn token_get(
    axum::extract::State(state): axum::extract::State<Arc<TokenState>>,
    headers: axum::http::HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> TokenReply {
    let pairs = form_pairs(query.as_deref().unwrap_or(""));
    let basic = headers
        .get(reqwest::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let Some((user, password)) = basic else {
        return unauthorized("basic credentials required");
    };
    let scopes = pairs
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .collect::<Vec<_>>();
    state.issue(&user, &password, &scopes)
}

async fn token_post(
    axum::extract::State(state): axum::extract::State<Arc<TokenState>>,
    body: String,
) -> TokenReply {
    let pairs = form_pairs(&body);
    let get = |key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    if get("grant_type").as_deref() != Some("password") {
        return unauthorized("only the password grant is supported");
    }
    let (Some(user), Some(password)) = (get("username"), get("password")) else {
        return unauthorized("username and password required");
    };
    let scopes = get("scope")
        .map(|s| s.split(' ').map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    state.issue(&user, &password, &scopes)
}

impl TokenState {
    fn issue(&self, user: &str, password: &str, scopes: &[String]) -> TokenReply {
        if user != self.user || password != self.password {
            return unauthorized("wrong user or password");
        }
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                // type:name:actions, where only the name may itself contain ':'.
                let (kind, rest) = scope.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [self.cert_der_b64],
        });
        let jti = self.issued.fetch_add(1, Ordering::SeqCst);
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": TOKEN_SERVICE,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("ketch-e2e-{now}-{jti}"),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let signature = match self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        {
            Ok(sig) => sig,
            Err(_) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    HeaderMap::new(),
                    "signing failed".into(),
                );
            }
        };
        let token = format!("{signing_input}.{}", B64URL.encode(signature.as_ref()));
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": 600,
            "issued_at": format_rfc3339(now),
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        (StatusCode::OK, headers, body.to_string())
    }
}

fn unauthorized(why: &str) -> TokenReply {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ketch-e2e-token\""),
    );
    let body = serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": why}]});
    (StatusCode::UNAUTHORIZED, headers, body.to_string())
}

/// Decodes `a=b&c=d` (query string or form body) into pairs.
fn form_pairs(s: &str) -> Vec<(String, String)> {
    let url = reqwest::Url::parse(&format!("http://x/?{s}")).expect("a query string parses");
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(B64.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Seconds since the epoch as RFC 3339 UTC (civil-from-days, no date crate needed).
fn format_rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A manifest as the registry served it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The `Content-Type` of the response.
    pub media_type: String,
    /// The `Docker-Content-Digest` header, if sent.
    pub digest_header: Option<String>,
    pub bytes: Vec<u8>,
}

/// A distribution-API client for tests: raw requests plus the push/pull steps the harness
/// needs, answering basic and bearer challenges with its credentials.
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    credentials: Option<(String, String)>,
    /// Bearer tokens by repository name ("" for registry-wide scopes), reused until refused.
    tokens: Mutex<HashMap<String, String>>,
    /// Set once the registry asked for basic auth: later requests send it up front.
    basic: std::sync::atomic::AtomicBool,
}

impl RegistryClient {
    /// A client for `base_url` that trusts only `ca_pem` (or nothing: plain HTTP) and answers
    /// auth challenges with `credentials`.
    pub fn new(base_url: &str, ca_pem: Option<&str>, credentials: Option<(&str, &str)>) -> Self {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        if let Some(pem) = ca_pem {
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(der.expect("CA PEM parses"))
                    .expect("add CA to the root store");
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build HTTP client");
        RegistryClient {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            tokens: Mutex::new(HashMap::new()),
            basic: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The registry's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// One request, without answering auth challenges. `path` is "/v2/..." or an absolute URL.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
    ) -> reqwest::Result<reqwest::Response> {
        let url = self.url(path);
        let mut req = self.http.request(method, url).headers(headers);
        if let Some(body) = body {
            req = req.body(body);
        }
        req.send().await
    }

    /// One request that answers a 401 challenge (basic, or bearer via the realm) with the
    /// client's credentials and retries once. Returns the final response; when a token server
    /// refuses the credentials, its (401) response is returned.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
    ) -> reqwest::Response {
        let url = self.url(path);
        let repo = repository_of(&url);
        let cached = self.tokens.lock().expect("token cache").get(&repo).cloned();
        let preemptive = match (&cached, &self.credentials) {
            (Some(token), _) => Some(Auth::Bearer(token)),
            (None, Some((user, password))) if self.basic.load(Ordering::Relaxed) => {
                Some(Auth::Basic(user, password))
            }
            _ => None,
        };
        let first = self
            .request(&method, &url, &headers, body.clone(), preemptive)
            .await;
        if first.status() != StatusCode::UNAUTHORIZED {
            return first;
        }
        let Some((user, password)) = self.credentials.clone() else {
            return first;
        };
        let challenge = first
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if challenge.starts_with("Basic") {
            self.basic.store(true, Ordering::Relaxed);
            return self
                .request(
                    &method,
                    &url,
                    &headers,
                    body,
                    Some(Auth::Basic(&user, &password)),
                )
                .await;
        }
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return first;
        };
        let params = parse_challenge(params);
        let Some(realm) = params.get("realm") else {
            return first;
        };
        let mut token_url = reqwest::Url::parse(realm)
            .unwrap_or_else(|e| panic!("token realm {realm:?} is not a URL: {e}"));
        {
            let mut query = token_url.query_pairs_mut();
            if let Some(service) = params.get("service") {
                query.append_pair("service", service);
            }
            if let Some(scope) = params.get("scope") {
                for s in scope.split(' ') {
                    query.append_pair("scope", s);
                }
            }
        }
        let token_resp = self
            .http
            .get(token_url)
            .basic_auth(&user, Some(&password))
            .send()
            .await
            .unwrap_or_else(|e| panic!("token request to {realm}: {e}"));
        if !token_resp.status().is_success() {
            return token_resp;
        }
        let reply: serde_json::Value =
            serde_json::from_slice(&token_resp.bytes().await.expect("read token reply"))
                .expect("token reply is JSON");
        let token = reply["token"]
            .as_str()
            .or_else(|| reply["access_token"].as_str())
            .expect("token reply has a token")
            .to_owned();
        self.tokens
            .lock()
            .expect("token cache")
            .insert(repo, token.clone());
        self.request(&method, &url, &headers, body, Some(Auth::Bearer(&token)))
            .await
    }

    async fn request(
        &self,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        body: Option<Vec<u8>>,
        auth: Option<Auth<'_>>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(method.clone(), url)
            .headers(headers.clone());
        match auth {
            Some(Auth::Basic(user, password)) => req = req.basic_auth(user, Some(password)),
            Some(Auth::Bearer(token)) => req = req.bearer_auth(token),
            None => {}
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// GET with auth; panics on a transport error.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(Method::GET, path, HeaderMap::new(), None).await
    }

    /// Whether `repo` has blob `digest` (HEAD).
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let resp = self
            .send(
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{digest}"),
                HeaderMap::new(),
                None,
            )
            .await;
        match resp.status() {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            other => panic!("HEAD blob {digest} in {repo}: {other}"),
        }
    }

    /// Uploads `bytes` to `repo` in one piece (POST then PUT ?digest=) unless the registry
    /// already has them; returns their digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        self.push_blob_as(repo, &digest, bytes).await;
        digest
    }

    /// [`RegistryClient::push_blob`] for bytes whose digest the caller knows. The registry
    /// verifies it: a wrong one fails the upload.
    pub async fn push_blob_as(&self, repo: &str, digest: &str, bytes: &[u8]) {
        if self.blob_exists(repo, digest).await {
            return;
        }
        let start = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                HeaderMap::new(),
                None,
            )
            .await;
        assert_eq!(
            start.status(),
            StatusCode::ACCEPTED,
            "start blob upload in {repo}: {}",
            start.text().await.unwrap_or_default()
        );
        let location = start
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .expect("upload Location header")
            .to_owned();
        let sep = if location.contains('?') { '&' } else { '?' };
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let put = self
            .send(
                Method::PUT,
                &format!("{location}{sep}digest={digest}"),
                headers,
                Some(bytes.to_vec()),
            )
            .await;
        let status = put.status();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "finish upload of {digest} ({} bytes) in {repo}: {}",
            bytes.len(),
            put.text().await.unwrap_or_default()
        );
    }

    /// PUTs a manifest under `reference` (a tag or its digest) with `media_type` as its
    /// Content-Type. Returns the response so tests can see refusals.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> reqwest::Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_str(media_type).expect("media type is a header value"),
        );
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            headers,
            Some(bytes.to_vec()),
        )
        .await
    }

    /// [`RegistryClient::put_manifest`] that panics unless the registry stored it; returns
    /// the manifest's digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let resp = self.put_manifest(repo, reference, media_type, bytes).await;
        let status = resp.status();
        let digest = sha256_digest(bytes);
        assert_eq!(
            status,
            StatusCode::CREATED,
            "push manifest {repo}:{reference} ({media_type}, {} bytes): {}",
            bytes.len(),
            resp.text().await.unwrap_or_default()
        );
        digest
    }

    /// GETs a manifest (any of the four manifest types accepted); panics unless 200.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> FetchedManifest {
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static(MANIFEST_ACCEPT),
        );
        let resp = self
            .send(
                Method::GET,
                &format!("/v2/{repo}/manifests/{reference}"),
                headers,
                None,
            )
            .await;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let media_type = header("content-type").unwrap_or_default();
        let digest_header = header("docker-content-digest");
        let bytes = resp.bytes().await.expect("read manifest body").to_vec();
        assert_eq!(
            status,
            StatusCode::OK,
            "GET manifest {repo}:{reference}: {}",
            String::from_utf8_lossy(&bytes)
        );
        FetchedManifest {
            media_type,
            digest_header,
            bytes,
        }
    }

    /// GETs a blob's bytes; panics unless 200.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Vec<u8> {
        let resp = self.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        let status = resp.status();
        let bytes = resp.bytes().await.expect("read blob body").to_vec();
        assert_eq!(status, StatusCode::OK, "GET blob {digest} of {repo}");
        bytes
    }

    /// Deletes a blob from `repo` (the registry runs with deletes enabled), so that
    /// manifests naming it point at nothing.
    pub async fn delete_blob(&self, repo: &str, digest: &str) {
        let resp = self
            .send(
                Method::DELETE,
                &format!("/v2/{repo}/blobs/{digest}"),
                HeaderMap::new(),
                None,
            )
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::ACCEPTED,
            "DELETE blob {digest} of {repo}"
        );
    }

    /// The repositories in the registry's catalog.
    pub async fn catalog(&self) -> Vec<String> {
        let json = self.get_json("/v2/_catalog?n=1000").await;
        string_list(&json["repositories"])
    }

    /// The tags of `repo`.
    pub async fn tags(&self, repo: &str) -> Vec<String> {
        let json = self.get_json(&format!("/v2/{repo}/tags/list")).await;
        string_list(&json["tags"])
    }

    async fn get_json(&self, path: &str) -> serde_json::Value {
        let resp = self.get(path).await;
        let status = resp.status();
        let bytes = resp.bytes().await.expect("read body");
        assert_eq!(
            status,
            StatusCode::OK,
            "GET {path}: {}",
            String::from_utf8_lossy(&bytes)
        );
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
    }
}

enum Auth<'a> {
    Basic(&'a str, &'a str),
    Bearer(&'a str),
}

fn string_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The repository a `/v2/<name>/...` URL addresses ("" for registry-wide endpoints).
fn repository_of(url: &str) -> String {
    let path = url.split_once("/v2/").map(|(_, p)| p).unwrap_or("");
    let path = path.split('?').next().unwrap_or("");
    for marker in ["/blobs/", "/manifests/", "/tags/"] {
        if let Some((name, _)) = path.split_once(marker) {
            return name.to_owned();
        }
    }
    String::new()
}

/// `realm="...",service="...",scope="..."` → map.
fn parse_challenge(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((v, a)) => (v.to_owned(), a),
                None => (quoted.to_owned(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((v, a)) => (v.to_owned(), a),
                None => (after.to_owned(), ""),
            }
        };
        out.insert(key, value);
        rest = after.trim_start_matches(',').trim();
    }
    out
}
