//! The SFU API's request parsing: every request body type the SFU reads decodes from
//! any bytes without panicking and survives a round trip unchanged; and the request
//! paths built from ids (track ids come from clients) keep each id inside its own path
//! segment, so no id can reach another endpoint.
//!
//! Input: byte 0 picks what to fuzz; for paths, the rest is split at `0xFF` into the
//! room, participant and track ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_sfu_api::paths::{self, check_id};
use switchboard_sfu_api::{
    Candidate, EventsQuery, JoinRequest, MuteRequest, OfferRequest, RelayRequest, SdpBody, SubscriptionRequest,
};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<T>(body) else { return };
    let again: T = serde_json::from_slice(&serde_json::to_vec(&value).expect("serializes")).expect("reads back");
    assert_eq!(value, again);
}

fn decode(segment: &str) -> Vec<u8> {
    let b = segment.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("two hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [what, body @ ..] = data else { return };
    match what % 9 {
        0 => round_trip::<JoinRequest>(body),
        1 => round_trip::<OfferRequest>(body),
        2 => round_trip::<SdpBody>(body),
        3 => round_trip::<Candidate>(body),
        4 => round_trip::<MuteRequest>(body),
        5 => round_trip::<SubscriptionRequest>(body),
        6 => round_trip::<RelayRequest>(body),
        7 => round_trip::<EventsQuery>(body),
        _ => {
            let ids: Vec<&[u8]> = body.splitn(3, |b| *b == 0xFF).collect();
            let [room, participant, track] = ids[..] else { return };
            let (Ok(room), Ok(participant), Ok(track)) =
                (std::str::from_utf8(room), std::str::from_utf8(participant), std::str::from_utf8(track))
            else {
                return;
            };
            if [("room", room), ("participant", participant), ("track", track)]
                .iter()
                .any(|(what, id)| check_id(what, id).is_err())
            {
                return;
            }
            let path = paths::fill(paths::TRACK, room, participant, track);
            assert!(path.bytes().all(|b| b.is_ascii_graphic()), "{path:?}");
            assert!(!path.contains(['?', '#']), "{path:?}");
            let segments: Vec<&str> = path.split('/').collect();
            assert_eq!(segments.len(), 8, "{path:?}");
            for (segment, id) in [(segments[3], room), (segments[5], participant), (segments[7], track)] {
                assert!(segment != "." && segment != "..", "{path:?}");
                assert_eq!(decode(segment), id.as_bytes(), "{path:?}");
            }
        }
    }
});
