//! The connections this replica holds, and the Redis pub/sub that joins replicas: a
//! message for a meeting is published once on its channel, and every replica with
//! participants of that meeting delivers it to its own connections.
//!
//! Messages reach a connection through its bounded queue; one that cannot keep up loses
//! them. What must not be lost — a removal, a takeover by another connection — does not
//! go through the queue: it trips the connection's [`Kill`] switch, which the
//! connection's task watches even while it is stuck writing to a slow client.
//!
//! The pub/sub connection is supervised: when it ends (Redis restarted, a partition
//! the keep-alive [`PING`](PUBSUB_PING_EVERY) noticed) it is made again with a capped,
//! jittered backoff, every channel of the meetings with connections here is subscribed
//! again, and each connection is told to resync ([`BusWhat::Resync`]): what was
//! published meanwhile is lost, so the client gets the participants afresh. While it is
//! down, [`Hub::pubsub_up`] says why (`/readyz` answers 503 with it). Every sign of Redis
//! trouble is noted ([`Hub::note_trouble`]) for the reaper's grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};
use switchboard_signaling_proto::{Envelope, Role};
use tokio::sync::{mpsc, watch};

use crate::store::{self, Audience, Bus, BusWhat};

/// The pub/sub connection is pinged this often; no answer within as long ends it.
pub const PUBSUB_PING_EVERY: Duration = Duration::from_secs(5);
/// The first wait before connecting the pub/sub again; it doubles per failure up to
/// [`RECONNECT_MAX`], each wait jittered to between half and all of it.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(200);
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What a connection's task is handed.
#[derive(Debug)]
pub enum Outbound {
    Deliver(Envelope),
    Command(BusWhat),
}

/// Why a connection must close now.
#[derive(Clone, Debug, PartialEq)]
pub enum Kill {
    /// A host removed the user (`by`: the host's participant id).
    Removed { by: String },
    /// The session continued on another connection.
    TakenOver,
}

#[derive(Clone, Debug)]
pub struct Local {
    pub connection: String,
    pub tx: mpsc::Sender<Outbound>,
    pub role: Role,
    /// The user (the user token's `sub`).
    pub user: String,
    pub kill: Arc<watch::Sender<Option<Kill>>>,
}

impl Local {
    pub fn kill(&self, why: Kill) {
        self.kill.send_replace(Some(why));
    }
}

/// meeting key → participant id → connection.
type Locals = HashMap<String, HashMap<String, Local>>;

pub struct Hub {
    local: Mutex<Locals>,
    /// The live pub/sub connection's sink; `None` while it is down.
    sink: Mutex<Option<PubSubSink>>,
    health: Mutex<Health>,
    store: store::Store,
    pub dropped: prometheus_client::metrics::counter::Counter,
    /// Times the pub/sub connection was made again.
    pub reconnects: prometheus_client::metrics::counter::Counter,
}

struct Health {
    /// Why the pub/sub connection is down; `None` while it is up.
    down: Option<String>,
    /// When this replica last saw Redis fail, lose data or come back.
    trouble: Option<Instant>,
}

impl Hub {
    pub async fn start(store: &store::Store) -> anyhow::Result<Arc<Self>> {
        let hub = Arc::new(Self {
            local: Mutex::default(),
            sink: Mutex::default(),
            health: Mutex::new(Health { down: Some("not connected yet".into()), trouble: None }),
            store: store.clone(),
            dropped: Default::default(),
            reconnects: Default::default(),
        });
        let stream = hub.connect().await?;
        tokio::spawn(supervise(Arc::downgrade(&hub), stream));
        Ok(hub)
    }

    /// Makes the pub/sub connection and subscribes every meeting with connections here.
    async fn connect(&self) -> anyhow::Result<PubSubStream> {
        let pubsub = tokio::time::timeout(store::CONNECT_TIMEOUT, self.store.client.get_async_pubsub())
            .await
            .map_err(|_| anyhow::anyhow!("connecting took over {:?}", store::CONNECT_TIMEOUT))??;
        let (sink, stream) = pubsub.split();
        // The sink first: a meeting registered from now on subscribes itself; the ones
        // before are in the list below (subscribing twice does no harm).
        *self.sink.lock().unwrap() = Some(sink.clone());
        let channels: Vec<String> = self.meetings().iter().map(|k| store::channel(k)).collect();
        let subscribed = futures::future::join_all(channels.iter().map(|c| {
            let mut sink = sink.clone();
            async move { sink.subscribe(c).await }
        }));
        let failed = match tokio::time::timeout(store::CONNECT_TIMEOUT, subscribed).await {
            Ok(results) => results.into_iter().find_map(Result::err).map(|e| e.to_string()),
            Err(_) => Some(format!("subscribing took over {:?}", store::CONNECT_TIMEOUT)),
        };
        if let Some(e) = failed {
            *self.sink.lock().unwrap() = None;
            anyhow::bail!("subscribing: {e}");
        }
        let mut h = self.health.lock().unwrap();
        h.down = None;
        h.trouble = h.trouble.map(|_| Instant::now());
        Ok(stream)
    }

    /// The pub/sub connection is up; `Err`: why not.
    pub fn pubsub_up(&self) -> Result<(), String> {
        match &self.health.lock().unwrap().down {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }

    fn pubsub_down(&self, why: String) {
        *self.sink.lock().unwrap() = None;
        let mut h = self.health.lock().unwrap();
        h.down = Some(why);
        h.trouble = Some(Instant::now());
    }

    /// Redis failed, lost data or came back just now.
    pub fn note_trouble(&self) {
        self.health.lock().unwrap().trouble = Some(Instant::now());
    }

    /// The pub/sub is up and Redis has given no trouble for `grace`.
    pub fn settled_for(&self, grace: Duration) -> bool {
        let h = self.health.lock().unwrap();
        h.down.is_none() && h.trouble.is_none_or(|t| t.elapsed() >= grace)
    }

    /// Tells every connection here to write its participant back and resync its client.
    pub fn resync_all(&self) {
        let all: Vec<Local> = self.local.lock().unwrap().values().flat_map(|m| m.values().cloned()).collect();
        for l in all {
            if l.tx.try_send(Outbound::Command(BusWhat::Resync)).is_err() {
                self.dropped.inc();
            }
        }
    }

    fn sink(&self) -> Option<PubSubSink> {
        self.sink.lock().unwrap().clone()
    }

    /// Adds a connection to meeting `key`; returns the one it replaces on this replica, if any.
    pub async fn register(&self, key: &str, participant: &str, local: Local) -> anyhow::Result<Option<Local>> {
        let (first, previous) = {
            let mut all = self.local.lock().unwrap();
            let first = !all.contains_key(key);
            (first, all.entry(key.into()).or_default().insert(participant.into(), local))
        };
        // While the pub/sub is down, the reconnection subscribes it.
        if first
            && let Some(mut sink) = self.sink()
            && let Err(e) = sink.subscribe(store::channel(key)).await
        {
            tracing::warn!(error = %e, "subscribe");
        }
        Ok(previous)
    }

    /// Removes the connection if it is still the participant's current one.
    pub async fn unregister(&self, key: &str, participant: &str, connection: &str) {
        let last = {
            let mut all = self.local.lock().unwrap();
            let Some(m) = all.get_mut(key) else { return };
            if m.get(participant).is_some_and(|l| l.connection == connection) {
                m.remove(participant);
            }
            let last = m.is_empty();
            if last {
                all.remove(key);
            }
            last
        };
        if last
            && let Some(mut sink) = self.sink()
            && let Err(e) = sink.unsubscribe(store::channel(key)).await
        {
            tracing::warn!(error = %e, "unsubscribe");
        }
    }

    fn dispatch(&self, key: &str, bus: Bus) {
        // A removal is remembered by every replica serving the meeting (see `store.rs`).
        if let (Audience::User(user), BusWhat::Removed { .. }) = (&bus.to, &bus.what) {
            self.store.remember_removed(key, [user.clone()]);
        }
        let targets: Vec<Local> = {
            let mut all = self.local.lock().unwrap();
            let Some(m) = all.get_mut(key) else { return };
            // Who hears the admitters' notices follows the role.
            if let (Audience::Peer(p), BusWhat::RoleChanged { role, .. }) = (&bus.to, &bus.what)
                && let Some(l) = m.get_mut(p)
            {
                l.role = *role;
            }
            match &bus.to {
                Audience::All => m.values().cloned().collect(),
                Audience::Peer(p) => m.get(p).cloned().into_iter().collect(),
                Audience::Admitters => m.values().filter(|l| l.role.admits()).cloned().collect(),
                Audience::User(u) => m.values().filter(|l| &l.user == u).cloned().collect(),
                Audience::Publishers => m.values().filter(|l| l.role.publishes()).cloned().collect(),
            }
        };
        for t in targets {
            let out = match &bus.what {
                BusWhat::Removed { by } => {
                    t.kill(Kill::Removed { by: by.clone() });
                    continue;
                }
                BusWhat::TakenOver { connection } => {
                    if *connection != t.connection {
                        t.kill(Kill::TakenOver);
                    }
                    continue;
                }
                BusWhat::Deliver(env) => Outbound::Deliver(env.clone()),
                other => Outbound::Command(other.clone()),
            };
            // A connection that cannot keep up loses messages rather than holding up the meeting.
            if t.tx.try_send(out).is_err() {
                self.dropped.inc();
            }
        }
    }

    /// Keys of the meetings with connections here.
    /// Sends `env` to every connection of the meeting on this replica.
    pub fn deliver_local(&self, key: &str, env: &switchboard_signaling_proto::Envelope) {
        let targets: Vec<Local> =
            self.local.lock().unwrap().get(key).map(|m| m.values().cloned().collect()).unwrap_or_default();
        for t in targets {
            if t.tx.try_send(Outbound::Deliver(env.clone())).is_err() {
                self.dropped.inc();
            }
        }
    }

    pub fn meetings(&self) -> Vec<String> {
        self.local.lock().unwrap().keys().cloned().collect()
    }

    pub fn connections(&self) -> usize {
        self.local.lock().unwrap().values().map(HashMap::len).sum()
    }
}

/// Reads the pub/sub stream, and makes the connection again whenever it ends.
async fn supervise(hub: Weak<Hub>, mut stream: PubSubStream) {
    loop {
        let why = read(&hub, &mut stream).await;
        drop(stream);
        let Some(h) = hub.upgrade() else { return };
        tracing::error!(reason = %why, "redis pub/sub connection lost; reconnecting");
        h.pubsub_down(why);
        drop(h);
        let mut failures = 0;
        stream = loop {
            tokio::time::sleep(backoff(failures)).await;
            let Some(h) = hub.upgrade() else { return };
            match h.connect().await {
                Ok(stream) => {
                    h.reconnects.inc();
                    tracing::info!(meetings = h.meetings().len(), "redis pub/sub reconnected; resyncing connections");
                    h.resync_all();
                    break stream;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = format!("{e:#}"), failures, "redis pub/sub reconnect");
                    h.pubsub_down(format!("reconnecting (attempt {failures}): {e:#}"));
                }
            }
        };
    }
}

/// Delivers the stream's messages until it ends or a ping goes unanswered; returns why.
async fn read(hub: &Weak<Hub>, stream: &mut PubSubStream) -> String {
    let mut ping = tokio::time::interval(PUBSUB_PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return "the connection closed".into() };
                let Some(hub) = hub.upgrade() else { return "the hub is gone".into() };
                let channel = msg.get_channel_name().to_owned();
                let Some(key) = store::meeting_of_channel(&channel) else { continue };
                match msg.get_payload::<String>().ok().and_then(|p| serde_json::from_str::<Bus>(&p).ok()) {
                    Some(bus) => hub.dispatch(key, bus),
                    None => tracing::warn!(%channel, "unreadable bus message"),
                }
            }
            _ = ping.tick() => {
                let Some(mut sink) = hub.upgrade().and_then(|h| h.sink()) else { return "the hub is gone".into() };
                // Messages arriving meanwhile wait in the stream.
                match tokio::time::timeout(PUBSUB_PING_EVERY, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("ping failed: {e}"),
                    Err(_) => return format!("no answer to a ping within {PUBSUB_PING_EVERY:?}"),
                }
            }
        }
    }
}

/// The wait before reconnection attempt `failures` + 1: doubling from
/// [`RECONNECT_FIRST`] up to [`RECONNECT_MAX`], jittered to between half and all of it.
pub fn backoff(failures: u32) -> Duration {
    let full = RECONNECT_FIRST.saturating_mul(1u32 << failures.min(16)).min(RECONNECT_MAX);
    full.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnection_backs_off_doubling_capped_and_jittered() {
        for failures in 0..40 {
            let full = RECONNECT_FIRST.saturating_mul(1 << failures.min(16)).min(RECONNECT_MAX);
            for _ in 0..20 {
                let b = backoff(failures);
                assert!(b >= full / 2 && b <= full, "{failures}: {b:?} of {full:?}");
            }
        }
        assert!(backoff(0) <= RECONNECT_FIRST);
        assert!(backoff(100) >= RECONNECT_MAX / 2);
    }
}
