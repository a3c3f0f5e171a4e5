//! Prometheus metrics of one SFU, served on `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub rooms: Gauge,
    pub participants: Gauge,
    pub published_tracks: Gauge,
    pub subscriptions: Gauge,
    pub packets_in: Counter,
    pub bytes_in: Counter,
    pub packets_out: Counter,
    pub bytes_out: Counter,
    pub keyframe_requests: Counter,
    pub layer_switches: Counter,
    pub queue_drops: Counter,
    pub retransmissions: Counter,
    pub transport_feedbacks: Counter,
    pub probe_bytes: Counter,
    pub mix_frames: Counter,
    pub api_errors: Family<CodeLabels, Counter>,
    pub heartbeat_failures: Counter,
    pub undeclared_tracks: Counter,
    /// Loss, jitter and round trip from subscribers' receiver reports (`quality.rs`).
    pub quality: crate::quality::QualityMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchboard_sfu");
        switchboard_metrics_exposition::build_info(&mut registry, env!("CARGO_PKG_VERSION"));
        macro_rules! reg {
            ($name:literal, $help:literal, $metric:expr) => {{
                let m = $metric;
                registry.register($name, $help, m.clone());
                m
            }};
            ($name:literal, $help:literal, $unit:expr, $metric:expr) => {{
                let m = $metric;
                registry.register_with_unit($name, $help, $unit, m.clone());
                m
            }};
        }
        let metrics = Self {
            registry: Arc::default(),
            rooms: reg!("rooms", "Rooms open on this SFU", Gauge::default()),
            participants: reg!("participants", "Participants connected (relays included)", Gauge::default()),
            published_tracks: reg!("published_tracks", "Tracks published into rooms", Gauge::default()),
            subscriptions: reg!("subscriptions", "Track subscriptions being forwarded", Gauge::default()),
            packets_in: reg!("rtp_packets_received", "RTP packets received from publishers", Counter::default()),
            bytes_in: reg!("rtp_received", "RTP bytes received from publishers", Unit::Bytes, Counter::default()),
            packets_out: reg!("rtp_packets_forwarded", "RTP packets forwarded to subscribers", Counter::default()),
            bytes_out: reg!("rtp_forwarded", "RTP bytes forwarded to subscribers", Unit::Bytes, Counter::default()),
            keyframe_requests: reg!("keyframe_requests", "PLIs sent to publishers", Counter::default()),
            layer_switches: reg!("layer_switches", "Simulcast layer switches made at keyframes", Counter::default()),
            retransmissions: reg!(
                "retransmissions",
                "Packets sent again because a subscriber NACKed them",
                Counter::default()
            ),
            transport_feedbacks: reg!(
                "transport_feedbacks",
                "Transport-wide congestion control feedbacks received from subscribers",
                Counter::default()
            ),
            probe_bytes: reg!(
                "probe",
                "Payload bytes sent again to probe a subscriber's path for more bandwidth",
                Unit::Bytes,
                Counter::default()
            ),
            mix_frames: reg!(
                "mix_frames_encoded",
                "Mixed-audio frames encoded (20 ms each; one per layer: the whole mix and each talker's mix without its voice)",
                Counter::default()
            ),
            queue_drops: reg!(
                "subscriber_queue_drops",
                "Packets dropped because a subscriber's send queue was full",
                Counter::default()
            ),
            api_errors: reg!("api_errors", "Internal API requests refused, by error code", Family::default()),
            heartbeat_failures: reg!("heartbeat_failures", "Lease renewals that failed", Counter::default()),
            undeclared_tracks: reg!(
                "undeclared_tracks",
                "Incoming tracks dropped because their publisher did not declare them (or may not publish)",
                Counter::default()
            ),
            quality: crate::quality::QualityMetrics::register(&mut registry),
        };
        Self { registry: Arc::new(registry), ..metrics }
    }
}

impl Metrics {
    /// `/metrics` for a request's Accept header: its Content-Type and body
    /// (OpenMetrics or the classic Prometheus text format, see `switchboard_metrics_exposition`).
    pub fn render(&self, accept: Option<&str>) -> (&'static str, String) {
        switchboard_metrics_exposition::encode(&self.registry, accept)
    }
}

/// What an SFU's own counter says it forwarded (`switchboard_sfu_rtp_packets_forwarded_total`,
/// read over its API; 0 when unreachable): the benchmarks' view of an SFU process.
pub async fn packets_forwarded(api: &switchboard_sfu_client::SfuApi) -> f64 {
    let Ok((_, text)) = api.get_text("/metrics").await else { return 0.0 };
    text.lines()
        .find(|l| l.starts_with("switchboard_sfu_rtp_packets_forwarded_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
