//! Table tests of the Meeting controller's pure steps (`decide`, `finish`), built
//! from fixtures: the cases the e2e suite drives through a cluster, plus stale
//! caches and contention, in milliseconds.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::EventType;
use serde_json::{Value, json};
use switchboard_crds::meeting::{Assignment, MeetingPhase};
use switchboard_crds::{Meeting, SfuPool};
use switchboard_fleet::health::{Detected, Fault};

use super::apply::{Moved, NotPlaced, Outcome};
use super::decide::{Holding, Tally, decide};
use super::observe::{AssignmentSeen, MeetingWrite, Observed, PoolRoom};
use super::spec::Invalid;
use super::status::{PLACEMENT_RETRY, finish};
use crate::fixtures::{at, meeting, pool, t0};

fn room(pool: SfuPool, free: Option<u64>) -> PoolRoom {
    PoolRoom { pool: Arc::new(pool), free }
}

fn observed(m: Meeting, pools: Vec<PoolRoom>, now: jiff::Timestamp) -> Observed {
    Observed {
        meeting: Arc::new(m),
        now,
        room_code: "123-456-789".into(),
        join_url: Some("https://meet.example/j/123-456-789".into()),
        pools: Ok(pools),
        assignment: None,
        pending: Vec::new(),
        parent: None,
        in_rooms: 0,
    }
}

fn assignment(pool: &str, origin: &str, edges: &[&str]) -> Value {
    let endpoint = |pod: &str, parent: Option<&str>| json!({"pod": pod, "endpoint": format!("http://{pod}:7880"), "participants": 10, "parent": parent});
    json!({
        "pool": pool,
        "origin": endpoint(origin, None),
        "edges": edges.iter().map(|e| endpoint(e, Some(origin))).collect::<Vec<_>>(),
        "at": t0().to_string(),
    })
}

fn assigned(name: &str, phase: &str, a: Value) -> Meeting {
    meeting(name).status(json!({"phase": phase, "roomCode": "123-456-789", "assignment": a})).build()
}

fn placed_on(pool: &str, pod: &str) -> Assignment {
    serde_json::from_value(assignment(pool, pod, &[])).unwrap()
}

fn reasons(events: &[super::decide::Note]) -> Vec<&'static str> {
    events.iter().map(|(_, r, _)| *r).collect()
}

fn condition<'a>(s: &'a switchboard_crds::MeetingStatus, type_: &str) -> Option<(&'a str, &'a str)> {
    s.conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.as_str(), c.reason.as_str()))
}

#[test]
fn an_ad_hoc_meeting_is_placed_at_once_and_says_so_in_one_event() {
    let o = observed(meeting("m").build(), vec![room(pool("p").build(), None)], at(1));
    let d = decide(&o);
    assert_eq!(d.hold, Holding::Place { pool: "p".into(), participants: 10, beside: vec![] });
    assert_eq!(d.status.phase, Some(MeetingPhase::Waiting));
    let f = finish(&o, d, Outcome::Placed(Ok(placed_on("p", "p-1"))));
    assert_eq!(f.status.assignment.as_ref().map(|a| a.origin.pod.as_str()), Some("p-1"));
    assert_eq!(condition(&f.status, "Placed"), Some(("True", "Assigned")));
    assert_eq!(condition(&f.status, "Valid"), Some(("True", "Valid")));
    // Waiting and placed: one Event, not two.
    assert_eq!(reasons(&f.events), ["Placed"]);
    assert_eq!(f.wrote, Some(MeetingWrite::Placed));
    assert!(f.tallies.contains(&Tally::Placement { result: "placed", reason: "Placed" }));
    assert!(f.tallies.contains(&Tally::PlacementLatency(1.0)));
    assert_eq!(f.status.room_code.as_deref(), Some("123-456-789"));
}

#[test]
fn a_placement_that_finds_no_room_keeps_a_reservation_and_retries_soon() {
    let o = observed(meeting("m").build(), vec![room(pool("p").build(), None)], at(1));
    let not = NotPlaced { reason: "NoReadyPods", message: "pool p has no healthy Ready SFU pod".into() };
    let f = finish(&o, decide(&o), Outcome::Placed(Err(not.clone())));
    assert_eq!(condition(&f.status, "Placed"), Some(("False", "NoReadyPods")));
    assert_eq!(reasons(&f.events), ["PlacementFailed", "Waiting"]);
    let r = f.status.reservation.as_ref().expect("a reservation while waiting");
    assert_eq!((r.pool.as_str(), r.participants), ("p", 10));
    assert_eq!(f.triggers, ["p"], "the pool is told, so it scales up");
    assert_eq!(f.requeue, Some(PLACEMENT_RETRY));
    // Said once: the next failure for the same reason publishes nothing.
    let again = meeting("m").status(serde_json::to_value(&f.status).unwrap()).build();
    let o = observed(again, vec![room(pool("p").build(), None)], at(2));
    let f = finish(&o, decide(&o), Outcome::Placed(Err(not)));
    assert!(reasons(&f.events).is_empty(), "{:?}", f.events);
    assert!(f.triggers.is_empty(), "it already holds a reservation");
}

#[test]
fn contention_is_a_placement_failure_that_retries() {
    let o = observed(meeting("m").build(), vec![room(pool("p").build(), None)], at(1));
    let not = NotPlaced { reason: "Contended", message: "seats changed while placing: full".into() };
    let f = finish(&o, decide(&o), Outcome::Placed(Err(not)));
    assert_eq!(condition(&f.status, "Placed"), Some(("False", "Contended")));
    assert_eq!(f.requeue, Some(PLACEMENT_RETRY));
    assert!(f.tallies.contains(&Tally::Placement { result: "failed", reason: "Contended" }));
}

#[test]
fn a_healthy_booked_assignment_is_kept_and_strays_released() {
    let m = assigned("m", "Active", assignment("p", "p-1", &["p-2"]));
    let mut o = observed(m, vec![room(pool("p").build(), None)], at(60));
    o.assignment = Some(AssignmentSeen { faults: vec![], booked: true, strays: vec!["p-9".into()] });
    let d = decide(&o);
    assert_eq!(d.hold, Holding::Keep { strays: vec!["p-9".into()] });
    let f = finish(&o, d, Outcome::Nothing);
    assert_eq!(condition(&f.status, "Placed"), Some(("True", "Assigned")));
    let placed = f.status.conditions.iter().find(|c| c.type_ == "Placed").unwrap();
    assert_eq!(placed.message, "cascaded over 2 pods: origin p-1 and 1 edges");
}

#[test]
fn an_assignment_whose_seats_are_gone_is_placed_again() {
    // A stale cached Meeting: its seats were released since; keeping it would bring them back.
    let m = assigned("m", "Waiting", assignment("p", "p-1", &[]));
    let mut o = observed(m, vec![room(pool("p").build(), None)], at(5));
    o.assignment = Some(AssignmentSeen { faults: vec![], booked: false, strays: vec![] });
    assert_eq!(decide(&o).hold, Holding::Place { pool: "p".into(), participants: 10, beside: vec![] });
}

#[test]
fn a_placement_not_yet_in_the_cache_is_waited_for_not_repeated() {
    let mut o = observed(meeting("m").build(), vec![room(pool("p").build(), None)], at(1));
    o.pending = vec![MeetingWrite::Placed];
    assert_eq!(decide(&o).hold, Holding::WaitForCache);
}

#[test]
fn a_move_not_yet_in_the_cache_is_waited_for_not_repeated() {
    let m = assigned("m", "Active", assignment("p", "p-1", &[]));
    let mut o = observed(m, vec![room(pool("p").build(), None)], at(60));
    let fault = Detected { fault: Fault::HeartbeatExpired, at: at(50) };
    o.assignment = Some(AssignmentSeen { faults: vec![("p-1".into(), fault)], booked: true, strays: vec![] });
    o.pending = vec![MeetingWrite::Migrated { generation: 1 }];
    assert_eq!(decide(&o).hold, Holding::WaitForCache);
}

#[test]
fn a_meeting_on_a_failed_pod_moves_and_releases_the_old_seats_after_the_write() {
    let m = assigned("m", "Active", assignment("p", "p-1", &[]));
    let mut o = observed(m, vec![room(pool("p").build(), None)], at(60));
    let fault = Detected { fault: Fault::HeartbeatExpired, at: at(50) };
    o.assignment = Some(AssignmentSeen { faults: vec![("p-1".into(), fault)], booked: true, strays: vec![] });
    let d = decide(&o);
    assert!(matches!(&d.hold, Holding::Migrate { pool, faults, .. } if pool == "p" && faults.len() == 1));
    let moved = Moved {
        assignment: placed_on("p", "p-2"),
        moves: vec![("p-1".into(), "p-2".into())],
        left: vec!["p-1".into()],
    };
    let f = finish(&o, d, Outcome::Moved(Ok(moved)));
    let migration = f.status.migrations.last().expect("recorded");
    assert_eq!((migration.from.as_str(), migration.to.as_str(), migration.generation), ("p-1", "p-2", 1));
    assert_eq!(migration.reason, Fault::HeartbeatExpired.as_str());
    assert_eq!(f.release_after, ["p-1"]);
    assert_eq!(f.wrote, Some(MeetingWrite::Migrated { generation: 1 }));
    assert_eq!(f.moved_since, Some(at(50)));
    assert_eq!(reasons(&f.events), ["Migrated"]);
    assert_eq!(condition(&f.status, "Placed"), Some(("True", "Assigned")));
}

#[test]
fn a_move_that_finds_no_room_keeps_the_old_seats_and_says_so_once() {
    let m = assigned("m", "Active", assignment("p", "p-1", &[]));
    let mut o = observed(m, vec![room(pool("p").build(), None)], at(60));
    let fault = Detected { fault: Fault::NodeNotReady, at: at(50) };
    o.assignment = Some(AssignmentSeen { faults: vec![("p-1".into(), fault)], booked: true, strays: vec![] });
    let not = NotPlaced { reason: "InsufficientCapacity", message: "pool p: no room".into() };
    let f = finish(&o, decide(&o), Outcome::Moved(Err(not)));
    assert_eq!(f.status.assignment.as_ref().map(|a| a.origin.pod.as_str()), Some("p-1"));
    assert_eq!(condition(&f.status, "Placed"), Some(("False", "MigrationPending")));
    assert_eq!(reasons(&f.events), ["MigrationPending"]);
    assert!(f.release_after.is_empty());
    assert_eq!(f.requeue, Some(PLACEMENT_RETRY));
}

#[test]
fn the_migration_history_keeps_the_latest_twenty() {
    let history: Vec<Value> = (1..=20)
        .map(|g| json!({"from": "a", "to": "b", "reason": "Rebalanced", "at": t0().to_string(), "generation": g}))
        .collect();
    let m = meeting("m")
        .status(json!({"phase": "Active", "assignment": assignment("p", "p-1", &[]), "migrations": history}))
        .build();
    let mut o = observed(m, vec![room(pool("p").build(), None)], at(60));
    let fault = Detected { fault: Fault::PodDeleted, at: at(59) };
    o.assignment = Some(AssignmentSeen { faults: vec![("p-1".into(), fault)], booked: true, strays: vec![] });
    let moved = Moved { assignment: placed_on("p", "p-2"), moves: vec![("p-1".into(), "p-2".into())], left: vec![] };
    let f = finish(&o, decide(&o), Outcome::Moved(Ok(moved)));
    assert_eq!(f.status.migrations.len(), 20);
    assert_eq!(f.status.migrations.first().unwrap().generation, 2);
    assert_eq!(f.status.migrations.last().unwrap().generation, 21);
}

#[test]
fn a_scheduled_meeting_reserves_ahead_of_its_start_or_says_the_pool_is_too_small() {
    let p = pool("p").spec(json!({"preProvisioning": {"leadTime": "10m"}})).build();
    let m = meeting("m").starts(at(300)).expected(50).build();
    // Not yet within the lead time: scheduled, nothing held.
    let early = observed(meeting("m").starts(at(3600)).expected(50).build(), vec![room(p.clone(), Some(900))], t0());
    let d = decide(&early);
    assert_eq!((d.hold.clone(), d.status.phase), (Holding::Release, Some(MeetingPhase::Scheduled)));
    assert!(d.status.reservation.is_none());
    // Within it, with room: reserved, the pool told.
    let o = observed(m.clone(), vec![room(p.clone(), Some(900))], t0());
    let f = finish(&o, decide(&o), Outcome::Nothing);
    assert_eq!(condition(&f.status, "CapacityReserved"), Some(("True", "Reserved")));
    assert_eq!(f.status.reservation.as_ref().map(|r| r.participants), Some(50));
    assert_eq!(reasons(&f.events), ["CapacityReserved", "Scheduled"]);
    assert_eq!(f.triggers, ["p"]);
    assert!(f.tallies.contains(&Tally::ReservationMade));
    // Without room: PoolAtMaximum, ahead of time.
    let o = observed(m, vec![room(p, Some(40))], t0());
    let f = finish(&o, decide(&o), Outcome::Nothing);
    assert_eq!(condition(&f.status, "CapacityReserved"), Some(("False", "PoolAtMaximum")));
    assert!(reasons(&f.events).contains(&"PoolAtMaximum"));
}

#[test]
fn bad_specs_fail_with_the_reason_once() {
    type Case = (Meeting, Result<Vec<PoolRoom>, Invalid>, &'static str);
    let cases: Vec<Case> = vec![
        (meeting("m").build(), Ok(vec![]), "NoMatchingPool"),
        (meeting("m").expected(5000).build(), Ok(vec![room(pool("p").build(), None)]), "ExceedsPoolMaximum"),
        (meeting("m").starts(at(-3600)).build(), Ok(vec![room(pool("p").build(), None)]), "StartInPast"),
        (
            meeting("m").build(),
            Err(Invalid { reason: "InvalidSelector", message: "spec.sfuPoolSelector: bad".into() }),
            "InvalidSelector",
        ),
    ];
    for (m, pools, reason) in cases {
        let mut o = observed(m, vec![], t0());
        o.pools = pools;
        let d = decide(&o);
        assert_eq!(d.hold, Holding::Invalid, "{reason}");
        let f = finish(&o, d, Outcome::Nothing);
        assert_eq!(f.status.phase, Some(MeetingPhase::Failed), "{reason}");
        assert_eq!(condition(&f.status, "Valid"), Some(("False", reason)));
        assert_eq!(f.events.iter().map(|(t, r, _)| (*t, *r)).collect::<Vec<_>>(), [(EventType::Warning, reason)]);
        assert_eq!(f.requeue, Some(super::decide::FAILED_RECHECK));
        // Already Failed: no second Event.
        let failed = meeting("m").status(serde_json::to_value(&f.status).unwrap()).build();
        let mut o2 = observed(failed, vec![], t0());
        o2.pools = o.pools.clone();
        o2.meeting = Arc::new(Meeting { spec: o.meeting.spec.clone(), ..(*o2.meeting).clone() });
        assert!(finish(&o2, decide(&o2), Outcome::Nothing).events.is_empty(), "{reason}");
    }
}

/// A placed meeting (its seats booked) observed at `now`: the decision releases its
/// seats and the status says Ended without an assignment.
fn ends_and_releases(m: Meeting, now: jiff::Timestamp) -> super::status::Finished {
    let mut o = observed(m, vec![room(pool("p").build(), None)], now);
    o.assignment = Some(AssignmentSeen { faults: vec![], booked: true, strays: vec![] });
    let d = decide(&o);
    assert_eq!(d.hold, Holding::Release);
    let f = finish(&o, d, Outcome::Nothing);
    assert_eq!(f.status.phase, Some(MeetingPhase::Ended));
    assert!(f.status.assignment.is_none());
    f
}

#[test]
fn an_empty_active_meeting_ends_after_its_timeout_and_releases_its_seats() {
    let m = meeting("m")
        .spec(json!({"emptyTimeout": "5m"}))
        .status(json!({"phase": "Active", "startedAt": t0().to_string(), "emptySince": at(10).to_string(),
                       "assignment": assignment("p", "p-1", &[]), "participants": {"current": 0}}))
        .build();
    let f = ends_and_releases(m, at(311));
    assert_eq!(condition(&f.status, "Ended"), Some(("True", "Empty")));
    assert_eq!(reasons(&f.events), ["Ended"]);
}

#[test]
fn a_busy_meeting_a_host_ended_releases_its_seats_and_says_who() {
    let m = meeting("m")
        .status(json!({"phase": "Active", "startedAt": t0().to_string(),
                       "assignment": assignment("p", "p-1", &[]), "participants": {"current": 12},
                       "endRequested": {"at": at(10).to_string(), "by": "alice"}}))
        .build();
    let f = ends_and_releases(m, at(11));
    assert!(f.status.end_requested.is_none(), "signaling's field: the operator does not write it");
    assert_eq!(condition(&f.status, "Ended"), Some(("True", "EndedByHost")));
    assert_eq!(
        f.events.iter().map(|(_, r, n)| (*r, n.as_str())).collect::<Vec<_>>(),
        [("Ended", "host alice ended the meeting for everyone")]
    );
}

#[test]
fn an_ended_meeting_is_deleted_after_its_ttl() {
    let m = meeting("m")
        .spec(json!({"ttlAfterEnded": "1m"}))
        .status(json!({"phase": "Ended", "endedAt": t0().to_string()}))
        .build();
    let o = observed(m.clone(), vec![room(pool("p").build(), None)], at(30));
    let d = decide(&o);
    assert!(!d.delete);
    assert_eq!(d.requeue, Some(Duration::from_secs(30)));
    let o = observed(m, vec![room(pool("p").build(), None)], at(61));
    assert!(decide(&o).delete);
}

#[test]
fn an_ended_ad_hoc_meeting_without_a_ttl_goes_after_an_hour_and_a_scheduled_one_stays() {
    let ended = json!({"phase": "Ended", "endedAt": t0().to_string()});
    let ad_hoc = meeting("m").status(ended.clone()).build();
    let o = observed(ad_hoc.clone(), vec![room(pool("p").build(), None)], at(3599));
    assert!(!decide(&o).delete);
    let o = observed(ad_hoc, vec![room(pool("p").build(), None)], at(3600));
    assert!(decide(&o).delete);
    let scheduled = meeting("m").starts(at(-7200)).status(ended).build();
    let o = observed(scheduled, vec![room(pool("p").build(), None)], at(1_000_000));
    let d = decide(&o);
    assert!(!d.delete && d.requeue.is_none(), "kept, and not looked at again for it");
}

#[test]
fn a_meeting_goes_to_the_matching_pool_with_the_most_room_or_stays_in_its_own() {
    let rooms = vec![room(pool("a").build(), Some(100)), room(pool("b").build(), Some(500))];
    let o = observed(meeting("m").build(), rooms.clone(), at(1));
    assert_eq!(decide(&o).hold, Holding::Place { pool: "b".into(), participants: 10, beside: vec![] });
    // A meeting holding a reservation in `a` stays there.
    let reserved = meeting("m")
        .status(json!({"phase": "Waiting", "reservation": {"pool": "a", "participants": 10, "from": t0().to_string()}}))
        .build();
    let o = observed(reserved, rooms, at(1));
    assert_eq!(decide(&o).hold, Holding::Place { pool: "a".into(), participants: 10, beside: vec![] });
}

#[test]
fn participants_joining_make_the_meeting_active_with_an_event() {
    let m = meeting("m")
        .status(json!({"phase": "Waiting", "assignment": assignment("p", "p-1", &[]), "participants": {"current": 3}}))
        .build();
    let mut o = observed(m, vec![room(pool("p").build(), None)], at(20));
    o.assignment = Some(AssignmentSeen { faults: vec![], booked: true, strays: vec![] });
    let f = finish(&o, decide(&o), Outcome::Nothing);
    assert_eq!(f.status.phase, Some(MeetingPhase::Active));
    assert_eq!(f.status.started_at.as_ref().map(|t| t.0), Some(at(20)));
    assert_eq!(reasons(&f.events), ["Active"]);
}

/// `capacity.tracksPerPod`: a pod whose reported tracks plus the meeting's would pass the
/// limit is not a candidate for it, however many seats it has free; pods already in the
/// meeting's tree keep their seats.
#[test]
fn a_placement_leaves_out_a_pod_whose_tracks_would_pass_the_limit() {
    use std::collections::HashMap;
    use switchboard_placement::place::{self, Shortfall, Strategy};

    use super::apply::{ReadyPod, TrackLimit, candidates};
    let ready = |name: &str, tracks: u64| ReadyPod {
        name: name.into(),
        node: Some(format!("node-{name}")),
        zone: None,
        endpoint: format!("http://{name}:7880"),
        tracks,
    };
    let pods = [ready("busy", 900), ready("quiet", 100)];
    let taken = HashMap::from([("busy".to_string(), 10), ("quiet".to_string(), 10)]);
    // A meeting of 10 needs 2 × 10 × 10 = 200 tracks: only the quiet pod has them.
    let limit = Some(TrackLimit { per_pod: 1_000, meeting_size: 10 });
    let c = candidates(&pods, &taken, 100, limit, &[]);
    let free: Vec<(String, u64)> = c.iter().map(|c| (c.pod.clone(), c.free())).collect();
    assert_eq!(free, vec![("busy".into(), 5), ("quiet".into(), 45)]);
    // Packed would take the fullest pod; the track limit leaves it out.
    let shares = place::place(Strategy::Packed, &c, 10).unwrap();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0].pod, "quiet");
    // Without a limit the busy pod is the best fit.
    let unlimited = candidates(&pods, &taken, 100, None, &[]);
    assert_eq!(place::place(Strategy::Packed, &unlimited, 10).unwrap()[0].pod, "busy");
    // When no pod has the tracks, the meeting is refused (a cascade of what fits otherwise).
    let full = [ready("a", 1_000), ready("b", 990)];
    let c = candidates(&full, &HashMap::new(), 100, limit, &[]);
    assert!(matches!(place::place(Strategy::Packed, &c, 10), Err(Shortfall::InsufficientCapacity { .. })));
    // A pod of the meeting's own tree keeps its seats whatever its tracks.
    let kept = candidates(&full, &HashMap::new(), 100, limit, &["a".to_string()]);
    assert_eq!(kept[0].free(), 100);
}

/// A breakout room (`spec.parentRef`): placed beside its main meeting when that one is
/// placed in the same pool; refused while its main meeting is missing, is a room
/// itself or differs in `e2ee`; ended when the main meeting ends, is asked to end, or
/// is gone after the room started; and it looks at its main meeting again every few
/// seconds meanwhile.
#[test]
fn a_breakout_room_follows_its_main_meeting() {
    use super::decide::PARENT_RECHECK;
    use super::observe::ParentSeen;
    let child = || meeting("main-bo1-1").spec(json!({"parentRef": {"name": "main"}}));
    let main = |status: Value| ParentSeen::Found(Arc::new(meeting("main").status(status).build()));
    let with = |m: Meeting, parent: ParentSeen| {
        let mut o = observed(m, vec![room(pool("p").build(), None)], at(1));
        o.parent = Some(parent);
        o
    };
    let placed = json!({"phase": "Active", "assignment": assignment("p", "p-1", &["p-2"])});

    let d = decide(&with(child().build(), main(placed.clone())));
    assert_eq!(d.hold, Holding::Place { pool: "p".into(), participants: 10, beside: vec!["p-1".into(), "p-2".into()] });
    assert_eq!(d.requeue, Some(PARENT_RECHECK));
    // The main meeting in another pool, or not placed yet: placed as any meeting.
    let elsewhere = json!({"phase": "Active", "assignment": assignment("q", "q-1", &[])});
    for status in [elsewhere, json!({"phase": "Waiting"})] {
        let d = decide(&with(child().build(), main(status)));
        assert_eq!(d.hold, Holding::Place { pool: "p".into(), participants: 10, beside: vec![] });
    }

    // Refused: no main meeting, a main meeting that is a room, a different e2ee.
    let nested = ParentSeen::Found(Arc::new(meeting("main").spec(json!({"parentRef": {"name": "top"}})).build()));
    let e2ee = child().spec(json!({"e2ee": true})).build();
    for (o, reason) in [
        (with(child().build(), ParentSeen::Missing), "ParentNotFound"),
        (with(child().build(), nested), "NestedBreakout"),
        (with(e2ee, main(placed.clone())), "E2eeMismatch"),
    ] {
        let d = decide(&o);
        assert_eq!(d.hold, Holding::Invalid, "{reason}");
        assert_eq!(d.status.phase, Some(MeetingPhase::Failed), "{reason}");
        assert!(d.conditions.iter().any(|c| c.type_ == "Valid" && c.reason == reason), "{reason}: {:?}", d.conditions);
    }

    // Ended with its main meeting: ended, asked to end, or gone once the room started.
    let started =
        || child().status(json!({"phase": "Active", "startedAt": t0().to_string(), "participants": {"current": 3}}));
    let ending = json!({"phase": "Active", "endRequested": {"at": t0().to_string(), "by": "host-1"}});
    for parent in [main(json!({"phase": "Ended"})), main(ending), ParentSeen::Missing] {
        let d = decide(&with(started().build(), parent.clone()));
        assert_eq!(d.status.phase, Some(MeetingPhase::Ended), "{parent:?}");
        assert_eq!(d.end_reason, Some(switchboard_placement::lifecycle::EndReason::ParentEnded));
        assert_eq!(d.hold, Holding::Release);
    }
    // A main meeting still on: the room carries on, people in it.
    let d = decide(&with(started().build(), main(placed)));
    assert_eq!((d.status.phase, d.end_reason), (Some(MeetingPhase::Active), None));
}

/// A main meeting whose people are all in breakout rooms is not empty: it does not end
/// after its empty timeout while the rooms hold people, and does once they do not.
#[test]
fn a_main_meeting_with_its_people_in_rooms_is_not_empty() {
    let long_ago = t0().to_string();
    let m = || {
        meeting("main")
            .spec(json!({"emptyTimeout": "5m"}))
            .status(
                json!({"phase": "Active", "startedAt": long_ago, "emptySince": long_ago, "participants": {"current": 0},
                "assignment": assignment("p", "p-1", &[])}),
            )
            .build()
    };
    let mut o = observed(m(), vec![room(pool("p").build(), None)], at(3600));
    o.in_rooms = 6;
    let d = decide(&o);
    assert_eq!((d.status.phase, d.end_reason), (Some(MeetingPhase::Active), None));
    o.in_rooms = 0;
    let d = decide(&o);
    assert_eq!(d.status.phase, Some(MeetingPhase::Ended));
    assert_eq!(d.end_reason, Some(switchboard_placement::lifecycle::EndReason::Empty));
}
