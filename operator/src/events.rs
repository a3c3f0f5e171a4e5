//! Kubernetes Events for what a user must see; a failure to publish is logged, never fatal.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};

pub async fn publish(recorder: &Recorder, regarding: &ObjectReference, type_: EventType, reason: &str, note: &str) {
    let event = Event { type_, reason: reason.into(), note: Some(note.into()), action: reason.into(), secondary: None };
    if let Err(e) = recorder.publish(&event, regarding).await {
        tracing::debug!(error = %e, "publishing event");
    }
}
