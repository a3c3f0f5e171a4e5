//! The SfuPool controller: dereference → validate → build → plan → apply → status.
//!
//! It watches pools, their pods, the SFUs' heartbeat Leases and node metadata
//! (for zones). A heartbeat triggers a reconcile only when its state or load
//! changes, not on every renewal; expiries are found by requeueing at the next
//! moment the plan could change (`Plan::recheck_after`).

pub mod build;
pub mod startup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};
use serde_json::json;
use switchboard_crds::sfu_pool::{AutoscalingMode, Load, PlacementStrategy, PodSummary, SfuPodState};
use switchboard_crds::{SfuPool, SfuPoolStatus};
use switchboard_fleet as fleet;
use switchboard_heartbeat::{Observed, SfuState};

use crate::caches::{Caches, Expectations};
use crate::conditions::{condition, same};
use crate::controller::{Backoff, Harness};
use crate::error::Step;
use crate::labels::*;
use crate::metrics::{Metrics, PodActionLabels, PoolLabels, ResultLabels};
use crate::{Error, OperatorConfig, Result};

const CONTROLLER: &str = "sfupool";
const BACKOFF: Backoff = Backoff { first: Duration::from_secs(1), max: Duration::from_secs(300) };
/// Pools reconciled at the same time; the rest wait their turn in arrival order
/// (`crate::admission`).
const RECONCILE_CONCURRENCY: usize = 16;
/// How many pods the status lists (the busiest first).
const STATUS_PODS: usize = 50;
/// How soon an eviction the disruption budget refused is tried again.
const EVICTION_RETRY: Duration = Duration::from_secs(1);
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

/// A pod write of ours the pod cache has not shown yet.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PodWrite {
    Created(String),
    Deleted(String),
}

pub struct Context {
    harness: Arc<Harness>,
    config: OperatorConfig,
    caches: Caches,
    memory: Mutex<HashMap<String, PoolMemory>>,
    /// Pods created or deleted whose watch event has not arrived yet.
    expected: Expectations<PodWrite>,
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
    let (lease_store, pod_store) = (caches.leases.clone(), caches.pods.clone());
    let ctx = Arc::new(Context {
        harness: harness.clone(),
        config,
        caches,
        memory: Mutex::default(),
        expected: Expectations::new(EXPECTATION_TIMEOUT),
    });

    // A renewal that changes nothing but renewTime triggers nothing.
    let last_beats: Mutex<HashMap<String, (SfuState, u32, u32)>> = Mutex::default();
    let lease_to_pool = move |lease: Lease| {
        let ns = lease.namespace().unwrap_or_default();
        let pool = lease.labels().get(POOL_LABEL).cloned();
        let summary = Observed::from_lease(&lease).ok().map(|o| {
            (
                o.heartbeat.state,
                o.heartbeat.load.participants,
                o.heartbeat.load.published_tracks + o.heartbeat.load.subscribed_tracks,
            )
        });
        let lease_key = format!("{ns}/{}", lease.name_any());
        let changed = {
            let mut beats = last_beats.lock().expect("lock");
            // Forget deleted Leases now and then (the watch reports them as touched too).
            if beats.len() > lease_store.len() + 256 {
                beats.retain(|k, _| {
                    let (ns, name) = k.split_once('/').unwrap_or_default();
                    lease_store.get(&ObjectRef::new(name).within(ns)).is_some()
                });
            }
            match summary {
                Some(s) => beats.insert(lease_key, s) != Some(s),
                None => beats.remove(&lease_key).is_some(),
            }
        };
        pool.filter(|_| changed).map(|p| ObjectRef::<SfuPool>::new(&p).within(&ns))
    };

    // A node whose readiness or cordon changes: the pools with pods on it.
    let last_nodes: Mutex<HashMap<String, fleet::health::NodeView>> = Mutex::default();
    let node_to_pools = move |node: Node| {
        let name = node.name_any();
        let view = crate::caches::node_view(&node);
        let changed = last_nodes.lock().expect("lock").insert(name.clone(), view.clone()) != Some(view);
        if !changed {
            return Vec::new();
        }
        let mut pools: Vec<ObjectRef<SfuPool>> = pod_store
            .state()
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
            .filter_map(|p| Some(ObjectRef::new(p.labels().get(POOL_LABEL)?).within(&p.namespace()?)))
            .collect();
        pools.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pools.dedup();
        pools
    };

    controller
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
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "sfupool reconcile");
            }
        })
        .await;
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

fn error_policy(pool: Arc<SfuPool>, error: &Error, ctx: Arc<Context>) -> Action {
    let (requeue, _) = ctx.harness.requeue_after(pool.as_ref(), error);
    // Report where a user looks: an Event and the ReconcileSucceeded condition.
    let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    ctx.harness.report_in_background(pool, previous, error);
    requeue
}

async fn publish(ctx: &Context, pool: &SfuPool, type_: EventType, reason: &str, note: &str) {
    ctx.harness.publish(pool, type_, reason, note).await;
}

fn policy(pool: &SfuPool, hash: &str, ctx: &Context) -> fleet::Policy {
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
        startup_timeout: ctx.config.sfu_startup_timeout,
        template_hash: hash.to_owned(),
        evict_failed: pool.spec.remediation.evict_pods,
    }
}

async fn reconcile_pool(pool: &SfuPool, ctx: &Context) -> Result<Action> {
    if pool.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove pods and children.
        return Ok(Action::await_change());
    }
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let pools: Api<SfuPool> = Api::namespaced(ctx.harness.client.clone(), &namespace);

    // Validate (pure).
    let valid = match build::validate(pool) {
        Ok(v) => v,
        Err(reason) => {
            publish(ctx, pool, EventType::Warning, "InvalidSpec", &reason).await;
            let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
            ctx.harness.report_failure(pool, &previous, "InvalidSpec", reason).await.writing_status()?;
            return Ok(Action::await_change());
        }
    };

    // Children, once per generation.
    let generation = pool.metadata.generation;
    let children_done = ctx.memory.lock().expect("lock").get(&key(pool)).and_then(|m| m.children_applied) == generation;
    if !children_done {
        apply_children(&valid, ctx).await?;
        ctx.memory.lock().expect("lock").entry(key(pool)).or_default().children_applied = generation;
    }

    // Dereference from the caches.
    let pods: Vec<Arc<Pod>> = ctx
        .caches
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()) && build::owned_by(p, pool))
        .collect();
    let beats: HashMap<String, Observed> = ctx
        .caches
        .leases
        .state()
        .into_iter()
        .filter(|l| l.namespace().as_deref() == Some(namespace.as_str()) && l.labels().get(POOL_LABEL) == Some(&name))
        .filter_map(|l| Observed::from_lease(&l).ok())
        .map(|o| (o.pod.clone(), o))
        .collect();
    let live: Vec<&Arc<Pod>> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let by_name: HashMap<String, &Arc<Pod>> = live.iter().map(|p| (p.name_any(), *p)).collect();

    // Wait for the cache to show what we did last time (no double creations).
    let now_instant = std::time::Instant::now();
    let settled = ctx
        .expected
        .pending(&key(pool), now_instant, |w| match w {
            PodWrite::Created(n) => pods.iter().any(|p| p.name_any() == *n),
            PodWrite::Deleted(n) => !live.iter().any(|p| p.metadata.name.as_ref() == Some(n)),
        })
        .is_empty();
    if !settled {
        return Ok(Action::requeue(Duration::from_millis(250)));
    }

    // Plan (pure). Reservations: scheduled meetings due soon that hold no seats yet.
    let reserved = crate::seats::pool_reserved(&ctx.caches.meetings, &namespace, &name, None);
    let now = jiff::Timestamp::now();
    let mut fault_recheck: Option<Duration> = None;
    let views: Vec<fleet::PodView> = live
        .iter()
        .map(|p| {
            let (mut view, verdict) = ctx.caches.judge(pool, p, beats.get(&p.name_any()), now);
            view.allocated = crate::seats::Ledger::of(p).total();
            fault_recheck = match (fault_recheck, verdict.recheck_after) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            view
        })
        .collect();
    let policy = policy(pool, &valid.template_hash, ctx);
    let plan = {
        let mut memory = ctx.memory.lock().expect("lock");
        let m = memory.entry(key(pool)).or_default();
        fleet::plan(&policy, &views, reserved, now, &mut m.scale)
    };

    // Apply.
    let pod_api: Api<Pod> = Api::namespaced(ctx.harness.client.clone(), &namespace);
    if let Some(replicas) = plan.write_spec_replicas {
        let from = pool.spec.replicas.unwrap_or(0);
        pools
            .patch(&name, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": replicas}})))
            .await
            .applying(format!("SfuPool {name} spec.replicas"))?;
        let (reason, what) = if replicas as i32 > from { ("ScaledUp", "up") } else { ("ScaledDown", "down") };
        let note = format!(
            "scaled {what} from {from} to {replicas} pods: {} participants allocated, capacity {} per pod",
            plan.allocated_participants, policy.participants_per_pod
        );
        publish(ctx, pool, EventType::Normal, reason, &note).await;
    }
    // Creations go out in parallel: a new pool of 20 pods should not wait for 20 round trips.
    let pod = build::sfu_pod(&valid);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let results: Vec<kube::Result<Pod>> = futures::stream::iter(0..plan.create)
        .map(|_| pod_api.create(&params, &pod))
        .buffer_unordered(4)
        .collect()
        .await;
    let mut created = Vec::new();
    let mut create_error = None;
    for result in results {
        match result {
            Ok(pod) => {
                created.push(pod.name_any());
                count(ctx, "create", "Desired");
            }
            Err(e) => create_error = Some(e),
        }
    }
    if !created.is_empty() {
        let note = format!("created {} SFU pod(s): {}", created.len(), summarize(&created));
        publish(ctx, pool, EventType::Normal, "PodsCreated", &note).await;
    }
    if let Some(e) = create_error {
        // Remember what did get created before retrying the rest.
        let at = std::time::Instant::now();
        for n in created {
            ctx.expected.expect(&key(pool), PodWrite::Created(n), at);
        }
        return Err(e).applying("SFU Pod");
    }
    // Busy pods: not evictable by the cluster autoscaler, covered by the PDB. Labels go
    // first, so that an emptied pod's eviction below is no longer held by the PDB.
    for p in &plan.pods {
        let Some(pod) = by_name.get(&p.name) else { continue };
        let want_safe = if p.safe_to_evict { "true" } else { "false" };
        let want_busy = if p.safe_to_evict { "false" } else { "true" };
        let has_safe = pod.annotations().get(SAFE_TO_EVICT_ANNOTATION).map(String::as_str);
        let has_busy = pod.labels().get(BUSY_LABEL).map(String::as_str);
        if has_safe != Some(want_safe) || has_busy != Some(want_busy) {
            let patch = json!({
                "metadata": {"annotations": {SAFE_TO_EVICT_ANNOTATION: want_safe}, "labels": {BUSY_LABEL: want_busy}}
            });
            match pod_api.patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(e).applying(format!("Pod {}", p.name)),
            }
        }
    }
    for pod_name in &plan.start_drain {
        let fault = views.iter().find(|v| &v.name == pod_name).and_then(|v| v.fault);
        let patch = json!({"metadata": {"annotations": {
            DRAINING_ANNOTATION: now.to_string(),
            DRAIN_REASON_ANNOTATION: fault.map_or("ScaleDownOrUpdate", |f| f.as_str()),
        }}});
        match pod_api.patch(pod_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e).applying(format!("Pod {pod_name} drain annotation")),
        }
        let note = match fault {
            None => {
                count(ctx, "drain", "ScaleDownOrUpdate");
                format!("draining pod {pod_name}: it takes no new meetings and is deleted once empty")
            }
            Some(f) => {
                count(ctx, "drain", f.as_str());
                format!(
                    "draining pod {pod_name} ({}): its meetings move to healthy pods, then it is evicted",
                    f.as_str()
                )
            }
        };
        publish(ctx, pool, EventType::Normal, "PodDraining", &note).await;
    }
    let mut deleted = Vec::new();
    let mut blocked_evictions = false;
    for (pod_name, reason) in &plan.delete {
        let Some(pod) = by_name.get(pod_name) else { continue };
        let (label, event_type, why) = match reason {
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
        };
        // A dead SFU, or one past its drain timeout, is deleted outright. Any other
        // pod goes through the Eviction API, which honours the PodDisruptionBudget.
        let evict = !matches!(reason, fleet::DeleteReason::Unhealthy | fleet::DeleteReason::DrainTimeout);
        // A deletion outright does not wait out the pod's grace period (the drain
        // timeout): a dead SFU has nothing to finish, and one past its timeout is done.
        let grace = (!evict).then_some(DELETE_GRACE_SECONDS);
        let options = DeleteParams {
            preconditions: Some(Preconditions { uid: pod.uid(), resource_version: None }),
            grace_period_seconds: grace,
            ..Default::default()
        };
        let result = if evict {
            let params = kube::api::EvictParams { delete_options: Some(options), ..Default::default() };
            pod_api.evict(pod_name, &params).await.map(|_| ())
        } else {
            pod_api.delete(pod_name, &options).await.map(|_| ())
        };
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => continue,
            // The disruption budget holds it (its busy label has not caught up yet).
            Err(kube::Error::Api(s)) if s.code == 429 => {
                ctx.harness.metrics.evictions.get_or_create(&ResultLabels { result: "blocked" }).inc();
                blocked_evictions = true;
                continue;
            }
            Err(e) => return Err(e).applying(format!("deletion of Pod {pod_name}")),
        }
        if evict {
            ctx.harness.metrics.evictions.get_or_create(&ResultLabels { result: "evicted" }).inc();
        }
        deleted.push(pod_name.clone());
        count(ctx, "delete", label);
        let verb = if evict { "evicted" } else { "deleted" };
        publish(ctx, pool, event_type, &format!("PodDeleted{label}"), &format!("{verb} pod {pod_name}: {why}")).await;
    }
    for pod_name in &plan.cancel_drain {
        let patch = json!({"metadata": {"annotations": {DRAINING_ANNOTATION: null, DRAIN_REASON_ANNOTATION: null}}});
        pod_api
            .patch(pod_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .applying(format!("Pod {pod_name}"))?;
        count(ctx, "undrain", "ScaleUp");
    }
    let at = std::time::Instant::now();
    for n in created {
        ctx.expected.expect(&key(pool), PodWrite::Created(n), at);
    }
    for n in deleted {
        ctx.expected.expect(&key(pool), PodWrite::Deleted(n), at);
    }

    // Status.
    let stuck = startup::startup_failure(by_name.values().map(|p| p.as_ref()));
    let status = status(pool, &plan, &policy, &by_name, stuck.as_ref(), ctx);
    update_metrics(ctx, &namespace, &name, &plan);
    let current = pool.status.clone().unwrap_or_default();
    if !same_status(&current, &status) {
        let was_available = current.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True");
        let now_available = status.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True");
        let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool", "status": status});
        pools
            .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .writing_status()?;
        if now_available && !was_available {
            let note = format!("{} of {} SFU pods Ready", status.ready_replicas, plan.desired);
            publish(ctx, pool, EventType::Normal, "Available", &note).await;
        }
        let progressing =
            |s: &SfuPoolStatus| s.conditions.iter().find(|c| c.type_ == "Progressing").map(|c| c.reason.clone());
        if let Some(f) = &stuck
            && progressing(&current) != Some(f.reason.clone())
        {
            publish(ctx, pool, EventType::Warning, &f.reason, &f.message).await;
        }
        if let Some(limit) = &plan.scaling_limited {
            let was_limited = current.conditions.iter().any(|c| c.type_ == "ScalingLimited" && c.status == "True");
            if !was_limited {
                publish(ctx, pool, EventType::Warning, "ScalingLimited", &limit.message).await;
            }
        }
    }

    let next = match (plan.recheck_after, fault_recheck, blocked_evictions) {
        (_, _, true) => Some(EVICTION_RETRY),
        (a, Some(b), _) => Some(a.map_or(b, |a| a.min(b))),
        (a, None, _) => a,
    };
    let next = next.unwrap_or(Duration::from_secs(60)).clamp(Duration::from_millis(200), Duration::from_secs(60));
    Ok(Action::requeue(next))
}

/// Grace period of an SFU pod deleted outright (Unhealthy or past its drain timeout).
const DELETE_GRACE_SECONDS: u32 = 10;

fn summarize(names: &[String]) -> String {
    if names.len() <= 5 { names.join(", ") } else { format!("{}, and {} more", names[..5].join(", "), names.len() - 5) }
}

fn count(ctx: &Context, action: &'static str, reason: &'static str) {
    ctx.harness.metrics.sfu_pod_actions.get_or_create(&PodActionLabels { action, reason }).inc();
}

async fn apply_children(v: &build::ValidPool<'_>, ctx: &Context) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let ns = &v.namespace;
    let c = &ctx.harness.client;
    let sa = build::service_account(v);
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(c.clone(), ns)
        .patch(&sa.name_any(), &params, &Patch::Apply(&sa))
        .await
        .applying(format!("ServiceAccount {}", sa.name_any()))?;
    let rb = build::role_binding(v);
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(c.clone(), ns)
        .patch(&rb.name_any(), &params, &Patch::Apply(&rb))
        .await
        .applying(format!("RoleBinding {}", rb.name_any()))?;
    let svc = build::headless_service(v);
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(c.clone(), ns)
        .patch(&svc.name_any(), &params, &Patch::Apply(&svc))
        .await
        .applying(format!("Service {}", svc.name_any()))?;
    let pdb = build::disruption_budget(v);
    Api::<k8s_openapi::api::policy::v1::PodDisruptionBudget>::namespaced(c.clone(), ns)
        .patch(&pdb.name_any(), &params, &Patch::Apply(&pdb))
        .await
        .applying(format!("PodDisruptionBudget {}", pdb.name_any()))?;
    Ok(())
}

fn state_of(s: fleet::PodState) -> SfuPodState {
    match s {
        fleet::PodState::Starting => SfuPodState::Starting,
        fleet::PodState::Ready => SfuPodState::Ready,
        fleet::PodState::Draining => SfuPodState::Draining,
        fleet::PodState::Drained => SfuPodState::Drained,
        fleet::PodState::Unhealthy => SfuPodState::Unhealthy,
    }
}

fn status(
    pool: &SfuPool,
    plan: &fleet::Plan,
    policy: &fleet::Policy,
    live: &HashMap<String, &Arc<Pod>>,
    stuck: Option<&startup::StartupFailure>,
    ctx: &Context,
) -> SfuPoolStatus {
    let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let generation = pool.metadata.generation;
    let ready = plan.count(fleet::PodState::Ready);
    let deleting: Vec<&str> = plan.delete.iter().map(|(n, _)| n.as_str()).collect();
    let mut pods: Vec<PodSummary> = plan
        .pods
        .iter()
        .filter(|p| !deleting.contains(&p.name.as_str()))
        .map(|p| {
            let pod = live.get(&p.name);
            let node = pod.and_then(|x| x.spec.as_ref()).and_then(|s| s.node_name.clone());
            let zone = node.as_deref().and_then(|n| ctx.caches.zone(n));
            PodSummary {
                name: p.name.clone(),
                state: state_of(p.state),
                node,
                zone,
                participants: p.participants as i64,
                tracks: p.tracks as i64,
            }
        })
        .collect();
    pods.sort_by(|a, b| b.participants.cmp(&a.participants).then(a.name.cmp(&b.name)));
    pods.truncate(STATUS_PODS);

    let min_ready = policy.min_replicas.min(plan.desired);
    let available = ready >= min_ready && (ready > 0 || plan.desired == 0);
    let progressing_why = if let Some(f) = stuck {
        Some((f.reason.as_str(), f.message.clone()))
    } else if plan.create > 0 || plan.count(fleet::PodState::Starting) > 0 {
        Some(("PodsStarting", format!("{} of {} pods Ready", ready, plan.desired)))
    } else if plan.outdated > 0 {
        Some(("RollingUpdate", format!("{} pods of an older template remain", plan.outdated)))
    } else if plan.count(fleet::PodState::Draining) > 0 {
        Some(("Draining", format!("{} pods draining", plan.count(fleet::PodState::Draining))))
    } else {
        None
    };
    let conditions = vec![
        condition(
            &previous,
            "Available",
            available,
            if available { "MinimumReplicasReady" } else { "NotEnoughReadyPods" },
            format!("{ready} Ready SFU pods; at least {min_ready} needed"),
            generation,
        ),
        match &progressing_why {
            Some((reason, message)) => condition(&previous, "Progressing", true, reason, message.clone(), generation),
            None => condition(
                &previous,
                "Progressing",
                false,
                "Stable",
                format!("{} pods as desired", plan.desired),
                generation,
            ),
        },
        match &plan.scaling_limited {
            Some(limit) => {
                condition(&previous, "ScalingLimited", true, limit.reason, limit.message.clone(), generation)
            }
            None => condition(
                &previous,
                "ScalingLimited",
                false,
                "WithinLimits",
                format!("{} pods within [{}, {}]", plan.desired, policy.min_replicas, policy.max_replicas),
                generation,
            ),
        },
        condition(&previous, "ReconcileSucceeded", true, "Reconciled", "", generation),
    ];
    SfuPoolStatus {
        observed_generation: generation,
        replicas: live.len() as i32,
        ready_replicas: ready as i32,
        draining_replicas: (plan.count(fleet::PodState::Draining) + plan.count(fleet::PodState::Drained)) as i32,
        unhealthy_replicas: plan.count(fleet::PodState::Unhealthy) as i32,
        selector: Some(build::selector_string(&pool.name_any())),
        capacity: Some(Load { participants: plan.ready_capacity as i64, tracks: None }),
        allocated: Some(Load {
            participants: plan.allocated_participants as i64,
            tracks: Some(plan.allocated_tracks as i64),
        }),
        reserved: Some(Load { participants: plan.reserved_participants as i64, tracks: None }),
        pods,
        conditions,
    }
}

fn same_status(a: &SfuPoolStatus, b: &SfuPoolStatus) -> bool {
    let strip = |s: &SfuPoolStatus| SfuPoolStatus { conditions: vec![], ..s.clone() };
    strip(a) == strip(b) && same(&a.conditions, &b.conditions)
}

fn update_metrics(ctx: &Context, namespace: &str, name: &str, plan: &fleet::Plan) {
    let labels = PoolLabels { namespace: namespace.into(), pool: name.into() };
    ctx.harness.metrics.pool_ready_pods.get_or_create(&labels).set(plan.count(fleet::PodState::Ready) as i64);
    ctx.harness.metrics.pool_desired_pods.get_or_create(&labels).set(plan.desired as i64);
    ctx.harness.metrics.pool_allocated_participants.get_or_create(&labels).set(plan.allocated_participants as i64);
    ctx.harness.metrics.pool_capacity_participants.get_or_create(&labels).set(plan.ready_capacity as i64);
}
