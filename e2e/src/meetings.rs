//! Meetings in e2e tests: building, creating and waiting on them, and reading
//! the seats SFU pods' ledgers hold.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use switchboard_crds::meeting::MeetingPhase;
use switchboard_crds::{Meeting, SfuPool};

use crate::eventually;

const TIMEOUT: Duration = Duration::from_secs(60);
/// The pod annotation holding its placement ledger.
pub const LEDGER: &str = "switchboard.dev/placements";

pub fn meeting(name: &str, expected: i32, extra: Value) -> Value {
    let mut spec =
        json!({"title": format!("meeting {name}"), "host": "user-1", "participants": {"expected": expected}});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": name}, "spec": spec})
}

pub async fn create(api: &Api<Meeting>, obj: &Value) -> Meeting {
    let m: Meeting = serde_json::from_value(obj.clone()).unwrap();
    api.create(&PostParams::default(), &m).await.expect("meeting accepted")
}

pub fn phase(m: &Meeting) -> Option<MeetingPhase> {
    m.status.as_ref().and_then(|s| s.phase)
}

pub fn condition<'a>(m: &'a Meeting, type_: &str) -> Option<&'a switchboard_crds::common::Condition> {
    m.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

pub async fn await_meeting(
    api: &Api<Meeting>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Meeting) -> bool,
) -> Meeting {
    eventually(&format!("{name}: {what}"), timeout, || async {
        let m = api.get(name).await.ok()?;
        check(&m).then_some(m)
    })
    .await
}

/// Seats per pod from the pods' ledgers.
pub async fn ledgers(admin: &Client, ns: &str, pool: &str) -> BTreeMap<String, BTreeMap<String, u64>> {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let list = pods.list(&ListParams::default().labels(&format!("switchboard.dev/pool={pool}"))).await.unwrap();
    list.items
        .iter()
        .map(|p| {
            let ledger: BTreeMap<String, Value> =
                p.annotations().get(LEDGER).map(|raw| serde_json::from_str(raw).unwrap()).unwrap_or_default();
            let seats = ledger.into_iter().map(|(m, v)| (m, v["seats"].as_u64().unwrap())).collect();
            (p.name_any(), seats)
        })
        .collect()
}

pub async fn await_pool_ready(admin: &Client, ns: &str, name: &str, ready: i32) -> SfuPool {
    let api: Api<SfuPool> = Api::namespaced(admin.clone(), ns);
    eventually(&format!("{name}: {ready} Ready"), TIMEOUT, || async {
        let pool = api.get(name).await.ok()?;
        (pool.status.as_ref()?.ready_replicas >= ready).then_some(pool)
    })
    .await
}
