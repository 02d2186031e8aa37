//! Container and pod stats, and the metrics: figures checked against the
//! cgroup's own files, filters, errors, and the Prometheus endpoint's
//! counters moving with the calls made.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ketch::cri::api::*;

use crate::harness::DaemonOptions;
use crate::harness::cri::container_config;
use crate::harness::env::Env;

/// The cgroup files of a container, on v1 (per controller) or v2.
struct CgroupFiles {
    cpu_usage: PathBuf,
    memory_usage: PathBuf,
    memory_stat: PathBuf,
    v2: bool,
}

impl CgroupFiles {
    fn of(cgroup_path: &str) -> Self {
        let rel = cgroup_path.trim_start_matches('/');
        let v1 = PathBuf::from("/sys/fs/cgroup/memory");
        if v1.is_dir() {
            CgroupFiles {
                cpu_usage: PathBuf::from("/sys/fs/cgroup/cpuacct")
                    .join(rel)
                    .join("cpuacct.usage"),
                memory_usage: v1.join(rel).join("memory.usage_in_bytes"),
                memory_stat: v1.join(rel).join("memory.stat"),
                v2: false,
            }
        } else {
            let dir = PathBuf::from("/sys/fs/cgroup").join(rel);
            CgroupFiles {
                cpu_usage: dir.join("cpu.stat"),
                memory_usage: dir.join("memory.current"),
                memory_stat: dir.join("memory.stat"),
                v2: true,
            }
        }
    }

    fn key(text: &str, key: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn cpu_nanos(&self) -> u64 {
        let text = std::fs::read_to_string(&self.cpu_usage).unwrap();
        if self.v2 {
            Self::key(&text, "usage_usec") * 1000
        } else {
            text.trim().parse().unwrap()
        }
    }

    /// (usage, working set) as kubelet computes it.
    fn memory(&self) -> (u64, u64) {
        let usage: u64 = std::fs::read_to_string(&self.memory_usage)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stat = std::fs::read_to_string(&self.memory_stat).unwrap();
        let inactive = if self.v2 {
            Self::key(&stat, "inactive_file")
        } else {
            Self::key(&stat, "total_inactive_file")
        };
        (usage, usage.saturating_sub(inactive))
    }
}

fn within(what: &str, got: u64, want: u64, tolerance: f64) {
    let diff = (got as f64 - want as f64).abs();
    assert!(
        diff <= want as f64 * tolerance,
        "{what}: ketch says {got}, the cgroup {want} (more than {}% apart)",
        tolerance * 100.0
    );
}

async fn cgroup_path(env: &mut Env, id: &str) -> String {
    let info = env.verbose_info(id).await;
    info["cgroupPath"].as_str().unwrap().to_owned()
}

async fn stats(env: &mut Env, id: &str) -> ContainerStats {
    env.rt
        .container_stats(ContainerStatsRequest {
            container_id: id.to_owned(),
        })
        .await
        .expect("container stats")
        .into_inner()
        .stats
        .expect("stats set")
}

/// Waits until `path` exists in the container (the command's step done).
async fn wait_for_file(env: &mut Env, id: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = env.exec(id, &["test", "-e", path], 5).await.unwrap();
        if r.exit_code == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never appeared in {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn stats_of_a_busy_and_a_holding_container_match_their_cgroups() {
    let mut env = Env::start().await;
    let pod = env.run_pod("stats").await;
    let busy = env
        .run_container(
            &pod,
            container_config("busy", &env.busybox(), &["sh", "-c", "while :; do :; done"]),
        )
        .await;
    // 1 MiB on the writable layer, then 32 MiB held by the shell (which
    // must not exec its last command, hence the echo).
    let script = "head -c 1048576 /dev/urandom > /written; \
                  x=$(head -c 33554432 /dev/zero | tr '\\0' a); touch /ready; sleep 1000; echo ${#x}";
    let holder = env
        .run_container(
            &pod,
            container_config("holder", &env.busybox(), &["sh", "-c", script]),
        )
        .await;
    wait_for_file(&mut env, &holder, "/ready").await;

    // CPU: the cumulative figure and the rate over a window.
    let busy_files = CgroupFiles::of(&cgroup_path(&mut env, &busy).await);
    let first = stats(&mut env, &busy).await;
    let (t0, f0) = (Instant::now(), busy_files.cpu_nanos());
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let second = stats(&mut env, &busy).await;
    let (t1, f1) = (Instant::now(), busy_files.cpu_nanos());
    let cpu = second.cpu.expect("cpu");
    let usage = cpu.usage_core_nano_seconds.expect("usage").value;
    within("cpu usage", usage, f1, 0.10);
    let rate = cpu
        .usage_nano_cores
        .expect("a rate from the previous sample")
        .value;
    let want_rate = ((f1 - f0) as f64 / (t1 - t0).as_secs_f64()) as u64;
    within("cpu rate", rate, want_rate, 0.10);
    assert!(
        rate > 50_000_000,
        "a busy loop uses more than 5% of a core: {rate}"
    );
    assert!(first.cpu.unwrap().timestamp < cpu.timestamp);

    // Memory and the writable layer.
    let holder_files = CgroupFiles::of(&cgroup_path(&mut env, &holder).await);
    let s = stats(&mut env, &holder).await;
    let (usage, working_set) = holder_files.memory();
    let memory = s.memory.expect("memory");
    within(
        "memory usage",
        memory.usage_bytes.unwrap().value,
        usage,
        0.10,
    );
    within(
        "working set",
        memory.working_set_bytes.unwrap().value,
        working_set,
        0.10,
    );
    assert!(
        memory.working_set_bytes.unwrap().value >= 32 * MIB,
        "{memory:?}"
    );
    assert!(memory.rss_bytes.unwrap().value >= 32 * MIB);
    let layer = s.writable_layer.expect("writable layer");
    assert!(layer.used_bytes.unwrap().value >= MIB, "{layer:?}");
    assert!(layer.inodes_used.unwrap().value >= 2, "{layer:?}");
    assert_eq!(s.attributes.unwrap().metadata.unwrap().name, "holder");

    // The pod: its containers, its interfaces, its processes.
    let pod_stats = env
        .rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: pod.0.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pod_stats.linux.unwrap();
    assert_eq!(linux.containers.len(), 2);
    let pod_ws = linux.memory.unwrap().working_set_bytes.unwrap().value;
    assert!(pod_ws >= 32 * MIB, "pod working set {pod_ws}");
    let network = linux.network.expect("the pod's network");
    let eth0 = network.default_interface.expect("eth0");
    assert_eq!(eth0.name, "eth0");
    assert!(network.interfaces.iter().all(|i| i.name != "lo"));
    let procs = linux.process.unwrap().process_count.unwrap().value;
    assert!(procs >= 3, "busy loop, shell, sleep: {procs}");

    // ListPodSandboxStats by ID and by label.
    for filter in [
        PodSandboxStatsFilter {
            id: pod.0.clone(),
            ..Default::default()
        },
        PodSandboxStatsFilter {
            label_selector: pod.1.labels.clone().into_iter().collect(),
            ..Default::default()
        },
    ] {
        let listed = env
            .rt
            .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
                filter: Some(filter),
            })
            .await
            .unwrap()
            .into_inner()
            .stats;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].attributes.as_ref().unwrap().id, pod.0);
    }
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn list_container_stats_filters_and_errors() {
    let mut env = Env::start().await;
    let pod = env.run_pod("statsfilter").await;
    let other = env.run_pod("statsother").await;
    let a = env
        .run_container(
            &pod,
            container_config("a", &env.busybox(), &["sleep", "1000"]),
        )
        .await;
    let b = env
        .run_container(
            &other,
            container_config("b", &env.busybox(), &["sleep", "1000"]),
        )
        .await;
    let list = |filter: ContainerStatsFilter| {
        let mut rt = env.rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_container_stats(ListContainerStatsRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(ContainerStatsFilter::default()).await, both);
    let by_pod = ContainerStatsFilter {
        pod_sandbox_id: pod.0.clone(),
        ..Default::default()
    };
    assert_eq!(list(by_pod).await, vec![a.clone()]);
    let by_id = ContainerStatsFilter {
        id: b[..12].to_owned(),
        ..Default::default()
    };
    assert_eq!(list(by_id).await, vec![b.clone()]);
    let by_label = ContainerStatsFilter {
        label_selector: [("container".to_owned(), "a".to_owned())].into(),
        ..Default::default()
    };
    assert_eq!(list(by_label).await, vec![a.clone()]);
    let none = ContainerStatsFilter {
        label_selector: [("container".to_owned(), "zzz".to_owned())].into(),
        ..Default::default()
    };
    assert!(list(none).await.is_empty());

    // StreamContainerStats answers the same.
    let mut stream = env
        .rt
        .stream_container_stats(StreamContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        streamed.extend(
            reply
                .container_stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id),
        );
    }
    streamed.sort();
    assert_eq!(streamed, both);

    let empty = env
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument, "{empty}");
    assert!(empty.message().contains("container_id"), "{empty}");
    let unknown = env
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: "f".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown}");
    let no_pod = env
        .rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: "f".repeat(64),
        })
        .await
        .unwrap_err();
    assert_eq!(no_pod.code(), tonic::Code::NotFound, "{no_pod}");

    // The CRI metrics: descriptors, and values for each container.
    let descriptors = env
        .rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    assert!(
        descriptors
            .iter()
            .any(|d| d.name == "container_memory_working_set_bytes")
    );
    let metrics = env
        .rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let ours = metrics.iter().find(|m| m.pod_sandbox_id == pod.0).unwrap();
    let container = &ours.container_metrics[0];
    assert_eq!(container.container_id, a);
    // As kubelet turns them into Prometheus series: every value under its
    // descriptor's key, with cAdvisor's label names.
    let labels = |m: &Metric| -> HashMap<String, String> {
        let d = descriptors.iter().find(|d| d.name == m.name).unwrap();
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        d.label_keys
            .iter()
            .cloned()
            .zip(m.label_values.iter().cloned())
            .collect()
    };
    let pod_meta = pod.1.metadata.clone().unwrap();
    for m in &container.metrics {
        let l = labels(m);
        assert_eq!(l["container"], "a", "{}", m.name);
        assert_eq!(l["pod"], pod_meta.name, "{}", m.name);
        assert_eq!(l["namespace"], pod_meta.namespace, "{}", m.name);
        assert_eq!(l["id"], a, "{}", m.name);
    }
    let cpu = container
        .metrics
        .iter()
        .find(|m| m.name == "container_cpu_usage_seconds_total")
        .expect("cpu usage metric");
    assert_eq!(labels(cpu)["cpu"], "total");
    let rx = ours
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total")
        .unwrap_or_else(|| panic!("no network metric: {ours:?}"));
    let l = labels(rx);
    assert_eq!(l["interface"], "eth0");
    assert_eq!(l["pod"], pod_meta.name);
    assert_eq!(l["container"], "");

    env.remove_pod(&pod.0).await;
    env.remove_pod(&other.0).await;
    env.daemon.assert_clean();
}

/// The port of the metrics endpoint, from the daemon's start-up line.
fn metrics_port(log: &str) -> u16 {
    log.lines()
        .filter(|l| l.contains("serving Prometheus metrics"))
        .find_map(|l| {
            let addr = l.split("address=").nth(1)?.split_whitespace().next()?;
            addr.rsplit(':').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"))
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    out
}

/// The value of the first sample line starting with `prefix` (0 if none).
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_counters_move_with_the_calls_made() {
    // Port 0, then the port the daemon says it bound: a port picked
    // free beforehand may be taken by a parallel test meanwhile.
    let mut env = Env::start_with(DaemonOptions {
        config_toml: "[metrics]\nlisten = \"127.0.0.1:0\"\n".to_owned(),
        ..Default::default()
    })
    .await;
    let port = metrics_port(&env.daemon.log());
    let before = scrape(port);
    let list_count =
        "ketch_cri_request_duration_seconds_count{method=\"ListContainerStats\",code=\"Ok\"}";
    let not_found = "ketch_cri_request_errors_total{method=\"ContainerStats\",code=\"NotFound\"}";
    assert!(value(&before, "ketch_image_pulls_total") >= 1.0, "{before}");
    assert!(value(&before, "ketch_process_resident_memory_bytes") > 0.0);
    assert!(value(&before, "ketch_process_open_fds") > 0.0);

    for _ in 0..3 {
        env.rt
            .list_container_stats(ListContainerStatsRequest::default())
            .await
            .unwrap();
    }
    let _ = env
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: "f".repeat(64),
        })
        .await;
    let pod = env.run_pod("metrics").await;
    let id = env
        .run_container(&pod, container_config("done", &env.busybox(), &["true"]))
        .await;
    env.wait_exited(&id).await;
    // The exit is counted once the exit watch records it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let text = scrape(port);
        if value(&text, "ketch_container_exits_total{reason=\"Completed\"}") >= 1.0
            || Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        value(&after, list_count) - value(&before, list_count),
        3.0,
        "{after}"
    );
    assert_eq!(
        value(&after, not_found) - value(&before, not_found),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "ketch_container_starts_total"),
        1.0,
        "{after}"
    );
    assert_eq!(
        value(&after, "ketch_container_exits_total{reason=\"Completed\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(value(&after, "ketch_pods{state=\"ready\"}"), 1.0, "{after}");
    assert_eq!(
        value(&after, "ketch_containers{state=\"exited\"}"),
        1.0,
        "{after}"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}
