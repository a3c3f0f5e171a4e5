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
