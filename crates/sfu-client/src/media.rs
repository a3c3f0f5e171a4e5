//! The codecs, RTP header extensions and interceptors both ends of a Switchboard media
//! connection use, so that the SFU and its clients negotiate the same things.

use std::sync::Arc;

use webrtc::api::interceptor_registry::{configure_nack, configure_rtcp_reports};
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::interceptor::registry::Registry;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::RTCPFeedback;

use crate::loss::LossInterceptorBuilder;

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const VIDEO_EXTENSIONS: [&str; 3] = [
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
];

pub fn opus() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

fn video_feedback() -> Vec<RTCPFeedback> {
    // REMB, not transport-cc: the SFU chooses layers from the receiver's estimate.
    [("goog-remb", ""), ("ccm", "fir"), ("nack", ""), ("nack", "pli")]
        .into_iter()
        .map(|(typ, parameter)| RTCPFeedback { typ: typ.into(), parameter: parameter.into() })
        .collect()
}

fn video(mime: &str, fmtp: &str) -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: mime.into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: fmtp.into(),
        rtcp_feedback: video_feedback(),
    }
}

pub fn vp8() -> RTCRtpCodecCapability {
    video("video/VP8", "")
}

/// The capability for a codec by MIME type, as registered here.
pub fn capability(mime: &str) -> Option<RTCRtpCodecCapability> {
    codecs().into_iter().map(|(c, _, _)| c).find(|c| c.mime_type.eq_ignore_ascii_case(mime))
}

fn codecs() -> Vec<(RTCRtpCodecCapability, u8, RTPCodecType)> {
    vec![
        (opus(), 111, RTPCodecType::Audio),
        (vp8(), 96, RTPCodecType::Video),
        (video("video/VP9", "profile-id=0"), 98, RTPCodecType::Video),
        (
            video("video/H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
            102,
            RTPCodecType::Video,
        ),
    ]
}

/// How a peer connection reaches the network.
#[derive(Clone, Default)]
pub struct NetworkOptions {
    /// Only loopback candidates (tests, local demos).
    pub loopback_only: bool,
    /// Addresses announced instead of the local ones (NAT, node external IPs).
    pub announced_ips: Vec<String>,
    /// All connections share this UDP socket (the SFU's single media port).
    pub udp_mux: Option<Arc<dyn webrtc::ice::udp_mux::UDPMux + Send + Sync>>,
    /// Drop this share of RTP in both directions before NACK sees it (impairment tests).
    pub loss: Option<f64>,
}

/// A webrtc-rs API with Switchboard's codecs, extensions and interceptors.
pub fn build_api(net: &NetworkOptions) -> anyhow::Result<API> {
    let mut media = MediaEngine::default();
    for (capability, payload_type, kind) in codecs() {
        media.register_codec(RTCRtpCodecParameters { capability, payload_type, ..Default::default() }, kind)?;
    }
    for uri in VIDEO_EXTENSIONS {
        media.register_header_extension(RTCRtpHeaderExtensionCapability { uri: uri.into() }, RTPCodecType::Video, None)?;
    }
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability { uri: AUDIO_LEVEL_URI.into() },
        RTPCodecType::Audio,
        None,
    )?;
    let mut registry = Registry::new();
    if let Some(rate) = net.loss {
        // First in the chain: innermost, next to the network, so NACK sees the gaps.
        registry.add(Box::new(LossInterceptorBuilder { rate }));
    }
    registry = configure_nack(registry, &mut media);
    registry = configure_rtcp_reports(registry);

    let mut settings = SettingEngine::default();
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    settings.set_network_types(vec![webrtc::ice::network_type::NetworkType::Udp4]);
    if net.loopback_only {
        settings.set_include_loopback_candidate(true);
        settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    }
    if !net.announced_ips.is_empty() {
        settings.set_nat_1to1_ips(net.announced_ips.clone(), webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType::Host);
    }
    if let Some(mux) = &net.udp_mux {
        settings.set_udp_network(webrtc::ice::udp_network::UDPNetwork::Muxed(mux.clone()));
    }
    Ok(APIBuilder::new().with_media_engine(media).with_interceptor_registry(registry).with_setting_engine(settings).build())
}

/// The negotiated id of the audio-level extension on a receiver, if any.
pub async fn audio_level_id(receiver: &webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver) -> Option<u8> {
    receiver
        .get_parameters()
        .await
        .header_extensions
        .iter()
        .find(|e| e.uri == AUDIO_LEVEL_URI)
        .map(|e| e.id as u8)
}
