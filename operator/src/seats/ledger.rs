//! Placement ledgers: the seats committed on each SFU pod, kept in an annotation
//! of the pod itself, so that they live and die with it and the SFU can read
//! its own through the downward API.
//!
//! Capacity accounting is atomic through optimistic concurrency: every change is
//! a JSON Patch whose first operation `test`s that the ledger is still exactly
//! the text the change was computed from (the API server applies a patch inside
//! its compare-and-swap on etcd). A change computed from a stale ledger fails and
//! is recomputed from a fresh read, so no interleaving of writers, stale caches
//! or two operators over-commits a pod.
//!
//! Changes to one pod are group-committed: while one write is in flight, the next
//! ones queue and go out together in the following write, so a burst of
//! placements on a hot pod (Packed fills the fullest first) costs few writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Notify, oneshot};

/// The pod annotation holding its ledger.
pub const LEDGER_ANNOTATION: &str = "switchboard.dev/placements";
/// Rounds of conflict-and-reread before a batch gives up.
const MAX_ATTEMPTS: u32 = 8;
/// How long a pod's releases wait for more to share their write. Releases trickle
/// in one by one as meetings end or move, a write each without the wait (BENCHMARKS.md,
/// "Failure migration"); none is urgent, and an addition cuts the wait short.
const RELEASE_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// One meeting's seats on a pod (participants plus relay links).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seats {
    pub uid: String,
    pub seats: u64,
}

/// A pod's ledger: meeting name → seats.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ledger(pub BTreeMap<String, Seats>);

impl Ledger {
    pub fn total(&self) -> u64 {
        self.0.values().map(|s| s.seats).sum()
    }

    /// The ledger of a pod (empty when it has none or it does not parse).
    pub fn of(pod: &Pod) -> Ledger {
        pod.annotations().get(LEDGER_ANNOTATION).and_then(|raw| serde_json::from_str(raw).ok()).unwrap_or_default()
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("ledger serializes")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("pod {pod} has {free} free seats, {wanted} wanted")]
    Full { pod: String, free: u64, wanted: u64 },
    #[error("pod {0} is gone")]
    PodGone(String),
    #[error("pod {0}: the ledger kept changing under us")]
    Contended(String),
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

struct Change {
    meeting: String,
    /// None releases the meeting's seats (when `uid` matches).
    seats: Option<Seats>,
    uid: String,
    capacity: u64,
    reply: oneshot::Sender<Result<(), CommitError>>,
}

/// What the server had last time we looked: the exact annotation text (for the
/// `test`), or the resourceVersion when the pod has no ledger yet.
#[derive(Clone)]
struct Committed {
    raw: Option<String>,
    resource_version: Option<String>,
    /// Whether the pod has an annotations map (a JSON Patch `add` needs the parent).
    has_annotations: bool,
    ledger: Ledger,
    /// `ledger.total()`, summed once: every placement asks it of every candidate pod.
    total: u64,
}

impl Committed {
    fn new(raw: Option<String>, resource_version: Option<String>, has_annotations: bool, ledger: Ledger) -> Self {
        let total = ledger.total();
        Self { raw, resource_version, has_annotations, ledger, total }
    }

    /// A pod with no ledger (or none known).
    fn empty() -> Self {
        Self::new(None, None, false, Ledger::default())
    }
}

#[derive(Default)]
struct PodBook {
    committed: Option<Committed>,
    /// What the queued changes and the write in flight make of each meeting's seats
    /// (None: released), the latest change winning: until they land they count, or a
    /// pod near full is chosen past its capacity.
    overlay: HashMap<String, Option<u64>>,
    /// The overlay's net effect on the committed total, kept as changes come so that
    /// `taken` costs the same on a pod with hundreds of changes queued.
    overlay_delta: i64,
    /// The changes of the write in flight, so that a reloaded ledger's overlay still
    /// counts them.
    in_flight: Vec<(String, Option<u64>)>,
    pending: Vec<Change>,
    writing: bool,
    /// Told when an addition is queued (it ends a release linger).
    addition: Arc<Notify>,
}

impl PodBook {
    /// Seats taken: the committed ledger's, with the queued and in-flight changes.
    fn taken(&self) -> u64 {
        let committed = self.committed.as_ref().expect("loaded").total;
        (committed as i64 + self.overlay_delta).max(0) as u64
    }

    fn committed_seats(&self, meeting: &str) -> u64 {
        self.committed.as_ref().and_then(|c| c.ledger.0.get(meeting)).map_or(0, |s| s.seats)
    }

    /// Counts one more change in the overlay.
    fn overlay_add(&mut self, meeting: &str, seats: Option<u64>) {
        let before = match self.overlay.get(meeting) {
            Some(seats) => seats.unwrap_or(0),
            None => self.committed_seats(meeting),
        };
        self.overlay_delta += seats.unwrap_or(0) as i64 - before as i64;
        self.overlay.insert(meeting.to_owned(), seats);
    }

    /// The overlay of the changes in flight and queued, over a newly loaded or
    /// committed ledger.
    fn rebuild_overlay(&mut self) {
        self.overlay.clear();
        self.overlay_delta = 0;
        let queued = self.pending.iter().map(|c| (c.meeting.clone(), c.seats.as_ref().map(|s| s.seats)));
        let changes: Vec<(String, Option<u64>)> = self.in_flight.iter().cloned().chain(queued).collect();
        for (meeting, seats) in changes {
            self.overlay_add(&meeting, seats);
        }
    }
}

/// Every pod's ledger as this operator knows it, with the writes in flight.
#[derive(Clone)]
pub struct Book {
    client: Client,
    pods: Store<Pod>,
    inner: Arc<Mutex<HashMap<(String, String), PodBook>>>,
}

fn committed_from(pod: &Pod) -> Committed {
    Committed::new(
        pod.annotations().get(LEDGER_ANNOTATION).cloned(),
        pod.resource_version(),
        pod.metadata.annotations.is_some(),
        Ledger::of(pod),
    )
}

impl Book {
    pub fn new(client: Client, pods: Store<Pod>) -> Self {
        Self { client, pods, inner: Arc::default() }
    }

    /// Seats taken on a pod: committed, plus additions still in flight.
    pub fn taken(&self, namespace: &str, pod: &str) -> u64 {
        let mut inner = self.inner.lock().expect("lock");
        self.taken_locked(&mut inner, namespace, pod)
    }

    fn taken_locked(&self, inner: &mut HashMap<(String, String), PodBook>, namespace: &str, pod: &str) -> u64 {
        self.book_locked(inner, namespace, pod).taken()
    }

    /// The pod's ledger as the pod cache has it (empty for a pod not cached).
    fn committed_of(&self, namespace: &str, pod: &str) -> Committed {
        self.pods.get(&ObjectRef::new(pod).within(namespace)).map_or_else(Committed::empty, |p| committed_from(&p))
    }

    /// The pod's book, loading its ledger from the cache the first time.
    fn book_locked<'a>(
        &self,
        inner: &'a mut HashMap<(String, String), PodBook>,
        namespace: &str,
        pod: &str,
    ) -> &'a mut PodBook {
        let book = inner.entry((namespace.to_owned(), pod.to_owned())).or_default();
        if book.committed.is_none() {
            book.committed = Some(self.committed_of(namespace, pod));
            // Whatever is queued now counts against this ledger.
            book.rebuild_overlay();
        }
        book
    }

    /// Whether the pod's ledger (as last known) holds seats of this meeting.
    pub fn holds(&self, namespace: &str, pod: &str, meeting: &str, uid: &str) -> bool {
        let mut inner = self.inner.lock().expect("lock");
        let book = self.book_locked(&mut inner, namespace, pod);
        book.committed.as_ref().is_some_and(|c| c.ledger.0.get(meeting).is_some_and(|s| s.uid == uid))
    }

    /// Runs `choose` with the seats taken on each pod, under the book's lock, and
    /// queues the additions it returns before anyone else can choose: concurrent
    /// placements never pick the same free seats. Returns the commit outcomes.
    pub async fn reserve<F, T>(
        &self,
        namespace: &str,
        pods: &[String],
        choose: F,
    ) -> (T, Vec<(String, Result<(), CommitError>)>)
    where
        F: FnOnce(&HashMap<String, u64>) -> (T, Vec<(String, String, Seats, u64)>),
    {
        let receivers = {
            let mut inner = self.inner.lock().expect("lock");
            let taken: HashMap<String, u64> =
                pods.iter().map(|p| (p.clone(), self.taken_locked(&mut inner, namespace, p))).collect();
            let (out, adds) = choose(&taken);
            let mut receivers = Vec::new();
            for (pod, meeting, seats, capacity) in adds {
                let (tx, rx) = oneshot::channel();
                let uid = seats.uid.clone();
                self.enqueue(
                    &mut inner,
                    namespace,
                    &pod,
                    Change { meeting, seats: Some(seats), uid, capacity, reply: tx },
                );
                receivers.push((pod, rx));
            }
            (out, receivers)
        };
        let (out, receivers) = receivers;
        let mut results = Vec::new();
        for (pod, rx) in receivers {
            let r = rx.await.unwrap_or_else(|_| Err(CommitError::Contended(pod.clone())));
            results.push((pod, r));
        }
        (out, results)
    }

    /// Releases a meeting's seats on a pod (nothing when they are not there).
    pub async fn release(&self, namespace: &str, pod: &str, meeting: &str, uid: &str) -> Result<(), CommitError> {
        let rx = {
            let mut inner = self.inner.lock().expect("lock");
            let (tx, rx) = oneshot::channel();
            let change =
                Change { meeting: meeting.into(), seats: None, uid: uid.into(), capacity: u64::MAX, reply: tx };
            self.enqueue(&mut inner, namespace, pod, change);
            rx
        };
        rx.await.unwrap_or_else(|_| Err(CommitError::Contended(pod.into())))
    }

    fn enqueue(&self, inner: &mut HashMap<(String, String), PodBook>, namespace: &str, pod: &str, change: Change) {
        let key = (namespace.to_owned(), pod.to_owned());
        let book = self.book_locked(inner, namespace, pod);
        if change.seats.is_some() {
            book.addition.notify_one();
        }
        book.overlay_add(&change.meeting, change.seats.as_ref().map(|s| s.seats));
        book.pending.push(change);
        if !book.writing {
            book.writing = true;
            let this = self.clone();
            tokio::spawn(async move { this.write_loop(key).await });
        }
    }

    /// Forgets pods that are gone (their ledgers went with them).
    pub fn forget_missing(&self) {
        let mut inner = self.inner.lock().expect("lock");
        inner.retain(|(ns, pod), b| b.writing || self.pods.get(&ObjectRef::new(pod).within(ns)).is_some());
    }

    async fn write_loop(self, key: (String, String)) {
        let (namespace, pod_name) = key.clone();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        loop {
            let only_releases = {
                let inner = self.inner.lock().expect("lock");
                let book = inner.get(&key).expect("book of a writing pod");
                (!book.pending.is_empty() && book.pending.iter().all(|c| c.seats.is_none()))
                    .then(|| book.addition.clone())
            };
            if let Some(addition) = only_releases {
                let _ = tokio::time::timeout(RELEASE_LINGER, addition.notified()).await;
            }
            let (batch, base) = {
                let mut inner = self.inner.lock().expect("lock");
                let book = inner.get_mut(&key).expect("book of a writing pod");
                if book.pending.is_empty() {
                    book.writing = false;
                    return;
                }
                let base = match &book.committed {
                    Some(c) => c.clone(),
                    None => self.committed_of(&namespace, &pod_name),
                };
                // The batch stays in the overlay until it lands.
                book.in_flight =
                    book.pending.iter().map(|c| (c.meeting.clone(), c.seats.as_ref().map(|s| s.seats))).collect();
                (std::mem::take(&mut book.pending), base)
            };
            let outcome = self.commit(&api, &pod_name, batch, base).await;
            let mut inner = self.inner.lock().expect("lock");
            let book = inner.get_mut(&key).expect("book of a writing pod");
            book.in_flight.clear();
            match outcome {
                Ok(committed) => book.committed = committed,
                Err(()) => book.committed = None,
            }
            // The batch is in the ledger now (or refused); what is still queued counts
            // against it. An unknown ledger is reloaded, and the overlay with it, on next use.
            if book.committed.is_some() {
                book.rebuild_overlay();
            }
        }
    }

    /// Commits one batch, rereading and recomputing on conflicts. Returns what the
    /// server now holds (None when unknown).
    async fn commit(
        &self,
        api: &Api<Pod>,
        pod: &str,
        batch: Vec<Change>,
        mut base: Committed,
    ) -> Result<Option<Committed>, ()> {
        for attempt in 0..MAX_ATTEMPTS {
            let (next, verdicts) = apply_changes(&base.ledger, &batch);
            let reply = |batch: Vec<Change>, verdicts: Vec<Verdict>| {
                for (c, v) in batch.into_iter().zip(verdicts) {
                    let r = v.map_err(|(free, wanted)| CommitError::Full { pod: pod.into(), free, wanted });
                    let _ = c.reply.send(r);
                }
            };
            // Only releases may skip the write: an addition is confirmed by the server's
            // `test` even when it changes nothing here (our copy may be stale).
            let only_releases = batch.iter().all(|c| c.seats.is_none());
            if next == base.ledger && base.raw.is_some() && only_releases {
                reply(batch, verdicts);
                return Ok(Some(base));
            }
            let text = next.to_text();
            let patch = guarded_patch(&base, &text);
            match api.patch(pod, &PatchParams::default(), &Patch::<()>::Json(patch)).await {
                Ok(p) => {
                    let committed = Committed::new(Some(text), p.resource_version(), true, next);
                    reply(batch, verdicts);
                    return Ok(Some(committed));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    for c in batch {
                        let _ = c.reply.send(match c.seats {
                            Some(_) => Err(CommitError::PodGone(pod.into())),
                            None => Ok(()),
                        });
                    }
                    return Ok(None);
                }
                // A failed `test` (422) or a lost resourceVersion race (409): reread.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => {
                    tracing::debug!(pod, attempt, "placement ledger changed; rereading");
                    match api.get(pod).await {
                        Ok(p) => base = committed_from(&p),
                        Err(e) => {
                            fail(batch, e);
                            return Err(());
                        }
                    }
                }
                Err(e) => {
                    fail(batch, e);
                    return Err(());
                }
            }
        }
        for c in batch {
            let _ = c.reply.send(Err(CommitError::Contended(pod.into())));
        }
        Err(())
    }
}

/// A change admitted, or refused with (free, wanted) seats.
type Verdict = Result<(), (u64, u64)>;

/// The ledger after a batch of changes, and each change's verdict: an addition
/// that does not fit is refused with (free, wanted); a release applies only to the
/// seats of the same meeting uid.
fn apply_changes(base: &Ledger, batch: &[Change]) -> (Ledger, Vec<Verdict>) {
    let mut next = base.clone();
    let verdicts = batch
        .iter()
        .map(|c| match &c.seats {
            Some(seats) => {
                let others = next.total() - next.0.get(&c.meeting).map_or(0, |s| s.seats);
                if others + seats.seats > c.capacity {
                    return Err((c.capacity.saturating_sub(others), seats.seats));
                }
                next.0.insert(c.meeting.clone(), seats.clone());
                Ok(())
            }
            None => {
                if next.0.get(&c.meeting).is_some_and(|s| s.uid == c.uid) {
                    next.0.remove(&c.meeting);
                }
                Ok(())
            }
        })
        .collect();
    (next, verdicts)
}

/// The JSON Patch writing `text` as the ledger, guarded by a `test` that the ledger
/// is still the text it was computed from (or, with no ledger yet, that the pod's
/// resourceVersion is unchanged).
fn guarded_patch(base: &Committed, text: &str) -> json_patch::Patch {
    let path = format!("/metadata/annotations/{}", LEDGER_ANNOTATION.replace('~', "~0").replace('/', "~1"));
    let rv = base.resource_version.clone().unwrap_or_default();
    let ops = match &base.raw {
        Some(raw) => {
            json!([{"op": "test", "path": path, "value": raw}, {"op": "replace", "path": path, "value": text}])
        }
        None if base.has_annotations => json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": path, "value": text},
        ]),
        None => json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "add", "path": "/metadata/annotations", "value": {LEDGER_ANNOTATION: text}},
        ]),
    };
    serde_json::from_value(ops).expect("a JSON patch")
}

fn fail(batch: Vec<Change>, e: kube::Error) {
    let message = e.to_string();
    for c in batch {
        let _ = c.reply.send(Err(CommitError::Api(kube::Error::Service(message.clone().into()))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seats(uid: &str, n: u64) -> Seats {
        Seats { uid: uid.into(), seats: n }
    }

    fn change(meeting: &str, uid: &str, seats: Option<u64>, capacity: u64) -> Change {
        let seats = seats.map(|n| Seats { uid: uid.into(), seats: n });
        Change { meeting: meeting.into(), seats, uid: uid.into(), capacity, reply: oneshot::channel().0 }
    }

    #[test]
    fn a_batch_admits_what_fits_in_order_and_releases_only_the_same_meeting() {
        let base = Ledger(BTreeMap::from([("a".to_owned(), seats("ua", 60)), ("old".to_owned(), seats("u-old", 10))]));
        let batch = [
            change("b", "ub", Some(30), 100),        // 60 + 10 + 30 = 100: fits exactly
            change("c", "uc", Some(1), 100),         // full: refused with (free, wanted)
            change("a", "ua", Some(50), 100),        // a shrinks from 60 to 50 (others: 40)
            change("old", "u-recreated", None, 100), // another meeting of the same name: kept
            change("missing", "u", None, 100),       // nothing to release
        ];
        let (next, verdicts) = apply_changes(&base, &batch);
        assert_eq!(verdicts, [Ok(()), Err((0, 1)), Ok(()), Ok(()), Ok(())]);
        assert_eq!(next.total(), 90);
        assert_eq!(next.0.get("old"), Some(&seats("u-old", 10)));
        assert!(!next.0.contains_key("c"));
    }

    #[test]
    fn a_write_is_guarded_by_the_text_it_was_computed_from() {
        let with = Committed::new(Some("{}".into()), Some("7".into()), true, Ledger::default());
        let ops = serde_json::to_value(guarded_patch(&with, "{\"a\":1}")).unwrap();
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[0]["value"], "{}");
        assert_eq!(ops[1]["op"], "replace");
        let without = Committed::new(None, Some("7".into()), false, Ledger::default());
        let ops = serde_json::to_value(guarded_patch(&without, "{}")).unwrap();
        assert_eq!((ops[0]["path"].as_str(), ops[0]["value"].as_str()), (Some("/metadata/resourceVersion"), Some("7")));
        assert_eq!(ops[1]["path"], "/metadata/annotations");
    }

    #[test]
    fn queued_changes_count_against_the_committed_ledger_latest_first() {
        let ledger = Ledger(BTreeMap::from([("a".to_owned(), seats("ua", 3)), ("b".to_owned(), seats("ub", 2))]));
        let mut book = PodBook { committed: Some(Committed::new(None, None, true, ledger)), ..Default::default() };
        assert_eq!(book.taken(), 5);
        book.overlay_add("a", Some(5)); // a grows
        book.overlay_add("c", Some(4)); // a newcomer
        book.overlay_add("b", None); // b leaves
        assert_eq!(book.taken(), 9);
        book.overlay_add("a", None); // a's later release wins over its growth
        assert_eq!(book.taken(), 4);
        book.overlay_add("z", None); // releasing what is not there changes nothing
        assert_eq!(book.taken(), 4);

        // c lands (a and b's changes were refused, say): only what is still queued counts.
        let landed = Ledger(BTreeMap::from([
            ("a".to_owned(), seats("ua", 3)),
            ("b".to_owned(), seats("ub", 2)),
            ("c".to_owned(), seats("uc", 4)),
        ]));
        book.committed = Some(Committed::new(None, None, true, landed));
        let (tx, _rx) = oneshot::channel();
        book.pending.push(Change {
            meeting: "d".into(),
            seats: Some(seats("ud", 1)),
            uid: "ud".into(),
            capacity: 100,
            reply: tx,
        });
        book.rebuild_overlay();
        assert_eq!(book.taken(), 10);

        // A ledger reloaded while a write is in flight (after a failed one): the
        // write's changes still count, as do the queued ones.
        book.in_flight = vec![("e".to_owned(), Some(2)), ("a".to_owned(), None)];
        book.rebuild_overlay();
        assert_eq!(book.taken(), 9, "9 committed, e +2, a -3, d +1");
    }
}
