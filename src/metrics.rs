//! ketch's own Prometheus metrics, served on `/metrics` in the text format
//! when `metrics.listen` is set (off by default).
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client).
//! One registry per process, as Go's default registry: the counters are
//! bumped where things happen (a tower layer around the gRPC services for
//! every CRI call, the container event hub for starts, exits and OOM
//! kills, PullImage for pulls), and the gauges (pods and containers by
//! state, the process's memory and fds) are read when scraped.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::events::{ContainerEvent, EventKind};
use crate::runtime::Runtime;

type Labels = Vec<(&'static str, String)>;

/// Every metric ketch keeps.
pub struct Metrics {
    rpc_seconds: Family<Labels, Histogram>,
    rpc_errors: Family<Labels, Counter>,
    pulls: Counter,
    pull_bytes: Counter,
    pull_layers: Counter,
    pull_seconds: Histogram,
    container_starts: Counter,
    container_exits: Family<Labels, Counter>,
    oom_kills: Counter,
    streaming_sessions: Family<Labels, Counter>,
    pods: Family<Labels, Gauge>,
    containers: Family<Labels, Gauge>,
    resident_bytes: Gauge,
    open_fds: Gauge,
    event_subscribers: Gauge,
    registry: Registry,
}

impl Metrics {
    fn new() -> Self {
        let rpc_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let pull_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        let mut m = Self {
            rpc_seconds,
            rpc_errors: Family::default(),
            pulls: Counter::default(),
            pull_bytes: Counter::default(),
            pull_layers: Counter::default(),
            pull_seconds,
            container_starts: Counter::default(),
            container_exits: Family::default(),
            oom_kills: Counter::default(),
            streaming_sessions: Family::default(),
            pods: Family::default(),
            containers: Family::default(),
            resident_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            event_subscribers: Gauge::default(),
            registry: Registry::with_prefix("ketch"),
        };
        let r = &mut m.registry;
        r.register(
            "cri_request_duration_seconds",
            "Latency of CRI calls by method and gRPC code",
            m.rpc_seconds.clone(),
        );
        r.register(
            "cri_request_errors",
            "CRI calls that failed, by method and gRPC code",
            m.rpc_errors.clone(),
        );
        r.register("image_pulls", "Images pulled", m.pulls.clone());
        r.register(
            "image_pull_bytes",
            "Compressed bytes of the layers of pulled images",
            m.pull_bytes.clone(),
        );
        r.register(
            "image_pull_layers",
            "Layers of pulled images",
            m.pull_layers.clone(),
        );
        r.register(
            "image_pull_duration_seconds",
            "How long successful pulls took",
            m.pull_seconds.clone(),
        );
        r.register(
            "container_starts",
            "Containers started",
            m.container_starts.clone(),
        );
        r.register(
            "container_exits",
            "Containers that ended, by exit reason",
            m.container_exits.clone(),
        );
        r.register(
            "container_oom_kills",
            "Containers whose exit reason is OOMKilled",
            m.oom_kills.clone(),
        );
        r.register(
            "streaming_sessions",
            "Exec, attach and port-forward sessions handed out, by kind",
            m.streaming_sessions.clone(),
        );
        r.register("pods", "Pods by state", m.pods.clone());
        r.register("containers", "Containers by state", m.containers.clone());
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of the daemon",
            m.resident_bytes.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors of the daemon",
            m.open_fds.clone(),
        );
        r.register(
            "container_event_subscribers",
            "Clients of GetContainerEvents",
            m.event_subscribers.clone(),
        );
        m
    }

    /// Counts one CRI call.
    pub fn observe_rpc(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        let labels = vec![("method", method.to_owned()), ("code", format!("{code:?}"))];
        self.rpc_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if code != tonic::Code::Ok {
            self.rpc_errors.get_or_create(&labels).inc();
        } else if let Some(kind) = streaming_kind(method) {
            self.streaming_sessions
                .get_or_create(&vec![("kind", kind.to_owned())])
                .inc();
        }
    }

    /// Counts a successful pull.
    pub fn observe_pull(&self, bytes: u64, layers: usize, elapsed: Duration) {
        self.pulls.inc();
        self.pull_bytes.inc_by(bytes);
        self.pull_layers.inc_by(layers as u64);
        self.pull_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts starts, exits and OOM kills from the container events.
    pub fn observe_event(&self, event: &ContainerEvent) {
        match event.kind {
            EventKind::Started => {
                self.container_starts.inc();
            }
            EventKind::Stopped => {
                let reason = event.exit_reason.clone().unwrap_or_default();
                if reason == "OOMKilled" {
                    self.oom_kills.inc();
                }
                self.container_exits
                    .get_or_create(&vec![("reason", reason)])
                    .inc();
            }
            EventKind::Created | EventKind::Deleted => {}
        }
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, runtime: Option<&Runtime>) -> String {
        if let Some(runtime) = runtime {
            self.pods.clear();
            for pod in runtime.sandboxes().list(&Default::default()) {
                let state = if pod.is_ready() { "ready" } else { "notready" };
                self.pods
                    .get_or_create(&vec![("state", state.to_owned())])
                    .inc();
            }
            self.containers.clear();
            for c in runtime.containers().list(&Default::default()) {
                self.containers
                    .get_or_create(&vec![("state", state_label(c.state).to_owned())])
                    .inc();
            }
            self.event_subscribers
                .set(runtime.containers().events().subscribers() as i64);
        }
        if let Some(rss) = resident_bytes() {
            self.resident_bytes.set(rss as i64);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The metrics of this process.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn state_label(state: crate::container::state::State) -> &'static str {
    use crate::container::state::State;
    match state {
        State::Created => "created",
        State::Running => "running",
        State::Exited => "exited",
    }
}

fn streaming_kind(method: &str) -> Option<&'static str> {
    match method {
        "Exec" => Some("exec"),
        "Attach" => Some("attach"),
        "PortForward" => Some("portforward"),
        _ => None,
    }
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A tower layer timing every gRPC call, by method (the last part of the
/// path, `/runtime.v1.RuntimeService/ListContainerStats`) and code (the
/// response's `grpc-status` header, which tonic sets on every error; a
/// reply without it succeeded).
#[derive(Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService { inner }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    RB: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let start = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            get().observe_rpc(&method, code, start.elapsed());
            result
        })
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, runtime: Arc<Runtime>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let runtime = runtime.clone();
                    async move { Ok::<_, Infallible>(respond(req.uri().path(), &runtime)) }
                });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("metrics endpoint: connection: {e}");
            }
        });
    }
}

fn respond(path: &str, runtime: &Runtime) -> http::Response<Full<Bytes>> {
    let mut response = if path == "/metrics" {
        let mut r = http::Response::new(Full::new(Bytes::from(get().render(Some(runtime)))));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    } else {
        http::Response::new(Full::new(Bytes::from_static(b"not found: try /metrics\n")))
    };
    if path != "/metrics" {
        *response.status_mut() = http::StatusCode::NOT_FOUND;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_with_calls_and_events() {
        let m = Metrics::new();
        m.observe_rpc(
            "ListContainerStats",
            tonic::Code::Ok,
            Duration::from_millis(3),
        );
        m.observe_rpc(
            "ContainerStats",
            tonic::Code::NotFound,
            Duration::from_millis(1),
        );
        m.observe_rpc("Exec", tonic::Code::Ok, Duration::from_millis(1));
        m.observe_pull(1000, 3, Duration::from_secs(2));
        let event = |kind, reason: Option<&str>| ContainerEvent {
            kind,
            container_id: "c".into(),
            pod_id: "p".into(),
            at: 0,
            exit_reason: reason.map(Into::into),
        };
        m.observe_event(&event(EventKind::Started, None));
        m.observe_event(&event(EventKind::Stopped, Some("OOMKilled")));
        m.observe_event(&event(EventKind::Stopped, Some("Completed")));
        let text = m.render(None);
        for want in [
            "ketch_cri_request_duration_seconds_count{method=\"ListContainerStats\",code=\"Ok\"} 1",
            "ketch_cri_request_errors_total{method=\"ContainerStats\",code=\"NotFound\"} 1",
            "ketch_streaming_sessions_total{kind=\"exec\"} 1",
            "ketch_image_pulls_total 1",
            "ketch_image_pull_bytes_total 1000",
            "ketch_image_pull_layers_total 3",
            "ketch_container_starts_total 1",
            "ketch_container_oom_kills_total 1",
            "ketch_container_exits_total{reason=\"OOMKilled\"} 1",
            "ketch_container_exits_total{reason=\"Completed\"} 1",
            "ketch_process_open_fds ",
            "ketch_process_resident_memory_bytes ",
        ] {
            assert!(text.contains(want), "no {want:?} in\n{text}");
        }
    }

    #[test]
    fn vm_rss_in_bytes() {
        assert_eq!(
            parse_vm_rss("Name:\tketch\nVmRSS:\t  2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_vm_rss("Name:\tketch\n"), None);
    }
}
