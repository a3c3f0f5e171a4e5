//! Loudest-speaker audio ("top-N"): in a large room each listener receives only the
//! audio of the N loudest speakers, never its own voice.
//!
//! Why: a room of 50 open microphones sends every listener 50 Opus streams, nearly all of
//! them silence or room noise, and the listener's client mixes them all. Forwarding the
//! few loudest (Jitsi's "route loudest only", N = 3 by default) keeps each listener's
//! downlink and decoding constant as the room grows. The choice reads only the RFC 6464
//! level each audio packet carries in its header extension, so nothing is decoded and it
//! works the same on encrypted media.
//!
//! How:
//! * Each track's loudness (127 minus the level, in dB above -127 dBov) is averaged per
//!   interval; the meter attacks at once and decays by [`DECAY`] per interval, so a new
//!   talker counts from its first interval and a pause between words does not drop one.
//!   A track that sent nothing (Opus DTX while silent) decays like silence.
//! * Each listener keeps its own set of at most N tracks, chosen from the tracks it
//!   subscribes to minus its own. A free place goes to the loudest talker at once; a
//!   full set changes only when a talker is louder than the set's quietest member by
//!   [`TAKEOVER_MARGIN`], or that member has fallen below [`SPEECH_THRESHOLD`]. So two
//!   voices of similar loudness do not swap places every interval.
//!
//! [`choose`] is the per-listener rule, a pure function with table tests;
//! [`LoudnessMeter`] holds the meters.

use std::collections::HashMap;
use std::hash::Hash;

/// Loudness (dB above -127 dBov) below which a track counts as not speaking: level 60,
/// as the active-speaker detector uses.
pub const SPEECH_THRESHOLD: f32 = (127 - crate::speaker::SPEECH_THRESHOLD as u32) as f32;
/// The level (RFC 6464, -dBov) an audio packet without the extension counts as: just
/// speaking. A client that does not measure is still heard where there is room, and
/// yields its place to any measured talker by the margin.
pub const UNMEASURED_LEVEL: u8 = crate::speaker::SPEECH_THRESHOLD;
/// How much louder (dB) a talker must be than a set's quietest member, still talking, to
/// take its place.
pub const TAKEOVER_MARGIN: f32 = 6.0;
/// Share of a meter kept per interval without louder input.
/// With [`crate::room::LOUDEST_INTERVAL`] of 100 ms, a talker stays above the threshold
/// through a 300 ms pause.
pub const DECAY: f32 = 0.9;

/// Per-track loudness meters.
#[derive(Debug)]
pub struct LoudnessMeter<K> {
    /// Per track: sum of loudness and packet count this interval.
    window: HashMap<K, (u32, u32)>,
    /// Per track: the meter after the last interval.
    level: HashMap<K, f32>,
}

impl<K> Default for LoudnessMeter<K> {
    fn default() -> Self {
        Self { window: HashMap::new(), level: HashMap::new() }
    }
}

impl<K: Copy + Eq + Hash> LoudnessMeter<K> {
    /// One packet's RFC 6464 level (0 = loudest, 127 = silence, -dBov).
    pub fn observe(&mut self, track: K, level: u8) {
        let loudness = 127u32.saturating_sub(level.min(127) as u32);
        let entry = self.window.entry(track).or_insert((0, 0));
        entry.0 += loudness;
        entry.1 += 1;
        self.level.entry(track).or_insert(0.0);
    }

    pub fn forget(&mut self, track: K) {
        self.window.remove(&track);
        self.level.remove(&track);
    }

    /// Closes the interval: each meter takes this interval's average when louder, else
    /// decays.
    pub fn close_interval(&mut self) {
        for (track, meter) in self.level.iter_mut() {
            let average = self.window.get(track).filter(|(_, n)| *n > 0).map(|(sum, n)| *sum as f32 / *n as f32);
            *meter = average.unwrap_or(0.0).max(*meter * DECAY);
        }
        self.window.clear();
    }

    /// The meter of a track (0 when never heard).
    pub fn loudness(&self, track: K) -> f32 {
        self.level.get(&track).copied().unwrap_or(0.0)
    }
}

/// One listener's audible set for the next interval: `current` (its set so far, members
/// gone from `candidates` dropped) changed as the module docs say. `candidates` are the
/// tracks this listener may hear (never its own) with their loudness.
pub fn choose<K: Copy + Eq + Ord>(current: &[K], candidates: &[(K, f32)], n: usize) -> Vec<K> {
    let loudness = |k: K| candidates.iter().find(|(c, _)| *c == k).map(|(_, l)| *l);
    let mut set: Vec<(K, f32)> = current.iter().filter_map(|&k| loudness(k).map(|l| (k, l))).collect();
    set.truncate(n);
    let mut talkers: Vec<(K, f32)> = candidates
        .iter()
        .copied()
        .filter(|(k, l)| *l >= SPEECH_THRESHOLD && !set.iter().any(|(s, _)| s == k))
        .collect();
    // Loudest first; equal loudness in a fixed order, so every listener decides alike.
    talkers.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (talker, level) in talkers {
        if set.len() < n {
            set.push((talker, level));
            continue;
        }
        let Some((i, &(_, quietest))) = set.iter().enumerate().min_by(|a, b| a.1.1.total_cmp(&b.1.1)) else { break };
        if quietest < SPEECH_THRESHOLD || level >= quietest + TAKEOVER_MARGIN {
            set[i] = (talker, level);
        }
    }
    set.into_iter().map(|(k, _)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: Vec<u8>) -> Vec<u8> {
        let mut v = v;
        v.sort();
        v
    }

    /// (what the listener heard, candidates (track, loudness), N) -> what it hears next.
    #[test]
    fn a_listener_hears_the_loudest_with_hysteresis() {
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, &[u8], &[(u8, f32)], usize, &[u8])] = &[
            ("silence fills nothing", &[], &[(1, 0.0), (2, 10.0)], 3, &[]),
            (
                "talkers fill free places, loudest first",
                &[],
                &[(1, 90.0), (2, 80.0), (3, 70.0), (4, 100.0)],
                3,
                &[1, 2, 4],
            ),
            ("fewer talkers than places", &[], &[(1, 90.0), (2, 20.0)], 3, &[1]),
            (
                "a slightly louder talker does not take a place",
                &[1, 2, 3],
                &[(1, 90.0), (2, 80.0), (3, 75.0), (4, 80.0)],
                3,
                &[1, 2, 3],
            ),
            (
                "a clearly louder talker takes the quietest place",
                &[1, 2, 3],
                &[(1, 90.0), (2, 80.0), (3, 75.0), (4, 81.0)],
                3,
                &[1, 2, 4],
            ),
            (
                "a member gone quiet gives way to any talker",
                &[1, 2, 3],
                &[(1, 90.0), (2, 80.0), (3, 30.0), (4, 68.0)],
                3,
                &[1, 2, 4],
            ),
            (
                "a quiet member stays while nobody else talks",
                &[1, 2, 3],
                &[(1, 90.0), (2, 80.0), (3, 0.0)],
                3,
                &[1, 2, 3],
            ),
            (
                "a member that left is dropped and its place filled",
                &[1, 2, 3],
                &[(1, 90.0), (2, 80.0), (4, 70.0)],
                3,
                &[1, 2, 4],
            ),
            (
                "two newcomers replace two quiet members",
                &[1, 2, 3],
                &[(1, 90.0), (2, 10.0), (3, 10.0), (4, 70.0), (5, 80.0)],
                3,
                &[1, 4, 5],
            ),
            ("N = 1", &[2], &[(1, 100.0), (2, 95.0)], 1, &[2]),
            ("N = 1, taken over", &[2], &[(1, 102.0), (2, 95.0)], 1, &[1]),
            ("N smaller than the set (a changed setting)", &[1, 2, 3], &[(1, 90.0), (2, 80.0), (3, 70.0)], 2, &[1, 2]),
        ];
        for (name, current, candidates, n, want) in cases {
            assert_eq!(set(choose(current, candidates, *n)), set(want.to_vec()), "{name}");
        }
    }

    #[test]
    fn a_meter_attacks_at_once_and_decays_slowly() {
        let mut m = LoudnessMeter::default();
        for _ in 0..5 {
            m.observe(7u8, 30);
        }
        m.close_interval();
        assert_eq!(m.loudness(7), 97.0, "the first interval counts in full");
        // Nothing sent (DTX): decays; two silent intervals keep it above the threshold,
        // so a pause between words keeps the place.
        m.close_interval();
        assert!((m.loudness(7) - 97.0 * DECAY).abs() < 0.01);
        m.close_interval();
        assert!(m.loudness(7) > SPEECH_THRESHOLD, "{}", m.loudness(7));
        for _ in 0..10 {
            m.close_interval();
        }
        assert!(m.loudness(7) < SPEECH_THRESHOLD, "a long silence ends it");
        m.forget(7);
        assert_eq!(m.loudness(7), 0.0);
    }
}
