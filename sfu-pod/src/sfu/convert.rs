//! The internal API's types to and from the core's, and the API's errors: every
//! conversion between `switchboard-sfu-api` and `switchboard-sfu-core` is here.

use switchboard_sfu_api::{self as api, ApiError, ErrorCode, Event, MediaKind};
use switchboard_sfu_core::node::{NodeState, Refusal};
use switchboard_sfu_core::{Codec, Declaration, ParticipantKind, RoomError, RoomEvent, Source};
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

pub type ApiResult<T> = Result<T, ApiError>;

pub fn error(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError { code, message: message.into() }
}

pub(super) fn room_error(e: RoomError) -> ApiError {
    let code = match e {
        RoomError::AlreadyJoined(_) => ErrorCode::AlreadyJoined,
        RoomError::UnknownParticipant(_) => ErrorCode::UnknownParticipant,
        RoomError::UnknownTrack(_) | RoomError::OwnTrack(_) => ErrorCode::UnknownTrack,
        RoomError::TrackExists(_) | RoomError::Redeclared(_) | RoomError::NotForSubscriber(_) => ErrorCode::BadRequest,
        RoomError::PublishNotAllowed(_) | RoomError::NotDeclared(_) | RoomError::KindMismatch(..) => {
            ErrorCode::PublishNotAllowed
        }
        // Handles are the driver's own: an unknown one is a bug, not a bad request.
        RoomError::UnknownHandle(_) => ErrorCode::Internal,
    };
    error(code, e.to_string())
}

pub(super) fn internal(e: impl std::fmt::Display) -> ApiError {
    error(ErrorCode::Internal, e.to_string())
}

pub(super) fn parse_offer(sdp: &str) -> ApiResult<RTCSessionDescription> {
    let desc = RTCSessionDescription::offer(sdp.to_owned())
        .map_err(|e| error(ErrorCode::InvalidSdp, format!("the offer is not valid SDP: {e}")))?;
    if !sdp.contains("m=") {
        return Err(error(ErrorCode::InvalidSdp, "the offer has no media sections"));
    }
    Ok(desc)
}

/// Room and participant ids: they appear in URLs, logs and metrics, so they are short
/// and need no escaping.
pub(super) fn validate_name(what: &str, name: &str) -> ApiResult<()> {
    let ok =
        !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(error(ErrorCode::BadRequest, format!("{what} ids are 1-128 characters of [A-Za-z0-9-_.:], got {name:?}")))
    }
}

/// The tracks a participant declares, for the core: ids of 1-128 bytes, each declared
/// once per request (or again with the same source), an origin only from a relay (a
/// client naming one would show its track as someone else's).
pub(super) fn declarations(kind: ParticipantKind, tracks: &[api::TrackDescription]) -> ApiResult<Vec<Declaration>> {
    let mut out: Vec<Declaration> = Vec::with_capacity(tracks.len());
    for t in tracks {
        if t.id.is_empty() || t.id.len() > 128 {
            return Err(error(ErrorCode::BadRequest, "a track id is 1-128 bytes"));
        }
        if t.origin.is_some() && kind != ParticipantKind::Relay {
            return Err(error(ErrorCode::BadRequest, format!("track {:?}: only a relay declares an origin", t.id)));
        }
        let source = from_api_source(t.source);
        match out.iter().find(|d| d.id == t.id) {
            Some(d) if d.source != source => {
                return Err(error(ErrorCode::BadRequest, format!("track {:?} is declared twice", t.id)));
            }
            Some(_) => {}
            None => out.push(Declaration { id: t.id.clone(), source, muted: t.muted }),
        }
    }
    Ok(out)
}

pub fn codec_mime(codec: Codec) -> &'static str {
    match codec {
        Codec::Opus => "audio/opus",
        Codec::Vp8 => "video/VP8",
        Codec::Vp9 => "video/VP9",
        Codec::H264 => "video/H264",
    }
}

pub(super) fn media_kind(codec: Codec) -> MediaKind {
    if codec.is_video() { MediaKind::Video } else { MediaKind::Audio }
}

pub fn to_api_source(s: Source) -> api::Source {
    match s {
        Source::Camera => api::Source::Camera,
        Source::Microphone => api::Source::Microphone,
        Source::ScreenShare => api::Source::ScreenShare,
        Source::ScreenShareAudio => api::Source::ScreenShareAudio,
    }
}

pub(super) fn from_api_source(s: api::Source) -> Source {
    match s {
        api::Source::Camera => Source::Camera,
        api::Source::Microphone => Source::Microphone,
        api::Source::ScreenShare => Source::ScreenShare,
        api::Source::ScreenShareAudio => Source::ScreenShareAudio,
    }
}

pub(super) fn to_core_kind(k: api::ParticipantKind) -> ParticipantKind {
    match k {
        api::ParticipantKind::Client => ParticipantKind::Client,
        api::ParticipantKind::Relay => ParticipantKind::Relay,
        api::ParticipantKind::Hidden => ParticipantKind::Hidden,
    }
}

fn to_api_kind(k: ParticipantKind) -> api::ParticipantKind {
    match k {
        ParticipantKind::Client => api::ParticipantKind::Client,
        ParticipantKind::Relay => api::ParticipantKind::Relay,
        // Never announced; shown as hidden should an event name it.
        ParticipantKind::Hidden | ParticipantKind::Mixer => api::ParticipantKind::Hidden,
    }
}

pub(super) fn to_api_event(e: RoomEvent) -> Event {
    match e {
        RoomEvent::ParticipantJoined { participant, kind } => {
            Event::ParticipantJoined { participant, kind: to_api_kind(kind) }
        }
        RoomEvent::ParticipantLeft { participant } => Event::ParticipantLeft { participant },
        RoomEvent::TrackPublished { participant, track, codec, source } => Event::TrackPublished {
            participant,
            track,
            kind: media_kind(codec),
            codec: codec_mime(codec).into(),
            source: to_api_source(source),
        },
        RoomEvent::TrackUnpublished { participant, track } => Event::TrackUnpublished { participant, track },
        RoomEvent::TrackMuted { participant, track, muted } => Event::TrackMuted { participant, track, muted },
        RoomEvent::ActiveSpeaker { participant } => Event::ActiveSpeaker { participant },
        RoomEvent::LayerChanged { track, layer, rid } => Event::LayerChanged { track, layer, rid },
        RoomEvent::LayersWanted { track, rids } => Event::LayersWanted { track, rids },
    }
}

pub(super) fn to_api_node_state(s: NodeState) -> api::NodeState {
    match s {
        NodeState::Starting => api::NodeState::Starting,
        NodeState::Ready => api::NodeState::Ready,
        NodeState::Draining { .. } => api::NodeState::Draining,
        NodeState::Drained { .. } => api::NodeState::Drained,
    }
}

pub(super) fn refusal_error(r: Refusal) -> ApiError {
    match r {
        Refusal::Draining => error(ErrorCode::Draining, r.to_string()),
        Refusal::NotReady => error(ErrorCode::NotReady, r.to_string()),
    }
}
