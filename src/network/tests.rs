//! The CNI client against Debian's real plugins (bridge, host-local,
//! portmap, bandwidth, loopback) in network namespaces made here. Needs
//! root, `ip` and `tc` (iproute2), iptables and containernetworking-plugins
//! in /usr/lib/cni.
//!
//! Every test owns a unique network name, bridge, subnet (10.213.x.0/24,
//! only inside this host), host-local data dir and netns, and removes them
//! on drop, so they run in parallel and clean up when an assertion fails.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::pod::{EGRESS_BANDWIDTH_ANNOTATION, INGRESS_BANDWIDTH_ANNOTATION};
use super::pod_cidr::GENERATED_CONF_NAME;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::*;
use crate::config::CniConfig;

const SYSTEM_PLUGINS: &str = "/usr/lib/cni";

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A network namespace under /run/netns, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        let name = format!("ketch-test-{}", random_hex(4));
        let (ok, out) = run("ip", &["netns", "add", &name]);
        assert!(ok, "ip netns add {name}: {out}");
        Self { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip` inside the namespace.
    fn ip(&self, args: &[&str]) -> (bool, String) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn delete(&self) {
        run("ip", &["netns", "del", &self.name]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// Third octets of 10.213.x.0/24 taken by tests of this process.
static SUBNETS: Mutex<Option<HashSet<u8>>> = Mutex::new(None);

/// One test's network: its config dir, data dir, bridge and subnet. The
/// bridge is deleted and the subnet given back on drop.
struct TestNet {
    dir: tempfile::TempDir,
    name: String,
    bridge: String,
    octet: u8,
    bin_dirs: Vec<PathBuf>,
}

impl TestNet {
    fn new() -> Self {
        let octet = loop {
            let candidate = u8::from_str_radix(&random_hex(1), 16).unwrap();
            let prefix = format!("10.213.{candidate}.");
            let (_, routes) = run("ip", &["-4", "route", "show", "table", "all"]);
            let (_, addrs) = run("ip", &["-4", "addr"]);
            if routes.contains(&prefix) || addrs.contains(&prefix) {
                continue;
            }
            let mut taken = SUBNETS.lock().unwrap();
            if taken.get_or_insert_with(HashSet::new).insert(candidate) {
                break candidate;
            }
        };
        let hex = random_hex(4);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("conf")).unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        Self {
            name: format!("ketch-test-{hex}"),
            bridge: format!("ktb{hex}"),
            octet,
            bin_dirs: vec![dir.path().join("bin"), SYSTEM_PLUGINS.into()],
            dir,
        }
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.octet, 1)
    }

    /// Writes the network: bridge with host-local IPAM, then `extra`.
    fn write_conflist(&self, extra: &[Value]) {
        let mut plugins = vec![json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("10.213.{}.0/24", self.octet)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.data_dir(),
            }
        })];
        plugins.extend_from_slice(extra);
        let conf = json!({"cniVersion": "1.0.0", "name": self.name, "plugins": plugins});
        std::fs::write(
            self.conf_dir().join("10-test.conflist"),
            serde_json::to_vec_pretty(&conf).unwrap(),
        )
        .unwrap();
    }

    /// A shell-script plugin in this test's own bin dir.
    fn write_plugin(&self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("bin").join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn cni(&self, timeout_secs: u64) -> Cni {
        Cni::new(&CniConfig {
            conf_dirs: vec![self.conf_dir()],
            bin_dirs: self.bin_dirs.clone(),
            plugin_timeout_secs: timeout_secs,
            conf_template: None,
        })
    }

    /// Addresses host-local holds for this network.
    fn allocated(&self) -> Vec<IpAddr> {
        let Ok(entries) = std::fs::read_dir(self.data_dir().join(&self.name)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Interfaces enslaved to the bridge (the pods' host-side veths).
    fn bridge_ports(&self) -> String {
        run("ip", &["-o", "link", "show", "master", &self.bridge]).1
    }

    /// Waits (the kernel frees a veth asynchronously once its netns dies)
    /// until the bridge has no ports.
    fn assert_no_ports(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.bridge_ports().trim().is_empty() {
            assert!(
                Instant::now() < deadline,
                "veth left on {}: {}",
                self.bridge,
                self.bridge_ports()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        run("ip", &["link", "del", &self.bridge]);
        if let Ok(mut taken) = SUBNETS.lock()
            && let Some(set) = taken.as_mut()
        {
            set.remove(&self.octet);
        }
    }
}

/// Tears the pod's network down on drop unless the test did: with the
/// cached result once there is one, else with the test's current config
/// (a setup that failed half-way must leave nothing behind either).
struct PodGuard {
    cni: Cni,
    pod: PodNetwork,
    cached: Option<CachedResult>,
    armed: bool,
}

impl PodGuard {
    fn new(cni: &Cni, pod: &PodNetwork) -> Self {
        Self {
            cni: cni.clone(),
            pod: pod.clone(),
            cached: None,
            armed: true,
        }
    }
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (cni, pod, cached) = (self.cni.clone(), self.pod.clone(), self.cached.take());
        // Its own runtime, on its own thread: drop may run inside a test's.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(cni.teardown(&pod, cached.as_ref()));
        })
        .join();
    }
}

fn pod_network(netns: &Netns) -> PodNetwork {
    let mut pod = PodNetwork::new(
        random_hex(32),
        netns.path(),
        "web",
        "ketch-test",
        random_hex(16),
    );
    pod.annotations.insert("team".into(), "net".into());
    pod
}

/// Serves `conns` connections on `port` inside `netns`, each answered with
/// "hello from pod". The thread enters the namespace and never leaves it:
/// `setns` changes only the calling thread, and this one ends when done.
fn serve_in_netns(netns: &Path, port: u16, conns: usize) -> std::thread::JoinHandle<()> {
    let netns = netns.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut served = 0;
        while served < conns && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.write_all(b"hello from pod");
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    handle
}

fn fetch(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

fn iptables_nat() -> String {
    run("iptables-save", &["-t", "nat"]).1
}

fn portmap_plugin() -> Value {
    json!({"type": "portmap", "capabilities": {"portMappings": true}})
}

#[tokio::test]
async fn setup_connect_teardown() {
    if !crate::testing::root_or_skip("makes network namespaces and runs CNI plugins") {
        return;
    }
    let net = TestNet::new();
    net.write_conflist(&[
        portmap_plugin(),
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
        json!({"type": "loopback"}),
    ]);
    let netns = Netns::new();
    let cni = net.cni(30);
    let mut pod = pod_network(&netns);
    let annotations: HashMap<String, String> = [
        (INGRESS_BANDWIDTH_ANNOTATION, "10M"),
        (EGRESS_BANDWIDTH_ANNOTATION, "20M"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    pod.bandwidth = Bandwidth::from_annotations(&annotations).unwrap();
    let host_port = 20000 + u16::from_str_radix(&random_hex(2), 16).unwrap() % 30000;
    pod.port_mappings = vec![PortMapping {
        container_port: 8080,
        host_port,
        protocol: Protocol::Tcp,
        host_ip: Some(IpAddr::V4(net.gateway())),
    }];
    let mut guard = PodGuard::new(&cni, &pod);

    let status = cni.setup(&pod).await.unwrap();
    guard.cached = Some(status.cached.clone());
    assert_eq!(status.ips.len(), 1, "{:?}", status.ips);
    let IpAddr::V4(ip) = status.ips[0] else {
        panic!("not IPv4: {:?}", status.ips)
    };
    assert_eq!(ip.octets()[..3], [10, 213, net.octet], "{ip}");
    assert_eq!(net.allocated(), vec![IpAddr::V4(ip)]);
    assert_eq!(status.cached.pod_ips().unwrap(), status.ips);
    assert_eq!(status.result.cni_version, "1.0.0");

    // The pod sees its address on eth0, and lo is up.
    let (ok, eth0) = netns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(ok && eth0.contains(&format!("{ip}/24")), "{eth0}");
    let (_, lo) = netns.ip(&["-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    assert!(!net.bridge_ports().trim().is_empty());

    // Shaping: a qdisc on the host-side veth (ingress), an ifb (egress).
    let host_side = |prefix: &str| {
        status
            .result
            .interfaces
            .iter()
            .find(|i| i.name.starts_with(prefix) && i.sandbox.is_none())
            .map(|i| i.name.clone())
            .unwrap_or_else(|| panic!("no {prefix}* in {:?}", status.result.interfaces))
    };
    let (veth, ifb) = (host_side("veth"), host_side("bwp"));
    let (_, qdisc) = run("tc", &["qdisc", "show", "dev", &veth]);
    assert!(qdisc.contains("rate 10Mbit"), "{qdisc}");
    let (_, qdisc) = run("tc", &["qdisc", "show", "dev", &ifb]);
    assert!(qdisc.contains("rate 20Mbit"), "{qdisc}");

    // The host reaches the pod, directly and through the port mapping.
    let server = serve_in_netns(&netns.path(), 8080, 2);
    assert_eq!(fetch(SocketAddr::new(ip.into(), 8080)), "hello from pod");
    assert!(iptables_nat().contains(&pod.id), "portmap rules missing");
    assert_eq!(
        fetch(SocketAddr::new(net.gateway().into(), host_port)),
        "hello from pod"
    );
    server.join().unwrap();

    cni.teardown(&pod, Some(&status.cached)).await.unwrap();
    guard.armed = false;
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
    net.assert_no_ports();
    let (ok, _) = netns.ip(&["link", "show", "eth0"]);
    assert!(!ok, "eth0 still in the pod");
    assert!(!iptables_nat().contains(&pod.id), "portmap rules left");
    let (ok, _) = run("ip", &["link", "show", &ifb]);
    assert!(!ok, "ifb {ifb} left");

    // DEL is idempotent.
    cni.teardown(&pod, Some(&status.cached)).await.unwrap();
}

// Without portmap: its CHECK in plugins 1.1.1 looks for IPv6 rules of an
// IPv4-only pod and fails (containernetworking/plugins#819).
#[tokio::test]
async fn check_passes_then_sees_a_broken_pod() {
    if !crate::testing::root_or_skip("makes network namespaces and runs CNI plugins") {
        return;
    }
    let net = TestNet::new();
    net.write_conflist(&[]);
    let netns = Netns::new();
    let cni = net.cni(30);
    let pod = pod_network(&netns);
    let mut guard = PodGuard::new(&cni, &pod);
    let status = cni.setup(&pod).await.unwrap();
    guard.cached = Some(status.cached.clone());

    cni.check(&pod, &status.cached).await.unwrap();
    let (ok, out) = netns.ip(&["link", "del", "eth0"]);
    assert!(ok, "{out}");
    let err = cni.check(&pod, &status.cached).await.unwrap_err();
    assert!(
        matches!(err, NetworkError::PluginFailed { ref plugin, command: CniCommand::Check, .. } if plugin == "bridge"),
        "{err:?}"
    );

    cni.teardown(&pod, Some(&status.cached)).await.unwrap();
    guard.armed = false;
    assert!(net.allocated().is_empty(), "{:?}", net.allocated());
}

#[tokio::test]
async fn failing_plugin_fails_setup_and_leaves_nothing() {
    if !crate::testing::root_or_skip("makes network namespaces and runs CNI plugins") {
        return;
    }
    let net = TestNet::new();
    net.write_plugin(
        "ketch-test-refuse",
        "#!/bin/sh\ncat >/dev/null\n\
         if [ \"$CNI_COMMAND\" = ADD ]; then\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"refused by the test plugin\",\"details\":\"as asked\"}'\n\
         exit 1\nfi\nexit 0\n",
    );
    net.write_conflist(&[portmap_plugin(), json!({"type": "ketch-test-refuse"})]);
    let netns = Netns::new();
    let cni = net.cni(30);
    let mut pod = pod_network(&netns);
    pod.port_mappings = vec![PortMapping {
        container_port: 80,
        host_port: 20000 + u16::from_str_radix(&random_hex(2), 16).unwrap() % 30000,
        protocol: Protocol::Tcp,
        host_ip: Some(IpAddr::V4(net.gateway())),
    }];
    let mut guard = PodGuard::new(&cni, &pod);

    let err = match cni.setup(&pod).await {
        Ok(status) => {
            guard.cached = Some(status.cached);
            panic!("setup succeeded");
        }
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        text.contains("refused by the test plugin: as asked") && text.contains("ketch-test-refuse"),
        "{text}"
    );
    assert!(
        matches!(err, NetworkError::PluginFailed { code: Some(7), .. }),
        "{err:?}"
    );
    assert!(net.allocated().is_empty(), "IP kept: {:?}", net.allocated());
    net.assert_no_ports();
    let (ok, _) = netns.ip(&["link", "show", "eth0"]);
    assert!(!ok, "eth0 left in the pod");
    assert!(!iptables_nat().contains(&pod.id), "portmap rules left");
}

#[tokio::test]
async fn hanging_plugin_is_killed_at_the_timeout() {
    if !crate::testing::root_or_skip("makes network namespaces and runs CNI plugins") {
        return;
    }
    let net = TestNet::new();
    let pids = net.dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    net.write_plugin(
        "ketch-test-hang",
        &format!(
            "#!/bin/sh\ncat >/dev/null\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then\n\
             echo $$ > {dir}/plugin\n\
             sleep 1000 &\n\
             echo $! > {dir}/child\n\
             wait\nfi\nexit 0\n",
            dir = pids.display()
        ),
    );
    net.write_conflist(&[json!({"type": "ketch-test-hang"})]);
    let netns = Netns::new();
    let cni = net.cni(2);
    let pod = pod_network(&netns);
    let mut guard = PodGuard::new(&cni, &pod);

    let started = Instant::now();
    let err = match cni.setup(&pod).await {
        Ok(status) => {
            guard.cached = Some(status.cached);
            panic!("setup succeeded");
        }
        Err(e) => e,
    };
    let elapsed = started.elapsed();
    assert!(
        matches!(err, NetworkError::Timeout { ref plugin, .. } if plugin == "ketch-test-hang"),
        "{err:?}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );

    // The plugin is reaped (no zombie), and what it started is killed.
    let pid_of = |name: &str| {
        std::fs::read_to_string(pids.join(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let plugin = pid_of("plugin");
    assert!(
        !Path::new("/proc").join(&plugin).exists(),
        "plugin {plugin} not reaped"
    );
    let child = pid_of("child");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Gone, or a zombie waiting for its new parent: not running.
        match std::fs::read_to_string(format!("/proc/{child}/stat")) {
            Err(_) => break,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                break;
            }
            Ok(stat) => assert!(Instant::now() < deadline, "child still running: {stat}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    assert!(net.allocated().is_empty(), "IP kept: {:?}", net.allocated());
    net.assert_no_ports();
}

#[tokio::test]
async fn abandoned_setup_is_undone() {
    if !crate::testing::root_or_skip("makes network namespaces and runs CNI plugins") {
        return;
    }
    let net = TestNet::new();
    let marks = net.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    // First in the list, slow: the caller gives up while it runs.
    net.write_plugin(
        "ketch-test-slow",
        &format!(
            "#!/bin/sh\ncat >/dev/null\n\
             case \"$CNI_COMMAND\" in\n\
             ADD) sleep 1; echo '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[],\"ips\":[]}}' ;;\n\
             DEL) touch {dir}/del ;;\n\
             esac\nexit 0\n",
            dir = marks.display()
        ),
    );
    let conf = json!({"cniVersion": "1.0.0", "name": net.name, "plugins": [
        {"type": "ketch-test-slow"},
        {"type": "bridge", "bridge": net.bridge, "isGateway": true, "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": format!("10.213.{}.0/24", net.octet)}]],
            "dataDir": net.data_dir(),
        }},
    ]});
    std::fs::write(net.conf_dir().join("10-test.conflist"), conf.to_string()).unwrap();
    let netns = Netns::new();
    let cni = net.cni(30);
    let pod = pod_network(&netns);
    let _guard = PodGuard::new(&cni, &pod);

    let cancelled = tokio::time::timeout(Duration::from_millis(300), cni.setup(&pod)).await;
    assert!(cancelled.is_err(), "setup finished too early");

    // The setup went on in the background and, with no one to hand its
    // result to, was deleted again (the slow plugin's DEL is the last).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !marks.join("del").exists() {
        assert!(Instant::now() < deadline, "abandoned setup not undone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(net.allocated().is_empty(), "IP kept: {:?}", net.allocated());
    net.assert_no_ports();
}

#[tokio::test]
async fn teardown_after_the_netns_is_gone() {
    if !crate::testing::root_or_skip("makes network namespaces and runs CNI plugins") {
        return;
    }
    let net = TestNet::new();
    net.write_conflist(&[portmap_plugin()]);
    let netns = Netns::new();
    let cni = net.cni(30);
    let mut pod = pod_network(&netns);
    pod.port_mappings = vec![PortMapping {
        container_port: 53,
        host_port: 20000 + u16::from_str_radix(&random_hex(2), 16).unwrap() % 30000,
        protocol: Protocol::Udp,
        host_ip: Some(IpAddr::V4(net.gateway())),
    }];
    let mut guard = PodGuard::new(&cni, &pod);
    let status = cni.setup(&pod).await.unwrap();
    guard.cached = Some(status.cached.clone());
    assert_eq!(net.allocated().len(), 1);

    netns.delete();
    assert!(!netns.path().exists());
    cni.teardown(&pod, Some(&status.cached)).await.unwrap();
    guard.armed = false;
    assert!(net.allocated().is_empty(), "IP kept: {:?}", net.allocated());
    assert!(!iptables_nat().contains(&pod.id), "portmap rules left");
    net.assert_no_ports();

    // A pin that is still a file but no longer a namespace: same outcome.
    std::fs::write(netns.path(), "").unwrap();
    let result = cni.teardown(&pod, Some(&status.cached)).await;
    std::fs::remove_file(netns.path()).unwrap();
    result.unwrap();
}

#[tokio::test]
async fn cached_result_works_across_a_restart_and_a_config_change() {
    if !crate::testing::root_or_skip("makes network namespaces and runs CNI plugins") {
        return;
    }
    let net = TestNet::new();
    net.write_conflist(&[portmap_plugin()]);
    let netns = Netns::new();
    let pod = {
        let mut pod = pod_network(&netns);
        pod.port_mappings = vec![PortMapping {
            container_port: 80,
            host_port: 20000 + u16::from_str_radix(&random_hex(2), 16).unwrap() % 30000,
            protocol: Protocol::Tcp,
            host_ip: Some(IpAddr::V4(net.gateway())),
        }];
        pod
    };
    let cni = net.cni(30);
    let mut guard = PodGuard::new(&cni, &pod);
    let status = cni.setup(&pod).await.unwrap();
    guard.cached = Some(status.cached.clone());
    let stored = serde_json::to_string(&status.cached).unwrap();
    drop(cni);

    // The config is gone; a new instance reads only an empty conf dir.
    std::fs::remove_file(net.conf_dir().join("10-test.conflist")).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let restarted = Cni::new(&CniConfig {
        conf_dirs: vec![empty.path().to_owned()],
        bin_dirs: net.bin_dirs.clone(),
        plugin_timeout_secs: 30,
        conf_template: None,
    });
    assert!(restarted.network().is_err());
    let cached: CachedResult = serde_json::from_str(&stored).unwrap();
    assert_eq!(cached, status.cached);
    assert_eq!(cached.network_name(), net.name);
    assert_eq!(cached.pod_ips().unwrap(), status.ips);

    restarted.teardown(&pod, Some(&cached)).await.unwrap();
    guard.armed = false;
    assert!(net.allocated().is_empty(), "IP kept: {:?}", net.allocated());
    assert!(!iptables_nat().contains(&pod.id), "portmap rules left");
    net.assert_no_ports();
}

#[tokio::test]
async fn missing_plugin_is_named_and_nothing_runs() {
    if !crate::testing::root_or_skip("makes network namespaces and runs CNI plugins") {
        return;
    }
    let net = TestNet::new();
    net.write_conflist(&[json!({"type": "ketch-no-such-plugin"})]);
    let netns = Netns::new();
    let cni = net.cni(30);
    let pod = pod_network(&netns);
    let err = cni.setup(&pod).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, NetworkError::PluginNotFound { .. }),
        "{err:?}"
    );
    assert!(
        text.contains("ketch-no-such-plugin") && text.contains(SYSTEM_PLUGINS),
        "{text}"
    );
    // Not even the bridge ran.
    assert!(
        run("ip", &["link", "show", &net.bridge])
            .1
            .contains("does not exist")
    );
    assert!(net.allocated().is_empty());
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_plugin() {
    if !crate::testing::root_or_skip("makes network namespaces and runs CNI plugins") {
        return;
    }
    let net = TestNet::new();
    net.write_conflist(&[]);
    let cni = net.cni(30);
    let not_a_netns = net.dir.path().join("not-a-netns");
    std::fs::write(&not_a_netns, "").unwrap();
    let pod = PodNetwork::new("abc", &not_a_netns, "p", "ns", "uid");
    let err = cni.setup(&pod).await.unwrap_err();
    assert!(err.is_invalid_argument(), "{err:?}");
    assert!(err.to_string().contains("not a network namespace"), "{err}");

    let netns = Netns::new();
    let mut pod = pod_network(&netns);
    pod.namespace = "a;b".into();
    let err = cni.setup(&pod).await.unwrap_err();
    assert!(err.is_invalid_argument(), "{err:?}");
    assert!(net.allocated().is_empty());
}

#[tokio::test]
async fn teardown_without_cache_or_config_names_the_dirs() {
    let empty = tempfile::tempdir().unwrap();
    let cni = Cni::new(&CniConfig {
        conf_dirs: vec![empty.path().to_owned()],
        bin_dirs: vec![SYSTEM_PLUGINS.into()],
        plugin_timeout_secs: 30,
        conf_template: None,
    });
    let pod = PodNetwork::new("abc", "/run/netns/ketch-test-gone", "p", "ns", "uid");
    let err = cni.teardown(&pod, None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&empty.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn pod_cidr_renders_the_template_once() {
    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("net.d");
    let template = dir.path().join("template.conflist");
    std::fs::write(
        &template,
        r#"{"cniVersion": "1.0.0", "name": "tmpl", "plugins": [{"type": "bridge",
  "ipam": {"type": "host-local",
    "ranges": [{{range $i, $r := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$r}}"}]{{end}}],
    "routes": [{{range $i, $r := .Routes}}{{if $i}}, {{end}}{"dst": "{{$r}}"}{{end}}]}}]}"#,
    )
    .unwrap();
    let cni = Cni::new(&CniConfig {
        conf_dirs: vec![conf_dir.clone()],
        bin_dirs: vec![SYSTEM_PLUGINS.into()],
        plugin_timeout_secs: 30,
        conf_template: Some(template.clone()),
    });
    assert!(cni.network().is_err());

    let err = cni.update_pod_cidr("10.1.0.0/24,nonsense").unwrap_err();
    assert!(
        err.is_invalid_argument() && err.to_string().contains("nonsense"),
        "{err}"
    );

    let written = cni.update_pod_cidr("10.1.0.0/24, fd00:1::/64").unwrap();
    assert_eq!(written, Some(conf_dir.join(GENERATED_CONF_NAME)));
    assert_eq!(
        cni.pod_cidrs(),
        vec![
            "10.1.0.0/24".parse::<IpNet>().unwrap(),
            "fd00:1::/64".parse().unwrap()
        ]
    );
    let network = cni.network().unwrap();
    assert_eq!(network.name, "tmpl");
    assert_eq!(
        network.plugins[0]["ipam"]["ranges"],
        json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]])
    );
    assert_eq!(
        network.plugins[0]["ipam"]["routes"],
        json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
    );
    // No temp file is left beside it.
    assert_eq!(std::fs::read_dir(&conf_dir).unwrap().count(), 1);

    // A network is in place now: a later CIDR is recorded, not rendered.
    assert_eq!(cni.update_pod_cidr("10.2.0.0/24").unwrap(), None);
    assert_eq!(cni.pod_cidrs().len(), 1);
    assert_eq!(cni.update_pod_cidr("").unwrap(), None);
    assert!(cni.pod_cidrs().is_empty());

    // A template that renders to garbage is an error naming it.
    std::fs::remove_file(conf_dir.join(GENERATED_CONF_NAME)).unwrap();
    std::fs::write(&template, "{{.PodCIDR}}").unwrap();
    let err = cni.update_pod_cidr("10.3.0.0/24").unwrap_err();
    assert!(
        err.to_string().contains(&template.display().to_string()),
        "{err}"
    );
}
