//! Media quality as the subscribers see it, from the RTCP receiver reports they send
//! about each track the SFU forwards to them (RFC 3550 §6.4.2): the fraction of packets
//! lost since their last report, the interarrival jitter, and the round trip from our
//! sender report to their receiver report.
//!
//! Aggregated per SFU as histograms, with no participant or track label: a pool's
//! quality is the sum of its pods' histograms, and a meeting of 1,000 adds no series.
//! With them, the simulcast layer each video subscription is switched to (0 = lowest),
//! one observation per switch: a pool whose switches go mostly to layer 0 is short of
//! bandwidth somewhere.
//! Relay links between SFUs are left out: they are not anyone's experience.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use webrtc::rtcp::reception_report::ReceptionReport;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One report block, in base units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quality {
    /// Fraction of packets lost since the previous report, 0 to 1.
    pub loss_ratio: f64,
    /// Interarrival jitter.
    pub jitter_seconds: f64,
    /// None until the subscriber has received one of our sender reports.
    pub round_trip_seconds: Option<f64>,
}

/// The middle 32 bits of the NTP timestamp of `t` (16.16 fixed point seconds), the unit
/// of a report's LSR and DLSR.
pub fn ntp_middle(t: SystemTime) -> u32 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs() + NTP_UNIX_OFFSET;
    let fraction = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (((seconds & 0xffff) << 16) | (fraction >> 16)) as u32
}

/// Reads one block. `clock_rate` is the track's RTP clock (jitter is in its units);
/// `arrival` is [`ntp_middle`] of when the report arrived.
pub fn from_block(block: &ReceptionReport, clock_rate: u32, arrival: u32) -> Quality {
    let round_trip_seconds = (block.last_sender_report != 0).then(|| {
        // RFC 3550 §6.4.1: A - LSR - DLSR, in 1/65536 s, modulo 2^32.
        let rtt = arrival.wrapping_sub(block.last_sender_report).wrapping_sub(block.delay);
        f64::from(rtt) / 65536.0
    });
    Quality {
        loss_ratio: f64::from(block.fraction_lost) / 256.0,
        jitter_seconds: f64::from(block.jitter) / f64::from(clock_rate.max(1)),
        // A clock step or a forged report gives a "negative" (huge) round trip: dropped.
        round_trip_seconds: round_trip_seconds.filter(|s| *s < MAX_ROUND_TRIP_SECONDS),
    }
}

/// Longer round trips are not measurements (a clock step, a garbled report).
const MAX_ROUND_TRIP_SECONDS: f64 = 60.0;

/// The SFU's quality histograms.
#[derive(Clone)]
pub struct QualityMetrics {
    pub loss: Histogram,
    pub jitter: Histogram,
    pub round_trip: Histogram,
    pub layer: Histogram,
}

impl QualityMetrics {
    /// Registers the histograms (names under the registry's prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let loss = Histogram::new([0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]);
        let jitter = Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16]);
        let round_trip = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6]);
        registry.register(
            "subscriber_loss_ratio",
            "Fraction of packets lost per receiver report from subscribers (0 to 1)",
            loss.clone(),
        );
        registry.register_with_unit(
            "subscriber_jitter",
            "Interarrival jitter per receiver report from subscribers",
            Unit::Seconds,
            jitter.clone(),
        );
        registry.register_with_unit(
            "subscriber_round_trip",
            "Round trip from the SFU's sender report to a subscriber's receiver report",
            Unit::Seconds,
            round_trip.clone(),
        );
        // Layers are 0, 1, 2 (three simulcast encodings; more would count in +Inf).
        let layer = Histogram::new([0.0, 1.0, 2.0]);
        registry.register(
            "subscription_layer",
            "Simulcast layer (0 = lowest) a video subscription is switched to, one observation per switch",
            layer.clone(),
        );
        Self { loss, jitter, round_trip, layer }
    }

    /// A subscription was switched to the layer at `position` (0 = lowest).
    pub fn layer_switched(&self, position: u8) {
        self.layer.observe(f64::from(position));
    }

    pub fn observe(&self, q: &Quality) {
        self.loss.observe(q.loss_ratio);
        self.jitter.observe(q.jitter_seconds);
        if let Some(rtt) = q.round_trip_seconds {
            self.round_trip.observe(rtt);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn block(fraction_lost: u8, jitter: u32, last_sender_report: u32, delay: u32) -> ReceptionReport {
        ReceptionReport { fraction_lost, jitter, last_sender_report, delay, ..Default::default() }
    }

    #[test]
    fn report_blocks_read_in_base_units() {
        // (case, block, clock rate, arrival, expected)
        let cases = [
            ("no loss, no sender report yet", block(0, 0, 0, 0), 90_000, 1 << 16, (0.0, 0.0, None)),
            ("a quarter lost", block(64, 0, 0, 0), 48_000, 1 << 16, (0.25, 0.0, None)),
            ("video jitter of 900 ticks is 10 ms", block(0, 900, 0, 0), 90_000, 1 << 16, (0.0, 0.01, None)),
            ("audio jitter of 480 ticks is 10 ms", block(0, 480, 0, 0), 48_000, 1 << 16, (0.0, 0.01, None)),
            // SR sent at 10 s, held 0.5 s, report back at 10.75 s: 250 ms round trip.
            ("round trip", block(0, 0, 10 << 16, 1 << 15), 90_000, (10 << 16) + (3 << 14), (0.0, 0.0, Some(0.25))),
            ("across the 16-bit seconds wrap", block(0, 0, 0xffff_0000, 0), 90_000, 0x0000_8000, (0.0, 0.0, Some(1.5))),
            (
                "a report from the future is not a round trip",
                block(0, 0, 20 << 16, 0),
                90_000,
                10 << 16,
                (0.0, 0.0, None),
            ),
        ];
        for (case, b, clock, arrival, (loss, jitter, rtt)) in cases {
            let q = from_block(&b, clock, arrival);
            assert_eq!((q.loss_ratio, q.jitter_seconds, q.round_trip_seconds), (loss, jitter, rtt), "{case}");
        }
    }

    #[test]
    fn ntp_middle_bits_count_sixteenths_of_seconds_since_1900() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        let expected = ((((NTP_UNIX_OFFSET + 1) & 0xffff) << 16) | 0x8000) as u32;
        assert_eq!(ntp_middle(t), expected);
        let later = ntp_middle(t + Duration::from_millis(250));
        assert_eq!(later.wrapping_sub(ntp_middle(t)), 1 << 14, "a quarter second is 16384");
    }

    #[test]
    fn histograms_take_every_block_and_round_trips_only_when_known() {
        let mut registry = Registry::with_prefix("t");
        let m = QualityMetrics::register(&mut registry);
        m.observe(&from_block(&block(26, 900, 0, 0), 90_000, 1 << 16));
        m.observe(&from_block(&block(0, 0, 10 << 16, 0), 90_000, (10 << 16) + (1 << 12)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("t_subscriber_loss_ratio_count 2"), "{text}");
        assert!(text.contains("t_subscriber_jitter_seconds_count 2"), "{text}");
        assert!(text.contains("t_subscriber_round_trip_seconds_count 1"), "{text}");
        m.layer_switched(0);
        m.layer_switched(2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("t_subscription_layer_bucket{le=\"0.0\"} 1"), "{text}");
        assert!(text.contains("t_subscription_layer_bucket{le=\"1.0\"} 1"), "{text}");
        assert!(text.contains("t_subscription_layer_bucket{le=\"2.0\"} 2"), "{text}");
    }
}
