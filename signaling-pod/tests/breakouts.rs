//! Breakout rooms through signaling: room Meetings created on the API server and placed
//! by the real operator beside their main meeting, sessions moved between meetings with
//! server-issued tokens, media on real SFUs following them, timers, help, broadcasts and
//! every refusal. The test of the REST controls and resumes places rooms with a
//! stand-in (`place_rooms`); the operator's own part is also in `e2e/tests/meeting.rs`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use switchboard_sfu_client::{JoinOptions, NetworkOptions, Publish, ReceivedTrack};
use switchboard_signaling_client::{MediaSession, SignalingClient};
use switchboard_signaling_proto::breakouts::{MovedPayload, StatePayload};
use switchboard_signaling_proto::{Envelope, ErrorCode, types};

fn loopback(publish: Vec<Publish>) -> JoinOptions {
    JoinOptions { publish, net: NetworkOptions { loopback_only: true, ..Default::default() }, ..Default::default() }
}

fn hears(tracks: Vec<String>, min: u64) -> impl Fn(&HashMap<String, ReceivedTrack>) -> bool {
    move |rx| tracks.iter().all(|t| rx.get(t).is_some_and(|r| r.packets >= min))
}

/// Packets of `track` received in the current connections in `window`.
async fn arriving(media: &MediaSession, track: &str, window: Duration) -> u64 {
    let count = |rx: HashMap<String, ReceivedTrack>| rx.get(track).map_or(0, |r| r.packets);
    let before = count(media.received().await);
    tokio::time::sleep(window).await;
    count(media.received().await).saturating_sub(before)
}

/// The `n`-th `breakout-moved` the client received (1-based).
async fn moved(c: &SignalingClient, n: usize) -> MovedPayload {
    switchboard_e2e::wait_for("breakout-moved", WAIT, || async { c.count(types::BREAKOUT_MOVED) >= n }).await;
    let all: Vec<Envelope> = c.received().into_iter().filter(|e| e.type_ == types::BREAKOUT_MOVED).collect();
    all[n - 1].payload_as().expect("a breakout-moved payload")
}

fn refusal(e: switchboard_signaling_client::Error) -> ErrorCode {
    e.refusal().unwrap_or_else(|| panic!("not a refusal: {e}")).code
}

struct Person {
    user: &'static str,
    client: Arc<SignalingClient>,
    pid: String,
    media: MediaSession,
}

/// The operator (a Distributed pool of two pods, each pod's heartbeat naming an SFU in
/// this process), two signaling replicas, and seven people each publishing a
/// microphone: the host opens two rooms; the six others are dealt 3 + 3, the rooms are
/// placed on the main meeting's pod (not the emptier one), sessions and media move (one
/// reconnect each), and each hears its roommates and nobody else — not the other room,
/// not the host in the main room. Chat stays in its room; a broadcast reaches all; help
/// reaches the host; a move and a host's visit land where they say. When the timer runs
/// out, everyone is warned, comes back with media and hears all six others; the rooms
/// end and are deleted, and the main meeting goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_people_in_two_rooms_hear_only_their_room_and_the_timer_brings_everyone_back() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Pod;
    use switchboard_e2e::fixtures::{Setup, apply, pool, setup};
    let Setup { admin, ns, operator } = setup("sig-bo").await;
    let env = TestEnv { client: admin.clone(), ns, redis: Redis::start() };
    let pools: kube::Api<switchboard_crds::SfuPool> = env.ns.api();
    let spread = json!({"placement": {"strategy": "Distributed"}});
    apply(&pools, &pool("fleet", json!({"minReplicas": 2, "maxReplicas": 2}), spread)).await;
    let sims =
        switchboard_e2e::sfu_sim::SimulatedSfus::start(admin.clone(), &env.ns.name, "fleet", Duration::from_secs(1));
    switchboard_e2e::meetings::await_pool_ready(&admin, &env.ns.name, "fleet", 2).await;
    let pods: kube::Api<Pod> = env.ns.api();
    let selector = format!("{}=fleet", switchboard_heartbeat::POOL_LABEL);
    let mut names: Vec<String> = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
        .iter()
        .map(kube::ResourceExt::name_any)
        .collect();
    names.sort();
    let sfus = [sfu_pod::local::start("sfu-a").await.unwrap(), sfu_pod::local::start("sfu-b").await.unwrap()];
    for (pod, sfu) in names.iter().zip(&sfus) {
        sims.set_endpoint(pod, &sfu.endpoint);
    }
    let leases: kube::Api<Lease> = env.ns.api();
    switchboard_e2e::wait_for("heartbeats naming the SFUs", WAIT, || async {
        let mut named = 0;
        for (pod, sfu) in names.iter().zip(&sfus) {
            let beat = leases.get(pod).await.ok().and_then(|l| switchboard_heartbeat::Observed::from_lease(&l).ok());
            named += usize::from(beat.is_some_and(|b| b.heartbeat.endpoint == sfu.endpoint));
        }
        named == 2
    })
    .await;
    let origin = |m: &switchboard_crds::Meeting| {
        m.status.as_ref().and_then(|s| s.assignment.as_ref()).map(|a| a.origin.pod.clone())
    };
    meeting(&env, "main", "amy", json!({"participants": {"expected": 10}})).await;
    let main_pod =
        switchboard_e2e::eventually("main placed", WAIT, || async { origin(&env.meetings().get("main").await.ok()?) })
            .await;
    let (s1, s2) = (env.in_process(env.config()).await, env.in_process(env.config()).await);

    let users = ["amy", "ben", "cat", "dan", "eve", "fay", "gus"];
    let mut people = Vec::new();
    for (i, user) in users.into_iter().enumerate() {
        let url = if i % 2 == 0 { &s1.url } else { &s2.url };
        let (client, grant, _) = connect(&rest(url, user, None), "main").await;
        let media =
            MediaSession::start(client.clone(), &grant.participant_id, loopback(vec![Publish::audio(&mic(user))]))
                .await
                .unwrap();
        people.push(Person { user, client, pid: grant.participant_id, media });
    }
    fn mic(user: &str) -> String {
        format!("{user}-mic")
    }
    let others = |me: &str| -> Vec<String> { users.iter().filter(|u| **u != me).map(|u| mic(u)).collect() };
    for p in &people {
        p.media.wait_until("everyone in the main room", WAIT, hears(others(p.user), 30)).await.unwrap();
    }
    let amy = &people[0];
    let by_pid = |pid: &str| people.iter().find(|p| p.pid == pid).unwrap();

    // Opened by the host; a participant may not.
    let e = people[1].client.request(types::OPEN_BREAKOUTS, json!({"rooms": 2})).await.unwrap_err();
    assert_eq!(refusal(e), ErrorCode::Forbidden);
    let opened = amy
        .client
        .request(types::OPEN_BREAKOUTS, json!({"rooms": 2, "seconds": 45, "countdownSeconds": 3}))
        .await
        .unwrap();
    let state: StatePayload = opened.payload_as().unwrap();
    assert!(state.open);
    assert_eq!(state.rooms.iter().map(|r| r.participants.len()).collect::<Vec<_>>(), [3, 3], "{state:?}");
    assert!(state.rooms.iter().all(|r| !r.participants.contains(&amy.pid)), "the host stays in the main room");
    assert_eq!((state.rooms[0].name.as_str(), state.rooms[1].name.as_str()), ("Room 1", "Room 2"));
    let e = amy.client.request(types::OPEN_BREAKOUTS, json!({"rooms": 2})).await.unwrap_err();
    assert_eq!(refusal(e), ErrorCode::BreakoutsOpen, "a second opening");

    // The rooms are Meetings owned by the main meeting, gone once ended.
    let main = env.meetings().get("main").await.unwrap();
    for r in &state.rooms {
        let room = env.meetings().get(&r.meeting).await.unwrap();
        assert_eq!(room.spec.parent_ref.as_ref().unwrap().name, "main");
        let owner = &room.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), (main.metadata.uid.as_deref().unwrap(), Some(true)));
        assert_eq!(room.spec.ttl_after_ended.as_ref().unwrap().as_std(), Duration::ZERO);
        assert_eq!(origin(&room).as_deref(), Some(main_pod.as_str()), "{} beside its main meeting", r.meeting);
    }

    // Moved, with a token for the room, and media reconnected into it.
    let room_of = |pid: &str| state.rooms.iter().position(|r| r.participants.iter().any(|p| p == pid)).unwrap();
    for p in &people[1..] {
        let m = moved(&p.client, 1).await;
        let r = &state.rooms[room_of(&p.pid)];
        assert_eq!(
            (m.meeting.as_str(), m.room.as_deref(), m.main.as_str()),
            (r.meeting.as_str(), Some(r.name.as_str()), "main")
        );
        assert_eq!(m.joined.title, format!("main — {}", r.name));
        assert!(m.joined.participants.iter().all(|x| x.id == p.pid || r.participants.contains(&x.id)), "{m:?}");
        assert!(m.ends_at_ms.is_some());
        let claims = s1.app.sessions.verify(&m.session_token).expect("a server-issued token");
        assert_eq!((claims.sub.as_str(), claims.mtg.as_str()), (p.pid.as_str(), r.meeting.as_str()));
        assert_eq!(claims.home.as_ref().map(|h| h.mtg.as_str()), Some("main"));
        switchboard_e2e::wait_for("media reconnected", WAIT, || async { p.media.reconnects() == 1 }).await;
    }
    for p in &people[1..] {
        let mates: Vec<String> = state.rooms[room_of(&p.pid)]
            .participants
            .iter()
            .filter(|x| **x != p.pid)
            .map(|x| mic(by_pid(x).user))
            .collect();
        p.media.wait_until("the roommates", WAIT, hears(mates, 30)).await.unwrap();
    }
    // Isolation, measured over 2 s each: the other room and the main room are silent.
    for p in &people[1..] {
        let other = &state.rooms[1 - room_of(&p.pid)].participants;
        for track in other.iter().map(|x| mic(by_pid(x).user)).chain([mic("amy")]) {
            assert_eq!(arriving(&p.media, &track, Duration::from_millis(500)).await, 0, "{} hears {track}", p.user);
        }
    }
    for p in &people[1..] {
        assert_eq!(arriving(&amy.media, &mic(p.user), Duration::from_millis(500)).await, 0, "amy hears {}", p.user);
    }

    // Chat stays in its room; its history is for its members and the hosts.
    let (a, b) = (by_pid(&state.rooms[0].participants[0]), by_pid(&state.rooms[0].participants[1]));
    let outsider = by_pid(&state.rooms[1].participants[0]);
    a.client.request(types::CHAT, json!({"text": "room one only"})).await.unwrap();
    b.client
        .wait_for("the roommate's chat", WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == "room one only")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in [outsider, amy] {
        assert!(!p.client.received().iter().any(|e| e.type_ == types::CHAT), "{} read another room's chat", p.user);
    }
    let path = format!("/api/v1/meetings/{}/chat", state.rooms[0].meeting);
    let (status, _) = rest(&s1.url, outsider.user, None).call(reqwest::Method::GET, &path, None).await.unwrap();
    assert_eq!(status, 403, "another room's history");
    let (status, page) = rest(&s1.url, "amy", None).call(reqwest::Method::GET, &path, None).await.unwrap();
    assert_eq!((status, page["messages"][0]["text"].as_str()), (200, Some("room one only")));

    // A room is not joined from outside.
    let (status, body) = rest(&s2.url, "zed", None)
        .call(reqwest::Method::POST, &format!("/api/v1/meetings/{}/join", state.rooms[0].meeting), None)
        .await
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (409, Some("breakoutRoom")));

    // A broadcast reaches everyone; help reaches the host, once in 30 s.
    amy.client.request(types::BREAKOUT_BROADCAST, json!({"text": "five minutes left"})).await.unwrap();
    for p in &people {
        let e = p.client.wait_for("the broadcast", WAIT, |e| e.type_ == types::BREAKOUT_BROADCAST).await.unwrap();
        assert_eq!((e.payload["text"].as_str(), e.payload["name"].as_str()), (Some("five minutes left"), Some("AMY")));
    }
    let e = a.client.request(types::BREAKOUT_BROADCAST, json!({"text": "hi"})).await.unwrap_err();
    assert_eq!(refusal(e), ErrorCode::Forbidden);
    a.client.request(types::ASK_FOR_HELP, json!({})).await.unwrap();
    let help = amy.client.wait_for("help", WAIT, |e| e.type_ == types::HELP_REQUESTED).await.unwrap();
    assert_eq!(
        (help.payload["participantId"].as_str(), help.payload["room"].as_str()),
        (Some(a.pid.as_str()), Some("Room 1"))
    );
    assert_eq!(refusal(a.client.request(types::ASK_FOR_HELP, json!({})).await.unwrap_err()), ErrorCode::RateLimited);
    assert_eq!(
        refusal(amy.client.request(types::ASK_FOR_HELP, json!({})).await.unwrap_err()),
        ErrorCode::InvalidPayload
    );

    // The host visits room 1: it hears it, and room 1 hears the host.
    amy.client.request(types::BREAKOUT_MOVE, json!({"participantId": amy.pid, "room": 0})).await.unwrap();
    let visit = moved(&amy.client, 1).await;
    assert_eq!(visit.room.as_deref(), Some("Room 1"));
    let room_one: Vec<String> = state.rooms[0].participants.iter().map(|x| mic(by_pid(x).user)).collect();
    amy.media.wait_until("room 1 for the visiting host", WAIT, hears(room_one, 30)).await.unwrap();
    a.media.wait_until("the visiting host", WAIT, hears(vec![mic("amy")], 30)).await.unwrap();
    // A participant moved to the other room hears it.
    amy.client.request(types::BREAKOUT_MOVE, json!({"participantId": b.pid, "room": 1})).await.unwrap();
    assert_eq!(moved(&b.client, 2).await.room.as_deref(), Some("Room 2"));
    b.media.wait_until("room 2 after a move", WAIT, hears(vec![mic(outsider.user)], 30)).await.unwrap();
    let e =
        amy.client.request(types::BREAKOUT_MOVE, json!({"participantId": "p-nobody", "room": 1})).await.unwrap_err();
    assert_eq!(refusal(e), ErrorCode::UnknownParticipant);

    // The timer: warned, then everyone home with media, hearing the four others.
    for p in &people {
        let e = p
            .client
            .wait_for("the countdown", Duration::from_secs(60), |e| e.type_ == types::BREAKOUTS_CLOSING)
            .await
            .unwrap();
        assert_eq!(e.payload["seconds"], 3);
    }
    for p in &people {
        let n = p.client.count(types::BREAKOUT_MOVED);
        let home = p
            .client
            .wait_for("home", WAIT, |e| e.type_ == types::BREAKOUT_MOVED && e.payload["room"].is_null())
            .await
            .unwrap();
        let home: MovedPayload = home.payload_as().unwrap();
        assert_eq!((home.meeting.as_str(), home.joined.title.as_str()), ("main", "main"), "{} came back", p.user);
        assert!(n >= 1);
    }
    for p in &people {
        p.media.wait_until("everyone after the rooms closed", WAIT, hears(others(p.user), 30)).await.unwrap();
    }
    let closed = amy
        .client
        .wait_for("rooms closed", WAIT, |e| e.type_ == types::BREAKOUTS && e.payload["open"] == false)
        .await
        .unwrap();
    assert_eq!(closed.payload["rooms"], json!([]));
    // The operator ends the rooms and deletes them (`ttlAfterEnded: 0s`); the main
    // meeting goes on.
    for r in &state.rooms {
        switchboard_e2e::await_deleted(&env.meetings(), &r.meeting, Duration::from_secs(60)).await;
    }
    let main = env.meetings().get("main").await.unwrap();
    assert_eq!(main.status.and_then(|s| s.phase), Some(switchboard_crds::meeting::MeetingPhase::Active));
    let (status, _) =
        rest(&s1.url, "amy", None).call(reqwest::Method::GET, "/api/v1/meetings/main/breakouts", None).await.unwrap();
    assert_eq!(status, 404);
    operator.stop().await.unwrap();
    env.ns.delete().await;
}

/// Over REST and with a manual assignment: refusals (a participant's token, a bad body,
/// a second opening, an opening from a room), resuming with the room's token lands in
/// the room, with the main meeting's token lands in the main meeting and follows into
/// the room; a removed user's old room token is refused; Redis losing everything moves
/// nobody and the state comes back from the rooms' Meetings; after the timer closes the
/// rooms, the room's token resumes at home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_run_over_rest_and_sessions_find_their_room_when_they_resume() {
    let env = env("sig-bo-rest").await;
    meeting(&env, "class", "amy", json!({"waitingRoom": true})).await;
    assign(&env, "class", &[("sfu-x", "http://127.0.0.1:9")], &[]).await;
    let _placer = place_rooms(env.meetings(), ("sfu-x", "http://127.0.0.1:9"));
    let server = env.in_process(env.config()).await;
    let (amy, _, _) = connect(&rest(&server.url, "amy", None), "class").await;
    let mut joined = Vec::new();
    for user in ["ben", "cat"] {
        let (c, g, _) = connect(&rest(&server.url, user, None), "class").await;
        joined.push((c, g));
    }
    amy.request(types::ADMIT, json!({"all": true})).await.unwrap();
    let (ben, ben_grant) = &joined[0];
    let (cat, cat_grant) = &joined[1];
    for c in [ben, cat] {
        c.wait_for("admitted", WAIT, |e| e.type_ == types::ADMITTED).await.unwrap();
    }
    let host = rest(&server.url, "amy", None);
    let post = |r: switchboard_signaling_client::Rest, path: &'static str, body: serde_json::Value| async move {
        r.call(reqwest::Method::POST, path, Some(body)).await.unwrap()
    };

    let (status, body) =
        post(rest(&server.url, "ben", None), "/api/v1/meetings/class/breakouts", json!({"rooms": 2})).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    for bad in [
        json!({"rooms": 0}),
        json!({"rooms": 2, "seconds": 1}),
        json!({"names": ["A", "a"]}),
        json!({"rooms": 2, "x": 1}),
    ] {
        let (status, _) = post(rest(&server.url, "amy", None), "/api/v1/meetings/class/breakouts", bad.clone()).await;
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = post(host.clone(), "/api/v1/meetings/class/breakouts/close", json!({})).await;
    assert_eq!(status, 409, "nothing to close");
    // A meeting's rooms open at most once every 30 s (each opening creates Meetings).
    meeting(&env, "quick", "amy", json!({})).await;
    assign(&env, "quick", &[("sfu-x", "http://127.0.0.1:9")], &[]).await;
    let (status, body) = post(host.clone(), "/api/v1/meetings/quick/breakouts", json!({"rooms": 1})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        post(host.clone(), "/api/v1/meetings/quick/breakouts/close", json!({"countdownSeconds": 0})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(host.clone(), "/api/v1/meetings/quick/breakouts", json!({"rooms": 1})).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("rateLimited")), "{body}");
    let manual = json!({"names": ["Red", "Blue"], "assignment": "manual", "manual": {ben_grant.participant_id.clone(): 0},
                        "seconds": 12, "countdownSeconds": 1});
    let (status, body) = post(host.clone(), "/api/v1/meetings/class/breakouts", manual.clone()).await;
    assert_eq!(status, 201, "{body}");
    let state: StatePayload = serde_json::from_value(body).unwrap();
    assert_eq!(state.rooms[0].participants, std::slice::from_ref(&ben_grant.participant_id));
    assert!(state.rooms[1].participants.is_empty(), "cat is left in the main room");
    let (status, body) = post(host.clone(), "/api/v1/meetings/class/breakouts", manual).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("breakoutsOpen")));
    let red = state.rooms[0].meeting.clone();
    let (status, body) = host
        .call(reqwest::Method::POST, &format!("/api/v1/meetings/{red}/breakouts"), Some(json!({"rooms": 1})))
        .await
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (409, Some("breakoutRoom")));

    // Ben resumes with the room's token on a new connection: in Red, the old one closed.
    let to_red = moved(ben, 1).await;
    let (ben2, rejoined) = SignalingClient::join(&ben_grant.signaling_url, &to_red.session_token).await.unwrap();
    assert!(rejoined.resumed);
    assert_eq!(rejoined.title, "class — Red");
    ben.wait_closed(WAIT).await.unwrap();
    // Cat is moved over REST; resuming with the main meeting's token, it follows there.
    let (status, body) = post(
        host.clone(),
        "/api/v1/meetings/class/breakouts/move",
        json!({"participantId": cat_grant.participant_id, "room": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(moved(cat, 1).await.room.as_deref(), Some("Blue"));
    let (cat2, back) = SignalingClient::join(&cat_grant.signaling_url, &cat_grant.session_token).await.unwrap();
    assert!(back.participant.admitted, "a session moved to a room does not wait again");
    let to_blue = moved(&cat2, 1).await;
    assert_eq!(to_blue.room.as_deref(), Some("Blue"));
    let (status, body) =
        post(host.clone(), "/api/v1/meetings/class/breakouts/move", json!({"participantId": "p-none"})).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("unknownParticipant")));
    let (status, body) = host.call(reqwest::Method::GET, "/api/v1/meetings/class/breakouts", None).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["rooms"][1]["participants"], json!([cat_grant.participant_id]));
    let (status, body) =
        post(host.clone(), "/api/v1/meetings/class/breakouts/broadcast", json!({"text": "wrap up"})).await;
    assert_eq!((status, body["rooms"].as_u64()), (200, Some(2)));
    ben2.wait_for("the broadcast", WAIT, |e| e.type_ == types::BREAKOUT_BROADCAST).await.unwrap();
    // Cat is brought back and removed: its old room token does not get it into the room.
    let (status, _) =
        post(host.clone(), "/api/v1/meetings/class/breakouts/move", json!({"participantId": cat_grant.participant_id}))
            .await;
    assert_eq!(status, 200);
    assert_eq!(moved(&cat2, 2).await.meeting, "class");
    amy.request(types::REMOVE, json!({"participantId": cat_grant.participant_id})).await.unwrap();
    cat2.wait_closed(WAIT).await.unwrap();
    match SignalingClient::join(&cat_grant.signaling_url, &to_blue.session_token).await {
        Err(e) => assert_eq!(refusal(e), ErrorCode::Removed),
        Ok(_) => panic!("a removed user got back into a room with its old token"),
    }

    // Redis loses everything: ben stays in Red (nobody is pulled home), the state comes
    // back from the rooms' Meetings (their timer too), and the host sees it again.
    let flushed = std::process::Command::new("redis-cli").args(["-u", &env.redis.url, "FLUSHALL"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&flushed.stdout).trim(), "OK");
    switchboard_e2e::wait_for("the rooms restored", Duration::from_secs(30), || async {
        let (status, body) = host.call(reqwest::Method::GET, "/api/v1/meetings/class/breakouts", None).await.unwrap();
        status == 200 && body["rooms"][0]["participants"] == json!([ben_grant.participant_id])
    })
    .await;
    assert_eq!(ben2.count(types::BREAKOUT_MOVED), 0, "ben stayed in Red");
    assert!(ben2.is_open());

    // The timer closes the rooms: home, and the room's token now resumes at home.
    ben2.wait_for("home", Duration::from_secs(40), |e| {
        e.type_ == types::BREAKOUT_MOVED && e.payload["meeting"] == "class"
    })
    .await
    .unwrap();
    amy.wait_for("closed", WAIT, |e| e.type_ == types::BREAKOUTS && e.payload["open"] == false).await.unwrap();
    drop(ben2);
    let (_ben3, home) = SignalingClient::join(&ben_grant.signaling_url, &to_red.session_token).await.unwrap();
    assert_eq!(home.title, "class");
    let (status, body) = post(host, "/api/v1/meetings/class/breakouts/broadcast", json!({"text": "late"})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("noBreakouts")));
}
