//! Breakout rooms (`docs/signaling.md`, "Breakout rooms"): a host splits a meeting into
//! rooms for a while and brings everyone back.
//!
//! A room is a Meeting of its own with `spec.parentRef` naming the main meeting, so it
//! has its own SFU room, chat and participants; the operator places it beside the main
//! meeting. Moving a participant moves its signaling session: the server issues it a
//! session token for the room (`breakout-moved`) and tells it to connect media again
//! (`media-reconnect`). Nobody logs in again and nobody chooses a room by themselves:
//! hosts and co-hosts open, move, broadcast and close; a participant in a room may only
//! ask for help.
//!
//! Every field here is bounded and checked by [`check_open`] and friends before the
//! server acts on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{JoinedPayload, MAX_PEER_ID_CHARS};

/// Most rooms one meeting opens at once.
pub const MAX_ROOMS: usize = 50;
/// Longest room name, in characters.
pub const MAX_ROOM_NAME_CHARS: usize = 64;
/// Shortest and longest timer a host may set.
pub const MIN_SECONDS: u32 = 10;
pub const MAX_SECONDS: u32 = 24 * 3600;
/// Longest countdown before rooms close.
pub const MAX_COUNTDOWN_SECONDS: u32 = 600;
/// The countdown when the host names none: long enough to finish a sentence.
pub const DEFAULT_COUNTDOWN_SECONDS: u32 = 60;
/// Most participants a manual assignment names.
pub const MAX_MANUAL_ENTRIES: usize = 1000;
/// Longest broadcast, in characters.
pub const MAX_BROADCAST_CHARS: usize = 500;

/// How participants are put into rooms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Assignment {
    /// Shuffled and dealt round-robin: rooms differ in size by at most one.
    #[default]
    Auto,
    /// As `manual` says; whoever it leaves out stays in the main room.
    Manual,
}

/// `open-breakouts`: opens `rooms` rooms (named "Room 1", …) or one per name in `names`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    #[serde(default)]
    pub assignment: Assignment,
    /// Participant id → room index (0-based), for `manual`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub manual: BTreeMap<String, u32>,
    /// The rooms close by themselves this long after opening (with the countdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
    /// How long participants are warned before rooms close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown_seconds: Option<u32>,
}

impl OpenPayload {
    /// The rooms' names (checked by [`check_open`] first).
    pub fn room_names(&self) -> Vec<String> {
        if self.names.is_empty() {
            (1..=self.rooms.unwrap_or(0)).map(|i| format!("Room {i}")).collect()
        } else {
            self.names.iter().map(|n| n.trim().to_owned()).collect()
        }
    }
}

/// `breakout-move`: puts a participant into room `room` (its index), or back into the
/// main room (no `room`). A host or co-host naming itself visits that room.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MovePayload {
    pub participant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<u32>,
}

/// `breakout-broadcast` from a host: a message shown to everyone in every room.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BroadcastPayload {
    pub text: String,
    /// Server to client: who sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `close-breakouts`: everyone comes back after the countdown (default
/// [`DEFAULT_COUNTDOWN_SECONDS`]; 0: now).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClosePayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countdown_seconds: Option<u32>,
}

/// One open room, as hosts see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoomInfo {
    pub name: String,
    /// The room's Meeting.
    pub meeting: String,
    /// Who belongs in it now.
    pub participants: Vec<String>,
}

/// `breakouts`, to hosts and co-hosts (and the REST `GET …/breakouts`): the rooms and
/// who is in which; `open: false` once they closed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatePayload {
    pub open: bool,
    /// Counts the openings of this meeting: room Meetings are named after it.
    pub generation: u64,
    pub rooms: Vec<RoomInfo>,
    /// When the timer starts the countdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at_ms: Option<u64>,
    /// When rooms close (set once the countdown started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closing_at_ms: Option<u64>,
}

/// `breakout-moved`, to the participant moved: its session is now in `meeting` (a
/// room, or the main meeting again); `sessionToken` replaces the one it holds (a
/// reconnect resumes there). `joined` is what `join` would have answered. A
/// `media-reconnect` follows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MovedPayload {
    pub session_token: String,
    pub meeting: String,
    /// The main meeting.
    pub main: String,
    /// The room's name; absent back in the main room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at_ms: Option<u64>,
    pub joined: JoinedPayload,
}

/// `help-requested`, to hosts and co-hosts wherever they are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HelpPayload {
    pub participant_id: String,
    pub name: String,
    pub room: String,
    /// The room's index, for `breakout-move` of the host itself (a visit).
    pub index: u32,
}

/// `breakouts-closing`, to everyone in the family: rooms close at `atMs`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClosingPayload {
    pub at_ms: u64,
    pub seconds: u32,
}

fn check_countdown(c: Option<u32>) -> Result<(), String> {
    match c {
        Some(c) if c > MAX_COUNTDOWN_SECONDS => Err(format!("countdownSeconds is 0 to {MAX_COUNTDOWN_SECONDS}")),
        _ => Ok(()),
    }
}

/// The shape of an `open-breakouts`: one of `rooms` (1 to [`MAX_ROOMS`]) or `names`
/// (that many distinct names of 1 to [`MAX_ROOM_NAME_CHARS`] characters), a manual map
/// naming valid participant ids and existing rooms, a timer and countdown in bounds.
pub fn check_open(o: &OpenPayload) -> Result<(), String> {
    let count = match (o.rooms, o.names.len()) {
        (Some(_), n) if n > 0 => return Err("give either rooms (a count) or names, not both".into()),
        (Some(n), _) => n as usize,
        (None, 0) => return Err("give rooms (a count) or names".into()),
        (None, n) => n,
    };
    if count == 0 || count > MAX_ROOMS {
        return Err(format!("1 to {MAX_ROOMS} rooms, not {count}"));
    }
    let mut seen = std::collections::HashSet::new();
    for n in &o.names {
        let n = n.trim();
        let chars = n.chars().count();
        if chars == 0 || chars > MAX_ROOM_NAME_CHARS || n.chars().any(char::is_control) {
            return Err(format!("a room name has 1 to {MAX_ROOM_NAME_CHARS} printable characters"));
        }
        if !seen.insert(n.to_lowercase()) {
            return Err(format!("room name `{n}` is given twice"));
        }
    }
    match o.assignment {
        Assignment::Auto if !o.manual.is_empty() => {
            return Err("`manual` goes with assignment: manual".into());
        }
        Assignment::Manual if o.manual.len() > MAX_MANUAL_ENTRIES => {
            return Err(format!("a manual assignment names at most {MAX_MANUAL_ENTRIES} participants"));
        }
        _ => {}
    }
    for (pid, room) in &o.manual {
        if pid.is_empty() || pid.chars().count() > MAX_PEER_ID_CHARS {
            return Err(format!("a participant id has 1 to {MAX_PEER_ID_CHARS} characters"));
        }
        switchboard_sfu_api::paths::check_id("participant", pid)?;
        if *room as usize >= count {
            return Err(format!("room {room} for `{pid}`: rooms are numbered 0 to {}", count - 1));
        }
    }
    if let Some(s) = o.seconds
        && !(MIN_SECONDS..=MAX_SECONDS).contains(&s)
    {
        return Err(format!("seconds is {MIN_SECONDS} to {MAX_SECONDS}, not {s}"));
    }
    check_countdown(o.countdown_seconds)
}

pub fn check_move(m: &MovePayload) -> Result<(), String> {
    switchboard_sfu_api::paths::check_id("participant", &m.participant_id)?;
    match m.room {
        Some(r) if r as usize >= MAX_ROOMS => Err(format!("room is 0 to {}", MAX_ROOMS - 1)),
        _ => Ok(()),
    }
}

pub fn check_broadcast(b: &BroadcastPayload) -> Result<(), String> {
    let chars = b.text.trim().chars().count();
    if chars == 0 || chars > MAX_BROADCAST_CHARS {
        return Err(format!("a broadcast has 1 to {MAX_BROADCAST_CHARS} characters, not {chars}"));
    }
    if b.name.is_some() {
        return Err("`name` is set by the server".into());
    }
    Ok(())
}

pub fn check_close(c: &ClosePayload) -> Result<(), String> {
    check_countdown(c.countdown_seconds)
}
