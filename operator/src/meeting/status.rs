//! The Meeting's next status (pure): the decision completed with what `apply`
//! did (the new assignment, a move, or why neither happened), the conditions and
//! Events that say so, and when to look again.

use std::time::Duration;

use kube::runtime::events::EventType;
use switchboard_crds::MeetingStatus;
use switchboard_crds::common::Time;
use switchboard_crds::meeting::{MeetingPhase, Migration, Reservation};
use switchboard_placement::lifecycle::EndReason;

use super::apply::{Moved, NotPlaced, Outcome};
use super::decide::{Decision, Holding, Note, Tally, has_reason};
use super::observe::{MeetingWrite, Observed, last_generation};
use super::spec::phase_name;
use crate::conditions::condition_at;

/// Migrations a Meeting's status keeps (the latest).
const MIGRATIONS_KEPT: usize = 20;
/// How soon an unplaced meeting tries again (new pods, freed seats).
pub const PLACEMENT_RETRY: Duration = Duration::from_secs(1);

/// Everything one reconcile writes and reports.
#[derive(Clone, Debug)]
pub struct Finished {
    pub status: MeetingStatus,
    pub events: Vec<Note>,
    pub tallies: Vec<Tally>,
    pub requeue: Option<Duration>,
    pub delete: bool,
    pub triggers: Vec<String>,
    /// Pods a move left: their seats are released once the status names the new ones.
    pub release_after: Vec<String>,
    /// The placement or move written, until the caches show it.
    pub wrote: Option<MeetingWrite>,
    /// A move: when its fault became detectable.
    pub moved_since: Option<jiff::Timestamp>,
}

pub fn finish(o: &Observed, d: Decision, outcome: Outcome) -> Finished {
    let current = o.meeting.status.clone().unwrap_or_default();
    let invalid = d.hold == Holding::Invalid;
    let assigning = matches!(d.hold, Holding::Keep { .. } | Holding::Migrate { .. } | Holding::Place { .. });
    let mut f = Finished {
        status: MeetingStatus { conditions: d.conditions, ..d.status },
        events: d.events,
        tallies: d.tallies,
        requeue: d.requeue,
        delete: d.delete,
        triggers: d.triggers,
        release_after: Vec::new(),
        wrote: None,
        moved_since: None,
    };
    match outcome {
        Outcome::Nothing => {}
        Outcome::Placed(Ok(a)) => placed(&mut f, o, &current, a),
        Outcome::Placed(Err(not)) => not_placed(&mut f, o, &current, &d.hold, not),
        Outcome::Moved(Ok(moved)) => migrated(&mut f, o, &d.hold, moved),
        Outcome::Moved(Err(not)) => not_moved(&mut f, o, &current, &d.hold, not),
    }
    if invalid {
        return f;
    }
    if assigning {
        assigned_condition(&mut f, o, &current);
    }
    ended_and_phase(&mut f, o, &current, d.end_reason);
    f
}

fn placed(f: &mut Finished, o: &Observed, current: &MeetingStatus, a: switchboard_crds::meeting::Assignment) {
    let view = super::spec::lifecycle_view(&o.meeting, current, o.now);
    let due = switchboard_placement::lifecycle::due(&view);
    let latency = o.now.duration_since(due.max(view.created)).as_secs_f64().max(0.0);
    f.tallies.push(Tally::PlacementLatency(latency));
    f.tallies.push(Tally::Placement { result: "placed", reason: "Placed" });
    let what = if a.edges.is_empty() {
        format!("placed on SFU pod {}", a.origin.pod)
    } else {
        format!("placed on {} SFU pods (origin {} and {} edges)", 1 + a.edges.len(), a.origin.pod, a.edges.len())
    };
    f.events.push((EventType::Normal, "Placed", what));
    if current.reservation.is_some() {
        f.triggers.push(a.pool.clone());
    }
    f.status.assignment = Some(a);
    f.wrote = Some(MeetingWrite::Placed);
}

/// Not placed: say why once, keep (or make) the reservation so that the pool keeps
/// the capacity coming, and try again soon.
fn not_placed(f: &mut Finished, o: &Observed, current: &MeetingStatus, hold: &Holding, not: NotPlaced) {
    let Holding::Place { pool, participants, .. } = hold else { unreachable!("a placement outcome of a placement") };
    f.tallies.push(Tally::Placement { result: "failed", reason: not.reason });
    if !has_reason(&current.conditions, "Placed", not.reason) {
        f.events.push((EventType::Warning, "PlacementFailed", not.message.clone()));
    }
    let generation = f.status.observed_generation;
    f.status.conditions.push(condition_at(
        &current.conditions,
        "Placed",
        false,
        not.reason,
        not.message,
        generation,
        o.now,
    ));
    let pool_name = pool.clone();
    f.status.reservation = current.reservation.clone().or_else(|| {
        Some(Reservation { pool: pool_name.clone(), participants: *participants as i32, from: Time(o.now) })
    });
    if current.reservation.is_none() {
        f.triggers.push(pool_name);
    }
    f.requeue = Some(PLACEMENT_RETRY);
}

fn migrated(f: &mut Finished, o: &Observed, hold: &Holding, moved: Moved) {
    let Holding::Migrate { faults, .. } = hold else { unreachable!("a move outcome of a move") };
    let mut generation = last_generation(&f.status);
    let mut notes = Vec::new();
    for (from, to) in &moved.moves {
        let reason = faults.iter().find(|(p, _)| p == from).map_or("Rebalanced", |(_, d)| d.fault.as_str());
        generation += 1;
        let at = Time(o.now);
        f.status.migrations.push(Migration {
            from: from.clone(),
            to: to.clone(),
            reason: reason.to_owned(),
            at,
            generation,
        });
        f.tallies.push(Tally::Migration { reason });
        notes.push(format!("{from} → {to} ({reason})"));
    }
    let excess = f.status.migrations.len().saturating_sub(MIGRATIONS_KEPT);
    f.status.migrations.drain(..excess);
    f.moved_since = Some(faults.iter().map(|(_, d)| d.at).min().unwrap_or(o.now));
    f.wrote = Some(MeetingWrite::Migrated { generation });
    f.events.push((EventType::Normal, "Migrated", format!("moved to healthy SFU pods: {}", notes.join(", "))));
    f.release_after = moved.left;
    f.triggers.push(moved.assignment.pool.clone());
    f.status.assignment = Some(moved.assignment);
}

/// Not moved: its seats stay where they are until it can move (the pod stays busy).
fn not_moved(f: &mut Finished, o: &Observed, current: &MeetingStatus, hold: &Holding, not: NotPlaced) {
    let Holding::Migrate { old, faults, .. } = hold else { unreachable!("a move outcome of a move") };
    f.tallies.push(Tally::Placement { result: "failed", reason: not.reason });
    let failed: Vec<&str> = faults.iter().map(|(p, _)| p.as_str()).collect();
    let message = format!("moving off {} failed: {}", failed.join(", "), not.message);
    if !has_reason(&current.conditions, "Placed", "MigrationPending") {
        f.events.push((EventType::Warning, "MigrationPending", message.clone()));
    }
    let generation = f.status.observed_generation;
    f.status.conditions.push(condition_at(
        &current.conditions,
        "Placed",
        false,
        "MigrationPending",
        message,
        generation,
        o.now,
    ));
    f.status.assignment = Some(old.as_ref().clone());
    f.requeue = Some(PLACEMENT_RETRY);
}

/// `Placed=True` for an assignment no other Placed condition speaks of.
fn assigned_condition(f: &mut Finished, o: &Observed, current: &MeetingStatus) {
    let Some(a) = f.status.assignment.as_ref().filter(|_| !f.status.conditions.iter().any(|c| c.type_ == "Placed"))
    else {
        return;
    };
    let message = if a.edges.is_empty() {
        format!("on {} ({})", a.origin.pod, a.origin.endpoint)
    } else {
        format!("cascaded over {} pods: origin {} and {} edges", 1 + a.edges.len(), a.origin.pod, a.edges.len())
    };
    let generation = f.status.observed_generation;
    f.status.conditions.push(condition_at(&current.conditions, "Placed", true, "Assigned", message, generation, o.now));
}

/// The `Ended` condition (set once, then kept) and an Event for a new phase.
fn ended_and_phase(f: &mut Finished, o: &Observed, current: &MeetingStatus, end: Option<EndReason>) {
    let generation = f.status.observed_generation;
    if let Some(reason) = end {
        let by_host;
        let message = match reason {
            EndReason::Empty => "nobody was in the meeting for its empty timeout",
            EndReason::NeverStarted => "nobody joined in time; its capacity went back to the pool",
            EndReason::DurationExceeded => "it ran past its expected duration and grace period",
            EndReason::EndedByHost => {
                let who = current.end_requested.as_ref().map_or("?", |r| r.by.as_str());
                by_host = format!("host {who} ended the meeting for everyone");
                by_host.as_str()
            }
            EndReason::ParentEnded => "its main meeting ended (a breakout room ends with it)",
        };
        let ended = condition_at(&current.conditions, "Ended", true, reason.as_str(), message, generation, o.now);
        f.status.conditions.push(ended);
        f.events.push((EventType::Normal, "Ended", message.to_owned()));
    } else if let Some(c) = current.conditions.iter().find(|c| c.type_ == "Ended") {
        f.status.conditions.push(c.clone());
    }
    let placed_now = f.events.iter().any(|(_, reason, _)| *reason == "Placed");
    // Waiting and placed in one go say it in one event (`Placed`): one write fewer per meeting.
    let quiet = end.is_some() || (placed_now && f.status.phase == Some(MeetingPhase::Waiting));
    if current.phase == f.status.phase || quiet {
        return;
    }
    let note = match f.status.phase {
        Some(MeetingPhase::Scheduled) => "scheduled",
        Some(MeetingPhase::Waiting) => "due: waiting for participants",
        Some(MeetingPhase::Active) => "started: participants joined",
        _ => return,
    };
    f.events.push((EventType::Normal, phase_name(f.status.phase), note.to_owned()));
}
