//! Simulated (kwok) nodes owned by a test, so that faults injected into them do
//! not disturb other tests running in parallel on the shared nodes.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use crate::{FIELD_MANAGER, await_condition};

/// Annotation by which kwok picks the nodes it simulates.
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// Label that puts a test's own nodes in a group its pools select.
pub const GROUP_LABEL: &str = "switchboard.dev/e2e-group";

/// Creates a kwok node `name` in `zone` and waits until it is Ready.
pub async fn create_node(client: &Client, name: &str, region: &str, zone: &str) -> Node {
    create_node_with(client, name, region, zone, json!({}), 110).await
}

/// Creates a kwok node labelled into `group`, with room for `max_pods` pods, and
/// tainted so that only pods tolerating the group (see [`group_toleration`]) land
/// there: other tests' pods never do, even when a failed test leaves it behind.
pub async fn create_group_node(client: &Client, name: &str, group: &str, max_pods: u32) -> Node {
    let node = create_node_with(client, name, "eu-west-1", "eu-west-1a", json!({GROUP_LABEL: group}), max_pods).await;
    taint_node_with(client, name, GROUP_LABEL, Some(group)).await;
    node
}

/// The toleration of a group's taint, for a pod template.
pub fn group_toleration(group: &str) -> serde_json::Value {
    json!({"key": GROUP_LABEL, "operator": "Equal", "value": group, "effect": "NoSchedule"})
}

async fn create_node_with(
    client: &Client,
    name: &str,
    region: &str,
    zone: &str,
    labels: serde_json::Value,
    max_pods: u32,
) -> Node {
    let api: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "type": "kwok",
                "topology.kubernetes.io/region": region,
                "topology.kubernetes.io/zone": zone,
            }
        },
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": max_pods.to_string()},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": max_pods.to_string()}
        }
    });
    let mut node = node;
    for (k, v) in labels.as_object().expect("labels") {
        node["metadata"]["labels"][k] = v.clone();
    }
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&node)).await.expect("create kwok node");
    await_condition(&api, name, Duration::from_secs(30), is_node_ready(true)).await
}

/// A condition that holds when the node's Ready condition is (not) True.
pub fn is_node_ready(ready: bool) -> impl Fn(Option<&Node>) -> bool {
    move |node: Option<&Node>| {
        let status = node
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.as_str());
        (status == Some("True")) == ready && node.is_some()
    }
}

/// Makes a node NotReady the way a dead kubelet does: kwok stops simulating it
/// (so its heartbeat stops) and its Ready condition turns False.
pub async fn make_node_not_ready(client: &Client, name: &str) -> Node {
    let api: Api<Node> = Api::all(client.clone());
    // Take the node away from kwok first, or kwok would set it Ready again.
    let unmanage = json!({"metadata": {"annotations": {KWOK_ANNOTATION: null}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&unmanage)).await.expect("unmanage node");
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let status = json!({"status": {"conditions": [{
        "type": "Ready", "status": "False", "reason": "KubeletNotReady",
        "message": "switchboard e2e: simulated node failure",
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&status)).await.expect("set Ready=False");
    await_condition(&api, name, Duration::from_secs(30), is_node_ready(false)).await
}

/// Brings a node back the way a recovered kubelet does: Ready again, and kwok
/// simulating it once more.
pub async fn make_node_ready(client: &Client, name: &str) -> Node {
    let api: Api<Node> = Api::all(client.clone());
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    let status = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "switchboard e2e: node recovered",
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&status)).await.expect("set Ready=True");
    let manage = json!({"metadata": {"annotations": {KWOK_ANNOTATION: "fake"}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&manage)).await.expect("manage node again");
    await_condition(&api, name, Duration::from_secs(30), is_node_ready(true)).await
}

/// Taints a node NoSchedule with `key`, so that no new pod lands there.
pub async fn taint_node(client: &Client, name: &str, key: &str) {
    taint_node_with(client, name, key, None).await;
}

/// Adds a NoSchedule taint to the node's own (read, then replaced with its resourceVersion).
async fn taint_node_with(client: &Client, name: &str, key: &str, value: Option<&str>) {
    let api: Api<Node> = Api::all(client.clone());
    for _ in 0..10 {
        let mut node = api.get(name).await.expect("read node");
        let taints = node.spec.get_or_insert_with(Default::default).taints.get_or_insert_with(Vec::new);
        taints.push(k8s_openapi::api::core::v1::Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        match api.replace(name, &Default::default(), &node).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => panic!("taint node {name}: {e}"),
        }
    }
    panic!("taint node {name}: kept conflicting");
}

/// Deletes a node a test created.
pub async fn delete_node(client: &Client, name: &str) {
    let api: Api<Node> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
}
