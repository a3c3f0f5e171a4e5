//! The pure core of the SfuPool controller (no Kubernetes client, no I/O, explicit
//! time): from what the operator observes of a pool's pods and their heartbeats,
//! decide each pod's state, how many pods the pool needs, which pods to create,
//! drain or delete, and what its status says.
//!
//! Rules, after Agones' Fleet and FleetAutoscaler, adapted to meetings:
//! * Built-in autoscaling keeps `ready capacity >= allocated + reserved + buffer`,
//!   clamped to `[min, max]`. It scales up at once and down only to the highest
//!   recommendation seen during the stabilisation window.
//! * Seats are not the only load: a pool may also set a packet rate and a CPU use
//!   per pod, and then needs as many pods as the largest of the three signals asks
//!   for (a few participants with many high-bitrate tracks fill a pod before its
//!   seats do). The plan says which signal drove it ([`Signal`]).
//! * A pod that hosts participants is never deleted: it is drained (no new
//!   meetings) and deleted when empty or when its drain timeout expires.
//! * Scale-down removes starting pods first, then empty pods, then drains busy
//!   ones, ordered by the placement strategy (Packed empties the least-used nodes;
//!   Distributed takes from the most crowded node and zone).
//! * A template change surges new pods and retires one old pod per new Ready pod.

pub mod health;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Builtin,
    External,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Packed,
    Distributed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    None,
    Participants(u64),
    Percent(u64),
}

/// The pool's spec, reduced to what the decisions need.
#[derive(Clone, Debug)]
pub struct Policy {
    pub mode: Mode,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// `spec.replicas` as last written (by us in Builtin mode, by HPA/users in External).
    pub spec_replicas: Option<u32>,
    pub participants_per_pod: u64,
    /// Packets per second (received plus forwarded) one pod should carry; None: seats only.
    pub packets_per_second_per_pod: Option<u64>,
    /// CPU one pod should use, in millicores; None: not a signal.
    pub cpu_millicores_per_pod: Option<u64>,
    pub buffer: Buffer,
    pub scale_down_stabilization: Duration,
    pub strategy: Strategy,
    pub heartbeat_timeout: Duration,
    pub drain_timeout: Duration,
    /// A pod without a first heartbeat after this long is Unhealthy.
    pub startup_timeout: Duration,
    /// Hash of the current pod template; pods with another hash are outdated.
    pub template_hash: String,
    /// Remove pods of a failed node (once their meetings moved) rather than leave them.
    pub evict_failed: bool,
}

/// The SFU's own word in its heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportedState {
    Starting,
    Ready,
    Draining,
    Unhealthy,
}

#[derive(Clone, Debug)]
pub struct HeartbeatView {
    pub state: ReportedState,
    pub participants: u64,
    pub tracks: u64,
    /// RTP packets received plus forwarded per second.
    pub packets_per_second: u64,
    pub cpu_millicores: u64,
    pub renewed: Timestamp,
}

/// What decided the built-in autoscaler's pod count: the signal asking for the most pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Signal {
    /// Allocated plus reserved participants against `participantsPerPod` (also the
    /// answer when the load signals ask for no more).
    #[default]
    Participants,
    /// The pool's packet rate against `packetsPerSecondPerPod`.
    PacketRate,
    /// The pool's CPU use against `cpuMillicoresPerPod`.
    Cpu,
}

/// The pool's load as its healthy pods report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolLoad {
    /// Participants of all pods (placed or reported, whichever is more).
    pub participants: u64,
    pub reserved: u64,
    pub packets_per_second: u64,
    pub cpu_millicores: u64,
}

/// One pod of the pool as observed.
#[derive(Clone, Debug)]
pub struct PodView {
    pub name: String,
    pub template_hash: String,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub created: Timestamp,
    /// When the node started the pod (`status.startTime`); None while it waits for
    /// a node. The start-up timeout counts from here: a pod waiting for the
    /// scheduler is not unhealthy, and replacing it would not help.
    pub started: Option<Timestamp>,
    /// The pod's Ready condition.
    pub ready: bool,
    /// Phase Failed or Succeeded: it will not serve again.
    pub finished: bool,
    /// When the operator started draining it (its drain annotation).
    pub draining_since: Option<Timestamp>,
    pub heartbeat: Option<HeartbeatView>,
    /// Participants of meetings placed on it (its placement ledger), which may
    /// not have joined yet: a pod with placements is busy even while empty.
    pub allocated: u64,
    /// A failure found by [`health::pod_fault`]: its meetings must move.
    pub fault: Option<health::Fault>,
}

/// Lifecycle state of a pod (the API's `SfuPodState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PodState {
    Starting,
    Ready,
    Draining,
    Drained,
    Unhealthy,
}

/// Why a pod is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// Heartbeat expired, never came, the SFU said so, or the pod failed.
    Unhealthy,
    /// Drained: no participants left.
    Drained,
    /// Drain timeout expired with participants still on it.
    DrainTimeout,
    /// Not needed and empty.
    ScaleDown,
    /// Outdated template and empty.
    Outdated,
    /// On a failed or draining node, and its meetings have moved.
    Evacuated,
}

/// Memory the stabilisation window needs between reconciles.
#[derive(Clone, Debug, Default)]
pub struct ScaleMemory {
    since: Option<Timestamp>,
    recommendations: VecDeque<(Timestamp, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalingLimit {
    pub reason: &'static str,
    pub message: String,
}

/// Per-pod outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub name: String,
    pub state: PodState,
    pub participants: u64,
    pub tracks: u64,
    /// Whether a cluster autoscaler may evict it (empty).
    pub safe_to_evict: bool,
}

/// What to do, and what the status says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The value to write to `spec.replicas`: in Builtin mode when it differs; in
    /// External mode only when it is unset (the start value, `minReplicas`), because the
    /// scale subresource that HPAs and KEDA use cannot read a pool without it.
    pub write_spec_replicas: Option<u32>,
    /// Active pods the pool aims for.
    pub desired: u32,
    /// New pods of the current template to create.
    pub create: u32,
    pub delete: Vec<(String, DeleteReason)>,
    pub start_drain: Vec<String>,
    pub cancel_drain: Vec<String>,
    pub pods: Vec<PodPlan>,
    pub allocated_participants: u64,
    pub allocated_tracks: u64,
    pub reserved_participants: u64,
    /// Packets per second and CPU of the pods that are not Unhealthy.
    pub packets_per_second: u64,
    pub cpu_millicores: u64,
    /// Builtin mode: the signal that asked for the most pods.
    pub scale_signal: Option<Signal>,
    pub ready_capacity: u64,
    pub scaling_limited: Option<ScalingLimit>,
    /// Pods of an older template still present.
    pub outdated: u32,
    /// When the plan may change without any new observation (an expiry, the end
    /// of a window): the controller requeues then.
    pub recheck_after: Option<Duration>,
}

impl Plan {
    pub fn count(&self, state: PodState) -> u32 {
        self.pods.iter().filter(|p| p.state == state).count() as u32
    }
}

fn since(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(then)).unwrap_or(Duration::ZERO)
}

/// Time left until `then + after`, as seen at `now` (zero when past).
fn until(now: Timestamp, then: Timestamp, after: Duration) -> Duration {
    after.saturating_sub(since(now, then))
}

/// Decides a pod's state.
pub fn pod_state(policy: &Policy, pod: &PodView, now: Timestamp) -> PodState {
    if pod.finished {
        return PodState::Unhealthy;
    }
    match pod.fault {
        Some(f) if f.of_node() => {
            // The node's word, not the SFU's: a partitioned SFU may still heartbeat.
            let reported = pod.heartbeat.as_ref().map_or(0, |h| h.participants);
            let busy = pod.allocated > 0 || (f.planned() && reported > 0);
            return if busy { PodState::Draining } else { PodState::Drained };
        }
        Some(_) => return PodState::Unhealthy,
        None => {}
    }
    let Some(hb) = &pod.heartbeat else {
        if pod.started.is_some_and(|started| since(now, started) >= policy.startup_timeout) {
            return PodState::Unhealthy;
        }
        return match pod.draining_since {
            Some(_) if pod.allocated == 0 => PodState::Drained,
            Some(_) => PodState::Draining,
            None => PodState::Starting,
        };
    };
    let fresh = now.duration_since(hb.renewed)
        < SignedDuration::try_from(policy.heartbeat_timeout).unwrap_or(SignedDuration::MAX);
    if !fresh || hb.state == ReportedState::Unhealthy {
        return PodState::Unhealthy;
    }
    if pod.draining_since.is_some() || hb.state == ReportedState::Draining {
        return if hb.participants == 0 && pod.allocated == 0 { PodState::Drained } else { PodState::Draining };
    }
    if pod.ready && hb.state == ReportedState::Ready { PodState::Ready } else { PodState::Starting }
}

/// Pods needed for `participants`, rounding up.
fn pods_for(participants: u64, per_pod: u64) -> u64 {
    participants.div_ceil(per_pod.max(1))
}

/// Pods each signal asks for, the buffer included: the participants' buffer as is; for
/// the load signals a percentage buffer scales the load, a participants buffer adds the
/// pods those participants would take.
fn needed_pods(policy: &Policy, load: &PoolLoad) -> [(Signal, u64, String); 3] {
    let seats = load.participants.saturating_add(load.reserved);
    let seat_buffer = match policy.buffer {
        Buffer::None => 0,
        Buffer::Participants(n) => n,
        Buffer::Percent(p) => seats.saturating_mul(p).div_ceil(100),
    };
    let by_load = |total: u64, per_pod: Option<u64>| match per_pod {
        None | Some(0) => 0,
        Some(per_pod) => match policy.buffer {
            Buffer::None => pods_for(total, per_pod),
            Buffer::Percent(p) => pods_for(total.saturating_mul(100 + p).div_ceil(100), per_pod),
            Buffer::Participants(n) => {
                pods_for(total, per_pod).saturating_add(pods_for(n, policy.participants_per_pod))
            }
        },
    };
    [
        (
            Signal::Participants,
            pods_for(seats.saturating_add(seat_buffer), policy.participants_per_pod),
            format!("{seats} participants allocated or reserved plus a buffer of {seat_buffer}"),
        ),
        (
            Signal::PacketRate,
            by_load(load.packets_per_second, policy.packets_per_second_per_pod),
            format!(
                "{} packets/s at {} per pod",
                load.packets_per_second,
                policy.packets_per_second_per_pod.unwrap_or(0)
            ),
        ),
        (
            Signal::Cpu,
            by_load(load.cpu_millicores, policy.cpu_millicores_per_pod),
            format!("{}m CPU at {}m per pod", load.cpu_millicores, policy.cpu_millicores_per_pod.unwrap_or(0)),
        ),
    ]
}

/// The replica count the pool aims for, whether a limit cut it, and (Builtin) the
/// signal that drove it.
fn desired_replicas(
    policy: &Policy,
    load: &PoolLoad,
    now: Timestamp,
    memory: &mut ScaleMemory,
) -> (u32, Option<ScalingLimit>, Option<Duration>, Option<Signal>) {
    let (min, max) = (policy.min_replicas, policy.max_replicas.max(policy.min_replicas));
    match policy.mode {
        Mode::External => {
            let asked = policy.spec_replicas.unwrap_or(min);
            let desired = asked.clamp(min, max);
            let limit = (desired != asked).then(|| ScalingLimit {
                reason: if asked > max { "MaxReplicas" } else { "MinReplicas" },
                message: format!("spec.replicas {asked} is outside [{min}, {max}]; running {desired}"),
            });
            (desired, limit, None, None)
        }
        Mode::Builtin => {
            // The first of the largest wins, so seats drive when the signals tie.
            let [first, rest @ ..] = needed_pods(policy, load);
            let (signal, needed, why) = rest.into_iter().fold(first, |a, b| if b.1 > a.1 { b } else { a });
            let raw = needed.clamp(min as u64, max as u64) as u32;
            let limit = (needed > max as u64).then(|| ScalingLimit {
                reason: "MaxReplicas",
                message: format!("{why} need {needed} pods; maxReplicas is {max}"),
            });
            let current = policy.spec_replicas.unwrap_or(min).clamp(min, max);
            let window = policy.scale_down_stabilization;
            let started = *memory.since.get_or_insert(now);
            memory.recommendations.push_back((now, raw));
            while memory.recommendations.front().is_some_and(|(t, _)| since(now, *t) > window) {
                memory.recommendations.pop_front();
            }
            if raw >= current {
                return (raw, limit, None, Some(signal));
            }
            // Scale down only to the highest recommendation of the window; until the
            // memory spans a whole window (after a restart), not below the current count.
            let mut floor = memory.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(raw);
            let mut recheck = memory
                .recommendations
                .iter()
                .filter(|(_, r)| *r > raw)
                .map(|(t, _)| until(now, *t, window) + Duration::from_millis(1))
                .min();
            if since(now, started) < window {
                floor = floor.max(current);
                recheck = Some(until(now, started, window) + Duration::from_millis(1));
            }
            (raw.max(floor).min(current.max(raw)), limit, recheck, Some(signal))
        }
    }
}

/// Orders removal candidates: first removed first.
fn removal_order(policy: &Policy, candidates: &mut [&PodPlanInput<'_>], all: &[PodPlanInput<'_>]) {
    let mut per_node: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
    let mut per_zone: BTreeMap<&str, u32> = BTreeMap::new();
    for p in all.iter().filter(|p| matches!(p.state, PodState::Starting | PodState::Ready)) {
        let node = per_node.entry(p.pod.node.as_deref().unwrap_or("")).or_default();
        node.0 += 1;
        node.1 += p.participants;
        *per_zone.entry(p.pod.zone.as_deref().unwrap_or("")).or_default() += 1;
    }
    let node_of = |p: &PodPlanInput<'_>| per_node.get(p.pod.node.as_deref().unwrap_or("")).copied().unwrap_or_default();
    let zone_of = |p: &PodPlanInput<'_>| per_zone.get(p.pod.zone.as_deref().unwrap_or("")).copied().unwrap_or_default();
    candidates.sort_by(|a, b| {
        // Not yet serving, then empty, then busy (drained, not deleted).
        let class = |p: &PodPlanInput<'_>| (p.state != PodState::Starting, p.participants > 0);
        class(a)
            .cmp(&class(b))
            .then_with(|| match policy.strategy {
                // Least-used nodes first, so that whole nodes empty out.
                Strategy::Packed => node_of(a).1.cmp(&node_of(b).1).then(node_of(a).0.cmp(&node_of(b).0)),
                // Most crowded zone and node first, so that the spread stays even.
                Strategy::Distributed => zone_of(b).cmp(&zone_of(a)).then(node_of(b).0.cmp(&node_of(a).0)),
            })
            .then(a.participants.cmp(&b.participants))
            .then(b.pod.created.cmp(&a.pod.created))
            .then(a.pod.name.cmp(&b.pod.name))
    });
}

struct PodPlanInput<'a> {
    pod: &'a PodView,
    state: PodState,
    participants: u64,
}

/// Plans one reconcile of a pool.
pub fn plan(policy: &Policy, pods: &[PodView], reserved: u64, now: Timestamp, memory: &mut ScaleMemory) -> Plan {
    let inputs: Vec<PodPlanInput<'_>> = pods
        .iter()
        .map(|pod| {
            let state = pod_state(policy, pod, now);
            let participants = match (state, pod.fault) {
                // A dead SFU serves nobody, but meetings placed on it still need seats elsewhere.
                (PodState::Unhealthy, _) => pod.allocated,
                (_, Some(f)) if !f.planned() => pod.allocated,
                _ => pod.heartbeat.as_ref().map_or(0, |h| h.participants).max(pod.allocated),
            };
            PodPlanInput { pod, state, participants }
        })
        .collect();
    let mut plan = Plan { reserved_participants: reserved, ..Default::default() };
    for p in &inputs {
        plan.allocated_participants += p.participants;
        if p.state != PodState::Unhealthy
            && let Some(hb) = &p.pod.heartbeat
        {
            plan.allocated_tracks += hb.tracks;
            // An SFU's word, summed: a wild report must not overflow (it can at most ask for maxReplicas).
            plan.packets_per_second = plan.packets_per_second.saturating_add(hb.packets_per_second);
            plan.cpu_millicores = plan.cpu_millicores.saturating_add(hb.cpu_millicores);
        }
    }
    let load = PoolLoad {
        participants: plan.allocated_participants,
        reserved,
        packets_per_second: plan.packets_per_second,
        cpu_millicores: plan.cpu_millicores,
    };
    let (desired, limit, mut recheck, signal) = desired_replicas(policy, &load, now, memory);
    plan.desired = desired;
    plan.scaling_limited = limit;
    plan.scale_signal = signal;
    match policy.mode {
        Mode::Builtin if policy.spec_replicas != Some(desired) => plan.write_spec_replicas = Some(desired),
        Mode::External if policy.spec_replicas.is_none() => plan.write_spec_replicas = Some(desired),
        _ => {}
    }
    let mut soon = |d: Duration| recheck = Some(recheck.map_or(d, |r: Duration| r.min(d)));

    let current = |p: &&PodPlanInput<'_>| p.pod.template_hash == policy.template_hash;
    let active = |p: &&PodPlanInput<'_>| matches!(p.state, PodState::Starting | PodState::Ready);

    // Gone for good: unhealthy, drained, or drained too long.
    for p in &inputs {
        match p.state {
            // Kept until its meetings have moved: they leave it by a migration that
            // names the real fault, and its ledger empties in order.
            PodState::Unhealthy if p.pod.allocated == 0 => {
                plan.delete.push((p.pod.name.clone(), DeleteReason::Unhealthy))
            }
            PodState::Unhealthy => {}
            PodState::Drained => {
                // A faulted pod is marked draining even when its meetings moved before
                // this reconcile saw it busy: the mark says why it goes.
                if p.pod.fault.is_some() && p.pod.draining_since.is_none() {
                    plan.start_drain.push(p.pod.name.clone());
                }
                match p.pod.fault {
                    Some(health::Fault::NodeNotReady) if !policy.evict_failed => {}
                    Some(_) => plan.delete.push((p.pod.name.clone(), DeleteReason::Evacuated)),
                    None => plan.delete.push((p.pod.name.clone(), DeleteReason::Drained)),
                }
            }
            PodState::Draining => {
                if p.pod.fault.is_some() && p.pod.draining_since.is_none() {
                    plan.start_drain.push(p.pod.name.clone());
                }
                let started = p.pod.draining_since.unwrap_or(now);
                if since(now, started) >= policy.drain_timeout {
                    plan.delete.push((p.pod.name.clone(), DeleteReason::DrainTimeout));
                } else {
                    soon(until(now, started, policy.drain_timeout));
                }
            }
            PodState::Starting => {
                if let (None, Some(started)) = (&p.pod.heartbeat, p.pod.started) {
                    soon(until(now, started, policy.startup_timeout));
                }
            }
            PodState::Ready => {}
        }
        if let Some(hb) = &p.pod.heartbeat
            && p.state != PodState::Unhealthy
        {
            soon(until(now, hb.renewed, policy.heartbeat_timeout));
        }
    }

    // Current template: reach `desired` active pods.
    let mut active_current: Vec<&PodPlanInput<'_>> = inputs.iter().filter(current).filter(active).collect();
    let mut missing = desired.saturating_sub(active_current.len() as u32);
    if missing > 0 {
        // Take back pods we were draining before creating new ones.
        for p in inputs.iter().filter(current).filter(|p| p.state == PodState::Draining) {
            let self_drained = p.pod.heartbeat.as_ref().is_some_and(|h| h.state == ReportedState::Draining);
            if missing == 0 || self_drained || p.pod.draining_since.is_none() || p.pod.fault.is_some() {
                continue;
            }
            plan.cancel_drain.push(p.pod.name.clone());
            missing -= 1;
        }
        plan.create = missing;
    } else if active_current.len() as u32 > desired {
        let excess = active_current.len() - desired as usize;
        removal_order(policy, &mut active_current, &inputs);
        for p in active_current.into_iter().take(excess) {
            retire(&mut plan, p, DeleteReason::ScaleDown);
        }
    }

    // Older templates: one retired per Ready pod of the current template.
    let ready_current = inputs.iter().filter(current).filter(|p| p.state == PodState::Ready).count() as u32;
    let mut active_old: Vec<&PodPlanInput<'_>> = inputs.iter().filter(|p| !current(p)).filter(active).collect();
    let keep_old = desired.saturating_sub(ready_current) as usize;
    if active_old.len() > keep_old {
        let excess = active_old.len() - keep_old;
        removal_order(policy, &mut active_old, &inputs);
        for p in active_old.into_iter().take(excess) {
            retire(&mut plan, p, DeleteReason::Outdated);
        }
    }
    plan.outdated = inputs.iter().filter(|p| !current(p)).count() as u32;

    // Per-pod outcome, as it will be once the plan is carried out.
    for p in &inputs {
        let mut state = p.state;
        if plan.start_drain.contains(&p.pod.name) {
            state = PodState::Draining;
        } else if plan.cancel_drain.contains(&p.pod.name) {
            state = if p.pod.ready { PodState::Ready } else { PodState::Starting };
        }
        plan.pods.push(PodPlan {
            name: p.pod.name.clone(),
            state,
            participants: p.participants,
            tracks: p.pod.heartbeat.as_ref().map_or(0, |h| h.tracks),
            safe_to_evict: p.participants == 0,
        });
    }
    plan.ready_capacity = plan.count(PodState::Ready) as u64 * policy.participants_per_pod;
    plan.recheck_after = recheck;
    plan
}

/// Deletes an empty pod, drains a busy one.
fn retire(plan: &mut Plan, p: &PodPlanInput<'_>, reason: DeleteReason) {
    if p.participants == 0 {
        plan.delete.push((p.pod.name.clone(), reason));
    } else {
        plan.start_drain.push(p.pod.name.clone());
    }
}

#[cfg(test)]
mod tests;
