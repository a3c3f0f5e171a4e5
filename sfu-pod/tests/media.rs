//! Real webrtc-rs peers against real sfu-pod processes on loopback.

mod common;

use std::time::Duration;

use common::*;
use switchboard_sfu_client::Publish;

fn av(p: &str) -> Vec<Publish> {
    vec![Publish::audio(&format!("{p}-mic")), Publish::video(&format!("{p}-cam"))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_each_receive_the_others_audio_and_video() {
    let sfu = SfuProcess::start("sfu-a");
    let mut people = Vec::new();
    for p in ["alice", "bob", "carol"] {
        people.push(join(&sfu.api, "standup", p, av(p)).await);
    }
    for me in &people {
        let others: Vec<String> =
            ["alice", "bob", "carol"].iter().filter(|p| **p != me.id).flat_map(|p| [format!("{p}-mic"), format!("{p}-cam")]).collect();
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
    let status: switchboard_sfu_api::RoomStatus = sfu.api.get(&sfu.api.url(switchboard_sfu_api::paths::ROOM, "standup", "", "")).await.unwrap();
    assert_eq!(status.participants, vec!["alice", "bob", "carol"]);
    assert_eq!(status.tracks.len(), 6);
    assert_eq!(status.subscriptions, 12);
    let metrics = reqwest_get(&format!("{}/metrics", sfu.api.base)).await;
    assert!(metrics.contains("switchboard_sfu_rtp_packets_forwarded_total"), "{metrics}");
    for p in people {
        p.leave().await.unwrap();
    }
    let status: switchboard_sfu_api::NodeStatus = sfu.api.get(&format!("{}/v1/status", sfu.api.base)).await.unwrap();
    assert_eq!(status.participants, 0);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

async fn reqwest_get(url: &str) -> String {
    let api = switchboard_sfu_client::SfuApi::new("");
    let _ = api;
    let out = std::process::Command::new("curl").arg("-s").arg(url).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}
