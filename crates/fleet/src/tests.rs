//! Pool decisions under a simulated clock.

use super::*;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn policy() -> Policy {
    Policy {
        mode: Mode::Builtin,
        min_replicas: 2,
        max_replicas: 10,
        spec_replicas: Some(2),
        participants_per_pod: 100,
        packets_per_second_per_pod: None,
        cpu_millicores_per_pod: None,
        buffer: Buffer::Participants(50),
        scale_down_stabilization: Duration::from_secs(300),
        strategy: Strategy::Packed,
        heartbeat_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(3600),
        startup_timeout: Duration::from_secs(120),
        template_hash: "v1".into(),
        evict_failed: true,
    }
}

fn pod(name: &str, node: &str, participants: u64, now: Timestamp) -> PodView {
    PodView {
        name: name.into(),
        template_hash: "v1".into(),
        node: Some(node.into()),
        zone: Some(format!("zone-{node}")),
        created: t(-1000),
        started: Some(t(-999)),
        ready: true,
        finished: false,
        draining_since: None,
        heartbeat: Some(HeartbeatView {
            state: ReportedState::Ready,
            participants,
            tracks: participants * 3,
            packets_per_second: participants * 50,
            cpu_millicores: participants * 2,
            renewed: now,
        }),
        allocated: 0,
        fault: None,
    }
}

#[test]
fn pod_states_follow_heartbeats() {
    let p = policy();
    let now = t(0);
    let mut pod = pod("a", "n1", 0, now);
    assert_eq!(pod_state(&p, &pod, now), PodState::Ready);
    assert_eq!(pod_state(&p, &pod, t(9)), PodState::Ready);
    assert_eq!(pod_state(&p, &pod, t(10)), PodState::Unhealthy, "heartbeat expired");
    pod.ready = false;
    assert_eq!(pod_state(&p, &pod, now), PodState::Starting, "pod not Ready yet");
    pod.ready = true;
    pod.draining_since = Some(now);
    assert_eq!(pod_state(&p, &pod, now), PodState::Drained, "draining and empty");
    pod.heartbeat.as_mut().unwrap().participants = 3;
    assert_eq!(pod_state(&p, &pod, now), PodState::Draining);
    pod.draining_since = None;
    pod.heartbeat.as_mut().unwrap().state = ReportedState::Draining;
    assert_eq!(pod_state(&p, &pod, now), PodState::Draining, "the SFU drains itself (SIGTERM)");
    pod.heartbeat = None;
    pod.created = t(-5);
    pod.started = Some(t(-4));
    assert_eq!(pod_state(&p, &pod, now), PodState::Starting, "no heartbeat yet");
    assert_eq!(pod_state(&p, &pod, t(200)), PodState::Unhealthy, "never sent a heartbeat");
    pod.started = None;
    assert_eq!(pod_state(&p, &pod, t(2000)), PodState::Starting, "waiting for a node is not unhealthy");
    pod.finished = true;
    assert_eq!(pod_state(&p, &pod, now), PodState::Unhealthy);
}

#[test]
fn a_new_pool_creates_min_pods() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.spec_replicas = None;
    let plan = plan(&p, &[], 0, t(0), &mut mem);
    assert_eq!(plan.desired, 2);
    assert_eq!(plan.create, 2);
    assert_eq!(plan.write_spec_replicas, Some(2));
}

#[test]
fn load_above_the_buffer_scales_up_at_once() {
    let mut mem = ScaleMemory::default();
    let p = policy();
    let now = t(0);
    // 180 participants + 50 buffer = 230 -> 3 pods.
    let pods = [pod("a", "n1", 100, now), pod("b", "n2", 80, now)];
    let plan = plan(&p, &pods, 0, now, &mut mem);
    assert_eq!(plan.desired, 3);
    assert_eq!(plan.write_spec_replicas, Some(3));
    assert_eq!(plan.create, 1);
    assert_eq!(plan.allocated_participants, 180);
    assert_eq!(plan.ready_capacity, 200);
}

#[test]
fn reservations_and_percent_buffers_count() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.buffer = Buffer::Percent(20);
    let now = t(0);
    // (100 + 400 reserved) * 1.2 = 600 -> 6 pods.
    let pods = [pod("a", "n1", 100, now), pod("b", "n2", 0, now)];
    let plan = plan(&p, &pods, 400, now, &mut mem);
    assert_eq!(plan.desired, 6);
    assert_eq!(plan.create, 4);
}

#[test]
fn the_maximum_limits_and_says_why() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.max_replicas = 3;
    let now = t(0);
    let pods = [pod("a", "n1", 100, now), pod("b", "n2", 100, now), pod("c", "n3", 100, now)];
    let plan = plan(&p, &pods, 0, now, &mut mem);
    assert_eq!(plan.desired, 3);
    let limit = plan.scaling_limited.expect("limited");
    assert_eq!(limit.reason, "MaxReplicas");
    assert!(limit.message.contains("maxReplicas is 3"), "{}", limit.message);
}

#[test]
fn scale_down_waits_for_the_stabilisation_window_and_removes_only_empty_pods() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.spec_replicas = Some(4);
    // Busy at first: 4 pods needed.
    let busy =
        [pod("a", "n1", 100, t(0)), pod("b", "n2", 100, t(0)), pod("c", "n3", 100, t(0)), pod("d", "n4", 50, t(0))];
    assert_eq!(plan(&p, &busy, 0, t(0), &mut mem).desired, 4);
    // Load falls: only one pod keeps 30 participants.
    let quiet = |now| [pod("a", "n1", 30, now), pod("b", "n2", 0, now), pod("c", "n3", 0, now), pod("d", "n4", 0, now)];
    for s in [10, 100, 299] {
        let plan = plan(&p, &quiet(t(s)), 0, t(s), &mut mem);
        assert_eq!(plan.desired, 4, "still inside the window at {s}s");
        assert!(plan.delete.is_empty());
        assert!(plan.recheck_after.is_some(), "the end of the window is a recheck");
    }
    let plan = plan(&p, &quiet(t(301)), 0, t(301), &mut mem);
    assert_eq!(plan.desired, 2, "30 + 50 buffer = 1 pod, min 2");
    assert_eq!(plan.write_spec_replicas, Some(2));
    let deleted: Vec<_> = plan.delete.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(deleted.len(), 2);
    assert!(!deleted.contains(&"a"), "the busy pod stays");
    assert!(plan.start_drain.is_empty());
}

#[test]
fn after_a_restart_the_window_starts_again() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.spec_replicas = Some(4);
    let quiet = |now| [pod("a", "n1", 0, now), pod("b", "n2", 0, now), pod("c", "n3", 0, now), pod("d", "n4", 0, now)];
    assert_eq!(plan(&p, &quiet(t(0)), 0, t(0), &mut mem).desired, 4, "fresh memory does not scale down");
    assert_eq!(plan(&p, &quiet(t(200)), 0, t(200), &mut mem).desired, 4);
    assert_eq!(plan(&p, &quiet(t(301)), 0, t(301), &mut mem).desired, 2);
}

#[test]
fn busy_pods_are_drained_not_deleted_when_scaling_down() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.mode = Mode::External;
    p.spec_replicas = Some(2);
    let now = t(0);
    let pods = [pod("a", "n1", 40, now), pod("b", "n2", 30, now), pod("c", "n3", 0, now), pod("d", "n4", 10, now)];
    let plan = plan(&p, &pods, 0, now, &mut mem);
    assert_eq!(plan.delete, vec![("c".to_string(), DeleteReason::ScaleDown)]);
    assert_eq!(plan.start_drain, vec!["d".to_string()], "the emptiest busy pod drains");
    assert_eq!(plan.write_spec_replicas, None, "External mode never writes a spec.replicas that is set");
    let d = plan.pods.iter().find(|p| p.name == "d").unwrap();
    assert_eq!(d.state, PodState::Draining);
    assert!(!d.safe_to_evict);
}

#[test]
fn drained_pods_go_and_drain_timeouts_are_enforced() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.mode = Mode::External;
    p.spec_replicas = Some(2);
    let now = t(0);
    let mut drained = pod("x", "n1", 0, now);
    drained.draining_since = Some(t(-10));
    let mut stuck = pod("y", "n2", 5, now);
    stuck.draining_since = Some(t(-3600));
    let mut waiting = pod("z", "n3", 5, now);
    waiting.draining_since = Some(t(-600));
    let pods = [pod("a", "n1", 0, now), pod("b", "n2", 0, now), drained, stuck, waiting];
    let plan = plan(&p, &pods, 0, now, &mut mem);
    assert!(plan.delete.contains(&("x".into(), DeleteReason::Drained)));
    assert!(plan.delete.contains(&("y".into(), DeleteReason::DrainTimeout)));
    assert!(!plan.delete.iter().any(|(n, _)| n == "z"));
    assert!(plan.recheck_after.unwrap() <= Duration::from_secs(10), "heartbeat expiry is the next event");
}

#[test]
fn unhealthy_pods_are_replaced() {
    let mut mem = ScaleMemory::default();
    let p = policy();
    let now = t(100);
    let mut dead = pod("a", "n1", 20, now);
    dead.heartbeat.as_mut().unwrap().renewed = t(50);
    let pods = [dead, pod("b", "n2", 0, now)];
    let plan = plan(&p, &pods, 0, now, &mut mem);
    assert_eq!(plan.delete, vec![("a".to_string(), DeleteReason::Unhealthy)]);
    assert_eq!(plan.create, 1);
    assert_eq!(plan.allocated_participants, 0, "a dead pod's load does not count");
}

#[test]
fn an_unhealthy_pod_with_meetings_stays_until_they_moved() {
    let p = policy();
    let now = t(100);
    let mut dead = pod("a", "n1", 20, now);
    dead.heartbeat.as_mut().unwrap().renewed = t(50);
    dead.allocated = 20;
    let waiting = plan(&p, &[dead.clone(), pod("b", "n2", 0, now)], 0, now, &mut ScaleMemory::default());
    assert!(waiting.delete.is_empty());
    assert_eq!(waiting.create, 1, "replaced at once all the same");
    assert_eq!(waiting.allocated_participants, 20, "its meetings need seats elsewhere");
    dead.allocated = 0;
    let moved = plan(&p, &[dead, pod("b", "n2", 0, now)], 0, now, &mut ScaleMemory::default());
    assert_eq!(moved.delete, vec![("a".to_string(), DeleteReason::Unhealthy)]);
}

#[test]
fn scale_up_takes_back_draining_pods_first() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.mode = Mode::External;
    p.spec_replicas = Some(3);
    let now = t(0);
    let mut d = pod("c", "n3", 10, now);
    d.draining_since = Some(t(-5));
    let pods = [pod("a", "n1", 0, now), pod("b", "n2", 0, now), d];
    let plan = plan(&p, &pods, 0, now, &mut mem);
    assert_eq!(plan.cancel_drain, vec!["c".to_string()]);
    assert_eq!(plan.create, 0);
}

#[test]
fn packed_scale_down_empties_the_least_used_node() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.mode = Mode::External;
    p.spec_replicas = Some(3);
    let now = t(0);
    // n1 hosts two busy pods and one empty; n2 hosts one empty pod.
    let pods = [pod("a", "n1", 50, now), pod("b", "n1", 50, now), pod("c", "n1", 0, now), pod("d", "n2", 0, now)];
    let plan = plan(&p, &pods, 0, now, &mut mem);
    assert_eq!(plan.delete, vec![("d".to_string(), DeleteReason::ScaleDown)], "n2 empties out");
    p.strategy = Strategy::Distributed;
    let plan = super::plan(&p, &pods, 0, now, &mut mem);
    assert_eq!(plan.delete, vec![("c".to_string(), DeleteReason::ScaleDown)], "the crowded node gives one up");
}

#[test]
fn a_template_change_surges_then_retires_old_pods() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.mode = Mode::External;
    p.spec_replicas = Some(2);
    p.template_hash = "v2".into();
    let now = t(0);
    let old = [pod("a", "n1", 30, now), pod("b", "n2", 0, now)];
    let plan1 = plan(&p, &old, 0, now, &mut mem);
    assert_eq!(plan1.create, 2, "new pods first");
    assert!(plan1.delete.is_empty() && plan1.start_drain.is_empty(), "old pods stay until new ones are Ready");
    assert_eq!(plan1.outdated, 2);

    let mut new1 = pod("c", "n3", 0, now);
    new1.template_hash = "v2".into();
    let mut new2 = pod("d", "n4", 0, now);
    new2.template_hash = "v2".into();
    new2.ready = false;
    let pods = [old[0].clone(), old[1].clone(), new1.clone(), new2.clone()];
    let plan2 = plan(&p, &pods, 0, now, &mut mem);
    assert_eq!(plan2.create, 0);
    assert_eq!(
        plan2.delete,
        vec![("b".to_string(), DeleteReason::Outdated)],
        "one Ready new pod retires one old (empty) pod"
    );
    assert!(plan2.start_drain.is_empty());

    new2.ready = true;
    let pods = [old[0].clone(), new1, new2];
    let plan3 = plan(&p, &pods, 0, now, &mut mem);
    assert_eq!(plan3.start_drain, vec!["a".to_string()], "the busy old pod drains, never deleted");
    assert!(plan3.delete.is_empty());
}

#[test]
fn placements_not_yet_joined_keep_a_pod_busy() {
    let now = t(0);
    let mut memory = ScaleMemory::default();
    let mut booked = pod("booked", "n1", 0, now);
    booked.allocated = 40;
    booked.draining_since = Some(t(-10));
    let policy = Policy { min_replicas: 1, spec_replicas: Some(1), ..policy() };
    let plan = plan(&policy, &[booked.clone(), pod("b", "n2", 0, now)], 0, now, &mut memory);
    let p = plan.pods.iter().find(|p| p.name == "booked").unwrap();
    assert_eq!(p.state, PodState::Draining, "not Drained while meetings are placed on it");
    assert_eq!(p.participants, 40);
    assert!(!p.safe_to_evict);
    assert!(!plan.delete.iter().any(|(n, _)| n == "booked"));
}

#[test]
fn pods_of_a_failed_node_drain_until_their_meetings_moved_then_are_evicted() {
    let p = policy();
    let now = t(0);
    let mut failed = pod("a", "n1", 40, now);
    failed.allocated = 40;
    failed.fault = Some(health::Fault::NodeNotReady);
    let healthy = pod("b", "n2", 0, now);
    let mut mem = ScaleMemory::default();
    let busy = plan(&p, &[failed.clone(), healthy.clone()], 0, now, &mut mem);
    assert_eq!(busy.pods[0].state, PodState::Draining, "its meetings are still on it");
    assert_eq!(busy.start_drain, vec!["a".to_owned()], "marked draining: no new meetings");
    assert_eq!(busy.create, 1, "a replacement comes up at once");
    assert!(busy.delete.is_empty(), "not removed while meetings are on it (the PDB agrees)");
    assert!(!busy.pods[0].safe_to_evict);

    // Moved: the ledger is empty. The partitioned SFU still reports 40; that is ignored.
    failed.allocated = 0;
    failed.draining_since = Some(now);
    let moved = plan(&p, &[failed.clone(), healthy.clone()], 0, now, &mut mem);
    assert_eq!(moved.delete, vec![("a".to_owned(), DeleteReason::Evacuated)]);
    assert!(moved.pods[0].safe_to_evict);

    failed.draining_since = None;
    let unseen = plan(&p, &[failed.clone(), healthy.clone()], 0, now, &mut mem);
    assert_eq!(unseen.start_drain, vec!["a".to_owned()], "marked draining even when it was never seen busy");
    assert_eq!(unseen.delete, vec![("a".to_owned(), DeleteReason::Evacuated)]);
    failed.draining_since = Some(now);

    let keep = Policy { evict_failed: false, ..p.clone() };
    assert!(plan(&keep, &[failed.clone(), healthy.clone()], 0, now, &mut ScaleMemory::default()).delete.is_empty());

    // A planned drain also waits for clients still connected to the SFU.
    failed.fault = Some(health::Fault::NodeDrained);
    let planned = plan(&p, &[failed.clone(), healthy], 0, now, &mut mem);
    assert_eq!(planned.pods[0].state, PodState::Draining, "its clients have not reconnected yet");
}

#[test]
fn a_pod_draining_for_a_fault_is_never_taken_back() {
    let p = Policy { min_replicas: 3, ..policy() };
    let now = t(0);
    let mut failed = pod("a", "n1", 10, now);
    failed.allocated = 10;
    failed.draining_since = Some(now);
    failed.fault = Some(health::Fault::NodeDrained);
    let plan = plan(&p, &[failed, pod("b", "n2", 0, now)], 0, now, &mut ScaleMemory::default());
    assert!(plan.cancel_drain.is_empty());
    assert_eq!(plan.create, 2);
}

/// A pod of `participants` reporting `pps` packets per second and `cpu` millicores.
fn loaded(name: &str, node: &str, participants: u64, pps: u64, cpu: u64, now: Timestamp) -> PodView {
    let mut p = pod(name, node, participants, now);
    let hb = p.heartbeat.as_mut().unwrap();
    (hb.packets_per_second, hb.cpu_millicores) = (pps, cpu);
    p
}

#[test]
fn the_largest_signal_decides_the_pod_count() {
    let now = t(0);
    let targets = Policy {
        packets_per_second_per_pod: Some(10_000),
        cpu_millicores_per_pod: Some(1_000),
        buffer: Buffer::None,
        min_replicas: 1,
        spec_replicas: Some(1),
        ..policy()
    };
    // (case, policy, pods, desired, signal)
    let cases: Vec<(&str, Policy, Vec<PodView>, u32, Signal)> = vec![
        (
            "seats only: load ignored",
            Policy { buffer: Buffer::None, min_replicas: 1, ..policy() },
            vec![loaded("a", "n1", 150, 90_000, 5_000, now)],
            2,
            Signal::Participants,
        ),
        (
            "few seats, many packets",
            targets.clone(),
            vec![loaded("a", "n1", 20, 35_000, 500, now)],
            4,
            Signal::PacketRate,
        ),
        ("few seats, busy CPU", targets.clone(), vec![loaded("a", "n1", 20, 5_000, 2_500, now)], 3, Signal::Cpu),
        (
            "seats drive when they ask for most",
            targets.clone(),
            vec![loaded("a", "n1", 250, 5_000, 500, now)],
            3,
            Signal::Participants,
        ),
        (
            "a tie goes to seats",
            targets.clone(),
            vec![loaded("a", "n1", 200, 20_000, 500, now)],
            2,
            Signal::Participants,
        ),
        (
            "load of an unhealthy pod is not counted",
            targets.clone(),
            vec![
                loaded("a", "n1", 10, 5_000, 100, now),
                PodView {
                    heartbeat: Some(HeartbeatView {
                        renewed: t(-60),
                        ..loaded("b", "n2", 0, 90_000, 9_000, now).heartbeat.unwrap()
                    }),
                    ..loaded("b", "n2", 0, 0, 0, now)
                },
            ],
            1,
            Signal::Participants,
        ),
        (
            "a percentage buffer scales the load",
            Policy { buffer: Buffer::Percent(50), ..targets.clone() },
            vec![loaded("a", "n1", 10, 30_000, 100, now)],
            5,
            Signal::PacketRate,
        ),
        (
            "a participants buffer adds its pods",
            Policy { buffer: Buffer::Participants(100), ..targets.clone() },
            vec![loaded("a", "n1", 10, 30_000, 100, now)],
            4,
            Signal::PacketRate,
        ),
        (
            "maxReplicas caps the load too",
            Policy { max_replicas: 3, ..targets.clone() },
            vec![loaded("a", "n1", 10, 90_000, 100, now)],
            3,
            Signal::PacketRate,
        ),
    ];
    for (case, policy, pods, desired, signal) in cases {
        let plan = plan(&policy, &pods, 0, now, &mut ScaleMemory::default());
        assert_eq!((plan.desired, plan.scale_signal), (desired, Some(signal)), "{case}");
    }
}

#[test]
fn a_load_limit_names_its_signal() {
    let now = t(0);
    let policy = Policy { packets_per_second_per_pod: Some(1_000), max_replicas: 3, ..policy() };
    let plan = plan(&policy, &[loaded("a", "n1", 10, 9_000, 0, now)], 0, now, &mut ScaleMemory::default());
    let limit = plan.scaling_limited.expect("limited");
    assert_eq!(limit.reason, "MaxReplicas");
    assert!(limit.message.contains("9000 packets/s at 1000 per pod"), "{}", limit.message);
    assert_eq!((plan.packets_per_second, plan.cpu_millicores), (9_000, 0));
}

#[test]
fn when_the_traffic_stops_the_pool_shrinks_after_the_window_and_busy_pods_drain() {
    let policy = Policy {
        packets_per_second_per_pod: Some(10_000),
        buffer: Buffer::None,
        min_replicas: 1,
        spec_replicas: Some(1),
        scale_down_stabilization: Duration::from_secs(60),
        ..policy()
    };
    let mut memory = ScaleMemory::default();
    let busy = |now| {
        vec![loaded("a", "n1", 4, 25_000, 0, now), loaded("b", "n2", 2, 0, 0, now), loaded("c", "n3", 0, 0, 0, now)]
    };
    let up = plan(&policy, &busy(t(0)), 0, t(0), &mut memory);
    assert_eq!((up.desired, up.scale_signal), (3, Some(Signal::PacketRate)));
    let policy = Policy { spec_replicas: Some(3), ..policy };
    let quiet =
        |now| vec![loaded("a", "n1", 4, 0, 0, now), loaded("b", "n2", 2, 0, 0, now), loaded("c", "n3", 0, 0, 0, now)];
    let held = plan(&policy, &quiet(t(30)), 0, t(30), &mut memory);
    assert_eq!(held.desired, 3, "inside the window the count holds");
    let down = plan(&policy, &quiet(t(120)), 0, t(120), &mut memory);
    assert_eq!((down.desired, down.scale_signal), (1, Some(Signal::Participants)));
    assert_eq!(down.delete, vec![("c".to_string(), DeleteReason::ScaleDown)], "the empty pod goes");
    assert_eq!(down.start_drain, vec!["b".to_string()], "a busy pod is drained, never deleted");
}

#[test]
fn a_wild_load_report_asks_for_at_most_max_replicas() {
    // A compromised or broken SFU reports the largest numbers its heartbeat can carry.
    let now = t(0);
    let policy = Policy {
        packets_per_second_per_pod: Some(1),
        cpu_millicores_per_pod: Some(1),
        buffer: Buffer::Participants(u64::MAX),
        ..policy()
    };
    let pods = [loaded("a", "n1", 1, u64::MAX, u64::MAX, now), loaded("b", "n2", 1, u64::MAX, u64::MAX, now)];
    let plan = plan(&policy, &pods, 0, now, &mut ScaleMemory::default());
    assert_eq!((plan.packets_per_second, plan.cpu_millicores), (u64::MAX, u64::MAX), "sums saturate");
    assert_eq!(plan.desired, policy.max_replicas);
    assert_eq!(plan.scaling_limited.map(|l| l.reason), Some("MaxReplicas"));
}

#[test]
fn external_mode_writes_only_the_start_value_of_an_unset_spec_replicas() {
    let mut mem = ScaleMemory::default();
    let mut p = policy();
    p.mode = Mode::External;
    p.min_replicas = 2;
    p.spec_replicas = None;
    let now = t(0);
    let first = plan(&p, &[], 0, now, &mut mem);
    assert_eq!(first.write_spec_replicas, Some(2), "the scale subresource needs spec.replicas to exist");
    p.spec_replicas = Some(4);
    let then = plan(&p, &[], 0, now, &mut mem);
    assert_eq!(then.write_spec_replicas, None, "a set value is the HPA's to change");
}
