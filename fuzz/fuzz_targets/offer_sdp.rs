//! Hand-made SDP against signaling's offer check (`signaling_proto::offer`): it never
//! panics, and what it lets through names only declared tracks, each in an m-section of
//! its declared kind.
//!
//! Input: byte 0 picks the declared tracks (bit 0: audio track `mic`, bit 1: video track
//! `cam`); the rest is the SDP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_signaling_proto::offer::check_offer;
use switchboard_signaling_proto::{Source, TrackDescription};

fuzz_target!(|data: &[u8]| {
    let [which, sdp @ ..] = data else { return };
    let Ok(sdp) = std::str::from_utf8(sdp) else { return };
    let mut declared = Vec::new();
    for (bit, id, source) in [(1, "mic", Source::Microphone), (2, "cam", Source::Camera)] {
        if which & bit != 0 {
            let d: TrackDescription =
                serde_json::from_value(serde_json::json!({ "id": id, "source": source })).expect("a track description");
            declared.push(d);
        }
    }
    let Ok(carried) = check_offer(sdp, &declared) else { return };
    for t in &carried {
        assert!(declared.iter().any(|d| &d.id == t), "undeclared track {t:?} let through");
    }
    // Every msid the SFU would read names a declared track in a section of its kind.
    let mut media = "";
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            media = m.split(' ').next().unwrap_or_default();
        }
        let track = line.strip_prefix("a=msid:").and_then(|v| v.split(' ').nth(1)).or_else(|| {
            line.strip_prefix("a=ssrc:").filter(|v| v.contains(" msid:")).and_then(|v| v.split(' ').nth(2))
        });
        // Session-level lines (before the first `m=`) name no track: msid is a media-level
        // attribute, and webrtc-rs reads it only there.
        if let Some(track) = track
            && !media.is_empty()
            && media != "application"
        {
            let d = declared.iter().find(|d| d.id == track).unwrap_or_else(|| panic!("`{track}` in {media}"));
            let audio = matches!(d.source, Source::Microphone | Source::ScreenShareAudio);
            assert_eq!(audio, media == "audio", "`{track}` sent as {media}");
        }
    }
});
