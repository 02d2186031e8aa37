//! Runs the real `ketch` binary for one test: its own root dir, state dir,
//! CNI config dir (with a private bridge network, see `net`) and socket
//! under a fresh temp dir, and CRI clients
//! connected to that socket. Dropping a `Daemon` (also on panic) stops
//! ketch, kills what it left running, unmounts what it left mounted, removes
//! the temp dir, and checks the host's mount table lost nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use ketch::cri::api::image_service_client::ImageServiceClient;
use ketch::cri::api::runtime_service_client::RuntimeServiceClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::{Channel, Endpoint, Uri};

use super::net::TestNetwork;

/// Where every test's private directory is made, so leak checks can tell a
/// test's mounts from the host's.
pub const E2E_BASE: &str = "/var/tmp/ketch-e2e";

/// Extra settings for one daemon.
#[derive(Default, Clone)]
pub struct DaemonOptions {
    /// Written to the config file given with `--config`.
    pub config_toml: String,
    /// Environment variables for the daemon process.
    pub env: Vec<(String, String)>,
    /// Leave the CNI conf dir empty: no pod network (NetworkReady false,
    /// pods with their own netns refused). By default the daemon gets a
    /// private bridge network of its own ([`TestNetwork`]).
    pub no_network: bool,
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub root_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    options: DaemonOptions,
    child: Option<Child>,
    host_mounts: BTreeSet<String>,
    /// The pod network written into `cni_conf_dir`, unless `no_network`.
    /// Dropped after ketch is stopped: its bridge goes last.
    pub network: Option<TestNetwork>,
}

/// The ketch binary cargo built for this test run.
pub fn ketch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ketch")
}

impl Daemon {
    pub async fn start() -> Self {
        Self::start_with(DaemonOptions::default()).await
    }

    pub async fn start_with(options: DaemonOptions) -> Self {
        std::fs::create_dir_all(E2E_BASE).expect("create e2e base dir");
        let dir = tempfile::Builder::new()
            .prefix("t-")
            .tempdir_in(E2E_BASE)
            .expect("create test dir");
        Self::start_in(dir, options).await
    }

    /// Starts ketch in a test dir the test prepared (under [`E2E_BASE`]):
    /// `root`, `run` (the state dir), `cni` and the rest are made in it.
    pub async fn start_in(dir: tempfile::TempDir, options: DaemonOptions) -> Self {
        let root_dir = dir.path().join("root");
        let state_dir = dir.path().join("run");
        let cni_conf_dir = dir.path().join("cni");
        std::fs::create_dir_all(&cni_conf_dir).expect("create cni dir");
        let config_path = dir.path().join("ketch.toml");
        std::fs::write(&config_path, &options.config_toml).expect("write config");
        let network = (!options.no_network).then(|| {
            let network = TestNetwork::new(&cni_conf_dir, dir.path().join("ipam"));
            network.write_default();
            network
        });
        let mut daemon = Daemon {
            socket: state_dir.join("ketch.sock"),
            log_path: dir.path().join("ketch.log"),
            dir,
            root_dir,
            state_dir,
            cni_conf_dir,
            config_path,
            options,
            child: None,
            host_mounts: host_mounts(),
            network,
        };
        daemon.spawn().await;
        daemon
    }

    /// The command line of this daemon, for tests that run it themselves.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(ketch_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--root-dir")
            .arg(&self.root_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--cni-conf-dir")
            .arg(&self.cni_conf_dir)
            .arg("--log-level")
            .arg("debug")
            .env_remove("RUST_LOG");
        for (k, v) in &self.options.env {
            cmd.env(k, v);
        }
        cmd
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open daemon log");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn ketch");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "ketch exited during start with {status}; log:\n{}",
                    self.log()
                );
            }
            if tokio::net::UnixStream::connect(&self.socket).await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "ketch did not serve {} in time; log:\n{}",
                    self.socket.display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub async fn channel(&self) -> Channel {
        unix_channel(self.socket.clone()).await
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel().await)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ketch did not exit within 15s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Replaces the environment given to the next start.
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.options.env = env;
    }

    /// Starts ketch again on the same dirs (after `stop` or `kill9`).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill ketch before restart");
        self.spawn().await;
    }

    /// Asserts the daemon left nothing behind: no process started from this
    /// test's dirs, no mount under them.
    pub fn assert_clean(&self) {
        let base = self.dir.path().to_string_lossy().into_owned();
        let procs: Vec<i32> = pids_referencing(&base)
            .into_iter()
            .filter(|p| Some(*p as u32) != self.pid())
            .collect();
        assert!(procs.is_empty(), "processes left running: {procs:?}");
        let mounts: Vec<String> = mountpoints()
            .into_iter()
            .filter(|m| m.starts_with(&base) && !self.is_state_tmpfs(m))
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    }

    /// The tmpfs ketch mounts on its state dir when that is on persistent
    /// storage: it stays when ketch stops, as the containers' sockets and
    /// exit files live there; never a leak.
    fn is_state_tmpfs(&self, mount_point: &str) -> bool {
        Path::new(mount_point) == self.state_dir
    }

    /// Kills every process still running from this test's dirs (monitors,
    /// containers), unmounts every mount under them, deepest first.
    fn reap_leftovers(&self) -> (Vec<String>, Vec<String>) {
        let base = self.dir.path().to_string_lossy().into_owned();
        let mut procs = Vec::new();
        for pid in pids_referencing(&base) {
            procs.push(format!("pid {pid}"));
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let mut mounts: Vec<String> = mountpoints()
            .into_iter()
            .filter(|m| m.starts_with(&base))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in &mounts {
            let _ = nix::mount::umount2(Path::new(m), nix::mount::MntFlags::MNT_DETACH);
        }
        mounts.retain(|m| !self.is_state_tmpfs(m));
        (procs, mounts)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The test's clients may still hold connections that only its
            // (now blocked) runtime would close: allow a moment, then kill.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "---- ketch log ({}) ----\n{}",
                self.log_path.display(),
                self.log()
            );
        }
        let (_procs, leaked_mounts) = self.reap_leftovers();
        let lost: Vec<String> = self
            .host_mounts
            .difference(&host_mounts())
            .cloned()
            .collect();
        if !panicking {
            assert!(
                lost.is_empty(),
                "host mounts disappeared during the test: {lost:?}"
            );
            assert!(
                leaked_mounts.is_empty(),
                "mounts left under the test dir after ketch stopped: {leaked_mounts:?}"
            );
        }
    }
}

/// Runs `ketch` with this config and private dirs until it exits (a
/// daemon that must refuse to start): its exit code and stderr.
pub fn run_with_config(toml: &str) -> (i32, String) {
    // Under the e2e base: a tmpfs the refused start mounts for a moment on
    // its state dir is then no host mount to the tests running beside it.
    std::fs::create_dir_all(E2E_BASE).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("t-")
        .tempdir_in(E2E_BASE)
        .unwrap();
    let path = dir.path().join("ketch.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(ketch_bin())
        .arg("--config")
        .arg(&path)
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .arg("--state-dir")
        .arg(dir.path().join("run"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A gRPC channel to a CRI socket.
pub async fn unix_channel(socket: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to ketch socket")
}

/// Mount points, unescaped from /proc/self/mountinfo.
pub fn mountpoints() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .collect()
}

/// The host's own mounts: everything not made by a test.
fn host_mounts() -> BTreeSet<String> {
    mountpoints()
        .into_iter()
        .filter(|m| !m.starts_with(E2E_BASE) && !m.starts_with("/run/netns"))
        .collect()
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// Processes whose command line mentions `needle` (monitors and the like).
pub fn pids_referencing(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}
