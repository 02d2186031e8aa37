//! What CRI v1 of Kubernetes 1.36 adds, end to end: in-place pod resize
//! (UpdatePodSandboxResources), image volumes, the `Stream*` list RPCs,
//! the CRI's own stop signal, and what kubelet reads from Status and
//! RuntimeConfig.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ketch::cri::api::*;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::harness::cri::{container_config, pod_config, unique};
use crate::harness::env::Env;
use crate::harness::images::{Entry, ImageBuilder, Layer};

// ---------------------------------------------------------------------------
// Pod resize

/// The dirs of a pod cgroup in every hierarchy, made as kubelet makes the
/// pod's cgroup before RunPodSandbox, and removed on drop.
struct PodCgroup {
    parent: String,
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn make(parent: &str) -> PodCgroup {
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = Vec::new();
        if v1() {
            for entry in std::fs::read_dir(root).unwrap().flatten() {
                let meta = std::fs::symlink_metadata(entry.path()).unwrap();
                if meta.is_dir() && entry.file_name() != "unified" {
                    dirs.push(entry.path().join(parent.trim_start_matches('/')));
                }
            }
        } else {
            dirs.push(root.join(parent.trim_start_matches('/')));
        }
        for dir in &dirs {
            std::fs::create_dir_all(dir).unwrap();
        }
        PodCgroup {
            parent: parent.to_owned(),
            dirs,
        }
    }

    /// The pod cgroup's memory limit and CFS quota, as the kernel holds them.
    fn limits(&self) -> (String, String) {
        let read = |p: String| {
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .trim()
                .to_owned()
        };
        let p = self.parent.trim_start_matches('/');
        if v1() {
            (
                read(format!("/sys/fs/cgroup/memory/{p}/memory.limit_in_bytes")),
                read(format!("/sys/fs/cgroup/cpu/{p}/cpu.cfs_quota_us")),
            )
        } else {
            (
                read(format!("/sys/fs/cgroup/{p}/memory.max")),
                read(format!("/sys/fs/cgroup/{p}/cpu.max")),
            )
        }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// ketch runs on cgroup v1 when the memory controller is a v1 hierarchy
/// (hybrid hosts included).
fn v1() -> bool {
    Path::new("/sys/fs/cgroup/memory").is_dir()
}

fn limits(shares: i64, quota: i64, memory: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_shares: shares,
        cpu_quota: quota,
        cpu_period: 100_000,
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

async fn pod_info(env: &mut Env, id: &str) -> serde_json::Value {
    let reply = env
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        })
        .await
        .expect("pod status")
        .into_inner();
    serde_json::from_str(&reply.info["info"]).expect("info is JSON")
}

/// Kubelet's in-place resize of a pod: the pod cgroup (its
/// `cgroup_parent`) gets resources plus overhead, PodSandboxStatus reports
/// both, a second resize replaces the first.
#[tokio::test]
async fn an_in_place_pod_resize_reaches_the_pod_cgroup() {
    let mut env = Env::start().await;
    let parent = format!("/ketch-e2e-{}", unique("podresize"));
    let cgroup = PodCgroup::make(&parent);
    let mut config = pod_config(&unique("resize"), &env.log_dir());
    config.linux.as_mut().unwrap().cgroup_parent = parent.clone();
    let pod = env.run_pod_with(config).await;

    env.rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.0.clone(),
            overhead: Some(limits(0, 10_000, 16 << 20)),
            resources: Some(limits(512, 50_000, 128 << 20)),
        })
        .await
        .expect("resize");
    let (memory, cpu) = cgroup.limits();
    assert_eq!(memory, (144u64 << 20).to_string(), "resources + overhead");
    assert!(
        cpu.starts_with("60000"),
        "quota resources + overhead: {cpu}"
    );
    let info = pod_info(&mut env, &pod.0).await;
    let reported = &info["resources"];
    assert_eq!(reported["resources"]["memory_limit"], 128 << 20, "{info}");
    assert_eq!(reported["resources"]["cpu_shares"], 512, "{info}");
    assert_eq!(reported["overhead"]["memory_limit"], 16 << 20, "{info}");

    // Smaller: the cgroup shrinks with it.
    env.rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.0.clone(),
            overhead: None,
            resources: Some(limits(256, 20_000, 64 << 20)),
        })
        .await
        .expect("resize down");
    let (memory, cpu) = cgroup.limits();
    assert_eq!(memory, (64u64 << 20).to_string());
    assert!(cpu.starts_with("20000"), "{cpu}");
    let info = pod_info(&mut env, &pod.0).await;
    assert_eq!(info["resources"]["resources"]["memory_limit"], 64 << 20);
    assert!(info["resources"]["overhead"].is_null(), "{info}");

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
    drop(cgroup);
}

/// A pod without a cgroup of its own is resized on record; bad values and
/// unknown pods are refused, naming the problem, and change nothing.
#[tokio::test]
async fn a_pod_resize_without_a_pod_cgroup_is_recorded_and_bad_ones_refused() {
    let mut env = Env::start().await;
    let pod = env.run_pod("resize-plain").await;
    env.rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.0.clone(),
            overhead: None,
            resources: Some(limits(1024, 0, 256 << 20)),
        })
        .await
        .expect("resize");
    let info = pod_info(&mut env, &pod.0).await;
    assert_eq!(info["resources"]["resources"]["memory_limit"], 256 << 20);

    let mut bad = limits(1024, 0, 1 << 20);
    bad.cpu_period = 5;
    let err = env
        .rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: pod.0.clone(),
            overhead: Some(bad),
            resources: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("cpu_period"), "{}", err.message());
    let info = pod_info(&mut env, &pod.0).await;
    assert_eq!(
        info["resources"]["resources"]["memory_limit"],
        256 << 20,
        "the refused update changed nothing"
    );

    let err = env
        .rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
            overhead: None,
            resources: Some(limits(2, 0, 0)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

// ---------------------------------------------------------------------------
// Image volumes

/// Pushes and pulls an image of `layers` (no command: a volume's image
/// need not run) under `repo`; its reference.
async fn volume_image(env: &mut Env, repo: &str, layers: Vec<Layer>) -> String {
    let mut builder = ImageBuilder::new();
    for layer in layers {
        builder = builder.layer(layer);
    }
    let reference = format!("{}/{repo}:latest", env.registry.host());
    builder
        .build()
        .push(&env.registry.client(), repo, Some("latest"))
        .await;
    env.pull(&reference).await;
    reference
}

fn image_mount(container_path: &str, image: &str, sub_path: &str) -> Mount {
    Mount {
        container_path: container_path.to_owned(),
        image: Some(ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        image_sub_path: sub_path.to_owned(),
        readonly: true,
        ..Default::default()
    }
}

async fn output(env: &mut Env, id: &str, cmd: &[&str]) -> (i32, String) {
    let reply = env.exec(id, cmd, 10).await.expect("exec");
    let mut text = String::from_utf8_lossy(&reply.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&reply.stderr));
    (reply.exit_code, text)
}

/// An image mounted whole (one layer: a read-only bind) and by sub-path
/// (two layers: a read-only overlay), read-only in the container; the
/// container's lease holds both images, so RemoveImage leaves what it
/// uses; removing the container unmounts and releases them.
#[tokio::test]
async fn image_volumes_with_and_without_a_sub_path() {
    let mut env = Env::start().await;
    let whole = volume_image(
        &mut env,
        "vol-whole",
        vec![Layer::new(vec![
            Entry::dir("data"),
            Entry::file("data/model.txt", "weights\n"),
            Entry::file("top.txt", "top\n"),
        ])],
    )
    .await;
    let layered = volume_image(
        &mut env,
        "vol-layered",
        vec![
            Layer::new(vec![
                Entry::dir("share"),
                Entry::dir("share/models"),
                Entry::file("share/models/a.txt", "a\n"),
            ]),
            Layer::new(vec![
                Entry::dir("share"),
                Entry::dir("share/models"),
                Entry::file("share/models/b.txt", "b\n"),
            ]),
        ],
    )
    .await;
    let pod = env.run_pod("imgvol").await;
    let mut config = container_config("reader", &env.busybox(), &["sleep", "1000"]);
    config.mounts = vec![
        image_mount("/whole", &whole, ""),
        image_mount("/models", &layered, "share/models"),
    ];
    let id = env.run_container(&pod, config).await;

    let (code, text) = output(
        &mut env,
        &id,
        &["cat", "/whole/data/model.txt", "/whole/top.txt"],
    )
    .await;
    assert_eq!((code, text.as_str()), (0, "weights\ntop\n"));
    let (code, text) = output(&mut env, &id, &["cat", "/models/a.txt", "/models/b.txt"]).await;
    assert_eq!(
        (code, text.as_str()),
        (0, "a\nb\n"),
        "both layers, from the sub-path"
    );
    let (code, _) = output(&mut env, &id, &["ls", "/models/share"]).await;
    assert_ne!(code, 0, "only the sub-path is mounted");
    for path in ["/whole/new", "/models/new"] {
        let (code, text) = output(&mut env, &id, &["touch", path]).await;
        assert_ne!(code, 0, "{path} is writable");
        assert!(text.contains("Read-only"), "{path}: {text}");
    }

    // The lease names both volume images.
    let lease = std::fs::read_to_string(
        env.daemon
            .root_dir
            .join("leases")
            .join(format!("{id}.json")),
    )
    .expect("the container's lease");
    for reference in [&whole, &layered] {
        let status = env
            .img
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: reference.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        let volume_id = status.image.expect("image").id;
        assert!(lease.contains(&volume_id), "{volume_id} not in {lease}");
    }
    // RemoveImage: the running container still reads its volume.
    env.remove_image(&whole).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, text) = output(&mut env, &id, &["cat", "/whole/top.txt"]).await;
    assert_eq!((code, text.as_str()), (0, "top\n"));

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// Each refusal of an image volume: a missing image is NotFound; a
/// sub-path that climbs out, leads out by a symlink, does not exist or is
/// a file is InvalidArgument naming it. Nothing is left behind.
#[tokio::test]
async fn image_volume_refusals() {
    let mut env = Env::start().await;
    let image = volume_image(
        &mut env,
        "vol-refuse",
        vec![
            Layer::new(vec![Entry::dir("dir"), Entry::file("file", "x")]),
            Layer::new(vec![Entry::symlink("escape", "/etc")]),
        ],
    )
    .await;
    let pod = env.run_pod("imgvol-refuse").await;
    let missing = format!("{}/never-pulled:latest", env.registry.host());
    let mut config = container_config("c", &env.busybox(), &["sleep", "1000"]);
    config.mounts = vec![image_mount("/v", &missing, "")];
    let err = env.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("never-pulled"), "{}", err.message());

    for (i, (sub_path, reason)) in [
        ("../../../etc", "without .."),
        ("escape", "outside the image"),
        ("absent", "does not exist"),
        ("file", "not a directory"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut config = container_config(&format!("c{i}"), &env.busybox(), &["sleep", "1000"]);
        config.mounts = vec![image_mount("/v", &image, sub_path)];
        let err = env.create(&pod, config).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{sub_path}: {err:?}");
        assert!(
            err.message().contains(sub_path) && err.message().contains(reason),
            "{sub_path}: {}",
            err.message()
        );
    }
    let listed = env
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "half-made containers: {listed:?}");
    let leases: Vec<_> = std::fs::read_dir(env.daemon.root_dir.join("leases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leases.is_empty(), "leases left: {leases:?}");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

// ---------------------------------------------------------------------------
// Stop signal

/// The CRI's `stop_signal` (1.36) overrides the image's: `SIGRTMIN+3`
/// given by kubelet is what StopContainer sends, and ContainerStatus
/// reports it.
#[tokio::test]
async fn a_cri_stop_signal_sigrtmin_plus_3_reaches_the_container() {
    let mut env = Env::start().await;
    let pod = env.run_pod("cri-rtstop").await;
    let script = crate::harness::env::EXIT_42_ON_SIGRTMIN_3;
    let mut config = container_config("systemd-like", &env.busybox(), &["sh", "-c", script]);
    config.stop_signal = Signal::Sigrtminplus3 as i32;
    let id = env.run_container(&pod, config).await;
    assert_eq!(
        env.status(&id).await.stop_signal,
        Signal::Sigrtminplus3 as i32
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = env.stop_and_wait(&id, 20).await;
    assert_eq!(
        status.exit_code, 42,
        "the trap ran: SIGRTMIN+3 was sent, not SIGTERM then SIGKILL"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

// ---------------------------------------------------------------------------
// Stream* list RPCs

/// An annotation of 1.5 MiB: three items pass one 4 MiB reply.
fn big_annotation() -> (String, String) {
    ("e2e.ketch/padding".to_owned(), "p".repeat(3 << 19))
}

/// StreamPodSandboxes, StreamContainers and StreamImages return what their
/// List counterparts return; a list larger than one reply comes in several.
#[tokio::test]
async fn stream_lists_equal_their_list_counterparts() {
    let mut env = Env::start().await;
    let mut pods = Vec::new();
    for _ in 0..4 {
        let mut config = pod_config(&unique("streamed"), &env.log_dir());
        config.annotations.extend([big_annotation()]);
        pods.push(env.run_pod_with(config).await);
    }
    let mut containers = Vec::new();
    for i in 0..4 {
        let mut config = container_config(&format!("c{i}"), &env.busybox(), &["sleep", "1"]);
        config.annotations.extend([big_annotation()]);
        containers.push(env.create(&pods[0], config).await.expect("create"));
    }

    let by_id = |mut v: Vec<PodSandbox>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let listed = env
        .rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    let replies: Vec<_> = env
        .rt
        .stream_pod_sandboxes(StreamPodSandboxesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert!(
        replies.len() >= 2,
        "{} replies for 6 MiB of pods",
        replies.len()
    );
    let streamed = replies.into_iter().flat_map(|r| r.pod_sandboxes).collect();
    assert_eq!(listed.len(), 4);
    assert_eq!(by_id(streamed), by_id(listed));

    let sort = |mut v: Vec<Container>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let listed = env
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    let replies: Vec<_> = env
        .rt
        .stream_containers(StreamContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    assert!(
        replies.len() >= 2,
        "{} replies for 6 MiB of containers",
        replies.len()
    );
    let streamed = replies.into_iter().flat_map(|r| r.containers).collect();
    assert_eq!(listed.len(), 4);
    assert_eq!(sort(streamed), sort(listed));

    let sort = |mut v: Vec<Image>| {
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    };
    let listed = env
        .img
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    let streamed: Vec<_> = env
        .img
        .stream_images(StreamImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|r| r.images)
        .collect();
    assert!(!listed.is_empty());
    assert_eq!(sort(streamed), sort(listed));

    for pod in &pods {
        env.remove_pod(&pod.0).await;
    }
    env.daemon.assert_clean();
}

// ---------------------------------------------------------------------------
// Status and RuntimeConfig

/// What kubelet 1.36 reads: the handlers with their features (the default
/// handler, the only one ketch runs), the runtime's features, both
/// conditions, and the cgroup driver from RuntimeConfig.
#[tokio::test]
async fn status_and_runtime_config_report_what_kubelet_reads() {
    let env = Env::start().await;
    let mut rt = env.rt.clone();
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let handlers = &status.runtime_handlers;
    assert_eq!(handlers.len(), 1, "{handlers:?}");
    assert_eq!(handlers[0].name, "", "the default handler");
    let features = handlers[0].features.as_ref().expect("handler features");
    assert_eq!(
        features.user_namespaces,
        crate::userns::idmap_expected(&env.daemon.root_dir),
        "pods may ask for a user namespace where idmapped mounts work"
    );
    assert!(status.features.is_some(), "runtime features");
    let conditions: Vec<_> = status
        .status
        .expect("conditions")
        .conditions
        .into_iter()
        .map(|c| c.r#type)
        .collect();
    assert!(
        conditions.contains(&"RuntimeReady".to_owned()),
        "{conditions:?}"
    );
    assert!(
        conditions.contains(&"NetworkReady".to_owned()),
        "{conditions:?}"
    );

    let config = rt
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        config.linux.expect("linux").cgroup_driver,
        CgroupDriver::Cgroupfs as i32,
        "the configured driver (cgroupfs by default)"
    );
}
