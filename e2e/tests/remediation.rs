//! Failure detection and migration against the real control plane, on kwok
//! nodes each test owns: a node that fails with 100 meetings, an SFU whose Lease
//! expires, `kubectl drain` of a busy and of an idle node, a flapping node, and an
//! operator restarted in the middle of a migration.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use switchboard_crds::{Meeting, SfuPool};
use switchboard_e2e::fixtures::{Setup, apply, await_events, pool, setup};
use switchboard_e2e::meetings::*;
use switchboard_e2e::nodes::{self, GROUP_LABEL};
use switchboard_e2e::operator::{operator_identity, start_operator};
use switchboard_e2e::sfu_sim::SimulatedSfus;
use switchboard_e2e::*;

const TIMEOUT: Duration = Duration::from_secs(90);
const POOL: &str = "fleet";
const DRAINING: &str = "switchboard.dev/draining-since";
const FAILED_TAINT: &str = "switchboard.dev/node-failed";
/// A NoSchedule taint the tests use to keep new pods off a node (not a drain).
const FULL_TAINT: &str = "e2e/full";

/// A Packed pool of 100 participants per pod, pinned to the test's node group.
fn pinned_pool(group: &str, min: i32, remediation: Value) -> Value {
    let mut remediation = remediation;
    remediation["heartbeatTimeout"] = json!("4s");
    pool(
        POOL,
        json!({"minReplicas": min, "maxReplicas": 40}),
        json!({
            "placement": {"strategy": "Packed"},
            "remediation": remediation,
            "template": {"spec": {
                "nodeSelector": {GROUP_LABEL: group},
                "tolerations": [nodes::group_toleration(group)],
                "containers": [{"name": "sfu", "image": "switchboard-sfu:test",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]
            }}
        }),
    )
}

struct Fleet {
    admin: Client,
    ns: String,
    group: String,
    pools: Api<SfuPool>,
    meetings: Api<Meeting>,
    pods: Api<Pod>,
    remediation: Value,
}

impl Fleet {
    fn new(admin: &Client, ns: &str, remediation: Value) -> Self {
        Self {
            admin: admin.clone(),
            ns: ns.into(),
            group: ns.into(),
            pools: Api::namespaced(admin.clone(), ns),
            meetings: Api::namespaced(admin.clone(), ns),
            pods: Api::namespaced(admin.clone(), ns),
            remediation,
        }
    }

    fn node(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.ns)
    }

    async fn set_min(&self, min: i32) {
        apply(&self.pools, &pinned_pool(&self.group, min, self.remediation.clone())).await;
    }

    /// Node `a` with `pods` SFU pods filled by `count` meetings of `size`; then
    /// node `b` (room for `b_max` pods) with `spare` more pods, and `a` full.
    async fn busy_node_and_spare(&self, count: usize, size: i32, pods: i32, spare: i32, b_max: u32) -> Vec<String> {
        let (a, b) = (self.node("a"), self.node("b"));
        nodes::create_group_node(&self.admin, &a, &self.group, 110).await;
        self.set_min(pods).await;
        await_pool_ready(&self.admin, &self.ns, POOL, pods).await;
        // Full from now on: a buffer pod the autoscaler adds while the meetings arrive
        // must not land on `a` (it waits for `b`).
        nodes::taint_node(&self.admin, &a, FULL_TAINT).await;
        let names: Vec<String> = (0..count).map(|i| format!("m{i:03}")).collect();
        futures::stream::iter(names.iter())
            .for_each_concurrent(16, |n| async move {
                create(&self.meetings, &meeting(n, size, json!({}))).await;
            })
            .await;
        let placed = self.await_meetings("every meeting placed", |m| assignment_nodes(m).is_some()).await;
        for m in &placed {
            assert_eq!(assignment_nodes(m).unwrap(), vec![a.clone()], "{} starts on node a", m.name_any());
        }
        nodes::create_group_node(&self.admin, &b, &self.group, b_max).await;
        self.set_min(pods + spare).await;
        await_pool_ready(&self.admin, &self.ns, POOL, pods + spare).await;
        names
    }

    /// Waits until every Meeting of the namespace passes `check`.
    async fn await_meetings(&self, what: &str, check: impl Fn(&Meeting) -> bool) -> Vec<Meeting> {
        eventually(what, TIMEOUT, || async {
            let list = self.meetings.list(&ListParams::default()).await.ok()?.items;
            (!list.is_empty() && list.iter().all(&check)).then_some(list)
        })
        .await
    }

    async fn all_meetings(&self) -> Vec<Meeting> {
        self.meetings.list(&ListParams::default()).await.unwrap().items
    }

    async fn pods_on(&self, node: &str) -> Vec<Pod> {
        let list =
            self.pods.list(&ListParams::default().labels(&format!("switchboard.dev/pool={POOL}"))).await.unwrap();
        list.items.into_iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)).collect()
    }

    async fn cleanup(self, nodes: &[&str]) {
        for n in nodes {
            nodes::delete_node(&self.admin, &self.node(n)).await;
        }
    }
}

/// The nodes a meeting's SFU pods run on (None while unplaced).
fn assignment_nodes(m: &Meeting) -> Option<Vec<String>> {
    let a = m.status.as_ref()?.assignment.as_ref()?;
    std::iter::once(&a.origin).chain(&a.edges).map(|e| e.node.clone()).collect()
}

fn assignment_pods(m: &Meeting) -> Vec<String> {
    let a = m.status.as_ref().and_then(|s| s.assignment.as_ref()).expect("assigned");
    std::iter::once(&a.origin).chain(&a.edges).map(|e| e.pod.clone()).collect()
}

fn migrations(m: &Meeting) -> &[switchboard_crds::meeting::Migration] {
    m.status.as_ref().map_or(&[], |s| s.migrations.as_slice())
}

/// Each meeting's seats (all on one pod here) are held exactly by its assigned pod.
async fn assert_ledgers_match(admin: &Client, ns: &str, meetings: &[Meeting]) {
    let ledgers = ledgers(admin, ns, POOL).await;
    for m in meetings {
        let holders: Vec<&String> =
            ledgers.iter().filter(|(_, l)| l.contains_key(&m.name_any())).map(|(p, _)| p).collect();
        let pods = assignment_pods(m);
        assert_eq!(holders.len(), pods.len(), "{}: held by {holders:?}, assigned {pods:?}", m.name_any());
        let size = m.spec.participants.expected as u64;
        for p in &pods {
            assert_eq!(ledgers[p].get(&m.name_any()), Some(&size), "{} on {p}", m.name_any());
        }
    }
    for (pod, l) in &ledgers {
        assert!(l.values().sum::<u64>() <= 100, "{pod} over capacity: {l:?}");
    }
}

fn node_cordoned_by_us(node: &Node) -> bool {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.unschedulable) == Some(true)
        && spec.and_then(|s| s.taints.as_ref()).is_some_and(|ts| ts.iter().any(|t| t.key == FAILED_TAINT))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_node_with_100_meetings_is_evacuated_cordoned_and_its_pods_replaced() {
    let Setup { admin, ns, operator } = setup("fail-node").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, POOL, Duration::from_secs(1));
    let f = Fleet::new(&admin, &ns.name, json!({"nodeNotReadyAfter": "3s"}));
    f.busy_node_and_spare(100, 4, 4, 4, 110).await;
    let (a, b) = (f.node("a"), f.node("b"));
    let old_pods: Vec<String> = f.pods_on(&a).await.iter().map(|p| p.name_any()).collect();
    assert_eq!(old_pods.len(), 4);
    // Someone else's pod on the same node: the operator must leave it alone.
    let bystander: Pod = serde_json::from_value(json!({"metadata": {"name": "bystander"}, "spec": {
        "nodeName": a, "tolerations": [nodes::group_toleration(&f.group), {"key": FULL_TAINT, "operator": "Exists"}],
        "containers": [{"name": "app", "image": "someone-else:1"}]}}))
    .unwrap();
    f.pods.create(&Default::default(), &bystander).await.unwrap();

    // The SFUs on `a` keep heartbeating (a partition): the node's condition alone decides.
    nodes::make_node_not_ready(&admin, &a).await;
    let moved = f
        .await_meetings("every meeting re-placed off the failed node", |m| {
            assignment_nodes(m).is_some_and(|n| n.iter().all(|n| n == &b)) && !migrations(m).is_empty()
        })
        .await;
    assert_eq!(moved.len(), 100, "none lost");
    for m in &moved {
        let [mv] = migrations(m) else { panic!("{}: moved more than once: {:?}", m.name_any(), migrations(m)) };
        assert_eq!(mv.reason, "NodeNotReady");
        assert_eq!(mv.generation, 1);
        assert!(old_pods.contains(&mv.from), "from a pod of the failed node: {mv:?}");
        assert_eq!(assignment_pods(m), vec![mv.to.clone()]);
    }
    // Nobody went to a draining pod.
    let targets: HashSet<String> = moved.iter().flat_map(assignment_pods).collect();
    for name in &targets {
        let pod = f.pods.get(name).await.unwrap();
        assert!(!pod.annotations().contains_key(DRAINING), "{name} is draining");
        assert!(pod.metadata.deletion_timestamp.is_none(), "{name} is being deleted");
    }
    // Seats went with them; the failed pods' ledgers emptied.
    wait_for("failed pods' ledgers empty", TIMEOUT, || async {
        let l = ledgers(&admin, &ns.name, POOL).await;
        old_pods.iter().all(|p| l.get(p).is_none_or(|seats| seats.is_empty()))
    })
    .await;
    assert_ledgers_match(&admin, &ns.name, &moved).await;

    // The node is cordoned and tainted; its SFU pods evicted; replacements Ready elsewhere.
    let node_api: Api<Node> = Api::all(admin.clone());
    await_condition(&node_api, &a, TIMEOUT, |n: Option<&Node>| n.is_some_and(node_cordoned_by_us)).await;
    wait_for("the failed node's SFU pods evicted", TIMEOUT, || async {
        f.pods_on(&a).await.iter().all(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await;
    wait_for("8 Ready SFU pods off the failed node", TIMEOUT, || async {
        let ready = f.pods_on(&b).await.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count();
        let status = f.pools.get(POOL).await.unwrap().status.unwrap_or_default();
        ready >= 8 && status.ready_replicas >= 8
    })
    .await;
    let bystander = f.pods.get("bystander").await.unwrap();
    assert!(bystander.metadata.deletion_timestamp.is_none(), "a pod that is not Switchboard's was evicted");
    let m = &operator.metrics;
    let count = |reason| m.migrations.get_or_create(&switchboard_operator::metrics::ReasonLabels { reason }).get();
    assert_eq!(count("NodeNotReady"), 100);
    assert_eq!(m.nodes_cordoned.get(), 1);
    assert!(m.evictions.get_or_create(&switchboard_operator::metrics::ResultLabels { result: "evicted" }).get() >= 4);
    assert!(m.encode().contains("switchboard_meeting_migration_duration_seconds_count 100"), "{}", m.encode());
    await_events(&admin, &ns.name, "m000", &["Migrated"]).await;
    await_events(&admin, &ns.name, POOL, &["SfuFailed", "PodDraining", "PodDeletedEvacuated"]).await;
    operator.stop().await.unwrap();
    f.cleanup(&["a", "b"]).await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_moves_only_that_pods_meetings() {
    let Setup { admin, ns, operator } = setup("lease-exp").await;
    let sfus = SimulatedSfus::start(admin.clone(), &ns.name, POOL, Duration::from_secs(1));
    let f = Fleet::new(&admin, &ns.name, json!({}));
    nodes::create_group_node(&admin, &f.node("a"), &f.group, 110).await;
    f.set_min(3).await;
    await_pool_ready(&admin, &ns.name, POOL, 3).await;
    // 60 + 60 + 30 participants: the 60s land on two pods; the third pod keeps room for a move.
    for (i, size) in [60, 60, 30].into_iter().enumerate() {
        create(&f.meetings, &meeting(&format!("m{i}"), size, json!({}))).await;
    }
    let before = f.await_meetings("placed", |m| assignment_nodes(m).is_some()).await;
    let victim = assignment_pods(&before[0])[0].clone();
    let on_victim: Vec<String> =
        before.iter().filter(|m| assignment_pods(m)[0] == victim).map(|m| m.name_any()).collect();
    let elsewhere: BTreeMap<String, String> = before
        .iter()
        .filter(|m| assignment_pods(m)[0] != victim)
        .map(|m| (m.name_any(), assignment_pods(m)[0].clone()))
        .collect();
    assert!(!on_victim.is_empty() && !elsewhere.is_empty(), "meetings on the victim and elsewhere");

    sfus.silence(&victim);
    let after = f
        .await_meetings("the victim's meetings moved", |m| {
            !on_victim.contains(&m.name_any()) || (!migrations(m).is_empty() && assignment_pods(m)[0] != victim)
        })
        .await;
    for m in &after {
        if on_victim.contains(&m.name_any()) {
            let [mv] = migrations(m) else { panic!("{}: {:?}", m.name_any(), migrations(m)) };
            assert_eq!((mv.from.as_str(), mv.reason.as_str()), (victim.as_str(), "HeartbeatExpired"));
        } else {
            assert!(migrations(m).is_empty(), "{} was on a healthy pod and must not move", m.name_any());
            assert_eq!(assignment_pods(m)[0], elsewhere[&m.name_any()]);
        }
    }
    // The dead SFU goes once its meetings left, and is replaced; the node is not cordoned.
    await_deleted(&f.pods, &victim, TIMEOUT).await;
    await_pool_ready(&admin, &ns.name, POOL, 3).await;
    assert_ledgers_match(&admin, &ns.name, &f.all_meetings().await).await;
    let node: Node = Api::all(admin.clone()).get(&f.node("a")).await.unwrap();
    assert!(!node_cordoned_by_us(&node));
    operator.stop().await.unwrap();
    f.cleanup(&["a"]).await;
    ns.delete().await;
}

/// (pod, its ledger text) as each pod on a node starts being deleted.
type Deletions = Arc<Mutex<Vec<(String, String)>>>;

/// Records each pod on `node` with its ledger as it starts being deleted.
fn record_deletions(admin: &Client, ns: &str, node: &str) -> (Deletions, tokio::task::JoinHandle<()>) {
    let seen: Deletions = Arc::default();
    let (api, node, out) = (Api::<Pod>::namespaced(admin.clone(), ns), node.to_owned(), seen.clone());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
        while let Some(Ok(pod)) = stream.next().await {
            let on_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str());
            if on_node && pod.metadata.deletion_timestamp.is_some() {
                let mut out = out.lock().unwrap();
                if !out.iter().any(|(p, _)| p == &pod.name_any()) {
                    out.push((pod.name_any(), pod.annotations().get(LEDGER).cloned().unwrap_or_default()));
                }
            }
        }
    });
    (seen, task)
}

async fn kubectl_drain(node: &str, timeout: &str) -> std::process::Output {
    let args: Vec<String> = ["drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout", timeout]
        .into_iter()
        .map(String::from)
        .collect();
    tokio::task::spawn_blocking(move || kubectl(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drain_waits_for_busy_pods_to_be_evacuated_and_passes_idle_ones() {
    let Setup { admin, ns, operator } = setup("drain").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, POOL, Duration::from_secs(1));
    let f = Fleet::new(&admin, &ns.name, json!({}));
    f.busy_node_and_spare(10, 20, 2, 2, 110).await;
    let (a, b, c) = (f.node("a"), f.node("b"), f.node("c"));
    let busy = f.pods_on(&a).await;

    // The disruption budget holds a busy SFU pod: an eviction is refused outright.
    let refused = f.pods.evict(&busy[0].name_any(), &EvictParams::default()).await;
    assert_eq!(api_error(refused).0, 429, "a busy SFU pod must not be evictable");

    // kubectl drain: cordon, then evictions that succeed only once the meetings moved.
    let (deleted, watch) = record_deletions(&admin, &ns.name, &a);
    let out = kubectl_drain(&a, "120s").await;
    assert!(
        out.status.success(),
        "drain of the busy node: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let moved = f
        .await_meetings("every meeting moved off the drained node", |m| {
            assignment_nodes(m).is_some_and(|n| n.iter().all(|n| n == &b))
        })
        .await;
    for m in &moved {
        let [mv] = migrations(m) else { panic!("{}: {:?}", m.name_any(), migrations(m)) };
        assert_eq!(mv.reason, "NodeDrained");
    }
    wait_for("the drained node's pods recorded as deleted", TIMEOUT, || async {
        deleted.lock().unwrap().len() >= busy.len()
    })
    .await;
    watch.abort();
    for (pod, ledger) in deleted.lock().unwrap().iter() {
        let seats: BTreeMap<String, Value> =
            if ledger.is_empty() { BTreeMap::new() } else { serde_json::from_str(ledger).unwrap() };
        assert!(seats.is_empty(), "{pod} was deleted while it still held meetings: {seats:?}");
    }
    assert_ledgers_match(&admin, &ns.name, &moved).await;
    await_pool_ready(&admin, &ns.name, POOL, 4).await;

    // An idle node: one SFU pod with no meetings drains at once.
    nodes::taint_node(&admin, &b, FULL_TAINT).await;
    nodes::create_group_node(&admin, &c, &f.group, 110).await;
    f.set_min(5).await;
    wait_for("an idle SFU pod Ready on node c", TIMEOUT, || async {
        let pods = f.pods_on(&c).await;
        pods.len() == 1
            && pods[0]
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    })
    .await;
    let started = std::time::Instant::now();
    let out = kubectl_drain(&c, "30s").await;
    assert!(
        out.status.success(),
        "drain of the idle node: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "an idle node drains without waiting: {:?}",
        started.elapsed()
    );
    assert!(f.all_meetings().await.iter().all(|m| migrations(m).len() == 1), "no meeting moved for the idle node");
    operator.stop().await.unwrap();
    f.cleanup(&["a", "b", "c"]).await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_flaps_back_within_the_threshold_moves_nothing() {
    let Setup { admin, ns, operator } = setup("flap").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, POOL, Duration::from_secs(1));
    let threshold = Duration::from_secs(6);
    let f = Fleet::new(&admin, &ns.name, json!({"nodeNotReadyAfter": "6s"}));
    f.busy_node_and_spare(10, 10, 1, 1, 110).await;
    let a = f.node("a");
    let before: BTreeMap<String, Vec<String>> =
        f.all_meetings().await.iter().map(|m| (m.name_any(), assignment_pods(m))).collect();

    // NotReady for 2 s (the fault being injected), then Ready again.
    nodes::make_node_not_ready(&admin, &a).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes::make_node_ready(&admin, &a).await;
    consistently("no meeting moves and no pod drains for a flap", threshold + Duration::from_secs(3), || async {
        for m in f.all_meetings().await {
            if !migrations(&m).is_empty() || before[&m.name_any()] != assignment_pods(&m) {
                return Err(format!("{} moved: {:?}", m.name_any(), migrations(&m)));
            }
        }
        for p in f.pods_on(&a).await {
            if p.annotations().contains_key(DRAINING) || p.metadata.deletion_timestamp.is_some() {
                return Err(format!("{} is draining or deleted", p.name_any()));
            }
        }
        Ok(())
    })
    .await;
    let node: Node = Api::all(admin.clone()).get(&a).await.unwrap();
    assert!(!node_cordoned_by_us(&node));

    // The same node failing for longer than the threshold does move its meetings.
    nodes::make_node_not_ready(&admin, &a).await;
    let moved = f.await_meetings("moved after a real failure", |m| migrations(m).len() == 1).await;
    assert!(moved.iter().all(|m| migrations(m)[0].reason == "NodeNotReady"));
    operator.stop().await.unwrap();
    f.cleanup(&["a", "b"]).await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restarted_mid_migration_finishes_it_without_moving_anything_twice() {
    let Setup { admin, ns, operator } = setup("restart-mig").await;
    let _sfus = SimulatedSfus::start(admin.clone(), &ns.name, POOL, Duration::from_secs(1));
    let f = Fleet::new(&admin, &ns.name, json!({"nodeNotReadyAfter": "3s"}));
    // Node b has room for 2 pods only: half the meetings can move, the rest must wait.
    f.busy_node_and_spare(100, 4, 4, 2, 2).await;
    let a = f.node("a");
    nodes::make_node_not_ready(&admin, &a).await;
    let pending = |m: &Meeting| condition(m, "Placed").is_some_and(|c| c.reason == "MigrationPending");
    f.await_meetings("half moved, half waiting for capacity", |m| migrations(m).len() == 1 || pending(m)).await;
    let first: Vec<Meeting> = f.all_meetings().await;
    let moved_first: BTreeMap<String, String> = first
        .iter()
        .filter(|m| migrations(m).len() == 1)
        .map(|m| (m.name_any(), assignment_pods(m)[0].clone()))
        .collect();
    assert_eq!(moved_first.len(), 50, "two pods of 100 on node b take 50 meetings of 4");
    await_events(
        &admin,
        &ns.name,
        first.iter().find(|m| pending(m)).unwrap().name_any().as_str(),
        &["MigrationPending"],
    )
    .await;

    // Crash in the middle; capacity arrives while no operator runs; a new one takes over.
    operator.kill();
    nodes::create_group_node(&admin, &f.node("c"), &f.group, 110).await;
    let identity = operator_identity(&admin, &ns.name).await;
    let second = start_operator(identity, &ns.name, "operator-b", Duration::from_secs(15));
    let done = f
        .await_meetings("every meeting moved once", |m| {
            migrations(m).len() == 1 && assignment_nodes(m).is_some_and(|n| !n.contains(&a))
        })
        .await;
    for m in &done {
        let [mv] = migrations(m) else { unreachable!() };
        assert_eq!(mv.generation, 1, "{}: moved twice", m.name_any());
        if let Some(pod) = moved_first.get(&m.name_any()) {
            assert_eq!(&assignment_pods(m)[0], pod, "{} moved again after the restart", m.name_any());
        }
    }
    wait_for("the failed pods' ledgers empty", TIMEOUT, || async {
        let pods_on_a: Vec<String> = f.pods_on(&a).await.iter().map(|p| p.name_any()).collect();
        let l = ledgers(&admin, &ns.name, POOL).await;
        pods_on_a.iter().all(|p| l.get(p).is_none_or(|s| s.is_empty()))
    })
    .await;
    assert_ledgers_match(&admin, &ns.name, &done).await;
    assert!(second.is_leader());
    second.stop().await.unwrap();
    f.cleanup(&["a", "b", "c"]).await;
    ns.delete().await;
}
