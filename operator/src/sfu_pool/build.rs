//! Pure: validate a pool and build the objects it needs. Nothing here talks to
//! the API server, so all of it is unit-tested.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Pod, PodSpec, Probe,
    ResourceFieldSelector, Secret, SecretKeySelector, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use serde_json::json;
use switchboard_crds::SfuPool;
use switchboard_crds::sfu_pool::{AnnouncedAddress, PlacementStrategy};
use switchboard_heartbeat::pod_env;

use crate::config::IMAGE_PULL_POLICY;
use crate::labels::*;
use crate::recording_job::build::RECORDER_COMPONENT;
use crate::signaling_pool::build::SIGNALING_COMPONENT;

/// Port of the SFU's internal HTTP API.
pub const API_PORT: i32 = 7880;
/// The media port when the pool names no range.
pub const DEFAULT_UDP_PORT: i32 = 7882;
/// Largest UDP port range a pod declares (each port is a containerPort).
pub const MAX_UDP_PORTS: i32 = 1000;
/// The ClusterRole (shipped with the operator's RBAC) that lets an SFU renew its Lease.
pub const SFU_CLUSTER_ROLE: &str = "switchboard-sfu";
/// Name of the container the operator configures.
pub const SFU_CONTAINER: &str = "sfu";
/// The SFU's own bound on its drain after SIGTERM (read by sfu-pod's config).
pub const DRAIN_TIMEOUT_ENV: &str = "SWITCHBOARD_DRAIN_TIMEOUT_SECONDS";
/// What the kubelet waits beyond the drain timeout before it kills an SFU: time for
/// the SFU to stop on its own once its drain timeout has passed.
pub const TERMINATION_GRACE_MARGIN_SECONDS: i64 = 30;
/// The Secret holding the credential of the SFUs' internal API: one per namespace,
/// shared by its pools (signaling and the recorder call every pool of the namespace),
/// made once by the first pool's reconcile and owned by every pool that uses it.
pub const API_SECRET: &str = "switchboard-sfu-api";
/// Its key.
pub const API_SECRET_KEY: &str = "token";
/// The variable SFUs, signaling and the recorder read the credential from
/// (`switchboard_sfu_api::auth::TOKEN_ENV`; the operator depends on no SFU crate).
pub const API_TOKEN_ENV: &str = "SWITCHBOARD_SFU_API_TOKEN";

/// A pool that passed validation, with what was derived from it.
pub struct ValidPool<'a> {
    pub pool: &'a SfuPool,
    pub name: String,
    pub namespace: String,
    pub owner: OwnerReference,
    pub template_hash: String,
    pub udp_ports: (i32, i32),
}

/// Checks what the schema cannot (or what an older CRD may have let through).
pub fn validate(pool: &SfuPool) -> Result<ValidPool<'_>, String> {
    let name = pool.metadata.name.clone().ok_or("the pool has no name")?;
    let namespace = pool.metadata.namespace.clone().ok_or("the pool has no namespace")?;
    let owner = pool.controller_owner_ref(&()).ok_or("the pool has no uid yet")?;
    let spec = pool.spec.template.spec.as_ref().ok_or("spec.template.spec is missing")?;
    if !spec.containers.iter().any(|c| c.name == SFU_CONTAINER) {
        return Err("spec.template.spec.containers has no container named sfu".into());
    }
    if let Some(why) = super::template::refused(spec) {
        return Err(why.into());
    }
    let udp_ports = match &pool.spec.media.udp_port_range {
        Some(r) => (r.min, r.max),
        None => (DEFAULT_UDP_PORT, DEFAULT_UDP_PORT),
    };
    if udp_ports.0 > udp_ports.1 || udp_ports.1 - udp_ports.0 >= MAX_UDP_PORTS {
        return Err(format!(
            "spec.media.udpPortRange {}-{} must be ordered and hold at most {MAX_UDP_PORTS} ports",
            udp_ports.0, udp_ports.1
        ));
    }
    if udp_ports.0 <= API_PORT && API_PORT <= udp_ports.1 {
        return Err(format!("spec.media.udpPortRange must not include the SFU API port {API_PORT}"));
    }
    let a = &pool.spec.autoscaling;
    if a.min_replicas > a.max_replicas {
        return Err("spec.autoscaling.minReplicas is greater than maxReplicas".into());
    }
    Ok(ValidPool { pool, name, namespace, owner, template_hash: template_hash(pool), udp_ports })
}

/// A stable hash (FNV-1a, independent of the Rust version) of everything in the
/// spec that goes into a pod: a change rolls the pool.
pub fn template_hash(pool: &SfuPool) -> String {
    let input = json!({
        "template": pool.spec.template,
        "media": pool.spec.media,
        "capacity": pool.spec.capacity,
        "placement": pool.spec.placement,
        "heartbeatTimeout": pool.spec.remediation.heartbeat_timeout,
    });
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in input.to_string().bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

fn pool_labels(v: &ValidPool<'_>) -> BTreeMap<String, String> {
    [
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (COMPONENT_LABEL.to_owned(), SFU_COMPONENT.to_owned()),
        (POOL_LABEL.to_owned(), v.name.clone()),
    ]
    .into()
}

/// Label selector (as a string) of the pool's pods, for the scale subresource.
pub fn selector_string(pool_name: &str) -> String {
    format!("{},{POOL_LABEL}={pool_name}", sfu_pods_selector())
}

fn meta(v: &ValidPool<'_>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(v.namespace.clone()),
        labels: Some(pool_labels(v)),
        owner_references: Some(vec![v.owner.clone()]),
        ..Default::default()
    }
}

pub fn service_account_name(pool: &str) -> String {
    format!("{pool}-sfu")
}

pub fn service_account(v: &ValidPool<'_>) -> ServiceAccount {
    ServiceAccount { metadata: meta(v, service_account_name(&v.name)), ..Default::default() }
}

/// Binds the shipped `switchboard-sfu` ClusterRole in the pool's namespace, so the
/// operator needs only `bind` on that role, not the lease permissions it grants.
pub fn role_binding(v: &ValidPool<'_>) -> RoleBinding {
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(v, service_account_name(&v.name)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SFU_CLUSTER_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": service_account_name(&v.name), "namespace": v.namespace}],
    }))
    .expect("valid RoleBinding")
}

/// Headless Service: DNS for each SFU's internal API.
pub fn headless_service(v: &ValidPool<'_>) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(v, format!("{}-sfu", v.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": false,
            "selector": pool_labels(v),
            "ports": [{"name": "api", "port": API_PORT, "targetPort": API_PORT, "protocol": "TCP"}],
        },
    }))
    .expect("valid Service")
}

/// The credential, from [`API_SECRET`], for any pod that calls (or is) an SFU of the
/// namespace. Not optional: a pod started before the Secret exists waits for it (the
/// kubelet retries) rather than run without the credential.
pub fn api_token_env() -> EnvVar {
    EnvVar {
        name: API_TOKEN_ENV.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: API_SECRET.into(),
                key: API_SECRET_KEY.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pool as one of the credential Secret's owners: not its controller (the
/// namespace's pools share it), so the garbage collector removes the Secret only once
/// the last of them is gone.
fn api_secret_owner(owner: &OwnerReference) -> OwnerReference {
    OwnerReference { controller: None, block_owner_deletion: None, ..owner.clone() }
}

/// The Secret's owners: this pool and every other live pool of its namespace among
/// `pools` (the cache), so that a Secret made again after a deletion is owned by all
/// of them at once, and never collected while one still uses it.
pub fn api_secret_owners<'p>(v: &ValidPool<'_>, pools: impl IntoIterator<Item = &'p SfuPool>) -> Vec<OwnerReference> {
    let mut owners = vec![api_secret_owner(&v.owner)];
    for pool in pools {
        let live = pool.metadata.deletion_timestamp.is_none() && pool.metadata.namespace.as_ref() == Some(&v.namespace);
        if let Some(owner) = pool.controller_owner_ref(&()).filter(|_| live)
            && !owners.iter().any(|o| o.uid == owner.uid)
        {
            owners.push(api_secret_owner(&owner));
        }
    }
    owners.sort_by(|a, b| a.name.cmp(&b.name));
    owners
}

/// The credential Secret, made with `token` (the API server keeps the first one made;
/// nothing ever writes its data again).
pub fn api_secret(v: &ValidPool<'_>, token: &str, owners: Vec<OwnerReference>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(API_SECRET.into()),
            namespace: Some(v.namespace.clone()),
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (COMPONENT_LABEL.to_owned(), SFU_COMPONENT.to_owned()),
                ]
                .into(),
            ),
            owner_references: Some(owners),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(API_SECRET_KEY.to_owned(), ByteString(token.as_bytes().to_vec()))].into()),
        ..Default::default()
    }
}

/// A strategic merge patch adding the `owners` the Secret lacks (owner references
/// merge by uid: those it has stay), or `None` when it has them all.
pub fn api_secret_owner_patch(secret: &Secret, owners: &[OwnerReference]) -> Option<serde_json::Value> {
    let missing: Vec<&OwnerReference> =
        owners.iter().filter(|o| !secret.owner_references().iter().any(|have| have.uid == o.uid)).collect();
    (!missing.is_empty()).then(|| json!({"metadata": {"ownerReferences": missing}}))
}

/// Who may reach the pool's pods: the API port only from the namespace's signaling
/// pods, its recorder pods and the pool's own SFUs (relays); the media ports from
/// anywhere. CNIs that enforce NetworkPolicy let the kubelet's probes through (traffic
/// from the pod's node); with `hostNetwork` most CNIs enforce nothing, and the
/// credential is what guards the API.
pub fn network_policy(v: &ValidPool<'_>) -> NetworkPolicy {
    let (udp_min, udp_max) = v.udp_ports;
    let mut media = json!({"protocol": "UDP", "port": udp_min});
    if udp_max > udp_min {
        media["endPort"] = json!(udp_max);
    }
    let from = |component: &str| json!({"podSelector": {"matchLabels": {MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: component}}});
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(v, format!("{}-sfu", v.name)),
        "spec": {
            "podSelector": {"matchLabels": pool_labels(v)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        from(SIGNALING_COMPONENT),
                        from(RECORDER_COMPONENT),
                        {"podSelector": {"matchLabels": pool_labels(v)}},
                    ],
                    "ports": [{"protocol": "TCP", "port": API_PORT}],
                },
                {"ports": [media]},
            ],
        },
    }))
    .expect("valid NetworkPolicy")
}

/// Busy pods may not be evicted (`kubectl drain` and the cluster autoscaler wait
/// until the operator has moved or finished their meetings); idle pods may.
pub fn disruption_budget(v: &ValidPool<'_>) -> PodDisruptionBudget {
    let mut selector = pool_labels(v);
    selector.insert(BUSY_LABEL.into(), "true".into());
    serde_json::from_value(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(v, format!("{}-sfu-busy", v.name)),
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": selector}},
    }))
    .expect("valid PodDisruptionBudget")
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pool's drain timeout in whole seconds, rounded up.
fn drain_timeout_secs(pool: &SfuPool) -> i64 {
    let timeout = pool.spec.drain.timeout.as_std();
    let secs = timeout.as_secs().saturating_add(u64::from(timeout.subsec_nanos() > 0));
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// `name` = the `sfu` container's CPU request in whole cores, rounded up (downward API).
fn cpu_request_env(name: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some(SFU_CONTAINER.into()),
                resource: "requests.cpu".into(),
                divisor: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into())),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: impl ToString) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.to_string()), ..Default::default() }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("api".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// One SFU pod of the pool (the API server names it from `generateName`).
pub fn sfu_pod(v: &ValidPool<'_>) -> Pod {
    let pool = v.pool;
    let template = &pool.spec.template;
    let mut metadata = template.metadata.clone().unwrap_or_default();
    metadata.name = None;
    metadata.generate_name = Some(format!("{}-", v.name));
    metadata.namespace = Some(v.namespace.clone());
    metadata.owner_references = Some(vec![v.owner.clone()]);
    let labels = metadata.labels.get_or_insert_with(Default::default);
    labels.extend(pool_labels(v));
    labels.insert(TEMPLATE_HASH_LABEL.into(), v.template_hash.clone());
    labels.insert(BUSY_LABEL.into(), "false".into());
    metadata.annotations.get_or_insert_with(Default::default).insert(SAFE_TO_EVICT_ANNOTATION.into(), "true".into());

    let mut spec: PodSpec = template.spec.clone().unwrap_or_default();
    spec.service_account_name = Some(service_account_name(&v.name));
    // A deleted SFU drains (SIGTERM) until its participants are gone or the drain
    // timeout passed; the kubelet must not kill it before (LiveKit's chart does the same
    // for its SFUs). A template's own grace period wins.
    spec.termination_grace_period_seconds
        .get_or_insert_with(|| drain_timeout_secs(pool).saturating_add(TERMINATION_GRACE_MARGIN_SECONDS));
    // An SFU keeps its rooms in memory: a restarted process would be a new, empty SFU
    // under the old name, heartbeating as if nothing happened, while its meetings
    // stayed assigned to it. So an SFU pod is never restarted in place: a dead SFU
    // fails its pod, the operator moves its meetings at once and replaces the pod
    // (as Agones does with a GameServer whose process exits).
    spec.restart_policy = Some("Never".into());
    spec.host_network = Some(pool.spec.media.host_network);
    if spec.affinity.is_none() && spec.topology_spread_constraints.is_none() {
        placement(&mut spec, v);
    }
    let media = &pool.spec.media;
    let (udp_min, udp_max) = v.udp_ports;
    let host = media.host_network;
    let sfu = spec.containers.iter_mut().find(|c| c.name == SFU_CONTAINER).expect("validated: has an sfu container");
    configure_sfu_container(sfu, v, udp_min, udp_max, host, media.announced_address, media.announced_ips.as_deref());
    Pod { metadata, spec: Some(spec), status: None }
}

fn configure_sfu_container(
    c: &mut Container,
    v: &ValidPool<'_>,
    udp_min: i32,
    udp_max: i32,
    host_network: bool,
    announced: AnnouncedAddress,
    announced_ips: Option<&[String]>,
) {
    let announced = match announced {
        AnnouncedAddress::NodeExternalIP => "NodeExternalIP",
        AnnouncedAddress::NodeInternalIP => "NodeInternalIP",
        AnnouncedAddress::PodIP => "PodIP",
        AnnouncedAddress::Static => "Static",
    };
    let ours = vec![
        value_env(pod_env::POOL, &v.name),
        field_env(pod_env::NAMESPACE, "metadata.namespace"),
        field_env(pod_env::POD_NAME, "metadata.name"),
        field_env(pod_env::POD_IP, "status.podIP"),
        field_env(pod_env::HOST_IP, "status.hostIP"),
        field_env(pod_env::NODE_NAME, "spec.nodeName"),
        value_env(pod_env::API_PORT, API_PORT),
        value_env(pod_env::UDP_PORT_MIN, udp_min),
        value_env(pod_env::UDP_PORT_MAX, udp_max),
        value_env(pod_env::ANNOUNCED_ADDRESS, announced),
        value_env(pod_env::ANNOUNCED_IPS, announced_ips.unwrap_or_default().join(",")),
        value_env(pod_env::HEARTBEAT_TTL_SECONDS, v.pool.spec.remediation.heartbeat_timeout.as_std().as_secs().max(1)),
        value_env(pod_env::CAPACITY_PARTICIPANTS, v.pool.spec.capacity.participants_per_pod),
        api_token_env(),
    ];
    let env = c.env.get_or_insert_with(Default::default);
    env.retain(|e| !ours.iter().any(|o| o.name == e.name));
    env.extend(ours);
    // A runtime sized to the node's cores, not the pod's share of them, spreads one pod's
    // connections over threads that then wake each other (per core, one thread forwards
    // the most; BENCHMARKS). A template's own setting wins; with no CPU request the SFU
    // takes every core it may use (std reads the cgroup's CPU limit).
    let requests_cpu = c.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some_and(|r| r.contains_key("cpu"));
    if requests_cpu && !env.iter().any(|e| e.name == pod_env::WORKER_THREADS) {
        env.push(cpu_request_env(pod_env::WORKER_THREADS));
    }
    // After SIGTERM the SFU waits for its participants to leave up to this long (its own
    // default is 4 h), as the pool's drain timeout says. A template's own setting wins.
    if !env.iter().any(|e| e.name == DRAIN_TIMEOUT_ENV) {
        env.push(value_env(DRAIN_TIMEOUT_ENV, drain_timeout_secs(v.pool)));
    }

    let ports = c.ports.get_or_insert_with(Default::default);
    ports.retain(|p| p.name.as_deref() != Some("api") && p.protocol.as_deref() != Some("UDP"));
    let host_port = |p: i32| host_network.then_some(p);
    ports.push(ContainerPort {
        name: Some("api".into()),
        container_port: API_PORT,
        protocol: Some("TCP".into()),
        host_port: host_port(API_PORT),
        ..Default::default()
    });
    for (i, port) in (udp_min..=udp_max).enumerate() {
        // Port names are at most 15 characters and unique.
        let name = if udp_min == udp_max { "media".to_owned() } else { format!("media-{i}") };
        ports.push(ContainerPort {
            name: Some(name),
            container_port: port,
            protocol: Some("UDP".into()),
            host_port: host_port(port),
            ..Default::default()
        });
    }
    c.readiness_probe.get_or_insert_with(|| probe("/readyz", 2, 1));
    // A template's own pull policy wins.
    c.image_pull_policy.get_or_insert_with(|| IMAGE_PULL_POLICY.into());
    c.liveness_probe.get_or_insert_with(|| probe("/healthz", 5, 3));
}

/// Packed: prefer nodes that already run this pool's pods (fills nodes, so empty
/// ones can go). Distributed: spread over zones and nodes.
fn placement(spec: &mut PodSpec, v: &ValidPool<'_>) {
    let selector = json!({"matchLabels": {POOL_LABEL: v.name}});
    match v.pool.spec.placement.strategy {
        PlacementStrategy::Packed => {
            spec.affinity = Some(
                serde_json::from_value(json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                    "weight": 100,
                    "podAffinityTerm": {"labelSelector": selector, "topologyKey": "kubernetes.io/hostname"}
                }]}}))
                .expect("valid affinity"),
            );
        }
        PlacementStrategy::Distributed => {
            spec.topology_spread_constraints = Some(
                serde_json::from_value(json!([
                    {
                        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector,
                    },
                    {
                        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector,
                    },
                ]))
                .expect("valid spread"),
            );
        }
    }
    if !v.pool.spec.zones.is_empty() {
        let affinity = spec.affinity.get_or_insert_with(Default::default);
        affinity.node_affinity = Some(
            serde_json::from_value(json!({"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                "matchExpressions": [
                    {"key": "topology.kubernetes.io/zone", "operator": "In", "values": v.pool.spec.zones}
                ]
            }]}}))
            .expect("valid node affinity"),
        );
    }
}

/// Whether a pod of ours belongs to `pool` (label and controller owner).
pub fn owned_by(pod: &Pod, pool: &SfuPool) -> bool {
    let uid = pool.metadata.uid.as_deref();
    pod.labels().get(POOL_LABEL) == pool.metadata.name.as_ref()
        && pod.owner_references().iter().any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> SfuPool {
        let text = include_str!("../../../examples/sfupool-eu-west.yaml");
        let mut pool: SfuPool = serde_saphyr::from_str(text).unwrap();
        pool.metadata.uid = Some("uid-1".into());
        pool
    }

    #[test]
    fn the_pod_carries_the_sfu_contract() {
        let pool = pool();
        let v = validate(&pool).unwrap();
        let pod = sfu_pod(&v);
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[POOL_LABEL], "eu-west");
        assert_eq!(labels["team"], "media", "template labels are kept");
        assert_eq!(labels[TEMPLATE_HASH_LABEL], v.template_hash);
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("eu-west-"));
        assert_eq!(pod.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("eu-west-sfu"));
        assert_eq!(
            spec.restart_policy.as_deref(),
            Some("Never"),
            "a dead SFU fails its pod rather than restarting empty"
        );
        let sfu = spec.containers.iter().find(|c| c.name == "sfu").unwrap();
        let env: BTreeMap<_, _> = sfu.env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e)).collect();
        assert_eq!(env[pod_env::POOL].value.as_deref(), Some("eu-west"));
        assert_eq!(
            env[pod_env::POD_NAME].value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path,
            "metadata.name"
        );
        assert_eq!(env[pod_env::UDP_PORT_MIN].value.as_deref(), Some("40000"));
        let threads = env[pod_env::WORKER_THREADS].value_from.as_ref().unwrap().resource_field_ref.as_ref().unwrap();
        assert_eq!((threads.container_name.as_deref(), threads.resource.as_str()), (Some("sfu"), "requests.cpu"));
        let udp = sfu.ports.as_ref().unwrap().iter().filter(|p| p.protocol.as_deref() == Some("UDP")).count();
        assert_eq!(udp, 100);
        assert!(sfu.readiness_probe.is_some() && sfu.liveness_probe.is_some());
        assert!(spec.tolerations.is_some(), "template tolerations are kept");
    }

    #[test]
    fn worker_threads_follow_the_cpu_request_unless_the_template_sets_them() {
        let threads = |pool: &SfuPool| {
            let pod = sfu_pod(&validate(pool).unwrap());
            let sfu = pod.spec.unwrap().containers.into_iter().find(|c| c.name == "sfu").unwrap();
            sfu.env.unwrap().into_iter().filter(|e| e.name == pod_env::WORKER_THREADS).collect::<Vec<_>>()
        };
        let mut own = pool();
        let sfu = own.spec.template.spec.as_mut().unwrap().containers.iter_mut().find(|c| c.name == "sfu").unwrap();
        sfu.env.get_or_insert_with(Default::default).push(value_env(pod_env::WORKER_THREADS, 1));
        assert_eq!(threads(&own).len(), 1);
        assert_eq!(threads(&own)[0].value.as_deref(), Some("1"), "the template's own setting is kept");
        let mut none = pool();
        let sfu = none.spec.template.spec.as_mut().unwrap().containers.iter_mut().find(|c| c.name == "sfu").unwrap();
        sfu.resources = None;
        assert!(threads(&none).is_empty(), "no CPU request: the SFU sizes itself");
    }

    #[test]
    fn the_grace_period_follows_the_drain_timeout_unless_the_template_sets_one() {
        let grace_and_env = |pool: &SfuPool| {
            let spec = sfu_pod(&validate(pool).unwrap()).spec.unwrap();
            let sfu = spec.containers.iter().find(|c| c.name == SFU_CONTAINER).unwrap();
            let env: Vec<_> = sfu
                .env
                .iter()
                .flatten()
                .filter(|e| e.name == DRAIN_TIMEOUT_ENV)
                .filter_map(|e| e.value.clone())
                .collect();
            (spec.termination_grace_period_seconds, env)
        };
        let mut pool = pool();
        pool.spec.drain.timeout = "1h30m".parse().unwrap();
        assert_eq!(grace_and_env(&pool), (Some(5400 + TERMINATION_GRACE_MARGIN_SECONDS), vec!["5400".to_owned()]));
        pool.spec.drain.timeout = "1500ms".parse().unwrap();
        assert_eq!(
            grace_and_env(&pool),
            (Some(2 + TERMINATION_GRACE_MARGIN_SECONDS), vec!["2".to_owned()]),
            "rounded up"
        );
        pool.spec.drain.timeout = "0".parse().unwrap();
        assert_eq!(grace_and_env(&pool).0, Some(TERMINATION_GRACE_MARGIN_SECONDS));

        let mut own = self::pool();
        let spec = own.spec.template.spec.as_mut().unwrap();
        spec.termination_grace_period_seconds = Some(45);
        let sfu = spec.containers.iter_mut().find(|c| c.name == SFU_CONTAINER).unwrap();
        sfu.env.get_or_insert_with(Default::default).push(value_env(DRAIN_TIMEOUT_ENV, 40));
        assert_eq!(grace_and_env(&own), (Some(45), vec!["40".to_owned()]), "the template's own values are kept");
        let before = template_hash(&own);
        own.spec.drain.timeout = "10m".parse().unwrap();
        assert_eq!(template_hash(&own), before, "a new drain timeout does not roll the pool");
    }

    #[test]
    fn a_template_change_changes_the_hash_and_status_does_not() {
        let pool = pool();
        let before = template_hash(&pool);
        let mut changed = pool.clone();
        changed.spec.template.spec.as_mut().unwrap().containers[0].image = Some("switchboard/sfu-pod:0.2.0".into());
        assert_ne!(template_hash(&changed), before);
        let mut scaled = pool.clone();
        scaled.spec.replicas = Some(40);
        scaled.status = Some(Default::default());
        assert_eq!(template_hash(&scaled), before, "scaling is not a rollout");
    }

    #[test]
    fn invalid_pools_are_explained() {
        let mut pool = pool();
        pool.spec.template.spec.as_mut().unwrap().containers[0].name = "media".into();
        assert!(validate(&pool).err().unwrap().contains("container named sfu"));
        let mut pool = self::pool();
        pool.spec.media.udp_port_range = Some(switchboard_crds::sfu_pool::PortRange { min: 7000, max: 9000 });
        assert!(validate(&pool).err().unwrap().contains("at most"));
    }

    #[test]
    fn sfus_get_the_credential_from_the_namespaces_secret_whatever_the_template_says() {
        let mut pool = pool();
        let sfu = pool.spec.template.spec.as_mut().unwrap().containers.iter_mut().find(|c| c.name == "sfu").unwrap();
        sfu.env.get_or_insert_with(Default::default).push(value_env(API_TOKEN_ENV, "chosen-by-the-template"));
        let pod = sfu_pod(&validate(&pool).unwrap());
        let sfu = pod.spec.unwrap().containers.into_iter().find(|c| c.name == "sfu").unwrap();
        let tokens: Vec<_> = sfu.env.unwrap().into_iter().filter(|e| e.name == API_TOKEN_ENV).collect();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].value, None, "never a literal");
        let r = tokens[0].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str(), r.optional), (API_SECRET, API_SECRET_KEY, Some(false)));
    }

    #[test]
    fn the_credential_secret_is_shared_by_the_pools_of_a_namespace() {
        let pool = pool();
        let v = validate(&pool).unwrap();
        let named = |name: &str, uid: &str, namespace: &str| {
            let mut p = self::pool();
            p.metadata.name = Some(name.into());
            p.metadata.uid = Some(uid.into());
            p.metadata.namespace = Some(namespace.into());
            p
        };
        let ns = v.namespace.clone();
        let mut going = named("going", "uid-4", &ns);
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH));
        let cache = [named("apac", "uid-2", &ns), pool.clone(), named("elsewhere", "uid-3", "other"), going];
        let owners = api_secret_owners(&v, &cache);
        let names: Vec<&str> = owners.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["apac", "eu-west"], "the namespace's live pools, once each");
        assert!(owners.iter().all(|o| o.controller.is_none() && o.kind == "SfuPool"), "owners among others");

        let secret = api_secret(&v, "00ff", vec![api_secret_owner(&v.owner)]);
        assert_eq!(secret.metadata.name.as_deref(), Some(API_SECRET));
        assert_eq!(secret.data.as_ref().unwrap()[API_SECRET_KEY].0, b"00ff");
        let patch = api_secret_owner_patch(&secret, &owners).expect("apac is missing");
        assert_eq!(patch["metadata"]["ownerReferences"].as_array().unwrap().len(), 1);
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "uid-2");
        assert!(patch.get("data").is_none(), "the patch never touches the credential");
        let complete = api_secret(&v, "00ff", owners.clone());
        assert_eq!(api_secret_owner_patch(&complete, &owners), None);
    }

    #[test]
    fn the_network_policy_opens_the_api_to_callers_and_media_to_everyone() {
        let pool = pool();
        let v = validate(&pool).unwrap();
        let np = serde_json::to_value(network_policy(&v)).unwrap();
        assert_eq!(np["metadata"]["name"], "eu-west-sfu");
        assert_eq!(np["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let spec = &np["spec"];
        assert_eq!(spec["podSelector"]["matchLabels"][POOL_LABEL], "eu-west");
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        let api = &spec["ingress"][0];
        assert_eq!(api["ports"], json!([{"protocol": "TCP", "port": API_PORT}]));
        let components: Vec<_> = api["from"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["podSelector"]["matchLabels"][COMPONENT_LABEL].as_str().unwrap())
            .collect();
        assert_eq!(components, ["signaling", "recorder", "sfu"]);
        assert_eq!(api["from"][2]["podSelector"]["matchLabels"][POOL_LABEL], "eu-west", "the pool's own SFUs only");
        let media = &spec["ingress"][1];
        assert!(media.get("from").is_none(), "media from anywhere");
        let (min, max) = v.udp_ports;
        assert_eq!(media["ports"], json!([{"protocol": "UDP", "port": min, "endPort": max}]));
    }

    #[test]
    fn the_budget_covers_busy_pods_only() {
        let pool = pool();
        let pdb = disruption_budget(&validate(&pool).unwrap());
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(spec.selector.unwrap().match_labels.unwrap()[BUSY_LABEL], "true");
    }
}
