//! The Meeting controller against the real control plane: lifecycle on a
//! schedule, concurrent placement without over-commit, cascades, pre-provisioning
//! for a herd of large meetings, a pool at its maximum, and bad specs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchboard_crds::meeting::MeetingPhase;
use switchboard_crds::{Meeting, SfuPool};
use switchboard_e2e::fixtures::{Setup, apply, await_events, event_notes, pool, setup};
use switchboard_e2e::meetings::*;
use switchboard_e2e::sfu_sim::SimulatedSfus;
use switchboard_e2e::*;
use switchboard_operator::metrics::PlacementLabels;

const TIMEOUT: Duration = Duration::from_secs(60);
const SIGNALING_MANAGER: &str = "switchboard-signaling";

fn in_secs(secs: i64) -> String {
    jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(secs)).unwrap().to_string()
}

/// Signaling's report of participants (its own field manager, as agreed).
async fn report_participants(api: &Api<Meeting>, name: &str, current: i32) {
    let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
        "status": {"participants": {"current": current, "peak": current.max(1)}}});
    api.patch_status(name, &PatchParams::apply(SIGNALING_MANAGER).force(), &Patch::Apply(&patch)).await.unwrap();
}

async fn signaling_pool(admin: &Client, ns: &str) {
    let api: Api<switchboard_crds::SignalingPool> = Api::namespaced(admin.clone(), ns);
    let obj = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool", "metadata": {"name": "main"},
        "spec": {"publicUrl": "https://meet.example.com/",
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
            "auth": {"jwtSecretRef": {"name": "jwt", "key": "key"}}}});
    api.patch("main", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_walks_through_every_phase_on_schedule() {
    let Setup { admin, ns, operator } = setup("mtg-life").await;
    signaling_pool(&admin, &ns.name).await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "fleet", Duration::from_secs(1));
    let pools: Api<SfuPool> = ns.api();
    apply(
        &pools,
        &pool(
            "fleet",
            json!({"minReplicas": 2, "maxReplicas": 4}),
            json!({"preProvisioning": {"leadTime": "8s", "releaseAfter": "1m"}}),
        ),
    )
    .await;
    await_pool_ready(&admin, &ns.name, "fleet", 2).await;

    let meetings: Api<Meeting> = ns.api();
    let spec = json!({
        "schedule": {"start": in_secs(20), "expectedDuration": "10m"},
        "emptyTimeout": "3s",
        "ttlAfterEnded": "3s",
    });
    create(&meetings, &meeting("standup", 30, spec)).await;

    // Scheduled, with its identity, and nothing held yet.
    let m =
        await_meeting(&meetings, "standup", "Scheduled", TIMEOUT, |m| phase(m) == Some(MeetingPhase::Scheduled)).await;
    let status = m.status.clone().unwrap();
    let code = status.room_code.clone().unwrap();
    assert_eq!(code.len(), 12);
    assert!(code.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    assert_eq!(status.join_url.as_deref(), Some(format!("https://meet.example.com/j/{code}").as_str()));
    assert!(status.reservation.is_none() && status.assignment.is_none(), "{status:?}");

    // start - leadTime: a reservation, seen by the pool.
    let m = await_meeting(&meetings, "standup", "reserved", TIMEOUT, |m| {
        m.status.as_ref().is_some_and(|s| s.reservation.is_some())
    })
    .await;
    assert_eq!(phase(&m), Some(MeetingPhase::Scheduled));
    assert_eq!(condition(&m, "CapacityReserved").map(|c| c.status.as_str()), Some("True"));
    assert_eq!(m.status.as_ref().unwrap().reservation.as_ref().unwrap().participants, 30);
    eventually("pool counts the reservation", TIMEOUT, || async {
        let p = pools.get("fleet").await.ok()?;
        (p.status?.reserved?.participants == 30).then_some(())
    })
    .await;

    // Start: the reservation becomes seats on a pod.
    let m = await_meeting(&meetings, "standup", "Waiting and placed", TIMEOUT, |m| {
        phase(m) == Some(MeetingPhase::Waiting) && m.status.as_ref().is_some_and(|s| s.assignment.is_some())
    })
    .await;
    let status = m.status.clone().unwrap();
    assert!(status.reservation.is_none(), "the reservation became the assignment");
    let origin = status.assignment.unwrap().origin;
    assert!(origin.endpoint.starts_with("http://") && origin.endpoint.ends_with(":7880"), "{origin:?}");
    assert_eq!(origin.participants, Some(30));
    assert_eq!(ledgers(&admin, &ns.name, "fleet").await[&origin.pod].get("standup"), Some(&30));
    assert_eq!(condition(&m, "Placed").map(|c| c.status.as_str()), Some("True"));
    eventually("pool counts the seats as allocated", TIMEOUT, || async {
        let s = pools.get("fleet").await.ok()?.status?;
        (s.allocated?.participants == 30 && s.reserved?.participants == 0).then_some(())
    })
    .await;

    // Signaling reports participants: Active.
    report_participants(&meetings, "standup", 3).await;
    let m = await_meeting(&meetings, "standup", "Active", TIMEOUT, |m| phase(m) == Some(MeetingPhase::Active)).await;
    let started = m.status.as_ref().unwrap().started_at.clone().expect("startedAt");
    assert_eq!(
        m.status.as_ref().unwrap().participants.as_ref().unwrap().current,
        3,
        "the operator keeps signaling's field"
    );

    // Everyone leaves: Ended after the empty timeout, seats released.
    report_participants(&meetings, "standup", 0).await;
    let m = await_meeting(&meetings, "standup", "Ended", TIMEOUT, |m| phase(m) == Some(MeetingPhase::Ended)).await;
    let status = m.status.clone().unwrap();
    assert_eq!(status.started_at, Some(started));
    let ended = status.ended_at.clone().expect("endedAt");
    assert!(ended.0 > status.started_at.unwrap().0);
    assert!(status.assignment.is_none());
    assert_eq!(condition(&m, "Ended").map(|c| c.reason.as_str()), Some("Empty"));
    wait_for("seats released", TIMEOUT, || async {
        ledgers(&admin, &ns.name, "fleet").await.values().all(|l| !l.contains_key("standup"))
    })
    .await;
    await_events(&admin, &ns.name, "standup", &["Scheduled", "CapacityReserved", "Placed", "Active", "Ended"]).await;

    // TTL after the end: deleted.
    await_deleted(&meetings, "standup", TIMEOUT).await;
    let metrics = operator.metrics.encode();
    assert!(metrics.contains("switchboard_meeting_placement_latency_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("switchboard_meeting_reservations_made_total 1"), "{metrics}");
    operator.stop().await.unwrap();
    ns.delete().await;
}

/// A host ends a busy meeting for everyone: signaling writes `status.endRequested` (a
/// JSON patch guarded by the UID, as `signaling-pod/src/meetings.rs` does); the operator ends the meeting
/// at once whatever its count, says who did in the condition and an Event, releases its
/// seats, and keeps signaling's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_ending_a_busy_meeting_ends_it_for_everyone() {
    let Setup { admin, ns, operator } = setup("mtg-end").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "fleet", Duration::from_secs(1));
    let pools: Api<SfuPool> = ns.api();
    apply(&pools, &pool("fleet", json!({"minReplicas": 1, "maxReplicas": 2}), json!({}))).await;
    await_pool_ready(&admin, &ns.name, "fleet", 1).await;
    let meetings: Api<Meeting> = ns.api();
    create(&meetings, &meeting("allhands", 20, json!({"ttlAfterEnded": "1h"}))).await;
    await_meeting(&meetings, "allhands", "placed", TIMEOUT, |m| {
        m.status.as_ref().is_some_and(|s| s.assignment.is_some())
    })
    .await;
    report_participants(&meetings, "allhands", 12).await;
    let m = await_meeting(&meetings, "allhands", "Active", TIMEOUT, |m| phase(m) == Some(MeetingPhase::Active)).await;
    let uid = m.metadata.uid.clone();

    let end = |uid: Option<String>, by: &str| {
        let ops = json!([
            {"op": "test", "path": "/metadata/uid", "value": uid},
            {"op": "add", "path": "/status/endRequested", "value": {"at": jiff::Timestamp::now().to_string(), "by": by}},
        ]);
        Patch::<()>::Json(serde_json::from_value(ops).unwrap())
    };
    let params = PatchParams { field_manager: Some(SIGNALING_MANAGER.into()), ..Default::default() };
    meetings.patch_status("allhands", &params, &end(uid, "alice-1")).await.unwrap();
    let m = await_meeting(&meetings, "allhands", "Ended", TIMEOUT, |m| phase(m) == Some(MeetingPhase::Ended)).await;
    let status = m.status.clone().unwrap();
    assert_eq!(condition(&m, "Ended").map(|c| c.reason.as_str()), Some("EndedByHost"));
    assert!(status.assignment.is_none(), "{status:?}");
    assert_eq!(status.participants.map(|p| p.current), Some(12), "signaling's count is kept");
    assert_eq!(status.end_requested.map(|r| r.by).as_deref(), Some("alice-1"), "and its request");
    wait_for("seats released", TIMEOUT, || async {
        ledgers(&admin, &ns.name, "fleet").await.values().all(|l| !l.contains_key("allhands"))
    })
    .await;
    await_events(&admin, &ns.name, "allhands", &["Placed", "Active", "Ended"]).await;

    // Another meeting's UID in the request is refused: it cannot end a meeting created
    // again under the same name.
    let stale = end(Some("00000000-0000-0000-0000-000000000000".into()), "mallory");
    assert!(meetings.patch_status("allhands", &params, &stale).await.is_err());
    // A `by` past the schema's bound is refused by the API server, with the field named.
    let long = meetings.patch_status("allhands", &params, &end(m.metadata.uid.clone(), &"x".repeat(200))).await;
    let e = long.expect_err("a 200-character `by` is refused").to_string();
    assert!(e.contains("endRequested.by"), "{e}");
    let m = meetings.get("allhands").await.unwrap();
    assert_eq!(m.status.and_then(|s| s.end_requested).map(|r| r.by).as_deref(), Some("alice-1"));
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_meetings_never_overcommit_a_pod() {
    let Setup { admin, ns, operator } = setup("mtg-herd500").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "fleet", Duration::from_secs(1));
    let pools: Api<SfuPool> = ns.api();
    // 10 pods of 250: 2,500 seats for about 2,250 participants, so pods fill to the brim.
    let spec = json!({"minReplicas": 10, "maxReplicas": 10});
    let mut obj = pool("fleet", spec, json!({"remediation": {"heartbeatTimeout": "30s"}}));
    obj["spec"]["capacity"]["participantsPerPod"] = json!(250);
    apply(&pools, &obj).await;
    await_pool_ready(&admin, &ns.name, "fleet", 10).await;

    let meetings: Api<Meeting> = ns.api();
    let sizes: Vec<i32> = (0..500).map(|i| 1 + (i * 7919 % 8)).collect();
    let total: i32 = sizes.iter().sum();
    assert!(total <= 2500, "{total}");
    let created: Vec<Meeting> = futures::stream::iter(sizes.iter().enumerate())
        .map(|(i, n)| {
            let meetings = meetings.clone();
            async move { create(&meetings, &meeting(&format!("m{i:03}"), *n, json!({}))).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(created.len(), 500);

    let placed = eventually("500 meetings placed", Duration::from_secs(120), || async {
        let list = meetings.list(&ListParams::default()).await.ok()?;
        let placed = list.items.iter().filter(|m| m.status.as_ref().is_some_and(|s| s.assignment.is_some())).count();
        (placed == 500).then_some(list.items)
    })
    .await;
    // Placements in flight count against their pod's free seats, so none is chosen
    // past a pod's capacity and has to be retried, even as pods fill to the brim.
    let contended =
        operator.metrics.placements.get_or_create(&PlacementLabels { result: "failed", reason: "Contended" }).get();
    assert_eq!(contended, 0, "placements that found their pod full when committing");

    let mut per_pod: HashMap<String, u64> = HashMap::new();
    let mut codes = HashSet::new();
    for m in &placed {
        let s = m.status.as_ref().unwrap();
        let a = s.assignment.as_ref().unwrap();
        assert!(a.edges.is_empty(), "small meetings fit one pod");
        assert_eq!(a.origin.participants, Some(m.spec.participants.expected));
        *per_pod.entry(a.origin.pod.clone()).or_default() += m.spec.participants.expected as u64;
        assert!(codes.insert(s.room_code.clone().unwrap()), "room code {:?} is taken twice", s.room_code);
    }
    assert_eq!(codes.len(), 500);
    let ledgers = ledgers(&admin, &ns.name, "fleet").await;
    for (pod, seats) in &per_pod {
        assert!(*seats <= 250, "pod {pod} over capacity: {seats}");
        assert_eq!(ledgers[pod].values().sum::<u64>(), *seats, "ledger of {pod} agrees with the assignments");
    }
    assert_eq!(per_pod.values().sum::<u64>(), total as u64);
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_three_times_a_pod_gets_a_cascade_tree() {
    let Setup { admin, ns, operator } = setup("mtg-cascade").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "fleet", Duration::from_secs(1));
    let pools: Api<SfuPool> = ns.api();
    apply(
        &pools,
        &pool("fleet", json!({"minReplicas": 5, "maxReplicas": 8}), json!({"placement": {"strategy": "Distributed"}})),
    )
    .await;
    await_pool_ready(&admin, &ns.name, "fleet", 5).await;

    let meetings: Api<Meeting> = ns.api();
    create(&meetings, &meeting("town-hall", 300, json!({"mode": "Webinar"}))).await;
    let m = await_meeting(&meetings, "town-hall", "placed", TIMEOUT, |m| {
        m.status.as_ref().is_some_and(|s| s.assignment.is_some())
    })
    .await;
    let a = m.status.unwrap().assignment.unwrap();
    assert!(a.origin.parent.is_none());
    assert!(a.edges.len() >= 3, "300 participants over pods of 100 need an origin and at least 3 edges: {a:?}");
    let pods: Vec<&switchboard_crds::meeting::SfuEndpoint> = std::iter::once(&a.origin).chain(&a.edges).collect();
    let names: HashSet<&str> = pods.iter().map(|e| e.pod.as_str()).collect();
    assert_eq!(names.len(), pods.len(), "each pod once");
    assert_eq!(pods.iter().map(|e| e.participants.unwrap()).sum::<i32>(), 300, "shares add up");
    for e in &a.edges {
        let parent = e.parent.as_deref().expect("an edge has a parent");
        assert!(names.contains(parent), "parent {parent} is in the tree");
        assert!(e.participants.unwrap() > 0);
    }
    let ledgers = ledgers(&admin, &ns.name, "fleet").await;
    for e in &pods {
        let seats = ledgers[&e.pod]["town-hall"];
        assert!(seats > e.participants.unwrap() as u64, "relay links take seats too");
        assert!(ledgers[&e.pod].values().sum::<u64>() <= 100, "{} over capacity", e.pod);
    }
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_herd_finds_ready_pods_reserved_before_its_start() {
    let Setup { admin, ns, operator } = setup("mtg-herd").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "fleet", Duration::from_secs(1));
    let pools: Api<SfuPool> = ns.api();
    let mut obj = pool(
        "fleet",
        json!({"minReplicas": 1, "maxReplicas": 40}),
        json!({"preProvisioning": {"leadTime": "115s", "releaseAfter": "15s"}}),
    );
    obj["spec"]["capacity"]["participantsPerPod"] = json!(600);
    apply(&pools, &obj).await;
    await_pool_ready(&admin, &ns.name, "fleet", 1).await;

    // 20 meetings of 500 participants, two minutes ahead: reserved 5 s in, which leaves
    // close to two minutes to bring 17 pods up on a busy CI machine.
    let meetings: Api<Meeting> = ns.api();
    let start = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(120)).unwrap();
    for i in 0..20 {
        let spec = json!({"schedule": {"start": start.to_string(), "expectedDuration": "30m"}, "emptyTimeout": "1m"});
        create(&meetings, &meeting(&format!("herd-{i:02}"), 500, spec)).await;
    }
    // Before the start: 10,000 participants reserved, and Ready pods for them.
    let ready = eventually("Ready capacity for the herd", Duration::from_secs(118), || async {
        let s = pools.get("fleet").await.ok()?.status?;
        let ok = s.reserved.as_ref()?.participants == 10_000 && s.capacity.as_ref()?.participants >= 10_000;
        ok.then_some(s)
    })
    .await;
    assert!(jiff::Timestamp::now() < start, "capacity was Ready before the start");
    assert!(ready.ready_replicas >= 17, "{} Ready pods", ready.ready_replicas);
    for i in 0..20 {
        let m = meetings.get(&format!("herd-{i:02}")).await.unwrap();
        assert_eq!(phase(&m), Some(MeetingPhase::Scheduled));
        assert_eq!(condition(&m, "CapacityReserved").map(|c| c.status.as_str()), Some("True"), "{:?}", m.status);
    }

    // At the start every meeting gets its seats at once; 19 of them fill up.
    let until_start = Duration::try_from(start.duration_since(jiff::Timestamp::now())).unwrap_or_default();
    eventually("the herd placed", until_start + Duration::from_secs(60), || async {
        let list = meetings.list(&ListParams::default()).await.ok()?;
        list.items.iter().all(|m| m.status.as_ref().is_some_and(|s| s.assignment.is_some())).then_some(())
    })
    .await;
    for i in 0..19 {
        report_participants(&meetings, &format!("herd-{i:02}"), 480).await;
    }
    // The 20th never starts: released after releaseAfter.
    let m = await_meeting(&meetings, "herd-19", "released", TIMEOUT, |m| phase(m) == Some(MeetingPhase::Ended)).await;
    assert_eq!(condition(&m, "Ended").map(|c| c.reason.as_str()), Some("NeverStarted"));
    let status = m.status.unwrap();
    assert!(status.assignment.is_none() && status.reservation.is_none());
    wait_for("its seats back in the pool", TIMEOUT, || async {
        ledgers(&admin, &ns.name, "fleet").await.values().all(|l| !l.contains_key("herd-19"))
    })
    .await;
    for i in 0..19 {
        let m = meetings.get(&format!("herd-{i:02}")).await.unwrap();
        assert_eq!(phase(&m), Some(MeetingPhase::Active), "herd-{i:02}");
    }
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_at_max_says_why_ahead_of_time() {
    let Setup { admin, ns, operator } = setup("mtg-max").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "small", Duration::from_secs(1));
    let pools: Api<SfuPool> = ns.api();
    apply(
        &pools,
        &pool("small", json!({"minReplicas": 1, "maxReplicas": 2}), json!({"preProvisioning": {"leadTime": "1h"}})),
    )
    .await;
    await_pool_ready(&admin, &ns.name, "small", 1).await;

    // Two meetings in 30 minutes: the first takes 150 of the 198 seats the pool can ever have.
    let meetings: Api<Meeting> = ns.api();
    let spec = json!({"schedule": {"start": in_secs(1800)}});
    create(&meetings, &meeting("first", 150, spec.clone())).await;
    await_meeting(&meetings, "first", "reserved", TIMEOUT, |m| {
        condition(m, "CapacityReserved").is_some_and(|c| c.status == "True")
    })
    .await;
    create(&meetings, &meeting("second", 100, spec)).await;
    let m = await_meeting(&meetings, "second", "PoolAtMaximum", TIMEOUT, |m| {
        condition(m, "CapacityReserved").is_some_and(|c| c.status == "False" && c.reason == "PoolAtMaximum")
    })
    .await;
    assert_eq!(phase(&m), Some(MeetingPhase::Scheduled), "said 30 minutes before the start");
    let message = &condition(&m, "CapacityReserved").unwrap().message;
    assert!(message.contains("48 more") && message.contains("maxReplicas 2"), "{message}");
    await_events(&admin, &ns.name, "second", &["PoolAtMaximum"]).await;

    // An ad-hoc meeting that does not fit now says why it waits.
    create(&meetings, &meeting("now", 190, json!({}))).await;
    let m = await_meeting(&meetings, "now", "not placed", TIMEOUT, |m| {
        condition(m, "Placed").is_some_and(|c| c.status == "False")
    })
    .await;
    let placed = condition(&m, "Placed").unwrap();
    assert!(["InsufficientCapacity", "NoReadyPods"].contains(&placed.reason.as_str()), "{placed:?}");
    assert_eq!(phase(&m), Some(MeetingPhase::Waiting));
    await_events(&admin, &ns.name, "now", &["PlacementFailed"]).await;
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_or_reported() {
    let Setup { admin, ns, operator } = setup("mtg-bad").await;
    let pools: Api<SfuPool> = ns.api();
    let mut obj = pool("eu", json!({"minReplicas": 0, "maxReplicas": 2}), json!({}));
    obj["spec"]["region"] = json!("eu-west-1");
    apply(&pools, &obj).await;
    let meetings: Api<Meeting> = ns.api();

    // Refused by the API server, field named.
    let too_many: Meeting = serde_json::from_value(meeting("huge", 200_000, json!({}))).unwrap();
    let (code, message) = api_error(meetings.create(&PostParams::default(), &too_many).await);
    assert_eq!(code, 422);
    assert!(message.contains("spec.participants.expected"), "{message}");

    // Reported by the operator with a condition and an Event.
    let cases = [
        (
            "past",
            meeting("past", 10, json!({"schedule": {"start": in_secs(-3600)}})),
            "StartInPast",
            "spec.schedule.start",
        ),
        ("oversized", meeting("oversized", 5_000, json!({})), "ExceedsPoolMaximum", "spec.participants.expected"),
        ("mars", meeting("mars", 10, json!({"region": "mars-1"})), "NoMatchingPool", "region mars-1"),
        (
            "unselected",
            meeting("unselected", 10, json!({"sfuPoolSelector": {"matchLabels": {"tier": "gold"}}})),
            "NoMatchingPool",
            "spec.sfuPoolSelector",
        ),
    ];
    for (name, obj, _, _) in &cases {
        create(&meetings, obj).await;
        let _ = name;
    }
    for (name, _, reason, mentions) in &cases {
        let m = await_meeting(&meetings, name, reason, TIMEOUT, |m| {
            phase(m) == Some(MeetingPhase::Failed) && condition(m, "Valid").is_some_and(|c| c.reason == *reason)
        })
        .await;
        let valid = condition(&m, "Valid").expect("a Valid condition");
        assert_eq!((valid.status.as_str(), valid.reason.as_str()), ("False", *reason), "{name}");
        assert!(valid.message.contains(mentions), "{name}: {}", valid.message);
        assert!(m.status.as_ref().unwrap().assignment.is_none());
        await_events(&admin, &ns.name, name, &[reason]).await;
    }

    // Fixing the world fixes the meeting: a pool big enough takes the oversized one.
    obj["spec"]["autoscaling"]["maxReplicas"] = json!(60);
    apply(&pools, &obj).await;
    await_meeting(&meetings, "oversized", "no longer Failed", TIMEOUT, |m| {
        phase(m) == Some(MeetingPhase::Waiting) && condition(m, "Valid").is_some_and(|c| c.status == "True")
    })
    .await;
    operator.stop().await.unwrap();
    ns.delete().await;
}

/// A breakout room (`spec.parentRef`) goes on its main meeting's SFU pod, though the
/// pool's Distributed strategy would put any other meeting on the emptier pod; `kubectl
/// get meetings` names its parent; it ends when its main meeting ends. A room naming a
/// main meeting that does not exist is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breakout_room_is_placed_beside_its_main_meeting_and_ends_with_it() {
    let Setup { admin, ns, operator } = setup("mtg-breakout").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "fleet", Duration::from_secs(1));
    let pools: Api<SfuPool> = ns.api();
    let spread = json!({"placement": {"strategy": "Distributed"}});
    apply(&pools, &pool("fleet", json!({"minReplicas": 2, "maxReplicas": 2}), spread)).await;
    await_pool_ready(&admin, &ns.name, "fleet", 2).await;
    let meetings: Api<Meeting> = ns.api();
    let origin = |m: &Meeting| m.status.as_ref().and_then(|s| s.assignment.as_ref()).map(|a| a.origin.pod.clone());
    create(&meetings, &meeting("main", 30, json!({}))).await;
    let main = await_meeting(&meetings, "main", "placed", TIMEOUT, |m| origin(m).is_some()).await;
    let main_pod = origin(&main).unwrap();
    // Another meeting goes to the emptier pod, as Distributed places.
    create(&meetings, &meeting("standup", 5, json!({}))).await;
    let standup = await_meeting(&meetings, "standup", "placed", TIMEOUT, |m| origin(m).is_some()).await;
    assert_ne!(origin(&standup).unwrap(), main_pod, "Distributed spreads meetings");

    // The room goes beside its main meeting all the same. It is made as signaling makes
    // rooms: owned by the main meeting, deleted as soon as it ends.
    let mut room = meeting("main-bo1-1", 4, json!({"parentRef": {"name": "main"}, "ttlAfterEnded": "0s"}));
    room["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "name": "main",
        "uid": main.metadata.uid.clone().unwrap(), "controller": true,
    }]);
    create(&meetings, &room).await;
    let room = await_meeting(&meetings, "main-bo1-1", "placed", TIMEOUT, |m| origin(m).is_some()).await;
    assert_eq!(origin(&room).unwrap(), main_pod, "a breakout room shares its main meeting's pod");
    wait_for("the room's seats in the main meeting's pod's ledger", TIMEOUT, || async {
        ledgers(&admin, &ns.name, "fleet").await.get(&main_pod).is_some_and(|l| l.contains_key("main-bo1-1"))
    })
    .await;
    // `kubectl get meetings` shows the parent.
    let table = kubectl_ok(&["get", "meetings", "-n", &ns.name, "main-bo1-1"]);
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    let parent = rows[0].iter().position(|c| *c == "PARENT").expect("a PARENT column");
    assert_eq!(rows[1][parent], "main", "{table}");

    // A room of nothing is refused.
    create(&meetings, &meeting("nowhere-bo1-1", 4, json!({"parentRef": {"name": "nowhere"}}))).await;
    let orphan =
        await_meeting(&meetings, "nowhere-bo1-1", "refused", TIMEOUT, |m| phase(m) == Some(MeetingPhase::Failed)).await;
    assert_eq!(condition(&orphan, "Valid").map(|c| c.reason.as_str()), Some("ParentNotFound"));

    // The main meeting ends (its host ends it for everyone): so does the room, with
    // people still in it, and its seats go back.
    report_participants(&meetings, "main-bo1-1", 3).await;
    await_meeting(&meetings, "main-bo1-1", "Active", TIMEOUT, |m| phase(m) == Some(MeetingPhase::Active)).await;
    let ops = json!([{"op": "add", "path": "/status/endRequested", "value": {"at": jiff::Timestamp::now().to_string(), "by": "host-1"}}]);
    let params = PatchParams { field_manager: Some(SIGNALING_MANAGER.into()), ..Default::default() };
    meetings.patch_status("main", &params, &Patch::<()>::Json(serde_json::from_value(ops).unwrap())).await.unwrap();
    // Ended with it (its Event says why), then deleted at once (`ttlAfterEnded: 0s`).
    await_events(&admin, &ns.name, "main-bo1-1", &["Ended"]).await;
    let notes = event_notes(&admin, &ns.name, "main-bo1-1", "Ended").await;
    assert!(notes.iter().any(|n| n.contains("its main meeting ended")), "{notes:?}");
    wait_for("the room's seats released", TIMEOUT, || async {
        ledgers(&admin, &ns.name, "fleet").await.values().all(|l| !l.contains_key("main-bo1-1"))
    })
    .await;
    await_deleted(&meetings, "main-bo1-1", TIMEOUT).await;
    operator.stop().await.unwrap();
    ns.delete().await;
}
