//! Background work of the Meeting controller that no single reconcile owns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use switchboard_crds::Meeting;
use switchboard_crds::meeting::MeetingPhase;

use super::Context;
use super::spec::phase_name;
use crate::metrics::PhaseLabels;
use crate::seats::Ledger;

/// How often the phase gauges are counted.
const TICK: Duration = Duration::from_secs(5);
/// Ledgers are swept every this many ticks.
const SWEEP_EVERY: u64 = 6;

/// Every few seconds: phase gauges; every half minute: seats of meetings that
/// ended or are gone go back to their pods (a crash between a release and a
/// status write, or a Meeting deleted while it held seats).
pub async fn run(ctx: Arc<Context>) {
    // Seats of meetings not listed yet would look stale.
    ctx.caches.synced().await;
    let mut tick = tokio::time::interval(TICK);
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        round += 1;
        let meetings = ctx.caches.meetings.state();
        count_phases(&ctx, &meetings);
        // An empty cache that had meetings is being relisted: sweeping now would free every seat.
        if !round.is_multiple_of(SWEEP_EVERY) || !ctx.caches.meetings.is_empty() && meetings.is_empty() {
            continue;
        }
        ctx.book.forget_missing();
        sweep_ledgers(&ctx, &meetings).await;
    }
}

fn count_phases(ctx: &Context, meetings: &[Arc<Meeting>]) {
    let mut phases: HashMap<&'static str, i64> =
        ["None", "Scheduled", "Waiting", "Active", "Ended", "Failed"].into_iter().map(|p| (p, 0)).collect();
    let mut reserved = 0i64;
    for m in meetings {
        let s = m.status.as_ref();
        *phases.entry(phase_name(s.and_then(|s| s.phase))).or_default() += 1;
        if s.is_some_and(|s| s.reservation.is_some() && s.assignment.is_none()) {
            reserved += 1;
        }
    }
    for (phase, n) in phases {
        ctx.harness.metrics.meetings.get_or_create(&PhaseLabels { phase }).set(n);
    }
    ctx.harness.metrics.reservations.set(reserved);
}

/// Releases the seats of meetings that are gone, recreated (another uid), ended or failed.
async fn sweep_ledgers(ctx: &Context, meetings: &[Arc<Meeting>]) {
    let by_key: HashMap<(String, String), &Arc<Meeting>> =
        meetings.iter().map(|m| ((m.namespace().unwrap_or_default(), m.name_any()), m)).collect();
    for pod in ctx.caches.pods.state() {
        let ns = pod.namespace().unwrap_or_default();
        for (meeting, seats) in Ledger::of(&pod).0 {
            let stale = match by_key.get(&(ns.clone(), meeting.clone())) {
                None => true,
                Some(m) => {
                    m.uid().as_deref() != Some(seats.uid.as_str())
                        || m.status
                            .as_ref()
                            .is_some_and(|s| matches!(s.phase, Some(MeetingPhase::Ended | MeetingPhase::Failed)))
                }
            };
            if stale {
                tracing::info!(pod = %pod.name_any(), %meeting, "releasing seats of a meeting that ended or is gone");
                ctx.book.release(&ns, &pod.name_any(), &meeting, &seats.uid).await.ok();
            }
        }
    }
}
