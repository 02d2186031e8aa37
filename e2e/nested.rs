//! ketch as the runtime inside a container, the way a kind node runs its
//! runtime: a privileged pod on ketch whose container runs `ketch serve`
//! (its own cgroup namespace and `/sys/fs/cgroup` from the outer ketch,
//! `root_dir` on a volume because overlayfs cannot take overlayfs as its
//! upper layer, CNI plugins and the binaries' libraries mounted from the
//! host), and that inner ketch runs a pod whose web server answers.
//!
//! The inner ketch's state directory is a host path, so the test drives it
//! over its socket from outside like any client; its image comes in as an
//! archive (`ketch image import`), as a kind node's preloaded images do.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ketch::cri::api::image_service_client::ImageServiceClient;
use ketch::cri::api::runtime_service_client::RuntimeServiceClient;
use ketch::cri::api::*;

use crate::harness::cri::{container_config, pod_config};
use crate::harness::daemon::{ketch_bin, unix_channel};
use crate::harness::env::Env;
use crate::harness::images::{WEB_INDEX_HTML, tar_dir, web_image, write_layout};
use crate::harness::net::SYSTEM_PLUGINS;

const INNER_IMAGE: &str = "example.com/nested-web:v1";

fn bind(host: &Path, container: &str, readonly: bool) -> Mount {
    Mount {
        host_path: host.display().to_string(),
        container_path: container.to_owned(),
        readonly,
        ..Default::default()
    }
}

/// The directories of the shared libraries ketch is linked with (and of
/// its program interpreter), as `ldd` names them, each mounted at that
/// path: the busybox image has no C library of its own.
fn library_mounts() -> Vec<Mount> {
    let out = std::process::Command::new("ldd")
        .arg(ketch_bin())
        .output()
        .expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut dirs: Vec<String> = text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .filter_map(|lib| Some(Path::new(lib).parent()?.display().to_string()))
        .collect();
    dirs.sort();
    dirs.dedup();
    assert!(!dirs.is_empty(), "ldd named no library: {text}");
    dirs.iter()
        .map(|d| bind(&std::fs::canonicalize(d).expect("library dir"), d, true))
        .collect()
}

/// The inner ketch's pod network: a bridge of its own in the outer pod's
/// network namespace.
fn inner_network() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "inner",
        "plugins": [{
            "type": "bridge",
            "bridge": "inner0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.213.0.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    })
    .to_string()
}

async fn wait_for_socket(socket: &Path, outer: &mut Env, outer_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        if Instant::now() > deadline {
            let status = outer
                .rt
                .container_status(ContainerStatusRequest {
                    container_id: outer_id.to_owned(),
                    verbose: false,
                })
                .await
                .map(|s| format!("{:?}", s.into_inner().status));
            panic!(
                "the inner ketch did not serve {}: {status:?}",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ketch_in_a_privileged_container_runs_a_web_pod() {
    let mut env = Env::start().await;
    let base = env.daemon.dir.path().join("nested");
    let [root, run, net, archives] = ["root", "run", "net.d", "archives"].map(|d| {
        let p = base.join(d);
        std::fs::create_dir_all(&p).unwrap();
        p
    });
    std::fs::write(net.join("10-inner.conflist"), inner_network()).unwrap();
    let bin_dir: PathBuf = Path::new(ketch_bin()).parent().unwrap().to_path_buf();

    let outer_pod = env.run_privileged_pod("nested").await;
    let mut config = container_config(
        "inner-ketch",
        &env.busybox(),
        &[
            "/ketch/bin/ketch",
            "serve",
            "--root-dir",
            "/var/lib/ketch",
            "--state-dir",
            "/run/ketch",
            "--cni-conf-dir",
            "/etc/cni/net.d",
        ],
    );
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    config.mounts = library_mounts();
    config.mounts.extend([
        bind(&bin_dir, "/ketch/bin", true),
        bind(Path::new(SYSTEM_PLUGINS), "/opt/cni/bin", true),
        bind(&net, "/etc/cni/net.d", true),
        bind(&root, "/var/lib/ketch", false),
        bind(&run, "/run/ketch", false),
    ]);
    let outer = env.run_container(&outer_pod, config).await;
    let socket = run.join("ketch.sock");
    wait_for_socket(&socket, &mut env, &outer).await;
    let channel = unix_channel(socket).await;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);

    // The image, as a kind node's preloaded archive, into the inner store.
    let layout = base.join("layout");
    write_layout(web_image(), INNER_IMAGE, &layout);
    let archive = archives.join("web.tar");
    tar_dir(&layout, &archive);
    let out = std::process::Command::new(ketch_bin())
        .args(["image", "import", "--root-dir"])
        .arg(&root)
        .arg(&archive)
        .env("KETCH_CONFIG", env.daemon.config_path.as_os_str())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = images
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(
        listed
            .iter()
            .any(|i| i.repo_tags.iter().any(|t| t == INNER_IMAGE)),
        "{listed:?}"
    );

    // A pod on the inner ketch, with its web server.
    let pod_config = pod_config("inner-web", Path::new("/var/log/pods/inner-web"));
    let pod_id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("inner RunPodSandbox: {e}"))
        .into_inner()
        .pod_sandbox_id;
    let web = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("web", INNER_IMAGE, &[])),
            sandbox_config: Some(pod_config),
        })
        .await
        .unwrap_or_else(|e| panic!("inner CreateContainer: {e}"))
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: web.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("inner StartContainer: {e}"));
    let ip = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(ip.starts_with("10.213.0."), "inner pod IP {ip:?}");

    // Asked from the outer container, whose network holds the inner bridge
    // (with nc: busybox's static wget looks up the "http" service through
    // NSS, which the host libraries mounted for ketch break).
    let url = format!("http://{ip}/");
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 80");
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let r = env.exec(&outer, &["sh", "-c", &get], 10).await.unwrap();
        let reply = String::from_utf8_lossy(&r.stdout).into_owned();
        if r.exit_code == 0 && reply.starts_with("HTTP/1.") {
            break reply;
        }
        if Instant::now() > deadline {
            let state = rt
                .container_status(ContainerStatusRequest {
                    container_id: web.clone(),
                    verbose: false,
                })
                .await
                .map(|s| format!("{:?}", s.into_inner().status));
            panic!(
                "{url} did not answer (exit {}): {}; inner web container: {state:?}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    assert!(page.ends_with(WEB_INDEX_HTML), "{page}");

    // The inner pod goes as it came; then the inner ketch with its container.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod_id,
    })
    .await
    .unwrap();
    let left = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "inner containers left: {left:?}");
    drop(rt);
    drop(images);
    env.remove_pod(&outer_pod.0).await;
    env.daemon.assert_clean();
}
