//! Cascading: this SFU joins an origin SFU as an edge of one room.
//!
//! On the origin the edge is one participant of kind Relay, publishing the tracks of
//! the edge's own participants and subscribing to everything else. On the edge the
//! origin is a pseudo-participant, `relay-origin`, whose published tracks are the
//! origin's (shown as their original publishers) and whose subscriptions are the
//! edge's local tracks. The core never sends a relay its own tracks back, so trees of
//! any depth carry each track once per link.

use std::sync::Arc;
use std::time::Duration;

use switchboard_sfu_api::{self as api, Event, EventsResponse, SdpBody, TrackDescription, paths};
use switchboard_sfu_client::SfuApi;
use switchboard_sfu_core::ParticipantKind;
use tracing::{info, warn};
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;

use crate::sfu::{ApiResult, Negotiator, Peer, RoomEntry, Sfu, error};

/// The edge-side pseudo-participant standing for the origin.
pub const ORIGIN_PARTICIPANT: &str = "relay-origin";

pub async fn start(sfu: Arc<Sfu>, room_name: &str, origin_url: &str, edge_name: &str) -> ApiResult<()> {
    let room = sfu.open_room(room_name)?;
    if room.peer(ORIGIN_PARTICIPANT).is_ok() {
        return Ok(()); // already relaying
    }
    let origin = SfuApi::new(origin_url);
    let relay_id = format!("relay-{edge_name}");
    let join = api::JoinRequest {
        participant_id: relay_id.clone(),
        kind: api::ParticipantKind::Relay,
        auto_subscribe: true,
        offer: None,
        tracks: vec![],
    };
    let _: api::AnswerResponse = origin
        .post(&origin.url(paths::PARTICIPANTS, room_name, "", ""), &join)
        .await
        .map_err(|e| error(api::ErrorCode::BadRequest, format!("the origin {origin_url} refused the relay: {e}")))?;
    let negotiator =
        Negotiator::Origin { api: origin.clone(), room: room_name.to_owned(), participant: relay_id.clone() };
    let peer = sfu.new_peer(&room, ORIGIN_PARTICIPANT, ParticipantKind::Relay, negotiator).await?;
    sfu.attach_peer(&room, peer.clone())?;
    info!(room = room_name, origin = origin_url, "relaying from origin");
    tokio::spawn(follow_origin(sfu, room, peer, origin, relay_id));
    Ok(())
}

/// Long-polls the origin for our relay participant: answers its offers, learns who
/// published what, and ends the relay when the origin closes it.
async fn follow_origin(sfu: Arc<Sfu>, room: Arc<RoomEntry>, peer: Arc<Peer>, origin: SfuApi, relay_id: String) {
    let mut after = 0;
    let mut failures = 0;
    loop {
        let url = format!("{}?after={after}&waitMs=10000", origin.url(paths::EVENTS, &room.name, &relay_id, ""));
        let batch: EventsResponse = match origin.get(&url).await {
            Ok(b) => {
                failures = 0;
                b
            }
            Err(e) => {
                failures += 1;
                if e.code().is_some() || failures > 10 {
                    warn!(room = %room.name, error = %e, "the origin ended the relay");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for e in batch.events {
            after = after.max(e.seq);
            match e.event {
                Event::SubscriberOffer { sdp } => {
                    if let Err(err) = answer(&sfu, &room, &peer, &origin, &relay_id, sdp).await {
                        warn!(room = %room.name, error = %err, "could not answer the origin");
                    }
                }
                Event::TrackPublished { participant, track, source, .. } => {
                    peer.describe(&[TrackDescription { id: track, source, origin: Some(participant) }]);
                }
                Event::Closed { .. } => {
                    sfu.drop_peer(&room, &peer.id, "the origin closed the relay").await;
                    return;
                }
                _ => {}
            }
        }
    }
    sfu.drop_peer(&room, &peer.id, "the origin is unreachable").await;
}

async fn answer(
    sfu: &Arc<Sfu>,
    room: &Arc<RoomEntry>,
    peer: &Arc<Peer>,
    origin: &SfuApi,
    relay_id: &str,
    sdp: String,
) -> anyhow::Result<()> {
    let offer = RTCSessionDescription::offer(sdp)?;
    let answer = sfu.answer_inbound(room, peer, offer).await?;
    let _: serde_json::Value =
        origin.post(&origin.url(paths::SUBSCRIBER_ANSWER, &room.name, relay_id, ""), &SdpBody { sdp: answer }).await?;
    Ok(())
}
