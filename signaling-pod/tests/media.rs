//! Media through signaling: real SFUs, real webrtc-rs clients, TURN against coturn.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use switchboard_sfu_client::{JoinOptions, NetworkOptions, Publish};
use switchboard_signaling_client::MediaSession;
use switchboard_signaling_proto::types;

fn loopback(publish: Vec<Publish>) -> JoinOptions {
    JoinOptions { publish, net: NetworkOptions { loopback_only: true, ..Default::default() }, ..Default::default() }
}

fn flowing(
    tracks: &'static [&'static str],
    min: u64,
) -> impl Fn(&std::collections::HashMap<String, switchboard_sfu_client::ReceivedTrack>) -> bool {
    move |rx| tracks.iter().all(|t| rx.get(*t).is_some_and(|r| r.packets >= min))
}

/// The operator moves a meeting to another SFU: every client is told, reconnects its
/// media to the new SFU through the same signaling session, and receives again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_their_meeting_to_a_new_sfu_without_rejoining() {
    let env = env("sig-move").await;
    let sfu1 = sfu_pod::local::start("sfu-1").await.unwrap();
    let sfu2 = sfu_pod::local::start("sfu-2").await.unwrap();
    meeting(&env, "move", "amy", serde_json::json!({})).await;
    assign(&env, "move", &[("sfu-1", &sfu1.endpoint)], &[]).await;
    let server = env.in_process(env.config()).await;

    let (amy, amy_grant, _) = connect(&rest(&server.url, "amy", None), "move").await;
    let (ben, ben_grant, _) = connect(&rest(&server.url, "ben", None), "move").await;
    let amy_media = MediaSession::start(
        amy.clone(),
        &amy_grant.participant_id,
        loopback(vec![Publish::audio("amy-mic"), Publish::video("amy-cam")]),
    )
    .await
    .unwrap();
    let ben_media =
        MediaSession::start(ben.clone(), &ben_grant.participant_id, loopback(vec![Publish::audio("ben-mic")]))
            .await
            .unwrap();
    ben_media.wait_until("amy's audio and video via sfu-1", WAIT, flowing(&["amy-mic", "amy-cam"], 30)).await.unwrap();
    amy_media.wait_until("ben's audio via sfu-1", WAIT, flowing(&["ben-mic"], 30)).await.unwrap();
    let room = format!("{}.move", env.ns.name);
    let on = |sfu: &sfu_pod::local::LocalSfu| {
        let api = switchboard_sfu_client::SfuApi::new(sfu.endpoint.clone());
        let room = room.clone();
        async move {
            api.get::<switchboard_sfu_api::RoomStatus>(&api.url(switchboard_sfu_api::paths::ROOM, &room, "", ""))
                .await
                .map(|s| s.participants.len())
                .unwrap_or(0)
        }
    };
    assert_eq!(on(&sfu1).await, 2, "both on sfu-1");

    // The operator's move: assignment to sfu-2, a migration recorded.
    assign(&env, "move", &[("sfu-2", &sfu2.endpoint)], &[("sfu-1", "sfu-2")]).await;
    for c in [&amy, &ben] {
        let e = c.wait_for("media-reconnect", WAIT, |e| e.type_ == types::MEDIA_RECONNECT).await.unwrap();
        assert_eq!(e.payload["generation"], 1);
        assert!(e.payload["reason"].as_str().unwrap().contains("sfu-2"));
    }
    for m in [&amy_media, &ben_media] {
        switchboard_e2e::wait_for("media reconnected", WAIT, || async { m.reconnects() == 1 }).await;
    }
    ben_media.wait_until("amy's audio and video via sfu-2", WAIT, flowing(&["amy-mic", "amy-cam"], 30)).await.unwrap();
    amy_media.wait_until("ben's audio via sfu-2", WAIT, flowing(&["ben-mic"], 30)).await.unwrap();
    assert_eq!((ben_media.reconnects(), amy_media.reconnects()), (1, 1));
    assert_eq!(on(&sfu2).await, 2, "both on sfu-2");
    switchboard_e2e::wait_for("both gone from sfu-1", WAIT, || {
        let n = on(&sfu1);
        async move { n.await == 0 }
    })
    .await;
    // Same signaling session throughout: no second join, chat still works.
    assert_eq!(amy.received().iter().filter(|e| e.type_ == types::JOINED).count(), 1);
    amy.request(types::CHAT, serde_json::json!({"text": "still here"})).await.unwrap();
    ben.wait_for("chat after the move", WAIT, |e| e.type_ == types::CHAT).await.unwrap();
    env.ns.delete().await;
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Coturn(std::process::Child);

/// The TURN credentials handed out at join are accepted by a real coturn, and refused
/// once they expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_accepts_issued_turn_credentials_until_they_expire() {
    const SECRET: &str = "turn-shared-secret";
    let env = env("sig-turn").await;
    meeting(&env, "turn", "tom", serde_json::json!({})).await;
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _coturn = Coturn(
        Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                "--use-auth-secret",
                "--realm=switchboard.test",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
                "--simple-log",
                "--log-file=stdout",
            ])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--static-auth-secret={SECRET}"))
            .arg("--min-port=49160")
            .arg("--max-port=49200")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnserver runs (Debian package coturn)"),
    );
    let mut cfg = env.config();
    cfg.turn = Some(signaling_pod::config::TurnSettings {
        urls: vec![format!("turn:127.0.0.1:{port}?transport=udp")],
        secret: SECRET.as_bytes().to_vec(),
        ttl: Duration::from_secs(3),
    });
    let server = env.in_process(cfg).await;
    let grant = rest(&server.url, "tom", None).join("turn").await.unwrap();
    let ice = &grant.ice_servers[0];
    let (username, password) = (ice.username.clone().unwrap(), ice.credential.clone().unwrap());
    assert!(username.ends_with(&format!(":{}", grant.participant_id)), "username is expiry:user, got {username}");

    let allocate = |username: String, password: String| async move {
        let conn = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let client = webrtc::turn::client::Client::new(webrtc::turn::client::ClientConfig {
            stun_serv_addr: format!("127.0.0.1:{port}"),
            turn_serv_addr: format!("127.0.0.1:{port}"),
            username,
            password,
            realm: "switchboard.test".into(),
            software: String::new(),
            rto_in_ms: 200,
            conn,
            vnet: None,
        })
        .await
        .unwrap();
        client.listen().await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), client.allocate()).await.expect("coturn answers");
        let ok = result.as_ref().map(|relay| webrtc::util::Conn::local_addr(relay).is_ok()).unwrap_or(false);
        let error = result.err().map(|e| e.to_string());
        client.close().await.unwrap();
        (ok, error)
    };
    // coturn may take a moment to listen.
    let (ok, error) = switchboard_e2e::eventually("coturn allocates a relay with the issued credentials", WAIT, || {
        let (u, p) = (username.clone(), password.clone());
        async move {
            let (ok, error) = allocate(u, p).await;
            ok.then_some((ok, error))
        }
    })
    .await;
    assert!(ok, "{error:?}");
    let (ok, _) = allocate(username.clone(), "not-the-password".into()).await;
    assert!(!ok, "a wrong password is refused");
    // The credentials were issued for 3 s.
    let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
    while signaling_pod::auth::now_unix() <= expiry + 1 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (ok, error) = allocate(username, password).await;
    assert!(!ok, "expired credentials are refused");
    assert!(error.is_some());

    // Renewal: the WebSocket join (and every resume) carries fresh credentials, and so
    // does the client's `ice-servers` request; coturn takes both.
    let (client, joined) =
        switchboard_signaling_client::SignalingClient::join(&grant.signaling_url, &grant.session_token).await.unwrap();
    let renewed = &joined.ice_servers[0];
    let renewed_expiry: u64 = renewed.username.as_deref().unwrap().split(':').next().unwrap().parse().unwrap();
    assert!(renewed_expiry > expiry, "fresh credentials at the join: {renewed:?}");
    let (ok, error) = allocate(renewed.username.clone().unwrap(), renewed.credential.clone().unwrap()).await;
    assert!(ok, "the join's credentials: {error:?}");
    let asked = client.ice_servers().await.unwrap();
    let (ok, error) = allocate(asked[0].username.clone().unwrap(), asked[0].credential.clone().unwrap()).await;
    assert!(ok, "the requested credentials: {error:?}");
    env.ns.delete().await;
}

/// Packets of `track` received in the current connections in `window`.
async fn arriving(media: &MediaSession, track: &str, window: Duration) -> u64 {
    let count = |rx: std::collections::HashMap<String, switchboard_sfu_client::ReceivedTrack>| {
        rx.get(track).map_or(0, |r| r.packets)
    };
    let before = count(media.received().await);
    tokio::time::sleep(window).await;
    count(media.received().await).saturating_sub(before)
}

/// A Webinar on a real SFU: an attendee (a viewer) may not publish; the host invites it
/// to speak (`set-role` participant, i.e. panelist) and its microphone reaches the host
/// and the other attendees; moved back, its audio stops at once at the SFU, and its
/// offers to publish are refused again. Only the host makes co-hosts; nobody changes
/// their own role or the host's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webinar_attendee_is_invited_to_speak_heard_and_moved_back() {
    use switchboard_signaling_proto::{ErrorCode, Role};
    let env = env("sig-webinar").await;
    let sfu = sfu_pod::local::start("sfu-web").await.unwrap();
    meeting(&env, "townhall", "hana", serde_json::json!({"mode": "Webinar"})).await;
    assign(&env, "townhall", &[("sfu-web", &sfu.endpoint)], &[]).await;
    let server = env.in_process(env.config()).await;

    let (hana, hana_grant, _) = connect(&rest(&server.url, "hana", None), "townhall").await;
    let (ada, ada_grant, ada_joined) = connect(&rest(&server.url, "ada", None), "townhall").await;
    let (bo, bo_grant, bo_joined) = connect(&rest(&server.url, "bo", None), "townhall").await;
    assert_eq!((ada_joined.participant.role, bo_joined.participant.role), (Role::Viewer, Role::Viewer));
    let hana_media =
        MediaSession::start(hana.clone(), &hana_grant.participant_id, loopback(vec![Publish::audio("hana-mic")]))
            .await
            .unwrap();
    // An attendee's offer to publish is refused.
    let refused =
        MediaSession::start(ada.clone(), &ada_grant.participant_id, loopback(vec![Publish::audio("ada-mic")]))
            .await
            .err()
            .expect("a viewer's publishing offer is refused");
    assert!(refused.to_string().contains("Forbidden"), "{refused}");
    let ada_media = MediaSession::start_as(
        ada.clone(),
        &ada_grant.participant_id,
        loopback(vec![Publish::audio("ada-mic")]),
        Some(Role::Viewer),
    )
    .await
    .unwrap();
    let bo_media = MediaSession::start_as(bo.clone(), &bo_grant.participant_id, loopback(vec![]), Some(Role::Viewer))
        .await
        .unwrap();
    bo_media.wait_until("the host's audio", WAIT, flowing(&["hana-mic"], 30)).await.unwrap();
    ada_media.wait_until("the host's audio", WAIT, flowing(&["hana-mic"], 30)).await.unwrap();

    // Refusals: an attendee promoting itself, the host's role, a co-host from anyone
    // but the host.
    let set_role = |who: &str, role: &str| serde_json::json!({"participantId": who, "role": role});
    let code = |r: Result<switchboard_signaling_proto::Envelope, switchboard_signaling_client::Error>| match r {
        Err(switchboard_signaling_client::Error::Refused { payload, .. }) => Some(payload.code),
        _ => None,
    };
    let ada_id = ada_grant.participant_id.clone();
    assert_eq!(code(ada.request(types::SET_ROLE, set_role(&ada_id, "panelist")).await), Some(ErrorCode::Forbidden));
    let hana_id = hana_grant.participant_id.clone();
    assert_eq!(code(hana.request(types::SET_ROLE, set_role(&hana_id, "viewer")).await), Some(ErrorCode::Forbidden));
    assert_eq!(code(hana.request(types::SET_ROLE, set_role(&ada_id, "host")).await), Some(ErrorCode::InvalidPayload));
    assert_eq!(
        code(hana.request(types::SET_ROLE, set_role("nobody-here", "panelist")).await),
        Some(ErrorCode::UnknownParticipant)
    );

    // Invited to speak: ada publishes after its media reconnects, and everyone hears it.
    hana.request(types::SET_ROLE, set_role(&ada_id, "panelist")).await.unwrap();
    let changed = ada.wait_for("role-changed", WAIT, of_type(types::ROLE_CHANGED)).await.unwrap();
    assert_eq!(changed.payload["role"], "participant");
    assert_eq!(changed.payload["reconnect"], true);
    assert!(changed.payload["permissions"].as_array().unwrap().iter().any(|p| p == "share_screen"), "{changed:?}");
    bo.wait_for("ada shown as a panelist", WAIT, |e| {
        e.type_ == types::PARTICIPANT_UPDATE && e.payload["id"] == ada_id.as_str() && e.payload["role"] == "participant"
    })
    .await
    .unwrap();
    bo_media.wait_until("ada's audio", WAIT, flowing(&["ada-mic"], 30)).await.unwrap();
    hana_media.wait_until("ada's audio", WAIT, flowing(&["ada-mic"], 30)).await.unwrap();
    ada_media.wait_until("the host's audio, still", WAIT, flowing(&["hana-mic"], 30)).await.unwrap();

    // A co-host may move attendees but not make co-hosts.
    hana.request(types::SET_ROLE, set_role(&bo_grant.participant_id, "co-host")).await.unwrap();
    bo.wait_for("bo a co-host", WAIT, |e| e.type_ == types::ROLE_CHANGED && e.payload["role"] == "co-host")
        .await
        .unwrap();
    assert_eq!(code(bo.request(types::SET_ROLE, set_role(&ada_id, "co-host")).await), Some(ErrorCode::Forbidden));

    // Moved back (by the co-host): its audio stops at the SFU at once, before its client
    // does anything, and its offers to publish are refused again.
    bo.request(types::SET_ROLE, set_role(&ada_id, "attendee")).await.unwrap();
    ada.wait_for("role-changed back", WAIT, |e| e.type_ == types::ROLE_CHANGED && e.payload["role"] == "viewer")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(arriving(&hana_media, "ada-mic", Duration::from_secs(1)).await, 0, "ada's audio stopped");
    let offer = serde_json::json!({"sdp": "v=0", "tracks": [{"id": "ada-mic", "source": "Microphone"}]});
    assert_eq!(code(ada.request(types::OFFER, offer).await), Some(ErrorCode::Forbidden));
    // It still receives, through the connections its client made again.
    switchboard_e2e::wait_for("ada's media reconnected twice", WAIT, || async { ada_media.reconnects() == 2 }).await;
    let hana_heard = arriving(&ada_media, "hana-mic", Duration::from_secs(1));
    assert!(hana_heard.await > 20, "ada still hears the host");
    env.ns.delete().await;
}

/// A meeting with `spec.audio: Mixed`: signaling opens its room mixed on the SFU before
/// the first join, so its participants receive the SFU's mix and never each other's
/// voices (the mix's sound is checked in sfu-pod's media tests); video is still routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_audio_meeting_hears_the_sfus_mix_and_no_routed_voice() {
    let env = env("sig-mixed").await;
    let sfu = sfu_pod::local::start("sfu-mix").await.unwrap();
    meeting(&env, "allhands", "hana", serde_json::json!({"audio": "Mixed"})).await;
    assign(&env, "allhands", &[("sfu-mix", &sfu.endpoint)], &[]).await;
    let server = env.in_process(env.config()).await;
    let (hana, hana_grant, _) = connect(&rest(&server.url, "hana", None), "allhands").await;
    let (ada, ada_grant, _) = connect(&rest(&server.url, "ada", None), "allhands").await;
    let hana_media = MediaSession::start(
        hana.clone(),
        &hana_grant.participant_id,
        loopback(vec![Publish::audio("hana-mic"), Publish::video("hana-cam")]),
    )
    .await
    .unwrap();
    let ada_media =
        MediaSession::start(ada.clone(), &ada_grant.participant_id, loopback(vec![Publish::audio("ada-mic")]))
            .await
            .unwrap();
    ada_media.wait_until("the mix and hana's camera", WAIT, flowing(&["~mix", "hana-cam"], 30)).await.unwrap();
    hana_media.wait_until("the mix", WAIT, flowing(&["~mix"], 30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!ada_media.received().await.contains_key("hana-mic"), "no routed voice reaches a participant");
    assert!(!hana_media.received().await.contains_key("ada-mic"));
    let api = switchboard_sfu_client::SfuApi::new(sfu.endpoint.clone());
    let room = format!("{}.allhands", env.ns.name);
    let status: switchboard_sfu_api::RoomStatus =
        api.get(&api.url(switchboard_sfu_api::paths::ROOM, &room, "", "")).await.unwrap();
    assert_eq!(status.audio, switchboard_sfu_api::RoomAudio::Mixed);
    assert_eq!(status.participants.len(), 2, "the mixer is not listed: {:?}", status.participants);
}
