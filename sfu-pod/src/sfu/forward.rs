//! The packet path: incoming tracks into the core and out to each subscription's own
//! queue, and what subscribers send back about their tracks (PLI, FIR, NACK, REMB).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use switchboard_sfu_client::media;
use switchboard_sfu_core::codec::{red_primary, set_vp8_numbers};
use switchboard_sfu_core::room::ESTIMATE_HEADROOM;
use switchboard_sfu_core::{
    Codec, Input, ParticipantKind, RoomError, RtpMeta, Source, SubscriptionId, TrackHandle, TrackInfo,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

use super::Sfu;
use super::convert::from_api_source;
use super::peer::Peer;
use super::retransmit::RetransmitBuffer;
use super::room_driver::{RoomEntry, Write};
use crate::metrics::Metrics;
use crate::subscriber_track::SubscriberTrack;
use crate::transport_cc::TransportCc;

/// Packets a subscription may have queued before new ones are dropped (~1 s of HD video).
const SINK_QUEUE: usize = 256;
/// Probe copies a subscription may have queued (about a cluster's worth, ~18 KB): they
/// go out only when no media waits, so more would only go stale.
const PROBE_QUEUE: usize = 16;

/// Packets waiting for one subscription's connection. Each subscription has its own
/// queue and writer task, so a subscriber whose connection stalls (still connecting,
/// congested, gone) drops its own packets and never holds up the others. The writer
/// keeps what it sent to answer the subscriber's NACKs.
///
/// Media and retransmissions go first; probe copies only when nothing else waits, and only
/// while their probe cluster sends: a probe must find room on the path, not take it from
/// the pictures (libwebrtc's pacer likewise sends padding last).
#[derive(Clone)]
pub(super) struct Sink {
    queue: mpsc::Sender<(Packet, Send)>,
    probes: mpsc::Sender<Packet>,
    sent: Arc<RetransmitBuffer>,
}

/// What a packet in a sink's queue is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Send {
    Media,
    /// A NACK's answer: on the retransmission stream where there is one, else as before.
    Retransmission,
    /// A copy to probe the path: on the retransmission stream only.
    Probe,
}

impl Sink {
    pub(super) fn spawn(track: Arc<SubscriberTrack>, sending: Arc<AtomicBool>) -> Self {
        let (queue, mut rx) = mpsc::channel::<(Packet, Send)>(SINK_QUEUE);
        let (probes, mut probe_rx) = mpsc::channel::<Packet>(PROBE_QUEUE);
        let sent = Arc::new(RetransmitBuffer::new());
        let history = sent.clone();
        tokio::spawn(async move {
            loop {
                let (mut p, send) = tokio::select! {
                    biased;
                    next = rx.recv() => match next {
                        Some(next) => next,
                        None => return,
                    },
                    Some(p) = probe_rx.recv() => (p, Send::Probe),
                };
                if !sending.load(Ordering::Relaxed) || (send == Send::Probe && !track.probe_wanted()) {
                    continue;
                }
                let wait = track.pace(p.payload.len() + 40);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let written = match send {
                    Send::Media => track.write(&mut p).await,
                    Send::Retransmission => track.write_again(&mut p, true).await,
                    Send::Probe => track.write_again(&mut p, false).await,
                };
                match written {
                    Err(webrtc::Error::ErrClosedPipe) => return,
                    Err(e) => debug!(track = track.id(), error = %e, "write failed"),
                    Ok(_) => {}
                }
                if send == Send::Media {
                    history.keep(p);
                }
            }
        });
        Self { queue, probes, sent }
    }

    /// Queues copies of the packets sent last, about `bytes` of them, to probe the path;
    /// returns the bytes queued.
    pub(super) fn probe(&self, bytes: usize) -> usize {
        self.sent
            .recent(bytes)
            .into_iter()
            .filter_map(|p| Some(p.payload.len()).filter(|_| self.probes.try_send(p).is_ok()))
            .sum()
    }

    /// Queues the packets a NACK names again, those still kept; returns how many.
    fn resend(&self, seqs: impl Iterator<Item = u16>) -> usize {
        self.sent
            .find(seqs)
            .into_iter()
            .filter(|p| self.queue.try_send((p.clone(), Send::Retransmission)).is_ok())
            .count()
    }
}

/// Reads one incoming track (or simulcast layer) and forwards what the core says.
pub(super) async fn forward_track(
    sfu: Arc<Sfu>,
    room: Arc<RoomEntry>,
    peer: Arc<Peer>,
    pc: Weak<RTCPeerConnection>,
    track: Arc<TrackRemote>,
    receiver: Arc<RTCRtpReceiver>,
) {
    let mime = track.codec().capability.mime_type.clone();
    let Some(info) = track_info(&peer, &track, &mime) else {
        warn!(participant = %peer.id, %mime, "unsupported codec: track ignored");
        return;
    };
    let id = info.id.clone();
    let rid = track.rid().to_owned();
    let level_id = media::audio_level_id(&receiver).await;
    let red_pt = receiver
        .get_parameters()
        .await
        .codecs
        .iter()
        .find(|c| c.capability.mime_type.eq_ignore_ascii_case("audio/red"))
        .map(|c| c.payload_type);
    let incoming = Incoming { level_id, audio: track.kind() == RTPCodecType::Audio, red_pt };
    let (handle, layer) = match register(&room, &peer, info, &rid, pc, track.ssrc()) {
        Ok(r) => r,
        Err(e @ (RoomError::NotDeclared(_) | RoomError::KindMismatch(..) | RoomError::PublishNotAllowed(_))) => {
            // Not read: its packets stay in the receiver's bounded buffer, then drop.
            if peer.refused.lock().unwrap().insert(id.clone()) {
                sfu.metrics.undeclared_tracks.inc();
                warn!(room = %room.name, participant = %peer.id, track = %id, %mime, error = %e,
                    "undeclared track dropped: nothing of it is forwarded");
            } else {
                debug!(room = %room.name, participant = %peer.id, track = %id, rid = %rid, "undeclared track dropped");
            }
            return;
        }
        Err(e) => {
            warn!(participant = %peer.id, error = %e, "track refused");
            return;
        }
    };
    debug!(room = %room.name, participant = %peer.id, track = %id, rid = %rid, %mime, "forwarding");
    sfu.recount();
    let mut writes: Vec<Write> = Vec::new();
    while let Ok((mut pkt, _)) = track.read_rtp().await {
        let forwarded = forward_packet(&sfu, &room, (handle, layer), incoming, &mut pkt, &mut writes);
        if forwarded && room.closed.load(Ordering::Relaxed) {
            break;
        }
    }
    debug!(room = %room.name, participant = %peer.id, track = %id, rid = %rid, "track ended");
}

/// What the core is told about an incoming track: the source and origin its publisher
/// described, else a camera or a microphone and, from a relay, the stream id as origin
/// (an edge's relay shows tracks as published by their origin participant).
fn track_info(peer: &Peer, track: &TrackRemote, mime: &str) -> Option<TrackInfo> {
    let codec = Codec::from_mime(mime)?;
    let id = track.id();
    let description = peer.descriptions.lock().unwrap().get(&id).cloned();
    let default_source = if track.kind() == RTPCodecType::Video { Source::Camera } else { Source::Microphone };
    let source = description.as_ref().map(|d| from_api_source(d.source)).unwrap_or(default_source);
    let origin =
        description.and_then(|d| d.origin).or_else(|| (peer.kind == ParticipantKind::Relay).then(|| track.stream_id()));
    Some(TrackInfo { id, codec, source, origin })
}

/// Publishes the track with its first layer (a track id another participant holds is
/// refused), and registers this layer and where it comes from.
fn register(
    room: &RoomEntry,
    peer: &Peer,
    info: TrackInfo,
    rid: &str,
    pc: Weak<RTCPeerConnection>,
    ssrc: u32,
) -> Result<(TrackHandle, usize), RoomError> {
    room.with_core(|core| {
        let handle = match core.room.track_handle(&info.id) {
            Some(h) if core.room.track_publisher(h) == Some(&peer.id) => h,
            Some(_) => return Err(RoomError::TrackExists(info.id)),
            None => core.room.handle_input(Input::Publish { participant: &peer.id, info })?.track().expect("a handle"),
        };
        let layer = core.room.handle_input(Input::AddLayer { track: handle, rid })?.layer().expect("an index");
        core.add_source(handle, layer, pc, ssrc);
        Ok((handle, layer))
    })
}

/// How an incoming track's packets are read.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Incoming {
    /// The audio-level extension's id (RFC 6464), where negotiated.
    pub level_id: Option<u8>,
    pub audio: bool,
    /// The publisher's payload type for RED (RFC 2198), where it sends it.
    pub red_pt: Option<u8>,
}

/// Feeds one packet to the core and queues a renumbered copy for every subscription it
/// names (and, in a mixed room, hands a voice in the mix to the mixer); returns whether
/// there was any forward. An audio packet leaves with [`media::RED_PT`] when it carries
/// RED, else [`media::OPUS_PT`], so each subscriber's track knows which it is.
pub(super) fn forward_packet(
    sfu: &Sfu,
    room: &RoomEntry,
    (track, layer): (TrackHandle, usize),
    incoming: Incoming,
    pkt: &mut Packet,
    writes: &mut Vec<Write>,
) -> bool {
    let red = incoming.audio && incoming.red_pt == Some(pkt.header.payload_type);
    if incoming.audio {
        pkt.header.payload_type = if red { media::RED_PT } else { media::OPUS_PT };
    }
    let audio_level =
        incoming.level_id.and_then(|id| pkt.header.get_extension(id)).and_then(|b| b.first().map(|v| v & 0x7f));
    let size = pkt.payload.len() + 12;
    let packet =
        RtpMeta { seq: pkt.header.sequence_number, ts: pkt.header.timestamp, payload: &pkt.payload, size, audio_level };
    if room.rtp(track, layer, packet, writes)
        && let Some(tap) = room.mixer()
    {
        // The mixer decodes Opus: a RED packet's primary frame (a malformed one, nothing).
        let frame = if red {
            pkt.payload.first().and_then(|b| red_primary(&pkt.payload, b & 0x7f)).map(|f| pkt.payload.slice_ref(f))
        } else {
            Some(pkt.payload.clone())
        };
        if let Some(frame) = frame {
            tap.send(track, frame);
        }
    }
    sfu.metrics.packets_in.inc();
    sfu.metrics.bytes_in.inc_by(size as u64);
    if writes.is_empty() {
        return false;
    }
    strip_extensions(&mut pkt.header);
    sfu.metrics.packets_out.inc_by(writes.len() as u64);
    sfu.metrics.bytes_out.inc_by((writes.len() * size) as u64);
    for (sink, seq, ts, vp8) in writes.drain(..) {
        let mut out = pkt.clone();
        out.header.sequence_number = seq;
        out.header.timestamp = ts;
        if let Some(numbers) = vp8 {
            let mut payload = out.payload.to_vec();
            set_vp8_numbers(&mut payload, numbers);
            out.payload = payload.into();
        }
        if sink.queue.try_send((out, Send::Media)).is_err() {
            sfu.metrics.queue_drops.inc();
        }
    }
    true
}

/// Header extensions are per connection (ids differ): each subscriber connection's
/// sender adds its own. The parsed block's padding goes too: left over, it makes
/// webrtc-rs size the sender's MID extension wrong for two-digit MIDs ("10" on), and
/// every write of that track fails to marshal.
fn strip_extensions(header: &mut Header) {
    header.extension = false;
    header.extensions.clear();
    header.extension_profile = 0;
    header.extensions_padding = 0;
}

/// PLIs, FIRs, NACKs, transport feedback, REMBs and receiver reports a subscriber sends
/// about one of its tracks. `clock_rate` is the track's RTP clock; `relay`: the subscriber
/// is another SFU (its reports are not a participant's quality). `transport`: the
/// subscriber connection's send-side estimate; once it has feedback, REMB is ignored.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_subscriber_rtcp(
    room: Weak<RoomEntry>,
    metrics: Metrics,
    subscriber: String,
    subscription: SubscriptionId,
    sender: Arc<RTCRtpSender>,
    clock_rate: u32,
    relay: bool,
    transport: Arc<TransportCc>,
) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        let Some(room) = room.upgrade() else { return };
        for p in packets {
            tracing::trace!(?p, "subscriber rtcp");
            let any = p.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                let _ = room.input(Input::KeyframeRequest { subscription, now: Instant::now() });
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                if let Some(sink) = room.sink(subscription) {
                    let resent = sink.resend(nack.nacks.iter().flat_map(|pair| pair.packet_list()));
                    metrics.retransmissions.inc_by(resent as u64);
                }
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                if !relay {
                    let arrival = crate::quality::ntp_middle(std::time::SystemTime::now());
                    for block in &rr.reports {
                        metrics.quality.observe(&crate::quality::from_block(block, clock_rate, arrival));
                    }
                }
            } else if let Some(feedback) = any.downcast_ref::<TransportLayerCc>() {
                metrics.transport_feedbacks.inc();
                if let Some(bps) = transport.on_feedback(feedback) {
                    let now = Instant::now();
                    let wanted = room.with_core(|core| {
                        let estimate =
                            Input::Estimate { subscriber: &subscriber, bps, probing: transport.probes(), now };
                        let _ = core.room.handle_input(estimate);
                        core.room.wanted_bitrate(&subscriber, now)
                    });
                    transport.set_wanted((wanted as f64 / ESTIMATE_HEADROOM) as u64);
                    debug!(%subscriber, estimate = bps, wanted, "send-side estimate");
                }
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>()
                && !transport.has_feedback()
            {
                let bps = remb.bitrate as u64;
                let _ =
                    room.input(Input::Estimate { subscriber: &subscriber, bps, probing: false, now: Instant::now() });
            }
        }
    }
}
