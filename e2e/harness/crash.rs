//! Crashes on purpose: the daemon run with `KETCH_TEST_CRASH_POINT` set,
//! which makes it kill itself (SIGKILL) when it reaches that point.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ketch::cri::api::runtime_service_client::RuntimeServiceClient;
use ketch::cri::api::{PodSandboxConfig, RunPodSandboxRequest};
use tonic::transport::Channel;

use super::Daemon;

/// Runs the daemon of `daemon` once more, by hand, with the crash point
/// `point` set; RunPodSandbox of `cfg` must kill it there. The daemon is
/// left stopped: restart it to see what the crash left.
pub async fn crash_at(daemon: &mut Daemon, point: &str, cfg: PodSandboxConfig) {
    crash_during(daemon, point, |mut client| async move {
        client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .map(|_| ())
    })
    .await
}

/// Runs the daemon of `daemon` once more, by hand, with the crash point
/// `point` set; `op`, given a client of it, must kill it there. The
/// daemon is left stopped.
pub async fn crash_during<F, Fut>(daemon: &mut Daemon, point: &str, op: F)
where
    F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    daemon.stop().await;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&daemon.log_path)
        .unwrap();
    let mut child = daemon
        .command()
        .env("KETCH_TEST_CRASH_POINT", point)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::UnixStream::connect(&daemon.socket)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "crashing daemon did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = op(daemon.runtime().await).await;
    assert!(result.is_err(), "{point}: the daemon should have died");
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "{point}: killed at the crash point"
    );
}
