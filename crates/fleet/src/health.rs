//! Failure detection (pure, explicit time): whether an SFU pod has failed, or is
//! leaving with its node, so that its meetings must move elsewhere.
//!
//! Every fault has the moment it became detectable (a threshold elapsed, a
//! deletion began), which is where migration latency counts from. A node that is
//! NotReady for less than its threshold is no fault: a flapping node moves nothing.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::{PodView, ReportedState};

/// A node's Ready condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeReady {
    True,
    False,
    Unknown,
}

/// What failure detection needs of the node a pod runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// None when the node reports no Ready condition yet.
    pub ready: Option<NodeReady>,
    /// When the Ready condition last changed.
    pub ready_since: Option<Timestamp>,
    /// Cordoned (`spec.unschedulable`), as `kubectl drain` does first.
    pub unschedulable: bool,
    /// Tainted by a cluster autoscaler that is removing it.
    pub being_removed: bool,
    /// The Node object is gone although the pod still names it.
    pub gone: bool,
}

impl NodeView {
    pub fn healthy() -> Self {
        Self {
            ready: Some(NodeReady::True),
            ready_since: None,
            unschedulable: false,
            being_removed: false,
            gone: false,
        }
    }

    /// Whether new meetings may go to pods on this node.
    pub fn schedulable(&self) -> bool {
        self.ready == Some(NodeReady::True) && !self.unschedulable && !self.being_removed && !self.gone
    }
}

/// Why a pod's meetings must move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The pod is being deleted or evicted, or is gone.
    PodDeleted,
    /// The pod failed or exited.
    PodFailed,
    /// Its node has been NotReady or Unknown for longer than the threshold, or is gone.
    NodeNotReady,
    /// The SFU reported itself unhealthy.
    SfuUnhealthy,
    /// The SFU's heartbeat Lease expired.
    HeartbeatExpired,
    /// Its node is being drained (cordoned, or removed by a cluster autoscaler).
    NodeDrained,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::PodDeleted => "PodDeleted",
            Fault::PodFailed => "PodFailed",
            Fault::NodeNotReady => "NodeNotReady",
            Fault::SfuUnhealthy => "SfuUnhealthy",
            Fault::HeartbeatExpired => "HeartbeatExpired",
            Fault::NodeDrained => "NodeDrained",
        }
    }

    /// Faults of the node rather than of the SFU: the pod itself may be fine, and
    /// it is removed through the Eviction API once its meetings have moved.
    pub fn of_node(self) -> bool {
        matches!(self, Fault::NodeNotReady | Fault::NodeDrained)
    }

    /// A planned departure: the SFU still serves, so its own participant count
    /// (clients not yet reconnected) keeps it busy too.
    pub fn planned(self) -> bool {
        self == Fault::NodeDrained
    }
}

/// Thresholds of a pool (`spec.remediation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub heartbeat_timeout: Duration,
    pub node_not_ready_after: Duration,
}

/// A fault and when it became detectable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detected {
    pub fault: Fault,
    pub at: Timestamp,
}

/// The verdict on one pod: its fault, or how long until one could appear
/// without any new observation (a threshold running out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub fault: Option<Detected>,
    pub recheck_after: Option<Duration>,
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MAX)
}

fn left(now: Timestamp, until: Timestamp) -> Duration {
    Duration::try_from(until.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// The node's own fault, if any (shared by every pod on it).
pub fn node_fault(node: &NodeView, t: &Thresholds, now: Timestamp) -> Verdict {
    if node.gone {
        return Verdict { fault: Some(Detected { fault: Fault::NodeNotReady, at: now }), recheck_after: None };
    }
    let mut verdict = Verdict::default();
    if matches!(node.ready, Some(NodeReady::False | NodeReady::Unknown)) {
        let since = node.ready_since.unwrap_or(now);
        let detectable = plus(since, t.node_not_ready_after);
        if detectable <= now {
            return Verdict {
                fault: Some(Detected { fault: Fault::NodeNotReady, at: detectable }),
                recheck_after: None,
            };
        }
        verdict.recheck_after = Some(left(now, detectable));
    }
    if node.unschedulable || node.being_removed {
        verdict.fault = Some(Detected { fault: Fault::NodeDrained, at: now });
    }
    verdict
}

/// Decides whether a pod has failed. `deleted_at` is its deletion timestamp;
/// `node` the node it runs on (None while unscheduled).
pub fn pod_fault(
    pod: &PodView,
    deleted_at: Option<Timestamp>,
    node: Option<&NodeView>,
    t: &Thresholds,
    now: Timestamp,
) -> Verdict {
    let at_now = |fault| Verdict { fault: Some(Detected { fault, at: now }), recheck_after: None };
    if let Some(at) = deleted_at {
        return Verdict { fault: Some(Detected { fault: Fault::PodDeleted, at: at.min(now) }), recheck_after: None };
    }
    if pod.finished {
        return at_now(Fault::PodFailed);
    }
    let on_node = node.map(|n| node_fault(n, t, now)).unwrap_or_default();
    if let Some(d) = on_node.fault.filter(|d| d.fault == Fault::NodeNotReady) {
        return Verdict { fault: Some(d), recheck_after: None };
    }
    let mut recheck = on_node.recheck_after;
    if let Some(hb) = &pod.heartbeat {
        if hb.state == ReportedState::Unhealthy {
            return at_now(Fault::SfuUnhealthy);
        }
        let expires = plus(hb.renewed, t.heartbeat_timeout);
        if expires <= now {
            return Verdict {
                fault: Some(Detected { fault: Fault::HeartbeatExpired, at: expires }),
                recheck_after: None,
            };
        }
        let until = left(now, expires);
        recheck = Some(recheck.map_or(until, |r| r.min(until)));
    }
    Verdict { fault: on_node.fault, recheck_after: recheck }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeartbeatView;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    const TH: Thresholds =
        Thresholds { heartbeat_timeout: Duration::from_secs(10), node_not_ready_after: Duration::from_secs(30) };

    fn pod(renewed: Timestamp) -> PodView {
        PodView {
            name: "a".into(),
            template_hash: "v1".into(),
            node: Some("n1".into()),
            zone: None,
            created: t(-100),
            started: Some(t(-99)),
            ready: true,
            finished: false,
            draining_since: None,
            heartbeat: Some(HeartbeatView {
                state: ReportedState::Ready,
                participants: 5,
                tracks: 0,
                packets_per_second: 0,
                cpu_millicores: 0,
                renewed,
            }),
            allocated: 5,
            fault: None,
        }
    }

    fn not_ready(since: Timestamp) -> NodeView {
        NodeView { ready: Some(NodeReady::False), ready_since: Some(since), ..NodeView::healthy() }
    }

    #[test]
    fn a_node_fault_counts_from_the_threshold_not_before() {
        let node = not_ready(t(0));
        let early = pod_fault(&pod(t(20)), None, Some(&node), &TH, t(20));
        assert_eq!(early.fault, None, "NotReady for 20 s of 30: a flap, nothing moves");
        assert_eq!(early.recheck_after, Some(Duration::from_secs(10)), "look again when the threshold runs out");
        let late = pod_fault(&pod(t(31)), None, Some(&node), &TH, t(31));
        assert_eq!(late.fault, Some(Detected { fault: Fault::NodeNotReady, at: t(30) }));
        let unknown = NodeView { ready: Some(NodeReady::Unknown), ..not_ready(t(0)) };
        assert_eq!(pod_fault(&pod(t(40)), None, Some(&unknown), &TH, t(40)).fault.unwrap().fault, Fault::NodeNotReady);
    }

    #[test]
    fn a_node_back_to_ready_within_the_threshold_is_no_fault() {
        let back = NodeView { ready: Some(NodeReady::True), ready_since: Some(t(5)), ..NodeView::healthy() };
        assert_eq!(pod_fault(&pod(t(60)), None, Some(&back), &TH, t(60)).fault, None);
    }

    #[test]
    fn an_expired_heartbeat_is_detected_when_it_expires() {
        let v = pod_fault(&pod(t(0)), None, Some(&NodeView::healthy()), &TH, t(4));
        assert_eq!(v.fault, None);
        assert_eq!(v.recheck_after, Some(Duration::from_secs(6)));
        let v = pod_fault(&pod(t(0)), None, Some(&NodeView::healthy()), &TH, t(12));
        assert_eq!(v.fault, Some(Detected { fault: Fault::HeartbeatExpired, at: t(10) }));
    }

    #[test]
    fn the_worst_fault_wins() {
        let mut p = pod(t(0));
        p.heartbeat.as_mut().unwrap().state = ReportedState::Unhealthy;
        assert_eq!(pod_fault(&p, None, None, &TH, t(1)).fault.unwrap().fault, Fault::SfuUnhealthy);
        let cordoned = NodeView { unschedulable: true, ..NodeView::healthy() };
        assert_eq!(pod_fault(&pod(t(0)), None, Some(&cordoned), &TH, t(1)).fault.unwrap().fault, Fault::NodeDrained);
        assert_eq!(
            pod_fault(&pod(t(0)), None, Some(&not_ready(t(-60))), &TH, t(1)).fault.unwrap().fault,
            Fault::NodeNotReady,
            "a node that failed outranks the SFU's own word"
        );
        p.finished = true;
        assert_eq!(pod_fault(&p, None, None, &TH, t(1)).fault.unwrap().fault, Fault::PodFailed);
        assert_eq!(
            pod_fault(&p, Some(t(-3)), None, &TH, t(1)).fault,
            Some(Detected { fault: Fault::PodDeleted, at: t(-3) })
        );
        let gone = NodeView { gone: true, ..NodeView::healthy() };
        assert_eq!(pod_fault(&pod(t(0)), None, Some(&gone), &TH, t(1)).fault.unwrap().fault, Fault::NodeNotReady);
    }

    #[test]
    fn only_ready_uncordoned_nodes_take_new_meetings() {
        assert!(NodeView::healthy().schedulable());
        assert!(!not_ready(t(0)).schedulable(), "not even inside the threshold");
        assert!(!NodeView { being_removed: true, ..NodeView::healthy() }.schedulable());
    }
}
