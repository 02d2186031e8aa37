//! Tests of the registry harness itself: the registries speak the distribution API with the
//! auth they claim, and the standard images are exactly what the runtime tests assume.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::time::Instant;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::harness::images::{
    COMPRESSION_FILE, CONFIGURED_STOP_SIGNAL, CONFIGURED_USER, CONFIGURED_WORKDIR, Compression,
    DEFAULT_PATH, Entry, Format, GROUP, ImageBuilder, LAYERED_ABSENT, LAYERED_PRESENT, Layer,
    MEDIA_DOCKER_LAYER_GZIP, MEDIA_DOCKER_MANIFEST, MEDIA_OCI_INDEX, MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_TAR, MEDIA_OCI_LAYER_ZSTD, MEDIA_OCI_MANIFEST, MULTIARCH_ARCH_FILE, PASSWD,
    TestImage, TestImages, WEB_INDEX_HTML, host_arch,
};
use crate::harness::registry::{Registry, RegistryClient, TOKEN_SERVICE, sha256_digest};

/// A file system view built by applying layers the way an overlay shows them.
type View = BTreeMap<String, ViewEntry>;

#[derive(Clone, Debug, PartialEq)]
enum ViewEntry {
    File { contents: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Symlink(String),
    Other,
}

/// Uncompresses a layer blob according to its media type.
fn uncompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if media_type.ends_with("gzip") {
        flate2::read::GzDecoder::new(blob)
            .read_to_end(&mut out)
            .expect("gunzip layer");
    } else if media_type.ends_with("zstd") {
        out = zstd::decode_all(blob).expect("unzstd layer");
    } else {
        out = blob.to_vec();
    }
    out
}

/// Applies one uncompressed layer tar to `view`, with OCI whiteout semantics.
fn apply_layer(view: &mut View, tar: &[u8]) {
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let path = format!(
            "/{}",
            String::from_utf8(entry.path_bytes().into_owned())
                .expect("UTF-8 path")
                .trim_start_matches("./")
                .trim_end_matches('/')
        );
        let (dir, name) = path.rsplit_once('/').expect("absolute path");
        if name == ".wh..wh..opq" {
            let prefix = format!("{dir}/");
            view.retain(|p, _| !p.starts_with(&prefix));
            continue;
        }
        if let Some(deleted) = name.strip_prefix(".wh.") {
            let target = format!("{dir}/{deleted}");
            let prefix = format!("{target}/");
            view.retain(|p, _| *p != target && !p.starts_with(&prefix));
            continue;
        }
        let mode = entry.header().mode().expect("mode");
        let item = match entry.header().entry_type() {
            tar::EntryType::Regular => {
                let mut contents = Vec::new();
                entry.read_to_end(&mut contents).expect("read entry");
                ViewEntry::File { contents, mode }
            }
            tar::EntryType::Directory => ViewEntry::Dir { mode },
            tar::EntryType::Symlink => ViewEntry::Symlink(
                String::from_utf8(
                    entry
                        .link_name_bytes()
                        .expect("symlink target")
                        .into_owned(),
                )
                .expect("UTF-8 target"),
            ),
            _ => ViewEntry::Other,
        };
        view.insert(path, item);
    }
}

/// What [`verify_image`] found.
struct Verified {
    manifest_digest: String,
    config_digest: String,
    config: Value,
    view: View,
}

/// Fetches and verifies one image manifest and everything it names.
async fn verify_image(
    client: &RegistryClient,
    repo: &str,
    reference: &str,
    expect_media_type: &str,
    expect_layer_media_type: &str,
) -> Verified {
    let fetched = client.get_manifest(repo, reference).await;
    assert_eq!(fetched.media_type, expect_media_type, "{repo}:{reference}");
    let digest = sha256_digest(&fetched.bytes);
    assert_eq!(fetched.digest_header.as_deref(), Some(digest.as_str()));
    let manifest: Value = serde_json::from_slice(&fetched.bytes).expect("manifest JSON");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], expect_media_type);

    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config_bytes = client.get_blob(repo, config_digest).await;
    assert_eq!(sha256_digest(&config_bytes), config_digest);
    assert_eq!(
        manifest["config"]["size"].as_u64(),
        Some(config_bytes.len() as u64)
    );
    let config: Value = serde_json::from_slice(&config_bytes).expect("config JSON");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["rootfs"]["type"], "layers");

    let layers = manifest["layers"].as_array().expect("layers");
    let diff_ids = config["rootfs"]["diff_ids"].as_array().expect("diff_ids");
    assert_eq!(layers.len(), diff_ids.len(), "one diff_id per layer");
    let mut view = View::new();
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let media_type = layer["mediaType"].as_str().expect("layer media type");
        assert_eq!(media_type, expect_layer_media_type, "{repo}:{reference}");
        let layer_digest = layer["digest"].as_str().expect("layer digest");
        let blob = client.get_blob(repo, layer_digest).await;
        assert_eq!(sha256_digest(&blob), layer_digest);
        assert_eq!(layer["size"].as_u64(), Some(blob.len() as u64));
        let tar = uncompress(media_type, &blob);
        assert_eq!(Some(sha256_digest(&tar).as_str()), diff_id.as_str());
        apply_layer(&mut view, &tar);
    }
    Verified {
        manifest_digest: digest,
        config_digest: config_digest.to_owned(),
        config,
        view,
    }
}

fn file(view: &View, path: &str) -> String {
    match view.get(path) {
        Some(ViewEntry::File { contents, .. }) => {
            String::from_utf8(contents.clone()).expect("UTF-8")
        }
        other => panic!("{path}: expected a file, found {other:?}"),
    }
}

/// The busybox base every standard image starts from.
fn check_busybox_base(view: &View) {
    match view.get("/bin/busybox") {
        Some(ViewEntry::File { contents, mode }) => {
            assert_eq!(*mode & 0o777, 0o755);
            assert_eq!(
                contents,
                &std::fs::read("/bin/busybox").expect("host busybox")
            );
        }
        other => panic!("/bin/busybox: {other:?}"),
    }
    for applet in [
        "sh", "echo", "cat", "ls", "sleep", "id", "pwd", "env", "wc", "head", "hostname", "ip",
        "wget", "nc", "true", "false", "kill", "ps", "mount", "touch", "mkdir", "rm", "stat",
        "printf", "grep", "sed", "seq", "yes", "dd", "timeout", "test", "httpd",
    ] {
        let found = ["/bin", "/sbin", "/usr/bin", "/usr/sbin"]
            .iter()
            .any(|dir| {
                view.get(&format!("{dir}/{applet}"))
                    == Some(&ViewEntry::Symlink("/bin/busybox".into()))
            });
        assert!(found, "applet {applet} is not linked to /bin/busybox");
    }
    assert_eq!(view.get("/tmp"), Some(&ViewEntry::Dir { mode: 0o1777 }));
    assert_eq!(file(view, "/etc/passwd"), PASSWD);
    assert_eq!(file(view, "/etc/group"), GROUP);
}

#[tokio::test]
async fn plain_registry_serves_the_distribution_api() {
    let registry = Registry::start_plain().await;
    assert!(registry.host().starts_with("127.0.0.1:"));
    assert_eq!(registry.base_url(), format!("http://{}", registry.host()));
    assert!(registry.ca_pem_path().is_none() && registry.credentials().is_none());

    let started = Instant::now();
    let images = TestImages::push_all(&registry).await;
    eprintln!("push_all took {:?}", started.elapsed());
    // Pushing again finds every blob present and gives the same digests.
    let again = TestImages::push_all(&registry).await;
    for (a, b) in images.all().iter().zip(again.all()) {
        assert_eq!(
            (&a.manifest_digest, &a.config_digest),
            (&b.manifest_digest, &b.config_digest)
        );
    }

    let client = registry.anonymous_client();
    let v2 = client.get("/v2/").await;
    assert_eq!(v2.status(), StatusCode::OK);
    assert_eq!(
        v2.headers()
            .get("docker-distribution-api-version")
            .and_then(|v| v.to_str().ok()),
        Some("registry/2.0")
    );
    assert_eq!(
        client.catalog().await,
        ["busybox", "configured", "layered", "multiarch", "web"]
    );
    let mut tags = client.tags("busybox").await;
    tags.sort();
    assert_eq!(tags, ["docker", "gzip", "latest", "uncompressed", "zstd"]);
    assert_eq!(client.tags("web").await, ["latest"]);

    for image in images.all() {
        assert_eq!(
            image.reference,
            format!("{}/{}:{}", registry.host(), image.repository, image.tag)
        );
        assert_eq!(
            image.by_digest(),
            format!(
                "{}/{}@{}",
                registry.host(),
                image.repository,
                image.manifest_digest
            )
        );
        // Also fetchable by digest.
        let by_digest = client
            .get_manifest(&image.repository, &image.manifest_digest)
            .await;
        assert_eq!(sha256_digest(&by_digest.bytes), image.manifest_digest);
    }
}

#[tokio::test]
async fn standard_images_are_what_tests_expect() {
    let registry = Registry::start_plain().await;
    let images = TestImages::push_all(&registry).await;
    let client = registry.client();

    let check = |image: &TestImage, v: &Verified| {
        assert_eq!(v.config["architecture"], host_arch());
        assert_eq!(v.config_digest, image.config_digest, "{}", image.reference);
        assert_eq!(
            v.manifest_digest, image.manifest_digest,
            "{}",
            image.reference
        );
    };

    // busybox
    let v = verify_image(
        &client,
        "busybox",
        "latest",
        MEDIA_OCI_MANIFEST,
        MEDIA_OCI_LAYER_GZIP,
    )
    .await;
    check(&images.busybox, &v);
    let (config, view) = (v.config, v.view);
    check_busybox_base(&view);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(config["config"]["Env"], serde_json::json!([DEFAULT_PATH]));
    assert_eq!(images.busybox.layer_digests.len(), 1);

    // web
    let v = verify_image(
        &client,
        "web",
        "latest",
        MEDIA_OCI_MANIFEST,
        MEDIA_OCI_LAYER_GZIP,
    )
    .await;
    check(&images.web, &v);
    let (config, view) = (v.config, v.view);
    check_busybox_base(&view);
    assert_eq!(file(&view, "/www/index.html"), WEB_INDEX_HTML);
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["httpd", "-f", "-p", "80", "-h", "/www"])
    );
    assert!(config["config"]["ExposedPorts"]["80/tcp"].is_object());

    // layered: whiteout and opaque dir applied
    let v = verify_image(
        &client,
        "layered",
        "latest",
        MEDIA_OCI_MANIFEST,
        MEDIA_OCI_LAYER_GZIP,
    )
    .await;
    check(&images.layered, &v);
    let view = v.view;
    assert_eq!(images.layered.layer_digests.len(), 4);
    for (path, contents) in LAYERED_PRESENT {
        assert_eq!(file(&view, path), *contents);
    }
    for path in LAYERED_ABSENT {
        assert!(!view.contains_key(*path), "{path} should be hidden");
    }
    let data: Vec<&String> = view
        .keys()
        .filter(|p| p.starts_with("/data/") || p.starts_with("/opaque/"))
        .collect();
    assert_eq!(data, ["/data/b", "/data/c", "/opaque/y"]);

    // compression variants
    for (image, tag, layer_type, name) in [
        (
            &images.uncompressed,
            "uncompressed",
            MEDIA_OCI_LAYER_TAR,
            "none",
        ),
        (&images.gzip, "gzip", MEDIA_OCI_LAYER_GZIP, "gzip"),
        (&images.zstd, "zstd", MEDIA_OCI_LAYER_ZSTD, "zstd"),
    ] {
        let v = verify_image(&client, "busybox", tag, MEDIA_OCI_MANIFEST, layer_type).await;
        check(image, &v);
        let view = v.view;
        check_busybox_base(&view);
        assert_eq!(file(&view, COMPRESSION_FILE), format!("{name}\n"));
    }

    // configured
    let v = verify_image(
        &client,
        "configured",
        "latest",
        MEDIA_OCI_MANIFEST,
        MEDIA_OCI_LAYER_GZIP,
    )
    .await;
    check(&images.configured, &v);
    let (config, view) = (v.config, v.view);
    let c = &config["config"];
    assert_eq!(c["User"], CONFIGURED_USER);
    assert_eq!(c["WorkingDir"], CONFIGURED_WORKDIR);
    assert!(
        !view.contains_key(CONFIGURED_WORKDIR),
        "the runtime must create the workdir"
    );
    assert_eq!(
        c["Env"],
        serde_json::json!([DEFAULT_PATH, "GREETING=hello"])
    );
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], serde_json::json!(["echo $GREETING from $(pwd)"]));
    assert_eq!(c["StopSignal"], CONFIGURED_STOP_SIGNAL);
    assert!(PASSWD.contains(&format!("{CONFIGURED_USER}:x:1000:1000:")));

    // docker schema2: same config as busybox, Docker media types
    let v = verify_image(
        &client,
        "busybox",
        "docker",
        MEDIA_DOCKER_MANIFEST,
        MEDIA_DOCKER_LAYER_GZIP,
    )
    .await;
    check(&images.docker, &v);
    let view = v.view;
    check_busybox_base(&view);
    assert_eq!(images.docker.config_digest, images.busybox.config_digest);
    assert_ne!(
        images.docker.manifest_digest,
        images.busybox.manifest_digest
    );

    // multiarch: an index of two platforms, each with its own /etc/arch
    let index = client.get_manifest("multiarch", "latest").await;
    assert_eq!(index.media_type, MEDIA_OCI_INDEX);
    assert_eq!(
        sha256_digest(&index.bytes),
        images.multiarch.manifest_digest
    );
    let index: Value = serde_json::from_slice(&index.bytes).expect("index JSON");
    let entries = index["manifests"].as_array().expect("manifests");
    let platforms: Vec<(String, String)> = entries
        .iter()
        .map(|m| {
            (
                m["platform"]["os"].as_str().unwrap().to_owned(),
                m["platform"]["architecture"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            ("linux".into(), "amd64".into()),
            ("linux".into(), "arm64".into())
        ]
    );
    assert_eq!(entries[1]["platform"]["variant"], "v8");
    assert_eq!(images.multiarch.platforms.len(), 2);
    for (entry, platform) in entries.iter().zip(&images.multiarch.platforms) {
        let digest = entry["digest"].as_str().unwrap();
        assert_eq!(digest, platform.manifest_digest);
        let v = verify_image(
            &client,
            "multiarch",
            digest,
            MEDIA_OCI_MANIFEST,
            MEDIA_OCI_LAYER_GZIP,
        )
        .await;
        let arch = entry["platform"]["architecture"].as_str().unwrap();
        assert_eq!(v.config["architecture"], arch);
        assert_eq!(v.config_digest, platform.config_digest);
        let view = v.view;
        assert_eq!(file(&view, MULTIARCH_ARCH_FILE), format!("{arch}\n"));
        check_busybox_base(&view);
        if arch == host_arch() {
            assert_eq!(platform.config_digest, images.multiarch.config_digest);
        }
    }
}

#[tokio::test]
async fn tls_registry_requires_credentials_and_the_harness_ca() {
    let registry = Registry::start_tls_auth("alice", "s3cret").await;
    assert_eq!(registry.base_url(), format!("https://{}", registry.host()));
    assert_eq!(registry.credentials(), Some(("alice", "s3cret")));
    let ca_path = registry.ca_pem_path().expect("TLS registry has a CA");
    let ca_pem = std::fs::read_to_string(ca_path).expect("read CA");
    assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));

    let anonymous = registry.anonymous_client().get("/v2/").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Basic "), "{challenge}");
    assert_eq!(
        registry
            .client_with("alice", "wrong")
            .get("/v2/")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        registry
            .client_with("mallory", "s3cret")
            .get("/v2/")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(registry.client().get("/v2/").await.status(), StatusCode::OK);

    // The certificate verifies against the harness CA, for 127.0.0.1 and for localhost...
    let localhost = format!("https://localhost:{}", registry.port());
    let by_name = RegistryClient::new(&localhost, Some(&ca_pem), Some(("alice", "s3cret")));
    assert_eq!(by_name.get("/v2/").await.status(), StatusCode::OK);
    // ...and against nothing else: no roots, or an unrelated CA, fail the handshake.
    let no_roots = RegistryClient::new(&registry.base_url(), None, None);
    let err = no_roots
        .raw(Method::GET, "/v2/", HeaderMap::new(), None)
        .await
        .expect_err("an untrusted certificate must fail");
    assert!(err.is_connect(), "{err:?}");
    let other_ca = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .expect("unrelated certificate")
        .cert
        .pem();
    let wrong_roots = RegistryClient::new(&registry.base_url(), Some(&other_ca), None);
    assert!(
        wrong_roots
            .raw(Method::GET, "/v2/", HeaderMap::new(), None)
            .await
            .is_err()
    );
    // Plain HTTP to the TLS port gets no registry answer: Go's TLS server
    // answers a plain HTTP request with "400 Bad Request".
    let plain = RegistryClient::new(&format!("http://{}", registry.host()), None, None);
    let resp = plain
        .raw(Method::GET, "/v2/", HeaderMap::new(), None)
        .await
        .expect("the TLS port answers plain HTTP with an HTTP error");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Pushing and pulling work with credentials.
    let images = TestImages::push_all(&registry).await;
    let client = registry.client();
    let view = verify_image(
        &client,
        "busybox",
        "latest",
        MEDIA_OCI_MANIFEST,
        MEDIA_OCI_LAYER_GZIP,
    )
    .await
    .view;
    check_busybox_base(&view);
    let blob = registry
        .anonymous_client()
        .get(&format!(
            "/v2/busybox/blobs/{}",
            images.busybox.config_digest
        ))
        .await;
    assert_eq!(blob.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn token_registry_issues_tokens_and_serves_pulls_with_them() {
    let registry = Registry::start_token_auth("bob", "hunter2").await;
    let realm = registry.token_realm().expect("token registry has a realm");
    assert_eq!(registry.tokens_issued(), Some(0));

    // Anonymous requests are sent to the token server.
    let anonymous = registry.anonymous_client().get("/v2/").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let challenge = anonymous.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with(&format!(
            "Bearer realm=\"{realm}\",service=\"{TOKEN_SERVICE}\""
        )),
        "{challenge}"
    );

    // The token server refuses missing and wrong credentials.
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        )
        .no_proxy()
        .build()
        .unwrap();
    let token_url = |scope: &str| {
        let mut url = reqwest::Url::parse(&realm).unwrap();
        url.query_pairs_mut()
            .append_pair("service", TOKEN_SERVICE)
            .append_pair("scope", scope);
        url
    };
    let scope = "repository:busybox:pull";
    let resp = http.get(token_url(scope)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = http
        .get(token_url(scope))
        .basic_auth("bob", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        registry
            .client_with("bob", "wrong")
            .get("/v2/")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(registry.tokens_issued(), Some(0));

    // With the right credentials the client gets tokens and pushes.
    let images = TestImages::push_all(&registry).await;
    assert!(registry.tokens_issued().unwrap() > 0);

    // A token for busybox:pull serves busybox's manifest and blobs...
    let token_for = |scope: String| {
        let http = http.clone();
        let url = token_url(&scope);
        async move {
            let resp = http
                .get(url)
                .basic_auth("bob", Some("hunter2"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let reply: Value = resp.json_value().await;
            reply["token"].as_str().expect("token").to_owned()
        }
    };
    let token = token_for(scope.into()).await;
    let with_bearer = |token: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h.insert("accept", HeaderValue::from_static(MEDIA_OCI_MANIFEST));
        h
    };
    let anon = registry.anonymous_client();
    let manifest_path = "/v2/busybox/manifests/latest";
    let resp = anon
        .raw(Method::GET, manifest_path, with_bearer(&token), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        sha256_digest(&resp.bytes().await.unwrap()),
        images.busybox.manifest_digest
    );
    let blob_path = format!("/v2/busybox/blobs/{}", images.busybox.layer_digests[0]);
    let resp = anon
        .raw(Method::GET, &blob_path, with_bearer(&token), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        sha256_digest(&resp.bytes().await.unwrap()),
        images.busybox.layer_digests[0]
    );
    // ...but not another repository's, and a pull token does not allow a push.
    let resp = anon
        .raw(
            Method::GET,
            "/v2/web/manifests/latest",
            with_bearer(&token),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = anon
        .raw(
            Method::POST,
            "/v2/busybox/blobs/uploads/",
            with_bearer(&token),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A token whose claims were altered after signing is refused.
    let (head, rest) = token.split_once('.').unwrap();
    let (_claims, sig) = rest.split_once('.').unwrap();
    let other = token_for("repository:web:pull".into()).await;
    let other_claims = other.split('.').nth(1).unwrap();
    let forged = format!("{head}.{other_claims}.{sig}");
    let resp = anon
        .raw(
            Method::GET,
            "/v2/web/manifests/latest",
            with_bearer(&forged),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = anon
        .raw(
            Method::GET,
            "/v2/web/manifests/latest",
            with_bearer(&other),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // The OAuth2 password grant (POST) works too.
    let resp = http
        .post(realm.clone())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&username=bob&password=hunter2&service={TOKEN_SERVICE}&scope=repository%3Abusybox%3Apull"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let reply: Value = resp.json_value().await;
    let token = reply["access_token"].as_str().expect("access_token");
    let resp = anon
        .raw(Method::GET, manifest_path, with_bearer(token), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // And the client pulls everything through tokens.
    let view = verify_image(
        &registry.client(),
        "layered",
        "latest",
        MEDIA_OCI_MANIFEST,
        MEDIA_OCI_LAYER_GZIP,
    )
    .await
    .view;
    for (path, contents) in LAYERED_PRESENT {
        assert_eq!(file(&view, path), *contents);
    }
}

/// `resp.json()` needs reqwest's json feature; this is all the tests need of it.
trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        serde_json::from_slice(&self.bytes().await.expect("body")).expect("JSON body")
    }
}

#[tokio::test]
async fn stop_and_restart_keep_port_and_storage() {
    let mut registry = Registry::start_plain().await;
    let image = ImageBuilder::busybox().build();
    let client = registry.client();
    let digest = image.push(&client, "keep", Some("v1")).await;
    let host = registry.host().to_owned();

    registry.stop();
    assert!(!registry.is_running());
    // A fresh client: a pooled keep-alive connection would fail differently.
    let err = registry
        .client()
        .raw(Method::GET, "/v2/", HeaderMap::new(), None)
        .await
        .expect_err("a stopped registry does not answer");
    assert!(err.is_connect(), "{err:?}");

    registry.restart().await;
    assert!(registry.is_running());
    assert_eq!(registry.host(), host);
    let fetched = client.get_manifest("keep", "v1").await;
    assert_eq!(sha256_digest(&fetched.bytes), digest);
    // A restart of a running registry works too.
    registry.restart().await;
    assert_eq!(
        client.get_manifest("keep", &digest).await.bytes,
        image.manifest
    );
}

#[tokio::test]
async fn parallel_registries_do_not_collide() {
    let registries = futures_join_all(8).await;
    let mut hosts: Vec<&str> = registries.iter().map(|r| r.host()).collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), registries.len());
    let dirs: std::collections::HashSet<_> = registries.iter().map(|r| r.storage_dir()).collect();
    assert_eq!(dirs.len(), registries.len());
    let storage = registries[0].storage_dir();
    drop(registries);
    assert!(!storage.exists(), "dropping a registry removes its files");
}

async fn futures_join_all(n: usize) -> Vec<Registry> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(Registry::start_plain()))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("registry start task"));
    }
    out
}

#[tokio::test]
async fn broken_content_can_be_pushed_and_served() {
    let registry = Registry::start_plain().await;
    let client = registry.client();

    // Bytes that do not match their digest: corrupt the stored blob behind the registry.
    let image = ImageBuilder::busybox().build();
    image.push(&client, "corrupt", Some("latest")).await;
    let layer = &image.layers[0];
    let mut bad = layer.blob.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    registry.corrupt_blob(&layer.digest, &bad);
    let served = client.get_blob("corrupt", &layer.digest).await;
    assert_eq!(served.len(), layer.size());
    assert_ne!(sha256_digest(&served), layer.digest);

    // A config whose diff_id does not match the layer.
    let wrong = ImageBuilder::busybox()
        .edit_config(|c| {
            c["rootfs"]["diff_ids"][0] = Value::from(format!("sha256:{}", "0".repeat(64)))
        })
        .build();
    wrong.push(&client, "wrong-diffid", Some("latest")).await;
    let (config, _) = fetch_config(&client, "wrong-diffid").await;
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", "0".repeat(64))
    );

    // A layer descriptor with the wrong size: the registry stores it as is.
    let wrong_size = ImageBuilder::busybox()
        .edit_manifest(|m| m["layers"][0]["size"] = Value::from(12345))
        .build();
    wrong_size.push(&client, "wrong-size", Some("latest")).await;
    let fetched: Value =
        serde_json::from_slice(&client.get_manifest("wrong-size", "latest").await.bytes).unwrap();
    assert_eq!(fetched["layers"][0]["size"], 12345);

    // A layer descriptor naming another existing blob (here: the config) with a layer type.
    let wrong_blob = ImageBuilder::busybox()
        .extra_blob(b"not a tar at all".to_vec())
        .edit_manifest(|m| {
            m["layers"][0]["digest"] = Value::from(sha256_digest(b"not a tar at all"));
            m["layers"][0]["size"] = Value::from(16);
        })
        .build();
    wrong_blob.push(&client, "not-a-tar", Some("latest")).await;

    // The registry refuses manifests naming blobs it does not have...
    let missing = ImageBuilder::busybox()
        .edit_manifest(|m| {
            m["layers"][0]["digest"] = Value::from(format!("sha256:{}", "1".repeat(64)))
        })
        .build();
    missing.push_blobs(&client, "missing").await;
    let resp = client
        .put_manifest("missing", "latest", missing.media_type, &missing.manifest)
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // ...but a blob can be deleted after its manifest was pushed.
    let image = ImageBuilder::busybox().build();
    image.push(&client, "deleted", Some("latest")).await;
    client.delete_blob("deleted", &image.layers[0].digest).await;
    let resp = client
        .get(&format!("/v2/deleted/blobs/{}", image.layers[0].digest))
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // An unknown layer media type is stored as is.
    let odd = ImageBuilder::busybox()
        .edit_manifest(|m| m["layers"][0]["mediaType"] = Value::from("application/x-ketch-unknown"))
        .build();
    odd.push(&client, "odd-media-type", Some("latest")).await;

    // An oversize config (16 MiB of labels) is a blob like any other.
    let big_label = "x".repeat(16 << 20);
    let big = ImageBuilder::busybox().label("big", &big_label).build();
    assert!(big.config.len() > 16 << 20);
    big.push(&client, "big-config", Some("latest")).await;
    let (_, config_len) = fetch_config(&client, "big-config").await;
    assert_eq!(config_len, big.config.len());

    // Manifests: distribution caps them at 4 MiB. Just under is stored; over is refused.
    let padded = |n: usize| {
        let pad = "p".repeat(n);
        ImageBuilder::busybox()
            .annotation("io.ketch.e2e.padding", &pad)
            .build()
    };
    let near = padded((4 << 20) - 2048);
    assert!(near.manifest.len() < 4 << 20);
    near.push(&client, "big-manifest", Some("near-limit")).await;
    let over = padded(5 << 20);
    near.push_blobs(&client, "big-manifest").await;
    let resp = client
        .put_manifest("big-manifest", "over", over.media_type, &over.manifest)
        .await;
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

async fn fetch_config(client: &RegistryClient, repo: &str) -> (Value, usize) {
    let manifest: Value =
        serde_json::from_slice(&client.get_manifest(repo, "latest").await.bytes).unwrap();
    let bytes = client
        .get_blob(repo, manifest["config"]["digest"].as_str().unwrap())
        .await;
    (serde_json::from_slice(&bytes).unwrap(), bytes.len())
}

#[test]
fn hostile_tar_entries_are_written_byte_for_byte() {
    let long_name = format!("deep/{}/file", "d".repeat(120));
    let long_target = format!("/{}", "t".repeat(150));
    let mut raw = tar::Header::new_ustar();
    raw.as_old_mut().name[..12].copy_from_slice(b"raw/entry\0\0\0");
    raw.set_size(3);
    raw.set_entry_type(tar::EntryType::Regular);
    raw.set_mode(0o4755);
    raw.set_uid(0);
    raw.set_gid(0);
    raw.set_mtime(0);
    raw.set_cksum();
    let layer = Layer::new(vec![
        Entry::file("../escape", "out"),
        Entry::file("/etc/absolute", "abs"),
        Entry::symlink("evil", "/"),
        Entry::file("evil/etc/through-symlink", "through"),
        Entry::symlink("up", "../../.."),
        Entry::hardlink("hard", "../../etc/passwd"),
        Entry::char_device("dev/null2", 1, 3),
        Entry::block_device("dev/loop9", 7, 9),
        Entry::fifo("pipe"),
        Entry::file("setuid", "x")
            .mode(0o4755)
            .owner(1000, 1000)
            .mtime(1),
        Entry::file(long_name.clone(), "long"),
        Entry::symlink("long-link", long_target.clone()),
        Entry::file("xattr", "x").pax("SCHILY.xattr.user.note", b"hello".to_vec()),
        Entry::whiteout("gone/thing"),
        Entry::opaque("opaque/"),
        Entry::raw(raw, b"raw".to_vec()),
    ])
    .compression(Compression::Zstd);
    let built = layer.build();
    let tar = zstd::decode_all(built.blob.as_slice()).unwrap();
    assert_eq!(sha256_digest(&tar), built.diff_id);

    let mut archive = tar::Archive::new(tar.as_slice());
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let h = entry.header();
        let kind = h.entry_type();
        let (mode, uid, gid, mtime) = (
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mtime().unwrap(),
        );
        // Only device entries carry device numbers; other GNU headers leave the fields empty.
        let dev = (
            h.device_major().ok().flatten(),
            h.device_minor().ok().flatten(),
        );
        let xattr = entry.pax_extensions().unwrap().and_then(|mut exts| {
            exts.find_map(|e| {
                let e = e.unwrap();
                (e.key().unwrap() == "SCHILY.xattr.user.note").then(|| e.value_bytes().to_vec())
            })
        });
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        seen.push((path, kind, link, mode, uid, gid, mtime, dev, xattr, data));
    }
    let paths: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        paths,
        [
            "../escape",
            "/etc/absolute",
            "evil",
            "evil/etc/through-symlink",
            "up",
            "hard",
            "dev/null2",
            "dev/loop9",
            "pipe",
            "setuid",
            long_name.as_str(),
            "long-link",
            "xattr",
            "gone/.wh.thing",
            "opaque/.wh..wh..opq",
            "raw/entry",
        ]
    );
    assert_eq!(seen[2].2.as_deref(), Some("/"));
    assert_eq!(seen[4].2.as_deref(), Some("../../.."));
    assert_eq!(seen[5].1, tar::EntryType::Link);
    assert_eq!(seen[5].2.as_deref(), Some("../../etc/passwd"));
    assert_eq!(
        (seen[6].1, seen[6].7),
        (tar::EntryType::Char, (Some(1), Some(3)))
    );
    assert_eq!(
        (seen[7].1, seen[7].7),
        (tar::EntryType::Block, (Some(7), Some(9)))
    );
    assert_eq!(seen[8].1, tar::EntryType::Fifo);
    assert_eq!(
        (seen[9].3, seen[9].4, seen[9].5, seen[9].6),
        (0o4755, 1000, 1000, 1)
    );
    assert_eq!(seen[10].9, b"long");
    assert_eq!(seen[11].2.as_deref(), Some(long_target.as_str()));
    assert_eq!(seen[12].8.as_deref(), Some(b"hello".as_slice()));
    assert_eq!(seen[15].9, b"raw");
    assert_eq!(seen[15].3, 0o4755);

    // Each compression gives its media type and reproducible digests.
    assert_eq!(
        Compression::Gzip.media_type(Format::Oci),
        MEDIA_OCI_LAYER_GZIP
    );
    assert_eq!(
        Compression::Gzip.media_type(Format::Docker),
        MEDIA_DOCKER_LAYER_GZIP
    );
    assert_eq!(
        layer.clone().compression(Compression::Gzip).build().digest,
        layer.clone().compression(Compression::Gzip).build().digest
    );
    assert_eq!(
        layer.clone().compression(Compression::None).build().diff_id,
        built.diff_id
    );
}
