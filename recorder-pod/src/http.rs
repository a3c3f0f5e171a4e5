//! `/healthz`, `/readyz` and `/metrics` of the recorder.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::tracks::Totals;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub tracks: Gauge,
    pub chunks: Counter<u64, AtomicU64>,
    pub bytes: Counter<u64, AtomicU64>,
    pub frames: Counter<u64, AtomicU64>,
    pub compose_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchboard_recorder");
        let tracks = Gauge::default();
        let chunks = Counter::default();
        let bytes = Counter::default();
        let frames = Counter::default();
        let compose_seconds = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register("tracks", "Tracks being recorded", tracks.clone());
        registry.register("chunks", "Chunk files opened", chunks.clone());
        registry.register("media_bytes", "Encoded media bytes written", bytes.clone());
        registry.register("frames", "Frames and audio packets written", frames.clone());
        registry.register("compose_seconds", "Time ffmpeg took to composite a recording", compose_seconds.clone());
        Self { registry: Arc::new(registry), tracks, chunks, bytes, frames, compose_seconds }
    }
}

impl Metrics {
    /// Brings the counters up to the recorder's totals.
    pub fn observe(&self, t: &Totals) {
        self.tracks.set(t.tracks as i64);
        let bump = |c: &Counter<u64, AtomicU64>, to: u64| {
            let now = c.get();
            if to > now {
                c.inc_by(to - now);
            }
        };
        bump(&self.chunks, t.chunks as u64);
        bump(&self.bytes, t.bytes);
        bump(&self.frames, t.frames);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("text encoding does not fail");
        out
    }
}

pub fn router(metrics: Metrics) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(|| async { "ok" })).route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { m.render() }
        }),
    )
}
