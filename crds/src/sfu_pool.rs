//! `SfuPool`: a fleet of SFU pods, the analogue of an Agones Fleet.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Duration, conditions_schema};

/// A fleet of SFU pods that the operator manages directly (no Deployment), so that
/// placement, load-aware scale-down and drains get per-pod control.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[allow(clippy::duplicated_attributes)] // false positive: each printcolumn(...) is a column, type_ repeats by design
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "SfuPool",
    namespaced,
    status = "SfuPoolStatus",
    shortname = "sfup",
    category = "switchboard",
    doc = "A fleet of SFU pods with capacity, buffer autoscaling, placement and drain policy.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Draining", type_ = "integer", json_path = ".status.drainingReplicas"),
    printcolumn(name = "Allocated", type_ = "integer", json_path = ".status.allocated.participants"),
    printcolumn(name = "Capacity", type_ = "integer", json_path = ".status.capacity.participants"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SfuPoolSpec {
    /// Region the pool serves; Meetings may select a pool by region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub region: Option<String>,

    /// Zones to spread pods over (topology.kubernetes.io/zone values). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub zones: Vec<String>,

    /// Desired number of SFU pods. Written by the built-in autoscaler, or by an
    /// HPA/KEDA/`kubectl scale` through the scale subresource in External mode.
    /// When unset, the pool starts at `autoscaling.minReplicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: Option<i32>,

    /// How the replica count is chosen.
    #[serde(default)]
    pub autoscaling: Autoscaling,

    /// What one SFU pod holds.
    pub capacity: PodCapacity,

    /// How meetings are packed onto pods and which pods go first on scale-down.
    #[serde(default)]
    pub placement: Placement,

    /// Capacity held ahead of scheduled meetings.
    #[serde(default)]
    pub pre_provisioning: PreProvisioning,

    /// Draining of pods that are being removed or replaced.
    #[serde(default)]
    pub drain: Drain,

    /// Reaction to failing SFUs and nodes.
    #[serde(default)]
    pub remediation: Remediation,

    /// Media networking of the SFU pods.
    #[serde(default)]
    pub media: Media,

    /// Pod template for the SFU pods. It must have a container named `sfu`; the
    /// operator adds the SFU's arguments, environment, ports and probes to it.
    #[schemars(schema_with = "sfu_pod_template_schema")]
    pub template: PodTemplateSpec,
}

/// Autoscaling mode and bounds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas")
    .message("minReplicas must not be greater than maxReplicas")
    .field_path(".minReplicas"))]
pub struct Autoscaling {
    /// Builtin: the operator keeps `ready capacity >= allocated + reserved + buffer`.
    /// External: an HPA or KEDA drives spec.replicas through the scale subresource.
    #[serde(default)]
    pub mode: AutoscalingMode,
    /// Lower bound of replicas.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_replicas: i32,
    /// Upper bound of replicas.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_replicas: i32,
    /// Spare capacity kept Ready for new meetings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<Buffer>,
    /// How long load must stay low before the pool scales down.
    #[serde(default = "default_scale_down_stabilization")]
    pub scale_down_stabilization: Duration,
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_scale_down_stabilization() -> Duration {
    Duration::from_secs(600)
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            mode: AutoscalingMode::default(),
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            buffer: None,
            scale_down_stabilization: default_scale_down_stabilization(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AutoscalingMode {
    #[default]
    Builtin,
    External,
}

/// Spare capacity: an absolute participant count or a percentage of allocated load.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.participants) != has(self.percent)")
    .message("buffer takes exactly one of participants or percent"))]
pub struct Buffer {
    /// Participants of spare capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub participants: Option<i32>,
    /// Spare capacity as a percentage of allocated plus reserved participants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,
}

/// Capacity of one SFU pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodCapacity {
    /// Participants one pod holds.
    #[schemars(range(min = 1, max = 100000))]
    pub participants_per_pod: i32,
    /// Published plus forwarded tracks one pod holds. Placement counts a participant of a
    /// meeting of n as 2n tracks (a camera and a microphone published, everyone else's
    /// received) and leaves out a pod whose reported tracks plus the new ones would pass
    /// this. Unset: not limited separately.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub tracks_per_pod: Option<i32>,
    /// Builtin autoscaling: RTP packets per second (received plus forwarded) one pod should
    /// carry. The pool then needs at least its reported packet rate over this many pods.
    /// Unset: packets are not a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub packets_per_second_per_pod: Option<i32>,
    /// Builtin autoscaling: CPU one pod should use, in millicores (1000 = one core). The
    /// pool then needs at least its reported CPU use over this many pods. Unset: CPU is
    /// not a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub cpu_millicores_per_pod: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Packed fills the busiest pods first and empties the least-used nodes, so a
    /// cluster autoscaler can remove them. Distributed spreads over nodes and zones.
    #[serde(default)]
    pub strategy: PlacementStrategy,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlacementStrategy {
    #[default]
    Packed,
    Distributed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreProvisioning {
    /// How long before a scheduled start its expected participants are reserved.
    #[serde(default = "default_lead_time")]
    pub lead_time: Duration,
    /// How long after the scheduled start an unused reservation is released.
    #[serde(default = "default_release_after")]
    pub release_after: Duration,
}

fn default_lead_time() -> Duration {
    Duration::from_secs(600)
}
fn default_release_after() -> Duration {
    Duration::from_secs(900)
}

impl Default for PreProvisioning {
    fn default() -> Self {
        Self { lead_time: default_lead_time(), release_after: default_release_after() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// Longest a draining pod waits for its meetings to move or end before it is deleted.
    #[serde(default = "default_drain_timeout")]
    pub timeout: Duration,
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(4 * 3600)
}

impl Default for Drain {
    fn default() -> Self {
        Self { timeout: default_drain_timeout() }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Remediation {
    /// An SFU whose heartbeat Lease is older than this is Unhealthy.
    #[serde(default = "default_heartbeat_timeout")]
    pub heartbeat_timeout: Duration,
    /// A node NotReady or Unknown for longer than this has its SFUs drained.
    #[serde(default = "default_node_not_ready_after")]
    pub node_not_ready_after: Duration,
    /// Cordon and taint a failed node that hosted SFU pods.
    #[serde(default = "default_true")]
    pub cordon_failed_nodes: bool,
    /// Evict this pool's pods from a failed node through the Eviction API.
    #[serde(default = "default_true")]
    pub evict_pods: bool,
}

fn default_heartbeat_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_node_not_ready_after() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}

impl Default for Remediation {
    fn default() -> Self {
        Self {
            heartbeat_timeout: default_heartbeat_timeout(),
            node_not_ready_after: default_node_not_ready_after(),
            cordon_failed_nodes: true,
            evict_pods: true,
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.announcedAddress != 'Static' || (has(self.announcedIPs) && size(self.announcedIPs) > 0)")
    .message("announcedIPs must list at least one address when announcedAddress is Static")
    .field_path(".announcedIPs"))]
pub struct Media {
    /// UDP ports the SFU binds for media. Unset: one port, 7882.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_port_range: Option<PortRange>,
    /// Run SFU pods with host networking (one pod per node per port range).
    #[serde(default)]
    pub host_network: bool,
    /// Which address the SFU announces in its ICE candidates.
    #[serde(default)]
    pub announced_address: AnnouncedAddress,
    /// Addresses to announce when announcedAddress is Static.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "announcedIPs")]
    #[schemars(length(max = 8))]
    pub announced_ips: Option<Vec<String>>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.min <= self.max")
    .message("udpPortRange.min must not be greater than max")
    .field_path(".min"))]
pub struct PortRange {
    #[schemars(range(min = 1024, max = 65535))]
    pub min: i32,
    #[schemars(range(min = 1024, max = 65535))]
    pub max: i32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AnnouncedAddress {
    /// The node's ExternalIP (typical with hostNetwork or a public node).
    #[default]
    NodeExternalIP,
    /// The node's InternalIP.
    NodeInternalIP,
    /// The pod's own IP (clients inside the cluster network, tests).
    PodIP,
    /// The addresses in announcedIPs (a NAT or load balancer in front).
    Static,
}

/// The schema of a template's containers: a name, an image, and the one security
/// field the rules below look at; the rest is preserved.
fn containers(min: u32, max: u32) -> serde_json::Value {
    serde_json::json!({
        "type": "array",
        "minItems": min,
        "maxItems": max,
        "items": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "required": ["name", "image"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 63},
                "image": {"type": "string", "minLength": 1},
                "securityContext": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"privileged": {"type": "boolean"}}
                }
            }
        }
    })
}

/// The pod template schema is kept partial: the fields Switchboard relies on are
/// checked by the API server, the rest is preserved and checked by the operator
/// when it builds pods (the full PodSpec schema would make the CRD ~0.5 MB).
fn sfu_pod_template_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "description": "A pod template (metadata and spec as in a Deployment's template). The spec must contain a container named sfu.",
        "required": ["spec"],
        "properties": {
            "metadata": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
                }
            },
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "required": ["containers"],
                "properties": {
                    "containers": containers(1, 16),
                    "initContainers": containers(0, 8),
                    "serviceAccountName": {"type": "string"},
                    "serviceAccount": {"type": "string"},
                    "hostPID": {"type": "boolean"},
                    "hostIPC": {"type": "boolean"},
                    "volumes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {"hostPath": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
                        }
                    }
                },
                // What a pool's author (a namespace's user) could use to reach beyond the
                // pod: the operator gives SFU pods their ServiceAccount and needs no host
                // filesystem, host processes or privileged containers.
                "x-kubernetes-validations": [
                    {
                        "rule": "self.containers.exists(c, c.name == 'sfu')",
                        "message": "the pod template needs a container named sfu",
                        "fieldPath": ".containers"
                    },
                    {
                        "rule": "!has(self.serviceAccountName) && !has(self.serviceAccount)",
                        "message": "the operator gives SFU pods the pool's ServiceAccount; the template cannot name one",
                        "fieldPath": ".serviceAccountName"
                    },
                    {
                        "rule": "!(has(self.hostPID) && self.hostPID) && !(has(self.hostIPC) && self.hostIPC)",
                        "message": "SFU pods cannot share the node's process or IPC namespace",
                        "fieldPath": ".hostPID"
                    },
                    {
                        "rule": "!has(self.volumes) || self.volumes.all(v, !has(v.hostPath))",
                        "message": "hostPath volumes are not allowed in SFU pods",
                        "fieldPath": ".volumes"
                    },
                    {
                        "rule": "self.containers.all(c, !has(c.securityContext) || !has(c.securityContext.privileged) || !c.securityContext.privileged) && (!has(self.initContainers) || self.initContainers.all(c, !has(c.securityContext) || !has(c.securityContext.privileged) || !c.securityContext.privileged))",
                        "message": "privileged containers are not allowed in SFU pods",
                        "fieldPath": ".containers"
                    }
                ]
            }
        }
    })
}

/// Observed state of the pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SfuPoolStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// SFU pods that exist (any state but deleted).
    #[serde(default)]
    pub replicas: i32,
    /// Pods Ready: pod Ready and a fresh heartbeat Lease.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods that take no new meetings and wait for theirs to move or end.
    #[serde(default)]
    pub draining_replicas: i32,
    /// Pods whose heartbeat expired.
    #[serde(default)]
    pub unhealthy_replicas: i32,
    /// Label selector of the pool's pods, for the scale subresource (HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Ready capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Load>,
    /// Load reported by the pods' heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<Load>,
    /// Capacity held for scheduled meetings that have not started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<Load>,
    /// Builtin autoscaling: the signal that asked for the most pods at the last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_signal: Option<ScaleSignal>,
    /// A short load summary per pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub pods: Vec<PodSummary>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Load {
    #[serde(default)]
    pub participants: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracks: Option<i64>,
    /// RTP packets received plus forwarded per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_per_second: Option<i64>,
    /// CPU in use, in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millicores: Option<i64>,
}

/// What drove built-in autoscaling: seats, packet rate or CPU (`spec.capacity`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ScaleSignal {
    /// Allocated plus reserved participants and the buffer, against participantsPerPod.
    Participants,
    /// The pods' packet rate against packetsPerSecondPerPod.
    PacketRate,
    /// The pods' CPU use against cpuMillicoresPerPod.
    Cpu,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSummary {
    pub name: String,
    pub state: SfuPodState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default)]
    pub participants: i64,
    #[serde(default)]
    pub tracks: i64,
}

/// Lifecycle of one SFU pod as the operator sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SfuPodState {
    /// Created; not yet Ready or no heartbeat yet.
    Starting,
    /// Pod Ready and heartbeat fresh: takes meetings.
    Ready,
    /// Takes no new meetings; waits for its meetings to move or end.
    Draining,
    /// Drained: empty, about to be deleted.
    Drained,
    /// Heartbeat expired or pod failed: to be replaced.
    Unhealthy,
}
