//! Who may call an SFU's internal API (issue #26), as the operator sets it up on the
//! real control plane (kwok nodes, the operator under the chart's RBAC): the
//! namespace's credential Secret, made once and shared by its pools, reaches the SFU
//! pods, the signaling Deployment and the recorder Job by reference; each pool's
//! NetworkPolicy admits only those callers to the API port. Here (kwok pods) the
//! policy is checked as an object, with its selectors matched against the pods it
//! names; `real_pods.rs` tries it on real pods, where the nodes enforce it, and the
//! credential itself is tried end to end in `sfu-pod/tests/access.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchboard_crds::{Meeting, RecordingJob, SfuPool, SignalingPool};
use switchboard_e2e::fixtures::{Setup, apply, pool, setup};
use switchboard_e2e::operator::operator_identity;
use switchboard_e2e::*;

const TIMEOUT: Duration = Duration::from_secs(60);
const SECRET: &str = "switchboard-sfu-api";
const TOKEN_ENV: &str = "SWITCHBOARD_SFU_API_TOKEN";

async fn the_secret(secrets: &Api<Secret>, what: &str, check: impl Fn(&Secret) -> bool) -> Secret {
    eventually(what, TIMEOUT, || async { secrets.get_opt(SECRET).await.ok().flatten().filter(&check) }).await
}

fn token_of(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().expect("data")["token"].0.clone()).expect("text")
}

fn owners(secret: &Secret) -> Vec<String> {
    let mut names: Vec<String> = secret.owner_references().iter().map(|o| o.name.clone()).collect();
    names.sort();
    names
}

/// The container's credential variable: from the Secret, never a literal.
fn takes_the_credential(c: &Container) {
    let env: Vec<_> = c.env.iter().flatten().filter(|e| e.name == TOKEN_ENV).collect();
    assert_eq!(env.len(), 1, "{}: {TOKEN_ENV} once", c.name);
    assert_eq!(env[0].value, None, "{}: never a literal", c.name);
    let r = env[0].value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("from a Secret");
    assert_eq!((r.name.as_str(), r.key.as_str(), r.optional), (SECRET, "token", Some(false)), "{}", c.name);
}

/// Whether `labels` carry every label of `selector` (a matchLabels selector).
fn selects(selector: &Option<BTreeMap<String, String>>, labels: &BTreeMap<String, String>) -> bool {
    selector.as_ref().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

async fn live_pods(client: &Client, ns: &str, pool: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default().labels(&format!("switchboard.dev/pool={pool}"))).await.unwrap();
    list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sfu_api_credential_reaches_every_caller_and_the_policy_admits_only_them() {
    let Setup { admin, ns, operator } = setup("sfu-api").await;
    let n = &ns.name;
    let pools: Api<SfuPool> = ns.api();
    let secrets: Api<Secret> = ns.api();
    apply(&pools, &pool("fleet", json!({"minReplicas": 2, "maxReplicas": 4}), json!({}))).await;

    // The credential: 32 random bytes as hex, owned (not controlled) by the pool.
    let secret = the_secret(&secrets, "the credential Secret", |_| true).await;
    let token = token_of(&secret);
    assert_eq!(token.len(), 64, "32 bytes in hex");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(owners(&secret), ["fleet"]);
    assert_eq!(secret.owner_references()[0].controller, None, "shared by the namespace's pools");

    // Every SFU pod takes it from the Secret.
    let sfus = eventually("two SFU pods", TIMEOUT, || async {
        let pods = live_pods(&admin, n, "fleet").await;
        (pods.len() == 2).then_some(pods)
    })
    .await;
    for pod in &sfus {
        let spec = pod.spec.as_ref().unwrap();
        takes_the_credential(spec.containers.iter().find(|c| c.name == "sfu").unwrap());
    }

    // A second pool shares the Secret: one more owner, the same credential.
    apply(&pools, &pool("edge", json!({"minReplicas": 1, "maxReplicas": 1}), json!({}))).await;
    let shared = the_secret(&secrets, "the second pool among the owners", |s| owners(s).len() == 2).await;
    assert_eq!(owners(&shared), ["edge", "fleet"]);
    assert_eq!(token_of(&shared), token, "never rotated by a reconcile");
    // A reconcile of a changed pool applies its children again and keeps the credential.
    apply(&pools, &pool("fleet", json!({"minReplicas": 2, "maxReplicas": 5}), json!({}))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(token_of(&secrets.get(SECRET).await.unwrap()), token, "kept across reconciles");

    // Signaling's Deployment and the recorder's Job take it from the Secret too.
    let signaling: Api<SignalingPool> = ns.api();
    let sp = json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool", "metadata": {"name": "main"},
        "spec": {
            "publicUrl": "https://meet.example.com",
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
            "auth": {"jwtSecretRef": {"name": "signaling-jwt", "key": "key"}},
        },
    });
    signaling.patch("main", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&sp)).await.unwrap();
    let deployments: Api<Deployment> = ns.api();
    let deployment = eventually("the signaling Deployment", TIMEOUT, || async {
        deployments.get_opt("main-signaling").await.ok().flatten()
    })
    .await;
    let signaling_pod = deployment.spec.unwrap().template;
    takes_the_credential(&signaling_pod.spec.as_ref().unwrap().containers[0]);

    let meetings: Api<Meeting> = ns.api();
    let m: Meeting = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": "standup"},
        "spec": {"title": "standup", "host": "alice", "participants": {"expected": 4}},
    }))
    .unwrap();
    meetings.create(&PostParams::default(), &m).await.unwrap();
    let recordings: Api<RecordingJob> = ns.api();
    let rj: RecordingJob = serde_json::from_value(json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "RecordingJob", "metadata": {"name": "standup-rec"},
        "spec": {"meetingRef": {"name": "standup"}, "storage": {"s3": {"bucket": "recs", "credentialsSecretRef": {"name": "s3"}}}},
    }))
    .unwrap();
    recordings.create(&PostParams::default(), &rj).await.unwrap();
    let jobs: Api<Job> = ns.api();
    let job =
        eventually("the recorder Job", TIMEOUT, || async { jobs.get_opt("standup-rec-rec").await.ok().flatten() })
            .await;
    let recorder_pod = job.spec.unwrap().template;
    takes_the_credential(&recorder_pod.spec.as_ref().unwrap().containers[0]);

    // Each pool's NetworkPolicy: its pods; the API port from signaling, recorders and
    // the pool's own SFUs only; the media ports from anywhere.
    let policies: Api<NetworkPolicy> = ns.api();
    let policy =
        eventually("fleet's NetworkPolicy", TIMEOUT, || async { policies.get_opt("fleet-sfu").await.ok().flatten() })
            .await;
    assert_eq!(policy.owner_references()[0].name, "fleet");
    let spec = policy.spec.unwrap();
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
    let covered = spec.pod_selector.as_ref().and_then(|s| s.match_labels.clone());
    for pod in &sfus {
        assert!(selects(&covered, pod.labels()), "the policy covers {}", pod.name_any());
    }
    let edge_pods = eventually("edge's pod", TIMEOUT, || async {
        let pods = live_pods(&admin, n, "edge").await;
        (!pods.is_empty()).then_some(pods)
    })
    .await;
    assert!(!selects(&covered, edge_pods[0].labels()), "another pool has its own policy");
    assert!(policies.get_opt("edge-sfu").await.unwrap().is_some());
    let ingress = spec.ingress.unwrap();
    assert_eq!(ingress.len(), 2);
    let api = &ingress[0];
    let ports = serde_json::to_value(&api.ports).unwrap();
    assert_eq!(ports, json!([{"protocol": "TCP", "port": 7880}]));
    let from = api.from.as_ref().unwrap();
    assert!(
        from.iter().all(|peer| peer.namespace_selector.is_none() && peer.ip_block.is_none()),
        "this namespace's pods"
    );
    let admitted = |labels: &BTreeMap<String, String>| {
        from.iter().any(|peer| selects(&peer.pod_selector.as_ref().and_then(|s| s.match_labels.clone()), labels))
    };
    let labels = |t: &k8s_openapi::api::core::v1::PodTemplateSpec| {
        t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
    };
    assert!(admitted(&labels(&signaling_pod)), "signaling pods reach the API");
    assert!(admitted(&labels(&recorder_pod)), "recorder pods reach the API");
    assert!(sfus.iter().all(|p| admitted(p.labels())), "the pool's SFUs reach each other (relays)");
    assert!(!admitted(edge_pods[0].labels()), "another pool's SFUs do not");
    let stranger: BTreeMap<String, String> = [("app".to_owned(), "curious".to_owned())].into();
    assert!(!admitted(&stranger), "nor any other pod");
    let media = &ingress[1];
    assert!(media.from.is_none(), "media from anywhere");
    assert_eq!(
        serde_json::to_value(&media.ports).unwrap(),
        json!([{"protocol": "UDP", "port": 7882}]),
        "the pool's media port"
    );

    // The operator reads this Secret and no other.
    let other: Secret = serde_json::from_value(json!({"metadata": {"name": "s3"}, "stringData": {"k": "v"}})).unwrap();
    secrets.create(&PostParams::default(), &other).await.unwrap();
    let identity = operator_identity(&admin, n).await;
    let as_operator: Api<Secret> = Api::namespaced(identity, n);
    assert!(as_operator.get(SECRET).await.is_ok());
    assert_eq!(api_error(as_operator.get("s3").await).0, 403, "another Secret");

    // Rotation: a deleted Secret is made again, with a new credential, when a pool
    // next applies its children (here: a spec change).
    secrets.delete(SECRET, &DeleteParams::default()).await.unwrap();
    apply(&pools, &pool("fleet", json!({"minReplicas": 2, "maxReplicas": 6}), json!({}))).await;
    let renewed = the_secret(&secrets, "a new credential", |s| token_of(s) != token).await;
    assert_eq!(owners(&renewed), ["edge", "fleet"], "owned by every pool of the namespace at once");

    // Garbage: the Secret goes with the last pool that owns it.
    pools.delete("edge", &DeleteParams::default()).await.unwrap();
    pools.delete("fleet", &DeleteParams::default()).await.unwrap();
    wait_for("the Secret collected with its pools", TIMEOUT, || async {
        secrets.get_opt(SECRET).await.ok().flatten().is_none()
    })
    .await;

    // kwok leaves recorder pods to the job runner, which this test does not run: the
    // recording and its pod go by hand, or the namespace would wait for them.
    recordings.delete("standup-rec", &DeleteParams::default()).await.unwrap();
    let pods: Api<Pod> = ns.api();
    let recorders = ListParams::default().labels("app.kubernetes.io/component=recorder");
    wait_for("the recorder pod gone", TIMEOUT, || async {
        let left = pods.list(&recorders).await.map(|l| l.items).unwrap_or_default();
        for pod in &left {
            let _ = pods
                .delete(&pod.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
                .await;
        }
        left.is_empty()
    })
    .await;

    operator.stop().await.expect("graceful stop");
    ns.delete().await;
}
