//! The heartbeat contract between SFU pods and the operator.
//!
//! Every SFU renews a `coordination.k8s.io/v1` Lease named after its pod, in the
//! pod's namespace, every [`RENEW_INTERVAL`]. The Lease carries:
//!
//! * label [`POOL_LABEL`] = the SfuPool's name (so the operator watches only these);
//! * `spec.holderIdentity` = the pod name, `spec.renewTime` = time of the beat,
//!   `spec.leaseDurationSeconds` = how long the beat counts as fresh;
//! * annotation [`HEARTBEAT_ANNOTATION`] = the JSON of [`Heartbeat`]: state, load and
//!   the internal API endpoint the SFU advertises (a pod IP in a cluster, a loopback
//!   address when the SFU runs as a local process standing in for a kwok pod).
//!
//! The SFU writes; the operator reads. Both use this crate, so the format is defined once.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Label on heartbeat Leases naming the SfuPool.
pub const POOL_LABEL: &str = "switchboard.dev/pool";
/// Annotation carrying the [`Heartbeat`] JSON.
pub const HEARTBEAT_ANNOTATION: &str = "switchboard.dev/heartbeat";
/// Version of the annotation's format.
pub const FORMAT_VERSION: u32 = 1;
/// How often an SFU renews its Lease.
pub const RENEW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// What an SFU says about itself.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SfuState {
    /// Up, not yet accepting meetings.
    Starting,
    /// Accepting meetings.
    Ready,
    /// Refusing new meetings (SIGTERM or the operator asked); serving those it has.
    Draining,
    /// Something is wrong inside the SFU; it wants to be replaced.
    Unhealthy,
}

/// Load of one SFU.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Load {
    pub participants: u32,
    pub rooms: u32,
    pub published_tracks: u32,
    pub subscribed_tracks: u32,
    pub bitrate_in_bps: u64,
    pub bitrate_out_bps: u64,
    /// CPU in use, in cores (1.5 = one and a half cores).
    pub cpu_cores: f32,
    /// RTP packets received plus forwarded per second (absent from older SFUs: 0).
    #[serde(default)]
    pub packets_per_second: u64,
}

/// One heartbeat: the annotation's content.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub version: u32,
    pub state: SfuState,
    /// Internal HTTP API of the SFU, e.g. `http://10.0.3.17:7880`.
    pub endpoint: String,
    pub load: Load,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HeartbeatError {
    #[error("the Lease has no {HEARTBEAT_ANNOTATION} annotation")]
    Missing,
    #[error("the {HEARTBEAT_ANNOTATION} annotation is not a heartbeat: {0}")]
    Malformed(String),
    #[error("heartbeat format version {0} is newer than this build understands ({FORMAT_VERSION})")]
    UnknownVersion(u32),
}

impl Heartbeat {
    pub fn new(state: SfuState, endpoint: impl Into<String>, load: Load) -> Self {
        Self { version: FORMAT_VERSION, state, endpoint: endpoint.into(), load }
    }

    /// The Lease an SFU pod `pod` of pool `pool` applies for this beat at `now`,
    /// counting as fresh for `ttl`.
    pub fn to_lease(&self, namespace: &str, pod: &str, pool: &str, now: Timestamp, ttl: std::time::Duration) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(pod.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some([(POOL_LABEL.to_owned(), pool.to_owned())].into()),
                annotations: Some(
                    [(HEARTBEAT_ANNOTATION.to_owned(), serde_json::to_string(self).expect("heartbeat serializes"))]
                        .into(),
                ),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(pod.to_owned()),
                lease_duration_seconds: Some(ttl.as_secs().max(1) as i32),
                renew_time: Some(MicroTime(now)),
                ..Default::default()
            }),
        }
    }
}

/// A heartbeat as the operator reads it from a Lease.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub pod: String,
    pub pool: Option<String>,
    pub heartbeat: Heartbeat,
    pub renewed: Option<Timestamp>,
    pub lease_duration: std::time::Duration,
}

impl Observed {
    /// Reads a heartbeat Lease.
    pub fn from_lease(lease: &Lease) -> Result<Self, HeartbeatError> {
        let raw = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(HEARTBEAT_ANNOTATION))
            .ok_or(HeartbeatError::Missing)?;
        let heartbeat: Heartbeat = serde_json::from_str(raw).map_err(|e| {
            // A newer SFU may add states or fields; name the version if it is readable.
            match serde_json::from_str::<serde_json::Value>(raw).ok().and_then(|v| v["version"].as_u64()) {
                Some(v) if v as u32 > FORMAT_VERSION => HeartbeatError::UnknownVersion(v as u32),
                _ => HeartbeatError::Malformed(e.to_string()),
            }
        })?;
        if heartbeat.version > FORMAT_VERSION {
            return Err(HeartbeatError::UnknownVersion(heartbeat.version));
        }
        let spec = lease.spec.as_ref();
        Ok(Self {
            pod: lease.metadata.name.clone().unwrap_or_default(),
            pool: lease.metadata.labels.as_ref().and_then(|l| l.get(POOL_LABEL)).cloned(),
            heartbeat,
            renewed: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            lease_duration: std::time::Duration::from_secs(
                spec.and_then(|s| s.lease_duration_seconds).unwrap_or(0).max(0) as u64,
            ),
        })
    }

    /// Whether the beat still counts at `now`: renewed within `timeout` (the pool's
    /// heartbeatTimeout; the Lease's own duration when that is longer is ignored, so
    /// that the operator's policy, not the SFU, decides).
    pub fn is_fresh(&self, now: Timestamp, timeout: std::time::Duration) -> bool {
        let Some(renewed) = self.renewed else { return false };
        let age = now.duration_since(renewed);
        age < SignedDuration::try_from(timeout).unwrap_or(SignedDuration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn beat() -> Heartbeat {
        Heartbeat::new(
            SfuState::Ready,
            "http://127.0.0.1:7880",
            Load { participants: 42, rooms: 3, published_tracks: 80, subscribed_tracks: 900, ..Default::default() },
        )
    }

    #[test]
    fn a_lease_round_trips_the_heartbeat() {
        let now: Timestamp = "2026-11-20T10:00:00Z".parse().unwrap();
        let lease = beat().to_lease("conf", "eu-west-abcde", "eu-west", now, Duration::from_secs(10));
        assert_eq!(lease.metadata.labels.as_ref().unwrap()[POOL_LABEL], "eu-west");
        let observed = Observed::from_lease(&lease).unwrap();
        assert_eq!(observed.heartbeat, beat());
        assert_eq!(observed.pod, "eu-west-abcde");
        assert_eq!(observed.pool.as_deref(), Some("eu-west"));
        assert_eq!(observed.renewed, Some(now));
        assert_eq!(observed.lease_duration, Duration::from_secs(10));
    }

    #[test]
    fn freshness_follows_the_timeout() {
        let now: Timestamp = "2026-11-20T10:00:00Z".parse().unwrap();
        let observed = Observed::from_lease(&beat().to_lease("ns", "p", "pool", now, Duration::from_secs(10))).unwrap();
        let later = |s: i64| now + SignedDuration::from_secs(s);
        assert!(observed.is_fresh(later(0), Duration::from_secs(10)));
        assert!(observed.is_fresh(later(9), Duration::from_secs(10)));
        assert!(!observed.is_fresh(later(10), Duration::from_secs(10)));
        assert!(!observed.is_fresh(later(60), Duration::from_secs(10)));
        // A clock slightly behind the writer's still counts the beat as fresh.
        assert!(observed.is_fresh(now - SignedDuration::from_secs(1), Duration::from_secs(10)));
    }

    #[test]
    fn the_wire_format_is_stable() {
        let json = serde_json::to_value(beat()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "version": 1, "state": "Ready", "endpoint": "http://127.0.0.1:7880",
                "load": {"participants": 42, "rooms": 3, "publishedTracks": 80, "subscribedTracks": 900,
                         "bitrateInBps": 0, "bitrateOutBps": 0, "cpuCores": 0.0, "packetsPerSecond": 0}
            })
        );
        // A heartbeat of an SFU from before the packet rate still reads, as 0 packets/s.
        let mut older = json.clone();
        older["load"].as_object_mut().unwrap().remove("packetsPerSecond");
        let read: Heartbeat = serde_json::from_value(older).unwrap();
        assert_eq!(read, beat());
    }

    #[test]
    fn bad_annotations_are_reported_not_guessed() {
        let now = Timestamp::UNIX_EPOCH;
        let mut lease = beat().to_lease("ns", "p", "pool", now, Duration::from_secs(10));
        lease.metadata.annotations = None;
        assert_eq!(Observed::from_lease(&lease), Err(HeartbeatError::Missing));
        lease.metadata.annotations = Some([(HEARTBEAT_ANNOTATION.into(), "{not json".into())].into());
        assert!(matches!(Observed::from_lease(&lease), Err(HeartbeatError::Malformed(_))));
        let future = r#"{"version": 2, "state": "Hibernating", "endpoint": "x", "load": {}}"#;
        lease.metadata.annotations = Some([(HEARTBEAT_ANNOTATION.into(), future.into())].into());
        assert_eq!(Observed::from_lease(&lease), Err(HeartbeatError::UnknownVersion(2)));
        let no_renew = Lease { spec: None, ..beat().to_lease("ns", "p", "pool", now, Duration::from_secs(10)) };
        assert!(!Observed::from_lease(&no_renew).unwrap().is_fresh(now, Duration::from_secs(10)));
    }
}

/// The environment the operator gives the `sfu` container of every SFU pod.
pub mod pod_env {
    /// Name of the SfuPool.
    pub const POOL: &str = "SWITCHBOARD_POOL";
    /// Namespace of the pod (downward API).
    pub const NAMESPACE: &str = "SWITCHBOARD_NAMESPACE";
    /// Name of the pod (downward API); also the name of its heartbeat Lease.
    pub const POD_NAME: &str = "SWITCHBOARD_POD_NAME";
    /// Pod IP (downward API).
    pub const POD_IP: &str = "SWITCHBOARD_POD_IP";
    /// Node IP (downward API).
    pub const HOST_IP: &str = "SWITCHBOARD_HOST_IP";
    /// Node name (downward API).
    pub const NODE_NAME: &str = "SWITCHBOARD_NODE_NAME";
    /// Port of the internal HTTP API (signaling, recorder, probes, metrics).
    pub const API_PORT: &str = "SWITCHBOARD_API_PORT";
    /// First and last UDP port for media.
    pub const UDP_PORT_MIN: &str = "SWITCHBOARD_UDP_PORT_MIN";
    pub const UDP_PORT_MAX: &str = "SWITCHBOARD_UDP_PORT_MAX";
    /// NodeExternalIP, NodeInternalIP, PodIP or Static.
    pub const ANNOUNCED_ADDRESS: &str = "SWITCHBOARD_ANNOUNCED_ADDRESS";
    /// Comma-separated addresses when ANNOUNCED_ADDRESS is Static.
    pub const ANNOUNCED_IPS: &str = "SWITCHBOARD_ANNOUNCED_IPS";
    /// Seconds a heartbeat counts as fresh (the pool's heartbeatTimeout).
    pub const HEARTBEAT_TTL_SECONDS: &str = "SWITCHBOARD_HEARTBEAT_TTL_SECONDS";
    /// Participants the pod is sized for.
    pub const CAPACITY_PARTICIPANTS: &str = "SWITCHBOARD_CAPACITY_PARTICIPANTS";
    /// Tokio worker threads: the container's CPU request rounded up (downward API), when
    /// it has one and the template does not set this itself.
    pub const WORKER_THREADS: &str = "SWITCHBOARD_WORKER_THREADS";
}
