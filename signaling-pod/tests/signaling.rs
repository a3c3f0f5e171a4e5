//! signaling-pod against a real Redis and the local control plane.

mod common;

use common::*;
use switchboard_signaling_client::SignalingClient;
use switchboard_signaling_proto::{ErrorCode, Role, types};

/// The SignalingPool's open connections, as its replicas report them.
async fn pool_connections(env: &TestEnv, what: &str, n: i64) {
    let pools: kube::Api<switchboard_crds::SignalingPool> = env.ns.api();
    switchboard_e2e::wait_for(what, WAIT, || async {
        pools.get_status("main").await.unwrap().status.is_some_and(|s| s.connections == Some(n))
    })
    .await;
}

/// Two replicas share one Redis: the waiting room, chat and state changes cross
/// between them; killing one, its client resumes on the other without re-admission.
/// The pool's status counts the connections of its live replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_a_meeting_and_a_killed_replicas_clients_resume() {
    let env = env("sig-replicas").await;
    let pool: switchboard_crds::SignalingPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool", "metadata": {"name": "main"},
        "spec": {
            "publicUrl": "https://meet.example.com",
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
            "auth": {"jwtSecretRef": {"name": "jwt", "key": "key"}},
        },
    }))
    .unwrap();
    env.ns
        .api::<switchboard_crds::SignalingPool>()
        .create(&Default::default(), &pool)
        .await
        .expect("SignalingPool created");
    meeting(&env, "standup", "hana", serde_json::json!({"waitingRoom": true})).await;
    assign(&env, "standup", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let mut a = Replica::start_in_pool(&env, "replica-a", "main");
    let b = Replica::start_in_pool(&env, "replica-b", "main");

    let (host, host_grant, joined) = connect(&rest(&a.url, "hana", None), "standup").await;
    assert_eq!(joined.participant.role, Role::Host);
    assert!(joined.participant.admitted, "hosts skip the waiting room");
    let (guest, guest_grant, joined) = connect(&rest(&b.url, "gus", None), "standup").await;
    assert!(!joined.participant.admitted, "a participant waits");
    guest.wait_for("waiting", WAIT, of_type(types::WAITING)).await.unwrap();
    // The host, on the other replica, sees the waiting guest and admits them.
    host.wait_for("the waiting guest", WAIT, |e| {
        e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == guest_grant.participant_id.as_str()
    })
    .await
    .unwrap();
    let refused = guest.request(types::CHAT, serde_json::json!({"text": "let me in"})).await.unwrap_err();
    assert_eq!(refused.refusal().unwrap().code, ErrorCode::NotAdmitted);
    host.request(types::ADMIT, serde_json::json!({"participantId": guest_grant.participant_id})).await.unwrap();
    guest.wait_for("admission", WAIT, of_type(types::ADMITTED)).await.unwrap();

    // Chat and state changes cross replicas.
    guest.request(types::CHAT, serde_json::json!({"text": "hello from b"})).await.unwrap();
    let chat = host
        .wait_for("the guest's chat", WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == "hello from b")
        .await
        .unwrap();
    assert_eq!(chat.from_peer_id.as_deref(), Some(guest_grant.participant_id.as_str()));
    assert_eq!(chat.payload["seq"], 1);
    host.request(types::PARTICIPANT_UPDATE, serde_json::json!({"videoMuted": true})).await.unwrap();
    guest
        .wait_for("the host's camera off", WAIT, |e| {
            e.type_ == types::PARTICIPANT_UPDATE
                && e.payload["id"] == host_grant.participant_id.as_str()
                && e.payload["videoMuted"] == true
        })
        .await
        .unwrap();
    host.send(switchboard_signaling_proto::Envelope::new(types::HAND_RAISE, serde_json::json!({"raised": true})));
    guest
        .wait_for("the raised hand", WAIT, |e| e.type_ == types::HAND_RAISE && e.payload["raised"] == true)
        .await
        .unwrap();

    pool_connections(&env, "the pool's connections = 2, one per replica", 2).await;

    // Both present: signaling reports it into the Meeting's status.
    switchboard_e2e::wait_for("participants.current = 2", WAIT, || async {
        let m = env.meetings().get("standup").await.unwrap();
        m.status.and_then(|s| s.participants).is_some_and(|p| p.current == 2 && p.peak == 2)
    })
    .await;

    // Replica A dies; the host reconnects to B with the same session and is back in.
    a.kill();
    host.wait_closed(WAIT).await.unwrap();
    let (host2, joined) =
        SignalingClient::join(&format!("{}/ws", b.url.replace("http", "ws")), &host_grant.session_token).await.unwrap();
    assert!(joined.resumed, "the session resumes");
    assert_eq!(joined.participant.id, host_grant.participant_id);
    assert!(joined.participant.admitted && joined.participant.video_muted, "state survives the replica");
    assert_eq!(joined.participants.len(), 2);
    host2.request(types::CHAT, serde_json::json!({"text": "back"})).await.unwrap();
    guest
        .wait_for("chat after the failover", WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == "back")
        .await
        .unwrap();

    // Chat history, paginated, newest first.
    let r = rest(&b.url, "gus", None);
    let page = r.chat("standup", None, 1).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].text, "back");
    let older = r.chat("standup", page.next_before, 10).await.unwrap();
    assert_eq!(older.messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["hello from b"]);
    assert_eq!(older.next_before, None);

    // Leaving is announced and counted.
    guest.request(types::LEAVE, serde_json::json!({})).await.unwrap();
    host2.wait_for("the guest left", WAIT, |e| e.type_ == types::PARTICIPANT_LEFT).await.unwrap();
    switchboard_e2e::wait_for("participants.current = 1", WAIT, || async {
        let m = env.meetings().get("standup").await.unwrap();
        m.status.and_then(|s| s.participants).is_some_and(|p| p.current == 1 && p.peak == 2)
    })
    .await;
    // Only the host's connection is left, on B: 1 only once the killed replica's last
    // report (its one connection) has gone stale and B's counts the guest gone.
    drop(guest);
    pool_connections(&env, "the pool's connections = 1", 1).await;
    env.ns.delete().await;
}

/// Roles are enforced by the server, and a refusal leaves the connection working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_are_enforced_and_refusals_keep_the_connection() {
    let env = env("sig-perms").await;
    meeting(&env, "class", "tara", serde_json::json!({})).await;
    assign(&env, "class", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let server = env.in_process(env.config()).await;

    let (host, _, _) = connect(&rest(&server.url, "tara", None), "class").await;
    let (pupil, pupil_grant, joined) = connect(&rest(&server.url, "pete", None), "class").await;
    assert_eq!(joined.participant.role, Role::Participant);
    let (viewer, viewer_grant, joined) = connect(&rest(&server.url, "vic", Some(Role::Viewer)), "class").await;
    assert_eq!(joined.participant.role, Role::Viewer);

    let alive = |c: &std::sync::Arc<SignalingClient>| {
        let c = c.clone();
        async move {
            c.request(types::PING, serde_json::json!({})).await.expect("the connection lives on").type_ == types::PONG
        }
    };
    let forbidden = |r: switchboard_signaling_client::Result<switchboard_signaling_proto::Envelope>| {
        let e = r.expect_err("refused");
        let p = e.refusal().unwrap_or_else(|| panic!("an error reply, got {e}")).clone();
        assert_eq!(p.code, ErrorCode::Forbidden, "{p:?}");
        p
    };
    let p =
        forbidden(pupil.request(types::MUTE, serde_json::json!({"participantId": viewer_grant.participant_id})).await);
    assert!(p.reason.contains("mute others"), "{}", p.reason);
    assert_eq!(p.refused.as_deref(), Some("mute"));
    assert!(alive(&pupil).await);
    forbidden(pupil.request(types::REMOVE, serde_json::json!({"participantId": viewer_grant.participant_id})).await);
    assert!(alive(&pupil).await);
    forbidden(pupil.request(types::START_RECORDING, serde_json::json!({})).await);
    assert!(alive(&pupil).await);
    forbidden(pupil.request(types::ADMIT, serde_json::json!({"all": true})).await);
    // A viewer may not publish, nor share a screen.
    let offer = serde_json::json!({
        "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n",
        "tracks": [{"id": "mic", "source": "Microphone"}],
    });
    let p = forbidden(viewer.request(types::OFFER, offer).await);
    assert!(p.reason.contains("viewers"), "{}", p.reason);
    forbidden(viewer.request(types::PARTICIPANT_UPDATE, serde_json::json!({"screenSharing": true})).await);
    assert!(alive(&viewer).await);
    // Nobody is refused over REST either.
    let (status, body) = rest(&server.url, "pete", None)
        .call(reqwest::Method::POST, "/api/v1/meetings/class/recordings", None)
        .await
        .unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));

    // The host can do all of it.
    host.request(types::MUTE, serde_json::json!({"participantId": pupil_grant.participant_id})).await.unwrap();
    let muted = pupil.wait_for("being muted", WAIT, of_type(types::MUTE)).await.unwrap();
    assert_eq!(muted.payload["kind"], "audio");
    viewer
        .wait_for("the pupil shown muted", WAIT, |e| {
            e.type_ == types::PARTICIPANT_UPDATE
                && e.payload["id"] == pupil_grant.participant_id.as_str()
                && e.payload["audioMuted"] == true
        })
        .await
        .unwrap();
    let rec = host.request(types::START_RECORDING, serde_json::json!({})).await.unwrap();
    let job = rec.payload["recordingJob"].as_str().unwrap().to_owned();
    let jobs: kube::Api<switchboard_crds::RecordingJob> = env.ns.api();
    let created = jobs.get(&job).await.expect("the RecordingJob exists");
    assert_eq!(created.spec.meeting_ref.name, "class");
    host.request(types::REMOVE, serde_json::json!({"participantId": viewer_grant.participant_id})).await.unwrap();
    viewer.wait_for("removal", WAIT, of_type(types::REMOVE)).await.unwrap();
    viewer.wait_closed(WAIT).await.unwrap();
    // A removed participant cannot come back with the same session.
    let (again, _) = SignalingClient::connect(&viewer_grant.signaling_url).await.map(|c| (c, ())).unwrap();
    let e = again.request(types::JOIN, serde_json::json!({"token": viewer_grant.session_token})).await.unwrap_err();
    assert_eq!(e.refusal().unwrap().code, ErrorCode::Removed);
    env.ns.delete().await;
}

/// End for all: a participant may not; a co-host may once the meeting grants
/// `end_meeting`; then everyone (the co-host too, on another replica's connection as on
/// this one's) hears `meeting-ended` and is disconnected, the status names who ended it,
/// and nobody gets back in: not by REST, not by resuming a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_ends_the_meeting_for_everyone_and_nobody_gets_back_in() {
    let env = env("sig-end").await;
    let grant = serde_json::json!({"permissions": [{"role": "co-host", "allow": ["end_meeting"]}]});
    meeting(&env, "town", "tess", grant).await;
    assign(&env, "town", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let first = env.in_process(env.config()).await;
    let second = env.in_process(env.config()).await;
    let (host, _, _) = connect(&rest(&first.url, "tess", None), "town").await;
    let (pupil, pupil_grant, _) = connect(&rest(&second.url, "pia", None), "town").await;
    let claims = serde_json::json!({"sub": "cole", "name": "COLE", "exp": signaling_pod::auth::now_unix() + 3600,
                                    "role": "cohost", "mtg": format!("{}/town", env.ns.name)});
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_KEY.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let cohost_token = switchboard_signaling_client::Rest::new(&first.url, &token);
    let (cohost, _, joined) = connect(&cohost_token, "town").await;
    assert!(joined.permissions.contains(&switchboard_signaling_proto::Permission::EndMeeting), "{joined:?}");

    let e = pupil.request(types::END_MEETING, serde_json::json!({})).await.unwrap_err();
    assert_eq!(e.refusal().unwrap().code, ErrorCode::Forbidden);
    assert!(pupil.request(types::PING, serde_json::json!({})).await.is_ok(), "a refusal keeps the connection");

    cohost.request(types::END_MEETING, serde_json::json!({})).await.unwrap();
    for (who, c) in [("host", &host), ("pupil", &pupil), ("co-host", &cohost)] {
        let ended = c.wait_for(who, WAIT, of_type(types::MEETING_ENDED)).await.unwrap();
        assert!(ended.payload["reason"].as_str().unwrap().contains("ended the meeting"), "{ended:?}");
        c.wait_closed(WAIT).await.unwrap();
    }
    let meetings: kube::Api<switchboard_crds::Meeting> = env.ns.api();
    let m = meetings.get("town").await.unwrap();
    let request = m.status.as_ref().and_then(|s| s.end_requested.clone()).expect("endRequested");
    assert_eq!(request.by, "cole", "the user, as the identity provider names them");

    let refused = rest(&first.url, "pia", None).join("town").await.unwrap_err();
    assert!(refused.to_string().contains("ended"), "{refused}");
    let again = SignalingClient::connect(&pupil_grant.signaling_url).await.unwrap();
    let e = again.request(types::JOIN, serde_json::json!({"token": pupil_grant.session_token})).await.unwrap_err();
    assert_eq!(e.refusal().unwrap().code, ErrorCode::MeetingUnavailable);
    env.ns.delete().await;
}

/// Malformed JSON, unknown types, oversized and binary frames, floods, and forged or
/// expired tokens are refused clearly; the connection survives all but bad sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_bad_tokens_are_refused_clearly() {
    let env = env("sig-bad").await;
    meeting(&env, "open", "olga", serde_json::json!({})).await;
    assign(&env, "open", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let mut cfg = env.config();
    cfg.rate_per_second = 5.0;
    cfg.rate_burst = 10.0;
    let server = env.in_process(cfg).await;

    // REST: forged, expired and missing tokens; a session token is not a user token.
    let forged =
        signaling_pod::auth::Keys::new(b"someone-elses-key-0123456789abcdef").sign(&signaling_pod::auth::UserClaims {
            sub: "olga".into(),
            name: None,
            role: None,
            exp: signaling_pod::auth::now_unix() + 600,
            typ: None,
        });
    for (token, what) in [(forged, "forged"), (user_token("olga", None, -600), "expired"), (String::new(), "missing")] {
        let (status, body) = switchboard_signaling_client::Rest::new(&server.url, &token)
            .call(reqwest::Method::POST, "/api/v1/meetings/open/join", None)
            .await
            .unwrap();
        assert_eq!((status, body["code"].as_str()), (401, Some("unauthenticated")), "{what}: {body}");
    }
    let (status, body) = rest(&server.url, "olga", None)
        .call(
            reqwest::Method::POST,
            "/api/v1/meetings",
            Some(serde_json::json!({"title": "x", "expectedParticipants": -5})),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("participants.expected"),
        "the API server's message names the field: {body}"
    );

    let (client, grant, _) = connect(&rest(&server.url, "olga", None), "open").await;
    let (status, _) = switchboard_signaling_client::Rest::new(&server.url, &grant.session_token)
        .call(reqwest::Method::GET, "/api/v1/meetings/open", None)
        .await
        .unwrap();
    assert_eq!(status, 401, "a session token does not work as a user token");

    // WebSocket: each bad frame gets an error naming the problem; the connection lives on.
    let cases: Vec<(String, ErrorCode)> = vec![
        ("{\"type\": \"chat\", ".into(), ErrorCode::MalformedJson),
        (r#"{"type":"teleport","id":"x1"}"#.into(), ErrorCode::UnknownType),
        (r#"{"type":"chat","id":"x2","payload":{"txt":"hi"}}"#.into(), ErrorCode::InvalidPayload),
        (format!(r#"{{"type":"chat","payload":{{"text":"{}"}}}}"#, "a".repeat(70_000)), ErrorCode::TooLarge),
    ];
    for (i, (frame, code)) in cases.iter().enumerate() {
        client.send_raw(frame.clone());
        let got = client
            .wait_for(&format!("error {code:?}"), WAIT, |e| {
                e.type_ == types::ERROR && e.payload["code"] == serde_json::to_value(code).unwrap()
            })
            .await
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert!(!got.payload["reason"].as_str().unwrap().is_empty());
    }
    let err = client
        .received()
        .into_iter()
        .find(|e| e.id.as_deref() == Some("x1"))
        .expect("the error carries the request id");
    assert!(err.payload["reason"].as_str().unwrap().contains("teleport"));
    assert!(client.request(types::PING, serde_json::json!({})).await.is_ok(), "alive after bad frames");

    // A flood is rate limited, then the connection recovers.
    for _ in 0..30 {
        client.send_raw(r#"{"type":"ping"}"#);
    }
    client
        .wait_for("rate limiting", WAIT, |e| e.type_ == types::ERROR && e.payload["code"] == "rateLimited")
        .await
        .unwrap();
    switchboard_e2e::eventually("the connection recovers from rate limiting", WAIT, || async {
        client.request(types::PING, serde_json::json!({})).await.ok()
    })
    .await;

    // Forged and expired session tokens on the WebSocket.
    let m = env.meetings().get("open").await.unwrap();
    let binding = signaling_pod::auth::MeetingBinding {
        namespace: env.ns.name.clone(),
        name: "open".into(),
        uid: m.metadata.uid.unwrap(),
    };
    let now = signaling_pod::auth::now_unix();
    let keys = signaling_pod::auth::SessionKeys::new(SESSION_KEY.as_bytes(), None);
    let expired = keys.issue("p-x", &binding, "olga", "Olga", Role::Host, now - 700, now - 600);
    let forged = signaling_pod::auth::SessionKeys::new(b"someone-elses-key-0123456789abcdef", None).issue(
        "p-x",
        &binding,
        "olga",
        "Olga",
        Role::Host,
        now,
        now + 600,
    );
    let user_jwt = user_token("olga", None, 600);
    for (token, needle) in [(expired, "expired"), (forged, "refused"), (user_jwt, "not a session token")] {
        let c = SignalingClient::connect(&grant.signaling_url).await.unwrap();
        let e = c.request(types::JOIN, serde_json::json!({"token": token})).await.unwrap_err();
        let p = e.refusal().unwrap();
        assert_eq!(p.code, ErrorCode::Unauthenticated);
        assert!(p.reason.contains(needle), "{}", p.reason);
        let e = c.request(types::CHAT, serde_json::json!({"text": "sneaky"})).await.unwrap_err();
        assert_eq!(e.refusal().unwrap().code, ErrorCode::Unauthenticated, "nothing works before a good join");
    }
    let page = rest(&server.url, "olga", None).chat("open", None, 10).await.unwrap();
    assert!(page.messages.is_empty(), "nothing unauthenticated reached the chat");
    env.ns.delete().await;
}

/// A Webinar's audience is counted, not broadcast: attendees joining and leaving send
/// the other attendees no one-by-one presence, only `audience {count}` at most once a
/// second; hosts see each attendee and page through the list; attendees see the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webinars_audience_is_counted_not_broadcast_and_hosts_page_through_it() {
    let env = env("sig-audience").await;
    let spec = serde_json::json!({"mode": "Webinar", "participants": {"expected": 50, "max": 100}});
    meeting(&env, "summit", "hana", spec).await;
    assign(&env, "summit", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let server = env.in_process(env.config()).await;
    let (host, host_grant, _) = connect(&rest(&server.url, "hana", None), "summit").await;
    let host_id = host_grant.participant_id.as_str();
    let (first, first_grant, _) = connect(&rest(&server.url, "a00", None), "summit").await;

    // Thirty more attendees join at once.
    let joins = futures::future::join_all((1..=30).map(|i| {
        let url = server.url.clone();
        async move { connect(&rest(&url, &format!("a{i:02}"), None), "summit").await }
    }));
    let attendees: Vec<_> = joins.await;
    let count_of = |e: &switchboard_signaling_proto::Envelope| e.payload["count"].as_u64();
    first
        .wait_for("the audience counted", WAIT, |e| e.type_ == types::AUDIENCE && count_of(e) == Some(31))
        .await
        .unwrap();
    // The first attendee heard nothing of each of the others: only the count, coalesced.
    let heard = first.received();
    let about_others = heard
        .iter()
        .filter(|e| matches!(e.type_.as_str(), types::PARTICIPANT_UPDATE | types::PARTICIPANT_LEFT | types::HAND_RAISE))
        .filter(|e| e.from_peer_id.as_deref() != Some(first_grant.participant_id.as_str()))
        .filter(|e| e.from_peer_id.as_deref() != Some(host_id))
        .count();
    assert_eq!(about_others, 0, "{heard:?}");
    let counts = heard.iter().filter(|e| e.type_ == types::AUDIENCE).count();
    assert!(counts <= 6, "the count is told at most once a second, not per join: {counts}");
    // A late attendee sees the host and itself, and the count.
    let (_late, late_grant, late_joined) = connect(&rest(&server.url, "a31", None), "summit").await;
    let seen: Vec<&str> = late_joined.participants.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.contains(&host_id) && seen.contains(&late_grant.participant_id.as_str()), "{seen:?}");
    assert_eq!(late_joined.audience, 32);

    // The host saw each one come, and pages through all of them.
    switchboard_e2e::wait_for("the host saw every attendee", WAIT, || async {
        let ids: std::collections::HashSet<String> = host
            .received()
            .iter()
            .filter(|e| e.type_ == types::PARTICIPANT_UPDATE)
            .filter_map(|e| e.payload["id"].as_str().map(str::to_owned))
            .collect();
        ids.len() >= 32
    })
    .await;
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = host.request(types::PARTICIPANTS, serde_json::json!({"after": after, "limit": 10})).await.unwrap();
        let page: switchboard_signaling_proto::ParticipantsPage = page.payload_as().unwrap();
        assert!(page.participants.len() <= 10);
        listed.extend(page.participants.into_iter().map(|p| p.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(listed.len(), 33, "the host and 32 attendees: {listed:?}");
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted, none twice: {listed:?}");
    let refused = first.request(types::PARTICIPANTS, serde_json::json!({})).await.expect_err("attendees do not list");
    assert_eq!(refused.refusal().unwrap().code, ErrorCode::Forbidden);

    // Ten leave: the count follows, and the others hear no departures one by one.
    for (client, _, _) in attendees.iter().take(10) {
        client.request(types::LEAVE, serde_json::json!({})).await.unwrap();
    }
    first
        .wait_for("the audience counted again", WAIT, |e| e.type_ == types::AUDIENCE && count_of(e) == Some(22))
        .await
        .unwrap();
    let left = first.received().iter().filter(|e| e.type_ == types::PARTICIPANT_LEFT).count();
    assert_eq!(left, 0);
    assert!(host.received().iter().filter(|e| e.type_ == types::PARTICIPANT_LEFT).count() >= 10);
    env.ns.delete().await;
}

/// The join queue: a meeting whose joins come faster than its rate (here 5 a second,
/// 3 at once) lets them in in order, at the rate, each told its place; nobody is
/// turned away. A resumed session does not queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_beyond_the_rate_wait_their_turn_in_order_and_nobody_is_dropped() {
    let env = env("sig-joinq").await;
    meeting(&env, "rush", "hana", serde_json::json!({"participants": {"expected": 20, "max": 40}})).await;
    assign(&env, "rush", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let mut cfg = env.config();
    cfg.limits.joins_per_second = 5.0;
    cfg.limits.join_burst = 3.0;
    let server = env.in_process(cfg).await;

    // Fifteen grants first (REST is not queued), then their WebSocket joins at once.
    let mut grants = Vec::new();
    for i in 0..15 {
        grants.push(rest(&server.url, &format!("u{i:02}"), None).join("rush").await.unwrap());
    }
    let started = std::time::Instant::now();
    let joins = futures::future::join_all(grants.iter().map(|g| async move {
        let (c, joined) = SignalingClient::join(&g.signaling_url, &g.session_token).await.expect("joined, late or not");
        (c, joined, started.elapsed())
    }))
    .await;
    let mut at: Vec<std::time::Duration> = joins.iter().map(|(_, _, t)| *t).collect();
    at.sort();
    // 3 at once, then one every 200 ms: the fifteenth about 2.4 s in.
    assert!(at[2] < std::time::Duration::from_millis(1000), "the burst goes at once: {at:?}");
    assert!(at[14] >= std::time::Duration::from_millis(2000), "the rest at the rate: {at:?}");
    assert!(at[14] < std::time::Duration::from_secs(8), "{at:?}");
    // Those that waited were told where they stood; the first place told is the order
    // they were let in.
    let mut told: Vec<(u64, std::time::Duration)> = joins
        .iter()
        .filter_map(|(c, _, t)| {
            let first = c.received().into_iter().find(|e| e.type_ == types::QUEUED)?;
            Some((first.payload["position"].as_u64().unwrap(), *t))
        })
        .collect();
    assert!(told.len() >= 10, "{} were told their place", told.len());
    told.sort();
    assert!(told.windows(2).all(|w| w[0].1 <= w[1].1 + std::time::Duration::from_millis(150)), "in order: {told:?}");
    assert!(told.iter().all(|(p, _)| *p >= 1));

    // A session resuming on a new connection does not wait behind newcomers: eight more
    // rush in, and while they queue, the first session comes back at once.
    let mut late = Vec::new();
    for i in 15..23 {
        late.push(rest(&server.url, &format!("u{i:02}"), None).join("rush").await.unwrap());
    }
    let rush = tokio::spawn(async move {
        futures::future::join_all(
            late.iter().map(|g| async move { SignalingClient::join(&g.signaling_url, &g.session_token).await }),
        )
        .await
        .into_iter()
        .map(|r| r.expect("joined").0.count(types::QUEUED))
        .collect::<Vec<usize>>()
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let resumed_at = std::time::Instant::now();
    let (c, joined) = SignalingClient::join(&grants[0].signaling_url, &grants[0].session_token).await.unwrap();
    assert!(joined.resumed);
    assert_eq!(c.count(types::QUEUED), 0);
    assert!(resumed_at.elapsed() < std::time::Duration::from_millis(500), "{:?}", resumed_at.elapsed());
    let queued_late = rush.await.unwrap();
    assert!(queued_late.iter().filter(|n| **n > 0).count() >= 4, "the newcomers did queue: {queued_late:?}");
    env.ns.delete().await;
}

/// Hands: a host lowers every raised hand at once (`hand-raise {raised: false, all:
/// true}`); a participant may not. A viewer, whose presence only hosts follow, still
/// hears about its own hand; a late joiner sees no hand raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_lowers_every_hand_at_once_and_each_owner_hears_of_it() {
    let env = env("sig-hands").await;
    meeting(&env, "q-and-a", "hana", serde_json::json!({})).await;
    assign(&env, "q-and-a", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let server = env.in_process(env.config()).await;
    let (host, _, _) = connect(&rest(&server.url, "hana", None), "q-and-a").await;
    let (pete, pete_grant, _) = connect(&rest(&server.url, "pete", None), "q-and-a").await;
    let (vic, vic_grant, _) = connect(&rest(&server.url, "vic", Some(Role::Viewer)), "q-and-a").await;
    for c in [&pete, &vic] {
        c.request(types::HAND_RAISE, serde_json::json!({"raised": true})).await.unwrap();
    }
    let lower_all = serde_json::json!({"raised": false, "all": true});
    let refused = pete.request(types::HAND_RAISE, lower_all.clone()).await.expect_err("participants do not");
    assert_eq!(refused.refusal().unwrap().code, ErrorCode::Forbidden);
    let reply = host.request(types::HAND_RAISE, lower_all).await.unwrap();
    assert_eq!(reply.payload["hands"], 2);
    for (c, id) in [(&pete, &pete_grant.participant_id), (&vic, &vic_grant.participant_id)] {
        c.wait_for("its own hand lowered", WAIT, |e| {
            e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == id.as_str() && e.payload["handRaised"] == false
        })
        .await
        .unwrap();
    }
    // The viewer's hand reached the host and the viewer, not the participant. Its
    // lowering travels apart from the participant update waited for above: wait for it.
    let vic_id = vic_grant.participant_id.clone();
    for c in [&host, &vic] {
        c.wait_for("the viewer's hand lowered", WAIT, |e| {
            e.type_ == types::HAND_RAISE
                && e.payload["participantId"] == vic_id.as_str()
                && e.payload["raised"] == false
        })
        .await
        .unwrap();
    }
    let about_vic = |c: &SignalingClient| {
        c.received()
            .iter()
            .filter(|e| e.type_ == types::HAND_RAISE && e.payload["participantId"] == vic_grant.participant_id.as_str())
            .count()
    };
    assert!(about_vic(&host) >= 2 && about_vic(&vic) >= 2, "raised and lowered");
    assert_eq!(about_vic(&pete), 0, "the audience's hands are for hosts");
    let (_late, _, joined) = connect(&rest(&server.url, "lou", None), "q-and-a").await;
    assert!(joined.participants.iter().all(|p| !p.hand_raised), "{:?}", joined.participants);
    env.ns.delete().await;
}

/// Escalation: an Interactive meeting with `spec.escalation.attendeesFrom: 3` takes its
/// first three as participants and everyone after as attendees (viewers: their
/// publishing offers refused), and tells its host once. A panelist granted for the
/// meeting keeps its role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_meeting_past_its_escalation_size_takes_newcomers_as_attendees() {
    let env = env("sig-escalate").await;
    meeting(&env, "town", "hana", serde_json::json!({"escalation": {"attendeesFrom": 3}})).await;
    assign(&env, "town", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let server = env.in_process(env.config()).await;
    let (host, _, _) = connect(&rest(&server.url, "hana", None), "town").await;
    let (_p1, _, p1) = connect(&rest(&server.url, "pia", None), "town").await;
    let (_p2, _, p2) = connect(&rest(&server.url, "pete", None), "town").await;
    assert_eq!((p1.participant.role, p2.participant.role), (Role::Participant, Role::Participant));
    let (late, _, joined) = connect(&rest(&server.url, "lou", None), "town").await;
    assert_eq!(joined.participant.role, Role::Viewer, "the fourth joins as an attendee");
    let offer = serde_json::json!({"sdp": "v=0", "tracks": [{"id": "mic", "source": "Microphone"}]});
    let refused = late.request(types::OFFER, offer).await.expect_err("attendees do not publish");
    assert_eq!(refused.refusal().unwrap().code, ErrorCode::Forbidden);
    let told = host.wait_for("escalated", WAIT, |e| e.type_ == types::ESCALATED).await.unwrap();
    assert_eq!(told.payload["attendeesFrom"], 3);
    assert_eq!(told.payload["participants"], 3);
    // A panelist granted for this meeting keeps its role; the host is not told again.
    let ns = env.ns.name.clone();
    let claims = serde_json::json!({
        "sub": "pam", "exp": signaling_pod::auth::now_unix() + 3600, "meetings": {format!("{ns}/town"): "panelist"},
    });
    let (_pam, _, pam) = connect(&switchboard_signaling_client::Rest::new(&server.url, &signed(claims)), "town").await;
    assert_eq!(pam.participant.role, Role::Participant);
    let (_ned, _, ned) = connect(&rest(&server.url, "ned", None), "town").await;
    assert_eq!(ned.participant.role, Role::Viewer);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(host.count(types::ESCALATED), 1);
    env.ns.delete().await;
}

/// A chat with `toPeerId` is a direct message: across two replicas it reaches only its
/// recipient (and the sender's connections), the history shows it to those two users
/// alone (also after they reconnect), and it is refused for someone waiting, someone
/// unknown, oneself, and in a Webinar between an attendee and a panelist (who only
/// the hosts connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_message_reaches_only_its_recipient_and_only_the_two_read_it_later() {
    let env = env("sig-direct").await;
    meeting(&env, "huddle", "hana", serde_json::json!({})).await;
    assign(&env, "huddle", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let a = Replica::start(&env, "replica-a");
    let b = Replica::start(&env, "replica-b");
    let (host, host_grant, _) = connect(&rest(&a.url, "hana", None), "huddle").await;
    let (gus, gus_grant, _) = connect(&rest(&b.url, "gus", None), "huddle").await;
    let (gwen, gwen_grant, _) = connect(&rest(&a.url, "gwen", None), "huddle").await;
    for (client, who) in [(&host, &gwen_grant), (&gus, &gwen_grant)] {
        client
            .wait_for("everyone in", WAIT, |e| {
                e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == who.participant_id.as_str()
            })
            .await
            .unwrap();
    }

    // gus (replica b) writes to gwen (replica a) alone, then everyone hears a public line.
    let reply =
        gus.request_to(types::CHAT, &gwen_grant.participant_id, serde_json::json!({"text": "just you"})).await.unwrap();
    assert_eq!(reply.payload["seq"], 1);
    let got = gwen.wait_for("the direct message", WAIT, |e| e.type_ == types::CHAT).await.unwrap();
    assert_eq!(got.payload["text"], "just you");
    assert_eq!(got.payload["to"], gwen_grant.participant_id.as_str());
    assert_eq!(got.payload["toName"], "GWEN");
    assert_eq!(got.from_peer_id.as_deref(), Some(gus_grant.participant_id.as_str()));
    gus.wait_for("its own copy", WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == "just you").await.unwrap();
    host.request(types::CHAT, serde_json::json!({"text": "for all"})).await.unwrap();
    for c in [&gus, &gwen, &host] {
        c.wait_for("the public line", WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == "for all")
            .await
            .unwrap();
    }
    // The host heard the public line after the direct one was delivered: it never got that one.
    assert!(
        !host.received().iter().any(|e| e.type_ == types::CHAT && e.payload["text"] == "just you"),
        "the host received a direct message between two others"
    );

    // History: the two see both lines, the host (who may read the whole chat) only the public one.
    let texts = |page: switchboard_signaling_proto::rest::ChatPage| -> Vec<String> {
        page.messages.into_iter().map(|m| m.text).collect()
    };
    for user in ["gus", "gwen"] {
        let page = rest(&b.url, user, None).chat("huddle", None, 10).await.unwrap();
        assert_eq!(texts(page), ["for all", "just you"], "{user}'s history");
    }
    assert_eq!(texts(rest(&a.url, "hana", None).chat("huddle", None, 10).await.unwrap()), ["for all"]);
    // Pages stay in step with the sequence: a page of one before the public line is the
    // direct message for gwen, and empty for the host.
    let gwen_older = rest(&a.url, "gwen", None).chat("huddle", Some(2), 1).await.unwrap();
    assert_eq!(texts(gwen_older), ["just you"]);
    let host_older = rest(&a.url, "hana", None).chat("huddle", Some(2), 1).await.unwrap();
    assert!(host_older.messages.is_empty(), "{host_older:?}");

    // Refusals: oneself, nobody, an over-long id; nothing was stored for them.
    let refused = |r: Result<switchboard_signaling_proto::Envelope, switchboard_signaling_client::Error>| {
        r.unwrap_err().refusal().expect("a refusal").code
    };
    let me = gus_grant.participant_id.as_str();
    assert_eq!(
        refused(gus.request_to(types::CHAT, me, serde_json::json!({"text": "me"})).await),
        ErrorCode::InvalidPayload
    );
    assert_eq!(
        refused(gus.request_to(types::CHAT, "p-nobody", serde_json::json!({"text": "?"})).await),
        ErrorCode::UnknownParticipant
    );
    let long = "p".repeat(65);
    assert_eq!(
        refused(gus.request_to(types::CHAT, &long, serde_json::json!({"text": "?"})).await),
        ErrorCode::InvalidPayload
    );
    let _ = host_grant;

    // A Webinar: an attendee writes to the host, not to a panelist; the panelist cannot
    // write to the attendee.
    let spec = serde_json::json!({"mode": "Webinar", "participants": {"expected": 5, "max": 10}});
    meeting(&env, "talk", "hana", spec).await;
    assign(&env, "talk", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let (host, host_grant, _) = connect(&rest(&a.url, "hana", None), "talk").await;
    let ns = env.ns.name.clone();
    let claims = serde_json::json!({
        "sub": "pia", "exp": signaling_pod::auth::now_unix() + 3600, "meetings": {format!("{ns}/talk"): "panelist"},
    });
    let panelist_rest = switchboard_signaling_client::Rest::new(&a.url, &signed(claims));
    let (panelist, panelist_grant, joined) = connect(&panelist_rest, "talk").await;
    assert_eq!(joined.participant.role, Role::Participant);
    let (attendee, attendee_grant, joined) = connect(&rest(&b.url, "ada", None), "talk").await;
    assert_eq!(joined.participant.role, Role::Viewer);
    attendee
        .request_to(types::CHAT, &host_grant.participant_id, serde_json::json!({"text": "a question"}))
        .await
        .unwrap();
    host.wait_for("the attendee's question", WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == "a question")
        .await
        .unwrap();
    let to_panelist =
        attendee.request_to(types::CHAT, &panelist_grant.participant_id, serde_json::json!({"text": "hi"}));
    assert_eq!(refused(to_panelist.await), ErrorCode::UnknownParticipant);
    let to_attendee =
        panelist.request_to(types::CHAT, &attendee_grant.participant_id, serde_json::json!({"text": "hi"}));
    assert_eq!(refused(to_attendee.await), ErrorCode::UnknownParticipant);
    env.ns.delete().await;
}

/// An uncompressed P-256 point's shape (signaling checks only the shape), base64url.
fn public_key(seed: u8) -> String {
    use base64::Engine as _;
    let mut raw = [seed; 65];
    raw[0] = 0x04;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An E2EE Webinar's key exchange through two replicas (`docs/e2ee.md`): a client that
/// does not implement the scheme is refused at `join`; public keys reach exactly those
/// who encrypt to or decrypt from their owner (a panelist's everyone, an attendee's the
/// panelists and host, never another attendee); a wrapped media key reaches its one
/// recipient, is never stored, and unknown recipients are named back; an attendee
/// cannot send keys nor ask another attendee for one; an attendee's leave reaches the
/// publishers (who must rekey); shapes, floods of announcements and key churn are
/// refused; a meeting without E2EE refuses the messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_e2ee_meetings_keys_reach_only_the_members_who_need_them() {
    let env = env("sig-e2ee").await;
    let spec = serde_json::json!({"mode": "Webinar", "e2ee": true, "participants": {"expected": 5, "max": 10}});
    meeting(&env, "vault", "hana", spec).await;
    assign(&env, "vault", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let a = Replica::start(&env, "replica-a");
    let b = Replica::start(&env, "replica-b");
    let refused = |r: Result<switchboard_signaling_proto::Envelope, switchboard_signaling_client::Error>| {
        r.unwrap_err().refusal().expect("a refusal").code
    };

    // Without saying it implements the scheme, a client is refused before it is in.
    let grant = rest(&a.url, "hana", None).join("vault").await.unwrap();
    assert!(grant.e2ee, "the REST join tells the client the meeting is encrypted");
    let Err(plain) = SignalingClient::join(&grant.signaling_url, &grant.session_token).await else {
        panic!("a join without e2ee was let into an E2EE meeting")
    };
    assert_eq!(plain.refusal().expect("refused").code, ErrorCode::E2eeUnsupported, "{plain}");
    let info = rest(&a.url, "hana", None).meeting("vault").await.unwrap();
    assert!(info.e2ee);
    // A scheme this server does not know is refused alike; one that is no scheme number is malformed.
    for (scheme, code) in
        [(serde_json::json!(2), ErrorCode::E2eeUnsupported), (serde_json::json!(300), ErrorCode::InvalidPayload)]
    {
        let c = SignalingClient::connect(&grant.signaling_url).await.unwrap();
        let join = serde_json::json!({"token": grant.session_token, "e2ee": scheme});
        assert_eq!(refused(c.request(types::JOIN, join).await), code, "e2ee: {scheme}");
    }

    let (host, host_grant, joined) = connect_e2ee(&rest(&a.url, "hana", None), "vault").await;
    assert!(joined.e2ee);
    let ns = env.ns.name.clone();
    let claims = serde_json::json!({
        "sub": "pia", "exp": signaling_pod::auth::now_unix() + 3600, "meetings": {format!("{ns}/vault"): "panelist"},
    });
    let (panelist, panelist_grant, _) =
        connect_e2ee(&switchboard_signaling_client::Rest::new(&b.url, &signed(claims)), "vault").await;
    let (ada, ada_grant, joined) = connect_e2ee(&rest(&b.url, "ada", None), "vault").await;
    assert_eq!(joined.participant.role, Role::Viewer);
    let (abe, abe_grant, _) = connect_e2ee(&rest(&a.url, "abe", None), "vault").await;
    let (host_id, panelist_id) = (host_grant.participant_id.as_str(), panelist_grant.participant_id.as_str());
    let (ada_id, abe_id) = (ada_grant.participant_id.as_str(), abe_grant.participant_id.as_str());

    let members = |e: &switchboard_signaling_proto::Envelope| -> Vec<String> {
        let mut ids: Vec<String> = e.payload["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["participantId"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let hello = |seed: u8| serde_json::json!({ "publicKey": public_key(seed) });
    let sorted = |mut v: Vec<&str>| -> Vec<String> {
        v.sort();
        v.into_iter().map(String::from).collect()
    };
    let r = host.request(types::E2EE_HELLO, hello(1)).await.unwrap();
    assert_eq!(
        (r.type_.as_str(), members(&r).len(), r.payload["done"].as_bool()),
        (types::E2EE_MEMBERS, 0, Some(true))
    );
    let r = panelist.request(types::E2EE_HELLO, hello(2)).await.unwrap();
    assert_eq!(members(&r), sorted(vec![host_id]));
    let r = ada.request(types::E2EE_HELLO, hello(3)).await.unwrap();
    assert_eq!(members(&r), sorted(vec![host_id, panelist_id]), "an attendee learns the publishers' keys only");
    let r = abe.request(types::E2EE_HELLO, hello(4)).await.unwrap();
    assert_eq!(members(&r), sorted(vec![host_id, panelist_id]), "not the other attendee's");
    let hello_from = |from: &str| {
        let from = from.to_owned();
        move |e: &switchboard_signaling_proto::Envelope| {
            e.type_ == types::E2EE_HELLO && e.from_peer_id.as_deref() == Some(from.as_str())
        }
    };
    for c in [&host, &panelist] {
        for who in [ada_id, abe_id] {
            c.wait_for("an attendee's key", WAIT, hello_from(who)).await.unwrap();
        }
    }
    for c in [&ada, &abe] {
        c.wait_for("the panelist's key", WAIT, hello_from(panelist_id)).await.unwrap();
    }
    // The panelist's key request to the host, and a ping round trip to let anything stray arrive.
    panelist.request_to(types::E2EE_HELLO, host_id, hello(2)).await.unwrap();
    host.wait_for("the key request", WAIT, hello_from(panelist_id)).await.unwrap();
    for c in [&ada, &abe] {
        c.request(types::PING, serde_json::json!({})).await.unwrap();
    }
    assert!(!ada.received().iter().any(hello_from(abe_id)), "an attendee heard another attendee's key");
    assert!(!abe.received().iter().any(hello_from(ada_id)), "an attendee heard another attendee's key");

    // The panelist's media key: one wrapped copy each for the host and ada; abe gets
    // nothing of it, an unknown id is named back.
    let wrapped = b64(&[7u8; 48]);
    let entry = |to: &str| serde_json::json!({ "to": to, "iv": b64(&[9u8; 12]), "key": wrapped });
    let r = panelist
        .request(
            types::E2EE_KEY,
            serde_json::json!({ "kid": 256, "entries": [entry(host_id), entry(ada_id), entry("p-nobody")] }),
        )
        .await
        .unwrap();
    assert_eq!(r.payload["delivered"], 2, "{r:?}");
    assert_eq!(r.payload["unknown"], serde_json::json!(["p-nobody"]));
    for c in [&host, &ada] {
        let got = c.wait_for("the wrapped key", WAIT, of_type(types::E2EE_KEY)).await.unwrap();
        assert_eq!(got.from_peer_id.as_deref(), Some(panelist_id));
        assert_eq!(got.payload, serde_json::json!({ "kid": 256, "iv": b64(&[9u8; 12]), "key": wrapped }));
    }
    abe.request(types::PING, serde_json::json!({})).await.unwrap();
    assert_eq!(abe.count(types::E2EE_KEY), 0, "a key reached someone it was not for");
    // Signaling passes wrapped keys on and keeps none of them.
    let mut redis =
        redis::Client::open(env.redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut redis).await.unwrap();
    for k in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&k).query_async(&mut redis).await.unwrap_or_default();
        assert!(!String::from_utf8_lossy(&dump).contains(&wrapped), "Redis key {k} holds a wrapped media key");
    }

    // Refusals: an attendee sends no keys and asks no attendee; shapes are checked.
    assert_eq!(
        refused(ada.request(types::E2EE_KEY, serde_json::json!({ "kid": 0, "entries": [entry(host_id)] })).await),
        ErrorCode::Forbidden
    );
    assert_eq!(refused(ada.request_to(types::E2EE_HELLO, abe_id, hello(3)).await), ErrorCode::UnknownParticipant);
    assert_eq!(
        refused(ada.request_to(types::E2EE_HELLO, panelist_id, hello(9)).await),
        ErrorCode::InvalidPayload,
        "a request carries the key announced"
    );
    ada.request_to(types::E2EE_HELLO, panelist_id, hello(3)).await.expect("an attendee asks a panelist for its key");
    panelist
        .wait_for("ada's request", WAIT, |e| hello_from(ada_id)(e) && e.payload["publicKey"] == public_key(3))
        .await
        .unwrap();
    let bad_shapes = [
        (types::E2EE_HELLO, serde_json::json!({ "publicKey": b64(&[5u8; 65]) })),
        (types::E2EE_HELLO, serde_json::json!({ "publicKey": b64(&[4u8; 33]) })),
        (types::E2EE_HELLO, serde_json::json!({ "publicKey": public_key(1), "extra": 1 })),
        (types::E2EE_KEY, serde_json::json!({ "kid": 1, "entries": [] })),
        (types::E2EE_KEY, serde_json::json!({ "kid": 1, "entries": [entry(host_id), entry(host_id)] })),
        (types::E2EE_KEY, serde_json::json!({ "kid": 1u64 << 53, "entries": [entry(host_id)] })),
        (
            types::E2EE_KEY,
            serde_json::json!({ "kid": 1, "entries": [{ "to": host_id, "iv": b64(&[1u8; 16]), "key": wrapped }] }),
        ),
        (
            types::E2EE_KEY,
            serde_json::json!({ "kid": 1, "entries": [{ "to": "p\u{1}x", "iv": b64(&[1u8; 12]), "key": wrapped }] }),
        ),
        (
            types::E2EE_KEY,
            serde_json::json!({ "kid": 1, "entries": (0..201).map(|i| entry(&format!("p-{i}"))).collect::<Vec<_>>() }),
        ),
    ];
    for (type_, payload) in bad_shapes {
        assert_eq!(refused(panelist.request(type_, payload.clone()).await), ErrorCode::InvalidPayload, "{payload}");
    }
    // Announcements: at most one a second, at most four keys a session.
    assert_eq!(refused(abe.request(types::E2EE_HELLO, hello(4)).await), ErrorCode::RateLimited);
    for seed in [11, 12, 13] {
        tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
        abe.request(types::E2EE_HELLO, hello(seed)).await.expect("a new key, within the four");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    assert_eq!(refused(abe.request(types::E2EE_HELLO, hello(14)).await), ErrorCode::RateLimited);
    tokio::time::sleep(std::time::Duration::from_millis(1050)).await;
    abe.request(types::E2EE_HELLO, hello(13)).await.expect("a key already announced may be announced again");

    // An attendee leaves: the publishers hear it (they encrypted to it); the other attendee does not.
    ada.request(types::LEAVE, serde_json::json!({})).await.unwrap();
    for c in [&host, &panelist] {
        c.wait_for("the attendee left", WAIT, |e| {
            e.type_ == types::PARTICIPANT_LEFT && e.payload["participantId"] == ada_id
        })
        .await
        .unwrap();
    }
    abe.request(types::PING, serde_json::json!({})).await.unwrap();
    assert!(
        !abe.received().iter().any(|e| e.type_ == types::PARTICIPANT_LEFT),
        "attendees do not see each other leave"
    );
    // ada is gone: a key to it is unknown.
    let r =
        panelist.request(types::E2EE_KEY, serde_json::json!({ "kid": 512, "entries": [entry(ada_id)] })).await.unwrap();
    assert_eq!((r.payload["delivered"].as_u64(), r.payload["unknown"].clone()), (Some(0), serde_json::json!([ada_id])));

    // The REST facade creates encrypted meetings too.
    let created =
        rest(&a.url, "hana", None).create_meeting(serde_json::json!({"title": "Board", "e2ee": true})).await.unwrap();
    assert!(created.e2ee, "{created:?}");
    // Breakout rooms are not made through this route: a body naming a parent is refused.
    let room = rest(&a.url, "hana", None)
        .create_meeting(serde_json::json!({"title": "Side room", "parentRef": {"name": "vault"}}))
        .await
        .unwrap_err();
    assert_eq!(room.status(), Some(400), "{room}");

    // A meeting without E2EE has no key exchange.
    meeting(&env, "open-plan", "hana", serde_json::json!({})).await;
    assign(&env, "open-plan", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let (plain, _, joined) = connect(&rest(&a.url, "hana", None), "open-plan").await;
    assert!(!joined.e2ee);
    assert_eq!(refused(plain.request(types::E2EE_HELLO, hello(1)).await), ErrorCode::InvalidPayload);
    env.ns.delete().await;
}
