//! The connections this replica holds, and the Redis pub/sub that joins replicas: a
//! message for a meeting is published once on its channel, and every replica with
//! participants of that meeting delivers it to its own connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use switchboard_signaling_proto::{Envelope, Role};
use tokio::sync::mpsc;

use crate::store::{self, Audience, Bus, BusWhat};

/// What a connection's task is handed.
#[derive(Debug)]
pub enum Outbound {
    Deliver(Envelope),
    Command(BusWhat),
}

#[derive(Clone, Debug)]
pub struct Local {
    pub connection: String,
    pub tx: mpsc::Sender<Outbound>,
    pub role: Role,
}

type Locals = HashMap<String, HashMap<String, Local>>;

pub struct Hub {
    /// meeting name → participant id → connection.
    local: Mutex<Locals>,
    namespace: String,
    sink: tokio::sync::Mutex<redis::aio::PubSubSink>,
    pub dropped: prometheus_client::metrics::counter::Counter,
}

impl Hub {
    pub async fn start(store: &store::Store, namespace: &str) -> anyhow::Result<Arc<Self>> {
        let (sink, mut stream) = store.client.get_async_pubsub().await?.split();
        let hub = Arc::new(Self {
            local: Mutex::default(),
            namespace: namespace.into(),
            sink: tokio::sync::Mutex::new(sink),
            dropped: Default::default(),
        });
        let weak = Arc::downgrade(&hub);
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let Some(hub) = weak.upgrade() else { return };
                let channel = msg.get_channel_name().to_owned();
                let Some(key) = store::meeting_of_channel(&channel) else { continue };
                let Some(name) = key.strip_prefix(&format!("{}.", hub.namespace)) else { continue };
                match msg.get_payload::<String>().ok().and_then(|p| serde_json::from_str::<Bus>(&p).ok()) {
                    Some(bus) => hub.dispatch(name, bus),
                    None => tracing::warn!(%channel, "unreadable bus message"),
                }
            }
            tracing::error!("redis pub/sub stream ended");
        });
        Ok(hub)
    }

    /// Adds a connection; returns the one it replaces on this replica, if any.
    pub async fn register(&self, meeting: &str, participant: &str, local: Local) -> anyhow::Result<Option<Local>> {
        let (first, previous) = {
            let mut all = self.local.lock().unwrap();
            let first = !all.contains_key(meeting);
            (first, all.entry(meeting.into()).or_default().insert(participant.into(), local))
        };
        if first {
            self.sink.lock().await.subscribe(self.channel(meeting)).await?;
        }
        Ok(previous)
    }

    /// Removes the connection if it is still the participant's current one.
    pub async fn unregister(&self, meeting: &str, participant: &str, connection: &str) {
        let last = {
            let mut all = self.local.lock().unwrap();
            let Some(m) = all.get_mut(meeting) else { return };
            if m.get(participant).is_some_and(|l| l.connection == connection) {
                m.remove(participant);
            }
            let last = m.is_empty();
            if last {
                all.remove(meeting);
            }
            last
        };
        if last && let Err(e) = self.sink.lock().await.unsubscribe(self.channel(meeting)).await {
            tracing::warn!(error = %e, "unsubscribe");
        }
    }

    fn channel(&self, meeting: &str) -> String {
        store::channel(&crate::meetings::room_of(&self.namespace, meeting))
    }

    fn dispatch(&self, meeting: &str, bus: Bus) {
        let targets: Vec<Local> = {
            let all = self.local.lock().unwrap();
            let Some(m) = all.get(meeting) else { return };
            match &bus.to {
                Audience::All => m.values().cloned().collect(),
                Audience::Peer(p) => m.get(p).cloned().into_iter().collect(),
                Audience::Admitters => m.values().filter(|l| l.role.admits()).cloned().collect(),
            }
        };
        for t in targets {
            let out = match &bus.what {
                BusWhat::Deliver(env) => Outbound::Deliver(env.clone()),
                other => Outbound::Command(other.clone()),
            };
            // A connection that cannot keep up loses messages rather than holding up the meeting.
            if t.tx.try_send(out).is_err() {
                self.dropped.inc();
            }
        }
    }

    /// Meetings with connections here.
    pub fn meetings(&self) -> Vec<String> {
        self.local.lock().unwrap().keys().cloned().collect()
    }

    pub fn connections(&self) -> usize {
        self.local.lock().unwrap().values().map(HashMap::len).sum()
    }
}
