//! A meeting's phase and what it needs, from what the operator observes.
//!
//! `Scheduled` (before the start; from `start − leadTime` it holds a reservation)
//! → `Waiting` (due: it holds an assignment on SFU pods) → `Active` (signaling
//! reports participants) → `Ended` (empty for `emptyTimeout`, past
//! `start + expectedDuration + gracePeriod`, nobody came in time, or a host ended it
//! for everyone). An ended
//! meeting is deleted after its TTL. `Failed` comes from validation, which the
//! caller does before asking.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Scheduled,
    Waiting,
    Active,
    Ended,
    Failed,
}

/// The durations that drive a meeting (pool and meeting settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Reserve this long before a scheduled start.
    pub lead_time: Duration,
    /// A scheduled meeting nobody joins ends (and frees its capacity) this long after its start.
    pub release_after: Duration,
    /// An Active meeting empty this long ends; so does an ad-hoc meeting nobody joins.
    pub empty_timeout: Duration,
    /// How long past `start + expectedDuration` a meeting may run.
    pub grace_period: Duration,
    pub ttl_after_ended: Option<Duration>,
}

/// What the operator observes of one meeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub created: Timestamp,
    /// Scheduled start; None for an ad-hoc meeting (due at creation).
    pub start: Option<Timestamp>,
    pub expected_duration: Option<Duration>,
    pub phase: Option<Phase>,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub empty_since: Option<Timestamp>,
    /// Participants signaling reports.
    pub participants: u64,
    /// When the current assignment was made, if it has one.
    pub placed_at: Option<Timestamp>,
    /// When a host ended the meeting for everyone, if one did.
    pub end_requested: Option<Timestamp>,
    /// A breakout room's main meeting ended (or is gone): the room ends with it.
    pub parent_ended: bool,
}

/// What the meeting should hold on SFU capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    Nothing,
    /// Expected participants counted against the pool, so it scales up ahead.
    Reservation,
    /// Seats on SFU pods.
    Assignment,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// Nobody left for `emptyTimeout`.
    Empty,
    /// Nobody joined in time; its capacity went back to the pool.
    NeverStarted,
    /// Ran past `start + expectedDuration + gracePeriod`.
    DurationExceeded,
    /// A host ended it for everyone.
    EndedByHost,
    /// A breakout room whose main meeting ended.
    ParentEnded,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Empty => "Empty",
            EndReason::NeverStarted => "NeverStarted",
            EndReason::DurationExceeded => "DurationExceeded",
            EndReason::EndedByHost => "EndedByHost",
            EndReason::ParentEnded => "ParentEnded",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub phase: Phase,
    pub hold: Hold,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub empty_since: Option<Timestamp>,
    /// Set when this decision ends the meeting.
    pub end_reason: Option<EndReason>,
    /// The TTL after the end has passed.
    pub delete: bool,
    /// When the decision changes with no new observation.
    pub recheck_after: Option<Duration>,
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MAX)
}

fn minus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)).unwrap_or(Timestamp::MIN)
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// When a meeting is due: its start, or its creation when ad hoc.
pub fn due(view: &View) -> Timestamp {
    view.start.unwrap_or(view.created)
}

pub fn decide(view: &View, timing: &Timing, now: Timestamp) -> Decision {
    let mut d = Decision {
        phase: view.phase.unwrap_or(Phase::Scheduled),
        hold: Hold::Nothing,
        started_at: view.started_at,
        ended_at: view.ended_at,
        empty_since: None,
        end_reason: None,
        delete: false,
        recheck_after: None,
    };
    let end = |mut d: Decision, reason: EndReason| {
        d.phase = Phase::Ended;
        d.hold = Hold::Nothing;
        d.ended_at = Some(now);
        d.empty_since = None;
        d.end_reason = Some(reason);
        d.recheck_after = timing.ttl_after_ended;
        d
    };
    if view.phase == Some(Phase::Ended) {
        let ended = view.ended_at.unwrap_or(now);
        d.ended_at = Some(ended);
        if let Some(ttl) = timing.ttl_after_ended {
            let at = plus(ended, ttl);
            d.delete = now >= at;
            d.recheck_after = (!d.delete).then(|| until(now, at));
        }
        return d;
    }
    // Whatever the phase: a host's end is final (signaling already let nobody stay).
    if view.end_requested.is_some() {
        return end(d, EndReason::EndedByHost);
    }
    // A breakout room does not outlive its main meeting, whoever is still in it.
    if view.parent_ended {
        return end(d, EndReason::ParentEnded);
    }
    let due = due(view);
    let active = view.phase == Some(Phase::Active) || view.participants > 0;
    if active {
        d.phase = Phase::Active;
        d.hold = Hold::Assignment;
        d.started_at = Some(view.started_at.unwrap_or(now));
        let mut next: Option<Timestamp> = None;
        if let Some(length) = view.expected_duration {
            let stop = plus(plus(view.start.unwrap_or(d.started_at.unwrap_or(now)), length), timing.grace_period);
            if now >= stop {
                return end(d, EndReason::DurationExceeded);
            }
            next = Some(stop);
        }
        if view.participants == 0 {
            let since = view.empty_since.unwrap_or(now);
            // Before its scheduled start, an emptied meeting waits for it: early
            // joiners who leave cannot end the meeting the others will join.
            let stop = plus(view.start.map_or(since, |start| since.max(start)), timing.empty_timeout);
            if now >= stop {
                return end(d, EndReason::Empty);
            }
            d.empty_since = Some(since);
            next = Some(next.map_or(stop, |n| n.min(stop)));
        }
        d.recheck_after = next.map(|n| until(now, n));
        return d;
    }
    if now < due {
        d.phase = Phase::Scheduled;
        let reserve_at = minus(due, timing.lead_time);
        if now >= reserve_at {
            d.hold = Hold::Reservation;
            d.recheck_after = Some(until(now, due));
        } else {
            d.recheck_after = Some(until(now, reserve_at));
        }
        return d;
    }
    d.phase = Phase::Waiting;
    d.hold = Hold::Assignment;
    let window = if view.start.is_some() { timing.release_after } else { timing.empty_timeout };
    let stop = plus(view.placed_at.map_or(due, |p| p.max(due)), window);
    if now >= stop {
        return end(d, EndReason::NeverStarted);
    }
    d.recheck_after = Some(until(now, stop));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn timing() -> Timing {
        Timing {
            lead_time: Duration::from_secs(600),
            release_after: Duration::from_secs(900),
            empty_timeout: Duration::from_secs(300),
            grace_period: Duration::from_secs(900),
            ttl_after_ended: Some(Duration::from_secs(3600)),
        }
    }

    fn scheduled(start: i64) -> View {
        View {
            created: t(0),
            start: Some(t(start)),
            expected_duration: Some(Duration::from_secs(3600)),
            phase: None,
            started_at: None,
            ended_at: None,
            empty_since: None,
            participants: 0,
            placed_at: None,
            end_requested: None,
            parent_ended: false,
        }
    }

    /// Walks a meeting through every phase on a simulated clock, feeding each
    /// decision back as the next observation, the way the controller does.
    #[test]
    fn a_scheduled_meeting_walks_through_every_phase() {
        let timing = timing();
        let mut view = scheduled(3600);
        let step = |view: &mut View, now: i64, participants: u64| {
            view.participants = participants;
            let d = decide(view, &timing, t(now));
            view.phase = Some(d.phase);
            view.started_at = d.started_at;
            view.ended_at = d.ended_at;
            view.empty_since = d.empty_since;
            if d.hold == Hold::Assignment && view.placed_at.is_none() {
                view.placed_at = Some(t(now));
            }
            d
        };
        let d = step(&mut view, 0, 0);
        assert_eq!((d.phase, d.hold), (Phase::Scheduled, Hold::Nothing));
        assert_eq!(d.recheck_after, Some(Duration::from_secs(3000)), "look again at start - leadTime");
        let d = step(&mut view, 3000, 0);
        assert_eq!((d.phase, d.hold), (Phase::Scheduled, Hold::Reservation));
        assert_eq!(d.recheck_after, Some(Duration::from_secs(600)));
        let d = step(&mut view, 3600, 0);
        assert_eq!((d.phase, d.hold), (Phase::Waiting, Hold::Assignment));
        let d = step(&mut view, 3700, 3);
        assert_eq!((d.phase, d.started_at), (Phase::Active, Some(t(3700))));
        let d = step(&mut view, 5000, 0);
        assert_eq!((d.phase, d.empty_since), (Phase::Active, Some(t(5000))));
        assert_eq!(d.recheck_after, Some(Duration::from_secs(300)));
        let d = step(&mut view, 5100, 2);
        assert_eq!((d.phase, d.empty_since), (Phase::Active, None), "someone came back");
        let d = step(&mut view, 5200, 0);
        assert_eq!(d.empty_since, Some(t(5200)));
        let d = step(&mut view, 5500, 0);
        assert_eq!((d.phase, d.end_reason, d.ended_at), (Phase::Ended, Some(EndReason::Empty), Some(t(5500))));
        assert_eq!(d.hold, Hold::Nothing);
        let d = step(&mut view, 6000, 0);
        assert!(!d.delete);
        assert_eq!(d.recheck_after, Some(Duration::from_secs(3100)));
        let d = step(&mut view, 9100, 0);
        assert!(d.delete, "TTL after the end");
    }

    #[test]
    fn a_reservation_nobody_uses_is_released_after_the_grace_period() {
        let mut view = scheduled(600);
        view.phase = Some(Phase::Waiting);
        view.placed_at = Some(t(600));
        assert_eq!(decide(&view, &timing(), t(1499)).phase, Phase::Waiting);
        let d = decide(&view, &timing(), t(1500));
        assert_eq!((d.phase, d.end_reason, d.hold), (Phase::Ended, Some(EndReason::NeverStarted), Hold::Nothing));
    }

    #[test]
    fn an_ad_hoc_meeting_is_due_at_once_and_ends_if_nobody_joins() {
        let view = View { start: None, expected_duration: None, ..scheduled(0) };
        let d = decide(&view, &timing(), t(1));
        assert_eq!((d.phase, d.hold), (Phase::Waiting, Hold::Assignment));
        let placed_late = View { placed_at: Some(t(200)), phase: Some(Phase::Waiting), ..view.clone() };
        assert_eq!(decide(&placed_late, &timing(), t(400)).phase, Phase::Waiting, "the window counts from placement");
        assert_eq!(decide(&placed_late, &timing(), t(500)).end_reason, Some(EndReason::NeverStarted));
    }

    #[test]
    fn a_meeting_past_its_length_and_grace_ends_even_when_busy() {
        let mut view = scheduled(0);
        view.phase = Some(Phase::Active);
        view.started_at = Some(t(0));
        view.participants = 40;
        assert_eq!(decide(&view, &timing(), t(4499)).phase, Phase::Active);
        assert_eq!(decide(&view, &timing(), t(4499)).recheck_after, Some(Duration::from_secs(1)));
        assert_eq!(decide(&view, &timing(), t(4500)).end_reason, Some(EndReason::DurationExceeded));
    }

    #[test]
    fn early_joiners_leaving_before_the_start_do_not_end_the_meeting() {
        // Starts at 1000; two join at 100 and leave at 200; the empty timeout is 300.
        let mut view = scheduled(1000);
        view.phase = Some(Phase::Active);
        view.started_at = Some(t(100));
        view.empty_since = Some(t(200));
        for now in [600, 999, 1000, 1299] {
            let d = decide(&view, &timing(), t(now));
            assert_eq!((d.phase, d.end_reason), (Phase::Active, None), "at {now}");
        }
        assert_eq!(decide(&view, &timing(), t(600)).recheck_after, Some(Duration::from_secs(700)));
        assert_eq!(decide(&view, &timing(), t(1300)).end_reason, Some(EndReason::Empty));
        // An ad-hoc meeting has no start to wait for.
        let ad_hoc = View { start: None, expected_duration: None, ..view };
        assert_eq!(decide(&ad_hoc, &timing(), t(500)).end_reason, Some(EndReason::Empty));
    }

    /// A host's end wins over every other rule, in every phase before `Ended`, and
    /// stays ended (the TTL counts from it) once the request has been acted on.
    #[test]
    fn a_host_ending_the_meeting_ends_it_in_any_phase() {
        let busy = View { phase: Some(Phase::Active), started_at: Some(t(0)), participants: 40, ..scheduled(0) };
        let early = View { phase: Some(Phase::Scheduled), ..scheduled(9000) };
        let waiting = View { phase: Some(Phase::Waiting), placed_at: Some(t(0)), ..scheduled(0) };
        for view in [busy, early, waiting] {
            let asked = View { end_requested: Some(t(100)), ..view.clone() };
            assert_eq!(decide(&view, &timing(), t(120)).end_reason, None, "{view:?}");
            let d = decide(&asked, &timing(), t(120));
            assert_eq!((d.phase, d.hold, d.end_reason), (Phase::Ended, Hold::Nothing, Some(EndReason::EndedByHost)));
            assert_eq!(d.ended_at, Some(t(120)));
            let after = View { phase: Some(d.phase), ended_at: d.ended_at, ..asked };
            let d = decide(&after, &timing(), t(200));
            assert_eq!((d.phase, d.end_reason, d.ended_at), (Phase::Ended, None, Some(t(120))), "ended once");
            assert_eq!(d.recheck_after, Some(Duration::from_secs(3520)));
        }
    }

    /// A breakout room ends with its main meeting in any phase, people in it or not.
    #[test]
    fn a_breakout_room_ends_when_its_main_meeting_does() {
        let busy = View { phase: Some(Phase::Active), started_at: Some(t(0)), participants: 4, ..scheduled(0) };
        let waiting = View { phase: Some(Phase::Waiting), placed_at: Some(t(0)), ..scheduled(0) };
        for view in [busy, waiting] {
            assert_eq!(decide(&view, &timing(), t(120)).end_reason, None, "{view:?}");
            let orphan = View { parent_ended: true, ..view.clone() };
            let d = decide(&orphan, &timing(), t(120));
            assert_eq!((d.phase, d.hold, d.end_reason), (Phase::Ended, Hold::Nothing, Some(EndReason::ParentEnded)));
        }
    }

    #[test]
    fn ended_without_ttl_stays() {
        let view = View { phase: Some(Phase::Ended), ended_at: Some(t(10)), ..scheduled(0) };
        let d = decide(&view, &Timing { ttl_after_ended: None, ..timing() }, t(1_000_000));
        assert_eq!((d.phase, d.delete, d.recheck_after), (Phase::Ended, false, None));
    }
}
