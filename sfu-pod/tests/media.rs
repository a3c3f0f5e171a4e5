//! Real webrtc-rs peers against real sfu-pod processes on loopback.

mod common;

use std::time::Duration;

use common::*;
use switchboard_sfu_client::{JoinOptions, Participant, Publish, PublishKind};

fn av(p: &str) -> Vec<Publish> {
    vec![Publish::audio(&format!("{p}-mic")), Publish::video(&format!("{p}-cam"))]
}

/// The value of an unlabelled sample on `/metrics` (0 when absent).
async fn sample(sfu: &SfuProcess, name: &str) -> f64 {
    let (_, text) = sfu.api.get_text("/metrics").await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits until the sample is above `floor`; returns it.
async fn sample_above(sfu: &SfuProcess, name: &str, floor: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = sample(sfu, name).await;
        if v > floor {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_each_receive_the_others_audio_and_video() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-a");
    let mut people = Vec::new();
    for p in ["alice", "bob", "carol"] {
        people.push(join(&sfu.api, "standup", p, av(p)).await);
    }
    for me in &people {
        let others: Vec<String> = ["alice", "bob", "carol"]
            .iter()
            .filter(|p| **p != me.id)
            .flat_map(|p| [format!("{p}-mic"), format!("{p}-cam")])
            .collect();
        me.wait_until("the others' audio and video", WAIT, |rx| {
            others.iter().all(|t| rx.get(t).is_some_and(|r| r.packets >= 20))
        })
        .await
        .unwrap();
        let rx = me.received();
        assert!(!rx.contains_key(&format!("{}-cam", me.id)), "nobody receives their own tracks");
        for t in &others {
            let track = &rx[t];
            let owner = t.split('-').next().unwrap();
            assert_eq!(track.publisher, owner, "stream id names the publisher");
            assert_eq!(track.ssrcs.len(), 1, "{t}: one SSRC per received track");
            if track.video {
                assert!(track.keyframes >= 1, "{t}: the stream starts with a keyframe");
            }
        }
    }
    let status: switchboard_sfu_api::RoomStatus =
        sfu.api.get(&sfu.api.url(switchboard_sfu_api::paths::ROOM, "standup", "", "")).await.unwrap();
    assert_eq!(status.participants, vec!["alice", "bob", "carol"]);
    assert_eq!(status.tracks.len(), 6);
    assert_eq!(status.subscriptions, 12);
    let (_, metrics) = sfu.api.get_text("/metrics").await.unwrap();
    assert!(metrics.contains("switchboard_sfu_rtp_packets_forwarded_total"), "{metrics}");
    // The subscribers' receiver reports reach the quality histograms: every block a
    // jitter, and once they have our sender reports, a round trip (loopback: short).
    sample_above(&sfu, "switchboard_sfu_subscriber_jitter_seconds_count", 0.0).await;
    let reports = sample_above(&sfu, "switchboard_sfu_subscriber_round_trip_seconds_count", 0.0).await;
    let rtt = sample(&sfu, "switchboard_sfu_subscriber_round_trip_seconds_sum").await / reports;
    assert!((0.0..0.5).contains(&rtt), "mean round trip on loopback {rtt} s");
    assert_eq!(sample(&sfu, "switchboard_sfu_subscriber_loss_ratio_sum").await, 0.0, "no loss on loopback");
    for p in people {
        p.leave().await.unwrap();
    }
    let status: switchboard_sfu_api::NodeStatus = sfu.api.get(&format!("{}/v1/status", sfu.api.base)).await.unwrap();
    assert_eq!(status.participants, 0);
}

/// Sixteen tracks give the viewer's connection two-digit MIDs ("10" on). The SFU once
/// kept the publisher's parsed header-extension padding on forwarded packets, so
/// webrtc-rs sized the new MID extension wrong and every write of those tracks failed:
/// a subscriber's eleventh transceiver onward stayed silent. Eight publishers join at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_of_sixteen_tracks_gets_every_one() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-sixteen");
    let viewer = join(&sfu.api, "sixteen", "viewer", vec![]).await;
    let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let publishers = futures::future::join_all(
        names.iter().map(|p| Participant::join(sfu.api.clone(), "sixteen", p, publishing(av(p)))),
    )
    .await;
    let publishers: Vec<Participant> = publishers.into_iter().map(|p| p.expect("joins")).collect();
    let tracks: Vec<String> = names.iter().flat_map(|p| [format!("{p}-mic"), format!("{p}-cam")]).collect();
    let arrived = |rx: &std::collections::HashMap<String, switchboard_sfu_client::ReceivedTrack>, t: &String| {
        rx.get(t).is_some_and(|r| r.packets >= 20)
    };
    let waited =
        viewer.wait_until("every publisher's audio and video", WAIT, |rx| tracks.iter().all(|t| arrived(rx, t))).await;
    let rx = viewer.received();
    let missing: Vec<(&String, Option<u64>)> =
        tracks.iter().filter(|t| !arrived(&rx, t)).map(|t| (t, rx.get(t).map(|r| r.packets))).collect();
    let status: switchboard_sfu_api::RoomStatus =
        sfu.api.get(&sfu.api.url(switchboard_sfu_api::paths::ROOM, "sixteen", "", "")).await.unwrap();
    let published: Vec<&str> = status.tracks.iter().map(|t| t.id.as_str()).collect();
    assert!(
        waited.is_ok() && missing.is_empty(),
        "tracks that never arrived (packets): {missing:?}; published at the SFU: {published:?}"
    );
    for p in publishers {
        p.leave().await.unwrap();
    }
    viewer.leave().await.unwrap();
}

fn layer_packets(p: &switchboard_sfu_client::Participant, track: &str) -> [u64; 3] {
    p.received().get(track).map(|t| t.packets_by_layer).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_subscribers_get_the_layer_their_bandwidth_allows_and_move_up_on_a_keyframe() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-simulcast");
    let publisher = join(&sfu.api, "webinar", "host", vec![Publish::simulcast("host-cam")]).await;
    let fast = join(&sfu.api, "webinar", "fast", vec![]).await;
    let slow = join(&sfu.api, "webinar", "slow", vec![]).await;
    // The capped subscriber's estimate: 80 kbps fits only the 48 kbps layer.
    slow.set_downlink_cap(Some(80_000));

    fast.wait_until("the full layer", WAIT, |rx| {
        rx.get("host-cam").is_some_and(|t| t.last_layer == Some(2) && t.packets_by_layer[2] > 60)
    })
    .await
    .unwrap();
    slow.wait_until("the low layer", WAIT, |rx| {
        rx.get("host-cam").is_some_and(|t| t.last_layer == Some(0) && t.packets_by_layer[0] > 15)
    })
    .await
    .unwrap();
    // And they stay there.
    let (f0, s0) = (layer_packets(&fast, "host-cam"), layer_packets(&slow, "host-cam"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (f1, s1) = (layer_packets(&fast, "host-cam"), layer_packets(&slow, "host-cam"));
    assert!(f1[2] > f0[2] + 10 && f1[0] == f0[0] && f1[1] == f0[1], "fast stays on f: {f0:?} -> {f1:?}");
    assert!(s1[0] > s0[0] + 4 && s1[2] == s0[2] && s1[1] == s0[1], "slow stays on q: {s0:?} -> {s1:?}");

    // The cap is lifted: the slow subscriber moves up, starting on a keyframe.
    slow.set_downlink_cap(Some(20_000_000));
    slow.wait_until("the full layer after the cap", WAIT, |rx| {
        rx.get("host-cam").is_some_and(|t| t.last_layer == Some(2) && t.packets_by_layer[2] > s1[2] + 30)
    })
    .await
    .unwrap();
    let track = &slow.received()["host-cam"];
    let up = track.layer_switches.iter().rfind(|(from, to, _)| to > from).copied().expect("an up-switch");
    assert!(up.2, "the up-switch starts on a keyframe: {:?}", track.layer_switches);
    assert!(
        track.layer_switches.iter().all(|(_, _, key)| *key),
        "every switch is on a keyframe: {:?}",
        track.layer_switches
    );
    assert_eq!(track.ssrcs.len(), 1, "one SSRC across layer switches");
    assert_eq!(track.discontinuities, 0, "sequence numbers never jump back");
    assert_eq!(track.missing(), 0, "no sequence gaps across switches");
    slow.wait_event("a LayerChanged event", WAIT, |e| {
        matches!(e, switchboard_sfu_api::Event::LayerChanged { layer: 2, .. })
    })
    .await
    .unwrap();
    drop(publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_recovers_video_through_five_percent_loss_on_both_legs() {
    let _slot = media_slot().await;
    use switchboard_sfu_client::{JoinOptions, NetworkOptions, PublishKind};
    let sfu = SfuProcess::start("sfu-loss");
    // The publisher's uplink and the viewer's downlink each lose 5% of the video.
    let lossy_up = NetworkOptions { loopback_only: true, send_loss: Some(0.05), ..Default::default() };
    let lossy_down = NetworkOptions { loopback_only: true, receive_loss: Some(0.05), ..Default::default() };
    let video = Publish {
        kind: PublishKind::Video { simulcast: false, packets_per_second: 100, size: 900 },
        ..Publish::video("pub-cam")
    };
    let publisher = Participant::join(
        sfu.api.clone(),
        "lossy",
        "pub",
        JoinOptions { publish: vec![video], net: lossy_up, ..Default::default() },
    )
    .await
    .unwrap();
    let viewer =
        Participant::join(sfu.api.clone(), "lossy", "viewer", JoinOptions { net: lossy_down, ..Default::default() })
            .await
            .unwrap();
    viewer
        .wait_until("600 video packets", Duration::from_secs(30), |rx| {
            rx.get("pub-cam").is_some_and(|t| t.packets >= 600)
        })
        .await
        .unwrap();
    let dropped = switchboard_sfu_client::loss::DROPPED.load(std::sync::atomic::Ordering::Relaxed);
    let span = viewer.received()["pub-cam"].highest_ext_seq;
    assert!(dropped as f64 > span as f64 * 0.03, "the impairment dropped packets: {dropped} of ~{span} on the uplink");
    // Every packet older than the last half second arrives, retransmitted if need be.
    // The first 200 ms are left out: under CPU load webrtc-rs's simulcast prober can
    // swallow a new stream's first packets before the receiver reads it (the receive
    // race of issue #6), which no NACK brings back; this test is about random loss.
    const SETTLE: i64 = 20;
    let missing = |t: &switchboard_sfu_client::ReceivedTrack| -> Vec<i64> {
        (SETTLE..=t.highest_ext_seq - 50).filter(|i| !t.unique_seqs.contains(i)).collect()
    };
    let recovered = viewer
        .wait_until("every lost packet recovered", Duration::from_secs(10), |rx| missing(&rx["pub-cam"]).is_empty())
        .await;
    if let Err(e) = recovered {
        let t = &viewer.received()["pub-cam"];
        panic!("{e}: missing {:?} of {}..{}", missing(t), t.lowest_ext_seq, t.highest_ext_seq);
    }
    let track = &viewer.received()["pub-cam"];
    assert_eq!(track.ssrcs.len(), 1);
    // The viewer's reports say it lost packets (before their retransmission arrived).
    let loss = sample_above(&sfu, "switchboard_sfu_subscriber_loss_ratio_sum", 0.0).await;
    let reports = sample(&sfu, "switchboard_sfu_subscriber_loss_ratio_count").await;
    assert!(loss / reports < 0.2, "mean reported loss {} with 5% dropped", loss / reports);
    drop(publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_restart_keeps_the_session_and_media_flowing() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-restart");
    let alice = join(&sfu.api, "r", "alice", av("alice")).await;
    let bob = join(&sfu.api, "r", "bob", av("bob")).await;
    bob.wait_until("alice's video", WAIT, |rx| rx.get("alice-cam").is_some_and(|t| t.packets > 30)).await.unwrap();
    let before = bob.local_ufrags().await;
    bob.ice_restart().await.unwrap();
    alice.ice_restart().await.unwrap();
    // New credentials on both of bob's connections once the SFU's restart offer is answered.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = bob.local_ufrags().await;
        if now.len() == before.len() && now.iter().zip(&before).all(|(a, b)| a != b) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ICE credentials did not change: {before:?} -> {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let counts = |p: &switchboard_sfu_client::Participant, t: &str| p.received().get(t).map(|r| r.packets).unwrap_or(0);
    let (a0, b0) = (counts(&alice, "bob-cam"), counts(&bob, "alice-cam"));
    bob.wait_until("media after the restart", WAIT, |rx| rx.get("alice-cam").is_some_and(|t| t.packets > b0 + 60))
        .await
        .unwrap();
    alice
        .wait_until("media after the restart", WAIT, |rx| rx.get("bob-cam").is_some_and(|t| t.packets > a0 + 60))
        .await
        .unwrap();
    assert_eq!(bob.received()["alice-cam"].ssrcs.len(), 1, "the same stream continues");
    let status: switchboard_sfu_api::RoomStatus =
        sfu.api.get(&sfu.api.url(switchboard_sfu_api::paths::ROOM, "r", "", "")).await.unwrap();
    assert_eq!(status.participants, vec!["alice", "bob"], "nobody rejoined");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_newcomers_and_reports_drained_when_the_last_leaves() {
    let _slot = media_slot().await;
    use switchboard_sfu_api::{ErrorCode, NodeState, NodeStatus};
    let sfu = SfuProcess::start("sfu-drain");
    let alice = join(&sfu.api, "r", "alice", av("alice")).await;
    let bob = join(&sfu.api, "r", "bob", av("bob")).await;
    let status: NodeStatus = sfu.api.post(&format!("{}/v1/drain", sfu.api.base), &serde_json::json!({})).await.unwrap();
    assert_eq!(status.state, NodeState::Draining);
    let refused =
        switchboard_sfu_client::Participant::join(sfu.api.clone(), "r", "carol", publishing(av("carol"))).await;
    let err = refused.err().expect("a draining SFU refuses newcomers");
    assert_eq!(err.code(), Some(ErrorCode::Draining), "{err:#}");
    alice.wait_event("the drain notice", WAIT, |e| matches!(e, switchboard_sfu_api::Event::Draining)).await.unwrap();
    // Those already in keep their media.
    let b0 = bob.received().get("alice-cam").map(|t| t.packets).unwrap_or(0);
    bob.wait_until("media while draining", WAIT, |rx| rx.get("alice-cam").is_some_and(|t| t.packets > b0 + 30))
        .await
        .unwrap();
    let (ready, _) = sfu.api.get_text("/readyz").await.unwrap();
    assert_eq!(ready, 200, "a draining SFU still serves its participants");
    alice.leave().await.unwrap();
    let status: NodeStatus = sfu.api.get(&format!("{}/v1/status", sfu.api.base)).await.unwrap();
    assert_eq!(status.state, NodeState::Draining, "one participant is left");
    bob.leave().await.unwrap();
    let status: NodeStatus = sfu.api.get(&format!("{}/v1/status", sfu.api.base)).await.unwrap();
    assert_eq!(status.state, NodeState::Drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_when_the_last_participant_leaves() {
    let _slot = media_slot().await;
    let mut sfu = SfuProcess::start("sfu-sigterm");
    let alice = join(&sfu.api, "r", "alice", av("alice")).await;
    sfu.sigterm();
    alice.wait_event("the drain notice", WAIT, |e| matches!(e, switchboard_sfu_api::Event::Draining)).await.unwrap();
    assert!(sfu.wait_exit(Duration::from_millis(500)).is_none(), "the SFU waits for its participant");
    alice.leave().await.unwrap();
    let status = sfu.wait_exit(Duration::from_secs(10)).expect("the SFU exits once drained");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_and_an_edge_relay_one_meeting_across_two_processes() {
    let _slot = media_slot().await;
    let origin = SfuProcess::start("origin");
    let edge = SfuProcess::start("edge");
    // The first joins of a meeting arrive together (through several signaling
    // replicas), each asking the edge to relay: every call succeeds, one relay starts.
    let relay_url = edge.api.url(switchboard_sfu_api::paths::RELAY, "town-hall", "", "");
    let request = switchboard_sfu_api::RelayRequest { origin: origin.api.base.clone() };
    let asked =
        futures::future::join_all((0..8).map(|_| edge.api.post::<_, serde_json::Value>(&relay_url, &request))).await;
    for answer in asked {
        answer.expect("every concurrent relay request succeeds");
    }
    let alice = join(&origin.api, "town-hall", "alice", av("alice")).await;
    let bob = join(&edge.api, "town-hall", "bob", av("bob")).await;
    let carol = join(&edge.api, "town-hall", "carol", vec![Publish::audio("carol-mic")]).await;
    alice
        .wait_until("bob's and carol's media through the edge", WAIT, |rx| {
            ["bob-mic", "bob-cam", "carol-mic"].iter().all(|t| rx.get(*t).is_some_and(|r| r.packets > 20))
        })
        .await
        .unwrap();
    bob.wait_until("alice's media through the origin, carol's locally", WAIT, |rx| {
        ["alice-mic", "alice-cam", "carol-mic"].iter().all(|t| rx.get(*t).is_some_and(|r| r.packets > 20))
    })
    .await
    .unwrap();
    assert_eq!(bob.received()["alice-cam"].publisher, "alice", "relayed tracks keep their publisher");
    assert_eq!(alice.received()["bob-cam"].publisher, "bob");
    bob.wait_event("alice announced on the edge", WAIT, |e| {
        matches!(e, switchboard_sfu_api::Event::TrackPublished { participant, track, .. }
            if participant == "alice" && track == "alice-cam")
    })
    .await
    .unwrap();
    // Each track crosses the link once: the origin sees the edge as one relay participant.
    let status: switchboard_sfu_api::RoomStatus =
        origin.api.get(&origin.api.url(switchboard_sfu_api::paths::ROOM, "town-hall", "", "")).await.unwrap();
    assert_eq!(status.participants, vec!["alice", "relay-edge"]);
    assert_eq!(status.tracks.len(), 5);
    assert!(!alice.received().contains_key("alice-cam"), "no echo of alice's own track");
    drop(carol);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_garbage_udp_is_dropped_while_everyone_keeps_media() {
    let _slot = media_slot().await;
    use switchboard_sfu_api::{ApiError, ErrorCode, paths};
    let sfu = SfuProcess::start("sfu-garbage");
    let alice = join(&sfu.api, "r", "alice", av("alice")).await;
    let bob = join(&sfu.api, "r", "bob", av("bob")).await;
    bob.wait_until("alice's video", WAIT, |rx| rx.get("alice-cam").is_some_and(|t| t.packets > 20)).await.unwrap();

    let expect = |(status, body): (u16, String), want_status: u16, want: ErrorCode| {
        let e: ApiError = serde_json::from_str(&body).unwrap_or_else(|_| panic!("an ApiError body, got {body}"));
        assert_eq!((status, e.code), (want_status, want), "{}", e.message);
        assert!(!e.message.is_empty());
        e.message
    };
    let api = &sfu.api;
    let join_url = api.url(paths::PARTICIPANTS, "r", "", "");
    let m = expect(
        api.post_raw(&join_url, r#"{"participantId": "eve", "offer": "this is not sdp"}"#).await.unwrap(),
        400,
        ErrorCode::InvalidSdp,
    );
    assert!(m.contains("SDP"), "{m}");
    expect(
        api.post_raw(
            &join_url,
            r#"{"participantId": "eve", "offer": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"}"#,
        )
        .await
        .unwrap(),
        400,
        ErrorCode::InvalidSdp,
    );
    let m = expect(api.post_raw(&join_url, "{not json").await.unwrap(), 400, ErrorCode::BadRequest);
    assert!(m.contains("body"), "{m}");
    expect(api.post_raw(&join_url, r#"{"participantId": "has spaces"}"#).await.unwrap(), 400, ErrorCode::BadRequest);
    expect(api.post_raw(&join_url, r#"{"participantId": "alice"}"#).await.unwrap(), 409, ErrorCode::AlreadyJoined);
    let events_unknown_room = format!("{}?waitMs=0", api.url(paths::EVENTS, "nowhere", "alice", ""));
    let r = api.get::<serde_json::Value>(&events_unknown_room).await.unwrap_err();
    assert_eq!(r.code(), Some(ErrorCode::UnknownRoom));
    let r = api
        .get::<serde_json::Value>(&format!("{}?waitMs=0", api.url(paths::EVENTS, "r", "mallory", "")))
        .await
        .unwrap_err();
    assert_eq!(r.code(), Some(ErrorCode::UnknownParticipant));
    let r = api
        .put::<_, serde_json::Value>(
            &api.url(paths::TRACK, "r", "alice", "no-such-track"),
            &serde_json::json!({"muted": true}),
        )
        .await
        .unwrap_err();
    assert_eq!(r.code(), Some(ErrorCode::UnknownTrack));
    expect(
        api.post_raw(&api.url(paths::SUBSCRIBER_ANSWER, "r", "alice", ""), r#"{"sdp": "garbage"}"#).await.unwrap(),
        400,
        ErrorCode::BadRequest,
    );
    expect(
        api.post_raw(
            &api.url(paths::CANDIDATE, "r", "alice", ""),
            r#"{"target": "subscriber", "candidate": "candidate:garbage"}"#,
        )
        .await
        .unwrap(),
        400,
        ErrorCode::BadRequest,
    );
    expect(
        api.post_raw(&api.url(paths::PUBLISHER_OFFER, "r", "alice", ""), r#"{"sdp": "nonsense"}"#).await.unwrap(),
        400,
        ErrorCode::InvalidSdp,
    );

    // Garbage at the media port: random bytes, fake STUN, fake RTP and DTLS-looking records.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..3000u32 {
        let mut junk: Vec<u8> = (0..(i % 1400 + 1)).map(|_| rand::random::<u8>()).collect();
        match i % 4 {
            0 => junk[0] = 0x00, // STUN-looking
            1 => junk[0] = 0x80, // RTP/RTCP-looking
            2 => junk[0] = 0x16, // DTLS handshake-looking
            _ => {}
        }
        let _ = socket.send_to(&junk, &sfu.media);
    }
    // Everyone keeps their media; a newcomer still gets in.
    let (a0, b0) = (alice.received()["bob-cam"].packets, bob.received()["alice-cam"].packets);
    bob.wait_until("media after the garbage", WAIT, |rx| rx["alice-cam"].packets > b0 + 60).await.unwrap();
    alice.wait_until("media after the garbage", WAIT, |rx| rx["bob-cam"].packets > a0 + 60).await.unwrap();
    let carol = join(&sfu.api, "r", "carol", vec![]).await;
    carol
        .wait_until("everyone's media", WAIT, |rx| {
            ["alice-cam", "bob-cam"].iter().all(|t| rx.get(*t).is_some_and(|r| r.packets > 20))
        })
        .await
        .unwrap();
    let (_, metrics) = sfu.api.get_text("/metrics").await.unwrap();
    assert!(metrics.contains("switchboard_sfu_api_errors_total{code=\"invalidSdp\"} 3"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_mute_unpublish_and_screen_share_through_the_api() {
    let _slot = media_slot().await;
    use switchboard_sfu_api::{Event, Source, SubscriptionRequest, paths};
    use switchboard_sfu_client::{JoinOptions, Participant};
    let sfu = SfuProcess::start("sfu-api");
    let screen = Publish { source: Source::ScreenShare, ..Publish::video("alice-screen") };
    let alice =
        join(&sfu.api, "r", "alice", vec![Publish::audio("alice-mic"), Publish::video("alice-cam"), screen]).await;
    // Bob picks what he receives.
    let bob = Participant::join(
        sfu.api.clone(),
        "r",
        "bob",
        JoinOptions { manual_subscribe: true, net: loopback(), ..Default::default() },
    )
    .await
    .unwrap();
    bob.wait_event(
        "alice's screen share announced",
        WAIT,
        |e| matches!(e, Event::TrackPublished { track, source: Source::ScreenShare, .. } if track == "alice-screen"),
    )
    .await
    .unwrap();
    // A track is published into the room when its first packets arrive.
    bob.wait_event(
        "alice's microphone announced",
        WAIT,
        |e| matches!(e, Event::TrackPublished { track, .. } if track == "alice-mic"),
    )
    .await
    .unwrap();
    let api = &sfu.api;
    let subscribe = |track: &'static str| {
        let url = api.url(paths::SUBSCRIPTION, "r", "bob", track);
        async move {
            api.put::<_, serde_json::Value>(&url, &SubscriptionRequest { max_height: Some(720), ..Default::default() })
                .await
        }
    };
    subscribe("alice-screen").await.unwrap();
    subscribe("alice-mic").await.unwrap();
    bob.wait_until("the screen share and the microphone", WAIT, |rx| {
        ["alice-screen", "alice-mic"].iter().all(|t| rx.get(*t).is_some_and(|r| r.packets > 20))
    })
    .await
    .unwrap();
    assert!(!bob.received().contains_key("alice-cam"), "not subscribed, not sent");
    assert_eq!(
        subscribe("nope").await.unwrap_err().code(),
        Some(switchboard_sfu_api::ErrorCode::UnknownTrack),
        "subscribing to a track that does not exist is refused"
    );

    // Alice mutes her microphone: bob's audio stops, everyone is told; unmute resumes it.
    let mute = |muted: bool| {
        let url = api.url(paths::TRACK, "r", "alice", "alice-mic");
        async move { api.put::<_, serde_json::Value>(&url, &switchboard_sfu_api::MuteRequest { muted }).await }
    };
    mute(true).await.unwrap();
    bob.wait_event(
        "the mute",
        WAIT,
        |e| matches!(e, Event::TrackMuted { track, muted: true, .. } if track == "alice-mic"),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // packets already in flight
    let muted_at = bob.received()["alice-mic"].packets;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bob.received()["alice-mic"].packets, muted_at, "nothing forwarded while muted");
    mute(false).await.unwrap();
    bob.wait_until("audio after unmute", WAIT, |rx| rx["alice-mic"].packets > muted_at + 10).await.unwrap();

    // Unsubscribe stops the screen share; unpublish removes the microphone for everyone.
    let _: serde_json::Value = api.delete(&api.url(paths::SUBSCRIPTION, "r", "bob", "alice-screen")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let screen_at = bob.received()["alice-screen"].packets;
    let _: serde_json::Value = api.delete(&api.url(paths::TRACK, "r", "alice", "alice-mic")).await.unwrap();
    bob.wait_event(
        "the unpublish",
        WAIT,
        |e| matches!(e, Event::TrackUnpublished { track, .. } if track == "alice-mic"),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(bob.received()["alice-screen"].packets <= screen_at + 2, "unsubscribed: the screen share stopped");
    let status: switchboard_sfu_api::RoomStatus = api.get(&api.url(paths::ROOM, "r", "", "")).await.unwrap();
    let tracks: Vec<&str> = status.tracks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(tracks, vec!["alice-cam", "alice-screen"]);
    assert_eq!(status.subscriptions, 0);
    drop(alice);
}

/// Whose audio each of `people` received in `window`: per listener, the publishers of
/// the audio tracks that delivered at least a third of their 50 packets a second.
async fn heard_over(people: &[Participant], window: Duration) -> Vec<Vec<String>> {
    let before: Vec<_> = people.iter().map(|p| p.received()).collect();
    tokio::time::sleep(window).await;
    let floor = (window.as_secs_f64() * 50.0 / 3.0) as u64;
    people
        .iter()
        .zip(before)
        .map(|(p, before)| {
            let mut who: Vec<String> = p
                .received()
                .into_iter()
                .filter(|(id, r)| !r.video && r.packets - before.get(id).map_or(0, |b| b.packets) >= floor)
                .map(|(_, r)| r.publisher)
                .collect();
            who.sort();
            who
        })
        .collect()
}

/// Loudest-speaker audio on a real SFU process: twelve clients with open microphones,
/// each client hears exactly the three loudest of the others (by the RFC 6464 level in
/// their packets), and that set follows the levels as they change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_room_of_twelve_each_listener_receives_the_three_loudest_others() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start_with("sfu-loudest", &[("SWITCHBOARD_LOUDEST_SPEAKERS", "3")]);
    let names: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
    let joined = futures::future::join_all(names.iter().map(|p| {
        // Silent until told to talk.
        let mic = Publish { kind: PublishKind::Audio { level: 127 }, ..Publish::audio(&format!("{p}-mic")) };
        Participant::join(sfu.api.clone(), "all-hands", p, publishing(vec![mic]))
    }))
    .await;
    let people: Vec<Participant> = joined.into_iter().map(|p| p.expect("joins")).collect();
    let talk = |levels: &[(usize, u8)]| {
        for (i, p) in people.iter().enumerate() {
            let level = levels.iter().find(|(who, _)| *who == i).map_or(127, |(_, l)| *l);
            assert!(p.set_audio_level(&format!("{}-mic", p.id), level));
        }
    };
    // Everyone's microphone published and subscribed to by the eleven others.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status: switchboard_sfu_api::RoomStatus =
            sfu.api.get(&sfu.api.url(switchboard_sfu_api::paths::ROOM, "all-hands", "", "")).await.unwrap();
        if status.tracks.len() == 12 && status.subscriptions == 12 * 11 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let names_of = |idx: &[usize]| idx.iter().map(|i| names[*i].clone()).collect::<Vec<_>>();

    // p00, p01, p02 talk; the rest are silent.
    talk(&[(0, 20), (1, 25), (2, 30)]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heard = heard_over(&people, Duration::from_secs(2)).await;
    for (i, h) in heard.iter().enumerate().skip(3) {
        assert_eq!(h, &names_of(&[0, 1, 2]), "{} hears the three talkers", names[i]);
    }
    assert_eq!(heard[0], names_of(&[1, 2]), "a talker hears the other two, never itself");

    // p02 stops and p05 starts, loud: everyone but p05 hears p00, p01, p05.
    talk(&[(0, 20), (1, 25), (5, 10)]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heard = heard_over(&people, Duration::from_secs(2)).await;
    for (i, h) in heard.iter().enumerate().filter(|(i, _)| ![0, 1, 5].contains(i)) {
        assert_eq!(h, &names_of(&[0, 1, 5]), "{} follows the change", names[i]);
    }
    // p05's set keeps p02's place (nobody else talks to take it), silent now.
    assert_eq!(heard[5], names_of(&[0, 1, 2]));

    // Every client's downlink carries 3 voices, not 11: each packet in goes to three
    // listeners on average.
    let counts = || async {
        let forwarded = sample(&sfu, "switchboard_sfu_rtp_packets_forwarded_total").await;
        (forwarded, sample(&sfu, "switchboard_sfu_rtp_packets_received_total").await)
    };
    let (f0, r0) = counts().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (f1, r1) = counts().await;
    let per_packet = (f1 - f0) / (r1 - r0);
    assert!((2.5..3.5).contains(&per_packet), "each packet went to {per_packet} listeners (11 without it)");
    for p in people {
        p.leave().await.unwrap();
    }
}

/// Last-N as a client asks for it: a subscriber of ten cameras shows a grid page of
/// four; it pauses the six it does not show (`subscription {paused}`, as the browser
/// client does for tiles off screen) and receives exactly four videos; turning the
/// page, the next four flow and the first four stop, without renegotiation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_showing_four_of_ten_cameras_receives_four_videos() {
    let _slot = media_slot().await;
    use switchboard_sfu_api::{SubscriptionRequest, paths};
    let sfu = SfuProcess::start("sfu-last-n");
    let viewer = join(&sfu.api, "grid", "viewer", vec![]).await;
    let names: Vec<String> = (0..10).map(|i| format!("cam{i}")).collect();
    let joined = futures::future::join_all(names.iter().map(|p| {
        Participant::join(sfu.api.clone(), "grid", p, publishing(vec![Publish::video(&format!("{p}-video"))]))
    }))
    .await;
    let publishers: Vec<Participant> = joined.into_iter().map(|p| p.expect("joins")).collect();
    let tracks: Vec<String> = names.iter().map(|p| format!("{p}-video")).collect();
    viewer
        .wait_until("all ten cameras", WAIT, |rx| tracks.iter().all(|t| rx.get(t).is_some_and(|r| r.packets > 10)))
        .await
        .unwrap();
    let api = &sfu.api;
    let show = |page: std::ops::Range<usize>| {
        let tracks = tracks.clone();
        async move {
            for (i, t) in tracks.iter().enumerate() {
                let prefs = SubscriptionRequest { paused: !page.contains(&i), ..Default::default() };
                let url = api.url(paths::SUBSCRIPTION, "grid", "viewer", t);
                api.put::<_, serde_json::Value>(&url, &prefs).await.unwrap();
            }
        }
    };
    // Which cameras delivered video over a second and a half.
    let flowing = || async {
        let before = viewer.received();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = viewer.received();
        let mut on: Vec<usize> =
            (0..tracks.len()).filter(|i| after[&tracks[*i]].packets > before[&tracks[*i]].packets + 5).collect();
        on.sort();
        on
    };
    // Settling first: packets forwarded before a pause may still sit in the SFU's
    // per-subscription queue or in this process's sockets when the machine is busy.
    const SETTLE: Duration = Duration::from_secs(2);
    show(0..4).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(flowing().await, vec![0, 1, 2, 3], "the first page's four");
    show(4..8).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(flowing().await, vec![4, 5, 6, 7], "the next page's four, resumed at a keyframe");
    for p in publishers {
        p.leave().await.unwrap();
    }
}

/// Collects the Opus payloads of one received track (the mix), in arrival order.
#[derive(Default)]
struct MixTap {
    track: &'static str,
    payloads: std::sync::Mutex<Vec<(u16, Vec<u8>)>>,
}

impl switchboard_sfu_client::MediaSink for MixTap {
    fn rtp(&self, track: &switchboard_sfu_client::SinkTrack, packet: &webrtc::rtp::packet::Packet) {
        if track.id == self.track {
            self.payloads.lock().unwrap().push((packet.header.sequence_number, packet.payload.to_vec()));
        }
    }
    fn sender_report(&self, _: &switchboard_sfu_client::SinkTrack, _: u64, _: u32) {}
}

impl MixTap {
    /// The last `seconds` of what arrived, decoded (48 kHz mono; a lost packet decodes
    /// as the decoder's concealment).
    fn decoded_tail(&self, seconds: f64) -> Vec<f32> {
        let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let payloads = self.payloads.lock().unwrap().clone();
        let mut pcm = Vec::new();
        let mut frame = vec![0i16; 5760];
        for (_, p) in &payloads {
            let n = decoder.decode(p, &mut frame, false).expect("the mix decodes");
            pcm.extend(frame[..n].iter().map(|s| *s as f32 / 32768.0));
        }
        let keep = (seconds * 48_000.0) as usize;
        pcm.split_off(pcm.len().saturating_sub(keep))
    }
}

/// Magnitude of the spectrum of `pcm` (Hann window) around each frequency in `tones`
/// (the strongest bin within 10 Hz), and the median magnitude over 100–4,000 Hz (the
/// floor the tones are compared with).
fn spectrum_at(pcm: &[f32], tones: &[f32]) -> (Vec<f32>, f32) {
    use rustfft::{FftPlanner, num_complex::Complex};
    let n = pcm.len();
    let mut buf: Vec<Complex<f32>> = pcm
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let w = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / n as f32).cos();
            Complex::new(s * w, 0.0)
        })
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let hz_per_bin = 48_000.0 / n as f32;
    let magnitude = |lo: f32, hi: f32| -> Vec<f32> {
        ((lo / hz_per_bin) as usize..=(hi / hz_per_bin) as usize).map(|b| buf[b].norm()).collect()
    };
    let peaks = tones.iter().map(|f| magnitude(f - 10.0, f + 10.0).into_iter().fold(0.0, f32::max)).collect();
    let mut band = magnitude(100.0, 4_000.0);
    band.sort_by(f32::total_cmp);
    (peaks, band[band.len() / 2])
}

/// Mixed audio through a real SFU: three speakers send tones of 440, 1,000 and 1,800 Hz
/// (real Opus, with audio levels); the room is opened mixed. A listener receives one
/// stream, the mix, whose decoded spectrum holds all three tones; the 440 Hz speaker
/// receives the mix without its own voice (the other two tones, not 440 Hz); nobody
/// receives a speaker's own track.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_room_sends_each_listener_the_voices_without_its_own() {
    use switchboard_sfu_api::{RoomAudio, RoomRequest, RoomStatus, paths};
    use switchboard_sfu_client::encoded::{ToneClip, encode_clip};
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-mixed");
    let room_url = sfu.api.url(paths::ROOM, "mixed", "", "");
    let opened: RoomStatus = sfu.api.put(&room_url, &RoomRequest { audio: RoomAudio::Mixed }).await.unwrap();
    assert_eq!(opened.audio, RoomAudio::Mixed);
    // The room's audio is set for its life.
    let refused = sfu.api.put::<_, RoomStatus>(&room_url, &RoomRequest { audio: RoomAudio::Routed }).await.unwrap_err();
    assert!(format!("{refused:#}").contains("RoomConflict"), "{refused:#}");
    // Bad bodies are refused with the reason, and open nothing.
    for body in [serde_json::json!({"audio": "Stereo"}), serde_json::json!({"audio": "Mixed", "bitrate": 1})] {
        let other = sfu.api.url(paths::ROOM, "other", "", "");
        let e = sfu.api.put::<_, RoomStatus>(&other, &body).await.unwrap_err();
        assert!(format!("{e:#}").contains("BadRequest"), "{body}: {e:#}");
        assert!(sfu.api.get::<RoomStatus>(&other).await.is_err(), "{body} opened no room");
    }
    // No body (or null) opens a room as it is: this one stays mixed.
    let again: RoomStatus = sfu.api.put(&room_url, &()).await.unwrap();
    assert_eq!(again.audio, RoomAudio::Mixed);

    let dir = std::env::temp_dir().join(format!("sfu-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tones = [440u32, 1_000, 1_800];
    let mut speakers = Vec::new();
    let tap_440 = std::sync::Arc::new(MixTap { track: "~mix", ..Default::default() });
    for (i, f) in tones.iter().enumerate() {
        let clip = encode_clip(ToneClip::new(*f), 10, &dir.join(format!("{f}.ogg"))).expect("ffmpeg encodes a tone");
        let id = format!("s{i}");
        let mut opts = publishing(vec![Publish::encoded(&format!("{id}-mic"), clip)]);
        if i == 0 {
            opts.sink = Some(tap_440.clone());
        }
        let p = Participant::join(sfu.api.clone(), "mixed", &id, opts).await.expect("a speaker joins");
        p.set_audio_level(&format!("{id}-mic"), 30);
        speakers.push(p);
    }
    let listener_tap = std::sync::Arc::new(MixTap { track: "~mix", ..Default::default() });
    let listener = Participant::join(
        sfu.api.clone(),
        "mixed",
        "listener",
        JoinOptions { sink: Some(listener_tap.clone()), ..publishing(vec![]) },
    )
    .await
    .unwrap();
    listener
        .wait_until("two seconds of the mix", WAIT, |rx| rx.get("~mix").is_some_and(|t| t.packets > 150))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The listener: one stream, the mix, no voice itself.
    let received = listener.received();
    let audio: Vec<&String> = received.keys().collect();
    assert_eq!(audio, ["~mix"], "a listener receives only the mix");
    let (peaks, floor) = spectrum_at(&listener_tap.decoded_tail(1.0), &[440.0, 1_000.0, 1_800.0]);
    println!("listener's mix: peaks {peaks:?} at {tones:?} Hz, floor {floor:.3}");
    for (f, p) in tones.iter().zip(&peaks) {
        assert!(*p > 30.0 * floor, "{f} Hz in the listener's mix: {p:.1} vs floor {floor:.2} ({peaks:?})");
    }
    // The 440 Hz speaker: the other two tones, not its own.
    let own = speakers[0].received();
    assert!(own.keys().all(|k| k == "~mix"), "a speaker receives only the mix: {:?}", own.keys());
    let (peaks, floor) = spectrum_at(&tap_440.decoded_tail(1.0), &[440.0, 1_000.0, 1_800.0]);
    println!("the 440 Hz speaker's mix: peaks {peaks:?}, floor {floor:.3}");
    assert!(peaks[1] > 30.0 * floor && peaks[2] > 30.0 * floor, "the others' tones: {peaks:?}, floor {floor:.2}");
    assert!(peaks[0] < 0.05 * peaks[1], "its own 440 Hz is left out: {peaks:?}");
    let metrics = sfu.api.get_text("/metrics").await.unwrap().1;
    assert!(metrics.lines().any(|l| l.starts_with("switchboard_sfu_mix_frames_encoded_total ")), "the mix is counted");

    // Draining: the mixer, the SFU's own, holds nothing open once the people have left.
    use switchboard_sfu_api::{NodeState, NodeStatus};
    let status: NodeStatus = sfu.api.post(&format!("{}/v1/drain", sfu.api.base), &serde_json::json!({})).await.unwrap();
    assert_eq!(status.state, NodeState::Draining);
    listener.leave().await.unwrap();
    for s in speakers {
        s.leave().await.unwrap();
    }
    let status: NodeStatus = sfu.api.get(&format!("{}/v1/status", sfu.api.base)).await.unwrap();
    assert_eq!(status.state, NodeState::Drained, "the mixer does not hold the drain open");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A counter of the SFU's `/metrics` (0 when absent).
async fn counter(api: &switchboard_sfu_client::SfuApi, name: &str) -> f64 {
    let (_, text) = api.get_text("/metrics").await.unwrap();
    text.lines()
        .find(|l| l.split(' ').next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A subscriber that sends transport-wide congestion control feedback, as browsers do
/// (webrtc-rs's TWCC receiver here): the SFU numbers what it sends and estimates the
/// downlink itself from the feedback, starting at 300 kbps; once the feedback flows, the
/// subscriber's REMB (80 kbps, which holds a REMB-only subscriber on the 48 kbps layer:
/// the simulcast test above) no longer counts, and it receives the 168 kbps layer the
/// send-side estimate pays for. (Probing it further up needs a receiver that reads RTX:
/// the Chromium test `a_viewer_behind_a_narrowing_link…` shows it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sending_transport_feedback_gets_the_send_side_estimate_and_its_remb_is_ignored() {
    let _slot = media_slot().await;
    let sfu = SfuProcess::start("sfu-twcc");
    let _publisher = join(&sfu.api, "twcc", "host", vec![Publish::simulcast("host-cam")]).await;
    let net = switchboard_sfu_client::NetworkOptions { publisher_feedback: true, rtx: true, ..loopback() };
    let viewer =
        Participant::join(sfu.api.clone(), "twcc", "viewer", JoinOptions { net, ..Default::default() }).await.unwrap();
    viewer.set_downlink_cap(Some(80_000));
    viewer
        .wait_until("the middle layer", WAIT, |rx| {
            rx.get("host-cam").is_some_and(|t| t.last_layer == Some(1) && t.packets_by_layer[1] > 60)
        })
        .await
        .unwrap();
    let track = &viewer.received()["host-cam"];
    assert!(track.layer_switches.iter().all(|(_, _, key)| *key), "switches on keyframes: {:?}", track.layer_switches);
    assert_eq!(track.ssrcs.len(), 1, "one SSRC");
    assert_eq!(track.discontinuities, 0);
    assert!(counter(&sfu.api, "switchboard_sfu_transport_feedbacks_total").await > 10.0);
}
