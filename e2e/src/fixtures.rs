//! Objects and waits the e2e tests share.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use switchboard_crds::SfuPool;

use crate::operator::{OperatorHandle, operator_identity, start_operator};
use crate::{FIELD_MANAGER, TestNamespace, client, install_crds, wait_for};

const TIMEOUT: Duration = Duration::from_secs(60);

/// An SfuPool of 100 participants per pod, with `autoscaling` and top-level `extra` spec fields.
pub fn pool(name: &str, autoscaling: Value, extra: Value) -> Value {
    let mut spec = json!({
        "autoscaling": autoscaling,
        "capacity": {"participantsPerPod": 100},
        "remediation": {"heartbeatTimeout": "4s"},
        "drain": {"timeout": "10m"},
        "template": {"spec": {"containers": [{
            "name": "sfu", "image": "switchboard-sfu:test",
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
        }]}}
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool", "metadata": {"name": name}, "spec": spec})
}

pub async fn apply(api: &Api<SfuPool>, obj: &Value) -> SfuPool {
    let name = obj["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await.expect("pool accepted")
}

/// The Events regarding `name`.
async fn events_of(admin: &Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(admin.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

pub async fn event_reasons(admin: &Client, ns: &str, name: &str) -> Vec<String> {
    events_of(admin, ns, name).await.into_iter().filter_map(|e| e.reason).collect()
}

/// The notes of `name`'s Events of `reason`.
pub async fn event_notes(admin: &Client, ns: &str, name: &str, reason: &str) -> Vec<String> {
    let events = events_of(admin, ns, name).await;
    events.into_iter().filter(|e| e.reason.as_deref() == Some(reason)).filter_map(|e| e.note).collect()
}

pub async fn await_events(admin: &Client, ns: &str, name: &str, reasons: &[&str]) {
    wait_for(&format!("events {reasons:?} on {name}"), TIMEOUT, || async {
        let have = event_reasons(admin, ns, name).await;
        reasons.iter().all(|r| have.iter().any(|h| h == r))
    })
    .await;
}

/// A test's admin client, its namespace, and an operator running in it under the repo's RBAC.
pub struct Setup {
    pub admin: Client,
    pub ns: TestNamespace,
    pub operator: OperatorHandle,
}

pub async fn setup(prefix: &str) -> Setup {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, prefix).await;
    let identity = operator_identity(&admin, &ns.name).await;
    let operator = start_operator(identity, &ns.name, "operator-a", Duration::from_secs(15));
    Setup { admin, ns, operator }
}
