//! Send-side bandwidth estimation: how fast the SFU may send to one subscriber, from the
//! subscriber's transport-wide congestion control feedback (TWCC,
//! draft-holmer-rmcat-transport-wide-cc-extensions-01).
//!
//! Why send-side: the SFU knows when it sent each packet and how big it was; the
//! subscriber reports only when each arrived. Browsers stop sending REMB once
//! transport-cc is agreed, and a receiver-side estimate cannot see the SFU's own bursts
//! or its probes. REMB stays the estimate of subscribers that do not agree to
//! transport-cc (the driver decides which applies).
//!
//! The estimate is Google Congestion Control's (draft-ietf-rmcat-gcc-02), as libwebrtc
//! runs it:
//! * **delay-based**: packets sent within [`BURST`] of each other form a group; the
//!   growth of one-way delay from group to group is accumulated, smoothed, and its slope
//!   over the last [`TRENDLINE_WINDOW`] groups (a least-squares line) is compared with an
//!   adaptive threshold: above it the path is *overusing* (a queue builds), below its
//!   negative *underusing* (a queue drains), else *normal*;
//! * **rate control (AIMD)**: overuse cuts the estimate to [`BETA`] × the rate the
//!   subscriber acknowledged receiving, at most once per [`REDUCTION_INTERVAL`]; normal
//!   raises it by 8 % a second (additively, about a packet per response time, once it is
//!   near the link capacity measured at the last cut), never beyond 1.5 × the acknowledged
//!   rate: a sender that sends little learns nothing about more;
//! * **loss-based**: over [`LOSS_WINDOW_PACKETS`] reported packets, more than 10 % lost cuts
//!   the estimate by half the loss; under 2 % the loss cap lifts again at 8 % a second;
//!   in between it holds. The estimate is the lower of the two;
//! * **probing**: because the estimate cannot grow past what is sent, when the driver says
//!   the subscriber wants more ([`SendSideBwe::set_wanted`]) a short cluster is sent at
//!   twice the estimate (capped at the wanted rate), media and padding together; the
//!   rate the subscriber received the cluster at, when higher, becomes the estimate. A
//!   probe that finds more is followed at once by the next; one that does not waits
//!   [`PROBE_RETRY`].
//!
//! Like the rest of the core it does no IO and reads no clock: the driver numbers each
//! packet it sends through [`SendSideBwe::on_sent`], hands each feedback to
//! [`SendSideBwe::on_feedback`], and asks [`SendSideBwe::padding_due`] how many probe
//! bytes to send now.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Where a new subscriber's estimate starts (libwebrtc's default start rate).
pub const INITIAL_BPS: u64 = 300_000;
pub const MIN_BPS: u64 = 30_000;
pub const MAX_BPS: u64 = 20_000_000;
/// Packets sent this close together are one group for the delay detector.
const BURST: Duration = Duration::from_millis(5);
const TRENDLINE_WINDOW: usize = 20;
const TRENDLINE_SMOOTHING: f64 = 0.9;
const TRENDLINE_GAIN: f64 = 4.0;
/// Overuse must last this long (ms of sending) before it is acted on.
const OVERUSE_TIME_MS: f64 = 10.0;
/// On overuse the estimate falls to this share of the acknowledged rate.
const BETA: f64 = 0.85;
const REDUCTION_INTERVAL: Duration = Duration::from_millis(200);
/// Acknowledged (received) rate: bytes received over this much of the subscriber's clock.
const ACKED_WINDOW_US: i64 = 300_000;
/// How much later than they were sent the packets of one [`ACKED_WINDOW_US`] may arrive
/// from jitter alone before the spread counts as a queue.
const JITTER_SPREAD_US: i64 = 40_000;
const LOSS_WINDOW_PACKETS: usize = 20;
const LOSS_REDUCTION_INTERVAL: Duration = Duration::from_millis(300);
/// Sent packets remembered for feedback; older ones count as never acknowledged.
const HISTORY: Duration = Duration::from_secs(2);
const HISTORY_PACKETS: usize = 4096;
/// How long a probe cluster sends for.
const PROBE_DURATION: Duration = Duration::from_millis(60);
/// After a probe that found nothing more, the next waits this long.
pub const PROBE_RETRY: Duration = Duration::from_secs(2);
/// A cluster whose feedback has not come back by then is given up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_MIN_PACKETS: usize = 5;
/// Feedback this long after the last one follows an outage (the path went away, an ICE
/// restart): what was sent meanwhile was lost to the outage, not to congestion, and the
/// delays before it say nothing about the path after it.
const FEEDBACK_GAP: Duration = Duration::from_secs(1);
/// Enough bytes for the minimum of full-size packets and one more.
const PROBE_MIN_BYTES: u64 = 7_200;
/// A probe that came back at this share of its rate or more may go on at twice the new
/// estimate at once; below it the path is the limit, and the next probe waits.
const PROBE_CONTINUE: f64 = 0.7;

/// One packet a feedback reports: its transport-wide sequence number and when it arrived,
/// in microseconds of the subscriber's clock (any origin), or `None`: not received.
pub type Reported = (u16, Option<i64>);

/// The path's state as the delay detector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Normal,
    Overusing,
    Underusing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RateState {
    Hold,
    Increase,
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    size: u32,
    at: Instant,
    cluster: Option<u32>,
    report: Report,
}

/// What the feedback has said of a packet so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Report {
    Nothing,
    /// Reported not received (lost, or late: a later feedback may report it received).
    Missing,
    Received,
}

#[derive(Clone, Copy, Debug)]
struct Group {
    first_send: Instant,
    last_send: Instant,
    last_arrival_us: i64,
}

/// The delay-based overuse detector (trendline filter and adaptive threshold).
#[derive(Debug)]
struct Trendline {
    previous: Option<Group>,
    current: Option<Group>,
    first_arrival_us: Option<i64>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    window: VecDeque<(f64, f64)>,
    deltas: u32,
    trend: f64,
    threshold: f64,
    threshold_updated_us: Option<i64>,
    overuse_ms: f64,
    overuse_count: u32,
    usage: Usage,
}

impl Trendline {
    fn new() -> Self {
        Self {
            previous: None,
            current: None,
            first_arrival_us: None,
            accumulated_ms: 0.0,
            smoothed_ms: 0.0,
            window: VecDeque::new(),
            deltas: 0,
            trend: 0.0,
            threshold: 12.5,
            threshold_updated_us: None,
            overuse_ms: -1.0,
            overuse_count: 0,
            usage: Usage::Normal,
        }
    }

    /// One acknowledged packet, in send order.
    fn packet(&mut self, sent: Instant, arrival_us: i64) {
        match &mut self.current {
            Some(g) if sent.saturating_duration_since(g.first_send) <= BURST => {
                g.last_send = g.last_send.max(sent);
                g.last_arrival_us = g.last_arrival_us.max(arrival_us);
            }
            _ => {
                let done =
                    self.current.replace(Group { first_send: sent, last_send: sent, last_arrival_us: arrival_us });
                if let Some(done) = done {
                    if let Some(prev) = self.previous {
                        let send_ms = done.last_send.saturating_duration_since(prev.last_send).as_secs_f64() * 1e3;
                        let arrival_ms = done.last_arrival_us.saturating_sub(prev.last_arrival_us) as f64 / 1e3;
                        // Reordered groups say nothing about queues.
                        if arrival_ms >= 0.0 {
                            self.update(arrival_ms - send_ms, send_ms, done.last_arrival_us);
                        }
                    }
                    self.previous = Some(done);
                }
            }
        }
    }

    fn update(&mut self, delay_ms: f64, send_ms: f64, arrival_us: i64) {
        self.deltas = (self.deltas + 1).min(1000);
        self.accumulated_ms += delay_ms;
        self.smoothed_ms = TRENDLINE_SMOOTHING * self.smoothed_ms + (1.0 - TRENDLINE_SMOOTHING) * self.accumulated_ms;
        let first = *self.first_arrival_us.get_or_insert(arrival_us);
        self.window.push_back((arrival_us.saturating_sub(first) as f64 / 1e3, self.smoothed_ms));
        if self.window.len() > TRENDLINE_WINDOW {
            self.window.pop_front();
        }
        let previous_trend = self.trend;
        if self.window.len() == TRENDLINE_WINDOW
            && let Some(slope) = slope(&self.window)
        {
            self.trend = slope;
        }
        let modified = f64::from(self.deltas.min(60)) * self.trend * TRENDLINE_GAIN;
        if modified > self.threshold {
            if self.overuse_ms < 0.0 {
                self.overuse_ms = send_ms / 2.0;
            } else {
                self.overuse_ms += send_ms;
            }
            self.overuse_count += 1;
            if self.overuse_ms > OVERUSE_TIME_MS && self.overuse_count > 1 && self.trend >= previous_trend {
                self.overuse_ms = 0.0;
                self.overuse_count = 0;
                self.usage = Usage::Overusing;
            }
        } else if modified < -self.threshold {
            self.overuse_ms = -1.0;
            self.overuse_count = 0;
            self.usage = Usage::Underusing;
        } else {
            self.overuse_ms = -1.0;
            self.overuse_count = 0;
            self.usage = Usage::Normal;
        }
        self.adapt_threshold(modified, arrival_us);
    }

    /// The threshold follows the trend slowly when above it and faster when below, so a
    /// competing flow's steady queue does not read as overuse forever.
    fn adapt_threshold(&mut self, modified: f64, now_us: i64) {
        let last = *self.threshold_updated_us.get_or_insert(now_us);
        if modified.abs() > self.threshold + 15.0 {
            self.threshold_updated_us = Some(now_us);
            return;
        }
        let k = if modified.abs() < self.threshold { 0.039 } else { 0.0087 };
        let dt_ms = (now_us.saturating_sub(last) as f64 / 1e3).clamp(0.0, 100.0);
        self.threshold = (self.threshold + k * (modified.abs() - self.threshold) * dt_ms).clamp(6.0, 600.0);
        self.threshold_updated_us = Some(now_us);
    }
}

/// Least-squares slope of `points`.
fn slope(points: &VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(x, y), p| (x + p.0 / n, y + p.1 / n));
    let (num, den) =
        points.iter().fold((0.0, 0.0), |(num, den), p| (num + (p.0 - mx) * (p.1 - my), den + (p.0 - mx).powi(2)));
    (den > 0.0).then(|| num / den)
}

/// One probe cluster: what was sent and what came back.
#[derive(Debug)]
struct Cluster {
    id: u32,
    bps: u64,
    started: Instant,
    sent_packets: usize,
    sent_bytes: u64,
    first_send: Option<Instant>,
    last_send: Option<Instant>,
    last_size: u64,
    received: Vec<(i64, u64)>,
    reported: usize,
}

impl Cluster {
    /// A cluster sends for [`PROBE_DURATION`], or longer at a low rate so that it holds
    /// [`PROBE_MIN_BYTES`].
    fn sending(&self, now: Instant) -> bool {
        let least = Duration::from_secs_f64(PROBE_MIN_BYTES as f64 * 8.0 / self.bps.max(1) as f64);
        now < self.started + PROBE_DURATION.max(least)
    }

    /// The rate the path carried the cluster at, once enough of it is reported:
    /// `Some(None)` for a cluster that tells nothing (too much of it lost).
    fn result(&self, now: Instant) -> Option<Option<u64>> {
        if self.sending(now) || self.reported * 10 < self.sent_packets * 8 {
            return None;
        }
        if self.received.len() < PROBE_MIN_PACKETS || self.received.len() * 10 < self.sent_packets * 8 {
            return Some(None);
        }
        let (first, last) = (self.first_send?, self.last_send?);
        let send_s = last.saturating_duration_since(first).as_secs_f64();
        let mut received = self.received.clone();
        received.sort();
        // The receive rate over the later half of the cluster: a token bucket on the path
        // (a shaper, a policer) lets its first bytes through at once after an idle
        // moment, and only what follows them comes at the path's own rate.
        let total: u64 = received.iter().map(|r| r.1).sum();
        let mut before = 0;
        let half = received.iter().position(|r| {
            before += r.1;
            before * 2 >= total
        })?;
        let later = &received[half.min(received.len() - 2)..];
        let recv_s = later.last()?.0.saturating_sub(later[0].0) as f64 / 1e6;
        if send_s <= 0.0 || recv_s <= 0.0 {
            return Some(None);
        }
        let send_bps = (self.sent_bytes - self.last_size) as f64 * 8.0 / send_s;
        let recv_bps = (later.iter().map(|r| r.1).sum::<u64>() - later[0].1) as f64 * 8.0 / recv_s;
        // A receive rate well under the send rate is the path's limit; keep a margin below it.
        let bps = if recv_bps < 0.9 * send_bps { 0.95 * recv_bps } else { send_bps.min(recv_bps) };
        Some(Some(bps as u64))
    }
}

/// A subscriber's transport: the sequence numbers and send times of what the SFU sent it,
/// and the estimate its feedback gives.
#[derive(Debug)]
pub struct SendSideBwe {
    next_seq: i64,
    history: VecDeque<(i64, Sent)>,
    trendline: Trendline,
    /// The delay-based estimate (AIMD over the detector's verdicts).
    delay_bps: f64,
    rate_state: RateState,
    last_increase: Option<Instant>,
    last_decrease: Option<Instant>,
    /// The acknowledged rate at the last overuse: near it, the estimate grows additively.
    link_capacity: Option<f64>,
    /// Acknowledged packets of the last [`ACKED_WINDOW_US`]: (arrival, size, sent).
    acked: VecDeque<(i64, u64, Instant)>,
    /// The loss-based cap, when loss has set one.
    loss_cap: Option<f64>,
    loss_counts: (usize, usize),
    last_loss_change: Option<Instant>,
    loss_cap_raised: Option<Instant>,
    wanted: u64,
    clusters: VecDeque<Cluster>,
    next_cluster: u32,
    next_probe: Option<Instant>,
    started: Option<Instant>,
    feedbacks: u64,
    last_feedback: Option<Instant>,
    /// Whether a probe cluster has come back (enough of it reported received).
    probe_answered: bool,
}

impl Default for SendSideBwe {
    fn default() -> Self {
        Self::new()
    }
}

impl SendSideBwe {
    pub fn new() -> Self {
        Self {
            next_seq: 0,
            history: VecDeque::new(),
            trendline: Trendline::new(),
            delay_bps: INITIAL_BPS as f64,
            rate_state: RateState::Hold,
            last_increase: None,
            last_decrease: None,
            link_capacity: None,
            acked: VecDeque::new(),
            loss_cap: None,
            loss_counts: (0, 0),
            last_loss_change: None,
            loss_cap_raised: None,
            wanted: 0,
            clusters: VecDeque::new(),
            next_cluster: 0,
            next_probe: None,
            started: None,
            feedbacks: 0,
            last_feedback: None,
            probe_answered: false,
        }
    }

    /// Bits per second the SFU may send to this subscriber.
    pub fn estimate(&self) -> u64 {
        let bps = self.loss_cap.map_or(self.delay_bps, |cap| cap.min(self.delay_bps));
        (bps as u64).clamp(MIN_BPS, MAX_BPS)
    }

    /// Whether a probe cluster is sending now: copies queued for one that has ended
    /// would only add to what the path already carries.
    pub fn probing(&self, now: Instant) -> bool {
        self.clusters.back().is_some_and(|c| c.sending(now))
    }

    /// Whether a probe has come back: a subscriber whose feedback never reports the probes
    /// (a receiver that drops them before counting) has an estimate that cannot climb,
    /// so it must not be trusted to bring a paused video back.
    pub fn probe_answered(&self) -> bool {
        self.probe_answered
    }

    /// Whether any feedback has arrived: until then the estimate is only the start value.
    pub fn has_feedback(&self) -> bool {
        self.feedbacks > 0
    }

    /// The delay detector's current verdict.
    pub fn usage(&self) -> Usage {
        self.trendline.usage
    }

    /// What the subscriber could use (its videos at the layers it asked for, and audio):
    /// probing goes up to this, and stops when the estimate reaches it.
    pub fn set_wanted(&mut self, bps: u64) {
        self.wanted = bps.min(MAX_BPS);
    }

    /// A packet of `size` bytes leaves now; returns its transport-wide sequence number.
    /// While a probe cluster sends, every packet counts towards it.
    pub fn on_sent(&mut self, size: usize, now: Instant) -> u16 {
        self.started.get_or_insert(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        let cluster = self.clusters.back_mut().filter(|c| c.sending(now)).map(|c| {
            c.sent_packets += 1;
            c.sent_bytes += size as u64;
            c.first_send.get_or_insert(now);
            c.last_send = Some(now);
            c.last_size = size as u64;
            c.id
        });
        self.history.push_back((seq, Sent { size: size as u32, at: now, cluster, report: Report::Nothing }));
        while self.history.len() > HISTORY_PACKETS
            || self.history.front().is_some_and(|(_, s)| now.saturating_duration_since(s.at) > HISTORY)
        {
            self.history.pop_front();
        }
        seq as u16
    }

    /// Bytes of padding to send now so the probe cluster under way reaches its rate
    /// (starting one when the subscriber wants more than the estimate and it is time).
    pub fn padding_due(&mut self, now: Instant) -> usize {
        self.maybe_start_probe(now);
        let Some(c) = self.clusters.back().filter(|c| c.sending(now)) else { return 0 };
        let elapsed = now.saturating_duration_since(c.started) + Duration::from_millis(5);
        let target = (c.bps as f64 * elapsed.as_secs_f64() / 8.0) as u64;
        target.saturating_sub(c.sent_bytes) as usize
    }

    /// When [`SendSideBwe::padding_due`] should be asked next: soon while a cluster
    /// sends, else when the next probe may start (`None`: no probe is wanted).
    pub fn next_padding(&self, now: Instant) -> Option<Instant> {
        if self.clusters.back().is_some_and(|c| c.sending(now)) {
            return Some(now + Duration::from_millis(5));
        }
        if self.wanted <= self.estimate() || !self.clusters.iter().all(|c| !c.sending(now)) {
            return None;
        }
        Some(self.next_probe.unwrap_or(now).max(now))
    }

    fn maybe_start_probe(&mut self, now: Instant) {
        let estimate = self.estimate();
        let waiting = self.clusters.iter().any(|c| now.saturating_duration_since(c.started) < PROBE_TIMEOUT);
        if self.wanted <= estimate || waiting || self.next_probe.is_some_and(|t| now < t) {
            return;
        }
        let bps = (2 * estimate).min(self.wanted.max(estimate + estimate / 4));
        self.next_cluster += 1;
        self.clusters.push_back(Cluster {
            id: self.next_cluster,
            bps,
            started: now,
            sent_packets: 0,
            sent_bytes: 0,
            first_send: None,
            last_send: None,
            last_size: 0,
            received: Vec::new(),
            reported: 0,
        });
        while self.clusters.len() > 4 {
            self.clusters.pop_front();
        }
    }

    /// A transport feedback: for each reported sequence number, when it arrived in the
    /// subscriber's clock (microseconds, any origin) or `None` when it did not.
    pub fn on_feedback(&mut self, packets: &[Reported], now: Instant) {
        let Some(&(newest, _)) = self.history.back() else { return };
        self.feedbacks += 1;
        let after_outage = self.last_feedback.is_some_and(|t| now.saturating_duration_since(t) > FEEDBACK_GAP);
        self.last_feedback = Some(now);
        if after_outage {
            self.trendline = Trendline::new();
            self.acked.clear();
            self.loss_counts = (0, 0);
        }
        let oldest = self.history.front().map_or(newest, |(s, _)| *s);
        let mut acked: Vec<(Instant, i64, u64, bool)> = Vec::new();
        for &(seq, arrival) in packets {
            // Sequence numbers are 16 bits on the wire: the one nearest the newest sent.
            let full = newest - i64::from((newest as u16).wrapping_sub(seq));
            if full < oldest {
                continue;
            }
            let (_, sent) = &mut self.history[(full - oldest) as usize];
            let before = sent.report;
            match (before, arrival) {
                // Said before: a repeated feedback changes nothing.
                (Report::Received, _) | (Report::Missing, None) => continue,
                // Reordered, not lost: a path that reorders (jitter over several routes)
                // is not a lossy one.
                (Report::Missing, Some(_)) => self.loss_counts.0 = self.loss_counts.0.saturating_sub(1),
                (Report::Nothing, _) => {}
            }
            sent.report = if arrival.is_some() { Report::Received } else { Report::Missing };
            let first_report = before == Report::Nothing;
            let sent = *sent;
            let cluster = sent.cluster.and_then(|id| self.clusters.iter_mut().find(|c| c.id == id));
            if let Some(c) = cluster
                && first_report
            {
                c.reported += 1;
                if let Some(a) = arrival {
                    c.received.push((a, u64::from(sent.size)));
                }
            }
            if first_report && !(after_outage && arrival.is_none()) {
                self.loss_counts.1 += 1;
                if arrival.is_none() {
                    self.loss_counts.0 += 1;
                }
            }
            if let Some(a) = arrival {
                acked.push((sent.at, a, u64::from(sent.size), first_report));
            }
        }
        for &(sent, arrival, size, in_order) in &acked {
            // A packet that came after being reported missing is out of the delay
            // detector's send order.
            if in_order {
                self.trendline.packet(sent, arrival);
            }
            self.acked.push_back((arrival, size, sent));
        }
        if let Some(latest) = self.acked.iter().map(|a| a.0).max() {
            self.acked.retain(|a| latest.saturating_sub(a.0) <= ACKED_WINDOW_US);
        }
        self.on_probe_results(now);
        self.update_delay_based(now);
        self.update_loss_based(now);
    }

    /// Bits per second the subscriber acknowledged over the last [`ACKED_WINDOW_US`].
    fn acked_bps(&self) -> Option<f64> {
        let first = self.acked.iter().map(|a| a.0).min()?;
        let last = self.acked.iter().map(|a| a.0).max()?;
        let span_us = last.saturating_sub(first).max(ACKED_WINDOW_US / 2);
        let bytes: u64 = self.acked.iter().map(|a| a.1).sum();
        (self.acked.len() >= 4).then(|| bytes as f64 * 8.0 * 1e6 / span_us as f64)
    }

    fn on_probe_results(&mut self, now: Instant) {
        let mut results = Vec::new();
        self.clusters.retain(|c| match c.result(now) {
            Some(r) => {
                results.push((c.bps, r));
                false
            }
            None if now.saturating_duration_since(c.started) > PROBE_TIMEOUT => {
                results.push((c.bps, None));
                false
            }
            None => true,
        });
        for (probed, result) in results {
            let estimate = self.estimate() as f64;
            self.next_probe = Some(now + PROBE_RETRY);
            let Some(bps) = result.map(|r| r as f64) else { continue };
            self.probe_answered = true;
            if bps > estimate * 1.05 {
                self.delay_bps = self.delay_bps.max(bps);
                if let Some(cap) = &mut self.loss_cap {
                    *cap = cap.max(bps);
                }
                self.link_capacity = None;
                if bps >= PROBE_CONTINUE * probed as f64 {
                    self.next_probe = None;
                }
            }
        }
    }

    /// Whether the acknowledged packets took longer to arrive than to be sent (a queue
    /// grows somewhere): by a tenth, and by more than jitter alone spreads them
    /// ([`JITTER_SPREAD_US`]). Without that, a trend the delay detector reads as overuse is
    /// jitter on a path with room, and cutting to what was acknowledged would only make
    /// the sender send (and so learn) less.
    fn queue_building(&self) -> bool {
        let (Some(first), Some(last)) = (self.acked.iter().map(|a| a.0).min(), self.acked.iter().map(|a| a.0).max())
        else {
            return true;
        };
        let (Some(sent_first), Some(sent_last)) =
            (self.acked.iter().map(|a| a.2).min(), self.acked.iter().map(|a| a.2).max())
        else {
            return true;
        };
        let send_us = sent_last.saturating_duration_since(sent_first).as_micros() as i64;
        let recv_us = last.saturating_sub(first);
        recv_us > send_us + (send_us / 10).max(JITTER_SPREAD_US)
    }

    fn update_delay_based(&mut self, now: Instant) {
        let acked = self.acked_bps();
        let usage = match self.trendline.usage {
            Usage::Overusing if !self.queue_building() => Usage::Normal,
            usage => usage,
        };
        match usage {
            Usage::Overusing => {
                if self.last_decrease.is_none_or(|t| now.saturating_duration_since(t) >= REDUCTION_INTERVAL) {
                    let basis = acked.unwrap_or(self.delay_bps);
                    self.delay_bps = (BETA * basis).min(self.delay_bps);
                    self.link_capacity = Some(match self.link_capacity {
                        Some(c) if (basis - c).abs() < 0.3 * c => 0.95 * c + 0.05 * basis,
                        _ => basis,
                    });
                    self.last_decrease = Some(now);
                }
                self.rate_state = RateState::Hold;
            }
            Usage::Underusing => self.rate_state = RateState::Hold,
            Usage::Normal => {
                if self.rate_state == RateState::Hold {
                    self.rate_state = RateState::Increase;
                    self.last_increase = Some(now);
                    return;
                }
                let since = self.last_increase.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                self.last_increase = Some(now);
                let dt = since.as_secs_f64().min(1.0);
                let near_capacity =
                    self.link_capacity.is_some_and(|c| self.delay_bps > 0.8 * c && self.delay_bps < 1.3 * c);
                if self.link_capacity.is_some_and(|c| self.delay_bps >= 1.3 * c) {
                    self.link_capacity = None;
                }
                let increased = if near_capacity {
                    // About one 1,200-byte packet per response time (~200 ms).
                    self.delay_bps + (48_000.0 * dt).max(1_000.0 * dt)
                } else {
                    self.delay_bps * 1.08f64.powf(dt)
                };
                let ceiling = acked.map_or(f64::MAX, |a| 1.5 * a + 10_000.0);
                if increased <= ceiling {
                    self.delay_bps = increased;
                } else if self.delay_bps < ceiling {
                    self.delay_bps = ceiling;
                }
            }
        }
        self.delay_bps = self.delay_bps.clamp(MIN_BPS as f64, MAX_BPS as f64);
    }

    fn update_loss_based(&mut self, now: Instant) {
        let (lost, total) = self.loss_counts;
        if total < LOSS_WINDOW_PACKETS {
            return;
        }
        self.loss_counts = (0, 0);
        let loss = lost as f64 / total as f64;
        if loss > 0.10 {
            if self.last_loss_change.is_none_or(|t| now.saturating_duration_since(t) >= LOSS_REDUCTION_INTERVAL) {
                let current = self.estimate() as f64;
                self.loss_cap = Some(current * (1.0 - 0.5 * loss));
                self.last_loss_change = Some(now);
            }
            self.loss_cap_raised = None;
        } else if loss < 0.02 {
            if let Some(cap) = self.loss_cap {
                let dt = self.loss_cap_raised.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64().min(1.0));
                let raised = cap * 1.08f64.powf(dt);
                self.loss_cap = (raised < self.delay_bps).then_some(raised);
                self.loss_cap_raised = Some(now);
            }
        } else {
            self.loss_cap_raised = None;
        }
    }
}

#[cfg(test)]
mod tests;
