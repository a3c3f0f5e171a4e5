//! The SfuPool controller against the real control plane, with the operator
//! running under the repo's RBAC and SFU heartbeats simulated per pod.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchboard_crds::SfuPool;
use switchboard_e2e::fixtures::{Setup, apply, await_events, event_notes, pool, setup};
use switchboard_e2e::operator::{operator_identity, start_operator};
use switchboard_e2e::sfu_sim::SimulatedSfus;
use switchboard_e2e::*;

const TIMEOUT: Duration = Duration::from_secs(60);
const POOL_LABEL: &str = "switchboard.dev/pool";

async fn live_pods(client: &Client, ns: &str, pool: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default().labels(&format!("{POOL_LABEL}={pool}"))).await.unwrap();
    let mut pods: Vec<Pod> = list.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    pods.sort_by_key(|p| p.name_any());
    pods
}

fn has_condition(pool: &SfuPool, type_: &str, status: &str) -> bool {
    pool.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.status == status))
}

/// Waits until the pool reports `ready` Ready pods for its current generation and exactly `pods` live pods.
async fn await_ready(admin: &Client, ns: &str, name: &str, ready: i32, pods: usize) -> SfuPool {
    let api: Api<SfuPool> = Api::namespaced(admin.clone(), ns);
    eventually(&format!("{name}: {ready} Ready, {pods} pods"), TIMEOUT, || async {
        let pool = api.get(name).await.ok()?;
        let status = pool.status.as_ref()?;
        let current = status.observed_generation == pool.metadata.generation;
        let live = live_pods(admin, ns, name).await.len();
        (current && status.ready_replicas == ready && live == pods).then_some(pool)
    })
    .await
}

/// Asserts `check` stays true for `period` (polling), e.g. that nothing is deleted early.
async fn assert_holds<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + period;
    while tokio::time::Instant::now() < end {
        assert!(check().await, "{what} stopped holding");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pool_reaches_min_ready_pods_and_says_so() {
    let Setup { admin, ns, operator } = setup("pool-min").await;
    let pools: Api<SfuPool> = ns.api();
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "fleet", Duration::from_secs(1));
    apply(&pools, &pool("fleet", json!({"minReplicas": 3, "maxReplicas": 6}), json!({}))).await;

    let pool = await_ready(&admin, &ns.name, "fleet", 3, 3).await;
    assert!(has_condition(&pool, "Available", "True"), "{:?}", pool.status);
    assert!(has_condition(&pool, "ScalingLimited", "False"));
    let status = pool.status.clone().unwrap();
    assert_eq!(pool.spec.replicas, Some(3), "the built-in autoscaler wrote spec.replicas");
    assert_eq!(status.capacity.unwrap().participants, 300);
    assert_eq!(status.pods.len(), 3);
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/managed-by=switchboard,app.kubernetes.io/component=sfu,switchboard.dev/pool=fleet")
    );
    await_events(&admin, &ns.name, "fleet", &["PodsCreated", "Available", "ScaledUp"]).await;

    // The pods are built from the template, owned by the pool, idle and evictable.
    for pod in live_pods(&admin, &ns.name, "fleet").await {
        assert_eq!(pod.owner_references()[0].name, "fleet");
        assert_eq!(pod.annotations()["cluster-autoscaler.kubernetes.io/safe-to-evict"], "true");
        assert_eq!(pod.labels()["switchboard.dev/busy"], "false");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("fleet-sfu"));
        assert!(spec.node_name.unwrap().starts_with("kwok-"), "scheduled onto a kwok node");
    }
    // Children: headless Service, PDB over busy pods, and the SFU identity.
    let svc: Service = ns.api::<Service>().get("fleet-sfu").await.unwrap();
    assert_eq!(svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    let pdb: PodDisruptionBudget = ns.api::<PodDisruptionBudget>().get("fleet-sfu-busy").await.unwrap();
    assert_eq!(pdb.spec.unwrap().selector.unwrap().match_labels.unwrap()["switchboard.dev/busy"], "true");
    // The SFU's ServiceAccount (with a token bound to its pod, as the kubelet's is)
    // may renew its own Lease and nothing else.
    let pod = live_pods(&admin, &ns.name, "fleet").await.into_iter().next().expect("a pod");
    let pod_name = pod.name_any();
    let sfu = sa_client(&admin, &ns.name, "fleet-sfu", Some(&pod)).await;
    let beat = switchboard_heartbeat::Heartbeat::new(
        switchboard_heartbeat::SfuState::Ready,
        "http://127.0.0.1:7880",
        Default::default(),
    );
    let lease = beat.to_lease(&ns.name, &pod_name, "fleet", jiff::Timestamp::now(), Duration::from_secs(10));
    Api::<Lease>::namespaced(sfu.clone(), &ns.name)
        .patch(&pod_name, &PatchParams::apply("sfu").force(), &Patch::Apply(&lease))
        .await
        .expect("an SFU renews its Lease");
    let (code, _) = api_error(Api::<Pod>::namespaced(sfu, &ns.name).list(&ListParams::default()).await);
    assert_eq!(code, 403, "an SFU may not list pods");

    operator.stop().await.expect("graceful stop");
    ns.delete().await;
}

async fn sa_client(admin: &Client, ns: &str, sa: &str, bound_to: Option<&Pod>) -> Client {
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let bound =
        bound_to.map(|p| json!({"kind": "Pod", "apiVersion": "v1", "name": p.metadata.name, "uid": p.metadata.uid}));
    let request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 600, "boundObjectRef": bound}}))
            .unwrap();
    let token = sas.create_token_request(sa, &PostParams::default(), &request).await.unwrap().status.unwrap().token;
    client_with_token(token.as_deref().expect("token")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_scales_up_at_once_and_down_after_the_window_removing_only_empty_pods() {
    let Setup { admin, ns, operator } = setup("pool-load").await;
    let pools: Api<SfuPool> = ns.api();
    let sfus = SimulatedSfus::start(admin.clone(), &ns.name, "elastic", Duration::from_secs(1));
    let autoscaling =
        json!({"minReplicas": 2, "maxReplicas": 6, "buffer": {"participants": 50}, "scaleDownStabilization": "20s"});
    apply(&pools, &pool("elastic", autoscaling, json!({}))).await;
    await_ready(&admin, &ns.name, "elastic", 2, 2).await;

    // 200 participants + 50 buffer need 3 pods of 100.
    let first = live_pods(&admin, &ns.name, "elastic").await;
    for pod in &first {
        sfus.set_participants(&pod.name_any(), 100);
    }
    let scaled = await_condition(&pools, "elastic", Duration::from_secs(15), |p: Option<&SfuPool>| {
        p.is_some_and(|p| p.spec.replicas == Some(3))
    })
    .await;
    assert_eq!(scaled.spec.replicas, Some(3));
    await_ready(&admin, &ns.name, "elastic", 3, 3).await;
    await_events(&admin, &ns.name, "elastic", &["ScaledUp"]).await;

    // Load falls to 30 on one pod: one pod would do (min 2), but only after the window.
    let busy = first[0].name_any();
    for pod in live_pods(&admin, &ns.name, "elastic").await {
        sfus.set_participants(&pod.name_any(), if pod.name_any() == busy { 30 } else { 0 });
    }
    assert_holds("3 replicas inside the stabilisation window", Duration::from_secs(10), || async {
        pools.get("elastic").await.unwrap().spec.replicas == Some(3)
    })
    .await;
    await_condition(&pools, "elastic", Duration::from_secs(40), |p: Option<&SfuPool>| {
        p.is_some_and(|p| p.spec.replicas == Some(2))
    })
    .await;
    await_ready(&admin, &ns.name, "elastic", 2, 2).await;
    let remaining: Vec<String> = live_pods(&admin, &ns.name, "elastic").await.iter().map(|p| p.name_any()).collect();
    assert!(remaining.contains(&busy), "the busy pod was kept: {remaining:?}");
    await_events(&admin, &ns.name, "elastic", &["ScaledDown", "PodDeletedScaleDown"]).await;
    let busy_pod: Pod = ns.api::<Pod>().get(&busy).await.unwrap();
    assert_eq!(busy_pod.annotations()["cluster-autoscaler.kubernetes.io/safe-to-evict"], "false");
    assert_eq!(busy_pod.labels()["switchboard.dev/busy"], "true");
    operator.stop().await.unwrap();
    ns.delete().await;
}

/// Seats are not the only load: a few participants sending a lot fill pods by packet
/// rate (`capacity.packetsPerSecondPerPod`). The pool grows on the packet rate the SFUs
/// report, says so, and shrinks after the window once traffic stops, keeping busy pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_rate_scales_the_pool_while_seats_stay_low() {
    let Setup { admin, ns, operator } = setup("pool-pps").await;
    let pools: Api<SfuPool> = ns.api();
    let sfus = SimulatedSfus::start(admin.clone(), &ns.name, "busy", Duration::from_secs(1));
    let autoscaling = json!({"minReplicas": 2, "maxReplicas": 6, "scaleDownStabilization": "20s"});
    let capacity = json!({"capacity": {"participantsPerPod": 100, "packetsPerSecondPerPod": 10000}});
    apply(&pools, &pool("busy", autoscaling, capacity)).await;
    await_ready(&admin, &ns.name, "busy", 2, 2).await;

    // 10 participants (seats ask for 1 pod), 40,000 packets/s (4 pods).
    let first = live_pods(&admin, &ns.name, "busy").await;
    for pod in &first {
        sfus.set_participants(&pod.name_any(), 5);
        sfus.set_packet_rate(&pod.name_any(), 20_000);
    }
    let scaled = await_condition(&pools, "busy", Duration::from_secs(15), |p: Option<&SfuPool>| {
        p.is_some_and(|p| p.spec.replicas == Some(4))
    })
    .await;
    assert_eq!(scaled.spec.replicas, Some(4));
    let ready = await_ready(&admin, &ns.name, "busy", 4, 4).await;
    let status = ready.status.unwrap();
    assert_eq!(status.scale_signal, Some(switchboard_crds::sfu_pool::ScaleSignal::PacketRate));
    assert_eq!(status.allocated.unwrap().participants, 10);
    // The scale-up's Event says why, each scale-up its own (not folded into the first's).
    await_events(&admin, &ns.name, "busy", &["ScaledUp"]).await;
    let notes = event_notes(&admin, &ns.name, "busy", "ScaledUp").await;
    assert!(notes.iter().any(|n| n.contains("to 4 pods: packet rate")), "{notes:?}");

    // Traffic stops; seats stay: back to the minimum after the window, the busy pods kept.
    for pod in &first {
        sfus.set_packet_rate(&pod.name_any(), 0);
    }
    assert_holds("4 replicas inside the stabilisation window", Duration::from_secs(8), || async {
        pools.get("busy").await.unwrap().spec.replicas == Some(4)
    })
    .await;
    await_condition(&pools, "busy", Duration::from_secs(40), |p: Option<&SfuPool>| {
        p.is_some_and(|p| p.spec.replicas == Some(2))
    })
    .await;
    let back = await_ready(&admin, &ns.name, "busy", 2, 2).await;
    assert_eq!(back.status.unwrap().scale_signal, Some(switchboard_crds::sfu_pool::ScaleSignal::Participants));
    let mut remaining: Vec<String> = live_pods(&admin, &ns.name, "busy").await.iter().map(|p| p.name_any()).collect();
    let mut busy: Vec<String> = first.iter().map(|p| p.name_any()).collect();
    remaining.sort();
    busy.sort();
    assert_eq!(remaining, busy, "the pods with participants were kept");
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_whose_lease_expires_is_replaced() {
    let Setup { admin, ns, operator } = setup("pool-expire").await;
    let pools: Api<SfuPool> = ns.api();
    let sfus = SimulatedSfus::start(admin.clone(), &ns.name, "mortal", Duration::from_secs(1));
    apply(
        &pools,
        &pool(
            "mortal",
            json!({"minReplicas": 2, "maxReplicas": 4}),
            json!({"remediation": {"heartbeatTimeout": "3s"}}),
        ),
    )
    .await;
    await_ready(&admin, &ns.name, "mortal", 2, 2).await;
    let victim = live_pods(&admin, &ns.name, "mortal").await[0].name_any();
    sfus.silence(&victim);
    await_deleted(&ns.api::<Pod>(), &victim, TIMEOUT).await;
    let pool = await_ready(&admin, &ns.name, "mortal", 2, 2).await;
    let names: Vec<String> = live_pods(&admin, &ns.name, "mortal").await.iter().map(|p| p.name_any()).collect();
    assert!(!names.contains(&victim), "{names:?}");
    assert!(has_condition(&pool, "Available", "True"));
    await_events(&admin, &ns.name, "mortal", &["PodDeletedUnhealthy"]).await;
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_change_rolls_the_pool_without_deleting_busy_pods() {
    let Setup { admin, ns, operator } = setup("pool-roll").await;
    let pools: Api<SfuPool> = ns.api();
    let sfus = SimulatedSfus::start(admin.clone(), &ns.name, "rolling", Duration::from_secs(1));
    let autoscaling = json!({"minReplicas": 2, "maxReplicas": 4});
    apply(&pools, &pool("rolling", autoscaling.clone(), json!({}))).await;
    await_ready(&admin, &ns.name, "rolling", 2, 2).await;
    let old = live_pods(&admin, &ns.name, "rolling").await;
    let (busy, idle) = (old[0].name_any(), old[1].name_any());
    let old_hash = old[0].labels()["switchboard.dev/template-hash"].clone();
    sfus.set_participants(&busy, 5);
    wait_for("the busy pod to be marked busy", TIMEOUT, || async {
        ns.api::<Pod>().get(&busy).await.unwrap().labels().get("switchboard.dev/busy").map(String::as_str)
            == Some("true")
    })
    .await;

    let mut updated = pool("rolling", autoscaling, json!({}));
    updated["spec"]["template"]["spec"]["containers"][0]["image"] = json!("switchboard-sfu:test-2");
    apply(&pools, &updated).await;

    // Two new pods come up; the idle old pod goes; the busy one drains and stays.
    await_deleted(&ns.api::<Pod>(), &idle, TIMEOUT).await;
    let new_pods = eventually("two Ready pods of the new template", TIMEOUT, || async {
        let pods = live_pods(&admin, &ns.name, "rolling").await;
        let new: Vec<Pod> =
            pods.into_iter().filter(|p| p.labels()["switchboard.dev/template-hash"] != old_hash).collect();
        (new.len() == 2).then_some(new)
    })
    .await;
    for pod in &new_pods {
        let image = pod.spec.as_ref().unwrap().containers[0].image.clone();
        assert_eq!(image.as_deref(), Some("switchboard-sfu:test-2"));
    }
    wait_for("the busy old pod to drain", TIMEOUT, || async {
        ns.api::<Pod>().get(&busy).await.unwrap().annotations().contains_key("switchboard.dev/draining-since")
    })
    .await;
    assert_holds("the busy old pod lives while it has participants", Duration::from_secs(6), || async {
        ns.api::<Pod>().get_opt(&busy).await.unwrap().is_some_and(|p| p.metadata.deletion_timestamp.is_none())
    })
    .await;
    await_events(&admin, &ns.name, "rolling", &["PodDraining", "PodDeletedOutdated"]).await;

    // Its meetings end: now it goes.
    sfus.set_participants(&busy, 0);
    await_deleted(&ns.api::<Pod>(), &busy, TIMEOUT).await;
    await_ready(&admin, &ns.name, "rolling", 2, 2).await;
    await_condition(&pools, "rolling", TIMEOUT, |p: Option<&SfuPool>| {
        p.is_some_and(|p| {
            has_condition(p, "Progressing", "False") && p.status.as_ref().is_some_and(|s| s.draining_replicas == 0)
        })
    })
    .await;
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_mode_follows_kubectl_scale_and_keeps_busy_pods_until_drained() {
    let Setup { admin, ns, operator } = setup("pool-ext").await;
    let pools: Api<SfuPool> = ns.api();
    let sfus = SimulatedSfus::start(admin.clone(), &ns.name, "hpa", Duration::from_secs(1));
    apply(
        &pools,
        &pool("hpa", json!({"mode": "External", "minReplicas": 1, "maxReplicas": 5}), json!({"replicas": 3})),
    )
    .await;
    await_ready(&admin, &ns.name, "hpa", 3, 3).await;
    let pods = live_pods(&admin, &ns.name, "hpa").await;
    let busy: Vec<String> = pods[..2].iter().map(|p| p.name_any()).collect();
    for name in &busy {
        sfus.set_participants(name, 10);
    }
    wait_for("busy pods labelled", TIMEOUT, || async {
        let pods = live_pods(&admin, &ns.name, "hpa").await;
        pods.iter().filter(|p| p.labels().get("switchboard.dev/busy").map(String::as_str) == Some("true")).count() == 2
    })
    .await;

    kubectl_ok(&["scale", "sfupool/hpa", "--replicas=1", "-n", &ns.name]);
    // The idle pod goes at once; of the busy ones, one drains and stays.
    let drained = eventually("one busy pod draining", TIMEOUT, || async {
        let pods = live_pods(&admin, &ns.name, "hpa").await;
        let draining: Vec<String> = pods
            .iter()
            .filter(|p| p.annotations().contains_key("switchboard.dev/draining-since"))
            .map(|p| p.name_any())
            .collect();
        (pods.len() == 2 && draining.len() == 1).then(|| draining[0].clone())
    })
    .await;
    assert!(busy.contains(&drained));
    assert_holds("both busy pods survive the scale-down", Duration::from_secs(6), || async {
        live_pods(&admin, &ns.name, "hpa").await.len() == 2
    })
    .await;
    assert_eq!(
        pools.get("hpa").await.unwrap().spec.replicas,
        Some(1),
        "External mode leaves spec.replicas to the scaler"
    );
    sfus.set_participants(&drained, 0);
    await_deleted(&ns.api::<Pod>(), &drained, TIMEOUT).await;
    await_ready(&admin, &ns.name, "hpa", 1, 1).await;

    // A new External pool without spec.replicas: the operator writes the start value
    // (minReplicas), so the scale subresource that HPAs and KEDA read answers (an
    // absent field made it fail: "the spec replicas field does not exist").
    apply(&pools, &pool("fresh", json!({"mode": "External", "minReplicas": 2, "maxReplicas": 5}), json!({}))).await;
    wait_for("the start value in spec.replicas", TIMEOUT, || async {
        pools.get("fresh").await.is_ok_and(|p| p.spec.replicas == Some(2))
    })
    .await;
    let scale = kubectl_ok(&[
        "get",
        "--raw",
        &format!("/apis/switchboard.dev/v1alpha1/namespaces/{}/sfupools/fresh/scale", ns.name),
    ]);
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(scale["spec"]["replicas"], 2, "{scale}");
    operator.stop().await.unwrap();
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "pool-leader").await;
    let identity = operator_identity(&admin, &ns.name).await;
    let lease = Duration::from_secs(4);
    let a = start_operator(identity.clone(), &ns.name, "operator-a", lease);
    wait_for("operator-a to lead", TIMEOUT, || async { a.is_leader() }).await;
    let b = start_operator(identity, &ns.name, "operator-b", lease);

    let pools: Api<SfuPool> = ns.api();
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "ha", Duration::from_secs(1));
    apply(&pools, &pool("ha", json!({"minReplicas": 2, "maxReplicas": 6}), json!({}))).await;
    await_ready(&admin, &ns.name, "ha", 2, 2).await;
    assert!(a.reconciles() > 0);
    assert_eq!(b.reconciles(), 0, "the standby does not reconcile");
    assert!(!b.is_leader());

    let killed_at = tokio::time::Instant::now();
    a.kill();
    wait_for("operator-b to take over", Duration::from_secs(20), || async { b.is_leader() }).await;
    let handover = killed_at.elapsed();
    assert!(handover <= lease + Duration::from_secs(3), "handover took {handover:?} with a {lease:?} lease");
    let leases: Api<Lease> = ns.api();
    let leader = leases.get("switchboard-operator-leader").await.unwrap();
    assert_eq!(leader.spec.unwrap().holder_identity.as_deref(), Some("operator-b"));

    let patch = json!({"spec": {"autoscaling": {"minReplicas": 3}}});
    pools.patch("ha", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    await_ready(&admin, &ns.name, "ha", 3, 3).await;
    assert!(b.reconciles() > 0);
    assert_holds("exactly 3 pods (nothing created twice)", Duration::from_secs(3), || async {
        live_pods(&admin, &ns.name, "ha").await.len() == 3
    })
    .await;

    b.stop().await.unwrap();
    let released = leases.get("switchboard-operator-leader").await.unwrap();
    assert_eq!(released.spec.unwrap().holder_identity, None, "a graceful stop releases the Lease");
    ns.delete().await;
}

#[tokio::test]
async fn the_operator_identity_is_refused_outside_its_rbac() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "op-rbac").await;
    let operator = operator_identity(&admin, &ns.name).await;
    let secrets: Api<Secret> = Api::namespaced(operator.clone(), &ns.name);
    assert_eq!(api_error(secrets.list(&ListParams::default()).await).0, 403, "no Secrets");
    let deployments: Api<Deployment> = Api::namespaced(operator.clone(), &ns.name);
    // Deployments it may create and patch (SignalingPool), never delete.
    assert_eq!(api_error(deployments.delete("x", &DeleteParams::default()).await).0, 403, "no deleting Deployments");
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> = Api::namespaced(operator.clone(), &ns.name);
    assert_eq!(api_error(daemonsets.list(&ListParams::default()).await).0, 403, "no DaemonSets");
    let nodes: Api<Node> = Api::all(operator.clone());
    assert_eq!(api_error(nodes.delete("kwok-node-0", &DeleteParams::default()).await).0, 403, "no deleting nodes");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "someone-elses"}})).unwrap();
    Api::<Lease>::namespaced(admin.clone(), &ns.name).create(&PostParams::default(), &lease).await.unwrap();
    let others: Api<Lease> = Api::namespaced(operator.clone(), &ns.name);
    let takeover = json!({"spec": {"holderIdentity": "switchboard-operator"}});
    let (code, _) = api_error(others.patch("someone-elses", &PatchParams::default(), &Patch::Merge(&takeover)).await);
    assert_eq!(code, 403, "only its own leader Lease is writable");
    // What it needs, it may do.
    assert!(Api::<SfuPool>::namespaced(operator.clone(), &ns.name).list(&ListParams::default()).await.is_ok());
    assert!(Api::<Pod>::namespaced(operator, &ns.name).list(&ListParams::default()).await.is_ok());
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_the_operator_cannot_use_is_reported_and_retried_once_fixed() {
    let Setup { admin, ns, operator } = setup("pool-invalid").await;
    let pools: Api<SfuPool> = ns.api();
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "wide", Duration::from_secs(1));
    // The schema accepts the range; the operator refuses to declare 2,001 container ports.
    let wide = json!({"media": {"udpPortRange": {"min": 40000, "max": 42000}}});
    apply(&pools, &pool("wide", json!({"minReplicas": 1, "maxReplicas": 2}), wide)).await;
    let refused = await_condition(&pools, "wide", TIMEOUT, |p: Option<&SfuPool>| {
        p.is_some_and(|p| has_condition(p, "ReconcileSucceeded", "False"))
    })
    .await;
    let cond = refused.status.unwrap().conditions.into_iter().find(|c| c.type_ == "ReconcileSucceeded").unwrap();
    assert_eq!(cond.reason, "InvalidSpec");
    assert!(cond.message.contains("udpPortRange"), "{}", cond.message);
    await_events(&admin, &ns.name, "wide", &["InvalidSpec"]).await;
    assert!(live_pods(&admin, &ns.name, "wide").await.is_empty(), "nothing is built from a bad spec");

    let narrow = json!({"media": {"udpPortRange": {"min": 40000, "max": 40009}}});
    apply(&pools, &pool("wide", json!({"minReplicas": 1, "maxReplicas": 2}), narrow)).await;
    let pool = await_ready(&admin, &ns.name, "wide", 1, 1).await;
    assert!(has_condition(&pool, "ReconcileSucceeded", "True"));
    operator.stop().await.unwrap();
    ns.delete().await;
}
