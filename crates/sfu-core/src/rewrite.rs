//! One continuous outgoing stream out of several incoming ones.
//!
//! A subscription forwards one simulcast layer at a time. Each layer has its own SSRC,
//! sequence numbers and timestamps; the subscriber must see one SSRC whose sequence
//! numbers have no jump and whose timestamps keep advancing with wall time. The rewriter
//! keeps an offset per source and re-bases it at every switch.

use std::time::Instant;

use crate::codec::Vp8Numbers;

/// Serial-number comparison (RFC 1982) on 16 bits: is `a` after `b`?
pub fn seq_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[derive(Clone, Debug)]
pub struct Rewriter {
    clock_rate: u32,
    /// Outgoing = incoming + offset (wrapping).
    seq_offset: u16,
    ts_offset: u32,
    /// First incoming sequence number of the current source: older packets belong to
    /// the source before the switch and are dropped.
    source_start: u16,
    /// Highest outgoing sequence number and its timestamp and arrival.
    last: Option<(u16, u32, Instant)>,
    /// VP8 picture numbering across switches (see [`crate::codec::Vp8Numbers`]).
    vp8: Vp8Renumber,
}

/// Outgoing PictureID = incoming + offset (15 bits), TL0PICIDX likewise (8 bits),
/// re-based at the first packet with numbers after each switch.
#[derive(Clone, Debug, Default)]
struct Vp8Renumber {
    picture_offset: u16,
    tl0_offset: u8,
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
    rebase: bool,
}

impl Vp8Renumber {
    fn renumber(&mut self, numbers: Vp8Numbers) -> Vp8Numbers {
        if self.rebase {
            self.rebase = false;
            if let (Some((id, _)), Some(last)) = (numbers.picture_id, self.last_picture) {
                self.picture_offset = last.wrapping_add(1).wrapping_sub(id) & 0x7fff;
            }
            if let (Some(idx), Some(last)) = (numbers.tl0_pic_idx, self.last_tl0) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(idx);
            }
        }
        let out = Vp8Numbers {
            picture_id: numbers.picture_id.map(|(id, long)| (id.wrapping_add(self.picture_offset) & 0x7fff, long)),
            tl0_pic_idx: numbers.tl0_pic_idx.map(|idx| idx.wrapping_add(self.tl0_offset)),
        };
        // Only the head moves (a late packet keeps its number).
        if let Some((id, _)) = out.picture_id
            && self.last_picture.is_none_or(|last| (id.wrapping_sub(last) & 0x7fff) < 0x4000)
        {
            self.last_picture = Some(id);
        }
        if let Some(idx) = out.tl0_pic_idx
            && self.last_tl0.is_none_or(|last| idx.wrapping_sub(last) < 0x80)
        {
            self.last_tl0 = Some(idx);
        }
        out
    }
}

impl Rewriter {
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate, seq_offset: 0, ts_offset: 0, source_start: 0, last: None, vp8: Vp8Renumber::default() }
    }

    /// Starts forwarding a new source whose first packet is (`seq`, `ts`) at `now`.
    /// The first outgoing packet follows the last one without a gap, and its timestamp
    /// is the last one advanced by the wall time in between (at least one tick).
    pub fn switch_to(&mut self, seq: u16, ts: u32, now: Instant) {
        self.source_start = seq;
        self.vp8.rebase = true;
        match self.last {
            None => {
                self.seq_offset = 0;
                self.ts_offset = 0;
            }
            Some((last_seq, last_ts, at)) => {
                let elapsed = now.saturating_duration_since(at);
                let ticks = ((elapsed.as_micros() as u64 * self.clock_rate as u64) / 1_000_000).max(1) as u32;
                self.seq_offset = last_seq.wrapping_add(1).wrapping_sub(seq);
                self.ts_offset = last_ts.wrapping_add(ticks).wrapping_sub(ts);
            }
        }
    }

    /// The outgoing (sequence number, timestamp) of an incoming packet of the current
    /// source, or `None` when the packet predates the switch.
    pub fn rewrite(&mut self, seq: u16, ts: u32, now: Instant) -> Option<(u16, u32)> {
        if seq_newer(self.source_start, seq) {
            return None;
        }
        let out = (seq.wrapping_add(self.seq_offset), ts.wrapping_add(self.ts_offset));
        // Retransmissions and reordered packets keep their place; only the head moves.
        if self.last.is_none_or(|(last_seq, _, _)| seq_newer(out.0, last_seq)) {
            self.last = Some((out.0, out.1, now));
        }
        Some(out)
    }

    /// The outgoing VP8 picture numbers of a packet of the current source: they run on
    /// from the last ones sent, whatever layer they come from.
    pub fn renumber_vp8(&mut self, numbers: Vp8Numbers) -> Vp8Numbers {
        self.vp8.renumber(numbers)
    }

    /// Highest outgoing sequence number so far.
    pub fn last_seq(&self) -> Option<u16> {
        self.last.map(|(s, _, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn serial_comparison_wraps() {
        assert!(seq_newer(1, 0));
        assert!(seq_newer(0, 65535));
        assert!(!seq_newer(65535, 0));
        assert!(!seq_newer(5, 5));
    }

    #[test]
    fn a_switch_continues_the_sequence_and_the_clock() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        r.switch_to(1000, 50_000, t0);
        assert_eq!(r.rewrite(1000, 50_000, t0), Some((1000, 50_000)));
        assert_eq!(r.rewrite(1001, 53_000, t0 + Duration::from_millis(33)), Some((1001, 53_000)));
        // Switch to a layer with unrelated numbering 100 ms later.
        let t1 = t0 + Duration::from_millis(133);
        r.switch_to(40_000, 7_000_000, t1);
        assert_eq!(r.rewrite(40_000, 7_000_000, t1), Some((1002, 53_000 + 9_000)));
        assert_eq!(r.rewrite(40_001, 7_003_000, t1), Some((1003, 62_000 + 3_000)));
        // A packet from before the switch is dropped, a reordered one after it is kept.
        assert_eq!(r.rewrite(39_999, 6_997_000, t1), None);
        assert_eq!(r.rewrite(40_003, 7_006_000, t1), Some((1005, 68_000)));
        assert_eq!(r.rewrite(40_002, 7_006_000, t1), Some((1004, 68_000)));
        assert_eq!(r.last_seq(), Some(1005));
    }

    #[test]
    fn vp8_picture_numbers_run_on_across_a_switch() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        let n = |id: u16, idx: u8| Vp8Numbers { picture_id: Some((id, true)), tl0_pic_idx: Some(idx) };
        r.switch_to(1, 0, t0);
        assert_eq!(r.renumber_vp8(n(30_000, 200)), n(30_000, 200), "the first source keeps its numbers");
        assert_eq!(r.renumber_vp8(n(30_001, 201)), n(30_001, 201));
        // The next layer numbers from 12: it continues at 30,002 and 202.
        r.switch_to(500, 0, t0);
        assert_eq!(r.renumber_vp8(n(12, 40)), n(30_002, 202));
        assert_eq!(r.renumber_vp8(n(13, 40)), n(30_003, 202));
        // Wrapping: 15 bits and 8 bits.
        r.switch_to(900, 0, t0);
        assert_eq!(r.renumber_vp8(n(32_767, 255)), n(30_004, 203));
        assert_eq!(r.renumber_vp8(n(0, 0)), n(30_005, 204));
        r.switch_to(950, 0, t0);
        assert_eq!(r.renumber_vp8(n(5, 9)), n(30_006, 205));
        // A late packet of the same layer keeps its place and does not move the head.
        assert_eq!(r.renumber_vp8(n(4, 9)), n(30_005, 205));
        assert_eq!(r.renumber_vp8(n(6, 10)), n(30_007, 206));
    }

    #[test]
    fn wrapping_sources_stay_continuous() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000);
        r.switch_to(65_534, u32::MAX - 10, t0);
        assert_eq!(r.rewrite(65_534, u32::MAX - 10, t0), Some((65_534, u32::MAX - 10)));
        assert_eq!(r.rewrite(65_535, (u32::MAX - 10).wrapping_add(960), t0).map(|o| o.0), Some(65_535));
        assert_eq!(r.rewrite(0, 950, t0).map(|o| o.0), Some(0));
        r.switch_to(10, 10, t0);
        // Same instant: the clock still advances by one tick.
        assert_eq!(r.rewrite(10, 10, t0), Some((1, 951)));
    }
}
