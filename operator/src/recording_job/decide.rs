//! Decide (pure): what a reconcile of a RecordingJob does, from the object and
//! what was observed — add the files finalizer, make the recorder Job or say why
//! not, or (being deleted with retention Delete) stop the recorder, run the Job
//! that deletes the files and then let the object go — and the Events of its
//! phase transitions.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::{Value, json};
use switchboard_crds::RecordingJobStatus;
use switchboard_crds::meeting::Meeting;
use switchboard_crds::recording_job::{RecordingJob, RecordingPhase};

use super::build::{self, Invalid};
use crate::config::PodPlacement;

/// While a recording runs, its status is refreshed this often with nothing seen to change.
const RECORDING_RESYNC: Duration = Duration::from_secs(60);

/// An Event about the RecordingJob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// What the operator was told about recorder pods.
#[derive(Clone, Copy, Debug)]
pub struct Recorder<'a> {
    pub image: &'a str,
    pub placement: &'a PodPlacement,
}

/// What a reconcile is about, from the object alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Being deleted, and nothing of ours holds it.
    Released,
    /// Being deleted with retention Delete: its files go first.
    Cleanup,
    /// Retention Delete, and the finalizer is not on it yet.
    AddFinalizer,
    /// Recording: the recorder Job and the status.
    Record,
}

pub fn stage(rj: &RecordingJob) -> Stage {
    let has_finalizer = rj.finalizers().iter().any(|f| f == build::FILES_FINALIZER);
    match (rj.metadata.deletion_timestamp.is_some(), has_finalizer) {
        (true, false) => Stage::Released,
        (true, true) => Stage::Cleanup,
        (false, false) if build::wants_finalizer(rj) => Stage::AddFinalizer,
        (false, _) => Stage::Record,
    }
}

/// What a Job must be made from: the Meeting and, for PVC storage, the claim
/// (`None` when the storage is not a PVC).
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub meeting: Option<Meeting>,
    pub pvc: Option<Option<PersistentVolumeClaim>>,
}

/// What was read of the cluster for a reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The recorder Job.
    pub job: Option<Job>,
    /// Cleanup: the Job deleting the files, once the recorder Job is gone or going.
    pub cleanup_job: Option<Job>,
    /// Record: what the recorder Job is made from, while it is still to be made.
    pub target: Option<Target>,
}

/// Whether the recorder still runs (a Job being deleted does not count).
pub fn recorder_running(job: Option<&Job>) -> bool {
    job.is_some_and(|j| j.metadata.deletion_timestamp.is_none())
}

/// Whether the recorder Job is still to be made: none exists, and the recording
/// has not ended (a finished one is never recorded again).
pub fn job_wanted(rj: &RecordingJob, job: Option<&Job>) -> bool {
    let phase = rj.status.as_ref().and_then(|s| s.phase);
    job.is_none() && !matches!(phase, Some(RecordingPhase::Failed | RecordingPhase::Ready))
}

/// The steps of letting a RecordingJob with retention Delete go.
#[derive(Clone, Debug, PartialEq)]
pub enum Cleanup {
    /// Stop the recorder first (delete its Job).
    StopRecorder,
    /// Run the recorder in delete mode.
    DeleteFiles { job: Box<Job>, event: Event },
    /// The files are being deleted.
    Wait,
    /// Deleting the files failed: said, and tried again later.
    Failed(Event),
    /// The files are gone: drop the finalizer (if the object is still as read).
    Release { patch: Value },
}

impl Cleanup {
    pub fn requeue(&self) -> Action {
        match self {
            Cleanup::StopRecorder => Action::requeue(Duration::from_secs(2)),
            Cleanup::DeleteFiles { .. } | Cleanup::Wait => Action::requeue(Duration::from_secs(5)),
            Cleanup::Failed(_) => Action::requeue(Duration::from_secs(300)),
            Cleanup::Release { .. } => Action::await_change(),
        }
    }
}

/// Recording: the Job to make (its ServiceAccount and RoleBinding first), or why
/// none can be, and the Event of either.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub create: Option<Box<Job>>,
    pub invalid: Option<Invalid>,
    pub event: Option<Event>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Nothing,
    AddFinalizer { patch: Value },
    Cleanup(Cleanup),
    Record(Record),
}

pub fn decide(rj: &RecordingJob, observed: &Observed, recorder: Recorder<'_>) -> Decision {
    match stage(rj) {
        Stage::Released => Decision::Nothing,
        Stage::AddFinalizer => {
            Decision::AddFinalizer { patch: json!({"metadata": {"finalizers": [build::FILES_FINALIZER]}}) }
        }
        Stage::Cleanup => Decision::Cleanup(cleanup(rj, observed, recorder)),
        Stage::Record => Decision::Record(record(rj, observed, recorder)),
    }
}

fn cleanup(rj: &RecordingJob, observed: &Observed, recorder: Recorder<'_>) -> Cleanup {
    if recorder_running(observed.job.as_ref()) {
        return Cleanup::StopRecorder;
    }
    let Some(deleting) = &observed.cleanup_job else {
        return Cleanup::DeleteFiles {
            job: Box::new(build::recorder_job(rj, recorder.image, recorder.placement, true)),
            event: Event {
                type_: EventType::Normal,
                reason: "DeletingFiles",
                note: "retention is Delete: removing the recording's files".into(),
            },
        };
    };
    match build::job_outcome(deleting) {
        None => Cleanup::Wait,
        Some((true, ..)) => {
            let remaining: Vec<&String> = rj.finalizers().iter().filter(|f| *f != build::FILES_FINALIZER).collect();
            Cleanup::Release {
                patch: json!({"metadata": {"finalizers": remaining, "resourceVersion": rj.resource_version()}}),
            }
        }
        Some((false, reason, message)) => Cleanup::Failed(Event {
            type_: EventType::Warning,
            reason: "DeleteFilesFailed",
            note: format!(
                "deleting the files failed ({reason}: {message}); remove finalizer {} to give up",
                build::FILES_FINALIZER
            ),
        }),
    }
}

fn record(rj: &RecordingJob, observed: &Observed, recorder: Recorder<'_>) -> Record {
    let Some(target) = &observed.target else { return Record::default() };
    match build::validate(rj, target.meeting.as_ref(), target.pvc.as_ref().map(|p| p.as_ref())) {
        Ok(()) => Record {
            create: Some(Box::new(build::recorder_job(rj, recorder.image, recorder.placement, false))),
            invalid: None,
            event: Some(Event {
                type_: EventType::Normal,
                reason: "JobCreated",
                note: format!("recorder Job {} created", build::job_name(rj)),
            }),
        },
        Err(invalid) => Record {
            create: None,
            event: Some(Event { type_: EventType::Warning, reason: invalid.reason, note: invalid.message.clone() }),
            invalid: Some(invalid),
        },
    }
}

/// The Events of a status change: a new phase (a refusal already had its own),
/// and a failed run that the Job retries.
pub fn transitions(previous: &RecordingJobStatus, next: &RecordingJobStatus, invalid: bool) -> Vec<Event> {
    let mut events = Vec::new();
    let event = |type_, reason, note| Event { type_, reason, note };
    if next.phase != previous.phase {
        let phase = match next.phase {
            Some(RecordingPhase::Recording) => {
                Some(event(EventType::Normal, "RecordingStarted", "the recorder joined the meeting".to_owned()))
            }
            Some(RecordingPhase::Processing) => {
                Some(event(EventType::Normal, "Processing", "compositing and uploading".to_owned()))
            }
            Some(RecordingPhase::Ready) => Some(event(
                EventType::Normal,
                "Ready",
                format!("recording stored at {}", next.url.clone().unwrap_or_default()),
            )),
            Some(RecordingPhase::Failed) if !invalid => {
                let c = next.conditions.iter().find(|c| c.type_ == "Failed");
                let note = c.map(|c| format!("{}: {}", c.reason, c.message)).unwrap_or_default();
                Some(event(EventType::Warning, "Failed", note))
            }
            _ => None,
        };
        events.extend(phase);
    }
    let retrying = |s: &RecordingJobStatus| s.conditions.iter().any(|c| c.reason == "Retrying");
    if retrying(next) && !retrying(previous) {
        events.push(event(EventType::Warning, "RecorderFailed", next.conditions[0].message.clone()));
    }
    events
}

/// Whether `next` says more than the status the RecordingJob has (conditions
/// compared without their transition times).
pub fn status_changed(previous: &RecordingJobStatus, next: &RecordingJobStatus) -> bool {
    !(previous.phase == next.phase
        && previous.job == next.job
        && previous.attempts == next.attempts
        && previous.url == next.url
        && previous.observed_generation == next.observed_generation
        && crate::conditions::same(&previous.conditions, &next.conditions))
}

/// When to look again: an ended recording waits for a change; a running one is refreshed.
pub fn requeue(status: &RecordingJobStatus) -> Action {
    match status.phase {
        Some(RecordingPhase::Ready | RecordingPhase::Failed) => Action::await_change(),
        _ => Action::requeue(RECORDING_RESYNC),
    }
}
