//! Runs the operator in-process for a test, under the repo's RBAC (a
//! ServiceAccount token bound to `charts/switchboard/files/rbac/*.yaml`), never as cluster admin.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use serde_json::json;
use switchboard_operator::{Health, Metrics, OperatorConfig};
use tokio::task::JoinHandle;

use crate::{Resolver, parse_manifest, repo_root};

/// A running operator replica.
pub struct OperatorHandle {
    pub identity: String,
    pub metrics: Metrics,
    pub client: Client,
    task: JoinHandle<anyhow::Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OperatorHandle {
    /// Kills the replica as a crash would: no cleanup, its Lease is not released.
    pub fn kill(mut self) {
        self.stop.take();
        self.task.abort();
    }

    /// Stops it gracefully (releases leadership) and returns how it ended.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(30), &mut self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(anyhow::anyhow!("operator task: {e}")),
            Err(_) => Err(anyhow::anyhow!("operator did not stop within 30s")),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.metrics.leader.get() == 1
    }

    pub fn reconciles(&self) -> u64 {
        self.metrics.reconciles_of("sfupool")
    }
}

/// Applies the operator's ClusterRoles and binds them, and the leader Role, to a
/// ServiceAccount `switchboard-operator` in `namespace`. Returns a client holding
/// that ServiceAccount's token, on the operator binary's own client stack
/// (HTTP/2), so that every test exercises it.
pub async fn operator_identity(admin: &Client, namespace: &str) -> Client {
    let config = crate::token_config(&operator_token(admin, namespace).await).await;
    switchboard_operator::api_client::http2_client(config).expect("HTTP/2 client")
}

/// Writes a kubeconfig for the local cluster that authenticates with `token`.
pub fn token_kubeconfig(token: &str, path: &std::path::Path) -> std::path::PathBuf {
    let mut kc = kube::config::Kubeconfig::read_from(&crate::cluster().kubeconfig).expect("admin kubeconfig");
    for auth in &mut kc.auth_infos {
        auth.auth_info = Some(kube::config::AuthInfo { token: Some(token.to_owned().into()), ..Default::default() });
    }
    std::fs::write(path, serde_saphyr::to_string(&kc).expect("kubeconfig serializes")).expect("write kubeconfig");
    path.to_owned()
}

/// Like [`operator_identity`], returning the ServiceAccount token itself.
pub async fn operator_token(admin: &Client, namespace: &str) -> String {
    let resolver = Resolver::new(admin).await;
    for file in [
        "operator-clusterrole.yaml",
        "operator-nodes-clusterrole.yaml",
        "sfu-clusterrole.yaml",
        "signaling-clusterrole.yaml",
        "recorder-clusterrole.yaml",
        "leader-role.yaml",
    ] {
        let text = std::fs::read_to_string(repo_root().join("charts/switchboard/files/rbac").join(file)).unwrap();
        for obj in parse_manifest(&text).unwrap() {
            resolver.apply(admin, &obj, namespace).await.unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    install_admission_policies(admin).await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "switchboard-operator"}})).unwrap();
    match sas.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create operator ServiceAccount: {e}"),
    }
    let subject = json!([{"kind": "ServiceAccount", "name": "switchboard-operator", "namespace": namespace}]);
    let bindings = [
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": format!("switchboard-operator-{namespace}")},
               "roleRef": {
                   "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "switchboard-operator"
               },
               "subjects": subject}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": format!("switchboard-operator-nodes-{namespace}")},
               "roleRef": {
                   "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "switchboard-operator-nodes"
               },
               "subjects": subject}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "switchboard-operator-leader"},
               "roleRef": {
                   "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "switchboard-operator-leader"
               },
               "subjects": subject}),
    ];
    for binding in bindings {
        let obj: DynamicObject = serde_json::from_value(binding).unwrap();
        resolver.apply(admin, &obj, namespace).await.expect("binding");
    }
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}})).unwrap();
    sas.create_token_request("switchboard-operator", &PostParams::default(), &request)
        .await
        .expect("token for the operator")
        .status
        .and_then(|s| s.token)
        .expect("token")
}

/// The chart's admission policies (`charts/switchboard/files/admission/`), as the
/// chart installs them: every operator test runs with them in force.
pub async fn install_admission_policies(admin: &Client) {
    let resolver = Resolver::new(admin).await;
    let dir = repo_root().join("charts/switchboard/files/admission");
    for entry in std::fs::read_dir(&dir).expect("the chart's admission policies") {
        let path = entry.expect("a file").path();
        let text = std::fs::read_to_string(&path).unwrap();
        for obj in parse_manifest(&text).unwrap() {
            resolver.apply(admin, &obj, "default").await.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}

/// Starts an operator replica watching `namespace` with the given client.
pub fn start_operator(client: Client, namespace: &str, identity: &str, lease: Duration) -> OperatorHandle {
    let mut config = OperatorConfig::for_namespace(namespace, identity);
    config.lease_duration = lease;
    config.sfu_startup_timeout = Duration::from_secs(30);
    start_operator_with(client, config)
}

/// Starts an operator replica with `config` (e.g. only some controllers).
pub fn start_operator_with(client: Client, config: OperatorConfig) -> OperatorHandle {
    let identity = config.identity.clone();
    let metrics = Metrics::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(switchboard_operator::run(
        client.clone(),
        config,
        metrics.clone(),
        Health::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    OperatorHandle { identity, metrics, client, task, stop: Some(stop) }
}
