//! Kubernetes Events for what a user must see; a failure to publish is logged, never fatal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::Notify;

/// Events written at once by a [`Queue`]: a storm of them (hundreds of meetings
/// migrating together) must not take API server capacity from the migrations.
const QUEUE_CONCURRENCY: usize = 4;
/// The longest an event waits behind a [`Hold`], so that a steady stream of
/// migrations cannot keep events from users for good.
const MAX_HOLD: Duration = Duration::from_secs(10);

/// Longest `action` the API server takes.
const MAX_ACTION: usize = 128;

pub async fn publish(recorder: &Recorder, regarding: &ObjectReference, type_: EventType, reason: &str, note: &str) {
    let event = Event { type_, reason: reason.into(), note: Some(note.into()), action: action(note), secondary: None };
    if let Err(e) = recorder.publish(&event, regarding).await {
        tracing::debug!(error = %e, "publishing event");
    }
}

/// The event's `action`, what was done: its note, cut to what the API server takes.
/// kube's `Recorder` folds events of the same reason and action into one series and
/// keeps the first one's note, so an action per reason would show "scaled up from 0 to
/// 1" for every later scale-up; with the note as the action, only repeats of the same
/// thing fold.
fn action(note: &str) -> String {
    let mut end = note.len().min(MAX_ACTION);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end].to_owned()
}

/// Publishes events in the background, a few at a time, in order of arrival;
/// while any [`Hold`] lives (up to [`MAX_HOLD`]), it waits.
#[derive(Clone)]
pub struct Queue {
    tx: UnboundedSender<(ObjectReference, EventType, String, String)>,
    holds: Arc<Holds>,
}

#[derive(Default)]
struct Holds {
    count: AtomicUsize,
    released: Notify,
}

impl Holds {
    fn hold(self: &Arc<Self>) -> Hold {
        self.count.fetch_add(1, Ordering::SeqCst);
        Hold(self.clone())
    }

    async fn wait(&self) {
        let deadline = tokio::time::Instant::now() + MAX_HOLD;
        loop {
            let released = self.released.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return;
            }
        }
    }
}

/// Keeps a [`Queue`]'s events back while it lives: work whose API writes must come
/// first (a migration's status write) holds them.
pub struct Hold(Arc<Holds>);

impl Drop for Hold {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.released.notify_waiters();
        }
    }
}

impl Queue {
    /// Starts the publisher; it stops when every clone of the queue is dropped.
    pub fn start(recorder: Recorder) -> Self {
        let (tx, rx) = unbounded::<(ObjectReference, EventType, String, String)>();
        let holds = Arc::new(Holds::default());
        let gate = holds.clone();
        tokio::spawn(rx.for_each_concurrent(QUEUE_CONCURRENCY, move |(regarding, type_, reason, note)| {
            let (recorder, gate) = (recorder.clone(), gate.clone());
            async move {
                gate.wait().await;
                publish(&recorder, &regarding, type_, &reason, &note).await
            }
        }));
        Self { tx, holds }
    }

    pub fn send(&self, regarding: ObjectReference, type_: EventType, reason: &str, note: String) {
        let _ = self.tx.unbounded_send((regarding, type_, reason.to_owned(), note));
    }

    /// Holds the queue's events back until the returned guard is dropped.
    pub fn hold(&self) -> Hold {
        self.holds.hold()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_action_is_its_note_cut_to_what_the_api_server_takes() {
        assert_eq!(action("scaled up from 1 to 2 pods"), "scaled up from 1 to 2 pods");
        assert_eq!(action(&"x".repeat(300)).len(), MAX_ACTION);
        // Cut on a character boundary: 127 ASCII bytes, then a 2-byte character.
        let cut = action(&format!("{}é and more", "a".repeat(127)));
        assert_eq!(cut.len(), 127);
        assert_ne!(action("scaled up from 0 to 1 pods"), action("scaled up from 1 to 2 pods"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_keeps_waiters_back_until_the_last_one_is_dropped_or_the_limit() {
        let holds = Arc::new(Holds::default());
        let queue_holds = |n: usize| (0..n).map(|_| holds.hold()).collect::<Vec<_>>();
        // No hold: no wait.
        let start = tokio::time::Instant::now();
        holds.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO);

        // Two holds: the waiter goes when the second is dropped.
        let mut guards = queue_holds(2);
        let waiter = tokio::spawn({
            let holds = holds.clone();
            async move {
                holds.wait().await;
                tokio::time::Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        guards.pop();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "one hold left");
        guards.pop();
        let released_at = waiter.await.unwrap();
        assert_eq!(released_at - start, Duration::from_secs(2));

        // A hold never dropped: the waiter goes at the limit.
        let _stuck = queue_holds(1);
        let start = tokio::time::Instant::now();
        holds.wait().await;
        assert_eq!(start.elapsed(), MAX_HOLD);
    }
}
