//! The chart's admission policies against the API server: what RBAC alone cannot
//! say. An SFU pod's token (bound to its pod) may write its own heartbeat Lease and
//! nothing else: not another pod's, not another pool's, not the operator's leader
//! Lease or the room-code counter.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use switchboard_e2e::operator::{install_admission_policies, operator_token, token_kubeconfig};
use switchboard_e2e::{TestNamespace, api_error, client, client_for, wait_for};

fn heartbeat_lease(name: &str, pool: &str) -> Lease {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"switchboard.dev/pool": pool}},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 10}
    }))
    .unwrap()
}

/// A client with the token of ServiceAccount `sa`, bound to pod `pod` when given
/// (as the kubelet's projected token is).
async fn token_client(admin: &Client, ns: &str, sa: &str, pod: Option<&Pod>) -> Client {
    let bound = pod.map(|p| json!({"kind": "Pod", "apiVersion": "v1", "name": p.metadata.name, "uid": p.metadata.uid}));
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600, "boundObjectRef": bound}}))
            .unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .expect("a token")
        .status
        .and_then(|s| s.token)
        .expect("token");
    let bound_to = pod.and_then(|p| p.metadata.name.clone()).unwrap_or_else(|| "none".into());
    let path = std::env::temp_dir().join(format!("{ns}-{sa}-{bound_to}.kubeconfig"));
    client_for(&token_kubeconfig(&token, &path)).await
}

#[tokio::test]
async fn an_sfu_token_writes_only_its_own_heartbeat_lease() {
    let admin = client().await;
    let ns = TestNamespace::create(&admin, "own-lease").await;
    // The chart's roles and policies, as for any operator.
    operator_token(&admin, &ns.name).await;
    install_admission_policies(&admin).await;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "room-sfu"}})).unwrap();
    ns.api::<ServiceAccount>().create(&PostParams::default(), &sa).await.unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "room-sfu"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "switchboard-sfu"},
        "subjects": [{"kind": "ServiceAccount", "name": "room-sfu", "namespace": ns.name}]
    }))
    .unwrap();
    ns.api::<RoleBinding>().create(&PostParams::default(), &binding).await.unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "room-a1b2c"},
        "spec": {"serviceAccountName": "room-sfu", "nodeSelector": {"type": "kwok"},
                 "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                 "containers": [{"name": "sfu", "image": "switchboard/sfu-pod:test"}]}
    }))
    .unwrap();
    let pod = ns.api::<Pod>().create(&PostParams::default(), &pod).await.unwrap();

    let sfu = token_client(&admin, &ns.name, "room-sfu", Some(&pod)).await;
    let leases: Api<Lease> = Api::namespaced(sfu.clone(), &ns.name);
    // Policies take a moment to be enforced after they are created.
    wait_for("the policy refuses another pod's Lease", Duration::from_secs(30), || {
        let leases = leases.clone();
        // A 403, not "already exists": a create that got through before the policy was
        // enforced would otherwise end the wait early.
        let admin_leases: Api<Lease> = ns.api();
        async move {
            let created = leases.create(&PostParams::default(), &heartbeat_lease("room-zzzzz", "room")).await;
            if created.is_ok() {
                let _ = admin_leases.delete("room-zzzzz", &Default::default()).await;
            }
            matches!(created, Err(kube::Error::Api(e)) if e.code == 403)
        }
    })
    .await;

    // Its own heartbeat: created and renewed.
    let own =
        leases.create(&PostParams::default(), &heartbeat_lease("room-a1b2c", "room")).await.expect("its own Lease");
    leases.replace("room-a1b2c", &PostParams::default(), &own).await.expect("renewing its own Lease");

    // Another pod's, another pool's, the operator's: refused, each saying why.
    let refusals = [
        (heartbeat_lease("room-zzzzz", "room"), "only its own heartbeat Lease"),
        (heartbeat_lease("switchboard-operator", "room"), "only its own heartbeat Lease"),
        (heartbeat_lease("switchboard-room-codes", "room"), "only its own heartbeat Lease"),
        (heartbeat_lease("room-a1b2c", "other"), "its own pool"),
    ];
    for (lease, words) in refusals {
        let name = lease.metadata.name.clone().unwrap();
        let result = match leases.get_opt(&name).await.unwrap() {
            Some(current) => {
                let metadata = ObjectMeta { labels: lease.metadata.labels.clone(), ..current.metadata };
                leases.replace(&name, &PostParams::default(), &Lease { metadata, ..lease }).await
            }
            None => leases.create(&PostParams::default(), &lease).await,
        };
        let (code, message) = api_error(result);
        assert_eq!(code, 403, "{name}: {message}");
        assert!(message.contains(words), "{name}: {message}");
    }
    // A token bound to no pod (a stolen ServiceAccount token) writes nothing.
    let unbound = token_client(&admin, &ns.name, "room-sfu", None).await;
    let result = Api::<Lease>::namespaced(unbound, &ns.name)
        .create(&PostParams::default(), &heartbeat_lease("room-a1b2c-2", "room"))
        .await;
    let (code, message) = api_error(result);
    assert_eq!(code, 403);
    assert!(message.contains("bound to none"), "{message}");
    // Its pool's targets and status are the operator's: an SFU cannot lower
    // packetsPerSecondPerPod to have the pool grow, nor write what drove the scaling.
    let pools: Api<switchboard_crds::SfuPool> = Api::namespaced(sfu.clone(), &ns.name);
    let raise = json!({"spec": {"capacity": {"participantsPerPod": 50, "packetsPerSecondPerPod": 1}}});
    let (code, _) = api_error(pools.patch("room", &PatchParams::default(), &Patch::Merge(&raise)).await);
    assert_eq!(code, 403, "an SFU token patching its pool's spec");
    let signal = json!({"status": {"scaleSignal": "PacketRate", "allocated": {"packetsPerSecond": 1000000}}});
    let (code, _) = api_error(pools.patch_status("room", &PatchParams::default(), &Patch::Merge(&signal)).await);
    assert_eq!(code, 403, "an SFU token patching its pool's status");
    // Its own Lease is unharmed.
    let kept = ns.api::<Lease>().get("room-a1b2c").await.unwrap();
    assert_eq!(kept.metadata.labels.unwrap().get("switchboard.dev/pool").map(String::as_str), Some("room"));
    ns.delete().await;
}
