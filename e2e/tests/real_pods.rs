//! End-to-end on real pods: the project's images running under real kubelets with
//! containerd and runc (`e2e/cluster/real-nodes`), not kwok. The operator runs
//! in-process under the chart's RBAC, watching the test's namespace (the chart's own
//! operator Deployment is the subject of the first test); SFUs, signaling, Redis and
//! recorders are pods on the real nodes, built from `./images --debug`.
//!
//! The tests take turns (two nodes on two cores, and `hostNetwork` SFUs share the
//! nodes' ports): each holds [`SERIAL`] and works in its own namespace.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use switchboard_crds::{Meeting, SfuPool};
use switchboard_e2e::fixtures::{Setup, event_reasons};
use switchboard_e2e::operator::{operator_identity, start_operator_with};
use switchboard_e2e::real_nodes::{self, on_real_nodes};
use switchboard_e2e::*;
use switchboard_operator::OperatorConfig;
use switchboard_operator::config::PodPlacement;
use switchboard_sfu_client::encoded::{EncodedCodec, EncodedMedia, ToneClip, VideoClip, encode_clip};
use switchboard_sfu_client::{JoinOptions, Publish, ReceivedTrack};
use switchboard_signaling_client::{MediaSession, Rest, SignalingClient};
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(120);
const JWT_KEY: &str = "real-pods-e2e-signing-key-0123456789abcdef";
const POOL: &str = "media";
const SIGNALING: &str = "sig";
const IMAGE_VERSION: &str = env!("CARGO_PKG_VERSION");

static SERIAL: Mutex<()> = Mutex::const_new(());

fn image(name: &str) -> String {
    format!("switchboard/{name}:{IMAGE_VERSION}")
}

async fn apply_json(admin: &Client, ns: &str, obj: Value) {
    let resolver = Resolver::new(admin).await;
    let obj: kube::core::DynamicObject = serde_json::from_value(obj).expect("object");
    resolver.apply(admin, &obj, ns).await.unwrap_or_else(|e| panic!("apply {}: {e}", obj.name_any()));
}

/// An SfuPool of `replicas` real SFU pods: host networking (each node's own IP, as
/// production SFUs run), one pod per node (Distributed), small requests.
fn sfu_pool(replicas: i32, extra: Value) -> Value {
    let mut template = on_real_nodes();
    template["containers"] = json!([{
        "name": "sfu", "image": image("sfu-pod"), "imagePullPolicy": "IfNotPresent",
        "env": [{"name": "RUST_LOG", "value": "info"}],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}
    }]);
    let mut spec = json!({
        "autoscaling": {"minReplicas": replicas, "maxReplicas": replicas},
        "capacity": {"participantsPerPod": 50},
        "placement": {"strategy": "Distributed"},
        "remediation": {"heartbeatTimeout": "4s", "nodeNotReadyAfter": "10s", "cordonFailedNodes": true},
        "drain": {"timeout": "90s"},
        "media": {
            "udpPortRange": {"min": 41000, "max": 41031}, "hostNetwork": true, "announcedAddress": "NodeInternalIP"
        },
        "template": {"spec": template},
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool", "metadata": {"name": POOL}, "spec": spec})
}

/// A test's cluster side: the operator, Redis, an SfuPool and a SignalingPool, all
/// on the real nodes; `signaling` is its public URL (a NodePort on the first node).
struct Stack {
    admin: Client,
    ns: TestNamespace,
    _operator: switchboard_e2e::operator::OperatorHandle,
    signaling: String,
}

async fn stack(prefix: &str, sfus: i32, pool_extra: Value) -> Stack {
    real_nodes::images();
    let Setup { admin, ns, operator } = real_setup(prefix).await;
    let n = &ns.name;
    let mut redis_pod = on_real_nodes();
    redis_pod["containers"] = json!([{
        "name": "redis", "image": image("redis"), "imagePullPolicy": "IfNotPresent",
        "args": ["--port", "6379", "--bind", "0.0.0.0", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
        "ports": [{"name": "redis", "containerPort": 6379}],
        "readinessProbe": {"tcpSocket": {"port": 6379}, "periodSeconds": 1}
    }]);
    apply_json(
        &admin,
        n,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "redis"},
        "spec": {"selector": {"matchLabels": {"app": "redis"}},
                 "template": {"metadata": {"labels": {"app": "redis"}}, "spec": redis_pod}}}),
    )
    .await;
    apply_json(
        &admin,
        n,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "redis"},
        "spec": {"selector": {"app": "redis"}, "ports": [{"port": 6379, "targetPort": "redis"}]}}),
    )
    .await;
    apply_json(
        &admin,
        n,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "signaling"},
        "stringData": {"redis": format!("redis://redis.{n}.svc:6379/0"), "jwt": JWT_KEY}}),
    )
    .await;
    // Signaling's public address: a NodePort on the first real node, reachable from
    // this machine (where the test's clients and Chromium run).
    apply_json(
        &admin,
        n,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "signaling-public"},
        "spec": {"type": "NodePort",
                 "selector": {"app.kubernetes.io/managed-by": "switchboard", "app.kubernetes.io/component": "signaling",
                              "switchboard.dev/signaling-pool": SIGNALING},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await;
    let services: Api<Service> = ns.api();
    let node_port = services.get("signaling-public").await.unwrap().spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    let nodes = real_nodes::real_nodes(&admin).await;
    assert!(nodes.len() >= 2, "the real-pod tests need two real nodes, found {nodes:?}");
    let node_ip = node_internal_ip(&admin, &nodes[0]).await;
    let signaling = format!("http://{node_ip}:{node_port}");
    let placement = on_real_nodes();
    apply_json(
        &admin,
        n,
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SignalingPool", "metadata": {"name": SIGNALING},
        "spec": {"publicUrl": signaling, "image": image("signaling-pod"),
                 "autoscaling": {"minReplicas": 1, "maxReplicas": 1, "targetConnectionsPerPod": 100},
                 "redis": {"urlSecretRef": {"name": "signaling", "key": "redis"}},
                 "auth": {"jwtSecretRef": {"name": "signaling", "key": "jwt"}},
                 "nodeSelector": placement["nodeSelector"], "tolerations": placement["tolerations"]}}),
    )
    .await;
    apply_json(&admin, n, sfu_pool(sfus, pool_extra)).await;

    let deployments: Api<Deployment> = ns.api();
    for name in ["redis", &format!("{SIGNALING}-signaling")] {
        wait_for(&format!("Deployment {name} available"), WAIT, || async {
            deployments.get(name).await.ok().and_then(|d| d.status).and_then(|s| s.available_replicas).unwrap_or(0) >= 1
        })
        .await;
    }
    wait_for("signaling answers /readyz through the NodePort", WAIT, || async {
        reqwest::get(format!("{signaling}/readyz")).await.is_ok_and(|r| r.status().is_success())
    })
    .await;
    Stack { admin, ns, _operator: operator, signaling }
}

/// The test's namespace and an operator for it (under the chart's RBAC) whose
/// recorder Jobs run the recorder image on the real nodes.
async fn real_setup(prefix: &str) -> Setup {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(&admin, prefix).await;
    let identity = operator_identity(&admin, &ns.name).await;
    let mut config = OperatorConfig::for_namespace(&ns.name, "operator-real");
    config.sfu_startup_timeout = Duration::from_secs(60);
    config.recorder_image = image("recorder-pod");
    let placement = on_real_nodes();
    config.recorder_placement = PodPlacement {
        node_selector: serde_json::from_value(placement["nodeSelector"].clone()).unwrap(),
        tolerations: serde_json::from_value(placement["tolerations"].clone()).unwrap(),
    };
    let operator = start_operator_with(identity, config);
    Setup { admin, ns, operator }
}

/// Ends a test: its pods are killed at once (host-network SFUs hold the nodes'
/// ports, and a draining SFU would hold them for its grace period) and the namespace
/// is deleted; returns once no pod of it is left on the nodes.
async fn finish(admin: &Client, ns: TestNamespace) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let _ = pods
        .delete_collection(
            &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
            &ListParams::default(),
        )
        .await;
    let name = ns.name.clone();
    ns.delete().await;
    wait_for(&format!("the pods of {name} gone"), WAIT, || async {
        pods.list(&ListParams::default()).await.map(|l| l.items.is_empty()).unwrap_or(true)
    })
    .await;
}

/// Waits for this test's turn on the real nodes, then clears what an earlier run
/// left there (a failed or killed test's namespace: its host-network SFUs would hold
/// the nodes' ports). Every real-pods namespace that exists now is stale: the tests
/// of this binary take turns, and other test binaries do not run alongside.
async fn take_turn() -> tokio::sync::MutexGuard<'static, ()> {
    let turn = SERIAL.lock().await;
    let admin = client().await;
    // A node test killed before its clean-up leaves a node cordoned and tainted
    // failed (`up`, run by every test binary, restarts a stopped kubelet).
    for node in real_nodes::real_nodes(&admin).await {
        let _ = kubectl(&["uncordon", &node]);
        let _ = kubectl(&["taint", "nodes", &node, "switchboard.dev/node-failed-"]);
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    let stale = namespaces.list(&ListParams::default().labels(&format!("{TEST_LABEL}=true"))).await.unwrap().items;
    for ns in stale.into_iter().filter(|n| n.name_any().starts_with("real-")) {
        let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name_any());
        let now = DeleteParams { grace_period_seconds: Some(0), ..Default::default() };
        let _ = pods.delete_collection(&now, &ListParams::default()).await;
        let _ = namespaces.delete(&ns.name_any(), &DeleteParams::background()).await;
        wait_for(&format!("the pods of stale namespace {} gone", ns.name_any()), WAIT, || async {
            pods.list(&ListParams::default()).await.map(|l| l.items.is_empty()).unwrap_or(true)
        })
        .await;
    }
    turn
}

async fn node_internal_ip(admin: &Client, node: &str) -> String {
    let nodes: Api<Node> = Api::all(admin.clone());
    let node = nodes.get(node).await.unwrap();
    node.status.unwrap().addresses.unwrap().into_iter().find(|a| a.type_ == "InternalIP").expect("InternalIP").address
}

/// The pool's live (not terminating) pods, by name.
async fn sfu_pods(admin: &Client, ns: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let mut live: Vec<Pod> = pods
        .list(&ListParams::default().labels(&format!("switchboard.dev/pool={POOL}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    live.sort_by_key(|p| p.name_any());
    live
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until the pool has `n` Ready pods, on `n` distinct real nodes.
async fn await_pool_ready(admin: &Client, ns: &str, n: usize) -> Vec<Pod> {
    let pools: Api<SfuPool> = Api::namespaced(admin.clone(), ns);
    eventually(&format!("{n} real SFU pods Ready"), WAIT, || async {
        let pods = sfu_pods(admin, ns).await;
        let pool = pools.get(POOL).await.ok()?;
        let ready = pool.status.as_ref().map(|s| s.ready_replicas).unwrap_or(0) as usize;
        (pods.len() == n && ready == n && pods.iter().all(pod_ready)).then_some(pods)
    })
    .await
}

async fn create_meeting(admin: &Client, ns: &str, name: &str, host: &str) -> Meeting {
    let meetings: Api<Meeting> = Api::namespaced(admin.clone(), ns);
    let m: Meeting = serde_json::from_value(
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": name},
        "spec": {"title": name, "host": host, "participants": {"expected": 4}}}),
    )
    .unwrap();
    meetings.create(&Default::default(), &m).await.expect("meeting accepted");
    origin_of(admin, ns, name, None).await;
    meetings.get(name).await.unwrap()
}

/// The pod hosting the meeting's origin, once it is not `other`.
async fn origin_of(admin: &Client, ns: &str, name: &str, other: Option<&str>) -> String {
    let meetings: Api<Meeting> = Api::namespaced(admin.clone(), ns);
    eventually(&format!("{name} placed (not on {other:?})"), WAIT, || async {
        let m = meetings.get(name).await.ok()?;
        let pod = m.status?.assignment?.origin.pod;
        (Some(pod.as_str()) != other).then_some(pod)
    })
    .await
}

fn user_token(sub: &str) -> String {
    let exp = signaling_pod::auth::now_unix() + 3600;
    signaling_pod::auth::Keys::new(JWT_KEY.as_bytes()).sign(&signaling_pod::auth::UserClaims {
        sub: sub.into(),
        name: Some(sub.to_uppercase()),
        role: None,
        exp,
        typ: None,
    })
}

/// A Rust participant joined through the signaling pods, publishing audio and video.
struct Participant {
    signaling: Arc<SignalingClient>,
    media: MediaSession,
    id: String,
}

async fn join(stack: &Stack, meeting: &str, user: &str) -> Participant {
    let rest = Rest::new(&stack.signaling, &user_token(user));
    let grant = rest.join(meeting).await.expect("REST join through signaling");
    let (signaling, _) =
        SignalingClient::join(&grant.signaling_url, &grant.session_token).await.expect("WebSocket join");
    let signaling = Arc::new(signaling);
    // Real VP8 and Opus (a browser decodes them), looped.
    let (video, audio) = test_media();
    let publish = vec![
        Publish::encoded(&format!("{user}-mic"), audio.clone()),
        Publish::encoded(&format!("{user}-cam"), video.clone()),
    ];
    let media =
        MediaSession::start(signaling.clone(), &grant.participant_id, JoinOptions { publish, ..Default::default() })
            .await
            .expect("media through the SFU pod");
    Participant { signaling, media, id: grant.participant_id }
}

/// Ten seconds of VP8 video and Opus audio, encoded by ffmpeg once per test process.
fn test_media() -> &'static (EncodedMedia, EncodedMedia) {
    static MEDIA: std::sync::OnceLock<(EncodedMedia, EncodedMedia)> = std::sync::OnceLock::new();
    MEDIA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("switchboard-real-pods-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let video = VideoClip::new(EncodedCodec::Vp8, "testsrc2");
        let camera = encode_clip(video, 10, &dir.join("cam.ivf")).expect("ffmpeg encodes the camera");
        let microphone = encode_clip(ToneClip::new(440), 10, &dir.join("mic.ogg")).expect("ffmpeg encodes the tone");
        (camera, microphone)
    })
}

fn video_packets(rx: &HashMap<String, ReceivedTrack>, publisher: &str) -> u64 {
    rx.values().filter(|t| t.video && t.publisher == publisher).map(|t| t.packets).sum()
}

async fn await_video(p: &Participant, publisher: &str, packets: u64) {
    p.media
        .wait_until(&format!("video of {publisher}"), WAIT, |rx| video_packets(rx, publisher) >= packets)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Samples the packets a participant has received of `publisher`'s video every 20 ms
/// and returns the longest time without one arriving, from `from` until `packets`
/// more arrived after the longest gap (or the timeout).
async fn longest_gap(p: &Participant, publisher: &str, from: Instant, recovered_after: u64) -> Duration {
    let mut last_change = from;
    let mut last = video_packets(&p.media.received().await, publisher);
    let mut longest = Duration::ZERO;
    let mut since_gap = 0u64;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = video_packets(&p.media.received().await, publisher);
        if now != last {
            let gap = last_change.elapsed();
            if gap > longest {
                longest = gap;
                since_gap = 0;
            }
            since_gap += now.saturating_sub(last).max(1);
            last_change = Instant::now();
            last = now;
            if longest > Duration::from_millis(500) && since_gap >= recovered_after {
                return longest;
            }
        }
    }
    panic!("{publisher}'s video did not come back within {WAIT:?}; longest gap so far {longest:?}");
}

async fn lease_renewed_by(admin: &Client, ns: &str, pod: &str) -> bool {
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let Some(lease) = leases.get_opt(pod).await.ok().flatten() else {
        return false;
    };
    let renewed = lease.spec.as_ref().and_then(|s| s.renew_time.clone()).map(|t| t.0);
    let fresh = renewed.is_some_and(|t| (jiff::Timestamp::now() - t).get_seconds().abs() < 10);
    // The SFU renews its own Lease with its pod's ServiceAccount token.
    let by_sfu =
        lease.metadata.managed_fields.iter().flatten().any(|f| f.manager.as_deref().is_some_and(|m| m.contains("sfu")));
    fresh && by_sfu
}

/// 2., 3. and 4. of the real-pods issue: real SFU pods become Ready through the
/// operator's probes and heartbeat from inside the pod; a meeting is placed; a
/// headless Chromium and a Rust client join through the signaling pod and see each
/// other; the SFU process hosting the meeting is killed and the meeting moves to the
/// other pod with clients following (gap printed); then that pod is deleted while
/// busy and drains on SIGTERM, holding on until its meeting has moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_sfu_pods_serve_a_meeting_and_hand_it_over_when_they_die_or_drain() {
    let _turn = take_turn().await;
    let stack = stack("real-media", 2, json!({})).await;
    let (admin, ns) = (stack.admin.clone(), stack.ns.name.clone());

    // The pods: Ready by their probes, each on its own real node, heartbeating.
    let pods = await_pool_ready(&admin, &ns, 2).await;
    let nodes: std::collections::BTreeSet<_> = pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
    assert_eq!(nodes.len(), 2, "Distributed puts one SFU on each real node");
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            spec.termination_grace_period_seconds,
            Some(120),
            "the grace period is the pool's drain timeout and a margin"
        );
        let name = pod.name_any();
        wait_for(&format!("{name} renews its heartbeat Lease itself"), WAIT, || lease_renewed_by(&admin, &ns, &name))
            .await;
    }

    // A meeting, a browser and a Rust client.
    create_meeting(&admin, &ns, "standup", "amy").await;
    let first = origin_of(&admin, &ns, "standup", None).await;
    let ben = join(&stack, "standup", "ben").await;
    let shot = std::env::temp_dir().join(format!("{ns}-browser.png"));
    let url = format!("{}/j/standup?token={}", stack.signaling, user_token("amy"));
    let browser = tokio::task::spawn_blocking(move || {
        switchboard_e2e::browser::peers(&[url.as_str()], &shot, Duration::from_secs(20))
    });
    // The browser's tracks reach the Rust client: its publisher is the browser.
    let amy = eventually("video from the browser participant", WAIT, || async {
        ben.media
            .received()
            .await
            .values()
            .find(|t| t.video && t.publisher != ben.id && t.packets > 0)
            .map(|t| t.publisher.clone())
    })
    .await;
    await_video(&ben, &amy, 60).await;
    let report =
        browser.await.unwrap().unwrap_or_else(|e| panic!("Chromium did not decode the Rust client's video: {e}"));
    assert!(report[0]["frames"].as_u64().unwrap_or(0) > 10, "{report}");

    // Kill the SFU process (the container, not the Pod): the meeting moves.
    let cat = join(&stack, "standup", "cat").await;
    await_video(&cat, &ben.id, 30).await;
    await_video(&ben, &cat.id, 30).await;
    let pods_api: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let victim = pods_api.get(&first).await.unwrap();
    let killed = Instant::now();
    real_nodes::kill_container(&victim, "sfu");
    let (gap_ben, gap_cat) =
        tokio::join!(longest_gap(&ben, &cat.id, killed, 30), longest_gap(&cat, &ben.id, killed, 30));
    let second = origin_of(&admin, &ns, "standup", Some(&first)).await;
    println!(
        "real-pods: SFU process killed: media gap {:.2} s (ben <- cat), {:.2} s (cat <- ben)",
        gap_ben.as_secs_f64(),
        gap_cat.as_secs_f64()
    );
    for p in [&ben, &cat] {
        assert!(p.signaling.count("media-reconnect") >= 1, "signaling told {} to reconnect its media", p.id);
        assert!(p.media.reconnects() >= 1, "{}'s media followed the meeting", p.id);
    }
    let reasons = event_reasons(&admin, &ns, "standup").await;
    assert!(reasons.iter().any(|r| r.contains("Migrat")), "the meeting records its move: {reasons:?}");

    // The pool replaces the dead SFU; then the busy pod is deleted and drains.
    await_pool_ready(&admin, &ns, 2).await;
    let deleting = Instant::now();
    pods_api.delete(&second, &DeleteParams::default()).await.unwrap();
    let third = origin_of(&admin, &ns, "standup", Some(&second)).await;
    assert_ne!(third, second);
    // It was still there, terminating, when its meeting left it: not killed early.
    let moved_at = deleting.elapsed();
    await_video(&ben, &cat.id, ben_packets(&ben, &cat.id).await + 30).await;
    await_video(&cat, &ben.id, ben_packets(&cat, &ben.id).await + 30).await;
    await_deleted(&pods_api, &second, WAIT).await;
    println!(
        "real-pods: busy SFU pod deleted: meeting moved after {:.2} s, pod gone after {:.2} s",
        moved_at.as_secs_f64(),
        deleting.elapsed().as_secs_f64()
    );
    finish(&stack.admin, stack.ns).await;
}

async fn ben_packets(p: &Participant, publisher: &str) -> u64 {
    video_packets(&p.media.received().await, publisher)
}

/// 7. An SfuPool whose image is on no node says so in its conditions and Events,
/// and does not create pods without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_whose_image_is_missing_says_so_and_stays_bounded() {
    let _turn = take_turn().await;
    let Setup { admin, ns, operator: _operator } = real_setup("real-noimage").await;
    let mut pool = sfu_pool(2, json!({}));
    pool["spec"]["template"]["spec"]["containers"][0]["image"] = json!("switchboard/no-such-image:0.0.0");
    pool["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Never");
    apply_json(&admin, &ns.name, pool).await;
    let pools: Api<SfuPool> = ns.api();
    let pool = eventually("the pool reports the missing image", WAIT, || async {
        let p = pools.get(POOL).await.ok()?;
        let cond = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.message.contains("ErrImageNeverPull") || c.reason.contains("Image"))?
            .clone();
        Some((p, cond))
    })
    .await;
    println!("condition: {:?}", pool.1);
    let reasons = event_reasons(&admin, &ns.name, POOL).await;
    assert!(reasons.iter().any(|r| r.contains("Image")), "an Event names the image problem: {reasons:?}");
    consistently("the pool stays at its bound", Duration::from_secs(15), || async {
        let n = sfu_pods(&admin, &ns.name).await.len();
        if n <= 2 { Ok(()) } else { Err(format!("{n} pods")) }
    })
    .await;
    finish(&admin, ns).await;
}

/// 5. A real node's kubelet stops: the node goes NotReady, its meeting moves to the
/// SFU on the other node, and the node is cordoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_loses_its_meetings_to_the_other_node_and_is_cordoned() {
    let _turn = take_turn().await;
    let stack = stack("real-node", 2, json!({})).await;
    let (admin, ns) = (stack.admin.clone(), stack.ns.name.clone());
    let pods = await_pool_ready(&admin, &ns, 2).await;
    create_meeting(&admin, &ns, "weekly", "amy").await;
    let origin = origin_of(&admin, &ns, "weekly", None).await;
    let pod = pods.iter().find(|p| p.name_any() == origin).unwrap();
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    let ben = join(&stack, "weekly", "ben").await;
    let cat = join(&stack, "weekly", "cat").await;
    await_video(&ben, &cat.id, 30).await;
    await_video(&cat, &ben.id, 30).await;

    let stopped = Instant::now();
    real_nodes::stop_kubelet(&node);
    let restart = KubeletRestart(node.clone());
    let nodes: Api<Node> = Api::all(admin.clone());
    wait_for(&format!("{node} NotReady"), WAIT, || async {
        nodes
            .get(&node)
            .await
            .ok()
            .and_then(|n| n.status?.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status != "True"))
    })
    .await;
    let not_ready = stopped.elapsed();
    let moved = origin_of(&admin, &ns, "weekly", Some(&origin)).await;
    let moved_at = stopped.elapsed();
    assert_ne!(moved, origin);
    // Nothing lost: both clients follow the meeting and receive each other again.
    for (p, other) in [(&ben, &cat), (&cat, &ben)] {
        let before = ben_packets(p, &other.id).await;
        await_video(p, &other.id, before + 30).await;
        assert!(p.media.reconnects() >= 1, "{} reconnected its media to the moved meeting", p.id);
    }
    wait_for(&format!("{node} cordoned"), WAIT, || async {
        nodes.get(&node).await.ok().and_then(|n| n.spec?.unschedulable).unwrap_or(false)
    })
    .await;
    println!(
        "real-pods: kubelet stopped: node NotReady after {:.1} s, meeting moved after {:.1} s",
        not_ready.as_secs_f64(),
        moved_at.as_secs_f64()
    );
    drop(restart);
    nodes.patch(&node, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": null}}))).await.unwrap();
    finish(&stack.admin, stack.ns).await;
}

/// Starts the kubelet again, uncordons its node and removes the operator's
/// failed-node taint, whatever happened in the test.
struct KubeletRestart(String);

impl Drop for KubeletRestart {
    fn drop(&mut self) {
        real_nodes::start_kubelet(&self.0);
        // The operator cordoned and tainted the failed node; an administrator takes
        // both back once the node is healthy, and so does the test.
        let _ = kubectl(&["uncordon", &self.0]);
        let _ = kubectl(&["taint", "nodes", &self.0, "switchboard.dev/node-failed-"]);
    }
}

/// 1. The chart's operator Deployment on real pods: both replicas become Ready and
/// one leads; killing the leader's container hands the Lease to the standby within
/// the lease duration, and the new leader reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_operator_runs_on_real_pods_and_its_standby_takes_over() {
    let _turn = take_turn().await;
    real_nodes::images();
    let admin = client().await;
    let ns = TestNamespace::create(&admin, "real-chart").await;
    let values = std::env::temp_dir().join(format!("{}-values.yaml", ns.name));
    std::fs::write(
        &values,
        format!(
            "operator:\n  watchNamespace: {ns}\n  leaseDurationSeconds: {LEASE}\n  nodeSelector: {{switchboard.dev/node-kind: real}}\n  tolerations: [{toleration}]\n",
            ns = ns.name,
            toleration = real_nodes::real_node_toleration()
        ),
    )
    .unwrap();
    let release = "sb-real";
    helm_ok(&[
        "install",
        release,
        &chart_dir().display().to_string(),
        "-n",
        &ns.name,
        "--take-ownership",
        "-f",
        &values.display().to_string(),
        "--wait",
        "--timeout",
        "180s",
    ]);
    let uninstall = Uninstall { release, namespace: ns.name.clone() };

    let deployments: Api<Deployment> = ns.api();
    let name = format!("{release}-operator");
    wait_for("both operator pods Ready", WAIT, || async {
        deployments.get(&name).await.ok().and_then(|d| d.status).and_then(|s| s.ready_replicas) == Some(2)
    })
    .await;
    let leases: Api<Lease> = ns.api();
    let holder = || async { leases.get_opt("switchboard-operator-leader").await.ok().flatten()?.spec?.holder_identity };
    let leader = eventually("an operator pod leads", WAIT, || async { holder().await }).await;
    let leader_pod = leader.split('_').next().unwrap().to_owned();
    let pods: Api<Pod> = ns.api();
    let pod = pods.get(&leader_pod).await.expect("the holder is one of the Deployment's pods");
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref().map(|n| n.starts_with("real-node")), Some(true));

    // The killed container is restarted by its kubelet and competes for the expired
    // Lease too; when it happens to win, its new process is killed again (at most
    // three rounds), so that the standby's takeover is what is checked.
    let (mut leader, mut pod) = (leader, pod);
    let mut rounds = 0;
    let (next, took) = loop {
        rounds += 1;
        let killed = Instant::now();
        real_nodes::kill_container(&pod, "operator");
        let next =
            eventually("another process takes the Lease", WAIT, || async { holder().await.filter(|h| *h != leader) })
                .await;
        let took = killed.elapsed();
        assert!(
            took < Duration::from_secs(LEASE + 6),
            "taken over within the lease duration ({LEASE} s) and a retry: {took:?}"
        );
        if !next.starts_with(&leader_pod) || rounds == 3 {
            break (next, took);
        }
        println!("real-pods: the restarted container won the Lease ({next}); killing it again");
        pod = pods.get(&leader_pod).await.expect("the same pod");
        leader = next;
    };
    println!("real-pods: leader container killed: {next} took over after {:.1} s", took.as_secs_f64());
    assert!(!next.starts_with(&leader_pod), "the standby, not the restarted container, took over: {next}");

    // The new leader reconciles: a pool in the watched namespace gets its status.
    apply_json(
        &admin,
        &ns.name,
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "SfuPool", "metadata": {"name": "after"},
        "spec": {"autoscaling": {"minReplicas": 0, "maxReplicas": 1}, "capacity": {"participantsPerPod": 10},
                 "template": {"spec": {"containers": [{"name": "sfu", "image": image("sfu-pod")}]}}}}),
    )
    .await;
    let pools: Api<SfuPool> = ns.api();
    wait_for("the new leader reconciles a new pool", WAIT, || async {
        pools.get("after").await.ok().and_then(|p| p.status.and_then(|s| s.observed_generation)).is_some()
    })
    .await;
    // And the killed container came back as a standby.
    wait_for("the killed container restarted and is Ready", WAIT, || async {
        pods.get(&leader_pod).await.ok().is_some_and(|p| {
            pod_ready(&p)
                && p.status.and_then(|s| s.container_statuses).is_some_and(|cs| cs.iter().any(|c| c.restart_count >= 1))
        })
    })
    .await;
    drop(uninstall);
    finish(&admin, ns).await;
}

const LEASE: u64 = 15;

/// Uninstalls a release when the test ends, passing or not: the chart's cluster-scoped
/// objects allow one release per cluster.
struct Uninstall {
    release: &'static str,
    namespace: String,
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        let _ = helm(&["uninstall", self.release, "-n", &self.namespace, "--wait", "--timeout", "120s"]);
    }
}

/// 6. A RecordingJob runs the recorder image as a real Job pod on a real node,
/// records the meeting from the SFU pod, and writes a playable MP4 to a
/// PersistentVolume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recording_job_runs_the_recorder_image_and_writes_a_playable_mp4() {
    let _turn = take_turn().await;
    let stack = stack("real-rec", 1, json!({})).await;
    let (admin, ns) = (stack.admin.clone(), stack.ns.name.clone());
    await_pool_ready(&admin, &ns, 1).await;
    // A local PersistentVolume on the node the recorder will run on: a directory of
    // this machine, writable by the images' nonroot user.
    let node = real_nodes::real_nodes(&admin).await[0].clone();
    let dir = std::env::temp_dir().join(format!("switchboard-{ns}-recordings"));
    std::fs::create_dir_all(&dir).unwrap();
    std::process::Command::new("chown").args(["65532:65532", &dir.display().to_string()]).status().unwrap();
    apply_json(
        &admin,
        &ns,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": format!("{ns}-recordings")},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "local": {"path": dir.display().to_string()},
                 "claimRef": {"namespace": ns, "name": "recordings"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}}}),
    )
    .await;
    apply_json(
        &admin,
        &ns,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "recordings"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": format!("{ns}-recordings"),
                 "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;

    create_meeting(&admin, &ns, "review", "amy").await;
    let ben = join(&stack, "review", "ben").await;
    let cat = join(&stack, "review", "cat").await;
    await_video(&ben, &cat.id, 30).await;
    apply_json(
        &admin,
        &ns,
        json!({"apiVersion": "switchboard.dev/v1alpha1", "kind": "RecordingJob", "metadata": {"name": "review-rec"},
        "spec": {"meetingRef": {"name": "review"}, "layout": "Gallery", "format": "MP4", "retries": 1,
                 "storage": {"pvc": {"claimName": "recordings", "path": "/meetings"}}}}),
    )
    .await;
    let jobs: Api<switchboard_crds::RecordingJob> = Api::namespaced(admin.clone(), &ns);
    wait_for("the recorder pod records", WAIT, || async {
        jobs.get("review-rec").await.ok().and_then(|j| j.status?.phase).is_some_and(|p| format!("{p:?}") == "Recording")
    })
    .await;
    let recorder_pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let recorder =
        recorder_pods.list(&ListParams::default().labels("app.kubernetes.io/component=recorder")).await.unwrap().items;
    assert!(
        recorder.iter().any(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.as_str())),
        "the recorder runs as a pod on {node}"
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    let meetings: Api<Meeting> = Api::namespaced(admin.clone(), &ns);
    meetings.delete("review", &DeleteParams::default()).await.unwrap();
    let ready = eventually("the recording Ready", Duration::from_secs(240), || async {
        let j = jobs.get("review-rec").await.ok()?;
        let phase = format!("{:?}", j.status.as_ref()?.phase.as_ref()?);
        assert_ne!(phase, "Failed", "{:?}", j.status);
        (phase == "Ready").then_some(j)
    })
    .await;
    let url = ready.status.unwrap().url.unwrap();
    let file = dir.join(url.strip_prefix("pvc://recordings/").expect("a pvc:// URL"));
    let probe = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type:format=duration",
            "-of",
            "csv=p=0",
            &file.display().to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&probe.stdout);
    assert!(
        probe.status.success() && text.contains("video") && text.contains("audio"),
        "ffprobe {}: {text}{}",
        file.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    let duration: f64 = text.lines().filter_map(|l| l.trim().parse().ok()).next().unwrap_or(0.0);
    assert!(duration >= 8.0, "the MP4 holds the meeting ({duration} s)");
    drop((ben, cat));
    let _ = Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(admin.clone())
        .delete(&format!("{ns}-recordings"), &DeleteParams::background())
        .await;
    finish(&stack.admin, stack.ns).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Prometheus, as the chart's PodMonitors configure it, scrapes the real SFU and
/// signaling pods: their series carry the pool labels the alerts and dashboards group
/// by, the packet counters move with real media, and every alert and dashboard query of
/// the chart runs on the live data without an error (PromQL a real Prometheus accepts).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_real_pods_and_runs_every_alert_and_dashboard_query() {
    use switchboard_e2e::monitoring::{Prometheus, alert_queries, dashboard_files, dashboard_queries};
    let _turn = take_turn().await;
    let stack = stack("real-prom", 1, json!({})).await;
    let (admin, ns) = (stack.admin.clone(), stack.ns.name.clone());
    await_pool_ready(&admin, &ns, 1).await;
    let prometheus = Prometheus::start(&cluster().kubeconfig, &ns, "2s").expect("prometheus");

    // Both kinds of pods are found and scraped.
    wait_for("the SFU and signaling pods scraped and up", WAIT, || async {
        let Ok(up) = prometheus.query("up == 1").await else { return false };
        let component = |pool_label: &str, pool: &str| {
            up.iter().any(|s| s["metric"][pool_label] == pool && s["metric"]["namespace"] == ns.as_str())
        };
        component("switchboard_dev_pool", POOL) && component("switchboard_dev_signaling_pool", SIGNALING)
    })
    .await;
    for (series, label, pool) in [
        ("switchboard_sfu_build_info", "switchboard_dev_pool", POOL),
        ("switchboard_signaling_build_info", "switchboard_dev_signaling_pool", SIGNALING),
    ] {
        let found = prometheus.query(series).await.unwrap();
        assert!(
            found.iter().any(|s| s["metric"][label] == pool && s["metric"]["version"] == IMAGE_VERSION),
            "{series}: {found:?}"
        );
    }

    // Real media through the SFU pod moves the packet counters the scaling samples use.
    create_meeting(&admin, &ns, "standup", "amy").await;
    let ben = join(&stack, "standup", "ben").await;
    let cleo = join(&stack, "standup", "cleo").await;
    await_video(&ben, &cleo.id, 100).await;
    let rate = format!(
        "sum(rate(switchboard_sfu_rtp_packets_forwarded_total{{namespace=\"{ns}\", switchboard_dev_pool=\"{POOL}\"}}[10s]))"
    );
    wait_for("a forwarded packet rate in Prometheus", WAIT, || async {
        prometheus.query(&rate).await.ok().and_then(|r| r.first()?["value"][1].as_str()?.parse::<f64>().ok())
            > Some(10.0)
    })
    .await;

    // Every query of the chart runs on the live series.
    let mut queries = alert_queries();
    for (name, text) in dashboard_files() {
        queries.extend(dashboard_queries(&name, &serde_json::from_str(&text).unwrap(), ".*"));
    }
    assert!(queries.len() > 50, "{} queries", queries.len());
    let mut refused = Vec::new();
    for (place, expr) in &queries {
        if let Err(e) = prometheus.query(expr).await {
            refused.push(format!("{place}: {e:#}"));
        }
    }
    assert!(refused.is_empty(), "queries Prometheus refused:\n{}\n{}", refused.join("\n"), prometheus.log());
    drop((ben, cleo));
    finish(&admin, stack.ns).await;
}

/// Built-in autoscaling on packet rate with real media: two participants' audio and
/// video through the one SFU pod ask for a second pod by `packetsPerSecondPerPod` while
/// their two seats ask for one; the new pod comes up on the other node (the time from
/// the first participant joining to two Ready pods is printed). When they leave, the pool goes back to
/// one pod after the window, and the pod that holds the meeting stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_media_scales_a_pool_by_packet_rate_and_the_busy_pod_stays_when_it_stops() {
    let _turn = take_turn().await;
    let extra = json!({
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "scaleDownStabilization": "15s"},
        "capacity": {"participantsPerPod": 50, "packetsPerSecondPerPod": 150},
    });
    let stack = stack("real-pps", 1, extra).await;
    let (admin, ns) = (stack.admin.clone(), stack.ns.name.clone());
    let pools: Api<SfuPool> = Api::namespaced(admin.clone(), &ns);
    let first = await_pool_ready(&admin, &ns, 1).await[0].name_any();

    create_meeting(&admin, &ns, "standup", "amy").await;
    assert_eq!(origin_of(&admin, &ns, "standup", None).await, first);
    // The clock starts as the first participant's media begins.
    let media_flowing = Instant::now();
    let ben = join(&stack, "standup", "ben").await;
    let cleo = join(&stack, "standup", "cleo").await;
    await_video(&ben, &cleo.id, 30).await;
    let pool = eventually("the pool scaled to 2 by its packet rate", WAIT, || async {
        let p = pools.get(POOL).await.ok()?;
        (p.spec.replicas == Some(2)).then_some(p)
    })
    .await;
    let decided = media_flowing.elapsed();
    // The decision is read from its Event: the status shows the latest sample, and the
    // packet rate may dip under the threshold (a clip looping, a busy machine) before
    // the scale-down window lets it go.
    // The Event is written just after the scale: give it a moment.
    let scaled_by = eventually("the scale-up's Event", WAIT, || async {
        let notes = switchboard_e2e::fixtures::event_notes(&admin, &ns, POOL, "ScaledUp").await;
        notes.iter().any(|n| n.starts_with("scaled up from 1 to 2")).then_some(notes)
    })
    .await;
    let rate = scaled_by
        .iter()
        .find_map(|m| {
            m.strip_prefix("scaled up from 1 to 2 pods: packet rate ")?.split('/').next()?.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no scale-up by packet rate: {scaled_by:?}"));
    assert!(rate > 150, "{scaled_by:?}");
    let allocated = pool.status.unwrap().allocated.unwrap();
    assert!(allocated.participants <= 4, "seats alone ask for one pod: {allocated:?}");
    await_pool_ready(&admin, &ns, 2).await;
    println!(
        "real-pps: first join → scale-up seen {:.1} s → second SFU pod Ready {:.1} s",
        decided.as_secs_f64(),
        media_flowing.elapsed().as_secs_f64()
    );

    // Traffic stops; the meeting (and its seats on the first pod) stays.
    drop((ben, cleo));
    let stopped = Instant::now();
    wait_for("the pool back to one pod", WAIT, || async {
        pools.get(POOL).await.is_ok_and(|p| p.spec.replicas == Some(1))
    })
    .await;
    let remaining = await_pool_ready(&admin, &ns, 1).await;
    assert_eq!(remaining[0].name_any(), first, "the pod holding the meeting stays");
    assert_eq!(origin_of(&admin, &ns, "standup", None).await, first);
    println!("real-pps: media stopped → back to one pod {:.1} s", stopped.elapsed().as_secs_f64());
    finish(&admin, stack.ns).await;
}

/// The pool's NetworkPolicy on real pods (issue #26), enforced by the nodes' agent
/// (kube-network-policies): with the SFUs on the pod network, the kubelet's probes
/// pass (the pods get Ready), signaling drives a meeting through the API port and the
/// media from this machine reaches the pods' UDP ports, the pool's SFUs reach each
/// other's API (relays); a pod of the namespace without signaling's labels, and a pod
/// with them in another namespace, get no answer from the API port. Both reach
/// signaling's pod (no policy selects it) first, so their silence is the policy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pools_network_policy_admits_only_signaling_and_its_own_sfus_on_real_pods() {
    let _turn = take_turn().await;
    let pod_network = json!({"media": {
        "udpPortRange": {"min": 41000, "max": 41031}, "hostNetwork": false, "announcedAddress": "PodIP"
    }});
    let stack = stack("real-netpol", 2, pod_network).await;
    let (admin, ns) = (stack.admin.clone(), stack.ns.name.clone());
    let sfus = await_pool_ready(&admin, &ns, 2).await;
    for pod in &sfus {
        assert_ne!(pod.spec.as_ref().unwrap().host_network, Some(true), "the SFUs are on the pod network");
    }
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = Api::namespaced(admin.clone(), &ns);
    let policy = format!("{POOL}-sfu");
    wait_for(&format!("NetworkPolicy {policy}"), WAIT, || async {
        policies.get_opt(&policy).await.ok().flatten().is_some()
    })
    .await;

    // A meeting through signaling, whose calls to the SFU's API pass the policy.
    create_meeting(&admin, &ns, "fenced", "amy").await;
    let ben = join(&stack, "fenced", "ben").await;
    let cat = join(&stack, "fenced", "cat").await;
    await_video(&cat, &ben.id, 30).await;
    await_video(&ben, &cat.id, 30).await;

    let ip = |pod: &Pod| pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod has an IP");
    let api = |pod: &Pod| format!("http://{}:7880/healthz", ip(pod));
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let signaling = pods
        .list(&ListParams::default().labels(&format!("switchboard.dev/signaling-pool={SIGNALING}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .find(pod_ready)
        .expect("a Ready signaling pod");
    let signaling_url = format!("http://{}:8080/readyz", ip(&signaling));
    let probe = Duration::from_secs(5);
    let get = |from: &Pod, container: &'static str, url: String| {
        let from = from.clone();
        tokio::task::spawn_blocking(move || real_nodes::http_get_from(&from, container, &url, probe))
    };

    // Admitted: signaling to every SFU, and each SFU to the other (relays).
    for sfu in &sfus {
        let got = get(&signaling, "signaling", api(sfu)).await.unwrap();
        assert_eq!(got, real_nodes::Reach::Answered(200), "signaling -> {} API", sfu.name_any());
    }
    let got = get(&sfus[0], "sfu", api(&sfus[1])).await.unwrap();
    assert_eq!(got, real_nodes::Reach::Answered(200), "an SFU of the pool -> another's API (relay)");

    // Refused: a pod of the namespace without signaling's labels, and one with them in
    // another namespace.
    let other = TestNamespace::create(&admin, "real-netpol-other").await;
    let probe_pod = |name: &str, labels: Value| {
        let mut spec = on_real_nodes();
        spec["containers"] = json!([{
            "name": "probe", "image": image("redis"), "imagePullPolicy": "IfNotPresent",
            "args": ["--port", "6379", "--save", "", "--appendonly", "no"]
        }]);
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec})
    };
    apply_json(&admin, &ns, probe_pod("outsider", json!({"app": "outsider"}))).await;
    let lookalike = json!({"app.kubernetes.io/managed-by": "switchboard", "app.kubernetes.io/component": "signaling"});
    apply_json(&admin, &other.name, probe_pod("lookalike", lookalike)).await;
    for (namespace, name) in [(ns.as_str(), "outsider"), (other.name.as_str(), "lookalike")] {
        let api_of: Api<Pod> = Api::namespaced(admin.clone(), namespace);
        let pod = eventually(&format!("{namespace}/{name} Ready"), WAIT, || async {
            api_of.get(name).await.ok().filter(pod_ready)
        })
        .await;
        let control = get(&pod, "probe", signaling_url.clone()).await.unwrap();
        assert_eq!(control, real_nodes::Reach::Answered(200), "{namespace}/{name} reaches signaling's pod");
        for sfu in &sfus {
            let got = get(&pod, "probe", api(sfu)).await.unwrap();
            assert!(
                matches!(got, real_nodes::Reach::NoAnswer(..)),
                "{namespace}/{name} -> {} API must get no answer, got {got:?}",
                sfu.name_any()
            );
        }
    }

    // The meeting lives on.
    let before = video_packets(&cat.media.received().await, &ben.id);
    await_video(&cat, &ben.id, before + 30).await;
    println!("real-pods: the pool's NetworkPolicy admitted signaling and the pool's SFUs, refused two outsiders");
    finish(&admin, other).await;
    finish(&stack.admin, stack.ns).await;
}

/// A KEDA sample of the chart (`scalingSamples.keda.<list>`: `sfuPools` or
/// `signalingPools`) rendered by helm for one `entry` and this test's Prometheus, with
/// the scale-down window and KEDA's polling shortened to fit a test.
fn keda_sample(ns: &str, prometheus: &str, list: &str, entry: Value) -> Value {
    let entries = format!("scalingSamples.keda.{list}=[{entry}]");
    let address = format!("scalingSamples.keda.prometheusAddress={prometheus}");
    let chart = chart_dir().display().to_string();
    let version = kubernetes_version();
    let args =
        ["template", "sb", &chart, "-n", ns, "--kube-version", &version, "--set-json", &entries, "--set", &address];
    let docs: Vec<Value> = serde_saphyr::from_multiple(&helm_ok(&args)).unwrap();
    let mut scaled = docs.into_iter().find(|d| d["kind"] == "ScaledObject").expect("the chart renders a ScaledObject");
    scaled["spec"]["pollingInterval"] = json!(5);
    scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] =
        json!({"stabilizationWindowSeconds": 10, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 10}]});
    scaled
}

/// KEDA scales an External-mode SignalingPool's Deployment on open WebSocket
/// connections (the chart's sample, through Prometheus scraping the real signaling
/// pods): four connections against two per pod ask for a second replica (the time
/// from the connections to the new replica Ready is printed); when they close, one
/// replica again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keda_scales_an_external_signaling_pool_on_its_connections() {
    use switchboard_e2e::monitoring::{Keda, Prometheus};
    let _turn = take_turn().await;
    let stack = stack("real-keda-sig", 1, json!({})).await;
    let (admin, ns) = (stack.admin.clone(), stack.ns.name.clone());
    let pools: Api<switchboard_crds::SignalingPool> = Api::namespaced(admin.clone(), &ns);
    let external = json!({"spec": {"autoscaling": {"mode": "External", "minReplicas": 1, "maxReplicas": 2, "targetConnectionsPerPod": null}}});
    pools.patch(SIGNALING, &PatchParams::default(), &Patch::Merge(&external)).await.unwrap();
    let keda = tokio::task::spawn_blocking(Keda::start).await.unwrap().expect("KEDA up");
    let prometheus = Prometheus::start(&cluster().kubeconfig, &ns, "2s").expect("prometheus");
    let entry = json!({"name": SIGNALING, "namespace": ns, "minReplicas": 1, "maxReplicas": 2, "connectionsPerPod": 2});
    apply_json(&admin, &ns, keda_sample(&ns, &prometheus.url, "signalingPools", entry)).await;
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    wait_for("KEDA's HPA on the signaling Deployment, and the operator's gone", WAIT, || async {
        let names: Vec<String> = hpas
            .list(&ListParams::default())
            .await
            .map(|l| l.items.iter().map(|h| h.name_any()).collect())
            .unwrap_or_default();
        names == [format!("keda-hpa-{SIGNALING}-signaling")]
    })
    .await;

    create_meeting(&admin, &ns, "townhall", "amy").await;
    let mut connections = Vec::new();
    for i in 0..4 {
        let user = format!("user{i}");
        let grant = Rest::new(&stack.signaling, &user_token(&user)).join("townhall").await.expect("REST join");
        let (client, _) =
            SignalingClient::join(&grant.signaling_url, &grant.session_token).await.expect("WebSocket join");
        connections.push(client);
    }
    let connected = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let deployment = format!("{SIGNALING}-signaling");
    wait_for("two signaling replicas Ready", WAIT, || async {
        deployments.get(&deployment).await.ok().and_then(|d| d.status).and_then(|s| s.ready_replicas) == Some(2)
    })
    .await;
    println!(
        "real-keda: 4 connections (2 per pod) → second signaling replica Ready after {:.1} s",
        connected.elapsed().as_secs_f64()
    );

    drop(connections);
    let closed = Instant::now();
    wait_for("back to one signaling replica", WAIT, || async {
        deployments.get(&deployment).await.ok().and_then(|d| d.spec).and_then(|s| s.replicas) == Some(1)
    })
    .await;
    println!("real-keda: connections closed → one signaling replica after {:.1} s", closed.elapsed().as_secs_f64());
    wait_for("signaling still answers", WAIT, || async {
        reqwest::get(format!("{}/readyz", stack.signaling)).await.is_ok_and(|r| r.status().is_success())
    })
    .await;

    keda.delete_scaled_objects(&ns);
    finish(&admin, stack.ns).await;
    drop(keda);
}

/// External mode end to end (issue #27): KEDA, from the chart's sample ScaledObject,
/// scales an External-mode SfuPool through its /scale subresource on the packet rate
/// Prometheus scrapes from the real SFU pods: real media on the one pod asks for a
/// second (the time from the load to the new pod Ready is printed); a quiet meeting
/// goes to the new pod; when the load ends, KEDA asks for one pod again and the
/// operator removes the emptied first pod, never the busy newer one, whose meeting
/// carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keda_scales_an_external_pool_on_its_packet_rate_and_the_busy_pod_stays() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use switchboard_e2e::monitoring::{Keda, Prometheus};
    let _turn = take_turn().await;
    let external = json!({"autoscaling": {"mode": "External", "minReplicas": 1, "maxReplicas": 2}});
    let stack = stack("real-keda", 1, external).await;
    let (admin, ns) = (stack.admin.clone(), stack.ns.name.clone());
    let keda = tokio::task::spawn_blocking(Keda::start).await.unwrap().expect("KEDA up");
    let first = await_pool_ready(&admin, &ns, 1).await[0].name_any();
    let prometheus = Prometheus::start(&cluster().kubeconfig, &ns, "2s").expect("prometheus");
    let threshold = 500;
    let entry =
        json!({"name": POOL, "namespace": ns, "minReplicas": 1, "maxReplicas": 2, "packetsPerSecondPerPod": threshold});
    apply_json(&admin, &ns, keda_sample(&ns, &prometheus.url, "sfuPools", entry)).await;

    // KEDA made its HPA, and the HPA reads the pool's metric through the aggregation layer.
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(admin.clone(), &ns);
    let hpa_name = format!("keda-hpa-{POOL}-sfu");
    let hpa_reads_the_metric = || async {
        let hpa = hpas.get_opt(&hpa_name).await.ok().flatten()?;
        let status = hpa.status?;
        let active = status.conditions?.iter().any(|c| c.type_ == "ScalingActive" && c.status == "True");
        (active && status.current_metrics.is_some_and(|m| !m.is_empty())).then_some(())
    };
    eventually("KEDA's HPA reading the packet rate", WAIT, hpa_reads_the_metric).await;

    // Load on the one pod: four participants with video and audio.
    create_meeting(&admin, &ns, "load", "amy").await;
    assert_eq!(origin_of(&admin, &ns, "load", None).await, first);
    let mut load = Vec::new();
    for user in ["amy", "ben", "cat", "dan"] {
        load.push(join(&stack, "load", user).await);
    }
    await_video(&load[0], &load[3].id, 30).await;
    let loaded = Instant::now();
    let rate = format!(
        "sum(rate(switchboard_sfu_rtp_packets_received_total{{namespace=\"{ns}\", switchboard_dev_pool=\"{POOL}\"}}[1m])) \
         + sum(rate(switchboard_sfu_rtp_packets_forwarded_total{{namespace=\"{ns}\", switchboard_dev_pool=\"{POOL}\"}}[1m]))"
    );
    let pools: Api<SfuPool> = Api::namespaced(admin.clone(), &ns);
    wait_for("KEDA asks for two pods", WAIT, || async {
        pools.get(POOL).await.is_ok_and(|p| p.spec.replicas == Some(2))
    })
    .await;
    let asked = loaded.elapsed();
    let value = |r: Vec<Value>| r.first().and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok());
    let loaded_rate = value(prometheus.query(&rate).await.unwrap()).unwrap_or_default();
    let pods = await_pool_ready(&admin, &ns, 2).await;
    let second = pods.iter().map(|p| p.name_any()).find(|n| *n != first).unwrap();
    println!(
        "real-keda: load ({loaded_rate:.0} packets/s against {threshold} per pod) → spec.replicas 2 after {:.1} s → \
         second SFU pod Ready after {:.1} s",
        asked.as_secs_f64(),
        loaded.elapsed().as_secs_f64()
    );

    // A quiet meeting on the new pod.
    create_meeting(&admin, &ns, "quiet", "eve").await;
    assert_eq!(origin_of(&admin, &ns, "quiet", None).await, second, "the new meeting goes to the idle new pod");
    let eve = join(&stack, "quiet", "eve").await;
    let fay = join(&stack, "quiet", "fay").await;
    await_video(&fay, &eve.id, 30).await;

    // The load ends: its meeting is deleted while everyone is in it (their media ends
    // at the SFU with it), KEDA asks for one pod, and the one that goes is the emptied
    // first, not the newer one that holds the quiet meeting.
    let meetings: Api<Meeting> = Api::namespaced(admin.clone(), &ns);
    meetings.delete("load", &DeleteParams::default()).await.unwrap();
    let stopped = Instant::now();
    for p in &load {
        p.signaling.wait_closed(WAIT).await.expect("the deleted meeting's connections close");
    }
    drop(load);
    let pods_api: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    wait_for("back to one pod, the first one gone", WAIT, || async {
        let busy = pods_api.get(&second).await.unwrap();
        assert!(busy.metadata.deletion_timestamp.is_none(), "the pod holding the quiet meeting must stay");
        let one = pools.get(POOL).await.is_ok_and(|p| p.spec.replicas == Some(1));
        one && pods_api.get_opt(&first).await.unwrap().is_none()
    })
    .await;
    println!(
        "real-keda: load stopped → back to one pod (the emptied one deleted) after {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
    assert_eq!(origin_of(&admin, &ns, "quiet", None).await, second);
    assert_eq!(fay.media.reconnects(), 0, "the quiet meeting never moved");
    await_video(&fay, &eve.id, video_packets(&fay.media.received().await, &eve.id) + 30).await;
    let quiet_rate = value(prometheus.query(&rate).await.unwrap()).unwrap_or_default();
    println!("real-keda: the quiet meeting alone: {quiet_rate:.0} packets/s");

    keda.delete_scaled_objects(&ns);
    drop((eve, fay));
    finish(&admin, stack.ns).await;
    drop(keda);
}
