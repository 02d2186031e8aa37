//! ImageService against real registries: reference forms, auth (basic over
//! TLS, bearer tokens), mirrors, index platform choice, compressions,
//! whiteouts seen through a real overlay mount, hostile images, concurrent
//! pulls sharing downloads, a pull killed half-way, restart survival.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ketch::cri::api::image_service_client::ImageServiceClient;
use ketch::cri::api::*;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::cri::unique;
use crate::harness::images::{
    COMPRESSION_FILE, CONFIGURED_STOP_SIGNAL, CONFIGURED_USER, CONFIGURED_WORKDIR, Entry,
    ImageBuilder, LAYERED_ABSENT, LAYERED_PRESENT, Layer, MULTIARCH_ARCH_FILE, TestImages,
    WEB_INDEX_HTML, host_arch, tar_dir, write_layout,
};
use crate::harness::registry::{Registry, TOKEN_SERVICE, free_port, sha256_digest};
use crate::harness::{Daemon, DaemonOptions};

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

async fn pull(
    client: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    client
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

async fn status(client: &mut ImageServiceClient<Channel>, image: &str) -> Option<Image> {
    client
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

async fn list(client: &mut ImageServiceClient<Channel>, filter: Option<&str>) -> Vec<Image> {
    client
        .list_images(ListImagesRequest {
            filter: filter.map(|f| ImageFilter { image: spec(f) }),
        })
        .await
        .unwrap()
        .into_inner()
        .images
}

/// The image's config, from verbose ImageStatus.
async fn image_config(client: &mut ImageServiceClient<Channel>, image: &str) -> serde_json::Value {
    let resp = client
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&resp.info["info"]).unwrap();
    info["imageSpec"].clone()
}

/// The unpacked layer dirs of an image, bottom first, computed from its
/// diff IDs (chain IDs, as the OCI spec defines them).
async fn layer_dirs(
    daemon: &Daemon,
    client: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Vec<PathBuf> {
    let config = image_config(client, image).await;
    let mut chain: Option<String> = None;
    let mut dirs = Vec::new();
    for diff in config["rootfs"]["diff_ids"].as_array().unwrap() {
        let diff = diff.as_str().unwrap();
        let next = match &chain {
            None => diff.to_owned(),
            Some(parent) => sha256_digest(format!("{parent} {diff}").as_bytes()),
        };
        dirs.push(
            daemon
                .root_dir
                .join("layers")
                .join(&next["sha256:".len()..]),
        );
        chain = Some(next);
    }
    dirs
}

/// Names under `dir` that a finished operation must not leave behind.
fn leftovers(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["layers", "content", "images", "leases"] {
        for entry in std::fs::read_dir(root.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                out.push(format!("{sub}/{name}"));
            }
        }
    }
    out
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn registry_config(host: &str, body: &str) -> DaemonOptions {
    DaemonOptions {
        config_toml: format!("[registries.\"{host}\"]\n{body}\n"),
        ..Default::default()
    }
}

#[tokio::test]
async fn reference_forms_status_list_and_remove() {
    let registry = Registry::start_plain().await;
    let images = TestImages::push_all(&registry).await;
    let host = registry.host().to_owned();
    let deep = ImageBuilder::busybox().build();
    deep.push(&registry.client(), "deep/path/busybox", Some("v1"))
        .await;
    let daemon = Daemon::start().await;
    let mut c = daemon.images().await;
    let bb = &images.busybox;

    // Every form names the same image.
    let forms = [
        format!("{host}/busybox"),
        format!("{host}/busybox:latest"),
        bb.by_digest(),
        format!("{host}/busybox:latest@{}", bb.manifest_digest),
        format!("{host}/deep/path/busybox:v1"),
        format!("localhost:{}/busybox", registry.port()),
    ];
    for form in &forms {
        assert_eq!(pull(&mut c, form, None).await.unwrap(), bb.id(), "{form}");
    }
    let all = list(&mut c, None).await;
    assert_eq!(all.len(), 1, "one image under many names: {all:?}");
    let image = &all[0];
    let mut tags = image.repo_tags.clone();
    tags.sort();
    let mut want = vec![
        format!("{host}/busybox:latest"),
        format!("{host}/deep/path/busybox:v1"),
        format!("localhost:{}/busybox:latest", registry.port()),
    ];
    want.sort();
    assert_eq!(tags, want, "name:tag@digest records no tag");
    assert!(
        image.repo_digests.contains(&bb.by_digest()),
        "{:?}",
        image.repo_digests
    );
    let layer_sum: usize = deep.layers.iter().map(|l| l.size()).sum();
    assert_eq!(
        image.size, layer_sum as u64,
        "size is the compressed layers' sum"
    );
    assert!(!image.pinned);

    // Lookups: tag, short forms, ID, ID prefix, digest.
    for key in [
        format!("{host}/busybox"),
        bb.id().to_owned(),
        bb.id()["sha256:".len()..].to_owned(),
        bb.id()["sha256:".len()..][..12].to_owned(),
        bb.by_digest(),
    ] {
        assert_eq!(
            status(&mut c, &key).await.map(|i| i.id),
            Some(bb.id().to_owned()),
            "{key}"
        );
    }
    assert!(
        status(&mut c, &format!("{host}/busybox:nope"))
            .await
            .is_none(),
        "unknown is empty, not an error"
    );
    assert_eq!(
        list(&mut c, Some(&format!("{host}/deep/path/busybox:v1")))
            .await
            .len(),
        1
    );
    assert!(
        list(&mut c, Some(&format!("{host}/other")))
            .await
            .is_empty()
    );

    // Docker schema2 of the same config: the same image, one more tag and digest.
    assert_eq!(
        pull(&mut c, &images.docker.reference, None).await.unwrap(),
        bb.id()
    );
    let image = status(&mut c, &images.docker.reference).await.unwrap();
    assert!(image.repo_tags.contains(&images.docker.reference));
    assert!(image.repo_digests.contains(&images.docker.by_digest()));

    // The image config comes through: user, env, entrypoint, cmd, ...
    pull(&mut c, &images.configured.reference, None)
        .await
        .unwrap();
    let configured = status(&mut c, &images.configured.reference).await.unwrap();
    assert_eq!(configured.username, CONFIGURED_USER);
    assert!(configured.uid.is_none());
    let config = image_config(&mut c, &images.configured.reference).await;
    assert_eq!(config["config"]["WorkingDir"], CONFIGURED_WORKDIR);
    assert_eq!(config["config"]["StopSignal"], CONFIGURED_STOP_SIGNAL);
    assert_eq!(config["config"]["Entrypoint"][0], "/bin/sh");

    // ImageFsInfo.
    let fs = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert!(
        usage.used_bytes.as_ref().unwrap().value > 500_000,
        "{usage:?}"
    );
    assert!(usage.inodes_used.as_ref().unwrap().value > 100);
    let mountpoint = &usage.fs_id.as_ref().unwrap().mountpoint;
    assert!(
        daemon
            .root_dir
            .canonicalize()
            .unwrap()
            .starts_with(mountpoint),
        "{mountpoint}"
    );

    // Remove by one tag: every tag goes; unknown is fine.
    c.remove_image(RemoveImageRequest {
        image: spec(&images.docker.reference),
    })
    .await
    .unwrap();
    assert!(status(&mut c, &format!("{host}/busybox")).await.is_none());
    assert!(status(&mut c, bb.id()).await.is_none());
    c.remove_image(RemoveImageRequest {
        image: spec(bb.id()),
    })
    .await
    .unwrap();
    assert_eq!(list(&mut c, None).await.len(), 1, "configured is left");

    // Bad input.
    let err = pull(&mut c, "in valid", None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = pull(&mut c, &format!("{host}/busybox:missing"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    daemon.assert_clean();
}

#[tokio::test]
async fn compressions_platforms_and_whiteouts() {
    let registry = Registry::start_plain().await;
    let images = TestImages::push_all(&registry).await;
    let daemon = Daemon::start().await;
    let mut c = daemon.images().await;

    for (image, name) in [
        (&images.gzip, "gzip"),
        (&images.zstd, "zstd"),
        (&images.uncompressed, "none"),
    ] {
        assert_eq!(
            pull(&mut c, &image.reference, None).await.unwrap(),
            image.id()
        );
        let dirs = layer_dirs(&daemon, &mut c, &image.reference).await;
        let top = dirs.last().unwrap();
        let file = top.join(COMPRESSION_FILE.trim_start_matches('/'));
        assert_eq!(std::fs::read_to_string(file).unwrap(), format!("{name}\n"));
        assert!(dirs[0].join("bin/busybox").is_file());
    }
    // The three share the busybox layer (same diff, no parent): stored once.
    let layer_count = std::fs::read_dir(daemon.root_dir.join("layers"))
        .unwrap()
        .count();
    assert_eq!(layer_count, 4, "one busybox layer + three marker layers");

    // The index resolves to this machine's platform.
    assert_eq!(
        pull(&mut c, &images.multiarch.reference, None)
            .await
            .unwrap(),
        images.multiarch.id()
    );
    let dirs = layer_dirs(&daemon, &mut c, &images.multiarch.reference).await;
    let arch = std::fs::read_to_string(
        dirs.last()
            .unwrap()
            .join(MULTIARCH_ARCH_FILE.trim_start_matches('/')),
    )
    .unwrap();
    assert_eq!(arch, format!("{}\n", host_arch()));
    let image = status(&mut c, &images.multiarch.reference).await.unwrap();
    assert!(
        image.repo_digests.contains(&images.multiarch.by_digest()),
        "the index digest"
    );

    // Whiteouts and the opaque dir, seen through overlayfs itself.
    pull(&mut c, &images.layered.reference, None).await.unwrap();
    let mut dirs = layer_dirs(&daemon, &mut c, &images.layered.reference).await;
    dirs.reverse();
    let merged = daemon.dir.path().join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    let lower: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lower.join(":")).as_str()),
    )
    .expect("mount the image's layers");
    let check = || {
        for (path, contents) in LAYERED_PRESENT {
            let got = std::fs::read_to_string(merged.join(path.trim_start_matches('/')));
            assert_eq!(got.ok().as_deref(), Some(*contents), "{path}");
        }
        for path in LAYERED_ABSENT {
            assert!(
                std::fs::symlink_metadata(merged.join(path.trim_start_matches('/'))).is_err(),
                "{path} must not show"
            );
        }
        assert!(merged.join("bin/busybox").is_file());
    };
    let result = std::panic::catch_unwind(check);
    nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH).unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    daemon.assert_clean();
}

/// Whether the content store holds blob `digest` ("sha256:<hex>").
fn stored_blob(daemon: &Daemon, digest: &str) -> bool {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    daemon.root_dir.join("content/sha256").join(hex).is_file()
}

#[tokio::test]
async fn pulled_layer_blobs_are_dropped_once_unpacked_unless_configured_to_stay() {
    let registry = Registry::start_plain().await;
    let images = TestImages::push_all(&registry).await;
    let image = &images.layered;
    assert!(image.layer_digests.len() > 1, "{image:?}");
    for (config_toml, kept) in [
        ("", false),
        ("[image]\ndiscard_unpacked_layers = false\n", true),
    ] {
        let daemon = Daemon::start_with(DaemonOptions {
            config_toml: config_toml.into(),
            ..Default::default()
        })
        .await;
        let mut c = daemon.images().await;
        assert_eq!(
            pull(&mut c, &image.reference, None).await.unwrap(),
            image.id()
        );
        // Manifest and config always stay (ImageStatus reads the config).
        assert!(
            stored_blob(&daemon, &image.manifest_digest),
            "{config_toml:?}"
        );
        assert!(
            stored_blob(&daemon, &image.config_digest),
            "{config_toml:?}"
        );
        for layer in &image.layer_digests {
            assert_eq!(
                stored_blob(&daemon, layer),
                kept,
                "{config_toml:?}: {layer}"
            );
        }
        for dir in layer_dirs(&daemon, &mut c, &image.reference).await {
            assert!(dir.is_dir(), "{config_toml:?}: {dir:?} unpacked");
        }
        assert!(leftovers(&daemon.root_dir).is_empty(), "{config_toml:?}");

        // A layer whose unpacked copy is lost comes back at the next pull:
        // unpacked from the kept blob, or downloaded again.
        let top = layer_dirs(&daemon, &mut c, &image.reference)
            .await
            .pop()
            .unwrap();
        std::fs::remove_dir_all(&top).unwrap();
        pull(&mut c, &image.reference, None).await.unwrap();
        assert!(top.is_dir(), "{config_toml:?}: the layer is back");
        daemon.assert_clean();
    }
}

/// An image whose only layer is `entries` (no busybox, for speed).
async fn push_layer_image(registry: &Registry, repo: &str, entries: Vec<Entry>) -> String {
    let image = ImageBuilder::new().layer(Layer::new(entries)).build();
    image.push(&registry.client(), repo, Some("latest")).await;
    format!("{}/{repo}:latest", registry.host())
}

#[tokio::test]
async fn hostile_images_are_refused_or_contained() {
    let registry = Registry::start_plain().await;
    let daemon = Daemon::start().await;
    let mut c = daemon.images().await;
    let outside = daemon.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, "host file").unwrap();
    let marker = unique("ketch-e2e-escape");
    let o = outside.display().to_string();

    // `..` entries: refused, naming the entry; nothing written above.
    let escape = format!(
        "../../../../../../../../{}/{marker}",
        o.trim_start_matches('/')
    );
    let dotdot = push_layer_image(&registry, "dotdot", vec![Entry::file(&escape, "x")]).await;
    let err = pull(&mut c, &dotdot, None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&marker), "{}", err.message());

    // Absolute paths land inside the layer.
    let abs = format!("{o}/{marker}-abs");
    let absolute = push_layer_image(&registry, "absolute", vec![Entry::file(&abs, "x")]).await;
    pull(&mut c, &absolute, None).await.unwrap();
    let dirs = layer_dirs(&daemon, &mut c, &absolute).await;
    assert!(dirs[0].join(abs.trim_start_matches('/')).is_file());

    // Through a symlink to a host dir: resolved inside the layer, where it
    // does not exist, so the pull fails.
    let through = push_layer_image(
        &registry,
        "symlink",
        vec![
            Entry::symlink("esc", o.clone()),
            Entry::file("esc/pwned", "x"),
        ],
    )
    .await;
    assert!(pull(&mut c, &through, None).await.is_err());

    // A hard link to a host file: resolved inside the layer too.
    let hard = push_layer_image(
        &registry,
        "hardlink",
        vec![Entry::hardlink("stolen", victim.display().to_string())],
    )
    .await;
    assert!(pull(&mut c, &hard, None).await.is_err());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&victim).unwrap().nlink(), 1);
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names.len(), 1, "only the victim is outside: {names:?}");

    // A blob that does not match its digest.
    let image = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("f", "good content")]))
        .build();
    image
        .push(&registry.client(), "corrupt", Some("latest"))
        .await;
    let digest = &image.layers[0].digest;
    let len = image.layers[0].blob.len();
    registry.corrupt_blob(digest, &vec![0x5a; len]);
    let err = pull(&mut c, &format!("{}/corrupt:latest", registry.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(digest), "{}", err.message());

    // A diff ID that does not match the layer.
    let wrong = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("f", "x")]))
        .edit_config(|c| c["rootfs"]["diff_ids"][0] = serde_json::json!(sha256_digest(b"other")))
        .build();
    wrong
        .push(&registry.client(), "diffid", Some("latest"))
        .await;
    let err = pull(&mut c, &format!("{}/diffid:latest", registry.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains("uncompressed"), "{}", err.message());

    // A size in the manifest that is not the blob's.
    let sized = ImageBuilder::new()
        .layer(Layer::new(vec![Entry::file("g", "y")]))
        .edit_manifest(|m| {
            let size = m["layers"][0]["size"].as_u64().unwrap();
            m["layers"][0]["size"] = serde_json::json!(size + 10);
        })
        .build();
    sized.push(&registry.client(), "size", Some("latest")).await;
    let err = pull(&mut c, &format!("{}/size:latest", registry.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");

    // A config over the limit.
    let mut huge =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"pad":""#
            .to_vec();
    huge.extend(std::iter::repeat_n(b'x', 5 << 20));
    huge.extend_from_slice(b"\"}");
    let big = ImageBuilder::new().raw_config(huge).build();
    big.push(&registry.client(), "huge", Some("latest")).await;
    let err = pull(&mut c, &format!("{}/huge:latest", registry.host()), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("larger than the limit"),
        "{}",
        err.message()
    );

    // Only the contained image exists, and nothing half-made is left.
    let all = list(&mut c, None).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].repo_tags, vec![absolute.clone()]);
    assert!(
        leftovers(&daemon.root_dir).is_empty(),
        "{:?}",
        leftovers(&daemon.root_dir)
    );
    daemon.assert_clean();
}

#[tokio::test]
async fn basic_auth_over_tls_with_the_registry_ca() {
    let registry = Registry::start_tls_auth("alice", "s3cret").await;
    let image = ImageBuilder::busybox().build();
    image
        .push(&registry.client(), "busybox", Some("latest"))
        .await;
    let reference = format!("{}/busybox:latest", registry.host());
    let ca = registry.ca_pem_path().unwrap().display().to_string();

    // Without the CA, TLS fails and says so.
    let daemon = Daemon::start().await;
    let mut c = daemon.images().await;
    let err = pull(&mut c, &reference, None).await.unwrap_err();
    assert!(
        err.message().to_lowercase().contains("certificate")
            || err.message().contains("UnknownIssuer"),
        "{err:?}"
    );
    drop(c);
    drop(daemon);

    let daemon = Daemon::start_with(registry_config(
        registry.host(),
        &format!("ca_file = \"{ca}\""),
    ))
    .await;
    let mut c = daemon.images().await;
    let err = pull(&mut c, &reference, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("credentials"), "{}", err.message());

    let wrong = AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut c, &reference, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("username or password"),
        "{}",
        err.message()
    );

    let right = AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        server_address: registry.host().into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut c, &reference, Some(right)).await.unwrap(),
        image.config_digest
    );

    // The base64 `auth` form works too.
    c.remove_image(RemoveImageRequest {
        image: spec(&reference),
    })
    .await
    .unwrap();
    let encoded = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cret"),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut c, &reference, Some(encoded)).await.unwrap(),
        image.config_digest
    );
    daemon.assert_clean();
}

#[tokio::test]
async fn bearer_tokens_from_the_token_server() {
    let registry = Registry::start_token_auth("bob", "hunter2").await;
    let image = ImageBuilder::busybox().build();
    image
        .push(&registry.client(), "busybox", Some("latest"))
        .await;
    let reference = format!("{}/busybox:latest", registry.host());
    let daemon = Daemon::start().await;
    let mut c = daemon.images().await;

    let err = pull(&mut c, &reference, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let wrong = AuthConfig {
        username: "bob".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = pull(&mut c, &reference, Some(wrong)).await.unwrap_err();
    assert!(
        err.message().contains("username or password"),
        "{}",
        err.message()
    );

    let right = AuthConfig {
        username: "bob".into(),
        password: "hunter2".into(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut c, &reference, Some(right.clone())).await.unwrap(),
        image.config_digest
    );
    c.remove_image(RemoveImageRequest {
        image: spec(&reference),
    })
    .await
    .unwrap();

    // A registry token is sent as is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let realm = registry.token_realm().unwrap();
    let token = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!(
            "{realm}?service={TOKEN_SERVICE}&scope=repository:busybox:pull"
        ))
        .basic_auth("bob", Some("hunter2"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let token: serde_json::Value = serde_json::from_slice(&token).unwrap();
    let bearer = AuthConfig {
        registry_token: token["token"].as_str().unwrap().to_owned(),
        ..Default::default()
    };
    assert_eq!(
        pull(&mut c, &reference, Some(bearer)).await.unwrap(),
        image.config_digest
    );
    daemon.assert_clean();
}

#[tokio::test]
async fn mirrors_are_tried_in_order_before_the_origin() {
    let mut origin = Registry::start_plain().await;
    let mirror = Registry::start_plain().await;
    let web = ImageBuilder::busybox()
        .layer(Layer::new(vec![Entry::file("www/x", "mirrored")]))
        .build();
    web.push(&origin.client(), "web", Some("latest")).await;
    web.push(&mirror.client(), "web", Some("latest")).await;
    let only_origin = ImageBuilder::busybox()
        .layer(Layer::new(vec![Entry::file("o", "origin")]))
        .build();
    only_origin
        .push(&origin.client(), "origin-only", Some("latest"))
        .await;

    let dead = free_port();
    let daemon = Daemon::start_with(registry_config(
        origin.host(),
        &format!(
            "mirrors = [\"http://127.0.0.1:{dead}\", \"{}\"]",
            mirror.base_url()
        ),
    ))
    .await;
    let mut c = daemon.images().await;

    // With the origin down, the (second) mirror serves the pull.
    origin.stop();
    let reference = format!("{}/web:latest", origin.host());
    assert_eq!(
        pull(&mut c, &reference, None).await.unwrap(),
        web.config_digest
    );
    let image = status(&mut c, &reference).await.unwrap();
    assert_eq!(
        image.repo_tags,
        vec![reference.clone()],
        "named after the origin"
    );

    // What the mirror lacks comes from the origin.
    origin.restart().await;
    let reference = format!("{}/origin-only:latest", origin.host());
    assert_eq!(
        pull(&mut c, &reference, None).await.unwrap(),
        only_origin.config_digest
    );
    daemon.assert_clean();
}

/// A counting (and, on request, stalling) HTTP proxy in front of a plain
/// registry, used as its mirror: it tells how often each blob was fetched.
struct CountingProxy {
    port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream: String,
    counts: Mutex<HashMap<String, usize>>,
    /// A blob digest whose body is cut off half-way, the connection kept open.
    stall: Mutex<Option<String>>,
    held: Mutex<Vec<tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>>>,
    http: reqwest::Client,
}

impl CountingProxy {
    async fn start(upstream: &str) -> CountingProxy {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            counts: Mutex::new(HashMap::new()),
            stall: Mutex::new(None),
            held: Mutex::new(Vec::new()),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        });
        let app = axum::Router::new()
            .fallback(proxy_handler)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CountingProxy { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn count(&self, needle: &str) -> usize {
        self.state
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path.contains(needle))
            .map(|(_, n)| n)
            .sum()
    }
}

async fn proxy_handler(
    axum::extract::State(state): axum::extract::State<Arc<ProxyState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::header;
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    *state
        .counts
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    let mut upstream = state.http.get(format!("{}{path}", state.upstream));
    if let Some(accept) = request.headers().get(header::ACCEPT) {
        upstream = upstream.header(header::ACCEPT, accept.clone());
    }
    let resp = upstream.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap();
    let mut out = axum::response::Response::builder().status(status.as_u16());
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        if let Some(v) = headers.get(name.as_str()) {
            out = out.header(name, v.as_bytes());
        }
    }
    let stalled = state
        .stall
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|d| path.contains(d.as_str()));
    if stalled {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(Ok(body.slice(..body.len() / 2))).await.unwrap();
        state.held.lock().unwrap().push(tx);
        return out
            .body(axum::body::Body::from_stream(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
            .unwrap();
    }
    out.body(axum::body::Body::from(body)).unwrap()
}

#[tokio::test]
async fn concurrent_pulls_share_downloads_and_present_images_download_nothing() {
    let registry = Registry::start_plain().await;
    let images = TestImages::push_all(&registry).await;
    let proxy = CountingProxy::start(&registry.base_url()).await;
    let daemon = Daemon::start_with(registry_config(
        registry.host(),
        &format!("mirrors = [\"{}\"]", proxy.url()),
    ))
    .await;

    // Several pulls of two images sharing the busybox layer, all at once.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let reference = if i % 2 == 0 {
            &images.web
        } else {
            &images.layered
        }
        .reference
        .clone();
        let mut c = daemon.images().await;
        tasks.push(tokio::spawn(
            async move { pull(&mut c, &reference, None).await },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut layer_digests: Vec<&String> = images
        .web
        .layer_digests
        .iter()
        .chain(&images.layered.layer_digests)
        .collect();
    layer_digests.sort();
    layer_digests.dedup();
    for digest in &layer_digests {
        assert_eq!(
            proxy.count(&format!("blobs/{digest}")),
            1,
            "{digest} downloaded once"
        );
    }
    assert_eq!(
        proxy.count(&format!("blobs/{}", images.web.config_digest)),
        1
    );

    // Pulling a present image fetches its manifest and no blob.
    let manifests_before = proxy.count("/manifests/");
    let blobs_before = proxy.count("/blobs/");
    let mut c = daemon.images().await;
    pull(&mut c, &images.web.reference, None).await.unwrap();
    assert!(proxy.count("/manifests/") > manifests_before);
    assert_eq!(
        proxy.count("/blobs/"),
        blobs_before,
        "no layer, no config downloaded"
    );
    daemon.assert_clean();
}

#[tokio::test]
async fn a_killed_pull_leaves_nothing_and_images_survive_restarts() {
    let registry = Registry::start_plain().await;
    let images = TestImages::push_all(&registry).await;
    let proxy = CountingProxy::start(&registry.base_url()).await;
    let mut daemon = Daemon::start_with(registry_config(
        registry.host(),
        &format!("mirrors = [\"{}\"]", proxy.url()),
    ))
    .await;
    let mut c = daemon.images().await;
    pull(&mut c, &images.busybox.reference, None).await.unwrap();
    let busybox_dirs = layer_dirs(&daemon, &mut c, &images.busybox.reference).await;

    // The web image's own layer stalls half-way; ketch is killed meanwhile.
    let stalled = images.web.layer_digests.last().unwrap().clone();
    *proxy.state.stall.lock().unwrap() = Some(stalled.clone());
    let reference = images.web.reference.clone();
    let mut c2 = daemon.images().await;
    let pending = tokio::spawn(async move { pull(&mut c2, &reference, None).await });
    let root = daemon.root_dir.clone();
    wait_for("the stalled download to start", || {
        proxy.count(&stalled) == 1
    })
    .await;
    wait_for("a half-made layer", || !leftovers(&root).is_empty()).await;
    daemon.kill9();
    assert!(pending.await.unwrap().is_err());
    drop(c);

    daemon.restart().await;
    let mut c = daemon.images().await;
    let all = list(&mut c, None).await;
    assert_eq!(all.len(), 1, "only busybox: {all:?}");
    assert_eq!(all[0].id, images.busybox.id());
    assert!(busybox_dirs.iter().all(|d| d.join("bin/busybox").exists()));
    wait_for("the start-up collection", || leftovers(&root).is_empty()).await;

    // Unstalled, the same pull now completes; and survives a clean restart.
    *proxy.state.stall.lock().unwrap() = None;
    proxy.state.held.lock().unwrap().clear();
    assert_eq!(
        pull(&mut c, &images.web.reference, None).await.unwrap(),
        images.web.id()
    );
    let web_dirs = layer_dirs(&daemon, &mut c, &images.web.reference).await;
    drop(c);
    daemon.stop().await;
    daemon.restart().await;
    let mut c = daemon.images().await;
    assert_eq!(list(&mut c, None).await.len(), 2);
    assert_eq!(
        status(&mut c, &images.web.reference).await.unwrap().id,
        images.web.id()
    );
    assert!(web_dirs.iter().all(|d| d.is_dir()));
    let html = std::fs::read_to_string(web_dirs.last().unwrap().join("www/index.html")).unwrap();
    assert_eq!(html, WEB_INDEX_HTML);
    daemon.assert_clean();
}

#[tokio::test]
async fn ketch_image_import_loads_a_layout_while_ketch_serves() {
    let daemon = Daemon::start().await;
    let image = ImageBuilder::busybox()
        .layer(Layer::new(vec![Entry::file("imported", "yes\n")]))
        .build();
    let layout = daemon.dir.path().join("layout");
    write_layout(&image, "example.com/imported:v1", &layout);

    let import = |path: &Path| {
        std::process::Command::new(crate::harness::daemon::ketch_bin())
            .args(["image", "import", "--root-dir"])
            .arg(&daemon.root_dir)
            .arg(path)
            .env("KETCH_CONFIG", daemon.config_path.as_os_str())
            .output()
            .unwrap()
    };
    let out = import(&layout);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "imported example.com/imported:v1 {}",
            image.config_digest
        )),
        "{stdout}"
    );
    assert!(stderr.contains("layer 2/2"), "progress lines: {stderr}");

    // The running daemon sees it at once.
    let mut c = daemon.images().await;
    let found = status(&mut c, "example.com/imported:v1").await.unwrap();
    assert_eq!(found.id, image.config_digest);
    assert!(
        found
            .repo_digests
            .contains(&format!("example.com/imported@{}", image.digest))
    );
    let dirs = layer_dirs(&daemon, &mut c, "example.com/imported:v1").await;
    assert_eq!(
        std::fs::read_to_string(dirs[1].join("imported")).unwrap(),
        "yes\n"
    );

    // A tar of the same layout: nothing new to unpack.
    let archive = daemon.dir.path().join("layout.tar");
    tar_dir(&layout, &archive);
    let out = import(&archive);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already present"));

    // Not an image archive: a clear error.
    let out = import(&daemon.config_path);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("import"));
    assert_eq!(list(&mut c, None).await.len(), 1);
    daemon.assert_clean();
}

/// deploy/kind's boot-time import over a directory of archives: every good
/// one lands in the store of the serving daemon, a bad one is named and
/// fails the run without stopping the others, and a second boot reads only
/// what changed.
#[tokio::test]
async fn the_kind_node_import_script_loads_every_archive_of_a_dir() {
    let daemon = Daemon::start().await;
    let dir = daemon.dir.path().join("kind-images");
    std::fs::create_dir_all(&dir).unwrap();
    for (n, name) in ["example.com/boot-a:v1", "example.com/boot-b:v1"]
        .iter()
        .enumerate()
    {
        let image = ImageBuilder::busybox()
            .layer(Layer::new(vec![Entry::file("which", format!("{n}\n"))]))
            .build();
        let layout = daemon.dir.path().join(format!("layout-{n}"));
        write_layout(&image, name, &layout);
        tar_dir(&layout, &dir.join(format!("image-{n}.tar")));
    }
    std::fs::write(dir.join("broken.tar"), b"not an archive").unwrap();
    let stamps = daemon.dir.path().join("stamps");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kind/ketch-import-images");
    let run = || {
        let out = std::process::Command::new(&script)
            .arg(&dir)
            .env("KETCH", crate::harness::daemon::ketch_bin())
            .env("KETCH_CONFIG", &daemon.config_path)
            .env("KETCH_ROOT_DIR", &daemon.root_dir)
            .env("STAMP_DIR", &stamps)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = run();
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("broken.tar: import failed"), "{stderr}");
    let mut c = daemon.images().await;
    for name in ["example.com/boot-a:v1", "example.com/boot-b:v1"] {
        assert!(status(&mut c, name).await.is_some(), "{name} not imported");
    }

    // The next boot: the good archives are remembered, the bad one tried.
    let (code, stdout, stderr) = run();
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("image-0.tar: imported before"), "{stdout}");
    assert!(stdout.contains("image-1.tar: imported before"), "{stdout}");
    assert!(!stderr.contains("image-"), "{stderr}");

    std::fs::remove_file(dir.join("broken.tar")).unwrap();
    let (code, stdout, stderr) = run();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(list(&mut c, None).await.len(), 2);
    daemon.assert_clean();
}
