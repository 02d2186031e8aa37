//! Container lifecycle events (created, started, stopped, deleted), the
//! domain side of the CRI's `GetContainerEvents` and of the metrics that
//! count starts and exits.
//!
//! Every subscriber has a bounded queue of its own: publishing never waits.
//! A subscriber whose queue is full is dropped with a log line (its stream
//! ends, and kubelet's Evented PLEG falls back to relisting and
//! resubscribes), so one slow reader cannot hold the runtime back, as
//! containerd's event broadcaster drops a slow sink.
//!
//! Exits that happened while ketch was down are found by the reconcile at
//! start, before any client could subscribe: those events are kept (at
//! most [`REPLAY_MAX`]) and sent first to every subscriber that joins
//! within [`REPLAY_WINDOW`] of the start, so a kubelet that reconnects
//! after a restart learns of them.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// Events a subscriber may have waiting before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// Events of the start's reconcile kept for late subscribers.
pub const REPLAY_MAX: usize = 4096;

/// How long after the start the reconcile's events are replayed.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Started => "started",
            EventKind::Stopped => "stopped",
            EventKind::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub kind: EventKind,
    pub container_id: String,
    pub pod_id: String,
    /// Nanoseconds since the epoch.
    pub at: i64,
    /// The exit's reason (`Completed`, `Error`, `OOMKilled`...) of a
    /// `Stopped` event.
    pub exit_reason: Option<String>,
}

/// A function told of every event as it is published (the metrics).
pub type Observer = Box<dyn Fn(&ContainerEvent) + Send + Sync>;

#[derive(Default)]
struct Inner {
    subscribers: Vec<mpsc::Sender<ContainerEvent>>,
    observers: Vec<Observer>,
    /// The reconcile's events; `None` once the window has passed.
    replay: Vec<ContainerEvent>,
    started: Option<Instant>,
}

/// The event hub; cheap to clone, shared by the managers and the CRI.
#[derive(Clone, Default)]
pub struct Events {
    inner: Arc<Mutex<Inner>>,
}

impl Events {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `event` to every subscriber without waiting; a subscriber
    /// whose queue is full is dropped.
    pub fn publish(&self, event: ContainerEvent) {
        let mut inner = self.lock();
        for observer in &inner.observers {
            observer(&event);
        }
        inner
            .subscribers
            .retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(
                        buffer = SUBSCRIBER_BUFFER,
                        "container event subscriber too slow: dropped"
                    );
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }

    /// Publishes an event found by the start's reconcile: kept for the
    /// subscribers that join soon after.
    pub fn publish_recovered(&self, event: ContainerEvent) {
        {
            let mut inner = self.lock();
            inner.started.get_or_insert_with(Instant::now);
            if inner.replay.len() < REPLAY_MAX {
                inner.replay.push(event.clone());
            }
        }
        self.publish(event);
    }

    /// A new subscriber's queue, which starts with the reconcile's events
    /// while they are fresh.
    pub fn subscribe(&self) -> mpsc::Receiver<ContainerEvent> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let mut inner = self.lock();
        let fresh = inner.started.is_some_and(|t| t.elapsed() < REPLAY_WINDOW);
        if fresh {
            for event in inner.replay.iter().take(SUBSCRIBER_BUFFER / 2) {
                let _ = tx.try_send(event.clone());
            }
        } else {
            inner.replay = Vec::new();
        }
        inner.subscribers.push(tx);
        rx
    }

    /// Calls `observer` for every event from now on, and first for the
    /// start's reconcile events, so exits seen at start count too.
    pub fn observe(&self, observer: Observer) {
        let mut inner = self.lock();
        for event in &inner.replay {
            observer(event);
        }
        inner.observers.push(observer);
    }

    /// Live subscribers.
    pub fn subscribers(&self) -> usize {
        let mut inner = self.lock();
        inner.subscribers.retain(|tx| !tx.is_closed());
        inner.subscribers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, id: &str) -> ContainerEvent {
        ContainerEvent {
            kind,
            container_id: id.into(),
            pod_id: "p".into(),
            at: 1,
            exit_reason: None,
        }
    }

    #[tokio::test]
    async fn subscribers_get_events_in_order() {
        let events = Events::new();
        let mut a = events.subscribe();
        let mut b = events.subscribe();
        for kind in [
            EventKind::Created,
            EventKind::Started,
            EventKind::Stopped,
            EventKind::Deleted,
        ] {
            events.publish(event(kind, "c"));
        }
        for rx in [&mut a, &mut b] {
            let mut kinds = Vec::new();
            while let Ok(e) = rx.try_recv() {
                kinds.push(e.kind);
            }
            assert_eq!(
                kinds,
                [
                    EventKind::Created,
                    EventKind::Started,
                    EventKind::Stopped,
                    EventKind::Deleted
                ]
            );
        }
    }

    #[tokio::test]
    async fn a_full_subscriber_is_dropped_and_others_go_on() {
        let events = Events::new();
        let slow = events.subscribe();
        let mut fast = events.subscribe();
        for i in 0..SUBSCRIBER_BUFFER + 1 {
            events.publish(event(EventKind::Created, &i.to_string()));
            assert!(fast.try_recv().is_ok());
        }
        assert_eq!(events.subscribers(), 1, "the slow one is gone");
        drop(slow);
        events.publish(event(EventKind::Created, "x"));
        assert_eq!(fast.try_recv().unwrap().container_id, "x");
    }

    #[tokio::test]
    async fn recovered_exits_are_replayed_to_late_subscribers() {
        let events = Events::new();
        events.publish_recovered(event(EventKind::Stopped, "gone"));
        let mut late = events.subscribe();
        assert_eq!(late.try_recv().unwrap().container_id, "gone");
        events.publish(event(EventKind::Deleted, "gone"));
        assert_eq!(late.try_recv().unwrap().kind, EventKind::Deleted);
    }

    #[test]
    fn observers_see_every_event() {
        let events = Events::new();
        let seen = Arc::new(Mutex::new(0));
        let s = seen.clone();
        events.observe(Box::new(move |_| *s.lock().unwrap() += 1));
        events.publish(event(EventKind::Started, "c"));
        events.publish(event(EventKind::Stopped, "c"));
        assert_eq!(*seen.lock().unwrap(), 2);
    }
}
