//! Access control in signaling (issue #26), attack by attack, against the signaling-pod
//! process with a real Redis and the local control plane (and real SFUs where media is
//! involved: in this process, their API credential handed to the signaling process).
//! Each test asserts the refusal and that the meeting and its other members live on.

mod common;

use std::time::Duration;

use common::*;
use futures::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use switchboard_sfu_api::RoomStatus;
use switchboard_sfu_client::auth::TOKEN_ENV;
use switchboard_sfu_client::{JoinOptions, NetworkOptions, Publish};
use switchboard_signaling_client::{MediaSession, Rest, SignalingClient};
use switchboard_signaling_proto::{Envelope, ErrorCode, ErrorPayload, Role, types};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "switchboard";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

fn key_file(name: &str) -> String {
    std::fs::read_to_string(format!("{KEYS}/{name}")).unwrap()
}

fn exp(secs: i64) -> u64 {
    (signaling_pod::auth::now_unix() as i64 + secs) as u64
}

/// Claims an identity provider with issuer and audience would sign.
fn claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({"sub": sub, "name": sub.to_uppercase(), "exp": exp(3600), "iss": ISSUER, "aud": AUDIENCE});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn rs256(kid: &str, key: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_rsa_pem(key_file(key).as_bytes()).unwrap()).unwrap()
}

fn es256(kid: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_ec_pem(key_file("ec-a.pem").as_bytes()).unwrap()).unwrap()
}

fn unsigned(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(claims))
}

async fn call(url: &str, token: &str, method: Method, path: &str) -> (u16, Value) {
    let (status, body) = Rest::new(url, token).call(method, path, None).await.unwrap();
    (status, body)
}

/// The error reply a request gets.
async fn refused(c: &SignalingClient, type_: &str, payload: Value) -> ErrorPayload {
    let e = c.request(type_, payload).await.expect_err("refused");
    e.refusal().unwrap_or_else(|| panic!("an error reply to `{type_}`, got {e}")).clone()
}

async fn alive(c: &SignalingClient) {
    let pong = c.request(types::PING, json!({})).await.expect("the connection lives on");
    assert_eq!(pong.type_, types::PONG);
}

/// `to` hears `text` in the chat (so the meeting lives on).
async fn chat_reaches(from: &SignalingClient, to: &SignalingClient, text: &str) {
    from.request(types::CHAT, json!({ "text": text })).await.expect("chat");
    to.wait_for(&format!("chat {text:?}"), WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == text)
        .await
        .unwrap();
}

fn ws_url(url: &str) -> String {
    format!("{}/ws", url.replacen("http", "ws", 1))
}

fn loopback(publish: Vec<Publish>) -> JoinOptions {
    JoinOptions { publish, net: NetworkOptions { loopback_only: true, ..Default::default() }, ..Default::default() }
}

async fn room(sfu: &str, env: &TestEnv, meeting: &str) -> RoomStatus {
    let api = switchboard_sfu_client::SfuApi::new(sfu.to_owned());
    let room = switchboard_crds::meeting::room_name(&env.ns.name, meeting);
    api.get::<RoomStatus>(&api.url(switchboard_sfu_api::paths::ROOM, &room, "", "")).await.unwrap_or(RoomStatus {
        room,
        participants: vec![],
        tracks: vec![],
        subscriptions: 0,
        audio: Default::default(),
    })
}

/// Forged user tokens — wrong key, wrong issuer or audience, expired, `alg: none`, an
/// HMAC keyed with the RSA public key, unknown or mismatched keys — get 401; tokens of
/// the identity provider's JWKS (RS256, ES256) and HS256 with the shared key pass, and
/// a rotated JWKS file is followed. The meeting and its host carry on throughout. A
/// replica with a short key, or a JWKS without issuer and audience, does not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_user_tokens_are_refused_and_weak_settings_stop_the_start() {
    let env = env("sec-tokens").await;
    meeting(&env, "standup", "hana", json!({})).await;
    assign(&env, "standup", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let jwks = std::env::temp_dir().join(format!("{}-jwks.json", env.ns.name));
    std::fs::write(&jwks, key_file("jwks-a.json")).unwrap();
    let jwks_path = jwks.to_str().unwrap();
    let idp = [
        ("SIGNALING_USER_JWKS_PATH", jwks_path),
        ("SIGNALING_USER_ISSUER", ISSUER),
        ("SIGNALING_USER_AUDIENCE", AUDIENCE),
        ("SIGNALING_USER_JWKS_REFRESH_SECONDS", "1"),
    ];
    let server = Replica::start_with(&env, &env.ns.name, "tokens", &idp);

    let (host, _, joined) = connect(&Rest::new(&server.url, &signed(claims("hana", json!({})))), "standup").await;
    assert_eq!(joined.participant.role, Role::Host);
    let (amy, _, _) =
        connect(&Rest::new(&server.url, &rs256("rsa-a", "rsa-a.pem", &claims("amy", json!({})))), "standup").await;
    let (_eve, _, _) = connect(&Rest::new(&server.url, &es256("ec-a", &claims("eve", json!({})))), "standup").await;

    let other_key = signaling_pod::auth::Keys::new(b"someone-elses-key-0123456789abcdef");
    let forged = [
        ("HS256 with another key", other_key.sign(&claims("hana", json!({})))),
        ("another issuer", signed(claims("hana", json!({"iss": "https://evil.example"})))),
        ("another audience", signed(claims("hana", json!({"aud": "another-app"})))),
        ("no issuer or audience", user_token("hana", None, 600)),
        ("expired", signed(claims("hana", json!({"exp": exp(-600)})))),
        ("not yet valid", signed(claims("hana", json!({"nbf": exp(600)})))),
        ("alg none", unsigned(&claims("hana", json!({})))),
        (
            "HS256 keyed with the RSA public key",
            signaling_pod::auth::Keys::new(key_file("rsa-a.pub.pem").as_bytes()).sign(&claims("hana", json!({}))),
        ),
        ("RS256 with a key not in the JWKS", rs256("rsa-b", "rsa-b.pem", &claims("hana", json!({})))),
        ("RS256 under a known kid, signed by another key", rs256("rsa-a", "rsa-b.pem", &claims("hana", json!({})))),
        ("ES256 under an RSA kid", es256("rsa-a", &claims("hana", json!({})))),
        ("garbage", "not.a.jwt".into()),
    ];
    for (what, token) in &forged {
        for (method, path) in [
            (Method::POST, "/api/v1/meetings/standup/join"),
            (Method::GET, "/api/v1/meetings/standup"),
            (Method::GET, "/api/v1/meetings/standup/chat"),
            (Method::POST, "/api/v1/meetings/standup/recordings"),
            (Method::POST, "/api/v1/meetings/standup/recordings/stop"),
        ] {
            let (status, body) = call(&server.url, token, method, path).await;
            assert_eq!((status, body["code"].as_str()), (401, Some("unauthenticated")), "{what}, {path}: {body}");
        }
    }
    let jobs: kube::Api<switchboard_crds::RecordingJob> = env.ns.api();
    assert!(jobs.list(&Default::default()).await.unwrap().items.is_empty(), "no forged token started a recording");
    alive(&host).await;
    chat_reaches(&host, &amy, "still here after the forgeries").await;

    // The identity provider rotates its RSA key: the new one is accepted, the old one
    // no longer; members joined with the old key stay.
    std::fs::write(&jwks, key_file("jwks-b.json")).unwrap();
    let new_key = rs256("rsa-b", "rsa-b.pem", &claims("ned", json!({})));
    switchboard_e2e::wait_for("the rotated key accepted", WAIT, || async {
        call(&server.url, &new_key, Method::POST, "/api/v1/meetings/standup/join").await.0 == 200
    })
    .await;
    let old_key = rs256("rsa-a", "rsa-a.pem", &claims("amy", json!({})));
    switchboard_e2e::wait_for("the retired key refused", WAIT, || async {
        call(&server.url, &old_key, Method::POST, "/api/v1/meetings/standup/join").await.0 == 401
    })
    .await;
    chat_reaches(&amy, &host, "rotation did not drop me").await;

    // Weak or incomplete settings stop the start, naming the variable.
    let short = "only-31-bytes-long-0123456789ab";
    for (vars, needle) in [
        (vec![("SIGNALING_JWT_KEY", short)], "SIGNALING_JWT_KEY is 31 bytes"),
        (vec![("SIGNALING_SESSION_KEY", short)], "SIGNALING_SESSION_KEY is 31 bytes"),
        (vec![("SIGNALING_SESSION_KEY", JWT_KEY)], "SIGNALING_SESSION_KEY must differ"),
        (vec![("SIGNALING_TURN_URLS", "turn:t:3478"), ("SIGNALING_TURN_SECRET", "short")], "SIGNALING_TURN_SECRET"),
        (vec![("SIGNALING_USER_JWKS_PATH", jwks_path)], "SIGNALING_USER_ISSUER is required"),
        (
            vec![
                ("SIGNALING_USER_JWKS_PATH", "/nonexistent/jwks.json"),
                ("SIGNALING_USER_ISSUER", ISSUER),
                ("SIGNALING_USER_AUDIENCE", AUDIENCE),
            ],
            "SIGNALING_USER_JWKS_PATH",
        ),
    ] {
        let (status, stderr) = Replica::refused(&env, &vars);
        assert!(!status.success(), "{vars:?}");
        assert!(stderr.contains(needle), "{vars:?}: {stderr}");
    }
    alive(&host).await;
    let _ = std::fs::remove_file(jwks);
    env.ns.delete().await;
}

/// A session token works only for the namespace and the meeting (its UID) it was
/// issued for: replayed on a replica of another namespace, or after the meeting was
/// deleted and created again under its name, it is refused; the new meeting starts
/// from nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_are_bound_to_their_namespace_and_meeting() {
    let env = env("sec-bind").await;
    let other = switchboard_e2e::TestNamespace::create(&env.client, "sec-bind-b").await;
    meeting(&env, "standup", "hana", json!({})).await;
    assign(&env, "standup", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    // The same meeting name in another namespace, served by another replica with the same keys.
    let elsewhere: switchboard_crds::meeting::Meeting = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": "standup"},
        "spec": {"title": "standup", "host": "bob", "participants": {"expected": 10}},
    }))
    .unwrap();
    other.api::<switchboard_crds::meeting::Meeting>().create(&Default::default(), &elsewhere).await.unwrap();
    let here = Replica::start(&env, "here");
    let there = Replica::start_with(&env, &other.name, "there", &[]);

    let (alice, alice_grant, _) = connect(&rest(&here.url, "hana", None), "standup").await;
    let (amy, _, _) = connect(&rest(&here.url, "amy", None), "standup").await;
    chat_reaches(&alice, &amy, "before the replay").await;
    let (bob, _, _) = connect(&rest(&there.url, "bob", None), "standup").await;

    // Replayed in the other namespace.
    let replay = SignalingClient::connect(&ws_url(&there.url)).await.unwrap();
    let e = refused(&replay, types::JOIN, json!({"token": alice_grant.session_token})).await;
    assert_eq!(e.code, ErrorCode::Unauthenticated);
    assert!(e.reason.contains(&format!("namespace `{}`", env.ns.name)), "{}", e.reason);
    alive(&bob).await;
    alive(&alice).await;

    // The meeting is deleted and created again under its name.
    env.meetings().delete("standup", &Default::default()).await.unwrap();
    alice.wait_closed(WAIT).await.expect("the old meeting's connections close");
    amy.wait_closed(WAIT).await.unwrap();
    switchboard_e2e::wait_for("the old meeting gone", WAIT, || async {
        env.meetings().get_opt("standup").await.unwrap().is_none()
    })
    .await;
    meeting(&env, "standup", "hana", json!({})).await;
    assign(&env, "standup", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let e = switchboard_e2e::eventually("the old token refused for the new meeting", WAIT, || async {
        let c = SignalingClient::connect(&ws_url(&here.url)).await.ok()?;
        let e = refused(&c, types::JOIN, json!({"token": alice_grant.session_token})).await;
        e.reason.contains("created again").then_some(e)
    })
    .await;
    assert_eq!(e.code, ErrorCode::Unauthenticated);
    // Joining afresh works, and nothing of the old meeting is left.
    let (alice2, _, joined) = connect(&rest(&here.url, "hana", None), "standup").await;
    assert_eq!(joined.participants.len(), 1, "nobody of the old meeting: {:?}", joined.participants);
    let page = rest(&here.url, "hana", None).chat("standup", None, 10).await.unwrap();
    assert!(page.messages.is_empty(), "the old meeting's chat is not the new one's: {:?}", page.messages);
    alive(&alice2).await;
    alive(&bob).await;
    other.delete().await;
    env.ns.delete().await;
}

/// `role: host` without a meeting makes nobody host; a role scoped to another meeting
/// does not count here; a role scoped to this meeting does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_claim_counts_only_for_the_meeting_it_names() {
    let env = env("sec-roles").await;
    let ns = env.ns.name.clone();
    meeting(&env, "standup", "hana", json!({"waitingRoom": true})).await;
    meeting(&env, "retro", "rita", json!({})).await;
    for m in ["standup", "retro"] {
        assign(&env, m, &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    }
    let server = Replica::start(&env, "roles");
    let as_user = |sub: &str, extra: Value| Rest::new(&server.url, &signed(claims(sub, extra)));

    let (host, _, _) = connect(&rest(&server.url, "hana", Some(Role::Viewer)), "standup").await;
    // The global claim is not a host's, so Mallory waits like anyone.
    let mallory_rest = as_user("mallory", json!({"role": "host", "meetings": {format!("{ns}/retro"): "host"}}));
    let (mallory, grant, joined) = connect(&mallory_rest, "standup").await;
    assert_eq!((grant.role, joined.participant.role), (Role::Participant, Role::Participant));
    assert!(!joined.participant.admitted, "not a host: in the waiting room");
    let e = refused(&mallory, types::ADMIT, json!({"all": true})).await;
    assert!(matches!(e.code, ErrorCode::NotAdmitted | ErrorCode::Forbidden), "{e:?}");
    host.request(types::ADMIT, json!({"participantId": grant.participant_id})).await.unwrap();
    mallory.wait_for("admission", WAIT, |e| e.type_ == types::ADMITTED).await.unwrap();
    let host_id = host.received().iter().find(|e| e.type_ == types::JOINED).unwrap().payload["participant"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (t, payload) in [
        (types::MUTE, json!({"participantId": host_id})),
        (types::REMOVE, json!({"participantId": host_id})),
        (types::ADMIT, json!({"all": true})),
        (types::START_RECORDING, json!({})),
        (types::STOP_RECORDING, json!({})),
        (types::END_MEETING, json!({})),
        (types::OPEN_BREAKOUTS, json!({"rooms": 2})),
        (types::BREAKOUT_MOVE, json!({"participantId": host_id, "room": 0})),
        (types::BREAKOUT_BROADCAST, json!({"text": "from mallory"})),
        (types::CLOSE_BREAKOUTS, json!({})),
    ] {
        assert_eq!(refused(&mallory, t, payload).await.code, ErrorCode::Forbidden, "{t}");
    }
    let (status, body) = mallory_rest.call(Method::POST, "/api/v1/meetings/standup/recordings", None).await.unwrap();
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    // Breakout rooms over REST are the hosts' too, and a forged token gets nowhere.
    for (path, body) in [
        ("/api/v1/meetings/standup/breakouts", json!({"rooms": 2})),
        ("/api/v1/meetings/standup/breakouts/move", json!({"participantId": host_id})),
        ("/api/v1/meetings/standup/breakouts/broadcast", json!({"text": "x"})),
        ("/api/v1/meetings/standup/breakouts/close", json!({})),
    ] {
        let (status, reply) = mallory_rest.call(Method::POST, path, Some(body.clone())).await.unwrap();
        assert_eq!((status, reply["code"].as_str()), (403, Some("forbidden")), "{path}: {reply}");
        let other_key = signaling_pod::auth::Keys::new(b"someone-elses-key-0123456789abcdef");
        let forged = Rest::new(&server.url, &other_key.sign(&claims("hana", json!({}))));
        let (status, _) = forged.call(Method::POST, path, Some(body)).await.unwrap();
        assert_eq!(status, 401, "{path} with a forged token");
    }
    let (status, _) = mallory_rest.call(Method::GET, "/api/v1/meetings/standup/breakouts", None).await.unwrap();
    assert_eq!(status, 403);
    // Mallory's scoped grant is for the retro: there she is host.
    let (_, grant, _) = connect(&mallory_rest, "retro").await;
    assert_eq!(grant.role, Role::Host);
    // A co-host grant for this meeting, as `role` + `mtg`, counts.
    let cora_rest = as_user("cora", json!({"role": "cohost", "mtg": format!("{ns}/standup")}));
    let (cora, grant, joined) = connect(&cora_rest, "standup").await;
    assert_eq!(grant.role, Role::CoHost);
    assert!(joined.participant.admitted);
    cora.request(types::MUTE, json!({"participantId": host_id, "kind": "video"})).await.unwrap();
    // Ending the meeting for everyone is the host's alone unless the meeting grants it.
    assert_eq!(refused(&cora, types::END_MEETING, json!({})).await.code, ErrorCode::Forbidden);
    // The meeting's host stays host whatever the global claim (viewer) said.
    assert!(host.received().iter().any(|e| e.type_ == types::JOINED && e.payload["participant"]["role"] == "host"));
    alive(&host).await;
    chat_reaches(&mallory, &host, "still just a participant").await;
    env.ns.delete().await;
}

/// A waiting guest hears nothing of the meeting but its own admission state; it and an
/// outsider get 403 for the meeting's details and chat; admitted, the guest gets all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_guests_and_outsiders_learn_nothing_of_the_meeting() {
    let env = env("sec-lobby").await;
    meeting(&env, "lobby", "hana", json!({"waitingRoom": true, "title": "Secret project"})).await;
    assign(&env, "lobby", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let server = Replica::start(&env, "lobby");
    let (host, _, _) = connect(&rest(&server.url, "hana", None), "lobby").await;
    let (amy, amy_grant, _) = connect(&rest(&server.url, "amy", None), "lobby").await;
    host.request(types::ADMIT, json!({"participantId": amy_grant.participant_id})).await.unwrap();
    amy.wait_for("admission", WAIT, |e| e.type_ == types::ADMITTED).await.unwrap();

    let (gus, gus_grant, joined) = connect(&rest(&server.url, "gus", None), "lobby").await;
    assert!(!joined.participant.admitted);
    assert!(joined.title.is_empty() && joined.participants.is_empty(), "nothing in `joined`: {joined:?}");
    gus.wait_for("waiting", WAIT, |e| e.type_ == types::WAITING).await.unwrap();
    host.wait_for("the waiting guest", WAIT, |e| {
        e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == gus_grant.participant_id.as_str()
    })
    .await
    .unwrap();

    // The meeting goes on: chat, state, hands, reactions, someone leaving.
    let (leaver, leaver_grant, _) = connect(&rest(&server.url, "lea", Some(Role::Viewer)), "lobby").await;
    host.request(types::ADMIT, json!({"participantId": leaver_grant.participant_id})).await.unwrap();
    leaver.wait_for("admission", WAIT, |e| e.type_ == types::ADMITTED).await.unwrap();
    host.request(types::CHAT, json!({"text": "the secret plan"})).await.unwrap();
    host.request(types::PARTICIPANT_UPDATE, json!({"videoMuted": true})).await.unwrap();
    amy.send(Envelope::new(types::HAND_RAISE, json!({"raised": true})));
    amy.send(Envelope::new(types::REACTION, json!({"emoji": "🎉"})));
    leaver.request(types::LEAVE, json!({})).await.ok();
    amy.request(types::CHAT, json!({"text": "last word"})).await.unwrap();
    host.wait_for("amy's last word", WAIT, |e| e.type_ == types::CHAT && e.payload["text"] == "last word")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heard: Vec<String> = gus.received().into_iter().map(|e| e.type_).collect();
    assert!(
        heard.iter().all(|t| [types::JOINED, types::WAITING].contains(&t.as_str())),
        "a waiting guest heard: {heard:?}"
    );
    let e = refused(&gus, types::CHAT, json!({"text": "let me in"})).await;
    assert_eq!(e.code, ErrorCode::NotAdmitted);

    // REST: the waiting guest and an outsider are refused; members and the host read.
    for (who, role) in [("gus", None), ("olaf", None), ("olaf", Some(Role::Viewer))] {
        for path in ["/api/v1/meetings/lobby", "/api/v1/meetings/lobby/chat"] {
            let (status, body) = call(&server.url, &user_token(who, role, 600), Method::GET, path).await;
            assert_eq!((status, body["code"].as_str()), (403, Some("notAMember")), "{who} {path}: {body}");
        }
    }
    let (status, _) =
        call(&server.url, &user_token("olaf", None, 600), Method::GET, "/api/v1/meetings/nope/chat").await;
    assert_eq!(status, 404);
    let page = rest(&server.url, "amy", None).chat("lobby", None, 10).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(rest(&server.url, "hana", None).meeting("lobby").await.unwrap().title, "Secret project");

    // Admitted, the guest hears the meeting and may read it.
    host.request(types::ADMIT, json!({"participantId": gus_grant.participant_id})).await.unwrap();
    let admitted = gus.wait_for("admission", WAIT, |e| e.type_ == types::ADMITTED).await.unwrap();
    assert_eq!(admitted.payload["title"], "Secret project");
    assert!(admitted.payload["participants"].as_array().unwrap().len() >= 3);
    chat_reaches(&amy, &gus, "welcome").await;
    assert_eq!(rest(&server.url, "gus", None).chat("lobby", None, 10).await.unwrap().messages.len(), 3);
    alive(&host).await;
    env.ns.delete().await;
}

/// A removed user is removed with all its participants: a connection whose queue is
/// full (its client stopped reading) is closed anyway, and the user's new REST join
/// and old session tokens are refused. The others carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_user_stays_out_even_when_its_queue_is_full() {
    let env = env("sec-remove").await;
    meeting(&env, "flood", "hana", json!({})).await;
    assign(&env, "flood", &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    let server = Replica::start_with(
        &env,
        &env.ns.name,
        "flood",
        &[("SIGNALING_RATE_PER_SECOND", "100000"), ("SIGNALING_RATE_BURST", "100000")],
    );
    let (host, _, _) = connect(&rest(&server.url, "hana", None), "flood").await;
    let (mia, _, _) = connect(&rest(&server.url, "mia", None), "flood").await;
    // Fred floods the chat (on his own connection, so the host's requests do not wait behind it).
    let (fred, _, _) = connect(&rest(&server.url, "fred", None), "flood").await;
    // Vince joins twice: a client that stops reading, and an ordinary one.
    let vince = rest(&server.url, "vince", None);
    let stuck_grant = vince.join("flood").await.unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(&server.url)).await.unwrap();
    let (mut stuck_tx, mut stuck_rx) = ws.split();
    let join = Envelope::new(types::JOIN, json!({"token": stuck_grant.session_token}));
    stuck_tx.send(tokio_tungstenite::tungstenite::Message::text(join.to_json())).await.unwrap();
    host.wait_for("the stuck client joined", WAIT, |e| {
        e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == stuck_grant.participant_id.as_str()
    })
    .await
    .unwrap();
    let (vince2, vince2_grant, _) = connect(&vince, "flood").await;

    // Fill the stuck client's socket buffers and then its queue (16 KiB chat messages),
    // a batch at a time: a ping after each batch is answered once the batch is handled.
    let dropped = || async {
        let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchboard_signaling_dropped_messages_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let text = "😀".repeat(4000);
    let mut sent = 0;
    while dropped().await < 20.0 {
        assert!(sent < 6000, "the stuck client's queue never filled");
        for _ in 0..100 {
            fred.send(Envelope::new(types::CHAT, json!({ "text": text })));
        }
        sent += 100;
        alive(&fred).await;
    }

    // Removing the user takes both of its participants out and closes both connections.
    let reply = host.request(types::REMOVE, json!({"participantId": stuck_grant.participant_id})).await.unwrap();
    let mut removed: Vec<String> =
        reply.payload["removed"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
    removed.sort();
    let mut expected = vec![stuck_grant.participant_id.clone(), vince2_grant.participant_id.clone()];
    expected.sort();
    assert_eq!(removed, expected);
    vince2.wait_for("removal", WAIT, |e| e.type_ == types::REMOVE).await.unwrap();
    vince2.wait_closed(WAIT).await.unwrap();
    // The stuck client reads at last: what was buffered, then the end of the connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        let mut n = 0usize;
        while let Some(Ok(m)) = stuck_rx.next().await {
            if m.is_close() {
                break;
            }
            n += 1;
        }
        n
    })
    .await
    .expect("the removed connection was not closed (its queue was full)");
    assert!(drained > 0);

    // Vince stays out: REST join, REST reads, and both old session tokens.
    let (status, body) =
        call(&server.url, &user_token("vince", None, 600), Method::POST, "/api/v1/meetings/flood/join").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("removed")), "{body}");
    let (status, _) =
        call(&server.url, &user_token("vince", None, 600), Method::GET, "/api/v1/meetings/flood/chat").await;
    assert_eq!(status, 403);
    for token in [&stuck_grant.session_token, &vince2_grant.session_token] {
        let c = SignalingClient::connect(&ws_url(&server.url)).await.unwrap();
        assert_eq!(refused(&c, types::JOIN, json!({ "token": token })).await.code, ErrorCode::Removed);
    }
    // The others carry on.
    alive(&host).await;
    chat_reaches(&host, &mia, "carry on").await;
    chat_reaches(&fred, &host, "and on").await;
    drop(stuck_tx);
    env.ns.delete().await;
}

/// A host's mute holds: the participant cannot undo it (by `participant-update` or
/// `mute`), its track is muted at the SFU, and only a host lifting it lets the
/// participant unmute. A mute on entry holds the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_mute_holds_at_signaling_and_at_the_sfu() {
    let env = env("sec-mute").await;
    let sfu = sfu_pod::local::start("sfu-mute").await.unwrap();
    meeting(&env, "talk", "hana", json!({})).await;
    meeting(&env, "quiet", "hana", json!({"muteOnEntry": true})).await;
    for m in ["talk", "quiet"] {
        assign(&env, m, &[("sfu-mute", &sfu.endpoint)], &[]).await;
    }
    let server = Replica::start_with(&env, &env.ns.name, "mute", &[(TOKEN_ENV, sfu.token.expose())]);
    let (host, _, _) = connect(&rest(&server.url, "hana", None), "talk").await;
    let (pia, pia_grant, _) = connect(&rest(&server.url, "pia", None), "talk").await;
    let pid = pia_grant.participant_id.clone();
    let _media =
        MediaSession::start(pia.clone(), &pid, loopback(vec![Publish::audio("pia-mic"), Publish::video("pia-cam")]))
            .await
            .unwrap();
    let track_muted = |track: &'static str| {
        let (endpoint, env) = (sfu.endpoint.clone(), &env);
        async move { room(&endpoint, env, "talk").await.tracks.iter().find(|t| t.id == track).map(|t| t.muted) }
    };
    switchboard_e2e::wait_for("pia's tracks on the SFU", WAIT, || async {
        track_muted("pia-mic").await.is_some() && track_muted("pia-cam").await.is_some()
    })
    .await;

    host.request(types::MUTE, json!({"participantId": pid, "kind": "audio"})).await.unwrap();
    let told = pia.wait_for("the host's mute", WAIT, |e| e.type_ == types::MUTE).await.unwrap();
    assert_eq!((told.payload["kind"].as_str(), told.payload["muted"].as_bool()), (Some("audio"), Some(true)));
    host.wait_for("pia shown muted by a host", WAIT, |e| {
        e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == pid.as_str() && e.payload["audioMutedBy"] == "host"
    })
    .await
    .unwrap();
    switchboard_e2e::wait_for("pia's microphone muted at the SFU", WAIT, || async {
        track_muted("pia-mic").await == Some(true)
    })
    .await;
    // Pia tries to undo it, both ways.
    let e = refused(&pia, types::PARTICIPANT_UPDATE, json!({"audioMuted": false})).await;
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert!(e.reason.contains("a host"), "{}", e.reason);
    let e = refused(&pia, types::MUTE, json!({"participantId": pid, "kind": "audio", "muted": false})).await;
    assert_eq!(e.code, ErrorCode::Forbidden);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(track_muted("pia-mic").await, Some(true), "still muted at the SFU");
    // Her own camera stays hers to turn off and on.
    pia.request(types::PARTICIPANT_UPDATE, json!({"videoMuted": true})).await.unwrap();
    switchboard_e2e::wait_for("pia's camera off", WAIT, || async { track_muted("pia-cam").await == Some(true) }).await;
    pia.request(types::PARTICIPANT_UPDATE, json!({"videoMuted": false})).await.unwrap();
    switchboard_e2e::wait_for("pia's camera on", WAIT, || async { track_muted("pia-cam").await == Some(false) }).await;
    // A newcomer sees the mute and who made it.
    let (_ned, _, joined) = connect(&rest(&server.url, "ned", None), "talk").await;
    let shown = joined.participants.iter().find(|p| p.id == pid).unwrap();
    assert!(shown.audio_muted);
    assert_eq!(shown.audio_muted_by, Some(switchboard_signaling_proto::MutedBy::Host));

    // The host lifts it: Pia stays muted but may unmute now.
    host.request(types::MUTE, json!({"participantId": pid, "kind": "audio", "muted": false})).await.unwrap();
    pia.wait_for("the lift", WAIT, |e| e.type_ == types::MUTE && e.payload["muted"] == false).await.unwrap();
    assert_eq!(track_muted("pia-mic").await, Some(true), "lifting does not unmute anyone");
    pia.request(types::PARTICIPANT_UPDATE, json!({"audioMuted": false})).await.unwrap();
    switchboard_e2e::wait_for("pia's microphone on again", WAIT, || async {
        track_muted("pia-mic").await == Some(false)
    })
    .await;

    // Mute on entry is a host's mute.
    let (quinn, _, joined) = connect(&rest(&server.url, "quinn", None), "quiet").await;
    assert!(joined.participant.audio_muted);
    assert_eq!(joined.participant.audio_muted_by, Some(switchboard_signaling_proto::MutedBy::Host));
    assert_eq!(
        refused(&quinn, types::PARTICIPANT_UPDATE, json!({"audioMuted": false})).await.code,
        ErrorCode::Forbidden
    );
    alive(&quinn).await;
    alive(&host).await;
    chat_reaches(&pia, &host, "heard again").await;
    env.ns.delete().await;
}

/// Track ids come from clients and end up in SFU API paths: one shaped like a path
/// (`../../<victim>/tracks/<track>`) stays inside its own segment, so muting and
/// unmuting oneself never reaches someone else's track. Dot segments are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_id_shaped_like_a_path_reaches_only_its_own_track() {
    let env = env("sec-paths").await;
    let sfu = sfu_pod::local::start("sfu-paths").await.unwrap();
    meeting(&env, "talk", "hana", json!({})).await;
    assign(&env, "talk", &[("sfu-paths", &sfu.endpoint)], &[]).await;
    let server = Replica::start_with(&env, &env.ns.name, "paths", &[(TOKEN_ENV, sfu.token.expose())]);
    let (host, _, _) = connect(&rest(&server.url, "hana", None), "talk").await;
    let (pia, pia_grant, _) = connect(&rest(&server.url, "pia", None), "talk").await;
    let pid = pia_grant.participant_id.clone();
    let _pia_media = MediaSession::start(pia.clone(), &pid, loopback(vec![Publish::audio("pia-mic")])).await.unwrap();
    let mic_muted = || {
        let (endpoint, env) = (sfu.endpoint.clone(), &env);
        async move { room(&endpoint, env, "talk").await.tracks.iter().find(|t| t.id == "pia-mic").map(|t| t.muted) }
    };
    switchboard_e2e::wait_for("pia's microphone on the SFU", WAIT, || async { mic_muted().await.is_some() }).await;
    host.request(types::MUTE, json!({"participantId": pid, "kind": "audio"})).await.unwrap();
    switchboard_e2e::wait_for("pia muted by the host at the SFU", WAIT, || async { mic_muted().await == Some(true) })
        .await;

    // Mal declares a microphone whose id climbs to Pia's, then turns "it" off and on.
    let (mal, mal_grant, _) = connect(&rest(&server.url, "mal", None), "talk").await;
    let climbing = format!("../../{pid}/tracks/pia-mic");
    let _mal_media =
        MediaSession::start(mal.clone(), &mal_grant.participant_id, loopback(vec![Publish::audio(&climbing)]))
            .await
            .unwrap();
    switchboard_e2e::wait_for("mal's oddly named track on the SFU", WAIT, || async {
        room(&sfu.endpoint, &env, "talk").await.tracks.iter().any(|t| t.id == *climbing)
    })
    .await;
    // Quick toggles: the SFU must end as the last one says, whatever order its calls ran in.
    for _ in 0..5 {
        mal.request(types::PARTICIPANT_UPDATE, json!({"audioMuted": true})).await.unwrap();
        mal.request(types::PARTICIPANT_UPDATE, json!({"audioMuted": false})).await.unwrap();
    }
    let mal_track =
        || async { room(&sfu.endpoint, &env, "talk").await.tracks.iter().find(|t| t.id == *climbing).map(|t| t.muted) };
    switchboard_e2e::wait_for("mal's own track unmuted again", WAIT, || async { mal_track().await == Some(false) })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mic_muted().await, Some(true), "the host's mute of Pia holds at the SFU");

    // Dot segments are not track ids.
    for id in ["..", "."] {
        let e = refused(&mal, types::OFFER, json!({"tracks": [{"id": id, "source": "Microphone"}]})).await;
        assert_eq!(e.code, ErrorCode::InvalidPayload, "{id}: {e:?}");
    }
    alive(&pia).await;
    chat_reaches(&host, &pia, "still here").await;
    env.ns.delete().await;
}

/// Nobody without publish rights gets media through: a Webinar's audience (viewers)
/// sending hand-made offers is refused before the SFU sees anything, and a panelist
/// may publish only the tracks it declares. Viewers still watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_cannot_publish_even_with_a_hand_made_offer() {
    let env = env("sec-publish").await;
    let ns = env.ns.name.clone();
    let sfu = sfu_pod::local::start("sfu-webinar").await.unwrap();
    meeting(&env, "webinar", "hana", json!({"mode": "Webinar"})).await;
    assign(&env, "webinar", &[("sfu-webinar", &sfu.endpoint)], &[]).await;
    let server = Replica::start_with(&env, &env.ns.name, "publish", &[(TOKEN_ENV, sfu.token.expose())]);
    let (host, _, _) = connect(&rest(&server.url, "hana", None), "webinar").await;
    let (vic, vic_grant, joined) = connect(&rest(&server.url, "vic", None), "webinar").await;
    assert_eq!(joined.participant.role, Role::Viewer, "a Webinar's audience watches");
    assert!(!joined.permissions.contains(&switchboard_signaling_proto::Permission::ShareScreen));
    let pat_rest =
        Rest::new(&server.url, &signed(claims("pat", json!({"meetings": {format!("{ns}/webinar"): "panelist"}}))));
    let (pat, pat_grant, joined) = connect(&pat_rest, "webinar").await;
    assert_eq!(joined.participant.role, Role::Participant, "a panelist publishes");

    let mic = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";
    let head = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n";
    let offers = [
        (
            "sendrecv with a declared track",
            json!({"sdp": format!("{head}{mic}a=sendrecv\r\na=msid:s vic-mic\r\n"), "tracks": [{"id": "vic-mic", "source": "Microphone"}]}),
        ),
        ("no direction (sendrecv) and no tracks", json!({"sdp": format!("{head}{mic}")})),
        ("receive-only by the session level", json!({"sdp": format!("{head}a=recvonly\r\n{mic}")})),
        ("recvonly", json!({"sdp": format!("{head}{mic}a=recvonly\r\n")})),
        ("tracks without an sdp", json!({"tracks": [{"id": "vic-cam", "source": "Camera"}]})),
        ("a screen share", json!({"tracks": [{"id": "vic-screen", "source": "ScreenShare"}]})),
    ];
    for (what, offer) in offers {
        let e = refused(&vic, types::OFFER, offer).await;
        assert_eq!(e.code, ErrorCode::Forbidden, "{what}: {e:?}");
    }
    assert!(
        !room(&sfu.endpoint, &env, "webinar").await.participants.contains(&vic_grant.participant_id),
        "the SFU saw nothing of Vic"
    );

    // The panelist publishes what it declares, and nothing else.
    let pat_media =
        MediaSession::start(pat.clone(), &pat_grant.participant_id, loopback(vec![Publish::audio("pat-mic")]))
            .await
            .unwrap();
    let sneaky = format!("{head}{mic}a=sendonly\r\na=msid:s pat-secret\r\n");
    let e = refused(&pat, types::OFFER, json!({ "sdp": sneaky })).await;
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert!(e.reason.contains("pat-secret"), "{}", e.reason);
    let swapped = format!("{head}{mic}a=sendonly\r\na=msid:s pat-cam\r\n");
    let e =
        refused(&pat, types::OFFER, json!({ "sdp": swapped, "tracks": [{"id": "pat-cam", "source": "Camera"}] })).await;
    assert!(e.reason.contains("declared as Camera"), "{}", e.reason);

    // Vic watches (no offer sdp): the panelist's audio reaches him; he still cannot publish.
    let vic_media = MediaSession::start(vic.clone(), &vic_grant.participant_id, loopback(vec![])).await.unwrap();
    vic_media
        .wait_until("the panelist's audio at the viewer", WAIT, |rx| rx.get("pat-mic").is_some_and(|r| r.packets >= 20))
        .await
        .unwrap();
    let e = refused(&vic, types::OFFER, json!({"sdp": format!("{head}{mic}a=sendonly\r\na=msid:s vic-mic\r\n")})).await;
    assert_eq!(e.code, ErrorCode::Forbidden);
    let tracks = room(&sfu.endpoint, &env, "webinar").await.tracks;
    assert_eq!(tracks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec!["pat-mic"], "only the declared track");
    assert!(tracks.iter().all(|t| t.participant == pat_grant.participant_id));
    drop(pat_media);
    alive(&host).await;
    chat_reaches(&vic, &host, "great talk").await;
    env.ns.delete().await;
}

/// One recording at a time, and everyone admitted is told when it starts and stops
/// (a waiting guest is not); a meeting whose recording policy is Off is never recorded,
/// through the WebSocket or REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recording_at_a_time_everyone_told_and_off_means_off() {
    let env = env("sec-rec").await;
    meeting(&env, "rec", "hana", json!({"waitingRoom": true})).await;
    meeting(&env, "private", "hana", json!({"recording": {"policy": "Off"}})).await;
    for m in ["rec", "private"] {
        assign(&env, m, &[("sfu-0", "http://127.0.0.1:9")], &[]).await;
    }
    let server = Replica::start(&env, "rec");
    let jobs: kube::Api<switchboard_crds::RecordingJob> = env.ns.api();
    let (host, _, _) = connect(&rest(&server.url, "hana", None), "rec").await;
    let (amy, amy_grant, _) = connect(&rest(&server.url, "amy", None), "rec").await;
    host.request(types::ADMIT, json!({"participantId": amy_grant.participant_id})).await.unwrap();
    amy.wait_for("admission", WAIT, |e| e.type_ == types::ADMITTED).await.unwrap();
    let (gus, _, _) = connect(&rest(&server.url, "gus", None), "rec").await;

    let recording = |state: &'static str, job: String| {
        move |e: &Envelope| {
            e.type_ == types::RECORDING && e.payload["state"] == state && e.payload["recordingJob"] == job.as_str()
        }
    };
    let reply = host.request(types::START_RECORDING, json!({})).await.unwrap();
    let job = reply.payload["recordingJob"].as_str().unwrap().to_owned();
    for c in [&host, &amy] {
        c.wait_for("recording started", WAIT, recording("started", job.clone())).await.unwrap();
    }
    // A second start, by WebSocket or REST, while it runs.
    let e = refused(&host, types::START_RECORDING, json!({})).await;
    assert_eq!(e.code, ErrorCode::RecordingActive);
    assert!(e.reason.contains(&job), "{}", e.reason);
    let (status, body) =
        call(&server.url, &user_token("hana", None, 600), Method::POST, "/api/v1/meetings/rec/recordings").await;
    assert_eq!((status, body["code"].as_str()), (409, Some("recordingActive")), "{body}");
    assert_eq!(jobs.list(&Default::default()).await.unwrap().items.len(), 1, "one RecordingJob");
    // A late joiner learns of it when it joins.
    let (_lou, _, joined) = connect(&rest(&server.url, "lou", Some(Role::CoHost)), "rec").await;
    assert_eq!(joined.recording.as_deref(), None, "a global co-host claim is no co-host: lou waits");
    let (_, _, joined) = connect(&rest(&server.url, "hana", None), "rec").await;
    assert_eq!(joined.recording.as_deref(), Some(job.as_str()));

    // The recorder finishes (the operator's phase): everyone hears it stopped.
    let status_of = |phase: &str| json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "RecordingJob", "status": {"phase": phase}});
    jobs.patch_status(
        &job,
        &kube::api::PatchParams::apply("switchboard-operator").force(),
        &kube::api::Patch::Apply(&status_of("Processing")),
    )
    .await
    .unwrap();
    for c in [&host, &amy] {
        let e = c.wait_for("recording stopped", WAIT, recording("stopped", job.clone())).await.unwrap();
        assert_eq!(e.payload["phase"], "Processing");
    }
    // Now another may start (by REST), and it is announced too.
    let (status, body) =
        call(&server.url, &user_token("hana", None, 600), Method::POST, "/api/v1/meetings/rec/recordings").await;
    assert_eq!(status, 201, "{body}");
    let second = body["recordingJob"].as_str().unwrap().to_owned();
    amy.wait_for("the second recording started", WAIT, recording("started", second.clone())).await.unwrap();
    assert_eq!(gus.count(types::RECORDING), 0, "the waiting room is not told");

    // Stopping early: only who may start may stop; the job is annotated for its recorder.
    assert_eq!(refused(&amy, types::STOP_RECORDING, json!({})).await.code, ErrorCode::Forbidden);
    let stop_path = "/api/v1/meetings/rec/recordings/stop";
    let (status, body) = call(&server.url, &user_token("amy", None, 600), Method::POST, stop_path).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let stop_annotation = |job: &switchboard_crds::RecordingJob| {
        job.metadata.annotations.as_ref().and_then(|a| a.get(switchboard_crds::recording_job::STOP_ANNOTATION).cloned())
    };
    assert_eq!(stop_annotation(&jobs.get(&second).await.unwrap()), None, "refused stops change nothing");
    let reply = host.request(types::STOP_RECORDING, json!({})).await.unwrap();
    assert_eq!(reply.payload["recordingJob"], second.as_str());
    assert_eq!(stop_annotation(&jobs.get(&second).await.unwrap()).as_deref(), Some("hana"));
    // Once it has stopped there is nothing to stop.
    jobs.patch_status(
        &second,
        &kube::api::PatchParams::apply("switchboard-operator").force(),
        &kube::api::Patch::Apply(&status_of("Processing")),
    )
    .await
    .unwrap();
    amy.wait_for("the second recording stopped", WAIT, recording("stopped", second.clone())).await.unwrap();
    assert_eq!(refused(&host, types::STOP_RECORDING, json!({})).await.code, ErrorCode::NoRecording);
    let (status, body) = call(&server.url, &user_token("hana", None, 600), Method::POST, stop_path).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("noRecording")), "{body}");

    // Off means off, on both paths.
    let (off_host, _, joined) = connect(&rest(&server.url, "hana", None), "private").await;
    assert!(!joined.permissions.contains(&switchboard_signaling_proto::Permission::StartRecording));
    let e = refused(&off_host, types::START_RECORDING, json!({})).await;
    assert_eq!(e.code, ErrorCode::Forbidden);
    assert!(e.reason.contains("recording is off"), "{}", e.reason);
    let (status, body) =
        call(&server.url, &user_token("hana", None, 600), Method::POST, "/api/v1/meetings/private/recordings").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("recordingOff")), "{body}");
    let of_private = jobs
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| j.spec.meeting_ref.name == "private")
        .count();
    assert_eq!(of_private, 0);
    alive(&off_host).await;
    chat_reaches(&host, &amy, "recorded or not, we carry on").await;
    env.ns.delete().await;
}
