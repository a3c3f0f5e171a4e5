//! A participant: its two peer connections (media in, media out), its long-poll event
//! queue, and what happens when a connection comes up or fails.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use switchboard_sfu_api::{ErrorCode, Event, SequencedEvent, TrackDescription};
use switchboard_sfu_client::media;
use switchboard_sfu_core::{Input, ParticipantKind, SubscriptionId};
use tokio::sync::Notify;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_receiver::RTCRtpReceiver;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_remote::TrackRemote;

use super::Sfu;
use super::convert::{ApiResult, error, internal};
use super::forward::forward_track;
use super::negotiation::{GATHER_TIMEOUT, Negotiation, Negotiator, PendingChange, run_negotiation};
use super::probe::run_prober;
use super::room_driver::RoomEntry;
use crate::transport_cc::TransportCc;

/// Events kept per participant for the long poll.
const EVENT_BACKLOG: usize = 2000;
/// Longest a long poll waits.
pub const MAX_POLL: Duration = Duration::from_secs(25);
/// A participant whose connection failed (and was not ICE-restarted) is removed.
const FAILED_PEER_GRACE: Duration = Duration::from_secs(5);

struct EventQueue {
    next: u64,
    events: VecDeque<SequencedEvent>,
}

/// A participant's connections and event queue.
pub struct Peer {
    pub id: String,
    pub kind: ParticipantKind,
    /// Media from the participant (it offers; for an edge's relay, the origin offers).
    pub(super) inbound: tokio::sync::Mutex<Option<Arc<RTCPeerConnection>>>,
    /// Media to the participant (the SFU offers).
    pub(super) outbound: Arc<RTCPeerConnection>,
    pub(super) negotiator: Negotiator,
    pub(super) negotiation: Mutex<Negotiation>,
    pub(super) negotiate: Notify,
    events: Mutex<EventQueue>,
    event_arrived: Notify,
    pub(super) senders: Mutex<HashMap<SubscriptionId, (Arc<RTCRtpSender>, TrackDescription)>>,
    /// What the participant said about the tracks it publishes, by track id.
    pub(super) descriptions: Mutex<HashMap<String, TrackDescription>>,
    /// Incoming tracks refused as undeclared, by id: each is counted and logged once.
    pub(super) refused: Mutex<HashSet<String>>,
    /// Track changes for the outbound connection, applied by the negotiation task just
    /// before its next offer: a track added while an offer is outstanding would start
    /// sending when that offer's answer lands, with an SSRC the answerer never saw.
    pub(super) pending: Mutex<Vec<PendingChange>>,
    /// Set once the outbound connection has been up for `media::CONNECT_HOLDBACK`.
    pub(super) sending: Arc<AtomicBool>,
    pub(super) room: Weak<RoomEntry>,
    pub(super) closed: AtomicBool,
    /// The outbound connection's transport-wide numbering and send-side estimate.
    pub(super) transport: Arc<TransportCc>,
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

    pub fn describe(&self, tracks: &[TrackDescription]) {
        let mut d = self.descriptions.lock().unwrap();
        for t in tracks {
            d.insert(t.id.clone(), t.clone());
        }
    }

    /// Asks the publishers of everything this peer receives for a keyframe (the core
    /// rate-limits them).
    pub(super) fn request_keyframes(&self, room: &RoomEntry) {
        let subscriptions: Vec<SubscriptionId> = self.senders.lock().unwrap().keys().copied().collect();
        let now = Instant::now();
        room.with_core(|core| {
            for subscription in subscriptions {
                let _ = core.room.handle_input(Input::KeyframeRequest { subscription, now });
            }
        });
    }

    /// Ends the long poll and the negotiation task, and closes both connections.
    pub(super) async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.event_arrived.notify_waiters();
        self.transport.wake.notify_one();
        self.negotiate.notify_one();
        if let Some(pc) = self.inbound.lock().await.take() {
            let _ = pc.close().await;
        }
        let _ = self.outbound.close().await;
    }
}

impl Sfu {
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
            refused: Mutex::new(HashSet::new()),
            pending: Mutex::new(Vec::new()),
            sending: Arc::new(AtomicBool::new(false)),
            room: Arc::downgrade(room),
            closed: AtomicBool::new(false),
            transport: Arc::new(TransportCc::new()),
        });
        watch_connection(Arc::downgrade(self), Arc::downgrade(room), Arc::downgrade(&peer), &peer.outbound);
        tokio::spawn(run_negotiation(Arc::downgrade(&peer), self.metrics.clone()));
        if matches!(kind, ParticipantKind::Client | ParticipantKind::Hidden) {
            tokio::spawn(run_prober(Arc::downgrade(&peer), self.metrics.clone()));
        }
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
        prefer_red(&pc).await;
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
        let api =
            if matches!(peer.negotiator, Negotiator::Origin { .. }) { &self.relay_api } else { &self.inbound_api };
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
}

/// Answers audio with RED (RFC 2198) ahead of Opus where the offer has both: a browser
/// sends redundancy only when the answer lists RED first. Best effort: a connection
/// whose engine has no RED (an edge's relay) answers as it would.
async fn prefer_red(pc: &RTCPeerConnection) {
    use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecParameters, RTPCodecType};
    let codecs = vec![
        RTCRtpCodecParameters { capability: media::red(), payload_type: 0, ..Default::default() },
        RTCRtpCodecParameters { capability: media::opus(), payload_type: 0, ..Default::default() },
    ];
    for t in pc.get_transceivers().await {
        if t.kind() == RTPCodecType::Audio {
            let _ = t.set_codec_preferences(codecs.clone()).await;
        }
    }
}

/// On a connection coming up, asks for fresh pictures (the outbound one starts sending
/// first); removes a peer whose connection failed and was not restarted within the
/// grace time.
fn watch_connection(sfu: Weak<Sfu>, room: Weak<RoomEntry>, peer: Weak<Peer>, pc: &Arc<RTCPeerConnection>) {
    let pc_w = Arc::downgrade(pc);
    pc.on_peer_connection_state_change(Box::new(move |state| {
        let (sfu, room, peer, pc_w) = (sfu.clone(), room.clone(), peer.clone(), pc_w.clone());
        Box::pin(async move {
            match state {
                RTCPeerConnectionState::Connected => connected(room, peer, pc_w),
                RTCPeerConnectionState::Failed => {
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
                }
                _ => {}
            }
        })
    }));
}

fn connected(room: Weak<RoomEntry>, peer: Weak<Peer>, pc: Weak<RTCPeerConnection>) {
    let (Some(room), Some(peer)) = (room.upgrade(), peer.upgrade()) else { return };
    let outbound = pc.upgrade().is_some_and(|pc| Arc::ptr_eq(&pc, &peer.outbound));
    if outbound && !peer.sending.load(Ordering::SeqCst) {
        // Media starts a moment after the connection is up (media::CONNECT_HOLDBACK),
        // with a fresh picture.
        tokio::spawn(async move {
            tokio::time::sleep(media::CONNECT_HOLDBACK).await;
            peer.sending.store(true, Ordering::SeqCst);
            peer.request_keyframes(&room);
        });
    } else {
        peer.request_keyframes(&room);
    }
}
