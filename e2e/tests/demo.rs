//! The README's first command, `./demo`, on the real local cluster: it imports the
//! project's images into the real nodes, installs the chart (the operator Deployment)
//! and applies the examples, so the operator, SFUs, signaling and Redis all run as
//! pods on the real nodes, and prints join URLs. The URL serves the join page, and
//! headless Chromium joins the example meeting and decodes video. A second run
//! reuses every pod and the forwarder; `./demo down` removes what it made.
//!
//! The demo packages the binaries in `target/debug` (`./test` builds them first), so
//! the test never runs cargo inside cargo.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use switchboard_crds::{Meeting, SfuPool};
use switchboard_e2e::*;

const NAMESPACE: &str = "conferencing";

struct Demo {
    dir: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Demo {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("switchboard-demo-test-{}", std::process::id()));
        let env = vec![
            ("SWITCHBOARD_DEMO_DIR", dir.display().to_string()),
            ("SWITCHBOARD_DEMO_PORT", free_port().to_string()),
            ("SWITCHBOARD_DEMO_PREBUILT", "1".into()),
        ];
        Self { dir, env }
    }

    /// Runs `./demo <args>` and returns stdout and stderr.
    fn run(&self, args: &[&str]) -> (String, String) {
        let out = Command::new(repo_root().join("demo"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("./demo runs");
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "./demo {args:?} failed:\n{stdout}\n{stderr}\n{}", self.logs());
        (stdout, stderr)
    }

    fn pid(&self, name: &str) -> u32 {
        std::fs::read_to_string(self.dir.join(format!("{name}.pid"))).unwrap().trim().parse().unwrap()
    }

    fn logs(&self) -> String {
        let pods = kubectl(&["get", "pods", "-A", "-o", "wide"]);
        let logs = kubectl(&["logs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=signaling", "--tail", "15"]);
        format!("{}\n{}", String::from_utf8_lossy(&pods.stdout), String::from_utf8_lossy(&logs.stdout))
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_a_join_page_where_chromium_receives_media_and_a_second_run_reuses_it() {
    let bin = repo_root().join("target/debug");
    for b in ["operator", "sfu-pod", "signaling-pod", "recorder-pod"] {
        assert!(
            bin.join(b).exists(),
            "target/debug/{b} is missing: ./test builds it (cargo build -p operator -p sfu-pod -p signaling-pod -p recorder-pod)"
        );
    }
    let demo = Demo::new();
    let (stdout, stderr) = demo.run(&[]);
    let host = stdout.lines().find_map(|l| l.trim().strip_prefix("host:")).expect("a host URL").trim().to_owned();
    let guest = stdout.lines().find_map(|l| l.trim().strip_prefix("guest:")).expect("a guest URL").trim().to_owned();
    assert!(host.starts_with("http://127.0.0.1:") && host.contains("/j/team-standup?token="), "{host}");
    assert!(
        stdout.contains("sfupool.switchboard.dev/eu-west") && stdout.contains("meeting.switchboard.dev/team-standup"),
        "kubectl get shows them:\n{stdout}"
    );
    assert!(stderr.contains("chart installed") && stderr.contains("images imported"), "{stderr}");

    // Everything runs as pods on the real nodes: the chart's operator, the SFUs,
    // signaling and Redis.
    let admin = client().await;
    let on_real_node =
        |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| n.starts_with("real-node-"));
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let operator_pods: Api<Pod> = Api::namespaced(admin.clone(), "switchboard-system");
    let operators =
        operator_pods.list(&ListParams::default().labels("app.kubernetes.io/name=switchboard")).await.unwrap().items;
    assert_eq!(
        operators.iter().filter(|p| on_real_node(p) && ready(p)).count(),
        2,
        "two operator replicas Ready on real nodes"
    );
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    let list = pods.list(&ListParams::default()).await.unwrap().items;
    for component in ["sfu", "signaling"] {
        let of: Vec<&Pod> = list
            .iter()
            .filter(|p| p.labels().get("app.kubernetes.io/component").map(String::as_str) == Some(component))
            .collect();
        assert!(
            !of.is_empty() && of.iter().all(|p| on_real_node(p) && ready(p)),
            "{component} pods Ready on real nodes: {}",
            demo.logs()
        );
    }
    assert!(
        list.iter().any(|p| p.name_any().starts_with("redis-") && on_real_node(p) && ready(p)),
        "Redis is a pod on a real node"
    );

    // The URL serves the join page.
    let page = Command::new("curl").args(["-fsS", &host]).output().expect("curl runs");
    assert!(page.status.success(), "GET {host}: {}", String::from_utf8_lossy(&page.stderr));
    assert!(String::from_utf8_lossy(&page.stdout).contains("<title>Switchboard</title>"));

    // Headless Chromium joins the example meeting and receives media from the SFU pods.
    let artifacts = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("demo-meeting.png");
    let report = browser::two_peers(&host, &guest, &shot).unwrap_or_else(|e| panic!("browsers: {e}\n{}", demo.logs()));
    for page in report.as_array().unwrap() {
        assert!(page["frames"].as_u64().unwrap() > 10, "{report}");
        assert!(page["tiles"].as_u64().unwrap() >= 2, "{report}");
    }

    // The cluster shows it live: the pool Ready, the meeting Active with a room on an SFU pod.
    let meetings: Api<Meeting> = Api::namespaced(admin.clone(), NAMESPACE);
    let meeting =
        eventually("team-standup Active", Duration::from_secs(60), || async {
            meetings.get("team-standup").await.ok().filter(|m| {
                m.status.as_ref().and_then(|s| s.phase.as_ref()).is_some_and(|p| format!("{p:?}") == "Active")
            })
        })
        .await;
    let assignment = meeting.status.unwrap().assignment.unwrap();
    assert_eq!(assignment.pool, "eu-west");
    assert!(
        list.iter().any(|p| p.name_any() == assignment.origin.pod && on_real_node(p)),
        "the meeting is on a real SFU pod"
    );
    let pools: Api<SfuPool> = Api::namespaced(admin.clone(), NAMESPACE);
    assert!(pools.get("eu-west").await.unwrap().status.unwrap().ready_replicas >= 2);

    // A second run reuses every pod and the forwarder.
    let uids: Vec<String> = list.iter().filter_map(|p| p.uid()).collect();
    let forward = demo.pid("forward");
    let (_, stderr) = demo.run(&[]);
    assert!(stderr.contains(&format!("forward already running (pid {forward})")), "{stderr}");
    let again: Vec<String> =
        pods.list(&ListParams::default()).await.unwrap().items.iter().filter_map(|p| p.uid()).collect();
    for uid in &uids {
        assert!(again.contains(uid), "pod {uid} was replaced by the second run");
    }

    demo.run(&["down"]);
    eventually("the forwarder stopped", Duration::from_secs(20), || async { (!alive(forward)).then_some(()) }).await;
    let status = helm(&["status", "switchboard", "-n", "switchboard-system"]);
    assert!(!status.status.success(), "the release is gone");
    let _ = std::fs::remove_dir_all(&demo.dir);
}
