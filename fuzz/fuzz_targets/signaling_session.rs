//! Random frame sequences through the signaling parser and the session gate
//! (`signaling_proto::session`), checking its rules as invariants on a model of the
//! connection: nothing before `join` but `join`/`ping`; nothing in the waiting room but
//! `ping`/`leave`; nothing after `leave`; an admitted participant gets through only what
//! its role and the meeting's permissions allow; a host's mute is lifted only with
//! `unmute_self`.
//!
//! Input: byte 0 picks the role, byte 1 the permission overrides, byte 2 whether the
//! meeting has a waiting room; the rest is split at `0xFF` into events, each led by an
//! op byte: 0 a host admits the connection, 1 a host mutes it, else a client frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_signaling_proto::session::{Need, Phase, Step, gate, need, unmute_allowed};
use switchboard_signaling_proto::{ClientMessage, MutedBy, Permission, Permissions, Role, parse_client};

const ROLES: [Role; 4] = [Role::Host, Role::CoHost, Role::Participant, Role::Viewer];

fn permissions(role: Role, bits: u8) -> Permissions {
    // Bits 0-5 flip each permission for the role: allow when set on the low nibble pass,
    // deny on the high one, so every combination of overrides is reachable.
    Permission::ALL.iter().enumerate().fold(Permissions::default(), |p, (i, perm)| {
        if bits & (1 << i) == 0 {
            return p;
        }
        if i % 2 == 0 { p.with_override(role, vec![*perm], vec![]) } else { p.with_override(role, vec![], vec![*perm]) }
    })
}

fuzz_target!(|data: &[u8]| {
    let [role, bits, waiting_room, rest @ ..] = data else { return };
    let role = ROLES[*role as usize % ROLES.len()];
    let perms = permissions(role, *bits);
    let waiting_room = waiting_room % 2 == 1;
    let me = "me";
    let mut phase = Phase::Connected;
    let mut audio_muted_by: Option<MutedBy> = None;

    for event in rest.split(|b| *b == 0xFF) {
        let [op, frame @ ..] = event else { continue };
        match op {
            0 => {
                if let Phase::Waiting { role } = phase {
                    phase = Phase::Admitted { role };
                }
                continue;
            }
            1 => {
                audio_muted_by = Some(MutedBy::Host);
                continue;
            }
            _ => {}
        }
        let Ok((_, msg)) = parse_client(frame) else { continue };
        let verdict = gate(phase, &msg, me, || Ok(perms.clone()));
        match phase {
            Phase::Connected => match (&msg, &verdict) {
                (ClientMessage::Join(_), Ok(Step::Join)) | (ClientMessage::Ping, Ok(Step::Pong)) => {}
                (ClientMessage::Join(_) | ClientMessage::Ping, v) => panic!("{msg:?} before join: {v:?}"),
                (_, v) => assert!(v.is_err(), "{msg:?} let through before join"),
            },
            Phase::Waiting { .. } => match (&msg, &verdict) {
                (ClientMessage::Ping, Ok(Step::Pong)) | (ClientMessage::Leave, Ok(Step::Leave)) => {}
                (ClientMessage::Ping | ClientMessage::Leave, v) => panic!("{msg:?} in the waiting room: {v:?}"),
                (_, v) => assert!(v.is_err(), "{msg:?} let through in the waiting room"),
            },
            Phase::Closed => assert!(verdict.is_err(), "{msg:?} let through after leave"),
            Phase::Admitted { role } => {
                if verdict.is_ok() {
                    match need(&msg, me) {
                        Need::Permission(p) => assert!(perms.allows(role, p), "{msg:?}: {role:?} lacks {p:?}"),
                        Need::Admitter => assert!(role.admits(), "{role:?} admitted someone"),
                        Need::Publisher { screen } => {
                            assert!(role.publishes(), "a {role:?} published");
                            assert!(!screen || perms.allows(role, Permission::ShareScreen), "screen without the right");
                        }
                        Need::Nothing => {}
                    }
                    // Unmuting oneself after a host's mute needs `unmute_self`.
                    let unmutes = match &msg {
                        ClientMessage::Mute(m) => m.participant_id == me && !m.muted,
                        ClientMessage::ParticipantUpdate(u) => u.audio_muted == Some(false),
                        _ => false,
                    };
                    if unmutes {
                        let allowed = unmute_allowed(role, audio_muted_by, &perms, "microphone").is_ok();
                        let expected =
                            audio_muted_by != Some(MutedBy::Host) || perms.allows(role, Permission::UnmuteSelf);
                        assert_eq!(allowed, expected, "unmute by {role:?} after {audio_muted_by:?}");
                        if allowed {
                            audio_muted_by = None;
                        }
                    }
                } else {
                    assert!(!matches!(msg, ClientMessage::Ping | ClientMessage::Leave), "{msg:?} refused");
                }
            }
        }
        // The model moves on as the server would.
        phase = match (phase, verdict) {
            (Phase::Connected, Ok(Step::Join)) if waiting_room && !role.skips_waiting_room() => Phase::Waiting { role },
            (Phase::Connected, Ok(Step::Join)) => Phase::Admitted { role },
            (_, Ok(Step::Leave)) => Phase::Closed,
            (p, _) => p,
        };
    }
});
