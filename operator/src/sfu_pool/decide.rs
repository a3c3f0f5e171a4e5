//! Decide (pure): from what was observed, the fleet plan (`switchboard_fleet::plan`)
//! and what carrying it out means — the `spec.replicas` write, the pods to create,
//! the busy marks, the drains and why, the deletions (evicted, or deleted outright
//! with a short grace), the Events each of them gives, and when to look again.

use std::time::Duration;

use kube::runtime::events::EventType;
use serde_json::{Value, json};
use switchboard_crds::SfuPool;
use switchboard_crds::sfu_pool::{AutoscalingMode, PlacementStrategy};
use switchboard_fleet as fleet;

use super::observe::{Observed, PodWrite, earliest};
use crate::labels::*;

/// How soon a pool whose caches trail our own pod writes is looked at again.
pub const CACHE_WAIT: Duration = Duration::from_millis(250);
/// How soon an eviction the disruption budget refused is tried again.
pub const EVICTION_RETRY: Duration = Duration::from_secs(1);
/// Grace period of an SFU pod deleted outright (Unhealthy or past its drain timeout).
pub const DELETE_GRACE_SECONDS: u32 = 10;
/// The requeue's bounds: a pool is looked at again at least this often, and never sooner.
const RECHECK_MAX: Duration = Duration::from_secs(60);
const RECHECK_MIN: Duration = Duration::from_millis(200);

/// An Event about the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

impl Event {
    pub fn normal(reason: &str, note: String) -> Self {
        Self { type_: EventType::Normal, reason: reason.into(), note }
    }
    pub fn warning(reason: &str, note: String) -> Self {
        Self { type_: EventType::Warning, reason: reason.into(), note }
    }
}

/// A merge patch of a pod's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPatch {
    pub pod: String,
    pub patch: Value,
}

/// A `spec.replicas` write of the built-in autoscaler.
#[derive(Clone, Debug, PartialEq)]
pub struct Scale {
    pub replicas: u32,
    pub event: Event,
}

/// A pod to drain: its drain annotations, why (the metric's reason), and its Event.
#[derive(Clone, Debug, PartialEq)]
pub struct Drain {
    pub pod: String,
    pub patch: Value,
    pub reason: &'static str,
    pub event: Event,
}

/// A pod to remove: through the Eviction API (which honours the disruption
/// budget) or deleted outright with a short grace, only if it is still `uid`.
#[derive(Clone, Debug, PartialEq)]
pub struct Deletion {
    pub pod: String,
    pub uid: Option<String>,
    pub evict: bool,
    pub grace_seconds: Option<u32>,
    /// The metric's reason (`fleet::DeleteReason`).
    pub reason: &'static str,
    pub event: Event,
}

/// The writes that carry out a plan, in the order they are made.
#[derive(Clone, Debug)]
pub struct Actions {
    /// What the plan says, for the status.
    pub plan: fleet::Plan,
    pub scale: Option<Scale>,
    /// New pods of the current template.
    pub create: u32,
    /// Busy labels and safe-to-evict annotations that differ, set before any
    /// eviction, so that an emptied pod is no longer held by the disruption budget.
    pub mark: Vec<PodPatch>,
    pub drain: Vec<Drain>,
    pub delete: Vec<Deletion>,
    /// Pods taken back from draining (scale-up before creating new ones).
    pub undrain: Vec<PodPatch>,
    /// When the plan or a pod's health may change with nothing new observed.
    pub recheck: Option<Duration>,
}

#[derive(Clone, Debug)]
pub enum Pods {
    /// The caches do not show these writes of ours yet: acting now could do them twice.
    Wait(Vec<PodWrite>),
    Act(Box<Actions>),
}

#[derive(Clone, Debug)]
pub struct Decision {
    /// Apply the pool's child objects (once per generation).
    pub children: bool,
    pub pods: Pods,
}

impl Decision {
    pub fn actions(&self) -> Option<&Actions> {
        match &self.pods {
            Pods::Act(a) => Some(a),
            Pods::Wait(_) => None,
        }
    }
}

/// The pool's spec, as the fleet core takes it.
pub fn policy(pool: &SfuPool, template_hash: &str, startup_timeout: Duration) -> fleet::Policy {
    let a = &pool.spec.autoscaling;
    fleet::Policy {
        mode: match a.mode {
            AutoscalingMode::Builtin => fleet::Mode::Builtin,
            AutoscalingMode::External => fleet::Mode::External,
        },
        min_replicas: a.min_replicas.max(0) as u32,
        max_replicas: a.max_replicas.max(0) as u32,
        spec_replicas: pool.spec.replicas.map(|r| r.max(0) as u32),
        participants_per_pod: pool.spec.capacity.participants_per_pod.max(1) as u64,
        packets_per_second_per_pod: pool.spec.capacity.packets_per_second_per_pod.map(|n| n.max(1) as u64),
        cpu_millicores_per_pod: pool.spec.capacity.cpu_millicores_per_pod.map(|n| n.max(1) as u64),
        buffer: match &a.buffer {
            Some(b) if b.participants.is_some() => {
                fleet::Buffer::Participants(b.participants.unwrap_or(0).max(0) as u64)
            }
            Some(b) if b.percent.is_some() => fleet::Buffer::Percent(b.percent.unwrap_or(0).max(0) as u64),
            _ => fleet::Buffer::None,
        },
        scale_down_stabilization: a.scale_down_stabilization.as_std(),
        strategy: match pool.spec.placement.strategy {
            PlacementStrategy::Packed => fleet::Strategy::Packed,
            PlacementStrategy::Distributed => fleet::Strategy::Distributed,
        },
        heartbeat_timeout: pool.spec.remediation.heartbeat_timeout.as_std(),
        drain_timeout: pool.spec.drain.timeout.as_std(),
        startup_timeout,
        template_hash: template_hash.to_owned(),
        evict_failed: pool.spec.remediation.evict_pods,
    }
}

/// Decides one reconcile of `pool` (`memory`: the scale-down window's, kept between reconciles).
pub fn decide(
    pool: &SfuPool,
    observed: &Observed,
    policy: &fleet::Policy,
    now: jiff::Timestamp,
    memory: &mut fleet::ScaleMemory,
) -> Decision {
    let children = observed.children_applied != pool.metadata.generation;
    if !observed.pending.is_empty() {
        return Decision { children, pods: Pods::Wait(observed.pending.clone()) };
    }
    let plan = fleet::plan(policy, &observed.views, observed.reserved, now, memory);
    let actions = Actions {
        scale: scale(pool, &plan, policy),
        create: plan.create,
        mark: marks(&plan, observed),
        drain: drains(&plan, observed, now),
        delete: deletions(&plan, observed),
        undrain: plan.cancel_drain.iter().map(|pod| undrain(pod)).collect(),
        recheck: earliest(plan.recheck_after, observed.fault_recheck),
        plan,
    };
    Decision { children, pods: Pods::Act(Box::new(actions)) }
}

fn scale(pool: &SfuPool, plan: &fleet::Plan, policy: &fleet::Policy) -> Option<Scale> {
    let replicas = plan.write_spec_replicas?;
    if policy.mode == fleet::Mode::External {
        let note = format!(
            "spec.replicas set to its start value {replicas} (minReplicas), so the scale subresource an HPA or \
             KEDA drives can read it"
        );
        return Some(Scale { replicas, event: Event::normal("ReplicasInitialized", note) });
    }
    let from = pool.spec.replicas.unwrap_or(0);
    let (reason, what) = if replicas as i32 > from { ("ScaledUp", "up") } else { ("ScaledDown", "down") };
    let why = match plan.scale_signal {
        Some(fleet::Signal::PacketRate) => format!(
            "packet rate {}/s, {} per pod",
            plan.packets_per_second,
            policy.packets_per_second_per_pod.unwrap_or(0)
        ),
        Some(fleet::Signal::Cpu) => {
            format!("CPU {}m, {}m per pod", plan.cpu_millicores, policy.cpu_millicores_per_pod.unwrap_or(0))
        }
        _ => format!(
            "{} participants allocated, capacity {} per pod",
            plan.allocated_participants, policy.participants_per_pod
        ),
    };
    let note = format!("scaled {what} from {from} to {replicas} pods: {why}");
    Some(Scale { replicas, event: Event::normal(reason, note) })
}

/// Busy pods: not evictable by a cluster autoscaler, and covered by the disruption budget.
fn marks(plan: &fleet::Plan, observed: &Observed) -> Vec<PodPatch> {
    plan.pods
        .iter()
        .filter_map(|p| {
            let facts = observed.pods.get(&p.name)?;
            let (safe, busy) = if p.safe_to_evict { ("true", "false") } else { ("false", "true") };
            let current = (facts.safe_to_evict.as_deref(), facts.busy.as_deref());
            (current != (Some(safe), Some(busy))).then(|| PodPatch {
                pod: p.name.clone(),
                patch: json!({"metadata": {"annotations": {SAFE_TO_EVICT_ANNOTATION: safe}, "labels": {BUSY_LABEL: busy}}}),
            })
        })
        .collect()
}

fn drains(plan: &fleet::Plan, observed: &Observed, now: jiff::Timestamp) -> Vec<Drain> {
    plan.start_drain
        .iter()
        .map(|pod| {
            let fault = observed.views.iter().find(|v| &v.name == pod).and_then(|v| v.fault);
            let reason = fault.map_or("ScaleDownOrUpdate", |f| f.as_str());
            let note = match fault {
                None => format!("draining pod {pod}: it takes no new meetings and is deleted once empty"),
                Some(_) => {
                    format!("draining pod {pod} ({reason}): its meetings move to healthy pods, then it is evicted")
                }
            };
            let patch = json!({"metadata": {"annotations": {
                DRAINING_ANNOTATION: now.to_string(),
                DRAIN_REASON_ANNOTATION: reason,
            }}});
            Drain { pod: pod.clone(), patch, reason, event: Event::normal("PodDraining", note) }
        })
        .collect()
}

/// A deletion's metric reason, Event type and explanation.
fn delete_reason(reason: fleet::DeleteReason) -> (&'static str, EventType, &'static str) {
    match reason {
        fleet::DeleteReason::Unhealthy => {
            ("Unhealthy", EventType::Warning, "its heartbeat expired or it failed; replacing it")
        }
        fleet::DeleteReason::Drained => ("Drained", EventType::Normal, "drained: no participants left"),
        fleet::DeleteReason::DrainTimeout => {
            ("DrainTimeout", EventType::Warning, "the drain timeout expired with participants on it")
        }
        fleet::DeleteReason::ScaleDown => ("ScaleDown", EventType::Normal, "not needed and empty"),
        fleet::DeleteReason::Outdated => ("Outdated", EventType::Normal, "replaced by a pod of the new template"),
        fleet::DeleteReason::Evacuated => {
            ("Evacuated", EventType::Normal, "its node failed or is draining, and its meetings moved")
        }
    }
}

fn deletions(plan: &fleet::Plan, observed: &Observed) -> Vec<Deletion> {
    plan.delete
        .iter()
        .filter_map(|(pod, reason)| {
            let facts = observed.pods.get(pod)?;
            let (label, type_, why) = delete_reason(*reason);
            // A dead SFU, or one past its drain timeout, is deleted outright, without
            // waiting out its grace period (the drain timeout): it has nothing to
            // finish. Any other pod goes through the Eviction API.
            let evict = !matches!(reason, fleet::DeleteReason::Unhealthy | fleet::DeleteReason::DrainTimeout);
            let verb = if evict { "evicted" } else { "deleted" };
            Some(Deletion {
                pod: pod.clone(),
                uid: facts.uid.clone(),
                evict,
                grace_seconds: (!evict).then_some(DELETE_GRACE_SECONDS),
                reason: label,
                event: Event { type_, reason: format!("PodDeleted{label}"), note: format!("{verb} pod {pod}: {why}") },
            })
        })
        .collect()
}

fn undrain(pod: &str) -> PodPatch {
    let patch = json!({"metadata": {"annotations": {DRAINING_ANNOTATION: null, DRAIN_REASON_ANNOTATION: null}}});
    PodPatch { pod: pod.to_owned(), patch }
}

/// The Event of pods created (their names are the API server's).
pub fn created(names: &[String]) -> Event {
    let listed = if names.len() <= 5 {
        names.join(", ")
    } else {
        format!("{}, and {} more", names[..5].join(", "), names.len() - 5)
    };
    Event::normal("PodsCreated", format!("created {} SFU pod(s): {listed}", names.len()))
}

/// When to reconcile again: soon after an eviction the disruption budget refused,
/// else at the next moment anything may change, within bounds.
pub fn requeue(recheck: Option<Duration>, blocked_evictions: bool) -> Duration {
    let next = if blocked_evictions { Some(EVICTION_RETRY) } else { recheck };
    next.unwrap_or(RECHECK_MAX).clamp(RECHECK_MIN, RECHECK_MAX)
}
