//! Shared state in Redis, so any replica can serve any participant:
//!
//! | key (`{m}` = `namespace/meeting/uid`) | type | holds |
//! |---|---|---|
//! | `sb:{m}:p` | hash | participant id → [`Record`] (JSON) |
//! | `sb:{m}:alive:{pid}` | string, TTL | presence, refreshed by the replica holding the connection |
//! | `sb:{m}:seq` | hash | participant id → last SFU event delivered (resume on another replica) |
//! | `sb:{m}:removed` | set | users removed by a host (no new join, no resumed session) |
//! | `sb:{m}:u:{user}` | set | the user's admitted participants (membership for the REST reads) |
//! | `sb:{m}:chat` | sorted set | chat messages scored by sequence number (a direct message with the two users who may read it) |
//! | `sb:{m}:chatseq` | counter | the last chat sequence number |
//! | `sb:{m}:slot` | counter | join order, to spread a cascaded meeting over its SFUs |
//! | `sb:{m}:recording` | string | the RecordingJob recording the meeting now |
//! | `sb:{m}:reclock` | string, TTL | held while a replica checks and starts a recording |
//! | `sb:{m}:rec:{job}:{state}` | string | a recording's start or stop was announced (once) |
//! | `sb:{m}:ev` | pub/sub channel | [`Bus`] messages for the meeting |
//! | `sb:{m}:bo` | string | the main meeting's open breakout rooms ([`BreakoutState`], JSON) |
//! | `sb:{m}:bo:where` | hash | participant id → the Meeting it belongs in (a room, or the main meeting once moved back; no entry: never moved) |
//! | `sb:{m}:bo:gen` | counter | breakout openings, naming the rooms |
//! | `sb:{m}:bo:lock` | string, TTL | held by the replica opening, closing or starting the countdown |
//! | `sb:{m}:bo:opened` | string, TTL | rooms were opened lately (one opening per [`crate::breakouts::OPEN_EVERY`]) |
//! | `sb:{m}:help:{pid}` | string, TTL | the participant asked for help lately |
//! | `sb:{m}:bo:{g}:closed` | string, TTL | opening `g`'s rooms were closed (not to be restored) |
//! | `sb:breakouts` | set | main meetings with rooms open (the timers every replica drives) |
//! | `sb:session-key` | string | the session-token key, when `SIGNALING_SESSION_KEY` is unset |
//! | `sb:epoch` | string | a random value set once; a replica that sees it gone or changed knows Redis lost data |
//!
//! The meeting's UID is part of its key: a meeting deleted and created again under the
//! same name starts from nothing (no chat, no removals, no participants of the old one).
//! Everything of a meeting is deleted when it ends; until then writes refresh a long
//! expiry so a meeting nobody ends cannot leak keys for ever.
//!
//! ## When Redis loses data
//!
//! A `FLUSHALL`, a restart without persistence or a failover to a replica that missed
//! writes must not end live meetings. What the replicas hold themselves is written back:
//!
//! * **Participants with a live connection**: every refresh (each connection every 10 s,
//!   and at once when a replica notices the loss through `sb:epoch` or reconnects its
//!   pub/sub) writes presence, and the [`Record`] and the user's membership entry when
//!   they are missing ([`Store::refresh`]; a record present in Redis is newer than the
//!   connection's copy and is left alone). A participant whose record was rewritten is
//!   announced again (`participant-update`).
//! * **Removed users** (`sb:{m}:removed`): each replica keeps the removed set of the
//!   meetings it reports on in memory — what it marked, read, or heard on the bus — and
//!   adds it back every report (2 s, [`Store::sync_removed`]); a removed user's join is
//!   refused from that memory too. A replica started after the loss that never served the
//!   meeting learns the set from Redis once a serving replica has written it back.
//!
//! Lost for good: chat history and its sequence numbers (they start again at 1), the
//! SFU event positions (a session resuming on another replica replays its events), the
//! join-order counter, the recording markers, the participants of connections that ended
//! during the outage (they are not announced as gone), and `sb:session-key` (set
//! `SIGNALING_SESSION_KEY`: a replica started after the loss signs with a new shared key).
//! While Redis is unreachable, nobody is reaped; see `reporter::REAP_GRACE`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use switchboard_signaling_proto::{ChatMessage, Envelope, MediaKind, ParticipantInfo, Role, TrackDescription};

/// How long presence outlives the last refresh: a client whose replica died has this
/// long to reconnect to another before it counts as gone.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);
/// The expiry refreshed on a meeting's keys while it is in use.
const MEETING_KEYS_TTL: u64 = 48 * 3600;

/// A participant, as every replica sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub info: ParticipantInfo,
    pub user: String,
    /// The SFU the participant's media is on, once it sent an offer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRecord>,
    /// In an E2EE meeting, the public key the participant announced (`e2ee-hello`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2ee_public_key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MediaRecord {
    pub endpoint: String,
    pub room: String,
    #[serde(default)]
    pub tracks: Vec<TrackDescription>,
}

/// A main meeting's open breakout rooms, as every replica sees them (`sb:{m}:bo`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BreakoutState {
    pub generation: u64,
    pub rooms: Vec<BreakoutRoom>,
    /// The user who opened them.
    pub by: String,
    pub opened_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at_ms: Option<u64>,
    pub countdown_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing_at_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BreakoutRoom {
    pub name: String,
    /// The room's Meeting and its UID.
    pub meeting: String,
    pub uid: String,
}

/// A chat message as kept in `sb:{m}:chat`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct StoredChat {
    #[serde(flatten)]
    message: ChatMessage,
    /// A direct message's two users (subjects); empty for a message to everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    readers: Vec<String>,
}

impl StoredChat {
    fn readable_by(&self, user: &str) -> bool {
        self.readers.is_empty() || self.readers.iter().any(|r| r == user)
    }
}

/// Who on the meeting's channel a [`Bus`] message is for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Audience {
    All,
    Peer(String),
    /// Hosts and co-hosts (waiting-room notices).
    Admitters,
    /// Every connection of one user.
    User(String),
    /// Every role that publishes (all but viewers): an E2EE meeting's key exchange,
    /// since a publisher encrypts to every member.
    Publishers,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum BusWhat {
    /// Send this envelope to the audience.
    Deliver(Envelope),
    /// Commands the replica holding the peer carries out.
    Admitted,
    /// A host muted the peer (`muted`), or lifted its mute so it may unmute itself.
    ForceMute {
        kind: MediaKind,
        by: String,
        #[serde(default = "yes")]
        muted: bool,
    },
    /// A host changed the peer's role (`by`: the host's participant id); the record holds
    /// it already.
    RoleChanged { role: Role, by: String },
    /// A host removed the user: its connections close at once (not through their queue).
    Removed { by: String },
    /// The same session connected again elsewhere: close this connection.
    TakenOver { connection: String },
    /// Redis was unreachable or lost data: write the participant back and send the
    /// client the meeting's participants again (the hub sends this to its connections).
    Resync,
    /// A host opened breakout rooms, moved the peer, or rooms closed: the peer's session
    /// moves to `meeting` (UID `uid`), unless it is there already.
    MoveTo { meeting: String, uid: String },
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Bus {
    pub to: Audience,
    pub what: BusWhat,
}

impl Bus {
    /// `type_` from participant `from` of meeting `name`, delivered to `to`.
    pub fn deliver(to: Audience, name: &str, from: &str, type_: &str, payload: impl Serialize) -> Self {
        let mut env = Envelope::new(type_, payload).from_peer(from).room(name);
        env.broadcast = true;
        Self { to, what: BusWhat::Deliver(env) }
    }

    /// Those who saw `participant` ([`presence_audience`]) hear that it is gone, and why;
    /// one who announced an E2EE key (`keyed`) also to every publisher, which must stop
    /// encrypting to it.
    pub fn left(name: &str, participant: &ParticipantInfo, reason: &str, keyed: bool) -> Self {
        let payload = serde_json::json!({ "participantId": participant.id, "reason": reason });
        let to = match presence_audience(participant) {
            Audience::Admitters if keyed => Audience::Publishers,
            to => to,
        };
        Self::deliver(to, name, &participant.id, switchboard_signaling_proto::types::PARTICIPANT_LEFT, payload)
    }
}

/// Who hears a participant come, change and go: everyone, except for the audience
/// (admitted viewers, a Webinar's attendees) and the waiting room, whom only hosts and
/// co-hosts follow one by one; the rest of the meeting gets the audience's size
/// (`audience`, at most once a second), so 1,000 attendees joining do not send every
/// attendee 1,000 messages.
pub fn presence_audience(p: &ParticipantInfo) -> Audience {
    if p.admitted && p.role != Role::Viewer { Audience::All } else { Audience::Admitters }
}

fn in_audience(p: &ParticipantInfo) -> bool {
    p.admitted && p.role == Role::Viewer
}

/// One replica's last report of its open connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConnections {
    pub replica: String,
    pub connections: usize,
    pub at_ms: u64,
}

#[derive(Clone)]
pub struct Store {
    pub client: redis::Client,
    conn: redis::aio::ConnectionManager,
    /// Meeting key → the users removed from it, as this replica knows them.
    removed: Arc<Mutex<HashMap<String, Remembered>>>,
    /// The `sb:epoch` value this replica last saw.
    epoch: Arc<Mutex<Option<String>>>,
}

/// A meeting's removed users, and when they were last written back.
struct Remembered {
    users: HashSet<String>,
    at: Instant,
}

/// How Redis is reached besides its URL (`SIGNALING_REDIS_*`; see `config.rs`).
#[derive(Clone, Default)]
pub struct RedisAccess {
    /// PEM CA certificate(s) the server's certificate must chain to (`rediss://` only).
    pub ca_file: Option<std::path::PathBuf>,
    /// ACL user; overrides one in the URL.
    pub username: Option<String>,
    /// Password (of the ACL user, or `requirepass`); overrides one in the URL.
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAccess")
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A Redis command that has not been answered within this long fails (a partition
/// must not hold up a connection's task for ever).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting to Redis gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The Redis client for `url` with `access`: credentials, and the CA for `rediss://`.
pub fn client(url: &str, access: &RedisAccess) -> anyhow::Result<redis::Client> {
    use redis::IntoConnectionInfo as _;
    let mut info = url.into_connection_info().context("SIGNALING_REDIS_URL")?;
    if let Some(user) = &access.username {
        info.redis.username = Some(user.clone());
    }
    if let Some(password) = &access.password {
        info.redis.password = Some(password.clone());
    }
    let tls = matches!(info.addr, redis::ConnectionAddr::TcpTls { .. });
    match &access.ca_file {
        Some(path) => {
            anyhow::ensure!(tls, "SIGNALING_REDIS_CA_FILE is set but SIGNALING_REDIS_URL is not a rediss:// URL");
            let pem = std::fs::read(path).with_context(|| format!("SIGNALING_REDIS_CA_FILE {}", path.display()))?;
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
            Ok(redis::Client::build_with_tls(info, certs).context("SIGNALING_REDIS_CA_FILE")?)
        }
        None => Ok(redis::Client::open(info)?),
    }
}

pub type RedisResult<T> = Result<T, redis::RedisError>;

fn k(meeting: &str, what: &str) -> String {
    format!("sb:{meeting}:{what}")
}

/// The hash of a SignalingPool's replicas' connection reports (`pool`: namespace/name).
fn pool_connections_key(pool: &str) -> String {
    format!("sb:pool:{pool}:connections")
}

fn user_key(meeting: &str, user: &str) -> String {
    k(meeting, &format!("u:{user}"))
}

pub fn channel(meeting: &str) -> String {
    k(meeting, "ev")
}

/// The meeting key of a channel name.
pub fn meeting_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("sb:")?.strip_suffix(":ev")
}

impl Store {
    pub async fn connect(url: &str, access: &RedisAccess) -> anyhow::Result<Self> {
        let client = client(url, access)?;
        // Commands wait for a reconnection in progress, retries included: a few short
        // ones (the crate's default multiplies its 1 s delay by 100 per retry, so a
        // command could hang for minutes while Redis is down). The next command after a
        // failed reconnection tries again.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_factor(2)
            .set_max_delay(2000)
            .set_number_of_retries(2);
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self { client, conn, removed: Arc::default(), epoch: Arc::default() })
    }

    fn c(&self) -> redis::aio::ConnectionManager {
        self.conn.clone()
    }

    /// Records `replica`'s open connections at `now_ms` in the pool's hash (`pool` names
    /// it: namespace and name) and returns every replica's record there.
    pub async fn replica_connections(
        &self,
        pool: &str,
        replica: &str,
        connections: usize,
        now_ms: u64,
    ) -> RedisResult<Vec<ReplicaConnections>> {
        let key = pool_connections_key(pool);
        let (all,): (Vec<(String, String)>,) = redis::pipe()
            .hset(&key, replica, format!("{connections}:{now_ms}"))
            .ignore()
            .expire(&key, MEETING_KEYS_TTL as i64)
            .ignore()
            .hgetall(&key)
            .query_async(&mut self.c())
            .await?;
        Ok(all
            .into_iter()
            .filter_map(|(replica, v)| {
                let (n, at) = v.split_once(':')?;
                Some(ReplicaConnections { replica, connections: n.parse().ok()?, at_ms: at.parse().ok()? })
            })
            .collect())
    }

    /// Drops replicas' records from the pool's hash (replicas gone for good).
    pub async fn forget_replicas(&self, pool: &str, replicas: &[String]) -> RedisResult<()> {
        if replicas.is_empty() {
            return Ok(());
        }
        self.c().hdel(pool_connections_key(pool), replicas).await
    }

    pub async fn ping(&self) -> RedisResult<()> {
        redis::cmd("PING").query_async::<String>(&mut self.c()).await.map(drop)
    }

    pub async fn put(&self, meeting: &str, record: &Record) -> RedisResult<()> {
        let key = k(meeting, "p");
        let json = serde_json::to_string(record).expect("records serialize");
        let mut pipe = redis::pipe();
        pipe.hset(&key, &record.info.id, json).ignore().expire(&key, MEETING_KEYS_TTL as i64).ignore();
        if record.info.admitted {
            let member = user_key(meeting, &record.user);
            pipe.sadd(&member, &record.info.id).ignore().expire(&member, MEETING_KEYS_TTL as i64).ignore();
        }
        let audience = k(meeting, "audience");
        if in_audience(&record.info) {
            pipe.sadd(&audience, &record.info.id).ignore().expire(&audience, MEETING_KEYS_TTL as i64).ignore();
        } else {
            pipe.srem(&audience, &record.info.id).ignore();
        }
        pipe.query_async::<()>(&mut self.c()).await
    }

    /// The meeting's join queue (GCRA over Redis's clock, so every replica shares one
    /// schedule): how long this join waits before it may go in. Joins are spaced
    /// `interval` apart; the first `burst` go at once.
    pub async fn join_wait(&self, meeting: &str, interval: Duration, burst: u32) -> RedisResult<Duration> {
        const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 60000)
return wait
"#;
        let interval_ms = interval.as_millis().max(1) as u64;
        let tolerance_ms = interval_ms * u64::from(burst.saturating_sub(1));
        let wait: u64 = redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(1)
            .arg(k(meeting, "joinq"))
            .arg(interval_ms)
            .arg(tolerance_ms)
            .query_async(&mut self.c())
            .await?;
        Ok(Duration::from_millis(wait))
    }

    /// True the first time it is called for the meeting (its `spec.escalation` size was
    /// passed: hosts are told once).
    pub async fn first_escalation(&self, meeting: &str) -> RedisResult<bool> {
        self.set_once(&k(meeting, "escalated")).await
    }

    /// Sets `key` (for the meeting keys' lifetime) unless it is set; true for the one
    /// caller that set it.
    async fn set_once(&self, key: &str) -> RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(MEETING_KEYS_TTL)
            .query_async(&mut self.c())
            .await?;
        Ok(set.is_some())
    }

    /// How many are in the audience (admitted viewers) now.
    pub async fn audience(&self, meeting: &str) -> RedisResult<u64> {
        self.c().scard(k(meeting, "audience")).await
    }

    /// Participants sorted by id, from after `after`, at most `limit`; and the id the
    /// next page starts after, when there is one.
    pub async fn page(
        &self,
        meeting: &str,
        after: Option<&str>,
        limit: usize,
    ) -> RedisResult<(Vec<Record>, Option<String>)> {
        let mut all = self.all(meeting).await?;
        all.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        let rest: Vec<Record> = all.into_iter().filter(|r| after.is_none_or(|a| r.info.id.as_str() > a)).collect();
        let next = (rest.len() > limit).then(|| rest[limit - 1].info.id.clone());
        Ok((rest.into_iter().take(limit).collect(), next))
    }

    /// Whether the user has an admitted participant in the meeting now.
    pub async fn is_member(&self, meeting: &str, user: &str) -> RedisResult<bool> {
        Ok(self.c().scard::<_, u64>(user_key(meeting, user)).await? > 0)
    }

    /// The user's participants in the meeting.
    pub async fn records_of(&self, meeting: &str, user: &str) -> RedisResult<Vec<Record>> {
        Ok(self.all(meeting).await?.into_iter().filter(|r| r.user == user).collect())
    }

    pub async fn get(&self, meeting: &str, participant: &str) -> RedisResult<Option<Record>> {
        let json: Option<String> = self.c().hget(k(meeting, "p"), participant).await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// The records of `participants` that exist, in one round trip.
    pub async fn get_many(&self, meeting: &str, participants: &[&str]) -> RedisResult<Vec<Record>> {
        if participants.is_empty() {
            return Ok(Vec::new());
        }
        let json: Vec<Option<String>> =
            redis::cmd("HMGET").arg(k(meeting, "p")).arg(participants).query_async(&mut self.c()).await?;
        Ok(json.into_iter().flatten().filter_map(|j| serde_json::from_str(&j).ok()).collect())
    }

    pub async fn all(&self, meeting: &str) -> RedisResult<Vec<Record>> {
        let all: Vec<(String, String)> = self.c().hgetall(k(meeting, "p")).await?;
        Ok(all.into_iter().filter_map(|(_, j)| serde_json::from_str(&j).ok()).collect())
    }

    /// Removes the record; true if this call removed it (so one replica announces it).
    pub async fn remove(&self, meeting: &str, participant: &str) -> RedisResult<bool> {
        let user = self.get(meeting, participant).await?.map(|r| r.user);
        let mut pipe = redis::pipe();
        pipe.hdel(k(meeting, "p"), participant)
            .del(k(meeting, &format!("alive:{participant}")))
            .ignore()
            .hdel(k(meeting, "seq"), participant)
            .ignore()
            .srem(k(meeting, "audience"), participant)
            .ignore();
        if let Some(user) = user {
            pipe.srem(user_key(meeting, &user), participant).ignore();
        }
        let removed: i64 = pipe.query_async::<(i64,)>(&mut self.c()).await?.0;
        Ok(removed == 1)
    }

    /// Marks the participant present, held by `connection`.
    pub async fn touch(&self, meeting: &str, participant: &str, connection: &str) -> RedisResult<()> {
        self.c().set_ex(k(meeting, &format!("alive:{participant}")), connection, PRESENCE_TTL.as_secs()).await
    }

    /// The connection holding the participant, if it is present.
    pub async fn holder(&self, meeting: &str, participant: &str) -> RedisResult<Option<String>> {
        self.c().get(k(meeting, &format!("alive:{participant}"))).await
    }

    pub async fn set_seq(&self, meeting: &str, participant: &str, seq: u64) -> RedisResult<()> {
        self.c().hset(k(meeting, "seq"), participant, seq).await
    }

    pub async fn seq(&self, meeting: &str, participant: &str) -> RedisResult<u64> {
        Ok(self.c().hget::<_, _, Option<u64>>(k(meeting, "seq"), participant).await?.unwrap_or(0))
    }

    /// Writes the participant of a live connection back where Redis lost it: presence
    /// (held by `connection`) always; the record and the user's membership entry only when
    /// the record is missing (one present is newer than the connection's copy). True when
    /// the record was missing and written.
    pub async fn refresh(&self, meeting: &str, record: &Record, connection: &str) -> RedisResult<bool> {
        let key = k(meeting, "p");
        let json = serde_json::to_string(record).expect("records serialize");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_nx(&key, &record.info.id, json)
            .expire(&key, MEETING_KEYS_TTL as i64)
            .ignore()
            .set_ex(k(meeting, &format!("alive:{}", record.info.id)), connection, PRESENCE_TTL.as_secs())
            .ignore();
        if record.info.admitted {
            let member = user_key(meeting, &record.user);
            pipe.sadd(&member, &record.info.id).ignore().expire(&member, MEETING_KEYS_TTL as i64).ignore();
        }
        let (written,): (bool,) = pipe.query_async(&mut self.c()).await?;
        if written && in_audience(&record.info) {
            let audience = k(meeting, "audience");
            let mut pipe = redis::pipe();
            pipe.sadd(&audience, &record.info.id).ignore().expire(&audience, MEETING_KEYS_TTL as i64).ignore();
            pipe.query_async::<()>(&mut self.c()).await?;
        }
        Ok(written)
    }

    /// The user may not join the meeting again.
    pub async fn mark_removed(&self, meeting: &str, user: &str) -> RedisResult<()> {
        self.remember_removed(meeting, [user.to_owned()]);
        let key = k(meeting, "removed");
        redis::pipe()
            .sadd(&key, user)
            .ignore()
            .expire(&key, MEETING_KEYS_TTL as i64)
            .ignore()
            .query_async(&mut self.c())
            .await
    }

    /// Whether a host removed the user: as this replica remembers it, or as Redis has it.
    pub async fn is_removed(&self, meeting: &str, user: &str) -> RedisResult<bool> {
        if self.removed.lock().unwrap().get(meeting).is_some_and(|r| r.users.contains(user)) {
            return Ok(true);
        }
        let removed: bool = self.c().sismember(k(meeting, "removed"), user).await?;
        if removed {
            self.remember_removed(meeting, [user.to_owned()]);
        }
        Ok(removed)
    }

    /// Adds users to this replica's memory of the meeting's removed set.
    pub fn remember_removed(&self, meeting: &str, users: impl IntoIterator<Item = String>) {
        let mut all = self.removed.lock().unwrap();
        let r =
            all.entry(meeting.to_owned()).or_insert_with(|| Remembered { users: HashSet::new(), at: Instant::now() });
        r.users.extend(users);
    }

    /// The meeting's removed users as this replica remembers them.
    pub fn remembered_removed(&self, meeting: &str) -> HashSet<String> {
        self.removed.lock().unwrap().get(meeting).map(|r| r.users.clone()).unwrap_or_default()
    }

    /// Writes the removed users this replica remembers back to Redis and learns the ones
    /// Redis has (so a flush or failover does not let a removed user back in).
    pub async fn sync_removed(&self, meeting: &str) -> RedisResult<()> {
        let key = k(meeting, "removed");
        let known = self.remembered_removed(meeting);
        let mut pipe = redis::pipe();
        if !known.is_empty() {
            pipe.sadd(&key, &known).ignore().expire(&key, MEETING_KEYS_TTL as i64).ignore();
        }
        let (all,): (Vec<String>,) = pipe.smembers(&key).query_async(&mut self.c()).await?;
        if !all.is_empty() || !known.is_empty() {
            self.remember_removed(meeting, all);
            if let Some(r) = self.removed.lock().unwrap().get_mut(meeting) {
                r.at = Instant::now();
            }
        }
        // Meetings this replica stopped reporting on long ago are forgotten, as Redis would.
        let stale = Duration::from_secs(MEETING_KEYS_TTL);
        self.removed.lock().unwrap().retain(|_, r| r.at.elapsed() < stale);
        Ok(())
    }

    /// Whether Redis lost data since the last call (flushed, restarted empty, failed over
    /// to a replica without `sb:epoch`): the first call only notes the epoch.
    pub async fn lost_data(&self) -> RedisResult<bool> {
        let seen: Option<String> = self.c().get("sb:epoch").await?;
        let known = self.epoch.lock().unwrap().clone();
        if seen.is_some() && seen == known {
            return Ok(false);
        }
        let now = match seen {
            Some(v) => v,
            None => {
                let fresh = format!("{:032x}", rand::random::<u128>());
                let _: Option<String> =
                    redis::cmd("SET").arg("sb:epoch").arg(&fresh).arg("NX").query_async(&mut self.c()).await?;
                self.c().get("sb:epoch").await?
            }
        };
        let lost = known.is_some();
        *self.epoch.lock().unwrap() = Some(now);
        Ok(lost)
    }

    /// The main meeting's open breakout rooms.
    pub async fn breakouts(&self, meeting: &str) -> RedisResult<Option<BreakoutState>> {
        let raw: Option<String> = self.c().get(k(meeting, "bo")).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Writes the state, and the meeting into the set whose timers the replicas drive.
    pub async fn set_breakouts(&self, meeting: &str, state: &BreakoutState) -> RedisResult<()> {
        let json = serde_json::to_string(state).expect("state serializes");
        redis::pipe()
            .set_ex(k(meeting, "bo"), json, MEETING_KEYS_TTL)
            .ignore()
            .sadd("sb:breakouts", meeting)
            .ignore()
            .query_async::<()>(&mut self.c())
            .await
    }

    /// The rooms closed: their state and who was where go.
    pub async fn clear_breakouts(&self, meeting: &str) -> RedisResult<()> {
        redis::pipe()
            .del(&[k(meeting, "bo"), k(meeting, "bo:where")])
            .ignore()
            .srem("sb:breakouts", meeting)
            .ignore()
            .query_async::<()>(&mut self.c())
            .await
    }

    /// Generation `g`'s rooms were closed (so they are not restored from the API server
    /// before its watch shows them ended).
    pub async fn mark_breakouts_closed(&self, meeting: &str, generation: u64) -> RedisResult<()> {
        self.c().set_ex(k(meeting, &format!("bo:{generation}:closed")), "1", 3600).await
    }

    pub async fn breakouts_closed(&self, meeting: &str, generation: u64) -> RedisResult<bool> {
        self.c().exists(k(meeting, &format!("bo:{generation}:closed"))).await
    }

    /// Main meetings with breakout rooms open.
    pub async fn with_breakouts(&self) -> RedisResult<Vec<String>> {
        self.c().smembers("sb:breakouts").await
    }

    pub async fn next_breakout_generation(&self, meeting: &str) -> RedisResult<u64> {
        let g: u64 = self.c().incr(k(meeting, "bo:gen"), 1u64).await?;
        let _: () = self.c().expire(k(meeting, "bo:gen"), MEETING_KEYS_TTL as i64).await?;
        Ok(g)
    }

    /// Takes the main meeting's breakout lock for `ttl` (false: another replica holds it).
    pub async fn lock_breakouts(&self, meeting: &str, holder: &str, ttl: Duration) -> RedisResult<bool> {
        self.set_nx(&k(meeting, "bo:lock"), holder, ttl).await
    }

    /// Lets the lock go if `holder` still holds it.
    pub async fn unlock_breakouts(&self, meeting: &str, holder: &str) -> RedisResult<()> {
        self.del_if(&k(meeting, "bo:lock"), holder).await
    }

    /// The Meeting participant `pid` belongs in (`None`: it was never moved).
    pub async fn breakout_of(&self, meeting: &str, pid: &str) -> RedisResult<Option<String>> {
        self.c().hget(k(meeting, "bo:where"), pid).await
    }

    /// Participant id → room Meeting, for everyone in a room.
    pub async fn breakout_places(&self, meeting: &str) -> RedisResult<HashMap<String, String>> {
        self.c().hgetall(k(meeting, "bo:where")).await
    }

    /// Puts participants into rooms, or back into the main meeting (its name).
    pub async fn place_in_breakouts(&self, meeting: &str, places: &[(String, String)]) -> RedisResult<()> {
        let key = k(meeting, "bo:where");
        let mut pipe = redis::pipe();
        for (pid, room) in places {
            pipe.hset(&key, pid, room).ignore();
        }
        pipe.expire(&key, MEETING_KEYS_TTL as i64).ignore();
        pipe.query_async::<()>(&mut self.c()).await
    }

    /// True when the meeting's rooms were not opened within `every` (and now counts as
    /// an opening).
    pub async fn may_open_breakouts(&self, meeting: &str, every: Duration) -> RedisResult<bool> {
        self.set_nx(&k(meeting, "bo:opened"), "1", every).await
    }

    /// True when participant `pid` has not asked for help within `every`.
    pub async fn may_ask_for_help(&self, meeting: &str, pid: &str, every: Duration) -> RedisResult<bool> {
        self.set_nx(&k(meeting, &format!("help:{pid}")), "1", every).await
    }

    /// `SET key value NX PX ttl`: true when this call set it.
    async fn set_nx(&self, key: &str, value: &str, ttl: Duration) -> RedisResult<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.c())
            .await?;
        Ok(set.is_some())
    }

    /// Deletes `key` if it holds `value` (a lock let go only by its holder).
    async fn del_if(&self, key: &str, value: &str) -> RedisResult<()> {
        redis::cmd("EVAL")
            .arg("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end")
            .arg(1)
            .arg(key)
            .arg(value)
            .query_async::<i64>(&mut self.c())
            .await
            .map(drop)
    }

    /// Takes the meeting's recording lock for `ttl` (false: another replica holds it).
    pub async fn lock_recording(&self, meeting: &str, holder: &str, ttl: Duration) -> RedisResult<bool> {
        self.set_nx(&k(meeting, "reclock"), holder, ttl).await
    }

    pub async fn unlock_recording(&self, meeting: &str) -> RedisResult<()> {
        self.c().del(k(meeting, "reclock")).await
    }

    /// The RecordingJob recording the meeting now, as signaling last saw it.
    pub async fn recording(&self, meeting: &str) -> RedisResult<Option<String>> {
        self.c().get(k(meeting, "recording")).await
    }

    pub async fn set_recording(&self, meeting: &str, job: &str) -> RedisResult<()> {
        self.c().set_ex(k(meeting, "recording"), job, MEETING_KEYS_TTL).await
    }

    /// Forgets the active recording if it is `job`.
    pub async fn clear_recording(&self, meeting: &str, job: &str) -> RedisResult<()> {
        self.del_if(&k(meeting, "recording"), job).await
    }

    /// Marks `job`'s `state` announced; true for the one caller that marked it first.
    pub async fn first_to_announce(&self, meeting: &str, job: &str, state: &str) -> RedisResult<bool> {
        self.set_once(&k(meeting, &format!("rec:{job}:{state}"))).await
    }

    pub async fn announced(&self, meeting: &str, job: &str, state: &str) -> RedisResult<bool> {
        self.c().exists(k(meeting, &format!("rec:{job}:{state}"))).await
    }

    /// The session-token key the replicas share when none is configured: made by the
    /// first replica that asks (`SET NX`), read by the others.
    pub async fn shared_session_key(&self) -> RedisResult<Vec<u8>> {
        use base64::Engine as _;
        let fresh: [u8; 48] = rand::random();
        let fresh = base64::engine::general_purpose::STANDARD.encode(fresh);
        let _: Option<String> =
            redis::cmd("SET").arg("sb:session-key").arg(&fresh).arg("NX").query_async(&mut self.c()).await?;
        let key: String = self.c().get("sb:session-key").await?;
        Ok(key.into_bytes())
    }

    pub async fn next_slot(&self, meeting: &str) -> RedisResult<u64> {
        self.c().incr(k(meeting, "slot"), 1u64).await
    }

    /// Appends a chat message, numbering it. `readers`: for a direct message, the two
    /// users (subjects) who may find it in the history; empty: everyone.
    pub async fn append_chat(
        &self,
        meeting: &str,
        mut message: ChatMessage,
        readers: Vec<String>,
    ) -> RedisResult<ChatMessage> {
        message.seq = self.c().incr(k(meeting, "chatseq"), 1u64).await?;
        let key = k(meeting, "chat");
        let stored = StoredChat { message, readers };
        let json = serde_json::to_string(&stored).expect("chat serializes");
        let message = stored.message;
        redis::pipe()
            .zadd(&key, json, message.seq)
            .ignore()
            .expire(&key, MEETING_KEYS_TTL as i64)
            .ignore()
            .expire(k(meeting, "chatseq"), MEETING_KEYS_TTL as i64)
            .ignore()
            .query_async::<()>(&mut self.c())
            .await?;
        Ok(message)
    }

    /// Of the `limit` messages before sequence number `before` (newest first), those
    /// user `reader` may read (direct messages only by their two users), and the
    /// `before` of the next page.
    pub async fn chat_page(
        &self,
        meeting: &str,
        before: Option<u64>,
        limit: usize,
        reader: &str,
    ) -> RedisResult<(Vec<ChatMessage>, Option<u64>)> {
        let max = before.map(|b| format!("({b}")).unwrap_or("+inf".into());
        let raw: Vec<String> =
            self.c().zrevrangebyscore_limit(k(meeting, "chat"), max, "-inf", 0, limit as isize + 1).await?;
        let mut page: Vec<StoredChat> = raw.iter().filter_map(|j| serde_json::from_str(j).ok()).collect();
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|m| m.message.seq)
        } else {
            None
        };
        Ok((page.into_iter().filter(|c| c.readable_by(reader)).map(|c| c.message).collect(), next))
    }

    pub async fn publish(&self, meeting: &str, bus: &Bus) -> RedisResult<()> {
        self.c().publish(channel(meeting), serde_json::to_string(bus).expect("bus serializes")).await
    }

    /// Drops everything of an ended meeting.
    pub async fn forget_meeting(&self, meeting: &str) -> RedisResult<()> {
        let mut keys: Vec<String> = [
            "p",
            "seq",
            "removed",
            "chat",
            "chatseq",
            "slot",
            "recording",
            "reclock",
            "bo",
            "bo:where",
            "bo:gen",
            "bo:opened",
        ]
        .iter()
        .map(|w| k(meeting, w))
        .collect();
        let _: () = self.c().srem("sb:breakouts", meeting).await?;
        for pattern in ["alive:*", "u:*", "rec:*", "help:*", "bo:*:closed"] {
            let found: Vec<String> = self.c().keys(k(meeting, pattern)).await?;
            keys.extend(found);
        }
        self.removed.lock().unwrap().remove(meeting);
        self.c().del(keys).await
    }
}
