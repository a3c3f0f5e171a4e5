//! Benchmark: N pools of M SFU pods each on K kwok nodes, from nothing to every
//! pool reporting M Ready pods. Runs the release operator binary as its own
//! process (under the repo's RBAC) so that its peak RSS is measured, and
//! simulates the SFUs' heartbeats. Prints a table.
//!
//! `cargo run --release -p switchboard-e2e --bin pool-bench -- [--pools 100] [--pods-per-pool 20] [--nodes 50]`

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use switchboard_crds::SfuPool;
use switchboard_e2e::bench::{ReleaseOperator, hwm_kib, metrics_text, quantile, rss_kib, simulate_heartbeats};
use switchboard_e2e::*;

struct Args {
    pools: usize,
    pods_per_pool: usize,
    nodes: usize,
}

fn args() -> Args {
    let mut a = Args { pools: 100, pods_per_pool: 20, nodes: 50 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok()).expect("a number after each flag");
        match pair[0].as_str() {
            "--pools" => a.pools = value,
            "--pods-per-pool" => a.pods_per_pool = value,
            "--nodes" => a.nodes = value,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn parse_metrics(text: &str) -> (f64, Vec<(f64, f64)>) {
    let mut reconciles = 0.0;
    let mut buckets = Vec::new();
    for line in text.lines() {
        if line.starts_with("switchboard_reconciles_total{controller=\"sfupool\"}") {
            reconciles = line.rsplit(' ').next().unwrap().parse().unwrap_or(0.0);
        }
        if let Some(rest) = line.strip_prefix("switchboard_reconcile_duration_seconds_bucket{") {
            if !rest.contains("controller=\"sfupool\"") {
                continue;
            }
            let le = rest.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
            let count = line.rsplit(' ').next().unwrap().parse().unwrap_or(0.0);
            buckets.push((le, count));
        }
    }
    (reconciles, buckets)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    let total = args.pools * args.pods_per_pool;
    eprintln!(
        "pool-bench: {} pools x {} pods = {total} SFU pods on {} nodes",
        args.pools, args.pods_per_pool, args.nodes
    );
    let admin = client().await;
    install_crds(&admin).await;

    // Nodes for the benchmark only; pools select them.
    stream::iter(0..args.nodes)
        .for_each_concurrent(16, |i| {
            let admin = admin.clone();
            async move {
                let zone = format!("eu-west-1{}", (b'a' + (i % 3) as u8) as char);
                nodes::create_node(&admin, &format!("bench-node-{i}"), "eu-west-1", &zone).await;
                let label = json!({"metadata": {"labels": {"switchboard.dev/bench": "true"}}});
                Api::<Node>::all(admin)
                    .patch(&format!("bench-node-{i}"), &PatchParams::default(), &Patch::Merge(&label))
                    .await
                    .unwrap();
            }
        })
        .await;

    let ns = TestNamespace::create(&admin, "pool-bench").await;
    // The release operator binary, as its own process.
    let mut operator = ReleaseOperator::start(&admin, &ns.name, "pool-bench").await;
    let (pid, port) = (operator.pid, operator.port);

    // Simulated SFUs: every Running pod beats every 10 s (heartbeat timeout 60 s).
    let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let beats = tokio::spawn(simulate_heartbeats(admin.clone(), ns.name.clone(), running.clone()));

    let pools: Api<SfuPool> = ns.api();
    let start = Instant::now();
    stream::iter(0..args.pools)
        .for_each_concurrent(16, |i| {
            let pools = pools.clone();
            let n = args.pods_per_pool as i32;
            async move {
                let pool = json!({
                    "apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool",
                    "metadata": {"name": format!("pool-{i:03}")},
                    "spec": {
                        "autoscaling": {"minReplicas": n, "maxReplicas": n * 2},
                        "capacity": {"participantsPerPod": 250},
                        "remediation": {"heartbeatTimeout": "90s"},
                        "placement": {"strategy": if i % 2 == 0 { "Packed" } else { "Distributed" }},
                        "template": {"spec": {
                            "nodeSelector": {"switchboard.dev/bench": "true"},
                            "containers": [{
                                "name": "sfu", "image": "switchboard-sfu:bench",
                                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
                            }]
                        }}
                    }
                });
                pools
                    .patch(&format!("pool-{i:03}"), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&pool))
                    .await
                    .unwrap();
            }
        })
        .await;
    let created = start.elapsed();

    let mut peak_rss_kib = 0u64;
    let mut all_pods_at = None;
    let converged = loop {
        peak_rss_kib = peak_rss_kib.max(rss_kib(pid));
        let list = pools.list(&ListParams::default()).await.unwrap();
        let ready: usize =
            list.items.iter().filter_map(|p| p.status.as_ref()).map(|s| s.ready_replicas.max(0) as usize).sum();
        if all_pods_at.is_none() && running.load(std::sync::atomic::Ordering::Relaxed) >= total {
            all_pods_at = Some(start.elapsed());
        }
        if ready == total {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(600) {
            panic!("not converged after 600 s: {ready} of {total} Ready; see {}", operator.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let text = metrics_text(port).await;
    let (reconciles, buckets) = parse_metrics(&text);
    peak_rss_kib = peak_rss_kib.max(hwm_kib(pid));
    beats.abort();
    let _ = operator.child.kill().await;

    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| pools x pods per pool | {} x {} = {total} SFU pods on {} kwok nodes |",
        args.pools, args.pods_per_pool, args.nodes
    );
    println!("| pools created (API) | {:.1} s |", created.as_secs_f64());
    println!("| all pods Running | {:.1} s |", all_pods_at.unwrap_or(converged).as_secs_f64());
    println!("| converged (every pool: all pods Ready in status) | {:.1} s |", converged.as_secs_f64());
    println!("| reconciles | {reconciles:.0} ({:.1}/s) |", reconciles / converged.as_secs_f64());
    println!(
        "| reconcile latency p50 / p99 | {:.1} ms / {:.1} ms |",
        quantile(&buckets, 0.5) * 1e3,
        quantile(&buckets, 0.99) * 1e3
    );
    println!("| operator peak RSS | {:.1} MiB |", peak_rss_kib as f64 / 1024.0);

    // Clean up: the namespace (pods go with their pools) and the bench nodes.
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .delete(&ns.name, &DeleteParams::background())
        .await;
    for i in 0..args.nodes {
        nodes::delete_node(&admin, &format!("bench-node-{i}")).await;
    }
}
