//! Real nodes (`e2e/cluster/real-nodes`): kubelets with containerd and runc in
//! network namespaces of this machine, next to kwok's simulated nodes. Pods land
//! there only when they ask ([`REAL_NODE_SELECTOR`], [`real_node_toleration`]); the
//! project's images are imported into each node's containerd ([`images`]), never
//! pulled; faults are injected the way they happen: a container's process killed
//! ([`kill_container`]), a kubelet stopped ([`stop_kubelet`]). Each node enforces
//! NetworkPolicy (kube-network-policies); [`http_get_from`] tries a connection as a
//! given pod would.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::{cluster, repo_root};

/// Label of the real nodes (kwok's carry `type: kwok` instead).
pub const NODE_KIND_LABEL: &str = "switchboard.dev/node-kind";
/// `nodeSelector` entry that puts a pod on a real node.
pub const REAL_NODE_SELECTOR: (&str, &str) = (NODE_KIND_LABEL, "real");
/// Taint of the real nodes: only pods that tolerate it land there.
pub const REAL_NODE_TAINT: &str = "switchboard.dev/real-node";

/// The toleration of the real nodes' taint, for a pod template.
pub fn real_node_toleration() -> serde_json::Value {
    json!({"key": REAL_NODE_TAINT, "operator": "Equal", "value": "true", "effect": "NoSchedule"})
}

/// `nodeSelector` and `tolerations` of a pod spec that must run on a real node.
pub fn on_real_nodes() -> serde_json::Value {
    json!({"nodeSelector": {REAL_NODE_SELECTOR.0: REAL_NODE_SELECTOR.1}, "tolerations": [real_node_toleration()]})
}

/// The run directory of the cluster (`SWITCHBOARD_CLUSTER_DIR`).
pub fn cluster_dir() -> PathBuf {
    std::env::var_os("SWITCHBOARD_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/switchboard-cluster"))
}

/// A real node's directory: its containerd socket, configuration and logs.
pub fn node_dir(node: &str) -> PathBuf {
    cluster_dir().join("nodes").join(node)
}

/// The real nodes' names, sorted.
pub async fn real_nodes(client: &Client) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let selector = format!("{}={}", REAL_NODE_SELECTOR.0, REAL_NODE_SELECTOR.1);
    let mut names: Vec<String> = nodes
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list real nodes")
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    names.sort();
    names
}

/// The images `./images` builds, by directory name.
pub const IMAGES: [&str; 5] = ["operator", "sfu-pod", "signaling-pod", "recorder-pod", "redis"];

/// The directory of the images the tests run: `./images --debug` packages the debug
/// binaries `./test` already built, in the release images' layout and names.
pub fn image_dir() -> PathBuf {
    repo_root().join("target/images-debug")
}

/// Builds the images from the debug binaries and imports them into every real
/// node's containerd (once per test process; both steps skip what is current).
pub fn images() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| load_images().unwrap_or_else(|e| panic!("images on the real nodes: {e:#}")));
}

fn load_images() -> anyhow::Result<()> {
    let cluster = cluster();
    let dir = image_dir();
    let build = Command::new(repo_root().join("images"))
        .arg("--debug")
        .arg(&dir)
        .output()
        .context("running ./images --debug")?;
    if !build.status.success() {
        bail!(
            "./images --debug failed: {}{}",
            String::from_utf8_lossy(&build.stdout),
            String::from_utf8_lossy(&build.stderr)
        );
    }
    let path = format!("{}:{}", cluster.bin.display(), std::env::var("PATH").unwrap_or_default());
    let load = Command::new(repo_root().join("e2e/cluster/load-images"))
        .args(IMAGES.iter().map(|name| dir.join(format!("{name}.tar"))))
        .env("PATH", path)
        .output()
        .context("running e2e/cluster/load-images")?;
    if !load.status.success() {
        bail!("load-images failed: {}{}", String::from_utf8_lossy(&load.stdout), String::from_utf8_lossy(&load.stderr));
    }
    Ok(())
}

fn ctr(node: &str, args: &[&str]) -> std::process::Output {
    let socket = node_dir(node).join("containerd.sock");
    Command::new(cluster().bin.join("ctr"))
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io"])
        .args(args)
        .output()
        .expect("ctr runs")
}

/// The node and containerd id of `container` in `pod`.
fn container_of(pod: &Pod, container: &str) -> (String, String) {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).expect("pod is scheduled");
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == container))
        .and_then(|c| c.container_id.clone())
        .expect("container has started");
    let id = id.strip_prefix("containerd://").expect("a containerd container id").to_string();
    (node, id)
}

/// Kills the process of `container` in `pod` with SIGKILL, as a crash would: the Pod
/// object stays, the kubelet sees its container die.
pub fn kill_container(pod: &Pod, container: &str) {
    let (node, id) = container_of(pod, container);
    let out = ctr(&node, &["tasks", "kill", "--signal", "SIGKILL", &id]);
    assert!(out.status.success(), "ctr tasks kill {id} on {node}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The host PID of `container`'s main process in `pod` (from its node's containerd).
pub fn container_pid(pod: &Pod, container: &str) -> u32 {
    let (node, id) = container_of(pod, container);
    let out = ctr(&node, &["tasks", "ls"]);
    assert!(out.status.success(), "ctr tasks ls on {node}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut cols = line.split_whitespace();
            (cols.next() == Some(id.as_str())).then(|| cols.next()?.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no running task {id} on {node}"))
}

/// What an HTTP GET from inside a pod's network namespace got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The server answered with this status.
    Answered(u16),
    /// No answer: the connection timed out, was refused or reset (curl's exit code and message).
    NoAnswer(i32, String),
}

/// `GET url` from inside the network namespace of `container` in `pod`, as that pod
/// would send it (its address, through its node's rules): the host's curl, entered
/// into the pod's namespace. Gives up after `timeout`.
pub fn http_get_from(pod: &Pod, container: &str, url: &str, timeout: std::time::Duration) -> Reach {
    let pid = container_pid(pod, container);
    let secs = format!("{:.1}", timeout.as_secs_f64());
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["--", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", &secs, url])
        .output()
        .expect("nsenter and curl run");
    match (out.status.code(), String::from_utf8_lossy(&out.stdout).trim().parse::<u16>()) {
        (Some(0), Ok(status)) => Reach::Answered(status),
        (code, _) => Reach::NoAnswer(code.unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

fn real_nodes_script(args: &[&str]) {
    let out = Command::new(repo_root().join("e2e/cluster/real-nodes")).args(args).output().expect("real-nodes runs");
    assert!(
        out.status.success(),
        "real-nodes {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops a real node's kubelet (its containers keep running, as when a kubelet or
/// its node's network dies): the node goes NotReady after the grace period.
pub fn stop_kubelet(node: &str) {
    real_nodes_script(&["stop-kubelet", node]);
}

/// Starts a stopped kubelet again.
pub fn start_kubelet(node: &str) {
    let bin = cluster().bin.display().to_string();
    real_nodes_script(&["start-kubelet", node, &bin]);
}
