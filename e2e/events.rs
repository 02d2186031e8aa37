//! GetContainerEvents: a lifecycle in order with the pod's and containers'
//! statuses, an exit that happened while ketch was down, and a subscriber
//! that never reads not slowing anything down.

use std::time::{Duration, Instant};

use ketch::cri::api::*;
use tonic::Streaming;

use crate::harness::cri::container_config;
use crate::harness::env::Env;

async fn subscribe(env: &mut Env) -> Streaming<ContainerEventResponse> {
    env.rt
        .get_container_events(GetEventsRequest {})
        .await
        .expect("subscribe")
        .into_inner()
}

/// The next event of container `id` (others skipped), 15 s at most.
async fn next_of(
    events: &mut Streaming<ContainerEventResponse>,
    id: &str,
) -> ContainerEventResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let event = tokio::time::timeout_at(deadline, events.message())
            .await
            .unwrap_or_else(|_| panic!("no event for {id}"))
            .expect("event stream")
            .expect("stream open");
        if event.container_id == id {
            return event;
        }
    }
}

#[tokio::test]
async fn a_lifecycle_comes_as_events_in_order() {
    let mut env = Env::start().await;
    let mut events = subscribe(&mut env).await;
    let pod = env.run_pod("events").await;
    let id = env
        .create(
            &pod,
            container_config("ev", &env.busybox(), &["sleep", "1000"]),
        )
        .await
        .unwrap();
    env.start_container(&id).await.unwrap();
    env.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    env.rt
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();

    let want = [
        (
            ContainerEventType::ContainerCreatedEvent,
            ContainerState::ContainerCreated,
        ),
        (
            ContainerEventType::ContainerStartedEvent,
            ContainerState::ContainerRunning,
        ),
        (
            ContainerEventType::ContainerStoppedEvent,
            ContainerState::ContainerExited,
        ),
    ];
    let mut last = 0;
    for (kind, state) in want {
        let event = next_of(&mut events, &id).await;
        assert_eq!(event.container_event_type, kind as i32, "{event:?}");
        assert!(event.created_at >= last, "{event:?}");
        last = event.created_at;
        let pod_status = event.pod_sandbox_status.expect("pod status");
        assert_eq!(pod_status.id, pod.0);
        assert_eq!(pod_status.state, PodSandboxState::SandboxReady as i32);
        let ours = event
            .containers_statuses
            .iter()
            .find(|s| s.id == id)
            .expect("the container's status");
        assert_eq!(ours.state, state as i32, "{kind:?}");
    }
    let deleted = next_of(&mut events, &id).await;
    assert_eq!(
        deleted.container_event_type,
        ContainerEventType::ContainerDeletedEvent as i32
    );
    assert!(deleted.containers_statuses.iter().all(|s| s.id != id));

    // An exit no one asked about is sent too.
    let short = env
        .run_container(&pod, container_config("short", &env.busybox(), &["true"]))
        .await;
    assert_eq!(
        next_of(&mut events, &short).await.container_event_type,
        ContainerEventType::ContainerCreatedEvent as i32
    );
    assert_eq!(
        next_of(&mut events, &short).await.container_event_type,
        ContainerEventType::ContainerStartedEvent as i32
    );
    let stopped = next_of(&mut events, &short).await;
    assert_eq!(
        stopped.container_event_type,
        ContainerEventType::ContainerStoppedEvent as i32
    );
    let status = stopped
        .containers_statuses
        .iter()
        .find(|s| s.id == short)
        .unwrap();
    assert_eq!(status.reason, "Completed");
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn an_exit_while_ketch_was_down_is_sent_after_the_restart() {
    let mut env = Env::start().await;
    let pod = env.run_pod("eventsdown").await;
    let id = env
        .run_container(
            &pod,
            container_config("brief", &env.busybox(), &["sleep", "2"]),
        )
        .await;
    env.daemon.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.daemon.restart().await;
    env.rt = env.daemon.runtime().await;
    env.img = env.daemon.images().await;
    let mut events = subscribe(&mut env).await;
    let event = next_of(&mut events, &id).await;
    assert_eq!(
        event.container_event_type,
        ContainerEventType::ContainerStoppedEvent as i32,
        "{event:?}"
    );
    let status = event
        .containers_statuses
        .iter()
        .find(|s| s.id == id)
        .unwrap();
    assert_eq!(status.state, ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 0);
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_slow_the_calls() {
    let mut env = Env::start().await;
    // Subscribed, never read.
    let _idle = subscribe(&mut env).await;
    let pod = env.run_pod("eventsslow").await;
    let started = Instant::now();
    for i in 0..40 {
        let id = env
            .run_container(
                &pod,
                container_config(&format!("c{i}"), &env.busybox(), &["true"]),
            )
            .await;
        env.rt
            .remove_container(RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    // A fresh subscriber still gets events at once.
    let mut events = subscribe(&mut env).await;
    let id = env
        .create(&pod, container_config("last", &env.busybox(), &["true"]))
        .await
        .unwrap();
    assert_eq!(
        next_of(&mut events, &id).await.container_event_type,
        ContainerEventType::ContainerCreatedEvent as i32
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "40 create/start/remove cycles took {elapsed:?}"
    );
    env.remove_pod(&pod.0).await;
    env.daemon.assert_clean();
}
