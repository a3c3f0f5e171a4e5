//! Builders for the objects the controllers read, so that their pure `decide` and
//! `status` steps are table-tested without a cluster (kube-rs controller-rs style).
//! Every builder starts from a valid object with fixed names, uids and times.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use serde_json::{Value, json};
use switchboard_crds::{Meeting, SfuPool};
use switchboard_heartbeat::{Heartbeat, Load, SfuState};

use crate::labels::*;
use crate::seats::{LEDGER_ANNOTATION, Ledger, Seats};

pub const NS: &str = "tenant";

/// A fixed instant the fixtures' times are relative to.
pub fn t0() -> jiff::Timestamp {
    "2026-12-01T09:00:00Z".parse().expect("a timestamp")
}

/// `t0` plus `secs` seconds.
pub fn at(secs: i64) -> jiff::Timestamp {
    t0() + jiff::SignedDuration::from_secs(secs)
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

/// An SfuPool `name` of 100 participants per pod, 1..10 pods, Packed.
pub struct PoolBuilder(Value);

pub fn pool(name: &str) -> PoolBuilder {
    PoolBuilder(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "autoscaling": {"minReplicas": 1, "maxReplicas": 10},
            "capacity": {"participantsPerPod": 100},
            "remediation": {"heartbeatTimeout": "4s"},
            "drain": {"timeout": "10m"},
            "template": {"spec": {"containers": [{"name": "sfu", "image": "switchboard/sfu-pod:test"}]}}
        }
    }))
}

impl PoolBuilder {
    /// Merges `patch` into the pool's spec (JSON merge).
    pub fn spec(mut self, patch: Value) -> Self {
        merge(&mut self.0["spec"], patch);
        self
    }
    pub fn per_pod(self, participants: u64) -> Self {
        self.spec(json!({"capacity": {"participantsPerPod": participants}}))
    }
    pub fn replicas(self, min: u32, max: u32) -> Self {
        self.spec(json!({"autoscaling": {"minReplicas": min, "maxReplicas": max}}))
    }
    pub fn labels(mut self, labels: Value) -> Self {
        self.0["metadata"]["labels"] = labels;
        self
    }
    pub fn status(mut self, status: Value) -> Self {
        self.0["status"] = status;
        self
    }
    pub fn build(self) -> SfuPool {
        serde_json::from_value(self.0).expect("a valid SfuPool")
    }
}

/// A Meeting `name` of 10 expected participants, created at `t0`, no status.
pub struct MeetingBuilder(Value);

pub fn meeting(name: &str) -> MeetingBuilder {
    MeetingBuilder(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1,
            "creationTimestamp": t0().to_string(),
        },
        "spec": {"title": name, "host": "host-1", "participants": {"expected": 10, "max": 20}}
    }))
}

impl MeetingBuilder {
    pub fn spec(mut self, patch: Value) -> Self {
        merge(&mut self.0["spec"], patch);
        self
    }
    pub fn expected(self, participants: u64) -> Self {
        self.spec(json!({"participants": {"expected": participants, "max": participants.max(2) * 2}}))
    }
    /// Scheduled to start at `start`.
    pub fn starts(self, start: jiff::Timestamp) -> Self {
        self.spec(json!({"schedule": {"start": start.to_string()}}))
    }
    /// Merges `patch` into the status.
    pub fn status(mut self, patch: Value) -> Self {
        if self.0["status"].is_null() {
            self.0["status"] = json!({});
        }
        merge(&mut self.0["status"], patch);
        self
    }
    pub fn uid(mut self, uid: &str) -> Self {
        self.0["metadata"]["uid"] = json!(uid);
        self
    }
    pub fn build(self) -> Meeting {
        serde_json::from_value(self.0).expect("a valid Meeting")
    }
}

/// An SFU pod `name` of `pool`, Running and Ready on node `node-a`.
pub struct PodBuilder(Pod);

pub fn sfu_pod(pool: &SfuPool, name: &str) -> PodBuilder {
    let pool_name = pool.name_any();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "creationTimestamp": t0().to_string(),
            "labels": {POOL_LABEL: pool_name, COMPONENT_LABEL: SFU_COMPONENT, MANAGED_BY_LABEL: MANAGED_BY},
            "ownerReferences": [{
                "apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool", "name": pool_name,
                "uid": pool.metadata.uid.clone().unwrap_or_default(), "controller": true,
            }],
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "sfu", "image": "switchboard/sfu-pod:test"}]},
        "status": {"phase": "Running", "startTime": t0().to_string(),
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }))
    .expect("a valid Pod");
    PodBuilder(pod)
}

impl PodBuilder {
    pub fn node(mut self, node: &str) -> Self {
        self.0.spec.as_mut().expect("spec").node_name = Some(node.into());
        self
    }
    pub fn not_ready(mut self) -> Self {
        let status = self.0.status.as_mut().expect("status");
        status.conditions = Some(vec![serde_json::from_value(json!({"type": "Ready", "status": "False"})).unwrap()]);
        self
    }
    /// Seats committed on the pod: `(meeting, uid, seats)`.
    pub fn seats(mut self, entries: &[(&str, &str, u64)]) -> Self {
        let ledger = Ledger(
            entries.iter().map(|(m, uid, n)| ((*m).to_owned(), Seats { uid: (*uid).to_owned(), seats: *n })).collect(),
        );
        self.0.annotations_mut().insert(LEDGER_ANNOTATION.into(), ledger.to_text());
        self
    }
    pub fn draining(mut self, since: jiff::Timestamp) -> Self {
        self.0.annotations_mut().insert(DRAINING_ANNOTATION.into(), since.to_string());
        self
    }
    pub fn deleting(mut self, since: jiff::Timestamp) -> Self {
        self.0.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(since));
        self
    }
    pub fn build(self) -> Pod {
        self.0
    }
}

/// The heartbeat Lease of `pod` in `pool`, renewed at `renewed` with `participants`.
pub fn heartbeat(pool: &str, pod: &str, state: SfuState, participants: u32, renewed: jiff::Timestamp) -> Lease {
    let load = Load { participants, ..Default::default() };
    Heartbeat::new(state, format!("http://{pod}:7880"), load).to_lease(NS, pod, pool, renewed, Duration::from_secs(4))
}

/// A Ready, schedulable node `name` in `zone`.
pub fn node(name: &str, zone: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {crate::caches::ZONE_LABEL: zone}},
        "status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": t0().to_string()}]},
    }))
    .expect("a valid Node")
}

impl PodBuilder {
    /// Made from the pod template of hash `hash` (`sfu_pool::build::template_hash`).
    pub fn template(mut self, hash: &str) -> Self {
        self.0.labels_mut().insert(TEMPLATE_HASH_LABEL.into(), hash.into());
        self
    }
    /// Marked busy (`true`) or idle, as the SfuPool controller marks its pods.
    pub fn busy(mut self, busy: bool) -> Self {
        self.0.labels_mut().insert(BUSY_LABEL.into(), busy.to_string());
        self.0.annotations_mut().insert(SAFE_TO_EVICT_ANNOTATION.into(), (!busy).to_string());
        self
    }
    /// Why it drains (a fault, or `ScaleDownOrUpdate`), as its drain annotation says.
    pub fn drain_reason(mut self, reason: &str) -> Self {
        self.0.annotations_mut().insert(DRAIN_REASON_ANNOTATION.into(), reason.into());
        self
    }
    /// Its `sfu` container waits for `reason` (e.g. `ErrImageNeverPull`) with the kubelet's `message`.
    pub fn waiting(mut self, reason: &str, message: &str) -> Self {
        let waiting = json!({"name": "sfu", "image": "switchboard/sfu-pod:test", "imageID": "", "ready": false,
                             "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}});
        let status = self.0.status.as_mut().expect("status");
        status.container_statuses = Some(vec![serde_json::from_value(waiting).expect("a container status")]);
        self
    }
    /// Not started by a node yet (no `startTime`).
    pub fn unstarted(mut self) -> Self {
        self.0.status.as_mut().expect("status").start_time = None;
        self
    }
}

/// `node`, cordoned (`spec.unschedulable`), as `kubectl drain` does first.
pub fn cordoned(mut node: Node) -> Node {
    node.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
    node
}

/// `node`, NotReady since `since`.
pub fn not_ready(mut node: Node, since: jiff::Timestamp) -> Node {
    let conditions = node.status.as_mut().and_then(|s| s.conditions.as_mut()).expect("conditions");
    conditions[0].status = "False".into();
    conditions[0].last_transition_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(since));
    node
}

fn store<K>(objects: &[K]) -> kube::runtime::reflector::Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, mut writer) = kube::runtime::reflector::store();
    for object in objects {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(object.clone()));
    }
    store
}

/// The shared caches holding exactly these objects (as the watches would).
pub fn caches(
    pods: &[Pod],
    leases: &[Lease],
    nodes: &[Node],
    pools: &[SfuPool],
    meetings: &[Meeting],
) -> crate::caches::Caches {
    crate::caches::Caches {
        pods: store(pods),
        leases: store(leases),
        nodes: store(nodes),
        pools: store(pools),
        meetings: store(meetings),
    }
}

/// A RecordingJob `name` of meeting `standup`, stored on a PVC `recordings`, retention Retain.
pub struct RecordingBuilder(Value);

pub fn recording(name: &str) -> RecordingBuilder {
    RecordingBuilder(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "RecordingJob",
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"), "generation": 1, "resourceVersion": "7",
        },
        "spec": {
            "meetingRef": {"name": "standup"}, "layout": "Gallery", "format": "MP4", "retries": 2,
            "storage": {"pvc": {"claimName": "recordings", "path": "/meetings"}},
        }
    }))
}

impl RecordingBuilder {
    pub fn spec(mut self, patch: Value) -> Self {
        merge(&mut self.0["spec"], patch);
        self
    }
    /// Retention Delete: its files go with it.
    pub fn retention_delete(self) -> Self {
        self.spec(json!({"retention": "Delete"}))
    }
    pub fn finalizer(mut self) -> Self {
        self.0["metadata"]["finalizers"] = json!([crate::recording_job::build::FILES_FINALIZER, "other.io/keep"]);
        self
    }
    pub fn deleting(mut self, since: jiff::Timestamp) -> Self {
        self.0["metadata"]["deletionTimestamp"] = json!(since.to_string());
        self
    }
    /// Merges `patch` into the status.
    pub fn status(mut self, patch: Value) -> Self {
        if self.0["status"].is_null() {
            self.0["status"] = json!({});
        }
        merge(&mut self.0["status"], patch);
        self
    }
    pub fn build(self) -> switchboard_crds::RecordingJob {
        serde_json::from_value(self.0).expect("a valid RecordingJob")
    }
}

/// A batch Job `name` with `status` (e.g. `{"conditions": [{"type": "Complete", "status": "True"}]}`).
pub fn job(name: &str, status: Value) -> k8s_openapi::api::batch::v1::Job {
    serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NS}, "status": status}))
    .expect("a valid Job")
}

/// A PersistentVolumeClaim `name` in `phase` (Bound, Pending, Lost).
pub fn claim(name: &str, phase: &str) -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS}, "status": {"phase": phase}}))
    .expect("a valid PersistentVolumeClaim")
}
