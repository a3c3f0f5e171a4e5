//! The room driver: owns each room's sans-IO [`Room`], feeds it inputs and drains its
//! outputs.
//!
//! A room's core sits behind a `std::sync::Mutex`, held only while one input (or a few
//! that belong together) is fed and the outputs are drained, never across an `await`.
//! Every input is followed by a full drain under the same lock, so nothing the core
//! decided waits in it: forwards become writes that the packet's reader sends after the
//! lock is released; the deadline goes to the room's timer task; everything else goes,
//! in order, to the room's command task, so renegotiations never race each other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;
use switchboard_sfu_core::codec::Vp8Numbers;

use switchboard_sfu_api::{ErrorCode, RoomAudio};
use switchboard_sfu_core::{
    AudioPolicy, Input, Outcome, Output, Room, RoomError, RoomEvent, RtpMeta, SubscriptionId, TrackHandle,
};
use tokio::sync::mpsc;
use tracing::debug;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

use super::Sfu;
use super::convert::{ApiResult, error, to_api_event};
use super::forward::Sink;
use super::mixer::{self, Tap};
use super::negotiation::NewTrack;
use super::peer::Peer;

/// The core and what the driver keeps next to it for the packet path.
pub(super) struct RoomCore {
    pub(super) room: Room,
    sinks: HashMap<SubscriptionId, Sink>,
    /// Publisher connection and SSRC of each (track, layer), for PLIs.
    sources: HashMap<(TrackHandle, usize), (Weak<RTCPeerConnection>, u32)>,
    /// When the core next wants `Input::Timeout`, as its last drain said.
    timeout: Instant,
}

/// One forward of the packet in hand: its subscription's sink and the numbers to write.
/// A copy to send: where, its sequence number and timestamp, and VP8 picture numbers to
/// write into its payload.
pub(super) type Write = (Sink, u16, u32, Option<Vp8Numbers>);

impl RoomCore {
    fn new(now: Instant, audio: AudioPolicy) -> Self {
        let mut core = Self {
            room: Room::with_audio_policy(now, audio),
            sinks: HashMap::new(),
            sources: HashMap::new(),
            timeout: now,
        };
        core.drain(&mut Vec::new());
        core
    }

    /// Polls the core until it has nothing left: forwards of the packet just fed become
    /// `writes` (to subscriptions that still have a sink), the deadline is kept for the
    /// timer task, and the rest is returned for the command task.
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
                        writes.push((sink.clone(), f.seq, f.ts, f.vp8));
                    }
                }
                other => commands.push(other),
            }
        }
    }

    /// Remembers where a layer comes from, so a keyframe request for it reaches its
    /// publisher.
    pub(super) fn add_source(&mut self, track: TrackHandle, layer: usize, pc: Weak<RTCPeerConnection>, ssrc: u32) {
        self.sources.insert((track, layer), (pc, ssrc));
    }
}

pub struct RoomEntry {
    pub name: String,
    /// Routed or mixed, for the room's life.
    pub audio: RoomAudio,
    mixer: std::sync::OnceLock<Tap>,
    /// Held while this SFU joins the room's origin as its edge: the first joins of a
    /// room arrive together (through several signaling replicas), and only one may
    /// start the relay; the others wait and find it running.
    pub relay_start: tokio::sync::Mutex<()>,
    core: Mutex<RoomCore>,
    pub(super) peers: Mutex<HashMap<String, Arc<Peer>>>,
    commands: mpsc::UnboundedSender<Vec<Output>>,
    pub(super) closed: AtomicBool,
}

impl RoomEntry {
    /// A new room with its command and timer tasks (and its mixer, mixed).
    pub(super) fn open(sfu: &Arc<Sfu>, name: &str, audio: RoomAudio) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let routed = *sfu.audio_policy.lock().unwrap();
        let (policy, slots) = match audio {
            RoomAudio::Routed => (routed, 0),
            // The pod's speaker count, or 3 where routing forwards every voice.
            RoomAudio::Mixed => {
                let speakers = if routed.speakers == 0 { 3 } else { routed.speakers };
                (AudioPolicy::mixed(speakers), speakers)
            }
        };
        let mut core = RoomCore::new(Instant::now(), policy);
        let mix_track = (audio == RoomAudio::Mixed).then(|| mixer::publish(&mut core.room, slots));
        let entry = Arc::new(Self {
            name: name.to_owned(),
            audio,
            mixer: std::sync::OnceLock::new(),
            relay_start: tokio::sync::Mutex::new(()),
            core: Mutex::new(core),
            peers: Mutex::new(HashMap::new()),
            commands: tx,
            closed: AtomicBool::new(false),
        });
        if let Some(track) = mix_track {
            let tap = mixer::start(Arc::downgrade(sfu), Arc::downgrade(&entry), track);
            let _ = entry.mixer.set(tap);
        }
        tokio::spawn(run_commands(Arc::downgrade(sfu), Arc::downgrade(&entry), rx));
        tokio::spawn(run_timers(Arc::downgrade(&entry)));
        entry
    }

    fn submit(&self, commands: Vec<Output>) {
        if !commands.is_empty() {
            let _ = self.commands.send(commands);
        }
    }

    /// Runs `f` (inputs other than RTP, and queries) on the core under one lock, then
    /// drains it and queues what it decided.
    pub(super) fn with_core<T>(&self, f: impl FnOnce(&mut RoomCore) -> T) -> T {
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

    /// Feeds one input other than RTP.
    pub(super) fn input(&self, input: Input<'_>) -> Result<Outcome, RoomError> {
        self.with_core(|core| core.room.handle_input(input))
    }

    /// Feeds one RTP packet; its forwards are appended to `writes`, for the caller to send
    /// once the lock is released. Returns whether the packet's track is a voice in the
    /// room's mix.
    pub(super) fn rtp(&self, track: TrackHandle, layer: usize, packet: RtpMeta<'_>, writes: &mut Vec<Write>) -> bool {
        let (commands, mixed) = {
            let mut core = self.core.lock().unwrap();
            let _ = core.room.handle_input(Input::Rtp { track, layer, packet, now: Instant::now() });
            let mixed = self.mixer.get().is_some() && core.room.mix_slot_of(track).is_some();
            (core.drain(writes), mixed)
        };
        self.submit(commands);
        mixed
    }

    /// A mixed room's mixer.
    pub(super) fn mixer(&self) -> Option<&Tap> {
        self.mixer.get()
    }

    /// Reads the core without feeding it.
    pub(super) fn read<T>(&self, f: impl FnOnce(&Room) -> T) -> T {
        f(&self.core.lock().unwrap().room)
    }

    /// Starts forwarding to a subscription, unless the core dropped it meanwhile.
    pub(super) fn add_sink(&self, subscription: SubscriptionId, sink: impl FnOnce() -> Sink) -> bool {
        let mut core = self.core.lock().unwrap();
        let kept = core.room.has_subscription(subscription);
        if kept {
            core.sinks.insert(subscription, sink());
        }
        kept
    }

    pub(super) fn sink(&self, subscription: SubscriptionId) -> Option<Sink> {
        self.core.lock().unwrap().sinks.get(&subscription).cloned()
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
            if let Ok(peer) = room.peer(&subscriber) {
                peer.add_subscription(NewTrack { subscription, track_id, publisher, codec, source });
            }
        }
        Output::SubscriptionRemoved { subscription, subscriber } => {
            // Forwarding stops now; the connection drops the track at its next offer.
            room.core.lock().unwrap().sinks.remove(&subscription);
            if let Ok(peer) = room.peer(&subscriber) {
                peer.remove_subscription(subscription);
            }
        }
        Output::RequestKeyframe { track, layer } => {
            let source = room.core.lock().unwrap().sources.get(&(track, layer)).cloned();
            if let Some((pc, ssrc)) = source
                && let Some(pc) = pc.upgrade()
            {
                let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                let _ = pc.write_rtcp(&[Box::new(pli)]).await;
                sfu.metrics.keyframe_requests.inc();
                debug!(room = %room.name, ?track, layer, ssrc, "keyframe requested");
            }
        }
        Output::Event { to, event } => {
            if let RoomEvent::LayerChanged { layer, .. } = &event {
                sfu.metrics.layer_switches.inc();
                sfu.metrics.quality.layer_switched(*layer);
                debug!(room = %room.name, subscriber = %to, layer, "layer switched");
            }
            if let RoomEvent::LayersWanted { track, rids } = &event {
                debug!(room = %room.name, publisher = %to, track, ?rids, "layers wanted");
            }
            if let Ok(peer) = room.peer(&to) {
                peer.push_event(to_api_event(event));
            }
        }
        Output::Empty => debug!(room = %room.name, "room is empty"),
        // `RoomCore::drain` hands forwards to the packet's reader and keeps the deadline.
        Output::Forward(_) | Output::Timeout(_) => {}
    }
}

/// Feeds the core's deadline back to it (layer evaluation, speaker detection).
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
