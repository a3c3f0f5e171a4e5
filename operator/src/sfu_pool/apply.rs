//! Apply: the API writes that carry out a decision, and nothing else. Each write's
//! Event is published and its counter counted once the write succeeded, and each
//! pod created or deleted is expected until the pod cache shows it.

use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams, Preconditions};
use kube::ResourceExt;
use serde_json::json;
use switchboard_crds::SfuPool;

use super::decide::{self, Actions, Deletion, Drain, PodPatch, Scale};
use super::observe::PodWrite;
use super::{Context, build, key, publish};
use crate::Result;
use crate::error::Step;
use crate::labels::FIELD_MANAGER;
use crate::metrics::{PodActionLabels, ResultLabels};

/// Pod creations in flight at once: a new pool of 20 pods should not wait for 20 round trips.
const CREATE_CONCURRENCY: usize = 4;

/// What the writes did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub created: Vec<String>,
    pub deleted: Vec<String>,
    /// An eviction the disruption budget refused (the pod's busy label had not caught up).
    pub blocked: bool,
}

/// What became of a deletion or eviction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Gone already, or replaced by another pod of the same name (its uid differs).
    Gone,
    /// Refused by the disruption budget (429).
    Blocked,
}

/// A deletion's or eviction's answer; an error is any other refusal.
pub fn outcome(result: kube::Result<()>) -> kube::Result<Outcome> {
    match result {
        Ok(()) => Ok(Outcome::Done),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Outcome::Gone),
        Err(kube::Error::Api(s)) if s.code == 429 => Ok(Outcome::Blocked),
        Err(e) => Err(e),
    }
}

/// Carries out `decision` for the valid pool.
pub async fn apply(v: &build::ValidPool<'_>, decision: &decide::Decision, ctx: &Context) -> Result<Applied> {
    if decision.children {
        apply_children(v, ctx).await?;
        ctx.memory.lock().expect("lock").entry(key(v.pool)).or_default().children_applied = v.pool.metadata.generation;
    }
    let Some(a) = decision.actions() else { return Ok(Applied::default()) };
    let pods: Api<Pod> = Api::namespaced(ctx.harness.client.clone(), &v.namespace);
    if let Some(s) = &a.scale {
        scale(v, s, ctx).await?;
    }
    let mut applied = Applied { created: create(v, a.create, &pods, ctx).await?, ..Default::default() };
    for m in &a.mark {
        match merge(&pods, m).await {
            // The pod went or changed meanwhile: the next reconcile marks it as it is then.
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e).applying(format!("Pod {}", m.pod)),
        }
    }
    for d in &a.drain {
        drain(v.pool, d, &pods, ctx).await?;
    }
    delete_all(v.pool, a, &pods, &mut applied, ctx).await?;
    for u in &a.undrain {
        merge(&pods, u).await.applying(format!("Pod {}", u.pod))?;
        count(ctx, "undrain", "ScaleUp");
    }
    Ok(applied)
}

async fn merge(pods: &Api<Pod>, p: &PodPatch) -> kube::Result<Pod> {
    pods.patch(&p.pod, &PatchParams::default(), &Patch::Merge(&p.patch)).await
}

fn count(ctx: &Context, action: &'static str, reason: &'static str) {
    ctx.harness.metrics.sfu_pod_actions.get_or_create(&PodActionLabels { action, reason }).inc();
}

async fn scale(v: &build::ValidPool<'_>, s: &Scale, ctx: &Context) -> Result<()> {
    let patch = json!({"spec": {"replicas": s.replicas}});
    Api::<SfuPool>::namespaced(ctx.harness.client.clone(), &v.namespace)
        .patch(&v.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .applying(format!("SfuPool {} spec.replicas", v.name))?;
    publish(ctx, v.pool, &s.event).await;
    Ok(())
}

/// Creates `n` pods in parallel; those created are expected even when another failed.
async fn create(v: &build::ValidPool<'_>, n: u32, pods: &Api<Pod>, ctx: &Context) -> Result<Vec<String>> {
    let pod = build::sfu_pod(v);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let results: Vec<kube::Result<Pod>> = futures::stream::iter(0..n)
        .map(|_| pods.create(&params, &pod))
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    let (mut created, mut error) = (Vec::new(), None);
    for result in results {
        match result {
            Ok(pod) => {
                created.push(pod.name_any());
                count(ctx, "create", "Desired");
            }
            Err(e) => error = Some(e),
        }
    }
    let at = Instant::now();
    for name in &created {
        ctx.expected.expect(&key(v.pool), PodWrite::Created(name.clone()), at);
    }
    if !created.is_empty() {
        publish(ctx, v.pool, &decide::created(&created)).await;
    }
    match error {
        Some(e) => Err(e).applying("SFU Pod"),
        None => Ok(created),
    }
}

async fn drain(pool: &SfuPool, d: &Drain, pods: &Api<Pod>, ctx: &Context) -> Result<()> {
    match pods.patch(&d.pod, &PatchParams::default(), &Patch::Merge(&d.patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e).applying(format!("Pod {} drain annotation", d.pod)),
    }
    count(ctx, "drain", d.reason);
    publish(ctx, pool, &d.event).await;
    Ok(())
}

async fn delete_all(pool: &SfuPool, a: &Actions, pods: &Api<Pod>, applied: &mut Applied, ctx: &Context) -> Result<()> {
    let evictions = |result| ctx.harness.metrics.evictions.get_or_create(&ResultLabels { result }).inc();
    for d in &a.delete {
        match outcome(delete(d, pods).await).applying(format!("deletion of Pod {}", d.pod))? {
            Outcome::Gone => {}
            Outcome::Blocked => {
                evictions("blocked");
                applied.blocked = true;
            }
            Outcome::Done => {
                if d.evict {
                    evictions("evicted");
                }
                ctx.expected.expect(&key(pool), PodWrite::Deleted(d.pod.clone()), Instant::now());
                applied.deleted.push(d.pod.clone());
                count(ctx, "delete", d.reason);
                publish(ctx, pool, &d.event).await;
            }
        }
    }
    Ok(())
}

async fn delete(d: &Deletion, pods: &Api<Pod>) -> kube::Result<()> {
    let options = DeleteParams {
        preconditions: Some(Preconditions { uid: d.uid.clone(), resource_version: None }),
        grace_period_seconds: d.grace_seconds,
        ..Default::default()
    };
    if d.evict {
        let params = EvictParams { delete_options: Some(options), ..Default::default() };
        pods.evict(&d.pod, &params).await.map(|_| ())
    } else {
        pods.delete(&d.pod, &options).await.map(|_| ())
    }
}

/// The pool's ServiceAccount, RoleBinding, headless Service and disruption budget.
async fn apply_children(v: &build::ValidPool<'_>, ctx: &Context) -> Result<()> {
    let h = &ctx.harness;
    h.server_side_apply(&v.namespace, &build::service_account(v)).await?;
    h.server_side_apply(&v.namespace, &build::role_binding(v)).await?;
    h.server_side_apply(&v.namespace, &build::headless_service(v)).await?;
    h.server_side_apply(&v.namespace, &build::disruption_budget(v)).await?;
    Ok(())
}
