//! One WebSocket connection: authentication by session token, the waiting room,
//! moderation, chat, and media signaling relayed to the meeting's SFU.
//!
//! Access control, as the connection applies it:
//! * the session token must be signaling's, for this namespace and for the meeting as
//!   it exists now (its UID), and its user must not have been removed;
//! * until admitted, a connection hears nothing of the meeting but its own admission
//!   state: broadcasts are dropped, `joined` carries no title or participants;
//! * a removal or takeover closes the connection at once, whatever is queued for it;
//! * a host's mute holds (`mutedBy: host`) until a host lifts it, and is applied at the SFU;
//! * offers are checked against what the participant may publish (`signaling_proto::offer`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt as _, StreamExt as _};
use kube::ResourceExt as _;
use switchboard_crds::meeting::Meeting;
use switchboard_sfu_api::{ErrorCode as SfuCode, JoinRequest, OfferRequest, ParticipantKind, RelayRequest};
use switchboard_sfu_client::{MediaSignal as _, SfuApi};
use switchboard_signaling_proto::{
    AdmitPayload, ChatMessage, ClientMessage, Envelope, ErrorCode, IceServersPayload, JoinedPayload, MediaKind,
    MediaReconnectPayload, MutePayload, MutedBy, OfferPayload, ParticipantInfo, ParticipantsPage, ProtoError,
    QueuedPayload, ReconnectPayload, Role, RoleChangedPayload, SetRolePayload, StateUpdate, e2ee, parse_client,
    session::{self, Phase, Step},
    types,
};
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::app::{App, CodeLabel, TypeLabel};
use crate::auth::{self, SessionClaims};
use crate::breakouts;
use crate::hub::{Kill, Local, Outbound};
use crate::meetings;
use crate::recordings::{self, StartError};
use crate::store::{self, Audience, Bus, BusWhat, MediaRecord, Record};

const PRESENCE_REFRESH: Duration = Duration::from_secs(10);
/// A `participants` page without a `limit`.
const DEFAULT_PARTICIPANTS_PAGE: u32 = 100;
/// Messages queued for one connection; beyond, messages for it are dropped.
pub const OUTBOUND_QUEUE: usize = 512;
/// How long a connection being closed by a kill may take to say why.
const GOODBYE_WITHIN: Duration = Duration::from_secs(1);

fn refuse(code: ErrorCode, reason: impl Into<String>) -> ProtoError {
    ProtoError::new(code, reason)
}

fn redis_failed(e: redis::RedisError) -> ProtoError {
    tracing::warn!(error = %e, "redis");
    refuse(ErrorCode::Internal, "shared state is unavailable; try again")
}

fn media_failed(e: switchboard_sfu_client::Error) -> ProtoError {
    // The client hears what the SFU said, not which of our SFU URLs said it.
    let reason = match e.refusal() {
        Some(error) => format!("the SFU refused the request: {error}"),
        None => e.to_string(),
    };
    refuse(ErrorCode::MediaFailed, format!("the SFU did not accept it: {reason}"))
}

/// Message types about one meeting's people, chat and keys: dropped when they come from
/// a meeting the session has left (breakout notices name the main meeting and pass).
const MEETING_SCOPED: &[&str] = &[
    types::PARTICIPANT_UPDATE,
    types::PARTICIPANT_LEFT,
    types::CHAT,
    types::HAND_RAISE,
    types::REACTION,
    types::AUDIENCE,
    types::RECORDING,
    types::ESCALATED,
    types::E2EE_HELLO,
    types::E2EE_KEY,
    types::E2EE_MEMBERS,
];

enum Flow {
    Continue,
    Close,
    /// Closed now, without flushing what is queued.
    Killed,
    /// The replica drains: what is queued, then Close 1001 (the session may resume elsewhere).
    GoingAway,
    /// The client stopped reading (a write timed out) or the socket failed: dropped.
    Stalled,
}

struct Joined {
    claims: SessionClaims,
    /// Redis key of the meeting.
    key: String,
    info: switchboard_signaling_proto::ParticipantInfo,
    media: Option<MediaLink>,
    /// The public key announced in an E2EE meeting.
    e2ee_public_key: Option<String>,
}

struct MediaLink {
    sfu: SfuApi,
    endpoint: String,
    room: String,
    tracks: Vec<switchboard_sfu_api::TrackDescription>,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for MediaLink {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

pub struct Session {
    app: Arc<App>,
    connection: String,
    tx: mpsc::Sender<Outbound>,
    kill: Arc<watch::Sender<Option<Kill>>>,
    outbox: VecDeque<Envelope>,
    joined: Option<Joined>,
    /// A `join` waiting its turn in the meeting's join queue.
    queued: Option<Queued>,
    /// The E2EE scheme the client said it implements in `join`.
    e2ee_scheme: Option<u8>,
    /// Bounds the key exchange's fan-out (see [`E2eeLimits`]).
    e2ee: E2eeLimits,
}

/// How much key exchange one connection may cause. A publisher's `e2ee-key` is one
/// delivery per entry; a leave in a 1,000-member meeting rekeys with 1,000 entries, so
/// the budget holds that at once and refills at a fifth of it a second. Announcements
/// (which make every publisher send a key) come at most once a second, with at most
/// [`E2EE_MAX_PUBLIC_KEYS`] distinct keys a connection, so a client changing its key in
/// a loop cannot make the meeting rekey forever (a new connection costs a join).
struct E2eeLimits {
    entries: crate::limits::TokenBucket,
    last_hello: Option<Instant>,
    keys_announced: Vec<String>,
}

const E2EE_ENTRY_BURST: f64 = 1200.0;
const E2EE_ENTRIES_PER_SECOND: f64 = 240.0;
const E2EE_HELLO_EVERY: Duration = Duration::from_secs(1);
const E2EE_MAX_PUBLIC_KEYS: usize = 4;

impl E2eeLimits {
    fn new(now: Instant) -> Self {
        Self {
            entries: crate::limits::TokenBucket::new(E2EE_ENTRIES_PER_SECOND, E2EE_ENTRY_BURST, now),
            last_hello: None,
            keys_announced: Vec::new(),
        }
    }
}

struct Queued {
    /// The `join` request's id and session token, taken up again when its turn comes.
    id: Option<String>,
    token: String,
    turn: tokio::time::Instant,
    /// When the client is next told where it is.
    next_notice: tokio::time::Instant,
    interval: Duration,
}

/// How often a queued client is told its place.
const QUEUE_NOTICE_EVERY: Duration = Duration::from_secs(1);

/// `queued {position, waitMs}`: how many are let in before this join, and how long it waits.
fn queue_notice(wait: Duration, interval: Duration) -> Envelope {
    let position = (wait.as_secs_f64() / interval.as_secs_f64()).ceil() as u64;
    Envelope::new(types::QUEUED, QueuedPayload { position, wait_ms: wait.as_millis() as u64 })
}

/// Serves one WebSocket until it closes; `permit` counts it against the connection caps.
pub async fn serve(app: Arc<App>, socket: WebSocket, permit: crate::limits::Permit) {
    let connection =
        format!("{}/{}", app.cfg.replica, app.next_connection.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let span = tracing::info_span!("connection", id = %connection);
    app.metrics.connections.inc();
    run(app.clone(), socket, connection).instrument(span).await;
    app.metrics.connections.dec();
    drop(permit);
}

/// Frames handed to a connection's writer and not yet written; beyond, the loop stops
/// taking the meeting's messages (they queue, then drop: `OUTBOUND_QUEUE`).
const WRITE_QUEUE: usize = 64;

/// Why a connection's writer stopped on its own.
enum WriterEnd {
    /// A frame was not taken within the write timeout: the client does not read.
    Stalled,
    /// The socket failed.
    Failed,
}

/// Writes a connection's frames, each within `timeout`, so that the connection's loop
/// never waits on a client that does not read. `last` (a goodbye, then Close) jumps the
/// queue and is written within [`GOODBYE_WITHIN`]; the writer ends after it, when
/// `frames` closes, or — saying why on `ended` — when a write fails or times out.
async fn write_frames(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Message>,
    mut last: tokio::sync::oneshot::Receiver<Vec<Message>>,
    ended: tokio::sync::oneshot::Sender<WriterEnd>,
    timeout: Duration,
) {
    async fn goodbye(sink: &mut futures::stream::SplitSink<WebSocket, Message>, frames: Vec<Message>) {
        let _ = tokio::time::timeout(GOODBYE_WITHIN, async {
            for f in frames {
                sink.send(f).await?;
            }
            Ok::<_, axum::Error>(())
        })
        .await;
    }
    loop {
        let frame = tokio::select! {
            biased;
            l = &mut last => {
                if let Ok(l) = l { goodbye(&mut sink, l).await }
                return;
            }
            f = frames.recv() => match f {
                Some(f) => f,
                None => return,
            },
        };
        tokio::select! {
            biased;
            l = &mut last => {
                if let Ok(l) = l { goodbye(&mut sink, l).await }
                return;
            }
            sent = tokio::time::timeout(timeout, sink.send(frame)) => match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    let _ = ended.send(WriterEnd::Failed);
                    return;
                }
                Err(_) => {
                    let _ = ended.send(WriterEnd::Stalled);
                    return;
                }
            },
        }
    }
}

async fn run(app: Arc<App>, socket: WebSocket, connection: String) {
    let limits = &app.limits.settings;
    let (sink, mut stream) = socket.split();
    // Writes go through a writer task: nothing here waits on the client's reading.
    let (frames, frames_rx) = mpsc::channel::<Message>(WRITE_QUEUE);
    let (last, last_rx) = tokio::sync::oneshot::channel::<Vec<Message>>();
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<WriterEnd>();
    let mut writer = tokio::spawn(write_frames(sink, frames_rx, last_rx, ended_tx, limits.write_timeout));
    let (tx, mut rx) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    let (kill, mut killed) = watch::channel::<Option<Kill>>(None);
    // Per-connection message budget.
    let mut limit = crate::limits::TokenBucket::new(app.cfg.rate_per_second, app.cfg.rate_burst, Instant::now());
    let mut changes = app.meetings.changed.subscribe();
    let mut drain = app.limits.drain_state();
    drain.mark_changed();
    let mut told_to_reconnect = false;
    let mut s = Session {
        app: app.clone(),
        connection,
        tx,
        kill: Arc::new(kill),
        outbox: VecDeque::new(),
        joined: None,
        queued: None,
        e2ee_scheme: None,
        e2ee: E2eeLimits::new(Instant::now()),
    };
    let join_deadline = tokio::time::sleep(limits.join_deadline);
    tokio::pin!(join_deadline);
    // No frame at all from the client (a Pong to our Pings counts) for this long: gone.
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(PRESENCE_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let flow = loop {
        let flow = tokio::select! {
            biased;
            _ = killed.changed() => Flow::Killed,
            end = &mut ended => match end {
                Ok(WriterEnd::Stalled) => {
                    app.limits.metrics.write_timeouts.inc();
                    tracing::info!(timeout = ?limits.write_timeout, "the client does not read; closing");
                    Flow::Stalled
                }
                Ok(WriterEnd::Failed) | Err(_) => Flow::Stalled,
            },
            Ok(()) = drain.changed() => match *drain.borrow_and_update() {
                crate::limits::Drain::Serving => Flow::Continue,
                crate::limits::Drain::Notify { window } => {
                    if !told_to_reconnect {
                        told_to_reconnect = true;
                        s.push(reconnect_notice(window));
                        app.limits.metrics.drained.inc();
                    }
                    Flow::Continue
                }
                crate::limits::Drain::Close => Flow::GoingAway,
            },
            frame = stream.next() => {
                idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                match frame {
                    Some(Ok(Message::Text(text))) => {
                        if limit.take(Instant::now()).is_ok() {
                            s.frame(text.as_bytes()).await
                        } else {
                            let rate = app.cfg.rate_per_second;
                            let message = format!("over {rate} messages per second; message dropped");
                            s.error(refuse(ErrorCode::RateLimited, message));
                            Flow::Continue
                        }
                    }
                    Some(Ok(Message::Binary(_))) => {
                        s.error(refuse(
                            ErrorCode::MalformedJson,
                            "binary frames are not part of the protocol; send JSON text",
                        ));
                        Flow::Continue
                    }
                    Some(Ok(_)) => Flow::Continue,
                    Some(Err(_)) | None => Flow::Close,
                }
            },
            // While the writer is full, the meeting's messages wait in the queue (and beyond it, drop).
            Some(out) = rx.recv(), if s.outbox.is_empty() => match out {
                Outbound::Deliver(env) => { s.deliver(env); Flow::Continue }
                Outbound::Command(c) => s.command(c).await,
            },
            Ok(permit) = frames.reserve(), if !s.outbox.is_empty() => {
                if let Some(env) = s.outbox.pop_front() {
                    permit.send(Message::Text(env.to_json().into()));
                }
                Flow::Continue
            },
            changed = changes.recv() => match changed {
                Ok(name) => s.meeting_changed(&name).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let name = s.joined.as_ref().map(|j| j.claims.mtg.clone()).unwrap_or_default();
                    s.meeting_changed(&name).await
                }
                Err(_) => Flow::Continue,
            },
            _ = refresh.tick() => s.refresh().await,
            _ = ping.tick() => {
                // A writer that is full is stalled already; its timeout closes the connection.
                let _ = frames.try_send(Message::Ping(axum::body::Bytes::new()));
                Flow::Continue
            }
            _ = &mut idle => {
                app.limits.metrics.idle_timeouts.inc();
                let secs = limits.idle_timeout.as_secs_f64();
                s.error(refuse(ErrorCode::Unauthenticated, format!("nothing heard for {secs} s; closing")));
                Flow::Close
            }
            _ = tokio::time::sleep_until(s.queue_wake()), if s.queued.is_some() => s.queue_tick().await,
            _ = &mut join_deadline, if s.joined.is_none() && s.queued.is_none() => {
                app.limits.metrics.join_timeouts.inc();
                let secs = limits.join_deadline.as_secs_f64();
                s.error(refuse(ErrorCode::Unauthenticated, format!("no `join` within {secs} s; closing")));
                Flow::Close
            }
        };
        // Hand the writer what it has room for; the rest waits in the outbox.
        while !s.outbox.is_empty()
            && let Ok(permit) = frames.try_reserve()
        {
            let env = s.outbox.pop_front().expect("not empty");
            permit.send(Message::Text(env.to_json().into()));
        }
        if !matches!(flow, Flow::Continue) {
            break flow;
        }
    };
    // Every close is bounded: a client that does not read is not waited for.
    let close = |code: u16, reason: &str| {
        Message::Close(Some(axum::extract::ws::CloseFrame { code, reason: reason.to_owned().into() }))
    };
    match flow {
        Flow::Continue => unreachable!("the loop ends on a close"),
        // What is queued, then Close.
        Flow::Close | Flow::GoingAway => {
            let bye = match flow {
                Flow::GoingAway => close(axum::extract::ws::close_code::AWAY, "going away: reconnect"),
                _ => Message::Close(None),
            };
            let _ = tokio::time::timeout(GOODBYE_WITHIN, async {
                for env in s.outbox.drain(..) {
                    if frames.send(Message::Text(env.to_json().into())).await.is_err() {
                        return;
                    }
                }
                if frames.send(bye).await.is_ok() {
                    drop(frames);
                    let _ = (&mut writer).await;
                }
            })
            .await;
        }
        // Why, ahead of anything queued, then Close.
        Flow::Killed => {
            let why = killed.borrow().clone();
            let goodbye = s.killed(why).await;
            let _ = last.send(vec![Message::Text(goodbye.to_json().into()), Message::Close(None)]);
            let _ = tokio::time::timeout(GOODBYE_WITHIN + Duration::from_millis(100), &mut writer).await;
        }
        // The client does not read, or the socket failed: nothing more is sent.
        Flow::Stalled => {}
    }
    writer.abort();
    s.disconnected().await;
}

/// `reconnect`: this replica is draining; the client connects again (any replica resumes
/// its session) at a moment of its own within `window`, so the clients of a replica do
/// not all arrive at the others at once.
fn reconnect_notice(window: Duration) -> Envelope {
    use rand::Rng as _;
    let after = window.mul_f64(rand::rng().random_range(0.0..1.0));
    Envelope::new(
        types::RECONNECT,
        ReconnectPayload {
            reason: "this signaling replica is shutting down; reconnect with your session token".into(),
            retry_after_ms: after.as_millis() as u64,
        },
    )
}

impl Session {
    fn push(&mut self, env: Envelope) {
        self.outbox.push_back(env);
    }

    /// A message from the meeting (a broadcast, a media event): only for the admitted.
    fn deliver(&mut self, env: Envelope) {
        let Some(j) = self.joined.as_ref().filter(|j| j.info.admitted) else { return };
        // What another meeting said (queued before this session moved to a breakout room
        // or back) is not about the meeting it is in now.
        let elsewhere = env.room_id.as_deref().is_some_and(|r| r != j.claims.mtg);
        if elsewhere && MEETING_SCOPED.contains(&env.type_.as_str()) {
            return;
        }
        self.push(env);
    }

    /// The connection is closing on a kill: lets go of the participant (a removed one is
    /// gone from Redis and the SFU already; a taken-over one lives on elsewhere) and
    /// returns the message that says why.
    async fn killed(&mut self, why: Option<Kill>) -> Envelope {
        if let Some(j) = self.joined.take() {
            self.app.hub.unregister(&j.key, &j.info.id, &self.connection).await;
        }
        match why {
            Some(Kill::Removed { by }) => {
                Envelope::new(types::REMOVE, serde_json::json!({ "reason": "a host removed you" })).from_peer(&by)
            }
            _ => ProtoError::new(ErrorCode::Unauthenticated, "this session continued on another connection").envelope(),
        }
    }

    fn error(&mut self, e: ProtoError) {
        self.app.metrics.errors.get_or_create(&CodeLabel { code: format!("{:?}", e.code) }).inc();
        tracing::debug!(code = ?e.code, reason = %e.reason, "refused");
        self.push(e.envelope());
    }

    fn reply(&mut self, id: Option<String>, type_: &str, payload: impl serde::Serialize) {
        self.push(Envelope::new(type_, payload).in_reply_to(id));
    }

    /// When the queued join next needs attention (its turn, or its next notice).
    fn queue_wake(&self) -> tokio::time::Instant {
        self.queued.as_ref().map(|q| q.turn.min(q.next_notice)).unwrap_or_else(tokio::time::Instant::now)
    }

    /// Tells a queued client where it is, or joins it when its turn has come.
    async fn queue_tick(&mut self) -> Flow {
        let now = tokio::time::Instant::now();
        let Some(q) = self.queued.as_mut() else { return Flow::Continue };
        if now < q.turn {
            q.next_notice = now + QUEUE_NOTICE_EVERY;
            let notice = queue_notice(q.turn - now, q.interval);
            self.push(notice);
            return Flow::Continue;
        }
        let q = self.queued.take().expect("queued");
        match self.join_now(q.id.clone(), &q.token).await {
            Ok(()) => Flow::Continue,
            Err(mut e) => {
                e.id = q.id;
                e.refused = Some(types::JOIN.into());
                let close = matches!(e.code, ErrorCode::Removed);
                self.error(e);
                if close { Flow::Close } else { Flow::Continue }
            }
        }
    }

    async fn frame(&mut self, bytes: &[u8]) -> Flow {
        let (env, msg) = match parse_client(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.error(e);
                return Flow::Continue;
            }
        };
        self.app.metrics.messages.get_or_create(&TypeLabel { r#type: msg.type_name().into() }).inc();
        let (id, refused) = (env.id.clone(), msg.type_name());
        match self.handle(env.id, msg).await {
            Ok(flow) => flow,
            Err(mut e) => {
                e.id = id;
                e.refused = Some(refused.into());
                let close = matches!(e.code, ErrorCode::Removed);
                self.error(e);
                if close { Flow::Close } else { Flow::Continue }
            }
        }
    }

    fn meeting(&self) -> Result<Arc<Meeting>, ProtoError> {
        let j = self.joined.as_ref().ok_or_else(|| refuse(ErrorCode::Unauthenticated, "send `join` first"))?;
        let m = self
            .app
            .meetings
            .get(&j.claims.mtg)
            .filter(|m| m.metadata.uid.as_deref() == Some(j.claims.uid.as_str()))
            .ok_or_else(|| refuse(ErrorCode::MeetingUnavailable, "the meeting no longer exists"))?;
        meetings::open(&m).map_err(|r| refuse(ErrorCode::MeetingUnavailable, r))?;
        Ok(m)
    }

    /// The main meeting of the one this session is in (itself, or a room's parent).
    fn main_meeting(&self) -> Result<Arc<Meeting>, ProtoError> {
        let m = self.meeting()?;
        breakouts::main_of(&self.app, &m)
            .ok_or_else(|| refuse(ErrorCode::MeetingUnavailable, "this room's main meeting no longer exists"))
    }

    async fn publish(&self, to: Audience, what: BusWhat) -> Result<(), ProtoError> {
        self.send_bus(Bus { to, what }).await
    }

    /// A bus message on another meeting's channel (a breakout room's main meeting).
    async fn publish_to(&self, key: &str, to: Audience, what: BusWhat) -> Result<(), ProtoError> {
        self.app.store.publish(key, &Bus { to, what }).await.map_err(|e| {
            self.app.metrics.redis_errors.inc();
            redis_failed(e)
        })
    }

    async fn send_bus(&self, bus: Bus) -> Result<(), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        self.app.store.publish(&j.key, &bus).await.map_err(|e| {
            self.app.metrics.redis_errors.inc();
            redis_failed(e)
        })
    }

    /// A participant's state to those who follow it one by one ([`store::presence_audience`]),
    /// and to the participant itself.
    async fn announce(&self, info: &ParticipantInfo) -> Result<(), ProtoError> {
        self.about(info, types::PARTICIPANT_UPDATE, info, &info.id).await
    }

    /// `type_` about participant `info`, from `from`, to those who follow it one by one
    /// and to itself (an attendee's page follows its own hand, though the audience does not).
    async fn about(
        &self,
        info: &ParticipantInfo,
        type_: &str,
        payload: impl serde::Serialize,
        from: &str,
    ) -> Result<(), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let to = store::presence_audience(info);
        let itself = to == Audience::Admitters && info.admitted;
        self.send_bus(Bus::deliver(to, &j.claims.mtg, from, type_, &payload)).await?;
        if itself {
            self.send_bus(Bus::deliver(Audience::Peer(info.id.clone()), &j.claims.mtg, from, type_, &payload)).await?;
        }
        Ok(())
    }

    /// A hand raised or lowered: stored (late joiners see it) and announced.
    async fn set_hand(&self, mut record: Record, raised: bool) -> Result<(), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        record.info.hand_raised = raised;
        self.app.store.put(&j.key, &record).await.map_err(redis_failed)?;
        let target = record.info.id.clone();
        let announce =
            switchboard_signaling_proto::HandRaisePayload { raised, participant_id: Some(target), all: false };
        self.about(&record.info, types::HAND_RAISE, &announce, &j.info.id).await?;
        if record.info.admitted {
            self.announce(&record.info).await?;
        }
        Ok(())
    }

    /// Broadcasts `type` from this participant to everyone in the meeting.
    async fn broadcast(&self, type_: &str, payload: impl serde::Serialize) -> Result<(), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        self.send_bus(Bus::deliver(Audience::All, &j.claims.mtg, &j.info.id, type_, payload)).await
    }

    /// Where the connection is in its session, for [`session::gate`].
    fn phase(&self) -> Phase {
        match &self.joined {
            None => Phase::Connected,
            Some(j) if j.info.admitted => Phase::Admitted { role: j.info.role },
            Some(j) => Phase::Waiting { role: j.info.role },
        }
    }

    /// A refused recording says why the meeting cannot be recorded, when that is why.
    fn why_refused(&self, msg: &ClientMessage, e: ProtoError) -> ProtoError {
        if matches!(msg, ClientMessage::StartRecording)
            && e.code == ErrorCode::Forbidden
            && let Some(reason) = self.meeting().ok().and_then(|m| meetings::recording_refused(&m))
        {
            return refuse(ErrorCode::Forbidden, reason);
        }
        e
    }

    async fn handle(&mut self, id: Option<String>, msg: ClientMessage) -> Result<Flow, ProtoError> {
        let me = self.joined.as_ref().map(|j| j.info.id.clone()).unwrap_or_default();
        // Phase, role and permission checks, before anything touches Redis or an SFU.
        let gate = session::gate(self.phase(), &msg, &me, || self.meeting().map(|m| meetings::permissions(&m)));
        match gate.map_err(|e| self.why_refused(&msg, e))? {
            Step::Join => {
                let ClientMessage::Join(j) = msg else { unreachable!("the gate joins only on `join`") };
                self.e2ee_scheme = j.e2ee;
                return self.join(id, &j.token).await.map(|_| Flow::Continue);
            }
            Step::Pong => {
                self.reply(id, types::PONG, serde_json::json!({}));
                return Ok(Flow::Continue);
            }
            Step::Leave => {
                self.leave().await;
                self.reply(id, types::OK, serde_json::json!({}));
                return Ok(Flow::Close);
            }
            Step::Act => {}
        }
        let joined = self.joined.as_ref().expect("the gate acts only for joined connections");
        match msg {
            ClientMessage::Join(_) | ClientMessage::Ping | ClientMessage::Leave => {
                unreachable!("the gate answers join, ping and leave itself")
            }
            ClientMessage::Offer(offer) => self.offer(id, offer).await.map(|_| Flow::Continue),
            ClientMessage::Answer(a) => {
                let (sfu, room, pid) = self.media_link()?;
                sfu.subscriber_answer(&room, &pid, a.sdp).await.map_err(media_failed)?;
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Candidate(c) => {
                let (sfu, room, pid) = self.media_link()?;
                sfu.candidate(&room, &pid, c).await.map_err(media_failed)?;
                Ok(Flow::Continue)
            }
            ClientMessage::IceServers => {
                let ice_servers = self.app.ice_servers(&joined.info.id);
                self.reply(id, types::ICE_SERVERS, IceServersPayload { ice_servers });
                Ok(Flow::Continue)
            }
            // Only the caller's own subscriptions: the SFU path names this participant.
            ClientMessage::Subscription(s) => {
                let (sfu, room, pid) = self.media_link()?;
                let url = sfu.url(switchboard_sfu_api::paths::SUBSCRIPTION, &room, &pid, &s.track);
                let prefs = switchboard_sfu_api::SubscriptionRequest {
                    max_layer: s.max_layer,
                    max_height: s.max_height,
                    paused: s.paused,
                };
                sfu.put::<_, serde_json::Value>(&url, &prefs).await.map_err(media_failed)?;
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::IceRestart => {
                let (sfu, room, pid) = self.media_link()?;
                sfu.subscriber_restart(&room, &pid).await.map_err(media_failed)?;
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Chat(chat) => {
                let seq = match chat.to {
                    None => {
                        let j = self.joined.as_ref().expect("joined");
                        let message = ChatMessage {
                            seq: 0,
                            from: j.info.id.clone(),
                            name: j.info.name.clone(),
                            text: chat.text,
                            at_ms: now_ms(),
                            to: None,
                            to_name: None,
                        };
                        let stored = self.app.store.append_chat(&j.key, message, vec![]).await.map_err(redis_failed)?;
                        self.broadcast(types::CHAT, &stored).await?;
                        stored.seq
                    }
                    Some(to) => self.direct_message(&to, chat.text).await?,
                };
                self.reply(id, types::OK, serde_json::json!({ "seq": seq }));
                Ok(Flow::Continue)
            }
            ClientMessage::ParticipantUpdate(update) => {
                self.update_self(update).await?;
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Mute(m) => {
                if m.participant_id == joined.info.id {
                    let update = match m.kind {
                        MediaKind::Audio => StateUpdate { audio_muted: Some(m.muted), ..Default::default() },
                        MediaKind::Video => StateUpdate { video_muted: Some(m.muted), ..Default::default() },
                    };
                    self.update_self(update).await?;
                } else {
                    self.mute_other(m).await?;
                }
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Admit(a) => {
                let admitted = self.admit(a).await?;
                self.reply(id, types::OK, serde_json::json!({ "admitted": admitted }));
                Ok(Flow::Continue)
            }
            ClientMessage::Participants(q) => {
                let limit = q.limit.unwrap_or(DEFAULT_PARTICIPANTS_PAGE) as usize;
                let (page, next) =
                    self.app.store.page(&joined.key, q.after.as_deref(), limit).await.map_err(redis_failed)?;
                let participants = page.into_iter().map(|r| r.info).collect();
                self.reply(id, types::PARTICIPANTS, ParticipantsPage { participants, next });
                Ok(Flow::Continue)
            }
            ClientMessage::SetRole(r) => {
                self.set_role(r).await?;
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Remove(r) => {
                let removed = self.remove_user(&r.participant_id).await?;
                self.reply(id, types::OK, serde_json::json!({ "removed": removed }));
                Ok(Flow::Continue)
            }
            ClientMessage::Reaction(r) => {
                self.broadcast(types::REACTION, &r).await?;
                Ok(Flow::Continue)
            }
            // A hand is participant state: stored (late joiners see it in the list) and
            // announced; the gate let only hosts and co-hosts lower another's.
            ClientMessage::HandRaise(h) => {
                let targets = if h.all {
                    let all = self.app.store.all(&joined.key).await.map_err(redis_failed)?;
                    all.into_iter().filter(|r| r.info.hand_raised).collect()
                } else {
                    vec![self.record(&h.participant_id.clone().unwrap_or_else(|| joined.info.id.clone())).await?]
                };
                let lowered = targets.len();
                for record in targets {
                    self.set_hand(record, h.raised).await?;
                }
                self.reply(id, types::OK, serde_json::json!({ "hands": lowered }));
                Ok(Flow::Continue)
            }
            ClientMessage::StopRecording => {
                let m = self.meeting()?;
                let by = joined.claims.usr.clone();
                let name = recordings::stop(&self.app, &m, &by).await.map_err(|e| match e {
                    e @ recordings::StopError::NoneRunning => refuse(ErrorCode::NoRecording, e.to_string()),
                    recordings::StopError::Failed(e) => refuse(ErrorCode::Internal, e),
                })?;
                self.reply(id, types::OK, serde_json::json!({ "recordingJob": name }));
                Ok(Flow::Continue)
            }
            ClientMessage::StartRecording => {
                let m = self.meeting()?;
                if let Some(reason) = meetings::recording_refused(&m) {
                    return Err(refuse(ErrorCode::Forbidden, reason));
                }
                let by = joined.info.id.clone();
                // Everyone (this participant too) hears `recording {state: started}`.
                let name = recordings::start(&self.app, &m, &by).await.map_err(|e| match e {
                    StartError::Refused(r) => refuse(ErrorCode::Forbidden, r),
                    e @ (StartError::Active(_) | StartError::Starting) => {
                        refuse(ErrorCode::RecordingActive, e.to_string())
                    }
                    StartError::Failed(e) => refuse(ErrorCode::Internal, e),
                })?;
                self.reply(id, types::OK, serde_json::json!({ "recordingJob": name }));
                Ok(Flow::Continue)
            }
            ClientMessage::E2eeHello(hello) => {
                self.e2ee_hello(id, hello).await?;
                Ok(Flow::Continue)
            }
            ClientMessage::E2eeKey(k) => {
                let (delivered, unknown) = self.e2ee_key(k).await?;
                self.reply(id, types::OK, serde_json::json!({ "delivered": delivered, "unknown": unknown }));
                Ok(Flow::Continue)
            }
            ClientMessage::OpenBreakouts(o) => {
                let m = self.meeting()?;
                let by = joined.claims.usr.clone();
                let state = breakouts::open(&self.app, &m, &by, &o).await.map_err(|e| e.proto())?;
                self.reply(id, types::BREAKOUTS, state);
                Ok(Flow::Continue)
            }
            ClientMessage::BreakoutMove(mv) => {
                let main = self.main_meeting()?;
                let state = breakouts::move_participant(&self.app, &main, &mv.participant_id, mv.room)
                    .await
                    .map_err(|e| e.proto())?;
                self.reply(id, types::BREAKOUTS, state);
                Ok(Flow::Continue)
            }
            ClientMessage::BreakoutBroadcast(b) => {
                let main = self.main_meeting()?;
                let (me, name) = (joined.info.id.clone(), joined.info.name.clone());
                let channels =
                    breakouts::broadcast(&self.app, &main, &me, &name, &b.text).await.map_err(|e| e.proto())?;
                self.reply(id, types::OK, serde_json::json!({ "rooms": channels - 1 }));
                Ok(Flow::Continue)
            }
            ClientMessage::CloseBreakouts(c) => {
                let main = self.main_meeting()?;
                let at = breakouts::close(&self.app, &main, c.countdown_seconds).await.map_err(|e| e.proto())?;
                self.reply(id, types::OK, serde_json::json!({ "closingAtMs": at }));
                Ok(Flow::Continue)
            }
            ClientMessage::AskForHelp => {
                let m = self.meeting()?;
                let (me, name) = (joined.info.id.clone(), joined.info.name.clone());
                breakouts::ask_for_help(&self.app, &m, &me, &name).await.map_err(|e| e.proto())?;
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            // Everyone, this host too, hears `meeting-ended` from the watch of the
            // status this writes (see `meetings::Directory::end`).
            ClientMessage::EndMeeting => {
                let m = self.meeting()?;
                self.app.meetings.end(&m, &joined.claims.usr).await.map_err(|e| {
                    tracing::warn!(error = %e, "ending the meeting");
                    refuse(ErrorCode::Internal, "the meeting could not be ended; try again")
                })?;
                tracing::info!(by = %joined.claims.usr, "meeting ended by a host");
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
        }
    }

    async fn record(&self, participant: &str) -> Result<Record, ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        self.app.store.get(&j.key, participant).await.map_err(redis_failed)?.ok_or_else(|| {
            refuse(ErrorCode::UnknownParticipant, format!("no participant `{participant}` in this meeting"))
        })
    }

    /// `join`: a new participant of a meeting whose joins come faster than its join
    /// queue lets in waits its turn (`queued`), then joins; anyone else joins now.
    async fn join(&mut self, id: Option<String>, token: &str) -> Result<(), ProtoError> {
        if self.queued.is_some() {
            return Err(refuse(ErrorCode::InvalidPayload, "this connection is already waiting in the join queue"));
        }
        // A token that does not verify, or names no meeting here, is refused below.
        let meeting = self.app.sessions.verify(token).ok().and_then(|c| Some((self.app.meetings.get(&c.mtg)?, c)));
        if let Some((m, claims)) = meeting {
            let key = self.app.meetings.state_key(&m);
            let resuming = self.app.store.get(&key, &claims.sub).await.map_err(redis_failed)?.is_some();
            if !resuming {
                let limits = &self.app.limits.settings;
                let interval = Duration::from_secs_f64(1.0 / limits.joins_per_second);
                let burst = limits.join_burst as u32;
                let wait = self.app.store.join_wait(&key, interval, burst).await.map_err(redis_failed)?;
                if !wait.is_zero() {
                    let now = tokio::time::Instant::now();
                    self.push(queue_notice(wait, interval));
                    self.queued = Some(Queued {
                        id,
                        token: token.to_owned(),
                        turn: now + wait,
                        next_notice: now + QUEUE_NOTICE_EVERY,
                        interval,
                    });
                    tracing::debug!(participant = %claims.sub, ?wait, "join queued");
                    return Ok(());
                }
            }
        }
        self.join_now(id, token).await
    }

    async fn join_now(&mut self, id: Option<String>, token: &str) -> Result<(), ProtoError> {
        let claims = self.app.sessions.verify(token).map_err(|e| match e {
            auth::AuthError::Expired => {
                refuse(ErrorCode::Unauthenticated, "the session token has expired; join again through the REST API")
            }
            other => refuse(ErrorCode::Unauthenticated, format!("the session token was refused: {other}")),
        })?;
        if claims.ns != self.app.meetings.namespace {
            return Err(refuse(
                ErrorCode::Unauthenticated,
                format!(
                    "the session token was refused: it is for namespace `{}`; this signaling serves `{}`",
                    claims.ns, self.app.meetings.namespace
                ),
            ));
        }
        // A breakout room's token after the room closed resumes in the main meeting.
        let room =
            self.app.meetings.get(&claims.mtg).filter(|m| m.metadata.uid.as_deref() == Some(claims.uid.as_str()));
        let room_over = room.as_ref().is_none_or(|m| meetings::ended(m).is_some());
        let claims = match claims.home.clone() {
            Some(home) if room_over => SessionClaims { mtg: home.mtg, uid: home.uid, home: None, ..claims },
            _ => claims,
        };
        let m =
            self.app.meetings.get(&claims.mtg).ok_or_else(|| {
                refuse(ErrorCode::MeetingUnavailable, format!("meeting `{}` does not exist", claims.mtg))
            })?;
        claims
            .bound_to(&self.app.meetings.binding(&m))
            .map_err(|r| refuse(ErrorCode::Unauthenticated, format!("the session token was refused: {r}")))?;
        meetings::open(&m).map_err(|r| refuse(ErrorCode::MeetingUnavailable, r))?;
        if m.spec.e2ee && self.e2ee_scheme != Some(e2ee::SCHEME_VERSION) {
            return Err(refuse(
                ErrorCode::E2eeUnsupported,
                format!(
                    "this meeting is end-to-end encrypted: a client must implement docs/e2ee.md and join with `e2ee: {}`",
                    e2ee::SCHEME_VERSION
                ),
            ));
        }
        let key = self.app.meetings.state_key(&m);
        let store = &self.app.store;
        if self.removed_from(&m, &claims.usr).await? {
            return Err(refuse(ErrorCode::Removed, "a host removed you from this meeting"));
        }
        let existing = store.get(&key, &claims.sub).await.map_err(redis_failed)?;
        let resumed = existing.is_some();
        // A session a host moved into a breakout room, resuming with the main meeting's
        // token, was admitted already: it does not wait again.
        let in_a_room = existing.is_none()
            && m.spec.waiting_room
            && store.breakout_of(&key, &claims.sub).await.map_err(redis_failed)?.is_some();
        let record = existing.unwrap_or_else(|| {
            let muted = m.spec.mute_on_entry && !claims.role.admits();
            Record {
                info: ParticipantInfo {
                    id: claims.sub.clone(),
                    name: claims.name.clone(),
                    role: claims.role,
                    admitted: !m.spec.waiting_room || claims.role.skips_waiting_room() || in_a_room,
                    audio_muted: muted,
                    audio_muted_by: muted.then_some(MutedBy::Host),
                    ..Default::default()
                },
                user: claims.usr.clone(),
                media: None,
                e2ee_public_key: None,
            }
        });
        store.put(&key, &record).await.map_err(redis_failed)?;
        store.touch(&key, &claims.sub, &self.connection).await.map_err(redis_failed)?;
        let local = Local {
            connection: self.connection.clone(),
            tx: self.tx.clone(),
            // The record's: a host may have changed it since the token was issued.
            role: record.info.role,
            user: claims.usr.clone(),
            kill: self.kill.clone(),
        };
        let replaced = self
            .app
            .hub
            .register(&key, &claims.sub, local)
            .await
            .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
        self.app.watched.lock().unwrap().insert(key.clone(), claims.mtg.clone());
        if let Some(old) = replaced
            && old.connection != self.connection
        {
            old.kill(Kill::TakenOver);
        }
        self.joined = Some(Joined {
            claims: claims.clone(),
            key: key.clone(),
            info: record.info.clone(),
            media: None,
            e2ee_public_key: record.e2ee_public_key.clone(),
        });
        // A connection of the same session on another replica closes.
        self.publish(Audience::Peer(claims.sub.clone()), BusWhat::TakenOver { connection: self.connection.clone() })
            .await?;
        if resumed {
            self.app.metrics.resumes.inc();
            if let Some(media) = &record.media {
                self.resume_media(&m, media).await;
            }
        } else {
            self.app.metrics.joins.inc();
        }
        let joined = self.joined_payload(&m, &record, resumed).await?;
        self.reply(id, types::JOINED, joined);
        if record.info.admitted {
            self.announce(&record.info).await?;
        } else {
            self.push(Envelope::new(types::WAITING, serde_json::json!({ "reason": "a host will admit you" })));
            self.send_bus(Bus::deliver(
                Audience::Admitters,
                &claims.mtg,
                &claims.sub,
                types::PARTICIPANT_UPDATE,
                &record.info,
            ))
            .await?;
        }
        tracing::info!(participant = %claims.sub, meeting = %claims.mtg, role = ?claims.role, resumed, "joined");
        // Rooms may have opened or closed while the session was away.
        if record.info.admitted && self.in_breakout_family() {
            // A failure leaves it where it joined; its refresh tries again (and a session
            // lost between two meetings is closed by the join deadline, then resumes).
            if let Err(e) = self.follow_breakouts().await {
                tracing::info!(error = %e, "following breakout rooms after a join");
            }
        }
        Ok(())
    }

    /// What `joined` tells the client of meeting `m` it joined as `record`.
    async fn joined_payload(&self, m: &Meeting, record: &Record, resumed: bool) -> Result<JoinedPayload, ProtoError> {
        let key = self.app.meetings.state_key(m);
        let permissions = meetings::permissions(m).of(record.info.role);
        // The waiting room learns nothing of the meeting but that it waits.
        let (title, participants, recording, ice_servers) = if record.info.admitted {
            let recording = self.app.store.recording(&key).await.map_err(redis_failed)?;
            let ice_servers = self.app.ice_servers(&record.info.id);
            (m.spec.title.clone(), self.visible_participants().await?, recording, ice_servers)
        } else {
            (String::new(), Vec::new(), None, Vec::new())
        };
        let audience =
            if record.info.admitted { self.app.store.audience(&key).await.map_err(redis_failed)? } else { 0 };
        Ok(JoinedPayload {
            meeting: m.name_any(),
            participant: record.info.clone(),
            title,
            permissions,
            participants,
            audience,
            resumed,
            recording,
            ice_servers,
            e2ee: m.spec.e2ee,
        })
    }

    /// `remove`: every participant of the target's user leaves, its connections close
    /// at once, and the user may not join the meeting again. Returns the participants removed.
    async fn remove_user(&mut self, participant: &str) -> Result<Vec<String>, ProtoError> {
        let m = self.meeting()?;
        let j = self.joined.as_ref().expect("joined");
        let (key, me, name) = (j.key.clone(), j.info.id.clone(), j.claims.mtg.clone());
        let target = self.record(participant).await?;
        if target.info.role == Role::Host || target.user == m.spec.host || target.user == j.claims.usr {
            return Err(refuse(
                ErrorCode::Forbidden,
                "the host cannot be removed, and nobody removes themselves (send `leave`)",
            ));
        }
        let store = &self.app.store;
        store.mark_removed(&key, &target.user).await.map_err(redis_failed)?;
        // Removed from a breakout room is removed from its main meeting (and so from
        // every room, each of which checks the main meeting's list too).
        if let Some(main) = breakouts::main_of(&self.app, &m).filter(|main| main.name_any() != m.name_any()) {
            let main_key = self.app.meetings.state_key(&main);
            store.mark_removed(&main_key, &target.user).await.map_err(redis_failed)?;
            self.publish_to(&main_key, Audience::User(target.user.clone()), BusWhat::Removed { by: me.clone() })
                .await?;
        }
        // Its connections close first (they no longer hear anything), then its records go.
        self.publish(Audience::User(target.user.clone()), BusWhat::Removed { by: me }).await?;
        let mut removed = Vec::new();
        for r in store.records_of(&key, &target.user).await.map_err(redis_failed)? {
            if store.remove(&key, &r.info.id).await.map_err(redis_failed)? {
                self.app.leave_sfu(&r);
                self.send_bus(Bus::left(&name, &r.info, "removed", r.e2ee_public_key.is_some())).await?;
                removed.push(r.info.id);
            }
        }
        tracing::info!(user = %target.user, participants = ?removed, "removed");
        Ok(removed)
    }

    /// `set-role`: the target's record takes the new role; a participant who no longer
    /// publishes leaves the SFU at once (here, whatever its client does); its connection
    /// is told (`role-changed`), and everyone sees the new role. Nobody changes their own
    /// role or the host's, and only the host makes or unmakes co-hosts.
    async fn set_role(&mut self, r: SetRolePayload) -> Result<(), ProtoError> {
        let m = self.meeting()?;
        let j = self.joined.as_ref().expect("joined");
        let (key, me, my_role) = (j.key.clone(), j.info.id.clone(), j.info.role);
        let mut target = self.record(&r.participant_id).await?;
        if target.info.id == me || target.info.role == Role::Host || target.user == m.spec.host {
            return Err(refuse(ErrorCode::Forbidden, "nobody changes their own role or the host's"));
        }
        if (r.role == Role::CoHost || target.info.role == Role::CoHost) && my_role != Role::Host {
            return Err(refuse(ErrorCode::Forbidden, "only the host makes or unmakes co-hosts"));
        }
        if target.info.role == r.role {
            return Ok(());
        }
        let before = target.info.role;
        target.info.role = r.role;
        if r.role.publishes() && !before.publishes() {
            // Invited to speak: the raised hand was the request.
            target.info.hand_raised = false;
        }
        if !r.role.publishes() && before.publishes() {
            self.app.leave_sfu(&target);
            target.media = None;
            target.info.screen_sharing = false;
        }
        self.app.store.put(&key, &target).await.map_err(redis_failed)?;
        tracing::info!(participant = %target.info.id, from = ?before, to = ?r.role, by = %me, "role changed");
        self.publish(Audience::Peer(target.info.id.clone()), BusWhat::RoleChanged { role: r.role, by: me }).await?;
        // Everyone: joining the speakers or leaving them changes what each page shows.
        if target.info.admitted {
            self.broadcast(types::PARTICIPANT_UPDATE, &target.info).await?;
        }
        Ok(())
    }

    /// A host mutes someone (at the SFU too: whatever their client does), or lifts a mute
    /// so they may unmute themselves.
    async fn mute_other(&mut self, m: MutePayload) -> Result<(), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let (key, me) = (j.key.clone(), j.info.id.clone());
        let mut target = self.record(&m.participant_id).await?;
        let (muted, by) = match m.kind {
            MediaKind::Audio => (&mut target.info.audio_muted, &mut target.info.audio_muted_by),
            MediaKind::Video => (&mut target.info.video_muted, &mut target.info.video_muted_by),
        };
        if m.muted {
            *muted = true;
            *by = Some(MutedBy::Host);
        } else if *by == Some(MutedBy::Host) {
            // Still muted; the participant may unmute now.
            *by = Some(MutedBy::Participant);
        }
        self.app.store.put(&key, &target).await.map_err(redis_failed)?;
        if m.muted
            && let Some(media) = &target.media
        {
            self.app.mute_at_sfu(&target.info.id, media, m.kind, true);
        }
        let command = BusWhat::ForceMute { kind: m.kind, by: me, muted: m.muted };
        self.publish(Audience::Peer(m.participant_id.clone()), command).await?;
        if target.info.admitted {
            self.announce(&target.info).await?;
        }
        Ok(())
    }

    /// A chat message to participant `to` alone: delivered to it and to the sender's
    /// connections, kept in the history for the two users only. The recipient must be
    /// admitted, someone else, and reachable by the sender's role
    /// ([`Role::may_message_privately`]).
    async fn direct_message(&mut self, to: &str, text: String) -> Result<u64, ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let (key, me, my_role) = (j.key.clone(), j.info.clone(), j.info.role);
        let (mtg, user) = (j.claims.mtg.clone(), j.claims.usr.clone());
        let target = self.record(to).await?;
        if target.info.id == me.id {
            return Err(refuse(ErrorCode::InvalidPayload, "a direct message goes to someone else"));
        }
        // A waiting guest, or someone the sender cannot see, is as unknown as a stranger.
        let visible = target.info.admitted && my_role.may_message_privately(target.info.role);
        if !visible {
            return Err(refuse(ErrorCode::UnknownParticipant, format!("no participant `{to}` you may write to")));
        }
        let message = ChatMessage {
            seq: 0,
            from: me.id.clone(),
            name: me.name.clone(),
            text,
            at_ms: now_ms(),
            to: Some(target.info.id.clone()),
            to_name: Some(target.info.name.clone()),
        };
        let readers = vec![user.clone(), target.user.clone()];
        let stored = self.app.store.append_chat(&key, message, readers).await.map_err(redis_failed)?;
        for audience in [Audience::Peer(target.info.id.clone()), Audience::User(user)] {
            self.send_bus(Bus::deliver(audience, &mtg, &me.id, types::CHAT, &stored)).await?;
        }
        Ok(stored.seq)
    }

    /// Key exchange happens only in an E2EE meeting.
    fn e2ee_meeting(&self) -> Result<(), ProtoError> {
        if self.meeting()?.spec.e2ee {
            Ok(())
        } else {
            Err(refuse(ErrorCode::InvalidPayload, "this meeting is not end-to-end encrypted"))
        }
    }

    /// `e2ee-hello`. Without `toPeerId`: stores the public key, sends it to those who
    /// encrypt to this participant or whom it encrypts to (a publisher's to everyone
    /// admitted, a viewer's to the publishers), and answers with their keys
    /// (`e2ee-members`). With `toPeerId`: asks that member to send its media key again;
    /// allowed only between a publisher and a member, never viewer to viewer.
    async fn e2ee_hello(&mut self, id: Option<String>, hello: e2ee::HelloPayload) -> Result<(), ProtoError> {
        self.e2ee_meeting()?;
        let j = self.joined.as_ref().expect("joined");
        let (key, mtg, me, role) = (j.key.clone(), j.claims.mtg.clone(), j.info.id.clone(), j.info.role);
        let public_key = hello.public_key;
        let now = Instant::now();
        if let Some(to) = hello.to {
            if j.e2ee_public_key.as_deref() != Some(public_key.as_str()) {
                return Err(refuse(
                    ErrorCode::InvalidPayload,
                    "announce this key first (e2ee-hello without toPeerId); a key request carries the key announced",
                ));
            }
            let target = self.record(&to).await?;
            let pair = role.publishes() || target.info.role.publishes();
            if target.info.id == me || !target.info.admitted || target.e2ee_public_key.is_none() || !pair {
                return Err(refuse(ErrorCode::UnknownParticipant, format!("no member `{to}` to ask for a key")));
            }
            self.e2ee.entries.take_n(1.0, now).map_err(|_| refuse(ErrorCode::RateLimited, "too many key requests"))?;
            let payload = e2ee::HelloPayload { public_key, to: None };
            self.send_bus(Bus::deliver(Audience::Peer(to), &mtg, &me, types::E2EE_HELLO, &payload)).await?;
            self.reply(id, types::OK, serde_json::json!({}));
            return Ok(());
        }
        let limits = &mut self.e2ee;
        if limits.last_hello.is_some_and(|at| now.duration_since(at) < E2EE_HELLO_EVERY) {
            return Err(refuse(ErrorCode::RateLimited, "at most one e2ee-hello announcement a second"));
        }
        if !limits.keys_announced.contains(&public_key) {
            if limits.keys_announced.len() >= E2EE_MAX_PUBLIC_KEYS {
                return Err(refuse(
                    ErrorCode::RateLimited,
                    format!("at most {E2EE_MAX_PUBLIC_KEYS} public keys a connection"),
                ));
            }
            limits.keys_announced.push(public_key.clone());
        }
        limits.last_hello = Some(now);
        let mut record = self.record(&me).await?;
        record.e2ee_public_key = Some(public_key.clone());
        self.app.store.put(&key, &record).await.map_err(redis_failed)?;
        self.joined.as_mut().expect("joined").e2ee_public_key = Some(public_key.clone());
        let audience = if role.publishes() { Audience::All } else { Audience::Publishers };
        let payload = e2ee::HelloPayload { public_key, to: None };
        self.send_bus(Bus::deliver(audience, &mtg, &me, types::E2EE_HELLO, &payload)).await?;
        let all = self.app.store.all(&key).await.map_err(redis_failed)?;
        let mut members: Vec<e2ee::Member> = all
            .into_iter()
            .filter(|r| r.info.admitted && r.info.id != me && (role.publishes() || r.info.role.publishes()))
            .filter_map(|r| Some(e2ee::Member { participant_id: r.info.id, public_key: r.e2ee_public_key? }))
            .collect();
        members.sort_by(|a, b| a.participant_id.cmp(&b.participant_id));
        let mut chunks: Vec<_> = members.chunks(e2ee::MEMBERS_PER_MESSAGE).map(<[_]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        for (i, members) in chunks.into_iter().enumerate() {
            self.reply(id.clone(), types::E2EE_MEMBERS, e2ee::MembersPayload { members, done: i == last });
        }
        Ok(())
    }

    /// `e2ee-key`: each entry to its recipient alone, if it is an admitted member; the
    /// wrapped keys are passed on unread. Returns how many went out and the ids unknown.
    async fn e2ee_key(&mut self, k: e2ee::KeyPayload) -> Result<(usize, Vec<String>), ProtoError> {
        self.e2ee_meeting()?;
        self.e2ee.entries.take_n(k.entries.len() as f64, Instant::now()).map_err(|wait| {
            refuse(ErrorCode::RateLimited, format!("too many keys sent; wait {} ms", wait.as_millis()))
        })?;
        let j = self.joined.as_ref().expect("joined");
        let (key, mtg, me) = (j.key.clone(), j.claims.mtg.clone(), j.info.id.clone());
        // Only the recipients named (at most 200), not every record of the meeting.
        let named: Vec<&str> = k.entries.iter().map(|e| e.to.as_str()).collect();
        let members: std::collections::HashSet<String> = self
            .app
            .store
            .get_many(&key, &named)
            .await
            .map_err(redis_failed)?
            .into_iter()
            .filter(|r| r.info.admitted && r.info.id != me)
            .map(|r| r.info.id)
            .collect();
        let (mut delivered, mut unknown) = (0, Vec::new());
        for e in k.entries {
            if !members.contains(&e.to) {
                unknown.push(e.to);
                continue;
            }
            let payload = e2ee::DeliveredKey { kid: k.kid, iv: e.iv, key: e.key };
            self.send_bus(Bus::deliver(Audience::Peer(e.to), &mtg, &me, types::E2EE_KEY, &payload)).await?;
            delivered += 1;
        }
        Ok((delivered, unknown))
    }

    /// Everyone admitted, plus the waiting room for those who run it.
    async fn visible_participants(&self) -> Result<Vec<switchboard_signaling_proto::ParticipantInfo>, ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let all = self.app.store.all(&j.key).await.map_err(redis_failed)?;
        let admits = j.info.role.admits();
        let me = j.info.id.as_str();
        // The audience is counted, not listed, for those who do not run the meeting.
        let mut out: Vec<_> = all
            .into_iter()
            .map(|r| r.info)
            .filter(|i| admits || i.id == me || store::presence_audience(i) == Audience::All)
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn admit(&mut self, a: AdmitPayload) -> Result<Vec<String>, ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let key = j.key.clone();
        let targets: Vec<Record> = match a.participant_id {
            Some(p) => vec![self.record(&p).await?],
            None => {
                self.app.store.all(&key).await.map_err(redis_failed)?.into_iter().filter(|r| !r.info.admitted).collect()
            }
        };
        let mut admitted = Vec::new();
        for mut t in targets {
            if t.info.admitted {
                continue;
            }
            t.info.admitted = true;
            self.app.store.put(&key, &t).await.map_err(redis_failed)?;
            self.publish(Audience::Peer(t.info.id.clone()), BusWhat::Admitted).await?;
            self.announce(&t.info).await?;
            admitted.push(t.info.id);
        }
        Ok(admitted)
    }

    async fn update_self(&mut self, update: StateUpdate) -> Result<(), ProtoError> {
        // Screen sharing was checked by the gate; lifting a host's mute needs the state below.
        let permissions = meetings::permissions(&*self.meeting()?);
        let j = self.joined.as_mut().expect("joined");
        let mut record = self.app.store.get(&j.key, &j.info.id).await.map_err(redis_failed)?.unwrap_or_default();
        if record.info.id.is_empty() {
            return Err(refuse(ErrorCode::UnknownParticipant, "your participant record is gone; join again"));
        }
        let before = record.info.clone();
        let info = &mut record.info;
        for (want, muted, by, what) in [
            (update.audio_muted, &mut info.audio_muted, &mut info.audio_muted_by, "microphone"),
            (update.video_muted, &mut info.video_muted, &mut info.video_muted_by, "camera"),
        ] {
            match want {
                Some(false) => {
                    session::unmute_allowed(j.info.role, *by, &permissions, what)?;
                    *muted = false;
                    *by = None;
                }
                Some(true) => {
                    *muted = true;
                    if *by != Some(MutedBy::Host) {
                        *by = Some(MutedBy::Participant);
                    }
                }
                None => {}
            }
        }
        if let Some(v) = update.screen_sharing {
            info.screen_sharing = v;
        }
        if let Some(v) = update.name {
            info.name = v;
        }
        j.info = record.info.clone();
        self.app.store.put(&j.key, &record).await.map_err(redis_failed)?;
        if let Some(media) = &record.media {
            if before.audio_muted != record.info.audio_muted {
                self.app.mute_at_sfu(&record.info.id, media, MediaKind::Audio, record.info.audio_muted);
            }
            if before.video_muted != record.info.video_muted {
                self.app.mute_at_sfu(&record.info.id, media, MediaKind::Video, record.info.video_muted);
            }
            // Sharing stopped: its tracks end for everyone now (a client that only
            // renegotiates leaves an inactive section, which the SFU does not read as an end).
            if update.screen_sharing == Some(false) {
                self.app.unpublish_screen_at_sfu(&record.info.id, media);
            }
        }
        if record.info.admitted {
            self.announce(&record.info).await?;
        }
        Ok(())
    }

    /// Applies the participant's mutes, as Redis has them now, to its media at the SFU
    /// (after its media joined or changed: new tracks start muted if it is muted).
    async fn enforce_mutes(&self) {
        let Some(j) = &self.joined else { return };
        let record = match self.app.store.get(&j.key, &j.info.id).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "reading mutes");
                return;
            }
        };
        let Some(media) = &record.media else { return };
        if record.info.audio_muted {
            self.app.mute_at_sfu(&record.info.id, media, MediaKind::Audio, true);
        }
        if record.info.video_muted {
            self.app.mute_at_sfu(&record.info.id, media, MediaKind::Video, true);
        }
    }

    fn media_link(&self) -> Result<(SfuApi, String, String), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let m = j
            .media
            .as_ref()
            .ok_or_else(|| refuse(ErrorCode::InvalidPayload, "no media session yet: send an `offer` first"))?;
        Ok((m.sfu.clone(), m.room.clone(), j.info.id.clone()))
    }

    /// Whether the offer carries only tracks the participant declares, well formed
    /// (see `signaling_proto::offer`).
    fn check_offer(&self, offer: &OfferPayload) -> Result<(), ProtoError> {
        // Who may publish, and screen sharing, were checked by the gate.
        let j = self.joined.as_ref().expect("joined");
        let earlier: &[switchboard_sfu_api::TrackDescription] = j.media.as_ref().map(|m| &m.tracks[..]).unwrap_or(&[]);
        for (i, t) in offer.tracks.iter().enumerate() {
            switchboard_sfu_api::paths::check_id("track", &t.id).map_err(|r| refuse(ErrorCode::InvalidPayload, r))?;
            if t.origin.is_some() {
                return Err(refuse(ErrorCode::InvalidPayload, "a track declared by a client has no origin"));
            }
            let again = offer.tracks[..i].iter().chain(earlier).find(|x| x.id == t.id);
            if again.is_some_and(|x| x.source != t.source) {
                return Err(refuse(ErrorCode::InvalidPayload, format!("track `{}` is declared twice", t.id)));
            }
        }
        if let Some(sdp) = &offer.sdp {
            let declared: Vec<_> = earlier.iter().chain(&offer.tracks).cloned().collect();
            switchboard_signaling_proto::offer::check_offer(sdp, &declared)
                .map_err(|r| refuse(ErrorCode::Forbidden, r))?;
        }
        Ok(())
    }

    async fn offer(&mut self, id: Option<String>, offer: OfferPayload) -> Result<(), ProtoError> {
        let m = self.meeting()?;
        self.check_offer(&offer)?;
        // The role as stored: a host's `set-role` reaches this connection through the
        // bus, and an offer must not slip in between with the old right to publish.
        let j = self.joined.as_mut().expect("joined");
        if let Some(stored) = self.app.store.get(&j.key, &j.info.id).await.map_err(redis_failed)?
            && stored.info.role != j.info.role
        {
            j.info.role = stored.info.role;
            session::gate(Phase::Admitted { role: j.info.role }, &ClientMessage::Offer(offer.clone()), "", || {
                Ok(meetings::permissions(&m))
            })?;
        }
        // New connections for a session that has media (a reloaded page): the old
        // participant at the SFU goes, and the offer joins afresh below.
        if offer.fresh
            && let Some(old) = self.joined.as_mut().and_then(|j| j.media.take())
        {
            old.pump.abort();
            let pid = self.joined.as_ref().map(|j| j.info.id.clone()).unwrap_or_default();
            if let Err(e) = old.sfu.leave(&old.room, &pid).await {
                tracing::debug!(error = %e, "the replaced media's participant was gone already");
            }
        }
        let j = self.joined.as_ref().expect("joined");
        if let Some(media) = &j.media {
            let sdp = offer.sdp.ok_or_else(|| refuse(ErrorCode::InvalidPayload, "a renegotiation needs an sdp"))?;
            let answer = media
                .sfu
                .publisher_offer(
                    &media.room,
                    &j.info.id,
                    OfferRequest { sdp, tracks: declared_as(&j.info, &offer.tracks) },
                )
                .await
                .map_err(media_failed)?;
            let j = self.joined.as_mut().expect("joined");
            let media = j.media.as_mut().expect("media");
            for t in offer.tracks {
                if !media.tracks.iter().any(|x| x.id == t.id) {
                    media.tracks.push(t);
                }
            }
            let tracks = media.tracks.clone();
            self.save_media(tracks).await?;
            self.enforce_mutes().await;
            self.reply(id, types::ANSWER, serde_json::json!({ "sdp": answer.answer }));
            return Ok(());
        }
        let slot = self.app.store.next_slot(&j.key).await.map_err(redis_failed)?;
        let target = meetings::choose_sfu(&m, slot).ok_or_else(|| {
            refuse(ErrorCode::MeetingUnavailable, "the meeting has no SFU assigned yet; try again shortly")
        })?;
        let room = self.app.meetings.room(&m.name_any());
        self.open_mixed(&m, &target, &room).await?;
        self.ensure_relay(&m, &target, &room).await?;
        let sfu = self.app.sfu(&target.endpoint);
        let pid = j.info.id.clone();
        let request = JoinRequest {
            participant_id: pid.clone(),
            kind: ParticipantKind::Client,
            auto_subscribe: true,
            publish: j.info.role.publishes(),
            offer: offer.sdp.clone(),
            tracks: declared_as(&j.info, &offer.tracks),
        };
        let answer = match sfu.join(&room, request.clone()).await {
            Err(e) if e.code() == Some(SfuCode::AlreadyJoined) => {
                // A stale participant of this session (a crashed client): replace it.
                let _ = sfu.leave(&room, &pid).await;
                sfu.join(&room, request).await
            }
            other => other,
        }
        .map_err(media_failed)?;
        self.start_media(target.endpoint.clone(), room, offer.tracks, 0);
        let tracks = self.joined.as_ref().and_then(|j| j.media.as_ref()).map(|m| m.tracks.clone()).unwrap_or_default();
        self.save_media(tracks).await?;
        self.enforce_mutes().await;
        self.reply(id, types::ANSWER, serde_json::json!({ "sdp": answer.answer }));
        Ok(())
    }

    /// A meeting with `spec.audio: Mixed` has its room opened mixed on the SFU that
    /// serves this participant and on its parent (whose room an edge's relay would
    /// otherwise open routed), before anyone joins there. A room already open routed
    /// (the spec changed during the meeting) stays so until it closes.
    async fn open_mixed(
        &self,
        m: &Meeting,
        target: &switchboard_crds::meeting::SfuEndpoint,
        room: &str,
    ) -> Result<(), ProtoError> {
        // Never for an end-to-end encrypted meeting, whose voices the SFU cannot decode
        // (the CRD refuses the pair; a Meeting stored before that rule keeps routing).
        if m.spec.audio != switchboard_crds::meeting::MeetingAudio::Mixed || m.spec.e2ee {
            return Ok(());
        }
        let parent = target.parent.as_ref().and_then(|p| meetings::endpoints(m).into_iter().find(|e| &e.pod == p));
        let request = switchboard_sfu_api::RoomRequest { audio: switchboard_sfu_api::RoomAudio::Mixed };
        for endpoint in parent.iter().map(|p| &p.endpoint).chain([&target.endpoint]) {
            let sfu = self.app.sfu(endpoint);
            let url = sfu.url(switchboard_sfu_api::paths::ROOM, room, "", "");
            match sfu.put::<_, serde_json::Value>(&url, &request).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(SfuCode::RoomConflict) => {
                    tracing::info!(room, %endpoint, "the room is open with routed audio; mixed applies when it reopens");
                }
                Err(e) => return Err(media_failed(e)),
            }
        }
        Ok(())
    }

    /// An edge SFU relays the room from its parent before its first participant arrives.
    async fn ensure_relay(
        &self,
        m: &Meeting,
        target: &switchboard_crds::meeting::SfuEndpoint,
        room: &str,
    ) -> Result<(), ProtoError> {
        let Some(parent) = &target.parent else { return Ok(()) };
        let key = (target.endpoint.clone(), room.to_owned());
        if self.app.relayed.lock().unwrap().contains(&key) {
            return Ok(());
        }
        let parent = meetings::endpoints(m).into_iter().find(|e| &e.pod == parent).ok_or_else(|| {
            refuse(ErrorCode::MeetingUnavailable, format!("edge {} relays from unknown pod {parent}", target.pod))
        })?;
        let sfu = self.app.sfu(&target.endpoint);
        let url = sfu.url(switchboard_sfu_api::paths::RELAY, room, "", "");
        match sfu.post::<_, serde_json::Value>(&url, &RelayRequest { origin: parent.endpoint.clone() }).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(SfuCode::AlreadyJoined) => {}
            Err(e) => return Err(media_failed(e)),
        }
        self.app.relayed.lock().unwrap().insert(key);
        Ok(())
    }

    fn start_media(
        &mut self,
        endpoint: String,
        room: String,
        tracks: Vec<switchboard_sfu_api::TrackDescription>,
        after: u64,
    ) {
        let j = self.joined.as_mut().expect("joined");
        let pump = tokio::spawn(pump_events(
            self.app.clone(),
            self.tx.clone(),
            endpoint.clone(),
            room.clone(),
            j.key.clone(),
            j.info.id.clone(),
            after,
        ));
        j.media = Some(MediaLink { sfu: self.app.sfu(&endpoint), endpoint, room, tracks, pump });
    }

    async fn save_media(&mut self, tracks: Vec<switchboard_sfu_api::TrackDescription>) -> Result<(), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let mut record = self.app.store.get(&j.key, &j.info.id).await.map_err(redis_failed)?.unwrap_or_default();
        record.media =
            j.media.as_ref().map(|m| MediaRecord { endpoint: m.endpoint.clone(), room: m.room.clone(), tracks });
        if record.info.id.is_empty() {
            return Ok(());
        }
        self.app.store.put(&j.key, &record).await.map_err(redis_failed)
    }

    /// A resumed session whose media is still on a serving SFU picks up its event
    /// stream where the previous connection left it; otherwise the client reconnects media.
    async fn resume_media(&mut self, m: &Meeting, media: &MediaRecord) {
        let still_serving = meetings::endpoints(m).iter().any(|e| e.endpoint == media.endpoint);
        let j = self.joined.as_ref().expect("joined");
        if still_serving {
            let after = self.app.store.seq(&j.key, &j.info.id).await.unwrap_or(0);
            self.start_media(media.endpoint.clone(), media.room.clone(), media.tracks.clone(), after);
        } else {
            self.drop_media("the meeting moved to another SFU while you were away", meetings::generation(m)).await;
        }
    }

    /// Leaves the SFU (in the background: it may be dead) and tells the client to
    /// connect media afresh.
    async fn drop_media(&mut self, reason: &str, generation: i64) {
        self.app.metrics.migrations.inc();
        self.release_media(reason, generation).await;
    }

    /// Lets the participant's media at the SFU go and tells the client to connect media
    /// again (`media-reconnect`).
    async fn release_media(&mut self, reason: &str, generation: i64) {
        let Some(j) = self.joined.as_mut() else { return };
        if let Some(media) = j.media.take() {
            let (sfu, room, pid) = (media.sfu.clone(), media.room.clone(), j.info.id.clone());
            tokio::spawn(async move { sfu.leave(&room, &pid).await });
        }
        let _ = self.save_media(Vec::new()).await;
        let ice_servers = self.app.ice_servers(&self.joined.as_ref().expect("joined").info.id);
        let payload = MediaReconnectPayload { reason: reason.into(), generation, ice_servers };
        self.push(Envelope::new(types::MEDIA_RECONNECT, payload));
    }

    async fn meeting_changed(&mut self, name: &str) -> Flow {
        let Some(j) = &self.joined else { return Flow::Continue };
        if j.claims.mtg != name {
            return Flow::Continue;
        }
        // A breakout room that ended or went: its sessions go home, not away.
        if let Some(home) = j.claims.home.clone() {
            let room = self.app.meetings.get(name).filter(|m| m.metadata.uid.as_deref() == Some(j.claims.uid.as_str()));
            let over = room.as_ref().is_none_or(|m| meetings::ended(m).is_some() || meetings::open(m).is_err());
            let main =
                self.app.meetings.get(&home.mtg).filter(|m| m.metadata.uid.as_deref() == Some(home.uid.as_str()));
            if over && let Some(main) = main.filter(|m| meetings::open(m).is_ok()) {
                if let Err(e) = self.switch_meeting(main).await {
                    tracing::warn!(error = %e, "going home from a breakout room");
                    self.error(e);
                }
                return if self.joined.is_some() { Flow::Continue } else { Flow::Close };
            }
        }
        let m = match self.app.meetings.get(name) {
            // Deleted, or deleted and created again: this session was for the old one.
            Some(m) if m.metadata.uid.as_deref() == Some(j.claims.uid.as_str()) => m,
            // Its media ends with it: the SFU lets the participant go now, not when
            // presence expires (a deleted meeting's room must not keep forwarding).
            _ => {
                self.error(refuse(ErrorCode::MeetingUnavailable, "the meeting was deleted"));
                self.leave().await;
                return Flow::Close;
            }
        };
        // Over for good: the client is told not to come back.
        if let Some(reason) = meetings::ended(&m) {
            self.push(Envelope::new(types::MEETING_ENDED, serde_json::json!({ "reason": reason })));
            self.leave().await;
            return Flow::Close;
        }
        if let Err(reason) = meetings::open(&m) {
            self.error(refuse(ErrorCode::MeetingUnavailable, reason));
            self.leave().await;
            return Flow::Close;
        }
        let Some(media) = &j.media else { return Flow::Continue };
        if !meetings::endpoints(&m).iter().any(|e| e.endpoint == media.endpoint) {
            let reason = m
                .status
                .as_ref()
                .and_then(|s| s.migrations.last())
                .map(|g| format!("moved from {} to {}: {}", g.from, g.to, g.reason))
                .unwrap_or_else(|| "the meeting's SFU changed".into());
            tracing::info!(%reason, "media reconnect");
            self.drop_media(&reason, meetings::generation(&m)).await;
        }
        Flow::Continue
    }

    async fn command(&mut self, what: BusWhat) -> Flow {
        let Some(j) = self.joined.as_mut() else { return Flow::Continue };
        match what {
            BusWhat::Deliver(env) => self.deliver(env),
            BusWhat::Admitted => {
                j.info.admitted = true;
                let (key, ice_servers) = (j.key.clone(), self.app.ice_servers(&j.info.id));
                let participants = self.visible_participants().await.unwrap_or_default();
                let title = self.meeting().map(|m| m.spec.title.clone()).unwrap_or_default();
                let recording = self.app.store.recording(&key).await.unwrap_or_default();
                let audience = self.app.store.audience(&key).await.unwrap_or_default();
                self.push(Envelope::new(
                    types::ADMITTED,
                    serde_json::json!({
                        "participants": participants, "title": title, "recording": recording,
                        "iceServers": ice_servers, "audience": audience,
                    }),
                ));
            }
            BusWhat::ForceMute { kind, by, muted } => {
                // The host's side muted the tracks at the SFU already; this is the client's news.
                let (state, by_whom) = match kind {
                    MediaKind::Audio => (&mut j.info.audio_muted, &mut j.info.audio_muted_by),
                    MediaKind::Video => (&mut j.info.video_muted, &mut j.info.video_muted_by),
                };
                if muted {
                    *state = true;
                    *by_whom = Some(MutedBy::Host);
                } else if *by_whom == Some(MutedBy::Host) {
                    *by_whom = Some(MutedBy::Participant);
                }
                let me = j.info.id.clone();
                let payload = serde_json::json!({ "participantId": me, "kind": kind, "muted": muted });
                self.push(Envelope::new(types::MUTE, payload).from_peer(&by));
            }
            BusWhat::RoleChanged { role, by } => {
                let before = j.info.role;
                j.info.role = role;
                if role.publishes() && !before.publishes() {
                    j.info.hand_raised = false;
                }
                let permissions = self.meeting().map(|m| meetings::permissions(&m).of(role)).unwrap_or_default();
                let reconnect = role.publishes() != before.publishes();
                let payload = RoleChangedPayload { role, permissions, by: by.clone(), reconnect };
                self.push(Envelope::new(types::ROLE_CHANGED, payload).from_peer(&by));
                if reconnect {
                    // Its media at the SFU joined with the old right to publish: it goes
                    // (already, when demoted), and the client connects media again.
                    let generation = self.meeting().map(|m| meetings::generation(&m)).unwrap_or_default();
                    self.release_media(&format!("your role is now {role:?}"), generation).await;
                }
            }
            // These come as kills (see `hub.rs`), not through the queue.
            BusWhat::Removed { .. } | BusWhat::TakenOver { .. } => {}
            BusWhat::Resync => return self.resync().await,
            BusWhat::MoveTo { meeting, uid } => {
                if j.claims.mtg != meeting {
                    let target = self.app.meetings.get(&meeting).filter(|m| m.metadata.uid.as_deref() == Some(&uid));
                    match target {
                        Some(to) => {
                            if let Err(e) = self.switch_meeting(to).await {
                                tracing::warn!(error = %e, %meeting, "moving to a breakout room");
                                self.error(e);
                                // Lost between the two meetings: the client resumes, and
                                // its resume finds where it belongs.
                                if self.joined.is_none() {
                                    return Flow::Close;
                                }
                            }
                        }
                        None => tracing::info!(%meeting, "told to move to a meeting that is gone"),
                    }
                }
            }
        }
        Flow::Continue
    }

    /// Moves this session into meeting `to` (a breakout room, or home again): the same
    /// participant leaves the meeting it is in (its media there too) and joins `to`
    /// admitted, with its name and mutes, its role (the host of `to` is its host),
    /// without a raised hand or a screen share. The server issues the session token of
    /// `to` (`breakout-moved`, carrying what `joined` would), then asks the client to
    /// connect media again (`media-reconnect`): nobody logs in again.
    async fn switch_meeting(&mut self, to: Arc<Meeting>) -> Result<(), ProtoError> {
        meetings::open(&to).map_err(|r| refuse(ErrorCode::MeetingUnavailable, r))?;
        let main = breakouts::main_of(&self.app, &to)
            .ok_or_else(|| refuse(ErrorCode::MeetingUnavailable, "the room's main meeting no longer exists"))?;
        let key = self.app.meetings.state_key(&to);
        let store = &self.app.store;
        let j = self.joined.as_ref().ok_or_else(|| refuse(ErrorCode::Unauthenticated, "send `join` first"))?;
        if self.removed_from(&to, &j.claims.usr).await? {
            return Err(refuse(ErrorCode::Removed, "a host removed you from that room"));
        }
        // Into `to` first: a failure here leaves the session where it was.
        let role = if j.claims.usr == to.spec.host {
            Role::Host
        } else if j.info.role == Role::Host {
            Role::CoHost
        } else {
            j.info.role
        };
        let info =
            ParticipantInfo { role, admitted: true, hand_raised: false, screen_sharing: false, ..j.info.clone() };
        let record = Record { info: info.clone(), user: j.claims.usr.clone(), media: None, e2ee_public_key: None };
        let joined = async {
            store.put(&key, &record).await?;
            store.touch(&key, &info.id, &self.connection).await
        };
        joined.await.map_err(redis_failed)?;
        // Out of the meeting it is in: media, record, bus.
        let Some(j) = self.joined.take() else { unreachable!("checked above") };
        if let Some(media) = &j.media {
            let (sfu, room, pid) = (media.sfu.clone(), media.room.clone(), j.info.id.clone());
            tokio::spawn(async move { sfu.leave(&room, &pid).await });
        }
        if let Ok(true) = store.remove(&j.key, &j.info.id).await {
            let left = Bus::left(&j.claims.mtg, &j.info, "breakout", j.e2ee_public_key.is_some());
            let _ = store.publish(&j.key, &left).await;
        }
        self.app.hub.unregister(&j.key, &j.info.id, &self.connection).await;
        let local = Local {
            connection: self.connection.clone(),
            tx: self.tx.clone(),
            role,
            user: j.claims.usr.clone(),
            kill: self.kill.clone(),
        };
        let replaced = self
            .app
            .hub
            .register(&key, &info.id, local)
            .await
            .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
        self.app.watched.lock().unwrap().insert(key.clone(), to.name_any());
        // An older connection of the session already in `to` (it resumed with the room's
        // token elsewhere) closes, here or on another replica.
        if let Some(old) = replaced
            && old.connection != self.connection
        {
            old.kill(Kill::TakenOver);
        }
        let taken = BusWhat::TakenOver { connection: self.connection.clone() };
        self.publish_to(&key, Audience::Peer(info.id.clone()), taken).await?;
        let home = (main.name_any() != to.name_any())
            .then(|| auth::Home { mtg: main.name_any(), uid: main.metadata.uid.clone().unwrap_or_default() });
        let now = auth::now_unix();
        let (token, claims) = self.app.sessions.reissue(
            &j.claims,
            &self.app.meetings.binding(&to),
            role,
            home,
            now,
            now + self.app.cfg.session_ttl.as_secs(),
        );
        self.joined = Some(Joined { claims, key: key.clone(), info: info.clone(), media: None, e2ee_public_key: None });
        self.app.metrics.breakout_moves.inc();
        let main_key = self.app.meetings.state_key(&main);
        let state = store.breakouts(&main_key).await.map_err(redis_failed)?;
        let room = state.as_ref().and_then(|s| s.rooms.iter().find(|r| r.meeting == to.name_any()));
        let moved = switchboard_signaling_proto::breakouts::MovedPayload {
            session_token: token,
            meeting: to.name_any(),
            main: main.name_any(),
            room: room.map(|r| r.name.clone()),
            ends_at_ms: room.and(state.as_ref().and_then(|s| s.closing_at_ms.or(s.ends_at_ms))),
            joined: self.joined_payload(&to, &record, false).await?,
        };
        self.push(Envelope::new(types::BREAKOUT_MOVED, moved).room(&to.name_any()));
        let where_to = room.map(|r| format!("breakout room {}", r.name)).unwrap_or_else(|| "the main room".into());
        let ice_servers = self.app.ice_servers(&info.id);
        let reconnect = MediaReconnectPayload {
            reason: format!("moved to {where_to}"),
            generation: meetings::generation(&to),
            ice_servers,
        };
        self.push(Envelope::new(types::MEDIA_RECONNECT, reconnect));
        // Hosts see the rooms wherever they are (a message sent while this session was
        // between meetings is not lost to them).
        if role.admits() {
            let rooms = breakouts::state_of(&self.app, &main_key, state.as_ref()).await.map_err(|e| e.proto())?;
            self.push(Envelope::new(types::BREAKOUTS, rooms).room(&main.name_any()));
        }
        self.announce(&info).await?;
        tracing::info!(participant = %info.id, from = %j.claims.mtg, to = %to.name_any(), "session moved");
        Ok(())
    }

    /// In a breakout room, or in a main meeting with rooms open (as this replica's timer
    /// last saw): only then is where the session belongs read from Redis, so joins and
    /// refreshes of meetings without rooms cost nothing more.
    fn in_breakout_family(&self) -> bool {
        self.joined
            .as_ref()
            .is_some_and(|j| j.claims.home.is_some() || self.app.breakouts_open.lock().unwrap().contains(&j.key))
    }

    /// Whether `user` was removed from meeting `m`, or, for a breakout room, from its main
    /// meeting (a room's old token does not get a removed user back in).
    async fn removed_from(&self, m: &Arc<Meeting>, user: &str) -> Result<bool, ProtoError> {
        let store = &self.app.store;
        if store.is_removed(&self.app.meetings.state_key(m), user).await.map_err(redis_failed)? {
            return Ok(true);
        }
        match breakouts::main_of(&self.app, m).filter(|main| main.name_any() != m.name_any()) {
            Some(main) => store.is_removed(&self.app.meetings.state_key(&main), user).await.map_err(redis_failed),
            None => Ok(false),
        }
    }

    /// Where this session belongs while its meeting has rooms open (`bo:where`), or home
    /// once they closed: it moves there if it is elsewhere. How a session converges when
    /// a move message was lost, or when it resumes with an older token.
    async fn follow_breakouts(&mut self) -> Result<(), ProtoError> {
        let Some(j) = self.joined.as_ref().filter(|j| j.info.admitted) else { return Ok(()) };
        let pid = j.info.id.clone();
        let here = j.claims.mtg.clone();
        let Ok(m) = self.meeting() else { return Ok(()) };
        let Some(main) = breakouts::main_of(&self.app, &m) else { return Ok(()) };
        let main_key = self.app.meetings.state_key(&main);
        let store = &self.app.store;
        let state = store.breakouts(&main_key).await.map_err(redis_failed)?;
        // In a room that is still open while the family has no state: Redis lost it (rooms
        // that close end first). The session stays, and the state is written back.
        if state.is_none() && here != main.name_any() && meetings::ended(&m).is_none() {
            return breakouts::restore(&self.app, &main, &here, &pid).await.map_err(|e| e.proto());
        }
        let home = (main.name_any(), main.metadata.uid.clone().unwrap_or_default());
        let (name, uid) = match state {
            // Rooms closed: home.
            None => home,
            // Every move writes where it goes (the main room too), so no entry means Redis
            // lost it: the session says where it is, and stays.
            Some(state) => match store.breakout_of(&main_key, &pid).await.map_err(redis_failed)? {
                Some(r) if r == main.name_any() => home,
                Some(r) => match state.rooms.into_iter().find(|x| x.meeting == r) {
                    Some(room) => (room.meeting, room.uid),
                    None => return Ok(()),
                },
                None => {
                    if here != main.name_any() {
                        let place = [(pid.clone(), here.clone())];
                        store.place_in_breakouts(&main_key, &place).await.map_err(redis_failed)?;
                    }
                    return Ok(());
                }
            },
        };
        if name == here {
            return Ok(());
        }
        match self.app.meetings.get(&name).filter(|m| m.metadata.uid.as_deref() == Some(uid.as_str())) {
            Some(to) if meetings::open(&to).is_ok() => self.switch_meeting(to).await,
            _ => Ok(()),
        }
    }

    /// Every [`PRESENCE_REFRESH`], and on a resync: writes presence, and the participant's
    /// record and membership back if Redis lost them (a flush, a failover, a restart);
    /// a rewritten participant is announced again. A user removed while this connection
    /// did not hear of it (the pub/sub was down) is closed now.
    async fn refresh(&mut self) -> Flow {
        let Some(j) = &self.joined else { return Flow::Continue };
        let app = self.app.clone();
        let store = &app.store;
        let trouble = |e: redis::RedisError| {
            app.metrics.redis_errors.inc();
            app.hub.note_trouble();
            tracing::warn!(error = %e, "presence refresh");
        };
        match store.holder(&j.key, &j.info.id).await {
            Ok(Some(holder)) if holder != self.connection => {
                // Another connection holds the participant now.
                if let Some(j) = self.joined.take() {
                    self.app.hub.unregister(&j.key, &j.info.id, &self.connection).await;
                }
                return Flow::Close;
            }
            Ok(Some(_)) => {}
            // Presence gone: lost by Redis, or the participant removed by a host.
            Ok(None) => match store.is_removed(&j.key, &j.claims.usr).await {
                Ok(true) => return self.removed_meanwhile().await,
                Ok(false) => {}
                Err(e) => {
                    trouble(e);
                    return Flow::Continue;
                }
            },
            Err(e) => {
                trouble(e);
                return Flow::Continue;
            }
        }
        let record = Record {
            info: j.info.clone(),
            user: j.claims.usr.clone(),
            media: j.media.as_ref().map(|m| MediaRecord {
                endpoint: m.endpoint.clone(),
                room: m.room.clone(),
                tracks: m.tracks.clone(),
            }),
            e2ee_public_key: j.e2ee_public_key.clone(),
        };
        match store.refresh(&j.key, &record, &self.connection).await {
            Ok(true) => {
                tracing::info!(participant = %record.info.id, "participant record written back (Redis had lost it)");
                if record.info.admitted {
                    let _ = self.announce(&record.info).await;
                }
            }
            Ok(false) => {}
            Err(e) => trouble(e),
        }
        // In a family with rooms open, or in a room: where it belongs may have changed
        // without this session hearing it.
        if self.in_breakout_family()
            && let Err(e) = self.follow_breakouts().await
        {
            tracing::info!(error = %e, "following breakout rooms");
            if self.joined.is_none() {
                return Flow::Close;
            }
        }
        Flow::Continue
    }

    /// Redis was unreachable or lost data: writes the participant back, then sends the
    /// client everyone it may see (`participant-update` each; what was published meanwhile
    /// was lost).
    async fn resync(&mut self) -> Flow {
        let flow = self.refresh().await;
        let Some(j) = self.joined.as_ref().filter(|j| j.info.admitted) else { return flow };
        if !matches!(flow, Flow::Continue) {
            return flow;
        }
        let name = j.claims.mtg.clone();
        if let Ok(all) = self.visible_participants().await {
            for p in all {
                let mut env = Envelope::new(types::PARTICIPANT_UPDATE, &p).from_peer(&p.id).room(&name);
                env.broadcast = true;
                self.push(env);
            }
        }
        Flow::Continue
    }

    /// The user was removed while this connection did not hear it: it leaves now.
    async fn removed_meanwhile(&mut self) -> Flow {
        let Some(j) = self.joined.take() else { return Flow::Continue };
        self.app.hub.unregister(&j.key, &j.info.id, &self.connection).await;
        if let Ok(Some(r)) = self.app.store.get(&j.key, &j.info.id).await
            && let Ok(true) = self.app.store.remove(&j.key, &j.info.id).await
        {
            self.app.leave_sfu(&r);
            let _ = self
                .app
                .store
                .publish(&j.key, &Bus::left(&j.claims.mtg, &j.info, "removed", j.e2ee_public_key.is_some()))
                .await;
        } else if let Some(media) = &j.media {
            let (sfu, room, pid) = (media.sfu.clone(), media.room.clone(), j.info.id.clone());
            tokio::spawn(async move { sfu.leave(&room, &pid).await });
        }
        tracing::info!(participant = %j.info.id, "removed while Redis was unreachable; closing");
        self.push(Envelope::new(types::REMOVE, serde_json::json!({ "reason": "a host removed you" })));
        Flow::Close
    }

    /// `leave`: gone for good (the session cannot resume).
    async fn leave(&mut self) {
        let Some(j) = self.joined.take() else { return };
        if let Some(media) = &j.media {
            let _ = media.sfu.leave(&media.room, &j.info.id).await;
        }
        self.app.hub.unregister(&j.key, &j.info.id, &self.connection).await;
        if let Ok(true) = self.app.store.remove(&j.key, &j.info.id).await {
            let _ = self
                .app
                .store
                .publish(&j.key, &Bus::left(&j.claims.mtg, &j.info, "left", j.e2ee_public_key.is_some()))
                .await;
        }
    }

    /// The socket closed without `leave`: the session may resume (on any replica)
    /// until presence expires; the SFU keeps its media meanwhile.
    async fn disconnected(&mut self) {
        if let Some(j) = self.joined.take() {
            self.app.hub.unregister(&j.key, &j.info.id, &self.connection).await;
            tracing::info!(participant = %j.info.id, "disconnected; may resume");
        }
    }
}

/// Long-polls the SFU's events for the participant and hands them to the client as
/// `media-event`s, recording how far it got so another replica can carry on.
async fn pump_events(
    app: Arc<App>,
    tx: mpsc::Sender<Outbound>,
    endpoint: String,
    room: String,
    key: String,
    participant: String,
    mut after: u64,
) {
    let sfu = app.sfu_poll(&endpoint);
    loop {
        let batch = match sfu.events(&room, &participant, after).await {
            Ok(b) => b,
            Err(switchboard_sfu_client::EventsError::Fatal(e)) => {
                tracing::info!(error = %e, "SFU events ended");
                return;
            }
            Err(switchboard_sfu_client::EventsError::Transient(e)) => {
                tracing::debug!(error = %e, "SFU events");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for e in batch {
            after = after.max(e.seq);
            let closed = matches!(e.event, switchboard_sfu_api::Event::Closed { .. });
            if tx.send(Outbound::Deliver(Envelope::new(types::MEDIA_EVENT, &e))).await.is_err() {
                return;
            }
            if closed {
                return;
            }
        }
        if let Err(e) = app.store.set_seq(&key, &participant, after).await {
            tracing::warn!(error = %e, "saving the event position");
        }
    }
}

/// The tracks as the SFU is told of them: muted as the participant is now (a host's
/// mute, mute on entry, its own), so no packet of a muted track is forwarded, not even
/// the first ones before signaling's mute call would land. What the client says of
/// `muted` does not count; the participant's state does.
fn declared_as(
    me: &ParticipantInfo,
    tracks: &[switchboard_sfu_api::TrackDescription],
) -> Vec<switchboard_sfu_api::TrackDescription> {
    tracks
        .iter()
        .map(|t| {
            let muted = (me.audio_muted && crate::app::mutes(MediaKind::Audio, t.source))
                || (me.video_muted && crate::app::mutes(MediaKind::Video, t.source));
            switchboard_sfu_api::TrackDescription { muted, ..t.clone() }
        })
        .collect()
}

pub fn now_ms() -> u64 {
    auth::now_unix() * 1000
}
