//! The measurements: each phase drives one CRI endpoint through a scenario,
//! times every call on its own, and removes everything it made, also when a
//! step fails. A step that answers `Unimplemented` marks its metric n/a and
//! the metrics after it "needs <RPC>"; nothing crashes.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ketch::cri::api::*;
use tokio::task::JoinSet;

use crate::client::{Cri, OpError, ms, timed};
use crate::objects::{
    Made, Specs, container_state, ensure_image, image_present, log_file, pull_request,
    remove_image, start_pod, teardown, teardown_all, wait_log_ready, wait_running,
};
use crate::procs;
use crate::report::{Recorder, Unit};

/// Grace period given to StopContainer.
const STOP_TIMEOUT_SECS: i64 = 10;

/// How long a started container may take to log that it is ready.
const LOG_READY_DEADLINE: Duration = Duration::from_secs(5);

/// A phase stops after this many failed iterations in a row.
const MAX_CONSECUTIVE_FAILURES: usize = 3;

#[derive(Debug, Clone)]
pub struct Params {
    /// Image of the benchmark's containers (busybox-like, with /bin/sh).
    pub image: String,
    /// The large image pulled cold and warm.
    pub pull_image: Option<String>,
    /// Images pulled (untimed) before measuring, e.g. a sandbox image.
    pub prepull: Vec<String>,
    pub iterations: usize,
    pub warmup: usize,
    pub concurrency: Vec<usize>,
    pub concurrency_iterations: usize,
    pub pull_iterations: usize,
    pub list_containers: usize,
    pub memory_pods: usize,
    pub setup_parallelism: usize,
    pub daemon_pid: Option<u32>,
    pub proc_match: Vec<String>,
    /// Where pod log directories are made (removed at the end).
    pub log_dir: PathBuf,
    pub cgroup_parent: String,
    pub run_id: String,
    pub runtime_handler: String,
}

pub struct Bench {
    cri: Cri,
    p: Params,
    specs: Specs,
    rec: Recorder,
    /// Why the benchmark's containers cannot be made, when its image is missing.
    no_image: Option<String>,
    /// Whether containers' log files show when they are ready to be
    /// stopped; waiting for them stops after the first time one does not.
    log_ready_works: bool,
}

/// Metric keys, grouped as the table shows them.
mod key {
    pub const POD_RUN: &str = "pod.run";
    pub const POD_STATUS: &str = "pod.status";
    pub const POD_STOP: &str = "pod.stop";
    pub const POD_REMOVE: &str = "pod.remove";
    pub const CTR_CREATE: &str = "container.create";
    pub const CTR_START: &str = "container.start";
    pub const CTR_STATUS: &str = "container.status";
    pub const CTR_STOP: &str = "container.stop";
    pub const CTR_REMOVE: &str = "container.remove";
    pub const TO_RUNNING: &str = "e2e.to_running";
    pub const CTR_CREATE_SECCOMP: &str = "container.create_seccomp";
    pub const CTR_START_SECCOMP: &str = "container.start_seccomp";
    pub const POD_RUN_USERNS: &str = "pod.run_userns";
    pub const CTR_CREATE_USERNS: &str = "container.create_userns";
    pub const CTR_START_USERNS: &str = "container.start_userns";
    pub const EXEC: &str = "exec.echo";
    pub const LIST_CONTAINERS: &str = "list.containers";
    pub const LIST_PODS: &str = "list.pods";
    pub const LIST_STATS: &str = "list.container_stats";
    pub const PULL_COLD: &str = "pull.cold";
    pub const PULL_WARM: &str = "pull.warm";
    pub const MEM_IDLE: &str = "memory.daemon_idle";
    pub const MEM_PODS: &str = "memory.daemon_pods";
    pub const MEM_PER_CTR_RSS: &str = "memory.per_container_rss";
    pub const MEM_PER_CTR_PSS: &str = "memory.per_container_pss";
    pub const MEM_IDLE_AFTER: &str = "memory.daemon_idle_after";
}

/// The pod-and-container starts measured apart from the plain lifecycle.
#[derive(Clone, Copy)]
enum Variant {
    /// The container under the `RuntimeDefault` seccomp profile (what
    /// kubelet sends with `--seccomp-default`).
    Seccomp,
    /// The pod with a user namespace of its own (`hostUsers: false`).
    UserNamespace,
}

impl Variant {
    fn tag(self) -> &'static str {
        match self {
            Variant::Seccomp => "seccomp",
            Variant::UserNamespace => "userns",
        }
    }

    /// The keys of RunPodSandbox (when it is measured: the seccomp
    /// profile is the container's, its pod the plain one), CreateContainer
    /// and StartContainer.
    fn keys(self) -> (Option<&'static str>, &'static str, &'static str) {
        match self {
            Variant::Seccomp => (None, key::CTR_CREATE_SECCOMP, key::CTR_START_SECCOMP),
            Variant::UserNamespace => (
                Some(key::POD_RUN_USERNS),
                key::CTR_CREATE_USERNS,
                key::CTR_START_USERNS,
            ),
        }
    }

    fn measured(self) -> Vec<&'static str> {
        let (run, create, start) = self.keys();
        run.into_iter().chain([create, start]).collect()
    }
}

/// 65536 IDs from 1 000 000 000 up, container root first, as kubelet
/// picks a pod's range.
fn pod_user_namespace() -> UserNamespace {
    let mapping = || IdMapping {
        host_id: 1_000_000_000,
        container_id: 0,
        length: 65_536,
    };
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![mapping()],
        gids: vec![mapping()],
    }
}

const POD_KEYS: [&str; 4] = [
    key::POD_RUN,
    key::POD_STATUS,
    key::POD_STOP,
    key::POD_REMOVE,
];
const CTR_KEYS: [&str; 6] = [
    key::CTR_CREATE,
    key::CTR_START,
    key::CTR_STATUS,
    key::CTR_STOP,
    key::CTR_REMOVE,
    key::TO_RUNNING,
];

fn concurrent_key(n: usize) -> String {
    format!("concurrent.{n}")
}

impl Bench {
    pub fn new(cri: Cri, p: Params) -> Bench {
        let specs = Specs {
            image: p.image.clone(),
            log_dir: p.log_dir.clone(),
            cgroup_parent: p.cgroup_parent.clone(),
            run_id: p.run_id.clone(),
            runtime_handler: p.runtime_handler.clone(),
        };
        let mut b = Bench {
            cri,
            p,
            specs,
            rec: Recorder::default(),
            no_image: None,
            log_ready_works: true,
        };
        b.declare();
        b
    }

    fn declare(&mut self) {
        let r = &mut self.rec;
        let g = "pod sandbox lifecycle";
        r.declare(key::POD_RUN, g, "RunPodSandbox", Unit::Ms);
        r.declare(key::POD_STATUS, g, "PodSandboxStatus", Unit::Ms);
        r.declare(key::POD_STOP, g, "StopPodSandbox", Unit::Ms);
        r.declare(key::POD_REMOVE, g, "RemovePodSandbox", Unit::Ms);
        let g = "container lifecycle";
        r.declare(key::CTR_CREATE, g, "CreateContainer", Unit::Ms);
        r.declare(key::CTR_START, g, "StartContainer", Unit::Ms);
        r.declare(key::CTR_STATUS, g, "ContainerStatus", Unit::Ms);
        r.declare(key::CTR_STOP, g, "StopContainer", Unit::Ms);
        r.declare(key::CTR_REMOVE, g, "RemoveContainer", Unit::Ms);
        let g = "container with the RuntimeDefault seccomp profile";
        r.declare(key::CTR_CREATE_SECCOMP, g, "CreateContainer", Unit::Ms);
        r.declare(key::CTR_START_SECCOMP, g, "StartContainer", Unit::Ms);
        let g = "pod with a user namespace of its own (hostUsers: false)";
        r.declare(key::POD_RUN_USERNS, g, "RunPodSandbox", Unit::Ms);
        r.declare(key::CTR_CREATE_USERNS, g, "CreateContainer", Unit::Ms);
        r.declare(key::CTR_START_USERNS, g, "StartContainer", Unit::Ms);
        let g = "end to end";
        r.declare(
            key::TO_RUNNING,
            g,
            "pod + container, nothing to RUNNING",
            Unit::Ms,
        );
        let g = "concurrent start: N pods x 1 container, wall time to all RUNNING";
        for n in self.p.concurrency.clone() {
            r.declare(&concurrent_key(n), g, &format!("N = {n}"), Unit::Ms);
        }
        let g = "exec and list";
        r.declare(key::EXEC, g, "ExecSync `echo hi`", Unit::Ms);
        let n = self.p.list_containers;
        r.declare(
            key::LIST_CONTAINERS,
            g,
            &format!("ListContainers, {n} containers"),
            Unit::Ms,
        );
        r.declare(
            key::LIST_PODS,
            g,
            &format!("ListPodSandbox, {n} pods"),
            Unit::Ms,
        );
        r.declare(
            key::LIST_STATS,
            g,
            &format!("ListContainerStats, {n} running containers"),
            Unit::Ms,
        );
        let g = "image pull";
        r.declare(key::PULL_COLD, g, "PullImage, cold", Unit::Ms);
        r.declare(key::PULL_WARM, g, "PullImage, warm", Unit::Ms);
        let g = "resident memory";
        let n = self.p.memory_pods;
        r.declare(key::MEM_IDLE, g, "daemon RSS, idle", Unit::Mib);
        r.declare(
            key::MEM_PODS,
            g,
            &format!("daemon RSS, {n} pods running"),
            Unit::Mib,
        );
        r.declare(
            key::MEM_PER_CTR_RSS,
            g,
            "per-container overhead, RSS",
            Unit::Mib,
        );
        r.declare(
            key::MEM_PER_CTR_PSS,
            g,
            "per-container overhead, PSS",
            Unit::Mib,
        );
        r.declare(
            key::MEM_IDLE_AFTER,
            g,
            "daemon RSS, idle after the run",
            Unit::Mib,
        );
    }

    /// Runs every phase; returns the metrics.
    pub async fn run(mut self) -> Recorder {
        self.sample_daemon(key::MEM_IDLE);
        self.prepare_images().await;
        self.lifecycle().await;
        self.variant_starts(Variant::Seccomp).await;
        self.variant_starts(Variant::UserNamespace).await;
        for n in self.p.concurrency.clone() {
            self.concurrent(n).await;
        }
        self.exec().await;
        self.fleet().await;
        self.pulls().await;
        // Let the daemon settle (and free) before the idle figure.
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.sample_daemon(key::MEM_IDLE_AFTER);
        let _ = std::fs::remove_dir_all(&self.p.log_dir);
        self.rec
    }

    /// Records a timed call's result under `key`; the sample only when
    /// `record` (not in warm-up), failures always.
    fn note<T>(
        &mut self,
        key: &str,
        record: bool,
        result: Result<(T, Duration), OpError>,
    ) -> Result<T, OpError> {
        match result {
            Ok((value, elapsed)) => {
                if record {
                    self.rec.sample(key, ms(elapsed));
                }
                Ok(value)
            }
            Err(e) => {
                self.rec.fail(key, e.is_unimplemented(), &e.to_string());
                Err(e)
            }
        }
    }

    fn block_all(&mut self, keys: &[&str], reason: &str) {
        for k in keys {
            self.rec.block(k, reason);
        }
    }

    fn sample_daemon(&mut self, key: &str) {
        match self.p.daemon_pid {
            None => self.rec.block(key, "no --daemon-pid"),
            Some(pid) => match procs::rss_kib(pid) {
                Ok(kib) => self.rec.sample(key, kib as f64 / 1024.0),
                Err(e) => self.rec.fail(key, false, &e.to_string()),
            },
        }
    }

    /// Pulls (untimed) the images the scenarios need, if missing.
    async fn prepare_images(&mut self) {
        for image in self.p.prepull.clone() {
            if let Err(e) = ensure_image(&self.cri, &image).await {
                eprintln!("ketch-bench: cannot prepare image {image}: {e}");
            }
        }
        let image = self.p.image.clone();
        if let Err(e) = ensure_image(&self.cri, &image).await {
            eprintln!("ketch-bench: cannot prepare image {image}: {e}");
            let reason = if e.is_unimplemented() {
                format!("needs image: {}: Unimplemented", e.rpc())
            } else {
                format!("needs image {image}")
            };
            self.no_image = Some(reason);
        }
    }

    /// Pod and container lifecycle, each call timed, plus the end-to-end
    /// time from nothing to a RUNNING container.
    async fn lifecycle(&mut self) {
        if let Some(reason) = self.no_image.clone() {
            self.block_all(&CTR_KEYS, &reason);
        }
        let with_container = self.no_image.is_none();
        let mut first_error: Option<OpError> = None;
        let mut consecutive = 0;
        for i in 0..self.p.warmup + self.p.iterations {
            let record = i >= self.p.warmup;
            let mut made = Made::default();
            let result = self.lifecycle_once(&mut made, record, with_container).await;
            teardown(&self.cri, made).await;
            match result {
                Ok(()) => consecutive = 0,
                Err(e) => {
                    consecutive += 1;
                    let unimplemented = e.is_unimplemented();
                    first_error.get_or_insert(e);
                    if unimplemented || consecutive >= MAX_CONSECUTIVE_FAILURES {
                        break;
                    }
                }
            }
        }
        if let Some(e) = first_error {
            let reason = e.blocking_reason();
            self.block_all(&POD_KEYS, &reason);
            self.block_all(&CTR_KEYS, &reason);
        }
    }

    async fn lifecycle_once(
        &mut self,
        made: &mut Made,
        record: bool,
        with_container: bool,
    ) -> Result<(), OpError> {
        let t = self.cri.timeout;
        let mut rt = self.cri.runtime.clone();
        let config = self.specs.pod("life");
        let start = Instant::now();
        let r = timed(
            "RunPodSandbox",
            t,
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: self.specs.runtime_handler.clone(),
            }),
        )
        .await;
        let pod_id = self.note(key::POD_RUN, record, r)?.pod_sandbox_id;
        made.pod = Some(pod_id.clone());

        if with_container {
            let r = timed(
                "CreateContainer",
                t,
                rt.create_container(CreateContainerRequest {
                    pod_sandbox_id: pod_id.clone(),
                    config: Some(self.specs.container("app")),
                    sandbox_config: Some(config.clone()),
                }),
            )
            .await;
            let cid = self.note(key::CTR_CREATE, record, r)?.container_id;
            made.containers.push(cid.clone());

            let r = timed(
                "StartContainer",
                t,
                rt.start_container(StartContainerRequest {
                    container_id: cid.clone(),
                }),
            )
            .await;
            self.note(key::CTR_START, record, r)?;

            let r = timed(
                "ContainerStatus",
                t,
                rt.container_status(ContainerStatusRequest {
                    container_id: cid.clone(),
                    verbose: false,
                }),
            )
            .await;
            let status = self.note(key::CTR_STATUS, record, r)?;
            if container_state(&status) != ContainerState::ContainerRunning as i32 {
                let r = wait_running(&self.cri, &cid).await;
                if let Err(e) = &r {
                    self.rec.fail(key::TO_RUNNING, false, &e.to_string());
                }
                r?;
            }
            if record {
                self.rec.sample(key::TO_RUNNING, ms(start.elapsed()));
            }
        }

        let r = timed(
            "PodSandboxStatus",
            t,
            rt.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.clone(),
                verbose: false,
            }),
        )
        .await;
        self.note(key::POD_STATUS, record, r)?;

        if with_container && let Some(cid) = made.containers.first().cloned() {
            if self.log_ready_works
                && !wait_log_ready(&log_file(&config, "app"), LOG_READY_DEADLINE).await
            {
                eprintln!(
                    "ketch-bench: container logs do not show `ready`; StopContainer may race \
                     the container's SIGTERM trap"
                );
                self.log_ready_works = false;
            }
            let r = timed(
                "StopContainer",
                t,
                rt.stop_container(StopContainerRequest {
                    container_id: cid.clone(),
                    timeout: STOP_TIMEOUT_SECS,
                }),
            )
            .await;
            self.note(key::CTR_STOP, record, r)?;
            let r = timed(
                "RemoveContainer",
                t,
                rt.remove_container(RemoveContainerRequest {
                    container_id: cid.clone(),
                }),
            )
            .await;
            self.note(key::CTR_REMOVE, record, r)?;
            made.containers.clear();
        }

        let r = timed(
            "StopPodSandbox",
            t,
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            }),
        )
        .await;
        self.note(key::POD_STOP, record, r)?;
        let r = timed(
            "RemovePodSandbox",
            t,
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod_id,
            }),
        )
        .await;
        self.note(key::POD_REMOVE, record, r)?;
        made.pod = None;
        Ok(())
    }

    /// A pod and its container made in a way that costs more than the
    /// plain lifecycle's, each in a fresh pod (see [`Variant`]).
    async fn variant_starts(&mut self, variant: Variant) {
        let keys = variant.measured();
        if let Some(reason) = self.no_image.clone() {
            self.block_all(&keys, &reason);
            return;
        }
        if let Variant::UserNamespace = variant
            && let Some(reason) = self.no_user_namespaces().await
        {
            // A runtime that predates the field would run the pod in the
            // node's user namespace and measure the wrong thing.
            self.block_all(&keys, &reason);
            return;
        }
        for i in 0..self.p.warmup + self.p.iterations {
            let record = i >= self.p.warmup;
            let mut made = Made::default();
            let result = self.variant_once(variant, &mut made, record).await;
            teardown(&self.cri, made).await;
            if let Err(e) = result {
                self.block_all(&keys, &e.blocking_reason());
                return;
            }
        }
    }

    /// Why pods with their own user namespace cannot be measured: the
    /// runtime's Status does not say its handler supports them.
    async fn no_user_namespaces(&self) -> Option<String> {
        let mut rt = self.cri.runtime.clone();
        let status = match rt.status(StatusRequest { verbose: false }).await {
            Ok(s) => s.into_inner(),
            Err(e) => return Some(format!("Status: {}", e.message())),
        };
        let supported = status.runtime_handlers.iter().any(|h| {
            h.name == self.specs.runtime_handler
                && h.features.as_ref().is_some_and(|f| f.user_namespaces)
        });
        (!supported).then(|| "the runtime does not report user namespaces in Status".to_owned())
    }

    async fn variant_once(
        &mut self,
        variant: Variant,
        made: &mut Made,
        record: bool,
    ) -> Result<(), OpError> {
        let t = self.cri.timeout;
        let mut rt = self.cri.runtime.clone();
        let mut config = self.specs.pod(variant.tag());
        let mut container = self.specs.container("app");
        match variant {
            Variant::Seccomp => {
                if let Some(security) = container
                    .linux
                    .as_mut()
                    .and_then(|l| l.security_context.as_mut())
                {
                    security.seccomp = Some(SecurityProfile {
                        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
                        localhost_ref: String::new(),
                    });
                }
            }
            Variant::UserNamespace => {
                if let Some(ns) = config
                    .linux
                    .as_mut()
                    .and_then(|l| l.security_context.as_mut())
                    .and_then(|s| s.namespace_options.as_mut())
                {
                    ns.userns_options = Some(pod_user_namespace());
                }
            }
        }
        let (run_key, create_key, start_key) = variant.keys();
        let r = timed(
            "RunPodSandbox",
            t,
            rt.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: self.specs.runtime_handler.clone(),
            }),
        )
        .await;
        let pod_id = match run_key {
            Some(key) => self.note(key, record, r)?,
            None => r?.0,
        }
        .pod_sandbox_id;
        made.pod = Some(pod_id.clone());
        let r = timed(
            "CreateContainer",
            t,
            rt.create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id,
                config: Some(container),
                sandbox_config: Some(config),
            }),
        )
        .await;
        let cid = self.note(create_key, record, r)?.container_id;
        made.containers.push(cid.clone());
        let r = timed(
            "StartContainer",
            t,
            rt.start_container(StartContainerRequest { container_id: cid }),
        )
        .await;
        self.note(start_key, record, r)?;
        Ok(())
    }

    /// N pods with one container each, all started at once: the wall time
    /// until every container is RUNNING.
    async fn concurrent(&mut self, n: usize) {
        let key = concurrent_key(n);
        if let Some(reason) = self.no_image.clone() {
            self.rec.block(&key, &reason);
            return;
        }
        let mut consecutive = 0;
        for _ in 0..self.p.concurrency_iterations {
            let configs: Vec<PodSandboxConfig> =
                (0..n).map(|_| self.specs.pod(&format!("c{n}"))).collect();
            let mut set = JoinSet::new();
            let start = Instant::now();
            for config in configs {
                let cri = self.cri.clone();
                let specs = self.specs.clone();
                set.spawn(async move { start_pod(&cri, &specs, config).await });
            }
            let mut made = Vec::new();
            let mut failure: Option<OpError> = None;
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((m, result)) => {
                        made.push(m);
                        if let Err(e) = result {
                            failure.get_or_insert(e);
                        }
                    }
                    Err(e) => {
                        failure.get_or_insert(OpError::Unexpected {
                            rpc: "RunPodSandbox",
                            detail: format!("task failed: {e}"),
                        });
                    }
                }
            }
            let wall = start.elapsed();
            teardown_all(&self.cri, made, self.p.setup_parallelism).await;
            match failure {
                None => {
                    consecutive = 0;
                    self.rec.sample(&key, ms(wall));
                }
                Some(e) => {
                    consecutive += 1;
                    self.rec.fail(&key, e.is_unimplemented(), &e.to_string());
                    if e.is_unimplemented() || consecutive >= MAX_CONSECUTIVE_FAILURES {
                        break;
                    }
                }
            }
        }
    }

    /// ExecSync round trips of `echo hi` in one running container.
    async fn exec(&mut self) {
        if let Some(reason) = self.no_image.clone() {
            self.rec.block(key::EXEC, &reason);
            return;
        }
        let config = self.specs.pod("exec");
        let (made, started) = start_pod(&self.cri, &self.specs, config).await;
        let cid = match (started, made.containers.first()) {
            (Ok(()), Some(cid)) => cid.clone(),
            (Err(e), _) => {
                self.rec.block(key::EXEC, &e.blocking_reason());
                teardown(&self.cri, made).await;
                return;
            }
            (Ok(()), None) => {
                teardown(&self.cri, made).await;
                return;
            }
        };
        let mut consecutive = 0;
        for i in 0..self.p.warmup + self.p.iterations {
            let mut rt = self.cri.runtime.clone();
            let r = timed(
                "ExecSync",
                self.cri.timeout,
                rt.exec_sync(ExecSyncRequest {
                    container_id: cid.clone(),
                    cmd: vec!["echo".to_owned(), "hi".to_owned()],
                    timeout: 10,
                }),
            )
            .await;
            let r = r.and_then(|(resp, d)| {
                if resp.exit_code == 0 && resp.stdout == b"hi\n" {
                    Ok((resp, d))
                } else {
                    Err(OpError::Unexpected {
                        rpc: "ExecSync",
                        detail: format!(
                            "exit code {}, stdout {:?}, stderr {:?}",
                            resp.exit_code,
                            String::from_utf8_lossy(&resp.stdout),
                            String::from_utf8_lossy(&resp.stderr)
                        ),
                    })
                }
            });
            match self.note(key::EXEC, i >= self.p.warmup, r) {
                Ok(_) => consecutive = 0,
                Err(e) => {
                    consecutive += 1;
                    if e.is_unimplemented() || consecutive >= MAX_CONSECUTIVE_FAILURES {
                        break;
                    }
                }
            }
        }
        teardown(&self.cri, made).await;
    }

    /// Many pods at once: memory with `memory_pods` running, then the List
    /// calls with `list_containers` containers.
    async fn fleet(&mut self) {
        let keys = [
            key::MEM_PODS,
            key::MEM_PER_CTR_RSS,
            key::MEM_PER_CTR_PSS,
            key::LIST_CONTAINERS,
            key::LIST_PODS,
            key::LIST_STATS,
        ];
        if let Some(reason) = self.no_image.clone() {
            self.block_all(&keys, &reason);
            return;
        }
        let mut fleet: Vec<Made> = Vec::new();
        let grown = self.grow(&mut fleet, self.p.memory_pods).await;
        if let Err(e) = grown {
            self.block_all(&keys, &e.blocking_reason());
            teardown_all(&self.cri, fleet, self.p.setup_parallelism).await;
            return;
        }
        // Let the new processes fault in what they use before reading RSS.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.sample_fleet_memory(fleet.len()).await;

        if let Err(e) = self.grow(&mut fleet, self.p.list_containers).await {
            self.block_all(
                &[key::LIST_CONTAINERS, key::LIST_PODS, key::LIST_STATS],
                &e.blocking_reason(),
            );
            teardown_all(&self.cri, fleet, self.p.setup_parallelism).await;
            return;
        }
        let expected = fleet.len();
        self.list_calls(expected).await;
        teardown_all(&self.cri, fleet, self.p.setup_parallelism).await;
    }

    /// Starts pods with one container each until `fleet` has `target`.
    async fn grow(&mut self, fleet: &mut Vec<Made>, target: usize) -> Result<(), OpError> {
        let mut set = JoinSet::new();
        let mut failure = None;
        let mut launched = fleet.len();
        loop {
            while failure.is_none() && launched < target && set.len() < self.p.setup_parallelism {
                let cri = self.cri.clone();
                let specs = self.specs.clone();
                let config = specs.pod("fleet");
                set.spawn(async move { start_pod(&cri, &specs, config).await });
                launched += 1;
            }
            let Some(joined) = set.join_next().await else {
                break;
            };
            match joined {
                Ok((made, result)) => {
                    fleet.push(made);
                    if let Err(e) = result {
                        failure.get_or_insert(e);
                    }
                }
                Err(e) => {
                    failure.get_or_insert(OpError::Unexpected {
                        rpc: "RunPodSandbox",
                        detail: format!("task failed: {e}"),
                    });
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn sample_fleet_memory(&mut self, pods: usize) {
        self.sample_daemon(key::MEM_PODS);
        if self.p.proc_match.is_empty() {
            self.block_all(
                &[key::MEM_PER_CTR_RSS, key::MEM_PER_CTR_PSS],
                "no --proc-match",
            );
            return;
        }
        // Containers the runtime says are running; our own count if it cannot say.
        let mut rt = self.cri.runtime.clone();
        let running = timed(
            "ListContainers",
            self.cri.timeout,
            rt.list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    state: Some(ContainerStateValue {
                        state: ContainerState::ContainerRunning as i32,
                    }),
                    label_selector: self.specs.labels(),
                    ..Default::default()
                }),
            }),
        )
        .await
        .map(|(r, _)| r.containers.len())
        .unwrap_or(pods);
        let usage = procs::usage(&procs::matching(&self.p.proc_match));
        if running == 0 || usage.processes == 0 {
            let msg = format!(
                "{} matching processes for {} running containers",
                usage.processes, running
            );
            self.rec.fail(key::MEM_PER_CTR_RSS, false, &msg);
            self.rec.fail(key::MEM_PER_CTR_PSS, false, &msg);
            return;
        }
        let per = |kib: u64| kib as f64 / 1024.0 / running as f64;
        self.rec.sample(key::MEM_PER_CTR_RSS, per(usage.rss_kib));
        self.rec.sample(key::MEM_PER_CTR_PSS, per(usage.pss_kib));
        eprintln!(
            "ketch-bench: {running} running containers, {} per-container processes, RSS {} KiB, PSS {} KiB",
            usage.processes, usage.rss_kib, usage.pss_kib
        );
    }

    async fn list_calls(&mut self, expected: usize) {
        for (k, rpc) in [
            (key::LIST_CONTAINERS, "ListContainers"),
            (key::LIST_PODS, "ListPodSandbox"),
            (key::LIST_STATS, "ListContainerStats"),
        ] {
            let mut consecutive = 0;
            for i in 0..self.p.warmup + self.p.iterations {
                let mut rt = self.cri.runtime.clone();
                let t = self.cri.timeout;
                let r = if rpc == "ListContainers" {
                    timed(
                        rpc,
                        t,
                        rt.list_containers(ListContainersRequest { filter: None }),
                    )
                    .await
                    .map(|(r, d)| (r.containers.len(), d))
                } else if rpc == "ListContainerStats" {
                    timed(
                        rpc,
                        t,
                        rt.list_container_stats(ListContainerStatsRequest { filter: None }),
                    )
                    .await
                    .map(|(r, d)| (r.stats.len(), d))
                } else {
                    timed(
                        rpc,
                        t,
                        rt.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
                    )
                    .await
                    .map(|(r, d)| (r.items.len(), d))
                };
                let r = r.and_then(|(len, d)| {
                    if len >= expected {
                        Ok((len, d))
                    } else {
                        Err(OpError::Unexpected {
                            rpc,
                            detail: format!("listed {len}, expected at least {expected}"),
                        })
                    }
                });
                match self.note(k, i >= self.p.warmup, r) {
                    Ok(_) => consecutive = 0,
                    Err(e) => {
                        consecutive += 1;
                        if e.is_unimplemented() || consecutive >= MAX_CONSECUTIVE_FAILURES {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// PullImage of the large image: cold (removed before each pull, so
    /// nothing of it is cached) and warm (already present).
    async fn pulls(&mut self) {
        let Some(image) = self.p.pull_image.clone() else {
            self.block_all(&[key::PULL_COLD, key::PULL_WARM], "no --pull-image");
            return;
        };
        let t = self.cri.pull_timeout;
        for i in 0..self.p.pull_iterations {
            match remove_image(&self.cri, &image).await {
                Ok(()) => {}
                Err(e) if e.is_unimplemented() && i == 0 => {
                    // Cold only if this runtime never had it.
                    if image_present(&self.cri, &image).await.unwrap_or(false) {
                        self.rec.block(key::PULL_COLD, &e.blocking_reason());
                        break;
                    }
                }
                Err(e) => {
                    self.rec.block(key::PULL_COLD, &e.blocking_reason());
                    break;
                }
            }
            let mut images = self.cri.images.clone();
            let r = timed("PullImage", t, images.pull_image(pull_request(&image))).await;
            if let Err(e) = self.note(key::PULL_COLD, true, r)
                && e.is_unimplemented()
            {
                break;
            }
        }
        match ensure_image(&self.cri, &image).await {
            Ok(()) => {
                for i in 0..self.p.warmup + self.p.iterations {
                    let mut images = self.cri.images.clone();
                    let r = timed("PullImage", t, images.pull_image(pull_request(&image))).await;
                    if let Err(e) = self.note(key::PULL_WARM, i >= self.p.warmup, r)
                        && e.is_unimplemented()
                    {
                        break;
                    }
                }
            }
            Err(e) => {
                self.rec
                    .fail(key::PULL_WARM, e.is_unimplemented(), &e.to_string());
                self.rec.block(key::PULL_WARM, &e.blocking_reason());
            }
        }
        let _ = remove_image(&self.cri, &image).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Metric;
    use ketch::cri::api::image_service_server::ImageServiceServer;
    use ketch::cri::api::runtime_service_server::RuntimeServiceServer;

    /// Serves ketch's own CRI services on a private socket, in process.
    async fn serve_ketch(
        dir: &std::path::Path,
    ) -> (
        PathBuf,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let mut config = ketch::config::Config {
            root_dir: dir.join("root"),
            state_dir: dir.join("run"),
            listen: dir.join("ketch.sock"),
            ..Default::default()
        };
        config.cni.conf_dirs = vec![dir.join("cni")];
        std::fs::create_dir_all(&config.root_dir).unwrap();
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let socket = config.listen.clone();
        // No ketch-shim beside a unit test: the test binary stands in, so
        // whatever needs a monitor or a pause fails, and the run counts it.
        let helper = std::env::current_exe().unwrap();
        let runtime = ketch::runtime::Runtime::with_exe(config, helper)
            .await
            .expect("open an in-process runtime");
        let service = ketch::cri::CriService::new(std::sync::Arc::new(runtime));
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(service.clone()))
                .add_service(ImageServiceServer::new(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        (socket, stop, server)
    }

    /// Whatever ketch serves or not, a run completes and every row says
    /// something: figures, failures, or why it is n/a.
    #[tokio::test]
    async fn a_run_against_ketch_completes_and_explains_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, stop, server) = serve_ketch(dir.path()).await;
        let cri = Cri::connect(&socket).await.unwrap();
        let log_dir = dir.path().join("logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let params = Params {
            // Port 1 on loopback: nothing there, a pull can only fail.
            image: "127.0.0.1:1/bench/busybox:latest".to_owned(),
            pull_image: Some("127.0.0.1:1/bench/big:latest".to_owned()),
            prepull: Vec::new(),
            iterations: 2,
            warmup: 1,
            concurrency: vec![1, 2],
            concurrency_iterations: 1,
            pull_iterations: 1,
            list_containers: 2,
            memory_pods: 1,
            setup_parallelism: 2,
            daemon_pid: Some(std::process::id()),
            proc_match: vec![format!("no-such-process-{}", fastrand::u64(..))],
            log_dir: log_dir.clone(),
            cgroup_parent: format!("/ketch-bench-test-{:x}", fastrand::u32(..)),
            run_id: format!("{:08x}", fastrand::u32(..)),
            runtime_handler: String::new(),
        };
        let metrics: Vec<Metric> = Bench::new(cri.clone(), params).run().await.into_metrics();
        let _ = crate::objects::sweep(&cri).await;
        let _ = stop.send(());
        let _ = server.await;

        assert!(metrics.iter().any(|m| m.key == "concurrent.2"));
        for m in &metrics {
            assert!(
                !m.samples.is_empty() || m.unavailable.is_some() || m.errors > 0,
                "{} says nothing: {m:?}",
                m.key
            );
        }
        let idle = metrics.iter().find(|m| m.key == key::MEM_IDLE).unwrap();
        assert_eq!(idle.samples.len(), 1, "{idle:?}");
        assert!(!log_dir.exists(), "the run must remove its log dir");
    }
}
