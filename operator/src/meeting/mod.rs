//! The Meeting controller, one pipeline per reconcile:
//! `observe` (a snapshot from the caches and the seat ledgers) → `decide` (pure:
//! validity, lifecycle phase, what the meeting holds) → `apply` (seats committed
//! to or released from the pods' ledgers) → `finish` (pure: the next status, its
//! conditions and Events) → the status write, then what follows it (old seats of a
//! move released, the Meeting deleted after its TTL).
//!
//! Status field ownership: this controller (field manager `switchboard-operator`)
//! applies everything in `status` but `participants`, which signaling owns
//! (`switchboard-signaling`). Server-side apply keeps the two apart.

pub mod apply;
pub mod decide;
mod housekeeping;
pub mod observe;
pub mod room_codes;
pub mod spec;
pub mod status;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchboard_crds::meeting::MeetingPhase;
use switchboard_crds::{Meeting, MeetingStatus, SfuPool, SignalingPool};

use crate::caches::{Caches, Expectations};
use crate::conditions::same;
use crate::controller::{Backoff, Harness, key_of};
use crate::error::Step;
use crate::labels::*;
use crate::metrics::{Metrics, PlacementLabels, ReasonLabels};
use crate::seats::Book;
use crate::{Error, OperatorConfig, Result};
use decide::{Decision, Holding, Tally};
use observe::{MeetingWrite, Observed};
use room_codes::RoomCodes;
use status::Finished;

const CONTROLLER: &str = "meeting";
/// Meetings reconciled at the same time (placements are group-committed per pod);
/// the rest wait their turn in arrival order (`crate::admission`). Chosen by
/// measurement (BENCHMARKS.md, "Meeting controller").
const RECONCILE_CONCURRENCY: usize = 256;
/// Retries of a failing meeting back off from half a second to two minutes: a
/// placement that failed on a conflict should try again soon.
const BACKOFF: Backoff = Backoff { first: Duration::from_millis(500), max: Duration::from_secs(120) };
/// How long a placement or move of ours may take to show in the caches before a
/// reconcile that does not see it acts again.
const CACHE_GRACE: Duration = Duration::from_secs(10);
/// How soon a reconcile that waits for the caches looks again.
const CACHE_WAIT: Duration = Duration::from_millis(200);
/// A ReconcileFailed Event is published from this many consecutive failures on.
const REPORT_AFTER_FAILURES: u32 = 3;

pub struct Context {
    harness: Arc<Harness>,
    caches: Caches,
    signaling: Store<SignalingPool>,
    book: Book,
    codes: Arc<RoomCodes>,
    /// Placement and migration events, published a few at a time in the background.
    events: crate::events::Queue,
    /// Pools whose reservations changed: the SfuPool controller reconciles them.
    pool_trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<SfuPool>>,
    /// Room codes, placements and moves written, until the caches show them.
    expected: Expectations<MeetingWrite>,
}

fn key(m: &Meeting) -> String {
    key_of(m)
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
    let ctx = Arc::new(context(client, &config, metrics, caches.clone(), pool_trigger));
    let housekeeping = housekeeping::run(ctx.clone());
    // Validation reads the pools: judging meetings before the first list would fail them.
    let _ = caches.pools.wait_until_ready().await;
    let pools: Api<SfuPool> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(ctx.harness.client.clone(), ns),
        None => Api::all(ctx.harness.client.clone()),
    };
    let store = caches.meetings.clone();
    let results = Controller::for_shared_stream(meeting_events, caches.meetings.clone())
        // Unbounded here: the harness's admission bounds it, first come first served.
        .with_config(kube::runtime::controller::Config::default().concurrency(0))
        .watches(pools, watcher::Config::default(), move |pool| waiting_on(&store, &pool))
        // Meetings on SFU pods the failure detector found failed or leaving.
        .reconcile_on(faults)
        .graceful_shutdown_on(ctx.harness.close_on(shutdown))
        .run(reconcile, error_policy, ctx);
    let controller = crate::controller::drive(CONTROLLER, results);
    // Housekeeping lives exactly as long as the controller (it never ends by itself).
    tokio::pin!(housekeeping);
    futures::future::select(std::pin::pin!(controller), housekeeping).await;
}

fn context(
    client: Client,
    config: &OperatorConfig,
    metrics: Metrics,
    caches: Caches,
    pool_trigger: futures::channel::mpsc::UnboundedSender<ObjectRef<SfuPool>>,
) -> Context {
    let signaling: Api<SignalingPool> = match &config.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (signaling_store, writer) = kube::runtime::reflector::store();
    let signaling_stream =
        watcher(signaling, watcher::Config::default()).default_backoff().reflect(writer).touched_objects();
    tokio::spawn(signaling_stream.for_each(|_| futures::future::ready(())));
    let reporter =
        kube::runtime::events::Reporter { controller: FIELD_MANAGER.into(), instance: Some(config.identity.clone()) };
    Context {
        events: crate::events::Queue::start(kube::runtime::events::Recorder::new(client.clone(), reporter)),
        book: Book::new(client.clone(), caches.pods.clone()),
        codes: RoomCodes::new(Api::namespaced(client.clone(), &config.leader_namespace)),
        harness: Arc::new(Harness::new(CONTROLLER, client, config, metrics, RECONCILE_CONCURRENCY, BACKOFF)),
        caches,
        signaling: signaling_store,
        pool_trigger,
        expected: Expectations::new(CACHE_GRACE),
    }
}

/// The meetings of a changed pool's namespace that it may unblock (new Ready
/// pods, a new max): those not yet placed, or refused for want of a pool.
fn waiting_on(meetings: &Store<Meeting>, pool: &SfuPool) -> Vec<ObjectRef<Meeting>> {
    let ns = pool.namespace().unwrap_or_default();
    meetings
        .state()
        .into_iter()
        .filter(|m| m.namespace().as_deref() == Some(ns.as_str()) && waits_on_pools(m))
        .map(|m| ObjectRef::from_obj(&*m))
        .collect()
}

/// Meetings a pool change can help: not yet placed, or refused for want of a pool.
fn waits_on_pools(m: &Meeting) -> bool {
    // No status yet: its first reconcile is under way (it was triggered by the
    // creation), and a pool change cannot tell it more.
    let Some(s) = &m.status else { return false };
    match s.phase {
        Some(MeetingPhase::Failed) => true,
        Some(MeetingPhase::Ended) => false,
        _ => s.assignment.is_none(),
    }
}

async fn reconcile(meeting: Arc<Meeting>, ctx: Arc<Context>) -> Result<Action> {
    let c = &ctx;
    ctx.harness.reconcile(&ctx.caches.meetings, &meeting, |m| async move { reconcile_meeting(m, c).await }).await
}

fn error_policy(meeting: Arc<Meeting>, error: &Error, ctx: Arc<Context>) -> Action {
    let (requeue, failures) = ctx.harness.requeue_after(meeting.as_ref(), error);
    // A single failure (a conflict in a storm) is routine; repeated ones are for the user.
    if failures >= REPORT_AFTER_FAILURES {
        let message = error.to_string();
        tokio::spawn(async move {
            ctx.harness
                .publish(meeting.as_ref(), kube::runtime::events::EventType::Warning, "ReconcileFailed", &message)
                .await
        });
    }
    requeue
}

async fn reconcile_meeting(m: Arc<Meeting>, ctx: &Context) -> Result<Action> {
    if m.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let observed = observe::observe(m.clone(), ctx, jiff::Timestamp::now()).await?;
    let decision = decide::decide(&observed);
    if decision.hold == Holding::WaitForCache {
        return Ok(Action::requeue(CACHE_WAIT));
    }
    // Placing or moving: the writes that give the meeting its pods go before any
    // event, so in a storm of placements or migrations events wait for a lull.
    let _events_held = places(&decision).then(|| ctx.events.hold());
    let outcome = apply::apply(ctx, &observed, &decision).await;
    let finished = status::finish(&observed, decision, outcome);
    write_status(ctx, &m, &finished).await?;
    after_status(ctx, &observed, &finished);
    if finished.delete {
        delete_after_ttl(ctx, &m).await?;
        return Ok(Action::await_change());
    }
    let next = finished.requeue.unwrap_or(Duration::from_secs(300));
    Ok(Action::requeue(next.clamp(Duration::from_millis(100), Duration::from_secs(300))))
}

fn places(d: &Decision) -> bool {
    matches!(d.hold, Holding::Place { .. } | Holding::Migrate { .. })
}

fn same_status(a: &MeetingStatus, b: &MeetingStatus) -> bool {
    let strip =
        |s: &MeetingStatus| MeetingStatus { conditions: vec![], participants: None, end_requested: None, ..s.clone() };
    strip(a) == strip(b) && same(&a.conditions, &b.conditions)
}

/// Writes the status when it says something new, then queues its Events (in the
/// background: they must not hold up the next placement).
async fn write_status(ctx: &Context, m: &Meeting, f: &Finished) -> Result<()> {
    let current = m.status.clone().unwrap_or_default();
    if !same_status(&current, &f.status) {
        let api: Api<Meeting> = Api::namespaced(ctx.harness.client.clone(), &m.namespace().unwrap_or_default());
        let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "status": f.status});
        api.patch_status(&m.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .writing_status()?;
    }
    for (type_, reason, note) in &f.events {
        ctx.events.send(m.object_ref(&()), *type_, reason, note.clone());
    }
    Ok(())
}

/// What follows a status write: the write expected in the caches, the metrics,
/// the pools told, and the seats a move left released.
fn after_status(ctx: &Context, o: &Observed, f: &Finished) {
    let m = &o.meeting;
    if let Some(wrote) = &f.wrote {
        ctx.expected.expect(&key(m), wrote.clone(), Instant::now());
    }
    record(&ctx.harness.metrics, &f.tallies);
    if let Some(detected) = f.moved_since {
        let took = jiff::Timestamp::now().duration_since(detected).as_secs_f64().max(0.0);
        ctx.harness.metrics.migration_duration.observe(took);
        tracing::info!(meeting = %key(m), seconds = took, "migrated");
    }
    let ns = m.namespace().unwrap_or_default();
    for pool in &f.triggers {
        let _ = ctx.pool_trigger.unbounded_send(ObjectRef::new(pool).within(&ns));
    }
    // Only now that the status names the new pods: a crash before this point leaves
    // the old seats held, and the next reconcile moves the meeting exactly once.
    apply::release_in_background(ctx, m, f.release_after.clone());
}

fn record(metrics: &Metrics, tallies: &[Tally]) {
    for tally in tallies {
        match tally {
            Tally::Placement { result, reason } => {
                metrics.placements.get_or_create(&PlacementLabels { result, reason }).inc();
            }
            Tally::ReservationMade => {
                metrics.reservations_made.inc();
            }
            Tally::PlacementLatency(seconds) => metrics.placement_latency.observe(*seconds),
            Tally::Migration { reason } => {
                metrics.migrations.get_or_create(&ReasonLabels { reason }).inc();
            }
        }
    }
}

async fn delete_after_ttl(ctx: &Context, m: &Meeting) -> Result<()> {
    let api: Api<Meeting> = Api::namespaced(ctx.harness.client.clone(), &m.namespace().unwrap_or_default());
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: m.uid(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&m.name_any(), &params).await {
        Ok(_) => tracing::info!(meeting = %key(m), "deleted after its TTL"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => return Err(e).applying("deletion of the Meeting after its TTL"),
    }
    Ok(())
}
