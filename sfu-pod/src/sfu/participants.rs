//! What the internal API does to rooms and participants: each call checks its
//! arguments, feeds the room's core and answers with what the core said.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_sfu_api::{self as api, Candidate, ConnectionRole, ErrorCode, Event};
use switchboard_sfu_core::node::NodeState;
use switchboard_sfu_core::{Input, ParticipantKind, Preferences};
use tracing::{info, warn};
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;

use super::Sfu;
use super::convert::{
    ApiResult, declarations, error, media_kind, parse_offer, refusal_error, room_error, to_api_source, to_core_kind,
    validate_name,
};
use super::negotiation::Negotiator;
use super::peer::Peer;
use super::room_driver::RoomEntry;

impl Sfu {
    /// Adds a participant; answers its publisher offer when it sent one.
    pub async fn join(self: &Arc<Self>, room_name: &str, req: api::JoinRequest) -> ApiResult<api::AnswerResponse> {
        validate_name("participant", &req.participant_id)?;
        let kind = to_core_kind(req.kind);
        let declared = declarations(kind, &req.tracks)?;
        if !req.publish && (req.offer.is_some() || !req.tracks.is_empty()) {
            return Err(not_allowed(&req.participant_id));
        }
        self.node.lock().unwrap().admit().map_err(refusal_error)?;
        let offer = req.offer.as_deref().map(parse_offer).transpose()?;
        let room = self.open_room(room_name)?;
        if room.peers.lock().unwrap().contains_key(&req.participant_id) {
            return Err(error(
                ErrorCode::AlreadyJoined,
                format!("participant {} has already joined", req.participant_id),
            ));
        }
        let peer = self.new_peer(&room, &req.participant_id, kind, Negotiator::Events).await?;
        peer.describe(&req.tracks);
        let answer = match offer {
            Some(offer) => match self.answer_inbound(&room, &peer, offer).await {
                Ok(a) => Some(a),
                Err(e) => {
                    peer.close().await;
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
        // Declared before its first packet can arrive: the answer has not left yet.
        let join = Input::Join {
            participant: &req.participant_id,
            kind: peer.kind,
            auto_subscribe: req.auto_subscribe,
            may_publish: req.publish,
            tracks: &declared,
        };
        if let Err(e) = room.input(join) {
            room.peers.lock().unwrap().remove(&req.participant_id);
            peer.close().await;
            return Err(room_error(e));
        }
        if matches!(self.state(), NodeState::Draining { .. }) {
            peer.push_event(Event::Draining);
        }
        info!(room = room_name, participant = %req.participant_id, kind = ?peer.kind, "participant joined");
        self.recount();
        Ok(api::AnswerResponse { answer })
    }

    pub async fn publisher_offer(
        self: &Arc<Self>,
        room_name: &str,
        participant: &str,
        req: api::OfferRequest,
    ) -> ApiResult<api::AnswerResponse> {
        let room = self.room(room_name)?;
        let peer = room.peer(participant)?;
        if room.read(|core| core.may_publish(participant)) == Some(false) {
            return Err(not_allowed(participant));
        }
        let offer = parse_offer(&req.sdp)?;
        let declared = declarations(peer.kind, &req.tracks)?;
        // A relay's tracks were checked where they were published: it declares nothing
        // to the core, only their sources and origins to the driver.
        if peer.kind != ParticipantKind::Relay {
            room.input(Input::Declare { participant, tracks: &declared }).map_err(room_error)?;
        }
        peer.describe(&req.tracks);
        let answer = self.answer_inbound(&room, &peer, offer).await?;
        Ok(api::AnswerResponse { answer: Some(answer) })
    }

    pub async fn subscriber_answer(&self, room_name: &str, participant: &str, sdp: String) -> ApiResult<()> {
        let room = self.room(room_name)?;
        let peer = room.peer(participant)?;
        peer.accept_answer(sdp).await?;
        // Packets sent before the answer landed (the first keyframe among them) are lost.
        peer.request_keyframes(&room);
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
        peer.close().await;
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
        let prefs = Preferences { max_layer: req.max_layer, max_height: req.max_height, paused: req.paused };
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
        let (mut participants, mut tracks, subscriptions) = room.read(|core| {
            let participants: Vec<String> =
                core.participants().filter(|(_, k)| *k != ParticipantKind::Mixer).map(|(p, _)| p.clone()).collect();
            let tracks: Vec<api::TrackStatus> = core
                .tracks()
                .map(|(id, p, codec, source, muted)| api::TrackStatus {
                    id: id.clone(),
                    participant: p.clone(),
                    kind: media_kind(codec),
                    source: to_api_source(source),
                    muted,
                })
                .collect();
            (participants, tracks, core.subscription_count())
        });
        participants.sort();
        tracks.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(api::RoomStatus { room: room_name.into(), participants, tracks, subscriptions, audio: room.audio })
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
        let join = Input::Join {
            participant: &peer.id,
            kind: peer.kind,
            auto_subscribe: true,
            may_publish: true,
            tracks: &[],
        };
        room.input(join).map_err(room_error)?;
        self.recount();
        Ok(())
    }

    /// Removes a peer whose connection failed or whose relay ended.
    pub async fn drop_peer(&self, room: &Arc<RoomEntry>, id: &str, why: &str) {
        let peer = room.peers.lock().unwrap().remove(id);
        if let Some(peer) = peer {
            let _ = room.input(Input::Leave { participant: id });
            peer.push_event(Event::Closed { reason: why.into() });
            peer.close().await;
            warn!(room = %room.name, participant = id, why, "participant removed");
            self.recount();
        }
    }
}

fn not_allowed(participant: &str) -> api::ApiError {
    error(
        ErrorCode::PublishNotAllowed,
        format!(
            "participant {participant} joined as one that may not publish: it sends no offer and declares no track"
        ),
    )
}
