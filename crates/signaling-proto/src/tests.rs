use super::*;
use rand::{Rng, SeedableRng};

fn parse(s: &str) -> Result<ClientMessage, ProtoError> {
    parse_client(s.as_bytes()).map(|(_, m)| m)
}

#[test]
fn parses_each_client_type() {
    let cases = [
        r#"{"type":"join","payload":{"token":"t"}}"#,
        r#"{"type":"offer","payload":{"sdp":"v=0","tracks":[{"id":"cam","source":"Camera"}]}}"#,
        r#"{"type":"offer"}"#,
        r#"{"type":"answer","payload":{"sdp":"v=0"}}"#,
        r#"{"type":"candidate","payload":{"target":"publisher","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host"}}"#,
        r#"{"type":"ice-restart"}"#,
        r#"{"type":"leave"}"#,
        r#"{"type":"chat","payload":{"text":"hi"}}"#,
        r#"{"type":"participant-update","payload":{"audioMuted":true}}"#,
        r#"{"type":"mute","payload":{"participantId":"p1","kind":"video"}}"#,
        r#"{"type":"admit","payload":{"all":true}}"#,
        r#"{"type":"remove","payload":{"participantId":"p1"}}"#,
        r#"{"type":"reaction","payload":{"emoji":"👍"}}"#,
        r#"{"type":"hand-raise","payload":{"raised":true}}"#,
        r#"{"type":"subscription","payload":{"track":"cam","maxHeight":180}}"#,
        r#"{"type":"subscription","payload":{"track":"cam","paused":true}}"#,
        r#"{"type":"start-recording"}"#,
        r#"{"type":"end-meeting"}"#,
        r#"{"type":"offer","payload":{"fresh":true}}"#,
        r#"{"type":"set-role","payload":{"participantId":"p1","role":"co-host"}}"#,
        r#"{"type":"participants","payload":{"after":"p1","limit":50}}"#,
        r#"{"type":"participants"}"#,
        r#"{"type":"ping","id":"7"}"#,
        r#"{"type":"open-breakouts","payload":{"rooms":2,"seconds":60,"countdownSeconds":5}}"#,
        r#"{"type":"open-breakouts","payload":{"names":["Red","Blue"],"assignment":"manual","manual":{"p-1":1}}}"#,
        r#"{"type":"breakout-move","payload":{"participantId":"p-1","room":0}}"#,
        r#"{"type":"breakout-move","payload":{"participantId":"p-1"}}"#,
        r#"{"type":"breakout-broadcast","payload":{"text":"two minutes left"}}"#,
        r#"{"type":"close-breakouts","payload":{"countdownSeconds":0}}"#,
        r#"{"type":"close-breakouts"}"#,
        r#"{"type":"ask-for-help"}"#,
    ];
    for c in cases {
        let m = parse(c).unwrap_or_else(|e| panic!("{c}: {e}"));
        let ty: Envelope = serde_json::from_str(c).unwrap();
        assert_eq!(m.type_name(), ty.type_, "{c}");
    }
}

#[test]
fn bad_frames_get_named_errors_with_the_request_id() {
    let e = parse("{not json").unwrap_err();
    assert_eq!(e.code, ErrorCode::MalformedJson);
    let e = parse(r#"{"type":"teleport","id":"9"}"#).unwrap_err();
    assert_eq!((e.code, e.id.as_deref()), (ErrorCode::UnknownType, Some("9")));
    assert!(e.reason.contains("teleport"));
    let e = parse(r#"{"type":"chat","id":"3","payload":{"txt":"hi"}}"#).unwrap_err();
    assert_eq!((e.code, e.id.as_deref(), e.refused.as_deref()), (ErrorCode::InvalidPayload, Some("3"), Some("chat")));
    assert!(e.reason.contains("txt"), "{}", e.reason);
    let e = parse(r#"{"type":"chat","payload":{"text":""}}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPayload);
    let e = parse(r#"{"type":"admit","payload":{}}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPayload);
    let big = format!(r#"{{"type":"chat","payload":{{"text":"{}"}}}}"#, "x".repeat(MAX_FRAME_BYTES));
    assert_eq!(parse(&big).unwrap_err().code, ErrorCode::TooLarge);
    let e = parse(r#"{"type":"mute","payload":{"participantId":"p","kind":"smell"}}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPayload);
    let e = parse(r#"{"type":"offer","payload":{"fresh":"yes"}}"#).unwrap_err();
    assert_eq!((e.code, e.refused.as_deref()), (ErrorCode::InvalidPayload, Some("offer")));
    // The error serializes to an `error` envelope carrying the id.
    let env = parse(r#"{"type":"nope","id":"x"}"#).unwrap_err().envelope();
    assert_eq!(env.type_, "error");
    assert_eq!(env.id.as_deref(), Some("x"));
    assert_eq!(env.payload["code"], "unknownType");
}

#[test]
fn permissions_follow_roles_and_overrides() {
    let p = Permissions::default();
    assert!(p.allows(Role::Host, Permission::MuteOthers));
    assert!(p.allows(Role::CoHost, Permission::RemoveParticipant));
    assert!(!p.allows(Role::Participant, Permission::MuteOthers));
    assert!(!p.allows(Role::Participant, Permission::StartRecording));
    assert!(p.allows(Role::Participant, Permission::SendChat));
    assert!(!p.allows(Role::Viewer, Permission::ShareScreen));
    assert!(!Role::Viewer.publishes());
    let p = p
        .with_override(Role::Participant, vec![Permission::StartRecording], vec![Permission::SendChat])
        .with_override(Role::CoHost, vec![], vec![Permission::RemoveParticipant]);
    assert!(p.allows(Role::Participant, Permission::StartRecording));
    assert!(!p.allows(Role::Participant, Permission::SendChat));
    assert!(!p.allows(Role::CoHost, Permission::RemoveParticipant));
    assert_eq!(p.of(Role::Viewer), vec![Permission::SendChat]);
}

/// A bounded fuzz run over the parser: valid frames mutated byte-wise, spliced, and
/// plain random bytes. The parser must never panic, and every refusal must carry a
/// reason.
#[test]
fn fuzz_parser_never_panics() {
    let seeds: Vec<&[u8]> = vec![
        br#"{"type":"join","payload":{"token":"abc"}}"#,
        br#"{"type":"offer","id":"1","payload":{"sdp":"v=0\r\n","tracks":[{"id":"a","source":"Microphone"}]}}"#,
        br#"{"type":"chat","payload":{"text":"hello"}}"#,
        br#"{"type":"admit","payload":{"participantId":"p"}}"#,
        br#"{"type":"candidate","payload":{"target":"subscriber","candidate":"c","sdpMid":"0","sdpMLineIndex":0}}"#,
        br#"{"type":"participant-update","payload":{"name":"Ann","screenSharing":true}}"#,
    ];
    let iterations: u64 = std::env::var("FUZZ_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5157_7c4b);
    let alphabet = br#"{}[]":,\ 0123456789abcdefghijklmnopqrstuvwxyz-_typeloadnull truefalse\u00e9"#;
    for i in 0..iterations {
        let mut frame: Vec<u8> = seeds[rng.random_range(0..seeds.len())].to_vec();
        match i % 4 {
            0 => {
                for _ in 0..rng.random_range(1..6) {
                    let at = rng.random_range(0..frame.len());
                    frame[at] = alphabet[rng.random_range(0..alphabet.len())];
                }
            }
            1 => {
                let other = seeds[rng.random_range(0..seeds.len())];
                let cut = rng.random_range(0..frame.len());
                let from = rng.random_range(0..other.len());
                frame.truncate(cut);
                frame.extend_from_slice(&other[from..]);
            }
            2 => {
                let at = rng.random_range(0..frame.len());
                let insert: Vec<u8> = (0..rng.random_range(1..40)).map(|_| rng.random()).collect();
                frame.splice(at..at, insert);
            }
            _ => frame = (0..rng.random_range(0..200)).map(|_| rng.random()).collect(),
        }
        if let Err(e) = parse_client(&frame) {
            assert!(!e.reason.is_empty());
            let _ = e.envelope().to_json();
        }
    }
}

#[test]
fn a_mute_mutes_unless_it_says_otherwise() {
    let m = match parse(r#"{"type":"mute","payload":{"participantId":"p1"}}"#).unwrap() {
        ClientMessage::Mute(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!((m.kind, m.muted), (MediaKind::Audio, true));
    let lift = match parse(r#"{"type":"mute","payload":{"participantId":"p1","kind":"video","muted":false}}"#).unwrap()
    {
        ClientMessage::Mute(m) => m,
        other => panic!("{other:?}"),
    };
    assert_eq!((lift.kind, lift.muted), (MediaKind::Video, false));
}

#[test]
fn who_muted_shows_only_when_muted() {
    let p = ParticipantInfo { id: "p".into(), ..Default::default() };
    let v = serde_json::to_value(&p).unwrap();
    assert!(v.get("audioMutedBy").is_none());
    let muted = ParticipantInfo { audio_muted: true, audio_muted_by: Some(MutedBy::Host), ..p };
    assert_eq!(serde_json::to_value(&muted).unwrap()["audioMutedBy"], "host");
    let r = RecordingPayload { state: RecordingState::Stopped, recording_job: "j".into(), phase: Some("Ready".into()) };
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        serde_json::json!({"state": "stopped", "recordingJob": "j", "phase": "Ready"})
    );
}

#[test]
fn roles_from_claims_and_their_order() {
    assert_eq!(Role::from_claim("Host"), Some(Role::Host));
    for s in ["co-host", "cohost", "CoHost", "co_host"] {
        assert_eq!(Role::from_claim(s), Some(Role::CoHost), "{s}");
    }
    assert_eq!(Role::from_claim("panelist"), Some(Role::Participant));
    assert_eq!(Role::from_claim("viewer"), Some(Role::Viewer));
    assert_eq!(Role::from_claim("admin"), None);
    assert_eq!(Role::Host.least_privileged(Role::Viewer), Role::Viewer);
    assert_eq!(Role::Participant.least_privileged(Role::CoHost), Role::Participant);
    // Only hosts and co-hosts may unmute themselves after a host's mute, by default.
    let p = Permissions::default();
    assert!(p.allows(Role::CoHost, Permission::UnmuteSelf));
    assert!(!p.allows(Role::Participant, Permission::UnmuteSelf));
    assert!(
        p.with_override(Role::Participant, vec![Permission::UnmuteSelf], vec![])
            .allows(Role::Participant, Permission::UnmuteSelf)
    );
}

/// The fields added for publishing and TURN renewal: bad values get a named error, and
/// `ice-servers` needs no payload.
#[test]
fn track_declarations_and_ice_servers_requests_are_checked() {
    let bad = [
        r#"{"type":"offer","payload":{"tracks":[{"id":"m","source":"Microphone","muted":"yes"}]}}"#,
        r#"{"type":"offer","payload":{"tracks":[{"id":"m","source":"Banjo"}]}}"#,
        r#"{"type":"offer","payload":{"tracks":[{"source":"Camera"}]}}"#,
    ];
    for frame in bad {
        let e = parse_client(frame.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPayload, "{frame}: {e:?}");
    }
    let (_, m) =
        parse_client(br#"{"type":"offer","payload":{"tracks":[{"id":"m","source":"Microphone","muted":true}]}}"#)
            .unwrap();
    let ClientMessage::Offer(o) = m else { panic!("an offer") };
    assert!(
        o.tracks[0].muted,
        "a client may declare a track muted (signaling then sets it from the participant's state)"
    );
    assert_eq!(parse_client(br#"{"type":"ice-servers"}"#).unwrap().1, ClientMessage::IceServers);
}

#[test]
fn subscription_preferences_are_bounded() {
    let refused = [
        (r#"{"type":"subscription","payload":{"track":""}}"#, "1 to"),
        (r#"{"type":"subscription","payload":{"track":".."}}"#, "not a track id"),
        (r#"{"type":"subscription","payload":{"track":"cam","maxHeight":0}}"#, "maxHeight"),
        (r#"{"type":"subscription","payload":{"track":"cam","maxHeight":9000}}"#, "maxHeight"),
        (r#"{"type":"subscription","payload":{"track":"cam","maxHeight":70000}}"#, "bad"),
        (r#"{"type":"subscription","payload":{"track":"cam","maxLayer":8}}"#, "maxLayer"),
        (r#"{"type":"subscription","payload":{"track":"cam","participant":"other"}}"#, "unknown field"),
    ];
    for (frame, says) in refused {
        let e = parse(frame).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPayload, "{frame}");
        assert!(e.reason.contains(says), "{frame}: {}", e.reason);
    }
    let long = format!(r#"{{"type":"subscription","payload":{{"track":"{}"}}}}"#, "t".repeat(321));
    assert_eq!(parse(&long).unwrap_err().code, ErrorCode::InvalidPayload);
    match parse(r#"{"type":"subscription","payload":{"track":"cam","maxHeight":360,"maxLayer":1}}"#).unwrap() {
        ClientMessage::Subscription(s) => {
            assert_eq!((s.max_height, s.max_layer, s.paused), (Some(360), Some(1), false))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_ones_own_hand_is_raised_and_others_are_named_by_id() {
    let e = parse(r#"{"type":"hand-raise","payload":{"raised":true,"participantId":"bob"}}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPayload);
    assert!(e.reason.contains("own hand"), "{}", e.reason);
    let e = parse(r#"{"type":"hand-raise","payload":{"raised":false,"participantId":".."}}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidPayload);
    for frame in [
        r#"{"type":"hand-raise","payload":{"raised":true,"all":true}}"#,
        r#"{"type":"hand-raise","payload":{"raised":false,"all":true,"participantId":"bob"}}"#,
    ] {
        let e = parse(frame).unwrap_err();
        assert!(e.reason.contains("`all` lowers every hand"), "{frame}: {}", e.reason);
    }
    match parse(r#"{"type":"hand-raise","payload":{"raised":false,"all":true}}"#).unwrap() {
        ClientMessage::HandRaise(h) => assert!(h.all && !h.raised),
        other => panic!("{other:?}"),
    }
    match parse(r#"{"type":"hand-raise","payload":{"raised":false,"participantId":"bob"}}"#).unwrap() {
        ClientMessage::HandRaise(h) => assert_eq!((h.raised, h.participant_id.as_deref()), (false, Some("bob"))),
        other => panic!("{other:?}"),
    }
    // Records stored before hands were state read as lowered.
    let old: ParticipantInfo = serde_json::from_str(
        r#"{"id":"p","name":"P","role":"participant","admitted":true,"audioMuted":false,"videoMuted":false,"screenSharing":false}"#,
    )
    .unwrap();
    assert!(!old.hand_raised);
}

#[test]
fn set_role_takes_one_named_participant_and_a_role_below_host() {
    for (role, want) in [
        ("co-host", Role::CoHost),
        ("participant", Role::Participant),
        ("panelist", Role::Participant),
        ("viewer", Role::Viewer),
        ("attendee", Role::Viewer),
    ] {
        let frame = format!(r#"{{"type":"set-role","payload":{{"participantId":"bob","role":"{role}"}}}}"#);
        match parse(&frame).unwrap() {
            ClientMessage::SetRole(r) => assert_eq!((r.participant_id.as_str(), r.role), ("bob", want)),
            other => panic!("{other:?}"),
        }
    }
    for (frame, named) in [
        (r#"{"type":"set-role","payload":{"participantId":"bob","role":"host"}}"#, "spec.host"),
        (r#"{"type":"set-role","payload":{"participantId":"bob","role":"owner"}}"#, "unknown variant"),
        (r#"{"type":"set-role","payload":{"participantId":"..","role":"viewer"}}"#, "participant"),
        (r#"{"type":"set-role","payload":{"participantId":"bob"}}"#, "missing field `role`"),
        (r#"{"type":"set-role","payload":{"participantId":"bob","role":"viewer","all":true}}"#, "unknown field"),
    ] {
        let e = parse(frame).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPayload, "{frame}");
        assert!(e.reason.contains(named), "{frame}: {}", e.reason);
    }
}

#[test]
fn a_participants_page_is_bounded() {
    for (frame, named) in [
        (r#"{"type":"participants","payload":{"limit":0}}"#, "limit is 1 to 500"),
        (r#"{"type":"participants","payload":{"limit":501}}"#, "limit is 1 to 500"),
        (r#"{"type":"participants","payload":{"limit":-1}}"#, "invalid value"),
        (r#"{"type":"participants","payload":{"after":".."}}"#, "not a participant id"),
        (r#"{"type":"participants","payload":{"role":"viewer"}}"#, "unknown field"),
    ] {
        let e = parse(frame).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPayload, "{frame}");
        assert!(e.reason.contains(named), "{frame}: {}", e.reason);
    }
}

#[test]
fn a_chat_with_to_peer_id_is_a_direct_message_and_its_recipient_is_bounded() {
    let (_, m) = parse_client(br#"{"type":"chat","toPeerId":"p-1","payload":{"text":"psst"}}"#).unwrap();
    assert_eq!(m, ClientMessage::Chat(ChatPayload { text: "psst".into(), to: Some("p-1".into()) }));
    let (_, m) = parse_client(br#"{"type":"chat","payload":{"text":"all"}}"#).unwrap();
    assert_eq!(m, ClientMessage::Chat(ChatPayload { text: "all".into(), to: None }));
    // The payload cannot name a recipient (only the envelope does).
    assert_eq!(
        parse(r#"{"type":"chat","payload":{"text":"x","to":"p-1"}}"#).unwrap_err().code,
        ErrorCode::InvalidPayload
    );
    let long = format!(r#"{{"type":"chat","toPeerId":"{}","payload":{{"text":"x"}}}}"#, "p".repeat(65));
    assert_eq!(parse(&long).unwrap_err().code, ErrorCode::InvalidPayload);
    let both = r#"{"type":"chat","toPeerId":"p-1","broadcast":true,"payload":{"text":"x"}}"#;
    assert_eq!(parse(both).unwrap_err().code, ErrorCode::InvalidPayload);
    assert_eq!(
        parse(r#"{"type":"chat","toPeerId":"","payload":{"text":"x"}}"#).unwrap_err().code,
        ErrorCode::InvalidPayload
    );
}

#[test]
fn who_may_send_a_direct_message_to_whom() {
    use Role::*;
    let table = [
        (Host, Viewer, true),
        (Viewer, Host, true),
        (Viewer, CoHost, true),
        (CoHost, Participant, true),
        (Participant, Participant, true),
        (Participant, Viewer, false),
        (Viewer, Participant, false),
        (Viewer, Viewer, false),
    ];
    for (from, to, may) in table {
        assert_eq!(from.may_message_privately(to), may, "{from:?} → {to:?}");
    }
}

#[test]
fn e2ee_messages_are_shaped_and_bounded_without_reading_the_keys() {
    use crate::e2ee::{HelloPayload, KeyPayload};
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut point = [9u8; 65];
    point[0] = 4;
    let key = b64(&point);
    let hello = |extra: &str, payload: String| format!(r#"{{"type":"e2ee-hello"{extra},"payload":{payload}}}"#);
    let (_, m) = parse_client(hello("", format!(r#"{{"publicKey":"{key}"}}"#)).as_bytes()).unwrap();
    assert_eq!(m, ClientMessage::E2eeHello(HelloPayload { public_key: key.clone(), to: None }));
    let (_, m) = parse_client(hello(r#","toPeerId":"p-2""#, format!(r#"{{"publicKey":"{key}"}}"#)).as_bytes()).unwrap();
    assert_eq!(m, ClientMessage::E2eeHello(HelloPayload { public_key: key.clone(), to: Some("p-2".into()) }));
    let mut compressed = point;
    compressed[0] = 2;
    for bad in [b64(&compressed), b64(&point[..64]), format!("{key}A"), key.replace(&key[..2], "+/"), String::new()] {
        let frame = hello("", format!(r#"{{"publicKey":"{bad}"}}"#));
        assert_eq!(parse(&frame).unwrap_err().code, ErrorCode::InvalidPayload, "{bad}");
    }
    assert_eq!(
        parse(&hello("", format!(r#"{{"publicKey":"{key}","to":"p-2"}}"#))).unwrap_err().code,
        ErrorCode::InvalidPayload
    );
    assert_eq!(
        parse(&hello(r#","toPeerId":"""#, format!(r#"{{"publicKey":"{key}"}}"#))).unwrap_err().code,
        ErrorCode::InvalidPayload
    );

    let entry = |to: &str, iv: usize, key: usize| serde_json::json!({"to": to, "iv": b64(&vec![1; iv]), "key": b64(&vec![2; key])});
    let key_msg = |kid: serde_json::Value, entries: Vec<serde_json::Value>| {
        serde_json::json!({"type": "e2ee-key", "payload": {"kid": kid, "entries": entries}}).to_string()
    };
    let (_, m) =
        parse_client(key_msg(513.into(), vec![entry("p-1", 12, 48), entry("p-2", 12, 48)]).as_bytes()).unwrap();
    let ClientMessage::E2eeKey(KeyPayload { kid, entries }) = m else { panic!("{m:?}") };
    assert_eq!((kid, entries.len()), (513, 2));
    let refused = [
        key_msg(1.into(), vec![]),
        key_msg(1.into(), (0..201).map(|i| entry(&format!("p-{i}"), 12, 48)).collect()),
        key_msg(1.into(), vec![entry("p-1", 12, 48), entry("p-1", 12, 48)]),
        key_msg(1.into(), vec![entry("p-1", 16, 48)]),
        key_msg(1.into(), vec![entry("p-1", 12, 32)]),
        key_msg(1.into(), vec![entry("", 12, 48)]),
        key_msg((1u64 << 53).into(), vec![entry("p-1", 12, 48)]),
        key_msg((-1).into(), vec![entry("p-1", 12, 48)]),
        key_msg("1".into(), vec![entry("p-1", 12, 48)]),
    ];
    for frame in refused {
        assert_eq!(parse(&frame).unwrap_err().code, ErrorCode::InvalidPayload, "{frame}");
    }
    // A join says which scheme the client implements.
    let (_, m) = parse_client(br#"{"type":"join","payload":{"token":"t","e2ee":1}}"#).unwrap();
    assert_eq!(m, ClientMessage::Join(JoinPayload { token: "t".into(), e2ee: Some(1) }));
}

#[test]
fn only_publishers_send_media_keys() {
    use crate::e2ee::KeyPayload;
    let key = ClientMessage::E2eeKey(KeyPayload { kid: 0, entries: vec![] });
    let allowed = |role| session::gate(session::Phase::Admitted { role }, &key, "p-1", || Ok(Permissions::default()));
    assert_eq!(allowed(Role::Participant), Ok(session::Step::Act));
    assert_eq!(allowed(Role::Viewer).unwrap_err().code, ErrorCode::Forbidden);
    let waiting =
        session::gate(session::Phase::Waiting { role: Role::Host }, &key, "p-1", || Ok(Permissions::default()));
    assert_eq!(waiting.unwrap_err().code, ErrorCode::NotAdmitted);
}

#[test]
fn breakout_messages_are_bounded() {
    use crate::breakouts::*;
    let refused = |frame: &str| {
        let e = parse(frame).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPayload, "{frame}: {e}");
        e.reason
    };
    assert!(refused(r#"{"type":"open-breakouts","payload":{"rooms":0}}"#).contains("1 to 50"));
    assert!(refused(r#"{"type":"open-breakouts","payload":{"rooms":51}}"#).contains("1 to 50"));
    assert!(refused(r#"{"type":"open-breakouts","payload":{}}"#).contains("rooms"));
    assert!(refused(r#"{"type":"open-breakouts","payload":{"rooms":2,"names":["a","b"]}}"#).contains("not both"));
    assert!(refused(r#"{"type":"open-breakouts","payload":{"names":["A","a"]}}"#).contains("twice"));
    assert!(refused(r#"{"type":"open-breakouts","payload":{"names":[" "]}}"#).contains("printable"));
    let long = "x".repeat(65);
    refused(&format!(r#"{{"type":"open-breakouts","payload":{{"names":["{long}"]}}}}"#));
    refused(r#"{"type":"open-breakouts","payload":{"names":["a\u0007"]}}"#);
    assert!(refused(r#"{"type":"open-breakouts","payload":{"rooms":2,"seconds":5}}"#).contains("seconds"));
    assert!(refused(r#"{"type":"open-breakouts","payload":{"rooms":2,"seconds":86401}}"#).contains("seconds"));
    assert!(refused(r#"{"type":"open-breakouts","payload":{"rooms":2,"countdownSeconds":601}}"#).contains("0 to 600"));
    assert!(refused(r#"{"type":"open-breakouts","payload":{"rooms":2,"manual":{"p-1":0}}}"#).contains("manual"));
    let out_of_range = r#"{"type":"open-breakouts","payload":{"rooms":2,"assignment":"manual","manual":{"p-1":2}}}"#;
    assert!(refused(out_of_range).contains("0 to 1"));
    refused(r#"{"type":"open-breakouts","payload":{"rooms":2,"assignment":"manual","manual":{"p\u0000":0}}}"#);
    refused(r#"{"type":"open-breakouts","payload":{"rooms":2,"assignment":"everyone"}}"#);
    refused(r#"{"type":"open-breakouts","payload":{"rooms":2,"extra":1}}"#);
    refused(r#"{"type":"breakout-move","payload":{"participantId":"p-1","room":50}}"#);
    refused(r#"{"type":"breakout-move","payload":{"participantId":".."}}"#);
    refused(r#"{"type":"breakout-broadcast","payload":{"text":"  "}}"#);
    let long = "x".repeat(MAX_BROADCAST_CHARS + 1);
    refused(&format!(r#"{{"type":"breakout-broadcast","payload":{{"text":"{long}"}}}}"#));
    assert!(refused(r#"{"type":"breakout-broadcast","payload":{"text":"hi","name":"Boss"}}"#).contains("server"));
    refused(r#"{"type":"close-breakouts","payload":{"countdownSeconds":601}}"#);
    // 'manual' with the largest map there may be parses; one more is refused.
    let map: std::collections::BTreeMap<String, u32> =
        (0..=MAX_MANUAL_ENTRIES).map(|i| (format!("p-{i}"), 0)).collect();
    let open = OpenPayload { rooms: Some(1), assignment: Assignment::Manual, manual: map, ..Default::default() };
    assert!(check_open(&open).unwrap_err().contains("at most"));
    let names = OpenPayload { names: vec!["Red ".into(), "Blue".into()], ..Default::default() };
    assert_eq!(names.room_names(), ["Red", "Blue"]);
    assert_eq!(OpenPayload { rooms: Some(2), ..Default::default() }.room_names(), ["Room 1", "Room 2"]);
}

#[test]
fn breakouts_are_run_by_hosts_and_co_hosts_and_help_is_for_anyone_admitted() {
    let run = [
        r#"{"type":"open-breakouts","payload":{"rooms":2}}"#,
        r#"{"type":"breakout-move","payload":{"participantId":"p-2"}}"#,
        r#"{"type":"breakout-broadcast","payload":{"text":"hi"}}"#,
        r#"{"type":"close-breakouts"}"#,
    ];
    let gate = |phase, frame: &str| session::gate(phase, &parse(frame).unwrap(), "p-1", || Ok(Permissions::default()));
    for frame in run {
        for role in [Role::Host, Role::CoHost] {
            assert_eq!(gate(session::Phase::Admitted { role }, frame), Ok(session::Step::Act), "{frame}");
        }
        for role in [Role::Participant, Role::Viewer] {
            let e = gate(session::Phase::Admitted { role }, frame).unwrap_err();
            assert_eq!(e.code, ErrorCode::Forbidden, "{frame}");
            assert!(e.reason.contains("hosts and co-hosts"), "{e}");
        }
        let e = gate(session::Phase::Waiting { role: Role::Participant }, frame).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotAdmitted);
    }
    let help = r#"{"type":"ask-for-help"}"#;
    for role in [Role::Participant, Role::Viewer, Role::CoHost] {
        assert_eq!(gate(session::Phase::Admitted { role }, help), Ok(session::Step::Act));
    }
    assert_eq!(
        gate(session::Phase::Waiting { role: Role::Participant }, help).unwrap_err().code,
        ErrorCode::NotAdmitted
    );
}
