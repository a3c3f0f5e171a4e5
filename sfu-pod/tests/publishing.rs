//! What reaches subscribers is what signaling declared and allowed (issue #26), enforced
//! by the SFU itself: an incoming track whose id its publisher did not declare (or
//! declared as the other kind) is dropped, a participant that joined with
//! `publish: false` may not offer, and a track declared muted sends nothing until it
//! is unmuted. Real sfu-pod processes, real webrtc-rs peers on loopback.

mod common;

use std::time::Duration;

use common::*;
use switchboard_sfu_api::{ApiError, ErrorCode, Event, MuteRequest, RoomStatus, Source, paths};
use switchboard_sfu_client::{JoinOptions, Participant, Publish, SfuApi};

/// How long a subscriber is watched for packets that must not come.
const QUIET: Duration = Duration::from_millis(1500);

async fn room_status(api: &SfuApi, room: &str) -> RoomStatus {
    api.get(&api.url(paths::ROOM, room, "", "")).await.unwrap()
}

/// The value of an unlabelled counter on `/metrics`.
async fn counter(api: &SfuApi, name: &str) -> u64 {
    let (status, text) = api.get_text(paths::METRICS).await.unwrap();
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn refusal((status, body): (u16, String)) -> (u16, ErrorCode) {
    let e: ApiError = serde_json::from_str(&body).unwrap_or_else(|_| panic!("an ApiError body, got {body}"));
    (status, e.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_the_publisher_did_not_declare_reaches_nobody() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-undeclared");
    let bob = join(&sfu.api, "r", "bob", vec![]).await;
    // Alice's SDP carries four tracks and sends media on all of them, as a hand-made
    // offer would; she declares two, one of them as the wrong kind (a "microphone" that
    // is VP8 video).
    let publish = vec![
        Publish::video("alice-cam"),
        Publish::audio("alice-mic"),
        Publish::video("alice-hidden-cam"),
        Publish { source: Source::Microphone, ..Publish::video("alice-fake-mic") },
    ];
    let undeclared = vec!["alice-hidden-cam".to_owned(), "alice-mic".to_owned()];
    let opts = JoinOptions { undeclared, ..publishing(publish) };
    let alice = Participant::join(sfu.api.clone(), "r", "alice", opts).await.expect("alice joins");

    bob.wait_until("alice's declared camera", WAIT, |rx| rx.get("alice-cam").is_some_and(|t| t.packets >= 30))
        .await
        .unwrap();
    // The three others reached the SFU (each counted once, simulcast layers or not) ...
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter(&sfu.api, "switchboard_sfu_undeclared_tracks_total").await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the SFU saw alice's undeclared tracks");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and went no further: no packet, no track, no event.
    tokio::time::sleep(QUIET).await;
    let rx = bob.received();
    assert_eq!(rx.keys().collect::<Vec<_>>(), vec!["alice-cam"], "bob receives the declared track only");
    assert!(rx["alice-cam"].keyframes >= 1);
    let announced: Vec<String> = bob
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::TrackPublished { track, .. } => Some(track),
            _ => None,
        })
        .collect();
    assert_eq!(announced, vec!["alice-cam"]);
    let status = room_status(&sfu.api, "r").await;
    assert_eq!(status.tracks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), vec!["alice-cam"]);
    assert_eq!(status.subscriptions, 1);
    assert_eq!(counter(&sfu.api, "switchboard_sfu_undeclared_tracks_total").await, 3);

    // A latecomer gets the same: the declared camera only.
    let carol = join(&sfu.api, "r", "carol", vec![]).await;
    carol.wait_until("alice's camera", WAIT, |rx| rx.get("alice-cam").is_some_and(|t| t.packets >= 10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(carol.received().keys().collect::<Vec<_>>(), vec!["alice-cam"]);
    drop(alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_may_not_publish_is_refused_an_offer_and_the_room_lives_on() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-viewer");
    let host = join(&sfu.api, "webinar", "host", vec![Publish::audio("host-mic"), Publish::video("host-cam")]).await;
    let viewer =
        Participant::join(sfu.api.clone(), "webinar", "viewer", JoinOptions { viewer: true, ..publishing(vec![]) })
            .await
            .expect("a viewer joins receive-only");

    // A viewer with an offer (a webrtc-rs one, with a track) is refused: 403, its code.
    let opts = JoinOptions { viewer: true, ..publishing(vec![Publish::video("mallory-cam")]) };
    let e = Participant::join(sfu.api.clone(), "webinar", "mallory", opts).await.err().expect("refused");
    assert_eq!(e.code(), Some(ErrorCode::PublishNotAllowed), "{e}");
    assert!(matches!(e, switchboard_sfu_client::Error::Refused { status: 403, .. }), "{e}");
    // Declaring tracks without an offer is publishing too.
    let join_url = sfu.api.url(paths::PARTICIPANTS, "webinar", "", "");
    let declares = r#"{"participantId": "eve", "publish": false, "tracks": [{"id": "eve-cam", "source": "Camera"}]}"#;
    assert_eq!(refusal(sfu.api.post_raw(&join_url, declares).await.unwrap()), (403, ErrorCode::PublishNotAllowed));
    // A joined viewer's later publisher offer is refused the same way, whatever its SDP.
    let offer = r#"{"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=msid:s viewer-mic\r\na=rtpmap:111 opus/48000/2\r\n", "tracks": [{"id": "viewer-mic", "source": "Microphone"}]}"#;
    let offer_url = sfu.api.url(paths::PUBLISHER_OFFER, "webinar", "viewer", "");
    assert_eq!(refusal(sfu.api.post_raw(&offer_url, offer).await.unwrap()), (403, ErrorCode::PublishNotAllowed));
    let garbage = r#"{"sdp": "nonsense"}"#;
    assert_eq!(refusal(sfu.api.post_raw(&offer_url, garbage).await.unwrap()), (403, ErrorCode::PublishNotAllowed));
    // A client may not name an origin (that shows its track as someone else's).
    let impostor = r#"{"participantId": "imp", "tracks": [{"id": "imp-cam", "source": "Camera", "origin": "host"}]}"#;
    assert_eq!(refusal(sfu.api.post_raw(&join_url, impostor).await.unwrap()), (400, ErrorCode::BadRequest));
    let (_, metrics) = sfu.api.get_text(paths::METRICS).await.unwrap();
    assert!(metrics.contains(r#"switchboard_sfu_api_errors_total{code="publishNotAllowed"} 4"#), "{metrics}");

    // The room, the host and the viewer live on; the refused ones never joined.
    viewer
        .wait_until("the host's media", WAIT, |rx| {
            ["host-mic", "host-cam"].iter().all(|t| rx.get(*t).is_some_and(|t| t.packets >= 20))
        })
        .await
        .unwrap();
    let status = room_status(&sfu.api, "webinar").await;
    assert_eq!(status.participants, vec!["host", "viewer"]);
    let mut tracks: Vec<&str> = status.tracks.iter().map(|t| t.id.as_str()).collect();
    tracks.sort();
    assert_eq!(tracks, vec!["host-cam", "host-mic"]);
    assert!(!viewer.events().iter().any(|e| matches!(e,
        Event::ParticipantJoined { participant, .. } if ["mallory", "eve", "imp"].contains(&participant.as_str()))));
    // The same ids join later, allowed this time.
    let mallory = join(&sfu.api, "webinar", "mallory", vec![Publish::audio("mallory-mic")]).await;
    host.wait_until("mallory's audio", WAIT, |rx| rx.get("mallory-mic").is_some_and(|t| t.packets >= 10))
        .await
        .unwrap();
    drop(mallory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_declared_muted_sends_nothing_until_unmuted() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-muted");
    let bob = join(&sfu.api, "r", "bob", vec![]).await;
    let opts = JoinOptions {
        muted: vec!["alice-cam".to_owned()],
        ..publishing(vec![Publish::audio("alice-mic"), Publish::video("alice-cam")])
    };
    let alice = Participant::join(sfu.api.clone(), "r", "alice", opts).await.expect("alice joins");

    // Her microphone flows; her camera is announced, as muted, and sends nothing.
    bob.wait_until("alice's microphone", WAIT, |rx| rx.get("alice-mic").is_some_and(|t| t.packets >= 50))
        .await
        .unwrap();
    bob.wait_event(
        "the camera, muted",
        WAIT,
        |e| matches!(e, Event::TrackMuted { track, muted: true, .. } if track == "alice-cam"),
    )
    .await
    .unwrap();
    tokio::time::sleep(QUIET).await;
    assert!(bob.received().get("alice-cam").is_none_or(|t| t.packets == 0), "nothing of the muted camera");
    let status = room_status(&sfu.api, "r").await;
    let cam = status.tracks.iter().find(|t| t.id == "alice-cam").expect("published, muted");
    assert!(cam.muted);
    assert_eq!(status.subscriptions, 2, "bob is subscribed to both");

    // Unmuted through the API: pictures from a keyframe on.
    let url = sfu.api.url(paths::TRACK, "r", "alice", "alice-cam");
    let _: serde_json::Value = sfu.api.put(&url, &MuteRequest { muted: false }).await.unwrap();
    bob.wait_until("alice's camera after the unmute", WAIT, |rx| {
        rx.get("alice-cam").is_some_and(|t| t.packets >= 20 && t.keyframes >= 1)
    })
    .await
    .unwrap();

    // A declared track is muted before its first packet: no 404, no retry.
    let join_url = sfu.api.url(paths::PARTICIPANTS, "r", "", "");
    let dan = r#"{"participantId": "dan", "tracks": [{"id": "dan-cam", "source": "Camera"}]}"#;
    let (status, body) = sfu.api.post_raw(&join_url, dan).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let url = sfu.api.url(paths::TRACK, "r", "dan", "dan-cam");
    let _: serde_json::Value = sfu.api.put(&url, &MuteRequest { muted: true }).await.unwrap();
    let undeclared = sfu.api.url(paths::TRACK, "r", "dan", "dan-mic");
    let e = sfu.api.put::<_, serde_json::Value>(&undeclared, &MuteRequest { muted: true }).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTrack));
    drop(alice);
}
