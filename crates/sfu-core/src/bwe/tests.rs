//! The estimator against a simulated path: a bottleneck link with a queue (tail drop past
//! `MAX_QUEUE`, as a token bucket's limit does), random loss, fixed propagation delay,
//! a greedy sender at 90 % of the estimate plus the estimator's probes, and a receiver
//! that reports every `FEEDBACK_INTERVAL`, as browsers do.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::*;

const TICK: Duration = Duration::from_millis(5);
const FEEDBACK_INTERVAL: Duration = Duration::from_millis(50);
const ONE_WAY: Duration = Duration::from_millis(20);
const MAX_QUEUE: Duration = Duration::from_millis(250);
const PACKET: usize = 1_200;

#[derive(Clone, Copy)]
struct Path {
    bps: u64,
    loss: f64,
}

impl Path {
    fn new(bps: u64, loss: f64) -> Self {
        Self { bps, loss }
    }
}

struct Sim {
    t0: Instant,
    now: Instant,
    bwe: SendSideBwe,
    link_free_at: Instant,
    rng: u64,
    /// Sent, in order: (transport seq, when it arrives, if it does).
    in_flight: VecDeque<(u16, Option<Instant>)>,
    feedback: VecDeque<(Instant, Vec<Reported>)>,
    next_feedback: Instant,
    budget: f64,
    media_max: u64,
    sent_bytes: u64,
    /// Each packet's one-way delay varies by up to this much either way (reordering).
    jitter: Duration,
    /// Reported missing, still to arrive: reported again once they have.
    late: Vec<(u16, Instant)>,
}

impl Sim {
    fn new(wanted: u64) -> Self {
        let t0 = Instant::now();
        let mut bwe = SendSideBwe::new();
        bwe.set_wanted(wanted);
        Self {
            t0,
            now: t0,
            bwe,
            link_free_at: t0,
            rng: 0x9e37_79b9_7f4a_7c15,
            in_flight: VecDeque::new(),
            feedback: VecDeque::new(),
            next_feedback: t0 + FEEDBACK_INTERVAL,
            budget: 0.0,
            media_max: wanted,
            sent_bytes: 0,
            jitter: Duration::ZERO,
            late: Vec::new(),
        }
    }

    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn send(&mut self, size: usize, path: Path) {
        let seq = self.bwe.on_sent(size, self.now);
        self.sent_bytes += size as u64;
        let start = self.now.max(self.link_free_at);
        let arrival = if self.random() < path.loss || start - self.now > MAX_QUEUE {
            None
        } else {
            let done = start + Duration::from_secs_f64(size as f64 * 8.0 / path.bps as f64);
            self.link_free_at = done;
            let j = self.jitter.as_secs_f64() * (2.0 * self.random() - 1.0);
            Some(done + ONE_WAY + Duration::from_secs_f64(self.jitter.as_secs_f64() + j))
        };
        self.in_flight.push_back((seq, arrival));
    }

    fn tick(&mut self, path: Path) {
        let rate = (self.bwe.estimate() as f64 * 0.9).min(self.media_max as f64);
        self.budget += rate * TICK.as_secs_f64() / 8.0;
        while self.budget >= PACKET as f64 {
            self.budget -= PACKET as f64;
            self.send(PACKET, path);
        }
        let mut padding = self.bwe.padding_due(self.now);
        while padding > 0 {
            self.send(PACKET, path);
            padding = padding.saturating_sub(PACKET);
        }
        if self.now >= self.next_feedback {
            self.next_feedback += FEEDBACK_INTERVAL;
            self.report();
        }
        while self.feedback.front().is_some_and(|(at, _)| *at <= self.now) {
            let (_, packets) = self.feedback.pop_front().unwrap();
            self.bwe.on_feedback(&packets, self.now);
        }
        self.now += TICK;
    }

    /// The receiver reports everything up to the newest packet it has received.
    fn report(&mut self) {
        let now = self.now;
        let Some(last) = self.in_flight.iter().rposition(|(_, a)| a.is_some_and(|a| a <= now)) else { return };
        let t0 = self.t0;
        let mut packets: Vec<Reported> = Vec::new();
        let late = std::mem::take(&mut self.late);
        for (seq, a) in late {
            if a <= now {
                packets.push((seq, Some((a - t0).as_micros() as i64)));
            } else {
                self.late.push((seq, a));
            }
        }
        for (seq, a) in self.in_flight.drain(..=last).collect::<Vec<_>>() {
            match a {
                Some(a) if a <= now => packets.push((seq, Some((a - t0).as_micros() as i64))),
                Some(a) => {
                    packets.push((seq, None));
                    self.late.push((seq, a));
                }
                None => packets.push((seq, None)),
            }
        }
        self.feedback.push_back((now + ONE_WAY, packets));
    }

    /// Runs for `seconds` on `path`; returns (time since start, estimate) every 100 ms.
    fn run(&mut self, seconds: f64, path: Path) -> Vec<(f64, u64)> {
        let end = self.now + Duration::from_secs_f64(seconds);
        let mut out = Vec::new();
        let mut next_sample = self.now;
        while self.now < end {
            self.tick(path);
            if self.now >= next_sample {
                next_sample += Duration::from_millis(100);
                out.push(((self.now - self.t0).as_secs_f64(), self.bwe.estimate()));
            }
        }
        out
    }
}

fn between(samples: &[(f64, u64)], from: f64, to: f64) -> impl Iterator<Item = u64> + '_ {
    samples.iter().filter(move |(t, _)| *t >= from && *t < to).map(|(_, e)| *e)
}

fn describe(samples: &[(f64, u64)]) -> String {
    samples.iter().step_by(5).map(|(t, e)| format!("{t:.1}s:{}k", e / 1000)).collect::<Vec<_>>().join(" ")
}

#[test]
fn converges_to_a_1_mbps_bottleneck_within_5_s_and_backs_off_within_1_s_when_it_drops_to_300_kbps() {
    let mut sim = Sim::new(2_500_000);
    let mut samples = sim.run(15.0, Path { bps: 1_000_000, loss: 0.0 });
    samples.extend(sim.run(10.0, Path { bps: 300_000, loss: 0.0 }));
    let trace = describe(&samples);
    for e in between(&samples, 5.0, 15.0) {
        assert!((700_000..=1_200_000).contains(&e), "after 5 s on 1 Mbps the estimate left 0.7–1.2 Mbps: {trace}");
    }
    for e in between(&samples, 16.0, 25.0) {
        assert!((150_000..=400_000).contains(&e), "after the drop to 300 kbps, out of 150–400 kbps: {trace}");
    }
    let backed_off = samples.iter().find(|(t, e)| *t >= 15.0 && *e <= 330_000).map(|(t, _)| t - 15.0);
    assert!(backed_off.is_some_and(|s| s <= 1.0), "backed off to 330 kbps after {backed_off:?} s: {trace}");
}

#[test]
fn probing_finds_a_wider_path_again() {
    let mut sim = Sim::new(2_500_000);
    let mut samples = sim.run(10.0, Path { bps: 600_000, loss: 0.0 });
    samples.extend(sim.run(10.0, Path { bps: 3_000_000, loss: 0.0 }));
    let trace = describe(&samples);
    assert!(between(&samples, 5.0, 10.0).all(|e| e <= 720_000), "on 600 kbps: {trace}");
    assert!(sim.bwe.probe_answered());
    assert!(between(&samples, 16.0, 20.0).all(|e| e >= 2_000_000), "5 s after the path widened to 3 Mbps: {trace}");
}

#[test]
fn a_probe_through_a_token_bucket_is_measured_at_the_rate_after_the_burst() {
    // 8 packets of 1,000 bytes sent at 800 kbps (one every 10 ms) into a 600 kbps shaper
    // whose bucket passes the first 3 at once: the arrivals say 600 kbps once the bucket
    // is empty. Measured from the first arrival the cluster would look faster than it
    // was sent and the probe would report the full 800 kbps.
    let t0 = Instant::now();
    let drained_every_us = 13_333;
    let received = (0..8i64)
        .map(|i| (if i < 3 { 20_000 + i * 100 } else { 20_200 + (i - 2) * drained_every_us }, 1_000u64))
        .collect();
    let cluster = Cluster {
        id: 1,
        bps: 800_000,
        started: t0,
        sent_packets: 8,
        sent_bytes: 8_000,
        first_send: Some(t0),
        last_send: Some(t0 + Duration::from_millis(70)),
        last_size: 1_000,
        received,
        reported: 8,
    };
    let bps = cluster.result(t0 + Duration::from_millis(500)).flatten().expect("a result");
    assert!((540_000..=620_000).contains(&bps), "probe measured at {bps} bps behind a 600 kbps shaper");
}

#[test]
fn random_loss_of_5_percent_holds_the_estimate_and_20_percent_cuts_it() {
    let mut sim = Sim::new(2_500_000);
    let samples = sim.run(10.0, Path { bps: 1_000_000, loss: 0.05 });
    let trace = describe(&samples);
    assert!(between(&samples, 5.0, 10.0).all(|e| e >= 600_000), "5 % loss on 1 Mbps: {trace}");

    let mut sim = Sim::new(2_500_000);
    let clean = sim.run(5.0, Path { bps: 5_000_000, loss: 0.0 });
    let lossy = sim.run(5.0, Path { bps: 5_000_000, loss: 0.20 });
    let before = clean.last().unwrap().1;
    let after = lossy.last().unwrap().1;
    assert!(before >= 2_000_000, "{}", describe(&clean));
    assert!(after * 2 <= before, "20 % loss: {before} → {after}: {}", describe(&lossy));
}

#[test]
fn a_sender_that_wants_no_more_does_not_probe_and_its_estimate_follows_what_it_sends() {
    let mut sim = Sim::new(200_000);
    sim.media_max = 200_000;
    let samples = sim.run(10.0, Path { bps: 5_000_000, loss: 0.0 });
    // Without probes the estimate cannot learn the 5 Mbps: 1.5 × 200 kbps + 10 kbps at most.
    assert!(samples.iter().all(|(_, e)| *e <= 400_000), "{}", describe(&samples));
    assert!(sim.bwe.clusters.is_empty() && sim.bwe.next_cluster == 0, "probed though nothing more was wanted");
    assert!(!sim.bwe.probe_answered());
}

#[test]
fn feedback_for_unknown_or_forgotten_packets_changes_nothing() {
    let now = Instant::now();
    let mut bwe = SendSideBwe::new();
    bwe.on_feedback(&[(5, Some(1_000))], now);
    assert_eq!(bwe.estimate(), INITIAL_BPS);
    assert!(!bwe.has_feedback(), "nothing was sent: the feedback is not about us");
    for i in 0..10 {
        bwe.on_sent(1_000, now + Duration::from_millis(i));
    }
    // A hostile or confused subscriber: the same packet twice, wild arrival times, numbers far off.
    bwe.on_feedback(&[(3, Some(i64::MAX / 2)), (3, Some(-5)), (40_000, None), (9, Some(i64::MIN / 2))], now);
    assert!(bwe.estimate() >= MIN_BPS && bwe.estimate() <= MAX_BPS);
}

#[test]
fn what_an_outage_lost_does_not_cut_the_estimate_after_it() {
    let mut sim = Sim::new(2_500_000);
    let before = sim.run(6.0, Path { bps: 2_000_000, loss: 0.0 }).last().unwrap().1;
    // Three seconds of nothing through (the link down), then the path as before.
    let during = sim.run(3.0, Path { bps: 2_000_000, loss: 1.0 });
    let after = sim.run(2.0, Path { bps: 2_000_000, loss: 0.0 });
    let lowest = after.iter().map(|(_, e)| *e).min().unwrap();
    assert!(
        lowest * 10 >= before * 7,
        "before {before}, lowest after {lowest}: {}{}",
        describe(&during),
        describe(&after)
    );
}

#[test]
fn a_packet_reported_missing_then_received_is_reordered_not_lost() {
    let t0 = Instant::now();
    let mut bwe = SendSideBwe::new();
    let ms = Duration::from_millis;
    // 2 s at ~1 Mbps, every feedback reporting two packets missing that the next reports
    // received: with reordering counted as loss this would be 20 % lost, and cut.
    let mut arrival = 0i64;
    for round in 0..40u64 {
        let now = t0 + ms(50 * round);
        let seqs: Vec<u16> = (0..10).map(|i| bwe.on_sent(600, now + ms(i * 5))).collect();
        let mut report: Vec<Reported> = Vec::new();
        for (i, seq) in seqs.iter().enumerate() {
            arrival += 5_000;
            report.push((*seq, if i >= 8 { None } else { Some(arrival) }));
        }
        // The two missing last time arrive now, late.
        if round > 0 {
            report.insert(0, (seqs[0].wrapping_sub(1), Some(arrival + 1_000)));
            report.insert(0, (seqs[0].wrapping_sub(2), Some(arrival + 900)));
        }
        bwe.on_feedback(&report, now + ms(60));
        // The same feedback again (a duplicate) changes nothing either.
        bwe.on_feedback(&report, now + ms(61));
    }
    assert!(bwe.loss_cap.is_none(), "no loss cap from reordering: {:?}", bwe.loss_cap);
}

#[test]
fn jitter_that_reorders_packets_on_a_path_with_room_does_not_collapse_the_estimate() {
    // ±30 ms per packet (so packets overtake each other) on a 5 Mbps path: the delay
    // trend swings, but nothing queues, and the estimate must not fall through the floor.
    let mut sim = Sim::new(2_500_000);
    sim.jitter = Duration::from_millis(30);
    let samples = sim.run(15.0, Path::new(5_000_000, 0.0));
    let trace = describe(&samples);
    assert!(between(&samples, 5.0, 15.0).all(|e| e >= 600_000), "with jitter: {trace}");
}
