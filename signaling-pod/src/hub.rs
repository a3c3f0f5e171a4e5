//! The connections this replica holds, and the Redis pub/sub that joins replicas: a
//! message for a meeting is published once on its channel, and every replica with
//! participants of that meeting delivers it to its own connections.
//!
//! Messages reach a connection through its bounded queue; one that cannot keep up loses
//! them. What must not be lost — a removal, a takeover by another connection — does not
//! go through the queue: it trips the connection's [`Kill`] switch, which the
//! connection's task watches even while it is stuck writing to a slow client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use switchboard_signaling_proto::{Envelope, Role};
use tokio::sync::{mpsc, watch};

use crate::store::{self, Audience, Bus, BusWhat};

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
    sink: tokio::sync::Mutex<redis::aio::PubSubSink>,
    pub dropped: prometheus_client::metrics::counter::Counter,
}

impl Hub {
    pub async fn start(store: &store::Store) -> anyhow::Result<Arc<Self>> {
        let (sink, mut stream) = store.client.get_async_pubsub().await?.split();
        let hub = Arc::new(Self {
            local: Mutex::default(),
            sink: tokio::sync::Mutex::new(sink),
            dropped: Default::default(),
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let Some(hub) = weak.upgrade() else { return };
                let channel = msg.get_channel_name().to_owned();
                let Some(key) = store::meeting_of_channel(&channel) else { continue };
                match msg.get_payload::<String>().ok().and_then(|p| serde_json::from_str::<Bus>(&p).ok()) {
                    Some(bus) => hub.dispatch(key, bus),
                    None => tracing::warn!(%channel, "unreadable bus message"),
                }
            }
            tracing::error!("redis pub/sub stream ended");
        });
        Ok(hub)
    }

    /// Adds a connection to meeting `key`; returns the one it replaces on this replica, if any.
    pub async fn register(&self, key: &str, participant: &str, local: Local) -> anyhow::Result<Option<Local>> {
        let (first, previous) = {
            let mut all = self.local.lock().unwrap();
            let first = !all.contains_key(key);
            (first, all.entry(key.into()).or_default().insert(participant.into(), local))
        };
        if first {
            self.sink.lock().await.subscribe(store::channel(key)).await?;
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
        if last && let Err(e) = self.sink.lock().await.unsubscribe(store::channel(key)).await {
            tracing::warn!(error = %e, "unsubscribe");
        }
    }

    fn dispatch(&self, key: &str, bus: Bus) {
        let targets: Vec<Local> = {
            let all = self.local.lock().unwrap();
            let Some(m) = all.get(key) else { return };
            match &bus.to {
                Audience::All => m.values().cloned().collect(),
                Audience::Peer(p) => m.get(p).cloned().into_iter().collect(),
                Audience::Admitters => m.values().filter(|l| l.role.admits()).cloned().collect(),
                Audience::User(u) => m.values().filter(|l| &l.user == u).cloned().collect(),
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
    pub fn meetings(&self) -> Vec<String> {
        self.local.lock().unwrap().keys().cloned().collect()
    }

    pub fn connections(&self) -> usize {
        self.local.lock().unwrap().values().map(HashMap::len).sum()
    }
}
