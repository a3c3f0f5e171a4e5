//! What a Meeting's spec means against the pools there are (pure): the pools it may
//! use, whether the operator can act on it at all, and its lifecycle timing.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use switchboard_crds::meeting::MeetingPhase;
use switchboard_crds::sfu_pool::PlacementStrategy;
use switchboard_crds::{Meeting, MeetingStatus, SfuPool};
use switchboard_placement::lifecycle::{self, Phase};
use switchboard_placement::place;

/// A scheduled start this long before the Meeting was created is refused.
const START_SLACK: Duration = Duration::from_secs(60);
const DEFAULT_EMPTY_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(900);
/// How long an ended ad-hoc meeting (no schedule) stays when it sets no TTL:
/// meetings created on the fly must not pile up.
pub const DEFAULT_AD_HOC_TTL: Duration = Duration::from_secs(3600);

/// A spec the operator cannot act on, with the condition reason that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// Pools that may host the meeting: same namespace, its region, its selector.
pub fn matching_pools(m: &Meeting, pools: &[Arc<SfuPool>]) -> Result<Vec<Arc<SfuPool>>, Invalid> {
    let ns = m.namespace();
    let selector: Option<Selector> = match &m.spec.sfu_pool_selector {
        Some(s) => Some(
            Selector::try_from(s.clone())
                .map_err(|e| Invalid { reason: "InvalidSelector", message: format!("spec.sfuPoolSelector: {e}") })?,
        ),
        None => None,
    };
    let mut out: Vec<Arc<SfuPool>> = pools
        .iter()
        .filter(|p| p.namespace() == ns && p.metadata.deletion_timestamp.is_none())
        .filter(|p| m.spec.region.is_none() || p.spec.region == m.spec.region)
        .filter(|p| selector.as_ref().is_none_or(|s| s.matches(p.labels())))
        .cloned()
        .collect();
    out.sort_by_key(|p| p.name_any());
    Ok(out)
}

/// The most participants a pool can ever hold: every pod at max, less relay links.
pub fn pool_maximum(pool: &SfuPool) -> u64 {
    let pods = pool.spec.autoscaling.max_replicas.max(0) as u64;
    let per_pod = pool.spec.capacity.participants_per_pod.max(0) as u64;
    (pods * per_pod).saturating_sub(2 * pods.saturating_sub(1))
}

/// Checks what the spec asks against the pools there are (pure).
pub fn validate(m: &Meeting, pools: &[Arc<SfuPool>], status: &MeetingStatus) -> Result<(), Invalid> {
    let created = m.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if let (Some(schedule), Some(created)) = (&m.spec.schedule, created) {
        let started = status.started_at.is_some();
        let late =
            created.duration_since(schedule.start.0) > jiff::SignedDuration::try_from(START_SLACK).expect("small");
        if late && !started {
            return Err(Invalid {
                reason: "StartInPast",
                message: format!(
                    "spec.schedule.start {} is before the meeting was created ({})",
                    schedule.start.0, created
                ),
            });
        }
    }
    if pools.is_empty() {
        let wanted = match (&m.spec.region, &m.spec.sfu_pool_selector) {
            (Some(r), Some(_)) => format!("in region {r} matching spec.sfuPoolSelector"),
            (Some(r), None) => format!("in region {r}"),
            (None, Some(_)) => "matching spec.sfuPoolSelector".into(),
            (None, None) => "in the namespace".into(),
        };
        return Err(Invalid { reason: "NoMatchingPool", message: format!("no SfuPool {wanted}") });
    }
    let expected = m.spec.participants.expected.max(1) as u64;
    let largest = pools.iter().map(|p| pool_maximum(p)).max().unwrap_or(0);
    if expected > largest {
        return Err(Invalid {
            reason: "ExceedsPoolMaximum",
            message: format!(
                "spec.participants.expected {expected} is more than the largest matching pool can ever hold ({largest} at maxReplicas)"
            ),
        });
    }
    Ok(())
}

/// The lifecycle's timing: the pool's pre-provisioning and the meeting's own timeouts.
pub fn timing(m: &Meeting, pool: Option<&SfuPool>) -> lifecycle::Timing {
    let pre = pool.map(|p| p.spec.pre_provisioning.clone()).unwrap_or_default();
    lifecycle::Timing {
        lead_time: pre.lead_time.as_std(),
        release_after: pre.release_after.as_std(),
        empty_timeout: m.spec.empty_timeout.as_ref().map_or(DEFAULT_EMPTY_TIMEOUT, |d| d.as_std()),
        grace_period: m
            .spec
            .schedule
            .as_ref()
            .and_then(|s| s.grace_period.as_ref())
            .map_or(DEFAULT_GRACE_PERIOD, |d| d.as_std()),
        ttl_after_ended: match (&m.spec.ttl_after_ended, &m.spec.schedule) {
            (Some(ttl), _) => Some(ttl.as_std()),
            (None, None) => Some(DEFAULT_AD_HOC_TTL),
            (None, Some(_)) => None,
        },
    }
}

/// The meeting as the lifecycle core sees it.
pub fn lifecycle_view(m: &Meeting, current: &MeetingStatus, now: jiff::Timestamp) -> lifecycle::View {
    lifecycle::View {
        created: m.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0),
        start: m.spec.schedule.as_ref().map(|s| s.start.0),
        expected_duration: m.spec.schedule.as_ref().and_then(|s| s.expected_duration.as_ref()).map(|d| d.as_std()),
        phase: match current.phase {
            Some(MeetingPhase::Failed) | None => None,
            Some(p) => Some(phase_of(p)),
        },
        started_at: current.started_at.as_ref().map(|t| t.0),
        ended_at: current.ended_at.as_ref().map(|t| t.0),
        empty_since: current.empty_since.as_ref().map(|t| t.0),
        participants: current.participants.as_ref().map_or(0, |p| p.current.max(0) as u64),
        placed_at: current.assignment.as_ref().and_then(|a| a.at.as_ref()).map(|t| t.0),
        end_requested: current.end_requested.as_ref().map(|r| r.at.0),
        // Known from the main meeting, not from this one (see `decide`).
        parent_ended: false,
    }
}

pub fn strategy_of(pool: &SfuPool) -> place::Strategy {
    match pool.spec.placement.strategy {
        PlacementStrategy::Packed => place::Strategy::Packed,
        PlacementStrategy::Distributed => place::Strategy::Distributed,
    }
}

fn phase_of(p: MeetingPhase) -> Phase {
    match p {
        MeetingPhase::Scheduled => Phase::Scheduled,
        MeetingPhase::Waiting => Phase::Waiting,
        MeetingPhase::Active => Phase::Active,
        MeetingPhase::Ended => Phase::Ended,
        MeetingPhase::Failed => Phase::Failed,
    }
}

pub fn api_phase(p: Phase) -> MeetingPhase {
    match p {
        Phase::Scheduled => MeetingPhase::Scheduled,
        Phase::Waiting => MeetingPhase::Waiting,
        Phase::Active => MeetingPhase::Active,
        Phase::Ended => MeetingPhase::Ended,
        Phase::Failed => MeetingPhase::Failed,
    }
}

pub fn phase_name(p: Option<MeetingPhase>) -> &'static str {
    match p {
        None => "None",
        Some(MeetingPhase::Scheduled) => "Scheduled",
        Some(MeetingPhase::Waiting) => "Waiting",
        Some(MeetingPhase::Active) => "Active",
        Some(MeetingPhase::Ended) => "Ended",
        Some(MeetingPhase::Failed) => "Failed",
    }
}
