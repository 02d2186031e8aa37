//! Tests against the host's real cgroups, with real processes (root needed).
//!
//! Each test works under its own uniquely named parent and a [`Fixture`]
//! whose `Drop` kills its processes and removes its cgroups, so tests run
//! in parallel and a failed assertion leaves nothing behind. The v1 tests
//! run on a v1 (or hybrid) host; the v2 tests root a manager at a fresh
//! directory of the cgroup2 mount (`/sys/fs/cgroup` on a v2 host,
//! `/sys/fs/cgroup/unified` on a hybrid one), so they never change the
//! host's root cgroup. A test that needs something the host lacks (root
//! included) says so on stderr and returns.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::unistd::Pid;

use super::*;
use crate::cgroups::resources::{DeviceKind, DeviceRule};

const MIB: i64 = 1 << 20;

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "ketch-test-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

fn read_trim(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}/{file}: {e}", dir.display()))
        .trim()
        .to_string()
}

/// The dir of `cg` in the v1 hierarchy holding `controller`.
fn v1_dir(cg: &Cgroup, controller: &str) -> Option<PathBuf> {
    cg.dirs()
        .into_iter()
        .find(|d| d.controllers.iter().any(|c| c == controller))
        .map(|d| d.path)
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(child.id() as i32)
}

struct Fixture {
    manager: CgroupManager,
    /// Every cgroup of the test lives under this path.
    parent: String,
    /// v2: the directory the manager is rooted at, made by the test.
    owned_root: Option<PathBuf>,
    children: Vec<Child>,
}

impl Fixture {
    /// The host's manager, when the host is cgroup v1 (or hybrid).
    fn v1(tag: &str) -> Option<Self> {
        if !crate::testing::root_or_skip("creates cgroups") {
            return None;
        }
        let manager = CgroupManager::detect().expect("detect cgroups");
        if manager.version() != CgroupVersion::V1 {
            eprintln!("skipped: needs cgroup v1 ({tag}: this host is cgroup v2 only)");
            return None;
        }
        Some(Self {
            manager,
            parent: format!("/{}", unique(tag)),
            owned_root: None,
            children: Vec::new(),
        })
    }

    /// A v2 manager rooted at a fresh dir of the host's cgroup2 mount.
    fn v2(tag: &str) -> Option<Self> {
        if !crate::testing::root_or_skip("creates cgroups") {
            return None;
        }
        let mount = if is_cgroup2(Path::new(CGROUP_ROOT)) {
            PathBuf::from(CGROUP_ROOT)
        } else {
            let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
            match parse::parse_mountinfo(&info)
                .into_iter()
                .find(|m| m.kind == parse::MountKind::V2)
            {
                Some(m) => m.mount_point,
                None => {
                    eprintln!("skipped: needs cgroup v2 ({tag}: no cgroup2 filesystem is mounted)");
                    return None;
                }
            }
        };
        let root = mount.join(unique(tag));
        std::fs::create_dir(&root).expect("create delegated v2 root");
        let manager = CgroupManager::v2_at(&root).expect("v2 manager");
        Some(Self {
            manager,
            parent: "/t".to_string(),
            owned_root: Some(root),
            children: Vec::new(),
        })
    }

    fn path(&self, leaf: &str) -> String {
        format!("{}/{leaf}", self.parent)
    }

    fn has_controller(&self, c: &str) -> bool {
        self.manager
            .controllers()
            .expect("controllers")
            .iter()
            .any(|x| x == c)
    }

    /// Starts `sh -c script`; the shell first waits for a line on stdin, so
    /// the test can put it in a cgroup before the script runs.
    fn spawn_gated(&mut self, script: &str) -> Pid {
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("read _gate; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh");
        let pid = pid_of(&child);
        self.children.push(child);
        pid
    }

    fn release(&mut self, pid: Pid) {
        let child = self.child(pid);
        let stdin = child.stdin.as_mut().expect("gated child has stdin");
        stdin.write_all(b"go\n").expect("release gated child");
    }

    /// Runs `sh -c script` in `cg` from its first instruction; its exit.
    fn run_in(&mut self, cg: &Cgroup, script: &str) -> std::process::ExitStatus {
        let pid = self.spawn_gated(script);
        cg.add_process(pid).expect("add");
        self.release(pid);
        self.wait_exit(pid)
    }

    fn child(&mut self, pid: Pid) -> &mut Child {
        self.children
            .iter_mut()
            .find(|c| pid_of(c) == pid)
            .expect("known child")
    }

    fn wait_exit(&mut self, pid: Pid) -> std::process::ExitStatus {
        let child = self.child(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "child {pid} did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(cg) = self.manager.open(&self.parent) {
            let _ = cg.kill_all();
            if let Err(e) = cg.destroy() {
                eprintln!("cleanup of {}: {e}", self.parent);
            }
        }
        if let Some(root) = &self.owned_root {
            let ok = wait_until(Duration::from_secs(3), || {
                std::fs::remove_dir(root).is_ok() || !root.exists()
            });
            if !ok {
                eprintln!("cleanup: cannot remove {}", root.display());
            }
        }
    }
}

#[test]
fn detect_matches_the_host() {
    let manager = CgroupManager::detect().expect("detect");
    let expected = if is_cgroup2(Path::new(CGROUP_ROOT)) {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    };
    assert_eq!(manager.version(), expected);
    let controllers = manager.controllers().expect("controllers");
    eprintln!("host cgroups {}: {controllers:?}", manager.version());
    if expected == CgroupVersion::V1 {
        for c in ["cpu", "cpuacct", "memory", "pids", "freezer"] {
            assert!(controllers.iter().any(|x| x == c), "{c} not detected");
        }
    }
}

#[test]
fn v1_limits_membership_update_and_removal() {
    let Some(mut fx) = Fixture::v1("life") else {
        return;
    };
    let resources = Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        cpuset_cpus: Some("0".into()),
        memory_limit: Some(64 * MIB),
        memory_swap: Some(128 * MIB),
        pids_limit: Some(64),
        ..Default::default()
    };
    let cg = fx
        .manager
        .create(&fx.path("c"), &resources)
        .expect("create");
    assert_eq!(cg.path(), fx.path("c"));
    for d in cg.dirs() {
        assert!(d.path.is_dir(), "{} missing", d.path.display());
    }

    let cpu = v1_dir(&cg, "cpu").expect("cpu dir");
    assert_eq!(read_trim(&cpu, "cpu.shares"), "512");
    assert_eq!(read_trim(&cpu, "cpu.cfs_period_us"), "100000");
    assert_eq!(read_trim(&cpu, "cpu.cfs_quota_us"), "50000");
    let cpuset = v1_dir(&cg, "cpuset").expect("cpuset dir");
    assert_eq!(read_trim(&cpuset, "cpuset.cpus"), "0");
    assert!(
        !read_trim(&cpuset, "cpuset.mems").is_empty(),
        "mems inherited"
    );
    let memory = v1_dir(&cg, "memory").expect("memory dir");
    assert_eq!(
        read_trim(&memory, "memory.limit_in_bytes"),
        (64 * MIB).to_string()
    );
    let memsw = memory.join("memory.memsw.limit_in_bytes").exists();
    if memsw {
        assert_eq!(
            read_trim(&memory, "memory.memsw.limit_in_bytes"),
            (128 * MIB).to_string()
        );
    }
    let pids_dir = v1_dir(&cg, "pids").expect("pids dir");
    assert_eq!(read_trim(&pids_dir, "pids.max"), "64");

    // A process joins every hierarchy.
    let pid = fx.spawn_gated("exec sleep 1000");
    cg.add_process(pid).expect("add process");
    assert_eq!(cg.pids().expect("pids"), vec![pid]);
    assert_eq!(fx.manager.cgroup_of(pid).expect("cgroup_of"), cg.path());
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read");
    for entry in parse::parse_proc_cgroup(&proc_cgroup) {
        if entry.hierarchy_id != 0 {
            assert_eq!(entry.path, cg.path(), "hierarchy {:?}", entry.controllers);
        }
    }

    // Lowering and raising memory with swap: the writes must be ordered.
    for limit in [32 * MIB, 256 * MIB] {
        cg.update(&Resources {
            memory_limit: Some(limit),
            memory_swap: Some(limit),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("update to {limit}: {e}"));
        assert_eq!(
            read_trim(&memory, "memory.limit_in_bytes"),
            limit.to_string()
        );
        if memsw {
            assert_eq!(
                read_trim(&memory, "memory.memsw.limit_in_bytes"),
                limit.to_string()
            );
        }
    }
    // An update touches only what it sets.
    cg.update(&Resources {
        cpu_shares: Some(1024),
        ..Default::default()
    })
    .expect("update shares");
    assert_eq!(read_trim(&cpu, "cpu.shares"), "1024");
    assert_eq!(read_trim(&cpu, "cpu.cfs_quota_us"), "50000");
    assert_eq!(
        read_trim(&memory, "memory.limit_in_bytes"),
        (256 * MIB).to_string()
    );

    let stats = cg.stats().expect("stats");
    let mem = stats.memory.clone().expect("memory stats");
    assert_eq!(mem.limit_bytes, Some(256 << 20));
    assert!(mem.working_set_bytes <= mem.usage_bytes);
    let pids = stats.pids.clone().expect("pids stats");
    assert!(pids.current >= 1);
    assert_eq!(pids.limit, Some(64));
    assert!(stats.cpu.is_some());
    assert!(stats.timestamp_nanos() > 0);

    // Re-attach by path, as after a restart.
    let reopened = fx.manager.open(cg.path()).expect("open");
    assert_eq!(reopened.pids().expect("pids"), vec![pid]);

    cg.kill_all().expect("kill_all");
    assert_eq!(fx.wait_exit(pid).signal(), Some(libc::SIGKILL));
    assert!(wait_until(Duration::from_secs(3), || cg
        .pids()
        .is_ok_and(|p| p.is_empty())));
    cg.destroy().expect("destroy");
    for d in cg.dirs() {
        assert!(!d.path.exists(), "{} left behind", d.path.display());
    }
    cg.destroy().expect("destroy is idempotent");
    cg.kill_all().expect("nothing to kill in a removed cgroup");
    assert!(matches!(
        fx.manager.open(cg.path()),
        Err(CgroupError::NotFound { .. })
    ));
}

/// Spins a shell loop in a new cgroup and checks the CPU counter grows.
fn cpu_usage_grows(mut fx: Fixture) {
    let cg = fx
        .manager
        .create(&fx.path("spin"), &Resources::default())
        .expect("create");
    let pid = fx.spawn_gated("while :; do :; done");
    cg.add_process(pid).expect("add");
    fx.release(pid);
    let first = cg
        .stats()
        .expect("stats")
        .cpu
        .expect("cpu stats")
        .usage_nanos;
    std::thread::sleep(Duration::from_millis(400));
    let second = cg
        .stats()
        .expect("stats")
        .cpu
        .expect("cpu stats")
        .usage_nanos;
    // 400 ms of wall time on a shared 2-core machine: ask for 50 ms of CPU.
    assert!(
        second >= first + 50_000_000,
        "cpu usage did not grow enough: {first} -> {second}"
    );
    cg.kill_all().expect("kill_all");
    assert_eq!(fx.wait_exit(pid).signal(), Some(libc::SIGKILL));
    cg.destroy().expect("destroy");
}

#[test]
fn v1_cpu_usage_grows() {
    if let Some(fx) = Fixture::v1("cpu") {
        cpu_usage_grows(fx);
    }
}

#[test]
fn v2_cpu_usage_grows() {
    if let Some(fx) = Fixture::v2("cpu") {
        cpu_usage_grows(fx);
    }
}

/// More spinning processes than CPUs stall each other: the cgroup's CPU
/// pressure shows it; memory and IO pressure are read too.
#[test]
fn v2_pressure_is_sampled() {
    let Some(mut fx) = Fixture::v2("psi") else {
        return;
    };
    if !Path::new("/proc/pressure/cpu").exists() {
        eprintln!("skipped: v2_pressure_is_sampled: this kernel keeps no PSI");
        return;
    }
    let cg = fx
        .manager
        .create(&fx.path("stall"), &Resources::default())
        .expect("create");
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pids: Vec<Pid> = (0..=cpus)
        .map(|_| fx.spawn_gated("while :; do :; done"))
        .collect();
    for &pid in &pids {
        cg.add_process(pid).expect("add");
        fx.release(pid);
    }
    let stalled = wait_until(Duration::from_secs(5), || {
        cg.stats()
            .expect("stats")
            .pressure
            .cpu
            .is_some_and(|p| p.some.total_micros > 0)
    });
    let pressure = cg.stats().expect("stats").pressure;
    assert!(stalled, "no CPU stall recorded: {pressure:?}");
    assert!(pressure.memory.is_some(), "{pressure:?}");
    assert!(pressure.io.is_some(), "{pressure:?}");
    cg.kill_all().expect("kill_all");
    for pid in pids {
        fx.wait_exit(pid);
    }
    cg.destroy().expect("destroy");
}

/// A process allocating past the limit is OOM-killed and the cgroup says
/// so; a cgroup whose process stayed within its limit does not.
fn oom_kill_is_detected(mut fx: Fixture) {
    let limits = Resources {
        memory_limit: Some(16 * MIB),
        memory_swap: Some(16 * MIB),
        ..Default::default()
    };
    let hog = fx
        .manager
        .create(&fx.path("hog"), &limits)
        .expect("create hog");
    let calm = fx
        .manager
        .create(&fx.path("calm"), &limits)
        .expect("create calm");

    // dd's 64 MiB block buffer is filled from /dev/zero: every page touched.
    let hog_pid = fx.spawn_gated("exec dd if=/dev/zero of=/dev/null bs=64M count=1");
    hog.add_process(hog_pid).expect("add hog");
    let calm_pid = fx.spawn_gated("exec true");
    calm.add_process(calm_pid).expect("add calm");
    assert!(!hog.oom_killed().expect("oom before"), "no OOM yet");

    fx.release(hog_pid);
    fx.release(calm_pid);
    assert_eq!(fx.wait_exit(hog_pid).signal(), Some(libc::SIGKILL));
    assert!(fx.wait_exit(calm_pid).success());
    assert!(
        hog.oom_killed().expect("oom_killed"),
        "OOM kill not reported"
    );
    assert!(!calm.oom_killed().expect("oom_killed"), "false OOM report");
    hog.destroy().expect("destroy");
    calm.destroy().expect("destroy");
}

#[test]
fn v1_oom_kill_is_detected() {
    if let Some(fx) = Fixture::v1("oom") {
        oom_kill_is_detected(fx);
    }
}

#[test]
fn v2_oom_kill_is_detected() {
    let Some(fx) = Fixture::v2("oom") else {
        return;
    };
    if !fx.has_controller("memory") {
        eprintln!(
            "skipped: needs the memory controller in the cgroup2 tree (hybrid host: \
             memory is bound to v1, where v1_oom_kill_is_detected tests it)"
        );
        return;
    }
    oom_kill_is_detected(fx);
}

/// A shell with children and grandchildren, all killed by one call.
fn kill_all_kills_every_process(mut fx: Fixture, kill: impl Fn(&Cgroup) -> Result<()>) {
    let cg = fx
        .manager
        .create(&fx.path("tree"), &Resources::default())
        .expect("create");
    let sh = fx.spawn_gated("sleep 1000 & sleep 1000 & sh -c 'sleep 1000 & wait' & wait");
    cg.add_process(sh).expect("add");
    fx.release(sh);
    assert!(
        wait_until(Duration::from_secs(5), || cg
            .pids()
            .is_ok_and(|p| p.len() >= 5)),
        "processes did not start: {:?}",
        cg.pids()
    );
    let before = cg.pids().expect("pids");
    kill(&cg).expect("kill");
    assert_eq!(fx.wait_exit(sh).signal(), Some(libc::SIGKILL));
    assert!(
        wait_until(Duration::from_secs(5), || cg
            .pids()
            .is_ok_and(|p| p.is_empty())),
        "processes survived: {:?}",
        cg.pids()
    );
    for pid in before {
        // Gone or a zombie waiting for its reaper: either way not running.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = state
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
        assert!(!running, "{pid} still running: {state}");
    }
    cg.destroy().expect("destroy");
    assert!(cg.dirs().iter().all(|d| !d.path.exists()));
}

#[test]
fn v1_kill_all_with_freezer() {
    if let Some(fx) = Fixture::v1("kill") {
        kill_all_kills_every_process(fx, Cgroup::kill_all);
    }
}

#[test]
fn v1_kill_all_without_freezer() {
    let Some(mut fx) = Fixture::v1("killnf") else {
        return;
    };
    let Layout::V1(v1) = &*fx.manager.layout else {
        unreachable!("v1 fixture")
    };
    // The same host without its freezer hierarchy: kill in rounds.
    let hierarchies = v1
        .hierarchies
        .iter()
        .filter(|h| !h.controllers.iter().any(|c| c == "freezer"))
        .cloned()
        .collect();
    fx.manager = CgroupManager {
        layout: std::sync::Arc::new(Layout::V1(v1::V1 { hierarchies })),
    };
    kill_all_kills_every_process(fx, Cgroup::kill_all);
}

#[test]
fn v2_kill_all_with_cgroup_kill() {
    let Some(fx) = Fixture::v2("kill") else {
        return;
    };
    let has_kill = fx
        .owned_root
        .as_ref()
        .is_some_and(|r| r.join("cgroup.kill").exists());
    if !has_kill {
        eprintln!("note: kernel has no cgroup.kill; kill_all uses the freezer");
    }
    kill_all_kills_every_process(fx, Cgroup::kill_all);
}

#[test]
fn v2_kill_all_by_freezing() {
    let Some(fx) = Fixture::v2("killfrz") else {
        return;
    };
    kill_all_kills_every_process(fx, |cg| match &*cg.manager.layout {
        Layout::V2(v2) => v2.kill_by_freezing(cg.path()),
        Layout::V1(_) => unreachable!("v2 fixture"),
    });
}

#[test]
fn v2_membership_limits_and_removal() {
    let Some(mut fx) = Fixture::v2("life") else {
        return;
    };
    let controllers = fx.manager.controllers().expect("controllers");
    let mut resources = Resources::default();
    if controllers.iter().any(|c| c == "memory") {
        resources.memory_limit = Some(64 * MIB);
    } else {
        eprintln!("v2 test: memory controller not available here; checking membership only");
    }
    if controllers.iter().any(|c| c == "pids") {
        resources.pids_limit = Some(32);
    } else {
        eprintln!("v2 test: pids controller not available here; pids.max not checked");
    }
    if controllers.iter().any(|c| c == "cpu") {
        resources.cpu_shares = Some(1024);
        resources.cpu_quota = Some(20_000);
    } else {
        eprintln!("v2 test: cpu controller not available here; cpu.max not checked");
    }
    let cg = fx
        .manager
        .create(&fx.path("c"), &resources)
        .expect("create");
    let dir = cg.dirs()[0].path.clone();
    assert!(dir.is_dir());
    if resources.memory_limit.is_some() {
        assert_eq!(read_trim(&dir, "memory.max"), (64 * MIB).to_string());
    }
    if resources.pids_limit.is_some() {
        assert_eq!(read_trim(&dir, "pids.max"), "32");
    }
    if resources.cpu_shares.is_some() {
        assert_eq!(read_trim(&dir, "cpu.weight"), "39");
        assert_eq!(read_trim(&dir, "cpu.max"), "20000 100000");
    }

    let pid = fx.spawn_gated("exec sleep 1000");
    cg.add_process(pid).expect("add");
    assert_eq!(cg.pids().expect("pids"), vec![pid]);
    let kernel_path = fx.manager.cgroup_of(pid).expect("cgroup_of");
    assert!(
        kernel_path.ends_with(cg.path()),
        "{kernel_path} is not {}",
        cg.path()
    );
    assert!(!cg.oom_killed().expect("oom_killed"));
    assert!(cg.stats().expect("stats").cpu.is_some());

    cg.kill_all().expect("kill_all");
    assert_eq!(fx.wait_exit(pid).signal(), Some(libc::SIGKILL));
    cg.destroy().expect("destroy");
    assert!(!dir.exists());
    cg.destroy().expect("destroy again");
}

#[test]
fn v2_unavailable_controller_is_a_clear_error() {
    let Some(fx) = Fixture::v2("noctl") else {
        return;
    };
    // No kernel has 3MB huge pages: the file cannot exist.
    let resources = Resources {
        hugepage_limits: vec![HugepageLimit {
            page_size: "3MB".into(),
            limit: 0,
        }],
        ..Default::default()
    };
    let path = fx.path("c");
    let err = fx.manager.create(&path, &resources).expect_err("must fail");
    assert!(
        matches!(err, CgroupError::ControllerUnavailable { .. }),
        "{err}"
    );
    let root = fx.owned_root.clone().expect("v2 root");
    assert!(!root.join("t").exists(), "failed create left dirs behind");
}

#[test]
fn v1_failed_create_removes_what_it_made() {
    let Some(fx) = Fixture::v1("fail") else {
        return;
    };
    let path = fx.path("c");
    let parent_dirs: Vec<PathBuf> = CgroupManager::detect()
        .expect("detect")
        .handle(fx.parent.clone())
        .dirs()
        .into_iter()
        .map(|d| d.path)
        .collect();

    // Valid syntax, but no such CPU: the kernel refuses it after mkdir.
    let bad_cpuset = Resources {
        cpuset_cpus: Some("4095".into()),
        ..Default::default()
    };
    let err = fx
        .manager
        .create(&path, &bad_cpuset)
        .expect_err("must fail");
    assert!(matches!(err, CgroupError::Write { .. }), "{err}");
    for d in &parent_dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }

    // cgroup v2 settings have no place on v1.
    let unified = Resources {
        unified: [("memory.high".to_string(), "1G".to_string())].into(),
        ..Default::default()
    };
    let err = fx.manager.create(&path, &unified).expect_err("must fail");
    assert!(matches!(err, CgroupError::InvalidResources { .. }), "{err}");
    for d in &parent_dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }

    // Refused before anything is made.
    let err = fx
        .manager
        .create(
            &path,
            &Resources {
                cpu_shares: Some(1),
                ..Default::default()
            },
        )
        .expect_err("must fail");
    assert!(matches!(err, CgroupError::InvalidResources { .. }), "{err}");
    assert!(matches!(
        fx.manager.create("/../etc", &Resources::default()),
        Err(CgroupError::InvalidPath { .. })
    ));
    assert!(matches!(
        fx.manager.open(&fx.path("never-made")),
        Err(CgroupError::NotFound { .. })
    ));
}

/// A deny-all rule, then what every container may use.
fn deny_all_but_defaults() -> Vec<DeviceRule> {
    let mut devices = vec![DeviceRule {
        allow: false,
        kind: DeviceKind::All,
        major: None,
        minor: None,
        access: "rwm".into(),
    }];
    devices.extend(DeviceRule::default_allowed());
    devices
}

/// A cgroup with these device rules and one without any.
fn confined_and_open(fx: &Fixture, devices: Vec<DeviceRule>) -> (Cgroup, Cgroup) {
    let confined = fx
        .manager
        .create(
            &fx.path("confined"),
            &Resources {
                devices,
                ..Default::default()
            },
        )
        .expect("create confined");
    let open = fx
        .manager
        .create(&fx.path("open"), &Resources::default())
        .expect("create open");
    (confined, open)
}

/// Deny-all plus the defaults: /dev/null opens, /dev/kmsg does not, while
/// a cgroup without rules opens both.
#[test]
fn v1_device_rules_are_enforced() {
    let Some(mut fx) = Fixture::v1("dev") else {
        return;
    };
    let (confined, open) = confined_and_open(&fx, deny_all_but_defaults());
    let list = read_trim(
        &v1_dir(&confined, "devices").expect("devices dir"),
        "devices.list",
    );
    assert!(list.lines().any(|l| l == "c 1:3 rwm"), "{list}");
    assert!(!list.lines().any(|l| l.starts_with("a ")), "{list}");

    let mut run = |cg: &Cgroup, script: &str| fx.run_in(cg, script);
    assert!(run(&confined, "exec 3</dev/null").success());
    assert!(!run(&confined, "exec 3</dev/kmsg").success(), "kmsg opened");
    assert!(run(&open, "exec 3</dev/kmsg").success(), "control case");
}

#[test]
fn v1_parallel_creates_share_a_parent() {
    let Some(fx) = Fixture::v1("par") else {
        return;
    };
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let manager = fx.manager.clone();
            let path = fx.path(&format!("c{i}"));
            std::thread::spawn(move || manager.create(&path, &Resources::default()))
        })
        .collect();
    for h in handles {
        let cg = h.join().expect("thread").expect("create");
        assert!(cg.dirs().iter().all(|d| d.path.is_dir()));
    }
}

/// The same rules on cgroup v2, through the eBPF device program: /dev/null
/// opens, /dev/kmsg does not, a cgroup without rules opens both; an update
/// replaces the program rather than adding a second one.
#[test]
fn v2_device_rules_are_enforced() {
    let Some(mut fx) = Fixture::v2("dev") else {
        return;
    };
    let mut devices = deny_all_but_defaults();
    let (confined, open) = confined_and_open(&fx, devices.clone());
    let dir = &confined.dirs()[0].path;
    let programs = |dir: &Path| {
        let f = std::fs::File::open(dir).expect("open cgroup dir");
        crate::sys::bpf_attached_device_programs(std::os::fd::AsFd::as_fd(&f)).expect("query")
    };
    assert_eq!(programs(dir).len(), 1, "one device program attached");
    assert!(programs(&open.dirs()[0].path).is_empty());

    let mut run = |cg: &Cgroup, script: &str| fx.run_in(cg, script);
    assert!(run(&confined, "exec 3</dev/null").success());
    assert!(!run(&confined, "exec 3</dev/kmsg").success(), "kmsg opened");
    assert!(run(&open, "exec 3</dev/kmsg").success(), "control case");

    // Now allow /dev/kmsg (1:11) for reading only.
    devices.push(DeviceRule {
        allow: true,
        kind: DeviceKind::Char,
        major: Some(1),
        minor: Some(11),
        access: "r".into(),
    });
    confined
        .update(&Resources {
            devices,
            ..Default::default()
        })
        .expect("update devices");
    assert_eq!(programs(dir).len(), 1, "the update replaced the program");
    assert!(
        run(&confined, "exec 3</dev/kmsg").success(),
        "kmsg readable"
    );
    assert!(
        !run(&confined, "exec 3<>/dev/kmsg").success(),
        "kmsg writable"
    );
}

#[test]
fn a_mount_table_given_to_detection_is_the_one_used_on_a_v1_host() {
    if is_cgroup2(Path::new(CGROUP_ROOT)) {
        eprintln!("skipped: a cgroup2 host is detected without a mount table");
        return;
    }
    // One hierarchy, not this host's whole set: the table given is used,
    // /proc/self/mountinfo is not read.
    let table = "35 31 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n";
    let given = CgroupManager::detect_with(Some(table)).expect("detect from the table");
    let CgroupFs::V1(fs) = given.container_fs() else {
        panic!("a v1 table detects v1");
    };
    let names: Vec<&str> = fs.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["memory"]);

    let read = CgroupManager::detect().expect("detect");
    let CgroupFs::V1(all) = read.container_fs() else {
        panic!("this host is v1");
    };
    assert!(all.len() > 1, "{all:?}");
}
