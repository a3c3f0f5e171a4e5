//! What every request and connection shares.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use switchboard_sfu_api::{ErrorCode as SfuCode, MuteRequest, RoomStatus, Source};
use switchboard_sfu_client::SfuApi;
use switchboard_signaling_proto::MediaKind;

use crate::auth::{SessionKeys, UserVerifier};
use crate::config::Config;
use crate::hub::Hub;
use crate::meetings::Directory;
use crate::store::Store;

pub struct App {
    pub cfg: Config,
    pub public_url: String,
    /// Checks user tokens (REST).
    pub users: UserVerifier,
    /// Signs and checks session tokens (WebSocket).
    pub sessions: SessionKeys,
    pub store: Store,
    pub meetings: Directory,
    pub hub: Arc<Hub>,
    pub kube: kube::Client,
    pub metrics: Metrics,
    /// Meetings this replica reports on and reaps (kept until they are empty): their
    /// Redis key → their name.
    pub watched: Mutex<HashMap<String, String>>,
    /// Keys of the main meetings with breakout rooms open (kept by `breakouts::run`):
    /// their sessions compare where they are with where they belong.
    pub breakouts_open: Mutex<HashSet<String>>,
    /// (edge endpoint, room) pairs already relayed from their parent.
    pub relayed: Mutex<HashSet<(String, String)>>,
    pub next_connection: AtomicU64,
    /// Connection caps, accept rate, creation quota, drain (`limits.rs`).
    pub limits: crate::limits::Limits,
    /// The newest mute wish per participant and kind, applied at the SFU in order.
    mute_wishes: Arc<MuteWishes>,
    sfu_http: reqwest::Client,
    sfu_poll_http: reqwest::Client,
}

/// Everything [`App::new`] is built from.
pub struct Parts {
    pub cfg: Config,
    pub public_url: String,
    pub users: UserVerifier,
    pub sessions: SessionKeys,
    pub store: Store,
    pub meetings: Directory,
    pub hub: Arc<Hub>,
    pub kube: kube::Client,
}

impl App {
    pub fn new(parts: Parts) -> Arc<Self> {
        let Parts { cfg, public_url, users, sessions, store, meetings, hub, kube } = parts;
        let metrics = Metrics::default();
        let cfg_limits = cfg.limits.clone();
        Arc::new(Self {
            users,
            sessions,
            cfg,
            public_url,
            store,
            meetings,
            hub,
            kube,
            metrics,
            watched: Mutex::default(),
            breakouts_open: Mutex::default(),
            relayed: Mutex::default(),
            next_connection: AtomicU64::new(1),
            limits: crate::limits::Limits::new(cfg_limits),
            mute_wishes: Arc::default(),
            sfu_http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client"),
            // Event long-polls wait up to 10 s on the SFU.
            sfu_poll_http: reqwest::Client::builder().timeout(Duration::from_secs(15)).build().expect("http client"),
        })
    }

    /// A client of an SFU's internal API for short calls.
    pub fn sfu(&self, endpoint: &str) -> SfuApi {
        SfuApi::with_client(self.sfu_http.clone(), endpoint)
    }

    /// A client for an SFU's event long-poll.
    pub fn sfu_poll(&self, endpoint: &str) -> SfuApi {
        SfuApi::with_client(self.sfu_poll_http.clone(), endpoint)
    }

    /// Takes a participant off the SFU its record names, in the background (the SFU may be gone).
    pub fn leave_sfu(&self, record: &crate::store::Record) {
        use switchboard_sfu_client::MediaSignal as _;
        if let Some(media) = &record.media {
            let (sfu, room, pid) = (self.sfu(&media.endpoint), media.room.clone(), record.info.id.clone());
            tokio::spawn(async move { sfu.leave(&room, &pid).await });
        }
    }

    /// Unpublishes a participant's screen-share tracks (video and audio) on the SFU its
    /// media is on: those it declared and any other the SFU holds of it with a screen
    /// source. In the background; the SFU may be gone, and a track never sent is not there.
    pub fn unpublish_screen_at_sfu(&self, participant: &str, media: &crate::store::MediaRecord) {
        let screen = |s: Source| matches!(s, Source::ScreenShare | Source::ScreenShareAudio);
        let declared: HashSet<String> =
            media.tracks.iter().filter(|t| screen(t.source)).map(|t| t.id.clone()).collect();
        let (sfu, room, pid) = (self.sfu(&media.endpoint), media.room.clone(), participant.to_owned());
        tokio::spawn(async move {
            let status_url = sfu.url(switchboard_sfu_api::paths::ROOM, &room, "", "");
            let held: HashSet<String> = match sfu.get::<RoomStatus>(&status_url).await {
                Ok(s) => {
                    s.tracks.into_iter().filter(|t| t.participant == pid && screen(t.source)).map(|t| t.id).collect()
                }
                Err(_) => HashSet::new(),
            };
            for track in declared.union(&held) {
                let url = sfu.url(switchboard_sfu_api::paths::TRACK, &room, &pid, track);
                match sfu.delete::<serde_json::Value>(&url).await {
                    Err(e) if e.code() == Some(SfuCode::UnknownTrack) => {}
                    Err(e) => tracing::warn!(%url, error = %e, "unpublish a screen share at the SFU"),
                    Ok(_) => {}
                }
            }
        });
    }

    /// Mutes (or unmutes) a participant's tracks of `kind` on the SFU its media is on:
    /// the tracks it declared, and any other the SFU holds of it. Tracks exist on the
    /// SFU once their first packet arrived, so a mute of a declared track the SFU does
    /// not hold yet is retried for a while. In the background; the SFU may be gone.
    /// The last wish wins: calls for one participant and kind are applied one at a time,
    /// each applying the newest wish ([`MuteWishes`]).
    pub fn mute_at_sfu(&self, participant: &str, media: &crate::store::MediaRecord, kind: MediaKind, muted: bool) {
        let of_kind = |s: Source| mutes(kind, s);
        let declared: HashSet<String> =
            media.tracks.iter().filter(|t| of_kind(t.source)).map(|t| t.id.clone()).collect();
        let (sfu, room, pid) = (self.sfu(&media.endpoint), media.room.clone(), participant.to_owned());
        let key = MuteKey {
            endpoint: media.endpoint.clone(),
            room: room.clone(),
            participant: pid.clone(),
            audio: kind == MediaKind::Audio,
        };
        let wishes = self.mute_wishes.clone();
        let (generation, turn) = wishes.wish(&key, muted);
        tokio::spawn(async move {
            let _turn = turn.lock().await;
            // A newer wish's own task applies it (or already did).
            let Some(muted) = wishes.newest(&key, generation) else { return };
            let status_url = sfu.url(switchboard_sfu_api::paths::ROOM, &room, "", "");
            let held: HashSet<String> = match sfu.get::<RoomStatus>(&status_url).await {
                Ok(s) => s
                    .tracks
                    .into_iter()
                    .filter(|t| t.participant == pid && mutes(kind, t.source))
                    .map(|t| t.id)
                    .collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "room status for a mute");
                    HashSet::new()
                }
            };
            // A mute waits up to a minute for a declared track's first packet, unless a
            // newer wish comes first.
            let tries = if muted { 240 } else { 20 };
            let calls = declared.union(&held).map(|track| {
                let url = sfu.url(switchboard_sfu_api::paths::TRACK, &room, &pid, track);
                let (sfu, wishes, key) = (&sfu, &wishes, &key);
                async move {
                    for _ in 0..tries {
                        match sfu.put::<_, serde_json::Value>(&url, &MuteRequest { muted }).await {
                            Err(e) if e.code() == Some(SfuCode::UnknownTrack) => {
                                if wishes.newest(key, generation).is_none() {
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(250)).await
                            }
                            Err(e) => {
                                tracing::warn!(%url, error = %e, "mute at the SFU");
                                return;
                            }
                            Ok(_) => return,
                        }
                    }
                }
            });
            futures::future::join_all(calls).await;
            wishes.done(&key, generation);
        });
    }

    /// TURN servers with credentials for `participant`, valid for the configured TTL from
    /// now (none without TURN). Handed out on the REST join, every WebSocket join and
    /// resume, every `media-reconnect`, and on the client's `ice-servers` request, so a
    /// long meeting never runs on expired credentials.
    pub fn ice_servers(&self, participant: &str) -> Vec<switchboard_signaling_proto::rest::IceServer> {
        let Some(turn) = &self.cfg.turn else { return Vec::new() };
        let expires = crate::auth::now_unix() + turn.ttl.as_secs();
        let (username, credential) = crate::auth::turn_credentials(&turn.secret, participant, expires);
        vec![switchboard_signaling_proto::rest::IceServer {
            urls: turn.urls.clone(),
            username: Some(username),
            credential: Some(credential),
        }]
    }

    pub fn ws_url(&self) -> String {
        let base = self.public_url.replacen("https://", "wss://", 1).replacen("http://", "ws://", 1);
        format!("{base}/ws")
    }
}

/// Whose mute a wish is about: one SFU room's participant, audio or video.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MuteKey {
    pub endpoint: String,
    pub room: String,
    pub participant: String,
    pub audio: bool,
}

/// Mutes reach the SFU in the background, and a participant can turn its microphone off
/// and on faster than the SFU answers; were each call a free task, "off" could land after
/// "on". So each [`MuteKey`] has one slot: a wish bumps its generation and takes a turn
/// (a lock); the task holding the turn applies the newest wish only if it is its own, and
/// stops waiting for a track as soon as a newer wish arrives. A slot lives while a wish
/// is unapplied, so the map holds at most the participants muting right now.
#[derive(Default)]
pub struct MuteWishes {
    slots: Mutex<HashMap<MuteKey, MuteSlot>>,
    /// Generations count across slots, so a task of a removed slot never matches a new one.
    next: AtomicU64,
}

struct MuteSlot {
    muted: bool,
    generation: u64,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl MuteWishes {
    /// Records a wish; returns its generation and the key's turn to wait for.
    pub fn wish(&self, key: &MuteKey, muted: bool) -> (u64, Arc<tokio::sync::Mutex<()>>) {
        let generation = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut slots = self.slots.lock().expect("mute wishes");
        let slot = slots.entry(key.clone()).or_insert_with(|| MuteSlot { muted, generation, turn: Arc::default() });
        slot.muted = muted;
        slot.generation = generation;
        (generation, slot.turn.clone())
    }

    /// The wish to apply if `generation` is still the newest, else `None`.
    pub fn newest(&self, key: &MuteKey, generation: u64) -> Option<bool> {
        let slots = self.slots.lock().expect("mute wishes");
        slots.get(key).filter(|s| s.generation == generation).map(|s| s.muted)
    }

    /// `generation` was applied (or given up): the slot goes if nothing newer came.
    pub fn done(&self, key: &MuteKey, generation: u64) {
        let mut slots = self.slots.lock().expect("mute wishes");
        if slots.get(key).is_some_and(|s| s.generation == generation) {
            slots.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.slots.lock().expect("mute wishes").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a mute of `kind` covers a track of `source`: the microphone and shared audio
/// for audio; only the camera for video (a presenter with the camera off still shares
/// the screen; screen sharing is stopped, not muted).
pub fn mutes(kind: MediaKind, source: Source) -> bool {
    match kind {
        MediaKind::Audio => matches!(source, Source::Microphone | Source::ScreenShareAudio),
        MediaKind::Video => source == Source::Camera,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

#[derive(Default, Clone)]
pub struct Metrics {
    pub connections: Gauge,
    pub messages: Family<TypeLabel, Counter>,
    pub errors: Family<CodeLabel, Counter>,
    pub joins: Counter,
    pub resumes: Counter,
    pub migrations: Counter,
    pub redis_errors: Counter,
    pub breakout_rooms_opened: Counter,
    pub breakout_moves: Counter,
}

impl Metrics {
    pub fn registry(&self, hub: &Hub) -> Registry {
        let mut r = Registry::with_prefix("switchboard_signaling");
        switchboard_metrics_exposition::build_info(&mut r, env!("CARGO_PKG_VERSION"));
        r.register("connections", "Open WebSocket connections", self.connections.clone());
        r.register("messages", "Client messages handled, by type", self.messages.clone());
        r.register("errors", "Error replies sent, by code", self.errors.clone());
        r.register("joins", "Participants that joined a meeting", self.joins.clone());
        r.register("resumes", "Sessions resumed on a new connection", self.resumes.clone());
        r.register("media_migrations", "Clients told to reconnect media to a new SFU", self.migrations.clone());
        r.register("redis_errors", "Failed Redis operations", self.redis_errors.clone());
        r.register("breakout_rooms_opened", "Breakout rooms opened", self.breakout_rooms_opened.clone());
        r.register(
            "breakout_moves",
            "Sessions moved into, between or out of breakout rooms",
            self.breakout_moves.clone(),
        );
        r.register("dropped_messages", "Messages dropped for connections that could not keep up", hub.dropped.clone());
        r.register(
            "redis_pubsub_reconnects",
            "Times the Redis pub/sub connection was made again",
            hub.reconnects.clone(),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(participant: &str) -> MuteKey {
        MuteKey { endpoint: "http://sfu".into(), room: "r".into(), participant: participant.into(), audio: true }
    }

    #[test]
    fn only_the_newest_wish_is_applied_and_its_slot_then_goes() {
        let wishes = MuteWishes::default();
        let (off, _) = wishes.wish(&key("pia"), true);
        let (on, _) = wishes.wish(&key("pia"), false);
        assert_eq!(wishes.newest(&key("pia"), off), None, "the older wish is not applied");
        assert_eq!(wishes.newest(&key("pia"), on), Some(false));
        wishes.done(&key("pia"), off);
        assert_eq!(wishes.len(), 1, "an older wish does not clear a newer one");
        wishes.done(&key("pia"), on);
        assert!(wishes.is_empty());
    }

    #[test]
    fn a_task_of_a_removed_slot_never_matches_a_new_one() {
        let wishes = MuteWishes::default();
        let (first, first_turn) = wishes.wish(&key("pia"), true);
        let (second, _) = wishes.wish(&key("pia"), false);
        wishes.done(&key("pia"), second);
        let (third, third_turn) = wishes.wish(&key("pia"), true);
        assert_eq!(wishes.newest(&key("pia"), first), None);
        assert_eq!(wishes.newest(&key("pia"), third), Some(true));
        assert!(!Arc::ptr_eq(&first_turn, &third_turn));
    }

    #[tokio::test]
    async fn wishes_for_one_participant_take_turns_and_others_do_not_wait() {
        let wishes = MuteWishes::default();
        let (_, turn) = wishes.wish(&key("pia"), true);
        let (_, same) = wishes.wish(&key("pia"), false);
        let (_, other) = wishes.wish(&key("mal"), true);
        let _held = turn.lock().await;
        assert!(same.try_lock().is_err(), "pia's next wish waits for the turn");
        assert!(other.try_lock().is_ok(), "mal's wish does not");
    }
}
