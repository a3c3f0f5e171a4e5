//! Operator configuration, from the environment (all optional).

use std::net::SocketAddr;
use std::time::Duration;

/// How the operator runs. `OperatorConfig::from_env()` reads:
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `SWITCHBOARD_WATCH_NAMESPACE` | all namespaces | only reconcile objects of this namespace |
/// | `SWITCHBOARD_LEADER_NAMESPACE` | `POD_NAMESPACE`, else `default` | where the leader Lease lives |
/// | `SWITCHBOARD_LEADER_LEASE` | `switchboard-operator-leader` | its name |
/// | `SWITCHBOARD_LEADER_LEASE_SECONDS` | 15 | how long a leader's Lease holds without renewal |
/// | `POD_NAME` | host name | this replica's identity in the Lease, with `_<random>` per process |
/// | `SWITCHBOARD_HTTP_ADDR` | `0.0.0.0:8080` in a cluster, `127.0.0.1:8080` outside | `/metrics`, `/healthz`, `/readyz` |
/// | `SWITCHBOARD_SFU_STARTUP_TIMEOUT_SECONDS` | 120 | an SFU pod without a first heartbeat after this is Unhealthy |
/// | `SWITCHBOARD_RECORDER_IMAGE` | `switchboard/recorder-pod:0.1.0` | image of recorder Jobs |
/// | `SWITCHBOARD_RECORDER_NODE_SELECTOR` | none | JSON object: the `nodeSelector` of recorder pods |
/// | `SWITCHBOARD_RECORDER_TOLERATIONS` | none | JSON array: the `tolerations` of recorder pods |
/// | `SWITCHBOARD_RECORDING_PVC` | `recordings` | PVC of automatic recordings whose Meeting names no storage |
/// | `SWITCHBOARD_CONTROLLERS` | all | comma-separated subset of `sfupool,meeting,remediation,signalingpool,recordingjob` |
pub const DEFAULT_RECORDER_IMAGE: &str = concat!("switchboard/recorder-pod:", env!("CARGO_PKG_VERSION"));
/// Pull policy of the containers the operator writes (signaling, recorder, and SFU
/// containers whose template sets none): an image already on the node, e.g. loaded
/// into its containerd by `e2e/cluster/load-images`, is used without a registry.
pub const IMAGE_PULL_POLICY: &str = "IfNotPresent";
/// Every controller, by the name `SWITCHBOARD_CONTROLLERS` uses.
pub const CONTROLLERS: [&str; 5] = ["sfupool", "meeting", "remediation", "signalingpool", "recordingjob"];

/// `nodeSelector` and `tolerations` of pods the operator creates from no template.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodPlacement {
    pub node_selector: std::collections::BTreeMap<String, String>,
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
}

impl PodPlacement {
    /// From JSON in the environment; a value that does not parse is an error naming it.
    fn from_env(selector_var: &str, tolerations_var: &str) -> anyhow::Result<Self> {
        fn json<T: serde::de::DeserializeOwned + Default>(name: &str) -> anyhow::Result<T> {
            match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
                None => Ok(T::default()),
                Some(v) => {
                    serde_json::from_str(&v).map_err(|e| anyhow::anyhow!("{name}: not the expected JSON ({e}): {v}"))
                }
            }
        }
        Ok(Self { node_selector: json(selector_var)?, tolerations: json(tolerations_var)? })
    }
}

#[derive(Clone, Debug)]
pub struct OperatorConfig {
    pub watch_namespace: Option<String>,
    pub leader_namespace: String,
    pub leader_lease: String,
    pub lease_duration: Duration,
    pub identity: String,
    pub http_addr: SocketAddr,
    pub sfu_startup_timeout: Duration,
    pub recorder_image: String,
    /// Where recorder pods may run (e.g. nodes with spare CPU for compositing).
    pub recorder_placement: PodPlacement,
    pub recording_pvc: String,
    /// Controllers to run; `None`: all of them.
    pub controllers: Option<Vec<String>>,
}

/// Eight hex digits that differ between processes (and runs).
fn process_nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

impl OperatorConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let secs = |name: &str, default: u64| -> anyhow::Result<Duration> {
            match var(name) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => Ok(Duration::from_secs(v.parse().map_err(|e| anyhow::anyhow!("{name}={v}: {e}"))?)),
            }
        };
        // One identity per process, as client-go's leader election has it: a
        // restarted container of the leader is a new candidate that waits for the
        // Lease to expire like any other, so the standby (which has watched the
        // Lease all along) takes over, and nothing assumes the dead process's state.
        let host = var("POD_NAME").or_else(|| var("HOSTNAME")).unwrap_or_else(|| "switchboard-operator".into());
        let identity = format!("{host}_{}", process_nonce());
        Ok(Self {
            watch_namespace: var("SWITCHBOARD_WATCH_NAMESPACE"),
            leader_namespace: var("SWITCHBOARD_LEADER_NAMESPACE")
                .or_else(|| var("POD_NAMESPACE"))
                .unwrap_or_else(|| "default".into()),
            leader_lease: var("SWITCHBOARD_LEADER_LEASE").unwrap_or_else(|| "switchboard-operator-leader".into()),
            lease_duration: secs("SWITCHBOARD_LEADER_LEASE_SECONDS", 15)?,
            identity,
            http_addr: var("SWITCHBOARD_HTTP_ADDR")
                .unwrap_or_else(|| {
                    // In a pod the kubelet probes the pod IP; run locally, stay on loopback.
                    let in_cluster = var("KUBERNETES_SERVICE_HOST").is_some();
                    if in_cluster { "0.0.0.0:8080" } else { "127.0.0.1:8080" }.into()
                })
                .parse()?,
            sfu_startup_timeout: secs("SWITCHBOARD_SFU_STARTUP_TIMEOUT_SECONDS", 120)?,
            recorder_image: var("SWITCHBOARD_RECORDER_IMAGE").unwrap_or_else(|| DEFAULT_RECORDER_IMAGE.into()),
            recorder_placement: PodPlacement::from_env(
                "SWITCHBOARD_RECORDER_NODE_SELECTOR",
                "SWITCHBOARD_RECORDER_TOLERATIONS",
            )?,
            recording_pvc: var("SWITCHBOARD_RECORDING_PVC").unwrap_or_else(|| "recordings".into()),
            controllers: match var("SWITCHBOARD_CONTROLLERS") {
                None => None,
                Some(list) => {
                    let names: Vec<String> =
                        list.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
                    if let Some(bad) = names.iter().find(|n| !CONTROLLERS.contains(&n.as_str())) {
                        anyhow::bail!(
                            "SWITCHBOARD_CONTROLLERS: unknown controller {bad:?}; known: {}",
                            CONTROLLERS.join(",")
                        );
                    }
                    Some(names)
                }
            },
        })
    }

    /// A configuration for one namespace, as tests and the demo use it.
    pub fn for_namespace(namespace: &str, identity: &str) -> Self {
        Self {
            watch_namespace: Some(namespace.into()),
            leader_namespace: namespace.into(),
            leader_lease: "switchboard-operator-leader".into(),
            lease_duration: Duration::from_secs(15),
            identity: identity.into(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            sfu_startup_timeout: Duration::from_secs(120),
            recorder_image: DEFAULT_RECORDER_IMAGE.into(),
            recorder_placement: PodPlacement::default(),
            recording_pvc: "recordings".into(),
            controllers: None,
        }
    }

    /// Whether the named controller runs.
    pub fn runs(&self, controller: &str) -> bool {
        self.controllers.as_ref().is_none_or(|c| c.iter().any(|n| n == controller))
    }
}
