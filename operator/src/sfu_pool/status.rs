//! Status (pure): what the pool's status says after a plan was carried out, and
//! the Events of its transitions; then its write.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use switchboard_crds::sfu_pool::{Load, PodSummary, ScaleSignal, SfuPodState};
use switchboard_crds::{SfuPool, SfuPoolStatus};
use switchboard_fleet as fleet;

use super::decide::Event;
use super::observe::Observed;
use super::startup::StartupFailure;
use super::{Context, build, publish};
use crate::Result;
use crate::conditions::{condition_at, same};
use crate::error::Step;
use crate::labels::FIELD_MANAGER;
use crate::metrics::PoolLabels;

/// How many pods the status lists (the busiest first).
pub const STATUS_PODS: usize = 50;

fn state_of(s: fleet::PodState) -> SfuPodState {
    match s {
        fleet::PodState::Starting => SfuPodState::Starting,
        fleet::PodState::Ready => SfuPodState::Ready,
        fleet::PodState::Draining => SfuPodState::Draining,
        fleet::PodState::Drained => SfuPodState::Drained,
        fleet::PodState::Unhealthy => SfuPodState::Unhealthy,
    }
}

/// The pool's status once `plan` is carried out, as of `now`.
pub fn status(
    pool: &SfuPool,
    plan: &fleet::Plan,
    policy: &fleet::Policy,
    observed: &Observed,
    now: jiff::Timestamp,
) -> SfuPoolStatus {
    let count = |state| plan.count(state) as i32;
    SfuPoolStatus {
        observed_generation: pool.metadata.generation,
        replicas: observed.views.len() as i32,
        ready_replicas: count(fleet::PodState::Ready),
        draining_replicas: count(fleet::PodState::Draining) + count(fleet::PodState::Drained),
        unhealthy_replicas: count(fleet::PodState::Unhealthy),
        selector: Some(build::selector_string(&pool.name_any())),
        capacity: Some(Load {
            participants: plan.ready_capacity as i64,
            tracks: pool.spec.capacity.tracks_per_pod.map(|t| i64::from(count(fleet::PodState::Ready)) * i64::from(t)),
            ..Load::default()
        }),
        allocated: Some(Load {
            participants: plan.allocated_participants as i64,
            tracks: Some(plan.allocated_tracks as i64),
            packets_per_second: Some(plan.packets_per_second as i64),
            cpu_millicores: Some(plan.cpu_millicores as i64),
        }),
        reserved: Some(Load { participants: plan.reserved_participants as i64, ..Load::default() }),
        scale_signal: plan.scale_signal.map(|s| match s {
            fleet::Signal::Participants => ScaleSignal::Participants,
            fleet::Signal::PacketRate => ScaleSignal::PacketRate,
            fleet::Signal::Cpu => ScaleSignal::Cpu,
        }),
        pods: summaries(plan, &observed.views),
        conditions: conditions(pool, plan, policy, observed.stuck.as_ref(), now),
    }
}

/// The pods that stay, busiest first, with their nodes and zones.
fn summaries(plan: &fleet::Plan, views: &[fleet::PodView]) -> Vec<PodSummary> {
    let by_name: HashMap<&str, &fleet::PodView> = views.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut pods: Vec<PodSummary> = plan
        .pods
        .iter()
        .filter(|p| !plan.delete.iter().any(|(n, _)| n == &p.name))
        .map(|p| {
            let view = by_name.get(p.name.as_str());
            PodSummary {
                name: p.name.clone(),
                state: state_of(p.state),
                node: view.and_then(|v| v.node.clone()),
                zone: view.and_then(|v| v.zone.clone()),
                participants: p.participants as i64,
                tracks: p.tracks as i64,
            }
        })
        .collect();
    pods.sort_by(|a, b| b.participants.cmp(&a.participants).then(a.name.cmp(&b.name)));
    pods.truncate(STATUS_PODS);
    pods
}

/// Why the pool is not settled yet, if it is not: pods that cannot start, pods
/// starting, a rollout, or drains.
fn progressing(plan: &fleet::Plan, stuck: Option<&StartupFailure>) -> Option<(String, String)> {
    let ready = plan.count(fleet::PodState::Ready);
    let draining = plan.count(fleet::PodState::Draining);
    if let Some(f) = stuck {
        Some((f.reason.clone(), f.message.clone()))
    } else if plan.create > 0 || plan.count(fleet::PodState::Starting) > 0 {
        Some(("PodsStarting".into(), format!("{ready} of {} pods Ready", plan.desired)))
    } else if plan.outdated > 0 {
        Some(("RollingUpdate".into(), format!("{} pods of an older template remain", plan.outdated)))
    } else if draining > 0 {
        Some(("Draining".into(), format!("{draining} pods draining")))
    } else {
        None
    }
}

fn conditions(
    pool: &SfuPool,
    plan: &fleet::Plan,
    policy: &fleet::Policy,
    stuck: Option<&StartupFailure>,
    now: jiff::Timestamp,
) -> Vec<Condition> {
    let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let generation = pool.metadata.generation;
    let set = |type_, status, reason: &str, message: String| {
        condition_at(&previous, type_, status, reason, message, generation, now)
    };
    let ready = plan.count(fleet::PodState::Ready);
    let min_ready = policy.min_replicas.min(plan.desired);
    let available = ready >= min_ready && (ready > 0 || plan.desired == 0);
    let available_reason = if available { "MinimumReplicasReady" } else { "NotEnoughReadyPods" };
    let (min, max) = (policy.min_replicas, policy.max_replicas);
    vec![
        set("Available", available, available_reason, format!("{ready} Ready SFU pods; at least {min_ready} needed")),
        match progressing(plan, stuck) {
            Some((reason, message)) => set("Progressing", true, &reason, message),
            None => set("Progressing", false, "Stable", format!("{} pods as desired", plan.desired)),
        },
        match &plan.scaling_limited {
            Some(limit) => set("ScalingLimited", true, limit.reason, limit.message.clone()),
            None => {
                set("ScalingLimited", false, "WithinLimits", format!("{} pods within [{min}, {max}]", plan.desired))
            }
        },
        set("ReconcileSucceeded", true, "Reconciled", String::new()),
    ]
}

/// Whether `next` says more than the status the pool has (conditions compared
/// without their transition times).
pub fn changed(current: Option<&SfuPoolStatus>, next: &SfuPoolStatus) -> bool {
    let strip = |s: &SfuPoolStatus| SfuPoolStatus { conditions: vec![], ..s.clone() };
    !current.is_some_and(|c| strip(c) == strip(next) && same(&c.conditions, &next.conditions))
}

fn is_true(s: &SfuPoolStatus, type_: &str) -> bool {
    s.conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

/// The Events of a status change: the pool became Available, its pods cannot
/// start (once per reason), or a replica limit began to bind.
pub fn events(
    current: &SfuPoolStatus,
    next: &SfuPoolStatus,
    plan: &fleet::Plan,
    stuck: Option<&StartupFailure>,
) -> Vec<Event> {
    let mut events = Vec::new();
    if is_true(next, "Available") && !is_true(current, "Available") {
        events.push(Event::normal("Available", format!("{} of {} SFU pods Ready", next.ready_replicas, plan.desired)));
    }
    let progressing = current.conditions.iter().find(|c| c.type_ == "Progressing").map(|c| c.reason.as_str());
    if let Some(f) = stuck
        && progressing != Some(f.reason.as_str())
    {
        events.push(Event::warning(&f.reason, f.message.clone()));
    }
    if let Some(limit) = &plan.scaling_limited
        && !is_true(current, "ScalingLimited")
    {
        events.push(Event::warning("ScalingLimited", limit.message.clone()));
    }
    events
}

/// Writes `next` when it says something new, then publishes the Events of the change.
pub async fn write(
    pool: &SfuPool,
    next: &SfuPoolStatus,
    plan: &fleet::Plan,
    observed: &Observed,
    ctx: &Context,
) -> Result<()> {
    let current = pool.status.clone().unwrap_or_default();
    if !changed(Some(&current), next) {
        return Ok(());
    }
    let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool", "status": next});
    Api::<SfuPool>::namespaced(ctx.harness.client.clone(), &pool.namespace().unwrap_or_default())
        .patch_status(&pool.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .writing_status()?;
    for event in events(&current, next, plan, observed.stuck.as_ref()) {
        publish(ctx, pool, &event).await;
    }
    Ok(())
}

/// The pool's gauges.
pub fn record_metrics(ctx: &Context, pool: &SfuPool, plan: &fleet::Plan) {
    let labels = PoolLabels { namespace: pool.namespace().unwrap_or_default(), pool: pool.name_any() };
    let m = &ctx.harness.metrics;
    m.pool_ready_pods.get_or_create(&labels).set(plan.count(fleet::PodState::Ready) as i64);
    m.pool_desired_pods.get_or_create(&labels).set(plan.desired as i64);
    m.pool_max_pods.get_or_create(&labels).set(i64::from(pool.spec.autoscaling.max_replicas));
    m.pool_allocated_participants.get_or_create(&labels).set(plan.allocated_participants as i64);
    m.pool_capacity_participants.get_or_create(&labels).set(plan.ready_capacity as i64);
}
