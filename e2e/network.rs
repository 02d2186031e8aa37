//! Pod networking end to end: the real daemon attaches pods to a bridge
//! network of Debian's CNI plugins (bridge, host-local, portmap,
//! bandwidth, loopback) and the tests look at the result from the host
//! and from inside the pods' network namespaces: addresses, pod-to-pod and
//! host-to-pod traffic, host ports, the pod's hosts and resolv.conf,
//! failing and hanging plugins, restarts and crashes, and that nothing
//! (IP allocation, veth, iptables rule, netns) is left after removal.
//!
//! Every daemon has its own bridge and /24 (see `harness::net`), so the
//! tests run in parallel. Needs root, iproute2, iptables, busybox (for
//! `ping`) and containernetworking-plugins.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ketch::cri::api::*;
use serde_json::{Value, json};
use tonic::Code;

use crate::harness::crash::crash_at;
use crate::harness::cri::{namespace_options, unique};
use crate::harness::daemon::E2E_BASE;
use crate::harness::net::{SYSTEM_PLUGINS, TestNetwork, run as sh};
use crate::harness::pods::{
    Client, config, list, mounts_under, remove, run, status, stop, try_run,
};
use crate::harness::{Daemon, DaemonOptions};

/// The pod's IPs: the primary, then the others.
async fn pod_ips(client: &mut Client, id: &str) -> Vec<String> {
    let st = status(client, id).await.expect("PodSandboxStatus");
    let net = st.status.unwrap().network.unwrap();
    std::iter::once(net.ip)
        .filter(|ip| !ip.is_empty())
        .chain(net.additional_ips.into_iter().map(|p| p.ip))
        .collect()
}

fn is_ready(st: &PodSandboxStatusResponse) -> bool {
    st.status.as_ref().unwrap().state == PodSandboxState::SandboxReady as i32
}

fn info(st: &PodSandboxStatusResponse) -> Value {
    serde_json::from_str(&st.info["info"]).expect("info is JSON")
}

/// The pinned netns of a ready pod, from the verbose status.
async fn netns_pin(client: &mut Client, id: &str) -> String {
    let st = status(client, id).await.expect("PodSandboxStatus");
    info(&st)["namespaces"]["network"]
        .as_str()
        .expect("network namespace pinned")
        .to_owned()
}

fn network(daemon: &Daemon) -> &TestNetwork {
    daemon
        .network
        .as_ref()
        .expect("the daemon has a test network")
}

/// No pod of `daemon` is left: no record, no directory, no mount.
fn assert_no_pods(daemon: &Daemon) {
    let pods = daemon.state_dir.join("pods");
    assert!(mounts_under(&pods).is_empty(), "{:?}", mounts_under(&pods));
    let dirs: Vec<_> = std::fs::read_dir(&pods)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(dirs.is_empty(), "pod dirs left: {dirs:?}");
    let records: Vec<_> = std::fs::read_dir(daemon.root_dir.join("pods"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(records.is_empty(), "pod records left: {records:?}");
}

/// Nothing of the network is held for any pod: no IP, no veth, no rule.
fn assert_network_released(net: &TestNetwork) {
    assert!(
        net.allocated().is_empty(),
        "IPs still allocated: {:?}",
        net.allocated()
    );
    if let Err(ports) = net.wait_no_ports() {
        panic!("veths left on {}: {ports:?}", net.bridge);
    }
    assert!(
        net.iptables_rules().is_empty(),
        "iptables rules left: {:?}",
        net.iptables_rules()
    );
}

/// `cmd` in the network namespace pinned at `pin`.
fn in_netns(pin: &str, cmd: &[&str]) -> (bool, String) {
    let mut args = vec![format!("--net={pin}")];
    args.extend(cmd.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sh("nsenter", &args)
}

fn ping(pin: &str, ip: &str) -> (bool, String) {
    in_netns(pin, &["busybox", "ping", "-c1", "-W2", ip])
}

/// Serves `conns` connections on `port` inside the netns pinned at `pin`,
/// each answered with "hello from <pin>". The thread enters the namespace
/// (`setns` changes only the calling thread) and ends when done.
fn serve_in_netns(pin: &str, port: u16, conns: usize) -> std::thread::JoinHandle<()> {
    let pin = pin.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let file = std::fs::File::open(&pin).unwrap();
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < conns && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.write_all(format!("hello from {pin}").as_bytes());
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener in the pod");
    handle
}

fn fetch(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    Ok(text)
}

/// A host port no test of this process used yet.
fn host_port() -> u16 {
    fastrand::u16(20000..60000)
}

fn tcp_mapping(container_port: i32, host_port: u16) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port,
        host_port: i32::from(host_port),
        host_ip: String::new(),
    }
}

/// The host's first global IPv4 address outside the tests' networks.
fn host_ip() -> Option<IpAddr> {
    let (_, out) = sh("ip", &["-4", "-o", "addr", "show", "scope", "global"]);
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next()?.parse::<IpAddr>().ok())
        .find(|ip| !ip.to_string().starts_with("10."))
}

/// A directory for plugin scripts of one test, and a config pointing the
/// daemon at it (then at the system's plugins).
struct PluginDir {
    dir: tempfile::TempDir,
}

impl PluginDir {
    fn new() -> Self {
        std::fs::create_dir_all(E2E_BASE).unwrap();
        let dir = tempfile::Builder::new()
            .prefix("cni-bin-")
            .tempdir_in(E2E_BASE)
            .unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, name: &str, script: &str) {
        let path = self.path().join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn config_toml(&self, timeout_secs: u64) -> String {
        format!(
            "[cni]\nbin_dirs = [{:?}, {SYSTEM_PLUGINS:?}]\nplugin_timeout_secs = {timeout_secs}\n",
            self.path().display().to_string()
        )
    }
}

fn portmap() -> Value {
    json!({"type": "portmap", "capabilities": {"portMappings": true}})
}

#[tokio::test]
async fn a_pod_gets_an_ip_on_eth0_and_its_files_name_it() {
    let daemon = Daemon::start().await;
    let net = network(&daemon);
    let mut client = daemon.runtime().await;
    let mut cfg = config(&daemon, &unique("ip"));
    cfg.hostname = "web-0".into();
    cfg.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let id = run(&mut client, cfg).await;

    let ips = pod_ips(&mut client, &id).await;
    assert_eq!(ips.len(), 1, "{ips:?}");
    let ip = &ips[0];
    assert!(net.contains(ip), "{ip} not in {}", net.subnet());
    assert_eq!(net.allocated(), vec![ip.parse::<IpAddr>().unwrap()]);
    assert_eq!(net.bridge_ports().len(), 1, "{:?}", net.bridge_ports());

    // Inside the pod: the address on eth0, lo up, a default route.
    let pin = netns_pin(&mut client, &id).await;
    let (ok, addr) = in_netns(&pin, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(ok && addr.contains(&format!("inet {ip}/24")), "{addr}");
    let (_, lo) = in_netns(&pin, &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    let (_, routes) = in_netns(&pin, &["ip", "-4", "route"]);
    assert!(
        routes.contains(&format!("default via {}", net.gateway())),
        "{routes}"
    );

    // The pod's files: its hostname on its IP, its DNS config.
    let dir = daemon.state_dir.join("pods").join(&id);
    let hosts = std::fs::read_to_string(dir.join("hosts")).unwrap();
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(hosts.contains("::1\tlocalhost"), "{hosts}");
    assert!(hosts.contains(&format!("{ip}\tweb-0\n")), "{hosts}");
    assert!(!hosts.contains("127.0.1.1"), "{hosts}");
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );

    // The verbose status has what DEL will need.
    let st = status(&mut client, &id).await.expect("PodSandboxStatus");
    let cached = &info(&st)["network"]["result"];
    assert_eq!(cached["networkName"], net.name.as_str(), "{cached}");
    assert_eq!(cached["ifname"], "eth0");

    // Stop releases the network: no IP reported, none allocated.
    stop(&mut client, &id).await.unwrap();
    assert!(pod_ips(&mut client, &id).await.is_empty());
    assert_network_released(net);
    assert!(!Path::new(&pin).exists(), "netns pin left");
    stop(&mut client, &id).await.expect("stop is idempotent");
    remove(&mut client, &id).await.unwrap();
    remove(&mut client, &id)
        .await
        .expect("remove is idempotent");
    assert_no_pods(&daemon);
    assert_network_released(net);
    daemon.assert_clean();
}

#[tokio::test]
async fn pods_reach_each_other_and_the_host_reaches_them() {
    let daemon = Daemon::start().await;
    let net = network(&daemon);
    let mut client = daemon.runtime().await;
    let a = run(&mut client, config(&daemon, &unique("a"))).await;
    let b = run(&mut client, config(&daemon, &unique("b"))).await;
    let (ip_a, ip_b) = (
        pod_ips(&mut client, &a).await.remove(0),
        pod_ips(&mut client, &b).await.remove(0),
    );
    assert_ne!(ip_a, ip_b);
    let (pin_a, pin_b) = (
        netns_pin(&mut client, &a).await,
        netns_pin(&mut client, &b).await,
    );

    let (ok, out) = ping(&pin_a, &ip_b);
    assert!(ok, "a -> b: {out}");
    let (ok, out) = ping(&pin_b, &ip_a);
    assert!(ok, "b -> a: {out}");
    let (ok, out) = ping(&pin_a, &net.gateway().to_string());
    assert!(ok, "a -> gateway: {out}");

    // The host connects to a server in pod a; pod b does too.
    let server = serve_in_netns(&pin_a, 8080, 2);
    let addr = SocketAddr::new(ip_a.parse().unwrap(), 8080);
    assert_eq!(fetch(addr).unwrap(), format!("hello from {pin_a}"));
    let (ok, out) = in_netns(&pin_b, &["busybox", "nc", "-w", "3", &ip_a, "8080"]);
    assert!(
        ok && out.contains(&format!("hello from {pin_a}")),
        "b -> a:8080: {out}"
    );
    server.join().unwrap();

    for id in [&a, &b] {
        remove(&mut client, id).await.unwrap();
    }
    assert_no_pods(&daemon);
    assert_network_released(net);
    daemon.assert_clean();
}

#[tokio::test]
async fn a_host_port_answers_on_the_host() {
    let daemon = Daemon::start().await;
    let net = network(&daemon);
    let mut client = daemon.runtime().await;
    let port = host_port();
    let mut cfg = config(&daemon, &unique("hostport"));
    cfg.port_mappings = vec![
        tcp_mapping(8080, port),
        // Declared only (kubelet lists every container port): not mapped.
        tcp_mapping(9090, 0),
    ];
    let id = run(&mut client, cfg).await;
    let pin = netns_pin(&mut client, &id).await;
    let rules = net.iptables_rules();
    assert!(
        rules
            .iter()
            .any(|r| r.contains(&format!("--dport {port}"))
                || r.contains(&format!("--dports {port}"))),
        "no DNAT for {port}: {rules:?}"
    );
    assert!(
        !rules.iter().any(|r| r.contains("9090")),
        "an unpublished port is not mapped: {rules:?}"
    );

    // From the host, through its own addresses: loopback (portmap sets
    // route_localnet and masquerades it), the bridge's, the node's.
    let mut targets = vec![IpAddr::from([127, 0, 0, 1]), IpAddr::V4(net.gateway())];
    targets.extend(host_ip());
    let server = serve_in_netns(&pin, 8080, targets.len());
    for target in &targets {
        let reply = fetch(SocketAddr::new(*target, port));
        assert_eq!(
            reply.as_deref(),
            Ok(format!("hello from {pin}").as_str()),
            "via {target}:{port}"
        );
    }
    server.join().unwrap();

    remove(&mut client, &id).await.unwrap();
    assert!(
        net.iptables_rules().is_empty(),
        "{:?}",
        net.iptables_rules()
    );
    assert!(
        fetch(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)).is_err(),
        "the host port still answers after removal"
    );
    assert_no_pods(&daemon);
    assert_network_released(net);
    daemon.assert_clean();
}

#[tokio::test]
async fn a_host_network_pod_gets_no_netns_and_no_cni() {
    let daemon = Daemon::start().await;
    let net = network(&daemon);
    let mut client = daemon.runtime().await;
    let mut cfg = config(&daemon, &unique("hostnet"));
    namespace_options(&mut cfg).network = NamespaceMode::Node as i32;
    cfg.port_mappings = vec![tcp_mapping(8080, host_port())];
    let id = run(&mut client, cfg).await;
    let st = status(&mut client, &id).await.expect("PodSandboxStatus");
    assert!(is_ready(&st));
    assert_eq!(st.status.as_ref().unwrap().network.as_ref().unwrap().ip, "");
    let i = info(&st);
    assert!(i["namespaces"]["network"].is_null(), "{i}");
    assert!(i["network"].is_null(), "{i}");
    assert!(net.allocated().is_empty(), "CNI ran: {:?}", net.allocated());
    assert!(net.iptables_rules().is_empty());

    // The node's names: its hostname, a copy of its hosts file.
    let node = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let dir = daemon.state_dir.join("pods").join(&id);
    assert_eq!(
        std::fs::read_to_string(dir.join("hostname")).unwrap(),
        format!("{node}\n")
    );
    assert_eq!(
        std::fs::read(dir.join("hosts")).unwrap(),
        std::fs::read("/etc/hosts").unwrap_or_default()
    );

    stop(&mut client, &id).await.unwrap();
    remove(&mut client, &id).await.unwrap();
    assert_no_pods(&daemon);
    daemon.assert_clean();
}

#[tokio::test]
async fn a_failing_plugin_fails_run_pod_sandbox_and_leaves_nothing() {
    let plugins = PluginDir::new();
    plugins.write(
        "ketch-e2e-refuse",
        "#!/bin/sh\ncat >/dev/null\n\
         if [ \"$CNI_COMMAND\" = ADD ]; then\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"refused by the test plugin\",\"details\":\"as asked\"}'\n\
         exit 1\nfi\nexit 0\n",
    );
    let daemon = Daemon::start_with(DaemonOptions {
        config_toml: plugins.config_toml(30),
        ..Default::default()
    })
    .await;
    let net = network(&daemon);
    // After the bridge and portmap: those have run and must be undone.
    net.write_plugins(&[
        net.bridge_plugin(),
        portmap(),
        json!({"type": "ketch-e2e-refuse"}),
    ]);
    let mut client = daemon.runtime().await;
    let mut cfg = config(&daemon, &unique("refused"));
    cfg.port_mappings = vec![tcp_mapping(80, host_port())];

    let err = try_run(&mut client, cfg.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    assert!(
        err.message()
            .contains("refused by the test plugin: as asked")
            && err.message().contains("ketch-e2e-refuse"),
        "{}",
        err.message()
    );
    assert!(list(&mut client, None).await.is_empty());
    assert_no_pods(&daemon);
    assert_network_released(net);

    // The name is free: with a working network the same pod runs.
    net.write_default();
    let id = run(&mut client, cfg).await;
    assert!(net.contains(&pod_ips(&mut client, &id).await[0]));
    remove(&mut client, &id).await.unwrap();
    assert_no_pods(&daemon);
    assert_network_released(net);
    daemon.assert_clean();
}

#[tokio::test]
async fn a_hanging_plugin_is_killed_and_leaves_nothing() {
    let plugins = PluginDir::new();
    let marks = plugins.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    plugins.write(
        "ketch-e2e-hang",
        &format!(
            "#!/bin/sh\ncat >/dev/null\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then\n\
             echo $$ > {dir}/plugin\n\
             sleep 1000 &\n\
             wait\nfi\nexit 0\n",
            dir = marks.display()
        ),
    );
    let daemon = Daemon::start_with(DaemonOptions {
        config_toml: plugins.config_toml(2),
        ..Default::default()
    })
    .await;
    let net = network(&daemon);
    net.write_plugins(&[
        net.bridge_plugin(),
        portmap(),
        json!({"type": "ketch-e2e-hang"}),
    ]);
    let mut client = daemon.runtime().await;
    let mut cfg = config(&daemon, &unique("hang"));
    cfg.port_mappings = vec![tcp_mapping(80, host_port())];

    let started = Instant::now();
    let err = try_run(&mut client, cfg.clone()).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    assert!(
        err.message().contains("ketch-e2e-hang") && err.message().contains("timed out"),
        "{}",
        err.message()
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}"
    );
    let plugin_pid = std::fs::read_to_string(marks.join("plugin")).unwrap();
    assert!(
        !Path::new("/proc").join(plugin_pid.trim()).exists(),
        "the plugin was not reaped"
    );
    assert!(list(&mut client, None).await.is_empty());
    assert_no_pods(&daemon);
    assert_network_released(net);

    net.write_default();
    let id = run(&mut client, cfg).await;
    remove(&mut client, &id).await.unwrap();
    assert_no_pods(&daemon);
    assert_network_released(net);
    daemon.assert_clean();
}

#[tokio::test]
async fn a_run_pod_sandbox_the_caller_gives_up_on_still_completes() {
    let plugins = PluginDir::new();
    plugins.write(
        "ketch-e2e-slow",
        "#!/bin/sh\ncat >/dev/null\n\
         if [ \"$CNI_COMMAND\" = ADD ]; then sleep 2\n\
         echo '{\"cniVersion\":\"1.0.0\",\"interfaces\":[],\"ips\":[]}'; fi\nexit 0\n",
    );
    let daemon = Daemon::start_with(DaemonOptions {
        config_toml: plugins.config_toml(30),
        ..Default::default()
    })
    .await;
    let net = network(&daemon);
    net.write_plugins(&[json!({"type": "ketch-e2e-slow"}), net.bridge_plugin()]);
    let mut client = daemon.runtime().await;
    let cfg = config(&daemon, &unique("impatient"));
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        try_run(&mut client, cfg.clone()),
    )
    .await;
    assert!(gave_up.is_err(), "RunPodSandbox returned too early");

    // The pod is made all the same, and listed ready for the retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let pods = list(&mut client, None).await;
        if let Some(p) = pods
            .iter()
            .find(|p| p.state == PodSandboxState::SandboxReady as i32)
        {
            break p.id.clone();
        }
        assert!(Instant::now() < deadline, "the pod never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(net.contains(&pod_ips(&mut client, &id).await[0]));
    let err = try_run(&mut client, cfg).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    remove(&mut client, &id).await.unwrap();
    assert_no_pods(&daemon);
    assert_network_released(net);
    daemon.assert_clean();
}

/// A plugin that records what it is given (env and stdin per command in
/// `dir`), passes ADD with an empty result, and fails DEL while
/// `dir/fail-del` exists.
fn recorder_script(dir: &Path) -> String {
    format!(
        "#!/bin/sh\nin=$(cat)\n\
         case \"$CNI_COMMAND\" in\n\
         ADD) printf '%s' \"$in\" > {d}/add.json; env > {d}/add.env\n\
              echo '{{\"cniVersion\":\"1.0.0\",\"interfaces\":[],\"ips\":[]}}' ;;\n\
         DEL) printf '%s' \"$in\" > {d}/del.json; env > {d}/del.env\n\
              if [ -e {d}/fail-del ]; then\n\
              echo '{{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"DEL refused\",\"details\":\"by the test\"}}'\n\
              exit 1; fi ;;\n\
         esac\nexit 0\n",
        d = dir.display()
    )
}

#[tokio::test]
async fn plugins_get_the_pod_and_a_failing_del_never_keeps_a_pod() {
    let plugins = PluginDir::new();
    let marks = plugins.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    plugins.write("ketch-e2e-record", &recorder_script(&marks));
    let daemon = Daemon::start_with(DaemonOptions {
        config_toml: plugins.config_toml(30),
        ..Default::default()
    })
    .await;
    let net = network(&daemon);
    net.write_plugins(&[
        json!({"type": "ketch-e2e-record", "capabilities": {
            "portMappings": true, "dns": true, "bandwidth": true,
            "io.kubernetes.cri.pod-annotations": true, "cgroupPath": true
        }}),
        net.bridge_plugin(),
        portmap(),
    ]);
    let mut client = daemon.runtime().await;
    let port = host_port();
    let mut cfg = config(&daemon, &unique("recorded"));
    cfg.port_mappings = vec![tcp_mapping(8080, port)];
    cfg.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["svc.cluster.local".into()],
        options: vec![],
    });
    cfg.annotations
        .insert("kubernetes.io/ingress-bandwidth".into(), "10M".into());
    cfg.linux.as_mut().unwrap().cgroup_parent = "/kubepods/besteffort".into();
    let meta = cfg.metadata.clone().unwrap();
    let id = run(&mut client, cfg).await;
    let pin = netns_pin(&mut client, &id).await;
    let ip = pod_ips(&mut client, &id).await.remove(0);

    let env = std::fs::read_to_string(marks.join("add.env")).unwrap();
    for line in [
        format!(
            "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};\
             K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={}",
            meta.namespace, meta.name, meta.uid
        ),
        format!("CNI_CONTAINERID={id}"),
        format!("CNI_NETNS={pin}"),
        "CNI_IFNAME=eth0".into(),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    }
    let stdin: Value =
        serde_json::from_str(&std::fs::read_to_string(marks.join("add.json")).unwrap()).unwrap();
    let rc = &stdin["runtimeConfig"];
    assert_eq!(
        rc["portMappings"],
        json!([{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}]),
        "{stdin}"
    );
    assert_eq!(rc["dns"]["servers"], json!(["10.96.0.10"]), "{stdin}");
    assert_eq!(rc["bandwidth"]["ingressRate"], json!(10_000_000), "{stdin}");
    assert_eq!(
        rc["io.kubernetes.cri.pod-annotations"]["kubernetes.io/ingress-bandwidth"],
        "10M"
    );
    assert_eq!(rc["cgroupPath"], "/kubepods/besteffort");

    // DEL fails from now on: Stop says so but releases the netns anyway,
    // and the other plugins' DEL still ran (IP, veth, rules gone).
    std::fs::write(marks.join("fail-del"), "").unwrap();
    let err = stop(&mut client, &id).await.unwrap_err();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    assert!(
        err.message().contains("DEL refused: by the test"),
        "{}",
        err.message()
    );
    assert!(!is_ready(
        &status(&mut client, &id).await.expect("PodSandboxStatus")
    ));
    let dir = daemon.state_dir.join("pods").join(&id);
    assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
    assert!(!Path::new(&pin).exists(), "netns pin left");
    assert_network_released(net);
    // The DEL had the ADD's result.
    let del: Value =
        serde_json::from_str(&std::fs::read_to_string(marks.join("del.json")).unwrap()).unwrap();
    assert!(
        del["prevResult"].to_string().contains(&ip),
        "DEL without the cached result: {del}"
    );

    // Remove retries DEL, which fails again, and removes the pod anyway.
    std::fs::remove_file(marks.join("del.json")).unwrap();
    remove(&mut client, &id).await.unwrap();
    assert!(marks.join("del.json").exists(), "Remove retried DEL");
    assert!(list(&mut client, None).await.is_empty());
    assert_no_pods(&daemon);
    assert_network_released(net);
    daemon.assert_clean();
}

#[tokio::test]
async fn the_network_survives_a_restart_and_del_after_it_releases_the_ip() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let port = host_port();
    let mut cfg = config(&daemon, &unique("survivor"));
    cfg.port_mappings = vec![tcp_mapping(8080, port)];
    let id = run(&mut client, cfg).await;
    // A second pod whose netns a "reboot" takes away.
    let gone = run(&mut client, config(&daemon, &unique("rebooted"))).await;
    let ip = pod_ips(&mut client, &id).await.remove(0);
    let gone_ip = pod_ips(&mut client, &gone).await.remove(0);
    let pin = netns_pin(&mut client, &id).await;
    drop(client);

    daemon.kill9();
    let gone_dir = daemon.state_dir.join("pods").join(&gone);
    let mut points = mounts_under(&gone_dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    daemon.restart().await;
    let net = network(&daemon);
    let mut client = daemon.runtime().await;

    assert!(is_ready(
        &status(&mut client, &id).await.expect("PodSandboxStatus")
    ));
    assert_eq!(pod_ips(&mut client, &id).await, vec![ip.clone()]);
    let server = serve_in_netns(&pin, 8080, 2);
    let hello = format!("hello from {pin}");
    assert_eq!(
        fetch(SocketAddr::new(ip.parse().unwrap(), 8080)).as_deref(),
        Ok(hello.as_str())
    );
    assert_eq!(
        fetch(SocketAddr::new(IpAddr::V4(net.gateway()), port)).as_deref(),
        Ok(hello.as_str())
    );
    server.join().unwrap();

    // The pod whose netns vanished: NOT READY, its IP still held until
    // Stop runs DEL with the cached result.
    assert!(!is_ready(
        &status(&mut client, &gone).await.expect("PodSandboxStatus")
    ));
    let held: Vec<String> = net.allocated().iter().map(|a| a.to_string()).collect();
    assert!(held.contains(&gone_ip), "{held:?}");
    stop(&mut client, &gone).await.unwrap();
    let held: Vec<String> = net.allocated().iter().map(|a| a.to_string()).collect();
    assert_eq!(held, vec![ip.clone()]);

    stop(&mut client, &id).await.unwrap();
    assert_network_released(net);
    for id in [&id, &gone] {
        remove(&mut client, id).await.unwrap();
    }
    assert_no_pods(&daemon);
    daemon.assert_clean();
}

#[tokio::test]
async fn a_crash_after_cni_add_is_torn_down_at_restart() {
    let mut daemon = Daemon::start().await;
    for point in [
        // ADD done, its result not persisted: DEL with the current config.
        "run-pod-after-cni-add",
        // Persisted: DEL with the cached result.
        "run-pod-after-network",
        "run-pod-before-ready",
    ] {
        let mut cfg = config(&daemon, &unique("crash"));
        cfg.port_mappings = vec![tcp_mapping(80, host_port())];
        crash_at(&mut daemon, point, cfg.clone()).await;
        {
            let net = network(&daemon);
            assert_eq!(net.allocated().len(), 1, "{point}: ADD ran");
            assert!(!net.iptables_rules().is_empty(), "{point}: portmap ran");
        }
        daemon.restart().await;
        let net = network(&daemon);
        let mut client = daemon.runtime().await;
        assert!(list(&mut client, None).await.is_empty(), "{point}");
        assert_no_pods(&daemon);
        assert_network_released(net);
        assert!(
            daemon
                .log()
                .contains("cleaning a pod whose creation was interrupted"),
            "{point}"
        );
        // The name is free again.
        let id = run(&mut client, cfg).await;
        remove(&mut client, &id).await.unwrap();
        assert_no_pods(&daemon);
        assert_network_released(net);
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn network_ready_follows_the_config_and_pods_need_it() {
    let daemon = Daemon::start_with(DaemonOptions {
        no_network: true,
        ..Default::default()
    })
    .await;
    let mut client = daemon.runtime().await;
    let network_ready = |st: StatusResponse| {
        st.status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "NetworkReady")
            .unwrap()
    };
    let cond = network_ready(
        client
            .status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner(),
    );
    let dir = daemon.cni_conf_dir.display().to_string();
    assert!(!cond.status && cond.message.contains(&dir), "{cond:?}");

    // A pod of its own network cannot run yet; a host-network pod can.
    let cfg = config(&daemon, &unique("waits"));
    let err = try_run(&mut client, cfg.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&dir), "{}", err.message());
    assert_no_pods(&daemon);
    let mut host = config(&daemon, &unique("hostnet"));
    namespace_options(&mut host).network = NamespaceMode::Node as i32;
    let host_id = run(&mut client, host).await;

    // A config dropped in later is used without a restart.
    let net = TestNetwork::new(&daemon.cni_conf_dir, daemon.dir.path().join("ipam"));
    net.write_default();
    let cond = network_ready(
        client
            .status(StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner(),
    );
    assert!(cond.status, "{cond:?}");
    let id = run(&mut client, cfg).await;
    assert!(net.contains(&pod_ips(&mut client, &id).await[0]));

    for id in [&id, &host_id] {
        remove(&mut client, id).await.unwrap();
    }
    assert_no_pods(&daemon);
    assert_network_released(&net);
    daemon.assert_clean();
}

#[tokio::test]
async fn update_runtime_config_renders_the_template_with_the_pod_cidr() {
    let base = tempfile::Builder::new()
        .prefix("tmpl-")
        .tempdir_in({
            std::fs::create_dir_all(E2E_BASE).unwrap();
            E2E_BASE
        })
        .unwrap();
    let template = base.path().join("template.conflist");
    let daemon = Daemon::start_with(DaemonOptions {
        no_network: true,
        config_toml: format!(
            "[cni]\nconf_template = {:?}\n",
            template.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    // The shipped template, on the test network's bridge and data dir.
    let net = TestNetwork::new(&daemon.cni_conf_dir, daemon.dir.path().join("ipam"));
    let shipped = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/cni/ketch-net.conflist.tmpl"),
    )
    .unwrap();
    let ours = shipped
        .replacen(
            "\"name\": \"ketch\"",
            &format!("\"name\": {:?}", net.name),
            1,
        )
        .replacen("\"ketch0\"", &format!("{:?}", net.bridge), 1)
        .replacen(
            "\"type\": \"host-local\",",
            &format!(
                "\"type\": \"host-local\", \"dataDir\": {:?},",
                net.data_dir.display().to_string()
            ),
            1,
        );
    assert!(
        ours.contains(&net.name) && ours.contains(&net.bridge) && ours.contains("dataDir"),
        "the shipped template changed shape: {shipped}"
    );
    std::fs::write(&template, ours).unwrap();

    let mut client = daemon.runtime().await;
    let update = |cidr: &str| UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.to_owned(),
            }),
        }),
    };
    let err = client
        .update_runtime_config(update("10.1.0.0/33"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("10.1.0.0/33"), "{}", err.message());
    // Nothing to do without a CIDR.
    client.update_runtime_config(update("")).await.unwrap();
    client
        .update_runtime_config(UpdateRuntimeConfigRequest::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read_dir(&daemon.cni_conf_dir).unwrap().count(), 0);

    client
        .update_runtime_config(update(&net.subnet()))
        .await
        .unwrap();
    let written = daemon.cni_conf_dir.join("10-ketch-net.conflist");
    let rendered: Value =
        serde_json::from_str(&std::fs::read_to_string(&written).unwrap()).unwrap();
    assert_eq!(
        rendered["plugins"][0]["ipam"]["ranges"],
        json!([[{"subnet": net.subnet()}]])
    );
    assert_eq!(
        rendered["plugins"][0]["ipam"]["routes"],
        json!([{"dst": "0.0.0.0/0"}])
    );
    let id = run(&mut client, config(&daemon, &unique("cidr"))).await;
    assert!(net.contains(&pod_ips(&mut client, &id).await[0]));

    remove(&mut client, &id).await.unwrap();
    assert_no_pods(&daemon);
    assert_network_released(&net);
    daemon.assert_clean();
}

#[tokio::test]
async fn bandwidth_annotations_shape_the_pod_and_bad_ones_are_refused() {
    let daemon = Daemon::start().await;
    let net = network(&daemon);
    net.write_plugins(&[
        net.bridge_plugin(),
        json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
    ]);
    let mut client = daemon.runtime().await;

    let mut bad = config(&daemon, &unique("bad-bw"));
    bad.annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "fast".into());
    let err = try_run(&mut client, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("kubernetes.io/egress-bandwidth"),
        "{}",
        err.message()
    );
    assert_no_pods(&daemon);

    let mut cfg = config(&daemon, &unique("bw"));
    cfg.annotations
        .insert("kubernetes.io/ingress-bandwidth".into(), "10M".into());
    let id = run(&mut client, cfg).await;
    let st = status(&mut client, &id).await.expect("PodSandboxStatus");
    let result = &info(&st)["network"]["result"]["result"];
    let veth = result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["sandbox"].is_null())
        .filter_map(|i| i["name"].as_str())
        .find(|n| n.starts_with("veth"))
        .unwrap_or_else(|| panic!("no host veth in {result}"))
        .to_owned();
    let (_, qdisc) = sh("tc", &["qdisc", "show", "dev", &veth]);
    assert!(qdisc.contains("rate 10Mbit"), "{qdisc}");

    remove(&mut client, &id).await.unwrap();
    assert_no_pods(&daemon);
    assert_network_released(net);
    daemon.assert_clean();
}

/// The config `make run` installs, on this test's bridge and subnet.
fn shipped_config(net: &TestNetwork) -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/cni/10-ketch-bridge.conflist");
    let mut conf: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    conf["name"] = json!(net.name);
    let bridge = &mut conf["plugins"][0];
    assert_eq!(bridge["type"], "bridge");
    let subnet = bridge["ipam"]["ranges"][0][0]["subnet"]
        .as_str()
        .unwrap()
        .parse::<ipnet::Ipv4Net>()
        .unwrap();
    assert!(
        subnet.addr().is_private() && subnet.prefix_len() >= 16,
        "{subnet}"
    );
    bridge["bridge"] = json!(net.bridge);
    bridge["ipam"]["ranges"] = json!([[{"subnet": net.subnet()}]]);
    bridge["ipam"]["dataDir"] = json!(net.data_dir);
    conf
}

#[tokio::test]
async fn the_shipped_bridge_config_works() {
    let daemon = Daemon::start().await;
    let net = network(&daemon);
    let conf = shipped_config(net);
    std::fs::write(
        net.conf_dir.join(crate::harness::net::CONF_FILE),
        conf.to_string(),
    )
    .unwrap();
    let mut client = daemon.runtime().await;
    let port = host_port();
    let mut cfg = config(&daemon, &unique("shipped"));
    cfg.port_mappings = vec![tcp_mapping(8080, port)];
    let id = run(&mut client, cfg).await;
    let ip = pod_ips(&mut client, &id).await.remove(0);
    assert!(net.contains(&ip), "{ip}");
    let pin = netns_pin(&mut client, &id).await;
    let (ok, out) = ping(&pin, &net.gateway().to_string());
    assert!(ok, "{out}");
    // ipMasq: traffic leaving the subnet is masqueraded.
    assert!(
        net.iptables_rules()
            .iter()
            .any(|r| r.contains("MASQUERADE") || r.contains("-j CNI-")),
        "{:?}",
        net.iptables_rules()
    );
    let server = serve_in_netns(&pin, 8080, 1);
    assert_eq!(
        fetch(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)).as_deref(),
        Ok(format!("hello from {pin}").as_str())
    );
    server.join().unwrap();

    remove(&mut client, &id).await.unwrap();
    assert_no_pods(&daemon);
    assert_network_released(net);
    daemon.assert_clean();
}
