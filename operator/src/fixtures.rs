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
