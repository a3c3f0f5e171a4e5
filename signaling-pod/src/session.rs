//! One WebSocket connection: authentication by session token, the waiting room,
//! moderation, chat, and media signaling relayed to the meeting's SFU.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures::{SinkExt as _, StreamExt as _};
use switchboard_crds::meeting::Meeting;
use switchboard_sfu_api::{
    ErrorCode as SfuCode, JoinRequest, MuteRequest, OfferRequest, ParticipantKind, RelayRequest, Source,
};
use switchboard_sfu_client::{MediaSignal as _, SfuApi};
use switchboard_signaling_proto::{
    AdmitPayload, ChatMessage, ClientMessage, Envelope, ErrorCode, JoinedPayload, MediaKind, MediaReconnectPayload,
    OfferPayload, Permission, ProtoError, Role, StateUpdate, parse_client, types,
};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::app::{App, CodeLabel, TypeLabel};
use crate::auth::{self, SessionClaims};
use crate::hub::{Local, Outbound};
use crate::meetings;
use crate::store::{Audience, Bus, BusWhat, MediaRecord, Record};

/// A connection that has not joined within this long is closed.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);
const PRESENCE_REFRESH: Duration = Duration::from_secs(10);

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

enum Flow {
    Continue,
    Close,
}

/// Per-connection message budget (token bucket).
struct RateLimit {
    tokens: f64,
    per_second: f64,
    burst: f64,
    at: Instant,
}

impl RateLimit {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Joined {
    claims: SessionClaims,
    /// Redis key of the meeting.
    key: String,
    info: switchboard_signaling_proto::ParticipantInfo,
    media: Option<MediaLink>,
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
    outbox: VecDeque<Envelope>,
    joined: Option<Joined>,
}

/// Serves one WebSocket until it closes.
pub async fn serve(app: Arc<App>, socket: WebSocket) {
    let connection =
        format!("{}/{}", app.cfg.replica, app.next_connection.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let span = tracing::info_span!("connection", id = %connection);
    app.metrics.connections.inc();
    run(app.clone(), socket, connection).instrument(span).await;
    app.metrics.connections.dec();
}

async fn run(app: Arc<App>, socket: WebSocket, connection: String) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Outbound>(512);
    let mut limit = RateLimit {
        tokens: app.cfg.rate_burst,
        per_second: app.cfg.rate_per_second,
        burst: app.cfg.rate_burst,
        at: Instant::now(),
    };
    let mut changes = app.meetings.changed.subscribe();
    let mut s = Session { app: app.clone(), connection, tx, outbox: VecDeque::new(), joined: None };
    let join_deadline = tokio::time::sleep(JOIN_DEADLINE);
    tokio::pin!(join_deadline);
    let mut refresh = tokio::time::interval(PRESENCE_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flow = tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    if limit.take() {
                        s.frame(text.as_bytes()).await
                    } else {
                        let message = format!("over {} messages per second; message dropped", app.cfg.rate_per_second);
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
            },
            Some(out) = rx.recv() => match out {
                Outbound::Deliver(env) => { s.outbox.push_back(env); Flow::Continue }
                Outbound::Command(c) => s.command(c).await,
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
            _ = &mut join_deadline, if s.joined.is_none() => {
                s.error(refuse(ErrorCode::Unauthenticated, "no `join` within 10 s; closing"));
                Flow::Close
            }
        };
        while let Some(env) = s.outbox.pop_front() {
            if sink.send(Message::Text(env.to_json().into())).await.is_err() {
                break;
            }
        }
        if let Flow::Close = flow {
            break;
        }
    }
    let _ = sink.send(Message::Close(None)).await;
    s.disconnected().await;
}

impl Session {
    fn push(&mut self, env: Envelope) {
        self.outbox.push_back(env);
    }

    fn error(&mut self, e: ProtoError) {
        self.app.metrics.errors.get_or_create(&CodeLabel { code: format!("{:?}", e.code) }).inc();
        tracing::debug!(code = ?e.code, reason = %e.reason, "refused");
        self.push(e.envelope());
    }

    fn reply(&mut self, id: Option<String>, type_: &str, payload: impl serde::Serialize) {
        self.push(Envelope::new(type_, payload).in_reply_to(id));
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
            .ok_or_else(|| refuse(ErrorCode::MeetingUnavailable, "the meeting no longer exists"))?;
        meetings::open(&m).map_err(|r| refuse(ErrorCode::MeetingUnavailable, r))?;
        Ok(m)
    }

    fn require(&self, permission: Permission) -> Result<(), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let m = self.meeting()?;
        if meetings::permissions(&m).allows(j.info.role, permission) {
            Ok(())
        } else {
            Err(refuse(ErrorCode::Forbidden, format!("a {:?} may not {}", j.info.role, permission_verb(permission))))
        }
    }

    async fn publish(&self, to: Audience, what: BusWhat) -> Result<(), ProtoError> {
        self.send_bus(Bus { to, what }).await
    }

    async fn send_bus(&self, bus: Bus) -> Result<(), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        self.app.store.publish(&j.key, &bus).await.map_err(|e| {
            self.app.metrics.redis_errors.inc();
            redis_failed(e)
        })
    }

    /// Broadcasts `type` from this participant to everyone in the meeting.
    async fn broadcast(&self, type_: &str, payload: impl serde::Serialize) -> Result<(), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        self.send_bus(Bus::deliver(Audience::All, &j.claims.mtg, &j.info.id, type_, payload)).await
    }

    async fn handle(&mut self, id: Option<String>, msg: ClientMessage) -> Result<Flow, ProtoError> {
        let Some(joined) = &self.joined else {
            return match msg {
                ClientMessage::Join(j) => self.join(id, &j.token).await.map(|_| Flow::Continue),
                ClientMessage::Ping => {
                    self.reply(id, types::PONG, serde_json::json!({}));
                    Ok(Flow::Continue)
                }
                _ => Err(refuse(ErrorCode::Unauthenticated, "send `join` with your session token first")),
            };
        };
        let admitted = joined.info.admitted;
        match msg {
            ClientMessage::Join(_) => Err(refuse(ErrorCode::InvalidPayload, "this connection has already joined")),
            ClientMessage::Ping => {
                self.reply(id, types::PONG, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Leave => {
                self.leave().await;
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Close)
            }
            _ if !admitted => Err(refuse(ErrorCode::NotAdmitted, "waiting for a host to admit you")),
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
            ClientMessage::IceRestart => {
                let (sfu, room, pid) = self.media_link()?;
                sfu.subscriber_restart(&room, &pid).await.map_err(media_failed)?;
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Chat(chat) => {
                self.require(Permission::SendChat)?;
                let j = self.joined.as_ref().expect("joined");
                let message = ChatMessage {
                    seq: 0,
                    from: j.info.id.clone(),
                    name: j.info.name.clone(),
                    text: chat.text,
                    at_ms: now_ms(),
                };
                let stored = self.app.store.append_chat(&j.key, message).await.map_err(redis_failed)?;
                self.broadcast(types::CHAT, &stored).await?;
                self.reply(id, types::OK, serde_json::json!({ "seq": stored.seq }));
                Ok(Flow::Continue)
            }
            ClientMessage::ParticipantUpdate(update) => {
                self.update_self(update).await?;
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Mute(m) => {
                let me = joined.info.id.clone();
                if m.participant_id == me {
                    let update = match m.kind {
                        MediaKind::Audio => StateUpdate { audio_muted: Some(true), ..Default::default() },
                        MediaKind::Video => StateUpdate { video_muted: Some(true), ..Default::default() },
                    };
                    self.update_self(update).await?;
                } else {
                    self.require(Permission::MuteOthers)?;
                    let key = joined.key.clone();
                    let mut target = self.record(&m.participant_id).await?;
                    match m.kind {
                        MediaKind::Audio => target.info.audio_muted = true,
                        MediaKind::Video => target.info.video_muted = true,
                    }
                    self.app.store.put(&key, &target).await.map_err(redis_failed)?;
                    self.publish(Audience::Peer(m.participant_id.clone()), BusWhat::ForceMute { kind: m.kind, by: me })
                        .await?;
                    self.broadcast(types::PARTICIPANT_UPDATE, &target.info).await?;
                }
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Admit(a) => {
                let admitted = self.admit(a).await?;
                self.reply(id, types::OK, serde_json::json!({ "admitted": admitted }));
                Ok(Flow::Continue)
            }
            ClientMessage::Remove(r) => {
                self.require(Permission::RemoveParticipant)?;
                let key = joined.key.clone();
                let me = joined.info.id.clone();
                let target = self.record(&r.participant_id).await?;
                if target.info.role == Role::Host || r.participant_id == me {
                    return Err(refuse(
                        ErrorCode::Forbidden,
                        "the host cannot be removed, and nobody removes themselves (send `leave`)",
                    ));
                }
                self.app.store.mark_removed(&key, &r.participant_id).await.map_err(redis_failed)?;
                let gone = self.app.store.remove(&key, &r.participant_id).await.map_err(redis_failed)?;
                self.app.leave_sfu(&target);
                self.publish(Audience::Peer(r.participant_id.clone()), BusWhat::Removed { by: me }).await?;
                if gone {
                    self.send_bus(Bus::left(&joined.claims.mtg, &r.participant_id, "removed")).await?;
                }
                self.reply(id, types::OK, serde_json::json!({}));
                Ok(Flow::Continue)
            }
            ClientMessage::Reaction(r) => {
                self.broadcast(types::REACTION, &r).await?;
                Ok(Flow::Continue)
            }
            ClientMessage::HandRaise(h) => {
                self.broadcast(types::HAND_RAISE, &h).await?;
                Ok(Flow::Continue)
            }
            ClientMessage::StartRecording => {
                self.require(Permission::StartRecording)?;
                let m = self.meeting()?;
                let name = crate::rest::start_recording(&self.app, &m)
                    .await
                    .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
                self.broadcast(types::RECORDING, serde_json::json!({ "recordingJob": name, "state": "started" }))
                    .await?;
                self.reply(id, types::RECORDING, serde_json::json!({ "recordingJob": name }));
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

    async fn join(&mut self, id: Option<String>, token: &str) -> Result<(), ProtoError> {
        let claims = self.app.keys.session(token).map_err(|e| match e {
            auth::AuthError::Expired => {
                refuse(ErrorCode::Unauthenticated, "the session token has expired; join again through the REST API")
            }
            other => refuse(ErrorCode::Unauthenticated, format!("the session token was refused: {other}")),
        })?;
        let m =
            self.app.meetings.get(&claims.mtg).ok_or_else(|| {
                refuse(ErrorCode::MeetingUnavailable, format!("meeting `{}` does not exist", claims.mtg))
            })?;
        meetings::open(&m).map_err(|r| refuse(ErrorCode::MeetingUnavailable, r))?;
        let key = self.app.meetings.key(&claims.mtg);
        let store = &self.app.store;
        if store.is_removed(&key, &claims.sub).await.map_err(redis_failed)? {
            return Err(refuse(ErrorCode::Removed, "a host removed you from this meeting"));
        }
        let existing = store.get(&key, &claims.sub).await.map_err(redis_failed)?;
        let resumed = existing.is_some();
        let record = existing.unwrap_or_else(|| Record {
            info: switchboard_signaling_proto::ParticipantInfo {
                id: claims.sub.clone(),
                name: claims.name.clone(),
                role: claims.role,
                admitted: !m.spec.waiting_room || claims.role.skips_waiting_room(),
                audio_muted: m.spec.mute_on_entry && !claims.role.admits(),
                video_muted: false,
                screen_sharing: false,
            },
            user: claims.usr.clone(),
            media: None,
        });
        store.put(&key, &record).await.map_err(redis_failed)?;
        store.touch(&key, &claims.sub, &self.connection).await.map_err(redis_failed)?;
        let local = Local { connection: self.connection.clone(), tx: self.tx.clone(), role: claims.role };
        let replaced = self
            .app
            .hub
            .register(&claims.mtg, &claims.sub, local)
            .await
            .map_err(|e| refuse(ErrorCode::Internal, e.to_string()))?;
        self.app.watched.lock().unwrap().insert(claims.mtg.clone());
        let takeover = BusWhat::TakenOver { connection: self.connection.clone() };
        if let Some(old) = replaced {
            let _ = old.tx.try_send(Outbound::Command(takeover.clone()));
        }
        self.joined = Some(Joined { claims: claims.clone(), key: key.clone(), info: record.info.clone(), media: None });
        // A connection of the same session on another replica closes.
        self.publish(Audience::Peer(claims.sub.clone()), takeover).await?;
        if resumed {
            self.app.metrics.resumes.inc();
            if let Some(media) = &record.media {
                self.resume_media(&m, media).await;
            }
        } else {
            self.app.metrics.joins.inc();
        }
        let participants = self.visible_participants().await?;
        let permissions = meetings::permissions(&m).of(claims.role);
        self.reply(
            id,
            types::JOINED,
            JoinedPayload {
                participant: record.info.clone(),
                title: m.spec.title.clone(),
                permissions,
                participants,
                resumed,
            },
        );
        if record.info.admitted {
            self.broadcast(types::PARTICIPANT_UPDATE, &record.info).await?;
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
        Ok(())
    }

    /// Everyone admitted, plus the waiting room for those who run it.
    async fn visible_participants(&self) -> Result<Vec<switchboard_signaling_proto::ParticipantInfo>, ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let all = self.app.store.all(&j.key).await.map_err(redis_failed)?;
        let admits = j.info.role.admits();
        let mut out: Vec<_> = all.into_iter().map(|r| r.info).filter(|i| i.admitted || admits).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn admit(&mut self, a: AdmitPayload) -> Result<Vec<String>, ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        if !j.info.role.admits() {
            return Err(refuse(
                ErrorCode::Forbidden,
                format!("a {:?} may not admit anyone; hosts and co-hosts do", j.info.role),
            ));
        }
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
            self.broadcast(types::PARTICIPANT_UPDATE, &t.info).await?;
            admitted.push(t.info.id);
        }
        Ok(admitted)
    }

    async fn update_self(&mut self, update: StateUpdate) -> Result<(), ProtoError> {
        if update.screen_sharing == Some(true) {
            self.require(Permission::ShareScreen)?;
        }
        let j = self.joined.as_mut().expect("joined");
        let mut record = self.app.store.get(&j.key, &j.info.id).await.map_err(redis_failed)?.unwrap_or_default();
        let before = record.info.clone();
        let info = &mut record.info;
        if let Some(v) = update.audio_muted {
            info.audio_muted = v;
        }
        if let Some(v) = update.video_muted {
            info.video_muted = v;
        }
        if let Some(v) = update.screen_sharing {
            info.screen_sharing = v;
        }
        if let Some(v) = update.name {
            info.name = v;
        }
        if record.info.id.is_empty() {
            return Err(refuse(ErrorCode::UnknownParticipant, "your participant record is gone; join again"));
        }
        j.info = record.info.clone();
        self.app.store.put(&j.key, &record).await.map_err(redis_failed)?;
        if before.audio_muted != record.info.audio_muted {
            self.mute_tracks(MediaKind::Audio, record.info.audio_muted);
        }
        if before.video_muted != record.info.video_muted {
            self.mute_tracks(MediaKind::Video, record.info.video_muted);
        }
        if record.info.admitted {
            self.broadcast(types::PARTICIPANT_UPDATE, &record.info).await?;
        }
        Ok(())
    }

    /// Mutes or unmutes this participant's tracks of `kind` at the SFU, so a mute holds
    /// whatever the client does. Tracks exist on the SFU once their first packet
    /// arrived, so an early mute is retried for a while.
    fn mute_tracks(&self, kind: MediaKind, muted: bool) {
        let Some(j) = &self.joined else { return };
        let Some(media) = &j.media else { return };
        let tracks: Vec<String> = media
            .tracks
            .iter()
            .filter(|t| match kind {
                MediaKind::Audio => matches!(t.source, Source::Microphone | Source::ScreenShareAudio),
                MediaKind::Video => matches!(t.source, Source::Camera | Source::ScreenShare),
            })
            .map(|t| t.id.clone())
            .collect();
        let (sfu, room, pid) = (media.sfu.clone(), media.room.clone(), j.info.id.clone());
        tokio::spawn(async move {
            for track in tracks {
                let url = sfu.url(switchboard_sfu_api::paths::TRACK, &room, &pid, &track);
                for _ in 0..40 {
                    match sfu.put::<_, serde_json::Value>(&url, &MuteRequest { muted }).await {
                        Err(e) if e.code() == Some(SfuCode::UnknownTrack) => {
                            tokio::time::sleep(Duration::from_millis(250)).await
                        }
                        Err(e) => {
                            tracing::warn!(%track, error = %e, "mute at the SFU");
                            break;
                        }
                        Ok(_) => break,
                    }
                }
            }
        });
    }

    fn media_link(&self) -> Result<(SfuApi, String, String), ProtoError> {
        let j = self.joined.as_ref().expect("joined");
        let m = j
            .media
            .as_ref()
            .ok_or_else(|| refuse(ErrorCode::InvalidPayload, "no media session yet: send an `offer` first"))?;
        Ok((m.sfu.clone(), m.room.clone(), j.info.id.clone()))
    }

    async fn offer(&mut self, id: Option<String>, offer: OfferPayload) -> Result<(), ProtoError> {
        let m = self.meeting()?;
        let j = self.joined.as_ref().expect("joined");
        let role = j.info.role;
        if !role.publishes() && (!offer.tracks.is_empty() || offer.sdp.as_deref().is_some_and(sends_media)) {
            return Err(refuse(ErrorCode::Forbidden, "viewers receive only: offer no tracks (or send no offer sdp)"));
        }
        if offer.tracks.iter().any(|t| matches!(t.source, Source::ScreenShare | Source::ScreenShareAudio)) {
            self.require(Permission::ShareScreen)?;
        }
        if let Some(media) = &self.joined.as_ref().expect("joined").media {
            let sdp = offer.sdp.ok_or_else(|| refuse(ErrorCode::InvalidPayload, "a renegotiation needs an sdp"))?;
            let answer = media
                .sfu
                .publisher_offer(&media.room, &j.info.id, OfferRequest { sdp, tracks: offer.tracks.clone() })
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
            self.reply(id, types::ANSWER, serde_json::json!({ "sdp": answer.answer }));
            return Ok(());
        }
        let slot = self.app.store.next_slot(&j.key).await.map_err(redis_failed)?;
        let target = meetings::choose_sfu(&m, slot).ok_or_else(|| {
            refuse(ErrorCode::MeetingUnavailable, "the meeting has no SFU assigned yet; try again shortly")
        })?;
        let room = self.app.meetings.key(&m.metadata.name.clone().unwrap_or_default());
        self.ensure_relay(&m, &target, &room).await?;
        let sfu = self.app.sfu(&target.endpoint);
        let pid = j.info.id.clone();
        let request = JoinRequest {
            participant_id: pid.clone(),
            kind: ParticipantKind::Client,
            auto_subscribe: true,
            offer: offer.sdp.clone(),
            tracks: offer.tracks.clone(),
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
        let info = self.joined.as_ref().expect("joined").info.clone();
        if info.audio_muted {
            self.mute_tracks(MediaKind::Audio, true);
        }
        if info.video_muted {
            self.mute_tracks(MediaKind::Video, true);
        }
        self.reply(id, types::ANSWER, serde_json::json!({ "sdp": answer.answer }));
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
        let Some(j) = self.joined.as_mut() else { return };
        if let Some(media) = j.media.take() {
            let (sfu, room, pid) = (media.sfu.clone(), media.room.clone(), j.info.id.clone());
            tokio::spawn(async move { sfu.leave(&room, &pid).await });
        }
        let _ = self.save_media(Vec::new()).await;
        self.app.metrics.migrations.inc();
        self.push(Envelope::new(types::MEDIA_RECONNECT, MediaReconnectPayload { reason: reason.into(), generation }));
    }

    async fn meeting_changed(&mut self, name: &str) -> Flow {
        let Some(j) = &self.joined else { return Flow::Continue };
        if j.claims.mtg != name {
            return Flow::Continue;
        }
        let m = match self.app.meetings.get(name) {
            Some(m) => m,
            None => {
                self.error(refuse(ErrorCode::MeetingUnavailable, "the meeting was deleted"));
                return Flow::Close;
            }
        };
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
            BusWhat::Deliver(env) => self.push(env),
            BusWhat::Admitted => {
                j.info.admitted = true;
                let participants = self.visible_participants().await.unwrap_or_default();
                self.push(Envelope::new(types::ADMITTED, serde_json::json!({ "participants": participants })));
            }
            BusWhat::ForceMute { kind, by } => {
                match kind {
                    MediaKind::Audio => j.info.audio_muted = true,
                    MediaKind::Video => j.info.video_muted = true,
                }
                let me = j.info.id.clone();
                self.mute_tracks(kind, true);
                self.push(
                    Envelope::new(types::MUTE, serde_json::json!({ "participantId": me, "kind": kind })).from_peer(&by),
                );
            }
            BusWhat::Removed { by } => {
                self.push(
                    Envelope::new(types::REMOVE, serde_json::json!({ "reason": "a host removed you" })).from_peer(&by),
                );
                // The record is gone already; drop the media and close.
                if let Some(j) = self.joined.as_mut() {
                    j.media = None;
                }
                self.joined = None;
                return Flow::Close;
            }
            BusWhat::TakenOver { connection } => {
                if connection != self.connection {
                    self.push(
                        ProtoError::new(ErrorCode::Unauthenticated, "this session continued on another connection")
                            .envelope(),
                    );
                    // The new connection owns the participant now: nothing to clean up.
                    self.joined = None;
                    return Flow::Close;
                }
            }
        }
        Flow::Continue
    }

    async fn refresh(&mut self) -> Flow {
        let Some(j) = &self.joined else { return Flow::Continue };
        let store = &self.app.store;
        match store.holder(&j.key, &j.info.id).await {
            Ok(Some(holder)) if holder != self.connection => {
                self.joined = None;
                return Flow::Close;
            }
            Ok(_) => {
                if let Err(e) = store.touch(&j.key, &j.info.id, &self.connection).await {
                    tracing::warn!(error = %e, "presence refresh");
                }
            }
            Err(e) => tracing::warn!(error = %e, "presence refresh"),
        }
        Flow::Continue
    }

    /// `leave`: gone for good (the session cannot resume).
    async fn leave(&mut self) {
        let Some(j) = self.joined.take() else { return };
        if let Some(media) = &j.media {
            let _ = media.sfu.leave(&media.room, &j.info.id).await;
        }
        self.app.hub.unregister(&j.claims.mtg, &j.info.id, &self.connection).await;
        if let Ok(true) = self.app.store.remove(&j.key, &j.info.id).await {
            let _ = self.app.store.publish(&j.key, &Bus::left(&j.claims.mtg, &j.info.id, "left")).await;
        }
    }

    /// The socket closed without `leave`: the session may resume (on any replica)
    /// until presence expires; the SFU keeps its media meanwhile.
    async fn disconnected(&mut self) {
        if let Some(j) = self.joined.take() {
            self.app.hub.unregister(&j.claims.mtg, &j.info.id, &self.connection).await;
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

/// Whether an SDP offers to send audio or video (a viewer's may not).
fn sends_media(sdp: &str) -> bool {
    let mut in_media = false;
    for line in sdp.lines() {
        if line.starts_with("m=audio") || line.starts_with("m=video") {
            in_media = true;
        } else if line.starts_with("m=") {
            in_media = false;
        } else if in_media && (line.trim() == "a=sendrecv" || line.trim() == "a=sendonly") {
            return true;
        }
    }
    false
}

fn permission_verb(p: Permission) -> &'static str {
    match p {
        Permission::MuteOthers => "mute others",
        Permission::RemoveParticipant => "remove participants",
        Permission::StartRecording => "start a recording",
        Permission::ShareScreen => "share their screen",
        Permission::SendChat => "send chat messages",
    }
}

pub fn now_ms() -> u64 {
    auth::now_unix() * 1000
}

#[cfg(test)]
mod tests {
    #[test]
    fn viewers_offers_that_send_are_spotted() {
        let recv =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n";
        assert!(!super::sends_media(recv));
        let send =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\n";
        assert!(super::sends_media(send));
        let data = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sendrecv\r\n";
        assert!(!super::sends_media(data));
    }
}
