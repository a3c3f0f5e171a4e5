//! The SfuPool controller: validate (pure) → observe (the pool's pods, heartbeats,
//! nodes and reservations, from the shared caches) → decide (pure: the fleet plan
//! and the writes that carry it out) → apply (API writes only) → status (pure) and
//! its write.
//!
//! It watches pools, their pods, the SFUs' heartbeat Leases and node metadata
//! (for zones). A heartbeat triggers a reconcile only when its state or load
//! changes, not on every renewal; expiries are found by requeueing at the next
//! moment the plan could change (`Plan::recheck_after`).

pub mod apply;
pub mod build;
pub mod decide;
pub mod observe;
pub mod startup;
pub mod status;
pub mod template;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use switchboard_crds::SfuPool;
use switchboard_fleet as fleet;
use switchboard_heartbeat::{Observed as Beat, SfuState};

use crate::caches::{Caches, Expectations};
use crate::controller::{Backoff, Harness};
use crate::error::Step;
use crate::labels::*;
use crate::metrics::Metrics;
use crate::{Error, OperatorConfig, Result};

const CONTROLLER: &str = "sfupool";
const BACKOFF: Backoff = Backoff { first: Duration::from_secs(1), max: Duration::from_secs(300) };
/// Pools reconciled at the same time; the rest wait their turn in arrival order
/// (`crate::admission`).
const RECONCILE_CONCURRENCY: usize = 16;
/// An expected pod creation or deletion not seen in the cache after this is forgotten.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Per-pool memory between reconciles (lost on restart, which is safe: the
/// stabilisation window starts again and expectations are re-derived).
#[derive(Default)]
struct PoolMemory {
    scale: fleet::ScaleMemory,
    /// Generation whose child objects (ServiceAccount, RoleBinding, Service, PDB) were applied.
    children_applied: Option<i64>,
}

pub struct Context {
    harness: Arc<Harness>,
    config: OperatorConfig,
    caches: Caches,
    memory: Mutex<HashMap<String, PoolMemory>>,
    /// Pods created or deleted whose watch event has not arrived yet.
    expected: Expectations<observe::PodWrite>,
}

fn key(pool: &SfuPool) -> String {
    format!("{}/{}", pool.namespace().unwrap_or_default(), pool.name_any())
}

/// Runs the controller until `shutdown` resolves (in-flight reconciles finish).
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    caches: Caches,
    changes: crate::caches::PoolChanges,
    triggers: impl futures::Stream<Item = ObjectRef<SfuPool>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let harness = Arc::new(Harness::new(CONTROLLER, client, &config, metrics, RECONCILE_CONCURRENCY, BACKOFF));
    let controller = Controller::for_stream(changes.pools, caches.pools.clone());
    let (lease_to_pool, node_to_pools) = (lease_trigger(caches.leases.clone()), node_trigger(caches.pods.clone()));
    let ctx = Arc::new(Context {
        harness: harness.clone(),
        config,
        caches,
        memory: Mutex::default(),
        expected: Expectations::new(EXPECTATION_TIMEOUT),
    });
    let results = controller
        // Unbounded here: `Context::admission` bounds it (first come, first served),
        // which keeps memory and API bursts flat with hundreds of pools.
        .with_config(
            // Debounced: a burst of placements changes many pod ledgers at once, and
            // one reconcile (and one status write) can cover them all.
            kube::runtime::controller::Config::default().concurrency(0).debounce(Duration::from_millis(300)),
        )
        .owns_stream(changes.pods)
        .watches_stream(changes.leases, lease_to_pool)
        .watches_stream(changes.nodes, node_to_pools)
        // Reservations of scheduled meetings changed.
        .reconcile_on(triggers)
        .graceful_shutdown_on(harness.close_on(shutdown))
        .run(reconcile, error_policy, ctx);
    crate::controller::drive(CONTROLLER, results).await;
}

/// The pool of a heartbeat Lease whose state or load changed: a renewal that
/// changes nothing but renewTime triggers nothing.
fn lease_trigger(leases: Store<Lease>) -> impl Fn(Lease) -> Option<ObjectRef<SfuPool>> + Send + Sync + 'static {
    let last_beats: Mutex<HashMap<String, (SfuState, u32, u32)>> = Mutex::default();
    move |lease: Lease| {
        let ns = lease.namespace().unwrap_or_default();
        let pool = lease.labels().get(POOL_LABEL).cloned();
        let summary = Beat::from_lease(&lease).ok().map(|o| {
            let load = &o.heartbeat.load;
            (o.heartbeat.state, load.participants, load.published_tracks + load.subscribed_tracks)
        });
        let lease_key = format!("{ns}/{}", lease.name_any());
        let changed = {
            let mut beats = last_beats.lock().expect("lock");
            // Forget deleted Leases now and then (the watch reports them as touched too).
            if beats.len() > leases.len() + 256 {
                beats.retain(|k, _| {
                    let (ns, name) = k.split_once('/').unwrap_or_default();
                    leases.get(&ObjectRef::new(name).within(ns)).is_some()
                });
            }
            match summary {
                Some(s) => beats.insert(lease_key, s) != Some(s),
                None => beats.remove(&lease_key).is_some(),
            }
        };
        pool.filter(|_| changed).map(|p| ObjectRef::<SfuPool>::new(&p).within(&ns))
    }
}

/// The pools with pods on a node whose readiness or cordon changed.
fn node_trigger(pods: Store<Pod>) -> impl Fn(Node) -> Vec<ObjectRef<SfuPool>> + Send + Sync + 'static {
    let last_nodes: Mutex<HashMap<String, fleet::health::NodeView>> = Mutex::default();
    move |node: Node| {
        let name = node.name_any();
        let view = crate::caches::node_view(&node);
        let changed = last_nodes.lock().expect("lock").insert(name.clone(), view.clone()) != Some(view);
        if !changed {
            return Vec::new();
        }
        let mut pools: Vec<ObjectRef<SfuPool>> = pods
            .state()
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
            .filter_map(|p| Some(ObjectRef::new(p.labels().get(POOL_LABEL)?).within(&p.namespace()?)))
            .collect();
        pools.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pools.dedup();
        pools
    }
}

async fn reconcile(pool: Arc<SfuPool>, ctx: Arc<Context>) -> Result<Action> {
    let c = &ctx;
    let result =
        ctx.harness.reconcile(&ctx.caches.pools, &pool, |pool| async move { reconcile_pool(&pool, c).await }).await;
    // Drop the memory of pools that are gone.
    let mut memory = ctx.memory.lock().expect("lock");
    if memory.len() > ctx.caches.pools.len() {
        let exists = |k: &str| {
            let (ns, name) = k.split_once('/').unwrap_or_default();
            ctx.caches.pools.get(&ObjectRef::new(name).within(ns)).is_some()
        };
        memory.retain(|k, _| exists(k));
        ctx.expected.retain_keys(exists);
    }
    result
}

fn conditions(pool: &SfuPool) -> Vec<Condition> {
    pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default()
}

fn error_policy(pool: Arc<SfuPool>, error: &Error, ctx: Arc<Context>) -> Action {
    let (requeue, _) = ctx.harness.requeue_after(pool.as_ref(), error);
    // Report where a user looks: an Event and the ReconcileSucceeded condition.
    let previous = conditions(&pool);
    ctx.harness.report_in_background(pool, previous, error);
    requeue
}

async fn publish(ctx: &Context, pool: &SfuPool, event: &decide::Event) {
    ctx.harness.publish(pool, event.type_, &event.reason, &event.note).await;
}

/// A spec the operator cannot build from: said in an Event and the
/// ReconcileSucceeded condition, and left until the pool changes.
async fn refuse(pool: &SfuPool, reason: String, ctx: &Context) -> Result<Action> {
    ctx.harness.publish(pool, EventType::Warning, "InvalidSpec", &reason).await;
    ctx.harness.report_failure(pool, &conditions(pool), "InvalidSpec", reason).await.writing_status()?;
    Ok(Action::await_change())
}

async fn reconcile_pool(pool: &SfuPool, ctx: &Context) -> Result<Action> {
    if pool.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove pods and children.
        return Ok(Action::await_change());
    }
    ctx.caches.synced().await;
    let valid = match build::validate(pool) {
        Ok(v) => v,
        Err(reason) => return refuse(pool, reason, ctx).await,
    };
    let now = jiff::Timestamp::now();
    let observed = observe::observe(pool, ctx, now);
    let policy = decide::policy(pool, &valid.template_hash, ctx.config.sfu_startup_timeout);
    let decision = {
        let mut memory = ctx.memory.lock().expect("lock");
        let scale = &mut memory.entry(key(pool)).or_default().scale;
        decide::decide(pool, &observed, &policy, now, scale)
    };
    let applied = apply::apply(&valid, &decision, ctx).await?;
    // Wait for the caches to show what we did last time (no double creations).
    let Some(actions) = decision.actions() else { return Ok(Action::requeue(decide::CACHE_WAIT)) };
    let next = status::status(pool, &actions.plan, &policy, &observed, now);
    status::record_metrics(ctx, pool, &actions.plan);
    status::write(pool, &next, &actions.plan, &observed, ctx).await?;
    Ok(Action::requeue(decide::requeue(actions.recheck, applied.blocked)))
}
