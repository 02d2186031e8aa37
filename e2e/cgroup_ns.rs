//! Containers see their own cgroup: a cgroup namespace of their own, the
//! cgroup filesystem at /sys/fs/cgroup (v1 hierarchies or the v2 tree, as
//! the host has them) rooted at the container's cgroup, read-only unless
//! privileged; and a container the kernel's OOM killer ends is reported
//! `OOMKilled`, also when that happened while ketch was down.

use std::time::Duration;

use ketch::cri::api::*;
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use crate::harness::cri::container_config;
use crate::harness::env::Env;

const MIB: i64 = 1 << 20;

/// The host's cgroup version, as ketch detects it.
fn host_is_v2() -> bool {
    statfs("/sys/fs/cgroup").is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// Skips (with the reason) when the host has no cgroup memory controller
/// for ketch to limit.
fn memory_controller_or_skip() -> bool {
    let present = if host_is_v2() {
        std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
    } else {
        std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
    };
    if !present {
        eprintln!("skipped: the host has no cgroup memory controller");
    }
    present
}

fn limited(name: &str, image: &str, command: &[&str], memory: i64) -> ContainerConfig {
    let mut config = container_config(name, image, command);
    config.linux = Some(LinuxContainerConfig {
        // What kubelet sends for `limits: memory 64Mi, cpu 200m`.
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: memory,
            cpu_period: 100_000,
            cpu_quota: 20_000,
            cpu_shares: 204,
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

fn privileged(mut config: ContainerConfig) -> ContainerConfig {
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.security_context = Some(LinuxContainerSecurityContext {
        privileged: true,
        // Hosts whose bounding set lacks it (a daemon started without
        // CAP_SYS_RESOURCE) cannot hand it on; the test is about cgroups.
        capabilities: Some(Capability {
            drop_capabilities: vec!["SYS_RESOURCE".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

async fn sh(env: &mut Env, id: &str, script: &str) -> ExecSyncResponse {
    env.exec(id, &["sh", "-c", script], 10)
        .await
        .unwrap_or_else(|e| panic!("exec {script:?}: {e}"))
}

fn out(r: &ExecSyncResponse) -> String {
    String::from_utf8_lossy(&r.stdout).trim().to_owned()
}

/// Every line of a /proc/<pid>/cgroup says `/`: the process is at the root
/// of its cgroup namespace in every hierarchy.
fn assert_at_root(proc_cgroup: &str) {
    assert!(!proc_cgroup.is_empty(), "no /proc/self/cgroup");
    for line in proc_cgroup.lines() {
        assert!(
            line.ends_with(":/"),
            "not at its namespace's root: {line:?}"
        );
    }
}

/// The files the JVM, Go and .NET read their limits from, as the host's
/// cgroup version names them: (memory limit, CPU quota and period).
fn limit_script() -> &'static str {
    if host_is_v2() {
        "cat /sys/fs/cgroup/memory.max; cat /sys/fs/cgroup/cpu.max"
    } else {
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
         cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us"
    }
}

fn expected_limits() -> String {
    if host_is_v2() {
        format!("{}\n20000 100000", 64 * MIB)
    } else {
        format!("{}\n20000\n100000", 64 * MIB)
    }
}

/// The container's own process and an exec into it read the container's
/// limits at /sys/fs/cgroup, and sit at the root of their cgroup namespace.
#[tokio::test]
async fn a_container_reads_its_limits_from_sys_fs_cgroup() {
    if !memory_controller_or_skip() {
        return;
    }
    let mut env = Env::start().await;
    let pod = env.run_pod("cgns").await;
    let script = format!(
        "{}; echo ---; cat /proc/self/cgroup; sleep 1000",
        limit_script()
    );
    let config = limited("reader", &env.busybox(), &["sh", "-c", &script], 64 * MIB);
    let id = env.run_container(&pod, config).await;

    // The container's own output, from its CRI log.
    let log = env.status(&id).await.log_path;
    let mut text = String::new();
    for _ in 0..250 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().filter(|l| l.contains(":/")).count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let content: Vec<&str> = text
        .lines()
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or(""))
        .collect();
    let (limits, cgroup) =
        content.split_at(content.iter().position(|l| *l == "---").expect("marker"));
    assert_eq!(limits.join("\n"), expected_limits(), "log: {text}");
    assert_at_root(&cgroup[1..].join("\n"));

    // An exec joins the same namespace and sees the same.
    assert_eq!(
        out(&sh(&mut env, &id, limit_script()).await),
        expected_limits()
    );
    assert_at_root(&out(&sh(&mut env, &id, "cat /proc/self/cgroup").await));
    // Every v1 hierarchy of the host is there, the named systemd one too.
    if !host_is_v2() {
        let inside = out(&sh(&mut env, &id, "ls /sys/fs/cgroup").await);
        let inside: Vec<&str> = inside.lines().collect();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for line in mountinfo.lines().filter(|l| l.contains(" - cgroup ")) {
            let point = line.split(' ').nth(4).unwrap();
            let name = point.rsplit('/').next().unwrap();
            assert!(inside.contains(&name), "{name} missing: {inside:?}");
        }
    }
    // The host's tree is out of sight: the root holds only the container.
    let procs = out(&sh(
        &mut env,
        &id,
        "cat /sys/fs/cgroup/memory/cgroup.procs 2>/dev/null || cat /sys/fs/cgroup/cgroup.procs",
    )
    .await);
    let procs: Vec<&str> = procs.lines().collect();
    assert!(
        procs.len() < 10 && procs.contains(&"1"),
        "the cgroup of the container holds only its processes: {procs:?}"
    );

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// A directory to make in the container's own cgroup: a child cgroup.
fn child_cgroup() -> &'static str {
    if host_is_v2() {
        "/sys/fs/cgroup/child"
    } else {
        "/sys/fs/cgroup/memory/child"
    }
}

/// Unprivileged containers get /sys/fs/cgroup read-only; privileged ones
/// may manage cgroups below their own.
#[tokio::test]
async fn only_a_privileged_container_writes_to_its_cgroup() {
    if !memory_controller_or_skip() {
        return;
    }
    let mut env = Env::start().await;
    // A privileged pod, so it may hold the privileged container too.
    let pod = env.run_privileged_pod("cgns-rw").await;
    let plain = limited("plain", &env.busybox(), &["sleep", "1000"], 64 * MIB);
    let plain = env.run_container(&pod, plain).await;
    let mkdir = format!("mkdir {} && rmdir {}", child_cgroup(), child_cgroup());
    let denied = sh(&mut env, &plain, &mkdir).await;
    assert_ne!(denied.exit_code, 0, "an unprivileged container wrote");
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
    let limit = if host_is_v2() {
        "echo 1000000 > /sys/fs/cgroup/memory.max"
    } else {
        "echo 1000000 > /sys/fs/cgroup/memory/memory.limit_in_bytes"
    };
    assert_ne!(sh(&mut env, &plain, limit).await.exit_code, 0);

    let admin = privileged(limited(
        "admin",
        &env.busybox(),
        &["sleep", "1000"],
        64 * MIB,
    ));
    let admin = env.run_container(&pod, admin).await;
    let made = sh(&mut env, &admin, &mkdir).await;
    assert_eq!(
        made.exit_code,
        0,
        "a privileged container could not make a child cgroup: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    // Still its own cgroup, not the host's root.
    assert_at_root(&out(&sh(&mut env, &admin, "cat /proc/self/cgroup").await));
    assert_eq!(
        out(&sh(&mut env, &admin, limit_script()).await),
        expected_limits()
    );

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// Allocates until the cgroup's limit: the string doubles until the OOM
/// killer ends the shell.
const HOG: &str = "x=0123456789abcdef; while :; do x=$x$x; done";

/// A container that allocates past its limit ends `OOMKilled` with 137.
#[tokio::test]
async fn a_container_past_its_memory_limit_is_oom_killed() {
    if !memory_controller_or_skip() {
        return;
    }
    let mut env = Env::start().await;
    let pod = env.run_pod("oom").await;
    let config = limited("hog", &env.busybox(), &["sh", "-c", HOG], 32 * MIB);
    let id = env.run_container(&pod, config).await;
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 137);
    assert_eq!(status.reason, "OOMKilled");

    // Behind a shell, which exits 137 when the program it ran was killed.
    let wrapped = format!("sh -c '{HOG}'; exit $?");
    let config = limited("wrapped", &env.busybox(), &["sh", "-c", &wrapped], 32 * MIB);
    let id = env.run_container(&pod, config).await;
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 137);
    assert_eq!(status.reason, "OOMKilled");

    // A SIGKILL that is not the OOM killer's stays `Error`.
    let killed = limited("killed", &env.busybox(), &["sleep", "1000"], 32 * MIB);
    let killed = env.run_container(&pod, killed).await;
    env.rt
        .stop_container(StopContainerRequest {
            container_id: killed.clone(),
            timeout: 0,
        })
        .await
        .expect("stop");
    let status = env.wait_exited(&killed).await;
    assert_eq!(status.exit_code, 137);
    assert_eq!(status.reason, "Error");

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// The monitor records the OOM kill while ketch is down; the restarted
/// daemon reports it.
#[tokio::test]
async fn an_oom_kill_while_ketch_is_down_is_reported() {
    if !memory_controller_or_skip() {
        return;
    }
    let mut env = Env::start().await;
    let pod = env.run_pod("oom-down").await;
    // The container starts allocating once the test says so.
    let trigger = env.daemon.dir.path().join("trigger");
    std::fs::create_dir_all(&trigger).unwrap();
    let script = format!("while [ ! -e /trigger/go ]; do sleep 0.05; done; {HOG}");
    let mut config = limited("hog", &env.busybox(), &["sh", "-c", &script], 32 * MIB);
    config.mounts.push(Mount {
        container_path: "/trigger".into(),
        host_path: trigger.display().to_string(),
        ..Default::default()
    });
    let id = env.run_container(&pod, config).await;

    env.daemon.stop().await;
    std::fs::write(trigger.join("go"), "").unwrap();
    let exit_file = env
        .daemon
        .state_dir
        .join("containers")
        .join(&id)
        .join("exit");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !exit_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the monitor wrote no exit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.daemon.restart().await;
    env.rt = env.daemon.runtime().await;
    let status = env.wait_exited(&id).await;
    assert_eq!(status.exit_code, 137);
    assert_eq!(status.reason, "OOMKilled");

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

/// A container whose monitor was killed, so nobody recorded its exit, is
/// still reported `OOMKilled` when its memory cgroup counted the kill.
#[tokio::test]
async fn an_oom_kill_nobody_recorded_is_read_from_the_cgroup() {
    if !memory_controller_or_skip() {
        return;
    }
    let mut env = Env::start().await;
    let pod = env.run_pod("oom-lost").await;
    let trigger = env.daemon.dir.path().join("trigger-lost");
    std::fs::create_dir_all(&trigger).unwrap();
    let script = format!("while [ ! -e /trigger/go ]; do sleep 0.05; done; {HOG}");
    let mut config = limited("hog", &env.busybox(), &["sh", "-c", &script], 32 * MIB);
    config.mounts.push(Mount {
        container_path: "/trigger".into(),
        host_path: trigger.display().to_string(),
        ..Default::default()
    });
    let id = env.run_container(&pod, config).await;
    let bundle = env.daemon.root_dir.join("containers").join(&id);
    let monitors = crate::harness::daemon::pids_referencing(&bundle.display().to_string());
    assert_eq!(monitors.len(), 1, "one monitor: {monitors:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitors[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::fs::write(trigger.join("go"), "").unwrap();
    let status = env.wait_exited(&id).await;
    assert_eq!(status.reason, "OOMKilled", "{}", status.message);

    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}
