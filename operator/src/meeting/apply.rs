//! The Meeting controller's writes: seats on SFU pods committed to (or released
//! from) the pods' ledgers. A placement or a move chooses its pods inside the
//! ledger's commit (`Book::reserve`), from the seats taken at that moment, so that
//! concurrent placements never over-commit a pod; a commit that loses a race is
//! rolled back and reported as `Contended`.

use std::collections::HashMap;

use kube::ResourceExt;
use switchboard_crds::common::Time;
use switchboard_crds::meeting::{Assignment, SfuEndpoint};
use switchboard_crds::{Meeting, SfuPool};
use switchboard_heartbeat::SfuState;
use switchboard_placement::place::{self, Candidate, Share, Shortfall};

use super::Context;
use super::decide::{Decision, Holding};
use super::observe::{Observed, pods_of, stray_seats};
use super::spec::strategy_of;
use crate::labels::*;
use crate::seats::{CommitError, Seats};

/// What `apply` did for a placement or a move.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Nothing to place or move.
    Nothing,
    Placed(Result<Assignment, NotPlaced>),
    Moved(Result<Moved, NotPlaced>),
}

/// Why a placement or a move did not happen.
#[derive(Clone, Debug, PartialEq)]
pub struct NotPlaced {
    pub reason: &'static str,
    pub message: String,
}

/// A migrated meeting's new assignment, its moves, and the pods it left.
#[derive(Clone, Debug, PartialEq)]
pub struct Moved {
    pub assignment: Assignment,
    pub moves: Vec<(String, String)>,
    pub left: Vec<String>,
}

/// The meeting and where its seats are recorded.
struct Holder<'a> {
    ns: String,
    name: String,
    uid: String,
    pool: &'a SfuPool,
}

pub async fn apply(ctx: &Context, o: &Observed, d: &Decision) -> Outcome {
    let m = &o.meeting;
    match &d.hold {
        Holding::Invalid | Holding::Release => {
            release_assignment(ctx, m).await;
            Outcome::Nothing
        }
        Holding::Keep { strays } => {
            release_in_background(ctx, m, strays.clone());
            Outcome::Nothing
        }
        Holding::WaitForCache => Outcome::Nothing,
        Holding::Place { pool, participants, beside } => {
            let holder = holder(m, o.pool(pool));
            Outcome::Placed(place_meeting(ctx, &holder, *participants, beside, o.now).await)
        }
        Holding::Migrate { pool, old, faults } => {
            let holder = holder(m, o.pool(pool));
            let failed: Vec<String> = faults.iter().map(|(p, _)| p.clone()).collect();
            Outcome::Moved(migrate_meeting(ctx, &holder, old, &failed, o.now).await)
        }
    }
}

fn holder<'a>(m: &Meeting, pool: &'a SfuPool) -> Holder<'a> {
    Holder { ns: pool.namespace().unwrap_or_default(), name: m.name_any(), uid: m.uid().unwrap_or_default(), pool }
}

/// Releases the seats of the cached assignment (a failed release is retried by
/// housekeeping), and tells its pool.
async fn release_assignment(ctx: &Context, m: &Meeting) {
    let Some(a) = m.status.as_ref().and_then(|s| s.assignment.as_ref()) else { return };
    let (ns, name, uid) = (m.namespace().unwrap_or_default(), m.name_any(), m.uid().unwrap_or_default());
    for pod in pods_of(a) {
        if let Err(e) = ctx.book.release(&ns, &pod, &name, &uid).await {
            tracing::warn!(%pod, error = %e, "releasing seats failed; housekeeping will retry");
        }
    }
    let _ = ctx.pool_trigger.unbounded_send(kube::runtime::reflector::ObjectRef::new(&a.pool).within(&ns));
}

/// Releases the meeting's seats on `pods` in the background; seats a failed
/// release leaves are strays, released by the meeting's next reconcile.
pub fn release_in_background(ctx: &Context, m: &Meeting, pods: Vec<String>) {
    if pods.is_empty() {
        return;
    }
    let (book, ns, name, uid) =
        (ctx.book.clone(), m.namespace().unwrap_or_default(), m.name_any(), m.uid().unwrap_or_default());
    tokio::spawn(async move {
        for pod in pods {
            if let Err(e) = book.release(&ns, &pod, &name, &uid).await {
                tracing::warn!(
                    %pod, meeting = %name, error = %e,
                    "releasing seats failed; the meeting's next reconcile retries"
                );
            }
        }
    });
}

/// A Ready SFU pod of a pool, able to take meetings.
pub(super) struct ReadyPod {
    pub name: String,
    pub node: Option<String>,
    pub zone: Option<String>,
    pub endpoint: String,
    /// Published plus subscribed tracks its heartbeat reports.
    pub tracks: u64,
}

/// The pods that may take new seats: Ready, heartbeat Ready, not draining or
/// failed, on a node that is Ready and schedulable.
fn ready_pods(ctx: &Context, pool: &SfuPool, now: jiff::Timestamp) -> Vec<ReadyPod> {
    let ns = pool.namespace().unwrap_or_default();
    ctx.caches
        .pool_pods(pool)
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !p.annotations().contains_key(DRAINING_ANNOTATION))
        .filter_map(|p| {
            let beat = ctx.caches.heartbeat(&ns, &p.name_any())?;
            let (view, verdict) = ctx.caches.judge(pool, &p, Some(&beat), now);
            let node_ok = view.node.as_deref().is_some_and(|n| ctx.caches.node(n).schedulable());
            if !view.ready || beat.heartbeat.state != SfuState::Ready || verdict.fault.is_some() || !node_ok {
                return None;
            }
            let load = beat.heartbeat.load;
            let tracks = u64::from(load.published_tracks) + u64::from(load.subscribed_tracks);
            Some(ReadyPod {
                name: view.name,
                node: view.node,
                zone: view.zone,
                endpoint: beat.heartbeat.endpoint,
                tracks,
            })
        })
        .collect()
}

/// A pool's track limit as one placement sees it (`capacity.tracksPerPod`).
#[derive(Clone, Copy, Debug)]
pub(super) struct TrackLimit {
    pub per_pod: u64,
    /// Participants of the meeting being placed.
    pub meeting_size: u64,
}

/// Ready pods as placement candidates, with the seats taken on each. Under a track
/// limit a pod's capacity for this meeting is also what its free tracks allow (pods in
/// `keep` already carry the meeting's tracks and keep their seats).
pub(super) fn candidates(
    ready: &[ReadyPod],
    taken: &HashMap<String, u64>,
    per_pod: u64,
    tracks: Option<TrackLimit>,
    keep: &[String],
) -> Vec<Candidate> {
    ready
        .iter()
        .map(|p| {
            let allocated = taken.get(&p.name).copied().unwrap_or(0);
            let capacity = match tracks {
                Some(t) if !keep.contains(&p.name) => {
                    per_pod.min(allocated + place::participants_within_tracks(t.per_pod, p.tracks, t.meeting_size))
                }
                _ => per_pod,
            };
            Candidate { pod: p.name.clone(), node: p.node.clone(), zone: p.zone.clone(), capacity, allocated }
        })
        .collect()
}

/// The tree of an assignment, as the placement core sees it.
fn shares_of(a: &Assignment) -> Vec<Share> {
    let all: Vec<&SfuEndpoint> = std::iter::once(&a.origin).chain(&a.edges).collect();
    all.iter()
        .map(|e| {
            let children = all.iter().filter(|c| c.parent.as_deref() == Some(e.pod.as_str())).count() as u64;
            Share {
                pod: e.pod.clone(),
                participants: e.participants.unwrap_or(0).max(0) as u64,
                parent: e.parent.clone(),
                relay_links: children + u64::from(e.parent.is_some()),
            }
        })
        .collect()
}

fn not_placed(pool: &SfuPool, shortfall: Shortfall) -> NotPlaced {
    match shortfall {
        Shortfall::NoReadyPods => NotPlaced {
            reason: "NoReadyPods",
            message: format!("pool {} has no healthy Ready SFU pod", pool.name_any()),
        },
        e @ Shortfall::InsufficientCapacity { .. } => {
            NotPlaced { reason: "InsufficientCapacity", message: format!("pool {}: {e}", pool.name_any()) }
        }
    }
}

/// Chooses shares among the Ready pods with `choose` (given the seats taken) and
/// commits the seats of the shares `is_new` says to write. On a lost race every seat
/// this commit wrote (outside `keep`) is released again. Seats an earlier attempt
/// left (it crashed before its status write) are released first.
async fn commit<T>(
    ctx: &Context,
    h: &Holder<'_>,
    ready: &[ReadyPod],
    keep: &[String],
    meeting_size: u64,
    verb: &str,
    choose: impl FnOnce(&[Candidate]) -> Result<(T, Vec<Share>), Shortfall>,
) -> Result<T, NotPlaced> {
    for pod in stray_seats(ctx, h.pool, &h.name, &h.uid, keep) {
        ctx.book.release(&h.ns, &pod, &h.name, &h.uid).await.ok();
    }
    let per_pod = h.pool.spec.capacity.participants_per_pod.max(1) as u64;
    let tracks = h.pool.spec.capacity.tracks_per_pod.map(|t| TrackLimit { per_pod: t.max(1) as u64, meeting_size });
    let names: Vec<String> = ready.iter().map(|p| p.name.clone()).collect();
    let (chosen, commits) = ctx
        .book
        .reserve(&h.ns, &names, |taken| match choose(&candidates(ready, taken, per_pod, tracks, keep)) {
            Ok((chosen, writes)) => {
                let seats = |s: &Share| Seats { uid: h.uid.clone(), seats: s.slots() };
                let adds = writes.iter().map(|s| (s.pod.clone(), h.name.clone(), seats(s), per_pod)).collect();
                (Ok(chosen), adds)
            }
            Err(e) => (Err(e), vec![]),
        })
        .await;
    let chosen = chosen.map_err(|e| not_placed(h.pool, e))?;
    let errors: Vec<String> =
        commits.iter().filter_map(|(_, r)| r.as_ref().err().map(CommitError::to_string)).collect();
    if errors.is_empty() {
        return Ok(chosen);
    }
    for (pod, r) in &commits {
        if r.is_ok() && !keep.contains(pod) {
            ctx.book.release(&h.ns, pod, &h.name, &h.uid).await.ok();
        }
    }
    Err(NotPlaced { reason: "Contended", message: format!("seats changed while {verb}: {}", errors.join("; ")) })
}

/// An endpoint of the new tree: from the Ready pod, or (a healthy pod of the old
/// tree that takes no new meetings, e.g. draining) as it was.
fn endpoint(s: &Share, ready: &[ReadyPod], old: Option<&Assignment>) -> SfuEndpoint {
    let participants = Some(s.participants as i32);
    match ready.iter().find(|p| p.name == s.pod) {
        Some(r) => SfuEndpoint {
            pod: s.pod.clone(),
            endpoint: r.endpoint.clone(),
            participants,
            parent: s.parent.clone(),
            node: r.node.clone(),
            zone: r.zone.clone(),
        },
        None => {
            let old = old.expect("chosen from the Ready pods or the old tree");
            let was =
                std::iter::once(&old.origin).chain(&old.edges).find(|e| e.pod == s.pod).expect("from the old tree");
            SfuEndpoint { participants, parent: s.parent.clone(), ..was.clone() }
        }
    }
}

fn tree(pool: String, shares: &[Share], ready: &[ReadyPod], old: Option<&Assignment>, at: Option<Time>) -> Assignment {
    let mut endpoints = shares.iter().map(|s| endpoint(s, ready, old));
    let origin = endpoints.next().expect("a placement has an origin");
    Assignment { pool, origin, edges: endpoints.collect(), at }
}

/// Seats for `participants` on Ready pods of the pool, committed to their ledgers.
async fn place_meeting(
    ctx: &Context,
    h: &Holder<'_>,
    participants: u64,
    beside: &[String],
    now: jiff::Timestamp,
) -> Result<Assignment, NotPlaced> {
    let ready = ready_pods(ctx, h.pool, now);
    let strategy = strategy_of(h.pool);
    // In the same ledger commit: a pod beside the main meeting is taken only with room.
    let shares = commit(ctx, h, &ready, &[], participants, "placing", |candidates| {
        let shares = match place::place_beside(candidates, beside, participants) {
            Some(shares) => shares,
            None => place::place(strategy, candidates, participants)?,
        };
        Ok((shares.clone(), shares))
    })
    .await?;
    Ok(tree(h.pool.name_any(), &shares, &ready, None, Some(Time(now))))
}

/// Moves a meeting off the failed pods of its assignment onto healthy Ready pods
/// of its pool: new seats are committed first; the old ones are released by the
/// caller once the status names the new pods.
async fn migrate_meeting(
    ctx: &Context,
    h: &Holder<'_>,
    old: &Assignment,
    failed: &[String],
    now: jiff::Timestamp,
) -> Result<Moved, NotPlaced> {
    let ready = ready_pods(ctx, h.pool, now);
    let strategy = strategy_of(h.pool);
    let shares = shares_of(old);
    let size = shares.iter().map(|s| s.participants).sum();
    let replacement = commit(ctx, h, &ready, &pods_of(old), size, "moving", |candidates| {
        let r = place::replace(strategy, candidates, &shares, failed)?;
        // Seats to write: every share whose pod or size is new.
        let writes = r
            .shares
            .iter()
            .filter(|s| !shares.iter().any(|o| o.pod == s.pod && o.slots() == s.slots()))
            .cloned()
            .collect();
        Ok((r, writes))
    })
    .await?;
    let assignment = tree(old.pool.clone(), &replacement.shares, &ready, Some(old), old.at.clone());
    let left =
        shares.iter().filter(|o| !replacement.shares.iter().any(|s| s.pod == o.pod)).map(|o| o.pod.clone()).collect();
    Ok(Moved { assignment, moves: replacement.moves, left })
}
