//! One room: participants, their published tracks, who subscribes to what, which
//! simulcast layer each subscription forwards, and when to ask a publisher for a
//! keyframe.
//!
//! Sans-IO, in the style of str0m's `Rtc` and quinn-proto's `Connection`: the room owns
//! no socket, task or clock. There is one way in and one way out:
//!
//! * [`Room::handle_input`] takes every [`Input`] (a join, a publish, an RTP packet, a
//!   REMB estimate, a PLI, the clock reaching a deadline, ...), each with its explicit
//!   `now`;
//! * [`Room::poll_output`] hands back, in order, everything those inputs caused (packets
//!   to forward, subscriptions to add or drop, keyframes to ask for, events to tell), and
//!   [`Output::Timeout`] when nothing is left: the instant at which the driver feeds
//!   [`Input::Timeout`].
//!
//! So a driver is one loop, and cannot act on half a decision or forget a queue:
//!
//! ```
//! # use std::time::Instant;
//! # use switchboard_sfu_core::{Input, Output, ParticipantKind, Room};
//! let now = Instant::now();
//! let mut room = Room::new(now);
//! let join = Input::Join {
//!     participant: "alice",
//!     kind: ParticipantKind::Client,
//!     auto_subscribe: true,
//!     may_publish: true,
//!     tracks: &[],
//! };
//! room.handle_input(join).unwrap();
//! let deadline = loop {
//!     match room.poll_output() {
//!         Output::Timeout(at) => break at,
//!         Output::Forward(_forward) => { /* send the packet just fed, renumbered */ }
//!         _other => { /* renegotiate, send a PLI, tell a participant */ }
//!     }
//! };
//! assert!(deadline > now);
//! ```
//!
//! Because the room decides everything from its inputs and the `now` they carry, the
//! tests drive it on a simulated clock, and a driver is free to run it behind a lock, on
//! a task, or in a test harness.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::codec::{self, Codec};
use crate::ladder;
use crate::loudest::{self, LoudnessMeter};
use crate::rewrite::Rewriter;
use crate::speaker::SpeakerDetector;

pub type ParticipantId = String;
pub type TrackId = String;

/// How often layer bitrates are measured and subscriptions re-evaluated.
pub const LAYER_EVAL_INTERVAL: Duration = Duration::from_millis(250);
/// How often the active speaker is re-elected.
pub const SPEAKER_INTERVAL: Duration = Duration::from_millis(300);
/// A layer that sent nothing for this long is not offered to subscribers.
pub const LAYER_INACTIVE_AFTER: Duration = Duration::from_secs(2);
/// A publisher is told to stop a simulcast layer once no subscriber's preferences have
/// allowed it for this long (a tile shrinking for a moment costs no restart); a layer
/// wanted again is asked for at once.
pub const LAYER_RELEASE_HOLD: Duration = Duration::from_secs(5);
/// A better estimate must last this long before a subscription moves up a layer.
pub const UP_SWITCH_HOLD: Duration = Duration::from_millis(500);
/// At most one keyframe request per layer in this interval (subscribers' PLIs included).
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);
/// A subscription still waiting for a keyframe asks again after this long.
pub const KEYFRAME_RETRY: Duration = Duration::from_secs(1);
/// How often each listener's loudest-speaker set is re-chosen (see [`AudioPolicy`]).
pub const LOUDEST_INTERVAL: Duration = Duration::from_millis(100);
/// A video paused for bandwidth resumes once the estimate has carried a layer this long:
/// an estimate hovering at the lowest layer's cost would otherwise pause and resume it
/// every few seconds, a keyframe and a freeze each time.
pub const RESUME_HOLD: Duration = Duration::from_secs(3);
/// A video pauses for bandwidth only once the estimate has not carried its lowest layer
/// for this long: an estimate dips (a probe's loss, a burst of jitter) and comes back, and
/// each pause costs a keyframe and a frozen picture.
pub const PAUSE_HOLD: Duration = Duration::from_secs(1);
/// Share of the bandwidth estimate media may use (the rest is headroom for RTCP and bursts).
pub const ESTIMATE_HEADROOM: f64 = 0.9;

/// Which audio each listener receives ([`crate::loudest`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioPolicy {
    /// In rooms of at least `from_clients` clients, each client hears only the
    /// `speakers` loudest tracks of the others. 0 speakers: everyone hears everything.
    pub speakers: usize,
    pub from_clients: usize,
    /// Mixed audio: clients hear no routed voice but the room's mix, published by its
    /// [`ParticipantKind::Mixer`] (see [`Room::mix_slots`]), whatever the room's size;
    /// the mix holds the `speakers` loudest (at least one).
    pub mixed: bool,
}

impl AudioPolicy {
    /// Every listener hears every track.
    pub const ALL: Self = Self { speakers: 0, from_clients: 0, mixed: false };

    /// One mixed stream per listener, of the `speakers` loudest voices.
    pub const fn mixed(speakers: usize) -> Self {
        Self { speakers: if speakers == 0 { 1 } else { speakers }, from_clients: 0, mixed: true }
    }
}

impl Default for AudioPolicy {
    /// The 3 loudest from 10 people on: below that, hearing everyone costs little and
    /// keeps overlapping voices (laughter, "yes!") natural.
    fn default() -> Self {
        Self { speakers: 3, from_clients: 10, mixed: false }
    }
}

/// The layer ids of a mixer's track: [`MIX_ALL`] carries every chosen voice; layer
/// `minus-k` every chosen voice but slot k's, for the speaker in that slot.
pub const MIX_ALL: &str = "all";

/// The rid of the mix without slot `slot`'s voice.
pub fn mix_minus(slot: usize) -> String {
    format!("minus-{slot}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParticipantKind {
    /// A person's client.
    Client,
    /// Another SFU carrying the same meeting (cascading).
    Relay,
    /// Subscribes without being announced (the recorder).
    Hidden,
    /// The SFU's own audio mixer in a mixed room: publishes the mix, which only
    /// clients receive; subscribes to nothing, is never announced, and does not keep
    /// the room open.
    Mixer,
}

impl ParticipantKind {
    /// Whether others are told of its arrival and departure.
    pub fn announced(self) -> bool {
        matches!(self, Self::Client | Self::Relay)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Camera,
    Microphone,
    ScreenShare,
    ScreenShareAudio,
}

impl Source {
    /// Whether the source is carried by video (camera, screen) rather than audio.
    pub fn is_video(self) -> bool {
        matches!(self, Self::Camera | Self::ScreenShare)
    }
}

/// A track a participant says it will publish. Only declared tracks are published:
/// [`Input::Publish`] of anything else, or of a track whose codec is not of its
/// declared source's kind, is refused (relays excepted, see [`Input::Publish`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declaration {
    pub id: TrackId,
    pub source: Source,
    /// Published muted: nothing is forwarded until [`Input::SetMuted`] unmutes it.
    pub muted: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrackInfo {
    pub id: TrackId,
    pub codec: Codec,
    pub source: Source,
    /// Who published it first, when it reached this SFU through a relay.
    pub origin: Option<ParticipantId>,
}

/// A subscriber's wishes for one video subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Preferences {
    /// Highest layer, counted from 0 = lowest quality.
    pub max_layer: Option<u8>,
    /// Highest picture height (known from VP8 keyframes).
    pub max_height: Option<u16>,
    /// Forward nothing (the subscriber does not show it: a tile off screen). The
    /// subscription and its place in the connection stay, so resuming needs no
    /// renegotiation: it starts again at the next keyframe, which is asked for.
    pub paused: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackHandle(pub u32);
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(pub u64);

/// What the driver knows about one incoming RTP packet.
#[derive(Clone, Copy, Debug)]
pub struct RtpMeta<'a> {
    pub seq: u16,
    pub ts: u32,
    pub payload: &'a [u8],
    /// Bytes on the wire (header and payload), for bitrates.
    pub size: usize,
    /// RFC 6464 level, when the packet carries the extension.
    pub audio_level: Option<u8>,
}

/// Send this packet to this subscription with these numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub subscription: SubscriptionId,
    pub seq: u16,
    pub ts: u32,
    /// VP8: the picture numbers to write into this copy's payload (they run on across
    /// layer switches); `None`: the payload goes as it is.
    pub vp8: Option<codec::Vp8Numbers>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RoomEvent {
    ParticipantJoined {
        participant: ParticipantId,
        kind: ParticipantKind,
    },
    ParticipantLeft {
        participant: ParticipantId,
    },
    TrackPublished {
        participant: ParticipantId,
        track: TrackId,
        codec: Codec,
        source: Source,
    },
    TrackUnpublished {
        participant: ParticipantId,
        track: TrackId,
    },
    TrackMuted {
        participant: ParticipantId,
        track: TrackId,
        muted: bool,
    },
    ActiveSpeaker {
        participant: ParticipantId,
    },
    /// A subscription now forwards layer `layer` (0 = lowest) whose RID is `rid`.
    LayerChanged {
        track: TrackId,
        layer: u8,
        rid: String,
    },
    /// To a publisher: send only these simulcast layers of its `track` (RIDs, lowest
    /// first); no subscriber's preferences allow the others (see [`LAYER_RELEASE_HOLD`]).
    LayersWanted {
        track: TrackId,
        rids: Vec<String>,
    },
}

/// Everything a driver tells a room, fed to [`Room::handle_input`]. Time is always
/// passed in.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    /// A participant enters. `auto_subscribe` subscribes it to every other track, present
    /// and future. `may_publish` false (a viewer) refuses every declaration and publish,
    /// `tracks` included ([`RoomError::PublishNotAllowed`]); `tracks` are declared as by
    /// [`Input::Declare`], and a join whose declarations are refused changes nothing.
    Join {
        participant: &'a str,
        kind: ParticipantKind,
        auto_subscribe: bool,
        may_publish: bool,
        tracks: &'a [Declaration],
    },
    /// Tracks the participant will publish (a renegotiation). All or nothing: refused
    /// with [`RoomError::PublishNotAllowed`] for a participant that may not publish, and
    /// with [`RoomError::Redeclared`] when a track id comes again with another source.
    /// A track declared again with its source changes nothing (its `muted` included).
    Declare {
        participant: &'a str,
        tracks: &'a [Declaration],
    },
    /// A participant goes: its tracks are unpublished and its subscriptions dropped.
    Leave {
        participant: &'a str,
    },
    /// A participant's new track; [`Outcome::Published`] names its handle. The track
    /// must have been declared, with a source of its codec's kind
    /// ([`RoomError::NotDeclared`], [`RoomError::KindMismatch`]); it takes the declared
    /// source and starts muted if declared so. A relay's tracks need no declaration:
    /// they were checked on the SFU where they were published.
    Publish {
        participant: &'a str,
        info: TrackInfo,
    },
    /// A simulcast layer (or the only layer) of a track, as its first packet arrives;
    /// [`Outcome::Layer`] names its index for [`Input::Rtp`]. Idempotent per RID.
    AddLayer {
        track: TrackHandle,
        rid: &'a str,
    },
    Unpublish {
        participant: &'a str,
        track: &'a str,
    },
    /// Mutes or unmutes a published track, or a declared one not published yet (it will
    /// be published so).
    SetMuted {
        participant: &'a str,
        track: &'a str,
        muted: bool,
        now: Instant,
    },
    /// [`Outcome::Subscribed`] names the subscription (the existing one, if any).
    Subscribe {
        subscriber: &'a str,
        track: &'a str,
        prefs: Preferences,
    },
    Unsubscribe {
        subscriber: &'a str,
        track: &'a str,
    },
    SetPreferences {
        subscriber: &'a str,
        track: &'a str,
        prefs: Preferences,
        now: Instant,
    },
    /// A subscriber's downlink estimate in bits per second, shared by its video
    /// subscriptions. `probing`: the estimate is the SFU's own send-side one
    /// ([`crate::bwe`]), which probes for more; then a video it cannot carry pauses, as it
    /// can come back. A receiver's estimate (REMB) never grows much past what arrives, so
    /// with it such a video keeps its lowest layer instead. Ignored for an unknown
    /// subscriber.
    Estimate {
        subscriber: &'a str,
        bps: u64,
        probing: bool,
        now: Instant,
    },
    /// A subscriber lost its picture (PLI or FIR on its outgoing track). Ignored for an
    /// unknown subscription.
    KeyframeRequest {
        subscription: SubscriptionId,
        now: Instant,
    },
    /// One incoming packet of `track`'s layer `layer`; what to send where comes out as
    /// [`Output::Forward`]s, before anything else. Ignored for an unknown track or layer.
    Rtp {
        track: TrackHandle,
        layer: usize,
        packet: RtpMeta<'a>,
        now: Instant,
    },
    /// The clock reached (or passed) the last [`Output::Timeout`].
    Timeout(Instant),
}

/// What an accepted [`Input`] returns at once: the identifier it created, if any.
/// Everything else it caused is polled with [`Room::poll_output`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Published(TrackHandle),
    Layer(usize),
    Subscribed(SubscriptionId),
}

impl Outcome {
    pub fn track(self) -> Option<TrackHandle> {
        if let Self::Published(h) = self { Some(h) } else { None }
    }

    pub fn layer(self) -> Option<usize> {
        if let Self::Layer(l) = self { Some(l) } else { None }
    }

    pub fn subscription(self) -> Option<SubscriptionId> {
        if let Self::Subscribed(s) = self { Some(s) } else { None }
    }
}

/// Everything a room asks of its driver, from [`Room::poll_output`].
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send the packet of the [`Input::Rtp`] just handled to this subscription, with
    /// these numbers.
    Forward(Forward),
    /// Give `subscriber` an outgoing track for `track` and renegotiate.
    SubscriptionAdded {
        subscription: SubscriptionId,
        subscriber: ParticipantId,
        track: TrackHandle,
        track_id: TrackId,
        /// The participant the subscriber should see as the publisher.
        publisher: ParticipantId,
        codec: Codec,
        source: Source,
    },
    SubscriptionRemoved {
        subscription: SubscriptionId,
        subscriber: ParticipantId,
    },
    /// Send a PLI for this layer to its publisher.
    RequestKeyframe {
        track: TrackHandle,
        layer: usize,
    },
    Event {
        to: ParticipantId,
        event: RoomEvent,
    },
    /// The last participant left.
    Empty,
    /// Nothing is pending: feed [`Input::Timeout`] at this instant (or with the next
    /// input, whichever comes first).
    Timeout(Instant),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomError {
    AlreadyJoined(ParticipantId),
    UnknownParticipant(ParticipantId),
    UnknownTrack(TrackId),
    TrackExists(TrackId),
    /// A subscriber cannot subscribe to its own track.
    OwnTrack(TrackId),
    /// A layer was added to a track this room does not have (any more).
    UnknownHandle(TrackHandle),
    /// The participant joined as one that may not publish.
    PublishNotAllowed(ParticipantId),
    /// A track its publisher did not declare.
    NotDeclared(TrackId),
    /// A track whose codec is not of the kind of its declared source.
    KindMismatch(TrackId, Source),
    /// A track id declared again with another source.
    Redeclared(TrackId),
    /// A track this subscriber may not receive (a mixer's, for anyone but a client).
    NotForSubscriber(TrackId),
}

impl std::fmt::Display for RoomError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AlreadyJoined(p) => write!(f, "participant {p} has already joined"),
            Self::UnknownParticipant(p) => write!(f, "no participant {p} in this room"),
            Self::UnknownTrack(t) => write!(f, "no track {t} in this room"),
            Self::TrackExists(t) => write!(f, "track {t} is already published"),
            Self::OwnTrack(t) => write!(f, "track {t} is the subscriber's own"),
            Self::UnknownHandle(h) => write!(f, "no track with handle {} in this room", h.0),
            Self::PublishNotAllowed(p) => write!(f, "participant {p} may not publish"),
            Self::NotDeclared(t) => write!(f, "track {t} was not declared"),
            Self::KindMismatch(t, s) => write!(f, "track {t} is declared as {s:?} but its codec is not of that kind"),
            Self::NotForSubscriber(t) => write!(f, "track {t} is the room's audio mix, for clients only"),
            Self::Redeclared(t) => write!(f, "track {t} was declared before with another source"),
        }
    }
}

impl std::error::Error for RoomError {}

#[derive(Debug)]
struct Participant {
    kind: ParticipantKind,
    auto_subscribe: bool,
    may_publish: bool,
    /// What it declared it will publish, by track id: (source, publish muted).
    declared: HashMap<TrackId, (Source, bool)>,
    /// Downlink estimate in bits per second.
    estimate: Option<u64>,
    /// Whether the estimate probes for more ([`Input::Estimate`]).
    estimate_probes: bool,
}

#[derive(Debug)]
struct Layer {
    rid: String,
    rank: u8,
    bytes: u64,
    bitrate: u64,
    last_packet: Option<Instant>,
    size: Option<(u16, u16)>,
    last_keyframe_request: Option<Instant>,
}

#[derive(Debug)]
struct Subscription {
    id: SubscriptionId,
    subscriber: ParticipantId,
    prefs: Preferences,
    /// Layer index being forwarded, and the one wanted.
    current: Option<usize>,
    target: Option<usize>,
    rewriter: Rewriter,
    up_since: Option<Instant>,
    waiting_since: Option<Instant>,
    /// Audio: whether the subscriber hears this track now (loudest-speaker audio; always
    /// true when the room forwards all audio).
    audible: bool,
    /// Video: paused because the subscriber's estimate cannot carry it ([`ladder`]).
    starved: bool,
    /// Since when the estimate has not carried even the lowest layer ([`PAUSE_HOLD`]).
    starving_since: Option<Instant>,
}

#[derive(Debug)]
struct Track {
    info: TrackInfo,
    publisher: ParticipantId,
    muted: bool,
    layers: Vec<Layer>,
    subs: Vec<Subscription>,
    /// The layers (RIDs) the publisher was last told to send; `None`: never told, so all.
    layers_told: Option<Vec<String>>,
    /// Since when fewer layers than told are wanted.
    fewer_wanted_since: Option<Instant>,
}

impl Track {
    fn shown_publisher(&self) -> &ParticipantId {
        self.info.origin.as_ref().unwrap_or(&self.publisher)
    }
}

/// Cumulative counters, for metrics and the heartbeat's load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub keyframe_requests: u64,
    pub layer_switches: u64,
    /// Times a listener's loudest-speaker set changed.
    pub loudest_changes: u64,
    /// Times a video subscription paused because its subscriber's estimate could not
    /// carry it.
    pub bandwidth_pauses: u64,
}

#[derive(Debug)]
pub struct Room {
    participants: HashMap<ParticipantId, Participant>,
    tracks: HashMap<TrackHandle, Track>,
    next_track: u32,
    next_subscription: u64,
    /// Forwards of the packet being handled, polled before `outputs` from
    /// `next_forward` on; a plain vector reused packet after packet.
    forwards: Vec<Forward>,
    next_forward: usize,
    outputs: VecDeque<Output>,
    speaker: SpeakerDetector,
    audio_policy: AudioPolicy,
    /// Per audio track: how loud it is.
    loudness: LoudnessMeter<TrackHandle>,
    /// Per listener: the audio tracks it hears while loudest-speaker audio applies.
    audible: HashMap<ParticipantId, Vec<TrackHandle>>,
    /// Mixed audio: the track in each of the mix's slots.
    mix_slots: Vec<Option<TrackHandle>>,
    next_layer_eval: Instant,
    next_speaker_eval: Instant,
    next_loudest_eval: Instant,
    last_layer_eval: Instant,
    counters: Counters,
}

impl Room {
    /// A room with the default [`AudioPolicy`].
    pub fn new(now: Instant) -> Self {
        Self::with_audio_policy(now, AudioPolicy::default())
    }

    pub fn with_audio_policy(now: Instant, audio_policy: AudioPolicy) -> Self {
        Self {
            participants: HashMap::new(),
            tracks: HashMap::new(),
            next_track: 0,
            next_subscription: 0,
            forwards: Vec::new(),
            next_forward: 0,
            outputs: VecDeque::new(),
            speaker: SpeakerDetector::default(),
            audio_policy,
            loudness: LoudnessMeter::default(),
            audible: HashMap::new(),
            mix_slots: if audio_policy.mixed { vec![None; audio_policy.speakers.max(1)] } else { Vec::new() },
            next_layer_eval: now + LAYER_EVAL_INTERVAL,
            next_speaker_eval: now + SPEAKER_INTERVAL,
            next_loudest_eval: now + LOUDEST_INTERVAL,
            last_layer_eval: now,
            counters: Counters::default(),
        }
    }

    // ---- the way in and the way out ----

    /// Applies one input. Its effects are queued for [`Room::poll_output`], which the
    /// driver drains before acting on anything else.
    pub fn handle_input(&mut self, input: Input<'_>) -> Result<Outcome, RoomError> {
        match input {
            Input::Join { participant, kind, auto_subscribe, may_publish, tracks } => {
                self.join(participant, kind, auto_subscribe, may_publish, tracks)?
            }
            Input::Declare { participant, tracks } => self.declare(participant, tracks)?,
            Input::Leave { participant } => self.leave(participant)?,
            Input::Publish { participant, info } => return self.publish(participant, info).map(Outcome::Published),
            Input::AddLayer { track, rid } => return self.add_layer(track, rid).map(Outcome::Layer),
            Input::Unpublish { participant, track } => self.unpublish(participant, track)?,
            Input::SetMuted { participant, track, muted, now } => self.set_muted(participant, track, muted, now)?,
            Input::Subscribe { subscriber, track, prefs } => {
                return self.subscribe(subscriber, track, prefs).map(Outcome::Subscribed);
            }
            Input::Unsubscribe { subscriber, track } => self.unsubscribe(subscriber, track)?,
            Input::SetPreferences { subscriber, track, prefs, now } => {
                self.set_preferences(subscriber, track, prefs, now)?
            }
            Input::Estimate { subscriber, bps, probing, now } => self.on_estimate(subscriber, bps, probing, now),
            Input::KeyframeRequest { subscription, now } => self.on_keyframe_request(subscription, now),
            Input::Rtp { track, layer, packet, now } => self.on_rtp(track, layer, &packet, now),
            Input::Timeout(now) => self.handle_timeout(now),
        }
        Ok(Outcome::Done)
    }

    /// The next thing to do: the current packet's forwards first, then the other outputs
    /// in the order they were decided, then [`Output::Timeout`] once nothing is pending.
    pub fn poll_output(&mut self) -> Output {
        if let Some(forward) = self.forwards.get(self.next_forward) {
            self.next_forward += 1;
            return Output::Forward(*forward);
        }
        if self.next_forward > 0 {
            self.forwards.clear();
            self.next_forward = 0;
        }
        self.outputs.pop_front().unwrap_or_else(|| {
            Output::Timeout(self.next_layer_eval.min(self.next_speaker_eval).min(self.next_loudest_eval))
        })
    }

    // ---- membership ----

    fn join(
        &mut self,
        participant: &str,
        kind: ParticipantKind,
        auto_subscribe: bool,
        may_publish: bool,
        tracks: &[Declaration],
    ) -> Result<(), RoomError> {
        if self.participants.contains_key(participant) {
            return Err(RoomError::AlreadyJoined(participant.into()));
        }
        let mut declared = HashMap::new();
        check_declarations(participant, may_publish, &declared, tracks)?;
        for d in tracks {
            declared.entry(d.id.clone()).or_insert((d.source, d.muted));
        }
        if kind.announced() {
            let joined = RoomEvent::ParticipantJoined { participant: participant.into(), kind };
            self.tell_all(Some(participant), joined);
        }
        // The newcomer learns who is here and what they publish.
        for (other, p) in &self.participants {
            if p.kind.announced() {
                self.outputs.push_back(Output::Event {
                    to: participant.into(),
                    event: RoomEvent::ParticipantJoined { participant: other.clone(), kind: p.kind },
                });
            }
        }
        let mut published: Vec<(TrackHandle, RoomEvent, Option<RoomEvent>)> = self
            .tracks
            .iter()
            .filter(|(_, t)| receives(&self.participants, kind, t))
            .map(|(h, t)| {
                let published = RoomEvent::TrackPublished {
                    participant: t.shown_publisher().clone(),
                    track: t.info.id.clone(),
                    codec: t.info.codec,
                    source: t.info.source,
                };
                let muted = t.muted.then(|| RoomEvent::TrackMuted {
                    participant: t.shown_publisher().clone(),
                    track: t.info.id.clone(),
                    muted: true,
                });
                (*h, published, muted)
            })
            .collect();
        published.sort_by_key(|(h, ..)| *h);
        let joined =
            Participant { kind, auto_subscribe, may_publish, declared, estimate: None, estimate_probes: false };
        self.participants.insert(participant.into(), joined);
        for (handle, event, muted) in published {
            self.outputs.push_back(Output::Event { to: participant.into(), event });
            if let Some(event) = muted {
                self.outputs.push_back(Output::Event { to: participant.into(), event });
            }
            if auto_subscribe {
                self.add_subscription(handle, participant, Preferences::default());
            }
        }
        Ok(())
    }

    fn leave(&mut self, participant: &str) -> Result<(), RoomError> {
        let p =
            self.participants.remove(participant).ok_or_else(|| RoomError::UnknownParticipant(participant.into()))?;
        let mut own: Vec<TrackHandle> =
            self.tracks.iter().filter(|(_, t)| t.publisher == participant).map(|(h, _)| *h).collect();
        own.sort();
        for handle in own {
            self.remove_track(handle);
        }
        let mut dropped = Vec::new();
        for track in self.tracks.values_mut() {
            if let Some(i) = track.subs.iter().position(|s| s.subscriber == participant) {
                dropped.push(track.subs.remove(i).id);
            }
        }
        dropped.sort();
        for subscription in dropped {
            self.outputs.push_back(Output::SubscriptionRemoved { subscription, subscriber: participant.into() });
        }
        self.speaker.forget(participant);
        self.audible.remove(participant);
        if p.kind.announced() {
            self.tell_all(None, RoomEvent::ParticipantLeft { participant: participant.into() });
        }
        if self.participants.values().all(|p| p.kind == ParticipantKind::Mixer) {
            self.outputs.push_back(Output::Empty);
        }
        Ok(())
    }

    /// Participants other than the room's mixer.
    pub fn participant_count(&self) -> usize {
        self.participants.values().filter(|p| p.kind != ParticipantKind::Mixer).count()
    }

    /// Participants that are people (not relays, not the recorder).
    pub fn client_count(&self) -> usize {
        self.participants.values().filter(|p| p.kind == ParticipantKind::Client).count()
    }

    pub fn contains(&self, participant: &str) -> bool {
        self.participants.contains_key(participant)
    }

    pub fn participants(&self) -> impl Iterator<Item = (&ParticipantId, ParticipantKind)> {
        self.participants.iter().map(|(id, p)| (id, p.kind))
    }

    /// Whether a participant may publish; `None` for one not in the room.
    pub fn may_publish(&self, participant: &str) -> Option<bool> {
        self.participants.get(participant).map(|p| p.may_publish)
    }

    fn declare(&mut self, participant: &str, tracks: &[Declaration]) -> Result<(), RoomError> {
        let p =
            self.participants.get_mut(participant).ok_or_else(|| RoomError::UnknownParticipant(participant.into()))?;
        check_declarations(participant, p.may_publish, &p.declared, tracks)?;
        for d in tracks {
            p.declared.entry(d.id.clone()).or_insert((d.source, d.muted));
        }
        Ok(())
    }

    // ---- tracks ----

    fn publish(&mut self, participant: &str, mut info: TrackInfo) -> Result<TrackHandle, RoomError> {
        let p = self.participants.get(participant).ok_or_else(|| RoomError::UnknownParticipant(participant.into()))?;
        let mut muted = false;
        if p.kind != ParticipantKind::Relay {
            if !p.may_publish {
                return Err(RoomError::PublishNotAllowed(participant.into()));
            }
            let &(source, declared_muted) =
                p.declared.get(&info.id).ok_or_else(|| RoomError::NotDeclared(info.id.clone()))?;
            if source.is_video() != info.codec.is_video() {
                return Err(RoomError::KindMismatch(info.id, source));
            }
            info.source = source;
            muted = declared_muted;
        }
        if self.tracks.values().any(|t| t.info.id == info.id) {
            return Err(RoomError::TrackExists(info.id));
        }
        let handle = TrackHandle(self.next_track);
        self.next_track += 1;
        let track = Track {
            info,
            publisher: participant.into(),
            muted,
            layers: Vec::new(),
            subs: Vec::new(),
            layers_told: None,
            fewer_wanted_since: None,
        };
        let event = RoomEvent::TrackPublished {
            participant: track.shown_publisher().clone(),
            track: track.info.id.clone(),
            codec: track.info.codec,
            source: track.info.source,
        };
        let muted_event = muted.then(|| RoomEvent::TrackMuted {
            participant: track.shown_publisher().clone(),
            track: track.info.id.clone(),
            muted: true,
        });
        self.tracks.insert(handle, track);
        self.tell_all(Some(participant), event);
        if let Some(event) = muted_event {
            self.tell_all(None, event);
        }
        let publisher_kind = self.participants[participant].kind;
        let mut auto: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(id, p)| p.auto_subscribe && id.as_str() != participant)
            .filter(|(_, p)| publisher_kind != ParticipantKind::Mixer || p.kind == ParticipantKind::Client)
            .map(|(id, _)| id.clone())
            .collect();
        auto.sort();
        for subscriber in auto {
            self.add_subscription(handle, &subscriber, Preferences::default());
        }
        Ok(handle)
    }

    fn add_layer(&mut self, track: TrackHandle, rid: &str) -> Result<usize, RoomError> {
        let t = self.tracks.get_mut(&track).ok_or(RoomError::UnknownHandle(track))?;
        if let Some(i) = t.layers.iter().position(|l| l.rid == rid) {
            return Ok(i);
        }
        t.layers.push(Layer {
            rid: rid.into(),
            rank: rid_rank(rid),
            bytes: 0,
            bitrate: 0,
            last_packet: None,
            size: None,
            last_keyframe_request: None,
        });
        Ok(t.layers.len() - 1)
    }

    fn unpublish(&mut self, participant: &str, track_id: &str) -> Result<(), RoomError> {
        let handle = self
            .tracks
            .iter()
            .find(|(_, t)| t.info.id == track_id && t.publisher == participant)
            .map(|(h, _)| *h)
            .ok_or_else(|| RoomError::UnknownTrack(track_id.into()))?;
        self.remove_track(handle);
        Ok(())
    }

    pub fn track_handle(&self, track_id: &str) -> Option<TrackHandle> {
        self.tracks.iter().find(|(_, t)| t.info.id == track_id).map(|(h, _)| *h)
    }

    pub fn track_publisher(&self, track: TrackHandle) -> Option<&ParticipantId> {
        self.tracks.get(&track).map(|t| &t.publisher)
    }

    /// (track id, shown publisher, codec, source, muted) of every track.
    pub fn tracks(&self) -> impl Iterator<Item = (&TrackId, &ParticipantId, Codec, Source, bool)> {
        self.tracks.values().map(|t| (&t.info.id, t.shown_publisher(), t.info.codec, t.info.source, t.muted))
    }

    fn set_muted(&mut self, participant: &str, track_id: &str, muted: bool, now: Instant) -> Result<(), RoomError> {
        let Some(handle) = self.track_handle(track_id) else {
            // Declared, not published yet: it will be published so.
            let declared = self.participants.get_mut(participant).and_then(|p| p.declared.get_mut(track_id));
            let (_, declared_muted) = declared.ok_or_else(|| RoomError::UnknownTrack(track_id.into()))?;
            *declared_muted = muted;
            return Ok(());
        };
        let track = self.tracks.get_mut(&handle).expect("handle just found");
        if track.publisher != participant {
            return Err(RoomError::UnknownTrack(track_id.into()));
        }
        // Published again after an unpublish, the track keeps its last state.
        if let Some((_, declared_muted)) =
            self.participants.get_mut(participant).and_then(|p| p.declared.get_mut(track_id))
        {
            *declared_muted = muted;
        }
        if track.muted == muted {
            return Ok(());
        }
        track.muted = muted;
        let event =
            RoomEvent::TrackMuted { participant: track.shown_publisher().clone(), track: track_id.into(), muted };
        let mut resume: Vec<usize> =
            if muted { vec![] } else { track.subs.iter().filter_map(|s| s.target.or(s.current)).collect() };
        resume.sort();
        resume.dedup();
        self.tell_all(None, event);
        // Subscribers missed frames while muted: they need a fresh picture.
        for layer in resume {
            self.request_keyframe(handle, layer, now);
        }
        Ok(())
    }

    // ---- subscriptions ----

    fn subscribe(&mut self, subscriber: &str, track_id: &str, prefs: Preferences) -> Result<SubscriptionId, RoomError> {
        if !self.participants.contains_key(subscriber) {
            return Err(RoomError::UnknownParticipant(subscriber.into()));
        }
        let handle = self.track_handle(track_id).ok_or_else(|| RoomError::UnknownTrack(track_id.into()))?;
        let track = &self.tracks[&handle];
        if track.publisher == subscriber {
            return Err(RoomError::OwnTrack(track_id.into()));
        }
        if !receives(&self.participants, self.participants[subscriber].kind, track) {
            return Err(RoomError::NotForSubscriber(track_id.into()));
        }
        if let Some(existing) = track.subs.iter().find(|s| s.subscriber == subscriber) {
            return Ok(existing.id);
        }
        Ok(self.add_subscription(handle, subscriber, prefs))
    }

    fn unsubscribe(&mut self, subscriber: &str, track_id: &str) -> Result<(), RoomError> {
        let handle = self.track_handle(track_id).ok_or_else(|| RoomError::UnknownTrack(track_id.into()))?;
        let track = self.tracks.get_mut(&handle).expect("handle just found");
        let i = track
            .subs
            .iter()
            .position(|s| s.subscriber == subscriber)
            .ok_or_else(|| RoomError::UnknownParticipant(subscriber.into()))?;
        let s = track.subs.remove(i);
        self.subscription_removed(s.id, s.subscriber);
        Ok(())
    }

    fn set_preferences(
        &mut self,
        subscriber: &str,
        track_id: &str,
        prefs: Preferences,
        now: Instant,
    ) -> Result<(), RoomError> {
        let handle = self.track_handle(track_id).ok_or_else(|| RoomError::UnknownTrack(track_id.into()))?;
        let track = self.tracks.get_mut(&handle).expect("handle just found");
        let s = track
            .subs
            .iter_mut()
            .find(|s| s.subscriber == subscriber)
            .ok_or_else(|| RoomError::UnknownParticipant(subscriber.into()))?;
        if s.prefs.paused && !prefs.paused && track.info.codec.is_video() {
            // Resuming: the decoder needs a keyframe before anything it can use.
            s.current = None;
            s.waiting_since = None;
        }
        s.prefs = prefs;
        // A new preference applies at once, also upwards.
        s.up_since = Some(now - UP_SWITCH_HOLD);
        self.evaluate_tracks(&[handle], now, Some(subscriber));
        Ok(())
    }

    /// A subscriber's downlink estimate (REMB), shared by its video subscriptions.
    fn on_estimate(&mut self, subscriber: &str, bps: u64, probing: bool, now: Instant) {
        let Some(p) = self.participants.get_mut(subscriber) else { return };
        // A browser repeats its estimate several times a second; the layer evaluation
        // timer covers what time alone changes (an up-switch's hold).
        if p.estimate == Some(bps) && p.estimate_probes == probing {
            return;
        }
        p.estimate = Some(bps);
        p.estimate_probes = probing;
        let mut handles: Vec<TrackHandle> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.subs.iter().any(|s| s.subscriber == subscriber))
            .map(|(h, _)| *h)
            .collect();
        handles.sort();
        self.evaluate_tracks(&handles, now, Some(subscriber));
    }

    /// A subscriber lost its picture (PLI or FIR on its outgoing track).
    fn on_keyframe_request(&mut self, subscription: SubscriptionId, now: Instant) {
        let found = self.tracks.iter().find_map(|(h, t)| {
            t.subs.iter().find(|s| s.id == subscription).and_then(|s| s.current.or(s.target)).map(|l| (*h, l))
        });
        if let Some((h, layer)) = found {
            self.request_keyframe(h, layer, now);
        }
    }

    pub fn has_subscription(&self, subscription: SubscriptionId) -> bool {
        self.tracks.values().any(|t| t.subs.iter().any(|s| s.id == subscription))
    }

    /// The layer (0 = lowest) a subscription currently forwards.
    pub fn forwarded_layer(&self, subscription: SubscriptionId) -> Option<u8> {
        self.tracks.values().find_map(|t| {
            let s = t.subs.iter().find(|s| s.id == subscription)?;
            s.current.map(|c| layer_position(&t.layers, c))
        })
    }

    // ---- media ----

    fn on_rtp(&mut self, track: TrackHandle, layer: usize, pkt: &RtpMeta<'_>, now: Instant) {
        let Some(t) = self.tracks.get_mut(&track) else { return };
        let Some(l) = t.layers.get_mut(layer) else { return };
        self.counters.packets_in += 1;
        self.counters.bytes_in += pkt.size as u64;
        // A packet of padding only (a browser probing its uplink pads its highest layer,
        // whose encoder may be sending next to nothing) says nothing of the layer's
        // pictures: a layer is live, and costs, by what its media carries.
        if !pkt.payload.is_empty() {
            l.bytes += pkt.size as u64;
            l.last_packet = Some(now);
        }
        let video = t.info.codec.is_video();
        let keyframe = video && codec::is_keyframe_start(t.info.codec, pkt.payload);
        if keyframe
            && t.info.codec == Codec::Vp8
            && let Some(size) = codec::vp8_frame(pkt.payload).and_then(|f| f.size)
        {
            l.size = Some(size);
        }
        let mixed_here = self.participants.get(&t.publisher).is_some_and(|p| p.kind == ParticipantKind::Mixer);
        if !video && !t.muted && !mixed_here {
            match pkt.audio_level {
                Some(level) => {
                    self.speaker.observe(t.shown_publisher(), level);
                    self.loudness.observe(track, level);
                }
                // Without the extension the voice is still heard: it counts as just
                // speaking, so it takes a free place and yields to measured talkers.
                None => self.loudness.observe(track, loudest::UNMEASURED_LEVEL),
            }
        }
        if t.muted {
            return;
        }
        if video && t.subs.iter().any(|s| s.target.is_none() && !s.starved && !s.prefs.paused) {
            // The first layer arrived for subscriptions made before any media.
            self.evaluate_tracks(&[track], now, None);
        }
        let t = self.tracks.get_mut(&track).expect("looked up above");
        let vp8_numbers = if t.info.codec == Codec::Vp8 { codec::vp8_numbers(pkt.payload) } else { None };
        let queued = self.forwards.len();
        let mut switched = Vec::new();
        for s in t.subs.iter_mut().filter(|s| !(video && (s.prefs.paused || s.starved))) {
            if !video {
                if !s.audible {
                    // Heard again later: continues its numbering from there, no gap.
                    s.current = None;
                    continue;
                }
                // Audio has one layer but a mix's, whose layers all number each frame
                // alike: any packet is a place to switch.
                if s.target.is_none_or(|t| t == layer) && s.current != Some(layer) {
                    s.rewriter.switch_to(pkt.seq, pkt.ts, now);
                    s.current = Some(layer);
                    s.target = Some(layer);
                }
            } else if keyframe && s.target == Some(layer) && s.current != Some(layer) {
                s.rewriter.switch_to(pkt.seq, pkt.ts, now);
                s.current = Some(layer);
                s.waiting_since = None;
                switched.push(s.subscriber.clone());
            }
            if s.current == Some(layer)
                && let Some((seq, ts)) = s.rewriter.rewrite(pkt.seq, pkt.ts, now)
            {
                let vp8 = vp8_numbers.and_then(|n| Some(s.rewriter.renumber_vp8(n)).filter(|out| *out != n));
                self.forwards.push(Forward { subscription: s.id, seq, ts, vp8 });
            }
        }
        let forwarded = self.forwards.len() - queued;
        self.counters.packets_out += forwarded as u64;
        self.counters.bytes_out += (forwarded * pkt.size) as u64;
        if !switched.is_empty() {
            self.counters.layer_switches += switched.len() as u64;
            let position = layer_position(&t.layers, layer);
            let event =
                RoomEvent::LayerChanged { track: t.info.id.clone(), layer: position, rid: t.layers[layer].rid.clone() };
            for to in switched {
                self.outputs.push_back(Output::Event { to, event: event.clone() });
            }
        }
    }

    // ---- time ----

    fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_layer_eval {
            let elapsed = now.saturating_duration_since(self.last_layer_eval).as_secs_f64().max(0.001);
            for t in self.tracks.values_mut() {
                for l in &mut t.layers {
                    let measured = (l.bytes as f64 * 8.0 / elapsed) as u64;
                    // Smooth so one large keyframe does not look like a new bitrate.
                    l.bitrate = if l.bitrate == 0 { measured } else { (l.bitrate + measured) / 2 };
                    l.bytes = 0;
                }
            }
            self.last_layer_eval = now;
            self.next_layer_eval = now + LAYER_EVAL_INTERVAL;
            let mut handles: Vec<TrackHandle> = self.tracks.keys().copied().collect();
            handles.sort();
            self.evaluate_tracks(&handles, now, None);
            for h in handles {
                self.tell_layers_wanted(h, now);
            }
        }
        if now >= self.next_loudest_eval {
            self.next_loudest_eval = now + LOUDEST_INTERVAL;
            self.loudness.close_interval();
            self.choose_audible();
        }
        if now >= self.next_speaker_eval {
            self.next_speaker_eval = now + SPEAKER_INTERVAL;
            if let Some(participant) = self.speaker.evaluate() {
                self.tell_all(None, RoomEvent::ActiveSpeaker { participant });
            }
        }
    }

    /// Tells a client publishing simulcast which of its layers anyone may receive: the
    /// lowest always (a new subscriber starts at once), and each layer some subscription's
    /// preferences allow (`maxLayer`, `maxHeight`: its tile's size; a hidden tile wants
    /// nothing); relays and hidden subscribers (a recorder) want every layer. Bandwidth
    /// does not count: a subscriber held low by its estimate may climb again at any time.
    /// More layers are asked for at once, fewer after [`LAYER_RELEASE_HOLD`].
    fn tell_layers_wanted(&mut self, handle: TrackHandle, now: Instant) {
        let Some(t) = self.tracks.get(&handle) else { return };
        let from_client = self.participants.get(&t.publisher).is_some_and(|p| p.kind == ParticipantKind::Client);
        if !from_client || !t.info.codec.is_video() || t.layers.len() < 2 || t.info.origin.is_some() {
            return;
        }
        // Layers whose RIDs do not say their order are ordered by bitrate, which a
        // stopped layer loses: the lowest could then be the one told to stop.
        let mut ranks: Vec<u8> = t.layers.iter().map(|l| l.rank).collect();
        ranks.sort();
        ranks.dedup();
        if ranks.len() != t.layers.len() {
            return;
        }
        let order = ordered(&t.layers);
        let wants_all = |s: &Subscription| {
            self.participants
                .get(&s.subscriber)
                .is_some_and(|p| matches!(p.kind, ParticipantKind::Relay | ParticipantKind::Hidden))
        };
        let wanted: Vec<String> = order
            .iter()
            .enumerate()
            .filter(|&(pos, &i)| {
                pos == 0
                    || t.subs.iter().filter(|s| !s.prefs.paused).any(|s| {
                        wants_all(s)
                            || (s.prefs.max_layer.is_none_or(|m| pos as u8 <= m)
                                && s.prefs.max_height.is_none_or(|h| t.layers[i].size.is_none_or(|(_, lh)| lh <= h)))
                    })
            })
            .map(|(_, &i)| t.layers[i].rid.clone())
            .collect();
        let told: Vec<String> =
            t.layers_told.clone().unwrap_or_else(|| order.iter().map(|&i| t.layers[i].rid.clone()).collect());
        let (track, publisher) = (t.info.id.clone(), t.publisher.clone());
        let t = self.tracks.get_mut(&handle).expect("looked up above");
        if wanted == told {
            t.fewer_wanted_since = None;
            return;
        }
        let more = wanted.iter().any(|r| !told.contains(r));
        if !more {
            let since = *t.fewer_wanted_since.get_or_insert(now);
            if now.saturating_duration_since(since) < LAYER_RELEASE_HOLD {
                return;
            }
        }
        t.fewer_wanted_since = None;
        t.layers_told = Some(wanted.clone());
        self.outputs.push_back(Output::Event { to: publisher, event: RoomEvent::LayersWanted { track, rids: wanted } });
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn subscription_count(&self) -> usize {
        self.tracks.values().map(|t| t.subs.len()).sum()
    }

    pub fn track_count(&self) -> usize {
        self.tracks.len()
    }

    // ---- internals ----

    fn tell_all(&mut self, except: Option<&str>, event: RoomEvent) {
        let mut to: Vec<&ParticipantId> = self
            .participants
            .iter()
            .filter(|(p, x)| Some(p.as_str()) != except && x.kind != ParticipantKind::Mixer)
            .map(|(p, _)| p)
            .collect();
        to.sort();
        for p in to {
            self.outputs.push_back(Output::Event { to: p.clone(), event: event.clone() });
        }
    }

    fn add_subscription(&mut self, handle: TrackHandle, subscriber: &str, prefs: Preferences) -> SubscriptionId {
        let id = SubscriptionId(self.next_subscription);
        self.next_subscription += 1;
        let audible = self.hears(subscriber, handle);
        let t = self.tracks.get_mut(&handle).expect("caller checked the track");
        t.subs.push(Subscription {
            id,
            subscriber: subscriber.into(),
            prefs,
            current: None,
            target: None,
            rewriter: Rewriter::new(t.info.codec.clock_rate()),
            up_since: None,
            waiting_since: None,
            audible,
            starved: false,
            starving_since: None,
        });
        self.outputs.push_back(Output::SubscriptionAdded {
            subscription: id,
            subscriber: subscriber.into(),
            track: handle,
            track_id: t.info.id.clone(),
            publisher: t.shown_publisher().clone(),
            codec: t.info.codec,
            source: t.info.source,
        });
        id
    }

    fn subscription_removed(&mut self, subscription: SubscriptionId, subscriber: ParticipantId) {
        self.outputs.push_back(Output::SubscriptionRemoved { subscription, subscriber });
    }

    fn remove_track(&mut self, handle: TrackHandle) {
        let Some(t) = self.tracks.remove(&handle) else { return };
        self.loudness.forget(handle);
        for slot in self.mix_slots.iter_mut().filter(|s| **s == Some(handle)) {
            *slot = None;
        }
        for s in t.subs {
            self.subscription_removed(s.id, s.subscriber);
        }
        let shown = t.info.origin.unwrap_or(t.publisher.clone());
        self.tell_all(Some(&t.publisher), RoomEvent::TrackUnpublished { participant: shown, track: t.info.id });
    }

    /// Whether loudest-speaker audio applies now (see [`AudioPolicy`]).
    fn loudest_applies(&self) -> bool {
        !self.audio_policy.mixed
            && self.audio_policy.speakers > 0
            && self.client_count() >= self.audio_policy.from_clients
    }

    /// Whether `listener` hears audio track `track` now. Relays and hidden subscribers
    /// (the recorder) hear everything: an edge SFU chooses (or mixes) for its own
    /// listeners. In a mixed room a client hears the mix only.
    fn hears(&self, listener: &str, track: TrackHandle) -> bool {
        if self.audio_policy.mixed {
            let client = self.participants.get(listener).is_some_and(|p| p.kind == ParticipantKind::Client);
            let mix = self.tracks.get(&track).is_some_and(|t| self.is_mixer(&t.publisher));
            return !client || mix;
        }
        !self.loudest_applies() || hears_chosen(&self.participants, &self.audible, listener, track)
    }

    fn is_mixer(&self, participant: &str) -> bool {
        self.participants.get(participant).is_some_and(|p| p.kind == ParticipantKind::Mixer)
    }

    /// Bits per second a subscriber's media would take: its videos at the best layers
    /// its preferences allow, and the voices it hears (what its estimate is worth
    /// probing up to).
    pub fn wanted_bitrate(&self, subscriber: &str, now: Instant) -> u64 {
        let video: u64 = self
            .tracks
            .values()
            .filter(|t| t.info.codec.is_video())
            .flat_map(|t| {
                t.subs.iter().filter(|s| s.subscriber == subscriber && !s.prefs.paused).map(|s| {
                    allowed_layers(&t.layers, &s.prefs, now).iter().map(|i| t.layers[*i].bitrate).max().unwrap_or(0)
                })
            })
            .sum();
        video + self.audio_bitrate(subscriber)
    }

    /// Bits per second of the voices a subscriber hears now: taken off its estimate before
    /// the ladder shares the rest among videos, so audio always fits first.
    fn audio_bitrate(&self, subscriber: &str) -> u64 {
        self.tracks
            .values()
            .filter(|t| !t.info.codec.is_video() && !t.muted)
            .filter(|t| t.subs.iter().any(|s| s.subscriber == subscriber && s.audible))
            .map(|t| t.layers.iter().map(|l| l.bitrate).max().unwrap_or(0))
            .sum()
    }

    /// Mixed audio: the voice in each slot of the mix, with whether its publisher is a
    /// client here (one that needs the mix without its own voice); empty in a routed
    /// room.
    pub fn mix_slots(&self) -> Vec<Option<(TrackHandle, bool)>> {
        self.mix_slots
            .iter()
            .map(|slot| {
                let h = (*slot)?;
                let local = self.tracks.get(&h).is_some_and(|t| {
                    t.info.origin.is_none()
                        && self.participants.get(&t.publisher).is_some_and(|p| p.kind == ParticipantKind::Client)
                });
                Some((h, local))
            })
            .collect()
    }

    /// Mixed audio: the slot of the mix a track fills now.
    pub fn mix_slot_of(&self, track: TrackHandle) -> Option<usize> {
        self.mix_slots.iter().position(|s| *s == Some(track))
    }

    /// Mixed audio: how many subscriptions the mix has (none: nobody to mix for).
    pub fn mix_listeners(&self) -> usize {
        self.tracks.values().filter(|t| self.is_mixer(&t.publisher)).map(|t| t.subs.len()).sum()
    }

    /// The audio tracks a client hears now (all of them when loudest-speaker audio does
    /// not apply), in no particular order.
    pub fn audible_tracks(&self, listener: &str) -> Vec<TrackHandle> {
        let mut heard: Vec<TrackHandle> = self
            .tracks
            .iter()
            .filter(|(_, t)| !t.info.codec.is_video() && t.subs.iter().any(|s| s.subscriber == listener && s.audible))
            .map(|(h, _)| *h)
            .collect();
        heard.sort();
        heard
    }

    /// Re-chooses each client's loudest-speaker set ([`loudest::choose`]) and marks its
    /// audio subscriptions. Per listener this looks at its current set and the tracks
    /// talking now only, so a large room of mostly silent microphones stays cheap; the
    /// subscriptions are re-marked only when a set changed.
    fn choose_audible(&mut self) {
        if self.audio_policy.mixed {
            self.choose_mix();
            return;
        }
        if !self.loudest_applies() {
            if !self.audible.is_empty() {
                self.audible.clear();
                for s in self.tracks.values_mut().flat_map(|t| t.subs.iter_mut()) {
                    s.audible = true;
                }
            }
            return;
        }
        // Every unmuted audio track: who it is shown as, and how loud it is.
        let audio: HashMap<TrackHandle, (&ParticipantId, f32)> = self
            .tracks
            .iter()
            .filter(|(_, t)| !t.info.codec.is_video() && !t.muted)
            .map(|(h, t)| (*h, (t.shown_publisher(), self.loudness.loudness(*h))))
            .collect();
        let talking: Vec<TrackHandle> =
            audio.iter().filter(|(_, (_, l))| *l >= loudest::SPEECH_THRESHOLD).map(|(h, _)| *h).collect();
        let mut changed = false;
        let mut next: HashMap<ParticipantId, Vec<TrackHandle>> = HashMap::new();
        for (listener, _) in self.participants.iter().filter(|(_, p)| p.kind == ParticipantKind::Client) {
            let current = self.audible.get(listener).map(Vec::as_slice).unwrap_or(&[]);
            let mut candidates: Vec<(TrackHandle, f32)> = current
                .iter()
                .chain(talking.iter().filter(|h| !current.contains(h)))
                .filter_map(|h| audio.get(h).filter(|(who, _)| *who != listener).map(|(_, l)| (*h, *l)))
                .collect();
            candidates.sort_by_key(|(h, _)| *h);
            let chosen = loudest::choose(current, &candidates, self.audio_policy.speakers);
            if chosen.len() != current.len() || chosen.iter().any(|h| !current.contains(h)) {
                changed = true;
                self.counters.loudest_changes += 1;
            }
            next.insert(listener.clone(), chosen);
        }
        let first = self.audible.is_empty() && !next.is_empty();
        self.audible = next;
        if !(changed || first) {
            return;
        }
        for (h, t) in self.tracks.iter_mut().filter(|(_, t)| !t.info.codec.is_video()) {
            for s in &mut t.subs {
                s.audible = hears_chosen(&self.participants, &self.audible, &s.subscriber, *h);
            }
        }
    }

    /// Mixed audio: re-chooses the voices in the mix ([`loudest::choose`] once for the
    /// room, so the set holds against similar voices as a listener's does); a voice
    /// keeps its slot while chosen. Each client's mix subscription targets the mix
    /// without its own voice when it has one in a slot, else the whole mix.
    fn choose_mix(&mut self) {
        let mut candidates: Vec<(TrackHandle, f32)> = self
            .tracks
            .iter()
            .filter(|(_, t)| !t.info.codec.is_video() && !t.muted && !self.is_mixer(&t.publisher))
            .map(|(h, _)| (*h, self.loudness.loudness(*h)))
            .collect();
        candidates.sort_by_key(|(h, _)| *h);
        let current: Vec<TrackHandle> = self.mix_slots.iter().flatten().copied().collect();
        let chosen = loudest::choose(&current, &candidates, self.mix_slots.len());
        let mut changed = false;
        for slot in self.mix_slots.iter_mut() {
            if slot.is_some_and(|h| !chosen.contains(&h)) {
                *slot = None;
                changed = true;
            }
        }
        for h in chosen.iter().filter(|h| !current.contains(h)) {
            if let Some(free) = self.mix_slots.iter_mut().find(|s| s.is_none()) {
                *free = Some(*h);
                changed = true;
            }
        }
        if changed {
            self.counters.loudest_changes += 1;
        }
        // Whose voice is in which slot.
        let own: HashMap<ParticipantId, usize> = self
            .mix_slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((self.tracks.get(&(*s)?)?.publisher.clone(), i)))
            .collect();
        let mixers: Vec<TrackHandle> =
            self.tracks.iter().filter(|(_, t)| self.is_mixer(&t.publisher)).map(|(h, _)| *h).collect();
        for h in mixers {
            let t = self.tracks.get_mut(&h).expect("listed above");
            let layer_of = |rid: &str| t.layers.iter().position(|l| l.rid == rid);
            let all = layer_of(MIX_ALL);
            let targets: Vec<Option<usize>> = t
                .subs
                .iter()
                .map(|s| own.get(&s.subscriber).and_then(|slot| layer_of(&mix_minus(*slot))).or(all))
                .collect();
            for (s, target) in t.subs.iter_mut().zip(targets) {
                if target.is_some() {
                    s.target = target;
                }
            }
        }
    }

    /// For each video subscription whose subscriber has an estimate: the layer the
    /// degradation ladder ([`ladder::allocate`]) gives it among all the videos that
    /// subscriber receives, or `None` (paused for bandwidth); for `only` one subscriber
    /// or all. One pass over the subscriptions, then one allocation per subscriber.
    fn ladder_choices(&self, now: Instant, only: Option<&str>) -> HashMap<SubscriptionId, Option<usize>> {
        let mut handles: Vec<&TrackHandle> = self.tracks.keys().collect();
        handles.sort();
        let mut by_subscriber: HashMap<&str, Vec<(&Track, &Subscription)>> = HashMap::new();
        for h in handles {
            let t = &self.tracks[h];
            if !t.info.codec.is_video() {
                continue;
            }
            for s in t.subs.iter().filter(|s| !s.prefs.paused && only.is_none_or(|o| o == s.subscriber)) {
                by_subscriber.entry(s.subscriber.as_str()).or_default().push((t, s));
            }
        }
        let mut out = HashMap::new();
        for (subscriber, mine) in by_subscriber {
            let Some((estimate, probes)) =
                self.participants.get(subscriber).and_then(|p| Some((p.estimate?, p.estimate_probes)))
            else {
                continue;
            };
            let allowed: Vec<Vec<usize>> = mine.iter().map(|(t, s)| allowed_layers(&t.layers, &s.prefs, now)).collect();
            let wants: Vec<ladder::Want> = mine
                .iter()
                .zip(&allowed)
                .map(|((t, _), a)| ladder::Want {
                    priority: if t.info.source == Source::ScreenShare {
                        ladder::Priority::Screen
                    } else {
                        ladder::Priority::Camera
                    },
                    layers: a.iter().map(|i| t.layers[*i].bitrate).collect(),
                })
                .collect();
            let budget = ((estimate as f64 * ESTIMATE_HEADROOM) as u64).saturating_sub(self.audio_bitrate(subscriber));
            let given = ladder::allocate(budget, &wants);
            for (((_, s), allowed), given) in mine.iter().zip(&allowed).zip(given) {
                // A track with no active layer yet has nothing to choose from.
                if allowed.is_empty() {
                    continue;
                }
                let layer = match given {
                    Some(g) => allowed.get(g).copied(),
                    None if probes => None,
                    // Not paused: its lowest layer, as before the ladder.
                    None => allowed.first().copied(),
                };
                out.insert(s.id, layer);
            }
        }
        out
    }

    /// Re-chooses the target layer of every subscription of a video track, and asks for
    /// keyframes where a subscription waits for one.
    /// [`Room::evaluate_track`] for each of `handles`, with the ladder worked out once,
    /// for `only` one subscriber's subscriptions (what its estimate or preference
    /// changed) or for all.
    fn evaluate_tracks(&mut self, handles: &[TrackHandle], now: Instant, only: Option<&str>) {
        let ladder = self.ladder_choices(now, only);
        for h in handles {
            self.evaluate_track(*h, now, &ladder, only);
        }
    }

    fn evaluate_track(
        &mut self,
        handle: TrackHandle,
        now: Instant,
        ladder: &HashMap<SubscriptionId, Option<usize>>,
        only: Option<&str>,
    ) {
        let Some(t) = self.tracks.get_mut(&handle) else { return };
        if !t.info.codec.is_video() || t.layers.is_empty() {
            return;
        }
        let mut wanted: Vec<usize> = Vec::new();
        for s in t.subs.iter_mut().filter(|s| !s.prefs.paused && only.is_none_or(|o| o == s.subscriber)) {
            let choice = match ladder.get(&s.id) {
                // Without an estimate: the best the preferences allow.
                None => match allowed_layers(&t.layers, &s.prefs, now).last() {
                    Some(&highest) => highest,
                    None => continue,
                },
                // The estimate cannot carry even the lowest layer: video pauses (audio
                // flows on); it resumes at a keyframe once the estimate has carried a
                // layer for the up-switch hold.
                Some(None) => {
                    let since = *s.starving_since.get_or_insert(now);
                    if !s.starved && now.saturating_duration_since(since) < PAUSE_HOLD {
                        // A dip: the lowest layer meanwhile.
                        match allowed_layers(&t.layers, &s.prefs, now).first() {
                            Some(&lowest) => lowest,
                            None => continue,
                        }
                    } else {
                        if !s.starved {
                            s.starved = true;
                            (s.current, s.target, s.up_since, s.waiting_since) = (None, None, None, None);
                            self.counters.bandwidth_pauses += 1;
                        }
                        continue;
                    }
                }
                Some(Some(layer)) if s.starved => {
                    s.starving_since = None;
                    let since = *s.up_since.get_or_insert(now);
                    if now.saturating_duration_since(since) < RESUME_HOLD {
                        continue;
                    }
                    s.starved = false;
                    s.up_since = None;
                    *layer
                }
                Some(Some(layer)) => {
                    s.starving_since = None;
                    *layer
                }
            };
            let target = match (s.target, s.current) {
                (Some(old), _) if old == choice => {
                    s.up_since = None;
                    old
                }
                (Some(old), _) if t.layers[choice].rank > t.layers[old].rank => {
                    let since = *s.up_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= UP_SWITCH_HOLD { choice } else { old }
                }
                _ => {
                    s.up_since = None;
                    choice
                }
            };
            if s.target != Some(target) {
                s.target = Some(target);
                s.up_since = None;
            }
            if s.current != s.target {
                let due = s.waiting_since.is_none_or(|w| now.saturating_duration_since(w) >= KEYFRAME_RETRY);
                if due {
                    s.waiting_since = Some(now);
                    wanted.push(target);
                }
            }
        }
        // A muted publisher sends no pictures (a browser sends black frames, or padding, at
        // most): asking it for keyframes would only repeat every retry for nothing.
        // Unmuting asks for what the subscriptions wait for.
        if t.muted {
            return;
        }
        wanted.sort();
        wanted.dedup();
        for layer in wanted {
            self.request_keyframe(handle, layer, now);
        }
    }

    fn request_keyframe(&mut self, handle: TrackHandle, layer: usize, now: Instant) {
        let Some(l) = self.tracks.get_mut(&handle).and_then(|t| t.layers.get_mut(layer)) else { return };
        if l.last_keyframe_request.is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_REQUEST_INTERVAL) {
            return;
        }
        l.last_keyframe_request = Some(now);
        self.counters.keyframe_requests += 1;
        self.outputs.push_back(Output::RequestKeyframe { track: handle, layer });
    }
}

/// Whether a participant of `kind` may receive track `t`: a mixer receives nothing, and
/// only clients receive a mixer's track.
fn receives(participants: &HashMap<ParticipantId, Participant>, kind: ParticipantKind, t: &Track) -> bool {
    let from_mixer = participants.get(&t.publisher).is_some_and(|p| p.kind == ParticipantKind::Mixer);
    kind != ParticipantKind::Mixer && (!from_mixer || kind == ParticipantKind::Client)
}

/// While loudest-speaker audio applies: whether `listener` hears `track` — a relay or a
/// hidden subscriber always, a client when the track is in its chosen set.
fn hears_chosen(
    participants: &HashMap<ParticipantId, Participant>,
    audible: &HashMap<ParticipantId, Vec<TrackHandle>>,
    listener: &str,
    track: TrackHandle,
) -> bool {
    participants.get(listener).is_none_or(|p| p.kind != ParticipantKind::Client)
        || audible.get(listener).is_some_and(|set| set.contains(&track))
}

/// Checks declarations against a participant's permission and its earlier ones (and
/// each other).
fn check_declarations(
    participant: &str,
    may_publish: bool,
    earlier: &HashMap<TrackId, (Source, bool)>,
    tracks: &[Declaration],
) -> Result<(), RoomError> {
    if !may_publish && !tracks.is_empty() {
        return Err(RoomError::PublishNotAllowed(participant.into()));
    }
    for (i, d) in tracks.iter().enumerate() {
        let before =
            earlier.get(&d.id).map(|(s, _)| *s).or_else(|| tracks[..i].iter().find(|x| x.id == d.id).map(|x| x.source));
        if before.is_some_and(|s| s != d.source) {
            return Err(RoomError::Redeclared(d.id.clone()));
        }
    }
    Ok(())
}

/// Quality rank of a simulcast RID as browsers and SFUs name them; unknown names sit in
/// the middle and are ordered by bitrate.
fn rid_rank(rid: &str) -> u8 {
    match rid.to_ascii_lowercase().as_str() {
        "" | "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "1" => 1,
        "f" | "hi" | "high" | "2" => 2,
        _ => 1,
    }
}

/// Layer indices from lowest to highest quality.
fn ordered(layers: &[Layer]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by_key(|&i| (layers[i].rank, layers[i].bitrate, i));
    order
}

fn layer_position(layers: &[Layer], index: usize) -> u8 {
    ordered(layers).iter().position(|&i| i == index).unwrap_or(0) as u8
}

/// The layers a subscription may receive, lowest first: the active layers its
/// preferences allow, or the lowest active one when they allow none.
fn allowed_layers(layers: &[Layer], prefs: &Preferences, now: Instant) -> Vec<usize> {
    let active: Vec<usize> = ordered(layers)
        .into_iter()
        .filter(|&i| layers[i].last_packet.is_some_and(|at| now.saturating_duration_since(at) < LAYER_INACTIVE_AFTER))
        .collect();
    let Some(&lowest) = active.first() else { return Vec::new() };
    let allowed: Vec<usize> = active
        .iter()
        .enumerate()
        .filter(|(pos, _)| prefs.max_layer.is_none_or(|m| *pos as u8 <= m))
        .filter(|(_, i)| prefs.max_height.is_none_or(|h| layers[**i].size.is_none_or(|(_, lh)| lh <= h)))
        .map(|(_, i)| *i)
        .collect();
    if allowed.is_empty() { vec![lowest] } else { allowed }
}
