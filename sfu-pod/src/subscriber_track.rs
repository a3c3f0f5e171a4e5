//! The local track a subscription writes into: webrtc-rs's `TrackLocalStaticRTP` minus
//! what an SFU's hot path does not need.
//!
//! `TrackLocalStaticRTP::write_rtp` clones every packet, takes an async mutex and clones
//! its list of bindings on each write. A subscription's sink already owns its packet and
//! its track has one binding (one subscriber connection), so this track rewrites the
//! packet in place (SSRC, payload type, MID) and reads its bindings under a short
//! synchronous lock. Binding follows `TrackLocalStaticRTP::bind`: the codec is matched on
//! MIME type and format parameters first, then on MIME type alone.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use webrtc::interceptor::Attributes;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType};
use webrtc::track::track_local::{TrackLocal, TrackLocalContext, TrackLocalWriter};
use webrtc::util::MarshalSize;

use crate::transport_cc::TransportCc;

struct Binding {
    id: String,
    ssrc: u32,
    payload_type: u8,
    /// The MID header extension (id, value), when negotiated.
    mid: Option<(u8, Bytes)>,
    /// The transport-cc header extension's id, when negotiated.
    transport_cc: Option<u8>,
    /// The sender's writer; it drops the packet itself while the sender is paused.
    writer: Arc<dyn TrackLocalWriter + Send + Sync>,
}

pub struct SubscriberTrack {
    codec: RTCRtpCodecCapability,
    id: String,
    stream_id: String,
    /// Numbers packets for the connection's send-side estimate, where transport-cc is
    /// agreed ([`crate::transport_cc`]).
    transport: Option<Arc<TransportCc>>,
    /// Replaced whole on bind and unbind (rare), so a write takes its snapshot with one
    /// reference count and no allocation.
    bindings: Mutex<Arc<[Arc<Binding>]>>,
}

impl std::fmt::Debug for SubscriberTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberTrack").field("id", &self.id).field("stream_id", &self.stream_id).finish()
    }
}

impl SubscriberTrack {
    pub fn new(codec: RTCRtpCodecCapability, id: String, stream_id: String) -> Self {
        Self { codec, id, stream_id, transport: None, bindings: Mutex::new(Arc::from([])) }
    }

    /// The same, numbering what it sends on `transport` when its connection agreed to
    /// transport-cc.
    pub fn with_transport(mut self, transport: Arc<TransportCc>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Sends `pkt` on every binding, rewriting its SSRC, payload type, MID and
    /// transport-wide sequence number for each; returns the bytes written. The packet keeps the last binding's header.
    pub async fn write(&self, pkt: &mut Packet) -> webrtc::error::Result<usize> {
        let bindings = self.bindings.lock().unwrap().clone();
        let mut written = 0;
        let mut first_error = None;
        let attributes = Attributes::new();
        for b in bindings.iter() {
            pkt.header.ssrc = b.ssrc;
            pkt.header.payload_type = b.payload_type;
            if let Some((id, value)) = &b.mid
                && let Err(e) = pkt.header.set_extension(*id, value.clone())
            {
                first_error.get_or_insert(webrtc::Error::Rtp(e));
                continue;
            }
            if let (Some(id), Some(transport)) = (b.transport_cc, &self.transport) {
                // The extension's 4 bytes (id/length and the number) are not set yet.
                let seq = transport.on_sent(pkt.header.marshal_size() + pkt.payload.len() + 4);
                if let Err(e) = pkt.header.set_extension(id, Bytes::copy_from_slice(&seq.to_be_bytes())) {
                    first_error.get_or_insert(webrtc::Error::Rtp(e));
                    continue;
                }
            }
            match b.writer.write_rtp_with_attributes(pkt, &attributes).await {
                Ok(n) => written += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

/// `key=value;key=value` as a map, keys lower-cased.
fn fmtp(line: &str) -> HashMap<String, String> {
    line.split(';')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect()
}

/// Whether two codecs' format parameters agree, as webrtc-rs judges it: for H.264 the
/// packetization mode and the profile (the first two bytes of profile-level-id); for the
/// others every parameter both name.
fn fmtp_matches(mime: &str, a: &str, b: &str) -> bool {
    let (a, b) = (fmtp(a), fmtp(b));
    if mime.eq_ignore_ascii_case("video/h264") {
        let mode = |m: &HashMap<String, String>| m.get("packetization-mode").cloned().unwrap_or_else(|| "0".into());
        let profile = |m: &HashMap<String, String>| {
            m.get("profile-level-id").map(|p| p.get(..4).unwrap_or(p).to_ascii_lowercase())
        };
        return mode(&a) == mode(&b) && profile(&a).is_some() && profile(&a) == profile(&b);
    }
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w.eq_ignore_ascii_case(v)))
}

/// The negotiated codec for `wanted`: same MIME type and format parameters, else the first
/// of the same MIME type.
pub fn match_codec(wanted: &RTCRtpCodecCapability, offered: &[RTCRtpCodecParameters]) -> Option<RTCRtpCodecParameters> {
    let same_mime = |c: &&RTCRtpCodecParameters| c.capability.mime_type.eq_ignore_ascii_case(&wanted.mime_type);
    offered
        .iter()
        .filter(same_mime)
        .find(|c| fmtp_matches(&wanted.mime_type, &wanted.sdp_fmtp_line, &c.capability.sdp_fmtp_line))
        .or_else(|| offered.iter().find(same_mime))
        .cloned()
}

#[async_trait::async_trait]
impl TrackLocal for SubscriberTrack {
    async fn bind(&self, t: &TrackLocalContext) -> webrtc::error::Result<RTCRtpCodecParameters> {
        let codec = match_codec(&self.codec, t.codec_parameters()).ok_or(webrtc::Error::ErrUnsupportedCodec)?;
        let mid = t
            .header_extensions()
            .iter()
            .find(|e| e.uri == webrtc::sdp::extmap::SDES_MID_URI)
            .and_then(|e| t.mid().map(|mid| (e.id as u8, Bytes::copy_from_slice(mid.as_bytes()))));
        let transport_cc =
            t.header_extensions().iter().find(|e| e.uri == webrtc::sdp::extmap::TRANSPORT_CC_URI).map(|e| e.id as u8);
        let binding = Arc::new(Binding {
            id: t.id(),
            ssrc: t.ssrc(),
            payload_type: codec.payload_type,
            mid,
            transport_cc,
            writer: t.write_stream(),
        });
        let mut bindings = self.bindings.lock().unwrap();
        *bindings = bindings.iter().cloned().chain([binding]).collect();
        Ok(codec)
    }

    async fn unbind(&self, t: &TrackLocalContext) -> webrtc::error::Result<()> {
        let mut bindings = self.bindings.lock().unwrap();
        let id = t.id();
        if !bindings.iter().any(|b| b.id == id) {
            return Err(webrtc::Error::ErrUnbindFailed);
        }
        *bindings = bindings.iter().filter(|b| b.id != id).cloned().collect();
        Ok(())
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn rid(&self) -> Option<&str> {
        None
    }

    fn stream_id(&self) -> &str {
        &self.stream_id
    }

    fn kind(&self) -> RTPCodecType {
        let mime = self.codec.mime_type.to_ascii_lowercase();
        if mime.starts_with("audio/") {
            RTPCodecType::Audio
        } else if mime.starts_with("video/") {
            RTPCodecType::Video
        } else {
            RTPCodecType::Unspecified
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(mime: &str, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
        RTCRtpCodecParameters {
            capability: RTCRtpCodecCapability {
                mime_type: mime.into(),
                clock_rate: 90000,
                sdp_fmtp_line: fmtp.into(),
                ..Default::default()
            },
            payload_type: pt,
            ..Default::default()
        }
    }

    #[test]
    fn h264_matches_on_packetization_mode_and_profile() {
        let offered = [
            codec("video/H264", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f", 100),
            codec("video/H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f", 102),
            codec("video/H264", "packetization-mode=1;profile-level-id=640032", 104),
        ];
        let wanted = |f: &str| RTCRtpCodecCapability {
            mime_type: "video/H264".into(),
            sdp_fmtp_line: f.into(),
            ..Default::default()
        };
        assert_eq!(
            match_codec(&wanted("packetization-mode=1;profile-level-id=42e034"), &offered).unwrap().payload_type,
            102
        );
        assert_eq!(
            match_codec(&wanted("packetization-mode=1;profile-level-id=64001f"), &offered).unwrap().payload_type,
            104
        );
        // No exact match: the first H.264 codec, as webrtc-rs falls back.
        assert_eq!(
            match_codec(&wanted("packetization-mode=1;profile-level-id=4d0032"), &offered).unwrap().payload_type,
            100
        );
    }

    #[test]
    fn other_codecs_match_on_the_parameters_both_name_and_never_across_mime_types() {
        let offered = [
            codec("video/VP9", "profile-id=2", 98),
            codec("video/VP9", "profile-id=0", 99),
            codec("audio/opus", "minptime=10;useinbandfec=1", 111),
        ];
        let vp9 = RTCRtpCodecCapability {
            mime_type: "video/vp9".into(),
            sdp_fmtp_line: "profile-id=0".into(),
            ..Default::default()
        };
        assert_eq!(match_codec(&vp9, &offered).unwrap().payload_type, 99);
        let opus = RTCRtpCodecCapability {
            mime_type: "audio/opus".into(),
            sdp_fmtp_line: "useinbandfec=1".into(),
            ..Default::default()
        };
        assert_eq!(match_codec(&opus, &offered).unwrap().payload_type, 111);
        let vp8 = RTCRtpCodecCapability { mime_type: "video/VP8".into(), ..Default::default() };
        assert!(match_codec(&vp8, &offered).is_none());
    }
}
