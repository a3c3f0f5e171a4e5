//! Kubernetes Events for what a user must see; a failure to publish is logged, never fatal.

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

/// Events written at once by a [`Queue`]: a storm of them (hundreds of meetings
/// migrating together) must not take API server capacity from the migrations.
const QUEUE_CONCURRENCY: usize = 4;

pub async fn publish(recorder: &Recorder, regarding: &ObjectReference, type_: EventType, reason: &str, note: &str) {
    let event = Event { type_, reason: reason.into(), note: Some(note.into()), action: reason.into(), secondary: None };
    if let Err(e) = recorder.publish(&event, regarding).await {
        tracing::debug!(error = %e, "publishing event");
    }
}

/// Publishes events in the background, a few at a time, in order of arrival.
#[derive(Clone)]
pub struct Queue {
    tx: UnboundedSender<(ObjectReference, EventType, String, String)>,
}

impl Queue {
    /// Starts the publisher; it stops when every clone of the queue is dropped.
    pub fn start(recorder: Recorder) -> Self {
        let (tx, rx) = unbounded::<(ObjectReference, EventType, String, String)>();
        tokio::spawn(rx.for_each_concurrent(QUEUE_CONCURRENCY, move |(regarding, type_, reason, note)| {
            let recorder = recorder.clone();
            async move { publish(&recorder, &regarding, type_, &reason, &note).await }
        }));
        Self { tx }
    }

    pub fn send(&self, regarding: ObjectReference, type_: EventType, reason: &str, note: String) {
        let _ = self.tx.unbounded_send((regarding, type_, reason.to_owned(), note));
    }
}
