//! The baseline: one webrtc-rs peer sending straight to another in the same process,
//! with the same packets, so the SFU rows can say what the SFU itself adds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_sfu_client::media::{self, NetworkOptions, build_api};
use switchboard_sfu_client::participant::{now_us, parse_payload, synthetic_payload};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

async fn local_sdp(
    pc: &RTCPeerConnection,
    offer: bool,
) -> anyhow::Result<webrtc::peer_connection::sdp::session_description::RTCSessionDescription> {
    let desc = if offer { pc.create_offer(None).await? } else { pc.create_answer(None).await? };
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(desc).await?;
    let _ = gathered.recv().await;
    pc.local_description().await.ok_or_else(|| anyhow::anyhow!("no local description"))
}

/// (p50, p99) in milliseconds over `duration`.
pub async fn baseline(duration: Duration) -> anyhow::Result<(f64, f64)> {
    let net = NetworkOptions { loopback_only: true, ..Default::default() };
    let sender = build_api(&net)?.new_peer_connection(RTCConfiguration::default()).await?;
    let receiver = build_api(&net)?.new_peer_connection(RTCConfiguration::default()).await?;
    let track = Arc::new(TrackLocalStaticRTP::new(media::vp8(), "direct-cam".into(), "direct".into()));
    sender.add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>).await?;
    let latencies: Arc<Mutex<Vec<u32>>> = Arc::default();
    let sink = latencies.clone();
    receiver.on_track(Box::new(move |t, _, _| {
        let sink = sink.clone();
        Box::pin(async move {
            tokio::spawn(async move {
                while let Ok((p, _)) = t.read_rtp().await {
                    if let Some(info) = parse_payload(&p.payload) {
                        sink.lock().unwrap().push(now_us().saturating_sub(info.sent_us) as u32);
                    }
                }
            });
        })
    }));
    let offer = local_sdp(&sender, true).await?;
    receiver.set_remote_description(offer).await?;
    let answer = local_sdp(&receiver, false).await?;
    sender.set_remote_description(answer).await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / super::VIDEO_PPS as f64));
    let (mut seq, mut ts) = (0u16, 0u32);
    let end = tokio::time::Instant::now() + duration;
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let packet = webrtc::rtp::packet::Packet {
            header: webrtc::rtp::header::Header {
                version: 2,
                marker: true,
                sequence_number: seq,
                timestamp: ts,
                ..Default::default()
            },
            payload: synthetic_payload(true, seq == 0, 2, super::VIDEO_BYTES),
        };
        let _ = track.write_rtp(&packet).await;
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(90_000 / super::VIDEO_PPS);
    }
    let _ = sender.close().await;
    let _ = receiver.close().await;
    let mut v = latencies.lock().unwrap().clone();
    anyhow::ensure!(!v.is_empty(), "the direct connection carried nothing");
    v.sort_unstable();
    Ok((super::percentile(&v, 0.5), super::percentile(&v, 0.99)))
}
