//! The SignalingPool controller: dereference → validate (pure) → build the children
//! (pure) → apply them (server-side apply) → status from the Deployment.

pub mod build;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchboard_crds::{SignalingPool, SignalingPoolStatus};

use crate::conditions::{condition, same};
use crate::labels::FIELD_MANAGER;
use crate::metrics::{ErrorLabels, Failures, Metrics};
use crate::{Error, OperatorConfig, Result};

const CONTROLLER: &str = "signalingpool";
const FAILURE_FIELD_MANAGER: &str = "switchboard-operator-failures";

pub struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    /// Consecutive failures per pool, for the backoff.
    failures: Failures,
}

fn key(p: &SignalingPool) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
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
    let reporter =
        kube::runtime::events::Reporter { controller: FIELD_MANAGER.into(), instance: Some(config.identity.clone()) };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        failures: Failures::default(),
    });
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::labels::COMPONENT_LABEL,
        build::SIGNALING_COMPONENT
    ));
    Controller::new(pools, watcher::Config::default())
        .owns(deployments, owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "signalingpool reconcile");
            }
        })
        .await;
}

async fn reconcile(pool: Arc<SignalingPool>, ctx: Arc<Context>) -> Result<Action> {
    let result = crate::metrics::instrumented(
        &ctx.metrics,
        CONTROLLER,
        tracing::info_span!("reconcile", controller = CONTROLLER, pool = %key(&pool)),
        pool.reconcile(&ctx),
    )
    .await;
    ctx.failures.record(key(&pool), result.is_ok());
    result
}

fn error_policy(pool: Arc<SignalingPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels { controller: CONTROLLER, error: error.metric_label() })
        .inc();
    let backoff = ctx.failures.backoff(&key(&pool));
    tracing::warn!(pool = %key(&pool), error = %error, ?backoff, "reconcile failed; retrying");
    let message = error.to_string();
    tokio::spawn(async move {
        publish(&ctx, &pool, EventType::Warning, "ReconcileFailed", &message).await;
        let _ = report_failure(&ctx, &pool, "ReconcileFailed", message).await;
    });
    Action::requeue(backoff)
}

async fn publish(ctx: &Context, pool: &SignalingPool, type_: EventType, reason: &str, note: &str) {
    crate::events::publish(&ctx.recorder, &pool.object_ref(&()), type_, reason, note).await;
}

/// `ReconcileSucceeded=False` under a field manager of its own (see the SfuPool controller).
async fn report_failure(
    ctx: &Context,
    pool: &SignalingPool,
    reason: &str,
    message: String,
) -> kube::Result<SignalingPool> {
    let api: Api<SignalingPool> = Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let cond = condition(&previous, "ReconcileSucceeded", false, reason, message, pool.metadata.generation);
    let patch =
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool", "status": {"conditions": [cond]}});
    api.patch_status(&pool.name_any(), &PatchParams::apply(FAILURE_FIELD_MANAGER).force(), &Patch::Apply(&patch)).await
}

/// Status from the Deployment: replicas, ready replicas, and conditions.
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

/// The pool's reconcile, as a method (the CRD type lives in another crate).
trait Reconcile {
    async fn reconcile(&self, ctx: &Context) -> Result<Action>;
}

impl Reconcile for SignalingPool {
    async fn reconcile(&self, ctx: &Context) -> Result<Action> {
        if self.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let valid = match build::validate(self) {
            Ok(v) => v,
            Err(reason) => {
                publish(ctx, self, EventType::Warning, "InvalidSpec", &reason).await;
                report_failure(ctx, self, "InvalidSpec", reason).await?;
                return Ok(Action::await_change());
            }
        };
        let ns = valid.namespace.clone();
        let c = &ctx.client;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let deployments: Api<Deployment> = Api::namespaced(c.clone(), &ns);
        let name = build::object_name(&valid.name);
        let existing = deployments.get_opt(&name).await?;

        let sa = build::service_account(&valid);
        Api::<ServiceAccount>::namespaced(c.clone(), &ns).patch(&name, &params, &Patch::Apply(&sa)).await?;
        let rb = build::role_binding(&valid);
        Api::<RoleBinding>::namespaced(c.clone(), &ns).patch(&name, &params, &Patch::Apply(&rb)).await?;
        let mut deployment =
            deployments.patch(&name, &params, &Patch::Apply(&build::deployment(&valid, existing.is_none()))).await?;
        // Right after creation (and after a failed first try): until another manager owns
        // replicas, the initial one takes them, so they stay when ours lets go.
        if !build::replicas_owned_by_others(&deployment, FIELD_MANAGER) {
            let initial = PatchParams::apply(build::INITIAL_REPLICAS_MANAGER);
            deployment = deployments.patch(&name, &initial, &Patch::Apply(&build::initial_replicas(&valid))).await?;
        }
        Api::<Service>::namespaced(c.clone(), &ns)
            .patch(&name, &params, &Patch::Apply(&build::service(&valid)))
            .await?;
        Api::<PodDisruptionBudget>::namespaced(c.clone(), &ns)
            .patch(&name, &params, &Patch::Apply(&build::disruption_budget(&valid)))
            .await?;
        Api::<HorizontalPodAutoscaler>::namespaced(c.clone(), &ns)
            .patch(&name, &params, &Patch::Apply(&build::autoscaler(&valid)))
            .await?;
        if existing.is_none() {
            let note = format!(
                "created Deployment {name} with {} replicas, its Service, PodDisruptionBudget and HPA",
                self.spec.autoscaling.min_replicas
            );
            publish(ctx, self, EventType::Normal, "Created", &note).await;
        }

        let status = status(self, Some(&deployment));
        let unchanged = self.status.as_ref().is_some_and(|s| {
            s.replicas == status.replicas
                && s.ready_replicas == status.ready_replicas
                && s.observed_generation == status.observed_generation
                && same(&s.conditions, &status.conditions)
        });
        if !unchanged {
            let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool", "status": status});
            Api::<SignalingPool>::namespaced(c.clone(), &ns)
                .patch_status(&valid.name, &params, &Patch::Apply(&patch))
                .await?;
        }
        Ok(Action::requeue(Duration::from_secs(300)))
    }
}
