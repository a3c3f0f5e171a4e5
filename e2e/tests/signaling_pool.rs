//! The SignalingPool controller against the real control plane: the Deployment
//! (its pods run on kwok nodes), Service, PDB and HPA, status, and the signaling
//! ServiceAccount's permissions.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use switchboard_crds::{Meeting, SignalingPool};
use switchboard_e2e::fixtures::{await_events, setup};
use switchboard_e2e::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn signaling_pool(min: i32, max: i32) -> serde_json::Value {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool",
        "metadata": {"name": "main"},
        "spec": {
            "publicUrl": "https://meet.example.com",
            "autoscaling": {"minReplicas": min, "maxReplicas": max, "targetConnectionsPerPod": 3000},
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}},
            "auth": {"jwtSecretRef": {"name": "signaling-jwt", "key": "key"}},
            "turn": {
                "urls": ["turn:turn.example.com:3478?transport=udp"],
                "sharedSecretRef": {"name": "turn", "key": "secret"},
                "credentialTtl": "10m",
            },
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_pool_runs_a_deployment_with_its_service_budget_and_autoscaler() {
    let s = setup("signaling-pool").await;
    let ns = &s.ns.name;
    let pools: Api<SignalingPool> = s.ns.api();
    pools.patch("main", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&signaling_pool(2, 6))).await.unwrap();

    let deployments: Api<Deployment> = s.ns.api();
    let d = eventually("the signaling Deployment", TIMEOUT, || async {
        deployments.get_opt("main-signaling").await.ok().flatten()
    })
    .await;
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2), "created at minReplicas");
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("main-signaling"));
    let env = pod.containers[0].env.clone().unwrap();
    let from_secret = |name: &str| {
        let e = env.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} set"));
        let r = e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).expect("from a Secret");
        (r.name.clone(), r.key.clone())
    };
    assert_eq!(from_secret("SIGNALING_REDIS_URL"), ("redis".into(), "url".into()));
    assert_eq!(from_secret("SIGNALING_JWT_KEY"), ("signaling-jwt".into(), "key".into()));
    assert_eq!(from_secret("SIGNALING_TURN_SECRET"), ("turn".into(), "secret".into()));

    // The controller applies the Service, PDB and HPA after the Deployment: wait for each.
    let svc: Api<Service> = s.ns.api();
    let service =
        eventually("the signaling Service", TIMEOUT, || async { svc.get_opt("main-signaling").await.ok().flatten() })
            .await;
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 80);
    let pdb: Api<PodDisruptionBudget> = s.ns.api();
    let budget =
        eventually("the signaling PDB", TIMEOUT, || async { pdb.get_opt("main-signaling").await.ok().flatten() }).await;
    assert!(budget.spec.unwrap().max_unavailable.is_some());
    let hpas: Api<HorizontalPodAutoscaler> = s.ns.api();
    let hpa =
        eventually("the signaling HPA", TIMEOUT, || async { hpas.get_opt("main-signaling").await.ok().flatten() })
            .await
            .spec;
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 6));
    let metrics = hpa.metrics.unwrap();
    let cpu = metrics[0].resource.as_ref().unwrap();
    assert_eq!((cpu.name.as_str(), cpu.target.average_utilization), ("cpu", Some(70)));
    assert_eq!(metrics[1].pods.as_ref().unwrap().metric.name, "switchboard_signaling_connections");
    assert_eq!(
        metrics[1].pods.as_ref().unwrap().target.average_value.as_ref().unwrap().0,
        "3k",
        "the API server normalizes the quantity"
    );

    // kwok runs the pods; the pool reports them.
    let pool = eventually("2 ready replicas in status", TIMEOUT, || async {
        let p = pools.get("main").await.ok()?;
        let st = p.status.as_ref()?;
        (st.ready_replicas == 2 && st.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True"))
            .then_some(p)
    })
    .await;
    assert_eq!(pool.status.unwrap().observed_generation, pool.metadata.generation);
    await_events(&s.admin, ns, "main", &["Created"]).await;

    // A spec change reaches the HPA; the Deployment's replicas stay the HPA's.
    deployments
        .patch("main-signaling", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": 4}})))
        .await
        .unwrap();
    pools.patch("main", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&signaling_pool(3, 8))).await.unwrap();
    wait_for("HPA min 3 max 8", TIMEOUT, || async {
        hpas.get("main-signaling")
            .await
            .ok()
            .map(|h| h.spec)
            .is_some_and(|s| s.min_replicas == Some(3) && s.max_replicas == 8)
    })
    .await;
    assert_eq!(
        deployments.get("main-signaling").await.unwrap().spec.unwrap().replicas,
        Some(4),
        "the operator does not fight the HPA"
    );

    // External mode: KEDA or the user's HPA scales the Deployment; the operator's HPA goes
    // (two autoscalers would fight) and the replicas stay as they are.
    let mut external = signaling_pool(3, 8);
    external["spec"]["autoscaling"]["mode"] = json!("External");
    pools.patch("main", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&external)).await.unwrap();
    wait_for("the operator's HPA deleted in External mode", TIMEOUT, || async {
        hpas.get_opt("main-signaling").await.ok().flatten().is_none()
    })
    .await;
    assert_eq!(deployments.get("main-signaling").await.unwrap().spec.unwrap().replicas, Some(4));
    pools.patch("main", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&signaling_pool(3, 8))).await.unwrap();
    eventually("the HPA back in Builtin mode", TIMEOUT, || async {
        hpas.get_opt("main-signaling").await.ok().flatten()
    })
    .await;

    // The API server refuses min > max, naming the field.
    let (code, message) =
        api_error(pools.patch("main", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&signaling_pool(9, 2))).await);
    assert_eq!(code, 422);
    assert!(message.contains("minReplicas"), "{message}");

    // The signaling ServiceAccount may read and create Meetings and nothing more.
    let sas: Api<ServiceAccount> = s.ns.api();
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 600}})).unwrap();
    let token = sas
        .create_token_request("main-signaling", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let signaling = client_with_token(&token).await;
    let meetings: Api<Meeting> = Api::namespaced(signaling.clone(), ns);
    let m: Meeting = serde_json::from_value(
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": "adhoc"},
        "spec": {"title": "t", "host": "h", "participants": {"expected": 2}}}),
    )
    .unwrap();
    meetings.create(&PostParams::default(), &m).await.expect("signaling creates meetings");
    meetings.list(&Default::default()).await.expect("and lists them");
    assert_eq!(api_error(meetings.delete("adhoc", &DeleteParams::default()).await).0, 403, "but does not delete them");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(signaling.clone(), ns);
    assert_eq!(api_error(secrets.list(&Default::default()).await).0, 403, "nor read Secrets");

    // Placement: nodeSelector, tolerations and resources reach the pods; bad values
    // are refused naming the field; signaling itself may not move its own pods.
    let mut placed = signaling_pool(3, 8);
    placed["spec"]["nodeSelector"] = json!({"pool": "signaling"});
    placed["spec"]["tolerations"] = json!([{"key": "media", "operator": "Exists", "effect": "NoSchedule"}]);
    placed["spec"]["resources"] = json!({"requests": {"cpu": "100m", "memory": "64Mi"}});
    pools.patch("main", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&placed)).await.expect("placement accepted");
    wait_for("the Deployment carries the placement", TIMEOUT, || async {
        let pod = deployments.get("main-signaling").await.ok().and_then(|d| d.spec?.template.spec);
        pod.is_some_and(|p| {
            p.node_selector.is_some_and(|n| n.get("pool").map(String::as_str) == Some("signaling"))
                && p.tolerations.is_some_and(|t| t.iter().any(|t| t.key.as_deref() == Some("media")))
                && p.containers[0]
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.as_ref())
                    .is_some_and(|r| r.contains_key("cpu"))
        })
    })
    .await;
    for (bad, field) in [
        (json!([{"key": "media", "operator": "Exists", "value": "x"}]), "tolerations"),
        (json!([{"key": "media", "operator": "Sometimes"}]), "operator"),
        (json!([{"key": "media", "tolerationSeconds": 5, "effect": "NoSchedule"}]), "tolerationSeconds"),
    ] {
        let mut obj = placed.clone();
        obj["spec"]["tolerations"] = bad.clone();
        let (code, message) =
            api_error(pools.patch("main", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&obj)).await);
        assert_eq!(code, 422, "{bad} refused: {message}");
        assert!(message.contains(field), "{bad}: the message names {field}: {message}");
    }
    let own: Api<SignalingPool> = Api::namespaced(signaling, ns);
    let moved = json!({"spec": {"nodeSelector": {"pool": "elsewhere"}}});
    let (code, _) = api_error(own.patch("main", &PatchParams::default(), &Patch::Merge(&moved)).await);
    assert_eq!(code, 403, "the signaling ServiceAccount cannot change its pool's spec");
    s.operator.stop().await.unwrap();
    s.ns.delete().await;
}
