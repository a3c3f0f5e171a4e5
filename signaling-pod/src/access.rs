//! Who is what in a meeting (pure: no IO).
//!
//! A user's role in a meeting comes from, in order:
//!
//! 1. the meeting's `spec.host`: that user is host;
//! 2. a role the user token scopes to this meeting: `meetings: {"<ns>/<name>": "<role>"}`,
//!    or `role` together with `mtg: "<ns>/<name>"`;
//! 3. otherwise the meeting's default: participant, or viewer in a Webinar (where only
//!    hosts, co-hosts and panelists — users granted `participant`/`panelist` for the
//!    meeting — publish). A bare `role` claim without a meeting can only lower this
//!    (`role: viewer` makes a viewer); `role: host` makes nobody host of anything.

use switchboard_crds::meeting::{Meeting, MeetingMode};
use switchboard_signaling_proto::Role;

use crate::auth::Identity;

/// What role scoping needs to know of a meeting.
#[derive(Clone, Debug, PartialEq)]
pub struct MeetingFacts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// `spec.host`
    pub host: &'a str,
    /// `spec.mode: Webinar`
    pub webinar: bool,
    /// An Interactive meeting past its `spec.escalation` size: newcomers join as viewers.
    pub escalated: bool,
}

impl<'a> MeetingFacts<'a> {
    pub fn of(namespace: &'a str, m: &'a Meeting) -> Self {
        Self {
            namespace,
            name: m.metadata.name.as_deref().unwrap_or_default(),
            host: &m.spec.host,
            webinar: m.spec.mode == MeetingMode::Webinar,
            escalated: false,
        }
    }

    /// The same meeting with `present` participants in it: escalated when it is
    /// Interactive and `spec.escalation` says so.
    pub fn with_present(mut self, m: &Meeting, present: i32) -> Self {
        self.escalated = !self.webinar && m.spec.escalation.is_some_and(|e| present >= e.attendees_from);
        self
    }

    /// How tokens name the meeting: `<namespace>/<name>`.
    pub fn claim_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The role `who` has in meeting `m`.
pub fn role_in(m: &MeetingFacts, who: &Identity) -> Role {
    if who.sub == m.host {
        return Role::Host;
    }
    if let Some(role) = who.scoped.get(&m.claim_key()) {
        return *role;
    }
    let default = if m.webinar || m.escalated { Role::Viewer } else { Role::Participant };
    match who.global_role {
        Some(global) => default.least_privileged(global),
        None => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(sub: &str) -> Identity {
        Identity { sub: sub.into(), ..Default::default() }
    }

    const STANDUP: MeetingFacts =
        MeetingFacts { namespace: "team", name: "standup", host: "hana", webinar: false, escalated: false };
    const TOWNHALL: MeetingFacts =
        MeetingFacts { namespace: "team", name: "townhall", host: "ceo", webinar: true, escalated: false };
    /// An Interactive meeting past its escalation size.
    const ALL_HANDS: MeetingFacts =
        MeetingFacts { namespace: "team", name: "all-hands", host: "ceo", webinar: false, escalated: true };

    #[test]
    fn past_its_escalation_size_an_interactive_meeting_takes_newcomers_as_attendees() {
        assert_eq!(role_in(&ALL_HANDS, &who("gus")), Role::Viewer);
        assert_eq!(role_in(&ALL_HANDS, &who("ceo")), Role::Host);
        // A role granted for the meeting (a panelist, a co-host) is kept.
        let mut pam = who("pam");
        pam.scoped.insert("team/all-hands".into(), Role::Participant);
        assert_eq!(role_in(&ALL_HANDS, &pam), Role::Participant);
        // The threshold: escalated from `attendeesFrom` present on, and never in a Webinar.
        let m: Meeting = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": "all-hands"},
            "spec": {"title": "t", "host": "ceo", "participants": {"expected": 10}, "escalation": {"attendeesFrom": 3}},
        }))
        .unwrap();
        let facts = |present| MeetingFacts::of("team", &m).with_present(&m, present).escalated;
        assert_eq!((facts(2), facts(3), facts(4)), (false, true, true));
        let mut webinar = m.clone();
        webinar.spec.mode = MeetingMode::Webinar;
        assert!(!MeetingFacts::of("team", &webinar).with_present(&webinar, 50).escalated);
        let mut off = m.clone();
        off.spec.escalation = None;
        assert!(!MeetingFacts::of("team", &off).with_present(&off, 50).escalated);
    }

    #[test]
    fn the_meetings_host_is_host_and_everyone_else_gets_the_default() {
        assert_eq!(role_in(&STANDUP, &who("hana")), Role::Host);
        assert_eq!(role_in(&STANDUP, &who("gus")), Role::Participant);
        assert_eq!(role_in(&TOWNHALL, &who("ceo")), Role::Host);
        assert_eq!(role_in(&TOWNHALL, &who("gus")), Role::Viewer, "a Webinar's audience only watches");
    }

    #[test]
    fn a_global_role_only_lowers() {
        for global in [Role::Host, Role::CoHost, Role::Participant] {
            let mut u = who("mallory");
            u.global_role = Some(global);
            assert_eq!(role_in(&STANDUP, &u), Role::Participant, "global {global:?} in an Interactive meeting");
            assert_eq!(role_in(&TOWNHALL, &u), Role::Viewer, "global {global:?} in a Webinar");
        }
        let mut u = who("vic");
        u.global_role = Some(Role::Viewer);
        assert_eq!(role_in(&STANDUP, &u), Role::Viewer);
        // The meeting's host stays host whatever the token says.
        let mut host = who("hana");
        host.global_role = Some(Role::Viewer);
        assert_eq!(role_in(&STANDUP, &host), Role::Host);
    }

    #[test]
    fn a_scoped_role_counts_for_its_meeting_only() {
        let mut u = who("cora");
        u.scoped.insert("team/standup".into(), Role::CoHost);
        assert_eq!(role_in(&STANDUP, &u), Role::CoHost);
        assert_eq!(role_in(&TOWNHALL, &u), Role::Viewer, "not for another meeting");
        let other_ns = MeetingFacts { namespace: "other", ..STANDUP };
        assert_eq!(role_in(&other_ns, &u), Role::Participant, "not for the same name in another namespace");
        // A panelist of a Webinar publishes.
        let mut p = who("pat");
        p.scoped.insert("team/townhall".into(), Role::Participant);
        assert_eq!(role_in(&TOWNHALL, &p), Role::Participant);
        // A scoped role wins over a global one.
        p.global_role = Some(Role::Viewer);
        assert_eq!(role_in(&TOWNHALL, &p), Role::Participant);
    }
}
