//! Image pulls against hostile content and a hostile node: decompression
//! bombs, a disk that fills up mid-pull, a registry sending an oversized
//! manifest. Each must fail with the right code and a message that says
//! what happened, and leave nothing half-made behind.

use std::path::{Path, PathBuf};

use ketch::cri::api::image_service_client::ImageServiceClient;
use ketch::cri::api::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::images::{Compression, Entry, ImageBuilder, Layer};
use crate::harness::registry::Registry;
use crate::harness::{Daemon, DaemonOptions};

async fn pull(client: &mut ImageServiceClient<Channel>, image: &str) -> Result<(), tonic::Status> {
    client
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

async fn image_count(client: &mut ImageServiceClient<Channel>) -> usize {
    client
        .list_images(ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images
        .len()
}

/// An image whose only layer is `entries`, uncompressed or gzip.
async fn push_single_layer(
    registry: &Registry,
    repo: &str,
    entries: Vec<Entry>,
    compression: Compression,
) -> (String, String) {
    let layer = Layer::new(entries).compression(compression);
    let image = ImageBuilder::new().layer(layer).build();
    image.push(&registry.client(), repo, Some("latest")).await;
    let digest = image.layers[0].digest.clone();
    (format!("{}/{repo}:latest", registry.host()), digest)
}

/// Entries of `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The half-made things a pull may leave: `.tmp-*` in the content store
/// and anything at all in the layer store.
fn leftovers(daemon: &Daemon) -> Vec<String> {
    let mut found: Vec<String> = entries(&daemon.root_dir.join("content"))
        .into_iter()
        .filter(|n| n.starts_with(".tmp-"))
        .map(|n| format!("content/{n}"))
        .collect();
    found.extend(
        entries(&daemon.root_dir.join("layers"))
            .into_iter()
            .map(|n| format!("layers/{n}")),
    );
    found
}

/// `len` bytes no compressor can shrink (xorshift64).
fn incompressible(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test]
async fn decompression_bombs_and_oversized_layers_are_refused() {
    let registry = Registry::start_plain().await;
    let daemon = Daemon::start_with(DaemonOptions {
        config_toml: "[image]\n\
                      max_layer_unpacked_bytes = 16777216\n\
                      max_layer_compression_ratio = 100\n"
            .into(),
        ..Default::default()
    })
    .await;
    let mut c = daemon.images().await;

    // 48 MiB of zeros gzip to ~50 KiB: refused for its ratio long before
    // the size cap.
    let zeros = vec![0u8; 48 << 20];
    let (bomb, bomb_layer) = push_single_layer(
        &registry,
        "bomb",
        vec![Entry::file("zeros", zeros)],
        Compression::Gzip,
    )
    .await;
    let err = pull(&mut c, &bomb).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains(&bomb_layer), "{}", err.message());
    assert!(
        err.message().contains("image.max_layer_compression_ratio"),
        "{}",
        err.message()
    );
    assert_eq!(leftovers(&daemon), Vec::<String>::new());
    assert_eq!(image_count(&mut c).await, 0);

    // 20 MiB that do not compress: refused by the size cap.
    let (big, big_layer) = push_single_layer(
        &registry,
        "big",
        vec![Entry::file("data", incompressible(20 << 20))],
        Compression::None,
    )
    .await;
    let err = pull(&mut c, &big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains(&big_layer), "{}", err.message());
    assert!(
        err.message().contains("image.max_layer_unpacked_bytes"),
        "{}",
        err.message()
    );
    assert_eq!(leftovers(&daemon), Vec::<String>::new());
    assert_eq!(image_count(&mut c).await, 0);

    // A layer within the caps still pulls.
    let (small, _) = push_single_layer(
        &registry,
        "small",
        vec![Entry::file("hello", "hello\n")],
        Compression::Gzip,
    )
    .await;
    pull(&mut c, &small).await.expect("a small image pulls");
    assert_eq!(image_count(&mut c).await, 1);
    daemon.assert_clean();
}

/// A tmpfs mounted for one test, detached on drop (a panic included), so
/// the daemon's own leak check never sees it.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(at: &Path, size: &str) -> TmpfsMount {
        std::fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mount a tmpfs");
        TmpfsMount(at.to_owned())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_pull_with_resource_exhausted_and_leaves_nothing() {
    let registry = Registry::start_plain().await;
    // No reserve: the pull must run into the real ENOSPC.
    let mut daemon = Daemon::start_with(DaemonOptions {
        config_toml: "[image]\nfree_space_reserve_bytes = 0\n".into(),
        ..Default::default()
    })
    .await;
    // The root dir becomes a 16 MiB filesystem: stop, mount, start again.
    daemon.stop().await;
    std::fs::remove_dir_all(&daemon.root_dir).unwrap();
    let mount = TmpfsMount::new(&daemon.root_dir, "16m");
    daemon.restart().await;
    let mut c = daemon.images().await;

    let (image, _) = push_single_layer(
        &registry,
        "huge",
        vec![Entry::file("data", incompressible(24 << 20))],
        Compression::None,
    )
    .await;
    let err = pull(&mut c, &image).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let message = err.message();
    assert!(message.contains("no space left"), "{message}");
    assert!(
        message.contains(&daemon.root_dir.display().to_string()),
        "the path: {message}"
    );
    assert!(message.contains(" free"), "the free space: {message}");
    assert!(!message.contains("does not match"), "{message}");
    assert_eq!(leftovers(&daemon), Vec::<String>::new());
    assert_eq!(image_count(&mut c).await, 0);

    drop(c);
    daemon.stop().await;
    drop(mount);
    daemon.assert_clean();
}

/// A registry of one manifest that claims `len` bytes (and sends none).
async fn serve_oversized_manifest(len: u64) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head);
                let reply = if line.contains("/manifests/") {
                    format!(
                        "HTTP/1.1 200 OK\r\n\
                         Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
                         Content-Length: {len}\r\nConnection: close\r\n\r\n"
                    )
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_owned()
                };
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_oversized_manifest_is_named_once() {
    let port = serve_oversized_manifest(5 << 20).await;
    let daemon = Daemon::start().await;
    let mut c = daemon.images().await;
    let err = pull(&mut c, &format!("127.0.0.1:{port}/huge:latest"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let message = err.message();
    assert!(
        message.contains("manifest huge:latest is larger"),
        "{message}"
    );
    assert!(!message.contains("manifest manifest"), "{message}");
    daemon.assert_clean();
}
