//! What a connection may do at each point of its session (pure: no IO).
//!
//! A connection goes through [`Phase`]s: `Connected` (no session yet), `Waiting` (joined,
//! in the waiting room), `Admitted`, `Closed`. [`gate`] decides, before the server
//! touches Redis or an SFU, whether a message may be acted on in the phase it arrives
//! in and with the sender's role and the meeting's permissions:
//!
//! * before `join` only `join` and `ping` are heard;
//! * in the waiting room only `ping` and `leave` (a second `join` is refused): a waiting
//!   guest can neither speak nor publish nor learn anything of the meeting;
//! * once admitted, each message needs what its [`Need`] says: a permission
//!   ([`Permissions::allows`]), running the waiting room (hosts and co-hosts), or
//!   publishing (never a viewer);
//! * after `leave` (or a close) nothing.
//!
//! What depends on state the gate does not hold is decided by the pure helpers next to
//! it, with the current state read by the caller: lifting a host's mute
//! ([`unmute_allowed`]). The server runs every message through both; a fuzz target
//! (`fuzz/fuzz_targets/signaling_session.rs`) drives random frame sequences through the
//! parser and this machine and checks the rules above as invariants.

use crate::{ClientMessage, ErrorCode, MutedBy, Permission, Permissions, ProtoError, Role, Source};

/// Where a connection is in its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connected, no `join` yet.
    Connected,
    /// Joined; a host has not admitted it yet.
    Waiting { role: Role },
    /// Joined and admitted.
    Admitted { role: Role },
    /// Left, removed or closed: nothing more is acted on.
    Closed,
}

/// What the server does with a message the gate let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Check the session token and join.
    Join,
    /// Answer `pong`.
    Pong,
    /// Leave the meeting and close.
    Leave,
    /// Carry the message out (it passed every check the gate makes).
    Act,
}

/// What an admitted participant needs for a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Nothing,
    Permission(Permission),
    /// Hosts and co-hosts run the waiting room.
    Admitter,
    /// Sending media: every role but viewer; screen-share tracks also need
    /// [`Permission::ShareScreen`].
    Publisher {
        screen: bool,
    },
}

/// What `msg` needs from an admitted participant whose id is `me`.
pub fn need(msg: &ClientMessage, me: &str) -> Need {
    match msg {
        ClientMessage::Chat(_) => Need::Permission(Permission::SendChat),
        ClientMessage::Mute(m) if m.participant_id != me => Need::Permission(Permission::MuteOthers),
        ClientMessage::Remove(_) => Need::Permission(Permission::RemoveParticipant),
        // Who may start a recording may stop one.
        ClientMessage::StartRecording | ClientMessage::StopRecording => Need::Permission(Permission::StartRecording),
        ClientMessage::EndMeeting => Need::Permission(Permission::EndMeeting),
        ClientMessage::ParticipantUpdate(u) if u.screen_sharing == Some(true) => {
            Need::Permission(Permission::ShareScreen)
        }
        ClientMessage::Admit(_) => Need::Admitter,
        // Roles run the meeting; making or unmaking a co-host is the host's alone (the
        // server checks that against the target's role).
        ClientMessage::SetRole(_) => Need::Admitter,
        // The audience is listed to those who run the meeting only.
        ClientMessage::Participants(_) => Need::Admitter,
        // Breakout rooms are run by those who run the meeting; anyone in a room may ask
        // for help (the server refuses it outside a room).
        ClientMessage::OpenBreakouts(_)
        | ClientMessage::BreakoutMove(_)
        | ClientMessage::BreakoutBroadcast(_)
        | ClientMessage::CloseBreakouts(_) => Need::Admitter,
        // Media keys are sent by those who send media.
        ClientMessage::E2eeKey(_) => Need::Publisher { screen: false },
        // Lowering someone else's hand runs the meeting, as admitting does.
        ClientMessage::HandRaise(h) if h.all || h.participant_id.as_deref().is_some_and(|p| p != me) => Need::Admitter,
        // An offer with an SDP or tracks publishes; an empty one joins the SFU receive-only.
        ClientMessage::Offer(o) if o.sdp.is_some() || !o.tracks.is_empty() => Need::Publisher {
            screen: o.tracks.iter().any(|t| matches!(t.source, Source::ScreenShare | Source::ScreenShareAudio)),
        },
        _ => Need::Nothing,
    }
}

fn refuse(code: ErrorCode, reason: impl Into<String>) -> ProtoError {
    ProtoError::new(code, reason)
}

/// Whether `msg` may be acted on in `phase`, by participant `me`, under the meeting's
/// `permissions` (asked for only when a check needs them: reading them may fail when
/// the meeting is gone, and `ping` must still be answered then).
pub fn gate(
    phase: Phase,
    msg: &ClientMessage,
    me: &str,
    permissions: impl FnOnce() -> Result<Permissions, ProtoError>,
) -> Result<Step, ProtoError> {
    let role = match (phase, msg) {
        (Phase::Closed, _) => return Err(refuse(ErrorCode::Unauthenticated, "this session has ended")),
        (_, ClientMessage::Ping) => return Ok(Step::Pong),
        (Phase::Connected, ClientMessage::Join(_)) => return Ok(Step::Join),
        (Phase::Connected, _) => {
            return Err(refuse(ErrorCode::Unauthenticated, "send `join` with your session token first"));
        }
        (_, ClientMessage::Join(_)) => {
            return Err(refuse(ErrorCode::InvalidPayload, "this connection has already joined"));
        }
        (_, ClientMessage::Leave) => return Ok(Step::Leave),
        (Phase::Waiting { .. }, _) => return Err(refuse(ErrorCode::NotAdmitted, "waiting for a host to admit you")),
        (Phase::Admitted { role }, _) => role,
    };
    match need(msg, me) {
        Need::Nothing => Ok(Step::Act),
        Need::Admitter if role.admits() => Ok(Step::Act),
        Need::Admitter => {
            Err(refuse(ErrorCode::Forbidden, format!("only hosts and co-hosts may send `{}`", msg.type_name())))
        }
        Need::Publisher { .. } if !role.publishes() => Err(refuse(
            ErrorCode::Forbidden,
            format!("a {role:?} receives only (viewers, and a Webinar's audience): send `offer` without sdp or tracks"),
        )),
        Need::Publisher { screen: false } => Ok(Step::Act),
        Need::Publisher { screen: true } => allowed(role, Permission::ShareScreen, permissions),
        Need::Permission(p) => allowed(role, p, permissions),
    }
}

fn allowed(
    role: Role,
    p: Permission,
    permissions: impl FnOnce() -> Result<Permissions, ProtoError>,
) -> Result<Step, ProtoError> {
    if permissions()?.allows(role, p) {
        Ok(Step::Act)
    } else {
        Err(refuse(ErrorCode::Forbidden, format!("a {role:?} may not {}", verb(p))))
    }
}

/// Whether a participant may turn its own microphone or camera back on: always, unless a
/// host (or the meeting's mute on entry) turned it off (`muted_by: Host`); then only
/// with [`Permission::UnmuteSelf`]. `what` names the device for the error.
pub fn unmute_allowed(
    role: Role,
    muted_by: Option<MutedBy>,
    permissions: &Permissions,
    what: &str,
) -> Result<(), ProtoError> {
    if muted_by != Some(MutedBy::Host) || permissions.allows(role, Permission::UnmuteSelf) {
        return Ok(());
    }
    Err(refuse(
        ErrorCode::Forbidden,
        format!("a host turned your {what} off; only a host or co-host can let you turn it on"),
    ))
}

/// How an error message words a permission.
pub fn verb(p: Permission) -> &'static str {
    match p {
        Permission::MuteOthers => "mute others",
        Permission::RemoveParticipant => "remove participants",
        Permission::StartRecording => "start a recording",
        Permission::ShareScreen => "share their screen",
        Permission::SendChat => "send chat messages",
        Permission::UnmuteSelf => "unmute themselves after a host muted them",
        Permission::EndMeeting => "end the meeting for everyone",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_client;

    fn msg(json: &str) -> ClientMessage {
        parse_client(json.as_bytes()).expect("a valid frame").1
    }

    fn defaults() -> Result<Permissions, ProtoError> {
        Ok(Permissions::default())
    }

    const CHAT: &str = r#"{"type":"chat","payload":{"text":"hi"}}"#;
    const PROMOTE_BOB: &str = r#"{"type":"set-role","payload":{"participantId":"bob","role":"panelist"}}"#;
    const LOWER_ALL: &str = r#"{"type":"hand-raise","payload":{"raised":false,"all":true}}"#;
    const PAGE: &str = r#"{"type":"participants","payload":{"limit":10}}"#;
    const PROMOTE_ME: &str = r#"{"type":"set-role","payload":{"participantId":"me","role":"participant"}}"#;
    const OFFER: &str = r#"{"type":"offer","payload":{"sdp":"v=0"}}"#;
    const RECEIVE_ONLY: &str = r#"{"type":"offer","payload":{}}"#;
    const TRACKS_ONLY: &str = r#"{"type":"offer","payload":{"tracks":[{"id":"m","source":"Microphone"}]}}"#;
    const FRESH: &str = r#"{"type":"offer","payload":{"sdp":"v=0","fresh":true}}"#;
    const FRESH_RECEIVE_ONLY: &str = r#"{"type":"offer","payload":{"fresh":true}}"#;
    const SCREEN: &str = r#"{"type":"offer","payload":{"tracks":[{"id":"s","source":"ScreenShare"}]}}"#;
    const MUTE_BOB: &str = r#"{"type":"mute","payload":{"participantId":"bob"}}"#;
    const MUTE_ME: &str = r#"{"type":"mute","payload":{"participantId":"me","muted":false}}"#;
    const ADMIT: &str = r#"{"type":"admit","payload":{"participantId":"g"}}"#;
    const JOIN: &str = r#"{"type":"join","payload":{"token":"t"}}"#;
    const HAND_UP: &str = r#"{"type":"hand-raise","payload":{"raised":true}}"#;
    const LOWER_BOB: &str = r#"{"type":"hand-raise","payload":{"raised":false,"participantId":"bob"}}"#;
    const LOWER_MINE: &str = r#"{"type":"hand-raise","payload":{"raised":false,"participantId":"me"}}"#;
    const SUBSCRIPTION: &str = r#"{"type":"subscription","payload":{"track":"cam","paused":true}}"#;
    const END: &str = r#"{"type":"end-meeting"}"#;

    /// (phase, frame, expected step or error code)
    #[test]
    fn each_phase_hears_only_what_it_may() {
        let admitted = |role| Phase::Admitted { role };
        let waiting = Phase::Waiting { role: Role::Participant };
        let cases: Vec<(Phase, &str, Result<Step, ErrorCode>)> = vec![
            (Phase::Connected, JOIN, Ok(Step::Join)),
            (Phase::Connected, r#"{"type":"ping"}"#, Ok(Step::Pong)),
            (Phase::Connected, CHAT, Err(ErrorCode::Unauthenticated)),
            (Phase::Connected, r#"{"type":"leave"}"#, Err(ErrorCode::Unauthenticated)),
            (waiting, JOIN, Err(ErrorCode::InvalidPayload)),
            (waiting, r#"{"type":"ping"}"#, Ok(Step::Pong)),
            (waiting, r#"{"type":"leave"}"#, Ok(Step::Leave)),
            (waiting, CHAT, Err(ErrorCode::NotAdmitted)),
            (waiting, RECEIVE_ONLY, Err(ErrorCode::NotAdmitted)),
            (admitted(Role::Participant), CHAT, Ok(Step::Act)),
            (admitted(Role::Participant), OFFER, Ok(Step::Act)),
            (admitted(Role::Participant), MUTE_BOB, Err(ErrorCode::Forbidden)),
            (admitted(Role::Participant), MUTE_ME, Ok(Step::Act)),
            (admitted(Role::Participant), ADMIT, Err(ErrorCode::Forbidden)),
            (admitted(Role::Viewer), OFFER, Err(ErrorCode::Forbidden)),
            (admitted(Role::Viewer), RECEIVE_ONLY, Ok(Step::Act)),
            (admitted(Role::Viewer), TRACKS_ONLY, Err(ErrorCode::Forbidden)),
            // `fresh` replaces the caller's own connections: it grants nothing more.
            (admitted(Role::Participant), FRESH, Ok(Step::Act)),
            (admitted(Role::Viewer), FRESH, Err(ErrorCode::Forbidden)),
            (admitted(Role::Viewer), FRESH_RECEIVE_ONLY, Ok(Step::Act)),
            (waiting, FRESH, Err(ErrorCode::NotAdmitted)),
            (admitted(Role::Participant), SCREEN, Ok(Step::Act)),
            (admitted(Role::Viewer), SCREEN, Err(ErrorCode::Forbidden)),
            (admitted(Role::CoHost), ADMIT, Ok(Step::Act)),
            (admitted(Role::Host), END, Ok(Step::Act)),
            (admitted(Role::CoHost), END, Err(ErrorCode::Forbidden)),
            (admitted(Role::Participant), END, Err(ErrorCode::Forbidden)),
            (waiting, END, Err(ErrorCode::NotAdmitted)),
            (admitted(Role::CoHost), MUTE_BOB, Ok(Step::Act)),
            (admitted(Role::Viewer), HAND_UP, Ok(Step::Act)),
            (admitted(Role::Participant), LOWER_MINE, Ok(Step::Act)),
            (admitted(Role::Participant), LOWER_BOB, Err(ErrorCode::Forbidden)),
            (admitted(Role::CoHost), LOWER_BOB, Ok(Step::Act)),
            (admitted(Role::CoHost), LOWER_ALL, Ok(Step::Act)),
            (admitted(Role::Participant), LOWER_ALL, Err(ErrorCode::Forbidden)),
            (admitted(Role::Viewer), LOWER_ALL, Err(ErrorCode::Forbidden)),
            (waiting, HAND_UP, Err(ErrorCode::NotAdmitted)),
            (admitted(Role::Viewer), SUBSCRIPTION, Ok(Step::Act)),
            (waiting, SUBSCRIPTION, Err(ErrorCode::NotAdmitted)),
            (admitted(Role::Host), PROMOTE_BOB, Ok(Step::Act)),
            (admitted(Role::CoHost), PAGE, Ok(Step::Act)),
            (admitted(Role::Participant), PAGE, Err(ErrorCode::Forbidden)),
            (admitted(Role::Viewer), PAGE, Err(ErrorCode::Forbidden)),
            (admitted(Role::CoHost), PROMOTE_BOB, Ok(Step::Act)),
            (admitted(Role::Participant), PROMOTE_BOB, Err(ErrorCode::Forbidden)),
            (admitted(Role::Viewer), PROMOTE_ME, Err(ErrorCode::Forbidden)),
            (waiting, PROMOTE_ME, Err(ErrorCode::NotAdmitted)),
            (Phase::Closed, r#"{"type":"ping"}"#, Err(ErrorCode::Unauthenticated)),
            (Phase::Closed, JOIN, Err(ErrorCode::Unauthenticated)),
        ];
        for (phase, frame, want) in cases {
            let got = gate(phase, &msg(frame), "me", defaults).map_err(|e| e.code);
            assert_eq!(got, want, "{phase:?} {frame}");
        }
    }

    #[test]
    fn the_meetings_permissions_are_read_only_when_a_check_needs_them() {
        let gone = || Err(ProtoError::new(ErrorCode::MeetingUnavailable, "gone"));
        let admitted = Phase::Admitted { role: Role::Participant };
        assert_eq!(gate(admitted, &msg(r#"{"type":"ping"}"#), "me", gone), Ok(Step::Pong));
        assert_eq!(gate(admitted, &msg(r#"{"type":"leave"}"#), "me", gone), Ok(Step::Leave));
        assert_eq!(gate(admitted, &msg(CHAT), "me", gone).map_err(|e| e.code), Err(ErrorCode::MeetingUnavailable));
        // An override reaches the decision.
        let no_chat =
            || Ok(Permissions::default().with_override(Role::Participant, vec![], vec![Permission::SendChat]));
        assert_eq!(gate(admitted, &msg(CHAT), "me", no_chat).map_err(|e| e.code), Err(ErrorCode::Forbidden));
        let no_screen =
            || Ok(Permissions::default().with_override(Role::Participant, vec![], vec![Permission::ShareScreen]));
        assert_eq!(gate(admitted, &msg(SCREEN), "me", no_screen).map_err(|e| e.code), Err(ErrorCode::Forbidden));
    }

    #[test]
    fn a_hosts_mute_is_lifted_only_with_unmute_self() {
        let p = Permissions::default();
        assert!(unmute_allowed(Role::Participant, Some(MutedBy::Host), &p, "microphone").is_err());
        assert!(unmute_allowed(Role::Participant, Some(MutedBy::Participant), &p, "microphone").is_ok());
        assert!(unmute_allowed(Role::Participant, None, &p, "camera").is_ok());
        assert!(unmute_allowed(Role::CoHost, Some(MutedBy::Host), &p, "microphone").is_ok());
        let granted = p.with_override(Role::Participant, vec![Permission::UnmuteSelf], vec![]);
        assert!(unmute_allowed(Role::Participant, Some(MutedBy::Host), &granted, "microphone").is_ok());
    }
}
