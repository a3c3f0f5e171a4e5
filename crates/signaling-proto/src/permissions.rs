//! Roles and what they may do. Defaults follow common meeting products: hosts and
//! co-hosts moderate, participants talk, share and chat, viewers watch and chat.
//! A Meeting's `permissions` overrides add to or take from a role's defaults.
//!
//! Roles are ordered from the most privileged (`Host`) to the least (`Viewer`);
//! [`Role::least_privileged`] picks the lesser of two.

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Host,
    CoHost,
    /// In a Webinar, a panelist.
    #[default]
    #[serde(alias = "panelist")]
    Participant,
    /// In a Webinar, an attendee.
    #[serde(alias = "attendee")]
    Viewer,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    MuteOthers,
    RemoveParticipant,
    StartRecording,
    ShareScreen,
    SendChat,
    /// Unmute oneself after a host muted one (or the meeting muted one on entry).
    UnmuteSelf,
    /// End the meeting for everyone (hosts only, by default).
    EndMeeting,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Self::MuteOthers,
        Self::RemoveParticipant,
        Self::StartRecording,
        Self::ShareScreen,
        Self::SendChat,
        Self::UnmuteSelf,
        Self::EndMeeting,
    ];
}

impl Role {
    pub fn defaults(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Host => &Permission::ALL,
            Role::CoHost => &[MuteOthers, RemoveParticipant, StartRecording, ShareScreen, SendChat, UnmuteSelf],
            Role::Participant => &[ShareScreen, SendChat],
            Role::Viewer => &[SendChat],
        }
    }
    /// Hosts and co-hosts run the waiting room.
    pub fn admits(self) -> bool {
        matches!(self, Role::Host | Role::CoHost)
    }
    /// Viewers only receive media.
    pub fn publishes(self) -> bool {
        self != Role::Viewer
    }
    /// Whether someone of this role may send a direct message to someone of role `to`:
    /// hosts and co-hosts to anyone and anyone to them; otherwise neither side may be a
    /// viewer (a Webinar's attendees do not see each other, nor write to panelists
    /// unseen by the hosts).
    pub fn may_message_privately(self, to: Role) -> bool {
        self.admits() || to.admits() || (self != Role::Viewer && to != Role::Viewer)
    }
    /// Hosts and co-hosts skip the waiting room.
    pub fn skips_waiting_room(self) -> bool {
        self.admits()
    }
    /// The lesser of two roles (`Viewer` is the least).
    pub fn least_privileged(self, other: Role) -> Role {
        self.max(other)
    }
    /// A role as an identity provider writes it in a claim: `host`, `co-host` (or
    /// `cohost`), `participant` (or `panelist`: a participant of a Webinar, who
    /// publishes), `viewer`. Case does not matter; anything else is `None`.
    pub fn from_claim(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            "host" => Some(Role::Host),
            "co-host" | "cohost" | "co_host" => Some(Role::CoHost),
            "participant" | "panelist" => Some(Role::Participant),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// The effective permissions of each role in one meeting.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Permissions {
    /// (role, allowed on top of defaults, denied from defaults)
    overrides: Vec<(Role, Vec<Permission>, Vec<Permission>)>,
}

impl Permissions {
    pub fn with_override(mut self, role: Role, allow: Vec<Permission>, deny: Vec<Permission>) -> Self {
        self.overrides.push((role, allow, deny));
        self
    }

    pub fn allows(&self, role: Role, permission: Permission) -> bool {
        let mut allowed = role.defaults().contains(&permission);
        for (r, allow, deny) in &self.overrides {
            if *r == role {
                if allow.contains(&permission) {
                    allowed = true;
                }
                if deny.contains(&permission) {
                    allowed = false;
                }
            }
        }
        allowed
    }

    pub fn of(&self, role: Role) -> Vec<Permission> {
        Permission::ALL.into_iter().filter(|p| self.allows(role, *p)).collect()
    }
}
