//! The SFU's internal HTTP API (JSON), as used by signaling, the recorder, SFU relays
//! and test clients. Paths are under `/v1`; see [`paths`].
//!
//! Each participant has up to two peer connections, as in LiveKit: a *publisher*
//! connection the client offers (its camera, microphone, screen), and a *subscriber*
//! connection the SFU offers (everyone else's tracks). Two connections mean neither
//! side ever has to resolve offer glare. SFU-initiated messages (subscriber offers,
//! the SFU's ICE candidates, room events) are read from a per-participant event queue
//! by long polling.
//!
//! Every call but the probes and metrics carries the pool's credential,
//! `Authorization: Bearer <token>` (see [`auth`]); without it, or with another, the SFU
//! answers `401` with code [`ErrorCode::Unauthorized`].

use serde::{Deserialize, Serialize};

pub mod paths {
    //! `{room}`, `{participant}` and `{track}` are path segments.
    pub const HEALTHZ: &str = "/healthz";
    pub const READYZ: &str = "/readyz";
    pub const METRICS: &str = "/metrics";
    pub const STATUS: &str = "/v1/status";
    pub const DRAIN: &str = "/v1/drain";
    pub const ROOM: &str = "/v1/rooms/{room}";
    pub const RELAY: &str = "/v1/rooms/{room}/relay";
    pub const PARTICIPANTS: &str = "/v1/rooms/{room}/participants";
    pub const PARTICIPANT: &str = "/v1/rooms/{room}/participants/{participant}";
    pub const PUBLISHER_OFFER: &str = "/v1/rooms/{room}/participants/{participant}/publisher/offer";
    pub const SUBSCRIBER_ANSWER: &str = "/v1/rooms/{room}/participants/{participant}/subscriber/answer";
    pub const SUBSCRIBER_RESTART: &str = "/v1/rooms/{room}/participants/{participant}/subscriber/restart";
    pub const CANDIDATE: &str = "/v1/rooms/{room}/participants/{participant}/candidate";
    pub const EVENTS: &str = "/v1/rooms/{room}/participants/{participant}/events";
    pub const TRACK: &str = "/v1/rooms/{room}/participants/{participant}/tracks/{track}";
    pub const SUBSCRIPTION: &str = "/v1/rooms/{room}/participants/{participant}/subscriptions/{track}";

    /// Paths served without the credential: the kubelet's probes and Prometheus.
    pub const OPEN: [&str; 3] = [HEALTHZ, READYZ, METRICS];

    /// Fills in a path template, each value percent-encoded as one path segment: an id
    /// holding `/`, `?`, `#` or `%` (track ids come from clients) cannot reach another
    /// endpoint. The SFU's router decodes them back. `.` and `..` would still be dot
    /// segments, which URL parsers resolve: [`check_id`] refuses them at the door.
    pub fn fill(template: &str, room: &str, participant: &str, track: &str) -> String {
        template
            .replace("{room}", &segment(room))
            .replace("{participant}", &segment(participant))
            .replace("{track}", &segment(track))
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters.
    pub fn segment(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// Longest room, participant or track id: a room is `<namespace>.<meeting>`, up to
    /// 63 + 1 + 253 bytes.
    pub const MAX_ID_BYTES: usize = 320;

    /// Whether `id` may name a room, participant or track: 1 to [`MAX_ID_BYTES`] bytes, no
    /// control characters, and not `.` or `..` (path segments URL parsers would resolve).
    pub fn check_id(what: &str, id: &str) -> Result<(), String> {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(format!("a {what} id has 1 to {MAX_ID_BYTES} bytes; this one has {}", id.len()));
        }
        if id == "." || id == ".." {
            return Err(format!("`{id}` is not a {what} id"));
        }
        if id.chars().any(char::is_control) {
            return Err(format!("a {what} id has no control characters"));
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ids_stay_inside_their_segment() {
            assert_eq!(fill(TRACK, "r", "p-1", "cam"), "/v1/rooms/r/participants/p-1/tracks/cam");
            assert_eq!(
                fill(TRACK, "r", "p", "../../../drain?x#y"),
                "/v1/rooms/r/participants/p/tracks/..%2F..%2F..%2Fdrain%3Fx%23y"
            );
            assert_eq!(segment("{8c2b}% é"), "%7B8c2b%7D%25%20%C3%A9");
        }

        #[test]
        fn ids_are_bounded_and_never_dot_segments() {
            assert!(check_id("track", "{8c2b-44}").is_ok());
            assert!(check_id("track", &"x".repeat(MAX_ID_BYTES)).is_ok());
            for bad in [String::new(), ".".into(), "..".into(), "a\nb".into(), "x".repeat(MAX_ID_BYTES + 1)] {
                assert!(check_id("track", &bad).is_err(), "{bad:?}");
            }
        }
    }
}

pub mod auth {
    //! How the pool's credential reaches the SFU and its callers: the environment the
    //! operator gives SFU pods, signaling pods and recorder Jobs (from the namespace's
    //! Secret `switchboard-sfu-api`, key `token`).

    /// The credential itself.
    pub const TOKEN_ENV: &str = "SWITCHBOARD_SFU_API_TOKEN";
    /// A file holding the credential (a mounted Secret), read when `TOKEN_ENV` is unset.
    pub const TOKEN_FILE_ENV: &str = "SWITCHBOARD_SFU_API_TOKEN_FILE";
    /// `true` lets an SFU start without a credential and serve everyone: local runs only.
    pub const INSECURE_ENV: &str = "SWITCHBOARD_SFU_API_INSECURE";
    /// The scheme of the `Authorization` header.
    pub const SCHEME: &str = "Bearer";
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ParticipantKind {
    #[default]
    Client,
    /// Another SFU carrying the same meeting.
    Relay,
    /// Subscribes without being announced: the recorder.
    Hidden,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Camera,
    Microphone,
    ScreenShare,
    ScreenShareAudio,
}

/// A track the client is about to publish, keyed by the track id in its SDP (`msid`).
///
/// The SFU forwards only declared tracks: an incoming track whose id was not declared
/// (on the join or a later publisher offer), or whose kind is not its source's (audio
/// for `Microphone`/`ScreenShareAudio`, video for `Camera`/`ScreenShare`), is dropped.
/// Relays (participants of kind `Relay`) are exempt: their tracks were checked where
/// they were published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrackDescription {
    pub id: String,
    pub source: Source,
    /// For relays: the participant who published the track on the other SFU. Only a
    /// relay may set it (`400 badRequest` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Muted from the start: nothing of it is forwarded until it is unmuted
    /// (`PUT .../tracks/{track}`). Only the first declaration of a track counts; later
    /// mutes and unmutes go through that call.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
}

impl TrackDescription {
    /// An unmuted track of a participant (no origin).
    pub fn new(id: impl Into<String>, source: Source) -> Self {
        Self { id: id.into(), source, origin: None, muted: false }
    }
}

/// `POST /v1/rooms/{room}/participants`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub participant_id: String,
    #[serde(default)]
    pub kind: ParticipantKind,
    /// Subscribe to every track in the room, now and later (default true).
    #[serde(default = "yes")]
    pub auto_subscribe: bool,
    /// Whether the participant may publish (default true). With `false` (a viewer, a
    /// webinar's audience) the SFU refuses an `offer` or `tracks` on the join and every
    /// later publisher offer, `403 publishNotAllowed`. The default is true for callers
    /// that predate the field; it admits no undeclared media, since only the `tracks`
    /// declared are ever forwarded.
    #[serde(default = "yes")]
    pub publish: bool,
    /// The publisher connection's offer; absent for receive-only participants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<String>,
    /// The tracks the participant may publish; nothing else it sends is forwarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracks: Vec<TrackDescription>,
}

fn yes() -> bool {
    true
}

/// `POST .../publisher/offer`: renegotiation (new tracks, ICE restart).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OfferRequest {
    pub sdp: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracks: Vec<TrackDescription>,
}

/// The publisher connection's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnswerResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// `POST .../subscriber/answer`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SdpBody {
    pub sdp: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ConnectionRole {
    Publisher,
    Subscriber,
}

/// A trickled ICE candidate, in either direction. `candidate` is the SDP attribute
/// value (`candidate:...`); an empty string means end of candidates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub target: ConnectionRole,
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mline_index: Option<u16>,
}

/// `PUT .../tracks/{track}`: the publisher (or a host, through signaling) mutes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MuteRequest {
    pub muted: bool,
}

/// `PUT .../subscriptions/{track}`: subscribe (or change preferences).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionRequest {
    /// Highest simulcast layer, 0 = lowest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_layer: Option<u8>,
    /// Highest picture height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_height: Option<u16>,
    /// Forward no video for now (the subscriber does not show it); the subscription
    /// stays, and resumes at the next keyframe when this is false again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// `POST /v1/rooms/{room}/relay`: this SFU joins `origin` as an edge of the room.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelayRequest {
    /// The origin SFU's internal API, e.g. `http://10.0.3.17:7880`.
    pub origin: String,
}

/// Something the SFU tells a participant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Event {
    /// Answer this with `POST .../subscriber/answer`.
    SubscriberOffer {
        sdp: String,
    },
    Candidate(Candidate),
    ParticipantJoined {
        participant: String,
        kind: ParticipantKind,
    },
    ParticipantLeft {
        participant: String,
    },
    TrackPublished {
        participant: String,
        track: String,
        kind: MediaKind,
        codec: String,
        source: Source,
    },
    TrackUnpublished {
        participant: String,
        track: String,
    },
    TrackMuted {
        participant: String,
        track: String,
        muted: bool,
    },
    ActiveSpeaker {
        participant: String,
    },
    LayerChanged {
        track: String,
        layer: u8,
        rid: String,
    },
    /// To a publisher: send only these simulcast layers (RIDs) of `track`; nobody may
    /// receive the others now. A client sets the other encodings `active: false`.
    LayersWanted {
        track: String,
        rids: Vec<String>,
    },
    /// The SFU is draining: move when told (signaling follows the Meeting's migrations).
    Draining,
    /// The room was closed or the participant removed; stop polling.
    Closed {
        reason: String,
    },
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum MediaKind {
    Audio,
    Video,
}

/// `GET .../events?after=N&waitMs=M`: events with sequence numbers above `after`,
/// waiting up to `waitMs` for the first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventsQuery {
    #[serde(default)]
    pub after: u64,
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SequencedEvent {
    pub seq: u64,
    pub event: Event,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EventsResponse {
    pub events: Vec<SequencedEvent>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrackStatus {
    pub id: String,
    pub participant: String,
    pub kind: MediaKind,
    pub source: Source,
    pub muted: bool,
}

/// How a room delivers its voices.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum RoomAudio {
    /// Each listener receives the voices themselves (the loudest few in a large room).
    #[default]
    Routed,
    /// Each client receives one stream the SFU mixes from the loudest voices, without
    /// its own; relays and the recorder still receive every voice.
    Mixed,
}

/// `PUT /v1/rooms/{room}`: opens the room (idempotent). A room's audio is set when it
/// opens (by this call or a first join, which opens it routed); asking an open room
/// for other audio is refused (409).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoomRequest {
    #[serde(default)]
    pub audio: RoomAudio,
}

/// `GET /v1/rooms/{room}`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoomStatus {
    pub room: String,
    pub participants: Vec<String>,
    pub tracks: Vec<TrackStatus>,
    pub subscriptions: usize,
    #[serde(default)]
    pub audio: RoomAudio,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Starting,
    Ready,
    Draining,
    Drained,
}

/// `GET /v1/status` (also the answer to `POST /v1/drain`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub state: NodeState,
    pub rooms: usize,
    pub participants: usize,
    pub published_tracks: usize,
    pub subscriptions: usize,
    /// The UDP address media arrives on.
    pub media_address: String,
}

/// Every error the API returns: a machine-readable code and a sentence for people.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    BadRequest,
    /// The pool's credential is missing or wrong (HTTP 401).
    Unauthorized,
    InvalidSdp,
    UnknownRoom,
    UnknownParticipant,
    UnknownTrack,
    AlreadyJoined,
    /// The participant joined with `publish: false` and offered media or declared
    /// tracks (HTTP 403).
    PublishNotAllowed,
    /// The room is open with other settings than asked (HTTP 409).
    RoomConflict,
    Draining,
    NotReady,
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::InvalidSdp => 400,
            Self::Unauthorized => 401,
            Self::PublishNotAllowed => 403,
            Self::UnknownRoom | Self::UnknownParticipant | Self::UnknownTrack => 404,
            Self::AlreadyJoined | Self::RoomConflict => 409,
            Self::Draining | Self::NotReady => 503,
            Self::Internal => 500,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_and_camel_cased() {
        let e = Event::TrackPublished {
            participant: "alice".into(),
            track: "cam".into(),
            kind: MediaKind::Video,
            codec: "video/VP8".into(),
            source: Source::Camera,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"type": "trackPublished", "participant": "alice", "track": "cam",
                               "kind": "video", "codec": "video/VP8", "source": "Camera"})
        );
        let c = Event::Candidate(Candidate {
            target: ConnectionRole::Subscriber,
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
            sdp_mid: None,
            sdp_mline_index: Some(0),
        });
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["type"], "candidate");
        assert_eq!(json["target"], "subscriber");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), c);
    }

    #[test]
    fn join_defaults_to_an_auto_subscribing_client() {
        let j: JoinRequest = serde_json::from_str(r#"{"participantId": "p1"}"#).unwrap();
        assert_eq!(j.kind, ParticipantKind::Client);
        assert!(j.auto_subscribe);
        assert!(j.publish, "callers that predate `publish` may still publish declared tracks");
        assert!(j.offer.is_none());
    }

    #[test]
    fn a_viewer_join_and_a_muted_declaration_on_the_wire() {
        let j: JoinRequest = serde_json::from_value(serde_json::json!({
            "participantId": "v", "publish": false,
            "tracks": [{"id": "cam", "source": "Camera", "muted": true}, {"id": "mic", "source": "Microphone"}]
        }))
        .unwrap();
        assert!(!j.publish);
        assert!(j.tracks[0].muted && !j.tracks[1].muted);
        assert_eq!(
            serde_json::to_value(TrackDescription::new("mic", Source::Microphone)).unwrap(),
            serde_json::json!({"id": "mic", "source": "Microphone"}),
            "an unmuted declaration is written as before"
        );
        assert_eq!(ErrorCode::PublishNotAllowed.http_status(), 403);
        assert_eq!(serde_json::to_value(ErrorCode::PublishNotAllowed).unwrap(), "publishNotAllowed");
    }

    #[test]
    fn paths_fill_in() {
        assert_eq!(paths::fill(paths::SUBSCRIPTION, "r", "p", "t"), "/v1/rooms/r/participants/p/subscriptions/t");
        assert_eq!(ErrorCode::Draining.http_status(), 503);
    }

    #[test]
    fn an_unauthorized_call_is_a_401_with_a_camel_cased_code() {
        assert_eq!(ErrorCode::Unauthorized.http_status(), 401);
        let e = ApiError { code: ErrorCode::Unauthorized, message: "no credential".into() };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"code": "unauthorized", "message": "no credential"})
        );
        assert!(paths::OPEN.contains(&paths::READYZ) && !paths::OPEN.contains(&paths::STATUS));
    }
}
