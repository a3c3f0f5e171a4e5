//! The failure detector: a few times a second it judges every SFU pod from the
//! caches (`health`), and for each that failed or is leaving with its node it
//! tells the Meeting controller which meetings to move and the SfuPool controller
//! which pool to re-plan. It cordons and taints failed nodes when their pools ask.
//!
//! Detection is periodic rather than event-driven because most faults are a
//! threshold running out (a Lease not renewed, a node NotReady for long enough),
//! which no watch event announces. Everything it knows is rebuilt from the
//! caches, so a restarted operator picks up a migration where it stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use switchboard_crds::{Meeting, SfuPool};
use switchboard_fleet::health::Fault;
use tokio::time::Instant;

use crate::caches::{Caches, FAILED_NODE_TAINT};
use crate::labels::*;
use crate::metrics::{Metrics, ReasonLabels};
use crate::seats::Ledger;
use crate::sfu_pool::build;

/// How often every pod is judged: the detection delay after a threshold.
const TICK: Duration = Duration::from_millis(200);
/// Meetings still on a faulted pod are nudged again this often (a lost trigger,
/// a migration that waits for capacity).
const RETRIGGER: Duration = Duration::from_secs(3);
/// A failed cordon is tried again after this.
const CORDON_RETRY: Duration = Duration::from_secs(5);

pub struct Detector {
    client: Client,
    caches: Caches,
    metrics: Metrics,
    events: crate::events::Queue,
    meetings: UnboundedSender<ObjectRef<Meeting>>,
    pools_to_plan: UnboundedSender<ObjectRef<SfuPool>>,
}

struct Seen {
    fault: Fault,
    nudged: Instant,
}

type PodKey = (String, String);

#[derive(Default)]
struct State {
    faulted: HashMap<PodKey, Seen>,
    /// Meetings on each pod at the last look (with the pod's resourceVersion, so a
    /// ledger is parsed again only when the pod changed), to find those of pods
    /// that vanish.
    ledgers: HashMap<PodKey, (Option<String>, Vec<String>)>,
    cordon_attempts: HashMap<String, Instant>,
}

impl Detector {
    /// A detector telling `meetings` which meetings to move and `pools_to_plan`
    /// which pools to re-plan.
    pub fn new(
        client: &Client,
        config: &crate::OperatorConfig,
        caches: Caches,
        metrics: Metrics,
        meetings: UnboundedSender<ObjectRef<Meeting>>,
        pools_to_plan: UnboundedSender<ObjectRef<SfuPool>>,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(config.identity.clone()),
        };
        let recorder = kube::runtime::events::Recorder::new(client.clone(), reporter);
        Self {
            client: client.clone(),
            caches,
            metrics,
            events: crate::events::Queue::start(recorder),
            meetings,
            pools_to_plan,
        }
    }

    /// Runs until `stop` resolves.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        // Judging from half-filled caches would see every pod as deleted.
        let ready = async {
            let _ = self.caches.pods.wait_until_ready().await;
            let _ = self.caches.leases.wait_until_ready().await;
            let _ = self.caches.nodes.wait_until_ready().await;
            let _ = self.caches.pools.wait_until_ready().await;
        };
        tokio::select! {
            _ = ready => {}
            _ = &mut stop => return,
        }
        let mut state = State::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => return,
            }
            let cordon = self.sweep(&mut state);
            for (node, (pool, threshold)) in cordon {
                let due = state.cordon_attempts.get(&node).is_none_or(|at| at.elapsed() >= CORDON_RETRY);
                if due {
                    state.cordon_attempts.insert(node.clone(), Instant::now());
                    if let Err(e) = self.cordon(&node, &pool, threshold).await {
                        tracing::warn!(%node, error = %e, "cordoning a failed node failed; retrying");
                    }
                }
            }
        }
    }

    /// One look at every SFU pod. Returns the failed nodes to cordon, with the
    /// pool that asked and its threshold.
    fn sweep(&self, state: &mut State) -> BTreeMap<String, (String, Duration)> {
        let now = jiff::Timestamp::now();
        let mut present: HashSet<PodKey> = HashSet::new();
        let mut cordon = BTreeMap::new();
        for pod in self.caches.pods.state() {
            let (Some(ns), Some(pool_name)) = (pod.namespace(), pod.labels().get(POOL_LABEL).cloned()) else {
                continue;
            };
            let Some(pool) = self.caches.pools.get(&ObjectRef::new(&pool_name).within(&ns)) else { continue };
            if !build::owned_by(&pod, &pool) {
                continue;
            }
            let key = (ns, pod.name_any());
            present.insert(key.clone());
            if let Some(node) = self.judge(state, &pool, &pod, key, now) {
                let threshold = pool.spec.remediation.node_not_ready_after.as_std();
                cordon.entry(node).or_insert((pool.name_any(), threshold));
            }
        }
        self.forget_gone(state, &present);
        // Nodes already cordoned by us need nothing more.
        cordon.retain(|node, _| !self.cordoned_by_us(node));
        state.cordon_attempts.retain(|node, _| cordon.contains_key(node));
        cordon
    }

    /// Judges one pod: a new fault is reported, and the meetings on a faulted pod
    /// are told (again every `RETRIGGER`). Returns its node when the pool wants
    /// that node cordoned.
    fn judge(&self, state: &mut State, pool: &SfuPool, pod: &Pod, key: PodKey, now: jiff::Timestamp) -> Option<String> {
        let version = pod.resource_version();
        if state.ledgers.get(&key).is_none_or(|(v, _)| *v != version) {
            let meetings: Vec<String> = Ledger::of(pod).0.into_keys().collect();
            state.ledgers.insert(key.clone(), (version, meetings));
        }
        let meetings: &[String] = state.ledgers.get(&key).map_or(&[], |(_, m)| m.as_slice());
        let beat = self.caches.heartbeat(&key.0, &key.1);
        let (view, verdict) = self.caches.judge(pool, pod, beat.as_ref(), now);
        let Some(detected) = verdict.fault else {
            state.faulted.remove(&key);
            return None;
        };
        let fresh = !state.faulted.contains_key(&key);
        // An empty pod being deleted is routine (scale-down, a drained pod going).
        if detected.fault == Fault::PodDeleted && meetings.is_empty() && fresh {
            return None;
        }
        if fresh {
            self.report(pool, &key.1, view.node.as_deref(), detected.fault, meetings.len());
        }
        let seen = state.faulted.entry(key.clone()).or_insert(Seen { fault: detected.fault, nudged: Instant::now() });
        seen.fault = detected.fault;
        if fresh || seen.nudged.elapsed() >= RETRIGGER {
            seen.nudged = Instant::now();
            for m in meetings {
                let _ = self.meetings.unbounded_send(ObjectRef::new(m).within(&key.0));
            }
        }
        let cordons = detected.fault == Fault::NodeNotReady && pool.spec.remediation.cordon_failed_nodes;
        view.node.filter(|_| cordons)
    }

    /// A new fault: counted, an Event on the pool, the pool re-planned.
    fn report(&self, pool: &SfuPool, pod: &str, node: Option<&str>, fault: Fault, meetings: usize) {
        self.metrics.sfu_faults.get_or_create(&ReasonLabels { reason: fault.as_str() }).inc();
        let node = node.unwrap_or("no node");
        let note =
            format!("SFU pod {pod} on {node}: {}; {meetings} meeting(s) on it move to healthy pods", describe(fault));
        let (type_, reason) =
            if fault.planned() { (EventType::Normal, "SfuLeaving") } else { (EventType::Warning, "SfuFailed") };
        tracing::info!(%pod, fault = fault.as_str(), meetings, "SFU pod fault detected");
        self.publish(pool.object_ref(&()), type_, reason, note);
        let _ = self.pools_to_plan.unbounded_send(ObjectRef::from_obj(pool));
    }

    /// Pods gone from the cache (deleted outright): their meetings move too.
    fn forget_gone(&self, state: &mut State, present: &HashSet<PodKey>) {
        state.ledgers.retain(|key, (_, meetings)| {
            if present.contains(key) {
                return true;
            }
            for m in meetings.iter() {
                let _ = self.meetings.unbounded_send(ObjectRef::new(m).within(&key.0));
            }
            false
        });
        state.faulted.retain(|key, _| present.contains(key));
    }

    fn cordoned_by_us(&self, node: &str) -> bool {
        self.caches.nodes.get(&ObjectRef::new(node)).is_none_or(|n| {
            let spec = n.spec.as_ref();
            let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
            let tainted =
                spec.and_then(|s| s.taints.as_ref()).is_some_and(|ts| ts.iter().any(|t| t.key == FAILED_NODE_TAINT));
            unschedulable && tainted
        })
    }

    /// Cordons a failed node and taints it, so that nothing new lands there
    /// until an administrator has looked at it (`kubectl uncordon` and removing
    /// the taint bring it back).
    async fn cordon(&self, name: &str, pool: &str, threshold: Duration) -> kube::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        let mut node = api.get(name).await?;
        let spec = node.spec.get_or_insert_with(Default::default);
        spec.unschedulable = Some(true);
        let taints = spec.taints.get_or_insert_with(Vec::new);
        if !taints.iter().any(|t| t.key == FAILED_NODE_TAINT) {
            taints.push(Taint {
                key: FAILED_NODE_TAINT.into(),
                value: Some("NodeNotReady".into()),
                effect: "NoSchedule".into(),
                time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())),
            });
        }
        // Replace with the resourceVersion read: a concurrent change makes it fail and retry.
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let node = api.replace(name, &params, &node).await?;
        self.metrics.nodes_cordoned.inc();
        let note = format!(
            "cordoned and tainted {FAILED_NODE_TAINT}:NoSchedule: NotReady for longer than {}s (pool {pool}); its SFU pods are drained and evicted",
            threshold.as_secs()
        );
        tracing::warn!(node = %name, "cordoned a failed node");
        self.publish(node.object_ref(&()), EventType::Warning, "NodeCordoned", note);
        Ok(())
    }

    /// Events go out in the background: detection must not wait on them.
    fn publish(
        &self,
        reference: k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &'static str,
        note: String,
    ) {
        self.events.send(reference, type_, reason, note);
    }
}

fn describe(fault: Fault) -> &'static str {
    match fault {
        Fault::PodDeleted => "the pod is being deleted or evicted",
        Fault::PodFailed => "the pod failed",
        Fault::NodeNotReady => "its node has been NotReady for longer than the pool's threshold",
        Fault::SfuUnhealthy => "the SFU reports itself unhealthy",
        Fault::HeartbeatExpired => "its heartbeat Lease expired",
        Fault::NodeDrained => "its node is being drained",
    }
}
