//! Renegotiation of a peer's outbound connection (the SFU offers): subscription changes
//! become track changes, applied between offers, one offer at a time.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use switchboard_sfu_api::{self as api, ErrorCode, Event, TrackDescription};
use switchboard_sfu_client::media;
use switchboard_sfu_core::{Codec, Source, SubscriptionId};
use tracing::{debug, warn};
use webrtc::peer_connection::offer_answer_options::RTCOfferOptions;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::track::track_local::TrackLocal;

use super::convert::{ApiResult, codec_mime, error, to_api_source};
use super::forward::{Sink, read_subscriber_rtcp};
use super::peer::Peer;
use super::room_driver::RoomEntry;
use crate::metrics::Metrics;
use crate::subscriber_track::SubscriberTrack;

/// Longest the SFU waits for its own ICE candidates before offering or answering.
pub(super) const GATHER_TIMEOUT: Duration = Duration::from_secs(3);
/// Quiet time before a renegotiation offer (see `run_negotiation`).
const RENEGOTIATION_SETTLE: Duration = Duration::from_millis(150);

/// How a peer's outgoing connection is renegotiated.
pub enum Negotiator {
    /// A client: the SFU's offer goes out as a `SubscriberOffer` event.
    Events,
    /// This SFU is an edge: its uplink offer is posted to the origin's publisher endpoint.
    Origin { api: switchboard_sfu_client::SfuApi, room: String, participant: String },
}

#[derive(Default)]
pub(super) struct Negotiation {
    needed: bool,
    restart: bool,
    awaiting_answer: bool,
}

pub(super) enum PendingChange {
    Add(NewTrack),
    Remove { subscription: SubscriptionId },
}

/// An outgoing track a new subscription needs.
pub(super) struct NewTrack {
    pub(super) subscription: SubscriptionId,
    pub(super) track_id: String,
    /// Shown as the track's stream id, so clients group a person's tracks.
    pub(super) publisher: String,
    pub(super) codec: Codec,
    pub(super) source: Source,
}

impl Peer {
    pub(super) fn request_negotiation(&self, restart: bool) {
        let mut n = self.negotiation.lock().unwrap();
        n.needed = true;
        n.restart |= restart;
        drop(n);
        self.negotiate.notify_one();
    }

    /// Queues an outgoing track for a new subscription, for the next offer.
    pub(super) fn add_subscription(&self, track: NewTrack) {
        self.pending.lock().unwrap().push(PendingChange::Add(track));
        self.request_negotiation(false);
    }

    /// Queues the removal of a dropped subscription's track, for the next offer.
    pub(super) fn remove_subscription(&self, subscription: SubscriptionId) {
        self.pending.lock().unwrap().push(PendingChange::Remove { subscription });
        self.request_negotiation(false);
    }

    /// Applies the participant's answer to the SFU's outstanding offer.
    pub(super) async fn accept_answer(&self, sdp: String) -> ApiResult<()> {
        if !self.negotiation.lock().unwrap().awaiting_answer {
            return Err(error(ErrorCode::BadRequest, "no subscriber offer is waiting for an answer"));
        }
        tracing::trace!(participant = %self.id, %sdp, "subscriber answer");
        let answer = RTCSessionDescription::answer(sdp)
            .map_err(|e| error(ErrorCode::InvalidSdp, format!("the answer is not valid SDP: {e}")))?;
        self.outbound
            .set_remote_description(answer)
            .await
            .map_err(|e| error(ErrorCode::InvalidSdp, format!("the answer was not accepted: {e}")))?;
        self.negotiation.lock().unwrap().awaiting_answer = false;
        self.negotiate.notify_one();
        Ok(())
    }
}

/// Renegotiates a peer's outbound connection whenever asked, one offer at a time.
pub(super) async fn run_negotiation(peer: Weak<Peer>, metrics: Metrics) {
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
            PendingChange::Add(track) => add_track(peer, &room, metrics, track).await,
            PendingChange::Remove { subscription } => {
                let sender = peer.senders.lock().unwrap().remove(&subscription);
                if let Some((sender, _)) = sender {
                    let _ = peer.outbound.remove_track(&sender).await;
                }
            }
        }
    }
}

/// Gives a subscription its outgoing track, its sink and its RTCP reader.
async fn add_track(peer: &Arc<Peer>, room: &Arc<RoomEntry>, metrics: &Metrics, track: NewTrack) {
    let NewTrack { subscription, track_id, publisher, codec, source } = track;
    let Some(capability) = media::capability(codec_mime(codec)) else { return };
    let clock_rate = capability.clock_rate;
    let local = Arc::new(
        SubscriberTrack::new(capability, track_id.clone(), publisher.clone()).with_transport(peer.transport.clone()),
    );
    let sender = match peer.outbound.add_track(local.clone() as Arc<dyn TrackLocal + Send + Sync>).await {
        Ok(s) => s,
        Err(e) => {
            warn!(participant = %peer.id, track = %track_id, error = %e, "could not add a subscription");
            return;
        }
    };
    if let Some(rtx) = sender.get_parameters().await.encodings.first().map(|e| e.rtx.ssrc) {
        local.set_rtx_ssrc(rtx);
    }
    if !room.add_sink(subscription, || Sink::spawn(local, peer.sending.clone())) {
        // Removed again before it was applied: nothing to forward.
        let _ = peer.outbound.remove_track(&sender).await;
        return;
    }
    debug!(participant = %peer.id, track = %track_id, "subscription added");
    let description =
        TrackDescription { origin: Some(publisher), ..TrackDescription::new(track_id, to_api_source(source)) };
    peer.senders.lock().unwrap().insert(subscription, (sender.clone(), description));
    let relay = peer.kind == switchboard_sfu_core::ParticipantKind::Relay;
    tokio::spawn(read_subscriber_rtcp(
        Arc::downgrade(room),
        metrics.clone(),
        peer.id.clone(),
        subscription,
        sender,
        clock_rate,
        relay,
        peer.transport.clone(),
    ));
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
