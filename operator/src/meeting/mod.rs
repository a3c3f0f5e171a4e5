//! The Meeting controller: dereference → validate (pure) → decide the lifecycle
//! (pure, `switchboard_placement::lifecycle`) → hold what the phase needs (a
//! reservation in the pool, seats on SFU pods) → write status.
//!
//! Status field ownership: this controller (field manager `switchboard-operator`)
//! applies everything in `status` but `participants`, which signaling owns
//! (`switchboard-signaling`). Server-side apply keeps the two apart.

pub mod room_codes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchboard_crds::common::Time;
use switchboard_crds::meeting::{Assignment, MeetingPhase, Migration, Reservation, SfuEndpoint};
use switchboard_crds::sfu_pool::PlacementStrategy;
use switchboard_crds::{Meeting, MeetingStatus, SfuPool, SignalingPool};
use switchboard_fleet::health::Detected;
use switchboard_heartbeat::SfuState;
use switchboard_placement::lifecycle::{self, Hold, Phase};
use switchboard_placement::place::{self, Candidate, Share, Shortfall};

use crate::caches::Caches;
use crate::conditions::{condition, same};
use crate::error::Step;
use crate::labels::*;
use crate::metrics::{ControllerLabels, ErrorLabels, Metrics, PhaseLabels, PlacementLabels, ReasonLabels};
use crate::seats::{Book, Ledger, Seats};
use crate::sfu_pool::build;
use crate::{Error, OperatorConfig, Result};
use room_codes::RoomCodes;

const CONTROLLER: &str = "meeting";
/// Meetings reconciled at the same time (placements are group-committed per pod);
/// the rest wait their turn in arrival order (`crate::admission`). Measured at 500
/// placements/s (BENCHMARKS.md): 512 turns, or a bound on the status writes in
/// flight, made the first batches of a storm larger or split them into rounds, and
/// its p99 worse.
const RECONCILE_CONCURRENCY: usize = 256;
/// A scheduled start this long before the Meeting was created is refused.
const START_SLACK: Duration = Duration::from_secs(60);
const DEFAULT_EMPTY_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(900);
/// How often a Failed meeting is checked again without any change seen.
const FAILED_RECHECK: Duration = Duration::from_secs(10);
/// Migrations a Meeting's status keeps (the latest).
const MIGRATIONS_KEPT: usize = 20;
/// How soon an unplaced meeting tries again (new pods, freed seats).
const PLACEMENT_RETRY: Duration = Duration::from_secs(1);

pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub metrics: Metrics,
    meetings: Store<Meeting>,
    pools: Store<SfuPool>,
    caches: Caches,
    signaling: Store<SignalingPool>,
    book: Book,
    codes: Arc<RoomCodes>,
    recorder: Recorder,
    /// Placement and migration events, published a few at a time in the background.
    events: crate::events::Queue,
    /// Pools whose reservations changed: the SfuPool controller reconciles them.
    pool_trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<SfuPool>>,
    memory: Mutex<HashMap<String, MeetingMemory>>,
    admission: crate::admission::Admission,
}

#[derive(Default)]
struct MeetingMemory {
    /// A code taken for the meeting whose status write has not landed yet.
    room_code: Option<String>,
    /// The last migration generation this controller wrote: a cached Meeting that
    /// shows an older one lags our own write, and must not be moved again.
    migration_generation: i64,
    /// When this controller last placed the meeting: a reconcile that finds no
    /// assignment (or no booked seats) soon after is looking at caches that lag our own
    /// writes, and must not place it a second time.
    placed_at: Option<std::time::Instant>,
    failures: u32,
}

/// How long a placement of ours may take to show in the caches before a reconcile that
/// does not see it places the meeting again.
const PLACEMENT_CACHE_GRACE: Duration = Duration::from_secs(10);

fn placed_recently(ctx: &Context, m: &Meeting) -> bool {
    ctx.memory
        .lock()
        .expect("lock")
        .get(&key(m))
        .and_then(|x| x.placed_at)
        .is_some_and(|at| at.elapsed() < PLACEMENT_CACHE_GRACE)
}

fn key(m: &Meeting) -> String {
    format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any())
}

/// Runs the controller until `shutdown` resolves.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    meeting_events: impl futures::Stream<Item = Arc<Meeting>> + Send + 'static,
    caches: Caches,
    pool_trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<SfuPool>>,
    faults: impl futures::Stream<Item = ObjectRef<Meeting>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pools, signaling): (Api<SfuPool>, Api<SignalingPool>) = match &config.watch_namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let (signaling_store, writer) = kube::runtime::reflector::store();
    let signaling_stream =
        watcher(signaling, watcher::Config::default()).default_backoff().reflect(writer).touched_objects();
    tokio::spawn(signaling_stream.for_each(|_| futures::future::ready(())));

    let reporter =
        kube::runtime::events::Reporter { controller: FIELD_MANAGER.into(), instance: Some(config.identity.clone()) };
    let codes = RoomCodes::new(Api::namespaced(client.clone(), &config.leader_namespace));
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter.clone()),
        events: crate::events::Queue::start(Recorder::new(client.clone(), reporter)),
        book: Book::new(client.clone(), caches.pods.clone()),
        codes,
        client,
        config,
        metrics,
        meetings: caches.meetings.clone(),
        pools: caches.pools.clone(),
        caches: caches.clone(),
        signaling: signaling_store,
        pool_trigger,
        memory: Mutex::default(),
        admission: crate::admission::Admission::new(RECONCILE_CONCURRENCY),
    });
    let housekeeping = housekeeping(ctx.clone());
    // Validation reads the pools: judging meetings before the first list would fail them.
    let _ = ctx.pools.wait_until_ready().await;

    // A pool that changes (new Ready pods, a new max) may unblock meetings waiting on it.
    let store = caches.meetings.clone();
    let pool_to_meetings = move |pool: SfuPool| {
        let ns = pool.namespace().unwrap_or_default();
        store
            .state()
            .into_iter()
            .filter(|m| m.namespace().as_deref() == Some(ns.as_str()) && waits_on_pools(m))
            .map(|m| ObjectRef::from_obj(&*m))
            .collect::<Vec<_>>()
    };
    let controller = Controller::for_shared_stream(meeting_events, caches.meetings.clone())
        // Unbounded here: `Context::admission` bounds it, first come first served.
        .with_config(kube::runtime::controller::Config::default().concurrency(0))
        .watches(pools, watcher::Config::default(), pool_to_meetings)
        // Meetings on SFU pods the failure detector found failed or leaving.
        .reconcile_on(faults)
        .graceful_shutdown_on(ctx.admission.close_on(shutdown))
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "meeting reconcile");
            }
        });
    // Housekeeping lives exactly as long as the controller (it never ends by itself).
    tokio::pin!(housekeeping);
    futures::future::select(std::pin::pin!(controller), housekeeping).await;
}

/// Meetings a pool change can help: not yet placed, or refused for want of a pool.
fn waits_on_pools(m: &Meeting) -> bool {
    // No status yet: its first reconcile is under way (it was triggered by the
    // creation), and a pool change cannot tell it more. Re-queuing those repeated
    // every reconcile of a creation storm once per pool status write.
    let Some(s) = &m.status else { return false };
    match s.phase {
        Some(MeetingPhase::Failed) => true,
        Some(MeetingPhase::Ended) => false,
        _ => s.assignment.is_none(),
    }
}

async fn reconcile(meeting: Arc<Meeting>, ctx: Arc<Context>) -> Result<Action> {
    let Some((_turn, meeting)) = ctx.admission.admit_latest(&ctx.meetings, &meeting).await else {
        return Ok(Action::await_change());
    };
    let labels = ControllerLabels { controller: CONTROLLER };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = std::time::Instant::now();
    let span = tracing::info_span!("reconcile", controller = CONTROLLER, meeting = %key(&meeting));
    // Boxed: a reconcile waiting for its turn stays small.
    let result = Box::pin(tracing::Instrument::instrument(reconcile_meeting(&meeting, &ctx), span)).await;
    ctx.metrics.reconcile_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    let mut memory = ctx.memory.lock().expect("lock");
    let entry = memory.entry(key(&meeting)).or_default();
    match &result {
        Ok(_) => entry.failures = 0,
        Err(_) => entry.failures += 1,
    }
    result
}

fn error_policy(meeting: Arc<Meeting>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels { controller: CONTROLLER, step: error.step(), error: error.kind() })
        .inc();
    let failures = ctx.memory.lock().expect("lock").get(&key(&meeting)).map_or(1, |m| m.failures.max(1));
    let backoff = Duration::from_millis(250 * 2u64.pow(failures.min(9))).min(Duration::from_secs(120));
    tracing::warn!(meeting = %key(&meeting), error = %error, ?backoff, "reconcile failed; retrying");
    if failures >= 3 {
        let ctx = ctx.clone();
        let message = error.to_string();
        tokio::spawn(async move { publish(&ctx, &meeting, EventType::Warning, "ReconcileFailed", &message).await });
    }
    Action::requeue(backoff)
}

async fn publish(ctx: &Context, m: &Meeting, type_: EventType, reason: &str, note: &str) {
    crate::events::publish(&ctx.recorder, &m.object_ref(&()), type_, reason, note).await;
}

/// A spec the operator cannot act on, with the condition reason that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// Pools that may host the meeting: same namespace, its region, its selector.
pub fn matching_pools(m: &Meeting, pools: &[Arc<SfuPool>]) -> Result<Vec<Arc<SfuPool>>, Invalid> {
    let ns = m.namespace();
    let selector: Option<Selector> = match &m.spec.sfu_pool_selector {
        Some(s) => Some(
            Selector::try_from(s.clone())
                .map_err(|e| Invalid { reason: "InvalidSelector", message: format!("spec.sfuPoolSelector: {e}") })?,
        ),
        None => None,
    };
    let mut out: Vec<Arc<SfuPool>> = pools
        .iter()
        .filter(|p| p.namespace() == ns && p.metadata.deletion_timestamp.is_none())
        .filter(|p| m.spec.region.is_none() || p.spec.region == m.spec.region)
        .filter(|p| selector.as_ref().is_none_or(|s| s.matches(p.labels())))
        .cloned()
        .collect();
    out.sort_by_key(|p| p.name_any());
    Ok(out)
}

/// The most participants a pool can ever hold: every pod at max, less relay links.
pub fn pool_maximum(pool: &SfuPool) -> u64 {
    let pods = pool.spec.autoscaling.max_replicas.max(0) as u64;
    let per_pod = pool.spec.capacity.participants_per_pod.max(0) as u64;
    (pods * per_pod).saturating_sub(2 * pods.saturating_sub(1))
}

/// Checks what the spec asks against the pools there are (pure).
pub fn validate(m: &Meeting, pools: &[Arc<SfuPool>], status: &MeetingStatus) -> Result<(), Invalid> {
    let created = m.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if let (Some(schedule), Some(created)) = (&m.spec.schedule, created) {
        let started = status.started_at.is_some();
        let late =
            created.duration_since(schedule.start.0) > jiff::SignedDuration::try_from(START_SLACK).expect("small");
        if late && !started {
            return Err(Invalid {
                reason: "StartInPast",
                message: format!(
                    "spec.schedule.start {} is before the meeting was created ({})",
                    schedule.start.0, created
                ),
            });
        }
    }
    if pools.is_empty() {
        let wanted = match (&m.spec.region, &m.spec.sfu_pool_selector) {
            (Some(r), Some(_)) => format!("in region {r} matching spec.sfuPoolSelector"),
            (Some(r), None) => format!("in region {r}"),
            (None, Some(_)) => "matching spec.sfuPoolSelector".into(),
            (None, None) => "in the namespace".into(),
        };
        return Err(Invalid { reason: "NoMatchingPool", message: format!("no SfuPool {wanted}") });
    }
    let expected = m.spec.participants.expected.max(1) as u64;
    let largest = pools.iter().map(|p| pool_maximum(p)).max().unwrap_or(0);
    if expected > largest {
        return Err(Invalid {
            reason: "ExceedsPoolMaximum",
            message: format!(
                "spec.participants.expected {expected} is more than the largest matching pool can ever hold ({largest} at maxReplicas)"
            ),
        });
    }
    Ok(())
}

fn phase_of(p: MeetingPhase) -> Phase {
    match p {
        MeetingPhase::Scheduled => Phase::Scheduled,
        MeetingPhase::Waiting => Phase::Waiting,
        MeetingPhase::Active => Phase::Active,
        MeetingPhase::Ended => Phase::Ended,
        MeetingPhase::Failed => Phase::Failed,
    }
}

fn api_phase(p: Phase) -> MeetingPhase {
    match p {
        Phase::Scheduled => MeetingPhase::Scheduled,
        Phase::Waiting => MeetingPhase::Waiting,
        Phase::Active => MeetingPhase::Active,
        Phase::Ended => MeetingPhase::Ended,
        Phase::Failed => MeetingPhase::Failed,
    }
}

fn phase_name(p: Option<MeetingPhase>) -> &'static str {
    match p {
        None => "None",
        Some(MeetingPhase::Scheduled) => "Scheduled",
        Some(MeetingPhase::Waiting) => "Waiting",
        Some(MeetingPhase::Active) => "Active",
        Some(MeetingPhase::Ended) => "Ended",
        Some(MeetingPhase::Failed) => "Failed",
    }
}

/// A Ready SFU pod of a pool, able to take meetings.
struct ReadyPod {
    name: String,
    node: Option<String>,
    zone: Option<String>,
    endpoint: String,
}

fn ready_pods(ctx: &Context, pool: &SfuPool, now: jiff::Timestamp) -> Vec<ReadyPod> {
    let ns = pool.namespace().unwrap_or_default();
    ctx.caches
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && build::owned_by(p, pool))
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !p.annotations().contains_key(DRAINING_ANNOTATION))
        .filter_map(|p| {
            let beat = ctx.caches.heartbeat(&ns, &p.name_any())?;
            let (view, verdict) = ctx.caches.judge(pool, &p, Some(&beat), now);
            // Not on a node that is NotReady even briefly, cordoned or going away.
            let node_ok = view.node.as_deref().is_some_and(|n| ctx.caches.node(n).schedulable());
            if !view.ready || beat.heartbeat.state != SfuState::Ready || verdict.fault.is_some() || !node_ok {
                return None;
            }
            Some(ReadyPod {
                name: view.name,
                node: view.node,
                zone: view.zone,
                endpoint: beat.heartbeat.endpoint.clone(),
            })
        })
        .collect()
}

/// The pods of an assignment that failed or are leaving, with why and since when.
fn assignment_faults(
    ctx: &Context,
    pool: &SfuPool,
    ns: &str,
    a: &Assignment,
    now: jiff::Timestamp,
) -> Vec<(String, Detected)> {
    std::iter::once(&a.origin)
        .chain(&a.edges)
        .filter_map(|e| ctx.caches.judge_named(pool, ns, &e.pod, now).fault.map(|d| (e.pod.clone(), d)))
        .collect()
}

/// Seats taken in a pool: every pod's ledger (with writes in flight).
fn pool_taken(ctx: &Context, pool: &SfuPool) -> u64 {
    let ns = pool.namespace().unwrap_or_default();
    ctx.caches
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && build::owned_by(p, pool))
        .map(|p| ctx.book.taken(&ns, &p.name_any()))
        .sum()
}

fn timing(m: &Meeting, pool: Option<&SfuPool>) -> lifecycle::Timing {
    let pre = pool.map(|p| p.spec.pre_provisioning.clone()).unwrap_or_default();
    lifecycle::Timing {
        lead_time: pre.lead_time.as_std(),
        release_after: pre.release_after.as_std(),
        empty_timeout: m.spec.empty_timeout.as_ref().map_or(DEFAULT_EMPTY_TIMEOUT, |d| d.as_std()),
        grace_period: m
            .spec
            .schedule
            .as_ref()
            .and_then(|s| s.grace_period.as_ref())
            .map_or(DEFAULT_GRACE_PERIOD, |d| d.as_std()),
        ttl_after_ended: m.spec.ttl_after_ended.as_ref().map(|d| d.as_std()),
    }
}

/// Why a placement did not happen.
struct NotPlaced {
    reason: &'static str,
    message: String,
}

impl NotPlaced {
    fn from_shortfall(pool: &SfuPool, shortfall: Shortfall) -> Self {
        match shortfall {
            Shortfall::NoReadyPods => NotPlaced {
                reason: "NoReadyPods",
                message: format!("pool {} has no healthy Ready SFU pod", pool.name_any()),
            },
            e @ Shortfall::InsufficientCapacity { .. } => {
                NotPlaced { reason: "InsufficientCapacity", message: format!("pool {}: {e}", pool.name_any()) }
            }
        }
    }
}

/// Ready pods as placement candidates, with the seats taken on each.
fn candidates(ready: &[ReadyPod], taken: &HashMap<String, u64>, per_pod: u64) -> Vec<Candidate> {
    ready
        .iter()
        .map(|p| Candidate {
            pod: p.name.clone(),
            node: p.node.clone(),
            zone: p.zone.clone(),
            capacity: per_pod,
            allocated: taken.get(&p.name).copied().unwrap_or(0),
        })
        .collect()
}

async fn reconcile_meeting(m: &Meeting, ctx: &Context) -> Result<Action> {
    if m.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = m.namespace().unwrap_or_default();
    let name = m.name_any();
    let uid = m.uid().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let current = m.status.clone().unwrap_or_default();
    let previous_conditions = current.conditions.clone();
    let generation = m.metadata.generation;

    // Identity: a room code once, and the join URL of the namespace's signaling.
    let room_code = match &current.room_code {
        Some(code) => code.clone(),
        None => {
            let memo = ctx.memory.lock().expect("lock").get(&key(m)).and_then(|x| x.room_code.clone());
            match memo {
                Some(code) => code,
                None => {
                    let code = ctx.codes.next().await.observing("a room code")?;
                    ctx.memory.lock().expect("lock").entry(key(m)).or_default().room_code = Some(code.clone());
                    code
                }
            }
        }
    };
    let join_url = signaling_url(ctx, &ns).map(|u| format!("{}/j/{room_code}", u.trim_end_matches('/')));
    let mut next = MeetingStatus {
        observed_generation: generation,
        room_code: Some(room_code),
        join_url,
        migrations: current.migrations.clone(),
        started_at: current.started_at.clone(),
        ended_at: current.ended_at.clone(),
        ..Default::default()
    };
    let mut conditions = Vec::new();
    let mut events: Vec<(EventType, &'static str, String)> = Vec::new();
    // Held while this reconcile places or moves the meeting: its status write goes before any event.
    let mut _events_held: Option<crate::events::Hold> = None;
    let mut requeue: Option<Duration> = None;
    // A migration: the pods it left (released once the status names the new ones),
    // when its fault became detectable, and its generation.
    let mut release_after: Vec<String> = Vec::new();
    let mut moved_since: Option<(jiff::Timestamp, i64)> = None;
    let mut placed = false;

    // Dereference and validate.
    let ended = current.phase == Some(MeetingPhase::Ended);
    let pools = matching_pools(m, &ctx.pools.state());
    let validity = pools.as_ref().map_err(Clone::clone).and_then(|p| validate(m, p, &current));
    if let (false, Err(invalid)) = (ended, &validity) {
        release_assignment(ctx, &ns, &name, &uid, current.assignment.as_ref()).await?;
        next.phase = Some(MeetingPhase::Failed);
        conditions.push(condition(
            &previous_conditions,
            "Valid",
            false,
            invalid.reason,
            invalid.message.clone(),
            generation,
        ));
        if current.phase != Some(MeetingPhase::Failed) {
            events.push((EventType::Warning, invalid.reason, invalid.message.clone()));
            ctx.metrics.placements.get_or_create(&PlacementLabels { result: "failed", reason: invalid.reason }).inc();
        }
        next.conditions = conditions;
        write_status(ctx, m, &current, next, events).await?;
        // Pool changes requeue Failed meetings and a spec change comes as an event; the
        // pool cache may lag the pool watch that triggered us, so look again later too.
        return Ok(Action::requeue(FAILED_RECHECK));
    }
    let pools = pools.unwrap_or_default();
    if !ended {
        conditions.push(condition(&previous_conditions, "Valid", true, "Valid", "", generation));
    }

    // The pool the meeting holds capacity in, or would.
    let held_pool =
        current.assignment.as_ref().map(|a| a.pool.clone()).or(current.reservation.as_ref().map(|r| r.pool.clone()));
    let pool = held_pool
        .as_ref()
        .and_then(|n| pools.iter().find(|p| &p.name_any() == n))
        .cloned()
        .or_else(|| best_pool(ctx, &pools, &name));

    // Decide (pure).
    let timing = timing(m, pool.as_deref());
    let view = lifecycle::View {
        created: m.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0),
        start: m.spec.schedule.as_ref().map(|s| s.start.0),
        expected_duration: m.spec.schedule.as_ref().and_then(|s| s.expected_duration.as_ref()).map(|d| d.as_std()),
        phase: match current.phase {
            Some(MeetingPhase::Failed) | None => None,
            Some(p) => Some(phase_of(p)),
        },
        started_at: current.started_at.as_ref().map(|t| t.0),
        ended_at: current.ended_at.as_ref().map(|t| t.0),
        empty_since: current.empty_since.as_ref().map(|t| t.0),
        participants: current.participants.as_ref().map_or(0, |p| p.current.max(0) as u64),
        placed_at: current.assignment.as_ref().and_then(|a| a.at.as_ref()).map(|t| t.0),
    };
    let decision = lifecycle::decide(&view, &timing, now);
    next.phase = Some(api_phase(decision.phase));
    next.started_at = decision.started_at.map(Time);
    next.ended_at = decision.ended_at.map(Time);
    next.empty_since = decision.empty_since.map(Time);
    requeue = decision.recheck_after.or(requeue);
    let expected = m.spec.participants.expected.max(1) as u64;

    // Hold what the phase needs.
    match decision.hold {
        Hold::Nothing => {
            release_assignment(ctx, &ns, &name, &uid, current.assignment.as_ref()).await?;
        }
        Hold::Reservation => {
            let pool = pool.as_ref().expect("valid meetings have a pool");
            let start = m.spec.schedule.as_ref().map_or(now, |s| s.start.0);
            let from = start
                .checked_sub(jiff::SignedDuration::try_from(timing.lead_time).unwrap_or_default())
                .unwrap_or(start);
            let reservation = Reservation { pool: pool.name_any(), participants: expected as i32, from: Time(from) };
            let headroom = pool_maximum(pool).saturating_sub(
                pool_taken(ctx, pool) + crate::seats::pool_reserved(&ctx.meetings, &ns, &pool.name_any(), Some(&name)),
            );
            if headroom >= expected {
                conditions.push(condition(
                    &previous_conditions,
                    "CapacityReserved",
                    true,
                    "Reserved",
                    format!("{expected} participants reserved in pool {} from {from}", pool.name_any()),
                    generation,
                ));
                if current.reservation.is_none() {
                    events.push((
                        EventType::Normal,
                        "CapacityReserved",
                        format!("reserved {expected} participants in pool {}", pool.name_any()),
                    ));
                    ctx.metrics.reservations_made.inc();
                }
            } else {
                let message = format!(
                    "pool {} can hold {headroom} more participants at maxReplicas {}; {expected} expected",
                    pool.name_any(),
                    pool.spec.autoscaling.max_replicas
                );
                conditions.push(condition(
                    &previous_conditions,
                    "CapacityReserved",
                    false,
                    "PoolAtMaximum",
                    message.clone(),
                    generation,
                ));
                if !has_reason(&previous_conditions, "CapacityReserved", "PoolAtMaximum") {
                    events.push((EventType::Warning, "PoolAtMaximum", message));
                }
            }
            if current.reservation.as_ref().map(|r| &r.pool) != Some(&reservation.pool) {
                let _ = ctx.pool_trigger.unbounded_send(ObjectRef::new(&reservation.pool).within(&ns));
            }
            next.reservation = Some(reservation);
            release_assignment(ctx, &ns, &name, &uid, current.assignment.as_ref()).await?;
        }
        Hold::Assignment => {
            let faults = match (&current.assignment, &pool) {
                (Some(a), Some(p)) => assignment_faults(ctx, p, &ns, a, now),
                _ => Vec::new(),
            };
            let written = ctx.memory.lock().expect("lock").get(&key(m)).map_or(0, |x| x.migration_generation);
            if last_generation(&current) < written {
                // The cache has not caught up with a move we wrote: wait rather than move twice.
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            // Keep an assignment only while the pods' ledgers hold its seats: a reconcile
            // of a stale cached Meeting must not bring back seats released since.
            let kept = current
                .assignment
                .as_ref()
                .filter(|a| faults.is_empty() && assignment_booked(ctx, &ns, &name, &uid, a))
                .cloned();
            let moving = current.assignment.as_ref().filter(|_| !faults.is_empty());
            if kept.is_none() {
                // Placing or moving: the writes that give the meeting its pods go before any
                // event, so in a storm of placements or migrations events wait for a lull.
                _events_held = Some(ctx.events.hold());
            }
            match (kept, moving) {
                (Some(a), _) => {
                    if let (Some(pool), true) = (&pool, last_generation(&current) > 0) {
                        let strays = stray_seats(ctx, pool, &name, &uid, &pods_of(&a));
                        release_in_background(ctx, &ns, &name, &uid, strays);
                    }
                    next.assignment = Some(a);
                }
                (None, Some(old)) => {
                    let pool = pool.as_ref().expect("an assignment names its pool");
                    match migrate_meeting(ctx, m, pool, old, &faults, now).await? {
                        Ok(moved) => {
                            let detected = faults.iter().map(|(_, d)| d.at).min().unwrap_or(now);
                            let mut generation_counter = last_generation(&current);
                            let mut notes = Vec::new();
                            for (from, to) in &moved.moves {
                                let reason = faults
                                    .iter()
                                    .find(|(p, _)| p == from)
                                    .map_or("Rebalanced", |(_, d)| d.fault.as_str());
                                generation_counter += 1;
                                next.migrations.push(Migration {
                                    from: from.clone(),
                                    to: to.clone(),
                                    reason: reason.to_owned(),
                                    at: Time(now),
                                    generation: generation_counter,
                                });
                                ctx.metrics.migrations.get_or_create(&ReasonLabels { reason }).inc();
                                notes.push(format!("{from} → {to} ({reason})"));
                            }
                            let excess = next.migrations.len().saturating_sub(MIGRATIONS_KEPT);
                            next.migrations.drain(..excess);
                            moved_since = Some((detected, generation_counter));
                            events.push((
                                EventType::Normal,
                                "Migrated",
                                format!("moved to healthy SFU pods: {}", notes.join(", ")),
                            ));
                            release_after = moved.left;
                            let _ = ctx.pool_trigger.unbounded_send(ObjectRef::new(&pool.name_any()).within(&ns));
                            next.assignment = Some(moved.assignment);
                        }
                        Err(not) => {
                            ctx.metrics
                                .placements
                                .get_or_create(&PlacementLabels { result: "failed", reason: not.reason })
                                .inc();
                            let failed: Vec<&str> = faults.iter().map(|(p, _)| p.as_str()).collect();
                            let message = format!("moving off {} failed: {}", failed.join(", "), not.message);
                            if !has_reason(&previous_conditions, "Placed", "MigrationPending") {
                                events.push((EventType::Warning, "MigrationPending", message.clone()));
                            }
                            conditions.push(condition(
                                &previous_conditions,
                                "Placed",
                                false,
                                "MigrationPending",
                                message,
                                generation,
                            ));
                            // Its seats stay where they are until it can move: the pod stays busy.
                            next.assignment = Some(old.clone());
                            requeue = Some(PLACEMENT_RETRY);
                        }
                    }
                }
                (None, None) if placed_recently(ctx, m) => {
                    // The caches have not caught up with our placement: wait rather than place twice.
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                (None, None) => match &pool {
                    None => unreachable!("valid meetings have a pool"),
                    Some(pool) => match place_meeting(ctx, m, pool, expected, now).await? {
                        Ok(a) => {
                            placed = true;
                            let due = lifecycle::due(&view);
                            let latency = now.duration_since(due.max(view.created)).as_secs_f64().max(0.0);
                            ctx.metrics.placement_latency.observe(latency);
                            ctx.metrics
                                .placements
                                .get_or_create(&PlacementLabels { result: "placed", reason: "Placed" })
                                .inc();
                            let pods = std::iter::once(a.origin.pod.clone())
                                .chain(a.edges.iter().map(|e| e.pod.clone()))
                                .collect::<Vec<_>>();
                            let what = if a.edges.is_empty() {
                                format!("placed on SFU pod {}", a.origin.pod)
                            } else {
                                format!(
                                    "placed on {} SFU pods (origin {} and {} edges)",
                                    pods.len(),
                                    a.origin.pod,
                                    a.edges.len()
                                )
                            };
                            events.push((EventType::Normal, "Placed", what));
                            if current.reservation.is_some() {
                                let _ = ctx.pool_trigger.unbounded_send(ObjectRef::new(&a.pool).within(&ns));
                            }
                            next.assignment = Some(a);
                        }
                        Err(not) => {
                            ctx.metrics
                                .placements
                                .get_or_create(&PlacementLabels { result: "failed", reason: not.reason })
                                .inc();
                            if !has_reason(&previous_conditions, "Placed", not.reason) {
                                events.push((EventType::Warning, "PlacementFailed", not.message.clone()));
                            }
                            conditions.push(condition(
                                &previous_conditions,
                                "Placed",
                                false,
                                not.reason,
                                not.message,
                                generation,
                            ));
                            // Keep the reservation while waiting: the pool keeps the capacity coming.
                            next.reservation = current.reservation.clone().or_else(|| {
                                Some(Reservation {
                                    pool: pool.name_any(),
                                    participants: expected as i32,
                                    from: Time(now),
                                })
                            });
                            if current.reservation.is_none() {
                                let _ = ctx.pool_trigger.unbounded_send(ObjectRef::new(&pool.name_any()).within(&ns));
                            }
                            requeue = Some(PLACEMENT_RETRY);
                        }
                    },
                },
            }
            if let Some(a) = next.assignment.as_ref().filter(|_| !conditions.iter().any(|c| c.type_ == "Placed")) {
                let pods = 1 + a.edges.len();
                let message = if a.edges.is_empty() {
                    format!("on {} ({})", a.origin.pod, a.origin.endpoint)
                } else {
                    format!("cascaded over {pods} pods: origin {} and {} edges", a.origin.pod, a.edges.len())
                };
                conditions.push(condition(&previous_conditions, "Placed", true, "Assigned", message, generation));
            }
        }
    }
    if let Some(reason) = decision.end_reason {
        let message = match reason {
            lifecycle::EndReason::Empty => "nobody was in the meeting for its empty timeout".to_owned(),
            lifecycle::EndReason::NeverStarted => {
                "nobody joined in time; its capacity went back to the pool".to_owned()
            }
            lifecycle::EndReason::DurationExceeded => "it ran past its expected duration and grace period".to_owned(),
        };
        conditions.push(condition(&previous_conditions, "Ended", true, reason.as_str(), message.clone(), generation));
        events.push((EventType::Normal, "Ended", message));
    } else if let Some(c) = previous_conditions.iter().find(|c| c.type_ == "Ended") {
        conditions.push(c.clone());
    }
    let placed_now = events.iter().any(|(_, reason, _)| *reason == "Placed");
    // Waiting and placed in one go say it in one event (`Placed`): one write fewer per meeting.
    if current.phase != next.phase
        && decision.end_reason.is_none()
        && !(placed_now && next.phase == Some(MeetingPhase::Waiting))
    {
        let note = match next.phase {
            Some(MeetingPhase::Scheduled) => "scheduled".to_owned(),
            Some(MeetingPhase::Waiting) => "due: waiting for participants".to_owned(),
            Some(MeetingPhase::Active) => "started: participants joined".to_owned(),
            _ => String::new(),
        };
        if !note.is_empty() {
            events.push((EventType::Normal, phase_name(next.phase), note));
        }
    }
    next.conditions = conditions;
    let still_assigned = next.assignment.is_some();
    write_status(ctx, m, &current, next, events).await?;
    {
        let mut memory = ctx.memory.lock().expect("lock");
        let entry = memory.entry(key(m)).or_default();
        if placed {
            entry.placed_at = Some(std::time::Instant::now());
        } else if !still_assigned || current.assignment.is_some() {
            // Released, or the cache shows our assignment: nothing left to wait for.
            entry.placed_at = None;
        }
    }
    if let Some((detected, generation_written)) = moved_since {
        ctx.memory.lock().expect("lock").entry(key(m)).or_default().migration_generation = generation_written;
        let took = jiff::Timestamp::now().duration_since(detected).as_secs_f64().max(0.0);
        ctx.metrics.migration_duration.observe(took);
        tracing::info!(meeting = %key(m), seconds = took, "migrated");
    }
    // Only now that the status names the new pods: a crash before this point leaves
    // the old seats held, and the next reconcile moves the meeting exactly once. In
    // the background, so the next migration need not wait; seats a failed release
    // leaves behind are strays, released by the meeting's next reconcile.
    release_in_background(ctx, &ns, &name, &uid, release_after);

    if decision.delete {
        let api: Api<Meeting> = Api::namespaced(ctx.client.clone(), &ns);
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => tracing::info!(meeting = %key(m), "deleted after its TTL"),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e).applying("deletion of the Meeting after its TTL"),
        }
        return Ok(Action::await_change());
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d.clamp(Duration::from_millis(100), Duration::from_secs(300))),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

fn has_reason(conditions: &[switchboard_crds::common::Condition], type_: &str, reason: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.reason == reason)
}

fn signaling_url(ctx: &Context, ns: &str) -> Option<String> {
    let mut pools: Vec<Arc<SignalingPool>> =
        ctx.signaling.state().into_iter().filter(|s| s.namespace().as_deref() == Some(ns)).collect();
    pools.sort_by_key(|p| p.name_any());
    pools.first().map(|p| p.spec.public_url.clone())
}

/// The matching pool with the most room (at its maximum) for a new meeting.
fn best_pool(ctx: &Context, pools: &[Arc<SfuPool>], except: &str) -> Option<Arc<SfuPool>> {
    if pools.len() == 1 {
        return pools.first().cloned();
    }
    pools
        .iter()
        .max_by_key(|p| {
            let ns = p.namespace().unwrap_or_default();
            let committed =
                pool_taken(ctx, p) + crate::seats::pool_reserved(&ctx.meetings, &ns, &p.name_any(), Some(except));
            (pool_maximum(p).saturating_sub(committed), std::cmp::Reverse(p.name_any()))
        })
        .cloned()
}

/// Every pod of an assignment holds the meeting's seats in its ledger.
fn assignment_booked(ctx: &Context, ns: &str, name: &str, uid: &str, a: &Assignment) -> bool {
    std::iter::once(&a.origin).chain(&a.edges).all(|e| ctx.book.holds(ns, &e.pod, name, uid))
}

fn pods_of(a: &Assignment) -> Vec<String> {
    std::iter::once(&a.origin).chain(&a.edges).map(|e| e.pod.clone()).collect()
}

/// Pods of `pool` whose ledgers hold seats of this meeting, other than `keep`.
fn stray_seats(ctx: &Context, pool: &SfuPool, name: &str, uid: &str, keep: &[String]) -> Vec<String> {
    let ns = pool.namespace().unwrap_or_default();
    ctx.caches
        .pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && build::owned_by(p, pool))
        .map(|p| p.name_any())
        .filter(|pod| !keep.contains(pod) && ctx.book.holds(&ns, pod, name, uid))
        .collect()
}

fn release_in_background(ctx: &Context, ns: &str, name: &str, uid: &str, pods: Vec<String>) {
    if pods.is_empty() {
        return;
    }
    let (book, ns, name, uid) = (ctx.book.clone(), ns.to_owned(), name.to_owned(), uid.to_owned());
    tokio::spawn(async move {
        for pod in pods {
            if let Err(e) = book.release(&ns, &pod, &name, &uid).await {
                tracing::warn!(
                    %pod, meeting = %name, error = %e,
                    "releasing seats failed; the meeting's next reconcile retries"
                );
            }
        }
    });
}

/// The tree of an assignment, as the placement core sees it.
fn shares_of(a: &Assignment) -> Vec<Share> {
    let all: Vec<&SfuEndpoint> = std::iter::once(&a.origin).chain(&a.edges).collect();
    all.iter()
        .map(|e| {
            let children = all.iter().filter(|c| c.parent.as_deref() == Some(e.pod.as_str())).count() as u64;
            Share {
                pod: e.pod.clone(),
                participants: e.participants.unwrap_or(0).max(0) as u64,
                parent: e.parent.clone(),
                relay_links: children + u64::from(e.parent.is_some()),
            }
        })
        .collect()
}

fn last_generation(s: &MeetingStatus) -> i64 {
    s.migrations.last().map_or(0, |m| m.generation)
}

/// A migrated meeting's new assignment, its moves, and the pods it left.
struct Moved {
    assignment: Assignment,
    moves: Vec<(String, String)>,
    left: Vec<String>,
}

/// Moves a meeting off the failed pods of its assignment onto healthy Ready pods
/// of its pool: new seats are committed first; the old ones are released by the
/// caller once the status names the new pods.
async fn migrate_meeting(
    ctx: &Context,
    m: &Meeting,
    pool: &SfuPool,
    old: &Assignment,
    faults: &[(String, Detected)],
    now: jiff::Timestamp,
) -> Result<std::result::Result<Moved, NotPlaced>> {
    let ns = pool.namespace().unwrap_or_default();
    let name = m.name_any();
    let uid = m.uid().unwrap_or_default();
    let per_pod = pool.spec.capacity.participants_per_pod.max(1) as u64;
    let strategy = strategy_of(pool);
    let shares = shares_of(old);
    let in_old = |pod: &str| shares.iter().any(|s| s.pod == pod);
    // Seats taken by an earlier attempt that crashed before its status write.
    for pod in stray_seats(ctx, pool, &name, &uid, &pods_of(old)) {
        ctx.book.release(&ns, &pod, &name, &uid).await.ok();
    }
    let failed: Vec<String> = faults.iter().map(|(p, _)| p.clone()).collect();
    let ready = ready_pods(ctx, pool, now);
    let names: Vec<String> = ready.iter().map(|p| p.name.clone()).collect();
    let (chosen, commits) = ctx
        .book
        .reserve(&ns, &names, |taken| {
            let candidates = candidates(&ready, taken, per_pod);
            match place::replace(strategy, &candidates, &shares, &failed) {
                Ok(r) => {
                    // Seats to write: every share whose pod or size is new.
                    let adds = r
                        .shares
                        .iter()
                        .filter(|s| !shares.iter().any(|o| o.pod == s.pod && o.slots() == s.slots()))
                        .map(|s| (s.pod.clone(), name.clone(), Seats { uid: uid.clone(), seats: s.slots() }, per_pod))
                        .collect();
                    (Ok(r), adds)
                }
                Err(e) => (Err(e), vec![]),
            }
        })
        .await;
    let replacement = match chosen {
        Ok(r) => r,
        Err(e) => return Ok(Err(NotPlaced::from_shortfall(pool, e))),
    };
    let errors: Vec<String> = commits.iter().filter_map(|(_, r)| r.as_ref().err().map(|e| e.to_string())).collect();
    if !errors.is_empty() {
        for (pod, r) in &commits {
            if r.is_ok() && !in_old(pod) {
                ctx.book.release(&ns, pod, &name, &uid).await.ok();
            }
        }
        return Ok(Err(NotPlaced {
            reason: "Contended",
            message: format!("seats changed while moving: {}", errors.join("; ")),
        }));
    }
    let endpoint = |s: &Share| -> SfuEndpoint {
        let participants = Some(s.participants as i32);
        match ready.iter().find(|p| p.name == s.pod) {
            Some(r) => SfuEndpoint {
                pod: s.pod.clone(),
                endpoint: r.endpoint.clone(),
                participants,
                parent: s.parent.clone(),
                node: r.node.clone(),
                zone: r.zone.clone(),
            },
            // A healthy pod of the old tree that takes no new meetings (draining): as it was.
            None => {
                let was =
                    std::iter::once(&old.origin).chain(&old.edges).find(|e| e.pod == s.pod).expect("from the old tree");
                SfuEndpoint { participants, parent: s.parent.clone(), ..was.clone() }
            }
        }
    };
    let mut endpoints = replacement.shares.iter().map(endpoint);
    let origin = endpoints.next().expect("a placement has an origin");
    let assignment = Assignment { pool: old.pool.clone(), origin, edges: endpoints.collect(), at: old.at.clone() };
    let left =
        shares.iter().filter(|o| !replacement.shares.iter().any(|s| s.pod == o.pod)).map(|o| o.pod.clone()).collect();
    Ok(Ok(Moved { assignment, moves: replacement.moves, left }))
}

fn strategy_of(pool: &SfuPool) -> place::Strategy {
    match pool.spec.placement.strategy {
        PlacementStrategy::Packed => place::Strategy::Packed,
        PlacementStrategy::Distributed => place::Strategy::Distributed,
    }
}

async fn release_assignment(ctx: &Context, ns: &str, name: &str, uid: &str, a: Option<&Assignment>) -> Result<()> {
    let Some(a) = a else { return Ok(()) };
    for e in std::iter::once(&a.origin).chain(&a.edges) {
        if let Err(e) = ctx.book.release(ns, &e.pod, name, uid).await {
            tracing::warn!(pod = %e, "releasing seats failed; housekeeping will retry");
        }
    }
    let _ = ctx.pool_trigger.unbounded_send(ObjectRef::new(&a.pool).within(ns));
    Ok(())
}

/// Seats for `participants` on Ready pods of `pool`, committed to their ledgers.
async fn place_meeting(
    ctx: &Context,
    m: &Meeting,
    pool: &SfuPool,
    participants: u64,
    now: jiff::Timestamp,
) -> Result<std::result::Result<Assignment, NotPlaced>> {
    let ns = pool.namespace().unwrap_or_default();
    let name = m.name_any();
    let uid = m.uid().unwrap_or_default();
    let per_pod = pool.spec.capacity.participants_per_pod.max(1) as u64;
    let strategy = strategy_of(pool);
    // Seats left over by an earlier attempt that crashed before its status write.
    for pod in stray_seats(ctx, pool, &name, &uid, &[]) {
        ctx.book.release(&ns, &pod, &name, &uid).await.ok();
    }
    let ready = ready_pods(ctx, pool, now);
    let names: Vec<String> = ready.iter().map(|p| p.name.clone()).collect();
    let (chosen, commits) = ctx
        .book
        .reserve(&ns, &names, |taken| {
            let candidates = candidates(&ready, taken, per_pod);
            match place::place(strategy, &candidates, participants) {
                Ok(shares) => {
                    let adds = shares
                        .iter()
                        .map(|s| (s.pod.clone(), name.clone(), Seats { uid: uid.clone(), seats: s.slots() }, per_pod))
                        .collect();
                    (Ok(shares), adds)
                }
                Err(e) => (Err(e), vec![]),
            }
        })
        .await;
    let shares = match chosen {
        Ok(s) => s,
        Err(e) => return Ok(Err(NotPlaced::from_shortfall(pool, e))),
    };
    let failed: Vec<String> = commits.iter().filter_map(|(_, r)| r.as_ref().err().map(|e| e.to_string())).collect();
    if !failed.is_empty() {
        for (pod, r) in &commits {
            if r.is_ok() {
                ctx.book.release(&ns, pod, &name, &uid).await.ok();
            }
        }
        return Ok(Err(NotPlaced {
            reason: "Contended",
            message: format!("seats changed while placing: {}", failed.join("; ")),
        }));
    }
    let endpoint = |pod: &str| {
        let r = ready.iter().find(|p| p.name == pod).expect("chosen from ready");
        (r.endpoint.clone(), r.node.clone(), r.zone.clone())
    };
    let mut endpoints = shares.iter().map(|s| {
        let (endpoint, node, zone) = endpoint(&s.pod);
        SfuEndpoint {
            pod: s.pod.clone(),
            endpoint,
            participants: Some(s.participants as i32),
            parent: s.parent.clone(),
            node,
            zone,
        }
    });
    let origin = endpoints.next().expect("a placement has an origin");
    Ok(Ok(Assignment { pool: pool.name_any(), origin, edges: endpoints.collect(), at: Some(Time(now)) }))
}

fn same_status(a: &MeetingStatus, b: &MeetingStatus) -> bool {
    let strip = |s: &MeetingStatus| MeetingStatus { conditions: vec![], participants: None, ..s.clone() };
    strip(a) == strip(b) && same(&a.conditions, &b.conditions)
}

async fn write_status(
    ctx: &Context,
    m: &Meeting,
    current: &MeetingStatus,
    next: MeetingStatus,
    events: Vec<(EventType, &'static str, String)>,
) -> Result<()> {
    if !same_status(current, &next) {
        let api: Api<Meeting> = Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
        let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "status": next});
        api.patch_status(&m.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .writing_status()?;
        ctx.memory.lock().expect("lock").entry(key(m)).or_default().room_code = None;
    }
    // Events go out in the background: they must not hold up the next placement.
    for (type_, reason, note) in events {
        ctx.events.send(m.object_ref(&()), type_, reason, note);
    }
    Ok(())
}

/// Every few seconds: phase gauges; every half minute: seats of meetings that
/// ended or are gone go back to their pods (a crash between a release and a
/// status write, or a Meeting deleted while it held seats).
async fn housekeeping(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        round += 1;
        let meetings = ctx.meetings.state();
        let mut phases: HashMap<&'static str, i64> =
            ["None", "Scheduled", "Waiting", "Active", "Ended", "Failed"].into_iter().map(|p| (p, 0)).collect();
        let mut reserved = 0i64;
        for m in &meetings {
            let s = m.status.as_ref();
            *phases.entry(phase_name(s.and_then(|s| s.phase))).or_default() += 1;
            if s.is_some_and(|s| s.reservation.is_some() && s.assignment.is_none()) {
                reserved += 1;
            }
        }
        for (phase, n) in phases {
            ctx.metrics.meetings.get_or_create(&PhaseLabels { phase }).set(n);
        }
        ctx.metrics.reservations.set(reserved);
        if !round.is_multiple_of(6) || !ctx.meetings.is_empty() && meetings.is_empty() {
            continue;
        }
        ctx.book.forget_missing();
        let by_key: HashMap<(String, String), Arc<Meeting>> =
            meetings.iter().map(|m| ((m.namespace().unwrap_or_default(), m.name_any()), m.clone())).collect();
        for pod in ctx.caches.pods.state() {
            let ns = pod.namespace().unwrap_or_default();
            for (meeting, seats) in Ledger::of(&pod).0 {
                let holder = by_key.get(&(ns.clone(), meeting.clone()));
                let stale = match holder {
                    None => true,
                    Some(m) => {
                        m.uid().as_deref() != Some(seats.uid.as_str())
                            || m.status
                                .as_ref()
                                .is_some_and(|s| matches!(s.phase, Some(MeetingPhase::Ended | MeetingPhase::Failed)))
                    }
                };
                if stale {
                    tracing::info!(
                        pod = %pod.name_any(), %meeting,
                        "releasing seats of a meeting that ended or is gone"
                    );
                    ctx.book.release(&ns, &pod.name_any(), &meeting, &seats.uid).await.ok();
                }
            }
        }
    }
}
