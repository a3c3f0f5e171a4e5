//! `RecordingJob`: one recording of one meeting.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Duration, LocalObjectRef, SecretRef, Time, conditions_schema};

/// Annotation that ends a recording early: the recorder stops recording, composites
/// what it has and stores it (the job goes `Processing`, then `Ready`), as at the
/// meeting's end. Its value names who asked (signaling writes the user). An annotation,
/// not a spec field: the spec is immutable, and stopping is a request to the running
/// recorder, like `kubectl rollout restart`'s.
pub const STOP_ANNOTATION: &str = "switchboard.dev/stop-requested-by";

/// One recording of one meeting, run as a batch/v1 Job of recorder-pod.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[allow(clippy::duplicated_attributes)] // false positive: each printcolumn(...) is a column, type_ repeats by design
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "RecordingJob",
    namespaced,
    status = "RecordingJobStatus",
    shortname = "recjob",
    category = "switchboard",
    doc = "A recording of one meeting to a PVC or an S3-compatible bucket.",
    printcolumn(name = "Meeting", type_ = "string", json_path = ".spec.meetingRef.name"),
    printcolumn(name = "Layout", type_ = "string", json_path = ".spec.layout"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Duration", type_ = "integer", json_path = ".status.durationSeconds"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self == oldSelf")
    .message("spec is immutable: create a new RecordingJob instead"))]
pub struct RecordingJobSpec {
    /// The Meeting to record, in the same namespace.
    pub meeting_ref: LocalObjectRef,
    #[serde(default)]
    pub layout: Layout,
    #[serde(default)]
    pub format: RecordingFormat,
    pub storage: Storage,
    /// The recording stops after this long.
    #[serde(default = "default_max_duration")]
    pub max_duration: Duration,
    /// Retain: files outlive the object. Delete: files are removed with it.
    #[serde(default)]
    pub retention: Retention,
    /// Recorder runs retried after a failure (the Job's backoffLimit; exponential
    /// backoff from 10 s between them).
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,
}

fn default_retries() -> i32 {
    3
}

fn default_max_duration() -> Duration {
    Duration::from_secs(4 * 3600)
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Layout {
    /// All participants in a grid.
    #[default]
    Gallery,
    /// The active speaker large.
    Speaker,
    /// One file per track, no compositing.
    Tracks,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RecordingFormat {
    /// H.264 + AAC.
    #[default]
    MP4,
    /// VP8/VP9 + Opus.
    WebM,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Retention {
    #[default]
    Retain,
    Delete,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.pvc) != has(self.s3)")
    .message("storage takes exactly one of pvc or s3"))]
pub struct Storage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcStorage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcStorage {
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory inside the volume.
    #[serde(default = "default_path")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
}

fn default_path() -> String {
    "/".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Endpoint of an S3-compatible service. Unset: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Key prefix for the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Secret with keys accessKeyId and secretAccessKey.
    pub credentials_secret_ref: SecretRef,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingJobStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RecordingPhase>,
    /// The batch/v1 Job running the recorder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Where the result is, e.g. pvc://recordings/meetings/all-hands/gallery.mp4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Recorder runs so far (retries included).
    #[serde(default)]
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// What the recorder last reported (field manager `switchboard-recorder`); the
    /// operator derives `phase` and the result fields from it and from the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder: Option<RecorderReport>,
}

/// The recorder's own account of its run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecorderReport {
    /// Which run of the Job's pod wrote this (1 = the first).
    pub attempt: i32,
    pub stage: RecorderStage,
    /// A CamelCase reason when the stage is Failed (MeetingNotFound, StorageUnavailable,
    /// CompositingFailed, UploadFailed, SfuUnreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Tracks recorded, and chunk files written, so far.
    #[serde(default)]
    pub tracks: i32,
    #[serde(default)]
    pub chunks: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RecorderStage {
    #[default]
    Starting,
    Recording,
    Processing,
    Uploaded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RecordingPhase {
    Pending,
    Recording,
    Processing,
    Ready,
    Failed,
}
