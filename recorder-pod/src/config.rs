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
//! | `RECORDER_S3_BUCKET`, `_ENDPOINT`, `_REGION`, `_PREFIX` | — | S3 storage (no endpoint: AWS; region default `us-east-1`) |
//! | `RECORDER_S3_ADDRESSING` | `path` with an endpoint, else `virtual-host` | bucket in the URL's path or host name |
//! | `RECORDER_S3_CA_FILE` | — | PEM CA certificates trusted for the endpoint besides the system's (`SSL_CERT_FILE`) |
//! | `RECORDER_S3_PART_SIZE_MIB` | 8 | larger files are uploaded in parts of this size (at least 5) |
//! | `RECORDER_S3_RETRIES`, `RECORDER_S3_RETRY_TIMEOUT_SECONDS` | 10, 180 | retries of a failed S3 request, with backoff |
//! | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` | — | S3 credentials (from the Secret; the token optional) |
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

use crate::keys;
use crate::storage::{Addressing, S3Config, Storage};

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
        let int = |k: &str, d: usize| -> anyhow::Result<usize> {
            var(k).map_or(Ok(d), |v| v.parse::<usize>().map_err(|e| anyhow::anyhow!("{k}={v}: {e}")))
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
        // Each name is one directory level and one key segment: none may climb out.
        keys::segment("RECORDER_NAMESPACE", &namespace)?;
        keys::segment("RECORDER_MEETING", &meeting)?;
        keys::segment("RECORDER_RECORDING_JOB", &recording_job)?;
        let recording = format!("{namespace}/{meeting}/{recording_job}");
        let storage = if let Some(bucket) = var("RECORDER_S3_BUCKET") {
            let prefix = keys::prefix("RECORDER_S3_PREFIX", &var("RECORDER_S3_PREFIX").unwrap_or_default())?;
            let endpoint = var("RECORDER_S3_ENDPOINT");
            let addressing = match var("RECORDER_S3_ADDRESSING") {
                Some(a) => a.parse::<Addressing>().map_err(|e| anyhow::anyhow!("RECORDER_S3_ADDRESSING={e}"))?,
                // S3-compatible servers take path-style; AWS prefers the bucket in the host.
                None if endpoint.is_some() => Addressing::Path,
                None => Addressing::VirtualHost,
            };
            let mut s3 = S3Config::new(
                &bucket,
                &if prefix.is_empty() { recording.clone() } else { format!("{prefix}/{recording}") },
                &need("AWS_ACCESS_KEY_ID")?,
                &need("AWS_SECRET_ACCESS_KEY")?,
            );
            s3.endpoint = endpoint;
            s3.addressing = addressing;
            if let Some(region) = var("RECORDER_S3_REGION") {
                s3.region = region;
            }
            s3.session_token = var("AWS_SESSION_TOKEN");
            s3.ca_file = var("RECORDER_S3_CA_FILE").map(PathBuf::from);
            s3.part_size = int("RECORDER_S3_PART_SIZE_MIB", 8)?.saturating_mul(1024 * 1024);
            s3.max_retries = int("RECORDER_S3_RETRIES", 10)?;
            s3.retry_timeout = secs("RECORDER_S3_RETRY_TIMEOUT_SECONDS", 180)?;
            let scratch = keys::absolute_dir(
                "RECORDER_SCRATCH_DIR",
                &var("RECORDER_SCRATCH_DIR").unwrap_or("/tmp/recorder".into()),
            )?;
            Storage::s3(scratch.join(&recording), s3)?
        } else {
            let dir = keys::absolute_dir("RECORDER_VOLUME_DIR", &need("RECORDER_VOLUME_DIR")?)?.join(&recording);
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

    fn base(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v = vec![
            ("RECORDER_NAMESPACE", "conf"),
            ("RECORDER_RECORDING_JOB", "rec1"),
            ("RECORDER_MEETING", "standup"),
            ("RECORDER_VOLUME_DIR", "/recordings/meetings"),
            ("RECORDER_VOLUME_URL", "pvc://recordings/meetings"),
        ];
        for (k, val) in extra {
            v.retain(|(key, _)| key != k);
            v.push((k, val));
        }
        v
    }

    #[test]
    fn names_and_paths_that_would_leave_the_recording_are_refused() {
        for var in ["RECORDER_NAMESPACE", "RECORDER_MEETING", "RECORDER_RECORDING_JOB"] {
            for bad in ["..", "../x", "a/../../b", "/etc/passwd", "%2e%2e", "..%2fx", "a\\..\\b"] {
                let err = Config::from_lookup(env(&base(&[(var, bad)]))).unwrap_err();
                assert!(err.to_string().contains(var), "{var}={bad:?}: {err}");
            }
        }
        for bad in ["/recordings/../../etc", "recordings", "/recordings//x", "/recordings/%2e%2e"] {
            let err = Config::from_lookup(env(&base(&[("RECORDER_VOLUME_DIR", bad)]))).unwrap_err();
            assert!(err.to_string().contains("RECORDER_VOLUME_DIR"), "{bad:?}: {err}");
        }
        let s3 = [("RECORDER_S3_BUCKET", "b"), ("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")];
        for bad in ["../other-team", "rec/../../x", "rec//x", "%2e%2e"] {
            let mut vars = base(&s3);
            vars.push(("RECORDER_S3_PREFIX", bad));
            let err = Config::from_lookup(env(&vars)).unwrap_err();
            assert!(err.to_string().contains("RECORDER_S3_PREFIX"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn s3_settings_reach_the_storage() {
        let c = Config::from_lookup(env(&base(&[
            ("RECORDER_S3_BUCKET", "meetings"),
            ("RECORDER_S3_PREFIX", "/rec/"),
            ("RECORDER_S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("RECORDER_S3_REGION", "eu-west-1"),
            ("RECORDER_S3_PART_SIZE_MIB", "16"),
            ("RECORDER_SCRATCH_DIR", "/scratch"),
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_SESSION_TOKEN", "TOKEN"),
        ])))
        .unwrap();
        let Storage::S3 { scratch, s3, .. } = &c.storage else { panic!("S3 storage") };
        assert_eq!(scratch, &PathBuf::from("/scratch/conf/standup/rec1"));
        assert_eq!(s3.prefix, "rec/conf/standup/rec1");
        assert_eq!(s3.addressing, Addressing::Path, "an endpoint of its own: path-style");
        assert_eq!((s3.region.as_str(), s3.part_size), ("eu-west-1", 16 << 20));
        assert_eq!(s3.session_token.as_deref(), Some("TOKEN"));
        assert_eq!(c.storage.url("gallery.mp4"), "s3://meetings/rec/conf/standup/rec1/gallery.mp4");
        // AWS (no endpoint): virtual-host style unless told otherwise.
        let aws = [("RECORDER_S3_BUCKET", "meetings"), ("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK")];
        let c = Config::from_lookup(env(&base(&aws))).unwrap();
        let Storage::S3 { s3, .. } = &c.storage else { panic!("S3 storage") };
        assert_eq!((s3.addressing, s3.endpoint.as_deref()), (Addressing::VirtualHost, None));
        let mut vars = base(&aws);
        vars.push(("RECORDER_S3_ADDRESSING", "sideways"));
        let err = Config::from_lookup(env(&vars)).unwrap_err();
        assert!(err.to_string().contains("RECORDER_S3_ADDRESSING=sideways"), "{err}");
        let mut vars = base(&aws);
        vars.push(("RECORDER_S3_CA_FILE", "/nonexistent/ca.pem"));
        let err = Config::from_lookup(env(&vars)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
