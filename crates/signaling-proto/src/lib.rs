//! The signaling protocol between clients and signaling-pod: JSON over WebSocket.
//!
//! Every frame is an [`Envelope`]: `{type, roomId, fromPeerId, toPeerId | broadcast, id,
//! payload}`. [`parse_client`] turns a frame into a typed [`ClientMessage`] or a
//! [`ProtoError`] carrying the code and reason the server sends back in an `error`
//! message; it never panics (a fuzz test feeds it mutated and random frames).
//!
//! Roles and permissions are decided here too ([`Permissions`]), so the server and
//! the browser client agree on them; the server is the one that enforces them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use switchboard_sfu_api::{Candidate, ConnectionRole, Event as SfuEvent, MediaKind, Source, TrackDescription};

pub mod breakouts;
pub mod e2ee;
pub mod offer;
pub mod permissions;
pub mod rest;
pub mod session;
pub use permissions::{Permission, Permissions, Role};

/// Largest frame the server reads; larger ones get a `tooLarge` error (the connection lives on).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest chat message, in characters.
pub const MAX_CHAT_CHARS: usize = 4000;
/// Longest participant id a client may name (`toPeerId`); the server's are far shorter.
pub const MAX_PEER_ID_CHARS: usize = 64;

/// The wire envelope of every message, in both directions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    #[serde(rename = "type")]
    pub type_: String,
    /// The meeting (its name); set by the server on everything it sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_peer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_peer_id: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub broadcast: bool,
    /// A client-chosen request id; replies and errors caused by the request carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub payload: Value,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Envelope {
    pub fn new(type_: &str, payload: impl Serialize) -> Self {
        Self {
            type_: type_.into(),
            payload: serde_json::to_value(payload).unwrap_or(Value::Null),
            ..Default::default()
        }
    }
    pub fn in_reply_to(mut self, id: Option<String>) -> Self {
        self.id = id;
        self
    }
    pub fn from_peer(mut self, peer: &str) -> Self {
        self.from_peer_id = Some(peer.into());
        self
    }
    pub fn room(mut self, room: &str) -> Self {
        self.room_id = Some(room.into());
        self
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("envelopes serialize")
    }
    /// Reads the payload as `T`.
    pub fn payload_as<T: for<'de> Deserialize<'de>>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self.payload.clone())
    }
}

/// Message types, as they appear in `type`.
pub mod types {
    pub const JOIN: &str = "join";
    pub const OFFER: &str = "offer";
    pub const ANSWER: &str = "answer";
    pub const CANDIDATE: &str = "candidate";
    pub const ICE_RESTART: &str = "ice-restart";
    /// Client asks for fresh TURN credentials (before the ones it holds expire); the
    /// server answers with the same type and an [`IceServersPayload`](super::IceServersPayload).
    pub const ICE_SERVERS: &str = "ice-servers";
    pub const LEAVE: &str = "leave";
    pub const CHAT: &str = "chat";
    pub const PARTICIPANT_UPDATE: &str = "participant-update";
    pub const PARTICIPANT_LEFT: &str = "participant-left";
    pub const MUTE: &str = "mute";
    pub const ADMIT: &str = "admit";
    pub const REMOVE: &str = "remove";
    pub const REACTION: &str = "reaction";
    pub const HAND_RAISE: &str = "hand-raise";
    /// What the client wants of one track it receives: the size it shows it at (the
    /// SFU then forwards the simulcast layer that fits), or paused while not shown.
    pub const SUBSCRIPTION: &str = "subscription";
    pub const START_RECORDING: &str = "start-recording";
    pub const STOP_RECORDING: &str = "stop-recording";
    /// End-to-end encryption's key exchange (`e2ee` module).
    pub const E2EE_HELLO: &str = "e2ee-hello";
    pub const E2EE_KEY: &str = "e2ee-key";
    pub const E2EE_MEMBERS: &str = "e2ee-members";
    /// A host ends the meeting for everyone: each participant gets `meeting-ended` and
    /// is disconnected, and nobody may join again.
    pub const END_MEETING: &str = "end-meeting";
    /// A host changes someone's role during the meeting: invites a Webinar attendee to
    /// speak (`participant`, a panelist) or moves them back (`viewer`), makes or unmakes
    /// a co-host. The participant gets `role-changed`; everyone a `participant-update`.
    pub const SET_ROLE: &str = "set-role";
    /// Hosts and co-hosts page through the participants, sorted by id
    /// ([`ParticipantsQuery`](super::ParticipantsQuery)); the reply has the same type
    /// and a [`ParticipantsPage`](super::ParticipantsPage).
    pub const PARTICIPANTS: &str = "participants";
    /// Breakout rooms (`breakouts` module): hosts and co-hosts open, move, broadcast
    /// and close; a participant in a room asks for help.
    pub const OPEN_BREAKOUTS: &str = "open-breakouts";
    pub const BREAKOUT_MOVE: &str = "breakout-move";
    pub const BREAKOUT_BROADCAST: &str = "breakout-broadcast";
    pub const CLOSE_BREAKOUTS: &str = "close-breakouts";
    pub const ASK_FOR_HELP: &str = "ask-for-help";
    /// Server to client: the rooms (hosts), a session moved, help asked, rooms closing.
    pub const BREAKOUTS: &str = "breakouts";
    pub const BREAKOUT_MOVED: &str = "breakout-moved";
    pub const HELP_REQUESTED: &str = "help-requested";
    pub const BREAKOUTS_CLOSING: &str = "breakouts-closing";
    pub const PING: &str = "ping";
    pub const ERROR: &str = "error";
    // Server to client only.
    pub const JOINED: &str = "joined";
    pub const WAITING: &str = "waiting";
    pub const ADMITTED: &str = "admitted";
    pub const MEDIA_EVENT: &str = "media-event";
    pub const MEDIA_RECONNECT: &str = "media-reconnect";
    /// The replica is draining: connect again, with the same session token, after `retryAfterMs`.
    pub const RECONNECT: &str = "reconnect";
    pub const RECORDING: &str = "recording";
    /// The meeting is over (a host ended it, or the operator did): do not reconnect.
    pub const MEETING_ENDED: &str = "meeting-ended";
    /// This participant's role changed ([`RoleChangedPayload`](super::RoleChangedPayload)).
    pub const ROLE_CHANGED: &str = "role-changed";
    /// How many are in the audience (viewers, a Webinar's attendees) now
    /// ([`AudiencePayload`](super::AudiencePayload)): sent when it changed, at most once
    /// a second, instead of one message per attendee who comes or goes.
    pub const AUDIENCE: &str = "audience";
    /// The meeting's joins come faster than its join queue lets in: this `join` waits
    /// its turn ([`QueuedPayload`](super::QueuedPayload), again each second); `joined`
    /// follows, with the `join`'s id.
    pub const QUEUED: &str = "queued";
    /// To hosts and co-hosts, once: an Interactive meeting passed its `spec.escalation`
    /// size, and newcomers now join as attendees ([`EscalatedPayload`](super::EscalatedPayload)).
    pub const ESCALATED: &str = "escalated";
    pub const PONG: &str = "pong";
    pub const OK: &str = "ok";
}

/// What a client may send.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage {
    /// First message on a connection: the session token from the REST join.
    Join(JoinPayload),
    /// Publisher offer (`sdp` absent: join the SFU receive-only).
    Offer(OfferPayload),
    /// The answer to the SFU's subscriber offer.
    Answer(AnswerPayload),
    Candidate(Candidate),
    IceRestart,
    /// Fresh TURN credentials, please.
    IceServers,
    Leave,
    Chat(ChatPayload),
    /// The sender's own state (mute, camera, screen share, name).
    ParticipantUpdate(StateUpdate),
    /// Mute someone (or oneself): needs `mute_others` for anyone else.
    Mute(MutePayload),
    Admit(AdmitPayload),
    Remove(TargetPayload),
    Reaction(ReactionPayload),
    HandRaise(HandRaisePayload),
    Subscription(SubscriptionPayload),
    StartRecording,
    /// Ends the running recording early (who may start one may stop it).
    StopRecording,
    EndMeeting,
    SetRole(SetRolePayload),
    Participants(ParticipantsQuery),
    /// An E2EE meeting's public key announcement, or a key request to one publisher.
    E2eeHello(e2ee::HelloPayload),
    /// A publisher's media key, wrapped for each recipient.
    E2eeKey(e2ee::KeyPayload),
    OpenBreakouts(breakouts::OpenPayload),
    BreakoutMove(breakouts::MovePayload),
    BreakoutBroadcast(breakouts::BroadcastPayload),
    CloseBreakouts(breakouts::ClosePayload),
    AskForHelp,
    Ping,
}

impl ClientMessage {
    pub fn type_name(&self) -> &'static str {
        use types::*;
        match self {
            Self::Join(_) => JOIN,
            Self::Offer(_) => OFFER,
            Self::Answer(_) => ANSWER,
            Self::Candidate(_) => CANDIDATE,
            Self::IceRestart => ICE_RESTART,
            Self::IceServers => ICE_SERVERS,
            Self::Leave => LEAVE,
            Self::Chat(_) => CHAT,
            Self::ParticipantUpdate(_) => PARTICIPANT_UPDATE,
            Self::Mute(_) => MUTE,
            Self::Admit(_) => ADMIT,
            Self::Remove(_) => REMOVE,
            Self::Reaction(_) => REACTION,
            Self::HandRaise(_) => HAND_RAISE,
            Self::Subscription(_) => SUBSCRIPTION,
            Self::StartRecording => START_RECORDING,
            Self::StopRecording => STOP_RECORDING,
            Self::EndMeeting => END_MEETING,
            Self::SetRole(_) => SET_ROLE,
            Self::Participants(_) => PARTICIPANTS,
            Self::E2eeHello(_) => E2EE_HELLO,
            Self::E2eeKey(_) => E2EE_KEY,
            Self::OpenBreakouts(_) => OPEN_BREAKOUTS,
            Self::BreakoutMove(_) => BREAKOUT_MOVE,
            Self::BreakoutBroadcast(_) => BREAKOUT_BROADCAST,
            Self::CloseBreakouts(_) => CLOSE_BREAKOUTS,
            Self::AskForHelp => ASK_FOR_HELP,
            Self::Ping => PING,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinPayload {
    pub token: String,
    /// The end-to-end encryption scheme the client implements ([`e2ee::SCHEME_VERSION`]);
    /// an E2EE meeting refuses a join without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2ee: Option<u8>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OfferPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracks: Vec<TrackDescription>,
    /// The offer starts new connections (a reloaded page resuming its session, a client
    /// starting over): the session's media at the SFU, if any, is replaced rather than
    /// renegotiated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnswerPayload {
    pub sdp: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatPayload {
    pub text: String,
    /// A direct message's recipient (a participant id): the envelope's `toPeerId`, never
    /// the payload's. `None`: everyone.
    #[serde(skip)]
    pub to: Option<String>,
}

/// A participant's own state; absent fields are unchanged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_muted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_muted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_sharing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `mute`: mute someone (`muted`, the default), or, with `muted: false`, lift a host's
/// mute so the participant may unmute themselves again (a host never unmutes anyone).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutePayload {
    pub participant_id: String,
    #[serde(default = "audio")]
    pub kind: MediaKind,
    #[serde(default = "yes")]
    pub muted: bool,
}

fn audio() -> MediaKind {
    MediaKind::Audio
}

fn yes() -> bool {
    true
}

/// Admit one waiting participant, or everyone waiting.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdmitPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
    #[serde(default)]
    pub all: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetPayload {
    pub participant_id: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReactionPayload {
    pub emoji: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HandRaisePayload {
    pub raised: bool,
    /// Whose hand: absent for one's own. Hosts and co-hosts lower others' hands; nobody
    /// raises another's. In the server's announcement, whose hand it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_id: Option<String>,
    /// Lower every raised hand (hosts and co-hosts; with `raised: false` and no
    /// `participantId`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetRolePayload {
    pub participant_id: String,
    /// `co-host`, `participant` (also `panelist`) or `viewer` (also `attendee`); a
    /// meeting's one host is its `spec.host`, so `host` is refused.
    pub role: Role,
}

/// Largest page of `participants`.
pub const MAX_PARTICIPANTS_PAGE: u32 = 500;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParticipantsQuery {
    /// The page starts after this participant id (absent: from the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many (1 to [`MAX_PARTICIPANTS_PAGE`], default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantsPage {
    pub participants: Vec<ParticipantInfo>,
    /// Where the next page starts (`after`), absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EscalatedPayload {
    /// `spec.escalation.attendeesFrom`
    pub attendees_from: i32,
    /// Participants in the meeting when it happened.
    pub participants: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueuedPayload {
    /// Joins let in before this one (1: next).
    pub position: u64,
    pub wait_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AudiencePayload {
    pub count: u64,
}

/// To the participant whose role changed: its role and what it may do now. When
/// `reconnect` is set, whether it publishes changed: its media at the SFU was let go and
/// it connects media again (a `media-reconnect` follows), publishing only if `role` does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleChangedPayload {
    pub role: Role,
    pub permissions: Vec<Permission>,
    /// Who changed it.
    pub by: String,
    pub reconnect: bool,
}

/// Tallest picture worth asking for (8K).
pub const MAX_SUBSCRIPTION_HEIGHT: u16 = 4320;
/// Highest simulcast layer index a client may name.
pub const MAX_SUBSCRIPTION_LAYER: u8 = 7;

/// `subscription`: one received track's preferences. `paused` stops its forwarding
/// (a tile off screen); otherwise the SFU forwards the highest layer within
/// `maxHeight` pixels and `maxLayer` (each unset: no limit).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionPayload {
    pub track: String,
    #[serde(default)]
    pub paused: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_layer: Option<u8>,
}

/// A participant as everyone in the meeting sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub admitted: bool,
    pub audio_muted: bool,
    pub video_muted: bool,
    pub screen_sharing: bool,
    /// Who muted the microphone (absent when it is on). A host's mute (and a mute on
    /// entry) holds until a host lifts it, unless the role has `unmute_self`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_muted_by: Option<MutedBy>,
    /// Who turned the camera off (absent when it is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_muted_by: Option<MutedBy>,
    /// A raised hand, until its owner or a host lowers it; late joiners see it.
    #[serde(default)]
    pub hand_raised: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum MutedBy {
    /// The participant, who may unmute at will.
    Participant,
    /// A host or co-host, or the meeting's mute on entry: the participant may not undo it.
    Host,
}

/// The server's reply to `join`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JoinedPayload {
    /// The meeting joined: the one the token names, or its main meeting when the token is
    /// a breakout room's that has closed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub meeting: String,
    pub participant: ParticipantInfo,
    pub title: String,
    pub permissions: Vec<Permission>,
    /// Everyone admitted who is not in the audience, and oneself; for hosts and
    /// co-hosts, the audience and everyone waiting too.
    pub participants: Vec<ParticipantInfo>,
    /// How many are in the audience (admitted viewers, a Webinar's attendees); `audience`
    /// messages follow the count.
    #[serde(default)]
    pub audience: u64,
    /// True when this connection took over an earlier one of the same session.
    pub resumed: bool,
    /// The RecordingJob recording the meeting now, if any (not told to the waiting room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// Fresh TURN credentials (every join and resume renews them; empty without TURN,
    /// and in the waiting room).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<rest::IceServer>,
    /// The meeting's media is end-to-end encrypted (`docs/e2ee.md`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub e2ee: bool,
}

/// `ice-servers`: the reply to the client's `ice-servers`, fresh TURN credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IceServersPayload {
    pub ice_servers: Vec<rest::IceServer>,
}

/// `recording`, broadcast to everyone admitted when a recording of the meeting starts
/// (its RecordingJob was created) and when it stops (the job left `Pending` and
/// `Recording`, or was deleted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingPayload {
    pub state: RecordingState,
    pub recording_job: String,
    /// The job's phase when it stopped (`Processing`, `Ready`, `Failed`; absent if deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RecordingState {
    Started,
    Stopped,
}

/// A chat message as stored and delivered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    /// Position in the meeting's chat, from 1.
    pub seq: u64,
    pub from: String,
    pub name: String,
    pub text: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// A direct message's recipient (participant id and name): only it and the sender
    /// receive the message and find it in the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_name: Option<String>,
}

/// `media-reconnect`: the meeting moved to another SFU; build new connections and
/// send a new `offer`. The session, admission and chat are untouched.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MediaReconnectPayload {
    pub reason: String,
    pub generation: i64,
    /// Fresh TURN credentials for the new connection (empty without TURN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<rest::IceServer>,
}

/// `reconnect`: the replica is shutting down (a drain, on SIGTERM). The client opens a
/// new WebSocket after `retry_after_ms` (each client is given its own moment, so the
/// clients of a replica do not all arrive at once) and joins with the same session
/// token: any replica resumes the session. The old connection closes (1001 going away)
/// once the new one took over, or at the end of the drain.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReconnectPayload {
    pub reason: String,
    pub retry_after_ms: u64,
}

/// `error`: what went wrong with a message; the connection stays open unless the
/// code is `unauthenticated` or `removed`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorPayload {
    pub code: ErrorCode,
    pub reason: String,
    /// The type of the message refused, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// Not JSON, or not an envelope.
    MalformedJson,
    UnknownType,
    /// The payload does not fit the type.
    InvalidPayload,
    TooLarge,
    RateLimited,
    /// No valid session yet, or a bad or expired token.
    Unauthenticated,
    /// The role lacks the permission.
    Forbidden,
    /// Still in the waiting room.
    NotAdmitted,
    UnknownParticipant,
    /// The meeting has no SFU yet, or it ended.
    MeetingUnavailable,
    /// The SFU refused or could not be reached.
    MediaFailed,
    Removed,
    /// A recording of the meeting is already running (or being started).
    RecordingActive,
    /// No recording of the meeting is running (nothing to stop).
    NoRecording,
    /// The meeting is end-to-end encrypted and the client did not say it implements
    /// the scheme (`join` without `e2ee: 1`).
    E2eeUnsupported,
    /// The meeting has breakout rooms open already.
    BreakoutsOpen,
    /// The meeting has no breakout rooms open.
    NoBreakouts,
    Internal,
}

/// Why a frame was refused, ready to become an `error` message.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtoError {
    pub code: ErrorCode,
    pub reason: String,
    pub id: Option<String>,
    pub refused: Option<String>,
}

impl ProtoError {
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self { code, reason: reason.into(), id: None, refused: None }
    }
    pub fn envelope(&self) -> Envelope {
        Envelope::new(
            types::ERROR,
            ErrorPayload { code: self.code, reason: self.reason.clone(), refused: self.refused.clone() },
        )
        .in_reply_to(self.id.clone())
    }
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.reason)
    }
}

/// Parses one client frame. Errors name what is wrong and carry the request id when
/// the envelope could be read.
pub fn parse_client(frame: &[u8]) -> Result<(Envelope, ClientMessage), ProtoError> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(ProtoError::new(
            ErrorCode::TooLarge,
            format!("message of {} bytes is over the limit of {MAX_FRAME_BYTES}", frame.len()),
        ));
    }
    let envelope: Envelope = serde_json::from_slice(frame)
        .map_err(|e| ProtoError::new(ErrorCode::MalformedJson, format!("not a signaling envelope: {e}")))?;
    let fail = |code, reason: String| ProtoError {
        code,
        reason,
        id: envelope.id.clone(),
        refused: Some(envelope.type_.clone()),
    };
    let invalid =
        |e: serde_json::Error| fail(ErrorCode::InvalidPayload, format!("bad `{}` payload: {e}", envelope.type_));
    let payload = || -> Value {
        // Types without a payload accept a missing one as `{}`.
        if envelope.payload.is_null() { Value::Object(Default::default()) } else { envelope.payload.clone() }
    };
    fn typed<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, serde_json::Error> {
        serde_json::from_value(v)
    }
    use types::*;
    let message = match envelope.type_.as_str() {
        JOIN => ClientMessage::Join(typed(payload()).map_err(invalid)?),
        OFFER => ClientMessage::Offer(typed(payload()).map_err(invalid)?),
        ANSWER => ClientMessage::Answer(typed(payload()).map_err(invalid)?),
        CANDIDATE => ClientMessage::Candidate(typed(payload()).map_err(invalid)?),
        ICE_RESTART => ClientMessage::IceRestart,
        ICE_SERVERS => ClientMessage::IceServers,
        LEAVE => ClientMessage::Leave,
        CHAT => {
            let mut chat: ChatPayload = typed(payload()).map_err(invalid)?;
            let chars = chat.text.chars().count();
            if chars == 0 || chars > MAX_CHAT_CHARS {
                return Err(fail(
                    ErrorCode::InvalidPayload,
                    format!("chat text must have 1 to {MAX_CHAT_CHARS} characters, not {chars}"),
                ));
            }
            if let Some(to) = &envelope.to_peer_id {
                if envelope.broadcast {
                    return Err(fail(
                        ErrorCode::InvalidPayload,
                        "a chat goes to toPeerId or to everyone, not both".into(),
                    ));
                }
                if to.is_empty() || to.chars().count() > MAX_PEER_ID_CHARS {
                    return Err(fail(
                        ErrorCode::InvalidPayload,
                        format!("toPeerId must have 1 to {MAX_PEER_ID_CHARS} characters"),
                    ));
                }
                chat.to = Some(to.clone());
            }
            ClientMessage::Chat(chat)
        }
        PARTICIPANT_UPDATE => {
            let update: StateUpdate = typed(payload()).map_err(invalid)?;
            if update.name.as_ref().is_some_and(|n| n.trim().is_empty() || n.chars().count() > 64) {
                return Err(fail(ErrorCode::InvalidPayload, "name must have 1 to 64 characters".into()));
            }
            ClientMessage::ParticipantUpdate(update)
        }
        MUTE => ClientMessage::Mute(typed(payload()).map_err(invalid)?),
        ADMIT => {
            let admit: AdmitPayload = typed(payload()).map_err(invalid)?;
            if admit.all == admit.participant_id.is_some() {
                return Err(fail(ErrorCode::InvalidPayload, "admit takes either participantId or all: true".into()));
            }
            ClientMessage::Admit(admit)
        }
        REMOVE => ClientMessage::Remove(typed(payload()).map_err(invalid)?),
        PARTICIPANTS => {
            let q: ParticipantsQuery = typed(payload()).map_err(invalid)?;
            if q.limit.is_some_and(|l| l == 0 || l > MAX_PARTICIPANTS_PAGE) {
                return Err(fail(
                    ErrorCode::InvalidPayload,
                    format!("limit is 1 to {MAX_PARTICIPANTS_PAGE}, not {}", q.limit.unwrap_or_default()),
                ));
            }
            if let Some(after) = &q.after {
                switchboard_sfu_api::paths::check_id("participant", after)
                    .map_err(|e| fail(ErrorCode::InvalidPayload, e))?;
            }
            ClientMessage::Participants(q)
        }
        SET_ROLE => {
            let r: SetRolePayload = typed(payload()).map_err(invalid)?;
            switchboard_sfu_api::paths::check_id("participant", &r.participant_id)
                .map_err(|e| fail(ErrorCode::InvalidPayload, e))?;
            if r.role == Role::Host {
                return Err(fail(
                    ErrorCode::InvalidPayload,
                    "a meeting's host is its spec.host; set-role takes co-host, participant or viewer".into(),
                ));
            }
            ClientMessage::SetRole(r)
        }
        REACTION => {
            let r: ReactionPayload = typed(payload()).map_err(invalid)?;
            if r.emoji.is_empty() || r.emoji.chars().count() > 8 {
                return Err(fail(ErrorCode::InvalidPayload, "a reaction is one emoji (at most 8 characters)".into()));
            }
            ClientMessage::Reaction(r)
        }
        HAND_RAISE => {
            let h: HandRaisePayload = typed(payload()).map_err(invalid)?;
            if let Some(p) = &h.participant_id {
                switchboard_sfu_api::paths::check_id("participant", p)
                    .map_err(|r| fail(ErrorCode::InvalidPayload, r))?;
                if h.raised {
                    return Err(fail(ErrorCode::InvalidPayload, "only your own hand can be raised".into()));
                }
            }
            if h.all && (h.raised || h.participant_id.is_some()) {
                return Err(fail(
                    ErrorCode::InvalidPayload,
                    "`all` lowers every hand: send raised: false without participantId".into(),
                ));
            }
            ClientMessage::HandRaise(h)
        }
        SUBSCRIPTION => {
            let s: SubscriptionPayload = typed(payload()).map_err(invalid)?;
            switchboard_sfu_api::paths::check_id("track", &s.track).map_err(|r| fail(ErrorCode::InvalidPayload, r))?;
            if s.max_height.is_some_and(|h| h == 0 || h > MAX_SUBSCRIPTION_HEIGHT) {
                return Err(fail(
                    ErrorCode::InvalidPayload,
                    format!("maxHeight is 1 to {MAX_SUBSCRIPTION_HEIGHT} pixels"),
                ));
            }
            if s.max_layer.is_some_and(|l| l > MAX_SUBSCRIPTION_LAYER) {
                return Err(fail(ErrorCode::InvalidPayload, format!("maxLayer is 0 to {MAX_SUBSCRIPTION_LAYER}")));
            }
            ClientMessage::Subscription(s)
        }
        E2EE_HELLO => {
            let mut hello: e2ee::HelloPayload = typed(payload()).map_err(invalid)?;
            e2ee::check_public_key(&hello.public_key).map_err(|e| fail(ErrorCode::InvalidPayload, e))?;
            if let Some(to) = &envelope.to_peer_id {
                switchboard_sfu_api::paths::check_id("participant", to)
                    .map_err(|e| fail(ErrorCode::InvalidPayload, format!("toPeerId: {e}")))?;
                hello.to = Some(to.clone());
            }
            ClientMessage::E2eeHello(hello)
        }
        E2EE_KEY => {
            let key: e2ee::KeyPayload = typed(payload()).map_err(invalid)?;
            e2ee::check_key(&key).map_err(|e| fail(ErrorCode::InvalidPayload, e))?;
            ClientMessage::E2eeKey(key)
        }
        OPEN_BREAKOUTS => {
            let o: breakouts::OpenPayload = typed(payload()).map_err(invalid)?;
            breakouts::check_open(&o).map_err(|e| fail(ErrorCode::InvalidPayload, e))?;
            ClientMessage::OpenBreakouts(o)
        }
        BREAKOUT_MOVE => {
            let m: breakouts::MovePayload = typed(payload()).map_err(invalid)?;
            breakouts::check_move(&m).map_err(|e| fail(ErrorCode::InvalidPayload, e))?;
            ClientMessage::BreakoutMove(m)
        }
        BREAKOUT_BROADCAST => {
            let b: breakouts::BroadcastPayload = typed(payload()).map_err(invalid)?;
            breakouts::check_broadcast(&b).map_err(|e| fail(ErrorCode::InvalidPayload, e))?;
            ClientMessage::BreakoutBroadcast(b)
        }
        CLOSE_BREAKOUTS => {
            let c: breakouts::ClosePayload = typed(payload()).map_err(invalid)?;
            breakouts::check_close(&c).map_err(|e| fail(ErrorCode::InvalidPayload, e))?;
            ClientMessage::CloseBreakouts(c)
        }
        ASK_FOR_HELP => ClientMessage::AskForHelp,
        START_RECORDING => ClientMessage::StartRecording,
        STOP_RECORDING => ClientMessage::StopRecording,
        END_MEETING => ClientMessage::EndMeeting,
        PING => ClientMessage::Ping,
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(fail(ErrorCode::UnknownType, format!("unknown message type `{shown}`")));
        }
    };
    Ok((envelope, message))
}

#[cfg(test)]
mod tests;
