//! Mixed audio (`RoomAudio::Mixed`): the SFU decodes a room's loudest voices and sends
//! each client one Opus stream instead of the voices themselves.
//!
//! Why: in a room of hundreds of listeners with a few talkers, a client that receives
//! one stream decodes one stream, whatever the room (a phone, a SIP gateway, a weak
//! laptop), and its downlink carries one voice's worth of audio.
//!
//! Who decides what: the core ([`Room::mix_slots`](switchboard_sfu_core::Room::mix_slots))
//! chooses the voices and gives each a slot, and gives each client's subscription to
//! the mixer's track the layer to hear: `all`, or `minus-k` for the client whose voice
//! is in slot k (nobody hears their own voice back). This module does the sound: every
//! 20 ms it takes one decoded frame of each slot's voice, sums them ([`mix_frames`]),
//! encodes the whole mix once and the mix without slot k once per slot whose voice is
//! a client here, and feeds them to the core as the layers of the mixer's track; the
//! core forwards each listener its layer like any other packet. So a frame costs
//! (voices + 1 + local talkers) codec calls however many listen; a listener costs one
//! packet write per frame.
//!
//! Every layer numbers a frame alike (one sequence number and timestamp per frame), so
//! a listener whose layer changes (it starts or stops talking) continues without a gap;
//! its decoder meets another encoder's stream at that packet, a click at most.

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use switchboard_sfu_core::{
    Codec, Declaration, Input, MIX_ALL, ParticipantKind, Room, Source, TrackHandle, TrackInfo, mix_minus,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;

use super::Sfu;
use super::forward::{Incoming, forward_packet};
use super::room_driver::RoomEntry;

/// The mixer's participant id: `~` is outside what participant ids may hold, so no
/// client can take it.
pub const MIXER_ID: &str = "~mixer";
/// The mixer's track, which every client of a mixed room subscribes to.
pub const MIX_TRACK: &str = "~mix";
/// Samples per channel in one 20 ms frame at 48 kHz, Opus's clock.
pub const FRAME: usize = 960;
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// Decoded frames kept per voice: enough for arrival jitter against the mixer's clock,
/// bounded so that a voice never lags the others by more than 100 ms.
const MAX_QUEUED_FRAMES: usize = 5;
/// Packets from the voices waiting for the mixer (about 1 s of 5 voices).
const TAP_QUEUE: usize = 256;
/// The mix's bitrate: speech in wideband, as a browser sends a voice.
const MIX_BITRATE: i32 = 32_000;
/// Opus payload type used inside the SFU; each subscriber's sender writes its own.
const OPUS_PT: u8 = switchboard_sfu_client::media::OPUS_PT;

/// Where the packet path hands the mixer the packets of voices in the mix.
#[derive(Clone)]
pub struct Tap(mpsc::Sender<(TrackHandle, Bytes)>);

impl Tap {
    /// Queues a voice's packet; dropped when the mixer is behind (a gap, not a delay).
    pub fn send(&self, track: TrackHandle, payload: Bytes) {
        let _ = self.0.try_send((track, payload));
    }
}

/// Makes the core's room a mixed one's: joins the mixer and publishes its track with a
/// layer for the whole mix and one per slot. Returns the track.
pub fn publish(room: &mut Room, slots: usize) -> TrackHandle {
    let declared = [Declaration { id: MIX_TRACK.into(), source: Source::Microphone, muted: false }];
    let join = Input::Join {
        participant: MIXER_ID,
        kind: ParticipantKind::Mixer,
        auto_subscribe: false,
        may_publish: true,
        tracks: &declared,
    };
    room.handle_input(join).expect("a new room takes its mixer");
    let info = TrackInfo { id: MIX_TRACK.into(), codec: Codec::Opus, source: Source::Microphone, origin: None };
    let track = room.handle_input(Input::Publish { participant: MIXER_ID, info }).expect("the mixer publishes").track();
    let track = track.expect("a handle");
    let rids = std::iter::once(MIX_ALL.to_owned()).chain((0..slots).map(mix_minus));
    for rid in rids {
        room.handle_input(Input::AddLayer { track, rid: &rid }).expect("the mixer's layers");
    }
    track
}

/// Starts the mixer of a room whose core [`publish`]ed its track; it ends with the room.
pub(super) fn start(sfu: Weak<Sfu>, room: Weak<RoomEntry>, track: TrackHandle) -> Tap {
    let (tx, rx) = mpsc::channel(TAP_QUEUE);
    tokio::spawn(run(sfu, room, track, rx));
    Tap(tx)
}

/// One slot's voice: its decoder and the frames decoded ahead of the mixer's clock.
pub struct Voice {
    track: TrackHandle,
    decoder: opus::Decoder,
    pub frames: VecDeque<Vec<i16>>,
}

impl Voice {
    pub fn new(track: TrackHandle) -> Option<Self> {
        let decoder =
            opus::Decoder::new(48_000, opus::Channels::Mono).inspect_err(|e| warn!(error = %e, "opus decoder")).ok()?;
        Some(Self { track, decoder, frames: VecDeque::new() })
    }

    pub fn decode(&mut self, payload: &[u8]) {
        // Up to 120 ms in one packet; the mixer takes 20 ms at a time.
        let mut pcm = vec![0i16; FRAME * 6];
        match self.decoder.decode(payload, &mut pcm, false) {
            Ok(n) => {
                for chunk in pcm[..n].chunks(FRAME) {
                    let mut frame = chunk.to_vec();
                    frame.resize(FRAME, 0);
                    self.frames.push_back(frame);
                }
                while self.frames.len() > MAX_QUEUED_FRAMES {
                    self.frames.pop_front();
                }
            }
            Err(e) => debug!(error = %e, "undecodable voice packet skipped"),
        }
    }
}

/// An encoder as the mixer sets one up for each of its layers.
pub fn encoder() -> Option<opus::Encoder> {
    let mut e = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
        .inspect_err(|e| warn!(error = %e, "opus encoder"))
        .ok()?;
    let _ = e.set_bitrate(opus::Bitrate::Bits(MIX_BITRATE));
    Some(e)
}

async fn run(sfu: Weak<Sfu>, room: Weak<RoomEntry>, track: TrackHandle, mut rx: mpsc::Receiver<(TrackHandle, Bytes)>) {
    let mut voices: Vec<Option<Voice>> = Vec::new();
    // One encoder per layer (the whole mix, then one per slot): each keeps its own
    // stream's state.
    let mut encoders: Vec<Option<opus::Encoder>> = Vec::new();
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let ssrc: u32 = rand::random();
    let mut tick = tokio::time::interval(FRAME_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut writes = Vec::new();
    loop {
        tokio::select! {
            got = rx.recv() => {
                let Some((from, payload)) = got else { return };
                if let Some(v) = voices.iter_mut().flatten().find(|v| v.track == from) {
                    v.decode(&payload);
                }
            }
            _ = tick.tick() => {
                let (Some(sfu), Some(room)) = (sfu.upgrade(), room.upgrade()) else { return };
                if room.closed.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let (slots, listeners) = room.read(|r: &Room| (r.mix_slots(), r.mix_listeners()));
                // A slot whose voice changed starts a fresh decoder.
                voices.resize_with(slots.len(), || None);
                encoders.resize_with(slots.len() + 1, || None);
                for (voice, slot) in voices.iter_mut().zip(&slots) {
                    let wanted = slot.map(|(h, _)| h);
                    if voice.as_ref().map(|v| v.track) != wanted {
                        *voice = wanted.and_then(Voice::new);
                    }
                }
                let frames: Vec<Option<Vec<i16>>> =
                    voices.iter_mut().map(|v| v.as_mut().and_then(|v| v.frames.pop_front())).collect();
                if listeners == 0 {
                    continue;
                }
                let (all, minus) = mix_frames(&frames);
                // The layers to send: the whole mix, and the mix without each local
                // talker's voice (a voice from another SFU has no listener here).
                let mut layers = vec![(0usize, all)];
                for (k, m) in minus.into_iter().enumerate() {
                    if let (Some(m), Some(Some((_, true)))) = (m, slots.get(k)) {
                        layers.push((k + 1, m));
                    }
                }
                for (layer, pcm) in layers {
                    if encoders[layer].is_none() {
                        encoders[layer] = encoder();
                    }
                    let Some(encoder) = encoders[layer].as_mut() else { continue };
                    let payload = match encoder.encode_vec(&pcm, 400) {
                        Ok(p) => Bytes::from(p),
                        Err(e) => {
                            debug!(error = %e, "mix frame not encoded");
                            continue;
                        }
                    };
                    let header = Header { version: 2, payload_type: OPUS_PT, sequence_number: seq, timestamp: ts, ssrc, ..Default::default() };
                    let mut pkt = Packet { header, payload };
                    let incoming = Incoming { audio: true, ..Incoming::default() };
                    forward_packet(&sfu, &room, (track, layer), incoming, &mut pkt, &mut writes);
                    sfu.metrics.mix_frames.inc();
                }
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(FRAME as u32);
            }
        }
    }
}

/// The whole mix of `frames` (one per slot, `None` for an empty or silent slot) and,
/// for each slot with a frame, the mix without it. Samples are summed wide and clipped
/// once at the end, so the mix without k is exactly what the whole mix would have been
/// had k been silent.
pub fn mix_frames(frames: &[Option<Vec<i16>>]) -> (Vec<i16>, Vec<Option<Vec<i16>>>) {
    let mut sum = vec![0i32; FRAME];
    for f in frames.iter().flatten() {
        for (s, x) in sum.iter_mut().zip(f) {
            *s += i32::from(*x);
        }
    }
    let clip = |v: i32| v.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
    let all = sum.iter().map(|v| clip(*v)).collect();
    let minus = frames
        .iter()
        .map(|f| f.as_ref().map(|f| sum.iter().zip(f).map(|(s, x)| clip(s - i32::from(*x))).collect()))
        .collect();
    (all, minus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant(v: i16) -> Option<Vec<i16>> {
        Some(vec![v; FRAME])
    }

    #[test]
    fn the_mix_sums_the_voices_and_leaves_each_its_own_out() {
        // (frames, whole mix's first sample, each slot's mix-minus first sample)
        #[allow(clippy::type_complexity)]
        let table: &[(&str, Vec<Option<Vec<i16>>>, i16, Vec<Option<i16>>)] = &[
            ("nobody talks", vec![None, None, None], 0, vec![None, None, None]),
            (
                "one voice: the others hear it, it hears silence",
                vec![constant(100), None, None],
                100,
                vec![Some(0), None, None],
            ),
            ("three voices", vec![constant(100), constant(-30), constant(7)], 77, vec![Some(-23), Some(107), Some(70)]),
            (
                "loud voices clip in the whole mix only",
                vec![constant(30_000), constant(30_000), constant(-1_000)],
                i16::MAX,
                vec![Some(29_000), Some(29_000), Some(i16::MAX)],
            ),
            (
                "clipping low too",
                vec![constant(-30_000), constant(-30_000)],
                i16::MIN,
                vec![Some(-30_000), Some(-30_000)],
            ),
        ];
        for (name, frames, whole, minus) in table {
            let (all, without) = mix_frames(frames);
            assert_eq!(all.len(), FRAME, "{name}");
            assert!(all.iter().all(|s| s == whole), "{name}: {:?}", &all[..4]);
            let firsts: Vec<Option<i16>> = without.iter().map(|m| m.as_ref().map(|m| m[0])).collect();
            assert_eq!(&firsts, minus, "{name}");
        }
    }

    #[test]
    fn a_short_frame_counts_as_silence_after_its_end() {
        let (all, _) = mix_frames(&[Some(vec![5; 10]), constant(1)]);
        assert_eq!((all[0], all[9], all[10], all[FRAME - 1]), (6, 6, 1, 1));
    }
}
