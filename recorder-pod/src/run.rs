//! One run of the recorder: check, record, composite, store, report.
//!
//! Exit codes tell the Job what to do: 0 done; 1 a failure worth retrying (the Job
//! runs the recorder again with backoff; chunks already stored are kept and used);
//! 2 a failure no retry can fix (the Job's podFailurePolicy fails the Job at once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use switchboard_crds::meeting::{Meeting, MeetingPhase, room_name};
use switchboard_crds::recording_job::{Layout, RecorderReport, RecorderStage, RecordingJob, STOP_ANNOTATION};
use switchboard_sfu_api::ParticipantKind;
use switchboard_sfu_client::{JoinOptions, Participant, SfuApi};

use crate::compose;
use crate::config::{Config, Mode};
use crate::http::Metrics;
use crate::tracks::TrackRecorder;

pub const FIELD_MANAGER: &str = "switchboard-recorder";
/// A track announced by the SFU with no packet for this long makes the recorder rejoin.
const UNHEARD_REJOIN_AFTER: Duration = Duration::from_secs(6);

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Retry,
    Permanent,
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Done => 0,
            Outcome::Retry => 1,
            Outcome::Permanent => 2,
        }
    }
}

struct Reporter {
    api: Api<RecordingJob>,
    name: String,
    report: RecorderReport,
}

impl Reporter {
    async fn send(&mut self) {
        self.report.updated_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()));
        let patch = serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1",
            "kind": "RecordingJob",
            "status": { "recorder": self.report },
        });
        if let Err(e) =
            self.api.patch_status(&self.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await
        {
            tracing::warn!(error = %e, "could not report to the RecordingJob");
        }
    }

    async fn stage(&mut self, stage: RecorderStage) {
        self.report.stage = stage;
        self.send().await;
    }

    async fn fail(&mut self, reason: &str, message: impl Into<String>, outcome: Outcome) -> Outcome {
        let message = message.into();
        tracing::error!(reason, %message, "recording failed");
        self.report.stage = RecorderStage::Failed;
        self.report.reason = Some(reason.into());
        self.report.message = Some(message);
        self.send().await;
        outcome
    }
}

/// Runs the recorder to the end; the caller exits with the outcome's code.
pub async fn run(
    cfg: Config,
    client: Client,
    metrics: Metrics,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let jobs: Api<RecordingJob> = Api::namespaced(client.clone(), &cfg.namespace);
    let job = match jobs.get_opt(&cfg.recording_job).await {
        Ok(Some(j)) => j,
        Ok(None) => {
            tracing::error!(job = %cfg.recording_job, "the RecordingJob does not exist");
            return Outcome::Permanent;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the RecordingJob");
            return Outcome::Retry;
        }
    };
    if cfg.mode == Mode::Delete {
        return match cfg.storage.delete_all().await {
            Ok(()) => {
                tracing::info!(dir = %cfg.storage.work_dir().display(), "recording deleted");
                Outcome::Done
            }
            Err(e) => {
                tracing::error!(error = %e, "could not delete the recording");
                Outcome::Retry
            }
        };
    }
    let previous = job.status.as_ref().and_then(|s| s.recorder.clone());
    let attempt = previous.as_ref().map_or(1, |r| r.attempt + 1);
    let mut reporter = Reporter {
        api: jobs.clone(),
        name: job.name_any(),
        report: RecorderReport { attempt, stage: RecorderStage::Starting, ..previous.unwrap_or_default() },
    };
    reporter.report.reason = None;
    reporter.report.message = None;
    reporter.send().await;

    if let Err(e) = cfg.storage.preflight().await {
        return reporter
            .fail("StorageUnavailable", format!("{} cannot be written: {e}", cfg.storage.url("")), Outcome::Permanent)
            .await;
    }
    match cfg.storage.restore().await {
        Ok(n) if n > 0 => tracing::info!(files = n, "restored an earlier run's files"),
        Ok(_) => {}
        Err(e) => {
            return reporter
                .fail("StorageUnavailable", format!("cannot read earlier chunks: {e}"), Outcome::Retry)
                .await;
        }
    }
    let meetings: Api<Meeting> = Api::namespaced(client, &cfg.namespace);
    let recorder = match TrackRecorder::new(cfg.storage.work_dir(), attempt, cfg.chunk_length) {
        Ok(r) => Arc::new(r),
        Err(e) => return reporter.fail("StorageUnavailable", e.to_string(), Outcome::Permanent).await,
    };

    match record(&cfg, &meetings, &recorder, &mut reporter, &metrics, &mut shutdown).await {
        Ok(()) => {}
        Err(outcome) => return outcome,
    }
    for chunk in recorder.finish() {
        if let Err(e) = cfg.storage.store(&chunk).await {
            return reporter.fail("UploadFailed", e.to_string(), Outcome::Retry).await;
        }
    }
    process(&cfg, &mut reporter, &metrics).await
}

/// Records until the meeting ends, the maximum duration passes, or media stops.
async fn record(
    cfg: &Config,
    meetings: &Api<Meeting>,
    recorder: &Arc<TrackRecorder>,
    reporter: &mut Reporter,
    metrics: &Metrics,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), Outcome> {
    let started = Instant::now();
    let room = room_name(&cfg.namespace, &cfg.meeting);
    let mut joined: Option<(String, Participant)> = None;
    let mut join_failing_since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_reported = (usize::MAX, usize::MAX);
    let mut watch = crate::tracks::UnheardWatch::new(UNHEARD_REJOIN_AFTER);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A closed channel (no signal handler) disables this branch rather than firing it.
            Ok(()) = shutdown.changed() => {
                // The pod is going away: keep what is written, let the next run continue.
                let closed = recorder.finish();
                for c in closed { let _ = cfg.storage.store(&c).await; }
                let why = "the recorder was stopped before the meeting ended";
                return Err(reporter.fail("Interrupted", why, Outcome::Retry).await);
            }
        }
        ticks += 1;
        for chunk in recorder.tick() {
            if let Err(e) = cfg.storage.store(&chunk).await {
                return Err(reporter.fail("UploadFailed", e.to_string(), Outcome::Retry).await);
            }
        }
        let totals = recorder.totals();
        metrics.observe(&totals);
        if (totals.tracks, totals.chunks) != last_reported && ticks.is_multiple_of(4) {
            last_reported = (totals.tracks, totals.chunks);
            reporter.report.tracks = totals.tracks as i32;
            reporter.report.chunks = totals.chunks as i32;
            if joined.is_some() {
                reporter.report.stage = RecorderStage::Recording;
            }
            reporter.send().await;
        }
        if started.elapsed() >= cfg.max_duration {
            tracing::info!("the maximum duration is reached");
            break;
        }
        if recorder.last_media().is_some_and(|t| t.elapsed() >= cfg.idle_timeout) {
            tracing::info!("no media for the idle timeout");
            break;
        }
        if !ticks.is_multiple_of(2) {
            continue;
        }
        let meeting = match meetings.get_opt(&cfg.meeting).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the Meeting");
                continue;
            }
        };
        let Some(meeting) = meeting else {
            if recorder.totals().frames > 0 {
                tracing::info!("the Meeting is gone: the recording ends");
                break;
            }
            return Err(reporter
                .fail(
                    "MeetingNotFound",
                    format!("Meeting {}/{} does not exist", cfg.namespace, cfg.meeting),
                    Outcome::Permanent,
                )
                .await);
        };
        // Stopped early (signaling, or anyone who may patch the job): what is recorded
        // so far is the recording.
        match reporter.api.get_opt(&reporter.name).await {
            Ok(Some(job)) if job.annotations().contains_key(STOP_ANNOTATION) => {
                let by = &job.annotations()[STOP_ANNOTATION];
                // Chunks of an earlier run of this job count too.
                if recorder.totals().frames == 0 && !has_chunks(cfg) {
                    return Err(reporter
                        .fail(
                            "NothingRecorded",
                            format!("stopped by {by} before anything was recorded"),
                            Outcome::Permanent,
                        )
                        .await);
                }
                tracing::info!(%by, "the recording was stopped");
                break;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the RecordingJob"),
        }
        let status = meeting.status.clone().unwrap_or_default();
        if matches!(status.phase, Some(MeetingPhase::Ended | MeetingPhase::Failed)) {
            if !has_chunks(cfg) {
                return Err(reporter
                    .fail("NothingRecorded", "the meeting ended before anything was recorded", Outcome::Permanent)
                    .await);
            }
            tracing::info!("the meeting ended");
            break;
        }
        // The meeting's origin SFU hears every participant (edges relay to it).
        let Some(endpoint) = status.assignment.as_ref().map(|a| a.origin.endpoint.clone()) else { continue };
        // A subscription the SFU set up but no packet ever came through (webrtc-rs can
        // lose a receiver to a negotiation race): fresh connections fix it.
        if let Some(stuck) = joined.as_ref().and_then(|(_, p)| {
            let heard = recorder.heard();
            p.with_events(|events| watch.check(events, &heard))
        }) {
            tracing::warn!(tracks = ?stuck, "announced tracks never arrived: rejoining the SFU");
            let (_, p) = joined.take().expect("checked");
            let _ = tokio::time::timeout(Duration::from_secs(5), p.leave()).await;
        }
        if joined.as_ref().is_some_and(|(at, _)| *at != endpoint) {
            let (old, p) = joined.take().expect("checked");
            tracing::info!(from = %old, to = %endpoint, "the meeting moved: following it");
            let _ = tokio::time::timeout(Duration::from_secs(5), p.leave()).await;
        }
        if joined.is_none() {
            let id =
                format!("recorder-{}-{}-{:04x}", cfg.recording_job, reporter.report.attempt, rand::random::<u16>());
            let opts =
                JoinOptions { kind: ParticipantKind::Hidden, sink: Some(recorder.clone()), ..Default::default() };
            match Participant::join(SfuApi::new(endpoint.clone()), &room, &id, opts).await {
                Ok(p) => {
                    tracing::info!(%endpoint, %room, participant = %id, "recording");
                    joined = Some((endpoint, p));
                    join_failing_since = None;
                    reporter.stage(RecorderStage::Recording).await;
                }
                Err(e) => {
                    let since = *join_failing_since.get_or_insert_with(Instant::now);
                    tracing::warn!(%endpoint, error = %e, "cannot join the meeting's SFU");
                    if since.elapsed() > Duration::from_secs(30) {
                        return Err(reporter.fail("SfuUnreachable", format!("{endpoint}: {e}"), Outcome::Retry).await);
                    }
                }
            }
        }
    }
    if let Some((_, p)) = joined {
        let _ = tokio::time::timeout(Duration::from_secs(5), p.leave()).await;
    }
    Ok(())
}

/// Whether any run of this job stored a chunk.
fn has_chunks(cfg: &Config) -> bool {
    std::fs::read_dir(cfg.storage.work_dir().join(crate::tracks::TRACKS_DIR)).is_ok_and(|mut d| d.next().is_some())
}

/// Joins the tracks, composites the layout, stores the result, reports it.
async fn process(cfg: &Config, reporter: &mut Reporter, metrics: &Metrics) -> Outcome {
    reporter.stage(RecorderStage::Processing).await;
    let dir = cfg.storage.work_dir().to_owned();
    let tracks = match tokio::task::spawn_blocking(move || compose::join_tracks(&dir))
        .await
        .expect("join_tracks does not panic")
    {
        Ok(t) => t,
        Err(compose::ComposeError::NothingRecorded) => {
            return reporter.fail("NothingRecorded", "no track was recorded", Outcome::Permanent).await;
        }
        Err(e) => return reporter.fail("CompositingFailed", e.to_string(), Outcome::Retry).await,
    };
    let (start, end) = compose::span(&tracks);
    let mut outputs: Vec<std::path::PathBuf> = tracks.iter().map(|t| t.path.clone()).collect();
    let main = if cfg.layout == Layout::Tracks {
        compose::TRACKS_DIR_URL.to_owned()
    } else {
        let name = compose::output_name(cfg.layout, cfg.format);
        let output = cfg.storage.work_dir().join(&name);
        let began = Instant::now();
        if let Err(e) =
            compose::run_ffmpeg(&cfg.ffmpeg, &tracks, cfg.layout, cfg.format, &output, cfg.compose_timeout).await
        {
            return reporter.fail("CompositingFailed", e.to_string(), Outcome::Retry).await;
        }
        metrics.compose_duration.observe(began.elapsed().as_secs_f64());
        tracing::info!(seconds = began.elapsed().as_secs_f64(), media_seconds = (end - start) / 1000, "composited");
        outputs.push(output);
        name
    };
    let mut size = 0u64;
    for file in &outputs {
        size += std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        if let Err(e) = cfg.storage.store(file).await {
            return reporter.fail("UploadFailed", e.to_string(), Outcome::Retry).await;
        }
    }
    reporter.report.url = Some(cfg.storage.url(&main));
    reporter.report.duration_seconds = Some(((end - start) as f64 / 1000.0).round() as i64);
    reporter.report.size_bytes = Some(size as i64);
    reporter.report.reason = None;
    reporter.report.message = None;
    reporter.stage(RecorderStage::Uploaded).await;
    Outcome::Done
}
