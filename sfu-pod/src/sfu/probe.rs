//! Probing a subscriber's path for more bandwidth: while the send-side estimate
//! ([`crate::transport_cc`]) runs a probe cluster, the subscriber's video subscriptions
//! send copies of their latest packets again, enough to reach the cluster's rate. A
//! receiver drops a duplicate; the transport-wide numbers and send times tell the
//! estimate what the path carried. webrtc-rs has no RTX and its RTP marshalling caps
//! padding at a few bytes, so copies of media are the padding (libwebrtc's "payload
//! padding" does the same on its RTX stream).

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard_sfu_api::Source;

use super::forward::Sink;
use super::peer::Peer;
use crate::metrics::Metrics;

/// Longest the prober sleeps without being woken (a changed estimate may make a probe due).
const IDLE: Duration = Duration::from_secs(1);

/// Runs for as long as the peer: sends what each probe cluster asks for.
pub(super) async fn run_prober(peer: Weak<Peer>, metrics: Metrics) {
    loop {
        let Some(p) = peer.upgrade() else { return };
        if p.closed.load(Ordering::SeqCst) {
            return;
        }
        let (due, next) = p.transport.padding();
        if due > 0 {
            let sent = send_probe(&p, due);
            tracing::trace!(peer = %p.id, due, sent, "probe");
            metrics.probe_bytes.inc_by(sent as u64);
        }
        let wait = next.map_or(IDLE, |t| t.saturating_duration_since(Instant::now())).min(IDLE);
        let transport = p.transport.clone();
        drop(p);
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
            _ = transport.wake.notified() => {}
        }
    }
}

/// Spreads `bytes` of copies over the peer's video subscriptions; returns the bytes queued.
fn send_probe(peer: &Peer, bytes: usize) -> usize {
    let Some(room) = peer.room.upgrade() else { return 0 };
    let videos: Vec<Sink> = peer
        .senders
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, (_, d))| matches!(d.source, Source::Camera | Source::ScreenShare))
        .filter_map(|(id, _)| room.sink(*id))
        .collect();
    if videos.is_empty() {
        return 0;
    }
    let share = bytes.div_ceil(videos.len());
    videos.iter().map(|sink| sink.probe(share)).sum()
}
