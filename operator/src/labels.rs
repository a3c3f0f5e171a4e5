//! Labels and annotations the operator puts on what it manages.

pub use switchboard_heartbeat::POOL_LABEL;

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "switchboard";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const SFU_COMPONENT: &str = "sfu";
/// The SignalingPool a signaling pod belongs to.
pub const SIGNALING_POOL_LABEL: &str = "switchboard.dev/signaling-pool";
/// Hash of the pool's pod template a pod was built from.
pub const TEMPLATE_HASH_LABEL: &str = "switchboard.dev/template-hash";
/// "true" while the SFU hosts participants; the pool's PDB covers busy pods only.
pub const BUSY_LABEL: &str = "switchboard.dev/busy";
/// RFC 3339 time the operator started draining the pod.
pub const DRAINING_ANNOTATION: &str = "switchboard.dev/draining-since";
/// Why the operator drains the pod: a fault (`NodeNotReady`, `NodeDrained`, …) or
/// `ScaleDownOrUpdate`.
pub const DRAIN_REASON_ANNOTATION: &str = "switchboard.dev/drain-reason";
/// Tells the cluster autoscaler whether it may remove the pod's node.
pub const SAFE_TO_EVICT_ANNOTATION: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
/// Field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "switchboard-operator";

/// Selector of every SFU pod the operator manages.
pub fn sfu_pods_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY},{COMPONENT_LABEL}={SFU_COMPONENT}")
}
