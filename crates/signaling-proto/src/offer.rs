//! What a participant may publish, checked on its offers before they reach the SFU
//! (pure: no IO).
//!
//! Publishing flows through signaling: the client's `offer` (its publisher connection's
//! SDP and the tracks it declares) is forwarded to the SFU's join or publisher-offer
//! call. Whoever may not publish (a viewer, a Webinar's audience) may send no SDP at
//! all. Everyone else's SDP may only carry tracks it declared, of the kind declared:
//! the SFU (webrtc-rs) names an incoming track by the `msid` of its m-section, and
//! signaling mutes and accounts for tracks by those names. The rules are deliberately
//! stricter than what webrtc-rs reads, so an SDP that slips past one reading of it
//! slips past none:
//!
//! * every `m=audio`/`m=video` section's track ids (`a=msid:<stream> <track>` and
//!   `a=ssrc:<n> msid:<stream> <track>`) must be declared, with a source of its kind;
//! * a section that may send (no `a=recvonly` or `a=inactive` line of its own: the
//!   direction of the session level, which webrtc-rs does not read, does not count)
//!   must name a track, and so must the only section of a one-section offer (webrtc-rs
//!   takes media with an unknown SSRC into it, whatever its direction);
//! * malformed `msid` lines, and sections other than audio, video and `application`
//!   (data channels), are refused.

use std::collections::HashMap;

use crate::{Source, TrackDescription};

/// Whether a source is carried by `m=audio` (true) or `m=video` (false).
fn is_audio(s: Source) -> bool {
    matches!(s, Source::Microphone | Source::ScreenShareAudio)
}

#[derive(Default, Debug)]
struct Section {
    media: String,
    may_send: bool,
    tracks: Vec<String>,
}

fn sections(sdp: &str) -> Result<Vec<Section>, String> {
    let mut out: Vec<Section> = Vec::new();
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            let media = m.split(' ').next().unwrap_or_default().to_owned();
            out.push(Section { media, may_send: true, ..Default::default() });
            continue;
        }
        let Some(section) = out.last_mut() else { continue };
        if line == "a=recvonly" || line == "a=inactive" {
            section.may_send = false;
        } else if let Some(v) = line.strip_prefix("a=msid:") {
            match v.split(' ').collect::<Vec<_>>()[..] {
                [_, track] => section.tracks.push(track.to_owned()),
                _ => return Err(format!("malformed `a=msid:{v}` (expected `<stream> <track>`)")),
            }
        } else if let Some(v) = line.strip_prefix("a=ssrc:") {
            let parts: Vec<&str> = v.split(' ').collect();
            if parts.iter().skip(1).any(|p| p.starts_with("msid:")) {
                match parts[..] {
                    [_, stream, track] if stream.starts_with("msid:") => section.tracks.push(track.to_owned()),
                    _ => return Err(format!("malformed `a=ssrc:{v}` (expected `<ssrc> msid:<stream> <track>`)")),
                }
            }
        }
    }
    Ok(out)
}

/// Checks a publisher offer against the tracks declared (on this offer and before);
/// returns the ids of the tracks it carries, or why it is refused.
pub fn check_offer(sdp: &str, declared: &[TrackDescription]) -> Result<Vec<String>, String> {
    let declared: HashMap<&str, Source> = declared.iter().map(|t| (t.id.as_str(), t.source)).collect();
    let all = sections(sdp)?;
    let single = all.len() == 1;
    let mut carried = Vec::new();
    for (i, s) in all.iter().enumerate() {
        let audio = match s.media.as_str() {
            "application" => continue,
            "audio" => true,
            "video" => false,
            other => {
                return Err(format!("m-section {i} is `{other}`: only audio, video and data channels are accepted"));
            }
        };
        if s.tracks.is_empty() && (s.may_send || single) {
            return Err(format!("m-section {i} ({}) may send but names no track (`a=msid:<stream> <track>`)", s.media));
        }
        for t in &s.tracks {
            match declared.get(t.as_str()) {
                None => {
                    return Err(format!(
                        "track `{t}` (m-section {i}) was not declared: list it in the offer's `tracks`"
                    ));
                }
                Some(source) if is_audio(*source) != audio => {
                    return Err(format!("track `{t}` is declared as {source:?} but is sent as {}", s.media));
                }
                Some(_) => {
                    if !carried.contains(t) {
                        carried.push(t.clone());
                    }
                }
            }
        }
    }
    Ok(carried)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(tracks: &[(&str, Source)]) -> Vec<TrackDescription> {
        tracks.iter().map(|(id, source)| TrackDescription::new(*id, *source)).collect()
    }

    const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";

    fn sdp(sections: &[&str]) -> String {
        let mut s = HEAD.to_owned();
        for m in sections {
            s.push_str(m);
        }
        s
    }

    const MIC: &str = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s mic\r\n";
    const CAM: &str =
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendrecv\r\na=ssrc:5 cname:x\r\na=ssrc:5 msid:s cam\r\n";
    const DATA: &str = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:2\r\n";

    #[test]
    fn declared_tracks_of_their_kind_pass() {
        let d = declared(&[("mic", Source::Microphone), ("cam", Source::Camera)]);
        assert_eq!(check_offer(&sdp(&[MIC, CAM, DATA]), &d), Ok(vec!["mic".to_owned(), "cam".to_owned()]));
        // A receive-only or stopped section without a track is fine when there are others.
        let stopped = "m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=inactive\r\n";
        assert!(check_offer(&sdp(&[MIC, stopped]), &d).is_ok());
        // A data channel alone carries no media.
        assert_eq!(check_offer(&sdp(&[DATA]), &d), Ok(vec![]));
    }

    #[test]
    fn hand_made_offers_are_refused() {
        let d = declared(&[("mic", Source::Microphone), ("cam", Source::Camera)]);
        let refused = |sections: &[&str]| check_offer(&sdp(sections), &d).unwrap_err();
        // No direction line at all means sendrecv; a session-level recvonly does not count.
        let bare = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n";
        assert!(refused(&[bare, CAM]).contains("names no track"));
        let session_level = format!("{HEAD}a=recvonly\r\n{bare}{CAM}");
        assert!(check_offer(&session_level, &d).unwrap_err().contains("names no track"));
        // Undeclared, or sent as the other kind.
        let sneaky = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s hidden-mic\r\n";
        assert!(refused(&[sneaky]).contains("`hidden-mic`"));
        let swapped = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=msid:s cam\r\n";
        assert!(refused(&[swapped, MIC]).contains("declared as Camera"));
        let ssrc = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:s cam\r\na=ssrc:7 msid:s other\r\n";
        assert!(refused(&[MIC, ssrc]).contains("`other`"), "every msid counts, a=ssrc ones too");
        // A single receive-only section still takes media with unknown SSRCs.
        let lone = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\n";
        assert!(refused(&[lone]).contains("names no track"));
        let lone_named = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\na=msid:s ghost\r\n";
        assert!(refused(&[lone_named]).contains("`ghost`"));
        // Malformed lines and unknown media.
        assert!(refused(&["m=audio 9 X 111\r\na=msid:s mic extra\r\n"]).contains("malformed"));
        assert!(refused(&["m=audio 9 X 111\r\na=msid:s mic\r\na=ssrc:1 msid:s\r\n"]).contains("malformed"));
        assert!(refused(&["m=text 9 X 0\r\n", MIC]).contains("`text`"));
        // A direction line with trailing junk is not a direction line.
        let junk = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly \r\n";
        assert!(refused(&[junk, CAM]).contains("names no track"));
    }
}
