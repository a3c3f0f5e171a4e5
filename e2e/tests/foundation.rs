//! The foundation against the real control plane: CRDs, schema validation,
//! the scale subresource, examples, and the kwok-backed workload machinery
//! (scheduling, NotReady nodes, evictions with PodDisruptionBudgets, RBAC).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::wait::conditions;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use switchboard_crds::{Meeting, RecordingJob, SfuPool, SignalingPool};
use switchboard_e2e::*;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (Client, TestNamespace) {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, prefix).await;
    (client, ns)
}

fn example(file: &str, kind: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples").join(file)).unwrap();
    let objs = parse_manifest(&text).unwrap();
    let obj = objs.into_iter().find(|o| o.types.as_ref().is_some_and(|t| t.kind == kind)).unwrap();
    serde_json::to_value(obj).unwrap()
}

fn valid_pool(name: &str) -> Value {
    let mut pool = example("sfupool-eu-west.yaml", "SfuPool");
    pool["metadata"] = json!({"name": name});
    pool
}

fn valid_meeting(name: &str) -> Value {
    let mut m = example("meeting-all-hands-webinar.yaml", "Meeting");
    m["metadata"] = json!({"name": name});
    m
}

/// Applies raw JSON, so that values the Rust types cannot express (bad enums,
/// negative counts, unknown formats) reach the API server exactly as written.
async fn apply_json<K>(api: &Api<K>, obj: &Value) -> Result<K, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await
}

/// Asserts the API server refuses `obj` as invalid (422) with a message naming `field`
/// and containing `words`.
async fn assert_refused<K>(api: &Api<K>, obj: &Value, field: &str, words: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (code, message) = api_error(apply_json(api, obj).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains(field), "the refusal should name {field}: {message}");
    assert!(message.contains(words), "the refusal should say {words:?}: {message}");
}

fn set(obj: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = obj.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}"));
    if value.is_null() {
        parent.as_object_mut().unwrap().remove(key);
    } else {
        parent[key] = value;
    }
}

#[tokio::test]
async fn crds_are_established_and_listed_with_printer_columns() {
    let (client, ns) = setup("crds").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in switchboard_crds::all() {
        let name = crd.name_any();
        await_condition(&crds, &name, TIMEOUT, conditions::is_crd_established()).await;
    }
    let pools: Api<SfuPool> = ns.api();
    apply_json(&pools, &valid_pool("eu-west")).await.expect("valid pool accepted");

    let all = kubectl_ok(&["get", "sfupools,meetings,recordingjobs,signalingpools", "-n", &ns.name]);
    assert!(all.contains("sfupool.switchboard.dev/eu-west"), "{all}");
    let table = kubectl_ok(&["get", "sfupools", "-n", &ns.name]);
    let header = table.lines().next().unwrap();
    for column in ["NAME", "REGION", "DESIRED", "READY", "DRAINING", "ALLOCATED", "CAPACITY", "AGE"] {
        assert!(header.contains(column), "missing column {column}: {header}");
    }
    assert!(table.contains("eu-west-1"), "{table}");
    // Short names and the category resolve too.
    kubectl_ok(&["get", "sfup,mtg,recjob,sigp", "-n", &ns.name]);
    let category = kubectl_ok(&["get", "switchboard", "-n", &ns.name, "-o", "name"]);
    assert!(category.contains("sfupool.switchboard.dev/eu-west"), "{category}");
    let resolver = Resolver::new(&client).await;
    for (kind, file, example_kind, columns) in [
        ("meetings", "meeting-standup.yaml", "Meeting", &["PHASE", "ROOM", "EXPECTED", "PARTICIPANTS", "START"][..]),
        ("recordingjobs", "recordingjob.yaml", "RecordingJob", &["MEETING", "LAYOUT", "PHASE", "DURATION"][..]),
        ("signalingpools", "signalingpool.yaml", "SignalingPool", &["URL", "REPLICAS", "READY", "CONNECTIONS"][..]),
    ] {
        let dynamic: DynamicObject = serde_json::from_value(example(file, example_kind)).unwrap();
        resolver.apply(&client, &dynamic, &ns.name).await.expect("example accepted");
        let table = kubectl_ok(&["get", kind, "-n", &ns.name]);
        let header = table.lines().next().unwrap();
        for column in columns {
            assert!(header.contains(column), "{kind}: missing column {column}: {header}");
        }
    }
    ns.delete().await;
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let (client, ns) = setup("examples").await;
    let resolver = Resolver::new(&client).await;
    let mut applied = Vec::new();
    let mut files: Vec<_> =
        std::fs::read_dir(repo_root().join("examples")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        for obj in parse_manifest(&std::fs::read_to_string(path).unwrap()).unwrap() {
            let kind = obj.types.as_ref().unwrap().kind.clone();
            if kind == "Namespace" {
                continue; // each test brings its own namespace
            }
            let created = resolver
                .apply(&client, &obj, &ns.name)
                .await
                .unwrap_or_else(|e| panic!("{}: {kind} {} refused: {e}", path.display(), obj.name_any()));
            applied.push(format!("{kind}/{}", created.name_any()));
        }
    }
    for kind in [
        "SfuPool/eu-west",
        "SignalingPool/main",
        "Meeting/all-hands",
        "Meeting/team-standup",
        "RecordingJob/all-hands-rec",
    ] {
        assert!(applied.iter().any(|a| a == kind), "{kind} not among {applied:?}");
    }
    // Defaults from the schema were filled in by the API server.
    let standup = ns.api::<Meeting>().get("team-standup").await.unwrap();
    assert!(!standup.spec.e2ee);
    let pool = ns.api::<SfuPool>().get("eu-west").await.unwrap();
    assert_eq!(pool.spec.drain.timeout.as_std(), Duration::from_secs(4 * 3600));
    ns.delete().await;
}

#[tokio::test]
async fn invalid_sfu_pools_are_refused_naming_the_field() {
    let (_client, ns) = setup("bad-pools").await;
    let api: Api<SfuPool> = ns.api();
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("/spec/capacity", Value::Null, "spec.capacity", "Required value"),
        ("/spec/autoscaling/mode", json!("Sometimes"), "spec.autoscaling.mode", "Unsupported value"),
        ("/spec/replicas", json!(-1), "spec.replicas", "greater than or equal to 0"),
        (
            "/spec/autoscaling/minReplicas",
            json!(60),
            "spec.autoscaling.minReplicas",
            "must not be greater than maxReplicas",
        ),
        (
            "/spec/autoscaling/scaleDownStabilization",
            json!("ten minutes"),
            "spec.autoscaling.scaleDownStabilization",
            "should match",
        ),
        (
            "/spec/capacity/participantsPerPod",
            json!(0),
            "spec.capacity.participantsPerPod",
            "greater than or equal to 1",
        ),
        (
            "/spec/capacity/packetsPerSecondPerPod",
            json!(0),
            "spec.capacity.packetsPerSecondPerPod",
            "greater than or equal to 1",
        ),
        (
            "/spec/capacity/cpuMillicoresPerPod",
            json!(-250),
            "spec.capacity.cpuMillicoresPerPod",
            "greater than or equal to 1",
        ),
        ("/spec/capacity/tracksPerPod", json!(0), "spec.capacity.tracksPerPod", "greater than or equal to 1"),
        (
            "/spec/media/udpPortRange",
            json!({"min": 41000, "max": 40000}),
            "spec.media.udpPortRange.min",
            "must not be greater than max",
        ),
        ("/spec/media/announcedAddress", json!("Static"), "spec.media.announcedIPs", "at least one address"),
        (
            "/spec/autoscaling/buffer",
            json!({"participants": 10, "percent": 20}),
            "spec.autoscaling.buffer",
            "exactly one of participants or percent",
        ),
        (
            "/spec/template/spec/containers/0/name",
            json!("media"),
            "spec.template.spec.containers",
            "container named sfu",
        ),
        ("/spec/placement/strategy", json!("Random"), "spec.placement.strategy", "Unsupported value"),
        // Reaching beyond the pod: another ServiceAccount, the node's filesystem,
        // processes, or a privileged container.
        (
            "/spec/template/spec/serviceAccountName",
            json!("switchboard-operator"),
            "spec.template.spec.serviceAccountName",
            "cannot name one",
        ),
        ("/spec/template/spec/hostPID", json!(true), "spec.template.spec.hostPID", "process or IPC namespace"),
        (
            "/spec/template/spec/volumes",
            json!([{"name": "root", "hostPath": {"path": "/"}}]),
            "spec.template.spec.volumes",
            "hostPath volumes are not allowed",
        ),
        (
            "/spec/template/spec/containers/0/securityContext",
            json!({"privileged": true}),
            "spec.template.spec.containers",
            "privileged containers are not allowed",
        ),
        (
            "/spec/template/spec/initContainers",
            json!([{"name": "setup", "image": "busybox", "securityContext": {"privileged": true}}]),
            "spec.template.spec.containers",
            "privileged containers are not allowed",
        ),
    ];
    for (i, (pointer, value, field, words)) in cases.into_iter().enumerate() {
        let mut pool = valid_pool(&format!("bad-{i}"));
        set(&mut pool, pointer, value);
        assert_refused(&api, &pool, field, words).await;
    }
    // The valid base object is accepted, so each refusal above is due to its one change.
    apply_json(&api, &valid_pool("good")).await.expect("valid pool accepted");
    ns.delete().await;
}

#[tokio::test]
async fn invalid_meetings_recordings_and_signaling_pools_are_refused_naming_the_field() {
    let (_client, ns) = setup("bad-objects").await;
    let meetings: Api<Meeting> = ns.api();
    let meeting_cases: Vec<(&str, Value, &str, &str)> = vec![
        ("/spec/title", Value::Null, "spec.title", "Required value"),
        ("/spec/participants/expected", json!(1200), "spec.participants.expected", "must not be greater than max"),
        ("/spec/participants/max", json!(-5), "spec.participants.max", "greater than or equal to 1"),
        ("/spec/mode", json!("Broadcast"), "spec.mode", "Unsupported value"),
        ("/spec/schedule/start", json!("next tuesday"), "spec.schedule.start", "date-time"),
        ("/spec/schedule/expectedDuration", json!("1 hour"), "spec.schedule.expectedDuration", "should match"),
        ("/spec/e2ee", json!(true), "spec.recording.policy", "cannot be recorded automatically"),
        ("/spec/permissions/0/role", json!("admin"), "spec.permissions[0].role", "Unsupported value"),
        (
            "/spec/escalation",
            json!({"attendeesFrom": 1}),
            "spec.escalation.attendeesFrom",
            "greater than or equal to 2",
        ),
        ("/spec/escalation", json!({}), "spec.escalation.attendeesFrom", "Required value"),
        ("/spec/audio", json!("Stereo"), "spec.audio", "Unsupported value"),
    ];
    for (i, (pointer, value, field, words)) in meeting_cases.into_iter().enumerate() {
        let mut m = valid_meeting(&format!("bad-{i}"));
        set(&mut m, pointer, value);
        assert_refused(&meetings, &m, field, words).await;
    }

    // Mixed audio needs the voices in the clear: not with end-to-end encryption.
    let mut mixed_e2ee = valid_meeting("mixed-e2ee");
    set(&mut mixed_e2ee, "/spec/recording", Value::Null);
    set(&mut mixed_e2ee, "/spec/e2ee", json!(true));
    set(&mut mixed_e2ee, "/spec/audio", json!("Mixed"));
    assert_refused(&meetings, &mixed_e2ee, "spec.audio", "cannot have its audio mixed").await;
    set(&mut mixed_e2ee, "/spec/e2ee", json!(false));
    apply_json(&meetings, &mixed_e2ee).await.expect("mixed audio without e2ee accepted");

    // A breakout room opens at once and is not its own.
    let mut room = valid_meeting("room");
    set(&mut room, "/spec/parentRef", json!({"name": "main"}));
    assert_refused(&meetings, &room, "spec.schedule", "a breakout room opens at once").await;
    set(&mut room, "/spec/schedule", Value::Null);
    set(&mut room, "/spec/parentRef", json!({"name": "room"}));
    assert_refused(&meetings, &room, "spec.parentRef.name", "cannot be its own breakout room").await;
    set(&mut room, "/spec/parentRef", json!({"name": ""}));
    assert_refused(&meetings, &room, "spec.parentRef.name", "").await;

    let recordings: Api<RecordingJob> = ns.api();
    let mut both = example("recordingjob.yaml", "RecordingJob");
    both["metadata"] = json!({"name": "both-storages"});
    both["spec"]["storage"]["s3"] = json!({"bucket": "recs", "credentialsSecretRef": {"name": "s3"}});
    assert_refused(&recordings, &both, "spec.storage", "exactly one of pvc or s3").await;
    let mut no_meeting = example("recordingjob.yaml", "RecordingJob");
    no_meeting["metadata"] = json!({"name": "no-meeting"});
    set(&mut no_meeting, "/spec/meetingRef", Value::Null);
    assert_refused(&recordings, &no_meeting, "spec.meetingRef", "Required value").await;

    let signaling: Api<SignalingPool> = ns.api();
    let mut ftp = example("signalingpool.yaml", "SignalingPool");
    ftp["metadata"] = json!({"name": "ftp"});
    ftp["spec"]["publicUrl"] = json!("ftp://meet.example.com");
    assert_refused(&signaling, &ftp, "spec.publicUrl", "should match").await;
    let mut stun = example("signalingpool.yaml", "SignalingPool");
    stun["metadata"] = json!({"name": "stun"});
    stun["spec"]["turn"]["urls"] = json!(["stun:stun.example.com:3478"]);
    assert_refused(&signaling, &stun, "spec.turn.urls[0]", "should match").await;
    let mut inverted = example("signalingpool.yaml", "SignalingPool");
    inverted["metadata"] = json!({"name": "inverted"});
    inverted["spec"]["autoscaling"] = json!({"minReplicas": 5, "maxReplicas": 2});
    assert_refused(&signaling, &inverted, "spec.autoscaling.minReplicas", "must not be greater than maxReplicas").await;
    for (name, autoscaling, field, words) in [
        (
            "cpu-low",
            json!({"targetCpuUtilizationPercent": 5}),
            "spec.autoscaling.targetCpuUtilizationPercent",
            "greater than or equal to 10",
        ),
        (
            "cpu-high",
            json!({"targetCpuUtilizationPercent": 150}),
            "spec.autoscaling.targetCpuUtilizationPercent",
            "less than or equal to 100",
        ),
        (
            "no-connections",
            json!({"targetConnectionsPerPod": 0}),
            "spec.autoscaling.targetConnectionsPerPod",
            "greater than or equal to 1",
        ),
        ("mode", json!({"mode": "Keda"}), "spec.autoscaling.mode", "Unsupported value"),
    ] {
        let mut bad = example("signalingpool.yaml", "SignalingPool");
        bad["metadata"] = json!({"name": name});
        bad["spec"]["autoscaling"] = autoscaling;
        assert_refused(&signaling, &bad, field, words).await;
    }
    let mut keyless = example("signalingpool.yaml", "SignalingPool");
    keyless["metadata"] = json!({"name": "keyless"});
    keyless["spec"]["auth"] = json!({"sessionKeySecretRef": {"name": "s", "key": "k"}});
    assert_refused(&signaling, &keyless, "spec.auth", "user tokens need a key").await;
    let mut open_jwks = example("signalingpool.yaml", "SignalingPool");
    open_jwks["metadata"] = json!({"name": "open-jwks"});
    open_jwks["spec"]["auth"] = json!({"jwks": {"configMapName": "idp"}, "issuer": "https://idp.example.com"});
    assert_refused(&signaling, &open_jwks, "spec.auth", "issuer and audience are required").await;
    let mut half_rotation = example("signalingpool.yaml", "SignalingPool");
    half_rotation["metadata"] = json!({"name": "half-rotation"});
    half_rotation["spec"]["auth"]["previousSessionKeySecretRef"] = json!({"name": "s", "key": "old"});
    half_rotation["spec"]["auth"].as_object_mut().unwrap().remove("sessionKeySecretRef");
    assert_refused(&signaling, &half_rotation, "spec.auth", "needs sessionKeySecretRef").await;
    let mut two_cas = example("signalingpool.yaml", "SignalingPool");
    two_cas["metadata"] = json!({"name": "two-cas"});
    two_cas["spec"]["redis"]["tls"] =
        json!({"caSecretRef": {"name": "ca", "key": "ca.crt"}, "caConfigMapRef": {"name": "ca", "key": "ca.crt"}});
    assert_refused(&signaling, &two_cas, "spec.redis.tls", "one of caSecretRef and caConfigMapRef").await;
    let mut no_ca = example("signalingpool.yaml", "SignalingPool");
    no_ca["metadata"] = json!({"name": "no-ca"});
    no_ca["spec"]["redis"]["tls"] = json!({});
    assert_refused(&signaling, &no_ca, "spec.redis.tls", "one of caSecretRef and caConfigMapRef").await;
    ns.delete().await;
}

#[tokio::test]
async fn immutable_fields_cannot_change() {
    let (_client, ns) = setup("immutable").await;
    let meetings: Api<Meeting> = ns.api();
    apply_json(&meetings, &valid_meeting("webinar")).await.expect("valid meeting accepted");
    let mut room = valid_meeting("room");
    set(&mut room, "/spec/schedule", Value::Null);
    set(&mut room, "/spec/parentRef", json!({"name": "webinar"}));
    apply_json(&meetings, &room).await.expect("a breakout room accepted");
    // Before the meeting has started, its start may move.
    let moved = json!({"spec": {"schedule": {"start": "2027-01-15T17:00:00Z"}}});
    meetings
        .patch("webinar", &PatchParams::default(), &Patch::Merge(&moved))
        .await
        .expect("start may move before it starts");
    // So may encryption (without automatic recording, which it refuses).
    let sealed = json!({"spec": {"recording": null, "e2ee": true}});
    meetings
        .patch("webinar", &PatchParams::default(), &Patch::Merge(&sealed))
        .await
        .expect("e2ee set before it starts");
    // Once started (status.startedAt set by the operator), it may not.
    let started = json!({"status": {"phase": "Active", "startedAt": "2027-01-15T17:00:03Z"}});
    meetings.patch_status("webinar", &PatchParams::default(), &Patch::Merge(&started)).await.expect("status update");
    let again = json!({"spec": {"schedule": {"start": "2027-01-16T17:00:00Z"}}});
    let (code, message) = api_error(meetings.patch("webinar", &PatchParams::default(), &Patch::Merge(&again)).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.schedule.start"), "{message}");
    assert!(message.contains("cannot be changed once the meeting has started"), "{message}");
    let unsealed = json!({"spec": {"e2ee": false}});
    let (code, message) = api_error(meetings.patch("webinar", &PatchParams::default(), &Patch::Merge(&unsealed)).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec.e2ee cannot be changed once the meeting has started"), "{message}");
    // A breakout room stays the room of its main meeting; a meeting does not become one.
    for parent in [json!({"name": "other"}), Value::Null] {
        let rehome = json!({"spec": {"parentRef": parent}});
        let (code, message) = api_error(meetings.patch("room", &PatchParams::default(), &Patch::Merge(&rehome)).await);
        assert_eq!(code, 422, "{message}");
        assert!(message.contains("spec.parentRef cannot be changed"), "{message}");
    }
    let adopt = json!({"spec": {"parentRef": {"name": "room"}}});
    let (code, message) = api_error(meetings.patch("webinar", &PatchParams::default(), &Patch::Merge(&adopt)).await);
    assert_eq!(code, 422, "{message}");
    // Other fields of a started meeting still change.
    let title = json!({"spec": {"title": "All hands (extended)"}});
    meetings.patch("webinar", &PatchParams::default(), &Patch::Merge(&title)).await.expect("title may change");

    let recordings: Api<RecordingJob> = ns.api();
    let mut rec = example("recordingjob.yaml", "RecordingJob");
    rec["metadata"] = json!({"name": "rec"});
    apply_json(&recordings, &rec).await.expect("valid recording accepted");
    let relayout = json!({"spec": {"layout": "Speaker"}});
    let (code, message) = api_error(recordings.patch("rec", &PatchParams::default(), &Patch::Merge(&relayout)).await);
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("spec") && message.contains("immutable"), "{message}");
    ns.delete().await;
}

#[tokio::test]
async fn kubectl_scale_changes_spec_replicas_through_the_scale_subresource() {
    let (_client, ns) = setup("scale").await;
    let pools: Api<SfuPool> = ns.api();
    apply_json(&pools, &valid_pool("scalable")).await.unwrap();
    kubectl_ok(&["scale", "sfupool/scalable", "--replicas=7", "-n", &ns.name]);
    let pool = pools.get("scalable").await.unwrap();
    assert_eq!(pool.spec.replicas, Some(7));
    let scale = pools.get_scale("scalable").await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(7));
    // The scale subresource refuses what the schema refuses.
    let out = kubectl(&["scale", "sfupool/scalable", "--replicas=-3", "-n", &ns.name]);
    assert!(!out.status.success());
    assert_eq!(pools.get("scalable").await.unwrap().spec.replicas, Some(7));
    ns.delete().await;
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1",
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}
            }
        }
    }))
    .unwrap()
}

async fn running_pods(pods: &Api<Pod>, app: &str, want: usize) -> Vec<Pod> {
    let selector = format!("app={app}");
    eventually(&format!("{want} Running pods of {app}"), TIMEOUT, || async {
        let list = pods.list(&ListParams::default().labels(&selector)).await.ok()?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        (running.len() == want).then_some(running)
    })
    .await
}

#[tokio::test]
async fn deployments_get_pods_scheduled_onto_kwok_nodes_and_running() {
    let (client, ns) = setup("deploy").await;
    let deployments: Api<Deployment> = ns.api();
    deployments.create(&PostParams::default(), &deployment("web", 4)).await.unwrap();
    await_condition(&deployments, "web", TIMEOUT, |d: Option<&Deployment>| {
        d.and_then(|d| d.status.as_ref()).and_then(|s| s.available_replicas) == Some(4)
    })
    .await;
    let pods = running_pods(&ns.api(), "web", 4).await;
    let nodes: Api<Node> = Api::all(client.clone());
    for pod in &pods {
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone()).expect("scheduled");
        let node = nodes.get(&node_name).await.unwrap();
        assert_eq!(node.annotations().get("kwok.x-k8s.io/node").map(String::as_str), Some("fake"), "{node_name}");
        assert!(node.labels().contains_key("topology.kubernetes.io/zone"), "{node_name} has a zone label");
        assert!(pod.status.as_ref().and_then(|s| s.pod_ip.clone()).is_some(), "kwok gave the pod an IP");
    }
    ns.delete().await;
}

#[tokio::test]
async fn a_node_can_be_made_not_ready() {
    let client = client().await;
    let name = format!("kwok-fault-{}", std::process::id());
    nodes::create_node(&client, &name, "eu-west-1", "eu-west-1a").await;
    let node = nodes::make_node_not_ready(&client, &name).await;
    let ready = node.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "False");
    // The node lifecycle controller reacts as to a real failed node: it taints it.
    let api: Api<Node> = Api::all(client.clone());
    await_condition(&api, &name, TIMEOUT, |n: Option<&Node>| {
        n.and_then(|n| n.spec.as_ref()).and_then(|s| s.taints.as_ref()).is_some_and(|ts| {
            ts.iter().any(|t| {
                t.key.starts_with("node.kubernetes.io/not-ready") || t.key.starts_with("node.kubernetes.io/unreachable")
            })
        })
    })
    .await;
    nodes::delete_node(&client, &name).await;
}

#[tokio::test]
async fn the_eviction_api_honours_pod_disruption_budgets() {
    let (_client, ns) = setup("evict").await;
    let deployments: Api<Deployment> = ns.api();
    deployments.create(&PostParams::default(), &deployment("guarded", 2)).await.unwrap();
    let pods: Api<Pod> = ns.api();
    let running = running_pods(&pods, "guarded", 2).await;

    let pdbs: Api<PodDisruptionBudget> = ns.api();
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "guarded"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "guarded"}}}
    }))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    let observed = |allowed: i32| {
        move |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| Some((p.metadata.generation?, p.status.as_ref()?))).is_some_and(|(g, s)| {
                s.observed_generation == Some(g)
                    && s.current_healthy == Some(2)
                    && s.disruptions_allowed == Some(allowed)
            })
        }
    };
    await_condition(&pdbs, "guarded", TIMEOUT, observed(0)).await;

    let victim = running[0].name_any();
    let (code, message) = api_error(pods.evict(&victim, &EvictParams::default()).await);
    assert_eq!(code, 429, "eviction past the budget is refused: {message}");
    assert!(message.contains("disruption budget"), "{message}");
    assert!(pods.get_opt(&victim).await.unwrap().is_some_and(|p| p.metadata.deletion_timestamp.is_none()));

    let relax = json!({"spec": {"minAvailable": 1}});
    pdbs.patch("guarded", &PatchParams::default(), &Patch::Merge(&relax)).await.unwrap();
    await_condition(&pdbs, "guarded", TIMEOUT, observed(1)).await;
    pods.evict(&victim, &EvictParams::default()).await.expect("eviction within the budget goes through");
    await_deleted(&pods, &victim, TIMEOUT).await;
    // The Deployment replaces the evicted pod.
    running_pods(&pods, "guarded", 2).await;
    ns.delete().await;
}

#[tokio::test]
async fn rbac_is_enforced_for_service_account_tokens() {
    let (client, ns) = setup("rbac").await;
    let sas: Api<ServiceAccount> = ns.api();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "reader"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 600}})).unwrap();
    let token = sas
        .create_token_request("reader", &PostParams::default(), &request)
        .await
        .expect("the API server issues service-account tokens")
        .status
        .unwrap()
        .token;
    let as_reader = client_with_token(token.as_deref().expect("token")).await;
    let pods: Api<Pod> = Api::namespaced(as_reader.clone(), &ns.name);
    let (code, message) = api_error(pods.list(&ListParams::default()).await);
    assert_eq!(code, 403, "no Role yet: {message}");
    assert!(message.contains(&format!("system:serviceaccount:{}:reader", ns.name)), "{message}");

    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    });
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name}]
    });
    let resolver = Resolver::new(&client).await;
    for obj in [role, binding] {
        resolver.apply(&client, &serde_json::from_value(obj).unwrap(), &ns.name).await.unwrap();
    }
    wait_for("the Role to take effect", TIMEOUT, || {
        let pods = pods.clone();
        async move { pods.list(&ListParams::default()).await.is_ok() }
    })
    .await;
    // Listing is allowed now; deleting still is not.
    let (code, _) = api_error(pods.delete_collection(&Default::default(), &ListParams::default()).await);
    assert_eq!(code, 403);
    ns.delete().await;
}
