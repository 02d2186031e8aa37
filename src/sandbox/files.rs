//! The pod's own files: `hostname`, `hosts`, `resolv.conf` (bind-mounted
//! into every container of the pod) and the shared `/dev/shm` tmpfs.

use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::error::{OsError, SandboxError};
use super::record::{DnsConfig, PodSandbox};
use crate::store::write_volatile;

/// Size of a pod's /dev/shm, as Docker, containerd and CRI-O give it.
pub const SHM_SIZE: u64 = 64 * 1024 * 1024;

/// The node's files a host-network pod (or a pod without DNS config)
/// copies. Replaceable for tests.
#[derive(Debug, Clone)]
pub struct HostFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

impl Default for HostFiles {
    fn default() -> Self {
        Self {
            hosts: PathBuf::from("/etc/hosts"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// `/etc/hosts` of a pod with its own network: the usual localhost entries
/// and the pod's hostname on its IPs (on 127.0.1.1, the Debian convention,
/// until the pod has an IP).
pub fn render_hosts(hostname: &str, ips: &[String]) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if ips.is_empty() {
        out.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    for ip in ips {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

/// `resolv.conf` from the CRI DNS config: `search`, then a `nameserver`
/// line per server, then `options`.
pub fn render_resolv_conf(dns: &DnsConfig) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for server in &dns.servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

/// Checks the DNS config before anything is made: every server an IP
/// address, no empty or blank-containing search domain or option (each
/// becomes one word of a resolv.conf line).
pub fn validate_dns(dns: &DnsConfig) -> Result<(), SandboxError> {
    for server in &dns.servers {
        if server.parse::<IpAddr>().is_err() {
            return Err(SandboxError::invalid(
                "dns_config.servers",
                format!("{server:?} is not an IP address"),
            ));
        }
    }
    for (field, words) in [
        ("dns_config.searches", &dns.searches),
        ("dns_config.options", &dns.options),
    ] {
        if let Some(bad) = words
            .iter()
            .find(|w| w.is_empty() || w.chars().any(|c| c.is_whitespace() || c == '\0'))
        {
            return Err(SandboxError::invalid(
                field,
                format!("{bad:?} is empty or contains blanks"),
            ));
        }
    }
    Ok(())
}

/// Checks a hostname sethostname(2) will take and a hosts file can hold.
pub fn validate_hostname(hostname: &str) -> Result<(), SandboxError> {
    // HOST_NAME_MAX on Linux.
    if hostname.len() > 64 {
        return Err(SandboxError::invalid(
            "hostname",
            format!("{hostname:?} is longer than 64 bytes"),
        ));
    }
    if hostname
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(SandboxError::invalid(
            "hostname",
            format!("{hostname:?} contains blanks, control characters or '/'"),
        ));
    }
    Ok(())
}

/// Makes a directory with `mode`; it must not exist yet.
pub fn make_dir(path: &Path, mode: u32) -> Result<(), OsError> {
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(OsError::with("create directory", path))
}

/// Mounts the pod's /dev/shm: a tmpfs of [`SHM_SIZE`], mode 1777,
/// nosuid, nodev, noexec.
pub fn mount_shm(path: &Path) -> Result<(), OsError> {
    make_dir(path, 0o755)?;
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={SHM_SIZE}").as_str()),
    )
    .map_err(OsError::with("mount the shm tmpfs on", path))
}

/// Writes `hostname`, `hosts` and `resolv.conf` of `pod`, atomically (in
/// the state directory: not durably).
pub fn write_pod_files(pod: &PodSandbox, host: &HostFiles) -> Result<(), OsError> {
    write_volatile(
        &pod.hostname_path(),
        format!("{}\n", pod.hostname).as_bytes(),
        0o644,
    )
    .map_err(from_atomic)?;

    let hosts = if pod.config.host_network() {
        // The node's names, as containerd and CRI-O give host-network pods.
        read_or_empty(&host.hosts)?
    } else {
        render_hosts(&pod.hostname, &pod.ips()).into_bytes()
    };
    write_volatile(&pod.hosts_path(), &hosts, 0o644).map_err(from_atomic)?;

    let resolv = match &pod.config.dns {
        Some(dns) => render_resolv_conf(dns).into_bytes(),
        None => read_or_empty(&host.resolv_conf)?,
    };
    write_volatile(&pod.resolv_conf_path(), &resolv, 0o644).map_err(from_atomic)
}

/// The content of a node file; a node without one gives an empty file.
fn read_or_empty(path: &Path) -> Result<Vec<u8>, OsError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "node file missing; the pod gets an empty copy");
            Ok(Vec::new())
        }
        Err(e) => Err(OsError::new("read", path, e)),
    }
}

fn from_atomic(e: crate::store::AtomicWriteError) -> OsError {
    OsError::new(e.op, e.path, e.source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_without_ip_maps_hostname_locally() {
        let hosts = render_hosts("web-1", &[]);
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains("::1\tlocalhost ip6-localhost ip6-loopback\n"));
        assert!(hosts.ends_with("127.0.1.1\tweb-1\n"));
    }

    #[test]
    fn hosts_with_ips_maps_hostname_on_each() {
        let hosts = render_hosts("web-1", &["10.88.0.5".into(), "fd00::5".into()]);
        assert!(hosts.contains("10.88.0.5\tweb-1\n"));
        assert!(hosts.contains("fd00::5\tweb-1\n"));
        assert!(!hosts.contains("127.0.1.1"));
    }

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into(), "fd00::a".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into(), "timeout:1".into()],
        };
        validate_dns(&dns).unwrap();
        assert_eq!(
            render_resolv_conf(&dns),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.96.0.10\n\
             nameserver fd00::a\n\
             options ndots:5 timeout:1\n"
        );
    }

    #[test]
    fn resolv_conf_with_servers_only() {
        let dns = DnsConfig {
            servers: vec!["1.1.1.1".into()],
            ..Default::default()
        };
        assert_eq!(render_resolv_conf(&dns), "nameserver 1.1.1.1\n");
    }

    #[test]
    fn bad_dns_config_is_named() {
        let dns = DnsConfig {
            servers: vec!["dns.example".into()],
            ..Default::default()
        };
        let e = validate_dns(&dns).unwrap_err().to_string();
        assert!(
            e.contains("dns_config.servers") && e.contains("dns.example"),
            "{e}"
        );
        let dns = DnsConfig {
            searches: vec!["a b".into()],
            ..Default::default()
        };
        let e = validate_dns(&dns).unwrap_err().to_string();
        assert!(e.contains("dns_config.searches"), "{e}");
    }

    #[test]
    fn hostname_checks() {
        validate_hostname("pod-1.example").unwrap();
        assert!(validate_hostname(&"a".repeat(65)).is_err());
        assert!(validate_hostname("a b").is_err());
        assert!(validate_hostname("a/b").is_err());
    }
}
