//! Pure parts of the RecordingJob controller: validation of what was looked up, the
//! recorder Job, its ServiceAccount and RoleBinding, and the status.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchboard_crds::meeting::Meeting;
use switchboard_crds::recording_job::{
    Layout, RecorderReport, RecorderStage, RecordingFormat, RecordingJob, RecordingJobStatus, RecordingPhase, Retention,
};

use crate::conditions::condition_at;
use crate::config::{IMAGE_PULL_POLICY, PodPlacement};
use crate::labels::{COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL};

pub const RECORDER_COMPONENT: &str = "recorder";
pub const RECORDER_CLUSTER_ROLE: &str = "switchboard-recorder";
pub const RECORDER_SERVICE_ACCOUNT: &str = "switchboard-recorder";
/// The RecordingJob a recorder Job (and its pods) belong to.
pub const RECORDING_JOB_LABEL: &str = "switchboard.dev/recording-job";
/// The Meeting an automatic RecordingJob was made for.
pub const MEETING_LABEL: &str = "switchboard.dev/meeting";
/// Holds a RecordingJob with retention Delete until its files are removed.
pub const FILES_FINALIZER: &str = "switchboard.dev/recording-files";
/// Where the recording PVC is mounted in the recorder.
pub const VOLUME_MOUNT: &str = "/recordings";
/// Exit code of a recorder failure no retry can fix (podFailurePolicy fails the Job).
pub const PERMANENT_EXIT_CODE: i32 = 2;

/// Why a RecordingJob cannot start, found before any Job is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

/// Checks what the controller looked up: the Meeting and, for PVC storage, the claim.
pub fn validate(
    rj: &RecordingJob,
    meeting: Option<&Meeting>,
    pvc: Option<Option<&PersistentVolumeClaim>>,
) -> Result<(), Invalid> {
    let ns = rj.namespace().unwrap_or_default();
    let Some(meeting) = meeting else {
        return Err(Invalid {
            reason: "MeetingNotFound",
            message: format!("Meeting {ns}/{} does not exist", rj.spec.meeting_ref.name),
        });
    };
    if meeting.spec.e2ee {
        return Err(Invalid {
            reason: "MeetingEncrypted",
            message: "the meeting is end-to-end encrypted: the server cannot record it".into(),
        });
    }
    if let (Some(claim), Some(found)) = (&rj.spec.storage.pvc, pvc) {
        match found {
            None => {
                return Err(Invalid {
                    reason: "StorageUnavailable",
                    message: format!("PersistentVolumeClaim {ns}/{} does not exist", claim.claim_name),
                });
            }
            Some(p) if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Lost") => {
                return Err(Invalid {
                    reason: "StorageUnavailable",
                    message: format!("PersistentVolumeClaim {ns}/{} is Lost", claim.claim_name),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The recorder Job's name (a RecordingJob has one).
pub fn job_name(rj: &RecordingJob) -> String {
    truncate(&format!("{}-rec", rj.name_any()))
}

/// The RecordingJob of a Meeting that records automatically.
pub fn auto_name(meeting: &str) -> String {
    truncate(&format!("{meeting}-auto"))
}

/// The Job that deletes a recording's files (retention Delete).
pub fn cleanup_job_name(rj: &RecordingJob) -> String {
    truncate(&format!("{}-del", rj.name_any()))
}

fn truncate(name: &str) -> String {
    // Job names become pod label values: at most 63 characters.
    name.chars().take(63).collect::<String>().trim_end_matches('-').to_owned()
}

fn owner(rj: &RecordingJob) -> OwnerReference {
    rj.controller_owner_ref(&()).expect("a stored object has a uid")
}

fn labels(rj: &RecordingJob) -> serde_json::Value {
    json!({
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: RECORDER_COMPONENT,
        RECORDING_JOB_LABEL: truncate(&rj.name_any()),
    })
}

pub fn service_account(namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(RECORDER_SERVICE_ACCOUNT.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (COMPONENT_LABEL.to_owned(), RECORDER_COMPONENT.to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn role_binding(namespace: &str) -> RoleBinding {
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": RECORDER_SERVICE_ACCOUNT, "namespace": namespace,
                     "labels": {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: RECORDER_COMPONENT}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RECORDER_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": RECORDER_SERVICE_ACCOUNT, "namespace": namespace}],
    }))
    .expect("valid RoleBinding")
}

/// The recorder's settings, as environment variables.
fn recorder_env(rj: &RecordingJob, delete_files: bool) -> Vec<serde_json::Value> {
    let spec = &rj.spec;
    vec![
        json!({"name": "RECORDER_MODE", "value": if delete_files { "delete" } else { "record" }}),
        json!({"name": "RECORDER_NAMESPACE", "value": rj.namespace().unwrap_or_default()}),
        json!({"name": "RECORDER_RECORDING_JOB", "value": rj.name_any()}),
        json!({"name": "RECORDER_MEETING", "value": spec.meeting_ref.name}),
        json!({"name": "RECORDER_LAYOUT", "value": match spec.layout {
            Layout::Gallery => "Gallery",
            Layout::Speaker => "Speaker",
            Layout::Tracks => "Tracks",
        }}),
        json!({"name": "RECORDER_FORMAT", "value": match spec.format {
            RecordingFormat::MP4 => "MP4",
            RecordingFormat::WebM => "WebM",
        }}),
        json!({"name": "RECORDER_MAX_DURATION_SECONDS", "value": spec.max_duration.as_std().as_secs().to_string()}),
        json!({"name": "RECORDER_HTTP_ADDR", "value": "0.0.0.0:8080"}),
    ]
}

/// Where the recording goes: `env` gains the storage's settings; the volumes and
/// their mounts are returned (a scratch directory, and the PVC if any).
fn storage(rj: &RecordingJob, env: &mut Vec<serde_json::Value>) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let mut volumes = vec![json!({"name": "scratch", "emptyDir": {}})];
    let mut mounts = vec![json!({"name": "scratch", "mountPath": "/tmp/recorder"})];
    if let Some(pvc) = &rj.spec.storage.pvc {
        let path = pvc.path.trim_end_matches('/');
        env.push(json!({"name": "RECORDER_VOLUME_DIR", "value": format!("{VOLUME_MOUNT}{path}")}));
        env.push(json!({"name": "RECORDER_VOLUME_URL", "value": format!("pvc://{}{path}", pvc.claim_name)}));
        volumes.push(json!({"name": "recordings", "persistentVolumeClaim": {"claimName": pvc.claim_name}}));
        mounts.push(json!({"name": "recordings", "mountPath": VOLUME_MOUNT}));
    }
    if let Some(s3) = &rj.spec.storage.s3 {
        env.push(json!({"name": "RECORDER_S3_BUCKET", "value": s3.bucket}));
        for (var, value) in [
            ("RECORDER_S3_ENDPOINT", &s3.endpoint),
            ("RECORDER_S3_REGION", &s3.region),
            ("RECORDER_S3_PREFIX", &s3.prefix),
        ] {
            if let Some(v) = value {
                env.push(json!({"name": var, "value": v}));
            }
        }
        for (var, key) in [("AWS_ACCESS_KEY_ID", "accessKeyId"), ("AWS_SECRET_ACCESS_KEY", "secretAccessKey")] {
            let secret = &s3.credentials_secret_ref.name;
            env.push(json!({"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}));
        }
    }
    (volumes, mounts)
}

/// The recorder Job: one pod at a time, `retries` retries with the Job controller's
/// exponential backoff, and exit code 2 failing the Job at once.
pub fn recorder_job(rj: &RecordingJob, image: &str, placement: &PodPlacement, delete_files: bool) -> Job {
    let ns = rj.namespace().unwrap_or_default();
    let name = if delete_files { cleanup_job_name(rj) } else { job_name(rj) };
    let mut env = recorder_env(rj, delete_files);
    if !delete_files {
        // The recorder joins the SFU as a hidden participant: it needs the namespace's
        // SFU credential. Deleting files does not, and must not wait for the Secret.
        env.push(json!(crate::sfu_pool::build::api_token_env()));
    }
    let (volumes, mounts) = storage(rj, &mut env);
    let max = rj.spec.max_duration.as_std().as_secs() as i64;
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "labels": labels(rj), "ownerReferences": [owner(rj)]},
        "spec": {
            "backoffLimit": if delete_files { 6 } else { rj.spec.retries },
            // Recording plus compositing (about a tenth of the meeting) plus the retries' backoff.
            "activeDeadlineSeconds": if delete_files { 3600 } else { max * 2 + 3600 },
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {
                    "containerName": "recorder", "operator": "In", "values": [PERMANENT_EXIT_CODE],
                }},
                // A node going away is not the recorder's fault: retry without counting.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {"labels": labels(rj)},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": RECORDER_SERVICE_ACCOUNT,
                    // The volume is writable by the non-root recorder.
                    "securityContext": {"fsGroup": 65532},
                    "terminationGracePeriodSeconds": 30,
                    "nodeSelector": placement.node_selector,
                    "tolerations": placement.tolerations,
                    "volumes": volumes,
                    "containers": [{
                        "name": "recorder",
                        "image": image,
                        "imagePullPolicy": IMAGE_PULL_POLICY,
                        "env": env,
                        "volumeMounts": mounts,
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
                        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
                                            "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    }))
    .expect("valid Job")
}

/// A Job's terminal condition: `(true, …)` complete, `(false, reason, message)` failed.
pub fn job_outcome(job: &Job) -> Option<(bool, String, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let done = |t: &str| conditions.iter().find(|c| c.type_ == t && c.status == "True");
    if let Some(c) = done("Complete") {
        return Some((true, c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()));
    }
    done("Failed")
        .map(|c| (false, c.reason.clone().unwrap_or_else(|| "JobFailed".into()), c.message.clone().unwrap_or_default()))
}

/// A phase, its Ready condition, and its Failed condition when it failed.
type Verdict = (RecordingPhase, Condition, Option<Condition>);

/// The conditions of a status, keeping the transition times of `previous`.
struct Conditions<'a> {
    previous: &'a [Condition],
    generation: Option<i64>,
    now: jiff::Timestamp,
}

impl Conditions<'_> {
    fn set(&self, type_: &str, status: bool, reason: &str, message: String) -> Condition {
        condition_at(self.previous, type_, status, reason, message, self.generation, self.now)
    }

    /// Failed for good, with `reason`.
    fn failed(&self, reason: &str, message: String) -> Verdict {
        let failed = self.set("Failed", true, reason, message.clone());
        (RecordingPhase::Failed, self.set("Ready", false, reason, message), Some(failed))
    }

    /// While the Job runs: the recorder's stage, or its failed run being retried.
    fn running(&self, report: Option<&RecorderReport>) -> Verdict {
        let phase = match report.map(|r| r.stage) {
            Some(RecorderStage::Recording) => RecordingPhase::Recording,
            Some(RecorderStage::Processing | RecorderStage::Uploaded) => RecordingPhase::Processing,
            _ => RecordingPhase::Pending,
        };
        let ready = match report.filter(|r| r.stage == RecorderStage::Failed) {
            Some(r) => {
                let reason = r.reason.clone().unwrap_or_default();
                let message = r.message.clone().unwrap_or_default();
                let note = format!("run {} failed ({reason}): {message}; the Job retries with backoff", r.attempt);
                self.set("Ready", false, "Retrying", note)
            }
            None => self.set("Ready", false, &format!("{phase:?}"), format!("{phase:?}")),
        };
        (phase, ready, None)
    }
}

/// Why a failed Job failed: the recorder's own reason says more than the Job's
/// (BackoffLimitExceeded, PodFailurePolicy).
fn job_failure(
    report: Option<&RecorderReport>,
    job_reason: String,
    job_message: String,
    runs: i32,
) -> (String, String) {
    match report.filter(|r| r.stage == RecorderStage::Failed) {
        Some(r) => (
            r.reason.clone().unwrap_or(job_reason.clone()),
            format!("{} (Job: {job_reason}, after {runs} run(s))", r.message.clone().unwrap_or_default()),
        ),
        None => (job_reason, job_message),
    }
}

/// Status from the RecordingJob (its recorder report), its Job, or why it cannot
/// start, as of `now`.
pub fn status(
    rj: &RecordingJob,
    job: Option<&Job>,
    invalid: Option<&Invalid>,
    now: jiff::Timestamp,
) -> RecordingJobStatus {
    let previous = rj.status.clone().unwrap_or_default();
    let report = previous.recorder.as_ref();
    let js = job.and_then(|j| j.status.clone()).unwrap_or_default();
    let attempts = js.active.unwrap_or(0) + js.failed.unwrap_or(0) + js.succeeded.unwrap_or(0);
    let mut st = RecordingJobStatus {
        observed_generation: rj.metadata.generation,
        job: job.and_then(|j| j.metadata.name.clone()).or(previous.job.clone()),
        attempts: attempts.max(previous.attempts),
        started_at: js.start_time.clone().or(previous.started_at.clone()),
        completed_at: js.completion_time.clone().or(previous.completed_at.clone()),
        ..Default::default()
    };
    let c = Conditions { previous: &previous.conditions, generation: rj.metadata.generation, now };
    let (phase, ready, failed) = match (invalid, job.and_then(job_outcome), report) {
        (Some(inv), ..) => c.failed(inv.reason, inv.message.clone()),
        (None, Some((true, ..)), Some(r)) if r.stage == RecorderStage::Uploaded => {
            st.url = r.url.clone();
            st.duration_seconds = r.duration_seconds;
            st.size_bytes = r.size_bytes;
            let msg = format!("{} ({} s)", r.url.clone().unwrap_or_default(), r.duration_seconds.unwrap_or(0));
            (RecordingPhase::Ready, c.set("Ready", true, "Uploaded", msg), None)
        }
        (None, Some((true, ..)), _) => c.failed("NoResult", "the recorder exited without reporting a result".into()),
        (None, Some((false, job_reason, job_message)), r) => {
            let (reason, message) = job_failure(r, job_reason, job_message, attempts);
            st.completed_at = st.completed_at.or(Some(Time(now)));
            c.failed(&reason, message)
        }
        (None, None, r) => c.running(r),
    };
    st.phase = Some(phase);
    st.conditions = std::iter::once(ready).chain(failed).collect();
    st
}

/// Whether the RecordingJob needs the files finalizer (retention Delete).
pub fn wants_finalizer(rj: &RecordingJob) -> bool {
    rj.spec.retention == Retention::Delete
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::t0;
    use switchboard_crds::recording_job::{PvcStorage, RecorderReport, RecordingJobSpec, Storage};

    fn rj() -> RecordingJob {
        let mut rj = RecordingJob::new(
            "standup-rec",
            RecordingJobSpec {
                meeting_ref: switchboard_crds::common::LocalObjectRef { name: "standup".into() },
                layout: Layout::Gallery,
                format: RecordingFormat::MP4,
                storage: Storage {
                    pvc: Some(PvcStorage { claim_name: "recordings".into(), path: "/meetings".into() }),
                    s3: None,
                },
                max_duration: switchboard_crds::common::Duration::from_secs(600),
                retention: Retention::Retain,
                retries: 2,
            },
        );
        rj.metadata.namespace = Some("conf".into());
        rj.metadata.uid = Some("u1".into());
        rj.metadata.generation = Some(1);
        rj
    }

    fn job_with(conditions: serde_json::Value, failed: i32) -> Job {
        serde_json::from_value(
            json!({"metadata": {"name": "standup-rec-rec"}, "status": {"conditions": conditions, "failed": failed}}),
        )
        .unwrap()
    }

    #[test]
    fn the_recorder_job_retries_with_backoff_and_fails_at_once_on_exit_code_2() {
        let job = serde_json::to_value(recorder_job(&rj(), "rec:1", &PodPlacement::default(), false)).unwrap();
        assert_eq!(job["spec"]["backoffLimit"], 2);
        assert_eq!(job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"][0], 2);
        let env = job["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        let get = |k: &str| env.iter().find(|e| e["name"] == k).map(|e| e["value"].clone());
        assert_eq!(get("RECORDER_VOLUME_DIR").unwrap(), "/recordings/meetings");
        assert_eq!(get("RECORDER_VOLUME_URL").unwrap(), "pvc://recordings/meetings");
        assert_eq!(get("RECORDER_MEETING").unwrap(), "standup");
        assert_eq!(job["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"], "recordings");
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "RecordingJob");
    }

    #[test]
    fn the_recorder_presents_the_sfus_credential_and_the_file_cleanup_needs_none() {
        let env_of = |delete_files: bool| {
            let job =
                serde_json::to_value(recorder_job(&rj(), "rec:1", &PodPlacement::default(), delete_files)).unwrap();
            job["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone()
        };
        let token = |env: &[serde_json::Value]| env.iter().find(|e| e["name"] == "SWITCHBOARD_SFU_API_TOKEN").cloned();
        assert_eq!(
            token(&env_of(false)).unwrap()["valueFrom"]["secretKeyRef"],
            json!({"name": "switchboard-sfu-api", "key": "token", "optional": false})
        );
        assert_eq!(token(&env_of(true)), None, "deleting files does not wait for the SFUs' Secret");
    }

    #[test]
    fn a_missing_meeting_or_claim_fails_before_any_job() {
        let err = validate(&rj(), None, Some(None)).unwrap_err();
        assert_eq!(err.reason, "MeetingNotFound");
        let st = status(&rj(), None, Some(&err), t0());
        assert_eq!(st.phase, Some(RecordingPhase::Failed));
        assert_eq!(st.conditions[1].reason, "MeetingNotFound");
        let meeting: Meeting = serde_json::from_value(
            json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": "standup"},
            "spec": {"title": "t", "host": "h", "participants": {"expected": 2}}}),
        )
        .unwrap();
        let err = validate(&rj(), Some(&meeting), Some(None)).unwrap_err();
        assert_eq!(err.reason, "StorageUnavailable");
        assert!(err.message.contains("recordings"), "{}", err.message);
    }

    #[test]
    fn phases_follow_the_recorder_and_the_job() {
        let mut r = rj();
        let report = |stage, reason: Option<&str>| RecorderReport {
            attempt: 1,
            stage,
            reason: reason.map(Into::into),
            url: Some("pvc://x/gallery.mp4".into()),
            duration_seconds: Some(20),
            ..Default::default()
        };
        r.status =
            Some(RecordingJobStatus { recorder: Some(report(RecorderStage::Recording, None)), ..Default::default() });
        assert_eq!(status(&r, Some(&job_with(json!([]), 0)), None, t0()).phase, Some(RecordingPhase::Recording));
        r.status = Some(RecordingJobStatus {
            recorder: Some(report(RecorderStage::Failed, Some("CompositingFailed"))),
            ..Default::default()
        });
        let retrying = status(&r, Some(&job_with(json!([]), 1)), None, t0());
        assert_eq!(retrying.conditions[0].reason, "Retrying");
        let failed = status(
            &r,
            Some(&job_with(json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]), 3)),
            None,
            t0(),
        );
        assert_eq!(failed.phase, Some(RecordingPhase::Failed));
        assert_eq!(failed.conditions[1].reason, "CompositingFailed");
        assert!(failed.conditions[1].message.contains("BackoffLimitExceeded"));
        r.status =
            Some(RecordingJobStatus { recorder: Some(report(RecorderStage::Uploaded, None)), ..Default::default() });
        let ready = status(&r, Some(&job_with(json!([{"type": "Complete", "status": "True"}]), 0)), None, t0());
        assert_eq!(ready.phase, Some(RecordingPhase::Ready));
        assert_eq!(ready.url.as_deref(), Some("pvc://x/gallery.mp4"));
        assert_eq!(ready.duration_seconds, Some(20));
    }

    #[test]
    fn recorder_pods_go_where_the_operator_is_told() {
        let placement = PodPlacement {
            node_selector: [("pool".to_owned(), "recorders".to_owned())].into(),
            tolerations: vec![serde_json::from_value(json!({"key": "media", "operator": "Exists"})).unwrap()],
        };
        let job = serde_json::to_value(recorder_job(&rj(), "rec:1", &placement, false)).unwrap();
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"], json!({"pool": "recorders"}));
        assert_eq!(pod["tolerations"], json!([{"key": "media", "operator": "Exists"}]));
    }
}
