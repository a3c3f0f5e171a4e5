//! What the caches say about an SFU pod's health, in the terms of the pure core
//! (`switchboard_fleet::health`). The SfuPool controller, the Meeting controller
//! and the failure detector all judge pods through here, so that they agree.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use switchboard_crds::SfuPool;
use switchboard_fleet as fleet;
use switchboard_fleet::health::{self, NodeReady, NodeView, Thresholds, Verdict};
use switchboard_heartbeat::{Observed, SfuState};

use super::Caches;
use crate::labels::*;

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The taint a cluster autoscaler puts on a node it is about to remove.
pub const AUTOSCALER_REMOVAL_TAINT: &str = "ToBeDeletedByClusterAutoscaler";
/// The taint the operator puts on a node it found failed.
pub const FAILED_NODE_TAINT: &str = "switchboard.dev/node-failed";

pub fn thresholds(pool: &SfuPool) -> Thresholds {
    Thresholds {
        heartbeat_timeout: pool.spec.remediation.heartbeat_timeout.as_std(),
        node_not_ready_after: pool.spec.remediation.node_not_ready_after.as_std(),
    }
}

/// A Node as failure detection sees it.
pub fn node_view(node: &Node) -> NodeView {
    let ready =
        node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let spec = node.spec.as_ref();
    NodeView {
        ready: ready.map(|c| match c.status.as_str() {
            "True" => NodeReady::True,
            "False" => NodeReady::False,
            _ => NodeReady::Unknown,
        }),
        ready_since: ready.and_then(|c| c.last_transition_time.as_ref()).map(|t| t.0),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        being_removed: spec
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == AUTOSCALER_REMOVAL_TAINT)),
        gone: false,
    }
}

impl Caches {
    /// The node named `name`, or a gone node when the cache lacks it.
    pub fn node(&self, name: &str) -> NodeView {
        match self.nodes.get(&ObjectRef::new(name)) {
            Some(n) => node_view(&n),
            None => NodeView { gone: true, ..NodeView::healthy() },
        }
    }

    pub fn zone(&self, node: &str) -> Option<String> {
        self.nodes.get(&ObjectRef::new(node)).and_then(|n| n.labels().get(ZONE_LABEL).cloned())
    }

    /// The SFU's heartbeat, from its Lease.
    pub fn heartbeat(&self, namespace: &str, pod: &str) -> Option<Observed> {
        let lease = self.leases.get(&ObjectRef::new(pod).within(namespace))?;
        Observed::from_lease(&lease).ok()
    }

    /// A pod as the fleet core sees it, without its fault (see [`Caches::judge`])
    /// and with `allocated` left 0: parsing a full ledger is not free, and only the
    /// SfuPool controller needs it (it fills it in).
    pub fn pod_view(&self, pod: &Pod, beat: Option<&Observed>) -> fleet::PodView {
        let status = pod.status.as_ref();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let zone = node.as_deref().and_then(|n| self.zone(n));
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let phase = status.and_then(|s| s.phase.as_deref());
        fleet::PodView {
            name: pod.name_any(),
            template_hash: pod.labels().get(TEMPLATE_HASH_LABEL).cloned().unwrap_or_default(),
            node,
            zone,
            created: pod.metadata.creation_timestamp.as_ref().map_or_else(jiff::Timestamp::now, |t| t.0),
            started: status.and_then(|s| s.start_time.as_ref()).map(|t| t.0),
            ready,
            finished: matches!(phase, Some("Failed" | "Succeeded")),
            draining_since: pod.annotations().get(DRAINING_ANNOTATION).and_then(|t| t.parse().ok()),
            heartbeat: beat.and_then(|o| {
                Some(fleet::HeartbeatView {
                    state: match o.heartbeat.state {
                        SfuState::Starting => fleet::ReportedState::Starting,
                        SfuState::Ready => fleet::ReportedState::Ready,
                        SfuState::Draining => fleet::ReportedState::Draining,
                        SfuState::Unhealthy => fleet::ReportedState::Unhealthy,
                    },
                    participants: o.heartbeat.load.participants as u64,
                    tracks: (o.heartbeat.load.published_tracks + o.heartbeat.load.subscribed_tracks) as u64,
                    packets_per_second: o.heartbeat.load.packets_per_second,
                    cpu_millicores: (f64::from(o.heartbeat.load.cpu_cores.max(0.0)) * 1000.0).round() as u64,
                    renewed: o.renewed?,
                })
            }),
            allocated: 0,
            fault: None,
        }
    }

    /// The pod's view with its fault filled in, and the verdict behind it.
    pub fn judge(
        &self,
        pool: &SfuPool,
        pod: &Pod,
        beat: Option<&Observed>,
        now: jiff::Timestamp,
    ) -> (fleet::PodView, Verdict) {
        let mut view = self.pod_view(pod, beat);
        let node = view.node.as_deref().map(|n| self.node(n));
        let deleted = pod.metadata.deletion_timestamp.as_ref().map(|t| t.0);
        let verdict = health::pod_fault(&view, deleted, node.as_ref(), &thresholds(pool), now);
        view.fault = verdict.fault.map(|d| d.fault);
        (view, verdict)
    }

    /// Judges a pod by name; a pod missing from the cache has been deleted.
    pub fn judge_named(&self, pool: &SfuPool, namespace: &str, pod: &str, now: jiff::Timestamp) -> Verdict {
        match self.pods.get(&ObjectRef::new(pod).within(namespace)) {
            Some(p) => self.judge(pool, &p, self.heartbeat(namespace, pod).as_ref(), now).1,
            None => Verdict {
                fault: Some(health::Detected { fault: health::Fault::PodDeleted, at: now }),
                recheck_after: None,
            },
        }
    }
}

/// Strips what the operator never reads from a Node (images are most of its size).
pub fn slim_node(node: &mut Node) {
    node.managed_fields_mut().clear();
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}
