//! Every two seconds, for each meeting this replica has served: participants whose
//! presence expired are removed (and announced, and taken off their SFU), and the
//! count of those present is written to the Meeting's status. Ended meetings have
//! their Redis keys dropped. Every replica does this for its meetings; Redis decides
//! which one announces a departure, and equal counts are not written twice.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::meetings;
use crate::store::Bus;

pub const REPORT_EVERY: Duration = Duration::from_secs(2);

pub async fn run(app: Arc<App>) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let watched: Vec<String> = app.watched.lock().unwrap().iter().cloned().collect();
        for name in watched {
            if let Err(e) = pass(&app, &name).await {
                tracing::warn!(meeting = %name, error = %e, "participant report");
            }
        }
    }
}

async fn pass(app: &App, name: &str) -> anyhow::Result<()> {
    let key = app.meetings.key(name);
    let meeting = app.meetings.get(name);
    if meeting.as_deref().is_none_or(|m| meetings::open(m).is_err()) {
        app.store.forget_meeting(&key).await?;
        app.watched.lock().unwrap().remove(name);
        return Ok(());
    }
    let mut present = 0;
    let records = app.store.all(&key).await?;
    for r in &records {
        if app.store.holder(&key, &r.info.id).await?.is_some() {
            if r.info.admitted {
                present += 1;
            }
            continue;
        }
        if app.store.remove(&key, &r.info.id).await? {
            tracing::info!(meeting = %name, participant = %r.info.id, "presence expired");
            app.leave_sfu(r);
            app.store.publish(&key, &Bus::left(name, &r.info.id, "disconnected")).await?;
        }
    }
    app.meetings.report(name, present).await?;
    if records.is_empty() && !app.hub.meetings().iter().any(|m| m == name) {
        app.watched.lock().unwrap().remove(name);
    }
    Ok(())
}
