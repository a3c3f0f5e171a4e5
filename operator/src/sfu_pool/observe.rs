//! Observe: what the SfuPool controller knows of a pool before it decides, read
//! from the shared caches only (no API call) and handed on as plain data.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use switchboard_crds::SfuPool;
use switchboard_fleet as fleet;
use switchboard_heartbeat::Observed as Beat;

use super::Context;
use super::startup::{self, StartupFailure};
use crate::caches::{Caches, Expectations};
use crate::labels::*;

/// A pod write of ours the pod cache has not shown yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodWrite {
    Created(String),
    Deleted(String),
}

/// What a decision needs of a live pod besides its view: who it is, and its
/// busy label and safe-to-evict annotation as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: Option<String>,
    pub safe_to_evict: Option<String>,
    pub busy: Option<String>,
}

/// A pool's pods and load as the caches show them.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The live pods (not being deleted) as the fleet core sees them: heartbeat,
    /// node and zone, fault, and the seats their ledgers hold.
    pub views: Vec<fleet::PodView>,
    /// The live pods by name.
    pub pods: BTreeMap<String, PodFacts>,
    /// Participants that scheduled meetings reserve in the pool (not placed yet).
    pub reserved: u64,
    /// When a pod's health may change with nothing new observed (a threshold running out).
    pub fault_recheck: Option<Duration>,
    /// Why the pool's pods cannot start, in the kubelet's words.
    pub stuck: Option<StartupFailure>,
    /// Our pod creations and deletions the cache does not show yet.
    pub pending: Vec<PodWrite>,
    /// The generation whose child objects were last applied (the controller's memory).
    pub children_applied: Option<i64>,
}

/// The pool as the controller's caches and memory have it at `now`.
pub fn observe(pool: &SfuPool, ctx: &Context, now: jiff::Timestamp) -> Observed {
    let children_applied = ctx.memory.lock().expect("lock").get(&super::key(pool)).and_then(|m| m.children_applied);
    Observed { children_applied, ..snapshot(pool, &ctx.caches, &ctx.expected, now, Instant::now()) }
}

/// The pool's pods, heartbeats, reservations and expectations (`at` is the
/// monotonic time expectations are kept by; `now` the time faults are judged at).
pub fn snapshot(
    pool: &SfuPool,
    caches: &Caches,
    expected: &Expectations<PodWrite>,
    now: jiff::Timestamp,
    at: Instant,
) -> Observed {
    let (namespace, name) = (pool.namespace().unwrap_or_default(), pool.name_any());
    let pods = caches.pool_pods(pool);
    // By name: the cache's order is arbitrary, and the plan's order of writes should not be.
    let mut live: Vec<&Arc<Pod>> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    live.sort_by_key(|p| p.metadata.name.clone());
    let pending = expected.pending(&super::key(pool), at, |w| seen(w, &pods));
    let beats = heartbeats(caches, &namespace, &name);
    let mut fault_recheck: Option<Duration> = None;
    let views = live
        .iter()
        .map(|p| {
            let (mut view, verdict) = caches.judge(pool, p, beats.get(&p.name_any()), now);
            view.allocated = crate::seats::Ledger::of(p).total();
            fault_recheck = earliest(fault_recheck, verdict.recheck_after);
            view
        })
        .collect();
    Observed {
        views,
        pods: live.iter().map(|p| (p.name_any(), facts(p))).collect(),
        reserved: crate::seats::pool_reserved(&caches.meetings, &namespace, &name, None),
        fault_recheck,
        stuck: startup::startup_failure(live.iter().map(|p| &***p)),
        pending,
        children_applied: None,
    }
}

/// Whether the cache shows a write of ours: a created pod exists (even terminating),
/// a deleted one is no longer live.
pub fn seen(write: &PodWrite, pods: &[Arc<Pod>]) -> bool {
    match write {
        PodWrite::Created(n) => pods.iter().any(|p| p.name_any() == *n),
        PodWrite::Deleted(n) => {
            !pods.iter().any(|p| p.metadata.deletion_timestamp.is_none() && p.metadata.name.as_ref() == Some(n))
        }
    }
}

/// The SFUs' heartbeats of the pool, by pod.
fn heartbeats(caches: &Caches, namespace: &str, pool: &str) -> HashMap<String, Beat> {
    caches
        .leases
        .state()
        .into_iter()
        .filter(|l| {
            l.namespace().as_deref() == Some(namespace) && l.labels().get(POOL_LABEL).map(String::as_str) == Some(pool)
        })
        .filter_map(|l| Beat::from_lease(&l).ok())
        .map(|o| (o.pod.clone(), o))
        .collect()
}

fn facts(pod: &Pod) -> PodFacts {
    PodFacts {
        uid: pod.uid(),
        safe_to_evict: pod.annotations().get(SAFE_TO_EVICT_ANNOTATION).cloned(),
        busy: pod.labels().get(BUSY_LABEL).cloned(),
    }
}

/// The sooner of two optional delays.
pub fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
