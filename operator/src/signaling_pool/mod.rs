//! The SignalingPool controller: validate (pure) → observe (the Deployment, whose
//! managed fields say who owns `replicas`) → decide (pure: the children to apply)
//! → apply (server-side apply) → status (pure, from the Deployment).

pub mod build;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use serde_json::json;
use switchboard_crds::{SignalingPool, SignalingPoolStatus};

use crate::conditions::{condition, same};
use crate::controller::{Backoff, Harness};
use crate::error::Step;
use crate::labels::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::{Error, OperatorConfig, Result};

const CONTROLLER: &str = "signalingpool";
/// Pools reconciled at the same time.
const RECONCILE_CONCURRENCY: usize = 16;
const BACKOFF: Backoff = Backoff { first: Duration::from_secs(1), max: Duration::from_secs(300) };
/// A pool is looked at again this often without any change seen (status from its Deployment).
const RESYNC: Duration = Duration::from_secs(300);

pub struct Context {
    harness: Arc<Harness>,
    pools: Store<SignalingPool>,
}

pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pools, deployments): (Api<SignalingPool>, Api<Deployment>) = match &config.watch_namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let harness = Arc::new(Harness::new(CONTROLLER, client, &config, metrics, RECONCILE_CONCURRENCY, BACKOFF));
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::labels::COMPONENT_LABEL,
        build::SIGNALING_COMPONENT
    ));
    let controller = Controller::new(pools, watcher::Config::default());
    let ctx = Arc::new(Context { pools: controller.store(), harness: harness.clone() });
    let results = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(0))
        .owns(deployments, owned)
        .graceful_shutdown_on(harness.close_on(shutdown))
        .run(reconcile, error_policy, ctx);
    crate::controller::drive(CONTROLLER, results).await;
}

async fn reconcile(pool: Arc<SignalingPool>, ctx: Arc<Context>) -> Result<Action> {
    ctx.harness.reconcile(&ctx.pools, &pool, |pool| reconcile_pool(pool, &ctx.harness)).await
}

fn error_policy(pool: Arc<SignalingPool>, error: &Error, ctx: Arc<Context>) -> Action {
    let (requeue, _) = ctx.harness.requeue_after(pool.as_ref(), error);
    let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    ctx.harness.report_in_background(pool, previous, error);
    requeue
}

async fn reconcile_pool(pool: Arc<SignalingPool>, h: &Harness) -> Result<Action> {
    if pool.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let valid = match build::validate(&pool) {
        Ok(v) => v,
        Err(reason) => {
            h.publish(pool.as_ref(), EventType::Warning, "InvalidSpec", &reason).await;
            let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
            h.report_failure(pool.as_ref(), &previous, "InvalidSpec", reason).await.writing_status()?;
            return Ok(Action::await_change());
        }
    };
    let existing = observe(&valid, h).await?;
    let children = decide(&valid, existing.as_ref());
    let deployment = apply(&valid, &children, h).await?;
    let next = status(&pool, Some(&deployment));
    if status_changed(pool.status.as_ref(), &next) {
        let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool", "status": next});
        Api::<SignalingPool>::namespaced(h.client.clone(), &valid.namespace)
            .patch_status(&valid.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .writing_status()?;
    }
    if let Some(note) = &children.created_note {
        h.publish(pool.as_ref(), EventType::Normal, "Created", note).await;
    }
    Ok(Action::requeue(RESYNC))
}

/// The pool's Deployment as the API server has it (not cached: its managed fields
/// say whether anyone else owns `replicas` yet).
async fn observe(v: &build::ValidSignaling<'_>, h: &Harness) -> Result<Option<Deployment>> {
    let name = build::object_name(&v.name);
    Api::<Deployment>::namespaced(h.client.clone(), &v.namespace)
        .get_opt(&name)
        .await
        .observing(format!("Deployment {name}"))
}

/// What the pool is made of, built from the validated pool and what exists.
pub struct Children {
    pub service_account: ServiceAccount,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
    /// The Deployment's first replica count, applied once by the initial manager
    /// (`build::initial_replicas`) unless another manager already owns `replicas`.
    pub initial_replicas: serde_json::Value,
    pub service: Service,
    pub disruption_budget: PodDisruptionBudget,
    /// None in External mode (any HPA of ours is deleted).
    pub autoscaler: Option<HorizontalPodAutoscaler>,
    /// Set when the Deployment is new: the Event that says what was created.
    pub created_note: Option<String>,
}

/// The children to apply (pure).
pub fn decide(v: &build::ValidSignaling<'_>, existing: Option<&Deployment>) -> Children {
    let create = existing.is_none();
    Children {
        service_account: build::service_account(v),
        role_binding: build::role_binding(v),
        deployment: build::deployment(v, create),
        initial_replicas: build::initial_replicas(v),
        service: build::service(v),
        disruption_budget: build::disruption_budget(v),
        autoscaler: build::autoscaler(v),
        created_note: create.then(|| {
            format!(
                "created Deployment {} with {} replicas, its Service, PodDisruptionBudget{}",
                build::object_name(&v.name),
                v.pool.spec.autoscaling.min_replicas,
                if build::autoscaler(v).is_some() { " and HPA" } else { " (scaled externally)" }
            )
        }),
    }
}

/// Applies the children; the Deployment as written.
async fn apply(v: &build::ValidSignaling<'_>, c: &Children, h: &Harness) -> Result<Deployment> {
    let ns = &v.namespace;
    h.server_side_apply(ns, &c.service_account).await?;
    h.server_side_apply(ns, &c.role_binding).await?;
    let mut deployment = h.server_side_apply(ns, &c.deployment).await?;
    // Right after creation (and after a failed first try): until another manager owns
    // replicas, the initial one takes them, so they stay when ours lets go.
    if !build::replicas_owned_by_others(&deployment, FIELD_MANAGER) {
        let name = build::object_name(&v.name);
        let initial = PatchParams::apply(build::INITIAL_REPLICAS_MANAGER);
        deployment = Api::<Deployment>::namespaced(h.client.clone(), ns)
            .patch(&name, &initial, &Patch::Apply(&c.initial_replicas))
            .await
            .applying(format!("Deployment {name} initial replicas"))?;
    }
    h.server_side_apply(ns, &c.service).await?;
    h.server_side_apply(ns, &c.disruption_budget).await?;
    match &c.autoscaler {
        Some(hpa) => {
            h.server_side_apply(ns, hpa).await?;
        }
        None => {
            let name = build::object_name(&v.name);
            let hpas = Api::<HorizontalPodAutoscaler>::namespaced(h.client.clone(), ns);
            let existing = hpas.get_opt(&name).await.observing(format!("HorizontalPodAutoscaler {name}"))?;
            // Only the HPA this pool made (the user's own HPA is theirs to keep).
            let ours = existing.is_some_and(|hpa| {
                hpa.metadata
                    .owner_references
                    .unwrap_or_default()
                    .iter()
                    .any(|o| Some(&o.uid) == v.pool.metadata.uid.as_ref())
            });
            if ours {
                match hpas.delete(&name, &Default::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e).applying(format!("deleting HorizontalPodAutoscaler {name}")),
                }
            }
        }
    }
    Ok(deployment)
}

/// Status from the Deployment: replicas, ready replicas, and conditions (pure).
pub fn status(pool: &SignalingPool, deployment: Option<&Deployment>) -> SignalingPoolStatus {
    let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let generation = pool.metadata.generation;
    let d = deployment.and_then(|d| d.status.clone()).unwrap_or_default();
    let ready = d.ready_replicas.unwrap_or(0);
    let available = if ready >= 1 {
        condition(
            &previous,
            "Available",
            true,
            "ReplicasReady",
            format!("{ready} of {} replicas ready", d.replicas.unwrap_or(0)),
            generation,
        )
    } else {
        condition(&previous, "Available", false, "NoReadyReplicas", "no signaling replica is ready yet", generation)
    };
    let reconciled = condition(
        &previous,
        "ReconcileSucceeded",
        true,
        "Applied",
        "Deployment, Service, PodDisruptionBudget and HPA applied",
        generation,
    );
    SignalingPoolStatus {
        observed_generation: generation,
        replicas: d.replicas.unwrap_or(0),
        ready_replicas: ready,
        // The replicas' field: applying it here would own it and could put back a
        // count they have since replaced.
        connections: None,
        conditions: vec![available, reconciled],
    }
}

/// Whether `next` says more than the status the pool has (conditions compared
/// without their transition times).
pub fn status_changed(current: Option<&SignalingPoolStatus>, next: &SignalingPoolStatus) -> bool {
    !current.is_some_and(|s| {
        s.replicas == next.replicas
            && s.ready_replicas == next.ready_replicas
            && s.observed_generation == next.observed_generation
            && same(&s.conditions, &next.conditions)
    })
}
