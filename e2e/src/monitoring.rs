//! The monitoring tools, `promtool` and `prometheus`, built from the pinned Prometheus
//! module by `e2e/monitoring/build` (cached outside the repo like the cluster's
//! binaries; `./test` builds them before the tests run).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};

use serde_json::Value;

use crate::{chart_dir, repo_root};

/// The directory holding `promtool` and `prometheus` (built once per machine, looked up
/// once per process).
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build().unwrap_or_else(|e| panic!("monitoring tools: {e:#}")))
}

fn build() -> anyhow::Result<PathBuf> {
    let script = repo_root().join("e2e/monitoring/build");
    let output = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed with {}", script.display(), output.status);
    }
    let stdout = String::from_utf8(output.stdout)?;
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default());
    if !dir.join("promtool").is_file() {
        bail!("{} printed {stdout:?}, which holds no promtool", script.display());
    }
    Ok(dir)
}

/// Runs `promtool check metrics` (parse and lint) on `text` in the classic Prometheus
/// text format: `Ok` if it passes, otherwise its exit status and what it printed.
pub fn check_metrics(text: &str) -> anyhow::Result<()> {
    let mut child = Command::new(bin().join("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool runs")?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = text.to_owned();
    // Written from a thread, so a promtool that answers before reading all cannot block us.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().context("promtool finishes")?;
    let _ = writer.join();
    if !output.status.success() {
        bail!(
            "promtool check metrics exited with {}:\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The dashboards under charts/switchboard/dashboards: (name, text), sorted by name.
pub fn dashboard_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(chart_dir().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    files.sort();
    files
}

/// Grafana's own variables, with the plain values PromQL gets for them in the checks.
pub const GRAFANA_BUILTINS: &[(&str, &str)] =
    &[("__rate_interval", "1m"), ("__interval", "30s"), ("__range", "1h"), ("__range_s", "3600")];

/// `expr` with its Grafana variables (`$x`, `${x}`, `${x:fmt}`) replaced: the built-in
/// intervals by durations, the dashboard's own variables by `value` (a plain label value
/// for a parse check; `.*` to query a live Prometheus); and the names of the variables
/// it used.
pub fn substitute_variables(expr: &str, value: &str) -> (String, Vec<String>) {
    let (mut out, mut used) = (String::new(), Vec::new());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("a closed ${…}");
            (braced[..end].split(':').next().unwrap().to_owned(), end + 2)
        } else {
            let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (after[..end].to_owned(), end)
        };
        assert!(!name.is_empty(), "a lone $ in {expr}");
        out.push_str(GRAFANA_BUILTINS.iter().find(|(n, _)| *n == name).map_or(value, |(_, v)| v));
        used.push(name);
        rest = &after[len..];
    }
    out.push_str(rest);
    (out, used)
}

/// Every PromQL expression of a dashboard with Grafana's variables replaced (the
/// dashboard's own by `value`, see [`substitute_variables`]): (where, expression). Panel
/// targets, and the selectors of the `label_values(…)` variables.
pub fn dashboard_queries(name: &str, dashboard: &Value, value: &str) -> Vec<(String, String)> {
    let defined: Vec<&str> =
        dashboard["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    let mut queries = Vec::new();
    let mut add = |place: String, expr: &str| {
        let (expr, used) = substitute_variables(expr, value);
        for var in used {
            assert!(
                defined.contains(&var.as_str()) || GRAFANA_BUILTINS.iter().any(|(n, _)| *n == var),
                "{place}: ${var} is not a variable of the dashboard"
            );
        }
        queries.push((place, expr));
    };
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            add(format!("{name} panel {} {}", panel["id"], target["refId"]), target["expr"].as_str().unwrap());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let query = var["query"]["query"].as_str().or(var["query"].as_str()).unwrap();
            let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("label_values()");
            let selector = inner.rsplit_once(',').map_or(inner, |(s, _)| s).trim();
            add(format!("{name} variable {}", var["name"]), selector);
        }
    }
    queries
}

/// The chart's alerts (`files/monitoring/alerts.yaml`): (alert name, expression).
pub fn alert_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(chart_dir().join("files/monitoring/alerts.yaml")).unwrap();
    let alerts: Value = serde_saphyr::from_str(&text).unwrap();
    let mut out = Vec::new();
    for group in alerts["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            out.push((format!("alert {}", rule["alert"]), rule["expr"].as_str().unwrap().to_owned()));
        }
    }
    out
}

/// The pinned Prometheus server, scraping the Switchboard pods of one namespace as the
/// chart's PodMonitors would (pod discovery through a kubeconfig, the same relabeling:
/// `namespace`, `pod`, `switchboard_dev_pool`, `switchboard_dev_signaling_pool`). Killed
/// when dropped.
pub struct Prometheus {
    child: std::process::Child,
    /// Its HTTP API, e.g. `http://127.0.0.1:19090`.
    pub url: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus for `namespace`, scraping every `interval` (e.g. "2s").
    pub fn start(kubeconfig: &Path, namespace: &str, interval: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("switchboard-prometheus-{namespace}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            r#"global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}
scrape_configs:
  - job_name: switchboard-pods
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: {kubeconfig}
        namespaces: {{names: [{namespace}]}}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_managed_by]
        regex: switchboard
        action: keep
      - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_component, __meta_kubernetes_pod_container_port_name]
        regex: sfu;api|signaling;http|recorder;http
        action: keep
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_label_switchboard_dev_pool]
        target_label: switchboard_dev_pool
      - source_labels: [__meta_kubernetes_pod_label_switchboard_dev_signaling_pool]
        target_label: switchboard_dev_signaling_pool
"#,
            kubeconfig = kubeconfig.display()
        );
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(bin().join("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("prometheus starts")?;
        Ok(Self { child, url: format!("http://127.0.0.1:{port}"), dir })
    }

    /// Its log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: the `data` of a successful answer, or the error Prometheus gave.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> anyhow::Result<Value> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/{path}", self.url))
            .query(query)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await?
            .json()
            .await?;
        if answer["status"] != "success" {
            bail!("{path} {query:?}: {answer}");
        }
        Ok(answer["data"].clone())
    }

    /// An instant query's result vector (an error for a query Prometheus refuses).
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api("query", &[("query", expr)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// KEDA's operator and external-metrics adapter on the local cluster
/// (`e2e/monitoring/keda up`: host processes, the APIService registered once the
/// adapter answers), for one test. Dropping it runs `e2e/monitoring/keda down`
/// (the APIService unregistered first, then both stopped). Delete the test's
/// ScaledObjects before (they carry KEDA's finalizer; [`Keda::delete_scaled_objects`]).
pub struct Keda {
    script: PathBuf,
}

impl Keda {
    /// Starts KEDA (building it first when its binaries are not cached).
    pub fn start() -> anyhow::Result<Self> {
        let script = repo_root().join("e2e/monitoring/keda");
        let output = Command::new(&script).arg("up").stderr(Stdio::inherit()).output().context("running keda up")?;
        if !output.status.success() {
            bail!("{} up failed with {}", script.display(), output.status);
        }
        Ok(Self { script })
    }

    /// Deletes every ScaledObject of `namespace` and waits until KEDA has let them go
    /// (its finalizer removes the HPA it made).
    pub fn delete_scaled_objects(&self, namespace: &str) {
        let _ = crate::kubectl(&["delete", "scaledobjects.keda.sh", "--all", "-n", namespace, "--timeout=60s"]);
    }
}

impl Drop for Keda {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).arg("down").stderr(Stdio::inherit()).status();
    }
}
