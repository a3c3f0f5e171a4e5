//! `SignalingPool`: the signaling replicas and their configuration.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Duration, SecretKeyRef, conditions_schema};

/// Signaling replicas (Deployment + Service + PDB + HPA), their Redis, JWT and TURN configuration.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchboard.dev",
    version = "v1alpha1",
    kind = "SignalingPool",
    namespaced,
    status = "SignalingPoolStatus",
    shortname = "sigp",
    category = "switchboard",
    doc = "Signaling replicas with their Redis, JWT and TURN configuration.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.publicUrl"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Connections", type_ = "integer", json_path = ".status.connections"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SignalingPoolSpec {
    /// Public base URL of signaling; join URLs are built from it.
    #[schemars(regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub public_url: String,
    /// Signaling image. Unset: the one the operator was released with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default)]
    pub autoscaling: SignalingAutoscaling,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    /// TURN servers handed to clients with short-lived credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<TurnConfig>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas")
    .message("minReplicas must not be greater than maxReplicas")
    .field_path(".minReplicas"))]
pub struct SignalingAutoscaling {
    #[serde(default = "default_min")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// WebSocket connections per replica the HPA aims for.
    #[serde(default = "default_target_connections")]
    #[schemars(range(min = 1, max = 100000))]
    pub target_connections_per_pod: i32,
}

fn default_min() -> i32 {
    2
}
fn default_max() -> i32 {
    10
}
fn default_target_connections() -> i32 {
    5000
}

impl Default for SignalingAutoscaling {
    fn default() -> Self {
        Self {
            min_replicas: default_min(),
            max_replicas: default_max(),
            target_connections_per_pod: default_target_connections(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisConfig {
    /// Secret key holding a redis:// or rediss:// URL.
    pub url_secret_ref: SecretKeyRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthConfig {
    /// Secret key holding the HMAC key that signs and checks JWTs.
    pub jwt_secret_ref: SecretKeyRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TurnConfig {
    /// TURN URLs, e.g. turn:turn.example.com:3478?transport=udp.
    #[schemars(length(min = 1, max = 8), inner(regex(pattern = r"^turns?:[^\s]+$")))]
    pub urls: Vec<String>,
    /// Secret key holding the secret shared with the TURN server (coturn REST API style).
    pub shared_secret_ref: SecretKeyRef,
    /// Lifetime of issued credentials.
    #[serde(default = "default_credential_ttl")]
    pub credential_ttl: Duration,
}

fn default_credential_ttl() -> Duration {
    Duration::from_secs(600)
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SignalingPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Open WebSocket connections over the replicas that reported in the last 6 s
    /// (written by the replicas, field manager switchboard-signaling; the operator leaves
    /// it out of what it applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
