//! Room behaviour on a simulated clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Codec;
use crate::room::*;

const KEY: &[u8] = &[0x10, 0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01];
const DELTA: &[u8] = &[0x10, 0x01, 0x00, 0x00];

/// A room, a clock, per-layer RTP counters for simulated publishers, and the room's
/// outputs other than forwards, kept until a test takes them.
struct Sim {
    room: Room,
    now: Instant,
    seq: HashMap<(TrackHandle, usize), (u16, u32)>,
    outputs: Vec<Output>,
}

impl Sim {
    fn new() -> Self {
        let now = Instant::now();
        Self { room: Room::new(now), now, seq: HashMap::new(), outputs: Vec::new() }
    }

    /// Feeds one input and drains the room, as a driver does.
    fn input(&mut self, input: Input<'_>) -> Result<Outcome, RoomError> {
        let outcome = self.room.handle_input(input);
        self.drain();
        outcome
    }

    /// Polls until [`Output::Timeout`]: returns the forwards and that deadline, and keeps
    /// every other output for [`Sim::commands`].
    fn drain(&mut self) -> (Vec<Forward>, Instant) {
        let mut forwards = Vec::new();
        loop {
            match self.room.poll_output() {
                Output::Timeout(at) => return (forwards, at),
                Output::Forward(f) => forwards.push(f),
                other => self.outputs.push(other),
            }
        }
    }

    fn join(&mut self, participant: &str, kind: ParticipantKind, auto_subscribe: bool) -> Result<Outcome, RoomError> {
        self.input(Input::Join { participant, kind, auto_subscribe, may_publish: true, tracks: &[] })
    }

    /// Declares the track (unmuted, with its source) and publishes it.
    fn publish(&mut self, participant: &str, info: TrackInfo) -> Result<TrackHandle, RoomError> {
        let declared = [Declaration { id: info.id.clone(), source: info.source, muted: false }];
        self.input(Input::Declare { participant, tracks: &declared })?;
        self.publish_as_is(participant, info)
    }

    /// Publishes without declaring first.
    fn publish_as_is(&mut self, participant: &str, info: TrackInfo) -> Result<TrackHandle, RoomError> {
        self.input(Input::Publish { participant, info }).map(|o| o.track().expect("a handle"))
    }

    fn add_layer(&mut self, track: TrackHandle, rid: &str) -> usize {
        self.input(Input::AddLayer { track, rid }).unwrap().layer().expect("a layer index")
    }

    fn subscribe(&mut self, subscriber: &str, track: &str, prefs: Preferences) -> Result<SubscriptionId, RoomError> {
        self.input(Input::Subscribe { subscriber, track, prefs }).map(|o| o.subscription().expect("a subscription"))
    }

    /// A receiver's estimate (REMB).
    fn estimate(&mut self, subscriber: &str, bps: u64) {
        let now = self.now;
        self.input(Input::Estimate { subscriber, bps, probing: false, now }).unwrap();
    }

    /// The SFU's own send-side estimate, which probes.
    fn probing_estimate(&mut self, subscriber: &str, bps: u64) {
        let now = self.now;
        self.input(Input::Estimate { subscriber, bps, probing: true, now }).unwrap();
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let (_, deadline) = self.drain();
            if deadline > end {
                break;
            }
            self.now = deadline;
            self.input(Input::Timeout(self.now)).unwrap();
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
        let packet = RtpMeta { seq: counter.0, ts: counter.1, payload, size, audio_level: level };
        self.room.handle_input(Input::Rtp { track, layer, packet, now: self.now }).unwrap();
        self.drain().0
    }

    /// The outputs other than forwards since the last call.
    fn commands(&mut self) -> Vec<Output> {
        self.drain();
        std::mem::take(&mut self.outputs)
    }

    fn subscriptions_of(&mut self, who: &str) -> Vec<(SubscriptionId, TrackId)> {
        self.commands()
            .into_iter()
            .filter_map(|c| match c {
                Output::SubscriptionAdded { subscription, subscriber, track_id, .. } if subscriber == who => {
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
        sim.join(p, ParticipantKind::Client, true).unwrap();
        let a = sim.publish(p, audio(&format!("{p}-mic"))).unwrap();
        let v = sim.publish(p, video(&format!("{p}-cam"))).unwrap();
        sim.add_layer(a, "");
        sim.add_layer(v, "");
        handles.push((p, a, v));
    }
    let commands = sim.commands();
    for who in ["a", "b", "c"] {
        let mut got: Vec<&str> = commands
            .iter()
            .filter_map(|c| match c {
                Output::SubscriptionAdded { subscriber, track_id, .. } if subscriber == who => Some(track_id.as_str()),
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
    assert!(sim.commands().iter().any(|c| matches!(c, Output::RequestKeyframe { .. })));
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
    sim.join("pub", ParticipantKind::Client, false).unwrap();
    sim.join("fast", ParticipantKind::Client, false).unwrap();
    sim.join("slow", ParticipantKind::Client, false).unwrap();
    let t = sim.publish("pub", video("cam")).unwrap();
    for rid in ["q", "h", "f"] {
        sim.add_layer(t, rid);
    }
    let fast = sim.subscribe("fast", "cam", Preferences::default()).unwrap();
    let slow = sim.subscribe("slow", "cam", Preferences::default()).unwrap();
    sim.estimate("slow", 250_000);
    // Measure layer bitrates for a second.
    for _ in 0..10 {
        burst(&mut sim, t, fast, None);
        sim.advance(Duration::from_millis(100));
    }
    let pli: Vec<usize> = sim
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Output::RequestKeyframe { layer, .. } => Some(layer),
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
    sim.estimate("slow", 5_000_000);
    sim.advance(UP_SWITCH_HOLD + LAYER_EVAL_INTERVAL);
    assert!(sim.commands().iter().any(|c| matches!(c, Output::RequestKeyframe { layer: 2, .. })));
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
        Output::Event { to, event: RoomEvent::LayerChanged { layer: 2, .. } } if to == "slow"
    )));

    // Steady traffic again, then a worse estimate moves down without waiting.
    for _ in 0..10 {
        burst(&mut sim, t, slow, None);
        sim.advance(Duration::from_millis(100));
    }
    assert_eq!(sim.room.forwarded_layer(slow), Some(2));
    sim.estimate("slow", 150_000);
    burst(&mut sim, t, slow, Some(0));
    assert_eq!(sim.room.forwarded_layer(slow), Some(0));
}

/// A browser probing its uplink pads its highest simulcast layer while that layer's
/// encoder, short of bandwidth, sends next to no pictures: such a layer is not live,
/// and a subscriber with room for it stays on the highest layer that carries pictures
/// (switched to the padded one, its picture would freeze).
#[test]
fn a_layer_that_carries_only_padding_is_never_chosen() {
    let mut sim = Sim::new();
    sim.join("pub", ParticipantKind::Client, false).unwrap();
    sim.join("viewer", ParticipantKind::Client, false).unwrap();
    let t = sim.publish("pub", video("cam")).unwrap();
    for rid in ["q", "h", "f"] {
        sim.add_layer(t, rid);
    }
    let sub = sim.subscribe("viewer", "cam", Preferences::default()).unwrap();
    sim.estimate("viewer", 5_000_000);
    for _ in 0..10 {
        for (layer, payload) in [(0, DELTA), (1, DELTA), (2, &[][..])] {
            sim.send(t, layer, payload, 1250);
        }
        sim.advance(Duration::from_millis(100));
    }
    let asked: Vec<usize> = sim
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Output::RequestKeyframe { layer, .. } => Some(layer),
            _ => None,
        })
        .collect();
    assert!(asked.contains(&1) && !asked.contains(&2), "keyframes asked of the live layers only: {asked:?}");
    sim.send(t, 2, &[], 1250);
    sim.send(t, 1, KEY, 1250);
    assert_eq!(sim.room.forwarded_layer(sub), Some(1));
    // Pictures on the high layer make it live: the subscriber goes up.
    for _ in 0..10 {
        for layer in 0..3 {
            sim.send(t, layer, DELTA, 1250);
        }
        sim.advance(Duration::from_millis(100));
    }
    sim.advance(UP_SWITCH_HOLD + LAYER_EVAL_INTERVAL);
    sim.send(t, 2, KEY, 1250);
    assert_eq!(sim.room.forwarded_layer(sub), Some(2));
}

#[test]
fn preferences_cap_the_layer() {
    let mut sim = Sim::new();
    sim.join("pub", ParticipantKind::Client, false).unwrap();
    sim.join("s", ParticipantKind::Client, false).unwrap();
    let t = sim.publish("pub", video("cam")).unwrap();
    for rid in ["f", "h", "q"] {
        sim.add_layer(t, rid);
    }
    let sub = sim.subscribe("s", "cam", Preferences { max_layer: Some(1), ..Default::default() }).unwrap();
    for _ in 0..5 {
        burst(&mut sim, t, sub, None);
        sim.advance(Duration::from_millis(100));
    }
    // Layers were registered high first; the order comes from the RIDs, not arrival.
    let seen = burst(&mut sim, t, sub, Some(1));
    assert!(!seen.is_empty() && seen.iter().all(|(l, _)| *l == 1), "{seen:?}");
    assert_eq!(sim.room.forwarded_layer(sub), Some(1));
    let prefs = Preferences { max_layer: Some(0), ..Default::default() };
    sim.input(Input::SetPreferences { subscriber: "s", track: "cam", prefs, now: sim.now }).unwrap();
    let seen = burst(&mut sim, t, sub, Some(2));
    assert_eq!(seen.last().map(|(l, _)| *l), Some(2), "index 2 is the q layer");
    assert_eq!(sim.room.forwarded_layer(sub), Some(0));
}

#[test]
fn a_paused_subscription_forwards_nothing_and_resumes_at_a_keyframe() {
    let mut sim = Sim::new();
    sim.join("pub", ParticipantKind::Client, false).unwrap();
    sim.join("s", ParticipantKind::Client, false).unwrap();
    let t = sim.publish("pub", video("cam")).unwrap();
    sim.add_layer(t, "");
    let sub = sim.subscribe("s", "cam", Preferences::default()).unwrap();
    sim.send(t, 0, KEY, 1000);
    assert_eq!(sim.send(t, 0, DELTA, 1000).len(), 1, "forwarding before the pause");
    let paused = Preferences { paused: true, ..Default::default() };
    sim.input(Input::SetPreferences { subscriber: "s", track: "cam", prefs: paused, now: sim.now }).unwrap();
    sim.commands();
    for payload in [DELTA, KEY, DELTA] {
        assert!(sim.send(t, 0, payload, 1000).is_empty(), "nothing while paused, keyframes neither");
    }
    sim.advance(KEYFRAME_RETRY * 2);
    // The publisher keeps sending meanwhile.
    assert!(sim.send(t, 0, DELTA, 1000).is_empty());
    assert!(
        !sim.commands().iter().any(|c| matches!(c, Output::RequestKeyframe { .. })),
        "a paused subscription asks for no keyframes"
    );
    sim.input(Input::SetPreferences { subscriber: "s", track: "cam", prefs: Preferences::default(), now: sim.now })
        .unwrap();
    assert!(
        sim.commands().iter().any(|c| matches!(c, Output::RequestKeyframe { .. })),
        "resuming asks the publisher for a keyframe"
    );
    assert!(sim.send(t, 0, DELTA, 1000).is_empty(), "a delta frame cannot start the picture again");
    assert_eq!(sim.send(t, 0, KEY, 1000).len(), 1, "the keyframe resumes it");
    assert_eq!(sim.send(t, 0, DELTA, 1000).len(), 1);
    assert_eq!(sim.room.forwarded_layer(sub), Some(0));
}

#[test]
fn keyframe_requests_are_rate_limited_and_follow_subscriber_plis() {
    let mut sim = Sim::new();
    sim.join("pub", ParticipantKind::Client, false).unwrap();
    sim.join("s", ParticipantKind::Client, false).unwrap();
    let t = sim.publish("pub", video("cam")).unwrap();
    sim.add_layer(t, "");
    let sub = sim.subscribe("s", "cam", Preferences::default()).unwrap();
    sim.send(t, 0, KEY, 1000);
    sim.commands();
    assert_eq!(sim.send(t, 0, KEY, 1000).len(), 1);
    let plis = |sim: &mut Sim| sim.commands().iter().filter(|c| matches!(c, Output::RequestKeyframe { .. })).count();
    sim.advance(KEYFRAME_REQUEST_INTERVAL);
    for _ in 0..10 {
        sim.input(Input::KeyframeRequest { subscription: sub, now: sim.now }).unwrap();
    }
    assert_eq!(plis(&mut sim), 1, "ten PLIs in a burst make one request");
    sim.advance(KEYFRAME_REQUEST_INTERVAL);
    sim.input(Input::KeyframeRequest { subscription: sub, now: sim.now }).unwrap();
    assert_eq!(plis(&mut sim), 1);
}

#[test]
fn leaving_removes_tracks_and_subscriptions_and_empties_the_room() {
    let mut sim = Sim::new();
    sim.join("a", ParticipantKind::Client, true).unwrap();
    sim.join("b", ParticipantKind::Client, true).unwrap();
    sim.publish("a", audio("a-mic")).unwrap();
    let b_mic = sim.publish("b", audio("b-mic")).unwrap();
    sim.add_layer(b_mic, "");
    sim.commands();
    assert_eq!(sim.join("a", ParticipantKind::Client, true), Err(RoomError::AlreadyJoined("a".into())));
    sim.input(Input::Leave { participant: "a" }).unwrap();
    let cmds = sim.commands();
    assert_eq!(cmds.iter().filter(|c| matches!(c, Output::SubscriptionRemoved { .. })).count(), 2);
    assert!(cmds.contains(&Output::Event {
        to: "b".into(),
        event: RoomEvent::TrackUnpublished { participant: "a".into(), track: "a-mic".into() }
    }));
    assert!(
        cmds.contains(&Output::Event { to: "b".into(), event: RoomEvent::ParticipantLeft { participant: "a".into() } })
    );
    assert!(sim.send(b_mic, 0, &[1], 100).is_empty(), "nobody left to forward to");
    assert_eq!(sim.input(Input::Leave { participant: "a" }), Err(RoomError::UnknownParticipant("a".into())));
    sim.input(Input::Leave { participant: "b" }).unwrap();
    assert!(sim.commands().contains(&Output::Empty));
    assert_eq!(sim.room.track_count(), 0);
}

#[test]
fn muted_tracks_are_not_forwarded_and_unmuting_asks_for_a_keyframe() {
    let mut sim = Sim::new();
    sim.join("a", ParticipantKind::Client, true).unwrap();
    sim.join("b", ParticipantKind::Client, true).unwrap();
    let v = sim.publish("a", video("a-cam")).unwrap();
    sim.add_layer(v, "");
    assert_eq!(sim.send(v, 0, KEY, 1000).len(), 1);
    sim.input(Input::SetMuted { participant: "a", track: "a-cam", muted: true, now: sim.now }).unwrap();
    assert!(sim.send(v, 0, DELTA, 1000).is_empty());
    let by_b = Input::SetMuted { participant: "b", track: "a-cam", muted: true, now: sim.now };
    assert_eq!(sim.input(by_b), Err(RoomError::UnknownTrack("a-cam".into())));
    sim.commands();
    sim.advance(KEYFRAME_REQUEST_INTERVAL);
    sim.input(Input::SetMuted { participant: "a", track: "a-cam", muted: false, now: sim.now }).unwrap();
    let cmds = sim.commands();
    assert!(cmds.iter().any(|c| matches!(c, Output::RequestKeyframe { .. })));
    assert!(cmds.iter().any(|c| matches!(c, Output::Event { event: RoomEvent::TrackMuted { muted: false, .. }, .. })));
    assert_eq!(sim.send(v, 0, DELTA, 1000).len(), 1);
}

#[test]
fn a_muted_camera_is_not_asked_for_keyframes_until_it_is_unmuted() {
    // A camera published muted still sends packets on its layers (a browser's black
    // frames and padding): a subscription aiming at a layer must not ask every retry.
    let mut sim = Sim::new();
    sim.join("pub", ParticipantKind::Client, false).unwrap();
    sim.join("sub", ParticipantKind::Client, false).unwrap();
    let t = sim.publish("pub", video("cam")).unwrap();
    for rid in ["q", "h", "f"] {
        sim.add_layer(t, rid);
    }
    sim.input(Input::SetMuted { participant: "pub", track: "cam", muted: true, now: sim.now }).unwrap();
    let sub = sim.subscribe("sub", "cam", Preferences::default()).unwrap();
    for _ in 0..50 {
        burst(&mut sim, t, sub, None);
        sim.advance(Duration::from_millis(100));
    }
    let plis = |sim: &mut Sim| sim.commands().iter().filter(|c| matches!(c, Output::RequestKeyframe { .. })).count();
    assert_eq!(plis(&mut sim), 0, "keyframes asked of a muted camera");
    sim.input(Input::SetMuted { participant: "pub", track: "cam", muted: false, now: sim.now }).unwrap();
    assert!(
        sim.commands().iter().any(|c| matches!(c, Output::RequestKeyframe { layer: 2, .. })),
        "unmuted: the layer the subscription waits for is asked for"
    );
    let seen = burst(&mut sim, t, sub, Some(2));
    assert!(!seen.is_empty() && seen.iter().all(|(l, _)| *l == 2), "{seen:?}");
}

#[test]
fn a_publisher_is_told_which_simulcast_layers_anyone_may_receive() {
    let mut sim = Sim::new();
    sim.join("pub", ParticipantKind::Client, false).unwrap();
    sim.join("small", ParticipantKind::Client, false).unwrap();
    let t = sim.publish("pub", video("cam")).unwrap();
    for rid in ["q", "h", "f"] {
        sim.add_layer(t, rid);
    }
    let wanted = |sim: &mut Sim| -> Vec<Vec<String>> {
        sim.commands()
            .into_iter()
            .filter_map(|c| match c {
                Output::Event { to, event: RoomEvent::LayersWanted { track, rids } } => {
                    assert_eq!((to.as_str(), track.as_str()), ("pub", "cam"));
                    Some(rids)
                }
                _ => None,
            })
            .collect()
    };
    let run = |sim: &mut Sim, sub: SubscriptionId, d: Duration| {
        let end = sim.now + d;
        while sim.now < end {
            burst(sim, t, sub, None);
            sim.advance(Duration::from_millis(100));
        }
    };
    let rids = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // One subscriber showing a small tile (the lowest layer only): the others stop after the hold.
    let small = sim.subscribe("small", "cam", Preferences { max_layer: Some(0), ..Default::default() }).unwrap();
    run(&mut sim, small, LAYER_RELEASE_HOLD - Duration::from_millis(500));
    assert!(wanted(&mut sim).is_empty(), "not before the hold");
    run(&mut sim, small, Duration::from_secs(1));
    assert_eq!(wanted(&mut sim), [rids(&["q"])]);
    run(&mut sim, small, Duration::from_secs(3));
    assert!(wanted(&mut sim).is_empty(), "told once");

    // A second subscriber up to the middle layer: asked for at once.
    sim.join("mid", ParticipantKind::Client, false).unwrap();
    let mid = sim.subscribe("mid", "cam", Preferences { max_layer: Some(1), ..Default::default() }).unwrap();
    run(&mut sim, small, LAYER_EVAL_INTERVAL * 2);
    assert_eq!(wanted(&mut sim), [rids(&["q", "h"])]);
    // Its tile hidden: nothing above the lowest is wanted, after the hold.
    let paused = Preferences { paused: true, ..Default::default() };
    sim.input(Input::SetPreferences { subscriber: "mid", track: "cam", prefs: paused, now: sim.now }).unwrap();
    run(&mut sim, small, LAYER_RELEASE_HOLD + Duration::from_secs(1));
    assert_eq!(wanted(&mut sim), [rids(&["q"])]);
    let _ = mid;
    // A recorder (hidden participant) wants every layer, whatever the tiles.
    sim.join("rec", ParticipantKind::Hidden, false).unwrap();
    sim.subscribe("rec", "cam", Preferences::default()).unwrap();
    run(&mut sim, small, LAYER_EVAL_INTERVAL * 2);
    assert_eq!(wanted(&mut sim), [rids(&["q", "h", "f"])]);
}

#[test]
fn layers_whose_rids_do_not_say_their_order_are_never_stopped() {
    let mut sim = Sim::new();
    sim.join("pub", ParticipantKind::Client, false).unwrap();
    sim.join("small", ParticipantKind::Client, false).unwrap();
    let t = sim.publish("pub", video("cam")).unwrap();
    for rid in ["alpha", "beta", "gamma"] {
        sim.add_layer(t, rid);
    }
    let small = sim.subscribe("small", "cam", Preferences { max_layer: Some(0), ..Default::default() }).unwrap();
    for _ in 0..100 {
        burst(&mut sim, t, small, None);
        sim.advance(Duration::from_millis(100));
    }
    let told = sim.commands().iter().any(|c| matches!(c, Output::Event { event: RoomEvent::LayersWanted { .. }, .. }));
    assert!(!told, "ordered by bitrate only, no layer is switched off");
}

#[test]
fn relayed_tracks_show_their_origin_and_relays_never_get_their_own_tracks_back() {
    let mut sim = Sim::new();
    sim.join("relay-edge", ParticipantKind::Relay, true).unwrap();
    sim.join("alice", ParticipantKind::Client, true).unwrap();
    sim.publish("relay-edge", TrackInfo { origin: Some("bob".into()), ..audio("bob-mic") }).unwrap();
    sim.publish("alice", audio("alice-mic")).unwrap();
    let cmds = sim.commands();
    let added: Vec<(String, String, String)> = cmds
        .iter()
        .filter_map(|c| match c {
            Output::SubscriptionAdded { subscriber, track_id, publisher, .. } => {
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
    assert!(cmds.contains(&Output::Event {
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
    sim.join("alice", ParticipantKind::Client, true).unwrap();
    sim.publish("alice", audio("alice-mic")).unwrap();
    sim.commands();
    sim.join("recorder", ParticipantKind::Hidden, true).unwrap();
    let cmds = sim.commands();
    assert!(!cmds.iter().any(|c| matches!(c, Output::Event { to, .. } if to == "alice")));
    assert_eq!(sim.subscriptions_of("recorder").len(), 0, "already drained above");
    assert!(cmds.iter().any(|c| matches!(c, Output::SubscriptionAdded { subscriber, .. } if subscriber == "recorder")));
    assert_eq!(sim.room.client_count(), 1);
}

#[test]
fn the_loudest_participant_is_announced_as_active_speaker() {
    let mut sim = Sim::new();
    let mut tracks = Vec::new();
    for p in ["a", "b"] {
        sim.join(p, ParticipantKind::Client, true).unwrap();
        let t = sim.publish(p, audio(&format!("{p}-mic"))).unwrap();
        sim.add_layer(t, "");
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
            Output::Event { to, event: RoomEvent::ActiveSpeaker { participant } } => Some((to, participant)),
            _ => None,
        })
        .collect();
    assert_eq!(speakers, vec![("a".to_string(), "b".to_string()), ("b".to_string(), "b".to_string())]);
}

#[test]
fn one_poll_loop_drains_a_packets_forwards_first_then_its_other_outputs_then_the_deadline() {
    let start = Instant::now();
    let mut room = Room::new(start);
    assert_eq!(room.poll_output(), Output::Timeout(start + LOUDEST_INTERVAL), "nothing pending: the earliest deadline");
    let declared = [Declaration { id: "a-cam".into(), source: Source::Camera, muted: false }];
    for participant in ["a", "b"] {
        let tracks = if participant == "a" { &declared[..] } else { &[] };
        let join =
            Input::Join { participant, kind: ParticipantKind::Client, auto_subscribe: true, may_publish: true, tracks };
        room.handle_input(join).unwrap();
    }
    let track = room.handle_input(Input::Publish { participant: "a", info: video("a-cam") }).unwrap().track().unwrap();
    let layer = room.handle_input(Input::AddLayer { track, rid: "" }).unwrap().layer().unwrap();
    let missing = TrackHandle(track.0 + 1);
    assert_eq!(room.handle_input(Input::AddLayer { track: missing, rid: "" }), Err(RoomError::UnknownHandle(missing)));
    while !matches!(room.poll_output(), Output::Timeout(_)) {}

    let packet = RtpMeta { seq: 7, ts: 90_000, payload: KEY, size: 1000, audio_level: None };
    room.handle_input(Input::Rtp { track, layer, packet, now: start }).unwrap();
    let mut outputs = Vec::new();
    loop {
        match room.poll_output() {
            Output::Timeout(at) => {
                assert_eq!(at, start + LOUDEST_INTERVAL);
                break;
            }
            other => outputs.push(other),
        }
    }
    assert!(matches!(outputs[0], Output::Forward(Forward { seq: 7, ts: 90_000, .. })), "{outputs:?}");
    assert!(matches!(outputs[1], Output::RequestKeyframe { .. }), "{outputs:?}");
    assert!(matches!(&outputs[2], Output::Event { to, event: RoomEvent::LayerChanged { .. } } if to == "b"));
    assert_eq!(outputs.len(), 3);
}

fn declared(id: &str, source: Source, muted: bool) -> Declaration {
    Declaration { id: id.into(), source, muted }
}

fn published_to(cmds: &[Output], who: &str) -> Vec<String> {
    cmds.iter()
        .filter_map(|c| match c {
            Output::Event { to, event: RoomEvent::TrackPublished { track, .. } } if to == who => Some(track.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn only_declared_tracks_of_their_declared_kind_are_published() {
    let mut sim = Sim::new();
    let tracks = [declared("a-cam", Source::Camera, false), declared("a-mic", Source::Microphone, false)];
    let join = Input::Join {
        participant: "a",
        kind: ParticipantKind::Client,
        auto_subscribe: true,
        may_publish: true,
        tracks: &tracks,
    };
    sim.input(join).unwrap();
    sim.join("b", ParticipantKind::Client, true).unwrap();
    sim.commands();
    // Not declared, or declared as the other kind: refused, and nobody hears of it.
    assert_eq!(sim.publish_as_is("a", video("a-extra")), Err(RoomError::NotDeclared("a-extra".into())));
    assert_eq!(sim.publish_as_is("a", audio("a-cam")), Err(RoomError::KindMismatch("a-cam".into(), Source::Camera)));
    assert_eq!(
        sim.publish_as_is("a", video("a-mic")),
        Err(RoomError::KindMismatch("a-mic".into(), Source::Microphone))
    );
    // A track another participant declared is not this one's.
    assert_eq!(sim.publish_as_is("b", video("a-cam")), Err(RoomError::NotDeclared("a-cam".into())));
    assert_eq!(sim.room.track_count(), 0);
    assert!(sim.commands().is_empty(), "a refused track causes nothing");
    // The declared ones pass, with the declared source whatever the driver guessed.
    let screen = TrackInfo { source: Source::ScreenShare, ..video("a-cam") };
    sim.publish_as_is("a", screen).unwrap();
    sim.publish_as_is("a", audio("a-mic")).unwrap();
    let sources: Vec<Source> = {
        let mut t: Vec<_> = sim.room.tracks().map(|(id, _, _, source, _)| (id.clone(), source)).collect();
        t.sort_by(|x, y| x.0.cmp(&y.0));
        t.into_iter().map(|(_, s)| s).collect()
    };
    assert_eq!(sources, vec![Source::Camera, Source::Microphone]);
    assert_eq!(sim.subscriptions_of("b").len(), 2);
    // Declarations come later too (a renegotiation), all or nothing.
    let later = [declared("a-screen", Source::ScreenShare, false), declared("a-cam", Source::Microphone, false)];
    assert_eq!(
        sim.input(Input::Declare { participant: "a", tracks: &later }),
        Err(RoomError::Redeclared("a-cam".into()))
    );
    assert_eq!(sim.publish_as_is("a", video("a-screen")), Err(RoomError::NotDeclared("a-screen".into())));
    let twice = [declared("x", Source::Camera, false), declared("x", Source::ScreenShare, false)];
    assert_eq!(sim.input(Input::Declare { participant: "a", tracks: &twice }), Err(RoomError::Redeclared("x".into())));
    sim.input(Input::Declare { participant: "a", tracks: &later[..1] }).unwrap();
    sim.publish_as_is("a", video("a-screen")).unwrap();
    let unknown = Input::Declare { participant: "nobody", tracks: &later[..1] };
    assert_eq!(sim.input(unknown), Err(RoomError::UnknownParticipant("nobody".into())));
}

#[test]
fn a_participant_that_may_not_publish_declares_and_publishes_nothing() {
    let mut sim = Sim::new();
    sim.join("host", ParticipantKind::Client, true).unwrap();
    let tracks = [declared("v-cam", Source::Camera, false)];
    let viewer = |tracks| Input::Join {
        participant: "viewer",
        kind: ParticipantKind::Client,
        auto_subscribe: true,
        may_publish: false,
        tracks,
    };
    // A refused join changes nothing: nobody hears of it, and it may join again.
    sim.commands();
    assert_eq!(sim.input(viewer(&tracks)), Err(RoomError::PublishNotAllowed("viewer".into())));
    assert!(!sim.room.contains("viewer"));
    assert!(sim.commands().is_empty());
    sim.input(viewer(&[])).unwrap();
    assert_eq!(sim.room.may_publish("viewer"), Some(false));
    assert_eq!(sim.room.may_publish("host"), Some(true));
    assert_eq!(sim.room.may_publish("nobody"), None);
    assert_eq!(
        sim.input(Input::Declare { participant: "viewer", tracks: &tracks }),
        Err(RoomError::PublishNotAllowed("viewer".into()))
    );
    assert_eq!(sim.publish_as_is("viewer", video("v-cam")), Err(RoomError::PublishNotAllowed("viewer".into())));
    // It still receives what others publish.
    sim.commands();
    sim.publish("host", audio("host-mic")).unwrap();
    assert_eq!(sim.subscriptions_of("viewer").len(), 1);
}

#[test]
fn a_track_declared_muted_forwards_nothing_until_unmuted() {
    let mut sim = Sim::new();
    sim.join("b", ParticipantKind::Client, true).unwrap();
    let tracks = [declared("a-cam", Source::Camera, true), declared("a-mic", Source::Microphone, false)];
    let join = Input::Join {
        participant: "a",
        kind: ParticipantKind::Client,
        auto_subscribe: true,
        may_publish: true,
        tracks: &tracks,
    };
    sim.input(join).unwrap();
    // Declared muted again, or unmuted, by a later declaration: the first one counts.
    let again = [declared("a-cam", Source::Camera, false)];
    sim.input(Input::Declare { participant: "a", tracks: &again }).unwrap();
    sim.commands();
    let v = sim.publish_as_is("a", video("a-cam")).unwrap();
    sim.add_layer(v, "");
    let cmds = sim.commands();
    assert_eq!(published_to(&cmds, "b"), vec!["a-cam".to_string()]);
    let muted = |to: &str| Output::Event {
        to: to.into(),
        event: RoomEvent::TrackMuted { participant: "a".into(), track: "a-cam".into(), muted: true },
    };
    assert!(cmds.contains(&muted("b")) && cmds.contains(&muted("a")), "everyone learns it is muted: {cmds:?}");
    assert!(sim.send(v, 0, KEY, 1000).is_empty(), "muted from the first packet");
    assert!(sim.send(v, 0, DELTA, 1000).is_empty());
    assert_eq!(sim.room.tracks().find(|t| t.0 == "a-cam").map(|t| t.4), Some(true));
    // A newcomer learns that too.
    sim.join("c", ParticipantKind::Client, true).unwrap();
    let cmds = sim.commands();
    assert!(cmds.contains(&muted("c")), "{cmds:?}");
    sim.advance(KEYFRAME_REQUEST_INTERVAL);
    sim.input(Input::SetMuted { participant: "a", track: "a-cam", muted: false, now: sim.now }).unwrap();
    assert!(sim.commands().iter().any(|c| matches!(c, Output::RequestKeyframe { .. })));
    assert_eq!(sim.send(v, 0, KEY, 1000).len(), 2, "b and c get the keyframe after the unmute");
}

#[test]
fn a_declared_track_is_muted_before_it_is_published() {
    let mut sim = Sim::new();
    sim.join("b", ParticipantKind::Client, true).unwrap();
    let tracks = [declared("a-mic", Source::Microphone, false)];
    let join = Input::Join {
        participant: "a",
        kind: ParticipantKind::Client,
        auto_subscribe: true,
        may_publish: true,
        tracks: &tracks,
    };
    sim.input(join).unwrap();
    // A host mutes it before its first packet: no retry needed, it is published muted.
    sim.input(Input::SetMuted { participant: "a", track: "a-mic", muted: true, now: sim.now }).unwrap();
    let by_b = Input::SetMuted { participant: "b", track: "a-mic", muted: true, now: sim.now };
    assert_eq!(sim.input(by_b), Err(RoomError::UnknownTrack("a-mic".into())));
    let undeclared = Input::SetMuted { participant: "a", track: "a-cam", muted: true, now: sim.now };
    assert_eq!(sim.input(undeclared), Err(RoomError::UnknownTrack("a-cam".into())));
    let t = sim.publish_as_is("a", audio("a-mic")).unwrap();
    sim.add_layer(t, "");
    assert!(sim.send_with_level(t, 0, &[0xf8], 100, Some(20)).is_empty());
    sim.input(Input::SetMuted { participant: "a", track: "a-mic", muted: false, now: sim.now }).unwrap();
    assert_eq!(sim.send(t, 0, &[0xf8], 100).len(), 1);
}

#[test]
fn relays_publish_without_declarations() {
    let mut sim = Sim::new();
    sim.join("relay-edge", ParticipantKind::Relay, true).unwrap();
    sim.join("alice", ParticipantKind::Client, true).unwrap();
    let relayed = TrackInfo { origin: Some("bob".into()), source: Source::ScreenShare, ..video("bob-screen") };
    let t = sim.publish_as_is("relay-edge", relayed).unwrap();
    sim.add_layer(t, "");
    assert_eq!(sim.room.tracks().next().map(|t| t.3), Some(Source::ScreenShare), "the relay's source stands");
    assert_eq!(sim.send(t, 0, KEY, 1000).len(), 1);
}

#[test]
fn a_track_published_again_keeps_its_last_mute() {
    let mut sim = Sim::new();
    sim.join("a", ParticipantKind::Client, true).unwrap();
    sim.join("b", ParticipantKind::Client, true).unwrap();
    sim.publish("a", audio("a-mic")).unwrap();
    sim.input(Input::SetMuted { participant: "a", track: "a-mic", muted: true, now: sim.now }).unwrap();
    sim.input(Input::Unpublish { participant: "a", track: "a-mic" }).unwrap();
    let t = sim.publish_as_is("a", audio("a-mic")).unwrap();
    sim.add_layer(t, "");
    assert!(sim.send(t, 0, &[0xf8], 100).is_empty(), "still muted");
    assert_eq!(sim.room.tracks().next().map(|t| t.4), Some(true));
}

/// Twelve clients with open microphones; `levels[i]` is client i's RFC 6464 level.
/// Sends 20 ms audio packets from every client for `d`, and returns, per subscription,
/// the forwarded sequence numbers.
fn talk(sim: &mut Sim, tracks: &[TrackHandle], levels: &[u8], d: Duration) -> HashMap<SubscriptionId, Vec<u16>> {
    let mut forwarded: HashMap<SubscriptionId, Vec<u16>> = HashMap::new();
    let end = sim.now + d;
    while sim.now < end {
        for (h, level) in tracks.iter().zip(levels) {
            for f in sim.send_with_level(*h, 0, &[0xfc, 0x01], 80, Some(*level)) {
                forwarded.entry(f.subscription).or_default().push(f.seq);
            }
        }
        sim.advance(Duration::from_millis(20));
    }
    forwarded
}

/// Each participant publishes `<name>-mic`.
fn publish_microphones(sim: &mut Sim, names: &[String]) -> Vec<TrackHandle> {
    let mut tracks = Vec::new();
    for n in names {
        let h = sim.publish(n, audio(&format!("{n}-mic"))).unwrap();
        sim.add_layer(h, "");
        tracks.push(h);
    }
    tracks
}

/// The participants whose audio `listener` heard (forwards to its subscriptions).
fn heard(
    forwarded: &HashMap<SubscriptionId, Vec<u16>>,
    subs: &HashMap<SubscriptionId, (String, String)>,
    listener: &str,
) -> Vec<String> {
    let mut who: Vec<String> = forwarded
        .keys()
        .filter_map(|id| subs.get(id).filter(|(l, _)| l == listener).map(|(_, publisher)| publisher.clone()))
        .collect();
    who.sort();
    who
}

#[test]
fn in_a_room_of_twelve_each_listener_hears_the_three_loudest_and_never_itself() {
    let mut sim = Sim::new();
    let names: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
    for n in &names {
        sim.join(n, ParticipantKind::Client, true).unwrap();
    }
    let tracks = publish_microphones(&mut sim, &names);
    // Subscription -> (listener, publisher).
    let subs: HashMap<SubscriptionId, (String, String)> = sim
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Output::SubscriptionAdded { subscription, subscriber, publisher, .. } => {
                Some((subscription, (subscriber, publisher)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(subs.len(), 12 * 11);
    // p00..p02 talk (p00 loudest), the rest are silent.
    let mut levels = vec![127u8; 12];
    levels[..3].copy_from_slice(&[20, 25, 30]);
    talk(&mut sim, &tracks, &levels, Duration::from_millis(500));
    let f = talk(&mut sim, &tracks, &levels, Duration::from_millis(500));
    let p07_from_p02 = subs.iter().find(|(_, (l, p))| l == "p07" && p == "p02").map(|(id, _)| *id).unwrap();
    let mut last_before_pause = *f[&p07_from_p02].last().unwrap();
    for listener in &names[3..] {
        assert_eq!(heard(&f, &subs, listener), ["p00", "p01", "p02"], "{listener}");
    }
    // A talker hears the other two; no fourth talker, so nothing else.
    assert_eq!(heard(&f, &subs, "p00"), ["p01", "p02"]);
    assert_eq!(sim.room.audible_tracks("p05"), tracks[..3].to_vec());

    // p03 starts, far louder; p02 stops: p03 takes p02's place.
    levels[2] = 127;
    levels[3] = 5;
    let switching = talk(&mut sim, &tracks, &levels, Duration::from_millis(500));
    if let Some(last) = switching.get(&p07_from_p02).and_then(|seqs| seqs.last()) {
        last_before_pause = *last;
    }
    let f = talk(&mut sim, &tracks, &levels, Duration::from_millis(500));
    assert_eq!(heard(&f, &subs, "p07"), ["p00", "p01", "p03"]);
    // p03's own voice takes no place in its set: it keeps hearing p02's place (silent
    // now, and nobody else talks to take it).
    assert_eq!(heard(&f, &subs, "p03"), ["p00", "p01", "p02"]);
    // p02 talks again, a little louder than p01 (20 > 25 by 5 dB, under the margin):
    // the set holds.
    levels[2] = 20;
    let f = talk(&mut sim, &tracks, &levels, Duration::from_secs(1));
    assert_eq!(heard(&f, &subs, "p07"), ["p00", "p01", "p03"], "no churn between similar voices");
    assert_eq!(heard(&f, &subs, "p03"), ["p00", "p01", "p02"]);
    assert!(sim.room.counters().loudest_changes > 0);

    // A muted talker gives its place up at once, to p02 here.
    sim.input(Input::SetMuted { participant: "p03", track: "p03-mic", muted: true, now: sim.now }).unwrap();
    let f = talk(&mut sim, &tracks, &levels, Duration::from_millis(300));
    assert_eq!(heard(&f, &subs, "p07"), ["p00", "p01", "p02"]);
    // Heard again after a pause, p02's numbering continues without a gap.
    let seqs = &f[&p07_from_p02];
    assert_eq!(seqs[0], last_before_pause.wrapping_add(1), "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{seqs:?}");
}

#[test]
fn small_rooms_relays_and_the_recorder_hear_every_voice() {
    let mut sim = Sim::new();
    let names: Vec<String> = (0..9).map(|i| format!("p{i}")).collect();
    for n in &names {
        sim.join(n, ParticipantKind::Client, true).unwrap();
    }
    sim.join("edge", ParticipantKind::Relay, true).unwrap();
    sim.join("recorder", ParticipantKind::Hidden, true).unwrap();
    let tracks = publish_microphones(&mut sim, &names);
    let all_levels = [20u8, 25, 30, 35, 40, 45, 50, 55, 127];
    talk(&mut sim, &tracks, &all_levels, Duration::from_millis(300));
    // Nine clients: under the default's ten, everyone hears everyone else.
    assert_eq!(sim.room.audible_tracks("p8").len(), 8);
    // The tenth client turns loudest-speaker audio on for the clients only.
    sim.join("p9", ParticipantKind::Client, true).unwrap();
    talk(&mut sim, &tracks, &all_levels, Duration::from_millis(500));
    assert_eq!(sim.room.audible_tracks("p8"), tracks[..3].to_vec());
    assert_eq!(sim.room.audible_tracks("p9"), tracks[..3].to_vec(), "a late joiner too");
    assert_eq!(sim.room.audible_tracks("edge").len(), 9, "a relay carries every voice to its listeners");
    assert_eq!(sim.room.audible_tracks("recorder").len(), 9);
    // Back to nine: everyone hears everyone again.
    sim.input(Input::Leave { participant: "p9" }).unwrap();
    talk(&mut sim, &tracks, &all_levels, Duration::from_millis(200));
    assert_eq!(sim.room.audible_tracks("p8").len(), 8);

    // Switched off: every listener hears every voice however large the room.
    let now = Instant::now();
    let mut room = Room::with_audio_policy(now, AudioPolicy::ALL);
    for i in 0..12 {
        let p = format!("q{i}");
        room.handle_input(Input::Join {
            participant: &p,
            kind: ParticipantKind::Client,
            auto_subscribe: true,
            may_publish: true,
            tracks: &[],
        })
        .unwrap();
    }
    let mut sim = Sim { room, now, seq: HashMap::new(), outputs: Vec::new() };
    let names: Vec<String> = (0..12).map(|i| format!("q{i}")).collect();
    let tracks = publish_microphones(&mut sim, &names);
    talk(&mut sim, &tracks, &[20; 12], Duration::from_millis(300));
    assert_eq!(sim.room.audible_tracks("q0").len(), 11);
}

/// A mixed room as the SFU builds it: the mixer joins and publishes its track with the
/// whole mix and one layer per slot.
fn mixed_room(slots: usize) -> (Sim, TrackHandle) {
    let now = Instant::now();
    let mut sim = Sim {
        room: Room::with_audio_policy(now, AudioPolicy::mixed(slots)),
        now,
        seq: HashMap::new(),
        outputs: Vec::new(),
    };
    let declared = [Declaration { id: "~mix".into(), source: Source::Microphone, muted: false }];
    let join = Input::Join {
        participant: "~mixer",
        kind: ParticipantKind::Mixer,
        auto_subscribe: false,
        may_publish: true,
        tracks: &declared,
    };
    sim.input(join).unwrap();
    let mix = sim.publish_as_is("~mixer", audio("~mix")).unwrap();
    assert_eq!(sim.add_layer(mix, MIX_ALL), 0);
    for k in 0..slots {
        assert_eq!(sim.add_layer(mix, &mix_minus(k)), k + 1);
    }
    (sim, mix)
}

/// Per subscription of the mix: (layer, forwarded sequence number) of what it received.
type MixHeard = HashMap<SubscriptionId, Vec<(usize, u16)>>;

/// One 20 ms of a mixed room: every voice sends a packet at its level, then the mixer
/// one frame on each of its layers, all numbered alike. Returns, per subscription, the
/// (layer, forwarded sequence number) of the mix it received, and which subscriptions
/// received a voice itself.
fn mix_frame(
    sim: &mut Sim,
    mix: TrackHandle,
    layers: usize,
    voices: &[(TrackHandle, u8)],
    frame: u16,
) -> (MixHeard, Vec<SubscriptionId>) {
    let mut routed = Vec::new();
    for (h, level) in voices {
        routed.extend(sim.send_with_level(*h, 0, &[0xfc, 0x01], 80, Some(*level)).into_iter().map(|f| f.subscription));
    }
    let mut mixed: MixHeard = HashMap::new();
    for layer in 0..layers {
        let packet =
            RtpMeta { seq: 500 + frame, ts: 960 * frame as u32, payload: &[0x78, 0x01], size: 60, audio_level: None };
        sim.room.handle_input(Input::Rtp { track: mix, layer, packet, now: sim.now }).unwrap();
        for f in sim.drain().0 {
            mixed.entry(f.subscription).or_default().push((layer, f.seq));
        }
    }
    sim.advance(Duration::from_millis(20));
    (mixed, routed)
}

#[test]
fn in_a_mixed_room_each_client_hears_the_mix_without_its_own_voice() {
    let (mut sim, mix) = mixed_room(2);
    let names = ["p0", "p1", "p2", "p3"];
    for n in names {
        sim.join(n, ParticipantKind::Client, true).unwrap();
    }
    sim.join("edge", ParticipantKind::Relay, true).unwrap();
    sim.join("recorder", ParticipantKind::Hidden, true).unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mics = publish_microphones(&mut sim, &names);
    let added: Vec<(SubscriptionId, String, TrackHandle)> = sim
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            Output::SubscriptionAdded { subscription, subscriber, track, .. } => {
                Some((subscription, subscriber, track))
            }
            Output::Event { to, event: RoomEvent::ParticipantJoined { participant, .. } } => {
                assert!(participant != "~mixer" && to != "~mixer", "the mixer is never announced nor told");
                None
            }
            _ => None,
        })
        .collect();
    // Every client receives the mix; the relay and the recorder do not (they carry
    // and record the voices themselves); the mixer subscribes to nothing.
    let mix_sub = |who: &str| added.iter().find(|(_, s, t)| s == who && *t == mix).map(|(id, ..)| *id);
    for n in &names {
        assert!(mix_sub(n).is_some(), "{n} receives the mix");
    }
    assert_eq!((mix_sub("edge"), mix_sub("recorder")), (None, None));
    assert!(added.iter().all(|(_, s, _)| s != "~mixer"));
    assert_eq!(sim.subscribe("edge", "~mix", Preferences::default()), Err(RoomError::NotForSubscriber("~mix".into())));
    assert_eq!(sim.room.participant_count(), 6, "the mixer is not counted");

    // p0 and p1 talk, p2 and p3 are silent: the slots hold p0 and p1.
    let talking = [(mics[0], 20u8), (mics[1], 30), (mics[2], 127), (mics[3], 127)];
    let mut frame = 0;
    for _ in 0..10 {
        mix_frame(&mut sim, mix, 3, &talking, frame);
        frame += 1;
    }
    assert_eq!(sim.room.mix_slots(), vec![Some((mics[0], true)), Some((mics[1], true))]);
    let (mixed, routed) = mix_frame(&mut sim, mix, 3, &talking, frame);
    frame += 1;
    let layer_heard = |who: &str| mixed[&mix_sub(who).unwrap()].iter().map(|(l, _)| *l).collect::<Vec<_>>();
    assert_eq!(layer_heard("p0"), [1], "p0 hears the mix without slot 0, its own voice");
    assert_eq!(layer_heard("p1"), [2]);
    assert_eq!(layer_heard("p2"), [0], "a listener hears the whole mix");
    assert_eq!(layer_heard("p3"), [0]);
    // No client receives a voice itself; the relay and the recorder receive all four.
    let voice_receivers: Vec<&String> =
        routed.iter().filter_map(|id| added.iter().find(|(s, ..)| s == id).map(|(_, who, _)| who)).collect();
    assert_eq!(voice_receivers.iter().filter(|w| **w == "edge").count(), 4);
    assert_eq!(voice_receivers.iter().filter(|w| **w == "recorder").count(), 4);
    assert_eq!(voice_receivers.len(), 8, "{voice_receivers:?}");

    // p0 stops, p3 starts far louder: p3 takes p0's slot; p0 now hears the whole mix,
    // its numbering running on without a gap.
    let before = *mixed[&mix_sub("p0").unwrap()].last().map(|(_, seq)| seq).unwrap();
    let talking = [(mics[0], 127u8), (mics[1], 30), (mics[2], 127), (mics[3], 5)];
    let mut p0_seqs = vec![before];
    for _ in 0..25 {
        let (mixed, _) = mix_frame(&mut sim, mix, 3, &talking, frame);
        frame += 1;
        p0_seqs.extend(mixed[&mix_sub("p0").unwrap()].iter().map(|(_, s)| *s));
    }
    assert_eq!(sim.room.mix_slots(), vec![Some((mics[3], true)), Some((mics[1], true))]);
    let (mixed, _) = mix_frame(&mut sim, mix, 3, &talking, frame);
    assert_eq!(layer_heard_in(&mixed, mix_sub("p0").unwrap()), [0]);
    assert_eq!(layer_heard_in(&mixed, mix_sub("p3").unwrap()), [1], "p3 in slot 0 hears the mix without it");
    assert!(p0_seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "one packet a frame, no gap: {p0_seqs:?}");

    // A muted talker leaves the mix; a client leaving empties nothing while others stay,
    // and the room is empty once only the mixer is left.
    sim.input(Input::SetMuted { participant: "p1", track: "p1-mic", muted: true, now: sim.now }).unwrap();
    sim.advance(Duration::from_millis(200));
    assert_eq!(sim.room.mix_slots(), vec![Some((mics[3], true)), None]);
    for who in ["p0", "p1", "p2", "p3", "edge", "recorder"] {
        sim.input(Input::Leave { participant: who }).unwrap();
    }
    assert!(sim.commands().iter().any(|c| matches!(c, Output::Empty)));
}

fn layer_heard_in(mixed: &MixHeard, sub: SubscriptionId) -> Vec<usize> {
    mixed[&sub].iter().map(|(l, _)| *l).collect()
}

#[test]
fn a_voice_without_audio_levels_is_still_heard_in_a_large_room() {
    let mut sim = Sim::new();
    let names: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
    for n in &names {
        sim.join(n, ParticipantKind::Client, true).unwrap();
    }
    let tracks = publish_microphones(&mut sim, &names);
    // p00 sends no level (a client without the extension); the rest are silent.
    for _ in 0..20 {
        sim.send_with_level(tracks[0], 0, &[0xfc, 0x01], 80, None);
        for h in &tracks[1..] {
            sim.send_with_level(*h, 0, &[0xfc, 0x01], 80, Some(127));
        }
        sim.advance(Duration::from_millis(20));
    }
    assert_eq!(sim.room.audible_tracks("p05"), vec![tracks[0]]);
    // Three measured talkers take the places; the unmeasured voice yields to them.
    let mut levels = [127u8; 12];
    levels[1..4].copy_from_slice(&[20, 25, 30]);
    for _ in 0..20 {
        sim.send_with_level(tracks[0], 0, &[0xfc, 0x01], 80, None);
        for (h, l) in tracks[1..].iter().zip(&levels[1..]) {
            sim.send_with_level(*h, 0, &[0xfc, 0x01], 80, Some(*l));
        }
        sim.advance(Duration::from_millis(20));
    }
    assert_eq!(sim.room.audible_tracks("p05"), tracks[1..4].to_vec());
}

/// Per subscription: the layer of each packet forwarded to it.
type LayersGot = HashMap<SubscriptionId, Vec<usize>>;

#[test]
fn when_the_estimate_falls_video_goes_first_then_pauses_and_audio_stays() {
    let mut sim = Sim::new();
    for p in ["a", "b", "viewer"] {
        sim.join(p, ParticipantKind::Client, false).unwrap();
    }
    let cams: Vec<TrackHandle> = ["a", "b"]
        .iter()
        .map(|p| {
            let t = sim.publish(p, video(&format!("{p}-cam"))).unwrap();
            for rid in ["q", "h", "f"] {
                sim.add_layer(t, rid);
            }
            t
        })
        .collect();
    let mic = sim.publish("a", audio("a-mic")).unwrap();
    sim.add_layer(mic, "");
    let subs: Vec<SubscriptionId> = ["a-cam", "b-cam", "a-mic"]
        .iter()
        .map(|t| sim.subscribe("viewer", t, Preferences::default()).unwrap())
        .collect();
    // 100 ms of everything: each camera's three layers (100 kbps, 300 kbps, 1.2 Mbps,
    // keyframes on every layer) and 5 audio packets; what the viewer got, per
    // subscription, by layer.
    let mut tick = |sim: &mut Sim, keyframes: bool| -> LayersGot {
        let mut got: LayersGot = HashMap::new();
        for t in &cams {
            for (layer, packets) in [(0usize, 1usize), (1, 3), (2, 12)] {
                for i in 0..packets {
                    let payload = if keyframes && i == 0 { KEY } else { DELTA };
                    for f in sim.send(*t, layer, payload, 1250) {
                        got.entry(f.subscription).or_default().push(layer);
                    }
                }
            }
        }
        for _ in 0..5 {
            for f in sim.send_with_level(mic, 0, &[0xfc, 0x01], 80, Some(30)) {
                got.entry(f.subscription).or_default().push(0);
            }
        }
        sim.advance(Duration::from_millis(100));
        got
    };
    let settle = |sim: &mut Sim, tick: &mut dyn FnMut(&mut Sim, bool) -> LayersGot| {
        for i in 0..15 {
            tick(sim, i % 5 == 0);
        }
        tick(sim, true)
    };
    // Plenty: both cameras at the top layer, and the voice.
    sim.probing_estimate("viewer", 5_000_000);
    let got = settle(&mut sim, &mut tick);
    assert!(got[&subs[0]].iter().all(|l| *l == 2) && got[&subs[1]].iter().all(|l| *l == 2), "{got:?}");
    assert_eq!(got[&subs[2]].len(), 5);
    // What probing aims for: both cameras' top layers (1.2 Mbps each) and the voice.
    let wanted = sim.room.wanted_bitrate("viewer", sim.now);
    assert!((2_000_000..=2_800_000).contains(&wanted), "wanted {wanted}");
    assert_eq!(sim.room.wanted_bitrate("a", sim.now), 0, "receives nothing");
    // 800 kbps (720 after headroom): the cameras share it, one step down each.
    sim.probing_estimate("viewer", 800_000);
    let got = settle(&mut sim, &mut tick);
    assert!(got[&subs[0]].iter().all(|l| *l == 1) && got[&subs[1]].iter().all(|l| *l == 1), "{got:?}");
    // 170 kbps (153 after headroom, 121 after the 32 kbps voice): one camera at its
    // lowest layer (100 kbps), the other paused; the voice stays.
    sim.probing_estimate("viewer", 170_000);
    let got = settle(&mut sim, &mut tick);
    assert!(got[&subs[0]].iter().all(|l| *l == 0) && !got[&subs[0]].is_empty(), "{got:?}");
    assert!(!got.contains_key(&subs[1]), "the second camera paused: {got:?}");
    assert_eq!(got[&subs[2]].len(), 5, "audio is never paused for video");
    // 50 kbps: no video at all; every voice packet still flows.
    sim.probing_estimate("viewer", 50_000);
    let got = settle(&mut sim, &mut tick);
    assert!(!got.contains_key(&subs[0]) && !got.contains_key(&subs[1]), "{got:?}");
    assert_eq!(got[&subs[2]].len(), 5);
    assert!(sim.room.counters().bandwidth_pauses >= 2);
    // Back to plenty: nothing yet within the resume hold (3 s), then both cameras
    // resume at keyframes.
    sim.probing_estimate("viewer", 5_000_000);
    let got = settle(&mut sim, &mut tick);
    assert!(!got.contains_key(&subs[0]) && !got.contains_key(&subs[1]), "held: {got:?}");
    settle(&mut sim, &mut tick);
    let got = settle(&mut sim, &mut tick);
    assert!(!got[&subs[0]].is_empty() && !got[&subs[1]].is_empty(), "{got:?}");
}

#[test]
fn with_a_receivers_estimate_a_video_it_cannot_carry_keeps_its_lowest_layer() {
    let mut sim = Sim::new();
    sim.join("pub", ParticipantKind::Client, false).unwrap();
    sim.join("viewer", ParticipantKind::Client, false).unwrap();
    let t = sim.publish("pub", video("cam")).unwrap();
    for rid in ["q", "h", "f"] {
        sim.add_layer(t, rid);
    }
    let sub = sim.subscribe("viewer", "cam", Preferences::default()).unwrap();
    sim.estimate("viewer", 50_000);
    for _ in 0..10 {
        burst(&mut sim, t, sub, None);
        sim.advance(Duration::from_millis(100));
    }
    let seen = burst(&mut sim, t, sub, Some(0));
    assert!(!seen.is_empty() && seen.iter().all(|(l, _)| *l == 0), "{seen:?}");
    assert_eq!(sim.room.counters().bandwidth_pauses, 0);
}
