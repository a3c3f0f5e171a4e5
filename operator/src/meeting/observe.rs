//! The snapshot one reconcile of a Meeting decides from: read from the shared
//! caches and the seat ledgers, plus the one thing they cannot answer (a room code
//! for a new meeting). Everything after this step works on plain data.

use std::sync::Arc;
use std::time::Instant;

use kube::ResourceExt;
use switchboard_crds::meeting::Assignment;
use switchboard_crds::{Meeting, SfuPool, SignalingPool};
use switchboard_fleet::health::Detected;

use super::decide::choose_pool;
use super::spec::{Invalid, matching_pools, pool_maximum};
use super::{Context, key};
use crate::Result;
use crate::error::Step;

/// What one reconcile knows.
pub struct Observed {
    pub meeting: Arc<Meeting>,
    pub now: jiff::Timestamp,
    /// The meeting's room code: from its status, or taken for it now.
    pub room_code: String,
    /// The namespace's signaling URL, if it has a SignalingPool.
    pub join_url: Option<String>,
    /// The pools that may host it (or why none may).
    pub pools: Result<Vec<PoolRoom>, Invalid>,
    /// The cached assignment's health, when it has one.
    pub assignment: Option<AssignmentSeen>,
    /// Our own writes the caches do not show yet.
    pub pending: Vec<MeetingWrite>,
    /// A breakout room's main meeting, as the cache has it (`None`: not a breakout room).
    pub parent: Option<ParentSeen>,
    /// People in this meeting's breakout rooms that have not ended: the main meeting is
    /// not empty while its people are in rooms. Counted only when it could end as
    /// empty (Active, nobody in it), since it reads every Meeting of the namespace.
    pub in_rooms: u64,
}

/// A breakout room's main meeting.
#[derive(Clone, Debug)]
pub enum ParentSeen {
    Missing,
    Found(Arc<Meeting>),
}

/// A matching pool and the participants it can still take at maxReplicas.
#[derive(Clone)]
pub struct PoolRoom {
    pub pool: Arc<SfuPool>,
    /// Its maximum, less the seats taken on its pods and the reservations of other
    /// meetings. Counted only where a decision needs it (a reservation ahead of a
    /// start, or a choice between pools): it reads every pod and Meeting of the
    /// namespace, too much for every reconcile of a placement storm.
    pub free: Option<u64>,
}

/// The cached assignment as the pods see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AssignmentSeen {
    /// Its pods that failed or are leaving, with why and since when.
    pub faults: Vec<(String, Detected)>,
    /// Every one of its pods holds the meeting's seats in its ledger.
    pub booked: bool,
    /// Pods of the pool holding seats of this meeting outside the assignment (a
    /// move whose releases were lost). Looked for only after a migration.
    pub strays: Vec<String>,
}

/// A write of ours that a reconcile must not repeat before the caches show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MeetingWrite {
    /// A room code taken for the meeting, not yet in its status.
    RoomCode(String),
    /// The meeting was placed (an assignment written).
    Placed,
    /// A migration with this generation was written.
    Migrated { generation: i64 },
}

impl Observed {
    /// The matching pool named `name` (decisions name only pools observed here).
    pub fn pool(&self, name: &str) -> &SfuPool {
        let rooms = self.pools.as_deref().unwrap_or_default();
        rooms.iter().find(|r| r.pool.name_any() == name).map(|r| r.pool.as_ref()).expect("a matching pool")
    }
}

pub async fn observe(m: Arc<Meeting>, ctx: &Context, now: jiff::Timestamp) -> Result<Observed> {
    let status = m.status.clone().unwrap_or_default();
    let pending = ctx.expected.pending(&key(&m), Instant::now(), |w| match w {
        MeetingWrite::RoomCode(_) => status.room_code.is_some(),
        MeetingWrite::Placed => status.assignment.is_some(),
        MeetingWrite::Migrated { generation } => last_generation(&status) >= *generation,
    });
    let room_code = match (&status.room_code, pending_code(&pending)) {
        (Some(code), _) | (None, Some(code)) => code.clone(),
        (None, None) => {
            let code = ctx.codes.next().await.observing("a room code")?;
            ctx.expected.expect(&key(&m), MeetingWrite::RoomCode(code.clone()), Instant::now());
            code
        }
    };
    let ns = m.namespace().unwrap_or_default();
    let join_url =
        signaling_url(&ctx.signaling.state(), &ns).map(|u| format!("{}/j/{room_code}", u.trim_end_matches('/')));
    let pools = matching_pools(&m, &ctx.caches.pools.state()).map(|pools| pool_rooms(ctx, &m, pools, now));
    let assignment = match (&status.assignment, pools.as_ref().ok().and_then(|p| choose_pool(&status, p))) {
        (Some(a), Some(room)) => Some(assignment_seen(ctx, &m, &room.pool, a, now)),
        _ => None,
    };
    let parent = m.spec.parent_ref.as_ref().map(|p| {
        match ctx.caches.meetings.get(&kube::runtime::reflector::ObjectRef::new(&p.name).within(&ns)) {
            Some(parent) => ParentSeen::Found(parent),
            None => ParentSeen::Missing,
        }
    });
    let empty = status.phase == Some(switchboard_crds::meeting::MeetingPhase::Active)
        && status.participants.as_ref().is_none_or(|p| p.current <= 0);
    let in_rooms = if empty && m.spec.parent_ref.is_none() { people_in_rooms(ctx, &m) } else { 0 };
    Ok(Observed { meeting: m, now, room_code, join_url, pools, assignment, pending, parent, in_rooms })
}

/// People in the breakout rooms of `main` that have not ended.
fn people_in_rooms(ctx: &Context, main: &Meeting) -> u64 {
    let (ns, name) = (main.namespace(), main.name_any());
    ctx.caches
        .meetings
        .state()
        .iter()
        .filter(|r| r.namespace() == ns && r.spec.parent_ref.as_ref().is_some_and(|p| p.name == name))
        .filter_map(|r| r.status.as_ref())
        .filter(|s| s.phase != Some(switchboard_crds::meeting::MeetingPhase::Ended))
        .map(|s| s.participants.as_ref().map_or(0, |p| p.current.max(0) as u64))
        .sum()
}

fn pending_code(pending: &[MeetingWrite]) -> Option<&String> {
    pending.iter().find_map(|w| match w {
        MeetingWrite::RoomCode(code) => Some(code),
        _ => None,
    })
}

pub fn last_generation(s: &switchboard_crds::MeetingStatus) -> i64 {
    s.migrations.last().map_or(0, |m| m.generation)
}

/// The namespace's signaling URL: of its first SignalingPool by name.
fn signaling_url(pools: &[Arc<SignalingPool>], ns: &str) -> Option<String> {
    pools
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(ns))
        .min_by_key(|p| p.name_any())
        .map(|p| p.spec.public_url.clone())
}

fn pool_rooms(ctx: &Context, m: &Meeting, pools: Vec<Arc<SfuPool>>, now: jiff::Timestamp) -> Vec<PoolRoom> {
    let status = m.status.as_ref();
    let held = status.and_then(|s| s.assignment.as_ref().map(|a| &a.pool).or(s.reservation.as_ref().map(|r| &r.pool)));
    let held_matches = held.is_some_and(|h| pools.iter().any(|p| &p.name_any() == h));
    let reserves = m.spec.schedule.as_ref().is_some_and(|s| s.start.0 > now);
    let choosing = pools.len() > 1 && !held_matches;
    let name = m.name_any();
    pools
        .into_iter()
        .map(|pool| {
            let free = (reserves || choosing).then(|| {
                let ns = pool.namespace().unwrap_or_default();
                let committed = pool_taken(ctx, &pool)
                    + crate::seats::pool_reserved(&ctx.caches.meetings, &ns, &pool.name_any(), Some(&name));
                pool_maximum(&pool).saturating_sub(committed)
            });
            PoolRoom { pool, free }
        })
        .collect()
}

/// Seats taken in a pool: every pod's ledger (with writes in flight).
fn pool_taken(ctx: &Context, pool: &SfuPool) -> u64 {
    let ns = pool.namespace().unwrap_or_default();
    ctx.caches.pool_pods(pool).iter().map(|p| ctx.book.taken(&ns, &p.name_any())).sum()
}

fn assignment_seen(ctx: &Context, m: &Meeting, pool: &SfuPool, a: &Assignment, now: jiff::Timestamp) -> AssignmentSeen {
    let (ns, name, uid) = (m.namespace().unwrap_or_default(), m.name_any(), m.uid().unwrap_or_default());
    let pods = pods_of(a);
    let faults = pods
        .iter()
        .filter_map(|pod| ctx.caches.judge_named(pool, &ns, pod, now).fault.map(|d| (pod.clone(), d)))
        .collect();
    let booked = pods.iter().all(|pod| ctx.book.holds(&ns, pod, &name, &uid));
    let moved_before = m.status.as_ref().is_some_and(|s| last_generation(s) > 0);
    let strays = if moved_before { stray_seats(ctx, pool, &name, &uid, &pods) } else { Vec::new() };
    AssignmentSeen { faults, booked, strays }
}

/// The pods of an assignment: its origin, then its edges.
pub fn pods_of(a: &Assignment) -> Vec<String> {
    std::iter::once(&a.origin).chain(&a.edges).map(|e| e.pod.clone()).collect()
}

/// Pods of `pool` whose ledgers hold seats of this meeting, other than `keep`.
pub fn stray_seats(ctx: &Context, pool: &SfuPool, name: &str, uid: &str, keep: &[String]) -> Vec<String> {
    let ns = pool.namespace().unwrap_or_default();
    ctx.caches
        .pool_pods(pool)
        .iter()
        .map(|p| p.name_any())
        .filter(|pod| !keep.contains(pod) && ctx.book.holds(&ns, pod, name, uid))
        .collect()
}
