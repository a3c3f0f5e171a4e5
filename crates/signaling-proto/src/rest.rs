//! Bodies of the REST facade (`signaling-pod/openapi.json` describes the routes).

use serde::{Deserialize, Serialize};

use crate::{ChatMessage, Role};

/// `POST /api/v1/meetings`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMeeting {
    pub title: String,
    #[serde(default = "default_expected")]
    pub expected_participants: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<i32>,
    #[serde(default)]
    pub waiting_room: bool,
    #[serde(default)]
    pub mute_on_entry: bool,
    #[serde(default)]
    pub webinar: bool,
    /// Media end-to-end encrypted (`docs/e2ee.md`): never recorded or mixed.
    #[serde(default)]
    pub e2ee: bool,
}

fn default_expected() -> i32 {
    10
}

/// A meeting as the REST facade shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeetingInfo {
    pub id: String,
    pub title: String,
    pub phase: Option<String>,
    pub room_code: Option<String>,
    pub join_url: Option<String>,
    pub participants: i32,
    #[serde(default)]
    pub e2ee: bool,
}

/// `POST /api/v1/meetings/{id}/join`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JoinGrant {
    pub participant_id: String,
    pub session_token: String,
    pub signaling_url: String,
    pub role: Role,
    pub ice_servers: Vec<IceServer>,
    /// The meeting's media is end-to-end encrypted: the client must encrypt before it
    /// builds a connection (`docs/e2ee.md`).
    #[serde(default)]
    pub e2ee: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `GET /api/v1/meetings/{id}/chat`
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChatPage {
    /// Newest first.
    pub messages: Vec<ChatMessage>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<u64>,
}
