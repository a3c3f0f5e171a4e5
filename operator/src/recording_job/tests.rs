//! Table tests of the RecordingJob controller's decisions: the finalizer, the
//! recorder Job to make or why not, the cleanup of retention Delete, the Events of
//! phase transitions and the requeue. Cases follow the e2e suites (`real_pods.rs`:
//! a recording runs to a playable file; `foundation.rs`: what the API refuses).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;
use switchboard_crds::RecordingJobStatus;
use switchboard_crds::recording_job::{RecordingJob, RecordingPhase};

use super::build::{self, FILES_FINALIZER};
use super::decide::{self, Cleanup, Decision, Event, Observed, Record, Stage, Target};
use crate::config::PodPlacement;
use crate::fixtures::*;

fn decide(rj: &RecordingJob, observed: &Observed) -> Decision {
    let placement = PodPlacement::default();
    decide::decide(rj, observed, decide::Recorder { image: "recorder:test", placement: &placement })
}

fn target(meeting: Option<switchboard_crds::Meeting>, pvc: Option<&str>) -> Observed {
    let pvc = Some(pvc.map(|phase| claim("recordings", phase)));
    Observed { target: Some(Target { meeting, pvc }), ..Default::default() }
}

fn event(type_: EventType, reason: &'static str, note: &str) -> Event {
    Event { type_, reason, note: note.into() }
}

/// An Event's type, reason and note.
type Said<'a> = (EventType, &'a str, &'a str);

fn finished() -> Job {
    job("rec-del", json!({"conditions": [{"type": "Complete", "status": "True"}]}))
}

#[test]
fn the_stage_follows_deletion_retention_and_the_finalizer() {
    let table = [
        (recording("rec").build(), Stage::Record),
        (recording("rec").retention_delete().build(), Stage::AddFinalizer),
        (recording("rec").retention_delete().finalizer().build(), Stage::Record),
        (recording("rec").deleting(at(0)).build(), Stage::Released),
        (recording("rec").retention_delete().finalizer().deleting(at(0)).build(), Stage::Cleanup),
    ];
    for (rj, want) in table {
        assert_eq!(decide::stage(&rj), want, "{:?}", rj.metadata);
    }
    let patch = json!({"metadata": {"finalizers": [FILES_FINALIZER]}});
    assert_eq!(
        decide(&recording("rec").retention_delete().build(), &Observed::default()),
        Decision::AddFinalizer { patch }
    );
    assert_eq!(decide(&recording("rec").deleting(at(0)).build(), &Observed::default()), Decision::Nothing);
}

#[test]
fn the_recorder_job_is_made_once_and_only_for_a_meeting_it_can_record() {
    let standup = || meeting("standup").build();
    let encrypted = meeting("standup").spec(json!({"e2ee": true})).build();
    let table: [(&str, Observed, Option<Said>); 6] = [
        (
            "meeting and claim exist",
            target(Some(standup()), Some("Bound")),
            Some((EventType::Normal, "JobCreated", "recorder Job rec-rec created")),
        ),
        (
            "no meeting",
            target(None, Some("Bound")),
            Some((EventType::Warning, "MeetingNotFound", "Meeting tenant/standup does not exist")),
        ),
        (
            "end-to-end encrypted",
            target(Some(encrypted), Some("Bound")),
            Some((
                EventType::Warning,
                "MeetingEncrypted",
                "the meeting is end-to-end encrypted: the server cannot record it",
            )),
        ),
        (
            "no claim",
            target(Some(standup()), None),
            Some((EventType::Warning, "StorageUnavailable", "PersistentVolumeClaim tenant/recordings does not exist")),
        ),
        (
            "claim lost",
            target(Some(standup()), Some("Lost")),
            Some((EventType::Warning, "StorageUnavailable", "PersistentVolumeClaim tenant/recordings is Lost")),
        ),
        // Observe looks nothing up once the Job exists (or the recording ended).
        ("the Job exists", Observed { job: Some(job("rec-rec", json!({}))), ..Default::default() }, None),
    ];
    let rj = recording("rec").build();
    for (name, observed, want) in table {
        let Decision::Record(record) = decide(&rj, &observed) else { panic!("{name}: not recording") };
        let got = record.event.as_ref().map(|e| (e.type_, e.reason, e.note.as_str()));
        assert_eq!(got, want, "{name}");
        let valid = want.is_some_and(|(_, reason, _)| reason == "JobCreated");
        assert_eq!(record.create.is_some(), valid, "{name}: a Job only when valid");
        assert_eq!(record.invalid.as_ref().map(|i| i.reason), want.filter(|_| !valid).map(|(_, r, _)| r), "{name}");
    }
    let Decision::Record(Record { create: Some(job), .. }) = decide(&rj, &target(Some(standup()), Some("Bound")))
    else {
        panic!("a Job")
    };
    let job = serde_json::to_value(job).unwrap();
    assert_eq!(job["metadata"]["name"], "rec-rec");
    assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["image"], "recorder:test");
}

#[test]
fn observe_looks_up_the_meeting_only_while_the_job_is_still_to_be_made() {
    let rj = |phase: Option<&str>| match phase {
        Some(p) => recording("rec").status(json!({"phase": p})).build(),
        None => recording("rec").build(),
    };
    let existing = job("rec-rec", json!({}));
    let table = [
        (rj(None), None, true),
        (rj(Some("Pending")), None, true),
        (rj(None), Some(&existing), false),
        (rj(Some("Ready")), None, false),
        (rj(Some("Failed")), None, false),
    ];
    for (rj, job, want) in table {
        assert_eq!(decide::job_wanted(&rj, job), want, "{:?} {job:?}", rj.status);
    }
}

#[test]
fn retention_delete_stops_the_recorder_deletes_the_files_then_lets_go() {
    let rj = recording("rec").retention_delete().finalizer().deleting(at(0)).build();
    let running = job("rec-rec", json!({}));
    let mut stopping = running.clone();
    stopping.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(1)));
    let failed = json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                        "message": "Job has reached the specified backoff limit"}]});
    let observed =
        |job: Option<&Job>, cleanup: Option<Job>| Observed { job: job.cloned(), cleanup_job: cleanup, target: None };
    let step = |o: Observed| match decide(&rj, &o) {
        Decision::Cleanup(step) => step,
        other => panic!("not a cleanup: {other:?}"),
    };

    assert_eq!(step(observed(Some(&running), None)), Cleanup::StopRecorder);
    assert_eq!(Cleanup::StopRecorder.requeue(), Action::requeue(Duration::from_secs(2)));
    let Cleanup::DeleteFiles { job: deletion, event: e } = step(observed(Some(&stopping), None)) else {
        panic!("deletes")
    };
    assert_eq!(deletion.metadata.name.as_deref(), Some("rec-del"));
    let env = serde_json::to_value(&deletion).unwrap()["spec"]["template"]["spec"]["containers"][0]["env"][0].clone();
    assert_eq!(env, json!({"name": "RECORDER_MODE", "value": "delete"}));
    assert_eq!(e, event(EventType::Normal, "DeletingFiles", "retention is Delete: removing the recording's files"));
    assert!(matches!(step(observed(None, None)), Cleanup::DeleteFiles { .. }), "the recorder is gone");

    let waiting = step(observed(None, Some(job("rec-del", json!({})))));
    assert_eq!((waiting.clone(), waiting.requeue()), (Cleanup::Wait, Action::requeue(Duration::from_secs(5))));
    let refused = step(observed(None, Some(job("rec-del", failed))));
    let note = "deleting the files failed (BackoffLimitExceeded: Job has reached the specified backoff limit); \
                remove finalizer switchboard.dev/recording-files to give up";
    assert_eq!(refused, Cleanup::Failed(event(EventType::Warning, "DeleteFilesFailed", note)));
    assert_eq!(refused.requeue(), Action::requeue(Duration::from_secs(300)));
    let done = step(observed(None, Some(finished())));
    let patch = json!({"metadata": {"finalizers": ["other.io/keep"], "resourceVersion": "7"}});
    assert_eq!(done, Cleanup::Release { patch }, "only our finalizer goes, and only from the object as read");
    assert_eq!(done.requeue(), Action::await_change());
}

fn status(phase: Option<RecordingPhase>, conditions: serde_json::Value) -> RecordingJobStatus {
    let mut s: RecordingJobStatus =
        serde_json::from_value(json!({"conditions": conditions, "url": "pvc://recordings/meetings/x.mp4"})).unwrap();
    s.phase = phase;
    s
}

#[test]
fn phase_transitions_are_announced_once() {
    let condition = |type_: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": "False", "reason": reason, "message": message,
               "lastTransitionTime": at(0).to_string()})
    };
    let none = status(None, json!([]));
    let recording = status(Some(RecordingPhase::Recording), json!([condition("Ready", "Recording", "Recording")]));
    let processing = status(Some(RecordingPhase::Processing), json!([]));
    let ready = status(Some(RecordingPhase::Ready), json!([]));
    let retrying = status(Some(RecordingPhase::Recording), json!([condition("Ready", "Retrying", "run 1 failed")]));
    let failed = status(
        Some(RecordingPhase::Failed),
        json!([condition("Ready", "CompositingFailed", "m"), condition("Failed", "CompositingFailed", "m")]),
    );
    let table: [(&str, &RecordingJobStatus, &RecordingJobStatus, bool, Vec<Event>); 8] = [
        (
            "started",
            &none,
            &recording,
            false,
            vec![event(EventType::Normal, "RecordingStarted", "the recorder joined the meeting")],
        ),
        (
            "processing",
            &recording,
            &processing,
            false,
            vec![event(EventType::Normal, "Processing", "compositing and uploading")],
        ),
        (
            "ready",
            &processing,
            &ready,
            false,
            vec![event(EventType::Normal, "Ready", "recording stored at pvc://recordings/meetings/x.mp4")],
        ),
        ("failed", &recording, &failed, false, vec![event(EventType::Warning, "Failed", "CompositingFailed: m")]),
        ("refused: its own Event said so", &none, &failed, true, vec![]),
        (
            "a run failed and is retried",
            &recording,
            &retrying,
            false,
            vec![event(EventType::Warning, "RecorderFailed", "run 1 failed")],
        ),
        ("still retrying", &retrying, &retrying, false, vec![]),
        ("no change", &recording, &recording, false, vec![]),
    ];
    for (name, previous, next, invalid, want) in table {
        assert_eq!(decide::transitions(previous, next, invalid), want, "{name}");
    }
}

#[test]
fn an_ended_recording_waits_and_a_running_one_is_refreshed() {
    assert_eq!(decide::requeue(&status(Some(RecordingPhase::Ready), json!([]))), Action::await_change());
    assert_eq!(decide::requeue(&status(Some(RecordingPhase::Failed), json!([]))), Action::await_change());
    assert_eq!(
        decide::requeue(&status(Some(RecordingPhase::Recording), json!([]))),
        Action::requeue(Duration::from_secs(60))
    );
    let mut later = status(Some(RecordingPhase::Recording), json!([]));
    assert!(!decide::status_changed(&later, &later.clone()));
    let before = later.clone();
    later.attempts = 2;
    assert!(decide::status_changed(&before, &later));
}

#[test]
fn a_refused_recording_fails_without_a_job() {
    let rj = recording("rec").build();
    let Decision::Record(record) = decide(&rj, &target(None, Some("Bound"))) else { panic!("recording") };
    let st = build::status(&rj, None, record.invalid.as_ref(), at(10));
    assert_eq!(st.phase, Some(RecordingPhase::Failed));
    assert_eq!(st.job, None);
    assert_eq!((st.conditions[1].type_.as_str(), st.conditions[1].reason.as_str()), ("Failed", "MeetingNotFound"));
    assert_eq!(st.conditions[1].last_transition_time.0, at(10));
    assert_eq!(decide::requeue(&st), Action::await_change(), "a spec change makes a new RecordingJob");
}
