//! Room behaviour on a simulated clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Codec;
use crate::room::*;

const KEY: &[u8] = &[0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
const DELTA: &[u8] = &[0x10, 0x01, 0x00, 0x00];

/// A room, a clock, and per-layer RTP counters for simulated publishers.
struct Sim {
    room: Room,
    now: Instant,
    seq: HashMap<(TrackHandle, usize), (u16, u32)>,
}

impl Sim {
    fn new() -> Self {
        let now = Instant::now();
        Self { room: Room::new(now), now, seq: HashMap::new() }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.room.poll_timeout() <= end {
            self.now = self.room.poll_timeout();
            self.room.handle_timeout(self.now);
        }
        self.now = end;
    }

    fn send(&mut self, track: TrackHandle, layer: usize, payload: &[u8], size: usize) -> Vec<Forward> {
        self.send_with_level(track, layer, payload, size, None)
    }

    fn send_with_level(
        &mut self,
        track: TrackHandle,
        layer: usize,
        payload: &[u8],
        size: usize,
        level: Option<u8>,
    ) -> Vec<Forward> {
        // Layers number their packets independently, as simulcast encoders do.
        let counter = self.seq.entry((track, layer)).or_insert(((layer as u16) * 10_000, (layer as u32) * 1_000_000));
        counter.0 = counter.0.wrapping_add(1);
        counter.1 = counter.1.wrapping_add(3000);
        let meta = RtpMeta { seq: counter.0, ts: counter.1, payload, size, audio_level: level };
        let mut out = Vec::new();
        self.room.on_rtp(track, layer, &meta, self.now, &mut out);
        out
    }

    fn commands(&mut self) -> Vec<Command> {
        std::iter::from_fn(|| self.room.poll_command()).collect()
    }

    fn subscriptions_of(&mut self, who: &str) -> Vec<(SubscriptionId, TrackId)> {
        self.commands()
            .into_iter()
            .filter_map(|c| match c {
                Command::SubscriptionAdded { subscription, subscriber, track_id, .. } if subscriber == who => {
                    Some((subscription, track_id))
                }
                _ => None,
            })
            .collect()
    }
}

fn video(id: &str) -> TrackInfo {
    TrackInfo { id: id.into(), codec: Codec::Vp8, source: Source::Camera, origin: None }
}

fn audio(id: &str) -> TrackInfo {
    TrackInfo { id: id.into(), codec: Codec::Opus, source: Source::Microphone, origin: None }
}

#[test]
fn three_participants_each_receive_the_others_audio_and_video() {
    let mut sim = Sim::new();
    let mut handles = Vec::new();
    for p in ["a", "b", "c"] {
        sim.room.join(p, ParticipantKind::Client, true).unwrap();
        let a = sim.room.publish(p, audio(&format!("{p}-mic"))).unwrap();
        let v = sim.room.publish(p, video(&format!("{p}-cam"))).unwrap();
        sim.room.add_layer(a, "");
        sim.room.add_layer(v, "");
        handles.push((p, a, v));
    }
    let commands = sim.commands();
    for who in ["a", "b", "c"] {
        let mut got: Vec<&str> = commands
            .iter()
            .filter_map(|c| match c {
                Command::SubscriptionAdded { subscriber, track_id, .. } if subscriber == who => Some(track_id.as_str()),
                _ => None,
            })
            .collect();
        got.sort();
        let mut want: Vec<String> = ["a", "b", "c"]
            .iter()
            .filter(|p| **p != who)
            .flat_map(|p| [format!("{p}-cam"), format!("{p}-mic")])
            .collect();
        want.sort();
        assert_eq!(got, want, "{who} subscribes to everyone else's tracks");
    }
    // Audio flows at once; video from the first keyframe (and a keyframe was asked for).
    for (_, a, v) in handles.clone() {
        assert_eq!(sim.send(a, 0, &[0xf8], 100).len(), 2);
        assert!(sim.send(v, 0, DELTA, 1000).is_empty(), "no picture before a keyframe");
    }
    assert!(sim.commands().iter().any(|c| matches!(c, Command::RequestKeyframe { .. })));
    for (_, _, v) in handles {
        assert_eq!(sim.send(v, 0, KEY, 1000).len(), 2);
        assert_eq!(sim.send(v, 0, DELTA, 1000).len(), 2);
    }
    // Participants learn about each other.
    let c_events = sim.room.counters();
    assert_eq!(c_events.packets_in, 12);
}

/// The forwarded (layer, seq) of one subscription over a burst of packets on all layers.
fn burst(sim: &mut Sim, track: TrackHandle, sub: SubscriptionId, keyframe_on: Option<usize>) -> Vec<(usize, u16)> {
    let mut seen = Vec::new();
    // Bitrates 100 kbps, 300 kbps and 1.2 Mbps over 100 ms.
    for (layer, packets) in [(0usize, 1usize), (1, 3), (2, 12)] {
        for i in 0..packets {
            let payload = if keyframe_on == Some(layer) && i == 0 { KEY } else { DELTA };
            for f in sim.send(track, layer, payload, 1250) {
                if f.subscription == sub {
                    seen.push((layer, f.seq));
                }
            }
        }
    }
    seen
}

#[test]
fn simulcast_layers_follow_each_subscribers_estimate_and_switch_on_keyframes() {
    let mut sim = Sim::new();
    sim.room.join("pub", ParticipantKind::Client, false).unwrap();
    sim.room.join("fast", ParticipantKind::Client, false).unwrap();
    sim.room.join("slow", ParticipantKind::Client, false).unwrap();
    let t = sim.room.publish("pub", video("cam")).unwrap();
    for rid in ["q", "h", "f"] {
        sim.room.add_layer(t, rid);
    }
    let fast = sim.room.subscribe("fast", "cam", Preferences::default()).unwrap();
    let slow = sim.room.subscribe("slow", "cam", Preferences::default()).unwrap();
    sim.room.on_estimate("slow", 250_000, sim.now);
    // Measure layer bitrates for a second.
    for _ in 0..10 {
        burst(&mut sim, t, fast, None);
        sim.advance(Duration::from_millis(100));
    }
    let pli: Vec<usize> = sim
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::RequestKeyframe { layer, .. } => Some(layer),
            _ => None,
        })
        .collect();
    assert!(pli.contains(&0) && pli.contains(&2), "keyframes asked for the wanted layers: {pli:?}");
    // Nothing is forwarded until keyframes arrive; then each gets its own layer.
    assert!(burst(&mut sim, t, fast, None).is_empty());
    let fast_seen = burst(&mut sim, t, fast, Some(2));
    assert!(fast_seen.iter().all(|(l, _)| *l == 2) && !fast_seen.is_empty());
    let slow_seen = burst(&mut sim, t, slow, Some(0));
    assert!(slow_seen.iter().all(|(l, _)| *l == 0) && !slow_seen.is_empty(), "{slow_seen:?}");
    assert_eq!(sim.room.forwarded_layer(fast), Some(2));
    assert_eq!(sim.room.forwarded_layer(slow), Some(0));
    let before = burst(&mut sim, t, slow, None);
    let last_slow_seq = before.last().unwrap().1;

    // The cap is lifted: after the hold time the slow subscriber aims higher, asks for a
    // keyframe, and keeps the low layer until it comes.
    sim.room.on_estimate("slow", 5_000_000, sim.now);
    sim.advance(UP_SWITCH_HOLD + LAYER_EVAL_INTERVAL);
    assert!(sim.commands().iter().any(|c| matches!(c, Command::RequestKeyframe { layer: 2, .. })));
    let waiting = burst(&mut sim, t, slow, None);
    assert!(waiting.iter().all(|(l, _)| *l == 0) && !waiting.is_empty());
    // The burst sends the low layer first: the switch happens at the high layer's keyframe.
    let switched = burst(&mut sim, t, slow, Some(2));
    let after: Vec<usize> = switched.iter().map(|(l, _)| *l).skip_while(|l| *l == 0).collect();
    assert!(!after.is_empty() && after.iter().all(|l| *l == 2), "{switched:?}");
    assert_eq!(sim.room.forwarded_layer(slow), Some(2));
    // One continuous sequence across the switch.
    let seqs: Vec<u16> = waiting.iter().chain(&switched).map(|(_, s)| *s).collect();
    assert_eq!(seqs[0], last_slow_seq + 1);
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{seqs:?}");
    assert!(sim.commands().iter().any(|c| matches!(
        c,
        Command::Event { to, event: RoomEvent::LayerChanged { layer: 2, .. } } if to == "slow"
    )));

    // Steady traffic again, then a worse estimate moves down without waiting.
    for _ in 0..10 {
        burst(&mut sim, t, slow, None);
        sim.advance(Duration::from_millis(100));
    }
    assert_eq!(sim.room.forwarded_layer(slow), Some(2));
    sim.room.on_estimate("slow", 150_000, sim.now);
    burst(&mut sim, t, slow, Some(0));
    assert_eq!(sim.room.forwarded_layer(slow), Some(0));
}

#[test]
fn preferences_cap_the_layer() {
    let mut sim = Sim::new();
    sim.room.join("pub", ParticipantKind::Client, false).unwrap();
    sim.room.join("s", ParticipantKind::Client, false).unwrap();
    let t = sim.room.publish("pub", video("cam")).unwrap();
    for rid in ["f", "h", "q"] {
        sim.room.add_layer(t, rid);
    }
    let sub = sim.room.subscribe("s", "cam", Preferences { max_layer: Some(1), max_height: None }).unwrap();
    for _ in 0..5 {
        burst(&mut sim, t, sub, None);
        sim.advance(Duration::from_millis(100));
    }
    // Layers were registered high first; the order comes from the RIDs, not arrival.
    let seen = burst(&mut sim, t, sub, Some(1));
    assert!(!seen.is_empty() && seen.iter().all(|(l, _)| *l == 1), "{seen:?}");
    assert_eq!(sim.room.forwarded_layer(sub), Some(1));
    sim.room.set_preferences("s", "cam", Preferences { max_layer: Some(0), max_height: None }, sim.now).unwrap();
    let seen = burst(&mut sim, t, sub, Some(2));
    assert_eq!(seen.last().map(|(l, _)| *l), Some(2), "index 2 is the q layer");
    assert_eq!(sim.room.forwarded_layer(sub), Some(0));
}

#[test]
fn keyframe_requests_are_rate_limited_and_follow_subscriber_plis() {
    let mut sim = Sim::new();
    sim.room.join("pub", ParticipantKind::Client, false).unwrap();
    sim.room.join("s", ParticipantKind::Client, false).unwrap();
    let t = sim.room.publish("pub", video("cam")).unwrap();
    sim.room.add_layer(t, "");
    let sub = sim.room.subscribe("s", "cam", Preferences::default()).unwrap();
    sim.send(t, 0, KEY, 1000);
    sim.commands();
    assert_eq!(sim.send(t, 0, KEY, 1000).len(), 1);
    let plis = |sim: &mut Sim| sim.commands().iter().filter(|c| matches!(c, Command::RequestKeyframe { .. })).count();
    sim.advance(KEYFRAME_REQUEST_INTERVAL);
    for _ in 0..10 {
        sim.room.on_keyframe_request(sub, sim.now);
    }
    assert_eq!(plis(&mut sim), 1, "ten PLIs in a burst make one request");
    sim.advance(KEYFRAME_REQUEST_INTERVAL);
    sim.room.on_keyframe_request(sub, sim.now);
    assert_eq!(plis(&mut sim), 1);
}

#[test]
fn leaving_removes_tracks_and_subscriptions_and_empties_the_room() {
    let mut sim = Sim::new();
    sim.room.join("a", ParticipantKind::Client, true).unwrap();
    sim.room.join("b", ParticipantKind::Client, true).unwrap();
    sim.room.publish("a", audio("a-mic")).unwrap();
    let b_mic = sim.room.publish("b", audio("b-mic")).unwrap();
    sim.room.add_layer(b_mic, "");
    sim.commands();
    assert_eq!(sim.room.join("a", ParticipantKind::Client, true), Err(RoomError::AlreadyJoined("a".into())));
    sim.room.leave("a").unwrap();
    let cmds = sim.commands();
    assert_eq!(cmds.iter().filter(|c| matches!(c, Command::SubscriptionRemoved { .. })).count(), 2);
    assert!(cmds.contains(&Command::Event {
        to: "b".into(),
        event: RoomEvent::TrackUnpublished { participant: "a".into(), track: "a-mic".into() }
    }));
    assert!(
        cmds.contains(&Command::Event {
            to: "b".into(),
            event: RoomEvent::ParticipantLeft { participant: "a".into() }
        })
    );
    assert!(sim.send(b_mic, 0, &[1], 100).is_empty(), "nobody left to forward to");
    assert_eq!(sim.room.leave("a"), Err(RoomError::UnknownParticipant("a".into())));
    sim.room.leave("b").unwrap();
    assert!(sim.commands().contains(&Command::Empty));
    assert_eq!(sim.room.track_count(), 0);
}

#[test]
fn muted_tracks_are_not_forwarded_and_unmuting_asks_for_a_keyframe() {
    let mut sim = Sim::new();
    sim.room.join("a", ParticipantKind::Client, true).unwrap();
    sim.room.join("b", ParticipantKind::Client, true).unwrap();
    let v = sim.room.publish("a", video("a-cam")).unwrap();
    sim.room.add_layer(v, "");
    assert_eq!(sim.send(v, 0, KEY, 1000).len(), 1);
    sim.room.set_muted("a", "a-cam", true, sim.now).unwrap();
    assert!(sim.send(v, 0, DELTA, 1000).is_empty());
    assert_eq!(sim.room.set_muted("b", "a-cam", true, sim.now), Err(RoomError::UnknownTrack("a-cam".into())));
    sim.commands();
    sim.advance(KEYFRAME_REQUEST_INTERVAL);
    sim.room.set_muted("a", "a-cam", false, sim.now).unwrap();
    let cmds = sim.commands();
    assert!(cmds.iter().any(|c| matches!(c, Command::RequestKeyframe { .. })));
    assert!(cmds.iter().any(|c| matches!(c, Command::Event { event: RoomEvent::TrackMuted { muted: false, .. }, .. })));
    assert_eq!(sim.send(v, 0, DELTA, 1000).len(), 1);
}

#[test]
fn relayed_tracks_show_their_origin_and_relays_never_get_their_own_tracks_back() {
    let mut sim = Sim::new();
    sim.room.join("relay-edge", ParticipantKind::Relay, true).unwrap();
    sim.room.join("alice", ParticipantKind::Client, true).unwrap();
    sim.room.publish("relay-edge", TrackInfo { origin: Some("bob".into()), ..audio("bob-mic") }).unwrap();
    sim.room.publish("alice", audio("alice-mic")).unwrap();
    let cmds = sim.commands();
    let added: Vec<(String, String, String)> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::SubscriptionAdded { subscriber, track_id, publisher, .. } => {
                Some((subscriber.clone(), track_id.clone(), publisher.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        added,
        vec![
            ("alice".into(), "bob-mic".into(), "bob".into()),
            ("relay-edge".into(), "alice-mic".into(), "alice".into())
        ]
    );
    assert!(cmds.contains(&Command::Event {
        to: "alice".into(),
        event: RoomEvent::TrackPublished {
            participant: "bob".into(),
            track: "bob-mic".into(),
            codec: Codec::Opus,
            source: Source::Microphone
        }
    }));
}

#[test]
fn hidden_participants_are_not_announced_but_receive_everything() {
    let mut sim = Sim::new();
    sim.room.join("alice", ParticipantKind::Client, true).unwrap();
    sim.room.publish("alice", audio("alice-mic")).unwrap();
    sim.commands();
    sim.room.join("recorder", ParticipantKind::Hidden, true).unwrap();
    let cmds = sim.commands();
    assert!(!cmds.iter().any(|c| matches!(c, Command::Event { to, .. } if to == "alice")));
    assert_eq!(sim.subscriptions_of("recorder").len(), 0, "already drained above");
    assert!(
        cmds.iter().any(|c| matches!(c, Command::SubscriptionAdded { subscriber, .. } if subscriber == "recorder"))
    );
    assert_eq!(sim.room.client_count(), 1);
}

#[test]
fn the_loudest_participant_is_announced_as_active_speaker() {
    let mut sim = Sim::new();
    let mut tracks = Vec::new();
    for p in ["a", "b"] {
        sim.room.join(p, ParticipantKind::Client, true).unwrap();
        let t = sim.room.publish(p, audio(&format!("{p}-mic"))).unwrap();
        sim.room.add_layer(t, "");
        tracks.push(t);
    }
    sim.commands();
    for _ in 0..15 {
        sim.send_with_level(tracks[0], 0, &[1], 100, Some(110));
        sim.send_with_level(tracks[1], 0, &[1], 100, Some(25));
    }
    sim.advance(SPEAKER_INTERVAL);
    let speakers: Vec<_> = sim
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Command::Event { to, event: RoomEvent::ActiveSpeaker { participant } } => Some((to, participant)),
            _ => None,
        })
        .collect();
    assert_eq!(speakers, vec![("a".to_string(), "b".to_string()), ("b".to_string(), "b".to_string())]);
}
