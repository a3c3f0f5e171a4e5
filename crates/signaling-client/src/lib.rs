//! A client of signaling-pod: the REST facade ([`Rest`]) and one WebSocket session
//! ([`SignalingClient`]). [`SignalingClient::media`] lets a
//! [`switchboard_sfu_client::Participant`] run its offers, answers and candidates
//! through signaling instead of talking to the SFU, as a browser does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use switchboard_sfu_api::{AnswerResponse, Candidate, JoinRequest, OfferRequest, SequencedEvent};
use switchboard_sfu_client::{EventsError, MediaSignal, Result as MediaResult};
use switchboard_signaling_proto::{
    Envelope, ErrorCode, ErrorPayload, JoinedPayload, OfferPayload, ReconnectPayload, Role, RoleChangedPayload, types,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

mod error;
pub use error::{Error, Result};
pub use switchboard_signaling_proto as proto;
pub use switchboard_signaling_proto::rest::{ChatPage, IceServer, JoinGrant, MeetingInfo};

/// The REST facade at `base` (`http://127.0.0.1:8080`), as the user with `bearer`.
#[derive(Clone, Debug)]
pub struct Rest {
    http: reqwest::Client,
    pub base: String,
    pub bearer: String,
}

impl Rest {
    pub fn new(base: &str, bearer: &str) -> Self {
        Self { http: reqwest::Client::new(), base: base.trim_end_matches('/').into(), bearer: bearer.into() }
    }

    /// Any call: status and JSON body (errors are `{code, message}`); a body that is
    /// not JSON comes as a string.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.base);
        let transport = |source: reqwest::Error| Error::Transport {
            method: method.clone(),
            url: url.clone(),
            source: source.without_url(),
        };
        let mut req = self.http.request(method.clone(), &url).bearer_auth(&self.bearer);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(transport)?;
        Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))))
    }

    async fn ok<T: for<'de> Deserialize<'de>>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let (status, v) = self.call(method.clone(), path, body).await?;
        checked(method, format!("{}{path}", self.base), status, v)
    }

    pub async fn create_meeting(&self, body: serde_json::Value) -> Result<MeetingInfo> {
        self.ok(reqwest::Method::POST, "/api/v1/meetings", Some(body)).await
    }
    pub async fn meeting(&self, id: &str) -> Result<MeetingInfo> {
        self.ok(reqwest::Method::GET, &format!("/api/v1/meetings/{id}"), None).await
    }
    pub async fn join(&self, id: &str) -> Result<JoinGrant> {
        self.ok(reqwest::Method::POST, &format!("/api/v1/meetings/{id}/join"), Some(serde_json::json!({}))).await
    }
    pub async fn chat(&self, id: &str, before: Option<u64>, limit: u32) -> Result<ChatPage> {
        let before = before.map(|b| format!("&before={b}")).unwrap_or_default();
        self.ok(reqwest::Method::GET, &format!("/api/v1/meetings/{id}/chat?limit={limit}{before}"), None).await
    }
}

/// The reply to `method` `url`: its body as a `T` when the status is a success.
fn checked<T: for<'de> Deserialize<'de>>(
    method: reqwest::Method,
    url: String,
    status: u16,
    body: serde_json::Value,
) -> Result<T> {
    if !(200..300).contains(&status) {
        return Err(Error::Http { method, url, status, body });
    }
    serde_json::from_value(body).map_err(|source| Error::Decode { method, url, source })
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Envelope>>>>;

/// One WebSocket session with signaling.
pub struct SignalingClient {
    out: mpsc::UnboundedSender<Message>,
    log: Arc<Mutex<Vec<Envelope>>>,
    /// Arrival time of each logged message (same index), for latency measurements.
    arrivals: Arc<Mutex<Vec<std::time::SystemTime>>>,
    pub(crate) arrived: Arc<Notify>,
    pending: Pending,
    next_id: AtomicU64,
    media: Arc<MediaChannel>,
    open: Arc<std::sync::atomic::AtomicBool>,
    /// The Close frame signaling sent, if any: code and reason.
    close_frame: Arc<Mutex<Option<(u16, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for SignalingClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Default)]
struct MediaChannel {
    /// Where `media-event`s go; replaced on each media join (a migration starts over).
    tx: Mutex<Option<mpsc::UnboundedSender<SequencedEvent>>>,
    rx: tokio::sync::Mutex<Option<mpsc::UnboundedReceiver<SequencedEvent>>>,
}

impl SignalingClient {
    /// Opens a WebSocket to `url` (`ws://host:port/ws`).
    pub async fn connect(url: &str) -> Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .map_err(|source| Error::Connect { url: url.to_owned(), source: Box::new(source) })?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let log: Arc<Mutex<Vec<Envelope>>> = Arc::default();
        let arrivals: Arc<Mutex<Vec<std::time::SystemTime>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let pending: Pending = Arc::default();
        let media: Arc<MediaChannel> = Arc::default();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let close_frame: Arc<Mutex<Option<(u16, String)>>> = Arc::default();
        let writer = tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
        });
        let reader = {
            let (log, arrivals, arrived, pending, media, open, close_frame) = (
                log.clone(),
                arrivals.clone(),
                arrived.clone(),
                pending.clone(),
                media.clone(),
                open.clone(),
                close_frame.clone(),
            );
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    if let Message::Close(Some(frame)) = &msg {
                        *close_frame.lock().unwrap() = Some((u16::from(frame.code), frame.reason.to_string()));
                    }
                    let Message::Text(text) = msg else { continue };
                    let Ok(env) = serde_json::from_str::<Envelope>(&text) else {
                        tracing::warn!(%text, "signaling sent something that is not an envelope");
                        continue;
                    };
                    if env.type_ == types::MEDIA_EVENT
                        && let (Ok(ev), Some(tx)) =
                            (env.payload_as::<SequencedEvent>(), media.tx.lock().unwrap().as_ref())
                    {
                        let _ = tx.send(ev);
                    }
                    if let Some(id) = &env.id
                        && let Some(waiter) = pending.lock().unwrap().remove(id)
                    {
                        let _ = waiter.send(env.clone());
                    }
                    let mut log = log.lock().unwrap();
                    log.push(env);
                    arrivals.lock().unwrap().push(std::time::SystemTime::now());
                    drop(log);
                    arrived.notify_waiters();
                }
                open.store(false, Ordering::SeqCst);
                arrived.notify_waiters();
            })
        };
        Ok(Self {
            out,
            log,
            arrivals,
            arrived,
            pending,
            next_id: AtomicU64::new(1),
            media,
            open,
            close_frame,
            tasks: vec![writer, reader],
        })
    }

    /// Connects and joins with a session token; fails on an `error` reply.
    /// A join that waits in the meeting's join queue (`queued` notices, each second)
    /// waits as long as the notices keep coming.
    pub async fn join(url: &str, token: &str) -> Result<(Self, JoinedPayload)> {
        Self::join_with(url, serde_json::json!({ "token": token })).await
    }

    /// Joins saying the client implements end-to-end encryption (`docs/e2ee.md`), as an
    /// E2EE meeting requires.
    pub async fn join_e2ee(url: &str, token: &str) -> Result<(Self, JoinedPayload)> {
        let scheme = switchboard_signaling_proto::e2ee::SCHEME_VERSION;
        Self::join_with(url, serde_json::json!({ "token": token, "e2ee": scheme })).await
    }

    async fn join_with(url: &str, payload: serde_json::Value) -> Result<(Self, JoinedPayload)> {
        let client = Self::connect(url).await?;
        let reply = client.request_while(Envelope::new(types::JOIN, payload), types::QUEUED).await?;
        let joined = reply
            .payload_as()
            .map_err(|source| Error::Protocol { what: format!("the `{}` reply to `join`", reply.type_), source })?;
        Ok((client, joined))
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// The code and reason of the Close frame signaling sent (1001: the replica went
    /// away, reconnect), once it did.
    pub fn close_frame(&self) -> Option<(u16, String)> {
        self.close_frame.lock().unwrap().clone()
    }

    /// The `reconnect` notice, if signaling sent one: its replica is draining, and the
    /// session should [`resume`](Self::resume) after `retry_after_ms`.
    pub fn reconnect_notice(&self) -> Option<ReconnectPayload> {
        self.log.lock().unwrap().iter().rev().find(|e| e.type_ == types::RECONNECT)?.payload_as().ok()
    }

    /// Resumes a session (its session token) on a new connection, trying `urls` in turn
    /// (a Service's URL, or replicas), waiting between attempts as `backoff` says:
    /// exponential with full jitter, and never sooner than a refusal's `Retry-After`
    /// (the caps, the accept rate and a draining replica answer 503 or 429 with one).
    /// A refused `join` (removed, a bad or expired token) ends it at once; so does
    /// `give_up_after`.
    pub async fn resume(
        urls: &[&str],
        token: &str,
        backoff: &Backoff,
        give_up_after: Duration,
    ) -> Result<(Self, JoinedPayload)> {
        assert!(!urls.is_empty(), "resume needs a URL");
        let deadline = tokio::time::Instant::now() + give_up_after;
        let mut attempt = 0u32;
        loop {
            let url = urls[attempt as usize % urls.len()];
            let (error, retry_after) = match Self::join(url, token).await {
                Ok(joined) => return Ok(joined),
                Err(e @ Error::Refused { .. }) if e.refusal().is_some_and(|p| p.code != ErrorCode::Internal) => {
                    return Err(e);
                }
                Err(e) => {
                    let retry_after = e.retry_after();
                    (e, retry_after)
                }
            };
            let wait = backoff.delay(attempt, retry_after, jitter());
            if tokio::time::Instant::now() + wait > deadline {
                return Err(error);
            }
            tracing::info!(%url, error = %error, ?wait, attempt, "resume failed; retrying");
            tokio::time::sleep(wait).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// Sends without waiting for a reply.
    pub fn send(&self, env: Envelope) {
        let _ = self.out.send(Message::Text(env.to_json().into()));
    }

    /// Sends arbitrary text (for malformed-input tests).
    pub fn send_raw(&self, text: impl Into<String>) {
        let _ = self.out.send(Message::Text(text.into().into()));
    }

    /// Sends `type` with `payload` and a fresh request id, and waits for the reply
    /// carrying that id; an `error` reply becomes an `Err` holding its payload.
    pub async fn request(&self, type_: &str, payload: impl Serialize) -> Result<Envelope> {
        self.request_while(Envelope::new(type_, payload), "").await
    }

    /// [`request`](Self::request) addressed to one participant (`toPeerId`), e.g. a
    /// direct chat message.
    pub async fn request_to(&self, type_: &str, to: &str, payload: impl Serialize) -> Result<Envelope> {
        let mut env = Envelope::new(type_, payload);
        env.to_peer_id = Some(to.to_owned());
        self.request_while(env, "").await
    }

    /// [`request`](Self::request) of `env`, waiting past the reply timeout for as long
    /// as messages of type `progress` keep arriving within it.
    async fn request_while(&self, env: Envelope, progress: &str) -> Result<Envelope> {
        const REPLY_TIMEOUT: Duration = Duration::from_secs(15);
        let type_ = env.type_.clone();
        let type_ = type_.as_str();
        let id = format!("r{}", self.next_id.fetch_add(1, Ordering::SeqCst));
        let (tx, mut rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id.clone(), tx);
        self.send(env.in_reply_to(Some(id.clone())));
        let mut seen = self.count(progress);
        let reply = loop {
            match tokio::time::timeout(REPLY_TIMEOUT, &mut rx).await {
                Ok(Ok(reply)) => break reply,
                Ok(Err(_)) => return Err(Error::Closed { what: format!("a reply to `{type_}`") }),
                Err(_) if !progress.is_empty() && self.count(progress) > seen => seen = self.count(progress),
                Err(_) => return Err(Error::Timeout { what: format!("a reply to `{type_}`"), after: REPLY_TIMEOUT }),
            }
        };
        refused(type_, reply)
    }

    /// Fresh TURN credentials (`ice-servers`): ask before the ones held expire (their
    /// username is `<expiry unix seconds>:<participant>`).
    pub async fn ice_servers(&self) -> Result<Vec<IceServer>> {
        let reply = self.request(types::ICE_SERVERS, serde_json::json!({})).await?;
        let payload: switchboard_signaling_proto::IceServersPayload = reply
            .payload_as()
            .map_err(|source| Error::Protocol { what: "the reply to `ice-servers`".into(), source })?;
        Ok(payload.ice_servers)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Envelope> {
        self.log.lock().unwrap().clone()
    }

    /// How many messages of `type_` arrived.
    pub fn count(&self, type_: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|e| e.type_ == type_).count()
    }

    /// For messages of `type_` whose text starts with the send time in microseconds
    /// since the epoch (as the benchmark sends them): milliseconds from send to arrival.
    pub fn arrival_delays_ms(&self, type_: &str) -> Vec<f64> {
        let log = self.log.lock().unwrap();
        let arrivals = self.arrivals.lock().unwrap();
        log.iter()
            .zip(arrivals.iter())
            .filter(|(e, _)| e.type_ == type_)
            .filter_map(|(e, at)| {
                let sent: u128 = e.payload.get("text")?.as_str()?.split(' ').next()?.parse().ok()?;
                let at = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros();
                Some(at.saturating_sub(sent) as f64 / 1000.0)
            })
            .collect()
    }

    /// Waits until a received message satisfies `check` (earlier ones count too).
    pub async fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&Envelope) -> bool) -> Result<Envelope> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if let Some(e) = self.log.lock().unwrap().iter().find(|e| check(e)) {
                return Ok(e.clone());
            }
            if !self.is_open() {
                return Err(Error::Closed { what: what.to_owned() });
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::Timeout { what: what.to_owned(), after: timeout });
            }
        }
    }

    /// Waits until the server closes the connection.
    pub async fn wait_closed(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.is_open() {
            let notified = self.arrived.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() && self.is_open() {
                return Err(Error::Timeout { what: "signaling to close the connection".into(), after: timeout });
            }
        }
        Ok(())
    }

    /// Media signaling through this session, for [`switchboard_sfu_client::Participant::join_via`].
    pub fn media(self: &Arc<Self>) -> Arc<dyn MediaSignal> {
        Arc::new(ViaSignaling(self.clone()))
    }
}

/// When to try again after a failed connection: exponential backoff with full jitter
/// (a delay drawn uniformly below `min(max, first × 2^attempt)`), on top of what the
/// server asked (`Retry-After`), so that clients a replica lost do not come back in step.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub first: Duration,
    /// The ceiling of every delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 500 ms doubling up to 30 s (the browser client's schedule too).
    fn default() -> Self {
        Self { first: Duration::from_millis(500), max: Duration::from_secs(30) }
    }
}

impl Backoff {
    /// The ceiling of attempt `attempt`'s jitter (from 0): `min(max, first × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2f64.powi(attempt.min(62) as i32);
        self.first.mul_f64(factor).min(self.max)
    }

    /// The wait before retry `attempt` (from 0): `retry_after` (the server's, if any) plus
    /// `unit` (uniform in [0, 1)) × the attempt's ceiling.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        retry_after.unwrap_or_default() + self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A number uniform in [0, 1), random enough for jitter (a std hasher's random keys).
pub fn jitter() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The reply to a `request` of type `request`: an `error` reply becomes [`Error::Refused`].
fn refused(request: &str, reply: Envelope) -> Result<Envelope> {
    if reply.type_ != types::ERROR {
        return Ok(reply);
    }
    match reply.payload_as::<ErrorPayload>() {
        Ok(payload) => Err(Error::Refused { request: request.to_owned(), payload }),
        Err(source) => Err(Error::Protocol { what: format!("the `error` reply to `{request}`"), source }),
    }
}

struct ViaSignaling(Arc<SignalingClient>);

impl ViaSignaling {
    /// `offer` → the `answer` reply (without an sdp for a receive-only join).
    async fn offer(&self, offer: OfferPayload) -> Result<AnswerResponse> {
        let reply = self.0.request(types::OFFER, offer).await?;
        Ok(AnswerResponse { answer: reply.payload.get("sdp").and_then(|s| s.as_str()).map(str::to_owned) })
    }
}

#[async_trait::async_trait]
impl MediaSignal for ViaSignaling {
    async fn join(&self, _room: &str, request: JoinRequest) -> MediaResult<AnswerResponse> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.0.media.tx.lock().unwrap() = Some(tx);
        *self.0.media.rx.lock().await = Some(rx);
        Ok(self.offer(OfferPayload { sdp: request.offer, tracks: request.tracks, fresh: true }).await?)
    }
    async fn publisher_offer(
        &self,
        _room: &str,
        _participant: &str,
        request: OfferRequest,
    ) -> MediaResult<AnswerResponse> {
        Ok(self.offer(OfferPayload { sdp: Some(request.sdp), tracks: request.tracks, fresh: false }).await?)
    }
    async fn subscriber_answer(&self, _room: &str, _participant: &str, sdp: String) -> MediaResult<()> {
        self.0.request(types::ANSWER, serde_json::json!({ "sdp": sdp })).await?;
        Ok(())
    }
    async fn subscriber_restart(&self, _room: &str, _participant: &str) -> MediaResult<()> {
        self.0.request(types::ICE_RESTART, serde_json::json!({})).await?;
        Ok(())
    }
    async fn candidate(&self, _room: &str, _participant: &str, candidate: Candidate) -> MediaResult<()> {
        self.0.send(Envelope::new(types::CANDIDATE, candidate));
        Ok(())
    }
    async fn events(
        &self,
        _room: &str,
        _participant: &str,
        _after: u64,
    ) -> MediaResult<Vec<SequencedEvent>, EventsError> {
        let mut guard = self.0.media.rx.lock().await;
        let Some(rx) = guard.as_mut() else { return Err(EventsError::Fatal(Error::NotJoined.into())) };
        match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            Ok(Some(first)) => {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                Ok(batch)
            }
            Ok(None) => Err(EventsError::Fatal(Error::Replaced.into())),
            Err(_) if self.0.is_open() => Ok(Vec::new()),
            Err(_) => Err(EventsError::Transient(Error::Closed { what: "media events".into() }.into())),
        }
    }
    async fn leave(&self, _room: &str, _participant: &str) -> MediaResult<()> {
        self.0.request(types::LEAVE, serde_json::json!({})).await?;
        Ok(())
    }
}

/// A participant's media that follows its meeting: on `media-reconnect` (the meeting
/// moved to another SFU) it drops its connections and builds new ones through the
/// same signaling session, as the browser client does — no rejoin, no user action.
pub struct MediaSession {
    current: Arc<tokio::sync::Mutex<switchboard_sfu_client::Participant>>,
    reconnects: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MediaSession {
    /// Media that publishes `opts.publish` (until a host makes it a viewer).
    pub async fn start(
        client: Arc<SignalingClient>,
        participant: &str,
        opts: switchboard_sfu_client::JoinOptions,
    ) -> Result<Self> {
        Self::start_as(client, participant, opts, None).await
    }

    /// Media for a participant with `role` (from `joined`): `opts.publish` goes out
    /// while its role publishes. A host's `set-role` changes that: the `media-reconnect`
    /// after `role-changed` builds connections that publish or not, as the new role says
    /// (a Webinar attendee invited to speak, and moved back).
    pub async fn start_as(
        client: Arc<SignalingClient>,
        participant: &str,
        opts: switchboard_sfu_client::JoinOptions,
        role: Option<Role>,
    ) -> Result<Self> {
        let as_role = {
            let (client, opts) = (client.clone(), opts.clone());
            move || {
                let latest = client
                    .received()
                    .iter()
                    .rev()
                    .find(|e| e.type_ == types::ROLE_CHANGED)
                    .and_then(|e| e.payload_as::<RoleChangedPayload>().ok())
                    .map(|r| r.role)
                    .or(role);
                match latest {
                    Some(r) if !r.publishes() => {
                        switchboard_sfu_client::JoinOptions { publish: Vec::new(), ..opts.clone() }
                    }
                    _ => opts.clone(),
                }
            }
        };
        let first =
            switchboard_sfu_client::Participant::join_via(client.media(), "meeting", participant, as_role()).await?;
        let current = Arc::new(tokio::sync::Mutex::new(first));
        let reconnects = Arc::new(AtomicU64::new(0));
        let task = {
            let (current, reconnects, participant) = (current.clone(), reconnects.clone(), participant.to_owned());
            tokio::spawn(async move {
                let mut handled = 0;
                loop {
                    let seen = client.count(types::MEDIA_RECONNECT);
                    if seen > handled {
                        handled = seen;
                        tracing::info!(%participant, "media reconnect");
                        loop {
                            match switchboard_sfu_client::Participant::join_via(
                                client.media(),
                                "meeting",
                                &participant,
                                as_role(),
                            )
                            .await
                            {
                                Ok(p) => {
                                    let old = std::mem::replace(&mut *current.lock().await, p);
                                    old.vanish().await;
                                    break;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "media reconnect failed; retrying");
                                    tokio::time::sleep(Duration::from_millis(500)).await;
                                }
                            }
                        }
                        reconnects.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    if !client.is_open() {
                        return;
                    }
                    let notified = client.arrived.notified();
                    let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
                }
            })
        };
        Ok(Self { current, reconnects, task })
    }

    /// How many times media moved.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::SeqCst)
    }

    /// What the current connections received, by track id.
    pub async fn received(&self) -> HashMap<String, switchboard_sfu_client::ReceivedTrack> {
        self.current.lock().await.received()
    }

    /// Waits until the current connections' received tracks satisfy `check`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&HashMap<String, switchboard_sfu_client::ReceivedTrack>) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if check(&self.received().await) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Media(self.current.lock().await.timeout(what, timeout)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_signaling_proto::ErrorCode;

    #[test]
    fn rest_statuses_map_to_values_and_http_errors() {
        let url = "http://signaling/api/v1/meetings/m".to_owned();
        let ok: ChatPage =
            checked(reqwest::Method::GET, url.clone(), 200, serde_json::json!({"messages": [], "nextBefore": null}))
                .unwrap();
        assert!(ok.messages.is_empty());

        let body = serde_json::json!({"code": "notFound", "message": "no meeting m"});
        let e = checked::<MeetingInfo>(reqwest::Method::GET, url.clone(), 404, body.clone()).unwrap_err();
        assert!(matches!(&e, Error::Http { status: 404, body: b, .. } if *b == body), "{e:?}");
        assert_eq!(e.status(), Some(404));
        assert!(e.to_string().starts_with(&format!("GET {url}: HTTP 404: ")), "{e}");

        let e = checked::<MeetingInfo>(reqwest::Method::POST, url, 201, serde_json::json!("created")).unwrap_err();
        assert!(matches!(e, Error::Decode { .. }), "{e:?}");
        assert_eq!(e.status(), None);
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_full_jitter_after_retry_after() {
        let b = Backoff::default();
        let ceilings: Vec<u64> = (0..9).map(|a| b.ceiling(a).as_millis() as u64).collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        // Full jitter: anywhere from nothing to the ceiling.
        assert_eq!(b.delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, None, 0.5), Duration::from_secs(2));
        assert_eq!(b.delay(3, None, 0.999_999), Duration::from_secs(4).mul_f64(0.999_999));
        // Never sooner than the server asked.
        assert_eq!(b.delay(0, Some(Duration::from_secs(5)), 0.0), Duration::from_secs(5));
        assert_eq!(b.delay(1, Some(Duration::from_secs(5)), 0.5), Duration::from_millis(5500));
        assert_eq!(b.delay(0, None, 7.0), Duration::from_millis(500), "unit is clamped");
        // The jitter is spread over [0, 1).
        let draws: Vec<f64> = (0..2000).map(|_| jitter()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((800..1200).contains(&low), "{low} of 2000 below 0.5");
    }

    #[test]
    fn error_replies_are_refusals_of_the_request() {
        let reply = Envelope::new(
            types::ERROR,
            ErrorPayload { code: ErrorCode::NotAdmitted, reason: "wait".into(), refused: Some("chat".into()) },
        );
        let e = refused(types::CHAT, reply).unwrap_err();
        assert_eq!(e.refusal().map(|p| p.code), Some(ErrorCode::NotAdmitted));
        assert!(matches!(&e, Error::Refused { request, .. } if request == types::CHAT));

        let garbled = refused(types::CHAT, Envelope::new(types::ERROR, serde_json::json!({"why": 1}))).unwrap_err();
        assert!(matches!(garbled, Error::Protocol { .. }), "{garbled:?}");
        assert_eq!(garbled.refusal(), None);

        let pong = refused(types::PING, Envelope::new(types::PONG, serde_json::json!({}))).unwrap();
        assert_eq!(pong.type_, types::PONG);
    }
}
