//! Test harness for Switchboard's end-to-end tests against a real local control
//! plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok).
//!
//! * [`cluster`] starts the control plane once per test run: `e2e/cluster/up` is
//!   idempotent and serialised by a lock, so every test binary attaches to the one
//!   the first started (or `./test` started before them).
//! * [`TestNamespace`] gives each test its own namespace.
//! * [`wait_for`] and [`await_condition`] wait on conditions with timeouts, never
//!   fixed sleeps.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::runtime::wait::Condition;
use kube::{Client, Config, Resource, ResourceExt};
use serde::de::DeserializeOwned;

pub mod bench;
pub mod browser;
pub mod fixtures;
pub mod job_runner;
pub mod meetings;
pub mod monitoring;
pub mod netns;
pub mod nodes;
pub mod operator;
pub mod real_nodes;
pub mod sfu_sim;

/// Field manager the tests apply with.
pub const FIELD_MANAGER: &str = "switchboard-e2e";
/// Label on every namespace a test creates.
pub const TEST_LABEL: &str = "switchboard.dev/e2e";

/// The running control plane.
#[derive(Debug)]
pub struct Cluster {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Directory with kubectl, helm and the control plane binaries.
    pub bin: PathBuf,
}

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Starts the local control plane (once per process; `up` itself is idempotent
/// across processes) and returns where it is.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| start_or_attach().unwrap_or_else(|e| panic!("local control plane: {e:#}")))
}

fn start_or_attach() -> anyhow::Result<Cluster> {
    let up = repo_root().join("e2e/cluster/up");
    let output = std::process::Command::new(&up)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", up.display()))?;
    if !output.status.success() {
        bail!("{} failed with {}", up.display(), output.status);
    }
    let stdout = String::from_utf8(output.stdout)?;
    let value = |var: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {var}=")))
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("`up` printed no {var}: {stdout}"))
    };
    let kubeconfig = PathBuf::from(value("KUBECONFIG")?);
    let path = value("PATH")?;
    let bin = PathBuf::from(path.split(':').next().unwrap_or_default());
    Ok(Cluster { kubeconfig, bin })
}

/// A client for the admin kubeconfig, bound to the calling test's runtime.
pub async fn client() -> Client {
    client_for(&cluster().kubeconfig).await
}

/// A client for a given kubeconfig.
pub async fn client_for(kubeconfig: &Path) -> Client {
    Client::try_from(config_for(kubeconfig).await).expect("client")
}

/// The configuration of a kubeconfig, without kube's retries.
pub async fn config_for(kubeconfig: &Path) -> Config {
    let kc = Kubeconfig::read_from(kubeconfig).expect("readable kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("valid kubeconfig");
    // A 429 (a PodDisruptionBudget refusing an eviction) must reach the test, not be retried for minutes.
    config.default_retry = false;
    config
}

/// A client authenticating with a bearer token (a ServiceAccount's), for RBAC tests.
pub async fn client_with_token(token: &str) -> Client {
    Client::try_from(token_config(token).await).expect("client")
}

/// The local cluster's configuration, authenticating with a bearer token.
pub async fn token_config(token: &str) -> Config {
    let mut config = config_for(&cluster().kubeconfig).await;
    config.auth_info = kube::config::AuthInfo { token: Some(token.to_owned().into()), ..Default::default() };
    config
}

/// Applies the CRDs generated from the current Rust types (idempotent, waits for Established).
pub async fn install_crds(client: &Client) {
    switchboard_operator::crd_install::install_crds(client, Duration::from_secs(60))
        .await
        .expect("CRDs install and become Established");
}

/// Runs `kubectl` of the local control plane with the admin kubeconfig.
pub fn kubectl(args: &[&str]) -> std::process::Output {
    let c = cluster();
    std::process::Command::new(c.bin.join("kubectl"))
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .expect("kubectl runs")
}

/// Like [`kubectl`], failing the test on a non-zero exit; returns stdout.
pub fn kubectl_ok(args: &[&str]) -> String {
    succeeded("kubectl", args, kubectl(args))
}

/// The stdout of a command that must have succeeded; otherwise fails the test with its output.
fn succeeded(tool: &str, args: &[&str], out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{tool} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A TCP port free on loopback right now (for a process about to bind it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real redis-server on loopback (Debian package `redis-server`), for tests that run
/// signaling in-process; killed when dropped.
pub struct Redis {
    child: std::process::Child,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
}

impl Redis {
    pub fn start() -> Self {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian package redis-server)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url: format!("redis://127.0.0.1:{port}") }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Kubernetes version of the local control plane, as pinned in
/// `e2e/cluster/versions.env` (e.g. `1.36.3`).
pub fn kubernetes_version() -> String {
    let pins = std::fs::read_to_string(repo_root().join("e2e/cluster/versions.env")).expect("e2e/cluster/versions.env");
    pins.lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VERSION="))
        .map(|v| v.trim().trim_start_matches('v').to_owned())
        .expect("KUBERNETES_VERSION in versions.env")
}

/// Runs `helm` of the local control plane with the admin kubeconfig.
pub fn helm(args: &[&str]) -> std::process::Output {
    let c = cluster();
    std::process::Command::new(c.bin.join("helm"))
        .args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        // Helm's caches stay out of $HOME, one place per run.
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("switchboard-helm/cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("switchboard-helm/config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("switchboard-helm/data"))
        .output()
        .expect("helm runs")
}

/// Like [`helm`], failing the test on a non-zero exit; returns stdout.
pub fn helm_ok(args: &[&str]) -> String {
    succeeded("helm", args, helm(args))
}

/// The chart in this repository.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/switchboard")
}

/// A namespace of one test. Deleted by [`TestNamespace::delete`] at the end of a
/// passing test; a failing test leaves it for inspection.
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` and waits until its `default` ServiceAccount exists
    /// (pods are refused before that).
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = format!("{}-{}", prefix.replace('_', "-"), random_suffix());
        let api: Api<Namespace> = Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some([(TEST_LABEL.to_owned(), "true".to_owned())].into());
        api.create(&PostParams::default(), &ns).await.expect("create test namespace");
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for(&format!("default ServiceAccount in {name}"), Duration::from_secs(30), || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.ok().flatten().is_some() }
        })
        .await;
        Self { name, client: client.clone() }
    }

    /// An API for namespaced resources of this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn delete(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::background()).await;
    }
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    format!("{:08x}", h.finish() as u32)
}

/// Polls `check` until it returns true, failing the test after `timeout`.
/// For state that no watchable condition covers; prefer [`await_condition`].
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `probe` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// Checks that `check` holds throughout `window` (polled), failing the test at the
/// first time it does not. For asserting that something does *not* happen, which
/// no wait can show; keep the window as short as the scenario allows.
pub async fn consistently<F, Fut>(what: &str, window: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let end = tokio::time::Instant::now() + window;
    loop {
        if let Err(why) = check().await {
            panic!("{what} stopped holding: {why}");
        }
        if tokio::time::Instant::now() >= end {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Watches `name` until `condition` holds, failing the test after `timeout`.
pub async fn await_condition<K>(api: &Api<K>, name: &str, timeout: Duration, condition: impl Condition<K>) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let fut = kube::runtime::wait::await_condition(api.clone(), name, condition);
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(Some(obj))) => obj,
        Ok(Ok(None)) => panic!("{name} was deleted while waiting for its condition"),
        Ok(Err(e)) => panic!("watching {name}: {e}"),
        Err(_) => {
            let current = api.get_opt(name).await.ok().flatten();
            panic!("timed out after {timeout:?} waiting on {name}; it is now: {current:#?}")
        }
    }
}

/// Watches `name` until it is gone.
pub async fn await_deleted<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let Some(uid) = api.get_opt(name).await.expect("get").and_then(|o| o.uid()) else {
        return;
    };
    let gone =
        kube::runtime::wait::await_condition(api.clone(), name, kube::runtime::wait::conditions::is_deleted(&uid));
    if tokio::time::timeout(timeout, gone).await.is_err() {
        panic!("timed out after {timeout:?} waiting for {name} to be deleted");
    }
}

/// The API server's refusal of a request: its HTTP code and message.
pub fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.message.clone()),
        Err(other) => panic!("expected a refusal from the API server, got {other}"),
        Ok(obj) => panic!("expected a refusal from the API server, but it accepted: {obj:?}"),
    }
}

/// Parses a (multi-document) YAML manifest.
pub fn parse_manifest(yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).context("parsing YAML")?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| serde_json::from_value(d).context("not a Kubernetes object"))
        .collect()
}

/// Resolves object kinds to API resources through discovery.
pub struct Resolver {
    discovery: Discovery,
}

impl Resolver {
    pub async fn new(client: &Client) -> Self {
        let discovery = Discovery::new(client.clone()).run().await.expect("API discovery");
        Self { discovery }
    }

    pub fn resolve(&self, obj: &DynamicObject) -> (ApiResource, ApiCapabilities) {
        let types = obj.types.as_ref().expect("object has apiVersion and kind");
        let gvk = GroupVersionKind::try_from(types).expect("valid apiVersion");
        self.discovery.resolve_gvk(&gvk).unwrap_or_else(|| panic!("the API server does not serve {gvk:?}"))
    }

    /// The API of `obj`'s kind; namespaced kinds go to `namespace`.
    pub fn api_for(&self, client: &Client, obj: &DynamicObject, namespace: &str) -> Api<DynamicObject> {
        let (ar, caps) = self.resolve(obj);
        match caps.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &ar),
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        }
    }

    /// Server-side applies `obj` into `namespace` (overriding its own namespace).
    pub async fn apply(
        &self,
        client: &Client,
        obj: &DynamicObject,
        namespace: &str,
    ) -> Result<DynamicObject, kube::Error> {
        let mut obj = obj.clone();
        let api = self.api_for(client, &obj, namespace);
        if self.resolve(&obj).1.scope == Scope::Namespaced {
            obj.metadata.namespace = Some(namespace.to_owned());
        }
        let name = obj.name_any();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&obj)).await
    }
}
