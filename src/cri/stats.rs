//! The stats and metrics RPCs of RuntimeService: ContainerStats,
//! ListContainerStats, PodSandboxStats, ListPodSandboxStats (what kubelet's
//! `/stats/summary` and eviction manager read), ListMetricDescriptors and
//! ListPodSandboxMetrics (kubelet's `/metrics/cadvisor` under the
//! `PodAndContainerStatsFromCRI` gate: cAdvisor's metric names and types,
//! label keys `id`, `name`, `image`, plus `interface` for the network).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::api as cri;
use tonic::Status;

use super::{CriService, require};
use crate::cgroups::Stats;
use crate::container::ContainerRecord;
use crate::container::stats::ContainerStats;
use crate::runtime::PodStats;
use crate::sandbox::PodFilter;
use crate::sandbox::stats::{DEFAULT_INTERFACE, InterfaceUsage};

pub(super) async fn container_stats(
    cri: &CriService,
    req: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, Status> {
    require("container_id", &req.container_id)?;
    let (record, stats) = cri.runtime.containers().stats(&req.container_id).await?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(to_container_stats(
            &record,
            &stats,
            &cri.runtime.config().root_dir,
        )),
    })
}

pub(super) async fn list_container_stats(
    cri: &CriService,
    req: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let filter = super::containers::container_filter(
        cri,
        filter.id,
        &filter.pod_sandbox_id,
        None,
        filter.label_selector,
    );
    let root = &cri.runtime.config().root_dir;
    let stats = cri
        .runtime
        .containers()
        .stats_list(&filter)
        .await?
        .iter()
        .map(|(record, stats)| to_container_stats(record, stats, root))
        .collect();
    Ok(cri::ListContainerStatsResponse { stats })
}

pub(super) async fn pod_sandbox_stats(
    cri: &CriService,
    req: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, Status> {
    require("pod_sandbox_id", &req.pod_sandbox_id)?;
    let pod = cri.runtime.sandboxes().get(&req.pod_sandbox_id)?;
    let stats = cri.runtime.pod_stats(vec![pod]).await?;
    let root = &cri.runtime.config().root_dir;
    Ok(cri::PodSandboxStatsResponse {
        stats: stats.first().map(|s| to_pod_stats(s, root)),
    })
}

pub(super) async fn list_pod_sandbox_stats(
    cri: &CriService,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    let filter = PodFilter {
        id: (!filter.id.is_empty()).then_some(filter.id),
        state: None,
        labels: filter.label_selector.into_iter().collect(),
    };
    let pods = cri.runtime.sandboxes().list(&filter);
    let root = &cri.runtime.config().root_dir;
    let stats = cri
        .runtime
        .pod_stats(pods)
        .await?
        .iter()
        .map(|s| to_pod_stats(s, root))
        .collect();
    Ok(cri::ListPodSandboxStatsResponse { stats })
}

pub(super) async fn list_metric_descriptors(
    _cri: &CriService,
    _req: cri::ListMetricDescriptorsRequest,
) -> Result<cri::ListMetricDescriptorsResponse, Status> {
    let descriptors = METRICS
        .iter()
        .map(|m| cri::MetricDescriptor {
            name: m.name.to_owned(),
            help: m.help.to_owned(),
            label_keys: m.label_keys(),
        })
        .collect();
    Ok(cri::ListMetricDescriptorsResponse { descriptors })
}

pub(super) async fn list_pod_sandbox_metrics(
    cri: &CriService,
    _req: cri::ListPodSandboxMetricsRequest,
) -> Result<cri::ListPodSandboxMetricsResponse, Status> {
    let pods = cri.runtime.sandboxes().list(&PodFilter::default());
    let pod_metrics = cri
        .runtime
        .pod_stats(pods)
        .await?
        .iter()
        .map(pod_metrics)
        .collect();
    Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
}

fn u64v(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn cpu_usage(stats: &Stats, nano_cores: Option<u64>) -> Option<cri::CpuUsage> {
    let cpu = stats.cpu.as_ref()?;
    Some(cri::CpuUsage {
        timestamp: stats.timestamp_nanos(),
        usage_core_nano_seconds: u64v(cpu.usage_nanos),
        usage_nano_cores: nano_cores.and_then(u64v),
        psi: psi(stats.pressure.cpu.as_ref()),
    })
}

fn memory_usage(stats: &Stats) -> Option<cri::MemoryUsage> {
    let m = stats.memory.as_ref()?;
    Some(cri::MemoryUsage {
        timestamp: stats.timestamp_nanos(),
        working_set_bytes: u64v(m.working_set_bytes),
        available_bytes: m.available_bytes().and_then(u64v),
        usage_bytes: u64v(m.usage_bytes),
        rss_bytes: u64v(m.rss_bytes),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
        psi: psi(stats.pressure.memory.as_ref()),
    })
}

/// The CRI's IO usage: its PSI, the only figure it has.
fn io_usage(stats: &Stats) -> Option<cri::IoUsage> {
    Some(cri::IoUsage {
        timestamp: stats.timestamp_nanos(),
        psi: Some(psi(stats.pressure.io.as_ref())?),
    })
}

/// A `*.pressure` file as the CRI has it: averages in percent, the total
/// in nanoseconds (the kernel's is in microseconds).
fn psi(p: Option<&crate::cgroups::stats::Psi>) -> Option<cri::PsiStats> {
    let data = |l: &crate::cgroups::stats::PsiLine| cri::PsiData {
        total: l.total_micros.saturating_mul(1000),
        avg10: f64::from(l.avg10_centi) / 100.0,
        avg60: f64::from(l.avg60_centi) / 100.0,
        avg300: f64::from(l.avg300_centi) / 100.0,
    };
    let p = p?;
    Some(cri::PsiStats {
        some: Some(data(&p.some)),
        full: p.full.as_ref().map(data),
    })
}

fn to_container_stats(
    record: &ContainerRecord,
    stats: &ContainerStats,
    root: &Path,
) -> cri::ContainerStats {
    let cgroup = stats.cgroup.as_ref();
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: record.config.name.clone(),
                attempt: record.config.attempt,
            }),
            labels: map(&record.config.labels),
            annotations: map(&record.config.annotations),
        }),
        cpu: cgroup.and_then(|s| cpu_usage(s, stats.usage_nano_cores)),
        memory: cgroup.and_then(memory_usage),
        writable_layer: stats.writable_layer.map(|l| cri::FilesystemUsage {
            timestamp: l.at,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: root.display().to_string(),
            }),
            used_bytes: u64v(l.bytes),
            inodes_used: u64v(l.inodes),
        }),
        swap: cgroup.and_then(|s| {
            let m = s.memory.as_ref()?;
            Some(cri::SwapUsage {
                timestamp: s.timestamp_nanos(),
                swap_available_bytes: None,
                swap_usage_bytes: u64v(m.swap_usage_bytes.unwrap_or(0)),
            })
        }),
        io: cgroup.and_then(io_usage),
    }
}

fn interface(i: &InterfaceUsage) -> cri::NetworkInterfaceUsage {
    cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(i.rx_bytes),
        rx_errors: u64v(i.rx_errors),
        tx_bytes: u64v(i.tx_bytes),
        tx_errors: u64v(i.tx_errors),
    }
}

fn to_pod_stats(s: &PodStats, root: &Path) -> cri::PodSandboxStats {
    let pod = &s.pod;
    let m = &pod.config.metadata;
    let now = crate::clock::now_unix_nanos();
    let cgroup = s.cgroup.as_ref();
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: m.name.clone(),
                uid: m.uid.clone(),
                namespace: m.namespace.clone(),
                attempt: m.attempt,
            }),
            labels: map(&pod.config.labels),
            annotations: map(&pod.config.annotations),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: cgroup.and_then(|c| cpu_usage(c, s.usage_nano_cores)),
            memory: cgroup.and_then(memory_usage),
            network: s.network.as_ref().map(|ifaces| cri::NetworkUsage {
                timestamp: now,
                default_interface: ifaces
                    .iter()
                    .find(|i| i.name == DEFAULT_INTERFACE)
                    .map(interface),
                interfaces: ifaces.iter().map(interface).collect(),
            }),
            process: cgroup.and_then(|c| {
                Some(cri::ProcessUsage {
                    timestamp: c.timestamp_nanos(),
                    process_count: u64v(c.pids.as_ref()?.current),
                })
            }),
            containers: s
                .containers
                .iter()
                .map(|(r, c)| to_container_stats(r, c, root))
                .collect(),
            io: cgroup.and_then(io_usage),
        }),
        windows: None,
    }
}

/// Whose figures a metric carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Container,
    Interface,
}

struct MetricDef {
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    source: Source,
    /// Labels of a fixed value after the source's own, as cAdvisor has
    /// them (`cpu="total"` on the CPU usage counter).
    fixed_labels: &'static [(&'static str, &'static str)],
}

const fn def(
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    source: Source,
) -> MetricDef {
    MetricDef {
        name,
        help,
        kind,
        source,
        fixed_labels: &[],
    }
}

impl MetricDef {
    fn label_keys(&self) -> Vec<String> {
        label_keys(self.source)
            .iter()
            .chain(self.fixed_labels.iter().map(|(k, _)| k))
            .map(|k| (*k).to_owned())
            .collect()
    }
}

use cri::MetricType::{Counter, Gauge};

/// cAdvisor's names, help and types (`container_*`), the subset ketch's
/// samples carry.
const METRICS: &[MetricDef] = &[
    MetricDef {
        fixed_labels: &[("cpu", "total")],
        ..def(
            "container_cpu_usage_seconds_total",
            "Cumulative cpu time consumed in seconds.",
            Counter,
            Source::Container,
        )
    },
    def(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        Counter,
        Source::Container,
    ),
    def(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        Counter,
        Source::Container,
    ),
    def(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        Gauge,
        Source::Container,
    ),
    def(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        Gauge,
        Source::Container,
    ),
    def(
        "container_memory_rss",
        "Size of RSS in bytes.",
        Gauge,
        Source::Container,
    ),
    def(
        "container_memory_swap",
        "Container swap usage in bytes.",
        Gauge,
        Source::Container,
    ),
    def(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        Gauge,
        Source::Container,
    ),
    def(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        Gauge,
        Source::Container,
    ),
    def(
        "container_fs_inodes_total",
        "Number of Inodes",
        Gauge,
        Source::Container,
    ),
    def(
        "container_processes",
        "Number of processes running inside the container.",
        Gauge,
        Source::Container,
    ),
    def(
        "container_last_seen",
        "Last time a container was seen by the exporter",
        Gauge,
        Source::Container,
    ),
    def(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        Counter,
        Source::Interface,
    ),
    def(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        Counter,
        Source::Interface,
    ),
    def(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        Counter,
        Source::Interface,
    ),
    def(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        Counter,
        Source::Interface,
    ),
];

/// cAdvisor's label set, so that queries written for kubelet's cAdvisor
/// metrics (`{namespace=…, pod=…, container=…}`) work on these: the
/// Kubernetes names of the container, pod and namespace; `id` and `name`
/// the container's (the pod's for its interfaces, whose `container` is
/// empty, as cAdvisor reports a pod's network); `image` the image it runs.
/// Their values come from [`LabelValues::of`] in this order.
fn label_keys(source: Source) -> &'static [&'static str] {
    match source {
        Source::Container => &["container", "id", "image", "name", "namespace", "pod"],
        Source::Interface => &[
            "container",
            "id",
            "image",
            "name",
            "namespace",
            "pod",
            "interface",
        ],
    }
}

/// The values of [`label_keys`] for one sample.
struct LabelValues<'a> {
    container: &'a str,
    id: &'a str,
    image: &'a str,
    name: &'a str,
    pod: &'a PodStats,
    interface: Option<&'a str>,
}

impl LabelValues<'_> {
    fn of(&self, def: &MetricDef) -> Vec<String> {
        let meta = &self.pod.pod.config.metadata;
        let mut values: Vec<String> = [
            self.container,
            self.id,
            self.image,
            self.name,
            meta.namespace.as_str(),
            meta.name.as_str(),
        ]
        .iter()
        .chain(self.interface.iter())
        .map(|v| (*v).to_owned())
        .collect();
        values.extend(def.fixed_labels.iter().map(|(_, v)| (*v).to_owned()));
        values
    }
}

/// The value of a container metric, when the sample has it.
fn container_value(name: &str, stats: &ContainerStats) -> Option<u64> {
    let c = stats.cgroup.as_ref();
    let cpu = c.and_then(|c| c.cpu.as_ref());
    let mem = c.and_then(|c| c.memory.as_ref());
    let secs = |n: u64| n / 1_000_000_000;
    match name {
        "container_cpu_usage_seconds_total" => cpu.map(|c| secs(c.usage_nanos)),
        "container_cpu_user_seconds_total" => cpu.and_then(|c| c.user_nanos).map(secs),
        "container_cpu_system_seconds_total" => cpu.and_then(|c| c.system_nanos).map(secs),
        "container_memory_usage_bytes" => mem.map(|m| m.usage_bytes),
        "container_memory_working_set_bytes" => mem.map(|m| m.working_set_bytes),
        "container_memory_rss" => mem.map(|m| m.rss_bytes),
        "container_memory_swap" => mem.and_then(|m| m.swap_usage_bytes),
        "container_spec_memory_limit_bytes" => mem.map(|m| m.limit_bytes.unwrap_or(0)),
        "container_fs_usage_bytes" => stats.writable_layer.map(|l| l.bytes),
        "container_fs_inodes_total" => stats.writable_layer.map(|l| l.inodes),
        "container_processes" => c.and_then(|c| c.pids.as_ref()).map(|p| p.current),
        "container_last_seen" => c.map(|c| secs(c.timestamp_nanos().max(0) as u64)),
        _ => None,
    }
}

fn interface_value(name: &str, i: &InterfaceUsage) -> Option<u64> {
    match name {
        "container_network_receive_bytes_total" => Some(i.rx_bytes),
        "container_network_receive_errors_total" => Some(i.rx_errors),
        "container_network_transmit_bytes_total" => Some(i.tx_bytes),
        "container_network_transmit_errors_total" => Some(i.tx_errors),
        _ => None,
    }
}

fn pod_metrics(s: &PodStats) -> cri::PodSandboxMetrics {
    let now = crate::clock::now_unix_nanos();
    let metric = |def: &MetricDef, labels: &LabelValues<'_>, value: u64| cri::Metric {
        name: def.name.to_owned(),
        timestamp: now,
        metric_type: def.kind as i32,
        label_values: labels.of(def),
        value: u64v(value),
    };
    let mut metrics = Vec::new();
    for def in METRICS.iter().filter(|d| d.source == Source::Interface) {
        for i in s.network.iter().flatten() {
            if let Some(v) = interface_value(def.name, i) {
                let labels = LabelValues {
                    container: "",
                    id: &s.pod.id,
                    image: "",
                    name: &s.pod.config.metadata.name,
                    pod: s,
                    interface: Some(&i.name),
                };
                metrics.push(metric(def, &labels, v));
            }
        }
    }
    let container_metrics = s
        .containers
        .iter()
        .map(|(record, stats)| cri::ContainerMetrics {
            container_id: record.id.clone(),
            metrics: METRICS
                .iter()
                .filter(|d| d.source == Source::Container)
                .filter_map(|def| {
                    let labels = LabelValues {
                        container: &record.config.name,
                        id: &record.id,
                        image: &record.image_ref,
                        name: &record.config.name,
                        pod: s,
                        interface: None,
                    };
                    Some(metric(def, &labels, container_value(def.name, stats)?))
                })
                .collect(),
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: s.pod.id.clone(),
        metrics,
        container_metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_a_value_source_and_a_unique_name() {
        let mut names = std::collections::HashSet::new();
        for def in METRICS {
            assert!(names.insert(def.name), "{} twice", def.name);
            assert!(def.name.starts_with("container_"), "{}", def.name);
            let empty = InterfaceUsage {
                name: "eth0".into(),
                rx_bytes: 1,
                rx_errors: 0,
                tx_bytes: 2,
                tx_errors: 0,
            };
            let known = match def.source {
                Source::Interface => interface_value(def.name, &empty).is_some(),
                Source::Container => {
                    // Every container metric's name is matched.
                    let stats = ContainerStats {
                        cgroup: None,
                        usage_nano_cores: None,
                        writable_layer: Some(crate::container::stats::LayerUsage {
                            bytes: 1,
                            inodes: 1,
                            at: 1,
                        }),
                    };
                    let _ = container_value(def.name, &stats);
                    [
                        "container_cpu_usage_seconds_total",
                        "container_cpu_user_seconds_total",
                        "container_cpu_system_seconds_total",
                        "container_memory_usage_bytes",
                        "container_memory_working_set_bytes",
                        "container_memory_rss",
                        "container_memory_swap",
                        "container_spec_memory_limit_bytes",
                        "container_fs_usage_bytes",
                        "container_fs_inodes_total",
                        "container_processes",
                        "container_last_seen",
                    ]
                    .contains(&def.name)
                }
            };
            assert!(known, "{} has no value", def.name);
        }
    }
}
