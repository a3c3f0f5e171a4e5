//! A participant on an SFU: a publisher connection it offers, a subscriber connection
//! the SFU offers, the event long-poll that carries the SFU's offers and room events,
//! synthetic media sources, and counters for everything received.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use switchboard_sfu_api::{
    Candidate, ConnectionRole, Event, JoinRequest, OfferRequest, ParticipantKind, Source, TrackDescription,
};
use tokio::sync::Notify;
use webrtc::api::API;
use webrtc::ice_transport::ice_candidate::{RTCIceCandidate, RTCIceCandidateInit};
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtp::extension::HeaderExtension;
use webrtc::rtp::extension::audio_level_extension::AudioLevelExtension;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};
use webrtc::track::track_remote::TrackRemote;

use crate::encoded::{EncodedCodec, EncodedMedia};
use crate::error::{Error, Result, WebRtcContext as _};
use crate::http::SfuApi;
use crate::media::{self, NetworkOptions};
use crate::signal::{EventsError, MediaSignal};
use switchboard_sfu_core::codec::{Codec, is_keyframe_start};

/// Marks payloads written by [`Participant`] sources, so receivers can read the layer
/// and the send time back.
pub const MAGIC: &[u8; 4] = b"SWB1";

/// A synthetic source to publish.
#[derive(Clone, Debug)]
pub struct Publish {
    pub id: String,
    pub kind: PublishKind,
    pub source: Source,
}

#[derive(Clone, Debug)]
pub enum PublishKind {
    /// Opus-framed audio, 50 packets/s, with an RFC 6464 level.
    Audio { level: u8 },
    /// VP8-framed video: one packet per frame. Simulcast sends three layers
    /// (q, h, f) at 15/30/60 packets/s of 400/700/1100 bytes (≈48/168/528 kbps).
    Video { simulcast: bool, packets_per_second: u32, size: usize },
    /// Real encoded media (VP8, H.264 or Opus), played in real time and looped.
    Encoded(EncodedMedia),
}

impl Publish {
    pub fn audio(id: &str) -> Self {
        Self { id: id.into(), kind: PublishKind::Audio { level: 40 }, source: Source::Microphone }
    }
    pub fn video(id: &str) -> Self {
        Self {
            id: id.into(),
            kind: PublishKind::Video { simulcast: false, packets_per_second: 30, size: 800 },
            source: Source::Camera,
        }
    }
    /// Real media: a camera for video, a microphone for Opus.
    pub fn encoded(id: &str, media: EncodedMedia) -> Self {
        let source = if media.video() { Source::Camera } else { Source::Microphone };
        Self { id: id.into(), kind: PublishKind::Encoded(media), source }
    }
    pub fn simulcast(id: &str) -> Self {
        Self {
            id: id.into(),
            kind: PublishKind::Video { simulcast: true, packets_per_second: 0, size: 0 },
            source: Source::Camera,
        }
    }
}

/// Simulcast layers the synthetic publisher sends: (rid, packets/s, bytes).
pub const SIMULCAST_LAYERS: [(&str, u32, usize); 3] = [("q", 15, 400), ("h", 30, 700), ("f", 60, 1100)];

#[derive(Clone, Default)]
pub struct JoinOptions {
    pub kind: ParticipantKind,
    /// Default: subscribe to everything.
    pub manual_subscribe: bool,
    pub publish: Vec<Publish>,
    /// Joins as one that may not publish (`publish: false` on the join): the SFU refuses
    /// an offer, so with `publish` sources the join fails.
    pub viewer: bool,
    /// Ids of `publish` sources left out of the join's declared tracks: they are in the
    /// offer and send media, as a hand-made SDP would, and the SFU drops them.
    pub undeclared: Vec<String>,
    /// Ids of `publish` sources declared muted: the SFU forwards nothing of them until
    /// they are unmuted through its API.
    pub muted: Vec<String>,
    pub net: NetworkOptions,
    /// Gets every received packet and sender report as well (a recorder's writers).
    pub sink: Option<Arc<dyn MediaSink>>,
}

/// A received track, as a [`MediaSink`] sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SinkTrack {
    /// The publisher's track id, and the publisher's participant id.
    pub id: String,
    pub publisher: String,
    pub video: bool,
    pub mime_type: String,
    pub clock_rate: u32,
}

/// Receives media as it arrives, on the receiving tasks: implementations must not block
/// for long (buffered file writes are fine).
pub trait MediaSink: Send + Sync {
    fn rtp(&self, track: &SinkTrack, packet: &webrtc::rtp::packet::Packet);
    /// An RTCP sender report: `ntp_time` (NTP 32.32 format) is when `rtp_time` was sampled.
    fn sender_report(&self, track: &SinkTrack, ntp_time: u64, rtp_time: u32);
}

/// What arrived on one received track.
#[derive(Clone, Debug, Default)]
pub struct ReceivedTrack {
    pub publisher: String,
    pub video: bool,
    /// The negotiated codec, which says how to find keyframes; `None`: VP8 is assumed.
    pub codec: Option<Codec>,
    pub packets: u64,
    pub bytes: u64,
    pub ssrcs: HashSet<u32>,
    /// Distinct extended sequence numbers seen (0 = the first packet), and the
    /// lowest and highest of them (retransmissions may predate the first).
    pub unique_seqs: HashSet<i64>,
    pub first_seq: Option<u16>,
    pub lowest_ext_seq: i64,
    pub highest_ext_seq: i64,
    pub keyframes: u64,
    /// Simulcast layer byte of the last packet that advanced the stream (0 = q), from
    /// the synthetic payload, and such packets per layer (retransmissions not counted).
    pub last_layer: Option<u8>,
    pub packets_by_layer: [u64; 3],
    /// Publisher send time to arrival, microseconds (synthetic payloads only).
    pub latencies_us: Vec<u32>,
    /// Sequence numbers that went backwards by more than a reorder window.
    pub discontinuities: u64,
    last_ext: i64,
    /// Layer changes seen: (from, to, whether the first packet of the new layer was a keyframe).
    pub layer_switches: Vec<(u8, u8, bool)>,
    last_seq: Option<u16>,
}

impl ReceivedTrack {
    /// Sequence numbers missing between the first and the highest seen.
    pub fn missing(&self) -> i64 {
        self.missing_before(0)
    }

    /// Sequence numbers missing between the first packet received and `tail` before the
    /// highest (packets near the head may still be on their way back through NACK).
    /// Retransmissions of packets from before the first one do not widen the range.
    pub fn missing_before(&self, tail: u16) -> i64 {
        if self.unique_seqs.is_empty() {
            return 0;
        }
        let end = self.highest_ext_seq - tail as i64;
        (0..=end).filter(|i| !self.unique_seqs.contains(i)).count() as i64
    }

    /// Counts one received packet (for receivers outside [`Participant`]).
    pub fn record_packet(&mut self, seq: u16, ssrc: u32, payload: &[u8], size: usize, now_us: u64) {
        self.record(seq, ssrc, payload, size, now_us)
    }

    fn record(&mut self, seq: u16, ssrc: u32, payload: &[u8], size: usize, now_us: u64) {
        self.packets += 1;
        self.bytes += size as u64;
        self.ssrcs.insert(ssrc);
        // Extend 16-bit sequence numbers by the signed distance from the previous packet.
        let ext = match self.last_seq {
            None => 0,
            Some(last) => self.last_ext + seq.wrapping_sub(last) as i16 as i64,
        };
        if let Some(last) = self.last_seq
            && (seq.wrapping_sub(last) as i16) < -100
        {
            self.discontinuities += 1;
        }
        // Retransmissions arrive late, out of order: only packets that advance the
        // stream say which layer it is on.
        let advancing = self.first_seq.is_none() || ext > self.highest_ext_seq;
        if self.first_seq.is_none() {
            self.first_seq = Some(seq);
            self.lowest_ext_seq = ext;
            self.highest_ext_seq = ext;
        }
        self.last_seq = Some(seq);
        self.last_ext = ext;
        self.lowest_ext_seq = self.lowest_ext_seq.min(ext);
        self.highest_ext_seq = self.highest_ext_seq.max(ext);
        self.unique_seqs.insert(ext);
        let info = parse_payload(payload);
        if info.as_ref().is_some_and(|i| i.keyframe)
            || (info.is_none() && self.video && keyframe_start(self.codec, payload))
        {
            self.keyframes += 1;
        }
        if let Some(info) = info {
            if advancing {
                if let Some(prev) = self.last_layer.filter(|l| *l != info.layer) {
                    self.layer_switches.push((prev, info.layer, info.keyframe));
                }
                self.last_layer = Some(info.layer);
                if let Some(n) = self.packets_by_layer.get_mut(info.layer as usize) {
                    *n += 1;
                }
            }
            if self.latencies_us.len() < 200_000 {
                self.latencies_us.push(now_us.saturating_sub(info.sent_us).min(u32::MAX as u64) as u32);
            }
        }
    }
}

/// The decoded header of a synthetic payload.
#[derive(Debug, PartialEq, Eq)]
pub struct PayloadInfo {
    pub keyframe: bool,
    pub layer: u8,
    pub sent_us: u64,
}

/// Whether a (non-synthetic) video payload of `codec` starts a keyframe; VP8 when unknown.
fn keyframe_start(codec: Option<Codec>, payload: &[u8]) -> bool {
    is_keyframe_start(codec.unwrap_or(Codec::Vp8), payload)
}

pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// A synthetic payload: VP8-shaped for video (so the SFU sees real keyframe flags),
/// followed by [`MAGIC`], the layer and the send time.
pub fn synthetic_payload(video: bool, keyframe: bool, layer: u8, size: usize) -> Bytes {
    let mut p = Vec::with_capacity(size.max(32));
    if video {
        p.push(0x10); // VP8 descriptor: start of partition 0
        if keyframe {
            p.extend_from_slice(&[0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a]);
            let (w, h) = [(320u16, 180u16), (640, 360), (1280, 720)][layer.min(2) as usize];
            p.extend_from_slice(&w.to_le_bytes());
            p.extend_from_slice(&h.to_le_bytes());
        } else {
            p.extend_from_slice(&[0x01, 0x00, 0x00]);
        }
    } else {
        p.push(0xfc); // an Opus TOC byte
    }
    p.extend_from_slice(MAGIC);
    p.push(layer);
    p.extend_from_slice(&now_us().to_be_bytes());
    p.resize(size.max(p.len()), 0xab);
    Bytes::from(p)
}

pub fn parse_payload(payload: &[u8]) -> Option<PayloadInfo> {
    let at = payload.windows(4).take(16).position(|w| w == MAGIC)?;
    let layer = *payload.get(at + 4)?;
    let sent = payload.get(at + 5..at + 13)?;
    let keyframe = payload.first() == Some(&0x10) && payload.get(1).is_some_and(|b| b & 1 == 0);
    Some(PayloadInfo { keyframe, layer, sent_us: u64::from_be_bytes(sent.try_into().ok()?) })
}

type Received = Arc<Mutex<HashMap<String, ReceivedTrack>>>;

pub struct Participant {
    pub id: String,
    pub room: String,
    signal: Arc<dyn MediaSignal>,
    publisher: Option<Arc<RTCPeerConnection>>,
    subscriber: Arc<RTCPeerConnection>,
    received: Received,
    events: Arc<Mutex<Vec<Event>>>,
    event_arrived: Arc<Notify>,
    /// Downlink cap reported by REMB (emulating a constrained link).
    downlink_cap: Arc<Mutex<Option<u64>>>,
    /// Remote video SSRCs, for REMB.
    video_ssrcs: Arc<Mutex<HashSet<u32>>>,
    /// Bumped to make the next video frame of every layer a keyframe (PLI, FIR).
    keyframe_wanted: Arc<AtomicU64>,
    /// Per published audio track: the level its packets carry.
    audio_levels: HashMap<String, Arc<AtomicU8>>,
    stop: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Participant {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Participant {
    /// Joins directly through the SFU's internal API.
    pub async fn join(api: SfuApi, room: &str, id: &str, opts: JoinOptions) -> Result<Self> {
        Self::join_via(Arc::new(api), room, id, opts).await
    }

    /// Joins through `signal` (the SFU's API, or signaling).
    pub async fn join_via(api: Arc<dyn MediaSignal>, room: &str, id: &str, opts: JoinOptions) -> Result<Self> {
        let webrtc_api = media::build_api(&opts.net)?;
        let subscriber = match opts.net.receive_loss {
            Some(rate) => {
                media::lossy_api(&opts.net, rate).await?.new_peer_connection(RTCConfiguration::default()).await
            }
            None => webrtc_api.new_peer_connection(RTCConfiguration::default()).await,
        }
        .during("creating the subscriber connection")?;
        let subscriber = Arc::new(subscriber);
        let received: Received = Arc::default();
        let video_ssrcs: Arc<Mutex<HashSet<u32>>> = Arc::default();
        let stop = Arc::new(Notify::new());
        let mut tasks = Vec::new();

        let (publisher, sources) = if opts.publish.is_empty() {
            (None, Vec::new())
        } else {
            let api = match opts.net.receive_loss {
                Some(rate) => media::lossy_api(&opts.net, rate).await?,
                None => media::build_api(&opts.net)?,
            };
            let (pc, sources) = publisher_connection(&api, &opts.publish).await?;
            (Some(pc), sources)
        };
        let keyframe_wanted = Arc::new(AtomicU64::new(0));
        // Media starts a moment after the publisher connection is up (media::CONNECT_HOLDBACK).
        let sending = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let Some(pc) = &publisher {
            let sending = sending.clone();
            let wanted = keyframe_wanted.clone();
            pc.on_peer_connection_state_change(Box::new(move |state| {
                let sending = sending.clone();
                let wanted = wanted.clone();
                Box::pin(async move {
                    if state == RTCPeerConnectionState::Connected && !sending.load(Ordering::SeqCst) {
                        tokio::spawn(async move {
                            tokio::time::sleep(media::CONNECT_HOLDBACK).await;
                            wanted.fetch_add(1, Ordering::SeqCst);
                            sending.store(true, Ordering::SeqCst);
                        });
                    }
                })
            }));
        }

        // Candidates found before the SFU knows us are held until the join returns.
        let (cand_tx, mut cand_rx) = tokio::sync::mpsc::unbounded_channel::<Candidate>();
        for (pc, target) in
            [(Some(&subscriber), ConnectionRole::Subscriber), (publisher.as_ref(), ConnectionRole::Publisher)]
        {
            let Some(pc) = pc else { continue };
            let tx = cand_tx.clone();
            pc.on_ice_candidate(Box::new(move |c: Option<RTCIceCandidate>| {
                let tx = tx.clone();
                Box::pin(async move {
                    if let Some(init) = c.and_then(|c| c.to_json().ok()) {
                        let _ = tx.send(Candidate {
                            target,
                            candidate: init.candidate,
                            sdp_mid: init.sdp_mid,
                            sdp_mline_index: init.sdp_mline_index,
                        });
                    }
                })
            }));
        }

        {
            let received = received.clone();
            let video_ssrcs = video_ssrcs.clone();
            let pc = Arc::downgrade(&subscriber);
            let sink = opts.sink.clone();
            subscriber.on_track(Box::new(move |track: Arc<TrackRemote>, receiver, _| {
                let received = received.clone();
                let video_ssrcs = video_ssrcs.clone();
                let pc = pc.clone();
                let sink = sink.clone();
                Box::pin(async move {
                    let video = track.kind() == RTPCodecType::Video;
                    if video {
                        video_ssrcs.lock().unwrap().insert(track.ssrc());
                    }
                    let key = track.id();
                    let publisher = track.stream_id();
                    tracing::debug!(track = %key, ssrc = track.ssrc(), "on_track");
                    let codec = track.codec();
                    let track_codec = Codec::from_mime(&codec.capability.mime_type);
                    let sink_track = SinkTrack {
                        id: key.clone(),
                        publisher: publisher.clone(),
                        video,
                        mime_type: codec.capability.mime_type.clone(),
                        clock_rate: codec.capability.clock_rate,
                    };
                    // Incoming RTCP reaches webrtc-rs's interceptors only when read: the
                    // receiver reports we send carry the last sender report (LSR) from
                    // which the SFU measures the round trip, as a browser's do.
                    let (sr_sink, sr_track) = (sink.clone(), sink_track.clone());
                    tokio::spawn(async move {
                        while let Ok((packets, _)) = receiver.read_rtcp().await {
                            let Some(sink) = &sr_sink else { continue };
                            for p in packets {
                                // Sender reports map RTP time to wall-clock time: a recorder syncs
                                // tracks by them. One sent before any packet maps RTP time 0 to
                                // the Unix epoch: meaningless.
                                if let Some(sr) = p
                                    .as_any()
                                    .downcast_ref::<webrtc::rtcp::sender_report::SenderReport>()
                                    .filter(|sr| sr.packet_count > 0)
                                {
                                    sink.sender_report(&sr_track, sr.ntp_time, sr.rtp_time);
                                }
                            }
                        }
                    });
                    tokio::spawn(async move {
                        let mut last_pli: Option<Instant> = None;
                        while let Ok((pkt, _)) = track.read_rtp().await {
                            if let Some(sink) = &sink {
                                sink.rtp(&sink_track, &pkt);
                            }
                            let size = pkt.payload.len() + 12;
                            // Like a decoder: no picture until a keyframe, so ask for one.
                            let undecodable = video
                                && received.lock().unwrap().get(&key).is_none_or(|r| r.keyframes == 0)
                                && !parse_payload(&pkt.payload).is_some_and(|p| p.keyframe)
                                && !keyframe_start(track_codec, &pkt.payload);
                            if undecodable && last_pli.is_none_or(|t| t.elapsed() > Duration::from_millis(500)) {
                                last_pli = Some(Instant::now());
                                if let Some(pc) = pc.upgrade() {
                                    let pli = PictureLossIndication { sender_ssrc: 1, media_ssrc: track.ssrc() };
                                    let _ = pc.write_rtcp(&[Box::new(pli)]).await;
                                }
                            }
                            let mut all = received.lock().unwrap();
                            let entry = all.entry(key.clone()).or_insert_with(|| ReceivedTrack {
                                publisher: publisher.clone(),
                                video,
                                codec: track_codec,
                                ..Default::default()
                            });
                            entry.record(pkt.header.sequence_number, pkt.header.ssrc, &pkt.payload, size, now_us());
                        }
                    });
                })
            }));
        }

        let offer = match &publisher {
            Some(pc) => {
                let offer = pc.create_offer(None).await.during("creating the publisher's offer")?;
                pc.set_local_description(offer).await.during("setting the publisher's offer")?;
                Some(local_sdp(pc, "reading the publisher's offer").await?)
            }
            None => None,
        };
        let join = JoinRequest {
            participant_id: id.into(),
            kind: opts.kind,
            auto_subscribe: !opts.manual_subscribe,
            publish: !opts.viewer,
            offer,
            tracks: opts
                .publish
                .iter()
                .filter(|p| !opts.undeclared.contains(&p.id))
                .map(|p| TrackDescription {
                    muted: opts.muted.contains(&p.id),
                    ..TrackDescription::new(&p.id, p.source)
                })
                .collect(),
        };
        let answer = api.join(room, join).await?;
        if let (Some(pc), Some(sdp)) = (&publisher, answer.answer) {
            let answer = RTCSessionDescription::answer(sdp).during("reading the SFU's answer to the join")?;
            pc.set_remote_description(answer).await.during("applying the SFU's answer to the join")?;
        }

        // Trickle our candidates.
        {
            let api = api.clone();
            let (room, id) = (room.to_owned(), id.to_owned());
            tasks.push(tokio::spawn(async move {
                while let Some(c) = cand_rx.recv().await {
                    if let Err(e) = api.candidate(&room, &id, c).await {
                        tracing::debug!(error = %e, "candidate not delivered");
                    }
                }
            }));
        }

        let events: Arc<Mutex<Vec<Event>>> = Arc::default();
        let event_arrived = Arc::new(Notify::new());
        tasks.push(tokio::spawn(event_loop(
            api.clone(),
            room.to_owned(),
            id.to_owned(),
            subscriber.clone(),
            publisher.clone(),
            events.clone(),
            event_arrived.clone(),
        )));

        let downlink_cap: Arc<Mutex<Option<u64>>> = Arc::default();
        tasks.push(tokio::spawn(remb_loop(subscriber.clone(), downlink_cap.clone(), video_ssrcs.clone())));

        let audio_levels: HashMap<String, Arc<AtomicU8>> =
            sources.iter().filter(|(s, _)| !s.video).map(|(s, _)| (s.id.clone(), s.level.clone())).collect();
        for (source, sender) in sources {
            let wanted = keyframe_wanted.clone();
            // Each simulcast encoding has its own RTCP stream (its PLIs and NACKs).
            let rids: Vec<Option<String>> = if source.layers.len() > 1 {
                source.layers.iter().map(|(t, ..)| t.rid().map(str::to_owned)).collect()
            } else {
                vec![None]
            };
            for rid in rids {
                let plis = sender.clone();
                let wanted_by_pli = keyframe_wanted.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        let read = match &rid {
                            Some(rid) => plis.read_rtcp_simulcast(rid).await,
                            None => plis.read_rtcp().await,
                        };
                        let Ok((packets, _)) = read else { return };
                        if packets.iter().any(|p| {
                            p.as_any().is::<PictureLossIndication>()
                                || p.as_any()
                                    .is::<webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest>()
                        }) {
                            wanted_by_pli.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }));
            }
            tasks.push(tokio::spawn(run_source(source, wanted, sending.clone())));
        }

        Ok(Self {
            id: id.into(),
            room: room.into(),
            signal: api,
            publisher,
            subscriber,
            received,
            events,
            event_arrived,
            downlink_cap,
            video_ssrcs,
            keyframe_wanted,
            audio_levels,
            stop,
            tasks,
        })
    }

    /// A copy of what arrived so far, by track id.
    pub fn received(&self) -> HashMap<String, ReceivedTrack> {
        self.received.lock().unwrap().clone()
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Reads the room's events seen so far in place (a long meeting's log is not copied).
    pub fn with_events<R>(&self, read: impl FnOnce(&[Event]) -> R) -> R {
        read(&self.events.lock().unwrap())
    }

    /// Waits until `check` holds for the received tracks, or fails after `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&HashMap<String, ReceivedTrack>) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if check(&self.received.lock().unwrap()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.timeout(what, timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for an event matching `check`.
    pub async fn wait_event(&self, what: &str, timeout: Duration, check: impl Fn(&Event) -> bool) -> Result<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.event_arrived.notified();
            if let Some(e) = self.events.lock().unwrap().iter().find(|e| check(e)) {
                return Ok(e.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::Timeout {
                    participant: self.id.clone(),
                    what: what.to_owned(),
                    after: timeout,
                    seen: format!("events: {:?}", self.events()),
                });
            }
        }
    }

    /// A [`Error::Timeout`] waiting `after` for `what` in received media, with a [`summary`](Self::summary).
    pub fn timeout(&self, what: &str, after: Duration) -> Error {
        Error::Timeout {
            participant: self.id.clone(),
            what: what.to_owned(),
            after,
            seen: format!("received: {:?}", self.summary()),
        }
    }

    /// (track, packets, keyframes, last layer, missing) per received track, for messages.
    pub fn summary(&self) -> Vec<(String, u64, u64, Option<u8>, i64)> {
        let mut v: Vec<_> = self
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|(k, t)| (k.clone(), t.packets, t.keyframes, t.last_layer, t.missing()))
            .collect();
        v.sort();
        v
    }

    /// Reports `cap` bits/s as the downlink estimate (REMB) from now on; `None` lifts it.
    pub fn set_downlink_cap(&self, cap: Option<u64>) {
        *self.downlink_cap.lock().unwrap() = cap;
    }

    /// Restarts ICE on both connections; media continues on the new candidates.
    pub async fn ice_restart(&self) -> Result<()> {
        if let Some(pc) = &self.publisher {
            let offer = pc
                .create_offer(Some(RTCOfferOptions { ice_restart: true, ..Default::default() }))
                .await
                .during("creating the ICE-restart offer")?;
            pc.set_local_description(offer).await.during("setting the ICE-restart offer")?;
            let sdp = local_sdp(pc, "reading the ICE-restart offer").await?;
            let answer =
                self.signal.publisher_offer(&self.room, &self.id, OfferRequest { sdp, tracks: vec![] }).await?;
            let answer = answer
                .answer
                .ok_or_else(|| Error::Protocol("the reply to the ICE-restart offer carried no answer".into()))?;
            let answer = RTCSessionDescription::answer(answer).during("reading the ICE-restart answer")?;
            pc.set_remote_description(answer).await.during("applying the ICE-restart answer")?;
        }
        self.signal.subscriber_restart(&self.room, &self.id).await?;
        Ok(())
    }

    /// ICE credentials of the publisher connection's current local description.
    pub async fn local_ufrags(&self) -> Vec<String> {
        let mut out = Vec::new();
        for pc in self.publisher.iter().chain(Some(&self.subscriber)) {
            if let Some(d) = pc.local_description().await {
                out.extend(d.sdp.lines().filter_map(|l| l.strip_prefix("a=ice-ufrag:")).map(str::to_owned));
            }
        }
        out
    }

    pub fn connection_states(&self) -> (Option<RTCPeerConnectionState>, RTCPeerConnectionState) {
        (self.publisher.as_ref().map(|p| p.connection_state()), self.subscriber.connection_state())
    }

    /// Asks the publishers for fresh keyframes on everything this participant sends.
    /// Sets the RFC 6464 level (0 = loudest, 127 = silence) the packets of published
    /// audio track `track` carry from now on; false when it publishes no such track.
    pub fn set_audio_level(&self, track: &str, level: u8) -> bool {
        let Some(l) = self.audio_levels.get(track) else { return false };
        l.store(level.min(127), Ordering::Relaxed);
        true
    }

    pub fn force_keyframe(&self) {
        self.keyframe_wanted.fetch_add(1, Ordering::SeqCst);
    }

    pub fn video_ssrcs(&self) -> Vec<u32> {
        self.video_ssrcs.lock().unwrap().iter().copied().collect()
    }

    pub async fn leave(self) -> Result<()> {
        self.stop.notify_waiters();
        self.signal.leave(&self.room, &self.id).await?;
        if let Some(pc) = &self.publisher {
            pc.close().await.during("closing the publisher connection")?;
        }
        self.subscriber.close().await.during("closing the subscriber connection")?;
        Ok(())
    }

    /// Closes the connections without telling the SFU (a crashed client).
    pub async fn vanish(self) {
        if let Some(pc) = &self.publisher {
            let _ = pc.close().await;
        }
        let _ = self.subscriber.close().await;
    }
}

struct SourceTrack {
    id: String,
    video: bool,
    /// RFC 6464 level of the audio packets it writes (changed by `set_audio_level`).
    level: Arc<AtomicU8>,
    layers: Vec<(Arc<TrackLocalStaticRTP>, u8, u32, usize)>,
    encoded: Option<EncodedMedia>,
}

async fn publisher_connection(
    api: &API,
    publish: &[Publish],
) -> Result<(Arc<RTCPeerConnection>, Vec<(SourceTrack, Arc<RTCRtpSender>)>)> {
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default()).await.during("creating the publisher connection")?,
    );
    let mut sources = Vec::new();
    for p in publish {
        let stream = "local".to_owned();
        match &p.kind {
            PublishKind::Audio { level } => {
                let track = Arc::new(TrackLocalStaticRTP::new(media::opus(), p.id.clone(), stream));
                let sender = pc
                    .add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
                    .await
                    .during(format!("adding track {}", p.id))?;
                sources.push((
                    SourceTrack {
                        id: p.id.clone(),
                        video: false,
                        level: Arc::new(AtomicU8::new(*level)),
                        layers: vec![(track, 0, 50, 100)],
                        encoded: None,
                    },
                    sender,
                ));
            }
            PublishKind::Video { simulcast: false, packets_per_second, size } => {
                let track = Arc::new(TrackLocalStaticRTP::new(media::vp8(), p.id.clone(), stream));
                let sender = pc
                    .add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
                    .await
                    .during(format!("adding track {}", p.id))?;
                sources.push((
                    SourceTrack {
                        id: p.id.clone(),
                        video: true,
                        level: Arc::new(AtomicU8::new(127)),
                        layers: vec![(track, 2, *packets_per_second, *size)],
                        encoded: None,
                    },
                    sender,
                ));
            }
            PublishKind::Video { simulcast: true, .. } => {
                let mut layers = Vec::new();
                let mut sender = None;
                for (i, (rid, pps, size)) in SIMULCAST_LAYERS.iter().enumerate() {
                    let track = Arc::new(TrackLocalStaticRTP::new_with_rid(
                        media::vp8(),
                        p.id.clone(),
                        rid.to_string(),
                        stream.clone(),
                    ));
                    match &sender {
                        None => {
                            let added = pc.add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>).await;
                            sender = Some(added.during(format!("adding track {}", p.id))?);
                        }
                        Some(s) => s
                            .add_encoding(track.clone())
                            .await
                            .during(format!("adding layer {rid} of track {}", p.id))?,
                    }
                    layers.push((track, i as u8, *pps, *size));
                }
                sources.push((
                    SourceTrack {
                        id: p.id.clone(),
                        video: true,
                        level: Arc::new(AtomicU8::new(127)),
                        layers,
                        encoded: None,
                    },
                    sender.expect("three layers"),
                ));
            }
            PublishKind::Encoded(m) => {
                let codec = match m.codec {
                    EncodedCodec::Vp8 => media::vp8(),
                    EncodedCodec::H264 => media::h264(),
                    EncodedCodec::Opus => media::opus(),
                };
                let track = Arc::new(TrackLocalStaticRTP::new(codec, p.id.clone(), stream));
                let sender = pc
                    .add_track(track.clone() as Arc<dyn TrackLocal + Send + Sync>)
                    .await
                    .during(format!("adding track {}", p.id))?;
                let level = if m.video() { 127 } else { 30 };
                sources.push((
                    SourceTrack {
                        id: p.id.clone(),
                        video: m.video(),
                        level: Arc::new(AtomicU8::new(level)),
                        layers: vec![(track, 2, 0, 0)],
                        encoded: Some(m.clone()),
                    },
                    sender,
                ));
            }
        }
    }
    Ok((pc, sources))
}

/// Writes synthetic packets for every layer of a source at its rate; video frames are
/// keyframes when asked for (first frame, PLI).
async fn run_source(source: SourceTrack, keyframe_wanted: Arc<AtomicU64>, sending: Arc<std::sync::atomic::AtomicBool>) {
    if let Some(media) = source.encoded {
        let track = source.layers[0].0.clone();
        return run_encoded(track, media, source.level, sending).await;
    }
    let mut tasks = Vec::new();
    for (track, layer, pps, size) in source.layers {
        let wanted = keyframe_wanted.clone();
        let sending = sending.clone();
        let video = source.video;
        let level = source.level.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / pps.max(1) as f64));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let clock = if video { 90_000 } else { 48_000 };
            let step = clock / pps.max(1);
            let mut seq: u16 = rand::random();
            let mut ts: u32 = rand::random();
            let mut seen_generation: Option<u64> = None;
            loop {
                tick.tick().await;
                if !sending.load(Ordering::SeqCst) {
                    continue;
                }
                let generation = wanted.load(Ordering::SeqCst);
                let keyframe = video && seen_generation != Some(generation);
                seen_generation = Some(generation);
                let packet = webrtc::rtp::packet::Packet {
                    header: webrtc::rtp::header::Header {
                        version: 2,
                        marker: true,
                        sequence_number: seq,
                        timestamp: ts,
                        ..Default::default()
                    },
                    payload: synthetic_payload(video, keyframe, layer, size),
                };
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(step);
                let result = if video {
                    track.write_rtp(&packet).await
                } else {
                    let level = level.load(Ordering::Relaxed);
                    let ext = HeaderExtension::AudioLevel(AudioLevelExtension { level, voice: level < 127 });
                    track.write_rtp_with_extensions(&packet, &[ext]).await
                };
                if let Err(e) = result
                    && matches!(e, webrtc::Error::ErrClosedPipe)
                {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Plays encoded media in real time, looped, from the moment sending starts. Real
/// encoders are not asked for keyframes: the files carry one every second or so.
async fn run_encoded(
    track: Arc<TrackLocalStaticRTP>,
    media: EncodedMedia,
    level: Arc<AtomicU8>,
    sending: Arc<std::sync::atomic::AtomicBool>,
) {
    use webrtc::rtp::packetizer::Payloader;
    let mut payloader: Box<dyn Payloader + Send> = match media.codec {
        EncodedCodec::Vp8 => Box::new(webrtc::rtp::codecs::vp8::Vp8Payloader::default()),
        EncodedCodec::H264 => Box::new(webrtc::rtp::codecs::h264::H264Payloader::default()),
        EncodedCodec::Opus => Box::new(webrtc::rtp::codecs::opus::OpusPayloader),
    };
    let clock = if media.video() { 90_000.0 } else { 48_000.0 };
    while !sending.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let mut next = tokio::time::Instant::now();
    for frame in media.frames.iter().cycle() {
        tokio::time::sleep_until(next).await;
        next += frame.duration;
        let Ok(payloads) = payloader.payload(1188, &frame.data) else { continue };
        let last = payloads.len().saturating_sub(1);
        for (i, payload) in payloads.into_iter().enumerate() {
            let packet = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    marker: i == last,
                    sequence_number: seq,
                    timestamp: ts,
                    ..Default::default()
                },
                payload,
            };
            seq = seq.wrapping_add(1);
            let result = if media.video() {
                track.write_rtp(&packet).await
            } else {
                let level = level.load(Ordering::Relaxed);
                let ext = HeaderExtension::AudioLevel(AudioLevelExtension { level, voice: level < 127 });
                track.write_rtp_with_extensions(&packet, &[ext]).await
            };
            if let Err(webrtc::Error::ErrClosedPipe) = result {
                return;
            }
        }
        ts = ts.wrapping_add((frame.duration.as_secs_f64() * clock).round() as u32);
    }
}

async fn remb_loop(pc: Arc<RTCPeerConnection>, cap: Arc<Mutex<Option<u64>>>, ssrcs: Arc<Mutex<HashSet<u32>>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let Some(bps) = *cap.lock().unwrap() else { continue };
        let ssrcs: Vec<u32> = ssrcs.lock().unwrap().iter().copied().collect();
        if ssrcs.is_empty() {
            continue;
        }
        let remb = ReceiverEstimatedMaximumBitrate { sender_ssrc: 1, bitrate: bps as f32, ssrcs };
        if pc.write_rtcp(&[Box::new(remb)]).await.is_err() && pc.connection_state() == RTCPeerConnectionState::Closed {
            return;
        }
    }
}

/// Long-polls the participant's events: answers subscriber offers, adds the SFU's
/// candidates, and keeps everything for the test to look at.
async fn event_loop(
    api: Arc<dyn MediaSignal>,
    room: String,
    id: String,
    subscriber: Arc<RTCPeerConnection>,
    publisher: Option<Arc<RTCPeerConnection>>,
    log: Arc<Mutex<Vec<Event>>>,
    arrived: Arc<Notify>,
) {
    let mut after = 0u64;
    loop {
        let batch = match api.events(&room, &id, after).await {
            Ok(b) => b,
            Err(EventsError::Fatal(e)) => {
                tracing::debug!(participant = %id, error = %e, "events ended");
                return;
            }
            Err(EventsError::Transient(e)) => {
                tracing::debug!(participant = %id, error = %e, "event poll failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for e in batch {
            after = after.max(e.seq);
            match &e.event {
                Event::SubscriberOffer { sdp } => {
                    if let Err(err) = answer_offer(api.as_ref(), &room, &id, &subscriber, sdp).await {
                        tracing::warn!(participant = %id, error = %err, "could not answer the SFU's offer");
                    }
                }
                Event::Candidate(c) => {
                    let pc = match c.target {
                        ConnectionRole::Subscriber => Some(&subscriber),
                        ConnectionRole::Publisher => publisher.as_ref(),
                    };
                    if let Some(pc) = pc {
                        let _ = pc
                            .add_ice_candidate(RTCIceCandidateInit {
                                candidate: c.candidate.clone(),
                                sdp_mid: c.sdp_mid.clone(),
                                sdp_mline_index: c.sdp_mline_index,
                                username_fragment: None,
                            })
                            .await;
                    }
                }
                _ => {}
            }
            let closed = matches!(e.event, Event::Closed { .. });
            log.lock().unwrap().push(e.event);
            arrived.notify_waiters();
            if closed {
                return;
            }
        }
    }
}

async fn answer_offer(api: &dyn MediaSignal, room: &str, id: &str, pc: &RTCPeerConnection, sdp: &str) -> Result<()> {
    let offer = RTCSessionDescription::offer(sdp.to_owned()).during("reading the SFU's subscriber offer")?;
    pc.set_remote_description(offer).await.during("applying the SFU's subscriber offer")?;
    let answer = pc.create_answer(None).await.during("answering the SFU's subscriber offer")?;
    pc.set_local_description(answer).await.during("setting the subscriber answer")?;
    media::wait_receivers_started(pc, Duration::from_secs(2)).await;
    let sdp = local_sdp(pc, "reading the subscriber answer").await?;
    api.subscriber_answer(room, id, sdp).await
}

/// The local description's SDP, just set while doing `what`.
async fn local_sdp(pc: &RTCPeerConnection, what: &str) -> Result<String> {
    match pc.local_description().await {
        Some(d) => Ok(d.sdp),
        None => Err(Error::WebRtc { what: what.into(), source: webrtc::Error::new("no local description".into()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_payloads_round_trip() {
        let key = synthetic_payload(true, true, 2, 500);
        assert_eq!(key.len(), 500);
        let info = parse_payload(&key).unwrap();
        assert!(info.keyframe);
        assert_eq!(info.layer, 2);
        assert!(info.sent_us > 0);
        let delta = parse_payload(&synthetic_payload(true, false, 1, 10)).unwrap();
        assert!(!delta.keyframe);
        let audio = parse_payload(&synthetic_payload(false, false, 0, 100)).unwrap();
        assert!(!audio.keyframe);
        assert_eq!(parse_payload(b"garbage"), None);
    }

    #[test]
    fn missing_packets_are_counted_across_wrap() {
        let mut t = ReceivedTrack::default();
        for seq in [65_534u16, 65_535, 1, 2] {
            t.record(seq, 1, &[], 10, 0);
        }
        assert_eq!(t.missing(), 1, "seq 0 is missing");
        t.record(0, 1, &[], 10, 0);
        assert_eq!(t.missing(), 0, "a late retransmission fills the gap");
    }

    #[test]
    fn keyframes_are_counted_by_the_negotiated_codec() {
        // An H.264 FU-A starting an IDR slice, then a P slice: one keyframe.
        let mut h264 = ReceivedTrack { video: true, codec: Some(Codec::H264), ..Default::default() };
        h264.record(1, 1, &[0x7c, 0x85, 0x88, 0x84], 10, 0);
        h264.record(2, 1, &[0x41, 0x9a, 0x00, 0x00], 10, 0);
        assert_eq!(h264.keyframes, 1);
        // The same bytes read as VP8 start no partition 0, so only the VP8 keyframe counts; audio never does.
        let mut vp8 = ReceivedTrack { video: true, ..Default::default() };
        vp8.record(1, 1, &[0x7c, 0x85, 0x88, 0x84], 10, 0);
        vp8.record(2, 1, &[0x10, 0x50, 0x00, 0x00], 10, 0);
        assert_eq!(vp8.keyframes, 1, "only the VP8 keyframe");
        let mut audio = ReceivedTrack { codec: Some(Codec::Opus), ..Default::default() };
        audio.record(1, 1, &[0x10, 0x50, 0x00, 0x00], 10, 0);
        assert_eq!(audio.keyframes, 0);
    }
}
