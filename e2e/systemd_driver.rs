//! The systemd cgroup driver against a real systemd manager: each
//! container's cgroup is a transient scope unit in its pod's slice, known
//! to systemd (active, delegated, its memory limit a unit property) and
//! gone with the container; without systemd, ketch refuses to start.
//!
//! Test hosts need not boot with systemd (this one does not): the tests
//! start a systemd manager of their own, `systemd --user` in a private
//! mount namespace (with `/run/systemd/system` on a tmpfs there, which is
//! how systemd tells it was booted with systemd) and a cgroup of its own,
//! on a bus of its own (`dbus-daemon --session`), and point ketch at that
//! bus. Its units live below its cgroup, which ketch learns from the
//! manager's `ControlGroup`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ketch::cri::api::*;

use crate::harness::DaemonOptions;
use crate::harness::cri::{container_config, unique};
use crate::harness::daemon::run_with_config;
use crate::harness::env::Env;

const SYSTEMD: &str = "/lib/systemd/systemd";
const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

/// A `systemd --user` manager of the test's own.
struct TestSystemd {
    child: Child,
    runtime_dir: tempfile::TempDir,
    /// The manager's cgroup, one dir per hierarchy it uses.
    cgroups: Vec<PathBuf>,
}

impl TestSystemd {
    fn start() -> Option<Self> {
        for (binary, package) in [(SYSTEMD, "systemd"), (DBUS_DAEMON, "dbus-daemon")] {
            if !Path::new(binary).exists() {
                eprintln!("skipped: {binary} is not installed (Debian package {package})");
                return None;
            }
        }
        let name = unique("ketch-systemd");
        let cgroups: Vec<PathBuf> = if is_cgroup2(Path::new("/sys/fs/cgroup")) {
            vec![PathBuf::from("/sys/fs/cgroup").join(&name)]
        } else {
            ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]
                .iter()
                .filter(|h| Path::new(h).is_dir())
                .map(|h| Path::new(h).join(&name))
                .collect()
        };
        for dir in &cgroups {
            std::fs::create_dir(dir).expect("create the manager's cgroup");
        }
        let runtime_dir = tempfile::tempdir().expect("runtime dir");
        let join: String = cgroups
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs; ", d.display()))
            .collect();
        let script = format!(
            "{join}mount --make-rprivate / && mkdir -p /run/systemd && \
             mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system && \
             {{ {DBUS_DAEMON} --session --nofork --nopidfile \
                  --address=unix:path=$XDG_RUNTIME_DIR/bus & }} && \
             while [ ! -S $XDG_RUNTIME_DIR/bus ]; do sleep 0.05; done && \
             exec {SYSTEMD} --user"
        );
        let child = Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .env("XDG_RUNTIME_DIR", runtime_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start systemd");
        let systemd = Self {
            child,
            runtime_dir,
            cgroups,
        };
        // Up once it answers on the bus under its well-known name.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ping = Command::new("dbus-send")
                .arg(format!("--bus={}", systemd.bus()))
                .args([
                    "--print-reply",
                    "--dest=org.freedesktop.systemd1",
                    "/org/freedesktop/systemd1",
                    "org.freedesktop.DBus.Peer.Ping",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if ping.is_ok_and(|s| s.success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "systemd --user did not come up on {}",
                systemd.bus()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(systemd)
    }

    fn bus(&self) -> String {
        format!(
            "unix:path={}",
            self.runtime_dir.path().join("bus").display()
        )
    }

    /// `systemctl --user show` of one property.
    fn show(&self, unit: &str, property: &str) -> String {
        let out = Command::new("systemctl")
            .args(["--user", "show", "--value", "-p", property, unit])
            .env("XDG_RUNTIME_DIR", self.runtime_dir.path())
            .output()
            .expect("run systemctl");
        assert!(
            out.status.success(),
            "systemctl show {unit}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for TestSystemd {
    fn drop(&mut self) {
        // Every process of the manager's cgroups (the bus daemon too).
        for dir in &self.cgroups {
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "find {} -name cgroup.procs -exec cat {{}} + | xargs -r kill -9",
                    dir.display()
                ))
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The manager's cgroups, deepest first (its own units' included).
        for dir in &self.cgroups {
            let deadline = Instant::now() + Duration::from_secs(5);
            while dir.exists() && Instant::now() < deadline {
                let _ = Command::new("find")
                    .arg(dir)
                    .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                    .stderr(Stdio::null())
                    .status();
                if dir.exists() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            if dir.exists() {
                eprintln!("cleanup: cannot remove {}", dir.display());
            }
        }
    }
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

#[tokio::test]
async fn containers_are_scope_units_of_systemd() {
    let Some(systemd) = TestSystemd::start() else {
        return;
    };
    let mut env = Env::start_with(DaemonOptions {
        config_toml: format!(
            "cgroup_driver = \"systemd\"\nsystemd_bus = \"{}\"\n",
            systemd.bus()
        ),
        ..Default::default()
    })
    .await;
    let reply = env
        .rt
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.linux.unwrap().cgroup_driver,
        CgroupDriver::Systemd as i32
    );
    let pod = env.run_pod("sdscope").await;
    let mut config = container_config("c", &env.busybox(), &["sleep", "1000"]);
    config.linux.get_or_insert_with(Default::default).resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    });
    let id = env.run_container(&pod, config).await;
    let unit = format!("ketch-{id}.scope");

    assert_eq!(systemd.show(&unit, "ActiveState"), "active");
    assert_eq!(systemd.show(&unit, "Delegate"), "yes");
    let control_group = systemd.show(&unit, "ControlGroup");
    assert!(
        control_group.ends_with(&format!("/ketch.slice/{unit}")),
        "{control_group}"
    );
    let memory = if is_cgroup2(Path::new("/sys/fs/cgroup")) {
        "MemoryMax"
    } else {
        "MemoryLimit"
    };
    assert_eq!(systemd.show(&unit, memory), (64u64 << 20).to_string());

    // The scope holds the container's process, and only it (the
    // placeholder it started with is gone).
    let procs_file = systemd.cgroups[0]
        .parent()
        .unwrap()
        .join(control_group.trim_start_matches('/'))
        .join("cgroup.procs");
    let procs = std::fs::read_to_string(&procs_file)
        .unwrap_or_else(|e| panic!("{}: {e}", procs_file.display()));
    let pids: Vec<&str> = procs.split_whitespace().collect();
    assert_eq!(pids.len(), 1, "{procs_file:?}: {procs}");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", pids[0])).unwrap();
    assert!(cmdline.starts_with("sleep\0"), "{cmdline:?}");

    // Removed with the container.
    env.stop_and_wait(&id, 0).await;
    env.remove_container(&id).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while systemd.show(&unit, "LoadState") != "not-found" {
        assert!(Instant::now() < deadline, "{unit} outlived its container");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !procs_file.parent().unwrap().exists(),
        "the scope's cgroup is left"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// Without a reachable systemd the systemd driver cannot work: ketch says
/// so and does not start.
#[test]
fn the_systemd_driver_without_systemd_is_refused_at_start() {
    let (code, err) = run_with_config(
        "cgroup_driver = \"systemd\"\nsystemd_bus = \"unix:path=/nonexistent/bus\"\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("needs systemd") && err.contains("/nonexistent/bus"),
        "{err}"
    );
}
