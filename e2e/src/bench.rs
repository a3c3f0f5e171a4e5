//! Pieces the benchmark binaries share: the operator's memory and metrics, and
//! simulated SFU heartbeats at a rate the 2-core API server takes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use switchboard_heartbeat::{Heartbeat, Load, POOL_LABEL, SfuState};

/// Quantile from a Prometheus histogram's cumulative buckets (linear inside a bucket).
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let want = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= want {
            if le.is_infinite() {
                return prev.0;
            }
            let within = if count > prev.1 { (want - prev.1) / (count - prev.1) } else { 1.0 };
            return prev.0 + (le - prev.0) * within;
        }
        prev = (le, count);
    }
    prev.0
}

pub fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

pub fn hwm_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM:")
}

pub fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

pub async fn metrics_text(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("operator metrics port");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// Simulated SFUs: a pod beats as soon as it runs, then every 30 s (heartbeat
/// timeout 90 s). Real SFUs beat every 2 s; at 2,000 pods that alone would be
/// 1,000 writes/s, more than this 2-core machine's API server takes next to the
/// rest, and the benchmark is about the operator. Pods are watched, not listed.
/// Returns the number of Running pods seen so far through `running`.
pub async fn simulate_heartbeats(client: Client, ns: String, running: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use kube::runtime::{WatchStreamExt, watcher};
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let (store, writer) = kube::runtime::reflector::store();
    let watch = watcher(pods, watcher::Config::default().labels(POOL_LABEL))
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    tokio::spawn(watch.for_each(|_| futures::future::ready(())));
    let mut last: HashMap<String, Instant> = HashMap::new();
    loop {
        let pods = store.state();
        let is_running = |p: &Pod| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.metadata.deletion_timestamp.is_none()
        };
        running.store(pods.iter().filter(|p| is_running(p)).count(), std::sync::atomic::Ordering::Relaxed);
        let due: Vec<(String, String, String)> = pods
            .iter()
            .filter(|p| is_running(p))
            .filter(|p| last.get(&p.name_any()).is_none_or(|t| t.elapsed() > Duration::from_secs(30)))
            .map(|p| {
                let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
                (p.name_any(), p.labels()[POOL_LABEL].clone(), ip)
            })
            .collect();
        for (name, _, _) in &due {
            last.insert(name.clone(), Instant::now());
        }
        stream::iter(due)
            .for_each_concurrent(16, |(name, pool, ip)| {
                let leases = leases.clone();
                let ns = ns.clone();
                async move {
                    let beat = Heartbeat::new(SfuState::Ready, format!("http://{ip}:7880"), Load::default());
                    let lease = beat.to_lease(&ns, &name, &pool, jiff::Timestamp::now(), Duration::from_secs(90));
                    let _ =
                        leases.patch(&name, &PatchParams::apply("simulated-sfu").force(), &Patch::Apply(&lease)).await;
                }
            })
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Names an operator binary for the benchmarks to run instead of building this tree's.
pub const OPERATOR_BINARY_ENV: &str = "SWITCHBOARD_BENCH_OPERATOR";

/// The release operator binary, running as its own process under the repo's RBAC
/// (a ServiceAccount token), watching one namespace. Killed when dropped.
pub struct ReleaseOperator {
    pub child: tokio::process::Child,
    pub pid: u32,
    /// Port of its `/metrics`.
    pub port: u16,
    /// Where its log and kubeconfig are.
    pub dir: std::path::PathBuf,
}

impl ReleaseOperator {
    /// Builds the release binary (if needed) and starts it for `namespace`.
    pub async fn start(admin: &Client, namespace: &str, bench: &str) -> Self {
        let token = crate::operator::operator_token(admin, namespace).await;
        let dir = std::env::temp_dir().join(format!("{bench}-{namespace}"));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = crate::operator::token_kubeconfig(&token, &dir.join("operator.kubeconfig"));
        let binary = match std::env::var_os(OPERATOR_BINARY_ENV) {
            // Another build (an A/B against an older commit, `e2e/bench-ab`).
            Some(path) => std::path::PathBuf::from(path),
            None => {
                let status = std::process::Command::new("cargo")
                    .args(["build", "--release", "-q", "-p", "operator", "--bin", "operator"])
                    .current_dir(crate::repo_root())
                    .status()
                    .unwrap();
                assert!(status.success(), "building the operator");
                crate::repo_root().join("target/release/operator")
            }
        };
        eprintln!("{bench}: operator binary {}", binary.display());
        let port = 18000 + (std::process::id() % 1000) as u16;
        let child = tokio::process::Command::new(&binary)
            .env("KUBECONFIG", &kubeconfig)
            .env("SWITCHBOARD_WATCH_NAMESPACE", namespace)
            .env("SWITCHBOARD_LEADER_NAMESPACE", namespace)
            .env("SWITCHBOARD_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("operator.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        Self { child, pid, port, dir }
    }
}

/// The sum of a Prometheus text exposition's samples whose line starts with
/// `series` (a name and the opening of its labels); 0 when there are none.
pub fn metric_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b) // (an empty f64 `sum()` is -0)
}

/// The API server's write requests so far, by "resource verb" (its /metrics).
pub async fn api_server_writes() -> HashMap<String, f64> {
    let text =
        tokio::task::spawn_blocking(|| crate::kubectl_ok(&["get", "--raw", "/metrics"])).await.unwrap_or_default();
    let mut writes = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |name: &str| {
            line.split(&format!("{name}=\"")).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_owned()
        };
        let verb = label("verb");
        if !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY") {
            continue;
        }
        let key = format!("{}/{} {verb}", label("resource"), label("subresource"));
        *writes.entry(key).or_insert(0.0) += line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    }
    writes
}

/// The API server's writes since `before`, by "resource verb", most first.
pub async fn writes_since(before: &HashMap<String, f64>) -> Vec<(String, f64)> {
    let after = api_server_writes().await;
    let mut delta: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .collect();
    delta.sort_by(|a, b| b.1.total_cmp(&a.1));
    delta
}
