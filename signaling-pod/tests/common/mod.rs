//! What the signaling tests share: a real Redis per test, the local control plane
//! with a namespace per test, signaling replicas (processes or in-process), real
//! SFUs in-process, and tokens.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use signaling_pod::auth::{Keys, UserClaims};
use switchboard_crds::meeting::Meeting;
use switchboard_e2e::TestNamespace;
use switchboard_signaling_client::{JoinGrant, Rest, SignalingClient};
use switchboard_signaling_proto::{JoinedPayload, Role};

/// The user-token key shared with the "identity provider" (the tests).
pub const JWT_KEY: &str = "signaling-test-user-key-0123456789abcdef";
/// Signaling's own session-token key.
pub const SESSION_KEY: &str = "signaling-test-session-key-0123456789abcdef";
pub const WAIT: Duration = Duration::from_secs(20);

pub use switchboard_e2e::Redis;

/// The control plane, a fresh namespace and Redis.
pub struct TestEnv {
    pub client: kube::Client,
    pub ns: TestNamespace,
    pub redis: Redis,
}

pub async fn env(prefix: &str) -> TestEnv {
    if std::env::var("SIGNALING_TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).try_init();
    }
    let client = switchboard_e2e::client().await;
    switchboard_e2e::install_crds(&client).await;
    let ns = TestNamespace::create(&client, prefix).await;
    TestEnv { client, ns, redis: Redis::start() }
}

impl TestEnv {
    pub fn config(&self) -> signaling_pod::config::Config {
        signaling_pod::config::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            public_url: None,
            namespace: self.ns.name.clone(),
            redis_url: self.redis.url.clone(),
            auth: signaling_pod::config::AuthSettings {
                user_hmac_keys: vec![JWT_KEY.as_bytes().to_vec()],
                user_jwks_refresh: Duration::from_secs(60),
                session_key: Some(SESSION_KEY.as_bytes().to_vec()),
                ..Default::default()
            },
            turn: None,
            replica: "in-process".into(),
            pool: None,
            rate_per_second: 20.0,
            rate_burst: 60.0,
            limits: Default::default(),
            session_ttl: Duration::from_secs(3600),
            recording_pvc: "recordings".into(),
            redis_access: Default::default(),
        }
    }

    /// A signaling server inside the test process.
    pub async fn in_process(&self, cfg: signaling_pod::config::Config) -> signaling_pod::Running {
        signaling_pod::start(cfg, self.client.clone()).await.expect("signaling starts")
    }

    pub fn meetings(&self) -> Api<Meeting> {
        self.ns.api()
    }
}

/// A signaling replica as its own process (so a test can kill it).
pub struct Replica {
    child: Child,
    pub url: String,
}

impl Replica {
    pub fn start(env: &TestEnv, name: &str) -> Self {
        Self::start_in_pool(env, name, "")
    }

    /// A replica of SignalingPool `pool` (empty: of none).
    pub fn start_in_pool(env: &TestEnv, name: &str, pool: &str) -> Self {
        Self::start_with(env, &env.ns.name, name, &[("SIGNALING_POOL", pool)])
    }

    /// A replica serving `namespace`, with `vars` on top of the usual environment.
    pub fn start_with(env: &TestEnv, namespace: &str, name: &str, vars: &[(&str, &str)]) -> Self {
        let mut child = replica_command(env, namespace, name, vars)
            .stdout(Stdio::piped())
            .stderr(if std::env::var("SIGNALING_TEST_LOG").is_ok() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("signaling-pod starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("signaling-pod prints its URL");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad first line {line:?}: {e}"));
        Self { child, url: v["url"].as_str().unwrap().to_owned() }
    }

    /// Runs a replica that is expected to refuse to start: its exit status and stderr.
    pub fn refused(env: &TestEnv, vars: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
        let mut child = replica_command(env, &env.ns.name, "refused", vars)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("signaling-pod runs");
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("signaling-pod started with {vars:?}; it should have refused");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (status, stderr)
    }

    /// SIGTERM: the replica drains (see `limits::drain`).
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits up to `timeout` for the process to end: its exit status, or `None`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no goodbyes.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn replica_command(env: &TestEnv, namespace: &str, name: &str, vars: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_signaling-pod"));
    c.env("SIGNALING_ADDR", "127.0.0.1:0")
        .env("SIGNALING_NAMESPACE", namespace)
        .env("SIGNALING_REDIS_URL", &env.redis.url)
        .env("SIGNALING_JWT_KEY", JWT_KEY)
        .env("SIGNALING_SESSION_KEY", SESSION_KEY)
        .env("POD_NAME", name)
        .env("KUBECONFIG", &switchboard_e2e::cluster().kubeconfig);
    for (k, v) in vars {
        c.env(k, v);
    }
    c
}

/// Any claims, signed HS256 with the user-token key.
pub fn signed(claims: serde_json::Value) -> String {
    Keys::new(JWT_KEY.as_bytes()).sign(&claims)
}

/// A user JWT as the identity provider would issue it.
pub fn user_token(sub: &str, role: Option<Role>, valid_for_secs: i64) -> String {
    let exp = (signaling_pod::auth::now_unix() as i64 + valid_for_secs) as u64;
    Keys::new(JWT_KEY.as_bytes()).sign(&UserClaims {
        sub: sub.into(),
        name: Some(sub.to_uppercase()),
        role,
        exp,
        typ: None,
    })
}

pub fn rest(url: &str, sub: &str, role: Option<Role>) -> Rest {
    Rest::new(url, &user_token(sub, role, 3600))
}

/// Creates a Meeting hosted by `host`.
pub async fn meeting(env: &TestEnv, name: &str, host: &str, extra: serde_json::Value) -> Meeting {
    let mut spec = serde_json::json!({"title": name, "host": host, "participants": {"expected": 10}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let m: Meeting = serde_json::from_value(serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    env.meetings().create(&PostParams::default(), &m).await.expect("meeting created")
}

/// Writes the assignment as the operator would: the meeting Active on `sfus`
/// (pod, endpoint), the first the origin, with `migrations` moves recorded.
pub async fn assign(env: &TestEnv, name: &str, sfus: &[(&str, &str)], migrations: &[(&str, &str)]) {
    assign_in(&env.meetings(), name, sfus, migrations).await
}

/// [`assign`] through `api`.
pub async fn assign_in(api: &Api<Meeting>, name: &str, sfus: &[(&str, &str)], migrations: &[(&str, &str)]) {
    let now = jiff::Timestamp::now().to_string();
    let origin = serde_json::json!({"pod": sfus[0].0, "endpoint": sfus[0].1});
    let edges: Vec<_> =
        sfus[1..].iter().map(|(p, e)| serde_json::json!({"pod": p, "endpoint": e, "parent": sfus[0].0})).collect();
    let moves: Vec<_> = migrations
        .iter()
        .enumerate()
        .map(|(i, (from, to))| {
            serde_json::json!({"from": from, "to": to, "reason": "test moved it", "at": now, "generation": i + 1})
        })
        .collect();
    let patch = serde_json::json!({
        "apiVersion": "switchboard.dev/v1alpha1", "kind": "Meeting",
        "status": {
            "phase": "Active",
            "roomCode": format!("{:0>12}", name.replace('-', "").chars().take(12).collect::<String>()),
            "assignment": {"pool": "test", "origin": origin, "edges": edges, "at": now},
            "migrations": moves,
        }
    });
    api.patch_status(name, &PatchParams::apply("switchboard-operator").force(), &Patch::Apply(&patch))
        .await
        .expect("status written");
}

/// Joins through REST then WebSocket.
pub async fn connect(rest: &Rest, meeting: &str) -> (Arc<SignalingClient>, JoinGrant, JoinedPayload) {
    let grant = rest.join(meeting).await.expect("REST join");
    let (client, joined) =
        SignalingClient::join(&grant.signaling_url, &grant.session_token).await.expect("WebSocket join");
    (Arc::new(client), grant, joined)
}

/// As [`connect`], to an end-to-end encrypted meeting.
pub async fn connect_e2ee(rest: &Rest, meeting: &str) -> (Arc<SignalingClient>, JoinGrant, JoinedPayload) {
    let grant = rest.join(meeting).await.expect("REST join");
    let (client, joined) =
        SignalingClient::join_e2ee(&grant.signaling_url, &grant.session_token).await.expect("WebSocket join");
    (Arc::new(client), grant, joined)
}

pub fn of_type(t: &'static str) -> impl Fn(&switchboard_signaling_proto::Envelope) -> bool {
    move |e| e.type_ == t
}

/// Plays the operator for breakout rooms: every room Meeting (`spec.parentRef`) without
/// an assignment is placed on `sfu` (pod, endpoint) as it appears.
pub fn place_rooms(api: Api<Meeting>, sfu: (&str, &str)) -> tokio::task::JoinHandle<()> {
    let (pod, endpoint) = (sfu.0.to_owned(), sfu.1.to_owned());
    tokio::spawn(async move {
        loop {
            if let Ok(list) = api.list(&Default::default()).await {
                for m in list {
                    let unplaced = m.status.as_ref().is_none_or(|s| s.assignment.is_none());
                    if m.spec.parent_ref.is_some() && unplaced {
                        let name = kube::ResourceExt::name_any(&m);
                        assign_in(&api, &name, &[(&pod, &endpoint)], &[]).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
