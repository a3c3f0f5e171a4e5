//! The recorder's configuration, from the environment the operator's Job sets.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `RECORDER_MODE` | `record` | `record`, or `delete` (remove the files: retention Delete) |
//! | `RECORDER_NAMESPACE` | `POD_NAMESPACE` | namespace of the RecordingJob and Meeting |
//! | `RECORDER_RECORDING_JOB` | required | the RecordingJob this run reports to |
//! | `RECORDER_MEETING` | required | the Meeting to record |
//! | `RECORDER_LAYOUT` / `RECORDER_FORMAT` | `Gallery` / `MP4` | as in the RecordingJob |
//! | `RECORDER_MAX_DURATION_SECONDS` | 14400 | recording stops after this |
//! | `RECORDER_VOLUME_DIR` | — | PVC storage: the directory on the mounted volume |
//! | `RECORDER_VOLUME_URL` | — | PVC storage: its URL, `pvc://claim/path` |
//! | `RECORDER_S3_BUCKET`, `_ENDPOINT`, `_REGION`, `_PREFIX` | — | S3 storage (region default `us-east-1`) |
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` | — | S3 credentials (from the Secret) |
//! | `RECORDER_SCRATCH_DIR` | `/tmp/recorder` | S3 storage: local chunks before upload |
//! | `RECORDER_CHUNK_SECONDS` | 2 | chunk files close this often (what a crash can lose) |
//! | `RECORDER_IDLE_SECONDS` | 300 | recording also stops after this long without media |
//! | `RECORDER_FFMPEG` | `ffmpeg` | the ffmpeg binary |
//! | `RECORDER_COMPOSE_TIMEOUT_SECONDS` | 7200 | ffmpeg is killed after this |
//! | `RECORDER_HTTP_ADDR` | `0.0.0.0:8080` in a cluster, `127.0.0.1:0` outside | health and metrics |

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use switchboard_crds::recording_job::{Layout, RecordingFormat};

use crate::storage::{S3Config, Storage};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Record,
    Delete,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub namespace: String,
    pub recording_job: String,
    pub meeting: String,
    pub layout: Layout,
    pub format: RecordingFormat,
    pub max_duration: Duration,
    pub storage: Storage,
    pub chunk_length: Duration,
    pub idle_timeout: Duration,
    pub ffmpeg: String,
    pub compose_timeout: Duration,
    pub http_addr: SocketAddr,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        let need = |k: &str| var(k).ok_or_else(|| anyhow::anyhow!("{k} is required"));
        let secs = |k: &str, d: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs_f64(match var(k) {
                Some(v) => v.parse::<f64>().map_err(|e| anyhow::anyhow!("{k}={v}: {e}"))?,
                None => d as f64,
            }))
        };
        let namespace = var("RECORDER_NAMESPACE")
            .or_else(|| var("POD_NAMESPACE"))
            .ok_or_else(|| anyhow::anyhow!("RECORDER_NAMESPACE is required"))?;
        let recording_job = need("RECORDER_RECORDING_JOB")?;
        let meeting = need("RECORDER_MEETING")?;
        let layout = match var("RECORDER_LAYOUT").as_deref().unwrap_or("Gallery") {
            "Gallery" => Layout::Gallery,
            "Speaker" => Layout::Speaker,
            "Tracks" => Layout::Tracks,
            other => anyhow::bail!("RECORDER_LAYOUT={other}: expected Gallery, Speaker or Tracks"),
        };
        let format = match var("RECORDER_FORMAT").as_deref().unwrap_or("MP4") {
            "MP4" => RecordingFormat::MP4,
            "WebM" => RecordingFormat::WebM,
            other => anyhow::bail!("RECORDER_FORMAT={other}: expected MP4 or WebM"),
        };
        let recording = format!("{namespace}/{meeting}/{recording_job}");
        let storage = if let Some(bucket) = var("RECORDER_S3_BUCKET") {
            let prefix = var("RECORDER_S3_PREFIX").map(|p| p.trim_matches('/').to_owned()).filter(|p| !p.is_empty());
            Storage::S3 {
                scratch: PathBuf::from(var("RECORDER_SCRATCH_DIR").unwrap_or("/tmp/recorder".into())).join(&recording),
                s3: S3Config {
                    endpoint: var("RECORDER_S3_ENDPOINT").unwrap_or_else(|| "https://s3.amazonaws.com".into()),
                    region: var("RECORDER_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                    bucket,
                    prefix: match prefix {
                        Some(p) => format!("{p}/{recording}"),
                        None => recording.clone(),
                    },
                    access_key_id: need("AWS_ACCESS_KEY_ID")?,
                    secret_access_key: need("AWS_SECRET_ACCESS_KEY")?,
                },
                http: reqwest::Client::new(),
            }
        } else {
            let dir = PathBuf::from(need("RECORDER_VOLUME_DIR")?).join(&recording);
            let url = format!("{}/{recording}", need("RECORDER_VOLUME_URL")?.trim_end_matches('/'));
            Storage::Volume { dir, url }
        };
        let in_cluster = var("KUBERNETES_SERVICE_HOST").is_some();
        Ok(Self {
            mode: match var("RECORDER_MODE").as_deref().unwrap_or("record") {
                "record" => Mode::Record,
                "delete" => Mode::Delete,
                other => anyhow::bail!("RECORDER_MODE={other}: expected record or delete"),
            },
            namespace,
            recording_job,
            meeting,
            layout,
            format,
            max_duration: secs("RECORDER_MAX_DURATION_SECONDS", 4 * 3600)?,
            storage,
            chunk_length: secs("RECORDER_CHUNK_SECONDS", 2)?,
            idle_timeout: secs("RECORDER_IDLE_SECONDS", 300)?,
            ffmpeg: var("RECORDER_FFMPEG").unwrap_or_else(|| "ffmpeg".into()),
            compose_timeout: secs("RECORDER_COMPOSE_TIMEOUT_SECONDS", 7200)?,
            http_addr: var("RECORDER_HTTP_ADDR")
                .unwrap_or_else(|| if in_cluster { "0.0.0.0:8080" } else { "127.0.0.1:0" }.into())
                .parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_volume_recording_lives_under_namespace_meeting_and_job() {
        let c = Config::from_lookup(env(&[
            ("RECORDER_NAMESPACE", "conf"),
            ("RECORDER_RECORDING_JOB", "rec1"),
            ("RECORDER_MEETING", "standup"),
            ("RECORDER_VOLUME_DIR", "/recordings/meetings"),
            ("RECORDER_VOLUME_URL", "pvc://recordings/meetings"),
        ]))
        .unwrap();
        assert_eq!(c.storage.work_dir(), std::path::Path::new("/recordings/meetings/conf/standup/rec1"));
        assert_eq!(c.storage.url("gallery.mp4"), "pvc://recordings/meetings/conf/standup/rec1/gallery.mp4");
        assert_eq!(c.layout, Layout::Gallery);
    }

    #[test]
    fn missing_or_bad_settings_are_named() {
        let err = Config::from_lookup(env(&[("RECORDER_NAMESPACE", "n"), ("RECORDER_MEETING", "m")])).unwrap_err();
        assert!(err.to_string().contains("RECORDER_RECORDING_JOB"), "{err}");
        let err = Config::from_lookup(env(&[
            ("RECORDER_NAMESPACE", "n"),
            ("RECORDER_RECORDING_JOB", "j"),
            ("RECORDER_MEETING", "m"),
            ("RECORDER_LAYOUT", "Mosaic"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("RECORDER_LAYOUT=Mosaic"), "{err}");
        let s3 = Config::from_lookup(env(&[
            ("RECORDER_NAMESPACE", "n"),
            ("RECORDER_RECORDING_JOB", "j"),
            ("RECORDER_MEETING", "m"),
            ("RECORDER_S3_BUCKET", "b"),
            ("RECORDER_S3_PREFIX", "/rec/"),
        ]))
        .unwrap_err();
        assert!(s3.to_string().contains("AWS_ACCESS_KEY_ID"), "{s3}");
    }
}
