//! What a subscription sent lately, kept to answer its subscriber's NACKs.
//!
//! webrtc-rs 0.17 has no RTX, and its stock NACK responder forgets its buffer when a
//! late retransmission is forwarded, so each subscription's writer keeps its own: the
//! last [`HISTORY`] packets it wrote, in the slot of their sequence number.

use std::sync::Mutex;

use webrtc::rtp::packet::Packet;

/// Packets kept for retransmission per subscription (a few seconds of video).
pub(super) const HISTORY: usize = 1024;

pub(super) struct RetransmitBuffer {
    slots: Mutex<Vec<Option<Packet>>>,
}

impl RetransmitBuffer {
    pub(super) fn new() -> Self {
        Self { slots: Mutex::new(vec![None; HISTORY]) }
    }

    /// Keeps a packet just written, in place of the one [`HISTORY`] sequence numbers
    /// before it.
    pub(super) fn keep(&self, packet: Packet) {
        let slot = packet.header.sequence_number as usize % HISTORY;
        self.slots.lock().unwrap()[slot] = Some(packet);
    }

    /// Copies of the named packets still kept. A slot answers only for the sequence
    /// number it holds, so a NACK for a packet already overwritten finds nothing.
    pub(super) fn find(&self, seqs: impl Iterator<Item = u16>) -> Vec<Packet> {
        let slots = self.slots.lock().unwrap();
        seqs.filter_map(|seq| {
            slots[seq as usize % HISTORY].as_ref().filter(|p| p.header.sequence_number == seq).cloned()
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use webrtc::rtp::header::Header;

    use super::*;

    fn packet(seq: u16) -> Packet {
        Packet { header: Header { sequence_number: seq, ..Default::default() }, ..Default::default() }
    }

    fn seqs(packets: &[Packet]) -> Vec<u16> {
        packets.iter().map(|p| p.header.sequence_number).collect()
    }

    #[test]
    fn kept_packets_are_found_by_sequence_number_until_overwritten() {
        let buffer = RetransmitBuffer::new();
        for seq in 65_000..=65_535 {
            buffer.keep(packet(seq));
        }
        for seq in 0..600 {
            buffer.keep(packet(seq)); // wraps around the sequence space
        }
        assert_eq!(seqs(&buffer.find([65_535, 0, 599].into_iter())), vec![65_535, 0, 599]);
        // 65,000 shares its slot with 65,000 + 1,024 = 488 (wrapped), which replaced it.
        assert!(buffer.find([65_000].into_iter()).is_empty());
        assert!(buffer.find([600, 1_000].into_iter()).is_empty(), "never sent");
    }
}
