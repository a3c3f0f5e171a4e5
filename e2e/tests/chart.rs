//! The Helm chart against the real control plane: lint, the rendered objects through
//! a server-side dry run, install and upgrade, and the operator running under the
//! chart's own ServiceAccount, allowed what the e2e suite needs and refused the rest;
//! then uninstall, which keeps the CRDs.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use switchboard_crds::SfuPool;
use switchboard_e2e::fixtures::{apply, pool};
use switchboard_e2e::operator::start_operator_with;
use switchboard_e2e::sfu_sim::SimulatedSfus;
use switchboard_e2e::*;
use switchboard_operator::OperatorConfig;

const TIMEOUT: Duration = Duration::from_secs(90);

/// Every optional part of the chart switched on.
const ALL_ON: &[&str] = &[
    "--set",
    "prometheus.serviceMonitor.enabled=true",
    "--set",
    "prometheus.podMonitor.enabled=true",
    "--set",
    "networkPolicy.enabled=true",
    "--set",
    "defaultSfuPool.enabled=true",
    "--set",
    "defaultSignalingPool.enabled=true",
];

fn chart() -> String {
    chart_dir().display().to_string()
}

fn kinds(rendered: &str) -> Vec<(String, String)> {
    parse_manifest(rendered)
        .unwrap()
        .into_iter()
        .map(|o| (o.types.map(|t| t.kind).unwrap_or_default(), o.metadata.name.unwrap_or_default()))
        .collect()
}

#[test]
fn helm_lint_passes_and_the_values_schema_names_a_bad_key() {
    let chart = chart();
    // `helm template` renders for the control plane's version, not helm's default,
    // which the chart's kubeVersion refuses.
    let kube_version = kubernetes_version();
    helm_ok(&["lint", "--strict", &chart]);
    let mut args = vec!["lint", "--strict", &chart];
    args.extend_from_slice(ALL_ON);
    helm_ok(&args);

    let bad = helm(&["template", "t", &chart, "--kube-version", &kube_version, "--set", "operator.replica=3"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("/operator") && err.contains("replica"), "{err}");
    let bad = helm(&[
        "template",
        "t",
        &chart,
        "--kube-version",
        &kube_version,
        "--set",
        "defaultSfuPool.placement.strategy=Random",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("strategy"), "an enum the schema refuses");
}

#[test]
fn the_rendered_chart_holds_every_part_and_the_test_rbac() {
    let chart = chart();
    let kube_version = kubernetes_version();
    let mut args = vec!["template", "sb", &chart, "-n", "sb-system", "--kube-version", &kube_version];
    args.extend_from_slice(ALL_ON);
    let all = kinds(&helm_ok(&args));
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceMonitor",
        "PodMonitor",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "SfuPool",
        "SignalingPool",
    ] {
        assert!(all.iter().any(|(k, _)| k == kind), "{kind} missing from {all:?}");
    }
    assert_eq!(all.iter().filter(|(k, _)| k == "CustomResourceDefinition").count(), 4);

    // The defaults: no monitoring, policies or pools, and CRDs only behind crds.enabled.
    let defaults = kinds(&helm_ok(&["template", "sb", &chart, "--kube-version", &kube_version]));
    for kind in ["ServiceMonitor", "PodMonitor", "NetworkPolicy", "SfuPool", "SignalingPool"] {
        assert!(!defaults.iter().any(|(k, _)| k == kind), "{kind} is opt-in");
    }
    let no_crds =
        kinds(&helm_ok(&["template", "sb", &chart, "--kube-version", &kube_version, "--set", "crds.enabled=false"]));
    assert!(!no_crds.iter().any(|(k, _)| k == "CustomResourceDefinition"));
    let rendered = helm_ok(&["template", "sb", &chart, "--kube-version", &kube_version]);
    assert_eq!(rendered.matches("helm.sh/resource-policy: keep").count(), 4, "CRDs are kept on uninstall");

    // The ClusterRoles are the very rules the e2e suite runs the operator under.
    let roles: Vec<Value> = parse_manifest(&rendered)
        .unwrap()
        .into_iter()
        .filter(|o| o.types.as_ref().is_some_and(|t| t.kind == "ClusterRole" || t.kind == "Role"))
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    for file in std::fs::read_dir(chart_dir().join("files/rbac")).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        let want = serde_json::to_value(&parse_manifest(&text).unwrap()[0]).unwrap();
        let have = roles.iter().find(|r| r["metadata"]["name"] == want["metadata"]["name"]).expect("role rendered");
        assert_eq!(have["rules"], want["rules"], "{}", want["metadata"]["name"]);
    }

    // Watching one namespace: the operator's namespaced rights are a Role there, and
    // only the node rights stay cluster-wide.
    let watched = parse_manifest(&helm_ok(&[
        "template",
        "sb",
        &chart,
        "-n",
        "sb-system",
        "--kube-version",
        &kube_version,
        "--set",
        "operator.watchNamespace=tenant",
    ]))
    .unwrap();
    let rbac: Vec<(String, String, Option<String>)> = watched
        .iter()
        .filter(|o| o.types.as_ref().is_some_and(|t| t.kind.contains("Role")))
        .map(|o| (o.types.clone().unwrap().kind, o.name_any(), o.metadata.namespace.clone()))
        .collect();
    let has = |kind: &str, name: &str, ns: Option<&str>| {
        rbac.iter().any(|(k, n, s)| k == kind && n == name && s.as_deref() == ns)
    };
    assert!(has("Role", "switchboard-operator", Some("tenant")), "{rbac:?}");
    assert!(has("RoleBinding", "switchboard-operator", Some("tenant")), "{rbac:?}");
    assert!(
        !has("ClusterRole", "switchboard-operator", None) && !has("ClusterRoleBinding", "switchboard-operator", None)
    );
    assert!(has("ClusterRoleBinding", "switchboard-operator-nodes", None), "{rbac:?}");
    let cluster_wide: Vec<&String> =
        rbac.iter().filter(|(k, _, _)| k == "ClusterRoleBinding").map(|(_, n, _)| n).collect();
    assert_eq!(cluster_wide, ["switchboard-operator-nodes"], "only node rights are cluster-wide");

    // Two operator replicas, spread over nodes, with probes on the operator's endpoints.
    let deployment = parse_manifest(&rendered)
        .unwrap()
        .into_iter()
        .find(|o| o.types.as_ref().unwrap().kind == "Deployment")
        .unwrap();
    let d: Deployment = serde_json::from_value(serde_json::to_value(deployment).unwrap()).unwrap();
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("switchboard-operator"));
    let c = &pod.containers[0];
    assert_eq!(c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/readyz"));
    assert_eq!(c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(), Some("/healthz"));
    assert!(pod.affinity.unwrap().pod_anti_affinity.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_chart_passes_a_server_side_dry_run() {
    let admin = client().await;
    let ns = TestNamespace::create(&admin, "chart-dry").await;
    let kube_version = kubernetes_version();
    // ServiceMonitor and PodMonitor need the Prometheus Operator's CRDs, which this
    // cluster does not have; everything else is checked by the API server.
    let rendered = helm_ok(&[
        "template",
        "sb",
        &chart(),
        "-n",
        &ns.name,
        "--kube-version",
        &kube_version,
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "defaultSfuPool.enabled=true",
        "--set",
        "defaultSignalingPool.enabled=true",
    ]);
    let file = std::env::temp_dir().join(format!("{}.yaml", ns.name));
    std::fs::write(&file, &rendered).unwrap();
    let out = kubectl_ok(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "--force-conflicts",
        "--field-manager",
        "chart-dry-run",
        "-n",
        &ns.name,
        "-f",
        file.to_str().unwrap(),
    ]);
    for expected in [
        "customresourcedefinition.apiextensions.k8s.io/sfupools.switchboard.dev",
        "deployment.apps/sb-operator",
        "sfupool.switchboard.dev/default",
        "signalingpool.switchboard.dev/default",
    ] {
        assert!(out.contains(expected), "{expected} in:\n{out}");
    }
    assert!(!out.contains("unchanged") || out.contains("serverside-applied"), "{out}");
    let _ = std::fs::remove_file(file);
    ns.delete().await;
}

async fn service_account_token(admin: &kube::Client, ns: &str, name: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    sas.create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|s| s.token)
        .unwrap()
}

/// `helm install` and `helm upgrade`; then the operator runs with the installed
/// ServiceAccount's token, brings a pool up, and is refused what it must not do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_upgrade_and_the_operator_under_the_charts_service_account() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "chart-install").await;
    let release = "sb";
    // The CRDs and the fixed-name ClusterRoles already exist in the shared test
    // cluster (other tests apply them): the release adopts them.
    let out =
        helm_ok(&["install", release, &chart(), "-n", &ns.name, "--take-ownership", "--wait", "--timeout", "120s"]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("kubectl get switchboard -A"), "NOTES.txt is shown: {out}");
    let deployments: Api<Deployment> = ns.api();
    let d = deployments.get("sb-operator").await.unwrap();
    assert_eq!(d.status.and_then(|s| s.ready_replicas), Some(2), "--wait: both operator pods Ready (kwok)");
    let pdbs: Api<PodDisruptionBudget> = ns.api();
    assert!(pdbs.get_opt("sb-operator").await.unwrap().is_some());

    let out = helm_ok(&[
        "upgrade",
        release,
        &chart(),
        "-n",
        &ns.name,
        "--set",
        "operator.replicas=3",
        "--set",
        "podDisruptionBudget.enabled=false",
        "--wait",
        "--timeout",
        "120s",
    ]);
    assert!(out.contains("REVISION: 2"), "{out}");
    let d = deployments.get("sb-operator").await.unwrap();
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(3));
    await_deleted(&pdbs, "sb-operator", TIMEOUT).await;
    let history = helm_ok(&["history", release, "-n", &ns.name, "-o", "json"]);
    let history: Vec<Value> = serde_json::from_str(&history).unwrap();
    assert_eq!(history.len(), 2);
    let crbs: Api<ClusterRoleBinding> = Api::all(admin.clone());
    let crb = crbs.get("switchboard-operator").await.unwrap();
    assert_eq!(crb.subjects.unwrap()[0].namespace.as_deref(), Some(ns.name.as_str()));

    // The operator as the chart runs it: the chart's ServiceAccount, leader Lease in
    // the release namespace (a local process stands in for the kwok pods).
    let token = service_account_token(&admin, &ns.name, "switchboard-operator").await;
    let identity = client_with_token(&token).await;
    let mut config = OperatorConfig::for_namespace(&ns.name, "chart-operator");
    config.sfu_startup_timeout = Duration::from_secs(30);
    let operator = start_operator_with(identity.clone(), config);
    let pools: Api<SfuPool> = ns.api();
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, "charted", Duration::from_secs(1));
    apply(&pools, &pool("charted", json!({"minReplicas": 2, "maxReplicas": 4}), json!({}))).await;
    eventually("the pool Available under the chart's identity", TIMEOUT, || async {
        let p = pools.get("charted").await.ok()?;
        let s = p.status.as_ref()?;
        (s.ready_replicas == 2 && s.conditions.iter().any(|c| c.type_ == "Available" && c.status == "True"))
            .then_some(())
    })
    .await;
    let pods: Api<Pod> = ns.api();
    assert_eq!(pods.list(&ListParams::default().labels("switchboard.dev/pool=charted")).await.unwrap().items.len(), 2);

    // And nothing more: no Secrets, no RBAC escalation, no deleting nodes or CRDs.
    let secrets: Api<Secret> = Api::namespaced(identity.clone(), &ns.name);
    assert_eq!(api_error(secrets.list(&ListParams::default()).await).0, 403, "reading Secrets");
    let roles: Api<ClusterRole> = Api::all(identity.clone());
    let escalate: ClusterRole = serde_json::from_value(json!({"metadata": {"name": format!("{}-escalate", ns.name)},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}))
    .unwrap();
    assert_eq!(api_error(roles.create(&PostParams::default(), &escalate).await).0, 403, "creating a ClusterRole");
    let bindings: Api<ClusterRoleBinding> = Api::all(identity.clone());
    let admin_binding: ClusterRoleBinding =
        serde_json::from_value(json!({"metadata": {"name": format!("{}-admin", ns.name)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "switchboard-operator", "namespace": ns.name}]}))
        .unwrap();
    assert_eq!(
        api_error(bindings.create(&PostParams::default(), &admin_binding).await).0,
        403,
        "binding cluster-admin"
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(identity.clone());
    assert_eq!(api_error(nodes.delete("kwok-node-0", &Default::default()).await).0, 403, "deleting a node");
    operator.stop().await.unwrap();

    // Uninstalling takes the release's objects, cluster-scoped ones included, and keeps
    // the CRDs, so the custom resources (here the pool) outlive it. Later tests apply
    // the ClusterRoles again (`operator::operator_token`).
    let out = helm_ok(&["uninstall", release, "-n", &ns.name, "--wait", "--timeout", "120s"]);
    assert!(out.contains("uninstalled"), "{out}");
    assert!(deployments.get_opt("sb-operator").await.unwrap().is_none(), "the operator Deployment is gone");
    assert!(crbs.get_opt("switchboard-operator").await.unwrap().is_none(), "the ClusterRoleBinding is gone");
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in [
        "sfupools.switchboard.dev",
        "signalingpools.switchboard.dev",
        "meetings.switchboard.dev",
        "recordingjobs.switchboard.dev",
    ] {
        assert!(crds.get_opt(crd).await.unwrap().is_some(), "{crd} is kept");
    }
    assert!(pools.get_opt("charted").await.unwrap().is_some(), "the pool outlives the release");
    ns.delete().await;
}
