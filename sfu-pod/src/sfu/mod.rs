//! The thin driver: webrtc-rs peer connections and tokio tasks around the sans-IO
//! [`Room`](switchboard_sfu_core::Room). Every decision (who gets which packet, with
//! which numbers, when to ask for a keyframe) is the core's; the driver moves packets
//! and carries out what the core decided.
//!
//! * this module: the SFU process (its rooms, its drain, its load);
//! * `participants`: what the internal API does to rooms and participants;
//! * `peer`: a participant's connections and event queue;
//! * `negotiation`: renegotiating a participant's outbound connection;
//! * `room_driver`: the task side of a room, which feeds the core its inputs and
//!   drains its outputs (and why its lock is never held across an `await`);
//! * `forward`: the packet path, from a publisher's track to each subscription's
//!   queue, and subscribers' RTCP;
//! * `retransmit`: the history that answers subscribers' NACKs (and gives probes their
//!   copies);
//! * `probe`: sending what a subscriber's send-side estimate asks for to probe its path;
//! * `convert`: the internal API's types to and from the core's.

mod convert;
mod forward;
pub mod mixer;
mod negotiation;
mod participants;
mod peer;
mod probe;
mod retransmit;
mod room_driver;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchboard_sfu_api::{self as api, ErrorCode, Event};
use switchboard_sfu_core::node::{Node, NodeState};
use switchboard_sfu_core::{AudioPolicy, ParticipantKind};
use tokio::sync::Notify;
use tracing::info;
use webrtc::api::API;

pub use self::convert::{ApiResult, codec_mime, error, to_api_source};
use self::convert::{to_api_node_state, validate_name};
pub use self::negotiation::Negotiator;
pub use self::peer::{MAX_POLL, Peer};
pub use self::room_driver::RoomEntry;
use crate::metrics::Metrics;

#[derive(Default)]
struct Totals {
    rooms: usize,
    people: usize,
    participants: usize,
    tracks: usize,
    subscriptions: usize,
}

pub struct Sfu {
    /// For the connections the SFU sends on (subscribers), with transport-cc and RTX.
    api: API,
    /// For the connections publishers send on: the same, with TWCC feedback to them.
    inbound_api: API,
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
    /// Which audio listeners receive in rooms opened from now on.
    pub(super) audio_policy: Mutex<AudioPolicy>,
}

impl Sfu {
    /// An SFU on `net` (its media socket): connections it sends on use `net` with
    /// transport-cc (its send-side estimate; REMB alone without `send_side_bwe`),
    /// publishers' connections the same with TWCC feedback to them, and its own
    /// connections to an origin (relays) ephemeral ports instead of the shared socket.
    pub fn on_network(
        net: &switchboard_sfu_client::media::NetworkOptions,
        media_address: SocketAddr,
        metrics: Metrics,
        send_side_bwe: bool,
    ) -> switchboard_sfu_client::Result<Arc<Self>> {
        use switchboard_sfu_client::media::{NetworkOptions, build_api};
        let outbound = NetworkOptions { subscriber_feedback: send_side_bwe, rtx: true, red: true, ..net.clone() };
        let inbound = NetworkOptions { publisher_feedback: true, red: true, ..net.clone() };
        let relay = NetworkOptions { udp_mux: None, ..net.clone() };
        Ok(Self::new(build_api(&outbound)?, build_api(&inbound)?, build_api(&relay)?, media_address, metrics))
    }

    pub fn new(api: API, inbound_api: API, relay_api: API, media_address: SocketAddr, metrics: Metrics) -> Arc<Self> {
        let mut node = Node::default();
        node.ready();
        Arc::new(Self {
            api,
            inbound_api,
            relay_api,
            node: Mutex::new(node),
            rooms: Mutex::new(HashMap::new()),
            metrics,
            media_address,
            state_changed: Notify::new(),
            audio_policy: Mutex::new(AudioPolicy::default()),
        })
    }

    /// Which audio listeners receive (loudest speakers only, or everyone) in rooms opened
    /// from now on.
    pub fn set_audio_policy(&self, policy: AudioPolicy) {
        *self.audio_policy.lock().unwrap() = policy;
    }

    pub fn state(&self) -> NodeState {
        self.node.lock().unwrap().state()
    }

    pub fn api_state(&self) -> api::NodeState {
        to_api_node_state(self.state())
    }

    /// Rooms, and participants (all, and those that hold a drain open), tracks and
    /// subscriptions summed over them.
    fn totals(&self) -> Totals {
        let rooms: Vec<Arc<RoomEntry>> = self.rooms.lock().unwrap().values().cloned().collect();
        let mut t = Totals { rooms: rooms.len(), ..Totals::default() };
        for r in &rooms {
            r.read(|room| {
                // Relays follow the people they carry, and a mixed room's mixer is the
                // SFU's own: neither holds a drain open.
                t.people += room
                    .participants()
                    .filter(|(_, k)| matches!(k, ParticipantKind::Client | ParticipantKind::Hidden))
                    .count();
                t.participants += room.participant_count();
                t.tracks += room.track_count();
                t.subscriptions += room.subscription_count();
            });
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

    /// Opens a room (idempotent), routed unless it is open already.
    pub fn open_room(self: &Arc<Self>, name: &str) -> ApiResult<Arc<RoomEntry>> {
        self.open_room_as(name, None)
    }

    /// Opens a room with the audio asked for (idempotent); an open room with other
    /// audio is refused: its listeners' connections are built for what it has.
    pub fn open_room_as(self: &Arc<Self>, name: &str, audio: Option<api::RoomAudio>) -> ApiResult<Arc<RoomEntry>> {
        validate_name("room", name)?;
        let mut rooms = self.rooms.lock().unwrap();
        if let Some(r) = rooms.get(name) {
            return match audio {
                Some(asked) if asked != r.audio => Err(error(
                    ErrorCode::RoomConflict,
                    format!("room {name} is open with {:?} audio, not {asked:?}", r.audio),
                )),
                _ => Ok(r.clone()),
            };
        }
        let audio = audio.unwrap_or_default();
        let entry = RoomEntry::open(self, name, audio);
        rooms.insert(name.to_owned(), entry.clone());
        drop(rooms);
        info!(room = name, ?audio, "room opened");
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
            peer.close().await;
        }
        info!(room = name, "room closed");
        self.recount();
        Ok(())
    }
}
