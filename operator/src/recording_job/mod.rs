//! The RecordingJob controller: observe (the recorder Job; the Meeting and PVC it
//! is made from) → decide (pure: validate, build the recorder Job) → apply (create
//! it) → status (pure: from the recorder's report and the Job) and its write. A
//! finalizer removes the files of a recording whose retention is Delete, by running
//! the recorder in delete mode. A second, small controller creates the
//! RecordingJob of a Meeting whose recording policy is Auto once it is Active.

pub mod build;
pub mod decide;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

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
use switchboard_crds::RecordingJobStatus;
use switchboard_crds::meeting::{Meeting, MeetingPhase, RecordingMode};
use switchboard_crds::recording_job::{PvcStorage, RecordingJob, RecordingJobSpec, Storage};

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
    let recordings = controller
        .with_config(kube::runtime::controller::Config::default().concurrency(0))
        .owns(jobs, owned)
        .graceful_shutdown_on(harness.close_on(stopped(stop_rx.clone())))
        .run(reconcile, error_policy, ctx.clone());
    let automatic = Controller::for_shared_stream(meetings, meeting_store).graceful_shutdown_on(stopped(stop_rx)).run(
        auto_record,
        |_m, _e: &Error, _ctx| Action::requeue(Duration::from_secs(10)),
        ctx,
    );
    let recording_controller = crate::controller::drive(CONTROLLER, recordings);
    let auto_controller = crate::controller::drive("recordingjob-auto", automatic);
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

async fn announce(ctx: &Context, rj: &RecordingJob, event: &decide::Event) {
    publish(ctx, rj, event.type_, event.reason, &event.note).await;
}

async fn reconcile_recording(rj: &RecordingJob, ctx: &Context) -> Result<Action> {
    let observed = observe(rj, ctx).await?;
    let recorder = decide::Recorder { image: &ctx.config.recorder_image, placement: &ctx.config.recorder_placement };
    match decide::decide(rj, &observed, recorder) {
        decide::Decision::Nothing => Ok(Action::await_change()),
        decide::Decision::AddFinalizer { patch } => {
            patch_metadata(rj, ctx, &patch).await?;
            Ok(Action::await_change())
        }
        decide::Decision::Cleanup(step) => {
            apply_cleanup(rj, &step, ctx).await?;
            Ok(step.requeue())
        }
        decide::Decision::Record(record) => {
            let job = apply_record(rj, &record, ctx).await?.or(observed.job);
            let next = build::status(rj, job.as_ref(), record.invalid.as_ref(), jiff::Timestamp::now());
            write_status(rj, &next, record.invalid.is_some(), ctx).await?;
            Ok(decide::requeue(&next))
        }
    }
}

/// Reads what the decision needs: the recorder Job, and either the file deletion
/// Job (being deleted) or, while the recorder Job is still to be made, the Meeting
/// and the claim it is made from.
async fn observe(rj: &RecordingJob, ctx: &Context) -> Result<decide::Observed> {
    let ns = rj.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let stage = decide::stage(rj);
    if matches!(stage, decide::Stage::Released | decide::Stage::AddFinalizer) {
        return Ok(decide::Observed::default());
    }
    let job = jobs.get_opt(&build::job_name(rj)).await.observing("recorder Job")?;
    let mut observed = decide::Observed::default();
    if stage == decide::Stage::Cleanup && !decide::recorder_running(job.as_ref()) {
        observed.cleanup_job = jobs.get_opt(&build::cleanup_job_name(rj)).await.observing("file deletion Job")?;
    }
    if stage == decide::Stage::Record && decide::job_wanted(rj, job.as_ref()) {
        let meeting = Api::<Meeting>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&rj.spec.meeting_ref.name)
            .await
            .observing("Meeting")?;
        let pvc = match &rj.spec.storage.pvc {
            Some(p) => Some(
                Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
                    .get_opt(&p.claim_name)
                    .await
                    .observing("PersistentVolumeClaim")?,
            ),
            None => None,
        };
        observed.target = Some(decide::Target { meeting, pvc });
    }
    observed.job = job;
    Ok(observed)
}

async fn patch_metadata(rj: &RecordingJob, ctx: &Context, patch: &serde_json::Value) -> Result<()> {
    Api::<RecordingJob>::namespaced(ctx.client.clone(), &rj.namespace().unwrap_or_default())
        .patch(&rj.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .applying("RecordingJob finalizer")?;
    Ok(())
}

/// Makes the recorder Job (with its ServiceAccount and RoleBinding) or reports why
/// it cannot be made; the Job as created.
async fn apply_record(rj: &RecordingJob, record: &decide::Record, ctx: &Context) -> Result<Option<Job>> {
    let ns = rj.namespace().unwrap_or_default();
    let mut created = None;
    if let Some(job) = &record.create {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns)
            .patch(build::RECORDER_SERVICE_ACCOUNT, &params, &Patch::Apply(&build::service_account(&ns)))
            .await
            .applying("recorder ServiceAccount")?;
        Api::<RoleBinding>::namespaced(ctx.client.clone(), &ns)
            .patch(build::RECORDER_SERVICE_ACCOUNT, &params, &Patch::Apply(&build::role_binding(&ns)))
            .await
            .applying("recorder RoleBinding")?;
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        created = Some(jobs.create(&PostParams::default(), job).await.applying("recorder Job")?);
    }
    if let Some(event) = &record.event {
        announce(ctx, rj, event).await;
    }
    Ok(created)
}

/// Publishes the Events of the status change, then writes it if it says anything new.
async fn write_status(rj: &RecordingJob, next: &RecordingJobStatus, invalid: bool, ctx: &Context) -> Result<()> {
    let previous = rj.status.clone().unwrap_or_default();
    for event in decide::transitions(&previous, next, invalid) {
        announce(ctx, rj, &event).await;
    }
    if decide::status_changed(&previous, next) {
        let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "RecordingJob", "status": next});
        Api::<RecordingJob>::namespaced(ctx.client.clone(), &rj.namespace().unwrap_or_default())
            .patch_status(&rj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .writing_status()?;
    }
    Ok(())
}

/// Retention Delete: stop the recorder, run the delete Job, then let the object go.
async fn apply_cleanup(rj: &RecordingJob, step: &decide::Cleanup, ctx: &Context) -> Result<()> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &rj.namespace().unwrap_or_default());
    match step {
        decide::Cleanup::StopRecorder => {
            let background = DeleteParams::background();
            jobs.delete(&build::job_name(rj), &background).await.applying("deletion of the recorder Job")?;
        }
        decide::Cleanup::DeleteFiles { job, event } => {
            jobs.create(&PostParams::default(), job).await.applying("file deletion Job")?;
            announce(ctx, rj, event).await;
        }
        decide::Cleanup::Wait => {}
        decide::Cleanup::Failed(event) => announce(ctx, rj, event).await,
        decide::Cleanup::Release { patch } => patch_metadata(rj, ctx, patch).await?,
    }
    Ok(())
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
