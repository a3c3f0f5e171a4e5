//! Plays the kubelet for recorder pods. kwok runs pods without containers; the
//! cluster's kwok stages leave recorder pods Running (see `cluster/up`), and this
//! runner starts the real recorder binary as a local process for each one, with the
//! pod's environment, its PVC mapped to a local directory and its ServiceAccount's
//! token, then writes the pod's terminal phase and exit code, as a kubelet would. The
//! Job controller then counts failures, backs off and retries for real.
//!
//! The SFU API credential comes from the namespace's `switchboard-sfu-api` Secret, as
//! in a cluster. A namespace without one has no SfuPool: its test runs its SFUs in
//! this process (`sfu_pod::local`), and the recorder gets this process's credential
//! (`switchboard_sfu_client::auth::process_token`), which those SFUs require.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// One recorder process the runner started.
#[derive(Clone, Debug)]
pub struct RunRecord {
    pub pod: String,
    pub exit_code: Option<i32>,
    pub log: PathBuf,
}

pub struct RunnerOptions {
    pub binary: PathBuf,
    /// Local directory standing in for each PVC, by claim name.
    pub volumes: HashMap<String, PathBuf>,
    /// Set on top of the pod's environment (e.g. a failing ffmpeg).
    pub extra_env: Vec<(String, String)>,
    /// Where logs, kubeconfigs and scratch space go.
    pub work: PathBuf,
}

pub struct LocalJobRunner {
    pub runs: Arc<Mutex<Vec<RunRecord>>>,
    current: Arc<Mutex<Option<u32>>>,
    extra_env: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LocalJobRunner {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(pid) = *self.current.lock().unwrap() {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

impl LocalJobRunner {
    pub fn start(admin: Client, namespace: &str, opts: RunnerOptions) -> Self {
        let runs: Arc<Mutex<Vec<RunRecord>>> = Arc::default();
        let current: Arc<Mutex<Option<u32>>> = Arc::default();
        let extra_env = Arc::new(Mutex::new(opts.extra_env.clone()));
        let task =
            tokio::spawn(run_pods(admin, namespace.to_owned(), opts, runs.clone(), current.clone(), extra_env.clone()));
        Self { runs, current, extra_env, task }
    }

    /// Kills the running recorder as a crash would (SIGKILL). Returns whether one ran.
    pub fn kill_current(&self) -> bool {
        match *self.current.lock().unwrap() {
            Some(pid) => {
                std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().is_ok_and(|s| s.success())
            }
            None => false,
        }
    }

    /// Replaces the extra environment of the recorders started from now on.
    pub fn set_extra_env(&self, env: Vec<(String, String)>) {
        *self.extra_env.lock().unwrap() = env;
    }

    pub fn runs(&self) -> Vec<RunRecord> {
        self.runs.lock().unwrap().clone()
    }

    /// The logs of every run so far, for failure messages.
    pub fn logs(&self) -> String {
        self.runs()
            .iter()
            .map(|r| {
                format!(
                    "--- {} (exit {:?})\n{}",
                    r.pod,
                    r.exit_code,
                    tail(&std::fs::read_to_string(&r.log).unwrap_or_default(), 40)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

async fn token_kubeconfig_for(admin: &Client, namespace: &str, sa: &str, path: &Path) -> anyhow::Result<PathBuf> {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    let token = sas
        .create_token_request(sa, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow::anyhow!("no token"))?;
    Ok(crate::operator::token_kubeconfig(&token, path))
}

async fn run_pods(
    admin: Client,
    namespace: String,
    opts: RunnerOptions,
    runs: Arc<Mutex<Vec<RunRecord>>>,
    current: Arc<Mutex<Option<u32>>>,
    extra_env: Arc<Mutex<Vec<(String, String)>>>,
) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &namespace);
    let selector = ListParams::default().labels("app.kubernetes.io/component=recorder");
    let mut started: HashSet<String> = HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok(list) = pods.list(&selector).await else { continue };
        for pod in list.items {
            let name = pod.name_any();
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if !running || pod.metadata.deletion_timestamp.is_some() || started.contains(&name) {
                continue;
            }
            started.insert(name.clone());
            let Some(spec) = pod.spec.clone() else { continue };
            let container = &spec.containers[0];
            let mut env: Vec<(String, String)> = Vec::new();
            for e in container.env.clone().unwrap_or_default() {
                let value = match (e.value, e.value_from) {
                    (Some(v), _) => Some(v),
                    (None, Some(from)) => match from.secret_key_ref {
                        Some(r) => secrets
                            .get_opt(&r.name)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|s| s.data)
                            .and_then(|d| d.get(&r.key).cloned())
                            .map(|b| String::from_utf8_lossy(&b.0).into_owned()),
                        None => None,
                    },
                    _ => None,
                };
                let value = match value {
                    None if e.name == switchboard_sfu_client::auth::TOKEN_ENV => {
                        switchboard_sfu_client::auth::process_token().map(|t| t.expose().to_owned())
                    }
                    v => v,
                };
                if let Some(v) = value {
                    env.push((e.name, v));
                }
            }
            // Volume mounts: a PVC's mount path becomes its local stand-in directory.
            let claims: HashMap<String, String> = spec
                .volumes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| Some((v.name, v.persistent_volume_claim?.claim_name)))
                .collect();
            let mut mounts: Vec<(String, PathBuf)> = Vec::new();
            for m in container.volume_mounts.clone().unwrap_or_default() {
                if let Some(local) = claims.get(&m.name).and_then(|c| opts.volumes.get(c)) {
                    mounts.push((m.mount_path, local.clone()));
                }
            }
            for (_, v) in env.iter_mut() {
                for (mount, local) in &mounts {
                    if let Some(rest) = v.strip_prefix(mount.as_str()) {
                        *v = format!("{}{rest}", local.display());
                    }
                }
            }
            let dir = opts.work.join(&name);
            let _ = std::fs::create_dir_all(&dir);
            env.push(("RECORDER_SCRATCH_DIR".into(), dir.join("scratch").display().to_string()));
            env.push(("RECORDER_HTTP_ADDR".into(), "127.0.0.1:0".into()));
            env.extend(extra_env.lock().unwrap().clone());
            let sa = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
            let kubeconfig = match token_kubeconfig_for(&admin, &namespace, &sa, &dir.join("kubeconfig")).await {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "no token for the recorder");
                    started.remove(&name);
                    continue;
                }
            };
            let log = dir.join("recorder.log");
            let Ok(log_file) = std::fs::File::create(&log) else { continue };
            let mut cmd = tokio::process::Command::new(&opts.binary);
            cmd.envs(env)
                .env("KUBECONFIG", kubeconfig)
                .env("RUST_LOG", "info,webrtc=warn")
                .stdout(log_file.try_clone().expect("log file"))
                .stderr(log_file)
                .kill_on_drop(true);
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => panic!("cannot start {}: {e}", opts.binary.display()),
            };
            *current.lock().unwrap() = child.id();
            let index = {
                let mut r = runs.lock().unwrap();
                r.push(RunRecord { pod: name.clone(), exit_code: None, log: log.clone() });
                r.len() - 1
            };
            let pods = pods.clone();
            let runs = runs.clone();
            let current = current.clone();
            // One recorder at a time per Job (parallelism 1): wait for it here.
            let status = child.wait().await;
            *current.lock().unwrap() = None;
            let code = status.ok().and_then(|s| s.code()).unwrap_or(137);
            runs.lock().unwrap()[index].exit_code = Some(code);
            let now = jiff::Timestamp::now().to_string();
            let phase = if code == 0 { "Succeeded" } else { "Failed" };
            let patch = json!({"status": {
                "phase": phase,
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}
                ],
                "containerStatuses": [{
                    "name": container.name, "image": container.image.clone().unwrap_or_default(), "imageID": "",
                    "ready": false, "restartCount": 0, "started": false,
                    "state": {"terminated": {
                        "exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                        "startedAt": now, "finishedAt": now,
                    }},
                }],
            }});
            if let Err(e) = pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::warn!(pod = %name, error = %e, "could not report the recorder's exit");
            }
        }
    }
}
