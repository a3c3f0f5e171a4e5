//! The RecordingJob controller: dereference (Meeting, PVC, Job) → validate (pure) →
//! build the recorder Job (pure) → create it → status from the recorder's report and
//! the Job. A finalizer removes the files of a recording whose retention is Delete,
//! by running the recorder in delete mode. A second, small controller creates the
//! RecordingJob of a Meeting whose recording policy is Auto once it is Active.

pub mod build;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use switchboard_crds::meeting::{Meeting, MeetingPhase, RecordingMode};
use switchboard_crds::recording_job::{PvcStorage, RecordingJob, RecordingJobSpec, RecordingPhase, Storage};

use crate::conditions::same;
use crate::controller::{Backoff, Harness};
use crate::error::Step;
use crate::labels::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::{Error, OperatorConfig, Result};

const CONTROLLER: &str = "recordingjob";
/// RecordingJobs reconciled at the same time.
const RECONCILE_CONCURRENCY: usize = 16;
const BACKOFF: Backoff = Backoff { first: Duration::from_secs(1), max: Duration::from_secs(300) };

pub struct Context {
    harness: Arc<Harness>,
    client: Client,
    config: OperatorConfig,
    recordings: Store<RecordingJob>,
}

fn key(r: &impl ResourceExt) -> String {
    format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any())
}

/// `meetings`: the Meetings that changed, from the operator's one Meeting cache
/// (`meeting_store`), for automatic recording.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    metrics: Metrics,
    meetings: impl futures::Stream<Item = Arc<Meeting>> + Send + 'static,
    meeting_store: Store<Meeting>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (recordings, jobs): (Api<RecordingJob>, Api<Job>) = match &config.watch_namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let harness = Arc::new(Harness::new(CONTROLLER, client.clone(), &config, metrics, RECONCILE_CONCURRENCY, BACKOFF));
    let owned =
        watcher::Config::default().labels(&format!("{}={}", crate::labels::COMPONENT_LABEL, build::RECORDER_COMPONENT));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let controller = Controller::new(recordings, watcher::Config::default());
    let ctx = Arc::new(Context { recordings: controller.store(), harness: harness.clone(), client, config });
    let recording_controller = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(0))
        .owns(jobs, owned)
        .graceful_shutdown_on(harness.close_on(stopped(stop_rx.clone())))
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "recordingjob reconcile");
            }
        });
    let auto_controller = Controller::for_shared_stream(meetings, meeting_store)
        .graceful_shutdown_on(stopped(stop_rx))
        .run(auto_record, |_m, _e: &Error, _ctx| Action::requeue(Duration::from_secs(10)), ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "automatic recording");
            }
        });
    futures::future::join(recording_controller, auto_controller).await;
}

async fn reconcile(rj: Arc<RecordingJob>, ctx: Arc<Context>) -> Result<Action> {
    let c = &ctx;
    ctx.harness.reconcile(&ctx.recordings, &rj, |rj| async move { reconcile_recording(&rj, c).await }).await
}

fn error_policy(rj: Arc<RecordingJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let (requeue, _) = ctx.harness.requeue_after(rj.as_ref(), error);
    let message = error.to_string();
    tokio::spawn(async move { publish(&ctx, &rj, EventType::Warning, "ReconcileFailed", &message).await });
    requeue
}

async fn publish(ctx: &Context, rj: &RecordingJob, type_: EventType, reason: &str, note: &str) {
    ctx.harness.publish(rj, type_, reason, note).await;
}

async fn reconcile_recording(rj: &RecordingJob, ctx: &Context) -> Result<Action> {
    let ns = rj.namespace().unwrap_or_default();
    let c = &ctx.client;
    let recordings: Api<RecordingJob> = Api::namespaced(c.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(c.clone(), &ns);
    let has_finalizer = rj.finalizers().iter().any(|f| f == build::FILES_FINALIZER);

    if rj.metadata.deletion_timestamp.is_some() {
        return cleanup(rj, ctx, has_finalizer).await;
    }
    if build::wants_finalizer(rj) && !has_finalizer {
        let patch = json!({"metadata": {"finalizers": [build::FILES_FINALIZER]}});
        recordings
            .patch(&rj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .applying("RecordingJob finalizer")?;
        return Ok(Action::await_change());
    }
    let previous_phase = rj.status.as_ref().and_then(|s| s.phase);
    let mut job = jobs.get_opt(&build::job_name(rj)).await.observing("recorder Job")?;
    let mut invalid = None;
    if job.is_none() && !matches!(previous_phase, Some(RecordingPhase::Failed | RecordingPhase::Ready)) {
        // Dereference and validate before anything is made.
        let meeting =
            Api::<Meeting>::namespaced(c.clone(), &ns).get_opt(&rj.spec.meeting_ref.name).await.observing("Meeting")?;
        let pvc = match &rj.spec.storage.pvc {
            Some(p) => Some(
                Api::<PersistentVolumeClaim>::namespaced(c.clone(), &ns)
                    .get_opt(&p.claim_name)
                    .await
                    .observing("PersistentVolumeClaim")?,
            ),
            None => None,
        };
        match build::validate(rj, meeting.as_ref(), pvc.as_ref().map(|p| p.as_ref())) {
            Ok(()) => {
                let params = PatchParams::apply(FIELD_MANAGER).force();
                Api::<ServiceAccount>::namespaced(c.clone(), &ns)
                    .patch(build::RECORDER_SERVICE_ACCOUNT, &params, &Patch::Apply(&build::service_account(&ns)))
                    .await
                    .applying("recorder ServiceAccount")?;
                Api::<RoleBinding>::namespaced(c.clone(), &ns)
                    .patch(build::RECORDER_SERVICE_ACCOUNT, &params, &Patch::Apply(&build::role_binding(&ns)))
                    .await
                    .applying("recorder RoleBinding")?;
                let created = jobs
                    .create(
                        &PostParams::default(),
                        &build::recorder_job(rj, &ctx.config.recorder_image, &ctx.config.recorder_placement, false),
                    )
                    .await
                    .applying("recorder Job")?;
                publish(
                    ctx,
                    rj,
                    EventType::Normal,
                    "JobCreated",
                    &format!("recorder Job {} created", created.name_any()),
                )
                .await;
                job = Some(created);
            }
            Err(inv) => {
                publish(ctx, rj, EventType::Warning, inv.reason, &inv.message).await;
                invalid = Some(inv);
            }
        }
    }

    let status = build::status(rj, job.as_ref(), invalid.as_ref());
    let previous = rj.status.clone().unwrap_or_default();
    if status.phase != previous.phase {
        let (type_, reason, note) = match status.phase {
            Some(RecordingPhase::Recording) => {
                (EventType::Normal, "RecordingStarted", "the recorder joined the meeting".to_owned())
            }
            Some(RecordingPhase::Processing) => {
                (EventType::Normal, "Processing", "compositing and uploading".to_owned())
            }
            Some(RecordingPhase::Ready) => {
                (EventType::Normal, "Ready", format!("recording stored at {}", status.url.clone().unwrap_or_default()))
            }
            Some(RecordingPhase::Failed) if invalid.is_none() => {
                let c = status.conditions.iter().find(|c| c.type_ == "Failed");
                (EventType::Warning, "Failed", c.map(|c| format!("{}: {}", c.reason, c.message)).unwrap_or_default())
            }
            _ => (EventType::Normal, "", String::new()),
        };
        if !reason.is_empty() {
            publish(ctx, rj, type_, reason, &note).await;
        }
    }
    let retry_reported = |s: &switchboard_crds::RecordingJobStatus| s.conditions.iter().any(|c| c.reason == "Retrying");
    if retry_reported(&status) && !retry_reported(&previous) {
        let note = status.conditions[0].message.clone();
        publish(ctx, rj, EventType::Warning, "RecorderFailed", &note).await;
    }
    let unchanged = previous.phase == status.phase
        && previous.job == status.job
        && previous.attempts == status.attempts
        && previous.url == status.url
        && previous.observed_generation == status.observed_generation
        && same(&previous.conditions, &status.conditions);
    if !unchanged {
        let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "RecordingJob", "status": status});
        recordings
            .patch_status(&rj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .writing_status()?;
    }
    Ok(match status.phase {
        Some(RecordingPhase::Ready | RecordingPhase::Failed) => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(60)),
    })
}

/// Retention Delete: stop the recorder, run the delete Job, then let the object go.
async fn cleanup(rj: &RecordingJob, ctx: &Context, has_finalizer: bool) -> Result<Action> {
    if !has_finalizer {
        return Ok(Action::await_change());
    }
    let ns = rj.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let background = DeleteParams::background();
    if jobs
        .get_opt(&build::job_name(rj))
        .await
        .observing("recorder Job")?
        .is_some_and(|j| j.metadata.deletion_timestamp.is_none())
    {
        jobs.delete(&build::job_name(rj), &background).await.applying("deletion of the recorder Job")?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let done = match jobs.get_opt(&build::cleanup_job_name(rj)).await.observing("file deletion Job")? {
        None => {
            jobs.create(
                &PostParams::default(),
                &build::recorder_job(rj, &ctx.config.recorder_image, &ctx.config.recorder_placement, true),
            )
            .await
            .applying("file deletion Job")?;
            publish(ctx, rj, EventType::Normal, "DeletingFiles", "retention is Delete: removing the recording's files")
                .await;
            false
        }
        Some(j) => match build::job_outcome(&j) {
            Some((true, ..)) => true,
            Some((false, reason, message)) => {
                let note = format!(
                    "deleting the files failed ({reason}: {message}); remove finalizer {} to give up",
                    build::FILES_FINALIZER
                );
                publish(ctx, rj, EventType::Warning, "DeleteFilesFailed", &note).await;
                return Ok(Action::requeue(Duration::from_secs(300)));
            }
            None => false,
        },
    };
    if !done {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let remaining: Vec<String> = rj.finalizers().iter().filter(|f| *f != build::FILES_FINALIZER).cloned().collect();
    let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": rj.resource_version()}});
    Api::<RecordingJob>::namespaced(ctx.client.clone(), &ns)
        .patch(&rj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .applying("RecordingJob finalizer")?;
    Ok(Action::await_change())
}

/// The RecordingJob an Auto-recorded Meeting gets when it becomes Active, if the meeting
/// does not already have one; named `<meeting>-auto`.
pub fn auto_recording(m: &Meeting, default_pvc: &str) -> Option<RecordingJob> {
    let policy = m.spec.recording.as_ref()?;
    let active = m.status.as_ref().and_then(|s| s.phase) == Some(MeetingPhase::Active);
    if policy.policy != RecordingMode::Auto || !active || m.spec.e2ee {
        return None;
    }
    let storage = policy.storage.clone().unwrap_or(Storage {
        pvc: Some(PvcStorage { claim_name: default_pvc.into(), path: "/meetings".into() }),
        s3: None,
    });
    let mut rj = RecordingJob::new(
        &build::auto_name(&m.name_any()),
        RecordingJobSpec {
            meeting_ref: switchboard_crds::common::LocalObjectRef { name: m.name_any() },
            layout: policy.layout,
            format: Default::default(),
            storage,
            max_duration: switchboard_crds::common::Duration::from_secs(4 * 3600),
            retention: Default::default(),
            retries: 3,
        },
    );
    rj.metadata.namespace = m.namespace();
    rj.metadata.labels = Some([(build::MEETING_LABEL.to_owned(), m.name_any())].into());
    Some(rj)
}

async fn auto_record(m: Arc<Meeting>, ctx: Arc<Context>) -> Result<Action> {
    let Some(rj) = auto_recording(&m, &ctx.config.recording_pvc) else { return Ok(Action::await_change()) };
    let api: Api<RecordingJob> = Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
    match api.create(&PostParams::default(), &rj).await {
        Ok(created) => {
            let note = format!("meeting {} is Active and records automatically", key(m.as_ref()));
            publish(&ctx, &created, EventType::Normal, "AutoRecording", &note).await;
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(e).applying("automatic RecordingJob"),
    }
}
