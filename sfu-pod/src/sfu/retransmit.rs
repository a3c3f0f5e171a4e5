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
    slots: Mutex<Slots>,
}

struct Slots {
    packets: Vec<Option<Packet>>,
    /// The sequence number of the packet kept last.
    last: Option<u16>,
}

impl RetransmitBuffer {
    pub(super) fn new() -> Self {
        Self { slots: Mutex::new(Slots { packets: vec![None; HISTORY], last: None }) }
    }

    /// Keeps a packet just written, in place of the one [`HISTORY`] sequence numbers
    /// before it.
    pub(super) fn keep(&self, packet: Packet) {
        let seq = packet.header.sequence_number;
        let mut slots = self.slots.lock().unwrap();
        if slots.last.is_none_or(|last| switchboard_sfu_core::rewrite::seq_newer(seq, last)) {
            slots.last = Some(seq);
        }
        slots.packets[seq as usize % HISTORY] = Some(packet);
    }

    /// Copies of the named packets still kept. A slot answers only for the sequence
    /// number it holds, so a NACK for a packet already overwritten finds nothing.
    pub(super) fn find(&self, seqs: impl Iterator<Item = u16>) -> Vec<Packet> {
        let slots = self.slots.lock().unwrap();
        seqs.filter_map(|seq| slots.get(seq)).collect()
    }

    /// Copies of the packets kept last, newest first, up to `bytes` of payload (at least
    /// one, when any is kept): sent again, they probe the path (a receiver drops a
    /// duplicate), as libwebrtc's payload padding does.
    pub(super) fn recent(&self, bytes: usize) -> Vec<Packet> {
        let slots = self.slots.lock().unwrap();
        let Some(last) = slots.last else { return Vec::new() };
        let mut out = Vec::new();
        let mut taken = 0;
        for back in 0..HISTORY as u16 {
            let Some(p) = slots.get(last.wrapping_sub(back)) else { break };
            taken += p.payload.len();
            out.push(p);
            if taken >= bytes {
                break;
            }
        }
        out
    }
}

impl Slots {
    /// The packet with this sequence number, if its slot still holds it.
    fn get(&self, seq: u16) -> Option<Packet> {
        self.packets[seq as usize % HISTORY].as_ref().filter(|p| p.header.sequence_number == seq).cloned()
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

    #[test]
    fn recent_packets_are_the_newest_kept_up_to_a_size() {
        let buffer = RetransmitBuffer::new();
        assert!(buffer.recent(10_000).is_empty());
        for seq in [65_534, 65_535, 0, 1] {
            buffer.keep(Packet { payload: vec![0u8; 1_000].into(), ..packet(seq) });
        }
        buffer.keep(packet(65_000)); // a late retransmission does not become the newest
        assert_eq!(seqs(&buffer.recent(2_500)), vec![1, 0, 65_535]);
        assert_eq!(seqs(&buffer.recent(1)), vec![1]);
        assert_eq!(seqs(&buffer.recent(100_000)), vec![1, 0, 65_535, 65_534], "stops at a slot it never filled");
    }
}
