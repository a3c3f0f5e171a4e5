//! The Meeting controller's decision (pure): from the snapshot of `observe` and its
//! explicit `now`, whether the spec can be acted on, the lifecycle phase, and what
//! the meeting holds in its pool: nothing, a reservation ahead of its start, or
//! seats on SFU pods (kept, moved off failed pods, or placed).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use switchboard_crds::common::Time;
use switchboard_crds::meeting::{Assignment, MeetingPhase, Reservation};
use switchboard_crds::{MeetingStatus, SfuPool};
use switchboard_fleet::health::Detected;
use switchboard_placement::lifecycle::{self, EndReason, Hold};

use super::observe::{MeetingWrite, Observed, ParentSeen, PoolRoom, pods_of};
use super::spec::{Invalid, api_phase, lifecycle_view, timing, validate};
use crate::conditions::condition_at;

/// How often a Failed meeting is checked again without any change seen.
pub const FAILED_RECHECK: Duration = Duration::from_secs(10);
/// How often a breakout room looks at its main meeting again: it ends when that one
/// ends, which its own watch does not see.
pub const PARENT_RECHECK: Duration = Duration::from_secs(5);

/// An Event to publish: type, reason, note.
pub type Note = (EventType, &'static str, String);

/// A count for the operator's metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Tally {
    Placement {
        result: &'static str,
        reason: &'static str,
    },
    ReservationMade,
    /// Seconds from the meeting being due to its placement.
    PlacementLatency(f64),
    Migration {
        reason: &'static str,
    },
}

/// What the meeting is to hold, and what `apply` must do for it.
#[derive(Clone, Debug, PartialEq)]
pub enum Holding {
    /// The spec cannot be acted on: seats go back, the meeting is Failed.
    Invalid,
    /// No seats (a reservation, if any, is in the status): the assignment is released.
    Release,
    /// The assignment stays; seats an earlier move left elsewhere are released.
    Keep { strays: Vec<String> },
    /// Off its failed pods, onto healthy ones of its pool.
    Migrate { pool: String, old: Box<Assignment>, faults: Vec<(String, Detected)> },
    /// Seats for `participants` on Ready pods of `pool`; on the first of `beside` (a
    /// breakout room's main meeting's pods) that has room, if any does.
    Place { pool: String, participants: u64, beside: Vec<String> },
    /// The caches do not show our last placement or move yet: look again shortly,
    /// rather than place or move twice.
    WaitForCache,
}

/// The decision of one reconcile, before `apply`.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The status as known before apply: identity, phase, times, reservation,
    /// and the assignment when it is kept.
    pub status: MeetingStatus,
    pub conditions: Vec<Condition>,
    pub events: Vec<Note>,
    pub tallies: Vec<Tally>,
    pub hold: Holding,
    /// When to look again (`None`: only on a change).
    pub requeue: Option<Duration>,
    pub end_reason: Option<EndReason>,
    /// The TTL after the end has passed: delete the Meeting.
    pub delete: bool,
    /// Pools whose reservations change (the SfuPool controller re-plans them).
    pub triggers: Vec<String>,
}

/// The pool a meeting holds capacity in (its assignment's or reservation's), or else
/// the matching pool with the most room; ties go to the first by name.
pub fn choose_pool<'a>(current: &MeetingStatus, rooms: &'a [PoolRoom]) -> Option<&'a PoolRoom> {
    let held = current.assignment.as_ref().map(|a| &a.pool).or(current.reservation.as_ref().map(|r| &r.pool));
    if let Some(room) = held.and_then(|h| rooms.iter().find(|r| &r.pool.name_any() == h)) {
        return Some(room);
    }
    if rooms.len() == 1 {
        return rooms.first();
    }
    rooms.iter().max_by_key(|r| (r.free.unwrap_or(0), std::cmp::Reverse(r.pool.name_any())))
}

pub fn decide(o: &Observed) -> Decision {
    let m = &o.meeting;
    let current = m.status.clone().unwrap_or_default();
    let mut d = carried(o, &current);
    let ended = current.phase == Some(MeetingPhase::Ended);
    let rooms: &[PoolRoom] = o.pools.as_deref().unwrap_or_default();
    let pools: Vec<Arc<SfuPool>> = rooms.iter().map(|r| r.pool.clone()).collect();
    let validity = o
        .pools
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
        .and_then(|_| validate(m, &pools, &current))
        .and_then(|_| validate_parent(m, o.parent.as_ref(), &current));
    if let (false, Err(invalid)) = (ended, &validity) {
        return refuse(d, &current, invalid, o.now);
    }
    if !ended {
        d.conditions.push(condition_at(
            &current.conditions,
            "Valid",
            true,
            "Valid",
            "",
            d.status.observed_generation,
            o.now,
        ));
    }
    let room = choose_pool(&current, rooms);
    let timing = timing(m, room.map(|r| r.pool.as_ref()));
    let own = lifecycle_view(m, &current, o.now);
    let view = lifecycle::View {
        parent_ended: parent_ended(o.parent.as_ref(), &current),
        participants: own.participants + o.in_rooms,
        ..own
    };
    let lc = lifecycle::decide(&view, &timing, o.now);
    d.status.phase = Some(api_phase(lc.phase));
    d.status.started_at = lc.started_at.map(Time);
    d.status.ended_at = lc.ended_at.map(Time);
    d.status.empty_since = lc.empty_since.map(Time);
    d.requeue = lc.recheck_after;
    if o.parent.is_some() && !view.parent_ended && lc.phase != lifecycle::Phase::Ended {
        d.requeue = Some(d.requeue.map_or(PARENT_RECHECK, |r| r.min(PARENT_RECHECK)));
    }
    d.end_reason = lc.end_reason;
    d.delete = lc.delete;
    d.hold = match lc.hold {
        Hold::Nothing => Holding::Release,
        Hold::Reservation => reserve(&mut d, o, &current, room.expect("valid meetings have a pool"), &timing),
        Hold::Assignment => assign(&mut d, o, &current, room.expect("valid meetings have a pool")),
    };
    d
}

/// What every reconcile writes whatever it decides: identity and history.
fn carried(o: &Observed, current: &MeetingStatus) -> Decision {
    Decision {
        status: MeetingStatus {
            observed_generation: o.meeting.metadata.generation,
            room_code: Some(o.room_code.clone()),
            join_url: o.join_url.clone(),
            migrations: current.migrations.clone(),
            started_at: current.started_at.clone(),
            ended_at: current.ended_at.clone(),
            ..Default::default()
        },
        conditions: Vec::new(),
        events: Vec::new(),
        tallies: Vec::new(),
        hold: Holding::Release,
        requeue: None,
        end_reason: None,
        delete: false,
        triggers: Vec::new(),
    }
}

/// A spec the operator cannot act on: Failed, its seats released. Pool changes and
/// spec changes requeue it; the pool cache may lag the watch that triggered it, so
/// it is looked at again later too.
fn refuse(mut d: Decision, current: &MeetingStatus, invalid: &Invalid, now: jiff::Timestamp) -> Decision {
    d.status.phase = Some(MeetingPhase::Failed);
    let generation = d.status.observed_generation;
    d.conditions.push(condition_at(
        &current.conditions,
        "Valid",
        false,
        invalid.reason,
        invalid.message.clone(),
        generation,
        now,
    ));
    if current.phase != Some(MeetingPhase::Failed) {
        d.events.push((EventType::Warning, invalid.reason, invalid.message.clone()));
        d.tallies.push(Tally::Placement { result: "failed", reason: invalid.reason });
    }
    d.hold = Holding::Invalid;
    d.requeue = Some(FAILED_RECHECK);
    d
}

/// A reservation of the expected participants in the pool from `lead_time` before
/// the start, so that the pool scales up ahead; the condition says whether it fits.
fn reserve(
    d: &mut Decision,
    o: &Observed,
    current: &MeetingStatus,
    room: &PoolRoom,
    timing: &lifecycle::Timing,
) -> Holding {
    let (pool, m, now) = (&room.pool, &o.meeting, o.now);
    let expected = m.spec.participants.expected.max(1) as u64;
    let start = m.spec.schedule.as_ref().map_or(now, |s| s.start.0);
    let from = start.checked_sub(jiff::SignedDuration::try_from(timing.lead_time).unwrap_or_default()).unwrap_or(start);
    let reservation = Reservation { pool: pool.name_any(), participants: expected as i32, from: Time(from) };
    let free = room.free.unwrap_or(0);
    let generation = d.status.observed_generation;
    if free >= expected {
        let message = format!("{expected} participants reserved in pool {} from {from}", pool.name_any());
        d.conditions.push(condition_at(
            &current.conditions,
            "CapacityReserved",
            true,
            "Reserved",
            message,
            generation,
            now,
        ));
        if current.reservation.is_none() {
            let note = format!("reserved {expected} participants in pool {}", pool.name_any());
            d.events.push((EventType::Normal, "CapacityReserved", note));
            d.tallies.push(Tally::ReservationMade);
        }
    } else {
        let message = format!(
            "pool {} can hold {free} more participants at maxReplicas {}; {expected} expected",
            pool.name_any(),
            pool.spec.autoscaling.max_replicas
        );
        let reserved = condition_at(
            &current.conditions,
            "CapacityReserved",
            false,
            "PoolAtMaximum",
            message.clone(),
            generation,
            now,
        );
        d.conditions.push(reserved);
        if !has_reason(&current.conditions, "CapacityReserved", "PoolAtMaximum") {
            d.events.push((EventType::Warning, "PoolAtMaximum", message));
        }
    }
    if current.reservation.as_ref().map(|r| &r.pool) != Some(&reservation.pool) {
        d.triggers.push(reservation.pool.clone());
    }
    d.status.reservation = Some(reservation);
    Holding::Release
}

/// Seats on SFU pods: the assignment stays while its pods are healthy and their
/// ledgers hold its seats (a stale cached Meeting must not bring back seats
/// released since); it moves when a pod failed; otherwise the meeting is placed.
fn assign(d: &mut Decision, o: &Observed, current: &MeetingStatus, room: &PoolRoom) -> Holding {
    if o.pending.iter().any(|w| matches!(w, MeetingWrite::Migrated { .. })) {
        return Holding::WaitForCache;
    }
    let seen = o.assignment.clone().unwrap_or_default();
    match &current.assignment {
        Some(a) if seen.faults.is_empty() && seen.booked => {
            d.status.assignment = Some(a.clone());
            Holding::Keep { strays: seen.strays }
        }
        Some(a) if !seen.faults.is_empty() => {
            Holding::Migrate { pool: room.pool.name_any(), old: Box::new(a.clone()), faults: seen.faults }
        }
        _ if o.pending.contains(&MeetingWrite::Placed) => Holding::WaitForCache,
        _ => Holding::Place {
            pool: room.pool.name_any(),
            participants: o.meeting.spec.participants.expected.max(1) as u64,
            beside: beside_parent(o.parent.as_ref(), &room.pool.name_any()),
        },
    }
}

/// A breakout room's main meeting must exist (until the room started: then it has
/// ended, see [`parent_ended`]), not be a breakout room itself, and share its `e2ee`
/// (people move between the two without changing clients' keys or promises).
fn validate_parent(
    m: &switchboard_crds::Meeting,
    parent: Option<&ParentSeen>,
    current: &MeetingStatus,
) -> Result<(), Invalid> {
    let name = m.spec.parent_ref.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
    match parent {
        None => Ok(()),
        Some(ParentSeen::Missing) if current.started_at.is_some() => Ok(()),
        Some(ParentSeen::Missing) => {
            Err(Invalid { reason: "ParentNotFound", message: format!("spec.parentRef: no Meeting {name} here") })
        }
        Some(ParentSeen::Found(p)) if p.spec.parent_ref.is_some() => Err(Invalid {
            reason: "NestedBreakout",
            message: format!("spec.parentRef: {name} is a breakout room itself; rooms have no rooms"),
        }),
        Some(ParentSeen::Found(p)) if p.spec.e2ee != m.spec.e2ee => Err(Invalid {
            reason: "E2eeMismatch",
            message: format!("spec.e2ee must be that of the main meeting {name} ({})", p.spec.e2ee),
        }),
        Some(ParentSeen::Found(_)) => Ok(()),
    }
}

/// A breakout room's main meeting ended, was asked to end, or is gone after the room
/// started.
fn parent_ended(parent: Option<&ParentSeen>, current: &MeetingStatus) -> bool {
    match parent {
        None => false,
        Some(ParentSeen::Missing) => current.started_at.is_some(),
        Some(ParentSeen::Found(p)) => {
            p.status.as_ref().is_some_and(|s| s.phase == Some(MeetingPhase::Ended) || s.end_requested.is_some())
        }
    }
}

/// The pods a breakout room should go on: its main meeting's, when that meeting is
/// placed in the same pool.
fn beside_parent(parent: Option<&ParentSeen>, pool: &str) -> Vec<String> {
    match parent {
        Some(ParentSeen::Found(p)) => p
            .status
            .as_ref()
            .and_then(|s| s.assignment.as_ref())
            .filter(|a| a.pool == pool)
            .map(pods_of)
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

pub fn has_reason(conditions: &[Condition], type_: &str, reason: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.reason == reason)
}
