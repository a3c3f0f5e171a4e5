//! Active-speaker detection from the RFC 6464 audio level each audio packet carries
//! (0 = loudest, 127 = silence, in -dBov).
//!
//! Each interval the loudest participant whose average level is above the speech
//! threshold becomes the speaker, but only when they are louder than the current
//! speaker by a margin or the current speaker has gone quiet: one cough does not move
//! the spotlight.

use std::collections::HashMap;

/// Levels quieter than this (-dBov) count as silence.
pub const SPEECH_THRESHOLD: u8 = 60;
/// How much louder (dB) a challenger must be to take over from a speaker still talking.
pub const TAKEOVER_MARGIN: f32 = 6.0;

#[derive(Default, Debug)]
pub struct SpeakerDetector {
    /// Per participant: sum of loudness (127 - level) and packet count this interval.
    window: HashMap<String, (u32, u32)>,
    current: Option<String>,
}

impl SpeakerDetector {
    pub fn observe(&mut self, participant: &str, level: u8) {
        let loudness = 127u32.saturating_sub(level.min(127) as u32);
        if let Some(entry) = self.window.get_mut(participant) {
            entry.0 += loudness;
            entry.1 += 1;
        } else {
            self.window.insert(participant.to_owned(), (loudness, 1));
        }
    }

    pub fn forget(&mut self, participant: &str) {
        self.window.remove(participant);
        if self.current.as_deref() == Some(participant) {
            self.current = None;
        }
    }

    /// Closes the interval; returns the new speaker when it changed.
    pub fn evaluate(&mut self) -> Option<String> {
        let speaking = 127 - SPEECH_THRESHOLD as u32;
        let mut averages: Vec<(String, f32)> = self
            .window
            .drain()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(p, (sum, n))| (p, sum as f32 / n as f32))
            .filter(|(_, avg)| *avg >= speaking as f32)
            .collect();
        averages.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let (loudest, level) = averages.first()?.clone();
        if self.current.as_deref() == Some(loudest.as_str()) {
            return None;
        }
        let current_level = self.current.as_ref().and_then(|c| averages.iter().find(|(p, _)| p == c)).map(|(_, l)| *l);
        if current_level.is_some_and(|c| level < c + TAKEOVER_MARGIN) {
            return None;
        }
        self.current = Some(loudest.clone());
        Some(loudest)
    }

    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(d: &mut SpeakerDetector, levels: &[(&str, u8)]) -> Option<String> {
        for _ in 0..15 {
            for (p, l) in levels {
                d.observe(p, *l);
            }
        }
        d.evaluate()
    }

    #[test]
    fn the_loudest_talker_becomes_speaker_with_hysteresis() {
        let mut d = SpeakerDetector::default();
        assert_eq!(interval(&mut d, &[("a", 127), ("b", 127)]), None, "silence elects nobody");
        assert_eq!(interval(&mut d, &[("a", 30), ("b", 100)]).as_deref(), Some("a"));
        assert_eq!(interval(&mut d, &[("a", 30), ("b", 100)]), None, "no change, no event");
        // b is slightly louder while a still talks: a keeps the floor.
        assert_eq!(interval(&mut d, &[("a", 30), ("b", 27)]), None);
        // b clearly louder.
        assert_eq!(interval(&mut d, &[("a", 30), ("b", 15)]).as_deref(), Some("b"));
        // b stops; a talks quietly but above threshold: a takes over.
        assert_eq!(interval(&mut d, &[("a", 50), ("b", 127)]).as_deref(), Some("a"));
        d.forget("a");
        assert_eq!(d.current(), None);
    }
}
