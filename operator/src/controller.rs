//! The harness every controller runs in, so that they share one shape:
//! admission (first come, first served; `crate::admission`), a tracing span per
//! reconcile, the reconcile counters and timings, consecutive failures with their
//! backoff, the error metric by step, Events, and `ReconcileSucceeded=False` on
//! the object when a reconcile fails.
//!
//! Each controller's reconcile is then the same pipeline:
//! `observe` (a snapshot from the caches, plus the few reads they cannot answer)
//! → `decide` (pure: plain data and an explicit `now` in, a plan out; table-tested)
//! → `apply` (API writes only) → `status` (pure). `docs/architecture.md` walks
//! through one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use switchboard_crds::common::Condition;

use crate::admission::Admission;
use crate::conditions::condition;
use crate::labels::FIELD_MANAGER;
use crate::metrics::{ControllerLabels, ErrorLabels, Metrics};
use crate::{Error, OperatorConfig, Result};

/// Field manager of `ReconcileSucceeded=False`: a manager of its own, because a
/// server-side apply of only this condition by the main manager would drop every
/// other status field that manager owns.
const FAILURE_FIELD_MANAGER: &str = "switchboard-operator-failures";

/// The requeue delay after consecutive failures: `first`, doubling, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after the `failures`-th consecutive failure (the first counts as 1).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }
}

/// `namespace/name`, the key of an object in logs, spans and memories.
pub fn key_of(object: &impl ResourceExt) -> String {
    format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any())
}

/// What a controller shares with the harness.
pub struct Harness {
    pub name: &'static str,
    pub client: Client,
    pub metrics: Metrics,
    recorder: Recorder,
    admission: Admission,
    backoff: Backoff,
    failures: Mutex<HashMap<String, u32>>,
}

impl Harness {
    /// A harness admitting `concurrency` reconciles at a time.
    pub fn new(
        name: &'static str,
        client: Client,
        config: &OperatorConfig,
        metrics: Metrics,
        concurrency: usize,
        backoff: Backoff,
    ) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(config.identity.clone()) };
        Self {
            name,
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            admission: Admission::new(concurrency),
            backoff,
            failures: Mutex::default(),
        }
    }

    /// Runs one reconcile of `object`: waits for its turn, takes the object as the
    /// cache has it then, and counts, times and traces the run. An object that is
    /// gone by its turn (or a harness shutting down) has nothing to do.
    pub async fn reconcile<K, F, Fut>(&self, store: &Store<K>, object: &K, run: F) -> Result<Action>
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        F: FnOnce(Arc<K>) -> Fut,
        Fut: Future<Output = Result<Action>>,
    {
        let Some((_turn, latest)) = self.admission.admit_latest(store, object).await else {
            return Ok(Action::await_change());
        };
        let key = key_of(latest.as_ref());
        let labels = ControllerLabels { controller: self.name };
        self.metrics.reconciles.get_or_create(&labels).inc();
        let started = std::time::Instant::now();
        let span = tracing::info_span!("reconcile", controller = self.name, object = %key);
        // Boxed: a reconcile waiting for its turn stays small.
        let result = Box::pin(tracing::Instrument::instrument(run(latest), span)).await;
        self.metrics.reconcile_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        let mut failures = self.failures.lock().expect("lock");
        match &result {
            Ok(_) => failures.remove(&key),
            Err(_) => Some(*failures.entry(key).and_modify(|n| *n += 1).or_insert(1)),
        };
        if failures.len() > store.len() + 64 {
            failures.retain(|k, _| {
                let (ns, name) = k.split_once('/').unwrap_or_default();
                store.get(&ObjectRef::new(name).within(ns)).is_some()
            });
        }
        result
    }

    /// The error policy's half that is the same everywhere: counts the error by
    /// step and kind, logs it, and gives the requeue for the object's consecutive
    /// failures (returned too, for controllers that report only repeated ones).
    pub fn requeue_after(&self, object: &impl ResourceExt, error: &Error) -> (Action, u32) {
        let labels = ErrorLabels { controller: self.name, step: error.step(), error: error.kind() };
        self.metrics.reconcile_errors.get_or_create(&labels).inc();
        let key = key_of(object);
        let failures = self.failures.lock().expect("lock").get(&key).copied().unwrap_or(1);
        let backoff = self.backoff.after(failures);
        tracing::warn!(controller = self.name, object = %key, error = %error, ?backoff, "reconcile failed; retrying");
        (Action::requeue(backoff), failures)
    }

    /// `shutdown`, closing admission when it resolves: a controller's
    /// `graceful_shutdown_on` then waits only for reconciles already admitted.
    pub fn close_on(
        &self,
        shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ) -> impl Future<Output = ()> + Send + Sync + 'static {
        self.admission.close_on(shutdown)
    }

    /// Publishes an Event about `object` (a failure to publish is logged, never fatal).
    pub async fn publish<K>(&self, object: &K, type_: EventType, reason: &str, note: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        crate::events::publish(&self.recorder, &object.object_ref(&()), type_, reason, note).await;
    }

    /// Sets `ReconcileSucceeded=False` with `reason` on the object's status, leaving
    /// the rest of the status alone (see [`FAILURE_FIELD_MANAGER`]).
    pub async fn report_failure<K>(
        &self,
        object: &K,
        previous: &[Condition],
        reason: &str,
        message: String,
    ) -> kube::Result<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
        let cond = condition(previous, "ReconcileSucceeded", false, reason, message, object.meta().generation);
        let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": {"conditions": [cond]}});
        let params = PatchParams::apply(FAILURE_FIELD_MANAGER).force();
        api.patch_status(&object.name_any(), &params, &Patch::Apply(&patch)).await
    }

    /// Applies `object` (server-side apply, field manager `switchboard-operator`,
    /// forced) in `namespace`; an error names the object. Returns it as written.
    pub async fn server_side_apply<K>(&self, namespace: &str, object: &K) -> Result<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        use crate::error::Step;
        let name = object.name_any();
        Api::<K>::namespaced(self.client.clone(), namespace)
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
            .await
            .applying(format!("{} {name}", K::kind(&())))
    }

    /// Publishes `ReconcileFailed` and sets `ReconcileSucceeded=False`, in the
    /// background (an error policy must not wait on the API server).
    pub fn report_in_background<K>(self: &Arc<Self>, object: Arc<K>, previous: Vec<Condition>, error: &Error)
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (harness, message) = (self.clone(), error.to_string());
        tokio::spawn(async move {
            harness.publish(object.as_ref(), EventType::Warning, "ReconcileFailed", &message).await;
            if let Err(e) = harness.report_failure(object.as_ref(), &previous, "ReconcileFailed", message).await {
                tracing::debug!(error = %e, "reporting the failure in status");
            }
        });
    }
}

/// Runs a kube-runtime controller's results to the end (shutdown). A failed
/// reconcile was already counted, logged and reported by the error policy; here
/// it is only traced.
pub async fn drive<T, E: std::fmt::Display>(name: &'static str, results: impl futures::Stream<Item = Result<T, E>>) {
    use futures::StreamExt;
    results
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(controller = name, error = %e, "reconcile");
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_first_up_to_max() {
        let b = Backoff { first: Duration::from_secs(1), max: Duration::from_secs(300) };
        let delays: Vec<u64> = [0, 1, 2, 3, 9, 10, 40].iter().map(|&f| b.after(f).as_secs()).collect();
        assert_eq!(delays, [1, 1, 2, 4, 256, 300, 300]);
    }
}
