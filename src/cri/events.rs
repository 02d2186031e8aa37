//! GetContainerEvents: the domain's container events (`crate::events`)
//! as CRI `ContainerEventResponse`s, each with the pod's status and its
//! containers' statuses as they are when the event is sent, which is what
//! kubelet's Evented PLEG puts in its cache.
//!
//! Each caller has its own bounded queue; one that reads too slowly is
//! dropped by the hub (its stream ends) and never slows the runtime.

use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::api as cri;
use super::{CriService, ReplyStream, pods};
use crate::events::{ContainerEvent, EventKind};

pub(super) fn get_container_events(
    cri: &CriService,
    _req: cri::GetEventsRequest,
) -> ReplyStream<cri::ContainerEventResponse> {
    let rx = cri.runtime.containers().events().subscribe();
    let cri = cri.clone();
    Box::pin(ReceiverStream::new(rx).map(move |event| Ok(to_response(&cri, &event))))
}

fn event_type(kind: EventKind) -> cri::ContainerEventType {
    match kind {
        EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    }
}

fn to_response(cri: &CriService, event: &ContainerEvent) -> cri::ContainerEventResponse {
    let pod_sandbox_status = cri
        .runtime
        .sandboxes()
        .get(&event.pod_id)
        .ok()
        .and_then(|pod| pods::pod_status(&pod, false).ok())
        .and_then(|r| r.status);
    let containers_statuses = pods::container_statuses(cri, &event.pod_id);
    cri::ContainerEventResponse {
        container_id: event.container_id.clone(),
        container_event_type: event_type(event.kind) as i32,
        created_at: event.at,
        pod_sandbox_status,
        containers_statuses,
    }
}
