//! `Meeting`: one meeting, its schedule, placement and lifecycle.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Duration, Time, conditions_schema};

/// The largest meeting Switchboard places (cascaded over several SFU pods).
pub const MAX_PARTICIPANTS: i32 = 100_000;

/// One meeting. Created by schedulers (API or the signaling REST facade); the
/// operator reserves and assigns SFU capacity; signaling reports participants.
///
/// Status field ownership (server-side apply field managers): the operator
/// (`switchboard-operator`) owns everything but `participants`, which signaling
/// (`switchboard-signaling`) owns.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "Meeting",
    namespaced,
    status = "MeetingStatus",
    shortname = "mtg",
    category = "switchboard",
    doc = "One meeting: schedule, size, policy; status carries phase, room code, SFU assignment.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Parent", type_ = "string", json_path = ".spec.parentRef.name"),
    printcolumn(name = "Room", type_ = "string", json_path = ".status.roomCode"),
    printcolumn(name = "Expected", type_ = "integer", json_path = ".spec.participants.expected"),
    printcolumn(name = "Participants", type_ = "integer", json_path = ".status.participants.current"),
    printcolumn(name = "Start", type_ = "string", json_path = ".spec.schedule.start"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new(
        "!has(oldSelf.status) || !has(oldSelf.status.startedAt) || \
         (has(self.spec.schedule) == has(oldSelf.spec.schedule) && \
          (!has(self.spec.schedule) || self.spec.schedule.start == oldSelf.spec.schedule.start))"
    )
    .message("spec.schedule.start cannot be changed once the meeting has started")
    .field_path(".spec.schedule.start")
    .reason(kube::core::Reason::FieldValueForbidden),
    // Turning encryption on mid-meeting would leave the keyless participants' media
    // unreadable, turning it off would expose what everyone was told is encrypted.
    validation = kube::core::Rule::new(
        "!has(oldSelf.status) || !has(oldSelf.status.startedAt) || self.spec.e2ee == oldSelf.spec.e2ee"
    )
    .message("spec.e2ee cannot be changed once the meeting has started")
    .field_path(".spec.e2ee")
    .reason(kube::core::Reason::FieldValueForbidden),
    validation = kube::core::Rule::new(
        "has(self.spec.parentRef) == has(oldSelf.spec.parentRef) && \
         (!has(self.spec.parentRef) || self.spec.parentRef.name == oldSelf.spec.parentRef.name)"
    )
    .message("spec.parentRef cannot be changed")
    .field_path(".spec.parentRef")
    .reason(kube::core::Reason::FieldValueForbidden),
    validation = kube::core::Rule::new("!has(self.spec.parentRef) || self.spec.parentRef.name != self.metadata.name")
    .message("a meeting cannot be its own breakout room")
    .field_path(".spec.parentRef.name")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!(self.e2ee && has(self.recording) && self.recording.policy == 'Auto')")
    .message("an end-to-end encrypted meeting cannot be recorded automatically by the server")
    .field_path(".recording.policy"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.parentRef) || !has(self.schedule)")
    .message("a breakout room opens at once: it has no schedule")
    .field_path(".schedule"))]
#[x_kube(validation = kube::core::Rule::new("!(self.e2ee && self.audio == 'Mixed')")
    .message("an end-to-end encrypted meeting cannot have its audio mixed by the server, which cannot decode it")
    .field_path(".audio"))]
pub struct MeetingSpec {
    /// Title shown to participants.
    #[schemars(length(min = 1, max = 200))]
    pub title: String,
    /// User id of the host.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// When the meeting is planned. Unset: an ad-hoc meeting, due at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// Expected and maximum participants; drives reservation and cascading.
    pub participants: ParticipantLimits,
    /// Interactive: everyone may publish. Webinar: only hosts and panelists publish.
    #[serde(default)]
    pub mode: MeetingMode,
    /// Pools whose labels match may host the meeting. Unset: any pool (of `region`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu_pool_selector: Option<LabelSelector>,
    /// Region the meeting must run in. Unset: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub region: Option<String>,
    /// Participants wait until a host admits them.
    #[serde(default)]
    pub waiting_room: bool,
    /// Participants join muted.
    #[serde(default)]
    pub mute_on_entry: bool,
    /// An Interactive meeting that grows past a size turns newcomers into attendees
    /// (receive-only viewers, as in a Webinar; hosts can invite them to speak), and tells
    /// its hosts so. Unset: never. Ignored in a Webinar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// Routed: each participant receives the voices themselves (the 3 loudest in a
    /// room of 10 or more). Mixed: the SFU decodes the loudest voices and sends each
    /// participant one mixed stream without its own voice, for rooms of many listeners
    /// on weak devices. Set when the meeting's media room opens: a change applies the
    /// next time it opens. Not with `e2ee`.
    #[serde(default)]
    pub audio: MeetingAudio,
    /// Recording policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordingPolicy>,
    /// Media is end-to-end encrypted (docs/e2ee.md): each browser encrypts its frames
    /// with keys the servers never see; the SFU forwards ciphertext. A client must say it
    /// implements the scheme to join; the server refuses recording and mixed audio.
    /// Fixed once the meeting has started.
    #[serde(default)]
    pub e2ee: bool,
    /// Set on a breakout room: its main Meeting, in the same namespace. The operator
    /// places the room on the main meeting's SFU pods when they have room (no new
    /// capacity), and ends it when the main meeting ends. Cannot change; a breakout room
    /// has no schedule, no breakout rooms of its own, and the main meeting's `e2ee`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<ParentRef>,
    /// Per-role overrides of the default permissions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["role".into()]))]
    pub permissions: Vec<RolePermissions>,
    /// An Active meeting with nobody in it ends after this long; an ad-hoc meeting
    /// nobody joins ends this long after it was placed. Unset: 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_timeout: Option<Duration>,
    /// Delete the Meeting this long after it ended. Unset: an ad-hoc meeting (no
    /// schedule) is deleted an hour after it ends, so that meetings created on the
    /// fly do not pile up; a scheduled one is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_after_ended: Option<Duration>,
}

/// The main Meeting of a breakout room.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// The main Meeting's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Planned start (RFC 3339).
    pub start: Time,
    /// Planned length; the meeting ends this long after start plus a grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_duration: Option<Duration>,
    /// How long past `start + expectedDuration` the meeting may run. Unset: 15m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<Duration>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.max) || self.expected <= self.max")
    .message("expected participants must not be greater than max")
    .field_path(".expected"))]
pub struct ParticipantLimits {
    /// Participants expected; reserved ahead of a scheduled start.
    #[schemars(range(min = 1, max = 100000))]
    pub expected: i32,
    /// Hard cap on participants. Unset: expected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    /// From this many participants in the meeting (everyone joined or waiting), those
    /// joining come in as attendees; those already in keep their roles.
    #[schemars(range(min = 2, max = 100000))]
    pub attendees_from: i32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MeetingAudio {
    #[default]
    Routed,
    Mixed,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MeetingMode {
    #[default]
    Interactive,
    Webinar,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingPolicy {
    /// Off: never. OnDemand: a host with start_recording may start one. Auto: from start.
    #[serde(default)]
    pub policy: RecordingMode,
    /// Layout of an automatic recording.
    #[serde(default)]
    pub layout: crate::recording_job::Layout,
    /// Where automatic recordings go. Unset: the operator's default PVC
    /// (`SWITCHBOARD_RECORDING_PVC`, path `/meetings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::recording_job::Storage>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RecordingMode {
    Off,
    #[default]
    OnDemand,
    Auto,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Host,
    CoHost,
    Participant,
    Viewer,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    MuteOthers,
    RemoveParticipant,
    StartRecording,
    ShareScreen,
    SendChat,
    /// Turn one's own microphone or camera back on after a host (or the meeting's mute
    /// on entry) turned it off. Hosts and co-hosts have it; grant it to participants to
    /// make a host's mute a request rather than a rule.
    UnmuteSelf,
    /// End the meeting for everyone. Only hosts have it by default; grant it to
    /// co-hosts to let them.
    EndMeeting,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolePermissions {
    pub role: Role,
    /// Permissions granted on top of the role's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Permission>,
    /// Permissions taken away from the role's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Permission>,
}

/// Observed state of the meeting.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeetingStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MeetingPhase>,
    /// 12 lowercase letters and digits, unique in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]{12}$"))]
    pub room_code: Option<String>,
    /// Where participants join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_url: Option<String>,
    /// Capacity held ahead of the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
    /// SFU pod(s) serving the meeting: an origin, plus edges when cascaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
    /// Moves of the meeting between SFUs, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<Migration>,
    /// Reported by signaling (field manager switchboard-signaling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<ParticipantCount>,
    /// A host ended the meeting for everyone (written by signaling); the operator then
    /// moves it to `Ended` and signaling lets nobody in again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_requested: Option<EndRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Time>,
    /// Since when an Active meeting has had nobody in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum MeetingPhase {
    Scheduled,
    Waiting,
    Active,
    Ended,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub pool: String,
    pub participants: i32,
    /// When the capacity is held from.
    pub from: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub pool: String,
    pub origin: SfuEndpoint,
    /// Edge SFUs, for meetings larger than one pod: a tree rooted at the origin,
    /// each edge relaying from its `parent` and serving its share of participants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<SfuEndpoint>,
    /// When the assignment was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SfuEndpoint {
    pub pod: String,
    /// The SFU's internal API, e.g. http://10.0.3.17:7880.
    pub endpoint: String,
    /// Participants this SFU takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<i32>,
    /// The SFU pod this edge relays from (unset on the origin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Node and zone of the pod, for humans and for migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    pub from: String,
    pub to: String,
    pub reason: String,
    pub at: Time,
    /// Increases by one per move; signaling renegotiates clients when it changes.
    pub generation: i64,
}

/// Who ended a meeting for everyone, and when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndRequest {
    pub at: Time,
    /// The user who ended it (the subject of their identity token).
    #[schemars(length(max = 128))]
    pub by: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantCount {
    #[serde(default)]
    pub current: i32,
    #[serde(default)]
    pub peak: i32,
}

/// The SFU room of a Meeting: `namespace.name` (namespaces have no dots, so it splits
/// back). Signaling joins participants and the recorder joins itself under this name.
pub fn room_name(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}
