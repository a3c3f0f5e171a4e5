//! Apply: the API writes that carry out a decision, and nothing else. Each write's
//! Event is published and its counter counted once the write succeeded, and each
//! pod created or deleted is expected until the pod cache shows it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, EvictParams, Patch, PatchParams, PostParams, Preconditions};
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
    if !decision.children && (a.create > 0 || api_secret_due(&v.namespace)) {
        // Pods cannot start without the credential's Secret: made again if deleted,
        // before new SFUs need it, and now and then for signaling and recorders.
        ensure_api_secret(v, ctx).await?;
    }
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

/// The pool's ServiceAccount, RoleBinding, headless Service, disruption budget,
/// NetworkPolicy, and the namespace's API credential.
async fn apply_children(v: &build::ValidPool<'_>, ctx: &Context) -> Result<()> {
    let h = &ctx.harness;
    ensure_api_secret(v, ctx).await?;
    h.server_side_apply(&v.namespace, &build::service_account(v)).await?;
    h.server_side_apply(&v.namespace, &build::role_binding(v)).await?;
    h.server_side_apply(&v.namespace, &build::headless_service(v)).await?;
    h.server_side_apply(&v.namespace, &build::disruption_budget(v)).await?;
    h.server_side_apply(&v.namespace, &build::network_policy(v)).await?;
    Ok(())
}

/// 32 bytes from the kernel's random source, as 64 hex digits.
fn random_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// When each namespace's credential Secret was last looked at by a reconcile.
static API_SECRET_CHECKED: Mutex<BTreeMap<String, Instant>> = Mutex::new(BTreeMap::new());
/// A reconcile looks again this long after the last look (a deleted Secret is made
/// again within about this long, for the pods waiting for it).
const API_SECRET_RECHECK: Duration = Duration::from_secs(60);

/// Whether the namespace's credential Secret is due a look.
fn api_secret_due(namespace: &str) -> bool {
    let checked = API_SECRET_CHECKED.lock().expect("lock");
    checked.get(namespace).is_none_or(|at| at.elapsed() >= API_SECRET_RECHECK)
}

/// The namespace's credential Secret exists and lists every live pool of the namespace
/// among its owners. It is made once, with a new random credential, and its data is
/// never written again (a new credential would lock the running pods out of each
/// other); deleting it is how an administrator asks for a new one (docs/sfu.md,
/// "Security").
async fn ensure_api_secret(v: &build::ValidPool<'_>, ctx: &Context) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.harness.client.clone(), &v.namespace);
    let what = || format!("Secret {}", build::API_SECRET);
    let cached = ctx.caches.pools.state();
    let owners = build::api_secret_owners(v, cached.iter().map(|p| p.as_ref()));
    // Twice at most: a pool of the same namespace may make it between our look and our create.
    for _ in 0..2 {
        match secrets.get_opt(build::API_SECRET).await.applying(what())? {
            Some(secret) => {
                if let Some(patch) = build::api_secret_owner_patch(&secret, &owners) {
                    secrets
                        .patch(build::API_SECRET, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                        .applying(what())?;
                }
                break;
            }
            None => {
                let token = random_token().map_err(|e| kube::Error::Service(Box::new(e))).applying(what())?;
                let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                match secrets.create(&params, &build::api_secret(v, &token, owners.clone())).await {
                    Ok(_) => {
                        tracing::info!(namespace = %v.namespace, pool = %v.name, "made the SFU API credential");
                        break;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(e).applying(what()),
                }
            }
        }
    }
    API_SECRET_CHECKED.lock().expect("lock").insert(v.namespace.clone(), Instant::now());
    Ok(())
}
