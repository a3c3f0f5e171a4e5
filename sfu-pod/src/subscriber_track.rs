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
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use webrtc::interceptor::Attributes;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType};
use webrtc::track::track_local::{TrackLocal, TrackLocalContext, TrackLocalWriter};
use webrtc::util::MarshalSize;

use switchboard_sfu_client::media;
use switchboard_sfu_core::codec::red_primary;

use crate::transport_cc::TransportCc;

struct Binding {
    id: String,
    ssrc: u32,
    payload_type: u8,
    /// The MID header extension (id, value), when negotiated.
    mid: Option<(u8, Bytes)>,
    /// The transport-cc header extension's id, when negotiated.
    transport_cc: Option<u8>,
    /// The retransmission stream, when RTX was negotiated for the codec.
    rtx: Option<RtxStream>,
    /// RED's payload type, when the subscriber agreed to RED over this (Opus) codec.
    red: Option<u8>,
    /// The sender's writer; it drops the packet itself while the sender is paused.
    writer: Arc<dyn TrackLocalWriter + Send + Sync>,
}

struct RtxStream {
    payload_type: u8,
    /// The retransmission stream numbers its packets itself.
    seq: AtomicU16,
}

pub struct SubscriberTrack {
    codec: RTCRtpCodecCapability,
    id: String,
    stream_id: String,
    /// Numbers packets for the connection's send-side estimate, where transport-cc is
    /// agreed ([`crate::transport_cc`]).
    transport: Option<Arc<TransportCc>>,
    /// An audio track: its packets may carry RED.
    audio: bool,
    /// 0 until known ([`SubscriberTrack::set_rtx_ssrc`]).
    rtx_ssrc: AtomicU32,
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
        let audio = codec.mime_type.to_ascii_lowercase().starts_with("audio/");
        Self {
            codec,
            id,
            stream_id,
            transport: None,
            audio,
            rtx_ssrc: AtomicU32::new(0),
            bindings: Mutex::new(Arc::from([])),
        }
    }

    /// The same, numbering what it sends on `transport` when its connection agreed to
    /// transport-cc.
    pub fn with_transport(mut self, transport: Arc<TransportCc>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Sends `pkt` on every binding, rewriting its SSRC, payload type, MID and
    /// transport-wide sequence number for each; returns the bytes written. The packet
    /// keeps the last binding's header.
    pub async fn write(&self, pkt: &mut Packet) -> webrtc::error::Result<usize> {
        self.send(pkt, Repair::No).await
    }

    /// Sends `pkt` (a packet written before) again: on a binding that agreed to RTX
    /// (RFC 4588), on its retransmission stream, with the original sequence number in
    /// front of the payload; elsewhere as it was when `plain_fallback` (a NACK's answer),
    /// or not at all (a probe: a receiver's SRTP replay check drops a packet repeated on
    /// its own stream, so only the retransmission stream can carry copies).
    pub async fn write_again(&self, pkt: &mut Packet, plain_fallback: bool) -> webrtc::error::Result<usize> {
        self.send(pkt, if plain_fallback { Repair::RtxOrPlain } else { Repair::RtxOnly }).await
    }

    /// How long a packet of `size` bytes waits before it is written (the connection's
    /// pacer; audio never waits).
    /// Whether a probe copy still helps: only while its probe cluster sends.
    pub fn probe_wanted(&self) -> bool {
        self.transport.as_ref().is_some_and(|t| t.probing())
    }

    pub fn pace(&self, size: usize) -> Duration {
        match &self.transport {
            Some(t) => t.pace(size, !self.audio),
            None => Duration::ZERO,
        }
    }

    /// The SSRC webrtc-rs gave the sender's retransmission stream (`a=ssrc-group:FID`),
    /// known once the track is added to its connection.
    pub fn set_rtx_ssrc(&self, ssrc: u32) {
        self.rtx_ssrc.store(ssrc, Ordering::Relaxed);
    }

    async fn send(&self, pkt: &mut Packet, repair: Repair) -> webrtc::error::Result<usize> {
        let bindings = self.bindings.lock().unwrap().clone();
        let mut written = 0;
        let mut first_error = None;
        let attributes = Attributes::new();
        let rtx_ssrc = self.rtx_ssrc.load(Ordering::Relaxed);
        // Forwarded audio comes as RED or as plain Opus (`media::RED_PT` / `OPUS_PT`).
        let red_in = self.audio && pkt.header.payload_type == media::RED_PT;
        let mut primary_packet;
        for b in bindings.iter() {
            let rtx = b.rtx.as_ref().filter(|_| rtx_ssrc != 0 && repair != Repair::No);
            let mut rtx_packet;
            let out = match rtx {
                Some(rtx) => {
                    let mut payload = Vec::with_capacity(pkt.payload.len() + 2);
                    payload.extend_from_slice(&pkt.header.sequence_number.to_be_bytes());
                    payload.extend_from_slice(&pkt.payload);
                    rtx_packet = Packet { header: pkt.header.clone(), payload: payload.into() };
                    rtx_packet.header.ssrc = rtx_ssrc;
                    rtx_packet.header.payload_type = rtx.payload_type;
                    rtx_packet.header.sequence_number = rtx.seq.fetch_add(1, Ordering::Relaxed);
                    &mut rtx_packet
                }
                None if repair == Repair::RtxOnly => continue,
                // A subscriber without RED gets the primary frame as plain Opus.
                None if red_in && b.red.is_none() => {
                    let pt = pkt.payload.first().map_or(0, |b| b & 0x7f);
                    let Some(primary) = red_primary(&pkt.payload, pt) else { continue };
                    primary_packet = Packet { header: pkt.header.clone(), payload: pkt.payload.slice_ref(primary) };
                    primary_packet.header.ssrc = b.ssrc;
                    primary_packet.header.payload_type = b.payload_type;
                    &mut primary_packet
                }
                None => {
                    pkt.header.ssrc = b.ssrc;
                    pkt.header.payload_type = if red_in { b.red.unwrap_or(b.payload_type) } else { b.payload_type };
                    &mut *pkt
                }
            };
            if let Some((id, value)) = &b.mid
                && let Err(e) = out.header.set_extension(*id, value.clone())
            {
                first_error.get_or_insert(webrtc::Error::Rtp(e));
                continue;
            }
            if let (Some(id), Some(transport)) = (b.transport_cc, &self.transport) {
                // The extension's 4 bytes (id/length and the number) are not set yet.
                let seq = transport.on_sent(out.header.marshal_size() + out.payload.len() + 4);
                if let Err(e) = out.header.set_extension(id, Bytes::copy_from_slice(&seq.to_be_bytes())) {
                    first_error.get_or_insert(webrtc::Error::Rtp(e));
                    continue;
                }
            }
            match b.writer.write_rtp_with_attributes(out, &attributes).await {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Repair {
    No,
    RtxOrPlain,
    RtxOnly,
}

/// A random first sequence number (RFC 3550 wants one that cannot be guessed).
fn rand_seq() -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
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
        // RED whose blocks are this Opus ("111/111").
        let red = t
            .codec_parameters()
            .iter()
            .find(|c| {
                c.capability.mime_type.eq_ignore_ascii_case("audio/red")
                    && c.capability.sdp_fmtp_line.split('/').all(|pt| pt.trim() == codec.payload_type.to_string())
            })
            .map(|c| c.payload_type);
        let rtx = t
            .codec_parameters()
            .iter()
            .find(|c| {
                c.capability.mime_type.eq_ignore_ascii_case("video/rtx")
                    && fmtp(&c.capability.sdp_fmtp_line).get("apt") == Some(&codec.payload_type.to_string())
            })
            .map(|c| RtxStream { payload_type: c.payload_type, seq: AtomicU16::new(rand_seq()) });
        if let (Some(transport), true) = (&self.transport, rtx.is_some()) {
            transport.set_rtx();
        }
        let binding = Arc::new(Binding {
            id: t.id(),
            ssrc: t.ssrc(),
            payload_type: codec.payload_type,
            mid,
            transport_cc,
            rtx,
            red,
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
