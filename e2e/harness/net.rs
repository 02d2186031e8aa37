//! A private CNI network for one test daemon: Debian's `bridge` plugin
//! with `host-local` IPAM and `portmap`, on a bridge and a /24 of its own,
//! so tests run in parallel (also beside other processes) without meeting.
//!
//! The subnet is `10.<100-250>.<0-255>.0/24`, one no route or address of
//! the host uses, reserved with a file under [`E2E_BASE`] so two test
//! processes never pick the same; the bridge is `ke` and 8 hex digits
//! (within IFNAMSIZ); host-local keeps its allocations in a directory of
//! the test. On drop the bridge is deleted and every iptables chain and
//! rule naming the network is removed (DEL should have done it; a failed
//! test may not have got that far). Addresses exist only on this host and
//! inside the tests' own network namespaces.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::daemon::E2E_BASE;

/// Where plugin binaries are on Debian.
pub const SYSTEM_PLUGINS: &str = "/usr/lib/cni";

/// The file name the network is written under in the conf dir.
pub const CONF_FILE: &str = "10-test.conflist";

pub struct TestNetwork {
    /// The CNI network name (unique: it names iptables rules too).
    pub name: String,
    pub bridge: String,
    /// The second and third octets of the subnet.
    pub octets: (u8, u8),
    /// host-local's `dataDir`.
    pub data_dir: PathBuf,
    pub conf_dir: PathBuf,
    reservation: PathBuf,
}

/// Runs a command; its success and its stdout and stderr together.
pub fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    match Command::new(cmd).args(args).output() {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run {cmd}: {e}")),
    }
}

impl TestNetwork {
    /// Picks and reserves a bridge and subnet; writes nothing yet.
    pub fn new(conf_dir: &Path, data_dir: PathBuf) -> Self {
        let reservations = Path::new(E2E_BASE).join("subnets");
        std::fs::create_dir_all(&reservations).expect("create subnet reservations dir");
        let (octets, reservation) = loop {
            let octets = (fastrand::u8(100..=250), fastrand::u8(..));
            let prefix = format!("10.{}.{}.", octets.0, octets.1);
            let (_, routes) = run("ip", &["-4", "route", "show", "table", "all"]);
            let (_, addrs) = run("ip", &["-4", "-o", "addr"]);
            if routes.contains(&prefix) || addrs.contains(&prefix) {
                continue;
            }
            let path = reservations.join(format!("10.{}.{}", octets.0, octets.1));
            if reserve(&path) {
                break (octets, path);
            }
        };
        let tag = format!("{:08x}", fastrand::u32(..));
        Self {
            name: format!("ketch-e2e-{tag}"),
            bridge: format!("ke{tag}"),
            octets,
            data_dir,
            conf_dir: conf_dir.to_owned(),
            reservation,
        }
    }

    pub fn subnet(&self) -> String {
        format!("10.{}.{}.0/24", self.octets.0, self.octets.1)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.octets.0, self.octets.1, 1)
    }

    /// Whether `ip` is in this network's subnet.
    pub fn contains(&self, ip: &str) -> bool {
        matches!(ip.parse::<IpAddr>(), Ok(IpAddr::V4(v4))
            if v4.octets()[..3] == [10, self.octets.0, self.octets.1] && v4 != self.gateway())
    }

    /// The bridge plugin with host-local IPAM on this network.
    pub fn bridge_plugin(&self) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.data_dir,
            }
        })
    }

    /// Writes the network with these plugins, replacing what was there.
    pub fn write_plugins(&self, plugins: &[Value]) {
        let conf = json!({"cniVersion": "1.0.0", "name": self.name, "plugins": plugins});
        let tmp = self.conf_dir.join(".conf.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&conf).expect("encode conflist"),
        )
        .expect("write CNI config");
        std::fs::rename(&tmp, self.conf_dir.join(CONF_FILE)).expect("rename CNI config");
    }

    /// Writes the usual network: bridge with host-local, then portmap.
    pub fn write_default(&self) {
        self.write_plugins(&[
            self.bridge_plugin(),
            json!({"type": "portmap", "capabilities": {"portMappings": true}}),
        ]);
    }

    /// Addresses host-local holds for this network.
    pub fn allocated(&self) -> Vec<IpAddr> {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join(&self.name)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    /// Interfaces enslaved to the bridge (the pods' host-side veths).
    pub fn bridge_ports(&self) -> Vec<String> {
        run("ip", &["-o", "link", "show", "master", &self.bridge])
            .1
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("does not exist"))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the bridge has no ports (the kernel frees a veth
    /// asynchronously once its netns is gone); the ports left if not.
    pub fn wait_no_ports(&self) -> Result<(), Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ports = self.bridge_ports();
            if ports.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ports);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether an iptables rule is this network's: it names the network
    /// (the name is unique, of fixed length) or an address of its subnet
    /// (portmap's per-pod chains carry no name, only addresses).
    fn is_ours(&self, rule: &str) -> bool {
        let prefix = format!("10.{}.{}.", self.octets.0, self.octets.1);
        rule.contains(&self.name)
            || rule
                .split([' ', '/', ':'])
                .any(|word| word.starts_with(&prefix))
    }

    /// The iptables rules (all tables) of this network, as DEL should
    /// leave none.
    pub fn iptables_rules(&self) -> Vec<String> {
        run("iptables-save", &[])
            .1
            .lines()
            .filter(|l| l.starts_with("-A ") && self.is_ours(l))
            .map(str::to_owned)
            .collect()
    }

    /// Removes every chain a rule of which is this network's, with the
    /// jumps to it, and its rules in shared chains, in the nat and filter
    /// tables.
    fn remove_iptables_leftovers(&self) {
        for table in ["nat", "filter"] {
            let (_, dump) = run("iptables-save", &["-t", table]);
            let mut chains = BTreeSet::new();
            let mut rules = Vec::new();
            for line in dump.lines() {
                let Some(rule) = line.strip_prefix("-A ") else {
                    continue;
                };
                let chain = rule.split(' ').next().unwrap_or_default().to_owned();
                if self.is_ours(line) {
                    if chain.starts_with("CNI-") && !chain.starts_with("CNI-HOSTPORT-") {
                        chains.insert(chain);
                    } else {
                        rules.push(rule.to_owned());
                    }
                }
            }
            // Jumps into the chains from anywhere.
            for line in dump.lines() {
                if let Some(rule) = line.strip_prefix("-A ")
                    && chains.iter().any(|c| rule.contains(&format!("-j {c}")))
                {
                    rules.push(rule.to_owned());
                }
            }
            for rule in rules {
                let args = split_rule(&rule);
                let mut all = vec!["-t", table, "-D"];
                all.extend(args.iter().map(String::as_str));
                run("iptables", &all);
            }
            for chain in chains {
                run("iptables", &["-t", table, "-F", &chain]);
                run("iptables", &["-t", table, "-X", &chain]);
            }
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        run("ip", &["link", "del", &self.bridge]);
        self.remove_iptables_leftovers();
        let _ = std::fs::remove_file(&self.reservation);
    }
}

/// Takes the reservation file at `path` (holding this process's ID); a
/// file left by a process that is gone is taken over.
fn reserve(path: &Path) -> bool {
    let me = std::process::id();
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(mut f) => {
                let _ = write!(f, "{me}");
                return true;
            }
            Err(_) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                let alive = holder
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if alive {
                    return false;
                }
                let _ = std::fs::remove_file(path);
            }
        }
    }
    false
}

/// Splits an iptables-save rule into arguments, keeping quoted comments
/// whole.
fn split_rule(rule: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = rule.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    args.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        args.push(current);
    }
    args
}
