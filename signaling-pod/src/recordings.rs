//! Recordings as signaling offers them (REST and WebSocket go through [`start`]) and
//! announces them: a meeting whose `spec.recording.policy` is `Off` (or that is
//! end-to-end encrypted) is never recorded; a meeting has at most one active recording
//! (its RecordingJob is `Pending` or `Recording`, or has no phase yet); everyone
//! admitted hears `recording {state: started}` when one is created and `recording
//! {state: stopped}` when it stops (it left those phases, or was deleted) — those
//! started by the operator (`policy: Auto`) as well, from a watch of RecordingJobs.
//!
//! Every replica watches; Redis decides which one announces (`SET NX` per job and
//! state), and a Redis lock serializes the check and the creation of a recording
//! across replicas.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};
use switchboard_crds::common::LocalObjectRef;
use switchboard_crds::meeting::Meeting;
use switchboard_crds::recording_job::{
    PvcStorage, RecordingJob, RecordingJobSpec, RecordingPhase, STOP_ANNOTATION, Storage,
};
use switchboard_signaling_proto::{Envelope, RecordingPayload, RecordingState, types};

use crate::app::App;
use crate::meetings;
use crate::store::{Audience, Bus, BusWhat};

/// How long the lock around checking and creating a recording is held at most.
const LOCK_TTL: Duration = Duration::from_secs(15);

/// Why a recording was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `spec.recording.policy: Off`, or an end-to-end encrypted meeting.
    #[error("{0}")]
    Refused(&'static str),
    #[error("a recording of this meeting is already running ({0}); only one at a time")]
    Active(String),
    #[error("a recording of this meeting is being started by someone else; try again shortly")]
    Starting,
    #[error("{0}")]
    Failed(String),
}

/// Whether a recording in this state still records (or is about to).
pub fn active(job: &RecordingJob) -> bool {
    matches!(
        job.status.as_ref().and_then(|s| s.phase),
        None | Some(RecordingPhase::Pending) | Some(RecordingPhase::Recording)
    )
}

fn api(app: &App) -> Api<RecordingJob> {
    Api::namespaced(app.kube.clone(), &app.meetings.namespace)
}

/// The meeting's active RecordingJob, if any. The API server answers; if signaling may
/// not list RecordingJobs, the one signaling last saw started counts.
async fn running(app: &App, m: &Meeting, key: &str) -> Result<Option<String>, StartError> {
    let redis = |e: redis::RedisError| StartError::Failed(format!("shared state is unavailable: {e}"));
    match api(app).list(&ListParams::default()).await {
        Ok(jobs) => {
            let name = m.name_any();
            let found = jobs.items.iter().find(|j| j.spec.meeting_ref.name == name && active(j)).map(|j| j.name_any());
            match &found {
                Some(job) => app.store.set_recording(key, job).await.map_err(redis)?,
                None => {
                    if let Some(stale) = app.store.recording(key).await.map_err(redis)? {
                        app.store.clear_recording(key, &stale).await.map_err(redis)?;
                    }
                }
            }
            Ok(found)
        }
        Err(e) => {
            tracing::warn!(error = %e, "listing RecordingJobs (needs list on recordingjobs); relying on Redis");
            app.store.recording(key).await.map_err(redis)
        }
    }
}

/// Starts a recording of the meeting (for `by`, a participant id or user): refused when
/// the meeting may not be recorded or one is running. Announces it; returns the job's name.
pub async fn start(app: &App, m: &Meeting, by: &str) -> Result<String, StartError> {
    if let Some(reason) = meetings::recording_refused(m) {
        return Err(StartError::Refused(reason));
    }
    let key = app.meetings.state_key(m);
    let locked = app
        .store
        .lock_recording(&key, &app.cfg.replica, LOCK_TTL)
        .await
        .map_err(|e| StartError::Failed(format!("shared state is unavailable: {e}")))?;
    if !locked {
        return Err(StartError::Starting);
    }
    let result = async {
        if let Some(job) = running(app, m, &key).await? {
            return Err(StartError::Active(job));
        }
        let job = create(app, m).await.map_err(|e| StartError::Failed(e.to_string()))?;
        if let Err(e) = app.store.set_recording(&key, &job).await {
            tracing::warn!(error = %e, "noting the recording");
        }
        Ok(job)
    }
    .await;
    if let Err(e) = app.store.unlock_recording(&key).await {
        tracing::warn!(error = %e, "recording lock");
    }
    let job = result?;
    tracing::info!(meeting = %m.name_any(), recording = %job, %by, "recording started");
    announce(app, &key, &m.name_any(), &job, RecordingState::Started, None).await;
    Ok(job)
}

/// Why a recording was not stopped.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("no recording of this meeting is running")]
    NoneRunning,
    #[error("{0}")]
    Failed(String),
}

/// Ends the meeting's running recording early (for `by`, a user): its RecordingJob gets
/// [`STOP_ANNOTATION`]; the recorder then stops, composites what it has and stores it,
/// and everyone hears `recording {state: stopped}` once the job leaves `Recording`.
/// Returns the job's name.
pub async fn stop(app: &App, m: &Meeting, by: &str) -> Result<String, StopError> {
    let key = app.meetings.state_key(m);
    let job =
        running(app, m, &key).await.map_err(|e| StopError::Failed(e.to_string()))?.ok_or(StopError::NoneRunning)?;
    let patch = serde_json::json!({"metadata": {"annotations": {STOP_ANNOTATION: by}}});
    match api(app).patch(&job, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Err(StopError::NoneRunning),
        Err(e) => return Err(StopError::Failed(format!("asking the recorder to stop: {e}"))),
    }
    tracing::info!(meeting = %m.name_any(), recording = %job, %by, "recording stop requested");
    Ok(job)
}

/// Creates a RecordingJob for the meeting; returns its name.
async fn create(app: &App, m: &Meeting) -> kube::Result<String> {
    let meeting = m.name_any();
    let name = format!("{}-rec-{}", meeting.chars().take(40).collect::<String>(), crate::rest::random_suffix(5));
    let layout = m.spec.recording.as_ref().map(|r| r.layout).unwrap_or_default();
    let job = RecordingJob {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("switchboard.dev/meeting".to_owned(), meeting.clone())].into()),
            ..Default::default()
        },
        spec: RecordingJobSpec {
            meeting_ref: LocalObjectRef { name: meeting.clone() },
            layout,
            format: Default::default(),
            storage: Storage {
                pvc: Some(PvcStorage { claim_name: app.cfg.recording_pvc.clone(), path: "/meetings".into() }),
                s3: None,
            },
            max_duration: switchboard_crds::common::Duration::from_secs(4 * 3600),
            retention: Default::default(),
            retries: 3,
        },
        status: None,
    };
    api(app).create(&PostParams::default(), &job).await?;
    Ok(name)
}

fn state_name(s: RecordingState) -> &'static str {
    match s {
        RecordingState::Started => "started",
        RecordingState::Stopped => "stopped",
    }
}

/// Tells everyone admitted, once over all replicas; a stop only after its start.
async fn announce(app: &App, key: &str, meeting: &str, job: &str, state: RecordingState, phase: Option<String>) {
    let go = async {
        if state == RecordingState::Stopped
            && !app.store.announced(key, job, state_name(RecordingState::Started)).await?
        {
            return Ok(false);
        }
        app.store.first_to_announce(key, job, state_name(state)).await
    };
    match go.await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(error = %e, "announcing a recording");
            return;
        }
    }
    let payload = RecordingPayload { state, recording_job: job.into(), phase };
    let mut env = Envelope::new(types::RECORDING, &payload).room(meeting);
    env.broadcast = true;
    let bus = Bus { to: Audience::All, what: BusWhat::Deliver(env) };
    if let Err(e) = app.store.publish(key, &bus).await {
        tracing::warn!(error = %e, "announcing a recording");
    }
}

/// What a RecordingJob's change means for its meeting.
async fn seen(app: &App, job: &RecordingJob, deleted: bool) {
    let Some(m) = app.meetings.get(&job.spec.meeting_ref.name) else { return };
    // A job older than the meeting is of an earlier meeting of that name.
    if let (Some(j), Some(mc)) = (&job.metadata.creation_timestamp, &m.metadata.creation_timestamp)
        && j.0 < mc.0
    {
        return;
    }
    let key = app.meetings.state_key(&m);
    let name = job.name_any();
    if !deleted && active(job) {
        if let Err(e) = app.store.set_recording(&key, &name).await {
            tracing::warn!(error = %e, "noting a recording");
        }
        announce(app, &key, &m.name_any(), &name, RecordingState::Started, None).await;
    } else {
        if let Err(e) = app.store.clear_recording(&key, &name).await {
            tracing::warn!(error = %e, "forgetting a recording");
        }
        let phase = (!deleted).then(|| job.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}"))).flatten();
        announce(app, &key, &m.name_any(), &name, RecordingState::Stopped, phase).await;
    }
}

/// Watches the namespace's RecordingJobs for as long as the replica runs (needs get,
/// list and watch on recordingjobs; without them it logs and retries).
pub async fn watch(app: Arc<App>) {
    let stream = watcher(api(&app), watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(job)) | Ok(watcher::Event::InitApply(job)) => seen(&app, &job, false).await,
            Ok(watcher::Event::Delete(job)) => seen(&app, &job, true).await,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "RecordingJob watch (signaling needs get, list, watch on recordingjobs)")
            }
        }
    }
}
