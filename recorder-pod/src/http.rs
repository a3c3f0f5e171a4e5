//! `/healthz`, `/readyz` and `/metrics` of the recorder.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use axum::Router;
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::tracks::Totals;

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub tracks: Gauge,
    pub chunks: Counter<u64, AtomicU64>,
    pub bytes: Counter<u64, AtomicU64>,
    pub frames: Counter<u64, AtomicU64>,
    pub compose_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchboard_recorder");
        switchboard_metrics_exposition::build_info(&mut registry, env!("CARGO_PKG_VERSION"));
        let tracks = Gauge::default();
        let chunks = Counter::default();
        let bytes = Counter::default();
        let frames = Counter::default();
        let compose_duration = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register("tracks", "Tracks being recorded", tracks.clone());
        registry.register("chunks", "Chunk files opened", chunks.clone());
        registry.register_with_unit("media_written", "Encoded media bytes written", Unit::Bytes, bytes.clone());
        registry.register("frames", "Frames and audio packets written", frames.clone());
        registry.register_with_unit(
            "compose_duration",
            "Time ffmpeg took to composite a recording",
            Unit::Seconds,
            compose_duration.clone(),
        );
        Self { registry: Arc::new(registry), tracks, chunks, bytes, frames, compose_duration }
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

    /// `/metrics` for a request's Accept header: its Content-Type and body
    /// (OpenMetrics or the classic Prometheus text format, see `switchboard_metrics_exposition`).
    pub fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        switchboard_metrics_exposition::encode(&self.registry, accept)
    }
}

pub fn router(metrics: Metrics) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(|| async { "ok" })).route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let m = metrics.clone();
            async move {
                let (content_type, body) = m.render(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
                ([(CONTENT_TYPE, content_type)], body)
            }
        }),
    )
}
