//! The Helm chart against the real control plane: lint, the rendered objects through
//! a server-side dry run, install and upgrade, and the operator running under the
//! chart's own ServiceAccount, allowed what the e2e suite needs and refused the rest;
//! then uninstall, which keeps the CRDs. And the monitoring bundle and scaling samples:
//! the PodMonitors against the pods the operator builds, the alerts, the dashboards'
//! JSON, the metric names they query against what the components register, their
//! PromQL through `promtool check rules`, and the KEDA and HPA samples.

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
use switchboard_e2e::monitoring::{dashboard_files, dashboard_queries};
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
    "--set",
    "prometheus.componentMonitors.sfu.enabled=true",
    "--set",
    "prometheus.componentMonitors.signaling.enabled=true",
    "--set",
    "prometheus.componentMonitors.recorder.enabled=true",
    "--set",
    "prometheus.prometheusRule.enabled=true",
    "--set",
    "prometheus.prometheusRule.alertLabels.team=media",
    "--set",
    "grafana.dashboards.enabled=true",
    "--set-json",
    r#"scalingSamples.keda.sfuPools=[{"name":"eu-west","namespace":"conferencing","minReplicas":2,"maxReplicas":20,"packetsPerSecondPerPod":60000}]"#,
    "--set-json",
    r#"scalingSamples.keda.signalingPools=[{"name":"main","namespace":"conferencing","minReplicas":2,"maxReplicas":20,"connectionsPerPod":5000,"cpuUtilizationPercent":70}]"#,
    "--set-json",
    r#"scalingSamples.hpa.sfuPools=[{"name":"us-east","minReplicas":2,"maxReplicas":10,"packetsPerSecondPerPod":60000}]"#,
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
        "PrometheusRule",
        "ConfigMap",
        "ScaledObject",
        "HorizontalPodAutoscaler",
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
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
        "ScaledObject",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "SfuPool",
        "SignalingPool",
    ] {
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
    // ServiceMonitor, PodMonitor and PrometheusRule need the Prometheus Operator's CRDs,
    // ScaledObject KEDA's, which this cluster does not have; everything else (the
    // dashboards' ConfigMaps, the HPA sample, the scrape NetworkPolicy too) is checked
    // by the API server.
    let namespaces = format!("prometheus.componentMonitors.namespaces={{{}}}", ns.name);
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
        "--set",
        "grafana.dashboards.enabled=true",
        "--set-json",
        r#"scalingSamples.hpa.sfuPools=[{"name":"us-east","minReplicas":2,"maxReplicas":10,"packetsPerSecondPerPod":60000}]"#,
        "--set",
        &namespaces,
        "--set",
        "prometheus.componentMonitors.sfuNetworkPolicy.enabled=true",
        "--set-json",
        r#"prometheus.componentMonitors.sfuNetworkPolicy.from=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
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
        "configmap/sb-dashboard-pools",
        "configmap/sb-dashboard-signaling",
        "horizontalpodautoscaler.autoscaling/us-east-sfu",
        "networkpolicy.networking.k8s.io/sb-sfu-metrics",
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

// The monitoring bundle and the scaling samples.

/// Every alert of files/monitoring/alerts.yaml, as values.schema.json lists them for
/// `prometheus.prometheusRule.disabledAlerts`.
const ALERTS: &[&str] = &[
    "SwitchboardNoOperatorLeader",
    "SwitchboardReconcilesFailing",
    "SwitchboardPlacementsFailing",
    "SwitchboardSlowMigrations",
    "SwitchboardSfuPoolShortOfCapacity",
    "SwitchboardSfuPoolAtMaximum",
    "SwitchboardSfuFaults",
    "SwitchboardSfuEvictionsBlocked",
    "SwitchboardSfuHeartbeatsFailing",
    "SwitchboardSfuSendQueuesOverflowing",
    "SwitchboardSignalingRedisErrors",
];

/// `helm template` of the chart (release `sb` in `sb-system`) with `extra` arguments, as
/// JSON documents.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let kube_version = kubernetes_version();
    let mut args = vec!["template", "sb", &chart, "-n", "sb-system", "--kube-version", &kube_version];
    args.extend_from_slice(extra);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&helm_ok(&args)).expect("rendered YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// What `helm template` says when it refuses `extra`.
fn render_error(extra: &[&str]) -> String {
    let chart = chart();
    let kube_version = kubernetes_version();
    let mut args = vec!["template", "sb", &chart, "-n", "sb-system", "--kube-version", &kube_version];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(!out.status.success(), "helm template {extra:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} is not rendered"))
}

fn of_kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

/// An example object (examples/<file>) of `kind`, with a uid as a stored object has.
fn example<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let text = std::fs::read_to_string(repo_root().join("examples").join(file)).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut obj = docs.into_iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("{kind} in {file}"));
    obj["metadata"]["uid"] = json!("0b3c6d1e-0000-4000-8000-000000000001");
    serde_json::from_value(obj).unwrap()
}

/// The pods the operator runs, as it builds them: (component, labels, ports by name).
fn operator_pods() -> Vec<(&'static str, Value, Value)> {
    use switchboard_operator::{recording_job, sfu_pool, signaling_pool};
    let ports = |containers: &Value| -> Value {
        containers
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["containerPort"].clone())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let pool: SfuPool = example("sfupool-eu-west.yaml", "SfuPool");
    let sfu = serde_json::to_value(sfu_pool::build::sfu_pod(&sfu_pool::build::validate(&pool).unwrap())).unwrap();
    let signaling_pool: switchboard_crds::SignalingPool = example("signalingpool.yaml", "SignalingPool");
    let deployment =
        signaling_pool::build::deployment(&signaling_pool::build::validate(&signaling_pool).unwrap(), true);
    let signaling = serde_json::to_value(deployment).unwrap()["spec"]["template"].clone();
    let rj: switchboard_crds::RecordingJob = example("recordingjob.yaml", "RecordingJob");
    let job = recording_job::build::recorder_job(&rj, "switchboard/recorder-pod:test", &Default::default(), false);
    let recorder = serde_json::to_value(job).unwrap()["spec"]["template"].clone();
    [("sfu", sfu), ("signaling", signaling), ("recorder", recorder)]
        .into_iter()
        .map(|(c, pod)| (c, pod["metadata"]["labels"].clone(), ports(&pod["spec"]["containers"])))
        .collect()
}

fn selects(match_labels: &Value, labels: &Value) -> bool {
    match_labels.as_object().unwrap().iter().all(|(k, v)| &labels[k] == v)
}

/// Everything on: the PodMonitors select the pods exactly as the operator labels them
/// and scrape the port /metrics is on, the alerts are all there with severities and
/// texts, the ScaledObjects and the HPA target what they should with the packet-rate and
/// connection queries, and each dashboard file is a ConfigMap for the Grafana sidecar.
#[test]
fn the_monitoring_bundle_and_the_scaling_samples_render_for_the_operators_pods() {
    use switchboard_operator::labels::{POOL_LABEL, SIGNALING_POOL_LABEL};
    use switchboard_operator::recording_job::build::RECORDING_JOB_LABEL;
    let all = render(ALL_ON);

    // The PodMonitors, one per component, selecting its pods and no other's.
    let pods = operator_pods();
    for (component, pool_label, port, number) in [
        ("sfu", POOL_LABEL, "api", 7880),
        ("signaling", SIGNALING_POOL_LABEL, "http", 8080),
        ("recorder", RECORDING_JOB_LABEL, "http", 8080),
    ] {
        let pm = find(&all, "PodMonitor", &format!("sb-{component}"));
        let spec = &pm["spec"];
        assert_eq!(spec["namespaceSelector"], json!({"any": true}), "{component}: every namespace by default");
        let match_labels = &spec["selector"]["matchLabels"];
        for (other, labels, ports) in &pods {
            assert_eq!(selects(match_labels, labels), *other == component, "{component}'s PodMonitor on {other}'s pod");
            if *other == component {
                assert!(labels[pool_label].is_string(), "{component} pods carry {pool_label}: {labels}");
                assert_eq!(ports[port], number, "{component}: port {port} is {number}: {ports}");
            }
        }
        assert_eq!(spec["podTargetLabels"], json!([pool_label]), "{component}");
        let endpoints = spec["podMetricsEndpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0]["port"], port);
        assert_eq!(endpoints[0]["path"], "/metrics");
    }
    // The operator's gauges keep their own namespace and pool label.
    assert_eq!(find(&all, "ServiceMonitor", "sb-operator")["spec"]["endpoints"][0]["honorLabels"], true);
    assert_eq!(find(&all, "PodMonitor", "sb-operator")["spec"]["podMetricsEndpoints"][0]["honorLabels"], true);

    // The alerts: every one of the table's rows with an expression, with `for`, a
    // severity, the extra labels and texts; the same as files/monitoring/alerts.yaml.
    let rule = find(&all, "PrometheusRule", "sb-alerts");
    let rules: Vec<&Value> =
        rule["spec"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(names, ALERTS);
    for r in &rules {
        let name = &r["alert"];
        assert!(!r["expr"].as_str().unwrap().trim().is_empty(), "{name}");
        assert!(r["for"].is_string(), "{name} has a `for`");
        assert!(["critical", "warning"].contains(&r["labels"]["severity"].as_str().unwrap()), "{name}");
        assert_eq!(r["labels"]["team"], "media", "{name}: alertLabels are added");
        for text in ["summary", "description"] {
            assert!(r["annotations"][text].as_str().is_some_and(|t| t.len() > 10), "{name} has a {text}");
        }
    }
    let file: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("files/monitoring/alerts.yaml")).unwrap())
            .unwrap();
    let exprs = |groups: &Value| -> Vec<Value> {
        groups
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .map(|r| r["expr"].clone())
            .collect()
    };
    assert_eq!(exprs(&rule["spec"]["groups"]), exprs(&file["groups"]), "the rule is the file");
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap()).unwrap();
    assert_eq!(
        schema["properties"]["prometheus"]["properties"]["prometheusRule"]["properties"]["disabledAlerts"]["items"]["enum"],
        json!(ALERTS),
        "values.schema.json names every alert"
    );

    // KEDA on the External SfuPool, through its scale subresource, on its packet rate.
    let so = &find(&all, "ScaledObject", "eu-west-sfu");
    assert_eq!(so["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(so["metadata"]["namespace"], "conferencing");
    let spec = &so["spec"];
    assert_eq!(
        spec["scaleTargetRef"],
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool", "name": "eu-west"})
    );
    assert_eq!((&spec["minReplicaCount"], &spec["maxReplicaCount"]), (&json!(2), &json!(20)));
    let trigger = &spec["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(trigger["metricType"], "AverageValue", "a threshold per pod");
    assert_eq!(trigger["metadata"]["threshold"], "60000");
    assert_eq!(trigger["metadata"]["serverAddress"], "http://prometheus-operated.monitoring.svc:9090");
    let query = trigger["metadata"]["query"].as_str().unwrap();
    let selector = r#"{namespace="conferencing", switchboard_dev_pool="eu-west"}[1m]"#;
    for counter in ["switchboard_sfu_rtp_packets_received_total", "switchboard_sfu_rtp_packets_forwarded_total"] {
        assert!(query.contains(&format!("sum(rate({counter}{selector}))")), "{query}");
    }
    // KEDA on the SignalingPool's Deployment, on connections per pod (and CPU).
    let so = &find(&all, "ScaledObject", "main-signaling");
    let spec = &so["spec"];
    let deployment = switchboard_operator::signaling_pool::build::object_name("main");
    assert_eq!(spec["scaleTargetRef"], json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}));
    let trigger = &spec["triggers"][0];
    assert_eq!(
        trigger["metadata"]["query"],
        r#"sum(switchboard_signaling_connections{namespace="conferencing", switchboard_dev_signaling_pool="main"})"#
    );
    assert_eq!(trigger["metadata"]["threshold"], "5000");
    assert_eq!(spec["triggers"][1], json!({"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}}));
    // The plain HPA on an SfuPool (release namespace), on a per-pod metric of an adapter.
    let hpa = find(&all, "HorizontalPodAutoscaler", "us-east-sfu");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["metadata"]["namespace"], "sb-system");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "SfuPool");
    assert_eq!(hpa["spec"]["metrics"][0]["type"], "Pods");
    assert_eq!(hpa["spec"]["metrics"][0]["pods"]["metric"]["name"], "switchboard_sfu_rtp_packets_per_second");
    assert_eq!(hpa["spec"]["metrics"][0]["pods"]["target"], json!({"type": "AverageValue", "averageValue": "60000"}));

    // A ConfigMap per dashboard file, for the Grafana sidecar.
    let files = dashboard_files();
    let config_maps = of_kind(&all, "ConfigMap");
    assert_eq!(config_maps.len(), files.len(), "one ConfigMap per dashboard");
    for (name, text) in &files {
        let cm = find(&all, "ConfigMap", &format!("sb-dashboard-{name}"));
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
        let data = cm["data"][format!("switchboard-{name}.json")].as_str().expect("the dashboard's key");
        assert_eq!(data, text.trim(), "{name}");
    }
}

/// The namespaces the PodMonitors look in, the NetworkPolicy that lets Prometheus reach
/// SFUs behind the operator's, disabled alerts, and what the chart refuses.
#[test]
fn the_monitoring_values_narrow_and_the_chart_refuses_fighting_autoscalers() {
    let sfu_labels = operator_pods().into_iter().find(|(c, ..)| *c == "sfu").unwrap().1;
    let watched =
        render(&["--set", "operator.watchNamespace=tenant", "--set", "prometheus.componentMonitors.sfu.enabled=true"]);
    assert_eq!(find(&watched, "PodMonitor", "sb-sfu")["spec"]["namespaceSelector"], json!({"matchNames": ["tenant"]}));
    let listed = render(&[
        "--set",
        "prometheus.componentMonitors.namespaces={a,b}",
        "--set",
        "prometheus.componentMonitors.signaling.enabled=true",
        "--set",
        "prometheus.componentMonitors.sfuNetworkPolicy.enabled=true",
        "--set-json",
        r#"prometheus.componentMonitors.sfuNetworkPolicy.from=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]"#,
    ]);
    assert_eq!(
        find(&listed, "PodMonitor", "sb-signaling")["spec"]["namespaceSelector"],
        json!({"matchNames": ["a", "b"]})
    );
    let policies: Vec<&Value> =
        of_kind(&listed, "NetworkPolicy").into_iter().filter(|p| p["metadata"]["name"] == "sb-sfu-metrics").collect();
    assert_eq!(
        policies.iter().map(|p| p["metadata"]["namespace"].clone()).collect::<Vec<_>>(),
        [json!("a"), json!("b")]
    );
    for p in policies {
        assert!(selects(&p["spec"]["podSelector"]["matchLabels"], &sfu_labels), "selects the SFU pods");
        assert_eq!(p["spec"]["ingress"][0]["ports"], json!([{"protocol": "TCP", "port": 7880}]));
        assert_eq!(
            p["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "monitoring"
        );
    }
    let err = render_error(&["--set", "prometheus.componentMonitors.sfuNetworkPolicy.enabled=true"]);
    assert!(err.contains("needs the namespaces"), "{err}");

    let fewer = render(&[
        "--set",
        "prometheus.prometheusRule.enabled=true",
        "--set",
        "prometheus.prometheusRule.disabledAlerts={SwitchboardSignalingRedisErrors,SwitchboardSfuFaults}",
    ]);
    let groups = &find(&fewer, "PrometheusRule", "sb-alerts")["spec"]["groups"];
    let names: Vec<&str> = groups.as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"switchboard-signaling"), "a group left empty is left out: {names:?}");
    assert!(!groups.to_string().contains("SwitchboardSfuFaults"));
    let err = render_error(&[
        "--set",
        "prometheus.prometheusRule.enabled=true",
        "--set",
        "prometheus.prometheusRule.disabledAlerts={SwitchboardNoSuchAlert}",
    ]);
    assert!(err.contains("disabledAlerts"), "{err}");

    // A pool scaled by KEDA or an HPA must be External, and scaled by one of them only.
    let keda_default = r#"scalingSamples.keda.sfuPools=[{"name":"default","minReplicas":2,"maxReplicas":4,"packetsPerSecondPerPod":1000}]"#;
    let err = render_error(&["--set", "defaultSfuPool.enabled=true", "--set-json", keda_default]);
    assert!(err.contains("Builtin mode") && err.contains("External"), "{err}");
    let ok = render(&[
        "--set",
        "defaultSfuPool.enabled=true",
        "--set",
        "defaultSfuPool.autoscaling.mode=External",
        "--set-json",
        keda_default,
    ]);
    assert_eq!(find(&ok, "ScaledObject", "default-sfu")["metadata"]["namespace"], "sb-system");
    let err = render_error(&[
        "--set",
        "defaultSignalingPool.enabled=true",
        "--set-json",
        r#"scalingSamples.keda.signalingPools=[{"name":"default","minReplicas":2,"maxReplicas":4,"connectionsPerPod":100}]"#,
    ]);
    assert!(err.contains("SignalingPool sb-system/default is in Builtin mode"), "{err}");
    let err = render_error(&[
        "--set-json",
        r#"scalingSamples.keda.sfuPools=[{"name":"a","minReplicas":2,"maxReplicas":4,"packetsPerSecondPerPod":1000}]"#,
        "--set-json",
        r#"scalingSamples.hpa.sfuPools=[{"name":"a","namespace":"sb-system","minReplicas":2,"maxReplicas":4,"packetsPerSecondPerPod":1000}]"#,
    ]);
    assert!(err.contains("listed for KEDA and for the HPA"), "{err}");
    let err =
        render_error(&["--set-json", r#"scalingSamples.keda.sfuPools=[{"name":"a","minReplicas":2,"maxReplicas":4}]"#]);
    assert!(err.contains("packetsPerSecondPerPod"), "the schema wants the threshold: {err}");
}

/// Each dashboard is valid JSON of the Grafana schema the sidecar loads: unique panel
/// ids, panels that do not overlap, each with a title, a place and at least one query,
/// all on the `datasource` variable.
#[test]
fn every_dashboard_is_grafana_json_with_complete_panels() {
    let files = dashboard_files();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["media", "meetings", "pools", "signaling"]);
    let mut uids = Vec::new();
    for (name, text) in &files {
        let d: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}.json: {e}"));
        assert!(d["title"].as_str().is_some_and(|t| t.starts_with("Switchboard / ")), "{name}");
        assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{name}: schemaVersion");
        uids.push(d["uid"].as_str().expect("a uid").to_owned());
        let variables = d["templating"]["list"].as_array().unwrap();
        let datasource = variables.iter().find(|v| v["name"] == "datasource").expect("a datasource variable");
        assert_eq!((&datasource["type"], &datasource["query"]), (&json!("datasource"), &json!("prometheus")));
        for v in variables.iter().filter(|v| v["type"] == "query") {
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}: variable {}", v["name"]);
        }

        let panels = d["panels"].as_array().unwrap();
        assert!(panels.len() >= 8, "{name}: {} panels", panels.len());
        let mut ids = std::collections::BTreeSet::new();
        let mut boxes: Vec<(String, (u64, u64, u64, u64))> = Vec::new();
        for p in panels {
            let id = p["id"].as_u64().expect("a numeric id");
            assert!(ids.insert(id), "{name}: panel id {id} twice");
            let title = p["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{name}: panel {id} has a title");
            let g = &p["gridPos"];
            let [x, y, w, h] =
                ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or_else(|| panic!("{name} {title}: gridPos.{k}")));
            assert!(w > 0 && h > 0 && x + w <= 24, "{name} {title}: gridPos {g}");
            for &(ref other, (ox, oy, ow, oh)) in &boxes {
                assert!(x >= ox + ow || ox >= x + w || y >= oy + oh || oy >= y + h, "{name}: {title} overlaps {other}");
            }
            boxes.push((title.to_owned(), (x, y, w, h)));
            if p["type"] == "row" {
                continue;
            }
            assert!(
                ["timeseries", "stat", "table", "bargauge", "gauge"].contains(&p["type"].as_str().unwrap()),
                "{title}"
            );
            assert_eq!(p["datasource"], json!({"type": "prometheus", "uid": "${datasource}"}), "{name} {title}");
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{name} {title}: targets"));
            assert!(!targets.is_empty(), "{name} {title}: a query");
            for t in targets {
                assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{name} {title}: an expr");
                assert!(t["refId"].is_string(), "{name} {title}: a refId");
            }
        }
        dashboard_queries(name, &d, "test");
    }
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), files.len(), "unique dashboard uids");
}

/// The metric names (`switchboard_…`) in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("switchboard_") {
        let before = rest[..at].chars().last();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // Label names such as switchboard_dev_pool stand before `=`, `!` or `~`, or in by (…).
        let next = tail[end..].trim_start().chars().next();
        let label = tail.starts_with("switchboard_dev_") || matches!(next, Some('=' | '!' | '~'));
        if !label && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"') {
            names.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// Every metric the alerts and dashboards query is one the components register: what
/// the operator's registry encodes in this process (its families with children), or a
/// registration in the component's source (operator/src/metrics.rs,
/// sfu-pod/src/metrics.rs, signaling-pod/src/{app,limits}.rs, recorder-pod/src/http.rs,
/// build_info in crates/metrics-exposition): the name less its prefix,
/// `_total`/`_bucket`/`_sum`/`_count` and a unit suffix is registered there.
#[test]
fn the_alerts_and_dashboards_query_metrics_the_components_export() {
    // The operator's sample names from its OpenMetrics TYPE lines.
    // And the SFU's, whose families all encode from the start.
    let sfu = sfu_pod::metrics::Metrics::default().render(Some("application/openmetrics-text")).1;
    let text = switchboard_operator::metrics::Metrics::default().encode() + &sfu;
    let mut operator = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (family, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => operator.extend([format!("{family}_total")]),
            "histogram" => operator.extend(["_bucket", "_sum", "_count"].map(|s| format!("{family}{s}"))),
            _ => operator.extend([family.to_owned()]),
        }
    }
    assert!(operator.contains("switchboard_leader"), "{operator:?}");
    assert!(operator.contains("switchboard_sfu_subscriber_jitter_seconds_bucket"), "{operator:?}");
    let source = |files: &[&str]| -> String {
        files.iter().map(|f| std::fs::read_to_string(repo_root().join(f)).unwrap()).collect::<Vec<_>>().join("\n")
    };
    let exposition = source(&["crates/metrics-exposition/src/lib.rs"]);
    let components = [
        ("switchboard_sfu_", source(&["sfu-pod/src/metrics.rs"])),
        ("switchboard_signaling_", source(&["signaling-pod/src/app.rs", "signaling-pod/src/limits.rs"])),
        ("switchboard_recorder_", source(&["recorder-pod/src/http.rs"])),
        // The operator's families without children yet are not encoded: its source, then.
        ("switchboard_", source(&["operator/src/metrics.rs"])),
    ];
    let registered = |name: &str| -> bool {
        if operator.contains(name) || (name == "switchboard_build_info" && exposition.contains("\"build_info\"")) {
            return true;
        }
        components.iter().any(|(prefix, src)| {
            let Some(base) = name.strip_prefix(prefix) else { return false };
            let base =
                ["_total", "_bucket", "_sum", "_count"].iter().find_map(|s| base.strip_suffix(s)).unwrap_or(base);
            let candidates = [Some(base), base.strip_suffix("_bytes"), base.strip_suffix("_seconds")];
            candidates.into_iter().flatten().any(|b| {
                src.contains(&format!("\"{b}\""))
                    || (b == "build_info" && src.contains("build_info(") && exposition.contains("\"build_info\""))
            })
        })
    };

    let mut queries: Vec<(String, String)> = Vec::new();
    let alerts: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart_dir().join("files/monitoring/alerts.yaml")).unwrap())
            .unwrap();
    for group in alerts["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            queries.push((format!("alert {}", rule["alert"]), rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    for (name, text) in dashboard_files() {
        queries.extend(dashboard_queries(&name, &serde_json::from_str(&text).unwrap(), "test"));
    }
    let mut unknown = Vec::new();
    let mut seen = 0;
    for (place, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no switchboard metric in {expr}");
        for name in names {
            seen += 1;
            if !registered(&name) {
                unknown.push(format!("{place}: {name}"));
            }
        }
    }
    assert!(unknown.is_empty(), "metrics no component registers:\n{}", unknown.join("\n"));
    assert!(seen > 100, "{seen} metric references checked");
}

/// promtool, from e2e/monitoring/build (its bin directory on its last line).
fn promtool() -> std::path::PathBuf {
    let build = repo_root().join("e2e/monitoring/build");
    let out = std::process::Command::new(&build)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", build.display()));
    assert!(out.status.success(), "{} failed", build.display());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let bin = stdout.lines().last().expect("the bin directory on the last line").trim();
    std::path::PathBuf::from(bin).join("promtool")
}

fn promtool_check_rules(promtool: &std::path::Path, what: &str, groups: Value) {
    let file = std::env::temp_dir().join(format!("switchboard-chart-{what}-{}.rules.yaml", std::process::id()));
    // JSON is YAML: promtool reads it as a rules file.
    std::fs::write(&file, serde_json::to_string_pretty(&json!({ "groups": groups })).unwrap()).unwrap();
    let out = std::process::Command::new(promtool).arg("check").arg("rules").arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "promtool check rules ({what}, {}):\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(file);
}

/// PromQL parses: the rendered PrometheusRule's groups pass `promtool check rules` (the
/// alert templates in the annotations too), and so does every dashboard query, with the
/// Grafana variables replaced, as a recording rule.
#[test]
fn the_alerts_and_the_dashboard_queries_pass_promtool() {
    let promtool = promtool();
    let all = render(&["--set", "prometheus.prometheusRule.enabled=true"]);
    let groups = find(&all, "PrometheusRule", "sb-alerts")["spec"]["groups"].clone();
    assert_eq!(
        groups.as_array().unwrap().iter().map(|g| g["rules"].as_array().unwrap().len()).sum::<usize>(),
        ALERTS.len()
    );
    promtool_check_rules(&promtool, "alerts", groups);

    let mut rules = Vec::new();
    for (name, text) in dashboard_files() {
        for (i, (place, expr)) in
            dashboard_queries(&name, &serde_json::from_str(&text).unwrap(), "test").into_iter().enumerate()
        {
            rules.push(json!({"record": format!("switchboard_dashboard:{name}:query{i}"), "expr": expr, "labels": {"from": place}}));
        }
    }
    assert!(rules.len() > 80, "{} dashboard queries", rules.len());
    promtool_check_rules(&promtool, "dashboards", json!([{"name": "dashboards", "rules": rules}]));
}

/// The Prometheus Operator's and KEDA's CRDs of the kinds the chart renders, from their
/// pinned Go modules (the CRD YAML ships in them; nothing is compiled).
const MONITORING_CRDS: &[(&str, &str)] = &[
    (
        "github.com/prometheus-operator/prometheus-operator@v0.85.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    ),
    (
        "github.com/prometheus-operator/prometheus-operator@v0.85.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
    ),
    (
        "github.com/prometheus-operator/prometheus-operator@v0.85.0",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ),
    ("github.com/kedacore/keda/v2@v2.20.2", "config/crd/bases/keda.sh_scaledobjects.yaml"),
];

/// The directory of a Go module in the module cache, downloaded if need be.
fn go_module_dir(module: &str) -> std::path::PathBuf {
    let out = std::process::Command::new("go")
        .args(["mod", "download", "-json", module])
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("go runs (e2e/cluster/build needs it too)");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("go mod download {module}: {e}"));
    assert!(info["Error"].is_null() && out.status.success(), "go mod download {module}: {info}");
    std::path::PathBuf::from(info["Dir"].as_str().unwrap())
}

/// The ServiceMonitor, PodMonitors, PrometheusRule and ScaledObjects through a
/// server-side dry run, against the Prometheus Operator's and KEDA's CRDs (applied to
/// the cluster once; neither controller runs, so they only validate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitoring_objects_pass_a_server_side_dry_run_against_their_crds() {
    let admin = client().await;
    for (module, file) in MONITORING_CRDS {
        let path = go_module_dir(module).join(file);
        kubectl_ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "switchboard-e2e",
            "-f",
            path.to_str().unwrap(),
        ]);
    }
    for crd in [
        "servicemonitors.monitoring.coreos.com",
        "podmonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
        "scaledobjects.keda.sh",
    ] {
        kubectl_ok(&["wait", "--for", "condition=Established", "--timeout", "60s", &format!("crd/{crd}")]);
    }
    let ns = TestNamespace::create(&admin, "chart-monitoring").await;
    let keda_sfu = format!(
        r#"scalingSamples.keda.sfuPools=[{{"name":"eu-west","namespace":"{}","minReplicas":2,"maxReplicas":20,"packetsPerSecondPerPod":60000}}]"#,
        ns.name
    );
    let keda_signaling = format!(
        r#"scalingSamples.keda.signalingPools=[{{"name":"main","namespace":"{}","minReplicas":2,"maxReplicas":20,"connectionsPerPod":5000,"cpuUtilizationPercent":70}}]"#,
        ns.name
    );
    // Everything on, the KEDA samples in the test's namespace (the API server wants it to exist).
    let mut args: Vec<&str> =
        ALL_ON.chunks(2).filter(|flag| !flag[1].starts_with("scalingSamples.keda")).flatten().copied().collect();
    args.extend(["--set-json", &keda_sfu, "--set-json", &keda_signaling]);
    let chart = chart();
    let kube_version = kubernetes_version();
    let mut template = vec!["template", "sb", &chart, "-n", &ns.name, "--kube-version", &kube_version];
    template.extend(args);
    let docs: Vec<Value> = serde_saphyr::from_multiple(&helm_ok(&template)).unwrap();
    let kinds = ["ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"];
    let monitoring: Vec<Value> = docs.into_iter().filter(|d| kinds.iter().any(|k| d["kind"] == *k)).collect();
    assert_eq!(monitoring.len(), 1 + 4 + 1 + 2, "{monitoring:?}");
    let file = std::env::temp_dir().join(format!("{}.json", ns.name));
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": monitoring})).unwrap(),
    )
    .unwrap();
    let out = kubectl_ok(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager",
        "chart-dry-run",
        "-n",
        &ns.name,
        "-f",
        file.to_str().unwrap(),
    ]);
    for expected in [
        "servicemonitor.monitoring.coreos.com/sb-operator",
        "podmonitor.monitoring.coreos.com/sb-operator",
        "podmonitor.monitoring.coreos.com/sb-sfu",
        "podmonitor.monitoring.coreos.com/sb-signaling",
        "podmonitor.monitoring.coreos.com/sb-recorder",
        "prometheusrule.monitoring.coreos.com/sb-alerts",
        "scaledobject.keda.sh/eu-west-sfu",
        "scaledobject.keda.sh/main-signaling",
    ] {
        assert!(out.contains(expected), "{expected} in:\n{out}");
    }
    let _ = std::fs::remove_file(file);
    ns.delete().await;
}
