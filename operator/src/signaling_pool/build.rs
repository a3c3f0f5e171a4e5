//! The objects a SignalingPool is made of, built purely from the validated pool:
//! a ServiceAccount bound to the shipped `switchboard-signaling` ClusterRole, a
//! Deployment whose configuration comes from the pool's Secrets, a Service, a
//! PodDisruptionBudget and an HPA on WebSocket connections per pod and CPU.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource as _;
use serde_json::json;
use switchboard_crds::SignalingPool;
use switchboard_crds::sfu_pool::AutoscalingMode;

use crate::config::IMAGE_PULL_POLICY;
use crate::labels::*;

pub const SIGNALING_COMPONENT: &str = "signaling";
pub const SIGNALING_CLUSTER_ROLE: &str = "switchboard-signaling";
/// The signaling image of a pool that names none, at the operator's version
/// (`switchboard/signaling-pod:0.1.0`, as `./images` builds it).
pub const DEFAULT_IMAGE: &str = concat!("switchboard/signaling-pod:", env!("CARGO_PKG_VERSION"));
pub const HTTP_PORT: i32 = 8080;
/// The per-pod metric the HPA follows when `targetConnectionsPerPod` is set (exported by
/// signaling-pod; served to the HPA by a custom-metrics adapter).
pub const CONNECTIONS_METRIC: &str = "switchboard_signaling_connections";

pub struct ValidSignaling<'a> {
    pub pool: &'a SignalingPool,
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
}

/// What the schema cannot check.
pub fn validate(pool: &SignalingPool) -> Result<ValidSignaling<'_>, String> {
    let name = pool.metadata.name.clone().ok_or("the pool has no name")?;
    let namespace = pool.metadata.namespace.clone().ok_or("the pool has no namespace")?;
    let owner = pool.controller_owner_ref(&()).ok_or("the pool has no uid yet")?;
    let a = &pool.spec.autoscaling;
    if a.min_replicas > a.max_replicas {
        return Err("spec.autoscaling.minReplicas is greater than maxReplicas".into());
    }
    Ok(ValidSignaling { pool, name, namespace, owner })
}

pub fn object_name(pool: &str) -> String {
    format!("{pool}-signaling")
}

pub fn selector(pool: &str) -> BTreeMap<String, String> {
    [
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (COMPONENT_LABEL.to_owned(), SIGNALING_COMPONENT.to_owned()),
        (SIGNALING_POOL_LABEL.to_owned(), pool.to_owned()),
    ]
    .into()
}

fn meta(v: &ValidSignaling<'_>) -> ObjectMeta {
    ObjectMeta {
        name: Some(object_name(&v.name)),
        namespace: Some(v.namespace.clone()),
        labels: Some(selector(&v.name)),
        owner_references: Some(vec![v.owner.clone()]),
        ..Default::default()
    }
}

pub fn service_account(v: &ValidSignaling<'_>) -> ServiceAccount {
    ServiceAccount { metadata: meta(v), ..Default::default() }
}

pub fn role_binding(v: &ValidSignaling<'_>) -> RoleBinding {
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(v),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SIGNALING_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": object_name(&v.name), "namespace": v.namespace}],
    }))
    .expect("valid RoleBinding")
}

fn secret_env(name: &str, r: &switchboard_crds::common::SecretKeyRef) -> serde_json::Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": r.name, "key": r.key}}})
}

/// Where a pool's JWKS ConfigMap is mounted. The whole ConfigMap, not a `subPath`: the
/// kubelet updates only whole-volume mounts when the ConfigMap changes.
pub const JWKS_DIR: &str = "/etc/switchboard/jwks";
/// Where the CA of a TLS Redis is mounted (`spec.redis.tls`), as [`REDIS_CA_FILE`].
pub const REDIS_CA_DIR: &str = "/etc/switchboard/redis-ca";
pub const REDIS_CA_FILE: &str = "ca.crt";

/// How signaling reaches the pool's Redis besides its URL (`config.rs`): credentials and
/// the CA file; and the CA's volume, if any.
fn redis_env(
    redis: &switchboard_crds::signaling_pool::RedisConfig,
) -> (Vec<serde_json::Value>, Option<serde_json::Value>) {
    let mut env = Vec::new();
    if let Some(user) = &redis.username {
        env.push(json!({"name": "SIGNALING_REDIS_USERNAME", "value": user}));
    }
    if let Some(r) = &redis.password_secret_ref {
        env.push(secret_env("SIGNALING_REDIS_PASSWORD", r));
    }
    let items = |key: &str| json!([{"key": key, "path": REDIS_CA_FILE}]);
    let volume = redis.tls.as_ref().and_then(|tls| match (&tls.ca_secret_ref, &tls.ca_config_map_ref) {
        (Some(s), _) => Some(json!({"name": "redis-ca", "secret": {"secretName": s.name, "items": items(&s.key)}})),
        (None, Some(c)) => Some(json!({"name": "redis-ca", "configMap": {"name": c.name, "items": items(&c.key)}})),
        (None, None) => None,
    });
    if volume.is_some() {
        env.push(json!({"name": "SIGNALING_REDIS_CA_FILE", "value": format!("{REDIS_CA_DIR}/{REDIS_CA_FILE}")}));
    }
    (env, volume)
}

/// The token settings of `spec.auth`, as signaling-pod reads them (`config.rs`).
fn auth_env(auth: &switchboard_crds::signaling_pool::AuthConfig) -> Vec<serde_json::Value> {
    let mut env = Vec::new();
    for (name, secret) in [
        ("SIGNALING_JWT_KEY", &auth.jwt_secret_ref),
        ("SIGNALING_JWT_KEY_PREVIOUS", &auth.previous_jwt_secret_ref),
        ("SIGNALING_SESSION_KEY", &auth.session_key_secret_ref),
        ("SIGNALING_SESSION_KEY_PREVIOUS", &auth.previous_session_key_secret_ref),
    ] {
        if let Some(r) = secret {
            env.push(secret_env(name, r));
        }
    }
    for (name, value) in [("SIGNALING_USER_ISSUER", &auth.issuer), ("SIGNALING_USER_AUDIENCE", &auth.audience)] {
        if let Some(v) = value {
            env.push(json!({"name": name, "value": v}));
        }
    }
    if let Some(jwks) = &auth.jwks {
        env.push(json!({"name": "SIGNALING_USER_JWKS_PATH", "value": format!("{JWKS_DIR}/{}", jwks.key)}));
        let refresh = jwks.refresh.as_std().as_secs().max(1).to_string();
        env.push(json!({"name": "SIGNALING_USER_JWKS_REFRESH_SECONDS", "value": refresh}));
    }
    env
}

/// The Deployment. `replicas` (minReplicas) is stated only by the apply that creates
/// it, so the Deployment never starts at the default of 1; every later apply leaves it
/// out, or it would take the field back from the HPA. What keeps the value when the
/// operator's manager lets go is the one-time [`INITIAL_REPLICAS_MANAGER`].
pub fn deployment(v: &ValidSignaling<'_>, create: bool) -> Deployment {
    let spec = &v.pool.spec;
    let mut env = vec![
        json!({"name": "SIGNALING_ADDR", "value": format!("0.0.0.0:{HTTP_PORT}")}),
        json!({"name": "SIGNALING_PUBLIC_URL", "value": spec.public_url}),
        json!({"name": "SIGNALING_POOL", "value": v.name}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        secret_env("SIGNALING_REDIS_URL", &spec.redis.url_secret_ref),
        // The credential of the SFUs' internal API: the namespace's, shared by its SfuPools.
        json!(crate::sfu_pool::build::api_token_env()),
    ];
    env.extend(auth_env(&spec.auth));
    let (redis_env, redis_ca) = redis_env(&spec.redis);
    env.extend(redis_env);
    if let Some(turn) = &spec.turn {
        env.push(json!({"name": "SIGNALING_TURN_URLS", "value": turn.urls.join(",")}));
        env.push(secret_env("SIGNALING_TURN_SECRET", &turn.shared_secret_ref));
        env.push(
            json!({"name": "SIGNALING_TURN_TTL_SECONDS", "value": turn.credential_ttl.as_std().as_secs().to_string()}),
        );
    }
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": 5});
    let mut deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(v),
        "spec": {
            "selector": {"matchLabels": selector(&v.name)},
            // Connections move on their own (clients resume on another replica), so a
            // rollout replaces one pod at a time and never drops below the current count.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": selector(&v.name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": HTTP_PORT.to_string(),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": object_name(&v.name),
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "signaling",
                        "image": spec.image.clone().unwrap_or(DEFAULT_IMAGE.into()),
                        "imagePullPolicy": IMAGE_PULL_POLICY,
                        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
                        "env": env,
                        "readinessProbe": probe("/readyz"),
                        "livenessProbe": probe("/healthz"),
                        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                        "securityContext": {
                            "runAsNonRoot": true, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                        },
                    }],
                },
            },
        },
    });
    // Placement and resources from the pool; left out when unset, so that removing them
    // from the pool removes them from the pods (server-side apply drops what we no
    // longer state).
    let pod = &mut deployment["spec"]["template"]["spec"];
    if !spec.node_selector.is_empty() {
        pod["nodeSelector"] = json!(spec.node_selector);
    }
    if !spec.tolerations.is_empty() {
        pod["tolerations"] = json!(spec.tolerations);
    }
    if let Some(resources) = &spec.resources {
        pod["containers"][0]["resources"] = json!(resources);
    }
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    if let Some(jwks) = &spec.auth.jwks {
        volumes.push(json!({"name": "jwks", "configMap": {"name": jwks.config_map_name}}));
        mounts.push(json!({"name": "jwks", "mountPath": JWKS_DIR, "readOnly": true}));
    }
    if let Some(ca) = redis_ca {
        volumes.push(ca);
        mounts.push(json!({"name": "redis-ca", "mountPath": REDIS_CA_DIR, "readOnly": true}));
    }
    if !volumes.is_empty() {
        pod["volumes"] = json!(volumes);
        pod["containers"][0]["volumeMounts"] = json!(mounts);
    }
    if create {
        deployment["spec"]["replicas"] = json!(spec.autoscaling.min_replicas);
    }
    serde_json::from_value(deployment).expect("valid Deployment")
}

/// The replica count a new Deployment starts with (minReplicas), applied once under
/// [`INITIAL_REPLICAS_MANAGER`] so the HPA can take the field over from that manager.
pub fn initial_replicas(v: &ValidSignaling<'_>) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": object_name(&v.name), "namespace": v.namespace},
        "spec": {"replicas": v.pool.spec.autoscaling.min_replicas},
    })
}

/// Whether a field manager other than `own` (the initial one, the HPA, a user) owns
/// `spec.replicas`.
pub fn replicas_owned_by_others(d: &Deployment, own: &str) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() != Some(own)
            && m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
    })
}

/// The field manager that sets a new Deployment's replicas and never applies again.
pub const INITIAL_REPLICAS_MANAGER: &str = "switchboard-operator-initial-replicas";

pub fn service(v: &ValidSignaling<'_>) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(v),
        "spec": {
            "selector": selector(&v.name),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }))
    .expect("valid Service")
}

/// At most one replica down at a time: its clients resume on the others.
pub fn disruption_budget(v: &ValidSignaling<'_>) -> PodDisruptionBudget {
    serde_json::from_value(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(v),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(&v.name)}},
    }))
    .expect("valid PodDisruptionBudget")
}

/// The pool's HPA: CPU, which any cluster with metrics-server serves, and connections per
/// pod when asked for (a custom-metrics adapter must serve them). None in External mode:
/// KEDA or the user's own HPA scales the Deployment, and two autoscalers would fight.
pub fn autoscaler(v: &ValidSignaling<'_>) -> Option<HorizontalPodAutoscaler> {
    let a = &v.pool.spec.autoscaling;
    if a.mode == AutoscalingMode::External {
        return None;
    }
    let mut metrics = vec![json!({"type": "Resource", "resource": {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": a.target_cpu_utilization_percent},
    }})];
    if let Some(connections) = a.target_connections_per_pod {
        metrics.push(json!({"type": "Pods", "pods": {
            "metric": {"name": CONNECTIONS_METRIC},
            "target": {"type": "AverageValue", "averageValue": connections.to_string()},
        }}));
    }
    Some(
        serde_json::from_value(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": meta(v),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": object_name(&v.name)},
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": metrics,
                // Scale down slowly: each removed replica makes its clients reconnect.
                "behavior": {"scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                }},
            },
        }))
        .expect("valid HorizontalPodAutoscaler"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(extra: serde_json::Value) -> SignalingPool {
        let mut spec = json!({
            "publicUrl": "https://meet.example.com",
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
            "auth": {"jwtSecretRef": {"name": "jwt", "key": "key"}},
        });
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool",
            "metadata": {"name": "main", "namespace": "conf", "uid": "u-1"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn secrets_reach_the_pods_only_by_reference() {
        let p = pool(json!({"turn": {
            "urls": ["turn:t.example.com:3478"],
            "sharedSecretRef": {"name": "turn", "key": "secret"},
            "credentialTtl": "5m",
        }}));
        let v = validate(&p).unwrap();
        let d = serde_json::to_value(deployment(&v, false)).unwrap();
        let env = &d["spec"]["template"]["spec"]["containers"][0]["env"];
        let by_name = |n: &str| env.as_array().unwrap().iter().find(|e| e["name"] == n).cloned().unwrap();
        assert_eq!(by_name("SIGNALING_REDIS_URL")["valueFrom"]["secretKeyRef"], json!({"name": "redis", "key": "url"}));
        assert_eq!(by_name("SIGNALING_JWT_KEY")["valueFrom"]["secretKeyRef"], json!({"name": "jwt", "key": "key"}));
        assert_eq!(
            by_name("SIGNALING_TURN_SECRET")["valueFrom"]["secretKeyRef"],
            json!({"name": "turn", "key": "secret"})
        );
        assert_eq!(by_name("SIGNALING_TURN_TTL_SECONDS")["value"], "300");
        assert_eq!(
            by_name("SWITCHBOARD_SFU_API_TOKEN")["valueFrom"]["secretKeyRef"],
            json!({"name": "switchboard-sfu-api", "key": "token", "optional": false}),
            "the SFUs' credential, as their pods get it"
        );
        assert_eq!(
            by_name("SIGNALING_POOL")["value"],
            p.metadata.name.clone().unwrap(),
            "replicas sum their connections per pool"
        );
        assert!(d["spec"].get("replicas").is_none(), "after creation the operator's manager leaves replicas out");
        assert_eq!(
            serde_json::to_value(deployment(&v, true)).unwrap()["spec"]["replicas"],
            2,
            "created at minReplicas"
        );
        assert_eq!(initial_replicas(&v)["spec"]["replicas"], 2, "held at minReplicas by the initial manager");
    }

    #[test]
    fn redis_credentials_and_ca_reach_the_pods_by_reference() {
        let p = pool(json!({"redis": {
            "urlSecretRef": {"name": "redis", "key": "url"},
            "username": "signaling",
            "passwordSecretRef": {"name": "redis", "key": "password"},
            "tls": {"caSecretRef": {"name": "redis-tls", "key": "ca.crt"}},
        }}));
        let d = serde_json::to_value(deployment(&validate(&p).unwrap(), false)).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let by_name = |n: &str| env.iter().find(|e| e["name"] == n).cloned().unwrap_or_else(|| panic!("{n}"));
        assert_eq!(by_name("SIGNALING_REDIS_USERNAME")["value"], "signaling");
        assert_eq!(
            by_name("SIGNALING_REDIS_PASSWORD")["valueFrom"]["secretKeyRef"],
            json!({"name": "redis", "key": "password"})
        );
        assert_eq!(by_name("SIGNALING_REDIS_CA_FILE")["value"], "/etc/switchboard/redis-ca/ca.crt");
        assert_eq!(
            pod["volumes"],
            json!([{"name": "redis-ca", "secret": {"secretName": "redis-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}])
        );
        assert_eq!(
            pod["containers"][0]["volumeMounts"],
            json!([{"name": "redis-ca", "mountPath": REDIS_CA_DIR, "readOnly": true}])
        );

        // From a ConfigMap, next to a JWKS.
        let p = pool(json!({
            "redis": {
                "urlSecretRef": {"name": "redis", "key": "url"},
                "tls": {"caConfigMapRef": {"name": "redis-ca", "key": "pem"}},
            },
            "auth": {"jwks": {"configMapName": "idp-keys"}, "issuer": "https://idp", "audience": "sb"},
        }));
        let d = serde_json::to_value(deployment(&validate(&p).unwrap(), false)).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"][1]["configMap"],
            json!({"name": "redis-ca", "items": [{"key": "pem", "path": "ca.crt"}]})
        );
        let mounts: Vec<_> =
            pod["containers"][0]["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].clone()).collect();
        assert_eq!(mounts, vec![json!(JWKS_DIR), json!(REDIS_CA_DIR)]);
        let env = pod["containers"][0]["env"].as_array().unwrap();
        assert!(
            !env.iter().any(|e| e["name"] == "SIGNALING_REDIS_PASSWORD" || e["name"] == "SIGNALING_REDIS_USERNAME")
        );

        // Without them: no variables, no volume.
        let bare = serde_json::to_value(deployment(&validate(&pool(json!({}))).unwrap(), false)).unwrap();
        let env = bare["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
        assert!(
            !env.iter()
                .any(|e| e["name"].as_str().unwrap().starts_with("SIGNALING_REDIS_")
                    && e["name"] != "SIGNALING_REDIS_URL")
        );
        assert!(bare["spec"]["template"]["spec"].get("volumes").is_none());
    }

    #[test]
    fn the_token_settings_reach_the_pods_and_the_jwks_is_mounted_whole() {
        let p = pool(json!({"auth": {
            "previousJwtSecretRef": {"name": "jwt", "key": "old"},
            "jwtSecretRef": {"name": "jwt", "key": "key"},
            "jwks": {"configMapName": "idp-keys", "refresh": "2m"},
            "issuer": "https://idp.example.com", "audience": "switchboard",
            "sessionKeySecretRef": {"name": "sessions", "key": "current"},
            "previousSessionKeySecretRef": {"name": "sessions", "key": "previous"},
        }}));
        let d = serde_json::to_value(deployment(&validate(&p).unwrap(), false)).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let by_name = |n: &str| env.iter().find(|e| e["name"] == n).cloned().unwrap_or_else(|| panic!("{n}"));
        let secret = |n: &str| by_name(n)["valueFrom"]["secretKeyRef"].clone();
        assert_eq!(secret("SIGNALING_JWT_KEY_PREVIOUS"), json!({"name": "jwt", "key": "old"}));
        assert_eq!(secret("SIGNALING_SESSION_KEY"), json!({"name": "sessions", "key": "current"}));
        assert_eq!(secret("SIGNALING_SESSION_KEY_PREVIOUS"), json!({"name": "sessions", "key": "previous"}));
        assert_eq!(by_name("SIGNALING_USER_ISSUER")["value"], "https://idp.example.com");
        assert_eq!(by_name("SIGNALING_USER_AUDIENCE")["value"], "switchboard");
        assert_eq!(by_name("SIGNALING_USER_JWKS_PATH")["value"], "/etc/switchboard/jwks/jwks.json");
        assert_eq!(by_name("SIGNALING_USER_JWKS_REFRESH_SECONDS")["value"], "120");
        assert_eq!(pod["volumes"], json!([{"name": "jwks", "configMap": {"name": "idp-keys"}}]));
        assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], JWKS_DIR);
        assert!(pod["containers"][0]["volumeMounts"][0].get("subPath").is_none(), "updates need a whole mount");

        // Without them: none of it, so removing a setting from the pool removes it from the pods.
        let bare = serde_json::to_value(deployment(&validate(&pool(json!({}))).unwrap(), false)).unwrap();
        let names: Vec<_> = bare["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect();
        for absent in ["SIGNALING_SESSION_KEY", "SIGNALING_USER_JWKS_PATH", "SIGNALING_USER_ISSUER"] {
            assert!(!names.iter().any(|n| n == absent), "{absent} in {names:?}");
        }
        assert!(bare["spec"]["template"]["spec"].get("volumes").is_none());
    }

    #[test]
    fn the_pods_carry_the_pools_placement_and_resources() {
        let p = pool(json!({
            "nodeSelector": {"node-role.example.com/edge": "true"},
            "tolerations": [
                {"key": "edge", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "spot", "operator": "Equal", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 60},
            ],
            "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        }));
        let d = serde_json::to_value(deployment(&validate(&p).unwrap(), false)).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"], json!({"node-role.example.com/edge": "true"}));
        assert_eq!(
            pod["tolerations"],
            json!([
                {"key": "edge", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "spot", "operator": "Equal", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 60},
            ])
        );
        let container = &pod["containers"][0];
        assert_eq!(
            container["resources"],
            json!({"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}})
        );
        assert_eq!(container["imagePullPolicy"], "IfNotPresent");

        // Unset: no placement of ours, the default requests.
        let d = serde_json::to_value(deployment(&validate(&pool(json!({}))).unwrap(), false)).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert!(pod.get("nodeSelector").is_none() && pod.get("tolerations").is_none(), "{pod}");
        assert_eq!(pod["containers"][0]["resources"], json!({"requests": {"cpu": "250m", "memory": "256Mi"}}));
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "IfNotPresent");
    }

    #[test]
    fn replicas_count_as_owned_once_a_manager_states_them() {
        let mut d = deployment(&validate(&pool(json!({}))).unwrap(), false);
        assert!(!replicas_owned_by_others(&d, "op"));
        let entry = |manager: &str, fields: serde_json::Value| {
            serde_json::from_value(
                json!({"manager": manager, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": fields}),
            )
            .unwrap()
        };
        d.metadata.managed_fields = Some(vec![entry("m", json!({"f:spec": {"f:template": {}}}))]);
        assert!(!replicas_owned_by_others(&d, "op"), "an entry without replicas");
        d.metadata.managed_fields.as_mut().unwrap().push(entry("op", json!({"f:spec": {"f:replicas": {}}})));
        assert!(!replicas_owned_by_others(&d, "op"), "the operator's own creating apply does not count");
        d.metadata.managed_fields.as_mut().unwrap().push(entry("m", json!({"f:spec": {"f:replicas": {}}})));
        assert!(replicas_owned_by_others(&d, "op"));
    }

    #[test]
    fn the_autoscaler_follows_cpu_by_default_connections_when_asked_and_none_in_external_mode() {
        let hpa = |autoscaling: serde_json::Value| {
            autoscaler(&validate(&pool(json!({"autoscaling": autoscaling}))).unwrap())
                .map(|h| serde_json::to_value(h).unwrap())
        };
        let cpu = hpa(json!({"minReplicas": 3, "maxReplicas": 12})).unwrap();
        assert_eq!((cpu["spec"]["minReplicas"].as_i64(), cpu["spec"]["maxReplicas"].as_i64()), (Some(3), Some(12)));
        let metrics = cpu["spec"]["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 1, "a stock cluster serves CPU only: {metrics:?}");
        assert_eq!(metrics[0]["resource"]["name"], "cpu");
        assert_eq!(metrics[0]["resource"]["target"]["averageUtilization"], 70);
        let both = hpa(json!({"targetConnectionsPerPod": 4000, "targetCpuUtilizationPercent": 60})).unwrap();
        assert_eq!(both["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60);
        assert_eq!(both["spec"]["metrics"][1]["pods"]["metric"]["name"], CONNECTIONS_METRIC);
        assert_eq!(both["spec"]["metrics"][1]["pods"]["target"]["averageValue"], "4000");
        assert_eq!(hpa(json!({"mode": "External"})), None, "KEDA or the user's HPA scales it");
    }
}
