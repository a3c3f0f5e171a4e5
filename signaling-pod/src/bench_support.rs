//! What signaling's benchmarks share: a Redis, signaling replicas (the release binary
//! next to the bench's), Meetings in a namespace of their own, and small measures.
//! Included by each bench binary (`#[path]`), not part of the library.
// Each bench uses part of it.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::Context as _;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt as _};
use switchboard_crds::Meeting;

pub const KEY: &str = "signaling-bench-user-key-0123456789abcdef";
pub const SESSION_KEY: &str = "signaling-bench-session-key-0123456789abcdef";

#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}
unsafe extern "C" {
    fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
    fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
}

/// Raises the open-file limit to the hard limit (children inherit it).
pub fn raise_fd_limit() -> u64 {
    const RLIMIT_NOFILE: i32 = 7;
    let mut l = RLimit { cur: 0, max: 0 };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        getrlimit(RLIMIT_NOFILE, &mut l);
        l.cur = l.max;
        setrlimit(RLIMIT_NOFILE, &l);
    }
    l.cur
}

pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
                })
                .flatten()
        })
        .unwrap_or(0.0)
        / 1024.0
}

pub fn user_token(sub: &str) -> String {
    signaling_pod::auth::Keys::new(KEY.as_bytes()).sign(&signaling_pod::auth::UserClaims {
        sub: sub.into(),
        name: None,
        role: None,
        exp: signaling_pod::auth::now_unix() + 3600,
        typ: None,
    })
}

pub struct Child(pub std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A signaling replica; `sfu_token`: the credential of the SFU's internal API.
/// `env`: more variables (e.g. the join queue's rate).
pub fn replica(
    ns: &str,
    redis: &str,
    name: &str,
    sfu_token: &str,
    env: &[(&str, String)],
) -> anyhow::Result<(Child, String)> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe()?.with_file_name("signaling-pod");
    let mut child = std::process::Command::new(&exe)
        .env("SIGNALING_ADDR", "127.0.0.1:0")
        .env("SIGNALING_NAMESPACE", ns)
        .env("SIGNALING_REDIS_URL", redis)
        .env("SIGNALING_JWT_KEY", KEY)
        .env("SIGNALING_SESSION_KEY", SESSION_KEY)
        .env("SIGNALING_RATE_PER_SECOND", "100000")
        .env("SIGNALING_RATE_BURST", "100000")
        // Every client of a bench comes from 127.0.0.1: the per-address and accept
        // limits a replica sets against floods would refuse most of them.
        .env("SIGNALING_MAX_CONNECTIONS", "100000")
        .env("SIGNALING_MAX_CONNECTIONS_PER_IP", "100000")
        .env("SIGNALING_ACCEPT_PER_SECOND", "100000")
        .env("SIGNALING_ACCEPT_BURST", "100000")
        .env("POD_NAME", name)
        .env(switchboard_sfu_client::auth::TOKEN_ENV, sfu_token)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} (cargo build --release -p signaling-pod --bins)", exe.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    Ok((Child(child), v["url"].as_str().context("url")?.to_owned()))
}

pub async fn create_meeting(api: &Api<Meeting>, name: &str, expected: usize, sfu: &str) -> anyhow::Result<()> {
    create_meeting_with(api, name, serde_json::json!({"participants": {"expected": expected}}), sfu).await
}

/// A Meeting hosted by `bench-host` with `spec` (merged over its title and host), Active
/// on the SFU at `sfu`.
pub async fn create_meeting_with(
    api: &Api<Meeting>,
    name: &str,
    spec: serde_json::Value,
    sfu: &str,
) -> anyhow::Result<()> {
    let mut full = serde_json::json!({"title": name, "host": "bench-host"});
    if let (Some(f), Some(s)) = (full.as_object_mut(), spec.as_object()) {
        f.extend(s.clone());
    }
    let m: Meeting = serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting", "metadata": {"name": name}, "spec": full,
    }))?;
    api.create(&PostParams::default(), &m).await?;
    let status = serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
        "status": {"phase": "Active", "assignment": {"pool": "bench", "origin": {"pod": "sfu-bench", "endpoint": sfu}}},
    });
    api.patch_status(name, &PatchParams::apply("switchboard-operator").force(), &Patch::Apply(&status)).await?;
    Ok(())
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The control plane's Meeting CRD as this build has it, and a namespace for the run.
pub async fn namespace(prefix: &str) -> anyhow::Result<(kube::Client, String)> {
    let client = kube::Client::try_default().await.context("a cluster (eval \"$(e2e/cluster/up)\")")?;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    crds.patch("meetings.switchboard.dev", &PatchParams::apply(prefix).force(), &Patch::Apply(&Meeting::crd())).await?;
    let ns = format!("{prefix}-{}", std::process::id());
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?)
        .await?;
    Ok((client, ns))
}

/// A redis-server of its own on a free port, and its URL.
pub async fn redis() -> anyhow::Result<(Child, String)> {
    let port = free_port();
    let child = Child(
        std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "20000",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("redis-server")?,
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, format!("redis://127.0.0.1:{port}")))
}

/// CPU seconds (user and system) a process has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A user token granting `role` in the meeting `namespace/name` (as an identity
/// provider's `mtg` and `role` claims do).
pub fn meeting_role_token(sub: &str, meeting: &str, role: &str) -> String {
    signaling_pod::auth::Keys::new(KEY.as_bytes()).sign(&serde_json::json!({
        "sub": sub, "mtg": meeting, "role": role, "exp": signaling_pod::auth::now_unix() + 3600,
    }))
}

/// An `sfu-pod` process (the release binary next to this one) with the pool credential
/// `token`, on loopback, relaying only from loopback origins; its API endpoint.
pub fn sfu_process(name: &str, token: &str) -> anyhow::Result<(Child, String)> {
    sfu_process_with(name, token, &[])
}

/// [`sfu_process`] with more variables (`env` wins over the defaults, e.g. another media address).
pub fn sfu_process_with(name: &str, token: &str, env: &[(&str, String)]) -> anyhow::Result<(Child, String)> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe()?.with_file_name("sfu-pod");
    let mut child = std::process::Command::new(&exe)
        .env(switchboard_sfu_client::auth::TOKEN_ENV, token)
        .env("SWITCHBOARD_API_ADDR", "127.0.0.1:0")
        .env("SWITCHBOARD_MEDIA_ADDR", "127.0.0.1:0")
        .env("SWITCHBOARD_NAME", name)
        .env("SWITCHBOARD_RELAY_ALLOWED_CIDRS", "127.0.0.0/8")
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} (cargo build --release -p sfu-pod)", exe.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    Ok((Child(child), v["api"].as_str().context("api")?.to_owned()))
}
