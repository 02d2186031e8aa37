//! Round-trip latency of `echo hi` in a running busybox container, through
//! ExecSync and through a streaming Exec (the Exec RPC, the SPDY upgrade,
//! the session until its exit status), on the real daemon and a registry
//! of the e2e harness. Prints median, p99, min and max over `ROUNDS` calls
//! (default 100) after a few warm-up calls. Not a test: nothing is timed
//! against a limit.
//!
//! `cargo bench --bench exec_latency` (root; builds the release binary).

#[path = "../e2e/harness/mod.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::cri::{container_config, pod_config, unique};
use harness::images::TestImages;
use harness::registry::Registry;
use harness::stream_client::{SpdySession, exit_code};
use harness::{Daemon, DaemonOptions};
use ketch::cri::api::*;

const WARMUP: usize = 5;

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "{name:<16} n={:<4} median {:7.2} ms   p99 {:7.2} ms   min {:7.2} ms   max {:7.2} ms",
        samples.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
    );
}

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let registry = Registry::start_plain().await;
    let images = TestImages::push_all(&registry).await;
    let daemon = Daemon::start_with(DaemonOptions::default()).await;
    let mut rt = daemon.runtime().await;
    let mut img = daemon.images().await;
    img.pull_image(PullImageRequest {
        image: Some(ImageSpec {
            image: images.busybox.reference.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("pull busybox");
    let logs = daemon.dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let pod_config = pod_config(&unique("latency"), &logs);
    let pod = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("run pod")
        .into_inner()
        .pod_sandbox_id;
    let config = container_config("sleeper", &images.busybox.reference, &["sleep", "3600"]);
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(config),
            sandbox_config: Some(pod_config),
        })
        .await
        .expect("create container")
        .into_inner()
        .container_id;
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("start container");
    let cmd = vec!["echo".to_string(), "hi".to_string()];

    let mut exec_sync = Vec::new();
    for i in 0..WARMUP + rounds {
        let started = Instant::now();
        let reply = rt
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: cmd.clone(),
                timeout: 10,
            })
            .await
            .expect("ExecSync")
            .into_inner();
        let took = started.elapsed();
        assert_eq!(
            (reply.stdout.as_slice(), reply.exit_code),
            (&b"hi\n"[..], 0)
        );
        if i >= WARMUP {
            exec_sync.push(took);
        }
    }

    let mut streaming = Vec::new();
    for i in 0..WARMUP + rounds {
        let started = Instant::now();
        let url = rt
            .exec(ExecRequest {
                container_id: id.clone(),
                cmd: cmd.clone(),
                stdout: true,
                stderr: true,
                ..Default::default()
            })
            .await
            .expect("Exec")
            .into_inner()
            .url;
        let mut session = SpdySession::open(&url, false, true, true, false).await;
        let (out, _) = session.stdout().read_to_end(10).await;
        let status = session.status(10).await;
        let took = started.elapsed();
        assert_eq!((out.as_slice(), exit_code(&status)), (&b"hi\n"[..], 0));
        if i >= WARMUP {
            streaming.push(took);
        }
    }

    println!("`echo hi` in a running container, {rounds} round trips each:");
    summary("ExecSync", exec_sync);
    summary("streaming Exec", streaming);

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop pod");
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
}
