//! Faults end to end: `kill -9` of the daemon at every step of the
//! lifecycle of a pod that shares one PID namespace, a pause killed under
//! a ready pod, names and log paths that would lead a path elsewhere, and
//! gRPC clients that send a unix-socket `:authority`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ketch::cri::api::image_service_client::ImageServiceClient;
use ketch::cri::api::runtime_service_client::RuntimeServiceClient;
use ketch::cri::api::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::Daemon;
use crate::harness::cri::{container_config, pod_config, unique};
use crate::harness::daemon::{mountpoints, pids_referencing};
use crate::harness::images::TestImages;
use crate::harness::registry::Registry;

type Client = RuntimeServiceClient<Channel>;

/// A pod config whose containers share one PID namespace, held by a pause.
fn shared_pid_config(daemon: &Daemon, name: &str) -> PodSandboxConfig {
    let mut config = pod_config(name, &daemon.dir.path().join("logs").join(name));
    let linux = config.linux.get_or_insert_with(Default::default);
    let security = linux.security_context.get_or_insert_with(Default::default);
    security.namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    });
    config
}

async fn run(client: &mut Client, config: PodSandboxConfig) -> Result<String, tonic::Status> {
    client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

async fn state(client: &mut Client, id: &str) -> PodSandboxState {
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    PodSandboxState::try_from(status.status.expect("status").state).expect("a known state")
}

async fn stop(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
        .map(|_| ())
}

async fn remove(client: &mut Client, id: &str) -> Result<(), tonic::Status> {
    client
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        })
        .await
        .map(|_| ())
}

/// CreateContainer in `pod`; the image need not exist, since a pod that
/// is not ready is refused before the image is looked up.
async fn create_in(client: &mut Client, pod: &str, config: &PodSandboxConfig) -> tonic::Status {
    client
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(container_config("c", "busybox:never-pulled", &["true"])),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect_err("CreateContainer in a pod that is not ready")
}

fn pods_dir(daemon: &Daemon) -> PathBuf {
    daemon.state_dir.join("pods")
}

/// The pause processes of this daemon's pods (their command line names a
/// namespace pin under the pods dir).
fn pauses(daemon: &Daemon) -> Vec<i32> {
    pids_referencing(&pods_dir(daemon).to_string_lossy())
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"pause"))
        })
        .collect()
}

/// The pause of pod `id`.
pub(crate) fn pause_of(daemon: &Daemon, id: &str) -> Option<i32> {
    let pins = pods_dir(daemon).join(id);
    pids_referencing(&pins.to_string_lossy())
        .into_iter()
        .find(|pid| pauses(daemon).contains(pid))
}

fn mounts_under(path: &Path) -> Vec<String> {
    let prefix = path.to_string_lossy().into_owned();
    mountpoints()
        .into_iter()
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Waits until `pid` is gone or a zombie; a pause's reaper is not ours.
pub(crate) async fn wait_dead(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        if matches!(state, None | Some("Z" | "X")) {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing of any pod is left: no record, no dir, no mount, no pause.
fn assert_no_pod_left(daemon: &Daemon, context: &str) {
    let pods = pods_dir(daemon);
    assert!(mounts_under(&pods).is_empty(), "{context}: mounts left");
    assert_eq!(
        std::fs::read_dir(&pods).map(|d| d.count()).unwrap_or(0),
        0,
        "{context}: pod dirs left"
    );
    assert_eq!(
        std::fs::read_dir(daemon.root_dir.join("pods"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "{context}: records left"
    );
    assert!(pauses(daemon).is_empty(), "{context}: pause left running");
}

/// A pod RPC to die in.
enum Op {
    Run(Box<PodSandboxConfig>),
    Stop(String),
    Remove(String),
}

/// Runs the daemon once more with crash point `point` set; `op` must kill
/// it there.
async fn crash_during(daemon: &mut Daemon, point: &str, op: Op) {
    crate::harness::crash::crash_during(daemon, point, |mut client| async move {
        match op {
            Op::Run(config) => run(&mut client, *config).await.map(|_| ()),
            Op::Stop(id) => stop(&mut client, &id).await,
            Op::Remove(id) => remove(&mut client, &id).await,
        }
    })
    .await
}

#[tokio::test]
async fn a_crash_at_each_step_of_running_a_shared_pid_pod_leaves_nothing() {
    let mut daemon = Daemon::start().await;
    for point in [
        "run-pod-after-namespaces",
        "run-pod-after-pid-holder",
        "run-pod-after-cni-add",
        "run-pod-before-ready",
    ] {
        let config = shared_pid_config(&daemon, &unique("crashrun"));
        crash_during(&mut daemon, point, Op::Run(Box::new(config.clone()))).await;
        let holder_started = point != "run-pod-after-namespaces";
        assert_eq!(
            !pauses(&daemon).is_empty(),
            holder_started,
            "{point}: a pause runs once it was spawned"
        );
        daemon.restart().await;
        let mut client = daemon.runtime().await;
        let pods = client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
        assert!(pods.is_empty(), "{point}: {pods:?}");
        assert_no_pod_left(&daemon, point);

        // The name is free, and the pod can be made whole.
        let id = run(&mut client, config).await.expect("RunPodSandbox again");
        assert_eq!(state(&mut client, &id).await, PodSandboxState::SandboxReady);
        assert!(
            pause_of(&daemon, &id).is_some(),
            "{point}: a pause for the pod"
        );
        remove(&mut client, &id).await.unwrap();
        assert_no_pod_left(&daemon, point);
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn a_crash_at_each_step_of_stopping_or_removing_leaves_a_not_ready_pod() {
    let mut daemon = Daemon::start().await;
    for point in ["stop-pod-after-not-ready", "stop-pod-after-pid-holder"] {
        for removing in [false, true] {
            let context = format!("{point}, removing: {removing}");
            let config = shared_pid_config(&daemon, &unique("crashstop"));
            let mut client = daemon.runtime().await;
            let id = run(&mut client, config.clone()).await.unwrap();
            let pause = pause_of(&daemon, &id).expect("the pod's pause");
            drop(client);
            let op = if removing {
                Op::Remove(id.clone())
            } else {
                Op::Stop(id.clone())
            };
            crash_during(&mut daemon, point, op).await;
            daemon.restart().await;
            let mut client = daemon.runtime().await;
            assert_eq!(
                state(&mut client, &id).await,
                PodSandboxState::SandboxNotready,
                "{context}"
            );
            let refused = create_in(&mut client, &id, &config).await;
            assert_eq!(
                refused.code(),
                Code::FailedPrecondition,
                "{context}: {refused:?}"
            );
            stop(&mut client, &id).await.expect("StopPodSandbox");
            wait_dead(pause).await;
            remove(&mut client, &id).await.expect("RemovePodSandbox");
            assert_no_pod_left(&daemon, &context);
        }
    }
    daemon.assert_clean();
}

#[tokio::test]
async fn a_pod_whose_pause_was_killed_is_not_ready_and_removed_cleanly() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let config = shared_pid_config(&daemon, &unique("pausekilled"));
    let id = run(&mut client, config.clone()).await.unwrap();
    let other = run(
        &mut client,
        shared_pid_config(&daemon, &unique("bystander")),
    )
    .await
    .unwrap();
    assert_eq!(state(&mut client, &id).await, PodSandboxState::SandboxReady);
    let pause = pause_of(&daemon, &id).expect("the pod's pause");
    kill(Pid::from_raw(pause), Signal::SIGKILL).unwrap();
    wait_dead(pause).await;

    assert_eq!(
        state(&mut client, &id).await,
        PodSandboxState::SandboxNotready
    );
    let ready = client
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue {
                    state: PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        ready.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![other.as_str()],
        "only the bystander is ready"
    );
    let refused = create_in(&mut client, &id, &config).await;
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // The restart reconcile agrees.
    drop(client);
    daemon.kill9();
    daemon.restart().await;
    let mut client = daemon.runtime().await;
    assert_eq!(
        state(&mut client, &id).await,
        PodSandboxState::SandboxNotready
    );
    assert_eq!(
        state(&mut client, &other).await,
        PodSandboxState::SandboxReady
    );

    remove(&mut client, &id).await.unwrap();
    assert!(mounts_under(&pods_dir(&daemon).join(&id)).is_empty());
    assert!(!pods_dir(&daemon).join(&id).exists());
    remove(&mut client, &other).await.unwrap();
    assert_no_pod_left(&daemon, "after removal");
    daemon.assert_clean();
}

#[tokio::test]
async fn a_ready_pod_with_an_unrecorded_pause_is_not_ready_and_the_pause_is_killed() {
    let mut daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    let id = run(
        &mut client,
        shared_pid_config(&daemon, &unique("unrecorded")),
    )
    .await
    .unwrap();
    let pause = pause_of(&daemon, &id).expect("the pod's pause");
    drop(client);
    daemon.stop().await;
    // What an earlier ketch left after a crash between committing READY
    // and recording its pause.
    let record = daemon.root_dir.join("pods").join(format!("{id}.json"));
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert!(
        json["pid_holder"].is_object(),
        "the holder is recorded: {json}"
    );
    json.as_object_mut().unwrap().remove("pid_holder");
    std::fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();

    daemon.restart().await;
    let mut client = daemon.runtime().await;
    assert_eq!(
        state(&mut client, &id).await,
        PodSandboxState::SandboxNotready
    );
    wait_dead(pause).await;
    remove(&mut client, &id).await.unwrap();
    assert_no_pod_left(&daemon, "after removal");
    daemon.assert_clean();
}

#[tokio::test]
async fn pod_names_and_log_directories_that_lead_elsewhere_are_refused() {
    let daemon = Daemon::start().await;
    let mut client = daemon.runtime().await;
    type Spoil = fn(&mut PodSandboxConfig);
    let cases: [(&str, Spoil); 9] = [
        ("metadata.name", |c| meta(c).name = "..".into()),
        ("metadata.name", |c| meta(c).name = "a/../../b".into()),
        ("metadata.name", |c| meta(c).name = "a\0b".into()),
        ("metadata.namespace", |c| meta(c).namespace = "../..".into()),
        ("metadata.uid", |c| meta(c).uid = "../../../etc".into()),
        ("log_directory", |c| c.log_directory = "/etc".into()),
        ("log_directory", |c| c.log_directory = "/".into()),
        ("log_directory", |c| c.log_directory = "var/log/pods".into()),
        ("log_directory", |c| {
            c.log_directory = "/var/log/../../etc".into()
        }),
    ];
    for (field, spoil) in cases {
        let mut config = pod_config(&unique("refused"), &daemon.dir.path().join("logs"));
        spoil(&mut config);
        let err = run(&mut client, config).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
    }
    let pods = client
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
    assert_no_pod_left(&daemon, "after refusals");
    daemon.assert_clean();
}

fn meta(config: &mut PodSandboxConfig) -> &mut PodSandboxMetadata {
    config.metadata.as_mut().expect("metadata")
}

/// A daemon with busybox pulled and a ready pod, for container input.
struct ContainerEnv {
    daemon: Daemon,
    _registry: Registry,
    busybox: String,
    client: Client,
    pod: String,
    pod_config: PodSandboxConfig,
    log_dir: PathBuf,
}

impl ContainerEnv {
    async fn start() -> Self {
        let registry = Registry::start_plain().await;
        let images = TestImages::push_all(&registry).await;
        let daemon = Daemon::start().await;
        let busybox = images.busybox.reference.clone();
        let mut img: ImageServiceClient<Channel> = daemon.images().await;
        img.pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: busybox.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull busybox");
        let mut client = daemon.runtime().await;
        let log_dir = daemon.dir.path().join("logs").join(unique("pod"));
        let pod_config = pod_config(&unique("input"), &log_dir);
        let pod = run(&mut client, pod_config.clone()).await.unwrap();
        ContainerEnv {
            daemon,
            _registry: registry,
            busybox,
            client,
            pod,
            pod_config,
            log_dir,
        }
    }

    async fn create(&mut self, config: ContainerConfig) -> Result<String, tonic::Status> {
        self.client
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.pod.clone(),
                config: Some(config),
                sandbox_config: Some(self.pod_config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    async fn containers(&mut self) -> Vec<Container> {
        self.client
            .list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
    }
}

#[tokio::test]
async fn container_names_and_log_paths_that_lead_elsewhere_are_refused() {
    let mut env = ContainerEnv::start().await;
    for name in ["..", "a/../b", "a\0b"] {
        let config = container_config(name, &env.busybox, &["true"]);
        let err = env.create(config).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}: {err:?}");
        assert!(err.message().contains("metadata.name"), "{name:?}: {err:?}");
    }
    let outside = env.daemon.dir.path().join("escaped.log");
    // From `<test dir>/logs/<pod>`, two levels up is the test dir.
    assert!(env.log_dir.starts_with(env.daemon.dir.path().join("logs")));
    let escaping = "../../escaped.log".to_owned();
    let absolute = env.daemon.dir.path().join("absolute.log");
    for log_path in [
        "../../../etc/x".to_owned(),
        escaping,
        absolute.display().to_string(),
    ] {
        let mut config = container_config(&unique("log"), &env.busybox, &["echo", "hi"]);
        config.log_path = log_path.clone();
        let err = env.create(config).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{log_path}: {err:?}");
        assert!(err.message().contains("log_path"), "{log_path}: {err:?}");
    }
    assert!(!outside.exists() && !absolute.exists(), "no log outside");
    assert!(env.containers().await.is_empty(), "nothing created");
    // A good one still works.
    let id = env
        .create(container_config("fine", &env.busybox, &["true"]))
        .await
        .expect("a plain container");
    env.client
        .remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    remove(&mut env.client, &env.pod.clone()).await.unwrap();
    env.daemon.assert_clean();
}

#[tokio::test]
async fn bidirectional_mounts_are_refused_to_unprivileged_containers() {
    let mut env = ContainerEnv::start().await;
    let mut config = container_config("bidi", &env.busybox, &["true"]);
    config.mounts.push(Mount {
        container_path: "/host".into(),
        host_path: "/".into(),
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    });
    let err = env.create(config).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("propagation"), "{err:?}");
    assert!(env.containers().await.is_empty(), "nothing created");
    remove(&mut env.client, &env.pod.clone()).await.unwrap();
    env.daemon.assert_clean();
}

/// The `:authority` values gRPC clients send over a unix socket: the path
/// (grpc-java, older grpc-python), its percent-encoding (grpc-python since
/// 1.57), a `unix:` URI, and the `localhost` the others use.
const UNIX_AUTHORITIES: [&str; 5] = [
    "/run/ketch/ketch.sock",
    "%2Frun%2Fketch%2Fketch.sock",
    "unix:/run/ketch/ketch.sock",
    "unix:///run/ketch/ketch.sock",
    "localhost",
];

/// An HTTP/2 frame header.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK string, raw (lengths below 127 only).
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    assert!(s.len() < 127);
    out.push(s.len() as u8);
    out.extend(s);
}

/// A Version call's header block: `:authority` as a literal that enters
/// the HPACK dynamic table, or, with `authority: None`, as a reference to
/// the newest entry of that table (index 62).
fn version_headers(authority: Option<&str>) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
    block.push(0x04); // :path (static 4), literal value, not indexed
    hpack_string(&mut block, b"/runtime.v1.RuntimeService/Version");
    match authority {
        Some(authority) => {
            block.push(0x41); // :authority (static 1), with indexing
            hpack_string(&mut block, authority.as_bytes());
        }
        None => block.push(0x80 | 62),
    }
    for (name, value) in [("content-type", "application/grpc"), ("te", "trailers")] {
        block.push(0x00);
        hpack_string(&mut block, name.as_bytes());
        hpack_string(&mut block, value.as_bytes());
    }
    block
}

#[tokio::test]
async fn grpc_clients_sending_a_unix_socket_authority_are_served() {
    let daemon = Daemon::start().await;
    let mut socket = tokio::net::UnixStream::connect(&daemon.socket)
        .await
        .unwrap();
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let request = VersionRequest {
        version: "v1".into(),
    }
    .encode_to_vec();
    let mut message = vec![0];
    message.extend((request.len() as u32).to_be_bytes());
    message.extend(&request);
    // One stream per authority, then one that refers to the last literal
    // through the dynamic table.
    let mut streams = Vec::new();
    let authorities = UNIX_AUTHORITIES.iter().map(|a| Some(*a)).chain([None]);
    for (i, authority) in authorities.enumerate() {
        let stream = 1 + 2 * i as u32;
        wire.extend(frame(0x1, 0x4, stream, &version_headers(authority))); // END_HEADERS
        wire.extend(frame(0x0, 0x1, stream, &message)); // END_STREAM
        streams.push((stream, authority.unwrap_or("the dynamic table entry")));
    }
    socket.write_all(&wire).await.unwrap();

    // Read until every stream has ended, acknowledging the server's
    // SETTINGS; a RST_STREAM or GOAWAY fails the test.
    let mut data: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
    let mut ended = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ended.len() < streams.len() {
        let mut header = [0u8; 9];
        tokio::time::timeout_at(deadline.into(), socket.read_exact(&mut header))
            .await
            .expect("the daemon answers every stream in time")
            .expect("read a frame");
        let len = (header[0] as usize) << 16 | (header[1] as usize) << 8 | header[2] as usize;
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        socket.read_exact(&mut payload).await.unwrap();
        let authority = streams.iter().find(|(s, _)| *s == stream).map(|(_, a)| *a);
        match kind {
            0x0 => data.entry(stream).or_default().extend(&payload),
            0x3 => panic!("stream {stream} ({authority:?}) reset: code {payload:?}"),
            0x7 => panic!("connection closed by GOAWAY: {payload:?}"),
            0x4 if flags & 0x1 == 0 => socket.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(),
            _ => {}
        }
        if matches!(kind, 0x0 | 0x1) && flags & 0x1 != 0 {
            ended.insert(stream);
        }
    }
    for (stream, authority) in &streams {
        let body = data.get(stream).map(Vec::as_slice).unwrap_or_default();
        assert!(body.len() > 5, "{authority}: a gRPC message in the answer");
        let version = VersionResponse::decode(&body[5..]).expect("a VersionResponse");
        assert_eq!(version.runtime_name, "ketch", "{authority}");
    }
    daemon.assert_clean();
}
