//! Every two seconds, for each meeting this replica has served: participants whose
//! presence expired are removed (and announced, and taken off their SFU), and the
//! count of those present is written to the Meeting's status. Ended meetings have
//! their Redis keys dropped. Every replica does this for its meetings; Redis decides
//! which one announces a departure, and equal counts are not written twice.
//!
//! On the same tick a replica of a SignalingPool records its open connections in Redis
//! next to its peers' and writes their sum to the pool's `status.connections` when the
//! pool shows another number. Every replica computes the same sum, so which one writes
//! does not matter; a replica that stops reporting drops out of it.
//!
//! Redis faults: on each tick a replica checks whether Redis lost data (`sb:epoch`, see
//! `store.rs`) and, if so, has its connections write their participants back at once; it
//! writes back the removed users it remembers for each meeting; and it reaps nobody
//! within [`REAP_GRACE`] of the last Redis trouble it saw.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::api::{Api, Patch, PatchParams};
use switchboard_crds::SignalingPool;

use crate::app::App;
use crate::meetings;
use crate::store::{Bus, PRESENCE_TTL, ReplicaConnections};

pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// The rule: a replica removes nobody for expired presence until this long has passed
/// since it last saw Redis in trouble — its pub/sub connection down or made again, a
/// Redis command failing, or Redis having lost data. Presence that expired while Redis
/// was unreachable, or that a flush or failover lost, is written again by each live
/// connection's refresh (every 10 s, and at once on reconnect) well within it; what is
/// still missing after it is a participant that is really gone.
pub const REAP_GRACE: Duration = Duration::from_secs(2 * PRESENCE_TTL.as_secs());
/// A replica silent for three reports is gone (killed, scaled in): its connections
/// are not counted.
pub const REPLICA_STALE_AFTER: Duration = Duration::from_secs(6);
/// Its record is deleted after this long (a restarted replica keeps its pod name a while).
const REPLICA_FORGOTTEN_AFTER: Duration = Duration::from_secs(600);
/// While the sum stays what the pool was last seen showing, the pool is read again only
/// this often (a peer with another view may have written since), not on every report.
const RECHECK_POOL_EVERY: u32 = 15;

/// What this replica last saw (or wrote) in its pool's `status.connections`.
#[derive(Default)]
struct ShownConnections {
    total: Option<i64>,
    reports_since_read: u32,
}

/// How often the audience's size is told (when it changed).
pub const AUDIENCE_EVERY: Duration = Duration::from_secs(1);

/// Every [`AUDIENCE_EVERY`], each meeting with connections here whose audience (admitted
/// viewers, a Webinar's attendees) changed size is told so: `audience {count}` to its
/// connections on this replica, read from Redis by each replica for its own. One
/// message a second at most, however many attendees come and go (see
/// `store::presence_audience`).
pub async fn tell_audience(app: Arc<App>) {
    let mut tick = tokio::time::interval(AUDIENCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut told: std::collections::HashMap<String, u64> = Default::default();
    loop {
        tick.tick().await;
        let keys = app.hub.meetings();
        told.retain(|k, _| keys.contains(k));
        for key in keys {
            let Ok(count) = app.store.audience(&key).await else { continue };
            if told.get(&key) == Some(&count) {
                continue;
            }
            told.insert(key.clone(), count);
            let name = app.watched.lock().unwrap().get(&key).cloned().unwrap_or_default();
            let env = switchboard_signaling_proto::Envelope::new(
                switchboard_signaling_proto::types::AUDIENCE,
                switchboard_signaling_proto::AudiencePayload { count },
            )
            .room(&name);
            app.hub.deliver_local(&key, &env);
        }
    }
}

pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pool_shows = ShownConnections::default();
    loop {
        tick.tick().await;
        match app.store.lost_data().await {
            Ok(false) => {}
            Ok(true) => {
                tracing::warn!("Redis lost its data (flushed, restarted empty or failed over): writing it back");
                app.hub.note_trouble();
                app.hub.resync_all();
            }
            Err(e) => {
                app.hub.note_trouble();
                tracing::warn!(error = %e, "redis epoch check");
            }
        }
        if let Some(pool) = app.cfg.pool.as_deref()
            && let Err(e) = report_connections(&app, pool, &mut pool_shows).await
        {
            tracing::warn!(%pool, error = %e, "connection report");
        }
        let watched: Vec<(String, String)> =
            app.watched.lock().unwrap().iter().map(|(k, n)| (k.clone(), n.clone())).collect();
        for (key, name) in watched {
            if let Err(e) = pass(&app, &key, &name).await {
                if e.downcast_ref::<redis::RedisError>().is_some() {
                    app.hub.note_trouble();
                }
                tracing::warn!(meeting = %name, error = %e, "participant report");
            }
        }
    }
}

/// One pass over meeting `name`, whose state is at `key` (the meeting as it was when
/// this replica first served it: if it was deleted, or deleted and created again, its
/// state goes).
async fn pass(app: &App, key: &str, name: &str) -> anyhow::Result<()> {
    let meeting = app.meetings.get(name);
    if meeting.as_deref().is_none_or(|m| meetings::open(m).is_err() || app.meetings.state_key(m) != key) {
        app.store.forget_meeting(key).await?;
        app.watched.lock().unwrap().remove(key);
        return Ok(());
    }
    app.store.sync_removed(key).await?;
    let reap = app.hub.settled_for(REAP_GRACE);
    let mut present = 0;
    let records = app.store.all(key).await?;
    for r in &records {
        if app.store.holder(key, &r.info.id).await?.is_some() {
            if r.info.admitted {
                present += 1;
            }
            continue;
        }
        if !reap {
            continue;
        }
        if app.store.remove(key, &r.info.id).await? {
            tracing::info!(meeting = %name, participant = %r.info.id, "presence expired");
            app.leave_sfu(r);
            app.store.publish(key, &Bus::left(name, &r.info, "disconnected", r.e2ee_public_key.is_some())).await?;
        }
    }
    app.meetings.report(name, present).await?;
    if records.is_empty() && !app.hub.meetings().iter().any(|m| m == key) {
        app.watched.lock().unwrap().remove(key);
    }
    Ok(())
}

/// The open connections of the pool's replicas that reported lately, and the replicas
/// whose records can go.
pub fn pool_connections(records: &[ReplicaConnections], now_ms: u64) -> (i64, Vec<String>) {
    let age = |r: &ReplicaConnections| Duration::from_millis(now_ms.saturating_sub(r.at_ms));
    let total = records.iter().filter(|r| age(r) <= REPLICA_STALE_AFTER).map(|r| r.connections as i64).sum();
    let gone = records.iter().filter(|r| age(r) > REPLICA_FORGOTTEN_AFTER).map(|r| r.replica.clone()).collect();
    (total, gone)
}

async fn report_connections(app: &App, pool: &str, shown: &mut ShownConnections) -> anyhow::Result<()> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let key = format!("{}/{pool}", app.cfg.namespace);
    let records = app.store.replica_connections(&key, &app.cfg.replica, app.hub.connections(), now_ms).await?;
    let (total, gone) = pool_connections(&records, now_ms);
    app.store.forget_replicas(&key, &gone).await?;
    shown.reports_since_read += 1;
    if shown.total == Some(total) && shown.reports_since_read < RECHECK_POOL_EVERY {
        return Ok(());
    }
    let api: Api<SignalingPool> = Api::namespaced(app.kube.clone(), &app.cfg.namespace);
    shown.total = api.get_status(pool).await?.status.and_then(|s| s.connections);
    shown.reports_since_read = 0;
    if shown.total != Some(total) {
        let patch = serde_json::json!({"status": {"connections": total}});
        let params = PatchParams { field_manager: Some(meetings::FIELD_MANAGER.into()), ..Default::default() };
        api.patch_status(pool, &params, &Patch::Merge(&patch)).await?;
        shown.total = Some(total);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(replica: &str, connections: usize, at_ms: u64) -> ReplicaConnections {
        ReplicaConnections { replica: replica.into(), connections, at_ms }
    }

    #[test]
    fn only_replicas_that_reported_lately_count_and_long_silent_ones_are_forgotten() {
        let now = 1_000_000_000;
        let records = [
            record("a", 120, now - 1_000),
            record("b", 80, now - 6_000),
            record("killed", 500, now - 7_000),
            record("scaled-in", 40, now - 601_000),
            // A peer whose clock runs ahead is fresh, not in the future.
            record("ahead", 3, now + 500),
        ];
        let (total, gone) = pool_connections(&records, now);
        assert_eq!(total, 120 + 80 + 3);
        assert_eq!(gone, vec!["scaled-in".to_owned()]);
        assert_eq!(pool_connections(&[], now), (0, vec![]));
    }
}
