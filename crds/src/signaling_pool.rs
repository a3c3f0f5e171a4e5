//! `SignalingPool`: the signaling replicas and their configuration.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::common::{Condition, Duration, SecretKeyRef, conditions_schema};

/// Signaling replicas (Deployment + Service + PDB + HPA), their Redis, JWT and TURN configuration.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[allow(clippy::duplicated_attributes)] // false positive: each printcolumn(...) is a column, type_ repeats by design
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
    /// Node labels the signaling pods must match (the pod's nodeSelector).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the signaling pods tolerate (the pod's tolerations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "tolerations_schema")]
    pub tolerations: Vec<Toleration>,
    /// CPU and memory of the signaling container, replacing the default as a whole.
    /// Unset: requests of 250m CPU and 256Mi memory, no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,
}

/// core/v1 Tolerations, with the checks the API server would make of a pod's, so a bad
/// one is refused on the SignalingPool rather than on the Deployment the operator applies.
fn tolerations_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "description": "Taints the signaling pods tolerate (core/v1 Tolerations, as in a pod spec).",
        "maxItems": 32,
        "items": {
            "type": "object",
            "properties": {
                "key": {
                    "type": "string", "maxLength": 317,
                    "description": "Taint key; unset matches every key (with operator Exists).",
                },
                "operator": {
                    "type": "string", "enum": ["Equal", "Exists", "Lt", "Gt"],
                    "description": "Equal (the default) or Exists; Lt and Gt need a feature gate.",
                },
                "value": {"type": "string", "maxLength": 63, "description": "Taint value; none with operator Exists."},
                "effect": {
                    "type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
                    "description": "Taint effect; unset matches every effect.",
                },
                "tolerationSeconds": {
                    "type": "integer", "format": "int64",
                    "description": "With effect NoExecute: how long the pod stays on a node after the taint appears.",
                }
            },
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                    "message": "a toleration without a key needs operator Exists"
                },
                {
                    "rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                    "message": "a toleration with operator Exists takes no value",
                    "fieldPath": ".value"
                },
                {
                    "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                    "message": "tolerationSeconds needs effect NoExecute",
                    "fieldPath": ".tolerationSeconds"
                }
            ]
        }
    })
}

/// The `limits` and `requests` of a core/v1 ResourceRequirements (quantities such as
/// 500m, 1 or 512Mi); other fields are not kept.
fn resources_schema(_: &mut SchemaGenerator) -> Schema {
    let quantities = serde_json::json!({
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": {"x-kubernetes-int-or-string": true}
    });
    json_schema!({
        "type": "object",
        "description": "CPU and memory of the signaling container (limits and requests, as in a container). Unset: requests of 250m CPU and 256Mi memory.",
        "properties": {"limits": quantities, "requests": quantities}
    })
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.minReplicas <= self.maxReplicas")
    .message("minReplicas must not be greater than maxReplicas")
    .field_path(".minReplicas"))]
pub struct SignalingAutoscaling {
    /// Builtin: the operator keeps an HPA on the Deployment, on CPU (and connections when
    /// targetConnectionsPerPod is set). External: the operator makes no HPA; KEDA (a
    /// ScaledObject on the Deployment, see the chart's samples) or your own HPA scales it.
    #[serde(default)]
    pub mode: crate::sfu_pool::AutoscalingMode,
    #[serde(default = "default_min")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[serde(default = "default_max")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU use the HPA aims for, as a percentage of the container's CPU request.
    /// Served by metrics-server, which stock clusters run.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 10, max = 100))]
    pub target_cpu_utilization_percent: i32,
    /// WebSocket connections per replica the HPA also aims for. Needs a custom-metrics
    /// adapter serving `switchboard_signaling_connections` as a Pods metric; without one
    /// the HPA cannot read it and stops scaling in. Unset: CPU only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub target_connections_per_pod: Option<i32>,
}

fn default_min() -> i32 {
    2
}
fn default_max() -> i32 {
    10
}
fn default_cpu_target() -> i32 {
    70
}

impl Default for SignalingAutoscaling {
    fn default() -> Self {
        Self {
            mode: Default::default(),
            min_replicas: default_min(),
            max_replicas: default_max(),
            target_cpu_utilization_percent: default_cpu_target(),
            target_connections_per_pod: None,
        }
    }
}

/// The Redis the replicas share. TLS is chosen by the URL (`rediss://`); credentials
/// may be in the URL, or here (these override the URL's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisConfig {
    /// Secret key holding a redis:// or rediss:// URL.
    pub url_secret_ref: SecretKeyRef,
    /// The ACL user signaling authenticates as (Redis 6 and later); it needs the keys and
    /// channels under `sb:` (`~sb:* &sb:*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub username: Option<String>,
    /// Secret key holding the password: of `username`, or Redis's `requirepass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// The CA that signed the Redis server's certificate, when the system's roots do not
    /// hold it (with a rediss:// URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTls>,
}

/// Where the PEM CA certificate of a TLS Redis is: one of a Secret key (e.g.
/// cert-manager's `ca.crt`) and a ConfigMap key. It is read when a replica starts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("has(self.caSecretRef) != has(self.caConfigMapRef)")
        .message("set one of caSecretRef and caConfigMapRef"),
)]
pub struct RedisTls {
    /// Secret key holding the CA certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// ConfigMap key holding the CA certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_config_map_ref: Option<ConfigMapKeyRef>,
}

/// A key in a ConfigMap of the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// How signaling checks user tokens (from the customer's identity provider) and signs
/// its own session tokens. Every key is at least 32 bytes; signaling refuses to start
/// otherwise. See docs/security.md for rotation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = kube::core::Rule::new("has(self.jwtSecretRef) || has(self.jwks)")
        .message("user tokens need a key: jwtSecretRef (HS256) or jwks (RS256/ES256)"),
    validation = kube::core::Rule::new("!has(self.jwks) || (has(self.issuer) && has(self.audience))")
        .message("with jwks, issuer and audience are required"),
    validation = kube::core::Rule::new("!has(self.previousJwtSecretRef) || has(self.jwtSecretRef)")
        .message("previousJwtSecretRef needs jwtSecretRef"),
    validation = kube::core::Rule::new("!has(self.previousSessionKeySecretRef) || has(self.sessionKeySecretRef)")
        .message("previousSessionKeySecretRef needs sessionKeySecretRef"),
)]
pub struct AuthConfig {
    /// Secret key holding the HMAC key (HS256) user tokens are signed with, shared with
    /// the identity provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret_ref: Option<SecretKeyRef>,
    /// The HMAC key before the current one, still accepted on user tokens while rotating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_jwt_secret_ref: Option<SecretKeyRef>,
    /// The identity provider's public keys (RS256, ES256) as a JWKS document, read again
    /// as it changes (key rotation at the provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksConfig>,
    /// The `iss` every user token must carry (required with `jwks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: Option<String>,
    /// A value every user token's `aud` must hold (required with `jwks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub audience: Option<String>,
    /// Secret key holding signaling's own key for session tokens. Unset: the replicas
    /// share a random key they keep in Redis (anyone who can write to that Redis can
    /// then forge sessions; set this in production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key_secret_ref: Option<SecretKeyRef>,
    /// The session key before the current one, still accepted while rotating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_session_key_secret_ref: Option<SecretKeyRef>,
}

/// A JWKS document in a ConfigMap of the pool's namespace, mounted into the signaling
/// pods (the kubelet updates the file when the ConfigMap changes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwksConfig {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub config_map_name: String,
    /// Key of the JWKS document in the ConfigMap.
    #[serde(default = "default_jwks_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
    /// How often signaling reads the document again (and at once, at most every 5 s,
    /// when a token names a key it does not know).
    #[serde(default = "default_jwks_refresh")]
    pub refresh: Duration,
}

fn default_jwks_key() -> String {
    "jwks.json".into()
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(60)
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
