//! Benchmark: a node hosting N meetings fails. Measures the time from the fault
//! becoming detectable (the node's NotReady transition, as the API server stores
//! it, plus the pool's `nodeNotReadyAfter`) to each meeting seen re-placed on a
//! healthy pod (by a watch): median, p99 and the last one. Runs the release
//! operator as its own process under the repo's RBAC; spare capacity waits on a
//! second node, as a pool's buffer would provide. Prints a table.
//!
//! `cargo run --release -p switchboard-e2e --bin migration-bench -- [--meetings 100,500]`
//!
//! `--floor 500` measures instead what the API server alone takes: N Meetings (no
//! operator) get one migration-sized status write each, as server-side apply (what
//! the operator sends) and as a JSON merge patch, at several concurrencies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchboard_crds::{Meeting, SfuPool};
use switchboard_e2e::bench::{
    ReleaseOperator, api_server_writes, metrics_text, quantile, simulate_heartbeats, writes_since,
};
use switchboard_e2e::nodes::{self, GROUP_LABEL};
use switchboard_e2e::*;

const PER_POD: i64 = 100;
/// Participants per meeting: 25 meetings fill a pod.
const SIZE: i64 = 4;
const THRESHOLD_SECS: i64 = 5;

enum Mode {
    Migrate(Vec<usize>),
    Floor(usize),
}

fn mode() -> Mode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match argv.as_slice() {
        [] => Mode::Migrate(vec![100, 500]),
        [flag, list] if flag == "--meetings" => {
            Mode::Migrate(list.split(',').map(|n| n.parse().expect("a number")).collect())
        }
        [flag, n] if flag == "--floor" => Mode::Floor(n.parse().expect("a number")),
        _ => panic!("usage: migration-bench [--meetings 100,500 | --floor 500]"),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

struct Row {
    meetings: usize,
    pods: usize,
    p50: f64,
    p99: f64,
    last: f64,
    operator_p50: f64,
    operator_p99: f64,
}

async fn wait_meetings(api: &Api<Meeting>, what: &str, count: usize, check: impl Fn(&Meeting) -> bool) {
    wait_for(what, Duration::from_secs(300), || async {
        let list = api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        list.len() == count && list.iter().all(&check)
    })
    .await;
}

/// Ad-hoc Meetings `m0000`… of SIZE participants, 16 created at a time.
async fn create_meetings(meetings: &Api<Meeting>, count: usize) {
    stream::iter(0..count)
        .for_each_concurrent(16, |i| {
            let meetings = meetings.clone();
            async move {
                let m: Meeting = serde_json::from_value(json!({
                    "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
                    "metadata": {"name": format!("m{i:04}")},
                    "spec": {"title": "bench", "host": "u", "participants": {"expected": SIZE}}}))
                .unwrap();
                meetings.create(&PostParams::default(), &m).await.unwrap();
            }
        })
        .await;
}

fn nodes_of(m: &Meeting) -> Vec<String> {
    m.status
        .as_ref()
        .and_then(|s| s.assignment.as_ref())
        .map(|a| std::iter::once(&a.origin).chain(&a.edges).filter_map(|e| e.node.clone()).collect())
        .unwrap_or_default()
}

async fn run(admin: &Client, count: usize) -> Row {
    let pods = count.div_ceil((PER_POD / SIZE) as usize);
    eprintln!("migration-bench: {count} meetings on {pods} SFU pods of a node that fails");
    let ns = TestNamespace::create(admin, "migration-bench").await;
    let mut operator = ReleaseOperator::start(admin, &ns.name, "migration-bench").await;
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let beats = tokio::spawn(simulate_heartbeats(admin.clone(), ns.name.clone(), running));
    let (a, b) = (format!("{}-a", ns.name), format!("{}-b", ns.name));
    nodes::create_group_node(admin, &a, &ns.name, 250).await;

    let pools: Api<SfuPool> = ns.api();
    let apply_pool = |replicas: usize| {
        let pools = pools.clone();
        let group = ns.name.clone();
        async move {
            let n = replicas as i32;
            let pool = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool",
                "metadata": {"name": "bench"},
                "spec": {"autoscaling": {"minReplicas": n, "maxReplicas": n},
                    "capacity": {"participantsPerPod": PER_POD},
                    "placement": {"strategy": "Packed"},
                    "remediation": {"heartbeatTimeout": "90s", "nodeNotReadyAfter": format!("{THRESHOLD_SECS}s")},
                    "template": {"spec": {"nodeSelector": {GROUP_LABEL: &group},
                        "tolerations": [nodes::group_toleration(&group)],
                        "containers": [{"name": "sfu", "image": "switchboard-sfu:bench"}]}}}});
            pools.patch("bench", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&pool)).await.unwrap();
            wait_for("pool Ready", Duration::from_secs(300), || async {
                pools.get("bench").await.ok().and_then(|p| p.status).is_some_and(|s| s.ready_replicas == n)
            })
            .await;
        }
    };
    apply_pool(pods).await;

    let meetings: Api<Meeting> = ns.api();
    create_meetings(&meetings, count).await;
    wait_meetings(&meetings, "every meeting placed on node a", count, |m| nodes_of(m) == vec![a.clone()]).await;

    // Spare capacity on node b, as the pool's buffer would keep it.
    nodes::taint_node(admin, &a, "bench/full").await;
    nodes::create_group_node(admin, &b, &ns.name, 250).await;
    apply_pool(2 * pods).await;

    let seen: Arc<Mutex<HashMap<String, jiff::Timestamp>>> = Arc::default();
    let (record, node_a) = (seen.clone(), a.clone());
    let watch = tokio::spawn(
        watcher(meetings.clone(), watcher::Config::default()).default_backoff().applied_objects().for_each(move |m| {
            if let Ok(m) = m {
                let moved = !nodes_of(&m).is_empty() && !nodes_of(&m).contains(&node_a);
                if moved {
                    record.lock().unwrap().entry(m.name_any()).or_insert_with(jiff::Timestamp::now);
                }
            }
            futures::future::ready(())
        }),
    );

    let writes_before = api_server_writes().await;
    let node = nodes::make_node_not_ready(admin, &a).await;
    let transition = node_ready_transition(&node);
    let detectable = transition + jiff::SignedDuration::from_secs(THRESHOLD_SECS);
    wait_for("every meeting re-placed", Duration::from_secs(300), || async { seen.lock().unwrap().len() >= count })
        .await;
    watch.abort();
    // What the API server wrote meanwhile, by resource and verb (to stderr: where the time goes).
    let delta = writes_since(&writes_before).await;
    eprintln!("migration-bench: API server writes from the fault to the last re-placement: {delta:?}");
    let metrics = metrics_text(operator.port).await;
    beats.abort();
    let _ = operator.child.kill().await;

    let mut latencies: Vec<f64> =
        seen.lock().unwrap().values().map(|t| t.duration_since(detectable).as_secs_f64()).collect();
    latencies.sort_by(f64::total_cmp);
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_meeting_migration_duration_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    for n in [&a, &b] {
        nodes::delete_node(admin, n).await;
    }
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .delete(&ns.name, &kube::api::DeleteParams::background())
        .await;
    Row {
        meetings: count,
        pods,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        last: percentile(&latencies, 1.0),
        operator_p50: quantile(&buckets, 0.5),
        operator_p99: quantile(&buckets, 0.99),
    }
}

fn node_ready_transition(node: &Node) -> jiff::Timestamp {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
        .expect("a Ready transition time")
}

/// The status a migration writes: phase, assignment on a new pod, one migration entry.
fn migrated_status(i: usize, generation: usize) -> serde_json::Value {
    let at = jiff::Timestamp::now().to_string();
    json!({"phase": "Active", "roomCode": format!("floor{i:07}"),
        "joinUrl": format!("https://meet.example/j/floor{i:07}"),
        "assignment": {"pool": "bench", "at": at,
            "origin": {"pod": format!("bench-{generation}-{:03}", i / 25), "endpoint": "10.0.0.1:7000",
                "participants": SIZE, "node": "b"}},
        "migrations": [{"from": format!("bench-{}-{:03}", generation.saturating_sub(1), i / 25),
            "to": format!("bench-{generation}-{:03}", i / 25), "reason": "NodeNotReady", "at": at,
            "generation": generation}]})
}

/// N status writes of one kind at `concurrency`; returns writes per second.
async fn write_round(meetings: &Api<Meeting>, count: usize, concurrency: usize, generation: usize, apply: bool) -> f64 {
    let start = std::time::Instant::now();
    stream::iter(0..count)
        .for_each_concurrent(concurrency, |i| {
            let meetings = meetings.clone();
            async move {
                let status = migrated_status(i, generation);
                let name = format!("m{i:04}");
                if apply {
                    let patch = json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "status": status});
                    meetings
                        .patch_status(&name, &PatchParams::apply("floor").force(), &Patch::Apply(&patch))
                        .await
                        .unwrap();
                } else {
                    meetings
                        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({"status": status})))
                        .await
                        .unwrap();
                }
            }
        })
        .await;
    count as f64 / start.elapsed().as_secs_f64()
}

async fn floor(admin: &Client, count: usize) {
    let ns = TestNamespace::create(admin, "migration-floor").await;
    let meetings: Api<Meeting> = ns.api();
    create_meetings(&meetings, count).await;
    // The first write of each gives every Meeting the status it would carry when placed.
    write_round(&meetings, count, 32, 0, true).await;
    println!("| status write | concurrency | {count} writes/s | time for {count} |");
    println!("|---|---|---|---|");
    let mut generation = 0;
    for concurrency in [4, 16, 64, 256, 16, 64] {
        for apply in [true, false] {
            generation += 1;
            let rate = write_round(&meetings, count, concurrency, generation, apply).await;
            let kind = if apply { "server-side apply" } else { "JSON merge patch" };
            println!("| {kind} | {concurrency} | {rate:.0} | {:.2} s |", count as f64 / rate);
        }
    }
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .delete(&ns.name, &kube::api::DeleteParams::background())
        .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let admin = client().await;
    install_crds(&admin).await;
    let sizes = match mode() {
        Mode::Floor(count) => return floor(&admin, count).await,
        Mode::Migrate(sizes) => sizes,
    };
    let mut rows = Vec::new();
    for count in sizes {
        rows.push(run(&admin, count).await);
    }
    println!(
        "| meetings on the failed node | SFU pods on it | detectable → re-placed p50 | p99 | last meeting | operator histogram p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s / {:.2} s |",
            r.meetings, r.pods, r.p50, r.p99, r.last, r.operator_p50, r.operator_p99
        );
    }
}
