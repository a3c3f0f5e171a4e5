//! Benchmark: N Meetings created as fast as the API server takes them, against
//! one pool of Ready SFU pods. Measures placements per second, the time from a
//! Meeting's creation to its assignment (p50/p99, seen by a watch), and the
//! operator's peak RSS (the release binary runs as its own process under the
//! repo's RBAC). Checks at the end that no pod is over capacity. Prints a table.
//!
//! `cargo run --release -p switchboard-e2e --bin meeting-bench -- [--meetings 10000] [--pods 40] [--clients 32] [--http 2]`
//!
//! The creating clients speak HTTP/2 as client-go does (a scheduler written in Go),
//! on the operator's client stack; `--http 1` gives each its own HTTP/1.1 connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;
use switchboard_crds::{Meeting, SfuPool};
use switchboard_e2e::bench::{
    ReleaseOperator, api_server_writes, hwm_kib, metric_sum, metrics_text, rss_kib, simulate_heartbeats, writes_since,
};
use switchboard_e2e::*;

const PER_POD: u64 = 2_000;

struct Args {
    meetings: usize,
    pods: usize,
    clients: usize,
    /// HTTP version of the creating clients.
    http: usize,
}

fn args() -> Args {
    let mut a = Args { meetings: 10_000, pods: 40, clients: 32, http: 2 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok()).expect("a number after each flag");
        match pair[0].as_str() {
            "--meetings" => a.meetings = value,
            "--pods" => a.pods = value,
            "--clients" => a.clients = value,
            "--http" => a.http = value,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// What the benchmark reads of a watched Meeting: its name, resourceVersion and
/// whether it has an assignment. The rest is skipped, not parsed into values: the
/// benchmark's own watch shares the machine with the API server it measures.
#[derive(Clone, Deserialize)]
struct Seen {
    metadata: SeenMeta,
    #[serde(default)]
    status: Option<SeenStatus>,
}

#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeenMeta {
    name: String,
    resource_version: String,
}

#[derive(Clone, Deserialize)]
struct SeenStatus {
    #[serde(default)]
    assignment: Option<IgnoredAny>,
}

/// Records when each Meeting of `namespace` first appears and when it first has
/// an assignment, resuming the watch where it ended.
async fn watch_assignments(client: Client, namespace: String, assigned: Times, appeared: Times) {
    let request = kube::core::Request::new(Meeting::url_path(&(), Some(&namespace)));
    let mut version = "0".to_owned();
    loop {
        let params = WatchParams::default().timeout(290);
        let Ok(events) = client.request_events::<Seen>(request.watch(&params, &version).expect("watch request")).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        futures::pin_mut!(events);
        while let Ok(Some(event)) = events.try_next().await {
            match event {
                WatchEvent::Added(m) | WatchEvent::Modified(m) => {
                    let now = Instant::now();
                    appeared.lock().unwrap().entry(m.metadata.name.clone()).or_insert(now);
                    if m.status.is_some_and(|s| s.assignment.is_some()) {
                        assigned.lock().unwrap().entry(m.metadata.name).or_insert(now);
                    }
                    version = m.metadata.resource_version;
                }
                WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                WatchEvent::Deleted(_) => {}
                // An error such as 410 Gone (too old): start again from the cache;
                // assignments seen late count late.
                WatchEvent::Error(_) => {
                    version = "0".to_owned();
                    break;
                }
            }
        }
    }
}

type Times = Arc<Mutex<HashMap<String, Instant>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    eprintln!(
        "meeting-bench: {} meetings on {} SFU pods, {} creating clients on HTTP/{}",
        args.meetings, args.pods, args.clients, args.http
    );
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "meeting-bench").await;
    // The release operator binary, as its own process.
    let mut operator = ReleaseOperator::start(&admin, &ns.name, "meeting-bench").await;
    let (pid, port) = (operator.pid, operator.port);
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let beats = tokio::spawn(simulate_heartbeats(admin.clone(), ns.name.clone(), running.clone()));

    // One pool, sized up front: the benchmark is about placement, not scaling.
    let pools: Api<SfuPool> = ns.api();
    let n = args.pods as i32;
    let pool = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool", "metadata": {"name": "bench"},
        "spec": {"autoscaling": {"minReplicas": n, "maxReplicas": n}, "capacity": {"participantsPerPod": PER_POD},
            "remediation": {"heartbeatTimeout": "90s"},
            "template": {"spec": {"containers": [{"name": "sfu", "image": "switchboard-sfu:bench"}]}}}});
    pools.patch("bench", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&pool)).await.unwrap();
    wait_for("pool Ready", Duration::from_secs(180), || async {
        pools.get("bench").await.ok().and_then(|p| p.status).is_some_and(|s| s.ready_replicas == n)
    })
    .await;

    // Watch assignments as they land.
    let assigned: Times = Arc::default();
    // When each meeting first reached the watch: splits its latency into the API
    // server's part (request → event) and the operator's (event → assignment).
    let appeared: Times = Arc::default();
    let watch = tokio::spawn(watch_assignments(admin.clone(), ns.name.clone(), assigned.clone(), appeared.clone()));

    let creators = match args.http {
        1 => admin.clone(),
        2 => switchboard_operator::api_client::http2_client(config_for(&cluster().kubeconfig).await)
            .expect("HTTP/2 client"),
        other => panic!("--http {other}: 1 or 2"),
    };
    let meetings: Api<Meeting> = Api::namespaced(creators, &ns.name);
    // Each creating client opens its connection before the clock starts (what a
    // scheduler that has been running has): the storm measures placements, not TLS
    // handshakes, and a first request that waits on the API server is not counted.
    stream::iter(0..args.clients)
        .for_each_concurrent(args.clients, |_| {
            let meetings = meetings.clone();
            async move {
                meetings.list_metadata(&ListParams::default().limit(1)).await.expect("listing meetings");
            }
        })
        .await;
    let writes_before = api_server_writes().await;
    // Per meeting: when its creation was sent, and when it was answered.
    let created: Arc<Mutex<HashMap<String, (Instant, Instant)>>> = Arc::default();
    let start = Instant::now();
    let mut peak_rss = 0u64;
    let creating = {
        let created = created.clone();
        let meetings = meetings.clone();
        stream::iter(0..args.meetings).for_each_concurrent(args.clients, move |i| {
            let (meetings, created) = (meetings.clone(), created.clone());
            async move {
                let name = format!("m{i:05}");
                let m: Meeting = serde_json::from_value(json!({
                    "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": name},
                    "spec": {"title": "bench", "host": "u", "participants": {"expected": 1 + i % 8}}}))
                .unwrap();
                let at = Instant::now();
                loop {
                    match meetings.create(&PostParams::default(), &m).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(s)) if s.code == 409 => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                created.lock().unwrap().insert(name, (at, Instant::now()));
            }
        })
    };
    tokio::pin!(creating);
    let mut created_all = None;
    loop {
        tokio::select! {
            _ = &mut creating, if created_all.is_none() => created_all = Some(start.elapsed()),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        peak_rss = peak_rss.max(rss_kib(pid));
        if assigned.lock().unwrap().len() >= args.meetings {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "not all placed after 900 s: {}",
            assigned.lock().unwrap().len()
        );
    }
    let all_placed = start.elapsed();
    peak_rss = peak_rss.max(hwm_kib(pid));
    let metrics = metrics_text(port).await;
    // What the API server wrote meanwhile, by resource and verb (to stderr: where the time goes).
    eprintln!(
        "meeting-bench: API server writes from the first creation to the last placement: {:?}",
        writes_since(&writes_before).await
    );
    watch.abort();
    beats.abort();

    let created = created.lock().unwrap().clone();
    let assigned = assigned.lock().unwrap().clone();
    let appeared = appeared.lock().unwrap().clone();
    // Per meeting: creation → assignment, and when it was created (seconds into the run); slowest first.
    let mut timed: Vec<(f64, f64)> = assigned
        .iter()
        .filter_map(|(n, at)| {
            created
                .get(n)
                .map(|(c, _)| (at.saturating_duration_since(*c).as_secs_f64(), c.duration_since(start).as_secs_f64()))
        })
        .collect();
    timed.sort_by(|a, b| b.0.total_cmp(&a.0));
    let latencies: Vec<f64> = timed.iter().rev().map(|(latency, _)| *latency).collect();
    // Sustained rate: placements between the 10th and the 90th percentile of completion.
    let mut done: Vec<Instant> = assigned.values().copied().collect();
    done.sort();
    let (a, b) = (done[done.len() / 10], done[done.len() * 9 / 10]);
    let sustained = (done.len() * 8 / 10) as f64 / b.duration_since(a).as_secs_f64();

    // No pod over capacity, ledgers agree.
    let pods: Api<Pod> = ns.api();
    let mut worst = 0u64;
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        let total: u64 = p
            .annotations()
            .get("switchboard.dev/placements")
            .map(|raw| serde_json::from_str::<HashMap<String, serde_json::Value>>(raw).unwrap())
            .unwrap_or_default()
            .values()
            .map(|v| v["seats"].as_u64().unwrap())
            .sum();
        assert!(total <= PER_POD, "pod {} over capacity: {total}", p.name_any());
        worst = worst.max(total);
    }
    let errors = metric_sum(&metrics, "switchboard_reconcile_errors_total{controller=\"meeting\"");
    // Reconciles per meeting: more than one means work repeated (a trigger that
    // re-queued meetings already on their way).
    let reconciles = metric_sum(&metrics, "switchboard_reconciles_total{controller=\"meeting\"");
    // Time inside a reconcile (the ledger and status writes, in sequence), beside the total.
    let reconcile_seconds = metric_sum(&metrics, "switchboard_reconcile_duration_seconds_sum{controller=\"meeting\"");
    eprintln!("meeting-bench: mean meeting reconcile {:.3} s", reconcile_seconds / reconciles.max(1.0));
    let _ = operator.child.kill().await;
    // Where the slow ones came from: placements that failed first (by reason), and
    // when the slowest 1% were created.
    let failed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_meeting_placements_total{") && l.contains("result=\"failed\""))
        .collect();
    eprintln!("meeting-bench: failed placement attempts (retried): {failed:?}");
    let mut by_second: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    for (_, created_at) in timed.iter().take(timed.len() / 100) {
        *by_second.entry(*created_at as u64).or_default() += 1;
    }
    eprintln!("meeting-bench: the slowest 1% by second of creation: {by_second:?}");
    // Per second of creation: how many, and their median and slowest latency.
    // The API server's part of each beside the total: the creation's answer, and
    // its first event on the watch.
    let mut seconds: std::collections::BTreeMap<u64, [Vec<f64>; 3]> = std::collections::BTreeMap::new();
    for (name, (at, answer)) in &created {
        let (Some(placed), Some(seen)) = (assigned.get(name), appeared.get(name)) else { continue };
        let second = seconds.entry(at.duration_since(start).as_secs()).or_default();
        for (i, t) in [placed, answer, seen].into_iter().enumerate() {
            second[i].push(t.saturating_duration_since(*at).as_secs_f64());
        }
    }
    let timeline: Vec<String> = seconds
        .into_iter()
        .map(|(second, mut l)| {
            l.iter_mut().for_each(|l| l.sort_by(f64::total_cmp));
            let [total, answer, seen] = l;
            let (p50, max) = (percentile(&total, 0.5), percentile(&total, 1.0));
            format!(
                "{second}s: {} p50 {p50:.2} (answered {:.2}, on the watch {:.2}) max {max:.2}",
                total.len(),
                percentile(&answer, 0.5),
                percentile(&seen, 0.5)
            )
        })
        .collect();
    eprintln!("meeting-bench: by second of creation: {}", timeline.join("; "));

    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| meetings, SFU pods, creating clients | {} meetings, {} pods of {PER_POD}, {} clients on HTTP/{} |",
        args.meetings, args.pods, args.clients, args.http
    );
    println!(
        "| all created (API) | {:.1} s ({:.0}/s) |",
        created_all.unwrap_or(all_placed).as_secs_f64(),
        args.meetings as f64 / created_all.unwrap_or(all_placed).as_secs_f64()
    );
    println!(
        "| all placed | {:.1} s ({:.0} placements/s overall) |",
        all_placed.as_secs_f64(),
        args.meetings as f64 / all_placed.as_secs_f64()
    );
    println!("| sustained placements (10th to 90th percentile) | {sustained:.0}/s |");
    println!(
        "| creation → assignment p50 / p99 / max | {:.2} s / {:.2} s / {:.2} s |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!("| fullest pod | {worst} of {PER_POD} seats (none over) |");
    println!("| reconcile errors (retried) | {errors:.0} |");
    println!("| meeting reconciles | {reconciles:.0} ({:.2} per meeting) |", reconciles / args.meetings as f64);
    println!("| operator peak RSS | {:.1} MiB |", peak_rss as f64 / 1024.0);

    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .delete(&ns.name, &kube::api::DeleteParams::background())
        .await;
}
