//! The codecs, RTP header extensions and interceptors both ends of a Switchboard media
//! connection use, so that the SFU and its clients negotiate the same things.

use std::sync::Arc;

use webrtc::api::interceptor_registry::{configure_nack, configure_rtcp_reports, configure_twcc_receiver_only};
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{API, APIBuilder};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::interceptor::registry::Registry;
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};

use crate::error::{Error, Result, WebRtcContext as _};
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

/// Payload types the SFU uses for audio on every connection: Opus, and RED (RFC 2198)
/// carrying Opus where agreed. Forwarded audio packets carry one of these two.
pub const OPUS_PT: u8 = 111;
pub const RED_PT: u8 = 63;

/// Opus with redundancy (RFC 2198), as browsers offer it.
pub fn red() -> RTCRtpCodecCapability {
    RTCRtpCodecCapability {
        mime_type: "audio/red".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: format!("{OPUS_PT}/{OPUS_PT}"),
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

/// Constrained baseline, packetization mode 1: what browsers offer first.
pub fn h264() -> RTCRtpCodecCapability {
    video("video/H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f")
}

/// The capability for a codec by MIME type, as registered here.
pub fn capability(mime: &str) -> Option<RTCRtpCodecCapability> {
    codecs().into_iter().map(|(c, _, _)| c).find(|c| c.mime_type.eq_ignore_ascii_case(mime))
}

fn codecs() -> Vec<(RTCRtpCodecCapability, u8, RTPCodecType)> {
    vec![
        (opus(), OPUS_PT, RTPCodecType::Audio),
        (vp8(), 96, RTPCodecType::Video),
        (video("video/VP9", "profile-id=0"), 98, RTPCodecType::Video),
        (h264(), 102, RTPCodecType::Video),
    ]
}

/// How a peer connection reaches the network.
#[derive(Clone, Default)]
pub struct NetworkOptions {
    /// Only loopback candidates (tests, local demos).
    pub loopback_only: bool,
    /// Addresses announced instead of the local ones (NAT, node external IPs).
    pub announced_ips: Vec<String>,
    /// Only these local addresses gather candidates (empty: every interface). A
    /// host-network SFU sits on a node with several interfaces (the node's address,
    /// the CNI bridge, veths): with announced addresses each would map to the same
    /// announced candidate, and webrtc-rs closes the duplicates, which closes the
    /// UDP mux connection they share, and ICE never completes.
    pub local_ips: Vec<std::net::IpAddr>,
    /// All connections share this UDP socket (the SFU's single media port).
    pub udp_mux: Option<Arc<dyn webrtc::ice::udp_mux::UDPMux + Send + Sync>>,
    /// Answer NACKs itself instead of with webrtc-rs's responder. The SFU forwards
    /// retransmissions late, out of order; the stock responder's buffer treats an older
    /// packet as the newest and forgets everything after it.
    pub own_retransmissions: bool,
    /// Receive side of publishers' connections: negotiate transport-cc and send TWCC
    /// feedback, so a browser's send-side estimate (GCC) can grow and its encoder turns
    /// on every simulcast layer. Not for connections the SFU sends on: its layer choice
    /// reads subscribers' REMB, which a browser stops sending once transport-cc is agreed.
    pub publisher_feedback: bool,
    /// Send side of subscribers' connections: offer transport-cc (the header extension
    /// and the feedback, on audio and video), so a browser reports every packet's arrival
    /// and the SFU estimates the downlink itself. The SFU numbers the packets (no
    /// interceptor here); a peer that does not agree to it keeps sending REMB.
    pub subscriber_feedback: bool,
    /// Retransmission streams (RTX, RFC 4588) for video: offered and answered, and sent
    /// where the connection sends video. The SFU's subscriber connections send
    /// retransmissions and probes on them.
    pub rtx: bool,
    /// Audio redundancy (RED, RFC 2198, over Opus) offered and answered. The SFU takes
    /// it from publishers that send it and forwards it to subscribers that agree (the
    /// others get the primary frames as plain Opus); test clients leave it off, as they
    /// neither encode nor decode it.
    pub red: bool,
    /// Drop this share of outgoing video RTP (impairment tests).
    pub send_loss: Option<f64>,
    /// Drop this share of incoming video RTP at the socket (impairment tests); each
    /// connection then gets a socket of its own.
    pub receive_loss: Option<f64>,
}

/// A webrtc-rs API with Switchboard's codecs, extensions and interceptors.
pub fn build_api(net: &NetworkOptions) -> Result<API> {
    let mut media = MediaEngine::default();
    for (capability, payload_type, kind) in codecs() {
        media
            .register_codec(RTCRtpCodecParameters { capability, payload_type, ..Default::default() }, kind)
            .during("registering a codec")?;
    }
    for uri in VIDEO_EXTENSIONS {
        media
            .register_header_extension(RTCRtpHeaderExtensionCapability { uri: uri.into() }, RTPCodecType::Video, None)
            .during("registering a video header extension")?;
    }
    // The MID extension on audio too: RTP that arrives before the receiver has opened its
    // SSRC (the answer is barely out) is then matched to its transceiver by MID.
    for uri in [AUDIO_LEVEL_URI, VIDEO_EXTENSIONS[0]] {
        media
            .register_header_extension(RTCRtpHeaderExtensionCapability { uri: uri.into() }, RTPCodecType::Audio, None)
            .during("registering an audio header extension")?;
    }
    if net.red {
        media
            .register_codec(
                RTCRtpCodecParameters { capability: red(), payload_type: RED_PT, ..Default::default() },
                RTPCodecType::Audio,
            )
            .during("registering RED")?;
    }
    if net.rtx {
        for (apt, pt) in [(96, 97), (98, 99), (102, 103)] {
            let capability = RTCRtpCodecCapability {
                mime_type: "video/rtx".into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: format!("apt={apt}"),
                rtcp_feedback: vec![],
            };
            media
                .register_codec(
                    RTCRtpCodecParameters { capability, payload_type: pt, ..Default::default() },
                    RTPCodecType::Video,
                )
                .during("registering RTX")?;
        }
    }
    let mut registry = Registry::new();
    if let Some(rate) = net.send_loss {
        // First in the chain: innermost, below the NACK responder's buffer.
        registry.add(Box::new(LossInterceptorBuilder { rate }));
    }
    if net.own_retransmissions {
        for parameter in ["", "pli"] {
            media.register_feedback(
                RTCPFeedback { typ: "nack".into(), parameter: parameter.into() },
                RTPCodecType::Video,
            );
        }
        registry.add(Box::new(webrtc::interceptor::nack::generator::Generator::builder()));
    } else {
        registry = configure_nack(registry, &mut media);
    }
    registry = configure_rtcp_reports(registry);
    if net.publisher_feedback {
        registry = configure_twcc_receiver_only(registry, &mut media).during("configuring TWCC feedback")?;
    } else if net.subscriber_feedback {
        for kind in [RTPCodecType::Video, RTPCodecType::Audio] {
            media.register_feedback(RTCPFeedback { typ: "transport-cc".into(), parameter: String::new() }, kind);
            media
                .register_header_extension(
                    RTCRtpHeaderExtensionCapability { uri: webrtc::sdp::extmap::TRANSPORT_CC_URI.into() },
                    kind,
                    None,
                )
                .during("registering the transport-cc header extension")?;
        }
    }

    let mut settings = SettingEngine::default();
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    settings.set_network_types(vec![webrtc::ice::network_type::NetworkType::Udp4]);
    settings.enable_sender_rtx(net.rtx);
    if net.loopback_only {
        settings.set_include_loopback_candidate(true);
        settings.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    }
    if !net.local_ips.is_empty() {
        let local = net.local_ips.clone();
        settings.set_ip_filter(Box::new(move |ip| local.contains(&ip)));
    }
    if !net.announced_ips.is_empty() {
        settings.set_nat_1to1_ips(
            net.announced_ips.clone(),
            webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType::Host,
        );
    }
    if let Some(mux) = &net.udp_mux {
        settings.set_udp_network(webrtc::ice::udp_network::UDPNetwork::Muxed(mux.clone()));
    }
    Ok(APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build())
}

/// The negotiated id of the audio-level extension on a receiver, if any.
pub async fn audio_level_id(receiver: &webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver) -> Option<u8> {
    receiver.get_parameters().await.header_extensions.iter().find(|e| e.uri == AUDIO_LEVEL_URI).map(|e| e.id as u8)
}

/// An API for one connection whose incoming video loses `rate` at the socket.
pub async fn lossy_api(net: &NetworkOptions, rate: f64) -> Result<API> {
    let ip = if net.loopback_only { std::net::Ipv4Addr::LOCALHOST } else { std::net::Ipv4Addr::UNSPECIFIED };
    let bind = std::net::SocketAddr::from((ip, 0));
    let conn = crate::loss::LossyConn::bind(bind, rate)
        .await
        .map_err(|source| Error::Io { what: format!("binding a lossy UDP socket on {bind}"), source })?;
    let mux = webrtc::ice::udp_mux::UDPMuxDefault::new(webrtc::ice::udp_mux::UDPMuxParams::new(conn));
    build_api(&NetworkOptions { udp_mux: Some(mux), receive_loss: None, ..net.clone() })
}

/// How long a sender holds back media after its connection comes up.
///
/// webrtc-rs opens a receiver's SRTP stream from a queued task once DTLS is up; RTP that
/// arrives first is taken by its simulcast prober, which fails for non-simulcast tracks
/// and closes the stream under the receiver, silencing the track for good. Holding
/// back a moment (and asking for a keyframe after) avoids the race.
pub const CONNECT_HOLDBACK: std::time::Duration = std::time::Duration::from_millis(300);

/// After applying an answer on a connected peer connection: waits until every
/// receiving transceiver has opened its streams, so that the remote, which starts
/// sending when it gets the answer, cannot race the receivers (see [`CONNECT_HOLDBACK`]).
/// Gives up quietly after `timeout`.
pub async fn wait_receivers_started(pc: &webrtc::peer_connection::RTCPeerConnection, timeout: std::time::Duration) {
    use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
    use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
    if pc.connection_state() != RTCPeerConnectionState::Connected {
        return; // first negotiation: the streams open only once DTLS is up
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut ready = true;
        for t in pc.get_transceivers().await {
            let receiving =
                matches!(t.direction(), RTCRtpTransceiverDirection::Recvonly | RTCRtpTransceiverDirection::Sendrecv);
            if receiving && t.mid().is_some() && t.receiver().await.tracks().await.is_empty() {
                ready = false;
                break;
            }
        }
        if ready || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
