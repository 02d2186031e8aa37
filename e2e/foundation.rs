//! The daemon itself: Version, Status, RuntimeConfig, config errors, the
//! socket and signals.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Stdio;

use ketch::cri::api::*;

use crate::harness::cri::container_config;
use crate::harness::daemon::{E2E_BASE, ketch_bin, mountpoints, run_with_config};
use crate::harness::env::Env;
use crate::harness::{Daemon, DaemonOptions};

#[tokio::test]
async fn version_names_ketch_and_v1() {
    let daemon = Daemon::start().await;
    let v = daemon
        .runtime()
        .await
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "ketch");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn status_reports_both_conditions_and_follows_cni_config() {
    let daemon = Daemon::start_with(DaemonOptions {
        no_network: true,
        ..Default::default()
    })
    .await;
    let mut client = daemon.runtime().await;
    let status = client
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(status.info.is_empty(), "info only with verbose");
    let conditions = status.status.unwrap().conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady condition");
    assert!(runtime.status);
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady condition");
    assert!(!network.status, "no CNI config yet");
    assert!(!network.reason.is_empty());
    assert!(
        network
            .message
            .contains(&daemon.cni_conf_dir.display().to_string()),
        "message names the dir: {}",
        network.message
    );

    // A config dropped in later is picked up without a restart.
    std::fs::write(
        daemon.cni_conf_dir.join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"test","plugins":[{"type":"loopback"}]}"#,
    )
    .unwrap();
    let status = client
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let network = status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(network.status, "{network:?}");
    let config: serde_json::Value = serde_json::from_str(&status.info["config"]).unwrap();
    assert_eq!(
        config["root_dir"].as_str().unwrap(),
        daemon.root_dir.display().to_string()
    );
}

#[tokio::test]
async fn runtime_config_reports_cgroup_driver() {
    // The systemd driver's report: `systemd_driver`, with a systemd.
    let daemon = Daemon::start_with(DaemonOptions {
        config_toml: "cgroup_driver = \"cgroupfs\"\n".into(),
        ..Default::default()
    })
    .await;
    let reply = daemon
        .runtime()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.linux.unwrap().cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test]
async fn socket_is_0660_and_second_daemon_is_refused() {
    let daemon = Daemon::start().await;
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let out = daemon.command().stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "second daemon must exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already serving"),
        "clear error expected, got: {stderr}"
    );
    // The first one keeps serving.
    daemon
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .expect("first daemon still serves");
}

#[tokio::test]
async fn stale_socket_is_replaced_and_sigterm_exits_zero() {
    let mut daemon = Daemon::start().await;
    // A killed daemon leaves its socket file behind.
    daemon.kill9();
    assert!(daemon.socket.exists(), "kill -9 leaves the socket file");
    daemon.restart().await;
    daemon
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .expect("restarted daemon serves");
    assert_eq!(daemon.stop().await, Some(0), "SIGTERM exits 0");
    assert!(!daemon.socket.exists(), "clean exit removes the socket");
}

#[tokio::test]
async fn in_flight_calls_finish_on_sigterm() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let pid = daemon.pid().unwrap() as i32;
    // A stream of calls racing with SIGTERM: each either succeeds or fails
    // to connect; none is cut off with an internal error. SIGTERM goes once
    // the calls flow (the first one answered), however loaded the machine.
    let (flowing, first_answered) = tokio::sync::oneshot::channel();
    let calls = tokio::spawn(async move {
        let mut ok = 0;
        let mut flowing = Some(flowing);
        for _ in 0..200 {
            match client.status(StatusRequest { verbose: true }).await {
                Ok(_) => {
                    ok += 1;
                    if let Some(tx) = flowing.take() {
                        let _ = tx.send(());
                    }
                }
                Err(status) => {
                    assert_ne!(status.code(), tonic::Code::Internal, "{status:?}");
                    break;
                }
            }
        }
        ok
    });
    first_answered.await.expect("the first call is answered");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let ok = calls.await.unwrap();
    assert!(ok > 0, "some calls completed before the shutdown");
    assert_eq!(daemon.stop().await, Some(0));
}

#[tokio::test]
async fn unimplemented_rpcs_say_which() {
    let daemon = Daemon::start().await;
    let err = daemon
        .runtime()
        .await
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("CheckpointContainer"), "{err:?}");
}

#[test]
fn config_errors_name_the_key_and_value() {
    let (code, err) = run_with_config("log_levle = \"info\"\n");
    assert_eq!(code, 2);
    assert!(err.contains("log_levle"), "{err}");

    let (code, err) = run_with_config("[streaming]\nport = 99999\n");
    assert_eq!(code, 2);
    assert!(err.contains("port") && err.contains("99999"), "{err}");

    let (code, err) = run_with_config("log_format = \"yaml\"\n");
    assert_eq!(code, 2);
    assert!(err.contains("log_format") && err.contains("yaml"), "{err}");

    let (code, err) = run_with_config("[cni]\nplugin_timeout_secs = 0\n");
    assert_eq!(code, 2);
    assert!(err.contains("cni.plugin_timeout_secs"), "{err}");
}

#[test]
fn missing_named_config_is_an_error() {
    let out = std::process::Command::new(ketch_bin())
        .args(["--config", "/nonexistent/ketch.toml"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ketch.toml"));
}

/// A node without what containers need is refused at start, each missing
/// piece named: no CNI plugin directory at all.
#[test]
fn a_node_without_cni_plugins_is_refused_at_start() {
    let (code, err) =
        run_with_config("[cni]\nbin_dirs = [\"/nonexistent/cni-a\", \"/nonexistent/cni-b\"]\n");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("this node cannot run containers"), "{err}");
    assert!(
        err.contains("no CNI plugin directory exists") && err.contains("/nonexistent/cni-b"),
        "{err}"
    );
}

/// A daemon without ketch-shim beside it is refused at start, before its
/// socket exists, naming where the shim should be.
#[test]
fn a_daemon_without_ketch_shim_is_refused_at_start() {
    // Under the e2e base, like every test's dirs: the tmpfs the refused
    // start mounts for a moment on its state dir is then no host mount to
    // the tests running beside it.
    std::fs::create_dir_all(E2E_BASE).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("t-")
        .tempdir_in(E2E_BASE)
        .unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let daemon = bin.join("ketch");
    if std::fs::hard_link(ketch_bin(), &daemon).is_err() {
        std::fs::copy(ketch_bin(), &daemon).unwrap();
    }
    let config = dir.path().join("ketch.toml");
    std::fs::write(&config, "").unwrap();
    let socket = dir.path().join("sock/ketch.sock");
    let out = std::process::Command::new(&daemon)
        .arg("--config")
        .arg(&config)
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .arg("--state-dir")
        .arg(dir.path().join("run"))
        .arg("--listen")
        .arg(&socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("this node cannot run containers"), "{err}");
    let shim = bin.join("ketch-shim");
    assert!(
        err.contains(&format!("no ketch-shim at {}", shim.display())),
        "{err}"
    );
    assert!(!socket.exists(), "the socket must not be left behind");
    let state = dir.path().join("run").display().to_string();
    assert!(
        !mountpoints().contains(&state),
        "a refused start takes down the tmpfs it mounted on the state dir"
    );
}

/// root_dir on overlayfs (ketch in a container without a volume for its
/// state): overlayfs cannot take it as an upper layer, and ketch says so.
#[test]
fn root_dir_on_overlayfs_is_refused_at_start() {
    std::fs::create_dir_all(E2E_BASE).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("t-")
        .tempdir_in(E2E_BASE)
        .unwrap();
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let p = dir.path().join(d);
        std::fs::create_dir(&p).unwrap();
        p
    });
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(
            format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            )
            .as_str(),
        ),
    )
    .expect("mount the test overlay");
    let config = dir.path().join("ketch.toml");
    std::fs::write(&config, "").unwrap();
    let out = std::process::Command::new(ketch_bin())
        .arg("--root-dir")
        .arg(merged.join("root"))
        .arg("--state-dir")
        .arg(dir.path().join("run"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let unmounted = nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("overlayfs cannot use"), "{err}");
    assert!(
        err.contains(&merged.join("root").display().to_string()),
        "{err}"
    );
    unmounted.expect("unmount the test overlay");
}

/// Whether `path` is on a filesystem that keeps its content in memory.
fn on_memory_fs(path: &std::path::Path) -> bool {
    use nix::sys::statfs::{FsType, TMPFS_MAGIC, statfs};
    let fs = statfs(path).unwrap().filesystem_type();
    fs == TMPFS_MAGIC || fs == FsType(0x8584_58f6)
}

/// The state dir (here under E2E_BASE, on the disk) is volatile: ketch
/// mounts a tmpfs on it, which stays when ketch stops, with a running
/// container's socket and exit file in it, and is found again on restart.
#[tokio::test]
async fn a_state_dir_on_disk_gets_a_tmpfs_that_outlives_the_daemon() {
    let mut env = Env::start().await;
    let state = env.daemon.state_dir.clone();
    assert!(on_memory_fs(&state), "the state dir is not on a tmpfs");
    let on_disk = !on_memory_fs(std::path::Path::new(E2E_BASE));
    if on_disk {
        assert!(
            mountpoints().contains(&state.display().to_string()),
            "ketch mounts the tmpfs itself when the state dir is on disk"
        );
    } else {
        eprintln!("note: {E2E_BASE} is on a tmpfs already; ketch's own mount is not exercised");
    }
    let pod = env.run_pod("volatile").await;
    let id = env
        .run_container(
            &pod,
            container_config("sleeper", &env.busybox(), &["sleep", "3600"]),
        )
        .await;

    assert_eq!(env.daemon.stop().await, Some(0));
    assert!(on_memory_fs(&state), "the tmpfs stays when ketch stops");
    let monitor_socket = state.join("sock").join(format!("{}.sock", &id[..32]));
    assert!(
        monitor_socket.exists(),
        "the running container's monitor socket is kept: {}",
        monitor_socket.display()
    );
    env.daemon.restart().await;
    env.rt = env.daemon.runtime().await;
    env.img = env.daemon.images().await;
    let mounts_at_state = mountpoints()
        .into_iter()
        .filter(|m| *m == state.display().to_string())
        .count();
    assert_eq!(
        mounts_at_state,
        usize::from(on_disk),
        "a restart mounts nothing over the tmpfs it finds"
    );
    assert_eq!(
        env.status(&id).await.state,
        ContainerState::ContainerRunning as i32,
        "the container runs on across the restart"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// A state dir on disk that holds another run's pods (a ketch that ran
/// there before it mounted a tmpfs of its own, whose containers may still
/// run) is left as it is: a tmpfs would hide that state.
#[tokio::test]
async fn a_state_dir_with_another_runs_state_is_not_hidden() {
    std::fs::create_dir_all(E2E_BASE).unwrap();
    if on_memory_fs(std::path::Path::new(E2E_BASE)) {
        eprintln!(
            "skipped: {E2E_BASE} is on a tmpfs, so ketch never mounts one over its state dir"
        );
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("t-")
        .tempdir_in(E2E_BASE)
        .unwrap();
    let state = dir.path().join("run");
    let earlier_pod = state.join("pods").join("0".repeat(64));
    std::fs::create_dir_all(&earlier_pod).unwrap();
    let mut daemon = Daemon::start_in(dir, DaemonOptions::default()).await;
    assert!(
        !on_memory_fs(&state),
        "a tmpfs was mounted over another run's state"
    );
    assert!(
        daemon.log().contains("holds another run's state"),
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.stop().await, Some(0));
    daemon.assert_clean();
}
