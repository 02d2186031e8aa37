//! The monitor and the executor with real namespaces and mounts (as root):
//! each test builds a busybox rootfs (Debian's busybox-static), writes an
//! OCI bundle and starts it through the real `ketch monitor`.
//!
//! Every test checks on drop that the host's mount table is what it was
//! and that no process of its bundle is left.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, symlink};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ketch::executor::exec::{self, ExecTarget, MAX_OUTPUT, TRUNCATION_MARKER};
use ketch::monitor::{self, ExitStatus, MonitorError, MonitorSpec, Started, proto};
use nix::sys::signal::Signal;
use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder, Process,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

/// The binary under test: this build's `ketch-shim` (what the daemon runs
/// monitors with), or `KETCH_BIN` (say, a release build, to measure the
/// monitor as shipped).
fn ketch() -> PathBuf {
    std::env::var_os("KETCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ketch-shim")))
}

/// A bundle in a temp dir: `config.json`, `rootfs/`, the log, exit file and
/// socket. Checks the host on drop.
struct Bundle {
    dir: tempfile::TempDir,
    mountinfo: String,
}

fn host_mounts() -> String {
    // Mount ids and the optional fields do not change; comparing whole
    // lines catches an added, lost or changed mount.
    std::fs::read_to_string("/proc/self/mountinfo").unwrap()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

fn ns(typ: LinuxNamespaceType, path: Option<&Path>) -> oci_spec::runtime::LinuxNamespace {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p);
    }
    b.build().unwrap()
}

impl Bundle {
    fn new() -> Self {
        let mountinfo = host_mounts();
        let dir = tempfile::Builder::new()
            .prefix("km")
            .tempdir_in("/tmp")
            .unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
        Self { dir, mountinfo }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }

    fn log(&self) -> PathBuf {
        self.path().join("ctr.log")
    }

    fn exit_file(&self) -> PathBuf {
        self.path().join("exit.json")
    }

    fn socket(&self) -> PathBuf {
        self.path().join("attach.sock")
    }

    /// A spec like the container module's: new pid, mount, ipc, uts and
    /// net namespaces, the standard mounts, masked paths.
    fn spec(&self, args: &[&str]) -> Spec {
        let process = ProcessBuilder::default()
            .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .env(vec!["PATH=/bin".to_string(), "HOME=/".to_string()])
            .cwd("/")
            .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
            .build()
            .unwrap();
        let linux = LinuxBuilder::default()
            .namespaces(vec![
                ns(LinuxNamespaceType::Pid, None),
                ns(LinuxNamespaceType::Mount, None),
                ns(LinuxNamespaceType::Ipc, None),
                ns(LinuxNamespaceType::Uts, None),
                ns(LinuxNamespaceType::Network, None),
            ])
            .masked_paths(vec!["/proc/kcore".to_string(), "/proc/acpi".to_string()])
            .readonly_paths(vec!["/proc/sys".to_string()])
            .build()
            .unwrap();
        let mut spec = SpecBuilder::default()
            .version("1.0.2")
            .root(
                RootBuilder::default()
                    .path("rootfs")
                    .readonly(false)
                    .build()
                    .unwrap(),
            )
            .process(process)
            .hostname("ctr-host")
            .mounts(vec![
                mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
                mount(
                    "/dev",
                    "tmpfs",
                    "tmpfs",
                    &["nosuid", "strictatime", "mode=755", "size=65536k"],
                ),
                mount(
                    "/dev/pts",
                    "devpts",
                    "devpts",
                    &[
                        "nosuid",
                        "noexec",
                        "newinstance",
                        "ptmxmode=0666",
                        "mode=0620",
                    ],
                ),
                mount(
                    "/dev/shm",
                    "tmpfs",
                    "shm",
                    &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
                ),
                mount(
                    "/dev/mqueue",
                    "mqueue",
                    "mqueue",
                    &["nosuid", "noexec", "nodev"],
                ),
                mount(
                    "/sys",
                    "sysfs",
                    "sysfs",
                    &["nosuid", "noexec", "nodev", "ro"],
                ),
            ])
            .linux(linux)
            .build()
            .unwrap();
        spec.set_annotations(None);
        spec
    }

    fn write(&self, spec: &Spec) {
        spec.save(self.path().join("config.json")).unwrap();
    }

    fn monitor_spec(&self) -> MonitorSpec {
        MonitorSpec {
            bundle: self.path().to_owned(),
            log_path: self.log(),
            exit_file: self.exit_file(),
            socket: self.socket(),
            tty: false,
            stdin: false,
            stdin_once: false,
            cgroup_dirs: Vec::new(),
            cgroup_mounts: None,
            exe: Some(ketch()),
            runtime: None,
        }
    }

    fn start(&self, spec: &Spec) -> Result<Started, MonitorError> {
        self.write(spec);
        monitor::start(&self.monitor_spec())
    }

    fn run(&self, args: &[&str]) -> (ExitStatus, Vec<LogLine>) {
        let started = self.start(&self.spec(args)).unwrap();
        assert!(started.container_pid > 0);
        let status = self.wait_exit();
        (status, self.log_lines(&self.log()))
    }

    fn wait_exit(&self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = monitor::read_exit_file(&self.exit_file()).unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "no exit file after 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_lines(&self, path: &Path) -> Vec<LogLine> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.split_terminator('\n').map(LogLine::parse).collect()
    }

    /// Pids of processes that mention this bundle in their command line
    /// (the monitor, and any forked child that has not exec'd).
    fn own_processes(&self) -> Vec<i32> {
        let needle = self.path().to_string_lossy().into_owned();
        let me = std::process::id() as i32;
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .collect()
    }

    fn assert_no_process_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.own_processes();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "processes left: {left:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for pid in self.own_processes() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        if std::thread::panicking() {
            return;
        }
        // Other software on the machine may mount and unmount meanwhile
        // (its own dirs under /var/tmp, /run/netns): what must hold is that
        // no mount the host had is gone and none is left under our dir.
        let after = host_mounts();
        let ours = self.path().to_string_lossy().into_owned();
        let churn = |point: &str| point.starts_with("/var/tmp/") || point.starts_with("/run/netns");
        let lost: Vec<&str> = self
            .mountinfo
            .lines()
            .filter(|l| !after.lines().any(|a| a == *l))
            .filter(|l| !churn(mount_point(l)))
            .collect();
        let left: Vec<&str> = after
            .lines()
            .filter(|l| mount_point(l).starts_with(&ours))
            .collect();
        assert!(lost.is_empty(), "the host lost mounts: {lost:#?}");
        assert!(left.is_empty(), "mounts left on the host: {left:#?}");
    }
}

fn mount_point(mountinfo_line: &str) -> &str {
    mountinfo_line.split(' ').nth(4).unwrap_or("")
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LogLine {
    stream: String,
    tag: String,
    content: String,
}

impl LogLine {
    fn parse(line: &str) -> Self {
        let mut parts = line.splitn(4, ' ');
        let ts = parts.next().unwrap();
        assert!(
            ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "bad timestamp in {line:?}"
        );
        let stream = parts.next().unwrap().to_owned();
        assert!(stream == "stdout" || stream == "stderr", "{line:?}");
        let tag = parts.next().unwrap().to_owned();
        assert!(tag == "F" || tag == "P", "{line:?}");
        Self {
            stream,
            tag,
            content: parts.next().unwrap_or_default().to_owned(),
        }
    }
}

fn line(stream: &str, tag: &str, content: &str) -> LogLine {
    LogLine {
        stream: stream.into(),
        tag: tag.into(),
        content: content.into(),
    }
}

fn stdout_text(lines: &[LogLine]) -> String {
    lines
        .iter()
        .filter(|l| l.stream == "stdout")
        .map(|l| format!("{}\n", l.content))
        .collect()
}

#[test]
fn output_lands_in_the_cri_log_and_the_exit_is_recorded() {
    let b = Bundle::new();
    let (status, lines) = b.run(&["sh", "-c", "echo hello; echo oops >&2; printf tail"]);
    assert_eq!(status.exit_code, 0);
    assert_eq!(status.reason, "Completed");
    assert_eq!(status.signal, None);
    assert!(status.finished_at.ends_with('Z'));
    let stdout: Vec<_> = lines.iter().filter(|l| l.stream == "stdout").collect();
    assert_eq!(
        stdout,
        vec![&line("stdout", "F", "hello"), &line("stdout", "F", "tail")]
    );
    assert!(lines.contains(&line("stderr", "F", "oops")));
    b.assert_no_process_left();
}

#[test]
fn long_lines_are_split_into_partial_records() {
    let b = Bundle::new();
    let (status, lines) = b.run(&[
        "sh",
        "-c",
        "head -c 40000 /dev/zero | tr '\\0' a; echo; echo short",
    ]);
    assert_eq!(status.exit_code, 0);
    let tags: Vec<(&str, usize)> = lines
        .iter()
        .map(|l| (l.tag.as_str(), l.content.len()))
        .collect();
    assert_eq!(
        tags,
        vec![("P", 16384), ("P", 16384), ("F", 40000 - 32768), ("F", 5)]
    );
}

#[test]
fn exit_codes_and_signals_are_reported() {
    let b = Bundle::new();
    let (status, _) = b.run(&["sh", "-c", "exit 3"]);
    assert_eq!((status.exit_code, status.reason.as_str()), (3, "Error"));

    let b = Bundle::new();
    let started = b.start(&b.spec(&["sleep", "100"])).unwrap();
    // A start time that does not match is refused: the pid is not ours.
    assert!(
        !monitor::signal_container(
            started.container_pid,
            started.container_start_time + 1,
            Signal::SIGKILL
        )
        .unwrap()
    );
    assert!(monitor::is_alive(
        started.container_pid,
        started.container_start_time
    ));
    assert!(
        monitor::signal_container(
            started.container_pid,
            started.container_start_time,
            Signal::SIGKILL
        )
        .unwrap()
    );
    let status = b.wait_exit();
    assert_eq!(status.exit_code, 137);
    assert_eq!(status.signal, Some(9));
    assert!(!status.oom_killed);
    b.assert_no_process_left();
}

#[test]
fn start_errors_carry_the_cause_and_leave_nothing() {
    let b = Bundle::new();
    let err = b.start(&b.spec(&["/bin/nope"])).unwrap_err().to_string();
    assert_eq!(err, "exec \"/bin/nope\": no such file or directory");
    assert!(!b.exit_file().exists());
    b.assert_no_process_left();

    let err = b.start(&b.spec(&["nope"])).unwrap_err().to_string();
    assert_eq!(err, "exec \"nope\": executable file not found in $PATH");
    b.assert_no_process_left();

    std::fs::write(b.rootfs().join("etc/notexec"), "#!/bin/sh\n").unwrap();
    let err = b.start(&b.spec(&["/etc/notexec"])).unwrap_err().to_string();
    assert_eq!(err, "exec \"/etc/notexec\": permission denied");

    let mut spec = b.spec(&["true"]);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_cwd(PathBuf::from("/etc/passwd/sub"));
    let err = b.start(&spec).unwrap_err().to_string();
    assert!(err.contains("cwd \"/etc/passwd/sub\""), "{err}");
    assert!(err.ends_with("not a directory"), "{err}");

    let mut spec = b.spec(&["true"]);
    spec.mounts_mut().as_mut().unwrap().push(mount(
        "/data",
        "bind",
        "/nonexistent-ketch-test",
        &["rbind"],
    ));
    let err = b.start(&spec).unwrap_err().to_string();
    assert_eq!(
        err,
        "bind mount source /nonexistent-ketch-test: no such file or directory"
    );
    b.assert_no_process_left();
}

#[test]
fn the_container_is_isolated_and_configured() {
    let b = Bundle::new();
    let marker = b.path().join("host-only");
    std::fs::write(&marker, "x").unwrap();
    let script = format!(
        "echo pid=$$; \
         test -e {marker} && echo host-visible; \
         echo host=$(hostname); \
         for d in null zero full random urandom tty; do test -c /dev/$d || echo missing-$d; done; \
         test -L /dev/ptmx && test -c /dev/pts/ptmx && echo pts-ok; \
         test -L /dev/fd && test -L /dev/stdin && echo links-ok; \
         echo shm > /dev/shm/f && cat /dev/shm/f; \
         head -c 4 /dev/urandom | wc -c; \
         grep -q ' /dev/mqueue ' /proc/self/mountinfo && echo mqueue-ok; \
         touch /sys/x 2>/dev/null || echo sys-ro; \
         echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo procsys-ro; \
         test -s /proc/kcore && echo kcore-visible; \
         echo cwd=$(pwd) uid=$(id -u) gid=$(id -g) groups=$(id -G); \
         ls -dn /work/dir | awk '{{print \"owner=\" $3 \":\" $4}}'; \
         echo umask=$(umask); \
         touch /rootfile 2>/dev/null || echo root-ro; \
         cat /data/f; touch /data/g 2>/dev/null || echo data-ro; \
         cat /proc/sys/net/ipv4/ip_unprivileged_port_start",
        marker = marker.display()
    );
    let mut spec = b.spec(&["sh", "-c", &script]);
    spec.root_mut().as_mut().unwrap().set_readonly(Some(true));
    let data = b.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), "from-host\n").unwrap();
    spec.mounts_mut().as_mut().unwrap().push(mount(
        "/data",
        "bind",
        data.to_str().unwrap(),
        &["rbind", "rprivate", "ro"],
    ));
    spec.linux_mut().as_mut().unwrap().set_sysctl(Some(
        [(
            "net.ipv4.ip_unprivileged_port_start".to_string(),
            "0".to_string(),
        )]
        .into(),
    ));
    let process = spec.process_mut().as_mut().unwrap();
    process.set_cwd(PathBuf::from("/work/dir"));
    process.set_user(
        UserBuilder::default()
            .uid(1000u32)
            .gid(1000u32)
            .additional_gids(vec![2000u32])
            .umask(0o027u32)
            .build()
            .unwrap(),
    );
    b.start(&spec).unwrap();
    let status = b.wait_exit();
    let out = stdout_text(&b.log_lines(&b.log()));
    let errs: Vec<_> = b
        .log_lines(&b.log())
        .into_iter()
        .filter(|l| l.stream == "stderr")
        .collect();
    assert_eq!(status.exit_code, 0, "{out} {errs:?}");
    assert_eq!(
        out,
        "pid=1\nhost=ctr-host\npts-ok\nlinks-ok\nshm\n4\nmqueue-ok\nsys-ro\nprocsys-ro\n\
         cwd=/work/dir uid=1000 gid=1000 groups=1000 2000\nowner=1000:1000\numask=0027\nroot-ro\nfrom-host\ndata-ro\n0\n",
        "stderr: {errs:?}"
    );
    b.assert_no_process_left();
}

#[test]
fn capabilities_rlimits_and_no_new_privs_apply_to_the_container_and_exec() {
    use oci_spec::runtime::{
        Capability, LinuxCapabilitiesBuilder, PosixRlimitBuilder, PosixRlimitType,
    };
    let b = Bundle::new();
    let script = "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; \
                  ulimit -n; sleep 1000";
    let mut spec = b.spec(&["sh", "-c", script]);
    let caps: std::collections::HashSet<Capability> =
        [Capability::Chown, Capability::NetBindService].into();
    let process = spec.process_mut().as_mut().unwrap();
    process.set_capabilities(Some(
        LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps.clone())
            .inheritable(std::collections::HashSet::new())
            .ambient(std::collections::HashSet::new())
            .build()
            .unwrap(),
    ));
    process.set_no_new_privileges(Some(true));
    process.set_rlimits(Some(vec![
        PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(1234u64)
            .hard(1234u64)
            .build()
            .unwrap(),
    ]));
    let started = b.start(&spec).unwrap();
    let expected = "CapInh:\t0000000000000000\nCapPrm:\t0000000000000401\n\
                    CapEff:\t0000000000000401\nCapBnd:\t0000000000000401\n\
                    CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n1234\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    while stdout_text(&b.log_lines(&b.log())) != expected {
        assert!(
            Instant::now() < deadline,
            "{}",
            stdout_text(&b.log_lines(&b.log()))
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = target(&started);
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        script.replace("sleep 1000", "true"),
    ]));
    let out = exec::exec_sync(&ketch(), t, &p, Some(Duration::from_secs(10))).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    monitor::signal_container(t.pid, t.start_time, Signal::SIGKILL).unwrap();
    b.wait_exit();
    b.assert_no_process_left();
}

#[test]
fn oom_score_adj_is_never_below_our_own() {
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let b = Bundle::new();
    let mut spec = b.spec(&["sleep", "1000"]);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_oom_score_adj(Some(own - 1));
    let started = b.start(&spec).unwrap();
    let adj =
        std::fs::read_to_string(format!("/proc/{}/oom_score_adj", started.container_pid)).unwrap();
    assert_eq!(adj.trim(), own.to_string());
    assert!(
        started.warnings.iter().any(|w| w.contains("oom_score_adj")),
        "{:?}",
        started.warnings
    );
    monitor::signal_container(
        started.container_pid,
        started.container_start_time,
        Signal::SIGKILL,
    )
    .unwrap();
    b.wait_exit();

    let b = Bundle::new();
    let mut spec = b.spec(&["sleep", "1000"]);
    let wanted = (own + 100).min(1000);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_oom_score_adj(Some(wanted));
    let started = b.start(&spec).unwrap();
    let adj =
        std::fs::read_to_string(format!("/proc/{}/oom_score_adj", started.container_pid)).unwrap();
    assert_eq!(adj.trim(), wanted.to_string());
    assert!(started.warnings.is_empty(), "{:?}", started.warnings);
    monitor::signal_container(
        started.container_pid,
        started.container_start_time,
        Signal::SIGKILL,
    )
    .unwrap();
    b.wait_exit();
    b.assert_no_process_left();
}

#[test]
fn namespaces_are_joined_by_path() {
    let a = Bundle::new();
    let first = a.start(&a.spec(&["sleep", "1000"])).unwrap();
    let b = Bundle::new();
    let mut spec = b.spec(&["sh", "-c", "hostname; sleep 1000"]);
    spec.set_hostname(Some("ignored-when-joined".into()));
    let namespaces = spec
        .linux_mut()
        .as_mut()
        .unwrap()
        .namespaces_mut()
        .as_mut()
        .unwrap();
    for (typ, name) in [
        (LinuxNamespaceType::Network, "net"),
        (LinuxNamespaceType::Ipc, "ipc"),
        (LinuxNamespaceType::Uts, "uts"),
    ] {
        namespaces.retain(|n| n.typ() != typ);
        let path = PathBuf::from(format!("/proc/{}/ns/{name}", first.container_pid));
        namespaces.push(ns(typ, Some(&path)));
    }
    let second = b.start(&spec).unwrap();
    let inode = |pid: i32, name: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/{name}"))
            .unwrap()
            .ino()
    };
    for name in ["net", "ipc", "uts"] {
        assert_eq!(
            inode(first.container_pid, name),
            inode(second.container_pid, name),
            "{name}"
        );
    }
    for name in ["pid", "mnt"] {
        assert_ne!(
            inode(first.container_pid, name),
            inode(second.container_pid, name),
            "{name}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while stdout_text(&b.log_lines(&b.log())) != "ctr-host\n" {
        assert!(Instant::now() < deadline, "{:?}", b.log_lines(&b.log()));
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in [&first, &second] {
        monitor::signal_container(s.container_pid, s.container_start_time, Signal::SIGKILL)
            .unwrap();
    }
    a.wait_exit();
    b.wait_exit();
    a.assert_no_process_left();
    b.assert_no_process_left();
}

#[test]
fn attach_forwards_stdin_fans_out_output_and_closes_stdin_once() {
    let b = Bundle::new();
    b.write(&b.spec(&[
        "sh",
        "-c",
        "read a; echo got:$a; read b || echo eof; echo err >&2",
    ]));
    let mut ms = b.monitor_spec();
    ms.stdin = true;
    ms.stdin_once = true;
    monitor::start(&ms).unwrap();
    let mut watcher = UnixStream::connect(b.socket()).unwrap();
    watcher
        .write_all(&proto::encode(proto::ATTACH, &[]))
        .unwrap();
    let mut client = UnixStream::connect(b.socket()).unwrap();
    client
        .write_all(&proto::encode(proto::ATTACH, &[proto::ATTACH_STDIN]))
        .unwrap();
    client
        .write_all(&proto::encode(proto::STDIN, b"hi\n"))
        .unwrap();
    // stdin_once: the first attach's end of input is the container's EOF.
    client
        .write_all(&proto::encode(proto::STDIN_CLOSE, &[]))
        .unwrap();
    let (out, err, code) = monitor::attach_collect(&mut client).unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "got:hi\neof\n");
    assert_eq!(String::from_utf8_lossy(&err), "err\n");
    assert_eq!(code, Some(0));
    let (out2, _, code2) = monitor::attach_collect(&mut watcher).unwrap();
    assert_eq!(out2, out);
    assert_eq!(code2, Some(0));
    assert_eq!(b.wait_exit().exit_code, 0);
    let lines = b.log_lines(&b.log());
    assert!(lines.contains(&line("stdout", "F", "got:hi")));
    b.assert_no_process_left();
}

#[test]
fn detaching_does_not_stop_the_container() {
    let b = Bundle::new();
    b.write(&b.spec(&["sh", "-c", "read a; echo got:$a"]));
    let mut ms = b.monitor_spec();
    ms.stdin = true;
    monitor::start(&ms).unwrap();
    {
        let mut c = UnixStream::connect(b.socket()).unwrap();
        c.write_all(&proto::encode(proto::ATTACH, &[proto::ATTACH_STDIN]))
            .unwrap();
        c.write_all(&proto::encode(proto::STDIN_CLOSE, &[]))
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!b.exit_file().exists(), "detach stopped the container");
    let mut c = UnixStream::connect(b.socket()).unwrap();
    c.write_all(&proto::encode(proto::ATTACH, &[proto::ATTACH_STDIN]))
        .unwrap();
    c.write_all(&proto::encode(proto::STDIN, b"later\n"))
        .unwrap();
    let (out, _, code) = monitor::attach_collect(&mut c).unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "got:later\n");
    assert_eq!(code, Some(0));
}

#[test]
fn tty_output_and_resize() {
    let b = Bundle::new();
    let mut spec = b.spec(&[
        "sh",
        "-c",
        "stty size; read x; test -t 0 && test -t 1 && echo is-tty; stty size; \
         t=$(tty); echo tty=$t; test -c $t && echo exists; \
         test $(stat -L -c %t:%T $t) = $(stat -L -c %t:%T /proc/self/fd/0) && echo same-device; \
         test $(stat -L -c %t:%T /dev/console) = $(stat -L -c %t:%T $t) && echo console",
    ]);
    let process = spec.process_mut().as_mut().unwrap();
    process.set_terminal(Some(true));
    // Set before the program runs.
    process.set_console_size(Some(
        oci_spec::runtime::BoxBuilder::default()
            .width(81u64)
            .height(21u64)
            .build()
            .unwrap(),
    ));
    b.write(&spec);
    let mut ms = b.monitor_spec();
    ms.tty = true;
    ms.stdin = true;
    monitor::start(&ms).unwrap();
    let mut c = UnixStream::connect(b.socket()).unwrap();
    c.write_all(&proto::encode(proto::ATTACH, &[proto::ATTACH_STDIN]))
        .unwrap();
    // The spec's size, set before the program ran: its first line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let log = std::fs::read_to_string(b.log()).unwrap_or_default();
        if let Some(l) = log.lines().next() {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no output");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(first.ends_with(" stdout F 21 81"), "{first}");
    c.write_all(&proto::encode(
        proto::RESIZE,
        &proto::resize_payload(100, 30),
    ))
    .unwrap();
    c.write_all(&proto::encode(proto::STDIN, b"go\r")).unwrap();
    let (out, _, code) = monitor::attach_collect(&mut c).unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("is-tty"), "{out:?}");
    assert!(out.contains("30 100"), "{out:?}");
    // The container's own devpts: its first pty, which exists in there
    // and is the process's terminal and /dev/console.
    assert!(out.contains("tty=/dev/pts/0"), "{out:?}");
    for word in ["exists", "same-device", "console"] {
        assert!(out.contains(word), "{word}: {out:?}");
    }
    assert_eq!(code, Some(0));
    // Output as stdout lines, without the terminal's \r.
    let log = std::fs::read_to_string(b.log()).unwrap();
    assert!(log.contains(" stdout F tty=/dev/pts/0\n"), "{log}");
}

#[test]
fn the_log_is_reopened_without_losing_lines() {
    let b = Bundle::new();
    b.start(&b.spec(&[
        "sh",
        "-c",
        "echo one; while [ ! -e /tmp/go ]; do sleep 0.02; done; echo two",
    ]))
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.log_lines(&b.log()).is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let rotated = b.path().join("ctr.log.1");
    std::fs::rename(b.log(), &rotated).unwrap();
    monitor::reopen_log(&b.socket()).unwrap();
    std::fs::write(b.rootfs().join("tmp/go"), "").unwrap();
    assert_eq!(b.wait_exit().exit_code, 0);
    assert_eq!(b.log_lines(&rotated), vec![line("stdout", "F", "one")]);
    assert_eq!(b.log_lines(&b.log()), vec![line("stdout", "F", "two")]);
}

fn target(s: &Started) -> ExecTarget {
    ExecTarget {
        pid: s.container_pid,
        start_time: s.container_start_time,
    }
}

fn exec_process(spec: &Spec, args: &[&str]) -> Process {
    let mut p = spec.process().clone().unwrap();
    p.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    p
}

/// Processes in the pid namespace of `pid`, other than `pid`.
fn others_in_pid_ns(pid: i32) -> Vec<i32> {
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .unwrap()
        .ino();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != pid && !is_zombie(*p))
        .filter(|p| {
            std::fs::metadata(format!("/proc/{p}/ns/pid"))
                .map(|m| m.ino() == theirs)
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn exec_sync_runs_in_the_container() {
    let b = Bundle::new();
    let spec = b.spec(&["sleep", "1000"]);
    let started = b.start(&spec).unwrap();
    let t = target(&started);
    let exe = &ketch();

    let out = exec::exec_sync(
        exe,
        t,
        &exec_process(
            &spec,
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; cat /proc/1/comm; hostname; exit 4",
            ],
        ),
        Some(Duration::from_secs(10)),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "out\nsleep\nctr-host\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_eq!(
        (out.exit_code, out.timed_out, out.truncated),
        (4, false, false)
    );

    // Returns at the exit, not when a background child closes stdout.
    let begin = Instant::now();
    let out = exec::exec_sync(
        exe,
        t,
        &exec_process(&spec, &["sh", "-c", "(sleep 30 &); echo done"]),
        Some(Duration::from_secs(20)),
    )
    .unwrap();
    assert!(begin.elapsed() < Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    assert_eq!(out.exit_code, 0);

    let err = exec::exec_sync(exe, t, &exec_process(&spec, &["nope"]), None)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "exec \"nope\": executable file not found in $PATH");

    let out = exec::exec_sync(
        exe,
        t,
        &exec_process(&spec, &["sh", "-c", "head -c 20000000 /dev/zero"]),
        Some(Duration::from_secs(20)),
    )
    .unwrap();
    assert!(out.truncated);
    assert_eq!(out.stdout.len(), MAX_OUTPUT);
    assert!(out.stdout.ends_with(TRUNCATION_MARKER));
    assert_eq!(out.exit_code, 0);

    monitor::signal_container(t.pid, t.start_time, Signal::SIGKILL).unwrap();
    assert_eq!(b.wait_exit().exit_code, 137);
    b.assert_no_process_left();
}

#[test]
fn exec_timeout_kills_the_process_group() {
    let b = Bundle::new();
    let spec = b.spec(&["sleep", "1000"]);
    let started = b.start(&spec).unwrap();
    let t = target(&started);
    let begin = Instant::now();
    let out = exec::exec_sync(
        &ketch(),
        t,
        &exec_process(&spec, &["sh", "-c", "echo started; sleep 50 & sleep 60"]),
        Some(Duration::from_millis(500)),
    )
    .unwrap();
    assert!(out.timed_out);
    assert_eq!(out.exit_code, 137);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
    assert!(begin.elapsed() < Duration::from_secs(5));
    // Both sleeps were in the group: only the container's init is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !others_in_pid_ns(t.pid).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", others_in_pid_ns(t.pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    monitor::signal_container(t.pid, t.start_time, Signal::SIGKILL).unwrap();
    b.wait_exit();
    b.assert_no_process_left();
}

#[test]
fn pause_holds_a_pid_namespace_that_containers_join() {
    let b = Bundle::new();
    let pause = monitor::pause::spawn(Some(&ketch()), &Default::default()).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pause.pid)).unwrap();
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    assert_eq!(nspid, "1", "{status}");

    let mut spec = b.spec(&[
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo $$",
    ]);
    let pid_ns = PathBuf::from(format!("/proc/{}/ns/pid", pause.pid));
    let namespaces = spec
        .linux_mut()
        .as_mut()
        .unwrap()
        .namespaces_mut()
        .as_mut()
        .unwrap();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    namespaces.push(ns(LinuxNamespaceType::Pid, Some(&pid_ns)));
    b.start(&spec).unwrap();
    assert_eq!(b.wait_exit().exit_code, 0);
    let out = stdout_text(&b.log_lines(&b.log()));
    let mut lines = out.lines();
    assert!(lines.next().unwrap().contains("pause --spawn"), "{out}");
    assert_ne!(lines.next().unwrap(), "1");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pause.pid), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while monitor::process_start_time(pause.pid) == Some(pause.start_time) && !is_zombie(pause.pid)
    {
        assert!(Instant::now() < deadline, "pause ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// RSS counts the binary's text too, shared by every monitor; what one
/// more monitor costs is its anonymous memory. Release build, with a
/// running `sleep`: about 3.4 MiB RSS, 0.6 MiB anonymous (debug: about 9
/// and 1.2).
#[test]
fn a_monitor_is_small() {
    let b = Bundle::new();
    let started = b.start(&b.spec(&["sleep", "1000"])).unwrap();
    let rollup =
        std::fs::read_to_string(format!("/proc/{}/smaps_rollup", started.monitor_pid)).unwrap();
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let (rss, anon) = (field("Rss:"), field("Anonymous:"));
    eprintln!("monitor with a running sleep: RSS {rss} KiB, anonymous {anon} KiB");
    assert!(anon < 4 * 1024, "anonymous {anon} KiB");
    assert!(rss < 16 * 1024, "RSS {rss} KiB");
    monitor::signal_container(
        started.container_pid,
        started.container_start_time,
        Signal::SIGKILL,
    )
    .unwrap();
    b.wait_exit();
    b.assert_no_process_left();
}
