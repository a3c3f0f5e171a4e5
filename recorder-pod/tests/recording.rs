//! Recording end to end: a real SFU (in-process), real WebRTC publishers sending real
//! VP8 and Opus, the operator's RecordingJob controller under the repo's RBAC, real
//! batch/v1 Jobs whose pods run the recorder binary as local processes (see
//! `switchboard_e2e::job_runner`), and ffprobe on what comes out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use recorder_pod::storage::{Addressing, MIN_PART_SIZE, S3Config, Storage};
use serde_json::json;
use switchboard_crds::meeting::Meeting;
use switchboard_crds::recording_job::{RecordingJob, RecordingPhase};
use switchboard_e2e::job_runner::{LocalJobRunner, RunnerOptions};
use switchboard_e2e::operator::{OperatorHandle, operator_identity, start_operator_with};
use switchboard_e2e::{TestNamespace, client, eventually, install_crds, wait_for};
use switchboard_sfu_client::encoded::{EncodedCodec, ToneClip, VideoClip, encode_clip};
use switchboard_sfu_client::{EncodedMedia, JoinOptions, Participant, Publish, SfuApi};
use tokio::sync::OnceCell;

/// How long a recording may take to be processed and stored: nine recordings of
/// these tests composite with ffmpeg at once on two cores, so a bound that a lone
/// run meets in a minute needs room when they all run together.
const PROCESSING_BOUND: Duration = Duration::from_secs(300);
const RECORDER: &str = env!("CARGO_BIN_EXE_recorder-pod");

/// Test media, encoded once per run: per publisher a camera (a moving test pattern, a
/// keyframe every third of a second, so a new subscriber starts at once), VP8 for the
/// first and H.264 for the second (as Chrome and Safari send), and an Ogg Opus sine tone.
struct TestMedia {
    video: Vec<EncodedMedia>,
    audio: Vec<EncodedMedia>,
}

static MEDIA: OnceCell<TestMedia> = OnceCell::const_new();

async fn media() -> &'static TestMedia {
    MEDIA
        .get_or_init(|| async {
            let dir = std::env::temp_dir().join(format!("switchboard-test-media-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut video = Vec::new();
            let mut audio = Vec::new();
            for (i, (pattern, tone)) in [("testsrc2", 440), ("smptebars", 660)].into_iter().enumerate() {
                // The first camera sends VP8, the second H.264.
                let (codec, file) = if i == 0 { (EncodedCodec::Vp8, "ivf") } else { (EncodedCodec::H264, "h264") };
                let camera = encode_clip(VideoClip::new(codec, pattern), 10, &dir.join(format!("p{i}.{file}")));
                video.push(camera.expect("ffmpeg encodes the camera"));
                let microphone = encode_clip(ToneClip::new(tone), 10, &dir.join(format!("p{i}.ogg")));
                audio.push(microphone.expect("ffmpeg encodes the tone"));
            }
            TestMedia { video, audio }
        })
        .await
}

/// What ffmpeg's decoders complain about in a media file (nothing, when it plays). The
/// null muxer's notes on repeated millisecond timestamps are about the muxer, not the file.
fn decode_errors(path: &Path) -> String {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg is installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .filter(|l| !l.starts_with("[null @") && !l.trim_start().starts_with("Last message repeated"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// (streams' codec types, duration in seconds) of a media file.
fn ffprobe(path: &Path) -> (Vec<String>, f64) {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=codec_type:format=duration", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe is installed");
    assert!(out.status.success(), "ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let types =
        v["streams"].as_array().unwrap().iter().map(|s| s["codec_type"].as_str().unwrap_or("").to_owned()).collect();
    let duration = v["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0);
    (types, duration)
}

struct Env {
    admin: Client,
    ns: TestNamespace,
    _operator: OperatorHandle,
    sfu: sfu_pod::local::LocalSfu,
    runner: LocalJobRunner,
    storage: PathBuf,
}

impl Env {
    async fn new(prefix: &str, extra_env: Vec<(String, String)>) -> Self {
        let admin = client().await;
        install_crds(&admin).await;
        let ns = TestNamespace::create(&admin, prefix).await;
        let mut config = switchboard_operator::OperatorConfig::for_namespace(&ns.name, "operator-rec");
        config.controllers = Some(vec!["recordingjob".into()]);
        config.recorder_image = "switchboard/recorder-pod:test".into();
        let operator = start_operator_with(operator_identity(&admin, &ns.name).await, config);
        let sfu = sfu_pod::local::start(&format!("sfu-{}", ns.name)).await.expect("local SFU");
        let work = std::env::temp_dir().join(format!("switchboard-rec-{}", ns.name));
        let storage = work.join("pvc-recordings");
        std::fs::create_dir_all(&storage).unwrap();
        // A claim bound to a volume (the scheduler holds pods with unbound claims back);
        // the job runner maps it to `storage`.
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": format!("recordings-{}", ns.name), "labels": {"switchboard.dev/test": "true"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": storage.display().to_string()},
                     "claimRef": {"namespace": ns.name, "name": "recordings"}}
        }))
        .unwrap();
        Api::<PersistentVolume>::all(admin.clone()).create(&PostParams::default(), &pv).await.expect("PV");
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "recordings"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                     "volumeName": format!("recordings-{}", ns.name),
                     "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .unwrap();
        ns.api::<PersistentVolumeClaim>().create(&PostParams::default(), &pvc).await.expect("PVC");
        let claims = ns.api::<PersistentVolumeClaim>();
        wait_for("the recordings claim is Bound", Duration::from_secs(30), || {
            let claims = claims.clone();
            async move { claims.get("recordings").await.ok().and_then(|c| c.status?.phase).as_deref() == Some("Bound") }
        })
        .await;
        let mut env = vec![("RECORDER_CHUNK_SECONDS".to_owned(), "2".to_owned())];
        env.extend(extra_env);
        let runner = LocalJobRunner::start(
            admin.clone(),
            &ns.name,
            RunnerOptions {
                binary: RECORDER.into(),
                volumes: [("recordings".to_owned(), storage.clone())].into(),
                extra_env: env,
                work,
            },
        );
        Self { admin, ns, _operator: operator, sfu, runner, storage }
    }

    fn recordings(&self) -> Api<RecordingJob> {
        self.ns.api()
    }

    /// A Meeting, Active on the local SFU, its status written as the operator would.
    async fn meeting(&self, name: &str) {
        let m: Meeting = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": name},
            "spec": {"title": "recorded", "host": "alice", "participants": {"expected": 4}}
        }))
        .unwrap();
        self.ns.api::<Meeting>().create(&PostParams::default(), &m).await.expect("Meeting");
        self.set_meeting_phase(name, "Active").await;
    }

    async fn set_meeting_phase(&self, name: &str, phase: &str) {
        let patch = json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
            "status": {
                "phase": phase,
                "assignment": {"pool": "test", "origin": {"pod": "sfu-local", "endpoint": self.sfu.endpoint}}
            }
        });
        self.ns
            .api::<Meeting>()
            .patch_status(name, &PatchParams::apply("switchboard-operator").force(), &Patch::Apply(&patch))
            .await
            .expect("Meeting status");
    }

    async fn record(&self, name: &str, meeting: &str, extra: serde_json::Value) {
        let mut spec = json!({
            "meetingRef": {"name": meeting},
            "storage": {"pvc": {"claimName": "recordings", "path": "/meetings"}},
        });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let rj: RecordingJob = serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "RecordingJob", "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        self.recordings().create(&PostParams::default(), &rj).await.expect("RecordingJob");
    }

    async fn await_phase(&self, name: &str, phase: RecordingPhase, timeout: Duration) -> RecordingJob {
        let api = self.recordings();
        let logs = || self.runner.logs();
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Ok(rj) = api.get(name).await {
                    let now = rj.status.as_ref().and_then(|s| s.phase);
                    if now == Some(phase) {
                        return Ok(rj);
                    }
                    let terminal = matches!(now, Some(RecordingPhase::Ready | RecordingPhase::Failed));
                    if terminal {
                        return Err(rj);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await;
        match found {
            Ok(Ok(rj)) => rj,
            Ok(Err(rj)) => panic!(
                "{name} ended {:?} instead of {phase:?}: {:#?}\nrecorder logs:\n{}",
                rj.status.as_ref().and_then(|s| s.phase),
                rj.status,
                logs()
            ),
            Err(_) => {
                let rj = api.get(name).await.ok();
                panic!(
                    "{name} not {phase:?} within {timeout:?}: {:#?}\nrecorder logs:\n{}",
                    rj.and_then(|r| r.status),
                    logs()
                )
            }
        }
    }

    fn dir(&self, meeting: &str, job: &str) -> PathBuf {
        self.storage.join("meetings").join(&self.ns.name).join(meeting).join(job)
    }

    /// Two publishers with real camera and microphone media, in `meeting`. Returns once
    /// the recorder writes all four tracks: a new subscription takes the SFU a second or
    /// two to set up, and what is sent before it is not recordable.
    async fn publishers(&self, meeting: &str, job: &str) -> Vec<Participant> {
        let both = self.sfu.endpoint.clone();
        self.publishers_on(meeting, job, [both.clone(), both]).await
    }

    /// Like [`Env::publishers`], alice joining `endpoints[0]` and bob `endpoints[1]`.
    async fn publishers_on(&self, meeting: &str, job: &str, endpoints: [String; 2]) -> Vec<Participant> {
        let m = media().await;
        let room = switchboard_crds::meeting::room_name(&self.ns.name, meeting);
        let mut out = Vec::new();
        for (i, who) in ["alice", "bob"].into_iter().enumerate() {
            let opts = JoinOptions {
                manual_subscribe: true,
                publish: vec![
                    Publish::encoded(&format!("{who}-cam"), m.video[i].clone()),
                    Publish::encoded(&format!("{who}-mic"), m.audio[i].clone()),
                ],
                ..Default::default()
            };
            out.push(
                Participant::join(SfuApi::new(endpoints[i].clone()), &room, who, opts).await.expect("publisher joins"),
            );
        }
        let dir = self.dir(meeting, job);
        let api = self.recordings();
        // Generous: a subscription lost to webrtc-rs's negotiation race is only noticed
        // after 6 s without packets and then rejoined, and CI runs these tests side by side.
        wait_for("the recorder writing four tracks", Duration::from_secs(45), || {
            // On the volume as soon as they are written; else (S3) as the recorder reports them.
            let tracks: std::collections::HashSet<PathBuf> =
                chunk_files(&dir).iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
            let api = api.clone();
            async move {
                let reported = api.get(job).await.ok().and_then(|r| r.status?.recorder).map_or(0, |r| r.tracks);
                tracks.len() >= 4 || reported >= 4
            }
        })
        .await;
        out
    }

    /// Two publishers in `meeting` for `seconds` of recorded media; then the meeting ends.
    async fn hold_meeting(&self, meeting: &str, job: &str, seconds: u64) {
        let publishers = self.publishers(meeting, job).await;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        leave_all(publishers).await;
        self.set_meeting_phase(meeting, "Ended").await;
    }

    async fn finish(self) {
        let Env { ns, admin, .. } = self;
        let _ = Api::<PersistentVolume>::all(admin)
            .delete(&format!("recordings-{}", ns.name), &DeleteParams::background())
            .await;
        ns.delete().await;
    }
}

fn chunk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("tracks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("-a")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

async fn leave_all(publishers: Vec<Participant>) {
    for p in publishers {
        let _ = p.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_publishers_for_20_seconds_make_a_playable_mp4_with_the_tracks_kept() {
    let env = Env::new("rec-mp4", vec![]).await;
    env.meeting("standup").await;
    env.record("standup-rec", "standup", json!({"layout": "Gallery"})).await;
    env.await_phase("standup-rec", RecordingPhase::Recording, Duration::from_secs(60)).await;

    // 20 s of media from the moment the recorder has every track.
    env.hold_meeting("standup", "standup-rec", 20).await;

    let rj = env.await_phase("standup-rec", RecordingPhase::Ready, PROCESSING_BOUND).await;
    let status = rj.status.unwrap();
    let dir = env.dir("standup", "standup-rec");
    assert_eq!(
        status.url.as_deref(),
        Some(format!("pvc://recordings/meetings/{}/standup/standup-rec/gallery.mp4", env.ns.name).as_str())
    );
    let mp4 = dir.join("gallery.mp4");
    let (streams, duration) = ffprobe(&mp4);
    assert!(streams.contains(&"video".to_owned()) && streams.contains(&"audio".to_owned()), "streams: {streams:?}");
    // The per-track files stay, beside the chunks they were joined from: alice's camera
    // in VP8, bob's in H.264.
    let mut tracks: Vec<(String, f64)> = Vec::new();
    for who in ["alice", "bob"] {
        for (track, kind) in [(format!("{who}-cam.ivf"), "video"), (format!("{who}-mic.ogg"), "audio")] {
            let path = dir.join("tracks").join(who).join(&track);
            let (streams, duration) = ffprobe(&path);
            assert_eq!(streams, vec![kind.to_owned()], "{}", path.display());
            assert!(duration > 15.0, "{} lasts {duration} s", path.display());
            let errors = decode_errors(&path);
            assert!(errors.is_empty(), "{} decodes with errors: {errors}", path.display());
            tracks.push((track, duration));
        }
    }
    // 20 s from the moment the recorder has all four tracks, plus what came before that
    // and the leaving: the MP4 spans its longest track.
    let longest = tracks.iter().map(|t| t.1).fold(0.0, f64::max);
    assert!(
        (19.0..=22.5).contains(&duration) && (duration - longest).abs() <= 0.5,
        "the MP4 lasts {duration} s; its tracks (s): {tracks:?}; {status:?}"
    );
    assert!(status.duration_seconds.is_some_and(|d| (19..=23).contains(&d)), "{status:?}");
    assert!(
        status.size_bytes.unwrap_or(0) > std::fs::metadata(&mp4).unwrap().len() as i64,
        "size counts the MP4 and the track files"
    );
    assert!(chunk_files(&dir).len() >= 4 * 8, "2-second chunks of four tracks: {:?}", chunk_files(&dir));
    assert_eq!(env.runner.runs().len(), 1, "one recorder run");
    env.finish().await;
}

/// A host stops the recording while the meeting goes on (signaling annotates the
/// RecordingJob, `STOP_ANNOTATION`): the recorder leaves, composites the seconds it has
/// and the job is `Ready`, though the meeting is still Active with its publishers in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recording_stopped_mid_meeting_is_composited_from_what_it_has_while_the_meeting_goes_on() {
    let env = Env::new("rec-stop", vec![]).await;
    env.meeting("review").await;
    env.record("review-rec", "review", json!({"layout": "Gallery"})).await;
    env.await_phase("review-rec", RecordingPhase::Recording, Duration::from_secs(60)).await;
    let publishers = env.publishers("review", "review-rec").await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stop = json!({"metadata": {"annotations": {switchboard_crds::recording_job::STOP_ANNOTATION: "hana"}}});
    env.recordings().patch("review-rec", &PatchParams::default(), &Patch::Merge(&stop)).await.unwrap();
    let rj = env.await_phase("review-rec", RecordingPhase::Ready, PROCESSING_BOUND).await;
    let meeting: Meeting = Api::namespaced(env.admin.clone(), &env.ns.name).get("review").await.unwrap();
    assert_eq!(
        meeting.status.and_then(|s| s.phase),
        Some(switchboard_crds::meeting::MeetingPhase::Active),
        "the meeting goes on"
    );
    let (streams, duration) = ffprobe(&env.dir("review", "review-rec").join("gallery.mp4"));
    assert!(streams.contains(&"video".to_owned()) && streams.contains(&"audio".to_owned()), "streams: {streams:?}");
    // About 8 s from the moment every track was there, plus the second the stop takes to be read.
    assert!((7.0..=12.0).contains(&duration), "the recording lasts {duration} s: {:?}", rj.status);
    leave_all(publishers).await;
    assert_eq!(env.runner.runs().len(), 1, "one recorder run");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorder_killed_mid_meeting_keeps_its_chunks_and_the_retried_run_finishes() {
    let env = Env::new("rec-crash", vec![]).await;
    env.meeting("crashy").await;
    env.record("crashy-rec", "crashy", json!({"layout": "Speaker", "retries": 2})).await;
    env.await_phase("crashy-rec", RecordingPhase::Recording, Duration::from_secs(60)).await;
    let publishers = env.publishers("crashy", "crashy-rec").await;
    let dir = env.dir("crashy", "crashy-rec");
    wait_for("chunks of all four tracks", Duration::from_secs(30), || {
        let n = chunk_files(&dir).len();
        async move { n >= 8 }
    })
    .await;
    assert!(env.runner.kill_current(), "a recorder was running");
    let before = chunk_files(&dir);
    // The Job controller sees the pod fail and starts another after its backoff (10 s).
    let second = eventually("a second recorder run", Duration::from_secs(60), || {
        let runs = env.runner.runs();
        async move { (runs.len() >= 2).then_some(runs) }
    })
    .await;
    assert_eq!(second[0].exit_code, Some(137), "the first run was killed");
    wait_for("the second run records", Duration::from_secs(30), || {
        let n = chunk_files(&dir).iter().filter(|p| p.to_string_lossy().contains("-a2.")).count();
        async move { n >= 4 }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    leave_all(publishers).await;
    env.set_meeting_phase("crashy", "Ended").await;
    let rj = env.await_phase("crashy-rec", RecordingPhase::Ready, PROCESSING_BOUND).await;
    let status = rj.status.unwrap();
    assert_eq!(status.attempts, 2, "{status:?}");
    for chunk in &before {
        assert!(chunk.exists(), "{} was kept", chunk.display());
    }
    let (streams, duration) = ffprobe(&dir.join("speaker.mp4"));
    assert_eq!(streams.len(), 2, "{streams:?}");
    let span = status.duration_seconds.unwrap() as f64;
    assert!(
        (duration - span).abs() <= 1.0 && span >= 15.0,
        "the MP4 ({duration} s) spans both runs ({span} s), the gap kept"
    );
    env.finish().await;
}

/// An ffmpeg that fails: always, or (with a marker file) only the first time.
fn failing_ffmpeg(dir: &Path, once: bool) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join(if once { "ffmpeg-fails-once" } else { "ffmpeg-fails" });
    let marker = dir.join("failed-once");
    let body = if once {
        format!(
            "#!/bin/sh\nif [ ! -e {m} ]; then touch {m}; echo 'simulated encoder crash' >&2; exit 1; fi\nexec ffmpeg \"$@\"\n",
            m = marker.display()
        )
    } else {
        "#!/bin/sh\necho 'simulated encoder crash' >&2\nexit 1\n".to_owned()
    };
    std::fs::write(&script, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_compositing_failure_is_retried_and_reported_failed_when_retries_run_out() {
    let scripts = std::env::temp_dir().join(format!("switchboard-ffmpeg-{}", std::process::id()));
    let once = failing_ffmpeg(&scripts.join("once"), true);
    let env = Env::new("rec-compose", vec![("RECORDER_FFMPEG".into(), once.display().to_string())]).await;
    env.meeting("demo").await;
    // Retention Delete: once Ready, deleting the RecordingJob removes its files.
    env.record("demo-rec", "demo", json!({"retries": 2, "retention": "Delete", "format": "WebM"})).await;
    env.await_phase("demo-rec", RecordingPhase::Recording, Duration::from_secs(60)).await;
    env.hold_meeting("demo", "demo-rec", 5).await;
    let rj = env.await_phase("demo-rec", RecordingPhase::Ready, PROCESSING_BOUND).await;
    assert_eq!(rj.status.as_ref().unwrap().attempts, 2, "failed once, then composited: {:?}", rj.status);
    let dir = env.dir("demo", "demo-rec");
    let (streams, _) = ffprobe(&dir.join("gallery.webm"));
    assert_eq!(streams.len(), 2);
    let reasons = switchboard_e2e::fixtures::event_reasons(&env.admin, &env.ns.name, "demo-rec").await;
    assert!(reasons.iter().any(|r| r == "RecorderFailed"), "{reasons:?}");

    env.recordings().delete("demo-rec", &DeleteParams::default()).await.unwrap();
    switchboard_e2e::await_deleted(&env.recordings(), "demo-rec", Duration::from_secs(60)).await;
    assert!(!dir.exists(), "retention Delete removed {}", dir.display());

    // Every run fails: after 1 + 1 retries the RecordingJob is Failed, with the reason.
    env.runner.set_extra_env(vec![(
        "RECORDER_FFMPEG".into(),
        failing_ffmpeg(&scripts.join("always"), false).display().to_string(),
    )]);
    env.meeting("doomed").await;
    env.record("doomed-rec", "doomed", json!({"retries": 1})).await;
    env.await_phase("doomed-rec", RecordingPhase::Recording, Duration::from_secs(60)).await;
    env.hold_meeting("doomed", "doomed-rec", 4).await;
    let rj = env.await_phase("doomed-rec", RecordingPhase::Failed, PROCESSING_BOUND).await;
    let status = rj.status.unwrap();
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").expect("a Failed condition");
    assert_eq!(failed.reason, "CompositingFailed", "{failed:?}");
    assert!(
        failed.message.contains("simulated encoder crash") && failed.message.contains("BackoffLimitExceeded"),
        "{failed:?}"
    );
    assert_eq!(status.attempts, 2);
    // The chunks are kept for a manual retry.
    assert!(!chunk_files(&env.dir("doomed", "doomed-rec")).is_empty());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recordings_that_cannot_work_fail_fast_and_active_auto_meetings_get_one() {
    let env = Env::new("rec-fail", vec![]).await;
    // No such meeting: Failed before any Job exists.
    env.record("ghost-rec", "ghost", json!({})).await;
    let rj = env.await_phase("ghost-rec", RecordingPhase::Failed, Duration::from_secs(15)).await;
    let failed = rj.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "MeetingNotFound");
    assert!(failed.message.contains("ghost"), "{failed:?}");
    assert!(env.ns.api::<Job>().get_opt("ghost-rec-rec").await.unwrap().is_none());

    // A claim that does not exist.
    env.meeting("m1").await;
    env.record("noclaim-rec", "m1", json!({"storage": {"pvc": {"claimName": "nope"}}})).await;
    let rj = env.await_phase("noclaim-rec", RecordingPhase::Failed, Duration::from_secs(15)).await;
    let failed = rj.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!((failed.reason.as_str(), failed.message.contains("nope")), ("StorageUnavailable", true), "{failed:?}");

    // An S3 bucket nobody listens for: the recorder's preflight fails, exit code 2
    // fails the Job at once (no retries), and the reason reaches the status.
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-creds"}, "stringData": {"accessKeyId": "AK", "secretAccessKey": "SK"}
    }))
    .unwrap();
    env.ns.api::<k8s_openapi::api::core::v1::Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let s3 =
        json!({"bucket": "recordings", "endpoint": "http://127.0.0.1:9", "credentialsSecretRef": {"name": "s3-creds"}});
    env.record("s3-rec", "m1", json!({"retries": 3, "storage": {"s3": s3}})).await;
    let rj = env.await_phase("s3-rec", RecordingPhase::Failed, Duration::from_secs(60)).await;
    let status = rj.status.unwrap();
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "StorageUnavailable", "{failed:?}");
    assert_eq!(status.attempts, 1, "no retry for unusable storage");

    // Auto recording: an Active meeting with policy Auto gets its RecordingJob.
    let m: Meeting = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": "town-hall"},
        "spec": {
            "title": "auto", "host": "alice", "participants": {"expected": 4},
            "recording": {"policy": "Auto", "layout": "Speaker"}
        }
    }))
    .unwrap();
    env.ns.api::<Meeting>().create(&PostParams::default(), &m).await.unwrap();
    switchboard_e2e::consistently(
        "no automatic recording before the meeting is Active",
        Duration::from_secs(2),
        || {
            let api = env.recordings();
            async move {
                match api.get_opt("town-hall-auto").await.unwrap() {
                    None => Ok(()),
                    Some(_) => Err("a RecordingJob exists already".to_owned()),
                }
            }
        },
    )
    .await;
    env.set_meeting_phase("town-hall", "Active").await;
    let auto = eventually("the automatic RecordingJob", Duration::from_secs(20), || {
        let api = env.recordings();
        async move { api.get_opt("town-hall-auto").await.ok().flatten() }
    })
    .await;
    assert_eq!(auto.spec.layout, switchboard_crds::recording_job::Layout::Speaker);
    assert_eq!(auto.spec.storage.pvc.as_ref().unwrap().claim_name, "recordings");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cascaded_meeting_is_recorded_with_every_participant_wherever_they_joined() {
    let env = Env::new("rec-cascade", vec![]).await;
    env.meeting("big").await;
    // A second SFU relays the room as an edge of the first (the origin, which the
    // recorder joins); bob is connected to the edge only.
    let edge = sfu_pod::local::start(&format!("edge-{}", env.ns.name)).await.expect("edge SFU");
    let room = switchboard_crds::meeting::room_name(&env.ns.name, "big");
    sfu_pod::relay::start(edge.sfu.clone(), &room, &env.sfu.endpoint, "edge-1").await.expect("edge relays");
    env.record("big-rec", "big", json!({"layout": "Gallery"})).await;
    env.await_phase("big-rec", RecordingPhase::Recording, Duration::from_secs(60)).await;
    let publishers = env.publishers_on("big", "big-rec", [env.sfu.endpoint.clone(), edge.endpoint.clone()]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    leave_all(publishers).await;
    env.set_meeting_phase("big", "Ended").await;
    env.await_phase("big-rec", RecordingPhase::Ready, PROCESSING_BOUND).await;
    let dir = env.dir("big", "big-rec");
    for (who, track) in
        [("alice", "alice-cam.ivf"), ("alice", "alice-mic.ogg"), ("bob", "bob-cam.ivf"), ("bob", "bob-mic.ogg")]
    {
        let path = dir.join("tracks").join(who).join(track);
        let (streams, duration) = ffprobe(&path);
        assert_eq!(streams.len(), 1, "{}", path.display());
        assert!(duration > 3.0, "{} lasts {duration} s", path.display());
    }
    let (streams, _) = ffprobe(&dir.join("gallery.mp4"));
    assert_eq!(streams.len(), 2);
    env.finish().await;
}

/// An S3-compatible server on loopback: moto (from PyPI, installed by `.ci/run`), over
/// plain HTTP or over TLS with a certificate for 127.0.0.1 from a CA made for the test.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
    /// TLS: the PEM file of the CA that signed the server's certificate.
    ca: Option<PathBuf>,
    dir: PathBuf,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA and a server certificate for 127.0.0.1 (and localhost) signed by it, written to
/// `dir` as `ca.pem`, `server.pem` and `server.key`.
fn test_certificates(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Switchboard test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

impl S3Server {
    async fn start(bucket: &str) -> Self {
        Self::start_with(bucket, false).await
    }

    async fn start_tls(bucket: &str) -> Self {
        Self::start_with(bucket, true).await
    }

    async fn start_with(bucket: &str, tls: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("switchboard-s3-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = std::process::Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if tls {
            test_certificates(&dir);
            cmd.arg("-c").arg(dir.join("server.pem")).arg("-k").arg(dir.join("server.key"));
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("moto.log")).unwrap())
            .spawn()
            .expect("moto_server is installed (pip install 'moto[server]'; .ci/run does it)");
        let ca = tls.then(|| dir.join("ca.pem"));
        let endpoint = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
        let mut http = reqwest::Client::builder();
        if let Some(ca) = &ca {
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
        }
        let server = Self { child, endpoint, ca, dir };
        let (http, url) = (http.build().unwrap(), format!("{}/{bucket}", server.endpoint));
        eventually("the S3 server creates the bucket", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.put(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        server
    }

    /// The recorder's settings for `prefix` in `bucket` (trusting the CA, if TLS), with
    /// the credentials the recorder uses (objects belong to them).
    fn config(&self, bucket: &str, prefix: &str) -> S3Config {
        let mut c = S3Config::new(bucket, prefix, "AKIDEXAMPLE", "secret");
        c.endpoint = Some(self.endpoint.clone());
        c.addressing = Addressing::Path;
        c.ca_file = self.ca.clone();
        c
    }

    fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        self.config(bucket, "").build(None).unwrap()
    }

    async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let listed = self.client(bucket).list(Some(&ObjectPath::from(prefix))).try_collect::<Vec<_>>().await;
        let mut keys: Vec<String> = listed.unwrap().into_iter().map(|o| o.location.to_string()).collect();
        keys.sort();
        keys
    }

    async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let object = self.client(bucket).get(&ObjectPath::parse(key).unwrap()).await.unwrap();
        object.bytes().await.unwrap().to_vec()
    }

    /// A PUT of `raw_path` exactly as given (no URL normalisation), unsigned (moto takes it).
    fn put_raw(&self, raw_path: &str, body: &str) {
        use std::io::{Read, Write};
        assert!(self.ca.is_none(), "plain HTTP only");
        let addr = self.endpoint.trim_start_matches("http://");
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            tcp,
            "PUT {raw_path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        let _ = tcp.read_to_string(&mut response);
        assert!(response.starts_with("HTTP/1.1 200"), "PUT {raw_path}: {response}");
    }
}

/// A file of `len` bytes that do not repeat (a chunk or a composited recording stand-in).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchboard-s3-scratch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The recorder's storage over TLS: with the CA trusted, a chunk and a result larger than
/// a part (a multipart upload) are stored, restored by a later run, and deleted; without
/// it, the probe and an upload fail at once, naming the certificate and the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_storage_over_tls_needs_the_ca_and_then_stores_in_parts_restores_and_deletes() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let s3 = S3Server::start_tls("meetings").await;
        let prefix = "rec/ns/weekly/weekly-rec";
        let mut cfg = s3.config("meetings", prefix);
        cfg.part_size = MIN_PART_SIZE;
        let scratch = scratch_dir("tls");
        let storage = Storage::s3(scratch.clone(), cfg.clone()).unwrap();
        storage.preflight().await.expect("the probe goes through with the CA trusted");
        let chunk = scratch.join("tracks/alice/alice-mic/0000000000-a1.ogg");
        std::fs::create_dir_all(chunk.parent().unwrap()).unwrap();
        std::fs::write(&chunk, noise(40_000)).unwrap();
        let result = scratch.join("gallery.mp4");
        let big = noise(2 * MIN_PART_SIZE + 1_000_000);
        std::fs::write(&result, &big).unwrap();
        storage.store(&chunk).await.unwrap();
        storage.store(&result).await.unwrap();
        let keys = s3.keys("meetings", prefix).await;
        assert_eq!(
            keys,
            [format!("{prefix}/gallery.mp4"), format!("{prefix}/tracks/alice/alice-mic/0000000000-a1.ogg")],
            "nothing else (the probe is gone)"
        );
        assert_eq!(s3.get("meetings", &format!("{prefix}/gallery.mp4")).await, big);
        let head = s3.client("meetings").head(&ObjectPath::from(format!("{prefix}/gallery.mp4"))).await.unwrap();
        let etag = head.e_tag.unwrap_or_default();
        assert!(etag.trim_matches('"').ends_with("-3"), "stored as a multipart upload of 3 parts: ETag {etag}");

        // A retried run finds both files in its fresh scratch directory.
        let again = scratch_dir("tls-again");
        let second = Storage::s3(again.clone(), cfg.clone()).unwrap();
        assert_eq!(second.restore().await.unwrap(), 2);
        assert_eq!(std::fs::read(again.join("gallery.mp4")).unwrap(), big);
        assert_eq!(second.restore().await.unwrap(), 0, "files already there are not fetched again");

        // Not trusting the CA: a clear error at once (no retries for a certificate).
        let mut untrusting = cfg.clone();
        untrusting.ca_file = None;
        let plain = Storage::s3(scratch.clone(), untrusting).unwrap();
        let began = std::time::Instant::now();
        let err = plain.preflight().await.unwrap_err().to_string();
        assert!(
            err.contains("invalid peer certificate") && err.contains("RECORDER_S3_CA_FILE"),
            "the error names the certificate and the setting: {err}"
        );
        let err = plain.store(&chunk).await.unwrap_err().to_string();
        assert!(err.contains("invalid peer certificate"), "{err}");
        assert!(began.elapsed() < Duration::from_secs(10), "failed without retrying: {:?}", began.elapsed());

        storage.delete_all().await.unwrap();
        assert_eq!(s3.keys("meetings", prefix).await, Vec::<String>::new());
        for dir in [scratch, again] {
            let _ = std::fs::remove_dir_all(dir);
        }
    })
    .await
    .expect("the test ends within two minutes");
}

/// Keys someone put in the bucket that would climb out of the recording's directory are
/// never written outside it: an encoded `..` or a backslash is skipped, a `..` segment
/// stops the restore (object_store refuses to list it; the run reports the key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_keys_in_the_bucket_never_leave_the_scratch_directory() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let s3 = S3Server::start("meetings").await;
        let prefix = "rec/ns/m/j";
        let base = scratch_dir("traversal");
        let scratch = base.join("a/b/c");
        let storage = Storage::s3(scratch.clone(), s3.config("meetings", prefix)).unwrap();
        // Keys (as moto decodes the paths): `<prefix>/%2e%2e/…` and `<prefix>/..\..\…`.
        s3.put_raw(&format!("/meetings/{prefix}/%252e%252e/escaped-encoded.txt"), "x");
        s3.put_raw(&format!("/meetings/{prefix}/..%5C..%5Cescaped-backslash.txt"), "x");
        s3.put_raw(&format!("/meetings/{prefix}/tracks/ok.txt"), "ok");
        assert_eq!(storage.restore().await.unwrap(), 1, "only the plain key is restored");
        assert_eq!(std::fs::read_to_string(scratch.join("tracks/ok.txt")).unwrap(), "ok");

        // The key `<prefix>/../../escaped.txt`.
        s3.put_raw(&format!("/meetings/{prefix}/%2E%2E/%2E%2E/escaped.txt"), "x");
        let err = storage.restore().await.unwrap_err().to_string();
        assert!(err.contains(".."), "the listing names the key: {err}");
        let mut written = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    written.push(e.path());
                }
            }
        }
        assert_eq!(written, [scratch.join("tracks/ok.txt")], "nothing outside the recording's directory");
        let _ = std::fs::remove_dir_all(base);
    })
    .await
    .expect("the test ends within a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recording_to_an_s3_bucket_uploads_chunks_and_result_and_delete_removes_them() {
    let s3 = S3Server::start("meetings").await;
    let env = Env::new("rec-s3", vec![]).await;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "s3-creds"}, "stringData": {"accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "secret"}
    }))
    .unwrap();
    env.ns.api::<k8s_openapi::api::core::v1::Secret>().create(&PostParams::default(), &secret).await.unwrap();
    env.meeting("weekly").await;
    let storage = json!({"s3": {
        "bucket": "meetings", "endpoint": s3.endpoint, "prefix": "rec", "credentialsSecretRef": {"name": "s3-creds"}
    }});
    env.record("weekly-rec", "weekly", json!({"storage": storage, "retention": "Delete"})).await;
    env.await_phase("weekly-rec", RecordingPhase::Recording, Duration::from_secs(60)).await;
    env.hold_meeting("weekly", "weekly-rec", 5).await;
    let rj = env.await_phase("weekly-rec", RecordingPhase::Ready, PROCESSING_BOUND).await;
    let prefix = format!("rec/{}/weekly/weekly-rec", env.ns.name);
    assert_eq!(rj.status.unwrap().url.as_deref(), Some(format!("s3://meetings/{prefix}/gallery.mp4").as_str()));
    let keys = s3.keys("meetings", &prefix).await;
    assert!(keys.iter().filter(|k| k.contains("-a1.")).count() >= 8, "chunks uploaded as they closed: {keys:?}");
    assert!(keys.iter().any(|k| k.ends_with("tracks/alice/alice-mic.ogg")), "{keys:?}");
    let ogg = s3.get("meetings", &format!("{prefix}/tracks/alice/alice-mic.ogg")).await;
    assert!(ogg.starts_with(b"OggS") && ogg.len() > 10_000, "the track file arrived whole: {} bytes", ogg.len());
    // The object is a playable MP4.
    let mp4 = s3.get("meetings", &format!("{prefix}/gallery.mp4")).await;
    let local = std::env::temp_dir().join(format!("{}-gallery.mp4", env.ns.name));
    std::fs::write(&local, &mp4).unwrap();
    let (streams, duration) = ffprobe(&local);
    assert_eq!(streams.len(), 2, "{streams:?}");
    assert!(duration > 3.0, "{duration}");
    // Retention Delete: the bucket's copy goes with the object.
    env.recordings().delete("weekly-rec", &DeleteParams::default()).await.unwrap();
    switchboard_e2e::await_deleted(&env.recordings(), "weekly-rec", Duration::from_secs(60)).await;
    assert_eq!(s3.keys("meetings", &prefix).await, Vec::<String>::new());
    env.finish().await;
}

/// S3 over TLS end to end: the recorder trusts the test's CA through
/// `RECORDER_S3_CA_FILE`, and a recording's chunks and composited MP4 land in the bucket
/// over https. A recorder that does not trust the CA fails its probe at once: the
/// RecordingJob is Failed (StorageUnavailable, no retry) with the certificate error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recording_to_an_s3_bucket_over_tls_lands_with_the_ca_trusted_and_fails_clearly_without() {
    let s3 = S3Server::start_tls("meetings").await;
    let ca = s3.ca.clone().unwrap().display().to_string();
    let env = Env::new("rec-s3tls", vec![("RECORDER_S3_CA_FILE".into(), ca)]).await;
    tokio::time::timeout(Duration::from_secs(300), async {
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
            "metadata": {"name": "s3-creds"},
            "stringData": {"accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "secret"}
        }))
        .unwrap();
        env.ns.api::<k8s_openapi::api::core::v1::Secret>().create(&PostParams::default(), &secret).await.unwrap();
        let storage = json!({"s3": {
            "bucket": "meetings", "endpoint": s3.endpoint, "prefix": "tls", "credentialsSecretRef": {"name": "s3-creds"}
        }});
        env.meeting("secure").await;
        env.record("secure-rec", "secure", json!({"storage": storage})).await;
        env.await_phase("secure-rec", RecordingPhase::Recording, Duration::from_secs(60)).await;
        env.hold_meeting("secure", "secure-rec", 5).await;
        let rj = env.await_phase("secure-rec", RecordingPhase::Ready, PROCESSING_BOUND).await;
        let prefix = format!("tls/{}/secure/secure-rec", env.ns.name);
        assert_eq!(rj.status.unwrap().url.as_deref(), Some(format!("s3://meetings/{prefix}/gallery.mp4").as_str()));
        let keys = s3.keys("meetings", &prefix).await;
        assert!(keys.iter().filter(|k| k.contains("-a1.")).count() >= 4, "chunks uploaded over https: {keys:?}");
        let mp4 = s3.get("meetings", &format!("{prefix}/gallery.mp4")).await;
        let local = std::env::temp_dir().join(format!("{}-secure.mp4", env.ns.name));
        std::fs::write(&local, &mp4).unwrap();
        let (streams, duration) = ffprobe(&local);
        let _ = std::fs::remove_file(&local);
        assert_eq!(streams.len(), 2, "{streams:?}");
        assert!(duration > 3.0, "{duration}");

        // The next recorders do not trust the CA.
        env.runner.set_extra_env(vec![("RECORDER_CHUNK_SECONDS".into(), "2".into())]);
        env.meeting("insecure").await;
        env.record("insecure-rec", "insecure", json!({"storage": storage, "retries": 3})).await;
        let rj = env.await_phase("insecure-rec", RecordingPhase::Failed, Duration::from_secs(60)).await;
        let status = rj.status.unwrap();
        let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
        assert_eq!(failed.reason, "StorageUnavailable", "{failed:?}");
        assert!(
            failed.message.contains("invalid peer certificate") && failed.message.contains("RECORDER_S3_CA_FILE"),
            "the reason names the certificate and the setting: {failed:?}"
        );
        assert_eq!(status.attempts, 1, "no retry for an untrusted certificate");
        assert_eq!(s3.keys("meetings", &format!("tls/{}/insecure", env.ns.name)).await, Vec::<String>::new());
    })
    .await
    .expect("the test ends within five minutes");
    env.finish().await;
}
