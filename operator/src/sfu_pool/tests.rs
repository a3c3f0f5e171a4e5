//! Table tests of the SfuPool controller's pure steps: what `decide` makes of an
//! observed pool (which writes, patches, Events and requeue), and what `status`
//! says of it. The plan itself is table-tested in `switchboard_fleet`; these cover
//! what the controller adds around it. Cases follow the e2e suites
//! (`e2e/tests/sfu_pool.rs`, `remediation.rs`, `real_pods.rs`).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::events::EventType;
use serde_json::json;
use switchboard_crds::{Meeting, SfuPool, SfuPoolStatus};
use switchboard_fleet::ScaleMemory;
use switchboard_heartbeat::SfuState;

use super::apply::{Outcome, outcome};
use super::decide::{self, DELETE_GRACE_SECONDS, Decision, EVICTION_RETRY, Event, Pods};
use super::observe::{self, Observed, PodWrite};
use super::{build, status};
use crate::caches::Expectations;
use crate::fixtures::*;
use crate::labels::*;

/// The time of every decision unless a case says otherwise; heartbeats are renewed a second before.
fn now() -> jiff::Timestamp {
    at(100)
}
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);
const ZONE: &str = "eu-west-1a";

/// A pool and what the caches hold about it.
struct World {
    pool: SfuPool,
    pods: Vec<Pod>,
    beats: Vec<Lease>,
    nodes: Vec<Node>,
    meetings: Vec<Meeting>,
    expected: Expectations<PodWrite>,
}

impl World {
    fn new(pool: SfuPool) -> Self {
        let nodes = vec![node("node-a", ZONE)];
        let expected = Expectations::new(Duration::from_secs(30));
        Self { pool, pods: vec![], beats: vec![], nodes, meetings: vec![], expected }
    }
    fn hash(&self) -> String {
        build::template_hash(&self.pool)
    }
    /// A pod of the current template, Ready, marked as the controller marks it.
    fn pod(&self, name: &str, participants: u32) -> PodBuilder {
        sfu_pod(&self.pool, name).template(&self.hash()).busy(participants > 0)
    }
    /// `pod`, its SFU heartbeating `state` with `participants` a second ago.
    fn with(mut self, pod: Pod, state: SfuState, participants: u32) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        self.beats.push(heartbeat("p", &name, state, participants, at(99)));
        self.pods.push(pod);
        self
    }
    /// A Ready pod of the current template serving `participants`.
    fn ready(self, name: &str, participants: u32) -> Self {
        let pod = self.pod(name, participants).build();
        self.with(pod, SfuState::Ready, participants)
    }
    /// `pod` without a heartbeat (yet, or any more).
    fn silent(mut self, pod: Pod) -> Self {
        self.pods.push(pod);
        self
    }
    fn beat(mut self, lease: Lease) -> Self {
        self.beats.push(lease);
        self
    }
    fn node(mut self, node: Node) -> Self {
        self.nodes.push(node);
        self
    }
    fn meeting(mut self, meeting: Meeting) -> Self {
        self.meetings.push(meeting);
        self
    }
    fn observe_at(&self, now: jiff::Timestamp) -> Observed {
        let caches = caches(&self.pods, &self.beats, &self.nodes, std::slice::from_ref(&self.pool), &self.meetings);
        let observed = observe::snapshot(&self.pool, &caches, &self.expected, now, Instant::now());
        Observed { children_applied: self.pool.metadata.generation, ..observed }
    }
    fn policy(&self) -> switchboard_fleet::Policy {
        decide::policy(&self.pool, &self.hash(), STARTUP_TIMEOUT)
    }
    fn decide_at(&self, now: jiff::Timestamp, memory: &mut ScaleMemory) -> Decision {
        decide::decide(&self.pool, &self.observe_at(now), &self.policy(), now, memory)
    }
    fn decide(&self) -> Decision {
        self.decide_at(now(), &mut ScaleMemory::default())
    }
    /// The status after this reconcile, with the pool's status as `previous`.
    fn status(&self) -> SfuPoolStatus {
        let observed = self.observe_at(now());
        let decision = decide::decide(&self.pool, &observed, &self.policy(), now(), &mut ScaleMemory::default());
        status::status(&self.pool, &decision.actions().unwrap().plan, &self.policy(), &observed, now())
    }
}

/// The decision's writes in the order they are made, one line each.
fn lines(d: &Decision) -> Vec<String> {
    let a = match &d.pods {
        Pods::Wait(pending) => return vec![format!("wait for {pending:?}")],
        Pods::Act(a) => a,
    };
    let mut out = Vec::new();
    out.extend(a.scale.iter().map(|s| format!("scale {}: {}", s.replicas, s.event.reason)));
    out.extend((a.create > 0).then(|| format!("create {}", a.create)));
    for m in &a.mark {
        let busy = m.patch["metadata"]["labels"][BUSY_LABEL] == "true";
        out.push(format!("mark {} {}", m.pod, if busy { "busy" } else { "idle" }));
    }
    out.extend(a.drain.iter().map(|d| format!("drain {}: {}", d.pod, d.reason)));
    for d in &a.delete {
        out.push(match (d.evict, d.grace_seconds) {
            (true, None) => format!("evict {}: {}", d.pod, d.event.reason),
            (false, Some(g)) => format!("delete {} (grace {g}): {}", d.pod, d.event.reason),
            (evict, grace) => panic!("{}: evict {evict} with grace {grace:?}", d.pod),
        });
    }
    out.extend(a.undrain.iter().map(|u| format!("undrain {}", u.pod)));
    out
}

fn busy_for(meeting: &str, seats: u64) -> [(&str, &str, u64); 1] {
    [(meeting, "uid-m", seats)]
}

/// A Builtin pool of `min`..`max` pods whose `spec.replicas` is `replicas`.
fn builtin(min: u32, max: u32, replicas: i32) -> PoolBuilder {
    pool("p").replicas(min, max).spec(json!({"replicas": replicas}))
}

/// An External pool (`kubectl scale`, an HPA) of `min`..`max` pods, asked for `replicas`.
fn external(min: u32, max: u32, replicas: i32) -> PoolBuilder {
    pool("p").spec(
        json!({"autoscaling": {"mode": "External", "minReplicas": min, "maxReplicas": max}, "replicas": replicas}),
    )
}

/// A scheduled meeting reserving `participants` in pool `p`.
fn reservation(participants: i32) -> Meeting {
    let reservation = json!({"pool": "p", "participants": participants, "from": at(0).to_string()});
    meeting("later").status(json!({"phase": "Scheduled", "reservation": reservation})).build()
}

fn check(table: Vec<(&str, World, Vec<&str>)>) {
    for (name, world, want) in table {
        assert_eq!(lines(&world.decide()), want, "{name}");
    }
}

/// e2e: a_new_pool_reaches_min_ready_pods_and_says_so,
/// load_scales_up_at_once_and_down_after_the_window_removing_only_empty_pods,
/// external_mode_follows_kubectl_scale_and_keeps_busy_pods_until_drained.
#[test]
fn scaling_decisions() {
    let mut table: Vec<(&str, World, Vec<&str>)> = Vec::new();
    let w = World::new(pool("p").replicas(3, 6).build());
    table.push(("a new pool writes spec.replicas and creates min pods", w, vec!["scale 3: ScaledUp", "create 3"]));

    let w = World::new(builtin(2, 6, 2).spec(json!({"autoscaling": {"buffer": {"participants": 50}}})).build());
    let w = w.ready("p-1", 100).ready("p-2", 100);
    table.push(("participants and the buffer scale up at once", w, vec!["scale 3: ScaledUp", "create 1"]));

    let w = World::new(builtin(1, 10, 1).build()).ready("p-1", 0).meeting(reservation(150));
    table.push(("reservations of scheduled meetings scale up", w, vec!["scale 2: ScaledUp", "create 1"]));

    let w = World::new(builtin(1, 10, 1).build());
    let unmarked = sfu_pod(&w.pool, "p-1").template(&w.hash()).build();
    let w = w.with(unmarked, SfuState::Ready, 30);
    table.push(("a pod that fills up is marked busy", w, vec!["mark p-1 busy"]));

    let w = World::new(external(1, 5, 1).build()).ready("p-1", 10).ready("p-2", 10).ready("p-3", 0);
    let lines_ = vec!["drain p-1: ScaleDownOrUpdate", "evict p-3: PodDeletedScaleDown"];
    table.push(("External: the idle pod goes, a busy one drains, spec.replicas untouched", w, lines_));

    let w = World::new(external(1, 5, 3).build()).ready("p-1", 0);
    table.push(("External: spec.replicas is followed, not written", w, vec!["create 2"]));

    let unset = json!({"autoscaling": {"mode": "External", "minReplicas": 2, "maxReplicas": 5}});
    let w = World::new(pool("p").spec(unset).build());
    let lines_ = vec!["scale 2: ReplicasInitialized", "create 2"];
    table.push(("External without spec.replicas: the start value is written for /scale", w, lines_));

    let w = World::new(builtin(1, 10, 1).build()).ready("p-1", 100);
    let taken_back = w.pod("p-2", 5).draining(at(50)).build();
    let w = w.with(taken_back, SfuState::Ready, 5);
    table.push(("a scale-up takes back a pod being drained", w, vec!["scale 2: ScaledUp", "undrain p-2"]));
    check(table);
}

/// e2e: the drains of the scale-down and rollout cases; a_pod_whose_lease_expires_is_replaced.
#[test]
fn drain_and_deletion_decisions() {
    let mut table: Vec<(&str, World, Vec<&str>)> = Vec::new();
    let w = World::new(builtin(1, 10, 1).build()).ready("p-1", 0);
    let drained = w.pod("p-2", 0).draining(at(50)).build();
    let w = w.with(drained, SfuState::Draining, 0);
    table.push(("a drained pod is evicted once empty", w, vec!["evict p-2: PodDeletedDrained"]));

    let w = World::new(builtin(1, 10, 1).build()).ready("p-1", 0);
    let late = w.pod("p-2", 5).draining(at(-600)).build();
    let w = w.with(late, SfuState::Draining, 5);
    let lines_ = vec!["delete p-2 (grace 10): PodDeletedDrainTimeout"];
    table.push(("a pod past its drain timeout is deleted outright", w, lines_));

    let w = World::new(builtin(2, 4, 2).build()).ready("p-1", 0);
    let dead = w.pod("p-2", 0).build();
    let w = w.silent(dead).beat(heartbeat("p", "p-2", SfuState::Ready, 0, at(90)));
    let lines_ = vec!["create 1", "delete p-2 (grace 10): PodDeletedUnhealthy"];
    table.push(("an expired heartbeat: deleted outright and replaced", w, lines_));

    let w = World::new(builtin(2, 4, 2).build()).ready("p-1", 0);
    let holding = w.pod("p-2", 10).seats(&busy_for("m1", 10)).build();
    let w = w.silent(holding).beat(heartbeat("p", "p-2", SfuState::Ready, 10, at(90)));
    table.push(("a dead SFU is kept until its meetings moved", w, vec!["create 1"]));

    let w = World::new(builtin(1, 4, 1).build());
    let never = w.pod("p-1", 0).build();
    let w = w.silent(never);
    table.push(("a pod without a heartbeat yet is waited for", w, vec![]));
    check(table);
}

/// e2e (remediation.rs): a_failed_node_with_100_meetings_is_evacuated_cordoned_and_its_pods_replaced,
/// kubectl_drain_waits_for_busy_pods_to_be_evacuated_and_passes_idle_ones.
#[test]
fn evacuation_decisions() {
    let mut table: Vec<(&str, World, Vec<&str>)> = Vec::new();
    let w = World::new(builtin(1, 10, 1).build()).ready("p-1", 0).node(cordoned(node("node-b", ZONE)));
    let idle = w.pod("p-2", 0).node("node-b").build();
    let w = w.with(idle, SfuState::Ready, 0);
    let lines_ = vec!["drain p-2: NodeDrained", "evict p-2: PodDeletedEvacuated"];
    table.push(("an idle pod of a drained node is marked and evicted", w, lines_));

    let w = World::new(builtin(1, 10, 1).build()).ready("p-1", 0).node(not_ready(node("node-b", ZONE), at(0)));
    let busy = w.pod("p-2", 20).node("node-b").seats(&busy_for("m1", 20)).build();
    let w = w.with(busy, SfuState::Ready, 20);
    table.push(("a busy pod of a failed node drains while its meetings move", w, vec!["drain p-2: NodeNotReady"]));

    let keep = json!({"remediation": {"evictPods": false}});
    let w = World::new(builtin(1, 10, 1).spec(keep).build()).ready("p-1", 0);
    let w = w.node(not_ready(node("node-b", ZONE), at(0)));
    let idle = w.pod("p-2", 0).node("node-b").build();
    let w = w.with(idle, SfuState::Ready, 0);
    table.push(("evictPods false: a failed node's pod is marked, not evicted", w, vec!["drain p-2: NodeNotReady"]));
    check(table);

    let w = World::new(builtin(1, 10, 1).build()).ready("p-1", 0).node(cordoned(node("node-b", ZONE)));
    let idle = w.pod("p-2", 0).node("node-b").build();
    let d = w.with(idle, SfuState::Ready, 0).decide();
    let a = d.actions().unwrap();
    let note = "draining pod p-2 (NodeDrained): its meetings move to healthy pods, then it is evicted";
    assert_eq!(a.drain[0].event, Event::normal("PodDraining", note.into()));
    let note = "evicted pod p-2: its node failed or is draining, and its meetings moved";
    assert_eq!(a.delete[0].event, Event::normal("PodDeletedEvacuated", note.into()));
}

#[test]
fn a_template_change_surges_then_retires_old_pods_keeping_busy_ones() {
    let w = World::new(pool("p").replicas(2, 4).spec(json!({"replicas": 2})).build());
    let old = |name: &str, participants: u32| sfu_pod(&w.pool, name).template("old").busy(participants > 0).build();
    let (busy, idle) = (old("p-1", 5), old("p-2", 0));
    let w = w.with(busy, SfuState::Ready, 5).with(idle, SfuState::Ready, 0);
    assert_eq!(lines(&w.decide()), ["create 2"], "new pods first");
    let status = w.status();
    assert_eq!(
        condition(&status, "Progressing"),
        ("True", "PodsStarting", "2 of 2 pods Ready"),
        "the old pods serve meanwhile"
    );

    let w = w.ready("p-3", 0).ready("p-4", 0);
    let d = w.decide();
    assert_eq!(lines(&d), ["drain p-1: ScaleDownOrUpdate", "evict p-2: PodDeletedOutdated"]);
    let drain = &d.actions().unwrap().drain[0];
    assert_eq!(
        drain.patch,
        json!({"metadata": {"annotations": {DRAINING_ANNOTATION: now().to_string(), DRAIN_REASON_ANNOTATION: "ScaleDownOrUpdate"}}})
    );
    assert_eq!(
        drain.event,
        Event::normal("PodDraining", "draining pod p-1: it takes no new meetings and is deleted once empty".into())
    );
    let evict = &d.actions().unwrap().delete[0];
    assert_eq!(evict.uid.as_deref(), Some("uid-p-2"), "only the pod that was observed");
    assert_eq!(
        evict.event,
        Event::normal("PodDeletedOutdated", "evicted pod p-2: replaced by a pod of the new template".into())
    );
    assert_eq!(condition(&w.status(), "Progressing"), ("True", "RollingUpdate", "2 pods of an older template remain"));
}

#[test]
fn scale_down_waits_out_the_window_and_removes_only_empty_pods() {
    let pool =
        pool("p").replicas(2, 6).spec(json!({"replicas": 3, "autoscaling": {"scaleDownStabilization": "20s"}})).build();
    // Heartbeats renewed a second before each look.
    let world = |renewed: jiff::Timestamp| {
        let mut w = World::new(pool.clone());
        for (name, participants) in [("p-1", 30), ("p-2", 0), ("p-3", 0)] {
            w.pods.push(w.pod(name, participants).build());
            w.beats.push(heartbeat("p", name, SfuState::Ready, participants, renewed));
        }
        w
    };
    let mut memory = ScaleMemory::default();
    let first = world(at(99)).decide_at(at(100), &mut memory);
    assert_eq!(lines(&first), Vec::<String>::new(), "inside the window nothing goes");
    assert_eq!(first.actions().unwrap().recheck, Some(Duration::from_secs(3)), "the heartbeats expire first");
    let later = world(at(120)).decide_at(at(121), &mut memory);
    assert_eq!(lines(&later), ["scale 2: ScaledDown", "evict p-2: PodDeletedScaleDown"], "the busy p-1 stays");
    let scale = later.actions().unwrap().scale.clone().unwrap();
    let note = "scaled down from 3 to 2 pods: 30 participants allocated, capacity 100 per pod";
    assert_eq!(scale.event, Event::normal("ScaledDown", note.into()));
}

#[test]
fn unhealthy_pods_are_deleted_outright_with_a_short_grace_and_others_evicted() {
    let w = World::new(pool("p").replicas(2, 4).spec(json!({"replicas": 2})).build()).ready("p-1", 0);
    let dead = w.pod("p-2", 0).build();
    let w = w.silent(dead).beat(heartbeat("p", "p-2", SfuState::Unhealthy, 0, at(99)));
    let d = w.decide();
    let deletion = &d.actions().unwrap().delete[0];
    assert!(!deletion.evict);
    assert_eq!(deletion.grace_seconds, Some(DELETE_GRACE_SECONDS));
    let note = "deleted pod p-2: its heartbeat expired or it failed; replacing it";
    assert_eq!(deletion.event, Event::warning("PodDeletedUnhealthy", note.into()));
    assert_eq!(deletion.reason, "Unhealthy", "the metric's reason");

    // Never heartbeating past the startup timeout counts as dead too.
    let w = World::new(pool("p").replicas(1, 4).spec(json!({"replicas": 1})).build());
    let stuck = w.pod("p-1", 0).build();
    let w = w.silent(stuck);
    let late = w.decide_at(at(STARTUP_TIMEOUT.as_secs() as i64), &mut ScaleMemory::default());
    assert_eq!(lines(&late), ["create 1", "delete p-1 (grace 10): PodDeletedUnhealthy"]);
    let waiting = World { pods: vec![w.pod("p-1", 0).unstarted().build()], ..w };
    let unscheduled = waiting.decide_at(at(STARTUP_TIMEOUT.as_secs() as i64), &mut ScaleMemory::default());
    assert_eq!(lines(&unscheduled), Vec::<String>::new(), "a pod waiting for a node is not dead");
}

#[test]
fn busy_marks_are_written_only_when_they_differ() {
    let w = World::new(pool("p").spec(json!({"replicas": 2})).build());
    let unmarked = sfu_pod(&w.pool, "p-1").template(&w.hash()).build();
    let stale = w.pod("p-2", 0).build();
    let w = w.with(unmarked, SfuState::Ready, 0).with(stale, SfuState::Ready, 7);
    let d = w.decide();
    let marks: Vec<_> = d.actions().unwrap().mark.iter().map(|m| (m.pod.as_str(), m.patch.clone())).collect();
    let patch = |safe: &str, busy: &str| json!({"metadata": {"annotations": {SAFE_TO_EVICT_ANNOTATION: safe}, "labels": {BUSY_LABEL: busy}}});
    assert_eq!(marks, [("p-1", patch("true", "false")), ("p-2", patch("false", "true"))]);
}

#[test]
fn a_pool_waits_while_the_caches_trail_its_own_pod_writes() {
    let w = World::new(pool("p").replicas(1, 4).spec(json!({"replicas": 2})).build()).ready("p-1", 0);
    let key = format!("{NS}/p");
    w.expected.expect(&key, PodWrite::Created("p-2".into()), Instant::now());
    let mut memory = ScaleMemory::default();
    let before = format!("{memory:?}");
    let d = w.decide_at(now(), &mut memory);
    assert_eq!(lines(&d), [r#"wait for [Created("p-2")]"#], "no second creation");
    assert_eq!(format!("{memory:?}"), before, "the scale-down window learns nothing from a stale view");

    // The creation shows (the pod exists): act again.
    let w = w.ready("p-2", 0);
    assert_eq!(lines(&w.decide()), Vec::<String>::new());

    // A deletion shows once the pod is terminating or gone.
    w.expected.expect(&key, PodWrite::Deleted("p-2".into()), Instant::now());
    assert!(matches!(w.decide().pods, Pods::Wait(_)));
    let terminating = w.pod("p-2", 0).deleting(at(99)).build();
    let w = World { pods: vec![w.pods[0].clone(), terminating], ..w };
    assert!(w.decide().actions().is_some());

    // Forgotten after the timeout: a lost write is made again.
    let w = World::new(pool("p").spec(json!({"replicas": 1})).build());
    w.expected.expect(&key, PodWrite::Created("p-9".into()), Instant::now() - Duration::from_secs(31));
    assert_eq!(lines(&w.decide()), ["create 1"]);
}

#[test]
fn children_are_applied_once_per_generation_even_while_waiting() {
    let w = World::new(pool("p").build());
    let observed = w.observe_at(now());
    let decide = |o: &Observed| decide::decide(&w.pool, o, &w.policy(), now(), &mut ScaleMemory::default());
    assert!(!decide(&observed).children, "generation 1 applied");
    let fresh = Observed { children_applied: None, ..observed.clone() };
    assert!(decide(&fresh).children);
    let waiting = Observed { pending: vec![PodWrite::Created("p-1".into())], ..fresh };
    let d = decide(&waiting);
    assert!(d.children && d.actions().is_none());
}

#[test]
fn refused_evictions_are_retried_soon_and_other_requeues_stay_in_bounds() {
    let api = |code: u16| Err(kube::Error::Api(kube::core::Status::failure("no", "Reason").with_code(code).boxed()));
    assert_eq!(outcome(Ok(())).unwrap(), Outcome::Done);
    assert_eq!(outcome(api(429)).unwrap(), Outcome::Blocked, "the disruption budget holds it");
    assert_eq!(outcome(api(404)).unwrap(), Outcome::Gone);
    assert_eq!(outcome(api(409)).unwrap(), Outcome::Gone, "another pod of that name (uid precondition)");
    assert!(outcome(api(500)).is_err());
    let table = [
        (Some(Duration::from_secs(30)), true, EVICTION_RETRY),
        (Some(Duration::from_secs(30)), false, Duration::from_secs(30)),
        (Some(Duration::from_millis(5)), false, Duration::from_millis(200)),
        (Some(Duration::from_secs(3600)), false, Duration::from_secs(60)),
        (None, false, Duration::from_secs(60)),
    ];
    for (recheck, blocked, want) in table {
        assert_eq!(decide::requeue(recheck, blocked), want, "{recheck:?} blocked {blocked}");
    }
}

#[test]
fn created_pods_are_named_in_one_event() {
    let names: Vec<String> = (1..=7).map(|i| format!("p-{i}")).collect();
    assert_eq!(decide::created(&names[..2]).note, "created 2 SFU pod(s): p-1, p-2");
    assert_eq!(decide::created(&names).note, "created 7 SFU pod(s): p-1, p-2, p-3, p-4, p-5, and 2 more");
}

/// A condition's status, reason and message.
fn condition<'a>(s: &'a SfuPoolStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_}"));
    (&c.status, &c.reason, &c.message)
}

#[test]
fn status_counts_pods_and_load_and_lists_the_busiest_first() {
    let w = World::new(pool("p").spec(json!({"replicas": 2})).build()).ready("p-1", 0).ready("p-2", 40);
    let drained = w.pod("p-3", 0).draining(at(50)).build();
    let w = w.with(drained, SfuState::Draining, 0).meeting(
        meeting("later")
            .status(json!({"phase": "Waiting", "reservation": {"pool": "p", "participants": 12, "from": at(0).to_string()}}))
            .build(),
    );
    let s = w.status();
    assert_eq!((s.replicas, s.ready_replicas, s.draining_replicas, s.unhealthy_replicas), (3, 2, 1, 0));
    assert_eq!(s.capacity.unwrap().participants, 200);
    assert_eq!(s.allocated.unwrap().participants, 40);
    assert_eq!(s.reserved.unwrap().participants, 12);
    assert_eq!(s.selector.as_deref(), Some(build::selector_string("p").as_str()));
    let pods: Vec<(&str, i64, Option<&str>)> =
        s.pods.iter().map(|p| (p.name.as_str(), p.participants, p.zone.as_deref())).collect();
    assert_eq!(pods, [("p-2", 40, Some(ZONE)), ("p-1", 0, Some(ZONE))], "p-3 is being deleted");
    assert_eq!(s.observed_generation, Some(1));
}

#[test]
fn conditions_say_what_the_pool_is_doing() {
    let new = || World::new(pool("p").replicas(3, 6).build());
    let steady = || World::new(pool("p").spec(json!({"replicas": 1})).build()).ready("p-1", 0);
    let stuck = || {
        let w = World::new(pool("p").replicas(1, 4).spec(json!({"replicas": 1})).build());
        let never = "not present with pull policy of Never";
        let pod = w.pod("p-1", 0).not_ready().waiting("ErrImageNeverPull", never).build();
        w.silent(pod)
    };
    let draining = || {
        let w = steady();
        let leaving = w.pod("p-2", 5).draining(at(50)).build();
        w.with(leaving, SfuState::Draining, 5)
    };
    let limited = || {
        World::new(pool("p").replicas(1, 2).spec(json!({"replicas": 2})).build()).ready("p-1", 150).ready("p-2", 150)
    };
    let external = || {
        let spec = json!({"autoscaling": {"mode": "External", "minReplicas": 1, "maxReplicas": 5}, "replicas": 9});
        World::new(pool("p").spec(spec).build())
    };
    let table: [(World, &str, (&str, &str, &str)); 10] = [
        (new(), "Available", ("False", "NotEnoughReadyPods", "0 Ready SFU pods; at least 3 needed")),
        (new(), "Progressing", ("True", "PodsStarting", "0 of 3 pods Ready")),
        (new(), "ScalingLimited", ("False", "WithinLimits", "3 pods within [3, 6]")),
        (steady(), "Available", ("True", "MinimumReplicasReady", "1 Ready SFU pods; at least 1 needed")),
        (steady(), "Progressing", ("False", "Stable", "1 pods as desired")),
        (steady(), "ReconcileSucceeded", ("True", "Reconciled", "")),
        (
            stuck(),
            "Progressing",
            (
                "True",
                "ErrImageNeverPull",
                "1 SFU pod(s) cannot start; pod p-1, container sfu: ErrImageNeverPull: not present with pull \
                 policy of Never",
            ),
        ),
        (draining(), "Progressing", ("True", "Draining", "1 pods draining")),
        (
            limited(),
            "ScalingLimited",
            (
                "True",
                "MaxReplicas",
                "300 participants allocated or reserved plus a buffer of 0 need 3 pods; maxReplicas is 2",
            ),
        ),
        (external(), "ScalingLimited", ("True", "MaxReplicas", "spec.replicas 9 is outside [1, 5]; running 5")),
    ];
    for (world, type_, want) in table {
        assert_eq!(condition(&world.status(), type_), want, "{type_} of {:?}", world.pool.spec);
    }
}

#[test]
fn a_condition_keeps_its_transition_time_until_its_status_changes() {
    let earlier = at(-3600).to_string();
    let previous = json!({"conditions": [
        {"type": "Available", "status": "True", "reason": "MinimumReplicasReady", "message": "", "lastTransitionTime": earlier},
        {"type": "Progressing", "status": "False", "reason": "Stable", "message": "", "lastTransitionTime": earlier},
    ]});
    let w = World::new(pool("p").spec(json!({"replicas": 1})).status(previous).build()).ready("p-1", 0);
    let s = w.status();
    let since = |type_: &str| s.conditions.iter().find(|c| c.type_ == type_).unwrap().last_transition_time.0;
    assert_eq!(since("Available"), at(-3600));
    assert_eq!(since("ScalingLimited"), now(), "new conditions start now");
}

#[test]
fn status_transitions_give_their_events_once() {
    let ready = World::new(pool("p").spec(json!({"replicas": 2})).build()).ready("p-1", 0).ready("p-2", 0);
    let observed = ready.observe_at(now());
    let plan = decide::decide(&ready.pool, &observed, &ready.policy(), now(), &mut ScaleMemory::default());
    let plan = &plan.actions().unwrap().plan;
    let next = ready.status();
    let none = SfuPoolStatus::default();
    assert_eq!(status::events(&none, &next, plan, None), [Event::normal("Available", "2 of 2 SFU pods Ready".into())]);
    assert!(status::events(&next, &next, plan, None).is_empty(), "already Available");
    assert!(status::changed(None, &next) && status::changed(Some(&none), &next));
    let mut later = next.clone();
    later.conditions.iter_mut().for_each(|c| c.last_transition_time.0 = at(5000));
    assert!(!status::changed(Some(&later), &next), "transition times alone are no change");

    let failure = super::startup::StartupFailure { reason: "ImagePullBackOff".into(), message: "m".into(), pods: 1 };
    let mut limited = plan.clone();
    limited.scaling_limited =
        Some(switchboard_fleet::ScalingLimit { reason: "MaxReplicas", message: "too many".into() });
    let got = status::events(&next, &next, &limited, Some(&failure));
    let want = [Event::warning("ImagePullBackOff", "m".into()), Event::warning("ScalingLimited", "too many".into())];
    assert_eq!(got, want);
    let mut said = next.clone();
    for c in said.conditions.iter_mut() {
        match c.type_.as_str() {
            "Progressing" => c.reason = "ImagePullBackOff".into(),
            "ScalingLimited" => c.status = "True".into(),
            _ => {}
        }
    }
    assert!(status::events(&said, &said, &limited, Some(&failure)).is_empty(), "said once");
    assert_eq!(got[0].type_, EventType::Warning);
}
