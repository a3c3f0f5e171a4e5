//! Transport-wide congestion control on a subscriber's connection: the SFU numbers every
//! packet it sends there (the transport-cc header extension, one sequence for all of the
//! connection's tracks), reads the subscriber's TWCC feedback, and keeps the send-side
//! estimate ([`switchboard_sfu_core::bwe`]) that chooses its layers.
//!
//! webrtc-rs's own TWCC sender interceptor numbers packets too, but hides the numbers and
//! send times the estimate needs; [`crate::subscriber_track::SubscriberTrack`] numbers
//! them here instead, as it writes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use switchboard_sfu_core::bwe::{Reported, SendSideBwe};
use tokio::sync::Notify;
use webrtc::rtcp::transport_feedbacks::transport_layer_cc::{PacketStatusChunk, SymbolTypeTcc, TransportLayerCc};

/// Packets one feedback may report; more is not a browser's feedback (libwebrtc sends a
/// few hundred at most) and the rest is ignored.
pub const MAX_REPORTED: usize = 4096;
/// An estimate this much away from the one the room has is passed on at once; smaller
/// changes wait for [`REFRESH`].
const CHANGE: f64 = 0.05;
const REFRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// Packets leave at most this many times the estimate: a keyframe forwarded in one
/// burst would overflow a shallow bottleneck queue and be lost whole, which is a freeze.
/// libwebrtc paces its own encoder's output at 2.5 times; an SFU forwards keyframes sized
/// for the publisher's uplink, and its estimate of an application-limited path can run
/// above the bottleneck (up to 1.5 times what was acknowledged), so it paces closer.
/// The layers the ladder chooses fit 0.9 of the estimate, so 1.5 times still drains
/// their average with room to spare.
const PACING_FACTOR: f64 = 1.5;
/// A packet whose turn is this close goes at once (a sleep costs more than it saves).
const PACING_SLACK: Duration = Duration::from_millis(2);
/// Unused sending time a quiet connection may save up for a burst.
const PACING_BURST: Duration = Duration::from_millis(5);
/// The pacer smooths bursts, it does not throttle: when what waits would take longer than
/// this to leave (media above the paced rate, the estimate too low for a video that
/// cannot step down), the debt is dropped and packets go at once.
const PACING_BACKLOG: Duration = Duration::from_millis(100);

/// One subscriber connection's numbering and estimate.
#[derive(Debug, Default)]
pub struct TransportCc {
    bwe: Mutex<SendSideBwe>,
    /// The estimate last passed to the room, and when.
    passed: Mutex<Option<(u64, Instant)>>,
    /// Wakes the prober when there may be a probe to send.
    pub wake: Notify,
    /// Whether a video on this connection has a retransmission stream (RTX): probes
    /// need one.
    rtx: AtomicBool,
    /// When the pacer's next packet may leave.
    pacer: Mutex<Option<Instant>>,
}

impl TransportCc {
    pub fn new() -> Self {
        Self::default()
    }

    /// Numbers a packet of `size` bytes that leaves now.
    pub fn on_sent(&self, size: usize) -> u16 {
        self.bwe.lock().unwrap().on_sent(size, Instant::now())
    }

    /// How long a packet of `size` bytes waits for its turn at [`PACING_FACTOR`] times
    /// the estimate. Audio
    /// (`wait: false`) never waits, but its time counts against the video behind it.
    pub fn pace(&self, size: usize, wait: bool) -> Duration {
        // Paced only where the ladder keeps the media within the estimate (it probes, so
        // a video that does not fit pauses): elsewhere a video that cannot step down would
        // be throttled to the estimate instead of sent.
        // One look at the estimate per packet (this runs on every write).
        let rate = {
            let bwe = self.bwe.lock().unwrap();
            if !self.probes_with(&bwe) {
                return Duration::ZERO;
            }
            bwe.estimate() as f64 * PACING_FACTOR
        };
        let now = Instant::now();
        let mut next = self.pacer.lock().unwrap();
        let start = next.map_or(now, |t| t.max(now - PACING_BURST));
        let start = if start.saturating_duration_since(now) > PACING_BACKLOG { now } else { start };
        let slot = if wait { start } else { now };
        *next = Some(start + Duration::from_secs_f64(size as f64 * 8.0 / rate));
        let delay = slot.saturating_duration_since(now);
        if delay <= PACING_SLACK { Duration::ZERO } else { delay }
    }

    pub fn set_rtx(&self) {
        self.rtx.store(true, Ordering::Relaxed);
    }

    /// Whether the estimate can probe for more (feedback arrives, probes have a
    /// retransmission stream to go on, and one has come back): only then may a video it
    /// cannot carry pause.
    pub fn probes(&self) -> bool {
        self.probes_with(&self.bwe.lock().unwrap())
    }

    fn probes_with(&self, bwe: &SendSideBwe) -> bool {
        self.rtx.load(Ordering::Relaxed) && bwe.has_feedback() && bwe.probe_answered()
    }

    /// Whether the subscriber has sent any feedback: until then its REMB (if any) is the
    /// estimate.
    pub fn has_feedback(&self) -> bool {
        self.bwe.lock().unwrap().has_feedback()
    }

    pub fn estimate(&self) -> u64 {
        self.bwe.lock().unwrap().estimate()
    }

    /// Takes a feedback; returns the estimate when the room should hear it (it moved by
    /// [`CHANGE`], or [`REFRESH`] passed).
    pub fn on_feedback(&self, feedback: &TransportLayerCc) -> Option<u64> {
        let now = Instant::now();
        let estimate = {
            let mut bwe = self.bwe.lock().unwrap();
            bwe.on_feedback(&reported(feedback), now);
            bwe.estimate()
        };
        let mut passed = self.passed.lock().unwrap();
        let due = passed.is_none_or(|(bps, at)| {
            (estimate as f64 - bps as f64).abs() >= CHANGE * bps as f64 || now.duration_since(at) >= REFRESH
        });
        due.then(|| {
            *passed = Some((estimate, now));
            estimate
        })
    }

    /// What the subscriber could use; probing starts when that is more than the estimate.
    pub fn set_wanted(&self, bps: u64) {
        let bps = if self.rtx.load(Ordering::Relaxed) { bps } else { 0 };
        let more = {
            let mut bwe = self.bwe.lock().unwrap();
            bwe.set_wanted(bps);
            bps > bwe.estimate()
        };
        if more {
            self.wake.notify_one();
        }
    }

    /// Probe bytes to send now, and when to ask again (`None`: when woken).
    /// Whether a probe cluster is sending now (see [`SendSideBwe::probing`]).
    pub fn probing(&self) -> bool {
        self.bwe.lock().unwrap().probing(Instant::now())
    }

    pub fn padding(&self) -> (usize, Option<Instant>) {
        let now = Instant::now();
        let mut bwe = self.bwe.lock().unwrap();
        let due = bwe.padding_due(now);
        (due, bwe.next_padding(now))
    }
}

/// A TWCC feedback as (sequence number, arrival in microseconds) per reported packet,
/// `None` for one not received. At most [`MAX_REPORTED`]; a status without a delta left
/// ends the list (a malformed feedback reports what it can).
pub fn reported(feedback: &TransportLayerCc) -> Vec<Reported> {
    let count = usize::from(feedback.packet_status_count).min(MAX_REPORTED);
    let mut symbols = Vec::with_capacity(count);
    for chunk in &feedback.packet_chunks {
        match chunk {
            PacketStatusChunk::RunLengthChunk(run) => {
                let n = usize::from(run.run_length).min(count - symbols.len());
                symbols.extend(std::iter::repeat_n(run.packet_status_symbol, n));
            }
            PacketStatusChunk::StatusVectorChunk(vector) => {
                symbols.extend(vector.symbol_list.iter().take(count - symbols.len()).copied());
            }
        }
        if symbols.len() >= count {
            break;
        }
    }
    // The reference time counts 64 ms; deltas are in microseconds.
    let mut arrival = i64::from(feedback.reference_time & 0x00ff_ffff) * 64_000;
    let mut deltas = feedback.recv_deltas.iter();
    let mut out = Vec::with_capacity(symbols.len());
    for (i, symbol) in symbols.into_iter().enumerate() {
        let seq = feedback.base_sequence_number.wrapping_add(i as u16);
        match symbol {
            SymbolTypeTcc::PacketReceivedSmallDelta | SymbolTypeTcc::PacketReceivedLargeDelta => {
                let Some(delta) = deltas.next() else { break };
                arrival += delta.delta.clamp(-8_192_000, 16_384_000);
                out.push((seq, Some(arrival)));
            }
            _ => out.push((seq, None)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use webrtc::rtcp::transport_feedbacks::transport_layer_cc::{RecvDelta, RunLengthChunk, StatusChunkTypeTcc};
    use webrtc::util::{Marshal, Unmarshal};

    use super::*;

    fn run(symbol: SymbolTypeTcc, n: u16) -> PacketStatusChunk {
        PacketStatusChunk::RunLengthChunk(RunLengthChunk {
            type_tcc: StatusChunkTypeTcc::RunLengthChunk,
            packet_status_symbol: symbol,
            run_length: n,
        })
    }

    fn delta(us: i64) -> RecvDelta {
        let small = (0..=63_750).contains(&us);
        RecvDelta {
            type_tcc_packet: if small {
                SymbolTypeTcc::PacketReceivedSmallDelta
            } else {
                SymbolTypeTcc::PacketReceivedLargeDelta
            },
            delta: us,
        }
    }

    #[test]
    fn a_feedback_reads_as_arrivals_per_sequence_number_across_the_wrap() {
        let fb = TransportLayerCc {
            base_sequence_number: 65_534,
            packet_status_count: 5,
            reference_time: 10,
            packet_chunks: vec![
                run(SymbolTypeTcc::PacketReceivedSmallDelta, 2),
                run(SymbolTypeTcc::PacketNotReceived, 1),
                run(SymbolTypeTcc::PacketReceivedLargeDelta, 2),
            ],
            recv_deltas: vec![delta(1_000), delta(250), delta(-2_000), delta(70_000)],
            ..Default::default()
        };
        // Through the wire format and back, as the SFU receives it.
        let fb = TransportLayerCc::unmarshal(&mut fb.marshal().unwrap()).unwrap();
        let base = 640_000;
        assert_eq!(
            reported(&fb),
            vec![
                (65_534, Some(base + 1_000)),
                (65_535, Some(base + 1_250)),
                (0, None),
                (1, Some(base - 750)),
                (2, Some(base + 69_250)),
            ]
        );
    }

    #[test]
    fn a_hostile_feedback_is_bounded() {
        // Claims 65,535 packets with one run and no deltas: the statuses past the deltas
        // are not invented.
        let fb = TransportLayerCc {
            packet_status_count: u16::MAX,
            packet_chunks: vec![run(SymbolTypeTcc::PacketReceivedSmallDelta, 8_191)],
            recv_deltas: vec![delta(100)],
            ..Default::default()
        };
        assert_eq!(reported(&fb), vec![(0, Some(100))]);
        let fb = TransportLayerCc {
            packet_status_count: u16::MAX,
            packet_chunks: (0..20).map(|_| run(SymbolTypeTcc::PacketNotReceived, 8_191)).collect(),
            ..Default::default()
        };
        assert_eq!(reported(&fb).len(), MAX_REPORTED);
    }
}
