//! The thin driver: webrtc-rs peer connections and tokio tasks around the sans-IO
//! [`Room`]. Every decision (who gets which packet, with which numbers, when to ask for
//! a keyframe) is the core's; this file moves packets and runs the commands.
//!
//! Locks: a room's core sits behind a `std::sync::Mutex` held only for the core call;
//! packets are written after it is released. Commands are executed in order by one
//! task per room, so renegotiations never race each other.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use switchboard_sfu_api::{
    self as api, ApiError, Candidate, ConnectionRole, ErrorCode, Event, MediaKind, SequencedEvent, TrackDescription,
};
use switchboard_sfu_client::media;
use switchboard_sfu_core::node::{Node, NodeState, Refusal};
use switchboard_sfu_core::{
    Codec, Input, Outcome, Output, ParticipantKind, Preferences, Room, RoomError, RoomEvent, RtpMeta, Source,
    SubscriptionId, TrackHandle, TrackInfo,
};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, warn};
use webrtc::api::API;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::TrackLocal;
use webrtc::track::track_remote::TrackRemote;

use crate::metrics::Metrics;
use crate::subscriber_track::SubscriberTrack;

/// Events kept per participant for the long poll.
const EVENT_BACKLOG: usize = 2000;
/// Longest a long poll waits.
pub const MAX_POLL: Duration = Duration::from_secs(25);
/// Longest the SFU waits for its own ICE candidates before answering.
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);
/// Quiet time before a renegotiation offer (see `run_negotiation`).
const RENEGOTIATION_SETTLE: Duration = Duration::from_millis(150);
/// A participant whose connection failed (and was not ICE-restarted) is removed.
const FAILED_PEER_GRACE: Duration = Duration::from_secs(5);

pub type ApiResult<T> = Result<T, ApiError>;

pub fn error(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError { code, message: message.into() }
}

fn room_error(e: RoomError) -> ApiError {
    let code = match e {
        RoomError::AlreadyJoined(_) => ErrorCode::AlreadyJoined,
        RoomError::UnknownParticipant(_) => ErrorCode::UnknownParticipant,
        RoomError::UnknownTrack(_) | RoomError::OwnTrack(_) => ErrorCode::UnknownTrack,
        RoomError::TrackExists(_) => ErrorCode::BadRequest,
        RoomError::UnknownHandle(_) => ErrorCode::Internal,
    };
    error(code, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    error(ErrorCode::Internal, e.to_string())
}

fn parse_offer(sdp: &str) -> ApiResult<RTCSessionDescription> {
    let desc = RTCSessionDescription::offer(sdp.to_owned())
        .map_err(|e| error(ErrorCode::InvalidSdp, format!("the offer is not valid SDP: {e}")))?;
    if !sdp.contains("m=") {
        return Err(error(ErrorCode::InvalidSdp, "the offer has no media sections"));
    }
    Ok(desc)
}

pub fn codec_mime(codec: Codec) -> &'static str {
    match codec {
        Codec::Opus => "audio/opus",
        Codec::Vp8 => "video/VP8",
        Codec::Vp9 => "video/VP9",
        Codec::H264 => "video/H264",
    }
}

pub fn to_api_source(s: Source) -> api::Source {
    match s {
        Source::Camera => api::Source::Camera,
        Source::Microphone => api::Source::Microphone,
        Source::ScreenShare => api::Source::ScreenShare,
        Source::ScreenShareAudio => api::Source::ScreenShareAudio,
    }
}

fn from_api_source(s: api::Source) -> Source {
    match s {
        api::Source::Camera => Source::Camera,
        api::Source::Microphone => Source::Microphone,
        api::Source::ScreenShare => Source::ScreenShare,
        api::Source::ScreenShareAudio => Source::ScreenShareAudio,
    }
}

fn to_core_kind(k: api::ParticipantKind) -> ParticipantKind {
    match k {
        api::ParticipantKind::Client => ParticipantKind::Client,
        api::ParticipantKind::Relay => ParticipantKind::Relay,
        api::ParticipantKind::Hidden => ParticipantKind::Hidden,
    }
}

fn to_api_kind(k: ParticipantKind) -> api::ParticipantKind {
    match k {
        ParticipantKind::Client => api::ParticipantKind::Client,
        ParticipantKind::Relay => api::ParticipantKind::Relay,
        ParticipantKind::Hidden => api::ParticipantKind::Hidden,
    }
}

fn to_api_event(e: RoomEvent) -> Event {
    match e {
        RoomEvent::ParticipantJoined { participant, kind } => {
            Event::ParticipantJoined { participant, kind: to_api_kind(kind) }
        }
        RoomEvent::ParticipantLeft { participant } => Event::ParticipantLeft { participant },
        RoomEvent::TrackPublished { participant, track, codec, source } => Event::TrackPublished {
            participant,
            track,
            kind: if codec.is_video() { MediaKind::Video } else { MediaKind::Audio },
            codec: codec_mime(codec).into(),
            source: to_api_source(source),
        },
        RoomEvent::TrackUnpublished { participant, track } => Event::TrackUnpublished { participant, track },
        RoomEvent::TrackMuted { participant, track, muted } => Event::TrackMuted { participant, track, muted },
        RoomEvent::ActiveSpeaker { participant } => Event::ActiveSpeaker { participant },
        RoomEvent::LayerChanged { track, layer, rid } => Event::LayerChanged { track, layer, rid },
    }
}

/// How a peer's outgoing connection is renegotiated.
pub enum Negotiator {
    /// A client: the SFU's offer goes out as a `SubscriberOffer` event.
    Events,
    /// This SFU is an edge: its uplink offer is posted to the origin's publisher endpoint.
    Origin { api: switchboard_sfu_client::SfuApi, room: String, participant: String },
}

#[derive(Default)]
struct Negotiation {
    needed: bool,
    restart: bool,
    awaiting_answer: bool,
}

struct EventQueue {
    next: u64,
    events: VecDeque<SequencedEvent>,
}

/// A participant's connections and event queue.
pub struct Peer {
    pub id: String,
    pub kind: ParticipantKind,
    /// Media from the participant (it offers; for an edge's relay, the origin offers).
    inbound: tokio::sync::Mutex<Option<Arc<RTCPeerConnection>>>,
    /// Media to the participant (the SFU offers).
    outbound: Arc<RTCPeerConnection>,
    negotiator: Negotiator,
    negotiation: Mutex<Negotiation>,
    negotiate: Notify,
    events: Mutex<EventQueue>,
    event_arrived: Notify,
    senders: Mutex<HashMap<SubscriptionId, (Arc<RTCRtpSender>, TrackDescription)>>,
    /// What the participant said about the tracks it publishes, by track id.
    descriptions: Mutex<HashMap<String, TrackDescription>>,
    /// Track changes for the outbound connection, applied by the negotiation task just
    /// before its next offer: a track added while an offer is outstanding would start
    /// sending when that offer's answer lands, with an SSRC the answerer never saw.
    pending: Mutex<Vec<PendingChange>>,
    /// Set once the outbound connection has been up for `media::CONNECT_HOLDBACK`.
    sending: Arc<AtomicBool>,
    room: Weak<RoomEntry>,
    closed: AtomicBool,
}

enum PendingChange {
    Add { subscription: SubscriptionId, track_id: String, publisher: String, codec: Codec, source: Source },
    Remove { subscription: SubscriptionId },
}

impl Peer {
    pub fn push_event(&self, event: Event) {
        let mut q = self.events.lock().unwrap();
        q.next += 1;
        let seq = q.next;
        q.events.push_back(SequencedEvent { seq, event });
        while q.events.len() > EVENT_BACKLOG {
            q.events.pop_front();
        }
        drop(q);
        self.event_arrived.notify_waiters();
    }

    pub async fn events_after(&self, after: u64, wait: Duration) -> Vec<SequencedEvent> {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_POLL);
        loop {
            let notified = self.event_arrived.notified();
            let ready: Vec<SequencedEvent> =
                self.events.lock().unwrap().events.iter().filter(|e| e.seq > after).cloned().collect();
            if !ready.is_empty() || self.closed.load(Ordering::SeqCst) {
                return ready;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Vec::new();
            }
        }
    }

    fn request_negotiation(&self, restart: bool) {
        let mut n = self.negotiation.lock().unwrap();
        n.needed = true;
        n.restart |= restart;
        drop(n);
        self.negotiate.notify_one();
    }

    pub fn describe(&self, tracks: &[TrackDescription]) {
        let mut d = self.descriptions.lock().unwrap();
        for t in tracks {
            d.insert(t.id.clone(), t.clone());
        }
    }
}

/// Packets waiting for one subscription's connection. Each subscription has its own
/// queue and writer task, so a subscriber whose connection stalls (still connecting,
/// congested, gone) drops its own packets and never holds up the others. The writer
/// keeps what it sent, by sequence number, to answer the subscriber's NACKs.
#[derive(Clone)]
struct Sink {
    queue: mpsc::Sender<webrtc::rtp::packet::Packet>,
    sent: Arc<Mutex<Vec<Option<webrtc::rtp::packet::Packet>>>>,
}

/// Packets a subscription may have queued before new ones are dropped (~1 s of HD video).
const SINK_QUEUE: usize = 256;
/// Packets kept for retransmission per subscription (a few seconds of video).
const SINK_HISTORY: usize = 1024;

impl Sink {
    fn spawn(track: Arc<SubscriberTrack>, sending: Arc<AtomicBool>) -> Self {
        let (queue, mut rx) = mpsc::channel::<webrtc::rtp::packet::Packet>(SINK_QUEUE);
        let sent: Arc<Mutex<Vec<Option<webrtc::rtp::packet::Packet>>>> = Arc::new(Mutex::new(vec![None; SINK_HISTORY]));
        let history = sent.clone();
        tokio::spawn(async move {
            while let Some(mut p) = rx.recv().await {
                if !sending.load(Ordering::Relaxed) {
                    continue;
                }
                match track.write(&mut p).await {
                    Err(webrtc::Error::ErrClosedPipe) => return,
                    Err(e) => debug!(track = track.id(), error = %e, "write failed"),
                    Ok(_) => {}
                }
                let slot = p.header.sequence_number as usize % SINK_HISTORY;
                history.lock().unwrap()[slot] = Some(p);
            }
        });
        Self { queue, sent }
    }

    /// Queues the packets a NACK names again, those still kept; returns how many.
    fn resend(&self, seqs: impl Iterator<Item = u16>) -> usize {
        let again: Vec<webrtc::rtp::packet::Packet> = {
            let sent = self.sent.lock().unwrap();
            seqs.filter_map(|seq| {
                sent[seq as usize % SINK_HISTORY].as_ref().filter(|p| p.header.sequence_number == seq).cloned()
            })
            .collect()
        };
        again.into_iter().filter(|p| self.queue.try_send(p.clone()).is_ok()).count()
    }
}

/// The core and what the driver needs next to it on the packet path.
struct RoomCore {
    room: Room,
    sinks: HashMap<SubscriptionId, Sink>,
    /// Publisher connection and SSRC of each (track, layer), for PLIs.
    sources: HashMap<(TrackHandle, usize), (Weak<RTCPeerConnection>, u32)>,
    /// When the core next wants `Input::Timeout`, as its last drain said.
    timeout: Instant,
}

/// One forward of the packet in hand: its subscription's sink and the numbers to write.
type Write = (Sink, u16, u32);

impl RoomCore {
    fn new(now: Instant) -> Self {
        let mut core = Self { room: Room::new(now), sinks: HashMap::new(), sources: HashMap::new(), timeout: now };
        core.drain(&mut Vec::new());
        core
    }

    /// Polls the core until it has nothing left, after every input: forwards of the packet
    /// just fed become `writes` (to subscriptions that still have a sink), the deadline is
    /// kept for the timer task, and the rest is returned for the command task.
    fn drain(&mut self, writes: &mut Vec<Write>) -> Vec<Output> {
        let mut commands = Vec::new();
        loop {
            match self.room.poll_output() {
                Output::Timeout(at) => {
                    self.timeout = at;
                    return commands;
                }
                Output::Forward(f) => {
                    if let Some(sink) = self.sinks.get(&f.subscription) {
                        writes.push((sink.clone(), f.seq, f.ts));
                    }
                }
                other => commands.push(other),
            }
        }
    }
}

pub struct RoomEntry {
    pub name: String,
    core: Mutex<RoomCore>,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    commands: mpsc::UnboundedSender<Vec<Output>>,
    closed: AtomicBool,
}

impl RoomEntry {
    fn submit(&self, commands: Vec<Output>) {
        if !commands.is_empty() {
            let _ = self.commands.send(commands);
        }
    }

    /// Runs `f` (inputs other than RTP) on the core under one lock, then drains it and
    /// queues what it decided.
    fn with_core<T>(&self, f: impl FnOnce(&mut RoomCore) -> T) -> T {
        let (out, commands) = {
            let mut core = self.core.lock().unwrap();
            let out = f(&mut core);
            let mut writes = Vec::new();
            let commands = core.drain(&mut writes);
            debug_assert!(writes.is_empty(), "only an RTP input forwards packets");
            (out, commands)
        };
        self.submit(commands);
        out
    }

    /// Feeds one input (other than RTP) to the core.
    fn input(&self, input: Input<'_>) -> Result<Outcome, RoomError> {
        self.with_core(|core| core.room.handle_input(input))
    }

    pub fn peer(&self, id: &str) -> ApiResult<Arc<Peer>> {
        self.peers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| error(ErrorCode::UnknownParticipant, format!("no participant {id} in room {}", self.name)))
    }
}

#[derive(Default)]
struct Totals {
    rooms: usize,
    people: usize,
    participants: usize,
    tracks: usize,
    subscriptions: usize,
}

pub struct Sfu {
    api: API,
    /// For this SFU's own connections to an origin (edge side of a relay): ephemeral
    /// ports, because two connections between the same pair of mux ports would share
    /// one 5-tuple and the mux could not tell their DTLS apart.
    relay_api: API,
    node: Mutex<Node>,
    rooms: Mutex<HashMap<String, Arc<RoomEntry>>>,
    pub metrics: Metrics,
    pub media_address: SocketAddr,
    /// Wakes whoever waits for the drain to finish.
    pub state_changed: Notify,
}

impl Sfu {
    pub fn new(api: API, relay_api: API, media_address: SocketAddr, metrics: Metrics) -> Arc<Self> {
        let mut node = Node::default();
        node.ready();
        Arc::new(Self {
            api,
            relay_api,
            node: Mutex::new(node),
            rooms: Mutex::new(HashMap::new()),
            metrics,
            media_address,
            state_changed: Notify::new(),
        })
    }

    pub fn state(&self) -> NodeState {
        self.node.lock().unwrap().state()
    }

    pub fn api_state(&self) -> api::NodeState {
        match self.state() {
            NodeState::Starting => api::NodeState::Starting,
            NodeState::Ready => api::NodeState::Ready,
            NodeState::Draining { .. } => api::NodeState::Draining,
            NodeState::Drained { .. } => api::NodeState::Drained,
        }
    }

    /// Rooms, and participants (all, and those that hold a drain open), tracks and
    /// subscriptions summed over them.
    fn totals(&self) -> Totals {
        let rooms: Vec<Arc<RoomEntry>> = self.rooms.lock().unwrap().values().cloned().collect();
        let mut t = Totals { rooms: rooms.len(), ..Totals::default() };
        for r in &rooms {
            let core = r.core.lock().unwrap();
            // Relays follow the people they carry; they do not hold a drain open.
            t.people += core.room.participants().filter(|(_, k)| *k != ParticipantKind::Relay).count();
            t.participants += core.room.participant_count();
            t.tracks += core.room.track_count();
            t.subscriptions += core.room.subscription_count();
        }
        t
    }

    pub fn status(&self) -> api::NodeStatus {
        let t = self.totals();
        api::NodeStatus {
            state: self.api_state(),
            rooms: t.rooms,
            participants: t.participants,
            published_tracks: t.tracks,
            subscriptions: t.subscriptions,
            media_address: self.media_address.to_string(),
        }
    }

    /// Starts draining: no new participants; every current one is told.
    pub fn drain(&self) {
        let now = Instant::now();
        self.node.lock().unwrap().drain(now);
        info!("draining: new participants are refused");
        for room in self.rooms.lock().unwrap().values() {
            for peer in room.peers.lock().unwrap().values() {
                peer.push_event(Event::Draining);
            }
        }
        self.recount();
    }

    /// Recomputes load after joins and leaves; drives the drain to Drained.
    fn recount(&self) {
        let t = self.totals();
        self.metrics.rooms.set(t.rooms as i64);
        self.metrics.participants.set(t.participants as i64);
        self.metrics.published_tracks.set(t.tracks as i64);
        self.metrics.subscriptions.set(t.subscriptions as i64);
        let before = self.state();
        self.node.lock().unwrap().set_participants(t.people, Instant::now());
        let after = self.state();
        if before != after {
            if matches!(after, NodeState::Drained { .. }) {
                info!("drained: the last participant left");
            }
            self.state_changed.notify_waiters();
        }
    }

    pub fn room(&self, name: &str) -> ApiResult<Arc<RoomEntry>> {
        self.rooms
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| error(ErrorCode::UnknownRoom, format!("no room {name} on this SFU")))
    }

    /// Opens a room (idempotent).
    pub fn open_room(self: &Arc<Self>, name: &str) -> ApiResult<Arc<RoomEntry>> {
        validate_name("room", name)?;
        let mut rooms = self.rooms.lock().unwrap();
        if let Some(r) = rooms.get(name) {
            return Ok(r.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let entry = Arc::new(RoomEntry {
            name: name.to_owned(),
            core: Mutex::new(RoomCore::new(Instant::now())),
            peers: Mutex::new(HashMap::new()),
            commands: tx,
            closed: AtomicBool::new(false),
        });
        rooms.insert(name.to_owned(), entry.clone());
        drop(rooms);
        tokio::spawn(run_commands(Arc::downgrade(self), Arc::downgrade(&entry), rx));
        tokio::spawn(run_timers(Arc::downgrade(&entry)));
        info!(room = name, "room opened");
        self.recount();
        Ok(entry)
    }

    /// Closes a room: every participant is removed and told.
    pub async fn close_room(&self, name: &str) -> ApiResult<()> {
        let room = self
            .rooms
            .lock()
            .unwrap()
            .remove(name)
            .ok_or_else(|| error(ErrorCode::UnknownRoom, format!("no room {name} on this SFU")))?;
        room.closed.store(true, Ordering::SeqCst);
        let peers: Vec<Arc<Peer>> = room.peers.lock().unwrap().drain().map(|(_, p)| p).collect();
        for peer in peers {
            peer.push_event(Event::Closed { reason: "the room was closed".into() });
            close_peer(&peer).await;
        }
        info!(room = name, "room closed");
        self.recount();
        Ok(())
    }

    /// Adds a participant; answers its publisher offer when it sent one.
    pub async fn join(self: &Arc<Self>, room_name: &str, req: api::JoinRequest) -> ApiResult<api::AnswerResponse> {
        validate_name("participant", &req.participant_id)?;
        self.node.lock().unwrap().admit().map_err(|r| match r {
            Refusal::Draining => error(ErrorCode::Draining, r.to_string()),
            Refusal::NotReady => error(ErrorCode::NotReady, r.to_string()),
        })?;
        let offer = req.offer.as_deref().map(parse_offer).transpose()?;
        let room = self.open_room(room_name)?;
        if room.peers.lock().unwrap().contains_key(&req.participant_id) {
            return Err(error(
                ErrorCode::AlreadyJoined,
                format!("participant {} has already joined", req.participant_id),
            ));
        }
        let peer = self.new_peer(&room, &req.participant_id, to_core_kind(req.kind), Negotiator::Events).await?;
        peer.describe(&req.tracks);
        let answer = match offer {
            Some(offer) => match self.answer_inbound(&room, &peer, offer).await {
                Ok(a) => Some(a),
                Err(e) => {
                    close_peer(&peer).await;
                    return Err(e);
                }
            },
            None => None,
        };
        {
            let mut peers = room.peers.lock().unwrap();
            if peers.contains_key(&req.participant_id) {
                return Err(error(
                    ErrorCode::AlreadyJoined,
                    format!("participant {} has already joined", req.participant_id),
                ));
            }
            peers.insert(req.participant_id.clone(), peer.clone());
        }
        let join =
            Input::Join { participant: &req.participant_id, kind: peer.kind, auto_subscribe: req.auto_subscribe };
        room.input(join).map_err(room_error)?;
        if matches!(self.state(), NodeState::Draining { .. }) {
            peer.push_event(Event::Draining);
        }
        info!(room = room_name, participant = %req.participant_id, kind = ?peer.kind, "participant joined");
        self.recount();
        Ok(api::AnswerResponse { answer })
    }

    /// Creates a peer's outbound connection and its negotiation task.
    pub async fn new_peer(
        self: &Arc<Self>,
        room: &Arc<RoomEntry>,
        id: &str,
        kind: ParticipantKind,
        negotiator: Negotiator,
    ) -> ApiResult<Arc<Peer>> {
        let api = if matches!(negotiator, Negotiator::Origin { .. }) { &self.relay_api } else { &self.api };
        let outbound = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await.map_err(internal)?);
        let peer = Arc::new(Peer {
            id: id.to_owned(),
            kind,
            inbound: tokio::sync::Mutex::new(None),
            outbound,
            negotiator,
            negotiation: Mutex::new(Negotiation::default()),
            negotiate: Notify::new(),
            events: Mutex::new(EventQueue { next: 0, events: VecDeque::new() }),
            event_arrived: Notify::new(),
            senders: Mutex::new(HashMap::new()),
            descriptions: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            sending: Arc::new(AtomicBool::new(false)),
            room: Arc::downgrade(room),
            closed: AtomicBool::new(false),
        });
        watch_connection(Arc::downgrade(self), Arc::downgrade(room), Arc::downgrade(&peer), &peer.outbound);
        tokio::spawn(run_negotiation(Arc::downgrade(&peer), self.metrics.clone()));
        Ok(peer)
    }

    /// Applies an offer for the peer's inbound connection (created on first use) and
    /// returns the answer with the SFU's candidates in it.
    pub async fn answer_inbound(
        self: &Arc<Self>,
        room: &Arc<RoomEntry>,
        peer: &Arc<Peer>,
        offer: RTCSessionDescription,
    ) -> ApiResult<String> {
        let pc = self.inbound_connection(room, peer).await?;
        pc.set_remote_description(offer)
            .await
            .map_err(|e| error(ErrorCode::InvalidSdp, format!("the offer was not accepted: {e}")))?;
        let answer = pc
            .create_answer(None)
            .await
            .map_err(|e| error(ErrorCode::InvalidSdp, format!("no answer to this offer: {e}")))?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer).await.map_err(internal)?;
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
        media::wait_receivers_started(&pc, Duration::from_secs(2)).await;
        Ok(pc.local_description().await.ok_or_else(|| internal("no local description"))?.sdp)
    }

    pub async fn inbound_connection(
        self: &Arc<Self>,
        room: &Arc<RoomEntry>,
        peer: &Arc<Peer>,
    ) -> ApiResult<Arc<RTCPeerConnection>> {
        let mut slot = peer.inbound.lock().await;
        if let Some(pc) = slot.as_ref() {
            return Ok(pc.clone());
        }
        let api = if matches!(peer.negotiator, Negotiator::Origin { .. }) { &self.relay_api } else { &self.api };
        let pc = Arc::new(api.new_peer_connection(RTCConfiguration::default()).await.map_err(internal)?);
        let (sfu, room_w, peer_w, pc_w) =
            (Arc::downgrade(self), Arc::downgrade(room), Arc::downgrade(peer), Arc::downgrade(&pc));
        pc.on_track(Box::new(move |track: Arc<TrackRemote>, receiver: Arc<RTCRtpReceiver>, _| {
            let (sfu, room, peer, pc) = (sfu.clone(), room_w.clone(), peer_w.clone(), pc_w.clone());
            Box::pin(async move {
                if let (Some(sfu), Some(room), Some(peer)) = (sfu.upgrade(), room.upgrade(), peer.upgrade()) {
                    tokio::spawn(forward_track(sfu, room, peer, pc, track, receiver));
                }
            })
        }));
        watch_connection(Arc::downgrade(self), Arc::downgrade(room), Arc::downgrade(peer), &pc);
        *slot = Some(pc.clone());
        Ok(pc)
    }

    pub async fn publisher_offer(
        self: &Arc<Self>,
        room_name: &str,
        participant: &str,
        req: api::OfferRequest,
    ) -> ApiResult<api::AnswerResponse> {
        let offer = parse_offer(&req.sdp)?;
        let room = self.room(room_name)?;
        let peer = room.peer(participant)?;
        peer.describe(&req.tracks);
        let answer = self.answer_inbound(&room, &peer, offer).await?;
        Ok(api::AnswerResponse { answer: Some(answer) })
    }

    pub async fn subscriber_answer(&self, room_name: &str, participant: &str, sdp: String) -> ApiResult<()> {
        let room = self.room(room_name)?;
        let peer = room.peer(participant)?;
        if !peer.negotiation.lock().unwrap().awaiting_answer {
            return Err(error(ErrorCode::BadRequest, "no subscriber offer is waiting for an answer"));
        }
        tracing::trace!(participant, %sdp, "subscriber answer");
        let answer = RTCSessionDescription::answer(sdp)
            .map_err(|e| error(ErrorCode::InvalidSdp, format!("the answer is not valid SDP: {e}")))?;
        peer.outbound
            .set_remote_description(answer)
            .await
            .map_err(|e| error(ErrorCode::InvalidSdp, format!("the answer was not accepted: {e}")))?;
        peer.negotiation.lock().unwrap().awaiting_answer = false;
        peer.negotiate.notify_one();
        // Packets sent before the answer landed (the first keyframe among them) are lost.
        request_keyframes(&room, &peer);
        Ok(())
    }

    pub fn subscriber_restart(&self, room_name: &str, participant: &str) -> ApiResult<()> {
        let peer = self.room(room_name)?.peer(participant)?;
        peer.request_negotiation(true);
        Ok(())
    }

    pub async fn add_candidate(&self, room_name: &str, participant: &str, c: Candidate) -> ApiResult<()> {
        let peer = self.room(room_name)?.peer(participant)?;
        if c.candidate.is_empty() {
            return Ok(()); // end of candidates
        }
        let pc = match c.target {
            ConnectionRole::Subscriber => Some(peer.outbound.clone()),
            ConnectionRole::Publisher => peer.inbound.lock().await.clone(),
        }
        .ok_or_else(|| error(ErrorCode::BadRequest, "the participant has no publisher connection"))?;
        pc.add_ice_candidate(RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: None,
        })
        .await
        .map_err(|e| error(ErrorCode::BadRequest, format!("the candidate was not accepted: {e}")))
    }

    pub async fn events(
        &self,
        room_name: &str,
        participant: &str,
        q: api::EventsQuery,
    ) -> ApiResult<api::EventsResponse> {
        let peer = self.room(room_name)?.peer(participant)?;
        Ok(api::EventsResponse { events: peer.events_after(q.after, Duration::from_millis(q.wait_ms)).await })
    }

    pub async fn leave(&self, room_name: &str, participant: &str) -> ApiResult<()> {
        let room = self.room(room_name)?;
        let peer = room.peers.lock().unwrap().remove(participant);
        let Some(peer) = peer else {
            return Err(error(
                ErrorCode::UnknownParticipant,
                format!("no participant {participant} in room {room_name}"),
            ));
        };
        room.input(Input::Leave { participant }).map_err(room_error)?;
        peer.push_event(Event::Closed { reason: "left".into() });
        close_peer(&peer).await;
        info!(room = room_name, participant, "participant left");
        self.recount();
        Ok(())
    }

    pub fn set_muted(&self, room_name: &str, participant: &str, track: &str, muted: bool) -> ApiResult<()> {
        let room = self.room(room_name)?;
        room.peer(participant)?;
        room.input(Input::SetMuted { participant, track, muted, now: Instant::now() }).map(|_| ()).map_err(room_error)
    }

    pub fn unpublish(&self, room_name: &str, participant: &str, track: &str) -> ApiResult<()> {
        let room = self.room(room_name)?;
        room.peer(participant)?;
        room.input(Input::Unpublish { participant, track }).map_err(room_error)?;
        self.recount();
        Ok(())
    }

    pub fn subscribe(
        &self,
        room_name: &str,
        participant: &str,
        track: &str,
        req: api::SubscriptionRequest,
    ) -> ApiResult<()> {
        let room = self.room(room_name)?;
        room.peer(participant)?;
        let prefs = Preferences { max_layer: req.max_layer, max_height: req.max_height };
        room.with_core(|core| {
            core.room.handle_input(Input::Subscribe { subscriber: participant, track, prefs })?;
            let now = Instant::now();
            core.room.handle_input(Input::SetPreferences { subscriber: participant, track, prefs, now })
        })
        .map_err(room_error)?;
        self.recount();
        Ok(())
    }

    pub fn unsubscribe(&self, room_name: &str, participant: &str, track: &str) -> ApiResult<()> {
        let room = self.room(room_name)?;
        room.peer(participant)?;
        room.input(Input::Unsubscribe { subscriber: participant, track }).map_err(room_error)?;
        self.recount();
        Ok(())
    }

    pub fn room_status(&self, room_name: &str) -> ApiResult<api::RoomStatus> {
        let room = self.room(room_name)?;
        let core = room.core.lock().unwrap();
        let mut participants: Vec<String> = core.room.participants().map(|(p, _)| p.clone()).collect();
        participants.sort();
        let mut tracks: Vec<api::TrackStatus> = core
            .room
            .tracks()
            .map(|(id, p, codec, source, muted)| api::TrackStatus {
                id: id.clone(),
                participant: p.clone(),
                kind: if codec.is_video() { MediaKind::Video } else { MediaKind::Audio },
                source: to_api_source(source),
                muted,
            })
            .collect();
        tracks.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(api::RoomStatus {
            room: room_name.into(),
            participants,
            tracks,
            subscriptions: core.room.subscription_count(),
        })
    }

    /// Registers a peer built elsewhere (an edge's relay) and joins it to the core.
    pub fn attach_peer(&self, room: &Arc<RoomEntry>, peer: Arc<Peer>) -> ApiResult<()> {
        {
            let mut peers = room.peers.lock().unwrap();
            if peers.contains_key(&peer.id) {
                return Err(error(ErrorCode::AlreadyJoined, format!("{} is already in room {}", peer.id, room.name)));
            }
            peers.insert(peer.id.clone(), peer.clone());
        }
        room.input(Input::Join { participant: &peer.id, kind: peer.kind, auto_subscribe: true }).map_err(room_error)?;
        self.recount();
        Ok(())
    }

    /// Removes a peer whose connection failed or whose relay ended.
    pub async fn drop_peer(&self, room: &Arc<RoomEntry>, id: &str, why: &str) {
        let peer = room.peers.lock().unwrap().remove(id);
        if let Some(peer) = peer {
            let _ = room.input(Input::Leave { participant: id });
            peer.push_event(Event::Closed { reason: why.into() });
            close_peer(&peer).await;
            warn!(room = %room.name, participant = id, why, "participant removed");
            self.recount();
        }
    }
}

/// Asks the publishers of everything `peer` receives for a keyframe (rate-limited by the core).
fn request_keyframes(room: &RoomEntry, peer: &Peer) {
    let subscriptions: Vec<SubscriptionId> = peer.senders.lock().unwrap().keys().copied().collect();
    let now = Instant::now();
    room.with_core(|core| {
        for subscription in subscriptions {
            let _ = core.room.handle_input(Input::KeyframeRequest { subscription, now });
        }
    });
}

fn validate_name(what: &str, name: &str) -> ApiResult<()> {
    let ok =
        !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(error(ErrorCode::BadRequest, format!("{what} ids are 1-128 characters of [A-Za-z0-9-_.:], got {name:?}")))
    }
}

async fn close_peer(peer: &Peer) {
    peer.closed.store(true, Ordering::SeqCst);
    peer.event_arrived.notify_waiters();
    peer.negotiate.notify_one();
    if let Some(pc) = peer.inbound.lock().await.take() {
        let _ = pc.close().await;
    }
    let _ = peer.outbound.close().await;
}

/// Removes a peer whose connection failed and was not restarted within the grace time.
fn watch_connection(sfu: Weak<Sfu>, room: Weak<RoomEntry>, peer: Weak<Peer>, pc: &Arc<RTCPeerConnection>) {
    let pc_w = Arc::downgrade(pc);
    pc.on_peer_connection_state_change(Box::new(move |state| {
        let (sfu, room, peer, pc_w) = (sfu.clone(), room.clone(), peer.clone(), pc_w.clone());
        Box::pin(async move {
            if state == RTCPeerConnectionState::Connected {
                let (Some(room), Some(peer)) = (room.upgrade(), peer.upgrade()) else { return };
                let outbound = pc_w.upgrade().is_some_and(|pc| Arc::ptr_eq(&pc, &peer.outbound));
                if outbound && !peer.sending.load(Ordering::SeqCst) {
                    // Media starts a moment after the connection is up (media::CONNECT_HOLDBACK),
                    // with a fresh picture.
                    tokio::spawn(async move {
                        tokio::time::sleep(media::CONNECT_HOLDBACK).await;
                        peer.sending.store(true, Ordering::SeqCst);
                        request_keyframes(&room, &peer);
                    });
                } else {
                    request_keyframes(&room, &peer);
                }
                return;
            }
            if state != RTCPeerConnectionState::Failed {
                return;
            }
            tokio::spawn(async move {
                tokio::time::sleep(FAILED_PEER_GRACE).await;
                let still_failed =
                    pc_w.upgrade().is_some_and(|pc| pc.connection_state() == RTCPeerConnectionState::Failed);
                if let (true, Some(sfu), Some(room), Some(peer)) =
                    (still_failed, sfu.upgrade(), room.upgrade(), peer.upgrade())
                {
                    sfu.drop_peer(&room, &peer.id, "its connection failed").await;
                }
            });
        })
    }));
}

/// Reads one incoming track (or simulcast layer) and forwards what the core says.
async fn forward_track(
    sfu: Arc<Sfu>,
    room: Arc<RoomEntry>,
    peer: Arc<Peer>,
    pc: Weak<RTCPeerConnection>,
    track: Arc<TrackRemote>,
    receiver: Arc<RTCRtpReceiver>,
) {
    let mime = track.codec().capability.mime_type.clone();
    let Some(codec) = Codec::from_mime(&mime) else {
        warn!(participant = %peer.id, %mime, "unsupported codec: track ignored");
        return;
    };
    let id = track.id();
    let rid = track.rid().to_owned();
    let description = peer.descriptions.lock().unwrap().get(&id).cloned();
    let default_source = if track.kind() == RTPCodecType::Video { Source::Camera } else { Source::Microphone };
    let source = description.as_ref().map(|d| from_api_source(d.source)).unwrap_or(default_source);
    // An edge's relay shows tracks as published by their origin participant (the stream id).
    let origin =
        description.and_then(|d| d.origin).or_else(|| (peer.kind == ParticipantKind::Relay).then(|| track.stream_id()));
    let level_id = media::audio_level_id(&receiver).await;
    let registered = room.with_core(|core| {
        let handle = match core.room.track_handle(&id) {
            Some(h) if core.room.track_publisher(h) == Some(&peer.id) => Ok(h),
            Some(_) => Err(RoomError::TrackExists(id.clone())),
            None => {
                let info = TrackInfo { id: id.clone(), codec, source, origin };
                core.room
                    .handle_input(Input::Publish { participant: &peer.id, info })
                    .map(|o| o.track().expect("a handle"))
            }
        };
        handle.and_then(|h| {
            let layer = core.room.handle_input(Input::AddLayer { track: h, rid: &rid })?.layer().expect("an index");
            core.sources.insert((h, layer), (pc, track.ssrc()));
            Ok((h, layer))
        })
    });
    let (handle, layer) = match registered {
        Ok(r) => r,
        Err(e) => {
            warn!(participant = %peer.id, error = %e, "track refused");
            return;
        }
    };
    debug!(room = %room.name, participant = %peer.id, track = %id, rid = %rid, %mime, "forwarding");
    sfu.recount();
    let mut writes: Vec<Write> = Vec::new();
    while let Ok((mut pkt, _)) = track.read_rtp().await {
        let audio_level =
            level_id.and_then(|id| pkt.header.get_extension(id)).and_then(|b| b.first().map(|v| v & 0x7f));
        let size = pkt.payload.len() + 12;
        let commands = {
            let packet = RtpMeta {
                seq: pkt.header.sequence_number,
                ts: pkt.header.timestamp,
                payload: &pkt.payload,
                size,
                audio_level,
            };
            let mut core = room.core.lock().unwrap();
            let _ = core.room.handle_input(Input::Rtp { track: handle, layer, packet, now: Instant::now() });
            core.drain(&mut writes)
        };
        room.submit(commands);
        sfu.metrics.packets_in.inc();
        sfu.metrics.bytes_in.inc_by(size as u64);
        if writes.is_empty() {
            continue;
        }
        // Header extensions are per connection (ids differ); the sender adds its own.
        // The parsed block's padding goes too: left over, it makes webrtc-rs size the
        // sender's MID extension wrong for two-digit MIDs ("10" on), and every write of
        // that track fails to marshal (a subscriber's eleventh transceiver onward).
        pkt.header.extension = false;
        pkt.header.extensions.clear();
        pkt.header.extension_profile = 0;
        pkt.header.extensions_padding = 0;
        sfu.metrics.packets_out.inc_by(writes.len() as u64);
        sfu.metrics.bytes_out.inc_by((writes.len() * size) as u64);
        for (sink, seq, ts) in writes.drain(..) {
            let mut out = pkt.clone();
            out.header.sequence_number = seq;
            out.header.timestamp = ts;
            if sink.queue.try_send(out).is_err() {
                sfu.metrics.queue_drops.inc();
            }
        }
        if room.closed.load(Ordering::Relaxed) {
            break;
        }
    }
    debug!(room = %room.name, participant = %peer.id, track = %id, rid = %rid, "track ended");
}

/// Executes a room's commands in order.
async fn run_commands(sfu: Weak<Sfu>, room: Weak<RoomEntry>, mut rx: mpsc::UnboundedReceiver<Vec<Output>>) {
    while let Some(batch) = rx.recv().await {
        let (Some(sfu), Some(room)) = (sfu.upgrade(), room.upgrade()) else { return };
        for command in batch {
            execute(&sfu, &room, command).await;
        }
    }
}

async fn execute(sfu: &Arc<Sfu>, room: &Arc<RoomEntry>, command: Output) {
    match command {
        Output::SubscriptionAdded { subscription, subscriber, track_id, publisher, codec, source, .. } => {
            let Ok(peer) = room.peer(&subscriber) else { return };
            peer.pending.lock().unwrap().push(PendingChange::Add { subscription, track_id, publisher, codec, source });
            peer.request_negotiation(false);
        }
        Output::SubscriptionRemoved { subscription, subscriber } => {
            // Forwarding stops now; the connection drops the track at its next offer.
            room.core.lock().unwrap().sinks.remove(&subscription);
            let Ok(peer) = room.peer(&subscriber) else { return };
            peer.pending.lock().unwrap().push(PendingChange::Remove { subscription });
            peer.request_negotiation(false);
        }
        Output::RequestKeyframe { track, layer } => {
            let source = room.core.lock().unwrap().sources.get(&(track, layer)).cloned();
            if let Some((pc, ssrc)) = source
                && let Some(pc) = pc.upgrade()
            {
                let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                let _ = pc.write_rtcp(&[Box::new(pli)]).await;
                sfu.metrics.keyframe_requests.inc();
            }
        }
        Output::Event { to, event } => {
            if let RoomEvent::LayerChanged { .. } = event {
                sfu.metrics.layer_switches.inc();
            }
            if let Ok(peer) = room.peer(&to) {
                peer.push_event(to_api_event(event));
            }
        }
        Output::Empty => debug!(room = %room.name, "room is empty"),
        // `RoomCore::drain` writes forwards itself and keeps the deadline.
        Output::Forward(_) | Output::Timeout(_) => {}
    }
}

/// PLIs, FIRs and REMBs a subscriber sends about one of its tracks.
async fn read_subscriber_rtcp(
    room: Weak<RoomEntry>,
    metrics: Metrics,
    subscriber: String,
    subscription: SubscriptionId,
    sender: Arc<RTCRtpSender>,
) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        let Some(room) = room.upgrade() else { return };
        for p in packets {
            let any = p.as_any();
            if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                let _ = room.input(Input::KeyframeRequest { subscription, now: Instant::now() });
            } else if let Some(nack) =
                any.downcast_ref::<webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack>()
            {
                let sink = room.core.lock().unwrap().sinks.get(&subscription).cloned();
                if let Some(sink) = sink {
                    let resent = sink.resend(nack.nacks.iter().flat_map(|pair| pair.packet_list()));
                    metrics.retransmissions.inc_by(resent as u64);
                }
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                let estimate =
                    Input::Estimate { subscriber: &subscriber, bps: remb.bitrate as u64, now: Instant::now() };
                let _ = room.input(estimate);
            }
        }
    }
}

/// Services the core's timers (layer evaluation, speaker detection).
async fn run_timers(room: Weak<RoomEntry>) {
    loop {
        let Some(r) = room.upgrade() else { return };
        if r.closed.load(Ordering::SeqCst) {
            return;
        }
        let deadline = r.core.lock().unwrap().timeout;
        drop(r);
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        let Some(r) = room.upgrade() else { return };
        let _ = r.input(Input::Timeout(Instant::now()));
    }
}

/// Renegotiates a peer's outbound connection whenever asked, one offer at a time.
async fn run_negotiation(peer: Weak<Peer>, metrics: Metrics) {
    let Some(p) = peer.upgrade() else { return };
    loop {
        p.negotiate.notified().await;
        if p.closed.load(Ordering::SeqCst) {
            return;
        }
        // Let a burst of subscription changes settle into one offer, and give the
        // other side time to start its receivers from the last exchange: webrtc-rs
        // restarts a receiver that a quick re-offer finds not yet started, and the
        // track already handed to the application goes silent.
        tokio::time::sleep(RENEGOTIATION_SETTLE).await;
        let restart = {
            let mut n = p.negotiation.lock().unwrap();
            if !n.needed || n.awaiting_answer {
                continue;
            }
            n.needed = false;
            n.awaiting_answer = true;
            std::mem::take(&mut n.restart)
        };
        apply_pending(&p, &metrics).await;
        if let Err(e) = offer_outbound(&p, restart).await {
            warn!(participant = %p.id, error = %e, "renegotiation failed");
            p.negotiation.lock().unwrap().awaiting_answer = false;
        }
        // More changes may have arrived meanwhile.
        if p.negotiation.lock().unwrap().needed {
            p.negotiate.notify_one();
        }
    }
}

/// Adds and removes the outbound connection's tracks (no offer is outstanding).
async fn apply_pending(peer: &Arc<Peer>, metrics: &Metrics) {
    let changes: Vec<PendingChange> = std::mem::take(&mut *peer.pending.lock().unwrap());
    let Some(room) = peer.room.upgrade() else { return };
    for change in changes {
        match change {
            PendingChange::Add { subscription, track_id, publisher, codec, source } => {
                let Some(capability) = media::capability(codec_mime(codec)) else { continue };
                // Stream id = the publisher, so clients group a person's tracks.
                let local = Arc::new(SubscriberTrack::new(capability, track_id.clone(), publisher.clone()));
                let sender = match peer.outbound.add_track(local.clone() as Arc<dyn TrackLocal + Send + Sync>).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(participant = %peer.id, track = %track_id, error = %e, "could not add a subscription");
                        continue;
                    }
                };
                let kept = {
                    let mut core = room.core.lock().unwrap();
                    let kept = core.room.has_subscription(subscription);
                    if kept {
                        core.sinks.insert(subscription, Sink::spawn(local, peer.sending.clone()));
                    }
                    kept
                };
                if !kept {
                    // Removed again before it was applied: nothing to forward.
                    let _ = peer.outbound.remove_track(&sender).await;
                    continue;
                }
                debug!(participant = %peer.id, track = %track_id, "subscription added");
                let description =
                    TrackDescription { id: track_id, source: to_api_source(source), origin: Some(publisher) };
                peer.senders.lock().unwrap().insert(subscription, (sender.clone(), description));
                tokio::spawn(read_subscriber_rtcp(
                    Arc::downgrade(&room),
                    metrics.clone(),
                    peer.id.clone(),
                    subscription,
                    sender,
                ));
            }
            PendingChange::Remove { subscription } => {
                let sender = peer.senders.lock().unwrap().remove(&subscription);
                if let Some((sender, _)) = sender {
                    let _ = peer.outbound.remove_track(&sender).await;
                }
            }
        }
    }
}

async fn offer_outbound(peer: &Arc<Peer>, restart: bool) -> anyhow::Result<()> {
    let pc = &peer.outbound;
    let options = restart.then(|| RTCOfferOptions { ice_restart: true, ..Default::default() });
    let offer = pc.create_offer(options).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await?;
    let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered.recv()).await;
    let sdp = pc.local_description().await.ok_or_else(|| anyhow::anyhow!("no local description"))?.sdp;
    match &peer.negotiator {
        Negotiator::Events => peer.push_event(Event::SubscriberOffer { sdp }),
        Negotiator::Origin { api, room, participant } => {
            let tracks: Vec<TrackDescription> = peer.senders.lock().unwrap().values().map(|(_, d)| d.clone()).collect();
            let url = api.url(api::paths::PUBLISHER_OFFER, room, participant, "");
            let answer: api::AnswerResponse = api.post(&url, &api::OfferRequest { sdp, tracks }).await?;
            let answer = answer.answer.ok_or_else(|| anyhow::anyhow!("the origin sent no answer"))?;
            pc.set_remote_description(RTCSessionDescription::answer(answer)?).await?;
            peer.negotiation.lock().unwrap().awaiting_answer = false;
        }
    }
    Ok(())
}
